#!/usr/bin/env bash
# rwsgi -k asgi against the ASGI servers a user would otherwise run: Granian
# (--interface asgi), uvicorn (uvloop + httptools, websockets) and gunicorn's own ASGI
# worker (-k asgi, gunicorn >= 25), with the same worker counts, on bench/asgi_app.py:
#   hello  ASGI hello world, keep-alive, measured with wrk (requests/s);
#   ws     WebSocket echo, CONNECTIONS_WS clients each sending a message and waiting
#          for its echo, over and over (messages/s), driven by bench/ws_echo.rs, a
#          compiled client (std only), whose CPU time is printed beside the server's so
#          that a saturated client shows.
# The servers are measured in turn, the order rotated each round, for ROUNDS rounds; it
# prints each run, the medians and the ratios of medians against the targets. A
# benchmark, not a test: only the ratios within one run mean something. A server that
# refuses the WebSocket upgrade (rwsgi before its WebSocket support) is reported as
# such and left out of the ws ratios.
#
# Usage: bash bench/asgi.sh            (see bench/README.md for the knobs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

SCENARIOS=${SCENARIOS:-"hello ws"}
SERVERS=${SERVERS:-"rwsgi granian uvicorn gunicorn"}
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}         # seconds of measurement per run
WARMUP=${WARMUP:-2}              # seconds of load before each measurement
CONNECTIONS=${CONNECTIONS:-64}   # hello: wrk's connections
THREADS=${THREADS:-1}            # hello: wrk's threads
CONNECTIONS_WS=${CONNECTIONS_WS:-32}  # ws: WebSocket clients
MESSAGE_BYTES=${MESSAGE_BYTES:-16}    # ws: bytes per message
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
UPGRADE=${UPGRADE:-0}            # 1: upgrade the peers in the venv first

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive WORKERS ROUNDS DURATION WARMUP CONNECTIONS THREADS CONNECTIONS_WS MESSAGE_BYTES START_TIMEOUT STOP_TIMEOUT
read -r -a scenarios <<<"$SCENARIOS"
read -r -a servers <<<"$SERVERS"
for sc in "${scenarios[@]}"; do
    case $sc in hello | ws) ;; *) echo "unknown scenario '$sc' in SCENARIOS (known: hello ws)" >&2; exit 2 ;; esac
done
for name in "${servers[@]}"; do
    case $name in rwsgi | granian | uvicorn | gunicorn) ;; *) echo "unknown server '$name' in SERVERS" >&2; exit 2 ;; esac
done

begin_runs  # a log directory; the server being measured is stopped on any exit

# ---------------------------------------------------------------- install
apt_install wrk wrk
command -v rustc >/dev/null || { echo "rustc is needed (it builds rwsgi too)" >&2; exit 1; }
peer_venv gunicorn granian uvicorn uvloop httptools websockets
build_rwsgi
WS_ECHO=$LOGS/ws_echo
rustc -O --edition 2021 "$HERE/ws_echo.rs" -o "$WS_ECHO"
# gunicorn's ASGI worker came with gunicorn 25.
if [[ " ${servers[*]} " == *" gunicorn "* ]] && ! "$VENV/bin/python" -c 'import gunicorn.workers.gasgi' 2>/dev/null; then
    log "gunicorn $("$VENV/bin/gunicorn" --version 2>&1 | awk '{print $NF}') has no ASGI worker (-k asgi needs gunicorn >= 25): left out"
    read -r -a servers <<<"$(tr ' ' '\n' <<<"${servers[*]}" | grep -vx gunicorn | paste -sd ' ' -)"
fi

# ---------------------------------------------------------------- servers
# Starts server $1 on port $2 in the background; sets server_pid.
start_server() {
    local name=$1 port=$2 out=$LOGS/$1-$2.log
    case $name in
        rwsgi)
            VIRTUAL_ENV=$VENV "$RWSGI" serve -k asgi -w "$WORKERS" -b "127.0.0.1:$port" \
                asgi_app:app >"$out" 2>&1 &
            ;;
        granian)
            "$VENV/bin/granian" --interface asgi --workers "$WORKERS" --host 127.0.0.1 \
                --port "$port" --log-level warning asgi_app:app >"$out" 2>&1 &
            ;;
        uvicorn)
            "$VENV/bin/uvicorn" --workers "$WORKERS" --loop uvloop --http httptools \
                --ws websockets --host 127.0.0.1 --port "$port" --log-level warning \
                --no-access-log asgi_app:app >"$out" 2>&1 &
            ;;
        gunicorn)
            "$VENV/bin/gunicorn" -k asgi -w "$WORKERS" -b "127.0.0.1:$port" \
                --log-level warning asgi_app:app >"$out" 2>&1 &
            ;;
    esac
    server_pid=$!
}

target_url() { echo "http://127.0.0.1:$2/"; }

# CPU time (user + system, clock ticks) of the server being measured, all its processes.
server_ticks() {
    local pid total=0 t
    for pid in $server_pid $(descendants "$server_pid"); do
        t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# measure_url calls this around the measured hello run: the CPU time of all the
# server's processes over it, for cpu_us (per request) once the run is read.
on_measure() {
    case $1 in
        start) ticks_start=$(server_ticks) ;;
        end) ticks_end=$(server_ticks) ;;
    esac
}

# Measures server $1 once with the WebSocket echo client; sets rate (messages/s, empty
# when the upgrade was refused), client_cpu and server_cpu (percent of one core).
measure_ws() {
    local name=$1 port url report before after code=0 hz
    start_measured "$name"
    rate="" client_cpu="" server_cpu=""
    "$WS_ECHO" 127.0.0.1 "$port" /ws "$CONNECTIONS_WS" "$WARMUP" "$MESSAGE_BYTES" \
        >/dev/null 2>"$LOGS/ws-$name.err" || code=$?
    if ((code == 3)); then
        stop_server
        return 0
    fi
    ((code == 0)) || { log "the echo client failed against $name:"; cat "$LOGS/ws-$name.err" >&2; exit 1; }
    before=$(server_ticks)
    report=$(timeout -k 5 $((DURATION + 30)) "$WS_ECHO" 127.0.0.1 "$port" /ws "$CONNECTIONS_WS" \
        "$DURATION" "$MESSAGE_BYTES") || { log "the echo client failed against $name"; exit 1; }
    after=$(server_ticks)
    stop_server
    hz=$(getconf CLK_TCK)
    read -r rate client_cpu server_cpu < <(awk -v r="$report" -v b="$before" -v a="$after" -v hz="$hz" 'BEGIN {
        n = split(r, f, /[ =]/); for (i = 1; i < n; i += 2) v[f[i]] = f[i + 1]
        s = v["seconds"]; printf "%.0f %.0f %.0f\n", v["messages"] / s, v["cpu_ticks"] / hz / s * 100, (a - b) / hz / s * 100
    }')
}

# ---------------------------------------------------------------- the runs
declare -A runs=() notes=()
rotated() { # round: the servers, the order turned by one each round
    local round=$1 i n=${#servers[@]}
    for ((i = 0; i < n; i++)); do echo "${servers[$(((i + round) % n))]}"; done
}

log "$(nproc) CPUs; $(python3 --version); granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'); uvicorn $("$VENV/bin/python" -c 'import uvicorn; print(uvicorn.__version__)'); gunicorn $("$VENV/bin/python" -c 'import gunicorn; print(gunicorn.__version__)'); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}'); rwsgi at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
log "scenarios: ${scenarios[*]}; servers: ${servers[*]}; workers=$WORKERS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s wrk connections=$CONNECTIONS websocket clients=$CONNECTIONS_WS of $MESSAGE_BYTES-byte messages"

for sc in "${scenarios[@]}"; do
    unit="requests/s"
    [[ $sc == hello ]] || unit="messages/s"
    printf '%-6s %-5s %-10s %12s  %s\n' case round server "$unit" "notes"
    for round in $(seq "$ROUNDS"); do
        for name in $(rotated "$round"); do
            if [[ $sc == hello ]]; then
                measure_url "$name"
                cpu_us=$(awk -v t="$((ticks_end - ticks_start))" -v hz="$(getconf CLK_TCK)" \
                    -v n="$requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
                note="p99 ${p99:-?}; CPU ${cpu_us} us/request (all its processes); wrk errors: ${errors:-none}"
                value=$rps
            else
                measure_ws "$name"
                if [[ -z $rate ]]; then
                    [[ $name == rwsgi ]] && note="rwsgi: no WebSocket support in this build" || note="$name refused the upgrade"
                    notes[$sc/$name]=$note
                    printf '%-6s %-5s %-10s %12s  %s\n' "$sc" "$round" "$name" "-" "$note"
                    continue
                fi
                note="CPU: server ${server_cpu}% client ${client_cpu}% of one core"
                value=$rate
            fi
            runs[$sc/$name]="${runs[$sc/$name]:-} $value"
            printf '%-6s %-5s %-10s %12.0f  %s\n' "$sc" "$round" "$name" "$value" "$note"
        done
    done
    echo
done

# ---------------------------------------------------------------- the table
echo "Medians over ${ROUNDS} round(s) ('apart' = (max - min) / median of the rounds), and ratios of medians"
for sc in "${scenarios[@]}"; do
    declare -A m=()
    for name in "${servers[@]}"; do
        if [[ -z ${runs[$sc/$name]:-} ]]; then
            printf 'median %-6s %-10s %12s  %s\n' "$sc" "$name" "-" "${notes[$sc/$name]:-no figure}"
            continue
        fi
        m[$name]=$(median <<<"${runs[$sc/$name]}")
        printf 'median %-6s %-10s %12.0f  rounds %s%% apart\n' "$sc" "$name" "${m[$name]}" "$(spread <<<"${runs[$sc/$name]}")"
    done
    if [[ -n ${m[rwsgi]:-} ]]; then
        for name in "${servers[@]}"; do
            [[ $name != rwsgi && -n ${m[$name]:-} ]] || continue
            ratio "$sc rwsgi/$name" "${m[rwsgi]}" "${m[$name]}"
        done
        # The targets (issue 17): hello >= 1.2x the faster of Granian and uvicorn; ws
        # >= 1.0x the fastest peer.
        best=0 best_name=""
        for name in "${servers[@]}"; do
            [[ $name != rwsgi && -n ${m[$name]:-} ]] || continue
            [[ $sc == ws || $name == granian || $name == uvicorn ]] || continue
            if awk -v a="${m[$name]}" -v b="$best" 'BEGIN {exit !(a > b)}'; then best=${m[$name]} best_name=$name; fi
        done
        if [[ -n $best_name ]]; then
            if [[ $sc == hello ]]; then
                ratio "hello vs best ($best_name)" "${m[rwsgi]}" "$best" 1.2
            else
                ratio "ws vs best ($best_name)" "${m[rwsgi]}" "$best" 1.0
            fi
        fi
    fi
    unset m
    echo
done
