/*
 * Unit tests of the server (include/ioloop/server.h): argument errors, the bound port,
 * accepting only after ioloop_server_start() and starting once, a byte-exact echo of many
 * clients spread round-robin over a pool's loops, ioloop_server_send() from other threads
 * (delivery to the right connection, order per sending thread, -ENOENT for unknown and closed
 * ids), ioloop_server_free() closing every connection with -ECANCELED in its own loop before
 * it returns, echo over unix sockets and IPv6 loopback, and the acceptor running out of fds:
 * it must neither spin nor stop, and it warns (through the logger) at most once a second.
 *
 * Clients are plain sockets driven by the test thread with poll() timeouts, or ioloop
 * connections on a loop the test thread runs; the fd-exhaustion test runs its clients in a
 * child process. Each test checks that the fd count is restored.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* How long a test waits for something that should happen promptly before it fails. */
#define WAIT_MS 10000
/* The echo test: clients, and bytes each sends and expects back. */
#define ECHO_CLIENTS 50
#define ECHO_BYTES (100 * 1024)
/* Clients of the server_send tests. */
#define SEND_CLIENTS 4
/* The big message sent with ioloop_server_send(). */
#define SEND_BIG (1024 * 1024)
/* Threads sending concurrently, and messages each sends. */
#define SEND_THREADS 3
#define SEND_MSGS 300
/* Connections open when the server is freed. */
#define FREE_CONNS 10
/* What the unix-socket and IPv6 echo tests send. */
#define STREAM_BYTES (256 * 1024)
/* fd exhaustion: free fd slots left below the lowered limit; how long to wait for the first
 * shed connection; the window over which the CPU time is then measured and the most CPU it
 * may use meanwhile (an accept spin burns ~100%); the child's connections and their pace. */
#define EXHAUST_FREE_SLOTS 4
#define EXHAUST_SETTLE_MS 2000
#define EXHAUST_WINDOW_MS 700
#define EXHAUST_MAX_CPU_PERCENT 25
#define EXHAUST_CHILD_CONNS 300
#define EXHAUST_CHILD_PACE_MS 5
#define EXHAUST_CHILD_LIFETIME_S 60

/* ---- Small helpers ---------------------------------------------------------------------- */

/* Client `client`'s byte stream: different for every client, not repeating with a short
 * period, so a byte delivered to the wrong client or at the wrong offset is noticed. */
static unsigned char stream_byte(unsigned client, size_t i)
{
    size_t k = i + (size_t)client * 7919u;

    return (unsigned char)((k ^ (k >> 8) ^ (k >> 16)) * 31u + client * 13u + 7u);
}

static void fill_stream(char *buf, unsigned client, size_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)stream_byte(client, offset + i);
}

/* Expects the end of the stream: read returns 0, or the connection was reset. */
static void expect_eof(int fd)
{
    char c;
    ssize_t n;

    assert_int_equal(test_wait_fd(fd, POLLIN, WAIT_MS), 1);
    n = read(fd, &c, 1);
    assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
}

/* A blocking client socket connected to 127.0.0.1:port, or -errno. */
static int connect_tcp4(int port)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        int err = errno;

        close(fd);
        return -err;
    }
    return fd;
}

/*
 * Sends out[0..len) on a blocking client socket, then SHUT_WR, while reading the echo back
 * into in; expects exactly len bytes, then the end of the stream.
 */
static void echo_exchange(int fd, const char *out, char *in, size_t len)
{
    uint64_t deadline = test_now_us() + WAIT_MS * 1000ull;
    size_t sent = 0, got = 0;
    bool shut = false, eof = false;
    int flags = fcntl(fd, F_GETFL);

    assert_int_equal(fcntl(fd, F_SETFL, flags | O_NONBLOCK), 0);
    while (!eof) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };

        assert_true(test_now_us() < deadline);
        if (sent == len && !shut) {
            assert_int_equal(shutdown(fd, SHUT_WR), 0);
            shut = true;
        }
        if (sent < len)
            pfd.events |= POLLOUT;
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        if (pfd.revents & POLLOUT) {
            ssize_t n = send(fd, out + sent, len - sent, MSG_NOSIGNAL);

            if (n > 0)
                sent += (size_t)n;
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(fd, in + got, len - got + 1);

            if (n > 0)
                got += (size_t)n;
            else if (n == 0)
                eof = true;
            else
                assert_true(errno == EAGAIN || errno == EINTR);
            assert_true(got <= len);
        }
    }
    assert_int_equal(sent, len);
    assert_int_equal(got, len);
    assert_memory_equal(in, out, len);
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

/* ---- The server side: an echo server that records what its callbacks see ---------------- */

struct srv {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ioloop_pool_t *pool;
    int opens, closes, datas;
    int wrong_thread;           /* callbacks outside the conn's loop thread */
    int wrong_user;             /* ioloop_conn_user() was not this struct */
    int nested;                 /* on_close inside another callback */
    int depth;                  /* callbacks in progress, in any thread */
    int per_loop[4];            /* on_open counts by the index of the conn's loop */
    int close_errs[64];         /* the errors on_close got, in order */
    int close_unexpected;       /* on_close errors other than expect_err */
    int expect_err;
    uint64_t ids[64];           /* ids by client index (first message "C<nn>\n") */
    uint64_t closed_ids[64];
    bool slow_close;            /* on_close lingers 2 ms, so an early return is visible */
    const char *big;            /* if set, on_open writes it and closes the connection */
    size_t big_len;
    size_t pending_at_open;     /* what stayed pending after that write */
};

static void srv_init(struct srv *s, ioloop_pool_t *pool)
{
    pthread_condattr_t attr;

    memset(s, 0, sizeof *s);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, &attr);
    pthread_condattr_destroy(&attr);
    s->pool = pool;
}

static void srv_destroy(struct srv *s)
{
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
}

/* Waits until *field >= target with no callback in progress, or WAIT_MS; returns whether. */
static bool srv_wait(struct srv *s, const int *field, int target)
{
    struct timespec deadline = test_deadline(CLOCK_MONOTONIC, WAIT_MS);
    bool ok;

    pthread_mutex_lock(&s->lock);
    while (*field < target || s->depth > 0)
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT)
            break;
    ok = *field >= target && s->depth == 0;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static int srv_get(struct srv *s, const int *field)
{
    int v;

    pthread_mutex_lock(&s->lock);
    v = *field;
    pthread_mutex_unlock(&s->lock);
    return v;
}

/* Server callbacks in progress in this thread: on_close must find none but itself. */
static _Thread_local int thread_depth;

/* Common entry and exit of every server callback (holds nothing in between). */
static struct srv *srv_enter(ioloop_conn_t *conn)
{
    struct srv *s = ioloop_conn_user(conn);

    thread_depth++;
    pthread_mutex_lock(&s->lock);
    s->depth++;
    if (ioloop_current() == NULL || ioloop_current() != ioloop_conn_loop(conn))
        s->wrong_thread++;
    pthread_mutex_unlock(&s->lock);
    return s;
}

static void srv_leave(struct srv *s)
{
    thread_depth--;
    pthread_mutex_lock(&s->lock);
    s->depth--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void srv_on_open(ioloop_conn_t *conn)
{
    struct srv *s = srv_enter(conn);
    int index = -1;

    for (int i = 0; i < ioloop_pool_size(s->pool) && i < 4; i++)
        if (ioloop_pool_loop(s->pool, i) == ioloop_conn_loop(conn))
            index = i;
    if (s->big != NULL) {
        int rc = ioloop_conn_write(conn, s->big, s->big_len);
        size_t pending = ioloop_conn_pending(conn);

        ioloop_conn_close(conn);
        pthread_mutex_lock(&s->lock);
        s->pending_at_open = rc == 0 ? pending : 0;
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_lock(&s->lock);
    s->opens++;
    if (index >= 0)
        s->per_loop[index]++;
    else
        s->wrong_thread++;
    pthread_mutex_unlock(&s->lock);
    srv_leave(s);
}

/* Echoes everything. */
static size_t srv_echo_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct srv *s = srv_enter(conn);

    pthread_mutex_lock(&s->lock);
    s->datas++;
    pthread_mutex_unlock(&s->lock);
    if (ioloop_conn_write(conn, data, len) < 0)
        ioloop_conn_close(conn);
    srv_leave(s);
    return len;
}

/* Takes the client's introduction "C<nn>\n" and notes its id; ignores anything else. */
static size_t srv_intro_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct srv *s = srv_enter(conn);
    size_t used = len;

    if (ioloop_conn_data(conn) == NULL) {
        if (len < 4) {
            used = 0;
        } else {
            int index = (data[1] - '0') * 10 + (data[2] - '0');

            used = 4;
            pthread_mutex_lock(&s->lock);
            if (data[0] == 'C' && data[3] == '\n' && index >= 0 && index < 64)
                s->ids[index] = ioloop_conn_id(conn);
            s->datas++;
            pthread_mutex_unlock(&s->lock);
            ioloop_conn_set_data(conn, s);
        }
    }
    srv_leave(s);
    return used;
}

static void srv_on_close(ioloop_conn_t *conn, int err)
{
    struct srv *s = srv_enter(conn);

    if (s->slow_close) {
        uint64_t end = test_now_us() + 2000;

        while (test_now_us() < end)
            ;
    }
    pthread_mutex_lock(&s->lock);
    if (thread_depth > 1)
        s->nested++;
    if (err != s->expect_err)
        s->close_unexpected++;
    if (s->closes < 64) {
        s->close_errs[s->closes] = err;
        s->closed_ids[s->closes] = ioloop_conn_id(conn);
    }
    s->closes++;
    pthread_mutex_unlock(&s->lock);
    srv_leave(s);
}

static const ioloop_conn_handlers_t echo_handlers = {
    .on_open = srv_on_open,
    .on_data = srv_echo_on_data,
    .on_close = srv_on_close,
};

static const ioloop_conn_handlers_t intro_handlers = {
    .on_open = srv_on_open,
    .on_data = srv_intro_on_data,
    .on_close = srv_on_close,
};

/* ---- Argument errors, port, start ------------------------------------------------------- */

static void test_server_new_errors(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    ioloop_conn_handlers_t no_data = { .on_open = srv_on_open, .on_close = srv_on_close };

    (void)state;
    assert_non_null(pool);
    errno = 0;
    assert_null(ioloop_server_new(NULL, "127.0.0.1:0", &echo_handlers, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_server_new(pool, "127.0.0.1:0", NULL, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_server_new(pool, "127.0.0.1:0", &no_data, NULL));
    assert_int_equal(errno, EINVAL);

    assert_int_equal(ioloop_server_start(NULL), -EINVAL);
    assert_int_equal(ioloop_server_port(NULL), -EINVAL);
    assert_int_equal(ioloop_server_send(NULL, 1, "x", 1), -EINVAL);
    ioloop_server_free(NULL);

    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_server_port_and_start_once(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    static struct srv s;
    ioloop_server_t *server;
    char buf[4];
    int port, fd;

    (void)state;
    assert_non_null(pool);
    srv_init(&s, pool);
    server = ioloop_server_new(pool, "127.0.0.1:0", &echo_handlers, &s);
    assert_non_null(server);
    port = ioloop_server_port(server);
    assert_true(port > 0 && port <= 65535);

    /* It listens already: a client connects (into the backlog), but nothing is accepted. */
    fd = connect_tcp4(port);
    assert_true(fd >= 0);
    test_write_all(fd, "ping", 4);
    assert_int_equal(test_wait_fd(fd, POLLIN, 100), 0);
    assert_int_equal(srv_get(&s, &s.opens), 0);

    assert_int_equal(ioloop_server_start(server), 0);
    assert_int_equal(ioloop_server_start(server), -EALREADY);
    assert_int_equal(ioloop_server_port(server), port);
    test_read_exact(fd, buf, 4);
    assert_memory_equal(buf, "ping", 4);
    assert_true(srv_wait(&s, &s.opens, 1));
    assert_int_equal(ioloop_server_start(server), -EALREADY);

    close(fd);
    assert_true(srv_wait(&s, &s.closes, 1));
    ioloop_server_free(server);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.opens, 1);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.close_errs[0], 0);
    assert_int_equal(s.wrong_thread, 0);
    assert_int_equal(s.nested, 0);
    pthread_mutex_unlock(&s.lock);
    srv_destroy(&s);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Many clients through a two-loop pool ----------------------------------------------- */

/* One client of the echo test, on a loop the test thread runs. */
struct echo_client {
    unsigned index;
    char *out;
    size_t got;
    size_t mismatches;
    int opens, closes, err;
};

struct echo_clients {
    struct echo_client c[ECHO_CLIENTS];
    int done;
    bool timed_out;
    int64_t guard;
};

static struct echo_clients clients;

static void client_on_open(ioloop_conn_t *conn)
{
    struct echo_client *c = ioloop_conn_user(conn);

    c->opens++;
    if (ioloop_conn_write(conn, c->out, ECHO_BYTES) < 0)
        ioloop_conn_close(conn);
}

static size_t client_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct echo_client *c = ioloop_conn_user(conn);

    for (size_t i = 0; i < len; i++)
        if (c->got + i >= ECHO_BYTES || (unsigned char)data[i] != stream_byte(c->index, c->got + i))
            c->mismatches++;
    c->got += len;
    if (c->got >= ECHO_BYTES)
        ioloop_conn_close(conn);
    return len;
}

static void client_on_close(ioloop_conn_t *conn, int err)
{
    struct echo_client *c = ioloop_conn_user(conn);
    ioloop_t *loop = ioloop_conn_loop(conn);

    c->closes++;
    c->err = err;
    if (++clients.done == ECHO_CLIENTS) {
        ioloop_cancel_timer(loop, clients.guard);
        ioloop_stop(loop);
    }
}

static void clients_guard(ioloop_t *loop, void *arg)
{
    clients.timed_out = true;
    ioloop_stop(loop);
}

static const ioloop_conn_handlers_t client_handlers = {
    .on_open = client_on_open,
    .on_data = client_on_data,
    .on_close = client_on_close,
};

static void test_server_echo_many_clients_two_loops(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(2);
    static struct srv s;
    ioloop_server_t *server;
    ioloop_t *loop;
    char address[64];

    (void)state;
    assert_non_null(pool);
    srv_init(&s, pool);
    s.expect_err = 0;
    server = ioloop_server_new(pool, "127.0.0.1:0", &echo_handlers, &s);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    snprintf(address, sizeof address, "127.0.0.1:%d", ioloop_server_port(server));

    /* The clients live on a loop the test thread runs until the last one closed. */
    loop = ioloop_new();
    assert_non_null(loop);
    memset(&clients, 0, sizeof clients);
    clients.guard = ioloop_run_after(loop, 30000, clients_guard, NULL);
    assert_true(clients.guard > 0);
    for (unsigned i = 0; i < ECHO_CLIENTS; i++) {
        struct echo_client *c = &clients.c[i];

        c->index = i;
        c->out = malloc(ECHO_BYTES);
        assert_non_null(c->out);
        fill_stream(c->out, i, 0, ECHO_BYTES);
        assert_non_null(ioloop_connect(loop, address, &client_handlers, c));
    }
    assert_int_equal(ioloop_start(loop), 0);
    assert_false(clients.timed_out);
    ioloop_free(loop);

    /* Every byte came back to its own client, in order; every client closed cleanly. */
    for (unsigned i = 0; i < ECHO_CLIENTS; i++) {
        struct echo_client *c = &clients.c[i];

        assert_int_equal(c->opens, 1);
        assert_int_equal(c->closes, 1);
        assert_int_equal(c->err, 0);
        assert_int_equal(c->got, ECHO_BYTES);
        assert_int_equal(c->mismatches, 0);
        free(c->out);
    }

    /* The server saw each client close (EOF with nothing pending: 0), and the connections
     * went round-robin to both loops, every callback in its conn's loop thread. */
    assert_true(srv_wait(&s, &s.closes, ECHO_CLIENTS));
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.opens, ECHO_CLIENTS);
    assert_int_equal(s.closes, ECHO_CLIENTS);
    assert_int_equal(s.close_unexpected, 0);
    assert_int_equal(s.wrong_thread, 0);
    assert_int_equal(s.nested, 0);
    assert_int_equal(s.per_loop[0], ECHO_CLIENTS / 2);
    assert_int_equal(s.per_loop[1], ECHO_CLIENTS / 2);
    pthread_mutex_unlock(&s.lock);

    ioloop_server_free(server);
    srv_destroy(&s);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- ioloop_server_send() --------------------------------------------------------------- */

/* Connects SEND_CLIENTS plain clients that introduce themselves; fills their fds. */
static void connect_introduced(struct srv *s, int port, int *fd, int n)
{
    for (int i = 0; i < n; i++) {
        char intro[16];

        fd[i] = connect_tcp4(port);
        assert_true(fd[i] >= 0);
        snprintf(intro, sizeof intro, "C%02d\n", i);
        test_write_all(fd[i], intro, 4);
    }
    assert_true(srv_wait(s, &s->datas, n));
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < n; i++)
        assert_true(s->ids[i] != 0);
    pthread_mutex_unlock(&s->lock);
}

static uint64_t srv_id(struct srv *s, int index)
{
    uint64_t id;

    pthread_mutex_lock(&s->lock);
    id = s->ids[index];
    pthread_mutex_unlock(&s->lock);
    return id;
}

static void test_server_send_from_other_thread(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(2);
    static struct srv s, s2;
    ioloop_server_t *server, *other;
    int fd[SEND_CLIENTS];
    char msg[32], buf[32];
    char *big, *got;

    (void)state;
    assert_non_null(pool);
    srv_init(&s, pool);
    srv_init(&s2, pool);
    server = ioloop_server_new(pool, "127.0.0.1:0", &intro_handlers, &s);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    other = ioloop_server_new(pool, "127.0.0.1:0", &intro_handlers, &s2);
    assert_non_null(other);
    connect_introduced(&s, ioloop_server_port(server), fd, SEND_CLIENTS);

    /* A message for each client reaches that client and no other. */
    for (int i = SEND_CLIENTS - 1; i >= 0; i--) {
        snprintf(msg, sizeof msg, "hello client %02d", i);
        assert_int_equal(ioloop_server_send(server, srv_id(&s, i), msg, strlen(msg)), 0);
    }
    for (int i = 0; i < SEND_CLIENTS; i++) {
        snprintf(msg, sizeof msg, "hello client %02d", i);
        memset(buf, 0, sizeof buf);
        test_read_exact(fd[i], buf, strlen(msg));
        assert_string_equal(buf, msg);
    }

    /* The data is copied: the caller's buffer is overwritten at once, and 1 MiB arrives. */
    big = malloc(SEND_BIG);
    got = malloc(SEND_BIG);
    assert_non_null(big);
    assert_non_null(got);
    fill_stream(big, 1, 0, SEND_BIG);
    assert_int_equal(ioloop_server_send(server, srv_id(&s, 1), big, SEND_BIG), 0);
    memset(big, 0, SEND_BIG);
    test_read_exact(fd[1], got, SEND_BIG);
    fill_stream(big, 1, 0, SEND_BIG);
    assert_memory_equal(got, big, SEND_BIG);
    free(big);
    free(got);

    /* Unknown ids, another server's connection, bad arguments. */
    assert_int_equal(ioloop_server_send(server, 0, "x", 1), -ENOENT);
    assert_int_equal(ioloop_server_send(server, 12345, "x", 1), -ENOENT);
    assert_int_equal(ioloop_server_send(server, UINT64_MAX, "x", 1), -ENOENT);
    assert_int_equal(ioloop_server_send(server, srv_id(&s, 0) ^ (UINT64_C(1) << 40), "x", 1),
                     -ENOENT);
    assert_int_equal(ioloop_server_send(other, srv_id(&s, 0), "x", 1), -ENOENT);
    assert_int_equal(ioloop_server_send(server, srv_id(&s, 0), NULL, 1), -EINVAL);
    assert_int_equal(ioloop_server_send(NULL, srv_id(&s, 0), "x", 1), -EINVAL);
    assert_int_equal(ioloop_server_send(server, srv_id(&s, 0), NULL, 0), 0);

    /* Nothing stray arrived anywhere: the next bytes are exactly the markers. */
    for (int i = 0; i < SEND_CLIENTS; i++) {
        snprintf(msg, sizeof msg, "end %02d", i);
        assert_int_equal(ioloop_server_send(server, srv_id(&s, i), msg, strlen(msg)), 0);
    }
    for (int i = 0; i < SEND_CLIENTS; i++) {
        snprintf(msg, sizeof msg, "end %02d", i);
        memset(buf, 0, sizeof buf);
        test_read_exact(fd[i], buf, strlen(msg));
        assert_string_equal(buf, msg);
    }

    /* A closed connection's id is unknown from then on. */
    close(fd[0]);
    assert_true(srv_wait(&s, &s.closes, 1));
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.closed_ids[0], s.ids[0]);
    assert_int_equal(s.close_errs[0], 0);
    pthread_mutex_unlock(&s.lock);
    assert_int_equal(ioloop_server_send(server, srv_id(&s, 0), "x", 1), -ENOENT);
    /* The others are still served. */
    assert_int_equal(ioloop_server_send(server, srv_id(&s, 2), "ok", 2), 0);
    test_read_exact(fd[2], buf, 2);
    assert_memory_equal(buf, "ok", 2);

    for (int i = 1; i < SEND_CLIENTS; i++)
        close(fd[i]);
    assert_true(srv_wait(&s, &s.closes, SEND_CLIENTS));
    ioloop_server_free(other);
    ioloop_server_free(server);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.wrong_thread, 0);
    assert_int_equal(s.nested, 0);
    pthread_mutex_unlock(&s.lock);
    srv_destroy(&s2);
    srv_destroy(&s);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

/* Sends SEND_MSGS numbered messages "T<t>:<nnnn>;" to one connection. */
struct sender {
    pthread_t thread;
    ioloop_server_t *server;
    uint64_t id;
    int index;
    atomic_int failures;
};

static void *sender_main(void *arg)
{
    struct sender *t = arg;

    for (int n = 0; n < SEND_MSGS; n++) {
        char msg[16];

        snprintf(msg, sizeof msg, "T%d:%04d;", t->index, n);
        if (ioloop_server_send(t->server, t->id, msg, strlen(msg)) != 0)
            atomic_fetch_add(&t->failures, 1);
    }
    return NULL;
}

static void test_server_send_order_per_thread(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(2);
    static struct srv s;
    static struct sender senders[SEND_THREADS];
    static char stream[SEND_THREADS * SEND_MSGS * 8];
    ioloop_server_t *server;
    int next[SEND_THREADS] = { 0 };
    int fd[2];
    size_t off = 0;

    (void)state;
    assert_non_null(pool);
    srv_init(&s, pool);
    server = ioloop_server_new(pool, "127.0.0.1:0", &intro_handlers, &s);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    connect_introduced(&s, ioloop_server_port(server), fd, 2);

    /* Several threads send to client 1 at once. */
    for (int t = 0; t < SEND_THREADS; t++) {
        senders[t].server = server;
        senders[t].id = srv_id(&s, 1);
        senders[t].index = t;
        atomic_init(&senders[t].failures, 0);
        assert_int_equal(pthread_create(&senders[t].thread, NULL, sender_main, &senders[t]), 0);
    }
    for (int t = 0; t < SEND_THREADS; t++) {
        pthread_join(senders[t].thread, NULL);
        assert_int_equal(atomic_load(&senders[t].failures), 0);
    }

    /* Every message arrives whole, each thread's in the order it sent them. */
    test_read_exact(fd[1], stream, sizeof stream);
    while (off < sizeof stream) {
        int t, n;

        assert_int_equal(sscanf(stream + off, "T%d:%4d;", &t, &n), 2);
        assert_true(t >= 0 && t < SEND_THREADS);
        assert_int_equal(n, next[t]);
        next[t]++;
        off += 8;
    }
    for (int t = 0; t < SEND_THREADS; t++)
        assert_int_equal(next[t], SEND_MSGS);
    /* And client 0 got none of it. */
    assert_int_equal(test_wait_fd(fd[0], POLLIN, 0), 0);

    close(fd[0]);
    close(fd[1]);
    assert_true(srv_wait(&s, &s.closes, 2));
    ioloop_server_free(server);
    srv_destroy(&s);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- ioloop_server_free() with open connections ----------------------------------------- */

static void count_cb(ioloop_t *loop, void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
}

static void test_server_free_closes_connections(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(2);
    static struct srv s;
    ioloop_server_t *server;
    int fd[FREE_CONNS], port;
    atomic_int ran;
    char buf[1];

    (void)state;
    assert_non_null(pool);
    srv_init(&s, pool);
    s.expect_err = -ECANCELED;
    s.slow_close = true;
    server = ioloop_server_new(pool, "127.0.0.1:0", &echo_handlers, &s);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    port = ioloop_server_port(server);
    for (int i = 0; i < FREE_CONNS; i++) {
        fd[i] = connect_tcp4(port);
        assert_true(fd[i] >= 0);
        /* An echo round trip: the server's side is open. */
        test_write_all(fd[i], "x", 1);
        test_read_exact(fd[i], buf, 1);
    }
    assert_int_equal(srv_get(&s, &s.opens), FREE_CONNS);
    assert_int_equal(srv_get(&s, &s.closes), 0);

    /* When it returns, every connection got on_close(-ECANCELED) in its own loop thread
     * (each lingers 2 ms in on_close: an early return would show). */
    ioloop_server_free(server);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.closes, FREE_CONNS);
    assert_int_equal(s.close_unexpected, 0);
    for (int i = 0; i < FREE_CONNS; i++)
        assert_int_equal(s.close_errs[i], -ECANCELED);
    assert_int_equal(s.wrong_thread, 0);
    assert_int_equal(s.nested, 0);
    assert_int_equal(s.depth, 0);
    assert_int_equal(s.per_loop[0], FREE_CONNS / 2);
    assert_int_equal(s.per_loop[1], FREE_CONNS / 2);
    pthread_mutex_unlock(&s.lock);

    /* The clients see the end of the stream; the listener is gone. */
    for (int i = 0; i < FREE_CONNS; i++) {
        expect_eof(fd[i]);
        close(fd[i]);
    }
    assert_int_equal(connect_tcp4(port), -ECONNREFUSED);

    /* The pool's loops carry on. */
    atomic_init(&ran, 0);
    assert_int_equal(ioloop_add_callback(ioloop_pool_loop(pool, 0), count_cb, &ran), 0);
    assert_int_equal(ioloop_add_callback(ioloop_pool_loop(pool, 1), count_cb, &ran), 0);
    ioloop_pool_free(pool);
    assert_int_equal(atomic_load(&ran), 2);
    srv_destroy(&s);
    assert_int_equal(test_count_fds(), fds);
}

/* ioloop_server_free() in a thread of its own, so that a hang fails the test. */
struct freer {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ioloop_server_t *server;
    bool done;
};

static void *freer_main(void *arg)
{
    struct freer *f = arg;

    ioloop_server_free(f->server);
    pthread_mutex_lock(&f->lock);
    f->done = true;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

static void test_server_free_with_pending_output(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    static struct srv s;
    static struct freer f;
    struct sockaddr_in sin = { .sin_family = AF_INET };
    struct timespec deadline;
    pthread_condattr_t attr;
    pthread_t thread;
    int rcvbuf = 64 * 1024, fd;
    char *big;

    (void)state;
    assert_non_null(pool);
    srv_init(&s, pool);
    s.expect_err = -ECANCELED;
    big = malloc(SEND_BIG * 8);
    assert_non_null(big);
    fill_stream(big, 9, 0, SEND_BIG * 8);
    s.big = big;
    s.big_len = SEND_BIG * 8;
    f.server = ioloop_server_new(pool, "127.0.0.1:0", &echo_handlers, &s);
    assert_non_null(f.server);
    assert_int_equal(ioloop_server_start(f.server), 0);

    /* A client that never reads: the server's close waits on a flush that cannot finish. */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    sin.sin_port = htons((uint16_t)ioloop_server_port(f.server));
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_true(srv_wait(&s, &s.opens, 1));
    pthread_mutex_lock(&s.lock);
    assert_true(s.pending_at_open > 0);
    assert_int_equal(s.closes, 0);
    pthread_mutex_unlock(&s.lock);

    /* Freeing the server cancels it rather than wait for the reader. */
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&f.lock, NULL);
    pthread_cond_init(&f.cond, &attr);
    pthread_condattr_destroy(&attr);
    f.done = false;
    assert_int_equal(pthread_create(&thread, NULL, freer_main, &f), 0);
    deadline = test_deadline(CLOCK_MONOTONIC, WAIT_MS);
    pthread_mutex_lock(&f.lock);
    while (!f.done)
        if (pthread_cond_timedwait(&f.cond, &f.lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&f.lock);
    if (!f.done)
        fail_msg("ioloop_server_free() still waits after %d ms on a connection whose peer does "
                 "not read", WAIT_MS);
    pthread_join(thread, NULL);
    pthread_cond_destroy(&f.cond);
    pthread_mutex_destroy(&f.lock);

    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.close_errs[0], -ECANCELED);
    assert_int_equal(s.wrong_thread, 0);
    pthread_mutex_unlock(&s.lock);
    close(fd);
    free(big);
    srv_destroy(&s);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Unix sockets and IPv6 -------------------------------------------------------------- */

/*
 * Fault injection: this binary's listen() is the one the library calls (the tests link the
 * static library), so a test can make it fail once after a successful bind().
 */
static atomic_int listen_fail_errno;

int listen(int fd, int backlog)
{
    static int (*real_listen)(int, int);
    int err = atomic_exchange(&listen_fail_errno, 0);

    if (err != 0) {
        errno = err;
        return -1;
    }
    if (real_listen == NULL)
        *(void **)&real_listen = dlsym(RTLD_NEXT, "listen"); /* POSIX's dlsym idiom */
    return real_listen(fd, backlog);
}

/* listen() failing after bind() created the socket file: the file is ours and goes too
 * (it used to be left behind, making every later bind to that path fail). */
static void test_server_unix_listen_failure_removes_file(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    char dir[] = "/tmp/ioloop-server-XXXXXX";
    char path[sizeof ((struct sockaddr_un *)0)->sun_path];
    char address[sizeof "unix:" + sizeof path];
    ioloop_server_t *server;

    (void)state;
    assert_non_null(pool);
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/fail.sock", dir);
    snprintf(address, sizeof address, "unix:%s", path);
    atomic_store(&listen_fail_errno, ENOBUFS);
    server = ioloop_server_new(pool, address, &echo_handlers, NULL);
    assert_null(server);
    assert_int_equal(errno, ENOBUFS);
    assert_int_equal(atomic_load(&listen_fail_errno), 0); /* listen() was reached */
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(errno, ENOENT);
    /* The path is free: the next server binds it. */
    server = ioloop_server_new(pool, address, &echo_handlers, NULL);
    assert_non_null(server);
    ioloop_server_free(server);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(rmdir(dir), 0);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_server_unix_echo(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    static struct srv s;
    char dir[] = "/tmp/ioloop-server-XXXXXX";
    char address[sizeof "unix:" + sizeof ((struct sockaddr_un *)0)->sun_path];
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    ioloop_server_t *server;
    char *out, *in;
    int fd;

    (void)state;
    assert_non_null(pool);
    srv_init(&s, pool);
    assert_non_null(mkdtemp(dir));
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s/echo.sock", dir);
    snprintf(address, sizeof address, "unix:%s", sun.sun_path);
    server = ioloop_server_new(pool, address, &echo_handlers, &s);
    assert_non_null(server);
    assert_int_equal(ioloop_server_port(server), -EINVAL);
    assert_int_equal(ioloop_server_start(server), 0);

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    out = malloc(STREAM_BYTES);
    in = malloc(STREAM_BYTES + 1);
    assert_non_null(out);
    assert_non_null(in);
    fill_stream(out, 3, 0, STREAM_BYTES);
    echo_exchange(fd, out, in, STREAM_BYTES);
    close(fd);
    free(out);
    free(in);

    assert_true(srv_wait(&s, &s.closes, 1));
    ioloop_server_free(server);
    assert_int_equal(access(sun.sun_path, F_OK), -1);
    assert_int_equal(rmdir(dir), 0);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.opens, 1);
    assert_int_equal(s.close_errs[0], 0);
    assert_int_equal(s.wrong_thread, 0);
    pthread_mutex_unlock(&s.lock);
    srv_destroy(&s);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_server_ipv6_echo(void **state)
{
    int fds = test_count_fds();
    static struct srv s;
    struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    char *out, *in;
    int fd, port;

    (void)state;
    if (!ipv6_loopback_available()) {
        skip();
        return;
    }
    pool = ioloop_pool_new(1);
    assert_non_null(pool);
    srv_init(&s, pool);
    server = ioloop_server_new(pool, "[::1]:0", &echo_handlers, &s);
    assert_non_null(server);
    port = ioloop_server_port(server);
    assert_true(port > 0 && port <= 65535);
    assert_int_equal(ioloop_server_start(server), 0);

    sin6.sin6_port = htons((uint16_t)port);
    fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin6, sizeof sin6), 0);
    out = malloc(STREAM_BYTES);
    in = malloc(STREAM_BYTES + 1);
    assert_non_null(out);
    assert_non_null(in);
    fill_stream(out, 6, 0, STREAM_BYTES);
    echo_exchange(fd, out, in, STREAM_BYTES);
    close(fd);
    free(out);
    free(in);

    assert_true(srv_wait(&s, &s.closes, 1));
    ioloop_server_free(server);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.opens, 1);
    assert_int_equal(s.close_errs[0], 0);
    pthread_mutex_unlock(&s.lock);
    srv_destroy(&s);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Running out of fds at accept ------------------------------------------------------- */

/* What the fd-exhaustion test must undo whatever happens: its teardown restores the limit
 * and reaps the child even when an assertion ended the test early. */
static struct exhaustion {
    pid_t child;
    int cmd_w;                  /* parent -> child: the port, then EOF to stop */
    int report_r;               /* child -> parent: 'S' served, 'X' shed, per connection */
    struct rlimit saved;
    bool lowered;
    bool log_open;
    char dir[32];               /* holds the log file */
    char log_path[64];
} ex = { .child = -1, .cmd_w = -1, .report_r = -1 };

/*
 * The child: connects to the server every few ms (up to a bound), sends one byte on each,
 * and reports each connection's fate: echoed ('S', it stays open) or closed unanswered ('X',
 * shed by the acceptor). It stops when the command pipe reaches EOF. Only system calls here:
 * the child of a threaded process must not take locks.
 */
static void exhaustion_child(int cmd_r, int report_w)
{
    struct pollfd pfd[1 + EXHAUST_CHILD_CONNS];
    struct rlimit rl;
    struct sockaddr_in sin = { .sin_family = AF_INET };
    uint64_t last_open = 0, end;
    int port = 0, nconns = 0;

    /* Clients need fds whatever the parent did to its own limit. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (read(cmd_r, &port, sizeof port) != (ssize_t)sizeof port)
        _exit(0);
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    pfd[0].fd = cmd_r;
    pfd[0].events = POLLIN;
    end = test_now_us() + EXHAUST_CHILD_LIFETIME_S * 1000000ull;

    while (test_now_us() < end) {
        if (nconns < EXHAUST_CHILD_CONNS &&
            test_now_us() - last_open >= EXHAUST_CHILD_PACE_MS * 1000u) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

            last_open = test_now_us();
            if (fd < 0)
                _exit(2);
            if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
                send(fd, "x", 1, MSG_NOSIGNAL) != 1)
                _exit(3);
            pfd[1 + nconns].fd = fd;
            pfd[1 + nconns].events = POLLIN;
            nconns++;
        }
        if (poll(pfd, (nfds_t)(1 + nconns), EXHAUST_CHILD_PACE_MS) < 0 && errno != EINTR)
            _exit(4);
        if (pfd[0].revents)
            break; /* EOF on the command pipe: done */
        for (int i = 1; i <= nconns; i++) {
            char c;
            ssize_t n;

            if (pfd[i].fd < 0 || !pfd[i].revents)
                continue;
            n = read(pfd[i].fd, &c, 1);
            if (n == 1) {
                pfd[i].events = 0; /* served: keep it open, quietly */
                if (write(report_w, "S", 1) != 1)
                    _exit(5);
            } else if (n == 0 || errno == ECONNRESET) {
                close(pfd[i].fd);
                pfd[i].fd = -1; /* poll ignores it from now on */
                if (write(report_w, "X", 1) != 1)
                    _exit(5);
            }
        }
    }
    _exit(0);
}

/* Reads the child's reports for up to timeout_ms, or until `until` 'X' reports have come
 * (0: for the whole time); adds them to *served and *shed. */
static void read_reports(int fd, int timeout_ms, int until, int *served, int *shed)
{
    uint64_t end = test_now_us() + (uint64_t)timeout_ms * 1000u;
    int shed_here = 0;

    for (;;) {
        uint64_t now = test_now_us();
        char buf[256];
        ssize_t n;

        if (now >= end || (until > 0 && shed_here >= until))
            return;
        if (test_wait_fd(fd, POLLIN, (int)((end - now + 999) / 1000)) == 0)
            continue;
        n = read(fd, buf, sizeof buf);
        assert_true(n > 0);
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == 'S')
                ++*served;
            if (buf[i] == 'X') {
                ++*shed;
                shed_here++;
            }
        }
    }
}

static uint64_t cpu_time_us(void)
{
    struct rusage ru;

    assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static int exhaustion_teardown(void **state)
{
    (void)state;
    if (ex.lowered) {
        setrlimit(RLIMIT_NOFILE, &ex.saved);
        ex.lowered = false;
    }
    if (ex.cmd_w >= 0) {
        close(ex.cmd_w);
        ex.cmd_w = -1;
    }
    if (ex.child > 0) {
        kill(ex.child, SIGKILL);
        waitpid(ex.child, NULL, 0);
        ex.child = -1;
    }
    if (ex.report_r >= 0) {
        close(ex.report_r);
        ex.report_r = -1;
    }
    if (ex.log_open) {
        ioloop_log_close();
        ex.log_open = false;
    }
    if (ex.log_path[0] != '\0') {
        unlink(ex.log_path);
        ex.log_path[0] = '\0';
    }
    if (ex.dir[0] != '\0') {
        rmdir(ex.dir);
        ex.dir[0] = '\0';
    }
    return 0;
}

/* The number of WARN lines in the log file at path. */
static int count_warnings(const char *path)
{
    FILE *f = fopen(path, "re");
    char line[1024];
    int n = 0;

    assert_non_null(f);
    while (fgets(line, sizeof line, f) != NULL)
        if (strstr(line, " WARN ") != NULL)
            n++;
    fclose(f);
    return n;
}

static void test_server_fd_exhaustion_no_spin(void **state)
{
    int fds = test_count_fds();
    static struct srv s;
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    struct rlimit low;
    ioloop_log_options_t log_options = { .path = NULL };
    int cmd[2], report[2], port, served = 0, shed = 0, window_shed = 0, status, fd, warnings;
    uint64_t cpu0, wall0, cpu, wall, lowered_at, exhausted_us;
    char buf[4];

    (void)state;
    /* The child is forked first, while this process has no threads of the library. */
    assert_int_equal(pipe2(cmd, O_CLOEXEC), 0);
    assert_int_equal(pipe2(report, O_CLOEXEC), 0);
    ex.child = fork();
    assert_true(ex.child >= 0);
    if (ex.child == 0) {
        close(cmd[1]);
        close(report[0]);
        exhaustion_child(cmd[0], report[1]);
    }
    close(cmd[0]);
    close(report[1]);
    ex.cmd_w = cmd[1];
    ex.report_r = report[0];

    /* The library's warnings go to a log file, to be counted. */
    strcpy(ex.dir, "/tmp/ioloop-server-XXXXXX");
    assert_non_null(mkdtemp(ex.dir));
    snprintf(ex.log_path, sizeof ex.log_path, "%s/log", ex.dir);
    log_options.path = ex.log_path;
    log_options.level = IOLOOP_LOG_WARN;
    assert_int_equal(ioloop_log_open(&log_options), 0);
    ex.log_open = true;

    pool = ioloop_pool_new(1);
    assert_non_null(pool);
    srv_init(&s, pool);
    server = ioloop_server_new(pool, "127.0.0.1:0", &echo_handlers, &s);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    port = ioloop_server_port(server);

    /* Leave only a few free fd slots, then let the child connect. */
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &ex.saved), 0);
    low = ex.saved;
    low.rlim_cur = (rlim_t)(test_count_fds() + EXHAUST_FREE_SLOTS);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    ex.lowered = true;
    lowered_at = test_now_us();
    assert_int_equal(write(ex.cmd_w, &port, sizeof port), sizeof port);

    /* Accepting runs out of fds: the acceptor sheds a connection (or, if it does not, give
     * the clients a second to queue up). */
    read_reports(ex.report_r, EXHAUST_SETTLE_MS, 1, &served, &shed);

    /* While exhausted, with clients queueing up, the process stays nearly idle, and the
     * acceptor keeps trying (and shedding). */
    cpu0 = cpu_time_us();
    wall0 = test_now_us();
    read_reports(ex.report_r, EXHAUST_WINDOW_MS, 0, &served, &window_shed);
    cpu = cpu_time_us() - cpu0;
    wall = test_now_us() - wall0;
    if (cpu * 100 > wall * EXHAUST_MAX_CPU_PERCENT)
        fail_msg("%llu us of CPU in %llu us while out of fds: the acceptor spins",
                 (unsigned long long)cpu, (unsigned long long)wall);
    if (shed == 0 || window_shed == 0)
        fail_msg("out of fds, the acceptor shed %d connection(s) at first and %d in %d ms "
                 "after (%d served)", shed, window_shed, EXHAUST_WINDOW_MS, served);

    /* fds again: a new client is served. */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &ex.saved), 0);
    ex.lowered = false;
    exhausted_us = test_now_us() - lowered_at;
    fd = connect_tcp4(port);
    assert_true(fd >= 0);
    test_write_all(fd, "ping", 4);
    test_read_exact(fd, buf, 4);
    assert_memory_equal(buf, "ping", 4);
    close(fd);

    /* Stop and reap the child. */
    close(ex.cmd_w);
    ex.cmd_w = -1;
    assert_int_equal(waitpid(ex.child, &status, 0), ex.child);
    ex.child = -1;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(ex.report_r);
    ex.report_r = -1;

    ioloop_server_free(server);
    pthread_mutex_lock(&s.lock);
    assert_int_equal(s.wrong_thread, 0);
    assert_int_equal(s.nested, 0);
    pthread_mutex_unlock(&s.lock);
    srv_destroy(&s);
    ioloop_pool_free(pool);

    /* The acceptor warned, at most once a second. */
    ioloop_log_close();
    ex.log_open = false;
    warnings = count_warnings(ex.log_path);
    if (warnings < 1 || (uint64_t)warnings > exhausted_us / 1000000u + 1)
        fail_msg("%d warnings logged in %llu ms out of fds, want 1 to one a second", warnings,
                 (unsigned long long)(exhausted_us / 1000u));
    assert_int_equal(unlink(ex.log_path), 0);
    ex.log_path[0] = '\0';
    assert_int_equal(rmdir(ex.dir), 0);
    ex.dir[0] = '\0';
    assert_int_equal(test_count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_new_errors),
        cmocka_unit_test(test_server_port_and_start_once),
        cmocka_unit_test(test_server_echo_many_clients_two_loops),
        cmocka_unit_test(test_server_send_from_other_thread),
        cmocka_unit_test(test_server_send_order_per_thread),
        cmocka_unit_test(test_server_free_closes_connections),
        cmocka_unit_test(test_server_free_with_pending_output),
        cmocka_unit_test(test_server_unix_echo),
        cmocka_unit_test(test_server_unix_listen_failure_removes_file),
        cmocka_unit_test(test_server_ipv6_echo),
        cmocka_unit_test_teardown(test_server_fd_exhaustion_no_spin, exhaustion_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
