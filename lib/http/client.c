/*
 * The HTTP client: ioloop_http_fetch() on the loop's connections, with a pool of kept-alive
 * connections per loop and host:port, and responses read by http-parser.
 *
 * A fetch's course:
 *
 *   fetch ─▶ take an idle connection of host:port, or connect ─▶ one write of the request
 *     ─▶ the response is parsed as it comes (into the fetch's message: the head's arena, the
 *        body's one growing buffer) ─▶ complete: the connection goes back to the pool if the
 *        response lets it (HTTP/1.1 without Connection: close, the body delimited, nothing
 *        more sent), else it closes ─▶ fn runs, deferred (never inside a call of ours)
 *
 *   A failure (timeout, malformed response, the connection lost, cancel, ioloop_free()) ends
 *   the fetch the same way, with the error, and closes its connection at once: a connection
 *   whose response was not read to its end is of no more use.
 *
 * The stale connection. A server may close an idle keep-alive connection at any moment, and
 * the request sent on it just then meets its EOF or reset before any byte of an answer. Such
 * a request is sent once more on a fresh connection if its method is idempotent (RFC 7230
 * §6.3.1, as browsers and curl do); otherwise the server may have acted on it, and fn gets
 * -ECONNRESET. An idle connection whose EOF arrives while it waits in the pool leaves it at
 * once, and so does one idle for longer than the pool keeps them (its idle timeout).
 *
 * A fetch stays in the id table until its fn starts, so that cancelling it turns even an
 * answer already received into -ECANCELED.
 */
#include "http/client.h"

#include <errno.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

#include "core/loop.h"
#include "net/conn.h"

/* uthash's allocation failures come back to us instead of exit() (the element's hh.tbl is
 * then NULL): no path in the library exits. */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#define MAX_HEAD IOLOOP_HTTP_FETCH_MAX_HEAD
/* A fetch's message keeps buffers up to this size when it is reset for the response after
 * an interim one. */
#define KEEP_BYTES ((size_t)16 << 10)

struct http_client;
struct cconn;

/* fetch.state */
enum {
    FETCH_ACTIVE, /* being sent or answered */
    FETCH_ENDED,  /* ended: fn is queued (err says with what) */
};

struct ioloop_http_response {
    struct ioloop__http_msg msg;
    int status;
};

struct fetch {
    UT_hash_handle hh;             /* http_client.fetches, by id */
    int64_t id;
    struct http_client *cl;
    struct ioloop_deferred done;   /* runs fn */
    ioloop_http_response_fn fn;
    void *arg;
    struct cconn *cc;              /* the connection carrying it, while active */
    char *req;                     /* the request's bytes, kept while a retry may need them */
    size_t req_len;
    int64_t timer;                 /* timeout_ms; 0: none */
    int err;
    uint8_t state;                 /* FETCH_* */
    bool head;                     /* a HEAD request: the response has no body */
    bool idempotent;
    bool close;                    /* the application said Connection: close */
    bool retried;
    struct ioloop_http_response resp;
    char addr[];                   /* "host:port": the connection's address, the pool's key */
};

/* One connection of the client. */
struct cconn {
    ioloop_conn_t *conn;
    struct http_client *cl;
    struct fetch *fetch;           /* the fetch it carries; NULL while idle or closing */
    struct cconn *prev, *next;     /* http_client.conns */
    struct pool_host *host;        /* while idle: the host whose list it is in */
    struct cconn *iprev, *inext;   /* that list */
    http_parser parser;
    struct ioloop__http_framing framing;
    const char *data_end;          /* end of the bytes being parsed */
    const char *scan;              /* framing checked up to here */
    size_t head_bytes;             /* read before the final head (interim ones included) */
    int error;                     /* what a parser callback failed with */
    uint8_t proto;                 /* the next byte of "HTTP/" to check; 0: none due */
    bool reused;                   /* the fetch came to it from the pool */
    bool got_bytes;                /* a byte of the response arrived */
    bool head_done;                /* the final (not 1xx) head is complete */
    bool interim;                  /* the head parsed is a 1xx one */
    bool complete;                 /* the response is complete (the parser is paused) */
    bool keep_alive;               /* ... and lets the connection be used again */
};

/* The idle connections to one host:port, most recently used first. */
struct pool_host {
    UT_hash_handle hh;             /* http_client.hosts, by key */
    struct cconn *idle;
    unsigned nidle;
    char key[];
};

struct http_client {
    struct ioloop_owned owned;
    ioloop_t *loop;
    struct fetch *fetches;         /* uthash: every fetch whose fn has not started */
    struct pool_host *hosts;       /* uthash: hosts with idle connections */
    struct cconn *conns;           /* every connection */
    unsigned nidle;
    int64_t last_id;
    size_t max_body;
    uint64_t idle_ms;
    struct ioloop__http_client_stats stats;
};

static const ioloop_conn_handlers_t conn_handlers;
static void client_cancel(ioloop_t *loop, struct ioloop_owned *node);

static struct http_client *client_get(ioloop_t *loop)
{
    struct http_client *cl = loop->http_client;

    if (cl != NULL)
        return cl;
    cl = calloc(1, sizeof *cl);
    if (cl == NULL)
        return NULL;
    cl->loop = loop;
    cl->max_body = IOLOOP_HTTP_FETCH_MAX_BODY;
    cl->idle_ms = IOLOOP__HTTP_POOL_IDLE_MS;
    cl->owned.cancel = client_cancel;
    ioloop__own(loop, &cl->owned);
    loop->http_client = cl;
    return cl;
}

/* ---- The pool --------------------------------------------------------------------------- */

static void pool_unlink(struct cconn *cc)
{
    struct pool_host *h = cc->host;
    struct http_client *cl = cc->cl;

    if (h == NULL)
        return;
    if (cc->iprev != NULL)
        cc->iprev->inext = cc->inext;
    else
        h->idle = cc->inext;
    if (cc->inext != NULL)
        cc->inext->iprev = cc->iprev;
    cc->host = NULL;
    cc->iprev = cc->inext = NULL;
    cl->nidle--;
    if (--h->nidle == 0) {
        HASH_DEL(cl->hosts, h);
        free(h);
    }
}

/* An idle connection to `addr`, taken out of the pool, or NULL. A connection that died while
 * idle (its idle timeout, say) stays listed until its on_close, which is deferred: such a one
 * is only unlinked here (on_close frees it), and the next is tried. */
static struct cconn *pool_take(struct http_client *cl, const char *addr)
{
    struct pool_host *h;
    struct cconn *cc;

    for (;;) {
        HASH_FIND_STR(cl->hosts, addr, h); /* again each time: unlinking the last frees h */
        if (h == NULL)
            return NULL;
        cc = h->idle;
        pool_unlink(cc);
        /* The fetch's own timeout is what counts; -EPIPE: the connection is closing. */
        if (ioloop_conn_set_idle_timeout(cc->conn, 0) == 0)
            break;
    }
    cc->reused = true;
    cl->stats.reuses++;
    return cc;
}

/* Puts a connection whose response was read whole into the pool. Returns false if it cannot
 * be kept (a bound, no memory): the caller closes it. */
static bool pool_put(struct cconn *cc, const char *addr)
{
    struct http_client *cl = cc->cl;
    struct pool_host *h;

    if (cl->nidle >= IOLOOP__HTTP_POOL_MAX)
        return false;
    HASH_FIND_STR(cl->hosts, addr, h);
    if (h != NULL && h->nidle >= IOLOOP__HTTP_POOL_PER_HOST)
        return false;
    if (ioloop_conn_set_idle_timeout(cc->conn, cl->idle_ms) < 0)
        return false;
    if (h == NULL) {
        size_t len = strlen(addr);

        if ((h = calloc(1, sizeof *h + len + 1)) == NULL)
            return false;
        memcpy(h->key, addr, len + 1);
        HASH_ADD_STR(cl->hosts, key, h);
        if (h->hh.tbl == NULL) {
            free(h);
            return false;
        }
    }
    cc->host = h;
    cc->iprev = NULL;
    cc->inext = h->idle;
    if (h->idle != NULL)
        h->idle->iprev = cc;
    h->idle = cc;
    h->nidle++;
    cl->nidle++;
    return true;
}

/* ---- Connections ------------------------------------------------------------------------ */

static struct cconn *conn_new(struct http_client *cl, const char *addr)
{
    struct cconn *cc = calloc(1, sizeof *cc);
    int err;

    if (cc == NULL)
        return NULL;
    cc->cl = cl;
    cc->conn = ioloop_connect(cl->loop, addr, &conn_handlers, cc);
    if (cc->conn == NULL) {
        err = errno;
        free(cc);
        errno = err;
        return NULL;
    }
    cc->next = cl->conns;
    if (cl->conns != NULL)
        cl->conns->prev = cc;
    cl->conns = cc;
    cl->stats.connects++;
    return cc;
}

static void attach(struct cconn *cc, struct fetch *f)
{
    cc->fetch = f;
    f->cc = cc;
    http_parser_init(&cc->parser, HTTP_RESPONSE);
    cc->parser.data = cc;
    cc->framing = (struct ioloop__http_framing){0};
    cc->head_bytes = 0;
    cc->error = 0;
    cc->proto = 0;
    cc->got_bytes = cc->head_done = cc->interim = cc->complete = cc->keep_alive = false;
}

static void detach(struct cconn *cc)
{
    if (cc->fetch != NULL)
        cc->fetch->cc = NULL;
    cc->fetch = NULL;
}

/* ---- Ending fetches --------------------------------------------------------------------- */

/* Deferred: fn gets the result, then the fetch is freed. */
static void deliver(ioloop_t *loop, struct ioloop_deferred *node)
{
    struct fetch *f = ioloop__container_of(node, struct fetch, done);
    struct http_client *cl = f->cl;

    HASH_DEL(cl->fetches, f); /* running: cancelling it is too late from here on */
    f->fn(loop, f->err, f->err == 0 ? &f->resp : NULL, f->arg);
    ioloop__http_msg_free(&f->resp.msg);
    free(f);
}

/* The fetch is over (its connection already detached): fn is queued with err. */
static void end(struct fetch *f, int err)
{
    if (f->timer > 0)
        ioloop_cancel_timer(f->cl->loop, f->timer);
    f->timer = 0;
    free(f->req);
    f->req = NULL;
    f->state = FETCH_ENDED;
    f->err = err;
    f->done.fn = deliver;
    ioloop__defer(f->cl->loop, &f->done);
}

/* The fetch fails with err; its connection, if any, closes at once. */
static void fail(struct fetch *f, int err)
{
    struct cconn *cc = f->cc;

    if (cc != NULL) {
        detach(cc);
        ioloop__conn_abort(cc->conn, err); /* on_close frees cc */
    }
    end(f, err);
}

/* The response is complete: the connection is pooled or closed, fn is queued. `leftover`:
 * the server sent bytes beyond the response, which no request asked for. A response that
 * came before the whole request went out (an early 413, say) leaves the rest unsent: the
 * server stopped reading it, and a graceful close would wait on that, so the connection is
 * closed at once. */
static void succeed(struct cconn *cc, bool leftover)
{
    struct fetch *f = cc->fetch;
    bool unsent = ioloop_conn_pending(cc->conn) > 0;
    bool reuse = cc->keep_alive && !f->close && !leftover && !unsent;

    detach(cc);
    if (unsent)
        ioloop__conn_abort(cc->conn, -ECANCELED);
    else if (!reuse || !pool_put(cc, f->addr))
        ioloop_conn_close(cc->conn);
    end(f, 0);
}

static int send_request(struct fetch *f, bool pooled);

/* The connection ended (EOF: err 0) before the response was complete. */
static void lost(struct fetch *f, bool reused, bool got_bytes, int err)
{
    if (reused && !got_bytes && (err == 0 || err == -ECONNRESET || err == -EPIPE)) {
        /* The server closed the kept-alive connection as the request went out. */
        if (f->idempotent && !f->retried && f->req != NULL) {
            f->retried = true;
            f->cl->stats.retries++;
            if ((err = send_request(f, false)) == 0)
                return;
            end(f, err);
            return;
        }
        err = -ECONNRESET; /* the server may have acted on it: the application decides */
    } else if (err == 0) {
        err = -EPROTO; /* a response cut short (or none at all) */
    }
    end(f, err);
}

static void on_timeout(ioloop_t *loop, void *arg)
{
    struct fetch *f = arg;

    f->timer = 0;
    fail(f, -ETIMEDOUT);
}

/* ---- Sending ---------------------------------------------------------------------------- */

/* Sends the fetch's request on a pooled connection to its host (if `pooled` and one is
 * there) or on a new one. Returns 0, or a negative errno with the fetch unattached. */
static int send_request(struct fetch *f, bool pooled)
{
    struct cconn *cc = pooled ? pool_take(f->cl, f->addr) : NULL;
    int err;

    if (cc == NULL && (cc = conn_new(f->cl, f->addr)) == NULL)
        return errno != 0 ? -errno : -ENOMEM;
    attach(cc, f);
    if ((err = ioloop_conn_write(cc->conn, f->req, f->req_len)) < 0) {
        detach(cc);
        ioloop__conn_abort(cc->conn, err);
        return err;
    }
    if (!cc->reused || !f->idempotent || f->retried) {
        free(f->req); /* no retry can need it */
        f->req = NULL;
    }
    return 0;
}

static void fetch_free(struct fetch *f)
{
    free(f->req);
    ioloop__http_msg_free(&f->resp.msg);
    free(f);
}

int64_t ioloop_http_fetch(ioloop_t *loop, const char *method, const char *url,
                          const char *const *headers, const void *body, size_t len,
                          uint64_t timeout_ms, ioloop_http_response_fn fn, void *arg)
{
    struct ioloop__http_request_bytes req;
    struct ioloop__http_url u;
    struct http_client *cl;
    struct fetch *f;
    size_t addr_len;
    int err;

    if (loop == NULL || method == NULL || url == NULL || fn == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    if ((err = ioloop__http_url_parse(url, &u)) < 0 ||
        (err = ioloop__http_request_build(method, &u, headers, body, len, &req)) < 0)
        return err;
    addr_len = strlen(u.addr);
    if ((cl = client_get(loop)) == NULL || (f = calloc(1, sizeof *f + addr_len + 1)) == NULL) {
        free(req.data);
        return -ENOMEM;
    }
    memcpy(f->addr, u.addr, addr_len + 1);
    f->cl = cl;
    f->fn = fn;
    f->arg = arg;
    f->req = req.data;
    f->req_len = req.len;
    f->head = strcmp(method, "HEAD") == 0;
    f->idempotent = ioloop__http_method_idempotent(method);
    f->close = req.close;
    f->id = cl->last_id + 1;
    HASH_ADD(hh, cl->fetches, id, sizeof f->id, f);
    if (f->hh.tbl == NULL) {
        fetch_free(f);
        return -ENOMEM;
    }
    if (timeout_ms > 0 &&
        (f->timer = ioloop_run_after(loop, timeout_ms, on_timeout, f)) < 0) {
        err = (int)f->timer;
        HASH_DEL(cl->fetches, f);
        fetch_free(f);
        return err;
    }
    if ((err = send_request(f, true)) < 0) {
        if (f->timer > 0)
            ioloop_cancel_timer(loop, f->timer);
        HASH_DEL(cl->fetches, f);
        fetch_free(f);
        return err;
    }
    cl->last_id = f->id;
    return f->id;
}

int ioloop_http_fetch_cancel(ioloop_t *loop, int64_t fetch_id)
{
    struct http_client *cl;
    struct fetch *f = NULL;
    int err;

    if (loop == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    if ((cl = loop->http_client) != NULL)
        HASH_FIND(hh, cl->fetches, &fetch_id, sizeof fetch_id, f);
    if (f == NULL || (f->state == FETCH_ENDED && f->err == -ECANCELED))
        return -ENOENT; /* unknown, fn started, or cancelled already */
    if (f->state == FETCH_ACTIVE)
        fail(f, -ECANCELED);
    else
        f->err = -ECANCELED; /* answered, fn not run yet: the answer is dropped */
    return 0;
}

/* ---- Reading the response: http-parser's callbacks -------------------------------------- */

static int refuse(struct cconn *cc, int err)
{
    cc->error = err;
    return -1;
}

/* The parser stops right behind the H that begins a status line, so that on_data can check
 * the "TTP/" after it (see check_proto()). */
static int on_message_begin(http_parser *p)
{
    struct cconn *cc = p->data;

    ioloop__http_msg_reset(&cc->fetch->resp.msg, KEEP_BYTES); /* after an interim response */
    cc->proto = 1;
    http_parser_pause(p, 1);
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    struct cconn *cc = p->data;
    int err = ioloop__http_msg_start(&cc->fetch->resp.msg, at, len);

    return err < 0 ? refuse(cc, err == -ENOMEM ? err : -EPROTO) : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct cconn *cc = p->data;
    int err = ioloop__http_msg_field(&cc->fetch->resp.msg, at, len);

    return err < 0 ? refuse(cc, err == -ENOMEM ? err : -EPROTO) : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct cconn *cc = p->data;
    int err = ioloop__http_msg_value(&cc->fetch->resp.msg, at, len, cc->data_end);

    return err < 0 ? refuse(cc, err == -ENOMEM ? err : -EPROTO) : 0;
}

/* Returns 1 for a response without a body: http-parser then skips it whatever the fields
 * say (RFC 7230 §3.3.3: HEAD, 1xx, 204, 304). */
static int on_headers_complete(http_parser *p)
{
    struct cconn *cc = p->data;
    struct fetch *f = cc->fetch;
    int status = (int)p->status_code, err;

    if ((err = ioloop__http_msg_head_done(&f->resp.msg)) < 0)
        return refuse(cc, err == -ENOMEM ? err : -EPROTO);
    if (p->http_major != 1 || status < 100 || status > 599 || status == 101)
        return refuse(cc, -EPROTO); /* 101: no request of ours asks to switch protocols */
    if (status < 200) {
        cc->interim = true; /* 100 Continue, 103 Early Hints: the response follows */
        return 1;
    }
    f->resp.status = status;
    cc->head_done = true;
    if (f->head || status == 204 || status == 304)
        return 1;
    if (!(p->flags & F_CHUNKED) && (p->flags & F_CONTENTLENGTH)) {
        if (p->content_length > f->cl->max_body)
            return refuse(cc, -EMSGSIZE); /* refused before a byte of it is read */
        if (ioloop__http_msg_body_reserve(&f->resp.msg, (size_t)p->content_length) < 0)
            return refuse(cc, -ENOMEM);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct cconn *cc = p->data;
    struct fetch *f = cc->fetch;
    int err = ioloop__http_framing_check(&cc->framing, cc->scan, at);

    if (err < 0)
        return refuse(cc, -EPROTO);
    if ((err = ioloop__http_msg_body(&f->resp.msg, at, len, f->cl->max_body)) < 0)
        return refuse(cc, err);
    cc->scan = at + len; /* body bytes are not framing */
    if ((p->flags & F_CHUNKED) && p->content_length == 0)
        ioloop__http_framing_chunk_end(&cc->framing); /* the chunk's data ends here */
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct cconn *cc = p->data;

    if (cc->interim) {
        cc->interim = false;
        return 0; /* parsing goes on with the response proper */
    }
    cc->complete = true;
    cc->keep_alive = http_should_keep_alive(p) != 0;
    http_parser_pause(p, 1); /* ended by on_data, outside the parser */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- The connections' handlers ---------------------------------------------------------- */

/* Debian's http-parser is built without HTTP_PARSER_STRICT, and then takes any four bytes
 * after the H of a status line for "TTP/" ("HTTX/1.1 200" passes). The bytes that follow
 * the H are checked here as they come, across reads. Returns 0 or -EPROTO. */
static int check_proto(struct cconn *cc, const char *data, size_t len)
{
    static const char proto[] = "HTTP/";

    for (size_t i = 0; i < len && cc->proto > 0; i++) {
        if (data[i] != proto[cc->proto])
            return -EPROTO;
        if (++cc->proto == sizeof proto - 1)
            cc->proto = 0;
    }
    return 0;
}

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct cconn *cc = ioloop_conn_user(conn);
    size_t off = 0;

    if (cc->fetch == NULL) {
        /* Idle, and the server speaks unasked: nothing it says can be trusted any more. */
        pool_unlink(cc);
        ioloop__conn_abort(conn, -EPROTO);
        return len;
    }
    cc->got_bytes = true;
    while (off < len) {
        bool head = !cc->head_done;
        size_t lim = len - off, n;
        enum http_errno perr;

        /* The parser never sees more than MAX_HEAD bytes before the final head is complete:
         * the bytes of a read in which it is not complete count, and the next read is cut
         * to what is left. */
        if (head && lim > MAX_HEAD - cc->head_bytes)
            lim = MAX_HEAD - cc->head_bytes;
        if (check_proto(cc, data + off, lim) < 0) {
            fail(cc->fetch, -EPROTO);
            return len;
        }
        cc->data_end = data + off + lim;
        cc->scan = data + off;
        n = http_parser_execute(&cc->parser, &settings, data + off, lim);
        perr = HTTP_PARSER_ERRNO(&cc->parser);
        if (perr != HPE_OK && perr != HPE_PAUSED) {
            fail(cc->fetch, cc->error != 0 ? cc->error : -EPROTO);
            return len;
        }
        if (ioloop__http_framing_check(&cc->framing, cc->scan, data + off + n) < 0) {
            fail(cc->fetch, -EPROTO);
            return len;
        }
        off += n;
        if (cc->complete) {
            succeed(cc, off < len);
            return len;
        }
        if (head && !cc->head_done) {
            cc->head_bytes += n;
            if (cc->head_bytes >= MAX_HEAD) {
                fail(cc->fetch, -EMSGSIZE);
                return len;
            }
        }
        if (perr == HPE_PAUSED)
            http_parser_pause(&cc->parser, 0); /* a status line began: checked above next */
    }
    return len;
}

/* The server shut down its side: the end of a close-delimited body, or the end of the
 * connection under a request. */
static void on_eof(ioloop_conn_t *conn)
{
    struct cconn *cc = ioloop_conn_user(conn);
    struct fetch *f = cc->fetch;

    if (f == NULL) {
        pool_unlink(cc); /* an idle connection the server closed */
        ioloop_conn_close(conn);
        return;
    }
    if (cc->got_bytes) {
        cc->data_end = cc->scan = NULL;
        http_parser_execute(&cc->parser, &settings, NULL, 0);
        if (cc->complete) {
            cc->keep_alive = false;
            succeed(cc, false);
            return;
        }
        fail(f, cc->error != 0 ? cc->error : -EPROTO);
        return;
    }
    detach(cc);
    ioloop__conn_abort(conn, -ECONNRESET);
    lost(f, cc->reused, false, 0);
}

static void on_close(ioloop_conn_t *conn, int err)
{
    struct cconn *cc = ioloop_conn_user(conn);
    struct http_client *cl = cc->cl;
    struct fetch *f = cc->fetch;

    pool_unlink(cc);
    if (cc->prev != NULL)
        cc->prev->next = cc->next;
    else
        cl->conns = cc->next;
    if (cc->next != NULL)
        cc->next->prev = cc->prev;
    if (f != NULL) {
        detach(cc);
        lost(f, cc->reused, cc->got_bytes, err);
    }
    free(cc);
}

static const ioloop_conn_handlers_t conn_handlers = {
    .on_data = on_data,
    .on_close = on_close,
    .on_eof = on_eof,
};

/* ---- The response ----------------------------------------------------------------------- */

int ioloop_http_response_status(const ioloop_http_response_t *resp)
{
    return resp != NULL ? resp->status : -EINVAL;
}

const char *ioloop_http_response_header(const ioloop_http_response_t *resp, const char *name)
{
    if (resp == NULL || name == NULL)
        return NULL;
    /* The response is the fetch's, not const: a lookup may cache a joined value in it. */
    return ioloop__http_msg_header(&((ioloop_http_response_t *)resp)->msg, name);
}

const char *ioloop_http_response_header_at(const ioloop_http_response_t *resp, size_t index,
                                           const char **name)
{
    const struct ioloop__http_field *f;

    if (resp == NULL || index >= resp->msg.nfields)
        return NULL;
    f = &resp->msg.fields[index];
    if (name != NULL)
        *name = resp->msg.arena + f->name;
    return resp->msg.arena + f->value;
}

const void *ioloop_http_response_body(const ioloop_http_response_t *resp, size_t *len)
{
    size_t n = resp != NULL ? resp->msg.body_len : 0;

    if (len != NULL)
        *len = n;
    return n > 0 ? resp->msg.body : NULL;
}

/* ---- The loop's end --------------------------------------------------------------------- */

/* ioloop_free(): every fetch still active ends with -ECANCELED, in the freeing thread, and
 * every connection closes. An fn that fetches again sees that fetch cancelled in the next
 * round. */
static void client_cancel(ioloop_t *loop, struct ioloop_owned *node)
{
    struct http_client *cl = ioloop__container_of(node, struct http_client, owned);

    while (cl->fetches != NULL || cl->conns != NULL) {
        struct fetch *f, *tmp;

        HASH_ITER(hh, cl->fetches, f, tmp) {
            if (f->state == FETCH_ACTIVE)
                fail(f, -ECANCELED);
        }
        for (struct cconn *cc = cl->conns; cc != NULL; cc = cc->next)
            ioloop__conn_abort(cc->conn, -ECANCELED); /* on_close comes deferred */
        ioloop__run_deferred_all(loop);
    }
    ioloop__disown(node);
    loop->http_client = NULL;
    free(cl);
}

/* ---- Hooks for the tests ---------------------------------------------------------------- */

int ioloop__http_client_set_limits(ioloop_t *loop, size_t max_body, uint64_t idle_ms)
{
    struct http_client *cl;
    int err;

    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    if ((cl = client_get(loop)) == NULL)
        return -ENOMEM;
    cl->max_body = max_body > 0 ? max_body : IOLOOP_HTTP_FETCH_MAX_BODY;
    cl->idle_ms = idle_ms > 0 ? idle_ms : IOLOOP__HTTP_POOL_IDLE_MS;
    return 0;
}

void ioloop__http_client_get_stats(ioloop_t *loop, struct ioloop__http_client_stats *out)
{
    const struct http_client *cl = loop->http_client;

    memset(out, 0, sizeof *out);
    if (cl == NULL)
        return;
    *out = cl->stats;
    out->idle = cl->nidle;
}
