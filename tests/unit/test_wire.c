/* transports/wire.c: hashicorp NetworkTransport RPC codec. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testutil.h"
#include "tests/unit/wire_samples.h"
#include "transports/wire.h"

#define F112 CRAFT__WIRE_FORMAT_V1_1_2
#define FDEF CRAFT__WIRE_FORMAT_DEFAULT

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

static const ws_sample_t *sample(const char *prefix)
{
    for (size_t i = 0; i < WS_N_SAMPLES; i++) {
        if (strncmp(ws_samples[i].title, prefix, strlen(prefix)) == 0) {
            return &ws_samples[i];
        }
    }
    ck_abort_msg("no sample %s", prefix);
    return NULL;
}

static void str_eq(const char *got, const char *want)
{
    if (want == NULL) {
        ck_assert_ptr_null(got);
    } else {
        ck_assert_ptr_nonnull(got);
        ck_assert_str_eq(got, want);
    }
}

/* Exact-size heap copy so ASan catches reads past the end. */
static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n > 0 ? n : 1);
    ck_assert_ptr_nonnull(c);
    if (n > 0) {
        memcpy(c, p, n);
    }
    return c;
}

/* Every proper prefix of a frame is NEED_MORE with a sane need, from a
 * fresh decoder and from one decoder fed a growing buffer. */
static void check_truncations(int is_req, craft_rpc_type_t type,
                              const uint8_t *frame, size_t len)
{
    craft__wire_decoder_t inc;
    craft__wire_decoder_init(&inc, NULL);
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *p = dup_bytes(frame, cut);
        craft__wire_decoder_t d;
        craft__wire_decoder_init(&d, NULL);
        craft_rpc_t rpc;
        craft__wire_response_t resp;
        size_t used = 99;
        int rv = is_req ? craft__wire_decode_request(&d, p, cut, &rpc, &used)
                        : craft__wire_decode_response(&d, type, p, cut, &resp,
                                                      &used);
        ck_assert_msg(rv == CRAFT__WIRE_NEED_MORE, "cut %zu: rv %d", cut, rv);
        ck_assert_uint_eq(used, 0);
        ck_assert_uint_gt(craft__wire_decoder_need(&d), cut);
        ck_assert_uint_le(craft__wire_decoder_need(&d), len);
        rv = is_req ? craft__wire_decode_request(&inc, p, cut, &rpc, &used)
                    : craft__wire_decode_response(&inc, type, p, cut, &resp,
                                                  &used);
        ck_assert_msg(rv == CRAFT__WIRE_NEED_MORE, "inc cut %zu: rv %d", cut, rv);
        ck_assert_uint_le(craft__wire_decoder_need(&inc), len);
        free(p);
    }
    /* the incremental decoder completes with the whole frame */
    uint8_t *p = dup_bytes(frame, len);
    size_t used = 0;
    if (is_req) {
        craft_rpc_t rpc;
        ck_assert_int_eq(craft__wire_decode_request(&inc, p, len, &rpc, &used), 0);
        craft__wire_request_free(&rpc);
    } else {
        craft__wire_response_t resp;
        ck_assert_int_eq(
            craft__wire_decode_response(&inc, type, p, len, &resp, &used), 0);
        craft__wire_response_free(&resp);
    }
    ck_assert_uint_eq(used, len);
    free(p);
}

static void decode_req(const uint8_t *frame, size_t len, craft_rpc_t *rpc)
{
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    uint8_t *p = dup_bytes(frame, len);
    size_t used = 0;
    memset(rpc, 0, sizeof *rpc);
    int rv = craft__wire_decode_request(&d, p, len, rpc, &used);
    ck_assert_msg(rv == 0, "decode_request: %d (%s)", rv,
                  craft__wire_decoder_reason(&d));
    ck_assert_uint_eq(used, len);
    free(p);
}

static void decode_resp(craft_rpc_type_t type, const uint8_t *frame, size_t len,
                        craft__wire_response_t *resp)
{
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    uint8_t *p = dup_bytes(frame, len);
    size_t used = 0;
    int rv = craft__wire_decode_response(&d, type, p, len, resp, &used);
    ck_assert_msg(rv == 0, "decode_response: %d (%s)", rv,
                  craft__wire_decoder_reason(&d));
    ck_assert_uint_eq(used, len);
    free(p);
}

static void expect_req_bytes(craft__wire_format_t fmt, craft_rpc_type_t type,
                             const void *req, const uint8_t *want, size_t n)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    ck_assert_int_eq(craft__wire_encode_request(&b, fmt, type, req), 0);
    ck_assert_uint_eq(b.len, n);
    ck_assert_mem_eq(b.data, want, n);
    craft__mp_buf_free(&b);
}

static void expect_resp_bytes(craft__wire_format_t fmt, craft_rpc_type_t type,
                              const char *err, const void *resp,
                              const uint8_t *want, size_t n)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    ck_assert_int_eq(craft__wire_encode_response(&b, fmt, type, err, resp), 0);
    ck_assert_uint_eq(b.len, n);
    ck_assert_mem_eq(b.data, want, n);
    craft__mp_buf_free(&b);
}

/* A decoded request re-encoded in the 1.1.2 format gives the capture. */
static void check_req_sample(const ws_sample_t *s, craft_rpc_t *rpc)
{
    decode_req(s->bytes, s->len, rpc);
    expect_req_bytes(F112, rpc->type, &rpc->req, s->bytes, s->len);
    check_truncations(1, rpc->type, s->bytes, s->len);
}

static void check_resp_sample(craft_rpc_type_t type, const ws_sample_t *s,
                              craft__wire_response_t *resp)
{
    decode_resp(type, s->bytes, s->len, resp);
    ck_assert(resp->has_body);
    expect_resp_bytes(F112, type, resp->error, &resp->body, s->bytes, s->len);
    check_truncations(0, type, s->bytes, s->len);
}

/* ------------------------------------------------------------------------ */
/* WIRE-SAMPLES.txt: every capture decodes and re-encodes byte for byte     */
/* ------------------------------------------------------------------------ */

static void rv_req(const char *title, uint64_t term, const char *cand,
                   uint64_t lli, uint64_t llt, bool transfer)
{
    craft_rpc_t rpc;
    check_req_sample(sample(title), &rpc);
    ck_assert_int_eq(rpc.type, CRAFT_RPC_REQUEST_VOTE);
    const craft_request_vote_req_t *q = &rpc.req.request_vote;
    ck_assert_int_eq(q->header.protocol_version, 3);
    ck_assert_ptr_null(q->header.id);
    ck_assert_ptr_null(q->header.addr);
    ck_assert_uint_eq(q->term, term);
    str_eq(q->candidate, cand);
    ck_assert_uint_eq(q->last_log_index, lli);
    ck_assert_uint_eq(q->last_log_term, llt);
    ck_assert(q->leadership_transfer == transfer);
    craft__wire_request_free(&rpc);
}

static void rv_resp(const char *title, bool granted, uint64_t term)
{
    craft__wire_response_t r;
    check_resp_sample(CRAFT_RPC_REQUEST_VOTE, sample(title), &r);
    ck_assert_ptr_null(r.error);
    ck_assert(r.body.request_vote.granted == granted);
    ck_assert_int_eq(r.body.request_vote.header.protocol_version, 3);
    ck_assert_uint_eq(r.body.request_vote.term, term);
    craft__wire_response_free(&r);
}

START_TEST(test_samples_request_vote)
{
    rv_req("RequestVote, granted (first captured) -- REQUEST", 2,
           "127.0.0.1:17002", 1, 1, false);
    rv_req("RequestVote, rejected (first captured) -- REQUEST", 3,
           "127.0.0.1:17001", 21155, 2, false);
    rv_req("RequestVote from the last election in the capture -- REQUEST", 4,
           "127.0.0.1:17001", 21155, 2, false);
    rv_req("RequestVote with LeadershipTransfer=true (after TimeoutNow) -- REQUEST",
           5, "127.0.0.1:18101", 178, 4, true);
    rv_req("RequestVoteRequest (98 bytes)", 3, "127.0.0.1:17002", 7, 2, false);
    rv_resp("RequestVote, granted (first captured) -- RESPONSE", true, 2);
    rv_resp("RequestVote, rejected (first captured) -- RESPONSE", false, 2);
    rv_resp("RequestVote from the last election in the capture -- RESPONSE",
            true, 4);
    rv_resp("RequestVote with LeadershipTransfer=true (after TimeoutNow) -- RESPONSE",
            true, 5);
    rv_resp("RequestVoteResponse (granted) (41 bytes)", true, 3);
}
END_TEST

typedef struct ae_expect {
    uint64_t term;
    const char *leader;
    uint64_t prev, prev_term, commit;
    int n_entries; /* -1: nil */
    uint64_t first_index;
    craft_log_type_t first_type;
    size_t first_len;
    bool heartbeat;
    uint64_t first_term; /* 0: the request's term */
} ae_expect_t;

static void ae_req(const char *title, ae_expect_t e)
{
    craft_rpc_t rpc;
    check_req_sample(sample(title), &rpc);
    ck_assert_int_eq(rpc.type, CRAFT_RPC_APPEND_ENTRIES);
    const craft_append_entries_req_t *q = &rpc.req.append_entries;
    ck_assert_int_eq(q->header.protocol_version, 3);
    ck_assert_uint_eq(q->term, e.term);
    str_eq(q->leader, e.leader);
    ck_assert_uint_eq(q->prev_log_entry, e.prev);
    ck_assert_uint_eq(q->prev_log_term, e.prev_term);
    ck_assert_uint_eq(q->leader_commit_index, e.commit);
    if (e.n_entries < 0) {
        ck_assert_ptr_null(q->entries);
        ck_assert_uint_eq(q->n_entries, 0);
    } else {
        ck_assert_ptr_nonnull(q->entries);
        ck_assert_uint_eq(q->n_entries, (size_t)e.n_entries);
    }
    if (e.n_entries > 0) {
        ck_assert_uint_eq(q->entries[0].index, e.first_index);
        ck_assert_uint_eq(q->entries[0].term, e.first_term ? e.first_term : e.term);
        ck_assert_int_eq(q->entries[0].type, e.first_type);
        ck_assert_uint_eq(q->entries[0].len, e.first_len);
        ck_assert_ptr_null(q->entries[0].ext);
        ck_assert_int_eq(q->entries[0].appended_at_ns, 0);
        if (e.first_len == 0) {
            ck_assert_ptr_null(q->entries[0].data);
        }
        if (e.first_type == CRAFT_LOG_CONFIGURATION) {
            craft_configuration_t c;
            ck_assert_int_eq(craft__configuration_decode(q->entries[0].data,
                                                         q->entries[0].len, &c),
                             0);
            ck_assert_uint_eq(c.n, 3);
            craft_configuration_free(&c);
        }
    }
    ck_assert(craft__wire_is_heartbeat(q) == e.heartbeat);
    craft__wire_request_free(&rpc);
}

static void ae_resp(const char *title, uint64_t last_log, bool nrb,
                    bool success, uint64_t term)
{
    craft__wire_response_t r;
    check_resp_sample(CRAFT_RPC_APPEND_ENTRIES, sample(title), &r);
    ck_assert_ptr_null(r.error);
    const craft_append_entries_resp_t *a = &r.body.append_entries;
    ck_assert_int_eq(a->header.protocol_version, 3);
    ck_assert_uint_eq(a->last_log, last_log);
    ck_assert(a->no_retry_backoff == nrb);
    ck_assert(a->success == success);
    ck_assert_uint_eq(a->term, term);
    craft__wire_response_free(&r);
}

START_TEST(test_samples_append_entries)
{
    const char *l2 = "127.0.0.1:17002", *l1 = "127.0.0.1:18101";
    ae_req("AppendEntries carrying log entries (first captured) -- REQUEST",
           (ae_expect_t){2, l2, 1, 1, 0, 1, 2, CRAFT_LOG_NOOP, 0, false, 0});
    ae_req("AppendEntries carrying a LogCommand entry (first captured) -- REQUEST",
           (ae_expect_t){2, l2, 3, 2, 3, 1, 4, CRAFT_LOG_COMMAND, 64, false, 0});
    ae_req("AppendEntries without entries that is NOT a heartbeat",
           (ae_expect_t){2, l2, 1067, 2, 1066, 0, 0, 0, 0, false, 0});
    ae_req("Heartbeat (AppendEntries that takes the receiver's heartbeat fast path",
           (ae_expect_t){2, l2, 0, 0, 0, -1, 0, 0, 0, true, 0});
    ae_req("AppendEntries carrying a LogConfiguration entry (first captured) -- REQUEST",
           (ae_expect_t){2, l1, 0, 0, 0, 1, 1, CRAFT_LOG_CONFIGURATION, 133,
                         false, 1}); /* the bootstrap entry: term 1 */
    ae_req("AppendEntries rejected by the follower (Success=false) -- REQUEST",
           (ae_expect_t){2, l1, 1, 1, 0, 0, 0, 0, 0, false, 0});
    ae_req("AppendEntriesRequest with a LogCommand and a LogConfiguration entry",
           (ae_expect_t){2, "127.0.0.1:17001", 5, 2, 5, 2, 6, CRAFT_LOG_COMMAND,
                         7, false, 0});
    ae_req("heartbeat AppendEntriesRequest (what Raft.heartbeat sends)",
           (ae_expect_t){2, "127.0.0.1:17001", 0, 0, 0, -1, 0, 0, 0, true, 0});

    ae_resp("AppendEntries carrying log entries (first captured) -- RESPONSE",
            1, false, true, 2);
    ae_resp("AppendEntries carrying a LogCommand entry (first captured) -- RESPONSE",
            3, false, true, 2);
    ae_resp("AppendEntries carrying several entries (first captured with >= 3) -- RESPONSE",
            305, false, true, 2);
    ae_resp("AppendEntries without entries that is NOT a heartbeat (pipeline probe / commit-index update) -- RESPONSE",
            1067, false, true, 2);
    ae_resp("Heartbeat (AppendEntries that takes the receiver's heartbeat fast path, first captured) -- RESPONSE",
            217, false, true, 2);
    ae_resp("AppendEntries carrying a LogConfiguration entry (first captured) -- RESPONSE",
            0, false, true, 2);
    ae_resp("AppendEntries rejected by the follower (Success=false) -- RESPONSE",
            0, true, false, 2);
    ae_resp("AppendEntriesResponse (success) (59 bytes)", 7, false, true, 2);
}
END_TEST

START_TEST(test_sample_append_entries_pair_content)
{
    /* the synthetic 2-entry request: command "set k v" then configuration */
    craft_rpc_t rpc;
    decode_req(sample("AppendEntriesRequest with a LogCommand")->bytes, 321, &rpc);
    const craft_append_entries_req_t *q = &rpc.req.append_entries;
    ck_assert_uint_eq(q->n_entries, 2);
    ck_assert_mem_eq(q->entries[0].data, "set k v", 7);
    ck_assert_uint_eq(q->entries[1].index, 7);
    ck_assert_int_eq(q->entries[1].type, CRAFT_LOG_CONFIGURATION);
    ck_assert_uint_eq(q->entries[1].len, 133);
    ck_assert_mem_eq(q->entries[1].data,
                     sample("Configuration as stored")->bytes, 133);
    craft__wire_request_free(&rpc);
}
END_TEST

START_TEST(test_sample_truncated_capture)
{
    /* The 34-entry capture is only shown up to byte 512 of 3713: that
     * prefix is a real partial frame. */
    const ws_sample_t *s = sample("AppendEntries carrying several entries (first captured with >= 3) -- REQUEST");
    ck_assert_uint_eq(s->full_len, 3713);
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    craft_rpc_t rpc;
    size_t used;
    ck_assert_int_eq(craft__wire_decode_request(&d, s->bytes, s->len, &rpc, &used),
                     CRAFT__WIRE_NEED_MORE);
    ck_assert_uint_gt(craft__wire_decoder_need(&d), s->len);
    ck_assert_uint_le(craft__wire_decoder_need(&d), s->full_len);

    /* Rebuild it: 34 commands 306..339 of 64 bytes (the capture's first
     * payload), PrevLogEntry 305, commit 339. Our bytes must agree with
     * the 512 bytes shown and have the real total length. */
    const uint8_t *payload = s->bytes + 0x16;
    craft_log_t e[34];
    memset(e, 0, sizeof e);
    for (int i = 0; i < 34; i++) {
        e[i].index = 306 + (uint64_t)i;
        e[i].term = 2;
        e[i].type = CRAFT_LOG_COMMAND;
        e[i].data = payload;
        e[i].len = 64;
    }
    craft_append_entries_req_t q = {
        .header = {3, NULL, NULL}, .term = 2, .leader = "127.0.0.1:17002",
        .prev_log_entry = 305, .prev_log_term = 2, .entries = e,
        .n_entries = 34, .leader_commit_index = 339};
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    ck_assert_int_eq(craft__wire_encode_request(&b, F112, CRAFT_RPC_APPEND_ENTRIES, &q), 0);
    ck_assert_uint_eq(b.len, s->full_len);
    ck_assert_mem_eq(b.data, s->bytes, s->len);
    /* and the decoder, fed the rest, completes on the full frame */
    ck_assert_int_eq(craft__wire_decode_request(&d, b.data, b.len, &rpc, &used), 0);
    ck_assert_uint_eq(used, b.len);
    ck_assert_uint_eq(rpc.req.append_entries.n_entries, 34);
    ck_assert_uint_eq(rpc.req.append_entries.entries[33].index, 339);
    craft__wire_request_free(&rpc);
    craft__mp_buf_free(&b);
}
END_TEST

START_TEST(test_samples_install_snapshot)
{
    /* live capture: Peers carries encodePeers (our encoder does the same) */
    craft_rpc_t rpc;
    check_req_sample(sample("InstallSnapshot (first captured) -- REQUEST"), &rpc);
    const craft_install_snapshot_req_t *q = &rpc.req.install_snapshot;
    ck_assert_int_eq(q->header.protocol_version, 3);
    ck_assert_int_eq(q->snapshot_version, 1);
    ck_assert_uint_eq(q->term, 4);
    str_eq(q->leader, "127.0.0.1:18103");
    ck_assert_uint_eq(q->last_log_index, 173);
    ck_assert_uint_eq(q->last_log_term, 4);
    ck_assert_uint_eq(q->configuration_index, 1);
    ck_assert_int_eq(q->size, 2165);
    ck_assert_uint_eq(q->configuration.n, 3);
    str_eq(q->configuration.servers[0].id, "n1");
    str_eq(q->configuration.servers[2].address, "127.0.0.1:18103");
    ck_assert_int_eq(q->configuration.servers[2].suffrage, CRAFT_VOTER);
    craft__wire_request_free(&rpc);

    /* synthetic sample: Peers was nil there (meta built by hand); decode
     * exactly, and our encoding differs only by carrying encodePeers */
    const ws_sample_t *s = sample("InstallSnapshotRequest (followed");
    decode_req(s->bytes, s->len, &rpc);
    q = &rpc.req.install_snapshot;
    ck_assert_uint_eq(q->term, 3);
    ck_assert_uint_eq(q->last_log_index, 100);
    ck_assert_uint_eq(q->last_log_term, 3);
    ck_assert_uint_eq(q->configuration_index, 7);
    ck_assert_int_eq(q->size, 17);
    ck_assert_int_eq(q->snapshot_version, 1);
    str_eq(q->leader, "127.0.0.1:17001");
    ck_assert_uint_eq(q->configuration.n, 3);
    ck_assert_int_eq(q->configuration.servers[2].suffrage, CRAFT_NONVOTER);
    uint8_t want[400];
    const size_t peers_at = 0xde + 6; /* after key a5"Peers" */
    ck_assert_uint_eq(s->bytes[peers_at], 0xc0);
    memcpy(want, s->bytes, peers_at);
    size_t n = peers_at;
    n += tu_hex("da 00 21 92 af\"127.0.0.1:17001\" af\"127.0.0.1:17002\"",
                want + n, sizeof want - n);
    memcpy(want + n, s->bytes + peers_at + 1, s->len - peers_at - 1);
    n += s->len - peers_at - 1;
    expect_req_bytes(F112, CRAFT_RPC_INSTALL_SNAPSHOT, q, want, n);
    check_truncations(1, CRAFT_RPC_INSTALL_SNAPSHOT, s->bytes, s->len);
    craft__wire_request_free(&rpc);

    /* responses: the live one carries ProtocolVersion 0 (1.1.2 quirk) */
    craft__wire_response_t r;
    check_resp_sample(CRAFT_RPC_INSTALL_SNAPSHOT,
                      sample("InstallSnapshot (first captured) -- RESPONSE"), &r);
    ck_assert_int_eq(r.body.install_snapshot.header.protocol_version, 0);
    ck_assert(r.body.install_snapshot.success);
    ck_assert_uint_eq(r.body.install_snapshot.term, 4);
    craft__wire_response_free(&r);
    check_resp_sample(CRAFT_RPC_INSTALL_SNAPSHOT,
                      sample("InstallSnapshotResponse (34 bytes)"), &r);
    ck_assert_int_eq(r.body.install_snapshot.header.protocol_version, 3);
    ck_assert_uint_eq(r.body.install_snapshot.term, 3);
    craft__wire_response_free(&r);
}
END_TEST

START_TEST(test_samples_timeout_now_and_error)
{
    craft_rpc_t rpc;
    check_req_sample(sample("TimeoutNow (first captured) -- REQUEST"), &rpc);
    ck_assert_int_eq(rpc.type, CRAFT_RPC_TIMEOUT_NOW);
    ck_assert_int_eq(rpc.req.timeout_now.header.protocol_version, 3);
    craft__wire_request_free(&rpc);
    check_req_sample(sample("TimeoutNowRequest (19 bytes)"), &rpc);
    craft__wire_request_free(&rpc);

    craft__wire_response_t r;
    check_resp_sample(CRAFT_RPC_TIMEOUT_NOW,
                      sample("TimeoutNow (first captured) -- RESPONSE"), &r);
    ck_assert_int_eq(r.body.timeout_now.header.protocol_version, 0);
    craft__wire_response_free(&r);
    check_resp_sample(CRAFT_RPC_TIMEOUT_NOW, sample("TimeoutNowResponse (19 bytes)"),
                      &r);
    ck_assert_int_eq(r.body.timeout_now.header.protocol_version, 3);
    craft__wire_response_free(&r);

    /* error string with a response object after it */
    check_resp_sample(CRAFT_RPC_APPEND_ENTRIES, sample("error response"), &r);
    str_eq(r.error, "some error text");
    ck_assert(!r.body.append_entries.success);
    ck_assert_uint_eq(r.body.append_entries.term, 2);
    craft__wire_response_free(&r);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* WIRE.md §13                                                               */
/* ------------------------------------------------------------------------ */

static const char *V112_AE =
    "00 87 a7 45 6e 74 72 69 65 73 92 85 a4 44 61 74"
    "61 a5 68 65 6c 6c 6f aa 45 78 74 65 6e 73 69 6f"
    "6e 73 c0 a5 49 6e 64 65 78 65 a4 54 65 72 6d 05"
    "a4 54 79 70 65 00 85 a4 44 61 74 61 c0 aa 45 78"
    "74 65 6e 73 69 6f 6e 73 c0 a5 49 6e 64 65 78 66"
    "a4 54 65 72 6d 05 a4 54 79 70 65 01 a6 4c 65 61"
    "64 65 72 ad 31 30 2e 30 2e 30 2e 31 3a 38 33 30"
    "30 b1 4c 65 61 64 65 72 43 6f 6d 6d 69 74 49 6e"
    "64 65 78 63 ac 50 72 65 76 4c 6f 67 45 6e 74 72"
    "79 64 ab 50 72 65 76 4c 6f 67 54 65 72 6d 04 af"
    "50 72 6f 74 6f 63 6f 6c 56 65 72 73 69 6f 6e 03"
    "a4 54 65 72 6d 05";

static const char *HEAD_AE =
    "00 89 a4 41 64 64 72 ad 31 30 2e 30 2e 30 2e 31"
    "3a 38 33 30 30 a7 45 6e 74 72 69 65 73 92 86 aa"
    "41 70 70 65 6e 64 65 64 41 74 af 01 00 00 00 0e"
    "dd 25 74 25 00 00 00 06 ff ff a4 44 61 74 61 a5"
    "68 65 6c 6c 6f aa 45 78 74 65 6e 73 69 6f 6e 73"
    "c0 a5 49 6e 64 65 78 65 a4 54 65 72 6d 05 a4 54"
    "79 70 65 00 86 aa 41 70 70 65 6e 64 65 64 41 74"
    "af 01 00 00 00 0e dd 25 74 25 00 00 00 06 ff ff"
    "a4 44 61 74 61 c0 aa 45 78 74 65 6e 73 69 6f 6e"
    "73 c0 a5 49 6e 64 65 78 66 a4 54 65 72 6d 05 a4"
    "54 79 70 65 01 a2 49 44 a2 6e 31 a6 4c 65 61 64"
    "65 72 ad 31 30 2e 30 2e 30 2e 31 3a 38 33 30 30"
    "b1 4c 65 61 64 65 72 43 6f 6d 6d 69 74 49 6e 64"
    "65 78 63 ac 50 72 65 76 4c 6f 67 45 6e 74 72 79"
    "64 ab 50 72 65 76 4c 6f 67 54 65 72 6d 04 af 50"
    "72 6f 74 6f 63 6f 6c 56 65 72 73 69 6f 6e 03 a4"
    "54 65 72 6d 05";

/* 2024-01-02T03:04:05.000000006Z */
#define WIRE_MD_TIME (INT64_C(1704164645) * 1000000000 + 6)

static void wire_md_entries(craft_log_t e[2], int64_t at)
{
    memset(e, 0, 2 * sizeof e[0]);
    e[0] = (craft_log_t){101, 5, CRAFT_LOG_COMMAND, "hello", 5, NULL, 0, at};
    e[1] = (craft_log_t){102, 5, CRAFT_LOG_NOOP, NULL, 0, NULL, 0, at};
}

static void check_wire_md_ae(const craft_append_entries_req_t *q, int64_t at,
                             const char *id, const char *addr)
{
    ck_assert_int_eq(q->header.protocol_version, 3);
    str_eq(q->header.id, id);
    str_eq(q->header.addr, addr);
    ck_assert_uint_eq(q->term, 5);
    str_eq(q->leader, "10.0.0.1:8300");
    ck_assert_uint_eq(q->prev_log_entry, 100);
    ck_assert_uint_eq(q->prev_log_term, 4);
    ck_assert_uint_eq(q->leader_commit_index, 99);
    ck_assert_uint_eq(q->n_entries, 2);
    ck_assert_uint_eq(q->entries[0].index, 101);
    ck_assert_uint_eq(q->entries[0].term, 5);
    ck_assert_int_eq(q->entries[0].type, CRAFT_LOG_COMMAND);
    ck_assert_uint_eq(q->entries[0].len, 5);
    ck_assert_mem_eq(q->entries[0].data, "hello", 5);
    ck_assert_ptr_null(q->entries[0].ext);
    ck_assert_int_eq(q->entries[0].appended_at_ns, at);
    ck_assert_uint_eq(q->entries[1].index, 102);
    ck_assert_int_eq(q->entries[1].type, CRAFT_LOG_NOOP);
    ck_assert_ptr_null(q->entries[1].data);
    ck_assert_int_eq(q->entries[1].appended_at_ns, at);
}

START_TEST(test_wire_md_append_entries)
{
    uint8_t v112[512], head[512];
    size_t n112 = tu_hex(V112_AE, v112, sizeof v112);
    size_t nhead = tu_hex(HEAD_AE, head, sizeof head);
    ck_assert_uint_eq(n112, 182);
    ck_assert_uint_eq(nhead, 261);

    craft_log_t e[2];
    wire_md_entries(e, WIRE_MD_TIME);
    craft_append_entries_req_t q = {
        .header = {3, "n1", "10.0.0.1:8300"}, .term = 5,
        .leader = "10.0.0.1:8300", .prev_log_entry = 100, .prev_log_term = 4,
        .entries = e, .n_entries = 2, .leader_commit_index = 99};
    /* the default format is HEAD's bytes; 1.1.2's drops ID/Addr/AppendedAt */
    expect_req_bytes(FDEF, CRAFT_RPC_APPEND_ENTRIES, &q, head, nhead);
    expect_req_bytes(F112, CRAFT_RPC_APPEND_ENTRIES, &q, v112, n112);

    craft_rpc_t rpc;
    decode_req(head, nhead, &rpc);
    check_wire_md_ae(&rpc.req.append_entries, WIRE_MD_TIME, "n1",
                     "10.0.0.1:8300");
    craft__wire_request_free(&rpc);
    decode_req(v112, n112, &rpc);
    check_wire_md_ae(&rpc.req.append_entries, 0, NULL, NULL);
    expect_req_bytes(F112, CRAFT_RPC_APPEND_ENTRIES, &rpc.req, v112, n112);
    craft__wire_request_free(&rpc);
    check_truncations(1, 0, head, nhead);
    check_truncations(1, 0, v112, n112);

    /* MsgpackUseNewTimeFormat: the same field as a8 + 8-byte timestamp */
    uint8_t newt[512];
    const uint8_t oldf[] = {0xaf, 0x01, 0, 0, 0, 0x0e, 0xdd, 0x25, 0x74, 0x25,
                            0, 0, 0, 0x06, 0xff, 0xff};
    const uint8_t newf[] = {0xa8, 0, 0, 0, 0x18, 0x65, 0x93, 0x7d, 0x25};
    size_t nn = 0;
    for (size_t i = 0; i < nhead;) {
        if (i + sizeof oldf <= nhead && memcmp(head + i, oldf, sizeof oldf) == 0) {
            memcpy(newt + nn, newf, sizeof newf);
            nn += sizeof newf;
            i += sizeof oldf;
        } else {
            newt[nn++] = head[i++];
        }
    }
    ck_assert_uint_eq(nn, 247); /* "247-byte message" */
    decode_req(newt, nn, &rpc);
    check_wire_md_ae(&rpc.req.append_entries, WIRE_MD_TIME, "n1",
                     "10.0.0.1:8300");
    craft__wire_request_free(&rpc);
}
END_TEST

START_TEST(test_wire_md_small_frames)
{
    uint8_t b[512];
    size_t n;
    craft_rpc_t rpc;
    craft__wire_response_t r;

    /* v1.1.2 AppendEntriesResponse, 59 bytes */
    n = tu_hex("a0 85 a7\"LastLog\"66 ae\"NoRetryBackoff\"c2 af\"ProtocolVersion\"03"
               " a7\"Success\"c3 a4\"Term\"05",
               b, sizeof b);
    ck_assert_uint_eq(n, 59);
    craft_append_entries_resp_t ar = {{3, NULL, NULL}, 5, 102, true, false};
    expect_resp_bytes(F112, CRAFT_RPC_APPEND_ENTRIES, "", &ar, b, n);
    decode_resp(CRAFT_RPC_APPEND_ENTRIES, b, n, &r);
    ck_assert_uint_eq(r.body.append_entries.last_log, 102);
    ck_assert(r.body.append_entries.success);
    craft__wire_response_free(&r);

    /* HEAD adds Addr/ID (nil here): 69 bytes */
    n = tu_hex("a0 87 a4\"Addr\"c0 a2\"ID\"c0 a7\"LastLog\"66 ae\"NoRetryBackoff\"c2"
               " af\"ProtocolVersion\"03 a7\"Success\"c3 a4\"Term\"05",
               b, sizeof b);
    ck_assert_uint_eq(n, 69);
    expect_resp_bytes(FDEF, CRAFT_RPC_APPEND_ENTRIES, NULL, &ar, b, n);

    /* error response with nil object */
    n = tu_hex("a4 62 6f 6f 6d c0", b, sizeof b);
    expect_resp_bytes(FDEF, CRAFT_RPC_APPEND_ENTRIES, "boom", NULL, b, n);
    decode_resp(CRAFT_RPC_APPEND_ENTRIES, b, n, &r);
    str_eq(r.error, "boom");
    ck_assert(!r.has_body);
    ck_assert_uint_eq(r.body.append_entries.term, 0);
    craft__wire_response_free(&r);
    check_truncations(0, CRAFT_RPC_APPEND_ENTRIES, b, n);

    /* v1.1.2 heartbeat, 101 bytes */
    n = tu_hex("00 87 a7\"Entries\"c0 a6\"Leader\"ad\"10.0.0.1:8300\""
               " b1\"LeaderCommitIndex\"00 ac\"PrevLogEntry\"00 ab\"PrevLogTerm\"00"
               " af\"ProtocolVersion\"03 a4\"Term\"05",
               b, sizeof b);
    ck_assert_uint_eq(n, 101);
    craft_append_entries_req_t hb = {.header = {3, NULL, NULL}, .term = 5,
                                     .leader = "10.0.0.1:8300"};
    expect_req_bytes(F112, CRAFT_RPC_APPEND_ENTRIES, &hb, b, n);
    decode_req(b, n, &rpc);
    ck_assert(craft__wire_is_heartbeat(&rpc.req.append_entries));
    craft__wire_request_free(&rpc);
    /* HEAD's classification: Addr or Leader; an empty non-nil Entries is
     * still len 0; a zero term or any index is not a heartbeat */
    hb.leader = NULL;
    ck_assert(!craft__wire_is_heartbeat(&hb));
    hb.header.addr = "10.0.0.1:8300";
    ck_assert(craft__wire_is_heartbeat(&hb));
    craft_log_t none[1];
    hb.entries = none;
    ck_assert(craft__wire_is_heartbeat(&hb));
    hb.leader_commit_index = 1;
    ck_assert(!craft__wire_is_heartbeat(&hb));
    hb.leader_commit_index = 0;
    hb.term = 0;
    ck_assert(!craft__wire_is_heartbeat(&hb));

    /* TimeoutNowRequest v1.1.2, 19 bytes */
    n = tu_hex("03 81 af\"ProtocolVersion\"03", b, sizeof b);
    ck_assert_uint_eq(n, 19);
    craft_timeout_now_req_t tn = {{3, NULL, NULL}};
    expect_req_bytes(F112, CRAFT_RPC_TIMEOUT_NOW, &tn, b, n);

    /* InstallSnapshotRequest v1.1.2 followed by its 4 data bytes */
    static const char *conf =
        "81 a7\"Servers\" 92 83 a7\"Address\"ad\"10.0.0.1:8300\" a2\"ID\"a2\"n1\" "
        "a8\"Suffrage\"00 83 a7\"Address\"ad\"10.0.0.2:8300\" a2\"ID\"a2\"n2\" "
        "a8\"Suffrage\"01";
    n = tu_hex("02 8a ad\"Configuration\"da 00 58", b, sizeof b);
    n += tu_hex(conf, b + n, sizeof b - n);
    n += tu_hex("b2\"ConfigurationIndex\"cc 96 ac\"LastLogIndex\"cc c8"
                " ab\"LastLogTerm\"05 a6\"Leader\"ad\"10.0.0.1:8300\" a5\"Peers\"c0"
                " af\"ProtocolVersion\"03 a4\"Size\"04 af\"SnapshotVersion\"01"
                " a4\"Term\"05",
                b + n, sizeof b - n);
    size_t frame = n;
    n += tu_hex("53 4e 41 50", b + n, sizeof b - n);
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    size_t used;
    ck_assert_int_eq(craft__wire_decode_request(&d, b, n, &rpc, &used), 0);
    ck_assert_uint_eq(used, frame); /* the snapshot data is not consumed */
    const craft_install_snapshot_req_t *is = &rpc.req.install_snapshot;
    ck_assert_uint_eq(is->configuration_index, 150);
    ck_assert_uint_eq(is->last_log_index, 200);
    ck_assert_int_eq(is->size, 4);
    ck_assert_uint_eq(is->configuration.n, 2);
    ck_assert_int_eq(is->configuration.servers[1].suffrage, CRAFT_NONVOTER);
    ck_assert_mem_eq(b + used, "SNAP", 4);
    craft__wire_request_free(&rpc);
}
END_TEST

START_TEST(test_signed_int_forms)
{
    /* Size=1000: cd 03 e8 (1.1.2) vs d1 03 e8 (HEAD); each decodes */
    craft_install_snapshot_req_t q = {.header = {3, "n1", "a:1"},
                                      .snapshot_version = 1, .term = 2,
                                      .leader = "a:1", .size = 1000};
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    const uint8_t v055[] = {0xa4, 'S', 'i', 'z', 'e', 0xcd, 0x03, 0xe8};
    const uint8_t v2[] = {0xa4, 'S', 'i', 'z', 'e', 0xd1, 0x03, 0xe8};
    for (int f = 0; f < 2; f++) {
        craft__mp_buf_reset(&b);
        ck_assert_int_eq(craft__wire_encode_request(&b, f ? FDEF : F112,
                                                    CRAFT_RPC_INSTALL_SNAPSHOT, &q),
                         0);
        const uint8_t *want = f ? v2 : v055;
        ck_assert_ptr_nonnull(memmem(b.data, b.len, want, sizeof v2));
        craft_rpc_t rpc;
        decode_req(b.data, b.len, &rpc);
        ck_assert_int_eq(rpc.req.install_snapshot.size, 1000);
        ck_assert_uint_eq(rpc.req.install_snapshot.configuration.n, 0);
        craft__wire_request_free(&rpc);
    }
    craft__mp_buf_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* WIRE.md §4/§5: the keys of every message, in wire order, per format      */
/* ------------------------------------------------------------------------ */

/* The keys of the map at r's position, space-separated, into out. */
static void map_keys(craft__mp_reader_t *r, char *out, size_t cap)
{
    uint32_t n;
    size_t at = 0;
    out[0] = '\0';
    ck_assert_int_eq(craft__mp_read_map(r, &n), CRAFT__MP_OK);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k;
        size_t kl;
        ck_assert_int_eq(craft__mp_read_str(r, &k, &kl), CRAFT__MP_OK);
        int w = snprintf(out + at, cap - at, "%s%.*s", i ? " " : "", (int)kl,
                         (const char *)k);
        ck_assert(w > 0 && (size_t)w < cap - at);
        at += (size_t)w;
        ck_assert_int_eq(craft__mp_skip(r), CRAFT__MP_OK);
    }
    craft__mp_leave(r);
}

static void expect_keys(const uint8_t *p, size_t len, const char *want)
{
    char got[512];
    craft__mp_reader_t r;
    craft__mp_reader_init(&r, p, len, 0, 0);
    map_keys(&r, got, sizeof got);
    craft__mp_reader_destroy(&r);
    ck_assert_str_eq(got, want);
}

/* `spec` lists keys with [..] around those the 1.1.2 format leaves out. */
static void format_keys(const char *spec, bool with_new, char *out, size_t cap)
{
    size_t w = 0;
    while (*spec != '\0') {
        size_t len = strcspn(spec, " ");
        bool is_new = spec[0] == '[';
        if (with_new || !is_new) {
            int n = snprintf(out + w, cap - w, "%s%.*s", w ? " " : "",
                             (int)(is_new ? len - 2 : len), spec + is_new);
            ck_assert(n > 0 && (size_t)n < cap - w);
            w += (size_t)n;
        }
        spec += len + (spec[len] == ' ');
    }
    out[w] = '\0';
}

START_TEST(test_message_keys)
{
    /* WIRE.md §4; [..] marks what the 1.1.2 format leaves out */
    static const struct {
        craft_rpc_type_t type;
        bool req;
        const char *keys;
    } msgs[] = {
        {CRAFT_RPC_APPEND_ENTRIES, true,
         "[Addr] Entries [ID] Leader LeaderCommitIndex PrevLogEntry "
         "PrevLogTerm ProtocolVersion Term"},
        {CRAFT_RPC_APPEND_ENTRIES, false,
         "[Addr] [ID] LastLog NoRetryBackoff ProtocolVersion Success Term"},
        {CRAFT_RPC_REQUEST_VOTE, true,
         "[Addr] Candidate [ID] LastLogIndex LastLogTerm LeadershipTransfer "
         "ProtocolVersion Term"},
        {CRAFT_RPC_REQUEST_VOTE, false,
         "[Addr] Granted [ID] Peers ProtocolVersion Term"},
        {CRAFT_RPC_REQUEST_PREVOTE, true,
         "Addr ID LastLogIndex LastLogTerm ProtocolVersion Term"},
        {CRAFT_RPC_REQUEST_PREVOTE, false, "Addr Granted ID ProtocolVersion Term"},
        {CRAFT_RPC_INSTALL_SNAPSHOT, true,
         "[Addr] Configuration ConfigurationIndex [ID] LastLogIndex "
         "LastLogTerm Leader Peers ProtocolVersion Size SnapshotVersion Term"},
        {CRAFT_RPC_INSTALL_SNAPSHOT, false,
         "[Addr] [ID] ProtocolVersion Success Term"},
        {CRAFT_RPC_TIMEOUT_NOW, true, "[Addr] [ID] ProtocolVersion"},
        {CRAFT_RPC_TIMEOUT_NOW, false, "[Addr] [ID] ProtocolVersion"},
    };
    craft_log_t e[1] = {{1, 1, CRAFT_LOG_COMMAND, NULL, 0, NULL, 0, 0}};
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
        craft_rpc_t rpc;
        memset(&rpc, 0, sizeof rpc);
        if (msgs[i].type == CRAFT_RPC_APPEND_ENTRIES) {
            rpc.req.append_entries.entries = e;
            rpc.req.append_entries.n_entries = 1;
        }
        for (int f = 0; f < 2; f++) {
            craft__wire_format_t fmt = f ? F112 : FDEF;
            char want[512];
            format_keys(msgs[i].keys, fmt == FDEF, want, sizeof want);
            craft__mp_buf_t b;
            craft__mp_buf_init(&b);
            int rv = msgs[i].req
                         ? craft__wire_encode_request(&b, fmt, msgs[i].type,
                                                      &rpc.req)
                         : craft__wire_encode_response(&b, fmt, msgs[i].type,
                                                       NULL, &rpc.resp);
            ck_assert_int_eq(rv, 0);
            /* after the type byte, or the "" error string */
            expect_keys(b.data + 1, b.len - 1, want);
            if (msgs[i].type == CRAFT_RPC_APPEND_ENTRIES && msgs[i].req) {
                /* Log (§5): AppendedAt is new in 1.3.0 */
                const uint8_t entries[] = {0xa7, 'E', 'n', 't', 'r',
                                           'i',  'e', 's', 0x91};
                const uint8_t *at = memmem(b.data, b.len, entries, sizeof entries);
                ck_assert_ptr_nonnull(at);
                at += sizeof entries;
                format_keys("[AppendedAt] Data Extensions Index Term Type",
                            fmt == FDEF, want, sizeof want);
                expect_keys(at, b.len - (size_t)(at - b.data), want);
            }
            craft__mp_buf_free(&b);
        }
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* WIRE-SAMPLES decoder tolerance checks, rebuilt in full                    */
/* ------------------------------------------------------------------------ */

static int try_req(const char *spec, craft_rpc_t *rpc, const char **reason)
{
    uint8_t b[2048];
    size_t n = tu_hex(spec, b, sizeof b);
    uint8_t *p = dup_bytes(b, n);
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    size_t used = 0;
    int rv = craft__wire_decode_request(&d, p, n, rpc, &used);
    if (rv == 0) {
        ck_assert_uint_eq(used, n);
    }
    if (reason != NULL) {
        *reason = craft__wire_decoder_reason(&d);
    }
    free(p);
    return rv;
}

static int try_resp(craft_rpc_type_t t, const char *spec,
                    craft__wire_response_t *r)
{
    uint8_t b[2048];
    size_t n = tu_hex(spec, b, sizeof b);
    uint8_t *p = dup_bytes(b, n);
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    size_t used = 0;
    int rv = craft__wire_decode_response(&d, t, p, n, r, &used);
    if (rv == 0) {
        ck_assert_uint_eq(used, n);
    }
    free(p);
    return rv;
}

START_TEST(test_tolerance)
{
    craft_rpc_t rpc;
    craft__wire_response_t r;

    /* keys in declaration order, Leader and Data as bin8, all ints cf,
     * Log without Extensions */
    ck_assert_int_eq(
        try_req("00 87 af\"ProtocolVersion\" cf 00 00 00 00 00 00 00 03"
                " a4\"Term\" cf 00 00 00 00 00 00 00 07"
                " a6\"Leader\" c4 0e\"127.0.0.1:9001\""
                " ac\"PrevLogEntry\" cf 00 00 00 00 00 00 00 0a"
                " ab\"PrevLogTerm\" cf 00 00 00 00 00 00 00 06"
                " a7\"Entries\" 91 84 a5\"Index\" cf 00 00 00 00 00 00 00 0b"
                "   a4\"Term\" cf 00 00 00 00 00 00 00 07 a4\"Type\" cf 00 00 00 00 00 00 00 00"
                "   a4\"Data\" c4 07\"set a 1\""
                " b1\"LeaderCommitIndex\" cf 00 00 00 00 00 00 00 0a",
                &rpc, NULL),
        0);
    const craft_append_entries_req_t *q = &rpc.req.append_entries;
    ck_assert_int_eq(q->header.protocol_version, 3);
    ck_assert_uint_eq(q->term, 7);
    str_eq(q->leader, "127.0.0.1:9001");
    ck_assert_uint_eq(q->prev_log_entry, 10);
    ck_assert_uint_eq(q->prev_log_term, 6);
    ck_assert_uint_eq(q->leader_commit_index, 10);
    ck_assert_uint_eq(q->n_entries, 1);
    ck_assert_uint_eq(q->entries[0].index, 11);
    ck_assert_mem_eq(q->entries[0].data, "set a 1", 7);
    ck_assert_ptr_null(q->entries[0].ext);
    craft__wire_request_free(&rpc);

    /* Leader as str8, missing keys */
    ck_assert_int_eq(try_req("00 83 a4\"Term\"05 a6\"Leader\" d9 0e\"127.0.0.1:9001\""
                             " a7\"Entries\" c0",
                             &rpc, NULL),
                     0);
    ck_assert_int_eq(rpc.req.append_entries.header.protocol_version, 0);
    ck_assert_uint_eq(rpc.req.append_entries.term, 5);
    str_eq(rpc.req.append_entries.leader, "127.0.0.1:9001");
    ck_assert_ptr_null(rpc.req.append_entries.entries);
    craft__wire_request_free(&rpc);

    /* ID/Addr as bin8 and AppendedAt as a timestamp ext (fixext8, -1) */
    ck_assert_int_eq(
        try_req("00 85 af\"ProtocolVersion\"03 a2\"ID\" c4 02\"n1\""
                " a4\"Addr\" c4 0e\"127.0.0.1:9001\" a4\"Term\"02"
                " a7\"Entries\" 91 84 a5\"Index\"01 a4\"Term\"02 a4\"Type\"01"
                "   aa\"AppendedAt\" d7 ff 00 00 00 18 65 93 7d 25",
                &rpc, NULL),
        0);
    q = &rpc.req.append_entries;
    str_eq(q->header.id, "n1");
    str_eq(q->header.addr, "127.0.0.1:9001");
    ck_assert_ptr_null(q->leader);
    ck_assert_int_eq(q->entries[0].type, CRAFT_LOG_NOOP);
    ck_assert_int_eq(q->entries[0].appended_at_ns, WIRE_MD_TIME);
    craft__wire_request_free(&rpc);

    /* 300-byte Data as bin16 */
    char spec[1024];
    int off = snprintf(spec, sizeof spec,
                       "00 82 a4\"Term\"01 a7\"Entries\" 91 82 a5\"Index\"01"
                       " a4\"Data\" c5 01 2c \"");
    memset(spec + off, 'x', 300);
    strcpy(spec + off + 300, "\"");
    ck_assert_int_eq(try_req(spec, &rpc, NULL), 0);
    ck_assert_uint_eq(rpc.req.append_entries.entries[0].len, 300);
    craft__wire_request_free(&rpc);

    /* error string as str8 and (unlike Go, which refuses it) as bin8 */
    ck_assert_int_eq(try_resp(CRAFT_RPC_APPEND_ENTRIES, "d9 04\"oops\" c0", &r), 0);
    str_eq(r.error, "oops");
    craft__wire_response_free(&r);
    ck_assert_int_eq(try_resp(CRAFT_RPC_APPEND_ENTRIES, "c4 04\"oops\" c0", &r), 0);
    str_eq(r.error, "oops");
    craft__wire_response_free(&r);

    /* Granted as integer 1 */
    ck_assert_int_eq(try_resp(CRAFT_RPC_REQUEST_VOTE,
                              "a0 82 a4\"Term\"03 a7\"Granted\"01", &r),
                     0);
    ck_assert(r.body.request_vote.granted);
    ck_assert_uint_eq(r.body.request_vote.term, 3);
    craft__wire_response_free(&r);

    /* a struct as an array is refused (as Go does) */
    ck_assert_int_eq(try_resp(CRAFT_RPC_REQUEST_VOTE,
                              "a0 94 81 af\"ProtocolVersion\"03 03 c0 c3", &r),
                     CRAFT_EPROTOCOL);
}
END_TEST

START_TEST(test_lenient_misc)
{
    craft_rpc_t rpc;
    craft__wire_response_t r;
    /* unknown keys with nested values, duplicate keys (last wins), nil
     * fields, nil error string, str8 keys */
    ck_assert_int_eq(
        try_req("01 88 a5\"Extra\" 82 a1\"a\" 93 01 c0 ca 00 00 00 00 a1\"b\" 80"
                " a9\"Candidate\" a1\"x\" a9\"Candidate\" a1\"y\""
                " d9 04\"Term\" 09 ac\"LastLogIndex\" c0"
                " b2\"LeadershipTransfer\" c3 a2\"ID\" c0 a4\"Addr\" a0",
                &rpc, NULL),
        0);
    const craft_request_vote_req_t *v = &rpc.req.request_vote;
    str_eq(v->candidate, "y");
    ck_assert_uint_eq(v->term, 9);
    ck_assert_uint_eq(v->last_log_index, 0);
    ck_assert(v->leadership_transfer);
    ck_assert_ptr_null(v->header.id);
    str_eq(v->header.addr, "");
    craft__wire_request_free(&rpc);

    /* a nil request object is the zero struct (go-msgpack) */
    ck_assert_int_eq(try_req("03 c0", &rpc, NULL), 0);
    ck_assert_int_eq(rpc.req.timeout_now.header.protocol_version, 0);
    craft__wire_request_free(&rpc);

    /* nil error string and RequestPreVote */
    ck_assert_int_eq(try_resp(CRAFT_RPC_REQUEST_PREVOTE,
                              "c0 85 a4\"Addr\"a2\"n2\" a7\"Granted\"c3 a2\"ID\"a2\"n2\""
                              " af\"ProtocolVersion\"03 a4\"Term\"07",
                              &r),
                     0);
    ck_assert_ptr_null(r.error);
    ck_assert(r.body.request_prevote.granted);
    ck_assert_uint_eq(r.body.request_prevote.term, 7);
    str_eq(r.body.request_prevote.header.id, "n2");
    craft__wire_response_free(&r);

    /* AppendedAt forms: v2 MarshalBinary, 4 and 12-byte timestamps, ext8,
     * nil, Go zero time */
    static const struct {
        const char *v;
        int64_t want;
    } times[] = {
        {"b0 02 00 00 00 0e dd 25 74 25 00 00 00 06 00 3c 00", WIRE_MD_TIME},
        {"a4 65 93 7d 25", INT64_C(1704164645) * 1000000000},
        {"ac 00 00 00 06 00 00 00 00 65 93 7d 25", WIRE_MD_TIME},
        {"c7 0c ff 00 00 00 06 00 00 00 00 65 93 7d 25", WIRE_MD_TIME},
        {"d6 ff 65 93 7d 25", INT64_C(1704164645) * 1000000000},
        {"c0", 0},
        {"af 01 00 00 00 00 00 00 00 00 00 00 00 00 ff ff", 0},
        /* year 1 + 1 s: far outside int64 ns -> unknown */
        {"af 01 00 00 00 00 00 00 00 01 00 00 00 00 ff ff", 0},
        /* before 1970 */
        {"af 01 00 00 00 0e 77 91 f6 ff 3b 9a c9 ff ff ff", -1},
    };
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        char spec[512];
        snprintf(spec, sizeof spec,
                 "00 81 a7\"Entries\" 91 81 aa\"AppendedAt\" %s", times[i].v);
        ck_assert_msg(try_req(spec, &rpc, NULL) == 0, "time %zu", i);
        ck_assert_int_eq(rpc.req.append_entries.entries[0].appended_at_ns,
                         times[i].want);
        craft__wire_request_free(&rpc);
    }
}
END_TEST

START_TEST(test_time_round_trip)
{
    const int64_t vals[] = {1, -1, WIRE_MD_TIME, INT64_C(1) << 62,
                            -(INT64_C(1) << 62), 999999999, -1000000000};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        craft__mp_buf_t b;
        craft__mp_buf_init(&b);
        craft__wire_put_time(&b, vals[i]);
        ck_assert_uint_eq(b.len, 16);
        ck_assert_uint_eq(b.data[0], 0xaf);
        craft__mp_reader_t r;
        craft__mp_reader_init(&r, b.data, b.len, 0, 0);
        int64_t got = 0;
        ck_assert_int_eq(craft__wire_read_time(&r, &got), CRAFT__MP_OK);
        ck_assert_int_eq(got, vals[i]);
        craft__mp_buf_free(&b);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* malformed input                                                           */
/* ------------------------------------------------------------------------ */

START_TEST(test_malformed)
{
    static const char *bad[] = {
        /* unknown rpc types */
        "05", "ff 80",
        /* wrong top-level types */
        "00 90", "00 01", "00 a1\"x\"", "01 c3",
        /* wrong field types */
        "00 81 a4\"Term\" a1\"5\"",
        "00 81 a4\"Term\" ff",
        "00 81 a4\"Term\" ca 00 00 00 00",
        "00 81 a7\"Entries\" 81 a1\"x\" 00",
        "00 81 a7\"Entries\" a0",
        "00 81 a7\"Entries\" 91 90",
        "00 81 a7\"Entries\" 91 c0",
        "00 81 a7\"Entries\" 91 81 a4\"Data\" 05",
        "00 81 a7\"Entries\" 91 81 a4\"Type\" cd 01 00",
        "00 81 a6\"Leader\" 91 00",
        "00 81 a6\"Leader\" a3 61 00 62",
        "00 81 af\"ProtocolVersion\" a1\"3\"",
        "00 81 af\"ProtocolVersion\" cf 00 00 00 01 00 00 00 00",
        "00 81 01 02",
        "00 81 c0 02",
        "01 81 b2\"LeadershipTransfer\" 02",
        "01 81 b2\"LeadershipTransfer\" a0",
        "02 81 a4\"Size\" ff",
        "02 81 a4\"Size\" cf 80 00 00 00 00 00 00 00",
        "02 81 af\"SnapshotVersion\" d3 80 00 00 00 00 00 00 00",
        "02 81 ad\"Configuration\" a3 01 02 03",
        "02 81 ad\"Configuration\" a1 80",
        "02 81 ad\"Configuration\" 05",
        /* AppendedAt */
        "00 81 a7\"Entries\" 91 81 aa\"AppendedAt\" a5 01 02 03 04 05",
        "00 81 a7\"Entries\" 91 81 aa\"AppendedAt\" af 03 00 00 00 00 00 00 00 00 00 00 00 00 ff ff",
        "00 81 a7\"Entries\" 91 81 aa\"AppendedAt\" af 01 00 00 00 00 00 00 00 01 3b 9a ca 00 ff ff",
        "00 81 a7\"Entries\" 91 81 aa\"AppendedAt\" d6 01 00 00 00 00",
        "00 81 a7\"Entries\" 91 81 aa\"AppendedAt\" 05",
        "00 81 a7\"Entries\" 91 81 aa\"AppendedAt\" d7 ff ff ff ff ff 00 00 00 00",
        /* reserved byte */
        "00 81 a4\"Term\" c1",
        "00 c1",
        /* declared string far over the blob limit: refused at once */
        "00 81 a6\"Leader\" db ff ff ff ff",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        craft_rpc_t rpc;
        memset(&rpc, 0x5a, sizeof rpc);
        const char *reason = NULL;
        int rv = try_req(bad[i], &rpc, &reason);
        ck_assert_msg(rv == CRAFT_EPROTOCOL, "case %zu (%s): %d", i, bad[i], rv);
        ck_assert_ptr_nonnull(reason);
    }
    craft__wire_response_t r;
    static const char *bad_resp[] = {
        "05 c0", "a0 05", "a0 90", "a2 61 00 c0", "c3 c0",
        "a0 81 a7\"Success\" 05", "a0 81 a4\"Term\" ff",
        "a0 81 a7\"LastLog\" a1\"1\"",
    };
    for (size_t i = 0; i < sizeof bad_resp / sizeof bad_resp[0]; i++) {
        int rv = try_resp(CRAFT_RPC_APPEND_ENTRIES, bad_resp[i], &r);
        ck_assert_msg(rv == CRAFT_EPROTOCOL, "resp case %zu: %d", i, rv);
    }
    /* unknown rpc type for a response, and an unknown type byte is
     * reported from the very first byte */
    ck_assert_int_eq(try_resp((craft_rpc_type_t)9, "a0 c0", &r), CRAFT_EPROTOCOL);
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    craft_rpc_t rpc;
    size_t used;
    const uint8_t t5 = 5;
    ck_assert_int_eq(craft__wire_decode_request(&d, &t5, 1, &rpc, &used),
                     CRAFT_EPROTOCOL);
    ck_assert_str_eq(craft__wire_decoder_reason(&d), "unknown rpc type");
}
END_TEST

static int decode_with(const craft__wire_limits_t *lim, const uint8_t *p,
                       size_t n, craft_rpc_t *rpc)
{
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, lim);
    size_t used;
    int rv = craft__wire_decode_request(&d, p, n, rpc, &used);
    if (rv == 0) {
        craft__wire_request_free(rpc);
    }
    return rv;
}

START_TEST(test_limits)
{
    craft__wire_limits_t lim;
    craft__wire_limits_default(&lim);
    ck_assert_uint_eq(lim.max_entries, 1024);
    uint8_t b[4096];
    craft_rpc_t rpc;

    /* entries */
    size_t n = tu_hex("00 81 a7\"Entries\" 93 80 80 80", b, sizeof b);
    lim.max_entries = 3;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), 0);
    lim.max_entries = 2;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT_EPROTOCOL);
    /* zero limits mean the defaults, max_entries included */
    craft__wire_limits_t zero;
    memset(&zero, 0, sizeof zero);
    ck_assert_int_eq(decode_with(&zero, b, n, &rpc), 0);
    craft__wire_limits_default(&lim);

    /* blob length */
    n = tu_hex("00 81 a6\"Leader\" aa\"abcdefghij\"", b, sizeof b);
    lim.max_blob_bytes = 10;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), 0);
    lim.max_blob_bytes = 9;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT_EPROTOCOL);
    /* ... also for the response error string */
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, &lim);
    craft__wire_response_t r;
    size_t used;
    n = tu_hex("aa\"abcdefghij\" c0", b, sizeof b);
    ck_assert_int_eq(craft__wire_decode_response(&d, 0, b, n, &r, &used),
                     CRAFT_EPROTOCOL);
    craft__wire_limits_default(&lim);

    /* frame size: 19-byte TimeoutNow frame */
    n = tu_hex("03 81 af\"ProtocolVersion\"03", b, sizeof b);
    lim.max_frame_bytes = 19;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), 0);
    lim.max_frame_bytes = 18;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT_EPROTOCOL);
    /* an oversized frame is refused before it has fully arrived */
    n = tu_hex("00 81 a6\"Leader\" da 01 00", b, sizeof b);
    lim.max_frame_bytes = 200;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT_EPROTOCOL);
    craft__wire_limits_default(&lim);
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT__WIRE_NEED_MORE);

    /* huge declared lengths within the limits: only waited for */
    n = tu_hex("00 81 a7\"Entries\" dd ff ff ff ff 80 80", b, sizeof b);
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT__WIRE_NEED_MORE);
    n = tu_hex("00 81 a7\"Entries\" 91 81 a4\"Data\" db 02 00 00 01", b, sizeof b);
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT_EPROTOCOL); /* > 32 MiB */
    lim.max_blob_bytes = SIZE_MAX;
    lim.max_frame_bytes = SIZE_MAX;
    ck_assert_int_eq(decode_with(&lim, b, n, &rpc), CRAFT__WIRE_NEED_MORE);
    craft__wire_limits_default(&lim);

    /* nesting inside an unknown key: the request map is level 1 */
    n = tu_hex("03 81 a1\"x\"", b, sizeof b);
    memset(b + n, 0x91, 15);
    b[n + 15] = 0x00;
    ck_assert_int_eq(decode_with(&lim, b, n + 16, &rpc), 0);
    memset(b + n, 0x91, 16);
    b[n + 16] = 0x00;
    ck_assert_int_eq(decode_with(&lim, b, n + 17, &rpc), CRAFT_EPROTOCOL);
    /* thousands of levels */
    memset(b + n, 0x91, sizeof b - n);
    ck_assert_int_eq(decode_with(&lim, b, sizeof b, &rpc), CRAFT_EPROTOCOL);
}
END_TEST

START_TEST(test_encode_errors)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    craft__mp_put_nil(&b); /* something already in the buffer */
    craft_log_t e = {1, 1, CRAFT_LOG_COMMAND, NULL, 3, NULL, 0, 0};
    craft_append_entries_req_t q = {.term = 1, .entries = &e, .n_entries = 1};
    ck_assert_int_eq(craft__wire_encode_request(&b, FDEF, CRAFT_RPC_APPEND_ENTRIES, &q),
                     CRAFT_EINVAL);
    ck_assert_uint_eq(b.len, 1); /* rolled back */
    q.entries = NULL;
    ck_assert_int_eq(craft__wire_encode_request(&b, FDEF, CRAFT_RPC_APPEND_ENTRIES, &q),
                     CRAFT_EINVAL);
    ck_assert_int_eq(craft__wire_encode_request(&b, FDEF, (craft_rpc_type_t)7, &q),
                     CRAFT_EINVAL);
    ck_assert_int_eq(craft__wire_encode_response(&b, FDEF, (craft_rpc_type_t)7, NULL, &q),
                     CRAFT_EINVAL);
    craft_install_snapshot_req_t is = {.size = -1};
    ck_assert_int_eq(craft__wire_encode_request(&b, FDEF, CRAFT_RPC_INSTALL_SNAPSHOT, &is),
                     CRAFT_EINVAL);
    ck_assert_uint_eq(b.len, 1);
    ck_assert_int_eq(b.err, 0);
    craft__mp_buf_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* randomised round trips                                                    */
/* ------------------------------------------------------------------------ */

typedef struct rnd {
    unsigned seed;
    void *allocs[4096];
    size_t n_allocs;
} rnd_t;

static void *rnd_keep(rnd_t *g, void *p)
{
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_lt(g->n_allocs, 4096);
    g->allocs[g->n_allocs++] = p;
    return p;
}

static void rnd_free(rnd_t *g)
{
    for (size_t i = 0; i < g->n_allocs; i++) {
        free(g->allocs[i]);
    }
    g->n_allocs = 0;
}

static uint32_t rnd_u32(rnd_t *g)
{
    return ((uint32_t)rand_r(&g->seed) << 16) ^ (uint32_t)rand_r(&g->seed);
}

static uint64_t rnd_u64(rnd_t *g)
{
    /* mostly boundary-ish values of every width */
    static const uint64_t edges[] = {0, 1, 127, 128, 255, 256, 65535, 65536,
                                     UINT32_MAX, (uint64_t)UINT32_MAX + 1,
                                     UINT64_MAX};
    uint32_t k = rnd_u32(g) % 4;
    if (k == 0) {
        return edges[rnd_u32(g) % (sizeof edges / sizeof edges[0])];
    }
    if (k == 1) {
        return rnd_u32(g) % 200;
    }
    return ((uint64_t)rnd_u32(g) << 32 | rnd_u32(g)) >> (rnd_u32(g) % 64);
}

static bool rnd_bool(rnd_t *g)
{
    return rnd_u32(g) & 1;
}

static const char *rnd_str(rnd_t *g, bool nullable)
{
    if (nullable && rnd_u32(g) % 5 == 0) {
        return NULL;
    }
    size_t len = rnd_u32(g) % 8 == 0 ? rnd_u32(g) % 400 : rnd_u32(g) % 40;
    char *s = rnd_keep(g, malloc(len + 1));
    for (size_t i = 0; i < len; i++) {
        s[i] = (char)(1 + rnd_u32(g) % 255);
    }
    s[len] = '\0';
    return s;
}

static void rnd_blob(rnd_t *g, const void **p, size_t *len)
{
    uint32_t k = rnd_u32(g) % 6;
    if (k == 0) {
        *p = NULL;
        *len = 0;
        return;
    }
    *len = k == 1 ? 0 : (k == 2 ? 70000 : rnd_u32(g) % 300);
    uint8_t *b = rnd_keep(g, malloc(*len + 1));
    for (size_t i = 0; i < *len; i++) {
        b[i] = (uint8_t)rnd_u32(g);
    }
    *p = b;
}

static void rnd_header(rnd_t *g, craft_rpc_header_t *h)
{
    h->protocol_version = (int)(rnd_u32(g) % 4);
    if (rnd_u32(g) % 8 == 0) {
        h->protocol_version = rnd_bool(g) ? INT32_MAX : -(int)(rnd_u32(g) % 70000);
    }
    h->id = rnd_str(g, true);
    h->addr = rnd_str(g, true);
}

static void rnd_configuration(rnd_t *g, craft_configuration_t *c)
{
    c->n = rnd_u32(g) % 6;
    c->servers = c->n ? rnd_keep(g, calloc(c->n, sizeof *c->servers)) : NULL;
    for (size_t i = 0; i < c->n; i++) {
        c->servers[i].id = (char *)rnd_str(g, false);
        c->servers[i].address = (char *)rnd_str(g, false);
        c->servers[i].suffrage = rnd_bool(g) ? CRAFT_VOTER : CRAFT_NONVOTER;
    }
}

static void hdr_eq(const craft_rpc_header_t *got, const craft_rpc_header_t *want,
                   craft__wire_format_t fmt, bool always_ids)
{
    ck_assert_int_eq(got->protocol_version, want->protocol_version);
    if (fmt == FDEF || always_ids) {
        str_eq(got->id, want->id);
        str_eq(got->addr, want->addr);
    } else {
        ck_assert_ptr_null(got->id);
        ck_assert_ptr_null(got->addr);
    }
}

static void blob_eq(const void *got, size_t got_len, const void *want,
                    size_t want_len)
{
    ck_assert_uint_eq(got_len, want_len);
    if (want == NULL) {
        ck_assert_ptr_null(got);
    } else {
        ck_assert_ptr_nonnull(got);
        if (want_len > 0) {
            ck_assert_mem_eq(got, want, want_len);
        }
    }
}

/* Fills rpc->req with a random request of rpc->type. */
static void rnd_request(rnd_t *g, craft_rpc_t *rpc)
{
    memset(&rpc->req, 0, sizeof rpc->req);
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        craft_append_entries_req_t *q = &rpc->req.append_entries;
        rnd_header(g, &q->header);
        q->term = rnd_u64(g);
        q->leader = rnd_str(g, true);
        q->prev_log_entry = rnd_u64(g);
        q->prev_log_term = rnd_u64(g);
        q->leader_commit_index = rnd_u64(g);
        uint32_t k = rnd_u32(g) % 4;
        if (k > 0) {
            q->n_entries = k == 1 ? 0 : rnd_u32(g) % 20;
            craft_log_t *e = rnd_keep(g, calloc(q->n_entries + 1, sizeof *e));
            for (size_t i = 0; i < q->n_entries; i++) {
                e[i].index = rnd_u64(g);
                e[i].term = rnd_u64(g);
                e[i].type = (craft_log_type_t)(rnd_u32(g) % 6);
                rnd_blob(g, &e[i].data, &e[i].len);
                rnd_blob(g, &e[i].ext, &e[i].ext_len);
                e[i].appended_at_ns = rnd_bool(g) ? 0 : (int64_t)rnd_u64(g);
            }
            q->entries = e;
        }
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE: {
        craft_request_vote_req_t *q = &rpc->req.request_vote;
        rnd_header(g, &q->header);
        q->term = rnd_u64(g);
        q->candidate = rnd_str(g, true);
        q->last_log_index = rnd_u64(g);
        q->last_log_term = rnd_u64(g);
        q->leadership_transfer = rnd_bool(g);
        break;
    }
    case CRAFT_RPC_INSTALL_SNAPSHOT: {
        craft_install_snapshot_req_t *q = &rpc->req.install_snapshot;
        rnd_header(g, &q->header);
        q->snapshot_version = (int)(rnd_u32(g) % 3);
        q->term = rnd_u64(g);
        q->leader = rnd_str(g, true);
        q->last_log_index = rnd_u64(g);
        q->last_log_term = rnd_u64(g);
        rnd_configuration(g, &q->configuration);
        q->configuration_index = rnd_u64(g);
        q->size = (int64_t)(rnd_u64(g) >> 1);
        break;
    }
    case CRAFT_RPC_TIMEOUT_NOW:
        rnd_header(g, &rpc->req.timeout_now.header);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE: {
        craft_request_prevote_req_t *q = &rpc->req.request_prevote;
        rnd_header(g, &q->header);
        q->term = rnd_u64(g);
        q->last_log_index = rnd_u64(g);
        q->last_log_term = rnd_u64(g);
        break;
    }
    }
}

static void request_eq(const craft_rpc_t *got, const craft_rpc_t *want,
                       craft__wire_format_t fmt)
{
    ck_assert_int_eq(got->type, want->type);
    switch (want->type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        const craft_append_entries_req_t *a = &got->req.append_entries;
        const craft_append_entries_req_t *b = &want->req.append_entries;
        hdr_eq(&a->header, &b->header, fmt, false);
        ck_assert_uint_eq(a->term, b->term);
        str_eq(a->leader, b->leader);
        ck_assert_uint_eq(a->prev_log_entry, b->prev_log_entry);
        ck_assert_uint_eq(a->prev_log_term, b->prev_log_term);
        ck_assert_uint_eq(a->leader_commit_index, b->leader_commit_index);
        ck_assert_uint_eq(a->n_entries, b->n_entries);
        ck_assert((a->entries == NULL) == (b->entries == NULL));
        for (size_t i = 0; i < b->n_entries; i++) {
            const craft_log_t *x = &a->entries[i], *y = &b->entries[i];
            ck_assert_uint_eq(x->index, y->index);
            ck_assert_uint_eq(x->term, y->term);
            ck_assert_int_eq(x->type, y->type);
            blob_eq(x->data, x->len, y->data, y->len);
            blob_eq(x->ext, x->ext_len, y->ext, y->ext_len);
            ck_assert_int_eq(x->appended_at_ns,
                             fmt == FDEF ? y->appended_at_ns : 0);
        }
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE: {
        const craft_request_vote_req_t *a = &got->req.request_vote;
        const craft_request_vote_req_t *b = &want->req.request_vote;
        hdr_eq(&a->header, &b->header, fmt, false);
        ck_assert_uint_eq(a->term, b->term);
        str_eq(a->candidate, b->candidate);
        ck_assert_uint_eq(a->last_log_index, b->last_log_index);
        ck_assert_uint_eq(a->last_log_term, b->last_log_term);
        ck_assert(a->leadership_transfer == b->leadership_transfer);
        break;
    }
    case CRAFT_RPC_INSTALL_SNAPSHOT: {
        const craft_install_snapshot_req_t *a = &got->req.install_snapshot;
        const craft_install_snapshot_req_t *b = &want->req.install_snapshot;
        hdr_eq(&a->header, &b->header, fmt, false);
        ck_assert_int_eq(a->snapshot_version, b->snapshot_version);
        ck_assert_uint_eq(a->term, b->term);
        str_eq(a->leader, b->leader);
        ck_assert_uint_eq(a->last_log_index, b->last_log_index);
        ck_assert_uint_eq(a->last_log_term, b->last_log_term);
        ck_assert_uint_eq(a->configuration_index, b->configuration_index);
        ck_assert_int_eq(a->size, b->size);
        ck_assert_uint_eq(a->configuration.n, b->configuration.n);
        for (size_t i = 0; i < b->configuration.n; i++) {
            str_eq(a->configuration.servers[i].id, b->configuration.servers[i].id);
            str_eq(a->configuration.servers[i].address,
                   b->configuration.servers[i].address);
            ck_assert_int_eq(a->configuration.servers[i].suffrage,
                             b->configuration.servers[i].suffrage);
        }
        break;
    }
    case CRAFT_RPC_TIMEOUT_NOW:
        hdr_eq(&got->req.timeout_now.header, &want->req.timeout_now.header, fmt,
               false);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE: {
        const craft_request_prevote_req_t *a = &got->req.request_prevote;
        const craft_request_prevote_req_t *b = &want->req.request_prevote;
        hdr_eq(&a->header, &b->header, fmt, true);
        ck_assert_uint_eq(a->term, b->term);
        ck_assert_uint_eq(a->last_log_index, b->last_log_index);
        ck_assert_uint_eq(a->last_log_term, b->last_log_term);
        break;
    }
    }
}

static uint64_t be_at(const uint8_t *p, size_t len, size_t pos, int width)
{
    ck_assert_uint_le(pos + (size_t)width, len);
    uint64_t v = 0;
    for (int i = 0; i < width; i++) {
        v = (v << 8) | p[pos + (size_t)i];
    }
    return v;
}

/* Walks the bytes of one msgpack value at p[*pos] and checks the form
 * hashicorp's encoder uses: map keys fixstr and strictly ascending
 * byte-wise, strings only fixstr/raw16/raw32 (never str8 or bin), no ext.
 * (Byte-level on purpose: the reader decodes through msgpack-c, whose
 * objects do not keep the form a value was written in.) */
static void check_form_at(const uint8_t *p, size_t len, size_t *pos)
{
    ck_assert_uint_lt(*pos, len);
    uint8_t m = p[(*pos)++];
    if (m <= 0x7f || m >= 0xe0 || m == 0xc0 || m == 0xc2 || m == 0xc3) {
        return;
    }
    if ((m & 0xf0) == 0x80 || m == 0xde || m == 0xdf) {
        uint64_t n = m == 0xde ? be_at(p, len, *pos, 2)
                     : m == 0xdf ? be_at(p, len, *pos, 4)
                                 : (uint64_t)(m & 0x0f);
        *pos += m == 0xde ? 2 : m == 0xdf ? 4 : 0;
        const uint8_t *prev = NULL;
        size_t prev_len = 0;
        for (uint64_t i = 0; i < n; i++) {
            ck_assert_uint_lt(*pos, len);
            ck_assert_msg((p[*pos] & 0xe0) == 0xa0, "map key marker 0x%02x", p[*pos]);
            size_t kl = p[*pos] & 0x1f;
            const uint8_t *k = p + *pos + 1;
            *pos += 1 + kl;
            ck_assert_uint_le(*pos, len);
            if (prev != NULL) {
                size_t mn = kl < prev_len ? kl : prev_len;
                int c = memcmp(prev, k, mn);
                ck_assert_msg(c < 0 || (c == 0 && prev_len < kl),
                              "keys out of order: %.*s then %.*s", (int)prev_len,
                              prev, (int)kl, k);
            }
            prev = k;
            prev_len = kl;
            check_form_at(p, len, pos);
        }
        return;
    }
    if ((m & 0xf0) == 0x90 || m == 0xdc || m == 0xdd) {
        uint64_t n = m == 0xdc ? be_at(p, len, *pos, 2)
                     : m == 0xdd ? be_at(p, len, *pos, 4)
                                 : (uint64_t)(m & 0x0f);
        *pos += m == 0xdc ? 2 : m == 0xdd ? 4 : 0;
        for (uint64_t i = 0; i < n; i++) {
            check_form_at(p, len, pos);
        }
        return;
    }
    if ((m & 0xe0) == 0xa0) {
        *pos += m & 0x1f;
    } else if (m == 0xda || m == 0xdb) {
        int w = m == 0xda ? 2 : 4;
        *pos += (size_t)w + (size_t)be_at(p, len, *pos, w);
    } else if (m >= 0xcc && m <= 0xcf) {
        *pos += (size_t)1 << (m - 0xcc);
    } else if (m >= 0xd0 && m <= 0xd3) {
        *pos += (size_t)1 << (m - 0xd0);
    } else if (m == 0xca || m == 0xcb) {
        *pos += m == 0xca ? 4 : 8;
    } else {
        ck_abort_msg("marker 0x%02x not in go-msgpack 0.5.5's form", m);
    }
    ck_assert_uint_le(*pos, len);
}

static void check_frame_form(const uint8_t *p, size_t len, size_t skip,
                             int values)
{
    size_t pos = skip;
    for (int i = 0; i < values; i++) {
        check_form_at(p, len, &pos);
    }
    ck_assert_uint_eq(pos, len);
}

START_TEST(test_random_requests)
{
    rnd_t g = {.seed = 20240102};
    for (int iter = 0; iter < 400; iter++) {
        craft__wire_format_t fmt = iter % 2 ? F112 : FDEF;
        /* a stream of several frames in one buffer, as a pipeline sends */
        craft_rpc_t want[4];
        craft__mp_buf_t b;
        craft__mp_buf_init(&b);
        size_t ends[4];
        for (int k = 0; k < 4; k++) {
            want[k].type = (craft_rpc_type_t)(rnd_u32(&g) % 5);
            rnd_request(&g, &want[k]);
            ck_assert_int_eq(craft__wire_encode_request(&b, fmt, want[k].type,
                                                        &want[k].req),
                             0);
            ends[k] = b.len;
        }
        craft__wire_decoder_t d;
        craft__wire_decoder_init(&d, NULL);
        size_t off = 0;
        for (int k = 0; k < 4; k++) {
            craft_rpc_t got;
            size_t used;
            /* feed the bytes in random chunks; the decoder may only
             * succeed once the whole frame is there */
            size_t avail = off;
            int rv;
            do {
                avail += 1 + rnd_u32(&g) % 97;
                if (avail > b.len) {
                    avail = b.len;
                }
                rv = craft__wire_decode_request(&d, b.data + off, avail - off,
                                                &got, &used);
                if (rv == CRAFT__WIRE_NEED_MORE) {
                    ck_assert_uint_lt(avail, ends[k]);
                    ck_assert_uint_le(off + craft__wire_decoder_need(&d), ends[k]);
                }
            } while (rv == CRAFT__WIRE_NEED_MORE);
            ck_assert_msg(rv == 0, "iter %d frame %d: %d %s", iter, k, rv,
                          craft__wire_decoder_reason(&d));
            ck_assert_uint_eq(off + used, ends[k]);
            request_eq(&got, &want[k], fmt);
            check_frame_form(b.data + off, used, 1, 1);
            /* re-encoding what was decoded gives the same bytes */
            craft__mp_buf_t b2;
            craft__mp_buf_init(&b2);
            ck_assert_int_eq(
                craft__wire_encode_request(&b2, fmt, got.type, &got.req), 0);
            ck_assert_uint_eq(b2.len, used);
            ck_assert_mem_eq(b2.data, b.data + off, used);
            craft__mp_buf_free(&b2);
            craft__wire_request_free(&got);
            off += used;
        }
        craft__mp_buf_free(&b);
        rnd_free(&g);
    }
}
END_TEST

START_TEST(test_random_responses)
{
    rnd_t g = {.seed = 77};
    for (int iter = 0; iter < 400; iter++) {
        craft__wire_format_t fmt = iter % 2 ? F112 : FDEF;
        craft_rpc_type_t type = (craft_rpc_type_t)(rnd_u32(&g) % 5);
        craft_rpc_t w;
        memset(&w, 0, sizeof w);
        const char *err = rnd_u32(&g) % 4 == 0 ? rnd_str(&g, false) : NULL;
        bool body = rnd_u32(&g) % 5 != 0;
        switch (type) {
        case CRAFT_RPC_APPEND_ENTRIES:
            rnd_header(&g, &w.resp.append_entries.header);
            w.resp.append_entries.term = rnd_u64(&g);
            w.resp.append_entries.last_log = rnd_u64(&g);
            w.resp.append_entries.success = rnd_bool(&g);
            w.resp.append_entries.no_retry_backoff = rnd_bool(&g);
            break;
        case CRAFT_RPC_REQUEST_VOTE:
            rnd_header(&g, &w.resp.request_vote.header);
            w.resp.request_vote.term = rnd_u64(&g);
            w.resp.request_vote.granted = rnd_bool(&g);
            break;
        case CRAFT_RPC_INSTALL_SNAPSHOT:
            rnd_header(&g, &w.resp.install_snapshot.header);
            w.resp.install_snapshot.term = rnd_u64(&g);
            w.resp.install_snapshot.success = rnd_bool(&g);
            break;
        case CRAFT_RPC_TIMEOUT_NOW:
            rnd_header(&g, &w.resp.timeout_now.header);
            break;
        case CRAFT_RPC_REQUEST_PREVOTE:
            rnd_header(&g, &w.resp.request_prevote.header);
            w.resp.request_prevote.term = rnd_u64(&g);
            w.resp.request_prevote.granted = rnd_bool(&g);
            break;
        }
        craft__mp_buf_t b;
        craft__mp_buf_init(&b);
        ck_assert_int_eq(craft__wire_encode_response(&b, fmt, type, err,
                                                     body ? (void *)&w.resp : NULL),
                         0);
        check_frame_form(b.data, b.len, 0, 2);
        craft__wire_response_t r;
        decode_resp(type, b.data, b.len, &r);
        str_eq(r.error, err != NULL && err[0] != '\0' ? err : NULL);
        ck_assert(r.has_body == body);
        if (body) {
            bool prevote = type == CRAFT_RPC_REQUEST_PREVOTE;
            /* every response struct starts with its header */
            hdr_eq((const craft_rpc_header_t *)&r.body,
                   (const craft_rpc_header_t *)&w.resp, fmt, prevote);
            craft__mp_buf_t b2;
            craft__mp_buf_init(&b2);
            ck_assert_int_eq(
                craft__wire_encode_response(&b2, fmt, type, r.error, &r.body), 0);
            ck_assert_uint_eq(b2.len, b.len);
            ck_assert_mem_eq(b2.data, b.data, b.len);
            craft__mp_buf_free(&b2);
        }
        switch (body ? type : CRAFT_RPC_TIMEOUT_NOW) {
        case CRAFT_RPC_APPEND_ENTRIES:
            ck_assert_uint_eq(r.body.append_entries.term, w.resp.append_entries.term);
            ck_assert_uint_eq(r.body.append_entries.last_log,
                              w.resp.append_entries.last_log);
            ck_assert(r.body.append_entries.success == w.resp.append_entries.success);
            ck_assert(r.body.append_entries.no_retry_backoff ==
                      w.resp.append_entries.no_retry_backoff);
            break;
        case CRAFT_RPC_REQUEST_VOTE:
            ck_assert_uint_eq(r.body.request_vote.term, w.resp.request_vote.term);
            ck_assert(r.body.request_vote.granted == w.resp.request_vote.granted);
            break;
        case CRAFT_RPC_INSTALL_SNAPSHOT:
            ck_assert_uint_eq(r.body.install_snapshot.term,
                              w.resp.install_snapshot.term);
            ck_assert(r.body.install_snapshot.success ==
                      w.resp.install_snapshot.success);
            break;
        case CRAFT_RPC_REQUEST_PREVOTE:
            ck_assert_uint_eq(r.body.request_prevote.term,
                              w.resp.request_prevote.term);
            ck_assert(r.body.request_prevote.granted ==
                      w.resp.request_prevote.granted);
            break;
        case CRAFT_RPC_TIMEOUT_NOW:
            break;
        }
        check_truncations(0, type, b.data, b.len);
        craft__wire_response_free(&r);
        craft__mp_buf_free(&b);
        rnd_free(&g);
    }
}
END_TEST

START_TEST(test_random_mutations)
{
    /* corrupted captures must give 0, NEED_MORE or EPROTOCOL; never crash,
     * leak or read out of bounds (run under ASan/UBSan) */
    unsigned seed = 4242;
    for (size_t s = 0; s < WS_N_SAMPLES; s++) {
        const ws_sample_t *smp = &ws_samples[s];
        bool is_req = smp->bytes[0] <= CRAFT_RPC_REQUEST_PREVOTE;
        for (int iter = 0; iter < 300; iter++) {
            uint8_t *p = dup_bytes(smp->bytes, smp->len);
            int flips = 1 + rand_r(&seed) % 4;
            for (int f = 0; f < flips; f++) {
                size_t at = (size_t)rand_r(&seed) % smp->len;
                p[at] = rand_r(&seed) % 3 == 0 ? (uint8_t)(p[at] ^ (1u << (rand_r(&seed) % 8)))
                                               : (uint8_t)rand_r(&seed);
            }
            size_t len = rand_r(&seed) % 4 == 0 ? (size_t)rand_r(&seed) % smp->len
                                                : smp->len;
            craft__wire_decoder_t d;
            craft__wire_decoder_init(&d, NULL);
            size_t used = 0;
            int rv;
            if (is_req) {
                craft_rpc_t rpc;
                rv = craft__wire_decode_request(&d, p, len, &rpc, &used);
                if (rv == 0) {
                    craft__wire_request_free(&rpc);
                }
            } else {
                craft__wire_response_t r;
                rv = craft__wire_decode_response(
                    &d, (craft_rpc_type_t)(rand_r(&seed) % 5), p, len, &r, &used);
                if (rv == 0) {
                    craft__wire_response_free(&r);
                }
            }
            ck_assert(rv == 0 || rv == CRAFT__WIRE_NEED_MORE ||
                      rv == CRAFT_EPROTOCOL);
            ck_assert(rv == 0 ? (used > 0 && used <= len) : used == 0);
            if (rv == CRAFT_EPROTOCOL) {
                ck_assert_ptr_nonnull(craft__wire_decoder_reason(&d));
            }
            free(p);
        }
    }
}
END_TEST

static Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("samples");
    tcase_add_test(tc, test_samples_request_vote);
    tcase_add_test(tc, test_samples_append_entries);
    tcase_add_test(tc, test_sample_append_entries_pair_content);
    tcase_add_test(tc, test_sample_truncated_capture);
    tcase_add_test(tc, test_samples_install_snapshot);
    tcase_add_test(tc, test_samples_timeout_now_and_error);
    tcase_add_test(tc, test_wire_md_append_entries);
    tcase_add_test(tc, test_wire_md_small_frames);
    tcase_add_test(tc, test_signed_int_forms);
    tcase_add_test(tc, test_message_keys);
    suite_add_tcase(s, tc);
    tc = tcase_create("tolerance");
    tcase_add_test(tc, test_tolerance);
    tcase_add_test(tc, test_lenient_misc);
    tcase_add_test(tc, test_time_round_trip);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_encode_errors);
    tcase_add_test(tc, test_random_mutations);
    suite_add_tcase(s, tc);
    tc = tcase_create("random");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_random_requests);
    tcase_add_test(tc, test_random_responses);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(wire_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
