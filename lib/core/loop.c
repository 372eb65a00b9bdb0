/*
 * The loop itself: the epoll set, the handler table indexed by fd, one iteration, start and
 * stop, and the thread checks. Timers, the callback queue and signals live in their own files
 * and plug into the table like any other fd.
 *
 * Stale events. One epoll_wait returns a batch; a handler early in the batch may remove a
 * handler whose event is later in the same batch, close its fd, and even register the same fd
 * number again. A removal marks the slot REMOVED until the next wait, and events for a REMOVED
 * slot are dropped: they were collected for the registration that is gone.
 *
 * Deferred removal (libev's trick). EPOLL_CTL_DEL waits in loop->changes until right before the
 * next epoll_wait, so an fd removed and registered again within one iteration costs a single
 * EPOLL_CTL_MOD instead of a DEL and an ADD. The MOD also proves that the fd still names the
 * file the kernel has registered; if the fd was closed and its number reused, MOD fails with
 * ENOENT and a plain ADD follows.
 *
 * Orphans. A DEL that comes after the application closed the fd fails, which is harmless --
 * unless a duplicate of the fd (dup, fork) keeps the file open: then the registration outlives
 * the fd and, level-triggered, reports its events on every wait. Every ADD bumps the slot's
 * generation and the generation travels in epoll_data beside the fd, so such an event matches
 * no live registration. The loop then rebuilds its epoll set from the table, which is the only
 * way to drop a registration whose fd is gone. If the fd number comes to name that file again
 * (dup2 from the duplicate) before an event gave the orphan away, registering the fd meets it:
 * ADD fails with EEXIST, and a MOD adopts the orphan under the new generation.
 */
#include "core/loop.h"

#include <errno.h>
#include <sched.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/work.h"

/* The first batch size; it doubles while batches come back full, up to the cap. */
#define EVENTS_MIN 64
#define EVENTS_MAX 4096

/* The smallest handler table: covers the fds a fresh process opens first. */
#define HANDLERS_MIN 64

#define USER_EVENTS (IOLOOP_READ | IOLOOP_WRITE)

/* The loop this thread is running, for ioloop_current(). */
static _Thread_local ioloop_t *current_loop;
/* Its address tells threads apart: unique among live threads, cheaper than pthread_self(). */
static _Thread_local char thread_token;

static size_t run_deferred(ioloop_t *loop);

static uintptr_t self(void)
{
    return (uintptr_t)&thread_token;
}

uint64_t ioloop__clock_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * The states of loop->running. A start moves it from LOOP_IDLE to LOOP_STARTING, stores its
 * thread as the owner, and only then moves it to LOOP_RUNNING (release): a thread that sees
 * LOOP_RUNNING sees the new owner too. LOOP_STARTING means the loop is about to run in some
 * other thread (the starting thread itself never sees it), so the check refuses everyone.
 */
enum { LOOP_IDLE, LOOP_STARTING, LOOP_RUNNING };

int ioloop__check_thread(const ioloop_t *loop)
{
    int running = atomic_load_explicit(&loop->running, memory_order_acquire);

    if (running == LOOP_STARTING ||
        (running == LOOP_RUNNING &&
         atomic_load_explicit(&loop->owner, memory_order_relaxed) != self()))
        return -EPERM;
    return 0;
}

static _Atomic uint32_t next_uid = 1;
static atomic_uint live_loops; /* made and not yet freed, in this process */

unsigned ioloop__live_loops(void)
{
    return atomic_load_explicit(&live_loops, memory_order_relaxed);
}

uint32_t ioloop__uid_reserve(unsigned n)
{
    uint32_t first = atomic_load_explicit(&next_uid, memory_order_relaxed), next;

    do {
        if (first > IOLOOP__UID_MAX - n + 1)
            first = 1; /* wrap: uids are unique among the last 2^22 - 1 loops only */
        next = first + n;
    } while (!atomic_compare_exchange_weak_explicit(&next_uid, &first, next,
                                                    memory_order_relaxed, memory_order_relaxed));
    return first;
}

ioloop_t *ioloop__new_with_uid(uint32_t uid)
{
    /* Aligned as the struct asks (a cache line, for the callback queue's sake); its size is a
     * multiple of that alignment, as aligned_alloc() wants. */
    ioloop_t *loop = aligned_alloc(alignof(ioloop_t), sizeof *loop);
    int err;

    if (loop == NULL)
        return NULL;
    memset(loop, 0, sizeof *loop);
    atomic_fetch_add_explicit(&live_loops, 1, memory_order_relaxed); /* ioloop_free() takes it */
    loop->uid = uid;
    loop->timers.tfd = -1;
    loop->cbq.efd = -1;
    loop->deferred_tail = &loop->deferred;
    loop->owned.prev = loop->owned.next = &loop->owned;
    atomic_init(&loop->owner, self());
    loop->now_us = ioloop__clock_ns() / 1000u;

    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    loop->events = malloc(EVENTS_MIN * sizeof *loop->events);
    loop->nevents = EVENTS_MIN;
    if (loop->epfd < 0)
        err = -errno;
    else if (loop->events == NULL)
        err = -ENOMEM;
    else if ((err = ioloop__cbq_init(loop)) == 0 && (err = ioloop__timers_init(loop)) == 0)
        return loop;
    ioloop_free(loop);
    errno = -err;
    return NULL;
}

ioloop_t *ioloop_new(void)
{
    return ioloop__new_with_uid(ioloop__uid_reserve(1));
}

void ioloop_free(ioloop_t *loop)
{
    if (loop == NULL)
        return;
    if (atomic_load_explicit(&loop->running, memory_order_acquire)) {
        fprintf(stderr, "ioloop_free: loop %p is running; stop it and let ioloop_start() "
                        "return first\n", (void *)loop);
        abort();
    }
    /* Work submitted for the loop ends first, while everything its dones may use still
     * works: they run here, in this thread. Then what the loop owns ends (connections get
     * on_close(-ECANCELED)), while timers, handlers and the callback queue still work for the
     * clean-ups it runs. */
    ioloop__work_loop_fini(loop);
    ioloop__run_deferred_all(loop);
    while (loop->owned.next != &loop->owned)
        loop->owned.next->cancel(loop, loop->owned.next);
    ioloop__run_deferred_all(loop);
    ioloop__signals_fini(loop);
    ioloop__timers_fini(loop);
    ioloop__cbq_fini(loop);
    if (loop->epfd >= 0)
        close(loop->epfd);
    free(loop->changes);
    free(loop->handlers);
    free(loop->events);
    free(loop);
    atomic_fetch_sub_explicit(&live_loops, 1, memory_order_relaxed);
}

void ioloop__own(ioloop_t *loop, struct ioloop_owned *node)
{
    node->prev = loop->owned.prev;
    node->next = &loop->owned;
    loop->owned.prev->next = node;
    loop->owned.prev = node;
}

void ioloop__disown(struct ioloop_owned *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = node;
}

void ioloop_set_data(ioloop_t *loop, void *data)
{
    if (loop != NULL)
        atomic_store_explicit(&loop->data, data, memory_order_release);
}

void *ioloop_data(const ioloop_t *loop)
{
    return loop != NULL ? atomic_load_explicit(&loop->data, memory_order_acquire) : NULL;
}

/* ---- The handler table ------------------------------------------------------------------ */

static uint32_t epoll_mask(uint32_t events)
{
    uint32_t mask = 0;

    if (events & IOLOOP_READ)
        mask |= EPOLLIN | EPOLLRDHUP;
    if (events & IOLOOP_WRITE)
        mask |= EPOLLOUT;
    return mask;
}

static bool valid_events(int events)
{
    return (events & USER_EVENTS) != 0 && (events & ~USER_EVENTS) == 0;
}

/* Grows the table so that `fd` has a slot; new slots are zero (unregistered, generation 0).
 * A new table comes from calloc() and only the used part is copied: a large calloc is fresh
 * zeroed pages from the kernel, so the slots beyond the highest fd cost no memory until a fd
 * that high is registered. */
static int handlers_reserve(ioloop_t *loop, int fd)
{
    int n = loop->nhandlers ? loop->nhandlers : HANDLERS_MIN;
    struct ioloop_handler *table;

    if (fd < loop->nhandlers)
        return 0;
    while (n <= fd)
        n = n > INT32_MAX / 2 ? INT32_MAX : n * 2;
    table = calloc((size_t)n, sizeof *table);
    if (table == NULL)
        return -ENOMEM;
    if (loop->nhandlers > 0)
        memcpy(table, loop->handlers, (size_t)loop->nhandlers * sizeof *table);
    free(loop->handlers);
    loop->handlers = table;
    loop->nhandlers = n;
    return 0;
}

/* Makes room in the change list for one more slot IN_EPOLL, so that removing never fails:
 * each slot IN_EPOLL may be queued once, beside the entries queued already. */
static int changes_reserve(ioloop_t *loop)
{
    int cap = loop->changes_cap ? loop->changes_cap * 2 : HANDLERS_MIN;
    int *changes;

    if (loop->in_epoll + loop->nchanges < loop->changes_cap)
        return 0;
    changes = realloc(loop->changes, (size_t)cap * sizeof *changes);
    if (changes == NULL)
        return -ENOMEM;
    loop->changes = changes;
    loop->changes_cap = cap;
    return 0;
}

static struct ioloop_handler *handler_find(ioloop_t *loop, int fd)
{
    struct ioloop_handler *h;

    if (fd < 0 || fd >= loop->nhandlers)
        return NULL;
    h = &loop->handlers[fd];
    return h->fn != NULL && !(h->events & IOLOOP__HANDLER_INTERNAL) ? h : NULL;
}

/* Puts fd into the epoll set under the slot's next generation. Returns 0 or -errno. */
static int epoll_add(ioloop_t *loop, int fd, uint32_t events)
{
    struct ioloop_handler *h = &loop->handlers[fd];
    struct epoll_event ev = {.events = epoll_mask(events)};

    ev.data.u64 = (uint64_t)(h->gen + 1) << 32 | (uint32_t)fd;
    /* EEXIST for a slot we do not hold: the kernel still has this very file under this fd, an
     * orphan (see the top of this file) that dup2() brought back. Adopt it: MOD gives it our
     * events and the new generation. */
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 &&
        (errno != EEXIST || epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) < 0))
        return -errno;
    h->gen++;
    h->state |= IOLOOP__IN_EPOLL;
    loop->in_epoll++;
    return 0;
}

int ioloop__handler_add(ioloop_t *loop, int fd, uint32_t events, ioloop_handler_fn fn,
                        void *arg)
{
    struct epoll_event ev;
    struct ioloop_handler *h;
    int err;

    if (fd < 0)
        return -EBADF;
    if (handlers_reserve(loop, fd) < 0 || changes_reserve(loop) < 0)
        return -ENOMEM;
    h = &loop->handlers[fd];
    if (h->fn != NULL)
        return -EEXIST;

    ev.events = epoll_mask(events);
    if (h->state & IOLOOP__IN_EPOLL) {
        /* Removed this iteration, DEL still pending: if fd is still the registered file, one
         * MOD makes the registration ours again; ENOENT means it is another file now. */
        ev.data.u64 = (uint64_t)h->gen << 32 | (uint32_t)fd;
        if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
            if (errno != ENOENT)
                return -errno;
            h->state &= (uint16_t)~IOLOOP__IN_EPOLL;
            loop->in_epoll--;
        }
    }
    if (!(h->state & IOLOOP__IN_EPOLL) && (err = epoll_add(loop, fd, events)) < 0)
        return err;
    h->state &= (uint16_t)~IOLOOP__PAUSED;
    h->fn = fn;
    h->arg = arg;
    h->events = (uint16_t)events;
    if (!(events & IOLOOP__HANDLER_INTERNAL))
        ioloop__stat_add(&loop->stats.handlers, 1);
    return 0;
}

int ioloop__handler_set(ioloop_t *loop, int fd, uint32_t events)
{
    struct ioloop_handler *h = &loop->handlers[fd];
    uint32_t internal = h->events & IOLOOP__HANDLER_INTERNAL;
    struct epoll_event ev;

    if ((h->events & USER_EVENTS) == events)
        return 0;
    if (!(h->state & IOLOOP__IN_EPOLL)) { /* paused, out of the set: resume adds this mask */
        h->events = (uint16_t)(events | internal);
        return 0;
    }
    ev.events = epoll_mask(events);
    ev.data.u64 = (uint64_t)h->gen << 32 | (uint32_t)fd;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
        return -errno;
    h->events = (uint16_t)(events | internal);
    return 0;
}

void ioloop__handler_del(ioloop_t *loop, int fd)
{
    struct ioloop_handler *h = &loop->handlers[fd];

    if (!(h->events & IOLOOP__HANDLER_INTERNAL))
        ioloop__stat_add(&loop->stats.handlers, (uint64_t)-1);
    h->fn = NULL;
    h->arg = NULL;
    h->events = 0;
    h->state = (uint16_t)((h->state | IOLOOP__REMOVED) & ~IOLOOP__PAUSED);
    if (!(h->state & IOLOOP__QUEUED)) {
        h->state |= IOLOOP__QUEUED;
        loop->changes[loop->nchanges++] = fd; /* changes_reserve() made room at the add */
    }
}

void ioloop__handler_forget(ioloop_t *loop, int fd)
{
    struct ioloop_handler *h = &loop->handlers[fd];

    ioloop__handler_del(loop, fd);
    h->state &= (uint16_t)~IOLOOP__IN_EPOLL;
    loop->in_epoll--;
}

void ioloop__handler_del_now(ioloop_t *loop, int fd)
{
    (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
    ioloop__handler_forget(loop, fd);
}

/* Before a wait: the DELs of the fds removed this iteration (and not registered again). A DEL
 * for an fd closed since fails, which is harmless: closing it dropped the registration, or
 * left an orphan that rebuild_epoll() collects. */
static void flush_changes(ioloop_t *loop)
{
    for (int i = 0; i < loop->nchanges; i++) {
        int fd = loop->changes[i];
        struct ioloop_handler *h = &loop->handlers[fd];

        if (h->fn == NULL && (h->state & IOLOOP__IN_EPOLL)) {
            (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
            h->state &= (uint16_t)~IOLOOP__IN_EPOLL;
            loop->in_epoll--;
        }
        h->state &= (uint16_t)~(IOLOOP__REMOVED | IOLOOP__QUEUED);
    }
    loop->nchanges = 0;
}

/* Replaces the epoll set with a fresh one holding exactly the table's registrations: the cure
 * for an orphaned registration (see the top of this file). O(table), and rare. If the new set
 * cannot be had, the old one stays and the next orphan event tries again. */
static void rebuild_epoll(ioloop_t *loop)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);

    loop->rebuild = false;
    if (epfd < 0)
        return;
    for (int fd = 0; fd < loop->nhandlers; fd++) {
        struct ioloop_handler *h = &loop->handlers[fd];
        struct epoll_event ev;

        if (!(h->state & IOLOOP__IN_EPOLL))
            continue;
        ev.events = epoll_mask(h->events);
        ev.data.u64 = (uint64_t)h->gen << 32 | (uint32_t)fd;
        /* Fails only for an fd the application closed while still registered (which the API
         * forbids); such a registration stays silent until removed. */
        (void)epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
    close(loop->epfd);
    loop->epfd = epfd;
    ioloop__stat_add(&loop->stats.epoll_rebuilds, 1);
}

int ioloop_add_handler(ioloop_t *loop, int fd, int events, ioloop_handler_fn fn, void *arg)
{
    int err;

    if (loop == NULL || fn == NULL || !valid_events(events))
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    return ioloop__handler_add(loop, fd, (uint32_t)events, fn, arg);
}

/* The checks of the entry points that act on a registered fd: 0 with *h set, -EINVAL (NULL
 * loop), -EPERM (another thread while the loop runs) or -ENOENT (no handler for fd). */
static int registered(ioloop_t *loop, int fd, struct ioloop_handler **h)
{
    int err;

    if (loop == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    if ((*h = handler_find(loop, fd)) == NULL)
        return -ENOENT;
    return 0;
}

int ioloop_update_handler(ioloop_t *loop, int fd, int events)
{
    struct ioloop_handler *h;
    int err;

    if (!valid_events(events))
        return -EINVAL;
    if ((err = registered(loop, fd, &h)) < 0)
        return err;
    return ioloop__handler_set(loop, fd, (uint32_t)events);
}

int ioloop_remove_handler(ioloop_t *loop, int fd)
{
    struct ioloop_handler *h;
    int err;

    if ((err = registered(loop, fd, &h)) < 0)
        return err;
    ioloop__handler_del(loop, fd);
    return 0;
}

int ioloop_pause_handler(ioloop_t *loop, int fd)
{
    struct ioloop_handler *h;
    int err;

    if ((err = registered(loop, fd, &h)) < 0)
        return err;
    h->state |= IOLOOP__PAUSED; /* the registration stays until an event finds it paused */
    return 0;
}

int ioloop_resume_handler(ioloop_t *loop, int fd)
{
    struct ioloop_handler *h;
    int err;

    if ((err = registered(loop, fd, &h)) < 0)
        return err;
    if (!(h->state & IOLOOP__PAUSED))
        return 0;
    /* An event came while it was paused, and took the registration: a new generation. */
    if (!(h->state & IOLOOP__IN_EPOLL) && (err = epoll_add(loop, fd, h->events)) < 0)
        return err;
    h->state &= (uint16_t)~IOLOOP__PAUSED;
    return 0;
}

/* ---- Deferred work ---------------------------------------------------------------------- */

void ioloop__defer(ioloop_t *loop, struct ioloop_deferred *node)
{
    node->next = NULL;
    *loop->deferred_tail = node;
    loop->deferred_tail = &node->next;
}

/* Runs the deferred work queued so far; what it defers in turn waits for the next round.
 * Returns how many nodes ran. */
static size_t run_deferred(ioloop_t *loop)
{
    struct ioloop_deferred *node = loop->deferred;
    size_t n = 0;

    loop->deferred = NULL;
    loop->deferred_tail = &loop->deferred;
    while (node != NULL) {
        struct ioloop_deferred *next = node->next; /* fn may free the node */

        node->fn(loop, node);
        node = next;
        n++;
    }
    return n;
}

void ioloop__run_deferred_all(ioloop_t *loop)
{
    while (run_deferred(loop) > 0)
        ;
}

/* ---- One iteration ---------------------------------------------------------------------- */

/* Translates epoll bits into the IOLOOP_* bits the handler asked for. On an error or hangup the
 * requested bits come along, so the handler's read or write meets the error itself. */
static int ready_events(uint32_t epoll_events, uint32_t wanted)
{
    int ready = 0;

    if (epoll_events & (EPOLLIN | EPOLLPRI | EPOLLRDHUP))
        ready |= IOLOOP_READ;
    if (epoll_events & EPOLLOUT)
        ready |= IOLOOP_WRITE;
    if (epoll_events & (EPOLLERR | EPOLLHUP))
        ready |= IOLOOP_ERROR | (int)wanted;
    return ready & ((int)wanted | IOLOOP_ERROR);
}

static void dispatch(ioloop_t *loop, int n)
{
    uint64_t delivered = 0;

    for (int i = 0; i < n; i++) {
        uint64_t data = loop->events[i].data.u64;
        int fd = (int)(uint32_t)data;
        uint32_t gen = (uint32_t)(data >> 32);
        /* Re-read the slot for every event: an earlier callback may have removed or
         * re-registered this fd, or grown (moved) the table. */
        struct ioloop_handler *h = &loop->handlers[fd];
        int ready;

        if (h->state & IOLOOP__REMOVED)
            continue;
        if (h->fn == NULL || h->gen != gen) {
            loop->rebuild = true; /* no registration of ours: an orphan */
            continue;
        }
        if (h->state & IOLOOP__PAUSED) {
            /* Its fd has something to say: out of the set until the resume, so that a
             * level-triggered event (a hang-up, whatever the mask) cannot wake us again. */
            (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
            h->state &= (uint16_t)~IOLOOP__IN_EPOLL;
            loop->in_epoll--;
            continue;
        }
        ready = ready_events(loop->events[i].events, h->events & USER_EVENTS);
        if (ready == 0)
            continue;
        if (!(h->events & IOLOOP__HANDLER_INTERNAL))
            delivered++;
        h->fn(loop, fd, ready, h->arg);
        if (loop->deferred != NULL)
            run_deferred(loop); /* what the handler wrote goes out now, from a hot buffer */
    }
    ioloop__stat_add(&loop->stats.io_events, delivered);
}

/* Records how long the loop has been busy since it woke (loop->now_us). */
static void note_lag(ioloop_t *loop)
{
    uint64_t lag_us = ioloop__clock_ns() / 1000u - loop->now_us;

    if (lag_us > atomic_load_explicit(&loop->stats.max_lag_us, memory_order_relaxed))
        atomic_store_explicit(&loop->stats.max_lag_us, lag_us, memory_order_relaxed);
}

/*
 * One iteration: wait for events (not at all if callbacks or deferred work are queued), run the
 * ready fd handlers, then the due timers, then the callbacks queued so far. Deferred work (the
 * connections' flushes of what was written, their on_close) runs after each fd handler, after
 * the batch of timers and after the batch of callbacks: output written by a handler reaches
 * the kernel as soon as that handler returns, while what a batch of timers or callbacks wrote
 * to one connection goes out together. The timerfd and the eventfd are handlers like any
 * other; theirs only note that timers or callbacks are due, so that the order above holds
 * whatever order epoll reports them in.
 */
static void iterate(ioloop_t *loop)
{
    int n;

    ioloop__timers_arm(loop);
    flush_changes(loop);
    if (loop->rebuild)
        rebuild_epoll(loop);
    n = epoll_wait(loop->epfd, loop->events, loop->nevents,
                   loop->deferred != NULL || ioloop__cbq_prepare_wait(loop) ? 0 : -1);
    if (n < 0) {
        if (errno != EINTR)
            abort(); /* only EBADF, EFAULT or EINVAL remain: the loop is corrupt */
        n = 0;
    }
    loop->now_us = ioloop__clock_ns() / 1000u;
    ioloop__stat_add(&loop->stats.iterations, 1);

    dispatch(loop, n);
    ioloop__timers_run(loop);
    run_deferred(loop);
    ioloop__cbq_run(loop);
    run_deferred(loop);

    note_lag(loop);

    if (n == loop->nevents && n < EVENTS_MAX) {
        struct epoll_event *bigger = realloc(loop->events, 2 * (size_t)n * sizeof *bigger);

        if (bigger != NULL) {
            loop->events = bigger;
            loop->nevents = 2 * n;
        }
    }
}

int ioloop_start(ioloop_t *loop)
{
    ioloop_t *outer;
    int idle = LOOP_IDLE;

    if (loop == NULL)
        return -EINVAL;
    if (!atomic_compare_exchange_strong(&loop->running, &idle, LOOP_STARTING))
        return -EBUSY;
    atomic_store_explicit(&loop->owner, self(), memory_order_relaxed);
    atomic_store_explicit(&loop->running, LOOP_RUNNING, memory_order_release);
    outer = current_loop;
    current_loop = loop;

    ioloop__cbq_begin(loop);
    loop->now_us = ioloop__clock_ns() / 1000u;
    ioloop__cbq_run(loop); /* what was posted before start runs before the first wait */
    note_lag(loop);
    while (!ioloop__cbq_stop_requested(loop))
        iterate(loop);
    /* Posting is closed: run what was accepted before the stop, and what that defers. */
    while (ioloop__cbq_drain(loop) + run_deferred(loop) > 0)
        ;
    ioloop__cbq_end(loop);

    current_loop = outer;
    atomic_store_explicit(&loop->running, LOOP_IDLE, memory_order_release);
    return 0;
}

void ioloop__wait_stopped(const ioloop_t *loop)
{
    while (atomic_load_explicit(&loop->running, memory_order_acquire) != LOOP_IDLE)
        sched_yield();
}

void ioloop_stop(ioloop_t *loop)
{
    if (loop != NULL)
        ioloop__cbq_request_stop(loop);
}

/* ---- Introspection ---------------------------------------------------------------------- */

uint64_t ioloop_now_ms(const ioloop_t *loop)
{
    return loop != NULL ? loop->now_us / 1000u : 0;
}

int ioloop_in_loop_thread(const ioloop_t *loop)
{
    return loop != NULL && atomic_load_explicit(&loop->owner, memory_order_relaxed) == self();
}

ioloop_t *ioloop_current(void)
{
    return current_loop;
}

void ioloop_get_stats(const ioloop_t *loop, ioloop_stats_t *out)
{
    const struct ioloop_counters *s;

    if (loop == NULL || out == NULL)
        return;
    s = &loop->stats;
    out->iterations = atomic_load_explicit(&s->iterations, memory_order_relaxed);
    out->io_events = atomic_load_explicit(&s->io_events, memory_order_relaxed);
    out->callbacks_run = atomic_load_explicit(&s->callbacks_run, memory_order_relaxed);
    out->timers_fired = atomic_load_explicit(&s->timers_fired, memory_order_relaxed);
    out->handlers = atomic_load_explicit(&s->handlers, memory_order_relaxed);
    out->timers_pending = atomic_load_explicit(&s->timers_pending, memory_order_relaxed);
    out->callbacks_pending = atomic_load_explicit(&loop->cbq.len, memory_order_relaxed) +
                             atomic_load_explicit(&loop->cbq.nnodes, memory_order_relaxed);
    out->wakeups = atomic_load_explicit(&s->wakeups, memory_order_relaxed);
    out->max_lag_us = atomic_load_explicit(&s->max_lag_us, memory_order_relaxed);
    out->epoll_rebuilds = atomic_load_explicit(&s->epoll_rebuilds, memory_order_relaxed);
}
