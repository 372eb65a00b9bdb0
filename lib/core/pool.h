/*
 * The pool's internals shared with the server.
 */
#ifndef IOLOOP_LIB_POOL_H
#define IOLOOP_LIB_POOL_H

#include <ioloop/pool.h>

/* Like ioloop_pool_next(), and also tells the loop's index. */
ioloop_t *ioloop__pool_next(ioloop_pool_t *pool, int *index);

#endif /* IOLOOP_LIB_POOL_H */
