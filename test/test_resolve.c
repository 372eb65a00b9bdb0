/*
 * Unit tests of names (include/ioloop/resolve.h, and host names in ioloop_connect() and
 * ioloop_server_new()), against a real DNS exchange: each test runs a small DNS server on a
 * 127.0.0.1 UDP port in a thread of its own and points the loop's channel at it with
 * ioloop_resolve_set_servers() before anything asks DNS, so no query ever leaves the machine.
 * The server parses each query's question and answers from a fixed table (A and AAAA
 * records), with an empty answer for the names it knows without addresses, NXDOMAIN for the
 * rest, and never for "silent.test"; it counts the questions it got.
 *
 * Covered: the exact addresses of both families with the port filled in; -ENOENT for NXDOMAIN
 * and for a name without addresses; -ETIMEDOUT within the timeout RES_OPTIONS sets (main()
 * sets "retrans:1000 retry:1" before any channel exists: that the timeout is 1 s, not c-ares's
 * default of 5 s tried 4 times, shows that c-ares read it) while the loop's timers keep
 * running; cancelling (-ECANCELED after the call, never inside it; a late answer dropped);
 * 100 lookups at once; localhost from /etc/hosts and numeric hosts without any query;
 * malformed names refused with -EINVAL before any query, and the longest well-formed ones
 * accepted; set_servers' errors; the wrong thread; ioloop_free() with lookups in flight.
 * Connecting by name: localhost, a name whose first address refuses, one whose addresses all
 * refuse, one that does not exist, closing and freeing while the name is looked up.
 * ioloop_server_new() with names from /etc/hosts alone. Each test checks that the process's
 * fd count is restored.
 *
 * Built with -Dresolver=disabled, the same binary checks what such a library promises
 * instead: numeric hosts answered, names -ENOTSUP.
 */
#include <ioloop.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

#ifndef IOLOOP_TEST_RESOLVER
#define IOLOOP_TEST_RESOLVER 1
#endif

/* A loop run by a test that has not stopped after this long fails it. */
#define RUN_MS 10000
/* RES_OPTIONS' timeout below, and how much later than it -ETIMEDOUT may come (sanitizers). */
#define TIMEOUT_MS 1000
#define TIMEOUT_SLACK_MS 2500
#define MAX_ADDRS 8
#define CONCURRENT 100

/* ---- Recording answers ------------------------------------------------------------------ */

/* Stops the loop once `left` reaches 0. */
struct waiter {
    ioloop_t *loop;
    int left;
};

static void waiter_done(struct waiter *w)
{
    if (w != NULL && --w->left == 0)
        ioloop_stop(w->loop);
}

struct answer {
    struct waiter *w;
    int calls;
    int err;
    size_t naddrs;
    char addrs[MAX_ADDRS][64];   /* formatted by ioloop_address_format() */
    int in_call;                 /* a test's call runs: the callback must not run now */
    int ran_inside;
    pthread_t thread;
    uint64_t at_us;
    ioloop_t *loop;
    int64_t id;
    int cancel_self;             /* what cancelling its own id from inside fn returned */
};

static void on_answer(ioloop_t *loop, int err, const struct sockaddr *const *addrs,
                      size_t naddrs, void *arg)
{
    struct answer *a = arg;

    a->calls++;
    a->err = err;
    a->naddrs = naddrs;
    a->loop = loop;
    a->thread = pthread_self();
    a->at_us = test_now_us();
    if (a->in_call)
        a->ran_inside++;
    if (err < 0 && (addrs != NULL || naddrs != 0))
        a->err = 1; /* an error comes without addresses */
    for (size_t i = 0; i < naddrs && i < MAX_ADDRS; i++) {
        socklen_t len = addrs[i]->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                        : sizeof(struct sockaddr_in);

        if (ioloop_address_format(addrs[i], len, a->addrs[i], sizeof a->addrs[i]) < 0)
            strcpy(a->addrs[i], "?");
    }
    a->cancel_self = ioloop_resolve_cancel(loop, a->id);
    waiter_done(a->w);
}

static int64_t resolve(ioloop_t *loop, const char *host, uint16_t port, struct answer *a)
{
    a->in_call = 1;
    a->id = ioloop_resolve(loop, host, port, on_answer, a);
    a->in_call = 0;
    return a->id;
}

/* Runs the loop until a waiter stops it; fails the test if that takes RUN_MS. */
static void run(ioloop_t *loop)
{
    test_watchdog_t wd;

    test_watchdog_arm(&wd, loop, RUN_MS);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(test_watchdog_disarm(&wd), 0);
}

static size_t discard_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    return len;
}

/* The fixture's loop; the DNS server's questions are counted only with c-ares. */
struct fixture {
    int fds;
    ioloop_t *loop;
#if IOLOOP_TEST_RESOLVER
    struct fake_dns *dns;
#endif
};

#if IOLOOP_TEST_RESOLVER

/* ---- A DNS server on 127.0.0.1 ---------------------------------------------------------- */

enum { TYPE_A = 1, TYPE_AAAA = 28, RCODE_NXDOMAIN = 3 };

struct record {
    const char *name;
    int type;
    const char *addr;
};

/* Every name here exists; for the type it has no record of, the answer is empty. */
static const struct record records[] = {
    {"pair.test", TYPE_A, "127.0.0.7"},
    {"pair.test", TYPE_A, "127.0.0.8"},
    {"pair.test", TYPE_AAAA, "::1"},
    {"fallback.test", TYPE_A, "127.0.0.2"}, /* nothing listens there: refused */
    {"fallback.test", TYPE_A, "127.0.0.1"},
    {"refused.test", TYPE_A, "127.0.0.2"},
    {"refused.test", TYPE_A, "127.0.0.3"},
    {"empty.test", 0, NULL},                /* exists, no address at all */
};

struct fake_dns {
    int fd;
    int port;
    int stop[2];          /* the thread ends when stop[0] becomes readable */
    pthread_t thread;
    atomic_int questions; /* queries received, silent ones included */
};

/* "n<k>.test", k < 65536: one A record, 127.1.k/256.k%256. */
static bool numbered(const char *name, struct in_addr *a)
{
    char tail[8];
    unsigned k;

    if (sscanf(name, "n%u%7s", &k, tail) != 2 || strcmp(tail, ".test") != 0 || k > 65535)
        return false;
    a->s_addr = htonl(0x7f010000u | k);
    return true;
}

static size_t put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
    return 2;
}

/* Appends an answer record for the question's name (a pointer to offset 12). */
static size_t put_answer(unsigned char *p, int type, const void *rdata, size_t len)
{
    size_t n = 0;

    n += put16(p + n, 0xc00c);
    n += put16(p + n, (unsigned)type);
    n += put16(p + n, 1);        /* class IN */
    n += put16(p + n, 0);        /* TTL: 60 s */
    n += put16(p + n, 60);
    n += put16(p + n, (unsigned)len);
    memcpy(p + n, rdata, len);
    return n + len;
}

/* Answers one query datagram, if it is one the table knows how to answer. */
static void dns_answer(struct fake_dns *d, const unsigned char *q, size_t len,
                       const struct sockaddr_in *from)
{
    unsigned char r[512];
    char name[256];
    size_t off = 12, nlen = 0, n;
    unsigned ancount = 0;
    int type, rcode = RCODE_NXDOMAIN;
    struct in_addr a4;

    if (len < 12 || q[4] != 0 || q[5] != 1) /* one question */
        return;
    while (off < len && q[off] != 0) {
        size_t label = q[off];

        if (label > 63 || off + 1 + label >= len || nlen + label + 2 > sizeof name)
            return;
        if (nlen > 0)
            name[nlen++] = '.';
        memcpy(name + nlen, q + off + 1, label);
        nlen += label;
        off += 1 + label;
    }
    if (off + 5 > len)
        return;
    name[nlen] = '\0';
    for (size_t i = 0; i < nlen; i++)
        name[i] = (char)tolower((unsigned char)name[i]);
    type = q[off + 1] << 8 | q[off + 2];
    off += 5; /* the root label, QTYPE, QCLASS */
    atomic_fetch_add(&d->questions, 1);
    if (strcmp(name, "silent.test") == 0)
        return;

    memcpy(r, q, off); /* the header and the question, as asked */
    n = off;
    for (size_t i = 0; i < sizeof records / sizeof records[0]; i++) {
        unsigned char rdata[16];

        if (strcmp(records[i].name, name) != 0)
            continue;
        rcode = 0;
        if (records[i].type != type || records[i].addr == NULL)
            continue;
        inet_pton(type == TYPE_A ? AF_INET : AF_INET6, records[i].addr, rdata);
        n += put_answer(r + n, type, rdata, type == TYPE_A ? 4 : 16);
        ancount++;
    }
    if (numbered(name, &a4)) {
        rcode = 0;
        if (type == TYPE_A) {
            n += put_answer(r + n, type, &a4, 4);
            ancount++;
        }
    }
    r[2] = (unsigned char)(0x80 | 0x04 | (q[2] & 0x01)); /* a response, authoritative, RD */
    r[3] = (unsigned char)(0x80 | rcode);                /* RA */
    put16(r + 6, ancount);
    put16(r + 8, 0);
    put16(r + 10, 0);
    sendto(d->fd, r, n, 0, (const struct sockaddr *)from, sizeof *from);
}

static void *dns_main(void *arg)
{
    struct fake_dns *d = arg;
    struct pollfd pfd[2] = {{.fd = d->fd, .events = POLLIN}, {.fd = d->stop[0], .events = POLLIN}};

    for (;;) {
        unsigned char q[512];
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        ssize_t len;

        if (poll(pfd, 2, -1) < 0 || (pfd[1].revents & POLLIN))
            return NULL;
        len = recvfrom(d->fd, q, sizeof q, MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
        if (len > 0)
            dns_answer(d, q, (size_t)len, &from);
    }
}

static void dns_start(struct fake_dns *d)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;

    d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(d->fd >= 0);
    assert_int_equal(bind(d->fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(d->fd, (struct sockaddr *)&sin, &len), 0);
    d->port = ntohs(sin.sin_port);
    assert_int_equal(pipe(d->stop), 0);
    atomic_init(&d->questions, 0);
    assert_int_equal(pthread_create(&d->thread, NULL, dns_main, d), 0);
}

static void dns_stop(struct fake_dns *d)
{
    assert_int_equal(write(d->stop[1], "x", 1), 1);
    pthread_join(d->thread, NULL);
    close(d->stop[0]);
    close(d->stop[1]);
    close(d->fd);
}

static int dns_questions(struct fake_dns *d)
{
    return atomic_load(&d->questions);
}

/* ---- Fixture: a DNS server and a loop pointed at it ------------------------------------- */

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    char servers[64];

    assert_non_null(f);
    f->fds = test_count_fds();
    f->dns = calloc(1, sizeof *f->dns);
    assert_non_null(f->dns);
    dns_start(f->dns);
    f->loop = ioloop_new();
    assert_non_null(f->loop);
    snprintf(servers, sizeof servers, "127.0.0.1:%d", f->dns->port);
    /* Before anything asks DNS: no query may go to the servers of /etc/resolv.conf. */
    assert_int_equal(ioloop_resolve_set_servers(f->loop, servers), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    ioloop_free(f->loop);
    dns_stop(f->dns);
    free(f->dns);
    assert_int_equal(test_count_fds(), f->fds);
    free(f);
    return 0;
}

static bool has_addr(const struct answer *a, const char *text)
{
    for (size_t i = 0; i < a->naddrs && i < MAX_ADDRS; i++)
        if (strcmp(a->addrs[i], text) == 0)
            return true;
    return false;
}

/* ---- Lookups ---------------------------------------------------------------------------- */

static void test_resolve_both_families(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 1};
    struct answer a = {.w = &w};

    assert_true(resolve(f->loop, "pair.test", 8080, &a) > 0);
    assert_int_equal(a.calls, 0);
    run(f->loop);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.ran_inside, 0);
    assert_int_equal(a.err, 0);
    assert_ptr_equal(a.loop, f->loop);
    assert_true(pthread_equal(a.thread, pthread_self()));
    /* Exactly the records, IPv4 and IPv6, each with the port asked for. */
    assert_int_equal(a.naddrs, 3);
    assert_true(has_addr(&a, "127.0.0.7:8080"));
    assert_true(has_addr(&a, "127.0.0.8:8080"));
    assert_true(has_addr(&a, "[::1]:8080"));
    assert_int_equal(dns_questions(f->dns), 2); /* A and AAAA */
    /* The id of a lookup whose callback ran is finished (fn itself saw that too). */
    assert_int_equal(a.cancel_self, -ENOENT);
    assert_int_equal(ioloop_resolve_cancel(f->loop, a.id), -ENOENT);
}

static void test_resolve_no_such_name(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 3};
    struct answer nx = {.w = &w}, empty = {.w = &w}, v4 = {.w = &w};

    assert_true(resolve(f->loop, "nosuch.test", 80, &nx) > 0);
    assert_true(resolve(f->loop, "empty.test", 80, &empty) > 0);
    assert_true(resolve(f->loop, "n513.test", 80, &v4) > 0); /* an A record and no AAAA */
    run(f->loop);
    assert_int_equal(nx.calls, 1);
    assert_int_equal(nx.err, -ENOENT);     /* NXDOMAIN */
    assert_int_equal(empty.calls, 1);
    assert_int_equal(empty.err, -ENOENT);  /* the name exists, without an address */
    assert_int_equal(v4.err, 0);
    assert_int_equal(v4.naddrs, 1);
    assert_string_equal(v4.addrs[0], "127.1.2.1:80");
}

static void on_tick(ioloop_t *loop, void *arg)
{
    (*(int *)arg)++;
}

static void test_resolve_timeout(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 1};
    struct answer a = {.w = &w};
    uint64_t start = test_now_us(), elapsed_ms;
    int ticks = 0;
    int64_t tick = ioloop_run_every(f->loop, 10, on_tick, &ticks);

    assert_true(tick > 0);
    assert_true(resolve(f->loop, "silent.test", 80, &a) > 0);
    run(f->loop);
    elapsed_ms = (a.at_us - start) / 1000;
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, -ETIMEDOUT);
    /* RES_OPTIONS' 1 s, one attempt (c-ares's defaults would be 5 s, 4 attempts). */
    assert_true(elapsed_ms >= TIMEOUT_MS - 10);
    assert_true(elapsed_ms < TIMEOUT_MS + TIMEOUT_SLACK_MS);
    /* The loop never blocked: its 10 ms timer kept firing while the query was out. */
    assert_true(ticks >= (int)(elapsed_ms / 10 / 4));
    assert_int_equal(dns_questions(f->dns), 2);
    ioloop_cancel_timer(f->loop, tick);
}

static void test_resolve_cancel(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 4};
    struct answer silent = {.w = &w}, late = {.w = &w}, queued = {.w = &w}, after = {.w = &w};

    /* In flight and never answered: -ECANCELED, after the call, once. */
    assert_true(resolve(f->loop, "silent.test", 80, &silent) > 0);
    silent.in_call = 1;
    assert_int_equal(ioloop_resolve_cancel(f->loop, silent.id), 0);
    assert_int_equal(ioloop_resolve_cancel(f->loop, silent.id), -ENOENT);
    silent.in_call = 0;
    /* Answered after the cancel: the answer is dropped. */
    assert_true(resolve(f->loop, "pair.test", 80, &late) > 0);
    assert_int_equal(ioloop_resolve_cancel(f->loop, late.id), 0);
    /* Already answered, not yet delivered (a numeric host): cancelled all the same. */
    assert_true(resolve(f->loop, "127.0.0.1", 80, &queued) > 0);
    assert_int_equal(ioloop_resolve_cancel(f->loop, queued.id), 0);
    /* Asked after the others: by its answer, theirs have been read and dropped. */
    assert_true(resolve(f->loop, "pair.test", 81, &after) > 0);
    run(f->loop);
    assert_int_equal(silent.calls, 1);
    assert_int_equal(silent.err, -ECANCELED);
    assert_int_equal(silent.ran_inside, 0);
    assert_int_equal(late.calls, 1);
    assert_int_equal(late.err, -ECANCELED);
    assert_int_equal(queued.calls, 1);
    assert_int_equal(queued.err, -ECANCELED);
    assert_int_equal(after.calls, 1);
    assert_int_equal(after.err, 0);
    assert_int_equal(after.naddrs, 3);
    assert_int_equal(dns_questions(f->dns), 6);
    assert_int_equal(late.calls, 1); /* its late answer did not run it again */
    /* Ids that are not (or no longer) lookups. */
    assert_int_equal(ioloop_resolve_cancel(f->loop, late.id), -ENOENT);
    assert_int_equal(ioloop_resolve_cancel(f->loop, 0), -ENOENT);
    assert_int_equal(ioloop_resolve_cancel(f->loop, -1), -ENOENT);
    assert_int_equal(ioloop_resolve_cancel(f->loop, INT64_MAX), -ENOENT);
    assert_int_equal(ioloop_resolve_cancel(NULL, after.id), -EINVAL);
}

static void test_resolve_concurrent(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, CONCURRENT};
    struct answer *a = calloc(CONCURRENT, sizeof *a);
    char name[32], want[32];

    assert_non_null(a);
    for (int i = 0; i < CONCURRENT; i++) {
        a[i].w = &w;
        snprintf(name, sizeof name, "n%d.test", 300 + i);
        assert_true(resolve(f->loop, name, (uint16_t)(1000 + i), &a[i]) > 0);
        for (int j = 0; j < i; j++)
            assert_true(a[j].id != a[i].id);
    }
    run(f->loop);
    for (int i = 0; i < CONCURRENT; i++) {
        unsigned k = 300u + (unsigned)i;

        snprintf(want, sizeof want, "127.1.%u.%u:%d", k >> 8, k & 255, 1000 + i);
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].err, 0);
        assert_int_equal(a[i].naddrs, 1);
        assert_string_equal(a[i].addrs[0], want);
    }
    assert_int_equal(dns_questions(f->dns), 2 * CONCURRENT);
    free(a);
}

static void test_resolve_localhost_from_hosts(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 2};
    struct answer a = {.w = &w}, upper = {.w = &w};

    assert_true(resolve(f->loop, "localhost", 6379, &a) > 0);
    assert_true(resolve(f->loop, "LocalHost", 6380, &upper) > 0);
    run(f->loop);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.ran_inside, 0); /* c-ares answers it inside its call: not ours */
    assert_true(has_addr(&a, "127.0.0.1:6379"));
    assert_int_equal(upper.err, 0);
    assert_true(has_addr(&upper, "127.0.0.1:6380"));
    assert_int_equal(dns_questions(f->dns), 0);
}

static void test_resolve_numeric_without_query(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 3};
    struct answer v4 = {.w = &w}, v6 = {.w = &w}, mapped = {.w = &w};

    assert_true(resolve(f->loop, "127.0.0.1", 53, &v4) > 0);
    assert_true(resolve(f->loop, "::1", 0, &v6) > 0);
    assert_true(resolve(f->loop, "::ffff:10.1.2.3", 65535, &mapped) > 0);
    assert_int_equal(v4.calls + v6.calls + mapped.calls, 0);
    run(f->loop);
    assert_int_equal(v4.err, 0);
    assert_int_equal(v4.naddrs, 1);
    assert_string_equal(v4.addrs[0], "127.0.0.1:53");
    assert_int_equal(v6.err, 0);
    assert_int_equal(v6.naddrs, 1);
    assert_string_equal(v6.addrs[0], "[::1]:0");
    assert_int_equal(mapped.naddrs, 1);
    assert_string_equal(mapped.addrs[0], "[::ffff:10.1.2.3]:65535");
    assert_int_equal(v4.ran_inside + v6.ran_inside + mapped.ran_inside, 0);
    assert_int_equal(dns_questions(f->dns), 0);
}

/* Well-formed at the limits: they reach DNS (which says NXDOMAIN). */
static void test_resolve_longest_names(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 3};
    struct answer label = {.w = &w}, full = {.w = &w}, dotted = {.w = &w};
    char label63[80], name253[260], name254[264];

    memset(label63, 'a', 63);
    strcpy(label63 + 63, ".test");
    /* Labels of 63 with dots between (255 characters), cut to 253: the last label is 61. */
    memset(name253, 'b', 253);
    for (int i = 63; i < 253; i += 64)
        name253[i] = '.';
    name253[253] = '\0';
    snprintf(name254, sizeof name254, "%s.", name253);
    assert_true(resolve(f->loop, label63, 80, &label) > 0);
    assert_true(resolve(f->loop, name253, 80, &full) > 0);
    assert_true(resolve(f->loop, name254, 80, &dotted) > 0);
    run(f->loop);
    assert_int_equal(label.err, -ENOENT);
    assert_int_equal(full.err, -ENOENT);
    assert_int_equal(dotted.err, -ENOENT);
    assert_int_equal(dns_questions(f->dns), 6);
}

/* Malformed hosts: refused at the call, before any query; the callback never runs. */
static void test_resolve_malformed(void **state)
{
    struct fixture *f = *state;
    char label64[80], name254[260], addr[300];
    const char *const bad[] = {
        "", ".", "-a", "a-", "a..b", ".a", "a.b..", "a_b", "a b", "a/b", "a:b", "[::1]",
        "127.1", "1.2.3.4.5", "1.2.3", "256.0.0.1", "1.2.3.4.", "123",
        "1.2.3.-4", "café.test", "a\tb", label64, name254,
    };
    struct answer a = {0};
    ioloop_pool_t *pool;

    memset(label64, 'a', 64);
    strcpy(label64 + 64, ".test");
    memset(name254, 'a', 254);
    for (int i = 63; i < 254; i += 64)
        name254[i] = '.'; /* labels of 63: only the length is wrong */
    name254[254] = '\0';
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a.in_call = 1;
        if (ioloop_resolve(f->loop, bad[i], 80, on_answer, &a) != -EINVAL)
            fail_msg("ioloop_resolve(\"%s\"): want -EINVAL", bad[i]);
    }
    assert_int_equal(ioloop_resolve(NULL, "localhost", 80, on_answer, &a), -EINVAL);
    assert_int_equal(ioloop_resolve(f->loop, NULL, 80, on_answer, &a), -EINVAL);
    assert_int_equal(ioloop_resolve(f->loop, "localhost", 80, NULL, &a), -EINVAL);

    /* The same names in addresses: connect and server_new refuse them with EINVAL. */
    pool = ioloop_pool_new(1);
    assert_non_null(pool);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        static const ioloop_conn_handlers_t h = {.on_data = discard_data};
        ioloop_server_t *server;

        if (bad[i][0] == '[' || strchr(bad[i], ':') != NULL)
            continue; /* not a host in "host:port" */
        snprintf(addr, sizeof addr, "%s:80", bad[i]);
        errno = 0;
        if (ioloop_connect(f->loop, addr, &h, NULL) != NULL || errno != EINVAL)
            fail_msg("ioloop_connect(\"%s\"): want NULL and EINVAL", addr);
        errno = 0;
        server = ioloop_server_new(pool, addr, &h, NULL);
        if (server != NULL || errno != EINVAL) {
            ioloop_server_free(server);
            fail_msg("ioloop_server_new(\"%s\"): want NULL and EINVAL", addr);
        }
    }
    ioloop_pool_free(pool);
    ioloop_stop(f->loop);
    assert_int_equal(ioloop_start(f->loop), 0); /* one iteration: nothing was queued */
    assert_int_equal(a.calls, 0);
    assert_int_equal(dns_questions(f->dns), 0);
}

static void test_resolve_set_servers(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 2};
    struct answer a = {.w = &w}, b = {.w = &w};
    char servers[80];

    assert_int_equal(ioloop_resolve_set_servers(NULL, "127.0.0.1"), -EINVAL);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, NULL), -EINVAL);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, ""), -EINVAL);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, "nameserver"), -EINVAL);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, "127.0.0.1,x"), -EINVAL);
    /* A list of several, IPv6 among them: the first answers. */
    snprintf(servers, sizeof servers, "127.0.0.1:%d,[::1]:%d", f->dns->port, f->dns->port);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, servers), 0);
    /* A lookup waits: the servers cannot change under it. */
    assert_true(resolve(f->loop, "silent.test", 80, &a) > 0);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, servers), -EBUSY);
    /* Cancelled, nobody waits for its query: it is given up and the servers change. */
    assert_int_equal(ioloop_resolve_cancel(f->loop, a.id), 0);
    snprintf(servers, sizeof servers, "127.0.0.1:%d", f->dns->port);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, servers), 0);
    assert_true(resolve(f->loop, "pair.test", 80, &b) > 0);
    run(f->loop);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, -ECANCELED);
    assert_int_equal(b.err, 0);
    assert_int_equal(b.naddrs, 3);
}

static void *wrong_thread_main(void *arg)
{
    ioloop_t *loop = arg;
    struct answer a = {0};
    int *rc = calloc(3, sizeof *rc);

    if (rc == NULL)
        return NULL;
    rc[0] = (int)ioloop_resolve(loop, "127.0.0.1", 80, on_answer, &a);
    rc[1] = ioloop_resolve_cancel(loop, 1);
    rc[2] = ioloop_resolve_set_servers(loop, "127.0.0.1");
    return rc;
}

static void on_try_other_thread(ioloop_t *loop, void *arg)
{
    pthread_t t;
    void *rc = NULL;

    /* The loop runs in this thread: another thread may not use it now. */
    if (pthread_create(&t, NULL, wrong_thread_main, loop) == 0)
        pthread_join(t, &rc);
    *(int **)arg = rc;
    ioloop_stop(loop);
}

static void test_resolve_wrong_thread(void **state)
{
    struct fixture *f = *state;
    int *rc = NULL;

    assert_true(ioloop_run_after(f->loop, 0, on_try_other_thread, &rc) > 0);
    run(f->loop);
    assert_non_null(rc);
    assert_int_equal(rc[0], -EPERM);
    assert_int_equal(rc[1], -EPERM);
    assert_int_equal(rc[2], -EPERM);
    free(rc);
}

/* A callback that starts another lookup while the loop is being freed. */
static void on_answer_again(ioloop_t *loop, int err, const struct sockaddr *const *addrs,
                            size_t naddrs, void *arg)
{
    struct answer *a = arg;

    on_answer(loop, err, addrs, naddrs, a);
    if (a->calls == 1)
        a->id = ioloop_resolve(loop, "silent.test", 80, on_answer_again, a);
}

static void test_resolve_free_in_flight(void **state)
{
    struct fixture *f = *state;
    struct answer a[4] = {{0}};
    ioloop_t *loop = f->loop;
    struct answer again = {0};

    assert_true(resolve(loop, "silent.test", 80, &a[0]) > 0);
    assert_true(resolve(loop, "pair.test", 80, &a[1]) > 0);
    assert_true(resolve(loop, "127.0.0.1", 80, &a[2]) > 0);
    assert_true(resolve(loop, "localhost", 80, &a[3]) > 0);
    again.id = ioloop_resolve(loop, "silent.test", 81, on_answer_again, &again);
    assert_true(again.id > 0);
    ioloop_free(loop);
    f->loop = NULL;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_true(pthread_equal(a[i].thread, pthread_self()));
    }
    /* In flight (the loop never read pair.test's answer): cancelled. */
    assert_int_equal(a[0].err, -ECANCELED);
    assert_int_equal(a[1].err, -ECANCELED);
    /* Answered already (a numeric host; /etc/hosts inside c-ares's call), its callback due:
     * ioloop_free() runs what is due before it cancels what is not, as for connections. */
    assert_int_equal(a[2].err, 0);
    assert_int_equal(a[3].err, 0);
    /* The lookup started from a cancelled one's callback was cancelled too. */
    assert_int_equal(again.calls, 2);
    assert_int_equal(again.err, -ECANCELED);
    /* teardown: no fd of the channel is left. */
}

/* ---- Connecting by name ----------------------------------------------------------------- */

struct peer_conn {
    struct waiter *opened, *closed;
    int opens, closes, close_err, closes_inside;
    int in_call;
    char peer[64];
};

/* Records the peer's address, then closes: what was written goes out, then the FIN. */
static void pc_on_open(ioloop_conn_t *conn)
{
    struct peer_conn *p = ioloop_conn_user(conn);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    p->opens++;
    if (ioloop_conn_peer(conn, &ss, &len) == 0)
        ioloop_address_format((struct sockaddr *)&ss, len, p->peer, sizeof p->peer);
    ioloop_conn_close(conn);
    waiter_done(p->opened);
}

static void pc_on_close(ioloop_conn_t *conn, int err)
{
    struct peer_conn *p = ioloop_conn_user(conn);

    p->closes++;
    p->close_err = err;
    if (p->in_call)
        p->closes_inside++;
    waiter_done(p->closed);
}

static const ioloop_conn_handlers_t pc_handlers = {
    .on_open = pc_on_open, .on_data = discard_data, .on_close = pc_on_close,
};

/* A listening socket on 127.0.0.1 (and only there), ephemeral port. */
static int listen_loopback(int *port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* Accepts one connection, reads it to EOF into buf (NUL-terminated) and closes it. */
static void accept_and_read(int lfd, char *buf, size_t size)
{
    size_t got = 0;
    int fd;

    assert_int_equal(test_wait_fd(lfd, POLLIN, TEST_WAIT_MS), 1);
    fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    for (;;) {
        ssize_t n;

        assert_int_equal(test_wait_fd(fd, POLLIN, TEST_WAIT_MS), 1);
        n = read(fd, buf + got, size - 1 - got);
        assert_true(n >= 0);
        if (n == 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
}

static ioloop_conn_t *connect_to(ioloop_t *loop, const char *host, int port, struct peer_conn *p)
{
    char address[300];
    ioloop_conn_t *conn;

    snprintf(address, sizeof address, "%s:%d", host, port);
    p->in_call = 1;
    conn = ioloop_connect(loop, address, &pc_handlers, p);
    p->in_call = 0;
    return conn;
}

/* Runs the loop until p's connection opened (and so closed its side), takes what the
 * listener got, and runs the loop again until the connection's close completed. */
static void open_read_close(ioloop_t *loop, struct peer_conn *p, int lfd, char *got,
                            size_t size)
{
    struct waiter opened = {loop, 1}, closed = {loop, 1};

    p->opened = &opened;
    run(loop);
    accept_and_read(lfd, got, size); /* the peer's close ends the connection's linger */
    p->closed = &closed;
    run(loop);
}

static void test_resolve_connect_localhost(void **state)
{
    struct fixture *f = *state;
    struct peer_conn p = {0};
    char want[64], got[64];
    int port, lfd = listen_loopback(&port);
    ioloop_conn_t *conn = connect_to(f->loop, "localhost", port, &p);

    /* Returned at once, still resolving: no socket yet, but writes are taken. */
    assert_non_null(conn);
    assert_int_equal(ioloop_conn_fd(conn), -ENOTCONN);
    assert_int_equal(ioloop_conn_write(conn, "hello", 5), 0);
    assert_int_equal(ioloop_conn_pending(conn), 5);
    open_read_close(f->loop, &p, lfd, got, sizeof got);
    assert_int_equal(p.opens, 1);
    assert_int_equal(p.closes, 1);
    assert_int_equal(p.close_err, 0);
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    assert_string_equal(p.peer, want);
    assert_string_equal(got, "hello");
    assert_int_equal(dns_questions(f->dns), 0); /* /etc/hosts answered */
    close(lfd);
}

static void test_resolve_connect_next_address(void **state)
{
    struct fixture *f = *state;
    struct peer_conn p = {0};
    char want[64], got[64];
    int port, lfd = listen_loopback(&port);
    struct waiter w = {f->loop, 1};
    struct answer order = {.w = &w};
    ioloop_conn_t *conn;

    /* 127.0.0.2 first, where nothing listens on the port; then 127.0.0.1, where lfd does
     * (c-ares's sorting keeps the order of IPv4 addresses alike). */
    assert_true(resolve(f->loop, "fallback.test", (uint16_t)port, &order) > 0);
    run(f->loop);
    assert_int_equal(order.naddrs, 2);
    snprintf(want, sizeof want, "127.0.0.2:%d", port);
    assert_string_equal(order.addrs[0], want);
    conn = connect_to(f->loop, "fallback.test", port, &p);
    assert_non_null(conn);
    assert_int_equal(ioloop_conn_write(conn, "second", 6), 0);
    open_read_close(f->loop, &p, lfd, got, sizeof got);
    assert_int_equal(p.opens, 1);
    assert_int_equal(p.close_err, 0);
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    assert_string_equal(p.peer, want);
    assert_string_equal(got, "second");
    close(lfd);
}

static void test_resolve_connect_failures(void **state)
{
    struct fixture *f = *state;
    struct waiter w = {f->loop, 3};
    struct peer_conn refused = {.closed = &w}, nx = {.closed = &w}, empty = {.closed = &w};
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    int hold = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port;

    /* A port bound but not listening: connecting to it on any 127.x address is refused. */
    assert_true(hold >= 0);
    assert_int_equal(bind(hold, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(hold, (struct sockaddr *)&sin, &len), 0);
    port = ntohs(sin.sin_port);
    assert_non_null(connect_to(f->loop, "refused.test", port, &refused));
    assert_non_null(connect_to(f->loop, "nosuch.test", port, &nx));
    assert_non_null(connect_to(f->loop, "empty.test", port, &empty));
    run(f->loop);
    assert_int_equal(refused.opens + nx.opens + empty.opens, 0);
    assert_int_equal(refused.closes, 1);
    assert_int_equal(refused.close_err, -ECONNREFUSED); /* the last address's error */
    assert_int_equal(nx.closes, 1);
    assert_int_equal(nx.close_err, -ENOENT);
    assert_int_equal(empty.closes, 1);
    assert_int_equal(empty.close_err, -ENOENT);
    assert_int_equal(refused.closes_inside + nx.closes_inside + empty.closes_inside, 0);
    close(hold);
}

static void test_resolve_connect_close_while_resolving(void **state)
{
    struct fixture *f = *state;
    struct waiter first = {f->loop, 2}, closed = {f->loop, 1};
    struct peer_conn idle = {.closed = &first}, writer = {.opened = &first};
    char got[64];
    int port, lfd = listen_loopback(&port);
    ioloop_conn_t *a = connect_to(f->loop, "silent.test", 80, &idle);
    ioloop_conn_t *b = connect_to(f->loop, "fallback.test", port, &writer);

    assert_non_null(a);
    assert_non_null(b);
    /* Nothing to deliver: it ends at once, its lookup dropped, without connecting. */
    idle.in_call = 1;
    ioloop_conn_close(a);
    idle.in_call = 0;
    assert_int_equal(ioloop_conn_write(a, "x", 1), -EPIPE);
    /* Bytes written before the close still go out once the name resolved and connected. */
    assert_int_equal(ioloop_conn_write(b, "kept", 4), 0);
    ioloop_conn_close(b);
    assert_int_equal(ioloop_conn_write(b, "x", 1), -EPIPE);
    run(f->loop);
    assert_int_equal(idle.opens, 0);
    assert_int_equal(idle.closes, 1);
    assert_int_equal(idle.close_err, 0);
    assert_int_equal(idle.closes_inside, 0);
    accept_and_read(lfd, got, sizeof got);
    assert_string_equal(got, "kept");
    writer.closed = &closed;
    run(f->loop);
    assert_int_equal(writer.closes, 1);
    assert_int_equal(writer.close_err, 0);
    close(lfd);
}

static void test_resolve_connect_free_while_resolving(void **state)
{
    struct fixture *f = *state;
    struct peer_conn p[5] = {{0}};
    ioloop_t *loop;
    int port, lfd = listen_loopback(&port);

    /* The resolver came first (the fixture set its servers): it is cancelled first. */
    assert_non_null(connect_to(f->loop, "silent.test", 80, &p[0]));
    assert_non_null(connect_to(f->loop, "pair.test", 80, &p[1]));
    assert_non_null(connect_to(f->loop, "localhost", 80, &p[2]));
    ioloop_free(f->loop);
    f->loop = NULL;
    /* The other order: connections first, then the lookup of a name in /etc/hosts. */
    loop = ioloop_new();
    assert_non_null(loop);
    assert_non_null(connect_to(loop, "127.0.0.1", port, &p[3]));
    assert_non_null(connect_to(loop, "localhost", port, &p[4]));
    ioloop_free(loop);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(p[i].opens, 0);
        assert_int_equal(p[i].closes, 1);
        assert_int_equal(p[i].close_err, -ECANCELED);
    }
    close(lfd);
}

/* ---- Servers on names from /etc/hosts --------------------------------------------------- */

static void test_resolve_server_new_hosts_file(void **state)
{
    struct fixture *f = *state;
    static const ioloop_conn_handlers_t h = {.on_data = discard_data};
    ioloop_pool_t *pool = ioloop_pool_new(1);
    const char *const names[] = {"localhost:0", "LOCALHOST:0", "localhost.:0"};
    ioloop_server_t *server;

    assert_non_null(pool);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int fd;

        server = ioloop_server_new(pool, names[i], &h, NULL);
        if (server == NULL)
            fail_msg("ioloop_server_new(\"%s\"): errno %d", names[i], errno);
        assert_true(ioloop_server_port(server) > 0);
        /* localhost is 127.0.0.1 here: a client reaches it there. */
        sin.sin_port = htons((uint16_t)ioloop_server_port(server));
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
        close(fd);
        ioloop_server_free(server);
    }
    /* Well-formed, in no hosts file: ENOENT, and no DNS query for it. */
    errno = 0;
    assert_null(ioloop_server_new(pool, "no-such-name.invalid:0", &h, NULL));
    assert_int_equal(errno, ENOENT);
    errno = 0;
    assert_null(ioloop_server_new(pool, "silent.test:0", &h, NULL));
    assert_int_equal(errno, ENOENT);
    errno = 0;
    assert_null(ioloop_server_new(pool, "local_host:0", &h, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(ioloop_server_new(pool, "127.1:0", &h, NULL));
    assert_int_equal(errno, EINVAL);
    ioloop_pool_free(pool);
    assert_int_equal(dns_questions(f->dns), 0);
}

#else /* !IOLOOP_TEST_RESOLVER: a library built with -Dresolver=disabled */

static void test_resolve_disabled(void **state)
{
    static const ioloop_conn_handlers_t h = {.on_data = discard_data};
    struct fixture *f = *state;
    struct waiter w = {f->loop, 1};
    struct answer a = {.w = &w};
    ioloop_pool_t *pool = ioloop_pool_new(1);

    /* Numeric hosts need no resolver; names say -ENOTSUP; malformed ones stay -EINVAL. */
    assert_true(resolve(f->loop, "127.0.0.1", 80, &a) > 0);
    assert_int_equal(ioloop_resolve(f->loop, "localhost", 80, on_answer, &a), -ENOTSUP);
    assert_int_equal(ioloop_resolve(f->loop, "127.1", 80, on_answer, &a), -EINVAL);
    assert_int_equal(ioloop_resolve_set_servers(f->loop, "127.0.0.1"), -ENOTSUP);
    errno = 0;
    assert_null(ioloop_connect(f->loop, "localhost:80", &h, NULL));
    assert_int_equal(errno, ENOTSUP);
    assert_non_null(pool);
    errno = 0;
    assert_null(ioloop_server_new(pool, "localhost:0", &h, NULL));
    assert_int_equal(errno, ENOTSUP);
    ioloop_pool_free(pool);
    run(f->loop);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.addrs[0], "127.0.0.1:80");
}

static int setup_disabled(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    f->fds = test_count_fds();
    f->loop = ioloop_new();
    assert_non_null(f->loop);
    *state = f;
    return 0;
}

static int teardown_disabled(void **state)
{
    struct fixture *f = *state;

    ioloop_free(f->loop);
    assert_int_equal(test_count_fds(), f->fds);
    free(f);
    return 0;
}

#endif

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
#if IOLOOP_TEST_RESOLVER
    const struct CMUnitTest tests[] = {
        T(test_resolve_both_families),
        T(test_resolve_no_such_name),
        T(test_resolve_timeout),
        T(test_resolve_cancel),
        T(test_resolve_concurrent),
        T(test_resolve_localhost_from_hosts),
        T(test_resolve_numeric_without_query),
        T(test_resolve_longest_names),
        T(test_resolve_malformed),
        T(test_resolve_set_servers),
        T(test_resolve_wrong_thread),
        T(test_resolve_free_in_flight),
        T(test_resolve_connect_localhost),
        T(test_resolve_connect_next_address),
        T(test_resolve_connect_failures),
        T(test_resolve_connect_close_while_resolving),
        T(test_resolve_connect_free_while_resolving),
        T(test_resolve_server_new_hosts_file),
    };
#else
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_resolve_disabled, setup_disabled,
                                        teardown_disabled),
    };
#endif

    /* c-ares reads RES_OPTIONS when a channel is made: a 1000 ms timeout, one attempt
     * (c-ares 1.18 knows them as retrans:, in ms, and retry:). */
    setenv("RES_OPTIONS", "retrans:1000 retry:1", 1);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
