/*
 * Unit tests of the in-memory transport (transports/inmem.c).
 *
 * Consumers are "inboxes": the rpc handler queues each incoming rpc (through
 * rpc->consumer_data[0], as craft does) and either a responder thread
 * answers them, or the test pops and answers them itself when it needs
 * control over the timing. Every wait is on a condition with a generous
 * deadline; nothing relies on sleeping.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "craft.h"
#include "craft/inmem.h"
#include "tests/testutil.h"
#include "transports/sync.h"

/* Calls meant to succeed get a timeout no test run reaches. */
#define LONG_MS 60000
/* How long we wait for something that must happen. */
#define WAIT_MS 30000
/* How long we give something that must not happen the chance to happen
 * (a broken implementation fails; a correct one passes whatever the
 * scheduling). */
#define NEGATIVE_WAIT_MS 200

/* ------------------------------------------------------------------------ */
/* Digests: the responder hashes every request field it received, the test */
/* hashes what it sent.                                                     */
/* ------------------------------------------------------------------------ */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 1099511628211ULL;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    return fnv(h, &v, sizeof v);
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    return s == NULL ? fnv_u64(h, 0xdeadbeef) : fnv(h, s, strlen(s) + 1);
}

static uint64_t fnv_header(uint64_t h, const craft_rpc_header_t *hd)
{
    h = fnv_u64(h, (uint64_t)hd->protocol_version);
    h = fnv_str(h, hd->id);
    return fnv_str(h, hd->addr);
}

static uint64_t digest_req(craft_rpc_type_t type, const void *req)
{
    uint64_t h = fnv_u64(14695981039346656037ULL, (uint64_t)type);
    switch (type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        const craft_append_entries_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, q->term);
        h = fnv_str(h, q->leader);
        h = fnv_u64(h, q->prev_log_entry);
        h = fnv_u64(h, q->prev_log_term);
        h = fnv_u64(h, q->leader_commit_index);
        h = fnv_u64(h, q->n_entries);
        for (size_t i = 0; i < q->n_entries; i++) {
            const craft_log_t *e = &q->entries[i];
            h = fnv_u64(h, e->index);
            h = fnv_u64(h, e->term);
            h = fnv_u64(h, (uint64_t)e->type);
            h = fnv_u64(h, e->len);
            h = fnv(h, e->data, e->len);
            h = fnv_u64(h, e->ext_len);
            h = fnv(h, e->ext, e->ext_len);
            h = fnv_u64(h, (uint64_t)e->appended_at_ns);
        }
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE: {
        const craft_request_vote_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, q->term);
        h = fnv_str(h, q->candidate);
        h = fnv_u64(h, q->last_log_index);
        h = fnv_u64(h, q->last_log_term);
        h = fnv_u64(h, q->leadership_transfer);
        break;
    }
    case CRAFT_RPC_REQUEST_PREVOTE: {
        const craft_request_prevote_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, q->term);
        h = fnv_u64(h, q->last_log_index);
        h = fnv_u64(h, q->last_log_term);
        break;
    }
    case CRAFT_RPC_INSTALL_SNAPSHOT: {
        const craft_install_snapshot_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, (uint64_t)q->snapshot_version);
        h = fnv_u64(h, q->term);
        h = fnv_str(h, q->leader);
        h = fnv_u64(h, q->last_log_index);
        h = fnv_u64(h, q->last_log_term);
        h = fnv_u64(h, q->configuration.n);
        for (size_t i = 0; i < q->configuration.n; i++) {
            h = fnv_u64(h, (uint64_t)q->configuration.servers[i].suffrage);
            h = fnv_str(h, q->configuration.servers[i].id);
            h = fnv_str(h, q->configuration.servers[i].address);
        }
        h = fnv_u64(h, q->configuration_index);
        h = fnv_u64(h, (uint64_t)q->size);
        break;
    }
    case CRAFT_RPC_TIMEOUT_NOW: {
        const craft_timeout_now_req_t *q = req;
        h = fnv_header(h, &q->header);
        break;
    }
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* A snapshot byte stream with a known pattern                               */
/* ------------------------------------------------------------------------ */

static unsigned char pattern_byte(uint64_t pos)
{
    return (unsigned char)((pos * 131) ^ (pos >> 9));
}

typedef struct pattern_reader {
    craft_reader_t r;
    uint64_t pos;
    uint64_t total; /* bytes available */
    size_t chunk;   /* most bytes per read */
    atomic_int closed;
} pattern_reader_t;

static int64_t pattern_read(void *ctx, void *buf, size_t len)
{
    pattern_reader_t *p = ctx;
    size_t n = len < p->chunk ? len : p->chunk;
    if (n > p->total - p->pos) {
        n = (size_t)(p->total - p->pos);
    }
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        b[i] = pattern_byte(p->pos + i);
    }
    p->pos += n;
    return (int64_t)n;
}

static void pattern_close(void *ctx)
{
    pattern_reader_t *p = ctx;
    atomic_store(&p->closed, 1);
}

static pattern_reader_t *pattern_reader_new(uint64_t total, size_t chunk)
{
    pattern_reader_t *p = calloc(1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    p->r.ctx = p;
    p->r.read = pattern_read;
    p->r.close = pattern_close;
    p->total = total;
    p->chunk = chunk;
    return p;
}

/* ------------------------------------------------------------------------ */
/* Inboxes and responders                                                    */
/* ------------------------------------------------------------------------ */

typedef struct inbox {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    craft_rpc_t *head; /* linked through consumer_data[0] */
    craft_rpc_t *tail;
    unsigned received;
    bool stop;
} inbox_t;

static void inbox_init(inbox_t *ib)
{
    memset(ib, 0, sizeof *ib);
    pthread_mutex_init(&ib->mu, NULL);
    ck_assert_int_eq(craft__cond_init_monotonic(&ib->cond), 0);
}

static void inbox_destroy(inbox_t *ib)
{
    ck_assert_ptr_null(ib->head); /* every rpc was answered */
    pthread_cond_destroy(&ib->cond);
    pthread_mutex_destroy(&ib->mu);
}

/* The rpc handler: queue and return. */
static void inbox_handler(void *arg, craft_rpc_t *rpc)
{
    inbox_t *ib = arg;
    rpc->consumer_data[0] = NULL;
    pthread_mutex_lock(&ib->mu);
    if (ib->tail != NULL) {
        ib->tail->consumer_data[0] = rpc;
    } else {
        ib->head = rpc;
    }
    ib->tail = rpc;
    ib->received++;
    pthread_cond_broadcast(&ib->cond);
    pthread_mutex_unlock(&ib->mu);
}

/* The oldest queued rpc; NULL after `ms` or once stopped and empty. */
static craft_rpc_t *inbox_pop(inbox_t *ib, int64_t ms)
{
    struct timespec dl = craft__deadline_after_ms(ms);
    pthread_mutex_lock(&ib->mu);
    while (ib->head == NULL && !ib->stop) {
        if (pthread_cond_timedwait(&ib->cond, &ib->mu, &dl) != 0) {
            break;
        }
    }
    craft_rpc_t *rpc = ib->head;
    if (rpc != NULL) {
        ib->head = rpc->consumer_data[0];
        if (ib->head == NULL) {
            ib->tail = NULL;
        }
    }
    pthread_mutex_unlock(&ib->mu);
    return rpc;
}

static unsigned inbox_received(inbox_t *ib)
{
    pthread_mutex_lock(&ib->mu);
    unsigned n = ib->received;
    pthread_mutex_unlock(&ib->mu);
    return n;
}

typedef struct inbox_count {
    inbox_t *ib;
    unsigned n;
} inbox_count_t;

static bool inbox_reached(void *arg)
{
    inbox_count_t *c = arg;
    return inbox_received(c->ib) >= c->n;
}

static void wait_received(inbox_t *ib, unsigned n)
{
    inbox_count_t c = {ib, n};
    ck_assert_msg(tu_wait_for(inbox_reached, &c, WAIT_MS),
                  "inbox never received %u rpcs", n);
}

typedef struct responder {
    inbox_t inbox;
    const char *name; /* put in response headers */
    int err;          /* respond with this */
    pthread_t thread;
    atomic_uint_fast64_t last_digest;
    atomic_uint answered;
} responder_t;

/* Answers `rpc`: digest of the request (and of the snapshot stream) in
 * last_digest and, where there is one, in resp.term. Header strings are
 * heap copies freed right after respond, so the transport must copy them. */
static void answer(responder_t *s, craft_rpc_t *rpc)
{
    uint64_t d = digest_req(rpc->type, &rpc->req);
    char *id = strdup(s->name);
    char *addr = strdup("responder-addr");
    craft_rpc_header_t h = {3, id, addr};
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        const craft_append_entries_req_t *q = &rpc->req.append_entries;
        craft_append_entries_resp_t *r = &rpc->resp.append_entries;
        r->header = h;
        r->term = d;
        r->last_log = q->prev_log_entry + q->n_entries;
        r->success = true;
        r->no_retry_backoff = q->leader_commit_index % 2 == 1;
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE:
        rpc->resp.request_vote.header = h;
        rpc->resp.request_vote.term = d;
        rpc->resp.request_vote.granted = rpc->req.request_vote.leadership_transfer;
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        rpc->resp.request_prevote.header = h;
        rpc->resp.request_prevote.term = d;
        rpc->resp.request_prevote.granted = true;
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT: {
        /* Stream everything, in odd-sized reads. */
        unsigned char buf[1000];
        int64_t total = 0;
        int64_t n;
        while ((n = rpc->reader->read(rpc->reader->ctx, buf, sizeof buf - 7)) > 0) {
            d = fnv(d, buf, (size_t)n);
            total += n;
        }
        rpc->resp.install_snapshot.header = h;
        rpc->resp.install_snapshot.term = d;
        rpc->resp.install_snapshot.success =
            n == 0 && total == rpc->req.install_snapshot.size;
        break;
    }
    case CRAFT_RPC_TIMEOUT_NOW:
        rpc->resp.timeout_now.header = h;
        break;
    }
    atomic_store(&s->last_digest, d);
    atomic_fetch_add(&s->answered, 1);
    rpc->respond(rpc, s->err);
    free(id);
    free(addr);
}

static void *responder_main(void *arg)
{
    responder_t *s = arg;
    craft_rpc_t *rpc;
    while ((rpc = inbox_pop(&s->inbox, LONG_MS)) != NULL) {
        answer(s, rpc);
    }
    return NULL;
}

static void responder_start(responder_t *s, const char *name)
{
    memset(s, 0, sizeof *s);
    inbox_init(&s->inbox);
    s->name = name;
    atomic_init(&s->last_digest, 0);
    atomic_init(&s->answered, 0);
    ck_assert_int_eq(pthread_create(&s->thread, NULL, responder_main, s), 0);
}

/* Answers what is queued, then stops. */
static void responder_stop(responder_t *s)
{
    pthread_mutex_lock(&s->inbox.mu);
    s->inbox.stop = true;
    pthread_cond_broadcast(&s->inbox.cond);
    pthread_mutex_unlock(&s->inbox.mu);
    pthread_join(s->thread, NULL);
    inbox_destroy(&s->inbox);
}

static craft_transport_t *new_transport(const char *addr, int64_t timeout_ms)
{
    craft_transport_t *t = NULL;
    ck_assert_int_eq(craft_inmem_transport_new_with_timeout(addr, timeout_ms, &t), 0);
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->local_addr(t->ctx), addr);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Request builders (heap-allocated so tests can free them early)           */
/* ------------------------------------------------------------------------ */

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* An AppendEntries with `n` entries whose every pointer is malloc'd. */
static craft_append_entries_req_t *ae_new(uint64_t prev, size_t n)
{
    craft_append_entries_req_t *q = calloc(1, sizeof *q);
    ck_assert_ptr_nonnull(q);
    q->header.protocol_version = 3;
    q->header.id = xstrdup("leader-id");
    q->header.addr = xstrdup("leader-addr");
    q->term = 5;
    q->leader = xstrdup("leader-addr");
    q->prev_log_entry = prev;
    q->prev_log_term = 4;
    q->leader_commit_index = prev + 1;
    q->n_entries = n;
    if (n > 0) {
        craft_log_t *es = calloc(n, sizeof *es);
        ck_assert_ptr_nonnull(es);
        for (size_t i = 0; i < n; i++) {
            es[i].index = prev + 1 + i;
            es[i].term = 5;
            es[i].type = (craft_log_type_t)(i % 6);
            es[i].len = (i * 37) % 300;
            es[i].ext_len = i % 3;
            es[i].appended_at_ns = (int64_t)(1000 + i);
            if (es[i].len > 0) {
                unsigned char *d = malloc(es[i].len);
                ck_assert_ptr_nonnull(d);
                for (size_t j = 0; j < es[i].len; j++) {
                    d[j] = (unsigned char)(i + j * 3);
                }
                es[i].data = d;
            }
            if (es[i].ext_len > 0) {
                unsigned char *x = malloc(es[i].ext_len);
                ck_assert_ptr_nonnull(x);
                memset(x, (int)(0xE0 + i % 16), es[i].ext_len);
                es[i].ext = x;
            }
        }
        q->entries = es;
    }
    return q;
}

/* Frees and poisons everything ae_new allocated. */
static void ae_free(craft_append_entries_req_t *q)
{
    for (size_t i = 0; i < q->n_entries; i++) {
        if (q->entries[i].len > 0) {
            memset((void *)q->entries[i].data, 0x55, q->entries[i].len);
        }
        free((void *)q->entries[i].data);
        free((void *)q->entries[i].ext);
    }
    free((void *)q->entries);
    free((void *)q->header.id);
    free((void *)q->header.addr);
    free((void *)q->leader);
    memset(q, 0x55, sizeof *q);
    free(q);
}

static craft_configuration_t config3(void)
{
    static craft_server_t servers[3] = {
        {CRAFT_VOTER, "n1", "addr-1"},
        {CRAFT_VOTER, "n2", "addr-2"},
        {CRAFT_NONVOTER, "n3", "addr-3"},
    };
    craft_configuration_t c = {3, servers};
    return c;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

START_TEST(test_all_rpc_kinds)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);

    /* AppendEntries with entries. */
    craft_append_entries_req_t *ae = ae_new(10, 20);
    craft_append_entries_resp_t aer;
    memset(&aer, 0, sizeof aer);
    ck_assert_int_eq(a->append_entries(a->ctx, "b-id", "b", ae, &aer), 0);
    ck_assert_uint_eq(aer.term, digest_req(CRAFT_RPC_APPEND_ENTRIES, ae));
    ck_assert_uint_eq(aer.last_log, 30);
    ck_assert(aer.success);
    ck_assert(aer.no_retry_backoff); /* leader_commit_index 11 is odd */
    ck_assert_int_eq(aer.header.protocol_version, 3);
    ck_assert_str_eq(aer.header.id, "node-b");
    ck_assert_str_eq(aer.header.addr, "responder-addr");
    ae_free(ae);

    /* AppendEntries without entries (no heartbeat handler installed). */
    ae = ae_new(30, 0);
    ae->leader_commit_index = 30; /* even: no_retry_backoff false */
    memset(&aer, 0, sizeof aer);
    ck_assert_int_eq(a->append_entries(a->ctx, "b-id", "b", ae, &aer), 0);
    ck_assert_uint_eq(aer.term, digest_req(CRAFT_RPC_APPEND_ENTRIES, ae));
    ck_assert_uint_eq(aer.last_log, 30);
    ck_assert(!aer.no_retry_backoff);
    ae_free(ae);

    craft_request_vote_req_t rv = {{3, "a-id", "a"}, 7, "a", 40, 6, true};
    craft_request_vote_resp_t rvr;
    memset(&rvr, 0, sizeof rvr);
    ck_assert_int_eq(a->request_vote(a->ctx, "b-id", "b", &rv, &rvr), 0);
    ck_assert_uint_eq(rvr.term, digest_req(CRAFT_RPC_REQUEST_VOTE, &rv));
    ck_assert(rvr.granted);
    ck_assert_str_eq(rvr.header.id, "node-b");

    craft_request_prevote_req_t pv = {{3, "a-id", NULL}, 8, 41, 7};
    craft_request_prevote_resp_t pvr;
    memset(&pvr, 0, sizeof pvr);
    ck_assert(a->request_prevote != NULL);
    ck_assert_int_eq(a->request_prevote(a->ctx, "b-id", "b", &pv, &pvr), 0);
    ck_assert_uint_eq(pvr.term, digest_req(CRAFT_RPC_REQUEST_PREVOTE, &pv));
    ck_assert(pvr.granted);

    craft_install_snapshot_req_t is;
    memset(&is, 0, sizeof is);
    is.header = (craft_rpc_header_t){3, "a-id", "a"};
    is.snapshot_version = 1;
    is.term = 9;
    is.leader = "a";
    is.last_log_index = 500;
    is.last_log_term = 8;
    is.configuration = config3();
    is.configuration_index = 3;
    is.size = 10000;
    pattern_reader_t *pr = pattern_reader_new(10000, 333);
    craft_install_snapshot_resp_t isr;
    memset(&isr, 0, sizeof isr);
    ck_assert_int_eq(a->install_snapshot(a->ctx, "b-id", "b", &is, &isr, &pr->r), 0);
    uint64_t want = digest_req(CRAFT_RPC_INSTALL_SNAPSHOT, &is);
    for (uint64_t i = 0; i < 10000; i++) {
        unsigned char byte = pattern_byte(i);
        want = fnv(want, &byte, 1);
    }
    ck_assert_uint_eq(isr.term, want);
    ck_assert(isr.success);
    ck_assert_int_eq(atomic_load(&pr->closed), 0); /* the caller closes it */
    free(pr);

    craft_timeout_now_req_t tn = {{3, "a-id", "a"}};
    craft_timeout_now_resp_t tnr;
    memset(&tnr, 0, sizeof tnr);
    ck_assert_int_eq(a->timeout_now(a->ctx, "b-id", "b", &tn, &tnr), 0);
    ck_assert_uint_eq(atomic_load(&srv.last_digest),
                      digest_req(CRAFT_RPC_TIMEOUT_NOW, &tn));
    ck_assert_str_eq(tnr.header.id, "node-b");

    ck_assert_uint_eq(atomic_load(&srv.answered), 6);
    /* Response header strings outlive the responder's copies: still intact
     * after more RPCs. */
    ck_assert_str_eq(aer.header.id, "node-b");
    ck_assert_str_eq(rvr.header.addr, "responder-addr");

    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* Requests are deep-copied: the caller gives up (timeout), frees its whole
 * request and only then the consumer reads the rpc and answers it late. */
START_TEST(test_deep_copy_timeout_late_answer)
{
    craft_transport_t *a = new_transport("a", 50);
    craft_transport_t *b = new_transport("b", 50);
    inbox_t ib;
    inbox_init(&ib);
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);

    craft_append_entries_req_t *ae = ae_new(100, 50);
    uint64_t want = digest_req(CRAFT_RPC_APPEND_ENTRIES, ae);
    const void *orig_entries = ae->entries;
    const void *orig_data = ae->entries[1].data;
    craft_append_entries_resp_t aer;
    memset(&aer, 0, sizeof aer);
    /* Nobody answers until the call returned. */
    ck_assert_int_eq(a->append_entries(a->ctx, "b", "b", ae, &aer),
                     CRAFT_ETIMEDOUT);
    ae_free(ae);

    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    ck_assert_int_eq(rpc->type, CRAFT_RPC_APPEND_ENTRIES);
    ck_assert_ptr_ne(rpc->req.append_entries.entries, orig_entries);
    ck_assert_ptr_ne(rpc->req.append_entries.entries[1].data, orig_data);
    ck_assert_uint_eq(digest_req(CRAFT_RPC_APPEND_ENTRIES, &rpc->req), want);
    ck_assert_str_eq(rpc->req.append_entries.leader, "leader-addr");

    /* The same for the other kinds with pointers. */
    char *cand = xstrdup("candidate-a");
    char *hid = xstrdup("a-id");
    craft_request_vote_req_t rv = {{3, hid, "a"}, 7, cand, 40, 6, false};
    want = digest_req(CRAFT_RPC_REQUEST_VOTE, &rv);
    craft_request_vote_resp_t rvr;
    ck_assert_int_eq(a->request_vote(a->ctx, "b", "b", &rv, &rvr), CRAFT_ETIMEDOUT);
    memset(cand, 'x', strlen(cand));
    free(cand);
    free(hid);
    craft_rpc_t *rpc2 = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc2);
    ck_assert_uint_eq(digest_req(CRAFT_RPC_REQUEST_VOTE, &rpc2->req), want);
    ck_assert_str_eq(rpc2->req.request_vote.candidate, "candidate-a");

    /* Late answers, from this thread, after the callers left. */
    rpc->resp.append_entries.success = true;
    rpc->resp.append_entries.header.id = "late";
    rpc->respond(rpc, 0);
    rpc2->respond(rpc2, CRAFT_EIO);

    /* The transport still works normally afterwards. */
    responder_t srv;
    responder_start(&srv, "node-b");
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_timeout_now_req_t tn = {{3, "a", "a"}};
    craft_timeout_now_resp_t tnr;
    ck_assert_int_eq(a->timeout_now(a->ctx, "b", "b", &tn, &tnr), 0);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    inbox_destroy(&ib);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* InstallSnapshot carries a configuration: deep-copied as well. */
START_TEST(test_deep_copy_install_snapshot)
{
    craft_transport_t *a = new_transport("a", 20); /* x10 for snapshots */
    craft_transport_t *b = new_transport("b", 20);
    inbox_t ib;
    inbox_init(&ib);
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);

    craft_configuration_t src = config3();
    craft_configuration_t conf;
    ck_assert_int_eq(craft_configuration_copy(&conf, &src), 0);
    craft_install_snapshot_req_t is;
    memset(&is, 0, sizeof is);
    is.header = (craft_rpc_header_t){3, "a-id", "a"};
    is.term = 2;
    is.leader = "a";
    is.configuration = conf;
    is.size = 0; /* an empty snapshot needs no reader */
    uint64_t want = digest_req(CRAFT_RPC_INSTALL_SNAPSHOT, &is);
    craft_install_snapshot_resp_t isr;
    ck_assert_int_eq(a->install_snapshot(a->ctx, "b", "b", &is, &isr, NULL),
                     CRAFT_ETIMEDOUT);
    craft_configuration_free(&conf);

    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    ck_assert_uint_eq(digest_req(CRAFT_RPC_INSTALL_SNAPSHOT, &rpc->req), want);
    ck_assert_str_eq(rpc->req.install_snapshot.configuration.servers[2].address,
                     "addr-3");
    /* The wrapper reader yields the 0 bytes announced. */
    unsigned char buf[8];
    ck_assert_int_eq(rpc->reader->read(rpc->reader->ctx, buf, sizeof buf),
                     CRAFT_ECLOSED); /* the caller is gone */
    rpc->respond(rpc, 0);

    inbox_destroy(&ib);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

START_TEST(test_unreachable)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    craft_transport_t *c = new_transport("c", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node");
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    c->set_rpc_handler(c->ctx, inbox_handler, &srv.inbox);
    a->set_rpc_handler(a->ctx, inbox_handler, &srv.inbox);

    craft_timeout_now_req_t tn = {{3, "x", "x"}};
    craft_timeout_now_resp_t tnr;
    /* Never connected. */
    ck_assert_int_eq(a->timeout_now(a->ctx, "b", "b", &tn, &tnr), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(a->timeout_now(a->ctx, "z", "nobody", &tn, &tnr),
                     CRAFT_EUNREACHABLE);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl),
                     CRAFT_EUNREACHABLE);

    /* One direction only. */
    craft_inmem_transport_connect(a, b);
    craft_inmem_transport_connect(a, b); /* no-op */
    ck_assert_int_eq(a->timeout_now(a->ctx, "b", "b", &tn, &tnr), 0);
    ck_assert_int_eq(b->timeout_now(b->ctx, "a", "a", &tn, &tnr), CRAFT_EUNREACHABLE);

    craft_inmem_transport_disconnect(a, b);
    ck_assert_int_eq(a->timeout_now(a->ctx, "b", "b", &tn, &tnr), CRAFT_EUNREACHABLE);

    /* connect_all / partition / disconnect_all. */
    craft_transport_t *all[3] = {a, b, c};
    craft_inmem_transport_connect_all(all, 3);
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++) {
            if (i != j) {
                const char *to = all[j]->local_addr(all[j]->ctx);
                ck_assert_int_eq(all[i]->timeout_now(all[i]->ctx, to, to, &tn, &tnr), 0);
            }
        }
    }
    craft_inmem_transport_partition(a, c);
    ck_assert_int_eq(a->timeout_now(a->ctx, "c", "c", &tn, &tnr), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(c->timeout_now(c->ctx, "a", "a", &tn, &tnr), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(b->timeout_now(b->ctx, "c", "c", &tn, &tnr), 0);
    craft_inmem_transport_disconnect_all(b);
    ck_assert_int_eq(b->timeout_now(b->ctx, "a", "a", &tn, &tnr), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(b->timeout_now(b->ctx, "c", "c", &tn, &tnr), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(c->timeout_now(c->ctx, "b", "b", &tn, &tnr), 0);

    /* No handler on the target. */
    c->set_rpc_handler(c->ctx, NULL, NULL);
    ck_assert_int_eq(b->timeout_now(b->ctx, "c", "c", &tn, &tnr), CRAFT_EUNREACHABLE);
    craft_inmem_transport_connect(b, c);
    ck_assert_int_eq(b->timeout_now(b->ctx, "c", "c", &tn, &tnr), CRAFT_EUNREACHABLE);

    /* A closed target is unreachable; a new transport at its address can
     * take its place. */
    a->set_rpc_handler(a->ctx, NULL, NULL);
    a->close(a->ctx);
    ck_assert_int_eq(b->timeout_now(b->ctx, "a", "a", &tn, &tnr), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(c->timeout_now(c->ctx, "a", "a", &tn, &tnr), CRAFT_EUNREACHABLE);
    craft_transport_t *a2 = new_transport("a", LONG_MS);
    a2->set_rpc_handler(a2->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(c, a2);
    ck_assert_int_eq(c->timeout_now(c->ctx, "a", "a", &tn, &tnr), 0);
    /* Same address again: the newest transport replaces the older one. */
    craft_transport_t *a3 = new_transport("a", LONG_MS);
    craft_inmem_transport_connect(c, a3); /* a3 has no handler */
    ck_assert_int_eq(c->timeout_now(c->ctx, "a", "a", &tn, &tnr), CRAFT_EUNREACHABLE);
    a3->close(a3->ctx);
    ck_assert_int_eq(c->timeout_now(c->ctx, "a", "a", &tn, &tnr), CRAFT_EUNREACHABLE);

    a2->set_rpc_handler(a2->ctx, NULL, NULL);
    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a2->close(a2->ctx);
    b->close(b->ctx);
    c->close(c->ctx);
}
END_TEST

START_TEST(test_respond_error)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    srv.err = CRAFT_ENOTLEADER;
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);

    craft_request_vote_req_t rv = {{3, "a", "a"}, 7, "a", 1, 1, false};
    craft_request_vote_resp_t rvr;
    memset(&rvr, 0x77, sizeof rvr);
    ck_assert_int_eq(a->request_vote(a->ctx, "b", "b", &rv, &rvr), CRAFT_ENOTLEADER);
    craft_append_entries_req_t *ae = ae_new(1, 3);
    craft_append_entries_resp_t aer;
    ck_assert_int_eq(a->append_entries(a->ctx, "b", "b", ae, &aer), CRAFT_ENOTLEADER);
    ae_free(ae);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* A heartbeat handler answering inline, before it returns. */
static atomic_uint hb_calls;

static void hb_inline_handler(void *arg, craft_rpc_t *rpc)
{
    (void)arg;
    atomic_fetch_add(&hb_calls, 1);
    ck_assert_int_eq(rpc->type, CRAFT_RPC_APPEND_ENTRIES);
    ck_assert_uint_eq(rpc->req.append_entries.n_entries, 0);
    rpc->resp.append_entries.term = rpc->req.append_entries.term;
    rpc->resp.append_entries.success = true;
    rpc->resp.append_entries.last_log = 424242;
    rpc->respond(rpc, 0);
}

START_TEST(test_heartbeat_handler)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    atomic_store(&hb_calls, 0);
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    b->set_heartbeat_handler(b->ctx, hb_inline_handler, NULL);
    craft_inmem_transport_connect(a, b);

    craft_append_entries_req_t *hb = ae_new(7, 0);
    craft_append_entries_resp_t r;
    memset(&r, 0, sizeof r);
    ck_assert_int_eq(a->append_entries(a->ctx, "b", "b", hb, &r), 0);
    ck_assert_uint_eq(r.last_log, 424242);
    ck_assert_uint_eq(r.term, 5);
    ck_assert_uint_eq(atomic_load(&hb_calls), 1);
    ck_assert_uint_eq(atomic_load(&srv.answered), 0);

    /* Entries go to the rpc handler. */
    craft_append_entries_req_t *ae = ae_new(7, 2);
    ck_assert_int_eq(a->append_entries(a->ctx, "b", "b", ae, &r), 0);
    ck_assert_uint_eq(r.last_log, 9);
    ck_assert_uint_eq(atomic_load(&hb_calls), 1);
    ck_assert_uint_eq(atomic_load(&srv.answered), 1);

    /* So does everything that is not AppendEntries. */
    craft_request_prevote_req_t pv = {{3, "a", "a"}, 8, 0, 0};
    craft_request_prevote_resp_t pvr;
    ck_assert_int_eq(a->request_prevote(a->ctx, "b", "b", &pv, &pvr), 0);
    ck_assert_uint_eq(atomic_load(&srv.answered), 2);

    /* Detached: heartbeats fall back to the rpc handler. */
    b->set_heartbeat_handler(b->ctx, NULL, NULL);
    ck_assert_int_eq(a->append_entries(a->ctx, "b", "b", hb, &r), 0);
    ck_assert_uint_eq(r.last_log, 7);
    ck_assert_uint_eq(atomic_load(&hb_calls), 1);
    ck_assert_uint_eq(atomic_load(&srv.answered), 3);

    /* Heartbeat handler alone: entries are unreachable, heartbeats are not. */
    b->set_heartbeat_handler(b->ctx, hb_inline_handler, NULL);
    b->set_rpc_handler(b->ctx, NULL, NULL);
    ck_assert_int_eq(a->append_entries(a->ctx, "b", "b", ae, &r), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(a->append_entries(a->ctx, "b", "b", hb, &r), 0);
    ck_assert_uint_eq(atomic_load(&hb_calls), 2);

    ae_free(hb);
    ae_free(ae);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* ---- detaching waits for handler invocations in progress ---- */

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool open;
    atomic_bool entered;
    atomic_bool exited;
    atomic_uint calls;
} gate_t;

static void gate_handler(void *arg, craft_rpc_t *rpc)
{
    gate_t *g = arg;
    atomic_fetch_add(&g->calls, 1);
    atomic_store(&g->entered, true);
    pthread_mutex_lock(&g->mu);
    while (!g->open) {
        pthread_cond_wait(&g->cond, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    rpc->respond(rpc, 0);
    atomic_store(&g->exited, true);
}

typedef struct detach_ctx {
    craft_transport_t *b;
    gate_t *g;
    bool close; /* close the transport instead of detaching */
    atomic_bool returned;
    bool saw_exited; /* read by the test after join */
} detach_ctx_t;

static void *detach_main(void *arg)
{
    detach_ctx_t *d = arg;
    if (d->close) {
        d->b->close(d->b->ctx);
    } else {
        d->b->set_rpc_handler(d->b->ctx, NULL, NULL);
    }
    d->saw_exited = atomic_load(&d->g->exited);
    atomic_store(&d->returned, true);
    return NULL;
}

typedef struct call_ctx {
    craft_transport_t *t;
    const char *target;
    int rv;
    atomic_bool done;
} call_ctx_t;

static void *timeout_now_main(void *arg)
{
    call_ctx_t *c = arg;
    craft_timeout_now_req_t tn = {{3, "a", "a"}};
    craft_timeout_now_resp_t tnr;
    c->rv = c->t->timeout_now(c->t->ctx, c->target, c->target, &tn, &tnr);
    atomic_store(&c->done, true);
    return NULL;
}

static bool atomic_flag_set(void *arg)
{
    return atomic_load((atomic_bool *)arg);
}

START_TEST(test_detach_waits_for_handlers)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    gate_t g;
    memset(&g, 0, sizeof g);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cond, NULL);
    b->set_rpc_handler(b->ctx, gate_handler, &g);
    craft_inmem_transport_connect(a, b);

    call_ctx_t call = {.t = a, .target = "b"};
    pthread_t caller;
    ck_assert_int_eq(pthread_create(&caller, NULL, timeout_now_main, &call), 0);
    ck_assert(tu_wait_for(atomic_flag_set, &g.entered, WAIT_MS));

    detach_ctx_t d = {.b = b, .g = &g};
    pthread_t detacher;
    ck_assert_int_eq(pthread_create(&detacher, NULL, detach_main, &d), 0);
    /* The detach must not return while the handler is blocked. */
    ck_assert(!tu_wait_for(atomic_flag_set, &d.returned, NEGATIVE_WAIT_MS));

    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.mu);
    pthread_join(detacher, NULL);
    pthread_join(caller, NULL);
    ck_assert(d.saw_exited);
    ck_assert_int_eq(call.rv, 0);

    /* Nothing reaches the old handler any more. */
    craft_timeout_now_req_t tn = {{3, "a", "a"}};
    craft_timeout_now_resp_t tnr;
    ck_assert_int_eq(a->timeout_now(a->ctx, "b", "b", &tn, &tnr), CRAFT_EUNREACHABLE);
    ck_assert_uint_eq(atomic_load(&g.calls), 1);

    pthread_cond_destroy(&g.cond);
    pthread_mutex_destroy(&g.mu);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* Closing the target transport also waits for its handlers. */
START_TEST(test_close_waits_for_handlers)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    gate_t g;
    memset(&g, 0, sizeof g);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cond, NULL);
    b->set_rpc_handler(b->ctx, gate_handler, &g);
    craft_inmem_transport_connect(a, b);

    call_ctx_t call = {.t = a, .target = "b"};
    pthread_t caller;
    ck_assert_int_eq(pthread_create(&caller, NULL, timeout_now_main, &call), 0);
    ck_assert(tu_wait_for(atomic_flag_set, &g.entered, WAIT_MS));

    detach_ctx_t d = {.b = b, .g = &g, .close = true};
    pthread_t closer;
    ck_assert_int_eq(pthread_create(&closer, NULL, detach_main, &d), 0);
    ck_assert(!tu_wait_for(atomic_flag_set, &d.returned, NEGATIVE_WAIT_MS));

    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.mu);
    pthread_join(closer, NULL);
    pthread_join(caller, NULL);
    ck_assert(d.saw_exited);
    ck_assert_int_eq(call.rv, 0); /* answered before b went away */

    craft_timeout_now_req_t tn = {{3, "a", "a"}};
    craft_timeout_now_resp_t tnr;
    ck_assert_int_eq(a->timeout_now(a->ctx, "b", "b", &tn, &tnr), CRAFT_EUNREACHABLE);

    pthread_cond_destroy(&g.cond);
    pthread_mutex_destroy(&g.mu);
    a->close(a->ctx);
}
END_TEST

/* ---- the caller's transport closes while it waits ---- */

START_TEST(test_close_with_blocked_caller)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    inbox_t ib;
    inbox_init(&ib);
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);

    call_ctx_t call = {.t = a, .target = "b"};
    pthread_t caller;
    ck_assert_int_eq(pthread_create(&caller, NULL, timeout_now_main, &call), 0);
    wait_received(&ib, 1); /* the caller is now waiting for the answer */
    a->close(a->ctx);
    pthread_join(caller, NULL);
    ck_assert_int_eq(call.rv, CRAFT_ECLOSED);

    /* The consumer answers after the caller's transport is gone. */
    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    rpc->resp.timeout_now.header.id = "b";
    rpc->respond(rpc, 0);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    inbox_destroy(&ib);
    b->close(b->ctx);
}
END_TEST

/* ---- InstallSnapshot streaming ---- */

START_TEST(test_snapshot_stream)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);

    craft_install_snapshot_req_t is;
    memset(&is, 0, sizeof is);
    is.header = (craft_rpc_header_t){3, "a", "a"};
    is.term = 3;
    is.leader = "a";
    is.configuration = config3();

    /* 1 MiB + a bit, in reads of various sizes. */
    const uint64_t sizes[] = {1, 999, (1 << 20) + 17};
    const size_t chunks[] = {1, 64, 4093};
    for (size_t k = 0; k < 3; k++) {
        is.size = (int64_t)sizes[k];
        pattern_reader_t *pr = pattern_reader_new(sizes[k], chunks[k]);
        craft_install_snapshot_resp_t isr;
        memset(&isr, 0, sizeof isr);
        ck_assert_int_eq(a->install_snapshot(a->ctx, "b", "b", &is, &isr, &pr->r), 0);
        uint64_t want = digest_req(CRAFT_RPC_INSTALL_SNAPSHOT, &is);
        for (uint64_t i = 0; i < sizes[k]; i++) {
            unsigned char byte = pattern_byte(i);
            want = fnv(want, &byte, 1);
        }
        ck_assert_uint_eq(isr.term, want);
        ck_assert(isr.success);
        ck_assert_uint_eq(pr->pos, sizes[k]);
        free(pr);
    }

    /* A source longer than req.size: the consumer sees exactly size bytes. */
    is.size = 500;
    pattern_reader_t *pr = pattern_reader_new(5000, 128);
    craft_install_snapshot_resp_t isr;
    memset(&isr, 0, sizeof isr);
    ck_assert_int_eq(a->install_snapshot(a->ctx, "b", "b", &is, &isr, &pr->r), 0);
    ck_assert(isr.success);
    ck_assert_uint_eq(pr->pos, 500);
    free(pr);

    /* A source shorter than req.size: the consumer gets an error. */
    is.size = 5000;
    pr = pattern_reader_new(100, 128);
    memset(&isr, 0, sizeof isr);
    ck_assert_int_eq(a->install_snapshot(a->ctx, "b", "b", &is, &isr, &pr->r), 0);
    ck_assert(!isr.success);
    free(pr);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* The caller times out while the consumer still streams: the consumer's
 * reads fail from then on and never touch the caller's (freed) reader. */
START_TEST(test_snapshot_reader_after_timeout)
{
    craft_transport_t *a = new_transport("a", 20); /* 200 ms for snapshots */
    craft_transport_t *b = new_transport("b", 20);
    inbox_t ib;
    inbox_init(&ib);
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);

    craft_install_snapshot_req_t is;
    memset(&is, 0, sizeof is);
    is.header = (craft_rpc_header_t){3, "a", "a"};
    is.size = 100000;
    pattern_reader_t *pr = pattern_reader_new(100000, 4096);
    craft_install_snapshot_resp_t isr;
    ck_assert_int_eq(a->install_snapshot(a->ctx, "b", "b", &is, &isr, &pr->r),
                     CRAFT_ETIMEDOUT);
    uint64_t pos = pr->pos;
    memset(pr, 0, sizeof *pr);
    free(pr);

    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    ck_assert_uint_eq(pos, 0);
    unsigned char buf[256];
    ck_assert_int_eq(rpc->reader->read(rpc->reader->ctx, buf, sizeof buf),
                     CRAFT_ECLOSED);
    ck_assert_int_eq(rpc->reader->read(rpc->reader->ctx, buf, sizeof buf),
                     CRAFT_ECLOSED);
    rpc->reader->close(rpc->reader->ctx); /* harmless */
    rpc->respond(rpc, 0);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    inbox_destroy(&ib);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* ---- pipelines ---- */

enum { PIPE_N = 1000 };

typedef struct sender {
    craft_pipeline_t *pl;
    unsigned n;
    atomic_uint sent;
    int last_rv;
} sender_t;

static void *sender_main(void *arg)
{
    sender_t *s = arg;
    for (unsigned i = 0; i < s->n; i++) {
        craft_append_entries_req_t *q = ae_new(i, i % 4);
        int rv = s->pl->append_entries(s->pl->ctx, q, (void *)(uintptr_t)(i + 1));
        ae_free(q); /* borrowed for the call only */
        s->last_rv = rv;
        if (rv != 0) {
            return NULL;
        }
        atomic_fetch_add(&s->sent, 1);
    }
    return NULL;
}

typedef struct sent_count {
    sender_t *s;
    unsigned n;
} sent_count_t;

static bool sent_reached(void *arg)
{
    sent_count_t *c = arg;
    return atomic_load(&c->s->sent) >= c->n;
}

START_TEST(test_pipeline_order)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);

    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);
    sender_t s = {.pl = pl, .n = PIPE_N};
    atomic_init(&s.sent, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, sender_main, &s), 0);
    for (unsigned i = 0; i < PIPE_N; i++) {
        craft_append_entries_resp_t r;
        memset(&r, 0, sizeof r);
        void *tag = NULL;
        ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), 0);
        ck_assert_ptr_eq(tag, (void *)(uintptr_t)(i + 1));
        ck_assert_uint_eq(r.last_log, i + i % 4);
        craft_append_entries_req_t *q = ae_new(i, i % 4);
        ck_assert_uint_eq(r.term, digest_req(CRAFT_RPC_APPEND_ENTRIES, q));
        ae_free(q);
        ck_assert_str_eq(r.header.id, "node-b");
    }
    pthread_join(th, NULL);
    ck_assert_int_eq(s.last_rv, 0);
    ck_assert_uint_eq(atomic_load(&srv.answered), PIPE_N);

    pl->close(pl->ctx);
    pl->close(pl->ctx); /* idempotent */
    craft_append_entries_resp_t r;
    void *tag = (void *)1;
    ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_ECLOSED);
    ck_assert_ptr_null(tag);
    craft_append_entries_req_t *q = ae_new(1, 1);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, NULL), CRAFT_ECLOSED);
    ae_free(q);
    pl->free(pl->ctx);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* Failed requests come back in order with their error and tag. */
START_TEST(test_pipeline_errors)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    srv.err = CRAFT_EIO;
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);

    craft_append_entries_req_t *q = ae_new(1, 2);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)11), 0);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)12), 0);
    craft_append_entries_resp_t r;
    void *tag = NULL;
    ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_EIO);
    ck_assert_ptr_eq(tag, (void *)11);
    ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_EIO);
    ck_assert_ptr_eq(tag, (void *)12);

    /* Disconnected peer: the request fails, the pipeline goes on. */
    craft_inmem_transport_disconnect(a, b);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)13), 0);
    ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_EUNREACHABLE);
    ck_assert_ptr_eq(tag, (void *)13);
    ae_free(q);

    pl->close(pl->ctx);
    pl->free(pl->ctx);
    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

enum { WINDOW = 128 };

START_TEST(test_pipeline_window_blocks)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    memset(&srv, 0, sizeof srv);
    inbox_init(&srv.inbox); /* nobody answers yet */
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);

    sender_t s = {.pl = pl, .n = WINDOW + 1};
    atomic_init(&s.sent, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, sender_main, &s), 0);
    sent_count_t full = {&s, WINDOW};
    ck_assert(tu_wait_for(sent_reached, &full, WAIT_MS));
    /* The pipeline's worker thread delivers the first request whenever it
     * gets to run (it may be preempted past the negative wait below). */
    wait_received(&srv.inbox, 1);
    /* The window is full: request WINDOW+1 must wait for a response to be
     * consumed. */
    sent_count_t over = {&s, WINDOW + 1};
    ck_assert(!tu_wait_for(sent_reached, &over, NEGATIVE_WAIT_MS));
    ck_assert_uint_eq(inbox_received(&srv.inbox), 1); /* one at a time */

    /* Answer: responses pile up but the window stays full until consumed. */
    srv.name = "node-b";
    ck_assert_int_eq(pthread_create(&srv.thread, NULL, responder_main, &srv), 0);
    wait_received(&srv.inbox, WINDOW);
    ck_assert_uint_eq(atomic_load(&s.sent), WINDOW);

    craft_append_entries_resp_t r;
    void *tag = NULL;
    ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), 0);
    ck_assert_ptr_eq(tag, (void *)1);
    pthread_join(th, NULL); /* the last append got its slot */
    ck_assert_int_eq(s.last_rv, 0);
    ck_assert_uint_eq(atomic_load(&s.sent), WINDOW + 1);
    for (unsigned i = 1; i <= WINDOW; i++) {
        ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), 0);
        ck_assert_ptr_eq(tag, (void *)(uintptr_t)(i + 1));
        ck_assert_uint_eq(r.last_log, i + i % 4);
    }

    pl->close(pl->ctx);
    pl->free(pl->ctx);
    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

typedef struct receiver {
    craft_pipeline_t *pl;
    int rv;
    void *tag;
} receiver_t;

static void *receiver_main(void *arg)
{
    receiver_t *r = arg;
    craft_append_entries_resp_t resp;
    r->rv = r->pl->next_response(r->pl->ctx, &resp, &r->tag);
    return NULL;
}

/* close() with requests queued, one in flight, the window full, a sender
 * and a receiver blocked. */
START_TEST(test_pipeline_close_outstanding)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    inbox_t ib;
    inbox_init(&ib); /* never answers before close */
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);

    sender_t s = {.pl = pl, .n = WINDOW + 1};
    atomic_init(&s.sent, 0);
    pthread_t sth;
    ck_assert_int_eq(pthread_create(&sth, NULL, sender_main, &s), 0);
    sent_count_t full = {&s, WINDOW};
    ck_assert(tu_wait_for(sent_reached, &full, WAIT_MS));
    wait_received(&ib, 1); /* request 1 is in flight */

    receiver_t rcv = {.pl = pl, .rv = 0};
    pthread_t rth;
    ck_assert_int_eq(pthread_create(&rth, NULL, receiver_main, &rcv), 0);

    pl->close(pl->ctx);
    pthread_join(sth, NULL);
    ck_assert_int_eq(s.last_rv, CRAFT_ECLOSED);
    ck_assert_uint_eq(atomic_load(&s.sent), WINDOW);
    pthread_join(rth, NULL);
    ck_assert_int_eq(rcv.rv, CRAFT_ECLOSED);
    ck_assert_ptr_eq(rcv.tag, (void *)1);

    /* The rest drain in order, as failed, then CRAFT_ECLOSED for ever. */
    craft_append_entries_resp_t r;
    for (unsigned i = 2; i <= WINDOW; i++) {
        void *tag = NULL;
        ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_ECLOSED);
        ck_assert_ptr_eq(tag, (void *)(uintptr_t)i);
    }
    for (int k = 0; k < 3; k++) {
        void *tag = (void *)1;
        ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_ECLOSED);
        ck_assert_ptr_null(tag);
    }

    /* The in-flight request is answered after the pipeline is gone. */
    pl->free(pl->ctx);
    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    ck_assert_uint_eq(rpc->req.append_entries.prev_log_entry, 0);
    rpc->respond(rpc, 0);
    ck_assert_uint_eq(inbox_received(&ib), 1); /* nothing else was sent */

    b->set_rpc_handler(b->ctx, NULL, NULL);
    inbox_destroy(&ib);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* ---- pipelines with a response callback ---- */

typedef struct collector {
    pthread_mutex_t mu;
    unsigned n;          /* calls */
    unsigned ok, closed; /* by outcome */
    bool in_order;       /* tags arrived as 1, 2, 3, ... */
    bool overlapped;     /* two calls at once */
    bool inside;
    uint64_t last_log_sum;
} collector_t;

static void collect(void *arg, int err, const craft_append_entries_resp_t *resp, void *tag)
{
    collector_t *c = arg;
    pthread_mutex_lock(&c->mu);
    if (c->inside) {
        c->overlapped = true;
    }
    c->inside = true;
    c->n++;
    if ((uintptr_t)tag != c->n) {
        c->in_order = false;
    }
    if (err == 0) {
        c->ok++;
        c->last_log_sum += resp->last_log;
    } else if (err == CRAFT_ECLOSED && resp == NULL) {
        c->closed++;
    }
    c->inside = false;
    pthread_mutex_unlock(&c->mu);
}

static bool collected(void *arg)
{
    collector_t *c = arg;
    pthread_mutex_lock(&c->mu);
    bool done = c->n >= PIPE_N;
    pthread_mutex_unlock(&c->mu);
    return done;
}

/* Every response reaches the callback once, in order, one call at a time;
 * next_response is refused; the handler is installed once. */
START_TEST(test_pipeline_callback_order)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);

    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);
    ck_assert(pl->set_response_handler != NULL);
    collector_t c = {.in_order = true};
    pthread_mutex_init(&c.mu, NULL);
    ck_assert_int_eq(pl->set_response_handler(pl->ctx, NULL, &c), CRAFT_EINVAL);
    ck_assert_int_eq(pl->set_response_handler(pl->ctx, collect, &c), 0);
    ck_assert_int_eq(pl->set_response_handler(pl->ctx, collect, &c), CRAFT_EINVAL);
    sender_t s = {.pl = pl, .n = PIPE_N};
    atomic_init(&s.sent, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, sender_main, &s), 0);
    ck_assert(tu_wait_for(collected, &c, WAIT_MS));
    pthread_join(th, NULL);
    ck_assert_int_eq(s.last_rv, 0);
    craft_append_entries_resp_t r;
    void *tag = NULL;
    ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_EINVAL);
    pl->close(pl->ctx);
    pl->free(pl->ctx);
    ck_assert_uint_eq(c.n, PIPE_N);
    ck_assert_uint_eq(c.ok, PIPE_N);
    ck_assert(c.in_order);
    ck_assert(!c.overlapped);
    uint64_t want = 0;
    for (unsigned i = 0; i < PIPE_N; i++) {
        want += i + i % 4;
    }
    ck_assert_uint_eq(c.last_log_sum, want);
    pthread_mutex_destroy(&c.mu);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* close() hands every outstanding request back as CRAFT_ECLOSED, in order,
 * before it returns; nothing is delivered afterwards. */
START_TEST(test_pipeline_callback_close)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    inbox_t ib;
    inbox_init(&ib); /* never answers before close */
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);
    collector_t c = {.in_order = true};
    pthread_mutex_init(&c.mu, NULL);
    ck_assert_int_eq(pl->set_response_handler(pl->ctx, collect, &c), 0);

    sender_t s = {.pl = pl, .n = WINDOW};
    atomic_init(&s.sent, 0);
    pthread_t sth;
    ck_assert_int_eq(pthread_create(&sth, NULL, sender_main, &s), 0);
    sent_count_t full = {&s, WINDOW};
    ck_assert(tu_wait_for(sent_reached, &full, WAIT_MS));
    pthread_join(sth, NULL);
    wait_received(&ib, 1); /* request 1 is in flight */

    pl->close(pl->ctx);
    pthread_mutex_lock(&c.mu);
    ck_assert_uint_eq(c.n, WINDOW);
    ck_assert_uint_eq(c.closed + c.ok, WINDOW);
    ck_assert_uint_eq(c.ok, 0);
    ck_assert(c.in_order);
    pthread_mutex_unlock(&c.mu);
    pl->close(pl->ctx); /* idempotent */
    pl->free(pl->ctx);

    /* The in-flight request is answered after the pipeline is gone. */
    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    rpc->respond(rpc, 0);
    ck_assert_uint_eq(c.n, WINDOW);
    pthread_mutex_destroy(&c.mu);

    b->set_rpc_handler(b->ctx, NULL, NULL);
    inbox_destroy(&ib);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

/* Closing the transport closes its pipelines; the pipeline outlives it. */
START_TEST(test_pipeline_transport_close)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    inbox_t ib;
    inbox_init(&ib);
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);
    craft_append_entries_req_t *q = ae_new(0, 1);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)1), 0);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)2), 0);
    wait_received(&ib, 1);

    receiver_t rcv = {.pl = pl};
    pthread_t rth;
    ck_assert_int_eq(pthread_create(&rth, NULL, receiver_main, &rcv), 0);
    a->close(a->ctx);
    pthread_join(rth, NULL);
    ck_assert_int_eq(rcv.rv, CRAFT_ECLOSED);
    ck_assert_ptr_eq(rcv.tag, (void *)1);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)3), CRAFT_ECLOSED);
    ae_free(q);
    craft_append_entries_resp_t r;
    void *tag = NULL;
    ck_assert_int_eq(pl->next_response(pl->ctx, &r, &tag), CRAFT_ECLOSED);
    ck_assert_ptr_eq(tag, (void *)2);
    pl->close(pl->ctx);
    pl->free(pl->ctx); /* drops the last reference to `a` */

    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    rpc->respond(rpc, 0);
    b->set_rpc_handler(b->ctx, NULL, NULL);
    inbox_destroy(&ib);
    b->close(b->ctx);
}
END_TEST

typedef struct closer {
    craft_transport_t *t;
    atomic_bool done;
} closer_t;

static void *closer_main(void *arg)
{
    closer_t *c = arg;
    c->t->close(c->t->ctx);
    atomic_store(&c->done, true);
    return NULL;
}

static bool closer_done(void *arg)
{
    closer_t *c = arg;
    return atomic_load(&c->done);
}

/* Closing the transport while a callback pipeline has a request in flight
 * returns (it used to wait for the worker under the transport's mutex,
 * which the worker needs to finish its call); the pipeline's own close
 * then hands every request back. */
START_TEST(test_pipeline_callback_transport_close)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    inbox_t ib;
    inbox_init(&ib); /* never answers before close */
    b->set_rpc_handler(b->ctx, inbox_handler, &ib);
    craft_inmem_transport_connect(a, b);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(a->append_entries_pipeline(a->ctx, "b", "b", &pl), 0);
    collector_t c = {.in_order = true};
    pthread_mutex_init(&c.mu, NULL);
    ck_assert_int_eq(pl->set_response_handler(pl->ctx, collect, &c), 0);
    craft_append_entries_req_t *q = ae_new(0, 1);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)1), 0);
    ck_assert_int_eq(pl->append_entries(pl->ctx, q, (void *)2), 0);
    ae_free(q);
    wait_received(&ib, 1); /* request 1 is in flight */

    /* On a thread of its own: a hang fails the test instead of the run. */
    closer_t cl = {.t = a};
    atomic_init(&cl.done, false);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, closer_main, &cl), 0);
    ck_assert(tu_wait_for(closer_done, &cl, WAIT_MS));
    pthread_join(th, NULL);

    pl->close(pl->ctx);
    pthread_mutex_lock(&c.mu);
    ck_assert_uint_eq(c.n, 2);
    ck_assert_uint_eq(c.closed, 2);
    ck_assert(c.in_order);
    ck_assert(!c.overlapped);
    pthread_mutex_unlock(&c.mu);
    pl->free(pl->ctx); /* drops the last reference to `a` */
    pthread_mutex_destroy(&c.mu);

    craft_rpc_t *rpc = inbox_pop(&ib, WAIT_MS);
    ck_assert_ptr_nonnull(rpc);
    rpc->respond(rpc, 0);
    b->set_rpc_handler(b->ctx, NULL, NULL);
    inbox_destroy(&ib);
    b->close(b->ctx);
}
END_TEST

/* ---- many callers while the topology changes ---- */

typedef struct stress {
    craft_transport_t *a;
    atomic_bool stop;
    atomic_int bad;
    atomic_uint ok;
} stress_t;

static void *stress_caller(void *arg)
{
    stress_t *s = arg;
    for (int i = 0; i < 300; i++) {
        craft_append_entries_req_t *q = ae_new((uint64_t)i, (size_t)(i % 3));
        craft_append_entries_resp_t r;
        int rv = s->a->append_entries(s->a->ctx, "b", "b", q, &r);
        if (rv == 0) {
            if (r.last_log != (uint64_t)i + (uint64_t)(i % 3)) {
                atomic_fetch_add(&s->bad, 1);
            }
            atomic_fetch_add(&s->ok, 1);
        } else if (rv != CRAFT_EUNREACHABLE) {
            atomic_fetch_add(&s->bad, 1);
        }
        ae_free(q);
    }
    return NULL;
}

START_TEST(test_concurrent_callers)
{
    craft_transport_t *a = new_transport("a", LONG_MS);
    craft_transport_t *b = new_transport("b", LONG_MS);
    responder_t srv;
    responder_start(&srv, "node-b");
    b->set_rpc_handler(b->ctx, inbox_handler, &srv.inbox);
    craft_inmem_transport_connect(a, b);

    stress_t s = {.a = a};
    atomic_init(&s.bad, 0);
    atomic_init(&s.ok, 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, stress_caller, &s), 0);
    }
    for (int i = 0; i < 200; i++) {
        craft_inmem_transport_disconnect(a, b);
        craft_inmem_transport_connect(a, b);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    int bad = atomic_load(&s.bad);
    ck_assert_int_eq(bad, 0);
    ck_assert_uint_eq(atomic_load(&s.ok), atomic_load(&srv.answered));

    b->set_rpc_handler(b->ctx, NULL, NULL);
    responder_stop(&srv);
    a->close(a->ctx);
    b->close(b->ctx);
}
END_TEST

START_TEST(test_invalid_args)
{
    craft_transport_t *t = NULL;
    ck_assert_int_eq(craft_inmem_transport_new(NULL, &t), CRAFT_EINVAL);
    ck_assert_int_eq(craft_inmem_transport_new("x", NULL), CRAFT_EINVAL);
    ck_assert_int_eq(craft_inmem_transport_new_with_timeout("x", 0, &t), CRAFT_EINVAL);
    ck_assert_int_eq(craft_inmem_transport_new_with_timeout("x", -5, &t), CRAFT_EINVAL);
    ck_assert_int_eq(craft_inmem_transport_new("x", &t), 0);
    ck_assert_str_eq(t->local_addr(t->ctx), "x");

    craft_append_entries_req_t ae;
    memset(&ae, 0, sizeof ae);
    craft_append_entries_resp_t aer;
    ck_assert_int_eq(t->append_entries(t->ctx, "y", NULL, &ae, &aer), CRAFT_EINVAL);
    ck_assert_int_eq(t->append_entries(t->ctx, "y", "y", NULL, &aer), CRAFT_EINVAL);
    ck_assert_int_eq(t->append_entries(t->ctx, "y", "y", &ae, NULL), CRAFT_EINVAL);
    ae.n_entries = 2; /* entries NULL */
    ck_assert_int_eq(t->append_entries(t->ctx, "y", "y", &ae, &aer), CRAFT_EINVAL);
    craft_log_t e = {.index = 1, .len = 4}; /* data NULL */
    ae.entries = &e;
    ae.n_entries = 1;
    ck_assert_int_eq(t->append_entries(t->ctx, "y", "y", &ae, &aer), CRAFT_EINVAL);

    craft_install_snapshot_req_t is;
    memset(&is, 0, sizeof is);
    craft_install_snapshot_resp_t isr;
    is.size = 10; /* no reader */
    ck_assert_int_eq(t->install_snapshot(t->ctx, "y", "y", &is, &isr, NULL), CRAFT_EINVAL);
    is.size = -1;
    ck_assert_int_eq(t->install_snapshot(t->ctx, "y", "y", &is, &isr, NULL), CRAFT_EINVAL);
    craft_pipeline_t *pl = NULL;
    ck_assert_int_eq(t->append_entries_pipeline(t->ctx, "y", NULL, &pl), CRAFT_EINVAL);
    ck_assert_int_eq(t->append_entries_pipeline(t->ctx, "y", "y", NULL), CRAFT_EINVAL);
    /* NULL transports are ignored by the topology helpers. */
    craft_inmem_transport_connect(t, NULL);
    craft_inmem_transport_disconnect(NULL, t);
    craft_inmem_transport_disconnect_all(NULL);
    craft_inmem_transport_connect_all(NULL, 3);
    t->close(t->ctx);
}
END_TEST

static Suite *inmem_transport_suite(void)
{
    Suite *s = suite_create("inmem_transport");
    TCase *rpc = tcase_create("rpc");
    tcase_set_timeout(rpc, 120);
    tcase_add_test(rpc, test_all_rpc_kinds);
    tcase_add_test(rpc, test_deep_copy_timeout_late_answer);
    tcase_add_test(rpc, test_deep_copy_install_snapshot);
    tcase_add_test(rpc, test_unreachable);
    tcase_add_test(rpc, test_respond_error);
    tcase_add_test(rpc, test_heartbeat_handler);
    tcase_add_test(rpc, test_invalid_args);
    suite_add_tcase(s, rpc);

    TCase *life = tcase_create("lifetime");
    tcase_set_timeout(life, 120);
    tcase_add_test(life, test_detach_waits_for_handlers);
    tcase_add_test(life, test_close_waits_for_handlers);
    tcase_add_test(life, test_close_with_blocked_caller);
    tcase_add_test(life, test_concurrent_callers);
    suite_add_tcase(s, life);

    TCase *snap = tcase_create("snapshot");
    tcase_set_timeout(snap, 120);
    tcase_add_test(snap, test_snapshot_stream);
    tcase_add_test(snap, test_snapshot_reader_after_timeout);
    suite_add_tcase(s, snap);

    TCase *pipe = tcase_create("pipeline");
    tcase_set_timeout(pipe, 120);
    tcase_add_test(pipe, test_pipeline_order);
    tcase_add_test(pipe, test_pipeline_errors);
    tcase_add_test(pipe, test_pipeline_window_blocks);
    tcase_add_test(pipe, test_pipeline_close_outstanding);
    tcase_add_test(pipe, test_pipeline_transport_close);
    tcase_add_test(pipe, test_pipeline_callback_order);
    tcase_add_test(pipe, test_pipeline_callback_close);
    tcase_add_test(pipe, test_pipeline_callback_transport_close);
    suite_add_tcase(s, pipe);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(inmem_transport_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
