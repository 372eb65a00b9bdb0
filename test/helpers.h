/*
 * Shared helpers for the cmocka tests: counting open fds, reading the monotonic clock, and
 * running a loop in a thread of its own.
 */
#ifndef IOLOOP_TEST_HELPERS_H
#define IOLOOP_TEST_HELPERS_H

#include <pthread.h>
#include <stdint.h>

#include <ioloop.h>

/* The number of entries in /proc/self/fd (the directory's own fd excluded). */
int test_count_fds(void);

/* CLOCK_MONOTONIC in microseconds. */
uint64_t test_now_us(void);

/* A loop started in a thread of its own; test_loop_thread_join() waits for start() to return. */
typedef struct test_loop_thread {
    ioloop_t *loop;
    pthread_t thread;
    int start_rc;
} test_loop_thread_t;

void test_loop_thread_start(test_loop_thread_t *t, ioloop_t *loop);
int test_loop_thread_join(test_loop_thread_t *t);

#endif /* IOLOOP_TEST_HELPERS_H */
