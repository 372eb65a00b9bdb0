/*
 * accept_evhttp — libevent's HTTP server (evhttp) in the connection-per-request suite
 * (suite_accept.sh) and the HTTP suite (suite_http.sh): one event_base, one evhttp on a
 * listening socket of its own (-a), and a generic callback that answers every request with
 * 200 and the body "Hello, World!". The headers are made to match nginx's (and ioloop's):
 * Content-Type is text/plain (evhttp's default would be "text/html; charset=ISO-8859-1"),
 * and Date and Content-Length, which evhttp adds to HTTP/1.1 replies only, are added to
 * HTTP/1.0 replies here. HTTP/1.1 keeps the connection alive and answers pipelined requests
 * in order, one at a time; an HTTP/1.0 request without keep-alive makes evhttp close the
 * connection once the reply went out. SIGINT/SIGTERM break the loop.
 *
 *   build/test/bench/accept_evhttp -a 127.0.0.1:9000
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* req->major, req->minor */
#include <event2/util.h>

#include "bench_common.h"

static const char body[] = "Hello, World!"; /* Content-Length: 13 */

static void on_request(struct evhttp_request *req, void *arg)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);

    if (req->major == 1 && req->minor == 0) {
        struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
        char date[64];

        evutil_date_rfc1123(date, sizeof date, NULL);
        evhttp_add_header(headers, "Date", date);
        evhttp_add_header(headers, "Content-Length", "13");
    }
    evbuffer_add_reference(out, body, sizeof body - 1, NULL, NULL);
    evhttp_send_reply(req, HTTP_OK, "OK", NULL);
}

static void on_signal(evutil_socket_t signo, short what, void *arg)
{
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    struct event *sigint, *sigterm;
    struct event_base *base;
    struct evhttp *http;
    int opt, fd;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    /* Writes use write(), which raises SIGPIPE on a connection the peer closed. */
    signal(SIGPIPE, SIG_IGN);
    if ((fd = bench_listen(address)) < 0) {
        fprintf(stderr, "accept_evhttp: cannot listen on %s (want IPV4:PORT)\n", address);
        return 1;
    }
    if ((base = event_base_new()) == NULL || (http = evhttp_new(base)) == NULL) {
        fprintf(stderr, "accept_evhttp: event_base_new or evhttp_new failed\n");
        return 1;
    }
    if (evhttp_accept_socket(http, fd) < 0) {
        fprintf(stderr, "accept_evhttp: evhttp_accept_socket failed\n");
        return 1;
    }
    evhttp_set_default_content_type(http, "text/plain");
    evhttp_set_gencb(http, on_request, NULL);
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    if (sigint == NULL || sigterm == NULL || event_add(sigint, NULL) < 0 ||
        event_add(sigterm, NULL) < 0) {
        fprintf(stderr, "accept_evhttp: cannot watch signals\n");
        return 1;
    }
    printf("accept_evhttp: listening on %s (libevent %s, %s)\n", address, event_get_version(),
           event_base_get_method(base));
    fflush(stdout); /* scripts wait for this line */
    event_base_dispatch(base);
    event_free(sigint);
    event_free(sigterm);
    evhttp_free(http); /* closes the listening socket too */
    event_base_free(base);
    return 0;
}
