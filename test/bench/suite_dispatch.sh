#!/usr/bin/env bash
# suite_dispatch.sh — pipe dispatch, libevent's test/bench.c method: N socketpairs with a read
# handler each; every round re-registers every fd, writes one byte to 100 pipes spread evenly
# and runs the loop until the chain of 100 more writes has been read (bench_util.h). Each
# program reports the median over ROUNDS rounds (after WARMUP) of setup+run and run-only
# microseconds per round; this script runs ioloop, a hand-written raw epoll loop and the peers
# that are built (libevent, libev, libuv), interleaved within each repeat (the order rotates),
# each pinned to CPU 0, and prints the median over REPEATS runs as RESULT lines:
#
#   RESULT<TAB>dispatch<TAB>impl<TAB>N=..;phase=run<TAB>us<TAB>value<TAB>lower
#   RESULT<TAB>dispatch<TAB>impl<TAB>N=..;phase=setup+run<TAB>us<TAB>value<TAB>lower
#
#   test/bench/suite_dispatch.sh BUILD_DIR        (builds nothing: ninja -C BUILD_DIR first)
#
# Environment: REPEATS (3), NS ("100 1000 9000"), ROUNDS (100), WARMUP (10), ACTIVE (100),
# WRITES (100), RUN_TIMEOUT (600 s per program run). Skipped peers are noted on stderr.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:?usage: suite_dispatch.sh BUILD_DIR}
bin=$build/test/bench
reps=${REPEATS:-3}
ns=${NS:-100 1000 9000}
rounds=${ROUNDS:-100}
warmup=${WARMUP:-10}
active=${ACTIVE:-100}
writes=${WRITES:-100}
limit=${RUN_TIMEOUT:-600}
me=suite_dispatch.sh

[[ -x $bin/dispatch_ioloop ]] || { echo "$me: $bin/dispatch_ioloop not built" >&2; exit 2; }
impls=()
for pair in ioloop:dispatch_ioloop ioloop-pause:dispatch_ioloop_pause raw-epoll:dispatch_epoll \
            libevent:dispatch_event \
            libev:dispatch_ev libuv:dispatch_uv; do
    if [[ -x $bin/${pair#*:} ]]; then
        impls+=("$pair")
    else
        echo "$me: ${pair%%:*} skipped (${pair#*:} not built: is the library installed?)" >&2
    fi
done
pin=(taskset -c 0)
command -v taskset >/dev/null || { pin=(); echo "$me: no taskset: runs are not pinned" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0


for n in $ns; do
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && (( 2 * n + 64 > hard )); then
        echo "$me: N=$n skipped: needs $((2 * n + 64)) fds, the hard limit is $hard" >&2
        continue
    fi
    for ((rep = 0; rep < reps; rep++)); do
        for ((j = 0; j < ${#impls[@]}; j++)); do
            pair=${impls[(j + rep) % ${#impls[@]}]}
            name=${pair%%:*}
            if timeout "$limit" "${pin[@]}" "$bin/${pair#*:}" "$n" "$active" "$writes" \
                    "$rounds" "$warmup" >>"$tmp/$name.$n" 2>"$tmp/err"; then
                :
            else
                echo "$me: $name N=$n failed (exit $?): $(cat "$tmp/err")" >&2
                failed=1
            fi
        done
    done
    for phase in run setup+run; do
        key=${phase/+/_}_us
        for pair in "${impls[@]}"; do
            name=${pair%%:*}
            [[ -s $tmp/$name.$n ]] || continue
            printf 'RESULT\tdispatch\t%s\tN=%s;phase=%s\tus\t%s\tlower\n' "$name" "$n" "$phase" \
                "$(value "$tmp/$name.$n" "$key" | median_in)"
        done
    done
done
exit "$failed"
