/*
 * Unit tests of accepting (API.md §6, ioloop_server_new_opts() and its neighbours in
 * include/ioloop/server.h): the options (NULL means the defaults; -EINVAL for each bad field;
 * the listen backlog as the kernel reports it, and what a full one does to clients); the
 * reuseport mode (one listener per loop on one port, also for port 0, connections spread by
 * the kernel over every loop, no acceptor thread, echo, ioloop_server_send() and
 * ioloop_server_call(), both teardown orders); the default mode's round-robin hand-off, one
 * callback per loop per batch; max_conns in both modes; the server's counters across a
 * scenario; ioloop_server_drain() (clients that leave, a client that stays, no accepting
 * afterwards, connections queued before it are served, its errors) in both modes;
 * TCP_NODELAY on accepted sockets;
 * ioloop_conn_peer() for accepted and outgoing connections; ioloop_address_format(). The
 * PROXY protocol has its own file, test_accept_proxy.c.
 *
 * The servers listen on loopback ports the kernel picks; the clients are plain blocking
 * sockets driven by the test thread (or by a helper thread while ioloop_server_drain() holds
 * the test thread). Queued connections are counted from the kernel's own view of a listener
 * (NETLINK_SOCK_DIAG), so no test guesses with a sleep. Each test closes what it opens and
 * checks the fd count.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "conn_helpers.h"
#include "helpers.h"

/* Room for the connections of one test, and for the loops of one pool. */
#define MAX_CONNS 512
#define MAX_LOOPS 8
/* Sequential short connections of the spreading tests. */
#define SPREAD_CONNS 200
/* Connections of the round-robin tests. */
#define RR_CONNS 40
/* How long after the last client left (or after its timeout) ioloop_server_drain() may
 * take to return: a few syscalls and a condition variable, with room for the sanitizers. */
#define DRAIN_SLACK_MS 500
/* The drain timeout of the test whose client stays. */
#define DRAIN_TIMEOUT_MS 200
/* How long a client beyond a full backlog is watched for a handshake that must not come
 * (the kernel drops its SYN and would resend it only after a second). */
#define BACKLOG_WATCH_MS 300

/* ---- Small tools -------------------------------------------------------------------------- */


/* A client socket whose connect to 127.0.0.1:port is in progress (or done). */
static int connect_nb(int port)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0)
        assert_int_equal(errno, EINPROGRESS);
    return fd;
}

/* Whether the non-blocking connect of fd completed within ms (and succeeded). */
static bool connected_within(int fd, int ms)
{
    int err = -1;
    socklen_t len = sizeof err;

    if (test_wait_fd(fd, POLLOUT, ms) != 1)
        return false;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
    assert_int_equal(err, 0);
    return true;
}

/* What a blocking connect to 127.0.0.1:port ends with: 0 or an errno. */
static int connect_errno(int port)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), err;

    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    err = connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0 ? 0 : errno;
    close(fd);
    return err;
}

/* One request and its echo on fd; the request names the client. */
static void echo_check(int fd, int n)
{
    char req[32], got[32];
    int len = snprintf(req, sizeof req, "ping %d\n", n);

    test_write_all(fd, req, (size_t)len);
    test_read_exact(fd, got, (size_t)len);
    assert_memory_equal(got, req, (size_t)len);
}

/* A client that connects, is echoed once and leaves. */
static void echo_client(int port, int n)
{
    int fd = tc_connect(port, 0);

    echo_check(fd, n);
    assert_int_equal(close(fd), 0);
}

/*
 * The kernel's view of the TCP listeners on 127.0.0.1:port (NETLINK_SOCK_DIAG): how many
 * there are, how many connections wait in their accept queues in all (idiag_rqueue of a
 * listener), and the backlog of the last one seen (idiag_wqueue of a listener).
 */
struct listeners {
    int n;
    unsigned queued;
    unsigned backlog;
};

static struct listeners listeners_on(int port)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 req;
    } msg = {
        .nlh = { .nlmsg_len = sizeof msg, .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                 .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP },
        .req = { .sdiag_family = AF_INET, .sdiag_protocol = IPPROTO_TCP,
                 .idiag_states = 1u << TCP_LISTEN },
    };
    union {
        struct nlmsghdr align;
        char bytes[32 * 1024];
    } buf;
    struct listeners out = { 0 };
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    bool done = false;

    assert_true(fd >= 0);
    assert_int_equal(send(fd, &msg, sizeof msg, 0), (ssize_t)sizeof msg);
    while (!done) {
        ssize_t n;

        assert_int_equal(test_wait_fd(fd, POLLIN, TEST_WAIT_MS), 1);
        n = recv(fd, &buf, sizeof buf, 0);
        assert_true(n > 0);
        /* Read by copies (NLMSG_NEXT's casts would trip -Wcast-align on a char buffer). */
        for (size_t off = 0; !done && off + NLMSG_HDRLEN <= (size_t)n;) {
            struct nlmsghdr h;
            struct inet_diag_msg m;

            memcpy(&h, buf.bytes + off, sizeof h);
            assert_true(h.nlmsg_len >= NLMSG_HDRLEN && off + h.nlmsg_len <= (size_t)n);
            assert_int_not_equal(h.nlmsg_type, NLMSG_ERROR);
            if (h.nlmsg_type == NLMSG_DONE) {
                done = true;
                break;
            }
            assert_true(h.nlmsg_len >= NLMSG_LENGTH(sizeof m));
            memcpy(&m, buf.bytes + off + NLMSG_HDRLEN, sizeof m);
            off += NLMSG_ALIGN(h.nlmsg_len);
            if (ntohs(m.id.idiag_sport) != port || m.id.idiag_src[0] != htonl(INADDR_LOOPBACK))
                continue;
            out.n++;
            out.queued += m.idiag_rqueue;
            out.backlog = m.idiag_wqueue;
        }
    }
    close(fd);
    return out;
}

/* Waits until n connections wait in the accept queues of the listeners on port. */
static void wait_queued(int port, unsigned n)
{
    uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;

    while (listeners_on(port).queued != n)
        if (test_now_us() > deadline)
            fail_msg("%u connection(s) queued on port %d, want %u", listeners_on(port).queued,
                     port, n);
        else
            tc_sleep_ms(1);
}

/* ---- Many connections over several loops -------------------------------------------------- */

/* What the callbacks record of each connection, in the order they opened. */
struct acc_conn {
    uint64_t id;
    int loop;                   /* its loop's index in the pool, -1 if not a pool loop */
    int peer_rc;                /* ioloop_conn_peer() in on_open */
    socklen_t peer_len;
    struct sockaddr_storage peer;
    int closed;
    int close_err;
};

/* The test's state behind a shared recorder (tc_rec.test); under the recorder's lock. */
struct acc {
    ioloop_pool_t *pool;
    int nopen;
    int per_loop[MAX_LOOPS];
    int canceled;               /* on_close with -ECANCELED */
    int closed_ok;              /* on_close with 0 */
    int foreign;                /* on_open in a loop that is not the pool's */
    int call_ok;                /* server_call functions that ran with their connection */
    int call_null;              /* ... with NULL */
    int call_wrong;             /* ... in the wrong thread or with another connection */
    struct acc_conn c[MAX_CONNS];
};

/* A server over a pool whose connections record into r (shared) and a (r->test). */
struct acc_server {
    int fds;
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    int port;
};

static int loop_index(ioloop_pool_t *pool, ioloop_t *loop)
{
    for (int i = 0; i < ioloop_pool_size(pool); i++)
        if (ioloop_pool_loop(pool, i) == loop)
            return i;
    return -1;
}

/* The connection's record: its conn data is its index + 1. */
static struct acc_conn *acc_conn_of(struct acc *a, ioloop_conn_t *conn)
{
    uintptr_t n = (uintptr_t)ioloop_conn_data(conn);

    if (n == 0 || n > MAX_CONNS)
        abort(); /* a callback for a connection whose on_open never ran */
    return &a->c[n - 1];
}

static void acc_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    struct acc *a = r->test;
    struct acc_conn *c;
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    int rc = ioloop_conn_peer(conn, &peer, &len);
    int n;

    tc_lock(r);
    n = a->nopen++;
    if (n >= MAX_CONNS)
        abort();
    c = &a->c[n];
    c->id = ioloop_conn_id(conn);
    c->loop = loop_index(a->pool, ioloop_conn_loop(conn));
    c->peer_rc = rc;
    c->peer_len = len;
    c->peer = peer;
    if (c->loop < 0)
        a->foreign++;
    else
        a->per_loop[c->loop]++;
    tc_unlock(r);
    ioloop_conn_set_data(conn, (void *)(uintptr_t)(n + 1));
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

/* Echoes everything. */
static size_t acc_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);
    int rc = ioloop_conn_write(conn, data, len);

    tc_lock(r);
    if (rc != 0)
        r->rc[0] = rc;
    tc_unlock(r);
    tc_event(r, conn, 'D', 0, len);
    tc_leave(r);
    return len;
}

static void acc_on_close(ioloop_conn_t *conn, int err)
{
    struct tc_rec *r = tc_enter(conn);
    struct acc *a = r->test;
    struct acc_conn *c;

    tc_lock(r);
    c = acc_conn_of(a, conn);
    c->closed++;
    c->close_err = err;
    if (err == -ECANCELED)
        a->canceled++;
    else if (err == 0)
        a->closed_ok++;
    tc_unlock(r);
    tc_event(r, conn, 'C', err, 0);
    tc_leave(r);
}

static const ioloop_conn_handlers_t acc_handlers = {
    .on_open = acc_on_open, .on_data = acc_on_data, .on_close = acc_on_close,
};

static void acc_init(struct tc_rec *r, struct acc *a)
{
    tc_rec_init(r, NULL);
    memset(a, 0, sizeof *a);
    r->many = true;
    r->test = a;
}

/* A server on 127.0.0.1:0 over a pool of nloops; started if `start`. */
static void acc_open_at(struct acc_server *s, struct tc_rec *r, int nloops, const char *address,
                        const ioloop_server_options_t *options, bool start)
{
    struct acc *a = r->test;

    memset(s, 0, sizeof *s);
    s->fds = test_count_fds();
    s->pool = ioloop_pool_new(nloops);
    assert_non_null(s->pool);
    a->pool = s->pool;
    s->server = ioloop_server_new_opts(s->pool, address, &acc_handlers, r, options);
    assert_non_null(s->server);
    s->port = ioloop_server_port(s->server);
    if (strncmp(address, "unix:", 5) != 0)
        assert_true(s->port > 0 && s->port <= 65535);
    if (start)
        assert_int_equal(ioloop_server_start(s->server), 0);
}

static void acc_open_opts(struct acc_server *s, struct tc_rec *r, int nloops,
                          const ioloop_server_options_t *options, bool start)
{
    acc_open_at(s, r, nloops, "127.0.0.1:0", options, start);
}

static void acc_open(struct acc_server *s, struct tc_rec *r, int nloops, int mode)
{
    ioloop_server_options_t o = { .reuseport = mode };

    acc_open_opts(s, r, nloops, &o, true);
}

/* Frees the server, then the pool, and checks the fd count. */
static void acc_close(struct acc_server *s)
{
    ioloop_server_free(s->server);
    ioloop_pool_free(s->pool);
    s->server = NULL;
    s->pool = NULL;
    assert_int_equal(test_count_fds(), s->fds);
}

/* No callback ran outside its connection's loop, none inside another, none is running. */
static void acc_check_clean(struct tc_rec *r)
{
    struct acc *a = r->test;

    tc_lock(r);
    assert_int_equal(r->outside_loop, 0);
    assert_int_equal(r->nested, 0);
    assert_int_equal(r->depth, 0);
    if (r->rc[0] != 0)
        fail_msg("an echo write failed with %d", r->rc[0]);
    assert_int_equal(a->foreign, 0);
    for (int i = 0; i < a->nopen; i++)
        assert_true(a->c[i].closed <= 1);
    tc_unlock(r);
}

/* Connects, waits for the server's on_open, returns the client's fd. */
static int acc_client(struct tc_rec *r, int port)
{
    int opens = tc_get(r, &r->opens);
    int fd = tc_connect(port, 0);

    if (!tc_wait(r, &r->opens, opens + 1))
        fail_msg("the server did not open the connection within %d ms", TEST_WAIT_MS);
    return fd;
}

static int loops_used(struct tc_rec *r, int nloops)
{
    struct acc *a = r->test;
    int used = 0;

    tc_lock(r);
    for (int i = 0; i < nloops; i++)
        used += a->per_loop[i] > 0;
    tc_unlock(r);
    return used;
}

/* ---- Options ------------------------------------------------------------------------------ */

/* NULL options and an all-zero struct are the defaults: a working server in the default mode
 * (one acceptor thread), with the default backlog (4096, capped by somaxconn). */
static void test_accept_options_null_is_default(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    static const ioloop_server_options_t zero;
    const ioloop_server_options_t *options[] = { NULL, &zero };
    unsigned somaxconn = 0;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");

    (void)state;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%u", &somaxconn), 1);
    fclose(f);
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++) {
        struct acc_server s;
        int threads;

        acc_init(&r, &a);
        acc_open_opts(&s, &r, 2, options[i], false);
        threads = test_count_threads();
        assert_int_equal(listeners_on(s.port).n, 1);
        assert_int_equal(listeners_on(s.port).backlog, somaxconn < 4096 ? somaxconn : 4096);
        assert_int_equal(ioloop_server_start(s.server), 0);
        assert_int_equal(test_count_threads(), threads + 1); /* the acceptor */
        for (int n = 0; n < 4; n++)
            echo_client(s.port, n);
        assert_true(tc_wait(&r, &r.closes, 4));
        assert_int_equal(loops_used(&r, 2), 2);
        acc_check_clean(&r);
        acc_close(&s);
        tc_rec_destroy(&r);
    }
}

static void expect_einval(ioloop_pool_t *pool, const char *address,
                          const ioloop_server_options_t *o)
{
    static struct tc_rec r;

    errno = 0;
    assert_null(ioloop_server_new_opts(pool, address, &acc_handlers, &r, o));
    assert_int_equal(errno, EINVAL);
}

/* Each bad field alone is EINVAL, and a refused server leaves nothing behind: no fd, no
 * socket file for a unix address. */
static void test_accept_options_invalid(void **state)
{
    ioloop_pool_t *pool = ioloop_pool_new(2);
    char path[64];
    int fds;

    (void)state;
    assert_non_null(pool);
    fds = test_count_fds();
    expect_einval(pool, "127.0.0.1:0", &(ioloop_server_options_t){ .backlog = -1 });
    expect_einval(pool, "127.0.0.1:0", &(ioloop_server_options_t){ .backlog = -4096 });
    expect_einval(pool, "127.0.0.1:0", &(ioloop_server_options_t){ .reuseport = 2 });
    expect_einval(pool, "127.0.0.1:0", &(ioloop_server_options_t){ .reuseport = -1 });
    expect_einval(pool, "127.0.0.1:0", &(ioloop_server_options_t){ .proxy_protocol = 2 });
    expect_einval(pool, "127.0.0.1:0", &(ioloop_server_options_t){ .proxy_protocol = -1 });
    snprintf(path, sizeof path, "unix:/tmp/ioloop-accept-%d.sock", (int)getpid());
    expect_einval(pool, path, &(ioloop_server_options_t){ .reuseport = 1 });
    assert_int_equal(access(path + strlen("unix:"), F_OK), -1);
    assert_int_equal(errno, ENOENT);
    /* The same fields, valid, are fine; for unix, without reuseport. */
    {
        static struct tc_rec r;
        ioloop_server_t *server =
            ioloop_server_new_opts(pool, path, &acc_handlers, &r,
                                   &(ioloop_server_options_t){ .backlog = 1, .max_conns = 1 });

        assert_non_null(server);
        ioloop_server_free(server);
        assert_int_equal(access(path + strlen("unix:"), F_OK), -1);
    }
    assert_int_equal(test_count_fds(), fds);
    ioloop_pool_free(pool);
}

/*
 * The backlog reaches listen(2): the kernel reports it (idiag_wqueue), also for every
 * listener in reuseport mode. And it is what it says: with nothing accepting, Linux queues
 * backlog + 1 completed connections and drops the SYN of the next one (the accept queue is
 * full; SYN cookies only come into play when the SYN queue overflows), so that client's
 * connect does not complete while it is watched; once the server starts, the queued ones are
 * served. A backlog that never reached listen(2) (the default 4096) queues them all.
 */
static void test_accept_backlog_honoured(void **state)
{
    enum { BACKLOG = 2, QUEUED = BACKLOG + 1, EXTRA = 2 };
    static struct tc_rec r;
    static struct acc a;
    int mode = tc_mode(state), fds[QUEUED + EXTRA];
    ioloop_server_options_t o = { .backlog = BACKLOG, .reuseport = mode };
    struct acc_server s;
    struct listeners l;

    acc_init(&r, &a);
    /* One loop: in reuseport mode, one listener, so the queue is one queue. */
    acc_open_opts(&s, &r, 1, &o, false);
    l = listeners_on(s.port);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.backlog, BACKLOG);
    for (int i = 0; i < QUEUED; i++) {
        fds[i] = connect_nb(s.port);
        assert_true(connected_within(fds[i], TEST_WAIT_MS));
        wait_queued(s.port, (unsigned)i + 1);
    }
    for (int i = QUEUED; i < QUEUED + EXTRA; i++)
        fds[i] = connect_nb(s.port);
    for (int i = QUEUED; i < QUEUED + EXTRA; i++)
        assert_false(connected_within(fds[i], BACKLOG_WATCH_MS));
    assert_int_equal(listeners_on(s.port).queued, QUEUED);
    /* Their SYNs were dropped, so the server knows nothing of them: they just go (waiting
     * for the kernel to resend them would cost a second). */
    for (int i = QUEUED; i < QUEUED + EXTRA; i++)
        close(fds[i]);

    assert_int_equal(ioloop_server_start(s.server), 0);
    for (int i = 0; i < QUEUED; i++) {
        int flags = fcntl(fds[i], F_GETFL);

        assert_true(connected_within(fds[i], TEST_WAIT_MS));
        assert_int_equal(fcntl(fds[i], F_SETFL, flags & ~O_NONBLOCK), 0);
        echo_check(fds[i], i);
        close(fds[i]);
    }
    assert_true(tc_wait(&r, &r.closes, QUEUED));
    assert_int_equal(tc_get(&r, &r.opens), QUEUED);
    assert_int_equal(tc_stats(s.server).refused, 0);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* ---- Reuseport ---------------------------------------------------------------------------- */

/* One listener per loop, every one on the port ioloop_server_port() reports (port 0 was
 * asked for), each with the backlog; no acceptor thread: starting adds no thread, where the
 * default mode adds exactly one (which shows the count can see it). */
static void test_accept_reuseport_one_port_no_acceptor(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    const int nloops[] = { 2, 4 };

    (void)state;
    for (size_t k = 0; k < sizeof nloops / sizeof nloops[0]; k++) {
        ioloop_server_options_t o = { .reuseport = 1, .backlog = 77 };
        struct acc_server s, d;
        struct listeners l;
        int threads, base = test_count_threads();

        acc_init(&r, &a);
        acc_open_opts(&s, &r, nloops[k], &o, false);
        threads = test_count_threads();
        assert_int_equal(threads, base + nloops[k]);
        l = listeners_on(s.port);
        assert_int_equal(l.n, nloops[k]);
        assert_int_equal(l.backlog, 77);
        assert_int_equal(ioloop_server_start(s.server), 0);
        assert_int_equal(test_count_threads(), threads);
        assert_int_equal(ioloop_server_start(s.server), -EALREADY);
        for (int n = 0; n < 8; n++)
            echo_client(s.port, n);
        assert_true(tc_wait(&r, &r.closes, 8));
        acc_check_clean(&r);
        acc_close(&s);
        tc_rec_destroy(&r);
        assert_int_equal(test_count_threads(), base);

        /* The default mode, for comparison: one listener, one more thread. */
        acc_init(&r, &a);
        acc_open(&d, &r, nloops[k], 0);
        assert_int_equal(test_count_threads(), base + nloops[k] + 1);
        assert_int_equal(listeners_on(d.port).n, 1);
        acc_close(&d);
        tc_rec_destroy(&r);
        assert_int_equal(test_count_threads(), base);
    }
}

/* Many sequential short connections land on every loop of the pool (the kernel hashes each
 * connection's 4-tuple over the listeners: with 200 connections, a loop left out by chance is
 * a 1e-24 event), each opened and served in its own loop's thread. A server whose listeners
 * were not in one reuseport group, or that watched one listener only, serves from one loop. */
static void test_accept_reuseport_spreads_over_loops(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    const int nloops[] = { 2, 4 };

    (void)state;
    for (size_t k = 0; k < sizeof nloops / sizeof nloops[0]; k++) {
        struct acc_server s;

        acc_init(&r, &a);
        acc_open(&s, &r, nloops[k], 1);
        for (int n = 0; n < SPREAD_CONNS; n++)
            echo_client(s.port, n);
        assert_true(tc_wait(&r, &r.closes, SPREAD_CONNS));
        assert_int_equal(loops_used(&r, nloops[k]), nloops[k]);
        tc_lock(&r);
        assert_int_equal(a.nopen, SPREAD_CONNS);
        assert_int_equal(a.closed_ok, SPREAD_CONNS);
        tc_unlock(&r);
        assert_int_equal(tc_stats(s.server).accepted, SPREAD_CONNS);
        assert_int_equal(tc_stats(s.server).open, 0);
        acc_check_clean(&r);
        acc_close(&s);
        tc_rec_destroy(&r);
    }
}

/* In the connection's loop, for ioloop_server_call(): check it and write "call <id>". */
static void call_and_write(ioloop_conn_t *conn, void *arg)
{
    struct tc_rec *r = arg;
    struct acc *a = r->test;
    char msg[32];
    int len;

    if (conn == NULL) {
        tc_lock(r);
        a->call_null++;
        tc_unlock(r);
        return;
    }
    len = snprintf(msg, sizeof msg, "call %llu\n", (unsigned long long)ioloop_conn_id(conn));
    tc_lock(r);
    if (ioloop_current() != ioloop_conn_loop(conn) || ioloop_conn_user(conn) != r)
        a->call_wrong++;
    else if (ioloop_conn_write(conn, msg, (size_t)len) == 0)
        a->call_ok++;
    tc_unlock(r);
}

/* server_send and server_call reach a reuseport connection in whichever loop accepted it,
 * from the test thread, in order; once the client left, both are -ENOENT. */
static void test_accept_reuseport_send_and_call(void **state)
{
    enum { CLIENTS = 40 };
    static struct tc_rec r;
    static struct acc a;
    struct acc_server s;
    int fds[CLIENTS], n = 0;

    (void)state;
    acc_init(&r, &a);
    acc_open(&s, &r, 2, 1);
    /* Enough clients that both loops have some (40 on one loop by chance: 2e-12). */
    while (n < CLIENTS && (n < 2 || loops_used(&r, 2) < 2))
        fds[n] = acc_client(&r, s.port), n++;
    assert_int_equal(loops_used(&r, 2), 2);
    for (int i = 0; i < n; i++) {
        uint64_t id;
        char send_msg[32], call_msg[32], got[64];
        int slen, clen;

        tc_lock(&r);
        id = a.c[i].id;
        tc_unlock(&r);
        slen = snprintf(send_msg, sizeof send_msg, "send %d\n", i);
        clen = snprintf(call_msg, sizeof call_msg, "call %llu\n", (unsigned long long)id);
        assert_int_equal(ioloop_server_send(s.server, id, send_msg, (size_t)slen), 0);
        assert_int_equal(ioloop_server_call(s.server, id, call_and_write, &r), 0);
        test_read_exact(fds[i], got, (size_t)(slen + clen));
        assert_memory_equal(got, send_msg, (size_t)slen);
        assert_memory_equal(got + slen, call_msg, (size_t)clen);
        echo_check(fds[i], i);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    assert_true(tc_wait(&r, &r.closes, n));
    tc_lock(&r);
    assert_int_equal(a.call_ok, n);
    assert_int_equal(a.call_null + a.call_wrong, 0);
    tc_unlock(&r);
    for (int i = 0; i < n; i++) {
        assert_int_equal(ioloop_server_send(s.server, a.c[i].id, "x", 1), -ENOENT);
        assert_int_equal(ioloop_server_call(s.server, a.c[i].id, call_and_write, &r), -ENOENT);
    }
    assert_int_equal(tc_stats(s.server).send_dropped, 0);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* Opens clients until every loop has at least one, at most max; returns how many. The kernel
 * hashes each connection to a listener: with 4 loops, 64 clients leave one out by chance
 * once in 2e7. */
static int clients_on_every_loop(struct tc_rec *r, int port, int nloops, int *fds, int max)
{
    int n = 0;

    while (n < max && (n < nloops || loops_used(r, nloops) < nloops))
        fds[n] = acc_client(r, port), n++;
    assert_int_equal(loops_used(r, nloops), nloops);
    return n;
}

/* server_free() first: every connection of every loop gets on_close(-ECANCELED) in its own
 * loop's thread before it returns, the clients see their end, the listeners are gone; then
 * the pool is freed. Nothing is left behind. */
static void test_accept_reuseport_server_free_first(void **state)
{
    enum { CLIENTS = 64 };
    static struct tc_rec r;
    static struct acc a;
    struct acc_server s;
    int fds[CLIENTS], n, port;

    (void)state;
    acc_init(&r, &a);
    acc_open(&s, &r, 4, 1);
    n = clients_on_every_loop(&r, s.port, 4, fds, CLIENTS);
    port = s.port;
    ioloop_server_free(s.server);
    tc_lock(&r);
    assert_int_equal(r.closes, n);
    assert_int_equal(a.canceled, n);
    assert_int_equal(r.outside_loop, 0);
    tc_unlock(&r);
    for (int i = 0; i < n; i++) {
        int end = tc_read_eof(fds[i]);

        assert_true(end == 0 || end == -ECONNRESET);
        close(fds[i]);
    }
    assert_int_equal(connect_errno(port), ECONNREFUSED);
    ioloop_pool_free(s.pool);
    acc_check_clean(&r);
    assert_int_equal(test_count_fds(), s.fds);
    tc_rec_destroy(&r);
}

/* pool_free() first: it closes every connection (on_close(-ECANCELED), in the calling
 * thread, as ioloop_free() does) and stops accepting; server_free() then only frees the
 * server. Nothing is left behind (and ASan sees no use of the freed pool). */
static void test_accept_reuseport_pool_free_first(void **state)
{
    enum { CLIENTS = 64 };
    static struct tc_rec r;
    static struct acc a;
    struct acc_server s;
    int fds[CLIENTS], n;

    (void)state;
    acc_init(&r, &a);
    acc_open(&s, &r, 4, 1);
    n = clients_on_every_loop(&r, s.port, 4, fds, CLIENTS);
    ioloop_pool_free(s.pool);
    tc_lock(&r);
    assert_int_equal(r.closes, n);
    assert_int_equal(a.canceled, n);
    assert_int_equal(r.outside_owner, 0); /* the loops' threads or this one, nothing else */
    tc_unlock(&r);
    for (int i = 0; i < n; i++) {
        int end = tc_read_eof(fds[i]);

        assert_true(end == 0 || end == -ECONNRESET);
        close(fds[i]);
    }
    ioloop_server_free(s.server);
    assert_int_equal(test_count_fds(), s.fds);
    tc_rec_destroy(&r);
}

/* ---- The default mode's hand-off ---------------------------------------------------------- */

/*
 * Sequential connections (each opened before the next connects) are handed out round-robin:
 * the loops' counts differ by at most one. Each accept batch holds one connection here, so
 * this holds whether the round-robin counter advances per connection or per batch.
 */
static void test_accept_round_robin_sequential(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct acc_server s;

    (void)state;
    acc_init(&r, &a);
    acc_open(&s, &r, 2, 0);
    for (int n = 0; n < RR_CONNS; n++)
        close(acc_client(&r, s.port));
    assert_true(tc_wait(&r, &r.closes, RR_CONNS));
    tc_lock(&r);
    assert_true(abs(a.per_loop[0] - a.per_loop[1]) <= 1);
    assert_int_equal(a.per_loop[0] + a.per_loop[1], RR_CONNS);
    /* Consecutive connections alternate. */
    for (int i = 1; i < RR_CONNS; i++)
        assert_int_not_equal(a.c[i].loop, a.c[i - 1].loop);
    tc_unlock(&r);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/*
 * A burst: RR_CONNS clients queued before the server starts are accepted in one batch (the
 * acceptor takes up to 64 at a time; all are queued, so the first accept round takes them
 * all), which is split over the loops connection by connection and reaches each loop in one
 * callback — API.md §6: "one callback per target loop per batch, not one per connection",
 * a batch having several target loops — as the loops' callbacks_run counters show. The
 * counts differ by at most one because the round-robin counter advances per connection;
 * only another user of ioloop_pool_next() on the same pool (none here) would skew them. A
 * hand-off of one callback per connection, or of a whole batch to one loop, fails here.
 */
static void loop_stats_fn(void *arg)
{
    ioloop_get_stats(ioloop_current(), arg);
}

static void test_accept_batch_one_callback_per_loop(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct acc_server s;
    uint64_t before[2];
    int fds[RR_CONNS];

    (void)state;
    acc_init(&r, &a);
    acc_open_opts(&s, &r, 2, NULL, false);
    for (int i = 0; i < RR_CONNS; i++)
        fds[i] = tc_connect(s.port, 0);
    wait_queued(s.port, RR_CONNS);
    /* Each count is read in its loop: every callback before the reading one is counted
     * then, the reading one not yet. Between the two readings, the first reading callback
     * and the hand-off run. */
    for (int i = 0; i < 2; i++) {
        ioloop_stats_t st;

        tc_run_in_loop(ioloop_pool_loop(s.pool, i), loop_stats_fn, &st);
        before[i] = st.callbacks_run;
    }
    assert_int_equal(ioloop_server_start(s.server), 0);
    assert_true(tc_wait(&r, &r.opens, RR_CONNS));
    for (int i = 0; i < 2; i++) {
        ioloop_stats_t st;

        tc_run_in_loop(ioloop_pool_loop(s.pool, i), loop_stats_fn, &st);
        if (st.callbacks_run - before[i] != 1 + 1)
            fail_msg("loop %d ran %llu callbacks for the batch (%d and %d connections)", i,
                     (unsigned long long)(st.callbacks_run - before[i] - 1), a.per_loop[0],
                     a.per_loop[1]);
    }
    tc_lock(&r);
    assert_true(abs(a.per_loop[0] - a.per_loop[1]) <= 1);
    tc_unlock(&r);
    for (int i = 0; i < RR_CONNS; i++) {
        echo_check(fds[i], i);
        close(fds[i]);
    }
    assert_true(tc_wait(&r, &r.closes, RR_CONNS));
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* ---- max_conns ---------------------------------------------------------------------------- */

/*
 * max_conns = 3: further clients are accepted and closed at once — each sees its end of
 * stream (or a reset) without a byte, on_open never runs for it, stats.refused counts each
 * exactly. Several are tried, so that in reuseport mode some surely land on the loops that
 * hold fewer than three (a per-loop count would let one in). Once one of the three closed
 * (its on_close ran), a new client is served again.
 */
static void test_accept_max_conns(void **state)
{
    enum { MAX = 3, REFUSED = 6 };
    static struct tc_rec r;
    static struct acc a;
    ioloop_server_options_t o = { .max_conns = MAX, .reuseport = tc_mode(state) };
    struct acc_server s;
    int fds[MAX], extra;
    ioloop_server_stats_t st;

    acc_init(&r, &a);
    acc_open_opts(&s, &r, 2, &o, true);
    for (int i = 0; i < MAX; i++)
        fds[i] = acc_client(&r, s.port);
    for (int i = 0; i < REFUSED; i++) {
        int fd = tc_connect(s.port, 0), end;

        end = tc_read_eof(fd);
        assert_true(end == 0 || end == -ECONNRESET);
        close(fd);
        assert_true(tc_wait_refused(s.server, (uint64_t)i + 1));
    }
    tc_settle(ioloop_pool_loop(s.pool, 0));
    tc_settle(ioloop_pool_loop(s.pool, 1));
    assert_int_equal(tc_get(&r, &r.opens), MAX);
    st = tc_stats(s.server);
    assert_int_equal(st.refused, REFUSED);
    assert_int_equal(st.accepted, MAX);
    assert_int_equal(st.open, MAX);
    for (int i = 0; i < MAX; i++)
        echo_check(fds[i], i); /* the three are served all along */

    close(fds[0]);
    assert_true(tc_wait(&r, &r.closes, 1));
    extra = acc_client(&r, s.port);
    echo_check(extra, 99);
    st = tc_stats(s.server);
    assert_int_equal(st.refused, REFUSED);
    assert_int_equal(st.accepted, MAX + 1);
    assert_int_equal(st.open, MAX);
    /* Full again. */
    {
        int fd = tc_connect(s.port, 0), end = tc_read_eof(fd);

        assert_true(end == 0 || end == -ECONNRESET);
        close(fd);
        assert_true(tc_wait_refused(s.server, REFUSED + 1));
    }
    close(extra);
    for (int i = 1; i < MAX; i++)
        close(fds[i]);
    assert_true(tc_wait(&r, &r.closes, MAX + 1));
    assert_int_equal(tc_get(&r, &r.opens), MAX + 1);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* ---- Stats -------------------------------------------------------------------------------- */

/* A callback that holds its loop until the pipe has a byte. */
static void hold_loop(ioloop_t *loop, void *arg)
{
    int fd = *(int *)arg;
    char c;

    (void)loop;
    if (test_wait_fd(fd, POLLIN, TEST_WAIT_MS) != 1 || read(fd, &c, 1) != 1)
        abort();
}

static void close_call(ioloop_conn_t *conn, void *arg)
{
    (void)arg;
    if (conn == NULL)
        abort();
    ioloop_conn_close(conn);
}

static void check_stats(const ioloop_server_t *server, uint64_t accepted, uint64_t open,
                        uint64_t refused, uint64_t send_dropped)
{
    ioloop_server_stats_t st = tc_stats(server);

    assert_int_equal(st.accepted, accepted);
    assert_int_equal(st.open, open);
    assert_int_equal(st.refused, refused);
    assert_int_equal(st.send_dropped, send_dropped);
}

/* Every counter, exactly, across a scenario: opens, a refusal, bytes dropped with their
 * connection, closes from either side. */
static void test_accept_stats_exact(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    ioloop_server_options_t o = { .max_conns = 2, .reuseport = tc_mode(state) };
    struct acc_server s;
    int c1, c2, c3, c4, p[2], end;
    uint64_t id1;
    ioloop_t *loop1;

    acc_init(&r, &a);
    acc_open_opts(&s, &r, 2, &o, true);
    check_stats(s.server, 0, 0, 0, 0);
    c1 = acc_client(&r, s.port);
    check_stats(s.server, 1, 1, 0, 0);
    c2 = acc_client(&r, s.port);
    check_stats(s.server, 2, 2, 0, 0);

    c3 = tc_connect(s.port, 0); /* beyond max_conns */
    end = tc_read_eof(c3);
    assert_true(end == 0 || end == -ECONNRESET);
    close(c3);
    assert_true(tc_wait_refused(s.server, 1));
    check_stats(s.server, 2, 2, 1, 0);

    /* Seven bytes queued for c1 while its loop is held, behind a call that closes it. */
    tc_lock(&r);
    id1 = a.c[0].id;
    loop1 = ioloop_pool_loop(s.pool, a.c[0].loop);
    tc_unlock(&r);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(ioloop_add_callback(loop1, hold_loop, &p[0]), 0);
    assert_int_equal(ioloop_server_call(s.server, id1, close_call, NULL), 0);
    assert_int_equal(ioloop_server_send(s.server, id1, "dropped", 7), 0);
    assert_int_equal(write(p[1], "g", 1), 1);
    assert_int_equal(tc_read_eof(c1), 0);
    close(c1);
    assert_true(tc_wait(&r, &r.closes, 1));
    tc_settle(loop1);
    check_stats(s.server, 2, 1, 1, 7);
    close(p[0]);
    close(p[1]);

    c4 = acc_client(&r, s.port); /* room again */
    check_stats(s.server, 3, 2, 1, 7);
    echo_check(c4, 4);
    close(c2);
    assert_true(tc_wait(&r, &r.closes, 2));
    check_stats(s.server, 3, 1, 1, 7);
    close(c4);
    assert_true(tc_wait(&r, &r.closes, 3));
    check_stats(s.server, 3, 0, 1, 7);
    assert_int_equal(tc_get(&r, &r.opens), 3);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* ---- Drain -------------------------------------------------------------------------------- */

/* A helper thread that acts on clients while ioloop_server_drain() holds the test thread. */
struct clients_job {
    int fds[16];
    int n;
    unsigned delay_ms;          /* before each step */
    bool echo_first;            /* an echo round trip on each before it is closed */
    bool sent;                  /* ... whose request req[i] was sent already */
    char req[16][32];
    bool keep_open;             /* only the echo: leave the fds open */
    uint64_t step_us;           /* when the last step's close began */
    int echoed;
    int reset;                  /* echoes cut short by a reset (ECONNRESET) */
    int ended;                  /* ... by an end of stream */
    pthread_t thread;
};

static void *clients_main(void *arg)
{
    struct clients_job *j = arg;

    for (int i = 0; i < j->n; i++) {
        tc_sleep_ms(j->delay_ms);
        if (j->echo_first) {
            char *req = j->req[i], got[32];
            int len;
            size_t have = 0;

            if (!j->sent)
                snprintf(req, sizeof j->req[i], "drain %d\n", i);
            len = (int)strlen(req);
            /* Not the cmocka helpers: this is not the test's thread. */
            if (!j->sent && send(j->fds[i], req, (size_t)len, MSG_NOSIGNAL) != len)
                break;
            while (have < (size_t)len) {
                struct pollfd pfd = { .fd = j->fds[i], .events = POLLIN };
                ssize_t n;

                if (poll(&pfd, 1, TEST_WAIT_MS) != 1)
                    break;
                n = read(j->fds[i], got + have, (size_t)len - have);
                if (n < 0 && errno == ECONNRESET)
                    j->reset++;
                else if (n == 0)
                    j->ended++;
                if (n <= 0)
                    break;
                have += (size_t)n;
            }
            if (have == (size_t)len && memcmp(got, req, have) == 0)
                j->echoed++;
        }
        j->step_us = test_now_us();
        if (!j->keep_open)
            close(j->fds[i]);
    }
    return NULL;
}

static void clients_job_start(struct clients_job *j)
{
    assert_int_equal(pthread_create(&j->thread, NULL, clients_main, j), 0);
}

static void clients_job_join(struct clients_job *j)
{
    assert_int_equal(pthread_join(j->thread, NULL), 0);
}

/* (a) Clients that leave by themselves: drain returns 0 once the last one is gone — not
 * before (every on_close ran), and promptly after. */
static void test_accept_drain_returns_when_clients_leave(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct clients_job j = { .n = 3, .delay_ms = 60, .echo_first = true };
    struct acc_server s;
    uint64_t returned;
    int rc;

    acc_init(&r, &a);
    acc_open(&s, &r, 2, tc_mode(state));
    for (int i = 0; i < j.n; i++)
        j.fds[i] = acc_client(&r, s.port);
    clients_job_start(&j);
    rc = ioloop_server_drain(s.server, TEST_WAIT_MS);
    returned = test_now_us();
    clients_job_join(&j);
    assert_int_equal(rc, 0);
    assert_int_equal(j.echoed, j.n); /* served while draining */
    assert_int_equal(tc_get(&r, &r.closes), j.n);
    assert_true(returned >= j.step_us);
    if (returned - j.step_us > DRAIN_SLACK_MS * 1000ull)
        fail_msg("drain returned %llu ms after the last client left",
                 (unsigned long long)((returned - j.step_us) / 1000));
    assert_int_equal(tc_stats(s.server).open, 0);
    /* Calling it again waits again: nothing left, 0 at once. */
    assert_int_equal(ioloop_server_drain(s.server, TEST_WAIT_MS), 0);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* (b) A client that stays, and is served while drain waits: drain(200 ms) returns 1 after
 * at least 200 ms and not much more; server_free() then closes it with -ECANCELED.
 * (c) Once drain returned, the listeners are closed: connects are refused, and the server
 * cannot be started again. */
static void test_accept_drain_times_out_then_free_cancels(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct clients_job j = { .n = 1, .delay_ms = 50, .echo_first = true, .keep_open = true };
    struct acc_server s;
    uint64_t t0, elapsed_ms;
    int rc, end;

    acc_init(&r, &a);
    acc_open(&s, &r, 2, tc_mode(state));
    j.fds[0] = acc_client(&r, s.port);
    clients_job_start(&j);
    t0 = test_now_us();
    rc = ioloop_server_drain(s.server, DRAIN_TIMEOUT_MS);
    elapsed_ms = (test_now_us() - t0) / 1000;
    clients_job_join(&j);
    assert_int_equal(rc, 1);
    assert_int_equal(j.echoed, 1);
    assert_true(elapsed_ms >= DRAIN_TIMEOUT_MS);
    if (elapsed_ms > DRAIN_TIMEOUT_MS + DRAIN_SLACK_MS)
        fail_msg("drain(%d) returned after %llu ms", DRAIN_TIMEOUT_MS,
                 (unsigned long long)elapsed_ms);
    assert_int_equal(tc_get(&r, &r.closes), 0);

    for (int i = 0; i < 16; i++) /* any of the listeners would take one of 16 */
        assert_int_equal(connect_errno(s.port), ECONNREFUSED);
    assert_int_equal(ioloop_server_start(s.server), -ESHUTDOWN);
    echo_check(j.fds[0], 7); /* still served */
    assert_int_equal(tc_stats(s.server).accepted, 1);

    ioloop_server_free(s.server);
    tc_lock(&r);
    assert_int_equal(r.closes, 1);
    assert_int_equal(a.canceled, 1);
    tc_unlock(&r);
    end = tc_read_eof(j.fds[0]);
    assert_true(end == 0 || end == -ECONNRESET);
    close(j.fds[0]);
    ioloop_pool_free(s.pool);
    acc_check_clean(&r);
    assert_int_equal(test_count_fds(), s.fds);
    tc_rec_destroy(&r);
}

/* (d) Clients that completed the handshake and sent a request while nothing accepted (the
 * server not started yet) are in the listeners' queues when drain is called right after
 * start: each is accepted and served, none reset, and drain returns 0 once they left. */
static void test_accept_drain_serves_queued(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct clients_job j = { .n = 5, .echo_first = true, .sent = true };
    struct acc_server s;
    ioloop_server_options_t o = { .reuseport = tc_mode(state) };
    int rc;

    acc_init(&r, &a);
    acc_open_opts(&s, &r, 2, &o, false);
    for (int i = 0; i < j.n; i++) {
        j.fds[i] = tc_connect(s.port, 0);
        snprintf(j.req[i], sizeof j.req[i], "queued %d\n", i);
        test_write_all(j.fds[i], j.req[i], strlen(j.req[i]));
    }
    wait_queued(s.port, (unsigned)j.n);
    clients_job_start(&j); /* reads each echo, then closes */
    assert_int_equal(ioloop_server_start(s.server), 0);
    rc = ioloop_server_drain(s.server, TEST_WAIT_MS);
    clients_job_join(&j);
    if (j.echoed != j.n)
        fail_msg("%d of %d queued clients were served (%d reset, %d saw an end of stream)",
                 j.echoed, j.n, j.reset, j.ended);
    assert_int_equal(rc, 0);
    assert_int_equal(tc_get(&r, &r.opens), j.n);
    tc_lock(&r);
    assert_int_equal(a.closed_ok, j.n);
    tc_unlock(&r);
    assert_int_equal(tc_stats(s.server).accepted, (uint64_t)j.n);
    assert_int_equal(tc_stats(s.server).refused, 0);
    assert_int_equal(connect_errno(s.port), ECONNREFUSED);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/*
 * The same for a server that was never started: ioloop_server_drain() promises that "what is
 * already queued in the listeners is accepted first, so no client that connected is reset",
 * and ioloop_server_new() that "the kernel queues clients meanwhile" — so clients queued on a
 * server drained before its start are served too, not reset by the listeners' close.
 */
static void test_accept_drain_unstarted_serves_queued(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct clients_job j = { .n = 3, .echo_first = true, .sent = true };
    struct acc_server s;
    ioloop_server_options_t o = { .reuseport = tc_mode(state) };
    int rc;

    acc_init(&r, &a);
    acc_open_opts(&s, &r, 2, &o, false);
    for (int i = 0; i < j.n; i++) {
        j.fds[i] = tc_connect(s.port, 0);
        snprintf(j.req[i], sizeof j.req[i], "early %d\n", i);
        test_write_all(j.fds[i], j.req[i], strlen(j.req[i]));
    }
    wait_queued(s.port, (unsigned)j.n);
    clients_job_start(&j);
    rc = ioloop_server_drain(s.server, 2000);
    clients_job_join(&j);
    if (j.echoed != j.n)
        fail_msg("%d of %d clients queued before the drain were served (%d reset, %d saw an "
                 "end of stream, %d opened)", j.echoed, j.n, j.reset, j.ended,
                 tc_get(&r, &r.opens));
    assert_int_equal(rc, 0);
    assert_int_equal(tc_get(&r, &r.opens), j.n);
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* (e) drain from a loop of the server's pool would wait for itself: -EDEADLK, and it changes
 * nothing (the server still accepts); drain(NULL) is -EINVAL; start from a pool loop too. */
struct in_loop_drain {
    ioloop_server_t *server;
    int drain_rc, start_rc;
};

static void drain_in_loop(void *arg)
{
    struct in_loop_drain *d = arg;

    d->drain_rc = ioloop_server_drain(d->server, 100);
    d->start_rc = ioloop_server_start(d->server);
}

static void test_accept_drain_errors(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct acc_server s;
    struct in_loop_drain d;
    ioloop_server_options_t o = { .reuseport = tc_mode(state) };

    acc_init(&r, &a);
    acc_open_opts(&s, &r, 2, &o, false);
    assert_int_equal(ioloop_server_drain(NULL, 0), -EINVAL);
    d = (struct in_loop_drain){ .server = s.server };
    tc_run_in_loop(ioloop_pool_loop(s.pool, 1), drain_in_loop, &d);
    assert_int_equal(d.drain_rc, -EDEADLK);
    assert_int_equal(d.start_rc, -EDEADLK);
    assert_int_equal(ioloop_server_start(s.server), 0);
    d = (struct in_loop_drain){ .server = s.server };
    tc_run_in_loop(ioloop_pool_loop(s.pool, 0), drain_in_loop, &d);
    assert_int_equal(d.drain_rc, -EDEADLK);
    assert_true(d.start_rc == -EDEADLK || d.start_rc == -EALREADY); /* either applies */
    echo_client(s.port, 1); /* still accepting */
    assert_true(tc_wait(&r, &r.closes, 1));
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* ---- TCP_NODELAY --------------------------------------------------------------------------- */

static void nodelay_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    int on = -1;
    socklen_t len = sizeof on;

    if (getsockopt(ioloop_conn_fd(conn), IPPROTO_TCP, TCP_NODELAY, &on, &len) != 0)
        on = -2;
    tc_lock(r);
    r->rc[1] = on;
    tc_unlock(r);
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

/* Accepted connections have TCP_NODELAY on (API.md §6: set once on the listener, which the
 * accepted sockets inherit), in both modes: without it, small replies wait for Nagle. */
static void test_accept_nodelay_inherited(void **state)
{
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = nodelay_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    ioloop_server_options_t o = { .reuseport = tc_mode(state) };
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    int fds = test_count_fds(), fd;

    tc_rec_init(&r, NULL);
    r.many = true;
    pool = ioloop_pool_new(1);
    assert_non_null(pool);
    server = ioloop_server_new_opts(pool, "127.0.0.1:0", &handlers, &r, &o);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    fd = tc_connect(ioloop_server_port(server), 0);
    assert_true(tc_wait(&r, &r.opens, 1));
    assert_int_equal(tc_get(&r, &r.rc[1]), 1);
    close(fd);
    assert_true(tc_wait(&r, &r.closes, 1));
    ioloop_server_free(server);
    ioloop_pool_free(pool);
    tc_rec_destroy(&r);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- conn_peer ---------------------------------------------------------------------------- */

/* An accepted connection's peer is the client's address and port as the client's own
 * getsockname() tells them, with its length. */
static void test_accept_conn_peer_accepted(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    struct acc_server s;
    int fds[4];

    acc_init(&r, &a);
    acc_open(&s, &r, 2, tc_mode(state));
    for (int i = 0; i < 4; i++) {
        struct sockaddr_in me;
        socklen_t len = sizeof me;
        const struct sockaddr_in *peer;

        fds[i] = acc_client(&r, s.port);
        assert_int_equal(getsockname(fds[i], (struct sockaddr *)&me, &len), 0);
        tc_lock(&r);
        peer = (const struct sockaddr_in *)&a.c[i].peer;
        assert_int_equal(a.c[i].peer_rc, 0);
        assert_int_equal(a.c[i].peer_len, sizeof(struct sockaddr_in));
        assert_int_equal(peer->sin_family, AF_INET);
        assert_int_equal(peer->sin_port, me.sin_port);
        assert_int_equal(peer->sin_addr.s_addr, me.sin_addr.s_addr);
        tc_unlock(&r);
    }
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    assert_true(tc_wait(&r, &r.closes, 4));
    acc_check_clean(&r);
    acc_close(&s);
    tc_rec_destroy(&r);
}

/* In the loop: conn_peer with a short buffer, into r->val / r->rc. */
static void peer_short_fn(void *arg)
{
    struct tc_rec *r = arg;
    unsigned char buf[sizeof(struct sockaddr_storage)];
    socklen_t len = 4;

    memset(buf, 0xa5, sizeof buf);
    tc_lock(r);
    r->rc[1] = ioloop_conn_peer(r->conn, (struct sockaddr_storage *)(void *)buf, &len);
    r->val[1] = len;
    r->rc[2] = 0;
    for (size_t i = 4; i < sizeof buf; i++)
        if (buf[i] != 0xa5)
            r->rc[2]++;
    r->rc[3] = ioloop_conn_peer(NULL, (struct sockaddr_storage *)(void *)buf, &len);
    r->rc[4] = ioloop_conn_peer(r->conn, NULL, &len);
    r->rc[5] = ioloop_conn_peer(r->conn, (struct sockaddr_storage *)(void *)buf, NULL);
    tc_unlock(r);
}

/* conn_peer's errors: NULL arguments are -EINVAL, another thread while the loop runs gets
 * -EPERM and nothing written; a short length is filled as getpeername() fills it (the bytes
 * that fit, the real length back). */
static void test_accept_conn_peer_errors(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    struct sockaddr_storage ss, untouched;
    socklen_t len = sizeof ss;
    ioloop_conn_t *conn;
    int fd;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    fd = tc_server_client(&sv, &r, 0);
    tc_lock(&r);
    conn = r.conn;
    tc_unlock(&r);
    memset(&ss, 0x5a, sizeof ss);
    untouched = ss;
    assert_int_equal(ioloop_conn_peer(conn, &ss, &len), -EPERM);
    assert_memory_equal(&ss, &untouched, sizeof ss);
    assert_int_equal(len, sizeof ss);

    tc_run_in_loop(sv.loop, peer_short_fn, &r);
    tc_lock(&r);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.val[1], sizeof(struct sockaddr_in));
    assert_int_equal(r.rc[2], 0);
    assert_int_equal(r.rc[3], -EINVAL);
    assert_int_equal(r.rc[4], -EINVAL);
    assert_int_equal(r.rc[5], -EINVAL);
    tc_unlock(&r);
    close(fd);
    assert_true(tc_wait(&r, &r.closes, 1));
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* The outgoing connection's peer, read in its loop: -ENOTCONN right after ioloop_connect()
 * (the connect completes later, through the loop), the server's address in on_open. */
static void peer_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int rc = ioloop_conn_peer(conn, &ss, &len);

    tc_lock(r);
    r->rc[10] = rc;
    r->val[10] = len;
    r->val[11] = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port) : 0;
    r->val[12] = ss.ss_family == AF_INET ? ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr)
                                         : 0;
    tc_unlock(r);
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

struct connect_job {
    struct tc_rec *r;
    int port;
    ioloop_conn_t *conn;
    int early_rc;
};

static void connect_fn(void *arg)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = peer_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    struct connect_job *j = arg;
    char address[32];
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    snprintf(address, sizeof address, "127.0.0.1:%d", j->port);
    j->conn = ioloop_connect(ioloop_current(), address, &handlers, j->r);
    if (j->conn == NULL)
        abort();
    j->early_rc = ioloop_conn_peer(j->conn, &ss, &len);
}

static void close_fn(void *arg)
{
    ioloop_conn_close(arg);
}

static void test_accept_conn_peer_outgoing(void **state)
{
    static struct tc_rec r;
    struct tc_client c;
    struct connect_job j;
    int lfd, port, fd, fds;

    (void)state;
    fds = test_count_fds();
    lfd = tc_listen(&port, 0);
    tc_client_open(&c);
    tc_rec_init(&r, c.loop);
    j = (struct connect_job){ .r = &r, .port = port };
    tc_run_in_loop(c.loop, connect_fn, &j);
    assert_int_equal(j.early_rc, -ENOTCONN);
    assert_true(tc_wait(&r, &r.opens, 1));
    fd = tc_accept(lfd);
    tc_lock(&r);
    assert_int_equal(r.rc[10], 0);
    assert_int_equal(r.val[10], sizeof(struct sockaddr_in));
    assert_int_equal(r.val[11], port);
    assert_int_equal(r.val[12], INADDR_LOOPBACK);
    tc_unlock(&r);
    tc_run_in_loop(c.loop, close_fn, j.conn);
    assert_int_equal(tc_read_eof(fd), 0);
    close(fd);
    assert_true(tc_wait(&r, &r.closes, 1));
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.outside_loop, 0);
    tc_client_close(&c);
    close(lfd);
    tc_rec_destroy(&r);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- ioloop_address_format ---------------------------------------------------------------- */

/* Formats addr and checks the text, the returned length and the size boundary: a buffer of
 * exactly length + 1 works, one byte less is -ENOSPC. */
static void expect_format(const void *addr, socklen_t len, const char *want)
{
    size_t n = strlen(want);
    char *buf = malloc(n + 1);
    char big[256];

    assert_non_null(buf);
    memset(big, 'x', sizeof big);
    assert_int_equal(ioloop_address_format(addr, len, big, sizeof big), (int)n);
    assert_string_equal(big, want);
    memset(buf, 'x', n + 1);
    assert_int_equal(ioloop_address_format(addr, len, buf, n + 1), (int)n);
    assert_memory_equal(buf, want, n + 1); /* with its NUL */
    assert_int_equal(ioloop_address_format(addr, len, buf, n), -ENOSPC);
    assert_int_equal(ioloop_address_format(addr, len, buf, 0), -ENOSPC);
    free(buf);
}

static void test_accept_address_format_inet(void **state)
{
    struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(5678) };
    struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(80) };

    (void)state;
    assert_int_equal(inet_pton(AF_INET, "1.2.3.4", &in.sin_addr), 1);
    expect_format(&in, sizeof in, "1.2.3.4:5678");
    /* A larger length is fine (a sockaddr_storage's). */
    expect_format(&in, sizeof(struct sockaddr_storage), "1.2.3.4:5678");
    in.sin_addr.s_addr = htonl(0xffffffffu);
    in.sin_port = htons(65535);
    expect_format(&in, sizeof in, "255.255.255.255:65535");
    in.sin_addr.s_addr = 0;
    in.sin_port = 0;
    expect_format(&in, sizeof in, "0.0.0.0:0");

    in6.sin6_addr = in6addr_loopback;
    expect_format(&in6, sizeof in6, "[::1]:80");
    memset(&in6.sin6_addr, 0xff, sizeof in6.sin6_addr);
    in6.sin6_port = htons(65535);
    expect_format(&in6, sizeof in6, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
    assert_int_equal(inet_pton(AF_INET6, "2001:db8:1234:5678:9abc:def0:1234:5678",
                               &in6.sin6_addr), 1);
    in6.sin6_port = htons(443);
    expect_format(&in6, sizeof in6, "[2001:db8:1234:5678:9abc:def0:1234:5678]:443");
    assert_int_equal(inet_pton(AF_INET6, "::ffff:10.0.0.1", &in6.sin6_addr), 1);
    in6.sin6_port = htons(1);
    expect_format(&in6, sizeof in6, "[::ffff:10.0.0.1]:1");
}

static void test_accept_address_format_unix(void **state)
{
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    char want[sizeof un.sun_path + 16];
    socklen_t base = (socklen_t)offsetof(struct sockaddr_un, sun_path);

    (void)state;
    strcpy(un.sun_path, "/run/app.sock");
    expect_format(&un, base + (socklen_t)strlen(un.sun_path) + 1, "unix:/run/app.sock");
    /* Without the NUL in the length (Linux accepts both). */
    expect_format(&un, base + (socklen_t)strlen(un.sun_path), "unix:/run/app.sock");
    /* An unnamed socket (what a connect()ed unix client is). */
    expect_format(&un, base, "unix:");
    /* Abstract: a NUL, then the name's bytes (the length says where it ends). */
    memset(un.sun_path, 0, sizeof un.sun_path);
    memcpy(un.sun_path, "\0name", 5);
    expect_format(&un, base + 5, "unix:@name");
    /* A path that fills sun_path without a NUL. */
    memset(un.sun_path, 'p', sizeof un.sun_path);
    snprintf(want, sizeof want, "unix:%.*s", (int)sizeof un.sun_path, un.sun_path);
    expect_format(&un, sizeof un, want);
}

static void test_accept_address_format_errors(void **state)
{
    struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(1) };
    struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(1) };
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    struct sockaddr_storage other = { .ss_family = AF_PACKET };
    char buf[128];

    (void)state;
    assert_int_equal(ioloop_address_format(NULL, sizeof in, buf, sizeof buf), -EINVAL);
    assert_int_equal(ioloop_address_format((struct sockaddr *)&in, sizeof in, NULL, 64),
                     -EINVAL);
    assert_int_equal(ioloop_address_format((struct sockaddr *)&other, sizeof other, buf,
                                           sizeof buf), -EINVAL);
    other.ss_family = AF_UNSPEC;
    assert_int_equal(ioloop_address_format((struct sockaddr *)&other, sizeof other, buf,
                                           sizeof buf), -EINVAL);
    assert_int_equal(ioloop_address_format((struct sockaddr *)&in, sizeof in - 1, buf,
                                           sizeof buf), -EINVAL);
    assert_int_equal(ioloop_address_format((struct sockaddr *)&in, 0, buf, sizeof buf),
                     -EINVAL);
    assert_int_equal(ioloop_address_format((struct sockaddr *)&in6, sizeof(struct sockaddr_in),
                                           buf, sizeof buf), -EINVAL);
    assert_int_equal(ioloop_address_format((struct sockaddr *)&un, 1, buf, sizeof buf),
                     -EINVAL);
    assert_int_equal(ioloop_address_format((struct sockaddr *)&un, sizeof un + 1, buf,
                                           sizeof buf), -EINVAL);
}

static bool ipv6_loopback_available(void)
{
    struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    if (fd < 0)
        return false;
    ok = bind(fd, (struct sockaddr *)&sin6, sizeof sin6) == 0;
    close(fd);
    return ok;
}

/* A blocking client of the server at `address` ("127.0.0.1:0", "[::1]:0" or "unix:..."),
 * and the text its own address formats to, built without the library. */
static int client_of(const char *address, int port, char *me, size_t size)
{
    struct sockaddr_storage ss = { 0 };
    socklen_t len;
    char host[INET6_ADDRSTRLEN];
    int fd;

    if (strncmp(address, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;

        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, address + 5);
        len = sizeof *un;
        snprintf(me, size, "unix:");
    } else if (address[0] == '[') {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

        in6->sin6_family = AF_INET6;
        in6->sin6_addr = in6addr_loopback;
        in6->sin6_port = htons((uint16_t)port);
        len = sizeof *in6;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;

        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        in->sin_port = htons((uint16_t)port);
        len = sizeof *in;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&ss, len), 0);
    if (ss.ss_family == AF_UNIX)
        return fd;
    len = sizeof ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;

        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(me, size, "[%s]:%u", host, (unsigned)ntohs(in6->sin6_port));
    } else {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;

        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(me, size, "%s:%u", host, (unsigned)ntohs(in->sin_port));
    }
    return fd;
}

/* What a real accepted connection's peer formats to, for each family: the client's own
 * address (TCP over IPv4 and IPv6), and "unix:" for a unix client (unnamed). */
static void test_accept_address_format_of_peers(void **state)
{
    static struct tc_rec r;
    static struct acc a;
    char unix_address[64];
    const char *addresses[] = { "127.0.0.1:0", "[::1]:0", unix_address };

    (void)state;
    snprintf(unix_address, sizeof unix_address, "unix:/tmp/ioloop-accept-%d.sock",
             (int)getpid());
    for (size_t i = 0; i < sizeof addresses / sizeof addresses[0]; i++) {
        struct acc_server s;
        char me[128], text[128];
        int fd;

        if (addresses[i][0] == '[' && !ipv6_loopback_available())
            continue;
        acc_init(&r, &a);
        acc_open_at(&s, &r, 1, addresses[i], NULL, true);
        fd = client_of(addresses[i], s.port, me, sizeof me);
        assert_true(tc_wait(&r, &r.opens, 1));
        tc_lock(&r);
        assert_int_equal(a.c[0].peer_rc, 0);
        assert_int_equal(ioloop_address_format((struct sockaddr *)&a.c[0].peer, a.c[0].peer_len,
                                               text, sizeof text),
                         (int)strlen(me));
        tc_unlock(&r);
        assert_string_equal(text, me);
        echo_check(fd, (int)i);
        close(fd);
        assert_true(tc_wait(&r, &r.closes, 1));
        acc_check_clean(&r);
        acc_close(&s);
        tc_rec_destroy(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_options_null_is_default),
        cmocka_unit_test(test_accept_options_invalid),
        TC_BOTH_MODES(test_accept_backlog_honoured),
        cmocka_unit_test(test_accept_reuseport_one_port_no_acceptor),
        cmocka_unit_test(test_accept_reuseport_spreads_over_loops),
        cmocka_unit_test(test_accept_reuseport_send_and_call),
        cmocka_unit_test(test_accept_reuseport_server_free_first),
        cmocka_unit_test(test_accept_reuseport_pool_free_first),
        cmocka_unit_test(test_accept_round_robin_sequential),
        cmocka_unit_test(test_accept_batch_one_callback_per_loop),
        TC_BOTH_MODES(test_accept_max_conns),
        TC_BOTH_MODES(test_accept_stats_exact),
        TC_BOTH_MODES(test_accept_drain_returns_when_clients_leave),
        TC_BOTH_MODES(test_accept_drain_times_out_then_free_cancels),
        TC_BOTH_MODES(test_accept_drain_serves_queued),
        TC_BOTH_MODES(test_accept_drain_unstarted_serves_queued),
        TC_BOTH_MODES(test_accept_drain_errors),
        TC_BOTH_MODES(test_accept_nodelay_inherited),
        TC_BOTH_MODES(test_accept_conn_peer_accepted),
        cmocka_unit_test(test_accept_conn_peer_errors),
        cmocka_unit_test(test_accept_conn_peer_outgoing),
        cmocka_unit_test(test_accept_address_format_inet),
        cmocka_unit_test(test_accept_address_format_unix),
        cmocka_unit_test(test_accept_address_format_errors),
        cmocka_unit_test(test_accept_address_format_of_peers),
    };

    tc_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
