#!/usr/bin/env bash
# What the access log costs: rwsgi without an access log ("off") and with one
# (--access-logfile FILE, gunicorn's default format: "on"; FORMAT=json for the json
# lines), measured in turn (off on off on ...) for ROUNDS rounds, on the hello-world app
# and on a 10 KiB static file (the front tier alone, where a line's cost weighs most).
# It prints requests/s per run, the medians and the ratio on/off against the target
# (the access log may cost at most 5%). A benchmark, not a test: only the ratios within
# one run mean something.
#
# Usage: bash bench/accesslog.sh            (see bench/README.md for the knobs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
FORMAT=${FORMAT:-default}         # default (gunicorn's) or json
CASES=${CASES:-"app static"}
TARGET=0.95

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive WORKERS ROUNDS DURATION WARMUP CONNECTIONS THREADS START_TIMEOUT STOP_TIMEOUT
case $FORMAT in default | json) ;; *) echo "FORMAT must be default or json, not '$FORMAT'" >&2; exit 2 ;; esac
read -r -a cases <<<"$CASES"
for case in "${cases[@]}"; do
    case $case in app | static) ;; *) echo "unknown case '$case' in CASES" >&2; exit 2 ;; esac
done
begin_runs

apt_install wrk wrk
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
build_rwsgi

SITE=$LOGS/site
mkdir -p "$SITE"
head -c 10240 /dev/urandom >"$SITE/10k.bin"

# Starts rwsgi without (off) or with (on) an access log on port $2; sets server_pid.
start_server() {
    local name=$1 port=$2 out=$LOGS/$1-$2.log
    local logging=()
    if [[ $name == on ]]; then
        logging=(--access-logfile "$LOGS/access-$port.log")
        [[ $FORMAT == default ]] || logging+=(--access-log-format "$FORMAT")
    fi
    "$RWSGI" serve -w "$WORKERS" -b "127.0.0.1:$port" --static "/s=$SITE" \
        "${logging[@]}" app:app >"$out" 2>&1 &
    server_pid=$!
}

CASE=app
target_url() {
    case $CASE in
        app) echo "http://127.0.0.1:$2/" ;;
        static) echo "http://127.0.0.1:$2/s/10k.bin" ;;
    esac
}

# CPU time (user + system, in clock ticks) the front tier of server pid $1 has used.
front_ticks() {
    local front
    front=$(pgrep -P "$1" -x rwsgi-front | head -n1)
    [[ -n $front ]] || { echo 0; return; }
    awk '{print $14 + $15}' "/proc/$front/stat"
}

# Called by measure_url around the measured run: the front tier's CPU time over it.
on_measure() {
    case $1 in
        start) ticks_before=$(front_ticks "$server_pid") ;;
        end) ticks_after=$(front_ticks "$server_pid") ;;
    esac
}

# Measures server $1 once: sets rps, p99, errors and cpu (the front tier's CPU
# microseconds per request over the measured run: steadier than requests/s on a machine
# shared with other work).
measure_cpu() {
    measure_url "$1"
    cpu=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
        'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
}

log "$(nproc) CPUs; $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')"
log "format=$FORMAT workers=$WORKERS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS wrk-threads=$THREADS"
log "about $((${#cases[@]} * ROUNDS * 2 * (WARMUP + DURATION + 3)))s of runs"

declare -A rps_runs=() cpu_runs=() med_rps=() med_cpu=()
printf '%-7s %-6s %-4s %12s %14s %10s  %s\n' case round log "requests/s" "front us/req" p99 "wrk errors"
for CASE in "${cases[@]}"; do
    for round in $(seq "$ROUNDS"); do
        for name in off on; do
            measure_cpu "$name"
            rps_runs[$CASE/$name]="${rps_runs[$CASE/$name]:-} $rps"
            cpu_runs[$CASE/$name]="${cpu_runs[$CASE/$name]:-} $cpu"
            printf '%-7s %-6s %-4s %12.0f %14s %10s  %s\n' "$CASE" "$round" "$name" "$rps" "$cpu" "${p99:-?}" "${errors:-none}"
        done
    done
    # Every line must have been written: at least one a request wrk counted.
    lines=$(cat "$LOGS"/access-*.log | wc -l)
    log "$CASE: $lines access log lines written over the 'on' runs"
    rm -f "$LOGS"/access-*.log
done

echo
for CASE in "${cases[@]}"; do
    for name in off on; do
        med_rps[$CASE/$name]=$(median <<<"${rps_runs[$CASE/$name]}")
        med_cpu[$CASE/$name]=$(median <<<"${cpu_runs[$CASE/$name]}")
        printf 'median %-7s %-4s %12.0f requests/s %8.2f front us/request\n' "$CASE" "$name" "${med_rps[$CASE/$name]}" "${med_cpu[$CASE/$name]}"
    done
done
echo
for CASE in "${cases[@]}"; do
    ratio "on / off ($CASE) req/s" "${med_rps[$CASE/on]}" "${med_rps[$CASE/off]}" "$TARGET"
    awk -v l="$CASE" -v on="${med_cpu[$CASE/on]}" -v off="${med_cpu[$CASE/off]}" 'BEGIN {
        if (off > 0) printf "front CPU per request (%s): %+.1f%% with the access log\n", l, (on / off - 1) * 100
    }'
done
