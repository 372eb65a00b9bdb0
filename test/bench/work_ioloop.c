/*
 * work_ioloop — the work pool on ioloop. `throughput`: a callback on the loop submits N empty
 * work items (default 1 000 000) to a pool of T threads (default 4) with ioloop_work_submit();
 * their dones come back on the loop, and the last one stops it. Prints items/s from the first
 * submission to the last done, and the process's CPU ns per item. `latency`: N sequential
 * round trips (default 10 000) of one empty item on an otherwise idle pool, each submitted
 * from the previous one's done; prints the p50 and p99 of submit-to-done.
 * A warm-up round (a tenth of the items, at most 10 000) runs first and is not counted. The
 * submissions start from a zero-delay timer on the loop, as in work_uv.
 *
 *   work_ioloop throughput|latency [threads [items]]      (suite_work.sh runs it)
 */
#include <stdint.h>

#include <ioloop.h>

#include "bench_util.h"

struct run {
    ioloop_t *loop;
    ioloop_work_pool_t *pool;
    uint64_t items, done;
    uint64_t start_ns, end_ns, start_cpu_ns, end_cpu_ns;
    uint64_t submitted_ns; /* latency: when the item in flight was submitted */
    double *latency_ns;    /* latency: one entry per round trip, or NULL */
};

static void empty_work(void *arg)
{
}

static void submit(struct run *r, ioloop_work_done_fn done)
{
    if (ioloop_work_submit(r->pool, r->loop, empty_work, done, r) <= 0)
        abort();
}

static void on_done(ioloop_t *loop, int err, void *arg)
{
    struct run *r = arg;

    if (err != 0)
        abort();
    if (++r->done == r->items) {
        r->end_ns = bench_clock_ns(CLOCK_MONOTONIC);
        r->end_cpu_ns = bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        ioloop_stop(loop);
    }
}

static void submit_all(ioloop_t *loop, void *arg)
{
    struct run *r = arg;

    r->start_ns = bench_clock_ns(CLOCK_MONOTONIC);
    r->start_cpu_ns = bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (uint64_t i = 0; i < r->items; i++)
        submit(r, on_done);
}

static void on_round_trip(ioloop_t *loop, int err, void *arg)
{
    struct run *r = arg;
    uint64_t now = bench_clock_ns(CLOCK_MONOTONIC);

    if (err != 0)
        abort();
    if (r->latency_ns != NULL)
        r->latency_ns[r->done] = (double)(now - r->submitted_ns);
    if (++r->done == r->items) {
        ioloop_stop(loop);
        return;
    }
    r->submitted_ns = bench_clock_ns(CLOCK_MONOTONIC);
    submit(r, on_round_trip);
}

static void first_round_trip(ioloop_t *loop, void *arg)
{
    struct run *r = arg;

    r->submitted_ns = bench_clock_ns(CLOCK_MONOTONIC);
    submit(r, on_round_trip);
}

static void run_once(struct run *r, uint64_t items, bool latency, double *latency_ns)
{
    r->items = items;
    r->done = 0;
    r->latency_ns = latency_ns;
    /* A timer, not ioloop_add_callback(): posting to a stopped loop is refused. */
    if (ioloop_run_after(r->loop, 0, latency ? first_round_trip : submit_all, r) <= 0 ||
        ioloop_start(r->loop) != 0 || r->done != items)
        abort();
}

int main(int argc, char **argv)
{
    struct bench_work_args a;
    struct run r = {0};
    uint64_t warmup;

    bench_work_args(&a, argc, argv);
    warmup = a.items / 10 < 10000 ? a.items / 10 + 1 : 10000;
    if ((r.loop = ioloop_new()) == NULL || (r.pool = ioloop_work_pool_new(a.threads)) == NULL) {
        perror("work_ioloop");
        return 1;
    }
    run_once(&r, warmup, a.latency, NULL);
    if (a.latency) {
        double *ns = malloc((size_t)a.items * sizeof *ns);

        if (ns == NULL)
            abort();
        run_once(&r, a.items, true, ns);
        bench_work_report_latency("ioloop", &a, ns);
        free(ns);
    } else {
        run_once(&r, a.items, false, NULL);
        bench_work_report_throughput("ioloop", &a, r.end_ns - r.start_ns,
                                     r.end_cpu_ns - r.start_cpu_ns);
    }
    ioloop_work_pool_free(r.pool);
    ioloop_free(r.loop);
    return 0;
}
