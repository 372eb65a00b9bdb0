/*
 * work_uv — the same runs as work_ioloop on libuv's thread pool (uv_queue_work), with
 * UV_THREADPOOL_SIZE set to the thread count before the pool starts. `throughput`: a
 * zero-delay timer on the loop queues N empty work requests (default 1 000 000; the uv_work_t
 * array is allocated up front, as libuv wants the caller's memory); the after-work callbacks
 * come back on the loop. `latency`: N sequential round trips of one request, each queued from
 * the previous one's after-work callback. Same output as work_ioloop.
 *
 *   work_uv throughput|latency [threads [items]]      (suite_work.sh runs it)
 */
#include <stdint.h>

#include <uv.h>

#include "bench_util.h"

struct run {
    uv_loop_t loop;
    uv_timer_t timer;
    uv_work_t *reqs;
    uint64_t items, done;
    bool latency;
    uint64_t start_ns, end_ns, start_cpu_ns, end_cpu_ns;
    uint64_t submitted_ns;
    double *latency_ns;
};

static void empty_work(uv_work_t *req)
{
}

static void on_done(uv_work_t *req, int status);

static void submit(struct run *r, uv_work_t *req)
{
    req->data = r;
    if (uv_queue_work(&r->loop, req, empty_work, on_done) != 0)
        abort();
}

static void on_done(uv_work_t *req, int status)
{
    struct run *r = req->data;
    uint64_t now;

    if (status != 0)
        abort();
    if (!r->latency) {
        if (++r->done == r->items) {
            r->end_ns = bench_clock_ns(CLOCK_MONOTONIC);
            r->end_cpu_ns = bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        }
        return;
    }
    now = bench_clock_ns(CLOCK_MONOTONIC);
    if (r->latency_ns != NULL)
        r->latency_ns[r->done] = (double)(now - r->submitted_ns);
    if (++r->done == r->items)
        return;
    r->submitted_ns = bench_clock_ns(CLOCK_MONOTONIC);
    submit(r, req);
}

static void on_timer(uv_timer_t *timer)
{
    struct run *r = timer->data;

    if (r->latency) {
        r->submitted_ns = bench_clock_ns(CLOCK_MONOTONIC);
        submit(r, &r->reqs[0]);
        return;
    }
    r->start_ns = bench_clock_ns(CLOCK_MONOTONIC);
    r->start_cpu_ns = bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (uint64_t i = 0; i < r->items; i++)
        submit(r, &r->reqs[i]);
}

/* uv_run() returns once every request has come back (the timer has fired by then). */
static void run_once(struct run *r, uint64_t items, double *latency_ns)
{
    r->items = items;
    r->done = 0;
    r->latency_ns = latency_ns;
    if (uv_timer_start(&r->timer, on_timer, 0, 0) != 0 || uv_run(&r->loop, UV_RUN_DEFAULT) != 0 ||
        r->done != items)
        abort();
}

int main(int argc, char **argv)
{
    struct bench_work_args a;
    struct run r = {0};
    char threads[16];
    uint64_t warmup;

    bench_work_args(&a, argc, argv);
    snprintf(threads, sizeof threads, "%d", a.threads);
    setenv("UV_THREADPOOL_SIZE", threads, 1); /* read when the first request starts the pool */
    warmup = a.items / 10 < 10000 ? a.items / 10 + 1 : 10000;
    r.latency = a.latency;
    r.reqs = calloc(a.latency ? 1 : (size_t)(a.items > warmup ? a.items : warmup), sizeof *r.reqs);
    if (r.reqs == NULL || uv_loop_init(&r.loop) != 0 || uv_timer_init(&r.loop, &r.timer) != 0)
        abort();
    r.timer.data = &r;
    run_once(&r, warmup, NULL);
    if (a.latency) {
        double *ns = malloc((size_t)a.items * sizeof *ns);

        if (ns == NULL)
            abort();
        run_once(&r, a.items, ns);
        bench_work_report_latency("libuv", &a, ns);
        free(ns);
    } else {
        run_once(&r, a.items, NULL);
        bench_work_report_throughput("libuv", &a, r.end_ns - r.start_ns,
                                     r.end_cpu_ns - r.start_cpu_ns);
    }
    uv_close((uv_handle_t *)&r.timer, NULL);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    uv_loop_close(&r.loop);
    free(r.reqs);
    return 0;
}
