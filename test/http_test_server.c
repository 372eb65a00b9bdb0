/*
 * http_test_server — the HTTP server that test_http_clients.sh drives with real clients
 * (curl, wrk); written on the public API only.
 *
 *   GET  /plaintext   200 "Hello, World!" (text/plain)
 *   GET  /json        200 {"message":"Hello, World!"} (application/json)
 *   POST /echo        200 with the request body (and X-Body-Length: its length)
 *   GET  /stream      200, chunked: "chunk 0\n" ... "chunk 9\n"
 *   anything else     404
 *
 * Usage: http_test_server [-a ADDRESS] [-n LOOPS]. Prints "port N" once it listens; on
 * SIGTERM or SIGINT it drains (1 s), frees everything and exits with 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

static void handle(ioloop_http_request_t *req, void *user)
{
    static const char hello[] = "Hello, World!";
    static const char json[] = "{\"message\":\"Hello, World!\"}";
    const char *target = ioloop_http_target(req);

    if (strcmp(target, "/plaintext") == 0) {
        ioloop_http_add_header(req, "Content-Type", "text/plain");
        ioloop_http_respond(req, 200, hello, sizeof hello - 1);
    } else if (strcmp(target, "/json") == 0) {
        ioloop_http_add_header(req, "Content-Type", "application/json");
        ioloop_http_respond(req, 200, json, sizeof json - 1);
    } else if (strcmp(target, "/echo") == 0) {
        size_t len;
        const void *body = ioloop_http_body(req, &len);
        char n[32];

        snprintf(n, sizeof n, "%zu", len);
        ioloop_http_add_header(req, "X-Body-Length", n);
        ioloop_http_respond(req, 200, body, len);
    } else if (strcmp(target, "/stream") == 0) {
        ioloop_http_write_head(req, 200);
        for (int i = 0; i < 10; i++) {
            char line[16];
            int len = snprintf(line, sizeof line, "chunk %d\n", i);

            ioloop_http_write(req, line, (size_t)len);
        }
        ioloop_http_finish(req);
    } else {
        ioloop_http_respond(req, 404, NULL, 0);
    }
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    ioloop_stop(loop);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:0";
    int loops = 1, c, err;
    ioloop_http_server_t *server;
    ioloop_pool_t *pool;
    ioloop_t *main_loop;

    while ((c = getopt(argc, argv, "a:n:")) != -1) {
        if (c == 'a')
            address = optarg;
        else if (c == 'n')
            loops = atoi(optarg);
        else
            return 2;
    }
    main_loop = ioloop_new();
    if (main_loop == NULL || (err = ioloop_add_signal(main_loop, SIGINT, on_signal, NULL)) < 0 ||
        (err = ioloop_add_signal(main_loop, SIGTERM, on_signal, NULL)) < 0) {
        fprintf(stderr, "http_test_server: main loop failed\n");
        return 1;
    }
    pool = ioloop_pool_new(loops);
    server = pool != NULL ? ioloop_http_server_new(pool, address, handle, NULL, NULL) : NULL;
    if (server == NULL || (err = ioloop_http_server_start(server)) < 0) {
        fprintf(stderr, "http_test_server: cannot serve %s\n", address);
        return 1;
    }
    printf("port %d\n", ioloop_http_server_port(server));
    fflush(stdout);
    ioloop_start(main_loop);
    err = ioloop_http_server_drain(server, 1000);
    ioloop_http_server_free(server);
    ioloop_pool_free(pool);
    ioloop_free(main_loop);
    return err < 0 ? 1 : 0;
}
