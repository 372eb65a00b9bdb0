/*
 * dispatch_epoll — libevent's test/bench.c on a hand-written epoll loop, the practical limit
 * the libraries are measured against: N socketpairs; every round re-registers every fd
 * (EPOLL_CTL_DEL + EPOLL_CTL_ADD), writes to 100 pipes and waits until the chain of 100 writes
 * has been read (see bench_util.h). Prints the median setup+run and run-only microseconds.
 *
 *   dispatch_epoll N [active writes rounds warmup]      (suite_dispatch.sh runs it)
 */
#include <stdint.h>
#include <sys/epoll.h>

#include "bench_util.h"

/* Events per epoll_wait: more than the 100 pipes a round keeps busy at most. */
#define BATCH 256

static struct bench_dispatch bench;

static void watch(int epfd, int i)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};

    if (epoll_ctl(epfd, EPOLL_CTL_ADD, bench.fds[2 * i], &ev) != 0)
        abort();
}

/* Waits and dispatches until the round is over; the handler is inlined, as a hand-written
 * loop would have it. */
static void run(int epfd)
{
    struct epoll_event events[BATCH];

    for (;;) {
        int n = epoll_wait(epfd, events, BATCH, -1);

        if (n < 0 && errno != EINTR)
            abort();
        for (int i = 0; i < n; i++)
            if (bench_dispatch_read(&bench, (int)events[i].data.u32))
                return;
    }
}

int main(int argc, char **argv)
{
    int epfd;

    bench_dispatch_init(&bench, argc, argv);
    if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        abort();
    for (int i = 0; i < bench.npipes; i++)
        watch(epfd, i);

    for (int round = 0; round < bench.warmup + bench.rounds; round++) {
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC), t1;

        for (int i = 0; i < bench.npipes; i++) {
            if (epoll_ctl(epfd, EPOLL_CTL_DEL, bench.fds[2 * i], NULL) != 0)
                abort();
            watch(epfd, i);
        }
        t1 = bench_clock_ns(CLOCK_MONOTONIC);
        bench_dispatch_kick(&bench);
        run(epfd);
        bench_dispatch_end_round(&bench, round, t0, t1);
    }

    close(epfd);
    bench_dispatch_finish(&bench, "raw-epoll");
    return 0;
}
