#!/usr/bin/env bash
# The I/O-bound scenario (issue 6): an app that waits 10 ms per request, loaded by wrk
# with 64 keep-alive connections.
#
# - threads: rwsgi -k gthread vs gunicorn -k gthread (the same WORKERS x WORKER_THREADS)
#   vs Granian (the same WORKERS, WORKER_THREADS blocking threads each);
# - gevent: rwsgi -k gevent vs gunicorn -k gevent (the same WORKERS);
# - threads-slow, gevent-slow: the same servers and wrk load while SLOW_CLIENTS slow
#   clients (bench/slow_client.py) keep POSTing SLOW_BODY bytes trickled over SLOW_SEND
#   seconds and reading the answer slowly: what a front tier that buffers should absorb.
#
# Servers are measured in turn (A B A B) for ROUNDS rounds; it prints requests/s per
# run, each server's median and the ratios against the target. A benchmark, not a test:
# only ratios within one run mean something.
#
# Usage: bash bench/io.sh            (see bench/README.md for the knobs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

WORKERS=${WORKERS:-2}
WORKER_THREADS=${WORKER_THREADS:-8}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}            # wrk threads
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
CASES=${CASES:-"threads gevent"}  # and/or threads-slow gevent-slow
SLOW_CLIENTS=${SLOW_CLIENTS:-32}
SLOW_BODY=${SLOW_BODY:-16384}    # bytes per POST body
SLOW_SEND=${SLOW_SEND:-1}        # seconds over which each body is trickled ...
SLOW_PIECES=${SLOW_PIECES:-16}   # ... in this many pieces
SLOW_READ_PAUSE=${SLOW_READ_PAUSE:-0.1}  # seconds before each 64-byte read of the answer
UPGRADE=${UPGRADE:-0}            # 1: upgrade the peers in the venv first
TARGET=1.5

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive WORKERS WORKER_THREADS ROUNDS DURATION WARMUP CONNECTIONS THREADS START_TIMEOUT STOP_TIMEOUT \
    SLOW_CLIENTS SLOW_BODY SLOW_PIECES
for var in SLOW_SEND SLOW_READ_PAUSE; do
    [[ ${!var} =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "$var must be a number of seconds, not '${!var}'" >&2; exit 2; }
done
read -r -a cases <<<"$CASES"
for case in "${cases[@]}"; do
    case $case in threads | gevent | threads-slow | gevent-slow) ;; *) echo "unknown case '$case' in CASES" >&2; exit 2 ;; esac
done
begin_runs

apt_install wrk wrk
# packaging: gunicorn -k gevent needs it.
peer_venv gunicorn granian gevent packaging
build_rwsgi

# Starts server $1 on port $2 in the background; sets server_pid. rwsgi runs on the
# venv's Python (the same python3 it is built against), so gevent is importable.
start_server() {
    local name=$1 port=$2 out=$LOGS/$1-$2.log
    local bind=127.0.0.1:$port
    case $name in
        rwsgi-gthread)
            VIRTUAL_ENV=$VENV "$RWSGI" serve -w "$WORKERS" --threads "$WORKER_THREADS" \
                -b "$bind" io_app:app >"$out" 2>&1 &
            ;;
        gunicorn-gthread)
            "$VENV/bin/gunicorn" -w "$WORKERS" -k gthread --threads "$WORKER_THREADS" \
                -b "$bind" --log-level warning io_app:app >"$out" 2>&1 &
            ;;
        granian)
            "$VENV/bin/granian" --interface wsgi --workers "$WORKERS" \
                --blocking-threads "$WORKER_THREADS" --host 127.0.0.1 --port "$port" \
                --log-level warning io_app:app >"$out" 2>&1 &
            ;;
        rwsgi-gevent)
            VIRTUAL_ENV=$VENV "$RWSGI" serve -w "$WORKERS" -k gevent -b "$bind" \
                io_app:app >"$out" 2>&1 &
            ;;
        gunicorn-gevent)
            "$VENV/bin/gunicorn" -w "$WORKERS" -k gevent -b "$bind" --log-level warning \
                io_app:app >"$out" 2>&1 &
            ;;
    esac
    server_pid=$!
}

target_url() { echo "http://127.0.0.1:$2/"; }

# The slow clients, in the *-slow cases: measure_url calls on_measure around wrk's
# measured run. They start SLOW_SEND seconds ahead, so that wrk meets them already
# holding whatever they hold, and run SLOW_SECONDS in all, a second past wrk's end;
# each run's completions, errors and median request time go to run_note (printed by
# `rounds`), its completions to slow_runs.
SLOW_SECONDS=$(awk -v d="$DURATION" -v s="$SLOW_SEND" 'BEGIN {print d + s + 1}')
slow_case=""      # the label of the *-slow case being run, or empty
slow_pid=""
declare -A slow_runs=() slow_med=()
on_measure() {
    run_note=""
    [[ -n $slow_case ]] || return 0
    case $1 in
        start)
            # $port: measure_url's, the server's port.
            python3 "$HERE/slow_client.py" "$port" "$SLOW_CLIENTS" "$SLOW_SECONDS" \
                "$SLOW_BODY" "$SLOW_SEND" "$SLOW_PIECES" "$SLOW_READ_PAUSE" \
                >"$LOGS/slow-$server_name.out" 2>"$LOGS/slow-$server_name.err" &
            slow_pid=$!
            sleep "$SLOW_SEND"
            ;;
        end)
            wait "$slow_pid" || { log "slow clients failed:"; cat "$LOGS/slow-$server_name.err" >&2; exit 1; }
            slow_pid=""
            local completed slow_errors slow_median
            read -r completed slow_errors slow_median < <(sed -n 's/^completed=\([0-9]*\) errors=\([0-9]*\) median=\(.*\)$/\1 \2 \3/p' "$LOGS/slow-$server_name.out") || true
            [[ -n $slow_median ]] || { log "no figures from the slow clients:"; cat "$LOGS/slow-$server_name.out" >&2; exit 1; }
            run_note="slow clients: $completed done, $slow_errors errors, median ${slow_median}s$(sed 's/^/; /' "$LOGS/slow-$server_name.err")"
            slow_runs[$slow_case/$server_name]="${slow_runs[$slow_case/$server_name]:-} $completed"
            ;;
    esac
}
on_stop() { [[ -z $slow_pid ]] || stop_pid "$slow_pid" "the slow clients"; }

log "$(nproc) CPUs; $(python3 --version); $("$VENV/bin/gunicorn" --version); granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'); gevent $("$VENV/bin/python" -c 'import gevent; print(gevent.__version__)'); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')"
log "workers=$WORKERS threads=$WORKER_THREADS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS wrk-threads=$THREADS"
log "slow cases: $SLOW_CLIENTS clients, $SLOW_BODY-byte POSTs over ${SLOW_SEND}s in $SLOW_PIECES pieces, ${SLOW_READ_PAUSE}s before each 64-byte read"

# The servers of case $1.
servers() {
    case $1 in
        threads | threads-slow) echo rwsgi-gthread gunicorn-gthread granian ;;
        gevent | gevent-slow) echo rwsgi-gevent gunicorn-gevent ;;
    esac
}

for case in "${cases[@]}"; do
    read -r -a names <<<"$(servers "$case")"
    slow_case=""
    [[ $case != *-slow ]] || slow_case=$case
    rounds "$case" "${names[@]}"
    if [[ -n $slow_case ]]; then
        for name in "${names[@]}"; do
            slow_med[$case/$name]=$(median <<<"${slow_runs[$case/$name]}")
            printf 'median %-12s %-16s %12.0f slow requests done in %ss\n' "$case" "$name" "${slow_med[$case/$name]}" "$SLOW_SECONDS"
        done
    fi
    echo
done
# Prints the ratios of rwsgi (the first server of case $1) to the others, for wrk's
# requests/s against the target and, in a *-slow case, for the slow clients'
# completions: those are paced by the clients themselves, so 1.00x means that no server
# starved or failed them, and no target applies.
case_ratios() {
    local case=$1 names peer
    read -r -a names <<<"$(servers "$case")"
    for peer in "${names[@]:1}"; do
        ratio "$case: ${names[0]} / $peer" "${med[$case/${names[0]}]}" "${med[$case/$peer]}" "$TARGET"
        [[ $case != *-slow ]] ||
            ratio "$case: slow done, ${names[0]} / $peer" "${slow_med[$case/${names[0]}]}" "${slow_med[$case/$peer]}"
    done
}
for case in "${cases[@]}"; do case_ratios "$case"; done
