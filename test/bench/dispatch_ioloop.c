/*
 * dispatch_ioloop — libevent's test/bench.c on ioloop's core API: N socketpairs with a read
 * handler each; every round re-registers every fd (ioloop_remove_handler + ioloop_add_handler),
 * writes to 100 pipes and runs the loop until the chain of 100 writes has been read (see
 * bench_util.h). Prints the median setup+run and run-only microseconds per round.
 *
 * Built with -DDISPATCH_PAUSE (dispatch_ioloop_pause) it re-registers with
 * ioloop_pause_handler + ioloop_resume_handler instead: the promise libev's ev_io_stop +
 * ev_io_start make (the fd names the same file throughout), which needs no system call.
 *
 *   dispatch_ioloop N [active writes rounds warmup]      (suite_dispatch.sh runs it)
 */
#include <stdint.h>

#include <ioloop.h>

#include "bench_util.h"

static struct bench_dispatch bench;

static void on_read(ioloop_t *loop, int fd, int events, void *arg)
{
    if (bench_dispatch_read(&bench, (int)(intptr_t)arg))
        ioloop_stop(loop);
}

static void watch(ioloop_t *loop, int i)
{
    if (ioloop_add_handler(loop, bench.fds[2 * i], IOLOOP_READ, on_read, (void *)(intptr_t)i))
        abort();
}

int main(int argc, char **argv)
{
    ioloop_t *loop;

    bench_dispatch_init(&bench, argc, argv);
    if ((loop = ioloop_new()) == NULL)
        abort();
    for (int i = 0; i < bench.npipes; i++)
        watch(loop, i);

    for (int round = 0; round < bench.warmup + bench.rounds; round++) {
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC), t1;

        for (int i = 0; i < bench.npipes; i++) {
#ifdef DISPATCH_PAUSE
            if (ioloop_pause_handler(loop, bench.fds[2 * i]) != 0 ||
                ioloop_resume_handler(loop, bench.fds[2 * i]) != 0)
                abort();
#else
            if (ioloop_remove_handler(loop, bench.fds[2 * i]) != 0)
                abort();
            watch(loop, i);
#endif
        }
        t1 = bench_clock_ns(CLOCK_MONOTONIC);
        bench_dispatch_kick(&bench);
        if (ioloop_start(loop) != 0)
            abort();
        bench_dispatch_end_round(&bench, round, t0, t1);
    }

    for (int i = 0; i < bench.npipes; i++)
        ioloop_remove_handler(loop, bench.fds[2 * i]);
    ioloop_free(loop);
#ifdef DISPATCH_PAUSE
    bench_dispatch_finish(&bench, "ioloop-pause");
#else
    bench_dispatch_finish(&bench, "ioloop");
#endif
    return 0;
}
