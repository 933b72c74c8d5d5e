#!/usr/bin/env bash
# HTTPS: rwsgi --tls vs nginx (TLS) proxying to gunicorn (sync workers), on one
# hello-world app with the same number of workers and the same certificate. Each pair is
# measured over HTTP/1.1 (wrk) and HTTP/2 (h2load), the servers in turn (rwsgi, nginx,
# rwsgi, ...) for ROUNDS rounds; it prints requests/s per run, each median and the
# ratios against the target. A benchmark, not a test: only the ratios within one run
# mean something.
#
# Usage: bash bench/tls.sh            (see bench/README.md for the knobs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}         # seconds of measurement per run
WARMUP=${WARMUP:-2}              # seconds of load before each measurement
CONNECTIONS=${CONNECTIONS:-64}   # wrk's connections (HTTP/1.1)
THREADS=${THREADS:-2}            # wrk's and h2load's threads
H2_CONNECTIONS=${H2_CONNECTIONS:-16}
H2_STREAMS=${H2_STREAMS:-4}      # concurrent streams per HTTP/2 connection
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
PROTOCOLS=${PROTOCOLS:-"h1 h2"}
UPGRADE=${UPGRADE:-0}            # 1: upgrade gunicorn in the venv first
TARGET_NGINX=3

for var in WORKERS ROUNDS DURATION WARMUP CONNECTIONS THREADS H2_CONNECTIONS H2_STREAMS \
    START_TIMEOUT STOP_TIMEOUT; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "$var must be a positive integer, not '${!var}'" >&2; exit 2; }
done
read -r -a protocols <<<"$PROTOCOLS"
for protocol in "${protocols[@]}"; do
    case $protocol in h1 | h2) ;; *) echo "unknown protocol '$protocol' in PROTOCOLS" >&2; exit 2 ;; esac
done
servers=(rwsgi nginx)

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

CERT=$ROOT/certs/localhost.pem
KEY=$ROOT/certs/localhost.key
CA=$ROOT/certs/ca.pem

# ---------------------------------------------------------------- cleanup
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/rwsgi-bench-tls.XXXXXX")
started=()    # "pid name" of each process of the server being measured

stop_servers() {
    local entry
    for entry in "${started[@]}"; do
        stop_pid "${entry%% *}" "${entry#* }"
    done
    started=()
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM
    stop_servers
    rm -rf "$LOGS"
    exit "$status"
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- install
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
apt_install wrk wrk
apt_install h2load nghttp2-client
PATH=$PATH:/usr/sbin    # where Debian puts nginx
apt_install nginx nginx
NGINX=$(command -v nginx)

peer_venv gunicorn

build_rwsgi

# ---------------------------------------------------------------- one run
# Writes an nginx configuration for HTTPS on port $2 proxying to 127.0.0.1:$3, in $1.
nginx_config() {
    local dir=$1 port=$2 upstream=$3
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # The default (1000) closes a connection after that many requests, and h2load does
    # not reconnect: it would cap nginx's HTTP/2 figure.
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    upstream app {
        server 127.0.0.1:$upstream;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port ssl http2;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
}

# Starts server $1 on port $2 in the background; adds its processes to `started`.
start_server() {
    local name=$1 port=$2 out=$LOGS/$1-$2.log
    case $name in
        rwsgi)
            "$RWSGI" serve -w "$WORKERS" -b "127.0.0.1:$port" --tls "$CERT" --tls-key "$KEY" \
                app:app >"$out" 2>&1 &
            started+=("$! rwsgi")
            ;;
        nginx)
            local upstream dir=$LOGS/nginx-$port
            upstream=$(free_port)
            "$VENV/bin/gunicorn" -w "$WORKERS" -b "127.0.0.1:$upstream" --worker-class sync \
                --log-level warning app:app >"$LOGS/gunicorn-$upstream.log" 2>&1 &
            started+=("$! gunicorn")
            nginx_config "$dir" "$port" "$upstream"
            "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$out" 2>&1 &
            started+=("$! nginx")
            ;;
    esac
}

# Loads https://127.0.0.1:$2/ with protocol $1 for $3 seconds; prints the tool's report.
load() {
    local protocol=$1 port=$2 seconds=$3
    case $protocol in
        h1)
            timeout -k 5 $((seconds + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" \
                --latency "https://127.0.0.1:$port/"
            ;;
        h2)
            timeout -k 5 $((seconds + 30)) h2load -t"$THREADS" -c"$H2_CONNECTIONS" \
                -m"$H2_STREAMS" -D"$seconds" "https://127.0.0.1:$port/"
            ;;
    esac
}

# Measures server $1 over protocol $2 once; sets rps, latency and errors.
measure() {
    local name=$1 protocol=$2 port
    port=$(free_port)
    start_server "$name" "$port"
    local entry
    for entry in "${started[@]}"; do
        if ! wait_ready "https://127.0.0.1:$port/" "${entry%% *}" "$CA"; then
            log "$name did not come up on port $port; its logs:"
            tail -n 30 "$LOGS"/*.log "$LOGS"/nginx-*/error.log >&2 2>/dev/null || true
            exit 1
        fi
    done
    load "$protocol" "$port" "$WARMUP" >/dev/null
    local report
    report=$(load "$protocol" "$port" "$DURATION")
    printf '%s\n' "$report" >"$LOGS/$name-$protocol-$port.report"
    stop_servers
    case $protocol in
        h1)
            rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$report")
            latency="p99 $(awk '$1 == "99%" {print $2}' <<<"$report")"
            errors=$(grep -E 'Non-2xx|Socket errors' <<<"$report" | sed 's/^ *//' | paste -sd ';' - || true)
            ;;
        h2)
            # "finished in 10.00s, 12345.60 req/s, 1.23MB/s"
            rps=$(awk '/^finished in/ {print $4}' <<<"$report")
            latency="mean $(awk '/^time for request:/ {print $6}' <<<"$report")"
            # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            errors=$(awk '/^requests:/ { if ($10 + $12 + $14 > 0) print $10 " failed, " $12 " errored, " $14 " timeout" }' <<<"$report")
            if ! grep -q '^Application protocol: h2$' <<<"$report"; then
                errors="not HTTP/2${errors:+; $errors}"
            fi
            ;;
    esac
    if [[ -z $rps ]]; then
        log "could not read requests/s for $name over $protocol:"
        printf '%s\n' "$report" >&2
        exit 1
    fi
}

# ---------------------------------------------------------------- the runs
per_run=$((WARMUP + DURATION + 4))
log "$(nproc) CPUs; $(python3 --version); $("$VENV/bin/gunicorn" --version); $("$NGINX" -v 2>&1 | awk '{print $NF}'); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}'); $(h2load --version | awk '{print $NF}')"
log "workers=$WORKERS rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s h1: wrk -c$CONNECTIONS; h2: h2load -c$H2_CONNECTIONS -m$H2_STREAMS; threads=$THREADS"
log "about $((ROUNDS * ${#protocols[@]} * ${#servers[@]} * per_run))s of runs"

declare -A runs=() med=()
error_count=0
printf '%-6s %-6s %-9s %12s %14s  %s\n' round proto server "requests/s" latency errors
for round in $(seq "$ROUNDS"); do
    for protocol in "${protocols[@]}"; do
        for name in "${servers[@]}"; do
            measure "$name" "$protocol"
            runs[$protocol $name]="${runs[$protocol $name]:-} $rps"
            printf '%-6s %-6s %-9s %12.0f %14s  %s\n' "$round" "$protocol" "$name" "$rps" \
                "$latency" "${errors:-none}"
            [[ -z $errors ]] || error_count=$((error_count + 1))
        done
    done
done

echo
for protocol in "${protocols[@]}"; do
    for name in "${servers[@]}"; do
        med[$protocol $name]=$(median <<<"${runs[$protocol $name]}")
        printf 'median %-3s %-9s %12.0f requests/s\n' "$protocol" "$name" "${med[$protocol $name]}"
    done
done

echo
for protocol in "${protocols[@]}"; do
    ratio "$protocol rwsgi / nginx" "${med[$protocol rwsgi]}" "${med[$protocol nginx]}" "$TARGET_NGINX"
done
if ((error_count > 0)); then
    echo
    echo "WARNING: the load tools reported errors in $error_count run(s) (see the last column): those figures are suspect."
fi
