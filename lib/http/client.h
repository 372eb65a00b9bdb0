/*
 * The HTTP client's internals, shared by client.c (fetches, the loop's pool of kept-alive
 * connections, reading responses) and client_request.c (URLs and the bytes of a request).
 *
 *   ioloop_t ── http_client (made by the loop's first fetch, owned by the loop)
 *                 ├─ fetches: uthash by id, every fetch whose fn has not started
 *                 ├─ hosts:   uthash by "host:port", each with its idle connections
 *                 └─ conns:   every connection of the client (busy, idle or closing)
 *
 *   fetch ── at most one client connection (cconn) at a time; a cconn carries at most one
 *            fetch (no pipelining), and sits in its host's idle list while it carries none.
 *
 * Everything here is touched by the loop's thread only.
 */
#ifndef IOLOOP_LIB_HTTP_CLIENT_H
#define IOLOOP_LIB_HTTP_CLIENT_H

#include <ioloop/http.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/message.h"
#include "net/address.h"

/* How long an idle pooled connection is kept: a server closes its own idle keep-alive
 * connections after a while too (ours after 60 s, nginx after 75 s), and a connection that
 * waits longer than its server does is one that the next request would find closed. */
#define IOLOOP__HTTP_POOL_IDLE_MS 60000
/* Idle connections kept per host:port, and per loop in all; a connection returned beyond
 * either bound is closed. Enough for a loop's steady traffic to a few backends without
 * holding hundreds of fds for hosts fetched once. */
#define IOLOOP__HTTP_POOL_PER_HOST 8
#define IOLOOP__HTTP_POOL_MAX 64

/* "[v6 address]:65535" or "host-name:65535", and its NUL. */
#define IOLOOP__HTTP_ADDR_MAX (IOLOOP__HOST_MAX + 2 + 6 + 1)

/* ---- client_request.c ------------------------------------------------------------------- */

/* An http:// URL, taken apart. */
struct ioloop__http_url {
    char addr[IOLOOP__HTTP_ADDR_MAX]; /* "host:port", the host lowercased, IPv6 in brackets:
                                         what ioloop_connect() takes, and the pool's key */
    char host[IOLOOP__HTTP_ADDR_MAX]; /* the Host field: the host as the URL spells it, and
                                         ":port" unless the port is 80 */
    const char *path;                 /* the path in the URL, or NULL (then "/") */
    size_t path_len;
    const char *query;                /* the query after "?", or NULL */
    size_t query_len;
};

/* Takes `url` apart: "http://host[:port][/path][?query][#fragment]", the scheme in any case,
 * the host a host name (RFC 1123), a dotted quad or an IPv6 address in brackets, the port
 * 1-65535 (default 80). The fragment is never sent (it is the client's, RFC 7230 §5.1);
 * userinfo is refused, as is anything but printable ASCII in the path and query. Returns 0 or
 * -EINVAL. The path and query point into url. */
int ioloop__http_url_parse(const char *url, struct ioloop__http_url *u);

/* The request's bytes, head and body, ready for one write. */
struct ioloop__http_request_bytes {
    char *data; /* malloc'ed */
    size_t len;
    bool close; /* the application's fields said "Connection: close" */
};

/* Builds `method target HTTP/1.1`, Host (unless the application gave one), the
 * application's fields in their order, Content-Length (when a body is given, and 0 for POST,
 * PUT and PATCH without one), the blank line and the body. Returns 0; -EINVAL (a method that
 * is not a token, or CONNECT; a field that is not "Name: value" with a token name and a value
 * without control characters — CR and LF above all; a Content-Length or Transfer-Encoding
 * field: the framing is the client's; NULL body with len > 0); -EMSGSIZE (the request would
 * not fit a connection's output limit); -ENOMEM. */
int ioloop__http_request_build(const char *method, const struct ioloop__http_url *u,
                               const char *const *headers, const void *body, size_t len,
                               struct ioloop__http_request_bytes *out);

/* Is a request with this method retried on a fresh connection when a reused one turns out
 * to be closed (RFC 7230 §6.3.1: idempotent methods)? */
bool ioloop__http_method_idempotent(const char *method);

/* ---- client.c: hooks for the tests ------------------------------------------------------ */

/* What a loop's client did so far. */
struct ioloop__http_client_stats {
    uint64_t connects; /* connections made */
    uint64_t reuses;   /* fetches sent on a pooled connection */
    uint64_t retries;  /* fetches sent again after a reused connection failed */
    unsigned idle;     /* connections in the pool now */
};

/* Sets the loop's largest response body (0: IOLOOP_HTTP_FETCH_MAX_BODY) and how long idle
 * connections are kept (0: IOLOOP__HTTP_POOL_IDLE_MS), for the fetches that follow. Returns
 * 0, -EPERM, -ENOMEM. Loop thread. */
int ioloop__http_client_set_limits(ioloop_t *loop, size_t max_body, uint64_t idle_ms);
/* Copies the counters (zeros before the first fetch). Loop thread. */
void ioloop__http_client_get_stats(ioloop_t *loop, struct ioloop__http_client_stats *out);

#endif /* IOLOOP_LIB_HTTP_CLIENT_H */
