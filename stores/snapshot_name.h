/* Snapshot IDs shared by the snapshot stores: hashicorp's snapshotName,
 * "<term>-<index>-<unix ms>". */
#ifndef CRAFT_STORES_SNAPSHOT_NAME_H
#define CRAFT_STORES_SNAPSHOT_NAME_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* Longest name: three 20-digit numbers, two dashes, NUL. */
#define CRAFT__SNAPSHOT_NAME_MAX 64

/* Writes a new name into buf (>= CRAFT__SNAPSHOT_NAME_MAX bytes). hashicorp
 * names two snapshots taken in the same millisecond alike; here the ms part
 * is moved past *last_ms (the caller's, under its lock), so names from one
 * store never repeat and later names sort after earlier ones. */
static inline void craft__snapshot_name(char *buf, uint64_t term,
                                        uint64_t index, uint64_t *last_ms)
{
    struct timespec ts;
    uint64_t ms;
    clock_gettime(CLOCK_REALTIME, &ts);
    ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    if (ms <= *last_ms) {
        ms = *last_ms + 1;
    }
    *last_ms = ms;
    snprintf(buf, CRAFT__SNAPSHOT_NAME_MAX, "%" PRIu64 "-%" PRIu64 "-%" PRIu64,
             term, index, ms);
}

#endif
