#!/usr/bin/env bash
# The I/O-bound scenario (issue 6): an app that waits 10 ms per request, loaded by wrk
# with 64 keep-alive connections.
#
# - threads: rwsgi -k gthread vs gunicorn -k gthread (the same WORKERS x WORKER_THREADS)
#   vs Granian (the same WORKERS, WORKER_THREADS blocking threads each);
# - gevent: rwsgi -k gevent vs gunicorn -k gevent (the same WORKERS).
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
CASES=${CASES:-"threads gevent"}
UPGRADE=${UPGRADE:-0}            # 1: upgrade the peers in the venv first
TARGET=1.5

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive WORKERS WORKER_THREADS ROUNDS DURATION WARMUP CONNECTIONS THREADS START_TIMEOUT STOP_TIMEOUT
read -r -a cases <<<"$CASES"
for case in "${cases[@]}"; do
    case $case in threads | gevent) ;; *) echo "unknown case '$case' in CASES" >&2; exit 2 ;; esac
done
begin_runs

apt_install wrk wrk
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
VENV=$HERE/.venv
if [[ ! -x $VENV/bin/gunicorn || ! -x $VENV/bin/granian || ! -d $(echo "$VENV"/lib/python3*/site-packages/gevent) || ! -d $(echo "$VENV"/lib/python3*/site-packages/packaging) || $UPGRADE == 1 ]]; then
    log "installing gunicorn, granian and gevent (and packaging, which gunicorn -k gevent needs) into bench/.venv"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade gunicorn granian gevent packaging
fi
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

log "$(nproc) CPUs; $(python3 --version); $("$VENV/bin/gunicorn" --version); granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'); gevent $("$VENV/bin/python" -c 'import gevent; print(gevent.__version__)'); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')"
log "workers=$WORKERS threads=$WORKER_THREADS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS wrk-threads=$THREADS"

for case in "${cases[@]}"; do
    case $case in
        threads) rounds threads rwsgi-gthread gunicorn-gthread granian ;;
        gevent) rounds gevent rwsgi-gevent gunicorn-gevent ;;
    esac
    echo
done
for case in "${cases[@]}"; do
    case $case in
        threads)
            ratio "rwsgi / gunicorn gthread" "${med[threads/rwsgi-gthread]}" "${med[threads/gunicorn-gthread]}" "$TARGET"
            ratio "rwsgi / granian" "${med[threads/rwsgi-gthread]}" "${med[threads/granian]}" "$TARGET"
            ;;
        gevent)
            ratio "rwsgi / gunicorn gevent" "${med[gevent/rwsgi-gevent]}" "${med[gevent/gunicorn-gevent]}" "$TARGET"
            ;;
    esac
done
