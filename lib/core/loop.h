/*
 * The loop's internals, shared by the files that make up one loop: loop.c (epoll set, handler
 * table, iteration, start/stop), timer.c, callback_queue.c and signal.c. Nothing here is public.
 */
#ifndef IOLOOP_LIB_LOOP_H
#define IOLOOP_LIB_LOOP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

#include <ioloop/loop.h>

#include "core/callback_queue.h"
#include "core/signals.h"
#include "core/timer.h"

/* Marks a handler the loop registered for itself (eventfd, timerfd, signalfd): it is not
 * counted in stats.handlers and the application cannot update or remove it. */
#define IOLOOP__HANDLER_INTERNAL 0x100u

/* What the kernel holds for a slot, and what changed this iteration (ioloop_handler.state). */
enum {
    IOLOOP__IN_EPOLL = 0x1, /* the epoll set has (some file, fd) with this slot's gen */
    IOLOOP__REMOVED = 0x2,  /* removed this iteration: events already collected are stale */
    IOLOOP__QUEUED = 0x4,   /* listed in loop->changes, for the flush before the next wait */
    IOLOOP__PAUSED = 0x8,   /* ioloop_pause_handler(): registered, but no events delivered */
};

/* One slot of the handler table, indexed by fd. */
struct ioloop_handler {
    ioloop_handler_fn fn;   /* NULL while the fd is not registered */
    void *arg;
    uint16_t events;        /* IOLOOP_READ | IOLOOP_WRITE, plus IOLOOP__HANDLER_INTERNAL */
    uint16_t state;         /* IOLOOP__IN_EPOLL | _REMOVED | _QUEUED | _PAUSED */
    uint32_t gen;           /* bumped by every EPOLL_CTL_ADD; travels in epoll_data */
};

/* Deferred work: a node embedded in the caller's struct, run by the loop once the current fd
 * handler returned, or after the current batch of timers or of queued callbacks (and before
 * start() returns). Deferring cannot fail and allocates nothing; the connection layer uses it
 * to flush gathered output and to run on_close outside any other call. */
struct ioloop_deferred {
    struct ioloop_deferred *next;
    void (*fn)(ioloop_t *loop, struct ioloop_deferred *node);
};

/* An object that belongs to the loop and must end with it (the connection table, a resolver
 * channel): ioloop_free() calls `cancel`, which ends the object's work (callbacks get
 * -ECANCELED) and disowns it. Nodes are embedded in the owner's struct. */
struct ioloop_owned {
    struct ioloop_owned *prev, *next;
    void (*cancel)(ioloop_t *loop, struct ioloop_owned *node);
};

/* Loop uids: every loop gets one, unique among the last 2^22 - 1 loops the process created,
 * never 0. Connection ids carry their loop's uid (lib/net/conns.h). */
#define IOLOOP__UID_BITS 22
#define IOLOOP__UID_MAX ((1u << IOLOOP__UID_BITS) - 1)

/* The loop's connections (lib/net/conns.c), lookups (lib/net/resolve.c) and HTTP fetches
 * (lib/http/client.c); core only keeps the pointers. */
struct ioloop_conns;
struct ioloop_resolver;
struct http_client;
/* The work pools' completion inbox (lib/core/work.c); core only keeps the pointer. */
struct ioloop_work_inbox;

#define ioloop__container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Counters behind ioloop_get_stats(). Written by the loop thread only (wakeups excepted) and
 * read from any thread, hence relaxed atomics. */
struct ioloop_counters {
    _Atomic uint64_t iterations;
    _Atomic uint64_t io_events;
    _Atomic uint64_t callbacks_run;
    _Atomic uint64_t timers_fired;
    _Atomic uint64_t handlers;
    _Atomic uint64_t timers_pending;
    _Atomic uint64_t wakeups;   /* written by posting threads: atomic increments */
    _Atomic uint64_t max_lag_us;
    _Atomic uint64_t epoll_rebuilds;
};

struct ioloop {
    int epfd;
    struct ioloop_handler *handlers;  /* the handler table, indexed by fd */
    int nhandlers;                    /* its length; it only grows */
    int *changes;                     /* fds removed this iteration, their EPOLL_CTL_DEL due */
    int nchanges;
    int changes_cap;                  /* room for every slot IN_EPOLL: removing never allocates */
    int in_epoll;                     /* slots IN_EPOLL */
    bool rebuild;                     /* an event came from a registration nobody owns */
    struct epoll_event *events;       /* one batch from epoll_wait */
    int nevents;

    uint64_t now_us;                  /* CLOCK_MONOTONIC, read once per iteration */
    _Atomic int running;              /* nonzero while ioloop_start() runs (see loop.c) */
    _Atomic uintptr_t owner;          /* the thread that runs, ran or created the loop */

    struct ioloop_timers timers;
    struct ioloop_cbq cbq;
    struct ioloop_signals *signals;   /* created by the first ioloop_add_signal() */
    struct ioloop_deferred *deferred; /* FIFO of deferred work: head ... */
    struct ioloop_deferred **deferred_tail; /* ... and where the next node goes */

    uint32_t uid;                     /* see IOLOOP__UID_BITS */
    struct ioloop_owned owned;        /* list head: what ioloop_free() must cancel */
    /* The connection table, created by the loop's first connection; other threads read it
     * (ioloop_server_send), hence atomic. */
    struct ioloop_conns *_Atomic conns;
    _Atomic(void *) data;             /* ioloop_set_data() */
    struct ioloop_resolver *resolver; /* made by the loop's first ioloop_resolve() */
    struct http_client *http_client;  /* lib/http/client.c: made by the first fetch */
    /* Where work pools leave completed work (lib/core/work.c): created by the first
     * submission for this loop, from any thread, hence atomic. */
    struct ioloop_work_inbox *_Atomic work_inbox;

    struct ioloop_counters stats;
};

/* Registers fd in the table and the epoll set; `events` may carry IOLOOP__HANDLER_INTERNAL.
 * Returns 0 or a negative errno (-EBADF, -EEXIST, -EPERM, -ENOMEM). */
int ioloop__handler_add(ioloop_t *loop, int fd, uint32_t events, ioloop_handler_fn fn,
                        void *arg);
/* Sets the events watched for a registered fd; 0 keeps it registered but silent (errors and
 * hangups still arrive as IOLOOP_ERROR). Returns 0 or a negative errno. */
int ioloop__handler_set(ioloop_t *loop, int fd, uint32_t events);
/* Unregisters an fd registered with ioloop__handler_add(): at once for its callback, before the
 * next epoll_wait for the epoll set (so that a re-registration in between costs one MOD). */
void ioloop__handler_del(ioloop_t *loop, int fd);
/* The same, but the epoll set forgets the fd now: for an fd about to be closed while other
 * threads may be opening fds (a listener's), whose number must not be used after the close. */
void ioloop__handler_del_now(ioloop_t *loop, int fd);
/* The same for an fd the caller closes right away, before the loop waits again (a
 * connection's): closing the fd's only reference drops it from the epoll set, so no
 * EPOLL_CTL_DEL is made. (Had the application dup'ed it, the registration would outlive the
 * fd as an orphan, which the loop drops by rebuilding its set, as for any orphan.) */
void ioloop__handler_forget(ioloop_t *loop, int fd);

/* Queues `node` to run after the current handler or batch (see above). Loop thread; never
 * fails. */
void ioloop__defer(ioloop_t *loop, struct ioloop_deferred *node);
/* Runs deferred work until none is left (what it defers runs too). Loop thread. */
void ioloop__run_deferred_all(ioloop_t *loop);

/* Adds `node` to the objects ioloop_free() cancels, or takes it off. Loop thread. */
void ioloop__own(ioloop_t *loop, struct ioloop_owned *node);
void ioloop__disown(struct ioloop_owned *node);

/* Reserves n consecutive loop uids and returns the first (a pool's loops get consecutive
 * uids, so a connection id finds its loop in the pool by subtraction). Any thread. */
uint32_t ioloop__uid_reserve(unsigned n);
/* How many loops this process has made and not freed (any thread; ioloop_prefork() asks). */
unsigned ioloop__live_loops(void);
/* ioloop_new() with a reserved uid. */
ioloop_t *ioloop__new_with_uid(uint32_t uid);

/* 0 if the calling thread may use the loop's thread-only functions now, else -EPERM. */
int ioloop__check_thread(const ioloop_t *loop);

/* After ioloop_stop() (ioloop_add_callback() said -ESHUTDOWN): waits until the start it ends,
 * if one runs, has returned, so that the calling thread may act for the loop. Short: the
 * loop finishes one iteration and its queued callbacks. Any thread. */
void ioloop__wait_stopped(const ioloop_t *loop);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t ioloop__clock_ns(void);

/* Adds n to a counter that only the loop thread writes. */
static inline void ioloop__stat_add(_Atomic uint64_t *counter, uint64_t n)
{
    uint64_t v = atomic_load_explicit(counter, memory_order_relaxed);

    atomic_store_explicit(counter, v + n, memory_order_relaxed);
}

#endif /* IOLOOP_LIB_LOOP_H */
