/*
 * Listening sockets and accepting. A listener is watched by one loop, whose handler accepts
 * new connections in bounded batches and hands each batch to on_accept: the acceptor thread's
 * loop in the default mode (the server then posts the fds to the pool's loops), or a pool loop
 * in reuseport mode (the server opens them right there).
 *
 * Running out of fds (EMFILE/ENFILE) is where accept loops classically spin at 100% CPU: the
 * listening fd stays readable, level-triggered, while accept keeps failing. Here the listener
 * gives up its reserve fd to accept the pending connection and close it at once (the client
 * sees a clean close instead of hanging in the backlog), stops watching the listening fd for
 * a short backoff, and warns at most once a second with the count of shed connections.
 */
#include "net/listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ioloop/log.h>

#include "core/strerror.h"
#include "core/thread.h"

/* Connections accepted per readiness event: enough to drain a burst, few enough that the
 * watching loop's other work (its stop request, other connections) is not held up. */
#define ACCEPT_BATCH 64

/* How long accepting pauses once fds ran out; the backlog holds new clients meanwhile. */
#define BACKOFF_MS 100

#define WARNING_INTERVAL_MS 1000u

static void on_listen_fd(ioloop_t *loop, int fd, int events, void *arg);

/* A leftover unix socket file is removed only if nobody accepts on it. */
static int clear_stale_unix_socket(const struct ioloop_address *addr)
{
    const struct sockaddr_un *un = (const struct sockaddr_un *)&addr->ss;
    struct stat st;
    int probe, err;

    if (lstat(un->sun_path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode))
        return -EADDRINUSE;
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return -errno;
    err = connect(probe, (const struct sockaddr *)&addr->ss, addr->len) == 0 ? -EADDRINUSE
          : errno == ECONNREFUSED                                         ? 0
                                                                          : -errno;
    close(probe);
    if (err == 0 && unlink(un->sun_path) < 0 && errno != ENOENT)
        err = -errno;
    return err;
}

int ioloop__listener_open(struct ioloop_listener *l, const struct ioloop_address *addr,
                          int backlog, bool reuseport)
{
    int one = 1, err;

    l->fd = l->reserve_fd = -1;
    l->tcp = addr->ss.ss_family != AF_UNIX;
    if (!l->tcp && (err = clear_stale_unix_socket(addr)) < 0)
        return err;

    l->fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0)
        return -errno;
    if (l->tcp) {
        setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (reuseport && setsockopt(l->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
            goto fail;
        ioloop__socket_nodelay(l->fd); /* accepted sockets inherit it: no call per accept */
    }
    if (bind(l->fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
        goto fail;
    if (!l->tcp) {
        /* From here on the socket file is ours: a failure below must remove it. */
        l->unix_path = strdup(((const struct sockaddr_un *)&addr->ss)->sun_path);
        if (l->unix_path == NULL) {
            unlink(((const struct sockaddr_un *)&addr->ss)->sun_path);
            errno = ENOMEM;
            goto fail;
        }
    }
    if (listen(l->fd, backlog) < 0)
        goto fail;
    l->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (l->reserve_fd < 0)
        goto fail;
    return 0;

fail:
    err = -errno;
    ioloop__listener_close(l);
    return err;
}

int ioloop__listener_watch(struct ioloop_listener *l, ioloop_t *loop)
{
    int err = ioloop_add_handler(loop, l->fd, IOLOOP_READ, on_listen_fd, l);

    if (err == 0)
        l->loop = loop;
    return err;
}

void ioloop__listener_unwatch(struct ioloop_listener *l)
{
    if (l->loop == NULL)
        return;
    if (l->backoff_timer > 0)
        ioloop_cancel_timer(l->loop, l->backoff_timer);
    else
        ioloop_remove_handler(l->loop, l->fd);
    l->backoff_timer = 0;
    l->loop = NULL;
}

void ioloop__listener_close(struct ioloop_listener *l)
{
    if (l->fd >= 0)
        close(l->fd);
    if (l->reserve_fd >= 0)
        close(l->reserve_fd);
    l->fd = l->reserve_fd = -1;
    if (l->unix_path != NULL)
        unlink(l->unix_path);
    free(l->unix_path);
    l->unix_path = NULL;
}

int ioloop__listener_port(const struct ioloop_listener *l)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (!l->tcp)
        return -EINVAL;
    if (getsockname(l->fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- Accepting -------------------------------------------------------------------------- */

static void on_backoff_over(ioloop_t *loop, void *arg)
{
    struct ioloop_listener *l = arg;

    l->backoff_timer = 0;
    if (ioloop_add_handler(loop, l->fd, IOLOOP_READ, on_listen_fd, l) < 0)
        l->backoff_timer = ioloop_run_after(loop, BACKOFF_MS, on_backoff_over, l);
}

/* Stops watching for BACKOFF_MS. If no timer can be had, watching goes on: better a busy
 * loop than one that never accepts again. */
static void back_off(struct ioloop_listener *l)
{
    int64_t timer = ioloop_run_after(l->loop, BACKOFF_MS, on_backoff_over, l);

    if (timer < 0)
        return;
    ioloop_remove_handler(l->loop, l->fd);
    l->backoff_timer = timer;
}

static bool warning_due(struct ioloop_listener *l)
{
    if (ioloop_now_ms(l->loop) < l->next_warning_ms)
        return false;
    l->next_warning_ms = ioloop_now_ms(l->loop) + WARNING_INTERVAL_MS;
    return true;
}

/* Out of fds: shed the pending connection with the reserve fd and back off. The kernel
 * checks for a free fd before it looks at the backlog, so the failure may also mean "nothing
 * pending": then there is nothing to shed and no reason to pause. */
static void shed_and_back_off(struct ioloop_listener *l, int err)
{
    int fd;

    close(l->reserve_fd);
    fd = accept(l->fd, NULL, NULL);
    if (fd < 0 && errno == EAGAIN) {
        l->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        return;
    }
    if (fd >= 0) {
        close(fd); /* before the reserve is taken again: it needs that slot */
        l->shed++;
        if (l->on_shed != NULL)
            l->on_shed(l);
    }
    l->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    back_off(l);
    if (warning_due(l)) {
        IOLOOP_LOG_WARN("accept: %s; shed %llu connection(s), pausing accepts for %d ms",
                        ioloop__strerror(err), (unsigned long long)l->shed, BACKOFF_MS);
        l->shed = 0;
    }
}

/* Accepts up to max connections and hands them over in one call; returns the last accept
 * error (-EAGAIN when the queue is empty), or 0 if max were accepted. */
static int accept_batch(struct ioloop_listener *l, int max)
{
    int fds[ACCEPT_BATCH], n = 0, err = 0;

    while (n < max && err == 0) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd >= 0)
            fds[n++] = fd;
        else if (errno != EINTR && errno != ECONNABORTED && errno != EPROTO)
            err = -errno; /* ECONNABORTED, EPROTO: that client gave up in the backlog */
    }
    if (n > 0)
        l->on_accept(l, fds, n);
    return err;
}

static void on_listen_fd(ioloop_t *loop, int fd, int events, void *arg)
{
    struct ioloop_listener *l = arg;
    int err = accept_batch(l, ACCEPT_BATCH);

    if (err == 0 || err == -EAGAIN)
        return;
    if (err == -EMFILE || err == -ENFILE) {
        shed_and_back_off(l, err);
        return;
    }
    /* ENOBUFS, ENOMEM: the kernel is short; back off the same way. */
    if (warning_due(l))
        IOLOOP_LOG_WARN("accept: %s; pausing accepts for %d ms", ioloop__strerror(err),
                        BACKOFF_MS);
    back_off(l);
}

void ioloop__listener_sweep(struct ioloop_listener *l)
{
    while (accept_batch(l, ACCEPT_BATCH) == 0)
        ;
}

/* ---- The acceptor thread ---------------------------------------------------------------- */

static void *acceptor_main(void *arg)
{
    ioloop_start(arg);
    return NULL;
}

int ioloop__acceptor_start(struct ioloop_acceptor *a, struct ioloop_listener *l)
{
    int err;

    a->loop = ioloop_new();
    if (a->loop == NULL)
        return -errno;
    if ((err = ioloop__listener_watch(l, a->loop)) < 0 ||
        (err = ioloop__thread_start(&a->thread, "ioloop-accept", acceptor_main, a->loop)) < 0) {
        ioloop__listener_unwatch(l);
        ioloop_free(a->loop);
        a->loop = NULL;
        return err;
    }
    a->started = true;
    return 0;
}

void ioloop__acceptor_stop(struct ioloop_acceptor *a, struct ioloop_listener *l, bool sweep)
{
    if (!a->started)
        return;
    ioloop_stop(a->loop);
    pthread_join(a->thread, NULL);
    a->started = false;
    /* The loop no longer runs: this thread may act for it. */
    if (sweep)
        ioloop__listener_sweep(l);
    ioloop__listener_unwatch(l);
    ioloop_free(a->loop);
    a->loop = NULL;
}
