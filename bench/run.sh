#!/usr/bin/env bash
# rwsgi vs gunicorn (sync workers) vs Granian (WSGI interface) on one hello-world app,
# each with the same number of workers, loaded by wrk with keep-alive connections. The
# servers are measured in turn (rwsgi, gunicorn, granian, rwsgi, ...) for ROUNDS
# rounds; it prints requests/s per run, each server's median and the ratios against the
# targets. A benchmark, not a test: only the ratios within one run mean something.
#
# Usage: bash bench/run.sh            (see bench/README.md for the knobs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}         # seconds of measurement per run
WARMUP=${WARMUP:-2}              # seconds of load before each measurement
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}            # wrk threads
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
SERVERS=${SERVERS:-"rwsgi gunicorn granian"}
UPGRADE=${UPGRADE:-0}            # 1: upgrade gunicorn and granian in the venv first
TARGET_GRANIAN=0.8
TARGET_GUNICORN=8

for var in WORKERS ROUNDS DURATION WARMUP CONNECTIONS THREADS START_TIMEOUT STOP_TIMEOUT; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "$var must be a positive integer, not '${!var}'" >&2; exit 2; }
done
read -r -a servers <<<"$SERVERS"
for name in "${servers[@]}"; do
    case $name in rwsgi | gunicorn | granian) ;; *) echo "unknown server '$name' in SERVERS" >&2; exit 2 ;; esac
done

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

begin_runs  # a log directory; the server being measured is stopped on any exit

# ---------------------------------------------------------------- install
apt_install wrk wrk
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

VENV=$HERE/.venv
if [[ ! -x $VENV/bin/gunicorn || ! -x $VENV/bin/granian || $UPGRADE == 1 ]]; then
    log "installing gunicorn and granian into bench/.venv"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade gunicorn granian
fi

log "building rwsgi (cargo build --release)"
(cd "$ROOT" && cargo build --release -q)
RWSGI=$ROOT/target/release/rwsgi
[[ -x $RWSGI ]] || { echo "no $RWSGI after the build" >&2; exit 1; }

# ---------------------------------------------------------------- one run
# Starts server $1 on port $2 in the background; sets server_pid.
start_server() {
    local name=$1 port=$2 out=$LOGS/$1-$2.log
    case $name in
        rwsgi)
            "$RWSGI" serve -w "$WORKERS" -b "127.0.0.1:$port" app:app >"$out" 2>&1 &
            ;;
        gunicorn)
            "$VENV/bin/gunicorn" -w "$WORKERS" -b "127.0.0.1:$port" --worker-class sync \
                --log-level warning app:app >"$out" 2>&1 &
            ;;
        granian)
            "$VENV/bin/granian" --interface wsgi --workers "$WORKERS" --host 127.0.0.1 \
                --port "$port" --log-level warning app:app >"$out" 2>&1 &
            ;;
    esac
    server_pid=$!
    server_name=$name
}

# wrk against 127.0.0.1:$1 for $2 seconds; prints wrk's report.
load() {
    timeout -k 5 $(($2 + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2s" --latency \
        "http://127.0.0.1:$1/"
}

# Measures server $1 once; sets rps, p99 and errors.
measure() {
    local name=$1 port
    port=$(free_port)
    start_server "$name" "$port"
    if ! wait_ready "http://127.0.0.1:$port/" "$server_pid"; then
        log "$name did not come up on port $port; its log:"
        tail -n 30 "$LOGS/$name-$port.log" >&2 || true
        exit 1
    fi
    load "$port" "$WARMUP" >/dev/null
    local report
    report=$(load "$port" "$DURATION")
    printf '%s\n' "$report" >"$LOGS/$name-$port.wrk"
    stop_server
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$report")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$report")
    errors=$(grep -E 'Non-2xx|Socket errors' <<<"$report" | sed 's/^ *//' | paste -sd ';' - || true)
    if [[ -z $rps ]]; then
        log "could not read Requests/sec from wrk for $name:"
        printf '%s\n' "$report" >&2
        exit 1
    fi
}

# ---------------------------------------------------------------- the runs
per_run=$((WARMUP + DURATION + 3))
log "$(nproc) CPUs; $(python3 --version); $("$VENV/bin/gunicorn" --version); granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')"
log "workers=$WORKERS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS wrk-threads=$THREADS"
log "about $((ROUNDS * ${#servers[@]} * per_run))s of runs"

declare -A runs=() med=()
error_count=0
printf '%-6s %-9s %12s %10s  %s\n' round server "requests/s" "p99" "wrk errors"
for round in $(seq "$ROUNDS"); do
    for name in "${servers[@]}"; do
        measure "$name"
        runs[$name]="${runs[$name]:-} $rps"
        printf '%-6s %-9s %12.0f %10s  %s\n' "$round" "$name" "$rps" "${p99:-?}" "${errors:-none}"
        [[ -z $errors ]] || error_count=$((error_count + 1))
    done
done

echo
for name in "${servers[@]}"; do
    med[$name]=$(median <<<"${runs[$name]}")
    printf 'median %-9s %12.0f requests/s\n' "$name" "${med[$name]}"
done

echo
[[ -z ${med[rwsgi]:-} || -z ${med[granian]:-} ]] || ratio "rwsgi / granian" "${med[rwsgi]}" "${med[granian]}" "$TARGET_GRANIAN"
[[ -z ${med[rwsgi]:-} || -z ${med[gunicorn]:-} ]] || ratio "rwsgi / gunicorn" "${med[rwsgi]}" "${med[gunicorn]}" "$TARGET_GUNICORN"
if ((error_count > 0)); then
    echo
    echo "WARNING: wrk reported errors in $error_count run(s) (see the last column): those figures are suspect."
fi
