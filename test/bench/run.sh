#!/usr/bin/env bash
# The benchmark suite's one entry point: builds what is installed (peers are optional; absent
# ones are skipped with a note), runs each suite — implementations interleaved, medians of
# REPEATS — and prints a table per suite with each figure and its ratio to the reference,
# then writes a CSV and a chart of the ratios (gnuplot) under bench-results/.
#
#   test/bench/run.sh [suite...]        suites: pingpong dispatch timers xthread logger idle
#                                       scaling accept work kv http (default: all)
#   env: BUILD_DIR (build-bench), REPEATS (3), BENCH_SECONDS (5, ping-pong per point, accept
#   per run), CLIENT (accept: accept_client or ab), SYSCALLS (accept: 1 counts syscalls),
#   HTTP_SECONDS (5, http per run)
#
# To have every peer: apt-get install libuv1-dev libevent-dev libev-dev libspdlog-dev
# nginx-light apache2-utils wrk gnuplot-nox redis-tools redis-server. Run it on a quiet machine:
# the suites pin the measured thread to CPU 0 and the load to CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."

build=${BUILD_DIR:-build-bench}
out=bench-results
all=(pingpong dispatch timers xthread logger idle scaling accept work kv http)
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=("${all[@]}")
export REPEATS=${REPEATS:-3}

for peer in libuv libevent; do
  pkg-config --exists "$peer" || echo "note: $peer not installed; its programs are skipped" >&2
done
[ -e /usr/include/ev.h ] || echo "note: libev not installed; its programs are skipped" >&2

if [ ! -d "$build" ]; then
  meson setup "$build" --buildtype=release -Dbenchmarks=true -Dtests=false >/dev/null
fi
ninja -C "$build" >/dev/null

mkdir -p "$out"
results="$out/results.txt"
: >"$results"
for suite in "${suites[@]}"; do
  script="test/bench/suite_$suite.sh"
  if [ ! -x "$script" ]; then
    echo "unknown suite: $suite (have: ${all[*]})" >&2
    exit 2
  fi
  echo "--- $suite" >&2
  "$script" "$build" | tee -a "$results" | grep -v '^RESULT' || true
done

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(date -u +%Y-%m-%d)"
echo "machine: $machine"
python3 test/bench/report.py "$results" "$out" "$machine"
