/*
 * Unit tests of the PROXY protocol header parser (lib/net/proxy.h, an internal function, so
 * these tests see the library's own headers): valid v1 and v2 headers give their exact length
 * and addresses, every beginning of one asks for more bytes without touching the result, and
 * the application's bytes after one are left alone; every malformed header is refused, and at
 * the first byte that proves it wrong; every beginning of an address the parser takes is one
 * that inet_pton() can complete, and the other way round; random and mutated input never
 * gives a length longer than the input. Each call parses a heap copy of exactly its bytes, so
 * that ASan (which CI runs) reports any read past them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "net/proxy.h"

/* What an application sends right after the header: never part of it. */
#define APP_DATA "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
/* The specification's limits: a v1 line with its CRLF, and the v2 fixed part. */
#define V1_MAX 107
#define V2_FIXED 16
/* The longest body a v2 header may announce. */
#define V2_BODY_MAX (IOLOOP__PROXY_MAX - V2_FIXED)
/* The v2 address blocks: IPv4, IPv6, UNIX (two sun_path-sized paths). */
#define BLOCK_TCP4 12
#define BLOCK_TCP6 36
#define BLOCK_UNIX 216
#define UNIX_PATH 108
/* Random inputs in the fuzz test, and random addresses in the address test; the seeds are
 * fixed, so every run sees the same inputs. */
#define FUZZ_ROUNDS 100000
#define FUZZ_SEED 0x5EED5EED12345678u
#define ADDRESS_ROUNDS 2000
#define ADDRESS_SEED 0xADD7E55ADD7E55u
/* The address oracle tries every string of up to ORACLE_LEN bytes over ORACLE_ALPHABET (4
 * characters: the numbering below uses 2 bits a character). Any such string of up to
 * ORACLE_EXACT bytes that can begin an address can be completed within ORACLE_LEN bytes
 * ("::11." + "0.0.0"), so for those the oracle knows the right answer both ways. */
#define ORACLE_ALPHABET "01:."
#define ORACLE_LEN 10
#define ORACLE_EXACT 5

static const unsigned char signature[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
};

/* ---- Helpers ---------------------------------------------------------------------------- */

/* Parses a heap copy of exactly len bytes. The copy sits at the end of its block, so ASan
 * reports any read past the len bytes (for len 0, any read at all). */
static int parse_copy(const void *data, size_t len, struct ioloop_proxy_header *out)
{
    unsigned char *block = malloc(len + 1);
    int rc;

    assert_non_null(block);
    if (len > 0)
        memcpy(block + 1, data, len);
    rc = ioloop__proxy_parse(block + 1, len, out);
    free(block);
    return rc;
}

/* Checks a valid header of len bytes: each of its beginnings asks for more and leaves *out
 * as it was, all of it gives len, and so does all of it followed by application bytes (with
 * the same result). Leaves the result in *out. */
static void check_valid(const void *hdr, size_t len, struct ioloop_proxy_header *out)
{
    struct ioloop_proxy_header before, scratch, with_data;
    size_t more_len = len + strlen(APP_DATA);
    unsigned char *more = malloc(more_len);
    int rc;

    assert_non_null(more);
    memset(&before, 0xA5, sizeof before);
    for (size_t i = 0; i < len; i++) {
        memset(&scratch, 0xA5, sizeof scratch);
        rc = parse_copy(hdr, i, &scratch);
        if (rc != 0)
            fail_msg("the first %zu bytes of a valid %zu-byte header gave %d, want 0", i, len,
                     rc);
        assert_memory_equal(&scratch, &before, sizeof scratch);
    }
    memset(out, 0xA5, sizeof *out);
    assert_int_equal(parse_copy(hdr, len, out), (int)len);
    memcpy(more, hdr, len);
    memcpy(more + len, APP_DATA, strlen(APP_DATA));
    memset(&with_data, 0x5A, sizeof with_data);
    assert_int_equal(parse_copy(more, more_len, &with_data), (int)len);
    assert_memory_equal(&with_data, out, sizeof *out);
    free(more);
}

static void check_valid_text(const char *line, struct ioloop_proxy_header *out)
{
    check_valid(line, strlen(line), out);
}

/* The length of the shortest beginning of data[0..len) that is refused. Checks on the way
 * that each shorter one asks for more, each longer one is refused too (never valid later,
 * whatever follows), and that no beginning is taken as a header. */
static size_t rejected_at(const void *data, size_t len)
{
    struct ioloop_proxy_header out;
    size_t first = 0; /* 0: none yet (the empty beginning always asks for more) */

    for (size_t i = 0; i <= len; i++) {
        int rc = parse_copy(data, i, &out);

        if (first == 0 && rc == -EPROTO)
            first = i;
        else if (first == 0 && rc != 0)
            fail_msg("the first %zu of %zu bytes gave %d, want 0 or -EPROTO", i, len, rc);
        else if (first != 0 && rc != -EPROTO)
            fail_msg("%zu bytes gave %d after %zu bytes were refused", i, rc, first);
    }
    if (first == 0)
        fail_msg("none of the %zu bytes' beginnings was refused", len);
    return first;
}

static size_t rejected_at_text(const char *text)
{
    return rejected_at(text, strlen(text));
}

/* The result every header that names an AF_INET source gives: only these fields set. */
static void expect_inet4(const struct ioloop_proxy_header *out, const unsigned char addr[4],
                         unsigned port)
{
    const struct sockaddr_in *in = (const struct sockaddr_in *)&out->src;
    const unsigned char port_bytes[2] = {(unsigned char)(port >> 8), (unsigned char)port};
    struct ioloop_proxy_header want;
    struct sockaddr_in *want_in = (struct sockaddr_in *)&want.src;

    assert_false(out->local);
    assert_int_equal(out->src_len, sizeof(struct sockaddr_in));
    assert_int_equal(in->sin_family, AF_INET);
    assert_memory_equal(&in->sin_addr, addr, 4);
    assert_memory_equal(&in->sin_port, port_bytes, 2);
    memset(&want, 0, sizeof want);
    want.src_len = sizeof(struct sockaddr_in);
    want_in->sin_family = AF_INET;
    memcpy(&want_in->sin_addr, addr, 4);
    memcpy(&want_in->sin_port, port_bytes, 2);
    assert_memory_equal(out, &want, sizeof want);
}

static void expect_inet6(const struct ioloop_proxy_header *out, const unsigned char addr[16],
                         unsigned port)
{
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&out->src;
    const unsigned char port_bytes[2] = {(unsigned char)(port >> 8), (unsigned char)port};
    struct ioloop_proxy_header want;
    struct sockaddr_in6 *want_in6 = (struct sockaddr_in6 *)&want.src;

    assert_false(out->local);
    assert_int_equal(out->src_len, sizeof(struct sockaddr_in6));
    assert_int_equal(in6->sin6_family, AF_INET6);
    assert_memory_equal(&in6->sin6_addr, addr, 16);
    assert_memory_equal(&in6->sin6_port, port_bytes, 2);
    memset(&want, 0, sizeof want);
    want.src_len = sizeof(struct sockaddr_in6);
    want_in6->sin6_family = AF_INET6;
    memcpy(&want_in6->sin6_addr, addr, 16);
    memcpy(&want_in6->sin6_port, port_bytes, 2);
    assert_memory_equal(out, &want, sizeof want);
}

static void expect_unix(const struct ioloop_proxy_header *out, const char *path)
{
    const struct sockaddr_un *un = (const struct sockaddr_un *)&out->src;
    struct ioloop_proxy_header want;
    struct sockaddr_un *want_un = (struct sockaddr_un *)&want.src;

    assert_false(out->local);
    assert_int_equal(un->sun_family, AF_UNIX);
    assert_string_equal(un->sun_path, path);
    assert_int_equal(out->src_len, offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
    memset(&want, 0, sizeof want);
    want.src_len = out->src_len;
    want_un->sun_family = AF_UNIX;
    memcpy(want_un->sun_path, path, strlen(path) + 1);
    assert_memory_equal(out, &want, sizeof want);
}

/* A local result: the connection's own peer stands; nothing else is set. */
static void expect_local(const struct ioloop_proxy_header *out)
{
    struct ioloop_proxy_header want;

    assert_true(out->local);
    assert_int_equal(out->src_len, 0);
    memset(&want, 0, sizeof want);
    want.local = true;
    assert_memory_equal(out, &want, sizeof want);
}

/* Writes a v2 header into buf: the signature, these version-and-command and family bytes,
 * the body's length and the body. Returns the header's length. */
static size_t v2_header(unsigned char *buf, unsigned ver_cmd, unsigned fam, const void *body,
                        size_t body_len)
{
    memcpy(buf, signature, sizeof signature);
    buf[12] = (unsigned char)ver_cmd;
    buf[13] = (unsigned char)fam;
    buf[14] = (unsigned char)(body_len >> 8);
    buf[15] = (unsigned char)body_len;
    if (body_len > 0)
        memcpy(buf + V2_FIXED, body, body_len);
    return V2_FIXED + body_len;
}

/* Appends a TLV to body at *len; a NULL value stands for value_len zero bytes. */
static void add_tlv(unsigned char *body, size_t *len, unsigned type, const void *value,
                    size_t value_len)
{
    body[(*len)++] = (unsigned char)type;
    body[(*len)++] = (unsigned char)(value_len >> 8);
    body[(*len)++] = (unsigned char)value_len;
    if (value != NULL)
        memcpy(body + *len, value, value_len);
    else
        memset(body + *len, 0, value_len);
    *len += value_len;
}

/* The TCP4 block the v2 tests use: 192.0.2.10:50000 to 198.51.100.20:443. */
static const unsigned char tcp4_src[4] = {192, 0, 2, 10};
static const unsigned char tcp4_block[BLOCK_TCP4] = {
    192, 0, 2, 10, 198, 51, 100, 20, 0xC3, 0x50, 0x01, 0xBB,
};

static size_t v2_tcp4(unsigned char *buf)
{
    return v2_header(buf, 0x21, 0x11, tcp4_block, sizeof tcp4_block);
}

/* A small random number generator (xorshift64*), so that the tests need no global state. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Du;
}

static unsigned rng_below(uint64_t *state, unsigned n)
{
    return (unsigned)(rng_next(state) % n);
}

/* ---- Version 1: valid lines ------------------------------------------------------------- */

/* The specification's example line. */
static void test_proxy_v1_tcp4(void **state)
{
    static const unsigned char src[4] = {192, 168, 0, 1};
    struct ioloop_proxy_header out;

    (void)state;
    check_valid_text("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", &out);
    expect_inet4(&out, src, 56324);
}

/* The longest TCP4 line (56 bytes), and the smallest values. */
static void test_proxy_v1_tcp4_extremes(void **state)
{
    static const unsigned char all[4] = {255, 255, 255, 255};
    static const unsigned char none[4] = {0, 0, 0, 0};
    const char *longest = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    struct ioloop_proxy_header out;

    (void)state;
    assert_int_equal(strlen(longest), 56);
    check_valid_text(longest, &out);
    expect_inet4(&out, all, 65535);
    check_valid_text("PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", &out);
    expect_inet4(&out, none, 0);
}

static void test_proxy_v1_tcp6(void **state)
{
    static const unsigned char src[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 0x01};
    static const unsigned char mapped[16] = {[10] = 0xff, 0xff, 192, 0, 2, 1};
    struct ioloop_proxy_header out;

    (void)state;
    check_valid_text("PROXY TCP6 2001:db8::1 ::1 443 8080\r\n", &out);
    expect_inet6(&out, src, 443);
    /* Upper-case hex, leading zeros in groups, and an IPv4 tail: all what inet_pton takes. */
    check_valid_text("PROXY TCP6 2001:0DB8:0:0:0:0:0:0001 :: 0 1\r\n", &out);
    expect_inet6(&out, src, 0);
    check_valid_text("PROXY TCP6 ::ffff:192.0.2.1 ::ffff:10.0.0.1 12345 80\r\n", &out);
    expect_inet6(&out, mapped, 12345);
}

/* The specification's longest TCP6 line (104 bytes), and a 107-byte one that is only as
 * long because its addresses are written the longest way inet_pton takes. */
static void test_proxy_v1_tcp6_longest(void **state)
{
    static const unsigned char all[16] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    };
    static const unsigned char mapped[16] = {[10] = 0xff, 0xff, 255, 255, 255, 255};
    const char *spec = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                       "FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF 65535 65535\r\n";
    const char *longest = "PROXY TCP6 0000:0000:0000:0000:0000:ffff:255.255.255.255 "
                          "0000:0000:0000:0000:0000:ffff:255.255.255.25 1 2\r\n";
    struct ioloop_proxy_header out;

    (void)state;
    assert_int_equal(strlen(spec), 104);
    check_valid_text(spec, &out);
    expect_inet6(&out, all, 65535);
    assert_int_equal(strlen(longest), V1_MAX);
    check_valid_text(longest, &out);
    expect_inet6(&out, mapped, 1);
}

static void test_proxy_v1_unknown(void **state)
{
    struct ioloop_proxy_header out;

    (void)state;
    check_valid_text("PROXY UNKNOWN\r\n", &out);
    expect_local(&out);
}

/* With UNKNOWN, what comes between a space and CRLF is ignored, whatever it is; the
 * specification's worst case is exactly 107 bytes. */
static void test_proxy_v1_unknown_with_fields(void **state)
{
    static const char binary[] = "PROXY UNKNOWN \x01\x00\xff\tx\r\n";
    const char *worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    struct ioloop_proxy_header out;

    (void)state;
    assert_int_equal(strlen(worst), V1_MAX);
    check_valid_text(worst, &out);
    expect_local(&out);
    check_valid_text("PROXY UNKNOWN TCP4 1.2.3.4 5.6.7.8 1 2\r\n", &out);
    expect_local(&out);
    check_valid_text("PROXY UNKNOWN \r\n", &out);
    expect_local(&out);
    check_valid(binary, sizeof binary - 1, &out);
    expect_local(&out);
}

/* Many random addresses and ports, written in the ways inet_ntop and people write them. */
static void test_proxy_v1_random_addresses(void **state)
{
    uint64_t rng = ADDRESS_SEED;

    (void)state;
    for (int round = 0; round < ADDRESS_ROUNDS; round++) {
        unsigned char src[16], dst[16];
        char s[64], d[64], line[256];
        unsigned sport = rng_below(&rng, 65536), dport = rng_below(&rng, 65536);
        bool v6 = round % 2 == 1;
        struct ioloop_proxy_header out;
        int n;

        for (int i = 0; i < 16; i += 2) { /* some zero groups, for "::" to replace */
            unsigned group = rng_below(&rng, 3) == 0 ? 0 : rng_below(&rng, 65536);

            src[i] = (unsigned char)(group >> 8);
            src[i + 1] = (unsigned char)group;
            group = rng_below(&rng, 3) == 0 ? 0 : rng_below(&rng, 65536);
            dst[i] = (unsigned char)(group >> 8);
            dst[i + 1] = (unsigned char)group;
        }
        if (!v6) {
            assert_non_null(inet_ntop(AF_INET, src, s, sizeof s));
            assert_non_null(inet_ntop(AF_INET, dst, d, sizeof d));
        } else if (round % 4 == 1) {
            assert_non_null(inet_ntop(AF_INET6, src, s, sizeof s));
            assert_non_null(inet_ntop(AF_INET6, dst, d, sizeof d));
        } else {
            /* Six groups in full, upper case, then the last four bytes as a dotted quad. */
            snprintf(s, sizeof s, "%X:%X:%X:%X:%X:%X:%u.%u.%u.%u", src[0] << 8 | src[1],
                     src[2] << 8 | src[3], src[4] << 8 | src[5], src[6] << 8 | src[7],
                     src[8] << 8 | src[9], src[10] << 8 | src[11], src[12], src[13], src[14],
                     src[15]);
            snprintf(d, sizeof d, "%04x:%04x:%04x:%04x:%04x:%04x:%04x:%04x",
                     dst[0] << 8 | dst[1], dst[2] << 8 | dst[3], dst[4] << 8 | dst[5],
                     dst[6] << 8 | dst[7], dst[8] << 8 | dst[9], dst[10] << 8 | dst[11],
                     dst[12] << 8 | dst[13], dst[14] << 8 | dst[15]);
        }
        n = snprintf(line, sizeof line, "PROXY %s %s %s %u %u\r\n", v6 ? "TCP6" : "TCP4", s,
                     d, sport, dport);
        assert_true(n > 0);
        if (n > V1_MAX) { /* the dotted and the full form together can be too long */
            assert_int_equal(parse_copy(line, (size_t)n, &out), -EPROTO);
            continue;
        }
        check_valid(line, (size_t)n, &out);
        if (v6)
            expect_inet6(&out, src, sport);
        else
            expect_inet4(&out, src, sport);
    }
}

/* ---- Version 1: refused lines ----------------------------------------------------------- */

/* v1 lines that are wrong somewhere, grouped by what is wrong. */
static const char *const malformed_v1[] = {
    "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",        /* the keyword is upper case */
    "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    " PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",       /* double spaces */
    "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",       /* a trailing space */
    "PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",        /* unknown protocols */
    "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP4 ::1 ::2 1 2\r\n",                /* the wrong family for the protocol */
    "PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP6 ::1 5.6.7.8 1 2\r\n",
    "PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n",      /* bad IPv4 addresses */
    "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
    "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8. 1 2\r\n",
    "PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP6 12345::1 ::2 1 2\r\n",           /* bad IPv6 addresses */
    "PROXY TCP6 1::2::3 ::2 1 2\r\n",
    "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::2 1 2\r\n",
    "PROXY TCP6 1:2:3:4:5:6:7 ::2 1 2\r\n",
    "PROXY TCP6 1:2:3:4:5:6:7:8:: ::2 1 2\r\n",
    "PROXY TCP6 ::1:2:3:4:5:6:7:8 ::2 1 2\r\n",
    "PROXY TCP6 :1 ::2 1 2\r\n",
    "PROXY TCP6 1: ::2 1 2\r\n",
    "PROXY TCP6 ::: ::2 1 2\r\n",
    "PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n",
    "PROXY TCP6 ::g ::2 1 2\r\n",
    "PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::2 1 2\r\n",
    "PROXY TCP6 ::1.2.3 ::2 1 2\r\n",
    "PROXY TCP6 ::01.2.3.4 ::2 1 2\r\n",
    "PROXY TCP6 [::1] ::2 1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",    /* bad ports */
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",          /* missing or extra fields */
    "PROXY TCP4 1.2.3.4 5.6.7.8\r\n",
    "PROXY TCP4 1.2.3.4\r\n",
    "PROXY TCP4\r\n",
    "PROXY TCP4 \r\n",
    "PROXY \r\n",
    "PROXY\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",          /* line ends other than CRLF */
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n",
    "PROXY UNKNOWN\n",
    "PROXY UNKNOWN\r\r\n",
    "PROXY UNKNOWN\rx\n",
    "PROXY UNKNOWN foo\nbar\r\n",
    "PROXY UNKNOWNX\r\n",                        /* UNKNOWN runs into another word */
    "PROXY UNKNOWN2 1.2.3.4\r\n",
    "PROXY UNKNOW\r\n",
};

/* Lines that are wrong somewhere; each is refused, and so is everything after it. */
static void test_proxy_v1_malformed(void **state)
{
    static const char nul[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
    struct ioloop_proxy_header out;

    (void)state;
    for (size_t i = 0; i < sizeof malformed_v1 / sizeof malformed_v1[0]; i++) {
        const char *line = malformed_v1[i];
        size_t len = strlen(line);

        /* A line ending in a lone CR is a valid beginning: it only needs all of its bytes
         * and one more to be refused. */
        if (line[len - 1] == '\r') {
            char longer[64];

            assert_true(len < sizeof longer);
            memcpy(longer, line, len);
            longer[len] = 'x';
            assert_int_equal(rejected_at(longer, len + 1), len + 1);
            continue;
        }
        if (parse_copy(line, len, &out) != -EPROTO)
            fail_msg("\"%s\" was not refused", line);
        (void)rejected_at_text(line);
    }
    /* A NUL is no end of field: refused where it stands. */
    assert_true(rejected_at(nul, sizeof nul - 1) == strlen(nul) + 1);
}

/* v1 lines refused at a known byte. */
static const struct {
    const char *good; /* the longest valid beginning */
    const char *bad;  /* what breaks it at its first byte */
} early_v1[] = {
    {"", "GET / HTTP/1.1\r\n"},
    {"", "\x16\x03\x01\x02\x00"}, /* a TLS ClientHello */
    {"", "proxy TCP4"},
    {"PROXY ", " TCP4"},
    {"PROXY TCP", "5 "},
    {"PROXY UNKNOWN", "X"},
    {"PROXY UNKNOWN", "\n"},
    {"PROXY UNKNOWN foo", "\n"},
    {"PROXY UNKNOWN\r", "x"},
    {"PROXY TCP4 25", "6"},
    {"PROXY TCP4 0", "1"},
    {"PROXY TCP4 1.2.3.4", "."},
    {"PROXY TCP4 1.2.3.4 ", " "},
    {"PROXY TCP4 1.2.3", " "},
    {"PROXY TCP4 ", ":"},
    {"PROXY TCP6 1", "."},                /* a dotted quad cannot come first */
    {"PROXY TCP6 1:2:3:4:5:6:7:8", ":"},  /* no room for a ninth group */
    {"PROXY TCP6 ::1:2:3:4:5:6:7", ":"},
    {"PROXY TCP6 1:2:3:4:5:6::1", "."},   /* no room for a dotted quad */
    {"PROXY TCP6 1234", "5"},
    {"PROXY TCP6 ::1:", ":"},
    {"PROXY TCP6 :", "1"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 6553", "6"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 0", "0"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 ", "+1"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", "\n"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", " "},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", "\r"},
};

/* Refusal comes at the first byte that proves a line wrong, not later. */
static void test_proxy_v1_rejected_early(void **state)
{

    (void)state;
    for (size_t i = 0; i < sizeof early_v1 / sizeof early_v1[0]; i++) {
        char text[128];
        size_t at;

        snprintf(text, sizeof text, "%s%s", early_v1[i].good, early_v1[i].bad);
        at = rejected_at_text(text);
        if (at != strlen(early_v1[i].good) + 1)
            fail_msg("\"%s\" + \"%s\" was refused after %zu bytes, want %zu", early_v1[i].good,
                     early_v1[i].bad, at, strlen(early_v1[i].good) + 1);
    }
}

/* A line longer than 107 bytes is refused as soon as its CRLF can no longer fit. */
static void test_proxy_v1_too_long(void **state)
{
    char line[V1_MAX + 32];
    size_t len;
    struct ioloop_proxy_header out;

    (void)state;
    /* UNKNOWN: 106 bytes without CR leave no room for CRLF within 107. */
    len = (size_t)snprintf(line, sizeof line, "PROXY UNKNOWN %.*s\r\n", 92,
                           "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                           "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    assert_int_equal(len, V1_MAX + 1);
    assert_int_equal(rejected_at(line, len), V1_MAX - 1);
    /* One byte shorter fits exactly. */
    memmove(line + len - 3, line + len - 2, 3);
    check_valid(line, len - 1, &out);
    expect_local(&out);
    /* A CR as the 107th byte leaves no room for its LF: refused before it comes. */
    line[V1_MAX - 2] = 'x';
    line[V1_MAX - 1] = '\r';
    assert_int_equal(rejected_at(line, V1_MAX), V1_MAX - 1);
    /* TCP6 with the longest address texts: 102 bytes in the destination address leave no
     * room for " 1 2\r\n". */
    len = (size_t)snprintf(line, sizeof line, "PROXY TCP6 %s %s 1 2\r\n",
                           "0000:0000:0000:0000:0000:ffff:255.255.255.255",
                           "0000:0000:0000:0000:0000:ffff:255.255.255.255");
    assert_int_equal(len, V1_MAX + 1);
    assert_int_equal(rejected_at(line, len), 102);
}

/* Every beginning of an address that inet_pton() can complete asks for more, and (for those
 * short enough for the oracle to know) every other one is refused: all strings over a small
 * alphabet, as the source address of a TCP4 and a TCP6 line. */
static void oracle_check(int family, const char *protocol)
{
    size_t offset[ORACLE_LEN + 2] = {0}; /* where each length's strings start in the table */
    bool *completes;
    char line[32], text[ORACLE_LEN + 1];
    unsigned char addr[16];
    struct ioloop_proxy_header out;
    size_t plen = strlen(protocol);

    for (size_t len = 0; len <= ORACLE_LEN; len++)
        offset[len + 1] = offset[len] + ((size_t)1 << (2 * len));
    completes = calloc(offset[ORACLE_LEN + 1], sizeof *completes);
    assert_non_null(completes);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t len = 0; len <= ORACLE_LEN; len++) {
            for (size_t v = 0; v < ((size_t)1 << (2 * len)); v++) {
                for (size_t i = 0; i < len; i++)
                    text[i] = ORACLE_ALPHABET[(v >> (2 * (len - 1 - i))) & 3];
                text[len] = '\0';
                if (pass == 0) { /* mark the beginnings of every valid address */
                    if (inet_pton(family, text, addr) == 1)
                        for (size_t p = 0; p <= len; p++)
                            completes[offset[p] + (v >> (2 * (len - p)))] = true;
                    continue;
                }
                memcpy(line, protocol, plen);
                memcpy(line + plen, text, len);
                int rc = ioloop__proxy_parse(line, plen + len, &out);
                if (completes[offset[len] + v] ? rc != 0 : len <= ORACLE_EXACT && rc != -EPROTO)
                    fail_msg("%s\"%s\": %d, but inet_pton %s complete it", protocol, text, rc,
                             completes[offset[len] + v] ? "can" : "cannot");
            }
        }
    }
    free(completes);
}

static void test_proxy_v1_address_prefixes_match_inet_pton(void **state)
{
    (void)state;
    oracle_check(AF_INET, "PROXY TCP4 ");
    oracle_check(AF_INET6, "PROXY TCP6 ");
}

/* ---- Version 2: valid headers ----------------------------------------------------------- */

static void test_proxy_v2_tcp4(void **state)
{
    unsigned char hdr[64];
    struct ioloop_proxy_header out;

    (void)state;
    check_valid(hdr, v2_tcp4(hdr), &out);
    assert_int_equal(v2_tcp4(hdr), V2_FIXED + BLOCK_TCP4);
    expect_inet4(&out, tcp4_src, 50000);
}

static void test_proxy_v2_tcp6(void **state)
{
    static const unsigned char block[BLOCK_TCP6] = {
        0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,      /* source */
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,         /* destination */
        0xFF, 0xFE, 0x00, 0x50,                                             /* 65534, 80 */
    };
    unsigned char hdr[64];
    size_t len = v2_header(hdr, 0x21, 0x21, block, sizeof block);
    struct ioloop_proxy_header out;

    (void)state;
    assert_int_equal(len, V2_FIXED + BLOCK_TCP6);
    check_valid(hdr, len, &out);
    expect_inet6(&out, block, 65534);
}

static void test_proxy_v2_unix(void **state)
{
    unsigned char block[BLOCK_UNIX] = {0};
    unsigned char hdr[V2_FIXED + BLOCK_UNIX];
    char longest[UNIX_PATH];
    struct ioloop_proxy_header out;

    (void)state;
    strcpy((char *)block, "/run/client.sock");
    strcpy((char *)block + UNIX_PATH, "/run/server.sock");
    check_valid(hdr, v2_header(hdr, 0x21, 0x31, block, sizeof block), &out);
    assert_int_equal(ioloop__proxy_parse(hdr, sizeof hdr, &out), V2_FIXED + BLOCK_UNIX);
    expect_unix(&out, "/run/client.sock");
    /* A path that fills all 108 bytes but its NUL: src_len is all of a sockaddr_un. */
    memset(longest, 'p', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    memcpy(block, longest, sizeof longest);
    check_valid(hdr, v2_header(hdr, 0x21, 0x31, block, sizeof block), &out);
    expect_unix(&out, longest);
    assert_int_equal(out.src_len, sizeof(struct sockaddr_un));
    /* The destination path is not the parser's business: no NUL needed there. */
    memset(block + UNIX_PATH, 'q', UNIX_PATH);
    check_valid(hdr, v2_header(hdr, 0x21, 0x31, block, sizeof block), &out);
    expect_unix(&out, longest);
}

/* LOCAL without addresses: what HAProxy's health checks send. */
static void test_proxy_v2_local(void **state)
{
    unsigned char hdr[V2_FIXED];
    struct ioloop_proxy_header out;

    (void)state;
    check_valid(hdr, v2_header(hdr, 0x20, 0x00, NULL, 0), &out);
    expect_local(&out);
}

/* LOCAL with an address block (and TLVs after it): the addresses are skipped unread, even a
 * UNIX source path without its NUL. */
static void test_proxy_v2_local_with_addresses(void **state)
{
    unsigned char body[BLOCK_UNIX + 16];
    unsigned char hdr[V2_FIXED + sizeof body];
    size_t len = sizeof tcp4_block;
    struct ioloop_proxy_header out;

    (void)state;
    memcpy(body, tcp4_block, sizeof tcp4_block);
    check_valid(hdr, v2_header(hdr, 0x20, 0x11, body, len), &out);
    expect_local(&out);
    add_tlv(body, &len, 0x04, "pad", 3);
    check_valid(hdr, v2_header(hdr, 0x20, 0x11, body, len), &out);
    assert_int_equal(ioloop__proxy_parse(hdr, V2_FIXED + len, &out), V2_FIXED + BLOCK_TCP4 + 6);
    expect_local(&out);
    memset(body, 'x', BLOCK_UNIX);
    check_valid(hdr, v2_header(hdr, 0x20, 0x31, body, BLOCK_UNIX), &out);
    expect_local(&out);
}

/* PROXY with AF_UNSPEC: the proxy does not know the client's address, so the peer stands. */
static void test_proxy_v2_unspec(void **state)
{
    unsigned char body[16];
    unsigned char hdr[V2_FIXED + sizeof body];
    size_t len = 0;
    struct ioloop_proxy_header out;

    (void)state;
    check_valid(hdr, v2_header(hdr, 0x21, 0x00, NULL, 0), &out);
    expect_local(&out);
    add_tlv(body, &len, 0x04, NULL, 0);
    check_valid(hdr, v2_header(hdr, 0x21, 0x00, body, len), &out);
    expect_local(&out);
}

/* TLVs after the addresses are part of the header: AUTHORITY, NOOPs (empty too), an SSL TLV
 * with sub-TLVs, and a custom type. */
static void test_proxy_v2_tlvs(void **state)
{
    static const unsigned char ssl[] = {
        0x01, 0, 0, 0, 0,                     /* client: SSL; verify: 0 */
        0x21, 0x00, 0x07, 'T', 'L', 'S', 'v', '1', '.', '3', /* PP2_SUBTYPE_SSL_VERSION */
    };
    unsigned char body[256];
    unsigned char hdr[V2_FIXED + sizeof body];
    size_t len = sizeof tcp4_block;
    struct ioloop_proxy_header out;

    (void)state;
    memcpy(body, tcp4_block, sizeof tcp4_block);
    add_tlv(body, &len, 0x02, "example.com", 11);
    add_tlv(body, &len, 0x04, NULL, 0);
    add_tlv(body, &len, 0x04, "\0\0\0\0\0", 5);
    add_tlv(body, &len, 0x20, ssl, sizeof ssl);
    add_tlv(body, &len, 0xE0, "custom", 6);
    assert_int_equal(len, BLOCK_TCP4 + 14 + 3 + 8 + 3 + sizeof ssl + 9);
    check_valid(hdr, v2_header(hdr, 0x21, 0x11, body, len), &out);
    assert_int_equal(ioloop__proxy_parse(hdr, V2_FIXED + len, &out), (int)(V2_FIXED + len));
    expect_inet4(&out, tcp4_src, 50000);
}

/* The longest header accepted: a 4096-byte body, TLVs filling all but the addresses. */
static void test_proxy_v2_longest(void **state)
{
    static unsigned char body[V2_BODY_MAX];
    static unsigned char hdr[IOLOOP__PROXY_MAX];
    static unsigned char value[V2_BODY_MAX];
    size_t len = sizeof tcp4_block;
    struct ioloop_proxy_header out;

    (void)state;
    memcpy(body, tcp4_block, sizeof tcp4_block);
    memset(value, 0xEE, sizeof value);
    add_tlv(body, &len, 0x04, value, V2_BODY_MAX - BLOCK_TCP4 - 3);
    assert_int_equal(len, V2_BODY_MAX);
    assert_int_equal(v2_header(hdr, 0x21, 0x11, body, len), IOLOOP__PROXY_MAX);
    check_valid(hdr, IOLOOP__PROXY_MAX, &out);
    expect_inet4(&out, tcp4_src, 50000);
}

/* ---- Version 2: refused headers --------------------------------------------------------- */

/* Any other byte anywhere in the signature is refused at that byte. A 'P' first starts a v1
 * line instead, refused at the byte after it. */
static void test_proxy_v2_bad_signature(void **state)
{
    unsigned char hdr[64], bad[64];
    size_t len = v2_tcp4(hdr);

    (void)state;
    for (size_t pos = 0; pos < sizeof signature; pos++) {
        for (unsigned v = 0; v < 256; v++) {
            if (v == signature[pos])
                continue;
            memcpy(bad, hdr, len);
            bad[pos] = (unsigned char)v;
            size_t want = pos == 0 && v == 'P' ? 2 : pos + 1;
            size_t at = rejected_at(bad, len);
            if (at != want)
                fail_msg("0x%02x at %zu: refused after %zu bytes, want %zu", v, pos, at, want);
        }
    }
}

/* The version nibble must be 2, the command 0 or 1: refused at the 13th byte. */
static void test_proxy_v2_bad_version_and_command(void **state)
{
    unsigned char hdr[64];

    (void)state;
    for (unsigned v = 0; v < 256; v++) {
        size_t len = v2_header(hdr, v, 0x11, tcp4_block, sizeof tcp4_block);

        if (v == 0x20 || v == 0x21)
            continue;
        assert_int_equal(rejected_at(hdr, len), 13);
    }
    for (unsigned version = 0; version < 16; version++) { /* versions 1 and 3 explicitly */
        if (version != 2)
            assert_int_equal(rejected_at(hdr, v2_header(hdr, version << 4 | 1, 0x11,
                                                         tcp4_block, sizeof tcp4_block)),
                             13);
    }
}

/* Only UNSPEC, TCP over IPv4 or IPv6 and UNIX stream: datagram families and unassigned values
 * are refused at the 14th byte, with either command. */
static void test_proxy_v2_bad_family(void **state)
{
    unsigned char body[BLOCK_UNIX] = {0};
    unsigned char hdr[V2_FIXED + BLOCK_UNIX];

    (void)state;
    for (unsigned cmd = 0x20; cmd <= 0x21; cmd++) {
        for (unsigned fam = 0; fam < 256; fam++) {
            if (fam == 0x00 || fam == 0x11 || fam == 0x21 || fam == 0x31)
                continue;
            assert_int_equal(rejected_at(hdr, v2_header(hdr, cmd, fam, body, sizeof body)),
                             14);
        }
    }
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x12, body, BLOCK_TCP4)), 14);
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x22, body, BLOCK_TCP6)), 14);
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x32, body, BLOCK_UNIX)), 14);
}

/* A length too short for the family's address block is refused once the length is there,
 * whatever the command. */
static void test_proxy_v2_length_too_short(void **state)
{
    static const struct {
        unsigned fam;
        size_t block;
    } families[] = {{0x11, BLOCK_TCP4}, {0x21, BLOCK_TCP6}, {0x31, BLOCK_UNIX}};
    unsigned char body[BLOCK_UNIX];
    unsigned char hdr[V2_FIXED + BLOCK_UNIX];

    (void)state;
    memset(body, 0, sizeof body);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        for (unsigned cmd = 0x20; cmd <= 0x21; cmd++) {
            size_t short_by_one = families[i].block - 1;

            assert_int_equal(rejected_at(hdr, v2_header(hdr, cmd, families[i].fam, body,
                                                         short_by_one)),
                             V2_FIXED);
            assert_int_equal(rejected_at(hdr, v2_header(hdr, cmd, families[i].fam, NULL, 0)),
                             V2_FIXED);
        }
    }
}

/* A length beyond IOLOOP__PROXY_MAX - 16 is refused: at the 15th byte when its high byte
 * alone is too much, else at the 16th. */
static void test_proxy_v2_length_too_long(void **state)
{
    unsigned char hdr[V2_FIXED + BLOCK_TCP4];

    (void)state;
    v2_tcp4(hdr);
    hdr[14] = (unsigned char)(V2_BODY_MAX >> 8);
    hdr[15] = (unsigned char)(V2_BODY_MAX + 1);
    assert_int_equal(V2_BODY_MAX, 0x1000);
    assert_int_equal(rejected_at(hdr, sizeof hdr), V2_FIXED);
    hdr[15] = 0xFF;
    assert_int_equal(rejected_at(hdr, sizeof hdr), V2_FIXED);
    hdr[14] = (unsigned char)(V2_BODY_MAX >> 8) + 1;
    hdr[15] = 0;
    assert_int_equal(rejected_at(hdr, sizeof hdr), 15);
    hdr[14] = 0xFF;
    assert_int_equal(rejected_at(hdr, sizeof hdr), 15);
}

/* TLVs must fill the body exactly; one that runs past it is refused as soon as its length
 * is there, before its value. */
static void test_proxy_v2_bad_tlvs(void **state)
{
    unsigned char body[64];
    unsigned char hdr[V2_FIXED + sizeof body];
    size_t len;

    (void)state;
    memcpy(body, tcp4_block, sizeof tcp4_block);
    /* A TLV announcing 10 value bytes with 5 left. */
    len = sizeof tcp4_block;
    add_tlv(body, &len, 0x02, "abcde", 5);
    body[BLOCK_TCP4 + 2] = 10;
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x11, body, len)),
                     V2_FIXED + BLOCK_TCP4 + 3);
    /* 1 or 2 bytes after the addresses: too few for a TLV's head. */
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x11, body, BLOCK_TCP4 + 1)),
                     V2_FIXED);
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x11, body, BLOCK_TCP4 + 2)),
                     V2_FIXED);
    /* A valid TLV followed by 2 bytes. */
    len = sizeof tcp4_block;
    add_tlv(body, &len, 0x04, "ab", 2);
    len += 2;
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x11, body, len)),
                     V2_FIXED + BLOCK_TCP4 + 3);
    /* The second TLV runs past the end by one byte. */
    len = sizeof tcp4_block;
    add_tlv(body, &len, 0x04, "ab", 2);
    add_tlv(body, &len, 0x05, "c", 1);
    body[len - 2] = 2;
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x11, body, len)),
                     V2_FIXED + BLOCK_TCP4 + 5 + 3);
    /* With no addresses, the TLVs start right after the fixed part; LOCAL checks them too. */
    len = 0;
    add_tlv(body, &len, 0x04, "x", 1);
    body[1] = 0x01;
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x00, body, len)), V2_FIXED + 3);
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x20, 0x00, body, len)), V2_FIXED + 3);
}

/* A UNIX source path without a NUL in its 108 bytes is refused once they are all there. */
static void test_proxy_v2_unix_unterminated(void **state)
{
    unsigned char block[BLOCK_UNIX];
    unsigned char hdr[V2_FIXED + BLOCK_UNIX];

    (void)state;
    memset(block, 'p', UNIX_PATH);
    memset(block + UNIX_PATH, 0, UNIX_PATH);
    assert_int_equal(rejected_at(hdr, v2_header(hdr, 0x21, 0x31, block, sizeof block)),
                     V2_FIXED + UNIX_PATH);
}

/* ---- Both versions ---------------------------------------------------------------------- */

/* The first byte decides: only 'P' or CR can begin a header. */
static void test_proxy_rejects_first_byte(void **state)
{
    struct ioloop_proxy_header out;

    (void)state;
    assert_int_equal(ioloop__proxy_parse("G", 1, &out), -EPROTO);
    assert_int_equal(ioloop__proxy_parse("", 0, &out), 0);
    for (unsigned v = 0; v < 256; v++) {
        unsigned char byte = (unsigned char)v;

        assert_int_equal(parse_copy(&byte, 1, &out), v == 'P' || v == '\r' ? 0 : -EPROTO);
    }
}

/* Whatever len says, nothing past IOLOOP__PROXY_MAX is read: here len is larger than the
 * block on purpose, and ASan reports any read past its end. */
static void test_proxy_reads_at_most_max(void **state)
{
    unsigned char *hdr = malloc(IOLOOP__PROXY_MAX);
    unsigned char *line = malloc(V1_MAX);
    static unsigned char body[V2_BODY_MAX];
    size_t len = sizeof tcp4_block;
    struct ioloop_proxy_header out;

    (void)state;
    assert_non_null(hdr);
    assert_non_null(line);
    memcpy(body, tcp4_block, sizeof tcp4_block);
    add_tlv(body, &len, 0x04, NULL, V2_BODY_MAX - BLOCK_TCP4 - 3);
    v2_header(hdr, 0x21, 0x11, body, len);
    assert_int_equal(ioloop__proxy_parse(hdr, 2 * IOLOOP__PROXY_MAX, &out), IOLOOP__PROXY_MAX);
    memset(line, 'x', V1_MAX);
    memcpy(line, "PROXY UNKNOWN ", 14);
    assert_int_equal(ioloop__proxy_parse(line, 2 * IOLOOP__PROXY_MAX, &out), -EPROTO);
    free(line);
    free(hdr);
}

/* Checks one fuzz input: the answer is -EPROTO, 0 or a length within it; only a length
 * writes *out; a length is the same for the header alone, whose last byte is needed; and a
 * refusal stays a refusal with one more byte. */
static void fuzz_one(const unsigned char *in, size_t len, uint64_t *rng)
{
    struct ioloop_proxy_header out, again, before;
    int rc;

    memset(&before, 0xA5, sizeof before);
    memset(&out, 0xA5, sizeof out);
    rc = parse_copy(in, len, &out);
    if (rc == 0 || rc == -EPROTO) {
        assert_memory_equal(&out, &before, sizeof out);
    } else if (rc > 0 && (size_t)rc <= len && rc <= IOLOOP__PROXY_MAX) {
        assert_true(out.local ? out.src_len == 0 : out.src_len > 0);
        assert_int_equal(parse_copy(in, (size_t)rc, &again), rc);
        assert_memory_equal(&again, &out, sizeof out);
        assert_int_equal(parse_copy(in, (size_t)rc - 1, &again), 0);
    } else {
        fail_msg("%zu bytes gave %d", len, rc);
    }
    if (rc == -EPROTO) {
        unsigned char *longer = malloc(len + 1);

        assert_non_null(longer);
        memcpy(longer, in, len);
        longer[len] = (unsigned char)rng_next(rng);
        assert_int_equal(parse_copy(longer, len + 1, &out), -EPROTO);
        free(longer);
    }
}

/* Builds a fuzz input into buf (of at least 2 * IOLOOP__PROXY_MAX bytes) from one of the
 * seeds (valid headers), and returns its length: random bytes, a v1 line of header-like
 * characters, a v2 header with random fields and TLV-shaped bodies, or a mutated seed. */
static size_t fuzz_input(unsigned char *buf, uint64_t *rng, const unsigned char *const *seeds,
                         const size_t *seed_lens, size_t nseeds)
{
    static const char chars[] = "0123456789abcdefABCDEF.: \r\nPROXYTCUNKW46";
    static const char *const starts[] = {"PROXY TCP4 ", "PROXY TCP6 ", "PROXY UNKNOWN", "P"};
    static const unsigned char fams[] = {0x00, 0x11, 0x21, 0x31, 0x12, 0x22, 0x32, 0x41};
    size_t len = 0, n;

    switch (rng_below(rng, 4)) {
    case 0: /* random bytes */
        len = rng_below(rng, 64);
        for (size_t i = 0; i < len; i++)
            buf[i] = (unsigned char)rng_next(rng);
        break;
    case 1: /* a v1 line of the characters a line holds */
        n = rng_below(rng, sizeof starts / sizeof starts[0]);
        len = strlen(starts[n]);
        memcpy(buf, starts[n], len);
        for (n = rng_below(rng, 120); n > 0; n--)
            buf[len++] = (unsigned char)chars[rng_below(rng, sizeof chars - 1)];
        break;
    case 2: /* a v2 header with likely values, then TLV-looking bytes */
        memcpy(buf, signature, sizeof signature);
        buf[12] = rng_below(rng, 8) == 0 ? (unsigned char)rng_next(rng) : 0x20 | rng_below(rng, 2);
        buf[13] = fams[rng_below(rng, sizeof fams)];
        n = rng_below(rng, 8) == 0 ? rng_below(rng, 65536) : rng_below(rng, 300);
        buf[14] = (unsigned char)(n >> 8);
        buf[15] = (unsigned char)n;
        len = V2_FIXED + (n < IOLOOP__PROXY_MAX ? n : IOLOOP__PROXY_MAX) + rng_below(rng, 4);
        for (size_t i = V2_FIXED; i < len; i++)
            buf[i] = rng_below(rng, 4) == 0 ? (unsigned char)rng_next(rng)
                                            : (unsigned char)rng_below(rng, 4);
        break;
    default: /* a valid header, mutated */
        n = rng_below(rng, (unsigned)nseeds);
        len = seed_lens[n];
        memcpy(buf, seeds[n], len);
        for (unsigned m = rng_below(rng, 3) + 1; m > 0; m--) {
            size_t at = rng_below(rng, (unsigned)len);

            switch (rng_below(rng, 3)) {
            case 0:
                buf[at] ^= (unsigned char)(1u << rng_below(rng, 8));
                break;
            case 1:
                buf[at] = (unsigned char)rng_next(rng);
                break;
            default:
                len = at + 1; /* truncated */
                break;
            }
        }
        if (rng_below(rng, 2) == 0) {
            memcpy(buf + len, APP_DATA, strlen(APP_DATA));
            len += strlen(APP_DATA);
        }
        break;
    }
    return len;
}

/* Random and mutated input: no crash, no read past the bytes (ASan), no answer but
 * -EPROTO, 0 or a length within the input, and the same answer for the same header. */
static void test_proxy_fuzz(void **state)
{
    static unsigned char buf[2 * IOLOOP__PROXY_MAX];
    unsigned char v2[4][V2_FIXED + BLOCK_UNIX + 32];
    unsigned char body[BLOCK_UNIX + 32] = {0};
    const char *lines[] = {
        "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        "PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 65535 0\r\n",
        "PROXY UNKNOWN ffff::1 ::2 3 4\r\n",
    };
    const unsigned char *seeds[7];
    size_t seed_lens[7], len = BLOCK_TCP4;
    uint64_t rng = FUZZ_SEED;

    (void)state;
    memcpy(body, tcp4_block, sizeof tcp4_block);
    add_tlv(body, &len, 0x02, "example.com", 11);
    seed_lens[0] = v2_header(v2[0], 0x21, 0x11, body, len);
    seed_lens[1] = v2_header(v2[1], 0x21, 0x21, body, BLOCK_TCP6);
    strcpy((char *)body, "/tmp/s");
    seed_lens[2] = v2_header(v2[2], 0x21, 0x31, body, BLOCK_UNIX);
    seed_lens[3] = v2_header(v2[3], 0x20, 0x00, NULL, 0);
    for (size_t i = 0; i < 4; i++)
        seeds[i] = v2[i];
    for (size_t i = 0; i < 3; i++) {
        seeds[4 + i] = (const unsigned char *)lines[i];
        seed_lens[4 + i] = strlen(lines[i]);
    }
    for (int round = 0; round < FUZZ_ROUNDS; round++) {
        len = fuzz_input(buf, &rng, seeds, seed_lens, 7);
        fuzz_one(buf, len, &rng);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proxy_v1_tcp4),
        cmocka_unit_test(test_proxy_v1_tcp4_extremes),
        cmocka_unit_test(test_proxy_v1_tcp6),
        cmocka_unit_test(test_proxy_v1_tcp6_longest),
        cmocka_unit_test(test_proxy_v1_unknown),
        cmocka_unit_test(test_proxy_v1_unknown_with_fields),
        cmocka_unit_test(test_proxy_v1_random_addresses),
        cmocka_unit_test(test_proxy_v1_malformed),
        cmocka_unit_test(test_proxy_v1_rejected_early),
        cmocka_unit_test(test_proxy_v1_too_long),
        cmocka_unit_test(test_proxy_v1_address_prefixes_match_inet_pton),
        cmocka_unit_test(test_proxy_v2_tcp4),
        cmocka_unit_test(test_proxy_v2_tcp6),
        cmocka_unit_test(test_proxy_v2_unix),
        cmocka_unit_test(test_proxy_v2_local),
        cmocka_unit_test(test_proxy_v2_local_with_addresses),
        cmocka_unit_test(test_proxy_v2_unspec),
        cmocka_unit_test(test_proxy_v2_tlvs),
        cmocka_unit_test(test_proxy_v2_longest),
        cmocka_unit_test(test_proxy_v2_bad_signature),
        cmocka_unit_test(test_proxy_v2_bad_version_and_command),
        cmocka_unit_test(test_proxy_v2_bad_family),
        cmocka_unit_test(test_proxy_v2_length_too_short),
        cmocka_unit_test(test_proxy_v2_length_too_long),
        cmocka_unit_test(test_proxy_v2_bad_tlvs),
        cmocka_unit_test(test_proxy_v2_unix_unterminated),
        cmocka_unit_test(test_proxy_rejects_first_byte),
        cmocka_unit_test(test_proxy_reads_at_most_max),
        cmocka_unit_test(test_proxy_fuzz),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
