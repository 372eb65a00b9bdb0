#!/usr/bin/env bash
# suite_accept.sh — a new connection per request: ioloop's server, in its acceptor-thread mode
# and in its reuseport mode, side by side with nginx (one worker), libevent (evhttp, and a
# bufferevent responder), libuv, and a hand-written epoll floor.
#
# The protocol is HTTP/1.0 without keep-alive: the client connects, sends
# "GET / HTTP/1.0\r\n\r\n", reads the whole reply ("Hello, World!" with a 200) until the
# server's EOF, checks it and closes. Every server answers with one write and closes first, so
# TIME_WAIT lands on the server's side and the client's ephemeral ports never run out (the
# suite prints `ss -s`'s TIME_WAIT count before and after).
#
#   impl              server
#   ioloop            test/bench/accept_ioloop      pool of 1 loop, default options: an acceptor
#                                                   thread hands connections to the loop
#   ioloop-reuseport  test/bench/accept_ioloop -r   .reuseport = 1: the loop accepts itself
#   nginx             the system's nginx            1 worker (master_process on: see below)
#   evhttp            test/bench/accept_evhttp      libevent's HTTP server
#   libevent-bev      test/bench/accept_event       evconnlistener + bufferevent responder
#   libuv             test/bench/accept_uv          uv_listen/uv_accept/uv_read_start/uv_write
#   raw-epoll         test/bench/accept_raw_epoll   the floor: accept, read at once, send, close
#                                                   (no epoll registration when the request is
#                                                   there, no linger, no timer)
#
# The ratios are to nginx, against which the bars are set (report.py); raw-epoll shows how
# much of every server's CPU time is the kernel's TCP work, which no event library avoids.
#
# Every server process runs pinned to CPU 0, all of its threads included (ioloop's acceptor
# thread shares the core with its loop), and its CPU time is that of the whole process; the
# client is pinned to CPU 1. nginx runs as in production, a master and one worker process
# (worker_processes 1, master_process on, daemon off so that the suite owns the master's pid):
# the master only waits for signals, and the figure is the worker's CPU time. Its
# configuration (access_log off, keepalive_timeout 0, `return 200 "Hello, World!"`), pid file,
# error log and temp paths live in the suite's temporary directory.
#
# The load is test/bench/accept_client (the default: one thread, raw epoll, C concurrent
# connection-per-request loops, every reply checked) or, with CLIENT=ab, ApacheBench
# (`ab -n N -c C`, without -k; slower per connection, so the client saturates sooner). One
# table comes from one client. For each concurrency C, each repeat runs the client once against
# every server, the servers interleaved and their order rotated from one repeat to the next;
# each figure is the median over the repeats:
#   conn/s    connections completed per second during the measured window (higher is better)
#   us/conn   the server's CPU time (utime + stime from /proc/PID/stat, every thread) during
#             that window, per connection (lower is better; steadier than conn/s when other
#             load shares the machine)
# A run is bounded by time and by count: BENCH_SECONDS after a warm-up of BENCH_WARMUP, or
# ACCEPT_MAX connections, whichever comes first. It builds nothing: build first.
#
#   ninja -C build && test/bench/suite_accept.sh build
#
# stdout (tab-separated):
#   RESULT  accept  IMPL  C=..  conn/s   VALUE  higher
#   RESULT  accept  IMPL  C=..  us/conn  VALUE  lower
# stderr: progress, and per C each server's medians with its CPU use during the window (near
# 100%: the server was the bottleneck) and the client's.
#
# With SYSCALLS=1 (needs perf), one more run per server and C counts the syscalls and context
# switches of the server process per connection with perf's tracepoints:
#   RESULT  accept  IMPL  C=..  syscalls/conn  VALUE  lower
#
# Environment: CLIENT (accept_client | ab), BENCH_SECONDS (5), BENCH_WARMUP (1), ACCEPT_MAX
# (50000), REPEATS (3), CONNS ("1 50"), IMPLS (default: all of the above), PORT_BASE (19400;
# busy ports are skipped), NGINX (nginx, from PATH or /usr/sbin), SYSCALLS (0).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:-build}
client_kind=${CLIENT:-accept_client}
secs=${BENCH_SECONDS:-5}
warmup=${BENCH_WARMUP:-1}
max=${ACCEPT_MAX:-50000}
repeats=${REPEATS:-3}
conns=${CONNS:-1 50}
wanted=${IMPLS:-ioloop ioloop-reuseport nginx evhttp libevent-bev libuv raw-epoll}
port=${PORT_BASE:-19400}
nginx=${NGINX:-$(PATH=$PATH:/usr/sbin command -v nginx || true)}
me=suite_accept.sh

client=$build/test/bench/accept_client
case $client_kind in
accept_client) [[ -x $client ]] || { echo "$me: $client not built (ninja -C $build)" >&2; exit 2; } ;;
ab) command -v ab >/dev/null || { echo "$me: ab not installed (apt-get install apache2-utils)" >&2; exit 2; } ;;
*) echo "$me: CLIENT must be accept_client or ab" >&2; exit 2 ;;
esac
[[ $(nproc) -ge 2 ]] || { echo "$me: needs 2 CPUs (servers on 0, client on 1)" >&2; exit 2; }

servers_scratch # tmp, pids, and the EXIT trap that stops the servers (lib.sh)


# server_argv IMPL: sets argv to the server's command line (without the address), or for
# nginx to the nginx binary alone.
server_argv() {
    case $1 in
    ioloop)           argv=("$build/test/bench/accept_ioloop") ;;
    ioloop-reuseport) argv=("$build/test/bench/accept_ioloop" -r) ;;
    nginx)            argv=("${nginx:-/nonexistent/nginx}") ;;
    evhttp)           argv=("$build/test/bench/accept_evhttp") ;;
    libevent-bev)     argv=("$build/test/bench/accept_event") ;;
    libuv)            argv=("$build/test/bench/accept_uv") ;;
    raw-epoll)        argv=("$build/test/bench/accept_raw_epoll") ;;
    *) echo "$me: unknown implementation $1" >&2; exit 2 ;;
    esac
}

# start IMPL: starts its server pinned to CPU 0 on a free port and waits until it serves; sets
# pid_IMPL (the process whose CPU time counts: nginx's worker) and port_IMPL (dashes become
# underscores).
start() {
    local impl=$1 var=${1//-/_} out=$tmp/$1.out pid cpu_pid="" dir
    server_argv "$impl"
    free_port
    if [[ $impl == nginx ]]; then
        dir=$tmp/nginx
        mkdir -p "$dir"
        nginx_conf "$dir" "$port" on "keepalive_timeout 0"
        taskset -c 0 "${argv[0]}" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
            >"$out" 2>&1 &
    else
        taskset -c 0 "${argv[@]}" -a "127.0.0.1:$port" >"$out" 2>&1 &
    fi
    pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
        if [[ $impl == nginx ]]; then
            # The worker is the master's only child; it serves once the port accepts.
            cpu_pid=$(awk '{ print $1 }' "/proc/$pid/task/$pid/children" 2>/dev/null)
            if [[ -n $cpu_pid ]] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                pids+=("$cpu_pid")
                break
            fi
            cpu_pid=""
        elif grep -qs listening "$out"; then
            cpu_pid=$pid
            break
        fi
        alive "$pid" || break
        sleep 0.05
    done
    if [[ -z $cpu_pid ]]; then
        echo "$me: $impl did not start:" >&2
        cat "$out" >&2
        [[ $impl != nginx ]] || cat "$tmp/nginx/error.log" >&2 2>/dev/null || true
        exit 1
    fi
    printf -v "pid_$var" %s "$cpu_pid"
    printf -v "port_$var" %s "$port"
    port=$((port + 1))
}

# measure PID PORT C: one run; sets rate (conn/s), us (server CPU us/conn), scpu and ccpu
# (server and client CPU %), or fails with a note.
measure() {
    local pid=$1 p=$2 c=$3 out before after n t
    if [[ $client_kind == accept_client ]]; then
        out=$(taskset -c 1 "$client" -a "127.0.0.1:$p" -c "$c" -t "$secs" -w "$warmup" \
              -n "$max" -P "$pid" 2>&1) || { echo "$out"; return 1; }
        rate=$(sed -n 's/.*: \([0-9.]*\) conn\/s.*/\1/p' <<<"$out")
        us=$(sed -n 's/.*, \([0-9.]*\) us\/conn.*/\1/p' <<<"$out")
        scpu=$(sed -n 's/.*server CPU \([0-9]*\)%.*/\1/p' <<<"$out")
        ccpu=$(sed -n 's/.*client CPU \([0-9]*\)%.*/\1/p' <<<"$out")
        [[ -n $rate && -n $us ]] || { echo "$out"; return 1; }
        return 0
    fi
    # ab: a short warm-up run, then the measured one, with the server's CPU time read around
    # it (ab's startup is in the window: a millisecond against seconds). ab's own CPU use is
    # not measured.
    if [[ $warmup != 0 ]]; then
        taskset -c 1 ab -q -t "$warmup" -n "$max" -c "$c" "http://127.0.0.1:$p/" >/dev/null 2>&1 || true
    fi
    before=$(cpu_us "$pid")
    out=$(taskset -c 1 ab -q -t "$secs" -n "$max" -c "$c" "http://127.0.0.1:$p/" 2>&1) ||
        { echo "$out"; return 1; }
    after=$(cpu_us "$pid")
    n=$(awk '/^Complete requests:/ { print $3 }' <<<"$out")
    t=$(awk '/^Time taken for tests:/ { print $5 }' <<<"$out")
    if [[ -z $n || $n == 0 || -z $t ]] ||
       [[ $(awk '/^Failed requests:/ { print $3 }' <<<"$out") != 0 ]] ||
       [[ $(awk '/^Non-2xx responses:/ { print $3 }' <<<"$out") != "" ]]; then
        echo "$out"
        return 1
    fi
    rate=$(awk -v n="$n" -v t="$t" 'BEGIN { printf "%.0f", n / t }')
    us=$(awk -v d=$((after - before)) -v n="$n" 'BEGIN { printf "%.2f", d / n }')
    scpu=$(awk -v d=$((after - before)) -v t="$t" 'BEGIN { printf "%.0f", d / 1e4 / t }')
    ccpu=-
}

timewait() {
    ss -s | sed -n 's/.*timewait \([0-9]*\).*/\1/p'
}

impls=()
for impl in $wanted; do
    server_argv "$impl"
    if [[ -x ${argv[0]} ]]; then
        impls+=("$impl")
    else
        case $impl in
        ioloop|ioloop-reuseport|raw-epoll)
            echo "$me: ${argv[0]} not built (ninja -C $build)" >&2; exit 2 ;;
        nginx) echo "$me: note: skipping nginx: not installed (apt-get install nginx-light)" >&2 ;;
        *)  echo "$me: note: skipping $impl: ${argv[0]} not built (peer not installed?)" >&2 ;;
        esac
    fi
done
for impl in "${impls[@]}"; do start "$impl"; done

runs=$(( $(wc -w <<<"$conns") * repeats * ${#impls[@]} ))
echo "$me: ${#impls[@]} servers on CPU 0, $client_kind on CPU 1; ${warmup} s warm-up +" \
     "${secs} s or $max connections per run, median of $repeats; $runs runs, at most" \
     "$(awk -v n="$runs" -v s="$secs" -v w="$warmup" 'BEGIN { printf "%.0f", n * (s + w + 0.3) / 60 + 0.5 }')" \
     "min; load average $(cut -d' ' -f1-3 /proc/loadavg); TIME_WAIT sockets: $(timewait)" >&2

status=0
declare -A rates uss scpus ccpus
for c in $conns; do
    for ((r = 0; r < repeats; r++)); do
        n=${#impls[@]}
        for ((k = 0; k < n; k++)); do
            impl=${impls[(k + r) % n]}
            var=${impl//-/_}
            pid_ref=pid_$var port_ref=port_$var
            if ! alive "${!pid_ref}"; then
                echo "$me: $impl's server has exited:" >&2
                tail -5 "$tmp/$impl.out" >&2
                status=1
                continue
            fi
            if measure "${!pid_ref}" "${!port_ref}" "$c" >"$tmp/run.out"; then
                rates[$impl]+=" $rate"
                uss[$impl]+=" $us"
                scpus[$impl]+=" $scpu"
                ccpus[$impl]+=" $ccpu"
            else
                echo "$me: $impl failed at C=$c:" >&2
                tail -5 "$tmp/run.out" >&2
                status=1
            fi
        done
    done
    echo "$me: C=$c ($client_kind; TIME_WAIT sockets now: $(timewait)):" >&2
    for impl in "${impls[@]}"; do
        [[ -n ${rates[$impl]:-} ]] || continue
        # shellcheck disable=SC2086  # the lists are space-separated numbers
        m_rate=$(median ${rates[$impl]}) m_us=$(median ${uss[$impl]})
        printf 'RESULT\taccept\t%s\tC=%s\tconn/s\t%s\thigher\n' "$impl" "$c" "$m_rate"
        printf 'RESULT\taccept\t%s\tC=%s\tus/conn\t%s\tlower\n' "$impl" "$c" "$m_us"
        if [[ $client_kind == ab ]]; then
            cc=-
        else
            # shellcheck disable=SC2086
            cc=$(median ${ccpus[$impl]})%
        fi
        # shellcheck disable=SC2086
        printf '    %-17s %8s conn/s  %7s us/conn  server CPU %4s%%  client CPU %5s   (runs: conn/s%s; us/conn%s)\n' \
               "$impl" "$m_rate" "$m_us" "$(median ${scpus[$impl]})" "$cc" "${rates[$impl]}" \
               "${uss[$impl]}" >&2
    done
    rates=() uss=() scpus=() ccpus=()
done

# With SYSCALLS=1: one more run per server and C with accept_client, counted by perf's
# syscall tracepoints (cheap next to strace, and the counts hardly depend on other load):
# the syscalls and context switches the server process makes per connection, each syscall
# on stderr, the total as a RESULT row (syscalls/conn, lower is better).
counted=(accept4 epoll_wait epoll_ctl read readv recvfrom recvmsg write writev sendto sendmsg shutdown close
         timerfd_settime)
if [[ ${SYSCALLS:-0} == 1 ]] && ! command -v perf >/dev/null; then
    echo "$me: note: SYSCALLS=1 needs perf (apt-get install linux-perf); skipped" >&2
elif [[ ${SYSCALLS:-0} == 1 ]]; then
    events=context-switches
    for sc in "${counted[@]}"; do events+=",syscalls:sys_enter_$sc"; done
    for c in $conns; do
        echo "$me: C=$c: syscalls per connection (perf stat, $max connections):" >&2
        for impl in "${impls[@]}"; do
            var=${impl//-/_}
            pid_ref=pid_$var port_ref=port_$var
            perf stat -x, -e "$events" -p "${!pid_ref}" -o "$tmp/perf.csv" &
            perf_pid=$!
            sleep 0.3 # perf attaches
            if ! taskset -c 1 "$client" -a "127.0.0.1:${!port_ref}" -c "$c" -t 60 -w 0 -n "$max" \
                 >"$tmp/run.out" 2>&1; then
                echo "$me: $impl failed at C=$c: $(tail -3 "$tmp/run.out")" >&2
                status=1
            fi
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
            done_n=$(sed -n 's/.*C=[0-9]*: \([0-9]*\) conns.*/\1/p' "$tmp/run.out")
            [[ -n $done_n ]] || continue
            line=$(awk -F, -v n="$done_n" '$1 ~ /^[0-9]+$/ {
                    name = $3; sub("syscalls:sys_enter_", "", name)
                    if (name == "context-switches") { cs = $1 / n; next }
                    total += $1
                    if ($1 / n >= 0.005) list = list sprintf(" %s %.2f", name, $1 / n) }
                END { printf "%.2f\t%.2f\t%s", total / n, cs, list }' "$tmp/perf.csv")
            IFS=$'\t' read -r total cs list <<<"$line"
            printf 'RESULT\taccept\t%s\tC=%s\tsyscalls/conn\t%s\tlower\n' "$impl" "$c" "$total"
            printf '    %-17s %6s syscalls/conn, %5s context switches/conn:%s\n' "$impl" "$total" \
                   "$cs" "$list" >&2
        done
    done
fi
exit $status
