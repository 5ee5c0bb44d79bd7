/*
 * Reading runs of consecutive log entries for replication and the fsm: from
 * the in-memory window where it holds them, else from the LogStore, with
 * one get_logs call per run when the store offers it (one get_log per entry
 * otherwise).
 */
#ifndef CRAFT_LIB_LOGREAD_H
#define CRAFT_LIB_LOGREAD_H

#include <stddef.h>
#include <stdint.h>

#include "lib/entry.h"
#include "lib/raft.h"

/* Fills ents[0..*n-1] (room for `want` pointers) with references to the
 * entries lo, lo+1, ..., lo+*n-1: at most `want`, stopping before the first
 * index neither the window nor the store holds, and before an entry that
 * would make the sum of len + ext_len of those taken exceed `max_bytes`;
 * entry `lo` is always taken whatever its size. Where the window holds an
 * index its entry is used (it may not be durable yet), as craft__entry_at
 * does. Each reference is released with craft__entry_unref.
 * Returns 0 with *n >= 1 (*n == 0 only when want == 0); CRAFT_ENOTFOUND
 * when `lo` is absent (index 0 included); CRAFT_ECORRUPT when the store
 * returns an entry whose index is not the one asked for; CRAFT_ENOMEM; or
 * the store's error. On error *n = 0 and no reference is held.
 * Thread-safe (replication and fsm threads). */
int craft__read_entries(craft_t *r, uint64_t lo, size_t want, size_t max_bytes,
                        craft__entry_t **ents, size_t *n);

#endif
