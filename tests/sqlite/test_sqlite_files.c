/* sqlite store: files that are not craft databases, newer, truncated or
 * damaged are refused with CRAFT_ECORRUPT (and a logged reason) and left
 * untouched; exclusive opening; details of the store not covered by the
 * conformance suite. */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "craft/sqlite.h"
#include "testutil.h"

static char *dir;
static char path[600];

/* ---- captured log lines ---- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char logged[8192];

static void capture(void *ctx, craft_level_t level, const char *component,
                    const char *message)
{
    (void)ctx;
    pthread_mutex_lock(&log_mu);
    size_t used = strlen(logged);
    snprintf(logged + used, sizeof logged - used, "%d %s: %s\n", (int)level,
             component, message);
    pthread_mutex_unlock(&log_mu);
}

static bool logged_contains(const char *s)
{
    pthread_mutex_lock(&log_mu);
    bool found = strstr(logged, s) != NULL;
    pthread_mutex_unlock(&log_mu);
    return found;
}

static craft_sqlite_options_t opts(void)
{
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    o.logger = capture;
    return o;
}

static int open_store(craft_log_store_t **l, craft_stable_store_t **s)
{
    craft_sqlite_options_t o = opts();
    return craft_sqlite_open(path, &o, l, s);
}

static void close_both(craft_log_store_t *l, craft_stable_store_t *s)
{
    l->close(l->ctx);
    s->close(s->ctx);
}

static void setup(void)
{
    dir = tu_tmpdir("craft-sqlite-files");
    ck_assert_ptr_nonnull(dir);
    snprintf(path, sizeof path, "%s/craft.db", dir);
    logged[0] = '\0';
}

static void teardown(void)
{
    tu_rmrf(dir);
    free(dir);
}

/* ---- file helpers ---- */

static unsigned char *read_file(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void write_file(const char *p, const void *buf, size_t len)
{
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static bool exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Data of entry i: a recognisable marker, so tests can find it on disk. */
static size_t entry_data(uint64_t i, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "MARKER-%06llu-", (unsigned long long)i);
    size_t len = (size_t)n;
    while (len < 200 && len < cap) {
        buf[len] = (char)('a' + (i + len) % 26);
        len++;
    }
    return len;
}

/* A closed craft database holding entries 1..n and a stable key. */
static void make_db(uint64_t n)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    char buf[256];
    for (uint64_t i = 1; i <= n; i++) {
        size_t len = entry_data(i, buf, sizeof buf);
        craft_log_t e = {.index = i, .term = 1, .data = buf, .len = len};
        ck_assert_int_eq(l->store_logs(l->ctx, &e, 1), 0);
    }
    ck_assert_int_eq(s->set_uint64(s->ctx, "CurrentTerm", 1), 0);
    close_both(l, s);
    /* A clean close checkpoints the WAL into the file and removes it. */
    char wal[700];
    snprintf(wal, sizeof wal, "%s-wal", path);
    ck_assert(!exists(wal));
}

/* Opening fails with CRAFT_ECORRUPT, logs `reason`, and leaves the file
 * byte for byte as it was. */
static void expect_refused(const char *reason)
{
    size_t before_len, after_len;
    unsigned char *before = read_file(path, &before_len);
    craft_log_store_t *l = NULL;
    craft_stable_store_t *s = NULL;
    int rv = open_store(&l, &s);
    ck_assert_msg(rv == CRAFT_ECORRUPT, "open = %s, want CRAFT_ECORRUPT",
                  craft_err_name(rv));
    ck_assert_ptr_null(l);
    ck_assert_ptr_null(s);
    ck_assert_msg(logged_contains(reason), "log lacks \"%s\": %s", reason,
                  logged);
    unsigned char *after = read_file(path, &after_len);
    ck_assert_uint_eq(before_len, after_len);
    ck_assert_int_eq(memcmp(before, after, before_len), 0);
    free(before);
    free(after);
    /* And again: a refused open changes nothing. */
    logged[0] = '\0';
    ck_assert_int_eq(open_store(&l, &s), CRAFT_ECORRUPT);
}

static void sql(const char *stmt)
{
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, stmt, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", stmt, err ? err : "?");
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

static long page_size_of_db(void)
{
    size_t len;
    unsigned char *b = read_file(path, &len);
    ck_assert_uint_ge(len, 100);
    long ps = (b[16] << 8) | b[17];
    free(b);
    return ps == 1 ? 65536 : ps;
}

/* ---- foreign files ---- */

START_TEST(test_text_file)
{
    char text[4096];
    for (size_t i = 0; i < sizeof text; i++) {
        text[i] = "some text that is not a database\n"[i % 33];
    }
    write_file(path, text, sizeof text);
    expect_refused("not a craft database or corrupt");
}
END_TEST

START_TEST(test_short_garbage_file)
{
    write_file(path, "hello", 5);
    expect_refused("not a craft database or corrupt");
}
END_TEST

START_TEST(test_foreign_sqlite)
{
    sql("CREATE TABLE foo (a, b); INSERT INTO foo VALUES (1, 'x');");
    expect_refused("not a craft database (application_id=0x0, 1 tables)");
}
END_TEST

START_TEST(test_foreign_application_id)
{
    sql("PRAGMA application_id=1234;");
    expect_refused("not a craft database (application_id=0x4d2");
}
END_TEST

START_TEST(test_newer_schema)
{
    make_db(3);
    sql("PRAGMA user_version=3;");
    expect_refused("schema version 3 is newer");
}
END_TEST

START_TEST(test_missing_table)
{
    make_db(3);
    sql("DROP TABLE stable;");
    expect_refused("schema does not match");
}
END_TEST

START_TEST(test_wrong_column)
{
    make_db(3);
    sql("ALTER TABLE logs DROP COLUMN crc;");
    expect_refused("schema does not match");
}
END_TEST

/* ---- damaged craft databases ---- */

START_TEST(test_truncated_half)
{
    make_db(2000);
    size_t len;
    unsigned char *b = read_file(path, &len);
    ck_assert_uint_gt(len, 100000);
    ck_assert_int_eq(truncate(path, (off_t)(len / 2)), 0);
    free(b);
    expect_refused("corrupt");
}
END_TEST

START_TEST(test_truncated_to_one_page)
{
    make_db(2000);
    ck_assert_int_eq(truncate(path, page_size_of_db()), 0);
    expect_refused("corrupt");
}
END_TEST

START_TEST(test_truncated_header)
{
    make_db(10);
    ck_assert_int_eq(truncate(path, 50), 0);
    expect_refused("corrupt");
}
END_TEST

START_TEST(test_damaged_header)
{
    make_db(10);
    size_t len;
    unsigned char *b = read_file(path, &len);
    memcpy(b, "NotSQLite format", 16);
    write_file(path, b, len);
    free(b);
    expect_refused("not a craft database or corrupt");
}
END_TEST

START_TEST(test_damaged_btree_page)
{
    make_db(2000);
    size_t len;
    unsigned char *b = read_file(path, &len);
    long ps = page_size_of_db();
    size_t pages = len / (size_t)ps;
    ck_assert_uint_gt(pages, 20);
    /* Garbage over a few pages in the middle of the log table. */
    for (size_t p = pages / 2; p < pages / 2 + 3; p++) {
        for (long j = 0; j < ps; j++) {
            b[p * (size_t)ps + (size_t)j] = (unsigned char)(j * 131 + 7);
        }
    }
    write_file(path, b, len);
    free(b);
    expect_refused("corrupt");
}
END_TEST

/* Damage inside an entry's payload keeps the b-tree valid (sqlite has no
 * checksums); the entry's own checksum catches it. */
START_TEST(test_damaged_payload)
{
    make_db(500);
    size_t len;
    unsigned char *b = read_file(path, &len);
    const char *marker = "MARKER-000321-";
    unsigned char *hit = memmem(b, len, marker, strlen(marker));
    ck_assert_ptr_nonnull(hit);
    hit[20] ^= 0x01;
    write_file(path, b, len);
    free(b);

    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    craft_log_t e;
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(l->get_log(l->ctx, 321, &e), CRAFT_ECORRUPT);
    ck_assert(logged_contains("checksum mismatch index=321"));
    ck_assert_int_eq(l->get_log(l->ctx, 320, &e), 0);
    char buf[256];
    size_t want = entry_data(320, buf, sizeof buf);
    ck_assert_uint_eq(e.len, want);
    ck_assert_int_eq(memcmp(e.data, buf, want), 0);
    craft_log_release(&e);
    close_both(l, s);
}
END_TEST

/* The stored checksum's format: CRC-32C (Castagnoli) over index, term,
 * type, appended_at and the data's length as big-endian 8-byte words, the
 * data, the extensions' length, the extensions. The expected value was
 * computed outside craft (a bit-at-a-time CRC-32C in Python); any change
 * of algorithm or field order would make existing databases unreadable. */
START_TEST(test_entry_crc_format)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    craft_log_t e = {.index = 7, .term = 3, .type = CRAFT_LOG_COMMAND,
                     .appended_at_ns = 1234567890123,
                     .data = "hello, crc", .len = 10, .ext = "xy",
                     .ext_len = 2};
    ck_assert_int_eq(l->store_logs(l->ctx, &e, 1), 0);
    close_both(l, s);

    sqlite3 *db;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT crc FROM logs WHERE idx = 7",
                                        -1, &st, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int64(st, 0), 0x85F973F2);
    sqlite3_finalize(st);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);

    /* And it reads back. */
    ck_assert_int_eq(open_store(&l, &s), 0);
    craft_log_t got;
    memset(&got, 0, sizeof got);
    ck_assert_int_eq(l->get_log(l->ctx, 7, &got), 0);
    ck_assert_uint_eq(got.len, 10);
    ck_assert_int_eq(memcmp(got.data, "hello, crc", 10), 0);
    ck_assert_uint_eq(got.ext_len, 2);
    craft_log_release(&got);
    close_both(l, s);
}
END_TEST

/* get_logs gives every row of a range the checks get_log gives one row: a
 * damaged row inside the range fails the whole read (nothing returned, no
 * allocation left: LeakSanitizer checks that under ASan), the rows around it
 * stay readable. */
START_TEST(test_damaged_payload_in_range)
{
    make_db(500);
    size_t len;
    unsigned char *b = read_file(path, &len);
    const char *marker = "MARKER-000321-";
    unsigned char *hit = memmem(b, len, marker, strlen(marker));
    ck_assert_ptr_nonnull(hit);
    hit[20] ^= 0x01;
    write_file(path, b, len);
    free(b);

    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    ck_assert(l->get_logs != NULL);
    craft_log_t out[64];
    size_t n = 12345;
    ck_assert_int_eq(l->get_logs(l->ctx, 300, 64, SIZE_MAX, out, &n),
                     CRAFT_ECORRUPT);
    ck_assert_uint_eq(n, 0);
    ck_assert(logged_contains("checksum mismatch index=321"));
    n = 12345;
    ck_assert_int_eq(l->get_logs(l->ctx, 321, 64, SIZE_MAX, out, &n),
                     CRAFT_ECORRUPT);
    ck_assert_uint_eq(n, 0);
    /* Up to the damaged row, and after it. */
    ck_assert_int_eq(l->get_logs(l->ctx, 300, 21, SIZE_MAX, out, &n), 0);
    ck_assert_uint_eq(n, 21);
    char buf[256];
    for (size_t i = 0; i < n; i++) {
        size_t want = entry_data(300 + i, buf, sizeof buf);
        ck_assert_uint_eq(out[i].index, 300 + i);
        ck_assert_uint_eq(out[i].len, want);
        ck_assert_int_eq(memcmp(out[i].data, buf, want), 0);
        craft_log_release(&out[i]);
    }
    ck_assert_int_eq(l->get_logs(l->ctx, 322, 64, SIZE_MAX, out, &n), 0);
    ck_assert_uint_eq(n, 64);
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(out[i].index, 322 + i);
        craft_log_release(&out[i]);
    }
    close_both(l, s);
}
END_TEST

/* A row whose columns have the wrong sqlite types (written behind the
 * store's back) is refused inside a range as by get_log. */
START_TEST(test_wrong_type_row_in_range)
{
    make_db(50);
    sql("UPDATE logs SET data = 'text, not a blob' WHERE idx = 30");
    sql("UPDATE logs SET term = 'x' WHERE idx = 40");
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    craft_log_t out[16];
    size_t n = 12345;
    ck_assert_int_eq(l->get_logs(l->ctx, 25, 16, SIZE_MAX, out, &n),
                     CRAFT_ECORRUPT);
    ck_assert_uint_eq(n, 0);
    ck_assert(logged_contains("column 2 has sqlite type 3 index=30"));
    ck_assert_int_eq(l->get_logs(l->ctx, 31, 16, SIZE_MAX, out, &n),
                     CRAFT_ECORRUPT);
    ck_assert_uint_eq(n, 0);
    ck_assert(logged_contains("column 0 has sqlite type 3 index=40"));
    /* A bad row the byte budget leaves out fails nothing; one it lets in
     * is checked. A row whose data is not a BLOB has no known size: it is
     * refused even there. */
    ck_assert_int_eq(l->get_logs(l->ctx, 39, 16, 0, out, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(out[0].index, 39);
    craft_log_release(&out[0]);
    ck_assert_int_eq(l->get_logs(l->ctx, 39, 16, 10000, out, &n),
                     CRAFT_ECORRUPT);
    ck_assert_int_eq(l->get_logs(l->ctx, 40, 16, 0, out, &n), CRAFT_ECORRUPT);
    ck_assert_int_eq(l->get_logs(l->ctx, 29, 16, 0, out, &n), CRAFT_ECORRUPT);
    close_both(l, s);
}
END_TEST

/* ---- accepted files ---- */

START_TEST(test_empty_file_is_new)
{
    write_file(path, "", 0);
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    uint64_t last = 1;
    ck_assert_int_eq(l->last_index(l->ctx, &last), 0);
    ck_assert_uint_eq(last, 0);
    close_both(l, s);
}
END_TEST

START_TEST(test_reopen_intact)
{
    make_db(100);
    logged[0] = '\0';
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    uint64_t first = 0, last = 0, term = 0;
    ck_assert_int_eq(l->first_index(l->ctx, &first), 0);
    ck_assert_int_eq(l->last_index(l->ctx, &last), 0);
    ck_assert_uint_eq(first, 1);
    ck_assert_uint_eq(last, 100);
    ck_assert_int_eq(s->get_uint64(s->ctx, "CurrentTerm", &term), 0);
    ck_assert_uint_eq(term, 1);
    close_both(l, s);
    ck_assert_str_eq(logged, "");
}
END_TEST

/* ---- opening ---- */

START_TEST(test_exclusive)
{
    craft_log_store_t *l, *l2 = NULL;
    craft_stable_store_t *s, *s2 = NULL;
    ck_assert_int_eq(open_store(&l, &s), 0);
    ck_assert_int_eq(open_store(&l2, &s2), CRAFT_EIO);
    ck_assert_ptr_null(l2);
    ck_assert(logged_contains("locked"));
    /* The first open is unaffected. */
    craft_log_t e = {.index = 1, .term = 1};
    ck_assert_int_eq(l->store_logs(l->ctx, &e, 1), 0);
    close_both(l, s);
    ck_assert_int_eq(open_store(&l, &s), 0);
    uint64_t last = 0;
    ck_assert_int_eq(l->last_index(l->ctx, &last), 0);
    ck_assert_uint_eq(last, 1);
    close_both(l, s);
}
END_TEST

START_TEST(test_stores_close_independently)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    l->close(l->ctx);
    ck_assert_int_eq(s->set_uint64(s->ctx, "k", 9), 0);
    s->close(s->ctx);
    ck_assert_int_eq(open_store(&l, &s), 0);
    s->close(s->ctx);
    craft_log_t e = {.index = 7, .term = 2};
    ck_assert_int_eq(l->store_logs(l->ctx, &e, 1), 0);
    l->close(l->ctx);
}
END_TEST

START_TEST(test_bad_arguments)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(craft_sqlite_open(NULL, NULL, &l, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_sqlite_open(path, NULL, NULL, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_sqlite_open(path, NULL, &l, NULL), CRAFT_EINVAL);
    craft_sqlite_options_t o = opts();
    o.durability = (craft_sqlite_durability_t)7;
    ck_assert_int_eq(craft_sqlite_open(path, &o, &l, &s), CRAFT_EINVAL);
    ck_assert(!exists(path));

    char missing[700];
    snprintf(missing, sizeof missing, "%s/no/such/dir/x.db", dir);
    o = opts();
    ck_assert_int_eq(craft_sqlite_open(missing, &o, &l, &s), CRAFT_EIO);
    ck_assert(logged_contains("open failed"));
    ck_assert_int_eq(craft_sqlite_open(dir, &o, &l, &s), CRAFT_EIO);
}
END_TEST

START_TEST(test_index_range)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    craft_log_t e = {.index = (uint64_t)INT64_MAX + 1, .term = 1};
    ck_assert_int_eq(l->store_logs(l->ctx, &e, 1), CRAFT_EINVAL);
    e.index = (uint64_t)INT64_MAX;
    e.term = UINT64_MAX; /* terms use all 64 bits */
    ck_assert_int_eq(l->store_logs(l->ctx, &e, 1), 0);
    craft_log_t got;
    memset(&got, 0, sizeof got);
    ck_assert_int_eq(l->get_log(l->ctx, (uint64_t)INT64_MAX, &got), 0);
    ck_assert_uint_eq(got.term, UINT64_MAX);
    ck_assert_int_eq(l->delete_range(l->ctx, 1, UINT64_MAX), 0);
    uint64_t last = 1;
    ck_assert_int_eq(l->last_index(l->ctx, &last), 0);
    ck_assert_uint_eq(last, 0);
    close_both(l, s);
}
END_TEST

START_TEST(test_uint64_wrong_size)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    ck_assert_int_eq(s->set(s->ctx, "k", "abc", 3), 0);
    uint64_t v;
    ck_assert_int_eq(s->get_uint64(s->ctx, "k", &v), CRAFT_ECORRUPT);
    ck_assert(logged_contains("not 8"));
    /* set_uint64 and set share one key space (raft-boltdb's layout). */
    ck_assert_int_eq(s->set_uint64(s->ctx, "k", 0x0102030405060708ULL), 0);
    void *val;
    size_t len;
    ck_assert_int_eq(s->get(s->ctx, "k", &val, &len), 0);
    ck_assert_uint_eq(len, 8);
    ck_assert_int_eq(memcmp(val, "\x01\x02\x03\x04\x05\x06\x07\x08", 8), 0);
    free(val);
    close_both(l, s);
}
END_TEST

START_TEST(test_commit_index_empty_batch)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    ck_assert_int_eq(l->stage_commit_index(l->ctx, 5), 0);
    uint64_t c = 1;
    ck_assert_int_eq(l->get_commit_index(l->ctx, &c), 0);
    ck_assert_uint_eq(c, 0); /* staged, not yet persisted */
    ck_assert_int_eq(l->store_logs(l->ctx, NULL, 0), 0);
    ck_assert_int_eq(l->get_commit_index(l->ctx, &c), 0);
    ck_assert_uint_eq(c, 5);
    /* A refused batch does not persist the staged value. */
    ck_assert_int_eq(l->stage_commit_index(l->ctx, 9), 0);
    craft_log_t bad = {.index = 0};
    ck_assert_int_eq(l->store_logs(l->ctx, &bad, 1), CRAFT_EINVAL);
    close_both(l, s);
    ck_assert_int_eq(open_store(&l, &s), 0);
    ck_assert_int_eq(l->get_commit_index(l->ctx, &c), 0);
    ck_assert_uint_eq(c, 5);
    close_both(l, s);
}
END_TEST

static uint64_t reopened_commit(void)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    uint64_t c = UINT64_MAX;
    ck_assert_int_eq(l->get_commit_index(l->ctx, &c), 0);
    close_both(l, s);
    return c;
}

static void store_range(craft_log_store_t *l, uint64_t lo, uint64_t hi, uint64_t term)
{
    char buf[256];
    for (uint64_t i = lo; i <= hi; i++) {
        size_t len = entry_data(i, buf, sizeof buf);
        craft_log_t e = {.index = i, .term = term, .data = buf, .len = len};
        ck_assert_int_eq(l->store_logs(l->ctx, &e, 1), 0);
    }
}

static int64_t db_int(const char *query)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, query, -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    return v;
}

/* One session on the file: stages `stage` (0 = none), stores lo..hi, and
 * returns the commit index a fresh open then reads. */
static uint64_t stage_store_reopen(uint64_t stage, uint64_t lo, uint64_t hi, uint64_t term)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    if (stage > 0) {
        ck_assert_int_eq(l->stage_commit_index(l->ctx, stage), 0);
    }
    store_range(l, lo, hi, term);
    close_both(l, s);
    return reopened_commit();
}

/* The same with delete_range(lo, hi). */
static uint64_t delete_reopen(uint64_t lo, uint64_t hi)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    ck_assert_int_eq(l->delete_range(l->ctx, lo, hi), 0);
    close_both(l, s);
    return reopened_commit();
}

/* The commit index rides on the row that ends the log; whatever removes
 * that row (a suffix truncation, deleting everything) or writes no row at
 * the end moves it to meta. Reopening always finds the newest value. */
START_TEST(test_commit_index_follows_the_last_row)
{
    ck_assert_uint_eq(stage_store_reopen(0, 1, 10, 1), 0);
    ck_assert_uint_eq(stage_store_reopen(7, 11, 11, 1), 7);
    /* On the row, not in meta. */
    ck_assert_int_eq(db_int("SELECT commit_idx FROM logs WHERE idx = 11"), 7);
    ck_assert_int_eq(db_int("SELECT count(*) FROM meta WHERE key = 'commit_index'"), 0);
    /* A conflicting suffix goes: the value survives in meta. */
    ck_assert_uint_eq(delete_reopen(9, 11), 7);
    /* A rewrite below the end persists in meta; a later batch at the end
     * carries the newest value on its row. */
    ck_assert_uint_eq(stage_store_reopen(8, 5, 5, 1), 8);
    ck_assert_uint_eq(stage_store_reopen(9, 9, 12, 2), 9);
    ck_assert_int_eq(db_int("SELECT commit_idx FROM logs WHERE idx = 12"), 9);
    /* Everything deleted (behind a snapshot): still there. */
    ck_assert_uint_eq(delete_reopen(1, 12), 9);
    /* Never goes back: a lower staged value keeps the higher one. */
    ck_assert_uint_eq(stage_store_reopen(4, 13, 13, 2), 9);
}
END_TEST

/* A schema-1 database (commit index in meta, no commit_idx column) opens,
 * is migrated in place, and keeps its entries and commit index. */
START_TEST(test_migrates_schema_1)
{
    make_db(5);
    sql("ALTER TABLE logs DROP COLUMN commit_idx;"
        " INSERT OR REPLACE INTO meta (key, val) VALUES ('commit_index', 4);"
        " PRAGMA user_version=1;");
    craft_log_store_t *l;
    craft_stable_store_t *s;
    ck_assert_int_eq(open_store(&l, &s), 0);
    ck_assert(logged_contains("migrated database from schema 1 to 2"));
    uint64_t c = 0, last = 0;
    ck_assert_int_eq(l->get_commit_index(l->ctx, &c), 0);
    ck_assert_uint_eq(c, 4);
    ck_assert_int_eq(l->last_index(l->ctx, &last), 0);
    ck_assert_uint_eq(last, 5);
    craft_log_t e;
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(l->get_log(l->ctx, 3, &e), 0);
    ck_assert_uint_eq(e.term, 1);
    craft_log_release(&e);
    ck_assert_int_eq(l->stage_commit_index(l->ctx, 5), 0);
    store_range(l, 6, 6, 1);
    close_both(l, s);
    ck_assert_int_eq(db_int("PRAGMA user_version"), 2);
    ck_assert_uint_eq(reopened_commit(), 5);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sqlite files");
    TCase *foreign = tcase_create("foreign");
    tcase_add_checked_fixture(foreign, setup, teardown);
    tcase_add_test(foreign, test_text_file);
    tcase_add_test(foreign, test_short_garbage_file);
    tcase_add_test(foreign, test_foreign_sqlite);
    tcase_add_test(foreign, test_foreign_application_id);
    tcase_add_test(foreign, test_newer_schema);
    tcase_add_test(foreign, test_missing_table);
    tcase_add_test(foreign, test_wrong_column);
    suite_add_tcase(s, foreign);

    TCase *damaged = tcase_create("damaged");
    tcase_add_checked_fixture(damaged, setup, teardown);
    tcase_add_test(damaged, test_truncated_half);
    tcase_add_test(damaged, test_truncated_to_one_page);
    tcase_add_test(damaged, test_truncated_header);
    tcase_add_test(damaged, test_damaged_header);
    tcase_add_test(damaged, test_damaged_btree_page);
    tcase_add_test(damaged, test_damaged_payload);
    tcase_add_test(damaged, test_damaged_payload_in_range);
    tcase_add_test(damaged, test_wrong_type_row_in_range);
    suite_add_tcase(s, damaged);

    TCase *ok = tcase_create("open");
    tcase_add_checked_fixture(ok, setup, teardown);
    tcase_add_test(ok, test_empty_file_is_new);
    tcase_add_test(ok, test_reopen_intact);
    tcase_add_test(ok, test_entry_crc_format);
    tcase_add_test(ok, test_exclusive);
    tcase_add_test(ok, test_stores_close_independently);
    tcase_add_test(ok, test_bad_arguments);
    tcase_add_test(ok, test_index_range);
    tcase_add_test(ok, test_uint64_wrong_size);
    tcase_add_test(ok, test_commit_index_empty_batch);
    tcase_add_test(ok, test_commit_index_follows_the_last_row);
    tcase_add_test(ok, test_migrates_schema_1);
    suite_add_tcase(s, ok);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
