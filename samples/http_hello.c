/*
 * http_hello — TechEmpower's plaintext and json tests on ioloop's HTTP server:
 *
 *   GET /plaintext  ->  "Hello, World!"                  (text/plain)
 *   GET /json       ->  {"message":"Hello, World!"}      (application/json)
 *   anything else   ->  404
 *
 *   build/samples/http_hello -a 127.0.0.1:8080 -n 2      (then: curl localhost:8080/json,
 *                                                          or wrk -t1 -c100 -d5s ...)
 *
 * Options: -a ADDRESS (default 127.0.0.1:8080), -n LOOPS (default 1; 0: one per CPU), -r
 * (reuseport: a listener per loop), -w WORKERS (prefork worker processes, each with
 * reuseport listeners on ADDRESS — give a fixed port; SIGTERM drains them), -t SECONDS (stop
 * after that long). The main thread's loop waits for SIGINT/SIGTERM; then the server drains
 * (what is in progress finishes, idle keep-alive connections close) and everything is freed.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

/* How long open connections get to finish when the server stops. */
#define DRAIN_MS 2000

static const char hello[] = "Hello, World!";
static const char json[] = "{\"message\":\"Hello, World!\"}";

static void handle(ioloop_http_request_t *req, void *user)
{
    const char *target = ioloop_http_target(req);

    if (strcmp(target, "/plaintext") == 0) {
        ioloop_http_add_header(req, "Content-Type", "text/plain");
        ioloop_http_respond(req, 200, hello, sizeof hello - 1);
    } else if (strcmp(target, "/json") == 0) {
        ioloop_http_add_header(req, "Content-Type", "application/json");
        ioloop_http_respond(req, 200, json, sizeof json - 1);
    } else {
        ioloop_http_respond(req, 404, NULL, 0);
    }
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    ioloop_stop(loop);
}

static void on_time_up(ioloop_t *loop, void *arg)
{
    ioloop_stop(loop);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:8080";
    int loops = 1, workers = 0, reuseport = 0, c, index;
    unsigned seconds = 0;
    ioloop_http_server_t *server;
    ioloop_pool_t *pool;
    ioloop_t *main_loop;

    while ((c = getopt(argc, argv, "a:n:rt:w:")) != -1) {
        switch (c) {
        case 'a': address = optarg; break;
        case 'n': loops = atoi(optarg); break;
        case 'r': reuseport = 1; break;
        case 't': seconds = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'w': workers = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-a ADDRESS] [-n LOOPS] [-r] [-w WORKERS] [-t SECONDS]\n",
                    argv[0]);
            return 2;
        }
    }
    if (workers > 0) {
        /* Before any loop or thread: the supervisor returns 1 when every worker is done. */
        int rc = ioloop_prefork(workers, NULL, &index);

        if (rc != 0) {
            if (rc < 0)
                fprintf(stderr, "http_hello: ioloop_prefork: %s\n", strerror(-rc));
            return rc < 0;
        }
        reuseport = 1;
    }

    main_loop = ioloop_new();
    if (main_loop == NULL || ioloop_add_signal(main_loop, SIGINT, on_signal, NULL) < 0 ||
        ioloop_add_signal(main_loop, SIGTERM, on_signal, NULL) < 0) {
        fprintf(stderr, "http_hello: cannot set up the main loop\n");
        return 1;
    }
    if (seconds > 0)
        ioloop_run_after(main_loop, (uint64_t)seconds * 1000, on_time_up, NULL);
    pool = ioloop_pool_new(loops);
    server = pool != NULL ? ioloop_http_server_new(pool, address, handle, NULL,
                                                   &(ioloop_http_options_t){
                                                       .server.reuseport = reuseport,
                                                   })
                          : NULL;
    if (server == NULL || (errno = -ioloop_http_server_start(server)) != 0) {
        fprintf(stderr, "http_hello: cannot serve %s: %s\n", address, strerror(errno));
        ioloop_http_server_free(server);
        ioloop_pool_free(pool);
        ioloop_free(main_loop);
        return 1;
    }
    printf("http_hello: listening on %s (port %d), %d loop(s)%s\n", address,
           ioloop_http_server_port(server), ioloop_pool_size(pool),
           reuseport ? ", reuseport" : "");
    fflush(stdout); /* scripts wait for this line */

    ioloop_start(main_loop);

    ioloop_http_server_drain(server, DRAIN_MS);
    ioloop_http_server_free(server);
    ioloop_pool_free(pool);
    ioloop_free(main_loop);
    return 0;
}
