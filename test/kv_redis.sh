#!/usr/bin/env bash
# kv_redis.sh — drives samples/kv_server with the real Redis clients (Debian redis-tools):
# redis-cli for each command, redis-cli --pipe for bulk pipelined input, a bounded
# redis-benchmark run whose results are then read back, and kv_split.py for exact reply bytes
# of input split at every byte. It runs the server with one loop and with two (keys sharded
# over both, so commands and multi-key commands cross loops), and at the end stops it with
# SIGTERM and checks that it exits cleanly (status 0: under ASan, without leaks) and that the
# keys set with a TTL and never touched again were swept ("stopped with 0 keys").
#
#   test/kv_redis.sh build/samples/kv_server        (meson test kv_redis runs it)
#
# Exit status: 0 when every check passed, 77 (skipped) when redis-cli or redis-benchmark is
# not installed, 1 otherwise. Everything listens on 127.0.0.1, on a port the server picks.
set -euo pipefail

server=${1:?usage: kv_redis.sh KV_SERVER}
here=$(cd "$(dirname "$0")" && pwd)
for tool in redis-cli redis-benchmark; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIP: $tool not installed (apt-get install redis-tools)"
        exit 77
    fi
done

tmp=$(mktemp -d)
pid=
failed=0
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*"
    failed=1
}

cli() {
    timeout 10 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>&1
}

# check NAME WANT COMMAND...: the command's output must be exactly WANT.
check() {
    local name=$1 want=$2 got
    shift 2
    got=$("$@" 2>&1) || true
    if [[ $got == "$want" ]]; then
        echo "ok: $name"
    else
        fail "$name: got [$got], want [$want]"
    fi
}

# start LOOPS: starts the server on a port of its choice; sets pid and port.
start() {
    : >"$tmp/out" # before the server starts, so the poll below never misses the file
    "$server" -a 127.0.0.1:0 -n "$1" >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    for _ in $(seq 100); do
        port=$(sed -n 's/.*listening on .*(port \([0-9]*\)).*/\1/p' "$tmp/out" || true)
        [[ -n $port ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "FAIL: kv_server -n $1 did not start:"
    cat "$tmp/out" "$tmp/err"
    exit 1
}

# stop: SIGTERM, at most 20 s to exit (sanitizers make the exit slow), then the exit status
# must be 0 and no key may be left.
stop() {
    local status=0
    kill -TERM "$pid"
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        fail "kv_server did not exit within 20 s of SIGTERM"
        kill -KILL "$pid"
    fi
    wait "$pid" || status=$?
    pid=
    [[ $status -eq 0 ]] || fail "kv_server exited with status $status"
    grep -q "stopped with 0 keys" "$tmp/out" || fail "keys left at exit: $(tail -1 "$tmp/out")"
    if ((failed)); then
        echo "--- kv_server output:"
        cat "$tmp/out"
        tail -20 "$tmp/err"
    fi
}

# gen COUNT 'ARG ARG...'...: COUNT rounds of the commands in RESP, "%d" in an argument
# replaced by the round's number (0..COUNT-1).
gen() {
    local n=$1
    shift
    printf '%s\n' "$@" | awk -v n="$n" '{ cmds[NR] = $0 }
        END {
            for (i = 0; i < n; i++) {
                for (c = 1; c <= NR; c++) {
                    argc = split(cmds[c], a, " ")
                    printf "*%d\r\n", argc
                    for (j = 1; j <= argc; j++) {
                        v = a[j]
                        gsub(/%d/, i, v)
                        printf "$%d\r\n%s\r\n", length(v), v
                    }
                }
            }
        }'
}

commands() {
    check "ping" "PONG" cli ping
    check "set" "OK" cli set a 1
    check "get" "1" cli get a
    check "incr" "2" cli incr a
    check "incr again" "3" cli incr a
    check "incr a non-integer" "ERR value is not an integer or out of range" \
        bash -c "$(declare -f cli); port=$port; cli set n abc >/dev/null; cli incr n"
    check "get missing" "" cli get nosuch
    for i in {1..20}; do cli set "k$i" "v$i" >/dev/null; done
    check "mget over the shards" "$(printf 'v%s\n' {1..10})"$'\n\n'"$(printf 'v%s\n' {11..20})" \
        cli mget k{1..10} nosuch k{11..20}
    check "exists" "21" cli exists k{1..20} nosuch k1
    check "del" "10" cli del k{1..10} nosuch k1
    check "exists after del" "10" cli exists k{1..20}
    check "echo" "hello world" cli echo "hello world"
    check "unknown command" "ERR unknown command 'nosuch', with args beginning with: 'x' " \
        cli nosuch x
    check "wrong arity" "ERR wrong number of arguments for 'get' command" cli get
    check "config get save" $'1) "save"\n2) ""' cli --no-raw config get save
    check "config get appendonly" $'appendonly\nno' cli config get appendonly
}

expiry() {
    local left
    check "set px" "OK" cli set t v px 300
    check "get before expiry" "v" cli get t
    left=$(cli pttl t)
    if ! [[ $left =~ ^[0-9]+$ ]] || ((left < 1 || left > 300)); then
        fail "pttl: got [$left], want 1..300"
    fi
    check "set ex" "OK" cli set e v ex 100
    check "ttl" "100" cli ttl e
    check "set nx on an existing key" "" cli set e w nx
    check "set xx keepttl" "OK" cli set e w xx keepttl
    check "ttl kept" "100" cli ttl e
    sleep 0.5
    check "get after expiry" "" cli get t
    check "ttl after expiry" "-2" cli ttl t
    # Keys with a short TTL that nothing touches again: only the sweep can remove them
    # (stop() checks that none is left).
    gen 1000 'set vol%d x px 50' >"$tmp/volatile"
    check "1000 volatile keys" "errors: 0, replies: 1000" \
        bash -c "timeout 20 redis-cli -h 127.0.0.1 -p $port --pipe <$tmp/volatile | tail -1"
}

pipe() {
    gen 5000 'set pk%d %d' 'incr pk%d' >"$tmp/pipe"
    check "redis-cli --pipe" "errors: 0, replies: 10000" \
        bash -c "timeout 20 redis-cli -h 127.0.0.1 -p $port --pipe <$tmp/pipe | tail -1"
    check "values after the pipe" "$(printf '%s\n' 1 2 1001 5000)" \
        cli mget pk0 pk1 pk1000 pk4999
    gen 5000 'del pk%d' >"$tmp/unpipe"
    check "del by pipe" "errors: 0, replies: 5000" \
        bash -c "timeout 20 redis-cli -h 127.0.0.1 -p $port --pipe <$tmp/unpipe | tail -1"
}

benchmark() {
    local out
    if ! out=$(timeout 60 redis-benchmark -h 127.0.0.1 -p "$port" -t set,get,incr,mget \
               -n 20000 -c 20 -P 16 -q 2>&1 | tr '\r' '\n'); then
        fail "redis-benchmark failed: $out"
        return
    fi
    for t in SET GET INCR; do
        grep -q "^$t: [0-9.]* requests per second" <<<"$out" || fail "redis-benchmark: no $t"
    done
    if grep -qiE 'error|warning|ERR ' <<<"$out"; then fail "redis-benchmark: $out"; fi
    grep "requests per second" <<<"$out" | sed 's/^/ok: redis-benchmark /'
    # redis-benchmark has no MGET test (-t mget runs nothing), but it runs any command: MGET
    # and EXISTS of random keys, pipelined, which with several loops fan out and gather.
    for cmd in "mget key:__rand_int__ key:__rand_int__ key:__rand_int__ key:__rand_int__" \
               "exists key:__rand_int__ key:__rand_int__ counter:__rand_int__"; do
        # shellcheck disable=SC2086  # the command's words are separate arguments
        if ! out=$(timeout 60 redis-benchmark -h 127.0.0.1 -p "$port" -n 20000 -c 20 -P 16 \
                   -r 1000 -q $cmd 2>&1 | tr '\r' '\n' | grep -v '^ *$'); then
            fail "redis-benchmark $cmd: $out"
        elif grep -qiE 'error|warning' <<<"$out" || ! grep -q "requests per second" <<<"$out"; then
            fail "redis-benchmark $cmd: $out"
        else
            echo "ok: redis-benchmark $(tail -1 <<<"$out")"
        fi
    done
    # What it wrote: a 3-byte value under one key for every SET, one counter for all 20000
    # INCRs.
    out=$(cli get key:__rand_int__)
    [[ ${#out} -eq 3 ]] || fail "benchmark's value: got [$out], want 3 bytes"
    check "benchmark's counter" "20000" cli get counter:__rand_int__
}

for loops in 1 2; do
    echo "--- kv_server -n $loops"
    start "$loops"
    commands
    expiry
    pipe
    benchmark
    if out=$(timeout 60 python3 "$here/kv_split.py" "$port" 2>&1); then
        echo "ok: kv_split.py (raw socket, split input)"
    else
        fail "kv_split.py: $out"
    fi
    check "cleanup" "16" cli del a n e k{1..20} key:__rand_int__ \
        counter:__rand_int__ split:s
    sleep 0.3 # the volatile keys expired 50 ms after they were set; the sweep has had time
    stop
done
if ((failed)); then
    echo "FAILED"
    exit 1
fi
echo "all passed"
