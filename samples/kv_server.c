/*
 * kv_server — a Redis-protocol (RESP2) key-value server on a pool of loops.
 *
 * It speaks enough of Redis for redis-cli and redis-benchmark: PING, ECHO, SET (EX, PX, NX,
 * XX, KEEPTTL), GET, DEL, EXISTS, INCR, MGET, TTL, PTTL, QUIT, and the CONFIG GET and COMMAND
 * replies those clients ask for. Requests are parsed incrementally: on_data runs every whole
 * command it was given, pipelined or split at any byte, answers each one with its own
 * ioloop_conn_write() (the library gathers a callback's writes into one send), and leaves a
 * partial command unconsumed for the next call. Inline commands ("PING\r\n" typed into nc;
 * arguments split at spaces, no quoting) work too. Sizes are bounded as Redis bounds them: a
 * malformed or oversized request gets a protocol error, and the connection closes once the
 * replies owed before it went out.
 *
 * With -n LOOPS the keyspace is sharded: a key's hash names a shard, shard i belongs to loop i
 * (attached with ioloop_set_data) and only that loop's thread touches it. A connection lives in
 * the loop the acceptor gave it to; a command for another shard travels there in a batch (one
 * ioloop_add_callback per shard per on_data), runs there, and the batch comes home with
 * ioloop_server_call(). Each connection keeps a FIFO of the replies it owes, completed in any
 * order and written from the head, so replies leave in request order. MGET, DEL and EXISTS
 * whose keys live on several shards fan out to each and gather the answers.
 *
 * Keys expire lazily when touched and by a sweep every SWEEP_MS that examines a bounded number
 * of keys per shard. SIGINT or SIGTERM stops the server: every connection stops being read,
 * the batches still away come home, and then the server, the pool and every key are freed.
 *
 * This file holds the connections, the shards and the batches between them; kv_resp.c the
 * RESP buffers and parser, kv_store.c a shard's keys and the commands (kv.h lists them).
 *
 *   build/samples/kv_server -n 2        (then: redis-cli -p 7379 set a 1; redis-benchmark -p 7379)
 *
 * Options: -a ADDRESS (default 127.0.0.1:7379, clear of a real Redis on 6379), -n LOOPS
 * (default 1; 0: one per CPU), -q (quiet: no line per connection).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ioloop.h>

#include "kv.h"

#define MAX_QUERY  IOLOOP_CONN_MAX_INPUT  /* an unfinished command: the library's input limit */
#define MAX_QUEUED 1024                   /* replies owed before a client is no longer read */
#define OUT_HIGH   ((size_t)4 << 20)      /* unsent output before a client is no longer read */
#define SCRATCH_KEEP ((size_t)1 << 20)    /* a reply buffer larger than this is released */
#define SWEEP_MS   100                    /* the expiry sweep's period */

struct client;
struct batch;

/* ---- Shards ------------------------------------------------------------------------------ */

/* Shard i: loop i's keys (its data, ioloop_set_data) and what its connections share. */
struct shard {
    struct kv *kv;
    ioloop_t *loop;
    int index;
    struct store store;           /* the keys whose hash names this shard */
    bool quiescing;               /* stopping: no connection of this loop is read any more */
    struct client *clients;       /* the connections living in this loop */
    struct buf scratch;           /* replies made in this loop are built here */
    struct arg *argv;             /* the command being run: pointers into the input */
    size_t argv_cap;
    uint32_t *key_shard;          /* a multi-key command: the shard of argv[i] */
    size_t key_shard_cap;
    unsigned *key_count;          /* [nshards]: how many of its keys each shard holds */
    struct batch **outgoing;      /* [nshards]: parts gathered by the on_data running now */
    int noutgoing;
};

/* The whole server: what the main thread and every shard's loop share. */
struct kv {
    ioloop_server_t *server;
    struct shard *shards;
    int nshards;
    bool quiet;
    atomic_uint_fast64_t inflight; /* batches away from their home loop */
    atomic_bool stopping;
    pthread_mutex_t lock;          /* guards done and attach_err; cond signals changes */
    pthread_cond_t cond;
    int done;                      /* shards attached (at start) or quiesced (at stop) */
    int attach_err;
};

/* FNV-1a: the shard of a key. Not uthash's function, so a shard's keys spread over all of its
 * table's buckets. */
static int shard_of(const struct kv *kv, const struct arg *key)
{
    uint64_t h = 14695981039346656037u;

    for (size_t i = 0; i < key->len; i++)
        h = (h ^ (unsigned char)key->p[i]) * 1099511628211u;
    return (int)(h % (unsigned)kv->nshards);
}

/* ---- Work for other shards: parts, requests, batches -------------------------------------- */

/*
 * A part is what one shard does for one request: the whole command, or, for a multi-key
 * command spread over shards, the keys that shard holds. It is allocated in one piece: the
 * struct, argv, then (for a share of keys) ends and keypos, then the argument bytes.
 */
struct part {
    struct part *bnext;          /* in its batch while it travels */
    struct part *rnext;          /* in its request, which owns it */
    struct req *req;             /* home side only: never touched by the shard that runs it */
    const struct command *cmd;
    bool share;                  /* a share of a multi-key command's keys */
    int argc;
    struct arg *argv;            /* the whole command, or the share's keys */
    size_t *ends;                /* share of an array reply: where each key's piece ends */
    uint32_t *keypos;            /* share: each key's index among the command's keys */
    int64_t count;               /* share of a count */
    struct buf out;              /* the reply, or the share's pieces one after another */
};

/* A reply a connection owes, in its FIFO. A reply made at home follows the struct; a
 * spread multi-key command's pieces (one struct arg per key) follow it instead. */
struct req {
    struct req *next;
    struct part *parts;          /* NULL for a reply made at home */
    const struct command *cmd;   /* a spread command: how the parts' answers combine */
    int pending;                 /* parts still away */
    int nkeys;                   /* a spread command's keys */
    int64_t count;
    const char *error;           /* the reply instead, when a part could not be run */
    size_t len;                  /* a reply made at home: its length */
};

/* The parts one on_data sends to one shard, and how they find their way home. */
struct batch {
    struct client *client;       /* home side only */
    struct shard *home;          /* read-only for the remote side: home->loop */
    uint64_t conn_id;
    struct part *parts, **tail;
};

enum { PAUSE_QUEUE = 1, PAUSE_OUTPUT = 2 };

/* A connection: the replies it owes, how far its current command is parsed, why it is not
 * read. Lives in its connection's loop; outlives the connection while batches are away. */
struct client {
    ioloop_conn_t *conn;         /* NULL once closed */
    struct shard *shard;         /* its loop's */
    uint64_t id;
    struct client *prev, *next;  /* in shard->clients */
    struct req *head, *tail;     /* replies owed, in request order */
    unsigned queued;
    unsigned away;               /* batches sent to other shards and not yet back */
    unsigned paused;             /* PAUSE_* bits: why it is not read */
    bool closing;                /* QUIT or a protocol error: close once the FIFO drained */
    bool shut;                   /* no more output: closed, or a write failed */
    bool dead;                   /* on_close ran; freed when away is 0 */
    struct parser ps;
};

static struct arg *req_pieces(struct req *r)
{
    return (struct arg *)(r + 1);
}

static void req_free(struct req *r)
{
    struct part *p, *next;

    for (p = r->parts; p != NULL; p = next) {
        next = p->rnext;
        free(p->out.data);
        free(p);
    }
    free(r);
}

/*
 * A part for the whole command (pick NULL), or for the keys argv[i] (i >= 1) with
 * pick[i] == t. Copies the arguments. Returns NULL when out of memory.
 */
static struct part *part_new(const struct command *cmd, int argc, const struct arg *argv,
                             const uint32_t *pick, uint32_t t)
{
    size_t n = 0, bytes = 0, extra;
    struct part *p;
    char *d;

    for (int i = pick ? 1 : 0; i < argc; i++) {
        if (pick == NULL || pick[i] == t) {
            n++;
            bytes += argv[i].len;
        }
    }
    extra = pick ? n * (sizeof *p->ends + sizeof *p->keypos) : 0;
    if ((p = calloc(1, sizeof *p + n * sizeof *p->argv + extra + bytes)) == NULL)
        return NULL;
    p->cmd = cmd;
    p->share = pick != NULL;
    p->argc = (int)n;
    p->argv = (struct arg *)(p + 1);
    p->ends = pick ? (size_t *)(p->argv + n) : NULL;
    p->keypos = pick ? (uint32_t *)(p->ends + n) : NULL;
    d = pick ? (char *)(p->keypos + n) : (char *)(p->argv + n);
    n = 0;
    for (int i = pick ? 1 : 0; i < argc; i++) {
        if (pick != NULL && pick[i] != t)
            continue;
        memcpy(d, argv[i].p, argv[i].len);
        if (pick != NULL)
            p->keypos[n] = (uint32_t)(i - 1);
        p->argv[n++] = (struct arg){d, argv[i].len};
        d += argv[i].len;
    }
    return p;
}

/* Runs a part on the shard that holds its keys (any loop: the part is all it touches). */
static void part_run(struct shard *sh, struct part *p)
{
    if (!p->share) {
        command_run(&sh->store, p->cmd, p->argc, p->argv, &p->out);
        return;
    }
    for (int j = 0; j < p->argc; j++) {
        p->cmd->each(&sh->store, &p->argv[j], &p->out, &p->count);
        if (p->ends != NULL)
            p->ends[j] = p->out.len;
    }
}

/* Home side: a part's answer joins its request. */
static void part_arrived(struct part *p)
{
    struct req *r = p->req;
    size_t start = 0;

    if (p->out.failed && r->error == NULL)
        r->error = ERR_OOM;
    if (!p->share)
        return;
    r->count += p->count;
    for (int j = 0; p->cmd->array && j < p->argc; j++) {
        req_pieces(r)[p->keypos[j]] = (struct arg){p->out.data + start, p->ends[j] - start};
        start = p->ends[j];
    }
}

/* ---- Connections: the replies they owe ---------------------------------------------------- */

static void client_free(struct client *c)
{
    struct req *r, *next;

    for (r = c->head; r != NULL; r = next) {
        next = r->next;
        req_free(r);
    }
    free(c->ps.args);
    free(c);
}

static void client_pause(struct client *c, unsigned why)
{
    if (c->paused == 0)
        ioloop_conn_pause(c->conn);
    c->paused |= why;
}

static void client_unpause(struct client *c, unsigned why)
{
    if (c->paused == 0)
        return;
    c->paused &= ~why;
    if (c->paused == 0 && !c->shard->quiescing && !c->shut)
        ioloop_conn_resume(c->conn);
}

/* A write that fails (the output limit, or memory) ends the stream: what went before it is
 * delivered, nothing after it. */
static void client_write(struct client *c, const char *p, size_t n)
{
    int err;

    if (c->shut)
        return;
    if ((err = ioloop_conn_write(c->conn, p, n)) < 0) {
        IOLOOP_LOG_WARN("kv: conn %" PRIu64 ": cannot write a reply (%s); closing", c->id,
                        strerror(-err));
        c->shut = c->closing = true;
        ioloop_conn_close(c->conn);
    }
}

static void fifo_push(struct client *c, struct req *r)
{
    *(c->tail ? &c->tail->next : &c->head) = r;
    c->tail = r;
    c->queued++;
}

/* Out of memory for a reply that must wait its turn: the replies owed go out, then the
 * connection closes, so no reply is ever skipped or out of order. */
static void client_break(struct client *c)
{
    IOLOOP_LOG_WARN("kv: conn %" PRIu64 ": out of memory queueing a reply; closing", c->id);
    c->closing = true;
}

/* The reply to the next command, in order: written now if nothing is owed before it. */
static void client_reply(struct client *c, const char *p, size_t n)
{
    struct req *r;

    if (c->head == NULL) {
        client_write(c, p, n);
        return;
    }
    if ((r = calloc(1, sizeof *r + n)) == NULL) {
        client_break(c);
        return;
    }
    r->len = n;
    memcpy(r + 1, p, n);
    fifo_push(c, r);
}

/* A request whose reply comes from parts; NULL (and the connection breaks) without memory. */
static struct req *client_req(struct client *c, int nkeys)
{
    struct req *r = calloc(1, sizeof *r + (size_t)nkeys * sizeof(struct arg));

    if (r == NULL) {
        client_break(c);
        return NULL;
    }
    r->nkeys = nkeys;
    fifo_push(c, r);
    return r;
}

/* Writes a completed request's reply. */
static void req_write(struct client *c, struct req *r)
{
    struct buf *out = &c->shard->scratch;

    if (r->error != NULL) {
        client_write(c, r->error, strlen(r->error));
    } else if (r->parts == NULL) {
        client_write(c, (const char *)(r + 1), r->len);
    } else if (r->cmd == NULL) {
        client_write(c, r->parts->out.data, r->parts->out.len);
    } else {
        buf_clear(out);
        if (r->cmd->array) {
            resp_num(out, '*', r->nkeys);
            for (int i = 0; i < r->nkeys; i++)
                buf_put(out, req_pieces(r)[i].p, req_pieces(r)[i].len);
        } else {
            resp_num(out, ':', r->count);
        }
        if (out->failed)
            client_write(c, ERR_OOM, strlen(ERR_OOM));
        else
            client_write(c, out->data, out->len);
    }
}

/* Writes the completed replies at the head of the FIFO; closes once it drained if asked to. */
static void client_flush(struct client *c)
{
    struct req *r;

    while ((r = c->head) != NULL && r->pending == 0) {
        if ((c->head = r->next) == NULL)
            c->tail = NULL;
        c->queued--;
        req_write(c, r);
        req_free(r);
    }
    if (c->head == NULL && c->closing && !c->shut) {
        c->shut = true;
        ioloop_conn_close(c->conn);
    }
    if ((c->paused & PAUSE_QUEUE) && c->queued < MAX_QUEUED / 2)
        client_unpause(c, PAUSE_QUEUE);
}

/* ---- Batches: to another shard and back ---------------------------------------------------- */

static void kv_signal(struct kv *kv)
{
    pthread_mutex_lock(&kv->lock);
    pthread_cond_broadcast(&kv->cond);
    pthread_mutex_unlock(&kv->lock);
}

/* A batch is home (or lost): a stopping server waits for the last one. */
static void kv_batch_home(struct kv *kv)
{
    if (atomic_fetch_sub(&kv->inflight, 1) == 1 && atomic_load(&kv->stopping))
        kv_signal(kv);
}

/* Home loop: the parts' answers join their requests; the replies now complete go out. */
static void batch_done(ioloop_conn_t *conn, void *arg)
{
    struct batch *b = arg;
    struct client *c = b->client;
    struct part *p, *next;

    for (p = b->parts; p != NULL; p = next) {
        struct req *r = p->req;

        next = p->bnext;
        part_arrived(p);
        if (--r->pending == 0 && c->dead)
            req_free(r); /* on_close left it to us: no FIFO holds it any more */
    }
    free(b);
    c->away--;
    kv_batch_home(c->shard->kv);
    if (c->dead) {
        if (c->away == 0)
            client_free(c);
    } else if (conn != NULL) {
        client_flush(c);
    }
}

/* Home loop, when the connection had gone before the batch could be sent back to it. */
static void batch_home(ioloop_t *loop, void *arg)
{
    batch_done(NULL, arg);
}

/* The shard's loop: runs the parts, then sends the batch home. */
static void batch_run(ioloop_t *loop, void *arg)
{
    struct batch *b = arg;
    struct shard *sh = ioloop_data(loop);

    for (struct part *p = b->parts; p != NULL; p = p->bnext)
        part_run(sh, p);
    if (ioloop_server_call(sh->kv->server, b->conn_id, batch_done, b) == 0)
        return;
    /* The connection closed meanwhile: the batch still goes home, where its client lives. */
    if (ioloop_add_callback(b->home->loop, batch_home, b) == 0)
        return;
    IOLOOP_LOG_ERROR("kv: out of memory sending a batch home to conn %" PRIu64 "; leaked",
                     b->conn_id);
    kv_batch_home(sh->kv);
}

/* Adds a part to the batch for shard t that the running on_data gathers. */
static int batch_add(struct client *c, int t, struct part *p)
{
    struct shard *sh = c->shard;
    struct batch *b = sh->outgoing[t];

    if (b == NULL) {
        if ((b = malloc(sizeof *b)) == NULL)
            return -ENOMEM;
        *b = (struct batch){.client = c, .home = sh, .conn_id = c->id};
        b->tail = &b->parts;
        sh->outgoing[t] = b;
        sh->noutgoing++;
    }
    p->bnext = NULL;
    *b->tail = p;
    b->tail = &p->bnext;
    p->req->pending++;
    return 0;
}

/* Sends the batches the on_data gathered, one callback per shard. */
static void batch_post_all(struct client *c)
{
    struct shard *sh = c->shard;
    struct kv *kv = sh->kv;

    for (int t = 0; sh->noutgoing > 0 && t < kv->nshards; t++) {
        struct batch *b = sh->outgoing[t];

        if (b == NULL)
            continue;
        sh->outgoing[t] = NULL;
        sh->noutgoing--;
        c->away++;
        atomic_fetch_add(&kv->inflight, 1);
        if (ioloop_add_callback(kv->shards[t].loop, batch_run, b) < 0) {
            /* The shard's loop refused it (out of memory): its requests fail, in order. */
            for (struct part *p = b->parts; p != NULL; p = p->bnext)
                p->req->error = ERR_OOM;
            batch_done(c->conn, b);
        }
    }
}

/* ---- Dispatching a command -------------------------------------------------------------- */

/* The command's keys (if any) live here: it runs now, and its reply goes out in order. */
static void reply_here(struct client *c, const struct command *cmd, int argc,
                       const struct arg *argv)
{
    struct shard *sh = c->shard;
    struct buf *out = &sh->scratch;

    buf_clear(out);
    command_run(&sh->store, cmd, argc, argv, out);
    if (out->failed)
        client_reply(c, ERR_OOM, strlen(ERR_OOM));
    else
        client_reply(c, out->data, out->len);
    if (out->cap > SCRATCH_KEEP) {
        free(out->data);
        *out = (struct buf){NULL, 0, 0, false};
    }
}

/* The whole command runs on shard t. */
static void forward(struct client *c, int t, const struct command *cmd, int argc,
                    const struct arg *argv)
{
    struct req *r = client_req(c, 0);
    struct part *p;

    if (r == NULL)
        return;
    if ((p = part_new(cmd, argc, argv, NULL, 0)) == NULL) {
        r->error = ERR_OOM;
        return;
    }
    p->req = r;
    r->parts = p;
    if (batch_add(c, t, p) < 0)
        r->error = ERR_OOM;
}

/* A multi-key command: where its keys are decides whether it runs here, elsewhere, or spread. */
static void fan_out(struct client *c, const struct command *cmd, int argc, const struct arg *argv)
{
    struct shard *sh = c->shard;
    int nshards = sh->kv->nshards, used = 0;
    uint32_t *key_shard = array_grow(sh->key_shard, &sh->key_shard_cap, (size_t)argc,
                                     sizeof *key_shard);
    struct req *r;

    if (key_shard == NULL) {
        client_reply(c, ERR_OOM, strlen(ERR_OOM));
        return;
    }
    sh->key_shard = key_shard;
    memset(sh->key_count, 0, (size_t)nshards * sizeof *sh->key_count);
    for (int i = 1; i < argc; i++) {
        uint32_t t = (uint32_t)shard_of(sh->kv, &argv[i]);

        key_shard[i] = t;
        if (sh->key_count[t]++ == 0)
            used++;
    }
    if (used == 1) {
        if ((int)sh->key_shard[1] == sh->index)
            reply_here(c, cmd, argc, argv);
        else
            forward(c, (int)sh->key_shard[1], cmd, argc, argv);
        return;
    }
    if ((r = client_req(c, argc - 1)) == NULL)
        return;
    r->cmd = cmd;
    for (int t = 0; t < nshards && r->error == NULL; t++) {
        struct part *p;

        if (sh->key_count[t] == 0)
            continue;
        if ((p = part_new(cmd, argc, argv, sh->key_shard, (uint32_t)t)) == NULL) {
            r->error = ERR_OOM;
            break;
        }
        p->req = r;
        p->rnext = r->parts;
        r->parts = p;
        if (t == sh->index) {
            part_run(sh, p); /* this shard's keys, at once, in request order */
            part_arrived(p);
        } else if (batch_add(c, t, p) < 0) {
            r->error = ERR_OOM;
        }
    }
}

/* Redis's reply to an unknown command: its name and the start of its arguments. */
static void reply_unknown(struct client *c, int argc, const struct arg *argv)
{
    char msg[512];
    size_t n, args = 0;

    n = (size_t)snprintf(msg, sizeof msg, "-ERR unknown command '");
    memcpy(msg + n, argv[0].p, argv[0].len < 128 ? argv[0].len : 128);
    n += argv[0].len < 128 ? argv[0].len : 128;
    n += (size_t)snprintf(msg + n, sizeof msg - n, "', with args beginning with: ");
    for (int i = 1; i < argc && args < 128; i++) {
        size_t m = argv[i].len < 128 - args ? argv[i].len : 128 - args;

        msg[n++] = '\'';
        memcpy(msg + n, argv[i].p, m);
        n += m;
        msg[n++] = '\'';
        msg[n++] = ' ';
        args += m + 3;
    }
    for (size_t i = 1; i < n; i++)
        if (msg[i] == '\r' || msg[i] == '\n')
            msg[i] = ' '; /* an error reply is one line */
    memcpy(msg + n, "\r\n", 2);
    client_reply(c, msg, n + 2);
}

/* Runs one command for client c: here, on another shard, or spread over several. */
static void dispatch(struct client *c, int argc, const struct arg *argv)
{
    const struct command *cmd = command_find(&argv[0]);
    struct shard *sh = c->shard;
    int t;

    if (cmd == NULL) {
        reply_unknown(c, argc, argv);
        return;
    }
    if (cmd->arity > 0 ? argc != cmd->arity : argc < -cmd->arity) {
        char msg[96];
        int n = snprintf(msg, sizeof msg, "-ERR wrong number of arguments for '%s' command\r\n",
                         cmd->name);

        client_reply(c, msg, (size_t)n);
        return;
    }
    if (cmd->closes)
        c->closing = true;
    if (cmd->keys == KEYS_NONE || sh->kv->nshards == 1) {
        reply_here(c, cmd, argc, argv);
    } else if (cmd->keys == KEYS_FIRST) {
        t = shard_of(sh->kv, &argv[1]);
        if (t == sh->index)
            reply_here(c, cmd, argc, argv);
        else
            forward(c, t, cmd, argc, argv);
    } else {
        fan_out(c, cmd, argc, argv);
    }
}

/* ---- Connection handlers ------------------------------------------------------------------- */

/*
 * Before a pipeline runs: the keys of its complete multibulk commands that live here, for the
 * store to prefetch (see store_prefetch). A pure hint: it reads the input, changes nothing,
 * and stops at anything it does not understand (the parser will say what).
 */
static void prefetch_local(const struct shard *sh, const char *data, size_t len)
{
    struct arg keys[PREFETCH_MAX], key;
    size_t pos = 0, n;
    int count = 0;

    while (count < PREFETCH_MAX && pos < len && data[pos] == '*' &&
           (n = parse_peek(data + pos, len - pos, &key)) > 0) {
        pos += n;
        if (key.p != NULL && (sh->kv->nshards == 1 || shard_of(sh->kv, &key) == sh->index))
            keys[count++] = key;
    }
    store_prefetch(&sh->store, keys, count);
}

static void protocol_error(struct client *c, const char *why)
{
    char msg[128];
    int n = snprintf(msg, sizeof msg, "-ERR Protocol error: %s\r\n", why);

    client_reply(c, msg, (size_t)n);
    c->closing = true;
}

static void on_output_flushed(ioloop_conn_t *conn, int err, void *arg)
{
    if (err == 0)
        client_unpause(arg, PAUSE_OUTPUT);
}

/* Too much owed or unsent: stop reading until it went out (backpressure on the client). */
static bool client_must_wait(struct client *c)
{
    if (c->queued >= MAX_QUEUED) {
        client_pause(c, PAUSE_QUEUE);
        return true;
    }
    if (ioloop_conn_pending(c->conn) >= OUT_HIGH &&
        ioloop_conn_on_flushed(c->conn, on_output_flushed, c) == 0) {
        client_pause(c, PAUSE_OUTPUT);
        return true;
    }
    return false;
}

/* Runs the command the parser completed at `base`. */
static void run_parsed(struct client *c, const char *base)
{
    struct shard *sh = c->shard;
    int argc = c->ps.argc;
    struct arg *argv = array_grow(sh->argv, &sh->argv_cap, (size_t)argc, sizeof *argv);

    if (argv == NULL) {
        client_reply(c, ERR_OOM, strlen(ERR_OOM));
        return;
    }
    sh->argv = argv;
    for (int i = 0; i < argc; i++)
        sh->argv[i] = (struct arg){base + c->ps.args[i].off, c->ps.args[i].len};
    dispatch(c, argc, sh->argv);
}

/* Runs every complete command; a partial one stays unconsumed for the next call. */
static size_t on_data(ioloop_conn_t *conn, const char *data, size_t len)
{
    struct client *c = ioloop_conn_data(conn);
    size_t used = 0;
    char why[PARSE_WHY_SIZE];

    if (c == NULL || c->closing)
        return len; /* after QUIT or a protocol error the rest is dropped, as Redis does */
    for (unsigned ran = 0; used < len && !c->closing && !client_must_wait(c); ran++) {
        long n;

        if (ran % PREFETCH_MAX == 0)
            prefetch_local(c->shard, data + used, len - used);
        n = c->ps.nargs < 0 && data[used] != '*'
                ? parse_inline(&c->ps, data + used, len - used, why)
                : parse_multibulk(&c->ps, data + used, len - used, why);

        if (n == PARSE_MORE) {
            if (len - used >= MAX_QUERY)
                protocol_error(c, "too big request");
            break;
        }
        if (n < 0) {
            protocol_error(c, n == PARSE_NOMEM ? "out of memory" : why);
            break;
        }
        if (c->ps.argc > 0)
            run_parsed(c, data + used);
        used += (size_t)n;
    }
    if (c->closing)
        used = len;
    batch_post_all(c);
    client_flush(c);
    return used;
}

static void on_open(ioloop_conn_t *conn)
{
    struct shard *sh = ioloop_data(ioloop_conn_loop(conn));
    struct client *c = calloc(1, sizeof *c);

    if (c == NULL) {
        IOLOOP_LOG_WARN("kv: out of memory for a new connection; closing it");
        ioloop_conn_close(conn);
        return;
    }
    c->conn = conn;
    c->shard = sh;
    c->id = ioloop_conn_id(conn);
    c->ps.nargs = -1;
    if ((c->next = sh->clients) != NULL)
        c->next->prev = c;
    sh->clients = c;
    ioloop_conn_set_data(conn, c);
    if (sh->quiescing)
        ioloop_conn_pause(conn); /* stopping: the server closes it soon */
    if (!sh->kv->quiet)
        IOLOOP_LOG_INFO("kv: conn %" PRIu64 " open on loop %d", c->id, sh->index);
}

static void on_close(ioloop_conn_t *conn, int err)
{
    struct client *c = ioloop_conn_data(conn);
    struct req *r, *next;

    if (c == NULL)
        return;
    if (!c->shard->kv->quiet)
        IOLOOP_LOG_INFO("kv: conn %" PRIu64 " closed: %s", c->id,
                        err == 0 ? "orderly" : strerror(-err));
    *(c->prev ? &c->prev->next : &c->shard->clients) = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    /* Requests with parts still away are freed when the last one comes home. */
    for (r = c->head; r != NULL; r = next) {
        next = r->next;
        if (r->pending == 0)
            req_free(r);
    }
    c->head = c->tail = NULL;
    c->conn = NULL;
    c->dead = c->shut = true;
    if (c->away == 0)
        client_free(c);
}

/* ---- Start and stop ------------------------------------------------------------------------ */

static void on_sweep(ioloop_t *loop, void *arg)
{
    struct shard *sh = arg;

    store_sweep(&sh->store);
}

/* A shard's loop: the shard becomes the loop's data, with its sweep timer. */
static void shard_attach(ioloop_t *loop, void *arg)
{
    struct shard *sh = arg;
    int64_t timer = ioloop_run_every(loop, SWEEP_MS, on_sweep, sh);

    ioloop_set_data(loop, sh);
    pthread_mutex_lock(&sh->kv->lock);
    if (timer < 0)
        sh->kv->attach_err = (int)timer;
    sh->kv->done++;
    pthread_cond_broadcast(&sh->kv->cond);
    pthread_mutex_unlock(&sh->kv->lock);
}

/* A shard's loop, at the stop: its connections are no longer read. */
static void shard_quiesce(ioloop_t *loop, void *arg)
{
    struct shard *sh = arg;

    sh->quiescing = true;
    for (struct client *c = sh->clients; c != NULL; c = c->next)
        if (!c->shut)
            ioloop_conn_pause(c->conn);
    pthread_mutex_lock(&sh->kv->lock);
    sh->kv->done++;
    pthread_cond_broadcast(&sh->kv->cond);
    pthread_mutex_unlock(&sh->kv->lock);
}

/* Runs fn for every shard in its loop and waits until all did and no batch is away. */
static int kv_each_shard(struct kv *kv, ioloop_callback_fn fn)
{
    int err, posted = 0;

    pthread_mutex_lock(&kv->lock);
    kv->done = 0;
    pthread_mutex_unlock(&kv->lock);
    for (int i = 0; i < kv->nshards; i++) {
        if ((err = ioloop_add_callback(kv->shards[i].loop, fn, &kv->shards[i])) < 0)
            break;
        posted++;
    }
    pthread_mutex_lock(&kv->lock);
    while (kv->done < posted || atomic_load(&kv->inflight) > 0)
        pthread_cond_wait(&kv->cond, &kv->lock);
    err = posted < kv->nshards ? -ENOMEM : kv->attach_err;
    pthread_mutex_unlock(&kv->lock);
    return err;
}

static int kv_init(struct kv *kv, ioloop_pool_t *pool)
{
    kv->nshards = ioloop_pool_size(pool);
    kv->shards = calloc((size_t)kv->nshards, sizeof *kv->shards);
    if (kv->shards == NULL)
        return -ENOMEM;
    for (int i = 0; i < kv->nshards; i++) {
        struct shard *sh = &kv->shards[i];

        sh->kv = kv;
        sh->index = i;
        sh->loop = ioloop_pool_loop(pool, i);
        sh->store.loop = sh->loop;
        sh->key_count = calloc((size_t)kv->nshards, sizeof *sh->key_count);
        sh->outgoing = calloc((size_t)kv->nshards, sizeof *sh->outgoing);
        if (sh->key_count == NULL || sh->outgoing == NULL)
            return -ENOMEM;
    }
    return kv_each_shard(kv, shard_attach);
}

/* After the pool is gone: every key and buffer. */
static size_t kv_free(struct kv *kv)
{
    size_t keys = 0;

    for (int i = 0; kv->shards != NULL && i < kv->nshards; i++) {
        struct shard *sh = &kv->shards[i];

        keys += store_free(&sh->store);
        free(sh->scratch.data);
        free(sh->argv);
        free(sh->key_shard);
        free(sh->key_count);
        free(sh->outgoing);
    }
    free(kv->shards);
    return keys;
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    fprintf(stderr, "\nkv_server: %s: stopping\n", signo == SIGINT ? "SIGINT" : "SIGTERM");
    ioloop_stop(loop);
}

struct options {
    const char *address;
    int loops;
    bool quiet;
};

static int parse_options(int argc, char **argv, struct options *opt)
{
    int c;

    while ((c = getopt(argc, argv, "a:n:q")) != -1) {
        switch (c) {
        case 'a': opt->address = optarg; break;
        case 'n': opt->loops = atoi(optarg); break;
        case 'q': opt->quiet = true; break;
        default: return -1;
        }
    }
    return opt->loops < 0 || optind != argc ? -1 : 0;
}

/* Serves until a signal; returns the process's exit status. */
static int serve(struct kv *kv, ioloop_t *main_loop, const struct options *opt)
{
    static const ioloop_conn_handlers_t handlers = {
        .on_open = on_open, .on_data = on_data, .on_close = on_close,
    };
    ioloop_pool_t *pool = ioloop_pool_new(opt->loops);
    int err, status = 0;

    if (pool == NULL) {
        perror("kv_server: ioloop_pool_new");
        return 1;
    }
    if ((err = kv_init(kv, pool)) < 0) {
        fprintf(stderr, "kv_server: cannot set up the shards: %s\n", strerror(-err));
        status = 1;
    } else if ((kv->server = ioloop_server_new(pool, opt->address, &handlers, kv)) == NULL ||
               (errno = -ioloop_server_start(kv->server)) != 0) {
        fprintf(stderr, "kv_server: cannot serve %s: %s\n", opt->address, strerror(errno));
        status = 1;
    } else {
        printf("kv_server: listening on %s (port %d) with %d shard%s\n", opt->address,
               ioloop_server_port(kv->server), kv->nshards, kv->nshards == 1 ? "" : "s");
        fflush(stdout); /* scripts wait for this line */
        ioloop_start(main_loop);
        /* Stop reading every connection and let the batches away come home; only then may
         * the server go, since a shard answers through it. */
        atomic_store(&kv->stopping, true);
        kv_each_shard(kv, shard_quiesce);
    }
    ioloop_server_free(kv->server);
    ioloop_pool_free(pool);
    return status;
}

int main(int argc, char **argv)
{
    struct options opt = {.address = "127.0.0.1:7379", .loops = 1};
    struct kv kv = {.nshards = 0};
    ioloop_t *main_loop;
    size_t keys;
    int status;

    if (parse_options(argc, argv, &opt) < 0) {
        fprintf(stderr, "usage: %s [-a ADDRESS] [-n LOOPS (0: one per CPU)] [-q]\n", argv[0]);
        return 2;
    }
    kv.quiet = opt.quiet;
    atomic_init(&kv.inflight, 0);
    atomic_init(&kv.stopping, false);
    pthread_mutex_init(&kv.lock, NULL);
    pthread_cond_init(&kv.cond, NULL);
    ioloop_log_open(NULL);

    /* Signals first: the pool's threads block every signal, so SIGINT and SIGTERM reach only
     * the main loop's signalfd. */
    main_loop = ioloop_new();
    if (main_loop == NULL || ioloop_add_signal(main_loop, SIGINT, on_signal, NULL) < 0 ||
        ioloop_add_signal(main_loop, SIGTERM, on_signal, NULL) < 0) {
        perror("kv_server: main loop");
        return 1;
    }
    status = serve(&kv, main_loop, &opt);
    keys = kv_free(&kv);
    ioloop_free(main_loop);
    if (status == 0 && !opt.quiet)
        printf("kv_server: stopped with %zu key%s\n", keys, keys == 1 ? "" : "s");
    ioloop_log_close();
    pthread_cond_destroy(&kv.cond);
    pthread_mutex_destroy(&kv.lock);
    return status;
}

