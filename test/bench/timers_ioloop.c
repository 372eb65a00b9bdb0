/*
 * timers_ioloop — N one-shot timers on ioloop (default 1 000 000): ns per ioloop_run_after
 * (delays spread over an hour), bytes per pending timer (resident memory grown while the N are
 * pending), ns per ioloop_cancel_timer, then N timers due within 0-9 ms and the loop's CPU ns
 * per fired timer. One run per process, so the memory figure starts from a fresh heap.
 *
 *   timers_ioloop [N]      (suite_timers.sh runs it)
 */
#include <stdint.h>

#include <ioloop.h>

#include "bench_util.h"

struct fire_count {
    uint64_t fired, expected;
};

static void on_timer(ioloop_t *loop, void *arg)
{
    struct fire_count *c = arg;

    if (++c->fired == c->expected)
        ioloop_stop(loop);
}

int main(int argc, char **argv)
{
    uint64_t n = bench_timers_count(argc, argv), t0, schedule_ns, cancel_ns, fire_ns;
    struct fire_count count = {0, n};
    int64_t *ids = malloc(n * sizeof *ids);
    ioloop_stats_t stats;
    ioloop_t *loop = ioloop_new();
    long rss0, rss1;

    if (ids == NULL || loop == NULL)
        abort();
    /* The ids are the application's bookkeeping for cancel, not the timers' cost: touch them
     * now so they are not counted as timer memory. */
    for (uint64_t i = 0; i < n; i++)
        ids[i] = 0;

    rss0 = bench_rss_bytes();
    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++)
        if ((ids[i] = ioloop_run_after(loop, bench_timer_delay_ms(i), on_timer, &count)) <= 0)
            abort();
    schedule_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    rss1 = bench_rss_bytes();

    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++)
        if (ioloop_cancel_timer(loop, ids[i]) != 0)
            abort();
    cancel_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    ioloop_get_stats(loop, &stats);
    if (stats.timers_pending != 0)
        abort();

    for (uint64_t i = 0; i < n; i++)
        if (ioloop_run_after(loop, bench_timer_fire_delay_ms(i), on_timer, &count) <= 0)
            abort();
    t0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (ioloop_start(loop) != 0)
        abort();
    fire_ns = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
    ioloop_get_stats(loop, &stats);
    if (count.fired != n || stats.timers_fired != n || stats.timers_pending != 0) {
        fprintf(stderr, "fired %llu of %llu timers\n", (unsigned long long)count.fired,
                (unsigned long long)n);
        return 1;
    }

    ioloop_free(loop);
    free(ids);
    bench_timers_report("ioloop", n, schedule_ns, cancel_ns, fire_ns, rss1 - rss0);
    return 0;
}
