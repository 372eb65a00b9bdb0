/*
 * The server: glue between the acceptor thread, the pool's loops and the connections.
 *
 *   acceptor thread: accept4 × up to 64 ─▶ one batch of fds per target loop (round-robin)
 *                    ─▶ ioloop_add_callback(loop i, adopt, batch)      (one post per loop)
 *   loop i:          adopt ─▶ a connection per fd, in loop i's connection table
 *   any thread:      server_send / server_call (id) ─▶ the id names loop i and a slot:
 *                    is it open? (atomics, no lock) ─▶ ioloop_add_callback(loop i, ...)
 *
 * The server is its connections' class (struct ioloop_conn_class): their handlers, user
 * pointer and limits, and the hooks through which a connection reports that it stopped being
 * open and that it is gone. `live` counts every fd from its hand-off to the end of its
 * connection's on_close; ioloop_server_free() stops the acceptor, asks each loop to close the
 * server's connections with -ECANCELED, and waits for `live` to reach zero.
 */
#include <ioloop/server.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop/log.h>

#include "core/pool.h"
#include "core/strerror.h"
#include "net/acceptor.h"
#include "net/conn.h"
#include "net/conns.h"

struct server_counters {
    _Atomic uint64_t accepted;
    _Atomic uint64_t open;
    _Atomic uint64_t refused;
    _Atomic uint64_t send_dropped;
};

/* Accepted fds on their way to one loop. */
struct batch {
    ioloop_server_t *server;
    int n;
    int fds[];
};

struct ioloop_server {
    struct ioloop_conn_class cls;   /* its connections'; cls.owner is the server itself */
    ioloop_pool_t *pool;
    struct ioloop_pool_user pool_user; /* attached to the pool until freed or detached */
    atomic_bool detached;           /* the pool was freed first: nothing left to reach */
    struct ioloop_acceptor acceptor;
    struct batch **batches;         /* the acceptor thread's: one being filled per loop */
    atomic_bool closing;            /* ioloop_server_free() began: adopt nothing more */
    _Atomic uint64_t live;          /* fds handed off whose connection is not gone yet */
    pthread_mutex_t lock;           /* with gone_cond: ioloop_server_free() waits for live */
    pthread_cond_t gone_cond;
    struct server_counters stats;
};

/* Bytes on their way to a connection's loop, or a call to run there. */
struct send_msg {
    ioloop_server_t *server;
    uint64_t id;
    size_t len;
    char data[];
};

struct call_msg {
    ioloop_server_t *server;
    uint64_t id;
    ioloop_conn_call_fn fn;
    void *arg;
};

static void counter_add(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

/* One fd or connection fewer; the server may be freed as soon as the last one is gone. */
static void live_drop(ioloop_server_t *server)
{
    if (atomic_fetch_sub_explicit(&server->live, 1, memory_order_acq_rel) != 1)
        return;
    pthread_mutex_lock(&server->lock);
    pthread_cond_broadcast(&server->gone_cond);
    pthread_mutex_unlock(&server->lock);
}

/* ---- The connections' hooks ------------------------------------------------------------- */

static void conn_closing(ioloop_conn_t *conn)
{
    ioloop_server_t *server = conn->cls->owner;

    atomic_fetch_sub_explicit(&server->stats.open, 1, memory_order_relaxed);
}

static void conn_gone(const struct ioloop_conn_class *cls)
{
    live_drop(cls->owner);
}

/* ---- Accepting -------------------------------------------------------------------------- */

/* In the loop: a connection for each fd, unless the server is going away. */
static void on_adopt(ioloop_t *loop, void *arg)
{
    struct batch *batch = arg;
    ioloop_server_t *server = batch->server;

    for (int i = 0; i < batch->n; i++) {
        int fd = batch->fds[i];

        if (!atomic_load_explicit(&server->closing, memory_order_acquire)) {
            counter_add(&server->stats.accepted, 1);
            counter_add(&server->stats.open, 1);
            if (ioloop__conn_open(loop, fd, &server->cls, false) != NULL)
                continue;
            atomic_fetch_sub_explicit(&server->stats.accepted, 1, memory_order_relaxed);
            atomic_fetch_sub_explicit(&server->stats.open, 1, memory_order_relaxed);
            IOLOOP_LOG_WARN("server: cannot open an accepted connection: %s; closed it",
                            ioloop__strerror(errno));
        }
        close(fd);
        live_drop(server); /* the fds after this one still count, so server stays valid */
    }
    free(batch);
}

/* In the acceptor thread: split the accepted fds among the loops, one post per loop. */
static void on_accept(const int *fds, int n, void *arg)
{
    ioloop_server_t *server = arg;
    int nloops = ioloop_pool_size(server->pool);

    atomic_fetch_add_explicit(&server->live, (uint64_t)n, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        int index;
        struct batch *b;

        ioloop__pool_next(server->pool, &index);
        b = server->batches[index];
        if (b == NULL) {
            b = malloc(sizeof *b + (size_t)n * sizeof b->fds[0]);
            if (b == NULL) {
                IOLOOP_LOG_WARN("server: out of memory for accepted connections; closed one");
                close(fds[i]);
                live_drop(server);
                continue;
            }
            b->server = server;
            b->n = 0;
            server->batches[index] = b;
        }
        b->fds[b->n++] = fds[i];
    }
    for (int index = 0; index < nloops; index++) {
        struct batch *b = server->batches[index];
        int err;

        if (b == NULL)
            continue;
        server->batches[index] = NULL;
        if ((err = ioloop_add_callback(ioloop_pool_loop(server->pool, index), on_adopt, b)) < 0) {
            IOLOOP_LOG_WARN("server: loop %d refused %d connection(s) (%s); closed them", index,
                            b->n, ioloop__strerror(err));
            for (int i = 0; i < b->n; i++) {
                close(b->fds[i]);
                live_drop(server);
            }
            free(b);
        }
    }
}

/* ---- Servers ---------------------------------------------------------------------------- */

/* ioloop_pool_free() before ioloop_server_free(): stop accepting while the loops still run;
 * the loops' ioloop_free() then closes the connections, and ioloop_server_free() only has the
 * server itself left to free. */
static void on_pool_freed(struct ioloop_pool_user *user)
{
    ioloop_server_t *server = ioloop__container_of(user, ioloop_server_t, pool_user);

    atomic_store_explicit(&server->detached, true, memory_order_release);
    ioloop__acceptor_close(&server->acceptor);
}

ioloop_server_t *ioloop_server_new(ioloop_pool_t *pool, const char *address,
                                   const ioloop_conn_handlers_t *handlers, void *user)
{
    struct ioloop_address addr;
    ioloop_server_t *server;
    int err;

    if (pool == NULL || handlers == NULL || handlers->on_data == NULL ||
        ioloop__address_parse(address, &addr) < 0) {
        errno = EINVAL;
        return NULL;
    }
    server = calloc(1, sizeof *server);
    if (server == NULL)
        return NULL;
    server->batches = calloc((size_t)ioloop_pool_size(pool), sizeof *server->batches);
    if (server->batches == NULL) {
        free(server);
        errno = ENOMEM;
        return NULL;
    }
    server->cls = (struct ioloop_conn_class){
        .handlers = *handlers,
        .user = user,
        .max_input = IOLOOP_CONN_MAX_INPUT,
        .max_output = IOLOOP_CONN_MAX_OUTPUT,
        .owner = server,
        .closing = conn_closing,
        .gone = conn_gone,
    };
    server->pool = pool;
    server->pool_user.detach = on_pool_freed;
    server->acceptor.on_accept = on_accept;
    server->acceptor.arg = server;
    if ((err = ioloop__acceptor_listen(&server->acceptor, &addr)) < 0) {
        free(server->batches);
        free(server);
        errno = -err;
        return NULL;
    }
    pthread_mutex_init(&server->lock, NULL);
    pthread_cond_init(&server->gone_cond, NULL);
    ioloop__pool_attach(pool, &server->pool_user);
    return server;
}

int ioloop_server_start(ioloop_server_t *server)
{
    if (server == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&server->detached, memory_order_acquire))
        return -ESHUTDOWN;
    if (server->acceptor.started)
        return -EALREADY;
    return ioloop__acceptor_start(&server->acceptor);
}

int ioloop_server_port(const ioloop_server_t *server)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (server == NULL || !server->acceptor.tcp)
        return -EINVAL;
    if (getsockname(server->acceptor.fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

void ioloop_server_get_stats(const ioloop_server_t *server, ioloop_server_stats_t *out)
{
    if (server == NULL || out == NULL)
        return;
    out->accepted = atomic_load_explicit(&server->stats.accepted, memory_order_relaxed);
    out->open = atomic_load_explicit(&server->stats.open, memory_order_relaxed);
    out->refused = atomic_load_explicit(&server->stats.refused, memory_order_relaxed);
    out->send_dropped = atomic_load_explicit(&server->stats.send_dropped, memory_order_relaxed);
}

/* ---- Reaching a connection from any thread ---------------------------------------------- */

/* The loop of the server's open connection `id`, or NULL. */
static ioloop_t *route(ioloop_server_t *server, uint64_t id)
{
    ioloop_t *loop;

    if (atomic_load_explicit(&server->detached, memory_order_acquire))
        return NULL;
    loop = ioloop__pool_loop_by_uid(server->pool, ioloop__conn_id_uid(id));
    return loop != NULL && ioloop__conns_is_open(loop, id, server) ? loop : NULL;
}

/* In the connection's loop: write the bytes if the connection is still open. Bytes that
 * cannot be written are counted; a connection that cannot take them closes, so that its
 * stream never goes on with a hole. */
static void on_send(ioloop_t *loop, void *arg)
{
    struct send_msg *msg = arg;
    ioloop_conn_t *conn = ioloop__conns_find(loop, msg->id, msg->server);
    int err = conn != NULL ? ioloop_conn_write(conn, msg->data, msg->len) : -ENOENT;

    if (err < 0) {
        counter_add(&msg->server->stats.send_dropped, msg->len);
        if (conn != NULL)
            ioloop__conn_abort(conn, err);
    }
    free(msg);
}

int ioloop_server_send(ioloop_server_t *server, uint64_t conn_id, const void *data, size_t len)
{
    struct send_msg *msg;
    ioloop_t *loop;
    int err;

    if (server == NULL || (data == NULL && len > 0))
        return -EINVAL;
    if ((loop = route(server, conn_id)) == NULL)
        return -ENOENT;
    msg = malloc(sizeof *msg + len);
    if (msg == NULL)
        return -ENOMEM;
    msg->server = server;
    msg->id = conn_id;
    msg->len = len;
    if (len > 0)
        memcpy(msg->data, data, len);
    if ((err = ioloop_add_callback(loop, on_send, msg)) < 0)
        free(msg);
    return err;
}

static void on_call(ioloop_t *loop, void *arg)
{
    struct call_msg msg = *(struct call_msg *)arg;

    free(arg);
    msg.fn(ioloop__conns_find(loop, msg.id, msg.server), msg.arg);
}

int ioloop_server_call(ioloop_server_t *server, uint64_t conn_id, ioloop_conn_call_fn fn,
                       void *arg)
{
    struct call_msg *msg;
    ioloop_t *loop;
    int err;

    if (server == NULL || fn == NULL)
        return -EINVAL;
    if ((loop = route(server, conn_id)) == NULL)
        return -ENOENT;
    msg = malloc(sizeof *msg);
    if (msg == NULL)
        return -ENOMEM;
    *msg = (struct call_msg){server, conn_id, fn, arg};
    if ((err = ioloop_add_callback(loop, on_call, msg)) < 0)
        free(msg);
    return err;
}

/* ---- Teardown --------------------------------------------------------------------------- */

static void cancel_if_ours(ioloop_conn_t *conn, void *server)
{
    if (conn->cls->owner == server)
        ioloop__conn_abort(conn, -ECANCELED);
}

/* In each loop: close the server's connections. */
static void on_close_all(ioloop_t *loop, void *arg)
{
    ioloop__conns_each(loop, cancel_if_ours, arg);
}

static void server_release(ioloop_server_t *server)
{
    pthread_cond_destroy(&server->gone_cond);
    pthread_mutex_destroy(&server->lock);
    free(server->batches);
    free(server);
}

void ioloop_server_free(ioloop_server_t *server)
{
    bool wait = true;

    if (server == NULL)
        return;
    if (atomic_load_explicit(&server->detached, memory_order_acquire)) {
        server_release(server); /* its pool's ioloop_free() closed every connection */
        return;
    }
    for (int i = 0; i < ioloop_pool_size(server->pool); i++) {
        if (ioloop_current() == ioloop_pool_loop(server->pool, i)) {
            fprintf(stderr, "ioloop_server_free: called from loop %d of the server's pool, "
                            "which it would wait for\n", i);
            abort();
        }
    }
    ioloop__pool_detach(server->pool, &server->pool_user);
    atomic_store_explicit(&server->closing, true, memory_order_release);
    ioloop__acceptor_close(&server->acceptor); /* joins: every hand-off is queued by now */

    for (int i = 0; i < ioloop_pool_size(server->pool); i++) {
        int err = ioloop_add_callback(ioloop_pool_loop(server->pool, i), on_close_all, server);

        if (err < 0) {
            IOLOOP_LOG_ERROR("server_free: loop %d is not running (%s); its connections "
                             "stay open and the server is not freed", i, ioloop__strerror(err));
            wait = false;
        }
    }
    if (!wait)
        return; /* connections still point at the server: keep it rather than free it */
    pthread_mutex_lock(&server->lock);
    while (atomic_load_explicit(&server->live, memory_order_acquire) > 0)
        pthread_cond_wait(&server->gone_cond, &server->lock);
    pthread_mutex_unlock(&server->lock);
    server_release(server);
}
