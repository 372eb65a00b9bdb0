/*
 * What the HTTP client sends: URLs taken apart by http-parser's http_parser_parse_url(), and
 * the request's bytes — request line, Host, the application's fields, Content-Length, body —
 * built into one buffer, so that a request goes out in one write (and can be written again
 * on a fresh connection, see client.c). Every field the application gives is checked first:
 * a CR or LF in it would let it inject fields or a whole request (header injection).
 */
#include "http/client.h"

#include <ctype.h>
#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- URLs ------------------------------------------------------------------------------- */

static bool has(const struct http_parser_url *pu, int field)
{
    return (pu->field_set & (1u << field)) != 0;
}

/* Printable ASCII only: http-parser lets tabs and bytes above 0x7f into a path, which the
 * request line cannot carry as they are (RFC 3986: percent-encode them). */
static bool printable(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

int ioloop__http_url_parse(const char *url, struct ioloop__http_url *u)
{
    struct http_parser_url pu;
    size_t len = strlen(url), host_off, host_len;
    char host[IOLOOP__HOST_MAX + 1];
    uint16_t port = 80;
    bool v6;
    int n;

    memset(u, 0, sizeof *u);
    http_parser_url_init(&pu);
    if (http_parser_parse_url(url, len, 0, &pu) != 0 || !has(&pu, UF_SCHEMA) ||
        !has(&pu, UF_HOST) || has(&pu, UF_USERINFO))
        return -EINVAL;
    if (pu.field_data[UF_SCHEMA].len != 4 ||
        strncasecmp(url + pu.field_data[UF_SCHEMA].off, "http", 4) != 0)
        return -EINVAL; /* https and everything else */
    if (has(&pu, UF_PORT)) {
        if (pu.port == 0)
            return -EINVAL;
        port = pu.port;
    }
    host_off = pu.field_data[UF_HOST].off;
    host_len = pu.field_data[UF_HOST].len;
    if (host_len == 0 || host_len >= sizeof host)
        return -EINVAL;
    for (size_t i = 0; i < host_len; i++)
        host[i] = (char)tolower((unsigned char)url[host_off + i]);
    host[host_len] = '\0';
    /* What ioloop_connect() would refuse (an underscore, an IPv6 zone, "127.1") is refused
     * here, before anything is made. */
    if (ioloop__host_parse(host, port, NULL) < 0)
        return -EINVAL;
    v6 = host_off > 0 && url[host_off - 1] == '[';
    n = snprintf(u->addr, sizeof u->addr, v6 ? "[%s]:%u" : "%s:%u", host, port);
    if (n < 0 || (size_t)n >= sizeof u->addr)
        return -EINVAL;
    n = port == 80 ? snprintf(u->host, sizeof u->host, v6 ? "[%.*s]" : "%.*s", (int)host_len,
                              url + host_off)
                   : snprintf(u->host, sizeof u->host, v6 ? "[%.*s]:%u" : "%.*s:%u",
                              (int)host_len, url + host_off, port);
    if (n < 0 || (size_t)n >= sizeof u->host)
        return -EINVAL;
    if (has(&pu, UF_PATH)) {
        u->path = url + pu.field_data[UF_PATH].off;
        u->path_len = pu.field_data[UF_PATH].len;
    }
    if (has(&pu, UF_QUERY)) {
        u->query = url + pu.field_data[UF_QUERY].off;
        u->query_len = pu.field_data[UF_QUERY].len;
    }
    if (!printable(u->path != NULL ? u->path : "", u->path_len) ||
        !printable(u->query != NULL ? u->query : "", u->query_len))
        return -EINVAL;
    return 0;
}

/* ---- Requests --------------------------------------------------------------------------- */

bool ioloop__http_method_idempotent(const char *method)
{
    static const char *const idempotent[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS",
                                             "TRACE"};

    for (size_t i = 0; i < sizeof idempotent / sizeof idempotent[0]; i++)
        if (strcmp(method, idempotent[i]) == 0)
            return true;
    return false;
}

/* Methods whose requests carry a body by definition: they say Content-Length: 0 without one,
 * so that the server does not wait for a body (RFC 7230 §3.3.2). */
static bool wants_length(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
           strcmp(method, "PATCH") == 0;
}

/* What the client makes of one of the application's fields. */
enum {
    FIELD_PLAIN,
    FIELD_HOST,  /* replaces the client's Host */
    FIELD_CLOSE, /* Connection: close: the connection is not kept */
};

static bool name_is(const char *field, size_t name_len, const char *name)
{
    return strlen(name) == name_len && strncasecmp(field, name, name_len) == 0;
}

/* "Name: value" (the space optional): a token name, a value without control characters
 * but tabs. Returns FIELD_* or -EINVAL. */
static int check_field(const char *field)
{
    const char *colon = strchr(field, ':');
    size_t name_len;

    if (colon == NULL)
        return -EINVAL;
    name_len = (size_t)(colon - field);
    if (!ioloop__http_is_token(field, name_len) || !ioloop__http_is_field_value(colon + 1))
        return -EINVAL;
    if (name_is(field, name_len, "Content-Length") ||
        name_is(field, name_len, "Transfer-Encoding"))
        return -EINVAL;
    if (name_is(field, name_len, "Host"))
        return FIELD_HOST;
    if (!name_is(field, name_len, "Connection"))
        return FIELD_PLAIN;
    return ioloop__http_list_has(colon + 1, strlen(colon + 1), "close") ? FIELD_CLOSE
                                                                         : FIELD_PLAIN;
}

/* A buffer the request is assembled in; its size is counted first, so it never grows. */
struct builder {
    char *p;
    size_t len;
};

static void put(struct builder *b, const void *s, size_t len)
{
    memcpy(b->p + b->len, s, len);
    b->len += len;
}

static void puts_(struct builder *b, const char *s)
{
    put(b, s, strlen(s));
}

int ioloop__http_request_build(const char *method, const struct ioloop__http_url *u,
                               const char *const *headers, const void *body, size_t len,
                               struct ioloop__http_request_bytes *out)
{
    bool own_host = false, close = false, length;
    char length_field[48];
    size_t size, fields = 0;
    struct builder b;
    int kind;

    if (!ioloop__http_is_token(method, strlen(method)) || strcmp(method, "CONNECT") == 0)
        return -EINVAL; /* CONNECT's target is an authority, not a path (RFC 7231 §4.3.6) */
    if (body == NULL && len > 0)
        return -EINVAL;
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        if ((kind = check_field(headers[i])) < 0)
            return kind;
        own_host |= kind == FIELD_HOST;
        close |= kind == FIELD_CLOSE;
        fields += strlen(headers[i]) + 2;
    }
    length = body != NULL || wants_length(method);
    snprintf(length_field, sizeof length_field, "Content-Length: %zu\r\n", len);
    /* The request line, Host, the fields, Content-Length, the blank line. */
    size = strlen(method) + 1 + 1 + u->path_len + 1 + u->query_len + sizeof " HTTP/1.1\r\n" +
           sizeof "Host: \r\n" + strlen(u->host) + fields + sizeof length_field + 2;
    if (size > IOLOOP_CONN_MAX_OUTPUT || len > IOLOOP_CONN_MAX_OUTPUT - size)
        return -EMSGSIZE; /* more than a connection takes in one write */
    b.p = malloc(size + len);
    if (b.p == NULL)
        return -ENOMEM;
    b.len = 0;
    puts_(&b, method);
    put(&b, " ", 1);
    if (u->path != NULL)
        put(&b, u->path, u->path_len);
    else
        put(&b, "/", 1);
    if (u->query != NULL) {
        put(&b, "?", 1);
        put(&b, u->query, u->query_len);
    }
    puts_(&b, " HTTP/1.1\r\n");
    if (!own_host) {
        puts_(&b, "Host: ");
        puts_(&b, u->host);
        put(&b, "\r\n", 2);
    }
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        puts_(&b, headers[i]);
        put(&b, "\r\n", 2);
    }
    if (length)
        puts_(&b, length_field);
    put(&b, "\r\n", 2);
    if (len > 0)
        put(&b, body, len);
    out->data = b.p;
    out->len = b.len;
    out->close = close;
    return 0;
}
