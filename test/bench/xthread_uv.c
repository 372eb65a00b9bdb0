/*
 * xthread_uv — cross-thread callbacks the way libuv users write them: P producer threads push
 * C {fn, arg} items in all (default 2 000 000) onto a mutex-protected queue and call
 * uv_async_send() after each push; the loop, in its own thread, drains the whole queue on each
 * async callback. Prints callbacks/s from the start signal to the last callback run, and
 * uv_async_send() calls per callback (libuv coalesces them; "drains" counts the async
 * callbacks that actually ran). Loop thread and producers pinned as given (default 0 and 1).
 *
 *   xthread_uv P [C [loop_cpu producer_cpu]]      (suite_xthread.sh runs it)
 */
#include <stdatomic.h>
#include <stdint.h>

#include <uv.h>

#include "bench_util.h"

struct run {
    uv_loop_t loop;
    uv_async_t async;
    struct bench_queue queue;
    struct bench_xthread_args args;
    uint64_t expected;
    /* Loop thread only, and on its own cache line: producers read the fields above on
     * every post. */
    _Alignas(64) uint64_t ran, drains, end_ns;
    _Atomic uint64_t sends;
    _Atomic int go;
};

static void on_task(void *arg)
{
    struct run *r = arg;

    if (++r->ran == r->expected) {
        r->end_ns = bench_clock_ns(CLOCK_MONOTONIC);
        uv_stop(&r->loop);
    }
}

static void on_async(uv_async_t *async)
{
    struct run *r = async->data;

    r->drains++;
    bench_queue_drain(&r->queue);
}

static void *producer(void *arg)
{
    struct run *r = arg;
    uint64_t sends = 0;

    bench_pin(r->args.producer_cpu);
    bench_wait_go(&r->go);
    for (uint64_t i = 0; i < r->args.per_producer; i++) {
        bench_queue_push(&r->queue, on_task, r);
        if (uv_async_send(&r->async) != 0)
            abort();
        sends++;
    }
    atomic_fetch_add(&r->sends, sends);
    return NULL;
}

static void *loop_main(void *arg)
{
    struct run *r = arg;

    bench_pin(r->args.loop_cpu);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    return NULL;
}

int main(int argc, char **argv)
{
    static struct run r;
    pthread_t loop_thread, threads[64];
    uint64_t t0;

    bench_xthread_args(&r.args, argc, argv);
    r.expected = r.args.per_producer * (uint64_t)r.args.producers;
    bench_queue_init(&r.queue);
    if (uv_loop_init(&r.loop) != 0 || uv_async_init(&r.loop, &r.async, on_async) != 0)
        abort();
    r.async.data = &r;
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

    if (r.ran != r.expected) {
        fprintf(stderr, "ran %llu of %llu callbacks\n", (unsigned long long)r.ran,
                (unsigned long long)r.expected);
        return 1;
    }
    bench_xthread_report("libuv", &r.args, r.end_ns - t0, atomic_load(&r.sends), r.drains);
    uv_close((uv_handle_t *)&r.async, NULL);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&r.loop) != 0)
        abort();
    bench_queue_fini(&r.queue);
    return 0;
}
