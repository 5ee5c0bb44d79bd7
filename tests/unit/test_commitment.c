/* lib/commitment.c: quorum math and the leader's commit index. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"
#include "lib/commitment.h"

/* ---- configurations from a spec: "a b c ~d" (~ = nonvoter) ---- */

#define MAXS 16

typedef struct {
    craft_configuration_t c;
    craft_server_t srv[MAXS];
    char ids[MAXS][16];
    char addrs[MAXS][32];
} conf_t;

static const craft_configuration_t *conf(conf_t *k, const char *spec)
{
    memset(k, 0, sizeof *k);
    k->c.servers = k->srv;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *tok = strtok_r(buf, " ", &save); tok != NULL;
         tok = strtok_r(NULL, " ", &save)) {
        ck_assert_uint_lt(k->c.n, MAXS);
        size_t i = k->c.n++;
        bool nonvoter = tok[0] == '~';
        snprintf(k->ids[i], sizeof k->ids[i], "%s", tok + (nonvoter ? 1 : 0));
        snprintf(k->addrs[i], sizeof k->addrs[i], "addr-%s", tok + (nonvoter ? 1 : 0));
        k->srv[i].id = k->ids[i];
        k->srv[i].address = k->addrs[i];
        k->srv[i].suffrage = nonvoter ? CRAFT_NONVOTER : CRAFT_VOTER;
    }
    return &k->c;
}

static craft__commitment_t *new_cm(const char *spec, uint64_t commit, uint64_t start)
{
    conf_t k;
    craft__commitment_t *cm = craft__commitment_new(conf(&k, spec), commit, start);
    ck_assert_ptr_nonnull(cm);
    return cm;
}

static bool set_conf(craft__commitment_t *cm, const char *spec)
{
    conf_t k;
    bool adv = true; /* must be overwritten */
    ck_assert_int_eq(craft__commitment_set_configuration(cm, conf(&k, spec), &adv), 0);
    return adv;
}

/* ---- craft__quorum_match_index ---- */

typedef struct {
    size_t n;
    uint64_t m[8];
    uint64_t want;
} qcase_t;

static const qcase_t qcases[] = {
    {1, {0}, 0},
    {1, {5}, 5},
    {2, {5, 3}, 3},
    {2, {0, 9}, 0},
    {2, {4, 4}, 4},
    {3, {1, 2, 3}, 2},
    {3, {3, 1, 2}, 2},
    {3, {9, 0, 0}, 0},
    {3, {7, 0, 7}, 7},
    {4, {1, 2, 3, 4}, 2},
    {4, {4, 3, 2, 1}, 2},
    {4, {4, 4, 4, 0}, 4},
    {4, {5, 0, 5, 0}, 0},
    {5, {1, 2, 3, 4, 5}, 3},
    {5, {5, 1, 4, 2, 3}, 3},
    {5, {10, 10, 10, 0, 0}, 10},
    {5, {10, 0, 10, 0, 0}, 0},
    {6, {1, 2, 3, 4, 5, 6}, 3},
    {6, {6, 6, 6, 0, 0, 0}, 0},
    {6, {6, 0, 6, 6, 0, 6}, 6},
    {7, {1, 2, 3, 4, 5, 6, 7}, 4},
    {7, {7, 6, 5, 4, 3, 2, 1}, 4},
    {7, {9, 9, 9, 9, 0, 0, 0}, 9},
    {7, {0, 9, 0, 9, 0, 9, 0}, 0},
    {7, {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, 1, 1, 1}, UINT64_MAX},
};

START_TEST(test_quorum_vectors)
{
    const qcase_t *q = &qcases[_i];
    uint64_t copy[8];
    memcpy(copy, q->m, sizeof copy);
    ck_assert_msg(craft__quorum_match_index(copy, q->n) == q->want,
                  "case %d (n=%zu): got %llu want %llu", _i, q->n,
                  (unsigned long long)craft__quorum_match_index(copy, q->n),
                  (unsigned long long)q->want);
    /* Sorts a copy: the input is untouched. */
    ck_assert_mem_eq(copy, q->m, sizeof copy);
}
END_TEST

/* Definition check on pseudo-random vectors, n = 1..40 (beyond 32 the
 * implementation takes its heap path): q is stored on a majority and no
 * larger value is. */
START_TEST(test_quorum_definition)
{
    uint64_t seed = 0x12345678u;
    for (size_t n = 1; n <= 40; n++) {
        for (int round = 0; round < 50; round++) {
            uint64_t m[40];
            for (size_t i = 0; i < n; i++) {
                seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                m[i] = (seed >> 33) % 20;
            }
            uint64_t q = craft__quorum_match_index(m, n);
            size_t at_least_q = 0;
            bool q_present = false;
            for (size_t i = 0; i < n; i++) {
                at_least_q += m[i] >= q;
                q_present = q_present || m[i] == q;
            }
            ck_assert(q_present);
            ck_assert_uint_ge(at_least_q, n / 2 + 1);
            for (size_t j = 0; j < n; j++) {
                if (m[j] <= q) {
                    continue;
                }
                size_t cnt = 0;
                for (size_t i = 0; i < n; i++) {
                    cnt += m[i] >= m[j];
                }
                ck_assert_msg(cnt < n / 2 + 1, "n=%zu: %llu > q=%llu is on a majority", n,
                              (unsigned long long)m[j], (unsigned long long)q);
            }
        }
    }
}
END_TEST

/* ---- commitment ---- */

START_TEST(test_single_voter)
{
    craft__commitment_t *cm = new_cm("a", 0, 1);
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    ck_assert(craft__commitment_match(cm, "a", 3));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 3);
    ck_assert(!craft__commitment_match(cm, "a", 3));
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_three_voters)
{
    craft__commitment_t *cm = new_cm("a b c", 0, 1);
    ck_assert(!craft__commitment_match(cm, "a", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    ck_assert(craft__commitment_match(cm, "b", 6));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 6);
    ck_assert(craft__commitment_match(cm, "c", 8));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 8);
    ck_assert(craft__commitment_match(cm, "b", 12));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_two_voters_need_both)
{
    craft__commitment_t *cm = new_cm("a b", 0, 1);
    ck_assert(!craft__commitment_match(cm, "a", 5));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    ck_assert(craft__commitment_match(cm, "b", 3));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 3);
    ck_assert(craft__commitment_match(cm, "b", 9));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 5);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_four_voters_need_three)
{
    craft__commitment_t *cm = new_cm("a b c d", 0, 1);
    ck_assert(!craft__commitment_match(cm, "a", 5));
    ck_assert(!craft__commitment_match(cm, "b", 5));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0); /* 2 of 4 */
    ck_assert(craft__commitment_match(cm, "c", 4));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 4);
    ck_assert(craft__commitment_match(cm, "d", 5));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 5);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_five_voters_need_three)
{
    craft__commitment_t *cm = new_cm("a b c d e", 0, 1);
    ck_assert(!craft__commitment_match(cm, "a", 7));
    ck_assert(!craft__commitment_match(cm, "e", 7));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    ck_assert(craft__commitment_match(cm, "c", 7));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 7);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_nonvoters_ignored)
{
    craft__commitment_t *cm = new_cm("a ~x b ~y c ~z", 0, 1);
    ck_assert_uint_eq(cm->n, 3);
    /* Nonvoters alone, even a "majority" of servers, never commit. */
    ck_assert(!craft__commitment_match(cm, "x", 10));
    ck_assert(!craft__commitment_match(cm, "y", 10));
    ck_assert(!craft__commitment_match(cm, "z", 10));
    ck_assert(!craft__commitment_match(cm, "a", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    /* Only the second voter makes a majority. */
    ck_assert(craft__commitment_match(cm, "b", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    /* Nonvoters racing ahead move nothing. */
    ck_assert(!craft__commitment_match(cm, "x", 50));
    ck_assert(!craft__commitment_match(cm, "y", 50));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_unknown_ids_ignored)
{
    craft__commitment_t *cm = new_cm("a b c", 0, 1);
    ck_assert(!craft__commitment_match(cm, "a", 5));
    ck_assert(!craft__commitment_match(cm, "zz", 100));
    ck_assert(!craft__commitment_match(cm, "", 100));
    ck_assert(!craft__commitment_match(cm, "aa", 100)); /* not a prefix match */
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    ck_assert(craft__commitment_match(cm, "b", 5));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 5);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_match_never_decreases)
{
    craft__commitment_t *cm = new_cm("a b c", 0, 1);
    ck_assert(!craft__commitment_match(cm, "a", 10));
    ck_assert(craft__commitment_match(cm, "b", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    /* A stale (lower) report for b is ignored... */
    ck_assert(!craft__commitment_match(cm, "b", 2));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    /* ...so b still counts at 10 once c matches 10. */
    ck_assert(!craft__commitment_match(cm, "a", 3));
    ck_assert(!craft__commitment_match(cm, "c", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    ck_assert(!craft__commitment_match(cm, "c", 11));
    ck_assert(!craft__commitment_match(cm, "c", 11));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10); /* a=10 b=10 c=11 */
    ck_assert(craft__commitment_match(cm, "a", 11));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 11);
    ck_assert_uint_eq(cm->match[0], 11);
    ck_assert_uint_eq(cm->match[1], 10);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_initial_commit_index_kept)
{
    craft__commitment_t *cm = new_cm("a b c", 7, 8);
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 7);
    /* A quorum below the known commit index never moves it back. */
    ck_assert(!craft__commitment_match(cm, "a", 9));
    ck_assert(!craft__commitment_match(cm, "b", 5));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 7);
    ck_assert(craft__commitment_match(cm, "b", 9));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 9);
    craft__commitment_unref(cm);
}
END_TEST

/* Raft §5.4.2 */
START_TEST(test_current_term_rule)
{
    craft__commitment_t *cm = new_cm("a b c", 2, 6);
    /* Entries of earlier terms on a majority: not committed by counting. */
    ck_assert(!craft__commitment_match(cm, "a", 5));
    ck_assert(!craft__commitment_match(cm, "b", 4));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 2);
    ck_assert(!craft__commitment_match(cm, "b", 5));
    ck_assert(!craft__commitment_match(cm, "c", 5));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 2);
    /* The first entry of the term on one server only: still nothing. */
    ck_assert(!craft__commitment_match(cm, "a", 6));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 2);
    /* On a majority: it commits, and everything before with it. */
    ck_assert(craft__commitment_match(cm, "c", 7));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 6);
    ck_assert(craft__commitment_match(cm, "a", 7));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 7);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_current_term_rule_jump)
{
    /* A majority jumping straight past start_index commits at once. */
    craft__commitment_t *cm = new_cm("a b c", 0, 10);
    ck_assert(!craft__commitment_match(cm, "a", 12));
    ck_assert(craft__commitment_match(cm, "b", 15));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 12);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_set_configuration_keeps_matches)
{
    craft__commitment_t *cm = new_cm("a b c", 0, 1);
    ck_assert(!craft__commitment_match(cm, "a", 10));
    ck_assert(craft__commitment_match(cm, "b", 8));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 8);
    /* Add d and e: a=10 b=8 c=0 d=0 e=0 → quorum 0, commit stays. */
    ck_assert(!set_conf(cm, "a b c d e"));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 8);
    ck_assert_uint_eq(cm->n, 5);
    ck_assert(!craft__commitment_match(cm, "d", 9));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 8);
    /* Known matches kept: a=10 b=8 d=9 — e at 9 makes 9 on a,d,e. */
    ck_assert(craft__commitment_match(cm, "e", 9));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 9);
    /* Order of servers in the new configuration does not matter. */
    ck_assert(!set_conf(cm, "e d c b a"));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 9);
    ck_assert(!craft__commitment_match(cm, "b", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 9); /* a=10 b=10 only */
    ck_assert(craft__commitment_match(cm, "e", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_set_configuration_remove_lagging_voter)
{
    craft__commitment_t *cm = new_cm("a b c d e", 0, 1);
    craft__commitment_match(cm, "a", 10);
    craft__commitment_match(cm, "b", 10);
    craft__commitment_match(cm, "c", 3);
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 3);
    /* Removing the lagging d and e: a=10 b=10 c=3 → 10. */
    ck_assert(set_conf(cm, "a b c"));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 10);
    /* Demoting a voter to nonvoter removes it from the count too. */
    craft__commitment_t *cm2 = new_cm("a b c", 0, 1);
    craft__commitment_match(cm2, "a", 6);
    ck_assert_uint_eq(craft__commitment_commit_index(cm2), 0);
    ck_assert(set_conf(cm2, "a ~b ~c"));
    ck_assert_uint_eq(craft__commitment_commit_index(cm2), 6);
    /* The NULL `advanced` pointer is allowed. */
    conf_t k;
    ck_assert_int_eq(craft__commitment_set_configuration(cm2, conf(&k, "a b"), NULL), 0);
    ck_assert_uint_eq(craft__commitment_commit_index(cm2), 6);
    craft__commitment_unref(cm2);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_set_configuration_respects_start_index)
{
    craft__commitment_t *cm = new_cm("a b c", 0, 5);
    craft__commitment_match(cm, "a", 4);
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    /* Only a remains: its 4 is a majority but from an earlier term. */
    ck_assert(!set_conf(cm, "a"));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 0);
    ck_assert(craft__commitment_match(cm, "a", 5));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 5);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_set_configuration_readd_forgets)
{
    /* A voter removed and added back starts from 0 (its old match is gone). */
    craft__commitment_t *cm = new_cm("a b c", 0, 1);
    craft__commitment_match(cm, "a", 5);
    craft__commitment_match(cm, "c", 5);
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 5);
    set_conf(cm, "a b");
    set_conf(cm, "a b c");
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 5);
    ck_assert(!craft__commitment_match(cm, "a", 8));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 5);
    ck_assert(craft__commitment_match(cm, "c", 8));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 8);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_no_voters)
{
    craft__commitment_t *cm = new_cm("~a ~b", 3, 1);
    ck_assert_uint_eq(cm->n, 0);
    ck_assert(!craft__commitment_match(cm, "a", 10));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 3);
    /* a's match starts at 0: nothing to advance to. */
    ck_assert(!set_conf(cm, "a ~b"));
    ck_assert(craft__commitment_match(cm, "a", 4));
    ck_assert_uint_eq(craft__commitment_commit_index(cm), 4);
    craft__commitment_unref(cm);
}
END_TEST

START_TEST(test_refcount)
{
    craft__commitment_t *cm = new_cm("a", 0, 1);
    craft__commitment_ref(cm);
    craft__commitment_unref(cm);
    /* Still alive (ASan would flag a use after free). */
    ck_assert(craft__commitment_match(cm, "a", 1));
    craft__commitment_unref(cm);
    craft__commitment_unref(NULL);
}
END_TEST

/* ---- concurrency ---- */

#define CONC_VOTERS 5
#define CONC_MAX 20000

typedef struct {
    craft__commitment_t *cm;
    char id[8];
    uint64_t final;
    atomic_int *stop;
} matcher_t;

static void *matcher_main(void *arg)
{
    matcher_t *m = arg;
    uint64_t x = (uint64_t)(uintptr_t)m | 1;
    for (uint64_t i = 1; i <= m->final; i++) {
        craft__commitment_match(m->cm, m->id, i);
        /* Interleave stale reports, as late responses would be. */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x % 4 == 0) {
            craft__commitment_match(m->cm, m->id, i / 2);
        }
    }
    return NULL;
}

typedef struct {
    craft__commitment_t *cm;
    atomic_int *stop;
    bool monotonic;
    uint64_t reads;
} reader_t;

static void *reader_main(void *arg)
{
    reader_t *r = arg;
    uint64_t last = 0;
    r->monotonic = true;
    while (!atomic_load(r->stop)) {
        uint64_t c = craft__commitment_commit_index(r->cm);
        if (c < last) {
            r->monotonic = false;
        }
        last = c;
        r->reads++;
    }
    return NULL;
}

START_TEST(test_concurrent_matches)
{
    craft__commitment_t *cm = new_cm("v0 v1 v2 v3 v4 ~n0 ~n1", 0, 1);
    atomic_int stop;
    atomic_init(&stop, 0);
    /* Final matches 20000, 18000, 16000, 14000, 12000: the majority (3 of 5)
     * holds 16000. Nonvoters race to the top and must not count. */
    matcher_t m[CONC_VOTERS + 2];
    pthread_t th[CONC_VOTERS + 2];
    for (int i = 0; i < CONC_VOTERS + 2; i++) {
        m[i].cm = cm;
        if (i < CONC_VOTERS) {
            snprintf(m[i].id, sizeof m[i].id, "v%d", i);
            m[i].final = CONC_MAX - (uint64_t)i * 2000;
        } else {
            snprintf(m[i].id, sizeof m[i].id, "n%d", i - CONC_VOTERS);
            m[i].final = CONC_MAX * 2;
        }
        m[i].stop = &stop;
    }
    reader_t rd = {cm, &stop, false, 0};
    pthread_t rth;
    ck_assert_int_eq(pthread_create(&rth, NULL, reader_main, &rd), 0);
    for (int i = 0; i < CONC_VOTERS + 2; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, matcher_main, &m[i]), 0);
    }
    for (int i = 0; i < CONC_VOTERS + 2; i++) {
        pthread_join(th[i], NULL);
    }
    atomic_store(&stop, 1);
    pthread_join(rth, NULL);
    ck_assert(rd.monotonic);
    ck_assert_uint_eq(craft__commitment_commit_index(cm), CONC_MAX - 4000);
    for (int i = 0; i < CONC_VOTERS; i++) {
        ck_assert_uint_eq(cm->match[i], m[i].final);
    }
    craft__commitment_unref(cm);
}
END_TEST

static Suite *commitment_suite(void)
{
    Suite *s = suite_create("commitment");
    TCase *tc = tcase_create("quorum");
    tcase_add_loop_test(tc, test_quorum_vectors, 0, (int)(sizeof qcases / sizeof qcases[0]));
    tcase_add_test(tc, test_quorum_definition);
    suite_add_tcase(s, tc);

    tc = tcase_create("commit");
    tcase_add_test(tc, test_single_voter);
    tcase_add_test(tc, test_three_voters);
    tcase_add_test(tc, test_two_voters_need_both);
    tcase_add_test(tc, test_four_voters_need_three);
    tcase_add_test(tc, test_five_voters_need_three);
    tcase_add_test(tc, test_nonvoters_ignored);
    tcase_add_test(tc, test_unknown_ids_ignored);
    tcase_add_test(tc, test_match_never_decreases);
    tcase_add_test(tc, test_initial_commit_index_kept);
    tcase_add_test(tc, test_current_term_rule);
    tcase_add_test(tc, test_current_term_rule_jump);
    tcase_add_test(tc, test_refcount);
    suite_add_tcase(s, tc);

    tc = tcase_create("configuration");
    tcase_add_test(tc, test_set_configuration_keeps_matches);
    tcase_add_test(tc, test_set_configuration_remove_lagging_voter);
    tcase_add_test(tc, test_set_configuration_respects_start_index);
    tcase_add_test(tc, test_set_configuration_readd_forgets);
    tcase_add_test(tc, test_no_voters);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_concurrent_matches);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(commitment_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
