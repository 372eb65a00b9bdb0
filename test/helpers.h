/*
 * Shared helpers for the cmocka tests: counting open fds, reading the monotonic clock, and
 * running a loop in a thread of its own.
 */
#ifndef IOLOOP_TEST_HELPERS_H
#define IOLOOP_TEST_HELPERS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <ioloop.h>

/* The number of entries in /proc/self/fd (the directory's own fd excluded). */
int test_count_fds(void);

/* The live threads of this process: entries of /proc/self/task not marked exiting (a thread
 * joined with pthread_join() may stay listed for a moment, but it is marked). */
int test_count_threads(void);

/* CLOCK_MONOTONIC in microseconds. */
uint64_t test_now_us(void);

/* The time ms milliseconds from now on `clock`, as pthread_cond_timedwait() takes it:
 * CLOCK_REALTIME for a default condition variable, or the clock it was made with. */
struct timespec test_deadline(clockid_t clock, int ms);

/* A loop started in a thread of its own; test_loop_thread_join() waits for start() to return. */
typedef struct test_loop_thread {
    ioloop_t *loop;
    pthread_t thread;
    int start_rc;
} test_loop_thread_t;

void test_loop_thread_start(test_loop_thread_t *t, ioloop_t *loop);
int test_loop_thread_join(test_loop_thread_t *t);

/* Socket helpers for blocking peers in tests; each wait is bounded by TEST_WAIT_MS and a
 * failure fails the running cmocka test. */
#define TEST_WAIT_MS 10000

/* poll() for events on fd, retrying on EINTR; returns what poll returned (0: timed out). */
int test_wait_fd(int fd, short events, int timeout_ms);
/* Reads exactly len bytes. */
void test_read_exact(int fd, char *buf, size_t len);
/* Sends all len bytes (MSG_NOSIGNAL). */
void test_write_all(int fd, const void *data, size_t len);

/* Stops a loop from another thread if it is still running timeout_ms after arming, so a test
 * whose loop would hang fails instead. */
typedef struct test_watchdog {
    ioloop_t *loop;
    uint64_t timeout_ms;
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    int disarmed; /* under mutex */
    int fired;    /* written by the watchdog thread, read after the join */
} test_watchdog_t;

void test_watchdog_arm(test_watchdog_t *w, ioloop_t *loop, uint64_t timeout_ms);
/* Returns 1 if the watchdog had to stop the loop. */
int test_watchdog_disarm(test_watchdog_t *w);

#endif /* IOLOOP_TEST_HELPERS_H */
