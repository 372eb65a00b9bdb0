/*
 * echo_server — a TCP echo server on a pool of loops: every byte a client sends comes back.
 *
 * The acceptor hands connections round-robin to the pool's loops (with -r, each loop accepts
 * its own on an SO_REUSEPORT listener instead); on_data writes what it got straight back with
 * ioloop_conn_write() and consumes all of it; each connection's peer is logged. The main thread runs a loop of
 * its own that only waits for SIGINT/SIGTERM (or the -t timer); then the server and the pool
 * are freed and each pool loop's stats are printed.
 *
 *   build/samples/echo_server -t 30          (in another shell: build/samples/echo_client)
 *
 * Options: -a ADDRESS (default 127.0.0.1:9000; port 0 picks a free one), -n LOOPS (default 1;
 * 0 means one per CPU), -r (reuseport: a listener per loop), -q (quiet: no line per
 * connection), -t SECONDS (stop after that long).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ioloop.h>

struct options {
    const char *address;
    int loops;
    int reuseport;
    int quiet;
    unsigned seconds;  /* 0: run until a signal */
};

static void on_open(ioloop_conn_t *conn)
{
    const struct options *opt = ioloop_conn_user(conn);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char peer[128] = "?";

    if (opt->quiet)
        return;
    if (ioloop_conn_peer(conn, &ss, &len) == 0)
        ioloop_address_format((struct sockaddr *)&ss, len, peer, sizeof peer);
    IOLOOP_LOG_INFO("conn %" PRIu64 " open from %s", ioloop_conn_id(conn), peer);
}

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    ioloop_conn_write(conn, data, len); /* a failure closes the connection: on_close says why */
    return len;
}

static void on_close(ioloop_conn_t *conn, int err)
{
    const struct options *opt = ioloop_conn_user(conn);

    if (!opt->quiet)
        IOLOOP_LOG_INFO("conn %" PRIu64 " closed: %s", ioloop_conn_id(conn),
                        err == 0 ? "orderly" : strerror(-err));
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    fprintf(stderr, "\n%s: stopping\n", signo == SIGINT ? "SIGINT" : "SIGTERM");
    ioloop_stop(loop);
}

static void on_time_up(ioloop_t *loop, void *arg)
{
    fprintf(stderr, "%u s elapsed: stopping\n", *(const unsigned *)arg);
    ioloop_stop(loop);
}

static int parse_options(int argc, char **argv, struct options *opt)
{
    int c;

    while ((c = getopt(argc, argv, "a:n:qrt:")) != -1) {
        switch (c) {
        case 'a': opt->address = optarg; break;
        case 'n': opt->loops = atoi(optarg); break;
        case 'r': opt->reuseport = 1; break;
        case 'q': opt->quiet = 1; break;
        case 't': opt->seconds = (unsigned)strtoul(optarg, NULL, 10); break;
        default: return -1;
        }
    }
    return opt->loops < 0 || optind != argc ? -1 : 0;
}

int main(int argc, char **argv)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = on_open, .on_data = on_data, .on_close = on_close,
    };
    struct options opt = {.address = "127.0.0.1:9000", .loops = 1};
    ioloop_stats_t *stats;
    ioloop_server_t *server;
    ioloop_pool_t *pool;
    ioloop_t *main_loop;
    int nloops, err;

    if (parse_options(argc, argv, &opt) < 0) {
        fprintf(stderr, "usage: %s [-a ADDRESS] [-n LOOPS (0: one per CPU)] [-r] [-q] "
                        "[-t SECONDS]\n", argv[0]);
        return 2;
    }
    ioloop_log_open(NULL);

    /* Signals first: the pool's threads are created after the mask is set (and block every
     * signal anyway), so SIGINT and SIGTERM reach only the main loop's signalfd. */
    main_loop = ioloop_new();
    if (main_loop == NULL) {
        perror("echo_server: main loop");
        return 1;
    }
    /* ioloop_add_signal() returns a negative errno; it does not set errno. */
    if ((err = ioloop_add_signal(main_loop, SIGINT, on_signal, NULL)) < 0 ||
        (err = ioloop_add_signal(main_loop, SIGTERM, on_signal, NULL)) < 0) {
        fprintf(stderr, "echo_server: main loop: ioloop_add_signal: %s\n", strerror(-err));
        return 1;
    }
    if (opt.seconds > 0)
        ioloop_run_after(main_loop, (uint64_t)opt.seconds * 1000, on_time_up, &opt.seconds);

    pool = ioloop_pool_new(opt.loops);
    if (pool == NULL) {
        perror("echo_server: ioloop_pool_new");
        ioloop_free(main_loop);
        return 1;
    }
    server = ioloop_server_new_opts(pool, opt.address, &handlers, &opt,
                                    &(ioloop_server_options_t){.reuseport = opt.reuseport});
    if (server == NULL || (errno = -ioloop_server_start(server)) != 0) {
        fprintf(stderr, "echo_server: cannot serve %s: %s\n", opt.address, strerror(errno));
        ioloop_server_free(server);
        ioloop_pool_free(pool);
        ioloop_free(main_loop);
        return 1;
    }
    nloops = ioloop_pool_size(pool);
    printf("echo_server: listening on %s (port %d) with %d loop%s%s\n", opt.address,
           ioloop_server_port(server), nloops, nloops == 1 ? "" : "s",
           opt.reuseport ? ", each with its own SO_REUSEPORT listener" : "");
    fflush(stdout); /* scripts wait for this line */

    ioloop_start(main_loop);

    /* Closing the server closes its connections; the loops still run, so read their stats
     * before the pool frees them. */
    ioloop_server_free(server);
    stats = calloc((size_t)nloops, sizeof *stats);
    for (int i = 0; stats != NULL && i < nloops; i++)
        ioloop_get_stats(ioloop_pool_loop(pool, i), &stats[i]);
    ioloop_pool_free(pool);
    ioloop_free(main_loop);

    for (int i = 0; stats != NULL && i < nloops; i++)
        printf("loop %d: %" PRIu64 " iterations, %" PRIu64 " io events, %" PRIu64
               " callbacks, %" PRIu64 " handlers, %" PRIu64 " wakeups, max lag %" PRIu64
               " us\n", i, stats[i].iterations, stats[i].io_events, stats[i].callbacks_run,
               stats[i].handlers, stats[i].wakeups, stats[i].max_lag_us);
    free(stats);
    ioloop_log_close();
    return 0;
}
