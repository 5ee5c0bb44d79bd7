/*
 * Futures: completed exactly once, freed when both the caller (through
 * craft_future_free) and craft (through completion) have let go.
 */
#ifndef CRAFT_LIB_FUTURE_H
#define CRAFT_LIB_FUTURE_H

#include <stdatomic.h>

#include "craft.h"
#include "lib/entry.h"
#include "lib/mailbox.h"

enum { CRAFT__OP_ADD_VOTER, CRAFT__OP_ADD_NONVOTER, CRAFT__OP_DEMOTE, CRAFT__OP_REMOVE };

typedef enum {
    CRAFT__FUT_GENERIC = 0,
    CRAFT__FUT_APPLY,    /* command / barrier / noop: has `entry` */
    CRAFT__FUT_VERIFY,
    CRAFT__FUT_CONFIG,   /* get configuration */
    CRAFT__FUT_MEMBERSHIP, /* add/remove/demote: op, srv_id, srv_addr */
    CRAFT__FUT_READ_INDEX,
    CRAFT__FUT_TRANSFER, /* srv_id / srv_addr: target or NULL */
    CRAFT__FUT_SNAPSHOT, /* srv_id: the snapshot id once done */
    CRAFT__FUT_RESTORE,  /* reader + restore_meta */
    CRAFT__FUT_SHUTDOWN
} craft__future_kind_t;

struct craft_future {
    craft__msg_t msg;    /* lets the future itself travel through a mailbox */
    craft__queue_t link; /* position in the owner thread's queue */
    craft__mutex_t mu;
    craft__cond_t cond;
    int refs;
    bool done;
    atomic_bool completed; /* `done` for spinning waiters, set after it */
    int err;
    /* craft_future_wait may poll this long before sleeping
     * (config.wait_spin_us); set before the future is handed out. */
    int64_t spin_ns;
    craft__future_kind_t kind;
    uint64_t index;
    void *response;
    craft_fsm_t *fsm; /* for release_response */
    craft_configuration_t configuration;
    bool has_configuration;
    void (*cb)(craft_future_t *f, void *arg);
    void *cb_arg;
    /* Operation payload, owned by craft while pending. */
    craft__entry_t *entry;
    int64_t enqueued_ns;  /* when the caller made the request */
    int64_t deadline_ns;  /* enqueue deadline; 0 = none */
    uint64_t epoch;       /* verify: heartbeat epoch it waits for */
    int op;               /* membership: CRAFT__OP_* */
    char *srv_id;
    char *srv_addr;
    uint64_t prev_index;
    craft_reader_t *reader;         /* restore: borrowed */
    int64_t restore_size;           /* restore: -1 unknown */
    uint64_t restore_index;
    craft_snapshot_store_t *snaps;  /* snapshot: for craft_future_snapshot_open */
};

/* New pending future with two references (caller + craft). NULL on ENOMEM. */
craft_future_t *craft__future_new(craft__future_kind_t kind);
/* Completes (first call only; later calls are ignored and return false) and
 * drops craft's reference. Runs the on_done callback. */
bool craft__future_complete(craft_future_t *f, int err);
/* Whether the calling thread is inside an on_done callback: run by
 * craft__future_complete (on whichever craft or transport thread completed
 * the future) or at once by craft_future_on_done (already complete). */
bool craft__future_in_callback(void);
/* The process-wide state of spinning waits (config.wait_spin_us), for
 * tests: the most threads that may spin, threads waiting on spin-enabled
 * futures, threads spinning now, spins begun, spins that saw the
 * completion, average wait. */
typedef struct {
    int limit;
    int waiting;
    int spinning;
    uint64_t spins;
    uint64_t hits;
    int64_t wait_avg_ns;
} craft__spin_counters_t;
void craft__future_spin_counters(craft__spin_counters_t *out);

/* A future that has already failed with `err` (still owned by the caller).
 * NULL on ENOMEM. */
craft_future_t *craft__future_failed(int err);

#endif
