/*
 * ioloop — one event loop per thread: fd handlers, timerfd timers, cross-thread callbacks and
 * signals on epoll. This umbrella header includes every public part of the library.
 */
#ifndef IOLOOP_H
#define IOLOOP_H

#include <ioloop/log.h>
#include <ioloop/loop.h>
#include <ioloop/pool.h>
#include <ioloop/process.h>
#include <ioloop/resolve.h>
#include <ioloop/server.h>
#include <ioloop/work.h>

#endif /* IOLOOP_H */
