/*
 * Addresses: parsing "host:port" strings and formatting socket addresses back into that form.
 * Hosts are numeric here, or host names checked against RFC 1123 and left to the resolver
 * (lib/net/resolve.c): nothing here looks a name up, since a loop must never block on it.
 */
#include "net/address.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <ioloop/server.h>

#define UNIX_PREFIX "unix:"

/* A port: 1 to 5 decimal digits, at most 65535, and nothing after it. */
static int parse_port(const char *s, in_port_t *port)
{
    unsigned value = 0;
    size_t n = strlen(s);

    if (n == 0 || n > 5)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        value = value * 10 + (unsigned)(s[i] - '0');
    }
    if (value > 65535)
        return -EINVAL;
    *port = htons((uint16_t)value);
    return 0;
}

static int parse_unix(const char *path, struct ioloop_address *addr)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&addr->ss;
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof un->sun_path)
        return -EINVAL;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n + 1);
    addr->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

static int parse_inet6(const char *text, struct ioloop_address *addr)
{
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr->ss;
    const char *close = strchr(text, ']');
    char host[INET6_ADDRSTRLEN];
    size_t n;

    if (close == NULL || close[1] != ':')
        return -EINVAL;
    n = (size_t)(close - (text + 1));
    if (n == 0 || n >= sizeof host)
        return -EINVAL;
    memcpy(host, text + 1, n);
    host[n] = '\0';
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1 || parse_port(close + 2, &in6->sin6_port) < 0)
        return -EINVAL;
    in6->sin6_family = AF_INET6;
    addr->len = sizeof *in6;
    return 0;
}

static int parse_inet(const char *text, struct ioloop_address *addr)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&addr->ss;
    const char *colon = strrchr(text, ':');
    char host[INET_ADDRSTRLEN];
    size_t n;

    if (colon == NULL)
        return -EINVAL;
    n = (size_t)(colon - text);
    if (n == 0 || n >= sizeof host)
        return -EINVAL;
    memcpy(host, text, n);
    host[n] = '\0';
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1 || parse_port(colon + 1, &in->sin_port) < 0)
        return -EINVAL;
    in->sin_family = AF_INET;
    addr->len = sizeof *in;
    return 0;
}

int ioloop__address_set_ip(struct ioloop_address *addr, int family, const void *ip,
                           uint16_t port)
{
    memset(addr, 0, sizeof *addr);
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&addr->ss;

        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        memcpy(&in->sin_addr, ip, sizeof in->sin_addr);
        addr->len = sizeof *in;
        return 0;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr->ss;

        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        memcpy(&in6->sin6_addr, ip, sizeof in6->sin6_addr);
        addr->len = sizeof *in6;
        return 0;
    }
    return -EAFNOSUPPORT;
}

/* A dotted quad or an IPv6 address, into *addr (if not NULL) with `port` (host order). */
static bool parse_numeric(const char *host, uint16_t port, struct ioloop_address *addr)
{
    unsigned char ip[sizeof(struct in6_addr)];
    int family = inet_pton(AF_INET, host, ip) == 1    ? AF_INET
                 : inet_pton(AF_INET6, host, ip) == 1 ? AF_INET6
                                                      : AF_UNSPEC;

    if (family == AF_UNSPEC)
        return false;
    if (addr != NULL)
        ioloop__address_set_ip(addr, family, ip, port);
    return true;
}

static bool is_letter_or_digit(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* RFC 1123 section 2.1, with RFC 1035's length limits. */
static bool is_host_name(const char *host)
{
    size_t len = strlen(host), label = 0;
    bool only_digits_and_dots = true;

    if (len > 0 && host[len - 1] == '.')
        len--; /* the root: "example.com." is fully qualified */
    if (len == 0 || len > IOLOOP__HOST_MAX - 1)
        return false;
    for (size_t i = 0; i <= len; i++) {
        char c = i < len ? host[i] : '.';

        if (c == '.') {
            if (label == 0 || label > 63 || host[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (c != '-' && !is_letter_or_digit(c))
            return false;
        if (c == '-' && label == 0)
            return false;
        if (c < '0' || c > '9')
            only_digits_and_dots = false;
        label++;
    }
    /* A dotted quad was taken as an address already: what looks numeric but is not one
     * ("127.1", "1.2.3.4.5", "256.0.0.1") is a mistake, not a name to ask DNS about. */
    return !only_digits_and_dots;
}

int ioloop__host_parse(const char *host, uint16_t port, struct ioloop_address *addr)
{
    if (host == NULL)
        return -EINVAL;
    if (parse_numeric(host, port, addr))
        return IOLOOP__HOST_NUMERIC;
    return is_host_name(host) ? IOLOOP__HOST_NAME : -EINVAL;
}

int ioloop__address_parse(const char *text, struct ioloop_address *addr)
{
    if (text == NULL || addr == NULL)
        return -EINVAL;
    memset(addr, 0, sizeof *addr);
    if (strncmp(text, UNIX_PREFIX, strlen(UNIX_PREFIX)) == 0)
        return parse_unix(text + strlen(UNIX_PREFIX), addr);
    if (text[0] == '[')
        return parse_inet6(text, addr);
    return parse_inet(text, addr);
}

int ioloop__address_parse_host(const char *text, struct ioloop_address *addr,
                               struct ioloop_host *host)
{
    const char *colon;
    in_port_t port;
    size_t n;

    if (ioloop__address_parse(text, addr) == 0)
        return IOLOOP__HOST_NUMERIC;
    if (text == NULL || host == NULL || (colon = strrchr(text, ':')) == NULL)
        return -EINVAL;
    n = (size_t)(colon - text);
    if (n > IOLOOP__HOST_MAX || parse_port(colon + 1, &port) < 0)
        return -EINVAL;
    memcpy(host->name, text, n);
    host->name[n] = '\0';
    host->port = ntohs(port);
    /* A numeric host would have parsed above: this is a name or nothing ("[::1", "::1"). */
    return ioloop__host_parse(host->name, 0, NULL) == IOLOOP__HOST_NAME ? IOLOOP__HOST_NAME
                                                                         : -EINVAL;
}

/* What snprintf() returned, as ioloop_address_format() returns it. */
static int fitted(int n, size_t size)
{
    return n < 0 ? -EINVAL : (size_t)n >= size ? -ENOSPC : n;
}

static int format_unix(const struct sockaddr_un *un, socklen_t len, char *buf, size_t size)
{
    size_t path = len - offsetof(struct sockaddr_un, sun_path);
    const char *name = un->sun_path;
    bool abstract = path > 0 && name[0] == '\0';
    int n;

    if (abstract) { /* the name is every byte after the NUL, not a string */
        name++;
        path--;
    } else {
        path = strnlen(name, path);
    }
    if (path > INT32_MAX)
        return -EINVAL;
    n = snprintf(buf, size, "unix:%s%.*s", abstract ? "@" : "", (int)path, name);
    return fitted(n, size);
}

int ioloop_address_format(const struct sockaddr *addr, socklen_t len, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];

    if (addr == NULL || buf == NULL)
        return -EINVAL;
    if (size == 0)
        return -ENOSPC;
    switch (addr->sa_family) {
    case AF_INET: { /* copied: a struct sockaddr * need not be aligned for sockaddr_in */
        struct sockaddr_in in;

        if (len < (socklen_t)sizeof in)
            return -EINVAL;
        memcpy(&in, addr, sizeof in);
        inet_ntop(AF_INET, &in.sin_addr, host, sizeof host);
        return fitted(snprintf(buf, size, "%s:%u", host, (unsigned)ntohs(in.sin_port)), size);
    }
    case AF_INET6: {
        struct sockaddr_in6 in6;

        if (len < (socklen_t)sizeof in6)
            return -EINVAL;
        memcpy(&in6, addr, sizeof in6);
        inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof host);
        return fitted(snprintf(buf, size, "[%s]:%u", host, (unsigned)ntohs(in6.sin6_port)),
                      size);
    }
    case AF_UNIX:
        if (len < (socklen_t)offsetof(struct sockaddr_un, sun_path) ||
            len > (socklen_t)sizeof(struct sockaddr_un))
            return -EINVAL;
        return format_unix((const struct sockaddr_un *)addr, len, buf, size);
    default:
        return -EINVAL;
    }
}
