/*
 * The channel of a library built without c-ares (meson -Dresolver=disabled): there is none.
 * Numeric hosts never need one (resolve.c answers them itself); everything that would look a
 * name up says -ENOTSUP, so the API stays whole and says plainly what this build lacks.
 */
#include "net/resolve.h"

#include <errno.h>

int ioloop__channel_new(ioloop_t *loop, struct ioloop_channel **out)
{
    return -ENOTSUP;
}

/* Never reached (no channel is ever made); answered all the same, as the contract says. */
void ioloop__channel_lookup(struct ioloop_channel *ch, const char *name,
                            struct ioloop_lookup *lk)
{
    ioloop__lookup_answered(lk, -ENOTSUP);
}

int ioloop__channel_set_servers(struct ioloop_channel *ch, const char *servers)
{
    return -ENOTSUP;
}

void ioloop__channel_cancel(struct ioloop_channel *ch)
{
}

void ioloop__channel_free(struct ioloop_channel *ch)
{
}

int ioloop__hosts_lookup(const char *name, uint16_t port, struct ioloop_address *addr)
{
    return -ENOTSUP;
}
