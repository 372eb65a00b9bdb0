#!/usr/bin/env bash
# suite_http.sh — the HTTP server against nginx (one worker) and libevent's evhttp, four rows:
#
#   mode            client                                      connections
#   keepalive-c10   wrk -t1, kept alive                         10
#   keepalive-c100  wrk -t1, kept alive                         100
#   pipeline16      wrk -t1 -s wrk_pipeline.lua: 16 requests    100 (HTTP_CONNS)
#                   written at a time on each connection
#   close           ab without -k: HTTP/1.0, a new connection   50 (CLOSE_CONNS)
#                   per request, the server closes
#
# Without ab (Debian `apache2-utils`) the last row falls back to wrk with a
# "Connection: close" header, at the same concurrency, and is named close-wrk (not comparable
# with an ab row: another client, and HTTP/1.1 requests where ab sends HTTP/1.0).
#
#   impl     server
#   ioloop   samples/http_hello -n 1 -r: one loop, a reuseport listener (the loop accepts
#            itself, as nginx's worker does)
#   nginx    the system's nginx (Debian `nginx-light`) in the foreground, `master_process off`:
#            one process that is the worker; `return 200 "Hello, World!"`, default_type
#            text/plain, access log off, keepalive_requests 100000000; configuration, pid
#            file, error log and temp paths in the suite's temporary directory
#   evhttp   test/bench/accept_evhttp: evhttp on one event_base, Content-Type text/plain
#
# Every reply is 200 with the body "Hello, World!" and Date, Content-Type (text/plain) and
# Content-Length headers. The header blocks differ in size (whole replies, body included):
#   HTTP/1.1 kept alive: ioloop 131 bytes (adds "Server: ioloop"), nginx 161 ("Server:
#   nginx/1.22.1", "Connection: keep-alive"), evhttp 115 (nothing more);
#   HTTP/1.0 from ab: ioloop 150 and nginx 156 (both answer "HTTP/1.1" with
#   "Connection: close"), evhttp 115 (answers "HTTP/1.0", no Connection header).
# evhttp answers pipelined requests one at a time: the next is parsed once the previous reply
# was written, so each reply is a writev of its own, with about four epoll_ctl calls per
# request turning read and write interest on and off (strace -c, 16 deep); ioloop gathers a
# read's replies into one send.
#
# Every server is started for each run, on a free port of 127.0.0.1, pinned to CPU 0 with all
# of its threads, and stopped after it (SIGTERM, SIGKILL after 5 s; every pid started is
# stopped on exit); the client runs pinned to CPU 1. Each repeat runs every server once per
# row, the servers interleaved and their order rotated from one repeat to the next; each
# figure is the median over REPEATS:
#   req/s    requests answered per second (wrk's Requests/sec, ab's Requests per second)
#   us/req   the server's CPU time (utime + stime from /proc/PID/stat, every thread) over the
#            client's run, per request
# Runs are bounded: wrk -d HTTP_SECONDS with --timeout 5s, ab -t HTTP_SECONDS -n AB_MAX -s 5,
# each under timeout(1) as well. A run fails loudly (on stderr, and the suite exits 1) when
# the client fails, gets no reply at all, or reports anything but 2xx: wrk's "Non-2xx or 3xx
# responses" or "Socket errors", ab's "Failed requests" other than 0 or "Non-2xx responses";
# that server's figures for the row are then left out. ioloop's ratios to nginx and the
# issue's bars (req/s >= 1.0x nginx, >= 5x pipelined; CPU per request <= 0.8x nginx's, <= 0.2x
# pipelined) are printed on stderr; report.py takes nginx as this suite's reference.
# evhttp is skipped with a note when libevent was not installed at build time, nginx when it
# is not installed; wrk is needed. It builds nothing: build first.
#
#   ninja -C build && test/bench/suite_http.sh build
#
# stdout (tab-separated):
#   RESULT  http  IMPL  mode=MODE  req/s   VALUE  higher
#   RESULT  http  IMPL  mode=MODE  us/req  VALUE  lower
# Environment: HTTP_SECONDS (5), HTTP_MODES ("keepalive-c10 keepalive-c100 pipeline16
# close"; also keepalive-cN for any N, and close-wrk), HTTP_CONNS (100, pipelined),
# CLOSE_CONNS (50), AB_MAX (50000), REPEATS (3), IMPLS ("ioloop nginx evhttp"), PORT_BASE
# (19400; busy ports are skipped), NGINX (nginx, from PATH or /usr/sbin).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:-build}
secs=${HTTP_SECONDS:-5}
modes=${HTTP_MODES:-keepalive-c10 keepalive-c100 pipeline16 close}
pipe_conns=${HTTP_CONNS:-100}
close_conns=${CLOSE_CONNS:-50}
ab_max=${AB_MAX:-50000}
repeats=${REPEATS:-3}
wanted=${IMPLS:-ioloop nginx evhttp}
port=${PORT_BASE:-19400}
nginx=${NGINX:-$(PATH=$PATH:/usr/sbin command -v nginx || true)}
me=suite_http.sh
here=$(cd "$(dirname "$0")" && pwd)
# A run's hard limit: the client's own bound plus time to connect, drain and print.
limit=$((secs + 30))

hello=$build/samples/http_hello
evhttp=$build/test/bench/accept_evhttp
[[ -x $hello ]] || { echo "$me: $hello not built (ninja -C $build)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "$me: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[[ $(nproc) -ge 2 ]] || { echo "$me: needs 2 CPUs (server on 0, client on 1)" >&2; exit 2; }
have_ab=0
command -v ab >/dev/null && have_ab=1

servers_scratch # tmp, pids, and the EXIT trap that stops the servers (lib.sh)


# start IMPL: starts the server pinned to CPU 0 on a free port and waits until it accepts
# connections; sets spid (the process whose CPU time counts) and sport.
start() {
    local impl=$1 out=$tmp/$1.out dir=$tmp/nginx
    free_port
    case $impl in
    ioloop)
        taskset -c 0 "$hello" -n 1 -r -a "127.0.0.1:$port" >"$out" 2>&1 &
        ;;
    nginx)
        rm -rf "$dir"
        mkdir -p "$dir"
        nginx_conf "$dir" "$port" off "keepalive_requests 100000000"
        taskset -c 0 "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$out" 2>&1 &
        ;;
    evhttp)
        taskset -c 0 "$evhttp" -a "127.0.0.1:$port" >"$out" 2>&1 &
        ;;
    esac
    spid=$!
    sport=$port
    port=$((port + 1))
    pids+=("$spid")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$sport") 2>/dev/null && return 0
        alive "$spid" || break
        sleep 0.05
    done
    echo "$me: FAILED: $impl did not start:" >&2
    tail -5 "$out" >&2
    [[ $impl != nginx ]] || tail -5 "$dir/error.log" >&2 2>/dev/null || true
    stop "$spid"
    return 1
}

# client MODE PORT: one bounded client run against 127.0.0.1:PORT, its output in
# $tmp/client; sets rps and requests, or fails (after printing why) when the client failed
# or saw anything but 2xx replies.
client() {
    local mode=$1 url=http://127.0.0.1:$2/plaintext out=$tmp/client args=() c errors
    case $mode in
    keepalive-c[0-9]*) c=${mode#keepalive-c} ;;
    pipeline16)        c=$pipe_conns args=(-s "$here/wrk_pipeline.lua") ;;
    close-wrk)         c=$close_conns args=(-H "Connection: close") ;;
    close)
        timeout -k 5 "$limit" taskset -c 1 ab -q -s 5 -t "$secs" -n "$ab_max" \
            -c "$close_conns" "$url" >"$out" 2>&1 || {
            echo "ab failed (exit status $?):"
            tail -5 "$out"
            return 1
        }
        requests=$(awk '/^Complete requests:/ { print $3 }' "$out")
        rps=$(awk '/^Requests per second:/ { print $4 }' "$out")
        errors=$(grep -E '^(Failed requests|Non-2xx responses|Write errors):' "$out" |
                 grep -vE ':[[:space:]]+0$' || true)
        if [[ -n $errors || -z $requests || $requests == 0 || -z $rps ]]; then
            echo "ab: ${errors:-no request completed}"
            grep -E '^(Complete|Failed|Non-2xx|Write errors|   \()' "$out" || tail -5 "$out"
            return 1
        fi
        return 0
        ;;
    *) echo "$me: unknown mode $mode" >&2; exit 2 ;;
    esac
    timeout -k 5 "$limit" taskset -c 1 wrk -t1 -c"$c" -d"${secs}s" --timeout 5s \
        "${args[@]}" "$url" >"$out" 2>&1 || {
        echo "wrk failed (exit status $?):"
        tail -5 "$out"
        return 1
    }
    requests=$(awk '/ requests in / { print $1 }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    errors=$(grep -E 'Non-2xx|Socket errors' "$out" || true)
    if [[ -n $errors || -z $requests || $requests == 0 || -z $rps ]]; then
        echo "wrk: ${errors:-no request completed}"
        cat "$out"
        return 1
    fi
}

# run IMPL MODE: starts the server, runs the client, stops the server; sets rps and us (the
# server's CPU us per request), or fails with a loud note.
run() {
    local impl=$1 mode=$2 before after
    start "$impl" || return 1
    before=$(cpu_us "$spid")
    if ! client "$mode" "$sport" >"$tmp/why" 2>&1; then
        stop "$spid"
        echo "$me: FAILED: $impl $mode:" >&2
        sed 's/^/    /' "$tmp/why" >&2
        return 1
    fi
    after=$(cpu_us "$spid")
    if ! alive "$spid"; then
        echo "$me: FAILED: $impl $mode: the server exited during the run:" >&2
        tail -5 "$tmp/$impl.out" >&2
        stop "$spid"
        return 1
    fi
    stop "$spid"
    us=$(awk -v d=$((after - before)) -v n="$requests" 'BEGIN { printf "%.2f", d / n }')
    echo "$me: $impl $mode: $rps req/s, $us us CPU per request" >&2
}

impls=()
for impl in $wanted; do
    case $impl in
    ioloop) ;;
    nginx)
        if [[ -z $nginx || ! -x $nginx ]]; then
            echo "$me: note: skipping nginx: not installed (apt-get install nginx-light)" >&2
            continue
        fi
        ;;
    evhttp)
        if [[ ! -x $evhttp ]]; then
            echo "$me: note: skipping evhttp: $evhttp not built (libevent not installed?" \
                 "apt-get install libevent-dev, then reconfigure)" >&2
            continue
        fi
        ;;
    *) echo "$me: unknown implementation $impl (have: ioloop nginx evhttp)" >&2; exit 2 ;;
    esac
    impls+=("$impl")
done
rows=()
for mode in $modes; do
    if [[ $mode == close && $have_ab == 0 ]]; then
        echo "$me: note: ab is not installed (apt-get install apache2-utils): the" \
             "connection-per-request row runs wrk with \"Connection: close\" instead (close-wrk)" >&2
        mode=close-wrk
    fi
    rows+=("$mode")
done

runs=$(( ${#rows[@]} * repeats * ${#impls[@]} ))
echo "$me: ${impls[*]} on CPU 0, the client on CPU 1; ${secs} s per run, median of" \
     "$repeats; $runs runs, about $(( (runs * (secs + 1) + 59) / 60 )) min; load average" \
     "$(cut -d' ' -f1-3 /proc/loadavg)" >&2

# bar IMPL_VALUE NGINX_VALUE OP LIMIT: "ratio ok" or "ratio MISS" for ratio = IMPL / NGINX
# against "ge"/"le" LIMIT.
bar() {
    awk -v v="$1" -v r="$2" -v op="$3" -v lim="$4" 'BEGIN {
        x = v / r; ok = (op == "ge") ? x >= lim : x <= lim
        printf "%.2fx %s", x, ok ? "ok" : "MISS" }'
}

status=0
declare -A all_rps all_us failed med_rps med_us
for mode in "${rows[@]}"; do
    all_rps=() all_us=() failed=() med_rps=() med_us=()
    for ((r = 0; r < repeats; r++)); do
        n=${#impls[@]}
        for ((k = 0; k < n; k++)); do
            impl=${impls[(k + r) % n]}
            if run "$impl" "$mode"; then
                all_rps[$impl]+=" $rps"
                all_us[$impl]+=" $us"
            else
                failed[$impl]=1
                status=1
            fi
        done
    done
    echo "$me: mode=$mode:" >&2
    for impl in "${impls[@]}"; do
        if [[ -n ${failed[$impl]:-} ]]; then
            echo "    $impl: FAILED (see above); no figure for this row" >&2
            continue
        fi
        # shellcheck disable=SC2086  # the lists are space-separated numbers
        m_rps=$(median ${all_rps[$impl]}) m_us=$(median ${all_us[$impl]})
        med_rps[$impl]=$m_rps med_us[$impl]=$m_us
        printf 'RESULT\thttp\t%s\tmode=%s\treq/s\t%s\thigher\n' "$impl" "$mode" "$m_rps"
        printf 'RESULT\thttp\t%s\tmode=%s\tus/req\t%s\tlower\n' "$impl" "$mode" "$m_us"
        printf '    %-7s %10s req/s %8s us/req   (runs: req/s%s; us/req%s)\n' "$impl" "$m_rps" \
               "$m_us" "${all_rps[$impl]}" "${all_us[$impl]}" >&2
    done
    if [[ -n ${med_rps[ioloop]:-} && -n ${med_rps[nginx]:-} ]]; then
        rps_bar=1.0 us_bar=0.8
        [[ $mode != pipeline16 ]] || rps_bar=5 us_bar=0.2
        echo "    ioloop / nginx: req/s $(bar "${med_rps[ioloop]}" "${med_rps[nginx]}" ge "$rps_bar")" \
             "(bar >= ${rps_bar}x), us/req $(bar "${med_us[ioloop]}" "${med_us[nginx]}" le "$us_bar")" \
             "(bar <= ${us_bar}x)" >&2
    fi
done
exit $status
