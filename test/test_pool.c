/*
 * Unit tests of the loop pool (include/ioloop/pool.h): its size and loop accessors and their
 * errors, round-robin order, loops that already run in threads of their own when
 * ioloop_pool_new() returns, threads that block every signal, one loop per online CPU for
 * nloops <= 0, and ioloop_pool_free() running every callback already posted before it joins
 * the threads. Each test checks that the process's thread and fd counts are restored.
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
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* How long a test waits for something that should happen at once before it fails. */
#define WAIT_MS 10000
/* Callbacks posted to each loop right before ioloop_pool_free(). */
#define POSTED_PER_LOOP 2000
/* Loops of the pools whose thread counts are checked. */
#define COUNTED_LOOPS 4

/* ---- Small helpers ---------------------------------------------------------------------- */


/* A counter another thread bumps and the test thread waits on. */
struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int count;
};

static void waiter_init(struct waiter *w)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, &attr);
    pthread_condattr_destroy(&attr);
    w->count = 0;
}

static void waiter_destroy(struct waiter *w)
{
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}

static void waiter_bump(struct waiter *w)
{
    pthread_mutex_lock(&w->lock);
    w->count++;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Waits until the count reaches target (or WAIT_MS pass); returns the count. */
static int waiter_wait(struct waiter *w, int target)
{
    struct timespec deadline;
    int count;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&w->lock);
    while (w->count < target)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &deadline) == ETIMEDOUT)
            break;
    count = w->count;
    pthread_mutex_unlock(&w->lock);
    return count;
}

/* What a callback posted to a pool loop saw in the thread that ran it. */
struct probe {
    struct waiter done;
    pthread_t thread;
    ioloop_t *current;
    int in_loop_thread;
    int unblocked;          /* signals the thread does not block */
};

static void probe_cb(ioloop_t *loop, void *arg)
{
    struct probe *p = arg;
    sigset_t mask;

    pthread_sigmask(SIG_BLOCK, NULL, &mask);
    p->unblocked = 0;
    for (int sig = 1; sig < SIGRTMIN; sig++) {
        /* SIGKILL and SIGSTOP cannot be blocked; 32 and 33 are glibc's own. */
        if (sig == SIGKILL || sig == SIGSTOP || sig == 32 || sig == 33)
            continue;
        if (!sigismember(&mask, sig))
            p->unblocked++;
    }
    for (int sig = SIGRTMIN; sig <= SIGRTMAX; sig++)
        if (!sigismember(&mask, sig))
            p->unblocked++;
    p->thread = pthread_self();
    p->current = ioloop_current();
    p->in_loop_thread = ioloop_in_loop_thread(loop);
    waiter_bump(&p->done); /* publishes the fields above under the waiter's lock */
}

/* Runs probe_cb in loop's thread and waits for it. */
static void probe_loop(ioloop_t *loop, struct probe *p)
{
    memset(p, 0, sizeof *p);
    waiter_init(&p->done);
    assert_int_equal(ioloop_add_callback(loop, probe_cb, p), 0);
    assert_int_equal(waiter_wait(&p->done, 1), 1);
    waiter_destroy(&p->done);
}

static void noop_handler(ioloop_t *loop, int fd, int events, void *arg)
{
}

static void noop_cb(ioloop_t *loop, void *arg)
{
}

/* ---- Tests ------------------------------------------------------------------------------ */

static void test_pool_size_and_loops(void **state)
{
    int threads = test_count_threads();
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(2);
    ioloop_t *l0, *l1;

    (void)state;
    assert_non_null(pool);
    assert_int_equal(test_count_threads(), threads + 2);
    assert_int_equal(ioloop_pool_size(pool), 2);
    l0 = ioloop_pool_loop(pool, 0);
    l1 = ioloop_pool_loop(pool, 1);
    assert_non_null(l0);
    assert_non_null(l1);
    assert_ptr_not_equal(l0, l1);

    errno = 0;
    assert_null(ioloop_pool_loop(pool, -1));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_pool_loop(pool, 2));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_pool_loop(NULL, 0));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_pool_next(NULL));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(ioloop_pool_size(NULL), -EINVAL);

    ioloop_pool_free(pool);
    ioloop_pool_free(NULL);
    assert_int_equal(test_count_threads(), threads);
    assert_int_equal(test_count_fds(), fds);
}

static void test_pool_next_round_robin(void **state)
{
    int threads = test_count_threads();
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(2);
    ioloop_pool_t *pool3;
    ioloop_t *seq[6];

    (void)state;
    assert_non_null(pool);
    for (int i = 0; i < 4; i++)
        seq[i] = ioloop_pool_next(pool);
    /* Alternates between the two loops, whichever comes first. */
    assert_true(seq[0] == ioloop_pool_loop(pool, 0) || seq[0] == ioloop_pool_loop(pool, 1));
    assert_true(seq[1] == ioloop_pool_loop(pool, 0) || seq[1] == ioloop_pool_loop(pool, 1));
    assert_ptr_not_equal(seq[0], seq[1]);
    assert_ptr_equal(seq[2], seq[0]);
    assert_ptr_equal(seq[3], seq[1]);
    ioloop_pool_free(pool);

    /* Three loops: each once in every three calls. */
    pool3 = ioloop_pool_new(3);
    assert_non_null(pool3);
    for (int i = 0; i < 6; i++)
        seq[i] = ioloop_pool_next(pool3);
    assert_ptr_not_equal(seq[0], seq[1]);
    assert_ptr_not_equal(seq[1], seq[2]);
    assert_ptr_not_equal(seq[0], seq[2]);
    for (int i = 3; i < 6; i++)
        assert_ptr_equal(seq[i], seq[i - 3]);
    for (int i = 0; i < 3; i++)
        assert_true(seq[i] == ioloop_pool_loop(pool3, 0) || seq[i] == ioloop_pool_loop(pool3, 1) ||
                    seq[i] == ioloop_pool_loop(pool3, 2));
    ioloop_pool_free(pool3);
    assert_int_equal(test_count_threads(), threads);
    assert_int_equal(test_count_fds(), fds);
}

static void test_pool_loops_running_in_own_threads(void **state)
{
    int threads = test_count_threads();
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(2);
    struct probe p0, p1;
    int pipefd[2];

    (void)state;
    assert_non_null(pool);
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);

    /* The loops already belong to their threads: thread-only calls from here are refused. */
    for (int i = 0; i < 2; i++) {
        ioloop_t *loop = ioloop_pool_loop(pool, i);

        assert_int_equal(ioloop_add_handler(loop, pipefd[0], IOLOOP_READ, noop_handler, NULL),
                         -EPERM);
        assert_int_equal(ioloop_run_after(loop, 0, noop_cb, NULL), -EPERM);
        assert_int_equal(ioloop_in_loop_thread(loop), 0);
    }
    assert_null(ioloop_current());

    /* A posted callback runs without anyone here starting anything, in the loop's thread. */
    probe_loop(ioloop_pool_loop(pool, 0), &p0);
    probe_loop(ioloop_pool_loop(pool, 1), &p1);
    assert_false(pthread_equal(p0.thread, pthread_self()));
    assert_false(pthread_equal(p1.thread, pthread_self()));
    assert_false(pthread_equal(p0.thread, p1.thread));
    assert_ptr_equal(p0.current, ioloop_pool_loop(pool, 0));
    assert_ptr_equal(p1.current, ioloop_pool_loop(pool, 1));
    assert_int_equal(p0.in_loop_thread, 1);
    assert_int_equal(p1.in_loop_thread, 1);

    ioloop_pool_free(pool);
    close(pipefd[0]);
    close(pipefd[1]);
    assert_int_equal(test_count_threads(), threads);
    assert_int_equal(test_count_fds(), fds);
}

static void test_pool_threads_block_signals(void **state)
{
    int threads = test_count_threads();
    int fds = test_count_fds();
    sigset_t before, after, probe_set;
    ioloop_pool_t *pool;

    (void)state;
    /* The creating thread's mask is left as it was. */
    sigemptyset(&probe_set);
    sigaddset(&probe_set, SIGUSR2);
    pthread_sigmask(SIG_UNBLOCK, &probe_set, NULL);
    pthread_sigmask(SIG_BLOCK, NULL, &before);
    pool = ioloop_pool_new(2);
    assert_non_null(pool);
    pthread_sigmask(SIG_BLOCK, NULL, &after);
    for (int sig = 1; sig <= SIGRTMAX; sig++)
        assert_int_equal(sigismember(&before, sig), sigismember(&after, sig));
    assert_false(sigismember(&after, SIGUSR2));

    for (int i = 0; i < 2; i++) {
        struct probe p;

        probe_loop(ioloop_pool_loop(pool, i), &p);
        assert_int_equal(p.unblocked, 0);
    }
    ioloop_pool_free(pool);
    assert_int_equal(test_count_threads(), threads);
    assert_int_equal(test_count_fds(), fds);
}

static void test_pool_zero_is_one_loop_per_cpu(void **state)
{
    int fds = test_count_fds();
    int threads = test_count_threads();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int nloops[] = { 0, -3 };

    (void)state;
    assert_true(cpus > 0);
    for (size_t k = 0; k < sizeof nloops / sizeof nloops[0]; k++) {
        ioloop_pool_t *pool = ioloop_pool_new(nloops[k]);

        assert_non_null(pool);
        assert_int_equal(ioloop_pool_size(pool), cpus);
        assert_int_equal(test_count_threads(), threads + cpus);
        for (int i = 0; i < (int)cpus; i++) {
            struct probe p;

            probe_loop(ioloop_pool_loop(pool, i), &p);
            assert_ptr_equal(p.current, ioloop_pool_loop(pool, i));
        }
        assert_null(ioloop_pool_loop(pool, (int)cpus));
        ioloop_pool_free(pool);
        assert_int_equal(test_count_threads(), threads);
    }
    assert_int_equal(test_count_fds(), fds);
}

static void test_pool_free_restores_threads_and_fds(void **state)
{
    int fds = test_count_fds();
    int threads = test_count_threads();

    (void)state;
    for (int round = 0; round < 20; round++) {
        ioloop_pool_t *pool = ioloop_pool_new(COUNTED_LOOPS);

        assert_non_null(pool);
        assert_int_equal(test_count_threads(), threads + COUNTED_LOOPS);
        assert_true(test_count_fds() > fds);
        ioloop_pool_free(pool);
        assert_int_equal(test_count_threads(), threads);
        assert_int_equal(test_count_fds(), fds);
    }
}

/* The first callback holds its loop up a little, so that the rest are still queued when
 * ioloop_pool_free() stops the loops. */
struct posted {
    atomic_int ran;
    atomic_int wrong_thread;
    ioloop_t *loop;
};

static void slow_cb(ioloop_t *loop, void *arg)
{
    struct posted *p = arg;
    uint64_t end = test_now_us() + 20000;

    while (test_now_us() < end)
        ;
    if (ioloop_current() != p->loop)
        atomic_fetch_add(&p->wrong_thread, 1);
    atomic_fetch_add(&p->ran, 1);
}

static void posted_cb(ioloop_t *loop, void *arg)
{
    struct posted *p = arg;

    if (ioloop_current() != p->loop || loop != p->loop)
        atomic_fetch_add(&p->wrong_thread, 1);
    atomic_fetch_add(&p->ran, 1);
}

static void test_pool_free_runs_posted_callbacks(void **state)
{
    int fds = test_count_fds();
    int threads = test_count_threads();
    ioloop_pool_t *pool = ioloop_pool_new(COUNTED_LOOPS);
    struct posted posted[COUNTED_LOOPS];

    (void)state;
    assert_non_null(pool);
    for (int i = 0; i < COUNTED_LOOPS; i++) {
        atomic_init(&posted[i].ran, 0);
        atomic_init(&posted[i].wrong_thread, 0);
        posted[i].loop = ioloop_pool_loop(pool, i);
        assert_int_equal(ioloop_add_callback(posted[i].loop, slow_cb, &posted[i]), 0);
    }
    for (int n = 0; n < POSTED_PER_LOOP; n++)
        for (int i = 0; i < COUNTED_LOOPS; i++)
            assert_int_equal(ioloop_add_callback(posted[i].loop, posted_cb, &posted[i]), 0);
    ioloop_pool_free(pool);

    for (int i = 0; i < COUNTED_LOOPS; i++) {
        assert_int_equal(atomic_load(&posted[i].ran), POSTED_PER_LOOP + 1);
        assert_int_equal(atomic_load(&posted[i].wrong_thread), 0);
    }
    assert_int_equal(test_count_threads(), threads);
    assert_int_equal(test_count_fds(), fds);
}

static void *idle_thread(void *arg)
{
    return arg;
}

int main(void)
{
    pthread_t warm_up;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_size_and_loops),
        cmocka_unit_test(test_pool_next_round_robin),
        cmocka_unit_test(test_pool_loops_running_in_own_threads),
        cmocka_unit_test(test_pool_threads_block_signals),
        cmocka_unit_test(test_pool_zero_is_one_loop_per_cpu),
        cmocka_unit_test(test_pool_free_restores_threads_and_fds),
        cmocka_unit_test(test_pool_free_runs_posted_callbacks),
    };

    /* Sanitizer runtimes (TSan) start a helper thread at the first pthread_create(): have it
     * running before the first test counts threads. */
    if (pthread_create(&warm_up, NULL, idle_thread, NULL) != 0)
        return 1;
    pthread_join(warm_up, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
