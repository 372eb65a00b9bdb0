/*
 * The acceptor: a listening socket and the thread that accepts on it (running a loop of its
 * own), handing every new connection to a callback.
 */
#ifndef IOLOOP_LIB_ACCEPTOR_H
#define IOLOOP_LIB_ACCEPTOR_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <ioloop/loop.h>

#include "net/address.h"

struct ioloop_acceptor {
    int fd;                     /* the listening socket */
    int reserve_fd;             /* kept open to be given up when accept runs out of fds */
    bool tcp;
    char *unix_path;            /* the socket file we bound, to remove at close, or NULL */
    ioloop_t *loop;             /* the acceptor thread's loop */
    pthread_t thread;
    bool started;
    uint64_t shed;              /* connections shed since the last warning */
    uint64_t next_warning_ms;   /* warnings are rate-limited to one a second */
    /* In the acceptor thread, for each batch of accepted connections; owns the fds. */
    void (*on_accept)(const int *fds, int n, void *arg);
    void *arg;
};

/* Creates, binds and listens. Returns 0 or a negative errno (nothing left open). */
int ioloop__acceptor_listen(struct ioloop_acceptor *a, const struct ioloop_address *addr);
/* Starts the acceptor thread. Returns 0 or a negative errno. */
int ioloop__acceptor_start(struct ioloop_acceptor *a);
/* Stops and joins the thread (if started), closes the sockets and removes the socket file. */
void ioloop__acceptor_close(struct ioloop_acceptor *a);

#endif /* IOLOOP_LIB_ACCEPTOR_H */
