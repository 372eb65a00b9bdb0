/*
 * A loop's connection table: every connection of the loop, accepted or connected, has a slot,
 * and its id names the slot. The table is the loop's list of what it owns (ioloop_free()
 * closes what is left) and the directory other threads use to reach a connection by id.
 *
 * An id is (loop uid << 41 | slot << 21 | generation): unique in the process (the uid names
 * the loop, see IOLOOP__UID_BITS), never 0, and never reused for the loop's life, since a
 * slot retires once its generation is spent. Bit 63 is never set in an id; in a slot's key it
 * means "open".
 *
 * Slots live in fixed chunks that never move, so a thread that reads a key while the loop
 * adds chunks needs no lock: keys are atomics, written by the loop thread only.
 */
#ifndef IOLOOP_LIB_CONNS_H
#define IOLOOP_LIB_CONNS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/loop.h"

#define IOLOOP__CONN_GEN_BITS 21
#define IOLOOP__CONN_SLOT_BITS 20   /* at most 2^20 connections per loop at a time */
#define IOLOOP__CONN_SLOT_SHIFT IOLOOP__CONN_GEN_BITS
#define IOLOOP__CONN_UID_SHIFT (IOLOOP__CONN_GEN_BITS + IOLOOP__CONN_SLOT_BITS)

/* The uid of the loop a connection id belongs to. */
static inline uint32_t ioloop__conn_id_uid(uint64_t id)
{
    return (uint32_t)(id >> IOLOOP__CONN_UID_SHIFT) & IOLOOP__UID_MAX;
}

/* The slot a connection id names in its loop's table. */
static inline uint32_t ioloop__conn_id_slot(uint64_t id)
{
    return (uint32_t)(id >> IOLOOP__CONN_SLOT_SHIFT) & ((1u << IOLOOP__CONN_SLOT_BITS) - 1);
}

struct ioloop_conn;

/* Loop thread: takes a slot for conn; *id is its id from then on. Creates the loop's table
 * on first use. Returns 0, -ENOMEM, or -EMFILE (the loop has 2^20 connections). */
int ioloop__conns_add(ioloop_t *loop, struct ioloop_conn *conn, uint64_t *id);
/* Loop thread: the id of the connection in `slot`. */
uint64_t ioloop__conns_id(const ioloop_t *loop, uint32_t slot);
/* Loop thread: the connection is open to other threads' calls (`owner`: its server) or not
 * any more. */
void ioloop__conns_publish(ioloop_t *loop, uint64_t id, const void *owner);
void ioloop__conns_unpublish(ioloop_t *loop, uint64_t id);
/* Loop thread: the connection is gone; its slot may serve another one. */
void ioloop__conns_remove(ioloop_t *loop, uint64_t id);

/* Loop thread: the open connection with this id and owner, or NULL. */
struct ioloop_conn *ioloop__conns_find(ioloop_t *loop, uint64_t id, const void *owner);
/* Any thread: is the connection with this id and owner open now? */
bool ioloop__conns_is_open(ioloop_t *loop, uint64_t id, const void *owner);

/* Loop thread: calls fn for every connection in the table (fn may close it). */
void ioloop__conns_each(ioloop_t *loop, void (*fn)(struct ioloop_conn *conn, void *arg),
                        void *arg);

#endif /* IOLOOP_LIB_CONNS_H */
