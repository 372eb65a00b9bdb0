/*
 * Outgoing connections: ioloop_connect() to a numeric address or to a host name. The
 * connection itself is conn.c's; this file gets it a socket. A numeric address connects at
 * once (the result comes through the handler, as for any connect in progress). A host name is
 * looked up first (lib/net/resolve.c), and its addresses are tried in turn.
 */
#include "net/conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/address.h"
#include "net/resolve.h"

/* The class of an outgoing connection, before it is copied into its own allocation. */
static struct ioloop_conn_class client_class(const ioloop_conn_handlers_t *handlers, void *user)
{
    return (struct ioloop_conn_class){
        .handlers = *handlers,
        .user = user,
        .max_input = IOLOOP_CONN_MAX_INPUT,
        .max_output = IOLOOP_CONN_MAX_OUTPUT,
    };
}

static ioloop_conn_t *connect_name(ioloop_t *loop, const struct ioloop_host *host,
                                   const ioloop_conn_handlers_t *handlers, void *user);

ioloop_conn_t *ioloop_connect(ioloop_t *loop, const char *address,
                              const ioloop_conn_handlers_t *handlers, void *user)
{
    struct ioloop_address addr;
    struct ioloop_host host;
    struct ioloop_conn_class *cls;
    ioloop_conn_t *conn;
    int fd, err, kind = -EINVAL, connect_err = 0;

    if (loop == NULL || handlers == NULL || handlers->on_data == NULL ||
        (kind = ioloop__address_parse_host(address, &addr, &host)) < 0) {
        errno = EINVAL;
        return NULL;
    }
    if ((err = ioloop__check_thread(loop)) < 0) {
        errno = -err;
        return NULL;
    }
    if (kind == IOLOOP__HOST_NAME)
        return connect_name(loop, &host, handlers, user);
    cls = malloc(sizeof *cls);
    if (cls == NULL)
        return NULL;
    *cls = client_class(handlers, user);
    fd = socket(addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        free(cls);
        return NULL;
    }
    if (addr.ss.ss_family != AF_UNIX)
        ioloop__socket_nodelay(fd);
    /* Even an immediate result goes through the handler (a connected socket is writable), so
     * on_open never runs before the caller has the connection. */
    if (connect(fd, (struct sockaddr *)&addr.ss, addr.len) < 0 && errno != EINPROGRESS)
        connect_err = errno == EAGAIN ? -ECONNREFUSED : -errno;
    conn = ioloop__conn_open(loop, fd, cls, IOLOOP__CONN_CONNECTING);
    if (conn == NULL) {
        err = errno;
        close(fd);
        free(cls);
        errno = err;
        return NULL;
    }
    if (connect_err < 0)
        ioloop__conn_abort(conn, connect_err); /* on_close reports it after this call */
    return conn;
}

/* ---- Host names ------------------------------------------------------------------------- */

/*
 * A connection to a name is connecting from the start but has no socket while its name is
 * looked up: writes are gathered, ioloop_conn_close() works as while connecting. Then each
 * address is tried in turn, on a socket of its own, until one connects; on_close gets the
 * last one's error if none does, or the lookup's (-ENOENT, -ETIMEDOUT, ...). The lookup and
 * the addresses live in the connection's private class, so the connection stays 88 bytes.
 */
struct named_class {
    struct ioloop_conn_class cls;
    ioloop_conn_t *conn;
    int64_t resolve_id;       /* the lookup in flight; 0: none */
    union ioloop_inet *addrs; /* the answer, tried in order */
    size_t naddrs;
    size_t next;              /* the next one to try */
};

static struct named_class *named(const ioloop_conn_t *conn)
{
    return (struct named_class *)(void *)conn->cls;
}

/* It connected or ended: the lookup and the addresses are of no more use. */
void ioloop__connect_done(ioloop_conn_t *conn)
{
    struct named_class *nc = named(conn);

    if (nc->resolve_id > 0)
        ioloop__resolve_drop(conn->loop, nc->resolve_id); /* its fn will never run */
    nc->resolve_id = 0;
    free(nc->addrs);
    nc->addrs = NULL;
    nc->naddrs = nc->next = 0;
}

/* Gives up the socket being tried, if any (it failed with err), and starts connecting to the
 * next address; with none left the connection ends with err. */
void ioloop__connect_next(ioloop_conn_t *conn, int err)
{
    struct named_class *nc = named(conn);

    ioloop__conn_detach(conn);
    while (nc->next < nc->naddrs) {
        const union ioloop_inet *a = &nc->addrs[nc->next++];
        socklen_t len = a->sa.sa_family == AF_INET6 ? sizeof a->in6 : sizeof a->in;
        int fd = socket(a->sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        if (fd < 0) {
            err = -errno;
            continue;
        }
        ioloop__socket_nodelay(fd);
        /* As for a numeric address, even an immediate result goes through the handler. */
        if (connect(fd, &a->sa, len) < 0 && errno != EINPROGRESS)
            err = errno == EAGAIN ? -ECONNREFUSED : -errno;
        else if ((err = ioloop__conn_attach(conn, fd)) == 0)
            return;
        close(fd);
    }
    ioloop__conn_abort(conn, err);
}

static void on_resolved(ioloop_t *loop, int err, const struct sockaddr *const *addrs,
                        size_t naddrs, void *arg)
{
    struct named_class *nc = arg;

    nc->resolve_id = 0;
    if (err == 0 && (nc->addrs = calloc(naddrs, sizeof *nc->addrs)) == NULL)
        err = -ENOMEM;
    if (err < 0) {
        ioloop__conn_abort(nc->conn, err);
        return;
    }
    for (size_t i = 0; i < naddrs; i++)
        memcpy(&nc->addrs[i], addrs[i],
               addrs[i]->sa_family == AF_INET6 ? sizeof nc->addrs[i].in6
                                               : sizeof nc->addrs[i].in);
    nc->naddrs = naddrs;
    nc->next = 0;
    ioloop__connect_next(nc->conn, -ENOENT); /* (an answer has at least one address) */
}

static ioloop_conn_t *connect_name(ioloop_t *loop, const struct ioloop_host *host,
                                   const ioloop_conn_handlers_t *handlers, void *user)
{
    struct named_class *nc = calloc(1, sizeof *nc);
    ioloop_conn_t *conn;
    int64_t id;
    int err;

    if (nc == NULL)
        return NULL;
    nc->cls = client_class(handlers, user);
    /* The answer never comes inside this call: the lookup may start before the connection
     * it is for exists, and then nothing needs undoing if it cannot start. */
    id = ioloop__resolve_start(loop, host->name, host->port, on_resolved, nc);
    if (id < 0) {
        free(nc);
        errno = (int)-id;
        return NULL;
    }
    conn = ioloop__conn_open(loop, -1, &nc->cls, IOLOOP__CONN_RESOLVING);
    if (conn == NULL) {
        err = errno;
        ioloop__resolve_drop(loop, id);
        free(nc);
        errno = err;
        return NULL;
    }
    nc->conn = conn;
    nc->resolve_id = id;
    return conn;
}
