/*
 * bench_log_spdlog — spdlog's asynchronous logger measured exactly like bench_log.c measures
 * ioloop's (see there for the figures): one worker thread, a queue of 8192 messages, the
 * block policy (a full queue makes the caller wait, so nothing is dropped), a basic file
 * sink, and a pattern close to ioloop's line. "Everything written" is the end of
 * spdlog::shutdown(), which drains the queue, joins the worker and closes the file.
 *
 *   build/test/bench/bench_log_spdlog [lines] [threads] [dir]
 *
 * Built only when meson finds a C++ compiler and spdlog (Debian: libspdlog-dev).
 */
#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "bench_log_hist.h"

namespace {

const int warmup_lines = 1000;
const int idle_rounds = 5;
const unsigned idle_sleep_us = 300 * 1000; // as bench_log.c

void log_line(spdlog::logger &logger, long i)
{
    logger.log(spdlog::source_loc{__FILE__, __LINE__, SPDLOG_FUNCTION}, spdlog::level::info,
               "request {} from {} took {:.3f} ms", i, "10.0.0.1:5555",
               static_cast<double>(i % 100000) * 0.0137);
}

long count_lines(const std::string &path)
{
    FILE *f = fopen(path.c_str(), "r");
    char buf[1 << 16];
    size_t n;
    long lines = 0;

    if (f == nullptr)
        return -1;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < n; i++)
            lines += buf[i] == '\n';
    fclose(f);
    return lines;
}

} // namespace

int main(int argc, char **argv)
{
    long lines = argc > 1 ? atol(argv[1]) : 1000000;
    int nthreads = argc > 2 ? atoi(argv[2]) : 1;
    char dir[64] = "/tmp/bench-log-XXXXXX";
    const char *where = argc > 3 ? argv[3] : nullptr;

    if (lines <= 0 || nthreads <= 0) {
        fprintf(stderr, "usage: %s [lines] [threads] [dir]\n", argv[0]);
        return 2;
    }
    if (where == nullptr && (where = mkdtemp(dir)) == nullptr) {
        perror("mkdtemp");
        return 1;
    }
    std::string path = std::string(where) + "/spdlog.log";
    unlink(path.c_str());
    std::vector<hist_t> hists(static_cast<size_t>(nthreads));
    pthread_barrier_t start;
    pthread_barrier_init(&start, nullptr, static_cast<unsigned>(nthreads) + 1);
    long rss_base = hist_rss_kb("VmRSS:");

    spdlog::init_thread_pool(8192, 1);
    auto logger = spdlog::create_async<spdlog::sinks::basic_file_sink_mt>("bench", path);
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %-5l %t %s:%# %v", spdlog::pattern_time_type::utc);

    for (int i = 0; i < warmup_lines; i++)
        log_line(*logger, i);
    uint64_t idle[idle_rounds];
    for (int i = 0; i < idle_rounds; i++) {
        usleep(idle_sleep_us);
        uint64_t t0 = hist_now_ns();
        log_line(*logger, i);
        idle[i] = hist_now_ns() - t0;
    }
    usleep(idle_sleep_us);

    std::vector<std::thread> threads;
    for (int t = 0; t < nthreads; t++) {
        long first = lines / nthreads * t;
        long count = t == nthreads - 1 ? lines - first : lines / nthreads;
        hist_t *h = &hists[static_cast<size_t>(t)];

        hist_init(h);
        threads.emplace_back([&start, &logger, h, first, count] {
            pthread_barrier_wait(&start);
            for (long i = first; i < first + count; i++) {
                uint64_t t0 = hist_now_ns();
                log_line(*logger, i);
                hist_add(h, hist_now_ns() - t0);
            }
        });
    }
    pthread_barrier_wait(&start);
    uint64_t t0 = hist_now_ns();
    for (auto &t : threads)
        t.join();
    logger.reset();
    spdlog::shutdown(); // drains the queue, joins the worker, closes the file
    uint64_t t1 = hist_now_ns();
    long rss_peak = hist_rss_kb("VmHWM:");

    hist_t all;
    hist_init(&all);
    for (auto &h : hists)
        hist_merge(&all, &h);
    long written = count_lines(path) - warmup_lines - idle_rounds;
    hist_print("spdlog", nthreads, lines, t1 - t0, &all, idle, idle_rounds, rss_base,
               rss_peak, lines - written, 0);
    unlink(path.c_str());
    if (where == dir)
        rmdir(dir);
    pthread_barrier_destroy(&start);
    return written == lines ? 0 : 1;
}
