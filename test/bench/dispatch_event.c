/*
 * dispatch_event — libevent's test/bench.c method on libevent 2: N socketpairs with a
 * persistent read event each; every round re-registers every fd (event_del + event_add, then
 * one non-blocking pass of the loop, as bench.c does), writes to 100 pipes and dispatches until
 * the chain of 100 writes has been read (see bench_util.h). Prints the median setup+run and
 * run-only microseconds per round.
 *
 *   dispatch_event N [active writes rounds warmup]      (suite_dispatch.sh runs it)
 */
#include <stdint.h>

#include <event2/event.h>

#include "bench_util.h"

static struct bench_dispatch bench;
static struct event_base *base;

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    if (bench_dispatch_read(&bench, (int)(intptr_t)arg))
        event_base_loopbreak(base);
}

int main(int argc, char **argv)
{
    struct event **events;

    bench_dispatch_init(&bench, argc, argv);
    base = event_base_new();
    events = calloc((size_t)bench.npipes, sizeof *events);
    if (base == NULL || events == NULL)
        abort();
    for (int i = 0; i < bench.npipes; i++) {
        events[i] = event_new(base, bench.fds[2 * i], EV_READ | EV_PERSIST, on_read,
                              (void *)(intptr_t)i);
        if (events[i] == NULL || event_add(events[i], NULL) != 0)
            abort();
    }

    for (int round = 0; round < bench.warmup + bench.rounds; round++) {
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC), t1;

        for (int i = 0; i < bench.npipes; i++)
            if (event_del(events[i]) != 0 || event_add(events[i], NULL) != 0)
                abort();
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        t1 = bench_clock_ns(CLOCK_MONOTONIC);
        bench_dispatch_kick(&bench);
        if (event_base_dispatch(base) < 0)
            abort();
        bench_dispatch_end_round(&bench, round, t0, t1);
    }

    for (int i = 0; i < bench.npipes; i++)
        event_free(events[i]);
    free(events);
    event_base_free(base);
    bench_dispatch_finish(&bench, "libevent");
    return 0;
}
