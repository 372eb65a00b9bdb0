#!/usr/bin/env bash
# suite_xthread.sh — cross-thread callbacks: P producer threads (1 and 4) post 2 M callbacks
# in all to one loop running in its own thread. ioloop uses ioloop_add_callback(); the peers
# that are built (libuv, libevent, libev) use the pattern their users write: a mutex-protected
# queue of {fn, arg} plus uv_async_send / event_active / ev_async_send after each push, the
# loop draining the whole queue on each wakeup. The loop thread is pinned to CPU 0 and the
# producers to CPU 1 (by the programs themselves). Implementations are interleaved within each
# repeat (the order rotates); the RESULT lines are medians over REPEATS runs:
#
#   RESULT<TAB>xthread<TAB>impl<TAB>producers=P<TAB>callbacks/s<TAB>value<TAB>higher
#   RESULT<TAB>xthread<TAB>impl<TAB>producers=P<TAB>wakeups/callback<TAB>value<TAB>lower
#
# wakeups/callback counts the wakeup calls the producers made: ioloop's eventfd writes
# (stats.wakeups), and every uv_async_send / event_active / ev_async_send call for the peers,
# which coalesce them internally; callbacks/s is the primary figure.
#
#   test/bench/suite_xthread.sh BUILD_DIR        (builds nothing: ninja -C BUILD_DIR first)
#
# Environment: REPEATS (3), PRODUCERS ("1 4"), CALLBACKS (2000000), LOOP_CPU (0),
# PRODUCER_CPU (1), RUN_TIMEOUT (600 s per program run). Skipped peers are noted on stderr.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:?usage: suite_xthread.sh BUILD_DIR}
bin=$build/test/bench
reps=${REPEATS:-3}
producers=${PRODUCERS:-1 4}
callbacks=${CALLBACKS:-2000000}
loop_cpu=${LOOP_CPU:-0}
producer_cpu=${PRODUCER_CPU:-1}
limit=${RUN_TIMEOUT:-600}
me=suite_xthread.sh

[[ -x $bin/xthread_ioloop ]] || { echo "$me: $bin/xthread_ioloop not built" >&2; exit 2; }
impls=()
for pair in ioloop:xthread_ioloop libuv:xthread_uv libevent:xthread_event libev:xthread_ev; do
    if [[ -x $bin/${pair#*:} ]]; then
        impls+=("$pair")
    else
        echo "$me: ${pair%%:*} skipped (${pair#*:} not built: is the library installed?)" >&2
    fi
done
(( $(nproc) >= 2 )) || echo "$me: fewer than 2 CPUs: loop and producers share one" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0


for p in $producers; do
    for ((rep = 0; rep < reps; rep++)); do
        for ((j = 0; j < ${#impls[@]}; j++)); do
            pair=${impls[(j + rep) % ${#impls[@]}]}
            name=${pair%%:*}
            if timeout "$limit" "$bin/${pair#*:}" "$p" "$callbacks" "$loop_cpu" \
                    "$producer_cpu" >>"$tmp/$name.$p" 2>"$tmp/err"; then
                :
            else
                echo "$me: $name producers=$p failed (exit $?): $(cat "$tmp/err")" >&2
                failed=1
            fi
        done
    done
    for pair in "${impls[@]}"; do
        name=${pair%%:*}
        [[ -s $tmp/$name.$p ]] || continue
        printf 'RESULT\txthread\t%s\tproducers=%s\tcallbacks/s\t%s\thigher\n' "$name" "$p" \
            "$(value "$tmp/$name.$p" callbacks_per_s | median_in)"
    done
    for pair in "${impls[@]}"; do
        name=${pair%%:*}
        [[ -s $tmp/$name.$p ]] || continue
        printf 'RESULT\txthread\t%s\tproducers=%s\twakeups/callback\t%s\tlower\n' "$name" "$p" \
            "$(value "$tmp/$name.$p" wakeups_per_callback | median_in)"
    done
done
exit "$failed"
