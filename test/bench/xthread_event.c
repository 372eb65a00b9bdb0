/*
 * xthread_event — cross-thread callbacks the way libevent users write them: with
 * evthread_use_pthreads(), P producer threads push C {fn, arg} items in all (default
 * 2 000 000) onto a mutex-protected queue and call event_active() on one persistent event
 * after each push; the loop, in its own thread, drains the whole queue each time the event
 * runs. Prints callbacks/s from the start signal to the last callback run, and event_active()
 * calls per callback (libevent coalesces activations of an event already active; "drains"
 * counts the runs). Loop thread and producers pinned as given (default 0 and 1).
 *
 *   xthread_event P [C [loop_cpu producer_cpu]]      (suite_xthread.sh runs it)
 */
#include <stdatomic.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "bench_util.h"

struct run {
    struct event_base *base;
    struct event *wakeup;
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
        event_base_loopbreak(r->base);
    }
}

static void on_wakeup(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;

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
        event_active(r->wakeup, EV_READ, 0);
        sends++;
    }
    atomic_fetch_add(&r->sends, sends);
    return NULL;
}

static void *loop_main(void *arg)
{
    struct run *r = arg;

    bench_pin(r->args.loop_cpu);
    /* The wakeup event is never added (it has no fd): keep looping without pending events. */
    if (event_base_loop(r->base, EVLOOP_NO_EXIT_ON_EMPTY) < 0)
        abort();
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
    if (evthread_use_pthreads() != 0 || (r.base = event_base_new()) == NULL ||
        (r.wakeup = event_new(r.base, -1, EV_PERSIST, on_wakeup, &r)) == NULL)
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

    if (r.ran != r.expected) {
        fprintf(stderr, "ran %llu of %llu callbacks\n", (unsigned long long)r.ran,
                (unsigned long long)r.expected);
        return 1;
    }
    bench_xthread_report("libevent", &r.args, r.end_ns - t0, atomic_load(&r.sends), r.drains);
    event_free(r.wakeup);
    event_base_free(r.base);
    bench_queue_fini(&r.queue);
    return 0;
}
