/*
 * PROXY protocol header parsing (HAProxy's proxy-protocol.txt; see proxy.h). The parser keeps
 * no state between calls: each call reparses from the first byte, which costs nothing next to
 * the read() that brought the bytes, for a header of at most a few hundred bytes. Every step
 * says one of three things about the bytes it has seen: complete, a valid beginning (more is
 * needed), or invalid whatever follows. The last is said as early as the bytes allow, so that
 * a client speaking something else (an HTTP request, a TLS hello) is refused at its first
 * byte, and one that sends a header byte by byte is refused at the first wrong one.
 */
#include "net/proxy.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/un.h>

/* The v1 line's limit including CRLF: the spec's worst case is "PROXY UNKNOWN" followed by
 * two full-length IPv6 addresses and two 5-digit ports. */
#define V1_MAX 107
/* The longest address text inet_pton() takes: IPv6 with a dotted IPv4 tail (45 characters,
 * INET6_ADDRSTRLEN without its NUL). */
#define V1_ADDR_MAX 45
/* The fields after "TCP4 " or "TCP6 ": source and destination address, then their ports. */
#define V1_FIELDS 4

/* The v2 fixed part: 12 signature bytes, version and command, family and protocol, and the
 * 2-byte length of the rest. */
#define V2_FIXED 16
#define V2_SIG_LEN 12
/* A v2 UNIX address is sun_path-sized. */
#define V2_UNIX_PATH 108
/* A TLV's head: a type byte and a 2-byte big-endian length of the value after it. */
#define TLV_HEAD 3

/* The v2 family and protocol bytes we take. */
#define FAM_UNSPEC 0x00
#define FAM_TCP4 0x11
#define FAM_TCP6 0x21
#define FAM_UNIX 0x31

/* What a v1 field holds, for scan_field(). */
enum field_kind { FIELD_IPV4, FIELD_IPV6, FIELD_PORT };

static const unsigned char v2_signature[V2_SIG_LEN] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
};

_Static_assert(sizeof ((struct sockaddr_un *)0)->sun_path == V2_UNIX_PATH,
               "a v2 UNIX path is copied into sun_path whole");

/* ---- Version 1: one line of text ------------------------------------------------------- */

/* The answer for a valid beginning of n bytes that needs at least `more` bytes still: 0 while
 * the whole line can fit in V1_MAX bytes, -EPROTO once it cannot. */
static int v1_more(size_t n, size_t more)
{
    return n + more > V1_MAX ? -EPROTO : 0;
}

/* Matches the literal `lit` at *pos: 1 when all of it is there (*pos moves past it), 0 when
 * the bytes end inside a match, -EPROTO at the first byte that differs. */
static int expect(const unsigned char *p, size_t n, size_t *pos, const char *lit)
{
    size_t i = *pos;

    for (; *lit != '\0'; lit++, i++) {
        if (i == n)
            return 0;
        if (p[i] != (unsigned char)*lit)
            return -EPROTO;
    }
    *pos = i;
    return 1;
}

static bool is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Whether s[0..n) begins a dotted quad that inet_pton(AF_INET) takes: 4 decimal numbers
 * 0-255 without leading zeros, one dot between each two. Every such beginning can be
 * completed, so nothing needs counting beyond the 4 numbers. */
static bool ipv4_prefix(const unsigned char *s, size_t n)
{
    unsigned numbers = 0, value = 0, digits = 0;

    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9') {
            if (digits > 0 && value == 0)
                return false; /* a leading zero */
            value = value * 10 + (unsigned)(s[i] - '0');
            if (value > 255)
                return false;
            if (digits++ == 0)
                numbers++;
        } else if (s[i] == '.' && digits > 0 && numbers < 4) {
            value = 0;
            digits = 0;
        } else {
            return false;
        }
    }
    return true;
}

/* Whether s[0..n) begins an address that inet_pton(AF_INET6) takes: 8 groups of 1-4 hex
 * digits, one "::" at most standing for one or more zero groups, and the last two groups
 * optionally written as a dotted quad. Groups are counted, so that a beginning that leaves no
 * room for what must still come ("1:2:3:4:5:6:7:8:", "::1:2:3:4:5:6:7:8", "1.2") is refused
 * at once. */
static bool ipv6_prefix(const unsigned char *s, size_t n)
{
    size_t groups = 0; /* groups ended by a ':' */
    size_t digits = 0; /* of the group after them */
    size_t group = 0;  /* where that group starts */
    bool gap = false;  /* "::" seen */
    bool open = false; /* the last byte was a ':' that ended a group */
    size_t i = 0;

    if (n > 0 && s[0] == ':') { /* a leading ':' can only open "::" */
        if (n > 1 && s[1] != ':')
            return false;
        i = 1;
    }
    for (; i < n; i++) {
        if (is_hex(s[i])) {
            if (digits++ == 4)
                return false;
            open = false;
        } else if (s[i] == ':') {
            group = i + 1;
            if (digits == 0 && gap)
                return false; /* a second "::", or ":::" */
            gap = gap || digits == 0;
            groups += digits > 0;
            open = digits > 0;
            digits = 0;
        } else if (s[i] == '.') {
            /* The current group was the first number of a dotted quad, worth 2 groups: 8 in
             * all, or at most 7 when "::" must stand for at least one. */
            return ipv4_prefix(s + group, n - group) && (gap ? groups <= 5 : groups == 6);
        } else {
            return false;
        }
    }
    /* After a ':' that ended a group another group must come; "::" needs one group of room. */
    return groups + (digits > 0 || open) <= (gap ? 7u : 8u);
}

/* Whether s[0..n) begins a port: decimal, 0-65535, no leading zero (and no sign). */
static bool port_prefix(const unsigned char *s, size_t n, unsigned *value)
{
    unsigned v = 0;

    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || (i > 0 && v == 0))
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v > 65535)
            return false;
    }
    *value = v;
    return true;
}

/* Whether the n bytes at s begin a field of `kind`. */
static bool field_prefix(enum field_kind kind, const unsigned char *s, size_t n)
{
    unsigned port;

    switch (kind) {
    case FIELD_IPV4:
        return ipv4_prefix(s, n);
    case FIELD_IPV6:
        return ipv6_prefix(s, n);
    case FIELD_PORT:
        return port_prefix(s, n, &port);
    }
    return false;
}

/* Parses a whole field, which field_prefix() took, into *value: a struct in_addr, a struct
 * in6_addr, or a port (uint16_t, network byte order). Returns whether it is valid. */
static bool field_parse(enum field_kind kind, const unsigned char *s, size_t n, void *value)
{
    char text[V1_ADDR_MAX + 1];
    unsigned port;
    uint16_t be;

    if (kind == FIELD_PORT) {
        if (n == 0 || !port_prefix(s, n, &port))
            return false;
        be = htons((uint16_t)port);
        memcpy(value, &be, sizeof be);
        return true;
    }
    if (n > V1_ADDR_MAX) /* field_prefix() allows no more; this guards `text` regardless */
        return false;
    memcpy(text, s, n);
    text[n] = '\0';
    return inet_pton(kind == FIELD_IPV4 ? AF_INET : AF_INET6, text, value) == 1;
}

/* Parses the field at *pos, which ends at `delim`: 1 when it is whole and valid (*pos moves
 * past the delimiter and *value holds the field), 0 when the bytes end inside a valid
 * beginning of it, -EPROTO otherwise (an empty field is what a double space gives). */
static int scan_field(const unsigned char *p, size_t n, size_t *pos, enum field_kind kind,
                      unsigned char delim, void *value)
{
    size_t start = *pos, end = start;

    while (end < n && p[end] != delim)
        end++;
    if (!field_prefix(kind, p + start, end - start))
        return -EPROTO;
    if (end == n)
        return 0;
    if (!field_parse(kind, p + start, end - start, value))
        return -EPROTO;
    *pos = end + 1;
    return 1;
}

/* Sets out to an AF_INET or AF_INET6 source from its address and port bytes (network byte
 * order, any alignment); out is already zeroed. */
static void set_inet(struct ioloop_proxy_header *out, int family, const void *addr,
                     const void *port)
{
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&out->src;

        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, addr, sizeof in->sin_addr);
        memcpy(&in->sin_port, port, sizeof in->sin_port);
        out->src_len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->src;

        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, addr, sizeof in6->sin6_addr);
        memcpy(&in6->sin6_port, port, sizeof in6->sin6_port);
        out->src_len = sizeof *in6;
    }
}

/* The rest of a TCP4 or TCP6 line from pos: "<src> <dst> <sport> <dport>\r\n". */
static int parse_tcp(const unsigned char *p, size_t n, size_t pos, int family,
                     struct ioloop_proxy_header *out)
{
    enum field_kind addr_kind = family == AF_INET ? FIELD_IPV4 : FIELD_IPV6;
    struct in6_addr addr[2]; /* large enough for either family */
    uint16_t port[2];
    void *values[V1_FIELDS] = {&addr[0], &addr[1], &port[0], &port[1]};
    int rc;

    for (int f = 0; f < V1_FIELDS; f++) {
        size_t start = pos;
        bool last = f == V1_FIELDS - 1;

        rc = scan_field(p, n, &pos, f < 2 ? addr_kind : FIELD_PORT, last ? '\r' : ' ',
                        values[f]);
        /* Still to come: a byte of this field if it has none yet, a space and a byte for
         * each later field, and the CRLF. */
        if (rc == 0)
            return v1_more(n, (start == n) + 2 * (size_t)(V1_FIELDS - 1 - f) + 2);
        if (rc < 0)
            return rc;
    }
    rc = expect(p, n, &pos, "\n");
    if (rc <= 0)
        return rc == 0 ? v1_more(n, 1) : rc;
    memset(out, 0, sizeof *out);
    set_inet(out, family, &addr[0], &port[0]);
    return (int)pos;
}

/* The rest of an UNKNOWN line from pos: CRLF at once, or a space, anything but CR and LF
 * (the spec says to ignore it), and CRLF. */
static int parse_unknown(const unsigned char *p, size_t n, size_t pos,
                         struct ioloop_proxy_header *out)
{
    if (pos < n && p[pos] == ' ') {
        pos++;
        while (pos < n && p[pos] != '\r' && p[pos] != '\n')
            pos++;
    }
    if (pos == n)
        return v1_more(n, 2);
    if (p[pos] != '\r')
        return -EPROTO; /* an LF without CR, or "UNKNOWN" running into another word */
    if (++pos == n)
        return v1_more(n, 1);
    if (p[pos] != '\n')
        return -EPROTO;
    memset(out, 0, sizeof *out);
    out->local = true;
    return (int)(pos + 1);
}

/* "TCP4 ", "TCP6 " or "UNKNOWN" at *pos: 1 with *family set to AF_INET, AF_INET6 or
 * AF_UNSPEC (and *pos moved past it), 0 while the bytes begin one of them, else -EPROTO. */
static int parse_protocol(const unsigned char *p, size_t n, size_t *pos, int *family)
{
    static const struct {
        const char *name;
        int family;
    } protocols[] = {
        {"TCP4 ", AF_INET},
        {"TCP6 ", AF_INET6},
        {"UNKNOWN", AF_UNSPEC},
    };
    int rc = -EPROTO;

    for (size_t i = 0; i < sizeof protocols / sizeof protocols[0]; i++) {
        size_t at = *pos;
        int match = expect(p, n, &at, protocols[i].name);

        if (match > 0) {
            *pos = at;
            *family = protocols[i].family;
            return 1;
        }
        if (match == 0)
            rc = 0;
    }
    return rc;
}

/* "PROXY TCP4 ...\r\n", "PROXY TCP6 ...\r\n" or "PROXY UNKNOWN...\r\n", within V1_MAX bytes:
 * nothing beyond them is read. */
static int parse_v1(const unsigned char *p, size_t len, struct ioloop_proxy_header *out)
{
    size_t n = len < V1_MAX ? len : V1_MAX;
    size_t pos = 0;
    int family = AF_UNSPEC;
    int rc = expect(p, n, &pos, "PROXY ");

    if (rc > 0)
        rc = parse_protocol(p, n, &pos, &family);
    if (rc <= 0)
        return rc; /* at most 13 bytes so far: the length limit is still far */
    if (family == AF_UNSPEC)
        return parse_unknown(p, n, pos, out);
    return parse_tcp(p, n, pos, family, out);
}

/* ---- Version 2: binary ------------------------------------------------------------------ */

/* The address block's size for a family and protocol byte, or -1 for a refused one:
 * datagrams (0x12, 0x22, 0x32) cannot arrive on a stream connection, and other values are
 * unassigned. */
static int v2_block(unsigned char fam)
{
    switch (fam) {
    case FAM_UNSPEC:
        return 0;
    case FAM_TCP4:
        return 2 * 4 + 2 * 2; /* two addresses, two ports */
    case FAM_TCP6:
        return 2 * 16 + 2 * 2;
    case FAM_UNIX:
        return 2 * V2_UNIX_PATH;
    default:
        return -1;
    }
}

/* The fixed 16 bytes, each checked as soon as it is there: 1 once all are there and valid
 * (*body is the length of the rest, *block the address block's size), 0 while they are a
 * valid beginning, -EPROTO otherwise. */
static int v2_fixed(const unsigned char *p, size_t len, size_t *body, int *block)
{
    size_t sig = len < V2_SIG_LEN ? len : V2_SIG_LEN;

    if (memcmp(p, v2_signature, sig) != 0)
        return -EPROTO;
    /* The version (high nibble) must be 2, the command LOCAL (0) or PROXY (1). */
    if (len > 12 && ((p[12] >> 4) != 2 || (p[12] & 0x0F) > 1))
        return -EPROTO;
    if (len > 13 && (*block = v2_block(p[13])) < 0)
        return -EPROTO;
    /* The length's high byte alone can already say that it is too long. */
    if (len > 14 && ((size_t)p[14] << 8) > IOLOOP__PROXY_MAX - V2_FIXED)
        return -EPROTO;
    if (len < V2_FIXED)
        return 0;
    *body = (size_t)p[14] << 8 | p[15];
    if (*body > IOLOOP__PROXY_MAX - V2_FIXED || *body < (size_t)*block)
        return -EPROTO;
    return 1;
}

/* The TLVs that fill p[at..end) after the address block, as far as the len bytes there go:
 * 1 when their heads are all there and they fill it exactly, 0 while one's head is yet to
 * come, -EPROTO when one would run past end (or 1 or 2 bytes are left, too few for a head).
 * Values are not read, so they need not be there yet. */
static int v2_tlvs(const unsigned char *p, size_t len, size_t at, size_t end)
{
    while (at < end) {
        size_t value;

        if (end - at < TLV_HEAD)
            return -EPROTO;
        if (len < at + TLV_HEAD)
            return 0;
        value = (size_t)p[at + 1] << 8 | p[at + 2];
        if (value > end - at - TLV_HEAD)
            return -EPROTO;
        at += TLV_HEAD + value;
    }
    return 1;
}

/* Sets out from a whole, valid v2 header. */
static void v2_fill(const unsigned char *p, bool use_addresses, struct ioloop_proxy_header *out)
{
    const unsigned char *a = p + V2_FIXED;

    memset(out, 0, sizeof *out);
    if (!use_addresses) {
        out->local = true;
    } else if (p[13] == FAM_TCP4) {
        set_inet(out, AF_INET, a, a + 2 * 4);
    } else if (p[13] == FAM_TCP6) {
        set_inet(out, AF_INET6, a, a + 2 * 16);
    } else {
        struct sockaddr_un *un = (struct sockaddr_un *)&out->src;
        size_t n = (size_t)((const unsigned char *)memchr(a, '\0', V2_UNIX_PATH) - a);

        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, a, n + 1);
        out->src_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
}

/* The signature, the fixed part, the address block and the TLVs: 16 + length bytes. */
static int parse_v2(const unsigned char *p, size_t len, struct ioloop_proxy_header *out)
{
    size_t body = 0, total;
    int block = 0;
    bool use_addresses;
    int rc = v2_fixed(p, len, &body, &block);

    if (rc <= 0)
        return rc;
    total = V2_FIXED + body;
    /* LOCAL's addresses, if any, are skipped unread; PROXY with UNSPEC has none. */
    use_addresses = (p[12] & 0x0F) == 1 && p[13] != FAM_UNSPEC;
    if (use_addresses && p[13] == FAM_UNIX && len >= V2_FIXED + V2_UNIX_PATH &&
        memchr(p + V2_FIXED, '\0', V2_UNIX_PATH) == NULL)
        return -EPROTO; /* the source path does not end within its 108 bytes */
    rc = v2_tlvs(p, len, V2_FIXED + (size_t)block, total);
    if (rc <= 0)
        return rc;
    if (len < total)
        return 0;
    v2_fill(p, use_addresses, out);
    return (int)total;
}

/* ---- Entry point ------------------------------------------------------------------------ */

int ioloop__proxy_parse(const void *buf, size_t len, struct ioloop_proxy_header *out)
{
    const unsigned char *p = buf;

    assert(out != NULL);
    assert(p != NULL || len == 0);
    if (len == 0)
        return 0;
    /* The two versions differ at the first byte: 'P' of "PROXY", or the signature's CR. */
    if (p[0] == 'P')
        return parse_v1(p, len, out);
    if (p[0] == v2_signature[0])
        return parse_v2(p, len, out);
    return -EPROTO;
}
