/*
 * Unit tests of lib/core's internals, where the public API cannot show what matters: the
 * thread-safe errno text helper. These tests see the library's own headers.
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
#include <stdio.h>
#include <string.h>

#include "core/strerror.h"
#include "helpers.h"

/* Calls per thread in the threads test. */
#define STRERROR_ROUNDS 10000

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_strerror_known),
        cmocka_unit_test(test_core_strerror_unknown),
        cmocka_unit_test(test_core_strerror_threads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
