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
