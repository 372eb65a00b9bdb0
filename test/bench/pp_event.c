/*
 * pp_event — the libevent echo server in its low-level style: plain `struct event`s and
 * read()/send(), the same policy as raw_epoll_echo. Each connection has a persistent read
 * event and a persistent write event, and exactly one of them is added: read while nothing is
 * pending; when the kernel does not take a whole echo, the rest is kept, the read event
 * deleted and the write event added until it drained. Single-threaded; SIGINT/SIGTERM break
 * the loop, open connections are left to exit().
 *
 *   build/test/bench/pp_event -a 127.0.0.1:9000
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "bench_common.h"

#define READ_SIZE (64 * 1024)  /* the same read size as the other servers */

struct conn {
    struct event *read_ev, *write_ev;
    char *pending;             /* bytes send() did not take: [off, len) */
    size_t off, len;
};

static void conn_close(evutil_socket_t fd, struct conn *c)
{
    event_free(c->read_ev);    /* event_free deletes a pending event first */
    event_free(c->write_ev);
    evutil_closesocket(fd);
    free(c->pending);
    free(c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    ssize_t sent = send(fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);

    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_close(fd, c);
        return;
    }
    c->off += (size_t)sent;
    if (c->off < c->len)
        return;
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    event_del(c->write_ev);
    event_add(c->read_ev, NULL);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    static char buf[READ_SIZE]; /* one thread: every read is consumed before the next */
    struct conn *c = arg;
    ssize_t n = read(fd, buf, sizeof buf), sent;

    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_close(fd, c);
        return;
    }
    sent = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            conn_close(fd, c);
            return;
        }
        sent = 0;
    }
    if (sent == n)
        return;
    if ((c->pending = malloc((size_t)(n - sent))) == NULL) {
        conn_close(fd, c);
        return;
    }
    memcpy(c->pending, buf + sent, (size_t)(n - sent));
    c->len = (size_t)(n - sent);
    event_del(c->read_ev);
    event_add(c->write_ev, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct event_base *base = arg;

    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct conn *c;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                perror("pp_event: accept4");
            return;
        }
        bench_nodelay(fd);
        if ((c = calloc(1, sizeof *c)) == NULL ||
            (c->read_ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, c)) == NULL ||
            (c->write_ev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, c)) == NULL ||
            event_add(c->read_ev, NULL) < 0) {
            if (c != NULL && c->read_ev != NULL)
                event_free(c->read_ev);
            if (c != NULL && c->write_ev != NULL)
                event_free(c->write_ev);
            free(c);
            close(fd);
        }
    }
}

static void on_signal(evutil_socket_t signo, short what, void *arg)
{
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    struct event *accept_ev, *sigint, *sigterm;
    struct event_base *base;
    int opt, lfd;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    if ((lfd = bench_listen(address)) < 0) {
        fprintf(stderr, "pp_event: cannot listen on %s: %s\n", address, strerror(errno));
        return 1;
    }
    if ((base = event_base_new()) == NULL) {
        fprintf(stderr, "pp_event: event_base_new failed\n");
        return 1;
    }
    accept_ev = event_new(base, lfd, EV_READ | EV_PERSIST, on_accept, base);
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    if (accept_ev == NULL || sigint == NULL || sigterm == NULL ||
        event_add(accept_ev, NULL) < 0 || event_add(sigint, NULL) < 0 ||
        event_add(sigterm, NULL) < 0) {
        fprintf(stderr, "pp_event: cannot add the listener and signal events\n");
        return 1;
    }
    printf("pp_event: listening on %s (libevent %s, %s)\n", address, event_get_version(),
           event_base_get_method(base));
    fflush(stdout); /* scripts wait for this line */
    event_base_dispatch(base);
    event_free(accept_ev);
    event_free(sigint);
    event_free(sigterm);
    event_base_free(base);
    close(lfd);
    return 0;
}
