/*
 * prefork_server — an echo server in several processes: ioloop_prefork() starts WORKERS
 * worker processes and supervises them; each worker runs a pool of loops and an echo server
 * with a SO_REUSEPORT listener per loop on the same ADDRESS, so the kernel spreads clients
 * over every loop of every worker.
 *
 *   build/samples/prefork_server -w 2 -a 127.0.0.1:9000
 *
 * Then, from another shell (the supervisor's pid is printed first):
 *   kill -HUP <supervisor>     rolling restart: each worker is replaced in turn, the port
 *                              stays served
 *   kill -9 <a worker>         the supervisor starts a new one with the same index
 *   kill <supervisor>, Ctrl-C  every worker drains its server (open connections may finish,
 *                              for up to 5 s) and exits 0; then the supervisor returns
 *
 * Options: -w WORKERS (default 2), -a ADDRESS (default 127.0.0.1:9000; give a fixed port: with
 * port 0 every worker would pick one of its own), -n LOOPS per worker (default 1). Every
 * process logs to standard error through the logger, opened before the fork.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

/* How long a stopping worker lets its connections finish; below the supervisor's drain
 * timeout (10 s by default), after which it would be killed. */
#define DRAIN_MS 5000

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    ioloop_conn_write(conn, data, len);
    return len;
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    ioloop_stop(loop);
}

/* One worker: waits for SIGTERM/SIGINT in the main thread while the pool serves, then drains
 * the server and exits 0 (so that the supervisor does not restart it). */
static int worker(int index, const char *address, int nloops)
{
    static const ioloop_conn_handlers_t handlers = {.on_data = on_data};
    ioloop_server_t *server = NULL;
    ioloop_pool_t *pool = NULL;
    ioloop_t *main_loop = ioloop_new();
    int err = -ENOMEM, left;

    /* Signals before the pool, whose threads then never take them. */
    if (main_loop == NULL || (err = ioloop_add_signal(main_loop, SIGTERM, on_signal, NULL)) < 0 ||
        (err = ioloop_add_signal(main_loop, SIGINT, on_signal, NULL)) < 0)
        goto fail;
    if ((pool = ioloop_pool_new(nloops)) == NULL) {
        err = -errno;
        goto fail;
    }
    server = ioloop_server_new_opts(pool, address, &handlers, NULL,
                                    &(ioloop_server_options_t){.reuseport = 1});
    if (server == NULL)
        err = -errno;
    else
        err = ioloop_server_start(server);
    if (err < 0)
        goto fail;
    IOLOOP_LOG_INFO("worker %d (pid %d): echoing on %s with %d loops", index, (int)getpid(),
                    address, ioloop_pool_size(pool));

    ioloop_start(main_loop);

    left = ioloop_server_drain(server, DRAIN_MS);
    IOLOOP_LOG_INFO("worker %d (pid %d): drained; %d connections cut off", index,
                    (int)getpid(), left);
    ioloop_server_free(server);
    ioloop_pool_free(pool);
    ioloop_free(main_loop);
    return 0;
fail:
    IOLOOP_LOG_ERROR("worker %d (pid %d): cannot serve %s: %s", index, (int)getpid(), address,
                     strerror(-err));
    ioloop_server_free(server);
    ioloop_pool_free(pool);
    ioloop_free(main_loop);
    return 1; /* a crash for the supervisor: restarted with backoff, then given up */
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    int workers = 2, nloops = 1, index, rc, c;

    while ((c = getopt(argc, argv, "a:n:w:")) != -1) {
        switch (c) {
        case 'a': address = optarg; break;
        case 'n': nloops = atoi(optarg); break;
        case 'w': workers = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-w WORKERS] [-a ADDRESS] [-n LOOPS]\n", argv[0]);
            return 2;
        }
    }
    ioloop_log_open(NULL); /* its thread is the one ioloop_prefork() allows */
    IOLOOP_LOG_INFO("supervisor (pid %d): starting %d workers on %s", (int)getpid(), workers,
                    address);

    /* First, before any loop, pool or thread of our own. */
    rc = ioloop_prefork(workers, NULL, &index);
    if (rc < 0) {
        IOLOOP_LOG_ERROR("ioloop_prefork: %s", strerror(-rc));
        return 1;
    }
    if (rc == 0)
        return worker(index, address, nloops);
    IOLOOP_LOG_INFO("supervisor (pid %d): every worker has exited", (int)getpid());
    return 0;
}
