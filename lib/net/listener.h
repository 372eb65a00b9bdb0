/*
 * A listening socket and its accepting, in whichever loop watches it: the acceptor thread's
 * own loop (the default accept mode), or each pool loop in reuseport mode, where every loop
 * has a listener of its own.
 */
#ifndef IOLOOP_LIB_LISTENER_H
#define IOLOOP_LIB_LISTENER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <ioloop/loop.h>

#include "net/address.h"

struct ioloop_listener {
    int fd;                     /* the listening socket, or -1 */
    int reserve_fd;             /* given up when accept runs out of fds */
    bool tcp;
    char *unix_path;            /* the socket file we bound, to remove at close, or NULL */
    ioloop_t *loop;             /* the loop watching fd, or NULL */
    int64_t backoff_timer;      /* accepting paused for lack of fds or memory */
    uint64_t shed;              /* connections shed since the last warning */
    uint64_t next_warning_ms;   /* warnings are rate-limited to one a second */
    /* In the watching loop's thread, for each batch of accepted connections (non-blocking,
     * close-on-exec); owns the fds. */
    void (*on_accept)(struct ioloop_listener *l, const int *fds, int n);
    /* A pending connection was shed for lack of fds. */
    void (*on_shed)(struct ioloop_listener *l);
    void *arg;
};

/* Creates, binds and listens (SO_REUSEADDR, and SO_REUSEPORT if asked; TCP_NODELAY, which
 * accepted sockets inherit). Returns 0 or a negative errno (nothing left open). */
int ioloop__listener_open(struct ioloop_listener *l, const struct ioloop_address *addr,
                          int backlog, bool reuseport);
/* The watching loop's thread: starts / stops accepting in `loop`. */
int ioloop__listener_watch(struct ioloop_listener *l, ioloop_t *loop);
void ioloop__listener_unwatch(struct ioloop_listener *l);
/* The watching loop's thread: accepts what is queued now, so that closing resets no client
 * that already connected. */
void ioloop__listener_sweep(struct ioloop_listener *l);
/* Closes the sockets and removes the socket file; unwatch first. */
void ioloop__listener_close(struct ioloop_listener *l);
/* The bound port, or a negative errno. */
int ioloop__listener_port(const struct ioloop_listener *l);

/* The acceptor thread: a loop of its own watching one listener. */
struct ioloop_acceptor {
    ioloop_t *loop;
    pthread_t thread;
    bool started;
};

/* Starts the thread, watching l. Returns 0 or a negative errno. */
int ioloop__acceptor_start(struct ioloop_acceptor *a, struct ioloop_listener *l);
/* Stops and joins the thread; l is no longer watched (nor swept: see sweep). Idempotent. */
void ioloop__acceptor_stop(struct ioloop_acceptor *a, struct ioloop_listener *l, bool sweep);

#endif /* IOLOOP_LIB_LISTENER_H */
