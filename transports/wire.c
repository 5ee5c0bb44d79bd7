/* hashicorp/raft NetworkTransport RPC codec (WIRE.md §1-§5). */
#include "transports/wire.h"

#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

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
/* Message schemas (WIRE.md §4, §5)                                          */
/* ------------------------------------------------------------------------ */

/* How a field is held in its C struct and written on the wire. */
typedef enum {
    F_UINT,          /* uint64_t: smallest unsigned form */
    F_BOOL,          /* bool */
    F_INT,           /* int (Go int): the format's signed form, range checked */
    F_SIZE,          /* int64_t (Go int64) that must not be negative */
    F_STR,           /* const char *: raw string, nil when NULL */
    F_BLOB,          /* const void * + size_t at len_off: raw, nil when NULL */
    F_TIME,          /* int64_t Unix ns: Log.AppendedAt */
    F_LOG_TYPE,      /* craft_log_type_t: Go uint8 */
    F_ENTRIES,       /* const craft_log_t * + size_t at len_off: []*Log */
    F_CONFIGURATION, /* craft_configuration_t: EncodeConfiguration bytes */
    /* Legacy fields only protocol < 2 reads: sent, skipped when received. */
    F_PEERS, /* craft_configuration_t: encodePeers bytes (voters' addresses) */
    F_NIL    /* no storage: always nil */
} field_kind_t;

typedef struct field {
    const char *name; /* Go field name: the map key */
    uint8_t name_len; /* strlen(name) */
    uint8_t kind;     /* field_kind_t */
    bool since_1_3;   /* left out in the 1.1.2 format: RPCHeader ID/Addr
                         (NEW 1.3.7) and Log.AppendedAt (NEW 1.3.0) */
    uint16_t off;     /* offsetof the member */
    uint16_t len_off; /* F_BLOB, F_ENTRIES: offsetof the length member */
} field_t;

typedef struct message {
    const field_t *fields;
    size_t n;
} message_t;

#define FIELD(T, name, kind, m)                                                \
    {(name), sizeof(name) - 1, (kind), false, offsetof(T, m), 0}
#define FIELD_1_3(T, name, kind, m)                                            \
    {(name), sizeof(name) - 1, (kind), true, offsetof(T, m), 0}
#define FIELD_N(T, name, kind, m, len)                                         \
    {(name), sizeof(name) - 1, (kind), false, offsetof(T, m), offsetof(T, len)}
#define MESSAGE(fields) {(fields), sizeof(fields) / sizeof((fields)[0])}

/* The flattened RPCHeader (WIRE.md §4). */
#define ADDR(T) FIELD_1_3(T, "Addr", F_STR, header.addr)
#define ID(T) FIELD_1_3(T, "ID", F_STR, header.id)
#define PROTOCOL_VERSION(T)                                                    \
    FIELD(T, "ProtocolVersion", F_INT, header.protocol_version)

/* Every table lists a Go struct's exported fields in the order go-msgpack
 * writes them: names sorted byte-wise. S names the C struct of the table
 * that follows it. */

static const field_t log_fields[] = {
    FIELD_1_3(craft_log_t, "AppendedAt", F_TIME, appended_at_ns),
    FIELD_N(craft_log_t, "Data", F_BLOB, data, len),
    FIELD_N(craft_log_t, "Extensions", F_BLOB, ext, ext_len),
    FIELD(craft_log_t, "Index", F_UINT, index),
    FIELD(craft_log_t, "Term", F_UINT, term),
    FIELD(craft_log_t, "Type", F_LOG_TYPE, type),
};

#define S craft_append_entries_req_t
static const field_t append_entries_req[] = {
    ADDR(S),
    FIELD_N(S, "Entries", F_ENTRIES, entries, n_entries),
    ID(S),
    FIELD(S, "Leader", F_STR, leader),
    FIELD(S, "LeaderCommitIndex", F_UINT, leader_commit_index),
    FIELD(S, "PrevLogEntry", F_UINT, prev_log_entry),
    FIELD(S, "PrevLogTerm", F_UINT, prev_log_term),
    PROTOCOL_VERSION(S),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

#define S craft_append_entries_resp_t
static const field_t append_entries_resp[] = {
    ADDR(S),
    ID(S),
    FIELD(S, "LastLog", F_UINT, last_log),
    FIELD(S, "NoRetryBackoff", F_BOOL, no_retry_backoff),
    PROTOCOL_VERSION(S),
    FIELD(S, "Success", F_BOOL, success),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

#define S craft_request_vote_req_t
static const field_t request_vote_req[] = {
    ADDR(S),
    FIELD(S, "Candidate", F_STR, candidate),
    ID(S),
    FIELD(S, "LastLogIndex", F_UINT, last_log_index),
    FIELD(S, "LastLogTerm", F_UINT, last_log_term),
    FIELD(S, "LeadershipTransfer", F_BOOL, leadership_transfer),
    PROTOCOL_VERSION(S),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

#define S craft_request_vote_resp_t
static const field_t request_vote_resp[] = {
    ADDR(S),
    FIELD(S, "Granted", F_BOOL, granted),
    ID(S),
    {"Peers", sizeof("Peers") - 1, F_NIL, false, 0, 0}, /* filled only for protocol < 2 */
    PROTOCOL_VERSION(S),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

/* RequestPreVote exists only in hashicorp >= 1.7: always the full header. */
#define S craft_request_prevote_req_t
static const field_t request_prevote_req[] = {
    FIELD(S, "Addr", F_STR, header.addr),
    FIELD(S, "ID", F_STR, header.id),
    FIELD(S, "LastLogIndex", F_UINT, last_log_index),
    FIELD(S, "LastLogTerm", F_UINT, last_log_term),
    PROTOCOL_VERSION(S),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

#define S craft_request_prevote_resp_t
static const field_t request_prevote_resp[] = {
    FIELD(S, "Addr", F_STR, header.addr),
    FIELD(S, "Granted", F_BOOL, granted),
    FIELD(S, "ID", F_STR, header.id),
    PROTOCOL_VERSION(S),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

/* Peers carries encodePeers(configuration), as real hashicorp leaders send
 * it; receivers of protocol >= 2 only read Configuration. */
#define S craft_install_snapshot_req_t
static const field_t install_snapshot_req[] = {
    ADDR(S),
    FIELD(S, "Configuration", F_CONFIGURATION, configuration),
    FIELD(S, "ConfigurationIndex", F_UINT, configuration_index),
    ID(S),
    FIELD(S, "LastLogIndex", F_UINT, last_log_index),
    FIELD(S, "LastLogTerm", F_UINT, last_log_term),
    FIELD(S, "Leader", F_STR, leader),
    FIELD(S, "Peers", F_PEERS, configuration),
    PROTOCOL_VERSION(S),
    FIELD(S, "Size", F_SIZE, size),
    FIELD(S, "SnapshotVersion", F_INT, snapshot_version),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

#define S craft_install_snapshot_resp_t
static const field_t install_snapshot_resp[] = {
    ADDR(S),
    ID(S),
    PROTOCOL_VERSION(S),
    FIELD(S, "Success", F_BOOL, success),
    FIELD(S, "Term", F_UINT, term),
};
#undef S

/* TimeoutNowRequest and TimeoutNowResponse: only the header (the two C
 * structs are just the header, so one table serves both). */
_Static_assert(offsetof(craft_timeout_now_req_t, header) == 0 &&
                   offsetof(craft_timeout_now_resp_t, header) == 0,
               "header_only serves both TimeoutNow structs");
static const field_t header_only[] = {
    ADDR(craft_timeout_now_req_t),
    ID(craft_timeout_now_req_t),
    PROTOCOL_VERSION(craft_timeout_now_req_t),
};

#define N_RPC_TYPES (CRAFT_RPC_REQUEST_PREVOTE + 1)

static const message_t log_message = MESSAGE(log_fields);

static const message_t requests[N_RPC_TYPES] = {
    [CRAFT_RPC_APPEND_ENTRIES] = MESSAGE(append_entries_req),
    [CRAFT_RPC_REQUEST_VOTE] = MESSAGE(request_vote_req),
    [CRAFT_RPC_INSTALL_SNAPSHOT] = MESSAGE(install_snapshot_req),
    [CRAFT_RPC_TIMEOUT_NOW] = MESSAGE(header_only),
    [CRAFT_RPC_REQUEST_PREVOTE] = MESSAGE(request_prevote_req),
};

static const message_t responses[N_RPC_TYPES] = {
    [CRAFT_RPC_APPEND_ENTRIES] = MESSAGE(append_entries_resp),
    [CRAFT_RPC_REQUEST_VOTE] = MESSAGE(request_vote_resp),
    [CRAFT_RPC_INSTALL_SNAPSHOT] = MESSAGE(install_snapshot_resp),
    [CRAFT_RPC_TIMEOUT_NOW] = MESSAGE(header_only),
    [CRAFT_RPC_REQUEST_PREVOTE] = MESSAGE(request_prevote_resp),
};

/* ------------------------------------------------------------------------ */
/* Encoding                                                                  */
/* ------------------------------------------------------------------------ */

static craft__mp_int_form_t int_form(craft__wire_format_t fmt)
{
    return fmt == CRAFT__WIRE_FORMAT_V1_1_2 ? CRAFT__MP_INT_V055
                                            : CRAFT__MP_INT_V2;
}

static bool field_sent(const field_t *f, craft__wire_format_t fmt)
{
    return !f->since_1_3 || fmt != CRAFT__WIRE_FORMAT_V1_1_2;
}

static int put_fields(craft__mp_buf_t *b, craft__wire_format_t fmt,
                      const message_t *m, const void *msg);

static int put_log(craft__mp_buf_t *b, craft__wire_format_t fmt,
                   const craft_log_t *l)
{
    if ((l->data == NULL && l->len > 0) || (l->ext == NULL && l->ext_len > 0) ||
        (int)l->type < 0 || (int)l->type > UINT8_MAX) {
        return CRAFT_EINVAL;
    }
    return put_fields(b, fmt, &log_message, l);
}

static int put_entries(craft__mp_buf_t *b, craft__wire_format_t fmt,
                       const craft_log_t *e, size_t n)
{
    if ((e == NULL && n > 0) || n > UINT32_MAX) {
        return CRAFT_EINVAL;
    }
    if (e == NULL) {
        craft__mp_put_nil(b); /* Go nil slice: hashicorp's heartbeat */
        return 0;
    }
    craft__mp_put_array(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        int rv = put_log(b, fmt, &e[i]);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

static int put_configuration(craft__mp_buf_t *b, const craft_configuration_t *c)
{
    void *conf;
    size_t conf_len;
    int rv = craft__configuration_encode(c, &conf, &conf_len);
    if (rv != 0) {
        return rv;
    }
    craft__mp_put_str(b, conf, conf_len);
    free(conf);
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

static int put_field(craft__mp_buf_t *b, craft__wire_format_t fmt,
                     const field_t *f, const void *msg)
{
    const void *p = (const char *)msg + f->off;
    const size_t *len = (const void *)((const char *)msg + f->len_off);
    switch ((field_kind_t)f->kind) {
    case F_UINT:
        craft__mp_put_uint(b, *(const uint64_t *)p);
        break;
    case F_BOOL:
        craft__mp_put_bool(b, *(const bool *)p);
        break;
    case F_INT:
        craft__mp_put_int(b, *(const int *)p, int_form(fmt));
        break;
    case F_SIZE:
        craft__mp_put_int(b, *(const int64_t *)p, int_form(fmt));
        break;
    case F_STR:
        craft__mp_put_cstr_or_nil(b, *(const char *const *)p);
        break;
    case F_BLOB:
        craft__mp_put_blob_or_nil(b, *(const void *const *)p, *len);
        break;
    case F_TIME:
        craft__wire_put_time(b, *(const int64_t *)p);
        break;
    case F_LOG_TYPE:
        craft__mp_put_uint(b, (uint64_t)*(const craft_log_type_t *)p);
        break;
    case F_ENTRIES:
        return put_entries(b, fmt, *(const craft_log_t *const *)p, *len);
    case F_CONFIGURATION:
        return put_configuration(b, p);
    case F_PEERS:
        return put_legacy_peers(b, p);
    case F_NIL:
        craft__mp_put_nil(b);
        break;
    }
    return 0;
}

/* The struct `msg` as a map of the fields `fmt` sends. */
static int put_fields(craft__mp_buf_t *b, craft__wire_format_t fmt,
                      const message_t *m, const void *msg)
{
    uint32_t n = 0;
    for (size_t i = 0; i < m->n; i++) {
        n += field_sent(&m->fields[i], fmt);
    }
    craft__mp_put_map(b, n);
    for (size_t i = 0; i < m->n; i++) {
        const field_t *f = &m->fields[i];
        if (!field_sent(f, fmt)) {
            continue;
        }
        craft__mp_put_str(b, f->name, f->name_len);
        int rv = put_field(b, fmt, f, msg);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

/* Rolls `b` back to where it was on a (non-sticky) error, so a failed
 * encode never leaves half a frame behind. */
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
    if ((unsigned)type >= N_RPC_TYPES) {
        rv = CRAFT_EINVAL;
    } else if (type == CRAFT_RPC_INSTALL_SNAPSHOT &&
               ((const craft_install_snapshot_req_t *)req)->size < 0) {
        rv = CRAFT_EINVAL; /* a byte count: refused before anything is encoded */
    } else {
        rv = put_fields(b, fmt, &requests[type], req);
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
    if ((unsigned)type >= N_RPC_TYPES) {
        return CRAFT_EINVAL;
    }
    craft__mp_put_cstr_or_nil(b, error ? error : "");
    if (resp == NULL) {
        craft__mp_put_nil(b);
    } else {
        rv = put_fields(b, fmt, &responses[type], resp);
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
/* Decoding (reader codes; CRAFT_ENOMEM passes through)                      */
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

/* A []byte field (nil -> NULL/0); a duplicate key replaces the old value. */
static int blob_field(craft__mp_reader_t *r, const void **field, size_t *len)
{
    void *p;
    free((void *)*field);
    *field = NULL;
    int rv = craft__mp_read_blob_dup(r, &p, len);
    *field = p;
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

static int log_type_field(craft__mp_reader_t *r, craft_log_type_t *field)
{
    uint64_t t = 0;
    int rv = craft__mp_read_uint(r, &t);
    if (rv == CRAFT__MP_OK && t > UINT8_MAX) {
        rv = bad(r, "log type out of range");
    }
    *field = (craft_log_type_t)t;
    return rv;
}

static int size_field(craft__mp_reader_t *r, int64_t *field)
{
    int rv = craft__mp_read_int(r, field);
    if (rv == CRAFT__MP_OK && *field < 0) {
        rv = bad(r, "negative snapshot size");
    }
    return rv;
}

static int get_fields(craft__mp_reader_t *r, const craft__wire_limits_t *lim,
                      const message_t *m, void *msg);
static void free_fields(const message_t *m, void *msg);

static void entries_free(const craft_log_t **entries, size_t *n)
{
    craft_log_t *e = (craft_log_t *)*entries;
    for (size_t i = 0; e != NULL && i < *n; i++) {
        free_fields(&log_message, &e[i]);
    }
    free(e);
    *entries = NULL;
    *n = 0;
}

static int entries_field(craft__mp_reader_t *r, const craft__wire_limits_t *lim,
                         const craft_log_t **entries, size_t *n_entries)
{
    uint32_t n;
    entries_free(entries, n_entries);
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
    *entries = e;
    for (uint32_t i = 0; i < n; i++) {
        *n_entries = i + 1;
        if (craft__mp_next_is_nil(r)) {
            /* a nil *Log would crash a Go receiver: never valid */
            return bad(r, "nil log entry");
        }
        if ((rv = get_fields(r, lim, &log_message, &e[i])) != CRAFT__MP_OK) {
            return rv;
        }
    }
    craft__mp_leave(r);
    return CRAFT__MP_OK;
}

static int configuration_field(craft__mp_reader_t *r, craft_configuration_t *c)
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

static int get_field(craft__mp_reader_t *r, const craft__wire_limits_t *lim,
                     const field_t *f, void *msg)
{
    void *p = (char *)msg + f->off;
    size_t *len = (void *)((char *)msg + f->len_off);
    switch ((field_kind_t)f->kind) {
    case F_UINT:
        return craft__mp_read_uint(r, p);
    case F_BOOL:
        return craft__mp_read_bool(r, p);
    case F_INT:
        return int_field(r, p);
    case F_SIZE:
        return size_field(r, p);
    case F_STR:
        return str_field(r, p);
    case F_BLOB:
        return blob_field(r, p, len);
    case F_TIME:
        return craft__wire_read_time(r, p);
    case F_LOG_TYPE:
        return log_type_field(r, p);
    case F_ENTRIES:
        return entries_field(r, lim, p, len);
    case F_CONFIGURATION:
        return configuration_field(r, p);
    case F_PEERS:
    case F_NIL:
        break;
    }
    return craft__mp_skip(r);
}

/* The table's field named k. Senders write the keys in the table's order
 * (sorted), so the search starts after the previous match (*hint). */
static const field_t *find_field(const message_t *m, const uint8_t *k,
                                 size_t kl, size_t *hint)
{
    for (size_t j = 0; j < m->n; j++) {
        size_t i = (*hint + j) % m->n;
        const field_t *f = &m->fields[i];
        if (f->name_len == kl && memcmp(f->name, k, kl) == 0) {
            *hint = i + 1;
            return f;
        }
    }
    return NULL;
}

/* Decodes a map into the struct `msg`, which the caller zeroed. Keys may
 * come in any order; unknown keys are skipped, as go-msgpack does
 * (ErrorIfNoField=false); nil gives the zero struct, as in Go. */
static int get_fields(craft__mp_reader_t *r, const craft__wire_limits_t *lim,
                      const message_t *m, void *msg)
{
    uint32_t n;
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK;
    }
    int rv = craft__mp_read_map(r, &n);
    size_t hint = 0;
    for (uint32_t i = 0; rv == CRAFT__MP_OK && i < n; i++) {
        const uint8_t *k;
        size_t kl;
        if ((rv = craft__mp_read_str(r, &k, &kl)) != CRAFT__MP_OK) {
            break;
        }
        const field_t *f = find_field(m, k, kl, &hint);
        rv = f != NULL ? get_field(r, lim, f, msg) : craft__mp_skip(r);
    }
    if (rv == CRAFT__MP_OK) {
        craft__mp_leave(r);
    }
    return rv;
}

/* ------------------------------------------------------------------------ */
/* Freeing                                                                   */
/* ------------------------------------------------------------------------ */

/* Frees what get_fields allocated in `msg` (not `msg` itself). */
static void free_fields(const message_t *m, void *msg)
{
    for (size_t i = 0; i < m->n; i++) {
        const field_t *f = &m->fields[i];
        void *p = (char *)msg + f->off;
        size_t *len = (void *)((char *)msg + f->len_off);
        switch ((field_kind_t)f->kind) {
        case F_STR:
            free((void *)*(const char **)p);
            *(const char **)p = NULL;
            break;
        case F_BLOB:
            free((void *)*(const void **)p);
            *(const void **)p = NULL;
            break;
        case F_ENTRIES:
            entries_free(p, len);
            break;
        case F_CONFIGURATION:
            craft_configuration_free(p);
            break;
        default:
            break;
        }
    }
}

void craft__wire_request_free(craft_rpc_t *rpc)
{
    if (rpc == NULL) {
        return;
    }
    if ((unsigned)rpc->type < N_RPC_TYPES) {
        free_fields(&requests[rpc->type], &rpc->req);
    }
    memset(&rpc->req, 0, sizeof rpc->req);
}

void craft__wire_response_free(craft__wire_response_t *resp)
{
    if (resp == NULL) {
        return;
    }
    free(resp->error);
    if ((unsigned)resp->type < N_RPC_TYPES) {
        free_fields(&responses[resp->type], &resp->body);
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
    if (d->limits.max_entries == 0) {
        d->limits.max_entries = def.max_entries;
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
    craft__mp_reader_destroy(r);
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
        if (p[0] >= N_RPC_TYPES) {
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
    craft__mp_reader_scanned(&r); /* by scan_frame, with the same limits */
    memset(&rpc->req, 0, sizeof rpc->req);
    rpc->type = (craft_rpc_type_t)d->rpc_type;
    rv = get_fields(&r, &d->limits, &requests[rpc->type], &rpc->req);
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
    if ((unsigned)type >= N_RPC_TYPES) {
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
    craft__mp_reader_scanned(&r); /* by scan_frame, with the same limits */
    memset(resp, 0, sizeof *resp);
    resp->type = type;
    rv = craft__mp_read_cstr_dup(&r, &resp->error);
    if (rv == CRAFT__MP_OK && resp->error != NULL && resp->error[0] == '\0') {
        free(resp->error);
        resp->error = NULL;
    }
    if (rv == CRAFT__MP_OK) {
        resp->has_body = !craft__mp_next_is_nil(&r);
        rv = get_fields(&r, &d->limits, &responses[type], &resp->body);
    }
    rv = finish_decode(d, &r, rv);
    if (rv != 0) {
        craft__wire_response_free(resp);
        return rv;
    }
    *consumed = frame;
    return 0;
}
