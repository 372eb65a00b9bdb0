/*
 * pp_uv — the libuv echo server of the ping-pong and idle-connection suites: one uv_loop_t,
 * uv_tcp_t handles, uv_read_start() and a write of what was read.
 *
 * Reads land in one static 64 KiB buffer (a single-threaded loop consumes each read before the
 * next, as Node.js's shared read slab does), so an idle connection costs its uv_tcp_t alone.
 * The echo goes out with uv_try_write(); only the part the kernel does not take is copied into
 * a uv_write() request, which libuv queues behind any earlier one and frees in its callback —
 * uv_try_write() returns UV_EAGAIN while a write is queued, so the byte order holds.
 * SIGINT/SIGTERM stop the loop (uv_signal_t); open connections are left to exit().
 *
 *   build/test/bench/pp_uv -a 127.0.0.1:9000
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "bench_common.h"

#define READ_SIZE (64 * 1024)  /* the same read size as the other servers */

/* A queued write with its bytes inline; freed by on_write. */
struct write_req {
    uv_write_t req;
    char data[];
};

static char read_buf[READ_SIZE];

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    *buf = uv_buf_init(read_buf, sizeof read_buf);
}

static void on_closed(uv_handle_t *handle)
{
    free(handle);
}

static void on_write(uv_write_t *req, int status)
{
    /* A failed write shows up as a read error as well; that read closes the handle. */
    free(req);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct write_req *w;
    uv_buf_t out;
    int sent;

    if (nread < 0) {                  /* UV_EOF or an error */
        uv_close((uv_handle_t *)stream, on_closed);
        return;
    }
    if (nread == 0)                   /* EAGAIN */
        return;
    out = uv_buf_init(buf->base, (unsigned)nread);
    sent = uv_try_write(stream, &out, 1);
    if (sent == UV_EAGAIN)
        sent = 0;
    if (sent < 0) {
        uv_close((uv_handle_t *)stream, on_closed);
        return;
    }
    if (sent == nread)
        return;
    if ((w = malloc(sizeof *w + (size_t)(nread - sent))) == NULL) {
        uv_close((uv_handle_t *)stream, on_closed);
        return;
    }
    memcpy(w->data, buf->base + sent, (size_t)(nread - sent));
    out = uv_buf_init(w->data, (unsigned)(nread - sent));
    if (uv_write(&w->req, stream, &out, 1, on_write) < 0) {
        free(w);
        uv_close((uv_handle_t *)stream, on_closed);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    uv_tcp_t *client;

    if (status < 0) {
        fprintf(stderr, "pp_uv: accept: %s\n", uv_strerror(status));
        return;
    }
    if ((client = malloc(sizeof *client)) == NULL)
        return;
    uv_tcp_init(server->loop, client);
    if (uv_accept(server, (uv_stream_t *)client) < 0) {
        uv_close((uv_handle_t *)client, on_closed);
        return;
    }
    uv_tcp_nodelay(client, 1);
    uv_read_start((uv_stream_t *)client, on_alloc, on_read);
}

static void on_signal(uv_signal_t *handle, int signo)
{
    uv_stop(handle->loop);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    uv_loop_t *loop = uv_default_loop();
    uv_signal_t sigint, sigterm;
    struct sockaddr_in sin;
    uv_tcp_t server;
    int opt, err;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    if (bench_parse_address(address, &sin) < 0) {
        fprintf(stderr, "pp_uv: bad address %s (want IPV4:PORT)\n", address);
        return 2;
    }
    /* Writes use write(), which raises SIGPIPE on a connection the peer closed. */
    signal(SIGPIPE, SIG_IGN);
    uv_tcp_init(loop, &server);
    if ((err = uv_tcp_bind(&server, (const struct sockaddr *)&sin, 0)) < 0 ||
        (err = uv_listen((uv_stream_t *)&server, BENCH_BACKLOG, on_connection)) < 0) {
        fprintf(stderr, "pp_uv: cannot listen on %s: %s\n", address, uv_strerror(err));
        return 1;
    }
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    printf("pp_uv: listening on %s\n", address);
    fflush(stdout); /* scripts wait for this line */
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
