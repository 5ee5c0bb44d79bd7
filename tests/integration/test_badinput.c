/* Bad input: every misuse gets a clear error, nothing crashes. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../testutil.h"
#include "cluster.h"

static void *noop_apply(void *ctx, const craft_log_t *log)
{
    (void)ctx;
    (void)log;
    return NULL;
}

static void silent(void *ctx, craft_level_t level, const char *component, const char *msg)
{
    (void)ctx;
    (void)level;
    (void)component;
    (void)msg;
}

START_TEST(test_invalid_config)
{
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    craft_transport_t *trans;
    ck_assert_int_eq(craft_inmem_store_new(&log, &stable), 0);
    ck_assert_int_eq(craft_inmem_transport_new("a", &trans), 0);
    craft_fsm_t fsm = {.apply = noop_apply};
    craft_config_t conf;
    craft_config_default(&conf);
    conf.logger = silent;
    craft_t *r = (craft_t *)0x1;
    /* no local id */
    ck_assert_int_eq(craft_new(&r, &conf, &fsm, log, stable, NULL, trans), CRAFT_EINVAL);
    ck_assert_ptr_null(r);
    conf.local_id = "a";
    conf.leader_lease_timeout_ms = conf.heartbeat_timeout_ms + 1;
    ck_assert_int_eq(craft_new(&r, &conf, &fsm, log, stable, NULL, trans), CRAFT_EINVAL);
    craft_config_default(&conf);
    conf.logger = silent;
    conf.local_id = "a";
    /* NULL parts */
    ck_assert_int_eq(craft_new(&r, &conf, NULL, log, stable, NULL, trans), CRAFT_EINVAL);
    ck_assert_int_eq(craft_new(&r, &conf, &fsm, NULL, stable, NULL, trans), CRAFT_EINVAL);
    ck_assert_int_eq(craft_new(&r, &conf, &fsm, log, NULL, NULL, trans), CRAFT_EINVAL);
    ck_assert_int_eq(craft_new(&r, &conf, &fsm, log, stable, NULL, NULL), CRAFT_EINVAL);
    ck_assert_int_eq(craft_new(NULL, &conf, &fsm, log, stable, NULL, trans), CRAFT_EINVAL);
    ck_assert_int_eq(craft_new(&r, NULL, &fsm, log, stable, NULL, trans), CRAFT_EINVAL);
    craft_fsm_t empty = {0};
    ck_assert_int_eq(craft_new(&r, &conf, &empty, log, stable, NULL, trans), CRAFT_EINVAL);
    /* Bootstrap with a bad configuration. */
    craft_server_t dup[2] = {{CRAFT_VOTER, "a", "x"}, {CRAFT_VOTER, "a", "y"}};
    craft_configuration_t cfg = {2, dup};
    ck_assert_int_eq(craft_bootstrap_cluster(&conf, log, stable, NULL, trans, &cfg), CRAFT_EINVAL);
    craft_server_t nv[1] = {{CRAFT_NONVOTER, "a", "x"}};
    cfg = (craft_configuration_t){1, nv};
    ck_assert_int_eq(craft_bootstrap_cluster(&conf, log, stable, NULL, trans, &cfg), CRAFT_EINVAL);
    ck_assert_int_eq(craft_bootstrap_cluster(&conf, log, stable, NULL, trans, NULL), CRAFT_EINVAL);
    ck_assert_int_eq(craft_bootstrap_cluster(NULL, log, stable, NULL, trans, &cfg), CRAFT_EINVAL);
    trans->close(trans->ctx);
    log->close(log->ctx);
    stable->close(stable->ctx);
}
END_TEST

START_TEST(test_bootstrap_existing_state)
{
    tc_cluster_t *c = tc_new(1, 1);
    craft_server_t s[1] = {{CRAFT_VOTER, "node0", "addr0"}};
    craft_configuration_t cfg = {1, s};
    craft_config_t conf = c->conf;
    conf.local_id = "node0";
    ck_assert_int_eq(craft_bootstrap_cluster(&conf, c->nodes[0].log, c->nodes[0].stable, NULL,
                                             c->nodes[0].trans, &cfg),
                     CRAFT_ECANTBOOTSTRAP);
    tc_free(c);
}
END_TEST

typedef struct {
    tc_cluster_t *c;
    size_t f;
} follower_arg_t;

/* Node f reports the current leader's id and address. */
static bool knows_current_leader(void *arg)
{
    follower_arg_t *a = arg;
    int l = tc_leader(a->c, 0);
    if (l < 0) {
        return false;
    }
    char *id = NULL, *addr = NULL;
    int rv = craft_leader(a->c->nodes[a->f].r, &id, &addr);
    bool ok = rv == 0 && id != NULL && addr != NULL && strcmp(id, a->c->nodes[l].id) == 0 &&
              strcmp(addr, a->c->nodes[l].addr) == 0;
    free(id);
    free(addr);
    return ok;
}

static bool not_leader(void *arg)
{
    return craft_state((craft_t *)arg) != CRAFT_LEADER;
}

START_TEST(test_apply_on_follower)
{
    tc_cluster_t *c = tc_new(3, 3);
    int l = tc_leader(c, TC_WAIT_MS);
    ck_assert_int_ge(l, 0);
    ck_assert_uint_eq(tc_apply_n(c, "a", 1), 1);
    l = tc_leader(c, TC_WAIT_MS);
    size_t f = (size_t)(l + 1) % 3;
    /* Under load an election may make f the leader at any moment: cut it
     * off so that, once it is not leading, it cannot become leader. */
    tc_isolate(c, f);
    ck_assert(tu_wait_for(not_leader, c->nodes[f].r, TC_WAIT_MS));
    craft_future_t *fut = craft_apply(c->nodes[f].r, "x", 1, 100);
    ck_assert_int_eq(craft_future_wait(fut), CRAFT_ENOTLEADER);
    craft_future_free(fut);
    fut = craft_barrier(c->nodes[f].r, 100);
    ck_assert_int_eq(craft_future_wait(fut), CRAFT_ENOTLEADER);
    craft_future_free(fut);
    fut = craft_verify_leader(c->nodes[f].r);
    ck_assert_int_eq(craft_future_wait(fut), CRAFT_ENOTLEADER);
    craft_future_free(fut);
    /* The leader's address is available to redirect the client (once the
     * follower has heard from it; leadership may move meanwhile, so wait
     * until it names whichever node leads now). */
    tc_heal(c);
    follower_arg_t a = {c, f};
    ck_assert(tu_wait_for(knows_current_leader, &a, TC_WAIT_MS));
    tc_free(c);
}
END_TEST

START_TEST(test_apply_after_shutdown)
{
    tc_cluster_t *c = tc_new(1, 1);
    int l = tc_leader(c, TC_WAIT_MS);
    ck_assert_int_eq(l, 0);
    craft_future_t *s = craft_shutdown(c->nodes[0].r);
    ck_assert_int_eq(craft_future_wait(s), 0);
    craft_future_free(s);
    ck_assert_int_eq(craft_state(c->nodes[0].r), CRAFT_SHUTDOWN);
    craft_future_t *f = craft_apply(c->nodes[0].r, "x", 1, 0);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ESHUTDOWN);
    craft_future_free(f);
    f = craft_barrier(c->nodes[0].r, 0);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ESHUTDOWN);
    craft_future_free(f);
    /* A second shutdown completes too. */
    s = craft_shutdown(c->nodes[0].r);
    ck_assert_int_eq(craft_future_wait(s), 0);
    craft_future_free(s);
    tc_free(c);
}
END_TEST

START_TEST(test_null_arguments)
{
    craft_future_t *f = craft_apply(NULL, "x", 1, 0);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_EINVAL);
    craft_future_free(f);
    f = craft_barrier(NULL, 0);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_EINVAL);
    craft_future_free(f);
    f = craft_verify_leader(NULL);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_EINVAL);
    craft_future_free(f);
    f = craft_get_configuration(NULL);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_EINVAL);
    craft_future_free(f);
    ck_assert_int_eq(craft_future_wait(NULL), CRAFT_EINVAL);
    ck_assert_int_eq(craft_state(NULL), CRAFT_SHUTDOWN);
    ck_assert_int_eq(craft_leader(NULL, NULL, NULL), CRAFT_EINVAL);
    craft_free(NULL);
    craft_future_free(NULL);
    tc_cluster_t *c = tc_new(1, 1);
    ck_assert_int_ge(tc_leader(c, TC_WAIT_MS), 0);
    f = craft_apply(c->nodes[0].r, NULL, 5, 0);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_EINVAL);
    craft_future_free(f);
    /* An empty command is fine. */
    f = craft_apply(c->nodes[0].r, NULL, 0, 0);
    ck_assert_int_eq(craft_future_wait(f), 0);
    craft_future_free(f);
    tc_free(c);
}
END_TEST

START_TEST(test_future_freed_before_completion)
{
    tc_cluster_t *c = tc_new(3, 3);
    int l = tc_leader(c, TC_WAIT_MS);
    ck_assert_int_ge(l, 0);
    for (int i = 0; i < 100; i++) {
        craft_future_free(craft_apply(c->nodes[l].r, "fire-and-forget", 15, 0));
    }
    craft_future_t *b = craft_barrier(c->nodes[l].r, 0);
    int rv = craft_future_wait(b);
    ck_assert(rv == 0 || rv == CRAFT_ELEADERSHIPLOST || rv == CRAFT_ENOTLEADER);
    craft_future_free(b);
    tc_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("badinput");
    TCase *tc = tcase_create("badinput");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_invalid_config);
    tcase_add_test(tc, test_bootstrap_existing_state);
    tcase_add_test(tc, test_apply_on_follower);
    tcase_add_test(tc, test_apply_after_shutdown);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_future_freed_before_completion);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
