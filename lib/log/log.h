/*
 * The logger's internals, shared by its three files: log.c (the front end: the public calls,
 * per-thread buffers, open/close/flush, fork and exit), log_writer.c (the logger thread:
 * collecting, writing, rolling, drop notices) and log_format.c (turning a call into the bytes
 * of one line). Nothing here is public. The whole design is described at the top of log.c.
 */
#ifndef IOLOOP_LIB_LOG_H
#define IOLOOP_LIB_LOG_H

#include <pthread.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <ioloop/log.h>

/* Hot fields written by different threads sit on cache lines of their own (x86-64, arm64). */
#define IOLOOP__LOG_CACHE_LINE 64

/* A chunk is 32 KiB: about 350 typical lines between hand-offs, small enough that a handful
 * per thread is all the memory a keeping-up logger needs. */
#define IOLOOP__LOG_CHUNK_BYTES 32768

/*
 * Backlog under pressure: above this (or half of max_backlog_bytes, if less) the logger thread
 * writes pass after pass without pausing and a thread that fills a chunk yields its CPU once;
 * above twice this, every line yields once. On a machine with more busy threads than cores
 * the scheduler then gives the logger thread its turn, so the backlog, and the memory, stay
 * small. A yield is not a wait: with nothing else runnable it returns at once, and the logger
 * thread blocked in write() does not hold anyone up.
 */
#define IOLOOP__LOG_PRESSURE_BYTES (4 * IOLOOP__LOG_CHUNK_BYTES)

/*
 * One chunk of formatted lines. Its thread appends whole lines after `committed` and then
 * publishes them by advancing `committed` (release); when a line does not fit, the thread
 * links a fresh chunk through `next` (release) and never touches this one again. The logger
 * thread reads both with acquire and writes what lies below `committed`. Lines never span two
 * chunks.
 */
struct ioloop_log_chunk {
    struct ioloop_log_chunk *_Atomic next;
    _Atomic uint32_t committed;
    alignas(IOLOOP__LOG_CACHE_LINE) char data[IOLOOP__LOG_CHUNK_BYTES - IOLOOP__LOG_CACHE_LINE];
};

#define IOLOOP__LOG_CHUNK_DATA (sizeof(((struct ioloop_log_chunk *)0)->data))

/*
 * A thread's front: the single-producer, single-consumer queue of chunks between one logging
 * thread and the logger thread. Created at the thread's first line while the logger is open,
 * kept for the thread's life (across close and reopen), and freed after the thread exited and
 * the logger thread wrote what it held.
 */
struct ioloop_log_front {
    /* The owning thread's side (the closer's too, once no line is in flight). */
    struct ioloop_log_chunk *cur;  /* the chunk being filled; NULL until the session's first line */
    uint32_t used;                 /* bytes of cur holding lines (cur->committed, privately) */
    _Atomic int busy;              /* 1 while a line is being handed off (see log.c) */
    struct ioloop_log_chunk *stash; /* written chunks taken back from `returned`, for reuse */

    /* The logger thread's side. `head` is also stored by the owner, once per session, when it
     * creates the session's first chunk while head is NULL. */
    alignas(IOLOOP__LOG_CACHE_LINE) struct ioloop_log_chunk *_Atomic head; /* oldest not freed */
    struct ioloop_log_chunk *rd;   /* the chunk being read; chunks before it are written */
    uint32_t done;                 /* bytes of rd already taken for writing */
    /* Written chunks handed back to the owner: the logger thread pushes (compare-and-swap),
     * the owner takes the whole list at once (exchange), so there is no ABA problem. */
    struct ioloop_log_chunk *_Atomic returned;
    unsigned parked;               /* chunks pushed since the owner last emptied `returned` */

    /* Under the logger's mutex. */
    bool exited;                   /* the thread ended: free once drained */
    struct ioloop_log_front *next; /* the list of fronts; new ones go at its head */
};

/* The logger's life cycle (ioloop__log.state). */
enum ioloop_log_state {
    IOLOOP__LOG_CLOSED,  /* no logger thread: lines go synchronously to standard error */
    IOLOOP__LOG_OPEN,    /* lines go through the fronts to the logger thread */
    IOLOOP__LOG_CLOSING, /* ioloop_log_close() runs: new lines wait for it to finish */
    IOLOOP__LOG_FORKED,  /* in a fork child: open, but its thread starts with the first line */
};

/* What the logger thread is doing (ioloop__log.writer_state); tells producers whether a line
 * or a full chunk must wake it. */
enum ioloop_log_writer_state {
    IOLOOP__WRITER_BUSY, /* writing, or about to look again: no wake needed */
    IOLOOP__WRITER_POLL, /* lines were flowing: it looks again after a short sleep by itself */
    IOLOOP__WRITER_NAP,  /* waiting up to flush_ms: wake it when a chunk fills */
    IOLOOP__WRITER_IDLE, /* nothing came for a whole flush interval: wake it for any line */
};

/* The logger: one per process. */
struct ioloop_logger {
    /* Read by every call: written only by open, set_level and state changes. */
    alignas(IOLOOP__LOG_CACHE_LINE) _Atomic int level;
    _Atomic int state;              /* enum ioloop_log_state; changed under the mutex */
    size_t max_backlog;             /* set while closed, read after seeing OPEN */
    size_t pressure;                /* likewise: see IOLOOP__LOG_PRESSURE_BYTES */

    /* Bytes of accepted lines not written yet: producers add, the logger thread subtracts. */
    alignas(IOLOOP__LOG_CACHE_LINE) _Atomic size_t backlog;
    /* Lines refused since the process started. */
    alignas(IOLOOP__LOG_CACHE_LINE) _Atomic uint64_t dropped;
    /* enum ioloop_log_writer_state; set to NAP/IDLE only under the mutex. */
    alignas(IOLOOP__LOG_CACHE_LINE) _Atomic int writer_state;

    /* Under the mutex. Never held during I/O. */
    alignas(IOLOOP__LOG_CACHE_LINE) pthread_mutex_t mutex;
    pthread_cond_t wake;             /* the logger thread waits here (CLOCK_MONOTONIC) */
    pthread_cond_t done;             /* flush, close and lines during a close wait here */
    struct ioloop_log_front *fronts;
    struct ioloop_log_chunk *spare;  /* written chunks for threads with none of their own */
    unsigned nspare;
    uint64_t flush_requested;        /* tickets handed out by ioloop_log_flush() */
    uint64_t flush_done;             /* every line committed before this ticket is written */
    bool stop;                       /* close asked the logger thread to finish */
    pthread_t thread;

    /* The output, set while no logger thread runs and read by the logger thread. */
    int fd;
    char *path;                      /* NULL: standard error */
    size_t roll_bytes;               /* 0: never roll */
    unsigned flush_ms;
    uint64_t dropped_base;           /* drops before the logger thread started: not its to report */
};

extern struct ioloop_logger ioloop__log;

/* ---- log_writer.c ----------------------------------------------------------------------- */

/* Starts the logger thread with every signal blocked. Returns 0 or a negative errno. Called
 * under the mutex with state about to become OPEN. */
int ioloop__log_writer_start(void);

/* Writes every iovec to fd, retrying after EINTR, partial writes and EAGAIN (it waits with
 * poll). Returns 0 or the negative errno of the failing write. */
int ioloop__log_write_all(int fd, struct iovec *iov, int n);

/* Frees a list of chunks linked through next. */
void ioloop__log_chunks_free(struct ioloop_log_chunk *c);

/* Frees a front's chunks (all its lists) and, if `whole`, the front; otherwise leaves it
 * empty for its thread's next session. Under the mutex, with nobody else using the front. */
void ioloop__log_front_release(struct ioloop_log_front *front, bool whole);

/* ---- log_format.c ----------------------------------------------------------------------- */

/*
 * Formats one whole line (prefix, message, newline) at dst, which has `room` bytes.
 * Returns its length, at most min(room, IOLOOP_LOG_LINE_MAX); a longer line is cut and ends
 * with IOLOOP_LOG_TRUNCATED. Returns 0 when room < IOLOOP_LOG_LINE_MAX and the line does not
 * fit: the caller then calls again, with a copy of `ap`, at a place with more room.
 * Uses and updates the calling thread's cache of the formatted second and thread id.
 */
size_t ioloop__log_format(char *dst, size_t room, ioloop_log_level_t level, const char *file,
                          int line, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));

/*
 * printf-compatible formatting of fmt and ap into dst: stores at most `cap` bytes (no NUL;
 * the byte after them, dst[cap], may be overwritten, so dst must have cap + 1 bytes) and
 * returns the length the whole output has (as vsnprintf does), or 0 on an encoding error.
 */
size_t ioloop__log_vformat(char *dst, size_t cap, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#endif /* IOLOOP_LIB_LOG_H */
