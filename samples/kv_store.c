/*
 * kv_store.c — one shard's keyspace and the commands that run on it (declared in kv.h).
 *
 * Keys live in a uthash table with recoverable out-of-memory handling: a failed add leaves the
 * table as it was, and the command replies -ERR out of memory. A key with a TTL is also on the
 * store's TTL list; it expires when a lookup finds it due, or when the periodic sweep, which
 * examines a bounded number of keys per call, reaches it.
 */
#include <stdlib.h>
#include <string.h>

#include "kv.h"

struct entry;
static void entry_add_failed(struct entry *e);

/* uthash's default answer to a failed allocation is exit(). With HASH_NONFATAL_OOM a failed
 * add leaves the table as it was and reports the element through uthash_nonfatal_oom. */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(elt) entry_add_failed(elt)
#include <uthash.h>

#define SWEEP_KEYS 200 /* keys with a TTL examined per sweep: a bounded pause per 100 ms */

/* ---- Entries ------------------------------------------------------------------------------- */

/*
 * A key and its value, in one allocation. Over many keys every entry a lookup reads is a
 * cache miss, so what a lookup reads sits together at the end: uthash's hh_next, key, keylen
 * and hashv (the last fields of the handle), the TTL, the lengths, the key and a short value —
 * about one cache line. What only adding, removing and the TTL list touch comes first.
 */
struct entry {
    struct entry *vprev, *vnext; /* the shard's list of keys with a TTL, in sweep order */
    bool add_failed;             /* uthash ran out of memory adding it */
    UT_hash_handle hh;
    uint64_t expire_ms;          /* deadline on the loops' clock (ioloop_now_ms); 0: none */
    uint32_t klen, vlen, vcap;
    char data[];                 /* the key, then room for vcap bytes of value */
};

static void entry_add_failed(struct entry *e)
{
    e->add_failed = true;
}

static void volatile_unlink(struct store *st, struct entry *e)
{
    *(e->vprev ? &e->vprev->vnext : &st->vhead) = e->vnext;
    *(e->vnext ? &e->vnext->vprev : &st->vtail) = e->vprev;
    e->vprev = e->vnext = NULL;
    st->nvolatile--;
}

static void volatile_append(struct store *st, struct entry *e)
{
    e->vnext = NULL;
    e->vprev = st->vtail;
    *(st->vtail ? &st->vtail->vnext : &st->vhead) = e;
    st->vtail = e;
    st->nvolatile++;
}

static void entry_set_expire(struct store *st, struct entry *e, uint64_t expire_ms)
{
    if (e->expire_ms == expire_ms)
        return;
    if (e->expire_ms != 0)
        volatile_unlink(st, e);
    e->expire_ms = expire_ms;
    if (expire_ms != 0)
        volatile_append(st, e);
}

static void entry_remove(struct store *st, struct entry *e)
{
    HASH_DELETE(hh, st->table, e);
    if (e->expire_ms != 0)
        volatile_unlink(st, e);
    free(e);
}

/* The live entry for key, or NULL; an expired one is removed on the way. */
static struct entry *entry_find(struct store *st, const struct arg *key)
{
    struct entry *e;

    HASH_FIND(hh, st->table, key->p, (unsigned)key->len, e);
    if (e != NULL && e->expire_ms != 0 && e->expire_ms <= ioloop_now_ms(st->loop)) {
        entry_remove(st, e);
        return NULL;
    }
    return e;
}

/*
 * Stores a value for key, whose live entry is `old` (or NULL): in place when the value fits,
 * else in a new entry that replaces it. The TTL becomes expire_ms (0: none), or stays as it
 * was with keep_ttl. Returns the entry, or NULL when out of memory; then nothing changed.
 */
static struct entry *entry_store(struct store *st, struct entry *old, const struct arg *key,
                                 const char *val, size_t vlen, bool keep_ttl, uint64_t expire_ms)
{
    struct entry *e = old;

    if (keep_ttl)
        expire_ms = old != NULL ? old->expire_ms : 0;
    if (e == NULL || vlen > e->vcap) {
        size_t head = offsetof(struct entry, data);
        size_t size = (head + key->len + vlen + 15) & ~(size_t)15; /* malloc's granule: room
                                                                        to overwrite in place */
        if ((e = malloc(size)) == NULL)
            return NULL;
        memset(e, 0, head);
        e->klen = (uint32_t)key->len;
        e->vcap = (uint32_t)(size - head - key->len);
        memcpy(e->data, key->p, key->len);
        /* Added before the old entry goes, so the table is never empty in between and the
         * old value survives a failed add. */
        HASH_ADD_KEYPTR(hh, st->table, e->data, e->klen, e);
        if (e->add_failed) {
            free(e);
            return NULL;
        }
        if (old != NULL)
            entry_remove(st, old);
    }
    memcpy(e->data + e->klen, val, vlen);
    e->vlen = (uint32_t)vlen;
    entry_set_expire(st, e, expire_ms);
    return e;
}

/* Examines the next SWEEP_KEYS of the TTL list: expired keys go, live ones move to its end. */
void store_sweep(struct store *st)
{
    uint64_t now = ioloop_now_ms(st->loop);
    size_t n = st->nvolatile < SWEEP_KEYS ? st->nvolatile : SWEEP_KEYS;

    for (size_t i = 0; i < n; i++) {
        struct entry *e = st->vhead;

        if (e->expire_ms <= now) {
            entry_remove(st, e);
        } else {
            volatile_unlink(st, e);
            volatile_append(st, e);
        }
    }
}

/*
 * With random keys every lookup misses the cache: the bucket, then each entry of its chain it
 * reads. A core waits for those misses one after another; asked for ahead of time, the lines
 * of many lookups arrive together. So this asks for the bucket of each key, then for the first
 * entry of each of those buckets, then for the second (at uthash's load factor only about half
 * the keys are first in their chain).
 */
void store_prefetch(const struct store *st, const struct arg *keys, int n)
{
    const UT_hash_table *tbl = st->table != NULL ? st->table->hh.tbl : NULL;
    const UT_hash_bucket *bucket[PREFETCH_MAX];
    const UT_hash_handle *chain[PREFETCH_MAX];

    if (tbl == NULL)
        return;
    if (n > PREFETCH_MAX)
        n = PREFETCH_MAX;
    for (int i = 0; i < n; i++) {
        unsigned hv, b;

        HASH_VALUE(keys[i].p, keys[i].len, hv);
        HASH_TO_BKT(hv, tbl->num_buckets, b);
        bucket[i] = &tbl->buckets[b];
        __builtin_prefetch(bucket[i]);
    }
    for (int depth = 0; depth < 2; depth++) {
        for (int i = 0; i < n; i++) {
            const UT_hash_handle *hh = depth == 0 ? bucket[i]->hh_head
                                       : chain[i] != NULL ? chain[i]->hh_next : NULL;

            chain[i] = hh;
            if (hh != NULL) {
                /* The end of the handle, then the key, often in the next line. */
                __builtin_prefetch(&hh->hh_next);
                __builtin_prefetch(((const struct entry *)ELMT_FROM_HH(tbl, hh))->data);
            }
        }
    }
}

size_t store_free(struct store *st)
{
    size_t keys = HASH_COUNT(st->table);
    struct entry *e, *tmp;

    HASH_ITER(hh, st->table, e, tmp) {
        HASH_DELETE(hh, st->table, e);
        free(e);
    }
    st->vhead = st->vtail = NULL;
    st->nvolatile = 0;
    return keys;
}

/* ---- Commands ---------------------------------------------------------------------------- */

static void each_get(struct store *st, const struct arg *key, struct buf *out, int64_t *count)
{
    struct entry *e = entry_find(st, key);

    if (e != NULL)
        resp_bulk(out, e->data + e->klen, e->vlen);
    else
        buf_put(out, "$-1\r\n", 5);
}

static void cmd_get(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    each_get(st, &argv[1], out, NULL);
}

static void each_del(struct store *st, const struct arg *key, struct buf *out, int64_t *count)
{
    struct entry *e = entry_find(st, key);

    if (e != NULL) {
        entry_remove(st, e);
        (*count)++;
    }
}

static void each_exists(struct store *st, const struct arg *key, struct buf *out, int64_t *count)
{
    if (entry_find(st, key) != NULL)
        (*count)++;
}

/*
 * SET key value [NX | XX] [EX seconds | PX milliseconds | KEEPTTL]: "+OK", or a nil reply when
 * NX or XX did not hold. Options may come in any order, each once, as Redis takes them.
 */
static void cmd_set(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    bool nx = false, xx = false, keep = false;
    uint64_t now = ioloop_now_ms(st->loop), ttl = 0;
    struct entry *e;

    for (int i = 3; i < argc; i++) {
        const struct arg *a = &argv[i];
        int64_t n;

        if (arg_is(a, "nx") && !xx) {
            nx = true;
        } else if (arg_is(a, "xx") && !nx) {
            xx = true;
        } else if (arg_is(a, "keepttl") && ttl == 0) {
            keep = true;
        } else if ((arg_is(a, "ex") || arg_is(a, "px")) && !keep && ttl == 0 && i + 1 < argc) {
            int64_t unit = arg_is(a, "ex") ? 1000 : 1;

            i++;
            if (!int_parse(argv[i].p, argv[i].len, &n) || n <= 0 || n > INT64_MAX / unit ||
                (uint64_t)(n * unit) > INT64_MAX - now) {
                buf_put_str(out, "-ERR invalid expire time in 'set' command\r\n");
                return;
            }
            ttl = (uint64_t)(n * unit);
        } else {
            buf_put_str(out, "-ERR syntax error\r\n");
            return;
        }
    }
    e = entry_find(st, &argv[1]);
    if ((nx && e != NULL) || (xx && e == NULL)) {
        buf_put(out, "$-1\r\n", 5);
        return;
    }
    if (entry_store(st, e, &argv[1], argv[2].p, argv[2].len, keep, ttl ? now + ttl : 0) == NULL)
        out->failed = true;
    else
        buf_put(out, "+OK\r\n", 5);
}

/* INCR key: the value, as an integer, plus one; a missing key counts as 0. The TTL stays. */
static void cmd_incr(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    struct entry *e = entry_find(st, &argv[1]);
    int64_t v = 0;
    char tmp[24], *end = tmp + sizeof tmp, *p;

    if (e != NULL && !int_parse(e->data + e->klen, e->vlen, &v)) {
        buf_put_str(out, "-ERR value is not an integer or out of range\r\n");
        return;
    }
    if (v == INT64_MAX) {
        buf_put_str(out, "-ERR increment or decrement would overflow\r\n");
        return;
    }
    p = int_format(end, ++v);
    if (entry_store(st, e, &argv[1], p, (size_t)(end - p), true, 0) == NULL)
        out->failed = true;
    else
        resp_num(out, ':', v);
}

/* TTL and PTTL: -2 for a missing key, -1 for one without a TTL, else what is left. */
static void ttl_reply(struct store *st, const struct arg *key, struct buf *out, uint64_t unit)
{
    struct entry *e = entry_find(st, key);
    uint64_t left;

    if (e == NULL || e->expire_ms == 0) {
        resp_num(out, ':', e == NULL ? -2 : -1);
        return;
    }
    left = e->expire_ms - ioloop_now_ms(st->loop); /* entry_find removed it if it was due */
    resp_num(out, ':', (int64_t)((left + unit / 2) / unit));
}

static void cmd_ttl(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    ttl_reply(st, &argv[1], out, 1000);
}

static void cmd_pttl(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    ttl_reply(st, &argv[1], out, 1);
}

static void cmd_ping(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    if (argc == 1)
        buf_put(out, "+PONG\r\n", 7);
    else if (argc == 2)
        resp_bulk(out, argv[1].p, argv[1].len);
    else
        buf_put_str(out, "-ERR wrong number of arguments for 'ping' command\r\n");
}

static void cmd_echo(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    resp_bulk(out, argv[1].p, argv[1].len);
}

/* QUIT: "+OK", then the connection closes (the command's `closes`). */
static void cmd_quit(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    buf_put(out, "+OK\r\n", 5);
}

/*
 * CONFIG GET parameter...: the name/value pairs of the parameters asked for ("*" for all) that
 * a client may want to know; there is no persistence, as redis-benchmark asks.
 */
static void cmd_config(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    static const char *const params[][2] = {{"save", ""}, {"appendonly", "no"}};
    bool want[sizeof params / sizeof params[0]] = {false};
    int n = 0;

    if (!arg_is(&argv[1], "get")) {
        buf_put_str(out, "-ERR unknown CONFIG subcommand: only CONFIG GET is supported\r\n");
        return;
    }
    if (argc < 3) {
        buf_put_str(out, "-ERR wrong number of arguments for 'config|get' command\r\n");
        return;
    }
    for (size_t k = 0; k < sizeof params / sizeof params[0]; k++) {
        for (int i = 2; i < argc && !want[k]; i++)
            want[k] = arg_is(&argv[i], params[k][0]) || arg_is(&argv[i], "*");
        n += want[k];
    }
    resp_num(out, '*', 2 * n);
    for (size_t k = 0; k < sizeof params / sizeof params[0]; k++) {
        if (want[k]) {
            resp_bulk(out, params[k][0], strlen(params[k][0]));
            resp_bulk(out, params[k][1], strlen(params[k][1]));
        }
    }
}

static void cmd_command(struct store *st, int argc, const struct arg *argv, struct buf *out);

/* The most frequent first: lookup is a linear scan. */
static const struct command commands[] = {
    {"get", 2, KEYS_FIRST, cmd_get, NULL, false, false},
    {"set", -3, KEYS_FIRST, cmd_set, NULL, false, false},
    {"incr", 2, KEYS_FIRST, cmd_incr, NULL, false, false},
    {"mget", -2, KEYS_ALL, NULL, each_get, true, false},
    {"del", -2, KEYS_ALL, NULL, each_del, false, false},
    {"exists", -2, KEYS_ALL, NULL, each_exists, false, false},
    {"ping", -1, KEYS_NONE, cmd_ping, NULL, false, false},
    {"echo", 2, KEYS_NONE, cmd_echo, NULL, false, false},
    {"ttl", 2, KEYS_FIRST, cmd_ttl, NULL, false, false},
    {"pttl", 2, KEYS_FIRST, cmd_pttl, NULL, false, false},
    {"config", -2, KEYS_NONE, cmd_config, NULL, false, false},
    {"command", -1, KEYS_NONE, cmd_command, NULL, false, false},
    {"quit", -1, KEYS_NONE, cmd_quit, NULL, false, true},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

/* COMMAND COUNT: how many there are; COMMAND and its other forms (DOCS, INFO): no details. */
static void cmd_command(struct store *st, int argc, const struct arg *argv, struct buf *out)
{
    if (argc >= 2 && arg_is(&argv[1], "count"))
        resp_num(out, ':', (int64_t)NCOMMANDS);
    else
        buf_put(out, "*0\r\n", 4);
}

const struct command *command_find(const struct arg *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (arg_is(name, commands[i].name))
            return &commands[i];
    return NULL;
}

void command_run(struct store *st, const struct command *cmd, int argc, const struct arg *argv,
                 struct buf *out)
{
    int64_t count = 0;

    if (cmd->run != NULL) {
        cmd->run(st, argc, argv, out);
        return;
    }
    if (cmd->array)
        resp_num(out, '*', argc - 1);
    for (int i = 1; i < argc; i++)
        cmd->each(st, &argv[i], out, &count);
    if (!cmd->array)
        resp_num(out, ':', count);
}
