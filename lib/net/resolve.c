/*
 * Lookups: ioloop_resolve(), its answers and cancelling. Each loop that looks something up
 * gets a resolver, owned by the loop (ioloop_free() cancels it): a slab of its lookups that
 * ids index, and the channel that answers names (lib/net/resolve_cares.c), made by the
 * first name.
 *
 * A lookup lives until three things are over: its callback (a deferred node delivers every
 * answer, so fn never runs inside ioloop_resolve() or ioloop_resolve_cancel(), nor inside
 * c-ares), the channel's hold on it (c-ares answers every query once, also one we cancelled:
 * that answer is dropped), and its slot (the id can cancel it until fn starts).
 *
 *   ioloop_resolve ─▶ in the channel ── answered ──▶ queued ── deferred ──▶ fn runs ─▶ freed
 *                       │ (cancel: queued at once with -ECANCELED, the channel still holds
 *                       └─ it; its answer, when it comes, frees it)
 *
 * Numeric hosts never reach the channel: their answer is queued at once.
 */
#include "net/resolve.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Lookup ids are (generation << 32 | slot); a slot retires before its generation would make
 * an id negative, so ids are positive and never reused. */
#define GEN_LAST INT32_MAX
#define SLOT_NONE UINT32_MAX
#define SLOTS_MIN 16u

struct ioloop_lookup {
    struct ioloop_deferred done;     /* delivers the answer */
    struct ioloop_resolver *r;
    ioloop_resolve_fn fn;            /* NULL once dropped: nobody waits for the answer */
    void *arg;
    const struct sockaddr **table;   /* the answer's room: naddrs pointers, then addresses */
    size_t naddrs;
    int err;
    uint32_t slot;
    uint16_t port;
    bool in_slab;                    /* cancellable: fn has not started */
    bool in_channel;                 /* the channel's answer is still to come */
    bool queued;                     /* `done` is in the loop's deferred list */
};

struct lookup_slot {
    struct ioloop_lookup *lk;        /* NULL while free */
    uint32_t gen;                    /* the occupant's generation, or the next one's */
    uint32_t next_free;
};

struct ioloop_resolver {
    struct ioloop_owned owned;
    ioloop_t *loop;
    struct ioloop_channel *channel;  /* made by the first name */
    struct lookup_slot *slots;
    uint32_t nslots;                 /* slots ever handed out */
    uint32_t cap;
    uint32_t free_head;
    uint32_t live;                   /* lookups in the slab */
};

static void resolver_cancel(ioloop_t *loop, struct ioloop_owned *node);

/* ---- The slab --------------------------------------------------------------------------- */

static int slab_add(struct ioloop_resolver *r, struct ioloop_lookup *lk, int64_t *id)
{
    struct lookup_slot *s;
    uint32_t slot;

    if (r->free_head != SLOT_NONE) {
        slot = r->free_head;
        r->free_head = r->slots[slot].next_free;
    } else {
        if (r->nslots == r->cap) {
            uint32_t cap = r->cap > 0 ? 2 * r->cap : SLOTS_MIN;
            struct lookup_slot *slots;

            if (r->cap >= SLOT_NONE / 2 || (slots = realloc(r->slots, cap * sizeof *slots)) == NULL)
                return -ENOMEM;
            r->slots = slots;
            r->cap = cap;
        }
        slot = r->nslots++;
        r->slots[slot].gen = 1;
    }
    s = &r->slots[slot];
    s->lk = lk;
    lk->slot = slot;
    lk->in_slab = true;
    r->live++;
    *id = (int64_t)s->gen << 32 | slot;
    return 0;
}

static void slab_remove(struct ioloop_lookup *lk)
{
    struct ioloop_resolver *r = lk->r;
    struct lookup_slot *s = &r->slots[lk->slot];

    s->lk = NULL;
    lk->in_slab = false;
    r->live--;
    if (s->gen == GEN_LAST)
        return; /* retired: its ids are never handed out again */
    s->gen++;
    s->next_free = r->free_head;
    r->free_head = lk->slot;
}

static struct ioloop_lookup *slab_find(const ioloop_t *loop, int64_t id)
{
    const struct ioloop_resolver *r = loop->resolver;
    uint32_t slot = (uint32_t)id, gen = (uint32_t)(id >> 32);

    if (r == NULL || id <= 0 || slot >= r->nslots || r->slots[slot].lk == NULL ||
        r->slots[slot].gen != gen)
        return NULL;
    return r->slots[slot].lk;
}

/* The loop's resolver, made on first use. */
static struct ioloop_resolver *resolver_get(ioloop_t *loop)
{
    struct ioloop_resolver *r = loop->resolver;

    if (r != NULL)
        return r;
    r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->loop = loop;
    r->free_head = SLOT_NONE;
    r->owned.cancel = resolver_cancel;
    ioloop__own(loop, &r->owned);
    loop->resolver = r;
    return r;
}

/* ---- Answers ---------------------------------------------------------------------------- */

static void room_free(struct ioloop_lookup *lk)
{
    free(lk->table);
    lk->table = NULL;
    lk->naddrs = 0;
}

union ioloop_inet *ioloop__lookup_room(struct ioloop_lookup *lk, size_t n)
{
    /* The pointer table first: malloc aligns it, and the addresses behind it are aligned
     * as well as pointers are, more than they need. */
    room_free(lk);
    if (n == 0 || n > SIZE_MAX / (sizeof(union ioloop_inet) + sizeof *lk->table))
        return NULL;
    lk->table = malloc(n * (sizeof(union ioloop_inet) + sizeof *lk->table));
    if (lk->table == NULL)
        return NULL;
    lk->naddrs = n;
    return (union ioloop_inet *)(void *)(lk->table + n);
}

static void lookup_free(struct ioloop_lookup *lk)
{
    room_free(lk);
    free(lk);
}

/* Deferred: fn gets the answer, then the lookup is freed, unless the channel still holds it
 * (it was cancelled while in flight): then the channel's answer frees it. */
static void deliver(ioloop_t *loop, struct ioloop_deferred *node)
{
    struct ioloop_lookup *lk = ioloop__container_of(node, struct ioloop_lookup, done);

    lk->queued = false;
    if (lk->in_slab)
        slab_remove(lk); /* running: cancelling it is too late from here on */
    if (lk->fn != NULL) {
        bool ok = lk->err == 0;

        lk->fn(loop, lk->err, ok ? lk->table : NULL, ok ? lk->naddrs : 0, lk->arg);
        lk->fn = NULL;
    }
    if (lk->in_channel)
        room_free(lk);
    else
        lookup_free(lk);
}

static void queue(struct ioloop_lookup *lk)
{
    if (lk->queued)
        return;
    lk->queued = true;
    lk->done.fn = deliver;
    ioloop__defer(lk->r->loop, &lk->done);
}

void ioloop__lookup_answered(struct ioloop_lookup *lk, int err)
{
    lk->in_channel = false;
    if (!lk->in_slab) { /* cancelled or dropped: nobody wants this answer */
        if (!lk->queued)
            lookup_free(lk);
        return;
    }
    if (err == 0 && lk->naddrs == 0)
        err = -ENOENT; /* a name without any address */
    if (err < 0)
        room_free(lk);
    for (size_t i = 0; i < lk->naddrs; i++) {
        union ioloop_inet *a = (union ioloop_inet *)(void *)(lk->table + lk->naddrs) + i;

        if (a->sa.sa_family == AF_INET6)
            a->in6.sin6_port = htons(lk->port);
        else
            a->in.sin_port = htons(lk->port);
        lk->table[i] = &a->sa;
    }
    lk->err = err;
    queue(lk);
}

/* Out of the slab, with -ECANCELED for fn (if it still has one), after the current callback. */
static void cancel(struct ioloop_lookup *lk)
{
    slab_remove(lk);
    room_free(lk);
    lk->err = -ECANCELED;
    queue(lk);
}

/* ---- Lookups ---------------------------------------------------------------------------- */

int64_t ioloop__resolve_start(ioloop_t *loop, const char *host, uint16_t port,
                              ioloop_resolve_fn fn, void *arg)
{
    struct ioloop_address addr;
    struct ioloop_resolver *r;
    struct ioloop_lookup *lk;
    int64_t id;
    int kind, err;

    if (loop == NULL || host == NULL || fn == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    if ((kind = ioloop__host_parse(host, port, &addr)) < 0)
        return kind;
    if ((r = resolver_get(loop)) == NULL)
        return -ENOMEM;
    if (kind == IOLOOP__HOST_NAME && r->channel == NULL &&
        (err = ioloop__channel_new(loop, &r->channel)) < 0)
        return err;
    lk = calloc(1, sizeof *lk);
    if (lk == NULL)
        return -ENOMEM;
    *lk = (struct ioloop_lookup){.r = r, .fn = fn, .arg = arg, .port = port};
    if (kind == IOLOOP__HOST_NUMERIC) {
        union ioloop_inet *a = ioloop__lookup_room(lk, 1);

        if (a == NULL) {
            free(lk);
            return -ENOMEM;
        }
        memcpy(a, &addr.ss, addr.len);
    }
    if (slab_add(r, lk, &id) < 0) {
        lookup_free(lk);
        return -ENOMEM;
    }
    if (kind == IOLOOP__HOST_NUMERIC) {
        ioloop__lookup_answered(lk, 0); /* no query: the answer is the host itself */
    } else {
        lk->in_channel = true;
        ioloop__channel_lookup(r->channel, host, lk);
    }
    return id;
}

int64_t ioloop_resolve(ioloop_t *loop, const char *host, uint16_t port, ioloop_resolve_fn fn,
                       void *arg)
{
    return ioloop__resolve_start(loop, host, port, fn, arg);
}

int ioloop_resolve_cancel(ioloop_t *loop, int64_t resolve_id)
{
    struct ioloop_lookup *lk;
    int err;

    if (loop == NULL)
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    if ((lk = slab_find(loop, resolve_id)) == NULL)
        return -ENOENT;
    cancel(lk);
    return 0;
}

void ioloop__resolve_drop(ioloop_t *loop, int64_t resolve_id)
{
    struct ioloop_lookup *lk = slab_find(loop, resolve_id);

    if (lk == NULL)
        return;
    lk->fn = NULL;
    cancel(lk); /* the deferred delivery only frees it (or leaves that to the channel) */
}

int ioloop_resolve_set_servers(ioloop_t *loop, const char *servers)
{
    struct ioloop_resolver *r;
    bool in_flight = false;
    int err;

    if (loop == NULL || servers == NULL || servers[0] == '\0')
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;
    if ((r = resolver_get(loop)) == NULL)
        return -ENOMEM;
    if (r->channel == NULL && (err = ioloop__channel_new(loop, &r->channel)) < 0)
        return err;
    for (uint32_t i = 0; i < r->nslots && !in_flight; i++)
        in_flight = r->slots[i].lk != NULL && r->slots[i].lk->in_channel;
    /* c-ares changes servers only with no query in flight: queries nobody waits for any more
     * (cancelled lookups') are given up, those of lookups still waiting make it -EBUSY. */
    if (!in_flight)
        ioloop__channel_cancel(r->channel);
    return ioloop__channel_set_servers(r->channel, servers);
}

/* ioloop_free(): every lookup still in flight gets -ECANCELED here, in the freeing thread
 * (the answers already due were delivered by the deferred work ioloop_free() ran first). A
 * callback that starts another lookup sees it cancelled in the next round, on the same
 * channel: its servers stay what they were set to until the end. */
static void resolver_cancel(ioloop_t *loop, struct ioloop_owned *node)
{
    struct ioloop_resolver *r = ioloop__container_of(node, struct ioloop_resolver, owned);

    while (r->live > 0) {
        if (r->channel != NULL)
            ioloop__channel_cancel(r->channel); /* each lookup it holds: -ECANCELED, queued */
        ioloop__run_deferred_all(loop);
    }
    ioloop__channel_free(r->channel); /* what it still holds nobody waits for */
    ioloop__disown(node);
    loop->resolver = NULL;
    free(r->slots);
    free(r);
}

/* ---- Names in addresses ----------------------------------------------------------------- */

int ioloop__address_parse_local(const char *text, struct ioloop_address *addr)
{
    struct ioloop_host host;
    size_t len;
    int kind, err;

    if ((kind = ioloop__address_parse_host(text, addr, &host)) != IOLOOP__HOST_NAME)
        return kind < 0 ? kind : 0;
    len = strlen(host.name);
    if (host.name[len - 1] == '.')
        host.name[len - 1] = '\0'; /* /etc/hosts lists names without the root's dot */
    err = ioloop__hosts_lookup(host.name, host.port, addr);
    if (err == -ENOENT && strcasecmp(host.name, "localhost") == 0) {
        /* RFC 6761: localhost is the loopback address, listed or not. */
        ioloop__host_parse("127.0.0.1", host.port, addr);
        err = 0;
    }
    return err;
}
