/*
 * Unit tests for the loop's timers (ioloop_run_after, ioloop_run_every, ioloop_cancel_timer),
 * written against the contract in include/ioloop/loop.h: a timer never fires early, equal
 * deadlines run in scheduling order, a timer scheduled from a timer callback waits for the next
 * batch, cancellation holds even inside the running batch, run_every keeps a fixed rate and
 * skips missed ticks, ids are unique, memory stays bounded and the stats count what happened.
 * Each test builds its own loop, frees it and checks that no fd leaked. A watchdog thread stops
 * a loop that hangs, so a broken timer fails its own test instead of timing out the binary.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "helpers.h"

/* The library's timerfd_settime() calls land in __wrap_timerfd_settime (test/meson.build
 * links this test with --wrap), which counts them and passes each one on. */
int __real_timerfd_settime(int fd, int flags, const struct itimerspec *new_value,
                           struct itimerspec *old_value);
int __wrap_timerfd_settime(int fd, int flags, const struct itimerspec *new_value,
                           struct itimerspec *old_value);

static atomic_int settime_calls;
/* The last arming (a non-zero it_value) the library asked for, in microseconds, its flags,
 * and the clock each timerfd was created with (timerfd_create is wrapped as well). */
static _Atomic uint64_t armed_value_us;
static atomic_int armed_flags = -1;
static atomic_int created_clock = -1;

int __real_timerfd_create(int clockid, int flags);
int __wrap_timerfd_create(int clockid, int flags);

int __wrap_timerfd_create(int clockid, int flags)
{
    atomic_store(&created_clock, clockid);
    return __real_timerfd_create(clockid, flags);
}

int __wrap_timerfd_settime(int fd, int flags, const struct itimerspec *new_value,
                           struct itimerspec *old_value)
{
    atomic_fetch_add(&settime_calls, 1);
    if (new_value != NULL &&
        (new_value->it_value.tv_sec != 0 || new_value->it_value.tv_nsec != 0)) {
        atomic_store(&armed_value_us, (uint64_t)new_value->it_value.tv_sec * 1000000u +
                                          (uint64_t)new_value->it_value.tv_nsec / 1000u);
        atomic_store(&armed_flags, flags);
    }
    return __real_timerfd_settime(fd, flags, new_value, old_value);
}

/* Sanitizers put freed memory in quarantine and pad every allocation, so the memory bounds
 * below are only asserted in plain builds (the figures are still printed). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

/* Long enough that no timer of these tests is late by this much, even under TSan. */
#define WATCHDOG_MS 10000

/* A delay that never expires while a test runs (ten minutes). */
#define FAR_FUTURE_MS 600000

/* ---- Helpers ---------------------------------------------------------------------------- */


/* Runs the loop in this thread under a watchdog; fails the test if the watchdog fired. */
static void run_loop(ioloop_t *loop)
{
    test_watchdog_t w;

    test_watchdog_arm(&w, loop, WATCHDOG_MS);
    assert_int_equal(ioloop_start(loop), 0);
    assert_false(test_watchdog_disarm(&w));
}

static void busy_wait_us(uint64_t us)
{
    uint64_t end = test_now_us() + us;

    while (test_now_us() < end)
        ;
}

/*
 * Holds the calling (loop) thread for `us` by sleeping, not spinning: the loop is just as
 * blocked, but on a loaded machine a sleeping thread is scheduled again promptly, where a
 * spinning one is preempted and made late.
 */
static void hold_loop_us(uint64_t us)
{
    uint64_t end = test_now_us() + us;
    struct timespec ts = {(time_t)(end / 1000000u), (long)(end % 1000000u) * 1000L};

    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void busy_wait_until_us(uint64_t when)
{
    while (test_now_us() < when)
        ;
}

static void stop_cb(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

static void count_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    (*(int *)arg)++;
}

static ioloop_stats_t get_stats(const ioloop_t *loop)
{
    ioloop_stats_t s;

    memset(&s, 0xff, sizeof(s));
    ioloop_get_stats(loop, &s);
    return s;
}

/* A pipe whose read end is readable (one byte written and never read). */
static void make_ready_pipe(int fds[2])
{
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    assert_int_equal(write(fds[1], "x", 1), 1);
}

static void close_pipe(int fds[2])
{
    close(fds[0]);
    close(fds[1]);
}

/* Resident set size in bytes, from /proc/self/statm. */
static int64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;

    if (f == NULL)
        abort();
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        abort();
    fclose(f);
    return (int64_t)resident * sysconf(_SC_PAGESIZE);
}

/* Bytes malloc has handed out and not taken back (small chunks plus mmapped ones). */
static int64_t malloc_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();

    return (int64_t)(mi.uordblks + mi.hblkhd);
}

/* A deterministic pseudo-random sequence (xorshift64*), so failures reproduce. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static int compare_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* ---- run_after never fires early, and exactly once ------------------------------------- */

#define NEVER_EARLY_DELAYS 5
static const uint64_t never_early_delays[NEVER_EARLY_DELAYS] = {1, 2, 5, 10, 25};

typedef struct early_probe {
    uint64_t delay_ms;
    uint64_t called_us; /* test_now_us() just before ioloop_run_after() */
    uint64_t fired_us;
    int fired;
    int *remaining;
} early_probe_t;

typedef struct never_early_ctx {
    early_probe_t before_start[NEVER_EARLY_DELAYS];
    early_probe_t late_in_iteration[NEVER_EARLY_DELAYS];
    int remaining;
    int schedule_errors;
} never_early_ctx_t;

static void never_early_fire_cb(ioloop_t *loop, void *arg)
{
    early_probe_t *p = arg;

    p->fired_us = test_now_us();
    p->fired++;
    /* After the last one, linger 20 ms so that a second firing would be seen. */
    if (p->fired == 1 && --*p->remaining == 0)
        ioloop_run_after(loop, 20, stop_cb, NULL);
}

static void schedule_probes(ioloop_t *loop, early_probe_t *probes, int *remaining, int *errors)
{
    for (int i = 0; i < NEVER_EARLY_DELAYS; i++) {
        probes[i].delay_ms = never_early_delays[i];
        probes[i].remaining = remaining;
        probes[i].called_us = test_now_us();
        if (ioloop_run_after(loop, probes[i].delay_ms, never_early_fire_cb, &probes[i]) <= 0)
            (*errors)++;
    }
}

/* Runs late in a long iteration: a deadline taken from a cached "now" would be early. */
static void never_early_late_cb(ioloop_t *loop, void *arg)
{
    never_early_ctx_t *ctx = arg;

    busy_wait_us(10000);
    schedule_probes(loop, ctx->late_in_iteration, &ctx->remaining, &ctx->schedule_errors);
}

static void check_probes(const early_probe_t *probes)
{
    for (int i = 0; i < NEVER_EARLY_DELAYS; i++) {
        assert_int_equal(probes[i].fired, 1);
        if (probes[i].fired_us - probes[i].called_us < probes[i].delay_ms * 1000) {
            fail_msg("run_after(%llu ms) fired after %llu us\n",
                     (unsigned long long)probes[i].delay_ms,
                     (unsigned long long)(probes[i].fired_us - probes[i].called_us));
        }
    }
}

static void test_timer_run_after_never_early(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    never_early_ctx_t ctx;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.remaining = 2 * NEVER_EARLY_DELAYS;
    schedule_probes(loop, ctx.before_start, &ctx.remaining, &ctx.schedule_errors);
    assert_true(ioloop_run_after(loop, 0, never_early_late_cb, &ctx) > 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    check_probes(ctx.before_start);
    check_probes(ctx.late_in_iteration);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- run_after(0) runs on the next iteration ------------------------------------------- */

typedef struct zero_probe {
    uint64_t scheduled_iteration;
    uint64_t fired_iteration;
    int fired;
    int fired_before_return; /* the timer had run by the time run_after() returned */
    int *remaining;
} zero_probe_t;

typedef struct zero_ctx {
    zero_probe_t from_outside, from_timer, from_handler, from_callback;
    int remaining;
    int pipe_fds[2];
    int other_timer_runs; /* the timer due alongside the handler */
    int schedule_errors;
} zero_ctx_t;

static void zero_fire_cb(ioloop_t *loop, void *arg)
{
    zero_probe_t *p = arg;

    p->fired_iteration = get_stats(loop).iterations;
    if (p->fired++ == 0 && --*p->remaining == 0)
        ioloop_stop(loop);
}

static void zero_schedule(ioloop_t *loop, zero_probe_t *p, int *remaining)
{
    p->remaining = remaining;
    p->scheduled_iteration = get_stats(loop).iterations;
    if (ioloop_run_after(loop, 0, zero_fire_cb, p) <= 0)
        p->fired_before_return = -1;
    else if (p->fired != 0)
        p->fired_before_return = 1;
    /* The deadline is now surely past: "due" alone must not pull it into this iteration. */
    busy_wait_us(100);
}

static void zero_from_timer_cb(ioloop_t *loop, void *arg)
{
    zero_ctx_t *ctx = arg;

    zero_schedule(loop, &ctx->from_timer, &ctx->remaining);
}

static void zero_from_callback_cb(ioloop_t *loop, void *arg)
{
    zero_ctx_t *ctx = arg;

    zero_schedule(loop, &ctx->from_callback, &ctx->remaining);
}

static void zero_from_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    zero_ctx_t *ctx = arg;

    (void)events;
    ioloop_remove_handler(loop, fd);
    zero_schedule(loop, &ctx->from_handler, &ctx->remaining);
}

/*
 * Makes the pipe readable in the same wait in which another timer is due: that timer was armed
 * for a future deadline which passed while this callback blocked the loop.
 */
static void zero_block_then_ready_cb(ioloop_t *loop, void *arg)
{
    zero_ctx_t *ctx = arg;

    (void)loop;
    busy_wait_us(4000);
    if (write(ctx->pipe_fds[1], "x", 1) != 1)
        ctx->schedule_errors++;
}

static void zero_post_blocker_cb(ioloop_t *loop, void *arg)
{
    /* Posted from a callback: runs on a later iteration, after the 2 ms timer was armed. */
    if (ioloop_add_callback(loop, zero_block_then_ready_cb, arg) != 0)
        ((zero_ctx_t *)arg)->schedule_errors++;
}

static void zero_setup_handler_cb(ioloop_t *loop, void *arg)
{
    zero_ctx_t *ctx = arg;

    if (ioloop_run_after(loop, 2, count_cb, &ctx->other_timer_runs) <= 0 ||
        ioloop_add_callback(loop, zero_post_blocker_cb, ctx) != 0)
        ctx->schedule_errors++;
}

static void check_zero_probe(const zero_probe_t *p, const char *from, int in_loop)
{
    if (p->fired_before_return != 0)
        fail_msg("run_after(0) from %s: %s\n", from,
                 p->fired_before_return < 0 ? "refused" : "ran inside the call");
    if (p->fired != 1)
        fail_msg("run_after(0) from %s fired %d times\n", from, p->fired);
    if (in_loop && p->fired_iteration <= p->scheduled_iteration)
        fail_msg("run_after(0) from %s: scheduled in iteration %llu, ran in iteration %llu\n",
                 from, (unsigned long long)p->scheduled_iteration,
                 (unsigned long long)p->fired_iteration);
}

static void test_timer_run_after_zero_next_iteration(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    zero_ctx_t ctx;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.remaining = 4;
    assert_int_equal(pipe2(ctx.pipe_fds, O_NONBLOCK | O_CLOEXEC), 0);
    zero_schedule(loop, &ctx.from_outside, &ctx.remaining);
    assert_int_equal(ctx.from_outside.fired, 0);
    assert_true(ioloop_run_after(loop, 0, zero_from_timer_cb, &ctx) > 0);
    assert_true(ioloop_run_after(loop, 0, zero_setup_handler_cb, &ctx) > 0);
    assert_int_equal(ioloop_add_callback(loop, zero_from_callback_cb, &ctx), 0);
    assert_int_equal(ioloop_add_handler(loop, ctx.pipe_fds[0], IOLOOP_READ, zero_from_handler,
                                        &ctx), 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    assert_int_equal(ctx.other_timer_runs, 1);
    check_zero_probe(&ctx.from_outside, "before start", 0);
    check_zero_probe(&ctx.from_timer, "a timer callback", 1);
    check_zero_probe(&ctx.from_callback, "a posted callback", 1);
    check_zero_probe(&ctx.from_handler, "a handler", 1);
    ioloop_free(loop);
    close_pipe(ctx.pipe_fds);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Equal deadlines run in scheduling order ------------------------------------------- */

#define FIFO_TIMERS 2000

typedef struct fifo_group {
    int order[FIFO_TIMERS]; /* indexes in firing order */
    int fired;
} fifo_group_t;

typedef struct fifo_ctx {
    fifo_group_t before_start; /* delay 1, scheduled before start */
    fifo_group_t in_callback;  /* delay 0, scheduled from one timer callback */
    int schedule_errors;
    int remaining;
} fifo_ctx_t;

typedef struct fifo_arg {
    fifo_ctx_t *ctx;
    fifo_group_t *group;
    int index;
} fifo_arg_t;

static fifo_arg_t fifo_args[2][FIFO_TIMERS];

static void fifo_fire_cb(ioloop_t *loop, void *arg)
{
    fifo_arg_t *a = arg;

    if (a->group->fired < FIFO_TIMERS)
        a->group->order[a->group->fired] = a->index;
    a->group->fired++;
    if (--a->ctx->remaining == 0)
        ioloop_run_after(loop, 10, stop_cb, NULL);
}

static void fifo_schedule(ioloop_t *loop, fifo_ctx_t *ctx, fifo_group_t *group,
                          fifo_arg_t *args, uint64_t delay_ms)
{
    for (int i = 0; i < FIFO_TIMERS; i++) {
        args[i].ctx = ctx;
        args[i].group = group;
        args[i].index = i;
    }
    /* A tight loop: many consecutive calls land on the same microsecond deadline. */
    for (int i = 0; i < FIFO_TIMERS; i++) {
        if (ioloop_run_after(loop, delay_ms, fifo_fire_cb, &args[i]) <= 0)
            ctx->schedule_errors++;
    }
}

static void fifo_kick_cb(ioloop_t *loop, void *arg)
{
    fifo_ctx_t *ctx = arg;

    fifo_schedule(loop, ctx, &ctx->in_callback, fifo_args[1], 0);
}

static void check_fifo_group(const fifo_group_t *group)
{
    assert_int_equal(group->fired, FIFO_TIMERS);
    for (int i = 0; i < FIFO_TIMERS; i++) {
        if (group->order[i] != i)
            fail_msg("firing #%d was the timer scheduled #%d\n", i, group->order[i]);
    }
}

static void test_timer_same_deadline_fifo(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    static fifo_ctx_t ctx;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.remaining = 2 * FIFO_TIMERS;
    fifo_schedule(loop, &ctx, &ctx.before_start, fifo_args[0], 1);
    assert_true(ioloop_run_after(loop, 0, fifo_kick_cb, &ctx) > 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    check_fifo_group(&ctx.before_start);
    check_fifo_group(&ctx.in_callback);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Different deadlines fire in deadline order ---------------------------------------- */

#define ORDER_FIXED 8
#define ORDER_RANDOM 500

typedef struct order_timer {
    uint64_t delay_ms;
    uint64_t before_us, after_us; /* the clock around the run_after() call */
    int fired;
} order_timer_t;

typedef struct order_ctx {
    order_timer_t timers[ORDER_FIXED + ORDER_RANDOM];
    int order[ORDER_FIXED + ORDER_RANDOM];
    int nfired;
    int remaining;
} order_ctx_t;

typedef struct order_arg {
    order_ctx_t *ctx;
    int index;
} order_arg_t;

static void order_fire_cb(ioloop_t *loop, void *arg)
{
    order_arg_t *a = arg;
    order_ctx_t *ctx = a->ctx;

    if (ctx->nfired < ORDER_FIXED + ORDER_RANDOM)
        ctx->order[ctx->nfired] = a->index;
    ctx->nfired++;
    ctx->timers[a->index].fired++;
    if (--ctx->remaining == 0)
        ioloop_run_after(loop, 10, stop_cb, NULL);
}

static void test_timer_deadline_order(void **state)
{
    static const uint64_t fixed[ORDER_FIXED] = {30, 10, 20, 0, 5, 15, 25, 1};
    static const int fixed_expected[ORDER_FIXED] = {3, 7, 4, 1, 5, 2, 6, 0};
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    static order_ctx_t ctx;
    static order_arg_t args[ORDER_FIXED + ORDER_RANDOM];
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    int n = ORDER_FIXED + ORDER_RANDOM, fixed_seen = 0;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.remaining = n;
    for (int i = 0; i < n; i++) {
        order_timer_t *t = &ctx.timers[i];

        t->delay_ms = i < ORDER_FIXED ? fixed[i] : next_random(&seed) % 41;
        args[i].ctx = &ctx;
        args[i].index = i;
        t->before_us = test_now_us();
        assert_true(ioloop_run_after(loop, t->delay_ms, order_fire_cb, &args[i]) > 0);
        t->after_us = test_now_us();
    }
    run_loop(loop);
    assert_int_equal(ctx.nfired, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(ctx.timers[i].fired, 1);

    /* The fixed delays are far apart: their order is exactly by delay. */
    for (int i = 0; i < n; i++) {
        if (ctx.order[i] < ORDER_FIXED) {
            assert_int_equal(ctx.order[i], fixed_expected[fixed_seen]);
            fixed_seen++;
        }
    }
    assert_int_equal(fixed_seen, ORDER_FIXED);

    /*
     * Every pair: the library's deadline for a timer lies in [before + delay, after + delay].
     * If x fired before y, x's deadline cannot be certainly later than y's.
     */
    for (int i = 0; i < n; i++) {
        const order_timer_t *x = &ctx.timers[ctx.order[i]];

        for (int j = i + 1; j < n; j++) {
            const order_timer_t *y = &ctx.timers[ctx.order[j]];

            if (x->before_us + x->delay_ms * 1000 > y->after_us + y->delay_ms * 1000)
                fail_msg("timer %d (delay %llu) fired before timer %d (delay %llu)\n",
                         ctx.order[i], (unsigned long long)x->delay_ms, ctx.order[j],
                         (unsigned long long)y->delay_ms);
        }
    }
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- A timer scheduled from a timer callback waits for the next batch ----------------- */

typedef struct batch_ctx {
    char order[8];
    int n;
    uint64_t iteration_a, iteration_b;
    int schedule_errors;
} batch_ctx_t;

static void batch_record(batch_ctx_t *ctx, char which)
{
    if (ctx->n < (int)sizeof(ctx->order) - 1)
        ctx->order[ctx->n] = which;
    ctx->n++;
}

static void batch_b_cb(ioloop_t *loop, void *arg)
{
    batch_ctx_t *ctx = arg;

    batch_record(ctx, 'B');
    ctx->iteration_b = get_stats(loop).iterations;
    ioloop_run_after(loop, 10, stop_cb, NULL);
}

static void batch_a_cb(ioloop_t *loop, void *arg)
{
    batch_ctx_t *ctx = arg;

    batch_record(ctx, 'A');
    ctx->iteration_a = get_stats(loop).iterations;
    if (ioloop_run_after(loop, 0, batch_b_cb, ctx) <= 0)
        ctx->schedule_errors++;
}

static void batch_c_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    batch_record(arg, 'C');
}

static void test_timer_scheduled_in_callback_not_same_batch(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    batch_ctx_t ctx;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    /* A and C are due together; B, scheduled by A with delay 0, must come after C. */
    assert_true(ioloop_run_after(loop, 0, batch_a_cb, &ctx) > 0);
    assert_true(ioloop_run_after(loop, 0, batch_c_cb, &ctx) > 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    assert_int_equal(ctx.n, 3);
    assert_string_equal(ctx.order, "ACB");
    assert_true(ctx.iteration_b > ctx.iteration_a);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- A timer re-scheduling itself with delay 0 does not starve I/O -------------------- */

#define RESCHEDULE_RUNS 1000

typedef struct starve_ctx {
    int timer_runs;
    int handler_calls;
    int handler_calls_seen; /* by the timer's previous run */
    int starved;            /* timer runs with no handler call since the previous one */
    uint64_t last_iteration;
    int same_iteration;     /* timer runs in the iteration of its previous run */
    int schedule_errors;
} starve_ctx_t;

static void starve_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    ((starve_ctx_t *)arg)->handler_calls++; /* never reads: stays ready */
}

static void starve_timer_cb(ioloop_t *loop, void *arg)
{
    starve_ctx_t *ctx = arg;
    uint64_t iteration = get_stats(loop).iterations;

    if (ctx->timer_runs > 0) {
        if (ctx->handler_calls == ctx->handler_calls_seen)
            ctx->starved++;
        if (iteration == ctx->last_iteration)
            ctx->same_iteration++;
    }
    ctx->handler_calls_seen = ctx->handler_calls;
    ctx->last_iteration = iteration;
    if (++ctx->timer_runs < RESCHEDULE_RUNS) {
        if (ioloop_run_after(loop, 0, starve_timer_cb, ctx) <= 0)
            ctx->schedule_errors++;
    } else {
        ioloop_stop(loop);
    }
}

static void test_timer_zero_delay_reschedule_no_starvation(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    starve_ctx_t ctx;
    int pipe_fds[2];

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    make_ready_pipe(pipe_fds);
    assert_int_equal(ioloop_add_handler(loop, pipe_fds[0], IOLOOP_READ, starve_handler, &ctx),
                     0);
    assert_true(ioloop_run_after(loop, 0, starve_timer_cb, &ctx) > 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    assert_int_equal(ctx.timer_runs, RESCHEDULE_RUNS);
    assert_int_equal(ctx.starved, 0);
    assert_int_equal(ctx.same_iteration, 0);
    assert_true(ctx.handler_calls >= RESCHEDULE_RUNS - 1);
    assert_true(get_stats(loop).iterations >= RESCHEDULE_RUNS);
    assert_int_equal(ioloop_remove_handler(loop, pipe_fds[0]), 0);
    ioloop_free(loop);
    close_pipe(pipe_fds);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Cancel: unknown ids --------------------------------------------------------------- */

static void test_timer_cancel_unknown_ids(void **state)
{
    static const int64_t fixed[] = {0, -1, -2, -1000, INT64_MIN, INT64_MAX, INT64_MAX - 1,
                                    1, 2, 3, 1000000007};
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    uint64_t seed = 12345;
    int64_t live[16];
    int fired = 0;

    (void)state;
    assert_non_null(loop);
    /* No timer exists: every id is unknown. */
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        assert_int_equal(ioloop_cancel_timer(loop, fixed[i]), -ENOENT);
    for (int i = 0; i < 100; i++)
        assert_int_equal(ioloop_cancel_timer(loop, (int64_t)next_random(&seed)), -ENOENT);

    /* With live timers, ids other than theirs are still unknown and cancel nothing. */
    for (int i = 0; i < 16; i++) {
        live[i] = ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &fired);
        assert_true(live[i] > 0);
    }
    for (int i = 0; i < 1000; i++) {
        int64_t id = (int64_t)next_random(&seed);
        int is_live = 0;

        if (i < (int)(sizeof(fixed) / sizeof(fixed[0])))
            id = fixed[i];
        for (int j = 0; j < 16; j++)
            is_live |= id == live[j];
        if (!is_live)
            assert_int_equal(ioloop_cancel_timer(loop, id), -ENOENT);
    }
    assert_int_equal(get_stats(loop).timers_pending, 16);
    for (int i = 0; i < 16; i++)
        assert_int_equal(ioloop_cancel_timer(loop, live[i]), 0);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    assert_int_equal(fired, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Cancel: fired, running, twice; a cancelled timer never runs ---------------------- */

typedef struct self_cancel_ctx {
    int64_t id;
    int rc_in_callback;
    int runs;
} self_cancel_ctx_t;

static void one_shot_self_cancel_cb(ioloop_t *loop, void *arg)
{
    self_cancel_ctx_t *ctx = arg;

    ctx->runs++;
    ctx->rc_in_callback = ioloop_cancel_timer(loop, ctx->id);
}

static void test_timer_cancel_fired_twice_never_runs(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    self_cancel_ctx_t self = {0, 1, 0};
    int cancelled_runs = 0;
    int64_t cancelled, far;

    (void)state;
    assert_non_null(loop);
    cancelled = ioloop_run_after(loop, 5, count_cb, &cancelled_runs);
    assert_true(cancelled > 0);
    assert_int_equal(ioloop_cancel_timer(loop, cancelled), 0);
    assert_int_equal(ioloop_cancel_timer(loop, cancelled), -ENOENT);
    far = ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &cancelled_runs);
    assert_true(far > 0);
    assert_int_equal(ioloop_cancel_timer(loop, far), 0);
    assert_int_equal(ioloop_cancel_timer(loop, far), -ENOENT);

    self.id = ioloop_run_after(loop, 0, one_shot_self_cancel_cb, &self);
    assert_true(self.id > 0);
    /* Long enough for the cancelled 5 ms timer to have fired had it not been cancelled. */
    assert_true(ioloop_run_after(loop, 30, stop_cb, NULL) > 0);
    run_loop(loop);

    assert_int_equal(cancelled_runs, 0);
    assert_int_equal(self.runs, 1);
    assert_int_equal(self.rc_in_callback, -ENOENT); /* a running one-shot */
    assert_int_equal(ioloop_cancel_timer(loop, self.id), -ENOENT); /* a fired one-shot */
    assert_int_equal(ioloop_cancel_timer(loop, cancelled), -ENOENT);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Cancel: a timer due in the same batch, cancelled by an earlier one --------------- */

typedef struct same_batch_ctx {
    int64_t id_b, id_e;
    int rc_b, rc_e;
    int runs_a, runs_b, runs_e;
    int schedule_errors;
} same_batch_ctx_t;

static void same_batch_a_cb(ioloop_t *loop, void *arg)
{
    same_batch_ctx_t *ctx = arg;

    ctx->runs_a++;
    ctx->rc_b = ioloop_cancel_timer(loop, ctx->id_b);
    ctx->rc_e = ioloop_cancel_timer(loop, ctx->id_e);
}

static void same_batch_b_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ((same_batch_ctx_t *)arg)->runs_b++;
}

static void same_batch_e_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ((same_batch_ctx_t *)arg)->runs_e++;
}

static void same_batch_setup_cb(ioloop_t *loop, void *arg)
{
    same_batch_ctx_t *ctx = arg;

    /* A first, so with equal or earlier deadline it runs first; then B and a run_every E. */
    if (ioloop_run_after(loop, 1, same_batch_a_cb, ctx) <= 0)
        ctx->schedule_errors++;
    ctx->id_b = ioloop_run_after(loop, 1, same_batch_b_cb, ctx);
    ctx->id_e = ioloop_run_every(loop, 1, same_batch_e_cb, ctx);
    if (ctx->id_b <= 0 || ctx->id_e <= 0)
        ctx->schedule_errors++;
    if (ioloop_run_after(loop, 30, stop_cb, NULL) <= 0)
        ctx->schedule_errors++;
    /* All three are due by the time this returns: they run in one batch. */
    busy_wait_us(3000);
}

static void test_timer_cancel_due_in_same_batch(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    same_batch_ctx_t ctx;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    assert_true(ioloop_run_after(loop, 0, same_batch_setup_cb, &ctx) > 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    assert_int_equal(ctx.runs_a, 1);
    assert_int_equal(ctx.rc_b, 0);
    assert_int_equal(ctx.rc_e, 0);
    assert_int_equal(ctx.runs_b, 0);
    assert_int_equal(ctx.runs_e, 0);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    assert_int_equal(get_stats(loop).timers_fired, 3); /* setup, A, stop */
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Invalid arguments ----------------------------------------------------------------- */

static void test_timer_invalid_arguments(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int runs = 0;

    (void)state;
    assert_non_null(loop);
    assert_int_equal(ioloop_run_after(NULL, 1, count_cb, &runs), -EINVAL);
    assert_int_equal(ioloop_run_after(loop, 1, NULL, &runs), -EINVAL);
    assert_int_equal(ioloop_run_after(loop, 0, NULL, &runs), -EINVAL);
    assert_int_equal(ioloop_run_every(NULL, 1, count_cb, &runs), -EINVAL);
    assert_int_equal(ioloop_run_every(loop, 1, NULL, &runs), -EINVAL);
    assert_int_equal(ioloop_run_every(loop, 0, count_cb, &runs), -EINVAL);
    assert_int_equal(ioloop_cancel_timer(NULL, 1), -EINVAL);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    /* A call that returned an error never runs its callback. */
    assert_true(ioloop_run_after(loop, 20, stop_cb, NULL) > 0);
    run_loop(loop);
    assert_int_equal(runs, 0);
    assert_int_equal(get_stats(loop).timers_fired, 1);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Timer ids: positive, unique, never reused ----------------------------------------- */

#define ID_FIRED 100
#define ID_CYCLES 100000

typedef struct fired_ids_ctx {
    int remaining;
} fired_ids_ctx_t;

static void fired_ids_cb(ioloop_t *loop, void *arg)
{
    fired_ids_ctx_t *ctx = arg;

    if (--ctx->remaining == 0)
        ioloop_stop(loop);
}

static void test_timer_ids_unique(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int64_t *ids = malloc((ID_FIRED + ID_CYCLES) * sizeof(*ids));
    fired_ids_ctx_t ctx = {ID_FIRED};
    int runs = 0, n = 0;

    (void)state;
    assert_non_null(loop);
    assert_non_null(ids);
    /* Timers that fire: their ids must not come back either. */
    for (int i = 0; i < ID_FIRED; i++) {
        ids[n] = ioloop_run_after(loop, 0, fired_ids_cb, &ctx);
        assert_true(ids[n] > 0);
        n++;
    }
    run_loop(loop);
    assert_int_equal(ctx.remaining, 0);
    for (int i = 0; i < ID_CYCLES; i++) {
        int64_t id = (i % 10 == 0) ? ioloop_run_every(loop, FAR_FUTURE_MS, count_cb, &runs)
                                   : ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &runs);

        if (id <= 0)
            fail_msg("cycle %d: id %lld\n", i, (long long)id);
        assert_int_equal(ioloop_cancel_timer(loop, id), 0);
        ids[n++] = id;
    }
    qsort(ids, (size_t)n, sizeof(*ids), compare_int64);
    for (int i = 1; i < n; i++) {
        if (ids[i] == ids[i - 1])
            fail_msg("timer id %lld was handed out twice\n", (long long)ids[i]);
    }
    assert_int_equal(runs, 0);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    free(ids);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Cancel churn does not grow memory ------------------------------------------------- */

#define CHURN_WARMUP 20000
#define CHURN_CYCLES 200000
#define CHURN_MAX_GROWTH (1 << 20)

static void churn(ioloop_t *loop, int cycles, int *runs)
{
    for (int i = 0; i < cycles; i++) {
        int64_t id = ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, runs);

        if (id <= 0 || ioloop_cancel_timer(loop, id) != 0)
            fail_msg("churn cycle %d failed (id %lld)\n", i, (long long)id);
    }
}

static void test_timer_cancel_churn_memory(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int64_t rss_before, rss_after, heap_before, heap_after;
    int runs = 0;

    (void)state;
    assert_non_null(loop);
    churn(loop, CHURN_WARMUP, &runs);
    rss_before = rss_bytes();
    heap_before = malloc_in_use();
    churn(loop, CHURN_CYCLES, &runs);
    rss_after = rss_bytes();
    heap_after = malloc_in_use();
    printf("cancel churn: %d cycles, RSS growth %lld bytes, malloc growth %lld bytes%s\n",
           CHURN_CYCLES, (long long)(rss_after - rss_before),
           (long long)(heap_after - heap_before),
           UNDER_SANITIZER ? " (sanitizer build: not asserted)" : "");
    if (!UNDER_SANITIZER) {
        assert_true(rss_after - rss_before < CHURN_MAX_GROWTH);
        assert_true(heap_after - heap_before < CHURN_MAX_GROWTH);
    }
    assert_int_equal(get_stats(loop).timers_pending, 0);
    /* The loop still works and none of the cancelled timers runs. */
    assert_true(ioloop_run_after(loop, 5, stop_cb, NULL) > 0);
    run_loop(loop);
    assert_int_equal(runs, 0);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- run_every keeps a fixed rate ------------------------------------------------------ */

/*
 * Each tick holds the loop for 20 ms of a 50 ms interval. A timer that drifts (next deadline
 * taken from when the callback ends) would be off the grid by 20, 40, 10, 30, 0, 20, 40 ms at
 * ticks 2..8; a fixed-rate timer stays on it, whole periods skipped under heavy load aside.
 */
#define RATE_INTERVAL_MS 50
#define RATE_TICKS 8
#define RATE_WORK_US 20000
#define RATE_MAX_PHASE_US 15000  /* lateness past the last grid point: wakeup latency only */
#define RATE_MAX_LATE_US 250000  /* a sanity bound: a few skipped periods on a loaded machine */

typedef struct rate_ctx {
    int64_t id;
    uint64_t tick_us[RATE_TICKS];
    int ticks;
    int cancel_rc;
} rate_ctx_t;

static void rate_tick_cb(ioloop_t *loop, void *arg)
{
    rate_ctx_t *ctx = arg;

    if (ctx->ticks < RATE_TICKS)
        ctx->tick_us[ctx->ticks] = test_now_us();
    if (++ctx->ticks == RATE_TICKS) {
        ctx->cancel_rc = ioloop_cancel_timer(loop, ctx->id);
        ioloop_run_after(loop, 2 * RATE_INTERVAL_MS, stop_cb, NULL);
        return;
    }
    hold_loop_us(RATE_WORK_US);
}

static void test_timer_run_every_fixed_rate(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    rate_ctx_t ctx;
    uint64_t start;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.cancel_rc = 1;
    start = test_now_us();
    ctx.id = ioloop_run_every(loop, RATE_INTERVAL_MS, rate_tick_cb, &ctx);
    assert_true(ctx.id > 0);
    run_loop(loop);
    assert_int_equal(ctx.cancel_rc, 0);
    assert_int_equal(ctx.ticks, RATE_TICKS);
    /* Never early: tick k (from 1) comes no sooner than k intervals after the call. */
    for (int k = 1; k <= RATE_TICKS; k++) {
        uint64_t grid = start + (uint64_t)k * RATE_INTERVAL_MS * 1000;

        if (ctx.tick_us[k - 1] < grid)
            fail_msg("tick %d came %llu us early\n", k,
                     (unsigned long long)(grid - ctx.tick_us[k - 1]));
    }
    /* No drift: the last tick is just after a grid point. */
    {
        uint64_t last_grid = start + (uint64_t)RATE_TICKS * RATE_INTERVAL_MS * 1000;
        uint64_t late = ctx.tick_us[RATE_TICKS - 1] - last_grid;
        uint64_t phase = late % (RATE_INTERVAL_MS * 1000);

        printf("run_every(%d ms): tick %d came %llu us after its grid point (%llu us after "
               "the nearest one)\n", RATE_INTERVAL_MS, RATE_TICKS, (unsigned long long)late,
               (unsigned long long)phase);
        assert_true(phase <= RATE_MAX_PHASE_US);
        assert_true(late <= RATE_MAX_LATE_US);
    }
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- run_every skips missed ticks instead of bunching them ----------------------------- */

#define SKIP_INTERVAL_MS 5
#define SKIP_MAX_TICKS 64

typedef struct skip_ctx {
    int64_t id;
    uint64_t start_us;
    uint64_t busy_end_us;
    uint64_t tick_us[SKIP_MAX_TICKS];
    int ticks;
    int schedule_errors;
} skip_ctx_t;

static void skip_stop_cb(ioloop_t *loop, void *arg)
{
    skip_ctx_t *ctx = arg;

    ioloop_cancel_timer(loop, ctx->id);
    ioloop_stop(loop);
}

static void skip_tick_cb(ioloop_t *loop, void *arg)
{
    skip_ctx_t *ctx = arg;

    if (ctx->ticks < SKIP_MAX_TICKS)
        ctx->tick_us[ctx->ticks] = test_now_us();
    if (ctx->ticks++ == 0) {
        /*
         * Block until midway between two grid points 32.5 ms after the first deadline (six
         * ticks missed): one late tick may follow at once, the next grid point is 2.5 ms away.
         */
        busy_wait_until_us(ctx->start_us + (SKIP_INTERVAL_MS + 32) * 1000 + 500);
        ctx->busy_end_us = test_now_us();
        if (ioloop_run_after(loop, 50, skip_stop_cb, ctx) <= 0)
            ctx->schedule_errors++;
    }
}

static void test_timer_run_every_skips_missed_ticks(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    skip_ctx_t ctx;
    int burst = 0, after = 0;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.start_us = test_now_us();
    ctx.id = ioloop_run_every(loop, SKIP_INTERVAL_MS, skip_tick_cb, &ctx);
    assert_true(ctx.id > 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    assert_true(ctx.ticks >= 2);
    assert_true(ctx.ticks <= SKIP_MAX_TICKS);
    for (int i = 1; i < ctx.ticks; i++) {
        if (ctx.tick_us[i] < ctx.busy_end_us + 1500)
            burst++;
        after++;
    }
    printf("run_every(%d ms) after a 32 ms stall: %d tick(s) within 1.5 ms, %d in 50 ms\n",
           SKIP_INTERVAL_MS, burst, after);
    /* Bunched, the six missed ticks would all come at once. */
    assert_true(burst <= 1);
    /* 50 ms / 5 ms = 10 grid ticks, plus at most one late tick and one at the edge. */
    assert_true(after <= 12);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- run_every cancelled by itself, and by another timer ------------------------------- */

typedef struct every_cancel_ctx {
    int64_t id;
    int ticks;
    int ticks_at_cancel;
    int rc_first, rc_second;
} every_cancel_ctx_t;

static void every_self_cancel_cb(ioloop_t *loop, void *arg)
{
    every_cancel_ctx_t *ctx = arg;

    if (++ctx->ticks == 3) {
        ctx->rc_first = ioloop_cancel_timer(loop, ctx->id);
        ctx->rc_second = ioloop_cancel_timer(loop, ctx->id);
    }
}

static void every_tick_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ((every_cancel_ctx_t *)arg)->ticks++;
}

static void every_canceller_cb(ioloop_t *loop, void *arg)
{
    every_cancel_ctx_t *ctx = arg;

    ctx->ticks_at_cancel = ctx->ticks;
    ctx->rc_first = ioloop_cancel_timer(loop, ctx->id);
    ctx->rc_second = ioloop_cancel_timer(loop, ctx->id);
}

static void test_timer_run_every_cancels_itself(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    every_cancel_ctx_t ctx = {0, 0, 0, 1, 1};

    (void)state;
    assert_non_null(loop);
    ctx.id = ioloop_run_every(loop, 2, every_self_cancel_cb, &ctx);
    assert_true(ctx.id > 0);
    assert_true(ioloop_run_after(loop, 50, stop_cb, NULL) > 0);
    run_loop(loop);
    assert_int_equal(ctx.ticks, 3);
    assert_int_equal(ctx.rc_first, 0);
    assert_int_equal(ctx.rc_second, -ENOENT);
    assert_int_equal(ioloop_cancel_timer(loop, ctx.id), -ENOENT);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

static void test_timer_run_every_cancelled_by_other_timer(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    every_cancel_ctx_t ctx = {0, 0, 0, 1, 1};

    (void)state;
    assert_non_null(loop);
    ctx.id = ioloop_run_every(loop, 2, every_tick_cb, &ctx);
    assert_true(ctx.id > 0);
    assert_true(ioloop_run_after(loop, 15, every_canceller_cb, &ctx) > 0);
    assert_true(ioloop_run_after(loop, 50, stop_cb, NULL) > 0);
    run_loop(loop);
    assert_int_equal(ctx.rc_first, 0);
    assert_int_equal(ctx.rc_second, -ENOENT);
    assert_true(ctx.ticks_at_cancel >= 1);
    assert_int_equal(ctx.ticks, ctx.ticks_at_cancel);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- A timer whose deadline passed while the loop was blocked still fires -------------- */

typedef struct past_ctx {
    int fired_from_timer, fired_from_callback, fired_from_handler, fired_from_outside;
    int remaining;
    int schedule_errors;
} past_ctx_t;

typedef struct past_arg {
    past_ctx_t *ctx;
    int *flag;
} past_arg_t;

static void past_fire_cb(ioloop_t *loop, void *arg)
{
    past_arg_t *a = arg;

    if ((*a->flag)++ == 0 && --a->ctx->remaining == 0)
        ioloop_stop(loop);
}

/* Schedules a 1 ms timer, then blocks the loop 5 ms: it is re-armed for a past deadline. */
static void past_schedule_and_block(ioloop_t *loop, past_arg_t *a)
{
    if (ioloop_run_after(loop, 1, past_fire_cb, a) <= 0)
        a->ctx->schedule_errors++;
    busy_wait_us(5000);
}

static void past_from_timer_cb(ioloop_t *loop, void *arg)
{
    past_schedule_and_block(loop, arg);
}

static void past_from_callback_cb(ioloop_t *loop, void *arg)
{
    past_schedule_and_block(loop, arg);
}

static void past_from_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)events;
    ioloop_remove_handler(loop, fd);
    past_schedule_and_block(loop, arg);
}

static void test_timer_past_deadline_still_fires(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    past_ctx_t ctx;
    past_arg_t from_timer, from_callback, from_handler, from_outside;
    int pipe_fds[2];

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.remaining = 4;
    from_timer = (past_arg_t){&ctx, &ctx.fired_from_timer};
    from_callback = (past_arg_t){&ctx, &ctx.fired_from_callback};
    from_handler = (past_arg_t){&ctx, &ctx.fired_from_handler};
    from_outside = (past_arg_t){&ctx, &ctx.fired_from_outside};
    make_ready_pipe(pipe_fds);

    /* Before start: the deadline has passed by the time the loop first waits. */
    past_schedule_and_block(loop, &from_outside);
    assert_true(ioloop_run_after(loop, 0, past_from_timer_cb, &from_timer) > 0);
    assert_int_equal(ioloop_add_callback(loop, past_from_callback_cb, &from_callback), 0);
    assert_int_equal(ioloop_add_handler(loop, pipe_fds[0], IOLOOP_READ, past_from_handler,
                                        &from_handler), 0);
    run_loop(loop);
    assert_int_equal(ctx.schedule_errors, 0);
    assert_int_equal(ctx.fired_from_outside, 1);
    assert_int_equal(ctx.fired_from_timer, 1);
    assert_int_equal(ctx.fired_from_callback, 1);
    assert_int_equal(ctx.fired_from_handler, 1);
    ioloop_free(loop);
    close_pipe(pipe_fds);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- ioloop_free drops pending timers without running them ----------------------------- */

static void free_stop_and_schedule_cb(ioloop_t *loop, void *arg)
{
    int *runs = arg;

    ioloop_run_after(loop, 0, count_cb, runs);
    ioloop_run_after(loop, 1, count_cb, runs);
    ioloop_run_every(loop, 1, count_cb, runs);
    ioloop_stop(loop);
}

static void test_timer_free_with_pending_timers(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int runs = 0;

    (void)state;
    /* A loop that never ran. */
    assert_non_null(loop);
    assert_true(ioloop_run_after(loop, 0, count_cb, &runs) > 0);
    assert_true(ioloop_run_after(loop, 1, count_cb, &runs) > 0);
    assert_true(ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &runs) > 0);
    assert_true(ioloop_run_every(loop, 1, count_cb, &runs) > 0);
    busy_wait_us(3000); /* all but one are due */
    ioloop_free(loop);
    assert_int_equal(runs, 0);
    assert_int_equal(test_count_fds(), fds);

    /* A loop that ran and stopped with timers due. */
    loop = ioloop_new();
    assert_non_null(loop);
    assert_true(ioloop_run_after(loop, 0, free_stop_and_schedule_cb, &runs) > 0);
    assert_true(ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &runs) > 0);
    run_loop(loop);
    busy_wait_us(3000);
    assert_int_equal(runs, 0);
    assert_int_equal(get_stats(loop).timers_pending, 4);
    ioloop_free(loop);
    assert_int_equal(runs, 0);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Stats: timers_pending and timers_fired -------------------------------------------- */

typedef struct stats_ctx {
    int64_t every_id;
    int every_ticks;
    int runs;
} stats_ctx_t;

static void stats_every_cb(ioloop_t *loop, void *arg)
{
    stats_ctx_t *ctx = arg;

    if (++ctx->every_ticks == 5) {
        ioloop_cancel_timer(loop, ctx->every_id);
        ioloop_stop(loop);
    }
}

static void test_timer_stats(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    stats_ctx_t ctx = {0, 0, 0};
    ioloop_stats_t s;
    int64_t far, every;

    (void)state;
    assert_non_null(loop);
    s = get_stats(loop);
    assert_int_equal(s.timers_pending, 0);
    assert_int_equal(s.timers_fired, 0);

    assert_true(ioloop_run_after(loop, 0, count_cb, &ctx.runs) > 0);
    far = ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &ctx.runs);
    every = ioloop_run_every(loop, FAR_FUTURE_MS, count_cb, &ctx.runs);
    assert_true(far > 0);
    assert_true(every > 0);
    assert_true(ioloop_run_after(loop, 5, stop_cb, NULL) > 0);
    assert_int_equal(get_stats(loop).timers_pending, 4);
    assert_int_equal(ioloop_cancel_timer(loop, far), 0);
    assert_int_equal(get_stats(loop).timers_pending, 3);
    assert_int_equal(ioloop_cancel_timer(loop, far), -ENOENT);
    assert_int_equal(get_stats(loop).timers_pending, 3);

    run_loop(loop);
    s = get_stats(loop);
    assert_int_equal(ctx.runs, 1);
    assert_int_equal(s.timers_fired, 2);    /* the delay-0 timer and the stop timer */
    assert_int_equal(s.timers_pending, 1);  /* the run_every */
    assert_int_equal(ioloop_cancel_timer(loop, every), 0);
    s = get_stats(loop);
    assert_int_equal(s.timers_pending, 0);
    assert_int_equal(s.timers_fired, 2);

    /* Every tick of a run_every counts as one firing; it stays pending until cancelled. */
    ctx.every_id = ioloop_run_every(loop, 1, stats_every_cb, &ctx);
    assert_true(ctx.every_id > 0);
    assert_int_equal(get_stats(loop).timers_pending, 1);
    run_loop(loop);
    s = get_stats(loop);
    assert_int_equal(ctx.every_ticks, 5);
    assert_int_equal(s.timers_fired, 7);
    assert_int_equal(s.timers_pending, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Wrong thread: -EPERM and nothing changes ------------------------------------------ */

typedef struct wrong_thread_ctx {
    atomic_int running;
    int64_t live_id;
    int rc_cancel_in_loop;
    int runs;
} wrong_thread_ctx_t;

static void wrong_thread_mark_running_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store(&((wrong_thread_ctx_t *)arg)->running, 1);
}

static void wrong_thread_finish_cb(ioloop_t *loop, void *arg)
{
    wrong_thread_ctx_t *ctx = arg;

    /* The rejected calls changed nothing: the live timer is still there to cancel. */
    ctx->rc_cancel_in_loop = ioloop_cancel_timer(loop, ctx->live_id);
    /* Give a wrongly accepted run_after(0) or run_every(1) time to show itself. */
    ioloop_run_after(loop, 20, stop_cb, NULL);
}

static void test_timer_wrong_thread(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    wrong_thread_ctx_t ctx;
    test_loop_thread_t t;
    uint64_t pending_before;
    uint64_t deadline;

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    atomic_init(&ctx.running, 0);
    ctx.rc_cancel_in_loop = 1;
    ctx.live_id = ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &ctx.runs);
    assert_true(ctx.live_id > 0);
    assert_int_equal(ioloop_add_callback(loop, wrong_thread_mark_running_cb, &ctx), 0);
    test_loop_thread_start(&t, loop);
    deadline = test_now_us() + (uint64_t)WATCHDOG_MS * 1000;
    while (!atomic_load(&ctx.running) && test_now_us() < deadline)
        sched_yield();
    assert_true(atomic_load(&ctx.running));

    pending_before = get_stats(loop).timers_pending;
    assert_int_equal(ioloop_in_loop_thread(loop), 0);
    assert_int_equal(ioloop_run_after(loop, 0, count_cb, &ctx.runs), -EPERM);
    assert_int_equal(ioloop_run_every(loop, 1, count_cb, &ctx.runs), -EPERM);
    assert_int_equal(ioloop_cancel_timer(loop, ctx.live_id), -EPERM);
    assert_int_equal(get_stats(loop).timers_pending, pending_before);

    assert_int_equal(ioloop_add_callback(loop, wrong_thread_finish_cb, &ctx), 0);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_int_equal(ctx.rc_cancel_in_loop, 0);
    assert_int_equal(ctx.runs, 0);
    assert_int_equal(get_stats(loop).timers_pending, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Memory per pending timer (informational, loosely bounded) ------------------------- */

#define BYTES_TIMERS 100000
#define BYTES_MAX_PER_TIMER 256

static void test_timer_bytes_per_timer(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int64_t rss_before, heap_before, rss_delta, heap_delta, worst;
    int runs = 0;

    (void)state;
    assert_non_null(loop);
    churn(loop, 1000, &runs); /* first-use allocations out of the measurement */
    rss_before = rss_bytes();
    heap_before = malloc_in_use();
    for (int i = 0; i < BYTES_TIMERS; i++) {
        if (ioloop_run_after(loop, FAR_FUTURE_MS, count_cb, &runs) <= 0)
            fail_msg("timer %d could not be scheduled\n", i);
    }
    rss_delta = rss_bytes() - rss_before;
    heap_delta = malloc_in_use() - heap_before;
    worst = rss_delta > heap_delta ? rss_delta : heap_delta;
    printf("bytes per pending timer: %.1f (RSS), %.1f (malloc)%s\n",
           (double)rss_delta / BYTES_TIMERS, (double)heap_delta / BYTES_TIMERS,
           UNDER_SANITIZER ? " (sanitizer build: not asserted)" : "");
    if (!UNDER_SANITIZER)
        assert_true(worst / BYTES_TIMERS < BYTES_MAX_PER_TIMER);
    assert_int_equal(get_stats(loop).timers_pending, BYTES_TIMERS);
    ioloop_free(loop);
    assert_int_equal(runs, 0);
    assert_int_equal(test_count_fds(), fds);
}

/*
 * A connection arms a linger or idle timer and cancels it some iterations later; with one
 * connection after another, the earliest deadline keeps moving later. That must not re-arm
 * the timerfd each time (two syscalls per connection showed in the accept benchmark): the
 * timerfd is left armed early and may fire before any timer is due, which then re-arms it
 * for the real earliest deadline — which still fires on time, never before.
 */
struct churn {
    int iterations;
    int64_t current, early, later;
    uint64_t later_at_us;       /* the earliest time `later` may fire */
    uint64_t fired_at_us;
    int settime_before, settime_after;
};

static void churn_later_fired(ioloop_t *loop, void *arg)
{
    struct churn *c = arg;

    c->fired_at_us = test_now_us();
    ioloop_stop(loop);
}

static void churn_never(ioloop_t *loop, void *arg)
{
    fail_msg("a cancelled timer ran");
}

static void churn_step(ioloop_t *loop, void *arg)
{
    struct churn *c = arg;

    c->iterations++;
    if (c->iterations == 2) /* the first iteration armed the timerfd */
        c->settime_before = atomic_load(&settime_calls);
    if (c->iterations <= 200) {
        /* Cancel the timer of the iteration before, arm one a little later. */
        if (c->current > 0)
            assert_int_equal(ioloop_cancel_timer(loop, c->current), 0);
        c->current = ioloop_run_after(loop, 5000, churn_never, c);
        assert_true(c->current > 0);
        assert_int_equal(ioloop_add_callback(loop, churn_step, c), 0); /* next iteration */
        return;
    }
    if (c->iterations == 201) {
        c->settime_after = atomic_load(&settime_calls);
        assert_int_equal(ioloop_cancel_timer(loop, c->current), 0);
        c->early = ioloop_run_after(loop, 30, churn_never, c); /* armed for, then cancelled */
        assert_true(c->early > 0);
        assert_int_equal(ioloop_add_callback(loop, churn_step, c), 0);
        return;
    }
    assert_int_equal(ioloop_cancel_timer(loop, c->early), 0);
    c->later_at_us = test_now_us() + 60 * 1000;
    c->later = ioloop_run_after(loop, 60, churn_later_fired, c);
    assert_true(c->later > 0);
}

static void test_timer_cancel_churn_does_not_rearm(void **state)
{
    static struct churn c;
    ioloop_t *loop = ioloop_new();

    (void)state;
    assert_non_null(loop);
    memset(&c, 0, sizeof c);
    assert_int_equal(ioloop_add_callback(loop, churn_step, &c), 0);
    atomic_store(&settime_calls, 0);
    assert_int_equal(ioloop_start(loop), 0);
    /* 199 cancels of the earliest timer and as many later ones armed: not one re-arm. */
    assert_int_equal(c.settime_after, c.settime_before);
    /* The timerfd, left armed for the cancelled 30 ms timer, fired early and re-armed. */
    assert_true(c.fired_at_us >= c.later_at_us);
    ioloop_free(loop);
}

/*
 * PITFALLS "Wall clock vs monotonic" (muduo #168, redis #633): deadlines are computed on
 * CLOCK_MONOTONIC and the timerfd is armed on that same clock. A loop using the wall clock for
 * both passes every other test here (nobody steps the clock during a test), so look at what
 * the library asks the kernel for: a CLOCK_MONOTONIC timerfd, armed either relative to now or
 * for an absolute time on the monotonic timeline that is the deadline.
 */
#define CLOCK_DELAY_MS 30

static uint64_t monotonic_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void test_timer_monotonic_clock_for_deadlines_and_arming(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop;
    uint64_t before, after, armed, fired_at;
    int flags;

    (void)state;
    atomic_store(&created_clock, -1);
    loop = ioloop_new();
    assert_non_null(loop);
    if (atomic_load(&created_clock) != CLOCK_MONOTONIC)
        fail_msg("the loop's timerfd uses clock %d, not CLOCK_MONOTONIC (%d)",
                 atomic_load(&created_clock), CLOCK_MONOTONIC);
    /* ioloop_now_ms() is on the monotonic timeline too. */
    assert_true(ioloop_now_ms(loop) <= monotonic_us() / 1000u + 1);
    assert_true(ioloop_now_ms(loop) + 1000 >= monotonic_us() / 1000u);

    atomic_store(&armed_flags, -1);
    before = monotonic_us();
    assert_true(ioloop_run_after(loop, CLOCK_DELAY_MS, stop_cb, NULL) > 0);
    after = monotonic_us();
    run_loop(loop);
    fired_at = monotonic_us();
    armed = atomic_load(&armed_value_us);
    flags = atomic_load(&armed_flags);
    assert_int_not_equal(flags, -1);
    if (flags & TFD_TIMER_ABSTIME) {
        /* Absolute: the deadline itself, on the monotonic clock (+1 us of rounding up). */
        if (armed < before + CLOCK_DELAY_MS * 1000u || armed > after + CLOCK_DELAY_MS * 1000u + 1)
            fail_msg("armed for %llu us, the deadline is in [%llu, %llu] on CLOCK_MONOTONIC",
                     (unsigned long long)armed,
                     (unsigned long long)(before + CLOCK_DELAY_MS * 1000u),
                     (unsigned long long)(after + CLOCK_DELAY_MS * 1000u));
    } else {
        /* Relative: at most the delay. */
        assert_true(armed <= CLOCK_DELAY_MS * 1000u);
    }
    assert_true(fired_at >= before + CLOCK_DELAY_MS * 1000u);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timer_bytes_per_timer),
        cmocka_unit_test(test_timer_run_after_never_early),
        cmocka_unit_test(test_timer_run_after_zero_next_iteration),
        cmocka_unit_test(test_timer_same_deadline_fifo),
        cmocka_unit_test(test_timer_deadline_order),
        cmocka_unit_test(test_timer_scheduled_in_callback_not_same_batch),
        cmocka_unit_test(test_timer_zero_delay_reschedule_no_starvation),
        cmocka_unit_test(test_timer_cancel_unknown_ids),
        cmocka_unit_test(test_timer_cancel_fired_twice_never_runs),
        cmocka_unit_test(test_timer_cancel_due_in_same_batch),
        cmocka_unit_test(test_timer_invalid_arguments),
        cmocka_unit_test(test_timer_ids_unique),
        cmocka_unit_test(test_timer_cancel_churn_memory),
        cmocka_unit_test(test_timer_run_every_fixed_rate),
        cmocka_unit_test(test_timer_run_every_skips_missed_ticks),
        cmocka_unit_test(test_timer_run_every_cancels_itself),
        cmocka_unit_test(test_timer_run_every_cancelled_by_other_timer),
        cmocka_unit_test(test_timer_past_deadline_still_fires),
        cmocka_unit_test(test_timer_free_with_pending_timers),
        cmocka_unit_test(test_timer_stats),
        cmocka_unit_test(test_timer_wrong_thread),
        cmocka_unit_test(test_timer_cancel_churn_does_not_rearm),
        cmocka_unit_test(test_timer_monotonic_clock_for_deadlines_and_arming),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
