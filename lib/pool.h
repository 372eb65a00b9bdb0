/*
 * The pool's internals shared with the server.
 */
#ifndef IOLOOP_LIB_POOL_H
#define IOLOOP_LIB_POOL_H

#include <pthread.h>

#include <ioloop/pool.h>

/* Like ioloop_pool_next(), and also tells the loop's index. */
ioloop_t *ioloop__pool_next(ioloop_pool_t *pool, int *index);

/* Starts a thread that blocks every signal (threads the library creates never take
 * process-directed signals). Returns 0 or a negative errno. */
int ioloop__thread_start(pthread_t *thread, void *(*fn)(void *), void *arg);

#endif /* IOLOOP_LIB_POOL_H */
