/*
 * The library's spinlock, for critical sections of a few stores that threads on other cores
 * take at a high rate (the callback queue, the work pool's queue): it spins a little, then
 * yields, and never sleeps in the kernel, so neither taking nor releasing it costs a syscall.
 */
#ifndef IOLOOP_LIB_SPINLOCK_H
#define IOLOOP_LIB_SPINLOCK_H

#include <sched.h>
#include <stdatomic.h>

/* Spins this many times before yielding: long enough for a holder that runs on another core
 * to finish its few stores, short enough not to burn a slice when the holder was preempted
 * (libuv #2769: spinning against a preempted holder on one core stalled for 10 ms). */
#define IOLOOP__SPIN_LIMIT 64

static inline void ioloop__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void ioloop__spin_lock(atomic_int *lock)
{
    for (unsigned spins = 0;; spins++) {
        if (!atomic_load_explicit(lock, memory_order_relaxed) &&
            !atomic_exchange_explicit(lock, 1, memory_order_acquire))
            return;
        if (spins < IOLOOP__SPIN_LIMIT)
            ioloop__cpu_relax();
        else
            sched_yield();
    }
}

static inline void ioloop__spin_unlock(atomic_int *lock)
{
    atomic_store_explicit(lock, 0, memory_order_release);
}

#endif /* IOLOOP_LIB_SPINLOCK_H */
