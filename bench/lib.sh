# Helpers shared by the benchmark scripts (bench/run.sh, bench/tls.sh, bench/io.sh);
# sourced, not run.
# They expect STOP_TIMEOUT and START_TIMEOUT to be set.

log() { printf '[bench] %s\n' "$*" >&2; }

alive() { kill -0 "$1" 2>/dev/null; }

as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

# Installs Debian package $2 if command $1 is not on the PATH.
apt_install() {
    command -v "$1" >/dev/null && return 0
    log "installing $2 (for $1)"
    if [[ -z ${APT_UPDATED:-} ]]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    command -v "$1" >/dev/null || { echo "$2 installed no $1" >&2; exit 1; }
}

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

# Stops process $1 (named $2 in messages), which this script started: SIGTERM, wait up
# to STOP_TIMEOUT for it to exit, then SIGKILL it and whatever it had started (by their
# pids, noted beforehand).
stop_pid() {
    local pid=$1 name=$2 kids
    kids=$(descendants "$pid" || true)
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
        log "$name (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # Its workers should be gone with it; give them a moment, then make sure.
    local kid
    for kid in $kids; do
        deadline=$((SECONDS + 5))
        while alive "$kid" && ((SECONDS < deadline)); do sleep 0.1; done
        if alive "$kid"; then
            log "$name left process $kid behind: SIGKILL"
            kill -KILL "$kid" 2>/dev/null || true
        fi
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Polls URL $1 until it answers 200 with the app's body, while pid $2 lives; $3, if
# given, is the CA file that verifies an https URL; $4 = any: any body will do.
wait_ready() {
    python3 - "$1" "$2" "$START_TIMEOUT" "${3:-}" "${4:-}" <<'EOF'
import os, ssl, sys, time, urllib.request
url, pid, timeout, cafile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
any_body = sys.argv[5] == "any"
context = ssl.create_default_context(cafile=cafile) if cafile else None
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited before answering")
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            if r.status == 200 and (any_body or r.read() == b"Hello, World!\n"):
                sys.exit(0)
            sys.exit(f"unexpected answer: {r.status}")
    except ssl.SSLCertVerificationError as err:
        sys.exit(f"certificate not verified: {err}")
    except OSError:
        time.sleep(0.05)
sys.exit(f"no answer within {timeout:.0f}s")
EOF
}

# The median of the numbers on standard input (separated by spaces or lines).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

# Prints "label = a/b x (target >= t: met | NOT met)"; without a target, "label = a/b x".
ratio() { # label numerator denominator [target]
    awk -v l="$1" -v a="$2" -v b="$3" -v t="${4:-}" 'BEGIN {
        if (b <= 0) { printf "%-22s = n/a\n", l; exit }
        if (t == "") { printf "%-22s = %6.2fx\n", l, a / b; exit }
        printf "%-22s = %6.2fx  (target >= %gx: %s)\n", l, a / b, t, (a / b >= t ? "met" : "NOT met")
    }'
}

# ---------------------------------------------------------------- one-URL scripts
# For a script that measures servers on one URL each (bench/run.sh, bench/io.sh): it sets its
# knobs, calls `begin_runs`, defines `start_server NAME PORT` (start it in the
# background, set server_pid) and `target_url NAME PORT`, then calls `rounds`.

# Every named knob must be a positive integer.
check_positive() {
    local var
    for var in "$@"; do
        [[ ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "$var must be a positive integer, not '${!var}'" >&2; exit 2; }
    done
}

# bench/.venv with Python packages $@ (each importable under its own name), installed
# the first time one is missing, or upgraded with UPGRADE=1; sets VENV. It uses the
# python3 rwsgi is built against, so rwsgi run with VIRTUAL_ENV set imports from it.
peer_venv() {
    command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
    VENV=$HERE/.venv
    local package missing=${UPGRADE:-0}
    for package in "$@"; do
        "$VENV/bin/python" -c "import $package" 2>/dev/null || missing=1
    done
    if [[ $missing == 1 ]]; then
        log "installing $* into bench/.venv"
        [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade "$@"
    fi
}

build_rwsgi() {
    log "building rwsgi (cargo build --release)"
    (cd "$ROOT" && cargo build --release -q)
    RWSGI=$ROOT/target/release/rwsgi
    [[ -x $RWSGI ]] || { echo "no $RWSGI after the build" >&2; exit 1; }
}

# A log directory, and the server being measured stopped and the directory removed on
# any exit.
begin_runs() {
    LOGS=$(mktemp -d "${TMPDIR:-/tmp}/rwsgi-bench.XXXXXX")
    server_pid=""
    server_name=""
    trap on_exit EXIT
    trap 'log "interrupted"; exit 130' INT
    trap 'log "terminated"; exit 143' TERM
}

stop_server() {
    [[ -n $server_pid ]] || return 0
    stop_pid "$server_pid" "$server_name"
    server_pid=""
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM
    # A script that starts more than the server stops it in `on_stop` (bench/io.sh).
    if declare -F on_stop >/dev/null; then on_stop; fi
    stop_server
    rm -rf "$LOGS"
    exit "$status"
}

# wrk with THREADS threads and CONNECTIONS connections for $1 seconds on URL $2, plus
# the script's WRK_ARGS (an array: a Lua script, a header) and any further arguments;
# prints wrk's report.
WRK_ARGS=()
wrk_load() {
    local seconds=$1 url=$2
    shift 2
    timeout -k 5 $((seconds + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" \
        "${WRK_ARGS[@]}" "$@" "$url"
}

# Starts server $1 on a free port and waits until its target_url answers (the run
# ends, with the server's log, if it does not); sets port and url.
start_measured() {
    local name=$1
    port=$(free_port)
    url=$(target_url "$name" "$port")
    start_server "$name" "$port"
    server_name=$name
    if ! wait_ready "$url" "$server_pid" "" any; then
        log "$name did not come up on port $port; its log:"
        tail -n 30 "$LOGS/$name-$port.log" >&2 || true
        exit 1
    fi
}

# Measures server $1 once with wrk on its target_url; sets rps, p99, errors and
# requests.
measure_url() {
    local name=$1 port url report
    start_measured "$name"
    wrk_load "$WARMUP" "$url" >/dev/null
    # A script may watch the measured run: `on_measure start|end URL` (bench/io.sh,
    # bench/run.sh).
    if declare -F on_measure >/dev/null; then on_measure start "$url"; fi
    report=$(wrk_load "$DURATION" "$url" --latency)
    if declare -F on_measure >/dev/null; then on_measure end "$url"; fi
    printf '%s\n' "$report" >"$LOGS/$name-$port.wrk"
    stop_server
    read_wrk "$name" "$report"
}

# Reads wrk's report $2 of server $1: sets rps, p99 (as wrk wrote it), p99_ms, errors
# and requests.
read_wrk() {
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$2")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$2")
    p99_ms=$(to_ms "$p99")
    errors=$(grep -E 'Non-2xx|Socket errors' <<<"$2" | sed 's/^ *//' | paste -sd ';' - || true)
    requests=$(awk '/requests in/ {print $1}' <<<"$2")
    [[ -n $rps && -n $requests ]] || { log "could not read Requests/sec from wrk for $1:"; printf '%s\n' "$2" >&2; exit 1; }
}

# A duration as wrk writes it (850.00us, 2.13ms, 1.02s, 1.50m) in milliseconds; empty
# if there is none.
to_ms() {
    awk -v d="$1" 'BEGIN {
        if (d == "") exit
        n = d + 0; u = d; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
        if (f > 0) printf "%.3f", n * f
    }'
}

# How far apart the numbers on standard input are: (max - min) / median, in percent.
spread() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {
    m = (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)
    if (NR > 0 && m > 0) printf "%.0f", (a[NR] - a[1]) / m * 100; else print 0 }'; }

# Runs ROUNDS rounds of `measure_url` over the servers named after LABEL, printing each
# run (with run_note, if a script's on_measure or on_run sets it); sets med[LABEL/server]
# to each server's median requests/s, med_p99[LABEL/server] to its median p99 in ms and
# spread[LABEL/server] to how far apart its rounds were (percent of the median). A
# script may read each run's figures in `on_run LABEL SERVER`, called after the run.
declare -A med=() med_p99=() spread=()
rounds() {
    local label=$1; shift
    local -A runs=() p99_runs=()
    local round name error_count=0
    printf '%-12s %-5s %-16s %12s %10s  %s\n' case round server "requests/s" "p99" "wrk errors"
    local -a order
    for round in $(seq "$ROUNDS"); do
        # Each round starts with the next server (A B, B A, A B, ...): whichever runs
        # first in a round meets a machine the other has not warmed or left sockets in.
        order=("${@:$(((round - 1) % $# + 1))}" "${@:1:$(((round - 1) % $#))}")
        for name in "${order[@]}"; do
            run_note=""
            measure_url "$name"
            if declare -F on_run >/dev/null; then on_run "$label" "$name"; fi
            runs[$name]="${runs[$name]:-} $rps"
            p99_runs[$name]="${p99_runs[$name]:-} $p99_ms"
            printf '%-12s %-5s %-16s %12.0f %10s  %s%s\n' "$label" "$round" "$name" "$rps" "${p99:-?}" "${errors:-none}" "${run_note:+  ($run_note)}"
            [[ -z $errors ]] || error_count=$((error_count + 1))
        done
    done
    for name in "$@"; do
        med[$label/$name]=$(median <<<"${runs[$name]}")
        med_p99[$label/$name]=$(median <<<"${p99_runs[$name]}")
        spread[$label/$name]=$(spread <<<"${runs[$name]}")
        printf 'median %-12s %-16s %12.0f requests/s  p99 %s ms  rounds %s%% apart\n' "$label" "$name" \
            "${med[$label/$name]}" "${med_p99[$label/$name]:-?}" "${spread[$label/$name]}"
    done
    ((error_count == 0)) || echo "WARNING: wrk reported errors in $error_count run(s) of $label (last column): those figures are suspect."
}
