/* sqlite store: the file stays bounded under continuous append + prefix
 * compaction (Raft's pattern: keep trailing_logs entries behind each
 * snapshot), and gives space back when the log shrinks.
 *
 * CRAFT_SIZE_APPENDS (default 1000000) sets the number of appends; the
 * default run writes ~100 MB of entries through a window of ~18k entries. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "craft/sqlite.h"
#include "testutil.h"

enum {
    BATCH = 64,
    DATA_LEN = 100,
    TRAILING = 10240, /* hashicorp's TrailingLogs default */
    THRESHOLD = 8192, /* hashicorp's SnapshotThreshold default */
};

static off_t file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : 0;
}

static off_t db_size(const char *path)
{
    char wal[700];
    snprintf(wal, sizeof wal, "%s-wal", path);
    return file_size(path) + file_size(wal);
}

START_TEST(test_bounded_under_compaction)
{
    const char *env = getenv("CRAFT_SIZE_APPENDS");
    uint64_t appends = env != NULL && *env ? strtoull(env, NULL, 10) : 1000000;
    char *dir = tu_tmpdir("craft-sqlite-size");
    ck_assert_ptr_nonnull(dir);
    char path[600];
    snprintf(path, sizeof path, "%s/size.db", dir);
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    o.durability = CRAFT_SQLITE_DURABILITY_NORMAL; /* no fsync per batch */
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(craft_sqlite_open(path, &o, &l, &s), 0);

    static unsigned char data[BATCH][DATA_LEN];
    craft_log_t es[BATCH];
    uint64_t first = 1, next = 1, compactions = 0;
    off_t max_size = 0;
    while (next <= appends) {
        size_t n = BATCH;
        for (size_t i = 0; i < n; i++) {
            memset(data[i], (int)((next + i) & 0xff), DATA_LEN);
            memcpy(data[i], &next, sizeof next);
            es[i] = (craft_log_t){.index = next + i,
                                  .term = 1 + (next + i) / 100000,
                                  .data = data[i],
                                  .len = DATA_LEN,
                                  .appended_at_ns = (int64_t)(next + i)};
        }
        ck_assert_int_eq(l->stage_commit_index(l->ctx, next - 1), 0);
        ck_assert_int_eq(l->store_logs(l->ctx, es, n), 0);
        next += n;
        uint64_t last = next - 1;
        if (last - first + 1 > TRAILING + THRESHOLD) {
            off_t size = db_size(path);
            max_size = size > max_size ? size : max_size;
            ck_assert_int_eq(l->delete_range(l->ctx, first, last - TRAILING),
                             0);
            first = last - TRAILING + 1;
            compactions++;
        }
    }
    uint64_t f = 0, la = 0;
    ck_assert_int_eq(l->first_index(l->ctx, &f), 0);
    ck_assert_int_eq(l->last_index(l->ctx, &la), 0);
    ck_assert_uint_eq(f, first);
    ck_assert_uint_eq(la, next - 1);
    off_t end_size = db_size(path);
    max_size = end_size > max_size ? end_size : max_size;

    /* The log shrinks to 100 entries: the space goes back to the file
     * system (auto_vacuum=INCREMENTAL), after the checkpoint at close. */
    ck_assert_int_eq(l->delete_range(l->ctx, first, next - 101), 0);
    l->close(l->ctx);
    s->close(s->ctx);
    off_t shrunk = db_size(path);

    fprintf(stderr,
            "size test: %llu appends of %d bytes, %llu compactions, "
            "max db+wal %lld bytes, at end %lld, after shrinking to 100 "
            "entries %lld\n",
            (unsigned long long)(next - 1), DATA_LEN,
            (unsigned long long)compactions, (long long)max_size,
            (long long)end_size, (long long)shrunk);
    /* The window holds ~18.4k entries (~2.5 MB with overhead) and the WAL
     * is capped at 16 MiB: 32 MiB is generous, and far below the ~100 MB
     * an unbounded file reaches in the default run. */
    ck_assert_int_lt(max_size, 32 << 20);
    ck_assert_int_lt(shrunk, 256 << 10);

    /* Still a sound database. */
    ck_assert_int_eq(craft_sqlite_open(path, &o, &l, &s), 0);
    craft_log_t e;
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(l->get_log(l->ctx, next - 1, &e), 0);
    ck_assert_uint_eq(e.len, DATA_LEN);
    craft_log_release(&e);
    uint64_t c = 0;
    ck_assert_int_eq(l->get_commit_index(l->ctx, &c), 0);
    ck_assert_uint_eq(c, next - 1 - BATCH);
    l->close(l->ctx);
    s->close(s->ctx);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sqlite size");
    TCase *tc = tcase_create("size");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_bounded_under_compaction);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
