/* lib/config.c: hashicorp DefaultConfig values and ValidateConfig rules. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"

static void valid_config(craft_config_t *c)
{
    craft_config_default(c);
    c->local_id = "node-1";
}

/* ---- defaults ---- */

START_TEST(test_defaults_match_hashicorp)
{
    craft_config_t c;
    memset(&c, 0xa5, sizeof c); /* every field must be written */
    craft_config_default(&c);
    ck_assert_int_eq(c.protocol_version, 3);
    ck_assert_int_eq(c.heartbeat_timeout_ms, 1000);
    ck_assert_int_eq(c.election_timeout_ms, 1000);
    ck_assert_int_eq(c.commit_timeout_ms, 50);
    ck_assert_int_eq(c.max_append_entries, 64);
    ck_assert(!c.batch_apply_ch);
    ck_assert(c.shutdown_on_remove);
    ck_assert_uint_eq(c.trailing_logs, 10240);
    ck_assert_int_eq(c.snapshot_interval_ms, 120000);
    ck_assert_uint_eq(c.snapshot_threshold, 8192);
    ck_assert_int_eq(c.leader_lease_timeout_ms, 500);
    ck_assert_ptr_null(c.local_id);
    ck_assert(c.notify_leader == NULL);
    ck_assert(c.logger == NULL);
    ck_assert(!c.no_snapshot_restore_on_start);
    ck_assert(!c.prevote_disabled);
    ck_assert_int_eq(c.max_inflight, 2);
    ck_assert(!c.apply_inline);
    ck_assert_int_eq(c.wait_spin_us, 0);
}
END_TEST

START_TEST(test_default_needs_local_id)
{
    craft_config_t c;
    craft_config_default(&c);
    c.log_level = CRAFT_LEVEL_OFF; /* keep stderr quiet */
    const char *why = NULL;
    ck_assert_int_eq(craft_config_validate(&c, &why), CRAFT_EINVAL);
    ck_assert_ptr_nonnull(why);
    ck_assert_ptr_nonnull(strstr(why, "local_id"));

    valid_config(&c);
    why = "sentinel";
    ck_assert_int_eq(craft_config_validate(&c, &why), 0);
    ck_assert_ptr_null(why); /* cleared on success */
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
}
END_TEST

/* ---- each rule ---- */

typedef struct {
    const char *name;
    void (*mutate)(craft_config_t *c);
    const char *reason_has; /* substring expected in the reason */
} rule_t;

static void m_local_id_empty(craft_config_t *c) { c->local_id = ""; }
static void m_local_id_null(craft_config_t *c) { c->local_id = NULL; }
static void m_heartbeat_low(craft_config_t *c) { c->heartbeat_timeout_ms = 4; }
static void m_heartbeat_zero(craft_config_t *c) { c->heartbeat_timeout_ms = 0; }
static void m_election_low(craft_config_t *c) { c->election_timeout_ms = 4; }
static void m_commit_low(craft_config_t *c) { c->commit_timeout_ms = 0; }
static void m_commit_negative(craft_config_t *c) { c->commit_timeout_ms = -1; }
static void m_snapshot_interval_low(craft_config_t *c) { c->snapshot_interval_ms = 4; }
static void m_lease_low(craft_config_t *c) { c->leader_lease_timeout_ms = 4; }
static void m_lease_above_heartbeat(craft_config_t *c) { c->leader_lease_timeout_ms = 1001; }
static void m_election_below_heartbeat(craft_config_t *c) { c->election_timeout_ms = 999; }
static void m_mae_zero(craft_config_t *c) { c->max_append_entries = 0; }
static void m_mae_negative(craft_config_t *c) { c->max_append_entries = -3; }
static void m_mae_1025(craft_config_t *c) { c->max_append_entries = 1025; }
static void m_inflight_zero(craft_config_t *c) { c->max_inflight = 0; }
static void m_inflight_1025(craft_config_t *c) { c->max_inflight = 1025; }
static void m_spin_negative(craft_config_t *c) { c->wait_spin_us = -1; }
static void m_spin_10001(craft_config_t *c) { c->wait_spin_us = 10001; }
static void m_protocol_2(craft_config_t *c) { c->protocol_version = 2; }
static void m_protocol_4(craft_config_t *c) { c->protocol_version = 4; }
static void m_protocol_0(craft_config_t *c) { c->protocol_version = 0; }
static void m_log_level_high(craft_config_t *c) { c->log_level = (craft_level_t)6; }
static void m_log_level_neg(craft_config_t *c) { c->log_level = (craft_level_t)-1; }
static char long_id[300];
static void m_local_id_long(craft_config_t *c)
{
    memset(long_id, 'x', 256);
    long_id[256] = '\0';
    c->local_id = long_id;
}

static const rule_t rules[] = {
    {"empty local_id", m_local_id_empty, "local_id"},
    {"NULL local_id", m_local_id_null, "local_id"},
    {"heartbeat < 5", m_heartbeat_low, "heartbeat_timeout"},
    {"heartbeat 0", m_heartbeat_zero, "heartbeat_timeout"},
    {"election < 5", m_election_low, "election_timeout"},
    {"commit < 1", m_commit_low, "commit_timeout"},
    {"commit negative", m_commit_negative, "commit_timeout"},
    {"snapshot_interval < 5", m_snapshot_interval_low, "snapshot_interval"},
    {"lease < 5", m_lease_low, "leader_lease"},
    {"lease > heartbeat", m_lease_above_heartbeat, "leader_lease"},
    {"election < heartbeat", m_election_below_heartbeat, "election_timeout"},
    {"max_append_entries 0", m_mae_zero, "max_append_entries"},
    {"max_append_entries -3", m_mae_negative, "max_append_entries"},
    {"max_append_entries 1025", m_mae_1025, "max_append_entries"},
    {"max_inflight 0", m_inflight_zero, "max_inflight"},
    {"max_inflight 1025", m_inflight_1025, "max_inflight"},
    {"wait_spin_us -1", m_spin_negative, "wait_spin_us"},
    {"wait_spin_us 10001", m_spin_10001, "wait_spin_us"},
    {"protocol 2", m_protocol_2, "protocol_version"},
    {"protocol 4", m_protocol_4, "protocol_version"},
    {"protocol 0", m_protocol_0, "protocol_version"},
    {"log_level 6", m_log_level_high, "log_level"},
    {"log_level -1", m_log_level_neg, "log_level"},
    {"local_id 256 bytes", m_local_id_long, "local_id"},
};

START_TEST(test_rule)
{
    const rule_t *r = &rules[_i];
    craft_config_t c;
    valid_config(&c);
    c.log_level = CRAFT_LEVEL_OFF;
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
    r->mutate(&c);
    const char *why = NULL;
    ck_assert_msg(craft_config_validate(&c, &why) == CRAFT_EINVAL, "%s: accepted", r->name);
    ck_assert_msg(why != NULL, "%s: no reason", r->name);
    ck_assert_msg(strstr(why, r->reason_has) != NULL, "%s: reason \"%s\" lacks \"%s\"",
                  r->name, why, r->reason_has);
    ck_assert_int_eq(craft_config_validate(&c, NULL), CRAFT_EINVAL);
}
END_TEST

/* Values right at each limit are accepted. */
START_TEST(test_limits_accepted)
{
    craft_config_t c;
    valid_config(&c);
    c.heartbeat_timeout_ms = 5;
    c.election_timeout_ms = 5;
    c.leader_lease_timeout_ms = 5;
    c.commit_timeout_ms = 1;
    c.snapshot_interval_ms = 5;
    c.max_append_entries = 1;
    c.max_inflight = 1;
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
    c.max_append_entries = 1024;
    c.max_inflight = 1024;
    c.wait_spin_us = 10000;
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
    /* lease == heartbeat and election == heartbeat are allowed. */
    valid_config(&c);
    c.leader_lease_timeout_ms = c.heartbeat_timeout_ms;
    c.election_timeout_ms = c.heartbeat_timeout_ms;
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
    c.election_timeout_ms = c.heartbeat_timeout_ms + 1;
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
    /* A 255-byte local_id is the longest accepted. */
    static char id255[256];
    memset(id255, 'y', 255);
    id255[255] = '\0';
    c.local_id = id255;
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
}
END_TEST

START_TEST(test_null_config)
{
    const char *why = NULL;
    ck_assert_int_eq(craft_config_validate(NULL, &why), CRAFT_EINVAL);
    ck_assert_ptr_nonnull(why);
    ck_assert_int_eq(craft_config_validate(NULL, NULL), CRAFT_EINVAL);
}
END_TEST

/* ---- logger ---- */

typedef struct {
    int calls;
    craft_level_t level;
    char component[64];
    char message[1024];
} captured_t;

static void capture(void *ctx, craft_level_t level, const char *component, const char *message)
{
    captured_t *cap = ctx;
    cap->calls++;
    cap->level = level;
    snprintf(cap->component, sizeof cap->component, "%s", component);
    snprintf(cap->message, sizeof cap->message, "%s", message);
}

START_TEST(test_logger_receives_reason)
{
    captured_t cap = {0};
    craft_config_t c;
    valid_config(&c);
    c.logger = capture;
    c.logger_ctx = &cap;
    ck_assert_int_eq(craft_config_validate(&c, NULL), 0);
    ck_assert_int_eq(cap.calls, 0); /* nothing logged for a valid config */

    c.max_append_entries = 0;
    const char *why = NULL;
    ck_assert_int_eq(craft_config_validate(&c, &why), CRAFT_EINVAL);
    ck_assert_int_eq(cap.calls, 1);
    ck_assert_int_eq(cap.level, CRAFT_LEVEL_ERROR);
    ck_assert_ptr_nonnull(why);
    ck_assert_msg(strstr(cap.message, why) != NULL, "logged \"%s\" lacks \"%s\"",
                  cap.message, why);

    /* Also logged when the caller does not ask for the reason. */
    c.max_append_entries = 64;
    c.protocol_version = 2;
    ck_assert_int_eq(craft_config_validate(&c, NULL), CRAFT_EINVAL);
    ck_assert_int_eq(cap.calls, 2);
    ck_assert_ptr_nonnull(strstr(cap.message, "protocol_version"));

    /* log_level OFF silences it. */
    c.log_level = CRAFT_LEVEL_OFF;
    ck_assert_int_eq(craft_config_validate(&c, NULL), CRAFT_EINVAL);
    ck_assert_int_eq(cap.calls, 2);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("default");
    tcase_add_test(tc, test_defaults_match_hashicorp);
    tcase_add_test(tc, test_default_needs_local_id);
    suite_add_tcase(s, tc);

    tc = tcase_create("validate");
    tcase_add_loop_test(tc, test_rule, 0, (int)(sizeof rules / sizeof rules[0]));
    tcase_add_test(tc, test_limits_accepted);
    tcase_add_test(tc, test_null_config);
    tcase_add_test(tc, test_logger_receives_reason);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
