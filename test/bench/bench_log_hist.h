/*
 * What bench_log.c and bench_log_spdlog.cpp share (C and C++): a latency histogram, the
 * clock, the process's memory, and the one-line report run_log.sh parses.
 *
 * The histogram is log-linear: exact below 128 ns, then 64 buckets per power of two (1.6 %
 * resolution) up to 2^40 ns. It costs a few KiB instead of 8 MB of raw samples, so it does not
 * pollute the memory being measured.
 */
#ifndef BENCH_LOG_HIST_H
#define BENCH_LOG_HIST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HIST_EXACT 128                       /* values below are their own bucket */
#define HIST_SUB_BITS 6                      /* 64 buckets per power of two above */
#define HIST_MAX_EXP 40                      /* 2^40 ns, about 18 minutes */
#define HIST_BUCKETS (HIST_EXACT + (HIST_MAX_EXP - 7) * (1 << HIST_SUB_BITS))

typedef struct hist {
    uint64_t count[HIST_BUCKETS];
    uint64_t n, max;
} hist_t;

static inline uint64_t hist_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void hist_init(hist_t *h)
{
    memset(h, 0, sizeof *h);
}

static inline unsigned hist_bucket(uint64_t v)
{
    unsigned e;

    if (v < HIST_EXACT)
        return (unsigned)v;
    e = 63u - (unsigned)__builtin_clzll(v); /* 7 or more */
    if (e >= HIST_MAX_EXP)
        return HIST_BUCKETS - 1;
    return HIST_EXACT + (e - 7) * (1u << HIST_SUB_BITS) +
           (unsigned)((v >> (e - HIST_SUB_BITS)) & ((1u << HIST_SUB_BITS) - 1));
}

/* The smallest value of a bucket. */
static inline uint64_t hist_value(unsigned b)
{
    unsigned e, sub;

    if (b < HIST_EXACT)
        return b;
    e = 7 + (b - HIST_EXACT) / (1u << HIST_SUB_BITS);
    sub = (b - HIST_EXACT) % (1u << HIST_SUB_BITS);
    return ((uint64_t)1 << e) + ((uint64_t)sub << (e - HIST_SUB_BITS));
}

static inline void hist_add(hist_t *h, uint64_t v)
{
    h->count[hist_bucket(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static inline void hist_merge(hist_t *into, const hist_t *h)
{
    for (unsigned b = 0; b < HIST_BUCKETS; b++)
        into->count[b] += h->count[b];
    into->n += h->n;
    if (h->max > into->max)
        into->max = h->max;
}

/* The value below which a fraction q of the samples lie. */
static inline uint64_t hist_quantile(const hist_t *h, double q)
{
    uint64_t rank = (uint64_t)(q * (double)h->n), seen = 0;

    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        seen += h->count[b];
        if (seen > rank)
            return hist_value(b);
    }
    return h->max;
}

/* A field of /proc/self/status in KiB ("VmRSS:", "VmHWM:"), or -1. */
static inline long hist_rss_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, strlen(field)) == 0)
            kb = strtol(line + strlen(field), NULL, 10);
    fclose(f);
    return kb;
}

static inline int hist_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* The report: one line of key=value pairs. `idle` is sorted in place. */
static inline void hist_print(const char *name, int threads, long lines, uint64_t elapsed_ns,
                              const hist_t *h, uint64_t *idle, int nidle, long rss_base_kb,
                              long rss_peak_kb, long lost, long dropped)
{
    qsort(idle, (size_t)nidle, sizeof *idle, hist_cmp_u64);
    printf("impl=%s threads=%d lines=%ld lines_per_s=%.0f p50_ns=%llu p99_ns=%llu "
           "p999_ns=%llu max_ns=%llu idle_ns=%llu idle_max_ns=%llu rss_base_kb=%ld "
           "rss_peak_kb=%ld lost=%ld dropped=%ld\n",
           name, threads, lines, (double)lines * 1e9 / (double)elapsed_ns,
           (unsigned long long)hist_quantile(h, 0.50), (unsigned long long)hist_quantile(h, 0.99),
           (unsigned long long)hist_quantile(h, 0.999), (unsigned long long)h->max,
           (unsigned long long)idle[nidle / 2], (unsigned long long)idle[nidle - 1], rss_base_kb,
           rss_peak_kb, lost, dropped);
    fflush(stdout);
}

#endif /* BENCH_LOG_HIST_H */
