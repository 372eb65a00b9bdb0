/*
 * accept_ioloop — ioloop's server of the connection-per-request suite (suite_accept.sh), on
 * the public API only: a pool of one loop and a server with default options (the acceptor
 * thread accepts and hands the connections to the pool's loop), or with -r one SO_REUSEPORT
 * listener in the pool's loop itself (no acceptor thread, no hand-off).
 *
 * Every connection gets one fixed HTTP/1.0 reply once its request's header block ended (the
 * blank line), written with one ioloop_conn_write() and followed by ioloop_conn_close(): the
 * library sends the reply, shuts the socket down for writing and closes it at the client's
 * EOF. The request is not parsed further; bytes before the blank line are kept by returning 0
 * from on_data until it came. The main thread runs a loop of its own that only waits for
 * SIGINT/SIGTERM; then the server and the pool are freed.
 *
 *   build/test/bench/accept_ioloop -a 127.0.0.1:9000 [-r]
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h> /* memmem: the build defines _GNU_SOURCE */
#include <unistd.h>

#include <ioloop.h>

static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    if (memmem(data, len, "\r\n\r\n", 4) == NULL)
        return 0; /* the header block goes on in the next read */
    ioloop_conn_write(conn, reply, sizeof reply - 1);
    ioloop_conn_close(conn);
    return len;
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    ioloop_stop(loop);
}

int main(int argc, char **argv)
{
    static const ioloop_conn_handlers_t handlers = {.on_data = on_data};
    ioloop_server_options_t options = {0};
    const char *address = "127.0.0.1:9000";
    ioloop_server_t *server;
    ioloop_pool_t *pool;
    ioloop_t *main_loop;
    int opt, err;

    while ((opt = getopt(argc, argv, "a:r")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'r': options.reuseport = 1; break;
        default:
            fprintf(stderr, "usage: %s [-a ADDRESS] [-r]\n", argv[0]);
            return 2;
        }
    }
    /* Signals first: the pool's and the acceptor's threads are created after the mask is set,
     * so SIGINT and SIGTERM reach only the main loop's signalfd. */
    if ((main_loop = ioloop_new()) == NULL) {
        perror("accept_ioloop: ioloop_new");
        return 1;
    }
    if ((err = ioloop_add_signal(main_loop, SIGINT, on_signal, NULL)) < 0 ||
        (err = ioloop_add_signal(main_loop, SIGTERM, on_signal, NULL)) < 0) {
        fprintf(stderr, "accept_ioloop: ioloop_add_signal: %s\n", strerror(-err));
        return 1;
    }
    if ((pool = ioloop_pool_new(1)) == NULL) {
        perror("accept_ioloop: ioloop_pool_new");
        return 1;
    }
    server = ioloop_server_new_opts(pool, address, &handlers, NULL, &options);
    if (server == NULL || (errno = -ioloop_server_start(server)) != 0) {
        fprintf(stderr, "accept_ioloop: cannot serve %s: %s\n", address, strerror(errno));
        ioloop_server_free(server);
        ioloop_pool_free(pool);
        ioloop_free(main_loop);
        return 1;
    }
    printf("accept_ioloop: listening on %s (port %d), %s\n", address, ioloop_server_port(server),
           options.reuseport ? "reuseport listener in the loop" : "acceptor thread");
    fflush(stdout); /* scripts wait for this line */

    ioloop_start(main_loop);

    ioloop_server_free(server);
    ioloop_pool_free(pool);
    ioloop_free(main_loop);
    return 0;
}
