/*
 * Socket addresses from strings: "1.2.3.4:80", "[::1]:80", "unix:/path".
 */
#ifndef IOLOOP_LIB_ADDRESS_H
#define IOLOOP_LIB_ADDRESS_H

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

struct ioloop_address {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* Parses `text` into *addr. Returns 0, or -EINVAL for a NULL or malformed address: empty, no
 * port, a port outside 0-65535 or with anything but digits, a bad IP literal, a unix path
 * that is empty or too long for sun_path, trailing garbage. */
int ioloop__address_parse(const char *text, struct ioloop_address *addr);

/* Turns Nagle's algorithm off: a loop writes whole messages, and waiting for an ACK before
 * sending the next small one would cost a round trip. */
static inline void ioloop__socket_nodelay(int fd)
{
    int one = 1;

    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

#endif /* IOLOOP_LIB_ADDRESS_H */
