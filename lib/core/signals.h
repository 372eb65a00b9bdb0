/*
 * Signals through one signalfd per loop, and the process-wide registry that gives each signal
 * at most one handler.
 */
#ifndef IOLOOP_LIB_SIGNAL_H
#define IOLOOP_LIB_SIGNAL_H

struct ioloop_signals;

/* Releases the loop's signals (registry entries, signalfd). Masks are left as they are. */
void ioloop__signals_fini(ioloop_t *loop);

#endif /* IOLOOP_LIB_SIGNAL_H */
