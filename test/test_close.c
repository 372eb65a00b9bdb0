/*
 * Unit tests of the close paths of part two (API.md §5): the lossless close (a megabyte
 * written and closed while the peer is still uploading arrives whole, followed by a clean end
 * of stream; without the peer's EOF the fd is closed after IOLOOP_CONN_LINGER_MS), half-close
 * with on_eof (replies from a timer and from another thread still go out) and without it
 * (EOF closes once the output drained), closing while connecting, ioloop_server_send() and
 * ioloop_server_call() against closing and closed connections (-ENOENT, send_dropped,
 * fn(NULL)), a server_send the connection cannot take (-ENOBUFS close, counted), ids of
 * closed and foreign connections, server_call reaching each loop of a pool, the order of
 * calls and sends from one thread, pause and resume inside on_data, and the one-owner rule:
 * ioloop_free(), ioloop_pool_free() and ioloop_server_free() cancel live connections (pending
 * on_flushed first, then on_close), also those on_close opens meanwhile and those still
 * connecting, and leave no fd and no memory behind. The test that frees a server after its
 * pool runs last: it ends the binary if the library touches the freed pool.
 *
 * Accepted connections come from a server on a one-loop pool, outgoing ones from a client loop
 * in a thread of its own; the peers are plain blocking sockets the test thread drives. Each
 * test checks that the fd count is restored.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn_helpers.h"
#include "helpers.h"

/* What the lossless-close peer uploads while the server closes. */
#define UPLOAD (200u * 1024)
/* What the linger test's server writes before closing. */
#define LINGER_REPLY (64u * 1024)
/* How far the linger close may come before the deadline seen from the peer (its EOF is
 * seen a moment after the shutdown the deadline counts from), and after it. */
#define LINGER_EARLY_MS 100
#define LINGER_LATE_MS 2000
/* The EOF-ended lingering close must come well before the linger deadline. */
#define EOF_CLOSE_MAX_MS 1000
/* Sends and calls of the order test. */
#define ORDER_STEPS 200

/* The connection, read in its loop's thread. */
static ioloop_conn_t *conn_of(struct tc_rec *r)
{
    ioloop_conn_t *conn;

    tc_lock(r);
    conn = r->conn;
    tc_unlock(r);
    if (conn == NULL)
        abort(); /* the test's connection closed before the test expected it */
    return conn;
}

static void check_clean(struct tc_rec *r)
{
    tc_lock(r);
    assert_int_equal(r->closes, 1);
    assert_int_equal(r->nested, 0);
    assert_int_equal(r->outside_loop, 0);
    assert_int_equal(r->after_close, 0);
    assert_int_equal(r->flushed_in_call, 0);
    assert_int_equal(r->depth, 0);
    tc_unlock(r);
}

static uint64_t id_of(struct tc_rec *r)
{
    uint64_t id;

    tc_lock(r);
    id = r->id;
    tc_unlock(r);
    return id;
}

static ioloop_server_stats_t stats_of(ioloop_server_t *server)
{
    ioloop_server_stats_t st;

    memset(&st, 0xff, sizeof st);
    ioloop_server_get_stats(server, &st);
    return st;
}

/* The event log without the events ev (a static buffer). */
static const char *log_without(struct tc_rec *r, char ev)
{
    static char out[TC_LOG_MAX + 1];
    size_t n = 0;

    tc_lock(r);
    for (size_t i = 0; i < r->nlog; i++)
        if (r->log[i] != ev)
            out[n++] = r->log[i];
    tc_unlock(r);
    out[n] = '\0';
    return out;
}

/* A server_call fn that only counts: rc[28] runs with a connection, rc[29] with NULL. */
static void count_call(ioloop_conn_t *conn, void *arg)
{
    struct tc_rec *r = arg;

    tc_lock(r);
    r->rc[conn != NULL ? 28 : 29]++;
    tc_unlock(r);
    tc_call_begin(r);
    tc_call_end(r);
}

static void close_call(ioloop_conn_t *conn, void *arg)
{
    (void)arg;
    if (conn != NULL)
        ioloop_conn_close(conn);
}

/* ---- Lossless close --------------------------------------------------------------------- */

/* The first chunk of the upload: answer with a megabyte and close at once. */
static size_t lossless_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);
    char *big;
    int rc;

    tc_event(r, conn, 'D', 0, len);
    if (tc_get(r, &r->datas) == 1) {
        big = tc_pattern_new(TC_BIG);
        rc = ioloop_conn_write(conn, big, TC_BIG);
        free(big);
        ioloop_conn_close(conn);
        tc_lock(r);
        r->rc[0] = rc;
        r->val[0] = len;
        r->val[1] = ioloop_conn_pending(conn);
        tc_unlock(r);
    }
    tc_leave(r);
    return len;
}

static void test_close_lossless_with_unread_upload(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open_small_sndbuf, .on_data = lossless_on_data,
        .on_close = tc_on_close,
    };
    char *upload = tc_pattern_new(UPLOAD);
    uint64_t closed_us;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);

    /* The whole upload first (it blocks unless the closing server keeps reading), then the
     * answer: every byte, then a clean end of stream, not a reset. */
    test_write_all(peer, upload, UPLOAD);
    tc_read_pattern(peer, 0, TC_BIG);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_true(tc_wait(&r, &r.datas, 1));
    tc_lock(&r);
    assert_int_equal(r.rc[0], 0);
    assert_true(r.val[0] > 0 && r.val[0] < UPLOAD);
    assert_true(r.val[1] > 0);
    /* Still waiting for our EOF. */
    assert_int_equal(r.closes, 0);
    tc_unlock(&r);

    /* Our EOF ends the lingering close at once. */
    closed_us = test_now_us();
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    /* Input after the close is discarded, never presented. */
    assert_int_equal(r.datas, 1);
    if (r.close_us - closed_us > EOF_CLOSE_MAX_MS * 1000ull)
        fail_msg("on_close %llu ms after the peer's EOF",
                 (unsigned long long)(r.close_us - closed_us) / 1000);
    free(upload);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

static size_t linger_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'D', 0, len);
    if (tc_get(r, &r->datas) == 1) {
        char *reply = tc_pattern_new(LINGER_REPLY);
        int rc = ioloop_conn_write(conn, reply, LINGER_REPLY);

        free(reply);
        ioloop_conn_close(conn);
        tc_lock(r);
        r->rc[0] = rc;
        tc_unlock(r);
    }
    tc_leave(r);
    return len;
}

static void test_close_linger_deadline_without_peer_eof(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = linger_on_data, .on_close = tc_on_close,
    };
    char more[1000];
    uint64_t eof_us, after_ms;
    int peer, err = -1;
    socklen_t len = sizeof err;
    char c;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    test_write_all(peer, "x", 1);
    tc_read_pattern(peer, 0, LINGER_REPLY);
    assert_int_equal(tc_read_eof(peer), 0);
    eof_us = test_now_us();
    /* More input while the server lingers: read and discarded, no reset. */
    memset(more, 'm', sizeof more);
    test_write_all(peer, more, sizeof more);

    /* We never shut down: the server closes the fd once the deadline passed. */
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.datas, 1);
    after_ms = (r.close_us - eof_us) / 1000;
    if (after_ms + LINGER_EARLY_MS < IOLOOP_CONN_LINGER_MS)
        fail_msg("the lingering close ended %llu ms after the shutdown, want %d",
                 (unsigned long long)after_ms, IOLOOP_CONN_LINGER_MS);
    if (after_ms > IOLOOP_CONN_LINGER_MS + LINGER_LATE_MS)
        fail_msg("the lingering close ended only %llu ms after the shutdown",
                 (unsigned long long)after_ms);
    /* The fd was closed with nothing unread: still a clean end of stream here. */
    assert_int_equal(getsockopt(peer, SOL_SOCKET, SO_ERROR, &err, &len), 0);
    assert_int_equal(err, 0);
    assert_int_equal(recv(peer, &c, 1, MSG_DONTWAIT), 0);
    assert_int_equal(close(peer), 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- Half-close ------------------------------------------------------------------------- */

static void reply_timer(ioloop_t *loop, void *arg)
{
    struct tc_rec *r = arg;
    static const char reply[] = "timer-reply;";
    int rc;

    (void)loop;
    tc_call_begin(r);
    rc = ioloop_conn_write(conn_of(r), reply, sizeof reply - 1);
    tc_lock(r);
    r->rc[0] = rc;
    r->val[0] = 1;
    tc_unlock(r);
    tc_call_end(r);
}

/* The peer shut down: the reply comes later, from a timer. */
static void reply_later_on_eof(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    int64_t id;

    tc_event(r, conn, 'E', 0, 0);
    id = ioloop_run_after(ioloop_conn_loop(conn), 20, reply_timer, r);
    tc_lock(r);
    r->rc[1] = id > 0 ? 0 : (int)id;
    tc_unlock(r);
    tc_leave(r);
}

static void test_close_half_close_on_eof_replies_later(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_eof = reply_later_on_eof,
        .on_close = tc_on_close,
    };
    static const char want[] = "timer-reply;send-reply;";
    char got[sizeof want - 1];
    ioloop_server_stats_t st;
    uint64_t id, eof_us;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    id = id_of(&r);
    test_write_all(peer, "REQUEST", 7);
    assert_int_equal(shutdown(peer, SHUT_WR), 0);

    assert_true(tc_wait(&r, &r.eofs, 1));
    assert_true(tc_wait_size(&r, &r.val[0], 1));
    tc_lock(&r);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.in_len, 7);
    assert_memory_equal(r.in, "REQUEST", 7);
    assert_int_equal(r.closes, 0);
    tc_unlock(&r);

    /* Half-closed with on_eof is still open: another thread's reply is taken too. */
    st = stats_of(sv.server);
    assert_int_equal(st.open, 1);
    assert_int_equal(ioloop_server_send(sv.server, id, "send-reply;", 11), 0);
    assert_int_equal(ioloop_server_call(sv.server, id, close_call, NULL), 0);
    test_read_exact(peer, got, sizeof got);
    assert_memory_equal(got, want, sizeof got);
    assert_int_equal(tc_read_eof(peer), 0);
    eof_us = test_now_us();

    /* The peer's EOF came long ago: no lingering for it, the close ends at once. */
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    if (r.close_us > eof_us && r.close_us - eof_us > EOF_CLOSE_MAX_MS * 1000ull)
        fail_msg("on_close %llu ms after the shutdown of a half-closed connection",
                 (unsigned long long)(r.close_us - eof_us) / 1000);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.eofs, 1);
    assert_int_equal(r.data_after_eof, 0);
    assert_string_equal(r.log, "ODEC");
    assert_int_equal(ioloop_server_send(sv.server, id, "late", 4), -ENOENT);
    st = stats_of(sv.server);
    assert_int_equal(st.open, 0);
    assert_int_equal(st.accepted, 1);
    assert_int_equal(st.send_dropped, 0);
    assert_int_equal(close(peer), 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* The request in full: a megabyte of answer, more than the peer's buffers take. */
static size_t big_answer_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'D', 0, len);
    tc_keep(r, data, len);
    if (tc_get_size(r, &r->in_len) == 7) {
        char *big = tc_pattern_new(TC_BIG);
        int rc = ioloop_conn_write(conn, big, TC_BIG);

        free(big);
        tc_lock(r);
        r->rc[0] = rc;
        r->val[0] = ioloop_conn_pending(conn);
        r->val[1] = 1;
        tc_unlock(r);
    }
    tc_leave(r);
    return len;
}

static void test_close_half_close_without_on_eof(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open_small_sndbuf, .on_data = big_answer_on_data,
        .on_close = tc_on_close,
    };
    uint64_t id, deadline;
    int peer, rc, accepted = 0;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    id = id_of(&r);
    test_write_all(peer, "REQUEST", 7);
    assert_int_equal(shutdown(peer, SHUT_WR), 0);
    assert_true(tc_wait_size(&r, &r.val[1], 1));
    assert_int_equal(r.rc[0], 0);
    assert_true(r.val[0] > 0);

    /* The EOF came with output pending: the connection is closing, no longer open. The loop
     * notices the EOF on its own time; poll for it (bounded). */
    deadline = test_now_us() + TEST_WAIT_MS * 1000ull;
    while ((rc = ioloop_server_call(sv.server, id, count_call, &r)) == 0 &&
           test_now_us() < deadline) {
        accepted++;
        poll(NULL, 0, 1);
    }
    assert_int_equal(rc, -ENOENT);
    assert_int_equal(ioloop_server_send(sv.server, id, "x", 1), -ENOENT);
    assert_int_equal(stats_of(sv.server).open, 0);
    assert_int_equal(tc_get(&r, &r.closes), 0);

    /* The peer still gets every byte of the answer, then the end of the stream. */
    tc_read_pattern(peer, 0, TC_BIG);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    tc_settle(sv.loop); /* behind every call accepted */
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    /* Every call accepted ran once (with NULL if the EOF came in between). */
    assert_int_equal(r.rc[28] + r.rc[29], accepted);
    assert_int_equal(ioloop_server_send(sv.server, id, "x", 1), -ENOENT);
    assert_int_equal(stats_of(sv.server).send_dropped, 0);
    assert_int_equal(close(peer), 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- Closing while connecting ----------------------------------------------------------- */

static const ioloop_conn_handlers_t client_handlers = {
    .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
};

/* Connects, writes, closes at once (the connect cannot have completed), then tries the rest. */
static void connect_close_fn(void *arg)
{
    struct tc_rec *r = arg;
    struct iovec iov[2] = {
        { .iov_base = "before", .iov_len = 6 }, { .iov_base = "-close", .iov_len = 6 },
    };
    ioloop_conn_t *conn = ioloop_connect(r->loop, r->test, &client_handlers, r);

    if (conn == NULL)
        abort();
    tc_call_begin(r);
    r->rc[0] = ioloop_conn_write(conn, "hello-", 6);
    r->rc[1] = ioloop_conn_writev(conn, iov, 2);
    r->rc[2] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    ioloop_conn_close(conn);
    r->rc[3] = ioloop_conn_write(conn, "x", 1);
    r->rc[4] = ioloop_conn_writev(conn, iov, 2);
    r->rc[5] = ioloop_conn_pause(conn);
    r->rc[6] = ioloop_conn_resume(conn);
    r->rc[7] = ioloop_conn_set_idle_timeout(conn, 10);
    r->rc[8] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(2));
    r->rc[9] = ioloop_conn_set_limits(conn, 0, 0);
    r->val[0] = ioloop_conn_pending(conn);
    tc_call_end(r);
}

static void test_close_while_connecting(void **state)
{
    static struct tc_client c;
    static struct tc_rec r;
    static const char want[] = "hello-before-close";
    char address[64], got[sizeof want - 1];
    int lfd, port, peer;

    (void)state;
    tc_client_open(&c);
    tc_rec_init(&r, c.loop);
    lfd = tc_listen(&port, 0);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    r.test = address;
    tc_run_in_loop(c.loop, connect_close_fn, &r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.rc[2], 0);
    for (int i = 3; i <= 9; i++)
        if (r.rc[i] != -EPIPE)
            fail_msg("call %d after ioloop_conn_close() while connecting returned %d, want "
                     "-EPIPE", i, r.rc[i]);
    assert_int_equal(r.val[0], 18);

    /* The bytes written before the close go out once connected, then the end of stream. */
    peer = tc_accept(lfd);
    test_read_exact(peer, got, sizeof got);
    assert_memory_equal(got, want, sizeof got);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.flushes, 1);
    assert_int_equal(r.flush_err[1], 0);
    /* Whether on_open runs for a connection closed while connecting is not specified. */
    assert_string_equal(log_without(&r, 'O'), "1C");
    assert_int_equal(close(lfd), 0);
    tc_client_close(&c);
    assert_int_equal(test_count_fds(), c.fds);
    tc_rec_destroy(&r);
}

/* A TCP socket bound to 127.0.0.1 on an ephemeral port, not listening. */
static int bound_not_listening(int *port)
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

/* Connects to a port nobody listens on, writes, asks to be told, closes. */
static void connect_refused_close_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = ioloop_connect(r->loop, r->test, &client_handlers, r);

    if (conn == NULL)
        abort();
    tc_call_begin(r);
    r->rc[0] = ioloop_conn_write(conn, "lost", 4);
    r->rc[1] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    ioloop_conn_close(conn);
    tc_call_end(r);
}

static void test_close_while_connecting_refused(void **state)
{
    static struct tc_client c;
    static struct tc_rec r;
    char address[64];
    int fd, port;

    (void)state;
    tc_client_open(&c);
    tc_rec_init(&r, c.loop);
    /* Bound and not listening: the port is ours and refuses. */
    fd = bound_not_listening(&port);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    r.test = address;
    tc_run_in_loop(c.loop, connect_refused_close_fn, &r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    /* The connect failed: the waiting callback gets on_close's error, before it. */
    assert_int_equal(r.close_err, -ECONNREFUSED);
    assert_int_equal(r.flush_err[1], -ECONNREFUSED);
    assert_string_equal(r.log, "1C");
    assert_int_equal(close(fd), 0);
    tc_client_close(&c);
    assert_int_equal(test_count_fds(), c.fds);
    tc_rec_destroy(&r);
}

/* ---- server_send and server_call against closing connections ---------------------------- */

static void write_big_close_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char *big = tc_pattern_new(TC_BIG);

    r->rc[0] = ioloop_conn_write(conn, big, TC_BIG);
    free(big);
    ioloop_conn_close(conn);
    r->val[0] = ioloop_conn_pending(conn);
}

static void test_close_server_send_to_closing_enoent(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open_small_sndbuf, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    ioloop_server_stats_t st;
    uint64_t id;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    id = id_of(&r);
    tc_run_in_loop(sv.loop, write_big_close_fn, &r);
    assert_int_equal(r.rc[0], 0);
    assert_true(r.val[0] > 0);

    /* Closing with output pending: not open any more. */
    assert_int_equal(ioloop_server_send(sv.server, id, "x", 1), -ENOENT);
    assert_int_equal(ioloop_server_call(sv.server, id, count_call, &r), -ENOENT);
    st = stats_of(sv.server);
    assert_int_equal(st.open, 0);
    assert_int_equal(st.accepted, 1);
    assert_int_equal(tc_get(&r, &r.closes), 0);

    tc_read_pattern(peer, 0, TC_BIG);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    tc_settle(sv.loop);
    assert_int_equal(r.rc[28] + r.rc[29], 0);
    assert_int_equal(stats_of(sv.server).send_dropped, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* Holds the loop until the test writes to the pipe in r->rc[30], then closes. */
static void block_then_close_call(ioloop_conn_t *conn, void *arg)
{
    struct tc_rec *r = arg;
    char c;
    int fd;

    tc_lock(r);
    fd = r->rc[30];
    r->rc[27] = conn != NULL;
    tc_unlock(r);
    if (test_wait_fd(fd, POLLIN, TEST_WAIT_MS) != 1 || read(fd, &c, 1) != 1)
        abort();
    if (conn != NULL)
        ioloop_conn_close(conn);
}

static void test_close_send_dropped_counted(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    char a[1000], b[234];
    uint64_t id;
    int peer, p[2];

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    assert_int_equal(pipe(p), 0);
    peer = tc_server_client(&sv, &r, 0);
    id = id_of(&r);
    tc_lock(&r);
    r.rc[30] = p[0];
    tc_unlock(&r);
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);

    /* While the loop is held, the connection is open: both sends are accepted. The call
     * ahead of them then closes it, so they are dropped, and the call behind them finds it
     * closing or already closed. */
    assert_int_equal(ioloop_server_call(sv.server, id, block_then_close_call, &r), 0);
    assert_int_equal(ioloop_server_send(sv.server, id, a, sizeof a), 0);
    assert_int_equal(ioloop_server_send(sv.server, id, b, sizeof b), 0);
    assert_int_equal(ioloop_server_call(sv.server, id, count_call, &r), 0);
    assert_int_equal(write(p[1], "go", 1), 1);

    /* Not a byte of them reaches the peer. */
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    /* The peer's EOF may end the linger before the loop runs the queued sends and the call:
     * a round trip behind them (posted from this thread, so after them) settles that. */
    tc_settle(sv.loop);
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.rc[27], 1);
    assert_int_equal(r.rc[28], 0);
    assert_int_equal(r.rc[29], 1);
    assert_int_equal(stats_of(sv.server).send_dropped, sizeof a + sizeof b);
    close(p[0]);
    close(p[1]);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* The output limit in r->val[6]. */
static void set_out_limit_fn(void *arg)
{
    struct tc_rec *r = arg;

    r->rc[0] = ioloop_conn_set_limits(conn_of(r), 0, r->val[6]);
}

static void test_close_server_send_over_limit_closes(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    static char big[2000];
    char got[500];
    uint64_t id;
    int peer, end;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    id = id_of(&r);
    r.val[6] = 1000;
    tc_run_in_loop(sv.loop, set_out_limit_fn, &r);
    assert_int_equal(r.rc[0], 0);
    tc_pattern_fill(big, 0, sizeof big);

    /* Within the limit: delivered. */
    assert_int_equal(ioloop_server_send(sv.server, id, big, sizeof got), 0);
    test_read_exact(peer, got, sizeof got);
    assert_memory_equal(got, big, sizeof got);
    /* Past it: the connection cannot take the bytes, so it closes rather than go on with a
     * hole in its stream; the bytes are counted as dropped. */
    assert_int_equal(ioloop_server_send(sv.server, id, big, sizeof big), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, -ENOBUFS);
    assert_int_equal(stats_of(sv.server).send_dropped, sizeof big);
    assert_int_equal(ioloop_server_send(sv.server, id, big, 1), -ENOENT);
    end = tc_read_eof(peer);
    assert_true(end == 0 || end == -ECONNRESET);
    assert_int_equal(close(peer), 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* Connects from the pool's loop to the server itself: a connection the server does not own. */
static void connect_self_fn(void *arg)
{
    struct tc_rec *rc = arg;

    if (ioloop_connect(rc->loop, rc->test, &client_handlers, rc) == NULL)
        abort();
}

static void close_client_fn(void *arg)
{
    ioloop_conn_close(conn_of(arg));
}

static void test_close_ids_of_others_and_closed_enoent(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r, rc;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    char address[64], got[5];
    uint64_t id1, id2, cid;
    int p1, p2;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);

    /* A closed connection's id stays unknown, also once its slot serves another one. */
    p1 = tc_server_client(&sv, &r, 0);
    id1 = id_of(&r);
    assert_int_equal(close(p1), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    p2 = tc_server_client(&sv, &r, 0);
    id2 = id_of(&r);
    assert_true(id1 != id2 && id2 != 0);
    assert_int_equal(ioloop_server_send(sv.server, id1, "stale", 5), -ENOENT);
    assert_int_equal(ioloop_server_call(sv.server, id1, count_call, &r), -ENOENT);
    assert_int_equal(ioloop_server_send(sv.server, id2, "fresh", 5), 0);
    test_read_exact(p2, got, sizeof got);
    assert_memory_equal(got, "fresh", 5);

    /* A connection of the same loop that the server did not accept is not the server's. */
    tc_rec_init(&rc, sv.loop);
    snprintf(address, sizeof address, "127.0.0.1:%d", sv.port);
    rc.test = address;
    tc_run_in_loop(sv.loop, connect_self_fn, &rc);
    assert_true(tc_wait(&rc, &rc.opens, 1));
    assert_true(tc_wait(&r, &r.opens, 3));
    cid = id_of(&rc);
    assert_true(cid != 0 && cid != id2);
    assert_int_equal(ioloop_server_send(sv.server, cid, "x", 1), -ENOENT);
    assert_int_equal(ioloop_server_call(sv.server, cid, count_call, &r), -ENOENT);

    tc_run_in_loop(sv.loop, close_client_fn, &rc);
    assert_true(tc_wait(&rc, &rc.closes, 1));
    assert_int_equal(close(p2), 0);
    assert_true(tc_wait(&r, &r.closes, 3));
    tc_settle(sv.loop);
    tc_lock(&r);
    assert_int_equal(r.rc[28] + r.rc[29], 0);
    assert_int_equal(r.nested, 0);
    assert_int_equal(r.outside_loop, 0);
    tc_unlock(&r);
    assert_int_equal(rc.close_err, 0);
    assert_int_equal(rc.in_len, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&rc);
    tc_rec_destroy(&r);
}

/* ---- server_call ------------------------------------------------------------------------ */

struct where {
    struct tc_rec *r;
    ioloop_conn_t *conn;
    ioloop_t *current;
    pthread_t thread;
};

/* Notes where it ran, into a heap arg it frees (ASan reports it if fn never runs). */
static void where_call(ioloop_conn_t *conn, void *arg)
{
    struct where *w = arg;
    struct tc_rec *r = w->r;

    tc_lock(r);
    r->rc[0]++;
    if (conn == NULL)
        r->rc[1]++;
    else if (conn != r->conn)
        r->rc[2]++;
    if (ioloop_current() != r->loop)
        r->rc[3]++;
    tc_unlock(r);
    free(w);
    tc_call_begin(r);
    tc_call_end(r);
}

static void never_call(ioloop_conn_t *conn, void *arg)
{
    struct tc_rec *r = arg;

    (void)conn;
    tc_lock(r);
    r->rc[4]++;
    tc_unlock(r);
}

static void test_close_server_call_runs_once_in_loop(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    struct where *w;
    uint64_t id;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    id = id_of(&r);

    /* Errors: fn never runs. */
    assert_int_equal(ioloop_server_call(NULL, id, never_call, &r), -EINVAL);
    assert_int_equal(ioloop_server_call(sv.server, id, NULL, &r), -EINVAL);
    assert_int_equal(ioloop_server_call(sv.server, 0, never_call, &r), -ENOENT);
    assert_int_equal(ioloop_server_call(sv.server, id ^ ((uint64_t)1 << 40), never_call, &r),
                     -ENOENT);

    /* Open: once, in the loop's thread, with the connection. */
    w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->r = &r;
    assert_int_equal(ioloop_server_call(sv.server, id, where_call, w), 0);
    assert_true(tc_wait(&r, &r.rc[0], 1));
    tc_settle(sv.loop);
    tc_lock(&r);
    assert_int_equal(r.rc[0], 1);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.rc[2], 0);
    assert_int_equal(r.rc[3], 0);
    tc_unlock(&r);

    /* Closed: -ENOENT, and fn never runs. */
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(ioloop_server_call(sv.server, id, never_call, &r), -ENOENT);
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.rc[4]), 0);
    assert_int_equal(tc_get(&r, &r.rc[0]), 1);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* Connections of a two-loop pool, noted by on_open. */
#define SPREAD_CONNS 6

struct spread {
    pthread_mutex_t lock;
    int n;
    ioloop_conn_t *conn[SPREAD_CONNS];
    ioloop_t *loop[SPREAD_CONNS];
    uint64_t id[SPREAD_CONNS];
    int ran[SPREAD_CONNS], wrong[SPREAD_CONNS];
};

static struct spread spread = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void spread_on_open(ioloop_conn_t *conn)
{
    pthread_mutex_lock(&spread.lock);
    if (spread.n < SPREAD_CONNS) {
        spread.conn[spread.n] = conn;
        spread.loop[spread.n] = ioloop_current();
        spread.id[spread.n] = ioloop_conn_id(conn);
        spread.n++;
    }
    pthread_mutex_unlock(&spread.lock);
}

static size_t spread_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    (void)conn;
    (void)data;
    return len;
}

static void spread_call(ioloop_conn_t *conn, void *arg)
{
    int i = (int)(uintptr_t)arg;

    pthread_mutex_lock(&spread.lock);
    spread.ran[i]++;
    if (conn != spread.conn[i] || ioloop_current() != spread.loop[i] ||
        ioloop_conn_loop(conn) != spread.loop[i])
        spread.wrong[i]++;
    pthread_mutex_unlock(&spread.lock);
}

static void test_close_server_call_finds_each_loop(void **state)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = spread_on_open, .on_data = spread_on_data,
    };
    int fds = test_count_fds(), peers[SPREAD_CONNS], loops = 0;
    ioloop_pool_t *pool = ioloop_pool_new(2);
    ioloop_server_t *server;
    uint64_t deadline;

    (void)state;
    assert_non_null(pool);
    server = ioloop_server_new(pool, "127.0.0.1:0", &handlers, NULL);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    for (int i = 0; i < SPREAD_CONNS; i++) {
        /* One at a time, so that index i is the i-th connection opened. */
        peers[i] = tc_connect(ioloop_server_port(server), 0);
        deadline = test_now_us() + TEST_WAIT_MS * 1000ull;
        for (;;) {
            int n;

            pthread_mutex_lock(&spread.lock);
            n = spread.n;
            pthread_mutex_unlock(&spread.lock);
            if (n > i)
                break;
            assert_true(test_now_us() < deadline);
            assert_int_equal(test_wait_fd(peers[i], POLLIN, 1), 0);
        }
    }
    pthread_mutex_lock(&spread.lock);
    for (int i = 0; i < SPREAD_CONNS; i++)
        loops += spread.loop[i] == ioloop_pool_loop(pool, 1);
    pthread_mutex_unlock(&spread.lock);
    /* Round-robin: both loops have connections. */
    assert_true(loops > 0 && loops < SPREAD_CONNS);

    for (int i = 0; i < SPREAD_CONNS; i++)
        assert_int_equal(ioloop_server_call(server, spread.id[i], spread_call,
                                            (void *)(uintptr_t)i), 0);
    for (int l = 0; l < 2; l++) {
        tc_run_in_loop(ioloop_pool_loop(pool, l), NULL, NULL);
        tc_run_in_loop(ioloop_pool_loop(pool, l), NULL, NULL);
    }
    pthread_mutex_lock(&spread.lock);
    for (int i = 0; i < SPREAD_CONNS; i++) {
        assert_int_equal(spread.ran[i], 1);
        assert_int_equal(spread.wrong[i], 0);
    }
    pthread_mutex_unlock(&spread.lock);

    ioloop_server_free(server);
    ioloop_pool_free(pool);
    for (int i = 0; i < SPREAD_CONNS; i++)
        assert_int_equal(close(peers[i]), 0);
    assert_int_equal(test_count_fds(), fds);
}

/* A call of the order test: writes "c<nnn>;". */
static void order_call(ioloop_conn_t *conn, void *arg)
{
    char buf[8];

    if (conn == NULL)
        return;
    snprintf(buf, sizeof buf, "c%03d;", (int)(uintptr_t)arg);
    if (ioloop_conn_write(conn, buf, 5) != 0)
        abort();
}

static void test_close_server_call_ordered_with_sends(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    static char want[ORDER_STEPS * 5 + 1], got[ORDER_STEPS * 5];
    uint64_t id;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    id = id_of(&r);
    for (int i = 0; i < ORDER_STEPS; i++) {
        char buf[8];

        snprintf(buf, sizeof buf, "%c%03d;", i % 3 == 0 ? 'c' : 's', i);
        memcpy(want + i * 5, buf, 5);
        if (i % 3 == 0)
            assert_int_equal(ioloop_server_call(sv.server, id, order_call,
                                                (void *)(uintptr_t)i), 0);
        else
            assert_int_equal(ioloop_server_send(sv.server, id, buf, 5), 0);
    }
    assert_int_equal(ioloop_server_call(sv.server, id, close_call, NULL), 0);
    test_read_exact(peer, got, sizeof got);
    assert_memory_equal(got, want, sizeof got);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- Pause and resume inside on_data ---------------------------------------------------- */

/* 1st call: pause and resume, consume 3. 2nd: consume nothing. Then: everything. In the
 * "resume later" variant (rc[20] set), the 1st call only pauses. */
static size_t pause_resume_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);
    size_t used = len;
    bool later;
    int n;

    tc_event(r, conn, 'D', 0, len);
    tc_show(r, data, len);
    tc_lock(r);
    n = r->datas;
    later = r->rc[20] != 0;
    tc_unlock(r);
    if (n == 1) {
        int rc1 = ioloop_conn_pause(conn);
        int rc2 = later ? 0 : ioloop_conn_resume(conn);

        tc_lock(r);
        r->rc[0] = rc1;
        r->rc[1] = rc2;
        tc_unlock(r);
        used = 3;
    } else if (n == 2 && !later) {
        used = 0;
    }
    tc_keep(r, data, used);
    tc_leave(r);
    return used;
}

static const ioloop_conn_handlers_t pause_handlers = {
    .on_open = tc_on_open, .on_data = pause_resume_on_data, .on_close = tc_on_close,
};

static void test_close_pause_resume_inside_on_data(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &pause_handlers);
    peer = tc_server_client(&sv, &r, 0);
    test_write_all(peer, "ABCDEFGH", 8);
    /* Presented again without a new byte arriving. */
    if (!tc_wait(&r, &r.datas, 2))
        fail_msg("input left after a pause and resume inside on_data was not presented "
                 "again (%d on_data calls)", tc_get(&r, &r.datas));
    tc_lock(&r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.shown[0], 8);
    assert_memory_equal(r.shown_data[0], "ABCDEFGH", 8);
    assert_int_equal(r.shown[1], 5);
    assert_memory_equal(r.shown_data[1], "DEFGH", 5);
    tc_unlock(&r);
    /* Then with the bytes that follow. */
    test_write_all(peer, "IJ", 2);
    assert_true(tc_wait(&r, &r.datas, 3));
    tc_lock(&r);
    assert_int_equal(r.shown[2], 7);
    assert_memory_equal(r.shown_data[2], "DEFGHIJ", 7);
    tc_unlock(&r);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.datas, 3);
    assert_int_equal(r.in_len, 10);
    assert_memory_equal(r.in, "ABCDEFGHIJ", 10);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

static void resume_fn(void *arg)
{
    struct tc_rec *r = arg;

    r->rc[2] = ioloop_conn_resume(conn_of(r));
}

static void test_close_pause_in_on_data_resume_later(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    r.rc[20] = 1;
    tc_server_open(&sv, &r, &pause_handlers);
    peer = tc_server_client(&sv, &r, 0);
    test_write_all(peer, "ABCDEFGH", 8);
    assert_true(tc_wait(&r, &r.datas, 1));
    /* Paused: nothing is presented, neither the rest nor new bytes. */
    test_write_all(peer, "IJ", 2);
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.datas), 1);

    /* Resumed from a loop callback: the rest comes first, then "IJ" (in the same call or
     * the next). */
    tc_run_in_loop(sv.loop, resume_fn, &r);
    assert_int_equal(r.rc[2], 0);
    assert_true(tc_wait_size(&r, &r.in_len, 10));
    tc_lock(&r);
    assert_int_equal(r.rc[0], 0);
    assert_true(r.nshown >= 2);
    assert_true(r.shown[1] == 5 || r.shown[1] == 7);
    assert_memory_equal(r.shown_data[1], "DEFGHIJ", r.shown[1]);
    assert_memory_equal(r.in, "ABCDEFGHIJ", 10);
    tc_unlock(&r);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- One owner: freeing with live connections ------------------------------------------- */

/* on_open: a megabyte the peer never reads, and two callbacks waiting behind it. */
static void stuck_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    int size = TC_SMALL_BUF;
    char *big = tc_pattern_new(TC_BIG);
    int rc1, rc2, rc3;

    if (setsockopt(ioloop_conn_fd(conn), SOL_SOCKET, SO_SNDBUF, &size, sizeof size) != 0)
        abort();
    rc1 = ioloop_conn_write(conn, big, TC_BIG);
    rc2 = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    rc3 = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(2));
    free(big);
    tc_lock(r);
    r->rc[0] = rc1;
    r->rc[1] = rc2;
    r->rc[2] = rc3;
    tc_unlock(r);
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

static const ioloop_conn_handlers_t stuck_handlers = {
    .on_open = stuck_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
};

/* Checks a connection cancelled by a free in the test thread: log, errors, thread. */
static void check_cancelled(struct tc_rec *r, const char *log, int callbacks)
{
    tc_lock(r);
    assert_int_equal(r->closes, 1);
    assert_int_equal(r->close_err, -ECANCELED);
    assert_string_equal(r->log, log);
    for (const char *p = log; *p; p++)
        if (*p >= '0' && *p <= '9')
            assert_int_equal(r->flush_err[*p - '0'], -ECANCELED);
    /* The cancelling callbacks ran in the freeing thread, none elsewhere, none nested. */
    assert_int_equal(r->outside_loop, callbacks);
    assert_int_equal(r->outside_owner, 0);
    assert_int_equal(r->nested, 0);
    assert_int_equal(r->after_close, 0);
    tc_unlock(r);
}

struct owner_test {
    struct tc_rec a, b, c;
    char address[64];
};

static void owner_connect_fn(void *arg)
{
    struct owner_test *t = arg;

    if (ioloop_connect(t->a.loop, t->address, &stuck_handlers, &t->a) == NULL ||
        ioloop_connect(t->b.loop, t->address, &client_handlers, &t->b) == NULL)
        abort();
}

/* A third connection whose connect is still in progress when the loop stops. */
static void owner_connect_stop_fn(void *arg)
{
    struct owner_test *t = arg;

    if (ioloop_connect(t->c.loop, t->address, &client_handlers, &t->c) == NULL)
        abort();
    ioloop_stop(t->c.loop);
}

static void test_close_loop_free_cancels_connections(void **state)
{
    static struct owner_test t;
    int fds = test_count_fds();
    test_loop_thread_t thread;
    ioloop_t *loop = ioloop_new();
    int lfd, port, pa, pb;

    (void)state;
    assert_non_null(loop);
    tc_rec_init(&t.a, loop);
    tc_rec_init(&t.b, loop);
    tc_rec_init(&t.c, loop);
    lfd = tc_listen(&port, TC_SMALL_BUF);
    snprintf(t.address, sizeof t.address, "127.0.0.1:%d", port);
    test_loop_thread_start(&thread, loop);
    tc_run_in_loop(loop, owner_connect_fn, &t);
    pa = tc_accept(lfd);
    pb = tc_accept(lfd);
    assert_true(tc_wait(&t.a, &t.a.opens, 1));
    assert_true(tc_wait(&t.b, &t.b.opens, 1));
    assert_int_equal(t.a.rc[0], 0);
    assert_int_equal(t.a.rc[1], 0);
    assert_int_equal(t.a.rc[2], 0);
    tc_run_in_loop(loop, owner_connect_stop_fn, &t);
    assert_int_equal(test_loop_thread_join(&thread), 0);
    assert_int_equal(tc_get(&t.a, &t.a.closes) + tc_get(&t.b, &t.b.closes) +
                         tc_get(&t.c, &t.c.closes),
                     0);

    /* The loop's owner frees it: each connection is cancelled here, flushes first. */
    ioloop_free(loop);
    check_cancelled(&t.a, "O12C", 3);
    check_cancelled(&t.b, "OC", 1);
    check_cancelled(&t.c, "C", 1);

    /* No fd left behind: only the peers and the listener remain, and then nothing. */
    assert_int_equal(close(pa), 0);
    assert_int_equal(close(pb), 0);
    assert_int_equal(close(lfd), 0);
    assert_int_equal(test_count_fds(), fds);
    tc_rec_destroy(&t.a);
    tc_rec_destroy(&t.b);
    tc_rec_destroy(&t.c);
}

/*
 * The server freed while its loop no longer runs: its connections are closed when
 * ioloop_free() closes them (server.h), in the freeing thread, and the server is freed too:
 * nothing is left behind (a server kept alive is memory LeakSanitizer reports at exit).
 */
static void test_close_server_free_with_stopped_loop(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &stuck_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    ioloop_stop(sv.loop);
    assert_int_equal(ioloop_server_send(sv.server, id_of(&r), "x", 1), -ESHUTDOWN);
    assert_int_equal(ioloop_server_call(sv.server, id_of(&r), count_call, &r), -ESHUTDOWN);
    ioloop_server_free(sv.server);
    sv.server = NULL; /* gone: LeakSanitizer must not find it through here */
    ioloop_pool_free(sv.pool);
    sv.pool = NULL;
    check_cancelled(&r, "O12C", 3);
    assert_int_equal(r.rc[28] + r.rc[29], 0);
    assert_int_equal(close(peer), 0);
    assert_int_equal(test_count_fds(), sv.fds);
    tc_rec_destroy(&r);
}

/* on_close that connects again (a naive reconnecting client), at most rc[0] times. */
static void reconnect_on_close(ioloop_conn_t *conn, int err);

static const ioloop_conn_handlers_t reconnect_handlers = {
    .on_open = tc_on_open, .on_data = tc_on_data, .on_close = reconnect_on_close,
};

static void reconnect_on_close(ioloop_conn_t *conn, int err)
{
    struct tc_rec *r = tc_enter(conn);
    ioloop_t *loop = ioloop_conn_loop(conn);
    bool again;

    tc_event(r, conn, 'C', err, 0);
    tc_lock(r);
    again = r->rc[1] < r->rc[0];
    if (again)
        r->rc[1]++;
    tc_unlock(r);
    if (again) {
        ioloop_conn_t *next = ioloop_connect(loop, r->test, &reconnect_handlers, r);

        tc_lock(r);
        if (next == NULL)
            r->rc[2]++;
        tc_unlock(r);
    }
    tc_leave(r);
}

static void reconnect_first_fn(void *arg)
{
    struct tc_rec *r = arg;

    if (ioloop_connect(r->loop, r->test, &reconnect_handlers, r) == NULL)
        abort();
}

/* Connections opened by on_close while ioloop_free() cancels are cancelled too. */
static void test_close_loop_free_cancels_reconnects(void **state)
{
    static struct tc_client c;
    static struct tc_rec r;
    char address[64];
    int lfd, port, peer;

    (void)state;
    tc_client_open(&c);
    tc_rec_init(&r, c.loop);
    lfd = tc_listen(&port, 0);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    r.test = address;
    r.rc[0] = 3;
    tc_run_in_loop(c.loop, reconnect_first_fn, &r);
    peer = tc_accept(lfd);
    assert_true(tc_wait(&r, &r.opens, 1));
    ioloop_stop(c.loop);
    assert_int_equal(test_loop_thread_join(&c.thread), 0);
    ioloop_free(c.loop);
    c.loop = NULL;

    /* The first connection and the three made by on_close: all cancelled, here. */
    tc_lock(&r);
    assert_int_equal(r.closes, 4);
    assert_int_equal(r.close_err, -ECANCELED);
    assert_int_equal(r.rc[1], 3);
    assert_int_equal(r.rc[2], 0);
    assert_int_equal(r.outside_owner, 0);
    assert_int_equal(r.nested, 0);
    tc_unlock(&r);
    assert_int_equal(close(peer), 0);
    assert_int_equal(close(lfd), 0);
    assert_int_equal(test_count_fds(), c.fds);
    tc_rec_destroy(&r);
}

static void test_close_pool_free_cancels_accepted(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &stuck_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.rc[2], 0);

    /* The pool goes first: its loops are freed here, cancelling the accepted connection in
     * this thread. The server is freed after, with nothing left to close. */
    ioloop_pool_free(sv.pool);
    check_cancelled(&r, "O12C", 3);
    ioloop_server_free(sv.server);
    assert_int_equal(close(peer), 0);
    assert_int_equal(test_count_fds(), sv.fds);
    tc_rec_destroy(&r);
}

static void test_close_server_free_cancels_flushed(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &stuck_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    assert_int_equal(r.rc[1], 0);

    /* server_free cancels in the connection's own loop thread, flushes first. */
    ioloop_server_free(sv.server);
    tc_lock(&r);
    assert_int_equal(r.closes, 1);
    assert_int_equal(r.close_err, -ECANCELED);
    assert_string_equal(r.log, "O12C");
    assert_int_equal(r.flush_err[1], -ECANCELED);
    assert_int_equal(r.flush_err[2], -ECANCELED);
    assert_int_equal(r.outside_loop, 0);
    assert_int_equal(r.nested, 0);
    tc_unlock(&r);
    ioloop_pool_free(sv.pool);
    assert_int_equal(close(peer), 0);
    assert_int_equal(test_count_fds(), sv.fds);
    tc_rec_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_lossless_with_unread_upload),
        cmocka_unit_test(test_close_linger_deadline_without_peer_eof),
        cmocka_unit_test(test_close_half_close_on_eof_replies_later),
        cmocka_unit_test(test_close_half_close_without_on_eof),
        cmocka_unit_test(test_close_while_connecting),
        cmocka_unit_test(test_close_while_connecting_refused),
        cmocka_unit_test(test_close_server_send_to_closing_enoent),
        cmocka_unit_test(test_close_send_dropped_counted),
        cmocka_unit_test(test_close_server_send_over_limit_closes),
        cmocka_unit_test(test_close_ids_of_others_and_closed_enoent),
        cmocka_unit_test(test_close_server_call_runs_once_in_loop),
        cmocka_unit_test(test_close_server_call_finds_each_loop),
        cmocka_unit_test(test_close_server_call_ordered_with_sends),
        cmocka_unit_test(test_close_pause_resume_inside_on_data),
        cmocka_unit_test(test_close_pause_in_on_data_resume_later),
        cmocka_unit_test(test_close_loop_free_cancels_connections),
        cmocka_unit_test(test_close_loop_free_cancels_reconnects),
        cmocka_unit_test(test_close_server_free_cancels_flushed),
        cmocka_unit_test(test_close_server_free_with_stopped_loop),
        /* Last: it frees the server after its pool. */
        cmocka_unit_test(test_close_pool_free_cancels_accepted),
    };

    tc_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
