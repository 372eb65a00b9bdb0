/*
 * An HTTP message as http-parser hands it over — the start line's text (a request's target,
 * a response's reason phrase), header fields, body — kept for lookup. One arena holds the
 * start text and every name and value, each NUL-terminated, so the strings handed out point
 * into it; a table of fields indexes it. The arena, the table and the body buffer are kept
 * across ioloop__http_msg_reset(), so a reused message allocates nothing once warm.
 *
 *   arena:  "/a/b?x=1\0Host\0example.org\0Accept\0text/html\0"
 *            ^start     ^name ^value       ^name   ^value
 *
 * The parser callbacks of a server (requests) or a client (responses) feed it through the
 * functions below, passing the end of the bytes being parsed: that is how a value that goes
 * on after its line ended (obs-fold, which http-parser 2.9 accepts) is told from a value
 * split between two reads. Checks made here that http-parser does not make: obs-fold, a
 * field name that is not a token (whitespace before the colon, RFC 7230 §3.2.4); a value's
 * trailing whitespace is trimmed (http-parser skips only the leading). Fields that come after
 * the head (chunked trailers) are ignored.
 *
 * Loop thread of the message's owner; nothing here locks.
 */
#ifndef IOLOOP_LIB_HTTP_MESSAGE_H
#define IOLOOP_LIB_HTTP_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One header field: offsets and lengths in the arena. */
struct ioloop__http_field {
    uint32_t name;
    uint32_t name_len;
    uint32_t value;
    uint32_t value_len;
    char *joined; /* the first of several fields with one name: every value joined with ", "
                     (malloc'ed by the first lookup that found them) */
};

struct ioloop__http_msg {
    char *arena;
    size_t len, cap;
    struct ioloop__http_field *fields;
    uint32_t nfields, fields_cap;
    uint32_t start_len;     /* the start text is at offset 0 */
    uint8_t last;           /* what the parser gave last (enum in message.c) */
    bool value_at_end;      /* the last value fragment ended where the parsed bytes ended */
    char *body;
    size_t body_len, body_cap;
};

/* Appends a fragment of the start text (on_url, on_status). Returns 0, -ENOMEM, -EBADMSG. */
int ioloop__http_msg_start(struct ioloop__http_msg *m, const char *at, size_t len);
/* A fragment of a field name (on_header_field); ignored after the head. Returns 0, -ENOMEM,
 * -EBADMSG (the previous name was not a token). */
int ioloop__http_msg_field(struct ioloop__http_msg *m, const char *at, size_t len);
/* A fragment of a field value (on_header_value); `end` is the end of the bytes the parser is
 * executing. Returns 0, -ENOMEM, -EBADMSG (obs-fold, or the name was not a token). */
int ioloop__http_msg_value(struct ioloop__http_msg *m, const char *at, size_t len,
                           const char *end);
/* The head is complete (on_headers_complete): terminates what is open. Returns 0, -ENOMEM,
 * -EBADMSG. Strings handed out from here on stay where they are until the reset. */
int ioloop__http_msg_head_done(struct ioloop__http_msg *m);

/* Makes room for n more body bytes. Returns 0 or -ENOMEM. */
int ioloop__http_msg_body_reserve(struct ioloop__http_msg *m, size_t n);
/* Appends body bytes, at most `max` in all. Returns 0, -EMSGSIZE (beyond max), -ENOMEM. */
int ioloop__http_msg_body(struct ioloop__http_msg *m, const char *at, size_t len, size_t max);

/* The start text ("" if none came). After head_done. */
const char *ioloop__http_msg_start_text(const struct ioloop__http_msg *m);
/* The value of field `name` (case-insensitive), several joined with ", "; NULL when absent
 * (or, with errno ENOMEM, when the joined value could not be made). After head_done. */
const char *ioloop__http_msg_header(struct ioloop__http_msg *m, const char *name);

/* How many fields are named `name` (case-insensitive). After head_done. */
unsigned ioloop__http_msg_count(const struct ioloop__http_msg *m, const char *name);

/* Empties the message for reuse; buffers larger than `keep` bytes are released. */
void ioloop__http_msg_reset(struct ioloop__http_msg *m, size_t keep);
/* Releases everything; the message is empty (and reusable) afterwards. */
void ioloop__http_msg_free(struct ioloop__http_msg *m);

/*
 * Line endings, which Debian's http-parser (built without HTTP_PARSER_STRICT) does not check
 * everywhere: it takes any byte for the LF after the CR that ends a head or a chunk-size
 * line, and any two bytes for the CRLF after a chunk's data — a message framed one way for
 * it and another way for a proxy in front. The caller passes every byte the parser consumed
 * that is not body data (the framing), in order; a CR must be followed by LF, and after a
 * chunk's data (ioloop__http_framing_chunk_end) CRLF must follow. Bare LF stays allowed, as
 * the parser allows it (RFC 7230 §3.5).
 */
struct ioloop__http_framing {
    uint8_t due;  /* what the next framing byte must be (enum in message.c) */
    uint8_t line; /* where in a request line the next byte is (enum in message.c) */
    uint8_t pos;  /* bytes of the HTTP-version seen */
};

/*
 * The request line, which the non-strict parser checks only in part: it takes "HXXX/1.1"
 * for "HTTP/1.1" (it checks the H alone) and several spaces between the parts. Armed for
 * each request (at the connection's start and after each request), the check then reads the
 * same framing bytes: after optional empty lines, method SP target SP "HTTP/" DIGIT "."
 * DIGIT and the line's end; a line without a version is left to the parser (HTTP/0.9: 505).
 */
void ioloop__http_framing_request_line(struct ioloop__http_framing *f);

/* Checks the framing bytes [from, to). Returns 0, or -EBADMSG. */
int ioloop__http_framing_check(struct ioloop__http_framing *f, const char *from,
                               const char *to);
/* A chunk's data just ended: CRLF must come next. */
void ioloop__http_framing_chunk_end(struct ioloop__http_framing *f);

/* Is s[0..len) a non-empty HTTP token (RFC 7230 tchar)? */
bool ioloop__http_is_token(const char *s, size_t len);
/* May s be sent as a field value: no control character but HTAB? */
bool ioloop__http_is_field_value(const char *s);
/* Does the comma-separated list s[0..len) (a Connection value, say) hold `token`, in any
 * case, with optional whitespace around its elements (RFC 9110 §5.6.1)? */
bool ioloop__http_list_has(const char *s, size_t len, const char *token);

#endif /* IOLOOP_LIB_HTTP_MESSAGE_H */
