/*
 * Unit tests of the loop's signal handling (ioloop_add_signal / ioloop_remove_signal): delivery
 * to the loop's thread with the right signo and arg, the process-wide one-loop-per-signal rule,
 * argument errors, the calling thread's signal mask, and the fds a loop holds for signals.
 * main() installs a counting handler for the signals used here, so that a signal the library
 * failed to catch is counted (and fails the test) instead of killing the process. Each test
 * restores this thread's signal mask and checks that the process's fd count is restored.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "helpers.h"

/* Ends a run whose signal never arrived, so that a failure does not hang the test. */
#define GUARD_MS 3000u

/* Signals that reached the process's own handler instead of a loop. */
static atomic_int stray_signals;

static void stray_handler(int signo)
{
    (void)signo;
    atomic_fetch_add(&stray_signals, 1);
}

/* ---- Small helpers ---------------------------------------------------------------------- */

static int is_blocked(int signo)
{
    sigset_t set;

    assert_int_equal(pthread_sigmask(SIG_SETMASK, NULL, &set), 0);
    return sigismember(&set, signo);
}

static void save_mask(sigset_t *saved)
{
    assert_int_equal(pthread_sigmask(SIG_SETMASK, NULL, saved), 0);
    assert_false(sigismember(saved, SIGUSR1));
    assert_false(sigismember(saved, SIGUSR2));
    assert_false(sigismember(saved, SIGHUP));
}

/* Restores this thread's mask once no test signal is left pending, and checks for strays. */
static void restore_mask(const sigset_t *saved)
{
    sigset_t pending;

    assert_int_equal(sigpending(&pending), 0);
    assert_false(sigismember(&pending, SIGUSR1));
    assert_false(sigismember(&pending, SIGUSR2));
    assert_false(sigismember(&pending, SIGHUP));
    assert_int_equal(pthread_sigmask(SIG_SETMASK, saved, NULL), 0);
    assert_int_equal(atomic_load(&stray_signals), 0);
}

static void guard_cb(ioloop_t *loop, void *arg)
{
    ++*(int *)arg;
    ioloop_stop(loop);
}

static void noop_signal(ioloop_t *loop, int signo, void *arg)
{
    (void)loop;
    (void)signo;
    (void)arg;
}

/* What one signal handler saw; it stops the loop once `stop_after` signals arrived in all. */
struct sig_rec {
    int calls;
    int signo;
    void *arg;
    int in_loop;
    ioloop_t *current;
    pthread_t thread;
    int rc_remove;        /* remove_signal() from inside the handler, when remove_inside */
    int remove_inside;
    int *total;
    int stop_after;
};

static void record(ioloop_t *loop, int signo, void *arg)
{
    struct sig_rec *r = arg;

    r->calls++;
    r->signo = signo;
    r->arg = arg;
    r->in_loop = ioloop_in_loop_thread(loop);
    r->current = ioloop_current();
    r->thread = pthread_self();
    if (r->remove_inside)
        r->rc_remove = ioloop_remove_signal(loop, signo);
    if (r->total == NULL || ++*r->total == r->stop_after)
        ioloop_stop(loop);
}

static void record_a(ioloop_t *loop, int signo, void *arg)
{
    record(loop, signo, arg);
}

static void record_b(ioloop_t *loop, int signo, void *arg)
{
    record(loop, signo, arg);
}

/* Posted before a loop starts in another thread: tells the test thread the loop runs. */
static void ready_cb(ioloop_t *loop, void *arg)
{
    uint64_t one = 1;

    (void)loop;
    if (write(*(int *)arg, &one, sizeof one) != (ssize_t)sizeof one)
        abort();
}

/* ---- Delivery --------------------------------------------------------------------------- */

static void test_signal_delivered_in_same_thread(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct sig_rec r = { 0 };
    sigset_t saved;
    int guard = 0;

    (void)state;
    save_mask(&saved);
    assert_non_null(loop);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR1, record_a, &r), 0);
    assert_true(is_blocked(SIGUSR1));
    assert_int_equal(raise(SIGUSR1), 0);
    assert_true(ioloop_run_after(loop, GUARD_MS, guard_cb, &guard) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.signo, SIGUSR1);
    assert_ptr_equal(r.arg, &r);
    assert_int_equal(r.in_loop, 1);
    assert_ptr_equal(r.current, loop);

    assert_int_equal(ioloop_remove_signal(loop, SIGUSR1), 0);
    assert_false(is_blocked(SIGUSR1));
    ioloop_free(loop);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

static void test_signal_process_signal_reaches_loop_thread(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct sig_rec r = { .remove_inside = 1, .rc_remove = 1 };
    test_loop_thread_t t;
    sigset_t saved;
    int efd = eventfd(0, EFD_CLOEXEC), guard = 0;
    uint64_t v;

    (void)state;
    save_mask(&saved);
    assert_non_null(loop);
    assert_true(efd >= 0);
    /* Blocked here before the loop thread is created, which inherits the mask. */
    assert_int_equal(ioloop_add_signal(loop, SIGUSR2, record_b, &r), 0);
    assert_true(ioloop_run_after(loop, GUARD_MS, guard_cb, &guard) > 0);
    assert_int_equal(ioloop_add_callback(loop, ready_cb, &efd), 0);
    test_loop_thread_start(&t, loop);
    assert_int_equal(read(efd, &v, sizeof v), sizeof v);

    /* Process-directed, while the loop waits in its own thread. */
    assert_int_equal(kill(getpid(), SIGUSR2), 0);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.signo, SIGUSR2);
    assert_ptr_equal(r.arg, &r);
    assert_int_equal(r.in_loop, 1);
    assert_ptr_equal(r.current, loop);
    assert_true(pthread_equal(r.thread, t.thread));
    assert_int_equal(r.rc_remove, 0);

    ioloop_free(loop);
    assert_int_equal(close(efd), 0);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

static void test_signal_two_signals_own_handlers(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int total = 0, guard = 0;
    struct sig_rec a = { .total = &total, .stop_after = 2 };
    struct sig_rec b = { .total = &total, .stop_after = 2 };
    sigset_t saved;

    (void)state;
    save_mask(&saved);
    assert_non_null(loop);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR1, record_a, &a), 0);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR2, record_b, &b), 0);
    assert_int_equal(pthread_kill(pthread_self(), SIGUSR2), 0);
    assert_int_equal(raise(SIGUSR1), 0);
    assert_true(ioloop_run_after(loop, GUARD_MS, guard_cb, &guard) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.signo, SIGUSR1);
    assert_ptr_equal(a.arg, &a);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.signo, SIGUSR2);
    assert_ptr_equal(b.arg, &b);

    assert_int_equal(ioloop_remove_signal(loop, SIGUSR1), 0);
    assert_int_equal(ioloop_remove_signal(loop, SIGUSR2), 0);
    ioloop_free(loop);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

/* ---- One loop per signal ---------------------------------------------------------------- */

static void test_signal_eexist_in_any_loop(void **state)
{
    int before = test_count_fds();
    ioloop_t *a = ioloop_new(), *b = ioloop_new();
    struct sig_rec ra = { 0 }, rb = { 0 };
    ioloop_stats_t s;
    sigset_t saved;
    int guard = 0;

    (void)state;
    save_mask(&saved);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(ioloop_add_signal(a, SIGUSR1, record_a, &ra), 0);
    assert_int_equal(ioloop_add_signal(a, SIGUSR1, record_a, &ra), -EEXIST);
    assert_int_equal(ioloop_add_signal(a, SIGUSR1, record_b, &rb), -EEXIST);
    assert_int_equal(ioloop_add_signal(b, SIGUSR1, record_b, &rb), -EEXIST);
    /* B holds nothing: it has nothing to remove. */
    assert_int_equal(ioloop_remove_signal(b, SIGUSR1), -ENOENT);

    /* The first registration is untouched: A's handler gets the signal. */
    assert_int_equal(raise(SIGUSR1), 0);
    assert_true(ioloop_run_after(a, GUARD_MS, guard_cb, &guard) > 0);
    assert_int_equal(ioloop_start(a), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(ra.calls, 1);
    assert_int_equal(rb.calls, 0);

    /* Once A removed it, B can take it, and B's handler gets it. */
    assert_int_equal(ioloop_remove_signal(a, SIGUSR1), 0);
    assert_int_equal(ioloop_add_signal(b, SIGUSR1, record_b, &rb), 0);
    assert_int_equal(ioloop_add_signal(a, SIGUSR1, record_a, &ra), -EEXIST);
    assert_int_equal(raise(SIGUSR1), 0);
    assert_true(ioloop_run_after(b, GUARD_MS, guard_cb, &guard) > 0);
    assert_int_equal(ioloop_start(b), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(ra.calls, 1);
    assert_int_equal(rb.calls, 1);
    assert_int_equal(rb.signo, SIGUSR1);
    assert_ptr_equal(rb.arg, &rb);
    ioloop_get_stats(b, &s);
    assert_int_equal(s.handlers, 0); /* the signalfd is the loop's, not the application's */
    assert_int_equal(ioloop_remove_signal(b, SIGUSR1), 0);

    ioloop_free(a);
    ioloop_free(b);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

static void test_signal_remove_enoent(void **state)
{
    int before = test_count_fds();
    ioloop_t *a = ioloop_new(), *b = ioloop_new();
    sigset_t saved;

    (void)state;
    save_mask(&saved);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(ioloop_remove_signal(a, SIGUSR1), -ENOENT);
    assert_int_equal(ioloop_add_signal(a, SIGUSR1, noop_signal, NULL), 0);
    assert_int_equal(ioloop_remove_signal(a, SIGUSR2), -ENOENT);
    /* Handled by another loop is not handled by this one. */
    assert_int_equal(ioloop_remove_signal(b, SIGUSR1), -ENOENT);
    assert_int_equal(ioloop_remove_signal(a, SIGUSR1), 0);
    assert_int_equal(ioloop_remove_signal(a, SIGUSR1), -ENOENT);
    assert_int_equal(ioloop_remove_signal(NULL, SIGUSR1), -EINVAL);
    ioloop_free(a);
    ioloop_free(b);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

static void test_signal_free_releases_signal(void **state)
{
    int before = test_count_fds();
    ioloop_t *a = ioloop_new(), *b;
    struct sig_rec ra = { 0 }, rb = { 0 };
    sigset_t saved;
    int guard = 0;

    (void)state;
    save_mask(&saved);
    assert_non_null(a);
    assert_int_equal(ioloop_add_signal(a, SIGHUP, record_a, &ra), 0);
    ioloop_free(a); /* still registered */
    assert_int_equal(test_count_fds(), before);

    b = ioloop_new();
    assert_non_null(b);
    assert_int_equal(ioloop_add_signal(b, SIGHUP, record_b, &rb), 0);
    assert_true(is_blocked(SIGHUP));
    assert_int_equal(kill(getpid(), SIGHUP), 0);
    assert_true(ioloop_run_after(b, GUARD_MS, guard_cb, &guard) > 0);
    assert_int_equal(ioloop_start(b), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(ra.calls, 0);
    assert_int_equal(rb.calls, 1);
    assert_int_equal(rb.signo, SIGHUP);
    assert_int_equal(ioloop_remove_signal(b, SIGHUP), 0);
    ioloop_free(b);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Errors ----------------------------------------------------------------------------- */

static void test_signal_einval(void **state)
{
    static const int bad[] = { 0, -1, -SIGUSR1, INT_MIN, 65, _NSIG, 1000, INT_MAX, SIGKILL,
                               SIGSTOP };
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    sigset_t saved;

    (void)state;
    save_mask(&saved);
    assert_non_null(loop);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ioloop_add_signal(loop, bad[i], noop_signal, NULL), -EINVAL);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR1, NULL, NULL), -EINVAL);
    assert_int_equal(ioloop_add_signal(NULL, SIGUSR1, noop_signal, NULL), -EINVAL);
    assert_int_equal(ioloop_remove_signal(NULL, SIGUSR1), -EINVAL);
    assert_false(is_blocked(SIGUSR1));

    /* The failures took nothing: the signal is free, and so is the highest one. */
    assert_int_equal(ioloop_add_signal(loop, SIGUSR1, noop_signal, NULL), 0);
    assert_int_equal(ioloop_remove_signal(loop, SIGUSR1), 0);
    assert_int_equal(ioloop_add_signal(loop, SIGRTMAX, noop_signal, NULL), 0);
    assert_int_equal(ioloop_remove_signal(loop, SIGRTMAX), 0);
    assert_false(is_blocked(SIGUSR1));
    assert_false(is_blocked(SIGRTMAX));

    ioloop_free(loop);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Mask and fds ----------------------------------------------------------------------- */

static void test_signal_remove_restores_mask(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    sigset_t saved, only;

    (void)state;
    save_mask(&saved);
    assert_non_null(loop);

    /* Not blocked before: blocked while handled, not blocked after. */
    assert_false(is_blocked(SIGUSR2));
    assert_int_equal(ioloop_add_signal(loop, SIGUSR2, noop_signal, NULL), 0);
    assert_true(is_blocked(SIGUSR2));
    assert_int_equal(ioloop_remove_signal(loop, SIGUSR2), 0);
    assert_false(is_blocked(SIGUSR2));

    /* Blocked before: still blocked after. */
    sigemptyset(&only);
    sigaddset(&only, SIGUSR2);
    assert_int_equal(pthread_sigmask(SIG_BLOCK, &only, NULL), 0);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR2, noop_signal, NULL), 0);
    assert_true(is_blocked(SIGUSR2));
    assert_int_equal(ioloop_remove_signal(loop, SIGUSR2), 0);
    assert_true(is_blocked(SIGUSR2));

    /* Other signals are left alone. */
    assert_false(is_blocked(SIGUSR1));
    assert_false(is_blocked(SIGHUP));

    ioloop_free(loop);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

/* What a thread's mask looked like around ioloop_free() of a loop that handled signals. */
struct free_mask_probe {
    int rc_add[2];
    int usr1_before, usr1_handled, usr1_after;
    int usr2_handled, usr2_after;
    int fds_before, fds_after;
};

/* 1 if signo is blocked in the calling thread, 0 if not, -1 on error (no cmocka here). */
static int blocked_here(int signo)
{
    sigset_t set;

    if (pthread_sigmask(SIG_SETMASK, NULL, &set) != 0)
        return -1;
    return sigismember(&set, signo);
}

/* In a thread of its own, so that its mask starts as the test's and changes only there:
 * SIGUSR2 is blocked before the loop takes it, SIGUSR1 is not; the loop is freed with both. */
static void *free_mask_thread(void *arg)
{
    struct free_mask_probe *p = arg;
    ioloop_t *loop;
    sigset_t only;

    p->fds_before = test_count_fds();
    sigemptyset(&only);
    sigaddset(&only, SIGUSR2);
    if (pthread_sigmask(SIG_BLOCK, &only, NULL) != 0 || (loop = ioloop_new()) == NULL)
        return NULL;
    p->usr1_before = blocked_here(SIGUSR1);
    p->rc_add[0] = ioloop_add_signal(loop, SIGUSR1, noop_signal, NULL);
    p->rc_add[1] = ioloop_add_signal(loop, SIGUSR2, noop_signal, NULL);
    p->usr1_handled = blocked_here(SIGUSR1);
    p->usr2_handled = blocked_here(SIGUSR2);
    ioloop_free(loop);
    p->usr1_after = blocked_here(SIGUSR1);
    p->usr2_after = blocked_here(SIGUSR2);
    p->fds_after = test_count_fds();
    return NULL;
}

/* ioloop_free() puts the calling thread's mask back as ioloop_remove_signal() does: a signal
 * the loop blocked is unblocked again, one blocked before ioloop_add_signal() stays blocked. */
static void test_signal_free_restores_mask(void **state)
{
    struct free_mask_probe p = {.rc_add = {1, 1}, .usr1_before = -1, .usr1_handled = -1,
                                .usr1_after = -1, .usr2_handled = -1, .usr2_after = -1};
    pthread_t thread;
    sigset_t saved;

    (void)state;
    save_mask(&saved);
    assert_int_equal(pthread_create(&thread, NULL, free_mask_thread, &p), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(p.rc_add[0], 0);
    assert_int_equal(p.rc_add[1], 0);
    assert_int_equal(p.usr1_before, 0);
    assert_int_equal(p.usr1_handled, 1);
    assert_int_equal(p.usr2_handled, 1);
    assert_int_equal(p.usr1_after, 0);
    assert_int_equal(p.usr2_after, 1);
    assert_int_equal(p.fds_after, p.fds_before);
    restore_mask(&saved);
}

static void test_signal_fds_restored(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    ioloop_stats_t s;
    sigset_t saved;
    int with_loop;

    (void)state;
    save_mask(&saved);
    assert_non_null(loop);
    with_loop = test_count_fds();
    assert_int_equal(ioloop_add_signal(loop, SIGUSR1, noop_signal, NULL), 0);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR2, noop_signal, NULL), 0);
    /* One signalfd serves every signal of the loop. */
    assert_int_equal(test_count_fds(), with_loop + 1);
    memset(&s, 0, sizeof s);
    ioloop_get_stats(loop, &s);
    assert_int_equal(s.handlers, 0); /* signals are not application fd handlers */
    assert_int_equal(ioloop_remove_signal(loop, SIGUSR1), 0);

    /* Adding and removing over and over holds that same signalfd and nothing more. */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(ioloop_add_signal(loop, SIGHUP, noop_signal, NULL), 0);
        assert_int_equal(test_count_fds(), with_loop + 1);
        assert_int_equal(ioloop_remove_signal(loop, SIGHUP), 0);
        assert_int_equal(test_count_fds(), with_loop + 1);
    }

    /* Freed with SIGUSR2 still registered: every fd goes, and the signal is free again. */
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
    loop = ioloop_new();
    assert_non_null(loop);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR2, noop_signal, NULL), 0);
    assert_int_equal(ioloop_remove_signal(loop, SIGUSR2), 0);
    ioloop_free(loop);
    restore_mask(&saved);
    assert_int_equal(test_count_fds(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signal_delivered_in_same_thread),
        cmocka_unit_test(test_signal_process_signal_reaches_loop_thread),
        cmocka_unit_test(test_signal_two_signals_own_handlers),
        cmocka_unit_test(test_signal_eexist_in_any_loop),
        cmocka_unit_test(test_signal_remove_enoent),
        cmocka_unit_test(test_signal_free_releases_signal),
        cmocka_unit_test(test_signal_einval),
        cmocka_unit_test(test_signal_remove_restores_mask),
        cmocka_unit_test(test_signal_free_restores_mask),
        cmocka_unit_test(test_signal_fds_restored),
    };
    const int used[] = { SIGUSR1, SIGUSR2, SIGHUP };
    struct sigaction sa;

    /* A signal no loop catches is counted here rather than ending the process. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stray_handler;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof used / sizeof used[0]; i++)
        if (sigaction(used[i], &sa, NULL) != 0)
            return 1;
    atomic_init(&stray_signals, 0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
