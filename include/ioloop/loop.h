/*
 * The event loop: one epoll set per loop, an fd-indexed handler table, timers on one timerfd,
 * a callback queue other threads post into (woken through an eventfd), and signals through a
 * signalfd. Each loop is driven by exactly one thread, the one that calls ioloop_start().
 *
 * Conventions (they hold for every function here):
 * - Functions that can fail return 0 (or the documented non-negative value) on success and a
 *   negative errno on failure; a NULL loop or a NULL callback where one is required is -EINVAL.
 *   When a call returns an error, nothing changed and its callback never runs.
 * - Functions marked [any thread] may be called from any thread at any time. All others belong
 *   to the loop's thread: the thread running ioloop_start(), or, while the loop is not running,
 *   the thread that owns it (typically the one that created it). Called from another thread
 *   while the loop runs they return -EPERM and change nothing.
 * - Callbacks run in the loop's thread and may call any function of this header.
 */
#ifndef IOLOOP_LOOP_H
#define IOLOOP_LOOP_H

#include <stdint.h>

#include <ioloop/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An event loop. Opaque; created by ioloop_new(), released by ioloop_free(). */
typedef struct ioloop ioloop_t;

/** Event bits, requested in `events` masks and delivered to handlers. */
enum {
    IOLOOP_READ  = 0x1, /**< readable; a peer shutdown (EPOLLRDHUP) is also reported as READ */
    IOLOOP_WRITE = 0x4, /**< writable */
    IOLOOP_ERROR = 0x8, /**< delivered only, never requested: EPOLLERR or EPOLLHUP. It comes
                             together with the READ/WRITE bits the handler asked for, so a handler
                             that reads or writes discovers the error from that call. */
};

/** An fd handler: `events` is the set of IOLOOP_* bits that are ready. */
typedef void (*ioloop_handler_fn)(ioloop_t *loop, int fd, int events, void *arg);
/** A timer or posted callback. */
typedef void (*ioloop_callback_fn)(ioloop_t *loop, void *arg);
/** A signal handler: `signo` is the signal that arrived. */
typedef void (*ioloop_signal_fn)(ioloop_t *loop, int signo, void *arg);

/* ---- Life cycle ------------------------------------------------------------------------- */

/**
 * Creates a loop: an epoll set, an eventfd and a timerfd (all close-on-exec).
 * Returns the loop, or NULL with errno set (ENOMEM, EMFILE, ...).
 * Any thread; the calling thread owns the loop until a thread starts it.
 */
IOLOOP_EXPORT ioloop_t *ioloop_new(void);

/**
 * Releases the loop's fds and memory. Every connection still open on the loop (accepted by a
 * server or made by ioloop_connect()) is closed first: its pending ioloop_conn_on_flushed()
 * callbacks and then its on_close run with -ECANCELED, in the calling thread, and its fd and
 * memory are released. Lookups (ioloop_resolve()) whose answer is due get it; those still in
 * flight get -ECANCELED, in the calling thread. Handlers, timers and signal handlers still
 * registered are then dropped without running (signals the loop blocked are unblocked again
 * in the calling thread, as ioloop_remove_signal() does); callbacks still queued (posted to a
 * loop that was not started again) are dropped without running. The fds the application
 * registered are not closed: they remain the application's. NULL is fine.
 * Loop thread, and never while ioloop_start() runs: doing so is a fatal programming error
 * (the process aborts with a message). No other thread may use the loop during or after this.
 */
IOLOOP_EXPORT void ioloop_free(ioloop_t *loop);

/**
 * Runs the loop in the calling thread until ioloop_stop() ends this run. Callbacks queued
 * before the call run first, before the loop waits. Each iteration waits for events, then runs
 * the ready fd handlers, then the due timers, then the callbacks queued so far.
 * Returns 0 when stopped, -EINVAL for a NULL loop, -EBUSY if the loop is already running
 * (a re-entrant call from one of its own callbacks, or a second thread). A stopped loop can be
 * started again, from any thread, which then becomes the loop's thread.
 * When it returns 0, every callback accepted by ioloop_add_callback() has run.
 */
IOLOOP_EXPORT int ioloop_start(ioloop_t *loop);

/**
 * Ends one ioloop_start(): the running one (it returns after finishing its current iteration
 * and running every callback already accepted), or, when the loop is not running, the next
 * one, which then runs the queued callbacks and returns at once. From this call until the loop
 * is started again, ioloop_add_callback() returns -ESHUTDOWN. Idempotent: calling it again
 * before the start it ends has returned changes nothing. NULL is ignored.
 * [any thread]. Not async-signal-safe: to stop on a signal, use ioloop_add_signal().
 */
IOLOOP_EXPORT void ioloop_stop(ioloop_t *loop);

/* ---- Fd handlers ------------------------------------------------------------------------ */

/**
 * Watches `fd` for `events` (IOLOOP_READ and/or IOLOOP_WRITE), level-triggered, and calls
 * `fn(loop, fd, ready, arg)` while the fd is ready. The fd stays the caller's: the loop never
 * closes it. Remove the handler before closing the fd.
 * Returns 0, or -EINVAL (NULL loop or fn, a mask without READ or WRITE or with other bits),
 * -EBADF (negative or closed fd), -EEXIST (fd already registered in this loop),
 * -EPERM (an fd epoll refuses, such as a regular file; or wrong thread), -ENOMEM.
 * Loop thread.
 */
IOLOOP_EXPORT int ioloop_add_handler(ioloop_t *loop, int fd, int events, ioloop_handler_fn fn,
                                     void *arg);

/**
 * Changes the events watched for a registered fd (same mask rules as ioloop_add_handler()).
 * Events of the old mask already collected in the current batch are not delivered if the new
 * mask excludes them. Returns 0, -EINVAL, -ENOENT (fd not registered), -EPERM (wrong thread).
 * Loop thread.
 */
IOLOOP_EXPORT int ioloop_update_handler(ioloop_t *loop, int fd, int events);

/**
 * Unregisters fd. Once it returns, that registration's callback is never called again: not for
 * events already collected in the current batch, and not if the fd number is reused and
 * registered again within that batch. May be called from any handler, its own included.
 * Does not close the fd. Returns 0, -EINVAL, -ENOENT (fd not registered, negative included),
 * -EPERM (wrong thread). Loop thread.
 *
 * The epoll set itself is updated just before the loop next waits, so an fd removed and
 * registered again within one iteration costs one epoll_ctl (MOD) instead of two (DEL, ADD).
 * Closing the fd right after removing it is fine: the late DEL then fails harmlessly, or, if
 * another thread reused the number meanwhile, misses (epoll keys on the file, not the number;
 * ThreadSanitizer may still report the reuse as a race). If a duplicate of the fd (dup(),
 * fork()) keeps the file open, epoll keeps reporting it; the loop notices the event nobody owns
 * and rebuilds its epoll set once (stats.epoll_rebuilds).
 */
IOLOOP_EXPORT int ioloop_remove_handler(ioloop_t *loop, int fd);

/**
 * Stops delivering fd's events to its handler, keeping the registration (fn, arg, mask):
 * libev's ev_io_stop() on a watcher that will start again on the same fd. Events already
 * collected in the current batch are not delivered while it is paused. The fd must stay open
 * and name the same file until ioloop_resume_handler() or ioloop_remove_handler(); to close
 * it, remove the handler first (that is what remove_handler is for).
 *
 * Pausing makes no system call, and neither does resuming a handler whose fd stayed quiet:
 * the registration stays in the epoll set until an event finds the handler paused, which
 * takes it out (one EPOLL_CTL_DEL, so a level-triggered event such as a hang-up cannot wake
 * the loop again); the resume then adds it back (one EPOLL_CTL_ADD). ioloop_update_handler()
 * works on a paused handler; the mask applies from the resume. Pausing a paused handler and
 * resuming one that is not paused do nothing and return 0.
 *
 * Returns 0, -EINVAL (NULL loop), -ENOENT (fd not registered), -EPERM (wrong thread); resume
 * can also fail with epoll_ctl's errno (the fd was closed: -EBADF), and the handler then
 * stays paused. Loop thread.
 */
IOLOOP_EXPORT int ioloop_pause_handler(ioloop_t *loop, int fd);
/** Delivers fd's events to its handler again; see ioloop_pause_handler(). Loop thread. */
IOLOOP_EXPORT int ioloop_resume_handler(ioloop_t *loop, int fd);

/* ---- Timers ----------------------------------------------------------------------------- */

/**
 * Calls `fn(loop, arg)` once, no earlier than `delay_ms` milliseconds after this call
 * (CLOCK_MONOTONIC, read at the call, microsecond resolution). Delay 0 runs on the next
 * iteration; a timer scheduled from a timer callback never runs in the same batch. Timers with
 * equal deadlines run in the order they were scheduled. Delays too large to represent are
 * clamped to about 285 years.
 * Returns the timer id (positive, never reused by this loop), or -EINVAL (NULL loop or fn),
 * -ENOMEM, -EPERM (wrong thread). Loop thread.
 */
IOLOOP_EXPORT int64_t ioloop_run_after(ioloop_t *loop, uint64_t delay_ms, ioloop_callback_fn fn,
                                       void *arg);

/**
 * Calls `fn(loop, arg)` every `interval_ms` milliseconds at a fixed rate: the first deadline is
 * one interval after this call, each next deadline the previous one plus the interval. Ticks
 * missed while the loop was busy are skipped, not run in a burst. The callback may cancel its
 * own timer. Returns the timer id, or -EINVAL (NULL loop or fn, interval_ms == 0), -ENOMEM,
 * -EPERM (wrong thread). Loop thread.
 */
IOLOOP_EXPORT int64_t ioloop_run_every(ioloop_t *loop, uint64_t interval_ms,
                                       ioloop_callback_fn fn, void *arg);

/**
 * Cancels a timer so that its callback never runs again, even when it was already due in the
 * batch being run. Returns 0, or -ENOENT (unknown id, a one-shot timer that already fired or is
 * running, or one already cancelled), -EINVAL (NULL loop), -EPERM (wrong thread). Loop thread.
 */
IOLOOP_EXPORT int ioloop_cancel_timer(ioloop_t *loop, int64_t timer_id);

/* ---- Cross-thread callbacks ------------------------------------------------------------- */

/**
 * Queues `fn(loop, arg)` to run in the loop's thread, and wakes the loop if no wakeup is
 * pending already. Callbacks from one thread run in the order they were posted. A callback
 * posted from a callback runs on the next iteration. Posting to a loop that has not started
 * yet is fine: the callback runs when it starts.
 * Returns 0 (the callback will run: `arg` is the loop's until then), -EINVAL (NULL loop or fn),
 * -ESHUTDOWN (ioloop_stop() was called and the loop has not been started again), -ENOMEM.
 * On error the callback never runs and `arg` stays the caller's.
 * [any thread]; never blocks on the loop (a short spinlock, a yield if it is contended).
 */
IOLOOP_EXPORT int ioloop_add_callback(ioloop_t *loop, ioloop_callback_fn fn, void *arg);

/* ---- Signals ---------------------------------------------------------------------------- */

/**
 * Delivers `signo` to `fn(loop, signo, arg)` in the loop's thread through a signalfd. Blocks
 * the signal in the calling thread; threads ioloop creates block every signal. For a
 * process-directed signal (kill, Ctrl-C) to reach the loop, every other thread must block it
 * too: call this (or block the signal) before creating threads, which then inherit the mask.
 * Returns 0, or -EINVAL (NULL loop or fn, signo out of range, SIGKILL or SIGSTOP),
 * -EEXIST (the signal already has a handler in any loop of the process), -EPERM (wrong thread),
 * -EMFILE / -ENOMEM. Loop thread.
 */
IOLOOP_EXPORT int ioloop_add_signal(ioloop_t *loop, int signo, ioloop_signal_fn fn, void *arg);

/**
 * Removes this loop's handler for `signo`, so another loop may take the signal, and restores
 * the calling thread's mask for it to what it was before ioloop_add_signal() blocked it.
 * Returns 0, or -ENOENT (this loop has no handler for signo), -EINVAL, -EPERM (wrong thread).
 * Loop thread.
 */
IOLOOP_EXPORT int ioloop_remove_signal(ioloop_t *loop, int signo);

/* ---- Introspection ---------------------------------------------------------------------- */

/**
 * Returns CLOCK_MONOTONIC in milliseconds as read once per iteration (after the wait), so all
 * callbacks of one batch see the same value. 0 for a NULL loop. Loop thread.
 */
IOLOOP_EXPORT uint64_t ioloop_now_ms(const ioloop_t *loop);

/**
 * Returns 1 if the calling thread is the loop's thread (the one running it, or that last ran
 * it, or that created it if it never ran), else 0 (also for NULL). [any thread]
 */
IOLOOP_EXPORT int ioloop_in_loop_thread(const ioloop_t *loop);

/** Returns the loop whose ioloop_start() the calling thread is inside, or NULL. [any thread] */
IOLOOP_EXPORT ioloop_t *ioloop_current(void);

/**
 * Attaches one pointer to the loop for the application (a per-loop context: a shard of a
 * keyspace, a connection pool); the library never touches it. Loop thread.
 */
IOLOOP_EXPORT void ioloop_set_data(ioloop_t *loop, void *data);

/** Returns what ioloop_set_data() attached, or NULL (also for a NULL loop). [any thread] */
IOLOOP_EXPORT void *ioloop_data(const ioloop_t *loop);

/** Counters of one loop, as filled in by ioloop_get_stats(). */
typedef struct ioloop_stats {
    uint64_t iterations;        /**< loop iterations (waits) so far */
    uint64_t io_events;         /**< events delivered to application handlers */
    uint64_t callbacks_run;     /**< posted callbacks that ran */
    uint64_t timers_fired;      /**< timer callbacks that ran */
    uint64_t handlers;          /**< fds the application has registered now */
    uint64_t timers_pending;    /**< timers scheduled and not yet fired or cancelled */
    uint64_t callbacks_pending; /**< callbacks queued and not yet run */
    uint64_t wakeups;           /**< eventfd writes made by ioloop_add_callback/ioloop_stop */
    uint64_t max_lag_us;        /**< longest time one iteration spent running handlers,
                                     timers and callbacks */
    uint64_t epoll_rebuilds;    /**< times the epoll set was rebuilt to drop an orphaned
                                     registration: an fd removed, then closed while a dup
                                     of it (dup(), fork()) kept the file open */
} ioloop_stats_t;

/**
 * Copies the loop's counters into *out. Figures read from another thread may be a moment old.
 * Does nothing if loop or out is NULL. [any thread]
 */
IOLOOP_EXPORT void ioloop_get_stats(const ioloop_t *loop, ioloop_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_LOOP_H */
