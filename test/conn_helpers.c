/* The connection tests' shared recorder, fixtures and peer helpers; see conn_helpers.h. */
#include "conn_helpers.h"

/* cmocka's header needs these first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- The byte pattern ------------------------------------------------------------------- */

unsigned char tc_pattern_byte(size_t i)
{
    return (unsigned char)((i ^ (i >> 8) ^ (i >> 16) ^ (i >> 24)) * 31u + 7u);
}

void tc_pattern_fill(char *buf, size_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)tc_pattern_byte(offset + i);
}

char *tc_pattern_new(size_t len)
{
    char *p = malloc(len ? len : 1);

    assert_non_null(p);
    tc_pattern_fill(p, 0, len);
    return p;
}

size_t tc_pattern_mismatch(const char *buf, size_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] != tc_pattern_byte(offset + i))
            return i;
    return len;
}

/* ---- Plain peer sockets ----------------------------------------------------------------- */

static void set_timeouts(int fd)
{
    struct timeval tv = { .tv_sec = TEST_WAIT_MS / 1000 };

    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
}

int tc_connect(int port, int rcvbuf)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    set_timeouts(fd);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    return fd;
}

int tc_listen(int *port, int rcvbuf)
{
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    assert_int_equal(listen(fd, 64), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

int tc_accept(int lfd)
{
    int fd;

    assert_int_equal(test_wait_fd(lfd, POLLIN, TEST_WAIT_MS), 1);
    fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(fd >= 0);
    set_timeouts(fd);
    return fd;
}

void tc_set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    assert_true(flags >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, flags | O_NONBLOCK), 0);
}

void tc_read_pattern(int fd, size_t offset, size_t len)
{
    static char buf[64 * 1024];
    size_t done = 0;

    while (done < len) {
        size_t want = len - done < sizeof buf ? len - done : sizeof buf;
        size_t bad;

        test_read_exact(fd, buf, want);
        bad = tc_pattern_mismatch(buf, offset + done, want);
        if (bad != want)
            fail_msg("stream byte %zu is 0x%02x, want 0x%02x", offset + done + bad,
                     (unsigned char)buf[bad], tc_pattern_byte(offset + done + bad));
        done += want;
    }
}

int tc_read_eof(int fd)
{
    char c;
    ssize_t n;

    if (test_wait_fd(fd, POLLIN, TEST_WAIT_MS) != 1)
        fail_msg("no end of stream within %d ms", TEST_WAIT_MS);
    do
        n = recv(fd, &c, 1, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        fail_msg("a byte (0x%02x) where the end of the stream was due", (unsigned char)c);
    return n == 0 ? 0 : -errno;
}

void tc_reset(int fd)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };

    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    assert_int_equal(close(fd), 0);
}

size_t tc_send_pattern_lossy(int fd, size_t offset, size_t len)
{
    uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;
    char buf[16 * 1024];
    size_t sent = 0;

    while (sent < len && test_now_us() < deadline) {
        size_t want = len - sent < sizeof buf ? len - sent : sizeof buf;
        ssize_t n;

        if (test_wait_fd(fd, POLLOUT, 100) != 1)
            continue;
        tc_pattern_fill(buf, offset + sent, want);
        n = send(fd, buf, want, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            sent += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            break; /* the peer went away */
    }
    return sent;
}

/* ---- Running code in a loop's thread ---------------------------------------------------- */

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

    (void)loop;
    if (c->fn != NULL)
        c->fn(c->arg);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

void tc_run_in_loop(ioloop_t *loop, void (*fn)(void *arg), void *arg)
{
    struct in_loop c = { .fn = fn, .arg = arg, .done = false };
    struct timespec deadline = test_deadline(CLOCK_MONOTONIC, TEST_WAIT_MS);

    pthread_mutex_init(&c.lock, NULL);
    cond_init(&c.cond);
    assert_int_equal(ioloop_add_callback(loop, in_loop_cb, &c), 0);
    pthread_mutex_lock(&c.lock);
    while (!c.done)
        if (pthread_cond_timedwait(&c.cond, &c.lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&c.lock);
    /* A callback still queued would later touch c: nothing can be done but stop here. */
    if (!c.done) {
        fprintf(stderr, "the loop did not run a posted callback within %d ms\n", TEST_WAIT_MS);
        abort();
    }
    pthread_cond_destroy(&c.cond);
    pthread_mutex_destroy(&c.lock);
}

void tc_settle(ioloop_t *loop)
{
    tc_run_in_loop(loop, NULL, NULL);
    tc_run_in_loop(loop, NULL, NULL);
}

/* ---- The recorder ----------------------------------------------------------------------- */

void tc_rec_init(struct tc_rec *r, ioloop_t *loop)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    cond_init(&r->cond);
    r->owner = pthread_self();
    r->loop = loop;
}

void tc_rec_destroy(struct tc_rec *r)
{
    for (int i = 0; i < r->nshown; i++)
        free(r->shown_data[i]);
    free(r->in);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
}

bool tc_wait(struct tc_rec *r, const int *field, int target)
{
    struct timespec deadline = test_deadline(CLOCK_MONOTONIC, TEST_WAIT_MS);
    bool ok;

    pthread_mutex_lock(&r->lock);
    while (*field < target || r->depth > 0)
        if (pthread_cond_timedwait(&r->cond, &r->lock, &deadline) == ETIMEDOUT)
            break;
    ok = *field >= target && r->depth == 0;
    pthread_mutex_unlock(&r->lock);
    return ok;
}

bool tc_wait_size(struct tc_rec *r, const size_t *field, size_t target)
{
    struct timespec deadline = test_deadline(CLOCK_MONOTONIC, TEST_WAIT_MS);
    bool ok;

    pthread_mutex_lock(&r->lock);
    while (*field < target || r->depth > 0)
        if (pthread_cond_timedwait(&r->cond, &r->lock, &deadline) == ETIMEDOUT)
            break;
    ok = *field >= target && r->depth == 0;
    pthread_mutex_unlock(&r->lock);
    return ok;
}

int tc_get(struct tc_rec *r, const int *field)
{
    int v;

    pthread_mutex_lock(&r->lock);
    v = *field;
    pthread_mutex_unlock(&r->lock);
    return v;
}

size_t tc_get_size(struct tc_rec *r, const size_t *field)
{
    size_t v;

    pthread_mutex_lock(&r->lock);
    v = *field;
    pthread_mutex_unlock(&r->lock);
    return v;
}

void tc_lock(struct tc_rec *r)
{
    pthread_mutex_lock(&r->lock);
}

void tc_unlock(struct tc_rec *r)
{
    pthread_mutex_unlock(&r->lock);
}

/* Callbacks in progress in this thread: with a shared recorder (tc_rec.many), other loops'
 * callbacks run at the same time, so only this thread's own count shows nesting. */
static _Thread_local int thread_depth;

struct tc_rec *tc_enter(ioloop_conn_t *conn)
{
    struct tc_rec *r = ioloop_conn_user(conn);

    if (r == NULL)
        abort(); /* a callback with a conn that does not know its user */
    pthread_mutex_lock(&r->lock);
    if (r->many ? thread_depth > 0 : r->depth > 0)
        r->nested++;
    r->depth++;
    thread_depth++;
    if (r->many ? ioloop_current() != ioloop_conn_loop(conn)
                : ioloop_current() != r->loop || ioloop_conn_loop(conn) != r->loop) {
        r->outside_loop++;
        if (!pthread_equal(pthread_self(), r->owner))
            r->outside_owner++;
    }
    if (r->closes > 0 && !r->many)
        r->after_close++;
    pthread_mutex_unlock(&r->lock);
    return r;
}

void tc_leave(struct tc_rec *r)
{
    pthread_mutex_lock(&r->lock);
    r->depth--;
    thread_depth--;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void log_event(struct tc_rec *r, char ev)
{
    if (r->nlog < TC_LOG_MAX)
        r->log[r->nlog++] = ev;
    r->log[r->nlog] = '\0';
}

void tc_event(struct tc_rec *r, ioloop_conn_t *conn, char ev, int err, size_t len)
{
    pthread_mutex_lock(&r->lock);
    /* Runs of on_data calls are logged once, so the log stays short. */
    if (ev != 'D' || r->nlog == 0 || r->log[r->nlog - 1] != 'D')
        log_event(r, ev);
    switch (ev) {
    case 'O':
        r->opens++;
        r->conn = conn;
        r->id = ioloop_conn_id(conn);
        r->open_us = test_now_us();
        break;
    case 'D':
        r->datas++;
        if (r->eofs > 0)
            r->data_after_eof++;
        if (len > r->max_len)
            r->max_len = len;
        break;
    case 'E':
        r->eofs++;
        r->eof_us = test_now_us();
        break;
    case 'W':
        r->drains++;
        break;
    case 'C':
        r->closes++;
        r->close_err = err;
        r->close_us = test_now_us();
        r->conn = NULL;
        break;
    default:
        abort();
    }
    pthread_mutex_unlock(&r->lock);
}

void tc_show(struct tc_rec *r, const char *data, size_t len)
{
    pthread_mutex_lock(&r->lock);
    if (r->nshown < TC_SHOWN_MAX) {
        char *copy = malloc(len ? len : 1);

        if (copy == NULL)
            abort();
        memcpy(copy, data, len);
        r->shown[r->nshown] = len;
        r->shown_data[r->nshown++] = copy;
    }
    pthread_mutex_unlock(&r->lock);
}

void tc_keep(struct tc_rec *r, const char *data, size_t len)
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
    pthread_mutex_unlock(&r->lock);
}

void tc_call_begin(struct tc_rec *r)
{
    pthread_mutex_lock(&r->lock);
    r->in_call++;
    pthread_mutex_unlock(&r->lock);
}

void tc_call_end(struct tc_rec *r)
{
    pthread_mutex_lock(&r->lock);
    r->in_call--;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

void tc_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

void tc_on_open_small_sndbuf(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    int size = TC_SMALL_BUF;

    if (setsockopt(ioloop_conn_fd(conn), SOL_SOCKET, SO_SNDBUF, &size, sizeof size) != 0)
        abort();
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

size_t tc_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'D', 0, len);
    tc_keep(r, data, len);
    tc_leave(r);
    return len;
}

void tc_on_eof(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'E', 0, 0);
    tc_leave(r);
}

void tc_on_drain(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'W', 0, 0);
    tc_leave(r);
}

void tc_on_close(ioloop_conn_t *conn, int err)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'C', err, 0);
    tc_leave(r);
}

void tc_flushed(ioloop_conn_t *conn, int err, void *arg)
{
    struct tc_rec *r = tc_enter(conn);
    uintptr_t tag = (uintptr_t)arg;
    size_t pending = ioloop_conn_pending(conn);

    if (tag > 9)
        abort();
    pthread_mutex_lock(&r->lock);
    log_event(r, (char)('0' + tag));
    r->flushes++;
    r->flush_err[tag] = err;
    r->flush_pending[tag] = pending;
    if (r->in_call > 0)
        r->flushed_in_call++;
    pthread_mutex_unlock(&r->lock);
    tc_leave(r);
}

/* ---- A server on a one-loop pool -------------------------------------------------------- */

void tc_server_open(struct tc_server *sv, struct tc_rec *r, const ioloop_conn_handlers_t *h)
{
    tc_server_open_opts(sv, r, h, NULL);
}

void tc_server_open_opts(struct tc_server *sv, struct tc_rec *r, const ioloop_conn_handlers_t *h,
                         const ioloop_server_options_t *options)
{
    memset(sv, 0, sizeof *sv);
    sv->fds = test_count_fds();
    sv->pool = ioloop_pool_new(1);
    assert_non_null(sv->pool);
    sv->loop = ioloop_pool_loop(sv->pool, 0);
    assert_non_null(sv->loop);
    r->loop = sv->loop;
    sv->server = ioloop_server_new_opts(sv->pool, "127.0.0.1:0", h, r, options);
    assert_non_null(sv->server);
    assert_int_equal(ioloop_server_start(sv->server), 0);
    sv->port = ioloop_server_port(sv->server);
    assert_true(sv->port > 0);
}

void tc_server_close(struct tc_server *sv)
{
    ioloop_server_free(sv->server);
    ioloop_pool_free(sv->pool);
    /* Gone: LeakSanitizer must not find them through here. */
    sv->server = NULL;
    sv->pool = NULL;
    sv->loop = NULL;
    assert_int_equal(test_count_fds(), sv->fds);
}

int tc_server_client(struct tc_server *sv, struct tc_rec *r, int rcvbuf)
{
    int opens = tc_get(r, &r->opens);
    int fd = tc_connect(sv->port, rcvbuf);

    if (!tc_wait(r, &r->opens, opens + 1))
        fail_msg("the server did not open the connection within %d ms", TEST_WAIT_MS);
    return fd;
}

/* ---- A client loop in a thread of its own ----------------------------------------------- */

void tc_client_open(struct tc_client *c)
{
    memset(c, 0, sizeof *c);
    c->fds = test_count_fds();
    c->loop = ioloop_new();
    assert_non_null(c->loop);
    test_loop_thread_start(&c->thread, c->loop);
}

void tc_client_close(struct tc_client *c)
{
    ioloop_stop(c->loop);
    assert_int_equal(test_loop_thread_join(&c->thread), 0);
    ioloop_free(c->loop);
}

/* ---- Servers in either accept mode ------------------------------------------------------ */

const int tc_default_mode = 0;
const int tc_reuseport_mode = 1;

int tc_mode(void **state)
{
    return *(const int *)*state;
}

ioloop_server_stats_t tc_stats(const ioloop_server_t *server)
{
    ioloop_server_stats_t st;

    memset(&st, 0xff, sizeof st); /* what get_stats does not fill in shows */
    ioloop_server_get_stats(server, &st);
    return st;
}

void tc_sleep_ms(unsigned ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

bool tc_wait_refused(const ioloop_server_t *server, uint64_t n)
{
    uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;

    while (tc_stats(server).refused < n)
        if (test_now_us() > deadline)
            return false;
        else
            tc_sleep_ms(1);
    return true;
}

void tc_apply_filter(void)
{
    const char *pattern = getenv("TEST_FILTER");

    if (pattern != NULL && *pattern != '\0')
        cmocka_set_test_filter(pattern);
}
