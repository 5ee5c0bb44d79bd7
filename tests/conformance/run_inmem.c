/*
 * Runs the LogStore and StableStore conformance suites on the in-memory
 * stores (craft_inmem_store_new).
 *
 * Two factories:
 *  - "inmem": the stores as shipped; not persistent (reopen == NULL).
 *  - "inmem-retained": the same stores behind a vtable whose close keeps the
 *    data, so reopen hands the same storage back. It stands in for a
 *    persistent store and keeps the persistence checks of the suites
 *    themselves exercised in this tree.
 */
#include <stdlib.h>

#include "conformance.h"
#include "craft/inmem.h"

static int inmem_open(void *arg, craft_log_store_t **log,
                      craft_stable_store_t **stable)
{
    (void)arg;
    return craft_inmem_store_new(log, stable);
}

/* ---- retained: close is deferred to destroy ---- */

typedef struct retained {
    craft_log_store_t *real_log; /* owned; closed by retained_destroy */
    craft_stable_store_t *real_stable;
    craft_log_store_t log;       /* handed out: real_log's vtable, close = keep */
    craft_stable_store_t stable;
} retained_t;

static void keep(void *ctx)
{
    (void)ctx; /* the data stays for the next reopen */
}

static int retained_reopen(void *arg, craft_log_store_t **log,
                           craft_stable_store_t **stable)
{
    retained_t *r = arg;
    if (r->real_log == NULL) {
        return CRAFT_ENOTFOUND;
    }
    r->log = *r->real_log;
    r->log.close = keep;
    r->stable = *r->real_stable;
    r->stable.close = keep;
    *log = &r->log;
    *stable = &r->stable;
    return 0;
}

static void retained_destroy(void *arg)
{
    retained_t *r = arg;
    if (r->real_log != NULL) {
        r->real_log->close(r->real_log->ctx);
        r->real_stable->close(r->real_stable->ctx);
    }
    r->real_log = NULL;
    r->real_stable = NULL;
}

static int retained_open(void *arg, craft_log_store_t **log,
                         craft_stable_store_t **stable)
{
    retained_t *r = arg;
    retained_destroy(r);
    int rv = craft_inmem_store_new(&r->real_log, &r->real_stable);
    if (rv != 0) {
        return rv;
    }
    return retained_reopen(r, log, stable);
}

static int run(const craft_conformance_store_factory_t *f)
{
    /* Built and run one factory at a time: the suites remember the factory
     * they were built with until the next build. */
    SRunner *sr = srunner_create(craft_conformance_log_store_suite(f));
    srunner_add_suite(sr, craft_conformance_stable_store_suite(f));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

int main(void)
{
    static retained_t retained;
    const craft_conformance_store_factory_t plain = {
        .name = "inmem", .arg = NULL, .open = inmem_open};
    const craft_conformance_store_factory_t kept = {.name = "inmem-retained",
                                                    .arg = &retained,
                                                    .open = retained_open,
                                                    .reopen = retained_reopen,
                                                    .destroy = retained_destroy};
    int failed = run(&plain);
    failed += run(&kept);
    return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
