/*
 * accept_client — the load client of the connection-per-request suite (suite_accept.sh): one
 * thread, raw epoll, nothing in common with any of the servers' event libraries, and cheaper
 * per connection than ab, so that the server becomes the bottleneck sooner.
 *
 * It keeps C connection-per-request loops going at once. Each loop opens a non-blocking TCP
 * connection, sends "GET / HTTP/1.0\r\n\r\n" (at once: on loopback the handshake has completed
 * by the time connect() returns; if not, when the socket turns writable), reads the whole
 * reply until the server's EOF, checks it, closes and starts over. A reply passes when it is
 * an HTTP/1.x 200 whose body, after the blank line, is exactly "Hello, World!"; anything else
 * (another status, a short or long body, a reset, a refused connection) counts as a failure.
 * After a warm-up of W seconds it counts the connections completed during T seconds, or until
 * N of them completed if that comes first, and prints connections/s.
 *
 * The server closes first in this protocol, so TIME_WAIT lands on the server's side and the
 * client's ephemeral ports are free again as soon as each connection is closed; -L (off by
 * default) would close with SO_LINGER 0 (a reset) instead, for a server that does not.
 *
 *   build/test/bench/accept_client -a 127.0.0.1:9000 -c 50 -t 5 -n 50000 -P SERVER_PID
 *
 * Options: -a IPV4:PORT (default 127.0.0.1:9000), -c CONCURRENCY (1), -t SECONDS measured
 * (5), -w SECONDS of warm-up (1), -n CONNECTIONS: end the measured window once that many
 * completed (0: no bound but the time), -P PID of the server process (repeatable for a server
 * of several processes): also report its CPU time during the measured window, from
 * /proc/PID/stat (utime + stime: every thread of the process), as a share of the time and in
 * microseconds per connection. -L: close with SO_LINGER 0. The last line of output is
 *   accept_client: C=..: N conns in SECS s: X conn/s; client CPU Y%[; server CPU Z%, W us/conn]
 * Exit status 0 when every connection got a correct reply, 1 otherwise, 2 for bad options.
 */
#include <errno.h>
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

#define MAX_EVENTS 256          /* one epoll_wait batch; C is at most a few hundred */
#define REPLY_MAX 1024          /* nginx's and evhttp's replies with their headers fit */
#define MAX_PIDS 8

static const char request[] = "GET / HTTP/1.0\r\n\r\n";
static const char body[] = "Hello, World!";

/* One connection-per-request loop: its current socket and the reply read so far. */
struct slot {
    int fd;                    /* -1 between connections */
    int sending;               /* the request is not sent yet: waiting for writability */
    size_t len;
    char reply[REPLY_MAX];
};

struct client {
    struct sockaddr_in address;
    struct slot *slots;
    int epfd;
    int linger;                /* -L */
    uint64_t done;             /* connections with a correct reply */
    uint64_t failed;
    size_t reply_bytes;        /* the size of the last correct reply, for the report */
};

static void fail(const char *what)
{
    perror(what);
    exit(1);
}

/* Records a failed connection; the first few are described on stderr. */
static void failure(struct client *cl, const char *what, int err)
{
    if (++cl->failed <= 5)
        fprintf(stderr, "accept_client: connection failed: %s%s%s\n", what,
                err != 0 ? ": " : "", err != 0 ? strerror(err) : "");
    if (err == EADDRNOTAVAIL)
        fprintf(stderr, "accept_client: out of ephemeral ports (TIME_WAIT on the client?); "
                "try -L\n");
}

/* Whether reply[0, len) is an HTTP/1.x 200 whose body is exactly `body`. */
static int reply_ok(const char *reply, size_t len)
{
    const char *end;

    if (len < 12 || memcmp(reply, "HTTP/1.", 7) != 0 || memcmp(reply + 8, " 200", 4) != 0)
        return 0;
    end = memmem(reply, len, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    end += 4;
    return (size_t)(reply + len - end) == sizeof body - 1 &&
           memcmp(end, body, sizeof body - 1) == 0;
}

static void close_slot(struct client *cl, struct slot *s)
{
    if (cl->linger) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};

        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(s->fd); /* which also takes it out of the epoll set */
    s->fd = -1;
}

/* Sends the request; returns 1 if sent, 0 if the socket is not writable yet, -1 on failure
 * (recorded, and the slot closed). The request is far smaller than any socket buffer: it
 * goes whole or not at all. */
static int send_request(struct client *cl, struct slot *s)
{
    ssize_t n = send(s->fd, request, sizeof request - 1, MSG_NOSIGNAL);

    if (n == (ssize_t)sizeof request - 1)
        return 1;
    if (n < 0 && errno == EAGAIN)
        return 0;
    failure(cl, "send", n < 0 ? errno : EIO);
    close_slot(cl, s);
    return -1;
}

/* Opens slot i's next connection and sends its request. A slot whose connection fails at
 * once stays closed until the next round of run_until() retries it. */
static void start(struct client *cl, int i)
{
    struct slot *s = &cl->slots[i];
    struct epoll_event ev = {.data.u32 = (uint32_t)i};
    int sent;

    s->len = 0;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0)
        fail("accept_client: socket");
    if (connect(s->fd, (const struct sockaddr *)&cl->address, sizeof cl->address) < 0 &&
        errno != EINPROGRESS) {
        failure(cl, "connect", errno);
        close_slot(cl, s);
        return;
    }
    if ((sent = send_request(cl, s)) < 0)
        return;
    s->sending = !sent;
    ev.events = s->sending ? EPOLLOUT : EPOLLIN;
    if (epoll_ctl(cl->epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0)
        fail("accept_client: epoll_ctl");
}

static void on_writable(struct client *cl, int i)
{
    struct slot *s = &cl->slots[i];
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    int sent = send_request(cl, s);

    if (sent <= 0)
        return;
    s->sending = 0;
    if (epoll_ctl(cl->epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0)
        fail("accept_client: epoll_ctl");
}

/* Reads until EOF (the reply is complete: check it, close, start over) or EAGAIN. */
static void on_readable(struct client *cl, int i)
{
    struct slot *s = &cl->slots[i];

    for (;;) {
        ssize_t n = read(s->fd, s->reply + s->len, sizeof s->reply - s->len);

        if (n > 0) {
            s->len += (size_t)n;
            if (s->len < sizeof s->reply)
                continue;
            failure(cl, "reply too long", 0);
        } else if (n == 0) {
            if (reply_ok(s->reply, s->len)) {
                cl->done++;
                cl->reply_bytes = s->len;
            } else {
                failure(cl, "wrong reply", 0);
            }
        } else if (errno == EAGAIN || errno == EINTR) {
            return;
        } else {
            failure(cl, "read", errno);
        }
        close_slot(cl, s);
        start(cl, i);
        return;
    }
}

/* Runs the loops until `until` (CLOCK_MONOTONIC seconds) or until `count` connections are
 * done; returns the time it stopped. */
static double run_until(struct client *cl, int conns, double until, uint64_t count)
{
    static struct epoll_event events[MAX_EVENTS];
    double now = bench_now();

    while (now < until && cl->done < count) {
        int n;

        for (int i = 0; i < conns; i++)
            if (cl->slots[i].fd < 0)
                start(cl, i); /* a slot whose last connection failed outright */
        n = epoll_wait(cl->epfd, events, MAX_EVENTS, (int)((until - now) * 1000) + 1);
        if (n < 0 && errno != EINTR)
            fail("accept_client: epoll_wait");
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;

            if (cl->slots[i].sending)
                on_writable(cl, i); /* also for EPOLLERR: send() tells what went wrong */
            else
                on_readable(cl, i); /* EPOLLIN, EPOLLHUP or EPOLLERR: read() tells which */
        }
        now = bench_now();
    }
    return now;
}

/* CPU microseconds (utime + stime, every thread) process `pid` has used, or -1. */
static int64_t cpu_us_of(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long utime, stime;
    size_t n;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name in parentheses may hold spaces: fields are counted after its ')'.
     * utime and stime are fields 14 and 15, the 12th and 13th after the state (field 3). */
    if ((p = strrchr(buf, ')')) == NULL ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
               &stime) != 2)
        return -1;
    return (int64_t)((utime + stime) * 1000000ull / (unsigned long long)sysconf(_SC_CLK_TCK));
}

static int64_t cpu_us_sum(const pid_t *pids, int npids)
{
    int64_t total = 0;

    for (int i = 0; i < npids; i++) {
        int64_t us = cpu_us_of(pids[i]);

        if (us < 0)
            return -1;
        total += us;
    }
    return total;
}

static double own_cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-a IPV4:PORT] [-c CONCURRENCY] [-t SECONDS] [-w WARMUP_SECONDS]"
            " [-n CONNECTIONS] [-P SERVER_PID]... [-L]\n", argv0);
    exit(2);
}

struct options {
    struct sockaddr_in address;
    long conns;
    double seconds, warmup;
    uint64_t count;            /* 0: no bound */
    pid_t pids[MAX_PIDS];
    int npids;
    int linger;
};

static void parse_options(int argc, char **argv, struct options *o)
{
    const char *address = "127.0.0.1:9000";
    struct rlimit rl;
    int opt;

    *o = (struct options){.conns = 1, .seconds = 5, .warmup = 1};
    while ((opt = getopt(argc, argv, "a:c:t:w:n:P:L")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'c': o->conns = strtol(optarg, NULL, 10); break;
        case 't': o->seconds = strtod(optarg, NULL); break;
        case 'w': o->warmup = strtod(optarg, NULL); break;
        case 'n': o->count = strtoull(optarg, NULL, 10); break;
        case 'P':
            if (o->npids == MAX_PIDS)
                usage(argv[0]);
            o->pids[o->npids++] = (pid_t)strtol(optarg, NULL, 10);
            break;
        case 'L': o->linger = 1; break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc || o->conns < 1 || o->conns > 4096 || !(o->seconds > 0) ||
        !(o->warmup >= 0) || bench_parse_address(address, &o->address) < 0)
        usage(argv[0]);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (rlim_t)o->conns + 8 > rl.rlim_cur) {
        fprintf(stderr, "accept_client: %ld connections need more fds than RLIMIT_NOFILE (%ju)\n",
                o->conns, (uintmax_t)rl.rlim_cur);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    int64_t cpu_before = -1, cpu_after = -1;
    double start_s, end_s, own_before, own, secs;
    struct client cl = {0};
    struct options o;
    uint64_t done;

    parse_options(argc, argv, &o);
    cl.address = o.address;
    cl.linger = o.linger;
    cl.slots = calloc((size_t)o.conns, sizeof *cl.slots);
    if (cl.slots == NULL)
        fail("accept_client: malloc");
    if ((cl.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        fail("accept_client: epoll_create1");
    for (int i = 0; i < o.conns; i++)
        cl.slots[i].fd = -1;

    run_until(&cl, (int)o.conns, bench_now() + o.warmup, UINT64_MAX);
    if (o.npids > 0)
        cpu_before = cpu_us_sum(o.pids, o.npids);
    own_before = own_cpu_s();
    done = cl.done;
    start_s = bench_now();
    end_s = run_until(&cl, (int)o.conns, start_s + o.seconds,
                      o.count > 0 ? done + o.count : UINT64_MAX);
    if (o.npids > 0)
        cpu_after = cpu_us_sum(o.pids, o.npids);
    own = own_cpu_s() - own_before;
    done = cl.done - done;
    secs = end_s - start_s;

    for (int i = 0; i < o.conns; i++)
        if (cl.slots[i].fd >= 0)
            close_slot(&cl, &cl.slots[i]); /* in flight: neither counted nor failed */
    close(cl.epfd);
    free(cl.slots);

    if (done == 0) {
        fprintf(stderr, "accept_client: no connection completed in %.3f s\n", secs);
        return 1;
    }
    printf("accept_client: C=%ld: %" PRIu64 " conns in %.3f s: %.0f conn/s (%zu-byte replies);"
           " client CPU %.0f%%", o.conns, done, secs, (double)done / secs, cl.reply_bytes,
           own * 100 / secs);
    if (cpu_before >= 0 && cpu_after >= cpu_before)
        printf("; server CPU %.0f%%, %.2f us/conn", (double)(cpu_after - cpu_before) / 1e4 / secs,
               (double)(cpu_after - cpu_before) / (double)done);
    printf("\n");
    if (cl.failed > 0) {
        fprintf(stderr, "accept_client: %" PRIu64 " connection(s) failed\n", cl.failed);
        return 1;
    }
    return 0;
}
