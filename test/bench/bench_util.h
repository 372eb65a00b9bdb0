/*
 * Helpers shared by the comparison benchmarks (dispatch_*, timers_*, xthread_*, work_*), so
 * that each of those files holds only its event library's side: clocks, a median, resident
 * memory, thread pinning, argument parsing, the pipe-dispatch round (libevent's test/bench.c),
 * the mutex-protected callback queue the peers' cross-thread benchmarks use and the work
 * pool's report lines. Header-only and
 * static inline, so unused helpers cost nothing.
 */
#ifndef IOLOOP_BENCH_UTIL_H
#define IOLOOP_BENCH_UTIL_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Reads `clock` (CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID, ...) in nanoseconds. */
static inline uint64_t bench_clock_ns(clockid_t clock)
{
    struct timespec ts;

    if (clock_gettime(clock, &ts) != 0)
        abort();
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Resident set size of this process in bytes, from /proc/self/statm. */
static inline long bench_rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (f == NULL || fscanf(f, "%ld %ld", &pages, &resident) != 2)
        abort();
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* The median of v[0..n) (sorts v in place); the upper middle for even n. */
static inline double bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, bench_cmp_double);
    return v[n / 2];
}

/* Parses a non-negative decimal argument, or exits with a message naming it. */
static inline uint64_t bench_arg(const char *text, const char *what)
{
    char *end;
    unsigned long long v = strtoull(text, &end, 10);

    if (*text == '\0' || *end != '\0' || *text == '-') {
        fprintf(stderr, "bad %s: %s\n", what, text);
        exit(2);
    }
    return v;
}

/* Pins the calling thread to `cpu`; a negative cpu, or one this machine lacks, leaves it free. */
static inline void bench_pin(int cpu)
{
    cpu_set_t set;

    if (cpu < 0 || cpu >= sysconf(_SC_NPROCESSORS_ONLN))
        return;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
        fprintf(stderr, "warning: could not pin a thread to CPU %d\n", cpu);
}

/* ---- Pipe dispatch (libevent's test/bench.c) ------------------------------------------- */

/*
 * One benchmark run: N socketpairs ("pipes"), each with a read handler. A round writes one byte
 * to A pipes spread evenly over the N, then runs the loop until every byte written has been
 * read. Each read handler reads its pipe's byte and, while writes remain (W in all), writes
 * one byte to the next pipe: a round is A + W reads. Round timings are kept for the median.
 */
struct bench_dispatch {
    int npipes, active, writes, rounds, warmup;
    int *fds;            /* fds[2 i]: pipe i's read end, fds[2 i + 1]: its write end */
    long reads;          /* this round: bytes read, ... */
    long fired;          /* ... bytes written, ... */
    long writes_left;    /* ... and writes still to make by the read handlers */
    long failures;       /* reads or writes that did not move exactly one byte */
    double *setup_run_us, *run_us; /* per measured round */
};

/*
 * Parses `prog N [A W rounds warmup]` (defaults 100 100 100 10) and opens N socketpairs, both
 * ends non-blocking, raising the soft fd limit to the hard one if needed. Exits on error.
 */
static inline void bench_dispatch_init(struct bench_dispatch *d, int argc, char **argv)
{
    struct rlimit rl;

    if (argc < 2 || argc > 6) {
        fprintf(stderr, "usage: %s pipes [active writes rounds warmup]\n", argv[0]);
        exit(2);
    }
    memset(d, 0, sizeof *d);
    d->npipes = (int)bench_arg(argv[1], "pipes");
    d->active = argc > 2 ? (int)bench_arg(argv[2], "active") : 100;
    d->writes = argc > 3 ? (int)bench_arg(argv[3], "writes") : 100;
    d->rounds = argc > 4 ? (int)bench_arg(argv[4], "rounds") : 100;
    d->warmup = argc > 5 ? (int)bench_arg(argv[5], "warmup") : 10;
    if (d->npipes < 1 || d->active < 1 || d->active > d->npipes || d->rounds < 1) {
        fprintf(stderr, "%s: need 1 <= active <= pipes and rounds >= 1\n", argv[0]);
        exit(2);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    d->fds = malloc(2 * (size_t)d->npipes * sizeof *d->fds);
    d->setup_run_us = malloc((size_t)d->rounds * sizeof *d->setup_run_us);
    d->run_us = malloc((size_t)d->rounds * sizeof *d->run_us);
    if (d->fds == NULL || d->setup_run_us == NULL || d->run_us == NULL)
        abort();
    for (int i = 0; i < d->npipes; i++)
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                       &d->fds[2 * i]) != 0) {
            fprintf(stderr, "%s: socketpair %d of %d: %s\n", argv[0], i + 1, d->npipes,
                    strerror(errno));
            exit(1);
        }
}

/* A read handler's work for pipe `idx`. Returns true once every byte written has been read:
 * the round is over and the handler should stop the loop. */
static inline bool bench_dispatch_read(struct bench_dispatch *d, int idx)
{
    int next = idx + 1 == d->npipes ? 0 : idx + 1;
    char ch;

    if (read(d->fds[2 * idx], &ch, 1) == 1)
        d->reads++;
    else
        d->failures++;
    if (d->writes_left > 0) {
        if (write(d->fds[2 * next + 1], "e", 1) != 1)
            d->failures++;
        d->writes_left--;
        d->fired++;
    }
    return d->reads == d->fired;
}

/* Starts a round's run: one byte to each of the A active pipes, spread evenly. */
static inline void bench_dispatch_kick(struct bench_dispatch *d)
{
    int space = d->npipes / d->active;

    d->reads = 0;
    d->fired = 0;
    d->writes_left = d->writes;
    for (int i = 0; i < d->active; i++, d->fired++)
        if (write(d->fds[2 * i * space + 1], "e", 1) != 1)
            d->failures++;
}

/* Ends round `round` (warm-up rounds first), begun at t0 (setup) and t1 (run): checks that
 * exactly A + W bytes were read and records the times of measured rounds. Exits on a failure. */
static inline void bench_dispatch_end_round(struct bench_dispatch *d, int round, uint64_t t0,
                                            uint64_t t1)
{
    uint64_t t2 = bench_clock_ns(CLOCK_MONOTONIC);

    if (d->failures != 0 || d->reads != (long)d->active + d->writes) {
        fprintf(stderr, "round %d: %ld bytes read, %ld expected, %ld failed reads or writes\n",
                round, d->reads, (long)d->active + d->writes, d->failures);
        exit(1);
    }
    if (round >= d->warmup) {
        d->setup_run_us[round - d->warmup] = (double)(t2 - t0) / 1e3;
        d->run_us[round - d->warmup] = (double)(t2 - t1) / 1e3;
    }
}

/* Prints the medians as one line of key=value fields, closes the pipes and frees. */
static inline void bench_dispatch_finish(struct bench_dispatch *d, const char *impl)
{
    printf("impl=%s N=%d A=%d W=%d rounds=%d setup_run_us=%.2f run_us=%.2f\n", impl, d->npipes,
           d->active, d->writes, d->rounds, bench_median(d->setup_run_us, (size_t)d->rounds),
           bench_median(d->run_us, (size_t)d->rounds));
    for (int i = 0; i < 2 * d->npipes; i++)
        close(d->fds[i]);
    free(d->fds);
    free(d->setup_run_us);
    free(d->run_us);
}

/* ---- Timers ------------------------------------------------------------------------------ */

/* The delay of timer i while measuring schedule, cancel and memory: spread over an hour (7919
 * is prime, so consecutive timers land far apart) so the heaps see every kind of insertion. */
static inline uint64_t bench_timer_delay_ms(uint64_t i)
{
    return 3600000u - (i * 7919u) % 3600000u;
}

/* The delay of timer i while measuring firing: 0-9 ms, so the run measures firing, not
 * waiting. */
static inline uint64_t bench_timer_fire_delay_ms(uint64_t i)
{
    return i % 10u;
}

/* Parses `prog [timers]` (default 1 000 000). */
static inline uint64_t bench_timers_count(int argc, char **argv)
{
    uint64_t n = argc > 1 ? bench_arg(argv[1], "timers") : 1000000u;

    if (n == 0 || n > UINT32_MAX) {
        fprintf(stderr, "%s: timers must be in 1..2^32-1\n", argv[0]);
        exit(2);
    }
    return n;
}

/* Prints one timers result line. Times are ns per timer; memory is bytes per timer. */
static inline void bench_timers_report(const char *impl, uint64_t n, uint64_t schedule_ns,
                                       uint64_t cancel_ns, uint64_t fire_cpu_ns,
                                       long rss_growth)
{
    printf("impl=%s N=%llu schedule_ns=%.1f cancel_ns=%.1f fire_ns=%.1f bytes_per_timer=%.1f\n",
           impl, (unsigned long long)n, (double)schedule_ns / (double)n,
           (double)cancel_ns / (double)n, (double)fire_cpu_ns / (double)n,
           (double)rss_growth / (double)n);
}

/* ---- Cross-thread callbacks ------------------------------------------------------------- */

/* A cross-thread run: how many producers, how many callbacks each, and where threads run. */
struct bench_xthread_args {
    int producers;
    uint64_t per_producer;  /* callbacks in all: producers * per_producer */
    int loop_cpu, producer_cpu;
};

/* Parses `prog producers [callbacks [loop_cpu producer_cpu]]` (defaults 2 000 000 callbacks in
 * all, loop on CPU 0, producers on CPU 1). Exits on bad arguments. */
static inline void bench_xthread_args(struct bench_xthread_args *a, int argc, char **argv)
{
    uint64_t total;

    if (argc < 2 || argc > 5 || argc == 4) {
        fprintf(stderr, "usage: %s producers [callbacks [loop_cpu producer_cpu]]\n", argv[0]);
        exit(2);
    }
    a->producers = (int)bench_arg(argv[1], "producers");
    total = argc > 2 ? bench_arg(argv[2], "callbacks") : 2000000u;
    a->loop_cpu = argc > 4 ? (int)bench_arg(argv[3], "loop_cpu") : 0;
    a->producer_cpu = argc > 4 ? (int)bench_arg(argv[4], "producer_cpu") : 1;
    if (a->producers < 1 || a->producers > 64 || total < (uint64_t)a->producers) {
        fprintf(stderr, "%s: need 1..64 producers and at least one callback each\n", argv[0]);
        exit(2);
    }
    a->per_producer = total / (uint64_t)a->producers;
}

/* Prints one cross-thread result line: callbacks/s from the start signal to the last callback,
 * wakeup calls made by the producers per callback, and how often the loop woke to drain. */
static inline void bench_xthread_report(const char *impl, const struct bench_xthread_args *a,
                                        uint64_t elapsed_ns, uint64_t wakeups, uint64_t drains)
{
    uint64_t n = a->per_producer * (uint64_t)a->producers;

    printf("impl=%s producers=%d callbacks=%llu callbacks_per_s=%.0f wakeups_per_callback=%.6f"
           " drains=%llu\n",
           impl, a->producers, (unsigned long long)n, (double)n * 1e9 / (double)elapsed_ns,
           (double)wakeups / (double)n, (unsigned long long)drains);
}

/* Spins (yielding) until *go is set: lets every thread start before the clock does. */
static inline void bench_wait_go(const _Atomic int *go)
{
    while (!*go)
        sched_yield();
}

/*
 * The queue the peers' users write for cross-thread callbacks: a vector of {fn, arg} under a
 * mutex. The loop swaps the whole vector for an empty spare under the lock and runs the items
 * outside it (muduo's pendingFunctors pattern), so the critical sections stay short.
 */
struct bench_task {
    void (*fn)(void *arg);
    void *arg;
};

struct bench_queue {
    pthread_mutex_t lock;
    struct bench_task *items;
    size_t len, cap;
    struct bench_task *spare;   /* loop thread only */
    size_t spare_cap;
};

static inline void bench_queue_init(struct bench_queue *q)
{
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->lock, NULL);
}

static inline void bench_queue_fini(struct bench_queue *q)
{
    pthread_mutex_destroy(&q->lock);
    free(q->items);
    free(q->spare);
}

/* Any thread: appends one item. */
static inline void bench_queue_push(struct bench_queue *q, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&q->lock);
    if (q->len == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 64;
        struct bench_task *items = realloc(q->items, cap * sizeof *items);

        if (items == NULL)
            abort();
        q->items = items;
        q->cap = cap;
    }
    q->items[q->len++] = (struct bench_task){fn, arg};
    pthread_mutex_unlock(&q->lock);
}

/* Loop thread: takes everything queued so far and runs it. Returns how many items ran. */
static inline size_t bench_queue_drain(struct bench_queue *q)
{
    struct bench_task *batch;
    size_t n, cap;

    pthread_mutex_lock(&q->lock);
    batch = q->items;
    cap = q->cap;
    n = q->len;
    q->items = q->spare;
    q->cap = q->spare_cap;
    q->len = 0;
    pthread_mutex_unlock(&q->lock);
    q->spare = batch;
    q->spare_cap = cap;
    for (size_t i = 0; i < n; i++)
        batch[i].fn(batch[i].arg);
    return n;
}

/* ---- The work pool ----------------------------------------------------------------------- */

/* A work-pool run: `throughput` submits `items` empty work items from the loop and waits for
 * their completions back on it; `latency` makes `items` sequential round trips of one item
 * (submit, then submit the next from its completion) on an otherwise idle pool. */
struct bench_work_args {
    bool latency;
    int threads;
    uint64_t items;
};

/* Parses `prog throughput|latency [threads [items]]` (defaults 4 threads; 1 000 000 items
 * for throughput, 10 000 round trips for latency). Exits on bad arguments. */
static inline void bench_work_args(struct bench_work_args *a, int argc, char **argv)
{
    if (argc < 2 || argc > 4 ||
        (strcmp(argv[1], "throughput") != 0 && strcmp(argv[1], "latency") != 0)) {
        fprintf(stderr, "usage: %s throughput|latency [threads [items]]\n", argv[0]);
        exit(2);
    }
    a->latency = strcmp(argv[1], "latency") == 0;
    a->threads = argc > 2 ? (int)bench_arg(argv[2], "threads") : 4;
    a->items = argc > 3 ? bench_arg(argv[3], "items") : a->latency ? 10000u : 1000000u;
    if (a->threads < 1 || a->threads > 128 || a->items < 1) {
        fprintf(stderr, "%s: need 1..128 threads and at least one item\n", argv[0]);
        exit(2);
    }
}

/* Prints a throughput line: items/s from the first submission to the last completion, and
 * the process's CPU time (every thread's) per item over the same span. */
static inline void bench_work_report_throughput(const char *impl, const struct bench_work_args *a,
                                                uint64_t elapsed_ns, uint64_t cpu_ns)
{
    printf("impl=%s mode=throughput threads=%d items=%llu items_per_s=%.0f cpu_ns_per_item=%.1f\n",
           impl, a->threads, (unsigned long long)a->items,
           (double)a->items * 1e9 / (double)elapsed_ns, (double)cpu_ns / (double)a->items);
}

/* Prints a latency line from the round trips' submit-to-done times in ns (sorts them). */
static inline void bench_work_report_latency(const char *impl, const struct bench_work_args *a,
                                             double *ns)
{
    size_t n = (size_t)a->items;

    qsort(ns, n, sizeof *ns, bench_cmp_double);
    printf("impl=%s mode=latency threads=%d items=%llu p50_us=%.2f p99_us=%.2f\n", impl,
           a->threads, (unsigned long long)a->items, ns[n / 2] / 1e3,
           ns[(size_t)((double)n * 0.99)] / 1e3);
}

#endif /* IOLOOP_BENCH_UTIL_H */
