/*
 * The resolver's internals: lib/net/resolve.c keeps each loop's lookups (ids, answers,
 * cancelling, ioloop_free()); the channel behind them is c-ares's (lib/net/resolve_cares.c),
 * or, in a build without c-ares, one that says -ENOTSUP (lib/net/resolve_nocares.c).
 */
#ifndef IOLOOP_LIB_RESOLVE_H
#define IOLOOP_LIB_RESOLVE_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ioloop/resolve.h>

#include "core/loop.h"
#include "net/address.h"

/* An IPv4 or IPv6 socket address, as answers carry them. */
union ioloop_inet {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* One lookup (resolve.c owns it; the channel only answers it). */
struct ioloop_lookup;

/* ---- resolve.c, for the channel --------------------------------------------------------- */

/* Room for the n addresses of a lookup's answer, or NULL (no memory). The channel fills in
 * family and address; resolve.c sets the ports. Replaces any room given before. */
union ioloop_inet *ioloop__lookup_room(struct ioloop_lookup *lk, size_t n);
/* The channel's answer: 0 (with the addresses put in the room) or a negative errno. Exactly
 * once per ioloop__channel_lookup(), possibly inside it. */
void ioloop__lookup_answered(struct ioloop_lookup *lk, int err);

/* ---- resolve.c, for the rest of the library --------------------------------------------- */

/* ioloop_resolve() for the library's own use: the same, and ioloop__resolve_drop() can take
 * it back without fn ever running. */
int64_t ioloop__resolve_start(ioloop_t *loop, const char *host, uint16_t port,
                              ioloop_resolve_fn fn, void *arg);
/* Cancels a lookup so that its fn never runs (a connection that closed needs no answer).
 * Unknown or finished ids are ignored. Loop thread. */
void ioloop__resolve_drop(ioloop_t *loop, int64_t resolve_id);

/* ioloop__address_parse(), with host names looked up in /etc/hosts alone: no DNS query, as a
 * server must start without the network. Of a name listed more than once, the first line
 * wins, whatever its family; "localhost" not listed at all is 127.0.0.1 (RFC 6761). Returns
 * 0, -EINVAL (malformed), -ENOENT (a well-formed name not listed), -ENOTSUP (built without
 * c-ares), -ENOMEM. Any thread. */
int ioloop__address_parse_local(const char *text, struct ioloop_address *addr);

/* ---- The channel (resolve_cares.c or resolve_nocares.c) --------------------------------- */

struct ioloop_channel;

/* Makes a loop's channel from the system's configuration; *out is set on success. Returns 0
 * or a negative errno (-ENOTSUP without c-ares). Loop thread. */
int ioloop__channel_new(ioloop_t *loop, struct ioloop_channel **out);
/* Starts looking `name` up (IPv4 and IPv6); the answer comes through
 * ioloop__lookup_answered(). */
void ioloop__channel_lookup(struct ioloop_channel *ch, const char *name,
                            struct ioloop_lookup *lk);
/* Replaces the channel's DNS servers. Returns 0, -EINVAL, -EBUSY (lookups in flight),
 * -ENOMEM. */
int ioloop__channel_set_servers(struct ioloop_channel *ch, const char *servers);
/* Ends every lookup still in flight, which each get their answer (-ECANCELED) before this
 * returns; their DNS queries are given up too. */
void ioloop__channel_cancel(struct ioloop_channel *ch);
/* Cancels what is in flight (see above), takes the channel's sockets out of the loop, closes
 * them and frees the channel. NULL is fine. */
void ioloop__channel_free(struct ioloop_channel *ch);
/* Looks `name` up in /etc/hosts (see ioloop__address_parse_local()). Any thread. */
int ioloop__hosts_lookup(const char *name, uint16_t port, struct ioloop_address *addr);

#endif /* IOLOOP_LIB_RESOLVE_H */
