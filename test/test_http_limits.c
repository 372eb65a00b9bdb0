/*
 * Bad input never reaches the handler (API.md §8, PITFALLS "HTTP request smuggling",
 * "Slowloris"): malformed requests get 400, smuggling attempts 400, a head beyond
 * max_header_bytes 431, a body beyond max_body_bytes 413 (a declared one without reading
 * it), a head not complete within header_timeout_ms 408 (also dripped a byte at a time), a
 * body that stalls 408, an HTTP version other than 1.x 505; each response is sent whole and
 * the connection closes after it. A keep-alive connection is closed after idle_timeout_ms,
 * and only then. Limits and timeouts are small here so that each case is quick.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "http_helpers.h"

#define MAX_HEAD 256
#define MAX_BODY 100
#define HEAD_MS 300
#define IDLE_MS 600

/* 200 with the request's body. */
static void echo(ioloop_http_request_t *req, struct ht_server *s)
{
    size_t len;
    const void *body = ioloop_http_body(req, &len);

    ht_note_request(s, req);
    ioloop_http_respond(req, 200, body, len);
}

static int setup(void **state)
{
    struct ht_server *s = calloc(1, sizeof *s);

    ht_start(s,
             &(ioloop_http_options_t){
                 .max_header_bytes = MAX_HEAD,
                 .max_body_bytes = MAX_BODY,
                 .header_timeout_ms = HEAD_MS,
                 .idle_timeout_ms = IDLE_MS,
             },
             echo);
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    ht_stop(*state);
    free(*state);
    return 0;
}

/* Sends msg on a new connection; the answer must be `status` with these exact bytes around
 * Date, then the end of the stream. Returns the ms from the send to the answer. */
static uint64_t refused(struct ht_server *s, const char *msg, int status, const char *line)
{
    struct ht_client c;
    struct ht_response r;
    char before[128];
    uint64_t t0;
    size_t n;

    ht_connect(&c, s->port);
    t0 = test_now_us();
    ht_send(&c, msg);
    if (ht_recv(&c, &r, false) < 0)
        fail_msg("no answer to %s", msg);
    if (r.status != status)
        fail_msg("%d, not %d, for \"%s\": %s", r.status, status, msg, r.raw);
    n = (size_t)snprintf(before, sizeof before, "HTTP/1.1 %s\r\nServer: ioloop\r\nDate: ", line);
    assert_memory_equal(r.raw, before, n);
    assert_true(ht_date_ok(ht_field(&r, "Date")));
    assert_string_equal(r.raw + n + 29, "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
    return (test_now_us() - t0) / 1000;
}

/* ---- Malformed and smuggling ------------------------------------------------------------ */

static void test_http_limits_malformed(void **state)
{
    static const char *const bad[] = {
        "garbage\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello */
        "GET\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nHost x\r\n\r\n",   /* no colon */
        "GET / HTTP/1.1\r\nHost: t\r\n: empty name\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",          /* a space in the target */
        "GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n",  /* a bare CR in a value */
        "GET / XTTP/1.1\r\n\r\n",
        "BREW / HTTP/1.1\r\nHost: t\r\n\r\n",            /* no such method */
        "GET / HTTP/1.1\r\n\r\n",                         /* HTTP/1.1 without Host */
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        /* request lines the non-strict parser lets pass: it checks only the H of HTTP */
        "GET / HXXX/1.1\r\n\r\n",
        "GET / Hxxp/1.1\r\n\r\n",
        "GET / HTTP-1.1\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: t\r\n\r\n",         /* a space after the version */
        "GET  / HTTP/1.1\r\nHost: t\r\n\r\n",         /* two spaces */
        "GET /  HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET / HXXX/1.1\r\nContent-Length: 2\r\n\r\nok", /* also with a body */
    };
    struct ht_server *s = *state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        refused(s, bad[i], 400, "400 Bad Request");
    assert_int_equal(ht_requests(s), 0);
}

static void test_http_limits_smuggling(void **state)
{
    static const char *const bad[] = {
        /* Content-Length and Transfer-Encoding, in either order */
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        /* duplicate Content-Length, differing — and equal (http-parser refuses any repeat) */
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
        /* obs-fold, with a space and with a tab */
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nX-A: one\r\n\tchunked\r\n\r\n",
        /* whitespace between a name and its colon */
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
        "GET / HTTP/1.1\r\nHost: t\r\nHost\t: x\r\n\r\n",
        /* a transfer coding that does not end in chunked: no way to find the body's end */
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n",
        ("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: gzip\r\n\r\n"), /* parenthesised: one element (clang) */
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
        /* chunked twice, in one field or two: the body decoded once is still chunked */
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        ("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
         "transfer-encoding: chunked\r\n\r\n"),
        /* Transfer-Encoding from an HTTP/1.0 client: faulty framing (RFC 9112 §6.1) */
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        /* line ends the non-strict parser lets pass: the CRLF after a chunk's data, the LF
         * after the CR of a chunk-size line, of the head's end, of the trailers' end */
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\rXhello\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\rXGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\r\n\rX",
        "\r\rGET / HTTP/1.1\r\nHost: t\r\n\r\n",
        /* two hosts: a proxy may route by one and the server serve the other */
        "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    };
    struct ht_server *s = *state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        refused(s, bad[i], 400, "400 Bad Request");
    assert_int_equal(ht_requests(s), 0);
}

static void test_http_limits_after_good(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;

    /* The refusal comes after the answers owed before it, then the close. */
    ht_connect(&c, s->port);
    ht_send(&c, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\r\n"
                "Host: t\r\nHost x\r\n\r\n");
    ht_expect(&c, &r, 200);
    assert_string_equal(r.body, "ok");
    ht_response_free(&r);
    ht_expect(&c, &r, 400);
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
    assert_int_equal(ht_requests(s), 1);
}

static void test_http_limits_version(void **state)
{
    struct ht_server *s = *state;

    refused(s, "GET / HTTP/2.0\r\n\r\n", 505, "505 HTTP Version Not Supported");
    refused(s, "GET / HTTP/0.9\r\n\r\n", 505, "505 HTTP Version Not Supported");
    assert_int_equal(ht_requests(s), 0);
}

/* A coding the server does not undo, before chunked: 501, not a body still encoded. */
static void test_http_limits_coding(void **state)
{
    struct ht_server *s = *state;

    refused(s, "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
               "0\r\n\r\n", 501, "501 Not Implemented");
    refused(s, "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n"
               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "501 Not Implemented");
    assert_int_equal(ht_requests(s), 0);
}

/* A bad request line split at every byte: refused all the same, and only once. */
static void test_http_limits_request_line_split(void **state)
{
    static const char *const bad[] = {
        "GET / HXXX/1.1\r\nHost: t\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
    };
    struct ht_server *s = *state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (size_t cut = 1; cut < strlen(bad[i]); cut++) {
            struct ht_client c;
            struct ht_response r;

            ht_connect(&c, s->port);
            ht_send_n(&c, bad[i], cut);
            ht_send(&c, bad[i] + cut);
            ht_expect(&c, &r, 400);
            assert_string_equal(ht_field(&r, "Connection"), "close");
            ht_response_free(&r);
            assert_int_equal(ht_expect_eof(&c), 0);
            ht_close(&c);
        }
    }
    assert_int_equal(ht_requests(s), 0);
}

/* ---- Sizes ------------------------------------------------------------------------------ */

/* A GET whose head is exactly `size` bytes long. */
static char *head_of(size_t size)
{
    static const char start[] = "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: ";
    char *msg = malloc(size + 1);

    assert_non_null(msg);
    assert_true(size > sizeof start + 4);
    memcpy(msg, start, sizeof start - 1);
    memset(msg + sizeof start - 1, 'p', size - (sizeof start - 1) - 4);
    memcpy(msg + size - 4, "\r\n\r\n", 5);
    return msg;
}

static void test_http_limits_header_size(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;
    char *msg = head_of(MAX_HEAD);

    /* Exactly at the limit: served. */
    ht_connect(&c, s->port);
    ht_send(&c, msg);
    ht_expect(&c, &r, 200);
    ht_response_free(&r);
    ht_close(&c);
    free(msg);
    /* One byte more: 431. */
    msg = head_of(MAX_HEAD + 1);
    refused(s, msg, 431, "431 Request Header Fields Too Large");
    free(msg);
    /* A head that goes on and on is refused once it passed the limit, without its end. */
    msg = head_of(4 * MAX_HEAD);
    msg[4 * MAX_HEAD - 4] = '\0';
    refused(s, msg, 431, "431 Request Header Fields Too Large");
    free(msg);
    assert_int_equal(ht_requests(s), 1);
}

static void test_http_limits_body_size(void **state)
{
    struct ht_server *s = *state;
    char body[MAX_BODY + 2], msg[512];
    struct ht_client c;
    struct ht_response r;

    memset(body, 'b', sizeof body);
    body[sizeof body - 1] = '\0';
    /* At the limit: served. */
    snprintf(msg, sizeof msg, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%.*s",
             MAX_BODY, MAX_BODY, body);
    ht_connect(&c, s->port);
    ht_send(&c, msg);
    ht_expect(&c, &r, 200);
    assert_int_equal(r.body_len, MAX_BODY);
    ht_response_free(&r);
    ht_close(&c);
    /* Declared one byte too long: 413 at once, without the body being sent. */
    snprintf(msg, sizeof msg, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n",
             MAX_BODY + 1);
    refused(s, msg, 413, "413 Payload Too Large");
    /* ... also with Expect: no 100 Continue for a body that is not wanted. */
    snprintf(msg, sizeof msg, "POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                              "Content-Length: %d\r\n\r\n",
             MAX_BODY + 1);
    refused(s, msg, 413, "413 Payload Too Large");
    /* Chunked beyond the limit: 413 once the chunks pass it. */
    snprintf(msg, sizeof msg, "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "%x\r\n%.*s\r\n2\r\nbb\r\n0\r\n\r\n", MAX_BODY - 1, MAX_BODY - 1,
             body);
    refused(s, msg, 413, "413 Payload Too Large");
    assert_int_equal(ht_requests(s), 1);
}

/* ---- Timeouts --------------------------------------------------------------------------- */

static void test_http_limits_header_timeout(void **state)
{
    struct ht_server *s = *state;
    uint64_t ms;

    /* Nothing at all after the accept. */
    ms = refused(s, "", 408, "408 Request Timeout");
    assert_true(ms >= HEAD_MS - 5 && ms < HEAD_MS + 1500);
    /* Half a head. */
    ms = refused(s, "GET / HTTP/1.1\r\nHost: x\r\n", 408, "408 Request Timeout");
    assert_true(ms >= HEAD_MS - 5 && ms < HEAD_MS + 1500);
    assert_int_equal(ht_requests(s), 0);
}

static void test_http_limits_slow_drip(void **state)
{
    struct ht_server *s = *state;
    static const char msg[] = "GET / HTTP/1.1\r\nHost: t\r\n"
                              "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    struct ht_client c;
    struct ht_response r;
    uint64_t t0 = 0, ms;
    size_t i;

    /* One byte every 20 ms, each one progress: the head still has HEAD_MS from its first
     * byte, not from the last, and the drip cannot hold the connection. */
    ht_connect(&c, s->port);
    for (i = 0; i < sizeof msg - 1; i++) {
        if (i == 0)
            t0 = test_now_us();
        if (test_wait_fd(c.fd, POLLIN, 20) == 1)
            break; /* the answer came */
        ht_send_n(&c, msg + i, 1);
    }
    assert_true(i < sizeof msg - 1);
    ht_expect(&c, &r, 408);
    ms = (test_now_us() - t0) / 1000;
    assert_true(ms >= HEAD_MS - 5 && ms < HEAD_MS + 1500);
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
    assert_int_equal(ht_requests(s), 0);
}

static void test_http_limits_body_timeout(void **state)
{
    struct ht_server *s = *state;
    uint64_t ms;

    /* A body that stops coming: 408 after the idle timeout. */
    ms = refused(s, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc", 408,
                 "408 Request Timeout");
    assert_true(ms >= IDLE_MS - 5 && ms < IDLE_MS + 1500);
    assert_int_equal(ht_requests(s), 0);
}

static void test_http_limits_idle_timeout(void **state)
{
    struct ht_server *s = *state;
    struct ht_client c;
    struct ht_response r;
    uint64_t t0, ms;

    ht_connect(&c, s->port);
    ht_send(&c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    ht_response_free(&r);
    t0 = test_now_us();
    /* Between requests the header timeout does not apply: still open after it ... */
    ht_expect_silence(&c, HEAD_MS + 50);
    ht_send(&c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    ht_response_free(&r);
    t0 = test_now_us();
    /* ... but the idle timeout does: closed without a word. */
    assert_int_equal(ht_expect_eof(&c), 0);
    ms = (test_now_us() - t0) / 1000;
    assert_true(ms >= IDLE_MS - 5 && ms < IDLE_MS + 1500);
    ht_close(&c);

    /* The next request's first byte starts its head's timeout. */
    ht_connect(&c, s->port);
    ht_send(&c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    ht_response_free(&r);
    usleep(100 * 1000);
    t0 = test_now_us();
    ht_send(&c, "GET");
    ht_expect(&c, &r, 408);
    ms = (test_now_us() - t0) / 1000;
    assert_true(ms >= HEAD_MS - 5 && ms < HEAD_MS + 1500);
    ht_response_free(&r);
    assert_int_equal(ht_expect_eof(&c), 0);
    ht_close(&c);
}

/* A timeout as large as a uint64_t holds means "never" in effect: the deadline it makes from
 * the loop's clock must not wrap to the past (an immediate 408, an immediate close). */
static void test_http_limits_huge_timeouts(void **state)
{
    struct ht_server s = {0};
    struct ht_client c;
    struct ht_response r;

    (void)state;
    ht_start(&s,
             &(ioloop_http_options_t){
                 .header_timeout_ms = UINT64_MAX,
                 .idle_timeout_ms = UINT64_MAX,
             },
             echo);
    ht_connect(&c, s.port);
    ht_expect_silence(&c, 200); /* no 408 for a head that has not come yet */
    ht_send(&c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    ht_response_free(&r);
    ht_expect_silence(&c, 200); /* kept alive, not closed at once */
    ht_send(&c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    ht_expect(&c, &r, 200);
    ht_response_free(&r);
    ht_close(&c);
    ht_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_limits_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_smuggling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_after_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_coding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_request_line_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_header_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_body_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_header_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_slow_drip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_body_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_idle_timeout, setup, teardown),
        cmocka_unit_test(test_http_limits_huge_timeouts),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
