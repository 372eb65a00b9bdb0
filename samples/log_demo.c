/*
 * log_demo — the asynchronous logger: four threads log at once into a file that rolls every
 * 64 KiB, then the program closes the logger and prints where the files went.
 *
 *   build/samples/log_demo [dir]    (default: a fresh directory under /tmp, left for you)
 */
#include <ioloop.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define THREADS 4
#define LINES 2000

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;

    for (int i = 0; i < LINES; i++) {
        if (i % 500 == 0)
            IOLOOP_LOG_WARN("worker %d: %d requests so far", id, i);
        else
            IOLOOP_LOG_INFO("worker %d: request %d took %.3f ms", id, i, i * 0.25);
    }
    IOLOOP_LOG_DEBUG("never written: DEBUG is below the default level");
    return NULL;
}

int main(int argc, char **argv)
{
    char tmpl[] = "/tmp/ioloop-log-demo-XXXXXX";
    const char *dir = argc > 1 ? argv[1] : mkdtemp(tmpl);
    ioloop_log_options_t options = {0};
    pthread_t threads[THREADS];
    char path[512], name[1024];
    struct stat st;
    int err;

    if (dir == NULL) {
        perror("mkdtemp");
        return 1;
    }
    IOLOOP_LOG_INFO("not open yet: this line goes to standard error");

    snprintf(path, sizeof path, "%s/demo.log", dir);
    options.path = path;
    options.roll_bytes = 64 * 1024;
    if ((err = ioloop_log_open(&options)) != 0) {
        fprintf(stderr, "ioloop_log_open(%s): %s\n", path, strerror(-err));
        return 1;
    }
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    ioloop_log_close(); /* writes every line, then stops the logger thread */

    printf("%d threads logged %d lines into %s, newest first:\n", THREADS, THREADS * LINES,
           dir);
    for (int i = 0;; i++) { /* demo.log, demo.log.1, demo.log.2, ... */
        if (i == 0)
            snprintf(name, sizeof name, "%s", path);
        else
            snprintf(name, sizeof name, "%s.%d", path, i);
        if (stat(name, &st) != 0)
            break;
        printf("  %-40s %7lld bytes\n", name, (long long)st.st_size);
    }
    return 0;
}
