/* lib/configuration.c: copy/free, lookups, validation, equality, edits. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"
#include "lib/configuration.h"

static void set_server(craft_server_t *s, const char *id, const char *addr,
                       craft_suffrage_t suf)
{
    s->id = (char *)id;
    s->address = (char *)addr;
    s->suffrage = suf;
}

/* A borrowed three-server configuration: a, b voters; c nonvoter. */
typedef struct {
    craft_server_t srv[4];
    craft_configuration_t c;
} fixture_t;

static craft_configuration_t *abc(fixture_t *f)
{
    set_server(&f->srv[0], "a", "10.0.0.1:7000", CRAFT_VOTER);
    set_server(&f->srv[1], "b", "10.0.0.2:7000", CRAFT_VOTER);
    set_server(&f->srv[2], "c", "10.0.0.3:7000", CRAFT_NONVOTER);
    f->c.n = 3;
    f->c.servers = f->srv;
    return &f->c;
}

static void check_server(const craft_configuration_t *c, size_t i, const char *id,
                         const char *addr, craft_suffrage_t suf)
{
    ck_assert_uint_gt(c->n, i);
    ck_assert_str_eq(c->servers[i].id, id);
    ck_assert_str_eq(c->servers[i].address, addr);
    ck_assert_int_eq(c->servers[i].suffrage, suf);
}

/* ---- copy / free ---- */

START_TEST(test_copy_is_deep)
{
    fixture_t fx;
    craft_configuration_t *src = abc(&fx);
    craft_configuration_t dst;
    ck_assert_int_eq(craft_configuration_copy(&dst, src), 0);
    ck_assert_uint_eq(dst.n, 3);
    ck_assert_ptr_ne(dst.servers, src->servers);
    for (size_t i = 0; i < 3; i++) {
        check_server(&dst, i, src->servers[i].id, src->servers[i].address,
                     src->servers[i].suffrage);
        ck_assert_ptr_ne(dst.servers[i].id, src->servers[i].id);
        ck_assert_ptr_ne(dst.servers[i].address, src->servers[i].address);
    }
    ck_assert(craft__configuration_equal(&dst, src));
    /* Mutating the copy leaves the source alone. */
    dst.servers[0].id[0] = 'z';
    ck_assert_str_eq(src->servers[0].id, "a");
    craft_configuration_free(&dst);
    ck_assert_uint_eq(dst.n, 0);
    ck_assert_ptr_null(dst.servers);
    /* Free twice and free NULL are fine. */
    craft_configuration_free(&dst);
    craft_configuration_free(NULL);
}
END_TEST

START_TEST(test_copy_empty)
{
    craft_configuration_t src = {0, NULL};
    craft_configuration_t dst;
    memset(&dst, 0xff, sizeof dst);
    ck_assert_int_eq(craft_configuration_copy(&dst, &src), 0);
    ck_assert_uint_eq(dst.n, 0);
    ck_assert_ptr_null(dst.servers);
    craft_configuration_free(&dst);
}
END_TEST

START_TEST(test_copy_of_copy)
{
    fixture_t fx;
    craft_configuration_t a, b;
    ck_assert_int_eq(craft_configuration_copy(&a, abc(&fx)), 0);
    ck_assert_int_eq(craft_configuration_copy(&b, &a), 0);
    craft_configuration_free(&a);
    check_server(&b, 2, "c", "10.0.0.3:7000", CRAFT_NONVOTER);
    craft_configuration_free(&b);
}
END_TEST

/* ---- lookups ---- */

START_TEST(test_find)
{
    fixture_t fx;
    craft_configuration_t *c = abc(&fx);
    ck_assert_int_eq(craft__configuration_find(c, "a"), 0);
    ck_assert_int_eq(craft__configuration_find(c, "b"), 1);
    ck_assert_int_eq(craft__configuration_find(c, "c"), 2);
    ck_assert_int_eq(craft__configuration_find(c, "d"), -1);
    ck_assert_int_eq(craft__configuration_find(c, ""), -1);
    ck_assert_int_eq(craft__configuration_find(c, "aa"), -1);
    /* By ID, not by address. */
    ck_assert_int_eq(craft__configuration_find(c, "10.0.0.1:7000"), -1);
    craft_configuration_t empty = {0, NULL};
    ck_assert_int_eq(craft__configuration_find(&empty, "a"), -1);
}
END_TEST

START_TEST(test_is_voter)
{
    fixture_t fx;
    craft_configuration_t *c = abc(&fx);
    ck_assert(craft__configuration_is_voter(c, "a"));
    ck_assert(craft__configuration_is_voter(c, "b"));
    ck_assert(!craft__configuration_is_voter(c, "c")); /* nonvoter */
    ck_assert(!craft__configuration_is_voter(c, "x")); /* unknown */
}
END_TEST

START_TEST(test_voters)
{
    fixture_t fx;
    craft_configuration_t *c = abc(&fx);
    ck_assert_uint_eq(craft__configuration_voters(c), 2);
    c->servers[2].suffrage = CRAFT_VOTER;
    ck_assert_uint_eq(craft__configuration_voters(c), 3);
    c->servers[0].suffrage = CRAFT_NONVOTER;
    c->servers[1].suffrage = CRAFT_NONVOTER;
    c->servers[2].suffrage = CRAFT_NONVOTER;
    ck_assert_uint_eq(craft__configuration_voters(c), 0);
    craft_configuration_t empty = {0, NULL};
    ck_assert_uint_eq(craft__configuration_voters(&empty), 0);
}
END_TEST

/* ---- check ---- */

START_TEST(test_check_valid)
{
    fixture_t fx;
    const char *why = "sentinel";
    ck_assert_int_eq(craft__configuration_check(abc(&fx), &why), 0);
    ck_assert_ptr_null(why);
    ck_assert_int_eq(craft__configuration_check(abc(&fx), NULL), 0);
}
END_TEST

typedef struct {
    const char *name;
    void (*mutate)(craft_configuration_t *c);
    const char *reason_has;
} bad_t;

static void b_empty_id(craft_configuration_t *c) { c->servers[1].id = (char *)""; }
static void b_null_id(craft_configuration_t *c) { c->servers[1].id = NULL; }
static void b_empty_addr(craft_configuration_t *c) { c->servers[2].address = (char *)""; }
static void b_null_addr(craft_configuration_t *c) { c->servers[0].address = NULL; }
static void b_dup_id(craft_configuration_t *c) { c->servers[2].id = (char *)"a"; }
static void b_dup_addr(craft_configuration_t *c)
{
    c->servers[2].address = (char *)"10.0.0.2:7000";
}
static void b_no_voter(craft_configuration_t *c)
{
    c->servers[0].suffrage = CRAFT_NONVOTER;
    c->servers[1].suffrage = CRAFT_NONVOTER;
}
static void b_empty(craft_configuration_t *c) { c->n = 0; }
static void b_suffrage(craft_configuration_t *c) { c->servers[1].suffrage = (craft_suffrage_t)7; }
static void b_suffrage_neg(craft_configuration_t *c)
{
    c->servers[2].suffrage = (craft_suffrage_t)-1;
}

static const bad_t bads[] = {
    {"empty id", b_empty_id, "ID"},
    {"NULL id", b_null_id, "ID"},
    {"empty address", b_empty_addr, "address"},
    {"NULL address", b_null_addr, "address"},
    {"duplicate id", b_dup_id, "duplicate server ID"},
    {"duplicate address", b_dup_addr, "duplicate server address"},
    {"no voter", b_no_voter, "voter"},
    {"no server", b_empty, "voter"},
    {"bad suffrage", b_suffrage, "suffrage"},
    {"negative suffrage", b_suffrage_neg, "suffrage"},
};

START_TEST(test_check_invalid)
{
    const bad_t *b = &bads[_i];
    fixture_t fx;
    craft_configuration_t *c = abc(&fx);
    b->mutate(c);
    const char *why = NULL;
    ck_assert_msg(craft__configuration_check(c, &why) == CRAFT_EINVAL, "%s accepted", b->name);
    ck_assert_msg(why != NULL, "%s: no reason", b->name);
    ck_assert_msg(strstr(why, b->reason_has) != NULL, "%s: reason \"%s\" lacks \"%s\"",
                  b->name, why, b->reason_has);
    ck_assert_int_eq(craft__configuration_check(c, NULL), CRAFT_EINVAL);
}
END_TEST

/* ---- equal ---- */

START_TEST(test_equal)
{
    fixture_t f1, f2;
    craft_configuration_t *a = abc(&f1), *b = abc(&f2);
    ck_assert(craft__configuration_equal(a, b));
    ck_assert(craft__configuration_equal(a, a));

    b->servers[1].suffrage = CRAFT_NONVOTER;
    ck_assert(!craft__configuration_equal(a, b));
    b = abc(&f2);
    b->servers[1].address = (char *)"10.0.0.9:7000";
    ck_assert(!craft__configuration_equal(a, b));
    b = abc(&f2);
    b->servers[1].id = (char *)"bb";
    ck_assert(!craft__configuration_equal(a, b));
    b = abc(&f2);
    b->n = 2;
    ck_assert(!craft__configuration_equal(a, b));
    ck_assert(!craft__configuration_equal(b, a));
    /* Same servers, different order: not equal. */
    b = abc(&f2);
    craft_server_t t = b->servers[0];
    b->servers[0] = b->servers[1];
    b->servers[1] = t;
    ck_assert(!craft__configuration_equal(a, b));

    craft_configuration_t e1 = {0, NULL}, e2 = {0, NULL};
    ck_assert(craft__configuration_equal(&e1, &e2));
    ck_assert(!craft__configuration_equal(&e1, a));
}
END_TEST

/* ---- add / remove_at ---- */

START_TEST(test_add)
{
    craft_configuration_t c = {0, NULL};
    char id[8] = "a", addr[16] = "h:1";
    ck_assert_int_eq(craft__configuration_add(&c, id, addr, CRAFT_VOTER), 0);
    /* Copies: the caller's buffers can change. */
    id[0] = 'x';
    addr[0] = 'x';
    ck_assert_int_eq(craft__configuration_add(&c, "b", "h:2", CRAFT_NONVOTER), 0);
    ck_assert_int_eq(craft__configuration_add(&c, "c", "h:3", CRAFT_VOTER), 0);
    ck_assert_uint_eq(c.n, 3);
    check_server(&c, 0, "a", "h:1", CRAFT_VOTER);
    check_server(&c, 1, "b", "h:2", CRAFT_NONVOTER);
    check_server(&c, 2, "c", "h:3", CRAFT_VOTER);
    ck_assert_int_eq(craft__configuration_check(&c, NULL), 0);
    ck_assert_int_eq(craft__configuration_find(&c, "c"), 2);
    ck_assert_uint_eq(craft__configuration_voters(&c), 2);
    craft_configuration_free(&c);
}
END_TEST

START_TEST(test_add_many)
{
    craft_configuration_t c = {0, NULL};
    char id[16], addr[32];
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "n%d", i);
        snprintf(addr, sizeof addr, "h:%d", i);
        ck_assert_int_eq(craft__configuration_add(&c, id, addr, CRAFT_VOTER), 0);
    }
    ck_assert_uint_eq(c.n, 100);
    ck_assert_int_eq(craft__configuration_check(&c, NULL), 0);
    ck_assert_int_eq(craft__configuration_find(&c, "n57"), 57);
    check_server(&c, 99, "n99", "h:99", CRAFT_VOTER);
    craft_configuration_free(&c);
}
END_TEST

START_TEST(test_remove_at)
{
    craft_configuration_t c = {0, NULL};
    const char *ids[] = {"a", "b", "c", "d", "e"};
    const char *addrs[] = {"h:1", "h:2", "h:3", "h:4", "h:5"};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(craft__configuration_add(&c, ids[i], addrs[i], CRAFT_VOTER), 0);
    }
    craft__configuration_remove_at(&c, 2); /* middle: c */
    ck_assert_uint_eq(c.n, 4);
    check_server(&c, 0, "a", "h:1", CRAFT_VOTER);
    check_server(&c, 1, "b", "h:2", CRAFT_VOTER);
    check_server(&c, 2, "d", "h:4", CRAFT_VOTER);
    check_server(&c, 3, "e", "h:5", CRAFT_VOTER);
    ck_assert_int_eq(craft__configuration_find(&c, "c"), -1);
    craft__configuration_remove_at(&c, 3); /* last: e */
    ck_assert_uint_eq(c.n, 3);
    check_server(&c, 2, "d", "h:4", CRAFT_VOTER);
    craft__configuration_remove_at(&c, 0); /* first: a */
    ck_assert_uint_eq(c.n, 2);
    check_server(&c, 0, "b", "h:2", CRAFT_VOTER);
    check_server(&c, 1, "d", "h:4", CRAFT_VOTER);
    /* Add after remove reuses the array correctly. */
    ck_assert_int_eq(craft__configuration_add(&c, "f", "h:6", CRAFT_NONVOTER), 0);
    check_server(&c, 2, "f", "h:6", CRAFT_NONVOTER);
    craft__configuration_remove_at(&c, 0);
    craft__configuration_remove_at(&c, 0);
    craft__configuration_remove_at(&c, 0);
    ck_assert_uint_eq(c.n, 0);
    craft_configuration_free(&c); /* ASan: nothing leaked */
}
END_TEST

static Suite *configuration_suite(void)
{
    Suite *s = suite_create("configuration");
    TCase *tc = tcase_create("copy");
    tcase_add_test(tc, test_copy_is_deep);
    tcase_add_test(tc, test_copy_empty);
    tcase_add_test(tc, test_copy_of_copy);
    suite_add_tcase(s, tc);

    tc = tcase_create("lookup");
    tcase_add_test(tc, test_find);
    tcase_add_test(tc, test_is_voter);
    tcase_add_test(tc, test_voters);
    tcase_add_test(tc, test_equal);
    suite_add_tcase(s, tc);

    tc = tcase_create("check");
    tcase_add_test(tc, test_check_valid);
    tcase_add_loop_test(tc, test_check_invalid, 0, (int)(sizeof bads / sizeof bads[0]));
    suite_add_tcase(s, tc);

    tc = tcase_create("edit");
    tcase_add_test(tc, test_add);
    tcase_add_test(tc, test_add_many);
    tcase_add_test(tc, test_remove_at);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(configuration_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
