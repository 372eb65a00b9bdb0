/*
 * Unit tests of lib/core's internals, where the public API cannot show what matters: the
 * thread-safe errno text helper, the loop-thread check across restarts (which needs the
 * loop's own `running` field to know when a call must be refused), and where the loop's
 * fields sit in memory (which cache lines producers and the loop share). These tests see the
 * library's own headers.
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
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/loop.h"
#include "core/strerror.h"
#include "helpers.h"

/* Calls per thread in the threads test. */
#define STRERROR_ROUNDS 10000
/* Restarts in the restart race; each is a short run, in alternating threads. */
#define RESTART_ROUNDS 20000
/* Checked calls between two yields while a thread waits for the other's run to end: few
 * enough that a preempted runner on a busy machine gets its core back soon. */
#define HAMMER_YIELD 256

/* ---- Errno text ------------------------------------------------------------------------- */

/* Known values give glibc's descriptions (the C locale's, whatever the locale), for errno
 * values and for the negative ones the library returns alike. */
static void test_core_strerror_known(void **state)
{
    (void)state;
    assert_string_equal(ioloop__strerror(ENOENT), "No such file or directory");
    assert_string_equal(ioloop__strerror(EPERM), "Operation not permitted");
    assert_string_equal(ioloop__strerror(EMFILE), "Too many open files");
    assert_string_equal(ioloop__strerror(-ECONNRESET), "Connection reset by peer");
    assert_string_equal(ioloop__strerror(-EMFILE), ioloop__strerror(EMFILE));
    assert_string_equal(ioloop__strerror(0), "Success");
    /* Static strings: a later call does not change an earlier answer. */
    assert_ptr_equal(ioloop__strerror(ENOENT), ioloop__strerror(-ENOENT));
}

/* Values without a description still give a text, never NULL. */
static void test_core_strerror_unknown(void **state)
{
    static const int unknown[] = {100000, -100000, INT_MAX, INT_MIN};

    (void)state;
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *text = ioloop__strerror(unknown[i]);

        assert_non_null(text);
        assert_true(strncmp(text, "Unknown error", 13) == 0);
    }
}

struct strerror_probe {
    pthread_t thread;
    int value;      /* the errno value this thread asks about */
    const char *expected;
    int mismatches; /* calls whose text was not this thread's */
};

static void *strerror_thread(void *arg)
{
    struct strerror_probe *p = arg;

    for (int i = 0; i < STRERROR_ROUNDS; i++) {
        const char *text = ioloop__strerror(p->value);

        (void)ioloop__strerror(100000 + i); /* an unknown value in between */
        if (text == NULL || strcmp(text, p->expected) != 0)
            p->mismatches++;
    }
    return NULL;
}

/* Threads asking at once, about known and unknown values, each keep their own answer: no
 * call overwrites a text another thread holds. */
static void test_core_strerror_threads(void **state)
{
    struct strerror_probe p[2] = {
        {.value = EAGAIN, .expected = "Resource temporarily unavailable"},
        {.value = -EPIPE, .expected = "Broken pipe"},
    };

    (void)state;
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&p[i].thread, NULL, strerror_thread, &p[i]), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(p[i].thread, NULL), 0);
        assert_int_equal(p[i].mismatches, 0);
    }
}

/* ---- The loop-thread check across restarts --------------------------------------------- */

struct restart_race {
    ioloop_t *loop;
    _Atomic int turn;        /* the round whose run has not ended yet */
    struct restart_side {
        struct restart_race *race;
        pthread_t thread;
        int idx;
        int start_errors;    /* starts that did not return 0 */
        long refused;        /* checked calls refused while the other's run was on */
        long wrong;          /* checked calls let through while the other's run was on */
    } side[2];
};

/*
 * Two threads take turns: in round r, thread r % 2 runs the loop once (a stop queued before
 * the start makes it return at once), while the other, which ran it in round r - 1 and is so
 * the previous owner, calls a thread-checked function over and over until the run ended.
 * remove_handler(-1) touches nothing once the check passes (-ENOENT), so passing is harmless
 * here; but it must not pass while the loop is running in the other thread. That is known
 * for sure when `running` reads nonzero both before and after the call: within one round the
 * only run is the other thread's, so the check in between saw it running too.
 */
static void *restart_thread(void *arg)
{
    struct restart_side *me = arg;
    struct restart_race *race = me->race;

    for (int round = 0; round < RESTART_ROUNDS; round++) {
        if (round % 2 == me->idx) {
            while (atomic_load(&race->turn) != round)
                sched_yield();
            ioloop_stop(race->loop);
            if (ioloop_start(race->loop) != 0)
                me->start_errors++;
            atomic_store(&race->turn, round + 1);
            continue;
        }
        for (unsigned n = 1; atomic_load(&race->turn) <= round; n++) {
            int before = atomic_load(&race->loop->running);
            int rc = ioloop_remove_handler(race->loop, -1);
            int after = atomic_load(&race->loop->running);

            if (before != 0 && after != 0) {
                if (rc == -EPERM)
                    me->refused++;
                else
                    me->wrong++;
            }
            if (n % HAMMER_YIELD == 0)
                sched_yield();
        }
    }
    return NULL;
}

/* A restart from a new thread: from the moment the loop is seen running, the previous
 * owner's thread-checked calls are refused (-EPERM), never let through. */
static void test_core_restart_refuses_previous_owner(void **state)
{
    int before = test_count_fds();
    struct restart_race race = {.loop = ioloop_new()};
    long refused = 0, wrong = 0;

    (void)state;
    assert_non_null(race.loop);
    for (int i = 0; i < 2; i++) {
        race.side[i].race = &race;
        race.side[i].idx = i;
        assert_int_equal(pthread_create(&race.side[i].thread, NULL, restart_thread,
                                        &race.side[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(race.side[i].thread, NULL), 0);
        assert_int_equal(race.side[i].start_errors, 0);
        refused += race.side[i].refused;
        wrong += race.side[i].wrong;
    }
    printf("restart race: %d restarts, %ld calls refused while the other thread ran the loop, "
           "%ld let through\n", RESTART_ROUNDS, refused, wrong);
    assert_int_equal(wrong, 0);
    ioloop_free(race.loop);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Memory layout ---------------------------------------------------------------------- */

#define LINE(addr) ((uintptr_t)(addr) / IOLOOP__CACHE_LINE)

/*
 * The callback queue's lock, which posting threads write, starts a cache line of its own:
 * the timer fields before it (written by the loop every iteration) end on an earlier line,
 * and the queue's loop-only part starts on a later one. Checked on real loops, so the
 * allocation's alignment counts too.
 */
static void test_core_loop_layout_cache_lines(void **state)
{
    int before = test_count_fds();
    ioloop_t *loops[4];

    (void)state;
    for (int i = 0; i < 4; i++) {
        ioloop_t *loop = loops[i] = ioloop_new();
        const char *timers_last = (const char *)(&loop->timers + 1) - 1;

        assert_non_null(loop);
        assert_int_equal((uintptr_t)loop % IOLOOP__CACHE_LINE, 0);
        assert_int_equal((uintptr_t)&loop->cbq.lock % IOLOOP__CACHE_LINE, 0);
        assert_true(LINE(timers_last) < LINE(&loop->cbq.lock));
        assert_int_equal((uintptr_t)&loop->cbq.spare % IOLOOP__CACHE_LINE, 0);
        assert_true(LINE(&loop->cbq.lock) < LINE(&loop->cbq.spare));
    }
    for (int i = 0; i < 4; i++)
        ioloop_free(loops[i]);
    assert_int_equal(test_count_fds(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_strerror_known),
        cmocka_unit_test(test_core_strerror_unknown),
        cmocka_unit_test(test_core_strerror_threads),
        cmocka_unit_test(test_core_restart_refuses_previous_owner),
        cmocka_unit_test(test_core_loop_layout_cache_lines),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
