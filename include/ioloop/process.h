/*
 * Processes: ioloop_prefork() forks worker processes and turns the calling process into their
 * supervisor (libtnet's prefork, tornado's fork_processes). Each worker builds its own loops,
 * pools and servers after the fork -- typically a server with `reuseport` on the shared
 * address, so that the kernel spreads connections over the workers -- and the supervisor
 * restarts the ones that crash, forwards the signals that stop them, and replaces them one at
 * a time on SIGHUP without leaving the port unserved.
 */
#ifndef IOLOOP_PROCESS_H
#define IOLOOP_PROCESS_H

#include <stdint.h>

#include <ioloop/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Options of ioloop_prefork(). A field left zero takes its default. */
typedef struct ioloop_prefork_options {
    unsigned max_restarts;     /**< restarts of crashed workers allowed per index within any
                                    60 s; the next crash of that index gives it up. Default 10.
                                    With the backoff no more than 16 restarts fit in 60 s, so
                                    a value above 16 means restarting for ever. */
    uint64_t drain_timeout_ms; /**< how long workers get to exit after the supervisor forwarded
                                    SIGTERM or SIGINT before it SIGKILLs those left; also how
                                    long a worker replaced by a rolling restart gets after its
                                    SIGTERM. Default 10000 */
    uint64_t settle_ms;        /**< rolling restart: how long a replacement runs beside the
                                    worker it replaces before that one gets SIGTERM (time for
                                    the replacement to start listening). Default 1000 */
} ioloop_prefork_options_t;

/**
 * Forks `nworkers` worker processes and supervises them.
 *
 * Who calls it: the main thread, first, before creating loops, pools, servers or threads
 * (an epoll set created before the fork would be shared by every worker, and threads would
 * leave their locks held in the children). The logger may be open: its thread is the one
 * other thread allowed, and each worker's first line starts a logger thread of the worker's
 * own that appends to the same file (see log.h, "fork()").
 *
 * In a worker it returns 0 with *worker set to the worker's index, 0 ... nworkers - 1. The
 * worker inherits the caller's state as it was when ioloop_prefork() was called: its signal
 * mask and the dispositions of SIGCHLD, SIGTERM, SIGINT and SIGHUP (the supervisor changes
 * them for itself only), every fd the caller had open (none of the supervisor's own: its
 * loop is released in the child), standard output and error, and an empty signal registry,
 * so that the worker may ioloop_add_signal() any signal, SIGTERM first of all. The worker
 * also gets SIGTERM if the supervisor dies (PR_SET_PDEATHSIG), so no worker outlives it
 * unsupervised. Before each fork, stdio buffers are flushed (fflush(NULL)) so that no line is
 * written twice.
 *
 * In the calling process, which becomes the supervisor, it returns only at the end: 1, with
 * *worker = -1, once every worker has exited and none is to be restarted. Meanwhile it runs a
 * small loop of its own on a signalfd (SIGCHLD, SIGTERM, SIGINT, SIGHUP) and timers, and never
 * forks from inside a loop callback. Each event is logged as one line (IOLOOP_LOG_INFO; a
 * worker given up, IOLOOP_LOG_ERROR):
 *
 * - A worker that exits with status 0 is done: it is not restarted.
 * - A worker that exits with another status or is killed by a signal is restarted with the
 *   same index after a backoff: 100 ms for its index's first restart within the last 60 s,
 *   doubling with each further one (200, 400, ... ms), at most 5000 ms. When the index has
 *   already been restarted max_restarts times within the last 60 s, its next crash gives the
 *   index up (logged as an error) and it is not started again. A fork that fails (any but
 *   the very first, which makes the call fail) counts as a crash of its index.
 * - SIGTERM or SIGINT: the supervisor stops restarting anything, ends a rolling restart in
 *   progress, and sends the same signal to every worker (a worker being replaced included).
 *   Draining is the worker's job: it handles the signal, drains its servers and exits. Workers
 *   still running drain_timeout_ms later get SIGKILL; they are not restarted. A second
 *   SIGTERM or SIGINT is forwarded too, without moving the deadline. (At a terminal, Ctrl-C
 *   sends SIGINT to the workers directly as well.)
 * - SIGHUP: a rolling restart. For each index in turn that has a running worker: a
 *   replacement with that index is started; settle_ms after its fork the old worker gets SIGTERM
 *   (SIGKILL if it is still running drain_timeout_ms after that); once it exited, the next
 *   index follows. Workers on a shared reuseport address thus keep the port served
 *   throughout. A worker replaced this way is never restarted, whatever its exit status. If
 *   the replacement is no longer running when the settle time ends (it crashed), the old
 *   worker stays in service, the replacement's restart is cancelled, and the rolling restart
 *   ends there (logged as a warning). A SIGHUP during a rolling restart starts another one
 *   once the current one has finished; one during a SIGTERM/SIGINT shutdown is ignored.
 *   Indices that exited with 0 or were given up are not started again.
 * - Children are reaped by pid: children the caller forked before the call are left alone.
 *
 * Signals of those four kinds that reach the supervisor while it runs (or were pending when
 * it was called) are its own: before it
 * returns, it puts back the caller's signal mask and dispositions and releases every fd and
 * byte it used. If the caller ignored SIGHUP (nohup) or SIGCHLD, the supervisor still acts on
 * them while it runs.
 *
 * Under ThreadSanitizer, whose runtime starts threads of its own, a thread that keeps the
 * process's name and blocks every signal is taken for one of them and not counted.
 *
 * Returns 0 in a worker, 1 in the supervisor at the end, or, before any fork, a negative
 * errno: -EINVAL (nworkers < 1 or NULL worker), -EBUSY (the process runs threads other than
 * the calling one and the logger's, or has a loop that is not freed: an epoll set made before
 * the fork would be shared by every worker), -EAGAIN or -ENOMEM (the first fork failed; a later
 * failing fork is retried like a crash), -EMFILE / -ENOMEM (the supervisor's loop could not
 * be set up), or the error of reading /proc/self/task (-ENOENT without /proc). On error no
 * process was created and nothing changed.
 */
IOLOOP_EXPORT int ioloop_prefork(int nworkers, const ioloop_prefork_options_t *options,
                                 int *worker);

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_PROCESS_H */
