/*
 * hashicorp/raft NetworkTransport wire codec (WIRE.md): encoding and
 * incremental decoding of every RPC request and response.
 *
 * Framing (WIRE.md §1):
 *   request  = rpcType:u8 msgpack(request map) [InstallSnapshot: Size raw bytes]
 *   response = msgpack(error string) msgpack(response map or nil)
 * The snapshot bytes after an InstallSnapshot request are not part of the
 * frame: the transport streams them itself.
 *
 * What is sent (craft__wire_format_t): maps keyed by Go field name with
 * byte-wise sorted keys, strings and []byte as raw/str family (fixstr, da,
 * db; never str8/bin), smallest unsigned ints, nil for NULL pointers. The
 * default format is what hashicorp/raft 1.7 sends with its default
 * (compatible) codec settings, which 1.1.2 also accepts: RPCHeader ID/Addr
 * next to the legacy Leader/Candidate, Log.AppendedAt as Go's
 * time.MarshalBinary wrapped in a raw string (TimeNotBuiltin, WIRE.md §3),
 * signed Go ints above 127 as d1/d2/d3. The 1.1.2 format reproduces 1.1.2's
 * bytes exactly (no ID/Addr/AppendedAt keys, v0.5.5 ints).
 * RequestPreVote (type 4) only exists in 1.7: it is always sent in full.
 * InstallSnapshot's legacy Peers field carries encodePeers(configuration)
 * (voters' addresses), as real hashicorp leaders send; RequestVoteResponse
 * Peers is always nil (protocol >= 2).
 *
 * What is accepted: any key order, unknown keys (skipped), missing keys
 * (zero), str8/bin for strings, any int family for integers (range
 * checked), ints 0/1 for bools, nil for any field (zero / NULL), a nil
 * request or response object (all zero), both AppendedAt encodings (raw
 * MarshalBinary v1/v2, raw or ext(-1) msgpack timestamp of 4/8/12 bytes).
 * Refused with CRAFT_EPROTOCOL and a static reason: anything over a limit
 * (craft__wire_limits_t), malformed msgpack, wrong types, values out of a
 * field's range, negative snapshot Size, NUL bytes inside header/address
 * strings, an unknown rpc type, a Configuration blob that does not decode.
 *
 * Memory: decoders never allocate before the whole frame is present and
 * checked against the limits, and never allocate from a declared length
 * alone. Decoded messages own their memory (see the free functions).
 *
 * Thread safety: none per object; distinct objects are independent.
 */
#ifndef CRAFT_TRANSPORTS_WIRE_H
#define CRAFT_TRANSPORTS_WIRE_H

#include "craft.h"
#include "lib/codec.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Returned by the decoders (besides 0 and negative CRAFT_E*) when the
 * buffer holds only the beginning of a frame. Positive on purpose. */
#define CRAFT__WIRE_NEED_MORE 1

/* ---- limits ---- */

typedef struct craft__wire_limits {
    /* Largest frame: type byte + request, or error string + response
     * (snapshot data excluded). Default 64 MiB. */
    size_t max_frame_bytes;
    /* Most entries in one AppendEntries request. Default 1024
     * (hashicorp's upper bound for MaxAppendEntries). */
    size_t max_entries;
    /* Longest single string / []byte (Data, Extensions, Configuration,
     * addresses, error strings). Default 32 MiB. */
    size_t max_blob_bytes;
    /* Deepest msgpack nesting, including inside unknown keys. Default 16,
     * at most CRAFT__MP_MAX_DEPTH (32). */
    unsigned max_depth;
} craft__wire_limits_t;

/* Fills `l` with the defaults above. */
void craft__wire_limits_default(craft__wire_limits_t *l);

/* ---- encoding ---- */

typedef enum {
    /* hashicorp/raft 1.7 default form; accepted by 1.1.2 and 1.7. */
    CRAFT__WIRE_FORMAT_DEFAULT = 0,
    /* byte-exact hashicorp/raft 1.1.2 (go-msgpack 0.5.5) form. */
    CRAFT__WIRE_FORMAT_V1_1_2 = 1
} craft__wire_format_t;

/* Appends the rpc type byte and the request to `b`. `req` points to the
 * struct matching `type` (craft_append_entries_req_t for
 * CRAFT_RPC_APPEND_ENTRIES, ...; &rpc->req works for a craft_rpc_t) and is
 * borrowed for the call. Entries with entries == NULL are sent as nil
 * (hashicorp's heartbeat), with entries != NULL and n_entries == 0 as an
 * empty array. Log data/ext NULL -> nil, non-NULL (even empty) -> raw.
 * InstallSnapshot data is not appended. Returns 0, CRAFT_EINVAL (unknown
 * type, NULL data with a length, negative Size, oversized values; nothing
 * is appended then) or CRAFT_ENOMEM (b->err is set and stays set: reset or
 * free the buffer). */
int craft__wire_encode_request(craft__mp_buf_t *b, craft__wire_format_t fmt,
                               craft_rpc_type_t type, const void *req);

/* Appends a response frame: the error string (NULL or "" = success, sent
 * as "") and then the response object matching `type` (`resp` borrowed;
 * NULL sends nil). Same errors as craft__wire_encode_request. */
int craft__wire_encode_response(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                craft_rpc_type_t type, const char *error,
                                const void *resp);

/* hashicorp's heartbeat shape (NetworkTransport.handleCommand): Term != 0,
 * a sender (Addr or Leader) present, PrevLogEntry == PrevLogTerm ==
 * LeaderCommitIndex == 0 and no entries. */
bool craft__wire_is_heartbeat(const craft_append_entries_req_t *req);

/* ---- decoding ---- */

/* A decoded response. Every pointer inside (error, header strings) is
 * malloc'd and owned by the struct until craft__wire_response_free. */
typedef struct craft__wire_response {
    craft_rpc_type_t type;
    /* The peer's error message, or NULL when it sent "" (success). As with
     * hashicorp, the body is still decoded when an error is present. */
    char *error;
    /* false when the peer sent nil instead of a response object. */
    bool has_body;
    union {
        craft_append_entries_resp_t append_entries;
        craft_request_vote_resp_t request_vote;
        craft_request_prevote_resp_t request_prevote;
        craft_install_snapshot_resp_t install_snapshot;
        craft_timeout_now_resp_t timeout_now;
    } body;
} craft__wire_response_t;

/* Incremental decoder for one direction of one connection. Feed it the
 * unconsumed bytes of the stream; it remembers how far it has checked the
 * current frame, so a frame arriving in many pieces is scanned once. */
typedef struct craft__wire_decoder {
    craft__wire_limits_t limits;
    craft__mp_scan_t scan;
    bool in_frame;      /* a frame's scan is in progress */
    uint8_t rpc_type;   /* requests: the frame's type byte */
    size_t need;        /* after NEED_MORE: total bytes wanted */
    const char *reason; /* after CRAFT_EPROTOCOL: static description */
} craft__wire_decoder_t;

/* `limits` is copied; NULL = craft__wire_limits_default. */
void craft__wire_decoder_init(craft__wire_decoder_t *d,
                              const craft__wire_limits_t *limits);
/* Forgets a partly scanned frame (e.g. when the connection is reset). */
void craft__wire_decoder_reset(craft__wire_decoder_t *d);

/* Decodes one request frame from buf[0..len). `buf` must start at the
 * frame's first byte (the rpc type) and, after a NEED_MORE, begin with the
 * same bytes again (more may follow).
 * Returns:
 *   0: rpc->type and rpc->req are filled (other members untouched), the
 *      request owns its memory (craft__wire_request_free), *consumed = the
 *      frame's length (InstallSnapshot data starts right after it);
 *   CRAFT__WIRE_NEED_MORE: nothing allocated; call again with at least
 *      craft__wire_decoder_need(d) bytes;
 *   CRAFT_EPROTOCOL: craft__wire_decoder_reason(d) says why (including
 *      "unknown rpc type", reported as soon as the first byte is there);
 *      the connection cannot be resynchronised and should be closed;
 *   CRAFT_ENOMEM.
 * After 0 or an error the decoder is ready for the next frame. */
int craft__wire_decode_request(craft__wire_decoder_t *d, const void *buf,
                               size_t len, craft_rpc_t *rpc, size_t *consumed);

/* Decodes one response frame for a request of `type`, same contract as
 * craft__wire_decode_request; on 0 `*resp` owns its memory
 * (craft__wire_response_free). */
int craft__wire_decode_response(craft__wire_decoder_t *d, craft_rpc_type_t type,
                                const void *buf, size_t len,
                                craft__wire_response_t *resp,
                                size_t *consumed);

/* After NEED_MORE: the total buffer length required before another call
 * can make progress (a lower bound: the frame may be longer). */
size_t craft__wire_decoder_need(const craft__wire_decoder_t *d);
/* After CRAFT_EPROTOCOL: a static description; NULL otherwise. */
const char *craft__wire_decoder_reason(const craft__wire_decoder_t *d);

/* Frees what craft__wire_decode_request allocated in rpc->req (strings,
 * entries and their data, configuration) and zeroes rpc->req. Only for
 * requests filled by the decoder. NULL-safe. */
void craft__wire_request_free(craft_rpc_t *rpc);
/* Frees what a decoded response owns and zeroes it. NULL-safe. */
void craft__wire_response_free(craft__wire_response_t *resp);

/* ---- Log.AppendedAt (exposed for tests and stores) ---- */

/* Appends appended_at_ns (Unix ns, 0 = unknown -> Go's zero time) as Go
 * time.MarshalBinary v1 in UTC, wrapped in a raw string (16 bytes: af + 15). */
void craft__wire_put_time(craft__mp_buf_t *b, int64_t unix_ns);
/* Decodes any accepted AppendedAt form into Unix ns. nil and Go's zero
 * time give 0; times outside int64 nanoseconds give 0 (unknown). Returns
 * CRAFT__MP_OK / SHORT / BAD (reader semantics). */
int craft__wire_read_time(craft__mp_reader_t *r, int64_t *unix_ns);

#endif /* CRAFT_TRANSPORTS_WIRE_H */
