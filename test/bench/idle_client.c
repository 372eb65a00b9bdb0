/*
 * idle_client — holds N idle connections to an echo server, from a process of its own, so
 * that suite_idle.sh can read what they cost the server (its VmRSS before and after).
 *
 * It opens the connections in batches of BATCH: connect each (blocking), send one S-byte
 * message on each, then read each echo back whole and check it byte for byte. Batches keep the
 * server's accept queue short, and every connection has carried data — the server has set up
 * whatever it sets up for a live connection — before it goes idle. Then it prints one line,
 *   idle_client: N connections open and echoed
 * and waits, touching nothing, for SIGTERM, SIGINT or SIGHUP (or -t seconds), then closes the
 * connections and exits 0. It raises no limit: N must fit in RLIMIT_NOFILE.
 *
 *   build/test/bench/idle_client -a 127.0.0.1:9000 -n 10000
 *
 * Options: -a IPV4:PORT (default 127.0.0.1:9000), -n CONNECTIONS (10000), -s BYTES (16),
 * -t SECONDS to wait at most (600). Exit status 1 if a connection fails or an echo differs.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"

#define BATCH 256              /* connections opened before their echoes are read */
#define ECHO_TIMEOUT_S 10      /* a server that has not echoed by then has failed */

static void fail(const char *what, long i)
{
    fprintf(stderr, "idle_client: connection %ld: %s: %s\n", i, what, strerror(errno));
    exit(1);
}

static int open_and_send(const struct sockaddr_in *sin, const unsigned char *msg, size_t size,
                         long i)
{
    struct timeval timeout = {.tv_sec = ECHO_TIMEOUT_S};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || connect(fd, (const struct sockaddr *)sin, sizeof *sin) < 0)
        fail("connect", i);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0)
        fail("SO_RCVTIMEO", i);
    bench_nodelay(fd);
    if (send(fd, msg, size, MSG_NOSIGNAL) != (ssize_t)size)
        fail("send", i);
    return fd;
}

static void read_echo(int fd, const unsigned char *msg, size_t size, unsigned char *buf, long i)
{
    size_t got = 0;

    while (got < size) {
        ssize_t n = recv(fd, buf + got, size - got, 0);

        if (n == 0)
            errno = ECONNRESET;
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            fail(errno == EAGAIN ? "no echo in time" : "recv", i);
        }
        got += (size_t)n;
    }
    if (memcmp(buf, msg, size) != 0) {
        fprintf(stderr, "idle_client: connection %ld: the echo differs from the message\n", i);
        exit(1);
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-a IPV4:PORT] [-n CONNECTIONS] [-s BYTES] [-t SECONDS]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    long conns = 10000, size = 16, hold = 600;
    unsigned char *msg, *buf;
    struct sockaddr_in sin;
    struct timespec wait;
    struct rlimit rl;
    sigset_t stop;
    int *fds, opt;

    while ((opt = getopt(argc, argv, "a:n:s:t:")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'n': conns = strtol(optarg, NULL, 10); break;
        case 's': size = strtol(optarg, NULL, 10); break;
        case 't': hold = strtol(optarg, NULL, 10); break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc || conns < 1 || size < 1 || size > 65536 || hold < 0 ||
        bench_parse_address(address, &sin) < 0)
        usage(argv[0]);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (rlim_t)conns + 8 > rl.rlim_cur) {
        fprintf(stderr, "idle_client: %ld connections need more fds than RLIMIT_NOFILE (%ju)\n",
                conns, (uintmax_t)rl.rlim_cur);
        return 2;
    }
    /* Blocked from the start, so a signal that comes early is waited for, not fatal. */
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop, NULL);

    msg = bench_pattern_ref((size_t)size, 0);
    buf = malloc((size_t)size);
    fds = malloc((size_t)conns * sizeof *fds);
    if (msg == NULL || buf == NULL || fds == NULL) {
        perror("idle_client: malloc");
        return 1;
    }
    for (long first = 0; first < conns; first += BATCH) {
        long last = first + BATCH < conns ? first + BATCH : conns;

        for (long i = first; i < last; i++)
            fds[i] = open_and_send(&sin, msg, (size_t)size, i);
        for (long i = first; i < last; i++)
            read_echo(fds[i], msg, (size_t)size, buf, i);
    }
    printf("idle_client: %ld connections open and echoed\n", conns);
    fflush(stdout); /* scripts wait for this line */

    wait.tv_sec = hold;
    wait.tv_nsec = 0;
    while (sigtimedwait(&stop, NULL, &wait) < 0 && errno == EINTR)
        ;
    for (long i = 0; i < conns; i++)
        close(fds[i]);
    free(fds);
    free(buf);
    free(msg);
    return 0;
}
