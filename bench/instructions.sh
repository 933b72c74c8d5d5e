#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: rwsgi's front
# tier and workers apart, and Granian's processes together, on the app scenarios of
# run.sh. Unlike requests/s or CPU time, the counts do not depend on what else the
# machine is doing: the same binaries under the same load give the same figures within
# a few percent, so a change to the hot path can be judged on a busy machine. What they
# leave out: all kernel work (system calls, the loopback, wake-ups), cache misses, and
# the timing of a real run (valgrind runs each process's threads one at a time, about
# fifty times slower, so batching differs). Use them beside run.sh, not instead of it.
#
# Each server runs twice under callgrind: once only to boot and stop, once under wrk
# for DURATION seconds; the difference over the requests served is the cost of one.
#
# Usage: bash bench/instructions.sh   (knobs: SCENARIOS, WORKERS, DURATION, CONNECTIONS,
#        SERVERS="rwsgi granian"; RWSGI=path to measure another rwsgi binary)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

SCENARIOS=${SCENARIOS:-hello flask}   # also 64k and post, slow under valgrind
SERVERS=${SERVERS:-rwsgi granian}
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-20}         # seconds of load (under valgrind: ~1-2k requests/s)
CONNECTIONS=${CONNECTIONS:-16}
THREADS=1
START_TIMEOUT=${START_TIMEOUT:-180}
STOP_TIMEOUT=${STOP_TIMEOUT:-120}
MEASURED=${RWSGI:-}

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive WORKERS DURATION CONNECTIONS START_TIMEOUT STOP_TIMEOUT

begin_runs
apt_install wrk wrk
apt_install valgrind valgrind
peer_venv gunicorn granian flask
if [[ -n $MEASURED ]]; then RWSGI=$MEASURED; else build_rwsgi; fi

# Sets APP, URL_PATH and WRK_ARGS for scenario $1.
scenario() {
    APP=app:app URL_PATH=/ WRK_ARGS=()
    case $1 in
        hello) ;;
        64k) URL_PATH=/64k ;;
        post) URL_PATH=/echo WRK_ARGS=(-s "$HERE/post.lua") ;;
        flask) APP=flask_app:app ;;
        *) echo "unknown scenario '$1' (known: hello 64k post flask)" >&2; exit 2 ;;
    esac
}

# Starts server $1 on port $2 under callgrind, its output files in directory $3.
start_counted() {
    local name=$1 port=$2 dir=$3
    mkdir -p "$dir"
    case $name in
        rwsgi)
            (cd "$dir" && VIRTUAL_ENV=$VENV exec valgrind -q --tool=callgrind --trace-children=yes \
                "$RWSGI" serve -w "$WORKERS" -b "127.0.0.1:$port" --chdir "$HERE" \
                --timeout 0 "$APP" >"$dir/server.log" 2>&1) &
            ;;
        granian)
            (cd "$dir" && exec valgrind -q --tool=callgrind --trace-children=yes \
                "$VENV/bin/python" "$VENV/bin/granian" --interface wsgi --workers "$WORKERS" \
                --host 127.0.0.1 --port "$port" --working-dir "$HERE" --log-level warning \
                "$APP" >"$dir/server.log" 2>&1) &
            ;;
        *) echo "unknown server '$name' (known: rwsgi granian)" >&2; exit 2 ;;
    esac
    server_pid=$!
    server_name=$name
}

# Instructions of run directory $1, per side: "front N" and "workers N" for rwsgi (the
# master's own are left out: it serves no request), "all N" for Granian.
sides() {
    local dir=$1 file pid total side
    for file in "$dir"/callgrind.out.*; do
        pid=${file##*.}
        total=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
        side=all
        if grep -q "Booting front tier with pid: $pid\$" "$dir/server.log"; then side=front
        elif grep -q "Booting worker with pid: $pid\$" "$dir/server.log"; then side=workers
        elif grep -q "Listening at: .* ($pid)" "$dir/server.log"; then side=master
        fi
        echo "$side ${total:-0}"
    done | awk '{sum[$1] += $2} END {for (s in sum) printf "%s %.0f\n", s, sum[s]}'
}

# Runs server $1 once: booted, then loaded for $2 seconds (0: not at all), then stopped.
# Sets run_dir and requests.
counted_run() {
    local name=$1 seconds=$2 port url report
    port=$(free_port)
    url="http://127.0.0.1:$port$URL_PATH"
    run_dir=$LOGS/$name-$port
    start_counted "$name" "$port" "$run_dir"
    if ! wait_ready "$url" "$server_pid" "" any; then
        log "$name did not come up under valgrind; its log:"
        tail -n 30 "$run_dir/server.log" >&2 || true
        exit 1
    fi
    requests=0
    if ((seconds > 0)); then
        report=$(wrk_load "$seconds" "$url")
        requests=$(awk '/requests in/ {print $1}' <<<"$report")
        grep -qE 'Non-2xx|Socket errors' <<<"$report" && log "$name: $(grep -E 'Non-2xx|Socket errors' <<<"$report")"
    fi
    stop_server
}

log "$(nproc) CPUs; $(valgrind --version); granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'); rwsgi at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%-8s %-8s %-8s %12s %10s\n' scenario server side instr/req requests
read -r -a servers <<<"$SERVERS"
for sc in $SCENARIOS; do
    scenario "$sc"
    for name in "${servers[@]}"; do
        counted_run "$name" 0
        boot=$(sides "$run_dir")
        booted=$(find "$run_dir" -name 'callgrind.out.*' | wc -l)
        counted_run "$name" "$DURATION"
        loaded=$(sides "$run_dir")
        ((requests > 0)) || { log "$name served no request in $sc"; exit 1; }
        if (($(find "$run_dir" -name 'callgrind.out.*' | wc -l) < booted)); then
            # A process killed at the stop wrote no counts.
            printf '%-8s %-8s %-8s %12s %10d\n' "$sc" "$name" - "n/a (a process did not stop)" "$requests"
            continue
        fi
        while read -r side total; do
            [[ $side == master ]] && continue
            base=$(awk -v s="$side" '$1 == s {print $2}' <<<"$boot")
            printf '%-8s %-8s %-8s %12d %10d\n' "$sc" "$name" "$side" \
                $(((total - ${base:-0}) / requests)) "$requests"
        done <<<"$loaded"
    done
done
