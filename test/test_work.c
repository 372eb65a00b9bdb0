/*
 * Unit tests of the work pool (include/ioloop/work.h): every accepted submission gets exactly
 * one done, in its loop's thread, with the right err, also from four submitting threads at
 * once and across two loops; FIFO order with one thread; cancel of queued work, of work taken
 * in a batch but not begun, of running work (-EBUSY) and of finished work (-ENOENT); pool_free
 * cancelling queued work and work taken in a batch, racing a submitting thread, and called
 * from a done; submissions to a stopped loop; dones that wait for a stopped loop's restart;
 * ioloop_free() of a loop with finished, queued, taken and running work; the batching of
 * completions; the threads' signal mask
 * and name; no thread or fd left behind; and the -EINVAL cases.
 *
 * Work that must block does so on a gate: it writes a byte to a pipe when it begins and waits
 * (bounded) for a byte on another, which the test writes when it wants the work to finish.
 * One internal call (lib/core/work.h) fixes the batch size where a test needs a batch.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/work.h" /* ioloop__work_pool_fix_batch() */
#include "helpers.h"

/* How long a test waits for something that should happen at once before it fails. */
#define WAIT_MS 10000

/* ---- Gates: work that blocks until the test lets it go ---------------------------------- */

struct gate {
    int started[2]; /* the work writes a byte here when it begins */
    int release[2]; /* ... and waits for one here */
};

static void gate_init(struct gate *g)
{
    assert_int_equal(pipe2(g->started, O_CLOEXEC), 0);
    assert_int_equal(pipe2(g->release, O_CLOEXEC), 0);
}

static void gate_fini(struct gate *g)
{
    close(g->started[0]);
    close(g->started[1]);
    close(g->release[0]);
    close(g->release[1]);
}

/* In the work: says it began, then waits (at most WAIT_MS) to be let go. */
static void gate_pass(struct gate *g)
{
    struct pollfd pfd = {.fd = g->release[0], .events = POLLIN};
    char c = 's';

    if (write(g->started[1], &c, 1) != 1)
        abort();
    while (poll(&pfd, 1, WAIT_MS) < 0 && errno == EINTR)
        ;
    if (pfd.revents & POLLIN)
        (void)read(g->release[0], &c, 1);
}

/* In the test: waits until the gated work began. */
static void gate_wait_started(struct gate *g)
{
    char c;

    assert_int_equal(test_wait_fd(g->started[0], POLLIN, WAIT_MS), 1);
    assert_int_equal(read(g->started[0], &c, 1), 1);
}

static void gate_open(struct gate *g)
{
    assert_int_equal(write(g->release[1], "r", 1), 1);
}

/* ---- Jobs: what each submission did, seen from the test --------------------------------- */

struct run;

struct job {
    int index;
    struct gate *gate;        /* NULL: the work returns at once */
    struct run *run;
    atomic_int ran;           /* times the work ran */
    atomic_int dones;         /* times the done ran */
    int err;                  /* the done's err (valid once dones > 0) */
    pthread_t done_thread;
    ioloop_t *done_loop;
    int in_loop_thread;       /* ioloop_in_loop_thread() in the done */
    int64_t resubmit;         /* what a submission from the done returned (see below) */
    int64_t id;               /* set by submit_from_timer() */
};

/* Shared by a test's jobs. Orders are recorded only when the arrays are set. */
struct run {
    ioloop_work_pool_t *pool;
    int *work_order;
    atomic_int nwork;
    int *done_order;
    atomic_int ndone;
    int stop_at;              /* the done that makes this count stops its loop (0: none) */
    bool resubmit;            /* each done submits once more to its loop (-> job.resubmit) */
};

static void job_work(void *arg)
{
    struct job *j = arg;
    struct run *r = j->run;

    if (r != NULL && r->work_order != NULL)
        r->work_order[atomic_fetch_add(&r->nwork, 1)] = j->index;
    atomic_fetch_add(&j->ran, 1);
    if (j->gate != NULL)
        gate_pass(j->gate);
}

static void job_done(ioloop_t *loop, int err, void *arg)
{
    struct job *j = arg;
    struct run *r = j->run;
    int n;

    j->err = err;
    j->done_thread = pthread_self();
    j->done_loop = loop;
    j->in_loop_thread = ioloop_in_loop_thread(loop);
    if (r != NULL && r->resubmit)
        j->resubmit = ioloop_work_submit(r->pool, loop, job_work, job_done, j);
    atomic_fetch_add(&j->dones, 1);
    if (r == NULL)
        return;
    n = atomic_fetch_add(&r->ndone, 1);
    if (r->done_order != NULL)
        r->done_order[n] = j->index;
    if (n + 1 == r->stop_at)
        ioloop_stop(loop);
}

static struct job *jobs_new(int n, struct run *r)
{
    struct job *jobs = calloc((size_t)n, sizeof *jobs);

    assert_non_null(jobs);
    for (int i = 0; i < n; i++) {
        jobs[i].index = i;
        jobs[i].run = r;
    }
    return jobs;
}

static int64_t submit(ioloop_work_pool_t *pool, ioloop_t *loop, struct job *j)
{
    return ioloop_work_submit(pool, loop, job_work, job_done, j);
}

/* A timer that submits its job (to a loop that must be running to accept it). */
static void submit_from_timer(ioloop_t *loop, void *arg)
{
    struct job *j = arg;

    j->id = submit(j->run->pool, loop, j);
    assert_true(j->id > 0);
}

/* Runs `loop` in the calling thread until a done stops it, bounded by a watchdog. */
static void run_loop(ioloop_t *loop)
{
    test_watchdog_t w;

    test_watchdog_arm(&w, loop, WAIT_MS);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(test_watchdog_disarm(&w), 0);
}

static void get_stats(ioloop_work_pool_t *pool, ioloop_work_stats_t *s)
{
    assert_int_equal(ioloop_work_pool_get_stats(pool, s), 0);
}

/* Waits (polling, at most WAIT_MS) until the pool's `field` reaches `value`. For states no
 * fd reports, such as work handed to a stopped loop. */
#define STAT_QUEUED 0
#define STAT_COMPLETED 1
static void wait_pool_stat(ioloop_work_pool_t *pool, int field, uint64_t value)
{
    uint64_t deadline = test_now_us() + WAIT_MS * 1000u;
    ioloop_work_stats_t s;

    for (;;) {
        get_stats(pool, &s);
        if ((field == STAT_QUEUED ? s.queued : s.completed) == value)
            return;
        assert_true(test_now_us() < deadline);
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
}

/* ---- Completions ------------------------------------------------------------------------ */

static void test_work_done_runs_once_on_loop_thread(void **state)
{
    enum { N = 200 };
    struct run r = {.stop_at = N};
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *loop = ioloop_new();
    test_loop_thread_t t;
    test_watchdog_t w;
    ioloop_work_stats_t s;

    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(2);
    assert_non_null(r.pool);
    test_watchdog_arm(&w, loop, WAIT_MS);
    test_loop_thread_start(&t, loop);
    for (int i = 0; i < N; i++)
        assert_true(submit(r.pool, loop, &jobs[i]) > 0);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_int_equal(test_watchdog_disarm(&w), 0);

    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].ran), 1);
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_int_equal(jobs[i].err, 0);
        assert_true(pthread_equal(jobs[i].done_thread, t.thread));
        assert_ptr_equal(jobs[i].done_loop, loop);
        assert_int_equal(jobs[i].in_loop_thread, 1);
    }
    get_stats(r.pool, &s);
    assert_int_equal(s.threads, 2);
    assert_int_equal(s.submitted, N);
    assert_int_equal(s.completed, N);
    assert_int_equal(s.queued + s.running + s.cancelled, 0);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    free(jobs);
}

/* Four threads submit 10 000 each to one running loop: 40 000 dones, one per submission. */
enum { PRODUCERS = 4, PER_PRODUCER = 10000 };

struct producer {
    pthread_t thread;
    ioloop_work_pool_t *pool;
    ioloop_t *loop;
    struct job *jobs;
    int failures;
};

static void *producer_main(void *arg)
{
    struct producer *p = arg;

    for (int i = 0; i < PER_PRODUCER; i++)
        if (submit(p->pool, p->loop, &p->jobs[i]) <= 0)
            p->failures++;
    return NULL;
}

static void test_work_many_producers_complete_exactly(void **state)
{
    enum { N = PRODUCERS * PER_PRODUCER };
    struct run r = {.stop_at = N};
    struct job *jobs = jobs_new(N, &r);
    struct producer producers[PRODUCERS];
    ioloop_t *loop = ioloop_new();
    test_loop_thread_t t;
    test_watchdog_t w;
    ioloop_stats_t ls;

    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(2);
    assert_non_null(r.pool);
    test_watchdog_arm(&w, loop, WAIT_MS);
    test_loop_thread_start(&t, loop);
    for (int p = 0; p < PRODUCERS; p++) {
        producers[p] = (struct producer){.pool = r.pool, .loop = loop,
                                         .jobs = &jobs[p * PER_PRODUCER]};
        assert_int_equal(pthread_create(&producers[p].thread, NULL, producer_main,
                                        &producers[p]), 0);
    }
    for (int p = 0; p < PRODUCERS; p++) {
        pthread_join(producers[p].thread, NULL);
        assert_int_equal(producers[p].failures, 0);
    }
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_int_equal(test_watchdog_disarm(&w), 0);

    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_int_equal(atomic_load(&jobs[i].ran), 1);
        assert_int_equal(jobs[i].err, 0);
        assert_true(pthread_equal(jobs[i].done_thread, t.thread));
    }
    assert_int_equal(atomic_load(&r.ndone), N);
    /* Completions travel in batches: far fewer callbacks than dones. */
    ioloop_get_stats(loop, &ls);
    assert_true(ls.callbacks_run < N / 4);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    free(jobs);
}

/* One pool, two loops running in threads of their own: each done runs in its own loop. */
static void test_work_two_loops_share_a_pool(void **state)
{
    enum { N = 2000 };
    struct run r[2] = {{.stop_at = N}, {.stop_at = N}};
    struct job *jobs[2] = {jobs_new(N, &r[0]), jobs_new(N, &r[1])};
    ioloop_t *loops[2] = {ioloop_new(), ioloop_new()};
    ioloop_work_pool_t *pool = ioloop_work_pool_new(2);
    test_loop_thread_t t[2];

    assert_non_null(loops[0]);
    assert_non_null(loops[1]);
    assert_non_null(pool);
    for (int l = 0; l < 2; l++)
        test_loop_thread_start(&t[l], loops[l]);
    for (int i = 0; i < N; i++) /* interleaved: a worker's batch holds work of both loops */
        for (int l = 0; l < 2; l++)
            assert_true(submit(pool, loops[l], &jobs[l][i]) > 0);
    for (int l = 0; l < 2; l++) {
        assert_int_equal(test_loop_thread_join(&t[l]), 0);
        for (int i = 0; i < N; i++) {
            assert_int_equal(atomic_load(&jobs[l][i].dones), 1);
            assert_ptr_equal(jobs[l][i].done_loop, loops[l]);
            assert_true(pthread_equal(jobs[l][i].done_thread, t[l].thread));
        }
    }
    ioloop_work_pool_free(pool);
    for (int l = 0; l < 2; l++) {
        ioloop_free(loops[l]);
        free(jobs[l]);
    }
}

/* With one thread, work runs and completes in submission order. The worker is held at a gate
 * while the rest is submitted, so the queue (and the id table) grow several times over. */
static void test_work_one_thread_keeps_submission_order(void **state)
{
    enum { N = 1000 };
    int work_order[N], done_order[N];
    struct run r = {.stop_at = N, .work_order = work_order, .done_order = done_order};
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *loop = ioloop_new();
    ioloop_work_stats_t s;
    struct gate g;

    gate_init(&g);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    jobs[0].gate = &g;
    assert_true(submit(r.pool, loop, &jobs[0]) > 0);
    gate_wait_started(&g);
    for (int i = 1; i < N; i++)
        assert_true(submit(r.pool, loop, &jobs[i]) > 0);
    get_stats(r.pool, &s);
    assert_int_equal(s.queued, N - 1);
    gate_open(&g);
    /* The loop runs later: the dones wait for it, and run before it first waits. */
    run_loop(loop);
    assert_int_equal(atomic_load(&r.nwork), N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(work_order[i], i);
        assert_int_equal(done_order[i], i);
    }
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    gate_fini(&g);
    free(jobs);
}

/* A burst of completions costs one post, and a drain callback per 256 dones at most. */
static void test_work_burst_costs_few_callbacks(void **state)
{
    enum { N = 10000 };
    struct run r = {.stop_at = N};
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *loop = ioloop_new();
    ioloop_stats_t ls;

    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(2);
    assert_non_null(r.pool);
    for (int i = 0; i < N; i++)
        assert_true(submit(r.pool, loop, &jobs[i]) > 0);
    wait_pool_stat(r.pool, STAT_COMPLETED, N); /* every done is due before the loop runs */
    ioloop_get_stats(loop, &ls);
    assert_int_equal(ls.callbacks_pending, 1); /* one drain posted for all of them */
    run_loop(loop);
    ioloop_get_stats(loop, &ls);
    assert_int_equal(atomic_load(&r.ndone), N);
    assert_true(ls.callbacks_run <= N / 256 + 2);
    assert_true(ls.wakeups <= 1);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    free(jobs);
}

/* ---- Cancel ----------------------------------------------------------------------------- */

static void test_work_cancel_queued_never_runs(void **state)
{
    struct run r = {.stop_at = 2};
    struct job *jobs = jobs_new(2, &r);
    ioloop_t *loop = ioloop_new();
    ioloop_work_stats_t s;
    struct gate g;
    int64_t id;

    gate_init(&g);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    jobs[0].gate = &g;
    assert_true(submit(r.pool, loop, &jobs[0]) > 0);
    gate_wait_started(&g); /* the only worker is busy: the next one stays queued */
    id = submit(r.pool, loop, &jobs[1]);
    assert_true(id > 0);
    assert_int_equal(ioloop_work_cancel(r.pool, id), 0);
    assert_int_equal(ioloop_work_cancel(r.pool, id), -ENOENT);
    assert_int_equal(atomic_load(&jobs[1].dones), 0); /* the done follows in the loop */
    gate_open(&g);
    run_loop(loop);

    assert_int_equal(jobs[0].err, 0);
    assert_int_equal(atomic_load(&jobs[1].dones), 1);
    assert_int_equal(jobs[1].err, -ECANCELED);
    assert_int_equal(jobs[1].in_loop_thread, 1);
    get_stats(r.pool, &s);
    assert_int_equal(s.completed, 2);
    assert_int_equal(s.cancelled, 1);
    ioloop_work_pool_free(r.pool);
    assert_int_equal(atomic_load(&jobs[1].ran), 0);
    ioloop_free(loop);
    gate_fini(&g);
    free(jobs);
}

static void test_work_cancel_running_is_busy(void **state)
{
    struct run r = {.stop_at = 1};
    struct job *jobs = jobs_new(1, &r);
    ioloop_t *loop = ioloop_new();
    struct gate g;
    int64_t id;

    gate_init(&g);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    jobs[0].gate = &g;
    id = submit(r.pool, loop, &jobs[0]);
    assert_true(id > 0);
    gate_wait_started(&g);
    assert_int_equal(ioloop_work_cancel(r.pool, id), -EBUSY);
    gate_open(&g);
    run_loop(loop);
    assert_int_equal(atomic_load(&jobs[0].dones), 1);
    assert_int_equal(jobs[0].err, 0);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    gate_fini(&g);
    free(jobs);
}

static void test_work_cancel_finished_is_enoent(void **state)
{
    struct run r = {.stop_at = 1};
    struct job *jobs = jobs_new(2, &r);
    ioloop_t *loop = ioloop_new();
    int64_t id, next;

    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    id = submit(r.pool, loop, &jobs[0]);
    assert_true(id > 0);
    run_loop(loop);
    assert_int_equal(jobs[0].err, 0);
    assert_int_equal(ioloop_work_cancel(r.pool, id), -ENOENT);
    /* Ids are never reused: the next submission, which takes the same slot, has another.
     * (The loop is stopped now: it is submitted from a timer once the loop runs again.) */
    r.stop_at = 2;
    assert_int_equal(ioloop_work_cancel(r.pool, (int64_t)1 << 40 | 7), -ENOENT);
    assert_true(ioloop_run_after(loop, 0, submit_from_timer, &jobs[1]) > 0);
    run_loop(loop);
    next = jobs[1].id;
    assert_true(next > 0 && next != id);
    assert_int_equal(ioloop_work_cancel(r.pool, id), -ENOENT);
    assert_int_equal(ioloop_work_cancel(r.pool, next), -ENOENT);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    free(jobs);
}

/* Work a worker took in its batch but has not begun is still cancellable, and never runs.
 * (Batches are fixed at 32: a worker would otherwise take long work one item at a time.) */
static void test_work_cancel_taken_before_it_begins(void **state)
{
    enum { N = 12 }; /* 0: holds the worker; 1: first of the batch, gated; 2..11: behind it */
    struct run r = {.stop_at = N};
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *loop = ioloop_new();
    int64_t ids[N];
    ioloop_work_stats_t s;
    struct gate g0, g1;

    gate_init(&g0);
    gate_init(&g1);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    ioloop__work_pool_fix_batch(r.pool, 32);
    jobs[0].gate = &g0;
    jobs[1].gate = &g1;
    assert_true((ids[0] = submit(r.pool, loop, &jobs[0])) > 0);
    gate_wait_started(&g0);
    for (int i = 1; i < N; i++)
        assert_true((ids[i] = submit(r.pool, loop, &jobs[i])) > 0);
    gate_open(&g0); /* the worker takes all 11 queued as one batch, and begins job 1 */
    gate_wait_started(&g1);
    get_stats(r.pool, &s);
    assert_int_equal(s.queued, 0);
    assert_int_equal(s.running, N - 1);
    assert_int_equal(ioloop_work_cancel(r.pool, ids[1]), -EBUSY);
    assert_int_equal(ioloop_work_cancel(r.pool, ids[5]), 0);
    assert_int_equal(ioloop_work_cancel(r.pool, ids[5]), -ENOENT);
    gate_open(&g1);
    run_loop(loop);

    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_int_equal(jobs[i].err, i == 5 ? -ECANCELED : 0);
        assert_int_equal(atomic_load(&jobs[i].ran), i == 5 ? 0 : 1);
    }
    get_stats(r.pool, &s);
    assert_int_equal(s.cancelled, 1);
    assert_int_equal(s.completed, N);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    gate_fini(&g0);
    gate_fini(&g1);
    free(jobs);
}

/* ---- Freeing the pool ------------------------------------------------------------------- */

struct pool_freer {
    pthread_t thread;
    ioloop_work_pool_t *pool;
};

static void *pool_freer_main(void *arg)
{
    struct pool_freer *f = arg;

    ioloop_work_pool_free(f->pool);
    return NULL;
}

static void test_work_pool_free_cancels_queued(void **state)
{
    enum { N = 4 };
    struct run r = {.stop_at = N};
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *loop = ioloop_new();
    struct pool_freer f;
    struct gate g;

    gate_init(&g);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    jobs[0].gate = &g;
    assert_true(submit(r.pool, loop, &jobs[0]) > 0);
    gate_wait_started(&g);
    for (int i = 1; i < N; i++)
        assert_true(submit(r.pool, loop, &jobs[i]) > 0);
    /* pool_free waits for the running job; the queued ones it cancels before that. */
    f.pool = r.pool;
    assert_int_equal(pthread_create(&f.thread, NULL, pool_freer_main, &f), 0);
    wait_pool_stat(r.pool, STAT_QUEUED, 0);
    gate_open(&g);
    pthread_join(f.thread, NULL);

    /* The pool is gone; the dones run now, in the loop, and touch nothing of it. */
    assert_int_equal(atomic_load(&r.ndone), 0);
    run_loop(loop);
    assert_int_equal(jobs[0].err, 0);
    assert_int_equal(atomic_load(&jobs[0].ran), 1);
    for (int i = 1; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_int_equal(jobs[i].err, -ECANCELED);
        assert_int_equal(atomic_load(&jobs[i].ran), 0);
        assert_int_equal(jobs[i].in_loop_thread, 1);
    }
    ioloop_free(loop);
    gate_fini(&g);
    free(jobs);
}

/* A thread submits while another frees the pool: every submission is accepted (and then
 * cancelled) until one says -ESHUTDOWN, and so does every one after it. Deterministic: the
 * freeing thread cannot finish while the only worker is held at its gate, so the pool stays
 * valid until the test lets the worker go. */
static void test_work_submit_racing_pool_free_is_shutdown(void **state)
{
    enum { MAX = 1 << 16 };
    struct run r = {0};
    struct job *jobs = jobs_new(MAX + 1, &r);
    ioloop_t *loop = ioloop_new();
    uint64_t deadline = test_now_us() + WAIT_MS * 1000u;
    struct pool_freer f;
    struct gate g;
    int64_t id = 0;
    int accepted = 0;

    gate_init(&g);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    jobs[0].gate = &g;
    assert_true(submit(r.pool, loop, &jobs[0]) > 0);
    gate_wait_started(&g);
    f.pool = r.pool;
    assert_int_equal(pthread_create(&f.thread, NULL, pool_freer_main, &f), 0);
    while (accepted < MAX - 1 && (id = submit(r.pool, loop, &jobs[1 + accepted])) > 0) {
        accepted++;
        assert_true(test_now_us() < deadline);
        sched_yield(); /* let the freeing thread in */
    }
    assert_int_equal(id, -ESHUTDOWN);
    assert_int_equal(submit(r.pool, loop, &jobs[MAX]), -ESHUTDOWN);
    gate_open(&g);
    pthread_join(f.thread, NULL);

    r.stop_at = 1 + accepted;
    run_loop(loop);
    assert_int_equal(jobs[0].err, 0);
    for (int i = 1; i <= accepted; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_int_equal(jobs[i].err, -ECANCELED);
        assert_int_equal(atomic_load(&jobs[i].ran), 0);
    }
    assert_int_equal(atomic_load(&jobs[1 + accepted].dones), 0);
    assert_int_equal(atomic_load(&jobs[MAX].dones), 0);
    ioloop_free(loop);
    gate_fini(&g);
    free(jobs);
}

/* pool_free also cancels work a worker took in its batch but has not begun; the worker skips
 * it and hands it in. A submission that fails with -ESHUTDOWN tells the test that pool_free has
 * begun (it closes the pool and cancels in one critical section). */
static void test_work_pool_free_cancels_taken(void **state)
{
    enum { N = 6, MAX = 1 << 16 }; /* 0 holds the worker; 1 begins the batch, gated; 2..5 */
    struct run r = {0};
    struct job *jobs = jobs_new(N + MAX, &r);
    ioloop_t *loop = ioloop_new();
    uint64_t deadline = test_now_us() + WAIT_MS * 1000u;
    struct pool_freer f;
    struct gate g0, g1;
    int extra = 0;

    gate_init(&g0);
    gate_init(&g1);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    ioloop__work_pool_fix_batch(r.pool, 32);
    jobs[0].gate = &g0;
    jobs[1].gate = &g1;
    assert_true(submit(r.pool, loop, &jobs[0]) > 0);
    gate_wait_started(&g0);
    for (int i = 1; i < N; i++)
        assert_true(submit(r.pool, loop, &jobs[i]) > 0);
    gate_open(&g0);
    gate_wait_started(&g1); /* 2..5 are in the worker's batch, not begun */
    f.pool = r.pool;
    assert_int_equal(pthread_create(&f.thread, NULL, pool_freer_main, &f), 0);
    while (extra < MAX && submit(r.pool, loop, &jobs[N + extra]) > 0) {
        extra++; /* accepted before pool_free began: it cancels these too */
        assert_true(test_now_us() < deadline);
        sched_yield();
    }
    assert_true(extra < MAX);
    gate_open(&g1);
    pthread_join(f.thread, NULL);

    r.stop_at = N + extra;
    run_loop(loop);
    for (int i = 0; i < N + extra; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_int_equal(jobs[i].err, i < 2 ? 0 : -ECANCELED);
        assert_int_equal(atomic_load(&jobs[i].ran), i < 2 ? 1 : 0);
    }
    ioloop_free(loop);
    gate_fini(&g0);
    gate_fini(&g1);
    free(jobs);
}

/* pool_free from a done, in the loop thread, with work of that loop still queued or running:
 * it never waits for the loop, and the later dones run in the loop as usual. */
static void free_pool_from_done(ioloop_t *loop, int err, void *arg)
{
    struct job *jobs = arg;
    struct run *r = jobs[0].run;

    atomic_fetch_add(&jobs[0].dones, 1);
    for (int i = 1; i < 50; i++)
        assert_true(submit(r->pool, loop, &jobs[i]) > 0);
    ioloop_work_pool_free(r->pool);
    r->pool = NULL;
}

static void test_work_pool_free_from_a_done(void **state)
{
    enum { N = 50 };
    struct run r = {.stop_at = N - 1};
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *loop = ioloop_new();

    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(2);
    assert_non_null(r.pool);
    assert_true(ioloop_work_submit(r.pool, loop, job_work, free_pool_from_done, jobs) > 0);
    run_loop(loop);
    assert_null(r.pool);
    for (int i = 1; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_true(jobs[i].err == 0 || jobs[i].err == -ECANCELED);
        assert_int_equal(atomic_load(&jobs[i].ran), jobs[i].err == 0 ? 1 : 0);
    }
    ioloop_free(loop);
    free(jobs);
}

/* ---- Stopped and freed loops ------------------------------------------------------------ */


static void test_work_submit_to_stopped_loop_is_shutdown(void **state)
{
    struct run r = {.stop_at = 1};
    struct job *jobs = jobs_new(1, &r);
    ioloop_t *loop = ioloop_new();

    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    ioloop_stop(loop);
    assert_int_equal(submit(r.pool, loop, &jobs[0]), -ESHUTDOWN);
    assert_int_equal(ioloop_start(loop), 0); /* consumes the stop, returns at once */
    assert_int_equal(submit(r.pool, loop, &jobs[0]), -ESHUTDOWN);
    /* Started again, it accepts work. */
    assert_true(ioloop_run_after(loop, 0, submit_from_timer, &jobs[0]) > 0);
    run_loop(loop);
    assert_int_equal(atomic_load(&jobs[0].dones), 1);
    assert_int_equal(jobs[0].err, 0);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    free(jobs);
}

/* Work that finishes after its loop was stopped: its done waits for the restart. */
static void test_work_done_waits_for_loop_restart(void **state)
{
    struct run r = {.stop_at = 1};
    struct job *jobs = jobs_new(1, &r);
    ioloop_t *loop = ioloop_new();
    ioloop_stats_t ls;
    test_loop_thread_t t;
    struct gate g;

    gate_init(&g);
    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    test_loop_thread_start(&t, loop);
    jobs[0].gate = &g;
    assert_true(submit(r.pool, loop, &jobs[0]) > 0);
    gate_wait_started(&g);
    ioloop_stop(loop);
    assert_int_equal(test_loop_thread_join(&t), 0);
    gate_open(&g);
    wait_pool_stat(r.pool, STAT_COMPLETED, 1);
    ioloop_get_stats(loop, &ls);
    assert_int_equal(ls.callbacks_pending, 1); /* the drain, queued in the stopped loop */
    assert_int_equal(atomic_load(&jobs[0].dones), 0);
    run_loop(loop);
    assert_int_equal(atomic_load(&jobs[0].dones), 1);
    assert_int_equal(jobs[0].err, 0);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    gate_fini(&g);
    free(jobs);
}

/* Lets the gated job go once ioloop_free() cancelled the queued ones. */
struct releaser {
    pthread_t thread;
    ioloop_work_pool_t *pool;
    struct gate *gate;
};

static void *releaser_main(void *arg)
{
    struct releaser *rel = arg;

    wait_pool_stat(rel->pool, STAT_QUEUED, 0);
    gate_open(rel->gate);
    return NULL;
}

/* ioloop_free() of a loop with finished, running and queued work: every done runs in the
 * freeing thread before it returns (queued: -ECANCELED; running: waited for, then 0;
 * finished: 0), a done cannot submit to the dying loop, and nothing runs for it afterwards. */
static void test_work_loop_free_delivers_every_done(void **state)
{
    enum { N = 4 }; /* 0: finished before the free; 1: running; 2, 3: queued */
    struct run r = {.resubmit = true};
    struct job *jobs = jobs_new(N, &r), *other = jobs_new(1, NULL);
    ioloop_t *loop = ioloop_new(), *other_loop = ioloop_new();
    struct releaser rel;
    struct gate g;

    gate_init(&g);
    assert_non_null(loop);
    assert_non_null(other_loop);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    assert_true(submit(r.pool, loop, &jobs[0]) > 0);
    wait_pool_stat(r.pool, STAT_COMPLETED, 1);
    jobs[1].gate = &g;
    assert_true(submit(r.pool, loop, &jobs[1]) > 0);
    gate_wait_started(&g);
    assert_true(submit(r.pool, loop, &jobs[2]) > 0);
    assert_true(submit(r.pool, loop, &jobs[3]) > 0);
    rel = (struct releaser){.pool = r.pool, .gate = &g};
    assert_int_equal(pthread_create(&rel.thread, NULL, releaser_main, &rel), 0);
    ioloop_free(loop);
    pthread_join(rel.thread, NULL);

    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_true(pthread_equal(jobs[i].done_thread, pthread_self()));
        assert_int_equal(jobs[i].err, i >= 2 ? -ECANCELED : 0);
        assert_int_equal(atomic_load(&jobs[i].ran), i >= 2 ? 0 : 1);
        assert_int_equal(jobs[i].resubmit, -ESHUTDOWN);
    }
    assert_int_equal(atomic_load(&r.ndone), N);
    /* The pool still serves other loops, and the freed loop gets nothing more. */
    assert_true(submit(r.pool, other_loop, &other[0]) > 0);
    wait_pool_stat(r.pool, STAT_COMPLETED, N + 1);
    ioloop_work_pool_free(r.pool);
    for (int i = 0; i < N; i++)
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
    ioloop_free(other_loop); /* delivers the other loop's done, here */
    assert_int_equal(atomic_load(&other[0].dones), 1);
    assert_int_equal(other[0].err, 0);
    gate_fini(&g);
    free(jobs);
    free(other);
}

/* Whether thread `tid` of this process is asleep (state S in /proc/self/task/<tid>/stat). */
static bool thread_sleeping(pid_t tid)
{
    char path[64], buf[512], st = '?';
    const char *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    assert_true(n > 0);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    assert_non_null(p);
    assert_int_equal(sscanf(p + 1, " %c", &st), 1);
    return st == 'S';
}

/* A thread that owns a loop: creates it, then frees it when told to, recording its tid. */
struct loop_owner {
    pthread_t thread;
    ioloop_t *loop;
    _Atomic pid_t tid;
    struct gate go;        /* started: the loop exists; release: free it now */
};

static void *loop_owner_main(void *arg)
{
    struct loop_owner *o = arg;

    atomic_store(&o->tid, gettid());
    o->loop = ioloop_new();
    gate_pass(&o->go);
    ioloop_free(o->loop);
    return NULL;
}

/* ioloop_free() cancels its loop's work that a worker took in a batch but has not begun, even
 * while the worker runs another loop's work, and waits for the worker to hand it in. The test
 * lets the worker go once the freeing thread sleeps: after the cancelling, the only sleep in
 * ioloop_free() is the wait for the hand-in. */
static void test_work_loop_free_cancels_taken(void **state)
{
    enum { N = 6 }; /* 0 holds the worker; 1 begins the batch, gated, for another loop */
    struct run r = {.stop_at = N}; /* the owner's loop gets 4 dones first, `other` the last 2 */
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *other = ioloop_new();
    uint64_t deadline = test_now_us() + WAIT_MS * 1000u;
    struct loop_owner o = {0};
    struct gate g0, g1;

    gate_init(&g0);
    gate_init(&g1);
    gate_init(&o.go);
    assert_non_null(other);
    r.pool = ioloop_work_pool_new(1);
    assert_non_null(r.pool);
    ioloop__work_pool_fix_batch(r.pool, 32);
    assert_int_equal(pthread_create(&o.thread, NULL, loop_owner_main, &o), 0);
    gate_wait_started(&o.go);
    assert_non_null(o.loop);
    jobs[0].gate = &g0;
    jobs[1].gate = &g1;
    assert_true(submit(r.pool, other, &jobs[0]) > 0);
    gate_wait_started(&g0);
    assert_true(submit(r.pool, other, &jobs[1]) > 0);
    for (int i = 2; i < N; i++)
        assert_true(submit(r.pool, o.loop, &jobs[i]) > 0);
    gate_open(&g0);
    gate_wait_started(&g1); /* 2..5, of the owner's loop, are in the batch, not begun */
    gate_open(&o.go);       /* the owner frees its loop */
    while (!thread_sleeping(atomic_load(&o.tid))) {
        assert_true(test_now_us() < deadline);
        sched_yield();
    }
    gate_open(&g1);
    pthread_join(o.thread, NULL);

    for (int i = 2; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].dones), 1);
        assert_int_equal(jobs[i].err, -ECANCELED);
        assert_int_equal(atomic_load(&jobs[i].ran), 0);
        assert_true(pthread_equal(jobs[i].done_thread, o.thread));
    }
    run_loop(other);
    assert_int_equal(jobs[0].err, 0);
    assert_int_equal(jobs[1].err, 0);
    ioloop_work_pool_free(r.pool);
    ioloop_free(other);
    gate_fini(&g0);
    gate_fini(&g1);
    gate_fini(&o.go);
    free(jobs);
}

/* ---- Threads, fds, arguments ------------------------------------------------------------ */

struct thread_probe {
    int blocked;   /* SIGINT, SIGTERM, SIGUSR1 and SIGCHLD all blocked */
    char name[16];
};

static void probe_work(void *arg)
{
    struct thread_probe *p = arg;
    sigset_t set;

    pthread_sigmask(SIG_BLOCK, NULL, &set);
    p->blocked = sigismember(&set, SIGINT) && sigismember(&set, SIGTERM) &&
                 sigismember(&set, SIGUSR1) && sigismember(&set, SIGCHLD);
    pthread_getname_np(pthread_self(), p->name, sizeof p->name);
}

static void probe_done(ioloop_t *loop, int err, void *arg)
{
    ioloop_stop(loop);
}

static void test_work_threads_block_signals_and_are_named(void **state)
{
    struct thread_probe p = {0};
    ioloop_t *loop = ioloop_new();
    ioloop_work_pool_t *pool = ioloop_work_pool_new(1);

    assert_non_null(loop);
    assert_non_null(pool);
    assert_true(ioloop_work_submit(pool, loop, probe_work, probe_done, &p) > 0);
    run_loop(loop);
    assert_int_equal(p.blocked, 1);
    assert_string_equal(p.name, "ioloop-work");
    ioloop_work_pool_free(pool);
    ioloop_free(loop);
}

static void test_work_pool_free_leaves_no_thread_or_fd(void **state)
{
    enum { N = 100 };
    int threads = test_count_threads(), fds = test_count_fds();
    struct run r = {.stop_at = N};
    struct job *jobs = jobs_new(N, &r);
    ioloop_t *loop = ioloop_new();
    ioloop_work_stats_t s;

    assert_non_null(loop);
    r.pool = ioloop_work_pool_new(3);
    assert_non_null(r.pool);
    assert_int_equal(test_count_threads(), threads + 3);
    for (int i = 0; i < N; i++)
        assert_true(submit(r.pool, loop, &jobs[i]) > 0);
    run_loop(loop);
    ioloop_work_pool_free(r.pool);
    ioloop_free(loop);
    assert_int_equal(test_count_threads(), threads);
    assert_int_equal(test_count_fds(), fds);

    /* nthreads <= 0: one per online CPU. */
    r.pool = ioloop_work_pool_new(0);
    assert_non_null(r.pool);
    get_stats(r.pool, &s);
    assert_int_equal(s.threads, (uint64_t)sysconf(_SC_NPROCESSORS_ONLN));
    ioloop_work_pool_free(r.pool);
    assert_int_equal(test_count_threads(), threads);
    free(jobs);
}

static void test_work_invalid_arguments(void **state)
{
    struct job j = {0};
    ioloop_t *loop = ioloop_new();
    ioloop_work_pool_t *pool = ioloop_work_pool_new(1);
    ioloop_work_stats_t s;

    assert_non_null(loop);
    assert_non_null(pool);
    assert_int_equal(ioloop_work_submit(NULL, loop, job_work, job_done, &j), -EINVAL);
    assert_int_equal(ioloop_work_submit(pool, NULL, job_work, job_done, &j), -EINVAL);
    assert_int_equal(ioloop_work_submit(pool, loop, NULL, job_done, &j), -EINVAL);
    assert_int_equal(ioloop_work_submit(pool, loop, job_work, NULL, &j), -EINVAL);
    assert_int_equal(ioloop_work_cancel(NULL, 1), -EINVAL);
    assert_int_equal(ioloop_work_cancel(pool, 0), -EINVAL);
    assert_int_equal(ioloop_work_cancel(pool, -5), -EINVAL);
    assert_int_equal(ioloop_work_cancel(pool, 1), -ENOENT);
    assert_int_equal(ioloop_work_pool_get_stats(NULL, &s), -EINVAL);
    assert_int_equal(ioloop_work_pool_get_stats(pool, NULL), -EINVAL);
    ioloop_work_pool_free(NULL);
    get_stats(pool, &s);
    assert_int_equal(s.submitted, 0);
    assert_int_equal(atomic_load(&j.ran) + atomic_load(&j.dones), 0);
    ioloop_work_pool_free(pool);
    ioloop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_work_done_runs_once_on_loop_thread),
        cmocka_unit_test(test_work_many_producers_complete_exactly),
        cmocka_unit_test(test_work_two_loops_share_a_pool),
        cmocka_unit_test(test_work_one_thread_keeps_submission_order),
        cmocka_unit_test(test_work_burst_costs_few_callbacks),
        cmocka_unit_test(test_work_cancel_queued_never_runs),
        cmocka_unit_test(test_work_cancel_running_is_busy),
        cmocka_unit_test(test_work_cancel_finished_is_enoent),
        cmocka_unit_test(test_work_cancel_taken_before_it_begins),
        cmocka_unit_test(test_work_pool_free_cancels_queued),
        cmocka_unit_test(test_work_pool_free_cancels_taken),
        cmocka_unit_test(test_work_submit_racing_pool_free_is_shutdown),
        cmocka_unit_test(test_work_pool_free_from_a_done),
        cmocka_unit_test(test_work_submit_to_stopped_loop_is_shutdown),
        cmocka_unit_test(test_work_done_waits_for_loop_restart),
        cmocka_unit_test(test_work_loop_free_delivers_every_done),
        cmocka_unit_test(test_work_loop_free_cancels_taken),
        cmocka_unit_test(test_work_threads_block_signals_and_are_named),
        cmocka_unit_test(test_work_pool_free_leaves_no_thread_or_fd),
        cmocka_unit_test(test_work_invalid_arguments),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
