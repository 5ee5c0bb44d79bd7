/* lib/window.c: the ring of the newest log entries shared between threads. */
#include <check.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"
#include "lib/entry.h"
#include "lib/window.h"

/* ---- entries whose payload is derived from their index ---- */

static size_t data_len(uint64_t index)
{
    return (size_t)(index % 7) + 1;
}

static size_t ext_len(uint64_t index)
{
    return index % 3 == 0 ? 2 : 0;
}

static size_t entry_bytes(uint64_t index)
{
    return data_len(index) + ext_len(index);
}

/* Builds entry `index` without Check asserts (usable off the main thread). */
static craft__entry_t *mk_raw(uint64_t index, uint64_t term)
{
    unsigned char data[8], ext[2];
    for (size_t i = 0; i < sizeof data; i++) {
        data[i] = (unsigned char)(index * 31 + i);
    }
    ext[0] = 'x';
    ext[1] = (unsigned char)index;
    craft__entry_t *e = craft__entry_new(CRAFT_LOG_COMMAND, data, data_len(index), ext,
                                         ext_len(index));
    if (e == NULL) {
        abort();
    }
    e->log.index = index;
    e->log.term = term;
    return e;
}

static craft__entry_t *mk(uint64_t index, uint64_t term)
{
    return mk_raw(index, term);
}

/* true when `e` is the entry made by mk(index, ...). */
static bool is_entry(const craft__entry_t *e, uint64_t index)
{
    if (e == NULL || e->log.index != index || e->log.len != data_len(index) ||
        e->log.ext_len != ext_len(index)) {
        return false;
    }
    const unsigned char *d = e->log.data;
    for (size_t i = 0; i < e->log.len; i++) {
        if (d[i] != (unsigned char)(index * 31 + i)) {
            return false;
        }
    }
    return e->log.ext_len == 0 || ((const unsigned char *)e->log.ext)[1] == (unsigned char)index;
}

/* Appends mk(lo..hi) (the window keeps its own references). */
static void append_range(craft__window_t *w, uint64_t lo, uint64_t hi, uint64_t term)
{
    for (uint64_t i = lo; i <= hi; i++) {
        craft__entry_t *e = mk(i, term);
        ck_assert_int_eq(craft__window_append(w, e), 0);
        craft__entry_unref(e);
    }
}

static size_t bytes_of(uint64_t lo, uint64_t hi)
{
    size_t b = 0;
    for (uint64_t i = lo; i <= hi; i++) {
        b += entry_bytes(i);
    }
    return b;
}

/* The window holds exactly lo..hi (empty when lo > hi). */
static void expect_window(craft__window_t *w, uint64_t lo, uint64_t hi)
{
    if (lo > hi) {
        ck_assert_uint_eq(craft__window_len(w), 0);
        ck_assert_uint_eq(craft__window_first(w), 0);
        ck_assert_uint_eq(craft__window_bytes(w), 0);
        return;
    }
    ck_assert_uint_eq(craft__window_len(w), hi - lo + 1);
    ck_assert_uint_eq(craft__window_first(w), lo);
    ck_assert_uint_eq(craft__window_bytes(w), bytes_of(lo, hi));
    for (uint64_t i = lo; i <= hi; i++) {
        craft__entry_t *e = craft__window_get(w, i);
        ck_assert_msg(is_entry(e, i), "entry %llu wrong", (unsigned long long)i);
        craft__entry_unref(e);
    }
    ck_assert_ptr_null(craft__window_get(w, lo - 1));
    ck_assert_ptr_null(craft__window_get(w, hi + 1));
}

/* ---- basics ---- */

START_TEST(test_empty)
{
    craft__window_t w;
    craft__window_init(&w);
    expect_window(&w, 1, 0);
    ck_assert_ptr_null(craft__window_get(&w, 0));
    ck_assert_ptr_null(craft__window_get(&w, 1));
    craft__entry_t *out[4];
    ck_assert_uint_eq(craft__window_get_range(&w, 0, 4, out), 0);
    ck_assert_uint_eq(craft__window_get_range(&w, 1, 4, out), 0);
    craft__window_trim_to(&w, 10);
    craft__window_truncate_from(&w, 1);
    craft__window_clear(&w);
    expect_window(&w, 1, 0);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_append_contiguous_get)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 1, 10, 1);
    expect_window(&w, 1, 10);
    ck_assert_ptr_null(craft__window_get(&w, 0));
    ck_assert_ptr_null(craft__window_get(&w, 11));
    ck_assert_ptr_null(craft__window_get(&w, UINT64_MAX));
    craft__entry_t *e = craft__window_get(&w, 7);
    ck_assert_uint_eq(e->log.term, 1);
    craft__entry_unref(e);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_starts_at_any_index)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 1000, 1009, 3);
    expect_window(&w, 1000, 1009);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_get_range)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 5, 20, 1);
    craft__entry_t *out[32];
    size_t n = craft__window_get_range(&w, 5, 32, out);
    ck_assert_uint_eq(n, 16);
    for (size_t i = 0; i < n; i++) {
        ck_assert(is_entry(out[i], 5 + i));
        craft__entry_unref(out[i]);
    }
    n = craft__window_get_range(&w, 10, 3, out);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < n; i++) {
        ck_assert(is_entry(out[i], 10 + i));
        craft__entry_unref(out[i]);
    }
    n = craft__window_get_range(&w, 20, 8, out);
    ck_assert_uint_eq(n, 1);
    ck_assert(is_entry(out[0], 20));
    craft__entry_unref(out[0]);
    ck_assert_uint_eq(craft__window_get_range(&w, 21, 8, out), 0);
    ck_assert_uint_eq(craft__window_get_range(&w, 4, 8, out), 0); /* before first */
    ck_assert_uint_eq(craft__window_get_range(&w, 0, 8, out), 0);
    ck_assert_uint_eq(craft__window_get_range(&w, 6, 0, out), 0);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_truncate_from)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 1, 10, 1);
    craft__window_truncate_from(&w, 11); /* beyond the last: nothing */
    expect_window(&w, 1, 10);
    craft__window_truncate_from(&w, 6);
    expect_window(&w, 1, 5);
    /* The conflicting suffix is rewritten with a new term, contiguously. */
    append_range(&w, 6, 8, 2);
    expect_window(&w, 1, 8);
    craft__entry_t *e = craft__window_get(&w, 6);
    ck_assert_uint_eq(e->log.term, 2);
    craft__entry_unref(e);
    e = craft__window_get(&w, 5);
    ck_assert_uint_eq(e->log.term, 1);
    craft__entry_unref(e);
    craft__window_truncate_from(&w, 1); /* all of it */
    expect_window(&w, 1, 0);
    append_range(&w, 1, 3, 3);
    craft__window_truncate_from(&w, 0);
    expect_window(&w, 1, 0);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_trim_to)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 1, 10, 1);
    craft__window_trim_to(&w, 0);
    expect_window(&w, 1, 10);
    craft__window_trim_to(&w, 3);
    expect_window(&w, 4, 10);
    craft__window_trim_to(&w, 3); /* idempotent */
    expect_window(&w, 4, 10);
    /* Contiguous appends continue after a trim. */
    append_range(&w, 11, 12, 1);
    expect_window(&w, 4, 12);
    craft__window_trim_to(&w, 12);
    expect_window(&w, 1, 0);
    /* Empty: the next entry starts the window wherever it is. */
    append_range(&w, 13, 14, 1);
    expect_window(&w, 13, 14);
    craft__window_trim_to(&w, 100);
    expect_window(&w, 1, 0);
    append_range(&w, 5, 6, 1);
    expect_window(&w, 5, 6);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_non_contiguous_restarts)
{
    craft__window_t w;
    craft__window_init(&w);
    craft__entry_t *held = mk(3, 1);
    ck_assert_int_eq(craft__window_append(&w, held), 0);
    ck_assert_int_eq(atomic_load(&held->refs), 2);
    append_range(&w, 4, 5, 1);
    expect_window(&w, 3, 5);
    /* A gap: the window restarts at 10 and drops its old references. */
    append_range(&w, 10, 10, 1);
    expect_window(&w, 10, 10);
    ck_assert_int_eq(atomic_load(&held->refs), 1);
    append_range(&w, 11, 12, 1);
    expect_window(&w, 10, 12);
    /* Going backwards restarts too. */
    append_range(&w, 2, 2, 2);
    expect_window(&w, 2, 2);
    /* So does repeating the last index. */
    append_range(&w, 3, 3, 2);
    append_range(&w, 3, 3, 3);
    expect_window(&w, 3, 3);
    craft__entry_t *e = craft__window_get(&w, 3);
    ck_assert_uint_eq(e->log.term, 3);
    craft__entry_unref(e);
    craft__entry_unref(held);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_clear)
{
    craft__window_t w;
    craft__window_init(&w);
    craft__entry_t *held = mk(2, 1);
    append_range(&w, 1, 1, 1);
    craft__window_append(&w, held);
    append_range(&w, 3, 300, 1);
    ck_assert_int_eq(atomic_load(&held->refs), 2);
    craft__window_clear(&w);
    expect_window(&w, 1, 0);
    ck_assert_int_eq(atomic_load(&held->refs), 1);
    craft__window_clear(&w);
    append_range(&w, 7, 9, 1);
    expect_window(&w, 7, 9);
    craft__entry_unref(held);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_bytes)
{
    craft__window_t w;
    craft__window_init(&w);
    ck_assert_uint_eq(craft__window_bytes(&w), 0);
    craft__entry_t *empty = craft__entry_new(CRAFT_LOG_NOOP, NULL, 0, NULL, 0);
    empty->log.index = 1;
    craft__window_append(&w, empty);
    craft__entry_unref(empty);
    ck_assert_uint_eq(craft__window_bytes(&w), 0);
    craft__entry_t *big = craft__entry_new(CRAFT_LOG_COMMAND, "0123456789", 10, "ab", 2);
    big->log.index = 2;
    craft__window_append(&w, big);
    craft__entry_unref(big);
    ck_assert_uint_eq(craft__window_bytes(&w), 12);
    append_range(&w, 3, 50, 1);
    ck_assert_uint_eq(craft__window_bytes(&w), 12 + bytes_of(3, 50));
    craft__window_trim_to(&w, 2);
    ck_assert_uint_eq(craft__window_bytes(&w), bytes_of(3, 50));
    craft__window_truncate_from(&w, 41);
    ck_assert_uint_eq(craft__window_bytes(&w), bytes_of(3, 40));
    craft__window_trim_to(&w, 10);
    ck_assert_uint_eq(craft__window_bytes(&w), bytes_of(11, 40));
    append_range(&w, 100, 101, 1); /* restart */
    ck_assert_uint_eq(craft__window_bytes(&w), bytes_of(100, 101));
    craft__window_clear(&w);
    ck_assert_uint_eq(craft__window_bytes(&w), 0);
    craft__window_destroy(&w);
}
END_TEST

/* ---- ring growth and wrap-around ---- */

START_TEST(test_growth)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 1, 256, 1);
    expect_window(&w, 1, 256);
    append_range(&w, 257, 257, 1); /* first growth */
    expect_window(&w, 1, 257);
    append_range(&w, 258, 3000, 1);
    expect_window(&w, 1, 3000);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_wrap_around)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 1, 200, 1);
    craft__window_trim_to(&w, 150);
    /* 50 held from slot 150 on: 200 more wrap around the 256-slot ring. */
    append_range(&w, 201, 400, 1);
    expect_window(&w, 151, 400);
    craft__entry_t *out[300];
    size_t n = craft__window_get_range(&w, 151, 300, out);
    ck_assert_uint_eq(n, 250);
    for (size_t i = 0; i < n; i++) {
        ck_assert(is_entry(out[i], 151 + i));
        craft__entry_unref(out[i]);
    }
    /* Growing while wrapped keeps the order. */
    append_range(&w, 401, 700, 1);
    expect_window(&w, 151, 700);
    /* Truncate across the wrap point, then refill. */
    craft__window_truncate_from(&w, 300);
    expect_window(&w, 151, 299);
    append_range(&w, 300, 320, 2);
    expect_window(&w, 151, 320);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_sliding_many)
{
    /* A steady state like the leader's: append, and trim behind. The ring
     * wraps many times without growing past what it holds. */
    craft__window_t w;
    craft__window_init(&w);
    uint64_t last = 0;
    for (int round = 0; round < 200; round++) {
        append_range(&w, last + 1, last + 97, 1);
        last += 97;
        craft__window_trim_to(&w, last - 60);
        ck_assert_uint_eq(craft__window_len(&w), 60);
        ck_assert_uint_eq(craft__window_first(&w), last - 59);
    }
    ck_assert_uint_le(w.cap, 256);
    expect_window(&w, last - 59, last);
    craft__window_destroy(&w);
}
END_TEST

/* ---- references ---- */

START_TEST(test_refcounts)
{
    craft__window_t w;
    craft__window_init(&w);
    craft__entry_t *e = mk(1, 1);
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    craft__window_append(&w, e);
    ck_assert_int_eq(atomic_load(&e->refs), 2);
    craft__entry_t *g = craft__window_get(&w, 1);
    ck_assert_ptr_eq(g, e);
    ck_assert_int_eq(atomic_load(&e->refs), 3);
    craft__entry_t *out[1];
    ck_assert_uint_eq(craft__window_get_range(&w, 1, 1, out), 1);
    ck_assert_int_eq(atomic_load(&e->refs), 4);
    craft__entry_unref(out[0]);
    craft__entry_unref(g);
    ck_assert_int_eq(atomic_load(&e->refs), 2);
    craft__window_trim_to(&w, 1);
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    craft__entry_unref(e);
    craft__window_destroy(&w);
}
END_TEST

START_TEST(test_entry_outlives_window)
{
    craft__window_t w;
    craft__window_init(&w);
    append_range(&w, 1, 300, 1);
    craft__entry_t *kept = craft__window_get(&w, 123);
    craft__entry_t *out[5];
    ck_assert_uint_eq(craft__window_get_range(&w, 296, 5, out), 5);
    craft__window_destroy(&w);
    /* The window's references are gone; ours still hold (ASan checks). */
    ck_assert_int_eq(atomic_load(&kept->refs), 1);
    ck_assert(is_entry(kept, 123));
    for (size_t i = 0; i < 5; i++) {
        ck_assert(is_entry(out[i], 296 + i));
        craft__entry_unref(out[i]);
    }
    craft__entry_unref(kept);

    /* Same after trim and truncate. */
    craft__window_init(&w);
    append_range(&w, 1, 10, 1);
    craft__entry_t *a = craft__window_get(&w, 2);
    craft__entry_t *b = craft__window_get(&w, 9);
    craft__window_trim_to(&w, 5);
    craft__window_truncate_from(&w, 8);
    ck_assert(is_entry(a, 2));
    ck_assert(is_entry(b, 9));
    ck_assert_int_eq(atomic_load(&a->refs), 1);
    craft__entry_unref(a);
    craft__entry_unref(b);
    craft__window_destroy(&w);
}
END_TEST

/* ---- concurrency ---- */

#define WRITER_LAST 40000

typedef struct {
    craft__window_t *w;
    atomic_int done;
    atomic_int readers_started;
    int n_readers;
    atomic_ullong last_appended;
} shared_t;

typedef struct {
    shared_t *s;
    uint64_t seed;
    uint64_t gets, hits, ranges;
    int bad;
} reader_t;

static void *writer_main(void *arg)
{
    shared_t *s = arg;
    /* Make sure the readers overlap the writes. */
    while (atomic_load(&s->readers_started) < s->n_readers) {
        sched_yield();
    }
    for (uint64_t i = 1; i <= WRITER_LAST; i++) {
        craft__entry_t *e = mk_raw(i, 1);
        craft__window_append(s->w, e);
        craft__entry_unref(e);
        atomic_store(&s->last_appended, i);
        if (i % 64 == 0 && i > 200) {
            craft__window_trim_to(s->w, i - 200);
        }
        if (i % 1000 == 999) {
            /* Conflict: drop the last 10 and rewrite them in a new term. */
            craft__window_truncate_from(s->w, i - 9);
            for (uint64_t j = i - 9; j <= i; j++) {
                craft__entry_t *r = mk_raw(j, 2);
                craft__window_append(s->w, r);
                craft__entry_unref(r);
            }
        }
    }
    atomic_store(&s->done, 1);
    return NULL;
}

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void *reader_main(void *arg)
{
    reader_t *r = arg;
    shared_t *s = r->s;
    craft__entry_t *out[16];
    while (!atomic_load(&s->done)) {
        uint64_t last = atomic_load(&s->last_appended);
        uint64_t lo = last > 300 ? last - 300 : 1;
        uint64_t idx = lo + xorshift(&r->seed) % 310;
        craft__entry_t *e = craft__window_get(s->w, idx);
        r->gets++;
        if (e != NULL) {
            r->hits++;
            if (!is_entry(e, idx)) {
                r->bad++;
            }
            craft__entry_unref(e);
        }
        size_t n = craft__window_get_range(s->w, idx, 16, out);
        r->ranges += n > 0;
        for (size_t i = 0; i < n; i++) {
            if (!is_entry(out[i], idx + i)) {
                r->bad++;
            }
            craft__entry_unref(out[i]);
        }
        (void)craft__window_len(s->w);
        (void)craft__window_bytes(s->w);
        (void)craft__window_first(s->w);
        if (r->gets == 1) {
            atomic_fetch_add(&s->readers_started, 1);
        }
    }
    return NULL;
}

START_TEST(test_concurrent_readers_writer)
{
    enum { NR = 4 };
    craft__window_t w;
    craft__window_init(&w);
    shared_t s;
    s.w = &w;
    atomic_init(&s.done, 0);
    atomic_init(&s.last_appended, 0);
    atomic_init(&s.readers_started, 0);
    s.n_readers = NR;
    reader_t rd[NR];
    pthread_t rth[NR], wth;
    for (int i = 0; i < NR; i++) {
        rd[i] = (reader_t){.s = &s, .seed = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1)};
        ck_assert_int_eq(pthread_create(&rth[i], NULL, reader_main, &rd[i]), 0);
    }
    ck_assert_int_eq(pthread_create(&wth, NULL, writer_main, &s), 0);
    pthread_join(wth, NULL);
    for (int i = 0; i < NR; i++) {
        pthread_join(rth[i], NULL);
        ck_assert_int_eq(rd[i].bad, 0);
        ck_assert_uint_gt(rd[i].gets, 0);
    }
    /* Final state: the writer trimmed to 40000-200 at its last multiple of 64. */
    uint64_t last_trim = (WRITER_LAST / 64) * 64 - 200;
    expect_window(&w, last_trim + 1, WRITER_LAST);
    craft__window_destroy(&w);
}
END_TEST

static Suite *window_suite(void)
{
    Suite *s = suite_create("window");
    TCase *tc = tcase_create("basics");
    tcase_add_test(tc, test_empty);
    tcase_add_test(tc, test_append_contiguous_get);
    tcase_add_test(tc, test_starts_at_any_index);
    tcase_add_test(tc, test_get_range);
    tcase_add_test(tc, test_truncate_from);
    tcase_add_test(tc, test_trim_to);
    tcase_add_test(tc, test_non_contiguous_restarts);
    tcase_add_test(tc, test_clear);
    tcase_add_test(tc, test_bytes);
    suite_add_tcase(s, tc);

    tc = tcase_create("ring");
    tcase_add_test(tc, test_growth);
    tcase_add_test(tc, test_wrap_around);
    tcase_add_test(tc, test_sliding_many);
    suite_add_tcase(s, tc);

    tc = tcase_create("refs");
    tcase_add_test(tc, test_refcounts);
    tcase_add_test(tc, test_entry_outlives_window);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_concurrent_readers_writer);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(window_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
