/*
 * Connections' internals, shared with the server (lib/server.c).
 */
#ifndef IOLOOP_LIB_CONN_H
#define IOLOOP_LIB_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include <uthash.h>

#include <ioloop/server.h>

#include "net/buffer.h"
#include "core/loop.h"

enum ioloop_conn_state {
    IOLOOP__CONN_CONNECTING, /* connect() in progress; writes are buffered */
    IOLOOP__CONN_OPEN,
    IOLOOP__CONN_CLOSING,    /* no more reading; flushing, then shutdown and close */
    IOLOOP__CONN_DEAD,       /* unregistered; on_close and the free are deferred */
};

struct ioloop_conn {
    ioloop_t *loop;
    int fd;
    uint64_t id;
    enum ioloop_conn_state state;
    int err;                            /* what on_close will report */
    uint32_t events;                    /* what the handler watches now (IOLOOP_*) */
    bool registered;                    /* in the loop's handler table */
    bool paused;
    bool close_when_open;               /* ioloop_conn_close() while connecting */
    bool redeliver_queued;
    ioloop_conn_handlers_t handlers;
    void *user;
    void *data;
    struct ioloop_buffer in;
    struct ioloop_buffer out;
    uint64_t idle_us;                   /* 0: no idle timeout */
    uint64_t last_active_us;            /* the loop's time of the last read or write progress */
    int64_t idle_timer;
    struct ioloop_deferred reap;        /* on_close, close(fd), free */
    struct ioloop_deferred redeliver;   /* present buffered input again after a resume */
    struct ioloop_server *server;       /* NULL for ioloop_connect()'s connections */
    UT_hash_handle hh;                  /* in the server's registry, by id */
};

/* Allocates a connection for a connected socket; nothing is registered yet, so any thread may
 * call it. `id_tag` goes in the id's low 16 bits (the loop index for a server's connections).
 * Returns NULL with errno = ENOMEM. */
ioloop_conn_t *ioloop__conn_new(ioloop_t *loop, int fd, const ioloop_conn_handlers_t *handlers,
                                void *user, unsigned id_tag);
/* Loop thread: registers the connection and runs on_open. Returns 0 or a negative errno, in
 * which case nothing ran and the caller still owns conn and fd. */
int ioloop__conn_open(ioloop_conn_t *conn);
/* Frees a connection that was never opened (the fd stays the caller's). */
void ioloop__conn_discard(ioloop_conn_t *conn);
/* Loop thread: closes the connection at once with `err`; on_close follows (deferred). */
void ioloop__conn_abort(ioloop_conn_t *conn, int err);

#endif /* IOLOOP_LIB_CONN_H */
