/*
 * The connection table of a loop; see conns.h. The table is created by the loop's first
 * connection and registered as something the loop owns: ioloop_free() cancels it, which
 * closes every connection still in it with -ECANCELED and then frees it.
 */
#include "net/conns.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "net/conn.h"

/* 256 slots of 24 bytes make a 6 KiB chunk: a loop with a handful of connections costs one,
 * and 4096 chunk pointers (32 KiB) cover the 2^20 slots an id can name. */
#define CHUNK_SHIFT 8
#define CHUNK_SLOTS (1u << CHUNK_SHIFT)
#define NCHUNKS ((1u << IOLOOP__CONN_SLOT_BITS) / CHUNK_SLOTS)

#define SLOT_NONE UINT32_MAX
#define GEN_MASK ((UINT64_C(1) << IOLOOP__CONN_GEN_BITS) - 1)
#define SLOT_MASK ((UINT64_C(1) << IOLOOP__CONN_SLOT_BITS) - 1)
#define KEY_OPEN (UINT64_C(1) << 63)

/*
 * `owner` matters only while the key says open: it is then the connection's server (0 for a
 * connect()ed one), which other threads compare with theirs. A free slot keeps the next free
 * slot's index there instead (never equal to a server's address), and a NULL conn.
 */
struct conn_slot {
    _Atomic uint64_t key;     /* the occupant's id, | KEY_OPEN while it is open; for a free
                                 slot, the last occupant's id (its generation) */
    _Atomic uintptr_t owner;  /* open: the server; free: the next free slot or SLOT_NONE */
    struct ioloop_conn *conn; /* NULL while free */
};

struct ioloop_conns {
    struct ioloop_owned owned;
    uint32_t nslots;          /* slots ever handed out */
    uint32_t free_head;
    uint32_t live;            /* occupied slots */
    struct conn_slot *_Atomic chunks[NCHUNKS];
};

static struct conn_slot *slot_at(const struct ioloop_conns *t, uint32_t slot)
{
    struct conn_slot *chunk =
        atomic_load_explicit(&t->chunks[slot >> CHUNK_SHIFT], memory_order_acquire);

    return chunk != NULL ? &chunk[slot & (CHUNK_SLOTS - 1)] : NULL;
}


/* The slot an id names in a loop's table, if it exists at all. Any thread. */
static struct conn_slot *lookup(const ioloop_t *loop, uint64_t id)
{
    const struct ioloop_conns *t = atomic_load_explicit(&loop->conns, memory_order_acquire);

    if (t == NULL || ioloop__conn_id_uid(id) != loop->uid || (id & KEY_OPEN))
        return NULL;
    return slot_at(t, ioloop__conn_id_slot(id));
}

/* ioloop_free(): closes what is left, lets it finish (on_close runs), frees the table. An
 * on_close may open new connections on this loop; they are closed in the next round. */
static void cancel_one(struct ioloop_conn *conn, void *arg)
{
    ioloop__conn_abort(conn, -ECANCELED);
}

static void conns_cancel(ioloop_t *loop, struct ioloop_owned *node)
{
    struct ioloop_conns *t = ioloop__container_of(node, struct ioloop_conns, owned);

    while (t->live > 0) {
        ioloop__conns_each(loop, cancel_one, NULL);
        ioloop__run_deferred_all(loop);
    }
    ioloop__disown(node);
    atomic_store_explicit(&loop->conns, NULL, memory_order_relaxed);
    for (uint32_t i = 0; i < NCHUNKS; i++)
        free(atomic_load_explicit(&t->chunks[i], memory_order_relaxed));
    free(t);
}

static struct ioloop_conns *table_get(ioloop_t *loop)
{
    struct ioloop_conns *t = atomic_load_explicit(&loop->conns, memory_order_relaxed);

    if (t != NULL)
        return t;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->free_head = SLOT_NONE;
    t->owned.cancel = conns_cancel;
    ioloop__own(loop, &t->owned);
    atomic_store_explicit(&loop->conns, t, memory_order_release);
    return t;
}

int ioloop__conns_add(ioloop_t *loop, struct ioloop_conn *conn, uint64_t *id)
{
    struct ioloop_conns *t = table_get(loop);
    struct conn_slot *s;
    uint64_t gen = 1;
    uint32_t slot;

    if (t == NULL)
        return -ENOMEM;
    if (t->free_head != SLOT_NONE) {
        slot = t->free_head;
        s = slot_at(t, slot);
        t->free_head = (uint32_t)atomic_load_explicit(&s->owner, memory_order_relaxed);
        gen = (atomic_load_explicit(&s->key, memory_order_relaxed) & GEN_MASK) + 1;
    } else {
        struct conn_slot *chunk;

        slot = t->nslots;
        if (slot > SLOT_MASK)
            return -EMFILE;
        if ((slot & (CHUNK_SLOTS - 1)) == 0) {
            chunk = calloc(CHUNK_SLOTS, sizeof *chunk);
            if (chunk == NULL)
                return -ENOMEM;
            atomic_store_explicit(&t->chunks[slot >> CHUNK_SHIFT], chunk, memory_order_release);
        }
        t->nslots++;
        s = slot_at(t, slot);
    }
    *id = (uint64_t)loop->uid << IOLOOP__CONN_UID_SHIFT |
          (uint64_t)slot << IOLOOP__CONN_SLOT_SHIFT | gen;
    atomic_store_explicit(&s->key, *id, memory_order_release);
    s->conn = conn;
    t->live++;
    return 0;
}

uint64_t ioloop__conns_id(const ioloop_t *loop, uint32_t slot)
{
    const struct ioloop_conns *t = atomic_load_explicit(&loop->conns, memory_order_relaxed);

    return atomic_load_explicit(&slot_at(t, slot)->key, memory_order_relaxed) & ~KEY_OPEN;
}

void ioloop__conns_publish(ioloop_t *loop, uint64_t id, const void *owner)
{
    struct conn_slot *s = lookup(loop, id);

    /* The owner first: a thread that sees the key open sees its owner too. */
    atomic_store_explicit(&s->owner, (uintptr_t)owner, memory_order_relaxed);
    atomic_store_explicit(&s->key, id | KEY_OPEN, memory_order_release);
}

void ioloop__conns_unpublish(ioloop_t *loop, uint64_t id)
{
    atomic_store_explicit(&lookup(loop, id)->key, id, memory_order_release);
}

void ioloop__conns_remove(ioloop_t *loop, uint64_t id)
{
    struct ioloop_conns *t = atomic_load_explicit(&loop->conns, memory_order_relaxed);
    struct conn_slot *s = lookup(loop, id);

    atomic_store_explicit(&s->key, id, memory_order_release);
    s->conn = NULL;
    t->live--;
    /* A slot whose generations are spent retires: ids are never reused. */
    if ((id & GEN_MASK) == GEN_MASK)
        return;
    atomic_store_explicit(&s->owner, t->free_head, memory_order_relaxed);
    t->free_head = ioloop__conn_id_slot(id);
}

struct ioloop_conn *ioloop__conns_find(ioloop_t *loop, uint64_t id, const void *owner)
{
    struct conn_slot *s = lookup(loop, id);

    if (s == NULL || atomic_load_explicit(&s->key, memory_order_relaxed) != (id | KEY_OPEN) ||
        atomic_load_explicit(&s->owner, memory_order_relaxed) != (uintptr_t)owner)
        return NULL;
    return s->conn;
}

bool ioloop__conns_is_open(ioloop_t *loop, uint64_t id, const void *owner)
{
    struct conn_slot *s = lookup(loop, id);

    return s != NULL && atomic_load_explicit(&s->key, memory_order_acquire) == (id | KEY_OPEN) &&
           atomic_load_explicit(&s->owner, memory_order_relaxed) == (uintptr_t)owner;
}

void ioloop__conns_each(ioloop_t *loop, void (*fn)(struct ioloop_conn *conn, void *arg),
                        void *arg)
{
    struct ioloop_conns *t = atomic_load_explicit(&loop->conns, memory_order_relaxed);

    if (t == NULL)
        return;
    /* Slots added by fn lie beyond nslots as read here, or in freed slots already passed. */
    for (uint32_t i = 0, n = t->nslots; i < n; i++) {
        struct conn_slot *s = slot_at(t, i);

        if (s->conn != NULL)
            fn(s->conn, arg);
    }
}
