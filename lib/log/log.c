/*
 * The logger's front end: the public calls, each thread's front (its queue of chunks), and
 * the life cycle (open, flush, close, thread exit, fork, process exit). The logger thread is
 * in log_writer.c, line formatting in log_format.c.
 *
 *   thread A ─ format into its own chunk ─┐ commit (release store: no lock, no syscall)
 *              [chunk]─next─▶[chunk]      │
 *   thread B ─ [chunk]                    ├──▶ logger thread: every pass, for each front,
 *   thread C ─ [chunk]─next─▶[chunk]      │    writev() what lies below `committed`, roll,
 *                                         ┘    recycle written chunks, answer flushes
 *
 * Hand-off. A thread formats its line straight into the chunk it owns, beyond `committed`,
 * reserves the line's bytes in the global backlog counter (one compare-and-swap, refused
 * beyond max_backlog_bytes: the line is dropped and counted), and publishes it by storing the
 * new `committed` with release. A line that does not fit goes to a fresh chunk, taken from the
 * spare list under the mutex and linked behind the full one; that is the only lock a thread
 * takes in the steady state, once per ~700 lines. The logger thread never holds the mutex
 * while writing. Chunks are single-producer, single-consumer, so each thread's lines keep
 * their order, and lines from different threads interleave only at line boundaries.
 *
 * Waking the logger thread. It never needs a wake per line: it sleeps a short fixed time
 * while lines flow (POLL), waits up to flush_ms when they trickle (NAP: a thread wakes it when
 * a chunk fills or the backlog passes the pressure mark), and after a whole quiet interval
 * waits without a timeout (IDLE: the first line wakes it). It runs as SCHED_BATCH, so its
 * wake-ups never preempt a thread that logs.
 *
 * Overload. Producers are never blocked; beyond max_backlog_bytes lines are dropped. Well
 * before that, above IOLOOP__LOG_PRESSURE_BYTES (128 KiB), the logger thread stops pausing
 * between passes and producers yield their CPU once per chunk, and above twice that once per
 * line, so that with more busy threads than cores the logger thread still gets its turn. The IDLE hand-shake is Dekker's: the
 * producer's reservation (a seq_cst read-modify-write of `backlog`) precedes its seq_cst load
 * of `writer_state`, and the logger thread's seq_cst store of IDLE precedes its seq_cst load of
 * `backlog`, so either the producer sees IDLE and wakes it or the logger thread sees the
 * reservation and waits only flush_ms.
 *
 * Closing. Each front has a `busy` flag that its thread sets (seq_cst) before it checks that
 * the logger is OPEN and clears after committing. ioloop_log_close() moves the state to
 * CLOSING; the logger thread then waits until no front is busy (Dekker again: every line either
 * saw CLOSING, and waits for the close to end and then goes to standard error, or is committed
 * before the final pass), writes everything, and exits. A front and its memory are only ever
 * freed when its thread cannot be using them: at the thread's exit (after the logger thread
 * drained it), at close (no line in flight), or in a fork child (no other thread exists).
 */
#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_FLUSH_MS 1000
#define DEFAULT_BACKLOG_BYTES ((size_t)64 << 20)

_Static_assert(sizeof(struct ioloop_log_chunk) == IOLOOP__LOG_CHUNK_BYTES,
               "a chunk is exactly one allocation of IOLOOP__LOG_CHUNK_BYTES");
_Static_assert(IOLOOP__LOG_CHUNK_DATA >= 3 * IOLOOP_LOG_LINE_MAX,
               "a chunk holds several of the longest lines");

struct ioloop_logger ioloop__log = {
    .level = IOLOOP_LOG_INFO,
    .state = IOLOOP__LOG_CLOSED,
    .writer_state = IOLOOP__WRITER_BUSY,
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER, /* both made CLOCK_MONOTONIC by the first open */
    .done = PTHREAD_COND_INITIALIZER,
    .fd = -1,
};

#define L ioloop__log

/* This thread's front; NULL until its first line while the logger is open. */
static _Thread_local struct ioloop_log_front *my_front;

/* Set up by the first ioloop_log_open(): the key whose destructor sees threads exit, the
 * fork handlers and the exit handler. */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t front_key;
static int once_error;

/* ---- Chunks and fronts ------------------------------------------------------------------ */

/* Wakes the logger thread if it waits for a reason to look. The state changes under the
 * mutex, so the signal may follow the unlock: the thread, woken, does not then wait for us. */
static void wake_writer(void)
{
    int ws;

    pthread_mutex_lock(&L.mutex);
    ws = atomic_load_explicit(&L.writer_state, memory_order_relaxed);
    if (ws == IOLOOP__WRITER_NAP || ws == IOLOOP__WRITER_IDLE)
        atomic_store(&L.writer_state, IOLOOP__WRITER_BUSY);
    pthread_mutex_unlock(&L.mutex);
    if (ws == IOLOOP__WRITER_NAP || ws == IOLOOP__WRITER_IDLE)
        pthread_cond_signal(&L.wake);
}

/*
 * Gives the front a fresh chunk, linked behind the current one (or, for the session's first
 * line, published as the head), and returns it; NULL if memory ran out. The chunk is one this
 * thread filled before and the logger thread handed back (no lock), else a spare one (under
 * the mutex), else a new one. A full chunk wakes a napping logger thread. Under pressure
 * (see IOLOOP__LOG_PRESSURE_BYTES) the thread yields its CPU once.
 */
static struct ioloop_log_chunk *next_chunk(struct ioloop_log_front *f)
{
    struct ioloop_log_chunk *c = f->stash;
    int ws;

    if (c == NULL)
        c = atomic_exchange_explicit(&f->returned, NULL, memory_order_acquire);
    if (c != NULL) {
        f->stash = atomic_load_explicit(&c->next, memory_order_relaxed);
    } else {
        pthread_mutex_lock(&L.mutex);
        c = L.spare;
        if (c != NULL) {
            L.spare = atomic_load_explicit(&c->next, memory_order_relaxed);
            L.nspare--;
        }
        pthread_mutex_unlock(&L.mutex);
        if (c == NULL && (c = aligned_alloc(IOLOOP__LOG_CACHE_LINE, sizeof *c)) == NULL)
            return NULL;
    }
    if (f->cur != NULL) {
        ws = atomic_load_explicit(&L.writer_state, memory_order_relaxed);
        if (ws == IOLOOP__WRITER_NAP || ws == IOLOOP__WRITER_IDLE)
            wake_writer();
        if (atomic_load_explicit(&L.backlog, memory_order_relaxed) > L.pressure)
            sched_yield(); /* see IOLOOP__LOG_PRESSURE_BYTES */
    }
    atomic_store_explicit(&c->next, NULL, memory_order_relaxed);
    atomic_store_explicit(&c->committed, 0, memory_order_relaxed);
    if (f->cur != NULL)
        atomic_store_explicit(&f->cur->next, c, memory_order_release);
    else
        atomic_store_explicit(&f->head, c, memory_order_release);
    f->cur = c;
    f->used = 0;
    return c;
}

/*
 * Formats the line into this thread's chunk and hands it off (see the top of the file).
 * The thread's `busy` flag is set and the logger is OPEN. Consumes `ap`.
 */
static void hand_off(struct ioloop_log_front *f, ioloop_log_level_t level, const char *file,
                     int line, int err, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));
static void hand_off(struct ioloop_log_front *f, ioloop_log_level_t level, const char *file,
                     int line, int err, const char *fmt, va_list ap)
{
    struct ioloop_log_chunk *c = f->cur;
    size_t n = 0, prev, max = L.max_backlog;
    va_list again;
    int ws;

    va_copy(again, ap);
    if (c != NULL) {
        errno = err; /* for %m */
        n = ioloop__log_format(c->data + f->used, IOLOOP__LOG_CHUNK_DATA - f->used, level, file,
                               line, fmt, ap);
    }
    if (n == 0 && (c = next_chunk(f)) != NULL) {
        errno = err;
        n = ioloop__log_format(c->data, IOLOOP__LOG_CHUNK_DATA, level, file, line, fmt, again);
    }
    va_end(again);
    if (n == 0) { /* no memory for a chunk */
        atomic_fetch_add_explicit(&L.dropped, 1, memory_order_relaxed);
        return;
    }

    /* Reserve the bytes; the backlog never exceeds max, so max - prev cannot wrap. */
    prev = atomic_load_explicit(&L.backlog, memory_order_relaxed);
    do {
        if (n > max - prev) {
            atomic_fetch_add_explicit(&L.dropped, 1, memory_order_relaxed);
            return;
        }
    } while (!atomic_compare_exchange_weak_explicit(&L.backlog, &prev, prev + n,
                                                    memory_order_seq_cst, memory_order_relaxed));
    f->used += (uint32_t)n;
    atomic_store_explicit(&c->committed, f->used, memory_order_release);

    if (prev + n > 2 * L.pressure)
        sched_yield(); /* overload: see IOLOOP__LOG_PRESSURE_BYTES */
    ws = atomic_load(&L.writer_state);
    if (ws == IOLOOP__WRITER_IDLE ||
        (ws == IOLOOP__WRITER_NAP && prev < L.pressure && prev + n >= L.pressure))
        wake_writer();
}

/* The key's destructor: the thread that owned `arg` is exiting. */
static void front_thread_exit(void *arg)
{
    struct ioloop_log_front *f = arg, **link;
    int st;

    pthread_mutex_lock(&L.mutex);
    if (my_front == f)
        my_front = NULL;
    st = atomic_load_explicit(&L.state, memory_order_relaxed);
    if (st == IOLOOP__LOG_OPEN || st == IOLOOP__LOG_CLOSING) {
        f->exited = true; /* the logger thread (or the close) frees it once drained */
    } else {
        /* No logger thread: nothing of this front is unwritten. */
        for (link = &L.fronts; *link != f; link = &(*link)->next)
            ;
        *link = f->next;
        ioloop__log_front_release(f, true);
    }
    pthread_mutex_unlock(&L.mutex);
}

/* In a fork child, under the mutex: the child's writer did not start, so close. */
static void forget_output_locked(void)
{
    if (L.path != NULL)
        close(L.fd);
    free(L.path);
    L.path = NULL;
    L.fd = -1;
    atomic_store(&L.state, IOLOOP__LOG_CLOSED);
    pthread_cond_broadcast(&L.done);
}

/*
 * Called when the lock-free path cannot take a line. Makes it possible if it can: registers
 * the thread's front, starts a fork child's logger thread, or waits out a close in progress.
 * Returns true if the caller should try the lock-free path again, false if the line should be
 * written synchronously to standard error.
 */
static bool settle(void)
{
    struct ioloop_log_front *fresh = NULL;
    bool again = false;
    int st;

    if (atomic_load_explicit(&L.state, memory_order_acquire) == IOLOOP__LOG_CLOSED)
        return false;
    if (my_front == NULL && (fresh = aligned_alloc(IOLOOP__LOG_CACHE_LINE, sizeof *fresh)) != NULL)
        memset(fresh, 0, sizeof *fresh);

    pthread_mutex_lock(&L.mutex);
    for (;;) {
        st = atomic_load_explicit(&L.state, memory_order_relaxed);
        if (st == IOLOOP__LOG_CLOSING) {
            /* Lines written during a close wait for it, so that this thread's earlier lines
             * are out before a later one goes to standard error. */
            pthread_cond_wait(&L.done, &L.mutex);
            continue;
        }
        if (st == IOLOOP__LOG_FORKED) {
            if (ioloop__log_writer_start() == 0)
                atomic_store(&L.state, IOLOOP__LOG_OPEN);
            else
                forget_output_locked();
            continue;
        }
        if (st == IOLOOP__LOG_OPEN) {
            if (my_front == NULL && fresh != NULL) {
                fresh->next = L.fronts;
                L.fronts = fresh;
                my_front = fresh;
                fresh = NULL;
                /* On failure (ENOMEM) the destructor will not run and the front stays in the
                 * list after the thread exits: a small leak, no lost line. */
                (void)pthread_setspecific(front_key, my_front);
            }
            again = my_front != NULL;
        }
        break;
    }
    pthread_mutex_unlock(&L.mutex);
    free(fresh);
    return again;
}

/* Writes a line synchronously to standard error (before open, after close). */
static void write_sync(ioloop_log_level_t level, const char *file, int line, int err,
                       const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));
static void write_sync(ioloop_log_level_t level, const char *file, int line, int err,
                       const char *fmt, va_list ap)
{
    char buf[IOLOOP_LOG_LINE_MAX];
    struct iovec iov = {buf, 0};

    errno = err;
    iov.iov_len = ioloop__log_format(buf, sizeof buf, level, file, line, fmt, ap);
    /* A failing standard error has nowhere to report to. */
    (void)ioloop__log_write_all(STDERR_FILENO, &iov, 1);
}

void ioloop_log_write(ioloop_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    struct ioloop_log_front *f;
    va_list ap;
    int err;

    if ((int)level < atomic_load_explicit(&L.level, memory_order_relaxed))
        return;
    err = errno;
    va_start(ap, fmt);
    for (;;) {
        f = my_front;
        if (f != NULL) {
            atomic_store(&f->busy, 1); /* seq_cst: before the state load (see the top) */
            if (atomic_load(&L.state) == IOLOOP__LOG_OPEN) {
                hand_off(f, level, file, line, err, fmt, ap);
                atomic_store_explicit(&f->busy, 0, memory_order_release);
                break;
            }
            atomic_store_explicit(&f->busy, 0, memory_order_release);
        }
        if (!settle()) {
            write_sync(level, file, line, err, fmt, ap);
            break;
        }
    }
    va_end(ap);
    errno = err;
}

/* ---- Life cycle ------------------------------------------------------------------------- */

static void init_conds(void)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&L.wake, &attr);
    pthread_cond_init(&L.done, &attr);
    pthread_condattr_destroy(&attr);
}

/* Frees every front's chunks (or the whole front if its thread exited) and the spare chunks,
 * ending a session. Under the mutex, with no logger thread and no line in flight, or in a
 * fork child where only `keep` (the forking thread's front) has a thread. */
static void release_fronts_locked(const struct ioloop_log_front *keep, bool all_but_keep)
{
    struct ioloop_log_front **link = &L.fronts, *f;

    while ((f = *link) != NULL) {
        if (f->exited || (all_but_keep && f != keep)) {
            *link = f->next;
            ioloop__log_front_release(f, true);
            continue;
        }
        ioloop__log_front_release(f, false);
        link = &f->next;
    }
    ioloop__log_chunks_free(L.spare);
    L.spare = NULL;
    L.nspare = 0;
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&L.mutex);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&L.mutex);
}

/* In the child: one thread, the forking one. Lines the parent accepted are the parent's to
 * write, so every chunk goes; the other threads' fronts go with their threads. */
static void fork_child(void)
{
    int st = atomic_load_explicit(&L.state, memory_order_relaxed);

    init_conds();
    release_fronts_locked(my_front, true);
    atomic_store(&L.backlog, 0);
    atomic_store(&L.writer_state, IOLOOP__WRITER_BUSY);
    L.stop = false;
    L.flush_done = L.flush_requested;
    if (st == IOLOOP__LOG_OPEN) {
        L.roll_bytes = 0; /* rolling stays with the parent */
        atomic_store(&L.state, IOLOOP__LOG_FORKED);
    } else if (st == IOLOOP__LOG_CLOSING) {
        forget_output_locked(); /* the parent finishes its close; the child just lets go */
    }
    pthread_mutex_unlock(&L.mutex);
}

static void close_at_exit(void)
{
    ioloop_log_close();
}

static void init_once(void)
{
    int err = pthread_key_create(&front_key, front_thread_exit);

    if (err == 0)
        err = pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (err == 0 && atexit(close_at_exit) != 0)
        err = ENOMEM;
    if (err == 0)
        init_conds();
    once_error = -err;
}

int ioloop_log_open(const ioloop_log_options_t *options)
{
    ioloop_log_options_t o = {0};
    char *path = NULL;
    int fd = STDERR_FILENO, err = 0;

    if (options != NULL)
        o = *options;
    if (o.level == 0)
        o.level = IOLOOP_LOG_INFO;
    else if (o.level < IOLOOP_LOG_DEBUG || o.level > IOLOOP_LOG_ERROR)
        return -EINVAL;
    pthread_once(&once, init_once);
    if (once_error != 0)
        return once_error;

    pthread_mutex_lock(&L.mutex);
    while (atomic_load_explicit(&L.state, memory_order_relaxed) == IOLOOP__LOG_CLOSING)
        pthread_cond_wait(&L.done, &L.mutex);
    if (atomic_load_explicit(&L.state, memory_order_relaxed) != IOLOOP__LOG_CLOSED) {
        err = -EALREADY;
        goto out;
    }
    if (o.path != NULL) {
        if ((path = strdup(o.path)) == NULL) {
            err = -ENOMEM;
            goto out;
        }
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            err = -errno;
            free(path);
            goto out;
        }
    }
    L.fd = fd;
    L.path = path;
    L.roll_bytes = path != NULL ? o.roll_bytes : 0;
    L.flush_ms = o.flush_ms != 0 ? o.flush_ms : DEFAULT_FLUSH_MS;
    L.max_backlog = o.max_backlog_bytes != 0 ? o.max_backlog_bytes : DEFAULT_BACKLOG_BYTES;
    L.pressure = L.max_backlog / 2 < IOLOOP__LOG_PRESSURE_BYTES ? L.max_backlog / 2
                                                                : IOLOOP__LOG_PRESSURE_BYTES;
    L.stop = false;
    L.flush_done = L.flush_requested;
    atomic_store(&L.backlog, 0);
    atomic_store(&L.writer_state, IOLOOP__WRITER_BUSY);
    err = ioloop__log_writer_start();
    if (err != 0) {
        if (path != NULL)
            close(fd);
        free(path);
        L.path = NULL;
        L.fd = -1;
        goto out;
    }
    atomic_store_explicit(&L.level, (int)o.level, memory_order_relaxed);
    atomic_store(&L.state, IOLOOP__LOG_OPEN);
out:
    pthread_mutex_unlock(&L.mutex);
    return err;
}

void ioloop_log_flush(void)
{
    pthread_mutex_lock(&L.mutex);
    /* A close in progress writes everything: waiting for it is a flush. */
    while (atomic_load_explicit(&L.state, memory_order_relaxed) == IOLOOP__LOG_CLOSING)
        pthread_cond_wait(&L.done, &L.mutex);
    if (atomic_load_explicit(&L.state, memory_order_relaxed) == IOLOOP__LOG_OPEN) {
        uint64_t ticket = ++L.flush_requested;

        atomic_store(&L.writer_state, IOLOOP__WRITER_BUSY);
        pthread_cond_signal(&L.wake);
        while (L.flush_done < ticket)
            pthread_cond_wait(&L.done, &L.mutex);
    }
    pthread_mutex_unlock(&L.mutex);
}

void ioloop_log_close(void)
{
    int fd = -1, st;
    char *path;

    pthread_mutex_lock(&L.mutex);
    while ((st = atomic_load_explicit(&L.state, memory_order_relaxed)) == IOLOOP__LOG_CLOSING)
        pthread_cond_wait(&L.done, &L.mutex);
    if (st == IOLOOP__LOG_CLOSED) {
        pthread_mutex_unlock(&L.mutex);
        return;
    }
    if (st == IOLOOP__LOG_OPEN) {
        atomic_store(&L.state, IOLOOP__LOG_CLOSING);
        L.stop = true;
        atomic_store(&L.writer_state, IOLOOP__WRITER_BUSY);
        pthread_cond_signal(&L.wake);
        pthread_mutex_unlock(&L.mutex);
        pthread_join(L.thread, NULL); /* it drains every front before it returns */
        pthread_mutex_lock(&L.mutex);
    }
    release_fronts_locked(NULL, false);
    path = L.path;
    if (path != NULL)
        fd = L.fd;
    L.path = NULL;
    L.fd = -1;
    atomic_store(&L.state, IOLOOP__LOG_CLOSED);
    pthread_cond_broadcast(&L.done);
    pthread_mutex_unlock(&L.mutex);
    if (fd >= 0)
        close(fd);
    free(path);
}

void ioloop_log_set_level(ioloop_log_level_t level)
{
    if (level >= IOLOOP_LOG_DEBUG && level <= IOLOOP_LOG_ERROR)
        atomic_store_explicit(&L.level, (int)level, memory_order_relaxed);
}

uint64_t ioloop_log_dropped(void)
{
    return atomic_load_explicit(&L.dropped, memory_order_relaxed);
}
