/*
 * bench_log — the asynchronous logger under load: T threads write N lines in all of
 * "request %d from %s took %.3f ms" into a file on /tmp. It prints, as one line of
 * key=value pairs (test/bench/run_log.sh reads them and sets them beside spdlog's):
 *
 *   lines_per_s   N divided by the time from the first call to everything being written
 *                 (ioloop_log_close() returned: every line handed to the kernel)
 *   p50/p99/p999/max_ns   the latency of one logging call, measured around each call
 *   idle_ns       the first call after the logger sat idle (median of IDLE_ROUNDS, and max)
 *   rss_peak_kb   the process's peak resident memory (VmHWM), and rss_base_kb before the
 *                 logger opened
 *   lost          lines missing from the file (must be 0), and dropped (must be 0)
 *
 *   build/test/bench/bench_log [lines] [threads] [dir]   (defaults: 1000000 1 a fresh temp dir)
 *
 * Not a test: meson builds it, `meson test` does not run it. bench_log_spdlog.cpp measures
 * spdlog's asynchronous logger the same way; keep the two in step.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ioloop.h>

#include "bench_log_hist.h"

#define WARMUP_LINES 1000
#define IDLE_ROUNDS 5
/* The logger goes idle after one quiet flush interval; wait a little more than two. */
#define FLUSH_MS 100
#define IDLE_SLEEP_US (3 * FLUSH_MS * 1000)

typedef struct worker {
    pthread_t thread;
    long first, count;
    pthread_barrier_t *start;
    hist_t hist;
} worker_t;

static void *worker_main(void *arg)
{
    worker_t *w = arg;

    pthread_barrier_wait(w->start);
    for (long i = w->first; i < w->first + w->count; i++) {
        uint64_t t0 = hist_now_ns();

        IOLOOP_LOG_INFO("request %ld from %s took %.3f ms", i, "10.0.0.1:5555",
                        (double)(i % 100000) * 0.0137);
        hist_add(&w->hist, hist_now_ns() - t0);
    }
    return NULL;
}

static long count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    char buf[1 << 16];
    size_t n;
    long lines = 0;

    if (f == NULL)
        return -1;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < n; i++)
            lines += buf[i] == '\n';
    fclose(f);
    return lines;
}

int main(int argc, char **argv)
{
    long lines = argc > 1 ? atol(argv[1]) : 1000000;
    int nthreads = argc > 2 ? atoi(argv[2]) : 1;
    char dir[64] = "/tmp/bench-log-XXXXXX", path[256];
    const char *where = argc > 3 ? argv[3] : NULL;
    ioloop_log_options_t options = {0};
    uint64_t idle[IDLE_ROUNDS], t0, t1;
    pthread_barrier_t start;
    worker_t *workers;
    hist_t all;
    long rss_base, rss_peak, written;
    int err;

    if (lines <= 0 || nthreads <= 0) {
        fprintf(stderr, "usage: %s [lines] [threads] [dir]\n", argv[0]);
        return 2;
    }
    if (where == NULL && (where = mkdtemp(dir)) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/ioloop.log", where);
    unlink(path);
    workers = calloc((size_t)nthreads, sizeof *workers);
    if (workers == NULL)
        return 1;
    pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++)
        hist_init(&workers[i].hist);
    rss_base = hist_rss_kb("VmRSS:"); /* the benchmark's own memory is in place */

    options.path = path;
    options.flush_ms = FLUSH_MS;
    if ((err = ioloop_log_open(&options)) != 0) {
        fprintf(stderr, "ioloop_log_open: %s\n", strerror(-err));
        return 1;
    }
    for (int i = 0; i < WARMUP_LINES; i++)
        IOLOOP_LOG_INFO("warm-up %d", i);
    ioloop_log_flush();
    for (int i = 0; i < IDLE_ROUNDS; i++) {
        usleep(IDLE_SLEEP_US);
        t0 = hist_now_ns();
        IOLOOP_LOG_INFO("after idle %d", i);
        idle[i] = hist_now_ns() - t0;
    }
    ioloop_log_flush();

    for (int i = 0; i < nthreads; i++) {
        workers[i].first = lines / nthreads * i;
        workers[i].count = i == nthreads - 1 ? lines - workers[i].first : lines / nthreads;
        workers[i].start = &start;
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    }
    pthread_barrier_wait(&start);
    t0 = hist_now_ns();
    for (int i = 0; i < nthreads; i++)
        pthread_join(workers[i].thread, NULL);
    ioloop_log_close(); /* returns once every line is written */
    t1 = hist_now_ns();
    rss_peak = hist_rss_kb("VmHWM:");

    hist_init(&all);
    for (int i = 0; i < nthreads; i++)
        hist_merge(&all, &workers[i].hist);
    written = count_lines(path) - WARMUP_LINES - IDLE_ROUNDS;
    hist_print("ioloop", nthreads, lines, t1 - t0, &all, idle, IDLE_ROUNDS, rss_base,
               rss_peak, lines - written, (long)ioloop_log_dropped());
    unlink(path);
    if (where == dir)
        rmdir(dir);
    pthread_barrier_destroy(&start);
    free(workers);
    return written == lines ? 0 : 1;
}
