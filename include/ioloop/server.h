/*
 * TCP (and unix-socket) servers and buffered connections.
 *
 * A server owns a listening socket and an acceptor thread; each accepted connection is handed
 * round-robin to a loop of a pool and lives in that loop's thread for its whole life. Every
 * connection, accepted or made by ioloop_connect(), belongs to its loop: ioloop_free() closes
 * the ones still open.
 *
 * Writing. ioloop_conn_write() and ioloop_conn_writev() gather bytes; what a callback wrote is
 * handed to the kernel when that callback returns, at the latest before the loop waits again,
 * with one send per connection for everything gathered (a server that answers 16 pipelined
 * requests with 16 writes makes one send). A large write (IOLOOP_CONN_WRITE_DIRECT bytes or
 * more) is not copied: it goes out at once by writev, behind the bytes gathered before it.
 * What the kernel does not take stays buffered and the connection watches for writability
 * until it drained (then on_drain). Output order is call order.
 *
 * Bounded memory. Every connection has an input limit and an output limit (defaults below;
 * per server with ioloop_server_new_opts(), per connection with ioloop_conn_set_limits()).
 *
 * Closing without loss. ioloop_conn_close() delivers every byte written before it: once the
 * output drained, the socket is shut down for writing and the connection keeps reading and
 * discarding until the peer's EOF or IOLOOP_CONN_LINGER_MS, and only then closes the fd, so
 * the kernel never answers unread input with a reset that would destroy the queued output.
 *
 * Addresses: "127.0.0.1:8080", "0.0.0.0:0", "[::1]:9000", "unix:/path/to.sock", and host
 * names: "localhost:6379", "db.internal:5432". ioloop_connect() looks a name up without
 * blocking (include/ioloop/resolve.h); ioloop_server_new() takes names from /etc/hosts alone.
 * A host name is RFC 1123's (see ioloop_resolve()); a host of digits and dots only must be a
 * dotted quad ("127.1" is malformed).
 *
 * Every callback of a connection runs in its loop's thread: on_open once, then on_data zero or
 * more times (then on_eof, if the handler is set and the peer shut down its side), then
 * on_close exactly once, after which the connection pointer is invalid. on_close never runs
 * inside another call on the same connection: when a write fails or the connection is closed
 * from a callback, on_close comes after that callback returned.
 */
#ifndef IOLOOP_SERVER_H
#define IOLOOP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <ioloop/export.h>
#include <ioloop/loop.h>
#include <ioloop/pool.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Default input limit of a connection: unconsumed bytes it buffers (16 MiB). */
#define IOLOOP_CONN_MAX_INPUT ((size_t)16 << 20)
/** Default output limit of a connection: bytes not yet handed to the kernel (64 MiB). */
#define IOLOOP_CONN_MAX_OUTPUT ((size_t)64 << 20)
/** Lossless close: the longest wait for the peer's EOF after the write shutdown, in ms. */
#define IOLOOP_CONN_LINGER_MS 2000
/** A write of at least this many bytes goes to the kernel at once instead of being copied. */
#define IOLOOP_CONN_WRITE_DIRECT ((size_t)32 << 10)

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
     * bytes, on the next call. `data` is valid only during the call. When the unconsumed
     * bytes reach the input limit and on_data consumes none of them, the connection closes
     * with -ENOBUFS.
     */
    size_t (*on_data)(ioloop_conn_t *conn, const char *data, size_t len);
    /** Optional. The output buffer drained (after a write the kernel could not take at once). */
    void (*on_drain)(ioloop_conn_t *conn);
    /**
     * Optional. The connection is closed: err is 0 for an orderly close (peer EOF with nothing
     * pending, or ioloop_conn_close() after the output drained), else a negative errno:
     * -ECONNRESET, -EPIPE, -ETIMEDOUT (idle timeout), -ECONNREFUSED (connect failed),
     * -ENOBUFS (input limit), -ENOMEM, -ECANCELED (server or loop freed), ...
     * The conn is freed when it returns.
     */
    void (*on_close)(ioloop_conn_t *conn, int err);
    /**
     * Optional. The peer shut down its side (half-close): no more on_data follows. Runs once,
     * after the last on_data. With this handler set the connection stays open for writing —
     * replies produced later by a timer, a work pool or another loop still go out — until the
     * application calls ioloop_conn_close() (or an error or the idle timeout ends it). Without
     * it, the peer's EOF closes the connection once its pending output drained.
     */
    void (*on_eof)(ioloop_conn_t *conn);
} ioloop_conn_handlers_t;

/** Runs once the bytes written before ioloop_conn_on_flushed() reached the kernel (err 0). */
typedef void (*ioloop_conn_flushed_fn)(ioloop_conn_t *conn, int err, void *arg);
/** Runs in a connection's loop for ioloop_server_call(); conn is NULL if it closed meanwhile. */
typedef void (*ioloop_conn_call_fn)(ioloop_conn_t *conn, void *arg);

/** A server's counters, as filled in by ioloop_server_get_stats(). */
typedef struct ioloop_server_stats {
    uint64_t accepted;     /**< connections accepted and opened (on_open ran); refused ones
                                are counted in `refused` only */
    uint64_t open;         /**< connections open now (not closing) */
    uint64_t refused;      /**< closed at once: max_conns reached, or shed for lack of fds */
    uint64_t send_dropped; /**< ioloop_server_send() bytes dropped because their connection
                                closed (or could not take them) before its loop wrote them */
} ioloop_server_stats_t;

/**
 * How a server accepts; see ioloop_server_new_opts(). Zero fields mean the defaults, so
 * `(ioloop_server_options_t){.reuseport = 1}` changes one thing.
 */
typedef struct ioloop_server_options {
    int      backlog;     /**< listen(2) backlog; 0: 4096, capped by the kernel's somaxconn */
    int      reuseport;   /**< 0: one acceptor thread hands connections round-robin to the
                               pool's loops (the default); 1: one SO_REUSEPORT listener per
                               pool loop, each loop accepting its own connections (no
                               acceptor thread, no hand-off; the kernel spreads clients over
                               the listeners, and over the processes of ioloop_prefork()) */
    unsigned max_conns;   /**< 0: no limit; else connections beyond it are accepted and
                               closed at once (counted in stats.refused) */
    size_t   max_input;   /**< per-connection input limit; 0: IOLOOP_CONN_MAX_INPUT */
    size_t   max_output;  /**< per-connection output limit; 0: IOLOOP_CONN_MAX_OUTPUT */
    int      proxy_protocol; /**< 1: every connection starts with a PROXY protocol v1 or v2
                                  header (HAProxy's spec), read and removed before on_open; a
                                  header that is malformed, longer than 107 bytes (v1) or
                                  16 + 4096 bytes (v2, TLVs included), or not complete within
                                  5 s closes the connection without on_open (stats.refused) */
} ioloop_server_options_t;

/* ---- Servers ---------------------------------------------------------------------------- */

/**
 * Binds and listens on `address` (SO_REUSEADDR, TCP_NODELAY, which accepted sockets inherit).
 * For "unix:" a leftover socket file nobody listens on is replaced; any other existing file is
 * EADDRINUSE. Accepted connections go to the loops of `pool` with `handlers` (copied); `user`
 * is what ioloop_conn_user() returns for them. Nothing is accepted until ioloop_server_start()
 * (the kernel queues clients meanwhile). The pool must outlive the server, or be freed first
 * (see ioloop_server_free()).
 * `options` may be NULL (the defaults). With reuseport, every listener ends up on the same
 * port, also for port 0 (ioloop_server_port() tells it).
 * A host name is looked up at the call in /etc/hosts alone, never by DNS (a server must start
 * without the network): the first line that lists it wins, IPv4 or IPv6 as that line says;
 * "localhost" not listed at all is 127.0.0.1.
 * Returns the server, or NULL with errno: EINVAL (NULL pool or handlers, no on_data, malformed
 * address, a negative backlog, reuseport or proxy_protocol other than 0 or 1, reuseport with a
 * "unix:" address), ENOENT (a well-formed host name /etc/hosts does not list), ENOTSUP (a host
 * name, and the library was built without c-ares), EADDRINUSE, EACCES, EMFILE, ENOMEM.
 * Any thread; that thread owns the server.
 */
IOLOOP_EXPORT ioloop_server_t *ioloop_server_new_opts(ioloop_pool_t *pool, const char *address,
                                                      const ioloop_conn_handlers_t *handlers,
                                                      void *user,
                                                      const ioloop_server_options_t *options);

/** ioloop_server_new_opts() with the default options. */
IOLOOP_EXPORT ioloop_server_t *ioloop_server_new(ioloop_pool_t *pool, const char *address,
                                                 const ioloop_conn_handlers_t *handlers,
                                                 void *user);

/**
 * Starts accepting. Default mode: the acceptor thread accepts (non-blocking, close-on-exec) in
 * batches of up to 64 and hands each batch to the pool's loops round-robin, one callback per
 * loop per batch; each loop makes its connections itself. Reuseport mode: each pool loop
 * watches its own listener and accepts in its own thread; this call returns once all do.
 * Either way, when accept fails for lack of fds the pending connection is shed (a reserve fd:
 * the client sees a close, not a hang; counted in stats.refused), accepting pauses for 100 ms
 * so it cannot spin, and a warning is logged at most once a second; a connection accepted
 * while max_conns are open is closed at once (stats.refused).
 * Returns 0, -EINVAL (NULL), -EALREADY (already started), -ESHUTDOWN (drained, or its pool
 * was freed), or a negative errno from creating the thread or watching a listener. The owning
 * thread; never a pool loop (-EDEADLK).
 */
IOLOOP_EXPORT int ioloop_server_start(ioloop_server_t *server);

/** Returns the bound TCP port (useful after ":0"), or -EINVAL (NULL or a unix socket). [any thread] */
IOLOOP_EXPORT int ioloop_server_port(const ioloop_server_t *server);

/**
 * Graceful stop: stops accepting — what is already queued in the listeners is accepted first,
 * so no client that connected is reset, and the listeners are closed when this returns —
 * then lets the open connections finish on their own. Returns 0 once none is left, or, when
 * `timeout_ms` passed first, the number still open (> 0); ioloop_server_free() then closes
 * those with -ECANCELED. -EINVAL (NULL). Calling it again waits again. The owning thread;
 * never a pool loop (-EDEADLK), which it would wait for.
 */
IOLOOP_EXPORT int ioloop_server_drain(ioloop_server_t *server, uint64_t timeout_ms);

/**
 * Copies `len` bytes and queues them for the connection `conn_id` of this server; its loop
 * writes them with ioloop_conn_write(), in order with the ioloop_server_send() and
 * ioloop_server_call() calls this thread made for that connection. Returns 0 when queued,
 * -ENOENT when no open connection of this server has that id at the time of the call (a
 * closing connection — after ioloop_conn_close(), or after the peer's EOF without an on_eof
 * handler — is not open), -EINVAL (NULL server, or NULL data with len > 0), -ENOMEM,
 * -ESHUTDOWN (the loop is stopping). Bytes whose connection closes before its loop writes
 * them are dropped with it and counted in ioloop_server_stats_t.send_dropped; bytes the
 * connection cannot take (its output limit) close it with -ENOBUFS and are counted too, so a
 * stream never goes on with a hole in it. [any thread]
 */
IOLOOP_EXPORT int ioloop_server_send(ioloop_server_t *server, uint64_t conn_id,
                                     const void *data, size_t len);

/**
 * Queues fn(conn, arg) to run in the loop of the connection `conn_id`: the ordered way to act
 * on a connection from another thread (calls and ioloop_server_send()s made by one thread for
 * one connection run in the order they were made). conn is the connection if it is still
 * open when fn runs, else NULL (it closed, or started closing, in between); either way fn
 * runs exactly once, so it can free arg. Returns 0, -ENOENT (no open connection of this
 * server has that id at the call; fn never runs), -EINVAL (NULL server or fn), -ESHUTDOWN
 * (the loop is stopping), -ENOMEM. [any thread]
 */
IOLOOP_EXPORT int ioloop_server_call(ioloop_server_t *server, uint64_t conn_id,
                                     ioloop_conn_call_fn fn, void *arg);

/**
 * Copies the server's counters into *out. Figures read while connections come and go may be
 * a moment old. Does nothing if server or out is NULL. [any thread]
 */
IOLOOP_EXPORT void ioloop_server_get_stats(const ioloop_server_t *server,
                                           ioloop_server_stats_t *out);

/**
 * Stops the acceptor, closes the listener (removing a unix socket file), closes every
 * connection the server accepted — each gets on_close(conn, -ECANCELED) in its own loop's
 * thread — and returns after all of them, then frees the server. Teardown may come in either
 * order: when ioloop_pool_free() ran first, it already stopped the acceptor and closed the
 * connections (in its own thread), and this only frees the server. A loop of the pool that
 * was stopped some other way is not running any more: its connections of this server are
 * closed in the calling thread instead. NULL is fine. The owning thread; never one of the
 * pool's loops, which it waits for (that aborts with a message).
 */
IOLOOP_EXPORT void ioloop_server_free(ioloop_server_t *server);

/* ---- Outgoing connections --------------------------------------------------------------- */

/**
 * Connects to `address` without blocking; the connection belongs to `loop`. on_open runs when
 * the connection is established, or on_close(conn, -ECONNREFUSED) (or the real errno) when it
 * fails — also when it fails at once. Writes made before on_open are buffered and sent then.
 * `handlers` is copied.
 * A host name is looked up as ioloop_resolve() does, on the loop; the connection is returned
 * at once, connecting (writes are buffered; ioloop_conn_fd() says -ENOTCONN until it has a
 * socket), and its addresses are tried in turn, each on a socket of its own, until one
 * connects. If none does, on_close gets the last one's error; if the lookup fails, its error
 * (-ENOENT: no such name, -ETIMEDOUT: no DNS answer, ...). ioloop_conn_close() before it
 * connected, with nothing written, ends it without connecting (on_close(conn, 0) after the
 * call); with bytes written, they still go out once it connects, as for a numeric address.
 * Returns the connection, or NULL with errno: EINVAL (NULL loop or handlers, no on_data,
 * malformed address), EPERM (wrong thread), EMFILE, ENOMEM, ENOTSUP (a host name, and the
 * library was built without c-ares). Loop thread.
 */
IOLOOP_EXPORT ioloop_conn_t *ioloop_connect(ioloop_t *loop, const char *address,
                                            const ioloop_conn_handlers_t *handlers, void *user);

/* ---- Connections: loop thread only ------------------------------------------------------ */
/*
 * Every function below returns -EPERM (and changes nothing) when called from another thread
 * while the connection's loop runs, and -EINVAL for a NULL connection.
 */

/**
 * Writes `len` bytes in order after everything written before (see "Writing" at the top):
 * gathered and handed to the kernel when the current callback returns, or, for a large write,
 * at once. The caller's buffer is its own again when the call returns. Returns 0 (the bytes
 * are the connection's), -EPIPE after ioloop_conn_close() or once the connection is closing
 * or failed, -EINVAL (NULL data with len > 0), -ENOBUFS (the output limit: the bytes would
 * take ioloop_conn_pending() past it; nothing was taken), -ENOMEM (nothing was taken). A
 * socket that fails while sending ends the connection: on_close reports the errno, after the
 * current callback.
 */
IOLOOP_EXPORT int ioloop_conn_write(ioloop_conn_t *conn, const void *data, size_t len);

/**
 * Like ioloop_conn_write() for the concatenation of the iovcnt buffers: either every byte is
 * taken or none. Returns what ioloop_conn_write() returns, and -EINVAL for iovcnt < 0 or
 * > IOV_MAX, a NULL iov with iovcnt > 0, or a NULL base with a non-zero length.
 */
IOLOOP_EXPORT int ioloop_conn_writev(ioloop_conn_t *conn, const struct iovec *iov, int iovcnt);

/**
 * Write, then act: fn(conn, 0, arg) runs once every byte written before this call has been
 * handed to the kernel — after ioloop_conn_close() too, since a graceful close still delivers
 * them. If the connection fails first, fn(conn, err, arg) runs with the negative errno
 * on_close will get, before on_close; -ECANCELED if ioloop_server_free() or ioloop_free()
 * closes it. fn never runs inside this call (with nothing pending it runs after the current
 * callback). Several may be pending; they run in call order.
 * Returns 0, -EINVAL (NULL fn), -EPIPE (closing or closed), -ENOMEM.
 */
IOLOOP_EXPORT int ioloop_conn_on_flushed(ioloop_conn_t *conn, ioloop_conn_flushed_fn fn,
                                         void *arg);

/**
 * Sets the connection's input and output limits in bytes; 0 keeps a limit as it is. Unconsumed
 * input that reaches max_input while on_data consumes none of it closes the connection with
 * -ENOBUFS (at least max_input bytes were presented); a write that would take
 * ioloop_conn_pending() past max_output returns -ENOBUFS and takes nothing. Lowering a limit
 * below what is buffered now drops nothing. Returns 0, -EPIPE (closing or closed), -ENOMEM.
 */
IOLOOP_EXPORT int ioloop_conn_set_limits(ioloop_conn_t *conn, size_t max_input,
                                         size_t max_output);

/**
 * Closes the connection gracefully: stops presenting input (what still arrives is read and
 * discarded), hands every pending byte to the kernel, shuts the socket down for writing, and
 * waits for the peer's EOF (at most IOLOOP_CONN_LINGER_MS after the shutdown) before it closes
 * the fd; then on_close(conn, 0) (or an error if the flush failed). On a connection still
 * connecting, the written bytes go out once it connects. Runs on_close later, never inside this
 * call. Idempotent; NULL and calls from another thread are ignored.
 */
IOLOOP_EXPORT void ioloop_conn_close(ioloop_conn_t *conn);

/**
 * Stops reading from the socket (backpressure: the peer sees the TCP window fill); writing
 * goes on. Returns 0 (also if already paused), -EPIPE (closing or closed).
 */
IOLOOP_EXPORT int ioloop_conn_pause(ioloop_conn_t *conn);

/**
 * Starts reading again after ioloop_conn_pause(). Input kept while paused (also input an
 * on_data left unconsumed after pausing and resuming inside itself) is presented again after
 * the current callback, followed by the bytes that arrive. Returns 0, -EPIPE.
 */
IOLOOP_EXPORT int ioloop_conn_resume(ioloop_conn_t *conn);

/**
 * Closes the connection with -ETIMEDOUT once `ms` milliseconds pass without any read or
 * write progress; 0 turns the timeout off. Returns 0, -EPIPE (closing or closed), -ENOMEM.
 */
IOLOOP_EXPORT int ioloop_conn_set_idle_timeout(ioloop_conn_t *conn, uint64_t ms);

/** Returns the bytes written and not yet handed to the kernel (0 for NULL). */
IOLOOP_EXPORT size_t ioloop_conn_pending(const ioloop_conn_t *conn);

/**
 * Returns the connection's id: unique in the process, never 0; it names the loop and the
 * slot of the connection, so ioloop_server_send() and ioloop_server_call() find it in O(1)
 * from any thread. 0 for NULL.
 */
IOLOOP_EXPORT uint64_t ioloop_conn_id(const ioloop_conn_t *conn);

/**
 * Copies the peer's address into *addr and its length into *len (at most the *len given, as
 * getpeername() does): the proxied client's when the server reads PROXY protocol headers.
 * Returns 0, -EINVAL (NULL conn, addr or len), -ENOTCONN (an outgoing connection not yet
 * open), or getpeername()'s negative errno. Loop thread.
 */
IOLOOP_EXPORT int ioloop_conn_peer(const ioloop_conn_t *conn, struct sockaddr_storage *addr,
                                   socklen_t *len);

/**
 * Formats a socket address: "1.2.3.4:5678", "[::1]:80", "unix:/path" ("unix:" for an unnamed
 * socket, "unix:@name" for an abstract one). Writes the string and its NUL into buf and
 * returns its length (without the NUL), -ENOSPC if size is not larger than that length
 * (buf then holds nothing useful), -EINVAL (NULL addr or buf, a length too short for the
 * family, a family other than AF_INET, AF_INET6, AF_UNIX). [any thread]
 */
IOLOOP_EXPORT int ioloop_address_format(const struct sockaddr *addr, socklen_t len, char *buf,
                                        size_t size);

/**
 * Returns the socket fd (the connection owns it: do not close it), -ENOTCONN while a
 * connection to a host name has none yet (the fd may change as its addresses are tried),
 * -EBADF once the connection died (its fd is closed before on_close runs), or -EINVAL for
 * NULL.
 */
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
