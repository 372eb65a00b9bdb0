/*
 * Timers. Each loop keeps its timers in a slab of slots and orders them in a 4-ary min-heap by
 * (deadline, sequence), so equal deadlines fire in scheduling order. A heap node is 16 bytes,
 * the deadline cached beside the slot index, so the four children compared at each level share
 * a cache line and the heap is half as deep as a binary one (libev's layout). One timerfd
 * (CLOCK_MONOTONIC, absolute time) is armed for the heap's earliest deadline, re-armed at most
 * once per iteration and only when that deadline changed.
 *
 * A timer id is (generation << 32 | slot). Cancel finds the slot in O(1) and the generation
 * tells a live timer from an old id whose slot was reused; a slot is retired for good before
 * its generation could wrap, so ids are never reused. No map is needed: a timer costs its
 * 40-byte slot plus its 16-byte heap node.
 *
 * Running a batch: due timers are popped and run one at a time. A timer cancelled by an
 * earlier callback is no longer in the heap, so it never runs. Only timers scheduled before
 * the iteration began to wait (seq < batch_seq) are taken, so one scheduled by a handler or a
 * timer of this iteration — even with delay 0, or a repeating timer's next tick — waits for
 * the next iteration.
 */
#include "core/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define SLOT_NONE UINT32_MAX    /* end of the free list */
#define POS_RUNNING UINT32_MAX  /* a repeating timer whose callback is running */
#define GEN_LAST  INT32_MAX     /* ids stay positive: a slot retires after this generation */
#define SLOTS_MIN 16u
#define ARITY 4u

/* Deadlines are clamped to about 285 years of uptime, well inside what a timerfd accepts. */
#define DEADLINE_MAX_US UINT64_C(9000000000000000)

/* armed_us when the timerfd is disarmed, and when it must be set whatever the deadline. */
#define ARMED_NONE  UINT64_MAX
#define ARMED_FORCE 0

struct ioloop_timer {
    ioloop_callback_fn fn;  /* NULL while the slot is free */
    void *arg;
    uint64_t interval_us;   /* 0 for a one-shot timer */
    uint64_t seq;           /* scheduling order: the tie-break for equal deadlines */
    uint32_t pos;           /* heap index, POS_RUNNING, or (free slot) the next free slot */
    uint32_t gen;           /* the occupant's generation, or (free slot) the next one's */
};

struct ioloop_timer_node {
    uint64_t deadline_us;
    uint32_t slot;
};

static uint64_t add_clamped(uint64_t a, uint64_t b)
{
    return b > DEADLINE_MAX_US - a ? DEADLINE_MAX_US : a + b;
}

static uint64_t ms_to_us(uint64_t ms)
{
    return ms > DEADLINE_MAX_US / 1000u ? DEADLINE_MAX_US : ms * 1000u;
}

/* Now in microseconds, rounded up, so that a deadline computed from it is never early. */
static uint64_t clock_us_ceil(void)
{
    return (ioloop__clock_ns() + 999u) / 1000u;
}

static void on_timerfd(ioloop_t *loop, int fd, int events, void *arg)
{
    /* No read(): re-arming the timerfd, which the batch always does, clears its expiry. */
    loop->timers.fired = true;
}

int ioloop__timers_init(ioloop_t *loop)
{
    struct ioloop_timers *t = &loop->timers;

    t->free_head = SLOT_NONE;
    t->armed_us = ARMED_NONE;
    t->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (t->tfd < 0)
        return -errno;
    return ioloop__handler_add(loop, t->tfd, IOLOOP_READ | IOLOOP__HANDLER_INTERNAL,
                               on_timerfd, NULL);
}

void ioloop__timers_fini(ioloop_t *loop)
{
    struct ioloop_timers *t = &loop->timers;

    if (t->tfd >= 0)
        close(t->tfd);
    free(t->slots);
    free(t->heap);
}

/* ---- The heap --------------------------------------------------------------------------- */

static bool node_before(const struct ioloop_timers *t, const struct ioloop_timer_node *a,
                        const struct ioloop_timer_node *b)
{
    if (a->deadline_us != b->deadline_us)
        return a->deadline_us < b->deadline_us;
    return t->slots[a->slot].seq < t->slots[b->slot].seq;
}

static void heap_set(struct ioloop_timers *t, uint32_t i, struct ioloop_timer_node node)
{
    t->heap[i] = node;
    t->slots[node.slot].pos = i;
}

static void sift_up(struct ioloop_timers *t, uint32_t i)
{
    struct ioloop_timer_node node = t->heap[i];

    while (i > 0) {
        uint32_t parent = (i - 1) / ARITY;

        if (!node_before(t, &node, &t->heap[parent]))
            break;
        heap_set(t, i, t->heap[parent]);
        i = parent;
    }
    heap_set(t, i, node);
}

static void sift_down(struct ioloop_timers *t, uint32_t i)
{
    struct ioloop_timer_node node = t->heap[i];

    for (;;) {
        uint32_t first = ARITY * i + 1, best = first;

        if (first >= t->heap_len)
            break;
        for (uint32_t c = first + 1; c < first + ARITY && c < t->heap_len; c++)
            if (node_before(t, &t->heap[c], &t->heap[best]))
                best = c;
        if (!node_before(t, &t->heap[best], &node))
            break;
        heap_set(t, i, t->heap[best]);
        i = best;
    }
    heap_set(t, i, node);
}

static void heap_remove(struct ioloop_timers *t, uint32_t i)
{
    uint32_t last = --t->heap_len;

    if (i == last)
        return;
    t->heap[i] = t->heap[last];
    if (i > 0 && node_before(t, &t->heap[i], &t->heap[(i - 1) / ARITY]))
        sift_up(t, i);
    else
        sift_down(t, i);
}

/* The heap has room for every slot, so pushing never fails. */
static void heap_push(struct ioloop_timers *t, uint32_t slot, uint64_t deadline_us)
{
    uint32_t i = t->heap_len++;

    t->slots[slot].seq = t->next_seq++;
    t->heap[i] = (struct ioloop_timer_node){deadline_us, slot};
    sift_up(t, i);
}

/* ---- Slots ------------------------------------------------------------------------------ */

/* Grows the slab and the heap together, so that the heap always has a node for every slot. */
static int slots_grow(struct ioloop_timers *t)
{
    uint32_t cap = t->slots_cap ? t->slots_cap * 2 : SLOTS_MIN;
    struct ioloop_timer *slots;
    struct ioloop_timer_node *heap;

    if (t->slots_cap >= SLOT_NONE / 2)
        return -ENOMEM;
    heap = realloc(t->heap, (size_t)cap * sizeof *heap);
    if (heap == NULL)
        return -ENOMEM;
    t->heap = heap;
    t->heap_cap = cap;
    slots = realloc(t->slots, (size_t)cap * sizeof *slots);
    if (slots == NULL)
        return -ENOMEM;
    t->slots = slots;
    t->slots_cap = cap;
    return 0;
}

static int64_t slot_take(struct ioloop_timers *t, uint32_t *slot)
{
    if (t->free_head != SLOT_NONE) {
        *slot = t->free_head;
        t->free_head = t->slots[*slot].pos;
        return 0;
    }
    if (t->nslots == t->slots_cap && slots_grow(t) < 0)
        return -ENOMEM;
    *slot = t->nslots++;
    t->slots[*slot].gen = 1;
    return 0;
}

static void slot_release(ioloop_t *loop, uint32_t slot)
{
    struct ioloop_timers *t = &loop->timers;
    struct ioloop_timer *tm = &t->slots[slot];

    tm->fn = NULL;
    tm->arg = NULL;
    if (tm->gen < GEN_LAST) {
        tm->gen++;
        tm->pos = t->free_head;
        t->free_head = slot;
    }
    ioloop__stat_add(&loop->stats.timers_pending, (uint64_t)-1);
}

static int64_t timer_add(ioloop_t *loop, uint64_t deadline_us, uint64_t interval_us,
                         ioloop_callback_fn fn, void *arg)
{
    struct ioloop_timers *t = &loop->timers;
    struct ioloop_timer *tm;
    uint32_t slot;

    if (slot_take(t, &slot) < 0)
        return -ENOMEM;
    tm = &t->slots[slot];
    tm->fn = fn;
    tm->arg = arg;
    tm->interval_us = interval_us;
    heap_push(t, slot, deadline_us);
    ioloop__stat_add(&loop->stats.timers_pending, 1);
    return (int64_t)tm->gen << 32 | slot;
}

/* ---- The public entry points ------------------------------------------------------------ */

int64_t ioloop_run_after(ioloop_t *loop, uint64_t delay_ms, ioloop_callback_fn fn, void *arg)
{
    int err;

    if (loop == NULL || fn == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    return timer_add(loop, add_clamped(clock_us_ceil(), ms_to_us(delay_ms)), 0, fn, arg);
}

int64_t ioloop_run_every(ioloop_t *loop, uint64_t interval_ms, ioloop_callback_fn fn,
                         void *arg)
{
    uint64_t interval_us = ms_to_us(interval_ms);
    int err;

    if (loop == NULL || fn == NULL || interval_ms == 0)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    return timer_add(loop, add_clamped(clock_us_ceil(), interval_us), interval_us, fn, arg);
}

int ioloop_cancel_timer(ioloop_t *loop, int64_t timer_id)
{
    struct ioloop_timers *t;
    struct ioloop_timer *tm;
    uint32_t slot = (uint32_t)timer_id;
    int err;

    if (loop == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    t = &loop->timers;
    if (timer_id <= 0 || slot >= t->nslots)
        return -ENOENT;
    tm = &t->slots[slot];
    if (tm->fn == NULL || tm->gen != (uint32_t)(timer_id >> 32))
        return -ENOENT;
    if (tm->pos != POS_RUNNING)
        heap_remove(t, tm->pos);
    slot_release(loop, slot);
    return 0;
}

/* ---- Arming and running ----------------------------------------------------------------- */

void ioloop__timers_arm(ioloop_t *loop)
{
    struct ioloop_timers *t = &loop->timers;
    uint64_t want = t->heap_len > 0 ? t->heap[0].deadline_us : ARMED_NONE;
    struct itimerspec its = {0};

    t->batch_seq = t->next_seq;
    /* Re-arm only when the earliest deadline moved earlier. When it moved later (the earliest
     * timer was cancelled, say a connection's linger or idle timer), the timerfd is left to
     * fire early: that costs one wakeup when it comes, while re-arming now would cost a
     * syscall for every cancel. Firing sets ARMED_FORCE, so the next call re-arms. */
    if (want == t->armed_us || (t->armed_us != ARMED_FORCE && want > t->armed_us))
        return;
    /* A zero it_value would disarm; deadlines are never zero, even when already past. */
    if (want != ARMED_NONE) {
        its.it_value.tv_sec = (time_t)(want / 1000000u);
        its.it_value.tv_nsec = (long)(want % 1000000u) * 1000;
    }
    if (timerfd_settime(t->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        abort(); /* only EBADF or EINVAL are possible: the loop is corrupt */
    t->armed_us = want;
}

/* The next deadline of a repeating timer: on the grid of its first deadline, after now. */
static uint64_t next_deadline(uint64_t deadline_us, uint64_t interval_us, uint64_t now_us)
{
    uint64_t next = add_clamped(deadline_us, interval_us);

    if (next <= now_us && next < DEADLINE_MAX_US)
        next = add_clamped(next, ((now_us - next) / interval_us + 1) * interval_us);
    return next;
}

void ioloop__timers_run(ioloop_t *loop)
{
    struct ioloop_timers *t = &loop->timers;
    uint64_t now_us = loop->now_us;

    if (!t->fired)
        return;
    t->fired = false;
    t->armed_us = ARMED_FORCE; /* clears the timerfd's expiry before the next wait */

    while (t->heap_len > 0) {
        struct ioloop_timer_node top = t->heap[0];
        struct ioloop_timer *tm = &t->slots[top.slot];
        uint32_t gen = tm->gen;
        ioloop_callback_fn fn = tm->fn;
        void *arg = tm->arg;

        /* Timers scheduled during this iteration (seq >= batch_seq) wait for the next one,
         * even with delay 0; older ones due by the same deadline sort before them. */
        if (top.deadline_us > now_us || tm->seq >= t->batch_seq)
            break;
        heap_remove(t, 0);
        ioloop__stat_add(&loop->stats.timers_fired, 1);
        if (tm->interval_us == 0) {
            slot_release(loop, top.slot); /* fired: its id is unknown from now on */
            fn(loop, arg);
            continue;
        }
        tm->pos = POS_RUNNING;
        fn(loop, arg);
        /* Still live (it may have cancelled itself)? Then on to its next tick. The slab may
         * have moved: look the slot up again. */
        tm = &t->slots[top.slot];
        if (tm->fn != NULL && tm->gen == gen && tm->pos == POS_RUNNING)
            heap_push(t, top.slot,
                      next_deadline(top.deadline_us, tm->interval_us, ioloop__clock_ns() / 1000u));
    }
}
