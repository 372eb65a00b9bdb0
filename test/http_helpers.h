/*
 * Shared by the HTTP server tests (test_http_server.c, test_http_limits.c): an HTTP server on
 * a one-loop pool whose handler is the test's, a record of what the handlers saw, and a raw
 * client — a blocking TCP socket — that sends exact bytes and reads responses back byte for
 * byte (status, fields, body by Content-Length, chunks, or up to the end of the stream).
 *
 * Every wait is bounded by TEST_WAIT_MS (helpers.h); a wait that runs out fails the test.
 */
#ifndef IOLOOP_TEST_HTTP_HELPERS_H
#define IOLOOP_TEST_HTTP_HELPERS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ioloop.h>

#include "helpers.h"

/* Room in the record. */
#define HT_MAX 64

struct ht_server;
typedef void (*ht_handler_fn)(ioloop_http_request_t *req, struct ht_server *s);

/* A server and what its handler saw; counters under lock (the handler runs in the loop). */
struct ht_server {
    int fds;                           /* the fd count before ht_start() */
    ioloop_pool_t *pool;
    ioloop_t *loop;                    /* the pool's (only) loop */
    ioloop_http_server_t *server;
    int port;
    ht_handler_fn handler;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int requests;                      /* handler calls */
    char targets[HT_MAX][128];         /* the targets, in the order the handler saw them */
    int rc[HT_MAX];                    /* return codes a handler reports (ht_note) */
    int nrc;
    ioloop_http_request_t *held[HT_MAX]; /* requests a handler keeps to end later */
    int nheld;
    void *test;                        /* the test's own state */
};

/* Starts a server on 127.0.0.1:0 (a pool of `nloops` loops; s->loop is the first) with
 * these options (NULL: the defaults) and handler. */
void ht_start_opts(struct ht_server *s, int nloops, const char *address,
                   const ioloop_http_options_t *options, ht_handler_fn handler);
void ht_start(struct ht_server *s, const ioloop_http_options_t *options, ht_handler_fn handler);
/* Frees the server and the pool, then checks the fd count. */
void ht_stop(struct ht_server *s);

/* In a handler: records the call (target), and a return code. */
void ht_note_request(struct ht_server *s, ioloop_http_request_t *req);
void ht_note(struct ht_server *s, int rc);
/* Waits until the handler ran n times / n codes were noted; returns whether it did. */
bool ht_wait_requests(struct ht_server *s, int n);
bool ht_wait_rc(struct ht_server *s, int n);
int ht_requests(struct ht_server *s);
int ht_rc(struct ht_server *s, int i);
/* In a handler: keeps req (the test ends it later in the loop, see ht_in_loop). */
void ht_hold(struct ht_server *s, ioloop_http_request_t *req);
/* Waits until n requests are held, and returns the i-th. */
ioloop_http_request_t *ht_held(struct ht_server *s, int i);
/* Runs fn(s) in the server's loop and waits for it. */
void ht_in_loop(struct ht_server *s, void (*fn)(struct ht_server *s));

/* ---- The raw client --------------------------------------------------------------------- */

struct ht_client {
    int fd;
    char *buf;       /* received and not yet taken */
    size_t len, cap;
    bool eof;
};

struct ht_response {
    int status;
    char *raw;       /* every byte of the response as it came (NUL-terminated) */
    size_t raw_len;
    char *body;      /* the body (decoded if chunked; NUL-terminated) */
    size_t body_len;
    int nfields;
    char *names[64]; /* parsed from a copy of the head */
    char *values[64];
    char *head_copy;
};

void ht_connect(struct ht_client *c, int port);
void ht_close(struct ht_client *c);
/* Sends bytes exactly as given. */
void ht_send(struct ht_client *c, const char *data);
void ht_send_n(struct ht_client *c, const void *data, size_t len);
/* Reads one response (no body when `head`, as for a HEAD request). Returns 0, or -1 when the
 * stream ended before any byte of it. */
int ht_recv(struct ht_client *c, struct ht_response *r, bool head);
/* Reads exactly these bytes next (an interim response, say). */
void ht_expect_raw(struct ht_client *c, const char *bytes);
/* Reads one response and checks its status. */
void ht_expect(struct ht_client *c, struct ht_response *r, int status);
/* The value of a response field (case-insensitive), or NULL. */
const char *ht_field(const struct ht_response *r, const char *name);
void ht_response_free(struct ht_response *r);
/* Waits for the end of the stream with nothing more before it; returns 0 or -errno. */
int ht_expect_eof(struct ht_client *c);
/* Nothing arrives within ms (and the stream has not ended). */
void ht_expect_silence(struct ht_client *c, int ms);

/* Is s an IMF-fixdate within a few seconds of now? */
bool ht_date_ok(const char *s);

#endif /* IOLOOP_TEST_HTTP_HELPERS_H */
