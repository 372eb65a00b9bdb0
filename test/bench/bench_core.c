/*
 * bench_core — the core loop's own costs, measured alone (the peer comparisons live in the
 * other benchmarks):
 *
 *   post+run   P producer threads post N callbacks in all to one loop running in its own
 *              thread; ns per callback from the first post to the last run, and eventfd
 *              wakeups per callback.
 *   timers     N one-shot timers: ns per schedule, ns per cancel, CPU ns per fired timer
 *              (all scheduled with short delays, then the loop runs until the last fires),
 *              and bytes per timer (resident memory grown while N timers are pending).
 *
 *   build/test/bench/bench_core [callbacks] [timers]    (defaults: 2000000 1000000)
 *
 * Not a test: meson builds it, `meson test` does not run it. Each figure is the median of
 * REPEATS runs.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <ioloop.h>

#define REPEATS 5

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (f == NULL || fscanf(f, "%ld %ld", &pages, &resident) != 2)
        abort();
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* ---- post+run --------------------------------------------------------------------------- */

struct post_run {
    ioloop_t *loop;
    uint64_t per_producer;
    uint64_t expected;
    uint64_t ran;           /* loop thread only */
    atomic_int go;
};

static void on_posted(ioloop_t *loop, void *arg)
{
    struct post_run *r = arg;

    if (++r->ran == r->expected)
        ioloop_stop(loop);
}

static void *producer(void *arg)
{
    struct post_run *r = arg;

    while (!atomic_load(&r->go))
        ;
    for (uint64_t i = 0; i < r->per_producer; i++)
        while (ioloop_add_callback(r->loop, on_posted, r) != 0)
            ; /* -ENOMEM only: retry */
    return NULL;
}

static void *loop_main(void *arg)
{
    ioloop_start(arg);
    return NULL;
}

static void bench_post(int producers, uint64_t n)
{
    double ns[REPEATS], wakeups[REPEATS];

    for (int rep = 0; rep < REPEATS; rep++) {
        struct post_run r = {.loop = ioloop_new(), .per_producer = n / (uint64_t)producers};
        pthread_t loop_thread, threads[16];
        ioloop_stats_t stats;
        uint64_t t0;

        r.expected = r.per_producer * (uint64_t)producers;
        for (int i = 0; i < producers; i++)
            pthread_create(&threads[i], NULL, producer, &r);
        pthread_create(&loop_thread, NULL, loop_main, r.loop);
        t0 = clock_ns(CLOCK_MONOTONIC);
        atomic_store(&r.go, 1);
        for (int i = 0; i < producers; i++)
            pthread_join(threads[i], NULL);
        pthread_join(loop_thread, NULL);
        ns[rep] = (double)(clock_ns(CLOCK_MONOTONIC) - t0) / (double)r.expected;
        ioloop_get_stats(r.loop, &stats);
        wakeups[rep] = (double)stats.wakeups / (double)stats.callbacks_run;
        ioloop_free(r.loop);
    }
    printf("post+run   %d producer%s  %8.1f ns/callback  %10.0f callbacks/s  %.5f wakeups/callback\n",
           producers, producers > 1 ? "s" : " ", median(ns, REPEATS), 1e9 / median(ns, REPEATS),
           median(wakeups, REPEATS));
}

/* ---- timers ----------------------------------------------------------------------------- */

struct fire_run {
    uint64_t fired;
    uint64_t expected;
};

static void on_timer(ioloop_t *loop, void *arg)
{
    struct fire_run *r = arg;

    if (++r->fired == r->expected)
        ioloop_stop(loop);
}

static void bench_timers(uint64_t n)
{
    double schedule[REPEATS], cancel[REPEATS], fire[REPEATS], bytes[REPEATS];
    int64_t *ids = malloc(n * sizeof *ids);

    if (ids == NULL)
        abort();
    for (uint64_t i = 0; i < n; i++) /* touch it now, so it is not counted as timer memory */
        ids[i] = 0;
    for (int rep = 0; rep < REPEATS; rep++) {
        ioloop_t *loop = ioloop_new();
        struct fire_run r = {0, n};
        long rss0 = rss_bytes();
        uint64_t t0 = clock_ns(CLOCK_MONOTONIC);

        /* Delays spread over an hour, so the heap sees every kind of insertion. */
        for (uint64_t i = 0; i < n; i++)
            ids[i] = ioloop_run_after(loop, 3600000u - (i * 7919u) % 3600000u, on_timer, &r);
        schedule[rep] = (double)(clock_ns(CLOCK_MONOTONIC) - t0) / (double)n;
        bytes[rep] = (double)(rss_bytes() - rss0) / (double)n;

        t0 = clock_ns(CLOCK_MONOTONIC);
        for (uint64_t i = 0; i < n; i++)
            if (ioloop_cancel_timer(loop, ids[i]) != 0)
                abort();
        cancel[rep] = (double)(clock_ns(CLOCK_MONOTONIC) - t0) / (double)n;

        /* Fire: short delays (0-9 ms) so the run measures firing, not waiting. */
        for (uint64_t i = 0; i < n; i++)
            ioloop_run_after(loop, i % 10u, on_timer, &r);
        t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        ioloop_start(loop);
        fire[rep] = (double)(clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0) / (double)n;
        ioloop_free(loop);
    }
    free(ids);
    printf("timers     schedule %6.1f ns  cancel %6.1f ns  fire %6.1f CPU ns  %5.1f bytes/timer"
           "  (%" PRIu64 " timers)\n",
           median(schedule, REPEATS), median(cancel, REPEATS), median(fire, REPEATS),
           median(bytes, REPEATS), n);
}

int main(int argc, char **argv)
{
    uint64_t callbacks = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000u;
    uint64_t timers = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000u;

    bench_post(1, callbacks);
    bench_post(4, callbacks);
    bench_timers(timers);
    return 0;
}
