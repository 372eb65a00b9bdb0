/*
 * Buffered connections. A connection belongs to one loop and lives in its thread:
 *
 *   OPEN ─── conn_close, or EOF without on_eof ──▶ CLOSING ── drained: SHUT_WR ──▶ LINGER
 *    │ (maybe connecting; after EOF with on_eof)      │  (EOF seen: close at once)     │ EOF, or
 *    │                                                │                                │ 2 s passed
 *    └───────────── error, idle timeout, cancel ──────┴──────────────▶ DEAD ◀──────────┘
 *
 * Reading: one read per readiness, into a 64 KiB stack buffer when no input is kept (plus the
 * input buffer's free space when some is, with one readv), never beyond the input limit;
 * on_data sees every unconsumed byte and returns how many it consumed; only the rest is kept.
 *
 * Writing: writes are gathered in the output buffer and one deferred flush per connection
 * hands them to the kernel with one send once the current callback returned (redis's
 * beforeSleep), so a protocol that answers each pipelined request with its own write still
 * makes one syscall for all of them. A large write goes out at once by sendmsg, behind the
 * gathered bytes, and only what the kernel did not take is copied. When the kernel refuses
 * output the connection is "blocked": it watches for writability until the buffer drained,
 * then on_drain. The watched events are always derived from the state (wanted_events).
 *
 * Closing without loss: CLOSING flushes, shuts the socket down for writing and then, in
 * LINGER, reads and discards until the peer's EOF or the linger deadline, and only then closes
 * the fd. close() with unread input makes the kernel send a reset that destroys the output
 * still in flight (h2o #2534, lwan's graceful_close), which this avoids.
 *
 * Deferred work: one node per connection, with `todo` saying what it is for (a flush, input
 * to present again after a resume, the reaping of a dead connection). The node is in the
 * loop's deferred list exactly while todo is not 0. A DEAD connection is out of the handler
 * table at once; its on_close, close() and free run as deferred work, so on_close never runs
 * inside another call on the same connection. The fd itself is closed as the connection dies,
 * before on_close runs.
 */
#include "net/conn.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/address.h"
#include "net/conns.h"
#include "net/proxy.h"

/* conn->flags */
enum {
    F_CONNECTING = 0x01, /* connect() in progress */
    F_PAUSED = 0x02,
    F_EOF = 0x04,        /* the peer shut down its side */
    F_BLOCKED = 0x08,    /* the kernel refused output: watching for writability */
    F_IN_DATA = 0x10,    /* on_data runs */
    F_RESUMED = 0x20,    /* resumed while on_data ran */
    F_OWN_CLASS = 0x40,  /* cls is this connection's own (freed with it) */
    F_REGISTERED = 0x80, /* in the handler table */
    F_PROXY = 0x100,     /* waiting for a PROXY header: not opened, and never on_close */
    F_PROXIED = 0x200,   /* cls is a struct proxied_class: the peer is the header's */
    F_NAMED = 0x400,     /* connecting to a host name (lib/net/connect.c has its class) */
};

/* A PROXY header must be complete this long after the accept (API.md §6), so a client that
 * sends none cannot hold a connection. */
#define PROXY_DEADLINE_MS 5000

/* The private class of a connection whose PROXY header named its client. */
struct proxied_class {
    struct ioloop_conn_class cls;
    socklen_t peer_len;
    struct sockaddr_storage peer;
};

/* conn->todo */
enum {
    T_FLUSH = 0x1,
    T_REDELIVER = 0x2,
    T_REAP = 0x4,
};

/* A large write's iovecs plus the gathered bytes fit in one sendmsg; a writev with more
 * buffers is gathered instead. */
#define DIRECT_IOV_MAX 64

/* The longest idle timeout: idle time is kept in 32-bit milliseconds, compared signed. */
#define IDLE_MS_MAX INT32_MAX

_Static_assert(sizeof(struct ioloop_conn) <= 88, "an idle connection's memory is a promise (README)");

struct ioloop_flushed {
    struct ioloop_flushed *next;
    uint64_t target;            /* runs once out->sent reaches this */
    ioloop_conn_flushed_fn fn;
    void *arg;
};

static void on_event(ioloop_t *loop, int fd, int events, void *arg);
static void on_work(ioloop_t *loop, struct ioloop_deferred *node);
static void flush(ioloop_conn_t *conn);

/* ---- State helpers ---------------------------------------------------------------------- */

/* The checks every loop-thread entry point makes: 0, or -EINVAL (NULL), -EPERM (another
 * thread while the loop runs), -EPIPE (closing or closed). */
static int usable(const ioloop_conn_t *conn)
{
    int err;

    if (conn == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(conn->loop)) < 0)
        return err;
    return conn->state == IOLOOP__CONN_OPEN ? 0 : -EPIPE;
}

static size_t pending(const ioloop_conn_t *conn)
{
    return ioloop__buf_len(conn->out);
}

static uint64_t conn_id(const ioloop_conn_t *conn)
{
    return ioloop__conns_id(conn->loop, conn->slot);
}

/* Records progress for the idle timeout: the loop's time in ms, rounded up, so that the idle
 * time computed from it is never more than what really passed. */
static void touch(ioloop_conn_t *conn)
{
    conn->active_ms = (uint32_t)((conn->loop->now_us + 999) / 1000);
}

static void want(ioloop_conn_t *conn, unsigned what)
{
    if (conn->todo == 0)
        ioloop__defer(conn->loop, &conn->work);
    conn->todo |= (uint8_t)what;
}

static void stop_timer(ioloop_conn_t *conn)
{
    if (conn->timer > 0)
        ioloop_cancel_timer(conn->loop, conn->timer);
    conn->timer = 0;
}

static bool reading(const ioloop_conn_t *conn)
{
    if (conn->flags & (F_EOF | F_CONNECTING))
        return false;
    switch (conn->state) {
    case IOLOOP__CONN_OPEN:
        return !(conn->flags & F_PAUSED);
    case IOLOOP__CONN_CLOSING:
    case IOLOOP__CONN_LINGER:
        return true; /* to discard what comes, so that closing meets no unread input */
    default:
        return false;
    }
}

static uint8_t wanted_events(const ioloop_conn_t *conn)
{
    uint8_t events = 0;

    if (conn->flags & (F_CONNECTING | F_BLOCKED))
        events |= IOLOOP_WRITE;
    if (reading(conn))
        events |= IOLOOP_READ;
    return events;
}

/* The connection stops being open to the application and to other threads' calls. */
static void leave_open(ioloop_conn_t *conn)
{
    /* The owner's counters first: a thread that finds the id no longer open (the release
     * store below) sees them updated too. */
    if (conn->cls->closing != NULL)
        conn->cls->closing(conn, !(conn->flags & F_PROXY));
    ioloop__conns_unpublish(conn->loop, conn_id(conn));
}

/* The connection opens to the application: its owner counts it, on_open runs. */
static void open_up(ioloop_conn_t *conn)
{
    ioloop__conns_publish(conn->loop, conn_id(conn), conn->cls->owner);
    if (conn->cls->opened != NULL)
        conn->cls->opened(conn);
    if (conn->cls->handlers.on_open != NULL)
        conn->cls->handlers.on_open(conn);
}

/* Ends the connection: out of the handler table now, on_close and the rest deferred. */
static void finish(ioloop_conn_t *conn, int err)
{
    if (conn->state == IOLOOP__CONN_DEAD)
        return;
    if (conn->state == IOLOOP__CONN_OPEN)
        leave_open(conn);
    conn->state = IOLOOP__CONN_DEAD;
    conn->err = (int16_t)err;
    /* The fd goes now, and with it the registration: closing the only reference drops it
     * from the epoll set, so there is no EPOLL_CTL_DEL, and no later call on a number another
     * thread may have reused. */
    ioloop__conn_detach(conn);
    stop_timer(conn);
    if (conn->flags & F_NAMED)
        ioloop__connect_done(conn);
    want(conn, T_REAP);
}

void ioloop__conn_abort(ioloop_conn_t *conn, int err)
{
    finish(conn, err);
}

static void watch(ioloop_conn_t *conn)
{
    uint8_t events = wanted_events(conn);
    int err;

    if (conn->state == IOLOOP__CONN_DEAD || !(conn->flags & F_REGISTERED) ||
        events == conn->events)
        return; /* (a connection still resolving its name has no socket: nothing to watch) */
    if ((err = ioloop__handler_set(conn->loop, conn->fd, events)) < 0) {
        finish(conn, err);
        return;
    }
    conn->events = events;
}

/*
 * Runs the on_flushed callbacks whose bytes reached the kernel, oldest first, each with err;
 * with `all`, every one left. A callback may write, close, or add callbacks (which run in
 * this same pass if nothing is pending).
 */
static void run_flushed(ioloop_conn_t *conn, int err, bool all)
{
    struct ioloop_flushed *f;

    while (conn->out != NULL && (f = conn->out->flushed) != NULL &&
           (all || f->target <= conn->out->sent)) {
        conn->out->flushed = f->next;
        if (f->next == NULL)
            conn->out->flushed_last = NULL;
        f->fn(conn, err, f->arg);
        free(f);
    }
}

static void reap(ioloop_conn_t *conn)
{
    struct ioloop_conn_class *cls = conn->cls;
    void (*gone)(const struct ioloop_conn_class *cls) = cls->gone;
    bool own_class = conn->flags & F_OWN_CLASS;
    int err = conn->err;

    run_flushed(conn, err, true);
    if (cls->handlers.on_close != NULL && !(conn->flags & F_PROXY))
        cls->handlers.on_close(conn, err);
    ioloop__buf_free(&conn->in);
    ioloop__buf_free(&conn->out);
    ioloop__conns_remove(conn->loop, conn_id(conn));
    free(conn);
    if (gone != NULL)
        gone(cls); /* the owner may be freed as soon as this returns */
    if (own_class)
        free(cls);
}

static void on_proxy_deadline(ioloop_t *loop, void *arg)
{
    ioloop_conn_t *conn = arg;

    conn->timer = 0;
    finish(conn, -ETIMEDOUT);
}

/* ---- Closing ---------------------------------------------------------------------------- */

static void on_linger_over(ioloop_t *loop, void *arg)
{
    ioloop_conn_t *conn = arg;

    conn->timer = 0;
    finish(conn, 0);
}

/* Everything written is with the kernel: shut down for writing, then wait for the peer's EOF
 * (unless it came already) so that closing never meets unread input. */
static void shut_down(ioloop_conn_t *conn)
{
    shutdown(conn->fd, SHUT_WR);
    if (conn->flags & F_EOF) {
        finish(conn, 0);
        return;
    }
    conn->state = IOLOOP__CONN_LINGER;
    stop_timer(conn); /* the idle timeout is over: the deadline counts from here */
    conn->timer = ioloop_run_after(conn->loop, IOLOOP_CONN_LINGER_MS, on_linger_over, conn);
    if (conn->timer < 0) {
        conn->timer = 0;
        finish(conn, 0); /* no deadline to be had: close now rather than wait forever */
        return;
    }
    watch(conn);
}

/* OPEN -> CLOSING: nothing more is presented or accepted; flush, then shut down. */
static void begin_close(ioloop_conn_t *conn)
{
    leave_open(conn);
    conn->state = IOLOOP__CONN_CLOSING;
    if (!(conn->flags & F_IN_DATA))
        ioloop__buf_free(&conn->in); /* never presented again (present() drops it too) */
    watch(conn);
    want(conn, T_FLUSH);
}

static void peer_eof(ioloop_conn_t *conn)
{
    if (conn->flags & F_EOF)
        return;
    conn->flags |= F_EOF;
    switch (conn->state) {
    case IOLOOP__CONN_OPEN:
        watch(conn);
        if (conn->cls->handlers.on_eof != NULL)
            conn->cls->handlers.on_eof(conn); /* half-close: the application closes */
        else
            begin_close(conn);
        break;
    case IOLOOP__CONN_CLOSING:
        watch(conn); /* once drained, shut_down() closes at once */
        break;
    case IOLOOP__CONN_LINGER:
        finish(conn, 0);
        break;
    }
}

void ioloop_conn_close(ioloop_conn_t *conn)
{
    if (usable(conn) == 0)
        begin_close(conn);
}

/* ---- Writing ---------------------------------------------------------------------------- */

/* The kernel did not take everything: wait for writability. */
static void block(ioloop_conn_t *conn)
{
    conn->flags |= F_BLOCKED;
    watch(conn);
}

static void sent(ioloop_conn_t *conn, size_t n)
{
    ioloop__buf_consume(conn->out, n);
    conn->out->sent += n;
    touch(conn);
}

/* One send of the gathered output. Returns 0, or -1 if the connection died. */
static int send_pending(ioloop_conn_t *conn)
{
    ssize_t n;

    do
        n = send(conn->fd, ioloop__buf_peek(conn->out), pending(conn), MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN) {
            finish(conn, -errno);
            return -1;
        }
        n = 0;
    }
    if (n > 0)
        sent(conn, (size_t)n);
    if (pending(conn) > 0)
        block(conn);
    return conn->state == IOLOOP__CONN_DEAD ? -1 : 0;
}

/* After output reached the kernel: the on_flushed callbacks it satisfied (also when more is
 * still pending); then, once all is out, the next step of a close, or on_drain if the
 * connection had to wait. */
static void after_send(ioloop_conn_t *conn, bool waited)
{
    run_flushed(conn, 0, false);
    if (conn->state == IOLOOP__CONN_DEAD || (conn->flags & F_BLOCKED) || pending(conn) > 0)
        return;
    ioloop__buf_free(&conn->out); /* drained, no callback left: an idle connection holds none */
    if (conn->state == IOLOOP__CONN_CLOSING && !(conn->flags & F_CONNECTING))
        shut_down(conn);
    else if (waited && conn->cls->handlers.on_drain != NULL)
        conn->cls->handlers.on_drain(conn);
}

/* The deferred flush: everything gathered goes to the kernel in one send (unless the kernel
 * is refusing output: then only the callbacks already satisfied run). */
static void flush(ioloop_conn_t *conn)
{
    if (conn->state == IOLOOP__CONN_DEAD)
        return;
    if (conn->flags & F_CONNECTING) {
        /* Closed before it had a socket, with nothing to deliver: no need to connect. */
        if (conn->state == IOLOOP__CONN_CLOSING && conn->fd < 0 && conn->out == NULL)
            finish(conn, 0);
        return;
    }
    if (!(conn->flags & F_BLOCKED) && pending(conn) > 0 && send_pending(conn) < 0)
        return;
    after_send(conn, false);
}

static void handle_writable(ioloop_conn_t *conn)
{
    conn->flags &= (uint16_t)~F_BLOCKED;
    if (send_pending(conn) < 0)
        return;
    if (!(conn->flags & F_BLOCKED))
        watch(conn);
    after_send(conn, !(conn->flags & F_BLOCKED));
}

/*
 * A large write: the gathered bytes and the new ones in one sendmsg, and only what the kernel
 * did not take is copied. A socket failing here ends the connection like a failing flush
 * would (on_close reports it); the bytes were the connection's.
 */
static int write_direct(ioloop_conn_t *conn, const struct iovec *iov, int iovcnt,
                        size_t total)
{
    struct iovec vec[DIRECT_IOV_MAX];
    struct msghdr msg = {.msg_iov = vec};
    size_t gathered = pending(conn), n, skip;
    ssize_t rc;

    if (gathered > 0)
        vec[msg.msg_iovlen++] = (struct iovec){(void *)ioloop__buf_peek(conn->out), gathered};
    memcpy(vec + msg.msg_iovlen, iov, (size_t)iovcnt * sizeof *iov);
    msg.msg_iovlen += (size_t)iovcnt;
    do
        rc = sendmsg(conn->fd, &msg, MSG_NOSIGNAL);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno != EAGAIN) {
        finish(conn, -errno);
        return 0;
    }
    n = rc > 0 ? (size_t)rc : 0;
    if (gathered > 0)
        sent(conn, n < gathered ? n : gathered);
    else if (n > 0)
        touch(conn);
    skip = n > gathered ? n - gathered : 0; /* the new bytes the kernel took */
    if (skip < total) {
        if (ioloop__buf_reserve(&conn->out, total - skip) < 0) {
            if (n == 0)
                return -ENOMEM; /* nothing was taken */
            finish(conn, -ENOMEM); /* the stream would have a hole: it cannot go on */
            return 0;
        }
        for (int i = 0; i < iovcnt; i++) {
            size_t from = skip < iov[i].iov_len ? skip : iov[i].iov_len;

            skip -= from;
            memcpy(conn->out->data + conn->out->end, (const char *)iov[i].iov_base + from,
                   iov[i].iov_len - from);
            conn->out->end += iov[i].iov_len - from;
        }
    }
    if (pending(conn) > 0)
        block(conn);
    if (conn->out != NULL && conn->out->flushed != NULL)
        want(conn, T_FLUSH); /* on_flushed callbacks may be due, after this callback */
    else if (conn->out != NULL && pending(conn) == 0)
        ioloop__buf_free(&conn->out);
    return 0;
}

static int write_iov(ioloop_conn_t *conn, const struct iovec *iov, int iovcnt, size_t total)
{
    struct ioloop_buf *out;
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    if (total > conn->cls->max_output || pending(conn) > conn->cls->max_output - total)
        return -ENOBUFS;
    if (total == 0)
        return 0;
    if (total >= IOLOOP_CONN_WRITE_DIRECT && iovcnt < DIRECT_IOV_MAX &&
        !(conn->flags & (F_CONNECTING | F_BLOCKED)))
        return write_direct(conn, iov, iovcnt, total);
    if (ioloop__buf_reserve(&conn->out, total) < 0)
        return -ENOMEM;
    out = conn->out;
    for (int i = 0; i < iovcnt; i++) {
        memcpy(out->data + out->end, iov[i].iov_base, iov[i].iov_len);
        out->end += iov[i].iov_len;
    }
    if (!(conn->flags & (F_CONNECTING | F_BLOCKED)))
        want(conn, T_FLUSH);
    return 0;
}

int ioloop_conn_write(ioloop_conn_t *conn, const void *data, size_t len)
{
    struct iovec iov = {(void *)data, len};

    if (data == NULL && len > 0)
        return -EINVAL;
    return write_iov(conn, &iov, 1, len);
}

int ioloop_conn_writev(ioloop_conn_t *conn, const struct iovec *iov, int iovcnt)
{
    size_t total = 0;

    if (iovcnt < 0 || iovcnt > IOV_MAX || (iov == NULL && iovcnt > 0))
        return -EINVAL;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_base == NULL && iov[i].iov_len > 0)
            return -EINVAL;
        if (iov[i].iov_len > SIZE_MAX - total)
            return -ENOBUFS; /* more than any output limit */
        total += iov[i].iov_len;
    }
    return write_iov(conn, iov, iovcnt, total);
}

int ioloop_conn_on_flushed(ioloop_conn_t *conn, ioloop_conn_flushed_fn fn, void *arg)
{
    struct ioloop_flushed *f;
    int err;

    if (fn == NULL)
        return -EINVAL;
    if ((err = usable(conn)) < 0)
        return err;
    f = malloc(sizeof *f);
    if (f == NULL || ioloop__buf_reserve(&conn->out, 0) < 0) {
        free(f);
        return -ENOMEM;
    }
    *f = (struct ioloop_flushed){NULL, conn->out->sent + pending(conn), fn, arg};
    if (conn->out->flushed_last != NULL)
        conn->out->flushed_last->next = f;
    else
        conn->out->flushed = f;
    conn->out->flushed_last = f;
    if (!(conn->flags & F_BLOCKED))
        want(conn, T_FLUSH); /* with nothing pending, it runs after the current callback */
    return 0;
}

size_t ioloop_conn_pending(const ioloop_conn_t *conn)
{
    return conn != NULL ? pending(conn) : 0;
}

/* ---- Reading ---------------------------------------------------------------------------- */

/*
 * Presents input to on_data and keeps what it leaves: `data` is the input buffer's bytes
 * (`kept`) or a stack buffer's, when no input was kept. Input a closed connection left is
 * dropped; input at the limit that on_data did not touch closes the connection.
 */
static void present(ioloop_conn_t *conn, const char *data, size_t len, bool kept)
{
    size_t used;

    conn->flags |= F_IN_DATA;
    used = conn->cls->handlers.on_data(conn, data, len);
    conn->flags &= (uint16_t)~(F_IN_DATA);
    if (used > len)
        used = len;
    if (conn->state != IOLOOP__CONN_OPEN) {
        if (conn->state != IOLOOP__CONN_DEAD)
            ioloop__buf_free(&conn->in);
        return;
    }
    if (kept)
        ioloop__buf_consume(conn->in, used);
    else if (ioloop__buf_append(&conn->in, data + used, len - used) < 0) {
        finish(conn, -ENOMEM);
        return;
    }
    if (ioloop__buf_len(conn->in) == 0)
        ioloop__buf_free(&conn->in); /* an idle connection holds no buffer */
    if (used == 0 && ioloop__buf_len(conn->in) >= conn->cls->max_input &&
        !(conn->flags & F_PAUSED)) {
        finish(conn, -ENOBUFS);
        return;
    }
    if ((conn->flags & F_RESUMED) && !(conn->flags & F_PAUSED) && conn->in != NULL)
        want(conn, T_REDELIVER); /* paused and resumed inside on_data: present it again */
    conn->flags &= (uint16_t)~F_RESUMED;
}

static void deliver(ioloop_conn_t *conn)
{
    if (conn->in != NULL)
        present(conn, ioloop__buf_peek(conn->in), ioloop__buf_len(conn->in), true);
}

/* A read returned 0 (EOF) or failed with err. */
static void read_failed(ioloop_conn_t *conn, int err)
{
    if (err == 0)
        peer_eof(conn);
    else if (err != -EAGAIN && err != -EINTR)
        finish(conn, err);
}

/* CLOSING or LINGER: what the peer still sends is read and thrown away. */
static void discard(ioloop_conn_t *conn)
{
    char sink[IOLOOP__READ_EXTRA];
    ssize_t n = read(conn->fd, sink, sizeof sink);

    if (n <= 0)
        read_failed(conn, n < 0 ? -errno : 0);
}

/* The open that waited for the PROXY header: a private class keeps the client's address. */
static int take_proxy_header(ioloop_conn_t *conn, const struct ioloop_proxy_header *h)
{
    struct proxied_class *pc;

    if (h->local)
        return 0; /* a health check from the proxy itself: the socket's peer stands */
    pc = malloc(sizeof *pc);
    if (pc == NULL)
        return -ENOMEM;
    pc->cls = *conn->cls;
    pc->peer = h->src;
    pc->peer_len = h->src_len;
    if (conn->flags & F_OWN_CLASS)
        free(conn->cls);
    conn->cls = &pc->cls;
    conn->flags |= F_OWN_CLASS | F_PROXIED;
    return 0;
}

/* Reads until the PROXY header is whole, then opens the connection; what came behind the
 * header is the application's first input. A malformed or oversized header closes the
 * connection without on_open (the owner counts it as refused). */
static void read_proxy_header(ioloop_conn_t *conn)
{
    struct ioloop_proxy_header h;
    ssize_t n = ioloop__buf_read_fd(&conn->in, conn->fd,
                                    IOLOOP__PROXY_MAX - ioloop__buf_len(conn->in));
    int len, err;

    if (n <= 0) {
        if (n != -EAGAIN && n != -EINTR)
            finish(conn, n == 0 ? -ECONNRESET : (int)n); /* gone before its header */
        return;
    }
    len = ioloop__proxy_parse(ioloop__buf_peek(conn->in), ioloop__buf_len(conn->in), &h);
    if (len == 0)
        return; /* a valid beginning: wait for more */
    if (len < 0 || (err = take_proxy_header(conn, &h)) < 0) {
        finish(conn, len < 0 ? -EPROTO : err);
        return;
    }
    ioloop__buf_consume(conn->in, (size_t)len);
    if (ioloop__buf_len(conn->in) == 0)
        ioloop__buf_free(&conn->in);
    conn->flags &= (uint16_t)~F_PROXY;
    stop_timer(conn);
    touch(conn);
    open_up(conn);
    if (conn->state == IOLOOP__CONN_OPEN && !(conn->flags & F_PAUSED))
        deliver(conn);
}

static void handle_readable(ioloop_conn_t *conn)
{
    size_t limit = conn->cls->max_input, kept = ioloop__buf_len(conn->in);
    ssize_t n;

    if (conn->flags & F_PROXY) {
        read_proxy_header(conn);
        return;
    }
    if (conn->state != IOLOOP__CONN_OPEN) {
        discard(conn);
        return;
    }
    if (kept >= limit) { /* the limit was lowered below what is kept */
        deliver(conn);
        return;
    }
    if (kept == 0) {
        char stack[IOLOOP__READ_EXTRA];

        n = read(conn->fd, stack, limit < sizeof stack ? limit : sizeof stack);
        if (n > 0) {
            touch(conn);
            present(conn, stack, (size_t)n, false);
            return;
        }
        read_failed(conn, n < 0 ? -errno : 0);
        return;
    }
    n = ioloop__buf_read_fd(&conn->in, conn->fd, limit - kept);
    if (n > 0) {
        touch(conn);
        deliver(conn);
        return;
    }
    read_failed(conn, (int)n);
}

/* ---- Events and deferred work ----------------------------------------------------------- */

static void handle_connected(ioloop_conn_t *conn)
{
    int so_error = 0;
    socklen_t len = sizeof so_error;

    if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &so_error, &len) < 0)
        so_error = errno;
    if (so_error != 0) {
        if (conn->flags & F_NAMED)
            ioloop__connect_next(conn, -so_error); /* the name's next address, if any */
        else
            finish(conn, -so_error);
        return;
    }
    if (conn->flags & F_NAMED)
        ioloop__connect_done(conn);
    conn->flags &= (uint16_t)~F_CONNECTING;
    touch(conn);
    watch(conn);
    if (conn->cls->handlers.on_open != NULL && conn->state != IOLOOP__CONN_DEAD)
        conn->cls->handlers.on_open(conn);
    flush(conn); /* what was written while connecting, and by on_open, in one send */
}

/* Nothing watched reported anything but an error or a hangup. */
static void handle_error(ioloop_conn_t *conn)
{
    int so_error = 0;
    socklen_t len = sizeof so_error;

    getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
    if (so_error != 0)
        finish(conn, -so_error);
    else if (!(conn->flags & F_EOF))
        peer_eof(conn);
    else /* both directions are shut down: nothing more can be written */
        finish(conn, conn->state == IOLOOP__CONN_OPEN ? -EPIPE : 0);
}

static void on_event(ioloop_t *loop, int fd, int events, void *arg)
{
    ioloop_conn_t *conn = arg;

    if (conn->flags & F_CONNECTING) {
        handle_connected(conn);
        return;
    }
    if ((events & IOLOOP_WRITE) && (conn->flags & F_BLOCKED))
        handle_writable(conn);
    if ((events & IOLOOP_READ) && reading(conn))
        handle_readable(conn);
    if ((events & IOLOOP_ERROR) && !(events & (IOLOOP_READ | IOLOOP_WRITE)) &&
        conn->state != IOLOOP__CONN_DEAD)
        handle_error(conn);
}

static void on_work(ioloop_t *loop, struct ioloop_deferred *node)
{
    ioloop_conn_t *conn = ioloop__container_of(node, ioloop_conn_t, work);
    unsigned todo = conn->todo;

    conn->todo = 0; /* what runs below may queue the node again, for the next round */
    if (todo & T_REAP) {
        reap(conn);
        return;
    }
    if ((todo & T_REDELIVER) && conn->state == IOLOOP__CONN_OPEN &&
        !(conn->flags & F_PAUSED))
        deliver(conn);
    if (todo & T_FLUSH)
        flush(conn);
}

ioloop_conn_t *ioloop__conn_open(ioloop_t *loop, int fd, struct ioloop_conn_class *cls,
                                 enum ioloop_conn_start start)
{
    ioloop_conn_t *conn = calloc(1, sizeof *conn);
    uint64_t id;
    int err;

    if (conn == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    conn->loop = loop;
    conn->fd = fd;
    conn->cls = cls;
    conn->work.fn = on_work;
    conn->state = IOLOOP__CONN_OPEN;
    /* An outgoing connection's class is its own; for a name, it is connect.c's kind. */
    conn->flags = start == IOLOOP__CONN_CONNECTING  ? F_CONNECTING | F_OWN_CLASS
                  : start == IOLOOP__CONN_RESOLVING ? F_CONNECTING | F_OWN_CLASS | F_NAMED
                                                    : 0;
    if ((err = ioloop__conns_add(loop, conn, &id)) < 0)
        goto fail;
    conn->slot = ioloop__conn_id_slot(id);
    if (start != IOLOOP__CONN_RESOLVING) {
        conn->events = wanted_events(conn);
        if ((err = ioloop__handler_add(loop, fd, conn->events, on_event, conn)) < 0) {
            ioloop__conns_remove(loop, id);
            goto fail;
        }
        conn->flags |= F_REGISTERED;
    }
    touch(conn);
    if (start == IOLOOP__CONN_CONNECTING || start == IOLOOP__CONN_RESOLVING) {
        ioloop__conns_publish(loop, id, cls->owner); /* its owner is the application */
    } else if (start == IOLOOP__CONN_PROXIED) {
        conn->flags |= F_PROXY;
        conn->timer = ioloop_run_after(loop, PROXY_DEADLINE_MS, on_proxy_deadline, conn);
        if (conn->timer < 0) {
            conn->timer = 0;
            finish(conn, -ENOMEM);
        }
    } else {
        open_up(conn);
    }
    return conn;

fail:
    free(conn);
    errno = -err;
    return NULL;
}

int ioloop__conn_attach(ioloop_conn_t *conn, int fd)
{
    uint8_t events = wanted_events(conn);
    int err = ioloop__handler_add(conn->loop, fd, events, on_event, conn);

    if (err < 0)
        return err;
    conn->fd = fd;
    conn->events = events;
    conn->flags |= F_REGISTERED;
    return 0;
}

void ioloop__conn_detach(ioloop_conn_t *conn)
{
    if (conn->flags & F_REGISTERED)
        ioloop__handler_forget(conn->loop, conn->fd); /* the close below drops it */
    conn->flags &= (uint16_t)~F_REGISTERED;
    if (conn->fd >= 0)
        close(conn->fd);
    conn->fd = -1;
}

/* ---- Pausing, limits, idle timeout ------------------------------------------------------ */

int ioloop_conn_pause(ioloop_conn_t *conn)
{
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    conn->flags |= F_PAUSED;
    watch(conn);
    return 0;
}

int ioloop_conn_resume(ioloop_conn_t *conn)
{
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    if (!(conn->flags & F_PAUSED))
        return 0;
    conn->flags &= (uint16_t)~F_PAUSED;
    watch(conn);
    /* Input kept while paused is presented again without waiting for new bytes. */
    if (conn->flags & F_IN_DATA)
        conn->flags |= F_RESUMED; /* present() decides, once on_data returned */
    else if (conn->in != NULL)
        want(conn, T_REDELIVER);
    return 0;
}

int ioloop_conn_set_limits(ioloop_conn_t *conn, size_t max_input, size_t max_output)
{
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    if (!(conn->flags & F_OWN_CLASS)) { /* the first limits of its own: a private class */
        struct ioloop_conn_class *cls = malloc(sizeof *cls);

        if (cls == NULL)
            return -ENOMEM;
        *cls = *conn->cls;
        conn->cls = cls;
        conn->flags |= F_OWN_CLASS;
    }
    if (max_input > 0)
        conn->cls->max_input = max_input;
    if (max_output > 0)
        conn->cls->max_output = max_output;
    return 0;
}

static void on_idle_timer(ioloop_t *loop, void *arg)
{
    ioloop_conn_t *conn = arg;
    int32_t idle = (int32_t)((uint32_t)(loop->now_us / 1000) - conn->active_ms);

    conn->timer = 0;
    if (idle < 0)
        idle = 0;
    if ((uint32_t)idle >= conn->idle_ms) {
        finish(conn, -ETIMEDOUT);
        return;
    }
    /* There was progress since it was armed: wait for the rest of the period. */
    conn->timer = ioloop_run_after(loop, conn->idle_ms - (uint32_t)idle, on_idle_timer, conn);
    if (conn->timer < 0) {
        int err = (int)conn->timer;

        conn->timer = 0;
        finish(conn, err);
    }
}

int ioloop_conn_set_idle_timeout(ioloop_conn_t *conn, uint64_t ms)
{
    int64_t timer = 0;
    int err;

    if ((err = usable(conn)) < 0)
        return err;
    if (ms > IDLE_MS_MAX)
        return -EINVAL;
    if (ms > 0 && (timer = ioloop_run_after(conn->loop, ms, on_idle_timer, conn)) < 0)
        return (int)timer;
    stop_timer(conn);
    conn->timer = timer;
    conn->idle_ms = (uint32_t)ms;
    touch(conn);
    return 0;
}

/* ---- Accessors -------------------------------------------------------------------------- */

int ioloop_conn_peer(const ioloop_conn_t *conn, struct sockaddr_storage *addr, socklen_t *len)
{
    int err;

    if (conn == NULL || addr == NULL || len == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(conn->loop)) < 0)
        return err;
    if (conn->flags & F_CONNECTING)
        return -ENOTCONN;
    if (conn->flags & F_PROXIED) {
        const struct proxied_class *pc = (const struct proxied_class *)conn->cls;

        memcpy(addr, &pc->peer, *len < pc->peer_len ? *len : pc->peer_len);
        *len = pc->peer_len;
        return 0;
    }
    return getpeername(conn->fd, (struct sockaddr *)addr, len) == 0 ? 0 : -errno;
}

uint64_t ioloop_conn_id(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn_id(conn) : 0;
}

int ioloop_conn_fd(const ioloop_conn_t *conn)
{
    if (conn == NULL)
        return -EINVAL;
    if (conn->fd >= 0)
        return conn->fd;
    return conn->state == IOLOOP__CONN_DEAD ? -EBADF : -ENOTCONN; /* or a name being looked up */
}

ioloop_t *ioloop_conn_loop(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn->loop : NULL;
}

void *ioloop_conn_user(const ioloop_conn_t *conn)
{
    return conn != NULL ? conn->cls->user : NULL;
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
