#!/usr/bin/env bash
# The logger suite for run.sh: bench_log (ioloop) and bench_log_spdlog (spdlog's asynchronous
# logger, when built), 1 and 4 threads, LOG_LINES lines each (default 1 000000), REPEATS runs
# interleaved; prints the medians as RESULT lines: lines/s until everything is on disk, p99.9
# call latency, the logger's peak memory, and the first call after the logger sat idle.
# run_log.sh prints the same runs as a side-by-side table. Not pinned: the logger thread
# needs a core of its own beside the threads being timed.
#
#   test/bench/suite_logger.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: suite_logger.sh BUILD_DIR}
lines=${LOG_LINES:-1000000}
repeats=${REPEATS:-3}
impls=(bench_log)
if [ -x "$build/test/bench/bench_log_spdlog" ]; then
  impls+=(bench_log_spdlog)
else
  echo "suite_logger.sh: spdlog not built (apt-get install libspdlog-dev); ioloop only" >&2
fi

runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
for threads in 1 4; do
  for ((r = 0; r < repeats; r++)); do
    for impl in "${impls[@]}"; do
      "$build/test/bench/$impl" "$lines" "$threads" >>"$runs"
    done
  done
done

# Medians per (impl, threads) of each figure, one RESULT line each.
awk -v OFS='\t' '
function median(list,   n, a, i, j, t) {
  n = split(list, a, " ")
  for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
  return a[int((n + 1) / 2)]
}
{
  delete f
  for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  key = f["impl"] SUBSEP f["threads"]
  keys[key] = 1
  lps[key] = lps[key] " " f["lines_per_s"]
  p999[key] = p999[key] " " f["p999_ns"]
  mem[key] = mem[key] " " (f["rss_peak_kb"] - f["rss_base_kb"])
  idle[key] = idle[key] " " f["idle_ns"]
  if (f["lost"] != 0) { print "suite_logger.sh: " f["impl"] " lost lines" > "/dev/stderr"; bad = 1 }
}
END {
  for (key in keys) {
    split(key, k, SUBSEP)
    p = "threads=" k[2]
    print "RESULT", "logger", k[1], p, "lines/s", median(lps[key]), "higher"
    print "RESULT", "logger", k[1], p, "p99.9 ns", median(p999[key]), "lower"
    print "RESULT", "logger", k[1], p, "peak KiB", median(mem[key]), "lower"
    print "RESULT", "logger", k[1], p, "first call after idle ns", median(idle[key]), "lower"
  }
  exit bad
}' "$runs" | sort
