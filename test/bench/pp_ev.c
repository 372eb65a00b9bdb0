/*
 * pp_ev — the libev echo server: one ev_io watcher per connection (the watcher is the first
 * member of the connection, libev's usual way to carry data), read()/send(), the same policy
 * as raw_epoll_echo. When the kernel does not take a whole echo, the rest is kept and the
 * watcher is re-armed for EV_WRITE (stop, set, start) until it drained, then for EV_READ.
 * The epoll backend is asked for explicitly so that every server of the suite waits the same
 * way. Single-threaded; SIGINT/SIGTERM (ev_signal) break the loop, open connections are left
 * to exit().
 *
 *   build/test/bench/pp_ev -a 127.0.0.1:9000
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "bench_common.h"

#define READ_SIZE (64 * 1024)  /* the same read size as the other servers */

struct conn {
    ev_io io;                  /* first: the watcher libev hands back is the connection */
    char *pending;             /* bytes send() did not take: [off, len) */
    size_t off, len;
};

static void conn_close(struct ev_loop *loop, struct conn *c)
{
    ev_io_stop(loop, &c->io);
    close(c->io.fd);
    free(c->pending);
    free(c);
}

/* Re-arms the watcher for `events` (EV_READ or EV_WRITE). */
static void conn_watch(struct ev_loop *loop, struct conn *c, int events)
{
    ev_io_stop(loop, &c->io);
    ev_io_set(&c->io, c->io.fd, events);
    ev_io_start(loop, &c->io);
}

static void on_writable(struct ev_loop *loop, struct conn *c)
{
    ssize_t sent = send(c->io.fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);

    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_close(loop, c);
        return;
    }
    c->off += (size_t)sent;
    if (c->off < c->len)
        return;
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    conn_watch(loop, c, EV_READ);
}

static void on_readable(struct ev_loop *loop, struct conn *c)
{
    static char buf[READ_SIZE]; /* one thread: every read is consumed before the next */
    ssize_t n = read(c->io.fd, buf, sizeof buf), sent;

    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_close(loop, c);
        return;
    }
    sent = send(c->io.fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            conn_close(loop, c);
            return;
        }
        sent = 0;
    }
    if (sent == n)
        return;
    if ((c->pending = malloc((size_t)(n - sent))) == NULL) {
        conn_close(loop, c);
        return;
    }
    memcpy(c->pending, buf + sent, (size_t)(n - sent));
    c->len = (size_t)(n - sent);
    conn_watch(loop, c, EV_WRITE);
}

static void on_conn(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = (struct conn *)w;

    if (c->pending != NULL)
        on_writable(loop, c);
    else
        on_readable(loop, c);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct conn *c;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                perror("pp_ev: accept4");
            return;
        }
        bench_nodelay(fd);
        if ((c = calloc(1, sizeof *c)) == NULL) {
            close(fd);
            continue;
        }
        ev_io_init(&c->io, on_conn, fd, EV_READ);
        ev_io_start(loop, &c->io);
    }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    ev_signal sigint, sigterm;
    struct ev_loop *loop;
    ev_io accept_io;
    int opt, lfd;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    if ((lfd = bench_listen(address)) < 0) {
        fprintf(stderr, "pp_ev: cannot listen on %s: %s\n", address, strerror(errno));
        return 1;
    }
    if ((loop = ev_default_loop(EVBACKEND_EPOLL)) == NULL) {
        fprintf(stderr, "pp_ev: no epoll backend\n");
        return 1;
    }
    ev_io_init(&accept_io, on_accept, lfd, EV_READ);
    ev_io_start(loop, &accept_io);
    ev_signal_init(&sigint, on_signal, SIGINT);
    ev_signal_init(&sigterm, on_signal, SIGTERM);
    ev_signal_start(loop, &sigint);
    ev_signal_start(loop, &sigterm);
    printf("pp_ev: listening on %s (libev %d.%d)\n", address, ev_version_major(),
           ev_version_minor());
    fflush(stdout); /* scripts wait for this line */
    ev_run(loop, 0);
    close(lfd);
    return 0;
}
