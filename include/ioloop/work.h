/*
 * The work pool: threads that run blocking or CPU-heavy functions for the loops, so that a loop
 * never blocks. Work is submitted from any thread on behalf of a loop; the function runs on a
 * pool thread and its completion (`done`) runs afterwards in that loop's thread. One pool may
 * serve any number of loops, and a loop may use any number of pools.
 *
 * Guarantees:
 * - Every accepted submission (a positive id returned) gets exactly one `done`, in its loop's
 *   thread: with 0 after the work ran, or -ECANCELED if it was cancelled before it started
 *   (by ioloop_work_cancel(), ioloop_work_pool_free() or ioloop_free() of its loop). A
 *   submission that returned an error gets no `done` and its work never runs.
 * - A `done` never runs on a freed loop: ioloop_free() of a loop with work outstanding cancels
 *   what has not started, waits for what is running, and runs every remaining `done` itself,
 *   in the freeing thread, before the loop goes.
 * - When a loop has been stopped, completions wait for its next ioloop_start() (they run
 *   before it first waits), or are delivered by ioloop_free().
 * - Completions travel in batches: a burst of completed work costs one wakeup of the loop and
 *   a few callbacks (stats.callbacks_run), not one per item.
 */
#ifndef IOLOOP_WORK_H
#define IOLOOP_WORK_H

#include <stdint.h>

#include <ioloop/export.h>
#include <ioloop/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A pool of worker threads. Opaque; created by ioloop_work_pool_new(), released by
 * ioloop_work_pool_free(). */
typedef struct ioloop_work_pool ioloop_work_pool_t;

/** The work itself: runs on a pool thread, with every signal blocked. It may block. */
typedef void (*ioloop_work_fn)(void *arg);

/** A completion: runs in `loop`'s thread after the work ran (`err` 0) or was cancelled before
 * it started (`err` -ECANCELED). It may call any loop function, submit more work or cancel
 * other work. */
typedef void (*ioloop_work_done_fn)(ioloop_t *loop, int err, void *arg);

/** A snapshot of a pool's counters, as filled in by ioloop_work_pool_get_stats(). */
typedef struct ioloop_work_stats {
    uint64_t threads;   /**< worker threads */
    uint64_t queued;    /**< accepted and not yet taken by a worker */
    uint64_t running;   /**< taken by a worker and not yet handed to its loop: the one it
                             runs and the rest of the batch it took with it (see
                             ioloop_work_submit()) */
    uint64_t submitted; /**< submissions accepted so far */
    uint64_t completed; /**< submissions whose `done` ran or is due: ran or cancelled */
    uint64_t cancelled; /**< of those, the ones cancelled before they started */
} ioloop_work_stats_t;

/**
 * Creates a pool and starts `nthreads` worker threads (<= 0: one per online CPU), named
 * "ioloop-work", each blocking every signal.
 * Returns the pool, or NULL with errno set (ENOMEM; EAGAIN when a thread cannot be created).
 * Any thread; the caller owns the pool and frees it with ioloop_work_pool_free().
 */
IOLOOP_EXPORT ioloop_work_pool_t *ioloop_work_pool_new(int nthreads);

/**
 * Queues `work(arg)` to run on a pool thread, then `done(loop, 0, arg)` in `loop`'s thread.
 * Work is taken in submission order (FIFO); with one thread it runs in that order, and so do
 * the dones of work submitted from one thread. With more threads work runs in parallel. A
 * worker takes a batch of queued items at a time and hands their completions to their loops
 * together once the batch is done: at most 32 items, about its share of the queue, and only
 * as many as it ran in about 50 us last time, so long work goes one item at a time.
 * Returns a work id (positive, never reused by this pool, for ioloop_work_cancel()), or
 * -EINVAL (NULL pool, loop, work or done), -ESHUTDOWN (the pool is being freed; or
 * ioloop_stop() was called on `loop` and it was not started again, as for
 * ioloop_add_callback(); or `loop` is being freed), -ENOMEM.
 * On success `arg` is lent to the pool until `done` runs; on error nothing runs and it stays
 * the caller's. [any thread], `loop` must be alive (not freed, and not being freed by another
 * thread).
 */
IOLOOP_EXPORT int64_t ioloop_work_submit(ioloop_work_pool_t *pool, ioloop_t *loop,
                                         ioloop_work_fn work, ioloop_work_done_fn done,
                                         void *arg);

/**
 * Cancels work that has not started: it never runs, and `done(loop, -ECANCELED, arg)` follows
 * in its loop's thread (never inside this call). Work that a worker took in its batch but has
 * not begun counts as not started.
 * Returns 0, or -EBUSY (the work is running: its done follows with 0), -ENOENT (it finished
 * or was cancelled already, or no such id), -EINVAL (NULL pool, work_id <= 0).
 * [any thread]
 */
IOLOOP_EXPORT int ioloop_work_cancel(ioloop_work_pool_t *pool, int64_t work_id);

/**
 * Copies the pool's counters into *out. Returns 0, or -EINVAL (NULL pool or out).
 * [any thread], while the pool exists (also while ioloop_work_pool_free() runs).
 */
IOLOOP_EXPORT int ioloop_work_pool_get_stats(ioloop_work_pool_t *pool, ioloop_work_stats_t *out);

/**
 * Frees the pool. From the start of the call, submissions fail with -ESHUTDOWN; queued work
 * (and work taken in a batch but not begun) is cancelled; work already running is waited for;
 * then the threads are joined and the pool is freed. Every done still due runs later in its
 * loop's thread as usual (-ECANCELED for the cancelled work, 0 for work that ran), also after
 * this returns: they touch nothing of the pool. Calling it from a loop thread is fine (it never
 * waits for a loop), even from a done. NULL is fine.
 * Any thread, once; other threads may still submit (-ESHUTDOWN), cancel or read the stats
 * while it runs, never after it returned. Never from a work function of this pool (it would
 * wait for itself: the process aborts with a message).
 */
IOLOOP_EXPORT void ioloop_work_pool_free(ioloop_work_pool_t *pool);

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_WORK_H */
