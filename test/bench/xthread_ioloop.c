/*
 * xthread_ioloop — cross-thread callbacks on ioloop: P producer threads post C callbacks in
 * all (default 2 000 000) with ioloop_add_callback() to one loop running in its own thread.
 * Prints callbacks/s from the start signal to the last callback run, and the eventfd writes
 * the posts made per callback (stats.wakeups). The loop thread and the producers are pinned
 * to the CPUs given (default 0 and 1).
 *
 *   xthread_ioloop P [C [loop_cpu producer_cpu]]      (suite_xthread.sh runs it)
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>

#include <ioloop.h>

#include "bench_util.h"

struct run {
    ioloop_t *loop;
    struct bench_xthread_args args;
    uint64_t expected;
    /* Loop thread only, and on its own cache line: producers read the fields above on
     * every post. end_ns: when the last callback ran. */
    _Alignas(64) uint64_t ran, end_ns;
    _Atomic int go;
};

static void on_posted(ioloop_t *loop, void *arg)
{
    struct run *r = arg;

    if (++r->ran == r->expected) {
        r->end_ns = bench_clock_ns(CLOCK_MONOTONIC);
        ioloop_stop(loop);
    }
}

static void *producer(void *arg)
{
    struct run *r = arg;

    bench_pin(r->args.producer_cpu);
    bench_wait_go(&r->go);
    for (uint64_t i = 0; i < r->args.per_producer; i++) {
        int err;

        while ((err = ioloop_add_callback(r->loop, on_posted, r)) == -ENOMEM)
            ;
        if (err != 0)
            abort();
    }
    return NULL;
}

static void *loop_main(void *arg)
{
    struct run *r = arg;

    bench_pin(r->args.loop_cpu);
    if (ioloop_start(r->loop) != 0)
        abort();
    return NULL;
}

int main(int argc, char **argv)
{
    static struct run r;
    pthread_t loop_thread, threads[64];
    ioloop_stats_t stats;
    uint64_t t0;

    bench_xthread_args(&r.args, argc, argv);
    r.expected = r.args.per_producer * (uint64_t)r.args.producers;
    if ((r.loop = ioloop_new()) == NULL)
        abort();
    if (pthread_create(&loop_thread, NULL, loop_main, &r) != 0)
        abort();
    for (int i = 0; i < r.args.producers; i++)
        if (pthread_create(&threads[i], NULL, producer, &r) != 0)
            abort();

    t0 = bench_clock_ns(CLOCK_MONOTONIC);
    atomic_store(&r.go, 1);
    for (int i = 0; i < r.args.producers; i++)
        pthread_join(threads[i], NULL);
    pthread_join(loop_thread, NULL);

    ioloop_get_stats(r.loop, &stats);
    if (r.ran != r.expected || stats.callbacks_run != r.expected) {
        fprintf(stderr, "ran %llu of %llu callbacks\n", (unsigned long long)r.ran,
                (unsigned long long)r.expected);
        return 1;
    }
    bench_xthread_report("ioloop", &r.args, r.end_ns - t0, stats.wakeups, stats.iterations);
    ioloop_free(r.loop);
    return 0;
}
