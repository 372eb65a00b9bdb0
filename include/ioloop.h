/*
 * ioloop — one event loop per thread: fd handlers, timerfd timers, cross-thread callbacks and
 * signals on epoll. This umbrella header includes every public part of the library that this
 * build has: <ioloop/config.h> says which optional parts (IOLOOP_HAVE_HTTP) were built.
 */
#ifndef IOLOOP_H
#define IOLOOP_H

#include <ioloop/config.h>
#include <ioloop/log.h>
#include <ioloop/loop.h>
#include <ioloop/pool.h>
#include <ioloop/process.h>
#include <ioloop/resolve.h>
#include <ioloop/server.h>
#include <ioloop/work.h>
#if IOLOOP_HAVE_HTTP
#include <ioloop/http.h>
#endif

#endif /* IOLOOP_H */
