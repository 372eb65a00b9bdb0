/*
 * dispatch_uv — libevent's test/bench.c method on libuv: N socketpairs with a uv_poll_t each;
 * every round re-registers every fd (uv_poll_stop + uv_poll_start, then one UV_RUN_NOWAIT pass,
 * as bench.c does: libuv adds watchers to epoll there), writes to 100 pipes and runs until the
 * chain of 100 writes has been read (see bench_util.h). Prints the median setup+run and
 * run-only microseconds per round.
 *
 *   dispatch_uv N [active writes rounds warmup]      (suite_dispatch.sh runs it)
 */
#include <stdint.h>

#include <uv.h>

#include "bench_util.h"

static struct bench_dispatch bench;

static void on_read(uv_poll_t *poll, int status, int events)
{
    if (status < 0)
        bench.failures++;
    if (bench_dispatch_read(&bench, (int)(intptr_t)poll->data))
        uv_stop(poll->loop);
}

static void watch(uv_poll_t *poll)
{
    if (uv_poll_start(poll, UV_READABLE, on_read) != 0)
        abort();
}

int main(int argc, char **argv)
{
    uv_loop_t loop;
    uv_poll_t *polls;

    bench_dispatch_init(&bench, argc, argv);
    polls = calloc((size_t)bench.npipes, sizeof *polls);
    if (polls == NULL || uv_loop_init(&loop) != 0)
        abort();
    for (int i = 0; i < bench.npipes; i++) {
        if (uv_poll_init(&loop, &polls[i], bench.fds[2 * i]) != 0)
            abort();
        polls[i].data = (void *)(intptr_t)i;
        watch(&polls[i]);
    }

    for (int round = 0; round < bench.warmup + bench.rounds; round++) {
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC), t1;

        for (int i = 0; i < bench.npipes; i++) {
            if (uv_poll_stop(&polls[i]) != 0)
                abort();
            watch(&polls[i]);
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        t1 = bench_clock_ns(CLOCK_MONOTONIC);
        bench_dispatch_kick(&bench);
        uv_run(&loop, UV_RUN_DEFAULT);
        bench_dispatch_end_round(&bench, round, t0, t1);
    }

    for (int i = 0; i < bench.npipes; i++)
        uv_close((uv_handle_t *)&polls[i], NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        abort();
    free(polls);
    bench_dispatch_finish(&bench, "libuv");
    return 0;
}
