/*
 * One HTTP connection: reading requests with http-parser and answering them in order.
 *
 * Reading. on_data feeds every byte to the connection's parser, which parses in place and
 * calls back with fragments; they are copied into the request's message (message.c), so that
 * a request can outlive the read. The parser pauses at the end of each message, and the
 * complete request is dispatched there — outside the parser — to the application's handler;
 * parsing then goes on with the next pipelined request of the same read. While the head is
 * read, at most max_header_bytes are fed to the parser, so a head that does not end within
 * them is refused (431) without reading further. Reading pauses while
 * IOLOOP__HTTP_INFLIGHT_MAX requests wait for their answers, or while an answer waits for the
 * connection to take it; it resumes once that is over.
 *
 * Answering in order. Requests enter the FIFO as they are dispatched. Only the head writes to
 * the connection (one coalesced write per response: status line, fields and body together);
 * a request answered before its turn keeps its whole response in its own buffer, and
 * ioloop__http_conn_advance() writes those out, in order, as soon as the head is answered.
 * The server's own error responses (400, 408, 413, 431, 505) are requests of the FIFO too, so
 * they come after the answers to the requests before them; the connection then closes.
 *
 * Timeouts, by phase: from the accept, and from the first byte of each later request, the
 * connection waits in its loop's head queue (408 when the head is not complete in time);
 * while a body arrives, and while it is idle between keep-alive requests, in the idle queue,
 * refreshed by each read of the body (408 for a body that stalls; an idle connection is just
 * closed). While its requests are with the application it waits in no queue.
 */
#include "http/server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The interim answer to "Expect: 100-continue". */
static const char CONTINUE[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---- Request structs -------------------------------------------------------------------- */

static ioloop_http_request_t *req_get(struct http_loop *hl)
{
    ioloop_http_request_t *req = hl->cache;

    if (req != NULL) {
        hl->cache = req->next;
        hl->ncached--;
    } else if ((req = calloc(1, sizeof *req)) == NULL) {
        return NULL;
    }
    req->hl = hl;
    req->hc = NULL;
    req->next = req->prev = NULL;
    req->method = NULL;
    req->flags = 0;
    req->state = R_READING;
    req->minor = 1;
    return req;
}

static void buf_reset(struct http_buf *b)
{
    if (b->cap > IOLOOP__HTTP_KEEP_BYTES) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
    b->start = b->len = 0;
}

void ioloop__http_req_destroy(ioloop_http_request_t *req)
{
    ioloop__http_msg_free(&req->msg);
    free(req->hdrs.data);
    free(req->out.data);
    free(req);
}

void ioloop__http_req_release(ioloop_http_request_t *req)
{
    struct http_loop *hl = req->hl;

    if (req->flags & F_ORPHAN) {
        if (req->prev != NULL)
            req->prev->next = req->next;
        else
            hl->orphans = req->next;
        if (req->next != NULL)
            req->next->prev = req->prev;
    }
    ioloop__http_msg_reset(&req->msg, IOLOOP__HTTP_KEEP_BYTES);
    buf_reset(&req->hdrs);
    buf_reset(&req->out);
    req->hc = NULL;
    req->prev = NULL;
    req->flags = 0;
    req->state = R_FREE; /* a second ending call finds this: -EALREADY */
    if (hl->ncached >= IOLOOP__HTTP_CACHE_MAX) {
        ioloop__http_req_destroy(req);
        return;
    }
    req->next = hl->cache;
    hl->cache = req;
    hl->ncached++;
}

/* The connection is gone: the request stays the application's until it ends it. */
static void orphan(ioloop_http_request_t *req)
{
    struct http_loop *hl = req->hl;

    req->hc = NULL;
    req->flags |= F_ORPHAN;
    req->prev = NULL;
    req->next = hl->orphans;
    if (hl->orphans != NULL)
        hl->orphans->prev = req;
    hl->orphans = req;
}

/* Every request leaves the connection: the ended ones are released, the others orphaned. */
static void detach_all(struct http_conn *hc)
{
    ioloop_http_request_t *req = hc->first, *next;

    if (hc->cur != NULL) {
        ioloop__http_req_release(hc->cur);
        hc->cur = NULL;
    }
    for (; req != NULL; req = next) {
        next = req->next;
        if (req->state == R_DONE)
            ioloop__http_req_release(req);
        else
            orphan(req);
    }
    hc->first = hc->last = NULL;
    hc->inflight = 0;
}

/* ---- The connection's course ------------------------------------------------------------ */

static void close_conn(struct http_conn *hc)
{
    if (hc->flags & C_CLOSED)
        return;
    hc->flags |= C_CLOSED | C_STOPPED;
    ioloop__http_tq_remove(hc);
    ioloop_conn_close(hc->conn); /* lossless: flushes, shuts down, drains, then closes */
}

void ioloop__http_conn_failed(struct http_conn *hc)
{
    hc->flags |= C_FAILED | C_STOPPED;
    ioloop__http_tq_remove(hc);
    detach_all(hc);
}

static void pause_reading(struct http_conn *hc)
{
    if (!(hc->flags & C_PAUSED) && ioloop_conn_pause(hc->conn) == 0)
        hc->flags |= C_PAUSED;
}

static void append(struct http_conn *hc, ioloop_http_request_t *req)
{
    req->next = NULL;
    if (hc->last != NULL)
        hc->last->next = req;
    else
        hc->first = req;
    hc->last = req;
    hc->inflight++;
}

static void on_flushed(ioloop_conn_t *conn, int err, void *arg)
{
    struct http_conn *hc = arg;

    hc->flags &= (uint16_t)~C_WAITING;
    if (err == 0)
        ioloop__http_conn_advance(hc);
}

/* Waits for what is pending to reach the kernel (then on_flushed advances). Returns true
 * while waiting, false if the connection had to be given up. */
static bool wait_output(struct http_conn *hc)
{
    if (hc->flags & C_WAITING)
        return true;
    if (ioloop_conn_on_flushed(hc->conn, on_flushed, hc) < 0) {
        close_conn(hc); /* nothing would wake it: give up the connection */
        return false;
    }
    hc->flags |= C_WAITING;
    return true;
}

/* The head's waiting bytes go to the connection, as many as its output limit lets in at a
 * time; the rest waits for what is pending to reach the kernel. Returns 0 once all went, -1
 * if some wait (or the connection failed). */
static int pump(struct http_conn *hc, ioloop_http_request_t *req)
{
    size_t max = hc->hl->hs->max_output;
    int rc;

    while (req->out.len > 0) {
        size_t pending = ioloop_conn_pending(hc->conn);
        size_t n = pending < max ? max - pending : 0;

        if (n > req->out.len)
            n = req->out.len;
        rc = n > 0 ? ioloop_conn_write(hc->conn, req->out.data + req->out.start, n) : -ENOBUFS;
        if (rc == -EPIPE) {
            ioloop__http_conn_failed(hc);
            return -1;
        }
        if (rc < 0) { /* -ENOBUFS, -ENOMEM: once the output went out */
            wait_output(hc);
            return -1;
        }
        req->out.start += n;
        req->out.len -= n;
    }
    req->out.start = 0;
    return 0;
}

void ioloop__http_conn_advance(struct http_conn *hc)
{
    ioloop_http_request_t *req;

    while ((req = hc->first) != NULL) {
        bool close;

        if (req->out.len > 0 && pump(hc, req) < 0)
            return;
        if (req->state != R_DONE)
            break;
        hc->first = req->next;
        if (hc->first == NULL)
            hc->last = NULL;
        hc->inflight--;
        hc->flags |= C_SERVED;
        close = req->flags & F_CLOSE;
        ioloop__http_req_release(req);
        if (close) {
            close_conn(hc); /* after the last response: it still goes out whole */
            return;
        }
    }
    if (hc->flags & (C_CLOSED | C_FAILED))
        return;
    if ((hc->flags & C_PAUSED) && hc->inflight < IOLOOP__HTTP_INFLIGHT_MAX &&
        !(hc->flags & C_WAITING)) {
        hc->flags &= (uint16_t)~C_PAUSED;
        ioloop_conn_resume(hc->conn); /* what was kept is presented again */
    }
    if (hc->first != NULL)
        return;
    if (hc->cur != NULL) {
        if (hc->cur->flags & F_CONTINUE) { /* its turn has come */
            hc->cur->flags &= (uint16_t)~F_CONTINUE;
            ioloop_conn_write(hc->conn, CONTINUE, sizeof CONTINUE - 1);
        }
        return;
    }
    if ((hc->flags & C_EOF) ||
        atomic_load_explicit(&hc->hl->hs->draining, memory_order_relaxed)) {
        close_conn(hc);
        return;
    }
    if (!(hc->flags & C_STOPPED))
        ioloop__http_tq_add(&hc->hl->idle_q, hc);
}

/* The request cannot be served: an error response after the ones owed, then the close. */
static void fail(struct http_conn *hc, int status)
{
    ioloop_http_request_t *req;

    hc->flags |= C_STOPPED;
    ioloop__http_tq_remove(hc);
    if (hc->cur != NULL) {
        ioloop__http_req_release(hc->cur);
        hc->cur = NULL;
    }
    if (status < 0 || (req = req_get(hc->hl)) == NULL) {
        close_conn(hc); /* out of memory: nothing can be said */
        return;
    }
    req->hc = hc;
    req->state = R_ACTIVE;
    req->flags = F_CLOSE;
    append(hc, req);
    if (ioloop__http_answer(req, status, NULL, 0) == -ENOMEM) {
        req->state = R_DONE; /* closes in its turn, without the answer */
        ioloop__http_conn_advance(hc);
    }
}

void ioloop__http_conn_expired(struct http_conn *hc, struct http_tq *tq)
{
    if (tq == &hc->hl->head_q || (hc->flags & C_BODY))
        fail(hc, 408);
    else
        close_conn(hc); /* idle between requests: nothing to answer */
}

void ioloop__http_conn_stop(struct http_conn *hc)
{
    if (hc->flags & C_STOPPED)
        return;
    hc->flags |= C_STOPPED; /* a request being read is dropped with the connection */
    ioloop__http_tq_remove(hc);
}

void ioloop__http_conn_drain(struct http_conn *hc)
{
    if (hc->flags & C_STOPPED)
        return;
    if (hc->cur != NULL)
        return; /* being read: dispatch() makes it the last */
    if (hc->first != NULL) {
        hc->last->flags |= F_CLOSE; /* the last request in progress ends the connection */
        hc->flags |= C_STOPPED;
        return;
    }
    if (hc->flags & C_SERVED)
        close_conn(hc); /* idle keep-alive */
    /* A connection that has sent nothing yet gets its first request answered (the header
     * timeout bounds its wait), so that a client that connected before the drain is served. */
}

/* ---- The parser's callbacks ------------------------------------------------------------- */

/* A callback's failure: the status to answer with (or -ENOMEM), for on_data to act on. */
static int refuse(struct http_conn *hc, int err)
{
    hc->error = err == -EMSGSIZE ? 413 : err == -ENOMEM ? -ENOMEM : 400;
    return -1;
}

static int on_message_begin(http_parser *p)
{
    struct http_conn *hc = p->data;

    if ((hc->cur = req_get(hc->hl)) == NULL)
        return refuse(hc, -ENOMEM);
    hc->cur->hc = hc;
    if (hc->tq != &hc->hl->head_q) /* the first request's head is timed from the accept */
        ioloop__http_tq_add(&hc->hl->head_q, hc);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *hc = p->data;
    int err = ioloop__http_msg_start(&hc->cur->msg, at, len);

    return err < 0 ? refuse(hc, err) : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_conn *hc = p->data;
    int err = ioloop__http_msg_field(&hc->cur->msg, at, len);

    return err < 0 ? refuse(hc, err) : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_conn *hc = p->data;
    int err = ioloop__http_msg_value(&hc->cur->msg, at, len, hc->data_end);

    return err < 0 ? refuse(hc, err) : 0;
}

/* "Expect: 100-continue" on a request whose body is wanted: the interim answer is owed,
 * once the head's bytes passed the checks and the earlier responses went out (so that it
 * does not overtake them). */
static void expect_continue(ioloop_http_request_t *req)
{
    const char *expect = ioloop__http_msg_header(&req->msg, "Expect");

    if (expect != NULL && req->minor > 0 && strcasecmp(expect, "100-continue") == 0)
        req->flags |= F_CONTINUE; /* an HTTP/1.0 client's is ignored (RFC 7231 §5.1.1) */
}

/*
 * The transfer codings of a request, beyond what http-parser checks (that chunked is not
 * sent with Content-Length; its own check of the last coding comes after this callback).
 * Returns 0, or the status to refuse it with: 400 for a last coding other than chunked or
 * chunked applied twice (RFC 9112 §6.3, §6.1), and for any Transfer-Encoding from an
 * HTTP/1.0 client (faulty framing, §6.1); 501 for a coding before chunked (gzip, say), which
 * the server does not undo: the body would reach the application still encoded (§6.1).
 */
static int codings_check(ioloop_http_request_t *req)
{
    const char *te, *p;
    unsigned chunked = 0, other = 0;
    bool last_chunked = false;

    if (ioloop__http_msg_count(&req->msg, "Transfer-Encoding") == 0)
        return 0;
    if (req->minor == 0)
        return 400;
    if ((te = ioloop__http_msg_header(&req->msg, "Transfer-Encoding")) == NULL)
        return -ENOMEM; /* the joined value could not be made */
    for (p = te; *p != '\0';) {
        size_t n;

        p += strspn(p, " \t,");
        n = strcspn(p, ",");
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n > 0) {
            last_chunked = n == 7 && strncasecmp(p, "chunked", 7) == 0;
            if (last_chunked)
                chunked++;
            else
                other++;
        }
        p += strcspn(p, ",");
    }
    if (!last_chunked || chunked > 1)
        return 400; /* the body's end cannot be found (RFC 9112 §6.3) */
    return other > 0 ? 501 : 0;
}

static int on_headers_complete(http_parser *p)
{
    struct http_conn *hc = p->data;
    ioloop_http_request_t *req = hc->cur;
    bool chunked = p->flags & F_CHUNKED;
    bool length = !chunked && (p->flags & F_CONTENTLENGTH) && p->content_length > 0;
    int err;

    if ((err = ioloop__http_msg_head_done(&req->msg)) < 0)
        return refuse(hc, err);
    if (ioloop__http_msg_count(&req->msg, "Host") > 1)
        return refuse(hc, -EBADMSG); /* which host is meant? (RFC 7230 §5.4) */
    if (p->http_major != 1) {
        hc->error = 505;
        return -1;
    }
    req->method = http_method_str((enum http_method)p->method);
    req->minor = p->http_minor > 0 ? 1 : 0;
    if (req->minor == 1 && ioloop__http_msg_count(&req->msg, "Host") == 0)
        return refuse(hc, -EBADMSG); /* a 1.1 request names its host (RFC 9112 §3.2) */
    if ((err = codings_check(req)) != 0) {
        hc->error = err;
        return -1;
    }
    if (p->method == HTTP_HEAD)
        req->flags |= F_HEAD;
    hc->flags |= C_BODY; /* from here on, fields are trailers */
    if (length && p->content_length > hc->hl->hs->max_body_bytes) {
        hc->error = 413; /* refused before a byte of it is read */
        return -1;
    }
    if (length && ioloop__http_msg_body_reserve(&req->msg, (size_t)p->content_length) < 0)
        return refuse(hc, -ENOMEM);
    if (chunked || length) {
        expect_continue(req);
        ioloop__http_tq_add(&hc->hl->idle_q, hc); /* the body is timed by its progress */
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *hc = p->data;
    int err = ioloop__http_framing_check(&hc->framing, hc->scan, at);

    if (err < 0 || (err = ioloop__http_msg_body(&hc->cur->msg, at, len,
                                                hc->hl->hs->max_body_bytes)) < 0)
        return refuse(hc, err);
    hc->scan = at + len; /* body bytes are not framing */
    if ((p->flags & F_CHUNKED) && p->content_length == 0)
        ioloop__http_framing_chunk_end(&hc->framing); /* the chunk's data ends here */
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct http_conn *hc = p->data;

    if (!http_should_keep_alive(p))
        hc->cur->flags |= F_CLOSE;
    else if (hc->cur->minor == 0)
        hc->cur->flags |= F_KEEPALIVE;
    http_parser_pause(p, 1); /* dispatched by on_data, outside the parser */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- Reading ---------------------------------------------------------------------------- */

/* The request just parsed goes to the FIFO and to the application. */
static void dispatch(struct http_conn *hc)
{
    ioloop_http_server_t *hs = hc->hl->hs;
    ioloop_http_request_t *req = hc->cur;

    hc->cur = NULL;
    hc->flags &= (uint16_t)~C_BODY;
    hc->head_bytes = 0;
    ioloop__http_framing_request_line(&hc->framing); /* the next request's */
    req->flags &= (uint16_t)~F_CONTINUE; /* the body came without it */
    if (atomic_load_explicit(&hs->draining, memory_order_relaxed))
        req->flags |= F_CLOSE;
    if (req->flags & F_CLOSE)
        hc->flags |= C_STOPPED; /* what follows it is not read */
    ioloop__http_tq_remove(hc);
    req->state = R_ACTIVE;
    append(hc, req);
    hs->handler(req, hs->user);
}

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct http_conn *hc = ioloop_conn_data(conn);
    size_t max_head, off = 0;

    if (hc == NULL || (hc->flags & (C_STOPPED | C_CLOSED | C_FAILED)))
        return len; /* nothing more is read: the close discards it */
    max_head = hc->hl->hs->max_header_bytes;
    while (off < len) {
        bool in_head = !(hc->flags & C_BODY);
        size_t lim = len - off, n;
        enum http_errno err;

        if (ioloop_conn_pending(conn) >= IOLOOP__HTTP_OUTPUT_HIGH && !wait_output(hc))
            return len; /* given up */
        if (hc->inflight >= IOLOOP__HTTP_INFLIGHT_MAX || (hc->flags & C_WAITING)) {
            pause_reading(hc); /* the rest stays with the connection until resumed */
            break;
        }
        if (in_head && lim > max_head - hc->head_bytes)
            lim = max_head - hc->head_bytes;
        hc->data_end = data + off + lim;
        hc->scan = data + off;
        n = http_parser_execute(&hc->parser, &settings, data + off, lim);
        err = HTTP_PARSER_ERRNO(&hc->parser);
        if (err != HPE_OK && err != HPE_PAUSED) {
            fail(hc, hc->error != 0 ? hc->error : err == HPE_HEADER_OVERFLOW ? 431 : 400);
            return len;
        }
        if (ioloop__http_framing_check(&hc->framing, hc->scan, data + off + n) < 0) {
            fail(hc, 400);
            return len;
        }
        off += n;
        if (err == HPE_PAUSED) {
            http_parser_pause(&hc->parser, 0);
            dispatch(hc);
            if (hc->flags & (C_STOPPED | C_CLOSED | C_FAILED))
                return len;
            continue;
        }
        if (hc->cur != NULL && (hc->cur->flags & F_CONTINUE) && hc->first == NULL) {
            hc->cur->flags &= (uint16_t)~F_CONTINUE;
            ioloop_conn_write(conn, CONTINUE, sizeof CONTINUE - 1);
        }
        if (in_head && !(hc->flags & C_BODY)) {
            hc->head_bytes += (uint32_t)n;
            if (hc->head_bytes >= max_head) {
                fail(hc, 431);
                return len;
            }
        }
    }
    if ((hc->flags & C_BODY) && hc->tq == &hc->hl->idle_q)
        ioloop__http_tq_add(&hc->hl->idle_q, hc); /* the body made progress */
    return off;
}

/* ---- The connection's handlers ---------------------------------------------------------- */

static void on_open(ioloop_conn_t *conn)
{
    ioloop_http_server_t *hs = ioloop_conn_user(conn);
    ioloop_t *loop = ioloop_conn_loop(conn);
    struct http_loop *hl = NULL;
    struct http_conn *hc;

    for (int i = 0; i < hs->nloops && hl == NULL; i++)
        if (hs->loops[i].loop == loop)
            hl = &hs->loops[i];
    hc = hl != NULL ? calloc(1, sizeof *hc) : NULL;
    if (hc == NULL) {
        ioloop_conn_close(conn);
        return;
    }
    hc->conn = conn;
    hc->hl = hl;
    http_parser_init(&hc->parser, HTTP_REQUEST);
    hc->parser.data = hc;
    ioloop__http_framing_request_line(&hc->framing);
    hc->next = hl->conns;
    if (hl->conns != NULL)
        hl->conns->prev = hc;
    hl->conns = hc;
    ioloop_conn_set_data(conn, hc);
    ioloop__http_tq_add(&hl->head_q, hc);
}

/* The peer shut down its side: what it asked for is still answered, then the close. */
static void on_eof(ioloop_conn_t *conn)
{
    struct http_conn *hc = ioloop_conn_data(conn);

    hc->flags |= C_EOF | C_STOPPED;
    hc->flags &= (uint16_t)~C_BODY;
    ioloop__http_tq_remove(hc);
    if (hc->cur != NULL) { /* half a request: never answered */
        ioloop__http_req_release(hc->cur);
        hc->cur = NULL;
    }
    if (hc->first == NULL)
        close_conn(hc);
}

static void on_close(ioloop_conn_t *conn, int err)
{
    struct http_conn *hc = ioloop_conn_data(conn);
    struct http_loop *hl;

    if (hc == NULL)
        return;
    hl = hc->hl;
    ioloop__http_tq_remove(hc);
    if (hc->prev != NULL)
        hc->prev->next = hc->next;
    else
        hl->conns = hc->next;
    if (hc->next != NULL)
        hc->next->prev = hc->prev;
    detach_all(hc);
    free(hc);
}

const ioloop_conn_handlers_t ioloop__http_conn_handlers = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
    .on_eof = on_eof,
};
