/*
 * raw_epoll_echo — a hand-written, single-threaded epoll echo server: the practical limit
 * that ioloop's echo_server with one loop is measured against (test/bench/suite_pingpong.sh).
 *
 * Level-triggered. The listener is non-blocking and accepts until EAGAIN (TCP_NODELAY on
 * every connection, as ioloop's acceptor does). A readable connection gets one read() into a
 * 64 KiB buffer and a send() of what came; what send() does not take is kept in the
 * connection's pending buffer and the connection then watches EPOLLOUT only — no reading
 * until it drained, so a peer that does not read cannot make the server buffer without bound.
 *
 *   build/test/bench/raw_epoll_echo -a 127.0.0.1:9100
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE (64 * 1024)  /* the same read size as ioloop's stack buffer */
#define MAX_EVENTS 1024        /* one epoll_wait batch, as ioloop's */

struct conn {
    char *pending;             /* bytes send() did not take: [off, len) */
    size_t off, len;
    int open;
};

static struct conn *conns;     /* indexed by fd */
static int nconns;
static int epfd;
static int reserve_fd = -1;    /* spare fd to shed a connection when out of fds */

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void watch(int fd, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};

    if (epoll_ctl(epfd, op, fd, &ev) < 0)
        die("epoll_ctl");
}

static void conn_close(int fd)
{
    struct conn *c = &conns[fd];

    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(c->pending);
    memset(c, 0, sizeof *c);
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int one = 1;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
                /* Shed one connection, or the level-triggered listener spins. */
                close(reserve_fd);
                fd = accept(lfd, NULL, NULL);
                if (fd >= 0)
                    close(fd);
                reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            if (errno != EAGAIN)
                perror("accept4");
            return;
        }
        if (fd >= nconns) {
            int n = nconns ? nconns : 64;
            struct conn *grown;

            while (n <= fd)
                n *= 2;
            if ((grown = realloc(conns, (size_t)n * sizeof *grown)) == NULL)
                die("realloc");
            memset(grown + nconns, 0, (size_t)(n - nconns) * sizeof *grown);
            conns = grown;
            nconns = n;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[fd].open = 1;
        watch(fd, EPOLLIN, EPOLL_CTL_ADD);
    }
}

static void on_readable(int fd)
{
    static char buf[READ_SIZE];
    struct conn *c = &conns[fd];
    ssize_t n = read(fd, buf, sizeof buf), sent;

    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_close(fd);
        return;
    }
    sent = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            conn_close(fd);
            return;
        }
        sent = 0;
    }
    if (sent == n)
        return;
    /* Keep the rest and wait for writability; nothing is pending here (we were reading). */
    if ((c->pending = malloc((size_t)(n - sent))) == NULL)
        die("malloc");
    memcpy(c->pending, buf + sent, (size_t)(n - sent));
    c->off = 0;
    c->len = (size_t)(n - sent);
    watch(fd, EPOLLOUT, EPOLL_CTL_MOD);
}

static void on_writable(int fd)
{
    struct conn *c = &conns[fd];
    ssize_t sent = send(fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);

    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_close(fd);
        return;
    }
    c->off += (size_t)sent;
    if (c->off < c->len)
        return;
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    watch(fd, EPOLLIN, EPOLL_CTL_MOD);
}

static int listen_on(const char *address)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    const char *colon = strrchr(address, ':');
    char host[64];
    int fd, one = 1;

    if (colon == NULL || (size_t)(colon - address) >= sizeof host)
        return -1;
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
        return -1;
    sin.sin_port = htons((uint16_t)atoi(colon + 1));
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 4096) < 0)
        die(address);
    return fd;
}

int main(int argc, char **argv)
{
    static struct epoll_event events[MAX_EVENTS];
    const char *address = "127.0.0.1:9100";
    int opt, lfd;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    if ((lfd = listen_on(address)) < 0) {
        fprintf(stderr, "raw_epoll_echo: bad address %s (want IPV4:PORT)\n", address);
        return 2;
    }
    if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1");
    reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    watch(lfd, EPOLLIN, EPOLL_CTL_ADD);
    printf("raw_epoll_echo: listening on %s\n", address);
    fflush(stdout); /* scripts wait for this line */

    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);

        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;

            if (fd == lfd)
                on_accept(lfd);
            else if (conns[fd].pending != NULL)
                on_writable(fd);    /* watching EPOLLOUT only; errors surface in send() */
            else if (conns[fd].open)
                on_readable(fd);    /* EPOLLIN, EPOLLHUP or EPOLLERR: read() tells which */
        }
    }
}
