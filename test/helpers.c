/* Shared helpers for the cmocka tests; see helpers.h. */
#include "helpers.h"

#include <dirent.h>
#include <stdlib.h>
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
