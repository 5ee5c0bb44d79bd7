/* Conformance suite for snapshot stores (snapshot_conformance.h). */
#include "snapshot_conformance.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Check test functions take no arguments: each suite gets a slot, and a
 * checked fixture of that slot points `F` at its factory before each test
 * (in the forked child, or in process with CK_FORK=no). */
#define MAX_SLOTS 8
static craft_conformance_snapshot_factory_t slots[MAX_SLOTS];
static int n_slots;
static const craft_conformance_snapshot_factory_t *F;

#define SLOT_SETUP(k)                                                          \
    static void setup_##k(void) { F = &slots[k]; }
SLOT_SETUP(0)
SLOT_SETUP(1)
SLOT_SETUP(2)
SLOT_SETUP(3)
SLOT_SETUP(4)
SLOT_SETUP(5)
SLOT_SETUP(6)
SLOT_SETUP(7)
static void (*const slot_setup[MAX_SLOTS])(void) = {
    setup_0, setup_1, setup_2, setup_3, setup_4, setup_5, setup_6, setup_7};

static void teardown(void)
{
    F->destroy(F->arg);
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

#define MIB (1024 * 1024)

static craft_snapshot_store_t *open_store(void)
{
    craft_snapshot_store_t *s = NULL;
    int rv = F->open(F->arg, &s);
    ck_assert_msg(rv == 0, "open store: %s", craft_err_name(rv));
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Servers with strings that need escaping or are not ASCII. */
static craft_server_t sample_servers[] = {
    {CRAFT_VOTER, "node-1", "127.0.0.1:8300"},
    {CRAFT_NONVOTER, "n\"2\\ \t\n\x01 /", "[::1]:8301"},
    {CRAFT_VOTER, "\xc3\xa9t\xc3\xa9-\xf0\x9f\x9a\x80", "h\xc3\xb4te:1"},
};
static const craft_configuration_t sample_cfg = {3, sample_servers};
static const craft_configuration_t empty_cfg = {0, NULL};

/* Deterministic data: byte p of stream `seed` depends only on (seed, p), so
 * any chunking of writes and reads can be checked. */
static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static void gen(uint64_t seed, uint64_t pos, unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        uint64_t p = pos + i;
        buf[i] = (unsigned char)(mix(seed * 0x100000001B3ULL + p / 8) >> (8 * (p % 8)));
    }
}

/* Write chunk sizes cycle through these (odd sizes, and larger than the
 * file store's buffer). */
static const size_t write_chunks[] = {1, 4093, 65536, 100003, 7, 300000};
static const size_t read_chunks[] = {3, 65536, 1, 250007, 8191, 1048576};

static void write_data(craft_snapshot_sink_t *sink, uint64_t seed, uint64_t size)
{
    unsigned char *buf = malloc(300000);
    uint64_t pos = 0;
    size_t c = 0;
    ck_assert_ptr_nonnull(buf);
    while (pos < size) {
        size_t n = write_chunks[c++ % (sizeof write_chunks / sizeof *write_chunks)];
        if (n > size - pos) {
            n = (size_t)(size - pos);
        }
        gen(seed, pos, buf, n);
        int rv = sink->write(sink->ctx, buf, n);
        ck_assert_msg(rv == 0, "write at %" PRIu64 ": %s", pos, craft_err_name(rv));
        pos += n;
    }
    free(buf);
}

/* Creates, fills and closes a snapshot; returns its id (malloc'd). */
static char *put(craft_snapshot_store_t *s, uint64_t term, uint64_t index,
                 const craft_configuration_t *cfg, uint64_t cfg_index,
                 uint64_t seed, uint64_t size)
{
    craft_snapshot_sink_t *sink = NULL;
    int rv = s->create(s->ctx, 1, index, term, cfg, cfg_index, &sink);
    char *id;
    ck_assert_msg(rv == 0, "create: %s", craft_err_name(rv));
    ck_assert_ptr_nonnull(sink);
    id = strdup(sink->id(sink->ctx));
    ck_assert_ptr_nonnull(id);
    write_data(sink, seed, size);
    ck_assert_str_eq(sink->id(sink->ctx), id);
    rv = sink->close(sink->ctx);
    ck_assert_msg(rv == 0, "close: %s", craft_err_name(rv));
    return id;
}

/* Reads `r` to its end in varying chunks, checking every byte against
 * stream `seed`; the stream must be exactly `size` bytes. */
static void check_reader(craft_reader_t *r, uint64_t seed, uint64_t size)
{
    unsigned char *got = malloc(MIB), *want = malloc(MIB);
    uint64_t pos = 0;
    size_t c = 0;
    int64_t n;
    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_nonnull(want);
    for (;;) {
        size_t ask = read_chunks[c++ % (sizeof read_chunks / sizeof *read_chunks)];
        n = r->read(r->ctx, got, ask);
        ck_assert_msg(n >= 0, "read at %" PRIu64 ": %s", pos, craft_err_name((int)n));
        if (n == 0) {
            break;
        }
        ck_assert_int_le(n, (int64_t)ask);
        ck_assert_msg(pos + (uint64_t)n <= size, "data longer than %" PRIu64, size);
        gen(seed, pos, want, (size_t)n);
        ck_assert_msg(memcmp(got, want, (size_t)n) == 0,
                      "data differs in [%" PRIu64 ", %" PRIu64 ")", pos,
                      pos + (uint64_t)n);
        pos += (uint64_t)n;
    }
    ck_assert_uint_eq(pos, size);
    /* The end stays the end. */
    ck_assert_int_eq(r->read(r->ctx, got, 16), 0);
    free(got);
    free(want);
}

static void check_cfg(const craft_configuration_t *got,
                      const craft_configuration_t *want)
{
    ck_assert_uint_eq(got->n, want->n);
    for (size_t i = 0; i < want->n; i++) {
        ck_assert_int_eq(got->servers[i].suffrage, want->servers[i].suffrage);
        ck_assert_str_eq(got->servers[i].id, want->servers[i].id);
        ck_assert_str_eq(got->servers[i].address, want->servers[i].address);
    }
}

static void check_meta(const craft_snapshot_meta_t *m, const char *id,
                       uint64_t term, uint64_t index,
                       const craft_configuration_t *cfg, uint64_t cfg_index,
                       uint64_t size)
{
    ck_assert_int_eq(m->version, 1);
    ck_assert_str_eq(m->id, id);
    ck_assert_uint_eq(m->term, term);
    ck_assert_uint_eq(m->index, index);
    ck_assert_uint_eq(m->configuration_index, cfg_index);
    ck_assert_int_eq(m->size, (int64_t)size);
    check_cfg(&m->configuration, cfg);
}

/* Opens `id` and checks its meta and data. */
static void check_open(craft_snapshot_store_t *s, const char *id, uint64_t term,
                       uint64_t index, const craft_configuration_t *cfg,
                       uint64_t cfg_index, uint64_t seed, uint64_t size)
{
    craft_snapshot_meta_t *m = NULL;
    craft_reader_t *r = NULL;
    int rv = s->open(s->ctx, id, &m, &r);
    ck_assert_msg(rv == 0, "open %s: %s", id, craft_err_name(rv));
    check_meta(m, id, term, index, cfg, cfg_index, size);
    check_reader(r, seed, size);
    r->close(r->ctx);
    craft_snapshot_meta_free(m);
}

static void check_absent(craft_snapshot_store_t *s, const char *id)
{
    craft_snapshot_meta_t *m = NULL;
    craft_reader_t *r = NULL;
    int rv = s->open(s->ctx, id, &m, &r);
    ck_assert_msg(rv == CRAFT_ENOTFOUND, "open %s: %s, want CRAFT_ENOTFOUND", id,
                  craft_err_name(rv));
}

typedef struct listing {
    craft_snapshot_meta_t **m;
    size_t n;
} listing_t;

static listing_t list(craft_snapshot_store_t *s)
{
    listing_t l = {NULL, 0};
    int rv = s->list(s->ctx, &l.m, &l.n);
    ck_assert_msg(rv == 0, "list: %s", craft_err_name(rv));
    ck_assert(l.n == 0 || l.m != NULL);
    return l;
}

static void listing_free(listing_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        craft_snapshot_meta_free(l->m[i]);
    }
    free(l->m);
}

static void expect_empty(craft_snapshot_store_t *s)
{
    listing_t l = list(s);
    ck_assert_uint_eq(l.n, 0);
    listing_free(&l);
}

/* How many of `created` snapshots the store keeps. */
static size_t kept(size_t created)
{
    if (F->discards) {
        return 0;
    }
    if (F->latest_only) {
        return created < 1 ? created : 1;
    }
    if (F->retain > 0 && (size_t)F->retain < created) {
        return (size_t)F->retain;
    }
    return created;
}

/* A snapshot the tests made: what list must report for it. */
typedef struct made {
    char *id;
    uint64_t term;
    uint64_t index;
    uint64_t seed;
    uint64_t size;
} made_t;

/* hashicorp's order: term, then index, then id, newest first. */
static int made_newest_first(const void *a, const void *b)
{
    const made_t *x = a, *y = b;
    if (x->term != y->term) {
        return x->term > y->term ? -1 : 1;
    }
    if (x->index != y->index) {
        return x->index > y->index ? -1 : 1;
    }
    return -strcmp(x->id, y->id);
}

/* Checks the listing against the snapshots made (`latest` = index in `made`
 * of the last one closed): the kept ones, newest first, each opening with
 * the right data. When the store's retention is unknown it must keep at
 * least the newest one and what it keeps must be the newest. */
static void check_listing(craft_snapshot_store_t *s, made_t *made, size_t n,
                          size_t latest, const craft_configuration_t *cfg)
{
    listing_t l = list(s);
    made_t *orig = made;
    size_t n_orig = n;
    size_t want = kept(n);
    made_t *sorted = malloc(n * sizeof *sorted);
    ck_assert_ptr_nonnull(sorted);
    if (F->latest_only && !F->discards) {
        sorted[0] = made[latest];
        n = 1;
    } else {
        memcpy(sorted, made, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, made_newest_first);
    }
    made = sorted;
    if (!F->discards && !F->latest_only && F->retain == 0) {
        ck_assert_uint_ge(l.n, 1);
        ck_assert_uint_le(l.n, n);
        want = l.n;
    }
    ck_assert_uint_eq(l.n, want);
    for (size_t i = 0; i < l.n; i++) {
        ck_assert_msg(strcmp(l.m[i]->id, made[i].id) == 0,
                      "list[%zu] = %s, want %s", i, l.m[i]->id, made[i].id);
        check_meta(l.m[i], made[i].id, made[i].term, made[i].index, cfg, 3,
                   made[i].size);
        check_open(s, made[i].id, made[i].term, made[i].index, cfg, 3,
                   made[i].seed, made[i].size);
    }
    /* Whatever is not listed cannot be opened either. */
    for (size_t i = 0; i < n_orig; i++) {
        bool listed = false;
        for (size_t j = 0; j < l.n; j++) {
            listed = listed || strcmp(l.m[j]->id, orig[i].id) == 0;
        }
        if (!listed) {
            check_absent(s, orig[i].id);
        }
    }
    free(sorted);
    listing_free(&l);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

/* Writes in chunks, closes, then finds the snapshot through list and open
 * with every meta field, the configuration and the data intact. */
START_TEST(test_create_list_open)
{
    craft_snapshot_store_t *s = open_store();
    char *id = put(s, 7, 42, &sample_cfg, 40, 1, 200000);
    if (F->discards) {
        expect_empty(s);
        check_absent(s, id);
    } else {
        listing_t l = list(s);
        ck_assert_uint_eq(l.n, 1);
        check_meta(l.m[0], id, 7, 42, &sample_cfg, 40, 200000);
        listing_free(&l);
        check_open(s, id, 7, 42, &sample_cfg, 40, 1, 200000);
        /* Opening twice works the same. */
        check_open(s, id, 7, 42, &sample_cfg, 40, 1, 200000);
    }
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_empty_data)
{
    craft_snapshot_store_t *s = open_store();
    char *id = put(s, 1, 1, &sample_cfg, 1, 2, 0);
    if (F->discards) {
        check_absent(s, id);
    } else {
        listing_t l = list(s);
        ck_assert_uint_eq(l.n, 1);
        ck_assert_int_eq(l.m[0]->size, 0);
        listing_free(&l);
        check_open(s, id, 1, 1, &sample_cfg, 1, 2, 0);
    }
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_empty_configuration)
{
    craft_snapshot_store_t *s = open_store();
    char *id = put(s, 3, 9, &empty_cfg, 0, 3, 10);
    if (F->discards) {
        check_absent(s, id);
    } else {
        check_open(s, id, 3, 9, &empty_cfg, 0, 3, 10);
    }
    free(id);
    s->close(s->ctx);
}
END_TEST

/* The full range of the 64-bit fields survives (no double, no sign). */
START_TEST(test_extreme_values)
{
    craft_snapshot_store_t *s = open_store();
    const uint64_t term = UINT64_MAX, index = (1ULL << 63) + 5;
    const uint64_t cfg_index = UINT64_MAX - 1;
    char *id = put(s, term, index, &sample_cfg, cfg_index, 4, 33);
    if (F->discards) {
        check_absent(s, id);
    } else {
        check_open(s, id, term, index, &sample_cfg, cfg_index, 4, 33);
    }
    free(id);
    s->close(s->ctx);
}
END_TEST

/* Several MiB streamed in chunks of many sizes, read back the same way. */
START_TEST(test_large_streamed)
{
    craft_snapshot_store_t *s = open_store();
    const uint64_t size = 5 * MIB + 12345;
    char *id = put(s, 2, 1000, &sample_cfg, 999, 5, size);
    if (F->discards) {
        check_absent(s, id);
    } else {
        check_open(s, id, 2, 1000, &sample_cfg, 999, 5, size);
    }
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_cancel_leaves_nothing)
{
    craft_snapshot_store_t *s = open_store();
    craft_snapshot_sink_t *sink = NULL;
    char *cancelled, *kept_id;
    ck_assert_int_eq(s->create(s->ctx, 1, 5, 1, &sample_cfg, 3, &sink), 0);
    cancelled = strdup(sink->id(sink->ctx));
    write_data(sink, 6, 70000);
    ck_assert_int_eq(sink->cancel(sink->ctx), 0);
    expect_empty(s);
    check_absent(s, cancelled);
    free(cancelled);

    /* A cancelled snapshot does not replace or disturb an earlier one. */
    kept_id = put(s, 1, 4, &sample_cfg, 3, 7, 1000);
    ck_assert_int_eq(s->create(s->ctx, 1, 9, 2, &sample_cfg, 3, &sink), 0);
    cancelled = strdup(sink->id(sink->ctx));
    write_data(sink, 8, 5000);
    ck_assert_int_eq(sink->cancel(sink->ctx), 0);
    check_absent(s, cancelled);
    {
        made_t m = {kept_id, 1, 4, 7, 1000};
        check_listing(s, &m, 1, 0, &sample_cfg);
    }
    s->close(s->ctx);
    if (F->reopen != NULL) {
        ck_assert_int_eq(F->reopen(F->arg, &s), 0);
        made_t m = {kept_id, 1, 4, 7, 1000};
        check_listing(s, &m, 1, 0, &sample_cfg);
        check_absent(s, cancelled);
        s->close(s->ctx);
    }
    free(cancelled);
    free(kept_id);
}
END_TEST

/* Nothing is visible before close. */
START_TEST(test_invisible_until_closed)
{
    craft_snapshot_store_t *s = open_store();
    craft_snapshot_sink_t *sink = NULL;
    char *id;
    ck_assert_int_eq(s->create(s->ctx, 1, 5, 1, &sample_cfg, 3, &sink), 0);
    id = strdup(sink->id(sink->ctx));
    write_data(sink, 9, 3000);
    expect_empty(s);
    check_absent(s, id);
    ck_assert_int_eq(sink->close(sink->ctx), 0);
    {
        made_t m = {id, 1, 5, 9, 3000};
        check_listing(s, &m, 1, 0, &sample_cfg);
    }
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_open_unknown)
{
    craft_snapshot_store_t *s = open_store();
    char *id;
    check_absent(s, "1-1-1");
    id = put(s, 1, 1, &sample_cfg, 1, 10, 10);
    check_absent(s, "1-1-1");
    check_absent(s, "2-5-1700000000000");
    free(id);
    s->close(s->ctx);
}
END_TEST

/* Snapshots closed out of order are listed newest first: by term, then
 * index, then id (two snapshots of the same term and index: the later). */
START_TEST(test_list_order)
{
    craft_snapshot_store_t *s = open_store();
    made_t made[] = {
        {NULL, 1, 10, 11, 100}, {NULL, 2, 5, 12, 200}, {NULL, 2, 7, 13, 300},
        {NULL, 1, 20, 14, 400}, {NULL, 2, 7, 15, 500},
    };
    size_t n = sizeof made / sizeof *made;
    for (size_t i = 0; i < n; i++) {
        made[i].id = put(s, made[i].term, made[i].index, &sample_cfg, 3,
                         made[i].seed, made[i].size);
    }
    ck_assert_str_ne(made[2].id, made[4].id);
    check_listing(s, made, n, n - 1, &sample_cfg);
    for (size_t i = 0; i < n; i++) {
        free(made[i].id);
    }
    s->close(s->ctx);
}
END_TEST

/* With retention N, creating N+2 snapshots keeps the N newest. */
START_TEST(test_retain_keeps_newest)
{
    craft_snapshot_store_t *s = open_store();
    size_t n = (F->retain > 0 ? (size_t)F->retain : 4) + 2;
    made_t *made = calloc(n, sizeof *made);
    ck_assert_ptr_nonnull(made);
    for (size_t i = 0; i < n; i++) {
        made[i] = (made_t){NULL, 3, 100 + i, 20 + i, 1000 + i};
        made[i].id = put(s, 3, 100 + i, &sample_cfg, 3, 20 + i, 1000 + i);
    }
    check_listing(s, made, n, n - 1, &sample_cfg);
    if (F->reopen != NULL) {
        s->close(s->ctx);
        ck_assert_int_eq(F->reopen(F->arg, &s), 0);
        check_listing(s, made, n, 0, &sample_cfg);
    }
    for (size_t i = 0; i < n; i++) {
        free(made[i].id);
    }
    free(made);
    s->close(s->ctx);
}
END_TEST

/* A reader keeps its snapshot's data even when newer snapshots replace it
 * or retention deletes it. */
START_TEST(test_reader_outlives_snapshot)
{
    craft_snapshot_store_t *s = open_store();
    char *id = put(s, 1, 1, &sample_cfg, 1, 30, 300000);
    craft_snapshot_meta_t *m = NULL;
    craft_reader_t *r = NULL;
    unsigned char *got = malloc(100000), *want = malloc(100000);
    size_t pushes = F->retain > 0 ? (size_t)F->retain : 3;
    int64_t n;

    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_nonnull(want);
    if (F->discards) {
        check_absent(s, id);
        goto out;
    }
    ck_assert_int_eq(s->open(s->ctx, id, &m, &r), 0);
    n = r->read(r->ctx, got, 100000);
    ck_assert_int_gt(n, 0);
    gen(30, 0, want, (size_t)n);
    ck_assert_mem_eq(got, want, (size_t)n);
    for (size_t i = 0; i < pushes; i++) {
        char *newer = put(s, 2, 10 + i, &sample_cfg, 1, 31 + i, 5000);
        free(newer);
    }
    if (F->latest_only || F->retain > 0) {
        check_absent(s, id);
    }
    /* The rest of the stream, then its end. */
    {
        uint64_t pos = (uint64_t)n;
        while ((n = r->read(r->ctx, got, 100000)) > 0) {
            ck_assert_uint_le(pos + (uint64_t)n, 300000);
            gen(30, pos, want, (size_t)n);
            ck_assert_mem_eq(got, want, (size_t)n);
            pos += (uint64_t)n;
        }
        ck_assert_msg(n == 0, "read: %s", craft_err_name((int)n));
        ck_assert_uint_eq(pos, 300000);
    }
    r->close(r->ctx);
    check_meta(m, id, 1, 1, &sample_cfg, 1, 300000);
    craft_snapshot_meta_free(m);
out:
    free(got);
    free(want);
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_two_readers_interleaved)
{
    craft_snapshot_store_t *s = open_store();
    char *id = put(s, 4, 4, &sample_cfg, 1, 40, 150000);
    craft_snapshot_meta_t *m1 = NULL, *m2 = NULL;
    craft_reader_t *r1 = NULL, *r2 = NULL;
    unsigned char got[7000], want[7000];
    uint64_t p1 = 0, p2 = 0;

    if (F->discards) {
        check_absent(s, id);
        goto out;
    }
    ck_assert_int_eq(s->open(s->ctx, id, &m1, &r1), 0);
    ck_assert_int_eq(s->open(s->ctx, id, &m2, &r2), 0);
    for (;;) {
        int64_t n1 = r1->read(r1->ctx, got, 7000);
        ck_assert_int_ge(n1, 0);
        gen(40, p1, want, (size_t)n1);
        ck_assert_mem_eq(got, want, (size_t)n1);
        p1 += (uint64_t)n1;
        int64_t n2 = r2->read(r2->ctx, got, 3000);
        ck_assert_int_ge(n2, 0);
        gen(40, p2, want, (size_t)n2);
        ck_assert_mem_eq(got, want, (size_t)n2);
        p2 += (uint64_t)n2;
        if (n1 == 0 && n2 == 0) {
            break;
        }
    }
    ck_assert_uint_eq(p1, 150000);
    ck_assert_uint_eq(p2, 150000);
    r1->close(r1->ctx);
    r2->close(r2->ctx);
    craft_snapshot_meta_free(m1);
    craft_snapshot_meta_free(m2);
out:
    free(id);
    s->close(s->ctx);
}
END_TEST

/* IDs are "<term>-<index>-<ms>" and distinct, even for many snapshots of the
 * same term and index begun within one millisecond. */
START_TEST(test_ids_unique)
{
    enum { N = 64 };
    craft_snapshot_store_t *s = open_store();
    craft_snapshot_sink_t *sinks[N];
    for (int i = 0; i < N; i++) {
        uint64_t t, x, ms;
        int used = 0;
        const char *id;
        ck_assert_int_eq(s->create(s->ctx, 1, 77, 6, &sample_cfg, 3, &sinks[i]), 0);
        id = sinks[i]->id(sinks[i]->ctx);
        ck_assert_msg(sscanf(id, "%" SCNu64 "-%" SCNu64 "-%" SCNu64 "%n", &t, &x,
                             &ms, &used) == 3 &&
                          (size_t)used == strlen(id),
                      "id %s is not <term>-<index>-<ms>", id);
        ck_assert_uint_eq(t, 6);
        ck_assert_uint_eq(x, 77);
        for (int j = 0; j < i; j++) {
            ck_assert_str_ne(id, sinks[j]->id(sinks[j]->ctx));
        }
    }
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(sinks[i]->cancel(sinks[i]->ctx), 0);
    }
    expect_empty(s);
    s->close(s->ctx);
}
END_TEST

/* Two sinks open at once, written alternately, both closed. */
START_TEST(test_concurrent_sinks)
{
    craft_snapshot_store_t *s = open_store();
    craft_snapshot_sink_t *a = NULL, *b = NULL;
    unsigned char buf[5000];
    made_t made[2] = {{NULL, 5, 1, 50, 100000}, {NULL, 5, 2, 51, 100000}};
    ck_assert_int_eq(s->create(s->ctx, 1, 1, 5, &sample_cfg, 3, &a), 0);
    ck_assert_int_eq(s->create(s->ctx, 1, 2, 5, &sample_cfg, 3, &b), 0);
    made[0].id = strdup(a->id(a->ctx));
    made[1].id = strdup(b->id(b->ctx));
    for (uint64_t pos = 0; pos < 100000; pos += sizeof buf) {
        gen(50, pos, buf, sizeof buf);
        ck_assert_int_eq(a->write(a->ctx, buf, sizeof buf), 0);
        gen(51, pos, buf, sizeof buf);
        ck_assert_int_eq(b->write(b->ctx, buf, sizeof buf), 0);
    }
    /* Close in the other order: for a latest-only store, b then a leaves a. */
    ck_assert_int_eq(b->close(b->ctx), 0);
    ck_assert_int_eq(a->close(a->ctx), 0);
    check_listing(s, made, 2, 0, &sample_cfg);
    free(made[0].id);
    free(made[1].id);
    s->close(s->ctx);
}
END_TEST

/* Writers on several threads, and a thread listing and reading meanwhile:
 * whatever it opens reads back intact (or is gone: ENOTFOUND). */
enum { THREADS = 3, PER_THREAD = 4 };

typedef struct worker {
    craft_snapshot_store_t *s;
    int t;
    char *ids[PER_THREAD];
    int rv;
} worker_t;

static uint64_t seed_of(uint64_t term, uint64_t index)
{
    return term * 1000 + index;
}

static void *writer_main(void *arg)
{
    worker_t *w = arg;
    unsigned char buf[4096];
    for (int i = 0; i < PER_THREAD && w->rv == 0; i++) {
        uint64_t term = 10 + (uint64_t)w->t, index = 1 + (uint64_t)i;
        craft_snapshot_sink_t *sink = NULL;
        w->rv = w->s->create(w->s->ctx, 1, index, term, &sample_cfg, 3, &sink);
        if (w->rv != 0) {
            break;
        }
        w->ids[i] = strdup(sink->id(sink->ctx));
        for (uint64_t pos = 0; pos < 40000 && w->rv == 0; pos += sizeof buf) {
            gen(seed_of(term, index), pos, buf, sizeof buf);
            w->rv = sink->write(sink->ctx, buf, sizeof buf);
        }
        if (w->rv != 0) {
            sink->cancel(sink->ctx);
            break;
        }
        w->rv = sink->close(sink->ctx);
    }
    return NULL;
}

typedef struct reader_thread {
    craft_snapshot_store_t *s;
    int stop; /* guarded by mu */
    pthread_mutex_t mu;
    int rv;
    int opened;
} reader_thread_t;

/* Reads one listed snapshot fully; returns 0, a CRAFT_E* or 1 for bad data. */
static int read_listed(craft_snapshot_store_t *s, const craft_snapshot_meta_t *lm)
{
    craft_snapshot_meta_t *m = NULL;
    craft_reader_t *r = NULL;
    unsigned char got[8192], want[8192];
    uint64_t pos = 0;
    int64_t n;
    int rv = s->open(s->ctx, lm->id, &m, &r);
    if (rv != 0) {
        return rv;
    }
    while ((n = r->read(r->ctx, got, sizeof got)) > 0) {
        gen(seed_of(m->term, m->index), pos, want, (size_t)n);
        if (memcmp(got, want, (size_t)n) != 0) {
            n = 1;
            break;
        }
        pos += (uint64_t)n;
    }
    rv = n < 0 ? (int)n : n > 0 ? 1 : pos == (uint64_t)m->size ? 0 : 1;
    r->close(r->ctx);
    craft_snapshot_meta_free(m);
    return rv;
}

static void *reader_main(void *arg)
{
    reader_thread_t *rt = arg;
    for (;;) {
        int stop;
        listing_t l = {NULL, 0};
        pthread_mutex_lock(&rt->mu);
        stop = rt->stop;
        pthread_mutex_unlock(&rt->mu);
        if (stop) {
            break;
        }
        rt->rv = rt->s->list(rt->s->ctx, &l.m, &l.n);
        if (rt->rv != 0) {
            break;
        }
        for (size_t i = 0; i < l.n && rt->rv == 0; i++) {
            int rv = read_listed(rt->s, l.m[i]);
            if (rv == 0) {
                rt->opened++;
            } else if (rv != CRAFT_ENOTFOUND) {
                rt->rv = rv; /* deleted between list and open is fine */
            }
        }
        for (size_t i = 0; i < l.n; i++) {
            craft_snapshot_meta_free(l.m[i]);
        }
        free(l.m);
        if (rt->rv != 0) {
            break;
        }
    }
    return NULL;
}

START_TEST(test_threads)
{
    craft_snapshot_store_t *s = open_store();
    worker_t w[THREADS];
    pthread_t th[THREADS], rth;
    reader_thread_t rt = {s, 0, PTHREAD_MUTEX_INITIALIZER, 0, 0};
    made_t made[THREADS * PER_THREAD];
    size_t n = 0;

    ck_assert_int_eq(pthread_create(&rth, NULL, reader_main, &rt), 0);
    for (int t = 0; t < THREADS; t++) {
        w[t] = (worker_t){s, t, {NULL}, 0};
        ck_assert_int_eq(pthread_create(&th[t], NULL, writer_main, &w[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
    }
    pthread_mutex_lock(&rt.mu);
    rt.stop = 1;
    pthread_mutex_unlock(&rt.mu);
    pthread_join(rth, NULL);
    ck_assert_msg(rt.rv == 0, "reader thread: %d (%s)", rt.rv,
                  rt.rv < 0 ? craft_err_name(rt.rv) : "data differs");
    for (int t = 0; t < THREADS; t++) {
        ck_assert_msg(w[t].rv == 0, "writer %d: %s", t, craft_err_name(w[t].rv));
        for (int i = 0; i < PER_THREAD; i++) {
            uint64_t term = 10 + (uint64_t)t, index = 1 + (uint64_t)i;
            made[n++] = (made_t){w[t].ids[i], term, index, seed_of(term, index),
                                 40960};
        }
    }
    if (F->latest_only && !F->discards) {
        /* Which one closed last is up to the scheduler: whichever is
         * listed must be one of them, intact. */
        listing_t l = list(s);
        ck_assert_uint_eq(l.n, 1);
        ck_assert_int_eq(read_listed(s, l.m[0]), 0);
        listing_free(&l);
    } else {
        check_listing(s, made, n, 0, &sample_cfg);
    }
    for (size_t i = 0; i < n; i++) {
        free(made[i].id);
    }
    s->close(s->ctx);
}
END_TEST

/* A persistent store shows the same snapshots after reopening, and keeps
 * making new ones with distinct ids. */
START_TEST(test_reopen_persistence)
{
    craft_snapshot_store_t *s = open_store();
    made_t made[3] = {{NULL, 1, 5, 60, 12345}, {NULL, 2, 9, 61, 0}, {NULL, 2, 10, 62, 1}};
    made[0].id = put(s, 1, 5, &sample_cfg, 3, 60, 12345);
    made[1].id = put(s, 2, 9, &sample_cfg, 3, 61, 0);
    s->close(s->ctx);

    ck_assert_int_eq(F->reopen(F->arg, &s), 0);
    check_listing(s, made, 2, 1, &sample_cfg);
    made[2].id = put(s, 2, 10, &sample_cfg, 3, 62, 1);
    ck_assert_str_ne(made[2].id, made[0].id);
    ck_assert_str_ne(made[2].id, made[1].id);
    s->close(s->ctx);

    ck_assert_int_eq(F->reopen(F->arg, &s), 0);
    check_listing(s, made, 3, 2, &sample_cfg);
    for (int i = 0; i < 3; i++) {
        free(made[i].id);
    }
    s->close(s->ctx);
}
END_TEST

Suite *craft_conformance_snapshot_store_suite(
    const craft_conformance_snapshot_factory_t *f)
{
    Suite *s;
    TCase *tc;
    int k;
    if (f == NULL || n_slots >= MAX_SLOTS) {
        return NULL;
    }
    k = n_slots++;
    slots[k] = *f;
    s = suite_create(f->name ? f->name : "snapshot_store");
    tc = tcase_create("snapshot_store");
    tcase_add_checked_fixture(tc, slot_setup[k], teardown);
    tcase_add_test(tc, test_create_list_open);
    tcase_add_test(tc, test_empty_data);
    tcase_add_test(tc, test_empty_configuration);
    tcase_add_test(tc, test_extreme_values);
    tcase_add_test(tc, test_large_streamed);
    tcase_add_test(tc, test_cancel_leaves_nothing);
    tcase_add_test(tc, test_invisible_until_closed);
    tcase_add_test(tc, test_open_unknown);
    tcase_add_test(tc, test_list_order);
    tcase_add_test(tc, test_retain_keeps_newest);
    tcase_add_test(tc, test_reader_outlives_snapshot);
    tcase_add_test(tc, test_two_readers_interleaved);
    tcase_add_test(tc, test_ids_unique);
    tcase_add_test(tc, test_concurrent_sinks);
    tcase_add_test(tc, test_threads);
    if (f->reopen != NULL) {
        tcase_add_test(tc, test_reopen_persistence);
    }
    suite_add_tcase(s, tc);
    return s;
}
