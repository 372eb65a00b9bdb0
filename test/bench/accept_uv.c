/*
 * accept_uv — the libuv server of the connection-per-request suite (suite_accept.sh): one
 * uv_loop_t, uv_listen() and uv_accept() into a uv_tcp_t, uv_read_start(), and once the
 * request's header block ended (the blank line) one uv_write() of a fixed HTTP/1.0 reply,
 * then uv_close() from the write's callback, as a libuv application closes after a response.
 *
 * The request is not parsed further: a four-state counter finds "\r\n\r\n" across reads, so
 * a request split over segments is still answered once. Reads land in one static buffer (the
 * loop consumes each read before the next). TCP_NODELAY is not set: the reply is a single
 * write on an idle connection, which Nagle's algorithm sends at once, so the setsockopt per
 * connection would only add cost (ioloop sets it once on its listener; nginx, with keep-alive
 * off, does not set it). SIGINT/SIGTERM stop the loop.
 *
 *   build/test/bench/accept_uv -a 127.0.0.1:9000
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <uv.h>

#include "bench_common.h"

static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

/* One connection: its handle, the reply's write request, and how much of the blank line
 * ending the header block has been seen. */
struct conn {
    uv_tcp_t tcp;
    uv_write_t write;
    int matched;      /* 0 .. 4 bytes of "\r\n\r\n"; 4: answered */
};

static char read_buf[4096]; /* a request line and a blank line fit many times over */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    *buf = uv_buf_init(read_buf, sizeof read_buf);
}

static void on_closed(uv_handle_t *handle)
{
    free(handle); /* the uv_tcp_t is the struct conn's first member */
}

static void on_written(uv_write_t *req, int status)
{
    uv_close((uv_handle_t *)req->handle, on_closed);
}

/* Advances the search for "\r\n\r\n" over data; returns 1 once it is complete. */
static int header_end(struct conn *c, const char *data, size_t len)
{
    static const char blank[] = "\r\n\r\n";

    for (size_t i = 0; i < len && c->matched < 4; i++) {
        if (data[i] == blank[c->matched])
            c->matched++;
        else
            c->matched = data[i] == '\r' ? 1 : 0;
    }
    return c->matched == 4;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)stream;
    uv_buf_t out = uv_buf_init((char *)reply, sizeof reply - 1);

    if (nread < 0) {                  /* UV_EOF before a whole request, or an error */
        uv_close((uv_handle_t *)stream, on_closed);
        return;
    }
    if (!header_end(c, buf->base, (size_t)nread))
        return;                       /* nread 0 (EAGAIN), or the header block goes on */
    uv_read_stop(stream);
    if (uv_write(&c->write, stream, &out, 1, on_written) < 0)
        uv_close((uv_handle_t *)stream, on_closed);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct conn *c;

    if (status < 0) {
        fprintf(stderr, "accept_uv: accept: %s\n", uv_strerror(status));
        return;
    }
    if ((c = calloc(1, sizeof *c)) == NULL)
        return;
    uv_tcp_init(server->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
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
        fprintf(stderr, "accept_uv: bad address %s (want IPV4:PORT)\n", address);
        return 2;
    }
    /* Writes use write(), which raises SIGPIPE on a connection the peer closed. */
    signal(SIGPIPE, SIG_IGN);
    uv_tcp_init(loop, &server);
    if ((err = uv_tcp_bind(&server, (const struct sockaddr *)&sin, 0)) < 0 ||
        (err = uv_listen((uv_stream_t *)&server, BENCH_BACKLOG, on_connection)) < 0) {
        fprintf(stderr, "accept_uv: cannot listen on %s: %s\n", address, uv_strerror(err));
        return 1;
    }
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    printf("accept_uv: listening on %s (libuv %s)\n", address, uv_version_string());
    fflush(stdout); /* scripts wait for this line */
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
