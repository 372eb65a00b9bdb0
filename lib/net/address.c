/*
 * Address parsing. Only numeric hosts: a loop must never block on name resolution.
 */
#include "net/address.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/un.h>

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
