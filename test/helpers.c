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
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
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

/* PF_EXITING in the flags field of /proc/<pid>/task/<tid>/stat (include/linux/sched.h). */
#define TASK_PF_EXITING 0x4u

/* Whether task `tid` of this process is alive: listed and not exiting. */
static bool task_alive(const char *tid)
{
    char path[64], buf[512];
    unsigned flags = 0;
    const char *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/self/task/%s/stat", tid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return false; /* gone meanwhile */
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    /* After the command name, in parentheses: state ppid pgrp session tty_nr tpgid flags. */
    p = strrchr(buf, ')');
    assert_non_null(p);
    assert_int_equal(sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %u", &flags), 1);
    return !(flags & TASK_PF_EXITING);
}

int test_count_threads(void)
{
    DIR *dir = opendir("/proc/self/task");
    struct dirent *ent;
    int n = 0;

    assert_non_null(dir);
    while ((ent = readdir(dir)) != NULL)
        if (ent->d_name[0] != '.' && task_alive(ent->d_name))
            n++;
    closedir(dir);
    return n;
}

uint64_t test_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

struct timespec test_deadline(clockid_t clock, int ms)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
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
