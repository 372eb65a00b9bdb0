/*
 * timers_event — N one-shot evtimer events on libevent 2 (default 1 000 000): ns per
 * evtimer_assign + evtimer_add (delays spread over an hour), bytes per pending timer,
 * ns per evtimer_del, then N timers due within 0-9 ms and the loop's CPU ns per fired timer.
 * The events are the application's memory here (event_assign on storage it provides, sized
 * by event_get_struct_event_size()), so they are counted: they live in one array, untouched
 * (not resident) until the timers are scheduled.
 *
 *   timers_event [N]      (suite_timers.sh runs it)
 */
#include <stdint.h>

#include <event2/event.h>

#include "bench_util.h"

static uint64_t fired;

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    fired++;
}

static struct timeval ms_to_tv(uint64_t ms)
{
    return (struct timeval){.tv_sec = (time_t)(ms / 1000u), .tv_usec = (long)(ms % 1000u) * 1000};
}

int main(int argc, char **argv)
{
    uint64_t n = bench_timers_count(argc, argv), t0, schedule_ns, cancel_ns, fire_ns;
    size_t size = event_get_struct_event_size();
    char *storage = malloc(n * size);
    struct event_base *base = event_base_new();
    long rss0, rss1;

    if (storage == NULL || base == NULL)
        abort();

    rss0 = bench_rss_bytes();
    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++) {
        struct event *ev = (void *)(storage + i * size);
        struct timeval tv = ms_to_tv(bench_timer_delay_ms(i));

        if (evtimer_assign(ev, base, on_timer, NULL) != 0 || evtimer_add(ev, &tv) != 0)
            abort();
    }
    schedule_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    rss1 = bench_rss_bytes();

    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (uint64_t i = 0; i < n; i++)
        if (evtimer_del((struct event *)(void *)(storage + i * size)) != 0)
            abort();
    cancel_ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    for (uint64_t i = 0; i < n; i++)
        if (evtimer_pending((struct event *)(void *)(storage + i * size), NULL))
            abort();

    for (uint64_t i = 0; i < n; i++) {
        struct timeval tv = ms_to_tv(bench_timer_fire_delay_ms(i));

        if (evtimer_add((struct event *)(void *)(storage + i * size), &tv) != 0)
            abort();
    }
    t0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (event_base_dispatch(base) < 0) /* returns once no timer is left */
        abort();
    fire_ns = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
    if (fired != n) {
        fprintf(stderr, "fired %llu of %llu timers\n", (unsigned long long)fired,
                (unsigned long long)n);
        return 1;
    }

    event_base_free(base);
    free(storage);
    bench_timers_report("libevent", n, schedule_ns, cancel_ns, fire_ns, rss1 - rss0);
    return 0;
}
