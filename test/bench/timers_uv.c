/*
 * timers_uv — N one-shot uv_timer_t timers on libuv (default 1 000 000): ns per
 * uv_timer_init + uv_timer_start (delays spread over an hour), bytes per pending timer,
 * ns per uv_timer_stop, then N timers due within 0-9 ms and uv_run's CPU ns per fired timer.
 * The handles are the application's memory in libuv, so they are counted: they live in one
 * array, untouched (not resident) until the timers are scheduled.
 *
 *   timers_uv [N]      (suite_timers.sh runs it)
 */
#include <stdint.h>

#include <uv.h>

#include "bench_util.h"

static uint64_t fired;

static void on_timer(uv_timer_t *timer)
{
    fired++;
}

int main(int argc, char **argv)
{
    uint64_t n = bench_timers_count(argc, argv), t0, schedule_ns, cancel_ns, fire_ns;
    uv_timer_t *timers = malloc(n * sizeof *timers);
    uv_loop_t loop;
    long rss0, rss1;

    if (timers == NULL || uv_loop_init(&loop) != 0)
        abort();

    rss0 = bench_rss_bytes();
    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++)
        if (uv_timer_init(&loop, &timers[i]) != 0 ||
            uv_timer_start(&timers[i], on_timer, bench_timer_delay_ms(i), 0) != 0)
            abort();
    schedule_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    rss1 = bench_rss_bytes();

    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++)
        if (uv_timer_stop(&timers[i]) != 0)
            abort();
    cancel_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    if (uv_loop_alive(&loop))
        abort();

    for (uint64_t i = 0; i < n; i++)
        if (uv_timer_start(&timers[i], on_timer, bench_timer_fire_delay_ms(i), 0) != 0)
            abort();
    t0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once no timer is left */
    fire_ns = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
    if (fired != n) {
        fprintf(stderr, "fired %llu of %llu timers\n", (unsigned long long)fired,
                (unsigned long long)n);
        return 1;
    }

    for (uint64_t i = 0; i < n; i++)
        uv_close((uv_handle_t *)&timers[i], NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        abort();
    free(timers);
    bench_timers_report("libuv", n, schedule_ns, cancel_ns, fire_ns, rss1 - rss0);
    return 0;
}
