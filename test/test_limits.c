/*
 * Unit tests of the bounded buffers of part two (API.md §5 "Bounded memory",
 * ioloop_conn_set_limits()): a peer that never reads makes writes fail with -ENOBUFS, a
 * failing write takes nothing, on_drain follows once the peer read and writing works again;
 * set_limits with 0 keeps a limit, lowering a limit drops nothing, its errors, limits are
 * per connection; the default output limit; unconsumed input reaching the input limit closes the connection with -ENOBUFS
 * after on_data was shown at least the limit (also the default 16 MiB), and consumed input
 * never counts.
 *
 * The connection under test is accepted by a server on a one-loop pool; its peer is a plain
 * blocking socket the test thread drives. Each test checks that the fd count is restored.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn_helpers.h"
#include "helpers.h"

/* The output limit of the limit test, and the size of each write. */
#define OUT_LIMIT (256u * 1024)
#define OUT_CHUNK 4096u
/* The input limit of the input tests. */
#define IN_LIMIT 4096u
/* What the consuming peer sends: ten times the limit in one burst, then in pieces. */
#define BURST (10u * IN_LIMIT)
#define PIECE 3000u
#define PIECES 10
/* The default-output test writes this much per call. */
#define DEFAULT_CHUNK ((size_t)1 << 20)

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

static void close_and_expect_eof(struct tc_server *sv, struct tc_rec *r, int peer)
{
    tc_run_in_loop(sv->loop, close_fn, r);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(r, &r->closes, 1));
    assert_int_equal(r->close_err, 0);
}

static void check_clean(struct tc_rec *r)
{
    tc_lock(r);
    assert_int_equal(r->closes, 1);
    assert_int_equal(r->nested, 0);
    assert_int_equal(r->outside_loop, 0);
    assert_int_equal(r->after_close, 0);
    assert_int_equal(r->depth, 0);
    tc_unlock(r);
}

/* ---- The output limit ------------------------------------------------------------------- */

/*
 * Writes OUT_CHUNK pieces of the pattern (from r->val[0] on) until a write fails; notes the
 * failing rc in rc[base], pending before and after it in val[base + 1] and val[base + 2].
 */
static void fill_to_limit(struct tc_rec *r, ioloop_conn_t *conn, int base)
{
    char chunk[OUT_CHUNK];

    for (int i = 0; i < 10000; i++) {
        size_t before = ioloop_conn_pending(conn);
        int rc;

        tc_pattern_fill(chunk, r->val[0], sizeof chunk);
        rc = ioloop_conn_write(conn, chunk, sizeof chunk);
        if (rc != 0) {
            r->rc[base] = rc;
            r->val[base + 1] = before;
            r->val[base + 2] = ioloop_conn_pending(conn);
            return;
        }
        r->val[0] += sizeof chunk;
    }
    r->rc[base] = 1; /* never refused */
}

static void limit_fill_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char chunk[OUT_CHUNK];

    r->rc[0] = ioloop_conn_set_limits(conn, 0, OUT_LIMIT);
    fill_to_limit(r, conn, 1);
    r->val[4] = r->val[0];
    /* 0 keeps the output limit; changing the input limit keeps it too. */
    memset(chunk, 0x55, sizeof chunk);
    r->rc[4] = ioloop_conn_set_limits(conn, 0, 0);
    r->rc[5] = ioloop_conn_write(conn, chunk, sizeof chunk);
    r->rc[6] = ioloop_conn_set_limits(conn, (size_t)1 << 20, 0);
    r->rc[7] = ioloop_conn_write(conn, chunk, sizeof chunk);
    r->val[5] = ioloop_conn_pending(conn);
}

static void limit_refill_fn(void *arg)
{
    struct tc_rec *r = arg;

    fill_to_limit(r, conn_of(r), 8);
}

/* After the drain: writing works again. */
static void limit_on_drain(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    char chunk[OUT_CHUNK];

    /* The first drain only: the peer reads exactly one chunk more. */
    if (tc_get(r, &r->drains) == 0) {
        int rc;

        tc_pattern_fill(chunk, r->val[0], sizeof chunk);
        rc = ioloop_conn_write(conn, chunk, sizeof chunk);
        tc_lock(r);
        r->rc[11] = rc;
        tc_unlock(r);
    }
    tc_event(r, conn, 'W', 0, 0);
    tc_leave(r);
}

static void test_limits_output_enobufs_then_drain(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open_small_sndbuf, .on_data = tc_on_data,
        .on_drain = limit_on_drain, .on_close = tc_on_close,
    };
    size_t written;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);

    /* One callback: everything is gathered, so the limit is reached within it. */
    tc_run_in_loop(sv.loop, limit_fill_fn, &r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], -ENOBUFS);
    /* Refused exactly when the write would have gone past the limit... */
    assert_true(r.val[2] <= OUT_LIMIT);
    assert_true(r.val[2] + OUT_CHUNK > OUT_LIMIT);
    /* ... and the failing write took nothing. */
    assert_int_equal(r.val[3], r.val[2]);
    assert_true(r.val[4] >= OUT_LIMIT - OUT_CHUNK);
    assert_int_equal(r.rc[4], 0);
    assert_int_equal(r.rc[5], -ENOBUFS);
    assert_int_equal(r.rc[6], 0);
    assert_int_equal(r.rc[7], -ENOBUFS);
    assert_int_equal(r.val[5], r.val[2]);

    /* The next callback: the kernel took a little meanwhile; fill up again. */
    tc_settle(sv.loop);
    tc_run_in_loop(sv.loop, limit_refill_fn, &r);
    assert_int_equal(r.rc[8], -ENOBUFS);
    assert_true(r.val[9] + OUT_CHUNK > OUT_LIMIT);
    assert_int_equal(r.val[10], r.val[9]);
    assert_int_equal(tc_get(&r, &r.drains), 0);
    written = r.val[0];

    /* The peer reads it all (no byte of a refused write among it): on_drain, and the write
     * made there is taken. */
    tc_read_pattern(peer, 0, written);
    assert_true(tc_wait(&r, &r.drains, 1));
    assert_int_equal(tc_get(&r, &r.rc[11]), 0);
    tc_read_pattern(peer, written, OUT_CHUNK);

    close_and_expect_eof(&sv, &r, peer);
    check_clean(&r);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* Lowering the limit below what is pending drops nothing; it only refuses new bytes. */
static void lower_limit_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char buf[8192];

    tc_pattern_fill(buf, 0, sizeof buf);
    r->rc[0] = ioloop_conn_write(conn, buf, sizeof buf);
    r->rc[1] = ioloop_conn_set_limits(conn, 0, 1000);
    r->val[0] = ioloop_conn_pending(conn);
    r->rc[2] = ioloop_conn_write(conn, "x", 1);
}

/* After ioloop_conn_close(): -EPIPE. */
static void limits_after_close_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);

    ioloop_conn_close(conn);
    r->rc[3] = ioloop_conn_set_limits(conn, 10, 10);
    r->rc[4] = ioloop_conn_set_limits(conn, 0, 0);
}

static void test_limits_lowering_drops_nothing(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    ioloop_conn_t *conn;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_run_in_loop(sv.loop, lower_limit_fn, &r);
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.val[0], 8192);
    assert_int_equal(r.rc[2], -ENOBUFS);
    tc_read_pattern(peer, 0, 8192);

    /* Errors: NULL, another thread, closing. */
    assert_int_equal(ioloop_conn_set_limits(NULL, 0, 0), -EINVAL);
    tc_lock(&r);
    conn = r.conn;
    tc_unlock(&r);
    assert_int_equal(ioloop_conn_set_limits(conn, 0, 0), -EPERM);
    tc_run_in_loop(sv.loop, limits_after_close_fn, &r);
    assert_int_equal(r.rc[3], -EPIPE);
    assert_int_equal(r.rc[4], -EPIPE);
    assert_int_equal(tc_read_eof(peer), 0);
    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* The default output limit: megabyte writes to a peer that never reads. */
static void default_output_fn(void *arg)
{
    struct tc_rec *r = arg;
    ioloop_conn_t *conn = conn_of(r);
    char *chunk = malloc(DEFAULT_CHUNK);

    if (chunk == NULL)
        abort();
    memset(chunk, 'd', DEFAULT_CHUNK);
    r->rc[0] = 1;
    for (int i = 0; i < 100; i++) {
        size_t before = ioloop_conn_pending(conn);
        int rc = ioloop_conn_write(conn, chunk, DEFAULT_CHUNK);

        if (rc != 0) {
            r->rc[0] = rc;
            r->val[0] = before;
            r->val[1] = ioloop_conn_pending(conn);
            break;
        }
        r->val[2] += DEFAULT_CHUNK;
    }
    free(chunk);
}

static void test_limits_default_output_limit(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open_small_sndbuf, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, TC_SMALL_BUF);
    tc_run_in_loop(sv.loop, default_output_fn, &r);
    assert_int_equal(r.rc[0], -ENOBUFS);
    assert_true(r.val[0] <= IOLOOP_CONN_MAX_OUTPUT);
    assert_true(r.val[0] + DEFAULT_CHUNK > IOLOOP_CONN_MAX_OUTPUT);
    assert_int_equal(r.val[1], r.val[0]);
    assert_true(r.val[2] >= IOLOOP_CONN_MAX_OUTPUT - DEFAULT_CHUNK);
    assert_true(r.val[2] <= IOLOOP_CONN_MAX_OUTPUT + 4 * DEFAULT_CHUNK);

    /* A reset ends it: the 64 MiB are dropped with the connection. */
    tc_reset(peer);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_true(r.close_err == -ECONNRESET || r.close_err == -EPIPE);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* The limits are the connection's own: another connection of the server keeps the default. */
static void tiny_limit_fn(void *arg)
{
    struct tc_rec *r = arg;
    char buf[2000];

    memset(buf, 't', sizeof buf);
    r->rc[0] = ioloop_conn_set_limits(r->conn, 0, 1000);
    r->rc[1] = ioloop_conn_write(r->conn, buf, sizeof buf);
}

static void default_limit_fn(void *arg)
{
    struct tc_rec *r = arg;

    r->rc[2] = ioloop_conn_write(r->conn, r->test, 2000);
}

static void test_limits_are_per_connection(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = tc_on_open, .on_data = tc_on_data, .on_close = tc_on_close,
    };
    char *stream = tc_pattern_new(2000);
    int p1, p2;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &handlers);
    p1 = tc_server_client(&sv, &r, 0);
    tc_run_in_loop(sv.loop, tiny_limit_fn, &r); /* on the first connection */
    assert_int_equal(r.rc[0], 0);
    assert_int_equal(r.rc[1], -ENOBUFS);
    p2 = tc_server_client(&sv, &r, 0);
    r.test = stream;
    tc_run_in_loop(sv.loop, default_limit_fn, &r); /* on the second one */
    assert_int_equal(r.rc[2], 0);
    tc_read_pattern(p2, 0, 2000);
    assert_int_equal(close(p1), 0);
    assert_int_equal(close(p2), 0);
    assert_true(tc_wait(&r, &r.closes, 2));
    tc_lock(&r);
    assert_int_equal(r.close_err, 0);
    assert_int_equal(r.nested, 0);
    assert_int_equal(r.outside_loop, 0);
    tc_unlock(&r);
    free(stream);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* ---- The input limit -------------------------------------------------------------------- */

/* Sets the input limit to r->val[6] (0: leaves the default). */
static void input_limit_on_open(ioloop_conn_t *conn)
{
    struct tc_rec *r = tc_enter(conn);
    size_t limit;
    int rc = 0;

    tc_lock(r);
    limit = r->val[6];
    tc_unlock(r);
    if (limit > 0)
        rc = ioloop_conn_set_limits(conn, limit, 0);
    tc_lock(r);
    r->rc[0] = rc;
    tc_unlock(r);
    tc_event(r, conn, 'O', 0, 0);
    tc_leave(r);
}

/* Consumes nothing, ever. */
static size_t hoarding_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);

    tc_event(r, conn, 'D', 0, len);
    tc_leave(r);
    return 0;
}

static const ioloop_conn_handlers_t hoarding_handlers = {
    .on_open = input_limit_on_open, .on_data = hoarding_on_data, .on_close = tc_on_close,
};

static void test_limits_input_closes_at_limit(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    char buf[IN_LIMIT];
    int peer, end;

    (void)state;
    tc_rec_init(&r, NULL);
    r.val[6] = IN_LIMIT;
    tc_server_open(&sv, &r, &hoarding_handlers);
    peer = tc_server_client(&sv, &r, 0);
    assert_int_equal(tc_get(&r, &r.rc[0]), 0);

    /* Below the limit: kept, shown, and the connection stays open. */
    tc_pattern_fill(buf, 0, sizeof buf);
    test_write_all(peer, buf, IN_LIMIT - 96);
    assert_true(tc_wait_size(&r, &r.max_len, IN_LIMIT - 96));
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.closes), 0);

    /* Reaching it with on_data consuming nothing closes with -ENOBUFS, after on_data saw at
     * least the limit. */
    test_write_all(peer, buf + IN_LIMIT - 96, 96);
    if (!tc_wait(&r, &r.closes, 1))
        fail_msg("the connection stayed open with %zu unconsumed bytes (limit %u)",
                 tc_get_size(&r, &r.max_len), IN_LIMIT);
    check_clean(&r);
    assert_int_equal(r.close_err, -ENOBUFS);
    assert_true(r.max_len >= IN_LIMIT);
    end = tc_read_eof(peer);
    assert_true(end == 0 || end == -ECONNRESET);
    assert_int_equal(close(peer), 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* A burst far past the limit: on_data is shown at least the limit before the close. */
static void test_limits_input_burst_past_limit(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer, end;

    (void)state;
    tc_rec_init(&r, NULL);
    r.val[6] = IN_LIMIT;
    tc_server_open(&sv, &r, &hoarding_handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_send_pattern_lossy(peer, 0, 100 * IN_LIMIT);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, -ENOBUFS);
    assert_true(r.max_len >= IN_LIMIT);
    assert_true(r.datas >= 1);
    end = tc_read_eof(peer);
    assert_true(end == 0 || end == -ECONNRESET);
    assert_int_equal(close(peer), 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/* The default input limit: 16 MiB. */
static void test_limits_default_input_limit(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    int peer, end;

    (void)state;
    tc_rec_init(&r, NULL);
    tc_server_open(&sv, &r, &hoarding_handlers);
    peer = tc_server_client(&sv, &r, 0);
    tc_send_pattern_lossy(peer, 0, IOLOOP_CONN_MAX_INPUT + ((size_t)1 << 20));
    if (!tc_wait(&r, &r.closes, 1))
        fail_msg("open with %zu unconsumed bytes", tc_get_size(&r, &r.max_len));
    check_clean(&r);
    assert_int_equal(r.close_err, -ENOBUFS);
    assert_true(r.max_len >= IOLOOP_CONN_MAX_INPUT);
    end = tc_read_eof(peer);
    assert_true(end == 0 || end == -ECONNRESET);
    assert_int_equal(close(peer), 0);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

/*
 * Consumes everything, or in the second phase (rc[20] set) everything but the last 100
 * bytes it is shown, until the whole stream (val[7] bytes) is in.
 */
static size_t consuming_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct tc_rec *r = tc_enter(conn);
    size_t keep = 0;

    tc_event(r, conn, 'D', 0, len);
    tc_lock(r);
    if (r->rc[20] && len > 100 && r->in_len + len < r->val[7])
        keep = 100;
    tc_unlock(r);
    tc_keep(r, data, len - keep);
    tc_leave(r);
    return len - keep;
}

static void test_limits_consumed_input_never_counts(void **state)
{
    static struct tc_server sv;
    static struct tc_rec r;
    static const ioloop_conn_handlers_t handlers = {
        .on_open = input_limit_on_open, .on_data = consuming_on_data, .on_close = tc_on_close,
    };
    char *stream = tc_pattern_new(BURST + PIECES * PIECE);
    size_t sent;
    int peer;

    (void)state;
    tc_rec_init(&r, NULL);
    r.val[6] = IN_LIMIT;
    tc_server_open(&sv, &r, &handlers);
    peer = tc_server_client(&sv, &r, 0);

    /* Ten times the limit at once, all consumed. */
    test_write_all(peer, stream, BURST);
    assert_true(tc_wait_size(&r, &r.in_len, BURST));
    assert_int_equal(tc_get(&r, &r.closes), 0);

    /* Then pieces, each consumed but for 100 bytes: never near the limit unconsumed. */
    tc_lock(&r);
    r.rc[20] = 1;
    r.val[7] = BURST + PIECES * PIECE;
    tc_unlock(&r);
    sent = BURST;
    for (int i = 0; i < PIECES; i++) {
        test_write_all(peer, stream + sent, PIECE);
        sent += PIECE;
        assert_true(tc_wait_size(&r, &r.in_len, i == PIECES - 1 ? sent : sent - 100));
        assert_int_equal(tc_get(&r, &r.closes), 0);
    }
    tc_settle(sv.loop);
    assert_int_equal(tc_get(&r, &r.closes), 0);
    assert_int_equal(r.in_len, sent);
    assert_memory_equal(r.in, stream, sent);

    assert_int_equal(close(peer), 0);
    assert_true(tc_wait(&r, &r.closes, 1));
    check_clean(&r);
    assert_int_equal(r.close_err, 0);
    free(stream);
    tc_server_close(&sv);
    tc_rec_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_output_enobufs_then_drain),
        cmocka_unit_test(test_limits_lowering_drops_nothing),
        cmocka_unit_test(test_limits_default_output_limit),
        cmocka_unit_test(test_limits_are_per_connection),
        cmocka_unit_test(test_limits_input_closes_at_limit),
        cmocka_unit_test(test_limits_input_burst_past_limit),
        cmocka_unit_test(test_limits_default_input_limit),
        cmocka_unit_test(test_limits_consumed_input_never_counts),
    };

    tc_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
