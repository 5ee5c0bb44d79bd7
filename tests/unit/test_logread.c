/* lib/logread.c: runs of entries from the window and the LogStore. Each
 * test runs twice: over a store offering get_logs and over the same store
 * with get_logs hidden (craft__entry_at loop). The node is a zeroed craft_t
 * with only what the reader uses: the window, the store and the logger. */
#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"
#include "craft/inmem.h"
#include "lib/entry.h"
#include "lib/logread.h"
#include "lib/raft.h"
#include "lib/window.h"

/* ---- entries: index i of term t has size_of(i) bytes "i:t..." ---- */

static size_t size_of(uint64_t i)
{
    return 4 + (size_t)(i % 5) * 10; /* 4..44 */
}

static void fill(char *buf, uint64_t i, uint64_t t)
{
    size_t len = size_of(i);
    memset(buf, '.', len);
    char head[32];
    int n = snprintf(head, sizeof head, "%llu:%llu", (unsigned long long)i,
                     (unsigned long long)t);
    memcpy(buf, head, (size_t)n < len ? (size_t)n : len);
}

static bool matches(const craft__entry_t *e, uint64_t i, uint64_t t)
{
    char want[64];
    fill(want, i, t);
    return e->log.index == i && e->log.term == t && e->log.len == size_of(i) &&
           memcmp(e->log.data, want, e->log.len) == 0;
}

/* ---- a store that counts reads and can misbehave ---- */

typedef struct spy {
    craft_log_store_t vt;
    craft_log_store_t *inner;
    craft_stable_store_t *stable;
    atomic_int gets;
    atomic_int ranges;
    uint64_t fail_at;  /* a read reaching this index fails with CRAFT_EIO */
    uint64_t wrong_at; /* this index comes back labelled index + 1 */
} spy_t;

static int spy_first(void *ctx, uint64_t *i)
{
    spy_t *s = ctx;
    return s->inner->first_index(s->inner->ctx, i);
}

static int spy_last(void *ctx, uint64_t *i)
{
    spy_t *s = ctx;
    return s->inner->last_index(s->inner->ctx, i);
}

static int spy_get(void *ctx, uint64_t i, craft_log_t *out)
{
    spy_t *s = ctx;
    atomic_fetch_add(&s->gets, 1);
    if (s->fail_at != 0 && i == s->fail_at) {
        return CRAFT_EIO;
    }
    int rv = s->inner->get_log(s->inner->ctx, i, out);
    if (rv == 0 && s->wrong_at != 0 && i == s->wrong_at) {
        out->index++;
    }
    return rv;
}

static int spy_get_logs(void *ctx, uint64_t lo, size_t max_n, size_t max_bytes,
                        craft_log_t *out, size_t *n)
{
    spy_t *s = ctx;
    atomic_fetch_add(&s->ranges, 1);
    int rv = s->inner->get_logs(s->inner->ctx, lo, max_n, max_bytes, out, n);
    if (rv != 0) {
        return rv;
    }
    if (s->fail_at >= lo && s->fail_at < lo + *n) {
        for (size_t i = 0; i < *n; i++) {
            craft_log_release(&out[i]);
        }
        *n = 0;
        return CRAFT_EIO;
    }
    if (s->wrong_at >= lo && s->wrong_at < lo + *n) {
        out[s->wrong_at - lo].index++;
    }
    return 0;
}

static int spy_store(void *ctx, const craft_log_t *l, size_t n)
{
    spy_t *s = ctx;
    return s->inner->store_logs(s->inner->ctx, l, n);
}

static int spy_delete(void *ctx, uint64_t a, uint64_t b)
{
    spy_t *s = ctx;
    return s->inner->delete_range(s->inner->ctx, a, b);
}

static void spy_close(void *ctx)
{
    spy_t *s = ctx;
    s->inner->close(s->inner->ctx);
    s->stable->close(s->stable->ctx);
}

/* ---- the node ---- */

static spy_t spy;
static craft_t *r;
static bool ranged; /* the store offers get_logs (set per test run) */

static void setup_with(bool with_get_logs)
{
    memset(&spy, 0, sizeof spy);
    ck_assert_int_eq(craft_inmem_store_new(&spy.inner, &spy.stable), 0);
    spy.vt = (craft_log_store_t){
        .ctx = &spy,
        .first_index = spy_first,
        .last_index = spy_last,
        .get_log = spy_get,
        .store_logs = spy_store,
        .delete_range = spy_delete,
        .get_logs = with_get_logs ? spy_get_logs : NULL,
        .close = spy_close,
    };
    ranged = with_get_logs;
    r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    craft__window_init(&r->window);
    r->logs = &spy.vt;
    craft__logger_init(&r->log, NULL, "test");
}

static void setup(void)
{
    setup_with(true);
}

static void setup_plain(void)
{
    setup_with(false);
}

static void teardown(void)
{
    craft__window_destroy(&r->window);
    free(r);
    spy.vt.close(&spy);
}

static void store(uint64_t from, uint64_t to, uint64_t t)
{
    for (uint64_t i = from; i <= to; i++) {
        char buf[64];
        fill(buf, i, t);
        craft_log_t e = {.index = i, .term = t, .data = buf, .len = size_of(i)};
        ck_assert_int_eq(spy.vt.store_logs(&spy, &e, 1), 0);
    }
}

static void window(uint64_t from, uint64_t to, uint64_t t)
{
    for (uint64_t i = from; i <= to; i++) {
        char buf[64];
        fill(buf, i, t);
        craft_log_t l = {.index = i, .term = t, .data = buf, .len = size_of(i)};
        craft__entry_t *e = craft__entry_from_log(&l);
        ck_assert_ptr_nonnull(e);
        ck_assert_int_eq(craft__window_append(&r->window, e), 0);
        craft__entry_unref(e);
    }
}

static int store_reads(void)
{
    return atomic_load(&spy.gets) + atomic_load(&spy.ranges);
}

/* read(lo, want, max_bytes) returns `want_n` entries lo.., of term
 * term_before below `split` and term_from from it on. */
static void expect_read_split(uint64_t lo, size_t want, size_t max_bytes,
                              size_t want_n, uint64_t split,
                              uint64_t term_before, uint64_t term_from)
{
    craft__entry_t *ents[256];
    ck_assert_uint_le(want, 256);
    size_t n = 12345;
    int rv = craft__read_entries(r, lo, want, max_bytes, ents, &n);
    ck_assert_msg(rv == 0, "read(%llu, %zu, %zu) = %s", (unsigned long long)lo,
                  want, max_bytes, craft_err_name(rv));
    ck_assert_msg(n == want_n, "read(%llu, %zu, %zu) = %zu entries, want %zu",
                  (unsigned long long)lo, want, max_bytes, n, want_n);
    for (size_t i = 0; i < n; i++) {
        uint64_t t = lo + i < split ? term_before : term_from;
        ck_assert_msg(matches(ents[i], lo + i, t),
                      "read(%llu): entry %zu is index %llu term %llu, want "
                      "index %llu term %llu",
                      (unsigned long long)lo, i,
                      (unsigned long long)ents[i]->log.index,
                      (unsigned long long)ents[i]->log.term,
                      (unsigned long long)(lo + i), (unsigned long long)t);
        craft__entry_unref(ents[i]);
    }
}

static void expect_read(uint64_t lo, size_t want, size_t max_bytes,
                        size_t want_n, uint64_t term)
{
    expect_read_split(lo, want, max_bytes, want_n, 0, term, term);
}

static void expect_read_error(uint64_t lo, size_t want, int err)
{
    craft__entry_t *ents[256];
    size_t n = 12345;
    int rv = craft__read_entries(r, lo, want, SIZE_MAX, ents, &n);
    ck_assert_msg(rv == err, "read(%llu) = %s, want %s", (unsigned long long)lo,
                  craft_err_name(rv), craft_err_name(err));
    ck_assert_uint_eq(n, 0);
}

/* The window's entry `i` is referenced by the window alone. */
static void expect_window_refs_only(uint64_t i)
{
    craft__entry_t *e = craft__window_get(&r->window, i);
    ck_assert_ptr_nonnull(e);
    int refs = atomic_load(&e->refs);
    ck_assert_msg(refs == 2, "entry %llu has %d references, want 2 (window + "
                  "this lookup)", (unsigned long long)i, refs);
    craft__entry_unref(e);
}

/* ---- tests ---- */

START_TEST(test_store_only)
{
    store(1, 100, 1);
    expect_read(1, 64, SIZE_MAX, 64, 1);
    if (ranged) {
        ck_assert_int_eq(atomic_load(&spy.ranges), 1); /* one call for 64 */
        ck_assert_int_eq(atomic_load(&spy.gets), 0);
    } else {
        ck_assert_int_eq(atomic_load(&spy.gets), 64);
    }
    expect_read(90, 64, SIZE_MAX, 11, 1); /* the run ends at 100 */
    expect_read(1, 200, SIZE_MAX, 100, 1); /* more than one chunk of 64 */
    expect_read(100, 1, SIZE_MAX, 1, 1);
    size_t n = 12345;
    ck_assert_int_eq(craft__read_entries(r, 5, 0, SIZE_MAX, NULL, &n), 0);
    ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(test_window_only)
{
    window(50, 60, 2);
    expect_read(50, 11, SIZE_MAX, 11, 2);
    ck_assert_int_eq(store_reads(), 0);
    expect_read(55, 3, SIZE_MAX, 3, 2);
    ck_assert_int_eq(store_reads(), 0);
    /* Past the window's end the store is asked (it has nothing more). */
    expect_read(55, 64, SIZE_MAX, 6, 2);
    for (uint64_t i = 50; i <= 60; i++) {
        expect_window_refs_only(i);
    }
}
END_TEST

/* The store up to the window, the window from there on, even when the
 * store also holds those indexes (the window's entry wins, as in
 * craft__entry_at: the store's copy may be stale or not yet written). */
START_TEST(test_store_then_window)
{
    store(1, 60, 1);
    window(50, 60, 2);
    expect_read_split(40, 64, SIZE_MAX, 21, 50, 1, 2);
    expect_read_split(49, 2, SIZE_MAX, 2, 50, 1, 2);
    expect_read(1, 49, SIZE_MAX, 49, 1);
    /* Longer than one get_logs chunk before the window. */
    store(61, 300, 1);
    window(61, 300, 2);
    craft__window_trim_to(&r->window, 199);
    expect_read_split(1, 256, SIZE_MAX, 256, 200, 1, 2);
}
END_TEST

static size_t expected_count(uint64_t lo, uint64_t last, size_t want,
                             size_t max_bytes)
{
    size_t k = 0;
    size_t bytes = 0;
    while (k < want && lo + k <= last) {
        size_t sz = size_of(lo + k);
        if (k > 0 && bytes + sz > max_bytes) {
            break;
        }
        bytes += sz;
        k++;
    }
    return k;
}

START_TEST(test_max_bytes)
{
    store(1, 80, 1);
    window(61, 100, 2);
    ck_assert_uint_eq(size_of(55), 4);
    ck_assert_uint_eq(size_of(54), 44);
    expect_read(54, 64, 0, 1, 1); /* at least one entry */
    expect_read(54, 64, 47, 1, 1); /* 44 + 4 > 47 */
    expect_read(54, 64, 48, 2, 1);
    static const size_t budgets[] = {1, 30, 100, 150, 299, 300, 301, 1000};
    static const uint64_t starts[] = {1, 40, 55, 60, 61, 62, 90, 100};
    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++) {
            uint64_t lo = starts[s];
            expect_read_split(lo, 64, budgets[b],
                              expected_count(lo, 100, 64, budgets[b]), 61, 1, 2);
        }
    }
    for (uint64_t i = 61; i <= 100; i++) {
        expect_window_refs_only(i);
    }
}
END_TEST

/* An entry `lo` over the budget on its own is the whole read, even when
 * the window ends right after it and the store holds what follows. */
START_TEST(test_first_entry_over_budget)
{
    store(1, 10, 1);
    window(9, 9, 2);
    expect_read(9, 64, 1, 1, 2);
    ck_assert_int_eq(store_reads(), 0);
    expect_read(8, 64, 1, 1, 1);
}
END_TEST

START_TEST(test_missing)
{
    expect_read_error(1, 8, CRAFT_ENOTFOUND); /* empty */
    store(1, 30, 1);
    expect_read_error(0, 8, CRAFT_ENOTFOUND);
    expect_read_error(31, 8, CRAFT_ENOTFOUND);
    ck_assert_int_eq(spy.vt.delete_range(&spy, 1, 10), 0); /* compacted */
    expect_read_error(5, 8, CRAFT_ENOTFOUND);
    expect_read(11, 64, SIZE_MAX, 20, 1);
    /* Between a compacted store and a window that starts later. */
    window(40, 45, 2);
    expect_read_error(35, 8, CRAFT_ENOTFOUND);
    expect_read(25, 64, SIZE_MAX, 6, 1); /* 25..30, then a hole */
}
END_TEST

START_TEST(test_wrong_index_is_corrupt)
{
    store(1, 30, 1);
    spy.wrong_at = 12;
    expect_read_error(10, 8, CRAFT_ECORRUPT);
    expect_read_error(12, 8, CRAFT_ECORRUPT);
    expect_read(1, 11, SIZE_MAX, 11, 1);
}
END_TEST

/* A store error anywhere in the read fails it whole, with every reference
 * given back (window entries included; LeakSanitizer checks the store's). */
START_TEST(test_store_error_releases)
{
    window(1, 5, 2);
    store(6, 30, 1);
    spy.fail_at = 9;
    expect_read_error(1, 20, CRAFT_EIO);
    for (uint64_t i = 1; i <= 5; i++) {
        expect_window_refs_only(i);
    }
    expect_read_split(1, 8, SIZE_MAX, 8, 6, 2, 1);
    spy.fail_at = 0;
    expect_read_split(1, 20, SIZE_MAX, 20, 6, 2, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("logread");
    static const struct {
        const char *name;
        void (*setup)(void);
    } modes[] = {{"get_logs", setup}, {"get_log loop", setup_plain}};
    for (size_t m = 0; m < 2; m++) {
        TCase *tc = tcase_create(modes[m].name);
        tcase_add_checked_fixture(tc, modes[m].setup, teardown);
        tcase_add_test(tc, test_store_only);
        tcase_add_test(tc, test_window_only);
        tcase_add_test(tc, test_store_then_window);
        tcase_add_test(tc, test_max_bytes);
        tcase_add_test(tc, test_first_entry_over_budget);
        tcase_add_test(tc, test_missing);
        tcase_add_test(tc, test_wrong_index_is_corrupt);
        tcase_add_test(tc, test_store_error_releases);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
