/*
 * Timers: a min-heap of deadlines over a slab of timer slots, armed on one timerfd. Timer ids
 * encode (generation << 32 | slot), so cancel finds its timer in O(1) without a map.
 */
#ifndef IOLOOP_LIB_TIMER_H
#define IOLOOP_LIB_TIMER_H

#include <stdbool.h>
#include <stdint.h>

struct ioloop_timer;
struct ioloop_timer_node;

struct ioloop_timers {
    int tfd;                            /* the loop's timerfd */
    struct ioloop_timer *slots;         /* the slab; ids index it */
    uint32_t nslots;                    /* slots ever handed out */
    uint32_t slots_cap;
    uint32_t free_head;                 /* first free slot, or UINT32_MAX */
    struct ioloop_timer_node *heap;     /* 4-ary min-heap by (deadline, seq) */
    uint32_t heap_len;
    uint32_t heap_cap;
    bool fired;                         /* the timerfd reported expiry this iteration */
    uint64_t next_seq;                  /* tie-break: scheduling order */
    uint64_t batch_seq;                 /* next_seq when this iteration began to wait */
    uint64_t armed_us;                  /* deadline the timerfd is armed for */
};

int ioloop__timers_init(ioloop_t *loop);
void ioloop__timers_fini(ioloop_t *loop);

/* Called before each wait: arms the timerfd for the earliest deadline if that changed, and
 * marks where this iteration begins (timers scheduled from now on wait for the next one). */
void ioloop__timers_arm(ioloop_t *loop);

/* Runs the timers due at this iteration's time (loop->now_us) and scheduled before it began,
 * if the timerfd fired. */
void ioloop__timers_run(ioloop_t *loop);

#endif /* IOLOOP_LIB_TIMER_H */
