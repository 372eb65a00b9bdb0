/*
 * http_fetch — one HTTP request with ioloop_http_fetch(), like a small curl -i:
 *
 *   build/samples/http_fetch http://localhost:8080/json
 *   build/samples/http_fetch http://127.0.0.1:8080/echo -X POST -d 'hello' -H 'X-Trace: 1'
 *
 * Options (after the URL or before it): -X METHOD (default GET, or POST with -d), -d BODY,
 * -H 'Name: value' (repeatable, sent in order), -t TIMEOUT_MS (default 10000; 0: none).
 * Prints the status, every response field and the body's size, and exits 0; on an error it
 * prints the error's text and exits 1 (2 for bad arguments).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

#define MAX_HEADERS 64

struct result {
    int err;
};

static void on_response(ioloop_t *loop, int err, const ioloop_http_response_t *resp, void *arg)
{
    struct result *r = arg;
    const char *name, *value;
    size_t len;

    r->err = err;
    ioloop_stop(loop);
    if (err < 0)
        return;
    printf("HTTP %d\n", ioloop_http_response_status(resp));
    for (size_t i = 0; (value = ioloop_http_response_header_at(resp, i, &name)) != NULL; i++)
        printf("%s: %s\n", name, value);
    ioloop_http_response_body(resp, &len);
    printf("\n%zu bytes of body\n", len);
}

/* strerror()'s words, with the client's meaning where it has its own. */
static const char *error_text(int err)
{
    switch (err) {
    case -ENOENT:
        return "no such host";
    case -EPROTO:
        return "malformed or incomplete response";
    case -EMSGSIZE:
        return "response too large";
    case -ETIMEDOUT:
        return "timed out";
    default:
        return strerror(-err);
    }
}

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s URL [-X METHOD] [-d BODY] [-H 'Name: value']... [-t TIMEOUT_MS]\n",
            prog);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *headers[MAX_HEADERS + 1] = {NULL};
    const char *method = NULL, *body = NULL, *url = NULL;
    struct result r = {0};
    unsigned long timeout_ms = 10000;
    int nheaders = 0, c;
    ioloop_t *loop;
    int64_t id;
    char *end;

    /* The URL may come first (as in the usage line) or after the options. */
    if (argc > 1 && argv[1][0] != '-') {
        url = argv[1];
        argv[1] = argv[0];
        argc--;
        argv++;
    }
    while ((c = getopt(argc, argv, "X:d:H:t:")) != -1) {
        switch (c) {
        case 'X':
            method = optarg;
            break;
        case 'd':
            body = optarg;
            break;
        case 'H':
            if (nheaders == MAX_HEADERS)
                usage(argv[0]);
            headers[nheaders++] = optarg;
            break;
        case 't':
            errno = 0;
            timeout_ms = strtoul(optarg, &end, 10);
            if (errno != 0 || *end != '\0')
                usage(argv[0]);
            break;
        default:
            usage(argv[0]);
        }
    }
    if (url == NULL && optind < argc)
        url = argv[optind++];
    if (url == NULL || optind != argc)
        usage(argv[0]);
    if (method == NULL)
        method = body != NULL ? "POST" : "GET";

    loop = ioloop_new();
    if (loop == NULL) {
        perror("ioloop_new");
        return 1;
    }
    id = ioloop_http_fetch(loop, method, url, headers, body, body != NULL ? strlen(body) : 0,
                           timeout_ms, on_response, &r);
    if (id < 0) {
        fprintf(stderr, "http_fetch: %s: %s\n", url,
                id == -EINVAL ? "invalid URL, method or header" : error_text((int)id));
        ioloop_free(loop);
        return id == -EINVAL ? 2 : 1;
    }
    ioloop_start(loop); /* until on_response stops it */
    ioloop_free(loop);
    if (r.err < 0) {
        fprintf(stderr, "http_fetch: %s: %s\n", url, error_text(r.err));
        return 1;
    }
    return 0;
}
