#!/usr/bin/env bash
# rwsgi against its peers on every scenario of the performance targets, in one run:
# Granian (WSGI interface, the same number of workers) on the app scenarios, nginx
# (sendfile on) on static files, rwsgi itself without an access log for the cost of
# one. Each scenario measures its servers in turn (A B A B) for ROUNDS rounds with wrk;
# for every run it reads the CPU time and context switches of every process of the
# server (/proc/PID/stat, /proc/PID/task/TID/status), rwsgi's front tier and workers
# apart, and with SYSCALLS=1 counts system calls with strace on a short extra run. It
# prints each run, the medians, how far apart the rounds were, and the table of ratios
# of medians against the targets. A benchmark, not a test: only the ratios within one
# run mean something.
#
# Usage: bash bench/run.sh            (see bench/README.md for the knobs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

ALL_SCENARIOS="hello close 64k post flask static10k static1m accesslog hog"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}  # also: accesslog-static, gunicorn
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}         # seconds of measurement per run
WARMUP=${WARMUP:-2}              # seconds of load before each measurement
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}            # wrk threads
FRONT=${FRONT:-$(($(nproc) / 2 > 0 ? $(nproc) / 2 : 1))}  # static: rwsgi front threads = nginx workers
FORMAT=${FORMAT:-default}        # the access log's format: default (gunicorn's) or json
HOG_CPU=${HOG_CPU:-0}            # the core the CPU hog is pinned to
SYSCALLS=${SYSCALLS:-0}          # 1: count system calls with strace on an extra run
SYSCALL_SECONDS=${SYSCALL_SECONDS:-3}
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
UPGRADE=${UPGRADE:-0}            # 1: upgrade the peers in the venv first

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive WORKERS ROUNDS DURATION WARMUP CONNECTIONS THREADS FRONT SYSCALL_SECONDS START_TIMEOUT STOP_TIMEOUT
[[ $HOG_CPU =~ ^[0-9]+$ ]] || { echo "HOG_CPU must be a CPU number, not '$HOG_CPU'" >&2; exit 2; }
case $FORMAT in default | json) ;; *) echo "FORMAT must be default or json, not '$FORMAT'" >&2; exit 2 ;; esac
case $SYSCALLS in 0 | 1) ;; *) echo "SYSCALLS must be 0 or 1, not '$SYSCALLS'" >&2; exit 2 ;; esac

# Sets, for scenario $1: servers (the first is measured against the others), APP
# (module:callable), URL_PATH, WRK_ARGS, target (minimum ratio of requests/s),
# p99_target (maximum ratio of p99s, or empty), what (a description).
scenario() {
    APP=app:app URL_PATH=/ WRK_ARGS=() servers=(rwsgi granian) p99_target=""
    case $1 in
        hello) target=1.1 what="hello, keep-alive" ;;
        close) target=1.3 what="hello, Connection: close"; WRK_ARGS=(-H "Connection: close") ;;
        64k) target=1.1 what="64 KiB response"; URL_PATH=/64k ;;
        post) target=1.0 p99_target=1.5 what="1 MiB POST, its length"; URL_PATH=/echo WRK_ARGS=(-s "$HERE/post.lua") ;;
        flask) target=1.3 what="Flask hello"; APP=flask_app:app ;;
        static10k) target=1.1 p99_target=1.5 what="static 10 KiB"; URL_PATH=/s/10k.bin servers=(rwsgi-static nginx) ;;
        static1m) target=1.0 p99_target=1.5 what="static 1 MiB"; URL_PATH=/s/1m.bin servers=(rwsgi-static nginx) ;;
        accesslog) target=0.95 what="hello, access log on/off"; servers=(rwsgi-log rwsgi) ;;
        accesslog-static) target=0.95 what="static 10 KiB, access log on/off"; URL_PATH=/s/10k.bin servers=(rwsgi-static-log rwsgi-static) ;;
        hog) target=1.0 what="hello beside a CPU hog" ;;
        gunicorn) target=8 what="hello vs gunicorn sync"; servers=(rwsgi gunicorn) ;;
        *) return 1 ;;
    esac
}
read -r -a scenarios <<<"$SCENARIOS"
for sc in "${scenarios[@]}"; do
    scenario "$sc" || { echo "unknown scenario '$sc' in SCENARIOS (known: $ALL_SCENARIOS accesslog-static gunicorn)" >&2; exit 2; }
done

begin_runs  # a log directory; the server being measured is stopped on any exit

# ---------------------------------------------------------------- install
apt_install wrk wrk
[[ " $SCENARIOS " != *" static"* ]] || apt_install nginx nginx
[[ $SYSCALLS == 0 ]] || apt_install strace strace
peer_venv gunicorn granian flask
build_rwsgi

SITE=$LOGS/site
mkdir -p "$SITE"
head -c 10240 /dev/urandom >"$SITE/10k.bin"
head -c 1048576 /dev/urandom >"$SITE/1m.bin"
# nginx's workers run as an unprivileged user when it is started as root.
chmod a+rx "$LOGS" "$SITE" && chmod a+r "$SITE"/*

# ---------------------------------------------------------------- servers
# Starts server $1 on port $2 in the background; sets server_pid. rwsgi runs on the
# venv's Python (the same python3 it is built against), so Flask is importable.
start_server() {
    local name=$1 port=$2 out=$LOGS/$1-$2.log
    local args=(-w "$WORKERS")
    case $name in
        rwsgi-static*) args=(-w 1 --front-threads "$FRONT" --static "/s=$SITE") ;;
    esac
    if [[ $name == *-log ]]; then
        args+=(--access-logfile "$LOGS/access-$port.log")
        [[ $FORMAT == default ]] || args+=(--access-log-format "$FORMAT")
    fi
    case $name in
        rwsgi*)
            VIRTUAL_ENV=$VENV "$RWSGI" serve "${args[@]}" -b "127.0.0.1:$port" "$APP" >"$out" 2>&1 &
            ;;
        granian)
            "$VENV/bin/granian" --interface wsgi --workers "$WORKERS" --host 127.0.0.1 \
                --port "$port" --log-level warning "$APP" >"$out" 2>&1 &
            ;;
        gunicorn)
            "$VENV/bin/gunicorn" -w "$WORKERS" -b "127.0.0.1:$port" --worker-class sync \
                --log-level warning "$APP" >"$out" 2>&1 &
            ;;
        nginx)
            local prefix=$LOGS/nginx-$port
            mkdir -p "$prefix/tmp"
            cat >"$prefix/nginx.conf" <<CONF
worker_processes $FRONT;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        location /s/ { alias $SITE/; }
    }
}
CONF
            "$(command -v nginx)" -p "$prefix" -c "$prefix/nginx.conf" >"$out" 2>&1 &
            ;;
    esac
    server_pid=$!
}

target_url() { echo "http://127.0.0.1:$2$URL_PATH"; }

# ---------------------------------------------------------------- what the server spends
# The side of the server process $1 counts on: rwsgi's workers are "workers", its
# master and front tier "front"; every process of another server is "all".
side_of() {
    local comm
    comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
    case $comm in
        rwsgi-worker) echo workers ;;
        rwsgi-*) echo front ;;
        *) echo all ;;
    esac
}

# The processes of the server being measured (its pid and every descendant).
server_pids() { echo "$server_pid"; descendants "$server_pid"; }

# Prints the counters of every process and thread of the server: "cpu PID SIDE TICKS"
# (user + system time of the process, its threads included) and "ctx TID SIDE N"
# (voluntary + nonvoluntary context switches of one thread: /proc/PID/status counts the
# main thread alone).
counters() {
    local pid side task
    for pid in $(server_pids); do
        side=$(side_of "$pid") || continue
        # The fields after the command name, which may hold spaces: utime and stime are
        # the 14th and 15th of the line, the 12th and 13th after it.
        sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk -v p="$pid" -v s="$side" '{print "cpu", p, s, $12 + $13}' || true
        for task in /proc/"$pid"/task/*; do
            awk -v t="${task##*/}" -v s="$side" '/^(non)?voluntary_ctxt_switches:/ {n += $2} END {if (NR) print "ctx", t, s, n}' \
                "$task/status" 2>/dev/null || true
        done
    done
}

# From the counters before ($1) and after ($2) a run: "SIDE TICKS CTX" for each side,
# over the processes and threads alive at the end (one started meanwhile counts whole).
counter_deltas() {
    awk 'FNR == NR {before[$1 " " $2] = $4; next}
         {d = $4 - before[$1 " " $2]; sides[$3] = 1; if ($1 == "cpu") cpu[$3] += d; else ctx[$3] += d}
         END {for (s in sides) print s, cpu[s] + 0, ctx[s] + 0}' "$1" "$2"
}

# The threads the running straces say they have attached.
attached_threads() {
    cat "$LOGS"/strace-*.err 2>/dev/null | awk '/ attached with [0-9]+ threads/ {n += $(NF - 1); next} / attached$/ {n++} END {print n + 0}'
}

# System calls of each side over a SYSCALL_SECONDS wrk run on URL $1: one
# `strace -c -f` per side, attached by pid to every process of that side (and, with
# -f, to all their threads) and stopped by pid after the run. Writes "SIDE CALLS
# REQUESTS" lines to $LOGS/syscalls.
count_syscalls() {
    local url=$1 pid side tasks=0 report
    local -A side_pids=() strace_pids=()
    for pid in $(server_pids); do
        side=$(side_of "$pid") || continue
        side_pids[$side]="${side_pids[$side]:-} -p $pid"
        tasks=$((tasks + $(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 | wc -l)))
    done
    tracing=()
    for side in "${!side_pids[@]}"; do
        # shellcheck disable=SC2086  # the -p PID pairs
        strace -c -f -o "$LOGS/strace-$side.txt" ${side_pids[$side]} 2>"$LOGS/strace-$side.err" &
        strace_pids[$side]=$!
        tracing+=("$!")
    done
    # Wait until every thread is attached, 10 s at most: strace says "Process N attached"
    # or "Process N attached with T threads" on stderr.
    local deadline=$((SECONDS + 10))
    while (($(attached_threads) < tasks)) && ((SECONDS < deadline)); do sleep 0.1; done
    (($(attached_threads) >= tasks)) || log "strace attached $(attached_threads) of $tasks threads within 10s"
    report=$(wrk_load "$SYSCALL_SECONDS" "$url")
    for side in "${!strace_pids[@]}"; do kill -INT "${strace_pids[$side]}" 2>/dev/null || true; done
    for side in "${!strace_pids[@]}"; do wait "${strace_pids[$side]}" || true; done
    tracing=()
    rm -f "$LOGS"/strace-*.err
    : >"$LOGS/syscalls"
    for side in "${!strace_pids[@]}"; do
        awk -v s="$side" -v n="$(awk '/requests in/ {print $1}' <<<"$report")" \
            '$NF == "total" {print s, $4, n}' "$LOGS/strace-$side.txt" >>"$LOGS/syscalls"
    done
}

# Around the measured run (called by measure_url): the counters before and after, and
# the system calls on an extra run after it.
on_measure() {
    case $1 in
        start) counters >"$LOGS/counters.before" ;;
        end)
            counters >"$LOGS/counters.after"
            rm -f "$LOGS/syscalls"
            [[ $SYSCALLS == 0 ]] || count_syscalls "$2"
            ;;
    esac
}

# After each run (called by rounds): CPU time, context switches and system calls per
# request of each side, noted for the run's line and kept for the medians.
declare -A cpu_runs=() ctx_runs=() sys_runs=() sides=()
on_run() {
    local key=$1/$2 side ticks ctx calls n cpu_us per_ctx per_call
    while read -r side ticks ctx; do
        cpu_us=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
        per_ctx=$(awk -v c="$ctx" -v n="$requests" 'BEGIN {printf "%.3f", c / n}')
        cpu_runs[$key/$side]="${cpu_runs[$key/$side]:-} $cpu_us"
        ctx_runs[$key/$side]="${ctx_runs[$key/$side]:-} $per_ctx"
        sides[$key]=$(tr ' ' '\n' <<<"${sides[$key]:-} $side" | grep -v '^$' | sort -u | paste -sd ' ' -)
        run_note+="${run_note:+; }$side ${cpu_us} us ${per_ctx} cs"
    done < <(counter_deltas "$LOGS/counters.before" "$LOGS/counters.after" | sort)
    if [[ -s $LOGS/syscalls ]]; then
        while read -r side calls n; do
            per_call=$(awk -v c="$calls" -v n="$n" 'BEGIN {if (n > 0) printf "%.2f", c / n}')
            [[ -n $per_call ]] || continue
            sys_runs[$key/$side]="${sys_runs[$key/$side]:-} $per_call"
            run_note+="; $side $per_call syscalls ($n requests traced)"
        done <"$LOGS/syscalls"
    fi
    run_note+=" per request"
}

# ---------------------------------------------------------------- the CPU hog
hog_pid=""
tracing=()
start_hog() {
    if command -v taskset >/dev/null; then
        taskset -c "$HOG_CPU" nice -n 0 bash -c 'while :; do :; done' &
    else
        nice -n 0 bash -c 'while :; do :; done' &
    fi
    hog_pid=$!
    log "CPU hog started (pid $hog_pid, on CPU $HOG_CPU)"
}
stop_hog() {
    [[ -n $hog_pid ]] || return 0
    kill -TERM "$hog_pid" 2>/dev/null || true
    wait "$hog_pid" 2>/dev/null || true
    log "CPU hog stopped (pid $hog_pid)"
    hog_pid=""
}
# On any exit (lib.sh's on_exit): the hog and any strace still running, by pid.
on_stop() {
    stop_hog
    local pid
    for pid in "${tracing[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
}

# ---------------------------------------------------------------- the runs
per_run=$((WARMUP + DURATION + 3 + (SYSCALLS == 1 ? SYSCALL_SECONDS + 3 : 0)))
runs=0
for sc in "${scenarios[@]}"; do scenario "$sc"; runs=$((runs + ${#servers[@]})); done
log "$(nproc) CPUs; $(python3 --version); granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')$(command -v nginx >/dev/null && echo "; $(nginx -v 2>&1 | sed 's/.*: //')"); rwsgi at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
log "scenarios: ${scenarios[*]}; workers=$WORKERS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS wrk-threads=$THREADS static front threads / nginx workers=$FRONT syscalls=$SYSCALLS"
log "about $((ROUNDS * runs * per_run))s of runs"

for sc in "${scenarios[@]}"; do
    scenario "$sc"
    [[ $sc != hog ]] || start_hog
    rounds "$sc" "${servers[@]}"
    [[ $sc != hog ]] || stop_hog
    if [[ $sc == accesslog* ]]; then
        log "$sc: $(cat "$LOGS"/access-*.log | wc -l) access log lines written over the logging runs"
        rm -f "$LOGS"/access-*.log
    fi
    echo
done

# ---------------------------------------------------------------- the tables
fmt_med() { local m; m=$(median <<<"$1"); [[ -z $1 ]] && echo "-" || echo "$m"; }

# The CPU time one request costs a server: the sum of its sides' medians (empty without
# figures).
cpu_per_request() {
    local side total=""
    for side in ${sides[$1]:-}; do
        total=$(awk -v t="${total:-0}" -v m="$(fmt_med "${cpu_runs[$1/$side]:-}")" 'BEGIN {print t + m}')
    done
    echo "$total"
}

echo "Ratios of medians (first server / second), ${ROUNDS} round(s); 'apart' = (max - min) / median of each server's rounds"
echo "'CPU': the second server's CPU time per request / the first's (all sides; above 1: the first spends less)"
printf '%-17s %-34s %7s %9s %-8s %8s %8s %-8s %6s  %s\n' scenario servers "req/s" target "" "p99" target "" CPU "rounds apart"
for sc in "${scenarios[@]}"; do
    scenario "$sc"
    a=${servers[0]} b=${servers[1]}
    read -r r ok < <(awk -v x="${med[$sc/$a]}" -v y="${med[$sc/$b]}" -v t="$target" \
        'BEGIN {if (y > 0) printf "%.2fx %s\n", x / y, (x / y >= t ? "met" : "NOT-met"); else print "n/a n/a"}')
    p="" pok=""
    if [[ -n $p99_target ]]; then
        read -r p pok < <(awk -v x="${med_p99[$sc/$a]:-0}" -v y="${med_p99[$sc/$b]:-0}" -v t="$p99_target" \
            'BEGIN {if (y > 0) printf "%.2fx %s\n", x / y, (x / y <= t ? "met" : "NOT-met"); else print "n/a n/a"}')
    fi
    cpu=$(awk -v x="$(cpu_per_request "$sc/$a")" -v y="$(cpu_per_request "$sc/$b")" \
        'BEGIN {if (x > 0 && y > 0) printf "%.2fx", y / x; else print "-"}')
    printf '%-17s %-34s %7s %9s %-8s %8s %8s %-8s %6s  %s\n' "$sc" "$a / $b" "$r" ">= ${target}x" "${ok//-/ }" \
        "${p:--}" "${p99_target:+<= ${p99_target}x}" "${pok//-/ }" "$cpu" "$a ${spread[$sc/$a]}%, $b ${spread[$sc/$b]}%"
done

echo
if [[ $SYSCALLS == 1 ]]; then
    echo "Per server (medians over the rounds), per request and side: CPU time (user + system, us), context switches, system calls (strace, ${SYSCALL_SECONDS} s runs)"
else
    echo "Per server (medians over the rounds), per request and side: CPU time (user + system, us), context switches (system calls: SYSCALLS=1)"
fi
printf '%-17s %-17s %10s %10s  %-8s %10s %10s %12s\n' scenario server "req/s" "p99 ms" side "CPU us" "ctx sw" "syscalls"
for sc in "${scenarios[@]}"; do
    scenario "$sc"
    for name in "${servers[@]}"; do
        first=1
        for side in ${sides[$sc/$name]:-}; do
            if ((first)); then
                printf '%-17s %-17s %10.0f %10s  ' "$sc" "$name" "${med[$sc/$name]}" "${med_p99[$sc/$name]:-?}"
            else
                printf '%-17s %-17s %10s %10s  ' "" "" "" ""
            fi
            first=0
            printf '%-8s %10s %10s %12s\n' "$side" "$(fmt_med "${cpu_runs[$sc/$name/$side]:-}")" \
                "$(fmt_med "${ctx_runs[$sc/$name/$side]:-}")" "$(fmt_med "${sys_runs[$sc/$name/$side]:-}")"
        done
    done
done
