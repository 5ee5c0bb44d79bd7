/*
 * The in-memory window of the newest log entries (DESIGN §2): filled by the
 * run thread before the LogStore write starts, read by replication and fsm
 * threads, trimmed once everyone is past an entry. Entries are contiguous:
 * [first, first + n). Thread-safe.
 */
#ifndef CRAFT_LIB_WINDOW_H
#define CRAFT_LIB_WINDOW_H

#include "lib/entry.h"
#include "lib/runtime.h"

typedef struct craft__window {
    craft__mutex_t mu;
    craft__entry_t **ring;
    size_t cap;
    size_t head;
    size_t n;
    uint64_t first;
    size_t bytes;
} craft__window_t;

void craft__window_init(craft__window_t *w);
void craft__window_destroy(craft__window_t *w);
/* Appends (taking a new reference). An entry that does not follow the last
 * one restarts the window at its index. Returns 0 or CRAFT_ENOMEM. */
int craft__window_append(craft__window_t *w, craft__entry_t *e);
/* Referenced entry `index`, or NULL when outside the window. */
craft__entry_t *craft__window_get(craft__window_t *w, uint64_t index);
/* Up to `max` referenced entries from `lo` on, contiguous; returns count. */
size_t craft__window_get_range(craft__window_t *w, uint64_t lo, size_t max,
                               craft__entry_t **out);
/* Drops entries with index >= `index` (conflict truncation). */
void craft__window_truncate_from(craft__window_t *w, uint64_t index);
/* Drops entries with index <= `index`. */
void craft__window_trim_to(craft__window_t *w, uint64_t index);
void craft__window_clear(craft__window_t *w);
size_t craft__window_len(craft__window_t *w);
size_t craft__window_bytes(craft__window_t *w);
/* First index held (0 when empty). */
uint64_t craft__window_first(craft__window_t *w);

#endif
