/*
 * A pool of loops, each run by a thread of its own: the workers a server hands connections to.
 */
#ifndef IOLOOP_POOL_H
#define IOLOOP_POOL_H

#include <ioloop/export.h>
#include <ioloop/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A pool of running loops. Opaque; created by ioloop_pool_new(), released by ioloop_pool_free(). */
typedef struct ioloop_pool ioloop_pool_t;

/**
 * Creates `nloops` loops and starts a thread running each (nloops <= 0: one per online CPU).
 * The threads block every signal, so process-directed signals go to a signalfd or to threads
 * that want them. When it returns, every loop is running: from then on the loops belong to
 * their threads, and other threads reach them with ioloop_add_callback().
 * Returns the pool, or NULL with errno set (ENOMEM, EMFILE, EAGAIN for threads).
 * Any thread; that thread owns the pool.
 */
IOLOOP_EXPORT ioloop_pool_t *ioloop_pool_new(int nloops);

/** Returns the number of loops, or -EINVAL for NULL. [any thread] */
IOLOOP_EXPORT int ioloop_pool_size(const ioloop_pool_t *pool);

/**
 * Returns loop `index` (0 <= index < size), or NULL with errno = EINVAL for a NULL pool or an
 * index out of range. The pool keeps ownership. [any thread]
 */
IOLOOP_EXPORT ioloop_t *ioloop_pool_loop(ioloop_pool_t *pool, int index);

/**
 * Returns the next loop in round-robin order (an atomic counter), or NULL with errno = EINVAL
 * for a NULL pool. [any thread]
 */
IOLOOP_EXPORT ioloop_t *ioloop_pool_next(ioloop_pool_t *pool);

/**
 * Stops every loop (each runs the callbacks already accepted first), joins the threads and
 * frees the loops and the pool. Free servers that use the pool before it. NULL is fine.
 * The owning thread; not from one of the pool's own loops (it would join itself).
 */
IOLOOP_EXPORT void ioloop_pool_free(ioloop_pool_t *pool);

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_POOL_H */
