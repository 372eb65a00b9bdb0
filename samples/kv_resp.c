/*
 * kv_resp.c — kv_server's byte buffers, RESP replies and request parser (declared in kv.h).
 *
 * Requests are parsed where they lie in the connection's input, without copying: a parser
 * returns the spans of a complete command's arguments, or PARSE_MORE for a partial one, which
 * the connection keeps unconsumed and presents again with the bytes that follow.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"

const char ERR_OOM[] = "-ERR out of memory\r\n";

/* ---- Buffers and RESP output ------------------------------------------------------------ */

void *array_grow(void *array, size_t *cap, size_t want, size_t size)
{
    void *p;

    if (want <= *cap)
        return array;
    if ((p = realloc(array, want * size)) != NULL)
        *cap = want;
    return p;
}

bool buf_room(struct buf *b, size_t more)
{
    size_t cap = b->cap ? b->cap : 256;
    char *data;

    if (b->failed)
        return false;
    if (b->cap - b->len >= more)
        return true;
    if (more > SIZE_MAX / 4 - b->len) {
        b->failed = true;
        return false;
    }
    while (cap - b->len < more)
        cap *= 2;
    if ((data = realloc(b->data, cap)) == NULL) {
        b->failed = true;
        return false;
    }
    b->data = data;
    b->cap = cap;
    return true;
}

void buf_put(struct buf *b, const void *p, size_t n)
{
    if (n > 0 && buf_room(b, n)) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
    }
}

void buf_put_str(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

void buf_clear(struct buf *b)
{
    b->len = 0;
    b->failed = false;
}

char *int_format(char *end, int64_t v)
{
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;

    do {
        *--end = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--end = '-';
    return end;
}

void resp_num(struct buf *b, char type, int64_t v)
{
    char tmp[32], *end = tmp + sizeof tmp - 2, *p = int_format(end, v);

    end[0] = '\r';
    end[1] = '\n';
    *--p = type;
    buf_put(b, p, (size_t)(end + 2 - p));
}

void resp_bulk(struct buf *b, const char *p, size_t n)
{
    resp_num(b, '$', (int64_t)n);
    buf_put(b, p, n);
    buf_put(b, "\r\n", 2);
}

bool int_parse(const char *p, size_t len, int64_t *out)
{
    bool neg = len > 0 && p[0] == '-';
    uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    size_t i = neg ? 1 : 0;

    if (len == i || len > 20 || (p[i] == '0' && len != 1))
        return false;
    for (; i < len; i++) {
        unsigned d = (unsigned)(p[i] - '0');

        if (d > 9 || v > (limit - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = !neg ? (int64_t)v : v == limit ? INT64_MIN : -(int64_t)v;
    return true;
}

bool arg_is(const struct arg *a, const char *name)
{
    size_t i;

    for (i = 0; i < a->len; i++)
        if (name[i] == '\0' || (a->p[i] >= 'A' && a->p[i] <= 'Z' ? a->p[i] + 32 : a->p[i]) !=
                                   name[i])
            return false;
    return name[i] == '\0';
}

/* ---- Parsing requests ------------------------------------------------------------------- */

static bool parser_add(struct parser *ps, size_t off, size_t len)
{
    if ((size_t)ps->argc == ps->cap) {
        struct span *args = array_grow(ps->args, &ps->cap, ps->cap ? ps->cap * 2 : 8, sizeof *args);

        if (args == NULL)
            return false;
        ps->args = args;
    }
    ps->args[ps->argc++] = (struct span){off, len};
    return true;
}

/*
 * "<integer>\r\n" after the '*' or '$' at p, in one pass (every command has a few): the
 * header's length with *value set, PARSE_MORE if it is not all there yet, PARSE_ERROR if it
 * is malformed. The integer is Redis's (int_parse) and has at most 18 digits.
 */
static long parse_header(const char *p, size_t len, int64_t *value)
{
    size_t i = len > 1 && p[1] == '-' ? 2 : 1, start = i;
    int64_t v = 0;

    while (i < len && i - start < 18 && p[i] >= '0' && p[i] <= '9')
        v = v * 10 + (p[i++] - '0');
    if (i + 1 >= len)
        return PARSE_MORE;
    if (p[i] != '\r' || p[i + 1] != '\n' || i == start ||
        (p[start] == '0' && i - start > 1) || (p[start] == '0' && start == 2))
        return PARSE_ERROR;
    *value = start == 2 ? -v : v;
    return (long)i + 2;
}

long parse_inline(struct parser *ps, const char *data, size_t len, char *why)
{
    const char *nl = memchr(data, '\n', len < MAX_INLINE ? len : MAX_INLINE);
    size_t end, i = 0;

    if (nl == NULL) {
        if (len < MAX_INLINE)
            return PARSE_MORE;
        strcpy(why, "too big inline request");
        return PARSE_ERROR;
    }
    end = (size_t)(nl - data);
    if (end > 0 && data[end - 1] == '\r')
        end--;
    ps->argc = 0;
    while (i < end) {
        size_t start;

        while (i < end && (data[i] == ' ' || data[i] == '\t'))
            i++;
        for (start = i; i < end && data[i] != ' ' && data[i] != '\t'; i++)
            continue;
        if (i > start && !parser_add(ps, start, i - start))
            return PARSE_NOMEM;
    }
    return nl - data + 1;
}

/*
 * A multibulk command: "*<n>\r\n" then n times "$<len>\r\n<bytes>\r\n". Resumes where the
 * previous call on the same bytes stopped; a bulk string is taken only once it is complete.
 */
long parse_multibulk(struct parser *ps, const char *data, size_t len, char *why)
{
    int64_t v;
    long n;

    if (ps->nargs < 0) {
        if ((n = parse_header(data, len, &v)) == PARSE_MORE)
            return PARSE_MORE;
        if (n < 0 || v > MAX_ARGS) {
            strcpy(why, "invalid multibulk length");
            return PARSE_ERROR;
        }
        ps->argc = 0;
        if (v <= 0)
            return n; /* an empty command: Redis skips it */
        ps->nargs = v;
        ps->pos = (size_t)n;
    }
    while (ps->argc < ps->nargs) {
        const char *p = data + ps->pos;
        size_t rem = len - ps->pos;

        if (rem == 0)
            return PARSE_MORE;
        if (*p != '$') {
            snprintf(why, PARSE_WHY_SIZE, "expected '$', got '%c'", *p);
            return PARSE_ERROR;
        }
        if ((n = parse_header(p, rem, &v)) == PARSE_MORE)
            return PARSE_MORE;
        if (n < 0 || v < 0 || (uint64_t)v > MAX_BULK) {
            strcpy(why, "invalid bulk length");
            return PARSE_ERROR;
        }
        if (rem - (size_t)n < (size_t)v + 2)
            return PARSE_MORE;
        if (p[n + v] != '\r' || p[n + v + 1] != '\n') {
            strcpy(why, "expected CRLF after a bulk string");
            return PARSE_ERROR;
        }
        if (!parser_add(ps, ps->pos + (size_t)n, (size_t)v))
            return PARSE_NOMEM;
        ps->pos += (size_t)n + (size_t)v + 2;
    }
    n = (long)ps->pos;
    ps->nargs = -1;
    ps->pos = 0;
    return n;
}

size_t parse_peek(const char *data, size_t len, struct arg *key)
{
    int64_t argc, alen;
    long h = parse_header(data, len, &argc);
    size_t pos = (size_t)h;

    key->p = NULL;
    if (h <= 0 || argc <= 0 || argc > MAX_ARGS)
        return 0;
    for (int64_t i = 0; i < argc; i++) {
        if (pos >= len || data[pos] != '$' ||
            (h = parse_header(data + pos, len - pos, &alen)) <= 0 || alen < 0 ||
            (uint64_t)alen > MAX_BULK || len - pos - (size_t)h < (size_t)alen + 2)
            return 0;
        pos += (size_t)h;
        if (i == 1)
            *key = (struct arg){data + pos, (size_t)alen};
        pos += (size_t)alen + 2;
    }
    return pos;
}
