/*
 * Unit tests for the loop's cross-thread callback queue (ioloop_add_callback), written against
 * the contract in include/ioloop/loop.h: callbacks posted before start run at once, each
 * producer's callbacks run in order and in the loop thread, a burst of posts costs one wakeup,
 * a callback posted from a callback waits for the next iteration (I/O is not starved), and
 * after ioloop_stop() posts are refused with -ESHUTDOWN while every accepted one still runs.
 * Each test builds its own loop, frees it and checks that no fd leaked. Set IOLOOP_TEST_QUICK
 * to shrink the multi-threaded cases (the default is the full size).
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* Long enough that no healthy loop of these tests needs it, even under TSan. */
#define WATCHDOG_MS 20000

#define PRODUCERS 4

/* A callback's arg carries (producer, sequence number): the producer in the top bits. */
#define SEQ_BITS 24
#define SEQ_MASK ((UINT64_C(1) << SEQ_BITS) - 1)

/* ---- Helpers ---------------------------------------------------------------------------- */

static int quick(void)
{
    const char *q = getenv("IOLOOP_TEST_QUICK");

    return q != NULL && q[0] != '\0' && strcmp(q, "0") != 0;
}


/* Runs the loop in this thread under a watchdog; fails the test if the watchdog fired. */
static void run_loop(ioloop_t *loop)
{
    test_watchdog_t w;

    test_watchdog_arm(&w, loop, WATCHDOG_MS);
    assert_int_equal(ioloop_start(loop), 0);
    assert_false(test_watchdog_disarm(&w));
}

/* Waits (yielding) until *flag >= value; returns 0 if WATCHDOG_MS passed first. */
static int wait_for(atomic_int *flag, int value)
{
    uint64_t deadline = test_now_us() + (uint64_t)WATCHDOG_MS * 1000;

    while (atomic_load(flag) < value) {
        if (test_now_us() > deadline)
            return 0;
        sched_yield();
    }
    return 1;
}

static ioloop_stats_t get_stats(const ioloop_t *loop)
{
    ioloop_stats_t s;

    memset(&s, 0xff, sizeof(s));
    ioloop_get_stats(loop, &s);
    return s;
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

static void atomic_count_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_fetch_add((atomic_int *)arg, 1);
}

/* Marks the loop as running: the test thread waits for this before acting. */
static void mark_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store((atomic_int *)arg, 1);
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

static void *encode(unsigned producer, uint64_t seq)
{
    return (void *)(uintptr_t)(((uint64_t)producer << SEQ_BITS) | seq);
}

/* ---- Posted before start: runs as soon as start begins --------------------------------- */

typedef struct early_ctx {
    int runs;
    uint64_t iteration_in_callback;
} early_ctx_t;

static void early_stop_cb(ioloop_t *loop, void *arg)
{
    early_ctx_t *ctx = arg;

    ctx->runs++;
    ctx->iteration_in_callback = get_stats(loop).iterations;
    ioloop_stop(loop);
}

typedef struct post_from_thread {
    ioloop_t *loop;
    ioloop_callback_fn fn;
    void *arg;
    int count;
    int errors;
} post_from_thread_t;

static void *post_thread_main(void *arg)
{
    post_from_thread_t *p = arg;

    for (int i = 0; i < p->count; i++) {
        if (ioloop_add_callback(p->loop, p->fn, p->arg) != 0)
            p->errors++;
    }
    return NULL;
}

/* Posts `count` callbacks from a thread of its own and joins it. */
static int post_from_other_thread(ioloop_t *loop, ioloop_callback_fn fn, void *arg, int count)
{
    post_from_thread_t p = {loop, fn, arg, count, 0};
    pthread_t thread;

    if (pthread_create(&thread, NULL, post_thread_main, &p) != 0)
        abort();
    pthread_join(thread, NULL);
    return p.errors;
}

static void test_callback_queue_posted_before_start_runs_at_once(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    early_ctx_t ctx = {0, 0};
    uint64_t started;
    ioloop_stats_t s;

    (void)state;
    assert_non_null(loop);
    /* The only thing that ever happens is this callback: start must not wait for anything. */
    assert_int_equal(ioloop_add_callback(loop, early_stop_cb, &ctx), 0);
    started = test_now_us();
    run_loop(loop);
    s = get_stats(loop);
    printf("posted before start: start returned after %llu us, %llu iteration(s)\n",
           (unsigned long long)(test_now_us() - started), (unsigned long long)s.iterations);
    assert_int_equal(ctx.runs, 1);
    /* "Before it waits": no iteration (wait) had happened when the callback ran. */
    assert_int_equal(ctx.iteration_in_callback, 0);
    assert_true(test_now_us() - started < 2000000);
    assert_true(s.iterations <= 2);
    assert_int_equal(s.callbacks_run, 1);
    assert_int_equal(s.callbacks_pending, 0);

    ioloop_free(loop);

    /* The same when the post came from another thread. */
    loop = ioloop_new();
    assert_non_null(loop);
    assert_int_equal(post_from_other_thread(loop, early_stop_cb, &ctx, 1), 0);
    started = test_now_us();
    run_loop(loop);
    assert_int_equal(ctx.runs, 2);
    assert_int_equal(ctx.iteration_in_callback, 0);
    assert_true(test_now_us() - started < 2000000);
    assert_true(get_stats(loop).iterations <= 2);
    assert_int_equal(get_stats(loop).callbacks_run, 1);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- FIFO per producer, exact totals, few wakeups --------------------------------------- */

/* Written by the loop thread only; read by the test thread after joining it. */
typedef struct order_state {
    int64_t last_seq[PRODUCERS];
    uint64_t received;
    uint64_t out_of_order;
    atomic_int ran; /* also read while the loop runs */
} order_state_t;

static order_state_t order;

static void order_reset(void)
{
    for (int p = 0; p < PRODUCERS; p++)
        order.last_seq[p] = -1;
    order.received = 0;
    order.out_of_order = 0;
    atomic_store(&order.ran, 0);
}

static void order_cb(ioloop_t *loop, void *arg)
{
    uint64_t v = (uint64_t)(uintptr_t)arg;
    uint64_t p = v >> SEQ_BITS;
    int64_t seq = (int64_t)(v & SEQ_MASK);

    (void)loop;
    if (p >= PRODUCERS || seq <= order.last_seq[p])
        order.out_of_order++;
    else
        order.last_seq[p] = seq;
    order.received++;
    atomic_fetch_add_explicit(&order.ran, 1, memory_order_relaxed);
}

typedef struct producer {
    ioloop_t *loop;
    unsigned id;
    uint64_t max_posts;
    atomic_int *go;
    pthread_t thread;
    /* Results, read after the join. */
    uint64_t accepted;
    int saw_shutdown;
    int other_errors;
} producer_t;

/* Posts up to max_posts callbacks, stopping at the first -ESHUTDOWN. */
static void *producer_main(void *arg)
{
    producer_t *p = arg;

    while (!atomic_load(p->go))
        sched_yield();
    while (p->accepted < p->max_posts) {
        int rc = ioloop_add_callback(p->loop, order_cb, encode(p->id, p->accepted));

        if (rc == 0) {
            p->accepted++;
        } else if (rc == -ESHUTDOWN) {
            p->saw_shutdown = 1;
            break;
        } else {
            p->other_errors++;
            break;
        }
    }
    return NULL;
}

static void producers_start(producer_t *producers, ioloop_t *loop, uint64_t max_posts,
                            atomic_int *go)
{
    for (unsigned i = 0; i < PRODUCERS; i++) {
        memset(&producers[i], 0, sizeof(producers[i]));
        producers[i].loop = loop;
        producers[i].id = i;
        producers[i].max_posts = max_posts;
        producers[i].go = go;
        if (pthread_create(&producers[i].thread, NULL, producer_main, &producers[i]) != 0)
            abort();
    }
}

static void test_callback_queue_fifo_per_producer(void **state)
{
    const uint64_t per_producer = quick() ? 10000 : 100000;
    const uint64_t total = per_producer * PRODUCERS;
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    producer_t producers[PRODUCERS];
    test_loop_thread_t t;
    atomic_int go;
    ioloop_stats_t s;

    (void)state;
    assert_non_null(loop);
    order_reset();
    atomic_init(&go, 0);
    test_loop_thread_start(&t, loop);
    producers_start(producers, loop, per_producer, &go);
    atomic_store(&go, 1);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(producers[i].thread, NULL);
    ioloop_stop(loop);
    assert_int_equal(test_loop_thread_join(&t), 0);

    s = get_stats(loop);
    printf("%d producers x %llu posts: %llu wakeups, %.4f wakeups per post\n", PRODUCERS,
           (unsigned long long)per_producer, (unsigned long long)s.wakeups,
           (double)s.wakeups / (double)total);
    for (int i = 0; i < PRODUCERS; i++) {
        assert_int_equal(producers[i].accepted, per_producer);
        assert_int_equal(producers[i].other_errors, 0);
        assert_int_equal(order.last_seq[i], (int64_t)per_producer - 1);
    }
    assert_int_equal(order.out_of_order, 0);
    assert_int_equal(order.received, total);
    assert_int_equal(s.callbacks_run, total);
    assert_int_equal(s.callbacks_pending, 0);
    /* Coalescing: far fewer eventfd writes than posts. */
    assert_true(s.wakeups < total / 4);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- A burst of posts while a wakeup is pending costs no further eventfd write --------- */

#define BURST 1000

typedef struct blocker {
    atomic_int blocked;  /* set by the loop thread once inside the callback */
    atomic_int release;  /* set by the test thread */
    atomic_int timed_out;
    uint64_t pending_seen;     /* callbacks_pending read by the loop thread after the burst */
} blocker_t;

/* Holds the loop thread inside a callback until the test thread releases it. */
static void blocker_cb(ioloop_t *loop, void *arg)
{
    blocker_t *b = arg;

    atomic_store(&b->blocked, 1);
    if (!wait_for(&b->release, 1))
        atomic_store(&b->timed_out, 1);
    b->pending_seen = get_stats(loop).callbacks_pending;
}

static void blocker_init(blocker_t *b)
{
    atomic_init(&b->blocked, 0);
    atomic_init(&b->release, 0);
    atomic_init(&b->timed_out, 0);
    b->pending_seen = 0;
}

static void test_callback_queue_coalesced_wakeups(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    atomic_int ran;
    int runs = 0;
    blocker_t b;
    test_loop_thread_t t;
    ioloop_stats_t s;
    uint64_t wakeups_before;

    (void)state;
    assert_non_null(loop);
    /* A loop not started yet: a burst from another thread makes at most one eventfd write. */
    assert_int_equal(post_from_other_thread(loop, count_cb, &runs, BURST), 0);
    s = get_stats(loop);
    printf("burst of %d posts before start: %llu wakeup(s)\n", BURST,
           (unsigned long long)s.wakeups);
    assert_true(s.wakeups <= 1);
    assert_int_equal(s.callbacks_pending, BURST);
    assert_int_equal(s.callbacks_run, 0);
    assert_int_equal(runs, 0);
    ioloop_stop(loop);
    run_loop(loop); /* the stop ends this start once the queue ran */
    s = get_stats(loop);
    assert_int_equal(runs, BURST);
    assert_int_equal(s.callbacks_run, BURST);
    assert_int_equal(s.callbacks_pending, 0);
    assert_true(s.wakeups <= 2); /* the burst's one, and perhaps the stop's */
    ioloop_free(loop);

    /* A running loop held inside a callback is awake: it looks at the queue again before it
     * sleeps, so the burst behind it costs no eventfd write at all. */
    loop = ioloop_new();
    assert_non_null(loop);
    blocker_init(&b);
    atomic_init(&ran, 0);
    test_loop_thread_start(&t, loop);
    assert_int_equal(ioloop_add_callback(loop, blocker_cb, &b), 0);
    assert_true(wait_for(&b.blocked, 1));
    wakeups_before = get_stats(loop).wakeups;
    for (int i = 0; i < BURST; i++)
        assert_int_equal(ioloop_add_callback(loop, atomic_count_cb, &ran), 0);
    s = get_stats(loop);
    printf("burst of %d posts to a busy loop: %llu wakeup(s)\n", BURST,
           (unsigned long long)(s.wakeups - wakeups_before));
    assert_int_equal(s.wakeups - wakeups_before, 0);
    atomic_store(&b.release, 1);
    /* And the burst runs without any further post to wake the loop. */
    assert_true(wait_for(&ran, BURST));
    ioloop_stop(loop);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_false(atomic_load(&b.timed_out));
    assert_int_equal(atomic_load(&ran), BURST);
    assert_int_equal(get_stats(loop).callbacks_run, BURST + 1);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- A callback posted from a callback runs on the next iteration ---------------------- */

typedef struct next_ctx {
    int handler_calls;
    int handler_calls_a, handler_calls_b;
    uint64_t iteration_a, iteration_b;
    int b_runs;
    int b_ran_during_post; /* B had run by the time A's add_callback returned */
    int rc_post;
} next_ctx_t;

static void next_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    ((next_ctx_t *)arg)->handler_calls++; /* never reads: stays ready */
}

static void next_b_cb(ioloop_t *loop, void *arg)
{
    next_ctx_t *ctx = arg;

    ctx->b_runs++;
    ctx->iteration_b = get_stats(loop).iterations;
    ctx->handler_calls_b = ctx->handler_calls;
    ioloop_stop(loop);
}

static void next_a_cb(ioloop_t *loop, void *arg)
{
    next_ctx_t *ctx = arg;

    ctx->iteration_a = get_stats(loop).iterations;
    ctx->handler_calls_a = ctx->handler_calls;
    ctx->rc_post = ioloop_add_callback(loop, next_b_cb, ctx);
    ctx->b_ran_during_post = ctx->b_runs != 0;
}

static void test_callback_queue_posted_from_callback_runs_next_iteration(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    next_ctx_t ctx;
    int pipe_fds[2];

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    ctx.rc_post = 1;
    make_ready_pipe(pipe_fds);
    assert_int_equal(ioloop_add_handler(loop, pipe_fds[0], IOLOOP_READ, next_handler, &ctx), 0);
    assert_int_equal(ioloop_add_callback(loop, next_a_cb, &ctx), 0);
    run_loop(loop);
    assert_int_equal(ctx.rc_post, 0);
    assert_false(ctx.b_ran_during_post);
    assert_int_equal(ctx.b_runs, 1);
    assert_true(ctx.iteration_b > ctx.iteration_a);
    assert_true(ctx.handler_calls_b > ctx.handler_calls_a); /* I/O ran in between */
    assert_int_equal(ioloop_remove_handler(loop, pipe_fds[0]), 0);
    ioloop_free(loop);
    close_pipe(pipe_fds);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- A callback that re-posts itself forever does not starve I/O ----------------------- */

#define REPOST_RUNS 1000

typedef struct repost_ctx {
    int runs;
    int handler_calls;
    int handler_calls_seen;
    int starved;          /* runs with no handler call since the previous run */
    uint64_t last_iteration;
    int same_iteration;   /* runs in the same iteration as the previous run */
    int post_errors;
} repost_ctx_t;

static void repost_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    ((repost_ctx_t *)arg)->handler_calls++;
}

static void repost_cb(ioloop_t *loop, void *arg)
{
    repost_ctx_t *ctx = arg;
    uint64_t iteration = get_stats(loop).iterations;

    if (ctx->runs > 0) {
        if (ctx->handler_calls == ctx->handler_calls_seen)
            ctx->starved++;
        if (iteration == ctx->last_iteration)
            ctx->same_iteration++;
    }
    ctx->handler_calls_seen = ctx->handler_calls;
    ctx->last_iteration = iteration;
    if (++ctx->runs < REPOST_RUNS) {
        if (ioloop_add_callback(loop, repost_cb, ctx) != 0)
            ctx->post_errors++;
    } else {
        ioloop_stop(loop);
    }
}

static void test_callback_queue_reposting_does_not_starve_io(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    repost_ctx_t ctx;
    int pipe_fds[2];

    (void)state;
    assert_non_null(loop);
    memset(&ctx, 0, sizeof(ctx));
    make_ready_pipe(pipe_fds);
    assert_int_equal(ioloop_add_handler(loop, pipe_fds[0], IOLOOP_READ, repost_handler, &ctx),
                     0);
    assert_int_equal(ioloop_add_callback(loop, repost_cb, &ctx), 0);
    run_loop(loop);
    assert_int_equal(ctx.post_errors, 0);
    assert_int_equal(ctx.runs, REPOST_RUNS);
    assert_int_equal(ctx.starved, 0);
    assert_int_equal(ctx.same_iteration, 0);
    assert_true(ctx.handler_calls >= REPOST_RUNS - 1);
    assert_int_equal(get_stats(loop).callbacks_run, REPOST_RUNS);
    assert_int_equal(ioloop_remove_handler(loop, pipe_fds[0]), 0);
    ioloop_free(loop);
    close_pipe(pipe_fds);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- After stop: -ESHUTDOWN until started again ---------------------------------------- */

typedef struct shutdown_ctx {
    int rc_before_stop, rc_after_stop;
    int y_runs, z_runs;
} shutdown_ctx_t;

static void shutdown_y_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ((shutdown_ctx_t *)arg)->y_runs++;
}

static void shutdown_z_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ((shutdown_ctx_t *)arg)->z_runs++;
}

static void shutdown_x_cb(ioloop_t *loop, void *arg)
{
    shutdown_ctx_t *ctx = arg;

    ctx->rc_before_stop = ioloop_add_callback(loop, shutdown_y_cb, ctx);
    ioloop_stop(loop);
    ctx->rc_after_stop = ioloop_add_callback(loop, shutdown_z_cb, ctx);
}

static void test_callback_queue_eshutdown_until_restart(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    shutdown_ctx_t ctx = {1, 1, 0, 0};
    test_loop_thread_t t;
    atomic_int ran;
    int accepted = 0, refused = 0;
    uint64_t deadline;

    (void)state;
    assert_non_null(loop);
    /* Inside the loop: accepted before stop runs (next iteration, still before start
     * returns); refused after stop never runs. */
    assert_int_equal(ioloop_add_callback(loop, shutdown_x_cb, &ctx), 0);
    run_loop(loop);
    assert_int_equal(ctx.rc_before_stop, 0);
    assert_int_equal(ctx.rc_after_stop, -ESHUTDOWN);
    assert_int_equal(ctx.y_runs, 1);
    assert_int_equal(ctx.z_runs, 0);

    /* Not started again yet: still refused, from this thread and from another. */
    assert_int_equal(ioloop_add_callback(loop, shutdown_z_cb, &ctx), -ESHUTDOWN);
    assert_int_equal(post_from_other_thread(loop, shutdown_z_cb, &ctx, 1), 1);
    assert_int_equal(get_stats(loop).callbacks_pending, 0);

    /* Started again (in another thread): posts are accepted again. */
    atomic_init(&ran, 0);
    test_loop_thread_start(&t, loop);
    deadline = test_now_us() + (uint64_t)WATCHDOG_MS * 1000;
    for (;;) {
        int rc = ioloop_add_callback(loop, atomic_count_cb, &ran);

        if (rc == 0) {
            accepted++;
            break;
        }
        assert_int_equal(rc, -ESHUTDOWN);
        refused++;
        if (test_now_us() > deadline)
            break;
        sched_yield();
    }
    assert_int_equal(accepted, 1);
    for (int i = 0; i < 99; i++)
        assert_int_equal(ioloop_add_callback(loop, atomic_count_cb, &ran), 0);
    assert_int_equal(ioloop_add_callback(loop, stop_cb, NULL), 0);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_int_equal(atomic_load(&ran), 100);
    assert_int_equal(ctx.z_runs, 0);
    assert_int_equal(ioloop_add_callback(loop, shutdown_z_cb, &ctx), -ESHUTDOWN);
    ioloop_free(loop);

    /* A stop before the first start refuses posts as well. */
    loop = ioloop_new();
    assert_non_null(loop);
    ioloop_stop(loop);
    assert_int_equal(ioloop_add_callback(loop, shutdown_z_cb, &ctx), -ESHUTDOWN);
    run_loop(loop); /* returns at once: the stop ended it */
    assert_int_equal(ctx.z_runs, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Every callback accepted before stop has run when start returns ------------------- */

static void slow_cb(ioloop_t *loop, void *arg)
{
    uint64_t end = test_now_us() + 2000;

    (void)loop;
    (void)arg;
    while (test_now_us() < end)
        ; /* keeps the loop busy so that the posts below pile up behind it */
}

static void test_callback_queue_accepted_before_stop_all_run(void **state)
{
    const int rounds = quick() ? 5 : 20;
    const int posts = 2000;
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();

    (void)state;
    assert_non_null(loop);
    for (int round = 0; round < rounds; round++) {
        test_loop_thread_t t;
        atomic_int running;
        uint64_t run_before = get_stats(loop).callbacks_run;
        int runs = 0; /* written by the loop thread, read after the join */

        atomic_init(&running, 0);
        if (round == 0)
            assert_int_equal(ioloop_add_callback(loop, mark_cb, &running), 0);
        test_loop_thread_start(&t, loop);
        if (round > 0) {
            /* Posts are refused until the restarted loop is running. */
            uint64_t deadline = test_now_us() + (uint64_t)WATCHDOG_MS * 1000;

            while (ioloop_add_callback(loop, mark_cb, &running) != 0 &&
                   test_now_us() < deadline)
                sched_yield();
        }
        assert_true(wait_for(&running, 1));
        assert_int_equal(ioloop_add_callback(loop, slow_cb, NULL), 0);
        for (int i = 0; i < posts; i++)
            assert_int_equal(ioloop_add_callback(loop, count_cb, &runs), 0);
        ioloop_stop(loop);
        assert_int_equal(ioloop_add_callback(loop, count_cb, &runs), -ESHUTDOWN);
        assert_int_equal(test_loop_thread_join(&t), 0);
        assert_int_equal(runs, posts);
        assert_int_equal(get_stats(loop).callbacks_run - run_before, posts + 2);
        assert_int_equal(get_stats(loop).callbacks_pending, 0);
    }
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Stop racing with producers: accepted == run, exactly ------------------------------ */

static void test_callback_queue_stop_races_producers(void **state)
{
    const int rounds = quick() ? 3 : 6;
    const int threshold = quick() ? 2000 : 20000; /* callbacks run before the stop */
    const uint64_t cap = 300000;                  /* per producer: bounds the queue */
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();

    (void)state;
    assert_non_null(loop);
    for (int round = 0; round < rounds; round++) {
        producer_t producers[PRODUCERS];
        test_loop_thread_t t;
        atomic_int go, probe_ran;
        uint64_t run_before = get_stats(loop).callbacks_run;
        uint64_t accepted = 0, deadline;
        int shut = 0, probe_accepted = 0;

        order_reset();
        atomic_init(&go, 0);
        atomic_init(&probe_ran, 0);
        test_loop_thread_start(&t, loop);
        /* From the second round on, posts are refused until the loop runs again. */
        deadline = test_now_us() + (uint64_t)WATCHDOG_MS * 1000;
        while (ioloop_add_callback(loop, mark_cb, &probe_ran) != 0 && test_now_us() < deadline)
            sched_yield();
        assert_true(wait_for(&probe_ran, 1));
        probe_accepted = 1;

        producers_start(producers, loop, cap, &go);
        atomic_store(&go, 1);
        assert_true(wait_for(&order.ran, threshold));
        ioloop_stop(loop);
        for (int i = 0; i < PRODUCERS; i++)
            pthread_join(producers[i].thread, NULL);
        assert_int_equal(test_loop_thread_join(&t), 0);

        for (int i = 0; i < PRODUCERS; i++) {
            assert_int_equal(producers[i].other_errors, 0);
            accepted += producers[i].accepted;
            shut += producers[i].saw_shutdown;
            /* Per-producer order, and nothing accepted was lost. */
            assert_int_equal(order.last_seq[i], (int64_t)producers[i].accepted - 1);
        }
        printf("stop race round %d: %llu posts accepted, %d producer(s) refused\n", round,
               (unsigned long long)accepted, shut);
        assert_int_equal(order.out_of_order, 0);
        assert_int_equal(order.received, accepted);
        assert_int_equal(get_stats(loop).callbacks_run - run_before, accepted + probe_accepted);
        assert_int_equal(get_stats(loop).callbacks_pending, 0);
        assert_int_equal(ioloop_add_callback(loop, order_cb, encode(0, 0)), -ESHUTDOWN);
    }
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Invalid arguments ----------------------------------------------------------------- */

static void test_callback_queue_invalid_arguments(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int runs = 0;

    (void)state;
    assert_non_null(loop);
    assert_int_equal(ioloop_add_callback(NULL, count_cb, &runs), -EINVAL);
    assert_int_equal(ioloop_add_callback(loop, NULL, &runs), -EINVAL);
    assert_int_equal(ioloop_add_callback(loop, NULL, NULL), -EINVAL);
    assert_int_equal(get_stats(loop).callbacks_pending, 0);
    assert_int_equal(get_stats(loop).wakeups, 0);
    ioloop_stop(loop);
    run_loop(loop);
    assert_int_equal(runs, 0);
    assert_int_equal(get_stats(loop).callbacks_run, 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- Callbacks run in the loop thread -------------------------------------------------- */

typedef struct thread_probe {
    ioloop_t *current;
    int in_loop_thread;
    pthread_t self;
    int runs;
} thread_probe_t;

static void thread_probe_cb(ioloop_t *loop, void *arg)
{
    thread_probe_t *p = arg;

    p->current = ioloop_current();
    p->in_loop_thread = ioloop_in_loop_thread(loop);
    p->self = pthread_self();
    p->runs++;
}

static void test_callback_queue_runs_in_loop_thread(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    thread_probe_t from_main, from_other;
    test_loop_thread_t t;
    atomic_int running;

    (void)state;
    assert_non_null(loop);
    memset(&from_main, 0, sizeof(from_main));
    memset(&from_other, 0, sizeof(from_other));
    atomic_init(&running, 0);
    assert_int_equal(ioloop_add_callback(loop, mark_cb, &running), 0);
    test_loop_thread_start(&t, loop);
    assert_true(wait_for(&running, 1));
    /* This thread is not the loop's while another runs it. */
    assert_null(ioloop_current());
    assert_int_equal(ioloop_in_loop_thread(loop), 0);
    assert_int_equal(ioloop_add_callback(loop, thread_probe_cb, &from_main), 0);
    assert_int_equal(post_from_other_thread(loop, thread_probe_cb, &from_other, 1), 0);
    assert_int_equal(ioloop_add_callback(loop, stop_cb, NULL), 0);
    assert_int_equal(test_loop_thread_join(&t), 0);

    assert_int_equal(from_main.runs, 1);
    assert_ptr_equal(from_main.current, loop);
    assert_int_equal(from_main.in_loop_thread, 1);
    assert_true(pthread_equal(from_main.self, t.thread));
    assert_int_equal(from_other.runs, 1);
    assert_ptr_equal(from_other.current, loop);
    assert_int_equal(from_other.in_loop_thread, 1);
    assert_true(pthread_equal(from_other.self, t.thread));
    assert_null(ioloop_current());
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

/* ---- callbacks_pending counts queued callbacks that have not run ----------------------- */

static void test_callback_queue_pending_count(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new();
    test_loop_thread_t t;
    blocker_t b;
    atomic_int ran;
    int runs = 0;
    ioloop_stats_t s;

    (void)state;
    assert_non_null(loop);
    assert_int_equal(get_stats(loop).callbacks_pending, 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ioloop_add_callback(loop, count_cb, &runs), 0);
    assert_int_equal(get_stats(loop).callbacks_pending, 5);
    assert_int_equal(post_from_other_thread(loop, count_cb, &runs, 3), 0);
    s = get_stats(loop);
    assert_int_equal(s.callbacks_pending, 8);
    assert_int_equal(s.callbacks_run, 0);
    ioloop_stop(loop);
    run_loop(loop);
    s = get_stats(loop);
    assert_int_equal(runs, 8);
    assert_int_equal(s.callbacks_pending, 0);
    assert_int_equal(s.callbacks_run, 8);

    /* While the loop thread is held in a callback, the posts behind it are pending. */
    blocker_init(&b);
    atomic_init(&ran, 0);
    test_loop_thread_start(&t, loop);
    /* The stop above ended the previous start: wait until posts are accepted again. */
    {
        uint64_t deadline = test_now_us() + (uint64_t)WATCHDOG_MS * 1000;

        while (ioloop_add_callback(loop, blocker_cb, &b) != 0 && test_now_us() < deadline)
            sched_yield();
    }
    assert_true(wait_for(&b.blocked, 1));
    for (int i = 0; i < 10; i++)
        assert_int_equal(ioloop_add_callback(loop, atomic_count_cb, &ran), 0);
    atomic_store(&b.release, 1);
    assert_true(wait_for(&ran, 10));
    ioloop_stop(loop);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_false(atomic_load(&b.timed_out));
    assert_int_equal(b.pending_seen, 10); /* read by the loop thread itself */
    s = get_stats(loop);
    assert_int_equal(s.callbacks_pending, 0);
    assert_int_equal(s.callbacks_run, 8 + 1 + 10);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_callback_queue_posted_before_start_runs_at_once),
        cmocka_unit_test(test_callback_queue_fifo_per_producer),
        cmocka_unit_test(test_callback_queue_coalesced_wakeups),
        cmocka_unit_test(test_callback_queue_posted_from_callback_runs_next_iteration),
        cmocka_unit_test(test_callback_queue_reposting_does_not_starve_io),
        cmocka_unit_test(test_callback_queue_eshutdown_until_restart),
        cmocka_unit_test(test_callback_queue_accepted_before_stop_all_run),
        cmocka_unit_test(test_callback_queue_stop_races_producers),
        cmocka_unit_test(test_callback_queue_invalid_arguments),
        cmocka_unit_test(test_callback_queue_runs_in_loop_thread),
        cmocka_unit_test(test_callback_queue_pending_count),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
