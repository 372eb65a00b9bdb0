/*
 * echo_client — a ping-pong load client for an echo server (muduo's method), on one loop.
 *
 * It opens C connections with ioloop_connect(); each sends one S-byte block when it opens and
 * then sends back whatever it receives, so C blocks bounce between client and server. After
 * T seconds a timer closes every connection and the client prints the bytes received, MiB/s
 * and messages/s (bytes / S). It exits non-zero if any connection failed or never opened.
 *
 *   build/samples/echo_server -t 10 &  build/samples/echo_client -c 10 -s 16 -t 5
 *
 * Options: -a ADDRESS (default 127.0.0.1:9000), -c CONNECTIONS (default 10),
 * -s MESSAGE_BYTES (default 16), -t SECONDS (default 5). The address may name its host:
 * `-a localhost:9000` resolves localhost on the loop (ioloop_connect() takes host names) and
 * connects to the first address that accepts.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

/* A connection that has not closed by this long after the end is given up on. */
#define CLOSE_GRACE_MS 2000

struct client {
    const char *address;
    int connections;
    size_t message;
    unsigned seconds;

    ioloop_conn_t **conns;  /* NULL once a connection closed */
    int open;               /* connections not yet closed */
    int opened;             /* on_open count */
    int failed;             /* closed before the end, or with an error */
    int stopping;
    uint64_t received;      /* bytes, until the end */
    uint64_t started_ms, elapsed_ms;
};

/* Each connection's data pointer is its slot in client->conns. */
static ioloop_conn_t **slot_of(ioloop_conn_t *conn)
{
    return ioloop_conn_data(conn);
}

static void on_open(ioloop_conn_t *conn)
{
    struct client *c = ioloop_conn_user(conn);
    char *block = malloc(c->message);

    c->opened++;
    if (block == NULL) {
        ioloop_conn_close(conn);
        return;
    }
    memset(block, 'x', c->message);
    ioloop_conn_write(conn, block, c->message); /* the connection copies what it cannot send */
    free(block);
}

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct client *c = ioloop_conn_user(conn);

    if (!c->stopping) {
        c->received += len;
        ioloop_conn_write(conn, data, len);
    }
    return len;
}

static void on_close(ioloop_conn_t *conn, int err)
{
    struct client *c = ioloop_conn_user(conn);

    if (!c->stopping || err != 0) {
        c->failed++;
        fprintf(stderr, "echo_client: a connection %s: %s\n",
                c->stopping ? "failed while closing" : "closed early",
                err == 0 ? "the server closed it" : strerror(-err));
    }
    *slot_of(conn) = NULL;
    if (--c->open > 0)
        return;
    if (!c->stopping) { /* every connection is gone early: no point in waiting */
        c->stopping = 1;
        c->elapsed_ms = ioloop_now_ms(ioloop_conn_loop(conn)) - c->started_ms;
    }
    ioloop_stop(ioloop_conn_loop(conn));
}

static void on_grace_over(ioloop_t *loop, void *arg)
{
    struct client *c = arg;

    fprintf(stderr, "echo_client: %d connection(s) did not close in time\n", c->open);
    c->failed += c->open;
    ioloop_stop(loop);
}

/* T seconds are up: count no more, close everything, stop when the last one closed. */
static void on_time_up(ioloop_t *loop, void *arg)
{
    struct client *c = arg;

    c->stopping = 1;
    c->elapsed_ms = ioloop_now_ms(loop) - c->started_ms;
    for (int i = 0; i < c->connections; i++)
        ioloop_conn_close(c->conns[i]); /* NULL (already closed) is ignored */
    if (c->open == 0)
        ioloop_stop(loop);
    else
        ioloop_run_after(loop, CLOSE_GRACE_MS, on_grace_over, c);
}

static int parse_options(int argc, char **argv, struct client *c)
{
    int opt;

    while ((opt = getopt(argc, argv, "a:c:s:t:")) != -1) {
        switch (opt) {
        case 'a': c->address = optarg; break;
        case 'c': c->connections = atoi(optarg); break;
        case 's': c->message = strtoul(optarg, NULL, 10); break;
        case 't': c->seconds = (unsigned)strtoul(optarg, NULL, 10); break;
        default: return -1;
        }
    }
    return c->connections < 1 || c->message < 1 || c->seconds < 1 || optind != argc ? -1 : 0;
}

int main(int argc, char **argv)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = on_open, .on_data = on_data, .on_close = on_close,
    };
    struct client c = {.address = "127.0.0.1:9000", .connections = 10, .message = 16,
                       .seconds = 5};
    ioloop_t *loop;
    double seconds;

    if (parse_options(argc, argv, &c) < 0) {
        fprintf(stderr, "usage: %s [-a ADDRESS] [-c CONNECTIONS] [-s MESSAGE_BYTES] "
                        "[-t SECONDS]\n", argv[0]);
        return 2;
    }
    loop = ioloop_new();
    c.conns = calloc((size_t)c.connections, sizeof *c.conns);
    if (loop == NULL || c.conns == NULL) {
        perror("echo_client");
        return 1;
    }
    c.started_ms = ioloop_now_ms(loop);
    for (int i = 0; i < c.connections; i++) {
        c.conns[i] = ioloop_connect(loop, c.address, &handlers, &c);
        if (c.conns[i] == NULL) {
            fprintf(stderr, "echo_client: connect %s: %s\n", c.address, strerror(errno));
            c.failed++;
            continue;
        }
        ioloop_conn_set_data(c.conns[i], &c.conns[i]);
        c.open++;
    }
    if (c.open > 0) {
        ioloop_run_after(loop, (uint64_t)c.seconds * 1000, on_time_up, &c);
        ioloop_start(loop);
    }
    ioloop_free(loop);
    free(c.conns);

    seconds = c.elapsed_ms > 0 ? (double)c.elapsed_ms / 1000.0 : 0.001;
    printf("echo_client: %d connections, %zu-byte messages, %.2f s: %" PRIu64
           " bytes received, %.2f MiB/s, %.0f messages/s\n", c.connections, c.message, seconds,
           c.received, (double)c.received / seconds / (1024.0 * 1024.0),
           (double)c.received / (double)c.message / seconds);
    if (c.opened < c.connections || c.failed > 0) {
        fprintf(stderr, "echo_client: %d of %d connections opened, %d failed\n", c.opened,
                c.connections, c.failed);
        return 1;
    }
    return 0;
}
