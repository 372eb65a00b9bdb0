/*
 * TCP (and unix-socket) servers and buffered connections.
 *
 * A server owns a listening socket and an acceptor thread; each accepted connection is handed
 * round-robin to a loop of a pool and lives in that loop's thread for its whole life. A
 * connection writes directly to its socket, buffers what the kernel does not take, watches for
 * writability only while something is buffered, and closes only after its output drained.
 *
 * Addresses: "127.0.0.1:8080", "0.0.0.0:0", "[::1]:9000", "unix:/path/to.sock". Hosts are
 * numeric (no name resolution, which would block a loop).
 *
 * Every callback of a connection runs in its loop's thread: on_open once, then on_data zero or
 * more times, then on_close exactly once, after which the connection pointer is invalid.
 * on_close never runs inside another call on the same connection: when a write fails or the
 * connection is closed from a callback, on_close comes after that callback returned.
 */
#ifndef IOLOOP_SERVER_H
#define IOLOOP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <ioloop/export.h>
#include <ioloop/loop.h>
#include <ioloop/pool.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A listening server. Opaque. */
typedef struct ioloop_server ioloop_server_t;
/** One connection, accepted or connected. Opaque; valid until its on_close returns. */
typedef struct ioloop_conn ioloop_conn_t;

/** What a connection calls; the struct is copied, so it need not outlive the call. */
typedef struct ioloop_conn_handlers {
    /** Optional. The connection is open (accepted, or connect() completed). */
    void (*on_open)(ioloop_conn_t *conn);
    /**
     * Required. `data` holds every byte received and not yet consumed; returns how many bytes
     * it consumed (more than len counts as len). The rest is presented again, followed by new
     * bytes, on the next call. `data` is valid only during the call.
     */
    size_t (*on_data)(ioloop_conn_t *conn, const char *data, size_t len);
    /** Optional. The output buffer drained (after a write that could not complete at once). */
    void (*on_drain)(ioloop_conn_t *conn);
    /**
     * Optional. The connection is closed: err is 0 for an orderly close (peer EOF with nothing
     * pending, or ioloop_conn_close() after the output drained), else a negative errno:
     * -ECONNRESET, -EPIPE, -ETIMEDOUT (idle timeout), -ECONNREFUSED (connect failed),
     * -ECANCELED (server freed), ... The conn is freed when it returns.
     */
    void (*on_close)(ioloop_conn_t *conn, int err);
} ioloop_conn_handlers_t;

/* ---- Servers ---------------------------------------------------------------------------- */

/**
 * Binds and listens on `address` (SO_REUSEADDR, backlog 4096 capped by the kernel's somaxconn).
 * For "unix:" a leftover socket file nobody listens on is replaced; any other existing file is
 * EADDRINUSE. Accepted connections go to the loops of `pool` with `handlers`; `user` is what
 * ioloop_conn_user() returns for them. Nothing is accepted until ioloop_server_start().
 * Returns the server, or NULL with errno: EINVAL (NULL pool or handlers, no on_data, malformed
 * address), EADDRINUSE, EACCES, EMFILE, ENOMEM.
 * Any thread; that thread owns the server.
 */
IOLOOP_EXPORT ioloop_server_t *ioloop_server_new(ioloop_pool_t *pool, const char *address,
                                                 const ioloop_conn_handlers_t *handlers,
                                                 void *user);

/**
 * Starts the acceptor thread. It accepts (non-blocking, close-on-exec, TCP_NODELAY) in bounded
 * batches and hands each connection to ioloop_pool_next() through ioloop_add_callback(). When
 * accept fails for lack of fds it sheds the pending connection (a reserve fd), pauses
 * accepting for 100 ms so it cannot spin, and logs a warning at most once a second.
 * Returns 0, -EINVAL (NULL), -EALREADY (already started), or a negative errno from creating
 * the thread. The owning thread.
 */
IOLOOP_EXPORT int ioloop_server_start(ioloop_server_t *server);

/** Returns the bound TCP port (useful after ":0"), or -EINVAL (NULL or a unix socket). [any thread] */
IOLOOP_EXPORT int ioloop_server_port(const ioloop_server_t *server);

/**
 * Copies `len` bytes and queues them for the connection `conn_id` of this server; its loop
 * writes them with ioloop_conn_write(). Returns 0 when queued, -ENOENT when no open connection
 * of this server has that id at the time of the call, -EINVAL (NULL server, or NULL data with
 * len > 0), -ENOMEM, -ESHUTDOWN (the loop is stopping). If the connection closes before its
 * loop runs the write, the bytes are dropped with it. [any thread]
 */
IOLOOP_EXPORT int ioloop_server_send(ioloop_server_t *server, uint64_t conn_id,
                                     const void *data, size_t len);

/**
 * Stops the acceptor, closes the listener (removing a unix socket file), closes every
 * connection the server accepted — each gets on_close(conn, -ECANCELED) in its own loop's
 * thread — and returns after all of them, then frees the server. The pool's loops must still
 * be running (if one is not, its connections stay open, the server is not freed, and an error
 * is logged). NULL is fine. The owning thread; never one of the pool's loops, which it waits
 * for (that aborts with a message).
 */
IOLOOP_EXPORT void ioloop_server_free(ioloop_server_t *server);

/* ---- Outgoing connections --------------------------------------------------------------- */

/**
 * Connects to `address` without blocking; the connection belongs to `loop`. on_open runs when
 * the connection is established, or on_close(conn, -ECONNREFUSED) (or the real errno) when it
 * fails — also when it fails at once. Writes made before on_open are buffered and sent then.
 * Returns the connection, or NULL with errno: EINVAL (NULL loop or handlers, no on_data,
 * malformed address), EPERM (wrong thread), EMFILE, ENOMEM. Loop thread.
 */
IOLOOP_EXPORT ioloop_conn_t *ioloop_connect(ioloop_t *loop, const char *address,
                                            const ioloop_conn_handlers_t *handlers, void *user);

/* ---- Connections: loop thread only ------------------------------------------------------ */

/**
 * Writes `len` bytes in order after everything written before: directly to the socket if
 * nothing is pending, the rest copied into the output buffer (watching for writability until
 * it drains, then on_drain). Returns 0 (the bytes are the connection's), -EPIPE after
 * ioloop_conn_close() or once the connection failed, -EINVAL (NULL conn, or NULL data with
 * len > 0), -ENOMEM. A failing socket makes on_close run after the current callback.
 */
IOLOOP_EXPORT int ioloop_conn_write(ioloop_conn_t *conn, const void *data, size_t len);

/**
 * Closes the connection gracefully: stops reading, flushes the pending output, shuts the
 * socket down for writing and closes it; then on_close(conn, 0) (or an error if the flush
 * failed). Runs on_close later, never inside this call. Idempotent; NULL is ignored.
 */
IOLOOP_EXPORT void ioloop_conn_close(ioloop_conn_t *conn);

/**
 * Stops reading from the socket (backpressure: the peer sees the TCP window fill); writing
 * goes on. Returns 0 (also if already paused), -EINVAL (NULL), -EPIPE (closing or closed).
 */
IOLOOP_EXPORT int ioloop_conn_pause(ioloop_conn_t *conn);

/** Starts reading again after ioloop_conn_pause(). Returns 0, -EINVAL, -EPIPE. */
IOLOOP_EXPORT int ioloop_conn_resume(ioloop_conn_t *conn);

/**
 * Closes the connection with -ETIMEDOUT once `ms` milliseconds pass without any read or
 * write progress; 0 turns the timeout off. Returns 0, -EINVAL (NULL), -EPIPE (closing or
 * closed), -ENOMEM.
 */
IOLOOP_EXPORT int ioloop_conn_set_idle_timeout(ioloop_conn_t *conn, uint64_t ms);

/** Returns the bytes waiting in the output buffer (0 for NULL). */
IOLOOP_EXPORT size_t ioloop_conn_pending(const ioloop_conn_t *conn);

/**
 * Returns the connection's id: unique in the process, never 0; for a server's connection it
 * encodes the loop that owns it. 0 for NULL. Pass it to ioloop_server_send() from other threads.
 */
IOLOOP_EXPORT uint64_t ioloop_conn_id(const ioloop_conn_t *conn);

/** Returns the socket fd (the connection owns it: do not close it), or -EINVAL for NULL. */
IOLOOP_EXPORT int ioloop_conn_fd(const ioloop_conn_t *conn);

/** Returns the loop the connection belongs to, or NULL. */
IOLOOP_EXPORT ioloop_t *ioloop_conn_loop(const ioloop_conn_t *conn);

/** Returns the `user` pointer given to ioloop_server_new() or ioloop_connect(), or NULL. */
IOLOOP_EXPORT void *ioloop_conn_user(const ioloop_conn_t *conn);

/** Attaches application data to the connection (the library never touches it). */
IOLOOP_EXPORT void ioloop_conn_set_data(ioloop_conn_t *conn, void *data);

/** Returns what ioloop_conn_set_data() attached, or NULL. */
IOLOOP_EXPORT void *ioloop_conn_data(const ioloop_conn_t *conn);

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_SERVER_H */
