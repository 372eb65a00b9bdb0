/*
 * Unit tests for the asynchronous logger (include/ioloop/log.h), written against its
 * contract: every accepted line is written exactly once and in order per thread, in the
 * documented format; levels filter; flush and the flush interval bound when lines reach the
 * file; before open and after close lines go synchronously to standard error; rolling keeps
 * every line and bounds each file; a flood into a small backlog drops and counts exactly and
 * says so in the log; a process that exits without closing loses nothing; a fork child logs
 * through its own logger thread and never repeats the parent's lines.
 * Each test works in a fresh mkdtemp directory under /tmp, removes it, and checks that no fd
 * leaked.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* ThreadSanitizer refuses by default to let a child start threads after a fork of a threaded
 * process; the logger does exactly that in test_log_fork_child_logs, so allow it. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_UNDER_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TEST_UNDER_TSAN 1
#endif
#ifdef TEST_UNDER_TSAN
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

#define THREADS 4
#define LINES_PER_THREAD 50000

/* ---- Helpers ---------------------------------------------------------------------------- */

/* A scratch directory and the log path in it. */
typedef struct scratch {
    char dir[64];
    char path[128];
    int fds; /* open fds when the test started */
} scratch_t;

static void scratch_open(scratch_t *s)
{
    s->fds = test_count_fds();
    strcpy(s->dir, "/tmp/ioloop-log-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->path, sizeof s->path, "%s/test.log", s->dir);
}

/* Removes the directory and its files, and checks that every fd the test opened is closed. */
static void scratch_close(scratch_t *s)
{
    DIR *d = opendir(s->dir);
    struct dirent *e;
    char name[512];

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(name, sizeof name, "%s/%s", s->dir, e->d_name);
        assert_int_equal(unlink(name), 0);
    }
    closedir(d);
    assert_int_equal(rmdir(s->dir), 0);
    assert_int_equal(test_count_fds(), s->fds);
}

/* The whole file, NUL-terminated (an empty string if it does not exist). Caller frees. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;

    if (f == NULL) {
        buf = calloc(1, 1);
        assert_non_null(buf);
        if (len != NULL)
            *len = 0;
        return buf;
    }
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len != NULL)
        *len = (size_t)n;
    return buf;
}

static size_t count_lines(const char *text)
{
    size_t n = 0;

    for (const char *p = text; *p != '\0'; p++)
        n += *p == '\n';
    return n;
}

/* Checks the lines "... <key>=<thread> seq=<n>" of `text`: for each thread, seq runs 0, 1, 2
 * ... with no gap or repeat, continuing from next[thread]; updates next[]. Works line by line
 * with memchr and memmem: strstr over a whole 20 MB log is quadratic under TSan. */
static void check_sequences(const char *text, const char *key, int *next, int nthreads)
{
    char pattern[32];
    size_t plen = (size_t)snprintf(pattern, sizeof pattern, " %s=", key);

    for (const char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        const char *p = memmem(line, (size_t)(nl - line), pattern, plen);
        char *end;
        long t, seq;

        if (p == NULL)
            continue;
        t = strtol(p + plen, &end, 10);
        assert_true(strncmp(end, " seq=", 5) == 0);
        seq = strtol(end + 5, NULL, 10);
        assert_true(t >= 0 && t < nthreads);
        if (seq != next[t])
            fail_msg("%s %ld: expected seq %d, found %ld", key, t, next[t], seq);
        next[t]++;
    }
}

/* Polls until `path` contains `needle` or timeout_ms passes; returns the ms it took, or -1. */
static long wait_for_text(const char *path, const char *needle, long timeout_ms)
{
    uint64_t start = test_now_us();

    for (;;) {
        char *text = slurp(path, NULL);
        bool found = strstr(text, needle) != NULL;
        long waited = (long)((test_now_us() - start) / 1000);

        free(text);
        if (found)
            return waited;
        if (waited > timeout_ms)
            return -1;
        usleep(2000);
    }
}

static int open_file_log(const char *path, unsigned flush_ms)
{
    ioloop_log_options_t o = {.path = path, .flush_ms = flush_ms};

    return ioloop_log_open(&o);
}

/* ---- Threads, order, thread exit --------------------------------------------------------- */

typedef struct producer {
    pthread_t thread;
    int id;
    int lines;
} producer_t;

static void *producer_main(void *arg)
{
    producer_t *p = arg;

    for (int i = 0; i < p->lines; i++)
        IOLOOP_LOG_INFO("thread=%d seq=%d payload %s %.3f", p->id, i, "abcdefgh", i * 0.5);
    return NULL;
}

static void run_producers(producer_t *p, int n, int lines)
{
    for (int i = 0; i < n; i++) {
        p[i].id = i;
        p[i].lines = lines;
        assert_int_equal(pthread_create(&p[i].thread, NULL, producer_main, &p[i]), 0);
    }
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_join(p[i].thread, NULL), 0);
}

/* 4 threads x 50 000 lines: each line exactly once, in order per thread. The threads have
 * exited (their fronts are freed once drained) before the flush, and the flush alone makes
 * the lines visible. */
static void test_log_threads_every_line_once_in_order(void **state)
{
    producer_t p[THREADS];
    int next[THREADS] = {0};
    scratch_t s;
    char *text;

    (void)state;
    scratch_open(&s);
    assert_int_equal(open_file_log(s.path, 60000), 0);
    run_producers(p, THREADS, LINES_PER_THREAD);
    ioloop_log_flush();
    text = slurp(s.path, NULL);
    check_sequences(text, "thread", next, THREADS);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(next[i], LINES_PER_THREAD);
    assert_int_equal(count_lines(text), THREADS * LINES_PER_THREAD);
    free(text);
    ioloop_log_close();
    scratch_close(&s);
}

/* ---- Format ----------------------------------------------------------------------------- */

typedef struct format_probe {
    pid_t tid;
    int line;
} format_probe_t;

static void *format_thread_main(void *arg)
{
    format_probe_t *p = arg;

    p->tid = gettid();
    p->line = __LINE__ + 1;
    IOLOOP_LOG_WARN("from another thread %d", 42);
    return NULL;
}

static int match_int(const char *line, const regmatch_t *m)
{
    return atoi(line + m->rm_so);
}

/* The second a line is stamped with: its date and time are matches 1 to 6 of m. */
static time_t match_time(const char *line, const regmatch_t *m)
{
    struct tm tm = {0};

    tm.tm_year = match_int(line, &m[1]) - 1900;
    tm.tm_mon = match_int(line, &m[2]) - 1;
    tm.tm_mday = match_int(line, &m[3]);
    tm.tm_hour = match_int(line, &m[4]);
    tm.tm_min = match_int(line, &m[5]);
    tm.tm_sec = match_int(line, &m[6]);
    return timegm(&tm);
}

/* Every line matches the documented format; the thread id is the writer's gettid(); the
 * file is the base name and the line is the caller's; the time is now, in UTC. */
static void test_log_line_format(void **state)
{
    static const char *pattern =
        "^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\\.([0-9]{6})Z "
        "(DEBUG|INFO |WARN |ERROR) ([0-9]+) ([^ /]+):([0-9]+) (.*)$";
    format_probe_t probe;
    pthread_t thread;
    regex_t re;
    regmatch_t m[13];
    scratch_t s;
    char *text, *line, *save = NULL;
    int lines[4], found = 0;
    time_t before, after;
    ioloop_log_options_t o = {0};

    (void)state;
    scratch_open(&s);
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE), 0);
    o.path = s.path;
    o.level = IOLOOP_LOG_DEBUG;
    before = time(NULL);
    assert_int_equal(ioloop_log_open(&o), 0);
    lines[0] = __LINE__; IOLOOP_LOG_DEBUG("debug %s", "text");
    lines[1] = __LINE__; IOLOOP_LOG_INFO("info %d", 1);
    lines[2] = __LINE__; IOLOOP_LOG_WARN("warn");
    lines[3] = __LINE__; IOLOOP_LOG_ERROR("error %u", 3u);
    assert_int_equal(pthread_create(&thread, NULL, format_thread_main, &probe), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    ioloop_log_close();
    after = time(NULL);

    text = slurp(s.path, NULL);
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        time_t when;
        const char *msg;
        char level[6];

        if (regexec(&re, line, 13, m, 0) != 0)
            fail_msg("line does not match the format: \"%s\"", line);
        when = match_time(line, m);
        assert_true(when >= before && when <= after);
        snprintf(level, sizeof level, "%.*s", (int)(m[8].rm_eo - m[8].rm_so), line + m[8].rm_so);
        assert_int_equal(m[10].rm_eo - m[10].rm_so, (regoff_t)strlen("test_log.c"));
        assert_memory_equal(line + m[10].rm_so, "test_log.c", strlen("test_log.c"));
        msg = line + m[12].rm_so;
        if (strncmp(msg, "from another thread", 19) == 0) {
            assert_string_equal(level, "WARN ");
            assert_string_equal(msg, "from another thread 42");
            assert_int_equal(match_int(line, &m[9]), probe.tid);
            assert_int_equal(match_int(line, &m[11]), probe.line);
        } else {
            static const char *msgs[] = {"debug text", "info 1", "warn", "error 3"};
            static const char *levels[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
            int i = 0;

            while (i < 4 && strcmp(msg, msgs[i]) != 0)
                i++;
            assert_true(i < 4);
            assert_string_equal(level, levels[i]);
            assert_int_equal(match_int(line, &m[9]), gettid());
            assert_int_equal(match_int(line, &m[11]), lines[i]);
        }
        found++;
    }
    assert_int_equal(found, 5);
    free(text);
    regfree(&re);
    scratch_close(&s);
}

/*
 * PITFALLS "formatting the timestamp on every line": the date down to the second is cached per
 * thread and only the microseconds are formatted each time. Each line's time must be the time
 * of its own call, to the microsecond, also right after the wall clock's second changed: lines
 * logged on both sides of two second boundaries, each stamped between the clock readings
 * taken just before and just after its call. A cache kept past its second shows up as the
 * old second with the new microseconds.
 */
#define STAMP_LINES 6

static int64_t realtime_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void test_log_timestamp_crosses_seconds(void **state)
{
    static const char *pattern =
        "^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\\.([0-9]{6})Z "
        "INFO  [0-9]+ test_log\\.c:[0-9]+ stamp ([0-9]+)$";
    int64_t before[STAMP_LINES], after[STAMP_LINES];
    char *text, *line, *save = NULL;
    ioloop_log_options_t o = {0};
    regmatch_t m[9];
    regex_t re;
    scratch_t s;
    int found = 0;

    (void)state;
    scratch_open(&s);
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE), 0);
    o.path = s.path;
    assert_int_equal(ioloop_log_open(&o), 0);
    for (int i = 0; i < STAMP_LINES; i++) {
        before[i] = realtime_us();
        IOLOOP_LOG_INFO("stamp %d", i);
        after[i] = realtime_us();
        if (i % 2 == 1 && i + 1 < STAMP_LINES) {
            /* The next line goes out in the next second (bounded: at most a second's wait). */
            int64_t next = (after[i] / 1000000 + 1) * 1000000;
            struct timespec ts = {0, 0};

            while (realtime_us() < next) {
                ts.tv_nsec = (long)((next - realtime_us()) * 1000 + 1000);
                if (ts.tv_nsec > 999999999)
                    ts.tv_nsec = 999999999;
                nanosleep(&ts, NULL);
            }
        }
    }
    ioloop_log_close();
    /* The boundaries were crossed: lines 1 and 2, and 3 and 4, are in different seconds. */
    assert_true(before[2] / 1000000 > after[1] / 1000000);
    assert_true(before[4] / 1000000 > after[3] / 1000000);

    text = slurp(s.path, NULL);
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        int64_t stamp_us;
        int i;

        if (regexec(&re, line, 9, m, 0) != 0)
            fail_msg("line does not match the format: \"%s\"", line);
        stamp_us = (int64_t)match_time(line, m) * 1000000 + match_int(line, &m[7]);
        i = match_int(line, &m[8]);
        assert_true(i >= 0 && i < STAMP_LINES);
        if (stamp_us < before[i] || stamp_us > after[i])
            fail_msg("line %d is stamped %lld us, its call ran from %lld to %lld", i,
                     (long long)stamp_us, (long long)before[i], (long long)after[i]);
        found++;
    }
    assert_int_equal(found, STAMP_LINES);
    free(text);
    regfree(&re);
    scratch_close(&s);
}

/* A caller that reuses one buffer for different file names gets each line's own base name:
 * the names differ in length and in where their base name starts, so a name remembered by
 * its pointer shows up cut, shifted or with a NUL inside. */
static void test_log_file_name_from_reused_buffer(void **state)
{
    static const char *names[] = {"lib/one.c", "two.c", "a/b/three.c", "x/y.c", "/abs/dir/"};
    static const char *bases[] = {"one.c", "two.c", "three.c", "y.c", ""};
    const size_t n = sizeof names / sizeof names[0];
    char file[64], *text, *line, *save = NULL;
    regex_t re;
    regmatch_t m[3];
    size_t len, found = 0;
    scratch_t s;

    (void)state;
    scratch_open(&s);
    assert_int_equal(regcomp(&re, "^[^ ]+ INFO  [0-9]+ ([^ ]*):([0-9]+) name [0-9]+$",
                             REG_EXTENDED),
                     0);
    assert_int_equal(open_file_log(s.path, 60000), 0);
    memset(file, 'z', sizeof file); /* what lies past each name is not a NUL */
    for (size_t i = 0; i < n; i++) {
        strcpy(file, names[i]);
        ioloop_log_write(IOLOOP_LOG_INFO, file, (int)i + 1, "name %zu", i);
    }
    ioloop_log_close();

    text = slurp(s.path, &len);
    assert_int_equal(strlen(text), len); /* no NUL from a stale name */
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        if (regexec(&re, line, 3, m, 0) != 0)
            fail_msg("line does not match: \"%s\"", line);
        line[m[1].rm_eo] = '\0';
        assert_string_equal(line + m[1].rm_so, bases[found]);
        assert_int_equal(atoi(line + m[2].rm_so), (int)found + 1);
        found++;
    }
    assert_int_equal(found, n);
    free(text);
    regfree(&re);
    scratch_close(&s);
}

/* The message part is what printf would print, for the conversions of the fast path and for
 * those it hands to vsnprintf; errno survives a call and %m sees the caller's errno. */
static void test_log_message_matches_printf(void **state)
{
    char expected[64][160];
    int n = 0;
    scratch_t s;
    char *text, *p;

#define BOTH(...)                                                                       \
    do {                                                                                \
        snprintf(expected[n++], sizeof expected[0], __VA_ARGS__);                       \
        IOLOOP_LOG_INFO(__VA_ARGS__);                                                   \
    } while (0)

    (void)state;
    scratch_open(&s);
    assert_int_equal(open_file_log(s.path, 60000), 0);
    BOTH("request %d from %s took %.3f ms", 123456, "10.0.0.1:5555", 123.4565);
    BOTH("[%5d|%-5d|%05d|%+d|% d|%.3d|%.0d]", 42, 42, 42, 42, 42, 7, 0);
    BOTH("[%u|%x|%X|%o|%08x|%hhd|%hd|%ld|%lld|%zu|%zd|%jd|%td]", 4000000000u, 255u, 255u,
         8u, 0xbeefu, (signed char)100, (short)-7000, -5L, -9000000000LL, (size_t)77, (ssize_t)-77,
         (intmax_t)-1, (ptrdiff_t)12);
    BOTH("[%s|%10s|%-10s|%.2s|%c|%3c|%%|%p|%p]", "abc", "hi", "left", "xyz", 'q', 'r',
         (void *)0x1234, (void *)NULL);
    BOTH("[%f|%.0f|%.0f|%.0f|%.1f|%.2f|%.3f|%.9f]", 3.14159265, 0.5, 1.5, 2.5, 0.25, 0.125,
         0.0005, 1.0 / 3);
    BOTH("[%10.3f|%-10.3f|%010.3f|%+.2f|% .2f|%.3f|%.3f|%F]", -2.5, 2.5, -2.5, 1.0, 1.0, -0.0,
         -0.0001, 1e18);
    BOTH("[%*d|%-*d|%.*f|%*.*f]", 6, 42, 6, 42, 2, 3.14159, 10, 3, -2.5);
    BOTH("[%e|%g|%a|%.12f|%#x|%Lf]", 12345.678, 0.0001, 1.0, 1.0 / 7, 255u, 2.5L);
    BOTH("[%f|%f|%.3f]", 1e20, -1e-300, 9223372036854775808.0);
    BOTH("no conversions");
    errno = ENOENT;
    snprintf(expected[n++], sizeof expected[0], "[%s]", strerror(ENOENT));
    errno = ENOENT;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat" /* -pedantic: %m is a glibc extension */
    IOLOOP_LOG_INFO("[%m]");
#pragma GCC diagnostic pop
    assert_int_equal(errno, ENOENT);
#undef BOTH
    ioloop_log_close();

    text = slurp(s.path, NULL);
    p = text;
    for (int i = 0; i < n; i++) {
        char *msg = strstr(p, "test_log.c:");
        char *end;

        assert_non_null(msg);
        msg = strchr(msg, ' ') + 1;
        end = strchr(msg, '\n');
        assert_non_null(end);
        *end = '\0';
        assert_string_equal(msg, expected[i]);
        p = end + 1;
    }
    free(text);
    scratch_close(&s);
}

/* A message longer than a line is cut to IOLOOP_LOG_LINE_MAX bytes, ends with the marker,
 * and stays one line; the next line is intact. */
static void test_log_truncates_long_lines(void **state)
{
    size_t big = 3 * IOLOOP_LOG_LINE_MAX;
    char *msg = malloc(big + 1);
    scratch_t s;
    char *text, *nl;

    (void)state;
    assert_non_null(msg);
    memset(msg, 'x', big);
    msg[big] = '\0';
    scratch_open(&s);
    assert_int_equal(open_file_log(s.path, 60000), 0);
    for (int i = 0; i < 20; i++) /* enough to cross chunk boundaries with long lines */
        IOLOOP_LOG_INFO("%s", msg);
    IOLOOP_LOG_INFO("after");
    ioloop_log_close();

    text = slurp(s.path, NULL);
    nl = text;
    for (int i = 0; i < 20; i++) {
        char *line = nl;

        nl = strchr(line, '\n');
        assert_non_null(nl);
        nl++;
        assert_int_equal(nl - line, IOLOOP_LOG_LINE_MAX);
        assert_memory_equal(nl - 1 - strlen(IOLOOP_LOG_TRUNCATED), IOLOOP_LOG_TRUNCATED,
                            strlen(IOLOOP_LOG_TRUNCATED));
    }
    assert_non_null(strstr(nl, " after\n"));
    assert_int_equal(count_lines(text), 21);
    free(text);
    free(msg);
    scratch_close(&s);
}

/* ---- Levels ----------------------------------------------------------------------------- */

/* Lines below the level are not written; set_level changes it for later lines; a level out
 * of range is ignored. */
static void test_log_level_filtering(void **state)
{
    ioloop_log_options_t o = {0};
    scratch_t s;
    char *text;

    (void)state;
    scratch_open(&s);
    o.path = s.path;
    o.level = IOLOOP_LOG_WARN;
    assert_int_equal(ioloop_log_open(&o), 0);
    IOLOOP_LOG_DEBUG("a-debug");
    IOLOOP_LOG_INFO("a-info");
    IOLOOP_LOG_WARN("a-warn");
    IOLOOP_LOG_ERROR("a-error");
    ioloop_log_set_level(IOLOOP_LOG_DEBUG);
    IOLOOP_LOG_DEBUG("b-debug");
    IOLOOP_LOG_INFO("b-info");
    ioloop_log_set_level(IOLOOP_LOG_ERROR);
    ioloop_log_set_level((ioloop_log_level_t)9); /* ignored */
    ioloop_log_set_level((ioloop_log_level_t)0); /* ignored */
    IOLOOP_LOG_WARN("c-warn");
    IOLOOP_LOG_ERROR("c-error");
    ioloop_log_close();
    ioloop_log_set_level(IOLOOP_LOG_INFO);

    text = slurp(s.path, NULL);
    assert_null(strstr(text, "a-debug"));
    assert_null(strstr(text, "a-info"));
    assert_non_null(strstr(text, "a-warn"));
    assert_non_null(strstr(text, "a-error"));
    assert_non_null(strstr(text, "b-debug"));
    assert_non_null(strstr(text, "b-info"));
    assert_null(strstr(text, "c-warn"));
    assert_non_null(strstr(text, "c-error"));
    assert_int_equal(count_lines(text), 5);
    free(text);
    scratch_close(&s);
}

/* ---- Flush and the flush interval -------------------------------------------------------- */

/* With a one-minute flush interval, ioloop_log_flush() alone makes every line accepted
 * before it visible, from the calling thread and from others, without closing. */
static void test_log_flush_makes_lines_visible(void **state)
{
    producer_t p[2];
    scratch_t s;
    char *text;

    (void)state;
    scratch_open(&s);
    assert_int_equal(open_file_log(s.path, 60000), 0);
    run_producers(p, 2, 500);
    IOLOOP_LOG_INFO("last before flush");
    ioloop_log_flush();
    text = slurp(s.path, NULL);
    assert_non_null(strstr(text, "last before flush"));
    assert_int_equal(count_lines(text), 1001);
    free(text);
    ioloop_log_close();
    ioloop_log_flush(); /* closed: returns at once */
    scratch_close(&s);
}

/* A line written, with no flush call, appears within flush_ms plus some slack: the first
 * line, and lines written while the logger thread naps between passes. The bound is well
 * below the default interval (1000 ms), so an ignored flush_ms fails too. */
static void test_log_flush_interval_bounds_delay(void **state)
{
    const unsigned flush_ms = 100;
    const long slack_ms = 600; /* scheduling under sanitizers on a loaded 2-core machine */
    scratch_t s;
    long waited;

    (void)state;
    scratch_open(&s);
    assert_int_equal(open_file_log(s.path, flush_ms), 0);
    for (int i = 0; i < 3; i++) {
        char needle[32];

        snprintf(needle, sizeof needle, "interval line %d\n", i);
        IOLOOP_LOG_INFO("interval line %d", i);
        waited = wait_for_text(s.path, needle, flush_ms + slack_ms);
        assert_true(waited >= 0);
    }
    ioloop_log_close();
    scratch_close(&s);
}

/* ---- Standard error before open and after close ------------------------------------------ */

/* Before open and after close a line is on standard error (here a file put on fd 2) as soon
 * as the call returns, in the same format; while open it goes to the log file only. */
static void test_log_stderr_before_open_and_after_close(void **state)
{
    scratch_t s;
    char err_path[160], *text;
    int saved, fd;
    regex_t re;

    (void)state;
    scratch_open(&s);
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", s.dir);
    fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);

    IOLOOP_LOG_WARN("before open %d", 1);
    text = slurp(err_path, NULL); /* synchronous: there without a flush */
    assert_non_null(strstr(text, "before open 1\n"));
    free(text);
    IOLOOP_LOG_DEBUG("below the default level");

    assert_int_equal(open_file_log(s.path, 60000), 0);
    IOLOOP_LOG_INFO("while open");
    ioloop_log_close();
    IOLOOP_LOG_ERROR("after close %s", "x");

    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);

    text = slurp(err_path, NULL);
    assert_int_equal(count_lines(text), 2);
    assert_null(strstr(text, "while open"));
    assert_null(strstr(text, "below the default level"));
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z "
                             "WARN  [0-9]+ test_log\\.c:[0-9]+ before open 1\n"
                             "[0-9-]{10}T[0-9:]{8}\\.[0-9]{6}Z ERROR [0-9]+ test_log\\.c:[0-9]+ "
                             "after close x\n$",
                             REG_EXTENDED),
                     0);
    assert_int_equal(regexec(&re, text, 0, NULL, 0), 0);
    regfree(&re);
    free(text);
    text = slurp(s.path, NULL);
    assert_non_null(strstr(text, "while open\n"));
    assert_int_equal(count_lines(text), 1);
    free(text);
    scratch_close(&s);
}

/* ---- Rolling ---------------------------------------------------------------------------- */

/* Rolling keeps every line exactly once and in order across path.N ... path.1, path (oldest
 * to newest); every rolled file reached roll_bytes and exceeds it by less than its last
 * line; the newest, path, holds the last line written. */
static void test_log_rolling_keeps_every_line(void **state)
{
    const size_t roll = 8192;
    ioloop_log_options_t o = {0};
    producer_t p[2];
    int next[2] = {0}, files = 0;
    scratch_t s;
    char name[200];
    struct stat st;

    (void)state;
    scratch_open(&s);
    o.path = s.path;
    o.roll_bytes = roll;
    assert_int_equal(ioloop_log_open(&o), 0);
    run_producers(p, 2, 2000);
    ioloop_log_flush(); /* order across threads is not promised: make this one the last */
    IOLOOP_LOG_INFO("the very last line");
    ioloop_log_close();

    while (snprintf(name, sizeof name, "%s.%d", s.path, files + 1), stat(name, &st) == 0)
        files++;
    assert_true(files >= 20); /* about 4000 lines of ~95 bytes in 8 KiB files */
    for (int i = files; i >= 0; i--) {
        size_t len;
        char *text, *last;

        if (i > 0)
            snprintf(name, sizeof name, "%s.%d", s.path, i);
        else
            snprintf(name, sizeof name, "%s", s.path);
        text = slurp(name, &len);
        assert_true(len > 0 && text[len - 1] == '\n');
        text[len - 1] = '\0';
        last = strrchr(text, '\n');
        last = last != NULL ? last + 1 : text;
        text[len - 1] = '\n';
        /* Everything before the last line starts below roll_bytes. */
        assert_true((size_t)(last - text) < roll);
        if (i > 0)
            assert_true(len >= roll);
        else
            assert_non_null(strstr(last, "the very last line"));
        check_sequences(text, "thread", next, 2);
        free(text);
    }
    assert_int_equal(next[0], 2000);
    assert_int_equal(next[1], 2000);
    scratch_close(&s);
}

/* ---- Overload --------------------------------------------------------------------------- */

typedef struct drain {
    pthread_t thread;
    int fd;
    char *buf;
    size_t len, cap;
} drain_t;

static void *drain_main(void *arg)
{
    drain_t *d = arg;
    ssize_t n;

    for (;;) {
        if (d->cap - d->len < 65536) {
            d->cap = d->cap * 2 + 65536;
            d->buf = realloc(d->buf, d->cap + 1);
            assert_non_null(d->buf);
        }
        n = read(d->fd, d->buf + d->len, d->cap - d->len);
        if (n <= 0)
            break;
        d->len += (size_t)n;
    }
    d->buf[d->len] = '\0';
    return NULL;
}

/* The log is a FIFO nobody reads, so the logger thread blocks and a flood overruns a 16 KiB
 * backlog: the lines written plus the lines dropped are the lines attempted, the written ones
 * keep their order, and the log says how many were dropped (the notices add up). */
static void test_log_backlog_flood_counts_drops(void **state)
{
    const int attempted = 20000;
    ioloop_log_options_t o = {0};
    drain_t d = {0};
    scratch_t s;
    uint64_t dropped_before, dropped, noticed = 0;
    int written = 0, last = -1;
    const char *p;

    (void)state;
    scratch_open(&s);
    assert_int_equal(mkfifo(s.path, 0600), 0);
    d.fd = open(s.path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* lets the logger's open proceed */
    assert_true(d.fd >= 0);
    o.path = s.path;
    o.max_backlog_bytes = 16384;
    dropped_before = ioloop_log_dropped();
    assert_int_equal(ioloop_log_open(&o), 0);
    for (int i = 0; i < attempted; i++)
        IOLOOP_LOG_INFO("flood seq=%d", i);
    dropped = ioloop_log_dropped() - dropped_before;

    assert_int_equal(fcntl(d.fd, F_SETFL, 0), 0); /* blocking reads from here on */
    assert_int_equal(pthread_create(&d.thread, NULL, drain_main, &d), 0);
    ioloop_log_close();
    assert_int_equal(pthread_join(d.thread, NULL), 0);
    close(d.fd);

    for (p = d.buf; (p = strstr(p, " flood seq=")) != NULL; p++) {
        int seq = atoi(p + strlen(" flood seq="));

        assert_true(seq > last);
        last = seq;
        written++;
    }
    for (p = d.buf; (p = strstr(p, "ioloop_log: dropped ")) != NULL; p++)
        noticed += strtoull(p + strlen("ioloop_log: dropped "), NULL, 10);
    assert_true(dropped > 0);
    assert_int_equal((uint64_t)written + dropped, (uint64_t)attempted);
    assert_int_equal(noticed, dropped);
    assert_true(strstr(d.buf, " WARN ") != NULL);
    free(d.buf);
    scratch_close(&s);
}

/* ---- Options ---------------------------------------------------------------------------- */

/* A bad level is -EINVAL, a bad path the open() errno, a second open -EALREADY; a failed open
 * changes nothing: the open logger keeps its file, a closed one stays closed. */
static void test_log_open_rejects_bad_options(void **state)
{
    ioloop_log_options_t bad_level = {.level = (ioloop_log_level_t)7};
    ioloop_log_options_t bad_path = {.path = "/nonexistent-ioloop-dir/x.log"};
    scratch_t s;
    char *text;

    (void)state;
    scratch_open(&s);
    assert_int_equal(ioloop_log_open(&bad_level), -EINVAL);
    assert_int_equal(ioloop_log_open(&bad_path), -ENOENT);
    assert_int_equal(test_count_fds(), s.fds);
    ioloop_log_flush(); /* still closed: returns at once */

    assert_int_equal(open_file_log(s.path, 60000), 0);
    assert_int_equal(open_file_log(s.path, 60000), -EALREADY);
    assert_int_equal(ioloop_log_open(NULL), -EALREADY);
    assert_int_equal(ioloop_log_open(&bad_level), -EINVAL);
    IOLOOP_LOG_INFO("still open");
    ioloop_log_close();
    ioloop_log_close(); /* a second close does nothing */
    text = slurp(s.path, NULL);
    assert_non_null(strstr(text, "still open\n"));
    free(text);
    scratch_close(&s);
}

/* ---- Exit and fork ---------------------------------------------------------------------- */

static void wait_child(pid_t pid)
{
    int status;

    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A child process that opens the logger, logs from two threads and calls exit() without
 * closing: the exit handler writes every line. */
static void test_log_child_exit_writes_every_line(void **state)
{
    int next[2] = {0};
    scratch_t s;
    pid_t pid;
    char *text;

    (void)state;
    scratch_open(&s);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        producer_t p[2];

        if (open_file_log(s.path, 60000) != 0)
            _exit(1);
        run_producers(p, 2, 5000);
        exit(0);
    }
    wait_child(pid);
    text = slurp(s.path, NULL);
    check_sequences(text, "thread", next, 2);
    assert_int_equal(next[0], 5000);
    assert_int_equal(next[1], 5000);
    free(text);
    scratch_close(&s);
}

/* The parent has an open logger (its thread running, lines accepted but not written); after
 * fork() the child logs through a logger thread of its own and exits without closing; the
 * parent's lines appear exactly once (the child never writes them), the child's all appear. */
static void test_log_fork_child_logs(void **state)
{
    int parent[1] = {0}, child[1] = {0};
    scratch_t s;
    pid_t pid;
    char *text;

    (void)state;
    scratch_open(&s);
    assert_int_equal(open_file_log(s.path, 60000), 0);
    for (int i = 0; i < 1000; i++)
        IOLOOP_LOG_INFO("parent=0 seq=%d", i);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < 3000; i++)
            IOLOOP_LOG_INFO("child=0 seq=%d", i);
        exit(0);
    }
    for (int i = 1000; i < 2000; i++)
        IOLOOP_LOG_INFO("parent=0 seq=%d", i);
    wait_child(pid);
    ioloop_log_close();

    text = slurp(s.path, NULL);
    check_sequences(text, "parent", parent, 1);
    check_sequences(text, "child", child, 1);
    assert_int_equal(parent[0], 2000);
    assert_int_equal(child[0], 3000);
    assert_int_equal(count_lines(text), 5000);
    free(text);
    scratch_close(&s);
}

/* Tells main() to run fresh_fork_tid() instead of the tests. */
#define FRESH_FORK_TID "--fresh-fork-tid"

/*
 * The body of test_log_fork_child_tid_never_opened, run in a fresh image of this program
 * (main() sees FRESH_FORK_TID), where no test has opened the logger: logs a line, forks, and
 * the child logs one; both go synchronously to standard error, which the test made a file.
 * Each line carries the pid of its process. Returns the exit status.
 */
static int fresh_fork_tid(void)
{
    int status;
    pid_t pid;

    IOLOOP_LOG_INFO("probe=parent pid=%d", (int)getpid());
    pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        IOLOOP_LOG_INFO("probe=child pid=%d", (int)getpid());
        _exit(0);
    }
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 1;
    return 0;
}

/* A fork child logs its own thread id also when the logger was never opened (lines go to
 * standard error). The case needs a process in which ioloop_log_open() never ran, and every
 * other test here opens the logger, so it runs in a fresh image of this program. In each line
 * the thread id must be the pid the line reports (a single-threaded process's tid is its pid). */
static void test_log_fork_child_tid_never_opened(void **state)
{
    regex_t re;
    regmatch_t m[4];
    scratch_t s;
    char err_path[160], *text, *line, *save = NULL;
    pid_t pid, child = -1;
    int fd, lines = 0;

    (void)state;
    scratch_open(&s);
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", s.dir);
    fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(regcomp(&re, "^[^ ]+ INFO  ([0-9]+) test_log\\.c:[0-9]+ probe=(parent|child) "
                                  "pid=([0-9]+)$",
                             REG_EXTENDED),
                     0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (dup2(fd, STDERR_FILENO) != STDERR_FILENO)
            _exit(126);
        execl("/proc/self/exe", "test_log", FRESH_FORK_TID, (char *)NULL);
        _exit(127);
    }
    close(fd);
    wait_child(pid);

    text = slurp(err_path, NULL);
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        int tid, who;

        if (regexec(&re, line, 4, m, 0) != 0)
            fail_msg("line does not match: \"%s\"", line);
        tid = match_int(line, &m[1]);
        who = match_int(line, &m[3]);
        if (strncmp(line + m[2].rm_so, "parent", 6) == 0) {
            assert_int_equal(who, pid); /* exec keeps the pid */
        } else {
            assert_int_not_equal(who, pid);
            child = who;
        }
        assert_int_equal(tid, who);
        lines++;
    }
    assert_int_equal(lines, 2);
    assert_true(child > 0);
    free(text);
    regfree(&re);
    scratch_close(&s);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_threads_every_line_once_in_order),
        cmocka_unit_test(test_log_line_format),
        cmocka_unit_test(test_log_timestamp_crosses_seconds),
        cmocka_unit_test(test_log_file_name_from_reused_buffer),
        cmocka_unit_test(test_log_message_matches_printf),
        cmocka_unit_test(test_log_truncates_long_lines),
        cmocka_unit_test(test_log_level_filtering),
        cmocka_unit_test(test_log_flush_makes_lines_visible),
        cmocka_unit_test(test_log_flush_interval_bounds_delay),
        cmocka_unit_test(test_log_stderr_before_open_and_after_close),
        cmocka_unit_test(test_log_rolling_keeps_every_line),
        cmocka_unit_test(test_log_backlog_flood_counts_drops),
        cmocka_unit_test(test_log_open_rejects_bad_options),
        cmocka_unit_test(test_log_child_exit_writes_every_line),
        cmocka_unit_test(test_log_fork_child_logs),
        cmocka_unit_test(test_log_fork_child_tid_never_opened),
    };

    if (argc == 2 && strcmp(argv[1], FRESH_FORK_TID) == 0)
        return fresh_fork_tid();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
