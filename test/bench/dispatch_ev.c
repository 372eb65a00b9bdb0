/*
 * dispatch_ev — libevent's test/bench.c method on libev (epoll backend): N socketpairs with an
 * ev_io read watcher each; every round re-registers every fd (ev_io_stop + ev_io_start, then
 * one non-blocking pass of the loop, as bench.c does: libev applies fd changes there, and
 * skips the epoll_ctl when a watcher comes back with the same events), writes to 100 pipes and
 * runs until the chain of 100 writes has been read (see bench_util.h). Prints the median
 * setup+run and run-only microseconds per round.
 *
 *   dispatch_ev N [active writes rounds warmup]      (suite_dispatch.sh runs it)
 */
#include <stdint.h>

#include <ev.h>

#include "bench_util.h"

static struct bench_dispatch bench;

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    if (bench_dispatch_read(&bench, (int)(intptr_t)w->data))
        ev_break(loop, EVBREAK_ONE);
}

int main(int argc, char **argv)
{
    struct ev_loop *loop;
    ev_io *watchers;

    bench_dispatch_init(&bench, argc, argv);
    loop = ev_loop_new(EVBACKEND_EPOLL);
    watchers = calloc((size_t)bench.npipes, sizeof *watchers);
    if (loop == NULL || watchers == NULL)
        abort();
    for (int i = 0; i < bench.npipes; i++) {
        ev_io_init(&watchers[i], on_read, bench.fds[2 * i], EV_READ);
        watchers[i].data = (void *)(intptr_t)i;
        ev_io_start(loop, &watchers[i]);
    }

    for (int round = 0; round < bench.warmup + bench.rounds; round++) {
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC), t1;

        for (int i = 0; i < bench.npipes; i++) {
            ev_io_stop(loop, &watchers[i]);
            ev_io_start(loop, &watchers[i]);
        }
        ev_run(loop, EVRUN_NOWAIT);
        t1 = bench_clock_ns(CLOCK_MONOTONIC);
        bench_dispatch_kick(&bench);
        ev_run(loop, 0);
        bench_dispatch_end_round(&bench, round, t0, t1);
    }

    for (int i = 0; i < bench.npipes; i++)
        ev_io_stop(loop, &watchers[i]);
    free(watchers);
    ev_loop_destroy(loop);
    bench_dispatch_finish(&bench, "libev");
    return 0;
}
