/*
 * A fixed-size in-memory cache of recent log entries in front of any LogStore
 * (hashicorp's LogCache).
 */
#ifndef CRAFT_LOG_CACHE_H
#define CRAFT_LOG_CACHE_H

#include "../craft.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Wraps `backing` (borrowed: it must outlive the cache) in a LogStore that
 * keeps a copy of the last entries stored through it: entry `index` lives in
 * slot index % capacity, filled when store_logs succeeds on the backing store
 * and consulted first by get_log. delete_range drops the cached entries of
 * its range; get_log misses are read from the backing store and not cached.
 * Every other member is forwarded: first_index, last_index and, when the
 * backing store offers them, stage_commit_index and get_commit_index (NULL
 * in the cache when NULL in the backing store).
 *
 * Writes through the cache (store_logs, delete_range) are serialised with
 * each other so the cache never holds an entry the backing store no longer
 * has; cache hits never wait for a write in progress. Write to the backing
 * store only through the cache while the cache is in use.
 *
 * The cache's `close` frees the cache only; it does NOT close `backing`,
 * which the caller closes afterwards.
 *
 * Returns 0, CRAFT_EINVAL (capacity 0, NULL backing or out) or
 * CRAFT_ENOMEM. */
int craft_log_cache_new(size_t capacity, craft_log_store_t *backing,
                        craft_log_store_t **out);

#ifdef __cplusplus
}
#endif
#endif /* CRAFT_LOG_CACHE_H */
