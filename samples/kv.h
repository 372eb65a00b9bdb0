/*
 * kv_server's parts and what they share (see kv_server.c for what the program is):
 *   kv_resp.c    byte buffers, RESP replies, and the incremental request parser;
 *   kv_store.c   one shard's keyspace (uthash), expiry, and the commands that run on it;
 *   kv_server.c  connections and the replies they owe, the shards on the pool's loops and the
 *                batches between them, start and stop.
 * A shard's store is touched by its loop's thread only; nothing here is thread-safe.
 */
#ifndef KV_H
#define KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ioloop.h>

/* Limits on requests. Where Redis has one, it is Redis's. */
#define MAX_ARGS   (1024 * 1024)          /* arguments of one command */
#define MAX_BULK   ((size_t)8 << 20)      /* one argument: SET key VALUE must fit the input limit */
#define MAX_INLINE ((size_t)64 << 10)     /* one inline command line */

/* The reply to a command that ran out of memory. */
extern const char ERR_OOM[];

/* ---- Buffers and RESP (kv_resp.c) ------------------------------------------------------- */

/* An argument, or any span of bytes someone else owns. */
struct arg {
    const char *p;
    size_t len;
};

/* A growable byte buffer. An append that cannot grow it sets `failed` and adds nothing, so a
 * reply is built without a check per append and tested once at the end. */
struct buf {
    char *data;
    size_t len, cap;
    bool failed;
};

/* Makes room for `want` elements of `size` bytes: returns the array (maybe moved), or NULL when
 * out of memory, and then the old array is still valid. */
void *array_grow(void *array, size_t *cap, size_t want, size_t size);

bool buf_room(struct buf *b, size_t more);
void buf_put(struct buf *b, const void *p, size_t n);
void buf_put_str(struct buf *b, const char *s);
/* Empties the buffer for the next reply, keeping its memory. */
void buf_clear(struct buf *b);

/* Writes v in decimal just before `end`; returns where the digits start (at most 20 + sign). */
char *int_format(char *end, int64_t v);
/* Redis's integer syntax (string2ll): an optional '-', digits without leading zeros, in range. */
bool int_parse(const char *p, size_t len, int64_t *out);
/* Case-insensitive comparison with a lower-case name. */
bool arg_is(const struct arg *a, const char *name);

/* ":<v>\r\n", "*<v>\r\n" or "$<v>\r\n" (type is ':', '*' or '$'). */
void resp_num(struct buf *b, char type, int64_t v);
/* A bulk string. */
void resp_bulk(struct buf *b, const char *p, size_t n);

/* ---- Parsing requests (kv_resp.c) ------------------------------------------------------- */

/* What the parsers return instead of a command's length. */
enum { PARSE_MORE = 0, PARSE_ERROR = -1, PARSE_NOMEM = -2 };
/* Room for the reason a parser gives for PARSE_ERROR. */
#define PARSE_WHY_SIZE 80

/* The state of a multibulk command that arrived in pieces, as offsets from its first byte,
 * valid because the library presents the unconsumed bytes again from the same start. */
struct span {
    size_t off, len;
};

struct parser {
    size_t pos;                  /* bytes parsed so far */
    int64_t nargs;               /* the argument count; -1 before the "*<count>" line */
    int argc;                    /* arguments parsed so far (all of them once complete) */
    struct span *args;
    size_t cap;
};

/*
 * Both parse the command at the start of data[0..len): they return its length in bytes with
 * ps->argc arguments in ps->args (0 for an empty command, which has no reply), or PARSE_MORE
 * (a partial command: call again with the same bytes and more), PARSE_ERROR (why says what is
 * wrong, as Redis words it), PARSE_NOMEM. parse_inline takes one line of arguments separated
 * by spaces or tabs; parse_multibulk takes RESP and resumes where the previous call stopped.
 */
long parse_inline(struct parser *ps, const char *data, size_t len, char *why);
long parse_multibulk(struct parser *ps, const char *data, size_t len, char *why);

/* The length of the complete multibulk command at data, with its key (second argument) in
 * *key (p NULL if it has none); 0 when the command is incomplete or malformed. */
size_t parse_peek(const char *data, size_t len, struct arg *key);

/* ---- A shard's keyspace (kv_store.c) ---------------------------------------------------- */

struct entry;

/* One shard's keys; its loop's thread alone touches it. Zeroed, with `loop` set, it is empty. */
struct store {
    ioloop_t *loop;                /* its clock tells what has expired */
    struct entry *table;           /* uthash head */
    struct entry *vhead, *vtail;   /* the keys with a TTL, in sweep order */
    size_t nvolatile;
};

/* Removes the expired keys among the next few with a TTL (a bounded amount of work). */
void store_sweep(struct store *st);
/* Asks the CPU for the cache lines a lookup of each key will read (a hint; changes nothing);
 * at most PREFETCH_MAX keys, two pipelines of 16, are worth asking for at once. */
#define PREFETCH_MAX 32
void store_prefetch(const struct store *st, const struct arg *keys, int n);
/* Frees every key; returns how many there were. */
size_t store_free(struct store *st);

/* ---- Commands (kv_store.c) -------------------------------------------------------------- */

/* A command writes its reply to `out`; running out of memory sets out->failed. */
typedef void cmd_fn(struct store *st, int argc, const struct arg *argv, struct buf *out);
/* One key's share of a multi-key command: a piece of an array reply, or a count. */
typedef void key_fn(struct store *st, const struct arg *key, struct buf *out, int64_t *count);

enum keys { KEYS_NONE, KEYS_FIRST, KEYS_ALL };

struct command {
    const char *name;  /* lower case, as Redis names it in errors */
    int arity;         /* Redis's convention: n exactly, -n at least n (the name counts) */
    enum keys keys;    /* which arguments are keys: where the command runs */
    cmd_fn *run;       /* KEYS_NONE and KEYS_FIRST */
    key_fn *each;      /* KEYS_ALL */
    bool array;        /* KEYS_ALL: an array of the pieces, else the sum of the counts */
    bool closes;       /* the connection closes after the reply (QUIT) */
};

/* The command named `name` (any case), or NULL. */
const struct command *command_find(const struct arg *name);
/* Runs a command whose keys all live in st (the arity was checked). */
void command_run(struct store *st, const struct command *cmd, int argc, const struct arg *argv,
                 struct buf *out);

#endif /* KV_H */
