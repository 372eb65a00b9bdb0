/*
 * Connections' internals, shared with the server (lib/net/server.c) and the connection table
 * (lib/net/conns.c).
 */
#ifndef IOLOOP_LIB_CONN_H
#define IOLOOP_LIB_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include <ioloop/server.h>

#include "core/loop.h"
#include "net/buffer.h"

/*
 * What connections of one kind share: a server's accepted connections point at the server's
 * class, an outgoing connection (or one given limits of its own) at a private copy. The hooks
 * are the owner's (muduo's close callback): conn.c knows nothing of servers.
 */
struct ioloop_conn_class {
    ioloop_conn_handlers_t handlers;
    void *user;
    size_t max_input;
    size_t max_output;
    void *owner;                            /* the server, for ids looked up by other threads */
    void (*opened)(ioloop_conn_t *conn);    /* on_open is about to run */
    /* The connection stops being open: closing, or failed; `opened` says whether on_open ran
     * (a connection refused before it, e.g. for a bad PROXY header, never opens). */
    void (*closing)(ioloop_conn_t *conn, bool opened);
    void (*gone)(const struct ioloop_conn_class *cls); /* the connection's end is complete */
};

enum ioloop_conn_state {
    IOLOOP__CONN_OPEN,    /* reading and writing (maybe still connecting, or after EOF) */
    IOLOOP__CONN_CLOSING, /* closed by the application or by EOF: flushing what is pending */
    IOLOOP__CONN_LINGER,  /* shut down for writing: discarding input until EOF or deadline */
    IOLOOP__CONN_DEAD,    /* out of the handler table; on_close and the free are deferred */
};

/* 88 bytes: with the handler-table and connection-table slots, an idle connection costs
 * about 150 bytes of memory. Fields are ordered so that there is no padding. */
struct ioloop_conn {
    ioloop_t *loop;
    struct ioloop_conn_class *cls; /* shared ones are never written through it */
    void *data;                   /* the application's */
    struct ioloop_buf *in;        /* unconsumed input; NULL when none */
    struct ioloop_buf *out;       /* output not yet handed to the kernel; NULL when none */
    struct ioloop_deferred work;  /* flush, redeliver, reap: see `todo` */
    int64_t timer;                /* the idle timer, then the linger deadline; 0: none */
    uint32_t slot;                /* in the connection table; the id is read from there */
    int fd;
    uint32_t idle_ms;             /* 0: no idle timeout */
    uint32_t active_ms;           /* the loop's time of the last progress, rounded up */
    int16_t err;                  /* what on_close will report (errnos fit in 16 bits) */
    uint16_t flags;               /* F_* in conn.c */
    uint8_t state;                /* enum ioloop_conn_state */
    uint8_t todo;                 /* deferred work queued (T_* in conn.c) */
    uint8_t events;               /* what the handler watches now (IOLOOP_READ/WRITE) */
};

/* How a connection begins (ioloop__conn_open). */
enum ioloop_conn_start {
    IOLOOP__CONN_ACCEPTED,   /* open at once: on_open runs inside ioloop__conn_open() */
    IOLOOP__CONN_PROXIED,    /* a PROXY protocol header comes first; on_open once it came */
    IOLOOP__CONN_CONNECTING, /* connect() in progress; on_open once it completed */
    IOLOOP__CONN_RESOLVING,  /* no socket yet (fd is -1): its owner connects it later */
};

/* Loop thread: a connection for a socket, registered in the loop (for RESOLVING, fd is -1 and
 * nothing is registered). Returns the connection, or NULL with errno (ENOMEM, EMFILE, or what
 * registering fd failed with), in which case nothing ran and the caller still owns fd and
 * cls. `cls` must outlive the connection; an outgoing connection's (CONNECTING, RESOLVING) is
 * its own from then on, freed with it. */
ioloop_conn_t *ioloop__conn_open(ioloop_t *loop, int fd, struct ioloop_conn_class *cls,
                                 enum ioloop_conn_start start);
/* Loop thread: closes the connection at once with `err`; on_close follows (deferred). */
void ioloop__conn_abort(ioloop_conn_t *conn, int err);

/* Loop thread, for a connection still connecting: gives it fd, registered to wait for the
 * connect to complete (0, or a negative errno and fd is still the caller's); takes its fd
 * away and closes it. */
int ioloop__conn_attach(ioloop_conn_t *conn, int fd);
void ioloop__conn_detach(ioloop_conn_t *conn);

/* lib/net/connect.c, for a connection to a host name (RESOLVING): the connect to its
 * current address failed with err, so try the next one, or end with err when none is left;
 * it connected or ended, so the lookup and its addresses go. */
void ioloop__connect_next(ioloop_conn_t *conn, int err);
void ioloop__connect_done(ioloop_conn_t *conn);

#endif /* IOLOOP_LIB_CONN_H */
