/*
 * The server: glue between the acceptor thread, the pool's loops and the connections.
 *
 *   acceptor thread: accept4 ─▶ conn_new (fd, id tagged with the loop's index)
 *                    ─▶ ioloop_add_callback(pool loop i, adopt, conn)
 *   loop i:          adopt ─▶ into loop i's registry (id → conn) ─▶ open: on_open, reading
 *   any thread:      server_send(id) ─▶ look id up in loop i's registry (under its lock)
 *                    ─▶ copy ─▶ ioloop_add_callback(loop i, write by id)
 *
 * The registry belongs to the loop, not to the server, so a queued write needs only its loop
 * and the id: it finds the connection or finds nothing, whatever happened to the server since.
 *
 * Teardown counts connections: `live` covers every connection from its hand-off to the end of
 * its on_close. ioloop_server_free() stops the acceptor, asks each loop to abort the server's
 * connections with -ECANCELED, and waits for `live` to reach zero.
 */
#include "net/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop/log.h>

#include "net/acceptor.h"
#include "net/conn.h"
#include "core/pool.h"

struct ioloop_server {
    ioloop_pool_t *pool;
    ioloop_conn_handlers_t handlers;
    void *user;
    struct ioloop_acceptor acceptor;
    atomic_bool closing;            /* ioloop_server_free() began: adopt nothing more */
    pthread_mutex_t lock;
    pthread_cond_t gone;            /* signalled when live drops to 0 */
    size_t live;                    /* connections handed off and not yet closed; under lock */
};

/* A copy of bytes on its way to a connection's loop. */
struct send_msg {
    uint64_t id;
    size_t len;
    char data[];
};

#define ID_LOOP_MASK 0xffffu        /* a server connection's id carries its loop's index */

static void live_add(ioloop_server_t *server, int delta)
{
    pthread_mutex_lock(&server->lock);
    server->live += (size_t)delta;
    if (server->live == 0)
        pthread_cond_broadcast(&server->gone);
    pthread_mutex_unlock(&server->lock);
}

/* ---- The loop's registry ---------------------------------------------------------------- */

static ioloop_conn_t *registry_find(ioloop_t *loop, uint64_t id)
{
    ioloop_conn_t *conn;

    HASH_FIND(hh, loop->conns, &id, sizeof id, conn);
    return conn;
}

void ioloop__server_conn_closing(ioloop_conn_t *conn)
{
    ioloop_t *loop = conn->loop;

    pthread_mutex_lock(&loop->conns_lock);
    HASH_DELETE(hh, loop->conns, conn);
    pthread_mutex_unlock(&loop->conns_lock);
}

void ioloop__server_conn_gone(ioloop_server_t *server)
{
    live_add(server, -1); /* the server may be freed as soon as this returns */
}

/* ---- Accepting -------------------------------------------------------------------------- */

/* In the connection's loop: register it and open it, unless the server is going away. */
static void on_adopt(ioloop_t *loop, void *arg)
{
    ioloop_conn_t *conn = arg;
    ioloop_server_t *server = conn->server;
    int err = 0;

    if (!atomic_load_explicit(&server->closing, memory_order_acquire)) {
        pthread_mutex_lock(&loop->conns_lock);
        HASH_ADD(hh, loop->conns, id, sizeof conn->id, conn);
        pthread_mutex_unlock(&loop->conns_lock);
        if ((err = ioloop__conn_open(conn)) == 0)
            return;
        ioloop__server_conn_closing(conn);
        IOLOOP_LOG_WARN("server: cannot watch accepted connection: %s", strerror(-err));
    }
    close(conn->fd);
    ioloop__conn_discard(conn);
    live_add(server, -1);
}

/* In the acceptor thread: wrap the fd and hand it to the next loop. */
static void on_accept(int fd, void *arg)
{
    ioloop_server_t *server = arg;
    int index, err;
    ioloop_t *loop = ioloop__pool_next(server->pool, &index);
    ioloop_conn_t *conn = ioloop__conn_new(loop, fd, &server->handlers, server->user,
                                           (unsigned)index);

    if (conn == NULL) {
        IOLOOP_LOG_WARN("server: out of memory for a new connection; closed it");
        close(fd);
        return;
    }
    conn->server = server;
    live_add(server, 1);
    if ((err = ioloop_add_callback(loop, on_adopt, conn)) < 0) {
        IOLOOP_LOG_WARN("server: loop %d refused a connection (%s); closed it", index,
                        strerror(-err));
        close(fd);
        ioloop__conn_discard(conn);
        live_add(server, -1);
    }
}

/* ---- The public entry points ------------------------------------------------------------ */

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
    if (ioloop_pool_size(pool) > (int)ID_LOOP_MASK + 1) {
        errno = EINVAL; /* ids carry the loop's index in 16 bits */
        return NULL;
    }
    server = calloc(1, sizeof *server);
    if (server == NULL)
        return NULL;
    server->pool = pool;
    server->handlers = *handlers;
    server->user = user;
    server->acceptor.on_accept = on_accept;
    server->acceptor.arg = server;
    if ((err = ioloop__acceptor_listen(&server->acceptor, &addr)) < 0) {
        free(server);
        errno = -err;
        return NULL;
    }
    pthread_mutex_init(&server->lock, NULL);
    pthread_cond_init(&server->gone, NULL);
    return server;
}

int ioloop_server_start(ioloop_server_t *server)
{
    if (server == NULL)
        return -EINVAL;
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

/* In the connection's loop: write the bytes if the connection is still there. */
static void on_send(ioloop_t *loop, void *arg)
{
    struct send_msg *msg = arg;
    ioloop_conn_t *conn = registry_find(loop, msg->id);

    if (conn != NULL)
        ioloop_conn_write(conn, msg->data, msg->len); /* a failure closes the connection */
    free(msg);
}

int ioloop_server_send(ioloop_server_t *server, uint64_t conn_id, const void *data, size_t len)
{
    ioloop_t *loop = ioloop_pool_loop(server != NULL ? server->pool : NULL,
                                      (int)(conn_id & ID_LOOP_MASK));
    struct send_msg *msg;
    ioloop_conn_t *conn;
    int err;

    if (server == NULL || (data == NULL && len > 0))
        return -EINVAL;
    if (loop == NULL)
        return -ENOENT;
    pthread_mutex_lock(&loop->conns_lock);
    conn = registry_find(loop, conn_id);
    err = conn != NULL && conn->server == server ? 0 : -ENOENT;
    pthread_mutex_unlock(&loop->conns_lock);
    if (err < 0)
        return err;

    msg = malloc(sizeof *msg + len);
    if (msg == NULL)
        return -ENOMEM;
    msg->id = conn_id;
    msg->len = len;
    if (len > 0)
        memcpy(msg->data, data, len);
    if ((err = ioloop_add_callback(loop, on_send, msg)) < 0)
        free(msg);
    return err;
}

/* In each loop: abort the server's connections. */
static void on_close_all(ioloop_t *loop, void *arg)
{
    ioloop_server_t *server = arg;
    ioloop_conn_t *conn, *next;

    HASH_ITER(hh, loop->conns, conn, next)
        if (conn->server == server)
            ioloop__conn_abort(conn, -ECANCELED);
}

void ioloop_server_free(ioloop_server_t *server)
{
    bool wait = true;

    if (server == NULL)
        return;
    for (int i = 0; i < ioloop_pool_size(server->pool); i++) {
        if (ioloop_current() == ioloop_pool_loop(server->pool, i)) {
            fprintf(stderr, "ioloop_server_free: called from loop %d of the server's pool, "
                            "which it would wait for\n", i);
            abort();
        }
    }
    atomic_store_explicit(&server->closing, true, memory_order_release);
    ioloop__acceptor_close(&server->acceptor); /* joins: every hand-off is queued by now */

    for (int i = 0; i < ioloop_pool_size(server->pool); i++) {
        int err = ioloop_add_callback(ioloop_pool_loop(server->pool, i), on_close_all, server);

        if (err < 0) {
            IOLOOP_LOG_ERROR("server_free: loop %d is not running (%s); its connections "
                             "stay open and the server is not freed", i, strerror(-err));
            wait = false;
        }
    }
    if (!wait)
        return; /* connections still point at the server: keep it rather than free it */
    pthread_mutex_lock(&server->lock);
    while (server->live > 0)
        pthread_cond_wait(&server->gone, &server->lock);
    pthread_mutex_unlock(&server->lock);

    pthread_cond_destroy(&server->gone);
    pthread_mutex_destroy(&server->lock);
    free(server);
}
