/*
 * LogStore conformance checks (the contract of craft_log_store_t in
 * craft.h, with hashicorp's LogStore semantics: indexes start at 1, entries
 * need not be contiguous, Raft deletes only prefixes and suffixes).
 * Nothing here knows about a particular store: everything goes through the
 * factory and the vtable.
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

/* ---- deterministic entry contents, derived from index and term ---- */

static size_t data_len_of(uint64_t idx)
{
    return (size_t)(idx % 97); /* includes empty entries */
}

static size_t ext_len_of(uint64_t idx)
{
    return (size_t)(idx % 7);
}

static unsigned char data_byte(uint64_t idx, uint64_t term, size_t j)
{
    return (unsigned char)(idx * 31 + term * 7 + j);
}

static unsigned char ext_byte(uint64_t idx, size_t j)
{
    return (unsigned char)(idx + j * 13);
}

/* Fills `e` (buffers malloc'd, freed by free_entries) for index/term. */
static void make_entry(craft_log_t *e, uint64_t idx, uint64_t term)
{
    memset(e, 0, sizeof *e);
    e->index = idx;
    e->term = term;
    e->type = (craft_log_type_t)(idx % 6);
    e->len = data_len_of(idx);
    e->ext_len = ext_len_of(idx);
    e->appended_at_ns = (int64_t)(idx * 1000003 + term);
    if (e->len > 0) {
        unsigned char *d = malloc(e->len);
        ck_assert_ptr_nonnull(d);
        for (size_t j = 0; j < e->len; j++) {
            d[j] = data_byte(idx, term, j);
        }
        e->data = d;
    }
    if (e->ext_len > 0) {
        unsigned char *x = malloc(e->ext_len);
        ck_assert_ptr_nonnull(x);
        for (size_t j = 0; j < e->ext_len; j++) {
            x[j] = ext_byte(idx, j);
        }
        e->ext = x;
    }
}

static craft_log_t *make_entries(uint64_t first, size_t n, uint64_t term)
{
    craft_log_t *es = calloc(n, sizeof *es);
    ck_assert_ptr_nonnull(es);
    for (size_t i = 0; i < n; i++) {
        make_entry(&es[i], first + i, term);
    }
    return es;
}

static void free_entries(craft_log_t *es, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((void *)es[i].data);
        free((void *)es[i].ext);
    }
    free(es);
}

static void store_range(craft_log_store_t *l, uint64_t first, size_t n,
                        uint64_t term)
{
    craft_log_t *es = make_entries(first, n, term);
    ck_assert_int_eq(l->store_logs(l->ctx, es, n), 0);
    free_entries(es, n);
}

/* true when `got` is exactly what make_entry(idx, term) produced. */
static bool entry_matches(const craft_log_t *got, uint64_t idx, uint64_t term)
{
    if (got->index != idx || got->term != term ||
        got->type != (craft_log_type_t)(idx % 6) ||
        got->len != data_len_of(idx) || got->ext_len != ext_len_of(idx) ||
        got->appended_at_ns != (int64_t)(idx * 1000003 + term)) {
        return false;
    }
    if ((got->len == 0) != (got->data == NULL) ||
        (got->ext_len == 0) != (got->ext == NULL)) {
        return false;
    }
    const unsigned char *d = got->data;
    for (size_t j = 0; j < got->len; j++) {
        if (d[j] != data_byte(idx, term, j)) {
            return false;
        }
    }
    const unsigned char *x = got->ext;
    for (size_t j = 0; j < got->ext_len; j++) {
        if (x[j] != ext_byte(idx, j)) {
            return false;
        }
    }
    return true;
}

static void expect_entry(uint64_t idx, uint64_t term)
{
    craft_log_t got;
    memset(&got, 0, sizeof got);
    int rv = L->get_log(L->ctx, idx, &got);
    ck_assert_msg(rv == 0, "get_log(%llu) = %s", (unsigned long long)idx,
                  craft_err_name(rv));
    ck_assert_msg(entry_matches(&got, idx, term),
                  "entry %llu differs from what was stored (term %llu)",
                  (unsigned long long)idx, (unsigned long long)term);
    craft_log_release(&got);
}

static void expect_missing(uint64_t idx)
{
    craft_log_t got;
    memset(&got, 0, sizeof got);
    int rv = L->get_log(L->ctx, idx, &got);
    ck_assert_msg(rv == CRAFT_ENOTFOUND, "get_log(%llu) = %s, want CRAFT_ENOTFOUND",
                  (unsigned long long)idx, craft_err_name(rv));
}

static void expect_bounds(uint64_t first, uint64_t last)
{
    uint64_t f = 12345;
    uint64_t l = 12345;
    ck_assert_int_eq(L->first_index(L->ctx, &f), 0);
    ck_assert_int_eq(L->last_index(L->ctx, &l), 0);
    ck_assert_uint_eq(f, first);
    ck_assert_uint_eq(l, last);
}

/* ---- get_logs (optional) ---- */

static bool offers_get_logs(void)
{
    return L->get_logs != NULL;
}

static size_t size_of(uint64_t idx)
{
    return data_len_of(idx) + ext_len_of(idx);
}

/* How many entries get_logs(lo, max_n, max_bytes) must return when every
 * index lo..last is stored: the contract's byte rule, computed
 * independently of any store. */
static size_t expected_count(uint64_t lo, uint64_t last, size_t max_n,
                             size_t max_bytes)
{
    size_t k = 0;
    size_t bytes = 0;
    while (k < max_n && lo + k <= last) {
        size_t sz = size_of(lo + k);
        if (k > 0 && bytes + sz > max_bytes) {
            break;
        }
        bytes += sz;
        k++;
    }
    return k;
}

/* get_logs(lo, max_n, max_bytes) succeeds with exactly `want_n` entries,
 * each what make_entry(lo + i, term) produced, with term = term_before
 * below index `split` and term_from from it on; releases them. The tests
 * keep fewer than 1024 entries in reach of one read. */
static void expect_logs_split(uint64_t lo, size_t max_n, size_t max_bytes,
                              size_t want_n, uint64_t split,
                              uint64_t term_before, uint64_t term_from)
{
    size_t room = max_n < 1024 ? max_n : 1024;
    craft_log_t *out = calloc(room, sizeof *out);
    ck_assert_ptr_nonnull(out);
    size_t n = 12345;
    int rv = L->get_logs(L->ctx, lo, max_n, max_bytes, out, &n);
    ck_assert_msg(rv == 0, "get_logs(%llu, %zu, %zu) = %s",
                  (unsigned long long)lo, max_n, max_bytes, craft_err_name(rv));
    ck_assert_msg(n == want_n,
                  "get_logs(%llu, %zu, %zu) returned %zu entries, want %zu",
                  (unsigned long long)lo, max_n, max_bytes, n, want_n);
    for (size_t i = 0; i < n; i++) {
        uint64_t term = lo + i < split ? term_before : term_from;
        ck_assert_msg(entry_matches(&out[i], lo + i, term),
                      "get_logs(%llu): entry %zu (index %llu) differs from "
                      "what was stored (index %llu term %llu)",
                      (unsigned long long)lo, i,
                      (unsigned long long)out[i].index,
                      (unsigned long long)(lo + i), (unsigned long long)term);
        craft_log_release(&out[i]);
    }
    free(out);
}

static void expect_logs(uint64_t lo, size_t max_n, size_t max_bytes,
                        size_t want_n, uint64_t term)
{
    expect_logs_split(lo, max_n, max_bytes, want_n, 0, term, term);
}

static void expect_logs_missing(uint64_t lo)
{
    craft_log_t out[4];
    size_t n = 12345;
    int rv = L->get_logs(L->ctx, lo, 4, SIZE_MAX, out, &n);
    ck_assert_msg(rv == CRAFT_ENOTFOUND, "get_logs(%llu) = %s, want CRAFT_ENOTFOUND",
                  (unsigned long long)lo, craft_err_name(rv));
    ck_assert_uint_eq(n, 0);
}

/* ---- tests ---- */

START_TEST(test_empty)
{
    expect_bounds(0, 0);
    expect_missing(1);
    expect_missing(1000);
}
END_TEST

START_TEST(test_store_get_single)
{
    store_range(L, 1, 1, 1);
    expect_bounds(1, 1);
    expect_entry(1, 1);
    expect_missing(2);
}
END_TEST

START_TEST(test_store_get_batches)
{
    store_range(L, 1, 100, 1);
    expect_bounds(1, 100);
    store_range(L, 101, 50, 2);
    store_range(L, 151, 1, 3);
    expect_bounds(1, 151);
    for (uint64_t i = 1; i <= 151; i++) {
        expect_entry(i, i <= 100 ? 1 : i <= 150 ? 2 : 3);
    }
    expect_missing(152);
}
END_TEST

START_TEST(test_store_zero_entries)
{
    ck_assert_int_eq(L->store_logs(L->ctx, NULL, 0), 0);
    expect_bounds(0, 0);
    store_range(L, 1, 3, 1);
    craft_log_t dummy;
    memset(&dummy, 0, sizeof dummy);
    ck_assert_int_eq(L->store_logs(L->ctx, &dummy, 0), 0);
    expect_bounds(1, 3);
}
END_TEST

/* Stores one entry with explicit fields and checks it comes back byte-exact. */
static void roundtrip(uint64_t idx, craft_log_type_t type, const void *data,
                      size_t len, const void *ext, size_t ext_len, int64_t at)
{
    craft_log_t e = {.index = idx,
                     .term = 7,
                     .type = type,
                     .data = data,
                     .len = len,
                     .ext = ext,
                     .ext_len = ext_len,
                     .appended_at_ns = at};
    ck_assert_int_eq(L->store_logs(L->ctx, &e, 1), 0);
    craft_log_t got;
    memset(&got, 0, sizeof got);
    ck_assert_int_eq(L->get_log(L->ctx, idx, &got), 0);
    ck_assert_uint_eq(got.index, idx);
    ck_assert_uint_eq(got.term, 7);
    ck_assert_int_eq(got.type, type);
    ck_assert_uint_eq(got.len, len);
    ck_assert_uint_eq(got.ext_len, ext_len);
    ck_assert_int_eq(got.appended_at_ns, at);
    if (len == 0) {
        ck_assert_ptr_null(got.data);
    } else {
        ck_assert_ptr_nonnull(got.data);
        ck_assert_ptr_ne(got.data, data); /* a copy, not the caller's buffer */
        ck_assert_int_eq(memcmp(got.data, data, len), 0);
    }
    if (ext_len == 0) {
        ck_assert_ptr_null(got.ext);
    } else {
        ck_assert_ptr_nonnull(got.ext);
        ck_assert_int_eq(memcmp(got.ext, ext, ext_len), 0);
    }
    craft_log_release(&got);
}

START_TEST(test_roundtrip_types)
{
    static const craft_log_type_t types[] = {
        CRAFT_LOG_COMMAND, CRAFT_LOG_NOOP, CRAFT_LOG_ADD_PEER_DEPRECATED,
        CRAFT_LOG_REMOVE_PEER_DEPRECATED, CRAFT_LOG_BARRIER,
        CRAFT_LOG_CONFIGURATION};
    static const int64_t times[] = {0, 1, 1700000000123456789LL, INT64_MAX, -5,
                                    42};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "type-%zu", i);
        roundtrip(i + 1, types[i], buf, (size_t)n, "x", 1, times[i]);
    }
    expect_bounds(1, 6);
}
END_TEST

START_TEST(test_roundtrip_empty)
{
    /* Empty data and ext, given as NULL or as a non-NULL pointer with
     * length 0: both come back as NULL/0. */
    roundtrip(1, CRAFT_LOG_NOOP, NULL, 0, NULL, 0, 0);
    roundtrip(2, CRAFT_LOG_COMMAND, "ignored", 0, "ignored", 0, 5);
    roundtrip(3, CRAFT_LOG_COMMAND, NULL, 0, "ext only", 8, 6);
    roundtrip(4, CRAFT_LOG_COMMAND, "data only", 9, NULL, 0, 7);
}
END_TEST

START_TEST(test_roundtrip_binary)
{
    unsigned char all[256];
    for (size_t i = 0; i < sizeof all; i++) {
        all[i] = (unsigned char)i;
    }
    unsigned char zeros[64];
    memset(zeros, 0, sizeof zeros);
    roundtrip(1, CRAFT_LOG_COMMAND, all, sizeof all, zeros, sizeof zeros, 1);
    roundtrip(2, CRAFT_LOG_COMMAND, zeros, sizeof zeros, all, sizeof all, 2);
    roundtrip(3, CRAFT_LOG_COMMAND, "\0", 1, "\0\0", 2, 3);
}
END_TEST

START_TEST(test_roundtrip_large)
{
    size_t len = 1 << 20;
    size_t ext_len = 64 << 10;
    unsigned char *d = malloc(len);
    unsigned char *x = malloc(ext_len);
    ck_assert_ptr_nonnull(d);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < len; i++) {
        d[i] = (unsigned char)(i * 2654435761u >> 13);
    }
    for (size_t i = 0; i < ext_len; i++) {
        x[i] = (unsigned char)(i ^ (i >> 8));
    }
    roundtrip(1, CRAFT_LOG_COMMAND, d, len, x, ext_len, 99);
    roundtrip(2, CRAFT_LOG_COMMAND, d, len, NULL, 0, 100);
    free(d);
    free(x);
}
END_TEST

START_TEST(test_get_copies_are_independent)
{
    store_range(L, 1, 1, 1);
    store_range(L, 5, 1, 1); /* 5 % 97 = 5 data bytes */
    craft_log_t a;
    craft_log_t b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    ck_assert_int_eq(L->get_log(L->ctx, 5, &a), 0);
    ck_assert_int_eq(L->get_log(L->ctx, 5, &b), 0);
    ck_assert_ptr_ne(a.data, b.data);
    memset((void *)a.data, 0xAA, a.len); /* caller owns its copy */
    craft_log_release(&a);
    ck_assert_ptr_null(a.data);
    ck_assert(entry_matches(&b, 5, 1));
    craft_log_release(&b);
    expect_entry(5, 1);
}
END_TEST

START_TEST(test_get_missing)
{
    store_range(L, 10, 5, 1);
    expect_bounds(10, 14);
    expect_missing(1);
    expect_missing(9);
    expect_missing(15);
    expect_missing(UINT64_MAX);
    expect_entry(10, 1);
    expect_entry(14, 1);
}
END_TEST

START_TEST(test_gap)
{
    /* hashicorp stores accept entries that do not follow the last one (a
     * follower after a snapshot restore). */
    store_range(L, 1, 5, 1);
    store_range(L, 10, 3, 2);
    expect_bounds(1, 12);
    for (uint64_t i = 1; i <= 5; i++) {
        expect_entry(i, 1);
    }
    for (uint64_t i = 6; i <= 9; i++) {
        expect_missing(i);
    }
    for (uint64_t i = 10; i <= 12; i++) {
        expect_entry(i, 2);
    }
    /* Deleting the old prefix up to the gap leaves the new part. */
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 9), 0);
    expect_bounds(10, 12);
    expect_missing(5);
}
END_TEST

START_TEST(test_delete_prefix)
{
    store_range(L, 1, 20, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 5), 0);
    expect_bounds(6, 20);
    for (uint64_t i = 1; i <= 5; i++) {
        expect_missing(i);
    }
    for (uint64_t i = 6; i <= 20; i++) {
        expect_entry(i, 1);
    }
    /* Again, starting below the first index (compaction from 0). */
    ck_assert_int_eq(L->delete_range(L->ctx, 0, 10), 0);
    expect_bounds(11, 20);
    expect_missing(10);
    expect_entry(11, 1);
    /* Appending after compaction continues normally. */
    store_range(L, 21, 5, 2);
    expect_bounds(11, 25);
    expect_entry(25, 2);
}
END_TEST

START_TEST(test_delete_suffix)
{
    store_range(L, 1, 20, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 15, 20), 0);
    expect_bounds(1, 14);
    expect_entry(14, 1);
    expect_missing(15);
    expect_missing(20);
    /* A range reaching past the last index deletes what exists. */
    ck_assert_int_eq(L->delete_range(L->ctx, 10, 1000), 0);
    expect_bounds(1, 9);
    expect_entry(9, 1);
    expect_missing(10);
}
END_TEST

START_TEST(test_delete_all)
{
    store_range(L, 1, 20, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 20), 0);
    expect_bounds(0, 0);
    expect_missing(1);
    expect_missing(20);
    /* Deleting from an empty store is fine. */
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 20), 0);
    expect_bounds(0, 0);
    /* A fresh start at any index (e.g. after a snapshot). */
    store_range(L, 100, 3, 4);
    expect_bounds(100, 102);
    expect_entry(100, 4);
}
END_TEST

START_TEST(test_delete_single)
{
    store_range(L, 1, 3, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 3, 3), 0);
    expect_bounds(1, 2);
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 1), 0);
    expect_bounds(2, 2);
    expect_entry(2, 1);
}
END_TEST

START_TEST(test_overwrite_suffix)
{
    /* Raft §5.3: a follower deletes a conflicting suffix and stores the
     * leader's entries in its place. */
    store_range(L, 1, 10, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 6, 10), 0);
    store_range(L, 6, 3, 2);
    expect_bounds(1, 8);
    for (uint64_t i = 1; i <= 5; i++) {
        expect_entry(i, 1);
    }
    for (uint64_t i = 6; i <= 8; i++) {
        expect_entry(i, 2);
    }
    expect_missing(9);
    expect_missing(10);
}
END_TEST

START_TEST(test_many_entries)
{
    const uint64_t n = 10000;
    for (uint64_t i = 1; i <= n; i += 100) {
        store_range(L, i, 100, 1 + i / 1000);
    }
    expect_bounds(1, n);
    for (uint64_t i = 1; i <= n; i++) {
        expect_entry(i, 1 + ((i - 1) / 100 * 100 + 1) / 1000);
    }
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 5000), 0);
    expect_bounds(5001, n);
    ck_assert_int_eq(L->delete_range(L->ctx, 9001, n), 0);
    expect_bounds(5001, 9000);
    expect_missing(5000);
    expect_missing(9001);
    expect_entry(5001, 1 + 5001 / 1000);
    expect_entry(9000, 1 + 8901 / 1000);
}
END_TEST

/* ---- get_logs (optional; every check is skipped when not offered) ---- */

START_TEST(test_get_logs_full_range)
{
    if (!offers_get_logs()) {
        return;
    }
    store_range(L, 1, 100, 1);
    store_range(L, 101, 50, 2);
    expect_logs(1, 100, SIZE_MAX, 100, 1);
    expect_logs(101, 50, SIZE_MAX, 50, 2);
    /* Across the two batches, and past the last index (stops there). */
    expect_logs_split(1, 150, SIZE_MAX, 150, 101, 1, 2);
    expect_logs_split(90, SIZE_MAX, SIZE_MAX, 61, 101, 1, 2);
    expect_logs(120, 1000, SIZE_MAX, 31, 2);
    expect_logs(150, 64, SIZE_MAX, 1, 2);
    /* Copies owned by the caller, independent of each other. */
    craft_log_t a[3];
    craft_log_t b[3];
    size_t na = 0;
    size_t nb = 0;
    ck_assert_int_eq(L->get_logs(L->ctx, 5, 3, SIZE_MAX, a, &na), 0);
    ck_assert_int_eq(L->get_logs(L->ctx, 5, 3, SIZE_MAX, b, &nb), 0);
    ck_assert_uint_eq(na, 3);
    ck_assert_uint_eq(nb, 3);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_ptr_ne(a[i].data, b[i].data);
        memset((void *)a[i].data, 0xAA, a[i].len);
        craft_log_release(&a[i]);
        ck_assert_ptr_null(a[i].data);
        ck_assert(entry_matches(&b[i], 5 + i, 1));
        craft_log_release(&b[i]);
    }
    expect_logs(5, 3, SIZE_MAX, 3, 1);
}
END_TEST

START_TEST(test_get_logs_max_n)
{
    if (!offers_get_logs()) {
        return;
    }
    store_range(L, 1, 50, 1);
    expect_logs(1, 1, SIZE_MAX, 1, 1);
    expect_logs(5, 10, SIZE_MAX, 10, 1);
    expect_logs(41, 10, SIZE_MAX, 10, 1);
    expect_logs(41, 11, SIZE_MAX, 10, 1);
    /* Nothing is written past out[max_n - 1]. */
    craft_log_t out[4];
    memset(out, 0x5A, sizeof out);
    size_t n = 0;
    ck_assert_int_eq(L->get_logs(L->ctx, 10, 3, SIZE_MAX, out, &n), 0);
    ck_assert_uint_eq(n, 3);
    unsigned char canary[sizeof out[3]];
    memset(canary, 0x5A, sizeof canary);
    ck_assert_int_eq(memcmp(&out[3], canary, sizeof canary), 0);
    for (size_t i = 0; i < n; i++) {
        craft_log_release(&out[i]);
    }
    /* max_n == 0 and NULL pointers are errors, never a crash. */
    n = 12345;
    ck_assert_int_lt(L->get_logs(L->ctx, 1, 0, SIZE_MAX, out, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_lt(L->get_logs(L->ctx, 1, 4, SIZE_MAX, NULL, &n), 0);
    ck_assert_int_lt(L->get_logs(L->ctx, 1, 4, SIZE_MAX, out, NULL), 0);
}
END_TEST

START_TEST(test_get_logs_max_bytes)
{
    if (!offers_get_logs()) {
        return;
    }
    store_range(L, 1, 700, 1);
    /* At least one entry, however small the budget. */
    expect_logs(50, 64, 0, 1, 1);
    expect_logs(96, 64, 1, 1, 1); /* 96 + 5 bytes > 1 */
    /* Entries whose sizes add up to exactly the budget are all returned;
     * one byte less and the last of them is not. */
    size_t exact = 0;
    for (uint64_t i = 10; i < 15; i++) {
        exact += size_of(i);
    }
    ck_assert_uint_gt(size_of(15), 0);
    expect_logs(10, 64, exact, 5, 1);
    expect_logs(10, 64, exact - 1, 4, 1);
    /* An entry of 0 bytes (679: 679 % 97 == 679 % 7 == 0) fits in what is
     * left of a used-up budget; the 2-byte one after it does not. */
    ck_assert_uint_eq(size_of(679), 0);
    ck_assert_uint_eq(size_of(680), 2);
    expect_logs(678, 64, size_of(678), 2, 1);
    expect_logs(679, 64, 0, 1, 1);
    expect_logs(679, 64, 1, 1, 1);
    expect_logs(679, 64, 2, 2, 1);
    /* A sweep of budgets and starts against the rule computed here. */
    static const size_t budgets[] = {1, 50, 100, 101, 500, 1000, 4096, 5000};
    static const uint64_t starts[] = {1, 2, 37, 96, 97, 98, 200, 670, 700};
    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
            uint64_t lo = starts[k];
            expect_logs(lo, 64, budgets[b],
                        expected_count(lo, 700, 64, budgets[b]), 1);
            expect_logs(lo, 7, budgets[b],
                        expected_count(lo, 700, 7, budgets[b]), 1);
        }
    }
}
END_TEST

START_TEST(test_get_logs_missing)
{
    if (!offers_get_logs()) {
        return;
    }
    expect_logs_missing(1); /* empty store */
    store_range(L, 1, 5, 1);
    store_range(L, 10, 3, 2);
    expect_logs_missing(0);
    expect_logs_missing(6);
    expect_logs_missing(9);
    expect_logs_missing(13);
    expect_logs_missing(UINT64_MAX);
    expect_logs_missing((uint64_t)INT64_MAX + 1);
    /* A read stops at the first missing index, never skips the gap. */
    expect_logs(1, 100, SIZE_MAX, 5, 1);
    expect_logs(4, 100, SIZE_MAX, 2, 1);
    expect_logs(10, 100, SIZE_MAX, 3, 2);
}
END_TEST

START_TEST(test_get_logs_after_delete)
{
    if (!offers_get_logs()) {
        return;
    }
    store_range(L, 1, 30, 1);
    expect_logs(1, 64, SIZE_MAX, 30, 1); /* e.g. a cache fills here */
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 10), 0);
    expect_logs_missing(1);
    expect_logs_missing(10);
    expect_logs(11, 64, SIZE_MAX, 20, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 25, 30), 0);
    expect_logs(11, 64, SIZE_MAX, 14, 1);
    expect_logs_missing(25);
    /* Raft §5.3: a conflicting suffix replaced by the leader's entries. */
    ck_assert_int_eq(L->delete_range(L->ctx, 20, 24), 0);
    store_range(L, 20, 8, 2);
    expect_logs_split(11, 64, SIZE_MAX, 17, 20, 1, 2);
    expect_logs(20, 64, SIZE_MAX, 8, 2);
    ck_assert_int_eq(L->delete_range(L->ctx, 0, UINT64_MAX), 0);
    expect_logs_missing(11);
    expect_logs_missing(20);
}
END_TEST

START_TEST(test_get_logs_large)
{
    if (!offers_get_logs()) {
        return;
    }
    enum { BIG = 1 << 20, N = 4 };
    unsigned char *d = malloc(BIG);
    ck_assert_ptr_nonnull(d);
    craft_log_t es[N];
    for (size_t i = 0; i < N; i++) {
        for (size_t j = 0; j < BIG; j++) {
            d[j] = (unsigned char)((j * 2654435761u >> 13) + i);
        }
        es[i] = (craft_log_t){.index = 1 + i,
                              .term = 3,
                              .type = CRAFT_LOG_COMMAND,
                              .data = d,
                              .len = BIG,
                              .ext = "ext",
                              .ext_len = 3,
                              .appended_at_ns = 42};
        ck_assert_int_eq(L->store_logs(L->ctx, &es[i], 1), 0);
    }
    static const struct {
        size_t max_bytes;
        size_t want;
    } cases[] = {
        {SIZE_MAX, N},
        {0, 1},
        {BIG + 3, 1},
        {2 * (BIG + 3) - 1, 1},
        {2 * (BIG + 3), 2},
        {3 * (BIG + 3) + 100, 3},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        craft_log_t out[N];
        size_t n = 0;
        ck_assert_int_eq(L->get_logs(L->ctx, 1, N, cases[c].max_bytes, out, &n), 0);
        ck_assert_msg(n == cases[c].want, "max_bytes %zu: %zu entries, want %zu",
                      cases[c].max_bytes, n, cases[c].want);
        for (size_t i = 0; i < n; i++) {
            ck_assert_uint_eq(out[i].index, 1 + i);
            ck_assert_uint_eq(out[i].term, 3);
            ck_assert_uint_eq(out[i].len, BIG);
            ck_assert_uint_eq(out[i].ext_len, 3);
            ck_assert_int_eq(memcmp(out[i].ext, "ext", 3), 0);
            const unsigned char *p = out[i].data;
            for (size_t j = 0; j < BIG; j += 4093) {
                ck_assert_uint_eq(p[j], (unsigned char)((j * 2654435761u >> 13) + i));
            }
            ck_assert_uint_eq(p[BIG - 1],
                              (unsigned char)(((BIG - 1) * 2654435761u >> 13) + i));
            craft_log_release(&out[i]);
        }
    }
    free(d);
}
END_TEST

/* ---- concurrency: readers while a writer appends ---- */

enum { CONC_ENTRIES = 3000, CONC_BATCH = 7, CONC_READERS = 3 };

typedef struct conc {
    craft_log_store_t *l;
    atomic_bool writer_done;
    atomic_int errors;
    atomic_uint_fast64_t reads;
} conc_t;

static void *conc_writer(void *arg)
{
    conc_t *c = arg;
    uint64_t next = 1;
    while (next <= CONC_ENTRIES) {
        size_t n = CONC_BATCH;
        if (next + n - 1 > CONC_ENTRIES) {
            n = (size_t)(CONC_ENTRIES - next + 1);
        }
        craft_log_t *es = calloc(n, sizeof *es);
        for (size_t i = 0; i < n; i++) {
            make_entry(&es[i], next + i, 3);
        }
        if (c->l->store_logs(c->l->ctx, es, n) != 0) {
            atomic_fetch_add(&c->errors, 1);
        }
        free_entries(es, n);
        next += n;
    }
    atomic_store(&c->writer_done, true);
    return NULL;
}

static void *conc_reader(void *arg)
{
    conc_t *c = arg;
    uint64_t seed = (uint64_t)(uintptr_t)&seed;
    for (;;) {
        bool done = atomic_load(&c->writer_done);
        uint64_t first = 0;
        uint64_t last = 0;
        /* last before first: once something is stored, nothing is ever
         * deleted in this test, so first must then be 1. */
        if (c->l->last_index(c->l->ctx, &last) != 0 ||
            c->l->first_index(c->l->ctx, &first) != 0) {
            atomic_fetch_add(&c->errors, 1);
            return NULL;
        }
        if (last > 0) {
            /* No deletes happen: everything up to `last` must be there. */
            if (first != 1) {
                atomic_fetch_add(&c->errors, 1);
            }
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            uint64_t picks[2] = {last, 1 + (seed >> 33) % last};
            for (int k = 0; k < 2; k++) {
                craft_log_t got;
                memset(&got, 0, sizeof got);
                if (c->l->get_log(c->l->ctx, picks[k], &got) != 0 ||
                    !entry_matches(&got, picks[k], 3)) {
                    atomic_fetch_add(&c->errors, 1);
                }
                craft_log_release(&got);
                atomic_fetch_add(&c->reads, 1);
            }
            if (c->l->get_logs != NULL) {
                /* Everything up to `last` is there: a read from the
                 * random pick returns min(16, last - pick + 1) entries at
                 * least (more if the writer got further meanwhile). */
                craft_log_t got[16];
                size_t n = 0;
                uint64_t lo = picks[1];
                size_t least = last - lo + 1 < 16 ? (size_t)(last - lo + 1) : 16;
                if (c->l->get_logs(c->l->ctx, lo, 16, SIZE_MAX, got, &n) != 0 ||
                    n < least || n > 16) {
                    atomic_fetch_add(&c->errors, 1);
                    n = 0;
                }
                for (size_t i = 0; i < n; i++) {
                    if (!entry_matches(&got[i], lo + i, 3)) {
                        atomic_fetch_add(&c->errors, 1);
                    }
                    craft_log_release(&got[i]);
                }
                atomic_fetch_add(&c->reads, 1);
            }
        }
        if (done) { /* this pass saw the final state */
            if (last != CONC_ENTRIES) {
                atomic_fetch_add(&c->errors, 1);
            }
            return NULL;
        }
    }
}

START_TEST(test_concurrent_readers)
{
    conc_t c = {.l = L};
    atomic_init(&c.writer_done, false);
    atomic_init(&c.errors, 0);
    atomic_init(&c.reads, 0);
    pthread_t readers[CONC_READERS];
    pthread_t writer;
    for (int i = 0; i < CONC_READERS; i++) {
        ck_assert_int_eq(pthread_create(&readers[i], NULL, conc_reader, &c), 0);
    }
    ck_assert_int_eq(pthread_create(&writer, NULL, conc_writer, &c), 0);
    pthread_join(writer, NULL);
    for (int i = 0; i < CONC_READERS; i++) {
        pthread_join(readers[i], NULL);
    }
    int errors = atomic_load(&c.errors);
    uint64_t reads = atomic_load(&c.reads);
    ck_assert_int_eq(errors, 0);
    ck_assert_uint_gt(reads, 0);
    expect_bounds(1, CONC_ENTRIES);
}
END_TEST

/* ---- commit-tracking extension (hashicorp #613) ---- */

static bool offers_commit_tracking(void)
{
    ck_assert_msg((L->stage_commit_index == NULL) == (L->get_commit_index == NULL),
                  "stage_commit_index and get_commit_index must be offered together");
    return L->stage_commit_index != NULL;
}

static uint64_t commit_index(void)
{
    uint64_t c = 12345;
    ck_assert_int_eq(L->get_commit_index(L->ctx, &c), 0);
    return c;
}

START_TEST(test_commit_index)
{
    if (!offers_commit_tracking()) {
        return; /* the consistency check above is this store's test */
    }
    ck_assert_uint_eq(commit_index(), 0);
    ck_assert_int_eq(L->stage_commit_index(L->ctx, 3), 0);
    store_range(L, 1, 5, 1);
    ck_assert_uint_eq(commit_index(), 3);
    /* The persisted value does not change by itself. */
    store_range(L, 6, 1, 1);
    ck_assert_uint_eq(commit_index(), 3);
    ck_assert_int_eq(L->stage_commit_index(L->ctx, 6), 0);
    store_range(L, 7, 2, 1);
    ck_assert_uint_eq(commit_index(), 6);
    /* Restaging before a store keeps the newest value. */
    ck_assert_int_eq(L->stage_commit_index(L->ctx, 7), 0);
    ck_assert_int_eq(L->stage_commit_index(L->ctx, 8), 0);
    store_range(L, 9, 1, 1);
    ck_assert_uint_eq(commit_index(), 8);
    expect_bounds(1, 9);
}
END_TEST

START_TEST(test_commit_index_reopen)
{
    if (!offers_commit_tracking()) {
        return;
    }
    ck_assert_int_eq(L->stage_commit_index(L->ctx, 4), 0);
    store_range(L, 1, 5, 1);
    ck_assert_uint_eq(commit_index(), 4);
    reopen();
    ck_assert(offers_commit_tracking());
    ck_assert_uint_eq(commit_index(), 4);
    expect_bounds(1, 5);
}
END_TEST

/* ---- persistence ---- */

START_TEST(test_persistence)
{
    store_range(L, 1, 50, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 10), 0);
    ck_assert_int_eq(L->delete_range(L->ctx, 41, 50), 0);
    store_range(L, 41, 5, 2);
    reopen();
    expect_bounds(11, 45);
    expect_missing(10);
    expect_missing(46);
    for (uint64_t i = 11; i <= 40; i++) {
        expect_entry(i, 1);
    }
    for (uint64_t i = 41; i <= 45; i++) {
        expect_entry(i, 2);
    }
    if (offers_get_logs()) {
        expect_logs_split(11, 64, SIZE_MAX, 35, 41, 1, 2);
        expect_logs_missing(10);
    }
    /* The reopened store keeps working. */
    store_range(L, 46, 5, 3);
    expect_bounds(11, 50);
    reopen();
    expect_bounds(11, 50);
    expect_entry(50, 3);
}
END_TEST

START_TEST(test_persistence_empty)
{
    store_range(L, 1, 5, 1);
    ck_assert_int_eq(L->delete_range(L->ctx, 1, 5), 0);
    reopen();
    expect_bounds(0, 0);
    expect_missing(1);
}
END_TEST

/* ---- bad arguments: an error, never a crash ---- */

START_TEST(test_invalid_args)
{
    store_range(L, 1, 3, 1);
    craft_log_t got;
    memset(&got, 0, sizeof got);
    ck_assert_int_lt(L->first_index(L->ctx, NULL), 0);
    ck_assert_int_lt(L->last_index(L->ctx, NULL), 0);
    ck_assert_int_lt(L->get_log(L->ctx, 1, NULL), 0);
    ck_assert_int_lt(L->get_log(L->ctx, 0, &got), 0);
    ck_assert_int_lt(L->store_logs(L->ctx, NULL, 3), 0);

    /* An entry with index 0, or a length without a buffer, is refused and
     * the batch it belongs to leaves the store unchanged. */
    craft_log_t bad[2];
    make_entry(&bad[0], 4, 1);
    memset(&bad[1], 0, sizeof bad[1]);
    bad[1].index = 0;
    bad[1].term = 1;
    ck_assert_int_lt(L->store_logs(L->ctx, bad, 2), 0);
    bad[1].index = 5;
    bad[1].len = 10; /* data NULL */
    ck_assert_int_lt(L->store_logs(L->ctx, bad, 2), 0);
    bad[1].len = 0;
    bad[1].ext_len = 10; /* ext NULL */
    ck_assert_int_lt(L->store_logs(L->ctx, bad, 2), 0);
    free((void *)bad[0].data);
    free((void *)bad[0].ext);
    expect_bounds(1, 3);
    expect_missing(4);

    /* An inverted range is either refused or a no-op. */
    int rv = L->delete_range(L->ctx, 3, 1);
    ck_assert_int_le(rv, 0);
    expect_bounds(1, 3);
    for (uint64_t i = 1; i <= 3; i++) {
        expect_entry(i, 1);
    }
    if (L->get_commit_index != NULL) {
        ck_assert_int_lt(L->get_commit_index(L->ctx, NULL), 0);
    }
}
END_TEST

Suite *craft_conformance_log_store_suite(const craft_conformance_store_factory_t *f)
{
    static char name[128];
    factory = f;
    snprintf(name, sizeof name, "%s log store", f->name ? f->name : "?");
    Suite *s = suite_create(name);
    if (s == NULL) {
        return NULL;
    }

    TCase *basic = tcase_create("basic");
    tcase_add_checked_fixture(basic, setup, teardown);
    tcase_add_test(basic, test_empty);
    tcase_add_test(basic, test_store_get_single);
    tcase_add_test(basic, test_store_get_batches);
    tcase_add_test(basic, test_store_zero_entries);
    tcase_add_test(basic, test_get_copies_are_independent);
    tcase_add_test(basic, test_get_missing);
    tcase_add_test(basic, test_gap);
    tcase_add_test(basic, test_invalid_args);
    suite_add_tcase(s, basic);

    TCase *rt = tcase_create("roundtrip");
    tcase_add_checked_fixture(rt, setup, teardown);
    tcase_add_test(rt, test_roundtrip_types);
    tcase_add_test(rt, test_roundtrip_empty);
    tcase_add_test(rt, test_roundtrip_binary);
    tcase_add_test(rt, test_roundtrip_large);
    suite_add_tcase(s, rt);

    TCase *del = tcase_create("delete");
    tcase_add_checked_fixture(del, setup, teardown);
    tcase_add_test(del, test_delete_prefix);
    tcase_add_test(del, test_delete_suffix);
    tcase_add_test(del, test_delete_all);
    tcase_add_test(del, test_delete_single);
    tcase_add_test(del, test_overwrite_suffix);
    suite_add_tcase(s, del);

    TCase *range = tcase_create("get_logs");
    tcase_add_checked_fixture(range, setup, teardown);
    tcase_set_timeout(range, 60);
    tcase_add_test(range, test_get_logs_full_range);
    tcase_add_test(range, test_get_logs_max_n);
    tcase_add_test(range, test_get_logs_max_bytes);
    tcase_add_test(range, test_get_logs_missing);
    tcase_add_test(range, test_get_logs_after_delete);
    tcase_add_test(range, test_get_logs_large);
    suite_add_tcase(s, range);

    TCase *load = tcase_create("load");
    tcase_add_checked_fixture(load, setup, teardown);
    tcase_set_timeout(load, 120);
    tcase_add_test(load, test_many_entries);
    tcase_add_test(load, test_concurrent_readers);
    suite_add_tcase(s, load);

    TCase *commit = tcase_create("commit_tracking");
    tcase_add_checked_fixture(commit, setup, teardown);
    tcase_add_test(commit, test_commit_index);
    if (f->reopen != NULL) {
        tcase_add_test(commit, test_commit_index_reopen);
    }
    suite_add_tcase(s, commit);

    if (f->reopen != NULL) {
        TCase *p = tcase_create("persistence");
        tcase_add_checked_fixture(p, setup, teardown);
        tcase_add_test(p, test_persistence);
        tcase_add_test(p, test_persistence_empty);
        suite_add_tcase(s, p);
    }
    return s;
}
