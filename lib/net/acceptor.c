/*
 * The acceptor thread. It runs a loop of its own whose one handler accepts new connections in
 * bounded batches and hands each to on_accept (the server posts it to a worker loop).
 *
 * Running out of fds (EMFILE/ENFILE) is where accept loops classically spin at 100% CPU: the
 * listening fd stays readable, level-triggered, while accept keeps failing. Here the acceptor
 * gives up its reserve fd to accept the pending connection and close it at once (the client
 * sees a clean close instead of hanging in the backlog), stops watching the listening fd for
 * a short backoff, and warns at most once a second with the count of shed connections.
 */
#include "net/acceptor.h"

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
 * acceptor's own loop (its stop request) stays responsive. */
#define ACCEPT_BATCH 64

/* How long accepting pauses once fds ran out; the backlog holds new clients meanwhile. */
#define BACKOFF_MS 100

/* The listen backlog; the kernel caps it at net.core.somaxconn. */
#define BACKLOG 4096

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

int ioloop__acceptor_listen(struct ioloop_acceptor *a, const struct ioloop_address *addr)
{
    int one = 1, err;

    a->fd = a->reserve_fd = -1;
    a->tcp = addr->ss.ss_family != AF_UNIX;
    if (!a->tcp && (err = clear_stale_unix_socket(addr)) < 0)
        return err;

    a->fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (a->fd < 0)
        return -errno;
    if (a->tcp)
        setsockopt(a->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(a->fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
        goto fail;
    if (!a->tcp) {
        /* From here on the socket file is ours: a failure below must remove it. */
        a->unix_path = strdup(((const struct sockaddr_un *)&addr->ss)->sun_path);
        if (a->unix_path == NULL) {
            unlink(((const struct sockaddr_un *)&addr->ss)->sun_path);
            errno = ENOMEM;
            goto fail;
        }
    }
    if (listen(a->fd, BACKLOG) < 0)
        goto fail;
    a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (a->reserve_fd < 0)
        goto fail;
    return 0;

fail:
    err = -errno;
    ioloop__acceptor_close(a);
    return err;
}

static void on_backoff_over(ioloop_t *loop, void *arg)
{
    struct ioloop_acceptor *a = arg;

    if (ioloop_add_handler(loop, a->fd, IOLOOP_READ, on_listen_fd, a) < 0)
        ioloop_run_after(loop, BACKOFF_MS, on_backoff_over, a);
}

/* Out of fds: shed the pending connection with the reserve fd and back off. The kernel
 * checks for a free fd before it looks at the backlog, so the failure may also mean "nothing
 * pending": then there is nothing to shed and no reason to pause. */
static void shed_and_back_off(struct ioloop_acceptor *a, int err)
{
    int fd;

    close(a->reserve_fd);
    fd = accept(a->fd, NULL, NULL);
    if (fd < 0 && errno == EAGAIN) {
        a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        return;
    }
    if (fd >= 0) {
        close(fd);
        a->shed++;
    }
    a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    ioloop_remove_handler(a->loop, a->fd);
    ioloop_run_after(a->loop, BACKOFF_MS, on_backoff_over, a);

    if (ioloop_now_ms(a->loop) >= a->next_warning_ms) {
        IOLOOP_LOG_WARN("accept: %s; shed %llu connection(s), pausing accepts for %d ms",
                        ioloop__strerror(err), (unsigned long long)a->shed, BACKOFF_MS);
        a->shed = 0;
        a->next_warning_ms = ioloop_now_ms(a->loop) + WARNING_INTERVAL_MS;
    }
}

/* Accepts up to ACCEPT_BATCH connections and hands them over in one call. */
static void on_listen_fd(ioloop_t *loop, int fd, int events, void *arg)
{
    struct ioloop_acceptor *a = arg;
    int fds[ACCEPT_BATCH], n = 0, err = 0;

    while (n < ACCEPT_BATCH && err == 0) {
        int conn_fd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (conn_fd >= 0) {
            if (a->tcp)
                ioloop__socket_nodelay(conn_fd);
            fds[n++] = conn_fd;
            continue;
        }
        switch (errno) {
        case EINTR:
        case ECONNABORTED: /* the client gave up while in the backlog */
        case EPROTO:
            break;
        default:
            err = -errno;
            break;
        }
    }
    if (n > 0)
        a->on_accept(fds, n, a->arg);
    if (err == 0 || err == -EAGAIN)
        return;
    if (err == -EMFILE || err == -ENFILE) {
        shed_and_back_off(a, err);
        return;
    }
    /* ENOBUFS, ENOMEM: the kernel is short; back off the same way. */
    if (ioloop_now_ms(a->loop) >= a->next_warning_ms) {
        IOLOOP_LOG_WARN("accept: %s; pausing accepts for %d ms", ioloop__strerror(err),
                        BACKOFF_MS);
        a->next_warning_ms = ioloop_now_ms(a->loop) + WARNING_INTERVAL_MS;
    }
    ioloop_remove_handler(loop, fd);
    ioloop_run_after(loop, BACKOFF_MS, on_backoff_over, a);
}

static void *acceptor_main(void *arg)
{
    struct ioloop_acceptor *a = arg;

    ioloop_start(a->loop);
    return NULL;
}

int ioloop__acceptor_start(struct ioloop_acceptor *a)
{
    int err;

    a->loop = ioloop_new();
    if (a->loop == NULL)
        return -errno;
    if ((err = ioloop_add_handler(a->loop, a->fd, IOLOOP_READ, on_listen_fd, a)) < 0 ||
        (err = ioloop__thread_start(&a->thread, "ioloop-accept", acceptor_main, a)) < 0) {
        ioloop_free(a->loop);
        a->loop = NULL;
        return err;
    }
    a->started = true;
    return 0;
}

void ioloop__acceptor_close(struct ioloop_acceptor *a)
{
    if (a->started) {
        ioloop_stop(a->loop);
        pthread_join(a->thread, NULL);
        a->started = false;
    }
    ioloop_free(a->loop); /* drops its handler on the listening fd (and a backoff timer) */
    a->loop = NULL;
    if (a->fd >= 0)
        close(a->fd);
    if (a->reserve_fd >= 0)
        close(a->reserve_fd);
    a->fd = a->reserve_fd = -1;
    if (a->unix_path != NULL)
        unlink(a->unix_path);
    free(a->unix_path);
    a->unix_path = NULL;
}
