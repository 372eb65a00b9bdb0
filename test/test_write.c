/*
 * Unit tests of the write path of part two (API.md §5, include/ioloop/server.h "Writing"):
 * answers to pipelined requests leave in one segment, output order across ioloop_conn_write(),
 * ioloop_conn_writev() and ioloop_server_send() with large writes among small ones, the
 * caller's buffer being free again when a write returns, writev's argument checks and its
 * all-or-nothing rule, ioloop_conn_pending() counting every byte the kernel has not taken,
 * ioloop_conn_on_flushed() (after the kernel took the bytes, never inside the call, in call
 * order, not held back by bytes written after it, with the connection's error before
 * on_close, after a close, -EPIPE once closing), on_drain only after a write that had to
 * wait, and the loop-thread and NULL checks of the new functions.
 *
 * The connection under test is accepted by a server on a one-loop pool; its peer is a plain
 * blocking socket the test thread drives. "One send" is observed in the kernel's own count of
 * data segments the socket sent (TCP_INFO tcpi_data_segs_out), which needs no tracing and
 * cannot be fooled by the peer's receive queue merging segments. Code that must run in the
 * connection's loop is posted there (tc_run_in_loop) or comes through ioloop_server_call().
 * Each test checks that the fd count is restored.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <linux/tcp.h>
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

/* The pipelining test: requests in one send, each answered by its own write. */
#define PIPELINED 16
#define REQ_LEN 8
#define ANS_LEN 24
/* Rounds of the order test's operation table. */
#define ORDER_ROUNDS 3

/* Handlers most tests share: record everything, consume everything. */
static const ioloop_conn_handlers_t plain_handlers = {
    .on_open = tc_on_open_small_sndbuf,
    .on_data = tc_on_data,
    .on_drain = tc_on_drain,
    .on_close = tc_on_close,
};

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

static void close_fn(void *arg)
{
    ioloop_conn_close(conn_of(arg));
}

/* Closes the connection from the loop, expects the peer's end of stream and on_close(0). */
static void close_and_expect_eof(struct tc_server *sv, struct tc_rec *r, int peer)
{
    tc_run_in_loop(sv->loop, close_fn, r);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(r, &r->closes, 1));
    assert_int_equal(r->close_err, 0);
}

/* Checks what every test's recorder must show at the end. */
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

/* ---- Coalescing ------------------------------------------------------------------------- */

static uint32_t data_segs_out(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        abort();
    return ti.tcpi_data_segs_out;
}

static void request_text(char *buf, int i)
{
    char tmp[REQ_LEN + 1];

    snprintf(tmp, sizeof tmp, "REQ %02d\r\n", i);
    memcpy(buf, tmp, REQ_LEN);
}

static void answer_text(char *buf, int i)
{
    char tmp[ANS_LEN + 1];

    snprintf(tmp, sizeof tmp, "answer %02d to REQ %02d..\n", i, i);
    memcpy(buf, tmp, ANS_LEN);
}

/*
 * Waits for all requests, then answers each with its own write. Notes the segments the
 * socket sent before (r->val[0]), what is pending after the writes (val[1]), and what the
 * peer could already read (val[2], peeked from the peer socket in r->rc[31]).
 */
static size_t pipelined_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);
    char want[REQ_LEN], ans[ANS_LEN], peek[PIPELINED * ANS_LEN];
    int bad = 0, rc = 0, peer;
    uint32_t segs;
    size_t pending;
    ssize_t seen;

    tc_event(r, conn, 'D', 0, len);
    if (len < PIPELINED * REQ_LEN) {
        tc_leave(r);
        return 0;
    }
    segs = data_segs_out(ioloop_conn_fd(conn));
    for (int i = 0; i < PIPELINED; i++) {
        int w;

        request_text(want, i);
        if (memcmp(data + i * REQ_LEN, want, REQ_LEN) != 0)
            bad++;
        answer_text(ans, i);
        if ((w = ioloop_conn_write(conn, ans, ANS_LEN)) != 0)
            rc = w;
    }
    pending = ioloop_conn_pending(conn);
    tc_lock(r);
    peer = r->rc[31];
    tc_unlock(r);
    seen = recv(peer, peek, sizeof peek, MSG_PEEK | MSG_DONTWAIT);
    tc_lock(r);
    r->rc[0] = rc;
    r->rc[1] = bad;
    r->val[0] = segs;
    r->val[1] = pending;
    r->val[2] = seen > 0 ? (size_t)seen : 0;
    r->val[4] = 1;
    tc_unlock(r);
    tc_keep(r, data, len);
    tc_leave(r);
    return len;
}

static void segs_after_fn(void *arg)
{
    struct tc_rec *r = arg;
    uint32_t segs = data_segs_out(ioloop_conn_fd(conn_of(r)));

    tc_lock(r);
    r->val[3] = segs;
    tc_unlock(r);
}

static void test_write_coalesces_pipelined_answers(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = pipelined_on_data, .on_close = tc_on_close,
    };
    char reqs[PIPELINED * REQ_LEN], got[PIPELINED * ANS_LEN], want[PIPELINED * ANS_LEN];
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_lock(&r);
    r.rc[31] = peer;
    tc_unlock(&r);
    for (int i = 0; i < PIPELINED; i++) {
        request_text(reqs + i * REQ_LEN, i);
        answer_text(want + i * ANS_LEN, i);
    }
    /* All requests in one segment: the server reads them in one go. */
    test_write_all(peer, reqs, sizeof reqs);
    test_read_exact(peer, got, sizeof got);
    assert_memory_equal(got, want, sizeof got);
    assert_true(tc_wait_size(&r, &r.val[4], 1));
    tc_run_in_loop(sv.loop, segs_after_fn, &r);

    tc_lock(&r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    /* While on_data ran, every answer was gathered: all pending, none at the peer. */
    assert_int_equal(r.val[1], PIPELINED * ANS_LEN);
    assert_int_equal(r.val[2], 0);
    /* Nothing was sent before; the 16 answers left as one data segment (one send). */
    assert_int_equal(r.val[0], 0);
    if (r.val[3] - r.val[0] != 1)
        fail_msg("the %d answers left in %zu segments, want 1 (one send)", PIPELINED,
                 r.val[3] - r.val[0]);
    tc_unlock(&r);

    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- Order across write, writev and server_send ----------------------------------------- */

/*
 * One step of the order test: 's' is an ioloop_server_send() of n[0] bytes from the test
 * thread; the others run in the loop through ioloop_server_call(): 'w' writes n[0] bytes,
 * 'v' writes n[0..3] in one writev, 'm' writes n[0], then n[1] and n[2] in one writev, then
 * n[3]. Every step writes the next bytes of the pattern; `offset` is where its bytes start.
 */
struct order_op {
    char kind;
    size_t n[4];
    size_t offset;
    struct tc_rec *r;
};

static struct order_op order_ops[] = {
    { .kind = 'w', .n = { 10 } },
    { .kind = 's', .n = { 20 } },
    { .kind = 'v', .n = { 5, TC_BIG, 7 } },
    { .kind = 's', .n = { TC_BIG + 3 } },
    { .kind = 'm', .n = { TC_BIG, 1, 40000, 100 } },
    { .kind = 's', .n = { 1 } },
    { .kind = 'v', .n = { IOLOOP_CONN_WRITE_DIRECT, IOLOOP_CONN_WRITE_DIRECT - 1, 3, 0 } },
    { .kind = 's', .n = { 300000 } },
    { .kind = 'w', .n = { 33 } },
    { .kind = 'w', .n = { IOLOOP_CONN_WRITE_DIRECT } },
    { .kind = 'm', .n = { 0, 64, 0, IOLOOP_CONN_WRITE_DIRECT + 1 } },
};

#define NORDER (sizeof order_ops / sizeof order_ops[0])

static size_t op_len(const struct order_op *op)
{
    return op->n[0] + op->n[1] + op->n[2] + op->n[3];
}

/* The caller's buffers are overwritten as soon as each call returns. */
static void order_call_fn(ioloop_conn_t *conn, void *arg)
{
    struct order_op *op = arg;
    struct tc_rec *r = op->r;
    size_t len = op_len(op), off = op->offset;
    char *buf = malloc(len ? len : 1);
    int rc = 0, w;

    if (buf == NULL)
        abort();
    if (conn == NULL) {
        tc_lock(r);
        r->rc[1]++;
        tc_unlock(r);
        free(buf);
        return;
    }
    tc_pattern_fill(buf, off, len);
    if (op->kind == 'w') {
        rc = ioloop_conn_write(conn, buf, op->n[0]);
    } else if (op->kind == 'v') {
        struct iovec iov[4];
        size_t at = 0;

        for (int i = 0; i < 4; i++) {
            iov[i].iov_base = buf + at;
            iov[i].iov_len = op->n[i];
            at += op->n[i];
        }
        rc = ioloop_conn_writev(conn, iov, 4);
    } else {
        struct iovec iov[2] = {
            { .iov_base = buf + op->n[0], .iov_len = op->n[1] },
            { .iov_base = buf + op->n[0] + op->n[1], .iov_len = op->n[2] },
        };

        if ((w = ioloop_conn_write(conn, buf, op->n[0])) != 0)
            rc = w;
        memset(buf, 0x5a, op->n[0]);
        if ((w = ioloop_conn_writev(conn, iov, 2)) != 0)
            rc = w;
        memset(buf + op->n[0], 0xa5, op->n[1] + op->n[2]);
        if ((w = ioloop_conn_write(conn, buf + len - op->n[3], op->n[3])) != 0)
            rc = w;
    }
    memset(buf, 0x3c, len);
    free(buf);
    tc_lock(r);
    if (ioloop_conn_pending(conn) > r->val[0])
        r->val[0] = ioloop_conn_pending(conn);
    tc_unlock(r);
    if (rc != 0) {
        tc_lock(r);
        r->rc[0] = rc;
        tc_unlock(r);
    }
}

static void close_call_fn(ioloop_conn_t *conn, void *arg)
{
    struct tc_rec *r = arg;

    if (conn == NULL) {
        tc_lock(r);
        r->rc[1]++;
        tc_unlock(r);
        return;
    }
    ioloop_conn_close(conn);
}

static void test_write_order_across_write_writev_send(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static struct order_op ops[ORDER_ROUNDS][NORDER];
    size_t total = 0, biggest = 0;
    uint64_t id;
    char *buf;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    /* A peer that reads only after every step was queued: the kernel's buffers fill and the
     * large writes cannot go out whole, so what stays pending must have been copied. */
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_lock(&r);
    id = r.id;
    tc_unlock(&r);
    for (size_t i = 0; i < NORDER; i++)
        if (op_len(&order_ops[i]) > biggest)
            biggest = op_len(&order_ops[i]);
    buf = malloc(biggest);
    assert_non_null(buf);

    /* From this one thread, in this order: sends and calls for one connection. */
    for (int round = 0; round < ORDER_ROUNDS; round++) {
        for (size_t i = 0; i < NORDER; i++) {
            struct order_op *op = &ops[round][i];

            *op = order_ops[i];
            op->offset = total;
            op->r = &r;
            total += op_len(op);
            if (op->kind == 's') {
                tc_pattern_fill(buf, op->offset, op->n[0]);
                assert_int_equal(ioloop_server_send(sv.server, id, buf, op->n[0]), 0);
                memset(buf, 0x77, op->n[0]);
            } else {
                assert_int_equal(ioloop_server_call(sv.server, id, order_call_fn, op), 0);
            }
        }
    }
    assert_int_equal(ioloop_server_call(sv.server, id, close_call_fn, &r), 0);

    /* Every byte in call order, then the end of the stream. */
    tc_read_pattern(peer, 0, total);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    /* Megabytes were pending at once: the large writes' rest was kept, not referenced. */
    assert_true(r.val[0] >= 2 * TC_BIG);

    free(buf);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- writev: arguments and all-or-nothing ---------------------------------------------- */

static void writev_args_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    static struct iovec iov[IOV_MAX + 1];
    static char bytes[IOV_MAX + 1];
    struct iovec null_base[2] = {
        { .iov_base = "abc", .iov_len = 3 },
        { .iov_base = NULL, .iov_len = 5 },
    };
    struct iovec empty[2] = {
        { .iov_base = NULL, .iov_len = 0 },
        { .iov_base = "", .iov_len = 0 },
    };

    tc_pattern_fill(bytes, 0, sizeof bytes);
    for (int i = 0; i <= IOV_MAX; i++) {
        iov[i].iov_base = bytes + i;
        iov[i].iov_len = 1;
    }
    r->rc[0] = ioloop_conn_writev(conn, iov, -1);
    r->rc[1] = ioloop_conn_writev(conn, iov, IOV_MAX + 1);
    r->rc[2] = ioloop_conn_writev(conn, NULL, 1);
    r->rc[3] = ioloop_conn_writev(conn, null_base, 2);   /* "abc" must not be taken */
    r->rc[4] = ioloop_conn_writev(NULL, iov, 1);
    r->rc[5] = ioloop_conn_write(NULL, "x", 1);
    r->val[0] = ioloop_conn_pending(conn);
    /* Nothing to write is fine. */
    r->rc[6] = ioloop_conn_writev(conn, NULL, 0);
    r->rc[7] = ioloop_conn_writev(conn, iov, 0);
    r->rc[8] = ioloop_conn_writev(conn, empty, 2);
    r->val[1] = ioloop_conn_pending(conn);
    /* IOV_MAX buffers are allowed. */
    r->rc[9] = ioloop_conn_writev(conn, iov, IOV_MAX);
    r->val[2] = ioloop_conn_pending(conn);
}

static void test_write_writev_arguments(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_run_in_loop(sv.loop, writev_args_fn, &r);
    tc_lock(&r);
    assert_int_equal(r.rc[0], -EINVAL);
    assert_int_equal(r.rc[1], -EINVAL);
    assert_int_equal(r.rc[2], -EINVAL);
    assert_int_equal(r.rc[3], -EINVAL);
    assert_int_equal(r.rc[4], -EINVAL);
    assert_int_equal(r.rc[5], -EINVAL);
    assert_int_equal(r.val[0], 0);
    assert_int_equal(r.rc[6], 0);
    assert_int_equal(r.rc[7], 0);
    assert_int_equal(r.rc[8], 0);
    assert_int_equal(r.val[1], 0);
    assert_int_equal(r.rc[9], 0);
    assert_int_equal(r.val[2], IOV_MAX);
    tc_unlock(&r);

    /* Exactly the IOV_MAX bytes (no "abc" before them), then the end of the stream. */
    tc_read_pattern(peer, 0, IOV_MAX);
    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* With an output limit of 1000: every writev is taken whole or not at all. */
static void writev_limit_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    static char bytes[2000];
    struct iovec too_big[2] = {
        { .iov_base = bytes, .iov_len = 600 }, { .iov_base = bytes + 600, .iov_len = 600 },
    };
    struct iovec fits[2] = {
        { .iov_base = bytes, .iov_len = 400 }, { .iov_base = bytes + 400, .iov_len = 500 },
    };
    struct iovec one_over[2] = {
        { .iov_base = bytes + 900, .iov_len = 50 }, { .iov_base = bytes + 950, .iov_len = 51 },
    };

    tc_pattern_fill(bytes, 0, sizeof bytes);
    r->rc[0] = ioloop_conn_set_limits(conn, 0, 1000);
    r->rc[1] = ioloop_conn_writev(conn, too_big, 2);
    r->val[0] = ioloop_conn_pending(conn);
    r->rc[2] = ioloop_conn_writev(conn, fits, 2);
    r->val[1] = ioloop_conn_pending(conn);
    r->rc[3] = ioloop_conn_writev(conn, one_over, 2);
    r->val[2] = ioloop_conn_pending(conn);
    /* Up to the limit exactly is not past it. */
    r->rc[4] = ioloop_conn_write(conn, bytes + 900, 100);
    r->val[3] = ioloop_conn_pending(conn);
    r->rc[5] = ioloop_conn_write(conn, bytes + 1000, 1);
    r->val[4] = ioloop_conn_pending(conn);
}

static void test_write_writev_all_or_nothing(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_run_in_loop(sv.loop, writev_limit_fn, &r);
    tc_lock(&r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], -ENOBUFS);
    assert_int_equal(r.val[0], 0);
    assert_int_equal(r.rc[2], 0);
    assert_int_equal(r.val[1], 900);
    assert_int_equal(r.rc[3], -ENOBUFS);
    assert_int_equal(r.val[2], 900);
    assert_int_equal(r.rc[4], 0);
    assert_int_equal(r.val[3], 1000);
    assert_int_equal(r.rc[5], -ENOBUFS);
    assert_int_equal(r.val[4], 1000);
    tc_unlock(&r);

    /* The peer gets the 1000 bytes taken and nothing of the refused ones. */
    tc_read_pattern(peer, 0, 1000);
    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- ioloop_conn_pending ---------------------------------------------------------------- */

static void pending_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    static char big[TC_BIG];

    tc_pattern_fill(big, 0, 100);
    r->rc[0] = ioloop_conn_write(conn, big, 100);
    r->val[0] = ioloop_conn_pending(conn);
    tc_pattern_fill(big, 100, 50);
    r->rc[1] = ioloop_conn_write(conn, big, 50);
    r->val[1] = ioloop_conn_pending(conn);
    /* A large write goes to the kernel at once, behind the 150 bytes; the kernel's small
     * buffers take only part of it. */
    tc_pattern_fill(big, 150, TC_BIG);
    r->rc[2] = ioloop_conn_write(conn, big, TC_BIG);
    r->val[2] = ioloop_conn_pending(conn);
}

static void pending_read_fn(void *arg)
{
    struct tc_rec *r = arg;

    r->val[3] = ioloop_conn_pending(conn_of(r));
}

static void test_write_pending_counts_unsent_bytes(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_run_in_loop(sv.loop, pending_fn, &r);
    tc_lock(&r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.rc[2], 0);
    /* Inside the callback nothing was handed to the kernel yet. */
    assert_int_equal(r.val[0], 100);
    assert_int_equal(r.val[1], 150);
    /* The large write: what the kernel did not take is counted, and the peer reads nothing
     * yet, so most of the megabyte is. */
    assert_true(r.val[2] <= TC_BIG + 150);
    assert_true(r.val[2] >= TC_BIG / 2);
    tc_unlock(&r);

    /* After the callback: still pending, as the peer reads nothing. */
    tc_settle(sv.loop);
    tc_run_in_loop(sv.loop, pending_read_fn, &r);
    assert_true(r.val[3] >= TC_BIG / 2);
    /* The peer reads everything: nothing is pending any more. */
    tc_read_pattern(peer, 0, TC_BIG + 150);
    assert_true(tc_wait(&r, &r.drains, 1));
    tc_run_in_loop(sv.loop, pending_read_fn, &r);
    assert_int_equal(r.val[3], 0);

    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- ioloop_conn_on_flushed ------------------------------------------------------------- */

/* Writes the megabyte and asks to be told when it reached the kernel. */
static void flushed_big_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char *big = tc_pattern_new(TC_BIG);

    tc_call_begin(r);
    r->rc[0] = ioloop_conn_write(conn, big, TC_BIG);
    r->rc[1] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    tc_call_end(r);
    free(big);
}

static void test_write_flushed_after_kernel_took_bytes(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_run_in_loop(sv.loop, flushed_big_fn, &r);
    assert_int_equal(tc_get(&r, &r.rc[0]), 0);
    assert_int_equal(tc_get(&r, &r.rc[1]), 0);
    /* The peer has read nothing: the kernel cannot have taken the megabyte. */
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.flushes), 0);

    tc_read_pattern(peer, 0, TC_BIG);
    assert_true(tc_wait(&r, &r.flushes, 1));
    tc_lock(&r);
    assert_int_equal(r.flush_err[1], 0);
    assert_int_equal(r.flush_pending[1], 0);
    tc_unlock(&r);

    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    assert_int_equal(r.flushes, 1);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* With nothing pending, then after small writes: none runs inside its call; call order. */
static void flushed_order_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);

    tc_call_begin(r);
    r->rc[0] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    r->rc[1] = ioloop_conn_write(conn, "a", 1);
    r->rc[2] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(2));
    r->rc[3] = ioloop_conn_write(conn, "b", 1);
    r->rc[4] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(3));
    r->rc[5] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(4));
    r->rc[6] = ioloop_conn_on_flushed(conn, NULL, NULL);
    r->rc[7] = ioloop_conn_on_flushed(NULL, tc_flushed, TC_TAG(5));
    tc_call_end(r);
}

/* on_data with nothing pending: the callback runs after on_data returned. */
static size_t flushed_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);
    int rc = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(6));

    tc_event(r, conn, 'D', 0, len);
    tc_lock(r);
    r->rc[8] = rc;
    r->rc[9] = r->flushes;
    tc_unlock(r);
    tc_leave(r);
    return len;
}

static void test_write_flushed_call_order(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = flushed_on_data, .on_close = tc_on_close,
    };
    char buf[2];
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_run_in_loop(sv.loop, flushed_order_fn, &r);
    assert_true(tc_wait(&r, &r.flushes, 4));
    test_read_exact(peer, buf, 2);
    assert_memory_equal(buf, "ab", 2);
    tc_lock(&r);
    for (int i = 0; i < 6; i++)
        assert_int_equal(r.rc[i], 0);
    assert_int_equal(r.rc[6], -EINVAL);
    assert_int_equal(r.rc[7], -EINVAL);
    assert_string_equal(r.log, "O1234");
    for (int i = 1; i <= 4; i++)
        assert_int_equal(r.flush_err[i], 0);
    assert_int_equal(r.flush_pending[4], 0);
    assert_int_equal(r.flushed_in_call, 0);
    tc_unlock(&r);

    test_write_all(peer, "x", 1);
    assert_true(tc_wait(&r, &r.flushes, 5));
    tc_lock(&r);
    assert_int_equal(r.rc[8], 0);
    assert_int_equal(r.rc[9], 4);
    assert_int_equal(r.flush_err[6], 0);
    assert_string_equal(r.log, "O1234D6");
    assert_int_equal(r.nested, 0);
    tc_unlock(&r);

    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* Two callbacks wait behind a megabyte the peer will never read. */
static void flushed_pending_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char *big = tc_pattern_new(TC_BIG);

    r->rc[0] = ioloop_conn_write(conn, big, TC_BIG);
    r->rc[1] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    r->rc[2] = ioloop_conn_write(conn, "z", 1);
    r->rc[3] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(2));
    free(big);
}

static void test_write_flushed_gets_error_before_close(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_run_in_loop(sv.loop, flushed_pending_fn, &r);
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.flushes), 0);

    /* The peer resets: both callbacks get the error on_close gets, before it. */
    tc_reset(peer);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r.rc[i], 0);
    if (r.close_err != -ECONNRESET && r.close_err != -EPIPE)
        fail_msg("on_close err %d (%s), want -ECONNRESET or -EPIPE", r.close_err,
                 strerror(-r.close_err));
    assert_string_equal(r.log, "O12C");
    assert_int_equal(r.flush_err[1], r.close_err);
    assert_int_equal(r.flush_err[2], r.close_err);
    assert_int_equal(r.drains, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* A callback registered before the close still runs with 0; one after it is refused. */
static void flushed_close_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char *big = tc_pattern_new(TC_BIG);

    tc_call_begin(r);
    r->rc[0] = ioloop_conn_write(conn, big, TC_BIG);
    r->rc[1] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    ioloop_conn_close(conn);
    r->rc[2] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(2));
    tc_call_end(r);
    free(big);
}

static void test_write_flushed_after_close(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_run_in_loop(sv.loop, flushed_close_fn, &r);
    tc_lock(&r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.rc[2], -EPIPE);
    tc_unlock(&r);

    tc_read_pattern(peer, 0, TC_BIG);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.flushes, 1);
    assert_int_equal(r.flush_err[1], 0);
    /* Whether on_drain runs for a closing connection is not specified: leave it out. */
    assert_string_equal(log_without(&r, 'W'), "O1C");
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/*
 * A callback registered with nothing pending runs after the current callback, even when a
 * large write made later in that callback stays pending behind it; one registered after a
 * small write runs as soon as that byte went out (here in the same sendmsg as the large
 * write), not once everything written after it drained.
 */
static void flushed_then_big_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char *big = tc_pattern_new(TC_BIG + 1);

    tc_call_begin(r);
    r->rc[0] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    r->rc[1] = ioloop_conn_write(conn, big, 1);
    r->rc[2] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(2));
    r->rc[3] = ioloop_conn_write(conn, big + 1, TC_BIG);
    r->val[0] = ioloop_conn_pending(conn);
    tc_call_end(r);
    free(big);
}

static void test_write_flushed_not_held_by_later_writes(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_run_in_loop(sv.loop, flushed_then_big_fn, &r);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r.rc[i], 0);
    /* The large write is mostly pending (the peer reads nothing)... */
    assert_true(r.val[0] >= TC_BIG / 2);
    tc_settle(sv.loop);
    /* ... but the bytes before the callbacks are with the kernel: both ran, in order. */
    tc_lock(&r);
    if (r.flushes != 2)
        fail_msg("%d of 2 on_flushed callbacks ran after their bytes reached the kernel; "
                 "they wait for the %zu bytes written after them", r.flushes, r.val[0]);
    assert_string_equal(r.log, "O12");
    assert_int_equal(r.flush_err[1], 0);
    assert_int_equal(r.flush_err[2], 0);
    tc_unlock(&r);

    tc_read_pattern(peer, 0, TC_BIG + 1);
    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* A megabyte, a callback behind it, then four more megabytes. */
static void flushed_between_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char *big = tc_pattern_new(5 * TC_BIG);

    r->rc[0] = ioloop_conn_write(conn, big, TC_BIG);
    r->rc[1] = ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1));
    r->rc[2] = ioloop_conn_write(conn, big + TC_BIG, 4 * TC_BIG);
    free(big);
}

static void test_write_flushed_runs_on_partial_drain(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_run_in_loop(sv.loop, flushed_between_fn, &r);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r.rc[i], 0);
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.flushes), 0);

    /* The peer reads the first megabyte and a quarter more: the first megabyte has surely
     * been handed to the kernel, so the callback runs, while four megabytes still wait. */
    tc_read_pattern(peer, 0, TC_BIG + TC_BIG / 4);
    if (!tc_wait(&r, &r.flushes, 1))
        fail_msg("on_flushed did not run after the peer read past its bytes: it waits for "
                 "the four megabytes written after it");
    assert_int_equal(r.flush_err[1], 0);
    tc_read_pattern(peer, TC_BIG + TC_BIG / 4, 4 * TC_BIG - TC_BIG / 4);
    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- on_drain --------------------------------------------------------------------------- */

static void small_writes_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char chunk[100];

    for (int i = 0; i < 16; i++) {
        tc_pattern_fill(chunk, r->val[0], sizeof chunk);
        if (ioloop_conn_write(conn, chunk, sizeof chunk) != 0)
            r->rc[0]++;
        r->val[0] += sizeof chunk;
    }
}

static void big_write_fn(void *arg)
{
    struct tc_rec *r = arg;
    char *big = malloc(TC_BIG);

    assert_non_null(big);
    tc_pattern_fill(big, r->val[0], TC_BIG);
    if (ioloop_conn_write(conn_of(r), big, TC_BIG) != 0)
        r->rc[0]++;
    r->val[0] += TC_BIG;
    free(big);
}

static void test_write_drain_only_after_blocked_write(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);

    /* Gathered writes the kernel takes in one go: no on_drain. */
    tc_run_in_loop(sv.loop, small_writes_fn, &r);
    tc_read_pattern(peer, 0, 1600);
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.drains), 0);

    /* A write that has to wait for the peer: one on_drain, once it drained. */
    tc_run_in_loop(sv.loop, big_write_fn, &r);
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.drains), 0);
    tc_read_pattern(peer, 1600, TC_BIG);
    assert_true(tc_wait(&r, &r.drains, 1));

    /* Small writes again, taken at once: still one on_drain. */
    tc_run_in_loop(sv.loop, small_writes_fn, &r);
    tc_read_pattern(peer, 1600 + TC_BIG, 1600);
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.drains), 1);
    assert_int_equal(tc_get(&r, &r.rc[0]), 0);

    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    assert_string_equal(r.log, "OWC");
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- Thread and NULL checks of the new calls -------------------------------------------- */

static void write_ok_fn(void *arg)
{
    struct tc_rec *r = arg;

    r->rc[0] = ioloop_conn_write(conn_of(r), "ok", 2);
}

static void test_write_new_calls_check_thread_and_null(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    struct iovec iov = { .iov_base = "BAD", .iov_len = 3 };
    ioloop_conn_t *conn;
    char buf[2];
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &plain_handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_lock(&r);
    conn = r.conn;
    tc_unlock(&r);

    /* From the test thread while the loop runs: refused, nothing changes. */
    assert_int_equal(ioloop_conn_writev(conn, &iov, 1), -EPERM);
    assert_int_equal(ioloop_conn_on_flushed(conn, tc_flushed, TC_TAG(1)), -EPERM);
    assert_int_equal(ioloop_conn_set_limits(conn, 1, 1), -EPERM);
    assert_int_equal(ioloop_conn_writev(NULL, &iov, 1), -EINVAL);
    assert_int_equal(ioloop_conn_on_flushed(NULL, tc_flushed, NULL), -EINVAL);
    assert_int_equal(ioloop_conn_set_limits(NULL, 1, 1), -EINVAL);

    /* The limits were not changed to 1 byte: a 2-byte write goes out; "BAD" never did. */
    tc_run_in_loop(sv.loop, write_ok_fn, &r);
    assert_int_equal(r.rc[0], 0);
    test_read_exact(peer, buf, 2);
    assert_memory_equal(buf, "ok", 2);
    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    assert_int_equal(r.flushes, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_coalesces_pipelined_answers),
        cmocka_unit_test(test_write_order_across_write_writev_send),
        cmocka_unit_test(test_write_writev_arguments),
        cmocka_unit_test(test_write_writev_all_or_nothing),
        cmocka_unit_test(test_write_pending_counts_unsent_bytes),
        cmocka_unit_test(test_write_flushed_after_kernel_took_bytes),
        cmocka_unit_test(test_write_flushed_call_order),
        cmocka_unit_test(test_write_flushed_gets_error_before_close),
        cmocka_unit_test(test_write_flushed_after_close),
        cmocka_unit_test(test_write_flushed_not_held_by_later_writes),
        cmocka_unit_test(test_write_flushed_runs_on_partial_drain),
        cmocka_unit_test(test_write_drain_only_after_blocked_write),
        cmocka_unit_test(test_write_new_calls_check_thread_and_null),
    };

    tc_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
