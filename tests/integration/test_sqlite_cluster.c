/* Integration: a 3-node cluster on sqlite stores survives a full stop and
 * restart, replaying committed entries from the persisted commit index
 * before any leader exists (hashicorp #613). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../testutil.h"
#include "cluster.h"
#include "craft/sqlite.h"

static int sqlite_open(const char *dir, size_t i, craft_log_store_t **log,
                       craft_stable_store_t **stable)
{
    char path[512];
    snprintf(path, sizeof path, "%s/node%zu.db", dir, i);
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    /* Durability is not what this test is about: keep it quick. */
    o.durability = CRAFT_SQLITE_DURABILITY_NORMAL;
    return craft_sqlite_open(path, &o, log, stable);
}

typedef struct {
    craft_t *r;
    uint64_t index;
} applied_arg_t;

static bool applied_reached(void *arg)
{
    applied_arg_t *a = arg;
    return craft_applied_index(a->r) >= a->index;
}

START_TEST(test_stop_all_restart_all)
{
    tc_cluster_t *c = tc_new_stores(3, 3, NULL, sqlite_open);
    ck_assert_uint_eq(tc_apply_n(c, "durable", 200), 200);
    ck_assert(tc_wait_converged(c, 200, TC_WAIT_MS));
    /* A last round so every follower persisted a recent commit index. */
    ck_assert_uint_eq(tc_apply_n(c, "tail", 5), 5);
    ck_assert(tc_wait_converged(c, 205, TC_WAIT_MS));
    for (size_t i = 0; i < 3; i++) {
        tc_stop(c, i);
    }
    for (size_t i = 0; i < 3; i++) {
        tc_isolate(c, i);
        tc_reopen_stores(c, i);
    }
    for (size_t i = 0; i < 3; i++) {
        uint64_t ci = 0;
        ck_assert(c->nodes[i].log->get_commit_index != NULL);
        ck_assert_int_eq(c->nodes[i].log->get_commit_index(c->nodes[i].log->ctx, &ci), 0);
        ck_assert_uint_gt(ci, 150);
        tc_start(c, i);
        /* Replayed without a leader: the network is cut. */
        applied_arg_t a = {c->nodes[i].r, ci};
        ck_assert(tu_wait_for(applied_reached, &a, TC_WAIT_MS));
        ck_assert_int_ne(craft_state(c->nodes[i].r), CRAFT_LEADER);
        ck_assert(tc_fsm_has(c, i, "durable-0"));
        ck_assert(tc_fsm_has(c, i, "durable-150"));
    }
    ck_assert(tc_fsm_prefix_equal(c, 0, 1));
    ck_assert(tc_fsm_prefix_equal(c, 0, 2));
    tc_heal(c);
    ck_assert_uint_eq(tc_apply_n(c, "again", 20), 20);
    ck_assert(tc_wait_converged(c, 225, TC_WAIT_MS));
    for (size_t i = 0; i < 3; i++) {
        ck_assert(tc_fsm_has(c, i, "tail-4"));
        ck_assert(tc_fsm_has(c, i, "again-19"));
    }
    tc_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sqlite_cluster");
    TCase *tc = tcase_create("sqlite_cluster");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_stop_all_restart_all);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
