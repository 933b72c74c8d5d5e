# Shared by the benchmark scripts (sourced, not run): process bookkeeping, installing
# wrk, measuring one server with wrk, medians and ratios. A script sets its knobs
# (ROUNDS, DURATION, WARMUP, CONNECTIONS, THREADS, START_TIMEOUT, STOP_TIMEOUT) and
# defines `start_server NAME PORT` (start it in the background, set server_pid) and
# `target_url NAME PORT` (the URL to load) before calling `measure`.

log() { printf '[bench] %s\n' "$*" >&2; }

# Every named knob must be a positive integer.
check_positive() {
    local var
    for var in "$@"; do
        [[ ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "$var must be a positive integer, not '${!var}'" >&2; exit 2; }
    done
}

# ---------------------------------------------------------------- cleanup
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/rwsgi-bench.XXXXXX")
server_pid=""    # the server being measured, if any
server_name=""
cleanup_extra=() # more paths for on_exit to remove

# Every descendant of $1 (children first listed after their parent).
descendants() {
    ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            keep[root] = 1
            do {
                changed = 0
                for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            } while (changed)
            for (p in keep) if (p != root) print p
        }'
}

alive() { kill -0 "$1" 2>/dev/null; }

# Stops the current server: SIGTERM to its pid, wait up to STOP_TIMEOUT for it to exit,
# then SIGKILL it and whatever it had started (by their pids, noted beforehand).
stop_server() {
    [[ -n $server_pid ]] || return 0
    local pid=$server_pid kids
    kids=$(descendants "$pid" || true)
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
        log "$server_name (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # Its workers should be gone with it; give them a moment, then make sure.
    local kid
    for kid in $kids; do
        deadline=$((SECONDS + 5))
        while alive "$kid" && ((SECONDS < deadline)); do sleep 0.1; done
        if alive "$kid"; then
            log "$server_name left process $kid behind: SIGKILL"
            kill -KILL "$kid" 2>/dev/null || true
        fi
    done
    server_pid=""
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM
    stop_server
    rm -rf "$LOGS" "${cleanup_extra[@]}"
    exit "$status"
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- install
as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

# Installs Debian packages whose command ($1) is missing: apt_need COMMAND PACKAGE.
apt_need() {
    command -v "$1" >/dev/null && return 0
    log "installing $2"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

build_rwsgi() {
    log "building rwsgi (cargo build --release)"
    (cd "$ROOT" && cargo build --release -q)
    RWSGI=$ROOT/target/release/rwsgi
    [[ -x $RWSGI ]] || { echo "no $RWSGI after the build" >&2; exit 1; }
}

# ---------------------------------------------------------------- one run
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Polls URL $1 until it answers 200 (and, given $3, exactly that body), while pid $2
# lives.
wait_ready() {
    python3 - "$1" "$2" "$START_TIMEOUT" "${3-}" <<'PY'
import os, sys, time, urllib.request
url, pid, timeout, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited before answering")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            got = r.read()
            if r.status == 200 and (not body or got == body.encode()):
                sys.exit(0)
            sys.exit(f"unexpected answer: {r.status} {got[:60]!r}")
    except OSError:
        time.sleep(0.05)
sys.exit(f"no answer within {timeout:.0f}s")
PY
}

# wrk against URL $1 for $2 seconds; prints wrk's report.
load() {
    timeout -k 5 $(($2 + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2s" --latency "$1"
}

# Measures server $1 once (READY_BODY, if set, is the body its URL must answer); sets
# rps, p99 and errors.
measure() {
    local name=$1 port url
    port=$(free_port)
    url=$(target_url "$name" "$port")
    start_server "$name" "$port"
    server_name=$name
    if ! wait_ready "$url" "$server_pid" "${READY_BODY-}"; then
        log "$name did not come up on port $port; its log:"
        tail -n 30 "$LOGS/$name-$port.log" >&2 || true
        exit 1
    fi
    load "$url" "$WARMUP" >/dev/null
    local report
    report=$(load "$url" "$DURATION")
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

# ---------------------------------------------------------------- figures
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

ratio() { # label numerator denominator target
    awk -v l="$1" -v a="$2" -v b="$3" -v t="$4" 'BEGIN {
        if (b <= 0) { printf "%-22s = n/a\n", l; exit }
        printf "%-22s = %6.2fx  (target >= %gx: %s)\n", l, a / b, t, (a / b >= t ? "met" : "NOT met")
    }'
}

# Runs ROUNDS rounds of `measure` over the servers named in $@ (label LABEL), printing
# each run; fills the associative array `med` with each server's median.
declare -A med=()
rounds() {
    local label=$1; shift
    local -A runs=()
    local round name error_count=0
    printf '%-10s %-6s %-9s %12s %10s  %s\n' case round server "requests/s" "p99" "wrk errors"
    for round in $(seq "$ROUNDS"); do
        for name in "$@"; do
            measure "$name"
            runs[$name]="${runs[$name]:-} $rps"
            printf '%-10s %-6s %-9s %12.0f %10s  %s\n' "$label" "$round" "$name" "$rps" "${p99:-?}" "${errors:-none}"
            [[ -z $errors ]] || error_count=$((error_count + 1))
        done
    done
    for name in "$@"; do
        med[$label/$name]=$(median <<<"${runs[$name]}")
        printf 'median %-10s %-9s %12.0f requests/s\n' "$label" "$name" "${med[$label/$name]}"
    done
    if ((error_count > 0)); then
        echo "WARNING: wrk reported errors in $error_count run(s) of $label (last column): those figures are suspect."
    fi
}
