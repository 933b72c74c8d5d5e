#!/usr/bin/env bash
# rwsgi vs gunicorn (sync) vs Granian (WSGI) on a hello-world app: same worker count,
# keep-alive, 64 connections with wrk, the servers measured in turn for ROUNDS rounds.
# Prints requests/s per run, the medians and the ratios. Not a test: numbers vary with
# the machine; only the ratios within one run mean something.
set -euo pipefail
cd "$(dirname "$0")"
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-64}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
[ -x .venv/bin/gunicorn ] && [ -x .venv/bin/granian ] || {
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check gunicorn granian
}
(cd .. && cargo build --release --locked -q)
RWSGI=$(cd .. && pwd)/target/release/rwsgi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT INT TERM

start() { # name port
    case "$1" in
        rwsgi) "$RWSGI" serve -w "$WORKERS" -b "127.0.0.1:$2" app:app ;;
        gunicorn) .venv/bin/gunicorn -w "$WORKERS" -k sync -b "127.0.0.1:$2" --log-level warning app:app ;;
        granian) .venv/bin/granian --interface wsgi --workers "$WORKERS" --host 127.0.0.1 --port "$2" --log-level warning app:app ;;
    esac
}

measure() { # name -> prints requests/s
    local port; port=$(free_port)
    start "$1" "$port" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
    wrk -t2 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null   # warm-up
    local out; out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$port/")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "$1: wrk reported errors:" >&2; grep "Non-2xx\|Socket errors" <<<"$out" >&2
    fi
    cleanup; pid=""
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}

declare -A runs
servers=(rwsgi gunicorn granian)
for round in $(seq "$ROUNDS"); do
    for name in "${servers[@]}"; do
        rps=$(measure "$name")
        runs[$name]="${runs[$name]:-} $rps"
        printf 'round %d  %-9s %10.0f req/s\n' "$round" "$name" "$rps"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A med
for name in "${servers[@]}"; do med[$name]=$(median <<<"${runs[$name]}"); done
echo
for name in "${servers[@]}"; do printf 'median    %-9s %10.0f req/s\n' "$name" "${med[$name]}"; done
awk -v r="${med[rwsgi]}" -v g="${med[granian]}" -v u="${med[gunicorn]}" 'BEGIN {
    printf "rwsgi / granian  = %.2fx (target >= 0.8x: %s)\n", r/g, (r/g >= 0.8 ? "met" : "NOT met");
    printf "rwsgi / gunicorn = %.2fx (target >= 8x: %s)\n", r/u, (r/u >= 8 ? "met" : "NOT met");
}'
