#!/usr/bin/env bash
# suite_http.sh — the HTTP server against nginx (one worker), with wrk: kept-alive requests,
# 16 pipelined per connection, and a new connection per request (Connection: close), each
# with 100 connections. ioloop is samples/http_hello with one loop and a reuseport listener
# (the loop accepts itself, as nginx's worker does); nginx runs in the foreground with
# `master_process off`, one process, `return 200 "Hello, World!"`. Servers are pinned to
# CPU 0, wrk (one thread) to CPU 1. For each run: requests per second, and the server's CPU
# time per request (utime + stime from /proc/PID/stat over the run, all threads). Medians
# over REPEATS, servers interleaved. nginx is skipped with a note when not installed
# (Debian `nginx-light`); wrk is needed. It builds nothing: build first.
#
#   ninja -C build && test/bench/suite_http.sh build
#
# stdout: RESULT  http  IMPL  mode=..  req/s  VALUE  higher     (tab-separated)
#         RESULT  http  IMPL  mode=..  cpu-ns/req  VALUE  lower
# Environment: HTTP_SECONDS (5), HTTP_CONNS (100), REPEATS (3), IMPLS (ioloop nginx),
# PORT_BASE (19400).
set -euo pipefail

build=${1:-build}
secs=${HTTP_SECONDS:-5}
conns=${HTTP_CONNS:-100}
repeats=${REPEATS:-3}
wanted=${IMPLS:-ioloop nginx}
port=${PORT_BASE:-19400}
me=suite_http.sh
here=$(cd "$(dirname "$0")" && pwd)

hello=$build/samples/http_hello
[[ -x $hello ]] || { echo "$me: $hello not built (ninja -C $build)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "$me: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[[ $(nproc) -ge 2 ]] || { echo "$me: needs 2 CPUs (server on 0, wrk on 1)" >&2; exit 2; }
nginx_bin=$(command -v nginx || true)
if [[ -z $nginx_bin && -x /usr/sbin/nginx ]]; then
    nginx_bin=/usr/sbin/nginx
fi

tmp=$(mktemp -d)
pids=()
alive() {
    [[ -r /proc/$1/stat ]] && [[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]
}
stop() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 50); do
        alive "$1" || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local pid
    for pid in "${pids[@]}"; do alive "$pid" && stop "$pid"; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
}

# The server's CPU time so far, in clock ticks.
ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# start IMPL: starts the server on a free port; sets spid.
start() {
    free_port
    case $1 in
    ioloop)
        taskset -c 0 "$hello" -n 1 -r -a "127.0.0.1:$port" >"$tmp/$1.out" 2>&1 &
        spid=$!
        ;;
    nginx)
        mkdir -p "$tmp/nginx/logs"
        cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { default_type text/plain; return 200 "Hello, World!"; }
    }
}
EOF
        taskset -c 0 "$nginx_bin" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" \
            >"$tmp/$1.out" 2>&1 &
        spid=$!
        ;;
    esac
    pids+=("$spid")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        alive "$spid" || break
        sleep 0.05
    done
    echo "$me: $1 did not start: $(tail -3 "$tmp/$1.out")" >&2
    return 1
}

# run IMPL MODE: one wrk run; sets rps and cpu (ns per request).
run() {
    local impl=$1 mode=$2 before after requests args=()
    case $mode in
    keepalive) ;;
    pipelined16) args=(-s "$here/wrk_pipeline.lua") ;;
    close) args=(-H "Connection: close") ;;
    esac
    start "$impl" || return 1
    before=$(ticks "$spid")
    taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "${args[@]}" \
        "http://127.0.0.1:$port/plaintext" >"$tmp/wrk" 2>&1
    after=$(ticks "$spid")
    stop "$spid"
    port=$((port + 1))
    if grep -qE 'Non-2xx|Socket errors' "$tmp/wrk"; then
        echo "$me: $impl $mode: $(grep -E 'Non-2xx|Socket errors' "$tmp/wrk")" >&2
    fi
    rps=$(awk '/^Requests\/sec/ { print $2 }' "$tmp/wrk")
    requests=$(awk '/requests in/ { print $1 }' "$tmp/wrk")
    cpu=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.0f", t * 1e9 / hz / n }')
    echo "$me: $impl $mode: $rps req/s, $cpu ns CPU per request" >&2
}

impls=()
for impl in $wanted; do
    if [[ $impl == nginx && -z $nginx_bin ]]; then
        echo "$me: nginx not installed (apt-get install nginx-light); skipped" >&2
        continue
    fi
    impls+=("$impl")
done

for mode in keepalive pipelined16 close; do
    declare -A all_rps=() all_cpu=()
    for ((r = 0; r < repeats; r++)); do
        for impl in "${impls[@]}"; do
            run "$impl" "$mode" || continue
            all_rps[$impl]="${all_rps[$impl]:-} $rps"
            all_cpu[$impl]="${all_cpu[$impl]:-} $cpu"
        done
    done
    for impl in "${impls[@]}"; do
        [[ -n ${all_rps[$impl]:-} ]] || continue
        # shellcheck disable=SC2086  # word splitting on purpose
        printf 'RESULT\thttp\t%s\tmode=%s\treq/s\t%s\thigher\n' "$impl" "$mode" \
            "$(median ${all_rps[$impl]})"
        # shellcheck disable=SC2086
        printf 'RESULT\thttp\t%s\tmode=%s\tcpu-ns/req\t%s\tlower\n' "$impl" "$mode" \
            "$(median ${all_cpu[$impl]})"
    done
    unset all_rps all_cpu
done
