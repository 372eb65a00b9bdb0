/*
 * Threads the library creates: the pool's loops, acceptors, the work pool and the logger.
 */
#ifndef IOLOOP_LIB_THREAD_H
#define IOLOOP_LIB_THREAD_H

#include <pthread.h>

/* Starts a thread that blocks every signal (threads the library creates never take
 * process-directed signals) and, if `name` is not NULL, names it (at most 15 characters).
 * Returns 0 or a negative errno. */
int ioloop__thread_start(pthread_t *thread, const char *name, void *(*fn)(void *), void *arg);

#endif /* IOLOOP_LIB_THREAD_H */
