/* sqlite store: what each durability level costs in flushes, counted, not
 * timed. This executable defines fdatasync and fsync itself, so libsqlite3
 * (which resolves them through the dynamic symbol table) calls these
 * counters, which then make the real system call.
 *
 * Found in session 10: the synchronous pragma acts when it is compiled,
 * and the store prepared "PRAGMA synchronous=FULL" at open (to run it
 * after each compaction chunk): durability NORMAL flushed on every
 * commit. */
#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "craft/sqlite.h"
#include "testutil.h"

static atomic_long flushes;

int fdatasync(int fd)
{
    atomic_fetch_add(&flushes, 1);
    return (int)syscall(SYS_fdatasync, fd);
}

int fsync(int fd)
{
    atomic_fetch_add(&flushes, 1);
    return (int)syscall(SYS_fsync, fd);
}

enum { DATA_LEN = 100, APPENDS = 200 };

typedef struct {
    char *dir;
    craft_log_store_t *l;
    craft_stable_store_t *s;
} store_t;

static void open_store(store_t *st, craft_sqlite_durability_t d)
{
    st->dir = tu_tmpdir("craft-sqlite-sync");
    ck_assert_ptr_nonnull(st->dir);
    char path[600];
    snprintf(path, sizeof path, "%s/sync.db", st->dir);
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    o.durability = d;
    ck_assert_int_eq(craft_sqlite_open(path, &o, &st->l, &st->s), 0);
}

static void close_store(store_t *st)
{
    st->l->close(st->l->ctx);
    st->s->close(st->s->ctx);
    tu_rmrf(st->dir);
    free(st->dir);
}

/* Appends entries [first, first + n) in batches of `batch`; returns the
 * flushes they took. */
static long append(store_t *st, uint64_t first, size_t n, size_t batch)
{
    static unsigned char data[DATA_LEN];
    craft_log_t es[64];
    ck_assert_uint_le(batch, 64);
    long before = atomic_load(&flushes);
    for (size_t done = 0; done < n; done += batch) {
        size_t k = n - done < batch ? n - done : batch;
        for (size_t i = 0; i < k; i++) {
            es[i] = (craft_log_t){.index = first + done + i,
                                  .term = 1,
                                  .type = CRAFT_LOG_COMMAND,
                                  .data = data,
                                  .len = DATA_LEN};
        }
        ck_assert_int_eq(st->l->store_logs(st->l->ctx, es, k), 0);
    }
    return atomic_load(&flushes) - before;
}

START_TEST(test_full_flushes_every_commit)
{
    store_t st;
    open_store(&st, CRAFT_SQLITE_DURABILITY_FULL);
    long n = append(&st, 1, APPENDS, 1);
    ck_assert_msg(n >= APPENDS, "%ld flushes for %d synced commits", n, APPENDS);
    close_store(&st);
}
END_TEST

START_TEST(test_normal_does_not_flush_commits)
{
    store_t st;
    open_store(&st, CRAFT_SQLITE_DURABILITY_NORMAL);
    long n = append(&st, 1, APPENDS, 1);
    /* only WAL checkpoints flush (every ~1000 pages; 200 one-page commits
     * make none) */
    ck_assert_msg(n < APPENDS / 10, "%ld flushes for %d unsynced commits", n, APPENDS);
    close_store(&st);
}
END_TEST

/* durability FULL: a compaction runs in chunks of 128 entries that commit
 * without a flush (the next synced append covers them), and appends flush
 * again afterwards. */
START_TEST(test_full_compaction_chunks_do_not_flush)
{
    store_t st;
    open_store(&st, CRAFT_SQLITE_DURABILITY_FULL);
    append(&st, 1, 2048, 64);
    long before = atomic_load(&flushes);
    ck_assert_int_eq(st.l->delete_range(st.l->ctx, 1, 1024), 0); /* 8 chunks */
    long n = atomic_load(&flushes) - before;
    ck_assert_msg(n < 8, "%ld flushes for 8 compaction chunks", n);
    long after = append(&st, 2049, 10, 1);
    ck_assert_msg(after >= 10, "%ld flushes for 10 synced commits after compaction", after);
    uint64_t first = 0;
    ck_assert_int_eq(st.l->first_index(st.l->ctx, &first), 0);
    ck_assert_uint_eq(first, 1025);
    close_store(&st);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sqlite sync");
    TCase *tc = tcase_create("sync");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_full_flushes_every_commit);
    tcase_add_test(tc, test_normal_does_not_flush_commits);
    tcase_add_test(tc, test_full_compaction_chunks_do_not_flush);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
