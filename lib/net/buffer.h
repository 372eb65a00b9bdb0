/*
 * A byte buffer for connections (muduo's Buffer, in C), in one heap block with its header:
 *
 *   +--------+-----------------+------------------+------------------+
 *   | header | consumed bytes  |  readable bytes  |  writable space  |
 *   +--------+-----------------+------------------+------------------+
 *            0     <=        start      <=       end       <=       cap
 *
 * Reading consumes from `start`; appending writes at `end`. When the writable space is short,
 * the readable bytes move back to 0 if that makes room, else the block grows. A connection
 * holds a pointer that is NULL while its buffer is empty, so an idle connection holds no
 * buffer memory at all. The output buffer's header also carries what ioloop_conn_on_flushed()
 * needs: the count of bytes handed to the kernel and the callbacks waiting on it.
 */
#ifndef IOLOOP_LIB_BUFFER_H
#define IOLOOP_LIB_BUFFER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The stack buffer beside the heap buffer for one read (muduo's Buffer::readFd): one call
 * takes up to 64 KiB more than the buffer has room for, and only what arrived is kept. */
#define IOLOOP__READ_EXTRA (64 * 1024)

struct ioloop_flushed;

struct ioloop_buf {
    size_t start;
    size_t end;
    size_t cap;
    uint64_t sent;                  /* output: bytes handed to the kernel so far */
    struct ioloop_flushed *flushed; /* output: on_flushed callbacks, oldest first ... */
    struct ioloop_flushed *flushed_last; /* ... and the newest */
    char data[];
};

static inline size_t ioloop__buf_len(const struct ioloop_buf *b)
{
    return b != NULL ? b->end - b->start : 0;
}

static inline const char *ioloop__buf_peek(const struct ioloop_buf *b)
{
    return b->data + b->start;
}

/* Makes room for n more bytes at the end, allocating the block if *b is NULL.
 * Returns 0 or -ENOMEM (nothing changed). */
int ioloop__buf_reserve(struct ioloop_buf **b, size_t n);
/* Appends n bytes. Returns 0 or -ENOMEM (nothing appended). */
int ioloop__buf_append(struct ioloop_buf **b, const void *data, size_t n);
/* Drops the first n readable bytes (n <= len). */
void ioloop__buf_consume(struct ioloop_buf *b, size_t n);
/*
 * Reads at most `max` bytes from fd with one readv into the free space plus a 64 KiB stack
 * buffer, so one call takes up to free + 64 KiB whatever the block's size, and only what
 * arrived is kept. Returns the bytes read, 0 at EOF, or a negative errno (-EAGAIN when
 * nothing is there, -ENOMEM when the bytes read could not be kept).
 */
ssize_t ioloop__buf_read_fd(struct ioloop_buf **b, int fd, size_t max);
/* Frees the block; *b becomes NULL. */
void ioloop__buf_free(struct ioloop_buf **b);

#endif /* IOLOOP_LIB_BUFFER_H */
