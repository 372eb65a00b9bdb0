/*
 * Turning one logging call into the bytes of one line:
 *
 *     2026-11-22T10:00:00.123456Z INFO  12345 file.c:42 message\n
 *     |<- cached per second ->|         |<->| cached per thread (gettid)
 *
 * The date and time down to the second are formatted once per second per thread and copied
 * otherwise; only the microseconds are formatted each time. The thread id is cached per thread
 * too (and forgotten in a fork child). The source file's base name is found for every line (a few nanoseconds): a caller may
 * pass one buffer holding different names, so a name cannot be remembered by its pointer.
 *
 * The message goes through a printf-compatible formatter with a fast path for the conversions
 * log lines are made of: d i u x X o c s p f F and %%, with the flags - + space 0, a width and
 * a precision (numbers or *) and the length modifiers hh h l ll z j t. It produces exactly what
 * glibc's printf does (the tests compare the two). Anything else (%e, %g, %a, %ls, the #
 * flag, positional arguments, %f with more than 9 decimals or of a value beyond 2^63 or not
 * finite) makes it start over with vsnprintf, so every format still works. glibc's %f is
 * about four times slower than everything else in a line; ours computes the exact decimal
 * rounding with 128-bit integers.
 */
#include "log/log.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* "YYYY-MM-DDTHH:MM:SS." takes 20 bytes; a year past 9999 takes more, so leave room. */
#define STAMP_MAX 40
/* Longest thread id: a pid_t in decimal and a space. */
#define TID_MAX 16
/* Source file names longer than this are cut, so that the prefix always fits in a line. */
#define BASE_MAX 255
/* %f's fast path handles up to 9 decimals: 5^9 * 2^53 < 2^74 fits the 128-bit arithmetic. */
#define FIXED_PREC_MAX 9

/* GCC and Clang's 128-bit integer; __extension__ tells -pedantic we mean it. */
__extension__ typedef unsigned __int128 u128;

/* Per-thread caches. `stamp_sec` starts at an impossible second so the first call formats. */
static _Thread_local time_t stamp_sec = -1;
static _Thread_local char stamp[STAMP_MAX];
static _Thread_local size_t stamp_len;
static _Thread_local char tid_text[TID_MAX];
static _Thread_local size_t tid_len;

static const char level_names[][6] = {
    [IOLOOP_LOG_DEBUG] = "DEBUG",
    [IOLOOP_LOG_INFO] = "INFO ",
    [IOLOOP_LOG_WARN] = "WARN ",
    [IOLOOP_LOG_ERROR] = "ERROR",
};

static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Set when the library loads, if forget_tid() is registered to run in every fork child. */
static bool tid_cacheable;

/* A fork child's thread has an id of its own. */
static void forget_tid(void)
{
    tid_len = 0;
}

/*
 * Registers forget_tid() for every fork child, whether or not the logger is ever opened (the
 * logger's own fork handlers come only with ioloop_log_open()). At load time, so that it runs
 * in a child before any child handler the application registers later, which may log. If it
 * cannot be registered (no memory), the thread id is looked up for every line instead.
 */
__attribute__((constructor)) static void register_forget_tid(void)
{
    tid_cacheable = pthread_atfork(NULL, NULL, forget_tid) == 0;
}

/* Writes v in decimal so that it ends just before `end`; returns where it starts. */
static char *decimal(char *end, uint64_t v)
{
    while (v >= 100) {
        unsigned pair = (unsigned)(v % 100) * 2;

        v /= 100;
        *--end = digit_pairs[pair + 1];
        *--end = digit_pairs[pair];
    }
    if (v >= 10) {
        *--end = digit_pairs[v * 2 + 1];
        *--end = digit_pairs[v * 2];
    } else {
        *--end = (char)('0' + v);
    }
    return end;
}

/* Writes v as exactly `width` decimal digits (leading zeros) at dst. */
static void decimal_fixed(char *dst, uint64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        dst[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* ---- The message: a printf-compatible formatter ----------------------------------------- */

/* Output that stores at most `cap` bytes but counts all of them. */
struct out {
    char *dst;
    size_t cap;
    size_t len;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (n == 0)
        return; /* s may be NULL then, and memcpy must not see a NULL even for 0 bytes */
    if (o->len < o->cap) {
        size_t k = o->cap - o->len < n ? o->cap - o->len : n;

        memcpy(o->dst + o->len, s, k);
    }
    o->len += n;
}

static void put_fill(struct out *o, char c, size_t n)
{
    if (o->len < o->cap) {
        size_t k = o->cap - o->len < n ? o->cap - o->len : n;

        memset(o->dst + o->len, c, k);
    }
    o->len += n;
}

enum {
    FLAG_MINUS = 1, /* left-justify */
    FLAG_PLUS = 2,  /* sign always */
    FLAG_SPACE = 4, /* space for a missing sign */
    FLAG_ZERO = 8,  /* pad with zeros after the sign */
};

/* One conversion specification. */
struct spec {
    unsigned flags;
    size_t width;
    int prec;       /* -1: none given */
    char length;    /* 0, 'H' (hh), 'h', 'l', 'L' (ll), 'z', 'j', 't' */
};

/* A va_list that helpers can consume (a va_list parameter may not be used after a callee
 * used it; one inside a struct passed by pointer may). */
struct args {
    va_list ap;
};

/*
 * Emits sign + zeros + digits (+ tail, used by %f for ".ddd") padded to the width the way
 * printf pads numbers: spaces before, zeros after the sign (FLAG_ZERO), or spaces after
 * (FLAG_MINUS). `zero_ok` is false where a precision turns the zero flag off.
 */
static void put_number(struct out *o, const struct spec *sp, char sign, size_t zeros,
                       const char *digits, size_t ndigits, const char *tail, size_t ntail,
                       bool zero_ok)
{
    size_t body = (sign != 0) + zeros + ndigits + ntail;
    size_t pad = sp->width > body ? sp->width - body : 0;

    if (!(sp->flags & FLAG_MINUS)) {
        if ((sp->flags & FLAG_ZERO) && zero_ok)
            zeros += pad;
        else
            put_fill(o, ' ', pad);
        pad = 0;
    }
    if (sign != 0)
        put(o, &sign, 1);
    put_fill(o, '0', zeros);
    put(o, digits, ndigits);
    put(o, tail, ntail);
    put_fill(o, ' ', pad); /* left-justified: the padding comes last */
}

static int64_t signed_arg(struct args *a, char length)
{
    switch (length) {
    case 'H': return (signed char)va_arg(a->ap, int);
    case 'h': return (short)va_arg(a->ap, int);
    case 'l': return va_arg(a->ap, long);
    case 'L': return va_arg(a->ap, long long);
    case 'z': return va_arg(a->ap, ssize_t);
    case 'j': return va_arg(a->ap, intmax_t);
    case 't': return va_arg(a->ap, ptrdiff_t);
    default:  return va_arg(a->ap, int);
    }
}

static uint64_t unsigned_arg(struct args *a, char length)
{
    switch (length) {
    case 'H': return (unsigned char)va_arg(a->ap, unsigned);
    case 'h': return (unsigned short)va_arg(a->ap, unsigned);
    case 'l': return va_arg(a->ap, unsigned long);
    case 'L': return va_arg(a->ap, unsigned long long);
    case 'z': return va_arg(a->ap, size_t);
    case 'j': return va_arg(a->ap, uintmax_t);
    case 't': return (uint64_t)va_arg(a->ap, ptrdiff_t);
    default:  return va_arg(a->ap, unsigned);
    }
}

/* %d %i %u %x %X %o. */
static void put_integer(struct out *o, const struct spec *sp, char conv, struct args *a)
{
    char buf[24]; /* 2^64 in octal has 22 digits */
    char *end = buf + sizeof buf, *p = end;
    char sign = 0;
    uint64_t v;

    if (conv == 'd' || conv == 'i') {
        int64_t s = signed_arg(a, sp->length);

        v = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
        if (s < 0)
            sign = '-';
        else if (sp->flags & FLAG_PLUS)
            sign = '+';
        else if (sp->flags & FLAG_SPACE)
            sign = ' ';
    } else {
        v = unsigned_arg(a, sp->length);
    }
    if (v != 0 || sp->prec != 0) { /* precision 0 prints nothing for 0 */
        if (conv == 'x' || conv == 'X') {
            const char *hex = conv == 'x' ? "0123456789abcdef" : "0123456789ABCDEF";

            do {
                *--p = hex[v & 0xf];
                v >>= 4;
            } while (v != 0);
        } else if (conv == 'o') {
            do {
                *--p = (char)('0' + (v & 7));
                v >>= 3;
            } while (v != 0);
        } else {
            p = decimal(end, v);
        }
    }
    size_t ndigits = (size_t)(end - p);
    size_t zeros = sp->prec > 0 && (size_t)sp->prec > ndigits ? (size_t)sp->prec - ndigits : 0;

    put_number(o, sp, sign, zeros, p, ndigits, "", 0, sp->prec < 0);
}

/*
 * %f of a finite x with |x| < 2^63 and prec <= FIXED_PREC_MAX, rounded exactly as glibc does
 * (the exact binary value, rounded to nearest, ties to even). The integer part converts
 * exactly; the fraction f = m * 2^e (exact, since x - floor(x) is representable) times 10^prec
 * is m * 5^prec * 2^(e + prec), an integer shifted right, whose dropped bits decide rounding.
 */
static void put_fixed(struct out *o, const struct spec *sp, double x)
{
    static const uint32_t pow5[FIXED_PREC_MAX + 1] = {
        1, 5, 25, 125, 625, 3125, 15625, 78125, 390625, 1953125};
    static const uint32_t pow10[FIXED_PREC_MAX + 1] = {
        1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000};
    int prec = sp->prec < 0 ? 6 : sp->prec;
    bool negative = signbit(x);
    double ax = negative ? -x : x;
    uint64_t ip = (uint64_t)ax;
    double frac = ax - (double)ip;
    uint64_t q = 0;

    if (frac != 0) {
        uint64_t bits, m;
        int e;

        memcpy(&bits, &frac, sizeof bits);
        m = bits & ((UINT64_C(1) << 52) - 1);
        if ((bits >> 52) == 0) { /* subnormal */
            e = -1074;
        } else {
            m |= UINT64_C(1) << 52;
            e = (int)(bits >> 52) - 1075;
        }
        u128 n = (u128)m * pow5[prec];
        int shift = -(e + prec);

        if (shift <= 0) {
            q = (uint64_t)(n << -shift);
        } else if (shift < 128) {
            u128 quot = n >> shift;
            u128 rem = n - (quot << shift);
            u128 half = (u128)1 << (shift - 1);
            /* The digit a tie rounds to even is the last one printed. */
            bool odd = prec > 0 ? (quot & 1) != 0 : (ip & 1) != 0;

            if (rem > half || (rem == half && odd))
                quot++;
            q = (uint64_t)quot;
        } /* else: n < 2^74 shifted by 128 or more is below one half: q = 0. */
        if (q >= pow10[prec]) {
            q -= pow10[prec];
            ip++;
        }
    }

    char ibuf[24], tail[FIXED_PREC_MAX + 1];
    char *istart = decimal(ibuf + sizeof ibuf, ip);
    size_t ntail = 0;
    char sign = negative ? '-' : (sp->flags & FLAG_PLUS) ? '+' : (sp->flags & FLAG_SPACE) ? ' ' : 0;

    if (prec > 0) {
        tail[0] = '.';
        decimal_fixed(tail + 1, q, prec);
        ntail = (size_t)prec + 1;
    }
    put_number(o, sp, sign, 0, istart, (size_t)(ibuf + sizeof ibuf - istart), tail, ntail, true);
}

/* %s, %c, %p. */
static void put_text(struct out *o, const struct spec *sp, const char *s, size_t n)
{
    size_t pad = sp->width > n ? sp->width - n : 0;

    if (!(sp->flags & FLAG_MINUS))
        put_fill(o, ' ', pad);
    put(o, s, n);
    if (sp->flags & FLAG_MINUS)
        put_fill(o, ' ', pad);
}

/* Reads a decimal field (width or precision); false if it is absurdly large. */
static bool parse_count(const char **p, size_t *out)
{
    size_t v = 0;

    while (**p >= '0' && **p <= '9') {
        v = v * 10 + (size_t)(**p - '0');
        if (v > INT32_MAX)
            return false;
        (*p)++;
    }
    *out = v;
    return true;
}

/*
 * Reads the flags, width, precision and length of the conversion at *s (just after its '%'),
 * taking '*' arguments from a, and advances *s to the conversion character. Returns false
 * for a width or precision too large to be meant.
 */
static bool parse_spec(const char **s, struct spec *sp, struct args *a)
{
    const char *q = *s;
    size_t n;

    for (;; q++) {
        if (*q == '-') sp->flags |= FLAG_MINUS;
        else if (*q == '+') sp->flags |= FLAG_PLUS;
        else if (*q == ' ') sp->flags |= FLAG_SPACE;
        else if (*q == '0') sp->flags |= FLAG_ZERO;
        else break;
    }
    if (*q == '*') {
        int w = va_arg(a->ap, int);

        q++;
        if (w < 0) { /* a negative width is the '-' flag */
            sp->flags |= FLAG_MINUS;
            w = w == INT32_MIN ? INT32_MAX : -w;
        }
        sp->width = (size_t)w;
    } else if (!parse_count(&q, &sp->width)) {
        return false;
    }
    if (*q == '.') {
        q++;
        if (*q == '*') {
            int pr = va_arg(a->ap, int);

            q++;
            sp->prec = pr < 0 ? -1 : pr; /* a negative precision is none */
        } else {
            if (!parse_count(&q, &n))
                return false;
            sp->prec = (int)n;
        }
    }
    if ((q[0] == 'h' || q[0] == 'l') && q[1] == q[0]) {
        sp->length = q[0] == 'h' ? 'H' : 'L';
        q += 2;
    } else if (*q == 'h' || *q == 'l' || *q == 'z' || *q == 'j' || *q == 't') {
        sp->length = *q++;
    }
    *s = q;
    return true;
}

/* %f and %F: finite, below 2^63, at most FIXED_PREC_MAX decimals; else not ours. */
static bool convert_fixed(struct out *o, const struct spec *sp, struct args *a)
{
    double x;

    if (sp->length != 0 && sp->length != 'l')
        return false;
    x = va_arg(a->ap, double);
    if (!isfinite(x) || fabs(x) >= 0x1p63 || sp->prec > FIXED_PREC_MAX)
        return false;
    put_fixed(o, sp, x);
    return true;
}

/* %s; NULL prints "(null)" as glibc does when no precision could cut it. */
static bool convert_string(struct out *o, const struct spec *sp, struct args *a)
{
    const char *str;

    if (sp->length != 0 || (sp->flags & FLAG_ZERO))
        return false;
    str = va_arg(a->ap, const char *);
    if (str == NULL) {
        if (sp->prec >= 0)
            return false;
        str = "(null)";
    }
    put_text(o, sp, str, sp->prec >= 0 ? strnlen(str, (size_t)sp->prec) : strlen(str));
    return true;
}

/* %p without flags, width or precision: "0x..." in lower case, or "(nil)". */
static bool convert_pointer(struct out *o, const struct spec *sp, struct args *a)
{
    char buf[2 + 16];
    char *end = buf + sizeof buf, *q = end;
    uintptr_t v;

    if (sp->flags != 0 || sp->width != 0 || sp->prec >= 0 || sp->length != 0)
        return false;
    v = (uintptr_t)va_arg(a->ap, void *);
    if (v == 0) {
        put(o, "(nil)", 5);
        return true;
    }
    do {
        *--q = "0123456789abcdef"[v & 0xf];
        v >>= 4;
    } while (v != 0);
    *--q = 'x';
    *--q = '0';
    put(o, q, (size_t)(end - q));
    return true;
}

/*
 * Handles the conversion whose '%' precedes *p and advances *p past it. Returns false, having
 * possibly consumed arguments, if it is not one of the fast path's.
 */
static bool convert(struct out *o, const char **p, struct args *a)
{
    struct spec sp = {0, 0, -1, 0};
    const char *start = *p, *s = *p;
    char conv, c;

    if (!parse_spec(&s, &sp, a))
        return false;
    conv = *s++;
    *p = s;
    switch (conv) {
    case 'd': case 'i': case 'u': case 'x': case 'X': case 'o':
        put_integer(o, &sp, conv, a);
        return true;
    case 'f': case 'F':
        return convert_fixed(o, &sp, a);
    case 's':
        return convert_string(o, &sp, a);
    case 'c':
        if (sp.length != 0 || (sp.flags & FLAG_ZERO))
            return false;
        c = (char)va_arg(a->ap, int);
        put_text(o, &sp, &c, 1);
        return true;
    case 'p':
        return convert_pointer(o, &sp, a);
    case '%':
        if (s - 1 != start) /* "%%" only; glibc's reading of "%5%" is left to glibc */
            return false;
        put(o, "%", 1);
        return true;
    default:
        return false;
    }
}

size_t ioloop__log_vformat(char *dst, size_t cap, const char *fmt, va_list ap)
{
    struct out o = {dst, cap, 0};
    struct args a;
    const char *p = fmt;
    bool fast = true;

    va_copy(a.ap, ap);
    for (;;) {
        const char *pct = strchr(p, '%');

        if (pct == NULL) {
            put(&o, p, strlen(p));
            break;
        }
        put(&o, p, (size_t)(pct - p));
        p = pct + 1;
        if (!convert(&o, &p, &a)) {
            fast = false;
            break;
        }
    }
    va_end(a.ap);
    if (fast)
        return o.len;

    /* Not ours: start over with the C library. It writes a NUL after what fits, which lands
     * at most on dst[cap], the byte the caller set aside. */
    int n = vsnprintf(dst, cap + 1, fmt, ap);

    return n < 0 ? 0 : (size_t)n;
}

/* ---- The whole line --------------------------------------------------------------------- */

/* Re-formats the cached "YYYY-MM-DDTHH:MM:SS." for a new second. */
static void stamp_second(time_t sec)
{
    struct tm tm;
    char buf[64];
    int n;

    gmtime_r(&sec, &tm);
    n = snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (n < 0 || (size_t)n >= sizeof stamp)
        n = 0;
    memcpy(stamp, buf, (size_t)n);
    stamp_len = (size_t)n;
    stamp_sec = sec;
}

static void cache_tid(void)
{
    char *end = tid_text + sizeof tid_text - 1;
    char *start;

    *end = ' ';
    start = decimal(end, (uint64_t)gettid());
    tid_len = (size_t)(tid_text + sizeof tid_text - start);
    memmove(tid_text, start, tid_len);
}

/* The base name of `file` (what follows its last '/'), and its length cut at BASE_MAX. */
static const char *base_name(const char *file, size_t *len)
{
    const char *slash = strrchr(file, '/');
    const char *base = slash != NULL ? slash + 1 : file;

    *len = strnlen(base, BASE_MAX);
    return base;
}

/*
 * Writes "stamp.uuuuuuZ LEVEL tid file:line " at dst if it fits in `limit` bytes with a
 * newline after it; returns its length, or 0. The prefix is under 400 bytes (BASE_MAX bounds
 * the file name), so only a small room can lack space for it.
 */
static size_t put_prefix(char *dst, size_t limit, ioloop_log_level_t level, const char *file,
                         int line)
{
    struct timespec now;
    char num[24], *nstart;
    const char *base;
    size_t nline, len, base_len;
    int lv = level >= IOLOOP_LOG_DEBUG && level <= IOLOOP_LOG_ERROR ? (int)level : IOLOOP_LOG_ERROR;

    base = base_name(file != NULL ? file : "?", &base_len);
    if (tid_len == 0 || !tid_cacheable)
        cache_tid();
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != stamp_sec)
        stamp_second(now.tv_sec);
    nstart = decimal(num + sizeof num, (uint64_t)(line < 0 ? 0 : line));
    nline = (size_t)(num + sizeof num - nstart);
    /* stamp, "uuuuuuZ ", "LEVEL ", "tid ", "file", ':', line, ' ', and the newline */
    if (stamp_len + 8 + 6 + tid_len + base_len + 1 + nline + 1 + 1 > limit)
        return 0;

    memcpy(dst, stamp, stamp_len);
    len = stamp_len;
    decimal_fixed(dst + len, (uint64_t)now.tv_nsec / 1000, 6);
    len += 6;
    memcpy(dst + len, "Z ", 2);
    len += 2;
    memcpy(dst + len, level_names[lv], 5);
    dst[len + 5] = ' ';
    len += 6;
    memcpy(dst + len, tid_text, tid_len);
    len += tid_len;
    memcpy(dst + len, base, base_len);
    len += base_len;
    dst[len++] = ':';
    memcpy(dst + len, nstart, nline);
    len += nline;
    dst[len++] = ' ';
    return len;
}

size_t ioloop__log_format(char *dst, size_t room, ioloop_log_level_t level, const char *file,
                          int line, const char *fmt, va_list ap)
{
    static const char marker[] = IOLOOP_LOG_TRUNCATED;
    size_t limit = room < IOLOOP_LOG_LINE_MAX ? room : IOLOOP_LOG_LINE_MAX;
    size_t len = put_prefix(dst, limit, level, file, line), cap, n;

    if (len == 0)
        return 0;
    /* The message, leaving one byte for the newline (the formatter may store a NUL there). */
    cap = limit - len - 1;
    n = ioloop__log_vformat(dst + len, cap, fmt, ap);
    if (n <= cap) {
        len += n;
    } else if (limit < IOLOOP_LOG_LINE_MAX) {
        return 0; /* it would fit in a bigger place: the caller moves on and calls again */
    } else {
        /* Too long for any line: keep the start and end it with the marker. */
        size_t keep = cap >= sizeof marker - 1 ? cap - (sizeof marker - 1) : 0;

        len += keep;
        memcpy(dst + len, marker, sizeof marker - 1);
        len += sizeof marker - 1;
    }
    dst[len++] = '\n';
    return len;
}
