/*
 * Names: asynchronous host name resolution on a loop, built on c-ares. Each loop has one
 * c-ares channel, made by its first lookup of a name: its sockets are watched by the loop's
 * handler table and its timeouts run on one of the loop's timers, so a lookup never blocks
 * the loop and needs no thread. The channel is configured as c-ares configures itself when it
 * is made: /etc/resolv.conf (servers, search domains, options), /etc/nsswitch.conf (files
 * before DNS or after), the RES_OPTIONS and LOCALDOMAIN environment variables, and
 * /etc/hosts, read at each lookup. Timeouts and attempts come from the options of
 * resolv.conf and RES_OPTIONS, as the installed c-ares reads them: c-ares 1.18 (Debian 12)
 * knows "retrans:MS" and "retry:N" (default 5000 ms, 4 attempts, the timeout doubling at each
 * round), later versions "timeout:S" and "attempts:N" too.
 *
 * Numeric hosts ("127.0.0.1", "::1") are answered without any query. Host names must be
 * RFC 1123's (see ioloop_resolve()); anything else is refused before any lookup.
 *
 * ioloop_connect() and ioloop_server_new() take host names too (include/ioloop/server.h).
 *
 * A library built without c-ares (meson -Dresolver=disabled) keeps every function here:
 * numeric hosts are still answered, and what needs c-ares returns -ENOTSUP.
 */
#ifndef IOLOOP_RESOLVE_H
#define IOLOOP_RESOLVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ioloop/export.h>
#include <ioloop/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * The answer to ioloop_resolve(), in the loop's thread: err is 0 and addrs holds naddrs >= 1
 * addresses (struct sockaddr_in or struct sockaddr_in6 as sa_family says, each with the
 * port asked for), IPv4 and IPv6, in the order c-ares sorts them (RFC 6724, as getaddrinfo()
 * does). The addresses are valid during the call only: copy what you keep.
 * Otherwise addrs is NULL, naddrs 0, and err one of -ENOENT (no such name: NXDOMAIN, or the
 * name has no address), -ETIMEDOUT (no server answered in time), -ECANCELED (cancelled, or
 * the loop freed while the lookup was in flight), -ECONNREFUSED (no server could be
 * reached), -ENOMEM, or -EIO (a server failed or refused the query, or answered with
 * something unusable).
 */
typedef void (*ioloop_resolve_fn)(ioloop_t *loop, int err, const struct sockaddr *const *addrs,
                                  size_t naddrs, void *arg);

/**
 * Looks `host` up, and calls fn(loop, err, addrs, naddrs, arg) once with the answer (see
 * ioloop_resolve_fn), never inside this call: at the earliest once the callback that called
 * it returned. `host` is a host name, a dotted quad or an IPv6 address without brackets; a
 * numeric host is answered as it is, without any query. A host name is RFC 1123's: labels of
 * letters, digits and '-', 1 to 63 characters long, neither starting nor ending with '-',
 * 253 characters in all (a trailing dot may follow); a host of digits and dots only must be a
 * dotted quad ("127.1" is refused). Names are looked up in /etc/hosts and by DNS, for both
 * IPv4 (A) and IPv6 (AAAA) addresses. `host` is copied.
 * Returns the lookup's id (positive, never reused by the loop), or -EINVAL (NULL loop, host
 * or fn; a malformed host), -EPERM (wrong thread), -ENOMEM, -ENOTSUP (a host name, and the
 * library was built without c-ares), or a negative errno from making the loop's c-ares
 * channel. On error fn never runs. Loop thread.
 */
IOLOOP_EXPORT int64_t ioloop_resolve(ioloop_t *loop, const char *host, uint16_t port,
                                     ioloop_resolve_fn fn, void *arg);

/**
 * Cancels a lookup whose callback has not run yet: its callback then runs with -ECANCELED
 * (and no addresses), after the current callback, not inside this call — also when the
 * answer had already arrived. A DNS query already sent may go on; its answer is dropped.
 * Returns 0, -ENOENT (unknown id, or a lookup whose callback ran or is running, or that was
 * cancelled already), -EINVAL (NULL loop), -EPERM (wrong thread). Loop thread.
 */
IOLOOP_EXPORT int ioloop_resolve_cancel(ioloop_t *loop, int64_t resolve_id);

/**
 * Sets the DNS servers of the loop's channel (making it if needed), replacing those of
 * /etc/resolv.conf: a comma-separated list of IPv4 or IPv6 addresses, each with an optional
 * port ("127.0.0.1:5353,[::1]:53,192.0.2.1"). The string is not kept.
 * Returns 0, -EINVAL (NULL loop or servers, an empty or malformed list), -EBUSY (lookups are
 * in flight: c-ares changes servers only between them), -EPERM (wrong thread), -ENOMEM,
 * -ENOTSUP (built without c-ares). Loop thread.
 */
IOLOOP_EXPORT int ioloop_resolve_set_servers(ioloop_t *loop, const char *servers);

#ifdef __cplusplus
}
#endif

#endif /* IOLOOP_RESOLVE_H */
