/*
 * Durable LogStore + StableStore in one sqlite3 database file.
 *
 * Layout: the log is a table of rows keyed by index (term, type, data,
 * extensions, appended_at, checksum, and on the row that ended a batch the
 * commit index persisted with it), the stable keys live in a second table
 * and a third holds the commit index when no row carries it (after the row
 * that did was deleted, or a batch that did not end the log). The schema
 * version (2) is kept in PRAGMA user_version and the file is marked as
 * craft's with PRAGMA application_id, so a foreign or newer file is refused,
 * never overwritten; a schema-1 file is migrated in place at open (one
 * transaction adding the column).
 *
 * Durability: the database runs in WAL mode. With CRAFT_SQLITE_DURABILITY_FULL
 * (the default) every store_logs, set and suffix delete_range is fsynced
 * before it returns (synchronous=FULL). Compaction (a delete_range of a
 * prefix of more than 128 entries) runs in transactions of 128 entries with
 * the store released between them, each committed without its own fsync: it
 * becomes durable with the next synced write, in order (a crash can leave a
 * lower first index, never a gap), as the LogStore contract allows. sqlite
 * rewrites every page it deletes rows from, so one synced transaction
 * deleting 20,000 entries of 1 KiB held every append behind it for 150-220 ms. With CRAFT_SQLITE_DURABILITY_NORMAL the WAL is
 * synced only at checkpoints (synchronous=NORMAL): a power loss or OS crash may
 * lose the most recent writes, but never corrupts the database, and a process
 * crash (kill -9) loses nothing that was acknowledged.
 *
 * Space: the database uses auto_vacuum=INCREMENTAL. Pages freed by
 * delete_range are reused by later appends; when more than four fifths of the
 * file is free after a delete, the free pages are given back to the file
 * system (incremental_vacuum), so a log compacted continuously keeps a
 * bounded file and a log that shrank a lot gives its space back. Deleted
 * content is zeroed only where that costs no extra I/O (secure_delete=FAST;
 * Debian builds sqlite with secure_delete on).
 *
 * Locking: the file is opened in sqlite's EXCLUSIVE locking mode; a second
 * open of the same file (from this or another process) fails with CRAFT_EIO
 * until the first one is closed. Within one open, the log store and stable
 * store share one connection guarded by one mutex; every call takes it for
 * its whole duration, so calls of both stores are serialised (a get_log
 * waits for a store_logs in progress, including its fsync). first_index and
 * last_index read cached values (exact, updated when a write commits) without
 * taking the mutex, so they never wait for a write. All calls of both stores
 * are safe from any thread.
 */
#ifndef CRAFT_SQLITE_H
#define CRAFT_SQLITE_H

#include "../craft.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    /* fsync before every write call returns (synchronous=FULL). */
    CRAFT_SQLITE_DURABILITY_FULL = 0,
    /* fsync at WAL checkpoints only (synchronous=NORMAL): the last writes may
     * be lost on power loss; the file is never corrupted. */
    CRAFT_SQLITE_DURABILITY_NORMAL = 1
} craft_sqlite_durability_t;

/* Options for craft_sqlite_open. A zeroed struct means the defaults, so
 * fields added later keep the meaning of zero. */
typedef struct craft_sqlite_options {
    /* Default CRAFT_SQLITE_DURABILITY_FULL. */
    craft_sqlite_durability_t durability;
    /* Skip the structural check (PRAGMA quick_check, which reads the whole
     * file) at open. Default false: a corrupt file is refused at open. */
    bool skip_open_check;
    /* Where errors and warnings go (component "sqlite"); NULL = stderr lines
     * "[LEVEL] sqlite: message" for warnings and errors only. Called on the
     * thread making the failing call; must be thread-safe. */
    craft_logger_fn logger;
    void *logger_ctx;
} craft_sqlite_options_t;

/* Fills `o` with the defaults (all zero). */
void craft_sqlite_options_default(craft_sqlite_options_t *o);

/* Opens (creating it if absent) the craft database at `path` and returns a
 * LogStore and a StableStore backed by it. `path` and `opts` are borrowed for
 * the call; `opts` NULL = defaults. The two stores are closed independently
 * with their own `close` (each exactly once); the file is closed when both
 * are. The log store offers the commit-tracking extension: the index given to
 * stage_commit_index is written in the same transaction as the next
 * store_logs batch (at once if that batch is empty); a lower value than the
 * one persisted is ignored (a commit index never goes back).
 *
 * Log indexes must be in 1..INT64_MAX (CRAFT_EINVAL otherwise). Entries are
 * stored with INSERT OR REPLACE: storing an existing index overwrites it.
 * In the stable store, set_uint64 stores the value as 8 big-endian bytes under
 * the same key space as set (raft-boltdb's layout); get_uint64 of a value that
 * is not 8 bytes long fails with CRAFT_ECORRUPT.
 *
 * Errors: CRAFT_EINVAL (NULL arguments), CRAFT_ENOMEM, CRAFT_EIO (cannot open
 * or create the file, file locked by another open), CRAFT_ECORRUPT (the file
 * is not a craft database, has a newer schema, is truncated or corrupt; the
 * file is left untouched and the reason is logged).
 *
 * After an I/O error while writing, a store refuses every further call with
 * CRAFT_EIO: what reached the disk is unknown until the file is reopened. An
 * entry whose checksum does not match makes get_log fail with CRAFT_ECORRUPT.
 *
 * Note: a zero-length file is an empty sqlite database and is initialised as
 * a new craft database. */
int craft_sqlite_open(const char *path, const craft_sqlite_options_t *opts,
                      craft_log_store_t **log, craft_stable_store_t **stable);

#ifdef __cplusplus
}
#endif
#endif /* CRAFT_SQLITE_H */
