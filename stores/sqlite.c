/*
 * sqlite3 LogStore + StableStore (include/craft/sqlite.h).
 *
 * One connection per open, in WAL mode and EXCLUSIVE locking mode, guarded by
 * one mutex shared by the log store and the stable store. Every statement is
 * prepared once at open and kept until the last of the two stores closes.
 */
#include "craft/sqlite.h"
#include "lib/logger.h"
#include "stores/crc32c.h"

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* PRAGMA user_version of the schema below; bump with a migration
 * (sq_migrate). 2 added logs.commit_idx. */
#define SQ_SCHEMA_VERSION 2
/* PRAGMA application_id: "crft". */
#define SQ_APPLICATION_ID 0x63726674
/* Give freed pages back to the file system only when at least this many are
 * free and they are more than four fifths of the file: pages freed by a
 * compaction are otherwise reused by the next appends at no cost. (At "more
 * than half", steady compaction every few thousand entries - trailing_logs
 * 10240 behind a snapshot every 2-3 x 8192 entries - vacuumed every time,
 * moving live pages around only to grow the file again.) */
#define SQ_VACUUM_MIN_FREE_PAGES 256
/* Compaction (deleting a prefix of the log) runs in transactions of at most
 * this many entries, releasing the store between them, so that appends wait
 * for one chunk, not for the whole prefix. */
#define SQ_COMPACT_CHUNK 128
/* How long an open waits for another holder of the file's lock. */
#define SQ_BUSY_TIMEOUT_MS 1000
/* The WAL is truncated back to this size after a checkpoint. */
#define SQ_JOURNAL_SIZE_LIMIT (16 * 1024 * 1024)

static const char sq_schema[] =
    "CREATE TABLE logs ("
    " idx INTEGER PRIMARY KEY,"
    " term INTEGER NOT NULL,"
    " type INTEGER NOT NULL,"
    " data BLOB,"
    " ext BLOB,"
    " appended_at INTEGER NOT NULL,"
    " crc INTEGER NOT NULL,"
    /* The commit index persisted with the batch this row ended (NULL on
     * the other rows): one page per commit fewer than a meta row. */
    " commit_idx INTEGER);"
    "CREATE TABLE stable (key TEXT PRIMARY KEY NOT NULL, val BLOB NOT NULL)"
    " WITHOUT ROWID;"
    "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, val INTEGER NOT NULL)"
    " WITHOUT ROWID;";

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_LOG_PUT,
    ST_LOG_COMMIT_GET,
    ST_LOG_GET,
    ST_LOG_RANGE,
    ST_LOG_DELETE,
    ST_LOG_MIN,
    ST_LOG_MAX,
    ST_META_PUT,
    ST_META_GET,
    ST_KV_PUT,
    ST_KV_GET,
    ST_FREELIST,
    ST_PAGES,
    ST_VACUUM,
    ST__N
};

static const char *const sq_stmt_sql[ST__N] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_LOG_PUT] = "INSERT OR REPLACE INTO logs"
                   " (idx, term, type, data, ext, appended_at, crc, commit_idx)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    [ST_LOG_COMMIT_GET] = "SELECT commit_idx FROM logs WHERE idx = ?",
    [ST_LOG_GET] = "SELECT term, type, data, ext, appended_at, crc"
                   " FROM logs WHERE idx = ?",
    /* Same columns as ST_LOG_GET, then idx. */
    [ST_LOG_RANGE] = "SELECT term, type, data, ext, appended_at, crc, idx"
                     " FROM logs WHERE idx BETWEEN ? AND ? ORDER BY idx",
    [ST_LOG_DELETE] = "DELETE FROM logs WHERE idx BETWEEN ? AND ?",
    /* min()/max() of the rowid are a single b-tree descent, not a scan. */
    [ST_LOG_MIN] = "SELECT min(idx) FROM logs",
    [ST_LOG_MAX] = "SELECT max(idx) FROM logs",
    [ST_META_PUT] = "INSERT OR REPLACE INTO meta (key, val) VALUES (?, ?)",
    [ST_META_GET] = "SELECT val FROM meta WHERE key = ?",
    [ST_KV_PUT] = "INSERT OR REPLACE INTO stable (key, val) VALUES (?, ?)",
    [ST_KV_GET] = "SELECT val FROM stable WHERE key = ?",
    [ST_FREELIST] = "PRAGMA freelist_count",
    [ST_PAGES] = "PRAGMA page_count",
    [ST_VACUUM] = "PRAGMA incremental_vacuum",
};

static const char sq_commit_key[] = "commit_index";

typedef struct sq_db {
    /* Guards everything below except the atomics. */
    pthread_mutex_t mu;
    sqlite3 *db;
    sqlite3_stmt *st[ST__N];
    /* Exact first and last index (0 when empty): written under `mu` once a
     * write has committed, read without it. */
    _Atomic uint64_t first;
    _Atomic uint64_t last;
    /* Non-zero (an sqlite code) once a write failed with an I/O error. */
    _Atomic int failed;
    uint64_t commit_index; /* last persisted */
    uint64_t staged_commit;
    bool staged;
    int refs; /* open stores: 2, then 1, then freed */
    bool sync_full; /* durability FULL */
    craft__logger_t lg;
    char *path;
    craft_log_store_t log;
    craft_stable_store_t stable;
} sq_db_t;

/* ---- logging -------------------------------------------------------- */

/* Through the library's logger: options.logger at every level, or stderr
 * for warnings and errors when there is none. */
#define sq_log(d, level, ...) craft__log(&(d)->lg, (level), "sqlite", __VA_ARGS__)

/* ---- CRC-32C of an entry -------------------------------------------- */

static void sq_put_be64(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(v >> (56 - 8 * i));
    }
}

/* Covers every field, so a row altered behind sqlite's back (or a page
 * silently damaged on disk: sqlite has no checksums of its own) is caught.
 * The fields are fed big-endian, each as 8 bytes, the data after its length
 * and the extensions after theirs. */
static uint32_t sq_entry_crc(const craft_log_t *l)
{
    unsigned char head[40];
    unsigned char ext_len[8];
    sq_put_be64(head, l->index);
    sq_put_be64(head + 8, l->term);
    sq_put_be64(head + 16, (uint64_t)(int64_t)l->type);
    sq_put_be64(head + 24, (uint64_t)l->appended_at_ns);
    sq_put_be64(head + 32, l->len);
    sq_put_be64(ext_len, l->ext_len);
    uint32_t crc = craft__crc32c(0, head, sizeof head);
    if (l->len > 0) {
        crc = craft__crc32c(crc, l->data, l->len);
    }
    crc = craft__crc32c(crc, ext_len, sizeof ext_len);
    if (l->ext_len > 0) {
        crc = craft__crc32c(crc, l->ext, l->ext_len);
    }
    return crc;
}

/* ---- error handling ------------------------------------------------- */

static int sq_map(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_NOMEM:
        return CRAFT_ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return CRAFT_ECORRUPT;
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
        return CRAFT_EINVAL;
    default:
        return CRAFT_EIO;
    }
}

/* Logs a failed write and, for errors after which the state on disk is
 * unknown, makes the store refuse every further call (a failed fsync cannot
 * be retried: the kernel may have dropped the dirty pages). */
static int sq_write_failed(sq_db_t *d, int rc, const char *what)
{
    sq_log(d, CRAFT_LEVEL_ERROR, "%s failed: %s (sqlite code %d) path=%s",
           what, sqlite3_errstr(rc), rc, d->path);
    int primary = rc & 0xff;
    if (primary == SQLITE_IOERR || primary == SQLITE_CORRUPT ||
        primary == SQLITE_NOTADB) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&d->failed, &expected, rc)) {
            sq_log(d, CRAFT_LEVEL_ERROR,
                   "store disabled after an I/O error; reopen it path=%s",
                   d->path);
        }
    }
    return sq_map(rc);
}

static int sq_check_failed(const sq_db_t *d)
{
    return atomic_load(&d->failed) != 0 ? CRAFT_EIO : 0;
}

/* Steps a prepared statement that returns no row (or whose rows are
 * ignored) and resets it. */
static int sq_run(sq_db_t *d, int which)
{
    sqlite3_stmt *s = d->st[which];
    int rc;
    do {
        rc = sqlite3_step(s);
    } while (rc == SQLITE_ROW);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Steps a statement returning one integer (NULL reads as 0). */
static int sq_int(sq_db_t *d, int which, int64_t *out)
{
    sqlite3_stmt *s = d->st[which];
    int rc = sqlite3_step(s);
    *out = 0;
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(s, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc;
}

static void sq_rollback(sq_db_t *d)
{
    if (!sqlite3_get_autocommit(d->db)) {
        int rc = sq_run(d, ST_ROLLBACK);
        if (rc != SQLITE_OK) {
            sq_write_failed(d, rc, "rollback");
        }
    }
}

/* Re-reads the first and last index (inside the caller's transaction). */
static int sq_bounds(sq_db_t *d, uint64_t *first, uint64_t *last)
{
    int64_t lo, hi;
    int rc = sq_int(d, ST_LOG_MIN, &lo);
    if (rc == SQLITE_OK) {
        rc = sq_int(d, ST_LOG_MAX, &hi);
    }
    if (rc != SQLITE_OK) {
        return rc;
    }
    if (lo < 0 || hi < lo) {
        return SQLITE_CORRUPT;
    }
    *first = (uint64_t)lo;
    *last = (uint64_t)hi;
    return SQLITE_OK;
}

/* ---- log store ------------------------------------------------------ */

static int sq_first_index(void *ctx, uint64_t *index)
{
    sq_db_t *d = ctx;
    if (index == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = sq_check_failed(d);
    *index = rv == 0 ? atomic_load(&d->first) : 0;
    return rv;
}

static int sq_last_index(void *ctx, uint64_t *index)
{
    sq_db_t *d = ctx;
    if (index == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = sq_check_failed(d);
    *index = rv == 0 ? atomic_load(&d->last) : 0;
    return rv;
}

/* Copies a BLOB (or NULL) column into a malloc'd buffer. */
static int sq_column_copy(sqlite3_stmt *s, int col, void **buf, size_t *len)
{
    int type = sqlite3_column_type(s, col);
    *buf = NULL;
    *len = 0;
    if (type == SQLITE_NULL) {
        return 0;
    }
    if (type != SQLITE_BLOB) {
        return CRAFT_ECORRUPT;
    }
    const void *p = sqlite3_column_blob(s, col);
    int n = sqlite3_column_bytes(s, col);
    if (n == 0) {
        return 0;
    }
    if (p == NULL) {
        return CRAFT_ENOMEM;
    }
    *buf = malloc((size_t)n);
    if (*buf == NULL) {
        return CRAFT_ENOMEM;
    }
    memcpy(*buf, p, (size_t)n);
    *len = (size_t)n;
    return 0;
}

/* Checks the sqlite types of an entry row whose columns 0..5 are term,
 * type, data, ext, appended_at, crc (ST_LOG_GET and ST_LOG_RANGE). Must run
 * before any sqlite3_column_bytes/blob call: those convert the value, after
 * which its type can no longer be read. */
static int sq_row_check(const sq_db_t *d, sqlite3_stmt *s, uint64_t index)
{
    for (int col = 0; col < 6; col++) {
        int t = sqlite3_column_type(s, col);
        if ((col == 2 || col == 3) ? (t != SQLITE_BLOB && t != SQLITE_NULL)
                                   : t != SQLITE_INTEGER) {
            sq_log(d, CRAFT_LEVEL_ERROR,
                   "corrupt entry: column %d has sqlite type %d index=%" PRIu64,
                   col, t, index);
            return CRAFT_ECORRUPT;
        }
    }
    return 0;
}

/* Copies a row that passed sq_row_check into *out (data and ext malloc'd)
 * after verifying its CRC-32C. Nothing is left allocated on error. */
static int sq_row_entry(const sq_db_t *d, sqlite3_stmt *s, uint64_t index,
                        craft_log_t *out)
{
    void *data = NULL, *ext = NULL;
    size_t len = 0, ext_len = 0;
    int rv;
    if ((rv = sq_column_copy(s, 2, &data, &len)) != 0 ||
        (rv = sq_column_copy(s, 3, &ext, &ext_len)) != 0) {
        goto err_after_copy;
    }
    craft_log_t e = {
        .index = index,
        .term = (uint64_t)sqlite3_column_int64(s, 0),
        .type = (craft_log_type_t)sqlite3_column_int64(s, 1),
        .data = data,
        .len = len,
        .ext = ext,
        .ext_len = ext_len,
        .appended_at_ns = sqlite3_column_int64(s, 4),
    };
    uint32_t stored = (uint32_t)sqlite3_column_int64(s, 5);
    if (sq_entry_crc(&e) != stored) {
        sq_log(d, CRAFT_LEVEL_ERROR,
               "corrupt entry: checksum mismatch index=%" PRIu64 " path=%s",
               index, d->path);
        rv = CRAFT_ECORRUPT;
        goto err_after_copy;
    }
    *out = e;
    return 0;

err_after_copy:
    free(data);
    free(ext);
    return rv;
}

static int sq_get_log(void *ctx, uint64_t index, craft_log_t *out)
{
    sq_db_t *d = ctx;
    int rv;

    if (out == NULL) {
        return CRAFT_EINVAL;
    }
    if (index == 0 || index > INT64_MAX) {
        return CRAFT_ENOTFOUND;
    }
    pthread_mutex_lock(&d->mu);
    if ((rv = sq_check_failed(d)) != 0) {
        goto out_unlock;
    }
    sqlite3_stmt *s = d->st[ST_LOG_GET];
    sqlite3_bind_int64(s, 1, (int64_t)index);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        rv = CRAFT_ENOTFOUND;
    } else if (rc != SQLITE_ROW) {
        sq_log(d, CRAFT_LEVEL_ERROR, "get_log failed: %s index=%" PRIu64,
               sqlite3_errstr(rc), index);
        rv = sq_map(rc);
    } else if ((rv = sq_row_check(d, s, index)) == 0) {
        rv = sq_row_entry(d, s, index, out);
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
out_unlock:
    pthread_mutex_unlock(&d->mu);
    return rv;
}

static bool sq_blob_or_null(sqlite3_stmt *s, int col)
{
    int t = sqlite3_column_type(s, col);
    return t == SQLITE_BLOB || t == SQLITE_NULL;
}

/* One statement for the whole range (rows come in idx order from the rowid
 * b-tree), under one hold of the mutex. Each row gets the same checks as
 * get_log. */
static int sq_get_logs(void *ctx, uint64_t lo, size_t max_n, size_t max_bytes,
                       craft_log_t *out, size_t *n)
{
    sq_db_t *d = ctx;
    size_t k = 0;
    size_t bytes = 0;
    int rv;

    if (n != NULL) {
        *n = 0;
    }
    if (out == NULL || n == NULL || max_n == 0) {
        return CRAFT_EINVAL;
    }
    if (lo == 0 || lo > INT64_MAX) {
        return CRAFT_ENOTFOUND;
    }
    uint64_t hi = (uint64_t)INT64_MAX;
    if (max_n - 1 < hi - lo) {
        hi = lo + (max_n - 1);
    }
    pthread_mutex_lock(&d->mu);
    if ((rv = sq_check_failed(d)) != 0) {
        goto out_unlock;
    }
    sqlite3_stmt *s = d->st[ST_LOG_RANGE];
    sqlite3_bind_int64(s, 1, (int64_t)lo);
    sqlite3_bind_int64(s, 2, (int64_t)hi);
    for (;;) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) {
            break;
        }
        if (rc != SQLITE_ROW) {
            sq_log(d, CRAFT_LEVEL_ERROR,
                   "get_logs failed: %s lo=%" PRIu64 " index=%" PRIu64,
                   sqlite3_errstr(rc), lo, lo + k);
            rv = sq_map(rc);
            goto err_after_rows;
        }
        /* idx is the rowid: always an integer. A gap ends the run. */
        if ((uint64_t)sqlite3_column_int64(s, 6) != lo + k) {
            break;
        }
        /* The byte budget decides first whether this row is returned (a
         * damaged row past the budget fails nothing); its size is only
         * known when data and ext are BLOB or NULL, and reading it does not
         * convert those types. A row whose size is unknown is refused. */
        if (k > 0 && sq_blob_or_null(s, 2) && sq_blob_or_null(s, 3)) {
            size_t size = (size_t)sqlite3_column_bytes(s, 2) +
                          (size_t)sqlite3_column_bytes(s, 3);
            if (size > max_bytes || bytes > max_bytes - size) {
                break;
            }
        }
        if ((rv = sq_row_check(d, s, lo + k)) != 0 ||
            (rv = sq_row_entry(d, s, lo + k, &out[k])) != 0) {
            goto err_after_rows;
        }
        bytes += out[k].len + out[k].ext_len;
        k++;
        if (k == max_n) {
            break;
        }
    }
    if (k == 0) {
        rv = CRAFT_ENOTFOUND;
    }
    *n = k;
    goto out_reset;

err_after_rows:
    for (size_t i = 0; i < k; i++) {
        craft_log_release(&out[i]);
    }
out_reset:
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
out_unlock:
    pthread_mutex_unlock(&d->mu);
    return rv;
}

static int sq_bind_blob(sqlite3_stmt *s, int col, const void *p, size_t len)
{
    if (len == 0) {
        return sqlite3_bind_null(s, col);
    }
    return sqlite3_bind_blob64(s, col, p, len, SQLITE_STATIC);
}

static int sq_put_commit(sq_db_t *d, uint64_t index)
{
    sqlite3_stmt *s = d->st[ST_META_PUT];
    sqlite3_bind_text(s, 1, sq_commit_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (int64_t)index);
    return sq_run(d, ST_META_PUT);
}

static int sq_store_logs(void *ctx, const craft_log_t *logs, size_t n)
{
    sq_db_t *d = ctx;
    uint64_t lo = UINT64_MAX, hi = 0;
    int rc = SQLITE_OK;
    int rv;

    if (n > 0 && logs == NULL) {
        return CRAFT_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        const craft_log_t *l = &logs[i];
        if (l->index == 0 || l->index > INT64_MAX ||
            (l->data == NULL && l->len > 0) ||
            (l->ext == NULL && l->ext_len > 0)) {
            sq_log(d, CRAFT_LEVEL_ERROR,
                   "store_logs: invalid entry index=%" PRIu64 " len=%zu",
                   l->index, l->len);
            return CRAFT_EINVAL;
        }
        lo = l->index < lo ? l->index : lo;
        hi = l->index > hi ? l->index : hi;
    }

    pthread_mutex_lock(&d->mu);
    if ((rv = sq_check_failed(d)) != 0) {
        goto out_unlock;
    }
    if (n == 0 && !d->staged) {
        goto out_unlock;
    }
    uint64_t staged = d->staged_commit;
    bool has_staged = d->staged;
    /* The commit index rides on the row that ends the log after this
     * batch; a batch that does not end the log (none, or rewriting rows
     * below the last) persists it in meta instead. */
    uint64_t commit = has_staged && staged > d->commit_index ? staged : d->commit_index;
    bool on_row = n > 0 && hi >= atomic_load(&d->last);

    if ((rc = sq_run(d, ST_BEGIN)) != SQLITE_OK) {
        goto err;
    }
    sqlite3_stmt *s = d->st[ST_LOG_PUT];
    for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
        const craft_log_t *l = &logs[i];
        sqlite3_bind_int64(s, 1, (int64_t)l->index);
        sqlite3_bind_int64(s, 2, (int64_t)l->term);
        sqlite3_bind_int64(s, 3, (int64_t)l->type);
        sq_bind_blob(s, 4, l->data, l->len);
        sq_bind_blob(s, 5, l->ext, l->ext_len);
        sqlite3_bind_int64(s, 6, l->appended_at_ns);
        sqlite3_bind_int64(s, 7, (int64_t)sq_entry_crc(l));
        if (on_row && l->index == hi && commit > 0) {
            sqlite3_bind_int64(s, 8, (int64_t)commit);
        } else {
            sqlite3_bind_null(s, 8);
        }
        rc = sq_run(d, ST_LOG_PUT);
    }
    if (rc == SQLITE_OK && has_staged && !on_row) {
        rc = sq_put_commit(d, commit);
    }
    if (rc == SQLITE_OK) {
        rc = sq_run(d, ST_COMMIT);
    }
    if (rc != SQLITE_OK) {
        goto err;
    }

    if (n > 0) {
        uint64_t first = atomic_load(&d->first);
        if (first == 0 || lo < first) {
            atomic_store(&d->first, lo);
        }
        if (hi > atomic_load(&d->last)) {
            atomic_store(&d->last, hi);
        }
    }
    if (has_staged) {
        d->commit_index = commit;
        d->staged = false;
    }
    goto out_unlock;

err:
    sq_rollback(d);
    rv = sq_write_failed(d, rc, "store_logs");
out_unlock:
    pthread_mutex_unlock(&d->mu);
    return rv;
}

/* Gives the free pages back to the file system when they are most of the
 * file (the log was compacted much more than it grew since). */
static int sq_maybe_vacuum(sq_db_t *d)
{
    int64_t free_pages, pages;
    int rc = sq_int(d, ST_FREELIST, &free_pages);
    if (rc == SQLITE_OK) {
        rc = sq_int(d, ST_PAGES, &pages);
    }
    if (rc == SQLITE_OK && free_pages >= SQ_VACUUM_MIN_FREE_PAGES &&
        free_pages > 4 * (pages - free_pages)) {
        rc = sq_run(d, ST_VACUUM);
    }
    return rc;
}

/* One transaction deleting [min, max]; vacuums when asked. Called with the
 * lock held; on failure the transaction is rolled back and the store marked
 * failed. */
static int sq_delete_txn(sq_db_t *d, uint64_t min, uint64_t max, bool vacuum)
{
    uint64_t first = 0, last = 0;
    int rc;
    if ((rc = sq_run(d, ST_BEGIN)) != SQLITE_OK) {
        goto err;
    }
    sqlite3_bind_int64(d->st[ST_LOG_DELETE], 1, (int64_t)min);
    sqlite3_bind_int64(d->st[ST_LOG_DELETE], 2, (int64_t)max);
    rc = sq_run(d, ST_LOG_DELETE);
    bool deleted = rc == SQLITE_OK && sqlite3_changes(d->db) > 0;
    if (deleted && vacuum) {
        rc = sq_maybe_vacuum(d);
    }
    if (rc == SQLITE_OK && deleted) {
        rc = sq_bounds(d, &first, &last);
    }
    /* The row that carried the commit index is gone with the old last
     * entry: meta carries it from now on. */
    if (rc == SQLITE_OK && deleted && max >= atomic_load(&d->last) && d->commit_index > 0) {
        rc = sq_put_commit(d, d->commit_index);
    }
    if (rc == SQLITE_OK) {
        rc = sq_run(d, ST_COMMIT);
    }
    if (rc != SQLITE_OK) {
        goto err;
    }
    if (deleted) {
        atomic_store(&d->first, first);
        atomic_store(&d->last, last);
    }
    return 0;
err:
    sq_rollback(d);
    return sq_write_failed(d, rc, "delete_range");
}

/* Sets the connection's synchronous level. Not a prepared statement: this
 * pragma acts when it is compiled, so a "PRAGMA synchronous=FULL" prepared
 * at open for later use switched the connection to FULL there and then
 * (durability NORMAL synced every commit). */
static int sq_set_sync(sq_db_t *d, bool full)
{
    return sqlite3_exec(d->db, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                        NULL, NULL, NULL);
}

/*
 * Compaction: deleting a prefix of the log that leaves at least one entry.
 * sqlite dirties every leaf page it deletes rows from, so dropping 20,000
 * entries of 1 KiB writes ~20 MiB to the WAL; in one transaction with a
 * synced commit that held the store (and every append behind it) for
 * 150-220 ms on the benchmark VM. Here it runs in chunks of
 * SQ_COMPACT_CHUNK entries, the store released between them, and with
 * durability FULL each chunk commits without its own fsync (synchronous
 * NORMAL for that transaction): a WAL is replayed in order, so the next
 * synced append makes the chunk durable too, and a crash before it only
 * leaves entries that were going to be deleted - a prefix, which the log
 * store contract allows. Truncating a suffix (a conflict) stays one synced
 * transaction.
 */
static int sq_compact(sq_db_t *d, uint64_t min, uint64_t max)
{
    int rv = 0;
    for (uint64_t lo = min; lo <= max && rv == 0;) {
        uint64_t hi = max - lo >= SQ_COMPACT_CHUNK - 1 ? lo + SQ_COMPACT_CHUNK - 1 : max;
        pthread_mutex_lock(&d->mu);
        if ((rv = sq_check_failed(d)) == 0) {
            int rc = d->sync_full ? sq_set_sync(d, false) : SQLITE_OK;
            if (rc != SQLITE_OK) {
                rv = sq_write_failed(d, rc, "delete_range");
            } else {
                rv = sq_delete_txn(d, lo, hi, hi == max);
                rc = d->sync_full ? sq_set_sync(d, true) : SQLITE_OK;
                if (rc != SQLITE_OK && rv == 0) {
                    /* Appends must not go on without their fsync. */
                    rv = sq_write_failed(d, rc, "delete_range");
                }
            }
        }
        pthread_mutex_unlock(&d->mu);
        if (hi == max) {
            break;
        }
        lo = hi + 1;
    }
    return rv;
}

static int sq_delete_range(void *ctx, uint64_t min, uint64_t max)
{
    sq_db_t *d = ctx;
    if (max > INT64_MAX) {
        max = INT64_MAX;
    }
    if (min > max) {
        return 0;
    }
    uint64_t first = atomic_load(&d->first), last = atomic_load(&d->last);
    if (first != 0 && min <= first && max < last && max - min >= SQ_COMPACT_CHUNK) {
        return sq_compact(d, min, max);
    }
    pthread_mutex_lock(&d->mu);
    int rv = sq_check_failed(d);
    if (rv == 0) {
        rv = sq_delete_txn(d, min, max, true);
    }
    pthread_mutex_unlock(&d->mu);
    return rv;
}

static int sq_stage_commit_index(void *ctx, uint64_t index)
{
    sq_db_t *d = ctx;
    if (index > INT64_MAX) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&d->mu);
    int rv = sq_check_failed(d);
    if (rv == 0) {
        d->staged_commit = index;
        d->staged = true;
    }
    pthread_mutex_unlock(&d->mu);
    return rv;
}

static int sq_get_commit_index(void *ctx, uint64_t *index)
{
    sq_db_t *d = ctx;
    if (index == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&d->mu);
    int rv = sq_check_failed(d);
    *index = rv == 0 ? d->commit_index : 0;
    pthread_mutex_unlock(&d->mu);
    return rv;
}

/* ---- stable store --------------------------------------------------- */

static int sq_kv_set(sq_db_t *d, const char *key, const void *val, size_t len)
{
    int rv;
    pthread_mutex_lock(&d->mu);
    if ((rv = sq_check_failed(d)) != 0) {
        goto out_unlock;
    }
    sqlite3_stmt *s = d->st[ST_KV_PUT];
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    if (len == 0) {
        sqlite3_bind_zeroblob(s, 2, 0); /* empty, not NULL */
    } else {
        sqlite3_bind_blob64(s, 2, val, len, SQLITE_STATIC);
    }
    int rc = sq_run(d, ST_KV_PUT); /* autocommit: its own transaction */
    if (rc != SQLITE_OK) {
        rv = sq_write_failed(d, rc, "stable set");
    }
out_unlock:
    pthread_mutex_unlock(&d->mu);
    return rv;
}

static int sq_kv_get(sq_db_t *d, const char *key, void **val, size_t *len)
{
    int rv;
    pthread_mutex_lock(&d->mu);
    if ((rv = sq_check_failed(d)) != 0) {
        goto out_unlock;
    }
    sqlite3_stmt *s = d->st[ST_KV_GET];
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        rv = CRAFT_ENOTFOUND;
    } else if (rc != SQLITE_ROW) {
        sq_log(d, CRAFT_LEVEL_ERROR, "stable get failed: %s key=%s",
               sqlite3_errstr(rc), key);
        rv = sq_map(rc);
    } else if (sqlite3_column_type(s, 0) != SQLITE_BLOB) {
        sq_log(d, CRAFT_LEVEL_ERROR, "corrupt stable value key=%s", key);
        rv = CRAFT_ECORRUPT;
    } else {
        rv = sq_column_copy(s, 0, val, len);
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
out_unlock:
    pthread_mutex_unlock(&d->mu);
    return rv;
}

static int sq_stable_set(void *ctx, const char *key, const void *val,
                         size_t len)
{
    if (key == NULL || (val == NULL && len > 0)) {
        return CRAFT_EINVAL;
    }
    return sq_kv_set(ctx, key, val, len);
}

static int sq_stable_get(void *ctx, const char *key, void **val, size_t *len)
{
    if (key == NULL || val == NULL || len == NULL) {
        return CRAFT_EINVAL;
    }
    return sq_kv_get(ctx, key, val, len);
}

static int sq_stable_set_uint64(void *ctx, const char *key, uint64_t val)
{
    unsigned char b[8];
    if (key == NULL) {
        return CRAFT_EINVAL;
    }
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(val >> (56 - 8 * i));
    }
    return sq_kv_set(ctx, key, b, sizeof b);
}

static int sq_stable_get_uint64(void *ctx, const char *key, uint64_t *val)
{
    void *buf;
    size_t len;
    if (key == NULL || val == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = sq_kv_get(ctx, key, &buf, &len);
    if (rv != 0) {
        return rv;
    }
    if (len != 8) {
        sq_log((const sq_db_t *)ctx, CRAFT_LEVEL_ERROR,
               "get_uint64: value is %zu bytes, not 8 key=%s", len, key);
        free(buf);
        return CRAFT_ECORRUPT;
    }
    const unsigned char *b = buf;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | b[i];
    }
    free(buf);
    *val = v;
    return 0;
}

/* ---- open / close --------------------------------------------------- */

static void sq_free(sq_db_t *d)
{
    for (int i = 0; i < ST__N; i++) {
        sqlite3_finalize(d->st[i]);
    }
    if (d->db != NULL) {
        /* Checkpoints the WAL into the database and removes it. */
        int rc = sqlite3_close(d->db);
        if (rc != SQLITE_OK) {
            sq_log(d, CRAFT_LEVEL_ERROR, "close failed: %s path=%s",
                   sqlite3_errstr(rc), d->path);
        }
    }
    pthread_mutex_destroy(&d->mu);
    free(d->path);
    free(d);
}

static void sq_release(sq_db_t *d)
{
    pthread_mutex_lock(&d->mu);
    bool last = --d->refs == 0;
    pthread_mutex_unlock(&d->mu);
    if (last) {
        sq_free(d);
    }
}

static void sq_log_close(void *ctx)
{
    sq_release(ctx);
}

static void sq_stable_close(void *ctx)
{
    sq_release(ctx);
}

/* Runs a statement given as text returning at most one value: an integer
 * (*iv) or a text copied into txt[txt_len]. */
static int sq_query1(sq_db_t *d, const char *sql, int64_t *iv, char *txt,
                     size_t txt_len)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(d->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) {
        return rc;
    }
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (iv != NULL) {
            *iv = sqlite3_column_int64(s, 0);
        }
        if (txt != NULL) {
            const unsigned char *t = sqlite3_column_text(s, 0);
            snprintf(txt, txt_len, "%s", t != NULL ? (const char *)t : "");
        }
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(s);
    return rc;
}

/* Maps an error while opening, with a message naming the file. */
static int sq_open_failed(sq_db_t *d, int rc, const char *what)
{
    int rv = sq_map(rc);
    int primary = rc & 0xff;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) {
        sq_log(d, CRAFT_LEVEL_ERROR,
               "%s: database is locked (opened elsewhere) path=%s", what,
               d->path);
        return CRAFT_EIO;
    }
    if (rv == CRAFT_ECORRUPT) {
        sq_log(d, CRAFT_LEVEL_ERROR,
               "%s: not a craft database or corrupt (%s) path=%s", what,
               sqlite3_errmsg(d->db), d->path);
    } else {
        sq_log(d, CRAFT_LEVEL_ERROR, "%s failed: %s path=%s", what,
               sqlite3_errmsg(d->db), d->path);
    }
    return rv;
}

/* Creates the schema in an empty database. auto_vacuum must be chosen
 * before the first table exists; the journal mode cannot change inside a
 * transaction. The tables and both markers commit together, so a crash
 * leaves either an empty database or a complete one. */
static int sq_create(sq_db_t *d)
{
    char buf[256];
    int rc = sqlite3_exec(d->db, "PRAGMA auto_vacuum=INCREMENTAL", NULL, NULL,
                          NULL);
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "auto_vacuum");
    }
    rc = sq_query1(d, "PRAGMA journal_mode=WAL", NULL, buf, sizeof buf);
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "journal_mode");
    }
    char *sql = sqlite3_mprintf("BEGIN IMMEDIATE; %s PRAGMA application_id=%d;"
                                " PRAGMA user_version=%d; COMMIT;",
                                sq_schema, SQ_APPLICATION_ID,
                                SQ_SCHEMA_VERSION);
    if (sql == NULL) {
        return CRAFT_ENOMEM;
    }
    rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
    sqlite3_free(sql);
    if (rc != SQLITE_OK) {
        int rv = sq_open_failed(d, rc, "create schema");
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
        return rv;
    }
    sq_log(d, CRAFT_LEVEL_INFO, "created database path=%s", d->path);
    return 0;
}

/* Brings a database of an older schema version up to this one, in one
 * transaction (a crash leaves the old version, migrated again next time).
 * 1 -> 2: logs.commit_idx (the commit index then still sits in meta, which
 * sq_load reads as well). */
static int sq_migrate(sq_db_t *d, int64_t version)
{
    char *sql = sqlite3_mprintf("BEGIN IMMEDIATE;"
                                " ALTER TABLE logs ADD COLUMN commit_idx INTEGER;"
                                " PRAGMA user_version=%d; COMMIT;",
                                SQ_SCHEMA_VERSION);
    if (sql == NULL) {
        return CRAFT_ENOMEM;
    }
    int rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
    sqlite3_free(sql);
    if (rc != SQLITE_OK) {
        int rv = sq_open_failed(d, rc, "migrate schema");
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
        return rv;
    }
    sq_log(d, CRAFT_LEVEL_INFO, "migrated database from schema %" PRId64 " to %d path=%s",
           version, SQ_SCHEMA_VERSION, d->path);
    return 0;
}

/* Recognises the file: an empty database is initialised, a craft database of
 * this or an older schema version is accepted (and migrated), anything else
 * is refused untouched. */
static int sq_identify(sq_db_t *d)
{
    int64_t tables = 0, app = 0, version = 0;
    int rc = sq_query1(d, "SELECT count(*) FROM sqlite_master", &tables, NULL,
                       0);
    if (rc == SQLITE_OK) {
        rc = sq_query1(d, "PRAGMA application_id", &app, NULL, 0);
    }
    if (rc == SQLITE_OK) {
        rc = sq_query1(d, "PRAGMA user_version", &version, NULL, 0);
    }
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "read header");
    }
    if (tables == 0 && app == 0 && version == 0) {
        return sq_create(d);
    }
    if (app != SQ_APPLICATION_ID) {
        sq_log(d, CRAFT_LEVEL_ERROR,
               "not a craft database (application_id=0x%" PRIx64
               ", %" PRId64 " tables) path=%s",
               (uint64_t)app, tables, d->path);
        return CRAFT_ECORRUPT;
    }
    if (version > SQ_SCHEMA_VERSION) {
        sq_log(d, CRAFT_LEVEL_ERROR,
               "database schema version %" PRId64
               " is newer than this craft supports (%d) path=%s",
               version, SQ_SCHEMA_VERSION, d->path);
        return CRAFT_ECORRUPT;
    }
    if (version < 1) {
        sq_log(d, CRAFT_LEVEL_ERROR,
               "craft database without a schema version path=%s", d->path);
        return CRAFT_ECORRUPT;
    }
    char mode[32];
    rc = sq_query1(d, "PRAGMA journal_mode=WAL", NULL, mode, sizeof mode);
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "journal_mode");
    }
    if (strcmp(mode, "wal") != 0) {
        sq_log(d, CRAFT_LEVEL_ERROR, "cannot enter WAL mode (%s) path=%s",
               mode, d->path);
        return CRAFT_EIO;
    }
    return version < SQ_SCHEMA_VERSION ? sq_migrate(d, version) : 0;
}

static int sq_quick_check(sq_db_t *d)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(d->db, "PRAGMA quick_check(1)", -1, &s, NULL);
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "quick_check");
    }
    int rv = 0;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (t == NULL || strcmp((const char *)t, "ok") != 0) {
            sq_log(d, CRAFT_LEVEL_ERROR, "corrupt database: %s path=%s",
                   t != NULL ? (const char *)t : "?", d->path);
            rv = CRAFT_ECORRUPT;
        }
    } else {
        rv = sq_open_failed(d, rc, "quick_check");
    }
    sqlite3_finalize(s);
    return rv;
}

static int sq_configure(sq_db_t *d, const craft_sqlite_options_t *o)
{
    char sql[160];
    /* A small page cache (128 KiB, 32 pages): the log is append-mostly,
     * an append touches the few pages on the B-tree's right edge, craft
     * serves recent entries from its own in-memory window, and older pages
     * come from the OS page cache. sqlite's default is 2 MiB per
     * connection, which was half of a node's memory in craft-bench; 512
     * KiB was still 40% of the anonymous memory of a 3-node process. */
    snprintf(sql, sizeof sql,
             "PRAGMA synchronous=%s; PRAGMA journal_size_limit=%d; PRAGMA cache_size=-128;"
             " PRAGMA secure_delete=FAST;",
             o->durability == CRAFT_SQLITE_DURABILITY_NORMAL ? "NORMAL"
                                                             : "FULL",
             SQ_JOURNAL_SIZE_LIMIT);
    int rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "configure");
    }
    int64_t av = 0;
    rc = sq_query1(d, "PRAGMA auto_vacuum", &av, NULL, 0);
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "auto_vacuum");
    }
    if (av != 2) {
        sq_log(d, CRAFT_LEVEL_WARN,
               "auto_vacuum is %" PRId64
               ", not incremental: deleted space is reused but never "
               "returned path=%s",
               av, d->path);
    }
    return 0;
}

static int sq_prepare_all(sq_db_t *d)
{
    for (int i = 0; i < ST__N; i++) {
        int rc = sqlite3_prepare_v3(d->db, sq_stmt_sql[i], -1,
                                    SQLITE_PREPARE_PERSISTENT, &d->st[i], NULL);
        if (rc != SQLITE_OK) {
            sq_log(d, CRAFT_LEVEL_ERROR,
                   "schema does not match (%s) path=%s",
                   sqlite3_errmsg(d->db), d->path);
            return (rc & 0xff) == SQLITE_ERROR ? CRAFT_ECORRUPT : sq_map(rc);
        }
    }
    return 0;
}

static int sq_load(sq_db_t *d)
{
    uint64_t first, last;
    int64_t commit = 0;
    int rc = sq_bounds(d, &first, &last);
    if (rc == SQLITE_OK) {
        sqlite3_stmt *s = d->st[ST_META_GET];
        sqlite3_bind_text(s, 1, sq_commit_key, -1, SQLITE_STATIC);
        rc = sq_int(d, ST_META_GET, &commit);
    }
    if (rc == SQLITE_OK && last > 0) {
        /* The newer of meta's value and the last row's (NULL reads 0). */
        int64_t on_row = 0;
        sqlite3_bind_int64(d->st[ST_LOG_COMMIT_GET], 1, (int64_t)last);
        rc = sq_int(d, ST_LOG_COMMIT_GET, &on_row);
        if (on_row > commit || on_row < 0) {
            commit = on_row;
        }
    }
    if (rc != SQLITE_OK) {
        return sq_open_failed(d, rc, "load");
    }
    if (commit < 0) {
        sq_log(d, CRAFT_LEVEL_ERROR, "corrupt commit index %" PRId64
               " path=%s", commit, d->path);
        return CRAFT_ECORRUPT;
    }
    atomic_store(&d->first, first);
    atomic_store(&d->last, last);
    d->commit_index = (uint64_t)commit;
    return 0;
}

void craft_sqlite_options_default(craft_sqlite_options_t *o)
{
    memset(o, 0, sizeof *o);
}

int craft_sqlite_open(const char *path, const craft_sqlite_options_t *opts,
                      craft_log_store_t **log, craft_stable_store_t **stable)
{
    craft_sqlite_options_t o;
    int rv;

    if (path == NULL || log == NULL || stable == NULL) {
        return CRAFT_EINVAL;
    }
    if (opts != NULL) {
        o = *opts;
    } else {
        craft_sqlite_options_default(&o);
    }
    if (o.durability != CRAFT_SQLITE_DURABILITY_FULL &&
        o.durability != CRAFT_SQLITE_DURABILITY_NORMAL) {
        return CRAFT_EINVAL;
    }

    sq_db_t *d = calloc(1, sizeof *d);
    if (d == NULL) {
        return CRAFT_ENOMEM;
    }
    d->lg.fn = o.logger != NULL ? o.logger : craft__stderr_logger;
    d->lg.ctx = o.logger_ctx;
    d->lg.level = o.logger != NULL ? CRAFT_LEVEL_TRACE : CRAFT_LEVEL_WARN;
    d->lg.prefix = NULL;
    d->refs = 2;
    d->sync_full = o.durability == CRAFT_SQLITE_DURABILITY_FULL;
    d->path = strdup(path);
    if (d->path == NULL) {
        free(d);
        return CRAFT_ENOMEM;
    }
    if (pthread_mutex_init(&d->mu, NULL) != 0) {
        free(d->path);
        free(d);
        return CRAFT_ENOMEM;
    }
    if (!sqlite3_threadsafe()) {
        sq_log(d, CRAFT_LEVEL_ERROR, "sqlite3 was built without thread safety");
        rv = CRAFT_ENOTSUP;
        goto err_after_alloc;
    }

    /* Our mutex serialises every use of the connection. */
    int rc = sqlite3_open_v2(path, &d->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                 SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        if (d->db == NULL) {
            rv = CRAFT_ENOMEM;
        } else {
            rv = sq_open_failed(d, rc, "open");
            if (rv == CRAFT_ECORRUPT) {
                rv = CRAFT_EIO; /* cannot open the file at all */
            }
        }
        goto err_after_alloc;
    }
    sqlite3_extended_result_codes(d->db, 1);
    sqlite3_busy_timeout(d->db, SQ_BUSY_TIMEOUT_MS);
    /* Set before WAL mode is entered: the connection takes an exclusive lock
     * on the file for its whole life (a second open fails instead of two
     * nodes sharing one log) and keeps the WAL index in its own memory (no
     * -shm file). */
    rc = sqlite3_exec(d->db, "PRAGMA locking_mode=EXCLUSIVE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        rv = sq_open_failed(d, rc, "locking_mode");
        goto err_after_alloc;
    }
    if ((rv = sq_identify(d)) != 0 || (rv = sq_configure(d, &o)) != 0) {
        goto err_after_alloc;
    }
    if (!o.skip_open_check && (rv = sq_quick_check(d)) != 0) {
        goto err_after_alloc;
    }
    if ((rv = sq_prepare_all(d)) != 0 || (rv = sq_load(d)) != 0) {
        goto err_after_alloc;
    }

    d->log = (craft_log_store_t){
        .ctx = d,
        .first_index = sq_first_index,
        .last_index = sq_last_index,
        .get_log = sq_get_log,
        .store_logs = sq_store_logs,
        .delete_range = sq_delete_range,
        .stage_commit_index = sq_stage_commit_index,
        .get_commit_index = sq_get_commit_index,
        .get_logs = sq_get_logs,
        .close = sq_log_close,
    };
    d->stable = (craft_stable_store_t){
        .ctx = d,
        .set = sq_stable_set,
        .get = sq_stable_get,
        .set_uint64 = sq_stable_set_uint64,
        .get_uint64 = sq_stable_get_uint64,
        .close = sq_stable_close,
    };
    *log = &d->log;
    *stable = &d->stable;
    return 0;

err_after_alloc:
    sq_free(d);
    return rv;
}
