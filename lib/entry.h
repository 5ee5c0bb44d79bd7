/*
 * Refcounted, immutable log entries shared between the run, replication and
 * fsm threads (one allocation: header + data + ext). Only index/term/
 * appended_at are written, by the run thread, before the entry is shared.
 */
#ifndef CRAFT_LIB_ENTRY_H
#define CRAFT_LIB_ENTRY_H

#include <stdatomic.h>

#include "craft.h"

typedef struct craft__entry {
    atomic_int refs;
    craft_log_t log;
} craft__entry_t;

/* Copies data/ext. refs = 1. NULL on ENOMEM. */
craft__entry_t *craft__entry_new(craft_log_type_t type, const void *data, size_t len,
                                 const void *ext, size_t ext_len);
/* Copy of a whole craft_log_t (index, term, appended_at included). */
craft__entry_t *craft__entry_from_log(const craft_log_t *log);
craft__entry_t *craft__entry_ref(craft__entry_t *e);
void craft__entry_unref(craft__entry_t *e);

#endif
