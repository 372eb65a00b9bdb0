/*
 * The HTTP server's internals, shared by server.c (servers, their loops, timeouts, drain),
 * server_conn.c (a connection: parsing, the request FIFO, answering in order) and response.c
 * (what the application answers with).
 *
 *   ioloop_http_server ── ioloop_server (lib/net) + one http_loop per pool loop
 *   http_loop  ── its connections (for drain), two timeout queues, a cache of request
 *                 structs, the requests whose connection went away, the Date cache
 *   http_conn  ── one per ioloop_conn_t (ioloop_conn_set_data): the parser, the request
 *                 being read, and the FIFO of requests read and not yet answered:
 *
 *       first ─▶ [answered? written] ─▶ [handler runs] ─▶ [answered, waiting] ─▶ ◀─ last
 *                 only the head writes to the connection; a later request's answer waits
 *                 in its own `out` buffer, assembled, until every earlier one went out
 *
 * Everything of a loop is touched only in that loop's thread, but for setup and teardown
 * (the owning thread, with the loops synchronised through posted tasks).
 */
#ifndef IOLOOP_LIB_HTTP_SERVER_H
#define IOLOOP_LIB_HTTP_SERVER_H

#include <ioloop/http.h>

#include <http_parser.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/pool.h"
#include "http/date.h"
#include "http/message.h"

/* Requests read and not yet answered on one connection; reading pauses at this bound. */
#define IOLOOP__HTTP_INFLIGHT_MAX 64
/* Reading pauses while this many bytes of answers wait for the peer to take them, so that
 * a client that pipelines and never reads holds about this much, not the output limit. */
#define IOLOOP__HTTP_OUTPUT_HIGH ((size_t)256 << 10)
/* Ended request structs a loop keeps for the next requests (so that steady traffic mallocs
 * nothing); buffers larger than IOLOOP__HTTP_KEEP_BYTES are released, not kept. */
#define IOLOOP__HTTP_CACHE_MAX 256
#define IOLOOP__HTTP_KEEP_BYTES (64 * 1024)

struct http_conn;
struct http_loop;

/* A byte buffer that keeps its memory: bytes [start, start + len) of data. */
struct http_buf {
    char *data;
    size_t start, len, cap;
};

/*
 * Connections waiting for one kind of deadline, in deadline order: every deadline is "when
 * it joined + timeout", so appending keeps the order and each move is O(1). One loop timer
 * per queue is armed for (at most) the head's deadline; when it fires, the expired heads are
 * taken and the timer is armed again for the new head. A timer that fires for a connection
 * that left meanwhile simply finds nothing due.
 */
struct http_tq {
    struct http_conn *head, *tail;
    struct http_loop *hl;
    uint64_t timeout_ms;
    int64_t timer; /* 0: none armed */
};

struct http_loop {
    ioloop_http_server_t *hs;
    ioloop_t *loop;
    struct http_conn *conns;        /* every connection of the server in this loop */
    struct http_tq head_q;          /* waiting for a request head (header_timeout_ms) */
    struct http_tq idle_q;          /* keep-alive between requests; bodies (idle_timeout_ms) */
    ioloop_http_request_t *cache;   /* ended request structs, linked by next */
    unsigned ncached;
    ioloop_http_request_t *orphans; /* not ended, connection gone; linked by prev/next */
    struct ioloop__http_date date;
    bool timers_off;                /* the pool is being freed: arm nothing any more */
};

/* http_conn.flags */
enum {
    C_BODY = 0x01,    /* the current request's head is complete: its body is being read */
    C_STOPPED = 0x02, /* no request is read any more: the last one came, or an error */
    C_PAUSED = 0x04,  /* we paused reading (pipeline bound, output waiting) */
    C_WAITING = 0x08, /* the head's output waits for the connection to take more */
    C_EOF = 0x10,     /* the peer shut down its side */
    C_CLOSED = 0x20,  /* ioloop_conn_close() was called */
    C_FAILED = 0x40,  /* the connection failed: nothing can be written */
    C_SERVED = 0x80,  /* at least one response went out */
};

struct http_conn {
    ioloop_conn_t *conn;
    struct http_loop *hl;
    struct http_conn *prev, *next;        /* hl->conns */
    struct http_conn *tq_prev, *tq_next;  /* in tq, if any */
    struct http_tq *tq;
    uint64_t deadline_ms;
    ioloop_http_request_t *cur;           /* being read */
    ioloop_http_request_t *first, *last;  /* read, not yet answered, in order */
    const char *data_end;                 /* end of the bytes being parsed */
    const char *scan;                     /* framing checked up to here (in those bytes) */
    struct ioloop__http_framing framing;
    http_parser parser;
    uint32_t head_bytes;                  /* of the head being read so far */
    uint16_t inflight;                    /* requests in the FIFO */
    uint16_t flags;                       /* C_* */
    int error;                            /* what a parser callback failed with: a status
                                             (400, 413, 431, 505) or -ENOMEM */
};

/* ioloop_http_request.state */
enum {
    R_FREE,    /* in the cache: ending calls return -EALREADY */
    R_READING, /* being parsed (http_conn.cur) */
    R_ACTIVE,  /* the handler has it; not ended */
    R_DONE,    /* ended: the rest of its response waits in `out` for its turn */
};

/* ioloop_http_request.flags */
enum {
    F_HEAD = 0x001,      /* a HEAD request: the response has no body */
    F_CLOSE = 0x002,     /* the connection closes after this response */
    F_KEEPALIVE = 0x004, /* an HTTP/1.0 client asked for keep-alive: say yes */
    F_CONTINUE = 0x008,  /* "100 Continue" is owed once the earlier responses went out */
    F_STARTED = 0x010,   /* the response head is written (write_head) */
    F_RAW = 0x020,       /* streamed without chunk framing (Content-Length, or HTTP/1.0) */
    F_ORPHAN = 0x040,    /* the connection went away: in hl->orphans */
    F_NOBODY = 0x080,    /* streamed with a status that has no body (204, 304) */
    H_LENGTH = 0x100,    /* the application added Content-Length */
    H_DATE = 0x200,      /* ... Date */
    H_SERVER = 0x400,    /* ... Server */
    H_CONNECTION = 0x800, /* ... Connection */
    H_TE = 0x1000,       /* ... Transfer-Encoding */
};

struct ioloop_http_request {
    struct http_conn *hc;         /* NULL once the connection is gone */
    struct http_loop *hl;
    ioloop_http_request_t *next;  /* the FIFO, the cache or the orphans */
    ioloop_http_request_t *prev;  /* the orphans */
    struct ioloop__http_msg msg;
    struct http_buf hdrs;         /* the application's response fields, "Name: value\r\n" */
    struct http_buf out;          /* response bytes waiting for their turn */
    const char *method;
    uint16_t flags;               /* F_*, H_* */
    uint8_t state;                /* R_* */
    uint8_t minor;                /* HTTP/1.minor */
};

/* Work posted to one loop by run_in_loops() (server.c). */
struct loop_task {
    struct http_loop *hl;
    void (*fn)(struct http_loop *hl);
};

struct ioloop_http_server {
    ioloop_server_t *server;
    ioloop_pool_t *pool;
    ioloop_http_handler_fn handler;
    void *user;
    size_t max_header_bytes;
    size_t max_body_bytes;
    size_t max_output;              /* the connections' output limit */
    int nloops;
    struct http_loop *loops;        /* one per pool loop, by index */
    struct ioloop_pool_user pool_user;
    atomic_bool detached;           /* the pool was freed first */
    atomic_bool draining;
    struct loop_task *tasks;        /* one per loop, for run_in_loops() */
    pthread_mutex_t lock;           /* with cond: run_in_loops() */
    pthread_cond_t cond;
    int tasks_left;                 /* under lock */
};

/* server_conn.c: the connections' handlers. */
extern const ioloop_conn_handlers_t ioloop__http_conn_handlers;
/* server_conn.c: the FIFO's head may have become writable or answered: write what is due,
 * in order, and go on with the connection (close it, resume reading, wait idle). */
void ioloop__http_conn_advance(struct http_conn *hc);
/* server_conn.c: a write failed (-EPIPE): the requests are the connection's no more. */
void ioloop__http_conn_failed(struct http_conn *hc);
/* server_conn.c: a timeout queue's deadline passed for hc (already out of the queue). */
void ioloop__http_conn_expired(struct http_conn *hc, struct http_tq *tq);
/* server_conn.c: a response of hc was made one that closes the connection (F_CLOSE) after
 * the request was read: nothing more is read on it. */
void ioloop__http_conn_stop(struct http_conn *hc);
/* server_conn.c: the server drains: close hc if idle, else make its last request the last. */
void ioloop__http_conn_drain(struct http_conn *hc);
/* server_conn.c: an ended (or never dispatched) request goes back to its loop's cache. */
void ioloop__http_req_release(ioloop_http_request_t *req);
/* server_conn.c: frees a request struct and its buffers. */
void ioloop__http_req_destroy(ioloop_http_request_t *req);

/* response.c: writes the response bytes in iov for req — to the connection if req heads the
 * FIFO and nothing of it waits, else into req->out. With `bounded`, -ENOBUFS instead of
 * buffering beyond the output limit. Returns 0, -EPIPE, -ENOBUFS, -ENOMEM. */
int ioloop__http_emit(ioloop_http_request_t *req, const struct iovec *iov, int iovcnt,
                      bool bounded);
/* response.c: ends req with a whole response (as ioloop_http_respond()); also the server's
 * own error responses. Returns 0, -EPIPE (req released), -ENOMEM (not ended). */
int ioloop__http_answer(ioloop_http_request_t *req, int status, const void *body, size_t len);

/* server.c: timeout queues. */
void ioloop__http_tq_add(struct http_tq *tq, struct http_conn *hc);
void ioloop__http_tq_remove(struct http_conn *hc);

#endif /* IOLOOP_LIB_HTTP_SERVER_H */
