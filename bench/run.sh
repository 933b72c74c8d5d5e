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

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive WORKERS ROUNDS DURATION WARMUP CONNECTIONS THREADS START_TIMEOUT STOP_TIMEOUT
read -r -a servers <<<"$SERVERS"
for name in "${servers[@]}"; do
    case $name in rwsgi | gunicorn | granian) ;; *) echo "unknown server '$name' in SERVERS" >&2; exit 2 ;; esac
done

apt_need wrk wrk
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

VENV=$HERE/.venv
if [[ ! -x $VENV/bin/gunicorn || ! -x $VENV/bin/granian || $UPGRADE == 1 ]]; then
    log "installing gunicorn and granian into bench/.venv"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade gunicorn granian
fi
build_rwsgi

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
}

target_url() { echo "http://127.0.0.1:$2/"; }
READY_BODY=$'Hello, World!\n'

per_run=$((WARMUP + DURATION + 3))
log "$(nproc) CPUs; $(python3 --version); $("$VENV/bin/gunicorn" --version); granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')"
log "workers=$WORKERS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS wrk-threads=$THREADS"
log "about $((ROUNDS * ${#servers[@]} * per_run))s of runs"

rounds hello "${servers[@]}"
echo
[[ -z ${med[hello/rwsgi]:-} || -z ${med[hello/granian]:-} ]] || ratio "rwsgi / granian" "${med[hello/rwsgi]}" "${med[hello/granian]}" "$TARGET_GRANIAN"
[[ -z ${med[hello/rwsgi]:-} || -z ${med[hello/gunicorn]:-} ]] || ratio "rwsgi / gunicorn" "${med[hello/rwsgi]}" "${med[hello/gunicorn]}" "$TARGET_GUNICORN"
