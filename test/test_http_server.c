/*
 * The HTTP server (API.md §8) seen from a raw socket: the exact bytes of responses (status
 * line, fields, Date's format, Content-Length), keep-alive, pipelining answered in request
 * order also when the handlers end requests out of order, HTTP/1.0 and Connection: close,
 * HEAD, 100-continue, chunked request bodies split at every byte, chunked and close-delimited
 * responses, requests ended after the client left, ending twice, header injection, lookups,
 * drain, and servers with reuseport, max_conns and the PROXY protocol.
 *
 * The handler does what the target says (see handle()). Some tests look inside the library
 * (lib/http/server.h) for one thing the API cannot show: that a held request's connection is
 * gone, before ending it.
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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"
#include "http/server.h"
#include "http_helpers.h"

/* ---- The handler ------------------------------------------------------------------------ */

struct later {
    ioloop_http_request_t *req;
    struct ht_server *s;
};

static void on_later(ioloop_t *loop, void *arg)
{
    struct later *l = arg;
    const char *target = ioloop_http_target(l->req);

    ht_note(l->s, ioloop_http_respond(l->req, 200, target, strlen(target)));
    free(l);
}

/* The body of /big/N: no short period, so that a byte out of place shows. */
static char *pattern(size_t n)
{
    char *p = malloc(n + 1);

    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + (i * 7 + i / 26) % 26);
    p[n] = '\0';
    return p;
}

static bool starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * /hello      200 "hello"
 * /typed      200 "hello" with Content-Type first
 * /own        200 with the application's own Server, Date and Content-Length
 * /later/N    200 with the target as body, from a timer N ms later
 * /hold       kept for the test to end (ht_held)
 * /echo       200 with the request body, and X-Seen: the X-A field's value
 * /stream     write_head, "abc", "defg", finish
 * /twice      respond, respond again (the second code is noted), ...
 * /inject     add_header attempts (codes noted), then 200
 * /lookup     200 "method|target|x-dup|host|missing"
 * /close      200 with the application's Connection: close
 * /close-list 200 with the application's Connection: "Keep-Alive , CLOSE" (a list)
 * /status/N   status N, no body
 * /big/N      200 with N bytes of pattern (pattern())
 * /stream-big write_head, a write beyond the output limit (code noted), "0123456789", finish
 */
static void handle(ioloop_http_request_t *req, struct ht_server *s)
{
    const char *t = ioloop_http_target(req);

    ht_note_request(s, req);
    if (strcmp(t, "/hello") == 0) {
        ioloop_http_respond(req, 200, "hello", 5);
    } else if (strcmp(t, "/typed") == 0) {
        assert_int_equal(ioloop_http_add_header(req, "Content-Type", "text/plain"), 0);
        ioloop_http_respond(req, 200, "hello", 5);
    } else if (strcmp(t, "/own") == 0) {
        assert_int_equal(ioloop_http_add_header(req, "server", "mine"), 0);
        assert_int_equal(ioloop_http_add_header(req, "DATE", "yesterday"), 0);
        assert_int_equal(ioloop_http_add_header(req, "Content-Length", "2"), 0);
        ioloop_http_respond(req, 200, "ok", 2);
    } else if (starts(t, "/later/")) {
        struct later *l = malloc(sizeof *l);

        assert_non_null(l);
        *l = (struct later){req, s};
        assert_true(ioloop_run_after(ioloop_http_loop(req), strtoul(t + 7, NULL, 10), on_later,
                                     l) > 0);
    } else if (strcmp(t, "/hold") == 0) {
        ht_hold(s, req);
    } else if (strcmp(t, "/echo") == 0) {
        size_t len;
        const void *body = ioloop_http_body(req, &len);
        const char *a = ioloop_http_header(req, "X-A");

        assert_int_equal(ioloop_http_add_header(req, "X-Seen", a != NULL ? a : "(none)"), 0);
        ht_note(s, ioloop_http_respond(req, 200, body, len));
    } else if (strcmp(t, "/stream") == 0) {
        assert_int_equal(ioloop_http_write_head(req, 200), 0);
        assert_int_equal(ioloop_http_write(req, "abc", 3), 0);
        assert_int_equal(ioloop_http_write(req, "", 0), 0);
        assert_int_equal(ioloop_http_write(req, "defg", 4), 0);
        assert_int_equal(ioloop_http_finish(req), 0);
    } else if (strcmp(t, "/twice") == 0) {
        assert_int_equal(ioloop_http_respond(req, 200, "1", 1), 0);
        ht_note(s, ioloop_http_respond(req, 200, "2", 1));
        ht_note(s, ioloop_http_finish(req));
        ht_note(s, ioloop_http_add_header(req, "X", "y"));
    } else if (strcmp(t, "/twice-stream") == 0) {
        assert_int_equal(ioloop_http_write_head(req, 200), 0);
        ht_note(s, ioloop_http_respond(req, 200, "x", 1));
        ht_note(s, ioloop_http_write_head(req, 200));
        ht_note(s, ioloop_http_add_header(req, "X", "y"));
        ht_note(s, ioloop_http_write(req, NULL, 1));
        ht_note(s, ioloop_http_write(req, "x", 0)); /* nothing, and no empty last chunk */
        assert_int_equal(ioloop_http_finish(req), 0);
        ht_note(s, ioloop_http_finish(req));
    } else if (strcmp(t, "/inject") == 0) {
        ht_note(s, ioloop_http_add_header(req, "X-A", "one\r\nX-Injected: yes"));
        ht_note(s, ioloop_http_add_header(req, "X-A", "one\nX-Injected: yes"));
        ht_note(s, ioloop_http_add_header(req, "X-A", "one\rtwo"));
        ht_note(s, ioloop_http_add_header(req, "X-Injected: yes\r\nX-A", "one"));
        ht_note(s, ioloop_http_add_header(req, "X A", "one"));
        ht_note(s, ioloop_http_add_header(req, "", "one"));
        ht_note(s, ioloop_http_add_header(req, NULL, "one"));
        ht_note(s, ioloop_http_add_header(req, "X-A", NULL));
        ht_note(s, ioloop_http_add_header(req, "X-A", "one\ttwo"));
        ht_note(s, ioloop_http_respond(req, 99, NULL, 0));
        ht_note(s, ioloop_http_respond(req, 600, NULL, 0));
        ht_note(s, ioloop_http_respond(req, 200, NULL, 1));
        ht_note(s, ioloop_http_respond(req, 204, "x", 1));
        ht_note(s, ioloop_http_write(req, "x", 1)); /* no write_head yet */
        ht_note(s, ioloop_http_finish(req));
        ht_note(s, ioloop_http_respond(req, 1000, NULL, 0));
        ht_note(s, ioloop_http_respond(req, -200, NULL, 0));
        ht_note(s, ioloop_http_respond(req, 199, NULL, 0));
        ht_note(s, ioloop_http_write_head(req, 99));
        ht_note(s, ioloop_http_write_head(req, 1000));
        ht_note(s, ioloop_http_add_header(req, "X-A:", "one"));
        ht_note(s, ioloop_http_add_header(req, "X(A)", "one"));
        ht_note(s, ioloop_http_add_header(req, "X-A", "one\x7f"));
        ht_note(s, ioloop_http_add_header(req, "X-A", "one\x01two"));
        ht_note(s, ioloop_http_add_header(req, "X-A\r\n", "one"));
        ht_note(s, ioloop_http_respond(req, 200, "ok", 2));
    } else if (starts(t, "/lookup") || starts(t, "http://") || strcmp(t, "*") == 0) {
        char body[512];
        const char *missing = ioloop_http_header(req, "X-Missing");
        const char *dup = ioloop_http_header(req, "X-DUP");
        const char *host = ioloop_http_header(req, "host");
        int n = snprintf(body, sizeof body, "%s|%s|%s|%s|%s", ioloop_http_method(req), t,
                         dup != NULL ? dup : "(null)", host != NULL ? host : "(null)",
                         missing != NULL ? missing : "(null)");

        ioloop_http_respond(req, 200, body, (size_t)n);
    } else if (starts(t, "/status/")) {
        ioloop_http_respond(req, atoi(t + 8), NULL, 0);
    } else if (starts(t, "/big/")) {
        size_t n = strtoul(t + 5, NULL, 10);
        char *body = pattern(n);

        ht_note(s, ioloop_http_respond(req, 200, body, n));
        free(body);
    } else if (strcmp(t, "/stream-big") == 0) {
        char *body = pattern(200000);

        assert_int_equal(ioloop_http_write_head(req, 200), 0);
        ht_note(s, ioloop_http_write(req, body, 200000));
        assert_int_equal(ioloop_http_write(req, "0123456789", 10), 0);
        assert_int_equal(ioloop_http_finish(req), 0);
        free(body);
    } else if (strcmp(t, "/close") == 0) {
        assert_int_equal(ioloop_http_add_header(req, "Connection", "close"), 0);
        ioloop_http_respond(req, 200, "bye", 3);
    } else if (strcmp(t, "/close-list") == 0) {
        assert_int_equal(ioloop_http_add_header(req, "Connection", "Keep-Alive , CLOSE"), 0);
        ioloop_http_respond(req, 200, "bye", 3);
    } else {
        ioloop_http_respond(req, 404, NULL, 0);
    }
}

static int setup(void **state)
{
    struct ht_server *s = calloc(1, sizeof *s);

    ht_start(s, NULL, handle);
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    ht_stop(*state);
    free(*state);
    return 0;
}

/* The head up to (not including) Date's value, and what follows it. */
static void expect_bytes(const struct ht_response *r, const char *before_date,
                         const char *after_date)
{
    size_t n = strlen(before_date);
    char date[30];

    if (r->raw_len < n + 29 || memcmp(r->raw, before_date, n) != 0)
        fail_msg("unexpected response: %s", r->raw);
    memcpy(date, r->raw + n, 29);
    date[29] = '\0';
    assert_true(ht_date_ok(date));
    assert_string_equal(r->raw + n + 29, after_date);
}

/* ---- Status line, fields, keep-alive ---------------------------------------------------- */

static void test_http_server_response_bytes(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    ht_expect(&c, &r, 200);
    expect_bytes(&r, "HTTP/1.1 200 OK\r\nServer: ioloop\r\nDate: ",
                 "\r\nContent-Length: 5\r\n\r\nhello");
    ht_response_free(&r);

    /* The application's fields come first, then the server's. */
    ht_send(&c, "GET /typed HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    expect_bytes(&r, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: ioloop\r\nDate: ",
                 "\r\nContent-Length: 5\r\n\r\nhello");
    ht_response_free(&r);

    /* An unknown target: 404 with an empty body. */
    ht_send(&c, "GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 404);
    expect_bytes(&r, "HTTP/1.1 404 Not Found\r\nServer: ioloop\r\nDate: ",
                 "\r\nContent-Length: 0\r\n\r\n");
    ht_response_free(&r);

    /* Status lines: a long phrase, a code without one, and 204 without Content-Length. */
    ht_send(&c, "GET /status/511 HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /status/299 HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 511);
    expect_bytes(&r, "HTTP/1.1 511 Network Authentication Required\r\nServer: ioloop\r\nDate: ",
                 "\r\nContent-Length: 0\r\n\r\n");
    ht_response_free(&r);
    ht_expect(&c, &r, 299);
    expect_bytes(&r, "HTTP/1.1 299 \r\nServer: ioloop\r\nDate: ", "\r\nContent-Length: 0\r\n\r\n");
    ht_response_free(&r);
    ht_expect(&c, &r, 204);
    expect_bytes(&r, "HTTP/1.1 204 No Content\r\nServer: ioloop\r\nDate: ", "\r\n\r\n");
    ht_response_free(&r);
    ht_close(&c);
}

static void test_http_server_date_moves(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;
    char first[30];

    /* The cached Date follows the clock: a second later it says so. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_true(ht_date_ok(ht_field(&r, "Date")));
    snprintf(first, sizeof first, "%s", ht_field(&r, "Date"));
    ht_response_free(&r);
    usleep(1100 * 1000);
    ht_send(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_true(ht_date_ok(ht_field(&r, "Date")));
    assert_string_not_equal(ht_field(&r, "Date"), first);
    ht_response_free(&r);
    ht_close(&c);
}

static void test_http_server_own_fields(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /own HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    /* What the application added is not added again. */
    assert_string_equal(r.raw, "HTTP/1.1 200 OK\r\nserver: mine\r\nDATE: yesterday\r\n"
                               "Content-Length: 2\r\n\r\nok");
    ht_response_free(&r);
    ht_close(&c);
}

static void test_http_server_keepalive(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    for (int i = 0; i < 3; i++) {
        ht_send(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        ht_expect(&c, &r, 200);
        assert_null(ht_field(&r, "Connection")); /* 1.1 keeps the connection by default */
        assert_string_equal(r.body, "hello");
        ht_response_free(&r);
    }
    ht_expect_silence(&c, 50); /* and it stays open */
    ht_close(&c);
    assert_int_equal(ht_requests(s), 3);
}

/* ---- Pipelining ------------------------------------------------------------------------- */

static void test_http_server_pipelined_in_order(void **state)
{
    struct ht_server *s = *state;
    static const char *const order[] = {"/later/150", "/hello", "/later/20"};
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    /* One packet, three requests: the first is answered last (by a timer), the second at
     * once, the third by an earlier timer. The answers still come in request order. */
    ht_send(&c, "GET /later/150 HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /later/20 HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        ht_expect(&c, &r, 200);
        assert_string_equal(r.body, strcmp(order[i], "/hello") == 0 ? "hello" : order[i]);
        ht_response_free(&r);
    }
    assert_int_equal(ht_requests(s), 3);
    /* All three were dispatched before the first was answered. */
    assert_string_equal(s->targets[0], "/later/150");
    assert_string_equal(s->targets[2], "/later/20");
    ht_close(&c);
}

static void respond_all_held(struct ht_server *s)
{
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->nheld; i++) {
        char body[16];
        int n = snprintf(body, sizeof body, "%d", i);

        assert_int_equal(ioloop_http_respond(s->held[i], 200, body, (size_t)n), 0);
    }
    s->nheld = 0;
    pthread_mutex_unlock(&s->lock);
}

/* Answers the held requests last first: they still go out first first. */
static void respond_held_backwards(struct ht_server *s)
{
    pthread_mutex_lock(&s->lock);
    for (int i = s->nheld - 1; i >= 0; i--) {
        char body[16];
        int n = snprintf(body, sizeof body, "%d", i);

        assert_int_equal(ioloop_http_respond(s->held[i], 200, body, (size_t)n), 0);
    }
    s->nheld = 0;
    pthread_mutex_unlock(&s->lock);
}

static void test_http_server_pipeline_bound(void **state)
{
    struct ht_server *s = *state;
    enum { N = IOLOOP__HTTP_INFLIGHT_MAX + 36 };
    char *all = malloc(N * 32);
    struct ht_client c;
    struct ht_response r;
    size_t len = 0;

    assert_non_null(all);
    for (int i = 0; i < N; i++)
        len += (size_t)sprintf(all + len, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_connect(&c, s->port);
    ht_send_n(&c, all, len);
    /* Reading stops at the bound while the requests wait for their answers. */
    assert_true(ht_wait_requests(s, IOLOOP__HTTP_INFLIGHT_MAX));
    ht_in_loop(s, respond_held_backwards);
    assert_true(ht_wait_requests(s, N));
    ht_in_loop(s, respond_all_held);
    for (int i = 0; i < N; i++) {
        char body[16];

        snprintf(body, sizeof body, "%d",
                 i < IOLOOP__HTTP_INFLIGHT_MAX ? i : i - IOLOOP__HTTP_INFLIGHT_MAX);
        ht_expect(&c, &r, 200);
        assert_string_equal(r.body, body);
        ht_response_free(&r);
    }
    ht_close(&c);
    free(all);
}

static void count_held(struct ht_server *s)
{
    int n;

    pthread_mutex_lock(&s->lock);
    n = s->nheld;
    pthread_mutex_unlock(&s->lock);
    ht_note(s, n);
}

static void test_http_server_pipeline_pauses(void **state)
{
    struct ht_server *s = *state;
    enum { N = IOLOOP__HTTP_INFLIGHT_MAX + 10 };
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    for (int i = 0; i < N; i++)
        ht_send(&c, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(ht_wait_requests(s, IOLOOP__HTTP_INFLIGHT_MAX));
    /* Two round trips through the loop: every byte sent has been read by now, had it been
     * read at all; exactly the bound reached the handler. */
    ht_in_loop(s, count_held);
    ht_in_loop(s, count_held);
    assert_int_equal(ht_rc(s, 1), IOLOOP__HTTP_INFLIGHT_MAX);
    assert_int_equal(ht_requests(s), IOLOOP__HTTP_INFLIGHT_MAX);
    ht_in_loop(s, respond_all_held);
    assert_true(ht_wait_requests(s, N));
    ht_in_loop(s, respond_all_held);
    for (int i = 0; i < N; i++) {
        ht_expect(&c, &r, 200);
        ht_response_free(&r);
    }
    ht_close(&c);
}

/* A response that closes the connection, decided while an earlier request is still with the
 * application (the application's Connection: close; a streamed response to an HTTP/1.0
 * client, whose body ends with the connection): nothing after it is read, so no handler runs
 * for a request that could never be answered (RFC 9112 §9.6). */
static void test_http_server_close_decided_early(void **state)
{
    static const char *const first[] = {
        "GET /hold HTTP/1.1\r\nHost: t\r\n\r\nGET /close HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /hold HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        "GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    };
    static const char *const body[] = {"bye", "abcdefg"};
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    for (int i = 0; i < 2; i++) {
        int before = ht_requests(s);

        ht_connect(&c, s->port);
        ht_send(&c, first[i]);
        assert_true(ht_wait_requests(s, before + 2));
        ht_send(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        /* Two round trips through the loop: the request would have been read by now. */
        ht_in_loop(s, count_held);
        ht_in_loop(s, count_held);
        assert_int_equal(ht_requests(s), before + 2);
        ht_in_loop(s, respond_all_held);
        ht_expect(&c, &r, 200);
        assert_string_equal(r.body, "0");
        ht_response_free(&r);
        if (i == 0) {
            ht_expect(&c, &r, 200);
        } else {
            assert_int_equal(ht_recv(&c, &r, false), 0); /* up to the end of the stream */
            assert_int_equal(r.status, 200);
        }
        assert_string_equal(r.body, body[i]);
        ht_response_free(&r);
        assert_int_equal(ht_expect_eof(&c), 0);
        ht_close(&c);
        assert_int_equal(ht_requests(s), before + 2);
    }
}

static void check_big(struct ht_client *c, size_t n)
{
    struct ht_response r;
    char *want = pattern(n);

    ht_expect(c, &r, 200);
    assert_int_equal(r.body_len, n);
    assert_memory_equal(r.body, want, n);
    ht_response_free(&r);
    free(want);
}

static void test_http_server_slow_reader(void **state)
{
    struct ht_server *s = *state;
    enum { N = 24, SIZE = 1 << 20 };
    struct ht_client c;

    /* A client that pipelines and does not read: once the kernel's buffers are full (a few
     * MiB on loopback), reading its requests pauses when about IOLOOP__HTTP_OUTPUT_HIGH
     * bytes of answers wait, instead of buffering every answer. */
    ht_connect(&c, s->port);
    for (int i = 0; i < N; i++)
        ht_send(&c, "GET /big/1048576 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(ht_wait_requests(s, 2));
    usleep(300 * 1000); /* time enough to answer all N, were it not paused */
    if (ht_requests(s) >= N / 2)
        fail_msg("%d of %d requests read from a client that reads nothing", ht_requests(s), N);
    /* Reading the answers lets the rest in; every byte arrives, in order. */
    for (int i = 0; i < N; i++)
        check_big(&c, SIZE);
    assert_int_equal(ht_requests(s), N);
    ht_close(&c);
}

static void test_http_server_output_limit(void **state)
{
    struct ht_server s;
    struct ht_client c;
    struct ht_response r;

    /* Answers larger than the connection's output limit go out whole, in pieces, also when
     * one waits for its turn behind a later answer. */
    ht_start_opts(&s, 1, "127.0.0.1:0",
                  &(ioloop_http_options_t){.server = {.max_output = 65536}}, handle);
    ht_connect(&c, s.port);
    ht_send(&c, "GET /big/300000 HTTP/1.1\r\nHost: t\r\n\r\n");
    check_big(&c, 300000);
    ht_send(&c, "GET /later/50 HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /big/300000 HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "/later/50");
    ht_response_free(&r);
    check_big(&c, 300000);
    assert_int_equal(ht_rc(&s, 0), 0);
    assert_int_equal(ht_rc(&s, 2), 0);

    /* A streamed piece beyond the limit is refused (nothing of it sent); the stream goes on. */
    ht_send(&c, "GET /stream-big HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "0123456789");
    ht_response_free(&r);
    assert_int_equal(ht_rc(&s, 3), -ENOBUFS);
    ht_close(&c);
    ht_stop(&s);
}

/* ---- HTTP/1.0, Connection: close, HEAD -------------------------------------------------- */

static void test_http_server_http10(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /hello HTTP/1.0\r\n\r\n");
    ht_expect(&c, &r, 200);
    expect_bytes(&r, "HTTP/1.1 200 OK\r\nServer: ioloop\r\nDate: ",
                 "\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0); /* the server closed after the response */
    ht_close(&c);

    /* A 1.0 client that asks for keep-alive gets it, and says so. */
    ht_connect(&c, s->port);
    for (int i = 0; i < 2; i++) {
        ht_send(&c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        ht_expect(&c, &r, 200);
        assert_string_equal(ht_field(&r, "Connection"), "keep-alive");
        ht_response_free(&r);
    }
    ht_close(&c);
}

static void test_http_server_connection_close(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    /* What follows a Connection: close request is not read. */
    ht_send(&c, "GET /later/30 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(ht_field(&r, "Connection"), "close");
    assert_string_equal(r.body, "/later/30");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
    assert_int_equal(ht_requests(s), 1);

    /* The application may close too, also with "close" as one element of a list; the
     * request behind it is not read. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET /close HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(ht_field(&r, "Connection"), "close");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
    ht_connect(&c, s->port);
    ht_send(&c, "GET /close-list HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(ht_field(&r, "Connection"), "Keep-Alive , CLOSE");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
    assert_int_equal(ht_requests(s), 3);
}

static void test_http_server_head(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(ht_recv(&c, &r, true), 0);
    /* The length GET would get, and no body: */
    expect_bytes(&r, "HTTP/1.1 200 OK\r\nServer: ioloop\r\nDate: ",
                 "\r\nContent-Length: 5\r\n\r\n");
    ht_response_free(&r);
    /* ... as the next response on the connection shows (no stray body bytes before it). */
    ht_send(&c, "HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(ht_recv(&c, &r, true), 0);
    assert_string_equal(ht_field(&r, "Transfer-Encoding"), "chunked");
    ht_response_free(&r);
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "hello");
    ht_response_free(&r);
    ht_close(&c);
}

/* ---- Request bodies --------------------------------------------------------------------- */

static void test_http_server_continue(void **state)
{
    struct ht_server *s = *state;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\n"
                "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    ht_expect_raw(&c, cont);
    ht_send(&c, "hello");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "hello");
    ht_response_free(&r);

    /* HTTP/1.0: the expectation is ignored; the body comes all the same. */
    ht_send(&c, "POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n"
                "Content-Length: 2\r\n\r\n");
    ht_expect_silence(&c, 50);
    ht_send(&c, "hi");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "hi");
    ht_response_free(&r);

    /* A pipelined request's 100 waits for the answers before it. */
    ht_send(&c, "GET /later/50 HTTP/1.1\r\nHost: t\r\n\r\n"
                "POST /echo HTTP/1.1\r\nHost: t\r\n"
                "Expect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "/later/50");
    ht_response_free(&r);
    ht_expect_raw(&c, cont);
    ht_send(&c, "abc");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "abc");
    ht_response_free(&r);
    ht_close(&c);
}

static void nothing(struct ht_server *s)
{
}

/* Waits until the server's loop has read what was sent: its I/O count moved, and a posted
 * callback (which runs after that iteration's handlers) came back. */
static void wait_read(struct ht_server *s, uint64_t before)
{
    uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;
    ioloop_stats_t st;

    do {
        ioloop_get_stats(s->loop, &st);
        if (st.io_events > before)
            break;
        usleep(200);
    } while (test_now_us() < deadline);
    assert_true(st.io_events > before);
    ht_in_loop(s, nothing);
}

/* Sends msg in two parts, split at every byte, each request on the same connection, and
 * checks each answer with check(). */
static void each_split(struct ht_server *s, const char *msg,
                       void (*check)(struct ht_client *c, size_t split))
{
    size_t len = strlen(msg);
    struct ht_client c;

    ht_connect(&c, s->port);
    for (size_t split = 1; split < len; split++) {
        ioloop_stats_t st;

        ioloop_get_stats(s->loop, &st);
        ht_send_n(&c, msg, split);
        wait_read(s, st.io_events);
        ht_send_n(&c, msg + split, len - split);
        check(&c, split);
    }
    ht_close(&c);
}

static void check_chunked_echo(struct ht_client *c, size_t split)
{
    struct ht_response r;

    ht_expect(c, &r, 200);
    if (strcmp(r.body, "hello world!") != 0 || strcmp(ht_field(&r, "X-Seen"), "one two") != 0)
        fail_msg("split at %zu: body \"%s\", X-Seen \"%s\"", split, r.body,
                 ht_field(&r, "X-Seen"));
    ht_response_free(&r);
}

static void test_http_server_chunked_body_split(void **state)
{
    struct ht_server *s = *state;

    /* Chunk sizes in hex, an extension, a trailer; a field value with inner whitespace (a
     * split before " two" must not look like a folded line). */
    each_split(s, "POST /echo HTTP/1.1\r\nHost: t\r\nX-A:  one two  \r\n"
                  "Transfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n7;ext=1\r\n world!\r\n0\r\nX-Trailer: t\r\n\r\n",
               check_chunked_echo);
    assert_true(ht_requests(s) > 100);
}

static void check_length_echo(struct ht_client *c, size_t split)
{
    struct ht_response r;

    ht_expect(c, &r, 200);
    if (strcmp(r.body, "0123456789") != 0)
        fail_msg("split at %zu: body \"%s\"", split, r.body);
    ht_response_free(&r);
}

static void test_http_server_length_body_split(void **state)
{
    each_split(*state, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789",
               check_length_echo);
}

static void check_fold_refused(struct ht_client *c, size_t split)
{
    struct ht_response r;

    ht_expect(c, &r, 400);
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(c), 0);
}

static void test_http_server_obs_fold_split(void **state)
{
    struct ht_server *s = *state;
    static const char msg[] = "GET /hello HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n";

    /* A folded line is refused wherever the reads split it (a fresh connection each time:
     * the refusal closes it). */
    for (size_t split = 1; split < sizeof msg - 1; split++) {
        struct ht_client c;
        ioloop_stats_t st;

        ht_connect(&c, s->port);
        ioloop_get_stats(s->loop, &st);
        ht_send_n(&c, msg, split);
        wait_read(s, st.io_events);
        ht_send_n(&c, msg + split, sizeof msg - 1 - split);
        check_fold_refused(&c, split);
        ht_close(&c);
    }
    assert_int_equal(ht_requests(s), 0);
}

/* ---- Responses -------------------------------------------------------------------------- */

static void test_http_server_chunked_response(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    expect_bytes(&r, "HTTP/1.1 200 OK\r\nServer: ioloop\r\nDate: ",
                 "\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
    ht_response_free(&r);
    ht_close(&c);

    /* To HTTP/1.0: the body as it is, ended by the close. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET /stream HTTP/1.0\r\n\r\n");
    ht_expect(&c, &r, 200);
    expect_bytes(&r, "HTTP/1.1 200 OK\r\nServer: ioloop\r\nDate: ",
                 "\r\nConnection: close\r\n\r\nabcdefg");
    ht_response_free(&r);
    ht_close(&c);
}

static void test_http_server_end_twice(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /twice HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "1");
    ht_response_free(&r);
    assert_int_equal(ht_rc(s, 0), -EALREADY);
    assert_int_equal(ht_rc(s, 1), -EALREADY);
    assert_int_equal(ht_rc(s, 2), -EALREADY);

    ht_send(&c, "GET /twice-stream HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "");
    assert_null(strstr(r.raw, "\r\nX: y"));
    ht_response_free(&r);
    assert_int_equal(ht_rc(s, 3), -EALREADY); /* respond after write_head */
    assert_int_equal(ht_rc(s, 4), -EALREADY); /* write_head again */
    assert_int_equal(ht_rc(s, 5), -EALREADY); /* a field after the head went out */
    assert_int_equal(ht_rc(s, 6), -EINVAL);   /* NULL data */
    assert_int_equal(ht_rc(s, 7), 0);         /* len 0 */
    assert_int_equal(ht_rc(s, 8), -EALREADY); /* finish again */
    ht_close(&c);
}

static void respond_first_held(struct ht_server *s);

static void test_http_server_wrong_thread(void **state)
{
    struct ht_server *s = *state;
    ioloop_http_request_t *req;
    struct ht_client c;
    struct ht_response r;

    /* From another thread while the loop runs: refused, nothing changed; the loop's own
     * thread then ends the request. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    req = ht_held(s, 0);
    assert_int_equal(ioloop_http_add_header(req, "X", "y"), -EPERM);
    assert_int_equal(ioloop_http_respond(req, 200, "x", 1), -EPERM);
    assert_int_equal(ioloop_http_write_head(req, 200), -EPERM);
    assert_int_equal(ioloop_http_write(req, "x", 1), -EPERM);
    assert_int_equal(ioloop_http_finish(req), -EPERM);
    ht_in_loop(s, respond_first_held);
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "done");
    assert_null(ht_field(&r, "X"));
    ht_response_free(&r);
    ht_close(&c);
}

static void test_http_server_header_injection(void **state)
{
    struct ht_server *s = *state;
    static const int expected[] = {
        -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL, 0,
        -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL,
        -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL, /* statuses 1000, -200, 199, 99, 1000 */
        -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL, /* names and values */
        0,
    };
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /inject HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        if (ht_rc(s, (int)i) != expected[i])
            fail_msg("call %zu returned %d, not %d", i, ht_rc(s, (int)i), expected[i]);
    /* Only the valid field went out; nothing injected. */
    assert_null(strstr(r.raw, "Injected"));
    assert_string_equal(ht_field(&r, "X-A"), "one\ttwo");
    assert_string_equal(r.body, "ok");
    ht_response_free(&r);
    ht_close(&c);
}

/* A NULL request: every call refuses it, the accessors give nothing. */
static void test_http_server_null_request(void **state)
{
    size_t len = 7;

    (void)state;
    assert_int_equal(ioloop_http_add_header(NULL, "X", "y"), -EINVAL);
    assert_int_equal(ioloop_http_respond(NULL, 200, NULL, 0), -EINVAL);
    assert_int_equal(ioloop_http_write_head(NULL, 200), -EINVAL);
    assert_int_equal(ioloop_http_write(NULL, "x", 1), -EINVAL);
    assert_int_equal(ioloop_http_finish(NULL), -EINVAL);
    assert_null(ioloop_http_method(NULL));
    assert_null(ioloop_http_target(NULL));
    assert_null(ioloop_http_header(NULL, "Host"));
    assert_null(ioloop_http_body(NULL, &len));
    assert_int_equal(len, 0);
    assert_null(ioloop_http_loop(NULL));
    assert_int_equal(ioloop_http_server_port(NULL), -EINVAL);
    assert_int_equal(ioloop_http_server_start(NULL), -EINVAL);
    assert_int_equal(ioloop_http_server_drain(NULL, 0), -EINVAL);
    ioloop_http_server_free(NULL);
}

/* What http.h says is not judged: absolute and asterisk form. Exact bytes of the answers.
 * (HTTP/1.1 without Host is 400: test_http_limits_malformed.) */
static void test_http_server_target_forms(void **state)
{
    static const char *const req[][2] = {
        {"GET http://h:1/lookup?q HTTP/1.1\r\nHost: h:1\r\n\r\n",
         "GET|http://h:1/lookup?q|(null)|h:1|(null)"},
        {"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "OPTIONS|*|(null)|h|(null)"},
    };
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        char tail[128];

        ht_send(&c, req[i][0]);
        ht_expect(&c, &r, 200);
        snprintf(tail, sizeof tail, "\r\nContent-Length: %zu\r\n\r\n%s", strlen(req[i][1]),
                 req[i][1]);
        expect_bytes(&r, "HTTP/1.1 200 OK\r\nServer: ioloop\r\nDate: ", tail);
        ht_response_free(&r);
    }
    ht_close(&c);
}

/* No tunnels (http.h): Upgrade is ignored and CONNECT is an ordinary request; the bytes behind
 * either are the next requests, answered in order. */
static void test_http_server_no_tunnels(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /lookup HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                "Upgrade: websocket\r\n\r\n"
                "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"
                "GET /hello HTTP/1.1\r\nHost: h\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "GET|/lookup|(null)|h|(null)");
    ht_response_free(&r);
    ht_expect(&c, &r, 404); /* the application's answer to CONNECT h:443 */
    ht_response_free(&r);
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "hello");
    ht_response_free(&r);
    assert_int_equal(ht_requests(s), 3);
    ht_close(&c);
}

static void test_http_server_lookup(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    ht_connect(&c, s->port);
    ht_send(&c, "PATCH /lookup/a%20b?x=1&y=%2F HTTP/1.1\r\nx-dup: a\r\nHost: h:1\r\n"
                "X-Dup:   b c \r\nX-DUP:\r\nx-dup: d\r\n\r\n");
    ht_expect(&c, &r, 200);
    /* Names match in any case; repeats are joined in order; values lose their outer
     * whitespace; the target is as sent. */
    assert_string_equal(r.body, "PATCH|/lookup/a%20b?x=1&y=%2F|a, b c, , d|h:1|(null)");
    ht_response_free(&r);
    ht_close(&c);
}

/* ---- Requests that outlive their connection --------------------------------------------- */

/* Set in the loop by check_orphaned(), read after ht_in_loop() returned. */
static bool orphaned;

static void check_orphaned(struct ht_server *s)
{
    pthread_mutex_lock(&s->lock);
    orphaned = (s->held[0]->flags & F_ORPHAN) != 0;
    pthread_mutex_unlock(&s->lock);
}

/* Waits until the held request's connection is gone (the reset reached the server). */
static void wait_orphaned(struct ht_server *s)
{
    uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;

    for (;;) {
        ht_in_loop(s, check_orphaned);
        if (orphaned)
            return;
        assert_true(test_now_us() < deadline);
        usleep(1000);
    }
}

/* Closes with SO_LINGER {1, 0}: the server gets a reset. */
static void reset(struct ht_client *c)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    ht_close(c);
}

static void end_held_noting(struct ht_server *s)
{
    ioloop_http_request_t *req = s->held[0];

    /* Valid until ended: the request's strings are still there. */
    assert_string_equal(ioloop_http_target(req), "/hold");
    assert_string_equal(ioloop_http_header(req, "X-A"), "kept");
    ht_note(s, ioloop_http_respond(req, 200, "late", 4));
    ht_note(s, ioloop_http_respond(req, 200, "later", 5)); /* ended (and freed) already */
    pthread_mutex_lock(&s->lock);
    s->nheld = 0;
    pthread_mutex_unlock(&s->lock);
}

static void stream_held_noting(struct ht_server *s)
{
    ioloop_http_request_t *req = s->held[0];

    ht_note(s, ioloop_http_write_head(req, 200));
    pthread_mutex_lock(&s->lock);
    s->nheld = 0;
    pthread_mutex_unlock(&s->lock);
}

static void test_http_server_client_left(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;

    ht_connect(&c, s->port);
    ht_send(&c, "GET /hold HTTP/1.1\r\nHost: t\r\nX-A: kept\r\n\r\n");
    ht_held(s, 0);
    reset(&c);
    wait_orphaned(s);
    ht_in_loop(s, end_held_noting);
    assert_int_equal(ht_rc(s, 0), -EPIPE);
    assert_int_equal(ht_rc(s, 1), -EALREADY);

    /* The same for a streamed answer. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_held(s, 0);
    reset(&c);
    wait_orphaned(s);
    ht_in_loop(s, stream_held_noting);
    assert_int_equal(ht_rc(s, 2), -EPIPE);
}

static void test_http_server_free_unended(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c, d;

    /* Requests never ended — with their clients still there, and one answered behind an
     * unanswered one — are freed with the server (ASan's leak check would tell otherwise). */
    ht_connect(&c, s->port);
    ht_send(&c, "POST /hold HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    ht_connect(&d, s->port);
    ht_send(&d, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(ht_wait_requests(s, 3));
    ioloop_http_server_free(s->server);
    ioloop_pool_free(s->pool);
    assert_true(ht_expect_eof(&c) <= 0); /* closed (or reset) without an answer */
    assert_true(ht_expect_eof(&d) <= 0);
    ht_close(&c);
    ht_close(&d);
    assert_int_equal(test_count_fds(), s->fds);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    ht_start(s, NULL, handle); /* for the teardown */
}

static void test_http_server_half_close(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    /* A client that sends its requests and shuts down its side still gets every answer,
     * also one that comes later; then the server closes. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /later/50 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(shutdown(c.fd, SHUT_WR), 0);
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "hello");
    ht_response_free(&r);
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "/later/50");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
}

/* ---- Drain ------------------------------------------------------------------------------ */

struct drainer {
    struct ht_server *s;
    pthread_t thread;
    int rc;
};

static void *drain_main(void *arg)
{
    struct drainer *d = arg;

    d->rc = ioloop_http_server_drain(d->s->server, TEST_WAIT_MS);
    return NULL;
}

static void respond_first_held(struct ht_server *s)
{
    pthread_mutex_lock(&s->lock);
    assert_int_equal(ioloop_http_respond(s->held[0], 200, "done", 4), 0);
    s->nheld = 0;
    pthread_mutex_unlock(&s->lock);
}

static void test_http_server_drain(void **state)
{
    struct ht_server *s = *state;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
    struct ht_client idle, busy;
    struct ht_response r;
    struct drainer d = {.s = s};
    int late;

    ht_connect(&idle, s->port);
    ht_send(&idle, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&idle, &r, 200);
    ht_response_free(&r);
    ht_connect(&busy, s->port);
    ht_send(&busy, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_held(s, 0);

    assert_int_equal(pthread_create(&d.thread, NULL, drain_main, &d), 0);
    /* The idle keep-alive connection is closed at once ... */
    assert_int_equal(ht_expect_eof(&idle), 0);
    ht_close(&idle);
    /* ... the request in progress finishes, with Connection: close, then its connection. */
    ht_in_loop(s, respond_first_held);
    ht_expect(&busy, &r, 200);
    assert_string_equal(ht_field(&r, "Connection"), "close");
    assert_string_equal(r.body, "done");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&busy), 0);
    ht_close(&busy);
    pthread_join(d.thread, NULL);
    assert_int_equal(d.rc, 0);

    /* The listener is closed: nobody is accepted any more. */
    late = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(late, (struct sockaddr *)&sin, sizeof sin), -1);
    assert_int_equal(errno, ECONNREFUSED);
    close(late);
}

static void test_http_server_drain_pipelined(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;
    struct drainer d = {.s = s};

    /* Two requests in progress on one connection: both are answered, the last one with
     * Connection: close. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\nGET /later/100 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(ht_wait_requests(s, 2));
    assert_int_equal(pthread_create(&d.thread, NULL, drain_main, &d), 0);
    ht_in_loop(s, respond_first_held);
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "done");
    ht_response_free(&r);
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "/later/100");
    assert_string_equal(ht_field(&r, "Connection"), "close");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
    pthread_join(d.thread, NULL);
    assert_int_equal(d.rc, 0);
}

/* ---- Server options --------------------------------------------------------------------- */

static void test_http_server_reuseport(void **state)
{
    struct ht_server s;
    struct ht_client c[8];
    struct ht_response r;

    ht_start_opts(&s, 2, "127.0.0.1:0",
                  &(ioloop_http_options_t){.server = {.reuseport = 1}}, handle);
    for (int i = 0; i < 8; i++) {
        ht_connect(&c[i], s.port);
        ht_send(&c[i], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /later/1 HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    for (int i = 0; i < 8; i++) {
        ht_expect(&c[i], &r, 200);
        assert_string_equal(r.body, "hello");
        ht_response_free(&r);
        ht_expect(&c[i], &r, 200);
        assert_string_equal(r.body, "/later/1");
        ht_response_free(&r);
        ht_close(&c[i]);
    }
    ht_stop(&s);
}

static void test_http_server_proxy_protocol(void **state)
{
    struct ht_server s;
    struct ht_client c;
    struct ht_response r;

    ht_start_opts(&s, 1, "127.0.0.1:0",
                  &(ioloop_http_options_t){.server = {.proxy_protocol = 1}}, handle);
    ht_connect(&c, s.port);
    ht_send(&c, "PROXY TCP4 192.0.2.1 192.0.2.2 5555 80\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "hello");
    ht_response_free(&r);
    ht_close(&c);
    /* Without the header: closed before any request reaches the handler. */
    ht_connect(&c, s.port);
    ht_send(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(ht_recv(&c, &r, false), -1);
    ht_close(&c);
    assert_int_equal(ht_requests(&s), 1);
    ht_stop(&s);
}

static void test_http_server_max_conns(void **state)
{
    struct ht_server s;
    struct ht_client a, b;
    struct ht_response r;

    ht_start_opts(&s, 1, "127.0.0.1:0", &(ioloop_http_options_t){.server = {.max_conns = 1}},
                  handle);
    ht_connect(&a, s.port);
    ht_send(&a, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&a, &r, 200);
    ht_response_free(&r);
    ht_connect(&b, s.port); /* one too many: closed at once */
    ht_send(&b, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(ht_recv(&b, &r, false), -1);
    ht_close(&b);
    ht_close(&a);
    ht_stop(&s);
}

static void never(ioloop_http_request_t *req, void *user)
{
    fail_msg("no request was due");
}

static void test_http_server_new_errors(void **state)
{
    ioloop_pool_t *pool = ioloop_pool_new(1);

    errno = 0;
    assert_null(ioloop_http_server_new(NULL, "127.0.0.1:0", never,
                                       NULL, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_http_server_new(pool, "127.0.0.1:0", NULL, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_http_server_new(pool, "nonsense", never, NULL,
                                       NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_http_server_new(pool, "127.0.0.1:0", never,
                                       NULL,
                                       &(ioloop_http_options_t){.server = {.reuseport = 2}}));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(ioloop_http_server_start(NULL), -EINVAL);
    assert_int_equal(ioloop_http_server_port(NULL), -EINVAL);
    assert_int_equal(ioloop_http_server_drain(NULL, 0), -EINVAL);
    ioloop_http_server_free(NULL);
    assert_int_equal(ioloop_http_respond(NULL, 200, NULL, 0), -EINVAL);
    assert_null(ioloop_http_method(NULL));
    assert_null(ioloop_http_header(NULL, "x"));
    ioloop_pool_free(pool);
}

static void test_http_server_pool_freed_first(void **state)
{
    struct ht_server s;
    struct ht_client c;

    /* The pool goes first, with a connection open and a request never ended: the server
     * is freed after it, without touching the loops, and nothing leaks. */
    ht_start(&s, NULL, handle);
    ht_connect(&c, s.port);
    ht_send(&c, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_held(&s, 0);
    ioloop_pool_free(s.pool);
    assert_int_equal(ioloop_http_server_drain(s.server, 0), 0);
    ioloop_http_server_free(s.server);
    ht_close(&c);
    pthread_cond_destroy(&s.cond);
    pthread_mutex_destroy(&s.lock);
    assert_int_equal(test_count_fds(), s.fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_server_response_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_date_moves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_own_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_pipelined_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_pipeline_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_pipeline_pauses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_close_decided_early, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_slow_reader, setup, teardown),
        cmocka_unit_test(test_http_server_output_limit),
        cmocka_unit_test_setup_teardown(test_http_server_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_connection_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_chunked_body_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_length_body_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_obs_fold_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_chunked_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_end_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_wrong_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_header_injection, setup, teardown),
        cmocka_unit_test(test_http_server_null_request),
        cmocka_unit_test_setup_teardown(test_http_server_target_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_no_tunnels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_client_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_free_unended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_server_drain_pipelined, setup, teardown),
        cmocka_unit_test(test_http_server_reuseport),
        cmocka_unit_test(test_http_server_proxy_protocol),
        cmocka_unit_test(test_http_server_max_conns),
        cmocka_unit_test(test_http_server_new_errors),
        cmocka_unit_test(test_http_server_pool_freed_first),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
