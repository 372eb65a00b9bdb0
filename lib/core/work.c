/*
 * The work pool: worker threads that run functions for the loops, and the way completions go
 * back to each loop.
 *
 * The pool. A spinlock (lib/core/spinlock.h: its critical sections are a few dozen stores,
 * and submitters take it for every item) guards the queue and a slot table that turns work
 * ids into items. The queue is a FIFO ring of item pointers, so that taking a batch touches a
 * few cache lines of pointers and none of the items, which the submitter has just written;
 * each item knows its sequence number in the ring, so cancel finds it in O(1) and leaves a hole
 * that takers skip. A worker takes a batch of items per visit to the lock, runs them, and on
 * its next visit releases the batch's slots and takes the next batch in the same critical
 * section; the batch's completions are handed in with the lock released. A batch is at most
 * BATCH_MAX items, about the worker's share of the queue plus one, and no more than the worker
 * ran in BATCH_NS last time: tiny items go 32 to a lock, long ones one at a time, so that none
 * waits behind another in a batch while a thread is free, and each done is handed in as soon
 * as its work finished.
 *
 * Wakeups. An idle worker parks on a semaphore of its own, on a stack of parked workers; a
 * waker pops one under the lock and posts its semaphore after releasing it (a post that comes
 * before the wait is kept, so no wakeup is lost). At most one parked worker is being woken at
 * any time: a submission wakes one only when one is parked, none is on its way and none
 * lingers (below), and a worker that takes a batch and leaves work queued wakes the next one.
 * So a burst of submissions costs one futex wake while the woken worker gets going (tiny items
 * are then taken 32 at a time, not one per wake), and a backlog still spreads over every
 * thread, one wakeup latency apart. A worker busy with long work never delays a new
 * submission: it is not parked, so the next parked one is woken. And the last worker to run
 * out of work lingers for LINGER_NS, watching the queue without the lock, before it parks: a
 * steady stream of submissions finds it awake and costs no wakeup at all. When its work is
 * tiny and some comes, it gathers a batch before it takes the lock (see GATHER_NS). At most
 * one worker lingers, and it looks at the queue under the lock before it parks.
 *
 * Ids. A work id is (generation << 32 | slot), as for timers (lib/core/timer.c): cancel finds
 * the item in O(1), and a slot whose generation is spent retires, so ids are never reused. A
 * slot is released when its work finished or was cancelled: from then on cancel says -ENOENT.
 *
 * Item states. QUEUED (not begun: in the ring, or taken into a worker's batch) -> RUNNING ->
 * DONE, or QUEUED -> CANCELLED. An item is still in the ring while its sequence number has not
 * been passed by the takers. A worker moves its item from QUEUED to RUNNING with a
 * compare-and-swap right before running it, and a canceller of an item no longer in the ring
 * moves it to CANCELLED with one (under the pool lock): whoever wins decides whether it runs,
 * so work taken but not begun is still cancellable. The worker hands cancelled items in with
 * its batch.
 *
 * The inbox. Each loop has one inbox, shared by every pool, created by the first submission
 * for the loop (from any thread, with a compare-and-swap on loop->work_inbox). It lists the
 * loop's outstanding items (submitted, not yet handed in) and the finished ones whose dones
 * are due. The first items handed into an inbox whose drain is not already queued post its
 * drain (a callback-queue node embedded in the inbox, which cannot fail and ignores the stop
 * state); the drain takes the whole list and runs the dones, DRAIN_MAX at a time. A burst of
 * completions thus costs one post, and one eventfd write at most.
 *
 * Locks. An inbox's lock (an adaptive mutex: ioloop_free() waits on it with a condition
 * variable) comes before a pool's lock: ioloop_free() of a loop holds its inbox while it
 * cancels the loop's items in their pools. Every other path takes one of them at a time:
 * workers, cancel and pool_free hand items in after releasing the pool lock, and submit
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
#include <sched.h>
#include <semaphore.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/loop.h"
#include "core/spinlock.h"
#include "core/thread.h"

/* Items a worker takes per visit to the pool's lock. Tiny items then pay for the lock (and
 * for moving its cache line) once per 32; a worker still takes no more than its share of the
 * queue plus one, so long items spread over the threads. */
#define BATCH_MAX 32u

/* How long a batch should take, judged by the worker's last one: 50 us is some fifty times
 * what a batch costs in locking and handing in, and short enough that a done is never held
 * back noticeably for the rest of its batch. */
#define BATCH_NS 50000u

/* Dones one run of a loop's drain callback runs before the loop gets back to its I/O: a burst
 * of a million completions must not keep the loop from its sockets for its whole length. */
#define DRAIN_MAX 256u

/* How long an idle worker watches for new work before it sleeps: a few times the latency of a
 * futex wakeup, which is what a submission saves by finding it awake. */
#define LINGER_NS 20000u
/* Polls between looks at the clock (and yields) while lingering. */
#define LINGER_POLLS 64u
/* A lingering worker whose work is tiny, seeing work come, gathers it before it takes the
 * lock: until a batch has come, or none came for GATHER_QUIET_NS, or GATHER_NS passed. When a
 * worker is as fast as the submitter, taking each item the moment it comes would cost every
 * submission the transfer of five cache lines between the cores (the lock's, the ring's, the
 * slot's, the inbox's, the item's); gathering costs it one, and delays a lone item by
 * GATHER_QUIET_NS at most. Between looks it pauses GATHER_PAUSES times. */
#define GATHER_NS 2000u
#define GATHER_QUIET_NS 300u
#define GATHER_PAUSES 4u

/* The ring's first capacity; it doubles when full. */
#define RING_MIN 256u

#define SLOT_NONE UINT32_MAX
#define GEN_LAST INT32_MAX  /* ids stay positive: a slot retires after this generation */
#define SLOTS_MIN 64u

enum {
    WORK_QUEUED,    /* not begun: in the ring, or in a worker's batch (still cancellable) */
    WORK_RUNNING,
    WORK_DONE,      /* ran: its done (0) is due */
    WORK_CANCELLED, /* never runs: its done (-ECANCELED) is due */
};

/* A node of an intrusive, circular, doubly linked list; a list head is a node of its own. */
struct work_link {
    struct work_link *prev, *next;
};

struct work_item {
    uint64_t qseq;               /* its sequence number in the pool's ring */
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
    alignas(IOLOOP__CACHE_LINE) ioloop_work_pool_t *pool; /* workers share no cache line */
    pthread_t thread;
    bool started;                      /* the thread exists and must be joined */
    sem_t wake;                        /* posted to end its park */
    struct work_worker *next_parked;   /* the stack of parked workers, under the pool lock */
    unsigned limit;                    /* the next batch's size at most (see BATCH_NS) */
    unsigned nbatch;                   /* written under the pool lock */
    struct work_item *batch[BATCH_MAX]; /* taken, not yet released; read by pool_free */
};

struct ioloop_work_pool {
    atomic_int lock;          /* a spinlock: everything up to `queue_gen` is under it */
    int nthreads;
    struct work_item **ring;  /* the queue: entries [head, tail), NULL where cancelled */
    uint64_t ring_mask;       /* its capacity (a power of two) - 1 */
    uint64_t head, tail;      /* sequence numbers; entry seq sits at ring[seq & ring_mask] */
    size_t queued;            /* items in the ring (holes not counted) */
    struct work_worker *parked; /* parked workers, a stack */
    bool waking;              /* a worker was popped to wake and has not taken the lock yet */
    bool lingering;           /* a worker watches the queue without the lock */
    bool closing;             /* ioloop_work_pool_free() has begun */
    unsigned fixed_batch;     /* tests: every batch's size at most, whatever the work costs */
    struct work_slot *slots;
    uint32_t nslots;          /* slots ever handed out */
    uint32_t slots_cap;
    uint32_t free_head;       /* first free slot, or SLOT_NONE */
    uint64_t submitted;
    /* Bumped (under the lock) when work is queued while a worker lingers, or the pool closes:
     * what a lingering worker watches, on a line of its own so that its polls do not slow
     * the lock's holders. */
    alignas(IOLOOP__CACHE_LINE) _Atomic uint64_t queue_gen;
    /* Counted as the items are handed in, under their inbox's lock: a reader who sees an
     * item completed knows its done is due, and once a done ran its item is counted. On a
     * cache line of their own: hand-ins do not bounce the lock's. */
    alignas(IOLOOP__CACHE_LINE) _Atomic uint64_t running; /* taken, not yet handed in */
    _Atomic uint64_t completed; /* handed in: ran or cancelled */
    _Atomic uint64_t cancelled; /* handed in with -ECANCELED */
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

/* The inboxes' mutexes spin a little before they sleep (glibc's adaptive mutex): their
 * critical sections are a few dozen stores, so a thread that finds one held usually gets it a
 * moment later without the two futex calls a sleep and a wakeup cost. */
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

/* ---- The ring (under the pool lock) ---------------------------------------------------- */

static bool ring_full(const ioloop_work_pool_t *pool)
{
    return pool->tail - pool->head > pool->ring_mask;
}

/* Appends an item; the ring is not full. */
static void ring_push(ioloop_work_pool_t *pool, struct work_item *item)
{
    item->qseq = pool->tail;
    pool->ring[pool->tail++ & pool->ring_mask] = item;
    pool->queued++;
}

/* Takes the first item out of the ring, skipping holes; NULL if it holds none. */
static struct work_item *ring_pop(ioloop_work_pool_t *pool)
{
    while (pool->head < pool->tail) {
        struct work_item *item = pool->ring[pool->head++ & pool->ring_mask];

        if (item != NULL) {
            pool->queued--;
            return item;
        }
    }
    return NULL;
}

/* Whether a QUEUED item is still in the ring (else it is in a worker's batch). */
static bool in_ring(const ioloop_work_pool_t *pool, const struct work_item *item)
{
    return item->qseq >= pool->head && pool->ring[item->qseq & pool->ring_mask] == item;
}

/* Takes an item that is in the ring out of it, leaving a hole. */
static void ring_remove(ioloop_work_pool_t *pool, struct work_item *item)
{
    pool->ring[item->qseq & pool->ring_mask] = NULL;
    pool->queued--;
}

/* ---- Slots (under the pool lock) -------------------------------------------------------- */

static bool slots_full(const ioloop_work_pool_t *pool)
{
    return pool->free_head == SLOT_NONE && pool->nslots == pool->slots_cap;
}

/* Gives `item` a slot (there is a free one); returns its id. */
static int64_t slot_take(ioloop_work_pool_t *pool, struct work_item *item)
{
    uint32_t slot;

    if (pool->free_head != SLOT_NONE) {
        slot = pool->free_head;
        pool->free_head = pool->slots[slot].next_free;
    } else {
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

/*
 * Called with the pool lock held when the ring or the slot table is full: allocates bigger
 * ones with the lock released (no allocation under a spinlock), and installs them under it
 * unless another thread grew them meanwhile. Returns 0 with the lock held (the caller looks
 * again: others may have used the room), or -ENOMEM with the lock released.
 */
static int pool_grow(ioloop_work_pool_t *pool)
{
    uint64_t ring_cap = pool->ring_mask + 1;
    uint32_t slots_cap = pool->slots_cap, new_slots_cap = slots_cap ? slots_cap * 2 : SLOTS_MIN;
    struct work_item **ring = NULL;
    struct work_slot *slots = NULL;
    bool grow_ring = ring_full(pool), grow_slots = slots_full(pool);

    ioloop__spin_unlock(&pool->lock);
    if (grow_ring && (ring_cap > SIZE_MAX / 2 / sizeof *ring ||
                      (ring = malloc(2 * ring_cap * sizeof *ring)) == NULL))
        return -ENOMEM;
    if (grow_slots && (slots_cap >= SLOT_NONE / 2 ||
                       (slots = malloc((size_t)new_slots_cap * sizeof *slots)) == NULL)) {
        free(ring);
        return -ENOMEM;
    }
    ioloop__spin_lock(&pool->lock);
    if (ring != NULL && pool->ring_mask + 1 == ring_cap) {
        struct work_item **old = pool->ring;

        for (uint64_t seq = pool->head; seq < pool->tail; seq++)
            ring[seq & (2 * ring_cap - 1)] = old[seq & pool->ring_mask];
        pool->ring = ring;
        pool->ring_mask = 2 * ring_cap - 1;
        ring = old;
    }
    if (slots != NULL && pool->slots_cap == slots_cap) {
        struct work_slot *old = pool->slots;

        if (pool->nslots > 0)
            memcpy(slots, old, (size_t)pool->nslots * sizeof *slots);
        pool->slots = slots;
        pool->slots_cap = new_slots_cap;
        slots = old;
    }
    ioloop__spin_unlock(&pool->lock);
    free(ring); /* the old ones, or ours if another thread grew them first */
    free(slots);
    ioloop__spin_lock(&pool->lock);
    return 0;
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

/* Counts n items handed in, c of them cancelled, `taken` if they come from a worker's batch.
 * Any thread, no lock needed. */
static void count_handed_in(ioloop_work_pool_t *pool, uint64_t n, uint64_t c, bool taken)
{
    if (taken)
        atomic_fetch_sub_explicit(&pool->running, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->cancelled, c, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->completed, n, memory_order_release);
}

/* Under the inbox lock: appends the chain first..last (n items, no longer outstanding).
 * Returns how many of them were cancelled. */
static size_t inbox_append(struct ioloop_work_inbox *inbox, struct work_item *first,
                           struct work_item *last, size_t n)
{
    size_t cancelled = 0;

    for (struct work_item *it = first;; it = it->next_done) {
        link_remove(&it->pending);
        cancelled += it->err != 0;
        if (it == last)
            break;
    }
    last->next_done = NULL;
    *inbox->done_tail = first;
    inbox->done_tail = &last->next_done;
    inbox->npending -= n;
    return cancelled;
}

/* Hands the finished chain first..last (n items of this inbox and of one pool, taken from a
 * worker's batch or not) to its loop. No lock held. The post happens under the inbox lock,
 * before the outstanding count drops: see the top. */
static void inbox_hand_in(struct ioloop_work_inbox *inbox, struct work_item *first,
                          struct work_item *last, size_t n, bool taken)
{
    ioloop_work_pool_t *pool = first->pool;

    pthread_mutex_lock(&inbox->lock);
    count_handed_in(pool, n, inbox_append(inbox, first, last, n), taken);
    if (inbox->closing) {
        if (inbox->npending == 0)
            pthread_cond_broadcast(&inbox->settled);
    } else if (!inbox->posted) {
        inbox->posted = true;
        ioloop__cbq_post_node(inbox->loop, &inbox->node);
    }
    pthread_mutex_unlock(&inbox->lock);
}

/* Hands in a NULL-terminated chain of finished items of one pool, one inbox lock per run of
 * items that go to the same loop. No lock held. */
static void hand_in_chain(struct work_item *head, bool taken)
{
    while (head != NULL) {
        struct work_item *first = head, *last = head;
        size_t n = 1;

        while (last->next_done != NULL && last->next_done->inbox == first->inbox) {
            last = last->next_done;
            n++;
        }
        head = last->next_done;
        inbox_hand_in(first->inbox, first, last, n, taken);
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

/* Cancels an item taken out of the ring for good; the caller hands it in and counts it. */
static void cancel_unqueued(ioloop_work_pool_t *pool, struct work_item *item)
{
    slot_release(pool, item->slot);
    item->err = -ECANCELED;
    atomic_store_explicit(&item->state, WORK_CANCELLED, memory_order_relaxed);
}

/* Cancels an item in a worker's batch if the worker has not begun it; the worker hands it
 * in. */
static bool cancel_taken(struct work_item *item)
{
    int queued = WORK_QUEUED;

    return atomic_compare_exchange_strong_explicit(&item->state, &queued, WORK_CANCELLED,
                                                   memory_order_acq_rel,
                                                   memory_order_acquire);
}

enum cancel_result {
    CANCEL_LOST,      /* it has begun */
    CANCEL_UNQUEUED,  /* taken out of the ring: the caller hands it in and counts it */
    CANCEL_IN_BATCH,  /* its worker skips it and hands it in */
};

/* Cancels a QUEUED item, wherever it is. */
static enum cancel_result cancel_not_begun(ioloop_work_pool_t *pool, struct work_item *item)
{
    if (in_ring(pool, item)) {
        ring_remove(pool, item);
        cancel_unqueued(pool, item);
        return CANCEL_UNQUEUED;
    }
    return cancel_taken(item) ? CANCEL_IN_BATCH : CANCEL_LOST;
}

/* ---- Workers ---------------------------------------------------------------------------- */

/* Under the pool lock: tells a lingering worker that the queue changed. */
static void queue_changed(ioloop_work_pool_t *pool)
{
    atomic_store_explicit(&pool->queue_gen,
                          atomic_load_explicit(&pool->queue_gen, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Under the pool lock: picks a parked worker to wake, unless none is parked, one is being
 * woken, or one lingers (it will see the work). Returns it, for unpark() once the lock is
 * released, or NULL. */
static struct work_worker *wake_one(ioloop_work_pool_t *pool)
{
    struct work_worker *w = pool->parked;

    if (w == NULL || pool->waking || pool->lingering)
        return NULL;
    pool->parked = w->next_parked;
    pool->waking = true;
    return w;
}

/* No lock held: ends the park of a worker popped off the stack (NULL: none). */
static void unpark(struct work_worker *w)
{
    if (w != NULL && sem_post(&w->wake) != 0)
        abort(); /* only EOVERFLOW: posted 2^31 times while nobody waited, cannot happen */
}

/* Called with the pool lock held: parks the worker until unpark(). Returns with the lock
 * held again. */
static void park(ioloop_work_pool_t *pool, struct work_worker *w)
{
    w->next_parked = pool->parked;
    pool->parked = w;
    ioloop__spin_unlock(&pool->lock);
    while (sem_wait(&w->wake) != 0)
        ; /* EINTR only, and the worker blocks every signal anyway */
    ioloop__spin_lock(&pool->lock);
    pool->waking = false;
}

/* Under the pool lock: moves the next batch from the ring to w->batch. */
static void batch_take(ioloop_work_pool_t *pool, struct work_worker *w)
{
    size_t n = pool->queued / (size_t)pool->nthreads + 1;

    if (n > (pool->fixed_batch ? pool->fixed_batch : w->limit))
        n = pool->fixed_batch ? pool->fixed_batch : w->limit;
    if (n > pool->queued)
        n = pool->queued;
    for (size_t i = 0; i < n; i++)
        w->batch[i] = ring_pop(pool); /* `queued` counts them: never NULL */
    atomic_fetch_add_explicit(&pool->running, n, memory_order_relaxed);
    w->nbatch = (unsigned)n;
}

/* No lock held: runs w->batch, skipping the items cancelled meanwhile, and sizes the next
 * batch by how long this one took. */
static void batch_run(struct work_worker *w)
{
    uint64_t start_ns, per_item_ns;

    if (w->nbatch == 0)
        return;
    start_ns = ioloop__clock_ns();
    for (unsigned i = 0; i < w->nbatch; i++) {
        struct work_item *item = w->batch[i];
        int queued = WORK_QUEUED;

        if (atomic_compare_exchange_strong_explicit(&item->state, &queued, WORK_RUNNING,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire)) {
            item->work(item->arg);
            item->err = 0;
            atomic_store_explicit(&item->state, WORK_DONE, memory_order_relaxed);
        } else {
            item->err = -ECANCELED;
        }
    }
    per_item_ns = (ioloop__clock_ns() - start_ns) / w->nbatch;
    if (per_item_ns * BATCH_MAX <= BATCH_NS)
        w->limit = BATCH_MAX;
    else
        w->limit = per_item_ns >= BATCH_NS ? 1 : (unsigned)(BATCH_NS / per_item_ns);
}

/* Under the pool lock: releases the slots of the batch just run and chains it for handing
 * in. Returns the chain's head (NULL for an empty batch). */
static struct work_item *batch_finish(ioloop_work_pool_t *pool, struct work_worker *w)
{
    unsigned n = w->nbatch;

    for (unsigned i = 0; i < n; i++) {
        struct work_item *item = w->batch[i];

        slot_release(pool, item->slot);
        item->next_done = i + 1 < n ? w->batch[i + 1] : NULL;
    }
    w->nbatch = 0;
    return n > 0 ? w->batch[0] : NULL;
}

/* Called with the pool lock held and nothing queued: watches for new work, without the lock,
 * for up to LINGER_NS. Returns with the lock held again; the caller looks at the queue. */
static void linger(ioloop_work_pool_t *pool, bool gather)
{
    uint64_t seen = atomic_load_explicit(&pool->queue_gen, memory_order_relaxed);
    uint64_t now, deadline, quiet_until = 0, arrived = 0;

    pool->lingering = true;
    ioloop__spin_unlock(&pool->lock);
    deadline = ioloop__clock_ns() + LINGER_NS;
    for (unsigned polls = 1;; polls++) {
        uint64_t gen = atomic_load_explicit(&pool->queue_gen, memory_order_relaxed);

        if (gen != seen) {
            if (!gather)
                break;
            now = ioloop__clock_ns();
            if (arrived == 0)
                deadline = now + GATHER_NS;
            arrived += gen - seen;
            seen = gen;
            quiet_until = now + GATHER_QUIET_NS;
            if (arrived >= BATCH_MAX)
                break;
        }
        if (arrived > 0) {
            /* Gathering: a few pauses between looks, so that the submitter's stores to the
             * watched line mostly find it still its own. */
            for (unsigned i = 0; i < GATHER_PAUSES; i++)
                ioloop__cpu_relax();
            now = ioloop__clock_ns();
            if (now >= quiet_until || now >= deadline)
                break;
        } else if (polls % LINGER_POLLS != 0) {
            ioloop__cpu_relax();
        } else {
            if (ioloop__clock_ns() >= deadline)
                break;
            sched_yield(); /* on a busy core, the submitter may need it more */
        }
    }
    ioloop__spin_lock(&pool->lock);
    pool->lingering = false;
}

/*
 * A worker: under the lock, finish the last batch and take the next one (or linger, then
 * sleep, when there is none and nothing to hand in); without it, hand in the last batch, then
 * run the next.
 */
static void *worker_main(void *arg)
{
    struct work_worker *w = arg;
    ioloop_work_pool_t *pool = w->pool;
    bool lingered = false;

    current_pool = pool;
    ioloop__spin_lock(&pool->lock);
    for (;;) {
        struct work_item *finished = batch_finish(pool, w);
        struct work_worker *next = NULL;

        if (pool->queued > 0) {
            batch_take(pool, w);
            if (pool->queued > 0)
                next = wake_one(pool); /* more than this batch: the next thread, too */
            lingered = false;
        } else if (finished == NULL) {
            if (pool->closing)
                break;
            if (!lingered && !pool->lingering) {
                linger(pool, w->limit == BATCH_MAX && !pool->fixed_batch);
                lingered = true;
                continue;
            }
            lingered = false;
            park(pool, w);
            continue;
        }
        ioloop__spin_unlock(&pool->lock);
        unpark(next);
        hand_in_chain(finished, true);
        batch_run(w);
        ioloop__spin_lock(&pool->lock);
    }
    ioloop__spin_unlock(&pool->lock);
    return NULL;
}

/* ---- The public entry points ------------------------------------------------------------ */

static void pool_destroy(ioloop_work_pool_t *pool)
{
    for (int i = 0; i < pool->nthreads; i++)
        sem_destroy(&pool->workers[i].wake);
    free(pool->ring);
    free(pool->slots);
    free(pool);
}

/* Wakes and joins the threads started so far (the pool is closing, its queue empty). */
static void pool_join(ioloop_work_pool_t *pool)
{
    struct work_worker *parked;

    ioloop__spin_lock(&pool->lock);
    pool->closing = true; /* from here on, no worker parks */
    queue_changed(pool);  /* a lingering worker looks now */
    parked = pool->parked;
    pool->parked = NULL;
    ioloop__spin_unlock(&pool->lock);
    while (parked != NULL) {
        struct work_worker *w = parked;

        parked = w->next_parked; /* read first: once posted, it may run on */
        unpark(w);
    }
    for (int i = 0; i < pool->nthreads; i++)
        if (pool->workers[i].started)
            pthread_join(pool->workers[i].thread, NULL);
}

ioloop_work_pool_t *ioloop_work_pool_new(int nthreads)
{
    ioloop_work_pool_t *pool;
    size_t size;
    int err;

    if (nthreads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        nthreads = cpus > 0 ? (int)cpus : 1;
    }
    /* Aligned as the struct asks (its counters start a cache line of their own); the size is
     * rounded up to a multiple of that, as aligned_alloc() wants. */
    size = sizeof *pool + (size_t)nthreads * sizeof pool->workers[0];
    size = (size + alignof(ioloop_work_pool_t) - 1) / alignof(ioloop_work_pool_t) *
           alignof(ioloop_work_pool_t);
    if ((pool = aligned_alloc(alignof(ioloop_work_pool_t), size)) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    memset(pool, 0, size);
    pool->free_head = SLOT_NONE;
    if ((pool->ring = malloc(RING_MIN * sizeof *pool->ring)) == NULL) {
        free(pool);
        errno = ENOMEM;
        return NULL;
    }
    pool->ring_mask = RING_MIN - 1;
    for (int i = 0; i < nthreads; i++) {
        if (sem_init(&pool->workers[i].wake, 0, 0) != 0) {
            err = errno;
            pool_destroy(pool);
            errno = err;
            return NULL;
        }
        pool->nthreads = i + 1; /* what pool_destroy() destroys */
    }
    for (int i = 0; i < nthreads; i++) {
        struct work_worker *w = &pool->workers[i];

        w->pool = pool;
        w->limit = 1; /* until it knows how long the work takes */
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
    struct work_worker *woken = NULL;
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

    ioloop__spin_lock(&pool->lock);
    for (;;) {
        if (pool->closing) {
            id = -ESHUTDOWN;
            break;
        }
        if (!ring_full(pool) && !slots_full(pool)) {
            id = slot_take(pool, item);
            ring_push(pool, item);
            pool->submitted++;
            if (pool->lingering)
                queue_changed(pool);
            woken = wake_one(pool);
            break;
        }
        if ((id = pool_grow(pool)) < 0)
            break; /* with the lock released */
    }
    if (id != -ENOMEM)
        ioloop__spin_unlock(&pool->lock);
    unpark(woken);

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
    ioloop__spin_lock(&pool->lock);
    if (slot >= pool->nslots || pool->slots[slot].item == NULL ||
        pool->slots[slot].gen != gen) {
        err = -ENOENT;
    } else {
        item = pool->slots[slot].item;
        switch (atomic_load_explicit(&item->state, memory_order_acquire)) {
        case WORK_QUEUED:
            switch (cancel_not_begun(pool, item)) {
            case CANCEL_UNQUEUED:
                cancelled = item;
                err = 0;
                break;
            case CANCEL_IN_BATCH:
                err = 0;
                break;
            default:
                err = -EBUSY; /* lost: it has just begun */
                break;
            }
            break;
        case WORK_RUNNING:
            err = -EBUSY;
            break;
        default:
            err = -ENOENT; /* finished or cancelled; its worker has not released it yet */
            break;
        }
    }
    ioloop__spin_unlock(&pool->lock);

    if (cancelled != NULL) {
        cancelled->next_done = NULL;
        inbox_hand_in(cancelled->inbox, cancelled, cancelled, 1, false);
    }
    return err;
}

void ioloop__work_pool_fix_batch(ioloop_work_pool_t *pool, unsigned n)
{
    ioloop__spin_lock(&pool->lock);
    pool->fixed_batch = n > BATCH_MAX ? BATCH_MAX : n;
    ioloop__spin_unlock(&pool->lock);
}

int ioloop_work_pool_get_stats(ioloop_work_pool_t *pool, ioloop_work_stats_t *out)
{
    if (pool == NULL || out == NULL)
        return -EINVAL;
    ioloop__spin_lock(&pool->lock);
    out->threads = (uint64_t)pool->nthreads;
    out->queued = pool->queued;
    out->submitted = pool->submitted;
    ioloop__spin_unlock(&pool->lock);
    out->running = atomic_load_explicit(&pool->running, memory_order_relaxed);
    out->cancelled = atomic_load_explicit(&pool->cancelled, memory_order_relaxed);
    out->completed = atomic_load_explicit(&pool->completed, memory_order_acquire);
    return 0;
}

void ioloop_work_pool_free(ioloop_work_pool_t *pool)
{
    struct work_item *cancelled = NULL, **tail = &cancelled;

    if (pool == NULL)
        return;
    if (current_pool == pool) {
        fprintf(stderr, "ioloop_work_pool_free: called from a work function of pool %p; it "
                        "would wait for itself\n", (void *)pool);
        abort();
    }
    ioloop__spin_lock(&pool->lock);
    pool->closing = true;
    for (struct work_item *item; (item = ring_pop(pool)) != NULL;) {
        cancel_unqueued(pool, item);
        *tail = item;
        tail = &item->next_done;
    }
    *tail = NULL;
    for (int i = 0; i < pool->nthreads; i++) {
        struct work_worker *w = &pool->workers[i];

        for (unsigned j = 0; j < w->nbatch; j++)
            (void)cancel_taken(w->batch[j]); /* its worker hands it in */
    }
    ioloop__spin_unlock(&pool->lock);

    hand_in_chain(cancelled, false);
    pool_join(pool);
    pool_destroy(pool);
}

/* ---- The loop's end --------------------------------------------------------------------- */

/* Under the inbox lock (closing): cancels one of the loop's outstanding items if it has not
 * started. A queued one goes straight to the dones due; a taken one its worker hands in. */
static void cancel_for_loop(struct ioloop_work_inbox *inbox, struct work_item *item)
{
    ioloop_work_pool_t *pool = item->pool;
    bool unqueued = false;

    ioloop__spin_lock(&pool->lock);
    if (atomic_load_explicit(&item->state, memory_order_relaxed) == WORK_QUEUED &&
        cancel_not_begun(pool, item) == CANCEL_UNQUEUED) {
        /* Counted under the pool lock: once it is out of the ring, nothing keeps the pool
         * alive. (We hold its inbox's lock: it is as good as handed in.) */
        count_handed_in(pool, 1, 1, false);
        unqueued = true;
    }
    ioloop__spin_unlock(&pool->lock);
    if (unqueued)
        (void)inbox_append(inbox, item, item, 1); /* counted above */
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
