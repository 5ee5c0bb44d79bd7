/*
 * msgpack helpers shaped after hashicorp/raft's go-msgpack usage, and the
 * configuration-entry codec (hashicorp's EncodeConfiguration /
 * DecodeConfiguration). See WIRE.md §3 and §6.
 *
 * Encoding and decoding are msgpack-c's; this file shapes them after
 * go-msgpack and guards them against hostile input.
 *
 * Writer: msgpack-c's packer (msgpack_pack_*) appending to a growable
 * buffer, in exactly the forms go-msgpack writes (raw/str family only for
 * strings and bytes, smallest unsigned forms, v0.5.5 or v2 signed forms).
 * Errors are sticky: every put_* is a no-op once the buffer has failed;
 * check `err` at the end.
 *
 * Reader: a cursor over the values in a byte buffer. Each top-level value
 * is first checked by the scanner below (complete, within the limits,
 * nesting within CRAFT__MP_MAX_DEPTH; skipped when the caller scanned the
 * buffer already: craft__mp_reader_scanned) and then decoded by msgpack-c
 * (msgpack_unpack, in a zone each thread reuses) into an object tree,
 * which the cursor walks one value at a time; strings and ext payloads are
 * views into the buffer. It never reads outside [p, p+len) and reports
 * three outcomes: CRAFT__MP_OK, CRAFT__MP_SHORT (the buffer ends inside
 * the value: more bytes could complete it) and CRAFT__MP_BAD (malformed,
 * wrong type or over a limit; `reason` holds a static description). After
 * SHORT or BAD the position is unspecified: the value is to be abandoned.
 * A reader holds msgpack-c memory while inside a top-level value:
 * craft__mp_reader_destroy releases it (always safe to call).
 *
 * Scanner: a resumable structural check that finds where one (or several
 * consecutive) msgpack values end without decoding them, for stream
 * framing and to bound what msgpack-c is given (it sizes each map and
 * array from the declared count before reading the items). It keeps its
 * progress between calls, so a value arriving in many pieces is scanned
 * once in total.
 *
 * No I/O anywhere in this file. Not thread-safe per object; distinct
 * objects may be used concurrently.
 */
#ifndef CRAFT_LIB_CODEC_H
#define CRAFT_LIB_CODEC_H

#include "craft.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Writer                                                                    */
/* ------------------------------------------------------------------------ */

/* How signed integers (Go `int`/`int64` fields) are written.
 * V055: go-msgpack v0.5.5 (hashicorp/raft <= 1.5 with default codec):
 *       non-negative values exactly like unsigned (fixint/cc/cd/ce/cf).
 * V2:   go-msgpack v2.1 (hashicorp/raft 1.6+): 0..127 fixint, larger
 *       positives as signed d1/d2/d3 (never d0).
 * Negatives are identical in both (fixneg, d0..d3, smallest). Every
 * hashicorp decoder accepts both forms (WIRE.md §3). */
typedef enum {
    CRAFT__MP_INT_V055 = 0,
    CRAFT__MP_INT_V2 = 1
} craft__mp_int_form_t;

typedef struct craft__mp_buf {
    uint8_t *data; /* malloc'd; owned by the buffer (craft__mp_buf_free) */
    size_t len;    /* bytes written */
    size_t cap;
    int err;       /* sticky: 0, CRAFT_ENOMEM or CRAFT_EINVAL (too long) */
} craft__mp_buf_t;

/* Empty buffer, no allocation. */
void craft__mp_buf_init(craft__mp_buf_t *b);
/* Frees the memory; leaves the buffer empty and reusable. NULL-safe. */
void craft__mp_buf_free(craft__mp_buf_t *b);
/* Forgets the content and the error but keeps the memory. */
void craft__mp_buf_reset(craft__mp_buf_t *b);
/* Ensures room for `n` more bytes. Returns 0 or the (sticky) error. */
int craft__mp_buf_reserve(craft__mp_buf_t *b, size_t n);
/* Hands the content to the caller: returns the malloc'd bytes (non-NULL
 * even when empty, unless an error is pending) and their length, and
 * leaves the buffer empty. Returns NULL with the buffer freed when `err`
 * is set. */
void *craft__mp_buf_steal(craft__mp_buf_t *b, size_t *len);

/* Appends bytes verbatim (no msgpack header). */
void craft__mp_put_bytes(craft__mp_buf_t *b, const void *p, size_t n);
void craft__mp_put_nil(craft__mp_buf_t *b);
void craft__mp_put_bool(craft__mp_buf_t *b, bool v);
/* Smallest unsigned form: fixint, cc, cd, ce, cf. */
void craft__mp_put_uint(craft__mp_buf_t *b, uint64_t v);
void craft__mp_put_int(craft__mp_buf_t *b, int64_t v, craft__mp_int_form_t form);
/* A string or []byte the way go-msgpack writes it (WriteExt=false):
 * fixstr, raw16 (da) or raw32 (db); never str8 or bin. `p` may be NULL
 * when n == 0. Lengths over UINT32_MAX set err = CRAFT_EINVAL. */
void craft__mp_put_str(craft__mp_buf_t *b, const void *p, size_t n);
/* A NUL-terminated string, or nil when `s` is NULL (Go nil []byte). */
void craft__mp_put_cstr_or_nil(craft__mp_buf_t *b, const char *s);
/* A []byte: nil when `p` is NULL, else a raw string (possibly empty). */
void craft__mp_put_blob_or_nil(craft__mp_buf_t *b, const void *p, size_t n);
/* Map / array headers: fixmap/fixarray, then 16 or 32-bit forms. */
void craft__mp_put_map(craft__mp_buf_t *b, uint32_t n);
void craft__mp_put_array(craft__mp_buf_t *b, uint32_t n);

/* ------------------------------------------------------------------------ */
/* Reader                                                                    */
/* ------------------------------------------------------------------------ */

enum {
    CRAFT__MP_OK = 0,
    CRAFT__MP_SHORT = 1, /* the buffer ends inside the value */
    CRAFT__MP_BAD = 2    /* malformed / wrong type / over a limit */
};

/* Deepest nesting any craft reader or scanner supports: msgpack-c's
 * decoder stack (MSGPACK_EMBED_STACK_SIZE). */
#define CRAFT__MP_MAX_DEPTH 32

typedef enum {
    CRAFT__MP_T_NIL,
    CRAFT__MP_T_BOOL,
    CRAFT__MP_T_UINT, /* an integer >= 0, any int family */
    CRAFT__MP_T_INT,  /* an integer < 0 */
    CRAFT__MP_T_FLOAT,
    CRAFT__MP_T_STR,  /* fixstr, d9, da, db */
    CRAFT__MP_T_BIN,  /* c4..c6 */
    CRAFT__MP_T_ARRAY,
    CRAFT__MP_T_MAP,
    CRAFT__MP_T_EXT,
    CRAFT__MP_T_INVALID /* 0xc1 */
} craft__mp_type_t;

/* One entered map or array: its values (a map's keys and values
 * alternate) and the next one to read. */
typedef struct craft__mp_level {
    const msgpack_object *items;  /* array items (NULL for a map) */
    const msgpack_object_kv *kv;  /* map pairs (NULL for an array) */
    uint64_t n;                   /* values: items, or 2 x pairs */
    uint64_t i;                   /* next value */
} craft__mp_level_t;

typedef struct craft__mp_reader {
    const uint8_t *p; /* borrowed: the caller keeps it alive */
    size_t len;
    size_t pos;         /* start of the next top-level value */
    unsigned depth;     /* containers currently entered */
    unsigned max_depth; /* <= CRAFT__MP_MAX_DEPTH */
    size_t max_str;     /* longest string/bin/ext payload accepted */
    const char *reason; /* static description of the last CRAFT__MP_BAD */
    bool scanned;       /* the values were scanned already: see below */
    /* msgpack-c's tree of the top-level value at `top_pos` (SIZE_MAX:
     * none decoded), which ends at top_end, in `zone` (NULL: none held) */
    msgpack_zone *zone;
    msgpack_object top;
    size_t top_pos;
    size_t top_end;
    craft__mp_level_t lv[CRAFT__MP_MAX_DEPTH];
} craft__mp_reader_t;

/* Reader over [p, p+len) with the given limits (0 = the defaults:
 * depth CRAFT__MP_MAX_DEPTH, strings up to `len`). */
void craft__mp_reader_init(craft__mp_reader_t *r, const void *p, size_t len,
                           unsigned max_depth, size_t max_str);

/* Releases the decoded tree, if any. The reader may be used again (it
 * decodes the value at `pos` anew). */
void craft__mp_reader_destroy(craft__mp_reader_t *r);
/* Tells the reader that craft__mp_scan_run already found every value in
 * its buffer complete, with limits (string length, depth) no looser than
 * the reader's: it skips its own scan before handing a value to msgpack-c.
 * The wire decoders scan each frame as it arrives. */
void craft__mp_reader_scanned(craft__mp_reader_t *r);
/* Whether the next value is nil (not consumed); false on any error. */
bool craft__mp_next_is_nil(craft__mp_reader_t *r);

/* Type of the next value; CRAFT__MP_SHORT when no byte is left. */
int craft__mp_peek(craft__mp_reader_t *r, craft__mp_type_t *t);
/* Consumes a nil and returns true when the next value is nil. */
bool craft__mp_try_nil(craft__mp_reader_t *r);
/* Map / array headers. On success depth is incremented: call
 * craft__mp_leave once the elements were read. Over max_depth -> BAD. */
int craft__mp_read_map(craft__mp_reader_t *r, uint32_t *n);
int craft__mp_read_array(craft__mp_reader_t *r, uint32_t *n);
void craft__mp_leave(craft__mp_reader_t *r);
/* A string from the str family (fixstr/str8/16/32) or bin8/16/32, as a
 * view into the buffer (valid as long as the buffer). Not nil. */
int craft__mp_read_str(craft__mp_reader_t *r, const uint8_t **s, size_t *n);
/* Unsigned field: any int family with a non-negative value; nil -> 0. */
int craft__mp_read_uint(craft__mp_reader_t *r, uint64_t *v);
/* Signed field: any int family within int64; nil -> 0. */
int craft__mp_read_int(craft__mp_reader_t *r, int64_t *v);
/* Go bool decoding: c2/c3, the ints 0/1, nil -> false. */
int craft__mp_read_bool(craft__mp_reader_t *r, bool *v);
/* An ext value (fixext1..16, ext8/16/32): its type and a view of its
 * payload. */
int craft__mp_read_ext(craft__mp_reader_t *r, int8_t *type, const uint8_t **data,
                       size_t *n);
/* Skips one complete value of any type (nested up to the depth left). */
int craft__mp_skip(craft__mp_reader_t *r);

/* String-ish value copied out. Nil -> *out NULL. Otherwise a malloc'd
 * NUL-terminated copy (caller frees); a string holding a NUL byte is
 * rejected (BAD) since craft strings are C strings. CRAFT_ENOMEM is
 * returned as is. */
int craft__mp_read_cstr_dup(craft__mp_reader_t *r, char **out);
/* []byte copied out. Nil -> NULL/0. Otherwise malloc'd (at least one byte
 * allocated, so an empty non-nil value gives non-NULL with *n == 0; Go
 * distinguishes nil and []byte{} on the wire). Caller frees. */
int craft__mp_read_blob_dup(craft__mp_reader_t *r, void **out, size_t *n);
/* Whether a map key read with craft__mp_read_str equals `name`
 * (NUL-terminated). Keys are case-sensitive, as in go-msgpack v0.5.5. */
bool craft__mp_key_is(const uint8_t *key, size_t n, const char *name);

/* ------------------------------------------------------------------------ */
/* Scanner                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct craft__mp_scan {
    /* limits (set by craft__mp_scan_init) */
    size_t max_total; /* most bytes the values may span */
    size_t max_str;   /* longest string/bin/ext payload */
    unsigned max_depth;
    /* progress */
    size_t pos;  /* bytes validated so far; the values' length when OK */
    size_t need; /* when SHORT: total bytes required before progress */
    unsigned depth;
    uint64_t rem[CRAFT__MP_MAX_DEPTH + 1]; /* items left per open level */
    const char *reason; /* static, when BAD */
} craft__mp_scan_t;

/* Prepares a scan of `count` consecutive top-level values. max_depth is
 * clamped to CRAFT__MP_MAX_DEPTH. */
void craft__mp_scan_init(craft__mp_scan_t *s, unsigned count, size_t max_total,
                         size_t max_str, unsigned max_depth);
/* Continues scanning `p[0..len)`, which must start with the same bytes as
 * on the previous calls (more may have been appended). Returns OK with
 * s->pos = length of the values, SHORT with s->need = bytes required, or
 * BAD with s->reason. Never reads beyond len. */
int craft__mp_scan_run(craft__mp_scan_t *s, const void *p, size_t len);

/* ------------------------------------------------------------------------ */
/* Configuration entries                                                     */
/* ------------------------------------------------------------------------ */

/* hashicorp EncodeConfiguration:
 * {"Servers":[{"Address":raw,"ID":raw,"Suffrage":int},...]} with sorted
 * keys, raw/str family strings and v0.5.5 ints; an empty configuration
 * encodes Servers as nil (Go's nil slice). NULL id/address are written as
 * "". *buf is malloc'd (caller frees). Returns 0, CRAFT_ENOMEM or
 * CRAFT_EINVAL (string too long). */
int craft__configuration_encode(const craft_configuration_t *c, void **buf,
                                size_t *len);

/* hashicorp DecodeConfiguration, strict about sizes and lenient about form:
 * keys in any order, unknown keys skipped, str8/bin accepted, any int
 * family, nil Servers / strings allowed (-> empty). Suffrage 0 = voter,
 * 1 = nonvoter, 2 (hashicorp's Staging, which never votes) = nonvoter;
 * anything else, a missing Servers key, truncation, trailing bytes, NUL
 * inside a string or nesting deeper than 16 -> CRAFT_ECORRUPT. On success
 * *out is filled with malloc'd servers (craft_configuration_free); on error
 * *out is left empty. CRAFT_ENOMEM on allocation failure. */
int craft__configuration_decode(const void *buf, size_t len,
                                craft_configuration_t *out);

#endif /* CRAFT_LIB_CODEC_H */
