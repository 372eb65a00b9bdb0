/*
 * accept_event — libevent's low-level responder in the connection-per-request suite
 * (suite_accept.sh): an evconnlistener accepts, each connection is a socket bufferevent, and
 * once the input holds the blank line that ends the request's header block the read callback
 * drains it, writes a fixed HTTP/1.0 reply and stops reading; the write callback, which
 * libevent runs when the output buffer has drained to the socket, frees the bufferevent and
 * with it closes the socket. EOF or an error before that frees it too.
 *
 * TCP_NODELAY is not set: the reply is a single write on an idle connection, which Nagle's
 * algorithm sends at once (see accept_uv.c). SIGINT/SIGTERM break the loop.
 *
 *   build/test/bench/accept_event -a 127.0.0.1:9000
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "bench_common.h"

static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

static void on_written(struct bufferevent *bev, void *arg)
{
    bufferevent_free(bev); /* BEV_OPT_CLOSE_ON_FREE closes the socket */
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);

    if (end.pos < 0)
        return; /* the header block goes on in the next read */
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, on_written, NULL, NULL);
    bufferevent_write(bev, reply, sizeof reply - 1);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_free(bev);
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct bufferevent *bev;

    bev = bufferevent_socket_new(evconnlistener_get_base(listener), fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        evutil_closesocket(fd);
        return;
    }
    bufferevent_setcb(bev, on_read, NULL, on_event, NULL);
    bufferevent_enable(bev, EV_READ);
}

static void on_signal(evutil_socket_t signo, short what, void *arg)
{
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:9000";
    struct evconnlistener *listener;
    struct event *sigint, *sigterm;
    struct event_base *base;
    struct sockaddr_in sin;
    int opt;

    while ((opt = getopt(argc, argv, "a:")) != -1) {
        if (opt != 'a') {
            fprintf(stderr, "usage: %s [-a IPV4:PORT]\n", argv[0]);
            return 2;
        }
        address = optarg;
    }
    if (bench_parse_address(address, &sin) < 0) {
        fprintf(stderr, "accept_event: bad address %s (want IPV4:PORT)\n", address);
        return 2;
    }
    /* Writes use write(), which raises SIGPIPE on a connection the peer closed. */
    signal(SIGPIPE, SIG_IGN);
    if ((base = event_base_new()) == NULL) {
        fprintf(stderr, "accept_event: event_base_new failed\n");
        return 1;
    }
    listener = evconnlistener_new_bind(base, on_accept, NULL,
                                       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, BENCH_BACKLOG,
                                       (struct sockaddr *)&sin, sizeof sin);
    if (listener == NULL) {
        perror("accept_event: cannot listen");
        return 1;
    }
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    if (sigint == NULL || sigterm == NULL || event_add(sigint, NULL) < 0 ||
        event_add(sigterm, NULL) < 0) {
        fprintf(stderr, "accept_event: cannot watch signals\n");
        return 1;
    }
    printf("accept_event: listening on %s (libevent %s, %s)\n", address, event_get_version(),
           event_base_get_method(base));
    fflush(stdout); /* scripts wait for this line */
    event_base_dispatch(base);
    event_free(sigint);
    event_free(sigterm);
    evconnlistener_free(listener);
    event_base_free(base);
    return 0;
}
