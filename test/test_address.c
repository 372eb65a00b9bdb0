/*
 * Unit tests of address handling in ioloop_server_new() and ioloop_connect()
 * (include/ioloop/server.h): every malformed address is refused with EINVAL (malformed host
 * names included; well-formed ones are test_resolve.c's), the valid forms ("127.0.0.1:0", "0.0.0.0:0", "[::1]:0" when IPv6 loopback is
 * there, "unix:/path") bind and carry an echo round trip, a port or unix path in use is
 * EADDRINUSE, a regular file in the way is left untouched, a stale unix socket file is
 * replaced and ioloop_server_free() removes the socket file. Each test checks that the
 * process's fd count is restored.
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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "helpers.h"

/* How long an echo round trip may take before the test fails. */
#define WAIT_MS 10000
/* A unix socket path longer than sun_path (108 bytes) can hold. */
#define LONG_PATH_LEN 200

/* ---- Small helpers ---------------------------------------------------------------------- */

static size_t echo_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    if (ioloop_conn_write(conn, data, len) < 0)
        ioloop_conn_close(conn);
    return len;
}

static const ioloop_conn_handlers_t echo_handlers = { .on_data = echo_on_data };

/* "unix:/" followed by LONG_PATH_LEN - 1 letters. */
static const char *long_unix_address(void)
{
    static char text[sizeof "unix:" + LONG_PATH_LEN];

    strcpy(text, "unix:/");
    memset(text + strlen(text), 'a', LONG_PATH_LEN - 1);
    text[sizeof text - 1] = '\0';
    assert_int_equal(strlen(text), strlen("unix:") + LONG_PATH_LEN);
    return text;
}

/* The malformed addresses; NULL-terminated after the NULL address, which comes first. */
static const char *const malformed[] = {
    "",
    "127.0.0.1",
    "127.0.0.1:",
    ":80",
    ":",
    "127.0.0.1:65536",
    "127.0.0.1:99999",
    "127.0.0.1:-1",
    "127.0.0.1:+80",
    "127.0.0.1:80x",
    "127.0.0.1:8 0",
    "127.0.0.1: 80",
    "127.0.0.1:80 ",
    "127.0.0.1:80/",
    "127.0.0.1:80:80",
    " 127.0.0.1:80",
    "256.1.1.1:80",
    "1.2.3:80",
    "1.2.3.4.5:80",
    "1.2.3.4.:80",
    "local_host:80",
    "-localhost:80",
    "localhost-:80",
    "local..host:80",
    ".localhost:80",
    "localhost..:80",
    "local host:80",
    "[::1]",
    "[::1]:",
    "[::1]80",
    "[::1:80",
    "::1:80",
    "[]:80",
    "[zz::1]:80",
    "[::1]:65536",
    "[::1]:80x",
    "[127.0.0.1]:80",
    "unix:",
};

#define NMALFORMED (sizeof malformed / sizeof malformed[0])

/* Whether IPv6 loopback works here: a plain socket can bind ::1. */
static bool ipv6_loopback_available(void)
{
    struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    if (fd < 0)
        return false;
    ok = bind(fd, (struct sockaddr *)&sin6, sizeof sin6) == 0;
    close(fd);
    return ok;
}

/* A fresh directory for unix sockets, under /tmp. */
static void make_temp_dir(char *dir, size_t size)
{
    assert_true(size > sizeof "/tmp/ioloop-address-XXXXXX");
    strcpy(dir, "/tmp/ioloop-address-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static int file_exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

/* A plain TCP socket bound to 127.0.0.1 on an ephemeral port, without SO_REUSEADDR. */
static int bind_plain_tcp(int *port)
{
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* A plain unix socket bound to path (not listening). */
static int bind_plain_unix(const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_true(strlen(path) < sizeof sun.sun_path);
    strcpy(sun.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    return fd;
}

/* ---- An echo round trip through ioloop_connect(), on a loop run by the test thread -------- */

struct client {
    const char *msg;
    size_t len;
    char got[256];
    size_t got_len;
    int opens;
    int closes;
    int err;
    bool timed_out;
    int64_t guard;
};

static void client_on_open(ioloop_conn_t *conn)
{
    struct client *c = ioloop_conn_user(conn);

    c->opens++;
    if (ioloop_conn_write(conn, c->msg, c->len) < 0)
        ioloop_conn_close(conn);
}

static size_t client_on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct client *c = ioloop_conn_user(conn);
    size_t room = sizeof c->got - c->got_len;
    size_t n = len < room ? len : room;

    memcpy(c->got + c->got_len, data, n);
    c->got_len += n;
    if (c->got_len >= c->len)
        ioloop_conn_close(conn);
    return len;
}

static void client_on_close(ioloop_conn_t *conn, int err)
{
    struct client *c = ioloop_conn_user(conn);
    ioloop_t *loop = ioloop_conn_loop(conn);

    c->closes++;
    c->err = err;
    ioloop_cancel_timer(loop, c->guard);
    ioloop_stop(loop);
}

static void client_guard(ioloop_t *loop, void *arg)
{
    struct client *c = arg;

    c->timed_out = true;
    ioloop_stop(loop);
}

static const ioloop_conn_handlers_t client_handlers = {
    .on_open = client_on_open,
    .on_data = client_on_data,
    .on_close = client_on_close,
};

/* Connects to `address`, sends a message, checks it comes back byte for byte, closes. */
static void echo_round_trip(const char *address)
{
    ioloop_t *loop = ioloop_new();
    struct client c;
    char msg[128];
    ioloop_conn_t *conn;

    assert_non_null(loop);
    memset(&c, 0, sizeof c);
    snprintf(msg, sizeof msg, "hello through %s", address);
    c.msg = msg;
    c.len = strlen(msg);
    c.guard = ioloop_run_after(loop, WAIT_MS, client_guard, &c);
    assert_true(c.guard > 0);
    conn = ioloop_connect(loop, address, &client_handlers, &c);
    assert_non_null(conn);
    assert_int_equal(ioloop_start(loop), 0);
    assert_false(c.timed_out);
    assert_int_equal(c.opens, 1);
    assert_int_equal(c.closes, 1);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.got_len, c.len);
    assert_memory_equal(c.got, msg, c.len);
    ioloop_free(loop);
}

/* Starts an echo server on bind_address, then round-trips through connect_host:port. */
static void serve_and_echo(ioloop_pool_t *pool, const char *bind_address, const char *connect_host)
{
    ioloop_server_t *server = ioloop_server_new(pool, bind_address, &echo_handlers, NULL);
    char address[64];
    int port;

    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    port = ioloop_server_port(server);
    assert_true(port > 0 && port <= 65535);
    snprintf(address, sizeof address, "%s:%d", connect_host, port);
    echo_round_trip(address);
    ioloop_server_free(server);
}

/* ---- Tests ------------------------------------------------------------------------------ */

static void test_address_malformed_server_new(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    const char *address;

    (void)state;
    assert_non_null(pool);
    errno = 0;
    assert_null(ioloop_server_new(pool, NULL, &echo_handlers, NULL));
    assert_int_equal(errno, EINVAL);
    for (size_t i = 0; i <= NMALFORMED; i++) {
        ioloop_server_t *server;

        address = i < NMALFORMED ? malformed[i] : long_unix_address();
        errno = 0;
        server = ioloop_server_new(pool, address, &echo_handlers, NULL);
        if (server != NULL || errno != EINVAL) {
            int saved = errno;

            ioloop_server_free(server);
            fail_msg("server_new(\"%s\"): %p, errno %d (%s), want NULL and EINVAL", address,
                     (void *)server, saved, strerror(saved));
        }
    }
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_malformed_connect(void **state)
{
    int fds = test_count_fds();
    ioloop_t *loop = ioloop_new(); /* not started: the creating thread may connect */
    const char *address;

    (void)state;
    assert_non_null(loop);
    errno = 0;
    assert_null(ioloop_connect(loop, NULL, &client_handlers, NULL));
    assert_int_equal(errno, EINVAL);
    for (size_t i = 0; i <= NMALFORMED; i++) {
        ioloop_conn_t *conn;

        address = i < NMALFORMED ? malformed[i] : long_unix_address();
        errno = 0;
        conn = ioloop_connect(loop, address, &client_handlers, NULL);
        if (conn != NULL || errno != EINVAL)
            fail_msg("connect(\"%s\"): %p, errno %d (%s), want NULL and EINVAL", address,
                     (void *)conn, errno, strerror(errno));
    }
    ioloop_free(loop);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_ipv4_loopback(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);

    (void)state;
    assert_non_null(pool);
    serve_and_echo(pool, "127.0.0.1:0", "127.0.0.1");
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_ipv4_any(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);

    (void)state;
    assert_non_null(pool);
    serve_and_echo(pool, "0.0.0.0:0", "127.0.0.1");
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_ipv6_loopback(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool;

    (void)state;
    if (!ipv6_loopback_available()) {
        skip();
        return;
    }
    pool = ioloop_pool_new(1);
    assert_non_null(pool);
    serve_and_echo(pool, "[::1]:0", "[::1]");
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_explicit_port(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    char address[64];
    int port, fd;

    (void)state;
    assert_non_null(pool);
    /* A port the kernel just handed out and that is free again. */
    fd = bind_plain_tcp(&port);
    close(fd);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    {
        ioloop_server_t *server = ioloop_server_new(pool, address, &echo_handlers, NULL);

        assert_non_null(server);
        assert_int_equal(ioloop_server_port(server), port);
        assert_int_equal(ioloop_server_start(server), 0);
        echo_round_trip(address);
        ioloop_server_free(server);
    }
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_unix_socket(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    char dir[64], path[128], address[160];
    ioloop_server_t *server;
    struct stat st;

    (void)state;
    assert_non_null(pool);
    make_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/sock", dir);
    snprintf(address, sizeof address, "unix:%s", path);

    server = ioloop_server_new(pool, address, &echo_handlers, NULL);
    assert_non_null(server);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(ioloop_server_port(server), -EINVAL);
    assert_int_equal(ioloop_server_start(server), 0);
    echo_round_trip(address);
    ioloop_server_free(server);
    /* Freeing the server removes its socket file. */
    assert_false(file_exists(path));

    /* A server freed without ever being started removes it too. */
    server = ioloop_server_new(pool, address, &echo_handlers, NULL);
    assert_non_null(server);
    assert_true(file_exists(path));
    ioloop_server_free(server);
    assert_false(file_exists(path));

    assert_int_equal(rmdir(dir), 0);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_port_in_use(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    ioloop_server_t *server, *second;
    char address[64];
    int port, fd;

    (void)state;
    assert_non_null(pool);

    /* A plain listening socket without SO_REUSEADDR holds the port. */
    fd = bind_plain_tcp(&port);
    assert_int_equal(listen(fd, 8), 0);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    errno = 0;
    assert_null(ioloop_server_new(pool, address, &echo_handlers, NULL));
    assert_int_equal(errno, EADDRINUSE);
    close(fd);

    /* So does a socket that is only bound. */
    fd = bind_plain_tcp(&port);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    errno = 0;
    assert_null(ioloop_server_new(pool, address, &echo_handlers, NULL));
    assert_int_equal(errno, EADDRINUSE);
    close(fd);

    /* And another server (both with SO_REUSEADDR) listening there. */
    server = ioloop_server_new(pool, "127.0.0.1:0", &echo_handlers, NULL);
    assert_non_null(server);
    snprintf(address, sizeof address, "127.0.0.1:%d", ioloop_server_port(server));
    errno = 0;
    second = ioloop_server_new(pool, address, &echo_handlers, NULL);
    assert_null(second);
    assert_int_equal(errno, EADDRINUSE);
    ioloop_server_free(second);
    /* The first one is unharmed. */
    assert_int_equal(ioloop_server_start(server), 0);
    echo_round_trip(address);
    ioloop_server_free(server);

    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_unix_regular_file_untouched(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    static const char content[] = "not a socket: leave me alone\n";
    char dir[64], path[128], address[160], buf[sizeof content];
    struct stat before, after;
    int fd;

    (void)state;
    assert_non_null(pool);
    make_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/file", dir);
    snprintf(address, sizeof address, "unix:%s", path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, sizeof content - 1), sizeof content - 1);
    close(fd);
    assert_int_equal(lstat(path, &before), 0);

    errno = 0;
    assert_null(ioloop_server_new(pool, address, &echo_handlers, NULL));
    assert_int_equal(errno, EADDRINUSE);

    assert_int_equal(lstat(path, &after), 0);
    assert_true(S_ISREG(after.st_mode));
    assert_int_equal(after.st_ino, before.st_ino);
    assert_int_equal(after.st_size, before.st_size);
    assert_int_equal(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
    assert_int_equal(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, buf, sizeof buf), sizeof content - 1);
    assert_memory_equal(buf, content, sizeof content - 1);
    close(fd);

    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_unix_stale_socket_replaced(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    char dir[64], path[128], address[160];
    ioloop_server_t *server;
    struct stat st;

    (void)state;
    assert_non_null(pool);
    make_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/stale", dir);
    snprintf(address, sizeof address, "unix:%s", path);
    /* A socket bound and closed leaves its file behind, with nobody listening. */
    close(bind_plain_unix(path));
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));

    server = ioloop_server_new(pool, address, &echo_handlers, NULL);
    assert_non_null(server);
    assert_int_equal(ioloop_server_start(server), 0);
    echo_round_trip(address);
    ioloop_server_free(server);
    assert_false(file_exists(path));

    assert_int_equal(rmdir(dir), 0);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

static void test_address_unix_live_socket_in_use(void **state)
{
    int fds = test_count_fds();
    ioloop_pool_t *pool = ioloop_pool_new(1);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    char dir[64], path[128], address[160];
    int lfd, cfd, afd;

    (void)state;
    assert_non_null(pool);
    make_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/live", dir);
    snprintf(address, sizeof address, "unix:%s", path);
    lfd = bind_plain_unix(path);
    assert_int_equal(listen(lfd, 8), 0);

    errno = 0;
    assert_null(ioloop_server_new(pool, address, &echo_handlers, NULL));
    assert_int_equal(errno, EADDRINUSE);

    /* The listener still owns its path: a client reaches it. */
    strcpy(sun.sun_path, path);
    cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(cfd >= 0);
    assert_int_equal(connect(cfd, (struct sockaddr *)&sun, sizeof sun), 0);
    afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(afd >= 0);
    close(afd);
    close(cfd);
    close(lfd);

    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
    ioloop_pool_free(pool);
    assert_int_equal(test_count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_address_malformed_server_new),
        cmocka_unit_test(test_address_malformed_connect),
        cmocka_unit_test(test_address_ipv4_loopback),
        cmocka_unit_test(test_address_ipv4_any),
        cmocka_unit_test(test_address_ipv6_loopback),
        cmocka_unit_test(test_address_explicit_port),
        cmocka_unit_test(test_address_unix_socket),
        cmocka_unit_test(test_address_port_in_use),
        cmocka_unit_test(test_address_unix_regular_file_untouched),
        cmocka_unit_test(test_address_unix_stale_socket_replaced),
        cmocka_unit_test(test_address_unix_live_socket_in_use),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
