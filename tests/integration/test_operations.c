/* Integration: leadership transfer, read_index, observers, offline tools,
 * hot reload. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../testutil.h"
#include "cluster.h"

/* ---- leadership transfer ---- */

static bool not_leader(void *arg)
{
    return craft_state((craft_t *)arg) != CRAFT_LEADER;
}

/* Transfers leadership to `target_id`, or (NULL) the best follower, or
 * (next_follower) the node after the leader: picked at each attempt, since
 * leadership may move between attempts and a fixed node may lead by then. */
static int transfer_term(tc_cluster_t *c, const char *target_id, bool next_follower,
                         int *old_leader, uint64_t *old_term)
{
    int rv = CRAFT_ENOTLEADER;
    for (int attempt = 0; attempt < 10; attempt++) {
        int l = tc_leader(c, TC_WAIT_MS);
        ck_assert_int_ge(l, 0);
        *old_leader = l;
        *old_term = craft_current_term(c->nodes[l].r);
        if (next_follower) {
            target_id = c->nodes[(size_t)(l + 1) % c->n].id;
        }
        craft_future_t *f = target_id ? craft_leadership_transfer_to(c->nodes[l].r, target_id, NULL)
                                      : craft_leadership_transfer(c->nodes[l].r);
        rv = craft_future_wait(f);
        craft_future_free(f);
        if (rv != CRAFT_ENOTLEADER && rv != CRAFT_ELEADERSHIPLOST && rv != CRAFT_ETIMEDOUT) {
            break;
        }
        tu_sleep_ms(50);
    }
    return rv;
}

static int transfer(tc_cluster_t *c, const char *target_id, int *old_leader)
{
    uint64_t term;
    return transfer_term(c, target_id, false, old_leader, &term);
}

/* After a successful transfer away from `old` (leading in `term` or later):
 * another node leads, or (an election under load intervened after the
 * target took over) `old` leads again but in a term past the target's. A
 * transfer that let `old` win the very next election fails this. */
static void check_moved(tc_cluster_t *c, int old, uint64_t term)
{
    int l = tc_leader(c, TC_WAIT_MS);
    ck_assert_int_ge(l, 0);
    if (l == old) {
        ck_assert_uint_ge(craft_current_term(c->nodes[l].r), term + 2);
    }
}

START_TEST(test_transfer_best_and_named)
{
    tc_cluster_t *c = tc_new(3, 3);
    ck_assert_uint_eq(tc_apply_n(c, "a", 50), 50);
    int old;
    uint64_t term;
    ck_assert_int_eq(transfer_term(c, NULL, false, &old, &term), 0);
    check_moved(c, old, term);
    ck_assert_uint_eq(tc_apply_n(c, "b", 50), 50);
    /* Named target: a follower (the node after the leader). */
    ck_assert_int_eq(transfer_term(c, NULL, true, &old, &term), 0);
    /* The target campaigned; unless a fresh election intervened it leads. */
    check_moved(c, old, term);
    ck_assert_uint_eq(tc_apply_n(c, "c", 50), 50);
    ck_assert(tc_wait_converged(c, 150, TC_WAIT_MS));
    tc_free(c);
}
END_TEST

START_TEST(test_transfer_errors)
{
    tc_cluster_t *c = tc_new(4, 3); /* node3 is a nonvoter */
    ck_assert_uint_eq(tc_apply_n(c, "a", 5), 5);
    int old;
    ck_assert_int_eq(transfer(c, "node3", &old), CRAFT_ENOTVOTER);
    ck_assert_int_eq(transfer(c, "nobody", &old), CRAFT_ENOTFOUND);
    int l = tc_leader(c, TC_WAIT_MS);
    craft_future_t *f = craft_leadership_transfer_to(c->nodes[l].r, c->nodes[l].id, NULL);
    int rv = craft_future_wait(f);
    ck_assert(rv == CRAFT_EINVAL || rv == CRAFT_ENOTLEADER);
    craft_future_free(f);
    size_t fl = (size_t)(l + 1) % 3;
    /* Cut off once not leading: an election cannot make it leader now. */
    tc_isolate(c, fl);
    ck_assert(tu_wait_for(not_leader, c->nodes[fl].r, TC_WAIT_MS));
    f = craft_leadership_transfer(c->nodes[fl].r);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ENOTLEADER);
    craft_future_free(f);
    tc_free(c);
}
END_TEST

/* Applies during a transfer fail with ETRANSFER (or succeed before it). */
START_TEST(test_transfer_with_applies_running)
{
    tc_cluster_t *c = tc_new(3, 3);
    ck_assert_uint_eq(tc_apply_n(c, "a", 10), 10);
    int l = tc_leader(c, TC_WAIT_MS);
    craft_future_t *fs[200];
    craft_future_t *t = NULL;
    for (int i = 0; i < 200; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "during-%d", i);
        fs[i] = craft_apply(c->nodes[l].r, buf, strlen(buf), 0);
        if (i == 100) {
            t = craft_leadership_transfer(c->nodes[l].r);
        }
    }
    int rv = craft_future_wait(t);
    craft_future_free(t);
    bool saw_transfer = false, all_later_failed = true;
    for (int i = 0; i < 200; i++) {
        int r = craft_future_wait(fs[i]);
        ck_assert(r == 0 || r == CRAFT_ETRANSFER || r == CRAFT_ELEADERSHIPLOST ||
                  r == CRAFT_ENOTLEADER);
        saw_transfer |= r == CRAFT_ETRANSFER;
        all_later_failed &= i <= 100 || r != 0;
        craft_future_free(fs[i]);
    }
    if (rv == 0) {
        /* The applies queued behind the transfer met it in progress, or (this
         * thread preempted long enough for the transfer to finish first)
         * found the node no longer leading: none of them can succeed. */
        ck_assert(saw_transfer || all_later_failed);
    }
    ck_assert_int_ge(tc_leader(c, TC_WAIT_MS), 0);
    ck_assert_uint_eq(tc_apply_n(c, "after", 10), 10);
    tc_free(c);
}
END_TEST

/* ---- read_index ---- */

static bool applied_to(void *arg)
{
    void **a = arg;
    return craft_applied_index((craft_t *)a[0]) >= (uint64_t)(uintptr_t)a[1];
}

START_TEST(test_read_index_healthy)
{
    tc_cluster_t *c = tc_new(3, 3);
    int l = -1;
    craft_future_t *w = tc_apply_one(c, "written", &l);
    uint64_t windex = craft_future_index(w);
    craft_future_free(w);
    int rv = -1;
    uint64_t ri = 0;
    for (int attempt = 0; attempt < 10 && rv != 0; attempt++) {
        l = tc_leader(c, TC_WAIT_MS);
        craft_future_t *f = craft_read_index(c->nodes[l].r);
        rv = craft_future_wait(f);
        ri = craft_future_index(f);
        craft_future_free(f);
    }
    ck_assert_int_eq(rv, 0);
    /* Linearizable: the read index covers every acknowledged write. */
    ck_assert_uint_ge(ri, windex);
    void *a[2] = {c->nodes[l].r, (void *)(uintptr_t)ri};
    ck_assert(tu_wait_for(applied_to, a, TC_WAIT_MS));
    /* At the index its write was acknowledged at (not "exactly once":
     * tc_apply_one may apply it twice when retrying after ELEADERSHIPLOST). */
    ck_assert(tc_fsm_at(c, (size_t)l, windex, "written"));
    /* On a follower (cut off once it is not leading, so that an election
     * under load cannot make it the leader meanwhile). */
    size_t f = (size_t)(l + 1) % 3;
    tc_isolate(c, f);
    ck_assert(tu_wait_for(not_leader, c->nodes[f].r, TC_WAIT_MS));
    craft_future_t *ff = craft_read_index(c->nodes[f].r);
    ck_assert_int_eq(craft_future_wait(ff), CRAFT_ENOTLEADER);
    craft_future_free(ff);
    tc_free(c);
}
END_TEST

START_TEST(test_read_index_isolated_from_voters)
{
    tc_cluster_t *c = tc_new(5, 3); /* node3, node4 nonvoters */
    ck_assert_uint_eq(tc_apply_n(c, "a", 5), 5);
    int l = tc_leader(c, TC_WAIT_MS);
    ck_assert_int_lt(l, 3);
    /* The leader still reaches both nonvoters, but no other voter. */
    tc_partition(c, (1u << l) | (1u << 3) | (1u << 4));
    craft_future_t *f = craft_read_index(c->nodes[l].r);
    int rv = craft_future_wait(f);
    ck_assert(rv == CRAFT_ELEADERSHIPLOST || rv == CRAFT_ENOTLEADER);
    craft_future_free(f);
    tc_free(c);
}
END_TEST

/* ---- observers ---- */

typedef struct {
    pthread_mutex_t mu;
    craft_observation_kind_t kinds[4096];
    craft_state_t states[4096];
    char leaders[4096][32];
    size_t n;
    int delay_ms;
} recorder_t;

static void record(void *arg, const craft_observation_t *o)
{
    recorder_t *rec = arg;
    if (rec->delay_ms > 0) {
        tu_sleep_ms(rec->delay_ms);
    }
    pthread_mutex_lock(&rec->mu);
    if (rec->n < 4096) {
        rec->kinds[rec->n] = o->kind;
        rec->states[rec->n] = o->state;
        snprintf(rec->leaders[rec->n], 32, "%s", o->leader_id ? o->leader_id : "");
        rec->n++;
    }
    pthread_mutex_unlock(&rec->mu);
}

static bool only_state_and_leader(void *arg, const craft_observation_t *o)
{
    (void)arg;
    return o->kind == CRAFT_OBSERVE_STATE || o->kind == CRAFT_OBSERVE_LEADER;
}

static bool recorded_leader(void *arg)
{
    recorder_t *rec = arg;
    pthread_mutex_lock(&rec->mu);
    bool found = false;
    for (size_t i = 0; i < rec->n; i++) {
        found |= rec->kinds[i] == CRAFT_OBSERVE_STATE && rec->states[i] == CRAFT_LEADER;
    }
    pthread_mutex_unlock(&rec->mu);
    return found;
}

typedef struct {
    recorder_t *rec;
    craft_observer_t *ob;
} obs_count_t;

static bool observed_all(void *arg)
{
    obs_count_t *a = arg;
    pthread_mutex_lock(&a->rec->mu);
    size_t n = a->rec->n;
    pthread_mutex_unlock(&a->rec->mu);
    return craft_observer_observed(a->ob) == n;
}

START_TEST(test_observers_see_changes_in_order)
{
    tc_cluster_t *c = tc_new(3, 3);
    int l = tc_leader(c, TC_WAIT_MS);
    size_t f = (size_t)(l + 1) % 3;
    recorder_t *rec = calloc(1, sizeof *rec);
    pthread_mutex_init(&rec->mu, NULL);
    craft_observer_t *ob;
    ck_assert_int_eq(craft_register_observer(c->nodes[f].r, only_state_and_leader, record, rec,
                                             true, &ob),
                     0);
    /* Kill the leader: the observed follower sees the leader go away, its
     * own state changes and a new leader, in that order. */
    tc_stop(c, (size_t)l);
    ck_assert_int_ge(tc_leader(c, TC_WAIT_MS), 0);
    int64_t waited = 0;
    for (;;) {
        pthread_mutex_lock(&rec->mu);
        bool got = false;
        for (size_t i = 0; i < rec->n; i++) {
            /* The old leader may be observed too (learnt after registration
             * under load): wait for a different one. */
            got |= rec->kinds[i] == CRAFT_OBSERVE_LEADER && rec->leaders[i][0] != '\0' &&
                   strcmp(rec->leaders[i], c->nodes[l].id) != 0;
        }
        pthread_mutex_unlock(&rec->mu);
        if (got || waited > TC_WAIT_MS) {
            break;
        }
        tu_sleep_ms(10);
        waited += 10;
    }
    /* The deliverer counts an observation after the callback returned:
     * wait until the count caught up with what was recorded (more may
     * arrive if elections go on under load). */
    obs_count_t oc = {rec, ob};
    ck_assert(tu_wait_for(observed_all, &oc, TC_WAIT_MS));
    ck_assert_uint_eq(craft_observer_dropped(ob), 0);
    pthread_mutex_lock(&rec->mu);
    ck_assert_uint_ge(rec->n, 1);
    /* In order: possibly the old leader (learnt after registration under
     * load), possibly "no leader" (if this follower's own timer fired before
     * it voted), then the new leader. (What follows it is not constrained:
     * more elections may happen under load.) */
    size_t k = 0;
    while (k < rec->n && rec->kinds[k] == CRAFT_OBSERVE_LEADER &&
           strcmp(rec->leaders[k], c->nodes[l].id) == 0) {
        k++;
    }
    for (; k < rec->n; k++) {
        if (rec->kinds[k] == CRAFT_OBSERVE_LEADER && rec->leaders[k][0] != '\0') {
            break;
        }
        /* Only "no leader" and state changes in between. */
        ck_assert(rec->kinds[k] == CRAFT_OBSERVE_STATE ||
                  (rec->kinds[k] == CRAFT_OBSERVE_LEADER && rec->leaders[k][0] == '\0'));
    }
    ck_assert_uint_lt(k, rec->n);
    ck_assert_str_ne(rec->leaders[k], c->nodes[l].id);
    pthread_mutex_unlock(&rec->mu);
    craft_deregister_observer(c->nodes[f].r, ob);
    tc_free(c);
    pthread_mutex_destroy(&rec->mu);
    free(rec);
}
END_TEST

START_TEST(test_observer_blocking_and_deregister)
{
    tc_cluster_t *c = tc_new(3, 3);
    recorder_t *slow = calloc(1, sizeof *slow), *fast = calloc(1, sizeof *fast);
    pthread_mutex_init(&slow->mu, NULL);
    pthread_mutex_init(&fast->mu, NULL);
    slow->delay_ms = 2;
    craft_observer_t *obs[3], *ob_fast;
    /* Blocking observers on every node: heartbeats and votes flow through. */
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(craft_register_observer(c->nodes[i].r, NULL, record, slow, true, &obs[i]),
                         0);
    }
    ck_assert_int_eq(craft_register_observer(c->nodes[0].r, NULL, record, fast, false, &ob_fast), 0);
    /* Progress despite slow blocking observers. */
    ck_assert_uint_eq(tc_apply_n(c, "obs", 100), 100);
    int l = tc_leader(c, TC_WAIT_MS);
    tc_stop(c, (size_t)l);
    obs[l] = NULL;
    ck_assert_int_ge(tc_leader(c, TC_WAIT_MS), 0);
    ck_assert(tu_wait_for(recorded_leader, slow, TC_WAIT_MS));
    /* Deregister while events flow. */
    for (size_t i = 0; i < 3; i++) {
        if (obs[i] != NULL) {
            craft_deregister_observer(c->nodes[i].r, obs[i]);
        }
    }
    if ((size_t)l != 0) {
        craft_deregister_observer(c->nodes[0].r, ob_fast);
    }
    ck_assert_uint_eq(tc_apply_n(c, "after", 10), 10);
    tc_free(c); /* frees what is still registered */
    pthread_mutex_destroy(&slow->mu);
    pthread_mutex_destroy(&fast->mu);
    free(slow);
    free(fast);
}
END_TEST

/* ---- offline tools ---- */

START_TEST(test_recover_single_survivor)
{
    tc_cluster_t *c = tc_new(3, 3);
    ck_assert_uint_eq(tc_apply_n(c, "data", 30), 30);
    ck_assert(tc_wait_converged(c, 30, TC_WAIT_MS));
    /* Lose the other two for good. */
    for (size_t i = 0; i < 3; i++) {
        tc_stop(c, i);
    }
    tc_isolate(c, 0);
    bool exists = false;
    ck_assert_int_eq(craft_has_existing_state(c->nodes[0].log, c->nodes[0].stable, NULL, &exists),
                     0);
    ck_assert(exists);
    craft_configuration_t cfg;
    uint64_t idx;
    ck_assert_int_eq(craft_get_configuration_offline(c->nodes[0].log, c->nodes[0].stable, NULL,
                                                     &cfg, &idx),
                     0);
    ck_assert_uint_eq(cfg.n, 3);
    ck_assert_uint_eq(idx, 1);
    craft_configuration_free(&cfg);
    craft_server_t me[1] = {{CRAFT_VOTER, "node0", "addr0"}};
    craft_configuration_t one = {1, me};
    craft_config_t conf = c->conf;
    conf.local_id = "node0";
    ck_assert_int_eq(craft_recover_cluster(&conf, c->nodes[0].log, c->nodes[0].stable, NULL, &one),
                     0);
    ck_assert_int_eq(craft_get_configuration_offline(c->nodes[0].log, c->nodes[0].stable, NULL,
                                                     &cfg, &idx),
                     0);
    ck_assert_uint_eq(cfg.n, 1);
    ck_assert_uint_gt(idx, 30);
    craft_configuration_free(&cfg);
    tc_start(c, 0);
    int64_t waited = 0;
    while (craft_state(c->nodes[0].r) != CRAFT_LEADER && waited < TC_WAIT_MS) {
        tu_sleep_ms(10);
        waited += 10;
    }
    ck_assert_int_eq(craft_state(c->nodes[0].r), CRAFT_LEADER);
    craft_future_t *f = craft_apply(c->nodes[0].r, "after-recovery", 14, 0);
    ck_assert_int_eq(craft_future_wait(f), 0);
    craft_future_free(f);
    /* All the data is still there. */
    ck_assert(tc_fsm_has(c, 0, "data-0"));
    ck_assert(tc_fsm_has(c, 0, "data-29"));
    ck_assert(tc_fsm_has(c, 0, "after-recovery"));
    /* Refused on empty stores. */
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    ck_assert_int_eq(craft_inmem_store_new(&log, &stable), 0);
    ck_assert_int_eq(craft_recover_cluster(&conf, log, stable, NULL, &one), CRAFT_ENOTFOUND);
    ck_assert_int_eq(craft_has_existing_state(log, stable, NULL, &exists), 0);
    ck_assert(!exists);
    log->close(log->ctx);
    stable->close(stable->ctx);
    tc_free(c);
}
END_TEST

/* ---- hot reload ---- */

START_TEST(test_reload_config)
{
    tc_cluster_t *c = tc_new(3, 3);
    int l = tc_leader(c, TC_WAIT_MS);
    craft_reloadable_config_t rc;
    craft_reloadable_config(c->nodes[l].r, &rc);
    ck_assert_int_eq(rc.heartbeat_timeout_ms, c->conf.heartbeat_timeout_ms);
    /* Invalid: election below heartbeat. */
    craft_reloadable_config_t bad = rc;
    bad.election_timeout_ms = rc.heartbeat_timeout_ms - 1;
    ck_assert_int_eq(craft_reload_config(c->nodes[l].r, &bad), CRAFT_EINVAL);
    craft_reloadable_config(c->nodes[l].r, &bad);
    ck_assert_int_eq(bad.election_timeout_ms, rc.election_timeout_ms);
    /* Valid: larger timeouts and snapshot settings on every node. */
    rc.heartbeat_timeout_ms *= 2;
    rc.election_timeout_ms *= 2;
    rc.trailing_logs = 77;
    rc.snapshot_threshold = 99;
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(craft_reload_config(c->nodes[i].r, &rc), 0);
        craft_reloadable_config_t got;
        craft_reloadable_config(c->nodes[i].r, &got);
        ck_assert_int_eq(got.heartbeat_timeout_ms, rc.heartbeat_timeout_ms);
        ck_assert_uint_eq(got.trailing_logs, 77);
        ck_assert_uint_eq(got.snapshot_threshold, 99);
    }
    /* The cluster keeps working and fails over with the new timers. */
    ck_assert_uint_eq(tc_apply_n(c, "r", 20), 20);
    l = tc_leader(c, TC_WAIT_MS);
    tc_stop(c, (size_t)l);
    ck_assert_int_ge(tc_leader(c, TC_WAIT_MS), 0);
    ck_assert_uint_eq(tc_apply_n(c, "s", 20), 20);
    ck_assert_int_eq(craft_reload_config(NULL, &rc), CRAFT_EINVAL);
    tc_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("operations");
    TCase *tc = tcase_create("operations");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_transfer_best_and_named);
    tcase_add_test(tc, test_transfer_errors);
    tcase_add_test(tc, test_transfer_with_applies_running);
    tcase_add_test(tc, test_read_index_healthy);
    tcase_add_test(tc, test_read_index_isolated_from_voters);
    tcase_add_test(tc, test_observers_see_changes_in_order);
    tcase_add_test(tc, test_observer_blocking_and_deregister);
    tcase_add_test(tc, test_recover_single_survivor);
    tcase_add_test(tc, test_reload_config);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
