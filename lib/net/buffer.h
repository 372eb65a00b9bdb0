/*
 * A byte buffer for connections (muduo's Buffer, in C):
 *
 *   +-------------------+------------------+------------------+
 *   |  consumed bytes   |  readable bytes  |  writable space  |
 *   +-------------------+------------------+------------------+
 *   0      <=         start      <=       end       <=       cap
 *
 * Reading consumes from `start`; appending writes at `end`. When the writable space is short,
 * the readable bytes move back to 0 if that makes room, else the buffer grows.
 */
#ifndef IOLOOP_LIB_BUFFER_H
#define IOLOOP_LIB_BUFFER_H

#include <stddef.h>
#include <sys/types.h>

/* The stack buffer beside the heap buffer for one read (muduo's Buffer::readFd): one call
 * takes up to 64 KiB more than the buffer has room for, and only what arrived is kept. */
#define IOLOOP__READ_EXTRA (64 * 1024)

struct ioloop_buffer {
    char *data;
    size_t start;
    size_t end;
    size_t cap;
};

static inline size_t ioloop__buffer_len(const struct ioloop_buffer *b)
{
    return b->end - b->start;
}

static inline const char *ioloop__buffer_peek(const struct ioloop_buffer *b)
{
    return b->data + b->start;
}

/* Makes room for n more bytes at the end. Returns 0 or -ENOMEM (nothing changed). */
int ioloop__buffer_reserve(struct ioloop_buffer *b, size_t n);
/* Appends n bytes. Returns 0 or -ENOMEM (nothing appended). */
int ioloop__buffer_append(struct ioloop_buffer *b, const void *data, size_t n);
/* Drops the first n readable bytes (n <= len). */
void ioloop__buffer_consume(struct ioloop_buffer *b, size_t n);
/*
 * Reads from fd with one readv into the free space plus a 64 KiB stack buffer, so one call
 * takes up to free + 64 KiB whatever the buffer's size, and only what arrived is kept.
 * Returns the bytes read, 0 at EOF, or a negative errno (-EAGAIN when nothing is there).
 */
ssize_t ioloop__buffer_read_fd(struct ioloop_buffer *b, int fd);
/* Releases the memory; the buffer is empty and usable again. */
void ioloop__buffer_free(struct ioloop_buffer *b);

#endif /* IOLOOP_LIB_BUFFER_H */
