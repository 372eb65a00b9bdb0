/*
 * The pool's internals shared with the server.
 */
#ifndef IOLOOP_LIB_POOL_H
#define IOLOOP_LIB_POOL_H

#include <stdint.h>

#include <ioloop/pool.h>

/* Something that uses the pool's loops and must stop before they go (a server): freeing the
 * pool first detaches it and calls `detach`, with the loops still running. */
struct ioloop_pool_user {
    struct ioloop_pool_user *prev, *next;
    void (*detach)(struct ioloop_pool_user *user);
};

/* Any thread. */
void ioloop__pool_attach(ioloop_pool_t *pool, struct ioloop_pool_user *user);
void ioloop__pool_detach(ioloop_pool_t *pool, struct ioloop_pool_user *user);

/* Like ioloop_pool_next(), and also tells the loop's index. */
ioloop_t *ioloop__pool_next(ioloop_pool_t *pool, int *index);

/* The pool's loop with that uid (see IOLOOP__UID_BITS), or NULL. Any thread. */
ioloop_t *ioloop__pool_loop_by_uid(ioloop_pool_t *pool, uint32_t uid);

#endif /* IOLOOP_LIB_POOL_H */
