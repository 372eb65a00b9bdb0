/*
 * A loop's c-ares channel. c-ares tells us which sockets it wants watched (its socket state
 * callback): they go into the loop's handler table as the library's own handlers, and their
 * events go back to ares_process_fd(). Its timeouts run on one loop timer, armed again from
 * ares_timeout() after every step that can change them (a lookup started, sockets or the
 * timer processed). No thread and no blocking call: c-ares only reads its configuration
 * files when the channel is made, and /etc/hosts when it looks a name up there.
 *
 * c-ares 1.18 answers ares_getaddrinfo() for a name in /etc/hosts inside the call, and every
 * query once more when it is cancelled or the channel destroyed; resolve.c defers every
 * answer, so none of that reaches an application callback early or twice.
 */
#include "net/resolve.h"

#include <arpa/inet.h>
#include <ares.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct ioloop_channel {
    ioloop_t *loop;
    ares_channel ares;
    int64_t timer;      /* runs c-ares's timeouts; 0: none armed */
    int *fds;           /* the sockets c-ares has in the loop's handler table */
    size_t nfds;
    size_t fds_cap;
};

/* c-ares's status as a negative errno (API: include/ioloop/resolve.h). */
static int status_errno(int status)
{
    switch (status) {
    case ARES_SUCCESS:
        return 0;
    case ARES_ENOTFOUND: /* NXDOMAIN, or not in /etc/hosts */
    case ARES_ENODATA:   /* the name exists but has no address */
        return -ENOENT;
    case ARES_ETIMEOUT:
        return -ETIMEDOUT;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return -ECANCELED;
    case ARES_EBADNAME:
    case ARES_EBADSTR:
    case ARES_EBADFAMILY:
    case ARES_EBADFLAGS:
        return -EINVAL;
    case ARES_ENOMEM:
        return -ENOMEM;
    case ARES_ECONNREFUSED: /* no server could be reached */
        return -ECONNREFUSED;
    default: /* SERVFAIL, REFUSED, a malformed answer, a configuration file unreadable... */
        return -EIO;
    }
}

static void arm(struct ioloop_channel *ch);

static void on_socket(ioloop_t *loop, int fd, int events, void *arg)
{
    struct ioloop_channel *ch = arg;

    /* An error or hangup comes with the bits we watch: c-ares's read or write meets it. */
    ares_process_fd(ch->ares, (events & IOLOOP_READ) ? fd : ARES_SOCKET_BAD,
                    (events & IOLOOP_WRITE) ? fd : ARES_SOCKET_BAD);
    arm(ch);
}

static void on_timeout(ioloop_t *loop, void *arg)
{
    struct ioloop_channel *ch = arg;

    ch->timer = 0;
    ares_process_fd(ch->ares, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts only */
    arm(ch);
}

/*
 * The loop timer follows c-ares's next timeout; none while nothing is in flight. The first
 * arming can fail only for lack of memory (re-arming reuses the slot cancelling just freed);
 * then the lookups' timeouts wait for the next socket event or lookup, which tries again.
 */
static void arm(struct ioloop_channel *ch)
{
    struct timeval tv;
    uint64_t ms;
    int64_t timer;

    if (ch->timer > 0)
        ioloop_cancel_timer(ch->loop, ch->timer);
    ch->timer = 0;
    if (ares_timeout(ch->ares, NULL, &tv) == NULL)
        return;
    /* Rounded up: a timer never fires early, so c-ares finds the timeout due when it runs. */
    ms = (uint64_t)tv.tv_sec * 1000u + ((uint64_t)tv.tv_usec + 999u) / 1000u;
    timer = ioloop_run_after(ch->loop, ms, on_timeout, ch);
    ch->timer = timer > 0 ? timer : 0;
}

static size_t fd_index(const struct ioloop_channel *ch, int fd)
{
    size_t i = 0;

    while (i < ch->nfds && ch->fds[i] != fd)
        i++;
    return i;
}

/*
 * c-ares's socket state callback: a socket to watch for reading and/or writing, or, with
 * neither, one it is about to close. A socket the loop cannot take (no memory) stays
 * unwatched: c-ares's timeout ends what waits on it.
 */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct ioloop_channel *ch = data;
    uint32_t events = (readable ? IOLOOP_READ : 0u) | (writable ? IOLOOP_WRITE : 0u);
    size_t i = fd_index(ch, fd);

    if (events == 0) {
        if (i < ch->nfds) {
            ioloop__handler_del_now(ch->loop, fd); /* closed next: forget it in epoll now */
            ch->fds[i] = ch->fds[--ch->nfds];
        }
        return;
    }
    if (i < ch->nfds) {
        (void)ioloop__handler_set(ch->loop, fd, events); /* fails only without memory */
        return;
    }
    if (ch->nfds == ch->fds_cap) {
        size_t cap = ch->fds_cap > 0 ? 2 * ch->fds_cap : 4;
        int *fds = realloc(ch->fds, cap * sizeof *fds);

        if (fds == NULL)
            return;
        ch->fds = fds;
        ch->fds_cap = cap;
    }
    if (ioloop__handler_add(ch->loop, fd, events | IOLOOP__HANDLER_INTERNAL, on_socket, ch) == 0)
        ch->fds[ch->nfds++] = fd;
}

int ioloop__channel_new(ioloop_t *loop, struct ioloop_channel **out)
{
    struct ioloop_channel *ch = calloc(1, sizeof *ch);
    struct ares_options options;
    int status;

    if (ch == NULL)
        return -ENOMEM;
    ch->loop = loop;
    memset(&options, 0, sizeof options);
    options.sock_state_cb = on_sock_state;
    options.sock_state_cb_data = ch;
    /* Everything else as the system says: resolv.conf, RES_OPTIONS, LOCALDOMAIN, hosts. */
    status = ares_init_options(&ch->ares, &options, ARES_OPT_SOCK_STATE_CB);
    if (status != ARES_SUCCESS) {
        free(ch);
        return status_errno(status);
    }
    *out = ch;
    return 0;
}

/* c-ares's answer to one lookup: its IPv4 and IPv6 addresses, in c-ares's order. */
static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    struct ioloop_lookup *lk = arg;
    int err = status_errno(status);
    struct ares_addrinfo_node *node;
    union ioloop_inet *room;
    size_t n = 0;

    for (node = res != NULL ? res->nodes : NULL; err == 0 && node != NULL; node = node->ai_next)
        if (node->ai_family == AF_INET || node->ai_family == AF_INET6)
            n++;
    if (n > 0) {
        if ((room = ioloop__lookup_room(lk, n)) == NULL)
            err = -ENOMEM;
        for (node = res->nodes; room != NULL && node != NULL; node = node->ai_next) {
            size_t len = node->ai_family == AF_INET ? sizeof room->in : sizeof room->in6;

            if (node->ai_family != AF_INET && node->ai_family != AF_INET6)
                continue;
            memset(room, 0, sizeof *room);
            memcpy(room, node->ai_addr, len);
            room++;
        }
    }
    if (res != NULL)
        ares_freeaddrinfo(res);
    ioloop__lookup_answered(lk, err);
}

void ioloop__channel_lookup(struct ioloop_channel *ch, const char *name,
                            struct ioloop_lookup *lk)
{
    struct ares_addrinfo_hints hints;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC; /* A and AAAA */
    hints.ai_socktype = SOCK_STREAM;
    ares_getaddrinfo(ch->ares, name, NULL, &hints, on_addrinfo, lk);
    arm(ch);
}

int ioloop__channel_set_servers(struct ioloop_channel *ch, const char *servers)
{
    int status = ares_set_servers_ports_csv(ch->ares, servers);

    return status == ARES_ENOTIMP ? -EBUSY : status_errno(status);
}

void ioloop__channel_cancel(struct ioloop_channel *ch)
{
    ares_cancel(ch->ares);
    arm(ch);
}

void ioloop__channel_free(struct ioloop_channel *ch)
{
    if (ch == NULL)
        return;
    ares_destroy(ch->ares); /* answers what is in flight; closes its sockets, telling us */
    assert(ch->nfds == 0);
    if (ch->timer > 0)
        ioloop_cancel_timer(ch->loop, ch->timer);
    free(ch->fds);
    free(ch);
}

/* The first address of a hostent, as a socket address with `port`. */
static int from_hostent(const struct hostent *host, uint16_t port, struct ioloop_address *addr)
{
    int len = host->h_addrtype == AF_INET    ? (int)sizeof(struct in_addr)
              : host->h_addrtype == AF_INET6 ? (int)sizeof(struct in6_addr)
                                             : -1;

    if (host->h_addr_list[0] == NULL || host->h_length != len)
        return -ENOENT;
    return ioloop__address_set_ip(addr, host->h_addrtype, host->h_addr_list[0], port);
}

int ioloop__hosts_lookup(const char *name, uint16_t port, struct ioloop_address *addr)
{
    struct ares_options options;
    struct hostent *host = NULL;
    ares_channel ares;
    int status, err;

    /* ares_gethostbyname_file() wants a channel; reading the configuration for one asks no
     * server anything, and this one serves a single call, from any thread. */
    memset(&options, 0, sizeof options);
    if ((status = ares_init_options(&ares, &options, 0)) != ARES_SUCCESS)
        return status_errno(status);
    /* AF_UNSPEC: the first line that lists the name wins, whatever its family. */
    status = ares_gethostbyname_file(ares, name, AF_UNSPEC, &host);
    ares_destroy(ares);
    if (status != ARES_SUCCESS)
        return status_errno(status);
    err = from_hostent(host, port, addr);
    ares_free_hostent(host);
    return err;
}
