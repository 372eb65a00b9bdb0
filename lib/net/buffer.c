/*
 * Connection buffers; see buffer.h for the layout.
 */
#include "net/buffer.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

/* A new buffer's first allocation; large enough for a typical request, small enough that an
 * idle connection with an emptied buffer costs little. */
#define BUFFER_MIN 2048


int ioloop__buffer_reserve(struct ioloop_buffer *b, size_t n)
{
    size_t len = ioloop__buffer_len(b);
    size_t cap;
    char *data;

    if (b->cap - b->end >= n)
        return 0;
    if (b->start > 0) { /* reclaim the consumed bytes first */
        memmove(b->data, b->data + b->start, len);
        b->start = 0;
        b->end = len;
        if (b->cap - len >= n)
            return 0;
    }
    if (n > SIZE_MAX / 2 - len)
        return -ENOMEM;
    for (cap = b->cap ? b->cap : BUFFER_MIN; cap < len + n; cap *= 2)
        ;
    data = realloc(b->data, cap);
    if (data == NULL)
        return -ENOMEM;
    b->data = data;
    b->cap = cap;
    return 0;
}

int ioloop__buffer_append(struct ioloop_buffer *b, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    if (ioloop__buffer_reserve(b, n) < 0)
        return -ENOMEM;
    memcpy(b->data + b->end, data, n);
    b->end += n;
    return 0;
}

void ioloop__buffer_consume(struct ioloop_buffer *b, size_t n)
{
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

ssize_t ioloop__buffer_read_fd(struct ioloop_buffer *b, int fd)
{
    char extra[IOLOOP__READ_EXTRA];
    struct iovec iov[2];
    size_t space = b->cap - b->end;
    ssize_t n;

    iov[0].iov_base = b->data + b->end;
    iov[0].iov_len = space;
    iov[1].iov_base = extra;
    iov[1].iov_len = sizeof extra;
    n = space > 0 ? readv(fd, iov, 2) : readv(fd, iov + 1, 1);
    if (n < 0)
        return -errno;
    if ((size_t)n <= space) {
        b->end += (size_t)n;
        return n;
    }
    b->end = b->cap;
    if (ioloop__buffer_append(b, extra, (size_t)n - space) < 0)
        return -ENOMEM;
    return n;
}

void ioloop__buffer_free(struct ioloop_buffer *b)
{
    free(b->data);
    b->data = NULL;
    b->start = b->end = b->cap = 0;
}
