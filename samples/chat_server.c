/*
 * chat_server — every line a client sends goes to every other client; clients live on
 * several loops.
 *
 * Connections are spread over the pool's loops, so a line read in one loop's thread must
 * reach connections owned by other threads: the server keeps a mutex-protected set of
 * connection ids and sends each complete line to the others with ioloop_server_send(), which
 * copies the bytes and queues them for the receiving connection's own loop. A partial line
 * stays buffered in the connection (on_data consumes only up to the last '\n').
 * Ctrl-C or SIGTERM stops it.
 *
 *   build/samples/chat_server            (then, in two or more shells: nc 127.0.0.1 9001)
 *
 * Options: -a ADDRESS (default 127.0.0.1:9001), -n LOOPS (default 2; 0: one per CPU).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

/* A client whose unfinished line grows past this is disconnected: the server must not buffer
 * without bound for a peer that never sends '\n'. */
#define MAX_LINE 4096

struct chat {
    ioloop_server_t *server;
    pthread_mutex_t lock;   /* guards ids and count: every loop's thread touches them */
    uint64_t *ids;
    size_t count, cap;
};

static void chat_join(struct chat *chat, uint64_t id)
{
    pthread_mutex_lock(&chat->lock);
    if (chat->count == chat->cap) {
        size_t cap = chat->cap ? chat->cap * 2 : 16;
        uint64_t *ids = realloc(chat->ids, cap * sizeof *ids);

        if (ids == NULL) {
            pthread_mutex_unlock(&chat->lock);
            return; /* this client will only talk, never hear: acceptable for a sample */
        }
        chat->ids = ids;
        chat->cap = cap;
    }
    chat->ids[chat->count++] = id;
    pthread_mutex_unlock(&chat->lock);
}

static void chat_leave(struct chat *chat, uint64_t id)
{
    pthread_mutex_lock(&chat->lock);
    for (size_t i = 0; i < chat->count; i++) {
        if (chat->ids[i] == id) {
            chat->ids[i] = chat->ids[--chat->count];
            break;
        }
    }
    pthread_mutex_unlock(&chat->lock);
}

/* ioloop_server_send() only copies and queues, never calls back into us, so holding the lock
 * across it is safe. -ENOENT (that client closed meanwhile) is fine: its on_close removes it. */
static void chat_broadcast(struct chat *chat, uint64_t from, const char *line, size_t len)
{
    pthread_mutex_lock(&chat->lock);
    for (size_t i = 0; i < chat->count; i++)
        if (chat->ids[i] != from)
            ioloop_server_send(chat->server, chat->ids[i], line, len);
    pthread_mutex_unlock(&chat->lock);
}

static void on_open(ioloop_conn_t *conn)
{
    IOLOOP_LOG_INFO("client %" PRIu64 " joined", ioloop_conn_id(conn));
    chat_join(ioloop_conn_user(conn), ioloop_conn_id(conn));
}

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    size_t used = 0;
    const char *nl;

    while ((nl = memchr(data + used, '\n', len - used)) != NULL) {
        size_t line = (size_t)(nl - (data + used)) + 1;

        chat_broadcast(ioloop_conn_user(conn), ioloop_conn_id(conn), data + used, line);
        used += line;
    }
    if (len - used > MAX_LINE) {
        IOLOOP_LOG_WARN("client %" PRIu64 ": line longer than %d bytes; disconnecting",
                        ioloop_conn_id(conn), MAX_LINE);
        ioloop_conn_close(conn);
        return len;
    }
    return used; /* the partial line stays buffered until its '\n' arrives */
}

static void on_close(ioloop_conn_t *conn, int err)
{
    chat_leave(ioloop_conn_user(conn), ioloop_conn_id(conn));
    IOLOOP_LOG_INFO("client %" PRIu64 " left: %s", ioloop_conn_id(conn),
                    err == 0 ? "orderly" : strerror(-err));
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    fprintf(stderr, "\n%s: stopping\n", signo == SIGINT ? "SIGINT" : "SIGTERM");
    ioloop_stop(loop);
}

int main(int argc, char **argv)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = on_open, .on_data = on_data, .on_close = on_close,
    };
    struct chat chat = {.lock = PTHREAD_MUTEX_INITIALIZER};
    const char *address = "127.0.0.1:9001";
    int nloops = 2, opt, status = 0, err;
    ioloop_pool_t *pool = NULL;
    ioloop_t *main_loop;

    while ((opt = getopt(argc, argv, "a:n:")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'n': nloops = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-a ADDRESS] [-n LOOPS (0: one per CPU)]\n", argv[0]);
            return 2;
        }
    }
    ioloop_log_open(NULL);

    /* The pool's threads block every signal, so SIGINT and SIGTERM reach the main loop. */
    main_loop = ioloop_new();
    if (main_loop == NULL || (pool = ioloop_pool_new(nloops)) == NULL) {
        perror("chat_server"); /* constructors set errno */
        ioloop_free(main_loop);
        return 1;
    }
    /* ioloop_add_signal() returns a negative errno; it does not set errno. */
    if ((err = ioloop_add_signal(main_loop, SIGINT, on_signal, NULL)) < 0 ||
        (err = ioloop_add_signal(main_loop, SIGTERM, on_signal, NULL)) < 0) {
        fprintf(stderr, "chat_server: ioloop_add_signal: %s\n", strerror(-err));
        ioloop_pool_free(pool);
        ioloop_free(main_loop);
        return 1;
    }
    /* Set before the server starts: no connection, hence no callback, exists before that. */
    chat.server = ioloop_server_new(pool, address, &handlers, &chat);
    if (chat.server == NULL || (errno = -ioloop_server_start(chat.server)) != 0) {
        fprintf(stderr, "chat_server: cannot serve %s: %s\n", address, strerror(errno));
        status = 1;
    } else {
        printf("chat_server: listening on %s (port %d) with %d loops\n", address,
               ioloop_server_port(chat.server), ioloop_pool_size(pool));
        fflush(stdout);
        ioloop_start(main_loop);
    }

    ioloop_server_free(chat.server); /* every client's on_close runs before it returns */
    ioloop_pool_free(pool);
    ioloop_free(main_loop);
    free(chat.ids);
    ioloop_log_close();
    return status;
}
