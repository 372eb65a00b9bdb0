/*
 * Unit tests of the PROXY protocol on accepted connections (API.md §6 "PROXY protocol",
 * ioloop_server_options_t.proxy_protocol, ioloop_conn_peer()), end to end through a raw
 * client socket: v1 TCP4, TCP6 and UNKNOWN; v2 TCP4 (with TLVs), TCP6, UNIX, LOCAL and
 * UNSPEC. In on_open, conn_peer reports the header's source (a short length is filled as
 * getpeername() fills it; LOCAL and UNKNOWN keep the socket's peer); the header's bytes
 * never reach on_data, and the bytes behind it do, exactly (also a header that looks like
 * one, and far more than one read); a header dripped a byte per send; header, data and EOF
 * at once; pausing or closing in on_open. Malformed, truncated and oversized headers, and a
 * client that leaves without a byte, are closed without on_open (nor on_close), each
 * counted in stats.refused; with proxy_protocol off a header is only data. The 5 s header
 * deadline is slow by nature: `test_accept_proxy --slow` (meson test accept_proxy_slow,
 * suite stress) runs it alone.
 *
 * The server runs on a one-loop pool (conn_helpers.c), in the default accept mode unless a
 * test is listed for both. Each test closes what it opens and checks the fd count.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conn_helpers.h"
#include "helpers.h"

/* What the PROXY tests' on_open saw. */
struct proxy_seen {
    int peer_rc;
    socklen_t peer_len;
    char peer[128];             /* ioloop_address_format() of the peer */
    int format_rc;
    int datas_before_open;
    int short_rc;               /* conn_peer with room for 4 bytes */
    socklen_t short_len;
    int short_spill;            /* bytes written past those 4 */
};

static void proxy_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    struct proxy_seen *p = r->test;
    struct sockaddr_storage ss;
    unsigned char small[sizeof ss];
    socklen_t len = sizeof ss, small_len = 4;
    int rc = ioloop_conn_peer(conn, &ss, &len), short_rc, spill = 0;

    memset(small, 0xa5, sizeof small);
    short_rc = ioloop_conn_peer(conn, (struct sockaddr_storage *)(void *)small, &small_len);
    for (size_t i = 4; i < sizeof small; i++)
        spill += small[i] != 0xa5;
    tc_lock(r);
    p->peer_rc = rc;
    p->peer_len = len;
    p->format_rc = rc == 0 ? ioloop_address_format((struct sockaddr *)&ss, len, p->peer,
                                                   sizeof p->peer)
                           : rc;
    p->datas_before_open = r->datas;
    p->short_rc = short_rc;
    p->short_len = small_len;
    p->short_spill = spill;
    tc_unlock(r);
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

static const ioloop_conn_handlers_t proxy_handlers = {
    .on_open = proxy_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
};

static void proxy_open(struct tc_server *sv, struct tc_rec *r, struct proxy_seen *p, int mode,
                       int proxy_protocol)
{
    ioloop_server_options_t o = { .proxy_protocol = proxy_protocol, .reuseport = mode };

    tc_rec_init(r, NULL);
    memset(p, 0, sizeof *p);
    r->test = p;
    tc_server_open_opts(sv, r, &proxy_handlers, &o);
}

/* "127.0.0.1:<port>" of the client socket fd, as the server would see it without a header. */
static void self_text(int fd, char *buf, size_t size)
{
    struct sockaddr_in me;
    socklen_t len = sizeof me;

    assert_int_equal(getsockname(fd, (struct sockaddr *)&me, &len), 0);
    snprintf(buf, size, "127.0.0.1:%u", (unsigned)ntohs(me.sin_port));
}

static void nodelay(int fd)
{
    int one = 1;

    assert_int_equal(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0);
}

/* The v2 signature, then version 2 with `command` (0 LOCAL, 1 PROXY), the family byte, and
 * `len` bytes of addresses and TLVs. Returns the header's length. */
static size_t v2_header(char *buf, int command, unsigned char family, const void *body,
                        uint16_t len)
{
    static const char sig[12] = { '\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T',
                                  '\n' };

    memcpy(buf, sig, sizeof sig);
    buf[12] = (char)(0x20 | command);
    buf[13] = (char)family;
    buf[14] = (char)(len >> 8);
    buf[15] = (char)(len & 0xff);
    if (len > 0)
        memcpy(buf + 16, body, len);
    return 16u + len;
}

/* A v2 TCP4 PROXY header for src:sport -> dst:dport, with `tlv` bytes of TLVs after it. */
static size_t v2_tcp4(char *buf, const char *src, uint16_t sport, const char *dst,
                      uint16_t dport, const void *tlv, uint16_t tlv_len)
{
    unsigned char body[12 + 512];

    assert_true(tlv_len <= 512);
    assert_int_equal(inet_pton(AF_INET, src, body), 1);
    assert_int_equal(inet_pton(AF_INET, dst, body + 4), 1);
    body[8] = (unsigned char)(sport >> 8);
    body[9] = (unsigned char)sport;
    body[10] = (unsigned char)(dport >> 8);
    body[11] = (unsigned char)dport;
    if (tlv_len > 0)
        memcpy(body + 12, tlv, tlv_len);
    return v2_header(buf, 1, 0x11, body, (uint16_t)(12 + tlv_len));
}

static size_t v2_tcp6(char *buf, const char *src, uint16_t sport, const char *dst,
                      uint16_t dport)
{
    unsigned char body[36];

    assert_int_equal(inet_pton(AF_INET6, src, body), 1);
    assert_int_equal(inet_pton(AF_INET6, dst, body + 16), 1);
    body[32] = (unsigned char)(sport >> 8);
    body[33] = (unsigned char)sport;
    body[34] = (unsigned char)(dport >> 8);
    body[35] = (unsigned char)dport;
    return v2_header(buf, 1, 0x21, body, sizeof body);
}

/* Sends header + data, one send for all or (bytewise) one send per byte with TCP_NODELAY and
 * a short pause (the kernel may still coalesce some); checks that on_open reported `peer`
 * (NULL: the client's own address), that on_open came before any on_data, and that on_data
 * got exactly `data`, then that the connection ends cleanly. */
static void proxy_case(int mode, const char *header, size_t header_len, const char *peer,
                       const char *data, size_t data_len, bool bytewise)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static struct proxy_seen p;
    char me[64];
    int fd;

    proxy_open(&sv, &r, &p, mode, 1);
    fd = tc_connect(sv.port, 0);
    nodelay(fd);
    self_text(fd, me, sizeof me);
    if (!bytewise) {
        char *all = malloc(header_len + data_len + 1);

        assert_non_null(all);
        memcpy(all, header, header_len);
        memcpy(all + header_len, data, data_len);
        test_write_all(fd, all, header_len + data_len);
        free(all);
    } else {
        for (size_t i = 0; i + 1 < header_len; i++) {
            test_write_all(fd, header + i, 1);
            tc_sleep_ms(1);
        }
        /* All but the last byte of the header: no open yet (had the loop not read them
         * all by now, the check would only be weaker). */
        tc_sleep_ms(20);
        tc_settle(sv.loop);
        assert_int_equal(tc_get(&r, &r.opens), 0);
        test_write_all(fd, header + header_len - 1, 1);
        tc_sleep_ms(1);
        for (size_t i = 0; i < data_len; i++) {
            test_write_all(fd, data + i, 1);
            tc_sleep_ms(1);
        }
    }
    assert_true(tc_wait(&r, &r.opens, 1));
    assert_true(tc_wait_size(&r, &r.in_len, data_len));
    tc_settle(sv.loop);
    tc_lock(&r);
    assert_int_equal(p.peer_rc, 0);
    assert_int_equal(p.format_rc, (int)strlen(peer != NULL ? peer : me));
    assert_string_equal(p.peer, peer != NULL ? peer : me);
    assert_int_equal(p.datas_before_open, 0);
    /* A short buffer is filled as getpeername() fills it. */
    assert_int_equal(p.short_rc, 0);
    assert_int_equal(p.short_len, p.peer_len);
    assert_int_equal(p.short_spill, 0);
    assert_int_equal(r.in_len, data_len);
    if (data_len > 0)
        assert_memory_equal(r.in, data, data_len);
    assert_int_equal(r.closes, 0);
    tc_unlock(&r);
    {
        ioloop_server_stats_t st = tc_stats(sv.server);

        assert_int_equal(st.accepted, 1);
        assert_int_equal(st.refused, 0);
    }
    close(fd);
    assert_true(tc_wait(&r, &r.closes, 1));
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.outside_loop, 0);
    assert_int_equal(r.nested, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

#define PROXY_DATA "GET / HTTP/1.1\r\nHost: x\r\n\r\n"

static void test_accept_proxy_v1_tcp4(void **state)
{
    static const char h[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    /* Data that looks like a header is data once the header was read. */
    static const char data[] = PROXY_DATA "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";

    proxy_case(tc_mode(state), h, strlen(h), "192.0.2.1:56324", data, strlen(data), false);
}

static void test_accept_proxy_v1_tcp6(void **state)
{
    static const char h[] = "PROXY TCP6 2001:db8::1 2001:db8::2:3 4242 80\r\n";

    (void)state;
    proxy_case(0, h, strlen(h), "[2001:db8::1]:4242", PROXY_DATA, strlen(PROXY_DATA), false);
}

/* UNKNOWN: the receiver uses the connection's real addresses (HAProxy's spec, 2.1). */
static void test_accept_proxy_v1_unknown(void **state)
{
    static const char h1[] = "PROXY UNKNOWN\r\n";
    static const char h2[] = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";

    (void)state;
    proxy_case(0, h1, strlen(h1), NULL, PROXY_DATA, strlen(PROXY_DATA), false);
    proxy_case(0, h2, strlen(h2), NULL, "x", 1, false);
}

static void test_accept_proxy_v2_tcp4(void **state)
{
    char h[64];
    size_t n = v2_tcp4(h, "203.0.113.7", 40000, "198.51.100.2", 443, NULL, 0);

    proxy_case(tc_mode(state), h, n, "203.0.113.7:40000", PROXY_DATA, strlen(PROXY_DATA),
               false);
}

/* TLVs (here an ALPN and a NOOP) are part of the header: none of their bytes is data. */
static void test_accept_proxy_v2_tcp4_tlvs(void **state)
{
    static const unsigned char tlv[] = { 0x01, 0x00, 0x02, 'h', '2',
                                         0x04, 0x00, 0x05, 0, 0, 0, 0, 0 };
    char h[128];
    size_t n = v2_tcp4(h, "198.18.0.9", 1, "198.18.0.10", 2, tlv, sizeof tlv);

    (void)state;
    proxy_case(0, h, n, "198.18.0.9:1", PROXY_DATA, strlen(PROXY_DATA), false);
}

static void test_accept_proxy_v2_tcp6(void **state)
{
    char h[64];
    size_t n = v2_tcp6(h, "2001:db8:1::7", 65535, "2001:db8:2::8", 8443);

    (void)state;
    proxy_case(0, h, n, "[2001:db8:1::7]:65535", PROXY_DATA, strlen(PROXY_DATA), false);
}

/* LOCAL (a health check of the proxy itself), and PROXY with the UNSPEC family: the real
 * addresses (HAProxy's spec, 2.2). */
static void test_accept_proxy_v2_local_and_unspec(void **state)
{
    char h[64];
    size_t n;

    (void)state;
    n = v2_header(h, 0, 0x00, NULL, 0);
    proxy_case(0, h, n, NULL, PROXY_DATA, strlen(PROXY_DATA), false);
    n = v2_header(h, 1, 0x00, NULL, 0);
    proxy_case(0, h, n, NULL, "y", 1, false);
    /* LOCAL with an address block: the block is skipped, the real addresses count. */
    n = v2_tcp4(h, "192.0.2.99", 9, "192.0.2.100", 10, NULL, 0);
    h[12] = 0x20;
    proxy_case(0, h, n, NULL, "z", 1, false);
}

/* v2 UNIX stream: the client's socket path (NUL-terminated in its 108 bytes). */
static void test_accept_proxy_v2_unix(void **state)
{
    unsigned char body[216] = { 0 };
    char h[16 + sizeof body];
    size_t n;

    (void)state;
    strcpy((char *)body, "/run/client.sock");
    strcpy((char *)body + 108, "/run/haproxy-backend.sock");
    n = v2_header(h, 1, 0x31, body, sizeof body);
    proxy_case(0, h, n, "unix:/run/client.sock", PROXY_DATA, strlen(PROXY_DATA), false);
}

/* Far more data behind the header than one read of the header's takes (IOLOOP__PROXY_MAX is
 * about 4 KiB): every byte reaches on_data, in order. */
static void test_accept_proxy_large_data_behind_header(void **state)
{
    static const char h[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    const size_t len = 256 * 1024;
    char *data = tc_pattern_new(len);

    (void)state;
    proxy_case(0, h, strlen(h), "192.0.2.1:56324", data, len, false);
    free(data);
}

/* Header, data and the client's EOF in one go: on_open, the data, then an orderly close. */
static void test_accept_proxy_header_data_eof(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static struct proxy_seen p;
    static const char all[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nlast words";

    (void)state;
    proxy_open(&sv, &r, &p, 0, 1);
    {
        int fd = tc_connect(sv.port, 0);

        test_write_all(fd, all, strlen(all));
        assert_int_equal(shutdown(fd, SHUT_WR), 0);
        assert_true(tc_wait(&r, &r.closes, 1));
        assert_int_equal(tc_read_eof(fd), 0);
        close(fd);
    }
    tc_lock(&r);
    assert_string_equal(r.log, "ODC");
    assert_int_equal(r.close_err, 0);
    assert_string_equal(p.peer, "192.0.2.1:56324");
    assert_int_equal(r.in_len, strlen("last words"));
    assert_memory_equal(r.in, "last words", r.in_len);
    tc_unlock(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* on_open pauses (the data behind the header stays buffered, unseen), a later resume
 * presents it whole; on_open closing instead means on_data never runs. */
static void pause_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    int rc = r->rc[20] ? (ioloop_conn_close(conn), 0) : ioloop_conn_pause(conn);

    tc_lock(r);
    r->rc[21] = rc;
    tc_unlock(r);
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

static void resume_fn(void *arg)
{
    struct tc_rec *r = arg;

    tc_lock(r);
    r->rc[22] = ioloop_conn_resume(r->conn);
    tc_unlock(r);
}

static void test_accept_proxy_pause_or_close_in_on_open(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = pause_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    static const char all[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nbehind";
    const ioloop_server_options_t o = { .proxy_protocol = 1 };
    int fd;

    (void)state;
    for (int closing = 0; closing <= 1; closing++) {
        tc_rec_init(&r, NULL);
        r.rc[20] = closing;
        tc_server_open_opts(&sv, &r, &handlers, &o);
        fd = tc_connect(sv.port, 0);
        test_write_all(fd, all, strlen(all));
        assert_true(tc_wait(&r, &r.opens, 1));
        tc_settle(sv.loop);
        assert_int_equal(tc_get(&r, &r.datas), 0);
        assert_int_equal(tc_get(&r, &r.rc[21]), 0);
        if (!closing) {
            tc_run_in_loop(sv.loop, resume_fn, &r);
            assert_int_equal(tc_get(&r, &r.rc[22]), 0);
            assert_true(tc_wait_size(&r, &r.in_len, strlen("behind")));
            tc_lock(&r);
            assert_memory_equal(r.in, "behind", strlen("behind"));
            tc_unlock(&r);
            close(fd);
        } else {
            assert_int_equal(tc_read_eof(fd), 0);
            close(fd);
        }
        assert_true(tc_wait(&r, &r.closes, 1));
        assert_int_equal(r.close_err, 0);
        if (closing)
            assert_int_equal(r.datas, 0);
        tc_server_close(&sv);
        tc_rec_destroy(&r);
    }
}

/* A header dripped one byte per send (TCP_NODELAY, a pause between sends), then the data
 * the same way: the parser works on whatever the reads bring. */
static void test_accept_proxy_bytewise(void **state)
{
    static const char v1[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    char v2[64];
    size_t n = v2_tcp4(v2, "203.0.113.7", 40000, "198.51.100.2", 443, NULL, 0);

    (void)state;
    proxy_case(0, v1, strlen(v1), "192.0.2.1:56324", "abc\r\n", 5, true);
    proxy_case(0, v2, n, "203.0.113.7:40000", "abc\r\n", 5, true);
}

/* Sends what the peer takes before it goes away. */
static void send_lossy(int fd, const void *bytes, size_t len)
{
    size_t sent = 0;

    while (sent < len) {
        ssize_t n = send(fd, (const char *)bytes + sent, len - sent, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
}

/* Sends `bytes` on a new connection and expects it closed without on_open (no byte back),
 * counted once in refused; returns the time from the connect to the end of stream, in ms. */
static uint64_t proxy_refused_eof_case(int mode, const void *bytes, size_t len, bool eof);

static uint64_t proxy_refused_case(int mode, const void *bytes, size_t len)
{
    return proxy_refused_eof_case(mode, bytes, len, false);
}

/* The same; with `eof`, the client shuts its side down after the bytes. */
static uint64_t proxy_refused_eof_case(int mode, const void *bytes, size_t len, bool eof)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static struct proxy_seen p;
    uint64_t t0;
    int fd, end;
    ioloop_server_stats_t st;

    proxy_open(&sv, &r, &p, mode, 1);
    t0 = test_now_us();
    fd = tc_connect(sv.port, 0);
    send_lossy(fd, bytes, len);
    if (eof)
        shutdown(fd, SHUT_WR);
    end = tc_read_eof(fd);
    t0 = (test_now_us() - t0) / 1000;
    assert_true(end == 0 || end == -ECONNRESET);
    close(fd);
    assert_true(tc_wait_refused(sv.server, 1));
    tc_settle(sv.loop);
    st = tc_stats(sv.server);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.accepted, 0);
    assert_int_equal(st.open, 0);
    tc_lock(&r);
    assert_int_equal(r.opens, 0);
    assert_int_equal(r.datas, 0);
    assert_int_equal(r.closes, 0); /* never opened, so never closed for the application */
    tc_unlock(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
    return t0;
}

/* Not a header: an HTTP request, a v1 line with a bad address, a v2 signature with version
 * 1, a v2 datagram family. Each is closed without on_open and counted in refused, at once
 * (well before the header deadline). */
static void test_accept_proxy_malformed_refused(void **state)
{
    static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char bad_v1[] = "PROXY TCP4 192.0.2.300 198.51.100.2 1 2\r\n";
    static const char lower[] = "proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n";
    char v2[64];
    size_t n;
    int mode = tc_mode(state);

    assert_true(proxy_refused_case(mode, http, strlen(http)) < 2000);
    assert_true(proxy_refused_case(mode, bad_v1, strlen(bad_v1)) < 2000);
    assert_true(proxy_refused_case(mode, lower, strlen(lower)) < 2000);
    n = v2_tcp4(v2, "192.0.2.1", 1, "192.0.2.2", 2, NULL, 0);
    v2[12] = 0x11; /* version 1 */
    assert_true(proxy_refused_case(mode, v2, n) < 2000);
    n = v2_tcp4(v2, "192.0.2.1", 1, "192.0.2.2", 2, NULL, 0);
    v2[13] = 0x12; /* TCP4 -> UDP4 */
    assert_true(proxy_refused_case(mode, v2, n) < 2000);
    /* A valid beginning, then the client's EOF: no header will come. */
    assert_true(proxy_refused_eof_case(mode, "PROXY TCP4 192.0.2.1", 20, true) < 2000);
    assert_true(proxy_refused_eof_case(mode, v2, 10, true) < 2000);
}

/*
 * The simplest client of all: it connects and leaves without a byte (a load balancer's TCP
 * health check, a port scanner). It is closed without on_open and counted in refused, and
 * the server goes on serving. Run in a child process: on main at 1cbce0c the server crashes
 * here (read_proxy_header() hands ioloop__buf_read_fd() a connection with no input buffer
 * yet, and the read of 0 bytes at EOF dereferences it), which would end this whole binary.
 * The child reports with its exit status; no cmocka call runs there.
 */
static size_t ignore_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    (void)conn;
    (void)data;
    return len;
}

static const char *eof_before_any_byte_child(void)
{
    const ioloop_server_options_t o = { .proxy_protocol = 1 };
    static const ioloop_conn_handlers_t h = { .on_data = ignore_data };
    ioloop_pool_t *pool = ioloop_pool_new(1);
    ioloop_server_t *server;
    ioloop_server_stats_t st = { 0 };
    struct sockaddr_in sin = { .sin_family = AF_INET };
    uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;
    char c;
    int fd;

    if (pool == NULL)
        return "no pool";
    server = ioloop_server_new_opts(pool, "127.0.0.1:0", &h, NULL, &o);
    if (server == NULL || ioloop_server_start(server) != 0)
        return "no server";
    for (int round = 0; round < 2; round++) {
        sin.sin_port = htons((uint16_t)ioloop_server_port(server));
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0)
            return "cannot connect";
        shutdown(fd, SHUT_WR);
        if (test_wait_fd(fd, POLLIN, TEST_WAIT_MS) != 1 || recv(fd, &c, 1, 0) > 0)
            return "not closed (or a byte came)";
        close(fd);
        while (ioloop_server_get_stats(server, &st), st.refused < (uint64_t)round + 1)
            if (test_now_us() > deadline)
                return "not counted in refused";
            else
                tc_sleep_ms(1);
    }
    if (st.accepted != 0 || st.refused != 2)
        return "wrong counts";
    ioloop_server_free(server);
    ioloop_pool_free(pool);
    return NULL;
}

static void test_accept_proxy_eof_before_any_byte(void **state)
{
    uint64_t deadline = test_now_us() + 2ull * TEST_WAIT_MS * 1000;
    int status = 0, pfd[2];
    char why[128] = "";
    pid_t pid;

    (void)state;
    assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const char *err = eof_before_any_byte_child();

        if (err != NULL && write(pfd[1], err, strlen(err)) < 0)
            _exit(3);
        _exit(err == NULL ? 0 : 1);
    }
    close(pfd[1]);
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (test_now_us() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        tc_sleep_ms(5);
    }
    if (read(pfd[0], why, sizeof why - 1) < 0)
        why[0] = '\0';
    close(pfd[0]);
    if (WIFSIGNALED(status))
        fail_msg("the server process died of signal %d when a client closed before sending "
                 "a byte", WTERMSIG(status));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("a client that closed before sending a byte: %s (status 0x%x)", why, status);
}

/* Too long to be a header: a v1 line past 107 bytes without its CRLF (HAProxy's limit), and a
 * v2 header whose length field claims 65535 bytes (beyond any TCP header's bound), sent in
 * full. Each is closed without on_open, before the header deadline. */
static void test_accept_proxy_oversized_refused(void **state)
{
    char v1[300];
    char *v2 = malloc(16 + 65535);
    size_t n;

    (void)state;
    assert_non_null(v2);
    n = (size_t)snprintf(v1, sizeof v1, "PROXY UNKNOWN ");
    memset(v1 + n, 'x', 200);
    memcpy(v1 + n + 200, "\r\n", 2);
    assert_true(proxy_refused_case(0, v1, n + 202) < 2000);
    n = v2_tcp4(v2, "192.0.2.1", 1, "192.0.2.2", 2, NULL, 0);
    memset(v2 + n, 0, 16 + 65535 - n); /* NOOP-typed zero bytes */
    v2[14] = (char)0xff;
    v2[15] = (char)0xff;
    assert_true(proxy_refused_case(0, v2, 16 + 65535) < 2000);
    free(v2);
}

/* proxy_protocol off: a PROXY header is only data, and the peer is the real one. */
static void test_accept_proxy_off_header_is_data(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static struct proxy_seen p;
    static const char h[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nhello";
    char me[64];
    int fd;

    proxy_open(&sv, &r, &p, tc_mode(state), 0);
    fd = tc_connect(sv.port, 0);
    self_text(fd, me, sizeof me);
    assert_true(tc_wait(&r, &r.opens, 1));
    test_write_all(fd, h, strlen(h));
    assert_true(tc_wait_size(&r, &r.in_len, strlen(h)));
    tc_lock(&r);
    assert_string_equal(p.peer, me);
    assert_memory_equal(r.in, h, strlen(h));
    tc_unlock(&r);
    close(fd);
    assert_true(tc_wait(&r, &r.closes, 1));
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* Slow by nature (the 5 s header deadline of API.md §6): a client that sends nothing and one
 * that sends half a header are both closed, without on_open, between 5 s and 5 s + slack
 * after they connected; each counts in refused. Run by `test_accept_proxy --slow` (suite stress). */
static void test_accept_proxy_header_deadline(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static struct proxy_seen p;
    const uint64_t deadline_ms = 5000, slack_ms = 1500;
    uint64_t t0, ended[2];
    int fds[2], done = 0;

    (void)state;
    proxy_open(&sv, &r, &p, 0, 1);
    t0 = test_now_us();
    fds[0] = tc_connect(sv.port, 0);
    fds[1] = tc_connect(sv.port, 0);
    test_write_all(fds[1], "PROXY TCP4 192.0.2.1 ", 21);
    ended[0] = ended[1] = 0;
    while (done < 2) {
        struct pollfd pfd[2] = { { .fd = fds[0], .events = POLLIN },
                                 { .fd = fds[1], .events = POLLIN } };
        int n = poll(pfd, 2, (int)(deadline_ms + slack_ms + 1000));

        assert_true(n > 0);
        for (int i = 0; i < 2; i++)
            if (ended[i] == 0 && pfd[i].revents != 0) {
                int end = tc_read_eof(fds[i]);

                assert_true(end == 0 || end == -ECONNRESET);
                ended[i] = (test_now_us() - t0) / 1000;
                done++;
            }
    }
    for (int i = 0; i < 2; i++) {
        if (ended[i] < deadline_ms || ended[i] > deadline_ms + slack_ms)
            fail_msg("client %d was closed after %llu ms, want %llu ms", i,
                     (unsigned long long)ended[i], (unsigned long long)deadline_ms);
        close(fds[i]);
    }
    assert_true(tc_wait_refused(sv.server, 2));
    tc_lock(&r);
    assert_int_equal(r.opens, 0);
    assert_int_equal(r.closes, 0);
    tc_unlock(&r);
    assert_int_equal(tc_stats(sv.server).accepted, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        TC_BOTH_MODES(test_accept_proxy_v1_tcp4),
        cmocka_unit_test(test_accept_proxy_v1_tcp6),
        cmocka_unit_test(test_accept_proxy_v1_unknown),
        TC_BOTH_MODES(test_accept_proxy_v2_tcp4),
        cmocka_unit_test(test_accept_proxy_v2_tcp4_tlvs),
        cmocka_unit_test(test_accept_proxy_v2_tcp6),
        cmocka_unit_test(test_accept_proxy_v2_local_and_unspec),
        cmocka_unit_test(test_accept_proxy_v2_unix),
        cmocka_unit_test(test_accept_proxy_large_data_behind_header),
        cmocka_unit_test(test_accept_proxy_header_data_eof),
        cmocka_unit_test(test_accept_proxy_pause_or_close_in_on_open),
        cmocka_unit_test(test_accept_proxy_bytewise),
        TC_BOTH_MODES(test_accept_proxy_malformed_refused),
        cmocka_unit_test(test_accept_proxy_eof_before_any_byte),
        cmocka_unit_test(test_accept_proxy_oversized_refused),
        TC_BOTH_MODES(test_accept_proxy_off_header_is_data),
    };
    /* The slow group (suite stress): run with --slow. */
    const struct CMUnitTest slow_tests[] = {
        cmocka_unit_test(test_accept_proxy_header_deadline),
    };

    tc_apply_filter();
    if (argc > 1 && strcmp(argv[1], "--slow") == 0)
        return cmocka_run_group_tests_name("accept_proxy_slow", slow_tests, NULL, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
