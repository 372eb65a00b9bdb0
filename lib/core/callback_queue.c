/*
 * The callback queue: how other threads talk to a loop.
 *
 * Producers append {fn, arg} to an array under a spinlock; the loop swaps the whole array for
 * its spare one under the same lock and runs the callbacks outside it, so the critical section
 * is a few stores on either side. Arrays only grow, and they grow outside the lock: a producer
 * that finds the array full allocates a bigger one unlocked, then installs it if nobody swapped
 * or grew the array meanwhile. In the steady state nothing is allocated at all.
 *
 * Wakeups are rare. A producer writes the eventfd only when the loop may be about to sleep:
 * wake_pending is false only between the loop's last look at the queue before epoll_wait
 * (ioloop__cbq_prepare_wait, under the lock) and the first write. While the loop is awake it
 * keeps wake_pending true, since it looks at the queue again before it sleeps; so a loop kept
 * busy by its producers is never written to at all, and a burst into a sleeping loop costs one
 * write. Posts from the loop thread itself need no write either.
 *
 * The lock also orders posting against stopping: once a stop was requested, posts fail with
 * -ESHUTDOWN, so the loop can drain a queue that no longer grows before start() returns.
 *
 * Beside the array sits a list of nodes that the library's own producers embed in their
 * structs (the work pool's completion inbox): posting one allocates nothing and ignores the
 * stop state, for a producer that must not fail, nor lose what it posts, after the loop was
 * stopped. The loop takes the list together with the array and runs the nodes after it.
 *
 * A producer's eventfd write happens after it released the lock, when its callback may already
 * have run and the application may be tearing the loop down. `waking` counts producers between
 * deciding to write and finishing the write; ioloop_free() waits for it to reach zero.
 */
#include "core/loop.h"

#include <errno.h>
#include <sched.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/spinlock.h"

/* Where the queue sits in the loop (see struct ioloop_cbq): the lock starts a cache line that
 * ends before the loop's own part of the queue, and the timers end on an earlier line. */
_Static_assert(alignof(struct ioloop) >= IOLOOP__CACHE_LINE,
               "offsets within the loop are offsets within its cache lines");
_Static_assert(offsetof(struct ioloop, cbq.lock) % IOLOOP__CACHE_LINE == 0,
               "the producers' lock starts a cache line");
_Static_assert((offsetof(struct ioloop, timers) + sizeof(struct ioloop_timers) - 1) /
                       IOLOOP__CACHE_LINE <
                   offsetof(struct ioloop, cbq.lock) / IOLOOP__CACHE_LINE,
               "the timers end on a cache line before the producers' lock");
_Static_assert(offsetof(struct ioloop, cbq.spare) % IOLOOP__CACHE_LINE == 0 &&
                   offsetof(struct ioloop, cbq.spare) / IOLOOP__CACHE_LINE >
                       offsetof(struct ioloop, cbq.efd) / IOLOOP__CACHE_LINE,
               "the loop's part of the queue starts after the producers' lines");

#define ITEMS_MIN 64

static void on_eventfd(ioloop_t *loop, int fd, int events, void *arg)
{
    uint64_t count;

    /* Clears the level-triggered readiness; the swap in ioloop__cbq_run() does the rest. */
    (void)read(fd, &count, sizeof count);
    loop->cbq.due = true;
}

int ioloop__cbq_init(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;

    q->nodes_tail = &q->nodes;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0)
        return -errno;
    return ioloop__handler_add(loop, q->efd, IOLOOP_READ | IOLOOP__HANDLER_INTERNAL,
                               on_eventfd, NULL);
}

void ioloop__cbq_fini(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;

    while (atomic_load_explicit(&q->waking, memory_order_acquire) > 0)
        sched_yield();
    /* Nodes still queued are dropped unseen: they belong to their posters. */
    q->nodes = NULL;
    if (q->efd >= 0)
        close(q->efd);
    free(q->items);
    free(q->spare);
}

/* Writes the eventfd for a producer that set wake_pending and counted itself in `waking`. */
static void wake(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;
    uint64_t one = 1;

    while (write(q->efd, &one, sizeof one) < 0)
        if (errno != EINTR)
            abort(); /* EAGAIN would need 2^64 - 1 unread wakeups: the loop is corrupt */
    atomic_fetch_add_explicit(&loop->stats.wakeups, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&q->waking, 1, memory_order_release);
}

/* Under the lock: whether this post or stop must write the eventfd, and if so claims it. */
static bool claim_wakeup(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;

    if (q->wake_pending || ioloop_current() == loop)
        return false;
    q->wake_pending = true;
    atomic_fetch_add_explicit(&q->waking, 1, memory_order_relaxed);
    return true;
}

/* Called with the lock held and the array full: grows it with the lock released. Returns with
 * the lock held again, or -ENOMEM with it released. */
static int grow_unlocked(struct ioloop_cbq *q)
{
    struct ioloop_cbq_item *seen = q->items, *bigger;
    size_t cap = q->cap, new_cap = cap ? cap * 2 : ITEMS_MIN;

    ioloop__spin_unlock(&q->lock);
    bigger = malloc(new_cap * sizeof *bigger);
    if (bigger == NULL)
        return -ENOMEM;
    ioloop__spin_lock(&q->lock);
    if (q->items == seen && q->cap == cap) {
        size_t len = atomic_load_explicit(&q->len, memory_order_relaxed);

        if (len > 0)
            memcpy(bigger, q->items, len * sizeof *bigger);
        q->items = bigger;
        q->cap = new_cap;
        bigger = seen;
    }
    /* Otherwise the loop swapped or another producer grew it: retry with what is there now. */
    ioloop__spin_unlock(&q->lock);
    free(bigger);
    ioloop__spin_lock(&q->lock);
    return 0;
}

int ioloop_add_callback(ioloop_t *loop, ioloop_callback_fn fn, void *arg)
{
    struct ioloop_cbq *q;
    size_t len;
    bool must_wake;

    if (loop == NULL || fn == NULL)
        return -EINVAL;
    q = &loop->cbq;
    ioloop__spin_lock(&q->lock);
    for (;;) {
        if (atomic_load_explicit(&q->state, memory_order_relaxed) != IOLOOP__CBQ_OPEN) {
            ioloop__spin_unlock(&q->lock);
            return -ESHUTDOWN;
        }
        len = atomic_load_explicit(&q->len, memory_order_relaxed);
        if (len < q->cap)
            break;
        if (grow_unlocked(q) < 0)
            return -ENOMEM;
    }
    q->items[len] = (struct ioloop_cbq_item){fn, arg};
    atomic_store_explicit(&q->len, len + 1, memory_order_relaxed);
    must_wake = claim_wakeup(loop);
    ioloop__spin_unlock(&q->lock);

    if (must_wake)
        wake(loop);
    return 0;
}

void ioloop__cbq_post_node(ioloop_t *loop, struct ioloop_cbq_node *node)
{
    struct ioloop_cbq *q = &loop->cbq;
    bool must_wake;

    node->next = NULL;
    ioloop__spin_lock(&q->lock);
    *q->nodes_tail = node;
    q->nodes_tail = &node->next;
    atomic_store_explicit(&q->nnodes, atomic_load_explicit(&q->nnodes, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    must_wake = claim_wakeup(loop);
    ioloop__spin_unlock(&q->lock);

    if (must_wake)
        wake(loop);
}

bool ioloop__cbq_cancel_node(ioloop_t *loop, struct ioloop_cbq_node *node)
{
    struct ioloop_cbq *q = &loop->cbq;
    struct ioloop_cbq_node **link;
    bool found = false;

    ioloop__spin_lock(&q->lock);
    /* The list holds one node per producer object at most: a walk is short. */
    for (link = &q->nodes; *link != NULL; link = &(*link)->next) {
        if (*link != node)
            continue;
        *link = node->next;
        if (q->nodes_tail == &node->next)
            q->nodes_tail = link;
        atomic_store_explicit(&q->nnodes,
                              atomic_load_explicit(&q->nnodes, memory_order_relaxed) - 1,
                              memory_order_relaxed);
        found = true;
        break;
    }
    ioloop__spin_unlock(&q->lock);
    return found;
}

bool ioloop__cbq_accepting(const ioloop_t *loop)
{
    return atomic_load_explicit(&loop->cbq.state, memory_order_relaxed) == IOLOOP__CBQ_OPEN;
}

void ioloop__cbq_request_stop(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;
    bool must_wake = false;

    ioloop__spin_lock(&q->lock);
    if (atomic_load_explicit(&q->state, memory_order_relaxed) != IOLOOP__CBQ_STOP_REQUESTED) {
        atomic_store_explicit(&q->state, IOLOOP__CBQ_STOP_REQUESTED, memory_order_relaxed);
        must_wake = claim_wakeup(loop);
    }
    ioloop__spin_unlock(&q->lock);

    if (must_wake)
        wake(loop);
}

/* Runs the callbacks queued so far, and the nodes too if `with_nodes`. */
static size_t run_queued(ioloop_t *loop, bool with_nodes)
{
    struct ioloop_cbq *q = &loop->cbq;
    struct ioloop_cbq_item *batch;
    struct ioloop_cbq_node *nodes = NULL;
    size_t n, nnodes = 0, cap;

    /* Posts from other threads always come with an eventfd wakeup (due), or were seen by
     * prepare_wait under the lock; this thread's own posts are visible to it. Nothing else
     * can be waiting, so skip the lock. */
    if (!q->due && atomic_load_explicit(&q->len, memory_order_relaxed) == 0 &&
        atomic_load_explicit(&q->nnodes, memory_order_relaxed) == 0)
        return 0;
    q->due = false;

    ioloop__spin_lock(&q->lock);
    batch = q->items;
    cap = q->cap;
    n = atomic_load_explicit(&q->len, memory_order_relaxed);
    q->items = q->spare;
    q->cap = q->spare_cap;
    atomic_store_explicit(&q->len, 0, memory_order_relaxed);
    if (with_nodes) {
        nodes = q->nodes;
        nnodes = atomic_load_explicit(&q->nnodes, memory_order_relaxed);
        q->nodes = NULL;
        q->nodes_tail = &q->nodes;
        atomic_store_explicit(&q->nnodes, 0, memory_order_relaxed);
    }
    q->wake_pending = true; /* awake: prepare_wait looks at the queue before any sleep */
    ioloop__spin_unlock(&q->lock);

    q->spare = batch;
    q->spare_cap = cap;
    for (size_t i = 0; i < n; i++) {
        batch[i].fn(loop, batch[i].arg);
        ioloop__stat_add(&loop->stats.callbacks_run, 1);
    }
    while (nodes != NULL) {
        struct ioloop_cbq_node *node = nodes;

        nodes = node->next; /* read first: the callback may post its node again */
        node->fn(loop, node->arg);
        ioloop__stat_add(&loop->stats.callbacks_run, 1);
    }
    return n + nnodes;
}

size_t ioloop__cbq_run(ioloop_t *loop)
{
    return run_queued(loop, true);
}

bool ioloop__cbq_prepare_wait(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;
    bool busy;

    /* A queue seen non-empty is work: no need for the lock to decide not to sleep. */
    if (atomic_load_explicit(&q->len, memory_order_relaxed) > 0 ||
        atomic_load_explicit(&q->nnodes, memory_order_relaxed) > 0)
        return true;
    ioloop__spin_lock(&q->lock);
    busy = atomic_load_explicit(&q->len, memory_order_relaxed) > 0 ||
           atomic_load_explicit(&q->nnodes, memory_order_relaxed) > 0 ||
           atomic_load_explicit(&q->state, memory_order_relaxed) != IOLOOP__CBQ_OPEN;
    if (!busy)
        q->wake_pending = false; /* from here on, the next post writes the eventfd */
    ioloop__spin_unlock(&q->lock);
    return busy;
}

void ioloop__cbq_begin(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;

    q->due = true; /* the first drain locks: posts made before start may be from anywhere */
    ioloop__spin_lock(&q->lock);
    if (atomic_load_explicit(&q->state, memory_order_relaxed) == IOLOOP__CBQ_STOPPED)
        atomic_store_explicit(&q->state, IOLOOP__CBQ_OPEN, memory_order_relaxed);
    ioloop__spin_unlock(&q->lock);
}

bool ioloop__cbq_stop_requested(const ioloop_t *loop)
{
    return atomic_load_explicit(&loop->cbq.state, memory_order_relaxed) ==
           IOLOOP__CBQ_STOP_REQUESTED;
}

size_t ioloop__cbq_drain(ioloop_t *loop)
{
    /* Lock (due) even if len reads 0: a post from another thread may not be visible to a
     * relaxed read without it. Nodes stay queued: they are accepted after a stop too, so
     * running them here could keep start() from returning for as long as they come. */
    loop->cbq.due = true;
    return run_queued(loop, false);
}

void ioloop__cbq_end(ioloop_t *loop)
{
    struct ioloop_cbq *q = &loop->cbq;

    ioloop__spin_lock(&q->lock);
    atomic_store_explicit(&q->state, IOLOOP__CBQ_STOPPED, memory_order_relaxed);
    ioloop__spin_unlock(&q->lock);
}
