/*
 * The queue other threads post callbacks into: a spinlock-protected array that the loop swaps
 * out whole, plus the eventfd that wakes the loop. It also carries the loop's stop state, so
 * that "stop" and "post" are ordered by the same lock.
 */
#ifndef IOLOOP_LIB_CALLBACK_QUEUE_H
#define IOLOOP_LIB_CALLBACK_QUEUE_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <ioloop/loop.h>

struct ioloop_cbq_item {
    ioloop_callback_fn fn;
    void *arg;
};

/* A callback embedded in the poster's own struct (the work pool's per-loop inbox): posting it
 * allocates nothing, so it cannot fail, and it is accepted whatever the stop state. It runs
 * like a posted callback (counted in stats.callbacks_run) after the array's callbacks of the
 * same batch, but not in the drain that follows a stop: see ioloop__cbq_post_node(). A node
 * is posted at most once at a time: the poster knows whether it is queued. */
struct ioloop_cbq_node {
    struct ioloop_cbq_node *next;
    ioloop_callback_fn fn;
    void *arg;
};

enum ioloop_cbq_state {
    IOLOOP__CBQ_OPEN,           /* posts accepted */
    IOLOOP__CBQ_STOP_REQUESTED, /* ioloop_stop() called; the start it ends has not returned */
    IOLOOP__CBQ_STOPPED,        /* a start returned because of a stop; closed until restart */
};

/* The cache line size: the producers' fields and the loop's own are kept this far apart. */
#define IOLOOP__CACHE_LINE 64

struct ioloop_cbq {
    /* Shared with posting threads, on cache lines of their own: nothing the loop writes every
     * iteration (the timers before the queue in struct ioloop) bounces the line of the lock. */
    alignas(IOLOOP__CACHE_LINE) atomic_int lock;
    _Atomic int state;             /* enum ioloop_cbq_state; written under the lock */
    _Atomic size_t len;            /* queued callbacks; written under the lock */
    bool wake_pending;             /* no post needs to write the eventfd: one is outstanding,
                                    * or the loop is awake; under the lock */
    struct ioloop_cbq_item *items; /* producers append here, under the lock */
    size_t cap;
    _Atomic int waking;            /* threads between deciding to wake and their write */
    int efd;
    struct ioloop_cbq_node *nodes; /* posted nodes, FIFO: head ... */
    struct ioloop_cbq_node **nodes_tail; /* ... and where the next goes; under the lock */
    _Atomic size_t nnodes;         /* how many; written under the lock */
    /* The loop thread's own, off the producers' lines, so that draining does not bounce them.
     * (The loop is allocated with its alignment: see ioloop_new().) */
    alignas(IOLOOP__CACHE_LINE) struct ioloop_cbq_item *spare; /* the loop's array, swapped
                                                                * with items by each drain */
    size_t spare_cap;
    bool due;                      /* the eventfd fired this iteration */
};

int ioloop__cbq_init(ioloop_t *loop);
void ioloop__cbq_fini(ioloop_t *loop);

/* Runs the callbacks queued so far (not those they post); returns how many ran. */
size_t ioloop__cbq_run(ioloop_t *loop);
/* After a stop: runs the callbacks queued so far, certain to see every post that happened
 * before it (it always locks). Nodes stay queued for the next start (see the node above). */
size_t ioloop__cbq_drain(ioloop_t *loop);
/* Called right before the loop may block in epoll_wait: true if callbacks are queued or a stop
 * was requested, so it must not block; otherwise the next post from another thread will write
 * the eventfd. */
bool ioloop__cbq_prepare_wait(ioloop_t *loop);
/* Queues `node` (see struct ioloop_cbq_node) and wakes the loop like ioloop_add_callback(),
 * but ignores the stop state. A node still queued when the start that a stop ends leaves its
 * last iteration runs when the loop is started again, or never if it is freed first (the
 * poster must then see to it). Never fails. Any thread. */
void ioloop__cbq_post_node(ioloop_t *loop, struct ioloop_cbq_node *node);
/* Takes `node` off the queue if it is queued there; returns whether it was. Any thread. */
bool ioloop__cbq_cancel_node(ioloop_t *loop, struct ioloop_cbq_node *node);
/* Whether ioloop_add_callback() would accept a post now: false from ioloop_stop() until the
 * loop is started again. A moment old when read from another thread. Any thread. */
bool ioloop__cbq_accepting(const ioloop_t *loop);
/* ioloop_stop(): closes posting (-ESHUTDOWN) and wakes the loop. Any thread. */
void ioloop__cbq_request_stop(ioloop_t *loop);
/* start() calls these: reopen the queue if a stop was consumed; did a stop arrive; the stop
 * is honoured (the queue was drained): posting stays closed until the next start. */
void ioloop__cbq_begin(ioloop_t *loop);
bool ioloop__cbq_stop_requested(const ioloop_t *loop);
void ioloop__cbq_end(ioloop_t *loop);

#endif /* IOLOOP_LIB_CALLBACK_QUEUE_H */
