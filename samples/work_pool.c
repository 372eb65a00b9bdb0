/*
 * work_pool — a TCP server that hands CPU-heavy jobs to a work pool, so its loops stay
 * responsive. Each line a client sends is hashed ROUNDS times (an iterated 64-bit mix) on a
 * pool thread; the answer "<digest> <line>" is written when the job's done runs in the
 * connection's loop, so answers come in completion order. A "ping" line is answered at once
 * by the loop itself, even while jobs run. At the end it prints each loop's max lag (the
 * longest one iteration kept the loop busy) and the work pool's counters.
 *
 *   build/samples/work_pool -t 10 &
 *   (printf 'hello\nworld\nping\n'; sleep 1) | nc 127.0.0.1 9001    ("pong" comes first)
 *
 * A connection may close while its jobs run: it remembers its jobs, and on_close orphans
 * them, so a late done only frees its job. (Dones can even run in ioloop_free(), at exit.)
 *
 * Options: -a ADDRESS (default 127.0.0.1:9001), -n LOOPS (default 1), -w THREADS (default 0:
 * one per CPU), -r ROUNDS (default 20 000 000: some tens of ms a line), -t SECONDS (stop
 * after that long; default: run until SIGINT or SIGTERM).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

#define LINE_MAX_BYTES 1024

struct options {
    const char *address;
    int loops, threads;
    uint64_t rounds;
    unsigned seconds;
};

struct client;

/* A client's list of jobs. */
struct link {
    struct link *prev, *next;
};

/* One line being hashed. */
struct job {
    struct link link;          /* first: a link is its job; in its client's list */
    struct client *client;     /* NULL once the client closed */
    uint64_t rounds, digest;
    size_t len;
    char line[];
};

/* A connection and the jobs it waits for. */
struct client {
    ioloop_conn_t *conn;
    struct link jobs;          /* list head */
};

static ioloop_work_pool_t *work_pool;

/* The CPU-heavy part: FNV-1a over the line, then `rounds` rounds of splitmix64's mixer. */
static void hash_line(void *arg)
{
    struct job *job = arg;
    uint64_t h = 14695981039346656037u;

    for (size_t i = 0; i < job->len; i++)
        h = (h ^ (unsigned char)job->line[i]) * 1099511628211u;
    for (uint64_t r = 0; r < job->rounds; r++) {
        h += 0x9e3779b97f4a7c15u;
        h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9u;
        h = (h ^ (h >> 27)) * 0x94d049bb133111ebu;
        h ^= h >> 31;
    }
    job->digest = h;
}

/* Back in the connection's loop: answer, unless the client left (or the job was cancelled
 * because the pool or the loop is going away). */
static void on_hashed(ioloop_t *loop, int err, void *arg)
{
    struct job *job = arg;
    char reply[32 + LINE_MAX_BYTES];
    int n;

    if (job->client != NULL) {
        job->link.prev->next = job->link.next;
        job->link.next->prev = job->link.prev;
        n = err == 0 ? snprintf(reply, sizeof reply, "%016" PRIx64 " %.*s\n", job->digest,
                                (int)job->len, job->line)
                     : snprintf(reply, sizeof reply, "error %s\n", strerror(-err));
        ioloop_conn_write(job->client->conn, reply, (size_t)n);
    }
    free(job);
}

static void submit_line(struct client *c, const char *line, size_t len, uint64_t rounds)
{
    struct job *job = malloc(sizeof *job + len);
    int64_t id;

    if (job == NULL) {
        ioloop_conn_write(c->conn, "error out of memory\n", 20);
        return;
    }
    memcpy(job->line, line, len);
    job->len = len;
    job->rounds = rounds;
    job->client = c;
    id = ioloop_work_submit(work_pool, ioloop_conn_loop(c->conn), hash_line, on_hashed, job);
    if (id < 0) { /* no done will run: the job is still ours */
        char reply[64];
        int n = snprintf(reply, sizeof reply, "error %s\n", strerror((int)-id));

        ioloop_conn_write(c->conn, reply, (size_t)n);
        free(job);
        return;
    }
    job->link.prev = c->jobs.prev; /* after the submit is fine: the done runs here, later */
    job->link.next = &c->jobs;
    c->jobs.prev->next = &job->link;
    c->jobs.prev = &job->link;
}

static void on_open(ioloop_conn_t *conn)
{
    struct client *c = calloc(1, sizeof *c);

    if (c == NULL) {
        ioloop_conn_close(conn);
        return;
    }
    c->conn = conn;
    c->jobs.prev = c->jobs.next = &c->jobs;
    ioloop_conn_set_data(conn, c);
}

static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    const struct options *opt = ioloop_conn_user(conn);
    struct client *c = ioloop_conn_data(conn);
    size_t used = 0;
    const char *nl;

    if (c == NULL)
        return len;
    while ((nl = memchr(data + used, '\n', len - used)) != NULL) {
        size_t n = (size_t)(nl - (data + used));

        if (n > 0 && data[used + n - 1] == '\r')
            n--;
        if (n == 4 && memcmp(data + used, "ping", 4) == 0)
            ioloop_conn_write(conn, "pong\n", 5); /* the loop answers at once */
        else if (n > 0 && n <= LINE_MAX_BYTES)
            submit_line(c, data + used, n, opt->rounds);
        used = (size_t)(nl - data) + 1;
    }
    if (len - used > LINE_MAX_BYTES)
        ioloop_conn_close(conn); /* a line too long to be one */
    return used;
}

static void on_close(ioloop_conn_t *conn, int err)
{
    struct client *c = ioloop_conn_data(conn);

    if (c == NULL)
        return;
    for (struct link *l = c->jobs.next; l != &c->jobs; l = l->next)
        ((struct job *)l)->client = NULL; /* its done will only free it */
    free(c);
}

static void on_stop(ioloop_t *loop, int signo, void *arg)
{
    ioloop_stop(loop);
}

static void on_time_up(ioloop_t *loop, void *arg)
{
    ioloop_stop(loop);
}

int main(int argc, char **argv)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = on_open, .on_data = on_data, .on_close = on_close,
    };
    struct options opt = {.address = "127.0.0.1:9001", .loops = 1, .rounds = 20000000};
    ioloop_work_stats_t ws;
    ioloop_server_t *server;
    ioloop_pool_t *pool;
    ioloop_t *main_loop;
    int c, err;

    while ((c = getopt(argc, argv, "a:n:w:r:t:")) != -1) {
        switch (c) {
        case 'a': opt.address = optarg; break;
        case 'n': opt.loops = atoi(optarg); break;
        case 'w': opt.threads = atoi(optarg); break;
        case 'r': opt.rounds = strtoull(optarg, NULL, 10); break;
        case 't': opt.seconds = (unsigned)strtoul(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: %s [-a ADDRESS] [-n LOOPS] [-w THREADS] [-r ROUNDS] "
                            "[-t SECONDS]\n", argv[0]);
            return 2;
        }
    }
    /* Signals before any thread exists: the library's threads block them anyway. */
    if ((main_loop = ioloop_new()) == NULL) {
        perror("work_pool: ioloop_new");
        return 1;
    }
    if ((err = ioloop_add_signal(main_loop, SIGINT, on_stop, NULL)) < 0 ||
        (err = ioloop_add_signal(main_loop, SIGTERM, on_stop, NULL)) < 0) {
        fprintf(stderr, "work_pool: ioloop_add_signal: %s\n", strerror(-err));
        return 1;
    }
    if (opt.seconds > 0)
        ioloop_run_after(main_loop, (uint64_t)opt.seconds * 1000, on_time_up, NULL);
    if ((pool = ioloop_pool_new(opt.loops)) == NULL ||
        (work_pool = ioloop_work_pool_new(opt.threads)) == NULL) {
        perror("work_pool: pool");
        return 1;
    }
    server = ioloop_server_new(pool, opt.address, &handlers, &opt);
    if (server == NULL || (errno = -ioloop_server_start(server)) != 0) {
        fprintf(stderr, "work_pool: cannot serve %s: %s\n", opt.address, strerror(errno));
        return 1;
    }
    ioloop_work_pool_get_stats(work_pool, &ws);
    printf("work_pool: listening on %s, %d loop%s, %" PRIu64 " work threads\n", opt.address,
           ioloop_pool_size(pool), ioloop_pool_size(pool) == 1 ? "" : "s", ws.threads);
    fflush(stdout);

    ioloop_start(main_loop);

    /* The server first (its connections orphan their jobs), then the work pool (what is
     * still queued is cancelled; those dones only free their jobs), then the loops. */
    ioloop_work_pool_get_stats(work_pool, &ws);
    ioloop_server_free(server);
    ioloop_work_pool_free(work_pool);
    for (int i = 0; i < ioloop_pool_size(pool); i++) {
        ioloop_stats_t ls;

        ioloop_get_stats(ioloop_pool_loop(pool, i), &ls);
        printf("loop %d: %" PRIu64 " io events, %" PRIu64 " callbacks, max lag %" PRIu64
               " us\n", i, ls.io_events, ls.callbacks_run, ls.max_lag_us);
    }
    printf("work pool when stopped: %" PRIu64 " submitted, %" PRIu64 " completed (the rest "
           "was cancelled)\n", ws.submitted, ws.completed);
    ioloop_pool_free(pool);
    ioloop_free(main_loop);
    return 0;
}
