/*
 * The work pool: worker threads that run functions for the loops, and the way completions go
 * back to each loop.
 *
 * The pool. A mutex guards a FIFO of queued items (doubly linked, so cancel is O(1)) and a
 * slot table that turns work ids into items. A worker takes a batch of items per visit to the
 * lock -- about its share of the queue plus one, at most BATCH_MAX -- runs them, and on its
 * next visit releases the batch's slots and takes the next batch in the same critical section;
 * the batch's completions are handed in with the lock released.
 *
 * Wakeups. At most one sleeping worker is being woken at any time: a submission signals the
 * condition variable only when a worker sleeps and no signal is on its way, and a worker that
 * takes a batch and leaves work queued wakes the next one. So a burst of submissions costs one
 * futex wake while the woken worker gets going (tiny items are then taken 32 at a time, not
 * one per wake), and a backlog still spreads over every thread, one wakeup latency apart. A
 * worker busy with long work never delays a new submission: it is not asleep, so the next
 * sleeper is woken.
 *
 * Ids. A work id is (generation << 32 | slot), as for timers (lib/core/timer.c): cancel finds
 * the item in O(1), and a slot whose generation is spent retires, so ids are never reused. A
 * slot is released when its work finished or was cancelled: from then on cancel says -ENOENT.
 *
 * Item states. QUEUED -> TAKEN (in a worker's batch) -> RUNNING -> DONE, or QUEUED or TAKEN
 * -> CANCELLED. A worker moves its item from TAKEN to RUNNING with a compare-and-swap right
 * before running it, and a canceller moves it from TAKEN to CANCELLED with one (under the pool
 * lock): whoever wins decides whether it runs, so work taken but not begun is still
 * cancellable. The worker hands cancelled items in with its batch.
 *
 * The inbox. Each loop has one inbox, shared by every pool, created by the first submission
 * for the loop (from any thread, with a compare-and-swap on loop->work_inbox). It lists the
 * loop's outstanding items (submitted, not yet handed in) and the finished ones whose dones
 * are due. The first items handed into an inbox whose drain is not already queued post its
 * drain (a callback-queue node embedded in the inbox, which cannot fail and ignores the stop
 * state); the drain takes the whole list and runs the dones, DRAIN_MAX at a time. A burst of
 * completions thus costs one post, and one eventfd write at most.
 *
 * Locks. An inbox's lock comes before a pool's lock: ioloop_free() of a loop holds its inbox
 * while it cancels the loop's items in their pools. Every other path takes one of them at a
 * time: workers, cancel and pool_free hand items in after releasing the pool lock, and submit
 * registers the item in its inbox before it takes the pool lock. An item's pool is alive while
 * the item is outstanding (a pool is freed only after all its items were handed in), and an
 * item is alive while it is outstanding or while its slot holds it under the pool lock (slots
 * are released before the items are handed in, and only the loop frees handed-in items).
 *
 * Freeing a loop. ioloop__work_loop_fini() replaces the loop's inbox pointer by a marker (later
 * submissions: -ESHUTDOWN), marks the inbox closing (nothing posts to the loop any more),
 * cancels the loop's items that have not started, waits until no item is outstanding, and runs
 * every done due, in the calling thread. A worker hands in, and posts, under the inbox lock,
 * and the outstanding count drops in that same critical section: once the freeing thread sees
 * it at zero, no worker touches the loop again.
 */
#include "core/work.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/loop.h"
#include "core/thread.h"

/* Items a worker takes per visit to the pool's lock. Tiny items then pay for the lock (and
 * for moving its cache line) once per 32; a worker still takes no more than its share of the
 * queue plus one, so long items spread over the threads. */
#define BATCH_MAX 32u

/* Dones one run of a loop's drain callback runs before the loop gets back to its I/O: a burst
 * of a million completions must not keep the loop from its sockets for its whole length. */
#define DRAIN_MAX 256u

#define SLOT_NONE UINT32_MAX
#define GEN_LAST INT32_MAX  /* ids stay positive: a slot retires after this generation */
#define SLOTS_MIN 64u

enum {
    WORK_QUEUED,    /* in the pool's queue */
    WORK_TAKEN,     /* in a worker's batch, not begun: still cancellable */
    WORK_RUNNING,
    WORK_DONE,      /* ran: its done (0) is due */
    WORK_CANCELLED, /* never runs: its done (-ECANCELED) is due */
};

/* A node of an intrusive, circular, doubly linked list; a list head is a node of its own. */
struct work_link {
    struct work_link *prev, *next;
};

struct work_item {
    struct work_link queue;      /* the pool's queue, while QUEUED */
    struct work_link pending;    /* its inbox's outstanding items, until handed in */
    struct work_item *next_done; /* finished items, on their way to the loop and in its inbox */
    ioloop_work_fn work;
    ioloop_work_done_fn done;
    void *arg;
    struct ioloop_work_inbox *inbox;
    ioloop_work_pool_t *pool;
    uint32_t slot;
    int err;                     /* for done: written by whoever finished or cancelled it */
    _Atomic int state;           /* WORK_* */
};

struct ioloop_work_inbox {
    pthread_mutex_t lock;
    pthread_cond_t settled;      /* closing, and the last outstanding item was handed in */
    ioloop_t *loop;
    struct work_link pending;    /* outstanding items: submitted, not yet handed in */
    size_t npending;
    struct work_item *done_head; /* handed in, dones due: FIFO */
    struct work_item **done_tail;
    bool posted;                 /* the drain is queued in the loop or running */
    bool closing;                /* the loop is being freed: no more posts */
    struct work_item *ready;     /* the loop thread's: taken by the drain, not yet run */
    struct ioloop_cbq_node node; /* the drain, as posted to the loop */
};

struct work_slot {
    struct work_item *item; /* NULL while free */
    uint32_t gen;           /* the occupant's generation, or (free) the next occupant's */
    uint32_t next_free;     /* the free list, while free */
};

struct work_worker {
    ioloop_work_pool_t *pool;
    pthread_t thread;
    bool started;                      /* the thread exists and must be joined */
    unsigned nbatch;                   /* written under the pool lock */
    struct work_item *batch[BATCH_MAX]; /* taken, not yet released; read by pool_free */
};

struct ioloop_work_pool {
    pthread_mutex_t lock;
    pthread_cond_t work_cond; /* work was queued, or the pool is closing */
    struct work_link queue;
    size_t queued;            /* items in the queue */
    int idle;                 /* workers waiting on work_cond */
    bool signalled;           /* a signal was sent that no worker has woken for yet */
    bool closing;             /* ioloop_work_pool_free() has begun */
    struct work_slot *slots;
    uint32_t nslots;          /* slots ever handed out */
    uint32_t slots_cap;
    uint32_t free_head;       /* first free slot, or SLOT_NONE */
    uint64_t submitted;
    /* Counted once the items are handed in (no lock needed then), so that a reader who sees
     * an item completed knows its done is due in its loop. */
    _Atomic uint64_t running;   /* taken by workers, not yet handed in */
    _Atomic uint64_t completed; /* handed in: ran or cancelled */
    _Atomic uint64_t cancelled; /* handed in with -ECANCELED */
    int nthreads;
    struct work_worker workers[];
};

/* Stands in for the inbox of a loop being freed: submissions for it fail with -ESHUTDOWN. */
static struct ioloop_work_inbox loop_closed;

/* The pool whose worker this thread is, to catch ioloop_work_pool_free() from a work
 * function. */
static _Thread_local ioloop_work_pool_t *current_pool;

/* ---- Lists ------------------------------------------------------------------------------ */

static void link_init(struct work_link *head)
{
    head->prev = head->next = head;
}

static void link_append(struct work_link *head, struct work_link *node)
{
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

static void link_remove(struct work_link *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
}

static bool link_empty(const struct work_link *head)
{
    return head->next == head;
}

/* The pool's and the inboxes' mutexes spin a little before they sleep (glibc's adaptive
 * mutex): their critical sections are a few dozen stores, so a thread that finds one held
 * usually gets it a moment later without the two futex calls a sleep and a wakeup cost. */
static int lock_init(pthread_mutex_t *lock)
{
    pthread_mutexattr_t attr;
    int err;

    if ((err = pthread_mutexattr_init(&attr)) != 0)
        return err;
    err = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
    if (err == 0)
        err = pthread_mutex_init(lock, &attr);
    pthread_mutexattr_destroy(&attr);
    return err;
}

/* ---- Slots (under the pool lock) -------------------------------------------------------- */

static int slots_grow(ioloop_work_pool_t *pool)
{
    uint32_t cap = pool->slots_cap ? pool->slots_cap * 2 : SLOTS_MIN;
    struct work_slot *slots;

    if (pool->slots_cap >= SLOT_NONE / 2)
        return -ENOMEM;
    slots = realloc(pool->slots, (size_t)cap * sizeof *slots);
    if (slots == NULL)
        return -ENOMEM;
    pool->slots = slots;
    pool->slots_cap = cap;
    return 0;
}

/* Gives `item` a slot; returns its id, or -ENOMEM. */
static int64_t slot_take(ioloop_work_pool_t *pool, struct work_item *item)
{
    uint32_t slot;

    if (pool->free_head != SLOT_NONE) {
        slot = pool->free_head;
        pool->free_head = pool->slots[slot].next_free;
    } else {
        if (pool->nslots == pool->slots_cap && slots_grow(pool) < 0)
            return -ENOMEM;
        slot = pool->nslots++;
        pool->slots[slot].gen = 1;
    }
    pool->slots[slot].item = item;
    item->slot = slot;
    return (int64_t)pool->slots[slot].gen << 32 | slot;
}

static void slot_release(ioloop_work_pool_t *pool, uint32_t slot)
{
    struct work_slot *s = &pool->slots[slot];

    s->item = NULL;
    if (s->gen < GEN_LAST) {
        s->gen++;
        s->next_free = pool->free_head;
        pool->free_head = slot;
    }
}

/* ---- The inbox -------------------------------------------------------------------------- */

static void inbox_drain(ioloop_t *loop, void *arg);

static int inbox_new(ioloop_t *loop, struct ioloop_work_inbox **out)
{
    struct ioloop_work_inbox *inbox = calloc(1, sizeof *inbox);
    int err;

    if (inbox == NULL)
        return -ENOMEM;
    if ((err = lock_init(&inbox->lock)) != 0) {
        free(inbox);
        return -err;
    }
    if ((err = pthread_cond_init(&inbox->settled, NULL)) != 0) {
        pthread_mutex_destroy(&inbox->lock);
        free(inbox);
        return -err;
    }
    inbox->loop = loop;
    link_init(&inbox->pending);
    inbox->done_tail = &inbox->done_head;
    inbox->node.fn = inbox_drain;
    inbox->node.arg = inbox;
    *out = inbox;
    return 0;
}

static void inbox_destroy(struct ioloop_work_inbox *inbox)
{
    pthread_cond_destroy(&inbox->settled);
    pthread_mutex_destroy(&inbox->lock);
    free(inbox);
}

/* The loop's inbox, created on first use; -ESHUTDOWN while the loop is being freed. */
static int inbox_get(ioloop_t *loop, struct ioloop_work_inbox **out)
{
    struct ioloop_work_inbox *inbox =
        atomic_load_explicit(&loop->work_inbox, memory_order_acquire);
    struct ioloop_work_inbox *fresh = NULL;
    int err;

    if (inbox == NULL) {
        if ((err = inbox_new(loop, &fresh)) < 0)
            return err;
        if (atomic_compare_exchange_strong_explicit(&loop->work_inbox, &inbox, fresh,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire))
            inbox = fresh;
        else
            inbox_destroy(fresh); /* another thread's came first: inbox holds it now */
    }
    if (inbox == &loop_closed)
        return -ESHUTDOWN;
    *out = inbox;
    return 0;
}

/* Runs one finished item's done and frees the item. */
static void run_done(ioloop_t *loop, struct work_item *item)
{
    ioloop_work_done_fn done = item->done;
    void *arg = item->arg;
    int err = item->err;

    free(item);
    done(loop, err, arg);
}

/* Under the inbox lock: appends the chain first..last (n items, no longer outstanding). */
static void inbox_append(struct ioloop_work_inbox *inbox, struct work_item *first,
                         struct work_item *last, size_t n)
{
    for (struct work_item *it = first;; it = it->next_done) {
        link_remove(&it->pending);
        if (it == last)
            break;
    }
    last->next_done = NULL;
    *inbox->done_tail = first;
    inbox->done_tail = &last->next_done;
    inbox->npending -= n;
}

/* Hands the finished chain first..last (n items of this inbox) to its loop. No lock held. The
 * post happens under the inbox lock, before the outstanding count drops: see the top. */
static void inbox_hand_in(struct ioloop_work_inbox *inbox, struct work_item *first,
                          struct work_item *last, size_t n)
{
    pthread_mutex_lock(&inbox->lock);
    inbox_append(inbox, first, last, n);
    if (inbox->closing) {
        if (inbox->npending == 0)
            pthread_cond_broadcast(&inbox->settled);
    } else if (!inbox->posted) {
        inbox->posted = true;
        ioloop__cbq_post_node(inbox->loop, &inbox->node);
    }
    pthread_mutex_unlock(&inbox->lock);
}

/* Hands in a NULL-terminated chain of finished items, one inbox lock per run of items that
 * go to the same loop. No lock held. */
static void hand_in_chain(struct work_item *head)
{
    while (head != NULL) {
        struct work_item *first = head, *last = head;
        size_t n = 1;

        while (last->next_done != NULL && last->next_done->inbox == first->inbox) {
            last = last->next_done;
            n++;
        }
        head = last->next_done;
        inbox_hand_in(first->inbox, first, last, n);
    }
}

/* Takes an item that failed to be queued off its inbox's outstanding list. */
static void inbox_forget(struct ioloop_work_inbox *inbox, struct work_item *item)
{
    pthread_mutex_lock(&inbox->lock);
    link_remove(&item->pending);
    if (--inbox->npending == 0 && inbox->closing)
        pthread_cond_broadcast(&inbox->settled);
    pthread_mutex_unlock(&inbox->lock);
}

/* The loop's callback: runs the dones handed in so far, DRAIN_MAX at a time, and posts itself
 * again while more are due. */
static void inbox_drain(ioloop_t *loop, void *arg)
{
    struct ioloop_work_inbox *inbox = arg;
    bool more;

    if (inbox->ready == NULL) {
        pthread_mutex_lock(&inbox->lock);
        inbox->ready = inbox->done_head;
        inbox->done_head = NULL;
        inbox->done_tail = &inbox->done_head;
        pthread_mutex_unlock(&inbox->lock);
    }
    for (unsigned n = 0; inbox->ready != NULL && n < DRAIN_MAX; n++) {
        struct work_item *item = inbox->ready;

        inbox->ready = item->next_done;
        run_done(loop, item);
    }
    /* Until `posted` drops, hand-ins do not post: whatever came meanwhile is for us. */
    pthread_mutex_lock(&inbox->lock);
    more = inbox->ready != NULL || inbox->done_head != NULL;
    if (!more)
        inbox->posted = false;
    pthread_mutex_unlock(&inbox->lock);
    if (more)
        ioloop__cbq_post_node(loop, &inbox->node); /* after the loop's I/O: no wakeup */
}

/* ---- Cancelling (under the pool lock) --------------------------------------------------- */

/* Counts n items handed in, c of them cancelled. Any thread, no lock. */
static void count_handed_in(ioloop_work_pool_t *pool, uint64_t n, uint64_t c)
{
    atomic_fetch_add_explicit(&pool->cancelled, c, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->completed, n, memory_order_release);
}

/* Takes a QUEUED item out of the queue for good; the caller hands it in and counts it. */
static void cancel_queued(ioloop_work_pool_t *pool, struct work_item *item)
{
    link_remove(&item->queue);
    pool->queued--;
    slot_release(pool, item->slot);
    item->err = -ECANCELED;
    atomic_store_explicit(&item->state, WORK_CANCELLED, memory_order_relaxed);
}

/* Cancels a TAKEN item if its worker has not begun it; the worker hands it in. */
static bool cancel_taken(struct work_item *item)
{
    int taken = WORK_TAKEN;

    return atomic_compare_exchange_strong_explicit(&item->state, &taken, WORK_CANCELLED,
                                                   memory_order_acq_rel,
                                                   memory_order_acquire);
}

/* ---- Workers ---------------------------------------------------------------------------- */

/* Under the pool lock: signals a sleeping worker unless none sleeps or one is being woken. */
static void wake_one(ioloop_work_pool_t *pool)
{
    if (pool->idle > 0 && !pool->signalled) {
        pool->signalled = true;
        pthread_cond_signal(&pool->work_cond);
    }
}

/* Under the pool lock: moves the next batch from the queue to w->batch. */
static void batch_take(ioloop_work_pool_t *pool, struct work_worker *w)
{
    size_t n = pool->queued / (size_t)pool->nthreads + 1;

    if (n > BATCH_MAX)
        n = BATCH_MAX;
    if (n > pool->queued)
        n = pool->queued;
    for (size_t i = 0; i < n; i++) {
        struct work_item *item =
            ioloop__container_of(pool->queue.next, struct work_item, queue);

        link_remove(&item->queue);
        atomic_store_explicit(&item->state, WORK_TAKEN, memory_order_relaxed);
        w->batch[i] = item;
    }
    pool->queued -= n;
    atomic_fetch_add_explicit(&pool->running, n, memory_order_relaxed);
    w->nbatch = (unsigned)n;
}

/* No lock held: runs w->batch, skipping the items cancelled meanwhile. */
static void batch_run(struct work_worker *w)
{
    for (unsigned i = 0; i < w->nbatch; i++) {
        struct work_item *item = w->batch[i];
        int taken = WORK_TAKEN;

        if (atomic_compare_exchange_strong_explicit(&item->state, &taken, WORK_RUNNING,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire)) {
            item->work(item->arg);
            item->err = 0;
            atomic_store_explicit(&item->state, WORK_DONE, memory_order_relaxed);
        } else {
            item->err = -ECANCELED;
        }
    }
}

/* What a worker hands in after its next visit to the lock: its last batch. */
struct batch_done {
    struct work_item *head; /* a chain through next_done, or NULL */
    unsigned n, cancelled;
};

/* Under the pool lock: releases the slots of the batch just run and chains it for handing
 * in. */
static struct batch_done batch_finish(ioloop_work_pool_t *pool, struct work_worker *w)
{
    struct batch_done done = {.head = w->nbatch > 0 ? w->batch[0] : NULL, .n = w->nbatch};

    for (unsigned i = 0; i < done.n; i++) {
        struct work_item *item = w->batch[i];

        slot_release(pool, item->slot);
        if (item->err != 0)
            done.cancelled++;
        item->next_done = i + 1 < done.n ? w->batch[i + 1] : NULL;
    }
    w->nbatch = 0;
    return done;
}

/*
 * A worker: under the lock, finish the last batch and take the next one (or sleep when there
 * is none and nothing to hand in); without it, hand in the last batch, then run the next.
 */
static void *worker_main(void *arg)
{
    struct work_worker *w = arg;
    ioloop_work_pool_t *pool = w->pool;

    current_pool = pool;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        struct batch_done finished = batch_finish(pool, w);

        if (pool->queued > 0) {
            batch_take(pool, w);
            if (pool->queued > 0)
                wake_one(pool); /* more than this batch: the next thread, too */
        } else if (finished.n == 0) {
            if (pool->closing)
                break;
            pool->idle++;
            pthread_cond_wait(&pool->work_cond, &pool->lock);
            pool->idle--;
            pool->signalled = false;
            continue;
        }
        pthread_mutex_unlock(&pool->lock);
        if (finished.n > 0) {
            hand_in_chain(finished.head);
            atomic_fetch_sub_explicit(&pool->running, finished.n, memory_order_relaxed);
            count_handed_in(pool, finished.n, finished.cancelled);
        }
        batch_run(w);
        pthread_mutex_lock(&pool->lock);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

/* ---- The public entry points ------------------------------------------------------------ */

static void pool_destroy(ioloop_work_pool_t *pool)
{
    pthread_cond_destroy(&pool->work_cond);
    pthread_mutex_destroy(&pool->lock);
    free(pool->slots);
    free(pool);
}

/* Wakes and joins the threads started so far (the pool is closing, its queue empty). */
static void pool_join(ioloop_work_pool_t *pool)
{
    pthread_mutex_lock(&pool->lock);
    pool->closing = true;
    pthread_cond_broadcast(&pool->work_cond);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->nthreads; i++)
        if (pool->workers[i].started)
            pthread_join(pool->workers[i].thread, NULL);
}

ioloop_work_pool_t *ioloop_work_pool_new(int nthreads)
{
    ioloop_work_pool_t *pool;
    int err;

    if (nthreads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        nthreads = cpus > 0 ? (int)cpus : 1;
    }
    pool = calloc(1, sizeof *pool + (size_t)nthreads * sizeof pool->workers[0]);
    if (pool == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if ((err = lock_init(&pool->lock)) != 0) {
        free(pool);
        errno = err;
        return NULL;
    }
    if ((err = pthread_cond_init(&pool->work_cond, NULL)) != 0) {
        pthread_mutex_destroy(&pool->lock);
        free(pool);
        errno = err;
        return NULL;
    }
    link_init(&pool->queue);
    pool->free_head = SLOT_NONE;
    pool->nthreads = nthreads;
    for (int i = 0; i < nthreads; i++) {
        struct work_worker *w = &pool->workers[i];

        w->pool = pool;
        if ((err = ioloop__thread_start(&w->thread, "ioloop-work", worker_main, w)) < 0) {
            pool_join(pool);
            pool_destroy(pool);
            errno = -err;
            return NULL;
        }
        w->started = true;
    }
    return pool;
}

int64_t ioloop_work_submit(ioloop_work_pool_t *pool, ioloop_t *loop, ioloop_work_fn work,
                           ioloop_work_done_fn done, void *arg)
{
    struct ioloop_work_inbox *inbox;
    struct work_item *item;
    int64_t id;
    int err;

    if (pool == NULL || loop == NULL || work == NULL || done == NULL)
        return -EINVAL;
    if (!ioloop__cbq_accepting(loop))
        return -ESHUTDOWN;
    if ((err = inbox_get(loop, &inbox)) < 0)
        return err;
    if ((item = malloc(sizeof *item)) == NULL)
        return -ENOMEM;
    item->work = work;
    item->done = done;
    item->arg = arg;
    item->inbox = inbox;
    item->pool = pool;
    item->err = 0;
    atomic_init(&item->state, WORK_QUEUED);

    /* Outstanding before it is queued: a worker may finish it as soon as it is. */
    pthread_mutex_lock(&inbox->lock);
    if (inbox->closing) {
        pthread_mutex_unlock(&inbox->lock);
        free(item);
        return -ESHUTDOWN;
    }
    link_append(&inbox->pending, &item->pending);
    inbox->npending++;
    pthread_mutex_unlock(&inbox->lock);

    pthread_mutex_lock(&pool->lock);
    if (pool->closing) {
        id = -ESHUTDOWN;
    } else if ((id = slot_take(pool, item)) > 0) {
        link_append(&pool->queue, &item->queue);
        pool->queued++;
        pool->submitted++;
        wake_one(pool);
    }
    pthread_mutex_unlock(&pool->lock);

    if (id < 0) {
        inbox_forget(inbox, item);
        free(item);
    }
    return id;
}

int ioloop_work_cancel(ioloop_work_pool_t *pool, int64_t work_id)
{
    uint32_t slot = (uint32_t)work_id, gen = (uint32_t)((uint64_t)work_id >> 32);
    struct work_item *item, *cancelled = NULL;
    int err;

    if (pool == NULL || work_id <= 0)
        return -EINVAL;
    pthread_mutex_lock(&pool->lock);
    if (slot >= pool->nslots || pool->slots[slot].item == NULL ||
        pool->slots[slot].gen != gen) {
        err = -ENOENT;
    } else {
        item = pool->slots[slot].item;
        switch (atomic_load_explicit(&item->state, memory_order_acquire)) {
        case WORK_QUEUED:
            cancel_queued(pool, item);
            cancelled = item;
            err = 0;
            break;
        case WORK_TAKEN:
            err = cancel_taken(item) ? 0 : -EBUSY; /* lost: it has just begun */
            break;
        case WORK_RUNNING:
            err = -EBUSY;
            break;
        default:
            err = -ENOENT; /* finished or cancelled; its worker has not released it yet */
            break;
        }
    }
    pthread_mutex_unlock(&pool->lock);

    if (cancelled != NULL) {
        cancelled->next_done = NULL;
        inbox_hand_in(cancelled->inbox, cancelled, cancelled, 1);
        count_handed_in(pool, 1, 1);
    }
    return err;
}

int ioloop_work_pool_get_stats(ioloop_work_pool_t *pool, ioloop_work_stats_t *out)
{
    if (pool == NULL || out == NULL)
        return -EINVAL;
    pthread_mutex_lock(&pool->lock);
    out->threads = (uint64_t)pool->nthreads;
    out->queued = pool->queued;
    out->submitted = pool->submitted;
    pthread_mutex_unlock(&pool->lock);
    out->running = atomic_load_explicit(&pool->running, memory_order_relaxed);
    out->cancelled = atomic_load_explicit(&pool->cancelled, memory_order_relaxed);
    out->completed = atomic_load_explicit(&pool->completed, memory_order_acquire);
    return 0;
}

void ioloop_work_pool_free(ioloop_work_pool_t *pool)
{
    struct work_item *cancelled = NULL, **tail = &cancelled;
    uint64_t ncancelled = 0;

    if (pool == NULL)
        return;
    if (current_pool == pool) {
        fprintf(stderr, "ioloop_work_pool_free: called from a work function of pool %p; it "
                        "would wait for itself\n", (void *)pool);
        abort();
    }
    pthread_mutex_lock(&pool->lock);
    pool->closing = true;
    while (!link_empty(&pool->queue)) {
        struct work_item *item =
            ioloop__container_of(pool->queue.next, struct work_item, queue);

        cancel_queued(pool, item);
        *tail = item;
        tail = &item->next_done;
        ncancelled++;
    }
    *tail = NULL;
    for (int i = 0; i < pool->nthreads; i++) {
        struct work_worker *w = &pool->workers[i];

        for (unsigned j = 0; j < w->nbatch; j++)
            (void)cancel_taken(w->batch[j]); /* its worker hands it in */
    }
    pthread_cond_broadcast(&pool->work_cond);
    pthread_mutex_unlock(&pool->lock);

    hand_in_chain(cancelled);
    count_handed_in(pool, ncancelled, ncancelled);
    pool_join(pool);
    pool_destroy(pool);
}

/* ---- The loop's end --------------------------------------------------------------------- */

/* Under the inbox lock (closing): cancels one of the loop's outstanding items if it has not
 * started. A queued one goes straight to the dones due; a taken one its worker hands in. */
static void cancel_for_loop(struct ioloop_work_inbox *inbox, struct work_item *item)
{
    ioloop_work_pool_t *pool = item->pool;
    bool queued;

    pthread_mutex_lock(&pool->lock);
    queued = atomic_load_explicit(&item->state, memory_order_relaxed) == WORK_QUEUED;
    if (queued) {
        cancel_queued(pool, item);
        /* Counted under the pool lock: once it is out of the queue, nothing keeps the pool
         * alive. (The loop sees the item only after we release the inbox.) */
        count_handed_in(pool, 1, 1);
    } else {
        (void)cancel_taken(item);
    }
    pthread_mutex_unlock(&pool->lock);
    if (queued)
        inbox_append(inbox, item, item, 1);
}

void ioloop__work_loop_fini(ioloop_t *loop)
{
    struct ioloop_work_inbox *inbox =
        atomic_exchange_explicit(&loop->work_inbox, &loop_closed, memory_order_acq_rel);
    struct work_item *due;
    bool posted;

    if (inbox == NULL || inbox == &loop_closed)
        return;
    pthread_mutex_lock(&inbox->lock);
    inbox->closing = true;
    for (struct work_link *l = inbox->pending.next, *next; l != &inbox->pending; l = next) {
        next = l->next;
        cancel_for_loop(inbox, ioloop__container_of(l, struct work_item, pending));
    }
    while (inbox->npending > 0)
        pthread_cond_wait(&inbox->settled, &inbox->lock);
    due = inbox->done_head;
    inbox->done_head = NULL;
    inbox->done_tail = &inbox->done_head;
    posted = inbox->posted;
    pthread_mutex_unlock(&inbox->lock);

    if (posted)
        (void)ioloop__cbq_cancel_node(loop, &inbox->node);
    /* What the drain had taken ran first; then the rest, in the order it was handed in. */
    while (inbox->ready != NULL) {
        struct work_item *item = inbox->ready;

        inbox->ready = item->next_done;
        run_done(loop, item);
    }
    while (due != NULL) {
        struct work_item *item = due;

        due = item->next_done;
        run_done(loop, item);
    }
    inbox_destroy(inbox);
}
