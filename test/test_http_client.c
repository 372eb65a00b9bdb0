/*
 * The HTTP client (ioloop_http_fetch) on a loop in a thread of its own, against two kinds of
 * server on loopback:
 *   - the library's own HTTP server, in-process (GET, POST echo, HEAD, reuse counted by the
 *     connections the server accepted, fetches in parallel, names);
 *   - a raw peer: a listening socket in the test's thread that reads each request and writes
 *     scripted bytes (exact request bytes, chunked and interim responses split at every
 *     byte, close-delimited and slow bodies, malformed responses, EOF mid-response, limits,
 *     timeouts, connections the server closes under a kept-alive request, cancel, free).
 * Every fn call is recorded with the thread it ran in and whether it ran inside a fetch or
 * cancel call (which it must never do).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "http_helpers.h"

#include "http/client.h"
#include "http/server.h"

/* ---- The client's loop ------------------------------------------------------------------ */

struct client {
    ioloop_t *loop;
    test_loop_thread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int fds;     /* before the loop was made */
    bool in_call; /* a fetch or cancel call runs (loop thread only) */
    int inside;  /* fn calls that ran inside one (under lock) */
};

#define WANT_MAX 6

/* One fetch: what to send, and what fn got (under the client's lock). */
struct job {
    struct client *c;
    const char *method, *url;
    const char *const *headers;
    const void *body;
    size_t len;
    uint64_t timeout_ms;
    const char *want[WANT_MAX];          /* fields to copy from the response */
    void (*then)(struct job *j, ioloop_t *loop, int err); /* runs in fn, first */
    void *then_arg;
    int64_t id;                          /* what ioloop_http_fetch returned */
    int calls, err, status;
    char *got[WANT_MAX];
    char *body_out;
    size_t body_len;
    uint64_t start_us, done_us;
    pthread_t fn_thread;
};

static void client_start(struct client *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->fds = test_count_fds();
    c->loop = ioloop_new();
    assert_non_null(c->loop);
    test_loop_thread_start(&c->thread, c->loop);
}

/* Frees the stopped loop in this thread (fetches in flight get -ECANCELED here), and checks
 * that no fn ran inside a call and that no fd was left: `extra` is the number of fds the
 * test opened since client_start() and holds open still; -1 when the caller checks the fds
 * itself (an in-process server's connections close in their own time). */
static void client_free(struct client *c, int extra)
{
    ioloop_free(c->loop);
    c->loop = NULL;
    if (extra >= 0)
        assert_int_equal(test_count_fds(), c->fds + extra);
    assert_int_equal(c->inside, 0);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
}

static void client_join(struct client *c)
{
    ioloop_stop(c->loop);
    assert_int_equal(test_loop_thread_join(&c->thread), 0);
}

static void client_stop(struct client *c, int extra)
{
    client_join(c);
    client_free(c, extra);
}

struct call {
    struct client *c;
    void (*fn)(void *arg);
    void *arg;
    bool done;
};

static void call_cb(ioloop_t *loop, void *arg)
{
    struct call *k = arg;

    k->fn(k->arg);
    pthread_mutex_lock(&k->c->lock);
    k->done = true;
    pthread_cond_broadcast(&k->c->cond);
    pthread_mutex_unlock(&k->c->lock);
}

/* Runs fn(arg) in the client's loop and waits for it. */
static void in_loop(struct client *c, void (*fn)(void *arg), void *arg)
{
    struct call k = {.c = c, .fn = fn, .arg = arg};
    struct timespec deadline = test_deadline(CLOCK_REALTIME, TEST_WAIT_MS);

    assert_int_equal(ioloop_add_callback(c->loop, call_cb, &k), 0);
    pthread_mutex_lock(&c->lock);
    while (!k.done)
        if (pthread_cond_timedwait(&c->cond, &c->lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&c->lock);
    if (!k.done) { /* the callback still queued would touch k later */
        fprintf(stderr, "the client's loop did not run a posted callback\n");
        abort();
    }
}

static void on_response(ioloop_t *loop, int err, const ioloop_http_response_t *resp, void *arg)
{
    struct job *j = arg;
    struct client *c = j->c;
    const void *body;

    if (j->then != NULL)
        j->then(j, loop, err);
    pthread_mutex_lock(&c->lock);
    if (c->in_call)
        c->inside++;
    j->calls++;
    j->err = err;
    j->fn_thread = pthread_self();
    j->done_us = test_now_us();
    if (err == 0 && j->calls == 1) {
        j->status = ioloop_http_response_status(resp);
        for (int i = 0; i < WANT_MAX && j->want[i] != NULL; i++) {
            const char *v = ioloop_http_response_header(resp, j->want[i]);

            j->got[i] = v != NULL ? strdup(v) : NULL;
        }
        body = ioloop_http_response_body(resp, &j->body_len);
        j->body_out = malloc(j->body_len + 1);
        if (j->body_len > 0)
            memcpy(j->body_out, body, j->body_len);
        j->body_out[j->body_len] = '\0';
    } else if (err != 0) {
        j->status = resp == NULL ? -1 : -2; /* -2: a response came with an error */
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* Starts j's fetch in the loop thread (in a callback of its own). */
static void fetch_now(struct job *j, ioloop_t *loop)
{
    j->c->in_call = true;
    j->start_us = test_now_us();
    j->id = ioloop_http_fetch(loop, j->method != NULL ? j->method : "GET", j->url, j->headers,
                              j->body, j->len, j->timeout_ms, on_response, j);
    j->c->in_call = false;
}

static void start_cb(void *arg)
{
    struct job *j = arg;

    fetch_now(j, j->c->loop);
}

static void job_init(struct job *j, struct client *c, const char *url)
{
    memset(j, 0, sizeof *j);
    j->c = c;
    j->url = url;
    j->timeout_ms = TEST_WAIT_MS;
}

/* Starts the fetch; returns what ioloop_http_fetch returned. */
static int64_t job_start(struct job *j)
{
    in_loop(j->c, start_cb, j);
    return j->id;
}

/* Waits for fn (bounded) and checks that it ran exactly once. */
static void job_wait(struct job *j)
{
    struct timespec deadline = test_deadline(CLOCK_REALTIME, TEST_WAIT_MS);
    int calls;

    pthread_mutex_lock(&j->c->lock);
    while (j->calls == 0)
        if (pthread_cond_timedwait(&j->c->cond, &j->c->lock, &deadline) == ETIMEDOUT)
            break;
    calls = j->calls;
    pthread_mutex_unlock(&j->c->lock);
    assert_int_equal(calls, 1);
}

static int job_calls(struct job *j)
{
    int n;

    pthread_mutex_lock(&j->c->lock);
    n = j->calls;
    pthread_mutex_unlock(&j->c->lock);
    return n;
}

static void job_free(struct job *j)
{
    for (int i = 0; i < WANT_MAX; i++)
        free(j->got[i]);
    free(j->body_out);
    memset(j->got, 0, sizeof j->got);
    j->body_out = NULL;
}

/* Fetches and waits; returns fn's err. */
static int job_run(struct job *j)
{
    assert_true(job_start(j) > 0);
    job_wait(j);
    return j->err;
}

struct stats_call {
    struct client *c;
    struct ioloop__http_client_stats st;
};

static void stats_cb(void *arg)
{
    struct stats_call *s = arg;

    ioloop__http_client_get_stats(s->c->loop, &s->st);
}

static struct ioloop__http_client_stats client_stats(struct client *c)
{
    struct stats_call s = {.c = c};

    in_loop(c, stats_cb, &s);
    return s.st;
}

/* Waits until the pool holds n connections. */
static void wait_idle(struct client *c, unsigned n)
{
    for (int i = 0; i < TEST_WAIT_MS / 5; i++) {
        if (client_stats(c).idle == n)
            return;
        usleep(5000);
    }
    fail_msg("the pool did not come to %u idle connections", n);
}

struct limits_call {
    struct client *c;
    size_t max_body;
    uint64_t idle_ms;
};

static void limits_cb(void *arg)
{
    struct limits_call *l = arg;

    assert_int_equal(ioloop__http_client_set_limits(l->c->loop, l->max_body, l->idle_ms), 0);
}

static void set_limits(struct client *c, size_t max_body, uint64_t idle_ms)
{
    struct limits_call l = {.c = c, .max_body = max_body, .idle_ms = idle_ms};

    in_loop(c, limits_cb, &l);
}

/* ---- The raw peer ----------------------------------------------------------------------- */

struct peer {
    int lfd;
    int port;
    char url[64]; /* "http://127.0.0.1:PORT" */
};

static void peer_open(struct peer *p)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;

    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(p->lfd >= 0);
    assert_int_equal(bind(p->lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(p->lfd, 16), 0);
    assert_int_equal(getsockname(p->lfd, (struct sockaddr *)&sin, &len), 0);
    p->port = ntohs(sin.sin_port);
    snprintf(p->url, sizeof p->url, "http://127.0.0.1:%d", p->port);
}

static void peer_close(struct peer *p)
{
    close(p->lfd);
}

static int peer_accept(struct peer *p)
{
    int fd;

    assert_int_equal(test_wait_fd(p->lfd, POLLIN, TEST_WAIT_MS), 1);
    fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(fd >= 0);
    /* Each write goes out at once (no Nagle wait for an ACK the client delays). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    return fd;
}

/* No connection comes within ms. */
static void peer_quiet(struct peer *p, int ms)
{
    assert_int_equal(test_wait_fd(p->lfd, POLLIN, ms), 0);
}

/* Reads one request (head, and a body of its Content-Length) into buf as a string; returns
 * its length, or 0 if the stream ended (or was reset) before any byte. */
static size_t peer_request(int fd, char *buf, size_t cap)
{
    size_t len = 0, want = 0;
    char *end;

    for (;;) {
        ssize_t n;

        if (want > 0 && len >= want)
            break;
        assert_true(len < cap - 1);
        assert_int_equal(test_wait_fd(fd, POLLIN, TEST_WAIT_MS), 1);
        n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0) {
            assert_int_equal(len, 0);
            return 0;
        }
        len += (size_t)n;
        buf[len] = '\0';
        if (want == 0 && (end = strstr(buf, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");

            want = (size_t)(end + 4 - buf);
            if (cl != NULL && cl < end)
                want += strtoul(cl + strlen("\r\nContent-Length:"), NULL, 10);
        }
    }
    assert_int_equal(len, want); /* the client never sends ahead of an answer */
    return len;
}

static void peer_send(int fd, const char *s)
{
    test_write_all(fd, s, strlen(s));
}

/* For bytes the client may rightly stop reading (and reset) before they all went. */
static void peer_send_lossy(int fd, const void *data, size_t len)
{
    ssize_t n;

    for (size_t done = 0; done < len; done += (size_t)n)
        if ((n = send(fd, (const char *)data + done, len - done, MSG_NOSIGNAL)) <= 0)
            return;
}

/* The client closed (or reset) the connection: no byte more arrives. */
static void peer_expect_closed(int fd)
{
    char b[256];
    ssize_t n;

    assert_int_equal(test_wait_fd(fd, POLLIN, TEST_WAIT_MS), 1);
    n = read(fd, b, sizeof b);
    assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
}

/* Closes with a reset instead of a FIN. */
static void close_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static const char OK5[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/* One fetch of url + path answered by the peer with `response` on connection *fd (accepted
 * first if *fd < 0); returns fn's err and leaves the job's results in j. */
static int peer_exchange(struct job *j, struct peer *p, int *fd, const char *response)
{
    char req[4096];

    assert_true(job_start(j) > 0);
    if (*fd < 0)
        *fd = peer_accept(p);
    assert_true(peer_request(*fd, req, sizeof req) > 0);
    peer_send(*fd, response);
    job_wait(j);
    return j->err;
}

/* ---- The in-process server -------------------------------------------------------------- */

/* What the server's handler saw last (under the server's lock). */
struct seen {
    char method[16];
    char host[128];
    char length[32];
    size_t body_len;
};

static struct seen seen;

/* What the handler saw last, and the target of request i. */
static struct seen seen_get(struct ht_server *s)
{
    struct seen copy;

    pthread_mutex_lock(&s->lock);
    copy = seen;
    pthread_mutex_unlock(&s->lock);
    return copy;
}

static void target_get(struct ht_server *s, int i, char *buf, size_t size)
{
    assert_true(ht_wait_requests(s, i + 1));
    pthread_mutex_lock(&s->lock);
    snprintf(buf, size, "%s", s->targets[i]);
    pthread_mutex_unlock(&s->lock);
}

static uint64_t server_accepted(struct ht_server *s)
{
    ioloop_server_stats_t st;

    ioloop_server_get_stats(s->server->server, &st);
    return st.accepted;
}

static void handler(ioloop_http_request_t *req, struct ht_server *s)
{
    const char *target = ioloop_http_target(req), *v;
    const void *body;
    size_t len;

    ht_note_request(s, req);
    body = ioloop_http_body(req, &len);
    pthread_mutex_lock(&s->lock);
    snprintf(seen.method, sizeof seen.method, "%s", ioloop_http_method(req));
    v = ioloop_http_header(req, "Host");
    snprintf(seen.host, sizeof seen.host, "%s", v != NULL ? v : "");
    v = ioloop_http_header(req, "Content-Length");
    snprintf(seen.length, sizeof seen.length, "%s", v != NULL ? v : "-");
    seen.body_len = len;
    pthread_mutex_unlock(&s->lock);
    if (strncmp(target, "/hello", 6) == 0) {
        ioloop_http_add_header(req, "X-Rep", "a");
        ioloop_http_add_header(req, "Content-Type", "text/plain");
        ioloop_http_add_header(req, "X-Rep", "b");
        ioloop_http_respond(req, 200, "hello world", 11);
    } else if (strcmp(target, "/echo") == 0) {
        ioloop_http_add_header(req, "X-Method", ioloop_http_method(req));
        ioloop_http_respond(req, 201, body, len);
    } else if (strcmp(target, "/five") == 0) {
        ioloop_http_respond(req, 200, "12345", 5);
    } else if (strcmp(target, "/hold") == 0) {
        ht_hold(s, req);
    } else {
        ioloop_http_respond(req, 404, "no", 2);
    }
}

static void url_of(char *buf, size_t size, struct ht_server *s, const char *path)
{
    snprintf(buf, size, "http://127.0.0.1:%d%s", s->port, path);
}

/* ---- Against the library's server ------------------------------------------------------- */

static void test_http_client_get(void **state)
{
    struct ht_server s;
    struct client c;
    struct seen sn;
    struct job j;
    char url[128], host[64], target[128];

    ht_start(&s, NULL, handler);
    client_start(&c);
    url_of(url, sizeof url, &s, "/hello?x=1");
    job_init(&j, &c, url);
    j.want[0] = "x-rep";
    j.want[1] = "CONTENT-TYPE";
    j.want[2] = "Content-Length";
    j.want[3] = "X-Missing";
    assert_int_equal(job_run(&j), 0);
    assert_int_equal(j.status, 200);
    assert_string_equal(j.got[0], "a, b"); /* repeats joined, names in any case */
    assert_string_equal(j.got[1], "text/plain");
    assert_string_equal(j.got[2], "11");
    assert_null(j.got[3]);
    assert_int_equal(j.body_len, 11);
    assert_string_equal(j.body_out, "hello world");
    assert_true(pthread_equal(j.fn_thread, c.thread.thread));
    target_get(&s, 0, target, sizeof target);
    assert_string_equal(target, "/hello?x=1");
    sn = seen_get(&s);
    snprintf(host, sizeof host, "127.0.0.1:%d", s.port);
    assert_string_equal(sn.host, host);
    assert_string_equal(sn.method, "GET");
    assert_string_equal(sn.length, "-"); /* a GET without a body says nothing of one */
    job_free(&j);

    /* An error status is a response like any other. */
    url_of(url, sizeof url, &s, "/nowhere");
    job_init(&j, &c, url);
    assert_int_equal(job_run(&j), 0);
    assert_int_equal(j.status, 404);
    assert_string_equal(j.body_out, "no");
    job_free(&j);
    client_stop(&c, -1);
    ht_stop(&s);
}

static void test_http_client_post_echo(void **state)
{
    static const char *const headers[] = {"Content-Type: application/octet-stream", NULL};
    const size_t n = 300 * 1000; /* several reads and writes each way */
    struct ht_server s;
    struct client c;
    struct job j;
    char url[128];
    char *body = malloc(n);

    for (size_t i = 0; i < n; i++)
        body[i] = (char)('a' + (i * 7) % 26);
    ht_start(&s, NULL, handler);
    client_start(&c);
    url_of(url, sizeof url, &s, "/echo");
    job_init(&j, &c, url);
    j.method = "POST";
    j.headers = headers;
    j.body = body;
    j.len = n;
    j.want[0] = "X-Method";
    assert_int_equal(job_run(&j), 0);
    assert_int_equal(j.status, 201);
    assert_string_equal(j.got[0], "POST");
    assert_int_equal(j.body_len, n);
    assert_memory_equal(j.body_out, body, n);
    job_free(&j);

    /* PUT without a body says Content-Length: 0; the echo is empty. */
    job_init(&j, &c, url);
    j.method = "PUT";
    j.want[0] = "X-Method";
    assert_int_equal(job_run(&j), 0);
    assert_int_equal(j.status, 201);
    assert_string_equal(j.got[0], "PUT");
    assert_int_equal(j.body_len, 0);
    assert_string_equal(seen_get(&s).length, "0");
    job_free(&j);
    assert_int_equal(server_accepted(&s), 1);
    client_stop(&c, -1);
    ht_stop(&s);
    free(body);
}

/* A HEAD response has no body even with a Content-Length: a client that waited for one would
 * take the next response's bytes for it, or time out. */
static void test_http_client_head(void **state)
{
    struct ht_server s;
    struct client c;
    struct job j;
    char url[128];

    ht_start(&s, NULL, handler);
    client_start(&c);
    url_of(url, sizeof url, &s, "/five");
    job_init(&j, &c, url);
    j.method = "HEAD";
    j.want[0] = "Content-Length";
    assert_int_equal(job_run(&j), 0);
    assert_int_equal(j.status, 200);
    assert_string_equal(j.got[0], "5");
    assert_int_equal(j.body_len, 0);
    job_free(&j);

    job_init(&j, &c, url);
    assert_int_equal(job_run(&j), 0);
    assert_string_equal(j.body_out, "12345");
    job_free(&j);
    assert_int_equal(server_accepted(&s), 1);
    client_stop(&c, -1);
    ht_stop(&s);
}

/* Sequential fetches to one host:port use one connection; the server counts one accept. */
static void test_http_client_reuse(void **state)
{
    struct ioloop__http_client_stats st;
    struct ht_server s;
    struct client c;
    struct job j;
    char url[128];

    ht_start(&s, NULL, handler);
    client_start(&c);
    url_of(url, sizeof url, &s, "/hello");
    for (int i = 0; i < 3; i++) {
        job_init(&j, &c, url);
        assert_int_equal(job_run(&j), 0);
        assert_string_equal(j.body_out, "hello world");
        job_free(&j);
    }
    assert_int_equal(server_accepted(&s), 1);
    st = client_stats(&c);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.reuses, 2);
    assert_int_equal(st.idle, 1);
    client_stop(&c, -1);
    ht_stop(&s);
}

/* fn may fetch again: the connection is back in the pool by then. */
static void fetch_again(struct job *j, ioloop_t *loop, int err)
{
    struct job *next = j->then_arg;

    if (err == 0)
        fetch_now(next, loop);
}

static void test_http_client_fetch_in_fn(void **state)
{
    struct ht_server s;
    struct client c;
    struct job j, k;
    char url[128];

    ht_start(&s, NULL, handler);
    client_start(&c);
    url_of(url, sizeof url, &s, "/hello");
    job_init(&j, &c, url);
    job_init(&k, &c, url);
    j.then = fetch_again;
    j.then_arg = &k;
    assert_int_equal(job_run(&j), 0);
    job_wait(&k);
    assert_true(k.id > 0 && k.id != j.id);
    assert_int_equal(k.err, 0);
    assert_string_equal(k.body_out, "hello world");
    assert_int_equal(server_accepted(&s), 1);
    job_free(&j);
    job_free(&k);
    client_stop(&c, -1);
    ht_stop(&s);
}

static void answer_held(struct ht_server *s)
{
    for (int i = 0; i < 2; i++)
        ioloop_http_respond(s->held[i], 200, "late", 4);
}

struct two_jobs {
    struct job *a, *b;
};

static void start_two_cb(void *arg)
{
    struct two_jobs *t = arg;

    fetch_now(t->a, t->a->c->loop);
    fetch_now(t->b, t->b->c->loop);
}

/* Two fetches in flight to one host:port run on two connections: the server holds the first
 * until the second arrived, which it never would on one connection. */
static void test_http_client_parallel(void **state)
{
    struct ht_server s;
    struct client c;
    struct job a, b;
    struct two_jobs t = {&a, &b};
    char url[128];

    ht_start(&s, NULL, handler);
    client_start(&c);
    url_of(url, sizeof url, &s, "/hold");
    job_init(&a, &c, url);
    job_init(&b, &c, url);
    in_loop(&c, start_two_cb, &t);
    assert_true(a.id > 0 && b.id > a.id);
    ht_held(&s, 1);
    ht_in_loop(&s, answer_held);
    job_wait(&a);
    job_wait(&b);
    assert_int_equal(a.err, 0);
    assert_int_equal(b.err, 0);
    assert_string_equal(a.body_out, "late");
    assert_string_equal(b.body_out, "late");
    assert_int_equal(server_accepted(&s), 2);
    assert_int_equal(client_stats(&c).idle, 2);
    job_free(&a);
    job_free(&b);
    client_stop(&c, -1);
    ht_stop(&s);
}

/* ---- Names ------------------------------------------------------------------------------ */

static void test_http_client_localhost(void **state)
{
    struct ht_server s;
    struct client c;
    struct job j;
    char url[128], host[64];

    ht_start(&s, NULL, handler);
    client_start(&c);
    snprintf(url, sizeof url, "http://localhost:%d/hello", s.port);
    job_init(&j, &c, url);
#if IOLOOP_TEST_RESOLVER
    assert_int_equal(job_run(&j), 0);
    assert_int_equal(j.status, 200);
    assert_string_equal(j.body_out, "hello world");
    snprintf(host, sizeof host, "localhost:%d", s.port);
    assert_string_equal(seen_get(&s).host, host);
#else
    (void)host;
    assert_int_equal(job_start(&j), -ENOTSUP); /* names need c-ares */
#endif
    job_free(&j);
    client_stop(&c, -1);
    ht_stop(&s);
}

#if IOLOOP_TEST_RESOLVER
struct servers_call {
    struct client *c;
    char servers[64];
};

static void servers_cb(void *arg)
{
    struct servers_call *s = arg;

    assert_int_equal(ioloop_resolve_set_servers(s->c->loop, s->servers), 0);
}

/* Answers every DNS query on fd with NXDOMAIN (the header and the question sent back). */
static void dns_nxdomain(int fd)
{
    unsigned char q[512];
    struct sockaddr_storage from;
    socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(fd, q, sizeof q, 0, (struct sockaddr *)&from, &fromlen);
    size_t end = 12;

    if (n < 12)
        return;
    while (end < (size_t)n && q[end] != 0)
        end += q[end] + 1u;
    end += 1 + 4; /* the root label, QTYPE, QCLASS */
    if (end > (size_t)n)
        return;
    q[2] = (unsigned char)(0x80 | (q[2] & 0x79)); /* QR, the opcode and RD as asked */
    q[3] = 0x80 | 3;                             /* RA, NXDOMAIN */
    memset(q + 6, 0, 6);                         /* no answer, authority or additional */
    sendto(fd, q, end, 0, (struct sockaddr *)&from, fromlen);
}

/* A name DNS does not know: -ENOENT. The loop's DNS server is a socket of this test. */
static void test_http_client_no_such_host(void **state)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    struct servers_call sc;
    struct client c;
    struct job j;
    int fd;

    client_start(&c);
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    sc.c = &c;
    snprintf(sc.servers, sizeof sc.servers, "127.0.0.1:%d", ntohs(sin.sin_port));
    in_loop(&c, servers_cb, &sc);
    job_init(&j, &c, "http://no-such-host.invalid:8080/");
    assert_true(job_start(&j) > 0);
    for (int i = 0; i < TEST_WAIT_MS / 20 && job_calls(&j) == 0; i++)
        if (test_wait_fd(fd, POLLIN, 20) == 1)
            dns_nxdomain(fd);
    job_wait(&j);
    assert_int_equal(j.err, -ENOENT);
    close(fd);
    client_stop(&c, 0);
}
#endif

/* ---- Exact bytes ------------------------------------------------------------------------ */

/* tmpl with its "%d" (if any) replaced by the port. */
static void with_port(char *out, size_t size, const char *tmpl, int port)
{
    const char *at = strstr(tmpl, "%d");

    if (at == NULL)
        snprintf(out, size, "%s", tmpl);
    else
        snprintf(out, size, "%.*s%d%s", (int)(at - tmpl), tmpl, port, at + 2);
}

/* The request on the wire: request line with path and query (no fragment), Host, the
 * application's fields in their order as given, Content-Length as the method and body say. */
static void test_http_client_request_bytes(void **state)
{
    static const char *const fields[] = {"X-One: 1", "x-two:2", "Accept: */*", NULL};
    static const char *const own_host[] = {"Host: example.org", NULL};
    struct {
        const char *method, *path;
        const char *const *headers;
        const char *body;
        const char *expect; /* %d: the port */
    } cases[] = {
        {"GET", "/a/b?c=d#frag", fields, NULL,
         "GET /a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-One: 1\r\nx-two:2\r\n"
         "Accept: */*\r\n\r\n"},
        {"POST", "/", NULL, "abc",
         "POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 3\r\n\r\nabc"},
        {"POST", "/p", NULL, NULL,
         "POST /p HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n\r\n"},
        {"DELETE", "/d", NULL, NULL, "DELETE /d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"},
        {"GET", "", NULL, NULL, "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"},
        {"GET", "?x=1", NULL, NULL, "GET /?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"},
        {"OPTIONS", "/o", own_host, NULL, "OPTIONS /o HTTP/1.1\r\nHost: example.org\r\n\r\n"},
        {"PATCH", "/q", NULL, "", "PATCH /q HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                                  "Content-Length: 0\r\n\r\n"},
    };
    struct client c;
    struct peer p;
    struct job j;
    char url[128], req[1024], expect[512];
    int fd = -1;

    peer_open(&p);
    client_start(&c);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(url, sizeof url, "%s%s", p.url, cases[i].path);
        job_init(&j, &c, url);
        j.method = cases[i].method;
        j.headers = cases[i].headers;
        j.body = cases[i].body;
        j.len = cases[i].body != NULL ? strlen(cases[i].body) : 0;
        assert_true(job_start(&j) > 0);
        if (fd < 0)
            fd = peer_accept(&p);
        assert_true(peer_request(fd, req, sizeof req) > 0);
        with_port(expect, sizeof expect, cases[i].expect, p.port);
        assert_string_equal(req, expect);
        peer_send(fd, OK5);
        job_wait(&j);
        assert_int_equal(j.err, 0);
        assert_string_equal(j.body_out, "hello");
        job_free(&j);
    }
    assert_int_equal(client_stats(&c).connects, 1); /* every request on the one connection */
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

/* The URL's parts as the client takes them (internal: the default port is not bindable). */
static void test_http_client_url_parts(void **state)
{
    struct ioloop__http_url u;

    assert_int_equal(ioloop__http_url_parse("HTTP://Example.COM/x", &u), 0);
    assert_string_equal(u.addr, "example.com:80");
    assert_string_equal(u.host, "Example.COM");
    assert_int_equal(ioloop__http_url_parse("http://[::1]:8080/a?b#c", &u), 0);
    assert_string_equal(u.addr, "[::1]:8080");
    assert_string_equal(u.host, "[::1]:8080");
    assert_int_equal(u.path_len, 2);
    assert_memory_equal(u.path, "/a", 2);
    assert_int_equal(u.query_len, 1);
    assert_int_equal(ioloop__http_url_parse("http://10.0.0.1:80", &u), 0);
    assert_string_equal(u.addr, "10.0.0.1:80");
    assert_string_equal(u.host, "10.0.0.1");
    assert_null(u.path);
    assert_true(ioloop__http_method_idempotent("GET"));
    assert_true(ioloop__http_method_idempotent("PUT"));
    assert_false(ioloop__http_method_idempotent("POST"));
    assert_false(ioloop__http_method_idempotent("PATCH"));
}

/* ---- Response framing ------------------------------------------------------------------- */

/* Sends r in two writes cut at `at`, with a pause between them so that the client most
 * likely reads them apart (the result must be the same either way). */
static void send_split(int fd, const char *r, size_t at)
{
    test_write_all(fd, r, at);
    usleep(1000);
    test_write_all(fd, r + at, strlen(r) - at);
}

static void split_everywhere(const char *response, const char *body, const char *field,
                             const char *value)
{
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];
    size_t n = strlen(response);
    int fd = -1;

    peer_open(&p);
    client_start(&c);
    for (size_t at = 1; at < n; at++) {
        job_init(&j, &c, p.url);
        j.want[0] = field;
        j.want[1] = "X-Trailer";
        assert_true(job_start(&j) > 0);
        if (fd < 0)
            fd = peer_accept(&p);
        assert_true(peer_request(fd, req, sizeof req) > 0);
        send_split(fd, response, at);
        job_wait(&j);
        if (j.err != 0 || strcmp(j.body_out, body) != 0)
            fail_msg("split at %zu: err %d, body \"%s\"", at, j.err,
                     j.body_out != NULL ? j.body_out : "");
        assert_int_equal(j.status, 200);
        assert_non_null(j.got[0]);
        assert_string_equal(j.got[0], value);
        assert_null(j.got[1]); /* trailers are not fields of the head */
        job_free(&j);
    }
    assert_int_equal(client_stats(&c).connects, 1);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

static void test_http_client_chunked_split(void **state)
{
    split_everywhere("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Split: yes\r\n\r\n"
                     "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
                     "hello, world", "X-Split", "yes");
}

/* An interim 100 Continue is skipped; the response proper follows, Content-Length framed. */
static void test_http_client_interim_split(void **state)
{
    split_everywhere("HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: 2\r\n\r\nhello",
                     "hello", "X-Final", "2");
}

/* A body without Content-Length or chunking ends at the server's EOF; that connection is not
 * reused. */
static void test_http_client_close_delimited(void **state)
{
    const size_t n = 100 * 1000;
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];
    char *body = malloc(n + 1);
    int fd;

    for (size_t i = 0; i < n; i++)
        body[i] = (char)('A' + i % 26);
    body[n] = '\0';
    peer_open(&p);
    client_start(&c);
    for (int minor = 1; minor >= 0; minor--) {
        job_init(&j, &c, p.url);
        assert_true(job_start(&j) > 0);
        fd = peer_accept(&p); /* a new connection each time */
        assert_true(peer_request(fd, req, sizeof req) > 0);
        peer_send(fd, minor == 1 ? "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n" : "HTTP/1.0 200 OK\r\n\r\n");
        peer_send(fd, body);
        close(fd);
        job_wait(&j);
        assert_int_equal(j.err, 0);
        assert_int_equal(j.body_len, n);
        assert_string_equal(j.body_out, body);
        job_free(&j);
    }
    assert_int_equal(client_stats(&c).idle, 0);
    client_stop(&c, 0);
    peer_close(&p);
    free(body);
}

/* A body that comes in pieces, with pauses, is still read whole. */
static void test_http_client_slow_body(void **state)
{
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];
    int fd;

    peer_open(&p);
    client_start(&c);
    job_init(&j, &c, p.url);
    j.timeout_ms = 5000;
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    peer_send(fd, "HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n");
    for (int i = 0; i < 5; i++) {
        usleep(50 * 1000);
        assert_int_equal(job_calls(&j), 0);
        peer_send(fd, "abcde");
    }
    job_wait(&j);
    assert_int_equal(j.err, 0);
    assert_string_equal(j.body_out, "abcdeabcdeabcdeabcdeabcde");
    assert_true(j.done_us - j.start_us >= 250 * 1000);
    job_free(&j);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

/* 204 and 304 have no body whatever their fields say, and 1xx are skipped: the next
 * response on the connection is read right. */
static void test_http_client_no_body_statuses(void **state)
{
    static const char *const responses[] = {
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        "HTTP/1.1 100 Continue\r\n\r\n"
        "HTTP/1.1 204 No Content\r\n\r\n",
    };
    static const int statuses[] = {204, 304, 204};
    struct client c;
    struct peer p;
    struct job j;
    int fd = -1;

    peer_open(&p);
    client_start(&c);
    for (size_t i = 0; i < 3; i++) {
        job_init(&j, &c, p.url);
        assert_int_equal(peer_exchange(&j, &p, &fd, responses[i]), 0);
        assert_int_equal(j.status, statuses[i]);
        assert_int_equal(j.body_len, 0);
        job_free(&j);
        job_init(&j, &c, p.url);
        assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
        assert_string_equal(j.body_out, "hello");
        job_free(&j);
    }
    /* HEAD: a Content-Length with no body behind it. */
    job_init(&j, &c, p.url);
    j.method = "HEAD";
    assert_int_equal(peer_exchange(&j, &p, &fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
                     0);
    assert_int_equal(j.body_len, 0);
    job_free(&j);
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    assert_string_equal(j.body_out, "hello");
    job_free(&j);
    assert_int_equal(client_stats(&c).connects, 1);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

/* Each of these is refused with -EPROTO, and its connection closed. */
static void test_http_client_malformed(void **state)
{
    static const char *const responses[] = {
        "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",            /* status */
        "HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",            /* protocol */
        "HTTP/1.1 100 Continue\r\n\r\nHTTP-1.1 200 OK\r\n\r\n",     /* ... of a later head */
        "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",            /* version */
        "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",           /* status range */
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n", /* obs-fold */
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
        "HTTP/1.1 200 OK\rX: y\r\nContent-Length: 0\r\n\r\n",     /* CR without LF */
        "garbage\r\n\r\n",
    };
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];

    peer_open(&p);
    client_start(&c);
    for (size_t i = 0; i < sizeof responses / sizeof responses[0]; i++) {
        int fd;

        job_init(&j, &c, p.url);
        assert_true(job_start(&j) > 0);
        fd = peer_accept(&p); /* the last one was not kept */
        assert_true(peer_request(fd, req, sizeof req) > 0);
        peer_send(fd, responses[i]);
        job_wait(&j);
        if (j.err != -EPROTO)
            fail_msg("response %zu: err %d, not -EPROTO", i, j.err);
        assert_int_equal(j.status, -1); /* no response with an error */
        peer_expect_closed(fd);
        close(fd);
        job_free(&j);
    }
    assert_int_equal(client_stats(&c).idle, 0);
    client_stop(&c, 0);
    peer_close(&p);
}

/* A response cut short by the server's EOF (or never begun, on a fresh connection): -EPROTO. */
static void test_http_client_eof_early(void **state)
{
    static const char *const partial[] = {
        "",                                                         /* nothing at all */
        "HTTP/1.1 200 OK\r\nContent-Len",                           /* in the head */
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",       /* mid-body */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", /* mid-chunk */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", /* no last */
    };
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];

    peer_open(&p);
    client_start(&c);
    for (size_t i = 0; i < sizeof partial / sizeof partial[0]; i++) {
        int fd;

        job_init(&j, &c, p.url);
        assert_true(job_start(&j) > 0);
        fd = peer_accept(&p);
        assert_true(peer_request(fd, req, sizeof req) > 0);
        peer_send(fd, partial[i]);
        close(fd);
        job_wait(&j);
        if (j.err != -EPROTO)
            fail_msg("partial response %zu: err %d, not -EPROTO", i, j.err);
        job_free(&j);
    }
    client_stop(&c, 0);
    peer_close(&p);
}

/* ---- Limits ----------------------------------------------------------------------------- */

static void test_http_client_body_limit(void **state)
{
    char big[1100], head[128], req[1024];
    struct client c;
    struct peer p;
    struct job j;
    int fd;

    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    peer_open(&p);
    client_start(&c);
    set_limits(&c, 1000, 0);

    /* Exactly the limit: fine. */
    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    peer_send(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    test_write_all(fd, big, 1000);
    job_wait(&j);
    assert_int_equal(j.err, 0);
    assert_int_equal(j.body_len, 1000);
    job_free(&j);

    /* A Content-Length beyond it fails at once, before any of the body. */
    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    peer_send(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n");
    job_wait(&j);
    assert_int_equal(j.err, -EMSGSIZE);
    peer_expect_closed(fd);
    close(fd);
    job_free(&j);

    /* Chunks beyond it. */
    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    peer_send(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 2; i++) {
        snprintf(head, sizeof head, "%x\r\n", 600);
        peer_send_lossy(fd, head, strlen(head));
        peer_send_lossy(fd, big, 600);
        peer_send_lossy(fd, "\r\n", 2);
    }
    job_wait(&j);
    assert_int_equal(j.err, -EMSGSIZE);
    close(fd);
    job_free(&j);

    /* A close-delimited body beyond it. */
    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    peer_send(fd, "HTTP/1.1 200 OK\r\n\r\n");
    peer_send_lossy(fd, big, strlen(big));
    close(fd);
    job_wait(&j);
    assert_int_equal(j.err, -EMSGSIZE);
    job_free(&j);
    client_stop(&c, 0);
    peer_close(&p);
}

/* Sends a head of about `bytes` bytes (fields of 1000 bytes), then an empty body. */
static void send_big_head(int fd, size_t bytes)
{
    char field[1024];

    peer_send(fd, "HTTP/1.1 200 OK\r\n");
    memset(field, 'v', sizeof field);
    memcpy(field, "X-Big: ", 7);
    memcpy(field + 998, "\r\n", 3);
    for (size_t sent = 0; sent + 1000 <= bytes; sent += 1000)
        peer_send_lossy(fd, field, 1000);
    peer_send_lossy(fd, "Content-Length: 0\r\n\r\n", 21);
}

/* The head is bounded at 64 KiB: -EMSGSIZE beyond (interim heads count too), fine below. */
static void test_http_client_head_limit(void **state)
{
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];
    int fd = -1;

    peer_open(&p);
    client_start(&c);
    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    send_big_head(fd, 60 * 1000);
    job_wait(&j);
    assert_int_equal(j.err, 0);
    job_free(&j);

    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    send_big_head(fd, 70 * 1000);
    job_wait(&j);
    assert_int_equal(j.err, -EMSGSIZE);
    close(fd);
    job_free(&j);

    /* An endless stream of 100 Continue does not hold the fetch forever. */
    job_init(&j, &c, p.url);
    j.timeout_ms = 0;
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    for (int i = 0; i < 10000 && job_calls(&j) == 0; i++)
        if (send(fd, "HTTP/1.1 100 Continue\r\n\r\n", 25, MSG_NOSIGNAL) < 0)
            break;
    job_wait(&j);
    assert_int_equal(j.err, -EMSGSIZE);
    close(fd);
    job_free(&j);
    client_stop(&c, 0);
    peer_close(&p);
}

/* ---- Timeouts and errors ---------------------------------------------------------------- */

static void test_http_client_timeout(void **state)
{
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];
    uint64_t took;
    int fd;

    peer_open(&p);
    client_start(&c);
    job_init(&j, &c, p.url);
    j.timeout_ms = 300;
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0); /* and never answers */
    job_wait(&j);
    assert_int_equal(j.err, -ETIMEDOUT);
    took = j.done_us - j.start_us;
    assert_true(took >= 300 * 1000);
    assert_true(took < 2300 * 1000);
    peer_expect_closed(fd); /* the connection is given up */
    close(fd);
    job_free(&j);

    /* A fetch answered in time: its timer is gone with it (it would fire on a freed fetch),
     * and its connection stays in the pool for the next one. */
    fd = -1;
    job_init(&j, &c, p.url);
    j.timeout_ms = 100;
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    usleep(250 * 1000);
    assert_int_equal(client_stats(&c).idle, 1);
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    close(fd);
    wait_idle(&c, 0);

    /* Timeout 0 is none: an answer after 400 ms still comes. */
    job_init(&j, &c, p.url);
    j.timeout_ms = 0;
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    usleep(400 * 1000);
    peer_send(fd, OK5);
    job_wait(&j);
    assert_int_equal(j.err, 0);
    job_free(&j);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

static void test_http_client_refused(void **state)
{
    struct client c;
    struct peer p;
    struct job j;

    peer_open(&p);
    peer_close(&p); /* nobody listens on that port any more */
    client_start(&c);
    job_init(&j, &c, p.url);
    assert_int_equal(job_run(&j), -ECONNREFUSED);
    assert_int_equal(j.status, -1);
    job_free(&j);
    client_stop(&c, 0);
}

/* ---- Kept-alive connections the server closes ------------------------------------------- */

/* The server closes an idle pooled connection: the client sees the EOF, drops it from the
 * pool, and the next fetch connects anew. The same for a connection that the server sends
 * bytes on while idle, and for responses that do not let the connection be kept. */
static void test_http_client_pool_drops(void **state)
{
    static const char *const app_close[] = {"Connection: close", NULL};
    static const char *const app_close_list[] = {"connection:keep-alive,Close ", NULL};
    struct client c;
    struct peer p;
    struct job j;
    int fd = -1;

    peer_open(&p);
    client_start(&c);
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    wait_idle(&c, 1);
    close(fd); /* the server's idle timeout, say */
    wait_idle(&c, 0);
    fd = -1;
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    assert_int_equal(client_stats(&c).connects, 2);
    assert_int_equal(client_stats(&c).retries, 0);

    /* Bytes nobody asked for. */
    wait_idle(&c, 1);
    peer_send(fd, "HTTP/1.1 200 OK\r\n");
    wait_idle(&c, 0);
    peer_expect_closed(fd);
    close(fd);
    fd = -1;

    /* The server says Connection: close; then a response with bytes behind it; then the
     * application's own Connection: close. None of these connections is kept. */
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                                "Content-Length: 5\r\n\r\nhello"), 0);
    assert_string_equal(j.body_out, "hello");
    assert_int_equal(client_stats(&c).idle, 0); /* decided before fn ran */
    job_free(&j);
    peer_expect_closed(fd);
    close(fd);
    fd = -1;
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                                                "helloHTTP/1.1 200 OK\r\n"), 0);
    assert_string_equal(j.body_out, "hello");
    assert_int_equal(client_stats(&c).idle, 0);
    job_free(&j);
    peer_expect_closed(fd);
    close(fd);
    fd = -1;
    job_init(&j, &c, p.url);
    j.headers = app_close;
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    assert_int_equal(client_stats(&c).idle, 0);
    job_free(&j);
    peer_expect_closed(fd);
    close(fd);
    fd = -1;
    job_init(&j, &c, p.url); /* "close" as one element of a list */
    j.headers = app_close_list;
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    assert_int_equal(client_stats(&c).idle, 0);
    job_free(&j);
    peer_expect_closed(fd);
    close(fd);
    assert_int_equal(client_stats(&c).idle, 0);
    assert_int_equal(client_stats(&c).connects, 6);
    assert_int_equal(client_stats(&c).retries, 0);
    client_stop(&c, 0);
    peer_close(&p);
}

/* A server that answers before it read the whole request (an early 413) and reads no more:
 * the response is the fetch's, and the connection, with the rest of the request unsent, is
 * closed at once, not kept and not left waiting for the server to read. */
static void test_http_client_early_response(void **state)
{
    const size_t n = 8 << 20; /* far more than the socket buffers take */
    struct client c;
    struct peer p;
    struct job j;
    char head[1024] = "";
    char *body = calloc(1, n);
    size_t got = 0;
    int fd;

    peer_open(&p);
    client_start(&c);
    job_init(&j, &c, p.url);
    j.method = "POST";
    j.body = body;
    j.len = n;
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    while (got < sizeof head - 1 && strstr(head, "\r\n\r\n") == NULL) { /* the head only */
        ssize_t r;

        assert_int_equal(test_wait_fd(fd, POLLIN, TEST_WAIT_MS), 1);
        r = read(fd, head + got, 1);
        assert_int_equal(r, 1);
        head[++got] = '\0';
    }
    usleep(50 * 1000); /* the client fills the socket buffers and waits */
    peer_send(fd, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n\r\nlarge");
    job_wait(&j);
    assert_int_equal(j.err, 0);
    assert_int_equal(j.status, 413);
    assert_string_equal(j.body_out, "large");
    assert_int_equal(client_stats(&c).idle, 0);
    job_free(&j);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
    free(body);
}

/* Idle pooled connections close after the pool's idle time (60 s; 150 ms here). */
static void test_http_client_pool_idle_timeout(void **state)
{
    struct client c;
    struct peer p;
    struct job j;
    uint64_t t0;
    int fd = -1;

    peer_open(&p);
    client_start(&c);
    set_limits(&c, 0, 150);
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    t0 = test_now_us();
    peer_expect_closed(fd); /* the client closed it */
    assert_true(test_now_us() - t0 >= 100 * 1000);
    close(fd);
    assert_int_equal(client_stats(&c).idle, 0);
    fd = -1;
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0); /* on a new connection */
    job_free(&j);
    assert_int_equal(client_stats(&c).connects, 2);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

/* A pooled connection whose idle timeout ran out is dead at once, though it leaves the pool
 * only when its close comes (deferred, after the batch of timers). A fetch made by a timer of
 * that same batch must not be given it: it goes out on a new connection. The loop is made
 * late on purpose (the first fn blocks it), so that both timers are due in one batch, the
 * idle timeout first. */
#define DEAD_IDLE_MS 100

struct dead_pooled {
    struct job second;
    bool fired;
};

static void dead_pooled_fetch(ioloop_t *loop, void *arg)
{
    struct dead_pooled *d = arg;

    fetch_now(&d->second, loop);
    pthread_mutex_lock(&d->second.c->lock);
    d->fired = true;
    pthread_cond_broadcast(&d->second.c->cond);
    pthread_mutex_unlock(&d->second.c->lock);
}

static void dead_pooled_then(struct job *j, ioloop_t *loop, int err)
{
    if (err != 0)
        return;
    assert_true(ioloop_run_after(loop, DEAD_IDLE_MS + 10, dead_pooled_fetch, j->then_arg) > 0);
    usleep((DEAD_IDLE_MS + 60) * 1000); /* the loop is late: both timers are due together */
}

static void test_http_client_pool_dead_idle(void **state)
{
    struct timespec deadline = test_deadline(CLOCK_REALTIME, TEST_WAIT_MS);
    struct dead_pooled d = {0};
    char req[1024];
    struct client c;
    struct peer p;
    struct job j;
    int fd = -1, fd2;

    peer_open(&p);
    client_start(&c);
    set_limits(&c, 0, DEAD_IDLE_MS);
    job_init(&d.second, &c, p.url);
    job_init(&j, &c, p.url);
    j.then = dead_pooled_then;
    j.then_arg = &d;
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    pthread_mutex_lock(&c.lock);
    while (!d.fired)
        if (pthread_cond_timedwait(&c.cond, &c.lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&c.lock);
    assert_true(d.fired);
    if (d.second.id < 0)
        fail_msg("fetch: %s", strerror((int)-d.second.id)); /* -EPIPE: the dead connection */
    fd2 = peer_accept(&p);
    assert_true(peer_request(fd2, req, sizeof req) > 0);
    peer_send(fd2, OK5);
    job_wait(&d.second);
    assert_int_equal(d.second.err, 0);
    assert_string_equal(d.second.body_out, "hello");
    job_free(&d.second);
    close(fd2);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

/* The race the pool cannot see: the server closes a kept-alive connection just as a request
 * goes out on it (EOF or reset before any byte of an answer). An idempotent request is sent
 * once more on a fresh connection; a POST is not (the server may have acted on it):
 * -ECONNRESET. A retried request that fails again is not retried a second time. */
static void test_http_client_stale_retry(void **state)
{
    char req1[1024], req2[1024];
    struct client c;
    struct peer p;
    struct job j;
    int fd;

    peer_open(&p);
    client_start(&c);
    for (int reset = 0; reset < 2; reset++) {
        fd = -1;
        job_init(&j, &c, p.url);
        assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
        job_free(&j);
        job_init(&j, &c, p.url);
        j.method = "PUT";
        j.body = "data";
        j.len = 4;
        assert_true(job_start(&j) > 0);
        assert_true(peer_request(fd, req1, sizeof req1) > 0);
        if (reset)
            close_reset(fd);
        else
            close(fd);
        fd = peer_accept(&p);
        assert_true(peer_request(fd, req2, sizeof req2) > 0);
        assert_string_equal(req2, req1); /* the same request, whole */
        peer_send(fd, OK5);
        job_wait(&j);
        assert_int_equal(j.err, 0);
        assert_string_equal(j.body_out, "hello");
        job_free(&j);
        close(fd);
        wait_idle(&c, 0);
    }
    assert_int_equal(client_stats(&c).retries, 2);

    /* POST: not sent again. */
    fd = -1;
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    job_init(&j, &c, p.url);
    j.method = "POST";
    j.body = "once";
    j.len = 4;
    assert_true(job_start(&j) > 0);
    assert_true(peer_request(fd, req1, sizeof req1) > 0);
    close(fd);
    job_wait(&j);
    assert_int_equal(j.err, -ECONNRESET);
    peer_quiet(&p, 200);
    job_free(&j);

    /* GET whose retry meets the same: -EPROTO (its fresh connection ended without an answer),
     * and no third connection. */
    fd = -1;
    job_init(&j, &c, p.url);
    assert_int_equal(peer_exchange(&j, &p, &fd, OK5), 0);
    job_free(&j);
    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    assert_true(peer_request(fd, req1, sizeof req1) > 0);
    close(fd);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req1, sizeof req1) > 0);
    close(fd);
    job_wait(&j);
    assert_int_equal(j.err, -EPROTO);
    peer_quiet(&p, 200);
    job_free(&j);
    assert_int_equal(client_stats(&c).retries, 3);
    client_stop(&c, 0);
    peer_close(&p);
}

/* ---- Misuse ----------------------------------------------------------------------------- */

static int fetch_rc(struct client *c, const char *method, const char *url,
                    const char *const *headers, const void *body, size_t len)
{
    struct job j;

    job_init(&j, c, url);
    j.method = method;
    j.headers = headers;
    j.body = body;
    j.len = len;
    in_loop(c, start_cb, &j);
    return (int)j.id;
}

/* A request larger than a connection's output limit is refused with -EMSGSIZE, whether its
 * body or its fields make it so, and nothing is sent. */
static void test_http_client_request_too_large(void **state)
{
    size_t n = IOLOOP_CONN_MAX_OUTPUT + 1;
    char *big = malloc(n + 1);
    const char *fields[2] = {big, NULL};
    struct client c;
    struct peer p;

    assert_non_null(big);
    peer_open(&p);
    client_start(&c);
    memset(big, 'a', n);
    big[n] = '\0';
    assert_int_equal(fetch_rc(&c, "POST", p.url, NULL, big, n), -EMSGSIZE);
    memcpy(big, "X: ", 3); /* one field beyond the limit by itself */
    assert_int_equal(fetch_rc(&c, "GET", p.url, fields, NULL, 0), -EMSGSIZE);
    peer_quiet(&p, 100);
    assert_int_equal(client_stats(&c).connects, 0);
    client_stop(&c, 0);
    peer_close(&p);
    free(big);
}

struct null_call {
    struct client *c;
    int rc[6];
};

static void nulls_cb(void *arg)
{
    struct null_call *n = arg;
    ioloop_t *loop = n->c->loop;

    n->rc[0] = (int)ioloop_http_fetch(NULL, "GET", "http://127.0.0.1:1/", NULL, NULL, 0, 0,
                                      on_response, NULL);
    n->rc[1] = (int)ioloop_http_fetch(loop, NULL, "http://127.0.0.1:1/", NULL, NULL, 0, 0,
                                      on_response, NULL);
    n->rc[2] = (int)ioloop_http_fetch(loop, "GET", NULL, NULL, NULL, 0, 0, on_response, NULL);
    n->rc[3] = (int)ioloop_http_fetch(loop, "GET", "http://127.0.0.1:1/", NULL, NULL, 0, 0,
                                      NULL, NULL);
    n->rc[4] = ioloop_http_fetch_cancel(NULL, 1);
    n->rc[5] = ioloop_http_fetch_cancel(loop, 12345);
}

static void test_http_client_einval(void **state)
{
    static const char *const bad_urls[] = {
        "https://127.0.0.1/", "ftp://127.0.0.1/", "http:///x", "http://127.0.0.1:0/",
        "http://127.0.0.1:99999/", "http://127.0.0.1:/", "http://u:p@127.0.0.1/",
        "http://127.0.0.1/a b", "/relative", "", "127.0.0.1:80", "http://127.0.0.1/\xc3\xa9",
        "http://127.0.0.1/a\tb", "http://a_b/", "http://127.1/", "http://[fe80::1%25eth0]/",
        "http://-bad-/",
    };
    static const char *const bad_methods[] = {"", "GE T", "GET\r\n", "CONNECT", "G(ET"};
    static const char *const bad_fields[][2] = {
        {"X: a\r\nY: b", NULL}, {"X: a\nY: b", NULL}, {"X: a\r", NULL}, {"NoColon", NULL},
        {": empty", NULL},       {"X Y: z", NULL},    {"X\t: z", NULL}, {"X: \x01", NULL},
        {"Content-Length: 5", NULL}, {"transfer-encoding: chunked", NULL},
    };
    struct null_call n = {0};
    struct client c;
    struct peer p;

    peer_open(&p);
    client_start(&c);
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++)
        if (fetch_rc(&c, "GET", bad_urls[i], NULL, NULL, 0) != -EINVAL)
            fail_msg("URL \"%s\" was not refused", bad_urls[i]);
    for (size_t i = 0; i < sizeof bad_methods / sizeof bad_methods[0]; i++)
        if (fetch_rc(&c, bad_methods[i], p.url, NULL, NULL, 0) != -EINVAL)
            fail_msg("method \"%s\" was not refused", bad_methods[i]);
    for (size_t i = 0; i < sizeof bad_fields / sizeof bad_fields[0]; i++)
        if (fetch_rc(&c, "GET", p.url, bad_fields[i], NULL, 0) != -EINVAL)
            fail_msg("field \"%s\" was not refused", bad_fields[i][0]);
    assert_int_equal(fetch_rc(&c, "POST", p.url, NULL, NULL, 3), -EINVAL); /* NULL body */
    n.c = &c;
    in_loop(&c, nulls_cb, &n);
    for (int i = 0; i < 4; i++)
        assert_int_equal(n.rc[i], -EINVAL);
    assert_int_equal(n.rc[4], -EINVAL);
    assert_int_equal(n.rc[5], -ENOENT);
    /* Nothing was sent: no connection came, none was made. */
    peer_quiet(&p, 100);
    assert_int_equal(client_stats(&c).connects, 0);
    client_stop(&c, 0);
    peer_close(&p);
}

static void test_http_client_wrong_thread(void **state)
{
    struct client c;
    struct peer p;

    peer_open(&p);
    client_start(&c);
    client_stats(&c); /* the loop runs now */
    /* The loop runs in its thread: this one may neither fetch nor cancel. */
    assert_int_equal(ioloop_http_fetch(c.loop, "GET", p.url, NULL, NULL, 0, 0, on_response,
                                       NULL), -EPERM);
    assert_int_equal(ioloop_http_fetch_cancel(c.loop, 1), -EPERM);
    peer_quiet(&p, 100);
    client_stop(&c, 0);
    peer_close(&p);
}

/* ---- Cancel and free -------------------------------------------------------------------- */

struct cancel_call {
    struct job *j;
    int rc[3];
    int calls_inside;
};

static void cancel_cb(void *arg)
{
    struct cancel_call *k = arg;
    struct client *c = k->j->c;

    c->in_call = true;
    k->rc[0] = ioloop_http_fetch_cancel(c->loop, k->j->id);
    k->rc[1] = ioloop_http_fetch_cancel(c->loop, k->j->id);
    c->in_call = false;
    k->calls_inside = job_calls(k->j);
}

static void cancel_after_cb(void *arg)
{
    struct cancel_call *k = arg;

    k->rc[2] = ioloop_http_fetch_cancel(k->j->c->loop, k->j->id);
}

/* Cancelling in fn: the fetch is over by then. */
static void cancel_self(struct job *j, ioloop_t *loop, int err)
{
    *(int *)j->then_arg = ioloop_http_fetch_cancel(loop, j->id);
}

struct fetch_cancel {
    struct job *j;
    int rc;
};

static void fetch_cancel_cb(void *arg)
{
    struct fetch_cancel *k = arg;

    fetch_now(k->j, k->j->c->loop);
    k->j->c->in_call = true;
    k->rc = ioloop_http_fetch_cancel(k->j->c->loop, k->j->id);
    k->j->c->in_call = false;
}

static void test_http_client_cancel(void **state)
{
    struct cancel_call k = {0};
    struct fetch_cancel fc = {0};
    struct client c;
    struct peer p;
    struct job j;
    char req[1024];
    int fd, self_rc = 1;

    peer_open(&p);
    client_start(&c);
    job_init(&j, &c, p.url);
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    k.j = &j;
    in_loop(&c, cancel_cb, &k);
    assert_int_equal(k.rc[0], 0);
    assert_int_equal(k.rc[1], -ENOENT); /* cancelled already */
    assert_int_equal(k.calls_inside, 0); /* fn comes after the cancelling callback */
    job_wait(&j);
    assert_int_equal(j.err, -ECANCELED);
    assert_int_equal(j.status, -1);
    in_loop(&c, cancel_after_cb, &k);
    assert_int_equal(k.rc[2], -ENOENT);
    /* A late answer changes nothing: the connection is gone. */
    send(fd, OK5, strlen(OK5), MSG_NOSIGNAL);
    peer_expect_closed(fd);
    usleep(50 * 1000);
    assert_int_equal(job_calls(&j), 1);
    close(fd);
    job_free(&j);

    /* Cancelled in the callback that started it, before it connected. */
    job_init(&j, &c, p.url);
    fc.j = &j;
    in_loop(&c, fetch_cancel_cb, &fc);
    assert_true(j.id > 0);
    assert_int_equal(fc.rc, 0);
    job_wait(&j);
    assert_int_equal(j.err, -ECANCELED);
    job_free(&j);
    if (test_wait_fd(p.lfd, POLLIN, 100) == 1) { /* it may have reached the kernel's queue */
        fd = peer_accept(&p);
        peer_expect_closed(fd);
        close(fd);
    }

    /* From its own fn: too late. */
    job_init(&j, &c, p.url);
    j.then = cancel_self;
    j.then_arg = &self_rc;
    assert_true(job_start(&j) > 0);
    fd = peer_accept(&p);
    assert_true(peer_request(fd, req, sizeof req) > 0);
    peer_send(fd, OK5);
    job_wait(&j);
    assert_int_equal(j.err, 0);
    assert_int_equal(self_rc, -ENOENT);
    job_free(&j);
    close(fd);
    client_stop(&c, 0);
    peer_close(&p);
}

/* fn of a fetch cancelled by ioloop_free() fetches again: that one is cancelled too. */
static void fetch_during_free(struct job *j, ioloop_t *loop, int err)
{
    struct job *next = j->then_arg;

    if (err == -ECANCELED && next->id == 0)
        fetch_now(next, loop);
}

static size_t on_data_ignore(ioloop_conn_t *conn, const char *data, size_t len)
{
    return len;
}

struct connect_call {
    struct client *c;
    const char *address;
};

static void connect_cb(void *arg)
{
    static const ioloop_conn_handlers_t ignore = {.on_data = on_data_ignore};
    struct connect_call *k = arg;

    assert_non_null(ioloop_connect(k->c->loop, k->address, &ignore, NULL));
}

/* ioloop_free() with fetches in flight (one on a reused connection, one on a fresh one, one
 * still connecting) and an idle pooled connection: every fn gets -ECANCELED in the freeing
 * thread, and no fd is left. `conn_first`: the loop had a connection of its own before its
 * first fetch (the loop then ends its connections before its fetches). */
static void free_in_flight(bool conn_first)
{
    struct client c;
    struct peer p, idle;
    struct job j[4], again;
    char req[1024];
    int fds[3], fd_idle = -1, fd_first = -1;

    peer_open(&p);
    peer_open(&idle);
    client_start(&c);
    if (conn_first) {
        struct connect_call k = {.c = &c, .address = idle.url + strlen("http://")};

        in_loop(&c, connect_cb, &k);
        fd_first = peer_accept(&idle);
    }
    /* An idle connection to another host:port. */
    job_init(&j[0], &c, idle.url);
    assert_int_equal(peer_exchange(&j[0], &idle, &fd_idle, OK5), 0);
    job_free(&j[0]);
    /* Two answered-to-be fetches the peer holds, the first on a pooled connection. */
    fds[0] = -1;
    job_init(&j[0], &c, p.url);
    assert_int_equal(peer_exchange(&j[0], &p, &fds[0], OK5), 0);
    job_free(&j[0]);
    job_init(&j[1], &c, p.url);
    job_init(&again, &c, p.url);
    j[1].then = fetch_during_free;
    j[1].then_arg = &again;
    assert_true(job_start(&j[1]) > 0);
    assert_true(peer_request(fds[0], req, sizeof req) > 0);
    job_init(&j[2], &c, p.url);
    assert_true(job_start(&j[2]) > 0);
    fds[1] = peer_accept(&p);
    assert_true(peer_request(fds[1], req, sizeof req) > 0);
    job_init(&j[3], &c, "http://localhost:9/"); /* a name: still being looked up, maybe */
    job_start(&j[3]);
    assert_int_equal(client_stats(&c).idle, 1);

    client_join(&c);
    assert_int_equal(job_calls(&j[1]) + job_calls(&j[2]), 0);
    client_free(&c, conn_first ? 4 : 3); /* the peers' ends are still open */
    for (int i = 1; i < 3; i++) {
        assert_int_equal(j[i].calls, 1);
        assert_int_equal(j[i].err, -ECANCELED);
        assert_true(pthread_equal(j[i].fn_thread, pthread_self()));
    }
    if (j[3].id > 0) {
        assert_int_equal(j[3].calls, 1);
        assert_true(j[3].err == -ECANCELED || j[3].err == -ECONNREFUSED);
    }
    assert_true(again.id > 0);
    assert_int_equal(again.calls, 1);
    assert_int_equal(again.err, -ECANCELED);
    for (int i = 0; i < 2; i++) {
        peer_expect_closed(fds[i]);
        close(fds[i]);
    }
    peer_expect_closed(fd_idle);
    close(fd_idle);
    if (fd_first >= 0)
        close(fd_first);
    /* A connection "again" made may be in the listener's queue. */
    while (test_wait_fd(p.lfd, POLLIN, 50) == 1) {
        fds[2] = peer_accept(&p);
        close(fds[2]);
    }
    peer_close(&p);
    peer_close(&idle);
}

static void test_http_client_free_in_flight(void **state)
{
    free_in_flight(false);
}

static void test_http_client_free_in_flight_conn_first(void **state)
{
    free_in_flight(true);
}

#define T(fn) cmocka_unit_test(fn)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_http_client_get),
        T(test_http_client_post_echo),
        T(test_http_client_head),
        T(test_http_client_reuse),
        T(test_http_client_fetch_in_fn),
        T(test_http_client_parallel),
        T(test_http_client_localhost),
#if IOLOOP_TEST_RESOLVER
        T(test_http_client_no_such_host),
#endif
        T(test_http_client_request_bytes),
        T(test_http_client_url_parts),
        T(test_http_client_chunked_split),
        T(test_http_client_interim_split),
        T(test_http_client_close_delimited),
        T(test_http_client_slow_body),
        T(test_http_client_no_body_statuses),
        T(test_http_client_malformed),
        T(test_http_client_eof_early),
        T(test_http_client_body_limit),
        T(test_http_client_head_limit),
        T(test_http_client_timeout),
        T(test_http_client_refused),
        T(test_http_client_pool_drops),
        T(test_http_client_early_response),
        T(test_http_client_pool_idle_timeout),
        T(test_http_client_pool_dead_idle),
        T(test_http_client_stale_retry),
        T(test_http_client_einval),
        T(test_http_client_request_too_large),
        T(test_http_client_wrong_thread),
        T(test_http_client_cancel),
        T(test_http_client_free_in_flight),
        T(test_http_client_free_in_flight_conn_first),
    };

    return cmocka_run_group_tests_name("http_client", tests, NULL, NULL);
}
