/* Shared helpers for the cmocka tests; see helpers.h. */
#include "helpers.h"

/* cmocka's header needs these first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int test_count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    int n = 0;

    if (dir == NULL)
        abort();
    while (readdir(dir) != NULL)
        n++;
    closedir(dir);
    return n - 3; /* ".", ".." and the directory's own fd */
}

uint64_t test_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void *loop_thread_main(void *arg)
{
    test_loop_thread_t *t = arg;

    t->start_rc = ioloop_start(t->loop);
    return NULL;
}

void test_loop_thread_start(test_loop_thread_t *t, ioloop_t *loop)
{
    t->loop = loop;
    t->start_rc = -1;
    if (pthread_create(&t->thread, NULL, loop_thread_main, t) != 0)
        abort();
}

int test_loop_thread_join(test_loop_thread_t *t)
{
    pthread_join(t->thread, NULL);
    return t->start_rc;
}

static void *watchdog_main(void *arg)
{
    test_watchdog_t *w = arg;
    struct timespec deadline;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(w->timeout_ms / 1000);
    deadline.tv_nsec += (long)(w->timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mutex);
    while (!w->disarmed) {
        if (pthread_cond_timedwait(&w->cond, &w->mutex, &deadline) == ETIMEDOUT) {
            if (!w->disarmed) {
                w->fired = 1;
                ioloop_stop(w->loop);
            }
            break;
        }
    }
    pthread_mutex_unlock(&w->mutex);
    return NULL;
}

void test_watchdog_arm(test_watchdog_t *w, ioloop_t *loop, uint64_t timeout_ms)
{
    pthread_condattr_t attr;

    memset(w, 0, sizeof(*w));
    w->loop = loop;
    w->timeout_ms = timeout_ms;
    pthread_mutex_init(&w->mutex, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (pthread_create(&w->thread, NULL, watchdog_main, w) != 0)
        abort();
}

int test_watchdog_disarm(test_watchdog_t *w)
{
    pthread_mutex_lock(&w->mutex);
    w->disarmed = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mutex);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->mutex);
    return w->fired;
}

int test_wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    int n;

    do
        n = poll(&pfd, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    assert_true(n >= 0);
    return n;
}

void test_read_exact(int fd, char *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n;

        assert_int_equal(test_wait_fd(fd, POLLIN, TEST_WAIT_MS), 1);
        n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        got += (size_t)n;
    }
}

void test_write_all(int fd, const void *data, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = send(fd, (const char *)data + done, len - done, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        done += (size_t)n;
    }
}
