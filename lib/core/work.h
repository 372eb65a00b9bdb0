/*
 * The work pool's side of a loop: every loop has at most one completion inbox, shared by all
 * work pools, where workers leave finished work for the loop's thread. Core keeps the pointer
 * in struct ioloop; lib/core/work.c owns the rest.
 */
#ifndef IOLOOP_LIB_WORK_H
#define IOLOOP_LIB_WORK_H

#include <ioloop/loop.h>
#include <ioloop/work.h>

struct ioloop_work_inbox;

/* ioloop_free(), first of all: from here on submissions for the loop fail (-ESHUTDOWN); its
 * work that has not started is cancelled in its pools, running work is waited for, and every
 * done still due runs in the calling thread (-ECANCELED for the cancelled, 0 for work that
 * ran). Then the inbox is freed. Loop thread; the loop still works for the dones. */
void ioloop__work_loop_fini(ioloop_t *loop);

/* For tests: from now on every batch holds up to n items (at most 32), however long the work
 * takes (0: back to sizing by the work's cost). Makes "taken in a batch, not begun" a state a
 * test can build: a gated item first, the items behind it taken with it. Any thread. */
void ioloop__work_pool_fix_batch(ioloop_work_pool_t *pool, unsigned n);

#endif /* IOLOOP_LIB_WORK_H */
