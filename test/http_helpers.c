/* Shared helpers of the HTTP server tests; see http_helpers.h. */
#include "http_helpers.h"

/* cmocka's header needs these first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- The server ------------------------------------------------------------------------- */

static void on_request(ioloop_http_request_t *req, void *user)
{
    struct ht_server *s = user;

    s->handler(req, s);
}

void ht_start_opts(struct ht_server *s, int nloops, const char *address,
                   const ioloop_http_options_t *options, ht_handler_fn handler)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->handler = handler;
    s->fds = test_count_fds();
    s->pool = ioloop_pool_new(nloops);
    assert_non_null(s->pool);
    s->loop = ioloop_pool_loop(s->pool, 0);
    s->server = ioloop_http_server_new(s->pool, address, on_request, s, options);
    assert_non_null(s->server);
    assert_int_equal(ioloop_http_server_start(s->server), 0);
    s->port = ioloop_http_server_port(s->server);
    assert_true(s->port > 0);
}

void ht_start(struct ht_server *s, const ioloop_http_options_t *options, ht_handler_fn handler)
{
    ht_start_opts(s, 1, "127.0.0.1:0", options, handler);
}

void ht_stop(struct ht_server *s)
{
    ioloop_http_server_free(s->server);
    ioloop_pool_free(s->pool);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    assert_int_equal(test_count_fds(), s->fds);
}

void ht_note_request(struct ht_server *s, ioloop_http_request_t *req)
{
    pthread_mutex_lock(&s->lock);
    if (s->requests < HT_MAX)
        snprintf(s->targets[s->requests], sizeof s->targets[0], "%s", ioloop_http_target(req));
    s->requests++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void ht_note(struct ht_server *s, int rc)
{
    pthread_mutex_lock(&s->lock);
    if (s->nrc < HT_MAX)
        s->rc[s->nrc++] = rc;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static bool wait_field(struct ht_server *s, const int *field, int n)
{
    struct timespec deadline = test_deadline(CLOCK_REALTIME, TEST_WAIT_MS);
    bool ok;

    pthread_mutex_lock(&s->lock);
    while (*field < n)
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT)
            break;
    ok = *field >= n;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

bool ht_wait_requests(struct ht_server *s, int n)
{
    return wait_field(s, &s->requests, n);
}

bool ht_wait_rc(struct ht_server *s, int n)
{
    return wait_field(s, &s->nrc, n);
}

int ht_requests(struct ht_server *s)
{
    int n;

    pthread_mutex_lock(&s->lock);
    n = s->requests;
    pthread_mutex_unlock(&s->lock);
    return n;
}

int ht_rc(struct ht_server *s, int i)
{
    int rc;

    assert_true(ht_wait_rc(s, i + 1));
    pthread_mutex_lock(&s->lock);
    rc = s->rc[i];
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void ht_hold(struct ht_server *s, ioloop_http_request_t *req)
{
    pthread_mutex_lock(&s->lock);
    assert_true(s->nheld < HT_MAX);
    s->held[s->nheld++] = req;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

ioloop_http_request_t *ht_held(struct ht_server *s, int i)
{
    ioloop_http_request_t *req;

    assert_true(wait_field(s, &s->nheld, i + 1));
    pthread_mutex_lock(&s->lock);
    req = s->held[i];
    pthread_mutex_unlock(&s->lock);
    return req;
}

struct in_loop {
    struct ht_server *s;
    void (*fn)(struct ht_server *s);
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void in_loop_cb(ioloop_t *loop, void *arg)
{
    struct in_loop *c = arg;

    c->fn(c->s);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

void ht_in_loop(struct ht_server *s, void (*fn)(struct ht_server *s))
{
    struct in_loop c = {.s = s, .fn = fn};
    struct timespec deadline = test_deadline(CLOCK_REALTIME, TEST_WAIT_MS);

    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, NULL);
    assert_int_equal(ioloop_add_callback(s->loop, in_loop_cb, &c), 0);
    pthread_mutex_lock(&c.lock);
    while (!c.done)
        if (pthread_cond_timedwait(&c.cond, &c.lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&c.lock);
    if (!c.done) { /* a callback still queued would touch c later: stop here */
        fprintf(stderr, "the loop did not run a posted callback within %d ms\n", TEST_WAIT_MS);
        abort();
    }
    pthread_cond_destroy(&c.cond);
    pthread_mutex_destroy(&c.lock);
}

/* ---- The raw client --------------------------------------------------------------------- */

void ht_connect(struct ht_client *c, int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {TEST_WAIT_MS / 1000, 0};

    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof sin), 0);
}

void ht_close(struct ht_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

void ht_send_n(struct ht_client *c, const void *data, size_t len)
{
    test_write_all(c->fd, data, len);
}

void ht_send(struct ht_client *c, const char *data)
{
    ht_send_n(c, data, strlen(data));
}

/* Receives more bytes; returns false at the end of the stream (or a reset). */
static bool fill(struct ht_client *c)
{
    ssize_t n;

    if (c->eof)
        return false;
    if (c->cap - c->len < 4096) {
        c->cap = c->cap > 0 ? c->cap * 2 : 65536;
        c->buf = realloc(c->buf, c->cap + 1);
        assert_non_null(c->buf);
    }
    if (test_wait_fd(c->fd, POLLIN, TEST_WAIT_MS) != 1)
        fail_msg("no response within %d ms (%zu bytes so far)", TEST_WAIT_MS, c->len);
    do
        n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        c->eof = true;
        return false;
    }
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    return true;
}

/* The offset just past the first "\r\n" at or after `from`, filling as needed; 0 at EOF. */
static size_t line_end(struct ht_client *c, size_t from)
{
    for (;;) {
        char *p = c->len > from ? memmem(c->buf + from, c->len - from, "\r\n", 2) : NULL;

        if (p != NULL)
            return (size_t)(p - c->buf) + 2;
        if (!fill(c))
            return 0;
    }
}

/* Makes sure `n` bytes are buffered; false at EOF. */
static bool have(struct ht_client *c, size_t n)
{
    while (c->len < n)
        if (!fill(c))
            return false;
    return true;
}

static void append_body(struct ht_response *r, const char *data, size_t n)
{
    r->body = realloc(r->body, r->body_len + n + 1);
    assert_non_null(r->body);
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
}

static void parse_head(struct ht_response *r, const char *head, size_t len)
{
    char *p, *line, *save = NULL;

    r->head_copy = strndup(head, len);
    assert_non_null(r->head_copy);
    line = strtok_r(r->head_copy, "\r\n", &save);
    assert_non_null(line);
    assert_int_equal(strncmp(line, "HTTP/1.1 ", 9), 0);
    r->status = atoi(line + 9);
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL && r->nfields < 64) {
        p = strchr(line, ':');
        assert_non_null(p);
        *p++ = '\0';
        while (*p == ' ')
            p++;
        r->names[r->nfields] = line;
        r->values[r->nfields++] = p;
    }
}

int ht_recv(struct ht_client *c, struct ht_response *r, bool head)
{
    size_t end = 0, pos;
    const char *length, *te;
    char *p;

    memset(r, 0, sizeof *r);
    while ((p = c->len > 0 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL) == NULL)
        if (!fill(c)) {
            if (c->len == 0)
                return -1;
            fail_msg("the stream ended inside a response head: %.*s", (int)c->len, c->buf);
        }
    end = (size_t)(p - c->buf) + 4;
    parse_head(r, c->buf, end);
    length = ht_field(r, "Content-Length");
    te = ht_field(r, "Transfer-Encoding");
    pos = end;
    if (head || r->status == 204 || r->status == 304 || (r->status >= 100 && r->status < 200)) {
        /* no body */
    } else if (te != NULL) {
        assert_string_equal(te, "chunked");
        for (;;) {
            size_t eol = line_end(c, pos), size;

            assert_true(eol > 0);
            size = strtoul(c->buf + pos, NULL, 16);
            pos = eol;
            if (size == 0)
                break;
            assert_true(have(c, pos + size + 2));
            append_body(r, c->buf + pos, size);
            assert_memory_equal(c->buf + pos + size, "\r\n", 2);
            pos += size + 2;
        }
        for (;;) { /* trailers, then the blank line */
            size_t eol = line_end(c, pos);

            assert_true(eol > 0);
            if (eol == pos + 2) {
                pos = eol;
                break;
            }
            pos = eol;
        }
    } else if (length != NULL) {
        size_t n = strtoul(length, NULL, 10);

        assert_true(have(c, pos + n));
        append_body(r, c->buf + pos, n);
        pos += n;
    } else {
        while (fill(c)) /* delimited by the end of the stream */
            ;
        append_body(r, c->buf + pos, c->len - pos);
        pos = c->len;
    }
    if (r->body == NULL)
        append_body(r, "", 0);
    r->raw = malloc(pos + 1);
    assert_non_null(r->raw);
    memcpy(r->raw, c->buf, pos);
    r->raw[pos] = '\0';
    r->raw_len = pos;
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
    return 0;
}

void ht_expect_raw(struct ht_client *c, const char *bytes)
{
    size_t n = strlen(bytes);

    if (!have(c, n))
        fail_msg("the stream ended where \"%s\" was due", bytes);
    if (memcmp(c->buf, bytes, n) != 0)
        fail_msg("\"%.*s\" where \"%s\" was due", (int)n, c->buf, bytes);
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

void ht_expect(struct ht_client *c, struct ht_response *r, int status)
{
    if (ht_recv(c, r, false) < 0)
        fail_msg("the stream ended where a %d response was due", status);
    if (r->status != status)
        fail_msg("status %d where %d was due: %s", r->status, status, r->raw);
}

const char *ht_field(const struct ht_response *r, const char *name)
{
    for (int i = 0; i < r->nfields; i++)
        if (strcasecmp(r->names[i], name) == 0)
            return r->values[i];
    return NULL;
}

void ht_response_free(struct ht_response *r)
{
    free(r->raw);
    free(r->body);
    free(r->head_copy);
    memset(r, 0, sizeof *r);
}

int ht_expect_eof(struct ht_client *c)
{
    char byte;
    ssize_t n;

    if (c->len > 0)
        fail_msg("%zu bytes where the end of the stream was due: %.*s", c->len, (int)c->len,
                 c->buf);
    if (c->eof)
        return 0;
    if (test_wait_fd(c->fd, POLLIN, TEST_WAIT_MS) != 1)
        fail_msg("no end of stream within %d ms", TEST_WAIT_MS);
    do
        n = recv(c->fd, &byte, 1, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        fail_msg("a byte (0x%02x) where the end of the stream was due", (unsigned char)byte);
    c->eof = true;
    return n == 0 ? 0 : -errno;
}

void ht_expect_silence(struct ht_client *c, int ms)
{
    assert_int_equal(c->len, 0);
    assert_int_equal(test_wait_fd(c->fd, POLLIN, ms), 0);
}

bool ht_date_ok(const char *s)
{
    struct tm tm;
    char again[64];
    const char *end;
    time_t t, now = time(NULL);

    if (s == NULL || strlen(s) != 29)
        return false;
    memset(&tm, 0, sizeof tm);
    end = strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return false;
    t = timegm(&tm);
    /* Formatted back (the tests run in the C locale), it must read the same: the weekday
     * and the zero padding are right too. */
    strftime(again, sizeof again, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&t, &tm));
    return strcmp(again, s) == 0 && t >= now - 3 && t <= now + 1;
}
