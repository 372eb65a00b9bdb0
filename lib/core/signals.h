/*
 * Signals through one signalfd per loop, and the process-wide registry that gives each signal
 * at most one handler.
 */
#ifndef IOLOOP_LIB_SIGNAL_H
#define IOLOOP_LIB_SIGNAL_H

struct ioloop_signals;

/* Releases the loop's signals (registry entries, signalfd) and, as ioloop_remove_signal()
 * does, unblocks in the calling thread each one that was not blocked before the loop took it. */
void ioloop__signals_fini(ioloop_t *loop);

#endif /* IOLOOP_LIB_SIGNAL_H */
