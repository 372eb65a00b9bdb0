/*
 * Buffered connections. A connection belongs to one loop and lives in its thread:
 *
 *   CONNECTING ──connect done──▶ OPEN ──conn_close / peer EOF──▶ CLOSING ──drained──▶ DEAD
 *        │                        │                                 │                 ▲
 *        └──────── error ─────────┴────────────── error ────────────┴─────────────────┘
 *
 * Reading: one read per readiness, into a 64 KiB stack buffer (plus the input buffer's free
 * space when input is pending, with one readv); on_data sees every unconsumed byte and returns
 * how many it consumed; only the rest is kept. Buffers are released once empty, so an idle
 * connection costs its struct alone.
 * Writing: straight to the socket when nothing is pending; what the kernel does not take goes
 * to the output buffer and the handler watches for writability until it drains (then
 * on_drain). The watched events are always derived from the state: READ while open and not
 * paused, WRITE while output is pending (or the connect is in progress).
 * Closing: a DEAD connection is out of the handler table at once, and its on_close, close()
 * and free run as deferred work after the current callbacks, so on_close never runs inside
 * another call on the same connection and the pointer stays valid until that callback returns.
 */
#include "net/conn.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/address.h"
#include "net/server.h"

/* Process-wide connection sequence: ids are (seq << 16 | tag), unique and never 0. */
static _Atomic uint64_t next_seq = 1;

#define ID_TAG_BITS 16

static void on_reap(ioloop_t *loop, struct ioloop_deferred *node);
static void on_redeliver(ioloop_t *loop, struct ioloop_deferred *node);
static void on_event(ioloop_t *loop, int fd, int events, void *arg);

ioloop_conn_t *ioloop__conn_new(ioloop_t *loop, int fd, const ioloop_conn_handlers_t *handlers,
                                void *user, unsigned id_tag)
{
    ioloop_conn_t *conn = calloc(1, sizeof *conn);

    if (conn == NULL)
        return NULL;
    conn->loop = loop;
    conn->fd = fd;
    conn->id = atomic_fetch_add_explicit(&next_seq, 1, memory_order_relaxed) << ID_TAG_BITS |
               (id_tag & ((1u << ID_TAG_BITS) - 1));
    conn->state = IOLOOP__CONN_OPEN;
    conn->handlers = *handlers;
    conn->user = user;
    conn->reap.fn = on_reap;
    conn->redeliver.fn = on_redeliver;
    return conn;
}

void ioloop__conn_discard(ioloop_conn_t *conn)
{
    free(conn);
}

/* ---- State helpers ---------------------------------------------------------------------- */

static bool is_live(const ioloop_conn_t *conn)
{
    return conn->state == IOLOOP__CONN_CONNECTING || conn->state == IOLOOP__CONN_OPEN;
}

/* The checks every loop-thread entry point makes: 0, or -EINVAL (NULL), -EPERM (another
 * thread while the loop runs), -EPIPE (closing or closed). */
static int usable(const ioloop_conn_t *conn)
{
    int err;

    if (conn == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(conn->loop)) < 0)
        return err;
    return is_live(conn) ? 0 : -EPIPE;
}

static void touch(ioloop_conn_t *conn)
{
    conn->last_active_us = conn->loop->now_us;
}

static uint32_t wanted_events(const ioloop_conn_t *conn)
{
    uint32_t events = 0;

    if (conn->state == IOLOOP__CONN_CONNECTING)
        return IOLOOP_WRITE;
    if (conn->state == IOLOOP__CONN_OPEN && !conn->paused)
        events |= IOLOOP_READ;
    if (ioloop__buffer_len(&conn->out) > 0)
        events |= IOLOOP_WRITE;
    return events;
}

/* Ends the connection: out of the handler table and the registry now, the rest deferred. */
static void finish(ioloop_conn_t *conn, int err)
{
    if (conn->state == IOLOOP__CONN_DEAD)
        return;
    conn->state = IOLOOP__CONN_DEAD;
    conn->err = err;
    if (conn->registered)
        ioloop__handler_del_now(conn->loop, conn->fd); /* on_reap() closes the fd */
    conn->registered = false;
    if (conn->idle_timer > 0)
        ioloop_cancel_timer(conn->loop, conn->idle_timer);
    conn->idle_timer = 0;
    if (err == 0)
        shutdown(conn->fd, SHUT_WR);
    if (conn->server != NULL)
        ioloop__server_conn_closing(conn);
    ioloop__defer(conn->loop, &conn->reap);
}

static void watch(ioloop_conn_t *conn)
{
    uint32_t events = wanted_events(conn);
    int err;

    if (conn->state == IOLOOP__CONN_DEAD || events == conn->events)
        return;
    if ((err = ioloop__handler_set(conn->loop, conn->fd, events)) < 0) {
        finish(conn, err);
        return;
    }
    conn->events = events;
}

static void on_reap(ioloop_t *loop, struct ioloop_deferred *node)
{
    ioloop_conn_t *conn = ioloop__container_of(node, ioloop_conn_t, reap);
    struct ioloop_server *server = conn->server;

    if (conn->handlers.on_close != NULL)
        conn->handlers.on_close(conn, conn->err);
    close(conn->fd);
    ioloop__buffer_free(&conn->in);
    ioloop__buffer_free(&conn->out);
    free(conn);
    if (server != NULL)
        ioloop__server_conn_gone(server);
}

void ioloop__conn_abort(ioloop_conn_t *conn, int err)
{
    finish(conn, err);
}

/* ---- Reading ---------------------------------------------------------------------------- */

/* Presents the buffered input; what on_data leaves stays for the next call. */
static void deliver(ioloop_conn_t *conn)
{
    size_t len = ioloop__buffer_len(&conn->in);
    size_t used;

    if (len == 0)
        return;
    used = conn->handlers.on_data(conn, ioloop__buffer_peek(&conn->in), len);
    ioloop__buffer_consume(&conn->in, used < len ? used : len);
    if (ioloop__buffer_len(&conn->in) == 0)
        ioloop__buffer_free(&conn->in); /* an idle connection holds no buffer */
}

static void on_redeliver(ioloop_t *loop, struct ioloop_deferred *node)
{
    ioloop_conn_t *conn = ioloop__container_of(node, ioloop_conn_t, redeliver);

    conn->redeliver_queued = false;
    if (conn->state == IOLOOP__CONN_OPEN && !conn->paused)
        deliver(conn);
}

/* The peer sent EOF: close once our output is out. */
static void peer_done(ioloop_conn_t *conn)
{
    if (ioloop__buffer_len(&conn->out) == 0) {
        finish(conn, 0);
        return;
    }
    conn->state = IOLOOP__CONN_CLOSING;
    watch(conn);
}

/*
 * Reads once. With no input pending the bytes go to a stack buffer and on_data sees them
 * there; only what it leaves is copied into the input buffer. With input pending, one readv
 * fills the input buffer's free space and the stack buffer behind it.
 */
static void handle_read(ioloop_conn_t *conn)
{
    char stack[IOLOOP__READ_EXTRA];
    ssize_t n;

    if (ioloop__buffer_len(&conn->in) > 0) {
        n = ioloop__buffer_read_fd(&conn->in, conn->fd);
        if (n > 0) {
            touch(conn);
            deliver(conn);
            return;
        }
    } else {
        n = read(conn->fd, stack, sizeof stack);
        if (n < 0)
            n = -errno;
        if (n > 0) {
            size_t used;

            touch(conn);
            used = conn->handlers.on_data(conn, stack, (size_t)n);
            if (used < (size_t)n &&
                ioloop__buffer_append(&conn->in, stack + used, (size_t)n - used) < 0)
                finish(conn, -ENOMEM);
            return;
        }
    }
    if (n == 0)
        peer_done(conn);
    else if (n != -EAGAIN && n != -EINTR)
        finish(conn, (int)n);
}

/* ---- Writing ---------------------------------------------------------------------------- */

/* Sends what the output buffer holds until it is empty or the kernel is full. */
static void handle_write(ioloop_conn_t *conn)
{
    struct ioloop_buffer *out = &conn->out;
    bool had_pending = ioloop__buffer_len(out) > 0;

    while (ioloop__buffer_len(out) > 0) {
        ssize_t n = send(conn->fd, ioloop__buffer_peek(out), ioloop__buffer_len(out),
                         MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                finish(conn, -errno);
            return;
        }
        ioloop__buffer_consume(out, (size_t)n);
        touch(conn);
    }
    ioloop__buffer_free(out); /* drained: an idle connection holds no buffer */
    if (conn->state == IOLOOP__CONN_CLOSING) {
        finish(conn, 0);
        return;
    }
    watch(conn);
    if (had_pending && conn->handlers.on_drain != NULL)
        conn->handlers.on_drain(conn);
}

int ioloop_conn_write(ioloop_conn_t *conn, const void *data, size_t len)
{
    size_t sent = 0;
    int err;

    if (data == NULL && len > 0)
        return -EINVAL;
    if ((err = usable(conn)) < 0)
        return err;
    if (len == 0)
        return 0;

    if (conn->state == IOLOOP__CONN_OPEN && ioloop__buffer_len(&conn->out) == 0) {
        ssize_t n = send(conn->fd, data, len, MSG_NOSIGNAL);

        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            err = -errno;
            finish(conn, err);
            return err;
        }
        if (n > 0) {
            sent = (size_t)n;
            touch(conn);
        }
        if (sent == len)
            return 0;
    }
    if (ioloop__buffer_append(&conn->out, (const char *)data + sent, len - sent) < 0) {
        /* Part of it went out already: the stream is broken, so the connection ends. */
        if (sent > 0)
            finish(conn, -ENOMEM);
        return -ENOMEM;
    }
    watch(conn);
    return 0;
}

size_t ioloop_conn_pending(const ioloop_conn_t *conn)
{
    return conn != NULL ? ioloop__buffer_len(&conn->out) : 0;
}

/* ---- Events ----------------------------------------------------------------------------- */

static void handle_connected(ioloop_conn_t *conn)
{
    int so_error = 0;
    socklen_t len = sizeof so_error;

    if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &so_error, &len) < 0)
        so_error = errno;
    if (so_error != 0) {
        finish(conn, -so_error);
        return;
    }
    conn->state = conn->close_when_open ? IOLOOP__CONN_CLOSING : IOLOOP__CONN_OPEN;
    touch(conn);
    if (conn->handlers.on_open != NULL)
        conn->handlers.on_open(conn);
    if (conn->state == IOLOOP__CONN_OPEN || conn->state == IOLOOP__CONN_CLOSING)
        handle_write(conn); /* what was written while connecting; also sets the events */
}

static void on_event(ioloop_t *loop, int fd, int events, void *arg)
{
    ioloop_conn_t *conn = arg;

    if (conn->state == IOLOOP__CONN_CONNECTING) {
        handle_connected(conn);
        return;
    }
    if ((events & IOLOOP_WRITE) && conn->state != IOLOOP__CONN_DEAD)
        handle_write(conn);
    if ((events & IOLOOP_READ) && conn->state == IOLOOP__CONN_OPEN && !conn->paused)
        handle_read(conn);
    if ((events & IOLOOP_ERROR) && !(events & (IOLOOP_READ | IOLOOP_WRITE)) &&
        conn->state != IOLOOP__CONN_DEAD) {
        /* Nothing watched but an error or hangup arrived (paused, nothing to write). */
        int so_error = 0;
        socklen_t len = sizeof so_error;

        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
        if (so_error != 0)
            finish(conn, -so_error);
        else
            peer_done(conn);
    }
}

int ioloop__conn_open(ioloop_conn_t *conn)
{
    int err;

    conn->events = wanted_events(conn);
    err = ioloop__handler_add(conn->loop, conn->fd, conn->events, on_event, conn);
    if (err < 0)
        return err;
    conn->registered = true;
    touch(conn);
    if (conn->state == IOLOOP__CONN_OPEN && conn->handlers.on_open != NULL)
        conn->handlers.on_open(conn);
    return 0;
}

/* ---- Closing, pausing, idle timeout ----------------------------------------------------- */

void ioloop_conn_close(ioloop_conn_t *conn)
{
    if (usable(conn) < 0)
        return;
    if (conn->state == IOLOOP__CONN_OPEN && ioloop__buffer_len(&conn->out) == 0) {
        finish(conn, 0);
        return;
    }
    /* Output pending, or still connecting: flush first (handle_write finishes the close). */
    if (conn->state == IOLOOP__CONN_OPEN)
        conn->state = IOLOOP__CONN_CLOSING;
    else
        conn->close_when_open = true;
    watch(conn);
}

int ioloop_conn_pause(ioloop_conn_t *conn)
{
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    conn->paused = true;
    watch(conn);
    return 0;
}

int ioloop_conn_resume(ioloop_conn_t *conn)
{
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    if (!conn->paused)
        return 0;
    conn->paused = false;
    watch(conn);
    /* Input kept while paused is presented again without waiting for new bytes. */
    if (ioloop__buffer_len(&conn->in) > 0 && !conn->redeliver_queued) {
        conn->redeliver_queued = true;
        ioloop__defer(conn->loop, &conn->redeliver);
    }
    return 0;
}

static void on_idle_timer(ioloop_t *loop, void *arg)
{
    ioloop_conn_t *conn = arg;
    uint64_t idle = loop->now_us - conn->last_active_us;

    conn->idle_timer = 0;
    if (idle >= conn->idle_us) {
        finish(conn, -ETIMEDOUT);
        return;
    }
    /* There was progress since it was armed: wait for the rest of the period. */
    conn->idle_timer = ioloop_run_after(loop, (conn->idle_us - idle + 999) / 1000,
                                        on_idle_timer, conn);
    if (conn->idle_timer < 0)
        finish(conn, (int)conn->idle_timer);
}

int ioloop_conn_set_idle_timeout(ioloop_conn_t *conn, uint64_t ms)
{
    int64_t timer = 0;
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    if (ms > 0 && (timer = ioloop_run_after(conn->loop, ms, on_idle_timer, conn)) < 0)
        return (int)timer;
    if (conn->idle_timer > 0)
        ioloop_cancel_timer(conn->loop, conn->idle_timer);
    conn->idle_timer = timer;
    conn->idle_us = ms > UINT64_MAX / 1000u ? UINT64_MAX : ms * 1000u;
    touch(conn);
    return 0;
}

/* ---- Outgoing connections --------------------------------------------------------------- */

ioloop_conn_t *ioloop_connect(ioloop_t *loop, const char *address,
                              const ioloop_conn_handlers_t *handlers, void *user)
{
    struct ioloop_address addr;
    ioloop_conn_t *conn;
    int fd, err;

    if (loop == NULL || handlers == NULL || handlers->on_data == NULL ||
        ioloop__address_parse(address, &addr) < 0) {
        errno = EINVAL;
        return NULL;
    }
    if ((err = ioloop__check_thread(loop)) < 0) {
        errno = -err;
        return NULL;
    }
    fd = socket(addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    conn = ioloop__conn_new(loop, fd, handlers, user, 0);
    if (conn == NULL) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    conn->state = IOLOOP__CONN_CONNECTING;
    if (addr.ss.ss_family != AF_UNIX)
        ioloop__socket_nodelay(fd);

    /* Even an immediate result goes through the handler (a connected socket is writable), so
     * on_open never runs before the caller has the connection. */
    if (connect(fd, (struct sockaddr *)&addr.ss, addr.len) < 0 && errno != EINPROGRESS) {
        finish(conn, errno == EAGAIN ? -ECONNREFUSED : -errno);
        return conn;
    }
    if ((err = ioloop__conn_open(conn)) < 0) {
        ioloop__conn_discard(conn);
        close(fd);
        errno = -err;
        return NULL;
    }
    return conn;
}

/* ---- Accessors -------------------------------------------------------------------------- */

uint64_t ioloop_conn_id(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn->id : 0;
}

int ioloop_conn_fd(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn->fd : -EINVAL;
}

ioloop_t *ioloop_conn_loop(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn->loop : NULL;
}

void *ioloop_conn_user(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn->user : NULL;
}

void ioloop_conn_set_data(ioloop_conn_t *conn, void *data)
{
    if (conn != NULL)
        conn->data = data;
}

void *ioloop_conn_data(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn->data : NULL;
}
