#!/usr/bin/env bash
# Builds and runs the logger benchmark: ioloop's logger against spdlog's asynchronous logger
# (when meson found spdlog), 1 and 4 threads, each configuration in a fresh process, each
# REPEATS times; prints the run with the median throughput of each side by side, with the
# ratio ioloop / spdlog (above 1 is better for lines/s, below 1 better for the rest).
#
# Usage: test/bench/run_log.sh [build-dir] [lines] [repeats]
#        (defaults: build-bench 1000000 3; the build dir is set up as a release build if new)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-bench}
lines=${2:-1000000}
repeats=${3:-3}

[ -d "$build" ] || meson setup "$build" --buildtype=release >/dev/null
ninja -C "$build" test/bench/bench_log >/dev/null
impls=(bench_log)
if ninja -C "$build" test/bench/bench_log_spdlog >/dev/null 2>&1; then
  impls+=(bench_log_spdlog)
else
  echo "spdlog not found by meson (apt-get install libspdlog-dev): ioloop only" >&2
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for threads in 1 4; do
  for impl in "${impls[@]}"; do
    runs=()
    for ((i = 0; i < repeats; i++)); do
      runs+=("$("$build/test/bench/$impl" "$lines" "$threads")")
    done
    # The run with the median lines/s.
    printf '%s\n' "${runs[@]}" |
      awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "lines_per_s") print kv[2], $0 } }' |
      sort -n | awk -v m=$(((repeats + 1) / 2)) 'NR == m { $1 = ""; print substr($0, 2) }' >>"$results"
  done
done

awk '
function v(impl, t, key) { return val[impl "," t "," key] }
function row(label, key, scale, fmt,   t, a, b) {
  printf "  %-30s", label
  for (t = 1; t <= 4; t += 3) {
    a = v("ioloop", t, key); b = v("spdlog", t, key)
    printf fmt, a / scale
    if (b != "") { printf fmt, b / scale; printf " %7.2f", (b == 0 ? 0 : a / b) }
    else printf "%12s %7s", "-", "-"
    printf "   "
  }
  printf "\n"
}
{
  for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  impl = f["impl"]; t = f["threads"]
  for (k in f) val[impl "," t "," k] = f[k]
  val[impl "," t ",logger_kb"] = f["rss_peak_kb"] - f["rss_base_kb"]
  delete f
}
END {
  printf "  %-30s%12s %12s %7s   %12s %12s %7s\n", "", "ioloop", "spdlog", "ratio", "ioloop", "spdlog", "ratio"
  printf "  %-30s%33s   %33s\n", "", "---------- 1 thread ----------", "---------- 4 threads ---------"
  row("lines/s (until written)", "lines_per_s", 1, " %12.0f")
  row("call latency p50 (ns)", "p50_ns", 1, " %12.0f")
  row("call latency p99 (ns)", "p99_ns", 1, " %12.0f")
  row("call latency p99.9 (ns)", "p999_ns", 1, " %12.0f")
  row("call latency max (ns)", "max_ns", 1, " %12.0f")
  row("first call after idle (ns)", "idle_ns", 1, " %12.0f")
  row("peak RSS (KiB)", "rss_peak_kb", 1, " %12.0f")
  row("logger memory: peak - base (KiB)", "logger_kb", 1, " %12.0f")
  row("lines lost", "lost", 1, " %12.0f")
}' "$results"
