#!/usr/bin/env python3
"""Raw-socket checks of kv_server's RESP parser: exact reply bytes for pipelined input split
at every byte, in random chunks and in one piece, and protocol errors that close the
connection after the replies owed before them.

Usage: kv_split.py PORT [KEY_PREFIX]     (the server listens on 127.0.0.1:PORT)
Exit status 0 when every check passed; each failure is printed.
"""
import random
import socket
import sys
import time

TIMEOUT_S = 10


def resp(*args):
    """A multibulk command."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def bulk(v):
    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)


def array(*items):
    return b"*%d\r\n" % len(items) + b"".join(bulk(i) for i in items)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_exact(s, n):
    """n bytes, or fewer if the server closed first."""
    got = b""
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < n and time.monotonic() < deadline:
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def read_to_eof(s):
    got = b""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            return got, True
        got += chunk
    return got, False


def script(p):
    """A pipeline touching many keys (so that with several shards some are remote) and the
    replies it must get, byte for byte."""
    keys = [p + b"k%d" % i for i in range(12)]
    binv = b"a\r\nb\x00c$*\n"
    cmds, want = [], []

    def add(cmd, reply):
        cmds.append(cmd)
        want.append(reply)

    add(resp("PING"), b"+PONG\r\n")
    for i, k in enumerate(keys):
        add(resp("SET", k, b"v%d" % i), b"+OK\r\n")
    add(resp("MGET", *keys, p + b"missing"),
        array(*[b"v%d" % i for i in range(12)], None))
    add(resp("SET", keys[0], binv), b"+OK\r\n")
    add(resp("GET", keys[0]), bulk(binv))
    add(resp("ECHO", binv), bulk(binv))
    add(b"PING\r\n", b"+PONG\r\n")                      # inline
    add(b"set " + p + b"inl  42\r\n", b"+OK\r\n")       # inline, two spaces
    add(b"INCR " + p + b"inl\n", b":43\r\n")            # inline, bare LF
    add(b"\r\n", b"")                                   # an empty inline line: no reply
    add(resp("INCR", p + b"cnt"), b":1\r\n")
    add(resp("incr", p + b"cnt"), b":2\r\n")            # case-insensitive
    add(resp("EXISTS", *keys[:6], p + b"missing", keys[0]), b":7\r\n")
    add(resp("DEL", *keys[:6], p + b"missing", keys[0]), b":6\r\n")
    add(resp("MGET", *keys[:8]), array(*([None] * 6), b"v6", b"v7"))
    add(resp("GET", keys[1]), bulk(None))
    add(resp("INCR", keys[7]), b"-ERR value is not an integer or out of range\r\n")
    add(resp("SET", keys[8], "x", "NX"), bulk(None))
    add(resp("SET", keys[8], "y", "XX"), b"+OK\r\n")
    add(resp("GET", keys[8]), bulk(b"y"))
    add(resp("SET", keys[8], "z", "EX", "0"),
        b"-ERR invalid expire time in 'set' command\r\n")
    add(resp("SET", keys[8], "z", "BOGUS"), b"-ERR syntax error\r\n")
    add(resp("TTL", keys[8]), b":-1\r\n")
    add(resp("TTL", p + b"missing"), b":-2\r\n")
    add(resp("GET"), b"-ERR wrong number of arguments for 'get' command\r\n")
    add(resp("NOSUCH", "a", "b"),
        b"-ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' \r\n")
    add(resp("CONFIG", "GET", "save"), array(b"save", b""))
    add(resp("CONFIG", "GET", "appendonly"), array(b"appendonly", b"no"))
    add(resp("CONFIG", "GET", "nosuch"), b"*0\r\n")
    add(resp("COMMAND", "DOCS"), b"*0\r\n")
    add(resp("DEL", *keys, p + b"cnt", p + b"inl"), b":8\r\n")
    return b"".join(cmds), b"".join(want)


def run_split(port, data, want, chunks, pause_s, extra_wait_s=0.2):
    """Sends data in the given chunk sizes; returns None or a failure message. Then waits
    extra_wait_s (if not 0) to see that nothing more comes."""
    s = connect(port)
    try:
        pos = 0
        for n in chunks:
            s.sendall(data[pos:pos + n])
            pos += n
            if pause_s:
                time.sleep(pause_s)
        assert pos == len(data)
        got = read_exact(s, len(want))
        if got != want:
            i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                     min(len(got), len(want)))
            return "replies differ at byte %d: got %r, want %r" % (
                i, got[max(0, i - 20):i + 40], want[max(0, i - 20):i + 40])
        if extra_wait_s:
            s.settimeout(extra_wait_s)
            try:
                extra = s.recv(100)
                if extra:
                    return "unexpected extra bytes %r" % extra
            except socket.timeout:
                pass
        return None
    finally:
        s.close()


def check_protocol_error(port, p, data, reply):
    """A valid command, then bad input: its reply, the error, then the server closes."""
    s = connect(port)
    try:
        s.sendall(resp("SET", p + b"before", "1") + data + resp("PING"))
        got, eof = read_to_eof(s)
        want = b"+OK\r\n" + reply
        if got != want or not eof:
            return "for %r: got %r (eof %s), want %r then EOF" % (data, got, eof, want)
        return None
    finally:
        s.close()


def main():
    port = int(sys.argv[1])
    prefix = (sys.argv[2] if len(sys.argv) > 2 else "split:").encode()
    rng = random.Random(7)
    failures = []
    data, want = script(prefix)

    cases = [
        ("one piece", [len(data)], 0),
        ("one byte at a time", [1] * len(data), 0.0002),
        ("random chunks of 1-9 bytes", [], 0.0005),
    ]
    n = 0
    while n < len(data):
        k = min(rng.randint(1, 9), len(data) - n)
        cases[2][1].append(k)
        n += k
    for name, chunks, pause in cases:
        err = run_split(port, data, want, chunks, pause)
        print("%s: %s" % (name, "ok" if err is None else "FAILED: " + err))
        if err:
            failures.append(name)

    # Every split point of a shorter pipeline: two sends with a pause between them.
    short, short_want = resp("SET", prefix + b"s", "val") + resp("GET", prefix + b"s") + \
        b"PING\r\n", b"+OK\r\n" + bulk(b"val") + b"+PONG\r\n"
    bad = [i for i in range(1, len(short))
           if run_split(port, short, short_want, [i, len(short) - i], 0.002, 0)]
    print("every split point of %d bytes: %s" % (len(short), "ok" if not bad else
                                                 "FAILED at %s" % bad))
    if bad:
        failures.append("split points")

    errors = [
        (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*99999999\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*2\r\n$3\r\nGET\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*1\r\n$4\r\nPINGxx", b"-ERR Protocol error: expected CRLF after a bulk string\r\n"),
        (b"x" * (64 << 10), b"-ERR Protocol error: too big inline request\r\n"),
    ]
    for bad_input, reply in errors:
        err = check_protocol_error(port, prefix, bad_input, reply)
        print("protocol error %r: %s" % (bad_input[:24], "ok" if err is None else
                                         "FAILED: " + err))
        if err:
            failures.append("protocol error")

    # A request that never ends: at 16 MiB unfinished (the connection's input limit) the
    # server answers with a protocol error and closes, after the replies owed before it.
    big = 8 << 20
    huge = (b"*3\r\n$3\r\nSET\r\n$%d\r\n" % big) + b"k" * big + (b"\r\n$%d\r\n" % big) + \
        b"v" * (big - 1)
    err = check_protocol_error(port, prefix, huge,
                               b"-ERR Protocol error: too big request\r\n")
    print("16 MiB unfinished request: %s" % ("ok" if err is None else "FAILED: " + err[:300]))
    if err:
        failures.append("too big request")

    # Backpressure: replies far beyond the server's 4 MiB of unsent output, to a client that
    # reads nothing for a while; every byte must arrive, in order.
    value = random.Random(3).randbytes(1 << 20)
    s = connect(port)
    s.sendall(resp("SET", prefix + b"big", value))
    ok = read_exact(s, 5) == b"+OK\r\n"
    n_gets = 40
    s.sendall(b"".join(resp("GET", prefix + b"big") for _ in range(n_gets)) +
              resp("DEL", prefix + b"big"))
    time.sleep(0.5)
    want = bulk(value) * n_gets + b":1\r\n"
    got = read_exact(s, len(want))
    s.close()
    ok = ok and got == want
    print("backpressure (%d MiB of replies, read late): %s" % (
        n_gets, "ok" if ok else "FAILED: got %d of %d bytes" % (len(got), len(want))))
    if not ok:
        failures.append("backpressure")

    # QUIT: +OK, then the connection closes; a command after it is not run.
    s = connect(port)
    s.sendall(resp("QUIT") + resp("SET", prefix + b"after-quit", "1"))
    got, eof = read_to_eof(s)
    s.close()
    s = connect(port)
    s.sendall(resp("EXISTS", prefix + b"after-quit") + resp("DEL", prefix + b"before"))
    got2 = read_exact(s, 8)
    s.close()
    ok = got == b"+OK\r\n" and eof and got2 == b":0\r\n:1\r\n"
    print("QUIT: %s" % ("ok" if ok else "FAILED: %r eof %s, then %r" % (got, eof, got2)))
    if not ok:
        failures.append("QUIT")

    if failures:
        print("FAILED: %s" % ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
