/*
 * The Date header's value (RFC 7231 IMF-fixdate, "Tue, 01 Dec 2026 21:25:13 GMT"), formatted
 * at most once a second per cache: each loop keeps one, so a response reads a string that is
 * already there and the clock is read only when the cached second may have ended.
 */
#ifndef IOLOOP_LIB_HTTP_DATE_H
#define IOLOOP_LIB_HTTP_DATE_H

#include <stdint.h>
#include <time.h>

/* The length of an IMF-fixdate. */
#define IOLOOP__HTTP_DATE_LEN 29

struct ioloop__http_date {
    uint64_t next_ms;                     /* monotonic ms at which to format again; 0: now */
    char text[IOLOOP__HTTP_DATE_LEN + 1];
};

/* Writes t as an IMF-fixdate and a NUL into out. Any thread. */
void ioloop__http_date_format(time_t t, char out[IOLOOP__HTTP_DATE_LEN + 1]);

/* The date for a response made at monotonic time now_ms (a loop's ioloop_now_ms()). The
 * cache's owner only. */
const char *ioloop__http_date_get(struct ioloop__http_date *d, uint64_t now_ms);

#endif /* IOLOOP_LIB_HTTP_DATE_H */
