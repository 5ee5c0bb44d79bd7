/*
 * Conformance suites for LogStore and StableStore implementations.
 *
 * Any store can be run through the same checks: describe how to open, reopen
 * and destroy it with a factory, build the suites and run them with an
 * SRunner (see run_inmem.c for a complete runner).
 *
 * Each test opens fresh stores with f->open in its setup and closes them
 * (then calls f->destroy, when set) in its teardown. Tests that need
 * persistence (reopen) are only added when f->reopen is non-NULL. The
 * commit-tracking checks run when the opened log store offers the extension
 * (both stage_commit_index and get_commit_index set); offering only one of
 * the two is itself a failure.
 *
 * Semantics checked where craft.h leaves room (all as hashicorp's stores):
 *  - store_logs accepts entries not contiguous with the stored ones (gaps);
 *    first/last_index are the smallest/largest stored indexes and get_log of
 *    an index in a gap is CRAFT_ENOTFOUND;
 *  - store_logs of n == 0 entries succeeds; a batch holding an invalid entry
 *    (index 0, len > 0 with data NULL, ext_len > 0 with ext NULL) fails as a
 *    whole and leaves the store unchanged;
 *  - delete_range deletes whatever exists in [min, max] (the range may reach
 *    past either end); min > max is an error or a no-op;
 *  - get_log of index 0 and NULL out-pointers are errors (any negative code);
 *  - get_log returns NULL data/ext for empty ones; StableStore get may return
 *    NULL or a buffer for an empty value;
 *  - the staged commit index is persisted by the next store_logs at the
 *    latest (the suite only reads it after a store_logs);
 *  - get_logs (optional: its checks pass trivially when the store leaves it
 *    NULL, so a runner for a store that offers it should check it is set)
 *    returns exactly the entries its contract in craft.h names, byte-exact,
 *    sets *n = 0 on every error, and writes nothing past out[max_n - 1].
 *
 * Ownership: `f` (and f->arg) are borrowed and must outlive the srunner run.
 * The suites keep `f` in a file-level variable, so one process runs one
 * factory per suite kind at a time: building a second log store suite
 * replaces the factory used by the first.
 */
#ifndef CRAFT_CONFORMANCE_H
#define CRAFT_CONFORMANCE_H

#include <check.h>

#include "craft.h"

typedef struct craft_conformance_store_factory {
    const char *name;
    void *arg;
    /* fresh, empty stores */
    int (*open)(void *arg, craft_log_store_t **log, craft_stable_store_t **stable);
    /* reopen the same storage after both were closed; NULL if not persistent */
    int (*reopen)(void *arg, craft_log_store_t **log, craft_stable_store_t **stable);
    /* remove the underlying storage (after close); may be NULL */
    void (*destroy)(void *arg);
} craft_conformance_store_factory_t;

/* A Check suite named "<f->name> log store" / "<f->name> stable store".
 * Returns NULL on allocation failure. */
Suite *craft_conformance_log_store_suite(const craft_conformance_store_factory_t *f);
Suite *craft_conformance_stable_store_suite(const craft_conformance_store_factory_t *f);

#endif /* CRAFT_CONFORMANCE_H */
