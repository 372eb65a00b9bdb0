#!/usr/bin/env bash
# suite_work.sh — the work pool against libuv's thread pool (uv_queue_work), both with T
# threads (default 4). Throughput: a callback on the loop submits N empty work items (default
# 1 000 000) and their completions come back on the loop: items/s from the first submission
# to the last completion, and the process's CPU time per item (every thread's, from
# CLOCK_PROCESS_CPUTIME_ID). Latency: R sequential round trips (default 10 000) of one empty
# item on an otherwise idle pool, each submitted from the previous one's completion: p50 and
# p99 of submit-to-completion. Each run is a fresh process; implementations are interleaved
# within each repeat (the order rotates); the RESULT lines are medians over REPEATS runs,
# and a SPREAD line per figure gives the lowest and highest run:
#
#   RESULT<TAB>work<TAB>impl<TAB>threads=T<TAB>items/s<TAB>value<TAB>higher
#   RESULT<TAB>work<TAB>impl<TAB>threads=T<TAB>cpu_ns/item<TAB>value<TAB>lower
#   RESULT<TAB>work<TAB>impl<TAB>threads=T round-trip<TAB>p50_us|p99_us<TAB>value<TAB>lower
#   SPREAD<TAB>work<TAB>impl<TAB>params<TAB>unit<TAB>min..max (n runs)
#
#   test/bench/suite_work.sh BUILD_DIR        (builds nothing: ninja -C BUILD_DIR first)
#
# Environment: REPEATS (3), THREADS (4), ITEMS (1000000), ROUNDTRIPS (10000), RUN_TIMEOUT
# (600 s per program run). libuv is skipped, with a note on stderr, when work_uv was not built.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:?usage: suite_work.sh BUILD_DIR}
bin=$build/test/bench
reps=${REPEATS:-3}
threads=${THREADS:-4}
items=${ITEMS:-1000000}
roundtrips=${ROUNDTRIPS:-10000}
limit=${RUN_TIMEOUT:-600}
me=suite_work.sh

[[ -x $bin/work_ioloop ]] || { echo "$me: $bin/work_ioloop not built" >&2; exit 2; }
impls=()
for pair in ioloop:work_ioloop libuv:work_uv; do
    if [[ -x $bin/${pair#*:} ]]; then
        impls+=("$pair")
    else
        echo "$me: ${pair%%:*} skipped (${pair#*:} not built: is the library installed?)" >&2
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

# spread: "min..max (n runs)" of stdin's numbers.
spread() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR > 0) printf "%s..%s (%d runs)\n", v[1], v[NR], NR }'
}

for ((rep = 0; rep < reps; rep++)); do
    for ((j = 0; j < ${#impls[@]}; j++)); do
        pair=${impls[(j + rep) % ${#impls[@]}]}
        name=${pair%%:*}
        for mode in throughput latency; do
            n=$items
            [[ $mode == latency ]] && n=$roundtrips
            if timeout "$limit" "$bin/${pair#*:}" "$mode" "$threads" "$n" \
                    >>"$tmp/$name.$mode" 2>"$tmp/err"; then
                :
            else
                echo "$me: $name $mode failed (exit $?): $(cat "$tmp/err")" >&2
                failed=1
            fi
        done
    done
done

# report NAME MODE KEY PARAMS UNIT BETTER: the RESULT and SPREAD lines of one figure.
report() {
    local file=$tmp/$1.$2
    [[ -s $file ]] || return 0
    printf 'RESULT\twork\t%s\t%s\t%s\t%s\t%s\n' "$1" "$4" "$5" \
        "$(value "$file" "$3" | median_in)" "$6"
    printf 'SPREAD\twork\t%s\t%s\t%s\t%s\n' "$1" "$4" "$5" "$(value "$file" "$3" | spread)"
}
for pair in "${impls[@]}"; do
    report "${pair%%:*}" throughput items_per_s "threads=$threads" items/s higher
done
for pair in "${impls[@]}"; do
    report "${pair%%:*}" throughput cpu_ns_per_item "threads=$threads" cpu_ns/item lower
done
for pair in "${impls[@]}"; do
    report "${pair%%:*}" latency p50_us "threads=$threads round-trip" p50_us lower
done
for pair in "${impls[@]}"; do
    report "${pair%%:*}" latency p99_us "threads=$threads round-trip" p99_us lower
done
exit "$failed"
