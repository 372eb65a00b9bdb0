/*
 * Socket addresses from strings: "1.2.3.4:80", "[::1]:80", "unix:/path", and the host names
 * that "localhost:80" carries (checked here, resolved by lib/net/resolve.c).
 */
#ifndef IOLOOP_LIB_ADDRESS_H
#define IOLOOP_LIB_ADDRESS_H

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <sys/socket.h>

struct ioloop_address {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* The longest host name: 253 characters (RFC 1035's 255 octets on the wire), and a trailing
 * dot. */
#define IOLOOP__HOST_MAX 254

/* A host name and a port, from "name:port". */
struct ioloop_host {
    char name[IOLOOP__HOST_MAX + 1];
    uint16_t port;
};

/* What ioloop__host_parse() and ioloop__address_parse_host() found. */
enum {
    IOLOOP__HOST_NAME = 0,    /* a well-formed host name, to be resolved */
    IOLOOP__HOST_NUMERIC = 1, /* an IP address, in the struct ioloop_address */
};

/* Parses `text` into *addr. Returns 0, or -EINVAL for a NULL or malformed address: empty, no
 * port, a port outside 0-65535 or with anything but digits, a bad IP literal, a unix path
 * that is empty or too long for sun_path, trailing garbage. */
int ioloop__address_parse(const char *text, struct ioloop_address *addr);

/* Sets *addr to the IPv4 (family AF_INET, 4 bytes at ip) or IPv6 (AF_INET6, 16 bytes)
 * address with `port` (host order). Returns 0, or -EAFNOSUPPORT for another family. */
int ioloop__address_set_ip(struct ioloop_address *addr, int family, const void *ip,
                           uint16_t port);

/* Classifies a host without a port: IOLOOP__HOST_NUMERIC for a dotted quad or an IPv6 address
 * (no brackets), then in *addr (if not NULL) with `port`; IOLOOP__HOST_NAME for a host name
 * as RFC 1123 has it: labels of letters, digits and '-', 1 to 63 long, neither starting nor
 * ending with '-', 253 characters in all, a trailing dot allowed; a host of digits and dots
 * only must be a dotted quad ("127.1" is not). -EINVAL for anything else. */
int ioloop__host_parse(const char *host, uint16_t port, struct ioloop_address *addr);

/* ioloop__address_parse(), and "name:port" with a well-formed host name too: returns
 * IOLOOP__HOST_NUMERIC with the address in *addr, IOLOOP__HOST_NAME with the name and port
 * in *host (*addr then holds nothing useful), or -EINVAL. */
int ioloop__address_parse_host(const char *text, struct ioloop_address *addr,
                               struct ioloop_host *host);

/* Turns Nagle's algorithm off: a loop writes whole messages, and waiting for an ACK before
 * sending the next small one would cost a round trip. */
static inline void ioloop__socket_nodelay(int fd)
{
    int one = 1;

    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

#endif /* IOLOOP_LIB_ADDRESS_H */
