/*
 * Connection buffers; see buffer.h for the layout.
 */
#include "net/buffer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

/* A new block's first capacity: a typical request or reply fits, and header plus data stay
 * within 1 KiB, which glibc serves from its per-thread cache without taking a lock. */
#define BUFFER_MIN (1024 - sizeof(struct ioloop_buf) - 16)

int ioloop__buf_reserve(struct ioloop_buf **bp, size_t n)
{
    struct ioloop_buf *b = *bp;
    size_t len = ioloop__buf_len(b), cap;

    if (b != NULL) {
        if (b->cap - b->end >= n)
            return 0;
        if (b->start > 0) { /* reclaim the consumed bytes first */
            memmove(b->data, b->data + b->start, len);
            b->start = 0;
            b->end = len;
            if (b->cap - len >= n)
                return 0;
        }
    }
    if (n > SIZE_MAX / 4 - len)
        return -ENOMEM;
    cap = b != NULL ? b->cap : BUFFER_MIN;
    while (cap < len + n)
        cap *= 2;
    b = realloc(b, sizeof *b + cap);
    if (b == NULL)
        return -ENOMEM;
    if (*bp == NULL)
        *b = (struct ioloop_buf){0};
    b->cap = cap;
    *bp = b;
    return 0;
}

int ioloop__buf_append(struct ioloop_buf **bp, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    if (ioloop__buf_reserve(bp, n) < 0)
        return -ENOMEM;
    memcpy((*bp)->data + (*bp)->end, data, n);
    (*bp)->end += n;
    return 0;
}

void ioloop__buf_consume(struct ioloop_buf *b, size_t n)
{
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

ssize_t ioloop__buf_read_fd(struct ioloop_buf **bp, int fd, size_t max)
{
    char extra[IOLOOP__READ_EXTRA];
    struct ioloop_buf *b = *bp;
    size_t space = b != NULL ? b->cap - b->end : 0;
    struct iovec iov[2];
    int n_iov = 0;
    ssize_t n;

    if (space > max)
        space = max;
    if (space > 0)
        iov[n_iov++] = (struct iovec){b->data + b->end, space};
    if (max > space)
        iov[n_iov++] = (struct iovec){extra, max - space < sizeof extra ? max - space
                                                                         : sizeof extra};
    n = readv(fd, iov, n_iov);
    if (n <= 0)
        return n < 0 ? -errno : 0; /* *bp may still be NULL: nothing to keep */
    if ((size_t)n <= space) {
        b->end += (size_t)n;
        return n;
    }
    if (space > 0)
        b->end += space;
    if (ioloop__buf_append(bp, extra, (size_t)n - space) < 0)
        return -ENOMEM;
    return n;
}

void ioloop__buf_free(struct ioloop_buf **bp)
{
    free(*bp);
    *bp = NULL;
}
