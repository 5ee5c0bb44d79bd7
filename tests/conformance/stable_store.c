/*
 * StableStore conformance checks (the contract of craft_stable_store_t in
 * craft.h: NUL-terminated string keys, byte values, uint64 values,
 * CRAFT_ENOTFOUND for absent keys). Store-agnostic: everything goes through
 * the factory and the vtable.
 */
#include "conformance.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const craft_conformance_store_factory_t *factory;
static craft_log_store_t *L;
static craft_stable_store_t *S;

static void setup(void)
{
    L = NULL;
    S = NULL;
    ck_assert_int_eq(factory->open(factory->arg, &L, &S), 0);
    ck_assert_ptr_nonnull(L);
    ck_assert_ptr_nonnull(S);
}

static void teardown(void)
{
    if (L != NULL) {
        L->close(L->ctx);
        L = NULL;
    }
    if (S != NULL) {
        S->close(S->ctx);
        S = NULL;
    }
    if (factory->destroy != NULL) {
        factory->destroy(factory->arg);
    }
}

static void reopen(void)
{
    L->close(L->ctx);
    S->close(S->ctx);
    L = NULL;
    S = NULL;
    ck_assert_int_eq(factory->reopen(factory->arg, &L, &S), 0);
    ck_assert_ptr_nonnull(L);
    ck_assert_ptr_nonnull(S);
}

static void set_bytes(const char *key, const void *val, size_t len)
{
    int rv = S->set(S->ctx, key, val, len);
    ck_assert_msg(rv == 0, "set(%s) = %s", key, craft_err_name(rv));
}

static void expect_bytes(const char *key, const void *want, size_t len)
{
    void *val = (void *)&val; /* poison: must be overwritten */
    size_t got_len = 12345;
    int rv = S->get(S->ctx, key, &val, &got_len);
    ck_assert_msg(rv == 0, "get(%s) = %s", key, craft_err_name(rv));
    ck_assert_uint_eq(got_len, len);
    if (len == 0) {
        /* May be NULL or an allocation the caller frees. */
        ck_assert_ptr_ne(val, (void *)&val);
    } else {
        ck_assert_ptr_nonnull(val);
        ck_assert_int_eq(memcmp(val, want, len), 0);
    }
    free(val);
}

static void expect_missing(const char *key)
{
    void *val = NULL;
    size_t len = 0;
    uint64_t u = 0;
    int rv = S->get(S->ctx, key, &val, &len);
    ck_assert_msg(rv == CRAFT_ENOTFOUND, "get(%s) = %s, want CRAFT_ENOTFOUND",
                  key, craft_err_name(rv));
    rv = S->get_uint64(S->ctx, key, &u);
    ck_assert_msg(rv == CRAFT_ENOTFOUND,
                  "get_uint64(%s) = %s, want CRAFT_ENOTFOUND", key,
                  craft_err_name(rv));
}

static void set_u64(const char *key, uint64_t v)
{
    int rv = S->set_uint64(S->ctx, key, v);
    ck_assert_msg(rv == 0, "set_uint64(%s) = %s", key, craft_err_name(rv));
}

static void expect_u64(const char *key, uint64_t want)
{
    uint64_t got = ~want;
    int rv = S->get_uint64(S->ctx, key, &got);
    ck_assert_msg(rv == 0, "get_uint64(%s) = %s", key, craft_err_name(rv));
    ck_assert_uint_eq(got, want);
}

START_TEST(test_missing)
{
    expect_missing("CurrentTerm");
    expect_missing("LastVoteCand");
    expect_missing("");
}
END_TEST

START_TEST(test_set_get)
{
    set_bytes("LastVoteCand", "node-1", 6);
    expect_bytes("LastVoteCand", "node-1", 6);
    /* Keys are whole strings: no prefix matches. */
    expect_missing("LastVote");
    expect_missing("LastVoteCandX");
}
END_TEST

START_TEST(test_get_returns_copy)
{
    set_bytes("k", "abc", 3);
    void *a = NULL;
    void *b = NULL;
    size_t la = 0;
    size_t lb = 0;
    ck_assert_int_eq(S->get(S->ctx, "k", &a, &la), 0);
    ck_assert_int_eq(S->get(S->ctx, "k", &b, &lb), 0);
    ck_assert_ptr_ne(a, b);
    memset(a, 'z', la);
    free(a);
    ck_assert_int_eq(memcmp(b, "abc", 3), 0);
    free(b);
    expect_bytes("k", "abc", 3);
}
END_TEST

START_TEST(test_empty_value)
{
    set_bytes("empty", NULL, 0);
    expect_bytes("empty", NULL, 0);
    set_bytes("empty2", "ignored", 0);
    expect_bytes("empty2", NULL, 0);
    /* An empty value is present, not absent. */
    void *val = NULL;
    size_t len = 1;
    ck_assert_int_eq(S->get(S->ctx, "empty", &val, &len), 0);
    ck_assert_uint_eq(len, 0);
    free(val);
}
END_TEST

START_TEST(test_binary_value)
{
    unsigned char all[256];
    for (size_t i = 0; i < sizeof all; i++) {
        all[i] = (unsigned char)(255 - i);
    }
    set_bytes("bin", all, sizeof all);
    expect_bytes("bin", all, sizeof all);
    set_bytes("nuls", "\0\0\0x\0", 5);
    expect_bytes("nuls", "\0\0\0x\0", 5);
}
END_TEST

START_TEST(test_large_value)
{
    size_t len = 1 << 20;
    unsigned char *v = malloc(len);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < len; i++) {
        v[i] = (unsigned char)(i * 7 + (i >> 12));
    }
    set_bytes("large", v, len);
    expect_bytes("large", v, len);
    free(v);
}
END_TEST

START_TEST(test_overwrite)
{
    set_bytes("k", "first value", 11);
    set_bytes("k", "2nd", 3);
    expect_bytes("k", "2nd", 3);
    set_bytes("k", "a much longer third value", 25);
    expect_bytes("k", "a much longer third value", 25);
    set_bytes("k", NULL, 0);
    expect_bytes("k", NULL, 0);
    set_u64("n", 1);
    set_u64("n", 2);
    expect_u64("n", 2);
}
END_TEST

START_TEST(test_uint64)
{
    static const uint64_t vals[] = {0, 1, 255, 256, 0x0102030405060708ULL,
                                    UINT64_MAX - 1, UINT64_MAX};
    char key[32];
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        snprintf(key, sizeof key, "u%zu", i);
        set_u64(key, vals[i]);
    }
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        snprintf(key, sizeof key, "u%zu", i);
        expect_u64(key, vals[i]);
    }
    set_u64("CurrentTerm", 0);
    expect_u64("CurrentTerm", 0); /* 0 is a value, not absence */
}
END_TEST

START_TEST(test_many_keys)
{
    enum { N = 2000 };
    char key[32];
    char val[64];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "key-%d", (i * 7919) % N);
        int n = snprintf(val, sizeof val, "value of %d", (i * 7919) % N);
        set_bytes(key, val, (size_t)n);
        snprintf(key, sizeof key, "num-%d", i);
        set_u64(key, (uint64_t)i * 1000003u);
    }
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        int n = snprintf(val, sizeof val, "value of %d", i);
        expect_bytes(key, val, (size_t)n);
        snprintf(key, sizeof key, "num-%d", i);
        expect_u64(key, (uint64_t)i * 1000003u);
    }
    expect_missing("key-2000");
    expect_missing("num--1");
}
END_TEST

/* Several threads each own a key and hammer it while reading the others. */
enum { CONC_THREADS = 4, CONC_ROUNDS = 500 };

typedef struct conc_arg {
    craft_stable_store_t *s;
    int id;
    atomic_int *errors;
} conc_arg_t;

static void *conc_worker(void *p)
{
    conc_arg_t *a = p;
    char key[32];
    snprintf(key, sizeof key, "thread-%d", a->id);
    for (int r = 1; r <= CONC_ROUNDS; r++) {
        if (a->s->set_uint64(a->s->ctx, key, (uint64_t)r) != 0) {
            atomic_fetch_add(a->errors, 1);
        }
        uint64_t v = 0;
        if (a->s->get_uint64(a->s->ctx, key, &v) != 0 || v != (uint64_t)r) {
            atomic_fetch_add(a->errors, 1);
        }
        char other[32];
        snprintf(other, sizeof other, "thread-%d", (a->id + 1) % CONC_THREADS);
        int rv = a->s->get_uint64(a->s->ctx, other, &v);
        if ((rv != 0 && rv != CRAFT_ENOTFOUND) ||
            (rv == 0 && (v < 1 || v > CONC_ROUNDS))) {
            atomic_fetch_add(a->errors, 1);
        }
    }
    return NULL;
}

START_TEST(test_concurrent)
{
    atomic_int errors;
    atomic_init(&errors, 0);
    pthread_t th[CONC_THREADS];
    conc_arg_t args[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        args[i] = (conc_arg_t){S, i, &errors};
        ck_assert_int_eq(pthread_create(&th[i], NULL, conc_worker, &args[i]), 0);
    }
    for (int i = 0; i < CONC_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    int n_errors = atomic_load(&errors);
    ck_assert_int_eq(n_errors, 0);
    for (int i = 0; i < CONC_THREADS; i++) {
        char key[32];
        snprintf(key, sizeof key, "thread-%d", i);
        expect_u64(key, CONC_ROUNDS);
    }
}
END_TEST

START_TEST(test_invalid_args)
{
    void *val = NULL;
    size_t len = 0;
    uint64_t u = 0;
    ck_assert_int_lt(S->set(S->ctx, NULL, "x", 1), 0);
    ck_assert_int_lt(S->set(S->ctx, "k", NULL, 5), 0);
    ck_assert_int_lt(S->get(S->ctx, NULL, &val, &len), 0);
    ck_assert_int_lt(S->set_uint64(S->ctx, NULL, 1), 0);
    ck_assert_int_lt(S->get_uint64(S->ctx, NULL, &u), 0);
    set_bytes("k", "v", 1);
    ck_assert_int_lt(S->get(S->ctx, "k", NULL, &len), 0);
    ck_assert_int_lt(S->get(S->ctx, "k", &val, NULL), 0);
    set_u64("n", 3);
    ck_assert_int_lt(S->get_uint64(S->ctx, "n", NULL), 0);
    /* The refused calls changed nothing. */
    expect_bytes("k", "v", 1);
    expect_u64("n", 3);
}
END_TEST

START_TEST(test_persistence)
{
    unsigned char bin[5] = {0, 1, 0, 2, 0};
    set_u64("CurrentTerm", 42);
    set_u64("zero", 0);
    set_u64("max", UINT64_MAX);
    set_bytes("LastVoteCand", "node-3", 6);
    set_bytes("bin", bin, sizeof bin);
    set_bytes("empty", NULL, 0);
    set_bytes("overwritten", "old", 3);
    set_bytes("overwritten", "new!", 4);
    reopen();
    expect_u64("CurrentTerm", 42);
    expect_u64("zero", 0);
    expect_u64("max", UINT64_MAX);
    expect_bytes("LastVoteCand", "node-3", 6);
    expect_bytes("bin", bin, sizeof bin);
    expect_bytes("empty", NULL, 0);
    expect_bytes("overwritten", "new!", 4);
    expect_missing("never-set");
    /* Still writable after reopening, and that persists too. */
    set_u64("CurrentTerm", 43);
    reopen();
    expect_u64("CurrentTerm", 43);
}
END_TEST

Suite *craft_conformance_stable_store_suite(const craft_conformance_store_factory_t *f)
{
    static char name[128];
    factory = f;
    snprintf(name, sizeof name, "%s stable store", f->name ? f->name : "?");
    Suite *s = suite_create(name);
    if (s == NULL) {
        return NULL;
    }
    TCase *basic = tcase_create("basic");
    tcase_add_checked_fixture(basic, setup, teardown);
    tcase_add_test(basic, test_missing);
    tcase_add_test(basic, test_set_get);
    tcase_add_test(basic, test_get_returns_copy);
    tcase_add_test(basic, test_empty_value);
    tcase_add_test(basic, test_binary_value);
    tcase_add_test(basic, test_large_value);
    tcase_add_test(basic, test_overwrite);
    tcase_add_test(basic, test_uint64);
    tcase_add_test(basic, test_invalid_args);
    suite_add_tcase(s, basic);

    TCase *load = tcase_create("load");
    tcase_add_checked_fixture(load, setup, teardown);
    tcase_set_timeout(load, 120);
    tcase_add_test(load, test_many_keys);
    tcase_add_test(load, test_concurrent);
    suite_add_tcase(s, load);

    if (f->reopen != NULL) {
        TCase *p = tcase_create("persistence");
        tcase_add_checked_fixture(p, setup, teardown);
        tcase_add_test(p, test_persistence);
        suite_add_tcase(s, p);
    }
    return s;
}
