/*
 * timers_ev — N one-shot ev_timer watchers on libev (default 1 000 000): ns per
 * ev_timer_init + ev_timer_start (delays spread over an hour), bytes per pending timer,
 * ns per ev_timer_stop, then N timers due within 0-9 ms and ev_run's CPU ns per fired timer.
 * The watchers are the application's memory in libev, so they are counted: they live in one
 * array, untouched (not resident) until the timers are scheduled.
 *
 *   timers_ev [N]      (suite_timers.sh runs it)
 */
#include <stdint.h>

#include <ev.h>

#include "bench_util.h"

static uint64_t fired;

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    fired++;
}

int main(int argc, char **argv)
{
    uint64_t n = bench_timers_count(argc, argv), t0, schedule_ns, cancel_ns, fire_ns;
    ev_timer *timers = malloc(n * sizeof *timers);
    struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
    long rss0, rss1;

    if (timers == NULL || loop == NULL)
        abort();

    rss0 = bench_rss_bytes();
    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++) {
        ev_timer_init(&timers[i], on_timer, (ev_tstamp)bench_timer_delay_ms(i) / 1e3, 0.);
        ev_timer_start(loop, &timers[i]);
    }
    schedule_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    rss1 = bench_rss_bytes();

    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++)
        ev_timer_stop(loop, &timers[i]);
    cancel_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    for (uint64_t i = 0; i < n; i++)
        if (ev_is_active(&timers[i]))
            abort();

    for (uint64_t i = 0; i < n; i++) {
        ev_timer_set(&timers[i], (ev_tstamp)bench_timer_fire_delay_ms(i) / 1e3, 0.);
        ev_timer_start(loop, &timers[i]);
    }
    t0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    ev_run(loop, 0); /* returns once no timer is left */
    fire_ns = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
    if (fired != n) {
        fprintf(stderr, "fired %llu of %llu timers\n", (unsigned long long)fired,
                (unsigned long long)n);
        return 1;
    }

    ev_loop_destroy(loop);
    free(timers);
    bench_timers_report("libev", n, schedule_ns, cancel_ns, fire_ns, rss1 - rss0);
    return 0;
}
