#!/usr/bin/env bash
# rwsgi's static files (--static, served by the front tier) vs nginx serving the same
# directory: a 10 KiB and a 1 MiB file, loaded by wrk with keep-alive connections, the
# servers measured in turn for ROUNDS rounds. nginx runs as many worker processes as
# rwsgi's front tier runs threads (--front-threads' default: half the cores, at least
# 1), with Debian's usual settings for static files (sendfile on). A benchmark, not a
# test: only ratios within one run mean something.
#
# Usage: bash bench/static.sh            (see bench/README.md for the knobs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$HERE"

FRONT=${FRONT:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}  # rwsgi front threads = nginx workers
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
TARGET_NGINX=0.9

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
check_positive FRONT ROUNDS DURATION WARMUP CONNECTIONS THREADS START_TIMEOUT STOP_TIMEOUT
begin_runs

apt_install wrk wrk
apt_install nginx nginx
NGINX=$(command -v nginx)
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
build_rwsgi

SITE=$LOGS/site
mkdir -p "$SITE"
head -c 10240 /dev/urandom >"$SITE/10k.bin"
head -c 1048576 /dev/urandom >"$SITE/1m.bin"
# nginx's workers run as an unprivileged user when it is started as root.
chmod a+rx "$LOGS" "$SITE" && chmod a+r "$SITE"/*

# Starts server $1 on port $2 in the background; sets server_pid.
start_server() {
    local name=$1 port=$2 out=$LOGS/$1-$2.log
    case $name in
        rwsgi)
            "$RWSGI" serve -w 1 --front-threads "$FRONT" -b "127.0.0.1:$port" \
                --static "/s=$SITE" app:app >"$out" 2>&1 &
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
            "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" >"$out" 2>&1 &
            ;;
    esac
    server_pid=$!
}

FILE=10k.bin
target_url() { echo "http://127.0.0.1:$2/s/$FILE"; }

log "$(nproc) CPUs; $("$NGINX" -v 2>&1); $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')"
log "front threads / nginx workers=$FRONT rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS wrk-threads=$THREADS"
log "about $((2 * ROUNDS * 2 * (WARMUP + DURATION + 3)))s of runs"

for FILE in 10k.bin 1m.bin; do
    rounds "${FILE%.bin}" rwsgi nginx
    echo
done
for case in 10k 1m; do
    ratio "rwsgi / nginx ($case)" "${med[$case/rwsgi]}" "${med[$case/nginx]}" "$TARGET_NGINX"
done
