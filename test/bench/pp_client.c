/*
 * pp_client — the ping-pong load client (muduo's method) that every echo server of the
 * ping-pong and scaling suites is measured with: one thread, raw epoll, nothing in common with
 * any of the servers' event libraries.
 *
 * It opens C connections, sends one S-byte block on each and from then on sends back whatever
 * it receives, so C blocks bounce between client and server. After a warm-up of W seconds it
 * counts the bytes received during T seconds and prints them with MiB/s and messages/s
 * (bytes / S). Every received byte is checked against the block's pattern (one memcmp per
 * read, see bench_common.h), so a server that loses, repeats or reorders bytes fails the run.
 *
 * Like the servers, a connection whose echo the kernel does not take whole keeps the rest and
 * watches EPOLLOUT only until it drained. Level-triggered, one read per readiness.
 *
 *   build/test/bench/pp_client -a 127.0.0.1:9000 -c 100 -s 4096 -t 5
 *
 * Options: -a IPV4:PORT (default 127.0.0.1:9000), -c CONNECTIONS (10), -s BYTES (16),
 * -t SECONDS measured (5), -w SECONDS of warm-up (1), -P PID of the server: also report the
 * CPU time the server's threads used during the measured seconds (from
 * /proc/PID/task/<tid>/schedstat, nanoseconds), as a share of the time and per message — less
 * sensitive to other load than throughput. The last line of output is
 *   pp_client: C=.. S=..: BYTES bytes in SECS s: X MiB/s, Y msg/s[; server CPU Z%, W ns/msg]
 * Exit status 0 when every connection stayed open and echoed exactly, 1 otherwise, 2 for bad
 * options.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "bench_common.h"

#define READ_SIZE (64 * 1024)  /* the servers' read size too */
#define MAX_EVENTS 1024        /* one epoll_wait batch */

struct conn {
    int fd;
    uint64_t received;         /* stream offset: bytes received so far, for the pattern check */
    char *pending;             /* echo the kernel did not take: [off, len) */
    size_t off, len;
};

struct client {
    size_t size;
    unsigned char *ref;        /* the stream pattern, size + READ_SIZE bytes */
    struct conn *conns;
    int epfd;
    uint64_t received;         /* bytes over all connections */
};

static void fail(const char *what)
{
    perror(what);
    exit(1);
}

static void watch(struct client *cl, int i, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)i};

    if (epoll_ctl(cl->epfd, op, cl->conns[i].fd, &ev) < 0)
        fail("pp_client: epoll_ctl");
}

/* Sends data[0, len) after what is pending; keeps what the kernel does not take. */
static void conn_send(struct client *cl, int i, const char *data, size_t len)
{
    struct conn *c = &cl->conns[i];
    ssize_t sent = send(c->fd, data, len, MSG_NOSIGNAL);

    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fail("pp_client: send");
        sent = 0;
    }
    if ((size_t)sent == len)
        return;
    if ((c->pending = malloc(len - (size_t)sent)) == NULL)
        fail("pp_client: malloc");
    memcpy(c->pending, data + sent, len - (size_t)sent);
    c->off = 0;
    c->len = len - (size_t)sent;
    watch(cl, i, EPOLLOUT, EPOLL_CTL_MOD);
}

static void on_writable(struct client *cl, int i)
{
    struct conn *c = &cl->conns[i];
    ssize_t sent = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);

    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fail("pp_client: send");
        return;
    }
    c->off += (size_t)sent;
    if (c->off < c->len)
        return;
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    watch(cl, i, EPOLLIN, EPOLL_CTL_MOD);
}

static void on_readable(struct client *cl, int i)
{
    static char buf[READ_SIZE];
    struct conn *c = &cl->conns[i];
    ssize_t n = read(c->fd, buf, sizeof buf);

    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        fprintf(stderr, "pp_client: connection %d %s after %" PRIu64 " bytes\n", i,
                n == 0 ? "closed by the server" : strerror(errno), c->received);
        exit(1);
    }
    if (memcmp(buf, cl->ref + c->received % cl->size, (size_t)n) != 0) {
        fprintf(stderr, "pp_client: connection %d: echoed bytes %" PRIu64 "..%" PRIu64
                " differ from what was sent\n", i, c->received, c->received + (uint64_t)n);
        exit(1);
    }
    c->received += (uint64_t)n;
    cl->received += (uint64_t)n;
    conn_send(cl, i, buf, (size_t)n);
}

/* CPU nanoseconds the threads of process `pid` have run so far (-1 if unreadable). */
static int64_t cpu_ns_of(pid_t pid)
{
    char path[64];
    struct dirent *d;
    int64_t total = 0;
    DIR *dir;

    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if ((dir = opendir(path)) == NULL)
        return -1;
    while ((d = readdir(dir)) != NULL) {
        long long ns;
        FILE *f;

        if (d->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%.20s/schedstat", (int)pid, d->d_name);
        if ((f = fopen(path, "r")) == NULL)
            continue;      /* the thread has just exited */
        if (fscanf(f, "%lld", &ns) == 1)
            total += ns;
        fclose(f);
    }
    closedir(dir);
    return total;
}

/* Blocking connect (the listener's backlog holds C = 1 000), then non-blocking for the run. */
static int open_conn(const struct sockaddr_in *sin)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    if (fd < 0 || connect(fd, (const struct sockaddr *)sin, sizeof *sin) < 0)
        fail("pp_client: connect");
    if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        fail("pp_client: socket options");
    return fd;
}

/* Runs the loop until `until` (CLOCK_MONOTONIC seconds); returns the time it stopped. */
static double run_until(struct client *cl, double until)
{
    static struct epoll_event events[MAX_EVENTS];
    double now = bench_now();

    while (now < until) {
        int n = epoll_wait(cl->epfd, events, MAX_EVENTS, (int)((until - now) * 1000) + 1);

        if (n < 0 && errno != EINTR)
            fail("pp_client: epoll_wait");
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;

            if (cl->conns[i].pending != NULL)
                on_writable(cl, i);
            else
                on_readable(cl, i); /* EPOLLIN, EPOLLHUP or EPOLLERR: read() tells which */
        }
        now = bench_now();
    }
    return now;
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-a IPV4:PORT] [-c CONNECTIONS] [-s BYTES] [-t SECONDS] "
            "[-w WARMUP_SECONDS] [-P SERVER_PID]\n", argv0);
    exit(2);
}

struct options {
    struct sockaddr_in address;
    long conns, size;
    double seconds, warmup;
    pid_t server;              /* 0: do not report the server's CPU time */
};

static void parse_options(int argc, char **argv, struct options *o)
{
    const char *address = "127.0.0.1:9000";
    struct rlimit rl;
    int opt;

    *o = (struct options){.conns = 10, .size = 16, .seconds = 5, .warmup = 1};
    while ((opt = getopt(argc, argv, "a:c:s:t:w:P:")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'c': o->conns = strtol(optarg, NULL, 10); break;
        case 's': o->size = strtol(optarg, NULL, 10); break;
        case 't': o->seconds = strtod(optarg, NULL); break;
        case 'w': o->warmup = strtod(optarg, NULL); break;
        case 'P': o->server = (pid_t)strtol(optarg, NULL, 10); break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc || o->conns < 1 || o->size < 1 || o->size > 64 * 1024 * 1024 ||
        !(o->seconds > 0) || !(o->warmup >= 0) || bench_parse_address(address, &o->address) < 0)
        usage(argv[0]);
    /* Three fds of stdio and the epoll fd besides the connections; we raise no limit. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (rlim_t)o->conns + 8 > rl.rlim_cur) {
        fprintf(stderr, "pp_client: %ld connections need more fds than RLIMIT_NOFILE (%ju)\n",
                o->conns, (uintmax_t)rl.rlim_cur);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    int64_t cpu_before = -1, cpu_after = -1;
    double start, end, msgs;
    struct client cl = {0};
    struct options o;
    uint64_t bytes;

    parse_options(argc, argv, &o);
    cl.size = (size_t)o.size;
    cl.ref = bench_pattern_ref(cl.size, READ_SIZE);
    cl.conns = calloc((size_t)o.conns, sizeof *cl.conns);
    if (cl.ref == NULL || cl.conns == NULL)
        fail("pp_client: malloc");
    if ((cl.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        fail("pp_client: epoll_create1");
    for (int i = 0; i < o.conns; i++) {
        cl.conns[i].fd = open_conn(&o.address);
        watch(&cl, i, EPOLLIN, EPOLL_CTL_ADD);
    }
    /* The first block of each connection is the pattern itself: ref[0, size). */
    for (int i = 0; i < o.conns; i++)
        conn_send(&cl, i, (const char *)cl.ref, cl.size);

    run_until(&cl, bench_now() + o.warmup);
    if (o.server > 0)
        cpu_before = cpu_ns_of(o.server);
    bytes = cl.received;
    start = bench_now();
    end = run_until(&cl, start + o.seconds);
    if (o.server > 0)
        cpu_after = cpu_ns_of(o.server);
    bytes = cl.received - bytes;

    if (bytes == 0) {
        fprintf(stderr, "pp_client: no echo in %.3f s\n", end - start);
        return 1;
    }
    msgs = (double)bytes / (double)o.size;
    printf("pp_client: C=%ld S=%ld: %" PRIu64 " bytes in %.3f s: %.2f MiB/s, %.0f msg/s",
           o.conns, o.size, bytes, end - start,
           (double)bytes / (end - start) / (1024.0 * 1024.0), msgs / (end - start));
    if (cpu_before >= 0 && cpu_after >= cpu_before)
        printf("; server CPU %.0f%%, %.0f ns/msg",
               (double)(cpu_after - cpu_before) / 1e7 / (end - start),
               (double)(cpu_after - cpu_before) / msgs);
    printf("\n");
    for (int i = 0; i < o.conns; i++) {
        close(cl.conns[i].fd);
        free(cl.conns[i].pending);
    }
    close(cl.epfd);
    free(cl.conns);
    free(cl.ref);
    return 0;
}
