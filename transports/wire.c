/* hashicorp/raft NetworkTransport RPC codec (WIRE.md §1-§5). */
#include "transports/wire.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define KEY(b, s) craft__mp_put_str((b), (s), sizeof(s) - 1)

/* Seconds from 0001-01-01 to 1970-01-01 (Go's unixToInternal). */
#define GO_UNIX_TO_INTERNAL INT64_C(62135596800)
#define NS_PER_S INT64_C(1000000000)

void craft__wire_limits_default(craft__wire_limits_t *l)
{
    l->max_frame_bytes = (size_t)64 << 20;
    l->max_entries = 1024;
    l->max_blob_bytes = (size_t)32 << 20;
    l->max_depth = 16;
}

/* ------------------------------------------------------------------------ */
/* AppendedAt                                                                */
/* ------------------------------------------------------------------------ */

static void store_be(uint8_t *p, uint64_t v, int width)
{
    for (int i = 0; i < width; i++) {
        p[i] = (uint8_t)(v >> (8 * (width - 1 - i)));
    }
}

static uint64_t load_be(const uint8_t *p, int width)
{
    uint64_t v = 0;
    for (int i = 0; i < width; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

void craft__wire_put_time(craft__mp_buf_t *b, int64_t unix_ns)
{
    /* Go time.MarshalBinary v1: [1][sec since year 1][nsec][offset min] */
    uint8_t t[15];
    int64_t sec = 0;
    int64_t nsec = 0;
    if (unix_ns != 0) {
        sec = unix_ns / NS_PER_S;
        nsec = unix_ns % NS_PER_S;
        if (nsec < 0) {
            nsec += NS_PER_S;
            sec--;
        }
        sec += GO_UNIX_TO_INTERNAL;
    }
    t[0] = 1;
    store_be(t + 1, (uint64_t)sec, 8);
    store_be(t + 9, (uint64_t)nsec, 4);
    t[13] = 0xff; /* -1: UTC */
    t[14] = 0xff;
    craft__mp_put_str(b, t, sizeof t);
}

/* Unix seconds + nanoseconds -> Unix ns; 0 (unknown) when out of range. */
static int64_t to_unix_ns(int64_t sec, int64_t nsec)
{
    int64_t ns;
    if (__builtin_mul_overflow(sec, NS_PER_S, &ns) ||
        __builtin_add_overflow(ns, nsec, &ns)) {
        return 0;
    }
    return ns;
}

/* msgpack timestamp payload (4, 8 or 12 bytes), as go-msgpack 1.1.5 writes
 * it and hashicorp's MsgpackUseNewTimeFormat sends it. */
static int timestamp_payload(craft__mp_reader_t *r, const uint8_t *s, size_t n,
                             int64_t *out)
{
    int64_t sec;
    int64_t nsec;
    if (n == 4) {
        sec = (int64_t)load_be(s, 4);
        nsec = 0;
    } else if (n == 8) {
        uint64_t v = load_be(s, 8);
        nsec = (int64_t)(v >> 34);
        sec = (int64_t)(v & UINT64_C(0x3ffffffff));
    } else if (n == 12) {
        nsec = (int64_t)load_be(s, 4);
        sec = (int64_t)load_be(s + 4, 8);
    } else {
        r->reason = "bad AppendedAt timestamp length";
        return CRAFT__MP_BAD;
    }
    if (nsec >= NS_PER_S) {
        r->reason = "bad AppendedAt nanoseconds";
        return CRAFT__MP_BAD;
    }
    *out = to_unix_ns(sec, nsec);
    return CRAFT__MP_OK;
}

int craft__wire_read_time(craft__mp_reader_t *r, int64_t *unix_ns)
{
    craft__mp_type_t t;
    const uint8_t *s;
    size_t n;
    int rv;

    *unix_ns = 0;
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK;
    }
    if ((rv = craft__mp_peek(r, &t)) != CRAFT__MP_OK) {
        return rv;
    }
    if (t == CRAFT__MP_T_EXT) {
        int8_t et;
        if ((rv = craft__mp_read_ext(r, &et, &s, &n)) != CRAFT__MP_OK) {
            return rv;
        }
        if (et != -1) {
            r->reason = "AppendedAt: unexpected ext type";
            return CRAFT__MP_BAD;
        }
        return timestamp_payload(r, s, n, unix_ns);
    }
    if ((rv = craft__mp_read_str(r, &s, &n)) != CRAFT__MP_OK) {
        return rv;
    }
    if (n == 4 || n == 8 || n == 12) {
        return timestamp_payload(r, s, n, unix_ns);
    }
    /* time.MarshalBinary: v1 is 15 bytes, v2 adds a seconds-offset byte */
    if (!((n == 15 && s[0] == 1) || (n == 16 && s[0] == 2))) {
        r->reason = "bad AppendedAt encoding";
        return CRAFT__MP_BAD;
    }
    int64_t sec = (int64_t)load_be(s + 1, 8);
    int64_t nsec = (int64_t)(int32_t)(uint32_t)load_be(s + 9, 4);
    if (nsec < 0 || nsec >= NS_PER_S) {
        r->reason = "bad AppendedAt nanoseconds";
        return CRAFT__MP_BAD;
    }
    if (sec == 0 && nsec == 0) {
        return CRAFT__MP_OK; /* Go's zero time */
    }
    if (sec < INT64_MIN + GO_UNIX_TO_INTERNAL) {
        return CRAFT__MP_OK; /* out of range: unknown */
    }
    *unix_ns = to_unix_ns(sec - GO_UNIX_TO_INTERNAL, nsec);
    return CRAFT__MP_OK;
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                  */
/* ------------------------------------------------------------------------ */

static bool with_header_ids(craft__wire_format_t fmt)
{
    return fmt != CRAFT__WIRE_FORMAT_V1_1_2;
}

static craft__mp_int_form_t int_form(craft__wire_format_t fmt)
{
    return fmt == CRAFT__WIRE_FORMAT_V1_1_2 ? CRAFT__MP_INT_V055
                                            : CRAFT__MP_INT_V2;
}

static void put_addr(craft__mp_buf_t *b, const craft_rpc_header_t *h)
{
    KEY(b, "Addr");
    craft__mp_put_cstr_or_nil(b, h->addr);
}

static void put_id(craft__mp_buf_t *b, const craft_rpc_header_t *h)
{
    KEY(b, "ID");
    craft__mp_put_cstr_or_nil(b, h->id);
}

static void put_protocol_version(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                 const craft_rpc_header_t *h)
{
    KEY(b, "ProtocolVersion");
    craft__mp_put_int(b, h->protocol_version, int_form(fmt));
}

static int put_log(craft__mp_buf_t *b, craft__wire_format_t fmt,
                   const craft_log_t *l)
{
    if ((l->data == NULL && l->len > 0) || (l->ext == NULL && l->ext_len > 0) ||
        (int)l->type < 0 || (int)l->type > UINT8_MAX) {
        return CRAFT_EINVAL;
    }
    bool cur = fmt != CRAFT__WIRE_FORMAT_V1_1_2;
    craft__mp_put_map(b, cur ? 6 : 5);
    if (cur) {
        KEY(b, "AppendedAt");
        craft__wire_put_time(b, l->appended_at_ns);
    }
    KEY(b, "Data");
    craft__mp_put_blob_or_nil(b, l->data, l->len);
    KEY(b, "Extensions");
    craft__mp_put_blob_or_nil(b, l->ext, l->ext_len);
    KEY(b, "Index");
    craft__mp_put_uint(b, l->index);
    KEY(b, "Term");
    craft__mp_put_uint(b, l->term);
    KEY(b, "Type");
    craft__mp_put_uint(b, (uint64_t)l->type);
    return 0;
}

static int put_append_entries_req(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                  const craft_append_entries_req_t *req)
{
    bool ids = with_header_ids(fmt);
    if ((req->entries == NULL && req->n_entries > 0) ||
        req->n_entries > UINT32_MAX) {
        return CRAFT_EINVAL;
    }
    craft__mp_put_map(b, ids ? 9 : 7);
    if (ids) {
        put_addr(b, &req->header);
    }
    KEY(b, "Entries");
    if (req->entries == NULL) {
        craft__mp_put_nil(b); /* Go nil slice: hashicorp's heartbeat */
    } else {
        craft__mp_put_array(b, (uint32_t)req->n_entries);
        for (size_t i = 0; i < req->n_entries; i++) {
            int rv = put_log(b, fmt, &req->entries[i]);
            if (rv != 0) {
                return rv;
            }
        }
    }
    if (ids) {
        put_id(b, &req->header);
    }
    KEY(b, "Leader");
    craft__mp_put_cstr_or_nil(b, req->leader);
    KEY(b, "LeaderCommitIndex");
    craft__mp_put_uint(b, req->leader_commit_index);
    KEY(b, "PrevLogEntry");
    craft__mp_put_uint(b, req->prev_log_entry);
    KEY(b, "PrevLogTerm");
    craft__mp_put_uint(b, req->prev_log_term);
    put_protocol_version(b, fmt, &req->header);
    KEY(b, "Term");
    craft__mp_put_uint(b, req->term);
    return 0;
}

static int put_append_entries_resp(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                   const craft_append_entries_resp_t *resp)
{
    bool ids = with_header_ids(fmt);
    craft__mp_put_map(b, ids ? 7 : 5);
    if (ids) {
        put_addr(b, &resp->header);
        put_id(b, &resp->header);
    }
    KEY(b, "LastLog");
    craft__mp_put_uint(b, resp->last_log);
    KEY(b, "NoRetryBackoff");
    craft__mp_put_bool(b, resp->no_retry_backoff);
    put_protocol_version(b, fmt, &resp->header);
    KEY(b, "Success");
    craft__mp_put_bool(b, resp->success);
    KEY(b, "Term");
    craft__mp_put_uint(b, resp->term);
    return 0;
}

static int put_request_vote_req(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                const craft_request_vote_req_t *req)
{
    bool ids = with_header_ids(fmt);
    craft__mp_put_map(b, ids ? 8 : 6);
    if (ids) {
        put_addr(b, &req->header);
    }
    KEY(b, "Candidate");
    craft__mp_put_cstr_or_nil(b, req->candidate);
    if (ids) {
        put_id(b, &req->header);
    }
    KEY(b, "LastLogIndex");
    craft__mp_put_uint(b, req->last_log_index);
    KEY(b, "LastLogTerm");
    craft__mp_put_uint(b, req->last_log_term);
    KEY(b, "LeadershipTransfer");
    craft__mp_put_bool(b, req->leadership_transfer);
    put_protocol_version(b, fmt, &req->header);
    KEY(b, "Term");
    craft__mp_put_uint(b, req->term);
    return 0;
}

static int put_request_vote_resp(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                 const craft_request_vote_resp_t *resp)
{
    bool ids = with_header_ids(fmt);
    craft__mp_put_map(b, ids ? 6 : 4);
    if (ids) {
        put_addr(b, &resp->header);
    }
    KEY(b, "Granted");
    craft__mp_put_bool(b, resp->granted);
    if (ids) {
        put_id(b, &resp->header);
    }
    KEY(b, "Peers");
    craft__mp_put_nil(b); /* only filled for protocol < 2 */
    put_protocol_version(b, fmt, &resp->header);
    KEY(b, "Term");
    craft__mp_put_uint(b, resp->term);
    return 0;
}

/* RequestPreVote exists only in hashicorp >= 1.7: always the full form. */
static int put_request_prevote_req(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                   const craft_request_prevote_req_t *req)
{
    craft__mp_put_map(b, 6);
    put_addr(b, &req->header);
    put_id(b, &req->header);
    KEY(b, "LastLogIndex");
    craft__mp_put_uint(b, req->last_log_index);
    KEY(b, "LastLogTerm");
    craft__mp_put_uint(b, req->last_log_term);
    put_protocol_version(b, fmt, &req->header);
    KEY(b, "Term");
    craft__mp_put_uint(b, req->term);
    return 0;
}

static int put_request_prevote_resp(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                    const craft_request_prevote_resp_t *resp)
{
    craft__mp_put_map(b, 5);
    put_addr(b, &resp->header);
    KEY(b, "Granted");
    craft__mp_put_bool(b, resp->granted);
    put_id(b, &resp->header);
    put_protocol_version(b, fmt, &resp->header);
    KEY(b, "Term");
    craft__mp_put_uint(b, resp->term);
    return 0;
}

/* hashicorp encodePeers: msgpack array of the voters' EncodePeer (the
 * address for NetworkTransport), nil when there are none. */
static int put_legacy_peers(craft__mp_buf_t *b, const craft_configuration_t *c)
{
    craft__mp_buf_t pb;
    uint32_t voters = 0;
    craft__mp_buf_init(&pb);
    for (size_t i = 0; i < c->n; i++) {
        voters += c->servers[i].suffrage == CRAFT_VOTER;
    }
    if (voters == 0) {
        craft__mp_put_nil(&pb);
    } else {
        craft__mp_put_array(&pb, voters);
    }
    for (size_t i = 0; i < c->n; i++) {
        if (c->servers[i].suffrage == CRAFT_VOTER) {
            const char *a = c->servers[i].address;
            craft__mp_put_cstr_or_nil(&pb, a ? a : "");
        }
    }
    int rv = pb.err;
    if (rv == 0) {
        craft__mp_put_str(b, pb.data, pb.len);
    }
    craft__mp_buf_free(&pb);
    return rv;
}

static int put_install_snapshot_req(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                    const craft_install_snapshot_req_t *req)
{
    bool ids = with_header_ids(fmt);
    void *conf;
    size_t conf_len;
    if (req->size < 0) {
        return CRAFT_EINVAL;
    }
    int rv = craft__configuration_encode(&req->configuration, &conf, &conf_len);
    if (rv != 0) {
        return rv;
    }
    craft__mp_put_map(b, ids ? 12 : 10);
    if (ids) {
        put_addr(b, &req->header);
    }
    KEY(b, "Configuration");
    craft__mp_put_str(b, conf, conf_len);
    free(conf);
    KEY(b, "ConfigurationIndex");
    craft__mp_put_uint(b, req->configuration_index);
    if (ids) {
        put_id(b, &req->header);
    }
    KEY(b, "LastLogIndex");
    craft__mp_put_uint(b, req->last_log_index);
    KEY(b, "LastLogTerm");
    craft__mp_put_uint(b, req->last_log_term);
    KEY(b, "Leader");
    craft__mp_put_cstr_or_nil(b, req->leader);
    KEY(b, "Peers");
    if ((rv = put_legacy_peers(b, &req->configuration)) != 0) {
        return rv;
    }
    put_protocol_version(b, fmt, &req->header);
    KEY(b, "Size");
    craft__mp_put_int(b, req->size, int_form(fmt));
    KEY(b, "SnapshotVersion");
    craft__mp_put_int(b, req->snapshot_version, int_form(fmt));
    KEY(b, "Term");
    craft__mp_put_uint(b, req->term);
    return 0;
}

static int put_install_snapshot_resp(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                     const craft_install_snapshot_resp_t *resp)
{
    bool ids = with_header_ids(fmt);
    craft__mp_put_map(b, ids ? 5 : 3);
    if (ids) {
        put_addr(b, &resp->header);
        put_id(b, &resp->header);
    }
    put_protocol_version(b, fmt, &resp->header);
    KEY(b, "Success");
    craft__mp_put_bool(b, resp->success);
    KEY(b, "Term");
    craft__mp_put_uint(b, resp->term);
    return 0;
}

/* TimeoutNowRequest and TimeoutNowResponse: only the header. */
static int put_header_only(craft__mp_buf_t *b, craft__wire_format_t fmt,
                           const craft_rpc_header_t *h)
{
    bool ids = with_header_ids(fmt);
    craft__mp_put_map(b, ids ? 3 : 1);
    if (ids) {
        put_addr(b, h);
        put_id(b, h);
    }
    put_protocol_version(b, fmt, h);
    return 0;
}

/* Runs an encoder and rolls `b` back to where it was on a (non-sticky)
 * error, so a failed encode never leaves half a frame behind. */
static int finish(craft__mp_buf_t *b, size_t start, int rv)
{
    if (rv == 0 && b->err != 0) {
        rv = b->err;
    }
    if (rv != 0 && b->err == 0) {
        b->len = start;
    }
    return rv;
}

int craft__wire_encode_request(craft__mp_buf_t *b, craft__wire_format_t fmt,
                               craft_rpc_type_t type, const void *req)
{
    size_t start = b->len;
    uint8_t t = (uint8_t)type;
    int rv;
    if (b->err != 0) {
        return b->err;
    }
    if (req == NULL) {
        return CRAFT_EINVAL;
    }
    craft__mp_put_bytes(b, &t, 1);
    switch (type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        rv = put_append_entries_req(b, fmt, req);
        break;
    case CRAFT_RPC_REQUEST_VOTE:
        rv = put_request_vote_req(b, fmt, req);
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        rv = put_install_snapshot_req(b, fmt, req);
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        rv = put_header_only(
            b, fmt, &((const craft_timeout_now_req_t *)req)->header);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        rv = put_request_prevote_req(b, fmt, req);
        break;
    default:
        rv = CRAFT_EINVAL;
        break;
    }
    return finish(b, start, rv);
}

int craft__wire_encode_response(craft__mp_buf_t *b, craft__wire_format_t fmt,
                                craft_rpc_type_t type, const char *error,
                                const void *resp)
{
    size_t start = b->len;
    int rv = 0;
    if (b->err != 0) {
        return b->err;
    }
    if ((unsigned)type > CRAFT_RPC_REQUEST_PREVOTE) {
        return CRAFT_EINVAL;
    }
    craft__mp_put_cstr_or_nil(b, error ? error : "");
    if (resp == NULL) {
        craft__mp_put_nil(b);
        return finish(b, start, 0);
    }
    switch (type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        rv = put_append_entries_resp(b, fmt, resp);
        break;
    case CRAFT_RPC_REQUEST_VOTE:
        rv = put_request_vote_resp(b, fmt, resp);
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        rv = put_install_snapshot_resp(b, fmt, resp);
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        rv = put_header_only(
            b, fmt, &((const craft_timeout_now_resp_t *)resp)->header);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        rv = put_request_prevote_resp(b, fmt, resp);
        break;
    }
    return finish(b, start, rv);
}

bool craft__wire_is_heartbeat(const craft_append_entries_req_t *req)
{
    return req->term != 0 &&
           (req->header.addr != NULL || req->leader != NULL) &&
           req->prev_log_entry == 0 && req->prev_log_term == 0 &&
           req->n_entries == 0 && req->leader_commit_index == 0;
}

/* ------------------------------------------------------------------------ */
/* Decoding: field helpers (reader codes; CRAFT_ENOMEM passes through)      */
/* ------------------------------------------------------------------------ */

static int bad(craft__mp_reader_t *r, const char *why)
{
    r->reason = why;
    return CRAFT__MP_BAD;
}

/* A C string field (nil -> NULL); a duplicate key replaces the old value. */
static int str_field(craft__mp_reader_t *r, const char **field)
{
    free((void *)*field);
    *field = NULL;
    char *s;
    int rv = craft__mp_read_cstr_dup(r, &s);
    if (rv == CRAFT__MP_OK) {
        *field = s;
    }
    return rv;
}

static int int_field(craft__mp_reader_t *r, int *field)
{
    int64_t v;
    int rv = craft__mp_read_int(r, &v);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (v < INT_MIN || v > INT_MAX) {
        return bad(r, "integer out of range");
    }
    *field = (int)v;
    return CRAFT__MP_OK;
}

/* Handles the flattened RPCHeader keys. *handled tells whether `key` was
 * one of them. */
static int header_key(craft__mp_reader_t *r, const uint8_t *k, size_t kl,
                      craft_rpc_header_t *h, bool *handled)
{
    *handled = true;
    if (craft__mp_key_is(k, kl, "ProtocolVersion")) {
        return int_field(r, &h->protocol_version);
    }
    if (craft__mp_key_is(k, kl, "ID")) {
        return str_field(r, &h->id);
    }
    if (craft__mp_key_is(k, kl, "Addr")) {
        return str_field(r, &h->addr);
    }
    *handled = false;
    return CRAFT__MP_OK;
}

static void header_free(craft_rpc_header_t *h)
{
    free((void *)h->id);
    free((void *)h->addr);
    h->id = NULL;
    h->addr = NULL;
}

/* Opens a message map: nil (Go decodes it as the zero struct) gives 0
 * pairs. */
static int open_map(craft__mp_reader_t *r, uint32_t *n, bool *opened)
{
    *opened = false;
    *n = 0;
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK;
    }
    int rv = craft__mp_read_map(r, n);
    *opened = rv == CRAFT__MP_OK;
    return rv;
}

static void close_map(craft__mp_reader_t *r, bool opened)
{
    if (opened) {
        craft__mp_leave(r);
    }
}

/* Iterates the pairs of a message map. For each key, `body` is a block
 * that sets `rv` (reader code) and `matched` (key known). Unknown keys are
 * skipped, as go-msgpack does (ErrorIfNoField=false). */
#define FOR_EACH_KEY(r, rv, k, kl, body)                                       \
    do {                                                                       \
        uint32_t n_pairs_;                                                     \
        bool opened_;                                                          \
        (rv) = open_map((r), &n_pairs_, &opened_);                             \
        for (uint32_t i_ = 0; (rv) == CRAFT__MP_OK && i_ < n_pairs_; i_++) {   \
            const uint8_t *k;                                                  \
            size_t kl;                                                         \
            bool matched = true;                                               \
            (rv) = craft__mp_read_str((r), &k, &kl);                           \
            if ((rv) != CRAFT__MP_OK) {                                        \
                break;                                                         \
            }                                                                  \
            body;                                                              \
            if ((rv) == CRAFT__MP_OK && !matched) {                            \
                (rv) = craft__mp_skip(r);                                      \
            }                                                                  \
        }                                                                      \
        if ((rv) == CRAFT__MP_OK) {                                            \
            close_map((r), opened_);                                           \
        }                                                                      \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Decoding: messages                                                        */
/* ------------------------------------------------------------------------ */

static int decode_log(craft__mp_reader_t *r, craft_log_t *l)
{
    int rv;
    if (r->pos < r->len && r->p[r->pos] == 0xc0) {
        /* a nil *Log would crash a Go receiver: never valid */
        return bad(r, "nil log entry");
    }
    FOR_EACH_KEY(r, rv, k, kl, {
        if (craft__mp_key_is(k, kl, "Index")) {
            rv = craft__mp_read_uint(r, &l->index);
        } else if (craft__mp_key_is(k, kl, "Term")) {
            rv = craft__mp_read_uint(r, &l->term);
        } else if (craft__mp_key_is(k, kl, "Type")) {
            uint64_t t = 0;
            rv = craft__mp_read_uint(r, &t);
            if (rv == CRAFT__MP_OK && t > UINT8_MAX) {
                rv = bad(r, "log type out of range");
            }
            l->type = (craft_log_type_t)t;
        } else if (craft__mp_key_is(k, kl, "Data")) {
            void *p;
            free((void *)l->data);
            l->data = NULL;
            rv = craft__mp_read_blob_dup(r, &p, &l->len);
            l->data = p;
        } else if (craft__mp_key_is(k, kl, "Extensions")) {
            void *p;
            free((void *)l->ext);
            l->ext = NULL;
            rv = craft__mp_read_blob_dup(r, &p, &l->ext_len);
            l->ext = p;
        } else if (craft__mp_key_is(k, kl, "AppendedAt")) {
            rv = craft__wire_read_time(r, &l->appended_at_ns);
        } else {
            matched = false;
        }
    });
    return rv;
}

static void entries_free(craft_append_entries_req_t *req)
{
    craft_log_t *e = (craft_log_t *)req->entries;
    for (size_t i = 0; e != NULL && i < req->n_entries; i++) {
        craft_log_release(&e[i]);
    }
    free(e);
    req->entries = NULL;
    req->n_entries = 0;
}

static int decode_entries(craft__mp_reader_t *r, const craft__wire_limits_t *lim,
                          craft_append_entries_req_t *req)
{
    uint32_t n;
    entries_free(req);
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK;
    }
    int rv = craft__mp_read_array(r, &n);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (n > lim->max_entries) {
        return bad(r, "too many entries");
    }
    /* non-NULL even when empty: [] and nil differ on the wire */
    craft_log_t *e = calloc(n > 0 ? n : 1, sizeof *e);
    if (e == NULL) {
        return CRAFT_ENOMEM;
    }
    req->entries = e;
    for (uint32_t i = 0; i < n; i++) {
        req->n_entries = i + 1;
        if ((rv = decode_log(r, &e[i])) != CRAFT__MP_OK) {
            return rv;
        }
    }
    craft__mp_leave(r);
    return CRAFT__MP_OK;
}

static int decode_append_entries_req(craft__mp_reader_t *r,
                                     const craft__wire_limits_t *lim,
                                     craft_append_entries_req_t *req)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, {
        rv = header_key(r, k, kl, &req->header, &matched);
        if (matched) {
        } else if (craft__mp_key_is(k, kl, "Term")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->term);
        } else if (craft__mp_key_is(k, kl, "Leader")) {
            matched = true;
            rv = str_field(r, &req->leader);
        } else if (craft__mp_key_is(k, kl, "PrevLogEntry")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->prev_log_entry);
        } else if (craft__mp_key_is(k, kl, "PrevLogTerm")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->prev_log_term);
        } else if (craft__mp_key_is(k, kl, "LeaderCommitIndex")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->leader_commit_index);
        } else if (craft__mp_key_is(k, kl, "Entries")) {
            matched = true;
            rv = decode_entries(r, lim, req);
        }
    });
    return rv;
}

static int decode_request_vote_req(craft__mp_reader_t *r,
                                   craft_request_vote_req_t *req)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, {
        rv = header_key(r, k, kl, &req->header, &matched);
        if (matched) {
        } else if (craft__mp_key_is(k, kl, "Term")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->term);
        } else if (craft__mp_key_is(k, kl, "Candidate")) {
            matched = true;
            rv = str_field(r, &req->candidate);
        } else if (craft__mp_key_is(k, kl, "LastLogIndex")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->last_log_index);
        } else if (craft__mp_key_is(k, kl, "LastLogTerm")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->last_log_term);
        } else if (craft__mp_key_is(k, kl, "LeadershipTransfer")) {
            matched = true;
            rv = craft__mp_read_bool(r, &req->leadership_transfer);
        }
    });
    return rv;
}

static int decode_request_prevote_req(craft__mp_reader_t *r,
                                      craft_request_prevote_req_t *req)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, {
        rv = header_key(r, k, kl, &req->header, &matched);
        if (matched) {
        } else if (craft__mp_key_is(k, kl, "Term")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->term);
        } else if (craft__mp_key_is(k, kl, "LastLogIndex")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->last_log_index);
        } else if (craft__mp_key_is(k, kl, "LastLogTerm")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->last_log_term);
        }
    });
    return rv;
}

static int decode_configuration_blob(craft__mp_reader_t *r,
                                     craft_configuration_t *c)
{
    const uint8_t *s;
    size_t n;
    craft_configuration_free(c);
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK; /* no configuration (SnapshotVersion 0) */
    }
    int rv = craft__mp_read_str(r, &s, &n);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (n == 0) {
        return CRAFT__MP_OK;
    }
    rv = craft__configuration_decode(s, n, c);
    if (rv == CRAFT_ENOMEM) {
        return rv;
    }
    return rv == 0 ? CRAFT__MP_OK : bad(r, "bad Configuration");
}

static int decode_install_snapshot_req(craft__mp_reader_t *r,
                                       craft_install_snapshot_req_t *req)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, {
        rv = header_key(r, k, kl, &req->header, &matched);
        if (matched) {
        } else if (craft__mp_key_is(k, kl, "SnapshotVersion")) {
            matched = true;
            rv = int_field(r, &req->snapshot_version);
        } else if (craft__mp_key_is(k, kl, "Term")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->term);
        } else if (craft__mp_key_is(k, kl, "Leader")) {
            matched = true;
            rv = str_field(r, &req->leader);
        } else if (craft__mp_key_is(k, kl, "LastLogIndex")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->last_log_index);
        } else if (craft__mp_key_is(k, kl, "LastLogTerm")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->last_log_term);
        } else if (craft__mp_key_is(k, kl, "Configuration")) {
            matched = true;
            rv = decode_configuration_blob(r, &req->configuration);
        } else if (craft__mp_key_is(k, kl, "ConfigurationIndex")) {
            matched = true;
            rv = craft__mp_read_uint(r, &req->configuration_index);
        } else if (craft__mp_key_is(k, kl, "Size")) {
            matched = true;
            rv = craft__mp_read_int(r, &req->size);
            if (rv == CRAFT__MP_OK && req->size < 0) {
                rv = bad(r, "negative snapshot size");
            }
        }
        /* Peers (legacy encodePeers) is only read by protocol < 2: skipped */
    });
    return rv;
}

static int decode_header_only(craft__mp_reader_t *r, craft_rpc_header_t *h)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, { rv = header_key(r, k, kl, h, &matched); });
    return rv;
}

static int decode_append_entries_resp(craft__mp_reader_t *r,
                                      craft_append_entries_resp_t *resp)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, {
        rv = header_key(r, k, kl, &resp->header, &matched);
        if (matched) {
        } else if (craft__mp_key_is(k, kl, "Term")) {
            matched = true;
            rv = craft__mp_read_uint(r, &resp->term);
        } else if (craft__mp_key_is(k, kl, "LastLog")) {
            matched = true;
            rv = craft__mp_read_uint(r, &resp->last_log);
        } else if (craft__mp_key_is(k, kl, "Success")) {
            matched = true;
            rv = craft__mp_read_bool(r, &resp->success);
        } else if (craft__mp_key_is(k, kl, "NoRetryBackoff")) {
            matched = true;
            rv = craft__mp_read_bool(r, &resp->no_retry_backoff);
        }
    });
    return rv;
}

/* RequestVoteResponse and RequestPreVoteResponse share their fields. */
static int decode_vote_resp(craft__mp_reader_t *r, craft_rpc_header_t *h,
                            uint64_t *term, bool *granted)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, {
        rv = header_key(r, k, kl, h, &matched);
        if (matched) {
        } else if (craft__mp_key_is(k, kl, "Term")) {
            matched = true;
            rv = craft__mp_read_uint(r, term);
        } else if (craft__mp_key_is(k, kl, "Granted")) {
            matched = true;
            rv = craft__mp_read_bool(r, granted);
        }
        /* Peers: protocol < 2 only, skipped */
    });
    return rv;
}

static int decode_install_snapshot_resp(craft__mp_reader_t *r,
                                        craft_install_snapshot_resp_t *resp)
{
    int rv;
    FOR_EACH_KEY(r, rv, k, kl, {
        rv = header_key(r, k, kl, &resp->header, &matched);
        if (matched) {
        } else if (craft__mp_key_is(k, kl, "Term")) {
            matched = true;
            rv = craft__mp_read_uint(r, &resp->term);
        } else if (craft__mp_key_is(k, kl, "Success")) {
            matched = true;
            rv = craft__mp_read_bool(r, &resp->success);
        }
    });
    return rv;
}

/* ------------------------------------------------------------------------ */
/* Freeing                                                                   */
/* ------------------------------------------------------------------------ */

void craft__wire_request_free(craft_rpc_t *rpc)
{
    if (rpc == NULL) {
        return;
    }
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        craft_append_entries_req_t *q = &rpc->req.append_entries;
        header_free(&q->header);
        free((void *)q->leader);
        entries_free(q);
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE:
        header_free(&rpc->req.request_vote.header);
        free((void *)rpc->req.request_vote.candidate);
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        header_free(&rpc->req.install_snapshot.header);
        free((void *)rpc->req.install_snapshot.leader);
        craft_configuration_free(&rpc->req.install_snapshot.configuration);
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        header_free(&rpc->req.timeout_now.header);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        header_free(&rpc->req.request_prevote.header);
        break;
    }
    memset(&rpc->req, 0, sizeof rpc->req);
}

void craft__wire_response_free(craft__wire_response_t *resp)
{
    if (resp == NULL) {
        return;
    }
    free(resp->error);
    switch (resp->type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        header_free(&resp->body.append_entries.header);
        break;
    case CRAFT_RPC_REQUEST_VOTE:
        header_free(&resp->body.request_vote.header);
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        header_free(&resp->body.install_snapshot.header);
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        header_free(&resp->body.timeout_now.header);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        header_free(&resp->body.request_prevote.header);
        break;
    }
    craft_rpc_type_t type = resp->type;
    memset(resp, 0, sizeof *resp);
    resp->type = type;
}

/* ------------------------------------------------------------------------ */
/* Decoder                                                                   */
/* ------------------------------------------------------------------------ */

void craft__wire_decoder_init(craft__wire_decoder_t *d,
                              const craft__wire_limits_t *limits)
{
    craft__wire_limits_t def;
    craft__wire_limits_default(&def);
    d->limits = limits != NULL ? *limits : def;
    /* zero fields mean "default"; keep every limit usable */
    if (d->limits.max_frame_bytes < 2) {
        d->limits.max_frame_bytes = def.max_frame_bytes;
    }
    if (d->limits.max_blob_bytes == 0) {
        d->limits.max_blob_bytes = def.max_blob_bytes;
    }
    if (d->limits.max_depth == 0) {
        d->limits.max_depth = def.max_depth;
    }
    if (d->limits.max_depth > CRAFT__MP_MAX_DEPTH) {
        d->limits.max_depth = CRAFT__MP_MAX_DEPTH;
    }
    craft__wire_decoder_reset(d);
}

void craft__wire_decoder_reset(craft__wire_decoder_t *d)
{
    d->in_frame = false;
    d->rpc_type = 0;
    d->need = 0;
    d->reason = NULL;
}

size_t craft__wire_decoder_need(const craft__wire_decoder_t *d)
{
    return d->need;
}

const char *craft__wire_decoder_reason(const craft__wire_decoder_t *d)
{
    return d->reason;
}

static int fail(craft__wire_decoder_t *d, const char *why)
{
    craft__wire_decoder_reset(d);
    d->reason = why;
    return CRAFT_EPROTOCOL;
}

/* Maps a reader code after a complete frame to the decoder's result. */
static int finish_decode(craft__wire_decoder_t *d, craft__mp_reader_t *r,
                         int rv)
{
    if (rv == CRAFT__MP_OK && r->pos != r->len) {
        /* cannot happen: the scan delimited exactly this value */
        rv = bad(r, "frame length mismatch");
    }
    if (rv == CRAFT_ENOMEM) {
        craft__wire_decoder_reset(d);
        return CRAFT_ENOMEM;
    }
    if (rv == CRAFT__MP_SHORT) {
        return fail(d, "truncated value inside a frame");
    }
    if (rv != CRAFT__MP_OK) {
        return fail(d, r->reason != NULL ? r->reason : "malformed message");
    }
    craft__wire_decoder_reset(d);
    return 0;
}

/* Scans `count` values starting at buf[skip]; NEED_MORE / EPROTOCOL / 0. */
static int scan_frame(craft__wire_decoder_t *d, const uint8_t *p, size_t len,
                      size_t skip)
{
    int rv = craft__mp_scan_run(&d->scan, p + skip, len - skip);
    if (rv == CRAFT__MP_SHORT) {
        d->need = skip + d->scan.need;
        return CRAFT__WIRE_NEED_MORE;
    }
    if (rv == CRAFT__MP_BAD) {
        return fail(d, d->scan.reason);
    }
    return 0;
}

int craft__wire_decode_request(craft__wire_decoder_t *d, const void *buf,
                               size_t len, craft_rpc_t *rpc, size_t *consumed)
{
    const uint8_t *p = buf;
    *consumed = 0;
    d->reason = NULL;
    if (!d->in_frame) {
        if (len < 1) {
            d->need = 1;
            return CRAFT__WIRE_NEED_MORE;
        }
        if (p[0] > CRAFT_RPC_REQUEST_PREVOTE) {
            return fail(d, "unknown rpc type");
        }
        d->rpc_type = p[0];
        craft__mp_scan_init(&d->scan, 1, d->limits.max_frame_bytes - 1,
                            d->limits.max_blob_bytes, d->limits.max_depth);
        d->in_frame = true;
    }
    int rv = scan_frame(d, p, len, 1);
    if (rv != 0) {
        return rv;
    }

    size_t frame = 1 + d->scan.pos;
    craft__mp_reader_t r;
    craft__mp_reader_init(&r, p + 1, frame - 1, d->limits.max_depth,
                          d->limits.max_blob_bytes);
    memset(&rpc->req, 0, sizeof rpc->req);
    rpc->type = (craft_rpc_type_t)d->rpc_type;
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        rv = decode_append_entries_req(&r, &d->limits, &rpc->req.append_entries);
        break;
    case CRAFT_RPC_REQUEST_VOTE:
        rv = decode_request_vote_req(&r, &rpc->req.request_vote);
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        rv = decode_install_snapshot_req(&r, &rpc->req.install_snapshot);
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        rv = decode_header_only(&r, &rpc->req.timeout_now.header);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        rv = decode_request_prevote_req(&r, &rpc->req.request_prevote);
        break;
    }
    rv = finish_decode(d, &r, rv);
    if (rv != 0) {
        craft__wire_request_free(rpc);
        return rv;
    }
    *consumed = frame;
    return 0;
}

int craft__wire_decode_response(craft__wire_decoder_t *d, craft_rpc_type_t type,
                                const void *buf, size_t len,
                                craft__wire_response_t *resp, size_t *consumed)
{
    const uint8_t *p = buf;
    *consumed = 0;
    d->reason = NULL;
    if ((unsigned)type > CRAFT_RPC_REQUEST_PREVOTE) {
        return fail(d, "unknown rpc type");
    }
    if (!d->in_frame) {
        /* two values: the error string and the response object */
        craft__mp_scan_init(&d->scan, 2, d->limits.max_frame_bytes,
                            d->limits.max_blob_bytes, d->limits.max_depth);
        d->in_frame = true;
    }
    int rv = scan_frame(d, p, len, 0);
    if (rv != 0) {
        return rv;
    }

    size_t frame = d->scan.pos;
    craft__mp_reader_t r;
    craft__mp_reader_init(&r, p, frame, d->limits.max_depth,
                          d->limits.max_blob_bytes);
    memset(resp, 0, sizeof *resp);
    resp->type = type;
    rv = craft__mp_read_cstr_dup(&r, &resp->error);
    if (rv == CRAFT__MP_OK && resp->error != NULL && resp->error[0] == '\0') {
        free(resp->error);
        resp->error = NULL;
    }
    if (rv == CRAFT__MP_OK) {
        resp->has_body = !(r.pos < r.len && r.p[r.pos] == 0xc0);
        switch (type) {
        case CRAFT_RPC_APPEND_ENTRIES:
            rv = decode_append_entries_resp(&r, &resp->body.append_entries);
            break;
        case CRAFT_RPC_REQUEST_VOTE:
            rv = decode_vote_resp(&r, &resp->body.request_vote.header,
                                  &resp->body.request_vote.term,
                                  &resp->body.request_vote.granted);
            break;
        case CRAFT_RPC_INSTALL_SNAPSHOT:
            rv = decode_install_snapshot_resp(&r, &resp->body.install_snapshot);
            break;
        case CRAFT_RPC_TIMEOUT_NOW:
            rv = decode_header_only(&r, &resp->body.timeout_now.header);
            break;
        case CRAFT_RPC_REQUEST_PREVOTE:
            rv = decode_vote_resp(&r, &resp->body.request_prevote.header,
                                  &resp->body.request_prevote.term,
                                  &resp->body.request_prevote.granted);
            break;
        }
    }
    rv = finish_decode(d, &r, rv);
    if (rv != 0) {
        craft__wire_response_free(resp);
        return rv;
    }
    *consumed = frame;
    return 0;
}
