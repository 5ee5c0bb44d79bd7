/*
 * In-memory parts for tests and examples: a LogStore + StableStore pair and
 * a loopback transport whose instances reach each other by address.
 */
#ifndef CRAFT_INMEM_H
#define CRAFT_INMEM_H

#include "../craft.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates an in-memory LogStore and StableStore (independent objects; close
 * each with its own `close`). The log store offers the commit-tracking
 * extension. Thread-safe. Returns 0 or CRAFT_ENOMEM. */
int craft_inmem_store_new(craft_log_store_t **log, craft_stable_store_t **stable);

/* Creates a loopback transport with address `addr` (copied) and the default
 * RPC timeout (500 ms; x10 for InstallSnapshot and TimeoutNow, as hashicorp's
 * InmemTransport). Instances reach each other only once connected.
 * Returns 0, CRAFT_EINVAL or CRAFT_ENOMEM. */
int craft_inmem_transport_new(const char *addr, craft_transport_t **out);
/* Same with an explicit RPC timeout in ms (> 0). */
int craft_inmem_transport_new_with_timeout(const char *addr, int64_t timeout_ms,
                                           craft_transport_t **out);

/* After this, RPCs from `a` to `b`'s address are delivered to `b` (one
 * direction; responses always flow back). Connecting again is a no-op. `b`
 * must stay alive while connected (close disconnects it from everyone). */
void craft_inmem_transport_connect(craft_transport_t *a, craft_transport_t *b);
/* RPCs from `a` to `b` fail with CRAFT_EUNREACHABLE from now on. */
void craft_inmem_transport_disconnect(craft_transport_t *a, craft_transport_t *b);
/* `a` reaches nobody. */
void craft_inmem_transport_disconnect_all(craft_transport_t *a);

/* Test helpers over a set of transports. */
/* Connects every transport to every other one (both directions). */
void craft_inmem_transport_connect_all(craft_transport_t **ts, size_t n);
/* Cuts both directions between `a` and `b`. */
void craft_inmem_transport_partition(craft_transport_t *a, craft_transport_t *b);

/* Snapshot stores for tests. The inmem store keeps only the newest snapshot
 * in memory; the discard store accepts snapshots and throws them away (list
 * is empty, open fails with CRAFT_ENOTFOUND). Close each with its `close`.
 * Return 0 or CRAFT_ENOMEM. */
int craft_inmem_snapshot_store_new(craft_snapshot_store_t **out);
int craft_discard_snapshot_store_new(craft_snapshot_store_t **out);

#ifdef __cplusplus
}
#endif
#endif /* CRAFT_INMEM_H */
