#!/usr/bin/env bash
# suite_scaling.sh — multi-loop scaling: ping-pong echo throughput of samples/echo_server with
# one loop and with two (-n 1, -n 2), C = 100 connections of S = 4096-byte blocks, measured by
# pp_client (see suite_pingpong.sh for the method). The runs alternate between the two servers,
# their order rotated per repeat; the figure is the median MiB/s over REPEATS.
#
# Nothing is pinned here: the servers' loops need both cores to show anything. On a 2-core
# machine, though, the one-thread client competes with the server's loops for those same two
# cores — with -n 2 there are three busy threads on two cores — so the figure says whether a
# second loop helps at all under that contention, not how ioloop scales: a fair scaling figure
# needs more cores than loops + client threads. Read loops=2 / loops=1 with that in mind.
#
#   ninja -C build && test/bench/suite_scaling.sh build
#
# stdout: RESULT  scaling  ioloop  loops=N  MiB/s  VALUE  higher     (tab-separated)
# Environment: BENCH_SECONDS (5), BENCH_WARMUP (1), REPEATS (3), LOOPS ("1 2"),
# SCALING_CONNS (100), SCALING_SIZE (4096), PORT_BASE (19400).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:-build}
secs=${BENCH_SECONDS:-5}
warmup=${BENCH_WARMUP:-1}
repeats=${REPEATS:-3}
loops_list=${LOOPS:-1 2}
c=${SCALING_CONNS:-100}
s=${SCALING_SIZE:-4096}
port=${PORT_BASE:-19400}
me=suite_scaling.sh

client=$build/test/bench/pp_client
server=$build/samples/echo_server
for bin in "$client" "$server"; do
    [[ -x $bin ]] || { echo "$me: $bin not built (ninja -C $build)" >&2; exit 2; }
done

servers_scratch # tmp, pids, and the EXIT trap that stops the servers (lib.sh)


# One server per loop count, all started up front (an idle one sleeps in epoll_wait).
declare -A pid_of port_of mibs
loops=()
for n in $loops_list; do
    out=$tmp/loops$n.out
    free_port
    "$server" -n "$n" -q -a "127.0.0.1:$port" >"$out" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        grep -qs listening "$out" && break
        alive "${pids[-1]}" || break
        sleep 0.05
    done
    grep -qs listening "$out" || { echo "$me: echo_server -n $n did not start:" >&2; cat "$out" >&2; exit 1; }
    pid_of[$n]=${pids[-1]}
    port_of[$n]=$port
    loops+=("$n")
    port=$((port + 1))
done

echo "$me: echo_server -n {${loops[*]}} and pp_client, all unpinned on $(nproc) cores" \
     "(the client competes with the loops for them); C=$c S=$s, ${warmup} s warm-up +" \
     "${secs} s per run, median of $repeats; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

status=0
for ((r = 0; r < repeats; r++)); do
    k=${#loops[@]}
    for ((i = 0; i < k; i++)); do
        n=${loops[(i + r) % k]}
        if ! alive "${pid_of[$n]}"; then
            echo "$me: echo_server -n $n has exited" >&2
            status=1
            continue
        fi
        if out=$("$client" -a "127.0.0.1:${port_of[$n]}" -c "$c" -s "$s" -t "$secs" \
                 -w "$warmup" 2>&1); then
            mibs[$n]+=" $(sed -n 's/.*: \([0-9.]*\) MiB\/s.*/\1/p' <<<"$out")"
        else
            echo "$me: loops=$n failed: $out" >&2
            status=1
        fi
    done
done
for n in "${loops[@]}"; do
    if [[ -n ${mibs[$n]:-} ]]; then
        # shellcheck disable=SC2086  # a space-separated list of numbers
        printf 'RESULT\tscaling\tioloop\tloops=%s\tMiB/s\t%s\thigher\n' "$n" "$(median ${mibs[$n]})"
    fi
done
exit $status
