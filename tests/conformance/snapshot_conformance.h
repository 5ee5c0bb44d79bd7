/*
 * Conformance suite for any craft_snapshot_store_t: the behaviour craft
 * relies on (hashicorp's SnapshotStore contract), checked the same way for
 * every implementation. Exported so applications can run it against their
 * own stores.
 */
#ifndef CRAFT_SNAPSHOT_CONFORMANCE_H
#define CRAFT_SNAPSHOT_CONFORMANCE_H

#include <check.h>
#include <stdbool.h>

#include "craft.h"

/* How the suite makes stores. Every test calls `open` once for an empty
 * store on fresh storage (discarding what an earlier test left), may close
 * it and call `reopen` for a store on the same storage, and calls `destroy`
 * at its end (after closing every store it opened) to release the storage.
 * Tests run in Check's forked children by default, but the factory must
 * also work when they run in one process (CK_FORK=no). */
typedef struct craft_conformance_snapshot_factory {
    const char *name; /* suite name; borrowed until the suite is freed */
    void *arg;        /* passed to the callbacks; must outlive the run */
    int (*open)(void *arg, craft_snapshot_store_t **out);   /* fresh */
    int (*reopen)(void *arg, craft_snapshot_store_t **out); /* same storage;
                                                   NULL if not persistent */
    void (*destroy)(void *arg);
    bool latest_only; /* inmem keeps only the last snapshot closed */
    bool discards;    /* discard store: nothing is ever listed or opened */
    /* How many snapshots the store keeps (the file store's `retain`);
     * 0 = unknown or unlimited: the suite then only checks that what is
     * kept is the newest. Ignored when latest_only or discards is set. */
    int retain;
} craft_conformance_snapshot_factory_t;

/* Returns a suite of the checks for the store `f` describes (`*f` is
 * copied). At most 8 suites per process. NULL when out of slots or memory. */
Suite *craft_conformance_snapshot_store_suite(
    const craft_conformance_snapshot_factory_t *f);

#endif
