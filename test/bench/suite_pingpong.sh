#!/usr/bin/env bash
# suite_pingpong.sh — ping-pong echo throughput (muduo's method): ioloop's echo servers side by
# side with a hand-written raw epoll server and with libuv, libevent and libev.
#
# Every server is single-threaded, echoes everything and runs pinned to CPU 0; the load client
# (pp_client: one thread, raw epoll, checks every echoed byte) runs pinned to CPU 1. For each
# C connections x S-byte blocks, each repeat runs the client once against every server, the
# servers interleaved and their order rotated from one repeat to the next, so that load from
# other processes spreads over all of them. The figure is the median MiB/s over the repeats.
#
#   impl          server
#   ioloop        samples/echo_server -n 1 -q       (the server/connection layer)
#   ioloop-core   test/bench/pp_ioloop_core         (ioloop's core fd-handler API only)
#   raw-epoll     test/bench/raw_epoll_echo         (the reference)
#   libuv         test/bench/pp_uv                  (uv_tcp_t, uv_read_start, uv_try_write/uv_write)
#   libevent-bev  test/bench/pp_bufferevent         (bufferevent, evbuffer_add_buffer)
#   libevent      test/bench/pp_event               (plain struct event, read/send)
#   libev         test/bench/pp_ev                  (ev_io, read/send)
#
# The peers are optional (built only when installed); an absent one is skipped with a note.
# It builds nothing: build first.
#
#   ninja -C build && test/bench/suite_pingpong.sh build
#
# stdout: one line per figure, tab-separated:
#   RESULT  pingpong  IMPL  C=..;S=..  MiB/s  VALUE  higher
# stderr: progress, and per figure each server's median MiB/s with, in parentheses, its CPU use
# during the measured seconds (near 100%: the server was the bottleneck; well below: the client
# or latency was) and its CPU time per message (what its code costs; less sensitive to other
# load than throughput) — medians too.
#
# Environment: BENCH_SECONDS (5, measured per run), BENCH_WARMUP (1), REPEATS (3),
# CONNS ("1 10 100 1000"), SIZES ("16 4096 16384"), IMPLS (default: all of the above),
# PORT_BASE (19200; busy ports are skipped).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:-build}
secs=${BENCH_SECONDS:-5}
warmup=${BENCH_WARMUP:-1}
repeats=${REPEATS:-3}
conns=${CONNS:-1 10 100 1000}
sizes=${SIZES:-16 4096 16384}
wanted=${IMPLS:-ioloop ioloop-core raw-epoll libuv libevent-bev libevent libev}
port=${PORT_BASE:-19200}
me=suite_pingpong.sh

client=$build/test/bench/pp_client
[[ -x $client ]] || { echo "$me: $client not built (ninja -C $build)" >&2; exit 2; }
[[ $(nproc) -ge 2 ]] || { echo "$me: needs 2 CPUs (servers on 0, client on 1)" >&2; exit 2; }

# server_argv IMPL: sets argv to the server's command line (without -a).
server_argv() {
    case $1 in
    ioloop)       argv=("$build/samples/echo_server" -n 1 -q) ;;
    ioloop-core)  argv=("$build/test/bench/pp_ioloop_core") ;;
    raw-epoll)    argv=("$build/test/bench/raw_epoll_echo") ;;
    libuv)        argv=("$build/test/bench/pp_uv") ;;
    libevent-bev) argv=("$build/test/bench/pp_bufferevent") ;;
    libevent)     argv=("$build/test/bench/pp_event") ;;
    libev)        argv=("$build/test/bench/pp_ev") ;;
    *) echo "$me: unknown implementation $1" >&2; exit 2 ;;
    esac
}

servers_scratch # tmp, pids, and the EXIT trap that stops the servers (lib.sh)


# start IMPL: starts its server pinned to CPU 0 on a free port and waits for its "listening"
# line; sets pid_IMPL and port_IMPL (dashes become underscores).
start() {
    local impl=$1 var=${1//-/_} out=$tmp/$1.out pid
    server_argv "$impl"
    free_port
    taskset -c 0 "${argv[@]}" -a "127.0.0.1:$port" >"$out" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
        if grep -qs listening "$out"; then
            printf -v "pid_$var" %s "$pid"
            printf -v "port_$var" %s "$port"
            port=$((port + 1))
            return 0
        fi
        alive "$pid" || break
        sleep 0.05
    done
    echo "$me: $impl did not start:" >&2
    cat "$out" >&2
    exit 1
}

impls=()
for impl in $wanted; do
    server_argv "$impl"
    if [[ -x ${argv[0]} ]]; then
        impls+=("$impl")
    else
        case $impl in
        ioloop|ioloop-core|raw-epoll)
            echo "$me: ${argv[0]} not built (ninja -C $build)" >&2; exit 2 ;;
        *)  echo "$me: note: skipping $impl: ${argv[0]} not built (peer not installed?)" >&2 ;;
        esac
    fi
done
for impl in "${impls[@]}"; do start "$impl"; done

runs=$(( $(wc -w <<<"$conns") * $(wc -w <<<"$sizes") * repeats * ${#impls[@]} ))
echo "$me: ${#impls[@]} servers on CPU 0, pp_client on CPU 1; ${warmup} s warm-up + ${secs} s" \
     "per run, median of $repeats; $runs runs, about $(awk -v n="$runs" -v s="$secs" \
     -v w="$warmup" 'BEGIN { printf "%.0f", n * (s + w + 0.3) / 60 + 0.5 }') min;" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

status=0
declare -A mibs cpu nsmsg
for s in $sizes; do
    for c in $conns; do
        for ((r = 0; r < repeats; r++)); do
            n=${#impls[@]}
            for ((k = 0; k < n; k++)); do
                impl=${impls[(k + r) % n]}
                var=${impl//-/_}
                pid_ref=pid_$var port_ref=port_$var
                pid=${!pid_ref} p=${!port_ref}
                if ! alive "$pid"; then
                    echo "$me: $impl's server has exited:" >&2
                    tail -5 "$tmp/$impl.out" >&2
                    status=1
                    continue
                fi
                if out=$(taskset -c 1 "$client" -a "127.0.0.1:$p" -c "$c" -s "$s" -t "$secs" \
                         -w "$warmup" -P "$pid" 2>&1); then
                    mibs[$impl]+=" $(sed -n 's/.*: \([0-9.]*\) MiB\/s.*/\1/p' <<<"$out")"
                    cpu[$impl]+=" $(sed -n 's/.*server CPU \([0-9]*\)%.*/\1/p' <<<"$out")"
                    nsmsg[$impl]+=" $(sed -n 's/.*, \([0-9]*\) ns\/msg.*/\1/p' <<<"$out")"
                else
                    echo "$me: $impl failed at C=$c S=$s: $out" >&2
                    status=1
                fi
            done
        done
        echo "$me: C=$c S=$s:" >&2
        for impl in "${impls[@]}"; do
            if [[ -n ${mibs[$impl]:-} ]]; then
                # shellcheck disable=SC2086  # the lists are space-separated numbers
                m=$(median ${mibs[$impl]})
                printf 'RESULT\tpingpong\t%s\tC=%s;S=%s\tMiB/s\t%s\thigher\n' "$impl" "$c" "$s" "$m"
                # shellcheck disable=SC2086
                printf '    %-13s %10s MiB/s   server CPU %4s%%  %7s ns/msg\n' "$impl" "$m" \
                       "$(median ${cpu[$impl]})" "$(median ${nsmsg[$impl]})" >&2
            fi
        done
        mibs=() cpu=() nsmsg=()
    done
done
exit $status
