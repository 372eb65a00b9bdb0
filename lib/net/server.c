/*
 * The server: glue between its listeners, the pool's loops and the connections.
 *
 *   default:   acceptor thread: accept4 × up to 64 ─▶ one batch of fds per target loop
 *              (round-robin) ─▶ ioloop_add_callback(loop i, adopt, batch)  (one post per loop)
 *   reuseport: loop i's own SO_REUSEPORT listener ─▶ accept4 × up to 64, in loop i
 *   then, in loop i: admit each fd (max_conns) ─▶ a connection in loop i's table
 *   any thread: server_send / server_call (id) ─▶ the id names loop i and a slot: is it open?
 *              (atomics, no lock) ─▶ ioloop_add_callback(loop i, ...)
 *
 * The server is its connections' class (struct ioloop_conn_class): their handlers, user
 * pointer and limits, and the hooks through which a connection reports that it opened, that
 * it stopped being open, and that it is gone. `live` counts every fd from its accept to the
 * end of its connection; ioloop_server_drain() waits for it to reach zero, and
 * ioloop_server_free() closes what is left with -ECANCELED and waits for the same.
 */
#include <ioloop/server.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ioloop/log.h>

#include "core/pool.h"
#include "core/strerror.h"
#include "net/conn.h"
#include "net/conns.h"
#include "net/listener.h"
#include "net/resolve.h"

#define DEFAULT_BACKLOG 4096 /* the kernel caps it at net.core.somaxconn */

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
    atomic_bool closing;            /* ioloop_server_free() began: admit nothing more */
    bool reuseport;
    bool proxy;                     /* connections start with a PROXY protocol header */
    bool started;
    bool listening;                 /* the listeners are open (until drained or freed) */
    int port;                       /* the bound TCP port, or -EINVAL for a unix socket */
    unsigned max_conns;
    int nlisteners;                 /* 1, or one per pool loop with reuseport */
    struct ioloop_listener *listeners;
    struct ioloop_acceptor acceptor; /* default mode */
    struct batch **batches;         /* the acceptor thread's: one being filled per loop */
    _Atomic uint64_t live;          /* fds accepted whose connection has not ended yet */
    _Atomic unsigned admitted;      /* connections accepted and not closing (max_conns) */
    pthread_mutex_t lock;           /* with cond: waits for live, and for loop tasks */
    pthread_cond_t cond;            /* CLOCK_MONOTONIC */
    int tasks_left;                 /* run_in_loops(); under lock */
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

static void counter_sub(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_fetch_sub_explicit(counter, n, memory_order_relaxed);
}

/*
 * One fd or connection fewer; the server may be freed as soon as the last one is gone. The
 * decrement that may reach zero is made under the lock that the waiters check `live` under:
 * a waiter that sees zero cannot free the server while this thread still signals it.
 */
static void live_drop(ioloop_server_t *server)
{
    uint64_t live = atomic_load_explicit(&server->live, memory_order_relaxed);

    while (live > 1)
        if (atomic_compare_exchange_weak_explicit(&server->live, &live, live - 1,
                                                  memory_order_release, memory_order_relaxed))
            return;
    pthread_mutex_lock(&server->lock);
    if (atomic_fetch_sub_explicit(&server->live, 1, memory_order_acq_rel) == 1)
        pthread_cond_broadcast(&server->cond);
    pthread_mutex_unlock(&server->lock);
}

/* Called from a pool loop, the owning thread's calls that wait for the loops would wait for
 * themselves. */
static bool in_pool_loop(ioloop_server_t *server)
{
    for (int i = 0; i < ioloop_pool_size(server->pool); i++)
        if (ioloop_current() == ioloop_pool_loop(server->pool, i))
            return true;
    return false;
}

/* ---- Running a task in every loop and waiting for all ----------------------------------- */

struct loop_task {
    ioloop_server_t *server;
    int index;
    void (*fn)(ioloop_server_t *server, int index);
};

static void task_done(ioloop_server_t *server)
{
    pthread_mutex_lock(&server->lock);
    if (--server->tasks_left == 0)
        pthread_cond_broadcast(&server->cond);
    pthread_mutex_unlock(&server->lock);
}

static void on_task(ioloop_t *loop, void *arg)
{
    struct loop_task *task = arg;

    task->fn(task->server, task->index);
    task_done(task->server);
}

/* Runs fn(server, i) in each pool loop i and returns once all ran. Returns 0, or the error of
 * a loop that could not take the task (that loop's fn did not run). */
static int run_in_loops(ioloop_server_t *server, void (*fn)(ioloop_server_t *, int))
{
    int n = ioloop_pool_size(server->pool), err = 0;
    struct loop_task *tasks = calloc((size_t)n, sizeof *tasks);

    if (tasks == NULL)
        return -ENOMEM;
    server->tasks_left = n;
    for (int i = 0; i < n; i++) {
        int rc;

        tasks[i] = (struct loop_task){server, i, fn};
        rc = ioloop_add_callback(ioloop_pool_loop(server->pool, i), on_task, &tasks[i]);
        if (rc < 0) {
            err = rc;
            task_done(server);
        }
    }
    pthread_mutex_lock(&server->lock);
    while (server->tasks_left > 0)
        pthread_cond_wait(&server->cond, &server->lock);
    pthread_mutex_unlock(&server->lock);
    free(tasks);
    return err;
}

/* ---- The connections' hooks ------------------------------------------------------------- */

static void conn_opened(ioloop_conn_t *conn)
{
    ioloop_server_t *server = conn->cls->owner;

    counter_add(&server->stats.accepted, 1);
    counter_add(&server->stats.open, 1);
}

static void conn_closing(ioloop_conn_t *conn, bool opened)
{
    ioloop_server_t *server = conn->cls->owner;

    atomic_fetch_sub_explicit(&server->admitted, 1, memory_order_relaxed);
    if (opened)
        counter_sub(&server->stats.open, 1);
    else
        counter_add(&server->stats.refused, 1);
}

static void conn_gone(const struct ioloop_conn_class *cls)
{
    live_drop(cls->owner);
}

/* ---- Accepting -------------------------------------------------------------------------- */

/* In the connection's loop: a connection for fd, unless the server is going away or full.
 * The fd is counted in `live` already. */
static void admit(ioloop_server_t *server, ioloop_t *loop, int fd)
{
    unsigned admitted = atomic_fetch_add_explicit(&server->admitted, 1, memory_order_relaxed);

    if (atomic_load_explicit(&server->closing, memory_order_acquire)) {
        atomic_fetch_sub_explicit(&server->admitted, 1, memory_order_relaxed);
    } else if (server->max_conns > 0 && admitted >= server->max_conns) {
        atomic_fetch_sub_explicit(&server->admitted, 1, memory_order_relaxed);
        counter_add(&server->stats.refused, 1);
    } else if (ioloop__conn_open(loop, fd, &server->cls, server->proxy ? IOLOOP__CONN_PROXIED
                                                                       : IOLOOP__CONN_ACCEPTED)
               != NULL) {
        return;
    } else {
        atomic_fetch_sub_explicit(&server->admitted, 1, memory_order_relaxed);
        counter_add(&server->stats.refused, 1);
        IOLOOP_LOG_WARN("server: cannot open an accepted connection: %s; closed it",
                        ioloop__strerror(errno));
    }
    close(fd);
    live_drop(server); /* the caller's later fds still count, so server stays valid */
}

static void on_adopt(ioloop_t *loop, void *arg)
{
    struct batch *batch = arg;

    for (int i = 0; i < batch->n; i++)
        admit(batch->server, loop, batch->fds[i]);
    free(batch);
}

/* Default mode, in the acceptor thread: split the fds among the loops, one post per loop. */
static void on_accept_handoff(struct ioloop_listener *l, const int *fds, int n)
{
    ioloop_server_t *server = l->arg;
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
                counter_add(&server->stats.refused, 1);
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
                counter_add(&server->stats.refused, 1);
                close(b->fds[i]);
                live_drop(server);
            }
            free(b);
        }
    }
}

/* Reuseport mode, in the listener's own loop (watching it, or sweeping it while draining):
 * no hand-off at all. */
static void on_accept_here(struct ioloop_listener *l, const int *fds, int n)
{
    ioloop_server_t *server = l->arg;

    atomic_fetch_add_explicit(&server->live, (uint64_t)n, memory_order_relaxed);
    for (int i = 0; i < n; i++)
        admit(server, ioloop_current(), fds[i]);
}

static void on_shed(struct ioloop_listener *l)
{
    ioloop_server_t *server = l->arg;

    counter_add(&server->stats.refused, 1);
}

static void watch_in_loop(ioloop_server_t *server, int index)
{
    struct ioloop_listener *l = &server->listeners[index];
    int err = ioloop__listener_watch(l, ioloop_pool_loop(server->pool, index));

    if (err < 0)
        IOLOOP_LOG_ERROR("server: loop %d cannot watch its listener: %s", index,
                         ioloop__strerror(err));
}

static void unwatch_in_loop(ioloop_server_t *server, int index)
{
    ioloop__listener_unwatch(&server->listeners[index]);
}

/* Closes loop index's listener in that loop; draining, what is queued is accepted first, and
 * the close follows right behind, so the window in which a client can still land in this
 * listener's queue (and be reset by the close) is as short as it can be. */
static void close_in_loop(ioloop_server_t *server, int index)
{
    ioloop__listener_unwatch(&server->listeners[index]);
    ioloop__listener_close(&server->listeners[index]);
}

static void sweep_close_in_loop(ioloop_server_t *server, int index)
{
    ioloop__listener_sweep(&server->listeners[index]);
    close_in_loop(server, index);
}

/* Stops accepting and closes the listeners; with `sweep`, what is queued is accepted first
 * (also by a server that never started). The owning thread, with the pool's loops running. */
static void stop_listening(ioloop_server_t *server, bool sweep)
{
    if (!server->listening)
        return;
    if (server->reuseport) {
        run_in_loops(server, sweep ? sweep_close_in_loop : close_in_loop);
    } else if (server->started) {
        ioloop__acceptor_stop(&server->acceptor, &server->listeners[0], sweep);
    } else if (sweep) {
        ioloop__listener_sweep(&server->listeners[0]); /* no acceptor: this thread hands off */
    }
    for (int i = 0; i < server->nlisteners; i++)
        ioloop__listener_close(&server->listeners[i]); /* what no loop closed already */
    server->listening = false;
}

/* ---- Servers ---------------------------------------------------------------------------- */

/* ioloop_pool_free() before ioloop_server_free(): stop accepting while the loops still run;
 * the loops' ioloop_free() then closes the connections, and ioloop_server_free() only has the
 * server itself left to free. */
static void on_pool_freed(struct ioloop_pool_user *user)
{
    ioloop_server_t *server = ioloop__container_of(user, ioloop_server_t, pool_user);

    stop_listening(server, false);
    atomic_store_explicit(&server->detached, true, memory_order_release);
}

static bool valid_options(const ioloop_server_options_t *o, const struct ioloop_address *addr)
{
    return o->backlog >= 0 && (o->reuseport == 0 || o->reuseport == 1) &&
           (o->proxy_protocol == 0 || o->proxy_protocol == 1) &&
           !(o->reuseport && addr->ss.ss_family == AF_UNIX);
}

/* Opens the listeners: one, or one per loop on one port (port 0 is resolved by the first). */
static int open_listeners(ioloop_server_t *server, struct ioloop_address *addr, int backlog)
{
    int err;

    for (int i = 0; i < server->nlisteners; i++) {
        struct ioloop_listener *l = &server->listeners[i];

        *l = (struct ioloop_listener){.arg = server, .on_shed = on_shed};
        l->on_accept = server->reuseport ? on_accept_here : on_accept_handoff;
        if ((err = ioloop__listener_open(l, addr, backlog, server->reuseport)) < 0) {
            while (--i >= 0)
                ioloop__listener_close(&server->listeners[i]);
            return err;
        }
        if (i == 0 && l->tcp) {
            server->port = ioloop__listener_port(l);
            if (addr->ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&addr->ss)->sin6_port = htons((uint16_t)server->port);
            else
                ((struct sockaddr_in *)&addr->ss)->sin_port = htons((uint16_t)server->port);
        }
    }
    return 0;
}

static void server_release(ioloop_server_t *server)
{
    pthread_cond_destroy(&server->cond);
    pthread_mutex_destroy(&server->lock);
    free(server->listeners);
    free(server->batches);
    free(server);
}

ioloop_server_t *ioloop_server_new_opts(ioloop_pool_t *pool, const char *address,
                                        const ioloop_conn_handlers_t *handlers, void *user,
                                        const ioloop_server_options_t *options)
{
    static const ioloop_server_options_t defaults;
    const ioloop_server_options_t *o = options != NULL ? options : &defaults;
    struct ioloop_address addr;
    pthread_condattr_t attr;
    ioloop_server_t *server;
    int nloops = ioloop_pool_size(pool), err;

    if (pool == NULL || handlers == NULL || handlers->on_data == NULL ||
        (err = ioloop__address_parse_local(address, &addr)) == -EINVAL ||
        (err == 0 && !valid_options(o, &addr))) {
        errno = EINVAL;
        return NULL;
    }
    if (err < 0) { /* a name not in /etc/hosts (ENOENT), no resolver (ENOTSUP), ENOMEM */
        errno = -err;
        return NULL;
    }
    server = calloc(1, sizeof *server);
    if (server == NULL)
        return NULL;
    server->nlisteners = o->reuseport ? nloops : 1;
    server->listeners = calloc((size_t)server->nlisteners, sizeof *server->listeners);
    server->batches = calloc((size_t)nloops, sizeof *server->batches);
    if (server->listeners == NULL || server->batches == NULL) {
        err = -ENOMEM;
        goto fail;
    }
    server->cls = (struct ioloop_conn_class){
        .handlers = *handlers,
        .user = user,
        .max_input = o->max_input > 0 ? o->max_input : IOLOOP_CONN_MAX_INPUT,
        .max_output = o->max_output > 0 ? o->max_output : IOLOOP_CONN_MAX_OUTPUT,
        .owner = server,
        .opened = conn_opened,
        .closing = conn_closing,
        .gone = conn_gone,
    };
    server->pool = pool;
    server->pool_user.detach = on_pool_freed;
    server->reuseport = o->reuseport;
    server->proxy = o->proxy_protocol;
    server->max_conns = o->max_conns;
    server->port = -EINVAL;
    if ((err = open_listeners(server, &addr, o->backlog > 0 ? o->backlog : DEFAULT_BACKLOG)) < 0)
        goto fail;
    server->listening = true;
    pthread_mutex_init(&server->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&server->cond, &attr);
    pthread_condattr_destroy(&attr);
    ioloop__pool_attach(pool, &server->pool_user);
    return server;

fail:
    free(server->listeners);
    free(server->batches);
    free(server);
    errno = -err;
    return NULL;
}

ioloop_server_t *ioloop_server_new(ioloop_pool_t *pool, const char *address,
                                   const ioloop_conn_handlers_t *handlers, void *user)
{
    return ioloop_server_new_opts(pool, address, handlers, user, NULL);
}

int ioloop_server_start(ioloop_server_t *server)
{
    int err;

    if (server == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&server->detached, memory_order_acquire) || !server->listening)
        return -ESHUTDOWN;
    if (server->started)
        return -EALREADY;
    if (in_pool_loop(server))
        return -EDEADLK;
    if (!server->reuseport) {
        if ((err = ioloop__acceptor_start(&server->acceptor, &server->listeners[0])) < 0)
            return err;
        server->started = true;
        return 0;
    }
    server->started = true;
    err = run_in_loops(server, watch_in_loop);
    for (int i = 0; i < server->nlisteners && err == 0; i++)
        if (server->listeners[i].loop == NULL)
            err = -ENOMEM; /* watch_in_loop logged why */
    if (err < 0) {
        run_in_loops(server, unwatch_in_loop);
        server->started = false;
    }
    return err;
}

int ioloop_server_port(const ioloop_server_t *server)
{
    return server != NULL ? server->port : -EINVAL;
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

/* ---- Draining and teardown -------------------------------------------------------------- */

/* Waits until no connection is left or the deadline (CLOCK_MONOTONIC ns, 0: none) passed;
 * returns how many are left. */
static uint64_t wait_gone(ioloop_server_t *server, uint64_t deadline_ns)
{
    struct timespec ts = {(time_t)(deadline_ns / 1000000000u), (long)(deadline_ns % 1000000000u)};
    uint64_t left;

    pthread_mutex_lock(&server->lock);
    while ((left = atomic_load_explicit(&server->live, memory_order_acquire)) > 0) {
        if (deadline_ns == 0)
            pthread_cond_wait(&server->cond, &server->lock);
        else if (pthread_cond_timedwait(&server->cond, &server->lock, &ts) == ETIMEDOUT)
            break;
    }
    left = atomic_load_explicit(&server->live, memory_order_acquire);
    pthread_mutex_unlock(&server->lock);
    return left;
}

int ioloop_server_drain(ioloop_server_t *server, uint64_t timeout_ms)
{
    struct timespec now;
    uint64_t deadline_ns, left;

    if (server == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&server->detached, memory_order_acquire))
        return 0; /* its pool's ioloop_free() closed every connection */
    if (in_pool_loop(server))
        return -EDEADLK;
    clock_gettime(CLOCK_MONOTONIC, &now);
    deadline_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec +
                  (timeout_ms < UINT64_MAX / 2000000u ? timeout_ms : UINT64_MAX / 2000000u) *
                      1000000u;
    stop_listening(server, true);
    left = wait_gone(server, deadline_ns);
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

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

void ioloop_server_free(ioloop_server_t *server)
{
    if (server == NULL)
        return;
    if (atomic_load_explicit(&server->detached, memory_order_acquire)) {
        server_release(server); /* its pool's ioloop_free() closed every connection */
        return;
    }
    if (in_pool_loop(server)) {
        fprintf(stderr, "ioloop_server_free: called from a loop of the server's pool, which "
                        "it would wait for\n");
        abort();
    }
    ioloop__pool_detach(server->pool, &server->pool_user);
    atomic_store_explicit(&server->closing, true, memory_order_release);
    stop_listening(server, false); /* every hand-off is queued by now */
    for (int i = 0; i < ioloop_pool_size(server->pool); i++) {
        ioloop_t *loop = ioloop_pool_loop(server->pool, i);

        if (ioloop_add_callback(loop, on_close_all, server) == 0)
            continue;
        /* A loop stopped some other way: once its start returned, nobody runs it, and this
         * thread closes the server's connections there as ioloop_free() would. */
        ioloop__wait_stopped(loop);
        on_close_all(loop, server);
        ioloop__run_deferred_all(loop);
    }
    wait_gone(server, 0);
    server_release(server);
}
