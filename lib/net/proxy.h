/*
 * The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a load
 * balancer sends as the first bytes of a connection to tell the server who the real client
 * is. A pure parser: no allocation, no state, no locale; the connection layer feeds it the
 * bytes it has read so far and removes the header once the parser says it is complete.
 */
#ifndef IOLOOP_LIB_PROXY_H
#define IOLOOP_LIB_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Longest header accepted: a v1 header is at most 107 bytes; a v2 header is 16 bytes plus
 * its length field, and we accept TLVs up to this total (AWS, GCP and Azure send a few dozen
 * bytes of TLVs). Anything longer is refused. */
#define IOLOOP__PROXY_MAX (16 + 4096)

/* What a PROXY protocol header said. */
struct ioloop_proxy_header {
    bool local;                  /* v2 LOCAL, v1 UNKNOWN, or v2 AF_UNSPEC: the connection's own
                                    peer address stands (a health check from the proxy itself) */
    struct sockaddr_storage src; /* otherwise: the original client (AF_INET, AF_INET6 with the
                                    source port; AF_UNIX with the source path) */
    socklen_t src_len;
};

/* Parses the PROXY protocol v1 or v2 header that must begin buf. Returns the header's length
 * (> 0) once buf holds all of it, 0 while buf is a valid beginning that needs more bytes, or
 * -EPROTO when buf does not begin a valid header (and never will, whatever follows).
 * Reads at most len bytes, and never more than IOLOOP__PROXY_MAX.
 *
 * Incremental: call it again from the start of the buffer each time more bytes arrive (one
 * byte at a time is fine). *out is written only when a length is returned; everything in it
 * that the header does not set is zeroed. Strict: v1 needs single spaces, addresses that
 * inet_pton() takes for the named family, ports 0-65535 in decimal without leading zeros and
 * CRLF within 107 bytes; v2 needs version 2, command LOCAL or PROXY, family UNSPEC, TCP over
 * IPv4 or IPv6 or UNIX stream (datagram families are refused: these are stream connections),
 * a length that holds the family's address block, and TLVs after it that fill the length
 * exactly. A LOCAL header's addresses, if any, are ignored (local is true), but its layout is
 * checked the same way. TLV values are not interpreted (a CRC32C TLV is not verified).
 * Pure: any thread, no locks; buf is only read, and nothing of it is kept. */
int ioloop__proxy_parse(const void *buf, size_t len, struct ioloop_proxy_header *out);

#endif /* IOLOOP_LIB_PROXY_H */
