/*
 * craftkv's replicated state machine: an in-memory hash map of keys to
 * values, plus a small table of member ID -> HTTP address (so any node can
 * redirect clients to the leader's HTTP API).
 *
 * Commands (the data of a CRAFT_LOG_COMMAND entry) are binary:
 *
 *   u8 version (1) | u8 op | u32 klen | key | u32 vlen | value
 *                                       [ | u32 olen | old ]   (cas only)
 *
 * lengths big-endian. op is one of kv_op_t. KV_OP_MEMBER records
 * key = member ID, value = its HTTP address ("host:port"; empty = forget).
 * An unknown version or op, or a malformed command, is applied as a no-op
 * returning KV_RESULT_INVALID on every replica alike.
 *
 * Snapshot format:
 *
 *   "CRAFTKV1" | u64 n | n * (u32 klen | key | u32 vlen | value)
 *              | u64 m | m * (u32 idlen | id | u32 hlen | http)
 *
 * Threading: apply/apply_batch/snapshot/restore are called by craft's fsm
 * thread; kv_fsm_get and the other readers may be called from any thread
 * (a reader-writer lock guards the maps).
 */
#ifndef CRAFTKV_FSM_H
#define CRAFTKV_FSM_H

#include <stddef.h>
#include <stdint.h>

#include <craft.h>

typedef enum {
    KV_OP_PUT = 'P',
    KV_OP_DELETE = 'D',
    KV_OP_CAS = 'C',
    KV_OP_MEMBER = 'M'
} kv_op_t;

/* The FSM response of a command (craft_future_response), as an intptr_t. */
typedef enum {
    KV_RESULT_OK = 1,
    KV_RESULT_CAS_FAILED = 2, /* cas: the current value differs from `old` */
    KV_RESULT_INVALID = 3     /* malformed or unknown command */
} kv_result_t;

/* Largest key, value or member field accepted by commands and snapshots. */
#define KV_MAX_FIELD ((size_t)64 << 20)

typedef struct kv_fsm kv_fsm_t;

/* Creates an empty FSM. Returns 0 or CRAFT_ENOMEM. */
int kv_fsm_new(kv_fsm_t **out);
/* Frees the FSM and its data. Only once craft no longer uses it. */
void kv_fsm_free(kv_fsm_t *fsm);
/* The craft vtable of `fsm` (owned by it, valid until kv_fsm_free). */
craft_fsm_t *kv_fsm_vtable(kv_fsm_t *fsm);

/* Encodes a command into a malloc'd buffer (*out, *out_len; caller frees).
 * `old` is used by KV_OP_CAS only. Returns 0, CRAFT_EINVAL (field too
 * large) or CRAFT_ENOMEM. */
int kv_command_encode(kv_op_t op, const void *key, size_t klen, const void *val,
                      size_t vlen, const void *old, size_t olen, void **out,
                      size_t *out_len);

/* Copies the value of `key` into a malloc'd buffer (*val, *vlen; NUL-
 * terminated for convenience, the NUL not counted). Returns 0,
 * CRAFT_ENOTFOUND or CRAFT_ENOMEM. */
int kv_fsm_get(kv_fsm_t *fsm, const void *key, size_t klen, void **val, size_t *vlen);
/* The HTTP address recorded for member `id` (malloc'd, caller frees), or
 * NULL when unknown. */
char *kv_fsm_member_http(kv_fsm_t *fsm, const char *id);
/* Number of keys. */
size_t kv_fsm_count(kv_fsm_t *fsm);

#endif /* CRAFTKV_FSM_H */
