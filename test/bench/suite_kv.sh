#!/usr/bin/env bash
# suite_kv.sh — a Redis-protocol key-value server: samples/kv_server with one loop against
# redis-server itself, both driven by redis-benchmark (Debian redis-tools, redis-server).
#
# Both servers run for the whole suite, pinned to CPU 0, with no persistence (redis-server
# --save '' --appendonly no); redis-benchmark runs pinned to CPU 1 with -c CLIENTS connections,
# random keys (-r KEYSPACE) and a fixed number of requests per run. For each pipeline depth P
# (-P 1 and -P 16) and test (set, get), each repeat runs redis-benchmark once against every
# server, the servers interleaved and their order rotated from one repeat to the next. Two
# figures per run, medians over the repeats:
#   requests/s  as redis-benchmark reports it (higher is better);
#   us/request  the server's CPU time (utime + stime of all its threads, /proc/PID/stat)
#               during the run divided by the requests: what its code costs, and on two cores
#               the figure that still tells servers apart once the one-thread client is the
#               bottleneck (lower is better).
# The bars (DESIGN.md): kv_server >= 1.0x redis-server's requests/s at P1 and P16, and
# <= 0.75x its CPU per request at P16. They are checked on stderr; report.py prints the
# ratios (for us/request its ratio is redis / kv_server, so the bar is x1.33 there).
#
#   ninja -C build-bench && test/bench/suite_kv.sh build-bench
#
# stdout: one line per figure, tab-separated:
#   RESULT  kv  IMPL  P=..;t=..  requests/s  VALUE  higher
#   RESULT  kv  IMPL  P=..;t=..  us/request  VALUE  lower
# stderr: progress, and per figure each server's medians with its CPU use during the run
# (near 100%: the server was the bottleneck; well below: the client, or wake-up latency, was)
# and each run's requests/s, to show the spread.
#
# Environment: REPEATS (3), KV_REQUESTS_P1 (200000), KV_REQUESTS_P16 (2000000),
# KV_CLIENTS (50), KV_KEYSPACE (100000), PIPELINES ("1 16"), TESTS ("set get"),
# IMPLS ("ioloop redis-server"), PORT_BASE (19500; busy ports are skipped).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:-build}
repeats=${REPEATS:-3}
requests_p1=${KV_REQUESTS_P1:-200000}
requests_p16=${KV_REQUESTS_P16:-2000000}
clients=${KV_CLIENTS:-50}
keyspace=${KV_KEYSPACE:-100000}
pipelines=${PIPELINES:-1 16}
tests=${TESTS:-set get}
wanted=${IMPLS:-ioloop redis-server}
port=${PORT_BASE:-19500}
me=suite_kv.sh

kv_server=$build/samples/kv_server
[[ -x $kv_server ]] || { echo "$me: $kv_server not built (ninja -C $build)" >&2; exit 2; }
command -v redis-benchmark >/dev/null ||
    { echo "$me: redis-benchmark not installed (apt-get install redis-tools)" >&2; exit 2; }
[[ $(nproc) -ge 2 ]] || { echo "$me: needs 2 CPUs (servers on 0, client on 1)" >&2; exit 2; }
hz=$(getconf CLK_TCK)

# server_argv IMPL PORT: sets argv to the server's command line.
server_argv() {
    case $1 in
    ioloop)       argv=("$kv_server" -n 1 -q -a "127.0.0.1:$2") ;;
    redis-server) argv=(redis-server --bind 127.0.0.1 --port "$2" --save '' --appendonly no
                        --daemonize no --protected-mode no) ;;
    *) echo "$me: unknown implementation $1" >&2; exit 2 ;;
    esac
}

servers_scratch # tmp, pids, and the EXIT trap that stops the servers (lib.sh)


# start IMPL: starts its server pinned to CPU 0 on a free port and waits until it answers
# PING; sets pid_IMPL and port_IMPL (dashes become underscores).
start() {
    local impl=$1 var=${1//-/_} out=$tmp/$1.out pid
    free_port
    server_argv "$impl" "$port"
    taskset -c 0 "${argv[@]}" >"$out" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
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

# cpu_ticks PID: utime + stime of every thread of the process, in clock ticks. The fields
# are counted after the ") " that ends the command name, which may hold spaces.
cpu_ticks() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# measure IMPL P TEST N: one redis-benchmark run; sets rps, usreq and cpu_pct, or fails.
measure() {
    local impl=$1 p=$2 t=$3 n=$4 var=${1//-/_} pid port before after t0 t1 out
    local pid_ref=pid_$var port_ref=port_$var
    pid=${!pid_ref} port=${!port_ref}
    alive "$pid" || { echo "$me: $impl's server has exited: $(tail -3 "$tmp/$impl.out")" >&2; return 1; }
    before=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    if ! out=$(timeout 300 taskset -c 1 redis-benchmark -h 127.0.0.1 -p "$port" -t "$t" \
               -c "$clients" -P "$p" -r "$keyspace" -n "$n" --csv 2>&1); then
        echo "$me: $impl: redis-benchmark -t $t -P $p failed: $out" >&2
        return 1
    fi
    t1=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    if grep -qiE 'error|warning' <<<"$out"; then
        echo "$me: $impl: redis-benchmark -t $t -P $p: $out" >&2
        return 1
    fi
    # --csv: a header line, then "SET","123456.78",... per test.
    rps=$(awk -F'"' -v t="${t^^}" '$2 == t { print $4 }' <<<"$out")
    [[ -n $rps ]] || { echo "$me: $impl: no figure for $t in: $out" >&2; return 1; }
    usreq=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$n" \
            'BEGIN { printf "%.4f", d / hz * 1e6 / n }')
    cpu_pct=$(awk -v d=$((after - before)) -v hz="$hz" -v w="$(echo "$t1 - $t0" | bc)" \
              'BEGIN { printf "%.0f", 100 * d / hz / w }')
}

impls=()
for impl in $wanted; do
    case $impl in
    ioloop) impls+=("$impl") ;;
    redis-server)
        if command -v redis-server >/dev/null; then
            impls+=("$impl")
        else
            echo "$me: note: skipping redis-server: not installed (apt-get install redis-server)" >&2
        fi ;;
    *) echo "$me: unknown implementation $impl" >&2; exit 2 ;;
    esac
done
for impl in "${impls[@]}"; do start "$impl"; done

runs=$(( $(wc -w <<<"$pipelines") * $(wc -w <<<"$tests") * repeats * ${#impls[@]} ))
echo "$me: ${impls[*]} on CPU 0, redis-benchmark on CPU 1 (-c $clients -r $keyspace);" \
     "$requests_p1 requests per run at P1, $requests_p16 deeper; median of $repeats;" \
     "$runs runs; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

status=0
declare -A rpss usreqs cpus
declare -A bar_rps bar_cpu
for p in $pipelines; do
    n=$requests_p16
    [[ $p -gt 1 ]] || n=$requests_p1
    for t in $tests; do
        for ((r = 0; r < repeats; r++)); do
            k_n=${#impls[@]}
            for ((k = 0; k < k_n; k++)); do
                impl=${impls[(k + r) % k_n]}
                if measure "$impl" "$p" "$t" "$n"; then
                    rpss[$impl]+=" $rps"
                    usreqs[$impl]+=" $usreq"
                    cpus[$impl]+=" $cpu_pct"
                else
                    status=1
                fi
            done
        done
        echo "$me: P=$p t=$t:" >&2
        for impl in "${impls[@]}"; do
            [[ -n ${rpss[$impl]:-} ]] || continue
            # shellcheck disable=SC2086  # the lists are space-separated numbers
            m_rps=$(median_fmt %.3f ${rpss[$impl]}) m_us=$(median_fmt %.3f ${usreqs[$impl]}) m_cpu=$(median_fmt %.3f ${cpus[$impl]})
            printf 'RESULT\tkv\t%s\tP=%s;t=%s\trequests/s\t%s\thigher\n' "$impl" "$p" "$t" "$m_rps"
            printf 'RESULT\tkv\t%s\tP=%s;t=%s\tus/request\t%s\tlower\n' "$impl" "$p" "$t" "$m_us"
            printf '    %-13s %12s requests/s  %8s us/request  server CPU %4s%%   (runs:%s)\n' \
                   "$impl" "$m_rps" "$m_us" "$m_cpu" "${rpss[$impl]}" >&2
            bar_rps[$impl,$p,$t]=$m_rps
            bar_cpu[$impl,$p,$t]=$m_us
        done
        rpss=() usreqs=() cpus=()
    done
done

# The bars, where both servers have figures.
for p in $pipelines; do
    for t in $tests; do
        a=${bar_rps[ioloop,$p,$t]:-} b=${bar_rps[redis-server,$p,$t]:-}
        [[ -n $a && -n $b ]] || continue
        awk -v a="$a" -v b="$b" -v ca="${bar_cpu[ioloop,$p,$t]}" \
            -v cb="${bar_cpu[redis-server,$p,$t]}" -v p="$p" -v t="$t" -v me="$me" 'BEGIN {
            r = a / b; c = ca / cb
            rbar = (r >= 1) ? "met" : "MISSED"
            cbar = (p == 1) ? "no bar at P1" : (c <= 0.75) ? "bar <= 0.75: met" : "bar <= 0.75: MISSED"
            printf "%s: P=%s t=%s: requests/s x%.2f of redis-server (bar >= 1.00: %s); " \
                   "CPU/request x%.2f (%s)\n", me, p, t, r, rbar, c, cbar
        }' >&2
    done
done
exit $status
