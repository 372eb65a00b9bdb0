/*
 * Behind a real load balancer (API.md §6 "PROXY protocol"): HAProxy in TCP mode balances
 * clients round-robin over two ioloop echo servers with proxy_protocol = 1, sending each a
 * PROXY v2 header (`send-proxy-v2`). Each server greets a connection with the peer it sees
 * — ioloop_address_format() of ioloop_conn_peer() — and then echoes. The test checks, for
 * several clients, that the echo is intact through HAProxy, that both backends served, and
 * that the peer the backend sees is the client itself (127.0.0.1 and the client's own
 * source port, as its getsockname() tells), not HAProxy's connection to the backend.
 *
 * HAProxy is not installed by the test: without an `haproxy` executable (searched in PATH,
 * /usr/sbin and /usr/local/sbin) the binary exits with 77, which meson reports as skipped.
 * The frontend's listening socket is made here and handed to HAProxy (`bind fd@3`), so no
 * port is guessed; HAProxy runs in the foreground (-db), dies with this process
 * (PR_SET_PDEATHSIG) and is stopped by its pid at the end. Loopback only; every wait is
 * bounded.
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
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* Clients sent through HAProxy: enough for round-robin to give each backend several. */
#define CLIENTS 8
/* How long HAProxy gets to stop after SIGTERM before it is killed. */
#define STOP_WAIT_MS 5000
/* A backend's greeting: "peer <address>\n". */
#define GREETING_MAX 128

static char haproxy_path[PATH_MAX];

/* ---- The ioloop backends ------------------------------------------------------------------ */

/* One backend: what it saw, under its lock. */
struct backend {
    pthread_mutex_t lock;
    ioloop_pool_t *pool;
    ioloop_server_t *server;
    int port;
    int opens, closes, errors;
    char peers[64][GREETING_MAX]; /* each connection's formatted peer, in order */
};

static void backend_on_open(ioloop_conn_t *conn)
{
    struct backend *b = ioloop_conn_user(conn);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char text[GREETING_MAX - 8], line[GREETING_MAX];
    int n = ioloop_conn_peer(conn, &ss, &len), rc = -1;

    if (n == 0)
        n = ioloop_address_format((struct sockaddr *)&ss, len, text, sizeof text);
    if (n >= 0) {
        n = snprintf(line, sizeof line, "peer %s\n", text);
        rc = ioloop_conn_write(conn, line, (size_t)n);
    }
    pthread_mutex_lock(&b->lock);
    if (rc != 0)
        b->errors++;
    else if (b->opens < 64)
        snprintf(b->peers[b->opens], sizeof b->peers[0], "%s", text);
    b->opens++;
    pthread_mutex_unlock(&b->lock);
}

static size_t backend_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct backend *b = ioloop_conn_user(conn);

    if (ioloop_conn_write(conn, data, len) != 0) {
        pthread_mutex_lock(&b->lock);
        b->errors++;
        pthread_mutex_unlock(&b->lock);
    }
    return len;
}

static void backend_on_close(ioloop_conn_t *conn, int err)
{
    struct backend *b = ioloop_conn_user(conn);

    pthread_mutex_lock(&b->lock);
    b->closes++;
    pthread_mutex_unlock(&b->lock);
}

static const ioloop_conn_handlers_t backend_handlers = {
    .on_open = backend_on_open, .on_data = backend_on_data, .on_close = backend_on_close,
};

static void backend_open(struct backend *b)
{
    const ioloop_server_options_t o = { .proxy_protocol = 1 };

    memset(b, 0, sizeof *b);
    pthread_mutex_init(&b->lock, NULL);
    b->pool = ioloop_pool_new(1);
    assert_non_null(b->pool);
    b->server = ioloop_server_new_opts(b->pool, "127.0.0.1:0", &backend_handlers, b, &o);
    assert_non_null(b->server);
    b->port = ioloop_server_port(b->server);
    assert_true(b->port > 0);
    assert_int_equal(ioloop_server_start(b->server), 0);
}

static void backend_close(struct backend *b)
{
    ioloop_server_free(b->server);
    ioloop_pool_free(b->pool);
    pthread_mutex_destroy(&b->lock);
}

static int backend_get(struct backend *b, const int *field)
{
    int v;

    pthread_mutex_lock(&b->lock);
    v = *field;
    pthread_mutex_unlock(&b->lock);
    return v;
}

/* ---- HAProxy ------------------------------------------------------------------------------ */

struct haproxy {
    char dir[64];
    char cfg[96];
    char log[96];
    int lfd;                    /* the frontend's listening socket, handed over as fd 3 */
    int port;
    pid_t pid;
};

static bool find_haproxy(void)
{
    const char *path = getenv("PATH");
    char dirs[4096];

    snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/usr/local/sbin:/sbin", path ? path : "");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d != NULL;
         d = strtok_r(NULL, ":", &save)) {
        if (*d == '\0')
            continue;
        snprintf(haproxy_path, sizeof haproxy_path, "%s/haproxy", d);
        if (access(haproxy_path, X_OK) == 0)
            return true;
    }
    return false;
}

static void write_config(struct haproxy *h, const struct backend *b1, const struct backend *b2)
{
    FILE *f = fopen(h->cfg, "w");

    assert_non_null(f);
    fprintf(f,
            "global\n"
            "    maxconn 64\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 10s\n"
            "    timeout server 10s\n"
            "frontend fe\n"
            "    bind fd@3\n"
            "    default_backend be\n"
            "backend be\n"
            "    balance roundrobin\n"
            "    server s1 127.0.0.1:%d send-proxy-v2\n"
            "    server s2 127.0.0.1:%d send-proxy-v2\n",
            b1->port, b2->port);
    assert_int_equal(fclose(f), 0);
}

/* Prints HAProxy's output, for a failure's diagnosis. */
static void dump_log(const struct haproxy *h)
{
    FILE *f = fopen(h->log, "r");
    char line[512];

    if (f == NULL)
        return;
    fprintf(stderr, "--- haproxy output ---\n");
    while (fgets(line, sizeof line, f) != NULL)
        fputs(line, stderr);
    fclose(f);
}

static void haproxy_start(struct haproxy *h, const struct backend *b1, const struct backend *b2)
{
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof sin;

    snprintf(h->dir, sizeof h->dir, "/tmp/ioloop-haproxy-XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    snprintf(h->cfg, sizeof h->cfg, "%s/haproxy.cfg", h->dir);
    snprintf(h->log, sizeof h->log, "%s/haproxy.log", h->dir);
    write_config(h, b1, b2);

    /* Listening before HAProxy runs: clients queue until it accepts. */
    h->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(h->lfd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(h->lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(h->lfd, 64), 0);
    assert_int_equal(getsockname(h->lfd, (struct sockaddr *)&sin, &len), 0);
    h->port = ntohs(sin.sin_port);

    h->pid = fork();
    assert_true(h->pid >= 0);
    if (h->pid == 0) {
        int out = open(h->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (out < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0 || dup2(h->lfd, 3) < 0)
            _exit(127);
        /* dup2 clears close-on-exec on fd 3 (unless lfd already was 3). */
        fcntl(3, F_SETFD, 0);
        execl(haproxy_path, "haproxy", "-f", h->cfg, "-db", (char *)NULL);
        _exit(127);
    }
}

/* Whether HAProxy is still running; reaps it if not. */
static bool haproxy_alive(struct haproxy *h)
{
    int status;

    if (h->pid <= 0)
        return false;
    if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
        fprintf(stderr, "haproxy exited (status 0x%x)\n", status);
        h->pid = -1;
        return false;
    }
    return true;
}

/* Stops HAProxy by its pid (bounded) and removes its files. Idempotent. */
static void haproxy_stop(struct haproxy *h)
{
    uint64_t deadline = test_now_us() + STOP_WAIT_MS * 1000ull;
    int status;

    if (h->dir[0] == '\0')
        return;

    if (h->pid > 0) {
        kill(h->pid, SIGTERM);
        while (waitpid(h->pid, &status, WNOHANG) == 0) {
            if (test_now_us() > deadline) {
                kill(h->pid, SIGKILL);
                waitpid(h->pid, &status, 0);
                break;
            }
            poll(NULL, 0, 10);
        }
        h->pid = -1;
    }
    close(h->lfd);
    unlink(h->cfg);
    unlink(h->log);
    rmdir(h->dir);
    h->dir[0] = '\0';
}

/* Reads one line (up to '\n') within TEST_WAIT_MS, failing the test with HAProxy's output if
 * it died or nothing came. */
static void read_line(struct haproxy *h, int fd, char *buf, size_t size)
{
    uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;
    size_t have = 0;

    while (have == 0 || buf[have - 1] != '\n') {
        ssize_t n;

        if (have + 1 >= size)
            fail_msg("a line longer than %zu bytes: %.*s", size, (int)have, buf);
        if (test_now_us() > deadline || !haproxy_alive(h)) {
            dump_log(h);
            fail_msg("no complete line through haproxy (got %zu bytes: \"%.*s\")", have,
                     (int)have, buf);
        }
        if (test_wait_fd(fd, POLLIN, 100) == 0)
            continue;
        n = read(fd, buf + have, 1);
        if (n <= 0) {
            dump_log(h);
            fail_msg("the connection through haproxy ended (%s) after \"%.*s\"",
                     n == 0 ? "EOF" : strerror(errno), (int)have, buf);
        }
        have += (size_t)n;
    }
    buf[have] = '\0';
}

/* ---- The test ----------------------------------------------------------------------------- */

/* HAProxy of the running test: stopped by the teardown too, when the test failed. */
static struct haproxy hap;

static int haproxy_teardown(void **state)
{
    (void)state;
    haproxy_stop(&hap);
    return 0;
}

static void test_haproxy_send_proxy_v2_round_robin(void **state)
{
    static struct backend b1, b2;
    char me[CLIENTS][GREETING_MAX];
    int fds = test_count_fds();

    (void)state;
    backend_open(&b1);
    backend_open(&b2);
    haproxy_start(&hap, &b1, &b2);

    for (int i = 0; i < CLIENTS; i++) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)hap.port) };
        struct sockaddr_in self;
        socklen_t len = sizeof self;
        char line[GREETING_MAX + 8], want[sizeof me + 8], msg[64];
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), n;

        assert_true(fd >= 0);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&self, &len), 0);
        snprintf(me[i], sizeof me[i], "127.0.0.1:%u", (unsigned)ntohs(self.sin_port));

        /* The greeting names this client, not HAProxy. */
        read_line(&hap, fd, line, sizeof line);
        snprintf(want, sizeof want, "peer %s\n", me[i]);
        assert_string_equal(line, want);
        /* Then the echo, intact: the header's bytes never show. */
        n = snprintf(msg, sizeof msg, "hello %d through haproxy\n", i);
        test_write_all(fd, msg, (size_t)n);
        read_line(&hap, fd, line, sizeof line);
        assert_string_equal(line, msg);
        close(fd);
    }

    /* Both backends served; every peer they saw was one of the clients. */
    {
        uint64_t deadline = test_now_us() + TEST_WAIT_MS * 1000ull;

        while (backend_get(&b1, &b1.closes) + backend_get(&b2, &b2.closes) < CLIENTS &&
               test_now_us() < deadline)
            poll(NULL, 0, 5);
    }
    haproxy_stop(&hap);
    pthread_mutex_lock(&b1.lock);
    pthread_mutex_lock(&b2.lock);
    assert_int_equal(b1.errors + b2.errors, 0);
    assert_int_equal(b1.opens + b2.opens, CLIENTS);
    assert_true(b1.opens >= 1);
    assert_true(b2.opens >= 1);
    for (int k = 0; k < 2; k++) {
        const struct backend *b = k == 0 ? &b1 : &b2;

        for (int i = 0; i < b->opens; i++) {
            bool known = false;

            for (int c = 0; c < CLIENTS; c++)
                known = known || strcmp(b->peers[i], me[c]) == 0;
            if (!known)
                fail_msg("backend %d saw peer %s, which is no client", k + 1, b->peers[i]);
        }
    }
    for (int k = 0; k < 2; k++) {
        ioloop_server_stats_t st;
        const struct backend *b = k == 0 ? &b1 : &b2;

        ioloop_server_get_stats(b->server, &st);
        assert_int_equal(st.refused, 0);
        assert_int_equal(st.accepted, (uint64_t)b->opens);
    }
    pthread_mutex_unlock(&b2.lock);
    pthread_mutex_unlock(&b1.lock);
    backend_close(&b1);
    backend_close(&b2);
    assert_int_equal(test_count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_haproxy_send_proxy_v2_round_robin, haproxy_teardown),
    };

    if (!find_haproxy()) {
        fprintf(stderr, "haproxy not found (PATH, /usr/sbin, /usr/local/sbin): skipped\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
