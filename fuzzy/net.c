/*
 * The fault-injecting network and its transports.
 *
 * Every request is encoded with the hashicorp wire codec by the sender
 * (craft__wire_encode_request) and decoded by the receiver
 * (craft__wire_decode_request); responses likewise. Only bytes cross the
 * "wire", so the codec's round trip is exercised by every message.
 *
 * A synchronous call runs on the caller's thread: it draws the message's
 * fate from the link's RNG (down link, loss of the request or of the
 * response, delays, duplicate, snapshot stream cut), waits the request
 * delay (interruptible by close), hands the decoded rpc to the receiver's
 * handler (the heartbeat handler for AppendEntries without entries, when
 * one is set), waits for respond(), waits the response delay and decodes
 * the response. A lost request or response costs the caller a quarter of
 * the RPC timeout, then CRAFT_ETIMEDOUT; a down link costs 1 ms, then
 * CRAFT_EUNREACHABLE. Duplicates go to the network's delivery thread,
 * which hands them to the receiver after their own delay and discards the
 * answer (so they also arrive out of order). Pipelines push their requests
 * through worker threads: one keeps them in order, several (faults.reorder)
 * let them overtake each other; the pipeline's queue
 * (transports/pipeline_queue.h) hands responses back in request order.
 *
 * Lifetimes follow transports/inmem.c, whose call objects, handler slots
 * and InstallSnapshot reader this network shares (transports/inproc.h):
 * transports and calls are reference counted, a handler slot counts its
 * invocations so that detaching waits for them, and the InstallSnapshot
 * reader stops touching the caller's stream once the caller returned.
 * Closing a transport only stops its pipelines; their owner's close hands
 * back what is left.
 *
 * Lock order: net->mu alone; t->core.mu -> pipeline mu -> call mu.
 */
#include "craft/fuzzy.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/queue.h"
#include "transports/inproc.h"
#include "transports/pipeline_queue.h"
#include "transports/sync.h"
#include "transports/wire.h"
#include "util.h"

#define MAX_EP 64
#define LONG_RPC_FACTOR 5
#define MAX_PIPELINE_WORKERS 3
#define PIPELINE_WINDOW 64

typedef struct fz_trans fz_trans_t;
typedef struct call call_t;
typedef struct pipeline pipeline_t;

typedef struct term_rec {
    uint64_t term;
    char *id;
} term_rec_t;

typedef struct dup {
    int64_t due_us;
    int from, to;
    uint8_t *bytes;
    size_t len;
    struct dup *next;
} dup_t;

typedef struct ep {
    char *addr;
    fz_trans_t *t; /* live transport at this address, or NULL */
    int64_t slow_us;
    bool node_down;
} ep_t;

struct craft_fuzzy_net {
    pthread_mutex_t mu;
    uint64_t seed;
    int64_t timeout_ms;
    craft_fuzzy_faults_t faults;
    ep_t eps[MAX_EP];
    size_t n_eps;
    bool down[MAX_EP][MAX_EP];
    fz_rng_t rng[MAX_EP][MAX_EP];
    bool rng_ready[MAX_EP][MAX_EP];
    craft_fuzzy_rpc_hook_fn hook;
    void *hook_arg;
    craft_fuzzy_net_stats_t st;
    /* election safety */
    term_rec_t *terms;
    size_t n_terms, cap_terms;
    craft_fuzzy_report_t safety;
    /* duplicates */
    pthread_t dup_thread;
    pthread_cond_t dup_cond;
    dup_t *dups; /* sorted by due time */
    bool stopping;
};

struct fz_trans {
    craft_transport_t iface;
    craft_fuzzy_net_t *net;
    int ep;
    char *addr;
    atomic_int refs;
    /* Handlers, calls in progress, pipelines (pipeline_t by link, not yet
     * freed) under core.mu; interned response strings. */
    craft__inproc_t core;
    unsigned pipelines_opened; /* under core.mu: picks each pipeline's delivery */
};

/* The answer travels encoded: base.body holds the response's bytes, and
 * base.err the failure to encode them. */
struct call {
    craft__inproc_call_t base; /* first: respond() gets &base.rpc */
    bool orphan;               /* a duplicate: nobody waits for the answer */
    bool decoded;
    craft_fuzzy_net_t *net;
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static struct timespec abs_deadline_us(int64_t at_us)
{
    /* Condvars use CLOCK_MONOTONIC (craft__cond_init_monotonic). */
    struct timespec ts = {(time_t)(at_us / 1000000), (long)(at_us % 1000000) * 1000L};
    return ts;
}

/* The craft code whose message is `s` (remote error strings). */
static int code_of(const char *s)
{
    for (int code = -1; code >= -64; code--) {
        if (strcmp(craft_strerror(code), s) == 0 &&
            strncmp(craft_err_name(code), "CRAFT_E", 7) == 0) {
            return code;
        }
    }
    return CRAFT_EIO;
}

static void trans_ref(fz_trans_t *t)
{
    atomic_fetch_add(&t->refs, 1);
}

static void trans_unref(fz_trans_t *t)
{
    if (atomic_fetch_sub(&t->refs, 1) != 1) {
        return;
    }
    craft__inproc_destroy(&t->core);
    free(t->addr);
    free(t);
}

/* Endpoint index of `addr`, registering it when `create`; -1 if absent or
 * full. Called with net->mu held. */
static int ep_find(craft_fuzzy_net_t *n, const char *addr, bool create)
{
    if (addr == NULL) {
        return -1;
    }
    for (size_t i = 0; i < n->n_eps; i++) {
        if (strcmp(n->eps[i].addr, addr) == 0) {
            return (int)i;
        }
    }
    if (!create || n->n_eps == MAX_EP) {
        return -1;
    }
    char *copy = strdup(addr);
    if (copy == NULL) {
        return -1;
    }
    n->eps[n->n_eps].addr = copy;
    n->eps[n->n_eps].t = NULL;
    n->eps[n->n_eps].slow_us = 0;
    return (int)n->n_eps++;
}

static fz_rng_t *link_rng(craft_fuzzy_net_t *n, int from, int to)
{
    if (!n->rng_ready[from][to]) {
        uint64_t salt = fz_hash_str(n->eps[from].addr) * 31 + fz_hash_str(n->eps[to].addr);
        fz_rng_seed(&n->rng[from][to], n->seed, salt);
        n->rng_ready[from][to] = true;
    }
    return &n->rng[from][to];
}

/* ------------------------------------------------------------------------ */
/* Fates                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct fate {
    bool down;
    bool drop_req, drop_resp, dup;
    int64_t d_req, d_resp, d_dup;
    int64_t cut_at;
} fate_t;

static int64_t draw_delay(craft_fuzzy_net_t *n, fz_rng_t *r, int from, int to)
{
    const craft_fuzzy_faults_t *f = &n->faults;
    int64_t d = fz_rng_range(r, f->delay_min_us, f->delay_max_us);
    if (fz_rng_chance(r, f->delay_tail)) {
        d += fz_rng_range(r, 0, f->delay_tail_us);
    }
    return d + n->eps[from].slow_us + n->eps[to].slow_us;
}

/* Draws every decision for one message up front, so the number of draws
 * per message is fixed and the stream stays aligned with the seed. */
static void draw_fate(craft_fuzzy_net_t *n, int from, int to, craft_rpc_type_t type,
                      int64_t size, fate_t *out)
{
    memset(out, 0, sizeof *out);
    out->cut_at = -1;
    fz_rng_t *r = link_rng(n, from, to);
    const craft_fuzzy_faults_t *f = &n->faults;
    bool drop_req = fz_rng_chance(r, f->drop);
    bool drop_resp = fz_rng_chance(r, f->drop_resp);
    bool dup = fz_rng_chance(r, f->duplicate);
    bool cut = fz_rng_chance(r, f->snapshot_cut);
    int64_t cut_at = size > 0 ? (int64_t)fz_rng_below(r, (uint64_t)size) : 0;
    out->d_req = draw_delay(n, r, from, to);
    out->d_resp = draw_delay(n, r, to, from);
    out->d_dup = draw_delay(n, r, from, to) * 2 + fz_rng_range(r, 0, 5000);
    out->down = n->down[from][to] || n->eps[from].node_down || n->eps[to].node_down;
    out->drop_req = drop_req;
    out->drop_resp = drop_resp;
    out->dup = dup && type != CRAFT_RPC_INSTALL_SNAPSHOT;
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT && cut) {
        out->cut_at = cut_at;
    }
}

/* ------------------------------------------------------------------------ */
/* Election safety                                                           */
/* ------------------------------------------------------------------------ */

/* Called with net->mu held for every AppendEntries sent. */
static void record_append(craft_fuzzy_net_t *n, const char *from_addr,
                          const craft_append_entries_req_t *req)
{
    const char *id = req->header.id != NULL ? req->header.id : "";
    if (req->header.addr != NULL && req->leader != NULL &&
        strcmp(req->header.addr, req->leader) != 0) {
        craft_fuzzy_report_violation(&n->safety,
                                     "election safety: AppendEntries from %s (id %s, addr %s) "
                                     "names leader %s in term %llu",
                                     from_addr, id, req->header.addr, req->leader,
                                     (unsigned long long)req->term);
    }
    /* Terms arrive mostly in order: scan from the newest. */
    for (size_t i = n->n_terms; i-- > 0;) {
        if (n->terms[i].term != req->term) {
            continue;
        }
        if (strcmp(n->terms[i].id, id) != 0) {
            craft_fuzzy_report_violation(&n->safety,
                                         "election safety: two leaders in term %llu: "
                                         "%s and %s both sent AppendEntries",
                                         (unsigned long long)req->term, n->terms[i].id, id);
            /* Remember the newcomer, so a pair is reported once per switch. */
            char *copy = strdup(id);
            if (copy != NULL) {
                free(n->terms[i].id);
                n->terms[i].id = copy;
            }
        }
        return;
    }
    if (n->n_terms == n->cap_terms) {
        size_t cap = n->cap_terms ? n->cap_terms * 2 : 64;
        term_rec_t *p = realloc(n->terms, cap * sizeof *p);
        if (p == NULL) {
            return;
        }
        n->terms = p;
        n->cap_terms = cap;
    }
    n->terms[n->n_terms].term = req->term;
    n->terms[n->n_terms].id = strdup(id);
    if (n->terms[n->n_terms].id != NULL) {
        n->n_terms++;
    }
}

unsigned craft_fuzzy_net_check_election_safety(craft_fuzzy_net_t *n, craft_fuzzy_report_t *out)
{
    pthread_mutex_lock(&n->mu);
    unsigned v = n->safety.violations;
    if (out != NULL && n->safety.text != NULL) {
        /* Re-emit each recorded line into the caller's report. */
        char *copy = strdup(n->safety.text);
        pthread_mutex_unlock(&n->mu);
        if (copy != NULL) {
            for (char *line = strtok(copy, "\n"); line != NULL; line = strtok(NULL, "\n")) {
                const char *p = strncmp(line, "VIOLATION: ", 11) == 0 ? line + 11 : line;
                craft_fuzzy_report_violation(out, "%s", p);
            }
            free(copy);
        }
        return v;
    }
    pthread_mutex_unlock(&n->mu);
    return v;
}

/* ------------------------------------------------------------------------ */
/* Calls                                                                     */
/* ------------------------------------------------------------------------ */

static void call_destroy(craft__inproc_call_t *base)
{
    call_t *c = (call_t *)base;
    if (c->decoded) {
        craft__wire_request_free(&c->base.rpc);
    }
    free(c);
}

/* rpc->respond: the answer is encoded here, on the consumer's thread, and
 * decoded by the caller. */
static void call_respond(craft_rpc_t *rpc, int err)
{
    call_t *c = (call_t *)rpc;
    uint8_t *bytes = NULL;
    size_t len = 0;
    int rv = 0;
    if (!c->orphan) {
        craft__mp_buf_t b;
        craft__mp_buf_init(&b);
        rv = craft__wire_encode_response(&b, CRAFT__WIRE_FORMAT_DEFAULT, rpc->type,
                                         err != 0 ? craft_strerror(err) : NULL, &rpc->resp);
        if (rv == 0) {
            bytes = craft__mp_buf_steal(&b, &len);
            if (bytes == NULL) {
                rv = CRAFT_ENOMEM;
            }
        } else {
            craft__mp_buf_free(&b);
        }
    }
    craft__inproc_call_respond(&c->base, rv, bytes, len);
}

/* The snapshot stream broke at the drawn point. */
static void call_on_cut(craft__inproc_call_t *base)
{
    call_t *c = (call_t *)base;
    pthread_mutex_lock(&c->net->mu);
    c->net->st.snapshot_cuts++;
    pthread_mutex_unlock(&c->net->mu);
}

static call_t *call_new(craft_fuzzy_net_t *net)
{
    call_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    if (craft__inproc_call_init(&c->base, call_destroy) != 0) {
        free(c);
        return NULL;
    }
    c->base.on_cut = call_on_cut;
    c->net = net;
    return c;
}

/* Decodes `bytes` into c->base.rpc. */
static int call_decode(call_t *c, const uint8_t *bytes, size_t len)
{
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    size_t consumed = 0;
    int rv = craft__wire_decode_request(&d, bytes, len, &c->base.rpc, &consumed);
    if (rv != 0 || consumed != len) {
        if (rv == 0) {
            craft__wire_request_free(&c->base.rpc);
        }
        return rv == 0 || rv == CRAFT__WIRE_NEED_MORE ? CRAFT_EPROTOCOL : rv;
    }
    c->decoded = true;
    c->base.rpc.respond = call_respond;
    c->base.rpc.transport_data = c;
    return 0;
}

/* The live transport at endpoint `ep`, referenced; NULL when none. */
static fz_trans_t *ep_trans(craft_fuzzy_net_t *n, int ep)
{
    fz_trans_t *t = NULL;
    pthread_mutex_lock(&n->mu);
    if (ep >= 0 && n->eps[ep].t != NULL) {
        t = n->eps[ep].t;
        trans_ref(t);
    }
    pthread_mutex_unlock(&n->mu);
    return t;
}

static void run_hook(craft_fuzzy_net_t *n, int from, int to, const craft_rpc_t *rpc)
{
    pthread_mutex_lock(&n->mu);
    craft_fuzzy_rpc_hook_fn fn = n->hook;
    void *arg = n->hook_arg;
    const char *fa = n->eps[from].addr, *ta = n->eps[to].addr;
    n->st.delivered++;
    pthread_mutex_unlock(&n->mu);
    if (fn != NULL) {
        fn(arg, fa, ta, rpc);
    }
}

/* Waits on the call's cond until `at_us` (monotonic) or a cancel; false
 * when cancelled. */
static bool call_sleep_until(craft__inproc_call_t *c, int64_t at_us)
{
    struct timespec ts = abs_deadline_us(at_us);
    pthread_mutex_lock(&c->mu);
    while (!c->cancelled) {
        if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) == ETIMEDOUT) {
            break;
        }
    }
    bool ok = !c->cancelled;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static void schedule_dup(craft_fuzzy_net_t *n, int from, int to, const uint8_t *bytes,
                         size_t len, int64_t delay_us)
{
    dup_t *d = calloc(1, sizeof *d);
    if (d == NULL) {
        return;
    }
    d->bytes = malloc(len);
    if (d->bytes == NULL) {
        free(d);
        return;
    }
    memcpy(d->bytes, bytes, len);
    d->len = len;
    d->from = from;
    d->to = to;
    d->due_us = fz_now_us() + delay_us;
    pthread_mutex_lock(&n->mu);
    if (n->stopping) {
        pthread_mutex_unlock(&n->mu);
        free(d->bytes);
        free(d);
        return;
    }
    dup_t **pp = &n->dups;
    while (*pp != NULL && (*pp)->due_us <= d->due_us) {
        pp = &(*pp)->next;
    }
    d->next = *pp;
    *pp = d;
    n->st.duplicated++;
    pthread_cond_signal(&n->dup_cond);
    pthread_mutex_unlock(&n->mu);
}

static void *dup_main(void *arg)
{
    craft_fuzzy_net_t *n = arg;
    pthread_mutex_lock(&n->mu);
    while (!n->stopping) {
        if (n->dups == NULL) {
            pthread_cond_wait(&n->dup_cond, &n->mu);
            continue;
        }
        int64_t now = fz_now_us();
        if (n->dups->due_us > now) {
            struct timespec ts = abs_deadline_us(n->dups->due_us);
            pthread_cond_timedwait(&n->dup_cond, &n->mu, &ts);
            continue;
        }
        dup_t *d = n->dups;
        n->dups = d->next;
        bool down = n->down[d->from][d->to] || n->eps[d->from].node_down ||
                    n->eps[d->to].node_down;
        pthread_mutex_unlock(&n->mu);
        fz_trans_t *peer = down ? NULL : ep_trans(n, d->to);
        if (peer != NULL) {
            call_t *c = call_new(n);
            if (c != NULL) {
                c->orphan = true;
                if (call_decode(c, d->bytes, d->len) == 0) {
                    run_hook(n, d->from, d->to, &c->base.rpc);
                    craft__inproc_dispatch(&peer->core, &c->base);
                }
                craft__inproc_call_unref(&c->base);
            }
            trans_unref(peer);
        }
        free(d->bytes);
        free(d);
        pthread_mutex_lock(&n->mu);
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

/* Encodes a request and records what election safety needs. */
static int encode_req(fz_trans_t *t, craft_rpc_type_t type, const void *req, uint8_t **bytes,
                      size_t *len)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    int rv = craft__wire_encode_request(&b, CRAFT__WIRE_FORMAT_DEFAULT, type, req);
    if (rv != 0) {
        craft__mp_buf_free(&b);
        return rv;
    }
    *bytes = craft__mp_buf_steal(&b, len);
    if (*bytes == NULL) {
        return CRAFT_ENOMEM;
    }
    if (type == CRAFT_RPC_APPEND_ENTRIES) {
        pthread_mutex_lock(&t->net->mu);
        record_append(t->net, t->addr, req);
        pthread_mutex_unlock(&t->net->mu);
    }
    return 0;
}

/* Copies a decoded response body out with header strings interned in t. */
static void resp_out(fz_trans_t *t, craft_rpc_type_t type, craft__wire_response_t *w, void *resp)
{
    craft_rpc_header_t *h = NULL;
    switch (type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        memcpy(resp, &w->body.append_entries, sizeof w->body.append_entries);
        h = &((craft_append_entries_resp_t *)resp)->header;
        break;
    case CRAFT_RPC_REQUEST_VOTE:
        memcpy(resp, &w->body.request_vote, sizeof w->body.request_vote);
        h = &((craft_request_vote_resp_t *)resp)->header;
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        memcpy(resp, &w->body.request_prevote, sizeof w->body.request_prevote);
        h = &((craft_request_prevote_resp_t *)resp)->header;
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        memcpy(resp, &w->body.install_snapshot, sizeof w->body.install_snapshot);
        h = &((craft_install_snapshot_resp_t *)resp)->header;
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        memcpy(resp, &w->body.timeout_now, sizeof w->body.timeout_now);
        h = &((craft_timeout_now_resp_t *)resp)->header;
        break;
    }
    if (h != NULL) {
        h->id = craft__inproc_intern(&t->core, h->id);
        h->addr = craft__inproc_intern(&t->core, h->addr);
    }
}

static void count(craft_fuzzy_net_t *n, uint64_t *field)
{
    pthread_mutex_lock(&n->mu);
    (*field)++;
    pthread_mutex_unlock(&n->mu);
}

/* One RPC of `type`, already encoded, from t to `target`. */
static int do_call(fz_trans_t *t, const char *target, craft_rpc_type_t type,
                   const uint8_t *bytes, size_t len, void *resp, craft_reader_t *data,
                   int64_t size, int64_t timeout_ms, pipeline_t *p);

struct pipeline {
    craft_pipeline_t iface;
    fz_trans_t *t;
    char *target;
    pthread_mutex_t mu;
    craft__pq_t q; /* requests and outcomes, under mu */
    int n_workers;
    pthread_t workers[MAX_PIPELINE_WORKERS];
    craft__queue_t link; /* in t->core.pipelines, under t->core.mu */
};

static bool pipeline_closed(pipeline_t *p)
{
    pthread_mutex_lock(&p->mu);
    bool closed = p->q.closed;
    pthread_mutex_unlock(&p->mu);
    return closed;
}

static int do_call(fz_trans_t *t, const char *target, craft_rpc_type_t type,
                   const uint8_t *bytes, size_t len, void *resp, craft_reader_t *data,
                   int64_t size, int64_t timeout_ms, pipeline_t *p)
{
    craft_fuzzy_net_t *n = t->net;
    int64_t start = fz_now_us();
    int64_t deadline = start + timeout_ms * 1000;
    fate_t fate;
    memset(&fate, 0, sizeof fate);
    pthread_mutex_lock(&n->mu);
    n->st.requests++;
    int to = ep_find(n, target, false);
    if (to >= 0) {
        draw_fate(n, t->ep, to, type, size, &fate);
    }
    pthread_mutex_unlock(&n->mu);

    call_t *call = call_new(n);
    if (call == NULL) {
        return CRAFT_ENOMEM;
    }
    craft__inproc_call_t *c = &call->base;
    c->owner = p;
    int rv = craft__inproc_call_register(&t->core, c);
    if (rv != 0) {
        craft__inproc_call_unref(c);
        return rv;
    }
    if (p != NULL && pipeline_closed(p)) {
        craft__inproc_call_cancel(c);
    }

    fz_trans_t *peer = NULL;
    if (to < 0 || fate.down) {
        count(n, &n->st.unreachable);
        rv = call_sleep_until(c, start + 1000) ? CRAFT_EUNREACHABLE : CRAFT_ECLOSED;
        goto out;
    }
    if (fate.drop_req) {
        count(n, &n->st.dropped);
        rv = call_sleep_until(c, start + timeout_ms * 250) ? CRAFT_ETIMEDOUT : CRAFT_ECLOSED;
        goto out;
    }
    if (!call_sleep_until(c, start + fate.d_req)) {
        rv = CRAFT_ECLOSED;
        goto out;
    }
    /* A link cut while the message was in flight loses it. */
    pthread_mutex_lock(&n->mu);
    bool down_now = n->down[t->ep][to] || n->eps[t->ep].node_down || n->eps[to].node_down;
    pthread_mutex_unlock(&n->mu);
    if (down_now) {
        count(n, &n->st.unreachable);
        rv = CRAFT_EUNREACHABLE;
        goto out;
    }
    peer = ep_trans(n, to);
    if (peer == NULL) {
        count(n, &n->st.unreachable);
        rv = CRAFT_EUNREACHABLE;
        goto out;
    }
    rv = call_decode(call, bytes, len);
    if (rv != 0) {
        count(n, &n->st.codec_errors);
        fprintf(stderr, "fuzzy net: request of type %d does not decode: %s\n", (int)type,
                craft_strerror(rv));
        goto out;
    }
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        count(n, &n->st.snapshots);
        craft__inproc_call_stream(c, data, c->rpc.req.install_snapshot.size, fate.cut_at);
    }
    if (fate.dup) {
        schedule_dup(n, t->ep, to, bytes, len, fate.d_dup);
    }
    run_hook(n, t->ep, to, &c->rpc);
    rv = craft__inproc_dispatch(&peer->core, c);
    if (rv != 0) {
        count(n, &n->st.unreachable);
        goto out;
    }
    struct timespec ts = abs_deadline_us(deadline);
    rv = craft__inproc_call_wait(c, &ts);
    if (rv != 0) {
        goto out;
    }
    if (c->err != 0) {
        rv = c->err;
        count(n, &n->st.codec_errors);
        fprintf(stderr, "fuzzy net: response of type %d does not encode: %s\n", (int)type,
                craft_strerror(rv));
        goto out;
    }
    if (fate.drop_resp) {
        count(n, &n->st.dropped_resp);
        int64_t at = fz_now_us() + timeout_ms * 250;
        rv = call_sleep_until(c, at < deadline ? at : deadline) ? CRAFT_ETIMEDOUT : CRAFT_ECLOSED;
        goto out;
    }
    if (!call_sleep_until(c, fz_now_us() + fate.d_resp)) {
        rv = CRAFT_ECLOSED;
        goto out;
    }
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    craft__wire_response_t w;
    memset(&w, 0, sizeof w);
    size_t consumed = 0;
    rv = craft__wire_decode_response(&d, type, c->body, c->body_len, &w, &consumed);
    if (rv != 0 || consumed != c->body_len) {
        if (rv == 0) {
            craft__wire_response_free(&w);
        }
        count(n, &n->st.codec_errors);
        fprintf(stderr, "fuzzy net: response of type %d does not decode\n", (int)type);
        rv = CRAFT_EPROTOCOL;
        goto out;
    }
    if (w.error != NULL) {
        rv = code_of(w.error);
    } else {
        resp_out(t, type, &w, resp);
        rv = 0;
    }
    craft__wire_response_free(&w);

out:
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        craft__inproc_call_stream_end(c);
    }
    if (peer != NULL) {
        trans_unref(peer);
    }
    craft__inproc_call_unregister(&t->core, c);
    craft__inproc_call_unref(c);
    return rv;
}

static int sync_rpc(void *ctx, const char *target, craft_rpc_type_t type, const void *req,
                    void *resp, craft_reader_t *data, int64_t factor)
{
    fz_trans_t *t = ctx;
    if (target == NULL || req == NULL || resp == NULL) {
        return CRAFT_EINVAL;
    }
    int64_t size = 0;
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        size = ((const craft_install_snapshot_req_t *)req)->size;
        if (size < 0 || (size > 0 && (data == NULL || data->read == NULL))) {
            return CRAFT_EINVAL;
        }
    }
    uint8_t *bytes = NULL;
    size_t len = 0;
    int rv = encode_req(t, type, req, &bytes, &len);
    if (rv != 0) {
        return rv;
    }
    rv = do_call(t, target, type, bytes, len, resp, data, size, t->net->timeout_ms * factor,
                 NULL);
    free(bytes);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* Pipelines                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct pl_item {
    craft__pq_item_t q;
    uint8_t *bytes; /* the encoded request */
    size_t len;
} pl_item_t;

static void pl_item_free(craft__pq_item_t *qi)
{
    pl_item_t *it = CRAFT__PQ_CONTAINER(qi, pl_item_t, q);
    free(it->bytes);
    free(it);
}

/* One of the pipeline's senders; with several, requests overtake each
 * other on the way and the queue puts the outcomes back in order. */
static void *pipeline_worker(void *arg)
{
    pipeline_t *p = arg;
    craft__pq_item_t *qi;
    while ((qi = craft__pq_take(&p->q)) != NULL) {
        pl_item_t *it = CRAFT__PQ_CONTAINER(qi, pl_item_t, q);
        craft_append_entries_resp_t resp;
        memset(&resp, 0, sizeof resp);
        int err = do_call(p->t, p->target, CRAFT_RPC_APPEND_ENTRIES, it->bytes, it->len, &resp,
                          NULL, 0, p->t->net->timeout_ms, p);
        craft__pq_complete(&p->q, qi, err, &resp);
    }
    return NULL;
}

static int pipeline_append(void *ctx, const craft_append_entries_req_t *req, void *tag)
{
    pipeline_t *p = ctx;
    if (req == NULL) {
        return CRAFT_EINVAL;
    }
    pl_item_t *it = calloc(1, sizeof *it);
    if (it == NULL) {
        return CRAFT_ENOMEM;
    }
    int rv = encode_req(p->t, CRAFT_RPC_APPEND_ENTRIES, req, &it->bytes, &it->len);
    if (rv != 0) {
        free(it);
        return rv;
    }
    it->q.tag = tag;
    rv = craft__pq_push(&p->q, &it->q);
    if (rv != 0) {
        pl_item_free(&it->q);
    }
    return rv;
}

static int pipeline_next(void *ctx, craft_append_entries_resp_t *resp, void **tag)
{
    pipeline_t *p = ctx;
    if (resp == NULL || tag == NULL) {
        return CRAFT_EINVAL;
    }
    craft__pq_item_t *done;
    int rv = craft__pq_next_response(&p->q, resp, tag, &done);
    if (done != NULL) {
        pl_item_free(done);
    }
    return rv;
}

static int pipeline_set_handler(void *ctx, craft_pipeline_response_fn fn, void *arg)
{
    pipeline_t *p = ctx;
    return craft__pq_set_response_handler(&p->q, fn, arg);
}

static void pipeline_close(void *ctx)
{
    pipeline_t *p = ctx;
    pthread_mutex_lock(&p->mu);
    bool first = craft__pq_stop_locked(&p->q);
    pthread_mutex_unlock(&p->mu);
    if (first) {
        /* Not under p->mu: core.mu comes first. */
        fz_trans_t *t = p->t;
        pthread_mutex_lock(&t->core.mu);
        craft__inproc_cancel_calls_locked(&t->core, p);
        pthread_mutex_unlock(&t->core.mu);
    }
    craft__pq_hand_back(&p->q);
}

static void pipeline_free(void *ctx)
{
    pipeline_t *p = ctx;
    if (p == NULL) {
        return;
    }
    pipeline_close(p);
    for (int i = 0; i < p->n_workers; i++) {
        pthread_join(p->workers[i], NULL);
    }
    fz_trans_t *t = p->t;
    pthread_mutex_lock(&t->core.mu);
    craft__queue_remove(&p->link); /* a no-op when trans_pipeline gave up on it */
    pthread_mutex_unlock(&t->core.mu);
    craft__pq_destroy(&p->q); /* the workers are gone: none is SENDING */
    free(p->target);
    pthread_mutex_destroy(&p->mu);
    free(p);
    trans_unref(t);
}

static int trans_pipeline(void *ctx, const char *id, const char *target, craft_pipeline_t **out)
{
    fz_trans_t *t = ctx;
    (void)id;
    if (target == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    pipeline_t *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return CRAFT_ENOMEM;
    }
    p->target = strdup(target);
    if (p->target == NULL) {
        free(p);
        return CRAFT_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    if (craft__pq_init(&p->q, &p->mu, PIPELINE_WINDOW, pl_item_free) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p->target);
        free(p);
        return CRAFT_ENOMEM;
    }
    craft__queue_init(&p->link);
    p->iface.ctx = p;
    p->iface.append_entries = pipeline_append;
    p->iface.next_response = pipeline_next;
    p->iface.close = pipeline_close;
    p->iface.free = pipeline_free;
    pthread_mutex_lock(&t->net->mu);
    p->n_workers = t->net->faults.reorder ? MAX_PIPELINE_WORKERS : 1;
    pthread_mutex_unlock(&t->net->mu);
    trans_ref(t);
    p->t = t;
    pthread_mutex_lock(&t->core.mu);
    if (t->core.closed) {
        pthread_mutex_unlock(&t->core.mu);
        p->n_workers = 0;
        pipeline_free(p);
        return CRAFT_ECLOSED;
    }
    /* Every other pipeline (the parity drawn from the seed) offers the
     * response callback, as the TCP and inmem transports do, so runs cover
     * both of craft's ways of taking responses: on the transport's thread,
     * and from next_response on a decode thread. */
    if (((t->net->seed >> (t->ep % 32)) + t->pipelines_opened++) % 2 == 0) {
        p->iface.set_response_handler = pipeline_set_handler;
    }
    for (int i = 0; i < p->n_workers; i++) {
        if (pthread_create(&p->workers[i], NULL, pipeline_worker, p) != 0) {
            p->n_workers = i;
            pthread_mutex_unlock(&t->core.mu);
            pipeline_free(p);
            return CRAFT_ENOMEM;
        }
    }
    craft__queue_push(&t->core.pipelines, &p->link);
    pthread_mutex_unlock(&t->core.mu);
    *out = &p->iface;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Transport vtable                                                          */
/* ------------------------------------------------------------------------ */

static void trans_set_rpc_handler(void *ctx, craft_rpc_handler_fn fn, void *arg)
{
    fz_trans_t *t = ctx;
    craft__inproc_set_handler(&t->core, &t->core.rpc_handler, fn, arg);
}

static void trans_set_hb_handler(void *ctx, craft_rpc_handler_fn fn, void *arg)
{
    fz_trans_t *t = ctx;
    craft__inproc_set_handler(&t->core, &t->core.hb_handler, fn, arg);
}

static const char *trans_local_addr(void *ctx)
{
    return ((fz_trans_t *)ctx)->addr;
}

static int trans_ae(void *ctx, const char *id, const char *target,
                    const craft_append_entries_req_t *req, craft_append_entries_resp_t *resp)
{
    (void)id;
    return sync_rpc(ctx, target, CRAFT_RPC_APPEND_ENTRIES, req, resp, NULL, 1);
}

static int trans_rv(void *ctx, const char *id, const char *target,
                    const craft_request_vote_req_t *req, craft_request_vote_resp_t *resp)
{
    (void)id;
    return sync_rpc(ctx, target, CRAFT_RPC_REQUEST_VOTE, req, resp, NULL, 1);
}

static int trans_prevote(void *ctx, const char *id, const char *target,
                         const craft_request_prevote_req_t *req,
                         craft_request_prevote_resp_t *resp)
{
    (void)id;
    return sync_rpc(ctx, target, CRAFT_RPC_REQUEST_PREVOTE, req, resp, NULL, 1);
}

static int trans_is(void *ctx, const char *id, const char *target,
                    const craft_install_snapshot_req_t *req, craft_install_snapshot_resp_t *resp,
                    craft_reader_t *data)
{
    (void)id;
    return sync_rpc(ctx, target, CRAFT_RPC_INSTALL_SNAPSHOT, req, resp, data, LONG_RPC_FACTOR);
}

static int trans_tn(void *ctx, const char *id, const char *target,
                    const craft_timeout_now_req_t *req, craft_timeout_now_resp_t *resp)
{
    (void)id;
    return sync_rpc(ctx, target, CRAFT_RPC_TIMEOUT_NOW, req, resp, NULL, LONG_RPC_FACTOR);
}

static void trans_close(void *ctx)
{
    fz_trans_t *t = ctx;
    if (t == NULL) {
        return;
    }
    craft_fuzzy_net_t *n = t->net;
    pthread_mutex_lock(&n->mu);
    if (n->eps[t->ep].t == t) {
        n->eps[t->ep].t = NULL;
    }
    pthread_mutex_unlock(&n->mu);
    /* No new calls or handler invocations; outgoing calls (the pipelines'
     * included) fail with CRAFT_ECLOSED. */
    pthread_mutex_lock(&t->core.mu);
    t->core.closed = true;
    craft__inproc_cancel_calls_locked(&t->core, NULL);
    /* Pipelines are only stopped, under core.mu, as the inmem and TCP
     * transports do: the owner may free a pipeline as soon as core.mu is
     * released, so nothing here may touch one afterwards. The owner's
     * close (or free) hands back what is left. */
    craft__queue_t *e;
    CRAFT__QUEUE_FOREACH(e, &t->core.pipelines) {
        pipeline_t *p = CRAFT__QUEUE_DATA(e, pipeline_t, link);
        pthread_mutex_lock(&p->mu);
        craft__pq_stop_locked(&p->q);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&t->core.mu);
    /* Wait for handler invocations in progress. */
    craft__inproc_clear_handlers(&t->core);
    trans_unref(t);
}

int craft_fuzzy_net_transport(craft_fuzzy_net_t *n, const char *addr, craft_transport_t **out)
{
    if (n == NULL || addr == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    fz_trans_t *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return CRAFT_ENOMEM;
    }
    t->addr = strdup(addr);
    if (t->addr == NULL) {
        free(t);
        return CRAFT_ENOMEM;
    }
    if (craft__inproc_init(&t->core) != 0) {
        free(t->addr);
        free(t);
        return CRAFT_ENOMEM;
    }
    atomic_init(&t->refs, 1);
    t->net = n;
    t->iface.ctx = t;
    t->iface.set_rpc_handler = trans_set_rpc_handler;
    t->iface.set_heartbeat_handler = trans_set_hb_handler;
    t->iface.local_addr = trans_local_addr;
    t->iface.append_entries = trans_ae;
    t->iface.request_vote = trans_rv;
    t->iface.request_prevote = trans_prevote;
    t->iface.install_snapshot = trans_is;
    t->iface.timeout_now = trans_tn;
    t->iface.append_entries_pipeline = trans_pipeline;
    t->iface.close = trans_close;
    pthread_mutex_lock(&n->mu);
    int ep = ep_find(n, addr, true);
    if (ep < 0 || n->eps[ep].t != NULL) {
        pthread_mutex_unlock(&n->mu);
        t->ep = 0;
        trans_unref(t);
        return ep < 0 ? CRAFT_ENOMEM : CRAFT_EINVAL;
    }
    t->ep = ep;
    n->eps[ep].t = t;
    pthread_mutex_unlock(&n->mu);
    *out = &t->iface;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The network                                                               */
/* ------------------------------------------------------------------------ */

int craft_fuzzy_net_new(uint64_t seed, int64_t rpc_timeout_ms, craft_fuzzy_net_t **out)
{
    if (out == NULL || rpc_timeout_ms <= 0) {
        return CRAFT_EINVAL;
    }
    craft_fuzzy_net_t *n = calloc(1, sizeof *n);
    if (n == NULL) {
        return CRAFT_ENOMEM;
    }
    pthread_mutex_init(&n->mu, NULL);
    craft__cond_init_monotonic(&n->dup_cond);
    n->seed = seed;
    n->timeout_ms = rpc_timeout_ms;
    if (pthread_create(&n->dup_thread, NULL, dup_main, n) != 0) {
        pthread_cond_destroy(&n->dup_cond);
        pthread_mutex_destroy(&n->mu);
        free(n);
        return CRAFT_ENOMEM;
    }
    *out = n;
    return 0;
}

void craft_fuzzy_net_free(craft_fuzzy_net_t *n)
{
    if (n == NULL) {
        return;
    }
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    pthread_cond_signal(&n->dup_cond);
    pthread_mutex_unlock(&n->mu);
    pthread_join(n->dup_thread, NULL);
    while (n->dups != NULL) {
        dup_t *d = n->dups;
        n->dups = d->next;
        free(d->bytes);
        free(d);
    }
    for (size_t i = 0; i < n->n_eps; i++) {
        free(n->eps[i].addr);
    }
    for (size_t i = 0; i < n->n_terms; i++) {
        free(n->terms[i].id);
    }
    free(n->terms);
    craft_fuzzy_report_free(&n->safety);
    pthread_cond_destroy(&n->dup_cond);
    pthread_mutex_destroy(&n->mu);
    free(n);
}

void craft_fuzzy_net_set_faults(craft_fuzzy_net_t *n, const craft_fuzzy_faults_t *f)
{
    pthread_mutex_lock(&n->mu);
    if (f != NULL) {
        n->faults = *f;
    } else {
        memset(&n->faults, 0, sizeof n->faults);
    }
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_set_slow(craft_fuzzy_net_t *n, const char *addr, int64_t extra_us)
{
    pthread_mutex_lock(&n->mu);
    int ep = ep_find(n, addr, true);
    if (ep >= 0) {
        n->eps[ep].slow_us = extra_us > 0 ? extra_us : 0;
    }
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_set_link(craft_fuzzy_net_t *n, const char *from, const char *to, bool up)
{
    pthread_mutex_lock(&n->mu);
    int a = ep_find(n, from, true), b = ep_find(n, to, true);
    if (a >= 0 && b >= 0) {
        n->down[a][b] = !up;
    }
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_isolate(craft_fuzzy_net_t *n, const char *addr, bool isolated)
{
    pthread_mutex_lock(&n->mu);
    int a = ep_find(n, addr, true);
    if (a >= 0) {
        for (size_t b = 0; b < MAX_EP; b++) {
            if ((int)b != a) {
                n->down[a][b] = isolated;
                n->down[b][a] = isolated;
            }
        }
    }
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_partition(craft_fuzzy_net_t *n, const char *const *addrs, const int *groups,
                               size_t count)
{
    pthread_mutex_lock(&n->mu);
    for (size_t i = 0; i < count; i++) {
        int a = ep_find(n, addrs[i], true);
        for (size_t j = 0; j < count; j++) {
            int b = ep_find(n, addrs[j], true);
            if (i != j && a >= 0 && b >= 0) {
                n->down[a][b] = groups[i] != groups[j];
            }
        }
    }
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_set_node_down(craft_fuzzy_net_t *n, const char *addr, bool down)
{
    pthread_mutex_lock(&n->mu);
    int ep = ep_find(n, addr, true);
    if (ep >= 0) {
        n->eps[ep].node_down = down;
    }
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_heal(craft_fuzzy_net_t *n)
{
    pthread_mutex_lock(&n->mu);
    memset(n->down, 0, sizeof n->down);
    for (size_t i = 0; i < n->n_eps; i++) {
        n->eps[i].slow_us = 0;
    }
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_set_hook(craft_fuzzy_net_t *n, craft_fuzzy_rpc_hook_fn fn, void *arg)
{
    pthread_mutex_lock(&n->mu);
    n->hook = fn;
    n->hook_arg = arg;
    pthread_mutex_unlock(&n->mu);
}

void craft_fuzzy_net_stats(craft_fuzzy_net_t *n, craft_fuzzy_net_stats_t *out)
{
    pthread_mutex_lock(&n->mu);
    *out = n->st;
    pthread_mutex_unlock(&n->mu);
}
