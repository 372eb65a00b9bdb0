/*
 * The asynchronous logger: the one process-wide object of the library. Any thread formats its
 * line in its own memory and hands it to one logger thread, which writes whole buffers to the
 * log file (or standard error), rolls files, and never makes a caller wait for disk I/O.
 *
 * A line reads, in UTC, with microseconds, the level padded to five characters, the kernel
 * thread id (gettid) of the thread that logged it, and the base name of the source file:
 *
 *     2026-11-22T10:00:00.123456Z INFO  12345 file.c:42 message
 *
 * Conventions (they hold for every function here):
 * - Every function may be called from any thread at any time ([any thread]).
 * - Lines from one thread appear in the order that thread wrote them. A line is "accepted"
 *   when ioloop_log_write() returns without dropping it; every accepted line is written by
 *   ioloop_log_flush() (for lines accepted before it), ioloop_log_close() and normal process
 *   exit (an atexit handler closes the logger). A process that ends by _exit(), a signal or
 *   abort() loses what was not written yet.
 * - Before ioloop_log_open() and after ioloop_log_close(), lines are written synchronously to
 *   standard error, in the same format, before ioloop_log_write() returns.
 * - Overload: the memory of accepted-but-unwritten lines is bounded by max_backlog_bytes.
 *   A line that would exceed it is dropped and counted (ioloop_log_dropped()); once the logger
 *   thread has made room again it writes one line saying how many lines were dropped (at most
 *   one such line per flush interval). The caller is never blocked. When more than 128 KiB
 *   (or half of max_backlog_bytes, if less) waits to be written, a thread that fills its
 *   32 KiB buffer gives up its CPU once (sched_yield), and above twice that every line does,
 *   so that on a machine with more busy threads than cores the logger thread catches up.
 * - fork(): the child keeps logging to the same open file through a fresh logger thread of its
 *   own, started by the child's first line (or flush or close). Lines the parent had accepted
 *   but not yet written are the parent's: the child never writes them. The child does not
 *   roll files (rolling stays with the parent; the child appends to the file that was open at
 *   the fork). If the child cannot start its thread, its lines go synchronously to standard
 *   error. No lock of the logger is held across fork().
 * - Lines longer than IOLOOP_LOG_LINE_MAX bytes (newline included) are cut to that length and
 *   end with IOLOOP_LOG_TRUNCATED and a newline: one line, never split, never lost.
 * - The message is formatted like printf. Common conversions (d i u x X o c s p f F % with
 *   flags, width, precision and length modifiers) take a fast path that produces exactly what
 *   glibc's printf produces under the default rounding mode; anything else goes to vsnprintf.
 */
#ifndef IOLOOP_LOG_H
#define IOLOOP_LOG_H

#include <stddef.h>
#include <stdint.h>

#include <ioloop/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Severity of a line; a line is written if its level is at least the logger's level. */
typedef enum {
    IOLOOP_LOG_DEBUG = 1,
    IOLOOP_LOG_INFO,
    IOLOOP_LOG_WARN,
    IOLOOP_LOG_ERROR,
} ioloop_log_level_t;

/** The longest line written, newline included; longer lines are truncated to it. */
#define IOLOOP_LOG_LINE_MAX 8192

/** What a truncated line ends with (before its newline). */
#define IOLOOP_LOG_TRUNCATED "...[truncated]"

/** Options of ioloop_log_open(). A field left zero takes its default. */
typedef struct ioloop_log_options {
    const char *path;             /**< log file; NULL: standard error */
    ioloop_log_level_t level;     /**< lowest level written; default IOLOOP_LOG_INFO */
    size_t roll_bytes;            /**< 0: never roll. Else when `path` reaches roll_bytes it
                                       becomes path.1 (path.1 becomes path.2, and so on: every
                                       rolled file is kept) and a new `path` is started; no
                                       file exceeds roll_bytes by more than one line. Ignored
                                       for standard error. */
    unsigned flush_ms;            /**< longest time an accepted line waits before the logger
                                       thread writes it (plus the time to write); default 1000 */
    size_t max_backlog_bytes;     /**< bound on the bytes of accepted, unwritten lines; default
                                       64 MiB. Memory used is this plus, per thread that logs,
                                       its 32 KiB buffer and up to two written ones kept for
                                       reuse, and eight spare buffers in all. */
} ioloop_log_options_t;

/**
 * Opens the logger: opens `options->path` (O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode
 * 0644; created if missing) or uses standard error, sets the level, and starts the logger
 * thread (all signals blocked in it). NULL options mean all defaults. The options are copied;
 * the path string need not outlive the call.
 * Returns 0, or -EINVAL (a level outside DEBUG..ERROR), -EALREADY (already open), the
 * negative errno of open() for a bad path (-ENOENT, -EACCES, ...), -ENOMEM, or -EAGAIN (the
 * thread could not be created). On error nothing changed: lines still go where they went.
 * [any thread]; if a close is in progress in another thread, waits for it to finish first.
 */
IOLOOP_EXPORT int ioloop_log_open(const ioloop_log_options_t *options);

/**
 * Returns once every line accepted before the call (by any thread) is written to the file
 * (handed to the kernel with write(); no fsync). Returns at once when the logger is not open.
 * [any thread]; it waits for the logger thread, so it costs a wake-up and the write.
 */
IOLOOP_EXPORT void ioloop_log_flush(void);

/**
 * Writes every accepted line, stops and joins the logger thread, and closes the file.
 * Lines logged afterwards go synchronously to standard error. Does nothing if the logger is
 * not open; a second concurrent close waits for the first. Registered with atexit() by the
 * first successful open, so a normal exit writes everything too.
 * [any thread].
 */
IOLOOP_EXPORT void ioloop_log_close(void);

/**
 * Sets the lowest level written, from now on, by every thread. A level outside DEBUG..ERROR
 * is ignored. ioloop_log_open() also sets the level (from its options).
 * [any thread].
 */
IOLOOP_EXPORT void ioloop_log_set_level(ioloop_log_level_t level);

/**
 * Returns how many lines were refused, since the process started, because accepting them
 * would have put more than max_backlog_bytes of unwritten lines in memory (or a buffer could
 * not be allocated). [any thread]; the count is exact.
 */
IOLOOP_EXPORT uint64_t ioloop_log_dropped(void);

/**
 * Logs one line: `fmt` and its arguments formatted like printf, after the timestamp, level,
 * thread id and `file` (only its base name is printed) and `line`. A level below the current
 * one costs one relaxed atomic load and returns. Levels above IOLOOP_LOG_ERROR are written
 * as ERROR. `file` and `fmt` are only read during the call (nothing is kept).
 * While the logger is open, the line is formatted into the calling thread's own buffer and
 * handed to the logger thread without a system call in the steady state; the call never waits
 * for I/O. Otherwise it is written synchronously to standard error.
 * [any thread]. Not async-signal-safe.
 */
IOLOOP_EXPORT void ioloop_log_write(ioloop_log_level_t level, const char *file, int line,
                                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/** Logs a line at DEBUG with the caller's file and line: IOLOOP_LOG_DEBUG("x=%d", x). */
#define IOLOOP_LOG_DEBUG(...) ioloop_log_write(IOLOOP_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
/** Logs a line at INFO with the caller's file and line. */
#define IOLOOP_LOG_INFO(...)  ioloop_log_write(IOLOOP_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
/** Logs a line at WARN with the caller's file and line. */
#define IOLOOP_LOG_WARN(...)  ioloop_log_write(IOLOOP_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
/** Logs a line at ERROR with the caller's file and line. */
#define IOLOOP_LOG_ERROR(...) ioloop_log_write(IOLOOP_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_LOG_H */
