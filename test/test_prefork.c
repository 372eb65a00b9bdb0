/*
 * Tests of ioloop_prefork(): workers started with their indices, restarts of crashed workers
 * with backoff and a cap, no restart after exit 0, SIGTERM forwarded and SIGKILL after the
 * drain timeout, rolling restarts on SIGHUP under a continuous client, what a worker
 * inherits, the logger across the fork, and the errors.
 *
 * Each scenario runs in a fresh child of this process, the "supervisor process": it calls
 * ioloop_prefork() and becomes the supervisor, and its workers behave as the scenario says
 * for their index. This process watches from outside: workers report through a pipe (one
 * fixed-size record per write, atomic below PIPE_BUF), the supervisor's end through its exit
 * status (0: ioloop_prefork() returned 1 with *worker == -1 and put everything back), waited
 * for on a pidfd with a bound. End of file on the report pipe means that the supervisor and
 * every worker have exited. The supervisor process has a process group of its own, so a
 * failing test kills everything it started.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* Workers start threads (the logger's) in children of a process that ran threads: allow it
 * under ThreadSanitizer, as test_log does. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_UNDER_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TEST_UNDER_TSAN 1
#endif
#ifdef TEST_UNDER_TSAN
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    /* Nor wait a second at every exit for threads to finish (atexit_sleep_ms). */
    return "die_after_fork=0:atexit_sleep_ms=0";
}
#endif

#define MAX_WORKERS 4
#define MAX_RECORDS 64
/* The longest any wait of these tests takes before it fails. */
#define WAIT_MS 8000

/* ---- What workers do, and what they report ---------------------------------------------- */

enum behaviour {
    SERVE,        /* handle SIGTERM with a loop (and answer on the port if there is one) */
    EXIT0,        /* exit 0 at once */
    EXIT0_LATER,  /* exit 0 after 250 ms */
    EXIT0_ON_GO,  /* exit 0 when the go pipe reaches end of file */
    CRASH,        /* exit 1 at once */
    IGNORE_TERM,  /* ignore SIGTERM and run until killed */
    FIRST_SERVES, /* the index's first worker: SERVE; any later one: CRASH */
    SERVE_POOL,   /* a pool and a reuseport ioloop server on the port; drain on SIGTERM */
};

enum record_kind { STARTED = 1, STOPPING };

/* What a worker found wrong in what it inherited (record.flags). */
enum {
    BAD_FDS = 0x1,     /* fds other than those the supervisor process had before the call */
    BAD_MASK = 0x2,    /* a signal mask other than the caller's */
    BAD_ACTION = 0x4,  /* SIGCHLD or SIGHUP dispositions other than the caller's */
    BAD_PARENT = 0x8,  /* not a child of the supervisor process */
    BAD_SIGNAL = 0x10, /* ioloop_add_signal(SIGTERM) failed */
    BAD_LISTEN = 0x20, /* could not listen on the port */
};

struct record {
    int kind;
    int index;
    pid_t pid;
    int flags;
    uint64_t at_us; /* CLOCK_MONOTONIC, the same clock in every process */
};

/* A scenario: what the supervisor process is given. Set up before the fork, so the
 * supervisor process and its workers see it too. */
struct scenario {
    int nworkers;
    ioloop_prefork_options_t options;
    enum behaviour behave[MAX_WORKERS];
    int port;            /* SERVE workers listen here with SO_REUSEPORT; 0: no port */
    char log_path[128];  /* the supervisor process opens the logger here; "": no logger */
    bool odd_signals;    /* SIGHUP and SIGCHLD ignored, SIGUSR1 blocked before the call */
    int report;          /* write end of the report pipe */
    int go;              /* read end of the go pipe (EXIT0_ON_GO); -1: none */
    int go_write;        /* its write end, which the supervisor process closes */
};

/* The supervisor process's state before ioloop_prefork(), for the checks after it. */
struct caller_state {
    int fds;
    sigset_t mask;
    struct sigaction chld, hup;
    pid_t pid;
};

static struct scenario sc;
static struct caller_state before;
static char scratch_dir[64];

static void capture(struct caller_state *st)
{
    st->fds = test_count_fds();
    pthread_sigmask(SIG_SETMASK, NULL, &st->mask);
    sigaction(SIGCHLD, NULL, &st->chld);
    sigaction(SIGHUP, NULL, &st->hup);
    st->pid = getpid();
}

/* The kernel also reports flags the C library adds (SA_RESTORER): compare the caller's. */
#define CALLER_FLAGS (SA_NOCLDSTOP | SA_NOCLDWAIT | SA_SIGINFO | SA_RESTART | SA_NODEFER | \
                      SA_RESETHAND | SA_ONSTACK)

static bool same_action(const struct sigaction *a, const struct sigaction *b)
{
    return a->sa_handler == b->sa_handler &&
           (a->sa_flags & CALLER_FLAGS) == (b->sa_flags & CALLER_FLAGS);
}

static bool same_mask(const sigset_t *a, const sigset_t *b)
{
    for (int signo = 1; signo < 32; signo++)
        if (sigismember(a, signo) != sigismember(b, signo))
            return false;
    return true;
}

/* What differs between now and `before` (BAD_* bits). */
static int compare_state(void)
{
    struct caller_state now;
    int flags = 0;

    capture(&now);
    if (now.fds != before.fds)
        flags |= BAD_FDS;
    if (!same_mask(&now.mask, &before.mask))
        flags |= BAD_MASK;
    if (!same_action(&now.chld, &before.chld) || !same_action(&now.hup, &before.hup))
        flags |= BAD_ACTION;
    return flags;
}

static void report(int kind, int index, int flags)
{
    struct record r = {kind, index, getpid(), flags, test_now_us()};

    if (write(sc.report, &r, sizeof r) != (ssize_t)sizeof r)
        _exit(100);
}

/* ---- Workers ---------------------------------------------------------------------------- */

struct serving {
    int index;
    int listener; /* -1: none */
};

static void answer(int fd, int index)
{
    char reply[64];
    int len = snprintf(reply, sizeof reply, "%d %d\n", index, (int)getpid());

    (void)send(fd, reply, (size_t)len, MSG_NOSIGNAL);
    close(fd);
}

/* Answers every connection queued on the listener. */
static void accept_all(struct serving *w)
{
    int fd;

    while ((fd = accept4(w->listener, NULL, NULL, SOCK_CLOEXEC)) >= 0)
        answer(fd, w->index);
}

static void on_accept(ioloop_t *loop, int fd, int events, void *arg)
{
    accept_all(arg);
}

/* SIGTERM: answer what is queued on the listener, close it, and stop. */
static void on_term(ioloop_t *loop, int signo, void *arg)
{
    struct serving *w = arg;

    if (w->listener >= 0) {
        ioloop_remove_handler(loop, w->listener);
        accept_all(w);
        close(w->listener);
        w->listener = -1;
    }
    ioloop_stop(loop);
}

static int listen_reuseport(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 128) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void worker_serve(int index, int flags)
{
    struct serving w = {index, -1};
    ioloop_t *loop = ioloop_new();

    if (loop == NULL)
        _exit(101);
    if (ioloop_add_signal(loop, SIGTERM, on_term, &w) != 0)
        flags |= BAD_SIGNAL;
    if (sc.port != 0) {
        w.listener = listen_reuseport(sc.port);
        if (w.listener < 0 || ioloop_add_handler(loop, w.listener, IOLOOP_READ, on_accept, &w))
            flags |= BAD_LISTEN;
    }
    if (sc.log_path[0] != '\0')
        IOLOOP_LOG_INFO("test worker %d pid %d serving", index, (int)getpid());
    report(STARTED, index, flags);
    ioloop_start(loop);
    report(STOPPING, index, 0);
    ioloop_free(loop);
    exit(0);
}

/* The library's way: answers each connection from its pool loop, then closes it. */
static void on_open_answer(ioloop_conn_t *conn)
{
    char reply[64];
    int len = snprintf(reply, sizeof reply, "%d %d\n", *(int *)ioloop_conn_user(conn),
                       (int)getpid());

    ioloop_conn_write(conn, reply, (size_t)len);
    ioloop_conn_close(conn);
}

static size_t on_data_ignore(ioloop_conn_t *conn, const char *data, size_t len)
{
    return len;
}

static void on_stop_signal(ioloop_t *loop, int signo, void *arg)
{
    ioloop_stop(loop);
}

/* A pool of two loops, each with its own SO_REUSEPORT listener on the port (the server's
 * reuseport mode); SIGTERM in the main thread's loop drains the server and exits 0. */
static void worker_serve_pool(int index, int flags)
{
    static const ioloop_conn_handlers_t handlers = {.on_open = on_open_answer,
                                                    .on_data = on_data_ignore};
    ioloop_t *loop = ioloop_new();
    ioloop_server_t *server;
    ioloop_pool_t *pool;
    char address[32];

    if (loop == NULL || ioloop_add_signal(loop, SIGTERM, on_stop_signal, NULL) != 0)
        flags |= BAD_SIGNAL;
    pool = ioloop_pool_new(2);
    snprintf(address, sizeof address, "127.0.0.1:%d", sc.port);
    server = ioloop_server_new_opts(pool, address, &handlers, &index,
                                    &(ioloop_server_options_t){.reuseport = 1});
    if (pool == NULL || server == NULL || ioloop_server_start(server) != 0)
        flags |= BAD_LISTEN;
    report(STARTED, index, flags);
    ioloop_start(loop);
    if (ioloop_server_drain(server, 2000) != 0)
        _exit(102);
    report(STOPPING, index, 0);
    ioloop_server_free(server);
    ioloop_pool_free(pool);
    ioloop_free(loop);
    exit(0);
}

static void on_later(ioloop_t *loop, void *arg)
{
    ioloop_stop(loop);
}

static void worker_main(int index)
{
    int flags = compare_state();
    char byte;

    if (getppid() != before.pid)
        flags |= BAD_PARENT;
    switch (sc.behave[index]) {
    case SERVE:
        worker_serve(index, flags);
        break;
    case SERVE_POOL:
        worker_serve_pool(index, flags);
        break;
    case EXIT0:
        report(STARTED, index, flags);
        exit(0);
    case EXIT0_LATER: {
        ioloop_t *loop = ioloop_new();

        report(STARTED, index, flags);
        ioloop_run_after(loop, 250, on_later, NULL);
        ioloop_start(loop);
        ioloop_free(loop);
        exit(0);
    }
    case EXIT0_ON_GO:
        report(STARTED, index, flags);
        while (read(sc.go, &byte, 1) < 0 && errno == EINTR)
            ;
        exit(0);
    case FIRST_SERVES: {
        char path[160];
        int fd;

        snprintf(path, sizeof path, "%s/first-%d", scratch_dir, index);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            worker_serve(index, flags);
        }
    }
        /* fall through */
    case CRASH:
        report(STARTED, index, flags);
        _exit(1); /* as a crash would: no exit handlers */
    case IGNORE_TERM: {
        ioloop_t *loop = ioloop_new();

        signal(SIGTERM, SIG_IGN);
        report(STARTED, index, flags);
        ioloop_start(loop); /* nothing to wait for: until SIGKILL */
        exit(2);
    }
    }
    exit(3);
}

/* ---- The supervisor process ------------------------------------------------------------- */

/* Exit status bits of the supervisor process (0: all well). */
enum {
    SUP_RC = 0x1,      /* ioloop_prefork() did not return 1 */
    SUP_WORKER = 0x2,  /* *worker was not -1 */
    SUP_STATE = 0x4,   /* fds, mask or dispositions not as before the call */
    SUP_SETUP = 0x8,   /* the scenario could not be set up */
};

static void supervisor_main(void)
{
    sigset_t usr1;
    int w = 99, rc, status = 0;

    setpgid(0, 0);
    if (sc.go_write >= 0)
        close(sc.go_write);
    if (sc.odd_signals) {
        struct sigaction ign = {.sa_handler = SIG_IGN, .sa_flags = SA_NOCLDWAIT | SA_RESTART};

        signal(SIGHUP, SIG_IGN);
        sigaction(SIGCHLD, &ign, NULL);
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    }
    if (sc.log_path[0] != '\0') {
        ioloop_log_options_t o = {.path = sc.log_path, .flush_ms = 20};

        if (ioloop_log_open(&o) != 0)
            exit(SUP_SETUP);
    }
    capture(&before);
    rc = ioloop_prefork(sc.nworkers, &sc.options, &w);
    if (rc == 0 && w >= 0 && w < sc.nworkers)
        worker_main(w);
    if (rc != 1)
        status |= SUP_RC;
    if (w != -1)
        status |= SUP_WORKER;
    if (compare_state() != 0)
        status |= SUP_STATE;
    ioloop_log_close();
    exit(status);
}

/* ---- Watching from outside -------------------------------------------------------------- */

typedef struct run {
    pid_t pid;          /* the supervisor process */
    int pidfd;
    int report;         /* read end of the report pipe */
    int go;             /* write end of the go pipe; -1: none */
    struct record rec[MAX_RECORDS];
    int nrec;
    bool eof;
    int status;         /* the supervisor process's wait status, once reaped */
    uint64_t start_us;
} run_t;

static run_t current;
static int fds_at_start;
static int hold_fd = -1; /* see reserve_port() */

/* A fresh scenario: n SERVE workers, no port, no logger, the given options. */
static void scenario_init(int n)
{
    memset(&sc, 0, sizeof sc);
    sc.nworkers = n;
    sc.go = sc.go_write = -1;
}

static void use_log(void)
{
    snprintf(sc.log_path, sizeof sc.log_path, "%s/prefork.log", scratch_dir);
}

/* Starts the supervisor process on `sc`. */
static void run_start(run_t *r, bool with_go)
{
    int rep[2], go[2] = {-1, -1};

    memset(r, 0, sizeof *r);
    r->pid = -1;
    r->pidfd = r->go = -1;
    assert_int_equal(pipe2(rep, O_CLOEXEC), 0);
    if (with_go)
        assert_int_equal(pipe2(go, O_CLOEXEC), 0);
    sc.report = rep[1];
    sc.go = go[0];
    sc.go_write = go[1];
    r->start_us = test_now_us();
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        close(rep[0]);
        supervisor_main();
    }
    setpgid(r->pid, r->pid); /* also here, so that the group exists before any kill */
    close(rep[1]);
    if (with_go)
        close(go[0]);
    r->report = rep[0];
    r->go = go[1];
    r->pidfd = pidfd_open(r->pid, 0);
    assert_true(r->pidfd >= 0);
}

/* Reads the next record into r->rec. 1: got one; 0: end of file; -1: nothing within ms. */
static int run_read(run_t *r, int ms)
{
    struct record rec;
    ssize_t n;

    if (r->eof)
        return 0;
    if (test_wait_fd(r->report, POLLIN, ms) == 0)
        return -1;
    n = read(r->report, &rec, sizeof rec);
    if (n == 0) {
        r->eof = true;
        return 0;
    }
    assert_int_equal(n, sizeof rec);
    assert_true(r->nrec < MAX_RECORDS);
    r->rec[r->nrec++] = rec;
    return 1;
}

static int count(const run_t *r, int kind, int index)
{
    int n = 0;

    for (int i = 0; i < r->nrec; i++)
        if (r->rec[i].kind == kind && (index < 0 || r->rec[i].index == index))
            n++;
    return n;
}

/* Reads records until `want` of `kind` (for `index`, or any if < 0) have come. */
static void wait_for(run_t *r, int kind, int index, int want)
{
    uint64_t deadline = test_now_us() + WAIT_MS * 1000u;

    while (count(r, kind, index) < want) {
        uint64_t now = test_now_us();
        int got = now < deadline ? run_read(r, (int)((deadline - now) / 1000u) + 1) : -1;

        if (got <= 0)
            fail_msg("waiting for %d records of kind %d (index %d): %s after %d", want, kind,
                     index, got == 0 ? "end of file" : "timed out", count(r, kind, index));
    }
}

/* The n-th (0-based) record of kind for index. */
static const struct record *nth(const run_t *r, int kind, int index, int n)
{
    for (int i = 0; i < r->nrec; i++)
        if (r->rec[i].kind == kind && r->rec[i].index == index && n-- == 0)
            return &r->rec[i];
    fail_msg("no record %d of kind %d for index %d", n, kind, index);
    return NULL;
}

/* Waits for the supervisor process to exit and for every worker to be gone (end of file on
 * the report pipe); reads the records left. Returns the supervisor process's exit status. */
static int run_end(run_t *r)
{
    uint64_t deadline = test_now_us() + WAIT_MS * 1000u;
    int got;

    if (test_wait_fd(r->pidfd, POLLIN, WAIT_MS) == 0)
        fail_msg("the supervisor process did not exit");
    assert_int_equal(waitpid(r->pid, &r->status, 0), r->pid);
    r->pid = -1;
    do {
        uint64_t now = test_now_us();

        got = now < deadline ? run_read(r, (int)((deadline - now) / 1000u) + 1) : -1;
    } while (got > 0);
    if (got < 0)
        fail_msg("a worker outlived its supervisor");
    for (int i = 0; i < r->nrec; i++)
        assert_int_equal(r->rec[i].flags, 0); /* every worker inherited what it should */
    for (int i = 0; i < r->nrec; i++)
        assert_true(kill(r->rec[i].pid, 0) != 0 && errno == ESRCH);
    assert_true(WIFEXITED(r->status));
    return WEXITSTATUS(r->status);
}

/* Closes what a run holds; after a failure, kills whatever it started. */
static void run_release(run_t *r)
{
    if (r->pid > 0) {
        kill(-r->pid, SIGKILL);
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        for (int i = 0; i < r->nrec; i++)
            kill(r->rec[i].pid, SIGKILL);
        r->pid = -1;
    }
    if (r->pidfd >= 0)
        close(r->pidfd);
    if (r->report > 0)
        close(r->report);
    if (r->go >= 0)
        close(r->go);
    r->pidfd = r->report = r->go = -1;
}

static char *slurp_log(void)
{
    static char text[256 * 1024];
    int fd = open(sc.log_path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    assert_true(fd >= 0);
    n = read(fd, text, sizeof text - 1);
    close(fd);
    assert_true(n >= 0);
    text[n] = '\0';
    return text;
}

/* Waits (bounded) until the supervisor's log holds `needle`; the log is written within its
 * flush interval (20 ms), so this looks every 20 ms. */
static void wait_log(const char *needle)
{
    uint64_t deadline = test_now_us() + WAIT_MS * 1000u;

    while (strstr(slurp_log(), needle) == NULL) {
        if (test_now_us() > deadline)
            fail_msg("the log never said \"%s\"", needle);
        poll(NULL, 0, 20);
    }
}

static int count_substr(const char *text, const char *needle)
{
    int n = 0;

    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static int setup(void **state)
{
    (void)state;
    fds_at_start = test_count_fds();
    memset(&current, 0, sizeof current);
    current.pid = current.pidfd = current.report = current.go = -1;
    return 0;
}

static void client_join(void);

static int teardown(void **state)
{
    (void)state;
    client_join();
    run_release(&current);
    if (hold_fd >= 0)
        close(hold_fd);
    hold_fd = -1;
    if (sc.log_path[0] != '\0')
        unlink(sc.log_path);
    for (int i = 0; i < MAX_WORKERS; i++) {
        char path[160];

        snprintf(path, sizeof path, "%s/first-%d", scratch_dir, i);
        unlink(path);
    }
    /* Every test closes what it opened and leaves no process behind. */
    if (test_count_fds() != fds_at_start) {
        fprintf(stderr, "fds: %d at the start, %d now\n", fds_at_start, test_count_fds());
        return -1;
    }
    return waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD ? 0 : -1;
}

/* A port of 127.0.0.1 held for the test: bound with SO_REUSEPORT, never listening, so the
 * workers can join it and nobody else takes it. */
static int reserve_port(void)
{
    int *fd = &hold_fd;
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof addr;
    int one = 1;

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(*fd >= 0);
    assert_int_equal(setsockopt(*fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one), 0);
    assert_int_equal(bind(*fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(getsockname(*fd, (struct sockaddr *)&addr, &len), 0);
    return ntohs(addr.sin_port);
}

/* One request: connects, reads "index pid\n" until EOF. 0 and the answer, or a negative
 * errno (of connect: refused; of the read: reset, or -EPIPE for an empty answer). */
static int ask(int port, int *index, int *pid)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    char buf[64];
    size_t got = 0;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), err = 0;

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        err = -errno;
        close(fd);
        return err;
    }
    while (got < sizeof buf - 1) {
        if (test_wait_fd(fd, POLLIN, 3000) == 0) {
            err = -ETIMEDOUT;
            break;
        }
        n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n < 0) {
            err = -errno;
            break;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    if (err == 0 && sscanf(buf, "%d %d", index, pid) != 2)
        err = -EPIPE;
    return err;
}

/* ---- Tests ------------------------------------------------------------------------------ */

/* n = 2 workers serve the shared port: both indices answer, from distinct pids; SIGTERM to
 * the supervisor reaches both, and it returns 1 with *worker == -1 once they exited. */
static void test_prefork_workers_serve_and_stop(void **state)
{
    int port, seen[2] = {0}, pids[2] = {0}, index, pid;

    (void)state;
    port = reserve_port();
    scenario_init(2);
    sc.port = port;
    use_log();
    run_start(&current, false);
    wait_for(&current, STARTED, -1, 2);
    assert_int_not_equal(nth(&current, STARTED, 0, 0)->pid, nth(&current, STARTED, 1, 0)->pid);
    for (int i = 0; i < 400 && !(seen[0] && seen[1]); i++) {
        assert_int_equal(ask(port, &index, &pid), 0);
        assert_true(index == 0 || index == 1);
        assert_int_equal(pid, nth(&current, STARTED, index, 0)->pid);
        seen[index]++;
        pids[index] = pid;
    }
    assert_true(seen[0] > 0 && seen[1] > 0);
    assert_int_not_equal(pids[0], pids[1]);

    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, -1), 2);
    assert_int_equal(count(&current, STOPPING, 0), 1);
    assert_int_equal(count(&current, STOPPING, 1), 1);
    {
        char *log = slurp_log();

        assert_int_equal(count_substr(log, "prefork: worker 0 started, pid"), 1);
        assert_int_equal(count_substr(log, "prefork: worker 1 started, pid"), 1);
        assert_int_equal(count_substr(log, "prefork: SIGTERM: sent to 2 workers"), 1);
        assert_int_equal(count_substr(log, "exited with status 0; shutting down"), 2);
        assert_int_equal(count_substr(log, "test worker 0 pid"), 1); /* a worker's own line */
        assert_int_equal(count_substr(log, "test worker 1 pid"), 1);
        assert_non_null(strstr(log, "prefork: every worker exited"));
    }
}

/* kill -9 of a worker: a new one with the same index (and a new pid) after the backoff. */
static void test_prefork_killed_worker_restarted(void **state)
{
    const struct record *old, *fresh;
    uint64_t killed_at;

    (void)state;
    scenario_init(2);
    run_start(&current, false);
    wait_for(&current, STARTED, -1, 2);
    old = nth(&current, STARTED, 0, 0);
    killed_at = test_now_us();
    assert_int_equal(kill(old->pid, SIGKILL), 0);
    wait_for(&current, STARTED, 0, 2);
    fresh = nth(&current, STARTED, 0, 1);
    assert_int_not_equal(fresh->pid, old->pid);
    assert_true(fresh->at_us - killed_at >= 100 * 1000); /* the first backoff */
    assert_int_equal(count(&current, STARTED, 1), 1);

    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, -1), 3);
    assert_int_equal(count(&current, STOPPING, -1), 2);
}

/* Workers that exit with 0 are not restarted; the supervisor returns once the last one
 * exited (250 ms after it started), without any signal. */
static void test_prefork_exit0_not_restarted(void **state)
{
    (void)state;
    scenario_init(2);
    sc.behave[0] = EXIT0;
    sc.behave[1] = EXIT0_LATER;
    run_start(&current, false);
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, 0), 1);
    assert_int_equal(count(&current, STARTED, 1), 1);
    /* It waited for the later one. */
    assert_true(test_now_us() - nth(&current, STARTED, 1, 0)->at_us >= 250 * 1000);
}

/* Four workers exit at the same moment: their SIGCHLDs coalesce, and the supervisor still
 * reaps them all and returns. */
static void test_prefork_simultaneous_exits_all_reaped(void **state)
{
    (void)state;
    scenario_init(4);
    for (int i = 0; i < 4; i++)
        sc.behave[i] = EXIT0_ON_GO;
    use_log();
    run_start(&current, true);
    wait_for(&current, STARTED, -1, 4);
    close(current.go); /* end of file for all four at once */
    current.go = -1;
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, -1), 4);
    assert_int_equal(count_substr(slurp_log(), "exited with status 0; not restarted"), 4);
}

/* A worker that exits 1 at once is restarted with growing backoff (100, 200, 400 ms) until
 * the cap: with max_restarts = 3, exactly 1 + 3 starts, then the index is given up (an ERROR
 * line) and the supervisor returns once the other worker exited too. */
static void test_prefork_crash_loop_capped(void **state)
{
    static const uint64_t backoff_ms[] = {100, 200, 400};
    char *log;

    (void)state;
    scenario_init(2);
    sc.options.max_restarts = 3;
    sc.behave[0] = EXIT0;
    sc.behave[1] = CRASH;
    use_log();
    run_start(&current, false);
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, 0), 1);
    assert_int_equal(count(&current, STARTED, 1), 4);
    for (int i = 1; i < 4; i++) {
        uint64_t gap = nth(&current, STARTED, 1, i)->at_us - nth(&current, STARTED, 1, i - 1)->at_us;

        assert_true(gap >= backoff_ms[i - 1] * 1000);
    }
    log = slurp_log();
    assert_int_equal(count_substr(log, "prefork: worker 1 (pid"), 4);
    assert_int_equal(count_substr(log, "exited with status 1; restarting it in"), 3);
    assert_int_equal(count_substr(log, "restarting it in 100 ms (restart 1 of 3"), 1);
    assert_int_equal(count_substr(log, "restarting it in 400 ms (restart 3 of 3"), 1);
    assert_int_equal(count_substr(log, " ERROR "), 1);
    assert_non_null(strstr(log, "restarted 3 times within 60 s: giving index 1 up"));
    assert_int_equal(count_substr(log, "(restart)"), 3);
}

/* SIGTERM with a worker that ignores it: the other exits, the stubborn one gets SIGKILL after
 * drain_timeout_ms and is not restarted; the supervisor returns. */
static void test_prefork_drain_timeout_kills(void **state)
{
    uint64_t sent, took;
    char *log, line[128];

    (void)state;
    scenario_init(2);
    sc.options.drain_timeout_ms = 300;
    sc.behave[0] = IGNORE_TERM;
    use_log();
    run_start(&current, false);
    wait_for(&current, STARTED, -1, 2);
    sent = test_now_us();
    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0);
    took = test_now_us() - sent;
    assert_true(took >= 300 * 1000);
    assert_true(took < 5000 * 1000);
    assert_int_equal(count(&current, STARTED, -1), 2); /* no restart */
    assert_int_equal(count(&current, STOPPING, 1), 1);
    log = slurp_log();
    snprintf(line, sizeof line, "prefork: worker 0 (pid %d) killed by signal 9 (KILL); "
             "shutting down", (int)nth(&current, STARTED, 0, 0)->pid);
    assert_non_null(strstr(log, "prefork: drain timeout (300 ms): SIGKILL to "));
    assert_non_null(strstr(log, line));
}

/* ---- Rolling restart -------------------------------------------------------------------- */

struct client {
    int port;
    uint64_t until_us;
    atomic_int attempts, answered, refused, resets, empty, other;
    int first_err;
    pid_t pids[16];          /* distinct pids that answered */
    int npids;
    pthread_t thread;
    bool running;            /* started and not joined yet */
};

/* Static, so that a test failing while the thread runs leaves it valid memory. */
static struct client client;

static void *client_main(void *arg)
{
    struct client *c = arg;
    int index, pid, err;

    while (test_now_us() < c->until_us) {
        atomic_fetch_add(&c->attempts, 1);
        err = ask(c->port, &index, &pid);
        if (err == 0) {
            bool known = false;

            atomic_fetch_add(&c->answered, 1);
            for (int i = 0; i < c->npids; i++)
                known |= c->pids[i] == pid;
            if (!known && c->npids < 16)
                c->pids[c->npids++] = pid;
        } else if (err == -ECONNREFUSED) {
            atomic_fetch_add(&c->refused, 1);
        } else if (err == -ECONNRESET) {
            atomic_fetch_add(&c->resets, 1);
        } else if (err == -EPIPE) {
            atomic_fetch_add(&c->empty, 1);
        } else {
            if (atomic_fetch_add(&c->other, 1) == 0)
                c->first_err = err;
        }
    }
    return NULL;
}

static void client_join(void)
{
    if (client.running)
        pthread_join(client.thread, NULL);
    client.running = false;
}

static bool answered_by(const struct client *c, pid_t pid)
{
    for (int i = 0; i < c->npids; i++)
        if (c->pids[i] == pid)
            return true;
    return false;
}

/* SIGHUP under a client that connects without pause for client_ms: every index gets a new
 * pid, replaced one at a time (a replacement starts before its old worker stops, and the next
 * index only after that), and no connection attempt is refused. Connections queued in an old
 * worker's listener when it closed are reset (a known SO_REUSEPORT limit; the workers accept
 * what is queued before they close their listeners): counted and printed, not failed. */
static void rolling_restart_under_client(enum behaviour behave, uint64_t client_ms)
{
    struct client *c = &client;
    uint64_t hup_at;
    char *log;

    memset(c, 0, sizeof *c);
    c->port = reserve_port();
    scenario_init(2);
    sc.behave[0] = sc.behave[1] = behave;
    sc.port = c->port;
    sc.options.settle_ms = 200;
    use_log();
    run_start(&current, false);
    wait_for(&current, STARTED, -1, 2);

    c->until_us = test_now_us() + client_ms * 1000;
    assert_int_equal(pthread_create(&c->thread, NULL, client_main, c), 0);
    c->running = true;
    hup_at = test_now_us();
    assert_int_equal(kill(current.pid, SIGHUP), 0);
    wait_for(&current, STOPPING, 0, 1);
    wait_for(&current, STOPPING, 1, 1);
    pthread_join(c->thread, NULL);
    c->running = false;

    for (int i = 0; i < 2; i++) {
        const struct record *old = nth(&current, STARTED, i, 0);
        const struct record *fresh = nth(&current, STARTED, i, 1);
        const struct record *stop = nth(&current, STOPPING, i, 0);

        assert_int_not_equal(fresh->pid, old->pid);
        assert_int_equal(stop->pid, old->pid);
        assert_true(fresh->at_us < stop->at_us); /* the replacement starts first */
        assert_true(answered_by(c, fresh->pid));
    }
    /* One index at a time, each old worker told only after the settle time. */
    assert_true(nth(&current, STOPPING, 0, 0)->at_us - hup_at >= 200 * 1000);
    assert_true(nth(&current, STOPPING, 0, 0)->at_us < nth(&current, STARTED, 1, 1)->at_us);
    assert_true(nth(&current, STOPPING, 1, 0)->at_us - nth(&current, STOPPING, 0, 0)->at_us >=
                200 * 1000);
    print_message("rolling restart: %d attempts, %d answered, %d refused, %d reset, %d closed "
                  "unanswered, %d other (first %d)\n", atomic_load(&c->attempts),
                  atomic_load(&c->answered), atomic_load(&c->refused), atomic_load(&c->resets),
                  atomic_load(&c->empty), atomic_load(&c->other), c->first_err);
    assert_int_equal(atomic_load(&c->refused), 0);
    assert_int_equal(atomic_load(&c->other), 0);
    assert_true(atomic_load(&c->answered) > 100);

    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, -1), 4);
    assert_int_equal(count(&current, STOPPING, -1), 4);
    log = slurp_log();
    assert_int_equal(count_substr(log, "prefork: SIGHUP: rolling restart"), 1);
    assert_int_equal(count_substr(log, "replaced worker 0 (pid"), 1);
    assert_int_equal(count_substr(log, "replaced worker 1 (pid"), 1);
    assert_int_equal(count_substr(log, "prefork: rolling restart done"), 1);
}

/* Workers on raw SO_REUSEPORT listeners, for 3 s. */
static void test_prefork_rolling_restart_keeps_serving(void **state)
{
    (void)state;
    rolling_restart_under_client(SERVE, 3000);
}

/* Workers as an application writes them: a pool and a reuseport ioloop server each, drained
 * (ioloop_server_drain) on SIGTERM; for 2 s. */
static void test_prefork_rolling_restart_reuseport_server(void **state)
{
    (void)state;
    rolling_restart_under_client(SERVE_POOL, 2000);
}

/* SIGTERM while a replacement settles: the rolling restart stops (index 1 is never
 * replaced), all three workers get SIGTERM and the supervisor returns well before the
 * settle time would have ended. */
static void test_prefork_sigterm_stops_rolling_restart(void **state)
{
    uint64_t sent;

    (void)state;
    scenario_init(2);
    sc.options.settle_ms = 4000;
    use_log();
    run_start(&current, false);
    wait_for(&current, STARTED, -1, 2);
    assert_int_equal(kill(current.pid, SIGHUP), 0);
    wait_for(&current, STARTED, 0, 2);
    sent = test_now_us();
    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0);
    assert_true(test_now_us() - sent < 3000 * 1000);
    assert_int_equal(count(&current, STARTED, 0), 2);
    assert_int_equal(count(&current, STARTED, 1), 1);
    assert_int_equal(count(&current, STOPPING, -1), 3);
    assert_non_null(strstr(slurp_log(), "prefork: SIGTERM: rolling restart stopped"));
    assert_non_null(strstr(slurp_log(), "prefork: SIGTERM: sent to 3 workers"));
}

/* A caller that ignores SIGHUP (nohup) and SIGCHLD and blocks SIGUSR1, with the logger open:
 * workers inherit exactly that (and fds, parent, a clear signal registry: checked in every
 * record), SIGHUP still replaces the worker, the worker's log lines reach the file, and the
 * supervisor puts it all back before it returns. */
static void test_prefork_inherits_caller_state(void **state)
{
    char *log;

    (void)state;
    scenario_init(1);
    sc.odd_signals = true;
    sc.options.settle_ms = 50;
    use_log();
    run_start(&current, false);
    wait_for(&current, STARTED, 0, 1);
    assert_int_equal(kill(current.pid, SIGHUP), 0);
    wait_for(&current, STOPPING, 0, 1);
    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0); /* SUP_STATE would be set if not put back */
    assert_int_equal(count(&current, STARTED, 0), 2);
    assert_int_not_equal(nth(&current, STARTED, 0, 0)->pid, nth(&current, STARTED, 0, 1)->pid);
    log = slurp_log();
    assert_int_equal(count_substr(log, "test worker 0 pid"), 2);
    assert_int_equal(count_substr(log, "prefork: rolling restart of worker 0: replacement"), 1);
}

/* A worker being replaced that ignores SIGTERM gets SIGKILL drain_timeout_ms after it, is
 * not restarted, and the rolling restart goes on (here: ends). */
static void test_prefork_rolling_restart_kills_stubborn_old(void **state)
{
    int old_fd;
    uint64_t told;
    char *log, line[160];

    (void)state;
    scenario_init(1);
    sc.behave[0] = IGNORE_TERM;
    sc.options.settle_ms = 50;
    sc.options.drain_timeout_ms = 300;
    use_log();
    run_start(&current, false);
    wait_for(&current, STARTED, 0, 1);
    old_fd = pidfd_open(nth(&current, STARTED, 0, 0)->pid, 0);
    assert_true(old_fd >= 0);
    told = test_now_us();
    assert_int_equal(kill(current.pid, SIGHUP), 0);
    wait_for(&current, STARTED, 0, 2);
    assert_int_not_equal(test_wait_fd(old_fd, POLLIN, WAIT_MS), 0); /* the old one ended */
    close(old_fd);
    assert_true(test_now_us() - told >= (50 + 300) * 1000);
    wait_log("prefork: rolling restart done");
    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, 0), 2);
    log = slurp_log();
    snprintf(line, sizeof line, "prefork: replaced worker 0 (pid %d) killed by signal 9 (KILL); "
             "not restarted", (int)nth(&current, STARTED, 0, 0)->pid);
    assert_non_null(strstr(log, line));
    assert_non_null(strstr(log, "still running after 300 ms: SIGKILL"));
    assert_non_null(strstr(log, "prefork: rolling restart done"));
}

/* A replacement that crashes (and is given up, with max_restarts = 1) before the settle time
 * ends: the old worker stays in service, untouched, and the rolling restart stops there. */
static void test_prefork_rolling_restart_keeps_old_if_replacement_crashes(void **state)
{
    const struct record *old;
    char *log, line[160];

    (void)state;
    scenario_init(1);
    sc.behave[0] = FIRST_SERVES;
    sc.options.settle_ms = 500;
    sc.options.max_restarts = 1;
    use_log();
    run_start(&current, false);
    wait_for(&current, STARTED, 0, 1);
    assert_int_equal(kill(current.pid, SIGHUP), 0);
    wait_for(&current, STARTED, 0, 3); /* the replacement and its one restart */
    old = nth(&current, STARTED, 0, 0);
    /* The supervisor decides at the settle time; the old worker is still there after it. */
    wait_log("rolling restart stopped");
    assert_int_equal(run_read(&current, 0), -1); /* no record meanwhile */
    assert_int_equal(kill(old->pid, 0), 0);
    assert_int_equal(count(&current, STOPPING, -1), 0);

    assert_int_equal(kill(current.pid, SIGTERM), 0);
    assert_int_equal(run_end(&current), 0);
    assert_int_equal(count(&current, STARTED, 0), 3);
    assert_int_equal(count(&current, STOPPING, 0), 1);
    assert_int_equal(nth(&current, STOPPING, 0, 0)->pid, old->pid); /* the old one, at the end */
    log = slurp_log();
    snprintf(line, sizeof line, "the replacement is not running; pid %d stays, rolling restart "
             "stopped", (int)old->pid);
    assert_non_null(strstr(log, line));
    assert_non_null(strstr(log, "giving index 0 up"));
    assert_null(strstr(log, "SIGTERM to old pid"));
}

/* ---- Errors ----------------------------------------------------------------------------- */

static void *blocked_thread(void *arg)
{
    char byte;

    return (void *)(intptr_t)read(*(int *)arg, &byte, 1);
}

/* Exit status bits of the errors scenario. */
enum {
    ERR_EINVAL = 0x1,
    ERR_EBUSY = 0x2,
    ERR_CHANGED = 0x4,
    ERR_LOGGER = 0x8,
    ERR_LOOP = 0x10,
};

/* Runs in a child of this process: the calls that must fail, and one that must not. */
/* One worker that exits 0 at once: true once the supervisor returned 1. */
static bool prefork_one_that_exits(void)
{
    int w;

    switch (ioloop_prefork(1, NULL, &w)) {
    case 0:
        exit(0); /* the worker */
    case 1:
        return true;
    default:
        return false;
    }
}

static int errors_main(void)
{
    int w = 7, status = 0, fds[2];
    ioloop_t *loop;
    pthread_t t;

    capture(&before);
    if (ioloop_prefork(0, NULL, &w) != -EINVAL || ioloop_prefork(-2, NULL, &w) != -EINVAL ||
        ioloop_prefork(1, NULL, NULL) != -EINVAL || w != 7)
        status |= ERR_EINVAL;

    /* The logger's thread alone is allowed: opened, closed (its thread joined) and opened
     * again; one worker that exits 0 at once. */
    if (ioloop_log_open(&(ioloop_log_options_t){.path = sc.log_path}) != 0)
        return 0x80;
    ioloop_log_close();
    if (ioloop_log_open(&(ioloop_log_options_t){.path = sc.log_path}) != 0)
        return 0x80;
    if (!prefork_one_that_exits())
        status |= ERR_LOGGER;
    ioloop_log_close();

    /* Any other thread is not, and the refusal changes nothing. */
    w = 7;
    if (pipe(fds) != 0 || pthread_create(&t, NULL, blocked_thread, &fds[0]) != 0)
        return 0x80;
    capture(&before);
    if (ioloop_prefork(1, NULL, &w) != -EBUSY || w != 7)
        status |= ERR_EBUSY;
    if (compare_state() != 0)
        status |= ERR_CHANGED;
    close(fds[1]);
    pthread_join(t, NULL);
    close(fds[0]);

    /* Nor is a loop, made before the call and never run (its epoll set would be shared by
     * every worker); once it is freed, the call works. */
    loop = ioloop_new();
    if (loop == NULL)
        return 0x80;
    w = 7;
    capture(&before);
    if (ioloop_prefork(1, NULL, &w) != -EBUSY || w != 7)
        status |= ERR_LOOP;
    if (compare_state() != 0)
        status |= ERR_CHANGED;
    ioloop_free(loop);
    if (!prefork_one_that_exits())
        status |= ERR_LOOP;
    return status;
}

static void test_prefork_errors(void **state)
{
    int status;
    pid_t pid;

    (void)state;
    scenario_init(1);
    snprintf(sc.log_path, sizeof sc.log_path, "%s/errors.log", scratch_dir);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        exit(errors_main());
    current.pid = pid;
    current.pidfd = pidfd_open(pid, 0);
    assert_true(current.pidfd >= 0);
    assert_int_not_equal(test_wait_fd(current.pidfd, POLLIN, WAIT_MS), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    current.pid = -1;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_prefork_workers_serve_and_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefork_killed_worker_restarted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefork_exit0_not_restarted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefork_simultaneous_exits_all_reaped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prefork_crash_loop_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefork_drain_timeout_kills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefork_rolling_restart_keeps_serving, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prefork_rolling_restart_reuseport_server, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prefork_sigterm_stops_rolling_restart, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prefork_rolling_restart_kills_stubborn_old, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_prefork_rolling_restart_keeps_old_if_replacement_crashes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefork_inherits_caller_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefork_errors, setup, teardown),
    };
    int rc;

    snprintf(scratch_dir, sizeof scratch_dir, "/tmp/test_prefork.XXXXXX");
    if (mkdtemp(scratch_dir) == NULL)
        return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(scratch_dir);
    return rc;
}
