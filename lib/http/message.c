/*
 * HTTP messages as http-parser delivers them: fragments of the start text, of names and of
 * values are appended to one arena as they come, and each string is NUL-terminated when the
 * next one begins (see message.h for the layout and what is checked here).
 *
 * Telling obs-fold from a split: http-parser reports a value in fragments — one per read it
 * spans, and one more per continuation line. A fragment that follows another value fragment
 * with no name in between continues the same value only if the first fragment ended exactly
 * where the parsed bytes ended (the read was cut there); if it ended earlier, the parser had
 * met the end of the line, and the second fragment is a folded continuation.
 */
#include "http/message.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* m->last */
enum {
    LAST_NONE,
    LAST_START,
    LAST_FIELD,
    LAST_VALUE,
    LAST_DONE, /* the head is complete: later fields are trailers */
};

/* First sizes: a typical request head (a few hundred bytes, a dozen fields) fits. */
#define ARENA_MIN 1024
#define FIELDS_MIN 16
#define BODY_MIN 1024

/* RFC 7230 tchar: "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" /
 * "`" / "|" / "~" / DIGIT / ALPHA, as a table (a field name is checked byte by byte). */
static const bool tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

bool ioloop__http_is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!tchar[(unsigned char)s[i]])
            return false;
    return true;
}

bool ioloop__http_list_has(const char *s, size_t len, const char *token)
{
    size_t want = strlen(token);
    const char *end = s + len;

    while (s < end) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *b = s, *e = comma != NULL ? comma : end;

        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - b) == want && strncasecmp(b, token, want) == 0)
            return true;
        s = comma != NULL ? comma + 1 : end;
    }
    return false;
}

bool ioloop__http_is_field_value(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static int grow(char **buf, size_t *cap, size_t need, size_t min)
{
    size_t n = *cap > 0 ? *cap : min;
    char *p;

    if (need <= *cap)
        return 0;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return -ENOMEM;
        n *= 2;
    }
    p = realloc(*buf, n);
    if (p == NULL)
        return -ENOMEM;
    *buf = p;
    *cap = n;
    return 0;
}

/* The arena's offsets are 32-bit: a head is bounded far below that by its limit. */
static int append(struct ioloop__http_msg *m, const char *at, size_t len)
{
    int err;

    if (len > UINT32_MAX - 1 - m->len)
        return -ENOMEM;
    if ((err = grow(&m->arena, &m->cap, m->len + len + 1, ARENA_MIN)) < 0)
        return err;
    memcpy(m->arena + m->len, at, len);
    m->len += len;
    return 0;
}

/* Ends the string being appended (room for the NUL was made by append()). */
static int terminate(struct ioloop__http_msg *m)
{
    int err;

    if ((err = grow(&m->arena, &m->cap, m->len + 1, ARENA_MIN)) < 0)
        return err;
    m->arena[m->len++] = '\0';
    return 0;
}

static struct ioloop__http_field *current(struct ioloop__http_msg *m)
{
    return &m->fields[m->nfields - 1];
}

static int end_name(struct ioloop__http_msg *m)
{
    struct ioloop__http_field *f = current(m);

    f->name_len = (uint32_t)(m->len - f->name);
    if (!ioloop__http_is_token(m->arena + f->name, f->name_len))
        return -EBADMSG; /* e.g. "Host : x": whitespace before the colon (RFC 7230 §3.2.4) */
    f->value = (uint32_t)m->len + 1;
    return terminate(m);
}

static int end_value(struct ioloop__http_msg *m)
{
    struct ioloop__http_field *f = current(m);

    while (m->len > f->value && (m->arena[m->len - 1] == ' ' || m->arena[m->len - 1] == '\t'))
        m->len--;
    f->value_len = (uint32_t)(m->len - f->value);
    return terminate(m);
}

/* Ends whatever string is open. */
static int end_open(struct ioloop__http_msg *m)
{
    switch (m->last) {
    case LAST_NONE:
    case LAST_START:
        m->start_len = (uint32_t)m->len;
        return terminate(m);
    case LAST_FIELD:
        return -EBADMSG; /* a name without a value: the parser never reports one */
    case LAST_VALUE:
        return end_value(m);
    default:
        return 0;
    }
}

int ioloop__http_msg_start(struct ioloop__http_msg *m, const char *at, size_t len)
{
    if (m->last != LAST_NONE && m->last != LAST_START)
        return -EBADMSG;
    m->last = LAST_START;
    return append(m, at, len);
}

int ioloop__http_msg_field(struct ioloop__http_msg *m, const char *at, size_t len)
{
    int err;

    if (m->last == LAST_DONE)
        return 0; /* a trailer */
    if (m->last != LAST_FIELD) {
        if ((err = end_open(m)) < 0)
            return err;
        if (m->nfields == m->fields_cap) {
            uint32_t n = m->fields_cap > 0 ? m->fields_cap * 2 : FIELDS_MIN;
            struct ioloop__http_field *f = realloc(m->fields, n * sizeof *f);

            if (f == NULL)
                return -ENOMEM;
            m->fields = f;
            m->fields_cap = n;
        }
        m->fields[m->nfields++] = (struct ioloop__http_field){.name = (uint32_t)m->len};
        m->last = LAST_FIELD;
    }
    return append(m, at, len);
}

int ioloop__http_msg_value(struct ioloop__http_msg *m, const char *at, size_t len,
                           const char *end)
{
    int err;

    switch (m->last) {
    case LAST_DONE:
        return 0; /* a trailer's */
    case LAST_FIELD:
        if ((err = end_name(m)) < 0)
            return err;
        break;
    case LAST_VALUE:
        if (!m->value_at_end)
            return -EBADMSG; /* the line had ended: a folded continuation */
        break;
    default:
        return -EBADMSG;
    }
    m->last = LAST_VALUE;
    m->value_at_end = at + len == end;
    return append(m, at, len);
}

int ioloop__http_msg_head_done(struct ioloop__http_msg *m)
{
    int err = end_open(m);

    m->last = LAST_DONE;
    return err;
}

int ioloop__http_msg_body_reserve(struct ioloop__http_msg *m, size_t n)
{
    if (n > SIZE_MAX - m->body_len)
        return -ENOMEM;
    return grow(&m->body, &m->body_cap, m->body_len + n, BODY_MIN);
}

int ioloop__http_msg_body(struct ioloop__http_msg *m, const char *at, size_t len, size_t max)
{
    int err;

    if (len > max || m->body_len > max - len)
        return -EMSGSIZE;
    if ((err = ioloop__http_msg_body_reserve(m, len)) < 0)
        return err;
    memcpy(m->body + m->body_len, at, len);
    m->body_len += len;
    return 0;
}

const char *ioloop__http_msg_start_text(const struct ioloop__http_msg *m)
{
    return m->arena != NULL ? m->arena : "";
}

static bool name_is(const struct ioloop__http_msg *m, const struct ioloop__http_field *f,
                    const char *name, size_t len)
{
    return f->name_len == len && strncasecmp(m->arena + f->name, name, len) == 0;
}

/* Every value of the fields named like `first`, joined with ", ". */
static char *join(const struct ioloop__http_msg *m, const struct ioloop__http_field *first,
                  const char *name, size_t len)
{
    const struct ioloop__http_field *end = m->fields + m->nfields;
    size_t total = 1; /* the NUL */
    char *s, *p;

    for (const struct ioloop__http_field *f = first; f < end; f++)
        if (name_is(m, f, name, len))
            total += (f == first ? 0 : 2) + f->value_len;
    s = malloc(total);
    if (s == NULL)
        return NULL;
    p = s;
    for (const struct ioloop__http_field *f = first; f < end; f++) {
        if (!name_is(m, f, name, len))
            continue;
        if (p != s) {
            memcpy(p, ", ", 2);
            p += 2;
        }
        memcpy(p, m->arena + f->value, f->value_len);
        p += f->value_len;
    }
    *p = '\0';
    return s;
}

const char *ioloop__http_msg_header(struct ioloop__http_msg *m, const char *name)
{
    size_t len = strlen(name);
    struct ioloop__http_field *first = NULL;
    bool several = false;

    for (uint32_t i = 0; i < m->nfields && !several; i++) {
        if (!name_is(m, &m->fields[i], name, len))
            continue;
        if (first == NULL)
            first = &m->fields[i];
        else
            several = true;
    }
    if (first == NULL)
        return NULL;
    if (!several)
        return m->arena + first->value;
    if (first->joined == NULL && (first->joined = join(m, first, name, len)) == NULL)
        errno = ENOMEM;
    return first->joined;
}

unsigned ioloop__http_msg_count(const struct ioloop__http_msg *m, const char *name)
{
    size_t len = strlen(name);
    unsigned n = 0;

    for (uint32_t i = 0; i < m->nfields; i++)
        n += name_is(m, &m->fields[i], name, len);
    return n;
}

void ioloop__http_msg_reset(struct ioloop__http_msg *m, size_t keep)
{
    for (uint32_t i = 0; i < m->nfields; i++)
        free(m->fields[i].joined);
    if (m->cap > keep) {
        free(m->arena);
        m->arena = NULL;
        m->cap = 0;
    }
    if (m->fields_cap * sizeof *m->fields > keep) {
        free(m->fields);
        m->fields = NULL;
        m->fields_cap = 0;
    }
    if (m->body_cap > keep) {
        free(m->body);
        m->body = NULL;
        m->body_cap = 0;
    }
    m->len = 0;
    m->nfields = 0;
    m->start_len = 0;
    m->last = LAST_NONE;
    m->value_at_end = false;
    m->body_len = 0;
}

/* ioloop__http_framing.due */
enum {
    DUE_ANY,
    DUE_CR, /* after a chunk's data */
    DUE_LF, /* after a CR */
};

/* ioloop__http_framing.line */
enum {
    LINE_OFF,     /* not in a request line */
    LINE_LEAD,    /* empty lines before it, then the method */
    LINE_METHOD,
    LINE_TARGET0, /* the target's first byte: one SP only */
    LINE_TARGET,
    LINE_VERSION, /* "HTTP/1.1", pos bytes of it seen */
};

void ioloop__http_framing_request_line(struct ioloop__http_framing *f)
{
    f->line = LINE_LEAD;
    f->pos = 0;
}

/* One byte of a request line. Returns 0, or -EBADMSG. */
static int line_step(struct ioloop__http_framing *f, unsigned char c)
{
    static const char version[] = "HTTP/D.D";
    bool eol = c == '\r' || c == '\n';

    switch (f->line) {
    case LINE_LEAD:
        if (!eol)
            f->line = LINE_METHOD;
        return 0;
    case LINE_METHOD:
        if (c == ' ')
            f->line = LINE_TARGET0;
        return 0; /* the method itself is the parser's to check */
    case LINE_TARGET0:
        if (c == ' ' || eol)
            return -EBADMSG;
        f->line = LINE_TARGET;
        return 0;
    case LINE_TARGET:
        if (c == ' ')
            f->line = LINE_VERSION;
        else if (eol)
            f->line = LINE_OFF; /* no version: the parser's HTTP/0.9, refused with 505 */
        return 0;
    default:
        break;
    }
    if (f->pos == sizeof version - 1) {
        f->line = LINE_OFF;
        return eol ? 0 : -EBADMSG;
    }
    if (version[f->pos] == 'D' ? c < '0' || c > '9' : c != (unsigned char)version[f->pos])
        return -EBADMSG;
    f->pos++;
    return 0;
}

int ioloop__http_framing_check(struct ioloop__http_framing *f, const char *from,
                               const char *to)
{
    const char *p = from, *cr;

    for (const char *q = from; q < to && f->line != LINE_OFF; q++)
        if (line_step(f, (unsigned char)*q) < 0)
            return -EBADMSG;
    while (p < to) {
        if (f->due != DUE_ANY) {
            if (*p++ != (f->due == DUE_CR ? '\r' : '\n'))
                return -EBADMSG;
            f->due = f->due == DUE_CR ? DUE_LF : DUE_ANY;
            continue;
        }
        if ((cr = memchr(p, '\r', (size_t)(to - p))) == NULL)
            break;
        p = cr + 1;
        f->due = DUE_LF;
    }
    return 0;
}

void ioloop__http_framing_chunk_end(struct ioloop__http_framing *f)
{
    f->due = DUE_CR;
}

void ioloop__http_msg_free(struct ioloop__http_msg *m)
{
    ioloop__http_msg_reset(m, 0);
}
