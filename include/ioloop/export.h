/*
 * Symbol visibility for libioloop. The library is built with hidden visibility; every public
 * declaration carries IOLOOP_EXPORT so that exactly the documented API is exported.
 */
#ifndef IOLOOP_EXPORT_H
#define IOLOOP_EXPORT_H

#if defined(IOLOOP_BUILDING) && defined(__GNUC__)
#define IOLOOP_EXPORT __attribute__((visibility("default")))
#else
#define IOLOOP_EXPORT
#endif

#endif /* IOLOOP_EXPORT_H */
