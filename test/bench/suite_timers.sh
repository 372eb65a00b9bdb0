#!/usr/bin/env bash
# suite_timers.sh — 1 M one-shot timers on ioloop and the peers that are built (libuv uv_timer,
# libevent evtimer, libev ev_timer): ns per schedule (delays spread over an hour), ns per
# cancel, CPU ns per fired timer (delays of 0-9 ms, so it measures firing, not waiting), and
# bytes per pending timer (resident memory grown while N are pending; the peers' timer structs
# are the application's, so they are allocated in one array and counted). Each run is a fresh
# process pinned to CPU 0; implementations are interleaved within each repeat (the order
# rotates); the RESULT lines are medians over REPEATS runs:
#
#   RESULT<TAB>timers<TAB>impl<TAB>op=schedule|cancel|fire<TAB>ns/op<TAB>value<TAB>lower
#   RESULT<TAB>timers<TAB>impl<TAB>op=memory<TAB>bytes/timer<TAB>value<TAB>lower
#
#   test/bench/suite_timers.sh BUILD_DIR        (builds nothing: ninja -C BUILD_DIR first)
#
# Environment: REPEATS (3), TIMERS (1000000), RUN_TIMEOUT (600 s per program run). Skipped
# peers are noted on stderr.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:?usage: suite_timers.sh BUILD_DIR}
bin=$build/test/bench
reps=${REPEATS:-3}
timers=${TIMERS:-1000000}
limit=${RUN_TIMEOUT:-600}
me=suite_timers.sh

[[ -x $bin/timers_ioloop ]] || { echo "$me: $bin/timers_ioloop not built" >&2; exit 2; }
impls=()
for pair in ioloop:timers_ioloop libuv:timers_uv libevent:timers_event libev:timers_ev; do
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


for ((rep = 0; rep < reps; rep++)); do
    for ((j = 0; j < ${#impls[@]}; j++)); do
        pair=${impls[(j + rep) % ${#impls[@]}]}
        name=${pair%%:*}
        if timeout "$limit" "${pin[@]}" "$bin/${pair#*:}" "$timers" >>"$tmp/$name" \
                2>"$tmp/err"; then
            :
        else
            echo "$me: $name failed (exit $?): $(cat "$tmp/err")" >&2
            failed=1
        fi
    done
done
for op in schedule cancel fire memory; do
    case $op in
        memory) key=bytes_per_timer unit=bytes/timer ;;
        *) key=${op}_ns unit=ns/op ;;
    esac
    for pair in "${impls[@]}"; do
        name=${pair%%:*}
        [[ -s $tmp/$name ]] || continue
        printf 'RESULT\ttimers\t%s\top=%s\t%s\t%s\tlower\n' "$name" "$op" "$unit" \
            "$(value "$tmp/$name" "$key" | median_in)"
    done
done
exit "$failed"
