/*
 * Shared by the connection tests of part two (test_write.c, test_limits.c, test_close.c):
 * a recorder that the connection callbacks fill in (counters, an ordered event log, the bytes
 * consumed, return codes the test's callbacks report), a server on a one-loop pool and a
 * client loop run by a thread of its own, plain blocking peer sockets, and a byte pattern
 * that does not repeat with a short period so that a byte out of place is noticed.
 *
 * Every wait is bounded by TEST_WAIT_MS (helpers.h); a wait that runs out fails the test.
 */
#ifndef IOLOOP_TEST_CONN_HELPERS_H
#define IOLOOP_TEST_CONN_HELPERS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ioloop.h>

#include "helpers.h"

/* Socket buffer sizes that keep a write pending: set on the peer's receive side and on the
 * connection's send side (setting them also turns off the kernel's autotuning, which would
 * otherwise swallow megabytes). */
#define TC_SMALL_BUF (16 * 1024)
/* A write that cannot complete at once when both buffers are small. */
#define TC_BIG (1024u * 1024)
/* Room in the recorder's event log and presentation record. */
#define TC_LOG_MAX 256
#define TC_SHOWN_MAX 8

/* ---- The byte pattern ------------------------------------------------------------------- */

unsigned char tc_pattern_byte(size_t i);
/* Fills buf with the pattern's bytes [offset, offset + len). */
void tc_pattern_fill(char *buf, size_t offset, size_t len);
/* A malloc'ed copy of the pattern's first len bytes. */
char *tc_pattern_new(size_t len);
/* The index of the first byte of buf that is not the pattern's [offset, ...), or len. */
size_t tc_pattern_mismatch(const char *buf, size_t offset, size_t len);

/* ---- Plain peer sockets ----------------------------------------------------------------- */

/* A blocking TCP socket connected to 127.0.0.1:port; rcvbuf > 0 sets SO_RCVBUF before the
 * connect. Sends time out after TEST_WAIT_MS (so a peer that never reads fails the test). */
int tc_connect(int port, int rcvbuf);
/* A listening TCP socket on 127.0.0.1, ephemeral port; rcvbuf > 0 is inherited by accepted
 * sockets. */
int tc_listen(int *port, int rcvbuf);
/* Accepts one connection (blocking socket) within TEST_WAIT_MS. */
int tc_accept(int lfd);
void tc_set_nonblocking(int fd);
/* Reads len bytes and checks them against the pattern at offset (fails the test with the
 * offset of the first wrong byte). */
void tc_read_pattern(int fd, size_t offset, size_t len);
/* Waits for the end of the stream: 0 for EOF, -errno (-ECONNRESET) for an error; bytes
 * arriving instead fail the test. */
int tc_read_eof(int fd);
/* Closes with SO_LINGER {1, 0}: the peer gets a reset. */
void tc_reset(int fd);
/* Sends len bytes of the pattern at offset on a non-blocking copy of the socket, tolerating
 * the peer going away; returns the bytes sent. */
size_t tc_send_pattern_lossy(int fd, size_t offset, size_t len);

/* ---- Running code in a loop's thread ---------------------------------------------------- */

/* Runs fn(arg) in the loop's thread (through ioloop_add_callback) and waits for it. */
void tc_run_in_loop(ioloop_t *loop, void (*fn)(void *arg), void *arg);
/* Two round trips through the loop: every flush and callback due from what ran before in the
 * loop has happened when it returns. */
void tc_settle(ioloop_t *loop);

/* ---- The recorder ----------------------------------------------------------------------- */

/* What a connection's callbacks record; everything under lock. */
struct tc_rec {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t owner;            /* the test thread (ioloop_free() runs callbacks there) */
    ioloop_t *loop;             /* the loop the connection lives in */
    ioloop_conn_t *conn;        /* the connection while open (NULL once on_close ran) */
    uint64_t id;                /* its id */
    int opens, datas, eofs, drains, closes, flushes;
    int close_err;
    int flush_err[10];          /* by tag, what each on_flushed callback got */
    size_t flush_pending[10];   /* ioloop_conn_pending() when it ran */
    int depth;                  /* callbacks in progress */
    int nested;                 /* callbacks that ran inside another one */
    int in_call;                /* > 0 while a test's loop function runs (see tc_flushed) */
    int flushed_in_call;        /* on_flushed callbacks that ran inside such a function */
    int outside_loop;           /* callbacks that did not run in the loop's thread */
    int outside_owner;          /* ... and not in the owner's thread either */
    int data_after_eof;
    int after_close;            /* callbacks after on_close */
    uint64_t open_us, eof_us, close_us;
    char log[TC_LOG_MAX + 1];   /* 'O' open, 'D' data, 'E' eof, 'W' drain, 'C' close,
                                   '0'..'9' on_flushed by tag */
    size_t nlog;
    size_t max_len;             /* the largest len on_data was given */
    size_t shown[TC_SHOWN_MAX]; /* the len and bytes of the first on_data calls */
    char *shown_data[TC_SHOWN_MAX];
    int nshown;
    char *in;                   /* every byte on_data consumed, in order */
    size_t in_len, in_cap;
    int rc[32];                 /* return codes a test's callbacks report */
    size_t val[16];             /* sizes a test's callbacks report */
    void *test;                 /* the test's own state */
};

void tc_rec_init(struct tc_rec *r, ioloop_t *loop);
void tc_rec_destroy(struct tc_rec *r);
/* Waits until *field >= target with no callback in progress; returns whether it did. */
bool tc_wait(struct tc_rec *r, const int *field, int target);
bool tc_wait_size(struct tc_rec *r, const size_t *field, size_t target);
int tc_get(struct tc_rec *r, const int *field);
size_t tc_get_size(struct tc_rec *r, const size_t *field);
void tc_lock(struct tc_rec *r);
void tc_unlock(struct tc_rec *r);

/* Every callback starts with tc_enter() and ends with tc_leave(). */
struct tc_rec *tc_enter(ioloop_conn_t *conn);
void tc_leave(struct tc_rec *r);
/* Notes an event ('O', 'D', 'E', 'W', 'C') and its bookkeeping. */
void tc_event(struct tc_rec *r, ioloop_conn_t *conn, char ev, int err, size_t len);
/* Keeps a copy of what on_data was shown, and appends the consumed bytes to in. */
void tc_show(struct tc_rec *r, const char *data, size_t len);
void tc_keep(struct tc_rec *r, const char *data, size_t len);
/* Marks the span of a test's loop function (for tc_flushed's check). */
void tc_call_begin(struct tc_rec *r);
void tc_call_end(struct tc_rec *r);

/* The plain callbacks: record; on_data consumes everything. */
void tc_on_open(ioloop_conn_t *conn);
size_t tc_on_data(ioloop_conn_t *conn, const char *data, size_t len);
void tc_on_eof(ioloop_conn_t *conn);
void tc_on_drain(ioloop_conn_t *conn);
void tc_on_close(ioloop_conn_t *conn, int err);
/* on_open that also shrinks the socket's send buffer to TC_SMALL_BUF, so that with a peer
 * whose receive buffer is small too a TC_BIG write stays mostly pending. */
void tc_on_open_small_sndbuf(ioloop_conn_t *conn);
/* An on_flushed callback; arg is the tag 0..9 (cast from uintptr_t). */
void tc_flushed(ioloop_conn_t *conn, int err, void *arg);
#define TC_TAG(n) ((void *)(uintptr_t)(n))

/* ---- A server on a one-loop pool -------------------------------------------------------- */

struct tc_server {
    int fds;                    /* the fd count before tc_server_open() */
    ioloop_pool_t *pool;
    ioloop_t *loop;             /* the pool's loop: every accepted connection lives there */
    ioloop_server_t *server;
    int port;
};

/* Starts a server on 127.0.0.1:0 whose connections record into r (r->loop is set). */
void tc_server_open(struct tc_server *sv, struct tc_rec *r, const ioloop_conn_handlers_t *h);
/* Frees the server and the pool, then checks the fd count. */
void tc_server_close(struct tc_server *sv);
/* A client of the server (tc_connect()); waits until r saw one more open. */
int tc_server_client(struct tc_server *sv, struct tc_rec *r, int rcvbuf);

/* ---- A client loop in a thread of its own ----------------------------------------------- */

struct tc_client {
    int fds;
    ioloop_t *loop;
    test_loop_thread_t thread;
};

void tc_client_open(struct tc_client *c);
/* Stops the loop, joins its thread, frees it (ioloop_free() in the calling thread). */
void tc_client_close(struct tc_client *c);

/* Runs only the tests matching $TEST_FILTER (a cmocka pattern, "*" wildcards), if set. */
void tc_apply_filter(void);

#endif /* IOLOOP_TEST_CONN_HELPERS_H */
