/*
 * Unit tests of buffered connections (include/ioloop/server.h): partial consumption in
 * on_data, big writes flushed before a graceful close, on_drain, -EPIPE after close, a peer
 * reset while output is pending, a peer half-close, idle timeouts, pause and resume, outgoing
 * connects (success, refusal, a missing unix path, writes made before on_open), on_close never
 * nested inside another callback of the same connection, thousands of connect/close cycles,
 * unique ids, NULL accessors and loop-thread checks.
 *
 * The connection under test is made with ioloop_connect() on a loop run by a thread of its
 * own; its peer is a plain socket the test thread accepts and drives (reads, writes, resets),
 * or, for the echo, cycle and id tests, an ioloop server on a pool. The test thread waits with
 * poll() timeouts and condition variables, never with sleeps. State the callbacks record is
 * kept under a mutex. Each test checks that the fd count is restored.
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
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "helpers.h"

/* The library's epoll_ctl() calls land in __wrap_epoll_ctl (test/meson.build links this
 * test with --wrap), which counts the EPOLL_CTL_DELs and passes every call on. */
int __real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);
int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);

static atomic_int epoll_dels;

int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    if (op == EPOLL_CTL_DEL)
        atomic_fetch_add(&epoll_dels, 1);
    return __real_epoll_ctl(epfd, op, fd, event);
}

/* How long a test waits for something that should happen promptly before it fails. */
#define WAIT_MS 10000
/* The peer's receive buffer where a test needs output to stay pending (it also turns off
 * receive-buffer autotuning, which would otherwise let the kernel swallow megabytes). */
#define SMALL_RCVBUF (64 * 1024)
/* The big write flushed before a graceful close. */
#define BIG_WRITE (8u * 1024 * 1024)
/* The write that must wait for on_drain. */
#define DRAIN_WRITE (4u * 1024 * 1024)
/* The write pending when the peer resets. */
#define RESET_WRITE (8u * 1024 * 1024)
/* What the half-closing peer sends and expects back. */
#define HALF_CLOSE_BYTES (1024u * 1024)
/* A bound on what the peer of a paused connection may write before its sends block. */
#define PAUSE_CAP (64u * 1024 * 1024)
/* Connect/close cycles, and how many run at a time. */
#define CYCLES 2000
#define CYCLES_PARALLEL 4
/* Connections open at once in the id test. */
#define ID_CONNS 64
/* Presentations recorded by the partial-consumption test. */
#define MAX_SHOWN 16

/* ---- Small helpers ---------------------------------------------------------------------- */

/* A byte stream that does not repeat with any short period. */
static unsigned char pattern_byte(size_t i)
{
    return (unsigned char)((i ^ (i >> 8) ^ (i >> 16)) * 31u + 7u);
}

static char *pattern_new(size_t len)
{
    char *p = malloc(len);

    assert_non_null(p);
    for (size_t i = 0; i < len; i++)
        p[i] = (char)pattern_byte(i);
    return p;
}

/* Whether buf holds the pattern's bytes [offset, offset + len). */
static bool pattern_matches(const char *buf, size_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] != pattern_byte(offset + i))
            return false;
    return true;
}

static void set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    assert_true(flags >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, flags | O_NONBLOCK), 0);
}

/* A plain TCP socket bound to 127.0.0.1 on an ephemeral port (not listening). */
static int bind_loopback(int *port)
{
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* The peer's side: accepts one connection (blocking socket), within WAIT_MS. */
static int accept_peer(int lfd)
{
    int fd;

    assert_int_equal(test_wait_fd(lfd, POLLIN, WAIT_MS), 1);
    fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

/* Expects end of stream next: read returns 0 (or the connection was reset). */
static void expect_eof(int fd)
{
    char c;
    ssize_t n;

    assert_int_equal(test_wait_fd(fd, POLLIN, WAIT_MS), 1);
    n = read(fd, &c, 1);
    assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
}

/*
 * Drives a non-blocking peer socket: sends out[0..out_len), then shuts its writing side down
 * if shut_wr, while reading into in (up to in_cap bytes) until in_want bytes came and, if
 * want_eof, the stream ended. Returns the bytes received.
 */
static size_t peer_exchange(int fd, const char *out, size_t out_len, bool shut_wr, char *in,
                            size_t in_cap, size_t in_want, bool want_eof)
{
    uint64_t deadline = test_now_us() + WAIT_MS * 1000ull;
    size_t sent = 0, got = 0;
    bool shut = !shut_wr, eof = false;

    set_nonblocking(fd);
    while (sent < out_len || !shut || got < in_want || (want_eof && !eof)) {
        struct pollfd pfd = { .fd = fd, .events = 0 };

        assert_true(test_now_us() < deadline);
        if (sent == out_len && !shut) {
            assert_int_equal(shutdown(fd, SHUT_WR), 0);
            shut = true;
            continue;
        }
        if (sent < out_len)
            pfd.events |= POLLOUT;
        if (!eof)
            pfd.events |= POLLIN;
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        if (pfd.revents & POLLOUT) {
            ssize_t n = send(fd, out + sent, out_len - sent, MSG_NOSIGNAL);

            if (n > 0)
                sent += (size_t)n;
            else
                assert_true(n < 0 && (errno == EAGAIN || errno == EINTR));
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            char scratch[1];
            char *dst = got < in_cap ? in + got : scratch;
            size_t room = got < in_cap ? in_cap - got : sizeof scratch;
            ssize_t n = read(fd, dst, room);

            if (n > 0) {
                got += (size_t)n;
                assert_true(got <= in_cap);
            } else if (n == 0) {
                eof = true;
                assert_true(want_eof);
            } else {
                assert_true(errno == EAGAIN || errno == EINTR);
            }
        }
    }
    return got;
}

/* ---- Waiting for what the callbacks record ---------------------------------------------- */

/* Everything a test's connection callbacks record; guarded by lock. */
struct rec {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ioloop_t *loop;             /* the loop the connection must live in */
    ioloop_conn_t *connected;   /* what ioloop_connect() returned */
    ioloop_conn_t *conn;        /* what the callbacks were given */
    int opens, datas, drains, closes;
    int close_err;
    int depth;                  /* > 0 while one of this conn's callbacks runs */
    int nested;                 /* callbacks that ran inside another one (must stay 0) */
    int wrong_thread;           /* callbacks that ran outside the loop's thread */
    int wrong_conn;             /* callbacks given another conn pointer */
    int data_before_open;
    uint64_t open_us, close_us, last_data_us, idle_set_us;
    size_t pending_after_write; /* ioloop_conn_pending() right after the test's big write */
    size_t pending_at_drain;
    int rc[8];                  /* return codes a test's callbacks report */
    char *in;                   /* every byte on_data consumed, in order */
    size_t in_len, in_cap;
    size_t shown[MAX_SHOWN];    /* the len of every on_data call (partial consumption) */
    char *shown_data[MAX_SHOWN];
    int nshown;
    const char *big;            /* what the big-write tests write */
    size_t big_len;
};

static struct rec *rec_init(struct rec *r, ioloop_t *loop)
{
    pthread_condattr_t attr;

    memset(r, 0, sizeof *r);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, &attr);
    pthread_condattr_destroy(&attr);
    r->loop = loop;
    return r;
}

static void rec_destroy(struct rec *r)
{
    for (int i = 0; i < r->nshown; i++)
        free(r->shown_data[i]);
    free(r->in);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
}

/*
 * Waits until *field >= target (read under the lock) with no callback of the connection in
 * progress, so that the callback's bookkeeping is complete, or WAIT_MS; returns whether it did.
 */
static bool rec_wait_int(struct rec *r, const int *field, int target)
{
    struct timespec deadline;
    bool ok;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&r->lock);
    while (*field < target || r->depth > 0)
        if (pthread_cond_timedwait(&r->cond, &r->lock, &deadline) == ETIMEDOUT)
            break;
    ok = *field >= target && r->depth == 0;
    pthread_mutex_unlock(&r->lock);
    return ok;
}

static bool rec_wait_size(struct rec *r, const size_t *field, size_t target)
{
    struct timespec deadline;
    bool ok;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&r->lock);
    while (*field < target || r->depth > 0)
        if (pthread_cond_timedwait(&r->cond, &r->lock, &deadline) == ETIMEDOUT)
            break;
    ok = *field >= target && r->depth == 0;
    pthread_mutex_unlock(&r->lock);
    return ok;
}

static int rec_get(struct rec *r, const int *field)
{
    int v;

    pthread_mutex_lock(&r->lock);
    v = *field;
    pthread_mutex_unlock(&r->lock);
    return v;
}

/*
 * Every callback starts with enter() and ends with leave(): they keep the depth counter that
 * shows a callback running inside another one, check the thread and the conn pointer, and
 * hold the lock around the callback's bookkeeping.
 */
static struct rec *enter(ioloop_conn_t *conn)
{
    struct rec *r = ioloop_conn_user(conn);

    pthread_mutex_lock(&r->lock);
    if (r->depth > 0)
        r->nested++;
    r->depth++;
    if (ioloop_current() != r->loop || ioloop_conn_loop(conn) != r->loop)
        r->wrong_thread++;
    if (r->conn != NULL && r->conn != conn)
        r->wrong_conn++;
    r->conn = conn;
    pthread_mutex_unlock(&r->lock);
    return r;
}

static void leave(struct rec *r)
{
    pthread_mutex_lock(&r->lock);
    r->depth--;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* on_open's record: the open, the results of the two calls it made, and leaving. */
static void rec_opened(struct rec *r, int rc1, int rc2)
{
    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->rc[0] = rc1;
    r->rc[1] = rc2;
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static void append_in(struct rec *r, const char *data, size_t len)
{
    if (len == 0)
        return;
    pthread_mutex_lock(&r->lock);
    if (r->in_len + len > r->in_cap) {
        size_t cap = r->in_cap ? r->in_cap : 4096;

        while (cap < r->in_len + len)
            cap *= 2;
        r->in = realloc(r->in, cap);
        if (r->in == NULL)
            abort();
        r->in_cap = cap;
    }
    memcpy(r->in + r->in_len, data, len);
    r->in_len += len;
    r->last_data_us = test_now_us();
    pthread_mutex_unlock(&r->lock);
}

/* The plain callbacks: count, keep every byte (consuming all), count the close. */
static void rec_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);

    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->open_us = test_now_us();
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static size_t rec_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct rec *r = enter(conn);

    pthread_mutex_lock(&r->lock);
    r->datas++;
    if (r->opens == 0)
        r->data_before_open++;
    pthread_mutex_unlock(&r->lock);
    append_in(r, data, len);
    leave(r);
    return len;
}

static void rec_on_drain(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);

    pthread_mutex_lock(&r->lock);
    r->drains++;
    r->pending_at_drain = ioloop_conn_pending(conn);
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static void rec_on_close(ioloop_conn_t *conn, int err)
{
    struct rec *r = enter(conn);

    pthread_mutex_lock(&r->lock);
    r->closes++;
    r->close_err = err;
    r->close_us = test_now_us();
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

/* Checks the bookkeeping every test shares: one close, nothing nested or misplaced. */
static void rec_check_clean(struct rec *r)
{
    pthread_mutex_lock(&r->lock);
    assert_int_equal(r->closes, 1);
    assert_int_equal(r->nested, 0);
    assert_int_equal(r->wrong_thread, 0);
    assert_int_equal(r->wrong_conn, 0);
    assert_int_equal(r->data_before_open, 0);
    assert_int_equal(r->depth, 0);
    if (r->connected != NULL)
        assert_ptr_equal(r->conn, r->connected);
    pthread_mutex_unlock(&r->lock);
}

/* ---- The environment: a client loop in a thread and a plain listening peer --------------- */

struct env {
    int fds;                    /* the fd count at the start */
    ioloop_t *loop;
    test_loop_thread_t thread;
    int lfd;                    /* the peer's listening socket */
    char address[64];           /* "127.0.0.1:port" of lfd */
};

/* rcvbuf > 0 sets the receive buffer of the sockets lfd accepts. */
static void env_open(struct env *e, int rcvbuf)
{
    int port;

    e->fds = test_count_fds();
    e->loop = ioloop_new();
    assert_non_null(e->loop);
    test_loop_thread_start(&e->thread, e->loop);
    e->lfd = bind_loopback(&port);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(e->lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    assert_int_equal(listen(e->lfd, 64), 0);
    snprintf(e->address, sizeof e->address, "127.0.0.1:%d", port);
}

static void env_close(struct env *e)
{
    ioloop_stop(e->loop);
    assert_int_equal(test_loop_thread_join(&e->thread), 0);
    ioloop_free(e->loop);
    close(e->lfd);
    assert_int_equal(test_count_fds(), e->fds);
}

/* Runs fn(arg) in the loop's thread and waits for it to return. */
struct in_loop {
    void (*fn)(void *arg);
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void in_loop_cb(ioloop_t *loop, void *arg)
{
    struct in_loop *c = arg;

    c->fn(c->arg);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void run_in_loop(ioloop_t *loop, void (*fn)(void *arg), void *arg)
{
    struct in_loop c = { .fn = fn, .arg = arg, .done = false };
    pthread_condattr_t attr;
    struct timespec deadline;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, &attr);
    pthread_condattr_destroy(&attr);
    assert_int_equal(ioloop_add_callback(loop, in_loop_cb, &c), 0);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&c.lock);
    while (!c.done)
        if (pthread_cond_timedwait(&c.cond, &c.lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&c.lock);
    if (!c.done)
        fail_msg("the loop did not run a posted callback within %d ms", WAIT_MS);
    pthread_cond_destroy(&c.cond);
    pthread_mutex_destroy(&c.lock);
}

/* Connecting from the loop's thread. */
struct connect_req {
    struct rec *r;
    const char *address;
    const ioloop_conn_handlers_t *handlers;
    const char *early;          /* written right after ioloop_connect() if not NULL */
    int early_rc;
    size_t early_pending;
    int err;                    /* errno when ioloop_connect() returned NULL */
};

static void do_connect(void *arg)
{
    struct connect_req *req = arg;
    ioloop_conn_t *conn = ioloop_connect(req->r->loop, req->address, req->handlers, req->r);

    req->err = conn == NULL ? errno : 0;
    pthread_mutex_lock(&req->r->lock);
    req->r->connected = conn;
    pthread_mutex_unlock(&req->r->lock);
    if (conn != NULL && req->early != NULL) {
        req->early_rc = ioloop_conn_write(conn, req->early, strlen(req->early));
        req->early_pending = ioloop_conn_pending(conn);
    }
}

/* Connects r's connection to address with handlers; returns it (NULL fails the test). */
static ioloop_conn_t *rec_connect(struct rec *r, const char *address,
                                  const ioloop_conn_handlers_t *handlers)
{
    struct connect_req req = { .r = r, .address = address, .handlers = handlers };

    run_in_loop(r->loop, do_connect, &req);
    assert_int_equal(req.err, 0);
    assert_non_null(r->connected);
    return r->connected;
}

static void close_conn_cb(void *arg)
{
    struct rec *r = arg;

    ioloop_conn_close(r->conn);
}

static const ioloop_conn_handlers_t rec_handlers = {
    .on_open = rec_on_open,
    .on_data = rec_on_data,
    .on_drain = rec_on_drain,
    .on_close = rec_on_close,
};

/* ---- Partial consumption ---------------------------------------------------------------- */

/* Consumes at most one 10-byte record per call and keeps a copy of what it was shown. */
static size_t record_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct rec *r = enter(conn);
    size_t used = len >= 10 ? 10 : 0;

    pthread_mutex_lock(&r->lock);
    r->datas++;
    if (r->nshown < MAX_SHOWN) {
        r->shown[r->nshown] = len;
        r->shown_data[r->nshown] = malloc(len);
        if (r->shown_data[r->nshown] == NULL)
            abort();
        memcpy(r->shown_data[r->nshown], data, len);
        r->nshown++;
    }
    pthread_mutex_unlock(&r->lock);
    append_in(r, data, used);
    leave(r);
    return used;
}

static void test_conn_partial_consumption(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = rec_on_open, .on_data = record_on_data, .on_close = rec_on_close,
    };
    /* Each piece is sent once the previous one was presented. */
    static const size_t pieces[] = { 7, 5, 13, 20, 1, 9, 30 };
    /* What on_data is shown each time: the unconsumed rest, then the new piece. */
    static const size_t want_shown[] = { 7, 12, 15, 25, 16, 15, 35 };
    const size_t npieces = sizeof pieces / sizeof pieces[0];
    size_t total = 0, consumed = 0;
    char *stream;
    int peer;

    (void)state;
    for (size_t i = 0; i < npieces; i++)
        total += pieces[i];
    stream = pattern_new(total);
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));

    for (size_t i = 0, off = 0; i < npieces; off += pieces[i], i++) {
        test_write_all(peer, stream + off, pieces[i]);
        assert_true(rec_wait_int(&r, &r.datas, (int)i + 1));
    }
    /* The peer's EOF with nothing pending is an orderly close. */
    close(peer);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);

    /* Exactly one call per piece, each showing the rest and then the new bytes. */
    assert_int_equal(r.datas, npieces);
    assert_int_equal(r.nshown, npieces);
    for (size_t i = 0; i < npieces; i++) {
        assert_int_equal(r.shown[i], want_shown[i]);
        assert_true(pattern_matches(r.shown_data[i], consumed, r.shown[i]));
        consumed += r.shown[i] >= 10 ? 10 : 0;
    }
    /* The consumed records are the stream's first bytes, in order. */
    assert_int_equal(r.in_len, consumed);
    assert_true(pattern_matches(r.in, 0, r.in_len));

    rec_destroy(&r);
    free(stream);
    env_close(&e);
}

/* Claims more than it was given: that counts as everything. */
static size_t greedy_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct rec *r = enter(conn);

    pthread_mutex_lock(&r->lock);
    r->datas++;
    pthread_mutex_unlock(&r->lock);
    append_in(r, data, len);
    leave(r);
    return len + 1000;
}

static void test_conn_consume_more_than_len(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = rec_on_open, .on_data = greedy_on_data, .on_close = rec_on_close,
    };
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    test_write_all(peer, "abc", 3);
    assert_true(rec_wait_int(&r, &r.datas, 1));
    test_write_all(peer, "de", 2);
    assert_true(rec_wait_int(&r, &r.datas, 2));
    close(peer);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    /* Each call saw only new bytes: "abc", then "de". */
    assert_int_equal(r.datas, 2);
    assert_int_equal(r.in_len, 5);
    assert_memory_equal(r.in, "abcde", 5);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- Big writes, on_drain, -EPIPE after close ------------------------------------------- */

/* Reads len bytes of the pattern from a blocking fd and checks every one: 1 KiB at a time for
 * the first 64 KiB (a slow reader), then in big chunks. */
static void read_pattern(int fd, size_t len)
{
    static char buf[256 * 1024];
    size_t off = 0;

    while (off < len) {
        size_t want = off < 64 * 1024 ? 1024 : sizeof buf;

        if (want > len - off)
            want = len - off;
        test_read_exact(fd, buf, want);
        if (!pattern_matches(buf, off, want))
            fail_msg("byte mismatch in the %zu bytes at offset %zu", want, off);
        off += want;
    }
}

/* Writes the big buffer, notes what stayed pending, closes, and tries every call after. */
static void big_write_close_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc = ioloop_conn_write(conn, r->big, r->big_len);
    size_t pending = ioloop_conn_pending(conn);

    ioloop_conn_close(conn);
    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->rc[0] = rc;
    r->pending_after_write = pending;
    r->rc[1] = ioloop_conn_write(conn, "x", 1);
    r->rc[2] = ioloop_conn_write(conn, r->big, r->big_len);
    r->rc[3] = ioloop_conn_pause(conn);
    r->rc[4] = ioloop_conn_resume(conn);
    r->rc[5] = ioloop_conn_set_idle_timeout(conn, 10);
    pthread_mutex_unlock(&r->lock);
    ioloop_conn_close(conn); /* idempotent */
    leave(r);
}

static void test_conn_big_write_then_close(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = big_write_close_on_open, .on_data = rec_on_data, .on_close = rec_on_close,
    };
    int peer;

    (void)state;
    env_open(&e, SMALL_RCVBUF);
    rec_init(&r, e.loop);
    r.big = pattern_new(BIG_WRITE);
    r.big_len = BIG_WRITE;
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));

    pthread_mutex_lock(&r.lock);
    assert_int_equal(r.rc[0], 0);
    /* The peer has not read anything: most of it waits in the output buffer. */
    assert_true(r.pending_after_write > 0);
    assert_true(r.pending_after_write <= BIG_WRITE);
    /* After conn_close: writes are refused and nothing else is accepted either. */
    assert_int_equal(r.rc[1], -EPIPE);
    assert_int_equal(r.rc[2], -EPIPE);
    assert_int_equal(r.rc[3], -EPIPE);
    assert_int_equal(r.rc[4], -EPIPE);
    assert_int_equal(r.rc[5], -EPIPE);
    /* The close waits for the output: it cannot have finished yet. */
    assert_int_equal(r.closes, 0);
    pthread_mutex_unlock(&r.lock);

    /* Every byte, in order, then the end of the stream. */
    read_pattern(peer, BIG_WRITE);
    expect_eof(peer);
    close(peer); /* our EOF ends the other side's linger at once */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.datas, 0);

    free((char *)r.big);
    rec_destroy(&r);
    env_close(&e);
}

static void small_write_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc = ioloop_conn_write(conn, "hi", 2);

    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->rc[0] = rc;
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static void big_write_cb(void *arg)
{
    struct rec *r = arg;
    int rc = ioloop_conn_write(r->conn, r->big, r->big_len);
    size_t pending = ioloop_conn_pending(r->conn);

    pthread_mutex_lock(&r->lock);
    r->rc[1] = rc;
    r->pending_after_write = pending;
    pthread_mutex_unlock(&r->lock);
}

static void nothing_cb(void *arg)
{
}

static void test_conn_drain_after_pending_write(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = small_write_on_open, .on_data = rec_on_data, .on_drain = rec_on_drain,
        .on_close = rec_on_close,
    };
    char hi[2];
    int peer;

    (void)state;
    env_open(&e, SMALL_RCVBUF);
    rec_init(&r, e.loop);
    r.big = pattern_new(DRAIN_WRITE);
    r.big_len = DRAIN_WRITE;
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));

    /* A write the kernel takes at once: no on_drain. */
    test_read_exact(peer, hi, 2);
    assert_memory_equal(hi, "hi", 2);
    run_in_loop(e.loop, nothing_cb, NULL);
    assert_int_equal(rec_get(&r, &r.rc[0]), 0);
    assert_int_equal(rec_get(&r, &r.drains), 0);

    /* A write that has to wait: pending until the peer reads, then on_drain with 0 pending. */
    run_in_loop(e.loop, big_write_cb, &r);
    pthread_mutex_lock(&r.lock);
    assert_int_equal(r.rc[1], 0);
    assert_true(r.pending_after_write > 0);
    assert_int_equal(r.drains, 0);
    pthread_mutex_unlock(&r.lock);
    read_pattern(peer, DRAIN_WRITE);
    assert_true(rec_wait_int(&r, &r.drains, 1));
    run_in_loop(e.loop, nothing_cb, NULL);
    assert_int_equal(rec_get(&r, &r.drains), 1);
    assert_int_equal(r.pending_at_drain, 0);

    run_in_loop(e.loop, close_conn_cb, &r);
    expect_eof(peer);
    close(peer); /* our EOF ends the other side's linger at once */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);

    free((char *)r.big);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- Peer reset, peer half-close -------------------------------------------------------- */

static void big_write_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc = ioloop_conn_write(conn, r->big, r->big_len);
    size_t pending = ioloop_conn_pending(conn);

    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->rc[0] = rc;
    r->pending_after_write = pending;
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static void test_conn_peer_reset_while_pending(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = big_write_on_open, .on_data = rec_on_data, .on_drain = rec_on_drain,
        .on_close = rec_on_close,
    };
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    int peer;

    (void)state;
    env_open(&e, SMALL_RCVBUF);
    rec_init(&r, e.loop);
    r.big = pattern_new(RESET_WRITE);
    r.big_len = RESET_WRITE;
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));
    assert_int_equal(rec_get(&r, &r.rc[0]), 0);
    pthread_mutex_lock(&r.lock);
    assert_true(r.pending_after_write > 0);
    pthread_mutex_unlock(&r.lock);

    /* Close with SO_LINGER {1, 0}: a reset, with megabytes still pending on our side. */
    assert_int_equal(setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(peer);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    if (r.close_err != -ECONNRESET && r.close_err != -EPIPE)
        fail_msg("on_close err %d (%s), want -ECONNRESET or -EPIPE", r.close_err,
                 strerror(-r.close_err));
    assert_int_equal(r.drains, 0);

    free((char *)r.big);
    rec_destroy(&r);
    env_close(&e);
}

/* Echoes what it gets and keeps a copy. */
static size_t echo_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct rec *r = enter(conn);
    int rc = ioloop_conn_write(conn, data, len);

    pthread_mutex_lock(&r->lock);
    r->datas++;
    if (r->opens == 0)
        r->data_before_open++;
    if (rc < 0)
        r->rc[7] = rc;
    pthread_mutex_unlock(&r->lock);
    append_in(r, data, len);
    leave(r);
    return len;
}

static const ioloop_conn_handlers_t echo_handlers = {
    .on_open = rec_on_open,
    .on_data = echo_on_data,
    .on_drain = rec_on_drain,
    .on_close = rec_on_close,
};

static void test_conn_peer_half_close(void **state)
{
    static struct env e;
    static struct rec r;
    char *out = pattern_new(HALF_CLOSE_BYTES);
    char *back = malloc(HALF_CLOSE_BYTES);
    int peer;

    (void)state;
    assert_non_null(back);
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &echo_handlers);
    peer = accept_peer(e.lfd);

    /* Send everything, then SHUT_WR; read the echo until the end of the stream. */
    assert_int_equal(peer_exchange(peer, out, HALF_CLOSE_BYTES, true, back, HALF_CLOSE_BYTES,
                                   HALF_CLOSE_BYTES, true),
                     HALF_CLOSE_BYTES);
    assert_memory_equal(back, out, HALF_CLOSE_BYTES);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.rc[7], 0);
    assert_int_equal(r.in_len, HALF_CLOSE_BYTES);
    assert_memory_equal(r.in, out, HALF_CLOSE_BYTES);

    close(peer);
    free(back);
    free(out);
    rec_destroy(&r);
    env_close(&e);
}

/*
 * A connection that ends closes its fd at once, and makes no EPOLL_CTL_DEL for it: closing
 * the only reference drops the registration (one syscall per connection less, and no later
 * call on a number another thread may have reused). The echo still works and the close is
 * orderly.
 */
static void test_conn_close_makes_no_epoll_del(void **state)
{
    static struct env e;
    static struct rec r;
    char buf[5];
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &echo_handlers);
    peer = accept_peer(e.lfd);
    test_write_all(peer, "hello", 5);
    test_read_exact(peer, buf, 5);
    assert_memory_equal(buf, "hello", 5);
    atomic_store(&epoll_dels, 0);
    assert_int_equal(shutdown(peer, SHUT_WR), 0);
    expect_eof(peer); /* our EOF made the connection close: its fd is closed */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(atomic_load(&epoll_dels), 0);
    close(peer);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- Idle timeouts ---------------------------------------------------------------------- */

/* on_open sets the idle timeout in r->rc[6] ms, noting the time just before the call. */
static void idle_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    uint64_t now = test_now_us();
    int rc = ioloop_conn_set_idle_timeout(conn, (uint64_t)r->rc[6]);

    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->idle_set_us = now;
    r->rc[0] = rc;
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static const ioloop_conn_handlers_t idle_handlers = {
    .on_open = idle_on_open,
    .on_data = rec_on_data,
    .on_close = rec_on_close,
};

static void test_conn_idle_timeout_silent_peer(void **state)
{
    static struct env e;
    static struct rec r;
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    r.rc[6] = 50;
    rec_connect(&r, e.address, &idle_handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.close_err, -ETIMEDOUT);
    if (r.close_us < r.idle_set_us + 50000)
        fail_msg("idle timeout after %llu us, before 50 ms",
                 (unsigned long long)(r.close_us - r.idle_set_us));
    expect_eof(peer);
    close(peer);
    rec_destroy(&r);
    env_close(&e);
}

static void test_conn_idle_timeout_kept_alive(void **state)
{
    static struct env e;
    static struct rec r;
    uint64_t last_send = 0, start;
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    r.rc[6] = 100;
    rec_connect(&r, e.address, &idle_handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));
    assert_int_equal(rec_get(&r, &r.rc[0]), 0);

    /* A byte every 20 ms for 300 ms: the 100 ms timeout never fires meanwhile. The pause
     * between bytes is a poll on the peer, which would see our side closing. */
    start = test_now_us();
    for (int i = 0; i < 15; i++) {
        last_send = test_now_us();
        test_write_all(peer, "k", 1);
        assert_int_equal(test_wait_fd(peer, POLLIN, 20), 0);
    }
    assert_true(test_now_us() - start >= 300000);
    assert_int_equal(rec_get(&r, &r.closes), 0);

    /* Then silence: it fires, 100 ms after the last byte at the earliest (a 2 ms allowance for
     * the loop's clock being read once per iteration). */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, -ETIMEDOUT);
    assert_int_equal(r.in_len, 15);
    if (r.close_us + 2000 < last_send + 100000)
        fail_msg("idle timeout %llu us after the last byte",
                 (unsigned long long)(r.close_us - last_send));
    expect_eof(peer);
    close(peer);
    rec_destroy(&r);
    env_close(&e);
}

/* Sets a 30 ms idle timeout and turns it off again. */
static void idle_off_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc1 = ioloop_conn_set_idle_timeout(conn, 30);
    int rc2 = ioloop_conn_set_idle_timeout(conn, 0);

    rec_opened(r, rc1, rc2);
}

static void test_conn_idle_timeout_zero_disables(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = idle_off_on_open, .on_data = rec_on_data, .on_close = rec_on_close,
    };
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));
    assert_int_equal(rec_get(&r, &r.rc[0]), 0);
    assert_int_equal(rec_get(&r, &r.rc[1]), 0);

    /* 150 ms of silence: the peer sees no close, and on_close has not run. */
    assert_int_equal(test_wait_fd(peer, POLLIN, 150), 0);
    assert_int_equal(rec_get(&r, &r.closes), 0);

    run_in_loop(e.loop, close_conn_cb, &r);
    expect_eof(peer);
    close(peer); /* our EOF ends the other side's linger at once */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- Pause and resume ------------------------------------------------------------------- */

static void pause_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc1 = ioloop_conn_pause(conn);
    int rc2 = ioloop_conn_pause(conn); /* already paused: still 0 */

    rec_opened(r, rc1, rc2);
}

static void resume_cb(void *arg)
{
    struct rec *r = arg;
    int rc = ioloop_conn_resume(r->conn);

    pthread_mutex_lock(&r->lock);
    r->rc[2] = rc;
    pthread_mutex_unlock(&r->lock);
}

static void test_conn_pause_resume(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = pause_on_open, .on_data = rec_on_data, .on_close = rec_on_close,
    };
    static char chunk[64 * 1024];
    size_t sent = 0;
    bool blocked = false;
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));
    assert_int_equal(rec_get(&r, &r.rc[0]), 0);
    assert_int_equal(rec_get(&r, &r.rc[1]), 0);

    /* The peer writes until its sends block: nobody reads, the window fills. It counts as
     * blocked once the socket stays unwritable for 200 ms. */
    set_nonblocking(peer);
    while (!blocked && sent < PAUSE_CAP) {
        ssize_t n;

        for (size_t i = 0; i < sizeof chunk; i++)
            chunk[i] = (char)pattern_byte(sent + i);
        n = send(peer, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (n > 0)
            sent += (size_t)n;
        else if (n < 0 && errno == EAGAIN)
            blocked = test_wait_fd(peer, POLLOUT, 200) == 0;
        else
            assert_true(n < 0 && errno == EINTR);
    }
    if (!blocked)
        fail_msg("the peer sent %zu bytes to a paused connection without blocking", sent);
    pthread_mutex_lock(&r.lock);
    assert_int_equal(r.datas, 0);
    assert_int_equal(r.in_len, 0);
    pthread_mutex_unlock(&r.lock);

    /* Resumed: every byte arrives, in order; then the peer's EOF closes it. */
    run_in_loop(e.loop, resume_cb, &r);
    assert_int_equal(rec_get(&r, &r.rc[2]), 0);
    assert_int_equal(shutdown(peer, SHUT_WR), 0);
    assert_true(rec_wait_size(&r, &r.in_len, sent));
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.in_len, sent);
    assert_true(pattern_matches(r.in, 0, sent));
    expect_eof(peer);
    close(peer);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- Connecting ------------------------------------------------------------------------- */

/* A server that echoes, for the tests that need a real ioloop server on the other side. */
struct server_side {
    pthread_mutex_t lock;
    uint64_t *ids;              /* ids of the server's connections, from on_open */
    size_t nids, cap;
    int wrong_thread;
};

static void server_on_open(ioloop_conn_t *conn)
{
    struct server_side *s = ioloop_conn_user(conn);

    pthread_mutex_lock(&s->lock);
    if (ioloop_current() != ioloop_conn_loop(conn))
        s->wrong_thread++;
    if (s->nids < s->cap)
        s->ids[s->nids++] = ioloop_conn_id(conn);
    pthread_mutex_unlock(&s->lock);
}

static size_t server_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    if (ioloop_conn_write(conn, data, len) < 0)
        ioloop_conn_close(conn);
    return len;
}

static const ioloop_conn_handlers_t server_handlers = {
    .on_open = server_on_open,
    .on_data = server_on_data,
};

/* Starts an echo server on 127.0.0.1:0 over pool; writes its address. */
static ioloop_server_t *echo_server_new(ioloop_pool_t *pool, struct server_side *s, size_t cap,
                                        char *address, size_t size)
{
    ioloop_server_t *server;

    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->ids = calloc(cap, sizeof s->ids[0]);
    assert_non_null(s->ids);
    s->cap = cap;
    server = ioloop_server_new(pool, "127.0.0.1:0", &server_handlers, s);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    snprintf(address, size, "127.0.0.1:%d", ioloop_server_port(server));
    return server;
}

static void server_side_destroy(struct server_side *s)
{
    free(s->ids);
    pthread_mutex_destroy(&s->lock);
}

/* on_open: checks the accessors, writes the big buffer. on_data: keeps the echo and closes
 * once all of it came back. */
static int data_marker;

static void echo_client_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int bad = 0, rc;

    if (ioloop_conn_user(conn) != r || ioloop_conn_loop(conn) != r->loop)
        bad++;
    if (ioloop_conn_fd(conn) < 0 || ioloop_conn_id(conn) == 0)
        bad++;
    if (ioloop_conn_data(conn) != NULL)
        bad++;
    ioloop_conn_set_data(conn, &data_marker);
    if (ioloop_conn_data(conn) != &data_marker)
        bad++;
    rc = ioloop_conn_write(conn, r->big, r->big_len);
    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->rc[0] = rc;
    r->rc[1] = bad;
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static size_t echo_client_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct rec *r = ioloop_conn_user(conn);
    size_t got;

    rec_on_data(conn, data, len);
    pthread_mutex_lock(&r->lock);
    got = r->in_len;
    pthread_mutex_unlock(&r->lock);
    if (got >= r->big_len)
        ioloop_conn_close(conn);
    return len;
}

static void test_conn_connect_echo(void **state)
{
    static struct env e;
    static struct rec r;
    static struct server_side s;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = echo_client_on_open, .on_data = echo_client_on_data,
        .on_close = rec_on_close,
    };
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    char address[64];

    (void)state;
    env_open(&e, 0);
    pool = ioloop_pool_new(1);
    assert_non_null(pool);
    server = echo_server_new(pool, &s, 4, address, sizeof address);
    rec_init(&r, e.loop);
    r.big = pattern_new(64 * 1024);
    r.big_len = 64 * 1024;
    rec_connect(&r, address, &handlers);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.opens, 1);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.in_len, r.big_len);
    assert_memory_equal(r.in, r.big, r.big_len);

    ioloop_server_free(server);
    ioloop_pool_free(pool);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.nids, 1);
    assert_int_equal(s.wrong_thread, 0);
    pthread_mutex_unlock(&s.lock);
    server_side_destroy(&s);
    free((char *)r.big);
    rec_destroy(&r);
    env_close(&e);
}

static void test_conn_connect_refused(void **state)
{
    static struct env e;
    static struct rec r;
    char address[64];
    int port, fd;

    (void)state;
    env_open(&e, 0);
    /* Bound and not listening: the port is ours and nobody accepts on it. */
    fd = bind_loopback(&port);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    rec_init(&r, e.loop);
    rec_connect(&r, address, &rec_handlers);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, -ECONNREFUSED);
    assert_int_equal(r.opens, 0);
    assert_int_equal(r.datas, 0);
    assert_int_equal(r.drains, 0);
    close(fd);
    rec_destroy(&r);
    env_close(&e);
}

static void test_conn_connect_unix_missing(void **state)
{
    static struct env e;
    static struct rec r;
    char dir[] = "/tmp/ioloop-conn-XXXXXX";
    char address[96];

    (void)state;
    env_open(&e, 0);
    assert_non_null(mkdtemp(dir));
    snprintf(address, sizeof address, "unix:%s/missing", dir);
    rec_init(&r, e.loop);
    rec_connect(&r, address, &rec_handlers);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_true(r.close_err < 0);
    assert_int_equal(r.opens, 0);
    assert_int_equal(rmdir(dir), 0);
    rec_destroy(&r);
    env_close(&e);
}

static void late_write_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc = ioloop_conn_write(conn, "late", 4);

    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->rc[0] = rc;
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static void test_conn_write_before_open(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = late_write_on_open, .on_data = rec_on_data, .on_close = rec_on_close,
    };
    struct connect_req req = { .r = &r, .handlers = &handlers, .early = "early-" };
    char buf[10];
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    req.address = e.address;
    run_in_loop(e.loop, do_connect, &req);
    assert_non_null(r.connected);
    /* Written before on_open: accepted and buffered. */
    assert_int_equal(req.early_rc, 0);
    assert_int_equal(req.early_pending, 6);

    peer = accept_peer(e.lfd);
    test_read_exact(peer, buf, sizeof buf);
    assert_memory_equal(buf, "early-late", sizeof buf);
    assert_true(rec_wait_int(&r, &r.opens, 1));
    assert_int_equal(rec_get(&r, &r.rc[0]), 0);
    close(peer);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    rec_destroy(&r);
    env_close(&e);
}

static void connect_write_close(void *arg)
{
    struct connect_req *req = arg;

    do_connect(req);
    if (req->r->connected != NULL)
        ioloop_conn_close(req->r->connected);
}

static void test_conn_close_before_open(void **state)
{
    static struct env e;
    static struct rec r;
    struct connect_req req = { .r = &r, .handlers = &rec_handlers, .early = "bye" };
    char buf[3];
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    req.address = e.address;
    run_in_loop(e.loop, connect_write_close, &req);
    assert_non_null(r.connected);
    assert_int_equal(req.early_rc, 0);

    /* Closed while connecting: it still connects, flushes, then closes. */
    peer = accept_peer(e.lfd);
    test_read_exact(peer, buf, sizeof buf);
    assert_memory_equal(buf, "bye", 3);
    expect_eof(peer);
    close(peer); /* our EOF ends the other side's linger at once */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- on_close is never nested ----------------------------------------------------------- */

/* Closes from inside on_data, then tries to write. */
static size_t close_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct rec *r = enter(conn);
    int rc;

    ioloop_conn_close(conn);
    rc = ioloop_conn_write(conn, "x", 1);
    ioloop_conn_close(conn); /* idempotent */
    pthread_mutex_lock(&r->lock);
    r->datas++;
    r->rc[0] = rc;
    r->rc[2] = r->closes; /* on_close must not have run yet */
    pthread_mutex_unlock(&r->lock);
    append_in(r, data, len);
    leave(r);
    return len;
}

/* on_close that still uses its conn: the pointer is valid until it returns. */
static void using_on_close(ioloop_conn_t *conn, int err)
{
    struct rec *r = enter(conn);
    int rc = ioloop_conn_write(conn, "y", 1);
    int bad = ioloop_conn_id(conn) == 0 || ioloop_conn_loop(conn) != r->loop;

    ioloop_conn_close(conn);
    pthread_mutex_lock(&r->lock);
    r->closes++;
    r->close_err = err;
    r->rc[1] = rc;
    r->rc[3] = bad;
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static void test_conn_close_in_on_data_not_nested(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = rec_on_open, .on_data = close_on_data, .on_close = using_on_close,
    };
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    test_write_all(peer, "abc", 3);
    /* The peer gets a plain end of stream: no "x", no "y". */
    expect_eof(peer);
    close(peer); /* our EOF ends the other side's linger at once */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.datas, 1);
    assert_int_equal(r.in_len, 3);
    assert_int_equal(r.rc[0], -EPIPE);
    assert_int_equal(r.rc[1], -EPIPE);
    assert_int_equal(r.rc[2], 0);
    assert_int_equal(r.rc[3], 0);
    rec_destroy(&r);
    env_close(&e);
}

/* Makes its own socket refuse writes, then writes from on_open. Writes are gathered (API.md
 * §5), so they are taken; the flush after on_open meets the error, and on_close reports it
 * after on_open returned. */
static void failing_write_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc1, rc2, rc3;

    shutdown(ioloop_conn_fd(conn), SHUT_WR);
    rc1 = ioloop_conn_write(conn, "x", 1);
    rc2 = ioloop_conn_write(conn, "y", 1);
    rc3 = ioloop_conn_pause(conn);
    ioloop_conn_close(conn);
    pthread_mutex_lock(&r->lock);
    r->opens++;
    r->rc[0] = rc1;
    r->rc[1] = rc2;
    r->rc[2] = rc3;
    r->rc[3] = r->closes; /* on_close must not have run yet */
    pthread_mutex_unlock(&r->lock);
    leave(r);
}

static void test_conn_failing_write_not_nested(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = failing_write_on_open, .on_data = rec_on_data, .on_close = rec_on_close,
    };
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.opens, 1);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.rc[2], 0);
    assert_int_equal(r.rc[3], 0);
    assert_int_equal(r.close_err, -EPIPE);
    expect_eof(peer);
    close(peer);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- Many connections: cycles and ids --------------------------------------------------- */

/* Connections made from the client loop, CYCLES_PARALLEL at a time until `total` closed. */
struct cycles {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ioloop_t *loop;
    const char *address;
    int total;
    int started, done, failed, bad_echo, opens, echoed;
    bool close_on_echo;         /* else they stay open until the test closes them */
    uint64_t *ids;              /* the client connections' ids, from on_open */
    ioloop_conn_t **conns;      /* the open connections (id test) */
    size_t nids;
};

static const char ping[] = "ping!";

static void cycle_start(struct cycles *c);

static void cycle_on_open(ioloop_conn_t *conn)
{
    struct cycles *c = ioloop_conn_user(conn);

    pthread_mutex_lock(&c->lock);
    c->conns[c->nids] = conn;
    c->ids[c->nids++] = ioloop_conn_id(conn);
    c->opens++;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    if (ioloop_conn_write(conn, ping, sizeof ping - 1) < 0)
        ioloop_conn_close(conn);
}

static size_t cycle_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct cycles *c = ioloop_conn_user(conn);
    uintptr_t got = (uintptr_t)ioloop_conn_data(conn);

    if (got + len > sizeof ping - 1 || memcmp(data, ping + got, len) != 0) {
        pthread_mutex_lock(&c->lock);
        c->bad_echo++;
        pthread_mutex_unlock(&c->lock);
        ioloop_conn_close(conn);
        return len;
    }
    got += len;
    ioloop_conn_set_data(conn, (void *)got);
    if (got == sizeof ping - 1) {
        pthread_mutex_lock(&c->lock);
        c->echoed++;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
        if (c->close_on_echo)
            ioloop_conn_close(conn);
    }
    return len;
}

static void cycle_on_close(ioloop_conn_t *conn, int err)
{
    struct cycles *c = ioloop_conn_user(conn);
    bool more;

    pthread_mutex_lock(&c->lock);
    if (err != 0 || (uintptr_t)ioloop_conn_data(conn) != sizeof ping - 1)
        c->failed++;
    c->done++;
    more = c->close_on_echo && c->started < c->total;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    if (more)
        cycle_start(c);
}

static const ioloop_conn_handlers_t cycle_handlers = {
    .on_open = cycle_on_open,
    .on_data = cycle_on_data,
    .on_close = cycle_on_close,
};

/* Loop thread: starts the next connection. */
static void cycle_start(struct cycles *c)
{
    ioloop_conn_t *conn;

    pthread_mutex_lock(&c->lock);
    c->started++;
    pthread_mutex_unlock(&c->lock);
    conn = ioloop_connect(c->loop, c->address, &cycle_handlers, c);
    if (conn == NULL) {
        pthread_mutex_lock(&c->lock);
        c->failed++;
        c->done++;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
    }
}

static void cycles_begin(void *arg)
{
    struct cycles *c = arg;
    int n = c->close_on_echo ? CYCLES_PARALLEL : c->total;

    for (int i = 0; i < n; i++)
        cycle_start(c);
}

static void cycles_close_all(void *arg)
{
    struct cycles *c = arg;

    for (size_t i = 0; i < c->nids; i++)
        ioloop_conn_close(c->conns[i]);
}

static void cycles_init(struct cycles *c, ioloop_t *loop, const char *address, int total,
                        bool close_on_echo)
{
    pthread_condattr_t attr;

    memset(c, 0, sizeof *c);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, &attr);
    pthread_condattr_destroy(&attr);
    c->loop = loop;
    c->address = address;
    c->total = total;
    c->close_on_echo = close_on_echo;
    c->ids = calloc((size_t)total, sizeof c->ids[0]);
    c->conns = calloc((size_t)total, sizeof c->conns[0]);
    assert_non_null(c->ids);
    assert_non_null(c->conns);
}

static void cycles_destroy(struct cycles *c)
{
    free(c->ids);
    free(c->conns);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
}

/* Waits until *field >= target, or timeout_s; returns whether it did. */
static bool cycles_wait(struct cycles *c, const int *field, int target, int timeout_s)
{
    struct timespec deadline;
    bool ok;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_s;
    pthread_mutex_lock(&c->lock);
    while (*field < target)
        if (pthread_cond_timedwait(&c->cond, &c->lock, &deadline) == ETIMEDOUT)
            break;
    ok = *field >= target;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

static int compare_ids(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Checks that n ids are all non-zero and distinct. */
static void check_ids_unique(uint64_t *ids, size_t n)
{
    qsort(ids, n, sizeof ids[0], compare_ids);
    for (size_t i = 0; i < n; i++) {
        assert_true(ids[i] != 0);
        if (i > 0 && ids[i] == ids[i - 1])
            fail_msg("id %llu given to two connections", (unsigned long long)ids[i]);
    }
}

static void test_conn_connect_close_cycles(void **state)
{
    static struct env e;
    static struct cycles c;
    static struct server_side s;
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    char address[64];
    uint64_t *all;

    (void)state;
    env_open(&e, 0);
    pool = ioloop_pool_new(1);
    assert_non_null(pool);
    server = echo_server_new(pool, &s, CYCLES, address, sizeof address);
    cycles_init(&c, e.loop, address, CYCLES, true);
    run_in_loop(e.loop, cycles_begin, &c);
    if (!cycles_wait(&c, &c.done, CYCLES, 60))
        fail_msg("%d of %d connect/close cycles done", c.done, CYCLES);
    pthread_mutex_lock(&c.lock);
    assert_int_equal(c.failed, 0);
    assert_int_equal(c.bad_echo, 0);
    assert_int_equal(c.started, CYCLES);
    assert_int_equal(c.nids, CYCLES);
    assert_int_equal(c.echoed, CYCLES);
    pthread_mutex_unlock(&c.lock);

    ioloop_server_free(server);
    ioloop_pool_free(pool);
    assert_int_equal(s.nids, CYCLES);
    assert_int_equal(s.wrong_thread, 0);

    /* Client and server ids together: never 0, never repeated. */
    all = malloc(2 * CYCLES * sizeof all[0]);
    assert_non_null(all);
    memcpy(all, c.ids, CYCLES * sizeof all[0]);
    memcpy(all + CYCLES, s.ids, CYCLES * sizeof all[0]);
    check_ids_unique(all, 2 * CYCLES);
    free(all);

    server_side_destroy(&s);
    cycles_destroy(&c);
    env_close(&e);
}

static void test_conn_ids_unique_nonzero(void **state)
{
    static struct env e;
    static struct cycles c;
    static struct server_side s;
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    char address[64];
    uint64_t all[2 * ID_CONNS];

    (void)state;
    env_open(&e, 0);
    pool = ioloop_pool_new(2);
    assert_non_null(pool);
    server = echo_server_new(pool, &s, ID_CONNS, address, sizeof address);
    cycles_init(&c, e.loop, address, ID_CONNS, false);
    run_in_loop(e.loop, cycles_begin, &c);
    /* Every echo came back, so both sides of every connection opened. */
    assert_true(cycles_wait(&c, &c.echoed, ID_CONNS, WAIT_MS / 1000));

    /* All open at once: both sides' ids are distinct and non-zero. */
    pthread_mutex_lock(&c.lock);
    assert_int_equal(c.opens, ID_CONNS);
    assert_int_equal(c.done, 0);
    memcpy(all, c.ids, sizeof c.ids[0] * ID_CONNS);
    pthread_mutex_unlock(&c.lock);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.nids, ID_CONNS);
    memcpy(all + ID_CONNS, s.ids, sizeof s.ids[0] * ID_CONNS);
    pthread_mutex_unlock(&s.lock);
    check_ids_unique(all, 2 * ID_CONNS);

    run_in_loop(e.loop, cycles_close_all, &c);
    assert_true(cycles_wait(&c, &c.done, ID_CONNS, WAIT_MS / 1000));
    pthread_mutex_lock(&c.lock);
    assert_int_equal(c.failed, 0);
    assert_int_equal(c.bad_echo, 0);
    pthread_mutex_unlock(&c.lock);

    ioloop_server_free(server);
    ioloop_pool_free(pool);
    server_side_destroy(&s);
    cycles_destroy(&c);
    env_close(&e);
}

/* ---- Accessors and thread checks -------------------------------------------------------- */

static void test_conn_null_arguments(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    ioloop_conn_handlers_t no_data = { .on_open = rec_on_open };

    (void)state;
    assert_int_equal(ioloop_conn_id(NULL), 0);
    assert_int_equal(ioloop_conn_fd(NULL), -EINVAL);
    assert_null(ioloop_conn_loop(NULL));
    assert_null(ioloop_conn_user(NULL));
    assert_null(ioloop_conn_data(NULL));
    assert_int_equal(ioloop_conn_pending(NULL), 0);
    ioloop_conn_set_data(NULL, &data_marker);
    assert_null(ioloop_conn_data(NULL));
    assert_int_equal(ioloop_conn_write(NULL, "x", 1), -EINVAL);
    assert_int_equal(ioloop_conn_pause(NULL), -EINVAL);
    assert_int_equal(ioloop_conn_resume(NULL), -EINVAL);
    assert_int_equal(ioloop_conn_set_idle_timeout(NULL, 10), -EINVAL);
    ioloop_conn_close(NULL);

    assert_non_null(loop);
    errno = 0;
    assert_null(ioloop_connect(NULL, "127.0.0.1:1", &rec_handlers, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_connect(loop, "127.0.0.1:1", NULL, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_connect(loop, "127.0.0.1:1", &no_data, NULL));
    assert_int_equal(errno, EINVAL);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* A write with NULL data and a length is -EINVAL; with length 0 it is nothing. */
static void null_write_on_open(ioloop_conn_t *conn)
{
    struct rec *r = enter(conn);
    int rc1 = ioloop_conn_write(conn, NULL, 1);
    int rc2 = ioloop_conn_write(conn, NULL, 0);

    rec_opened(r, rc1, rc2);
}

static void test_conn_write_null_data(void **state)
{
    static struct env e;
    static struct rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = null_write_on_open, .on_data = rec_on_data, .on_close = rec_on_close,
    };
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_connect(&r, e.address, &handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));
    assert_int_equal(rec_get(&r, &r.rc[0]), -EINVAL);
    assert_int_equal(rec_get(&r, &r.rc[1]), 0);
    run_in_loop(e.loop, close_conn_cb, &r);
    expect_eof(peer);
    close(peer); /* our EOF ends the other side's linger at once */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    rec_destroy(&r);
    env_close(&e);
}

static void test_conn_wrong_thread_eperm(void **state)
{
    static struct env e;
    static struct rec r, other;
    ioloop_conn_t *conn;
    char buf[4];
    int peer;

    (void)state;
    env_open(&e, 0);
    rec_init(&r, e.loop);
    rec_init(&other, e.loop);
    rec_connect(&r, e.address, &echo_handlers);
    peer = accept_peer(e.lfd);
    assert_true(rec_wait_int(&r, &r.opens, 1));
    pthread_mutex_lock(&r.lock);
    conn = r.conn;
    pthread_mutex_unlock(&r.lock);

    /* From the test thread while the loop runs: refused, and nothing changes. */
    assert_int_equal(ioloop_conn_write(conn, "BAD", 3), -EPERM);
    assert_int_equal(ioloop_conn_pause(conn), -EPERM);
    assert_int_equal(ioloop_conn_resume(conn), -EPERM);
    assert_int_equal(ioloop_conn_set_idle_timeout(conn, 1), -EPERM);
    ioloop_conn_close(conn);
    errno = 0;
    assert_null(ioloop_connect(e.loop, e.address, &rec_handlers, &other));
    assert_int_equal(errno, EPERM);

    /* Still open, reading (not paused) and without an idle timeout: an echo comes back. */
    test_write_all(peer, "ping", 4);
    test_read_exact(peer, buf, 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(rec_get(&r, &r.closes), 0);
    /* The refused connect made no connection. */
    assert_int_equal(test_wait_fd(e.lfd, POLLIN, 0), 0);

    /* "BAD" was never sent: after the echo comes the end of the stream. */
    run_in_loop(e.loop, close_conn_cb, &r);
    expect_eof(peer);
    close(peer); /* our EOF ends the other side's linger at once */
    assert_true(rec_wait_int(&r, &r.closes, 1));
    rec_check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(other.opens + other.closes, 0);
    rec_destroy(&other);
    rec_destroy(&r);
    env_close(&e);
}

/* ---- PITFALLS: SIGPIPE and the size of a read ------------------------------------------- */

/*
 * The library's read() and readv() calls land in __wrap_read and __wrap_readv too
 * (test/meson.build links this test with --wrap): for the fd in probe_fd they note how many
 * bytes each call asked for, and pass every call on.
 */
ssize_t __real_read(int fd, void *buf, size_t count);
ssize_t __wrap_read(int fd, void *buf, size_t count);
ssize_t __real_readv(int fd, const struct iovec *iov, int iovcnt);
ssize_t __wrap_readv(int fd, const struct iovec *iov, int iovcnt);

static atomic_int probe_fd = -1;
static atomic_size_t probe_calls, probe_min_asked;

static void probe_note(int fd, size_t asked)
{
    size_t min;

    if (fd < 0 || fd != atomic_load(&probe_fd))
        return;
    atomic_fetch_add(&probe_calls, 1);
    min = atomic_load(&probe_min_asked);
    while (asked < min && !atomic_compare_exchange_weak(&probe_min_asked, &min, asked))
        ;
}

ssize_t __wrap_read(int fd, void *buf, size_t count)
{
    probe_note(fd, count);
    return __real_read(fd, buf, count);
}

ssize_t __wrap_readv(int fd, const struct iovec *iov, int iovcnt)
{
    size_t asked = 0;

    for (int i = 0; i < iovcnt; i++)
        asked += iov[i].iov_len;
    probe_note(fd, asked);
    return __real_readv(fd, iov, iovcnt);
}

static void probe_reset(int fd)
{
    atomic_store(&probe_calls, 0);
    atomic_store(&probe_min_asked, SIZE_MAX);
    atomic_store(&probe_fd, fd);
}

/* A non-blocking unix listener in a fresh directory; the address for ioloop_connect(). */
struct unix_peer {
    char dir[40];
    char path[64];
    char address[80];
    int listener;
};

static void unix_peer_open(struct unix_peer *u)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };

    strcpy(u->dir, "/tmp/ioloop-conn-XXXXXX");
    assert_non_null(mkdtemp(u->dir));
    snprintf(u->path, sizeof u->path, "%s/peer.sock", u->dir);
    snprintf(u->address, sizeof u->address, "unix:%s", u->path);
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", u->path);
    u->listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(u->listener >= 0);
    assert_int_equal(bind(u->listener, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(u->listener, 4), 0);
}

static void unix_peer_close(struct unix_peer *u)
{
    assert_int_equal(close(u->listener), 0);
    assert_int_equal(unlink(u->path), 0);
    assert_int_equal(rmdir(u->dir), 0);
}

/* Ends a loop whose connection never closed, so that a failure does not hang the binary. */
static void guard_stop(ioloop_t *loop, void *arg)
{
    *(int *)arg = 1;
    ioloop_stop(loop);
}

/* -- SIGPIPE: the library's sends must not raise it (MSG_NOSIGNAL), libuv joyent#1244 -- */

struct sigpipe_ctx {
    struct unix_peer u;
    int peer;
    bool use_writev;
    int rc_write;
    int closes, close_err;
};

/* Takes the peer's end, which refuses all input from now on, and writes to it: the send that
 * follows fails with EPIPE, and raises SIGPIPE unless the library asked it not to. */
static void sigpipe_on_open(ioloop_conn_t *conn)
{
    struct sigpipe_ctx *c = ioloop_conn_user(conn);
    static char half[IOLOOP_CONN_WRITE_DIRECT];
    struct iovec iov[2] = { { half, sizeof half }, { half, sizeof half } };

    c->peer = accept4(c->u.listener, NULL, NULL, SOCK_CLOEXEC);
    if (c->peer < 0 || shutdown(c->peer, SHUT_RD) != 0) {
        c->rc_write = -1000;
        ioloop_conn_close(conn);
        return;
    }
    /* A small write is gathered and flushed after on_open (send); a large one goes to the
     * kernel at once (sendmsg). */
    c->rc_write = c->use_writev ? ioloop_conn_writev(conn, iov, 2)
                                : ioloop_conn_write(conn, "ping", 4);
}

static size_t sigpipe_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    (void)conn;
    (void)data;
    return len;
}

static void sigpipe_on_close(ioloop_conn_t *conn, int err)
{
    struct sigpipe_ctx *c = ioloop_conn_user(conn);

    c->closes++;
    c->close_err = err;
    ioloop_stop(ioloop_conn_loop(conn));
}

static void test_conn_send_to_gone_peer_no_sigpipe(void **state)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = sigpipe_on_open, .on_data = sigpipe_on_data, .on_close = sigpipe_on_close,
    };
    int fds = test_count_fds();
    struct sigaction dfl = { .sa_handler = SIG_DFL }, saved;
    sigset_t pipe_set, saved_mask;

    (void)state;
    /* SIGPIPE at its default disposition, and deliverable in this thread (the loop's): a
     * SIGPIPE raised by a send kills the test binary. */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    assert_int_equal(sigaction(SIGPIPE, &dfl, &saved), 0);
    assert_int_equal(pthread_sigmask(SIG_UNBLOCK, &pipe_set, &saved_mask), 0);

    for (int round = 0; round < 2; round++) {
        ioloop_t *loop = ioloop_new();
        struct sigpipe_ctx c = { .peer = -1, .use_writev = round == 1, .rc_write = 1 };
        int guard = 0;
        int64_t guard_id;

        assert_non_null(loop);
        unix_peer_open(&c.u);
        assert_non_null(ioloop_connect(loop, c.u.address, &handlers, &c));
        guard_id = ioloop_run_after(loop, WAIT_MS, guard_stop, &guard);
        assert_true(guard_id > 0);
        assert_int_equal(ioloop_start(loop), 0);
        /* Still alive; the write was taken, its send failed with EPIPE and closed the
         * connection. */
        assert_int_equal(guard, 0);
        if (c.rc_write != 0 && !(c.use_writev && c.rc_write == -EPIPE))
            fail_msg("round %d: the write returned %d", round, c.rc_write);
        assert_int_equal(c.closes, 1);
        assert_int_equal(c.close_err, -EPIPE);
        assert_int_equal(ioloop_cancel_timer(loop, guard_id), 0);
        ioloop_free(loop);
        assert_int_equal(close(c.peer), 0);
        unix_peer_close(&c.u);
    }
    assert_int_equal(pthread_sigmask(SIG_SETMASK, &saved_mask, NULL), 0);
    assert_int_equal(sigaction(SIGPIPE, &saved, NULL), 0);
    assert_int_equal(test_count_fds(), fds);
}

/* -- Reads of at least 64 KiB (muduo's Buffer::readFd, not libevent's 4096 a call) -- */

#define READ_TOTAL (2u * 1024 * 1024)
#define READ_AT_LEAST (64u * 1024)

struct readsize_ctx {
    struct unix_peer u;
    ioloop_t *loop;
    int peer;
    char *out;
    size_t sent, received;
    size_t keep;            /* on_data leaves this many bytes unconsumed each time */
    int bad;
    int closes, close_err;
};

/* The peer's end, driven by the same loop: writes the whole stream, then its EOF. */
static void readsize_peer_writable(ioloop_t *loop, int fd, int events, void *arg)
{
    struct readsize_ctx *c = arg;

    (void)events;
    while (c->sent < READ_TOTAL) {
        ssize_t n = write(fd, c->out + c->sent, READ_TOTAL - c->sent);

        if (n < 0) {
            if (errno != EAGAIN)
                c->bad++;
            if (errno == EAGAIN)
                return;
            break;
        }
        c->sent += (size_t)n;
    }
    ioloop_remove_handler(loop, fd);
    if (shutdown(fd, SHUT_WR) != 0)
        c->bad++;
}

static void readsize_on_open(ioloop_conn_t *conn)
{
    struct readsize_ctx *c = ioloop_conn_user(conn);

    probe_reset(ioloop_conn_fd(conn));
    c->peer = accept4(c->u.listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c->peer < 0 ||
        ioloop_add_handler(c->loop, c->peer, IOLOOP_WRITE, readsize_peer_writable, c) != 0) {
        c->bad++;
        ioloop_conn_close(conn);
    }
}

static size_t readsize_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct readsize_ctx *c = ioloop_conn_user(conn);
    size_t take = len > c->keep ? len - c->keep : 0;

    if (c->received + len > READ_TOTAL || !pattern_matches(data, c->received, len))
        c->bad++;
    if (c->received + len == READ_TOTAL)
        take = len; /* the end of the stream: all of it */
    c->received += take;
    return take;
}

static void readsize_on_close(ioloop_conn_t *conn, int err)
{
    struct readsize_ctx *c = ioloop_conn_user(conn);

    atomic_store(&probe_fd, -1);
    c->closes++;
    c->close_err = err;
    ioloop_stop(ioloop_conn_loop(conn));
}

static void test_conn_reads_at_least_64k(void **state)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = readsize_on_open, .on_data = readsize_on_data,
        .on_close = readsize_on_close,
    };
    int fds = test_count_fds();
    char *out = pattern_new(READ_TOTAL);

    (void)state;
    /* Consuming everything (reads into a stack buffer), then keeping a little each time (reads
     * into the input buffer's free space plus the extra buffer, one readv). */
    for (int round = 0; round < 2; round++) {
        struct readsize_ctx c = { .peer = -1, .out = out, .keep = round == 0 ? 0 : 100 };
        int guard = 0;
        int64_t guard_id;

        c.loop = ioloop_new();
        assert_non_null(c.loop);
        unix_peer_open(&c.u);
        assert_non_null(ioloop_connect(c.loop, c.u.address, &handlers, &c));
        guard_id = ioloop_run_after(c.loop, WAIT_MS, guard_stop, &guard);
        assert_true(guard_id > 0);
        assert_int_equal(ioloop_start(c.loop), 0);
        assert_int_equal(guard, 0);
        assert_int_equal(c.bad, 0);
        assert_int_equal(c.sent, READ_TOTAL);
        assert_int_equal(c.received, READ_TOTAL);
        assert_int_equal(c.closes, 1);
        assert_int_equal(c.close_err, 0);
        printf("%s: %zu reads for %u bytes, the smallest asking for %zu bytes\n",
               round == 0 ? "consuming all" : "keeping 100 bytes", atomic_load(&probe_calls),
               READ_TOTAL, atomic_load(&probe_min_asked));
        assert_true(atomic_load(&probe_calls) > 0);
        if (atomic_load(&probe_min_asked) < READ_AT_LEAST)
            fail_msg("a read of the connection asked for %zu bytes, want at least %u",
                     atomic_load(&probe_min_asked), READ_AT_LEAST);
        assert_int_equal(ioloop_cancel_timer(c.loop, guard_id), 0);
        ioloop_free(c.loop);
        assert_int_equal(close(c.peer), 0);
        unix_peer_close(&c.u);
    }
    free(out);
    assert_int_equal(test_count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conn_partial_consumption),
        cmocka_unit_test(test_conn_consume_more_than_len),
        cmocka_unit_test(test_conn_big_write_then_close),
        cmocka_unit_test(test_conn_drain_after_pending_write),
        cmocka_unit_test(test_conn_peer_reset_while_pending),
        cmocka_unit_test(test_conn_peer_half_close),
        cmocka_unit_test(test_conn_close_makes_no_epoll_del),
        cmocka_unit_test(test_conn_idle_timeout_silent_peer),
        cmocka_unit_test(test_conn_idle_timeout_kept_alive),
        cmocka_unit_test(test_conn_idle_timeout_zero_disables),
        cmocka_unit_test(test_conn_pause_resume),
        cmocka_unit_test(test_conn_connect_echo),
        cmocka_unit_test(test_conn_connect_refused),
        cmocka_unit_test(test_conn_connect_unix_missing),
        cmocka_unit_test(test_conn_write_before_open),
        cmocka_unit_test(test_conn_close_before_open),
        cmocka_unit_test(test_conn_close_in_on_data_not_nested),
        cmocka_unit_test(test_conn_failing_write_not_nested),
        cmocka_unit_test(test_conn_connect_close_cycles),
        cmocka_unit_test(test_conn_ids_unique_nonzero),
        cmocka_unit_test(test_conn_null_arguments),
        cmocka_unit_test(test_conn_write_null_data),
        cmocka_unit_test(test_conn_wrong_thread_eperm),
        cmocka_unit_test(test_conn_send_to_gone_peer_no_sigpipe),
        cmocka_unit_test(test_conn_reads_at_least_64k),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
