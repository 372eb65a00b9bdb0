/*
 * The logger thread. Each pass walks every thread's front, gathers what lies between its read
 * position and `committed` as iovecs (one per span of a chunk, never copying), writes them
 * with writev, subtracts them from the backlog, and recycles the chunks it finished. Then it
 * answers the flushes that were waiting and decides how to wait (see log.c: POLL while lines
 * flow, NAP up to flush_ms while they trickle, IDLE after a quiet interval).
 *
 * Rolling happens inside a pass, between two lines: a line goes into the current file if the
 * file is shorter than roll_bytes before it, so no file exceeds roll_bytes by more than one
 * line; then path.N becomes path.N+1 (for every N, the oldest first), path becomes path.1 and
 * a fresh path is opened.
 *
 * When writing fails (a full disk, a bad descriptor), the lines go to standard error instead,
 * after one line there saying why; the next pass tries the file again.
 */
#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/strerror.h"
#include "core/thread.h"

#define L ioloop__log

/* iovecs per writev: one per chunk span, so a call covers up to 4 MiB (well under IOV_MAX). */
#define IOV_BATCH 64
/* Written chunks handed back to their thread, at most this many at a time (it holds at most
 * as many more, taken earlier): reuse without a lock and without faulting fresh pages in,
 * while a thread's idle memory stays small. */
#define PARK_MAX 1
/* Written chunks kept in the shared spare list, for threads whose own are in use: enough for
 * a few busy threads between two passes, so the steady state does not allocate. */
#define SPARE_MAX 8
/* While lines flow, the thread looks again after this long by itself (no wake needed). At a
 * producer's full speed, about a gigabyte a second, 200 us is a few chunks. */
#define POLL_NS (200 * 1000)
/* A pass that wrote at least this much means lines are flowing. */
#define POLL_BYTES (IOLOOP__LOG_CHUNK_BYTES / 4)

struct writer {
    int fd;
    size_t size;                 /* bytes in the current file, for rolling */
    size_t roll;                 /* roll_bytes; 0: never roll */
    unsigned nrolled;            /* path.1 .. path.nrolled exist */
    char *from, *to;             /* room for "path.N", for rename() */
    struct iovec iov[IOV_BATCH]; /* the batch being gathered */
    int niov;
    size_t batch;                /* bytes in the batch */
    size_t batch_lines;          /* of which accepted lines (the rest: our own notices) */
    uint64_t noticed;            /* drops already reported in the log */
    uint64_t notice_ns;          /* when the last drop notice was written */
    bool failing;                /* the last write failed, and that was reported */
    struct ioloop_log_chunk *retired; /* chunks to free once the mutex is released */
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* On return, iov[] holds what was not written: entries fully written have length 0. */
int ioloop__log_write_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t r;
        size_t left;

        if (iov->iov_len == 0) {
            iov++;
            n--;
            continue;
        }
        r = writev(fd, iov, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {fd, POLLOUT, 0};

            (void)poll(&p, 1, -1); /* a non-blocking descriptor: wait until it takes more */
            continue;
        }
        if (r <= 0)
            return r < 0 ? -errno : -EIO;
        for (left = (size_t)r; left > 0 && n > 0;) {
            size_t k = left < iov->iov_len ? left : iov->iov_len;

            iov->iov_base = (char *)iov->iov_base + k;
            iov->iov_len -= k;
            left -= k;
            if (iov->iov_len == 0) {
                iov++;
                n--;
            }
        }
    }
    return 0;
}

/* Writes a line about the logger itself synchronously to standard error. */
static void complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void complain(const char *fmt, ...)
{
    char buf[IOLOOP_LOG_LINE_MAX];
    struct iovec iov = {buf, 0};
    va_list ap;

    va_start(ap, fmt);
    iov.iov_len = ioloop__log_format(buf, sizeof buf, IOLOOP_LOG_ERROR, __FILE__, __LINE__, fmt, ap);
    va_end(ap);
    (void)ioloop__log_write_all(STDERR_FILENO, &iov, 1);
}

/* Writes the batch gathered so far, or to standard error if the file refuses it. */
static void write_batch(struct writer *w)
{
    int err;

    if (w->niov == 0)
        return;
    err = ioloop__log_write_all(w->fd, w->iov, w->niov);
    if (err != 0) {
        if (!w->failing)
            complain("ioloop_log: writing to %s failed: %s; lines go to standard error until "
                     "it works again", L.path != NULL ? L.path : "standard error",
                     ioloop__strerror(-err));
        w->failing = true;
        if (w->fd != STDERR_FILENO)
            (void)ioloop__log_write_all(STDERR_FILENO, w->iov, w->niov);
    } else {
        w->failing = false;
    }
    w->size += w->batch;
    atomic_fetch_sub(&L.backlog, w->batch_lines);
    w->niov = 0;
    w->batch = 0;
    w->batch_lines = 0;
}

static void rolled_name(char *dst, unsigned n)
{
    sprintf(dst, "%s.%u", L.path, n); /* sized for any unsigned in writer_init() */
}

/* path.N -> path.N+1 for every N, path -> path.1, and a fresh path. The batch is empty. */
static void roll(struct writer *w)
{
    int fd;

    w->size = 0; /* even on failure: try again after another roll_bytes */
    for (unsigned i = w->nrolled; i > 0; i--) {
        rolled_name(w->from, i);
        rolled_name(w->to, i + 1);
        (void)rename(w->from, w->to); /* one removed by someone else just leaves a gap */
    }
    rolled_name(w->to, 1);
    if (rename(L.path, w->to) != 0) {
        complain("ioloop_log: cannot roll %s: %s", L.path, ioloop__strerror(errno));
        return;
    }
    w->nrolled++;
    fd = open(L.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        complain("ioloop_log: cannot reopen %s after rolling: %s; writing on in %s", L.path,
                 ioloop__strerror(errno), w->to);
        return;
    }
    pthread_mutex_lock(&L.mutex); /* close() and fork read L.fd under the mutex */
    L.fd = fd;
    pthread_mutex_unlock(&L.mutex);
    close(w->fd);
    w->fd = fd;
}

/* Adds bytes (whole lines) to the batch, rolling between two lines where needed. */
static void add(struct writer *w, char *p, size_t n, bool lines)
{
    while (n > 0) {
        size_t take = n;

        if (w->roll != 0) {
            if (w->size + w->batch >= w->roll) {
                write_batch(w);
                roll(w);
            }
            size_t room = w->roll - (w->size + w->batch);

            if (n > room) {
                /* The lines that start before roll_bytes stay: cut after the one holding the
                 * file's last byte below the limit. */
                char *nl = memchr(p + room - 1, '\n', n - (room - 1));

                take = nl != NULL ? (size_t)(nl - p) + 1 : n;
            }
        }
        if (w->niov == IOV_BATCH)
            write_batch(w);
        w->iov[w->niov++] = (struct iovec){p, take};
        w->batch += take;
        if (lines)
            w->batch_lines += take;
        p += take;
        n -= take;
    }
}

/* Writes a line of the logger's own (a drop notice) into the log, at once. */
static void notice(struct writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void notice(struct writer *w, const char *fmt, ...)
{
    char buf[IOLOOP_LOG_LINE_MAX];
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    n = ioloop__log_format(buf, sizeof buf, IOLOOP_LOG_WARN, __FILE__, __LINE__, fmt, ap);
    va_end(ap);
    add(w, buf, n, false);
    write_batch(w); /* buf lives on this stack */
}

/* Reports lines dropped since the last report, at most once per flush interval (the final
 * pass reports whatever is left). Returns true if nothing is left to report. */
static bool report_drops(struct writer *w, bool final)
{
    uint64_t dropped = atomic_load_explicit(&L.dropped, memory_order_relaxed);
    uint64_t now = now_ns();

    if (dropped == w->noticed)
        return true;
    if (!final && now - w->notice_ns < (uint64_t)L.flush_ms * 1000000u)
        return false;
    notice(w, "ioloop_log: dropped %" PRIu64 " lines: more than %zu bytes were waiting to be "
              "written", dropped - w->noticed, L.max_backlog);
    w->noticed = dropped;
    w->notice_ns = now;
    return true;
}

/* One pass over the fronts: gathers and writes every committed line. Returns the bytes. */
static size_t pass(struct writer *w, struct ioloop_log_front *list)
{
    size_t total = 0;

    for (struct ioloop_log_front *f = list; f != NULL; f = f->next) {
        struct ioloop_log_chunk *c = f->rd;

        if (c == NULL) {
            c = atomic_load_explicit(&f->head, memory_order_acquire);
            if (c == NULL)
                continue;
            f->rd = c;
            f->done = 0;
        }
        for (;;) {
            /* `next` first: once it is set, the thread is done with c and `committed` final. */
            struct ioloop_log_chunk *next = atomic_load_explicit(&c->next, memory_order_acquire);
            uint32_t end = atomic_load_explicit(&c->committed, memory_order_acquire);

            if (end > f->done) {
                add(w, c->data + f->done, end - f->done, true);
                total += end - f->done;
                f->done = end;
            }
            if (next == NULL)
                break;
            c = next;
            f->rd = c;
            f->done = 0;
        }
    }
    write_batch(w);
    return total;
}

/* A written chunk of front f: back to its thread, to the spare list, or to be freed. */
static void recycle_locked(struct writer *w, struct ioloop_log_front *f, struct ioloop_log_chunk *c)
{
    struct ioloop_log_chunk *top;

    if (atomic_load_explicit(&f->returned, memory_order_relaxed) == NULL)
        f->parked = 0; /* the thread took what was there */
    if (!f->exited && f->parked < PARK_MAX) {
        top = atomic_load_explicit(&f->returned, memory_order_relaxed);
        do
            atomic_store_explicit(&c->next, top, memory_order_relaxed);
        while (!atomic_compare_exchange_weak_explicit(&f->returned, &top, c, memory_order_release,
                                                      memory_order_relaxed));
        f->parked++;
    } else if (L.nspare < SPARE_MAX) {
        atomic_store_explicit(&c->next, L.spare, memory_order_relaxed);
        L.spare = c;
        L.nspare++;
    } else {
        atomic_store_explicit(&c->next, w->retired, memory_order_relaxed);
        w->retired = c;
    }
}

/*
 * After a pass, under the mutex: chunks before each front's read position are written and
 * get recycled. Fronts whose thread exited and that are drained are freed.
 */
static void retire_locked(struct writer *w)
{
    struct ioloop_log_front **link = &L.fronts, *f;

    while ((f = *link) != NULL) {
        struct ioloop_log_chunk *c = atomic_load_explicit(&f->head, memory_order_relaxed);

        if (f->rd != NULL) {
            while (c != f->rd) {
                struct ioloop_log_chunk *next = atomic_load_explicit(&c->next, memory_order_relaxed);

                recycle_locked(w, f, c);
                c = next;
            }
            atomic_store_explicit(&f->head, c, memory_order_relaxed);
        }
        if (f->exited &&
            (c == NULL ||
             (c == f->rd && atomic_load_explicit(&c->next, memory_order_acquire) == NULL &&
              f->done == atomic_load_explicit(&c->committed, memory_order_acquire)))) {
            *link = f->next;
            ioloop__log_front_release(f, true);
            continue;
        }
        link = &f->next;
    }
}

/*
 * Under the mutex: waits until a producer, a flush or close wakes the thread, or flush_ms
 * passes. `idle`: the last wait ran out and nothing came since, so wait without a timeout
 * unless a line is already on its way. Returns true if the time ran out.
 */
static bool wait_for_lines(bool idle, uint64_t ticket)
{
    struct timespec deadline;
    uint64_t ns;

    if (idle) {
        atomic_store(&L.writer_state, IOLOOP__WRITER_IDLE);
        if (atomic_load(&L.backlog) == 0) {
            while (atomic_load_explicit(&L.writer_state, memory_order_relaxed) ==
                       IOLOOP__WRITER_IDLE && !L.stop && L.flush_requested == ticket)
                pthread_cond_wait(&L.wake, &L.mutex);
            return false;
        }
    }
    atomic_store(&L.writer_state, IOLOOP__WRITER_NAP);
    ns = now_ns() + (uint64_t)L.flush_ms * 1000000u;
    deadline.tv_sec = (time_t)(ns / 1000000000u);
    deadline.tv_nsec = (long)(ns % 1000000000u);
    while (atomic_load_explicit(&L.writer_state, memory_order_relaxed) == IOLOOP__WRITER_NAP &&
           !L.stop && L.flush_requested == ticket) {
        if (pthread_cond_timedwait(&L.wake, &L.mutex, &deadline) == ETIMEDOUT)
            return true;
    }
    return false;
}

/*
 * Under the mutex, after a pass that wrote `bytes`: goes again at once when a flush or close
 * waits or the backlog is under pressure (yielding first), sleeps POLL_NS while lines flow,
 * else waits for lines (`idle` as for wait_for_lines()). Returns true if a wait ran out.
 */
static bool pause_locked(size_t bytes, bool idle, uint64_t ticket)
{
    struct timespec poll_time = {0, POLL_NS};

    if (L.stop || L.flush_requested != ticket)
        return false;
    if (atomic_load_explicit(&L.backlog, memory_order_relaxed) >= L.pressure) {
        pthread_mutex_unlock(&L.mutex);
        sched_yield();
        pthread_mutex_lock(&L.mutex);
        return false;
    }
    if (bytes >= POLL_BYTES) {
        atomic_store(&L.writer_state, IOLOOP__WRITER_POLL);
        pthread_mutex_unlock(&L.mutex);
        nanosleep(&poll_time, NULL);
        pthread_mutex_lock(&L.mutex);
        return false;
    }
    return wait_for_lines(idle, ticket);
}

/* Waits until no thread is between its check of the state and its commit. */
static void wait_in_flight(struct ioloop_log_front *list)
{
    for (struct ioloop_log_front *f = list; f != NULL; f = f->next) {
        while (atomic_load(&f->busy))
            sched_yield();
    }
}

static void writer_init(struct writer *w)
{
    struct stat st;
    size_t len;

    memset(w, 0, sizeof *w);
    w->fd = L.fd;
    w->roll = L.roll_bytes;
    w->noticed = L.dropped_base;
    if (fstat(w->fd, &st) == 0 && S_ISREG(st.st_mode))
        w->size = (size_t)st.st_size;
    if (w->roll == 0)
        return;
    len = strlen(L.path) + sizeof(".4294967295");
    w->from = malloc(len);
    w->to = malloc(len);
    if (w->from == NULL || w->to == NULL) {
        complain("ioloop_log: out of memory: %s will not roll", L.path);
        w->roll = 0;
        return;
    }
    for (;;) { /* count the rolled files already there: path.1, path.2, ... */
        rolled_name(w->from, w->nrolled + 1);
        if (stat(w->from, &st) != 0)
            break;
        w->nrolled++;
    }
}

void ioloop__log_chunks_free(struct ioloop_log_chunk *c)
{
    while (c != NULL) {
        struct ioloop_log_chunk *next = atomic_load_explicit(&c->next, memory_order_relaxed);

        free(c);
        c = next;
    }
}

static void *writer_main(void *arg)
{
    struct writer w;
    bool timed_out = false, reported = true;

    (void)arg;
    /* A batch thread: waking it never preempts the thread that logs (its turn comes with an
     * idle CPU or the next tick), and its share of the CPU stays that of a normal thread. */
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &(struct sched_param){0});
    writer_init(&w);
    pthread_mutex_lock(&L.mutex);
    for (;;) {
        uint64_t ticket = L.flush_requested;
        bool stopping = L.stop;
        struct ioloop_log_front *list = L.fronts;
        size_t bytes;

        atomic_store(&L.writer_state, IOLOOP__WRITER_BUSY);
        pthread_mutex_unlock(&L.mutex);

        if (stopping)
            wait_in_flight(list);
        bytes = pass(&w, list);
        reported = report_drops(&w, stopping);

        pthread_mutex_lock(&L.mutex);
        retire_locked(&w);
        if (L.flush_done < ticket) {
            L.flush_done = ticket;
            pthread_cond_broadcast(&L.done);
        }
        if (w.retired != NULL) {
            struct ioloop_log_chunk *retired = w.retired;

            w.retired = NULL;
            pthread_mutex_unlock(&L.mutex);
            ioloop__log_chunks_free(retired);
            pthread_mutex_lock(&L.mutex);
        }
        if (stopping)
            break;
        timed_out = pause_locked(bytes, timed_out && bytes == 0 && reported, ticket);
    }
    pthread_mutex_unlock(&L.mutex);
    free(w.from);
    free(w.to);
    return NULL;
}

int ioloop__log_writer_start(void)
{
    /* Lines dropped from now on are the new thread's to report, even those dropped before it
     * gets to run. */
    L.dropped_base = atomic_load_explicit(&L.dropped, memory_order_relaxed);
    return ioloop__thread_start(&L.thread, "ioloop-log", writer_main, NULL);
}

void ioloop__log_front_release(struct ioloop_log_front *front, bool whole)
{
    ioloop__log_chunks_free(atomic_load_explicit(&front->head, memory_order_relaxed));
    ioloop__log_chunks_free(atomic_load_explicit(&front->returned, memory_order_relaxed));
    ioloop__log_chunks_free(front->stash);
    if (whole) {
        free(front);
        return;
    }
    atomic_store_explicit(&front->head, NULL, memory_order_relaxed);
    atomic_store_explicit(&front->returned, NULL, memory_order_relaxed);
    atomic_store_explicit(&front->busy, 0, memory_order_relaxed);
    front->stash = NULL;
    front->cur = NULL;
    front->rd = NULL;
    front->used = 0;
    front->done = 0;
    front->parked = 0;
}
