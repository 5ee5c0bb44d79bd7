/* The snapshot store conformance suite against the in-memory and discard
 * stores. */
#include <stdlib.h>

#include "craft/inmem.h"
#include "snapshot_conformance.h"

static int inmem_open(void *arg, craft_snapshot_store_t **out)
{
    (void)arg;
    return craft_inmem_snapshot_store_new(out);
}

static int discard_open(void *arg, craft_snapshot_store_t **out)
{
    (void)arg;
    return craft_discard_snapshot_store_new(out);
}

/* Each store lives in its own memory: closing it released everything. */
static void nothing_to_destroy(void *arg)
{
    (void)arg;
}

int main(void)
{
    const craft_conformance_snapshot_factory_t inmem = {
        .name = "inmem_snapshot_store",
        .open = inmem_open,
        .destroy = nothing_to_destroy,
        .latest_only = true,
    };
    const craft_conformance_snapshot_factory_t discard = {
        .name = "discard_snapshot_store",
        .open = discard_open,
        .destroy = nothing_to_destroy,
        .discards = true,
    };
    Suite *a = craft_conformance_snapshot_store_suite(&inmem);
    Suite *b = craft_conformance_snapshot_store_suite(&discard);
    SRunner *sr;
    int failed;
    if (a == NULL || b == NULL) {
        return EXIT_FAILURE;
    }
    sr = srunner_create(a);
    srunner_add_suite(sr, b);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
