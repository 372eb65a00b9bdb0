/*
 * The pool's internals shared with the server.
 */
#ifndef IOLOOP_LIB_POOL_H
#define IOLOOP_LIB_POOL_H

#include <stdint.h>

#include <ioloop/pool.h>

/* Like ioloop_pool_next(), and also tells the loop's index. */
ioloop_t *ioloop__pool_next(ioloop_pool_t *pool, int *index);

/* The pool's loop with that uid (see IOLOOP__UID_BITS), or NULL. Any thread. */
ioloop_t *ioloop__pool_loop_by_uid(ioloop_pool_t *pool, uint32_t uid);

#endif /* IOLOOP_LIB_POOL_H */
