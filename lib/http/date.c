/*
 * IMF-fixdate without strftime (whose output follows the locale) and without printf: the
 * fields are fixed-width, so the text is written digit by digit.
 */
#include "http/date.h"

#include <string.h>

static void two_digits(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

void ioloop__http_date_format(time_t t, char out[IOLOOP__HTTP_DATE_LEN + 1])
{
    static const char days[] = "SunMonTueWedThuFriSat";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    struct tm tm;
    int year;

    gmtime_r(&t, &tm);
    year = tm.tm_year + 1900;
    /* "Sun, 06 Nov 1994 08:49:37 GMT" */
    memcpy(out, days + 3 * tm.tm_wday, 3);
    memcpy(out + 3, ", ", 2);
    two_digits(out + 5, tm.tm_mday);
    out[7] = ' ';
    memcpy(out + 8, months + 3 * tm.tm_mon, 3);
    out[11] = ' ';
    two_digits(out + 12, (year / 100) % 100);
    two_digits(out + 14, year % 100);
    out[16] = ' ';
    two_digits(out + 17, tm.tm_hour);
    out[19] = ':';
    two_digits(out + 20, tm.tm_min);
    out[22] = ':';
    two_digits(out + 23, tm.tm_sec);
    memcpy(out + 25, " GMT", 5); /* with the NUL */
}

const char *ioloop__http_date_get(struct ioloop__http_date *d, uint64_t now_ms)
{
    struct timespec ts;

    if (d->next_ms != 0 && now_ms < d->next_ms)
        return d->text;
    clock_gettime(CLOCK_REALTIME, &ts);
    ioloop__http_date_format(ts.tv_sec, d->text);
    /* Again when this wall-clock second is over (the loop's time only moves forward). */
    d->next_ms = now_ms + 1000 - (uint64_t)ts.tv_nsec / 1000000;
    return d->text;
}
