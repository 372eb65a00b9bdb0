/*
 * HTTP/1.1 on the loops: a server (keep-alive, pipelining, chunked bodies both ways, limits
 * and timeouts, graceful drain) and a client (ioloop_http_fetch, with connections kept alive
 * per loop and host:port). Requests are parsed by Debian's http-parser (libhttp-parser-dev),
 * never by string matching. Built unless meson's `http` option is disabled.
 *
 * Server: the handler runs in the connection's loop thread with a request whose method,
 * target, headers and whole body have arrived. It ends the request exactly once — with
 * ioloop_http_respond(), or with ioloop_http_write_head() + ioloop_http_write()… +
 * ioloop_http_finish() for a chunked response — at once or later (from a timer, a work pool's
 * done, a reply from another loop). Until then the request stays valid, even if the client
 * went away. Responses go out in request order, also when the handlers of pipelined requests
 * end them out of order; each response is one coalesced write. Once a request is ended its
 * pointer is invalid: an ending call made on it again returns -EALREADY as long as the loop
 * has not reused its memory for a later request, which is a help for finding such bugs, not
 * a promise.
 *
 * Connections: HTTP/1.1 keeps them alive unless the client sends `Connection: close`; an
 * HTTP/1.0 client's only with `Connection: keep-alive` (and the response says so). A
 * connection that is to close closes after its last response, whole (ioloop_conn_close()'s
 * lossless close); the requests that follow it on the connection are not read. Up to 64
 * pipelined requests of a connection may be with the application at a time; reading pauses
 * at that bound, and while 256 KiB of answers wait for a client that does not read them. A
 * client that shuts down its side (half-close) still gets the answers to what it sent.
 *
 * Bad input never reaches the handler: a malformed request (or one that smuggles: both
 * Content-Length and Transfer-Encoding, differing or repeated Content-Lengths, obs-fold, a
 * field name with whitespace before its colon, a transfer coding that does not end in chunked,
 * chunked twice, Transfer-Encoding from an HTTP/1.0 client, an HTTP/1.1 request with no Host
 * field or more than one, a line end other than CRLF or LF, a request line other than method SP
 * target SP "HTTP/" DIGIT "." DIGIT — Debian's http-parser is built lenient, and the server
 * checks these itself) gets 400, a coding before chunked (gzip, chunked: not undone by the
 * server) 501, an HTTP version other than 1.x 505 (1.2 and later minors are served as 1.1), a
 * head larger than max_header_bytes 431 (and any head beyond http-parser's own 80 KiB), a body
 * larger than max_body_bytes 413 (a declared Content-Length at once, without reading the body),
 * a head not complete within header_timeout_ms 408, a body that stalls for idle_timeout_ms 408;
 * each is sent after the answers owed to the requests before it, and then the connection closes
 * without loss. `Expect: 100-continue` gets "HTTP/1.1 100 Continue" when the body is wanted
 * (the head passed every check and a declared length fits max_body_bytes), after the answers
 * owed before it; an HTTP/1.0 client's expectation is ignored.
 */
#ifndef IOLOOP_HTTP_H
#define IOLOOP_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <ioloop/export.h>
#include <ioloop/loop.h>
#include <ioloop/pool.h>
#include <ioloop/server.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An HTTP server on a pool's loops. Opaque. */
typedef struct ioloop_http_server ioloop_http_server_t;
/** One request, from its arrival to the call that ends it. Opaque. */
typedef struct ioloop_http_request ioloop_http_request_t;
/** Runs in the connection's loop thread for each request, in arrival order. */
typedef void (*ioloop_http_handler_fn)(ioloop_http_request_t *req, void *user);

/** Server options; zero fields mean the defaults. */
typedef struct ioloop_http_options {
    size_t   max_header_bytes;  /**< request line + headers; 0: 16 KiB (431 beyond) */
    size_t   max_body_bytes;    /**< 0: 8 MiB (413 beyond) */
    uint64_t header_timeout_ms; /**< the whole request head must arrive within this, from its
                                     first byte (or from the accept); 0: 10000 (408) */
    uint64_t idle_timeout_ms;   /**< a keep-alive connection with no request in progress is
                                     closed after this (silently); a request body that makes
                                     no progress for this long gets 408; 0: 60000 */
    ioloop_server_options_t server; /**< accept mode, max_conns, proxy_protocol, ... */
} ioloop_http_options_t;

/* ---- Server ----------------------------------------------------------------------------- */

/**
 * Creates an HTTP server on `address` (as ioloop_server_new_opts() takes it) whose requests
 * run `handler(req, user)` in the pool's loops. `options` may be NULL. Nothing is accepted
 * until ioloop_http_server_start(). Returns the server, or NULL with errno: EINVAL (NULL pool
 * or handler, a malformed address or option), EADDRINUSE, ENOMEM, ... Any thread; that
 * thread owns the server.
 */
IOLOOP_EXPORT ioloop_http_server_t *ioloop_http_server_new(ioloop_pool_t *pool,
                                                           const char *address,
                                                           ioloop_http_handler_fn handler,
                                                           void *user,
                                                           const ioloop_http_options_t *options);

/** Starts accepting. Returns what ioloop_server_start() returns; -EINVAL for NULL. The owning
 * thread. */
IOLOOP_EXPORT int ioloop_http_server_start(ioloop_http_server_t *server);

/** Returns the bound TCP port, or -EINVAL. [any thread] */
IOLOOP_EXPORT int ioloop_http_server_port(const ioloop_http_server_t *server);

/**
 * Graceful stop: stops accepting, closes idle keep-alive connections at once, lets requests in
 * progress finish (each response then carries `Connection: close`, and its connection closes
 * after it), and returns as ioloop_server_drain() does: 0 once no connection is left, else the
 * number still open after timeout_ms. With several pipelined requests in progress on a
 * connection, all are answered and the last one closes it; a request being received is read
 * to its end and answered so. A response whose head was made before the call (ended and
 * waiting behind an earlier answer, or streaming) goes out as it was made, without the field,
 * and the connection still closes after the last one. A connection that has not sent its first request yet is served
 * that request (its client connected before the drain); header_timeout_ms bounds its wait.
 * -EINVAL for NULL. The owning thread; never a pool loop (-EDEADLK).
 */
IOLOOP_EXPORT int ioloop_http_server_drain(ioloop_http_server_t *server, uint64_t timeout_ms);

/**
 * Closes every connection (requests not yet ended are freed; the calls that would have ended
 * them must not come) and frees the server. Either order with ioloop_pool_free() is fine.
 * NULL is fine. The owning thread; never a pool loop.
 */
IOLOOP_EXPORT void ioloop_http_server_free(ioloop_http_server_t *server);

/* ---- A request (the connection's loop thread) ------------------------------------------- */
/*
 * The accessors below are for the connection's loop thread (or a thread the application
 * has synchronised with it); they return NULL (the body: NULL and 0) for a NULL req. The
 * strings and the body are the request's: the application neither frees nor keeps them
 * beyond the call that ends it.
 *
 * The request line and Host are not judged beyond the checks above: the target may be in
 * origin, absolute ("http://a/b") or asterisk form as sent, and Host's value is the
 * application's to judge (an HTTP/1.0 request may come without one: then
 * ioloop_http_header(req, "Host") is NULL). The server makes no tunnels: an `Upgrade` field
 * is ignored (the answer is never 101, so the connection goes on speaking HTTP/1.1, as RFC
 * 9110 §7.8 allows), and CONNECT reaches the handler like any method, its target the
 * authority as sent; what follows on the connection is parsed as HTTP requests, so the
 * handler should refuse it (405 or 501) rather than answer 2xx.
 */

/** The method as sent: "GET", "POST", "HEAD", … Valid until the request ends. */
IOLOOP_EXPORT const char *ioloop_http_method(const ioloop_http_request_t *req);

/** The request target as sent: "/a/b?x=1" (or an absolute URI). Valid until the request ends. */
IOLOOP_EXPORT const char *ioloop_http_target(const ioloop_http_request_t *req);

/**
 * The value of header `name` (case-insensitive) without its surrounding whitespace, with
 * repeated headers joined by ", " in their order, or NULL when absent (or, with errno ENOMEM,
 * when the joined value could not be made). Valid until the request ends.
 */
IOLOOP_EXPORT const char *ioloop_http_header(const ioloop_http_request_t *req,
                                             const char *name);

/** The whole request body (Content-Length or chunked) and its length; NULL and 0 if none. */
IOLOOP_EXPORT const void *ioloop_http_body(const ioloop_http_request_t *req, size_t *len);

/** The loop the request belongs to: post to it to end the request from another thread. */
IOLOOP_EXPORT ioloop_t *ioloop_http_loop(const ioloop_http_request_t *req);

/**
 * Adds a response header (copied); fields go out in the order added, before the server's own.
 * A Content-Length, Date, Server, Connection or Transfer-Encoding added here replaces the one
 * the server would add; `Connection: close` also closes the connection after the response.
 * Returns 0, -EINVAL (NULL, an empty name, a name that is not an HTTP token, CR, LF or another
 * control character but HTAB in the value: header injection is refused, nothing is sent),
 * -EALREADY (the response head went out already, or the request was ended), -EPERM (another
 * thread while the loop runs), -ENOMEM.
 */
IOLOOP_EXPORT int ioloop_http_add_header(ioloop_http_request_t *req, const char *name,
                                         const char *value);

/**
 * Ends the request with a whole response: status (200–599) and `len` bytes of body (copied).
 * Adds Content-Length (not for 204 and 304), Date (formatted once a second per loop) and
 * Server unless the application added them, and `Connection: close` when the connection
 * closes after it (`Connection: keep-alive` to an HTTP/1.0 client that asked for it). A HEAD
 * request gets the head, with the Content-Length of `len`, without the body. Returns 0;
 * -EPIPE if the client went away (the request is freed all the same); -EINVAL (NULL req, a
 * status outside 200–599, NULL body with len > 0, a body with 204 or 304: nothing changed,
 * the request is not ended); -EALREADY (ended already, or ioloop_http_write_head() was used);
 * -EPERM (another thread while the loop runs); -ENOMEM (not ended).
 */
IOLOOP_EXPORT int ioloop_http_respond(ioloop_http_request_t *req, int status, const void *body,
                                      size_t len);

/**
 * Starts a streamed response: the head with `Transfer-Encoding: chunked` (to an HTTP/1.0
 * client: no chunking, and the connection closes after the body; when the application added
 * Content-Length or Transfer-Encoding, the writes go out as they are, framed by it). Then
 * ioloop_http_write() any number of times and ioloop_http_finish() once. To a HEAD request
 * only the head goes out. Returns 0, -EPIPE (client gone: the request is freed), -EINVAL (a
 * status outside 200–599), -EALREADY, -EPERM, -ENOMEM.
 */
IOLOOP_EXPORT int ioloop_http_write_head(ioloop_http_request_t *req, int status);

/**
 * Writes one piece of a streamed response (a chunk; len 0 writes nothing; to a HEAD request
 * nothing is written, and 0 is returned). Returns 0, -EPIPE (client gone: the request is
 * freed), -EINVAL (no write_head yet, NULL data with len > 0, data after a 204 or 304 head),
 * -ENOBUFS (the connection's output limit, ioloop_server_options_t.max_output: nothing of the
 * piece was taken; wait, e.g. with a timer, and write again), -EALREADY (finished), -EPERM,
 * -ENOMEM.
 */
IOLOOP_EXPORT int ioloop_http_write(ioloop_http_request_t *req, const void *data, size_t len);

/**
 * Ends a streamed response (the last chunk). Returns 0, -EPIPE (client gone: the request is
 * freed all the same), -EINVAL (no write_head), -EALREADY, -EPERM, -ENOMEM (not ended).
 */
IOLOOP_EXPORT int ioloop_http_finish(ioloop_http_request_t *req);

/* ---- Client ----------------------------------------------------------------------------- */
/*
 * A fetch's connection comes from the loop's pool of kept-alive connections to the URL's
 * host:port (the host compared without case) or is made anew; each fetch in flight has one
 * connection to itself (no pipelining), so fetches to one host run in parallel, as many as
 * the application starts (it bounds its own concurrency). A response that lets the connection
 * be kept (HTTP/1.1 without "Connection: close", or 1.0 with "keep-alive"; the body delimited
 * by Content-Length or chunking and read whole; nothing sent beyond it; no "Connection:
 * close" from the application) puts it back in the pool, which keeps at most 8 idle
 * connections per host:port and 64 per loop, each for 60 s at most, and drops one at once
 * when its server closes it.
 *
 * The stale connection: a server may close a kept-alive connection just as a request goes out
 * on it. A request whose reused connection ends (EOF or reset) before any byte of a response
 * is sent once more, on a fresh connection, if its method is idempotent (GET, HEAD, PUT,
 * DELETE, OPTIONS, TRACE: RFC 7230 §6.3.1, as browsers and curl do); any other gets
 * -ECONNRESET, since the server may have acted on it.
 */

/** A response, valid during the ioloop_http_response_fn call. Opaque. */
typedef struct ioloop_http_response ioloop_http_response_t;
/**
 * Runs once per fetch in the loop's thread (in the freeing thread when ioloop_free() cancels
 * it): err 0 with the response, or a negative errno and resp NULL.
 */
typedef void (*ioloop_http_response_fn)(ioloop_t *loop, int err,
                                        const ioloop_http_response_t *resp, void *arg);

/** Longest response body ioloop_http_fetch() takes; a longer one fails with -EMSGSIZE. */
#define IOLOOP_HTTP_FETCH_MAX_BODY ((size_t)64 << 20)
/** Longest response head (status line and fields, interim 1xx heads included): -EMSGSIZE. */
#define IOLOOP_HTTP_FETCH_MAX_HEAD ((size_t)64 << 10)

/**
 * Sends one request and calls fn once with its response.
 *
 * `url`: "http://host[:port][/path][?query][#fragment]" — the scheme in any case; the host a
 * host name (RFC 1123, looked up as ioloop_resolve() does), a dotted quad or an IPv6 address
 * in brackets; the port 1–65535, 80 by default; path and query printable ASCII
 * (percent-encode the rest). The fragment is the client's and is not sent; userinfo is
 * refused. `method`: an HTTP token, not CONNECT. `headers`: NULL, or a NULL-terminated array
 * of "Name: value" fields, each with a token name and a value without control characters
 * but tabs (a CR or LF would inject fields: refused), neither Content-Length nor
 * Transfer-Encoding (the framing is the client's); a Host field replaces the client's, and
 * "Connection: close" keeps the connection out of the pool. `body`: `len` bytes (copied), or
 * NULL with len 0.
 *
 * The request goes out in one write: `METHOD /path?query HTTP/1.1`, `Host: host[:port]`
 * (":port" unless it is 80), the application's fields in their order, `Content-Length` when
 * a body is given (also an empty one) and `Content-Length: 0` for POST, PUT and PATCH
 * without one, the blank line, the body.
 *
 * fn never runs inside this call: err 0 with the whole response — the status (interim 1xx
 * responses are skipped), the fields, the body: by Content-Length, chunked (trailers are
 * dropped) or up to the server's EOF; none for HEAD, 204 and 304 whatever the fields say —
 * or -ETIMEDOUT (timeout_ms from this call passed: lookup, connect, retry and response
 * included; 0: no timeout), -ECONNREFUSED, -ENOENT (no such host), -EPROTO (a malformed
 * response, one cut short by EOF, an EOF before any byte of one on a fresh connection, 101
 * Switching Protocols), -EMSGSIZE (a body beyond IOLOOP_HTTP_FETCH_MAX_BODY, a head beyond
 * IOLOOP_HTTP_FETCH_MAX_HEAD), -ECONNRESET (reset by the server; or see "The stale
 * connection" above), -ECANCELED (ioloop_http_fetch_cancel(), or the loop freed), -ENOMEM,
 * or what else the connection failed with.
 *
 * Returns a positive id (unique for the loop's life), or -EINVAL (NULL loop, method, url or
 * fn; a bad URL, method or field; NULL body with len > 0), -EMSGSIZE (a request larger than
 * a connection's output limit, IOLOOP_CONN_MAX_OUTPUT), -EPERM (wrong thread), -ENOMEM,
 * -ENOTSUP (a host name, and the library was built without c-ares); fn then never runs.
 * Loop thread.
 */
IOLOOP_EXPORT int64_t ioloop_http_fetch(ioloop_t *loop, const char *method, const char *url,
                                        const char *const *headers, const void *body, size_t len,
                                        uint64_t timeout_ms, ioloop_http_response_fn fn,
                                        void *arg);

/**
 * Cancels a fetch whose fn has not started: fn runs with -ECANCELED after the current
 * callback (not inside this call), also when the response had arrived already (it is
 * dropped). The fetch's connection closes, so a late response never reaches anyone.
 * Returns 0, -ENOENT (unknown id, fn started or ran, or cancelled already), -EINVAL (NULL
 * loop), -EPERM (wrong thread). Loop thread.
 */
IOLOOP_EXPORT int ioloop_http_fetch_cancel(ioloop_t *loop, int64_t fetch_id);

/** The response's status code (200–599: interim ones are skipped), or -EINVAL for NULL. */
IOLOOP_EXPORT int ioloop_http_response_status(const ioloop_http_response_t *resp);

/**
 * A response header (case-insensitive; repeated ones joined by ", "), or NULL when absent
 * (or, with errno ENOMEM, when the joined value could not be made).
 */
IOLOOP_EXPORT const char *ioloop_http_response_header(const ioloop_http_response_t *resp,
                                                      const char *name);

/**
 * The `index`-th field of the response head (0-based, in the order received, repeated ones
 * not joined): returns its value and sets *name (if name is not NULL) to its name as sent,
 * or returns NULL past the last field.
 */
IOLOOP_EXPORT const char *ioloop_http_response_header_at(const ioloop_http_response_t *resp,
                                                         size_t index, const char **name);

/** The whole response body and sets *len (if not NULL) to its length: NULL and 0 if empty. */
IOLOOP_EXPORT const void *ioloop_http_response_body(const ioloop_http_response_t *resp,
                                                    size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_HTTP_H */
