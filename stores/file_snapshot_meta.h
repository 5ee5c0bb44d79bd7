/* meta.json codec of the file snapshot store. */
#ifndef CRAFT_STORES_FILE_SNAPSHOT_META_H
#define CRAFT_STORES_FILE_SNAPSHOT_META_H

#include <stddef.h>
#include <stdint.h>

#include "craft.h"

/* Encodes `m` and the data's CRC-64 as meta.json text: *out is malloc'd and
 * NUL-terminated, *len excludes the NUL. Returns 0 or CRAFT_ENOMEM. */
int craft__snapshot_meta_encode(const craft_snapshot_meta_t *m, uint64_t crc,
                                char **out, size_t *len);

/* Parses meta.json text (`len` bytes, need not be NUL-terminated) into a
 * malloc'd meta (free with craft_snapshot_meta_free) and the CRC. Accepts
 * exactly the keys the encoder writes, each once, in any order, with any
 * JSON whitespace. Returns 0, CRAFT_ECORRUPT for anything else (never
 * reading past `len`), or CRAFT_ENOMEM. */
int craft__snapshot_meta_decode(const char *text, size_t len,
                                craft_snapshot_meta_t **out, uint64_t *crc);

#endif
