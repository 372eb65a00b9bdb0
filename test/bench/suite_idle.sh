#!/usr/bin/env bash
# suite_idle.sh — what an idle connection costs an echo server in memory: ioloop side by side
# with libuv, libevent and libev (and the raw epoll server as a floor).
#
# For each server, a fresh process (pinned to CPU 0) is started and left to settle, its VmRSS
# read from /proc/PID/status; then idle_client (another process, pinned to CPU 1, so the
# server's fds and the client's each stay under the hard limit of 20 000) opens N connections,
# sends one 16-byte message on each and reads the echo back; once all are echoed and idle the
# server's VmRSS is read again. The figure is (after - before) / N in bytes, the median over
# REPEATS, servers interleaved and their order rotated per repeat. The server is stopped before
# the client, so the TIME_WAIT sockets land on the server's side and never use up the client's
# ephemeral ports from one run to the next.
#
# The servers are the ones of suite_pingpong.sh: samples/echo_server -n 1 -q (ioloop),
# pp_ioloop_core, raw_epoll_echo, pp_uv (libuv), pp_bufferevent and pp_event (libevent),
# pp_ev (libev). Absent peers are skipped with a note. It builds nothing: build first.
#
#   ninja -C build && test/bench/suite_idle.sh build
#
# stdout: RESULT  idle  IMPL  N=..  bytes/conn  VALUE  lower     (tab-separated)
# Environment: IDLE_CONNS (10000), REPEATS (3), IMPLS (default: all), PORT_BASE (19300).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

build=${1:-build}
nconns=${IDLE_CONNS:-10000}
repeats=${REPEATS:-3}
wanted=${IMPLS:-ioloop ioloop-core raw-epoll libuv libevent-bev libevent libev}
port=${PORT_BASE:-19300}
me=suite_idle.sh

client=$build/test/bench/idle_client
[[ -x $client ]] || { echo "$me: $client not built (ninja -C $build)" >&2; exit 2; }
[[ $(nproc) -ge 2 ]] || { echo "$me: needs 2 CPUs (server on 0, client on 1)" >&2; exit 2; }

# server_argv IMPL: sets argv to the server's command line (without -a).
server_argv() {
    case $1 in
    ioloop)       argv=("$build/samples/echo_server" -n 1 -q) ;;
    ioloop-core)  argv=("$build/test/bench/pp_ioloop_core") ;;
    raw-epoll)    argv=("$build/test/bench/raw_epoll_echo") ;;
    libuv)        argv=("$build/test/bench/pp_uv") ;;
    libevent-bev) argv=("$build/test/bench/pp_bufferevent") ;;
    libevent)     argv=("$build/test/bench/pp_event") ;;
    libev)        argv=("$build/test/bench/pp_ev") ;;
    *) echo "$me: unknown implementation $1" >&2; exit 2 ;;
    esac
}

servers_scratch # tmp, pids, and the EXIT trap that stops the servers (lib.sh)


# wait_line FILE PATTERN PID TIMEOUT_S: waits until FILE has a line matching PATTERN;
# fails if PID exits first or the time runs out.
wait_line() {
    local i
    for ((i = 0; i < $4 * 20; i++)); do
        grep -qs "$2" "$1" && return 0
        alive "$3" || return 1
        sleep 0.05
    done
    return 1
}

# The server's resident set in kB.
rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# measure IMPL: one run; sets `value` to the bytes per connection, or fails with a note.
measure() {
    local impl=$1 out=$tmp/$1.server cout=$tmp/$1.client spid cpid before after
    server_argv "$impl"
    free_port
    taskset -c 0 "${argv[@]}" -a "127.0.0.1:$port" >"$out" 2>&1 &
    spid=$!
    pids+=("$spid")
    if ! wait_line "$out" listening "$spid" 5; then
        echo "$me: $impl did not start: $(tail -3 "$out")" >&2
        stop "$spid"
        return 1
    fi
    sleep 0.5 # let the server's threads settle (ioloop's logger and acceptor start)
    before=$(rss_kb "$spid")
    taskset -c 1 "$client" -a "127.0.0.1:$port" -n "$nconns" -t 300 >"$cout" 2>&1 &
    cpid=$!
    pids+=("$cpid")
    if ! wait_line "$cout" "open and echoed" "$cpid" 120; then
        echo "$me: $impl: idle_client failed: $(tail -3 "$cout")" >&2
        stop "$spid"
        stop "$cpid"
        return 1
    fi
    sleep 0.5 # let the last deferred work (write callbacks, freed buffers) run
    if ! alive "$spid"; then
        echo "$me: $impl's server died: $(tail -3 "$out")" >&2
        stop "$cpid"
        return 1
    fi
    after=$(rss_kb "$spid")
    stop "$spid"
    stop "$cpid"
    port=$((port + 1))
    echo "$me: $impl: VmRSS $before kB -> $after kB" >&2
    value=$(( (after - before) * 1024 / nconns ))
}

impls=()
for impl in $wanted; do
    server_argv "$impl"
    if [[ -x ${argv[0]} ]]; then
        impls+=("$impl")
    else
        echo "$me: note: skipping $impl: ${argv[0]} not built (peer not installed?)" >&2
    fi
done
echo "$me: $nconns idle connections per server, median of $repeats;" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

status=0
declare -A values
for ((r = 0; r < repeats; r++)); do
    n=${#impls[@]}
    for ((k = 0; k < n; k++)); do
        impl=${impls[(k + r) % n]}
        if measure "$impl"; then
            values[$impl]+=" $value"
        else
            status=1
        fi
    done
done
for impl in "${impls[@]}"; do
    if [[ -n ${values[$impl]:-} ]]; then
        # shellcheck disable=SC2086  # a space-separated list of numbers
        printf 'RESULT\tidle\t%s\tN=%s\tbytes/conn\t%s\tlower\n' "$impl" "$nconns" \
               "$(median_fmt %.0f ${values[$impl]})"
    fi
done
exit $status
