/*
 * bench_common.h — the little the ping-pong and idle-connection programs share: parsing an
 * "IPV4:PORT" address, a non-blocking listening socket for the servers whose library does not
 * make one, a monotonic clock, and the byte pattern the clients send so that they can check
 * every echoed byte with one memcmp.
 *
 * Header-only (static inline), so each program stays one .c file with no library to link.
 */
#ifndef IOLOOP_BENCH_COMMON_H
#define IOLOOP_BENCH_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Backlog for every benchmark listener: 4096, as ioloop's server (the kernel caps it at
 * net.core.somaxconn), so that 1 000 connections opened at once are never refused. */
#define BENCH_BACKLOG 4096

/* Parses "a.b.c.d:port" into *out. Returns 0, or -1 for anything else. */
static inline int bench_parse_address(const char *address, struct sockaddr_in *out)
{
    const char *colon = strrchr(address, ':');
    char host[INET_ADDRSTRLEN];
    char *end;
    unsigned long port;

    if (colon == NULL || (size_t)(colon - address) >= sizeof host)
        return -1;
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    port = strtoul(colon + 1, &end, 10);
    if (*end != '\0' || end == colon + 1 || port > 65535)
        return -1;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

/* A non-blocking, close-on-exec TCP listener on `address` (SO_REUSEADDR, BENCH_BACKLOG).
 * Returns the fd, or -1 with errno set (EINVAL for a malformed address). */
static inline int bench_listen(const char *address)
{
    struct sockaddr_in sin;
    int fd, one = 1;

    if (bench_parse_address(address, &sin) < 0)
        return -1;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, BENCH_BACKLOG) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Every server sets TCP_NODELAY on accepted sockets, as ioloop's acceptor does: without it
 * small echoes would wait for Nagle and the benchmark would measure delayed ACKs. */
static inline void bench_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* CLOCK_MONOTONIC in seconds. */
static inline double bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * Byte i of the block a client sends. A client echoes back what it receives, so on every
 * connection byte q of the received stream must be bench_pattern(q % S) for block size S.
 * Multiplicative hashing (Knuth's constant) makes neighbouring bytes differ, so a lost,
 * repeated or misplaced chunk does not compare equal by accident.
 */
static inline unsigned char bench_pattern(size_t i)
{
    return (unsigned char)(((uint32_t)i * 2654435761u) >> 24);
}

/*
 * Fills ref[0 .. size + extra) with the stream pattern of block size `size`, so that a chunk
 * of up to `extra` bytes received at stream offset q can be checked with
 * memcmp(chunk, ref + q % size, len). Returns NULL when out of memory; free() the result.
 */
static inline unsigned char *bench_pattern_ref(size_t size, size_t extra)
{
    unsigned char *ref = malloc(size + extra);

    for (size_t i = 0; ref != NULL && i < size + extra; i++)
        ref[i] = bench_pattern(i % size);
    return ref;
}

#endif /* IOLOOP_BENCH_COMMON_H */
