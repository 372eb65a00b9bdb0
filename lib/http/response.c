/*
 * What the application answers with: a whole response (ioloop_http_respond) or a streamed
 * one (write_head, write…, finish), and the request's accessors.
 *
 * A response head is put together without printf: the status line from the code and its
 * reason phrase, the application's fields as they were added ("Name: value\r\n", kept in the
 * request), then the fields the server adds — Server, Date (the loop's cached string),
 * Content-Length or Transfer-Encoding, Connection — and the blank line. The pieces and the
 * body go to the connection in one ioloop_conn_writev(), so a response is one coalesced
 * write; when it is not the request's turn yet, they are copied into the request's buffer.
 */
#include "http/server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/loop.h"

/* Room for the fields the server adds (about 150 bytes at most). */
#define FIELDS_MAX 256
/* Room for a status line made by hand: "HTTP/1.1 599 \r\n". */
#define STATUS_LINE_MAX 32

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

static char *put_str(char *p, const char *s)
{
    return put(p, s, strlen(s));
}

static char *put_uint(char *p, uint64_t v, unsigned base)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[20];
    size_t n = 0;

    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v > 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

/* The status lines of the registered codes, made at compile time from http-parser's table:
 * always HTTP/1.1, the server's version, also to a 1.0 client. */
static const struct {
    const char *text;
    uint8_t len;
} status_lines[600] = {
#define XX(num, name, string) \
    [num] = {"HTTP/1.1 " #num " " #string "\r\n", sizeof("HTTP/1.1 " #num " " #string "\r\n") - 1},
    HTTP_STATUS_MAP(XX)
#undef XX
};

/* "HTTP/1.1 200 OK\r\n"; a code without a registered phrase gets an empty one. */
static size_t status_line(char *buf, int status, const char **line)
{
    char *p;

    if (status_lines[status].text != NULL) {
        *line = status_lines[status].text;
        return status_lines[status].len;
    }
    p = put_uint(put_str(buf, "HTTP/1.1 "), (uint64_t)status, 10);
    *line = buf;
    return (size_t)(put(p, " \r\n", 3) - buf);
}

/* The fields the server adds, and the blank line. `length`: say Content-Length = len. */
static size_t server_fields(const ioloop_http_request_t *req, char *buf, bool length,
                            uint64_t len, bool chunked)
{
    char *p = buf;

    if (!(req->flags & H_SERVER))
        p = put_str(p, "Server: ioloop\r\n");
    if (!(req->flags & H_DATE)) {
        struct http_loop *hl = req->hl;

        p = put_str(p, "Date: ");
        p = put(p, ioloop__http_date_get(&hl->date, ioloop_now_ms(hl->loop)),
                IOLOOP__HTTP_DATE_LEN);
        p = put(p, "\r\n", 2);
    }
    if (length && !(req->flags & (H_LENGTH | H_TE))) {
        p = put_str(p, "Content-Length: ");
        p = put(put_uint(p, len, 10), "\r\n", 2);
    }
    if (chunked)
        p = put_str(p, "Transfer-Encoding: chunked\r\n");
    if (!(req->flags & H_CONNECTION)) {
        if (req->flags & F_CLOSE)
            p = put_str(p, "Connection: close\r\n");
        else if (req->flags & F_KEEPALIVE)
            p = put_str(p, "Connection: keep-alive\r\n");
    }
    return (size_t)(put(p, "\r\n", 2) - buf);
}

/* ---- Writing in turn -------------------------------------------------------------------- */

static int buf_append(struct http_buf *b, const struct iovec *iov, int iovcnt, size_t total)
{
    if (b->start > 0 && b->len > 0)
        memmove(b->data, b->data + b->start, b->len);
    b->start = 0;
    if (total > SIZE_MAX - b->len)
        return -ENOMEM;
    if (b->len + total > b->cap) {
        size_t cap = b->cap > 0 ? b->cap : 1024;
        char *p;

        while (cap < b->len + total)
            cap = cap > SIZE_MAX / 2 ? b->len + total : cap * 2;
        if ((p = realloc(b->data, cap)) == NULL)
            return -ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    for (int i = 0; i < iovcnt; i++) {
        memcpy(b->data + b->len, iov[i].iov_base, iov[i].iov_len);
        b->len += iov[i].iov_len;
    }
    return 0;
}

int ioloop__http_emit(ioloop_http_request_t *req, const struct iovec *iov, int iovcnt,
                      bool bounded)
{
    struct http_conn *hc = req->hc;
    size_t total = 0;
    int rc;

    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (req == hc->first && req->out.len == 0 && !(hc->flags & C_WAITING)) {
        rc = ioloop_conn_writev(hc->conn, iov, iovcnt);
        if (rc != -ENOBUFS || bounded)
            return rc;
        /* Beyond the output limit at once: kept here, and written as the limit lets it. */
    } else if (bounded && req->out.len + total > req->hl->hs->max_output) {
        return -ENOBUFS;
    }
    return buf_append(&req->out, iov, iovcnt, total);
}

/* The connection failed under a write: every request leaves it, and this one is released. */
static int gone(ioloop_http_request_t *req, struct http_conn *hc)
{
    if (hc != NULL)
        ioloop__http_conn_failed(hc);
    ioloop__http_req_release(req);
    return -EPIPE;
}

/* A write for the head of the FIFO that left bytes waiting: they go out as they can. */
static void kick(ioloop_http_request_t *req)
{
    if (req->hc != NULL && req == req->hc->first && req->out.len > 0)
        ioloop__http_conn_advance(req->hc);
}

int ioloop__http_answer(ioloop_http_request_t *req, int status, const void *body, size_t len)
{
    struct http_conn *hc = req->hc;
    bool bodyless = status == 204 || status == 304;
    char line[STATUS_LINE_MAX], fields[FIELDS_MAX];
    const char *text;
    struct iovec iov[4];
    int n = 0, rc;

    iov[n].iov_len = status_line(line, status, &text);
    iov[n++].iov_base = (void *)text;
    if (req->hdrs.len > 0)
        iov[n++] = (struct iovec){req->hdrs.data, req->hdrs.len};
    iov[n++] = (struct iovec){fields, server_fields(req, fields, !bodyless, len, false)};
    if (len > 0 && !(req->flags & F_HEAD))
        iov[n++] = (struct iovec){(void *)body, len};
    rc = ioloop__http_emit(req, iov, n, false);
    if (rc == -EPIPE)
        return gone(req, hc);
    if (rc < 0)
        return rc;
    req->state = R_DONE;
    ioloop__http_conn_advance(hc);
    return 0;
}

/* ---- The application's calls ------------------------------------------------------------ */

/* The response closes the connection: the requests after it are not read. */
static void closes(ioloop_http_request_t *req)
{
    req->flags |= F_CLOSE;
    if (req->hc != NULL)
        ioloop__http_conn_stop(req->hc);
}

/* The checks every ending call makes first. */
static int usable(const ioloop_http_request_t *req)
{
    int err;

    if (req == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(req->hl->loop)) < 0)
        return err;
    return req->state == R_ACTIVE ? 0 : -EALREADY;
}

/* The fields the server would add itself: the application's take their place. */
static uint16_t known_field(const char *name, size_t len)
{
    switch (len) {
    case 4:
        return strcasecmp(name, "Date") == 0 ? H_DATE : 0;
    case 6:
        return strcasecmp(name, "Server") == 0 ? H_SERVER : 0;
    case 10:
        return strcasecmp(name, "Connection") == 0 ? H_CONNECTION : 0;
    case 14:
        return strcasecmp(name, "Content-Length") == 0 ? H_LENGTH : 0;
    case 17:
        return strcasecmp(name, "Transfer-Encoding") == 0 ? H_TE : 0;
    default:
        return 0;
    }
}

int ioloop_http_add_header(ioloop_http_request_t *req, const char *name, const char *value)
{
    size_t name_len, value_len;
    struct iovec iov[4];
    uint16_t known;
    int err;

    if (name == NULL || value == NULL)
        return -EINVAL;
    if ((err = usable(req)) < 0)
        return err;
    if (req->flags & F_STARTED)
        return -EALREADY;
    name_len = strlen(name);
    value_len = strlen(value);
    if (!ioloop__http_is_token(name, name_len) || !ioloop__http_is_field_value(value))
        return -EINVAL; /* header injection: a CR or LF would start a field of its own */
    iov[0] = (struct iovec){(void *)name, name_len};
    iov[1] = (struct iovec){": ", 2};
    iov[2] = (struct iovec){(void *)value, value_len};
    iov[3] = (struct iovec){"\r\n", 2};
    if ((err = buf_append(&req->hdrs, iov, 4, name_len + value_len + 4)) < 0)
        return err;
    known = known_field(name, name_len);
    req->flags |= known;
    if (known == H_CONNECTION && ioloop__http_list_has(value, value_len, "close"))
        closes(req);
    return 0;
}

int ioloop_http_respond(ioloop_http_request_t *req, int status, const void *body, size_t len)
{
    int err;

    if ((err = usable(req)) < 0)
        return err;
    if (req->flags & F_STARTED)
        return -EALREADY;
    if (status < 200 || status > 599 || (body == NULL && len > 0) ||
        ((status == 204 || status == 304) && len > 0))
        return -EINVAL;
    if (req->flags & F_ORPHAN)
        return gone(req, NULL);
    return ioloop__http_answer(req, status, body, len);
}

int ioloop_http_write_head(ioloop_http_request_t *req, int status)
{
    char line[STATUS_LINE_MAX], fields[FIELDS_MAX];
    const char *text;
    struct iovec iov[3];
    uint16_t before;
    bool raw;
    int n = 0, err;

    if ((err = usable(req)) < 0)
        return err;
    if (req->flags & F_STARTED)
        return -EALREADY;
    if (status < 200 || status > 599)
        return -EINVAL;
    if (req->flags & F_ORPHAN)
        return gone(req, NULL);
    before = req->flags;
    /* The application frames the body itself when it gave a length or an encoding; an
     * HTTP/1.0 client cannot take chunks: the body then ends with the connection. */
    raw = (req->flags & (H_LENGTH | H_TE)) || req->minor == 0;
    if (req->minor == 0 && !(req->flags & H_LENGTH))
        req->flags |= F_CLOSE;
    if (status == 204 || status == 304)
        req->flags |= F_NOBODY;
    req->flags |= F_STARTED | (raw ? F_RAW : 0);
    iov[n].iov_len = status_line(line, status, &text);
    iov[n++].iov_base = (void *)text;
    if (req->hdrs.len > 0)
        iov[n++] = (struct iovec){req->hdrs.data, req->hdrs.len};
    iov[n++] = (struct iovec){fields, server_fields(req, fields, false, 0,
                                                    !raw && !(req->flags & F_NOBODY))};
    err = ioloop__http_emit(req, iov, n, false);
    if (err == -EPIPE)
        return gone(req, req->hc);
    if (err < 0) {
        req->flags = before;
        return err;
    }
    if (req->flags & F_CLOSE)
        closes(req);
    kick(req);
    return 0;
}

int ioloop_http_write(ioloop_http_request_t *req, const void *data, size_t len)
{
    char size_line[20];
    struct iovec iov[3];
    int n = 0, err;

    if ((err = usable(req)) < 0)
        return err;
    if (!(req->flags & F_STARTED) || (data == NULL && len > 0) ||
        ((req->flags & F_NOBODY) && len > 0))
        return -EINVAL;
    if (req->flags & F_ORPHAN)
        return gone(req, NULL);
    if (len == 0 || (req->flags & F_HEAD))
        return 0; /* a HEAD response has no body: what GET would get goes nowhere */
    if (!(req->flags & F_RAW))
        iov[n++] = (struct iovec){size_line,
                                  (size_t)(put(put_uint(size_line, len, 16), "\r\n", 2) -
                                           size_line)};
    iov[n++] = (struct iovec){(void *)data, len};
    if (!(req->flags & F_RAW))
        iov[n++] = (struct iovec){"\r\n", 2};
    err = ioloop__http_emit(req, iov, n, true);
    if (err == -EPIPE)
        return gone(req, req->hc);
    if (err < 0)
        return err;
    kick(req);
    return 0;
}

int ioloop_http_finish(ioloop_http_request_t *req)
{
    static const char last_chunk[] = "0\r\n\r\n";
    int err;

    if ((err = usable(req)) < 0)
        return err;
    if (!(req->flags & F_STARTED))
        return -EINVAL;
    if (req->flags & F_ORPHAN)
        return gone(req, NULL);
    if (!(req->flags & (F_RAW | F_HEAD | F_NOBODY))) {
        struct iovec iov = {(void *)last_chunk, sizeof last_chunk - 1};

        err = ioloop__http_emit(req, &iov, 1, false);
        if (err == -EPIPE)
            return gone(req, req->hc);
        if (err < 0)
            return err;
    }
    req->state = R_DONE;
    ioloop__http_conn_advance(req->hc);
    return 0;
}

/* ---- Accessors -------------------------------------------------------------------------- */

const char *ioloop_http_method(const ioloop_http_request_t *req)
{
    return req != NULL ? req->method : NULL;
}

const char *ioloop_http_target(const ioloop_http_request_t *req)
{
    return req != NULL ? ioloop__http_msg_start_text(&req->msg) : NULL;
}

const char *ioloop_http_header(const ioloop_http_request_t *req, const char *name)
{
    if (req == NULL || name == NULL)
        return NULL;
    /* Joining repeated fields caches the result in the message: logically const. */
    return ioloop__http_msg_header((struct ioloop__http_msg *)&req->msg, name);
}

const void *ioloop_http_body(const ioloop_http_request_t *req, size_t *len)
{
    size_t n = req != NULL ? req->msg.body_len : 0;

    if (len != NULL)
        *len = n;
    return n > 0 ? req->msg.body : NULL;
}

ioloop_t *ioloop_http_loop(const ioloop_http_request_t *req)
{
    return req != NULL ? req->hl->loop : NULL;
}
