/* Log cache behaviour the conformance suite cannot see: which reads are
 * served from the cache, invalidation by delete_range and by failed writes,
 * forwarding of the commit extension, close leaving the backing store open,
 * and concurrent readers. The backing store here is a small fake that counts
 * calls and can fail on demand. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "craft/log_cache.h"

enum { FAKE_MAX = 4096 };

typedef struct fake {
    craft_log_store_t store;
    pthread_mutex_t mu;
    craft_log_t *e[FAKE_MAX + 1];
    atomic_int gets;
    atomic_int ranges; /* get_logs calls */
    atomic_int stages;
    uint64_t fail_get_at; /* get_log of this index: CRAFT_EIO (0: never) */
    int fail_store_after; /* -1: never; k: store k entries, then CRAFT_EIO */
    bool closed;
} fake_t;

static void fake_drop(fake_t *f, uint64_t i)
{
    if (f->e[i] != NULL) {
        craft_log_release(f->e[i]);
        free(f->e[i]);
        f->e[i] = NULL;
    }
}

static int fake_first(void *ctx, uint64_t *out)
{
    fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    *out = 0;
    for (uint64_t i = 1; i <= FAKE_MAX; i++) {
        if (f->e[i] != NULL) {
            *out = i;
            break;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static int fake_last(void *ctx, uint64_t *out)
{
    fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    *out = 0;
    for (uint64_t i = FAKE_MAX; i >= 1; i--) {
        if (f->e[i] != NULL) {
            *out = i;
            break;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static void *dup_buf(const void *p, size_t len)
{
    if (len == 0) {
        return NULL;
    }
    void *c = malloc(len);
    ck_assert_ptr_nonnull(c);
    memcpy(c, p, len);
    return c;
}

static int fake_get(void *ctx, uint64_t index, craft_log_t *out)
{
    fake_t *f = ctx;
    atomic_fetch_add(&f->gets, 1);
    if (index == 0 || index > FAKE_MAX) {
        return CRAFT_ENOTFOUND;
    }
    if (f->fail_get_at != 0 && index == f->fail_get_at) {
        return CRAFT_EIO;
    }
    pthread_mutex_lock(&f->mu);
    int rv = CRAFT_ENOTFOUND;
    if (f->e[index] != NULL) {
        *out = *f->e[index];
        out->data = dup_buf(f->e[index]->data, out->len);
        out->ext = dup_buf(f->e[index]->ext, out->ext_len);
        rv = 0;
    }
    pthread_mutex_unlock(&f->mu);
    return rv;
}

static int fake_get_logs(void *ctx, uint64_t lo, size_t max_n,
                         size_t max_bytes, craft_log_t *out, size_t *n)
{
    fake_t *f = ctx;
    atomic_fetch_add(&f->ranges, 1);
    *n = 0;
    pthread_mutex_lock(&f->mu);
    size_t k = 0;
    size_t bytes = 0;
    while (k < max_n && lo + k >= 1 && lo + k <= FAKE_MAX &&
           f->e[lo + k] != NULL) {
        size_t size = f->e[lo + k]->len + f->e[lo + k]->ext_len;
        if (k > 0 && bytes + size > max_bytes) { /* small sizes only */
            break;
        }
        bytes += size;
        out[k] = *f->e[lo + k];
        out[k].data = dup_buf(f->e[lo + k]->data, out[k].len);
        out[k].ext = dup_buf(f->e[lo + k]->ext, out[k].ext_len);
        k++;
    }
    pthread_mutex_unlock(&f->mu);
    *n = k;
    return k == 0 ? CRAFT_ENOTFOUND : 0;
}

static int fake_store(void *ctx, const craft_log_t *logs, size_t n)
{
    fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < n; i++) {
        if (f->fail_store_after >= 0 && (int)i == f->fail_store_after) {
            pthread_mutex_unlock(&f->mu);
            return CRAFT_EIO;
        }
        ck_assert_uint_le(logs[i].index, FAKE_MAX);
        fake_drop(f, logs[i].index);
        craft_log_t *c = malloc(sizeof *c);
        ck_assert_ptr_nonnull(c);
        *c = logs[i];
        c->data = dup_buf(logs[i].data, logs[i].len);
        c->ext = dup_buf(logs[i].ext, logs[i].ext_len);
        f->e[logs[i].index] = c;
    }
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static int fake_delete(void *ctx, uint64_t min, uint64_t max)
{
    fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    for (uint64_t i = min < 1 ? 1 : min; i <= max && i <= FAKE_MAX; i++) {
        fake_drop(f, i);
    }
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static int fake_stage(void *ctx, uint64_t index)
{
    fake_t *f = ctx;
    atomic_fetch_add(&f->stages, 1);
    return index == 999 ? CRAFT_EIO : 0;
}

static int fake_get_commit(void *ctx, uint64_t *index)
{
    *index = 77;
    return 0;
}

static void fake_close(void *ctx)
{
    fake_t *f = ctx;
    f->closed = true;
}

static fake_t *fake_new_with(bool commit_tracking, bool get_logs)
{
    fake_t *f = calloc(1, sizeof *f);
    ck_assert_ptr_nonnull(f);
    pthread_mutex_init(&f->mu, NULL);
    f->fail_store_after = -1;
    f->store = (craft_log_store_t){
        .ctx = f,
        .first_index = fake_first,
        .last_index = fake_last,
        .get_log = fake_get,
        .store_logs = fake_store,
        .delete_range = fake_delete,
        .stage_commit_index = commit_tracking ? fake_stage : NULL,
        .get_commit_index = commit_tracking ? fake_get_commit : NULL,
        .get_logs = get_logs ? fake_get_logs : NULL,
        .close = fake_close,
    };
    return f;
}

static fake_t *fake_new(bool commit_tracking)
{
    return fake_new_with(commit_tracking, false);
}

static void fake_free(fake_t *f)
{
    for (uint64_t i = 0; i <= FAKE_MAX; i++) {
        fake_drop(f, i);
    }
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* Entry i of term t carries "i:t" as data. */
static void store(craft_log_store_t *c, uint64_t from, uint64_t to, uint64_t t,
                  int want)
{
    size_t n = (size_t)(to - from + 1);
    craft_log_t *es = calloc(n, sizeof *es);
    char (*bufs)[32] = calloc(n, sizeof *bufs);
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(bufs[i], sizeof bufs[i], "%llu:%llu",
                           (unsigned long long)(from + i),
                           (unsigned long long)t);
        es[i] = (craft_log_t){.index = from + i,
                              .term = t,
                              .data = bufs[i],
                              .len = (size_t)len,
                              .ext = "x",
                              .ext_len = 1,
                              .appended_at_ns = 5};
    }
    ck_assert_int_eq(c->store_logs(c->ctx, es, n), want);
    free(es);
    free(bufs);
}

/* get_log(i) returns the entry of term t (and counts backing reads). */
static void expect(craft_log_store_t *c, uint64_t i, uint64_t t)
{
    craft_log_t e;
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(c->get_log(c->ctx, i, &e), 0);
    char want[32];
    int len = snprintf(want, sizeof want, "%llu:%llu", (unsigned long long)i,
                       (unsigned long long)t);
    ck_assert_uint_eq(e.index, i);
    ck_assert_uint_eq(e.term, t);
    ck_assert_uint_eq(e.len, (size_t)len);
    ck_assert_int_eq(memcmp(e.data, want, (size_t)len), 0);
    ck_assert_uint_eq(e.ext_len, 1);
    ck_assert_int_eq(memcmp(e.ext, "x", 1), 0);
    ck_assert_int_eq(e.appended_at_ns, 5);
    craft_log_release(&e);
}

START_TEST(test_hits_and_misses)
{
    fake_t *f = fake_new(true);
    craft_log_store_t *c;
    ck_assert_int_eq(craft_log_cache_new(4, &f->store, &c), 0);
    store(c, 1, 10, 1, 0);
    for (uint64_t i = 7; i <= 10; i++) {
        expect(c, i, 1); /* the last `capacity` entries are cached */
    }
    ck_assert_int_eq(atomic_load(&f->gets), 0);
    expect(c, 3, 1); /* evicted by 7: from the backing store */
    ck_assert_int_eq(atomic_load(&f->gets), 1);
    expect(c, 3, 1); /* misses are not cached */
    ck_assert_int_eq(atomic_load(&f->gets), 2);
    craft_log_t e;
    ck_assert_int_eq(c->get_log(c->ctx, 11, &e), CRAFT_ENOTFOUND);
    uint64_t first = 0, last = 0;
    ck_assert_int_eq(c->first_index(c->ctx, &first), 0);
    ck_assert_int_eq(c->last_index(c->ctx, &last), 0);
    ck_assert_uint_eq(first, 1);
    ck_assert_uint_eq(last, 10);
    c->close(c->ctx);
    ck_assert(!f->closed); /* the backing store stays open */
    fake_free(f);
}
END_TEST

START_TEST(test_delete_invalidates)
{
    fake_t *f = fake_new(true);
    craft_log_store_t *c;
    ck_assert_int_eq(craft_log_cache_new(8, &f->store, &c), 0);
    store(c, 1, 8, 1, 0);
    /* Raft §5.3: drop a conflicting suffix, store the leader's entries. */
    ck_assert_int_eq(c->delete_range(c->ctx, 5, 8), 0);
    craft_log_t e;
    ck_assert_int_eq(c->get_log(c->ctx, 6, &e), CRAFT_ENOTFOUND);
    store(c, 5, 6, 2, 0);
    expect(c, 5, 2);
    expect(c, 6, 2);
    expect(c, 4, 1);
    ck_assert_int_eq(c->get_log(c->ctx, 7, &e), CRAFT_ENOTFOUND);
    int gets = atomic_load(&f->gets);
    expect(c, 1, 1); /* untouched slots still hit */
    ck_assert_int_eq(atomic_load(&f->gets), gets);
    /* A range wider than the cache, reaching past the end. */
    ck_assert_int_eq(c->delete_range(c->ctx, 0, UINT64_MAX), 0);
    for (uint64_t i = 1; i <= 8; i++) {
        ck_assert_int_eq(c->get_log(c->ctx, i, &e), CRAFT_ENOTFOUND);
    }
    c->close(c->ctx);
    fake_free(f);
}
END_TEST

START_TEST(test_failed_store_invalidates)
{
    fake_t *f = fake_new(true);
    craft_log_store_t *c;
    ck_assert_int_eq(craft_log_cache_new(16, &f->store, &c), 0);
    store(c, 1, 4, 1, 0);
    /* The backing store writes two entries of the batch, then fails: the
     * cache must not keep serving term 1 for them. */
    f->fail_store_after = 2;
    store(c, 1, 4, 2, CRAFT_EIO);
    f->fail_store_after = -1;
    expect(c, 1, 2);
    expect(c, 2, 2);
    expect(c, 3, 1);
    expect(c, 4, 1);
    ck_assert_int_eq(atomic_load(&f->gets), 4);
    c->close(c->ctx);
    fake_free(f);
}
END_TEST

/* get_logs(lo, max_n, max_bytes) returns `want` entries lo.. of term t
 * (entries stored by store()). */
static void expect_range(craft_log_store_t *c, uint64_t lo, size_t max_n,
                         size_t max_bytes, size_t want, uint64_t t)
{
    craft_log_t out[64];
    ck_assert_uint_le(max_n, 64);
    size_t n = 12345;
    int rv = c->get_logs(c->ctx, lo, max_n, max_bytes, out, &n);
    ck_assert_msg(rv == 0, "get_logs(%llu) = %s", (unsigned long long)lo,
                  craft_err_name(rv));
    ck_assert_uint_eq(n, want);
    for (size_t i = 0; i < n; i++) {
        char w[32];
        int len = snprintf(w, sizeof w, "%llu:%llu",
                           (unsigned long long)(lo + i), (unsigned long long)t);
        ck_assert_uint_eq(out[i].index, lo + i);
        ck_assert_uint_eq(out[i].term, t);
        ck_assert_uint_eq(out[i].len, (size_t)len);
        ck_assert_int_eq(memcmp(out[i].data, w, (size_t)len), 0);
        ck_assert_uint_eq(out[i].ext_len, 1);
        ck_assert_int_eq(memcmp(out[i].ext, "x", 1), 0);
        craft_log_release(&out[i]);
    }
}

static int backing_reads(fake_t *f)
{
    return atomic_load(&f->gets) + atomic_load(&f->ranges);
}

/* Ranges served by the cache: every entry returned is cached, and the read
 * stops at max_n, at max_bytes or at the backing store's last index. */
START_TEST(test_get_logs_cached)
{
    for (int with = 0; with < 2; with++) {
        fake_t *f = fake_new_with(true, with);
        craft_log_store_t *c;
        ck_assert_int_eq(craft_log_cache_new(16, &f->store, &c), 0);
        ck_assert(c->get_logs != NULL); /* offered whatever the backing */
        store(c, 1, 10, 1, 0);
        expect_range(c, 1, 64, SIZE_MAX, 10, 1); /* ends at the last index */
        expect_range(c, 3, 4, SIZE_MAX, 4, 1);
        expect_range(c, 10, 64, SIZE_MAX, 1, 1);
        /* "3:1" + "x" = 4 bytes each: 8 bytes hold two, 11 still two. */
        expect_range(c, 3, 64, 8, 2, 1);
        expect_range(c, 3, 64, 11, 2, 1);
        expect_range(c, 3, 64, 0, 1, 1);
        ck_assert_int_eq(backing_reads(f), 0);
        /* After a suffix delete the new end is seen too. */
        ck_assert_int_eq(c->delete_range(c->ctx, 9, 10), 0);
        expect_range(c, 5, 64, SIZE_MAX, 4, 1);
        ck_assert_int_eq(backing_reads(f), 0);
        c->close(c->ctx);
        fake_free(f);
    }
}
END_TEST

/* Anything not wholly in the cache goes to the backing store, whole: its
 * get_logs once when offered, else one get_log per entry plus the one that
 * finds the end. */
START_TEST(test_get_logs_partly_cached)
{
    for (int with = 0; with < 2; with++) {
        fake_t *f = fake_new_with(true, with);
        craft_log_store_t *c;
        ck_assert_int_eq(craft_log_cache_new(4, &f->store, &c), 0);
        store(c, 1, 10, 1, 0); /* 7..10 cached */
        expect_range(c, 7, 64, SIZE_MAX, 4, 1);
        ck_assert_int_eq(backing_reads(f), 0);
        expect_range(c, 5, 64, SIZE_MAX, 6, 1); /* 5, 6 are not cached */
        if (with) {
            ck_assert_int_eq(atomic_load(&f->ranges), 1);
            ck_assert_int_eq(atomic_load(&f->gets), 0);
        } else {
            ck_assert_int_eq(atomic_load(&f->gets), 7);
        }
        c->close(c->ctx);
        fake_free(f);
    }
}
END_TEST

START_TEST(test_get_logs_uncached)
{
    for (int with = 0; with < 2; with++) {
        fake_t *f = fake_new_with(true, with);
        craft_log_store_t *c;
        ck_assert_int_eq(craft_log_cache_new(4, &f->store, &c), 0);
        store(c, 1, 20, 1, 0);
        expect_range(c, 1, 5, SIZE_MAX, 5, 1);
        expect_range(c, 2, 3, 8, 2, 1); /* budget honoured by the fallback */
        craft_log_t out[4];
        size_t n = 12345;
        ck_assert_int_eq(c->get_logs(c->ctx, 21, 4, SIZE_MAX, out, &n),
                         CRAFT_ENOTFOUND);
        ck_assert_uint_eq(n, 0);
        ck_assert_int_eq(c->get_logs(c->ctx, 0, 4, SIZE_MAX, out, &n),
                         CRAFT_ENOTFOUND);
        ck_assert_int_gt(backing_reads(f), 0);
        c->close(c->ctx);
        fake_free(f);
    }
}
END_TEST

/* A slot emptied in the middle of a cached run (a failed write of that
 * index) sends the read to the backing store, which still has term 1: the
 * cache must not stop at the hole as if it were the end of the log. */
START_TEST(test_get_logs_hole_is_not_the_end)
{
    for (int with = 0; with < 2; with++) {
        fake_t *f = fake_new_with(true, with);
        craft_log_store_t *c;
        ck_assert_int_eq(craft_log_cache_new(16, &f->store, &c), 0);
        store(c, 1, 10, 1, 0);
        f->fail_store_after = 0;
        store(c, 5, 5, 2, CRAFT_EIO); /* nothing written; slot 5 emptied */
        f->fail_store_after = -1;
        expect_range(c, 3, 64, SIZE_MAX, 8, 1);
        ck_assert_int_gt(backing_reads(f), 0);
        c->close(c->ctx);
        fake_free(f);
    }
}
END_TEST

/* The get_log fallback fails as a whole and frees what it had read. */
START_TEST(test_get_logs_fallback_error)
{
    fake_t *f = fake_new_with(true, false);
    craft_log_store_t *c;
    ck_assert_int_eq(craft_log_cache_new(4, &f->store, &c), 0);
    store(c, 1, 20, 1, 0);
    f->fail_get_at = 6;
    craft_log_t out[8];
    size_t n = 12345;
    ck_assert_int_eq(c->get_logs(c->ctx, 3, 8, SIZE_MAX, out, &n), CRAFT_EIO);
    ck_assert_uint_eq(n, 0);
    f->fail_get_at = 0;
    expect_range(c, 3, 8, SIZE_MAX, 8, 1);
    ck_assert_int_eq(c->get_logs(c->ctx, 3, 0, SIZE_MAX, out, &n), CRAFT_EINVAL);
    ck_assert_int_eq(c->get_logs(c->ctx, 3, 1, SIZE_MAX, NULL, &n), CRAFT_EINVAL);
    c->close(c->ctx);
    fake_free(f);
}
END_TEST

START_TEST(test_commit_forwarding)
{
    fake_t *f = fake_new(true);
    craft_log_store_t *c;
    ck_assert_int_eq(craft_log_cache_new(2, &f->store, &c), 0);
    ck_assert(c->stage_commit_index != NULL);
    ck_assert(c->get_commit_index != NULL);
    ck_assert_int_eq(c->stage_commit_index(c->ctx, 5), 0);
    ck_assert_int_eq(c->stage_commit_index(c->ctx, 999), CRAFT_EIO);
    ck_assert_int_eq(atomic_load(&f->stages), 2);
    uint64_t v = 0;
    ck_assert_int_eq(c->get_commit_index(c->ctx, &v), 0);
    ck_assert_uint_eq(v, 77);
    c->close(c->ctx);
    fake_free(f);

    f = fake_new(false);
    ck_assert_int_eq(craft_log_cache_new(2, &f->store, &c), 0);
    ck_assert(c->stage_commit_index == NULL);
    ck_assert(c->get_commit_index == NULL);
    c->close(c->ctx);
    fake_free(f);
}
END_TEST

START_TEST(test_bad_arguments)
{
    fake_t *f = fake_new(true);
    craft_log_store_t *c = NULL;
    ck_assert_int_eq(craft_log_cache_new(0, &f->store, &c), CRAFT_EINVAL);
    ck_assert_int_eq(craft_log_cache_new(4, NULL, &c), CRAFT_EINVAL);
    ck_assert_int_eq(craft_log_cache_new(4, &f->store, NULL), CRAFT_EINVAL);
    ck_assert_ptr_null(c);
    fake_free(f);
}
END_TEST

/* ---- readers during appends and compactions ---- */

enum { CONC_LAST = 4000, CONC_KEEP = 100 };

typedef struct conc {
    craft_log_store_t *c;
    atomic_uint_fast64_t last;  /* highest index stored */
    atomic_uint_fast64_t first; /* lowest index not deleted */
    atomic_bool done;
    atomic_int errors;
    atomic_int hits;
} conc_t;

static void *conc_reader(void *arg)
{
    conc_t *x = arg;
    uint64_t seed = 88172645463325252ULL;
    while (!atomic_load(&x->done)) {
        uint64_t last = atomic_load(&x->last);
        if (last == 0) {
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        uint64_t i = last - seed % 40;
        if (i == 0 || i > last) {
            continue;
        }
        craft_log_t e;
        memset(&e, 0, sizeof e);
        int rv = x->c->get_log(x->c->ctx, i, &e);
        uint64_t first_after = atomic_load(&x->first);
        if (rv == 0) {
            char want[32];
            int len = snprintf(want, sizeof want, "%llu:1",
                               (unsigned long long)i);
            if (e.index != i || e.len != (size_t)len ||
                memcmp(e.data, want, (size_t)len) != 0) {
                atomic_fetch_add(&x->errors, 1);
            }
            atomic_fetch_add(&x->hits, 1);
            craft_log_release(&e);
        } else if (rv != CRAFT_ENOTFOUND || i >= first_after) {
            /* Only entries being compacted away may be missing. */
            atomic_fetch_add(&x->errors, 1);
        }
    }
    return NULL;
}

START_TEST(test_concurrent)
{
    fake_t *f = fake_new(true);
    craft_log_store_t *c;
    ck_assert_int_eq(craft_log_cache_new(64, &f->store, &c), 0);
    conc_t x = {.c = c};
    atomic_init(&x.last, 0);
    atomic_init(&x.first, 1);
    atomic_init(&x.done, false);
    atomic_init(&x.errors, 0);
    atomic_init(&x.hits, 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, conc_reader, &x), 0);
    }
    for (uint64_t i = 1; i <= CONC_LAST; i += 8) {
        store(c, i, i + 7, 1, 0);
        atomic_store(&x.last, i + 7);
        if (i + 7 > 2 * CONC_KEEP && i % 64 == 1) {
            uint64_t upto = i + 7 - CONC_KEEP;
            /* Announce before deleting: a reader that finds an entry gone
             * must then see the new first index (it read `first` after its
             * get_log; announcing after the delete raced with that). */
            atomic_store(&x.first, upto + 1);
            ck_assert_int_eq(c->delete_range(c->ctx, 1, upto), 0);
        }
    }
    atomic_store(&x.done, true);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
    }
    ck_assert_int_eq(atomic_load(&x.errors), 0);
    ck_assert_int_gt(atomic_load(&x.hits), 0);
    c->close(c->ctx);
    fake_free(f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("log cache");
    TCase *tc = tcase_create("cache");
    tcase_add_test(tc, test_hits_and_misses);
    tcase_add_test(tc, test_delete_invalidates);
    tcase_add_test(tc, test_failed_store_invalidates);
    tcase_add_test(tc, test_commit_forwarding);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_concurrent);
    tcase_add_test(tc, test_get_logs_cached);
    tcase_add_test(tc, test_get_logs_partly_cached);
    tcase_add_test(tc, test_get_logs_uncached);
    tcase_add_test(tc, test_get_logs_hole_is_not_the_end);
    tcase_add_test(tc, test_get_logs_fallback_error);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
