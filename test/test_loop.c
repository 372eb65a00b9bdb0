/*
 * Unit tests of the loop itself (include/ioloop/loop.h): life cycle and fds, fd handlers and
 * their errors, readiness and hangup delivery, stale events inside one epoll batch, handler
 * table growth, start/stop semantics, loop-thread checks, the cached clock and the stats.
 * Everything is driven by pipes, socketpairs and eventfds; the only real waits are short
 * timers. Each test closes what it opens and checks that the process's fd count is restored.
 * The binary is linked with -Wl,--wrap=epoll_ctl, so that a test can count the epoll_ctl()
 * calls the library makes for one fd: the documented cost of removing and re-adding a handler
 * within one iteration. One test runs the binary again in a child process, for a fresh heap
 * (TABLE_GROWS_CHILD, see main()).
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* The number of socketpairs of the many-fds test: 18 000 fds, under the 20 000 fd limit. */
#define MANY_PAIRS 9000
/* An fd number near the top of the 20 000 fd limit. */
#define HIGH_FD 19500
/* An fd number far above anything a test opens, to force table growth inside a callback. */
#define GROW_FD 5000
/* A timer far enough in the future never to fire during a test. */
#define NEVER_MS 3600000u

/* ---- Counting epoll_ctl() ---------------------------------------------------------------- */

/* The library's epoll_ctl() calls land in __wrap_epoll_ctl (see the top of the file), which
 * counts those for ctl_fd by operation and passes every call on. */
int __real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);
int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);

static atomic_int ctl_fd = -1;
static atomic_int ctl_adds, ctl_mods, ctl_dels;

int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    if (fd == atomic_load(&ctl_fd)) {
        if (op == EPOLL_CTL_ADD)
            atomic_fetch_add(&ctl_adds, 1);
        else if (op == EPOLL_CTL_MOD)
            atomic_fetch_add(&ctl_mods, 1);
        else if (op == EPOLL_CTL_DEL)
            atomic_fetch_add(&ctl_dels, 1);
    }
    return __real_epoll_ctl(epfd, op, fd, event);
}

/* Starts counting the epoll_ctl() calls for fd from zero; -1 stops counting. */
static void count_epoll_ctl(int fd)
{
    atomic_store(&ctl_adds, 0);
    atomic_store(&ctl_mods, 0);
    atomic_store(&ctl_dels, 0);
    atomic_store(&ctl_fd, fd);
}

/* ---- Small helpers ---------------------------------------------------------------------- */

static void make_pipe(int p[2])
{
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
}

static void make_socketpair(int s[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, s), 0);
}

static void write_byte(int fd)
{
    assert_int_equal(write(fd, "x", 1), 1);
}

static void close_fd(int fd)
{
    assert_int_equal(close(fd), 0);
}

static int fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static void spin_us(uint64_t us)
{
    uint64_t end = test_now_us() + us;

    while (test_now_us() < end)
        ;
}

static void get_stats(const ioloop_t *loop, ioloop_stats_t *s)
{
    memset(s, 0, sizeof *s);
    ioloop_get_stats(loop, s);
}

/* Stops the loop; counts the call if arg is an int counter. */
static void stop_cb(ioloop_t *loop, void *arg)
{
    if (arg != NULL)
        ++*(int *)arg;
    ioloop_stop(loop);
}

static void count_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ++*(int *)arg;
}

static void count_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    ++*(int *)arg;
}

/* Posted before a loop starts in another thread: tells the test thread the loop runs. */
static void ready_cb(ioloop_t *loop, void *arg)
{
    uint64_t one = 1;

    (void)loop;
    if (write(*(int *)arg, &one, sizeof one) != (ssize_t)sizeof one)
        abort();
}

/*
 * Starts loop in a thread of its own and returns once that thread is inside start(). The
 * signal is a posted callback, or a timer when posting is refused because the loop was stopped
 * and has not been started again since.
 */
static void start_in_thread(test_loop_thread_t *t, ioloop_t *loop)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    uint64_t v;
    int rc;

    assert_true(efd >= 0);
    rc = ioloop_add_callback(loop, ready_cb, &efd);
    if (rc == -ESHUTDOWN)
        assert_true(ioloop_run_after(loop, 0, ready_cb, &efd) > 0);
    else
        assert_int_equal(rc, 0);
    test_loop_thread_start(t, loop);
    assert_int_equal(read(efd, &v, sizeof v), sizeof v);
    close_fd(efd);
}

/* ---- Life cycle ------------------------------------------------------------------------- */

static void test_loop_new_free_restores_fds(void **state)
{
    int before = test_count_fds();

    (void)state;
    for (int i = 0; i < 50; i++) {
        ioloop_t *loop = ioloop_new();

        assert_non_null(loop);
        assert_true(test_count_fds() > before);
        ioloop_free(loop);
        assert_int_equal(test_count_fds(), before);
    }
    ioloop_free(NULL);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_new_fds_are_cloexec(void **state)
{
    static unsigned char seen[20000];
    int before = test_count_fds();
    ioloop_t *loop;
    int fresh = 0;

    (void)state;
    memset(seen, 0, sizeof seen);
    for (int fd = 0; fd < (int)sizeof seen; fd++)
        seen[fd] = (unsigned char)fd_is_open(fd);
    loop = ioloop_new();
    assert_non_null(loop);
    for (int fd = 0; fd < (int)sizeof seen; fd++) {
        int flags;

        if (seen[fd])
            continue;
        flags = fcntl(fd, F_GETFD);
        if (flags == -1)
            continue;
        fresh++;
        assert_true(flags & FD_CLOEXEC);
    }
    assert_true(fresh > 0);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_free_drops_registrations_keeps_app_fds(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int p[2], calls = 0, timers = 0, callbacks = 0;

    (void)state;
    assert_non_null(loop);
    make_pipe(p);
    write_byte(p[1]);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, count_handler, &calls), 0);
    assert_true(ioloop_run_after(loop, 0, count_cb, &timers) > 0);
    assert_int_equal(ioloop_add_callback(loop, count_cb, &callbacks), 0);
    ioloop_free(loop);
    /* Nothing ran, and the application's fds are still open. */
    assert_int_equal(calls, 0);
    assert_int_equal(timers, 0);
    assert_int_equal(callbacks, 0);
    assert_true(fd_is_open(p[0]));
    assert_true(fd_is_open(p[1]));
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Handler errors --------------------------------------------------------------------- */

struct which_ctx {
    int calls1, calls2;
    int events;
};

static void which_handler1(ioloop_t *loop, int fd, int events, void *arg)
{
    struct which_ctx *c = arg;
    char b;

    c->calls1++;
    c->events = events;
    if (read(fd, &b, 1) != 1)
        c->events = -1;
    ioloop_stop(loop);
}

static void which_handler2(ioloop_t *loop, int fd, int events, void *arg)
{
    struct which_ctx *c = arg;

    (void)fd;
    (void)events;
    c->calls2++;
    ioloop_stop(loop);
}

static void test_loop_add_handler_errors(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct which_ctx c = { 0 };
    ioloop_stats_t s;
    int p[2], q[2], closed_fd;
    FILE *file;

    (void)state;
    assert_non_null(loop);
    make_pipe(p);

    /* -EINVAL: NULL loop or fn, a mask without READ/WRITE or with other bits. */
    assert_int_equal(ioloop_add_handler(NULL, p[0], IOLOOP_READ, which_handler1, &c), -EINVAL);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, NULL, &c), -EINVAL);
    assert_int_equal(ioloop_add_handler(loop, p[0], 0, which_handler1, &c), -EINVAL);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_ERROR, which_handler1, &c), -EINVAL);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ | IOLOOP_ERROR, which_handler1,
                                        &c), -EINVAL);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ | 0x2, which_handler1, &c),
                     -EINVAL);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ | 0x100, which_handler1, &c),
                     -EINVAL);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_WRITE | 0x10000, which_handler1, &c),
                     -EINVAL);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);

    /* -EBADF: a negative fd, a closed fd. */
    assert_int_equal(ioloop_add_handler(loop, -1, IOLOOP_READ, which_handler1, &c), -EBADF);
    assert_int_equal(ioloop_add_handler(loop, -1000, IOLOOP_READ, which_handler1, &c), -EBADF);
    make_pipe(q);
    closed_fd = q[1];
    close_fd(q[0]);
    close_fd(q[1]);
    assert_false(fd_is_open(closed_fd));
    assert_int_equal(ioloop_add_handler(loop, closed_fd, IOLOOP_READ, which_handler1, &c), -EBADF);
    assert_false(fd_is_open(12345));
    assert_int_equal(ioloop_add_handler(loop, 12345, IOLOOP_READ, which_handler1, &c), -EBADF);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);

    /* -EPERM: a regular file, which epoll refuses. */
    file = tmpfile();
    assert_non_null(file);
    assert_int_equal(ioloop_add_handler(loop, fileno(file), IOLOOP_READ, which_handler1, &c),
                     -EPERM);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);
    /* Nothing was registered for it: update/remove do not know it. */
    assert_int_equal(ioloop_update_handler(loop, fileno(file), IOLOOP_READ), -ENOENT);
    assert_int_equal(ioloop_remove_handler(loop, fileno(file)), -ENOENT);
    assert_int_equal(fclose(file), 0);

    /* None of the failures registered p[0]: a valid add works now. */
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, which_handler1, &c), 0);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 1);

    /* -EEXIST: a second add of the same fd, whatever its mask or fn; the first one stays. */
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, which_handler1, &c), -EEXIST);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_WRITE, which_handler2, &c), -EEXIST);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 1);

    /* The registration that survived all this is the first one. */
    write_byte(p[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls1, 1);
    assert_int_equal(c.calls2, 0);
    assert_int_equal(c.events, IOLOOP_READ);

    assert_int_equal(ioloop_remove_handler(loop, p[0]), 0);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);
    ioloop_free(loop);
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_update_remove_errors(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct which_ctx c = { 0 };
    ioloop_stats_t s;
    int p[2];

    (void)state;
    assert_non_null(loop);
    make_pipe(p);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, which_handler1, &c), 0);

    /* -EINVAL: a failed update leaves the mask as it was. */
    assert_int_equal(ioloop_update_handler(NULL, p[0], IOLOOP_READ), -EINVAL);
    assert_int_equal(ioloop_update_handler(loop, p[0], 0), -EINVAL);
    assert_int_equal(ioloop_update_handler(loop, p[0], IOLOOP_ERROR), -EINVAL);
    assert_int_equal(ioloop_update_handler(loop, p[0], IOLOOP_READ | IOLOOP_ERROR), -EINVAL);
    assert_int_equal(ioloop_update_handler(loop, p[0], IOLOOP_READ | 0x100), -EINVAL);
    assert_int_equal(ioloop_remove_handler(NULL, p[0]), -EINVAL);

    /* -ENOENT for unregistered fds: open ones and never-opened ones. */
    assert_int_equal(ioloop_update_handler(loop, p[1], IOLOOP_WRITE), -ENOENT);
    assert_int_equal(ioloop_remove_handler(loop, p[1]), -ENOENT);
    assert_false(fd_is_open(12345));
    assert_int_equal(ioloop_update_handler(loop, 12345, IOLOOP_READ), -ENOENT);
    assert_int_equal(ioloop_remove_handler(loop, 12345), -ENOENT);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 1);

    /* p[0] kept its READ mask and its handler. */
    write_byte(p[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls1, 1);
    assert_int_equal(c.events, IOLOOP_READ);

    /* Removed once, it is unknown after. */
    assert_int_equal(ioloop_remove_handler(loop, p[0]), 0);
    assert_int_equal(ioloop_remove_handler(loop, p[0]), -ENOENT);
    assert_int_equal(ioloop_update_handler(loop, p[0], IOLOOP_READ), -ENOENT);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);

    ioloop_free(loop);
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_remove_negative_fd_enoent(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int rc1, rc2;

    (void)state;
    assert_non_null(loop);
    /* API.md: -ENOENT when the fd is not registered, and a negative fd never is. */
    rc1 = ioloop_remove_handler(loop, -1);
    rc2 = ioloop_update_handler(loop, -1000, IOLOOP_READ);
    ioloop_free(loop);
    assert_int_equal(rc1, -ENOENT);
    assert_int_equal(rc2, -ENOENT);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Readiness -------------------------------------------------------------------------- */

struct io_ctx {
    int rfd, wfd;
    int calls;
    int fd_seen;
    int events;
    int wrote;       /* set by the timer that makes the fd ready */
    int early;       /* calls before the fd was made ready */
    void *arg_seen;
    int read_rc;
};

static void read_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct io_ctx *c = arg;
    char b;

    if (!c->wrote)
        c->early++;
    c->calls++;
    c->fd_seen = fd;
    c->events = events;
    c->arg_seen = arg;
    c->read_rc = (int)read(fd, &b, 1);
    ioloop_remove_handler(loop, fd);
    ioloop_stop(loop);
}

static void write_later_cb(ioloop_t *loop, void *arg)
{
    struct io_ctx *c = arg;

    (void)loop;
    c->wrote = 1;
    if (write(c->wfd, "x", 1) != 1)
        c->wrote = -1;
}

static void test_loop_read_delivered(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct io_ctx c = { 0 };
    int p[2];

    (void)state;
    assert_non_null(loop);
    make_pipe(p);
    c.rfd = p[0];
    c.wfd = p[1];
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, read_handler, &c), 0);
    /* The pipe becomes readable only when this timer writes to it. */
    assert_true(ioloop_run_after(loop, 0, write_later_cb, &c) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.wrote, 1);
    assert_int_equal(c.early, 0);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.fd_seen, p[0]);
    assert_int_equal(c.events, IOLOOP_READ);
    assert_ptr_equal(c.arg_seen, &c);
    assert_int_equal(c.read_rc, 1);
    ioloop_free(loop);
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

static void write_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct io_ctx *c = arg;

    c->calls++;
    c->fd_seen = fd;
    c->events = events;
    c->arg_seen = arg;
    ioloop_remove_handler(loop, fd);
    ioloop_stop(loop);
}

static void test_loop_write_delivered(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct io_ctx c = { 0 };
    int p[2];

    (void)state;
    assert_non_null(loop);
    make_pipe(p);
    assert_int_equal(ioloop_add_handler(loop, p[1], IOLOOP_WRITE, write_handler, &c), 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.fd_seen, p[1]);
    assert_int_equal(c.events, IOLOOP_WRITE);
    assert_ptr_equal(c.arg_seen, &c);
    ioloop_free(loop);
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

/* The update test walks through states: each handler call checks and advances one. */
struct update_ctx {
    int s[2];
    int state;
    int bad;          /* calls with unexpected events, or in a state that expects none */
    int calls;
    int rc;           /* first failing return code of an update, else 0 */
};

static void update_handler_fn(ioloop_t *loop, int fd, int events, void *arg)
{
    struct update_ctx *c = arg;
    char b;
    int rc;

    c->calls++;
    switch (c->state) {
    case 1: /* mask WRITE: a socket with an empty buffer is writable, not readable */
        if (events != IOLOOP_WRITE)
            c->bad++;
        rc = ioloop_update_handler(loop, fd, IOLOOP_READ);
        if (rc != 0)
            c->rc = rc;
        if (write(c->s[1], "x", 1) != 1)
            c->bad++;
        c->state = 2;
        break;
    case 2: /* mask READ with a byte waiting */
        if (events != IOLOOP_READ)
            c->bad++;
        rc = ioloop_update_handler(loop, fd, IOLOOP_READ | IOLOOP_WRITE);
        if (rc != 0)
            c->rc = rc;
        c->state = 3;
        break;
    case 3: /* mask READ|WRITE with the byte still waiting */
        if (events != (IOLOOP_READ | IOLOOP_WRITE))
            c->bad++;
        if (read(fd, &b, 1) != 1)
            c->bad++;
        ioloop_remove_handler(loop, fd);
        ioloop_stop(loop);
        c->state = 4;
        break;
    default: /* state 0: mask READ, nothing to read; must not be called */
        c->bad++;
        ioloop_remove_handler(loop, fd);
        ioloop_stop(loop);
        break;
    }
}

static void switch_to_write_cb(ioloop_t *loop, void *arg)
{
    struct update_ctx *c = arg;
    int rc;

    c->state = 1;
    rc = ioloop_update_handler(loop, c->s[0], IOLOOP_WRITE);
    if (rc != 0)
        c->rc = rc;
}

static void test_loop_update_switches_interest(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct update_ctx c = { 0 };
    ioloop_stats_t s;

    (void)state;
    assert_non_null(loop);
    make_socketpair(c.s);
    assert_int_equal(ioloop_add_handler(loop, c.s[0], IOLOOP_READ, update_handler_fn, &c), 0);
    /* A few iterations with the READ mask and nothing to read go by before the switch. */
    assert_true(ioloop_run_after(loop, 5, switch_to_write_cb, &c) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.rc, 0);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.state, 4);
    assert_int_equal(c.calls, 3);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);
    ioloop_free(loop);
    close_fd(c.s[0]);
    close_fd(c.s[1]);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Hangup ----------------------------------------------------------------------------- */

struct hup_ctx {
    int calls;
    int events;
    int read_rc;
    int do_read;
};

static void hup_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct hup_ctx *c = arg;
    char b;

    c->calls++;
    c->events = events;
    if (c->do_read)
        c->read_rc = (int)read(fd, &b, 1);
    ioloop_remove_handler(loop, fd);
    ioloop_stop(loop);
}

static void test_loop_pipe_writer_close_delivered(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct hup_ctx c = { .do_read = 1, .read_rc = -2 };
    int p[2];

    (void)state;
    assert_non_null(loop);
    make_pipe(p);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, hup_handler, &c), 0);
    close_fd(p[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls, 1);
    /* EPOLLHUP: ERROR, together with the READ the handler asked for; read() sees EOF. */
    assert_true(c.events & IOLOOP_ERROR);
    assert_true(c.events & IOLOOP_READ);
    assert_int_equal(c.events & ~(IOLOOP_READ | IOLOOP_ERROR), 0);
    assert_int_equal(c.read_rc, 0);
    ioloop_free(loop);
    close_fd(p[0]);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_pipe_reader_close_delivered(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct hup_ctx c = { 0 };
    int p[2];

    (void)state;
    assert_non_null(loop);
    make_pipe(p);
    assert_int_equal(ioloop_add_handler(loop, p[1], IOLOOP_WRITE, hup_handler, &c), 0);
    close_fd(p[0]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls, 1);
    /* EPOLLERR on the write end: ERROR, together with the WRITE the handler asked for. */
    assert_true(c.events & IOLOOP_ERROR);
    assert_true(c.events & IOLOOP_WRITE);
    assert_int_equal(c.events & ~(IOLOOP_WRITE | IOLOOP_ERROR), 0);
    ioloop_free(loop);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_socket_shutdown_is_read(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct hup_ctx c = { .do_read = 1, .read_rc = -2 };
    int s[2];

    (void)state;
    assert_non_null(loop);
    make_socketpair(s);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, hup_handler, &c), 0);
    assert_int_equal(shutdown(s[1], SHUT_WR), 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls, 1);
    assert_true(c.events & IOLOOP_READ);
    assert_int_equal(c.events & IOLOOP_WRITE, 0);
    assert_int_equal(c.read_rc, 0);
    ioloop_free(loop);
    close_fd(s[0]);
    close_fd(s[1]);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Many fds, high fds ----------------------------------------------------------------- */

struct many_ctx;

struct many_slot {
    struct many_ctx *ctx;
    int idx;
};

struct many_ctx {
    int (*pairs)[2];
    int *calls;
    struct many_slot *slots;
    int total;
    int bad;
};

static void many_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct many_slot *slot = arg;
    struct many_ctx *c = slot->ctx;
    char b;

    c->calls[slot->idx]++;
    if (fd != c->pairs[slot->idx][0] || events != IOLOOP_READ || read(fd, &b, 1) != 1)
        c->bad++;
    /* Stop one iteration later, so that a repeated delivery would be seen. */
    if (++c->total == MANY_PAIRS)
        ioloop_run_after(loop, 0, stop_cb, NULL);
}

static void test_loop_many_socketpairs(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop;
    struct many_ctx c = { 0 };
    ioloop_stats_t s;
    uint64_t io_events;
    int rc_start, once = 0, removed = 0;

    (void)state;
    c.pairs = calloc(MANY_PAIRS, sizeof *c.pairs);
    c.calls = calloc(MANY_PAIRS, sizeof *c.calls);
    c.slots = calloc(MANY_PAIRS, sizeof *c.slots);
    assert_non_null(c.pairs);
    assert_non_null(c.calls);
    assert_non_null(c.slots);
    loop = ioloop_new();
    assert_non_null(loop);
    for (int i = 0; i < MANY_PAIRS; i++) {
        make_socketpair(c.pairs[i]);
        c.slots[i].ctx = &c;
        c.slots[i].idx = i;
        assert_int_equal(ioloop_add_handler(loop, c.pairs[i][0], IOLOOP_READ, many_handler,
                                            &c.slots[i]), 0);
    }
    get_stats(loop, &s);
    assert_int_equal(s.handlers, MANY_PAIRS);
    for (int i = 0; i < MANY_PAIRS; i++)
        write_byte(c.pairs[i][1]);

    /* Everything is collected first and closed, so that a failure leaks no fds. */
    rc_start = ioloop_start(loop);
    for (int i = 0; i < MANY_PAIRS; i++)
        once += c.calls[i] == 1;
    get_stats(loop, &s);
    io_events = s.io_events;
    for (int i = 0; i < MANY_PAIRS; i++)
        removed += ioloop_remove_handler(loop, c.pairs[i][0]) == 0;
    get_stats(loop, &s);
    for (int i = 0; i < MANY_PAIRS; i++) {
        close_fd(c.pairs[i][0]);
        close_fd(c.pairs[i][1]);
    }
    ioloop_free(loop);
    free(c.pairs);
    free(c.calls);
    free(c.slots);

    assert_int_equal(rc_start, 0);
    assert_int_equal(c.total, MANY_PAIRS);
    assert_int_equal(c.bad, 0);
    assert_int_equal(once, MANY_PAIRS);
    assert_int_equal(io_events, MANY_PAIRS);
    assert_int_equal(removed, MANY_PAIRS);
    assert_int_equal(s.handlers, 0);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_high_fd_number(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct io_ctx c = { 0 };
    struct rlimit rl;
    int p[2];

    (void)state;
    assert_non_null(loop);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur <= HIGH_FD) {
        ioloop_free(loop);
        skip();
    }
    make_pipe(p);
    assert_false(fd_is_open(HIGH_FD));
    assert_int_equal(dup2(p[0], HIGH_FD), HIGH_FD);
    c.rfd = HIGH_FD;
    c.wfd = p[1];
    assert_int_equal(ioloop_add_handler(loop, HIGH_FD, IOLOOP_READ, read_handler, &c), 0);
    assert_true(ioloop_run_after(loop, 0, write_later_cb, &c) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.early, 0);
    assert_int_equal(c.fd_seen, HIGH_FD);
    assert_int_equal(c.events, IOLOOP_READ);
    assert_int_equal(c.read_rc, 1);
    /* The handler removed itself. */
    assert_int_equal(ioloop_remove_handler(loop, HIGH_FD), -ENOENT);
    ioloop_free(loop);
    close_fd(HIGH_FD);
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Stale events in one batch ---------------------------------------------------------- */

struct stale_ctx;

struct stale_side {
    struct stale_ctx *ctx;
    int idx;
};

struct stale_ctx {
    struct stale_side side[2];
    int rfd[2], wfd[2];     /* two pipes, both readable before the loop starts */
    int calls[2];
    int first;              /* the side whose handler ran first, -1 before */
    int rc_remove;
    int replace;            /* variant: put a new fd and handler under the removed number */
    int readd;              /* variant: register the same fd again with a new handler */
    int spare[2];           /* an empty pipe whose read end goes under that number */
    int rc_close, rc_dup, rc_add;
    int new_calls;          /* calls of the new registration */
    int new_fd;
    int new_events;
    void *new_arg;
    int phase2;             /* set when the new fd is made ready for real */
};

static void stale_new_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct stale_ctx *c = arg;
    char b;

    c->new_calls++;
    c->new_fd = fd;
    c->new_events = events;
    c->new_arg = arg;
    if (c->phase2) {
        if (read(fd, &b, 1) != 1)
            c->new_events = -1;
        ioloop_remove_handler(loop, fd);
        ioloop_stop(loop);
    }
}

static void stale_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct stale_side *side = arg;
    struct stale_ctx *c = side->ctx;
    int other = 1 - side->idx;
    char b;

    (void)events;
    c->calls[side->idx]++;
    if (c->first < 0) {
        c->first = side->idx;
        c->rc_remove = ioloop_remove_handler(loop, c->rfd[other]);
        if (c->replace) {
            /* Same fd number, a different file that is not ready, a new fn and arg. */
            c->rc_close = close(c->rfd[other]);
            c->rc_dup = dup2(c->spare[0], c->rfd[other]);
            c->rc_add = ioloop_add_handler(loop, c->rfd[other], IOLOOP_READ, stale_new_handler,
                                           c);
        } else if (c->readd) {
            c->rc_add = ioloop_add_handler(loop, c->rfd[other], IOLOOP_READ, stale_new_handler,
                                           c);
        }
    }
    if (read(fd, &b, 1) != 1)
        c->calls[side->idx] += 100;
    ioloop_remove_handler(loop, fd);
    ioloop_add_callback(loop, stop_cb, NULL);
}

static void stale_setup(struct stale_ctx *c, ioloop_t *loop)
{
    c->first = -1;
    for (int i = 0; i < 2; i++) {
        int p[2];

        make_pipe(p);
        c->rfd[i] = p[0];
        c->wfd[i] = p[1];
        c->side[i].ctx = c;
        c->side[i].idx = i;
        assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, stale_handler,
                                            &c->side[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        write_byte(c->wfd[i]);
}

/* Runs the loop once over the two ready pipes: the handler that ran first removed the other.
 * Returns the other side's index. */
static int stale_run_first(struct stale_ctx *c, ioloop_t *loop)
{
    stale_setup(c, loop);
    assert_int_equal(ioloop_start(loop), 0);
    assert_true(c->first == 0 || c->first == 1);
    assert_int_equal(c->rc_remove, 0);
    return 1 - c->first;
}

static void stale_close(struct stale_ctx *c)
{
    for (int i = 0; i < 2; i++) {
        close_fd(c->rfd[i]);
        close_fd(c->wfd[i]);
    }
}

static void test_loop_removed_handler_skips_batch_event(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct stale_ctx c = { 0 };
    ioloop_stats_t s;
    int other;

    (void)state;
    assert_non_null(loop);
    other = stale_run_first(&c, loop);
    assert_int_equal(c.calls[c.first], 1);
    assert_int_equal(c.calls[other], 0);
    get_stats(loop, &s);
    assert_int_equal(s.io_events, 1);
    assert_int_equal(s.handlers, 0);
    ioloop_free(loop);
    stale_close(&c);
    assert_int_equal(test_count_fds(), before);
}

/* The same file registered again within the batch: the new handler does not get the event
 * collected for the old registration, only the readiness that follows. */
static void test_loop_readded_fd_skips_batch_event(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct stale_ctx c = { .readd = 1 };
    ioloop_stats_t s;
    int other;

    (void)state;
    assert_non_null(loop);
    other = stale_run_first(&c, loop);
    assert_int_equal(c.rc_add, 0);
    assert_int_equal(c.calls[c.first], 1);
    assert_int_equal(c.calls[other], 0);
    assert_int_equal(c.new_calls, 0);

    /* Its byte is still unread: the new registration gets it on the next start. */
    c.phase2 = 1;
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.new_calls, 1);
    assert_int_equal(c.new_fd, c.rfd[other]);
    assert_int_equal(c.new_events, IOLOOP_READ);
    get_stats(loop, &s);
    assert_int_equal(s.io_events, 2);
    assert_int_equal(s.handlers, 0);
    assert_int_equal(s.epoll_rebuilds, 0);
    ioloop_free(loop);
    stale_close(&c);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_reused_fd_skips_batch_event(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct stale_ctx c = { .replace = 1 };
    ioloop_stats_t s;
    int other;

    (void)state;
    assert_non_null(loop);
    make_pipe(c.spare);
    other = stale_run_first(&c, loop);
    assert_int_equal(c.rc_close, 0);
    assert_int_equal(c.rc_dup, c.rfd[other]);
    assert_int_equal(c.rc_add, 0);
    /* The old registration never ran; the new one got nothing from the old batch. */
    assert_int_equal(c.calls[c.first], 1);
    assert_int_equal(c.calls[other], 0);
    assert_int_equal(c.new_calls, 0);
    get_stats(loop, &s);
    assert_int_equal(s.io_events, 1);
    assert_int_equal(s.handlers, 1);

    /* The new registration works for real readiness. */
    c.phase2 = 1;
    write_byte(c.spare[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.new_calls, 1);
    assert_int_equal(c.new_fd, c.rfd[other]);
    assert_int_equal(c.new_events, IOLOOP_READ);
    assert_ptr_equal(c.new_arg, &c);
    assert_int_equal(c.calls[other], 0);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);
    assert_int_equal(s.epoll_rebuilds, 0); /* the old file is gone: no orphan */

    ioloop_free(loop);
    stale_close(&c); /* rfd[other] is the dup of spare[0] now */
    close_fd(c.spare[0]);
    close_fd(c.spare[1]);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Deferred removal ------------------------------------------------------------------ */

#define REARMS 1000

struct rearm_ctx {
    int s[2];
    int calls;
    int rc;      /* the first failure of the re-registration or the write, or 0 */
    bool pause;  /* re-register with pause + resume instead of remove + add */
};

/* Reads its byte, re-registers itself (remove + add, or pause + resume), and makes itself
 * readable again. */
static void rearm_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct rearm_ctx *c = arg;
    char byte;
    int rc;

    assert_int_equal(events, IOLOOP_READ);
    assert_int_equal(read(fd, &byte, 1), 1);
    if (++c->calls == REARMS) {
        ioloop_stop(loop);
        return;
    }
    if (c->pause)
        rc = ioloop_pause_handler(loop, fd);
    else
        rc = ioloop_remove_handler(loop, fd);
    if (rc == 0)
        rc = c->pause ? ioloop_resume_handler(loop, fd)
                      : ioloop_add_handler(loop, fd, IOLOOP_READ, rearm_handler, c);
    if (rc != 0)
        c->rc = rc;
    else if (write(c->s[1], "x", 1) != 1)
        c->rc = -errno;
}

/* Removing and adding the same fd within one iteration leaves one working registration, and
 * the event collected before the removal is not delivered to the new one. It is the same
 * kernel registration, kept: one EPOLL_CTL_MOD for each remove + add, never a DEL and a new
 * ADD (the epoll set is updated only before the next wait). */
static void test_loop_remove_add_same_iteration(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct rearm_ctx c = {0};
    int first_calls = 0;
    ioloop_stats_t st;

    (void)state;
    assert_non_null(loop);
    make_socketpair(c.s);
    count_epoll_ctl(c.s[0]);

    /* Before start: the removal is still pending when the fd comes back. */
    assert_int_equal(ioloop_add_handler(loop, c.s[0], IOLOOP_READ, count_handler,
                                        &first_calls), 0);
    assert_int_equal(ioloop_remove_handler(loop, c.s[0]), 0);
    assert_int_equal(ioloop_add_handler(loop, c.s[0], IOLOOP_READ, rearm_handler, &c), 0);
    write_byte(c.s[1]);

    /* From its own handler, REARMS times: every byte is read by the new registration. */
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.rc, 0);
    assert_int_equal(c.calls, REARMS);
    assert_int_equal(first_calls, 0);
    get_stats(loop, &st);
    assert_int_equal(st.io_events, REARMS);
    assert_int_equal(st.handlers, 1);
    assert_int_equal(st.epoll_rebuilds, 0);
    /* The first add, then one MOD per re-add: before start, and REARMS - 1 in the handler. */
    assert_int_equal(atomic_load(&ctl_adds), 1);
    assert_int_equal(atomic_load(&ctl_mods), REARMS);
    assert_int_equal(atomic_load(&ctl_dels), 0);
    count_epoll_ctl(-1);

    assert_int_equal(ioloop_remove_handler(loop, c.s[0]), 0);
    ioloop_free(loop);
    close_fd(c.s[0]);
    close_fd(c.s[1]);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Pausing a handler ------------------------------------------------------------------ */

/* A pause and a resume within one iteration (libev's stop + start): no system call at all,
 * and the handler goes on getting its events. */
static void test_loop_pause_resume_same_iteration(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct rearm_ctx c = {.pause = true};
    ioloop_stats_t st;

    (void)state;
    assert_non_null(loop);
    make_socketpair(c.s);
    count_epoll_ctl(c.s[0]);
    assert_int_equal(ioloop_add_handler(loop, c.s[0], IOLOOP_READ, rearm_handler, &c), 0);
    assert_int_equal(ioloop_pause_handler(loop, c.s[0]), 0);
    assert_int_equal(ioloop_pause_handler(loop, c.s[0]), 0); /* paused already: nothing */
    assert_int_equal(ioloop_resume_handler(loop, c.s[0]), 0);
    assert_int_equal(ioloop_resume_handler(loop, c.s[0]), 0); /* not paused: nothing */
    write_byte(c.s[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.rc, 0);
    assert_int_equal(c.calls, REARMS);
    assert_int_equal(atomic_load(&ctl_adds), 1); /* the add_handler */
    assert_int_equal(atomic_load(&ctl_mods), 0);
    assert_int_equal(atomic_load(&ctl_dels), 0);
    count_epoll_ctl(-1);
    get_stats(loop, &st);
    assert_int_equal(st.handlers, 1); /* a paused handler is still one */
    assert_int_equal(ioloop_remove_handler(loop, c.s[0]), 0);
    ioloop_free(loop);
    close_fd(c.s[0]);
    close_fd(c.s[1]);
    assert_int_equal(test_count_fds(), before);
}

struct pause_ctx {
    int rfd[2], wfd[2];
    int calls[2];
    int first;
    int rc;
};

/* Both pipes are ready in one batch: the first handler to run pauses the other. */
static void pause_other_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct pause_ctx *c = arg;
    int me = fd == c->rfd[0] ? 0 : 1;
    char byte;

    (void)events;
    c->calls[me]++;
    if (c->first < 0) {
        c->first = me;
        c->rc = ioloop_pause_handler(loop, c->rfd[1 - me]);
    }
    assert_int_equal(read(fd, &byte, 1), 1);
    ioloop_add_callback(loop, stop_cb, NULL);
}

/* Events already collected for a handler paused in the same batch are not delivered; after
 * the resume, the readiness that is still there is. */
static void test_loop_paused_handler_skips_batch_event(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct pause_ctx c = {.first = -1};
    int other;

    (void)state;
    assert_non_null(loop);
    for (int i = 0; i < 2; i++) {
        int p[2];

        make_pipe(p);
        c.rfd[i] = p[0];
        c.wfd[i] = p[1];
        assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_READ, pause_other_handler, &c),
                         0);
        write_byte(p[1]);
    }
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.rc, 0);
    other = 1 - c.first;
    assert_int_equal(c.calls[c.first], 1);
    assert_int_equal(c.calls[other], 0);

    assert_int_equal(ioloop_resume_handler(loop, c.rfd[other]), 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.calls[other], 1);
    assert_int_equal(c.calls[c.first], 1);
    ioloop_free(loop);
    for (int i = 0; i < 2; i++) {
        close_fd(c.rfd[i]);
        close_fd(c.wfd[i]);
    }
    assert_int_equal(test_count_fds(), before);
}

/* A handler still paused at the wait leaves the epoll set: a hung-up pipe (EPOLLHUP, which
 * epoll reports whatever the mask) does not wake the loop. update_handler works on it, and
 * the resume adds it back with that mask. */
static void test_loop_paused_across_wait(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct hup_ctx got = {0};
    int p[2], stops = 0;
    ioloop_stats_t st;

    (void)state;
    assert_non_null(loop);
    make_pipe(p);
    count_epoll_ctl(p[0]);
    assert_int_equal(ioloop_add_handler(loop, p[0], IOLOOP_WRITE, hup_handler, &got), 0);
    assert_int_equal(ioloop_pause_handler(loop, p[0]), 0);
    close_fd(p[1]); /* p[0] hangs up */
    assert_true(ioloop_run_after(loop, 50, stop_cb, &stops) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stops, 1);
    assert_int_equal(got.calls, 0);
    get_stats(loop, &st);
    assert_true(st.iterations <= 4); /* the wait slept: nothing woke it */
    assert_int_equal(atomic_load(&ctl_dels), 1);

    assert_int_equal(ioloop_update_handler(loop, p[0], IOLOOP_READ), 0);
    assert_int_equal(atomic_load(&ctl_mods), 0); /* out of the set: nothing to modify */
    assert_int_equal(ioloop_resume_handler(loop, p[0]), 0);
    assert_int_equal(atomic_load(&ctl_adds), 2);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(got.calls, 1);
    assert_int_equal(got.events, IOLOOP_READ | IOLOOP_ERROR); /* the hang-up, with the new mask */
    count_epoll_ctl(-1);
    ioloop_free(loop);
    close_fd(p[0]);
    assert_int_equal(test_count_fds(), before);
}

static void read_stop_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    char byte;

    assert_int_equal(events, IOLOOP_READ);
    assert_int_equal(read(fd, &byte, 1), 1);
    ++*(int *)arg;
    ioloop_stop(loop);
}

/* Bad calls change nothing; a paused handler can be removed, and the fd registered again. */
static void test_loop_pause_errors_and_remove(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int s[2], calls = 0;
    ioloop_stats_t st;

    (void)state;
    assert_non_null(loop);
    make_socketpair(s);
    assert_int_equal(ioloop_pause_handler(NULL, s[0]), -EINVAL);
    assert_int_equal(ioloop_resume_handler(NULL, s[0]), -EINVAL);
    assert_int_equal(ioloop_pause_handler(loop, s[0]), -ENOENT);
    assert_int_equal(ioloop_resume_handler(loop, s[0]), -ENOENT);
    assert_int_equal(ioloop_pause_handler(loop, -1), -ENOENT);
    assert_int_equal(ioloop_resume_handler(loop, 1 << 20), -ENOENT);

    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, count_handler, &calls), 0);
    assert_int_equal(ioloop_pause_handler(loop, s[0]), 0);
    assert_int_equal(ioloop_remove_handler(loop, s[0]), 0);
    assert_int_equal(ioloop_resume_handler(loop, s[0]), -ENOENT);
    get_stats(loop, &st);
    assert_int_equal(st.handlers, 0);
    /* Registered again: not paused. */
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, read_stop_handler, &calls), 0);
    write_byte(s[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(calls, 1);
    assert_int_equal(ioloop_remove_handler(loop, s[0]), 0);
    ioloop_free(loop);
    close_fd(s[0]);
    close_fd(s[1]);
    assert_int_equal(test_count_fds(), before);
}

struct orphan_ctx {
    int orphan_calls;
    int live[2];
    int live_calls;
};

static void orphan_live_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct orphan_ctx *c = arg;
    char byte;

    assert_int_equal(events, IOLOOP_READ);
    assert_int_equal(read(fd, &byte, 1), 1);
    c->live_calls++;
    ioloop_stop(loop);
}

static void *post_stop_thread(void *arg)
{
    return (void *)(intptr_t)ioloop_add_callback(arg, stop_cb, NULL);
}

/* An fd removed and then closed while a dup keeps its file open leaves an epoll registration
 * that its DEL cannot reach. The loop must drop it (rebuild its epoll set) instead of waking
 * for it forever, and keep every live registration, its own eventfd and timerfd included. */
static void test_loop_orphaned_registration_rebuilds(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct orphan_ctx c = {0};
    test_loop_thread_t t;
    pthread_t poster;
    void *rc;
    int s[2], dup_fd;
    ioloop_stats_t st;

    (void)state;
    assert_non_null(loop);
    make_socketpair(s);
    make_socketpair(c.live);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, count_handler,
                                        &c.orphan_calls), 0);
    assert_int_equal(ioloop_add_handler(loop, c.live[0], IOLOOP_READ, orphan_live_handler,
                                        &c), 0);
    write_byte(s[1]); /* s[0] stays readable: nobody reads it */
    dup_fd = dup(s[0]);
    assert_true(dup_fd >= 0);
    assert_int_equal(ioloop_remove_handler(loop, s[0]), 0);
    close_fd(s[0]);

    /* 20 ms with nothing to do: the orphan would wake the loop on every wait. */
    assert_true(ioloop_run_after(loop, 20, stop_cb, NULL) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    get_stats(loop, &st);
    printf("orphaned registration: %llu iterations in 20 ms, %llu rebuild(s)\n",
           (unsigned long long)st.iterations, (unsigned long long)st.epoll_rebuilds);
    assert_int_equal(st.epoll_rebuilds, 1);
    assert_true(st.iterations <= 10);
    assert_int_equal(c.orphan_calls, 0);
    assert_int_equal(st.io_events, 0);

    /* The rebuilt set still has the live fd ... */
    write_byte(c.live[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.live_calls, 1);
    /* ... and the eventfd: a post from another thread wakes the sleeping loop. */
    start_in_thread(&t, loop);
    assert_int_equal(pthread_create(&poster, NULL, post_stop_thread, loop), 0);
    assert_int_equal(pthread_join(poster, &rc), 0);
    assert_int_equal((int)(intptr_t)rc, 0);
    assert_int_equal(test_loop_thread_join(&t), 0);
    get_stats(loop, &st);
    assert_int_equal(st.epoll_rebuilds, 1);
    assert_int_equal(c.orphan_calls, 0);

    assert_int_equal(ioloop_remove_handler(loop, c.live[0]), 0);
    ioloop_free(loop);
    close_fd(dup_fd);
    close_fd(s[1]);
    close_fd(c.live[0]);
    close_fd(c.live[1]);
    assert_int_equal(test_count_fds(), before);
}

/*
 * An fd removed and closed while a dup keeps its file open, so that the deferred DEL of the
 * next iteration fails and the registration stays in the kernel as an orphan; then dup2()
 * makes the number name that same file again. Registering it takes the orphan over (the
 * kernel refuses a second registration of the same file and fd) instead of failing with
 * -EEXIST, and the new handler gets the fd's events: its own, with no stale ones and no
 * rebuild, on this and later runs.
 */
static void test_loop_add_adopts_orphaned_registration(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct orphan_ctx c = {0};
    int s[2], dup_fd;
    ioloop_stats_t st;

    (void)state;
    assert_non_null(loop);
    make_socketpair(s);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, count_handler,
                                        &c.orphan_calls), 0);
    assert_int_equal(ioloop_remove_handler(loop, s[0]), 0);
    dup_fd = dup(s[0]);
    assert_true(dup_fd >= 0);
    close_fd(s[0]);
    /* One iteration: its DEL meets a closed fd. Nothing is readable, so no event reveals the
     * orphan and nothing rebuilds the epoll set. */
    assert_true(ioloop_run_after(loop, 0, stop_cb, NULL) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(dup2(dup_fd, s[0]), s[0]);
    close_fd(dup_fd);

    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, orphan_live_handler, &c), 0);
    for (int round = 1; round <= 2; round++) {
        write_byte(s[1]);
        assert_int_equal(ioloop_start(loop), 0);
        assert_int_equal(c.live_calls, round);
    }
    assert_int_equal(c.orphan_calls, 0);
    get_stats(loop, &st);
    assert_int_equal(st.io_events, 2);
    assert_int_equal(st.handlers, 1);
    assert_int_equal(st.epoll_rebuilds, 0);

    assert_int_equal(ioloop_remove_handler(loop, s[0]), 0);
    ioloop_free(loop);
    close_fd(s[0]);
    close_fd(s[1]);
    assert_int_equal(test_count_fds(), before);
}

/* Both sides are socketpairs with a byte waiting; the first handler switches the other to WRITE. */
struct upd_stale_ctx;

struct upd_stale_side {
    struct upd_stale_ctx *ctx;
    int idx;
};

struct upd_stale_ctx {
    struct upd_stale_side side[2];
    int s[2][2];
    int first;
    int rc_update;
    int other_calls;
    int other_events;
    int first_again;
};

static void upd_stale_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct upd_stale_side *side = arg;
    struct upd_stale_ctx *c = side->ctx;
    char b;

    if (c->first < 0) {
        c->first = side->idx;
        c->rc_update = ioloop_update_handler(loop, c->s[1 - side->idx][0], IOLOOP_WRITE);
        if (read(fd, &b, 1) != 1)
            c->first_again += 100;
        ioloop_remove_handler(loop, fd);
    } else if (side->idx != c->first) {
        c->other_calls++;
        c->other_events = events;
        ioloop_remove_handler(loop, fd);
        ioloop_add_callback(loop, stop_cb, NULL);
    } else {
        c->first_again++;
    }
}

static void test_loop_update_skips_excluded_batch_event(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct upd_stale_ctx c = { .first = -1 };

    (void)state;
    assert_non_null(loop);
    for (int i = 0; i < 2; i++) {
        make_socketpair(c.s[i]);
        c.side[i].ctx = &c;
        c.side[i].idx = i;
        assert_int_equal(ioloop_add_handler(loop, c.s[i][0], IOLOOP_READ, upd_stale_handler,
                                            &c.side[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        write_byte(c.s[i][1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_true(c.first == 0 || c.first == 1);
    assert_int_equal(c.rc_update, 0);
    assert_int_equal(c.first_again, 0);
    /* The other side's READ event of the first batch was dropped; it saw WRITE only. */
    assert_int_equal(c.other_calls, 1);
    assert_int_equal(c.other_events, IOLOOP_WRITE);
    ioloop_free(loop);
    for (int i = 0; i < 2; i++) {
        close_fd(c.s[i][0]);
        close_fd(c.s[i][1]);
    }
    assert_int_equal(test_count_fds(), before);
}

/* ---- Handlers changing handlers --------------------------------------------------------- */

struct grow_ctx {
    int a[2], b[2], c[2];
    int calls1, calls2, calls3;
    int rc_self_remove, rc_dup, rc_add;
    int fd2, fd3;
    int bad;
};

static void grow_handler3(ioloop_t *loop, int fd, int events, void *arg)
{
    struct grow_ctx *g = arg;
    char b;

    g->calls3++;
    g->fd3 = fd;
    if (events != IOLOOP_READ || read(fd, &b, 1) != 1)
        g->bad++;
    ioloop_remove_handler(loop, fd);
    ioloop_stop(loop);
}

static void grow_handler2(ioloop_t *loop, int fd, int events, void *arg)
{
    struct grow_ctx *g = arg;
    char b;

    g->calls2++;
    g->fd2 = fd;
    if (events != IOLOOP_READ || read(fd, &b, 1) != 1)
        g->bad++;
    ioloop_remove_handler(loop, fd);
    /* Wakes the handler registered before the table grew. */
    if (write(g->c[1], "x", 1) != 1)
        g->bad++;
}

static void grow_handler1(ioloop_t *loop, int fd, int events, void *arg)
{
    struct grow_ctx *g = arg;
    char b;

    g->calls1++;
    /* The pipe keeps a second byte: only the removal keeps this handler from running again. */
    g->rc_self_remove = ioloop_remove_handler(loop, fd);
    if (events != IOLOOP_READ || read(fd, &b, 1) != 1)
        g->bad++;
    g->rc_dup = dup2(g->b[0], GROW_FD);
    g->rc_add = ioloop_add_handler(loop, GROW_FD, IOLOOP_READ, grow_handler2, g);
}

static void test_loop_handler_changes_handlers(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct grow_ctx g = { 0 };
    ioloop_stats_t s;

    (void)state;
    assert_non_null(loop);
    assert_false(fd_is_open(GROW_FD));
    make_pipe(g.a);
    make_pipe(g.b);
    make_pipe(g.c);
    assert_int_equal(ioloop_add_handler(loop, g.a[0], IOLOOP_READ, grow_handler1, &g), 0);
    assert_int_equal(ioloop_add_handler(loop, g.c[0], IOLOOP_READ, grow_handler3, &g), 0);
    assert_int_equal(write(g.a[1], "xx", 2), 2);
    write_byte(g.b[1]);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(g.bad, 0);
    assert_int_equal(g.rc_self_remove, 0);
    assert_int_equal(g.rc_dup, GROW_FD);
    assert_int_equal(g.rc_add, 0);
    assert_int_equal(g.calls1, 1);
    assert_int_equal(g.calls2, 1);
    assert_int_equal(g.calls3, 1);
    assert_int_equal(g.fd2, GROW_FD);
    assert_int_equal(g.fd3, g.c[0]);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 0);
    ioloop_free(loop);
    close_fd(GROW_FD);
    close_fd(g.a[0]);
    close_fd(g.a[1]);
    close_fd(g.b[0]);
    close_fd(g.b[1]);
    close_fd(g.c[0]);
    close_fd(g.c[1]);
    assert_int_equal(test_count_fds(), before);
}

/*
 * The table grows inside a callback and a later event of the SAME batch still finds its own
 * handler: dispatch() re-reads &loop->handlers[fd] for every event, since the growth moved the
 * table (calloc of the new one, free of the old). In test_loop_handler_changes_handlers the
 * handler after the growth is woken in a later batch, so a dispatch that cached the table
 * pointer for a whole batch would pass that test.
 *
 * Sizes: with a handler on GROW_FD (5000) the table has 8192 slots (HANDLERS_MIN 64, doubled
 * past the fd), 192 KiB of 24-byte slots; one on HIGH_FD (19500) makes it 32768 slots, so the
 * first handler of the batch moves it. The old table must go back to the kernel when freed, so
 * that a stale pointer into it faults even without ASan (which reports the use after free
 * itself, whatever the sizes): with glibc's mmap threshold at 64 KiB and no top pad, a table
 * that does not fit in the heap's top chunk is a mapping of its own, and free() unmaps it. Only
 * a fresh heap gives that for sure -- a fork of this process inherits the large free chunks the
 * earlier tests left, the old table comes from them and stays readable after the free -- so
 * the test runs this binary again (TABLE_GROWS_CHILD, see main()) in a child process. That
 * also keeps the mallopt() (which cannot be undone exactly: it stops the dynamic threshold)
 * and any fd limit out of this process. The child reports what failed on a pipe and by its
 * exit status; a signal that kills it reaches the parent.
 */
struct batch_grow_ctx;

struct batch_grow_side {
    struct batch_grow_ctx *ctx;
    int idx;
};

struct batch_grow_ctx {
    struct batch_grow_side side[2];
    int rfd[2], wfd[2];     /* two pipes, both readable before the loop waits */
    int idle[2];            /* a pipe never written: its read end goes under GROW_FD, HIGH_FD */
    int calls;
    int fd_seen[2];         /* by call order */
    void *arg_seen[2];
    int events_seen[2];
    uint64_t iteration[2];  /* ioloop_get_stats().iterations at each call */
    int rc_dup, rc_add;
    int bad;
};

static void never_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    ((struct batch_grow_ctx *)arg)->bad++;
}

static void batch_grow_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct batch_grow_ctx *g = ((struct batch_grow_side *)arg)->ctx;
    ioloop_stats_t s;
    char b;

    if (g->calls >= 2) {
        g->bad++;
        return;
    }
    get_stats(loop, &s);
    g->fd_seen[g->calls] = fd;
    g->arg_seen[g->calls] = arg;
    g->events_seen[g->calls] = events;
    g->iteration[g->calls] = s.iterations;
    if (read(fd, &b, 1) != 1)
        g->bad++;
    ioloop_remove_handler(loop, fd);
    if (g->calls++ == 0) {
        /* Whichever runs first moves the table under the other's pending event. */
        g->rc_dup = dup2(g->idle[0], HIGH_FD);
        g->rc_add = ioloop_add_handler(loop, HIGH_FD, IOLOOP_READ, never_handler, g);
    } else {
        ioloop_stop(loop);
    }
}

/* argv[1] of this binary run as the child of test_loop_table_grows_within_batch. */
#define TABLE_GROWS_CHILD "--table-grows-child"

/* The child's body, first thing in a fresh process: NULL when the property held, else what
 * failed. No cmocka here. */
static const char *batch_grow_child(void)
{
    struct batch_grow_ctx g = { 0 };
    struct rlimit rl;
    ioloop_t *loop;
    int before, first, second;

    /* glibc only; ASan's allocator ignores both and quarantines the freed table instead. */
    (void)mallopt(M_MMAP_THRESHOLD, 64 * 1024);
    (void)mallopt(M_TOP_PAD, 0);
    alarm(2 * TEST_WAIT_MS / 1000); /* a hang ends in SIGALRM, which the parent reports */
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return "getrlimit failed";
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return "setrlimit failed";
    before = test_count_fds();
    if ((loop = ioloop_new()) == NULL)
        return "ioloop_new failed";
    if (pipe2(g.idle, O_NONBLOCK | O_CLOEXEC) != 0 || dup2(g.idle[0], GROW_FD) != GROW_FD)
        return "no idle pipe under GROW_FD";
    /* The table: 8192 slots, a mapping of its own. */
    if (ioloop_add_handler(loop, GROW_FD, IOLOOP_READ, never_handler, &g) != 0)
        return "add on GROW_FD failed";
    for (int i = 0; i < 2; i++) {
        int p[2];

        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
            return "pipe2 failed";
        g.rfd[i] = p[0];
        g.wfd[i] = p[1];
        g.side[i].ctx = &g;
        g.side[i].idx = i;
        if (ioloop_add_handler(loop, p[0], IOLOOP_READ, batch_grow_handler, &g.side[i]) != 0)
            return "add on a pipe failed";
    }
    /* Both readable before the first wait: one epoll_wait returns both. */
    for (int i = 0; i < 2; i++)
        if (write(g.wfd[i], "x", 1) != 1)
            return "write failed";
    /* If the second handler never ran, this stops the loop instead of a hang. */
    if (ioloop_run_after(loop, TEST_WAIT_MS, stop_cb, NULL) <= 0)
        return "run_after failed";
    if (ioloop_start(loop) != 0)
        return "ioloop_start failed";

    if (g.rc_dup != HIGH_FD || g.rc_add != 0)
        return "the first handler could not register HIGH_FD (the growth)";
    if (g.calls != 2)
        return "the second handler of the batch did not run";
    if (g.bad != 0)
        return "a handler read nothing, ran too often, or never_handler ran";
    if (g.iteration[0] != g.iteration[1])
        return "the two handlers ran in different iterations, not in one batch";
    first = g.arg_seen[0] == &g.side[0] ? 0 : g.arg_seen[0] == &g.side[1] ? 1 : -1;
    if (first < 0)
        return "the first handler got a wrong argument";
    second = 1 - first;
    if (g.fd_seen[0] != g.rfd[first])
        return "the first handler got a wrong fd";
    if (g.arg_seen[1] != &g.side[second])
        return "the handler after the growth got a wrong argument";
    if (g.fd_seen[1] != g.rfd[second])
        return "the handler after the growth got a wrong fd";
    if (g.events_seen[0] != IOLOOP_READ || g.events_seen[1] != IOLOOP_READ)
        return "wrong events";
    if (ioloop_remove_handler(loop, GROW_FD) != 0 || ioloop_remove_handler(loop, HIGH_FD) != 0)
        return "removing the handlers on GROW_FD and HIGH_FD failed";
    ioloop_free(loop);
    close(GROW_FD);
    close(HIGH_FD);
    for (int i = 0; i < 2; i++) {
        close(g.rfd[i]);
        close(g.wfd[i]);
        close(g.idle[i]);
    }
    if (test_count_fds() != before)
        return "the child's fd count changed";
    return NULL;
}

/* main() of the child: argv[2] is the fd of the pipe for the message. */
static int batch_grow_child_main(const char *report_fd)
{
    const char *err = batch_grow_child();
    int fd = atoi(report_fd);

    if (err != NULL && write(fd, err, strlen(err)) < 0)
        return 3;
    close(fd);
    return err == NULL ? 0 : 1;
}

static void test_loop_table_grows_within_batch(void **state)
{
    int before = test_count_fds();
    char why[160] = "", arg[16];
    struct rlimit rl;
    int status = 0, pfd[2];
    ssize_t n;
    pid_t pid;

    (void)state;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max <= HIGH_FD) {
        print_message("skipped: fd %d is above the hard fd limit %ju\n", HIGH_FD,
                      (uintmax_t)rl.rlim_max);
        skip();
    }
    assert_false(fd_is_open(GROW_FD));
    assert_false(fd_is_open(HIGH_FD));
    assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
    snprintf(arg, sizeof arg, "%d", pfd[1]);
    fflush(NULL); /* nothing buffered twice */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char *argv[] = {(char *)"test_loop", (char *)TABLE_GROWS_CHILD, arg, NULL};

        /* The write end goes across the exec; the read end closes at it. */
        if (fcntl(pfd[1], F_SETFD, 0) != 0)
            _exit(126);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close_fd(pfd[1]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    n = read(pfd[0], why, sizeof why - 1);
    why[n > 0 ? n : 0] = '\0';
    close_fd(pfd[0]);
    if (WIFSIGNALED(status))
        fail_msg("the child died of signal %d (%s): an event after the table grew in the "
                 "same batch used the old table", WTERMSIG(status), strsignal(WTERMSIG(status)));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("table growth within one batch: %s (status 0x%x)", why[0] != '\0' ? why :
                 "no message (the exec failed, or a sanitizer ended the child: see its report)",
                 status);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Start and stop --------------------------------------------------------------------- */

static void stop_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)events;
    ++*(int *)arg;
    ioloop_remove_handler(loop, fd);
    ioloop_stop(loop);
}

static void test_loop_stop_from_callback(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int stops = 0, after = 0, p[2];

    (void)state;
    assert_non_null(loop);
    /* From a posted callback; a callback accepted before the stop still runs. */
    assert_int_equal(ioloop_add_callback(loop, stop_cb, &stops), 0);
    assert_int_equal(ioloop_add_callback(loop, count_cb, &after), 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stops, 1);
    assert_int_equal(after, 1);
    /* Stopped and not started again: posting is refused. */
    assert_int_equal(ioloop_add_callback(loop, count_cb, &after), -ESHUTDOWN);

    /* From a timer. */
    assert_true(ioloop_run_after(loop, 1, stop_cb, &stops) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stops, 2);

    /* From an fd handler. */
    make_pipe(p);
    assert_int_equal(ioloop_add_handler(loop, p[1], IOLOOP_WRITE, stop_handler, &stops), 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stops, 3);
    assert_int_equal(after, 1);

    ioloop_free(loop);
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_stop_before_start(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int queued = 0, guard = 0, stopped = 0;
    int64_t guard_id;
    uint64_t t0;

    (void)state;
    assert_non_null(loop);
    assert_int_equal(ioloop_add_callback(loop, count_cb, &queued), 0);
    ioloop_stop(loop);
    assert_int_equal(ioloop_add_callback(loop, count_cb, &queued), -ESHUTDOWN);
    /* Only ends a start that ignores the early stop; cancelled right after. */
    guard_id = ioloop_run_after(loop, 2000, stop_cb, &guard);
    assert_true(guard_id > 0);

    /* The next start runs the queued callback and returns at once. */
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(queued, 1);
    assert_int_equal(ioloop_cancel_timer(loop, guard_id), 0);

    /* The start after that runs normally, until it is stopped. */
    t0 = test_now_us();
    assert_true(ioloop_run_after(loop, 20, stop_cb, &stopped) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stopped, 1);
    assert_true(test_now_us() - t0 >= 20000);
    assert_int_equal(queued, 1);

    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

static void double_stop_cb(ioloop_t *loop, void *arg)
{
    ++*(int *)arg;
    ioloop_stop(loop);
    ioloop_stop(loop);
}

static void test_loop_stop_idempotent(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    int guard = 0, stopped = 0, doubles = 0;
    int64_t guard_id;

    (void)state;
    assert_non_null(loop);

    /* Two stops before start end one start only. */
    ioloop_stop(loop);
    ioloop_stop(loop);
    guard_id = ioloop_run_after(loop, 2000, stop_cb, &guard);
    assert_true(guard_id > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(guard, 0);
    assert_int_equal(ioloop_cancel_timer(loop, guard_id), 0);
    assert_true(ioloop_run_after(loop, 20, stop_cb, &stopped) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stopped, 1);

    /* Two stops inside a run end that run only. */
    assert_true(ioloop_run_after(loop, 0, double_stop_cb, &doubles) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(doubles, 1);
    assert_true(ioloop_run_after(loop, 20, stop_cb, &stopped) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stopped, 2);

    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

struct restart_ctx {
    int p[2];
    int reads;   /* bytes the handler read, one per run */
    int rc;      /* the first failure of a write or read, or 0 */
};

/* Reads the byte made readable in this run and ends the run. */
static void restart_read_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct restart_ctx *c = arg;
    char byte;

    if (events != IOLOOP_READ || read(fd, &byte, 1) != 1)
        c->rc = -1;
    c->reads++;
    ioloop_stop(loop);
}

/* A timer of the restarted run: only now does the fd become readable. */
static void restart_write_cb(ioloop_t *loop, void *arg)
{
    struct restart_ctx *c = arg;

    (void)loop;
    if (write(c->p[1], "x", 1) != 1)
        c->rc = -errno;
}

/* A stopped loop starts again with its registrations: after each restart, an fd registered
 * before the first start becomes readable and its event arrives (and ends the run). */
static void test_loop_restart(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct restart_ctx c = {0};
    int stops = 0, guard = 0;
    int64_t guard_id;
    ioloop_stats_t st;

    (void)state;
    assert_non_null(loop);
    make_pipe(c.p);
    assert_int_equal(ioloop_add_handler(loop, c.p[0], IOLOOP_READ, restart_read_handler, &c),
                     0);
    /* The first run ends by a timer, with nothing readable. */
    assert_true(ioloop_run_after(loop, 0, stop_cb, &stops) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stops, 1);
    assert_int_equal(c.reads, 0);

    for (int round = 1; round <= 3; round++) {
        /* Ends a run whose event never comes, so that a failure does not hang the test. */
        guard_id = ioloop_run_after(loop, 5000, stop_cb, &guard);
        assert_true(guard_id > 0);
        assert_true(ioloop_run_after(loop, 0, restart_write_cb, &c) > 0);
        assert_int_equal(ioloop_start(loop), 0);
        assert_int_equal(guard, 0);
        assert_int_equal(c.rc, 0);
        assert_int_equal(c.reads, round);
        assert_int_equal(ioloop_cancel_timer(loop, guard_id), 0);
    }
    get_stats(loop, &st);
    assert_int_equal(st.io_events, 3);
    assert_int_equal(stops, 1);

    assert_int_equal(ioloop_remove_handler(loop, c.p[0]), 0);
    ioloop_free(loop);
    close_fd(c.p[0]);
    close_fd(c.p[1]);
    assert_int_equal(test_count_fds(), before);
}

struct reenter_ctx {
    int rc;
    int calls;
};

static void reenter_cb(ioloop_t *loop, void *arg)
{
    struct reenter_ctx *r = arg;
    int64_t guard;

    r->calls++;
    /* Were the call to nest a second run, this timer would end it instead of a hang. */
    guard = ioloop_run_after(loop, 100, stop_cb, NULL);
    r->rc = ioloop_start(loop);
    ioloop_cancel_timer(loop, guard);
    ioloop_stop(loop);
}

static void test_loop_start_reentrant_ebusy(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct reenter_ctx r = { .rc = 1 };
    test_loop_thread_t t;
    int stops = 0;

    (void)state;
    assert_non_null(loop);
    /* From its own callback. */
    assert_true(ioloop_run_after(loop, 0, reenter_cb, &r) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.rc, -EBUSY);

    /* Still usable afterwards. */
    assert_true(ioloop_run_after(loop, 0, stop_cb, &stops) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stops, 1);

    /* From a second thread while it runs in another. */
    start_in_thread(&t, loop);
    assert_int_equal(ioloop_start(loop), -EBUSY);
    ioloop_stop(loop);
    assert_int_equal(test_loop_thread_join(&t), 0);

    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_stop_from_other_thread(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    test_loop_thread_t t;

    (void)state;
    assert_non_null(loop);
    for (int i = 0; i < 3; i++) {
        start_in_thread(&t, loop);
        ioloop_stop(loop);
        assert_int_equal(test_loop_thread_join(&t), 0);
    }
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

static void test_loop_start_stop_null(void **state)
{
    (void)state;
    assert_int_equal(ioloop_start(NULL), -EINVAL);
    ioloop_stop(NULL);
}

/* ---- Loop thread ------------------------------------------------------------------------ */

static void noop_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    (void)arg;
}

static void noop_signal(ioloop_t *loop, int signo, void *arg)
{
    (void)loop;
    (void)signo;
    (void)arg;
}

struct wrong_ctx {
    int s[2];
    int64_t timer;
    int handler_calls;
    int timer_calls;
    int rc_eexist, rc_enoent, rc_cancel, rc_remove, rc_signal;
    uint64_t timers_pending;
};

static void wrong_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct wrong_ctx *w = arg;

    (void)loop;
    (void)fd;
    (void)events;
    w->handler_calls++;
}

/* Runs in the loop's thread after the refused calls: checks that nothing changed. */
static void wrong_verify_cb(ioloop_t *loop, void *arg)
{
    struct wrong_ctx *w = arg;
    ioloop_stats_t s;

    w->rc_eexist = ioloop_add_handler(loop, w->s[0], IOLOOP_READ, noop_handler, NULL);
    w->rc_enoent = ioloop_update_handler(loop, w->s[1], IOLOOP_READ);
    w->rc_cancel = ioloop_cancel_timer(loop, w->timer);
    w->rc_remove = ioloop_remove_handler(loop, w->s[0]);
    w->rc_signal = ioloop_remove_signal(loop, SIGUSR1);
    get_stats(loop, &s);
    w->timers_pending = s.timers_pending;
    ioloop_stop(loop);
}

static void test_loop_wrong_thread_eperm(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct wrong_ctx w = { 0 };
    test_loop_thread_t t;
    ioloop_stats_t s;
    sigset_t mask_before, mask_after;

    (void)state;
    assert_non_null(loop);
    make_socketpair(w.s);
    /* s[0]: READ with nothing to read. Were it switched to WRITE, it would be ready at once. */
    assert_int_equal(ioloop_add_handler(loop, w.s[0], IOLOOP_READ, wrong_handler, &w), 0);
    w.timer = ioloop_run_after(loop, NEVER_MS, count_cb, &w.timer_calls);
    assert_true(w.timer > 0);
    assert_int_equal(pthread_sigmask(SIG_SETMASK, NULL, &mask_before), 0);

    start_in_thread(&t, loop);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 1);
    assert_int_equal(s.timers_pending, 1);

    assert_int_equal(ioloop_add_handler(loop, w.s[1], IOLOOP_WRITE, wrong_handler, &w), -EPERM);
    assert_int_equal(ioloop_update_handler(loop, w.s[0], IOLOOP_WRITE), -EPERM);
    assert_int_equal(ioloop_remove_handler(loop, w.s[0]), -EPERM);
    assert_int_equal(ioloop_pause_handler(loop, w.s[0]), -EPERM);
    assert_int_equal(ioloop_resume_handler(loop, w.s[0]), -EPERM);
    assert_int_equal(ioloop_run_after(loop, 0, count_cb, &w.timer_calls), -EPERM);
    assert_int_equal(ioloop_run_every(loop, 1, count_cb, &w.timer_calls), -EPERM);
    assert_int_equal(ioloop_cancel_timer(loop, w.timer), -EPERM);
    assert_int_equal(ioloop_add_signal(loop, SIGUSR1, noop_signal, NULL), -EPERM);
    assert_int_equal(ioloop_remove_signal(loop, SIGUSR1), -EPERM);

    get_stats(loop, &s);
    assert_int_equal(s.handlers, 1);
    assert_int_equal(s.timers_pending, 1);
    /* The refused add_signal did not block the signal here. */
    assert_int_equal(pthread_sigmask(SIG_SETMASK, NULL, &mask_after), 0);
    assert_int_equal(sigismember(&mask_after, SIGUSR1), sigismember(&mask_before, SIGUSR1));

    /* Posting is fine from any thread. */
    assert_int_equal(ioloop_add_callback(loop, wrong_verify_cb, &w), 0);
    assert_int_equal(test_loop_thread_join(&t), 0);

    assert_int_equal(w.handler_calls, 0);
    assert_int_equal(w.timer_calls, 0);
    assert_int_equal(w.rc_eexist, -EEXIST);  /* still registered */
    assert_int_equal(w.rc_enoent, -ENOENT);  /* s[1] was never registered */
    assert_int_equal(w.rc_cancel, 0);        /* the timer was still pending */
    assert_int_equal(w.rc_remove, 0);
    assert_int_equal(w.rc_signal, -ENOENT);  /* the signal was never taken */
    assert_int_equal(w.timers_pending, 0);

    ioloop_free(loop);
    close_fd(w.s[0]);
    close_fd(w.s[1]);
    assert_int_equal(test_count_fds(), before);
}

/* A handler, a timer and a posted callback record what they see; the last of them stops. */
struct thread_ctx {
    int in_loop_cb, in_loop_timer, in_loop_handler;
    ioloop_t *current_cb, *current_timer, *current_handler;
    int done;
};

static void thread_done(ioloop_t *loop, struct thread_ctx *c)
{
    if (++c->done == 3)
        ioloop_stop(loop);
}

static void thread_cb(ioloop_t *loop, void *arg)
{
    struct thread_ctx *c = arg;

    c->in_loop_cb = ioloop_in_loop_thread(loop);
    c->current_cb = ioloop_current();
    thread_done(loop, c);
}

static void thread_timer(ioloop_t *loop, void *arg)
{
    struct thread_ctx *c = arg;

    c->in_loop_timer = ioloop_in_loop_thread(loop);
    c->current_timer = ioloop_current();
    thread_done(loop, c);
}

static void thread_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct thread_ctx *c = arg;

    (void)events;
    c->in_loop_handler = ioloop_in_loop_thread(loop);
    c->current_handler = ioloop_current();
    ioloop_remove_handler(loop, fd);
    thread_done(loop, c);
}

static void test_loop_in_loop_thread_and_current(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct thread_ctx c = { 0 }, tc = { 0 };
    test_loop_thread_t t;
    int p[2];

    (void)state;
    assert_non_null(loop);
    assert_int_equal(ioloop_in_loop_thread(NULL), 0);
    assert_int_equal(ioloop_in_loop_thread(loop), 1);
    assert_null(ioloop_current());

    /* Run in this thread. */
    make_pipe(p);
    assert_int_equal(ioloop_add_handler(loop, p[1], IOLOOP_WRITE, thread_handler, &c), 0);
    assert_int_equal(ioloop_add_callback(loop, thread_cb, &c), 0);
    assert_true(ioloop_run_after(loop, 0, thread_timer, &c) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.done, 3);
    assert_int_equal(c.in_loop_cb, 1);
    assert_int_equal(c.in_loop_timer, 1);
    assert_int_equal(c.in_loop_handler, 1);
    assert_ptr_equal(c.current_cb, loop);
    assert_ptr_equal(c.current_timer, loop);
    assert_ptr_equal(c.current_handler, loop);
    assert_null(ioloop_current());
    assert_int_equal(ioloop_in_loop_thread(loop), 1);

    /* Run in another thread: there it is the loop thread, here it is not. */
    assert_int_equal(ioloop_add_handler(loop, p[1], IOLOOP_WRITE, thread_handler, &tc), 0);
    assert_true(ioloop_run_after(loop, 0, thread_timer, &tc) > 0);
    start_in_thread(&t, loop);
    assert_int_equal(ioloop_in_loop_thread(loop), 0);
    assert_null(ioloop_current());
    assert_int_equal(ioloop_add_callback(loop, thread_cb, &tc), 0);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_int_equal(tc.done, 3);
    assert_int_equal(tc.in_loop_cb, 1);
    assert_int_equal(tc.in_loop_timer, 1);
    assert_int_equal(tc.in_loop_handler, 1);
    assert_ptr_equal(tc.current_cb, loop);
    assert_ptr_equal(tc.current_timer, loop);
    assert_ptr_equal(tc.current_handler, loop);
    /* The loop's thread is now the one that last ran it. */
    assert_int_equal(ioloop_in_loop_thread(loop), 0);
    assert_null(ioloop_current());

    ioloop_free(loop);
    close_fd(p[0]);
    close_fd(p[1]);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Cached clock ----------------------------------------------------------------------- */

struct now_ctx {
    uint64_t batch[2];
    int batch_calls;
    uint64_t chain[6];
    int chain_len;
};

static void now_batch_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    struct now_ctx *c = arg;
    char b;

    (void)events;
    if (c->batch_calls < 2)
        c->batch[c->batch_calls] = ioloop_now_ms(loop);
    c->batch_calls++;
    /* Real time moves on by several milliseconds within the batch. */
    spin_us(3000);
    if (read(fd, &b, 1) != 1)
        c->batch_calls += 100;
    ioloop_remove_handler(loop, fd);
    if (c->batch_calls == 2)
        ioloop_add_callback(loop, stop_cb, NULL);
}

static void now_chain_timer(ioloop_t *loop, void *arg)
{
    struct now_ctx *c = arg;

    c->chain[c->chain_len++] = ioloop_now_ms(loop);
    if (c->chain_len < 6)
        ioloop_run_after(loop, 1, now_chain_timer, c);
    else
        ioloop_stop(loop);
}

static void test_loop_now_ms(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct now_ctx c = { 0 };
    int p[2][2];
    uint64_t t0, t1;

    (void)state;
    assert_int_equal(ioloop_now_ms(NULL), 0);
    assert_non_null(loop);

    /* Two handlers of one batch see the same value, though time passed between them. */
    for (int i = 0; i < 2; i++) {
        make_pipe(p[i]);
        write_byte(p[i][1]);
        assert_int_equal(ioloop_add_handler(loop, p[i][0], IOLOOP_READ, now_batch_handler, &c),
                         0);
    }
    t0 = test_now_us();
    assert_int_equal(ioloop_start(loop), 0);
    t1 = test_now_us();
    assert_int_equal(c.batch_calls, 2);
    assert_true(c.batch[0] != 0);
    assert_int_equal(c.batch[0], c.batch[1]);
    /* It is CLOCK_MONOTONIC in milliseconds. */
    assert_true(c.batch[0] >= t0 / 1000);
    assert_true(c.batch[0] <= t1 / 1000 + 1);

    /* Across iterations it moves forward: each timer fires at least 1 ms after the last. */
    assert_true(ioloop_run_after(loop, 1, now_chain_timer, &c) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.chain_len, 6);
    assert_true(c.chain[0] >= c.batch[0]);
    for (int i = 1; i < 6; i++)
        assert_true(c.chain[i] > c.chain[i - 1]);

    ioloop_free(loop);
    for (int i = 0; i < 2; i++) {
        close_fd(p[i][0]);
        close_fd(p[i][1]);
    }
    assert_int_equal(test_count_fds(), before);
}

/* ---- Stats ------------------------------------------------------------------------------ */

static void test_loop_stats_fresh_and_null(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    ioloop_stats_t s, pattern;

    (void)state;
    assert_non_null(loop);
    memset(&s, 0xab, sizeof s);
    ioloop_get_stats(loop, &s);
    /* A fresh loop has internal fds, but no application handler, and has done nothing. */
    assert_int_equal(s.iterations, 0);
    assert_int_equal(s.io_events, 0);
    assert_int_equal(s.callbacks_run, 0);
    assert_int_equal(s.timers_fired, 0);
    assert_int_equal(s.handlers, 0);
    assert_int_equal(s.timers_pending, 0);
    assert_int_equal(s.callbacks_pending, 0);
    assert_int_equal(s.wakeups, 0);
    assert_int_equal(s.max_lag_us, 0);

    memset(&s, 0xab, sizeof s);
    memset(&pattern, 0xab, sizeof pattern);
    ioloop_get_stats(NULL, &s);
    assert_memory_equal(&s, &pattern, sizeof s);
    ioloop_get_stats(loop, NULL);
    ioloop_get_stats(NULL, NULL);

    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

struct iter_ctx {
    uint64_t seen[4];
    int n;
};

static void iter_timer(ioloop_t *loop, void *arg)
{
    struct iter_ctx *c = arg;
    ioloop_stats_t s;

    get_stats(loop, &s);
    c->seen[c->n++] = s.iterations;
    if (c->n < 4)
        ioloop_run_after(loop, 0, iter_timer, c);
    else
        ioloop_stop(loop);
}

static void test_loop_stats_iterations(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct iter_ctx c = { 0 };
    ioloop_stats_t s;
    uint64_t first;

    (void)state;
    assert_non_null(loop);
    /* A timer scheduled from a timer runs in a later iteration: each sees a larger count. */
    assert_true(ioloop_run_after(loop, 0, iter_timer, &c) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.n, 4);
    assert_true(c.seen[0] >= 1);
    for (int i = 1; i < 4; i++)
        assert_true(c.seen[i] > c.seen[i - 1]);
    get_stats(loop, &s);
    assert_true(s.iterations >= c.seen[3]);
    first = s.iterations;

    c.n = 0;
    assert_true(ioloop_run_after(loop, 0, iter_timer, &c) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    get_stats(loop, &s);
    assert_true(s.iterations >= first + 4);

    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

static void read_remove_handler(ioloop_t *loop, int fd, int events, void *arg)
{
    char b;

    (void)events;
    ++*(int *)arg;
    if (read(fd, &b, 1) != 1)
        ++*(int *)arg;
    ioloop_remove_handler(loop, fd);
}

static void test_loop_stats_handlers_and_io_events(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    ioloop_stats_t s;
    int p[3][2], calls = 0, callbacks = 0, stops = 0;

    (void)state;
    assert_non_null(loop);
    for (int i = 0; i < 3; i++)
        make_pipe(p[i]);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ioloop_add_handler(loop, p[i][0], IOLOOP_READ, read_remove_handler,
                                            &calls), 0);
        get_stats(loop, &s);
        assert_int_equal(s.handlers, (uint64_t)i + 1);
    }
    assert_int_equal(ioloop_add_handler(loop, p[0][0], IOLOOP_READ, read_remove_handler, &calls),
                     -EEXIST);
    assert_int_equal(ioloop_remove_handler(loop, p[2][0]), 0);
    get_stats(loop, &s);
    assert_int_equal(s.handlers, 2);
    assert_int_equal(s.io_events, 0);

    /* Two application events; the loop's own eventfd and timerfd events do not count. */
    write_byte(p[0][1]);
    write_byte(p[1][1]);
    write_byte(p[2][1]);
    assert_int_equal(ioloop_add_callback(loop, count_cb, &callbacks), 0);
    assert_true(ioloop_run_after(loop, 10, stop_cb, &stops) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(calls, 2);
    assert_int_equal(callbacks, 1);
    assert_int_equal(stops, 1);
    get_stats(loop, &s);
    assert_int_equal(s.io_events, 2);
    assert_int_equal(s.handlers, 0);

    ioloop_free(loop);
    for (int i = 0; i < 3; i++) {
        close_fd(p[i][0]);
        close_fd(p[i][1]);
    }
    assert_int_equal(test_count_fds(), before);
}

struct tick_ctx {
    int64_t id;
    int ticks;
    int rc_cancel;
};

static void tick_timer(ioloop_t *loop, void *arg)
{
    struct tick_ctx *t = arg;

    if (++t->ticks == 3) {
        t->rc_cancel = ioloop_cancel_timer(loop, t->id);
        ioloop_stop(loop);
    }
}

static void test_loop_stats_timers(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct tick_ctx t = { .rc_cancel = 1 };
    ioloop_stats_t s;
    int64_t later, every;
    int fired = 0, stops = 0;

    (void)state;
    assert_non_null(loop);
    assert_true(ioloop_run_after(loop, 0, count_cb, &fired) > 0);
    assert_true(ioloop_run_after(loop, 0, count_cb, &fired) > 0);
    later = ioloop_run_after(loop, NEVER_MS, count_cb, &fired);
    every = ioloop_run_every(loop, NEVER_MS, count_cb, &fired);
    assert_true(later > 0);
    assert_true(every > 0);
    get_stats(loop, &s);
    assert_int_equal(s.timers_pending, 4);
    assert_int_equal(s.timers_fired, 0);
    assert_int_equal(ioloop_cancel_timer(loop, later), 0);
    get_stats(loop, &s);
    assert_int_equal(s.timers_pending, 3);

    assert_true(ioloop_run_after(loop, 5, stop_cb, &stops) > 0);
    get_stats(loop, &s);
    assert_int_equal(s.timers_pending, 4);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(fired, 2);
    assert_int_equal(stops, 1);
    get_stats(loop, &s);
    assert_int_equal(s.timers_fired, 3);
    assert_int_equal(s.timers_pending, 1);
    assert_int_equal(ioloop_cancel_timer(loop, every), 0);
    get_stats(loop, &s);
    assert_int_equal(s.timers_pending, 0);
    assert_int_equal(s.timers_fired, 3);

    /* Each tick of a repeating timer counts. */
    t.id = ioloop_run_every(loop, 1, tick_timer, &t);
    assert_true(t.id > 0);
    get_stats(loop, &s);
    assert_int_equal(s.timers_pending, 1);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(t.ticks, 3);
    assert_int_equal(t.rc_cancel, 0);
    get_stats(loop, &s);
    assert_int_equal(s.timers_fired, 6);
    assert_int_equal(s.timers_pending, 0);

    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

#define BURST 100

struct burst_ctx {
    ioloop_t *loop;
    int *counter;
    atomic_int failures;
};

static void *burst_thread(void *arg)
{
    struct burst_ctx *b = arg;

    for (int i = 0; i < BURST; i++)
        if (ioloop_add_callback(b->loop, count_cb, b->counter) != 0)
            atomic_fetch_add(&b->failures, 1);
    return NULL;
}

static void test_loop_stats_callbacks_and_wakeups(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    struct burst_ctx b;
    ioloop_stats_t s;
    pthread_t thread;
    int counter = 0, stops = 0;

    (void)state;
    assert_non_null(loop);
    b.loop = loop;
    b.counter = &counter;
    atomic_init(&b.failures, 0);
    /* A burst from another thread before the loop runs: one eventfd write, not BURST. */
    assert_int_equal(pthread_create(&thread, NULL, burst_thread, &b), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(atomic_load(&b.failures), 0);
    get_stats(loop, &s);
    assert_int_equal(s.callbacks_pending, BURST);
    assert_int_equal(s.callbacks_run, 0);
    assert_int_equal(s.wakeups, 1);

    assert_int_equal(ioloop_add_callback(loop, stop_cb, &stops), 0);
    get_stats(loop, &s);
    assert_int_equal(s.callbacks_pending, BURST + 1);
    assert_int_equal(s.wakeups, 1);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(counter, BURST);
    assert_int_equal(stops, 1);
    get_stats(loop, &s);
    assert_int_equal(s.callbacks_run, BURST + 1);
    assert_int_equal(s.callbacks_pending, 0);

    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

static void busy_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
    spin_us(20000);
}

static void test_loop_stats_max_lag(void **state)
{
    int before = test_count_fds();
    ioloop_t *loop = ioloop_new();
    ioloop_stats_t s;
    int stops = 0;

    (void)state;
    assert_non_null(loop);
    assert_int_equal(ioloop_add_callback(loop, busy_cb, NULL), 0);
    assert_true(ioloop_run_after(loop, 1, stop_cb, &stops) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(stops, 1);
    get_stats(loop, &s);
    assert_true(s.max_lag_us >= 20000);
    /* It is a running maximum: an idle run after it keeps it. */
    assert_true(ioloop_run_after(loop, 1, stop_cb, &stops) > 0);
    assert_int_equal(ioloop_start(loop), 0);
    get_stats(loop, &s);
    assert_true(s.max_lag_us >= 20000);
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), before);
}

/* ---- Loop data ------------------------------------------------------------------------- */

struct data_ctx {
    int efd;
    void *seen;                 /* what the loop's thread read */
    int a, b;                   /* the markers attached */
};

/* In the loop's thread: reads what the owner attached before the start, attaches another. */
static void data_swap_cb(ioloop_t *loop, void *arg)
{
    struct data_ctx *c = arg;
    uint64_t one = 1;

    c->seen = ioloop_data(loop);
    ioloop_set_data(loop, &c->b);
    if (write(c->efd, &one, sizeof one) != (ssize_t)sizeof one)
        abort();
}

static void test_loop_data(void **state)
{
    int before = test_count_fds();
    static struct data_ctx c;
    test_loop_thread_t t;
    ioloop_t *loop = ioloop_new();
    uint64_t v;

    (void)state;
    assert_non_null(loop);
    assert_null(ioloop_data(NULL));
    ioloop_set_data(NULL, &c.a); /* ignored */
    /* NULL until set; the owner may set it before the loop runs. */
    assert_null(ioloop_data(loop));
    ioloop_set_data(loop, &c.a);
    assert_ptr_equal(ioloop_data(loop), &c.a);

    c.efd = eventfd(0, EFD_CLOEXEC);
    assert_true(c.efd >= 0);
    start_in_thread(&t, loop);
    assert_int_equal(ioloop_add_callback(loop, data_swap_cb, &c), 0);
    assert_int_equal(read(c.efd, &v, sizeof v), sizeof v);
    assert_ptr_equal(c.seen, &c.a);
    /* Readable from another thread while the loop runs. */
    assert_ptr_equal(ioloop_data(loop), &c.b);

    ioloop_stop(loop);
    assert_int_equal(test_loop_thread_join(&t), 0);
    assert_ptr_equal(ioloop_data(loop), &c.b);
    ioloop_set_data(loop, NULL);
    assert_null(ioloop_data(loop));
    /* The library never touches it: freeing the loop frees nothing of the application's. */
    ioloop_set_data(loop, &c.a);
    ioloop_free(loop);
    close_fd(c.efd);
    assert_int_equal(test_count_fds(), before);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_new_free_restores_fds),
        cmocka_unit_test(test_loop_new_fds_are_cloexec),
        cmocka_unit_test(test_loop_free_drops_registrations_keeps_app_fds),
        cmocka_unit_test(test_loop_add_handler_errors),
        cmocka_unit_test(test_loop_update_remove_errors),
        cmocka_unit_test(test_loop_remove_negative_fd_enoent),
        cmocka_unit_test(test_loop_read_delivered),
        cmocka_unit_test(test_loop_write_delivered),
        cmocka_unit_test(test_loop_update_switches_interest),
        cmocka_unit_test(test_loop_pipe_writer_close_delivered),
        cmocka_unit_test(test_loop_pipe_reader_close_delivered),
        cmocka_unit_test(test_loop_socket_shutdown_is_read),
        cmocka_unit_test(test_loop_many_socketpairs),
        cmocka_unit_test(test_loop_high_fd_number),
        cmocka_unit_test(test_loop_removed_handler_skips_batch_event),
        cmocka_unit_test(test_loop_readded_fd_skips_batch_event),
        cmocka_unit_test(test_loop_reused_fd_skips_batch_event),
        cmocka_unit_test(test_loop_remove_add_same_iteration),
        cmocka_unit_test(test_loop_pause_resume_same_iteration),
        cmocka_unit_test(test_loop_paused_handler_skips_batch_event),
        cmocka_unit_test(test_loop_paused_across_wait),
        cmocka_unit_test(test_loop_pause_errors_and_remove),
        cmocka_unit_test(test_loop_orphaned_registration_rebuilds),
        cmocka_unit_test(test_loop_add_adopts_orphaned_registration),
        cmocka_unit_test(test_loop_update_skips_excluded_batch_event),
        cmocka_unit_test(test_loop_handler_changes_handlers),
        cmocka_unit_test(test_loop_table_grows_within_batch),
        cmocka_unit_test(test_loop_stop_from_callback),
        cmocka_unit_test(test_loop_stop_before_start),
        cmocka_unit_test(test_loop_stop_idempotent),
        cmocka_unit_test(test_loop_restart),
        cmocka_unit_test(test_loop_start_reentrant_ebusy),
        cmocka_unit_test(test_loop_stop_from_other_thread),
        cmocka_unit_test(test_loop_start_stop_null),
        cmocka_unit_test(test_loop_wrong_thread_eperm),
        cmocka_unit_test(test_loop_in_loop_thread_and_current),
        cmocka_unit_test(test_loop_now_ms),
        cmocka_unit_test(test_loop_stats_fresh_and_null),
        cmocka_unit_test(test_loop_stats_iterations),
        cmocka_unit_test(test_loop_stats_handlers_and_io_events),
        cmocka_unit_test(test_loop_stats_timers),
        cmocka_unit_test(test_loop_stats_callbacks_and_wakeups),
        cmocka_unit_test(test_loop_stats_max_lag),
        cmocka_unit_test(test_loop_data),
    };
    struct rlimit rl;

    /* Run again by test_loop_table_grows_within_batch, for a fresh heap. */
    if (argc == 3 && strcmp(argv[1], TABLE_GROWS_CHILD) == 0)
        return batch_grow_child_main(argv[2]);
    /* The many-fds and high-fd tests need the soft fd limit raised to the hard one. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
