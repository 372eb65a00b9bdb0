/*
 * accept_raw_epoll — a hand-written floor for the connection-per-request suite
 * (suite_accept.sh): the fewest syscalls a single-threaded epoll server can spend on an
 * HTTP/1.0 connection, to show how much of a server's CPU time per connection is the kernel's
 * TCP work that every server pays.
 *
 * The listening socket is in the epoll set (level-triggered). On its readiness the server
 * accepts until EAGAIN (at most ACCEPT_BATCH), and reads each new connection at once: on
 * loopback, and under load anywhere, the request has usually arrived by then, so the
 * connection is answered with one send and closed without ever entering the epoll set. Only a
 * connection whose request has not arrived is added (EPOLLIN), answered when it is readable,
 * and closed, which also takes it out of the set. There is no linger, no timer and no DEL:
 * close() with nothing unread sends a FIN, as nginx does. A request is answered once its
 * header block ended ("\r\n\r\n" in what one read returned: the suite's requests are 18
 * bytes); anything else is closed unanswered.
 *
 *   build/test/bench/accept_raw_epoll -a 127.0.0.1:9000
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h> /* memmem: the build defines _GNU_SOURCE */
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "bench_common.h"

#define ACCEPT_BATCH 64 /* as ioloop's listener: a burst drained, the loop not held up */
#define MAX_EVENTS 256

static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

/* Reads fd's request and answers it. Returns 1 when fd is done with (answered or failed, and
 * closed), 0 when the request has not arrived yet. */
static int serve(int fd)
{
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);

    if (n < 0 && errno == EAGAIN)
        return 0;
    if (n > 0 && memmem(buf, (size_t)n, "\r\n\r\n", 4) != NULL)
        (void)send(fd, reply, sizeof reply - 1, MSG_NOSIGNAL);
    close(fd);
    return 1;
}

static void on_listener(int epfd, int lfd)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct epoll_event ev = {.events = EPOLLIN};
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0)
            return; /* EAGAIN; or ECONNABORTED and the like, for which the next event comes */
        if (serve(fd))
            continue;
        ev.data.fd = fd;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            close(fd);
    }
}

int main(int argc, char **argv)
{
    static struct epoll_event events[MAX_EVENTS];
    const char *address = "127.0.0.1:9000";
    struct epoll_event ev = {.events = EPOLLIN};
    int opt, lfd, sfd, epfd, stop = 0;
    sigset_t mask;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    /* SIGINT and SIGTERM arrive on a signalfd in the same epoll set and end the loop. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    if ((lfd = bench_listen(address)) < 0 || (epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        perror("accept_raw_epoll: cannot listen");
        return 1;
    }
    ev.data.fd = lfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.fd = sfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
    printf("accept_raw_epoll: listening on %s\n", address);
    fflush(stdout); /* scripts wait for this line */

    while (!stop) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);

        for (int k = 0; k < n; k++) {
            int fd = events[k].data.fd;

            if (fd == lfd)
                on_listener(epfd, lfd);
            else if (fd == sfd)
                stop = 1;
            else
                serve(fd); /* readable: the request, EOF or an error; closing drops it */
        }
    }
    close(sfd);
    close(lfd);
    close(epfd);
    return 0;
}
