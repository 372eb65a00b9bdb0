#!/usr/bin/env bash
# pingpong.sh — ping-pong echo throughput (muduo's method): ioloop's echo_server with one loop
# against a hand-written raw epoll echo server, side by side in one run.
#
# Both servers run pinned to CPU 0, the load client (samples/echo_client, one loop) to CPU 1.
# For every C connections x S-byte messages, the client runs REPS times against each server,
# interleaved (raw, ioloop, raw, ioloop, ...). The table shows the median MiB/s of each, the
# median of the per-pair ratios ioloop/raw (a pair's two runs are adjacent in time, so load
# from other processes cancels out better than in a ratio of medians), each server's CPU use
# (near 100%: the server was the limit; well below: latency or the client was) and its CPU
# time per message (what the server's code costs, less sensitive to scheduling noise than
# throughput). Medians over the runs throughout. It builds nothing: build first.
#
#   ninja -C build && test/bench/pingpong.sh build
#
# Environment: SECONDS_PER_RUN (default 5), REPS (default 3), CONNS ("1 10 100 1000"),
# SIZES ("16 4096"), RAW_PORT (19100), IOLOOP_PORT (19101).
set -euo pipefail

build=${1:-build}
secs=${SECONDS_PER_RUN:-5}
reps=${REPS:-3}
conns=${CONNS:-1 10 100 1000}
sizes=${SIZES:-16 4096}
raw_port=${RAW_PORT:-19100}
ioloop_port=${IOLOOP_PORT:-19101}

raw_bin=$build/test/bench/raw_epoll_echo
server_bin=$build/samples/echo_server
client_bin=$build/samples/echo_client
for bin in "$raw_bin" "$server_bin" "$client_bin"; do
    [[ -x $bin ]] || { echo "pingpong.sh: $bin not built (ninja -C $build)" >&2; exit 2; }
done
[[ $(nproc) -ge 2 ]] || { echo "pingpong.sh: needs 2 CPUs (server on 0, client on 1)" >&2; exit 2; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# start NAME PORT CMD...: starts a server pinned to CPU 0, waits for its "listening" line.
start() {
    local name=$1 out=$tmp/$1.out
    shift
    taskset -c 0 "$@" >"$out" 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
    for _ in $(seq 100); do
        grep -q listening "$out" && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "pingpong.sh: $name did not start:" >&2
    cat "$out" >&2
    exit 1
}

# Clock ticks of CPU (user + system) the process has used so far.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# run PORT PID C S: one client run; prints "MiB/s server-cpu% server-cpu-us-per-message",
# or "FAIL 0 0" when the client failed.
run() {
    local before after out
    before=$(cpu_ticks "$2")
    if ! out=$(taskset -c 1 "$client_bin" -a "127.0.0.1:$1" -c "$3" -s "$4" -t "$secs" 2>&1); then
        echo "pingpong.sh: client failed against port $1 (C=$3 S=$4): $out" >&2
        echo "FAIL 0 0"
        return
    fi
    after=$(cpu_ticks "$2")
    awk -v line="$out" -v ticks=$((after - before)) -v hz="$hz" -v size="$4" 'BEGIN {
        n = split(line, f, " ")
        for (i = 2; i <= n; i++) {
            if (f[i] ~ /^MiB\/s/) mibs = f[i - 1]
            if (f[i] == "bytes") bytes = f[i - 1]
        }
        split(line, t, "byte messages, "); secs = t[2] + 0
        cpu = ticks / hz
        printf "%s %.0f %.1f\n", mibs, (secs > 0 ? 100 * cpu / secs : 0),
               (bytes > 0 ? 1e6 * cpu * size / bytes : 0)
    }'
}

# median FIELD LINES...: the median of that field over the lines.
median() {
    local field=$1
    shift
    printf '%s\n' "$@" | awk -v f="$field" '{ print $f }' | sort -g |
        awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

hz=$(getconf CLK_TCK)
start raw "$raw_bin" -a "127.0.0.1:$raw_port"
start ioloop "$server_bin" -n 1 -q -a "127.0.0.1:$ioloop_port"

echo "ping-pong echo, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs," \
     "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "servers on CPU 0, echo_client on CPU 1, ${secs} s per run, medians of ${reps} runs" \
     "(ratio: median of the per-pair ratios); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cpu: the server's CPU use during the runs; us: the server's CPU microseconds per message"
printf '%6s %6s %10s %10s %7s %8s %8s %8s %8s\n' C S "raw MiB/s" "io MiB/s" ratio \
       "raw cpu" "io cpu" "raw us" "io us"
for s in $sizes; do
    for c in $conns; do
        raw=() io=() ratios=()
        for _ in $(seq "$reps"); do
            r=$(run "$raw_port" "$raw_pid" "$c" "$s")
            i=$(run "$ioloop_port" "$ioloop_pid" "$c" "$s")
            raw+=("$r") io+=("$i")
            ratios+=("$(awk -v r="${r%% *}" -v i="${i%% *}" \
                        'BEGIN { print (r + 0 > 0 && i != "FAIL") ? i / r : 0 }')")
        done
        printf '%6d %6d %10s %10s %7.3f %7d%% %7d%% %8s %8s\n' "$c" "$s" \
               "$(median 1 "${raw[@]}")" "$(median 1 "${io[@]}")" "$(median 1 "${ratios[@]}")" \
               "$(median 2 "${raw[@]}")" "$(median 2 "${io[@]}")" \
               "$(median 3 "${raw[@]}")" "$(median 3 "${io[@]}")"
    done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
