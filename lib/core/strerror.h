/*
 * Error text for the library's own log lines, safe in any thread (strerror() is not).
 */
#ifndef IOLOOP_LIB_STRERROR_H
#define IOLOOP_LIB_STRERROR_H

/* The description of errno value `err` (negative or positive), e.g. "Too many open files";
 * never NULL. The string is static. Any thread. */
const char *ioloop__strerror(int err);

#endif /* IOLOOP_LIB_STRERROR_H */
