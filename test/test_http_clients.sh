#!/usr/bin/env bash
# The HTTP server with real clients: curl (two URLs on one kept-alive connection, a chunked
# upload, an upload with Expect: 100-continue, HEAD, HTTP/1.0, a chunked response) and wrk
# (short bounded runs, pipelined 16 deep, kept alive, and a connection per request, counting
# every response that is not 200: there must be none, and no socket errors).
# Loopback only; every wait is bounded. Exits 77 (skipped) when curl or wrk is not installed.
# Usage: test_http_clients.sh HTTP_TEST_SERVER HTTP_PIPELINE_LUA
set -euo pipefail

server_bin=$1
lua=$2
for tool in curl wrk; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIP: $tool is not installed (apt-get install curl wrk)"
    exit 77
  fi
done

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  exit 1
}

"$server_bin" -a 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" &
server_pid=$!
for _ in $(seq 100); do
  grep -q '^port ' "$tmp/out" && break
  sleep 0.1
done
port=$(sed -n 's/^port //p' "$tmp/out")
[ -n "$port" ] || fail "the server did not start: $(cat "$tmp/err")"
url=http://127.0.0.1:$port
curl=(curl --silent --show-error --max-time 10)

# Keep-alive: two URLs in one invocation, the second on the first's connection.
got=$("${curl[@]}" -o /dev/null -o /dev/null -w '%{http_code} %{num_connects}\n' "$url/plaintext" "$url/json")
[ "$got" = $'200 1\n200 0' ] || fail "keep-alive: '$got'"
got=$("${curl[@]}" "$url/plaintext" "$url/json")
[ "$got" = 'Hello, World!{"message":"Hello, World!"}' ] || fail "bodies: '$got'"
echo "ok: keep-alive"

# A chunked upload of 300 KB comes back whole.
head -c 300000 /dev/urandom >"$tmp/upload"
"${curl[@]}" -H 'Transfer-Encoding: chunked' --data-binary @"$tmp/upload" \
  -D "$tmp/headers" -o "$tmp/echoed" "$url/echo"
cmp -s "$tmp/upload" "$tmp/echoed" || fail "chunked upload: the echo differs"
grep -qi '^X-Body-Length: 300000' "$tmp/headers" || fail "chunked upload: $(cat "$tmp/headers")"
echo "ok: chunked upload"

# Expect: 100-continue: curl waits for the interim answer, then sends the body.
"${curl[@]}" -v -H 'Expect: 100-continue' --data-binary @"$tmp/upload" -o "$tmp/echoed" \
  "$url/echo" 2>"$tmp/verbose"
grep -q '^< HTTP/1.1 100 Continue' "$tmp/verbose" || fail "no 100 Continue: $(cat "$tmp/verbose")"
cmp -s "$tmp/upload" "$tmp/echoed" || fail "100-continue upload: the echo differs"
echo "ok: 100-continue"

# HEAD: the head GET would get, without the body.
"${curl[@]}" -I "$url/plaintext" | tr -d '\r' >"$tmp/head"
grep -qx 'HTTP/1.1 200 OK' "$tmp/head" || fail "HEAD: $(cat "$tmp/head")"
grep -qx 'Content-Length: 13' "$tmp/head" || fail "HEAD: $(cat "$tmp/head")"
grep -qx 'Server: ioloop' "$tmp/head" || fail "HEAD: $(cat "$tmp/head")"
grep -Eqx 'Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT' \
  "$tmp/head" || fail "HEAD: $(cat "$tmp/head")"
echo "ok: HEAD"

# HTTP/1.0, and a chunked response (also to HTTP/1.0, where it ends with the close).
[ "$("${curl[@]}" -0 "$url/plaintext")" = 'Hello, World!' ] || fail "HTTP/1.0"
expected=$(for i in $(seq 0 9); do echo "chunk $i"; done)
[ "$("${curl[@]}" "$url/stream")" = "$expected" ] || fail "chunked response"
[ "$("${curl[@]}" -0 "$url/stream")" = "$expected" ] || fail "chunked response to HTTP/1.0"
echo "ok: HTTP/1.0, chunked response"

# wrk: pipelined 16 deep, kept alive (1 deep), and a new connection per request.
run_wrk() {
  local name=$1
  shift
  wrk -t1 -c10 -d1s --timeout 5s -s "$lua" "$url/plaintext" -- "$@" >"$tmp/wrk" 2>&1 ||
    fail "wrk $name: $(cat "$tmp/wrk")"
  local result
  result=$(grep '^RESULT ' "$tmp/wrk") || fail "wrk $name: no result: $(cat "$tmp/wrk")"
  local requests
  requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$result")
  [ "$requests" -gt 0 ] || fail "wrk $name: no request done: $result"
  [[ $result == *" not200=0 connect=0 read=0 write=0 status=0 timeout=0" ]] ||
    fail "wrk $name: $result"
  grep -q 'Non-2xx' "$tmp/wrk" && fail "wrk $name: $(cat "$tmp/wrk")"
  echo "ok: wrk $name: $result"
}
run_wrk pipelined 16
run_wrk keep-alive 1
run_wrk connection-per-request 1 close

# A graceful stop: drained and freed, exit status 0.
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
[ "$status" -eq 0 ] || fail "the server exited with $status: $(cat "$tmp/err")"
echo "ok: stopped"
