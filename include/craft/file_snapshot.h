/*
 * A durable SnapshotStore on the local file system, in the shape of
 * hashicorp's FileSnapshotStore.
 *
 * Layout: `<dir>/snapshots/<id>/` per snapshot, `<id>` being
 * "<term>-<index>-<unix ms>", holding
 *   state.bin  the snapshot data, exactly as written to the sink;
 *   meta.json  one JSON object: {"version", "id", "index", "term",
 *              "configuration": {"servers": [{"suffrage": "Voter" |
 *              "Nonvoter", "id", "address"}...]}, "configuration_index",
 *              "size", "crc"}. Numbers are unsigned decimal integers; "crc"
 *              is the CRC-64/ECMA-182 of state.bin as Go's
 *              crc64.MakeTable(crc64.ECMA) computes it (what hashicorp
 *              uses), as 16 lowercase hex digits. Strings are JSON strings;
 *              bytes >= 0x80 are stored as they are (no UTF-8 check). The
 *              reader accepts exactly these keys, each once, in any order,
 *              and rejects anything else as CRAFT_ECORRUPT.
 *
 * Durability: a sink writes into `<id>.tmp/`; close fsyncs state.bin and
 * meta.json and the directory, renames it to `<id>` and fsyncs
 * `<dir>/snapshots`, then deletes all but the `retain` newest snapshots.
 * A crash at any point leaves either the complete snapshot or a `.tmp`
 * directory, which list never shows and the next store open removes.
 *
 * Thread safety: a store may be used from any number of threads; a sink or a
 * reader from one thread at a time. Close every sink (close or cancel)
 * before closing the store. Readers do not reference the store and stay
 * valid after it is closed and after their snapshot is deleted by retention.
 */
#ifndef CRAFT_FILE_SNAPSHOT_H
#define CRAFT_FILE_SNAPSHOT_H

#include "../craft.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How many snapshots a store keeps when the options say 0. */
#define CRAFT_FILE_SNAPSHOT_RETAIN_DEFAULT 2

/* Options for craft_file_snapshot_store_open. A zeroed struct means the
 * defaults, so fields added later keep the meaning of zero. */
typedef struct craft_file_snapshot_options {
    /* Number of newest snapshots kept; 0 = CRAFT_FILE_SNAPSHOT_RETAIN_DEFAULT.
     * Older ones are deleted when a new snapshot is closed. */
    int retain;
    /* Where the store's messages go (component "snapshot"): INFO when it
     * deletes a snapshot by retention or a leftover of an interrupted one,
     * WARN/ERROR on failures and skipped snapshots. NULL = the library's
     * default logger ("[LEVEL] snapshot: message" lines on stderr) for
     * warnings and errors only. Called on the thread making the call
     * (readers included); must be thread-safe and, with `logger_ctx`,
     * outlive the store and every reader it opened. */
    craft_logger_fn logger;
    void *logger_ctx;
} craft_file_snapshot_options_t;

/* Fills `o` with the defaults (all zero). */
void craft_file_snapshot_options_default(craft_file_snapshot_options_t *o);

/* Opens (creating `<dir>/snapshots` and its parents when missing) a file
 * snapshot store keeping the `retain` newest snapshots. `dir` is copied;
 * `opts` is borrowed for the call (NULL = defaults). Checks that the
 * directory is writable and removes the `.tmp` directories left by
 * interrupted snapshots.
 *
 * The store's operations, beyond the craft_snapshot_store_t contract:
 *  - list: newest first (by term, then index, then id), at most `retain`
 *    entries; directories whose meta.json is missing or unreadable, or
 *    whose state.bin is missing or not of the recorded size, are skipped
 *    with a warning logged.
 *  - open: CRAFT_EINVAL for an id that is empty or contains '/' or "..";
 *    CRAFT_ENOTFOUND when there is no such (complete) snapshot;
 *    CRAFT_ECORRUPT when meta.json is malformed or state.bin is missing or
 *    of the wrong size. The data's checksum is verified while reading,
 *    without holding the data in memory: the reader returns CRAFT_ECORRUPT
 *    instead of the final bytes when the CRC does not match, at the end of
 *    the file when it is shorter than the recorded size, and after the last
 *    byte when it is longer. Callers must therefore read to the end (at
 *    least `size` bytes) and treat an error there as a bad snapshot.
 *  - sink write/close: CRAFT_EIO on write errors (disk full included); the
 *    temporary directory is removed by cancel, or by close when it fails.
 *    A failure to delete old snapshots after a successful close is logged,
 *    not returned: the new snapshot is durable.
 *
 * Returns 0, CRAFT_EINVAL (NULL/empty dir, retain < 0, NULL out),
 * CRAFT_EIO (cannot create or write the directory) or CRAFT_ENOMEM. */
int craft_file_snapshot_store_open(const char *dir,
                                   const craft_file_snapshot_options_t *opts,
                                   craft_snapshot_store_t **out);

/* craft_file_snapshot_store_open with `retain` (>= 1, else CRAFT_EINVAL) and
 * no logger: warnings and errors go to stderr. */
int craft_file_snapshot_store_new(const char *dir, int retain,
                                  craft_snapshot_store_t **out);

/* Reads snapshot `id` of a store made by craft_file_snapshot_store_open/_new
 * through to the end, checking meta, size and CRC without returning or
 * holding the data. Returns 0, CRAFT_EINVAL (not a file snapshot store, bad
 * id), CRAFT_ENOTFOUND, CRAFT_ECORRUPT, CRAFT_EIO or CRAFT_ENOMEM. */
int craft_file_snapshot_verify(craft_snapshot_store_t *store, const char *id);

#ifdef __cplusplus
}
#endif
#endif /* CRAFT_FILE_SNAPSHOT_H */
