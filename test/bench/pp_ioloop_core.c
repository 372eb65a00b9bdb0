/*
 * pp_ioloop_core — an echo server on ioloop's core API alone (fd handlers, no server or
 * connection layer), single-threaded: what the loop itself costs next to raw_epoll_echo,
 * with the buffered connection layer of samples/echo_server taken out of the picture.
 *
 * The same policy as raw_epoll_echo: one read() into a 64 KiB buffer per readiness and a
 * send() of what came; what the kernel does not take is kept and the handler switches to
 * IOLOOP_WRITE (ioloop_update_handler) until it drained, then back to IOLOOP_READ.
 * SIGINT/SIGTERM stop the loop (ioloop_add_signal); open connections are left to exit().
 *
 *   build/test/bench/pp_ioloop_core -a 127.0.0.1:9000
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ioloop.h>

#include "bench_common.h"

#define READ_SIZE (64 * 1024)  /* the same read size as ioloop's connection layer */

struct conn {
    char *pending;             /* bytes send() did not take: [off, len) */
    size_t off, len;
};

static void conn_close(ioloop_t *loop, int fd, struct conn *c)
{
    ioloop_remove_handler(loop, fd);
    close(fd);
    free(c->pending);
    free(c);
}

static void on_writable(ioloop_t *loop, int fd, struct conn *c)
{
    ssize_t sent = send(fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);

    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_close(loop, fd, c);
        return;
    }
    c->off += (size_t)sent;
    if (c->off < c->len)
        return;
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    ioloop_update_handler(loop, fd, IOLOOP_READ);
}

static void on_readable(ioloop_t *loop, int fd, struct conn *c)
{
    static char buf[READ_SIZE]; /* one loop thread: every read is consumed before the next */
    ssize_t n = read(fd, buf, sizeof buf), sent;

    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_close(loop, fd, c);
        return;
    }
    sent = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            conn_close(loop, fd, c);
            return;
        }
        sent = 0;
    }
    if (sent == n)
        return;
    if ((c->pending = malloc((size_t)(n - sent))) == NULL) {
        conn_close(loop, fd, c);
        return;
    }
    memcpy(c->pending, buf + sent, (size_t)(n - sent));
    c->len = (size_t)(n - sent);
    ioloop_update_handler(loop, fd, IOLOOP_WRITE);
}

static void on_conn(ioloop_t *loop, int fd, int events, void *arg)
{
    struct conn *c = arg;

    /* Watching WRITE only while output is pending, READ only otherwise; an error comes with
     * the bit we asked for and surfaces in send() or read(). */
    if (c->pending != NULL)
        on_writable(loop, fd, c);
    else
        on_readable(loop, fd, c);
}

static void on_accept(ioloop_t *loop, int lfd, int events, void *arg)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct conn *c;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                perror("pp_ioloop_core: accept4");
            return;
        }
        bench_nodelay(fd);
        if ((c = calloc(1, sizeof *c)) == NULL ||
            ioloop_add_handler(loop, fd, IOLOOP_READ, on_conn, c) < 0) {
            free(c);
            close(fd);
        }
    }
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    ioloop_stop(loop);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    ioloop_t *loop;
    int opt, lfd, err;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    if ((lfd = bench_listen(address)) < 0) {
        fprintf(stderr, "pp_ioloop_core: cannot listen on %s: %s\n", address, strerror(errno));
        return 1;
    }
    if ((loop = ioloop_new()) == NULL) {
        perror("pp_ioloop_core: ioloop_new");
        return 1;
    }
    if ((err = ioloop_add_signal(loop, SIGINT, on_signal, NULL)) < 0 ||
        (err = ioloop_add_signal(loop, SIGTERM, on_signal, NULL)) < 0 ||
        (err = ioloop_add_handler(loop, lfd, IOLOOP_READ, on_accept, NULL)) < 0) {
        fprintf(stderr, "pp_ioloop_core: %s\n", strerror(-err));
        return 1;
    }
    printf("pp_ioloop_core: listening on %s\n", address);
    fflush(stdout); /* scripts wait for this line */
    ioloop_start(loop);
    ioloop_free(loop);
    close(lfd);
    return 0;
}
