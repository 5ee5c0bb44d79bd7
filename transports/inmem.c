/*
 * Loopback transport (hashicorp's InmemTransport): transports in one process
 * reach each other by address once connected.
 *
 * Design
 * ------
 * Topology. connect(a, b) records b in a->peers and a in b->sources; both
 * arrays of every transport are guarded by one process-wide mutex
 * (topology_mu). There is no address registry, so several clusters may use
 * the same addresses in one process. close(t) removes t from the peers of
 * everyone in t->sources (and itself from its peers' sources), so no other
 * transport can find it afterwards.
 *
 * Lifetime. Each transport is reference counted: its owner holds one
 * reference until close, a caller holds one on the target while it hands it
 * an RPC, each outgoing call holds one on its origin, and each pipeline holds
 * one on its transport. Memory goes when the last reference does, so a late
 * respond() or a pipeline freed after the transport stays safe.
 *
 * Calls. An RPC from a to address X looks X up among a's peers
 * (CRAFT_EUNREACHABLE when missing), deep-copies the request into one
 * allocation (entries with data/ext, strings, configuration) and hands the
 * resulting craft_rpc_t to the peer's heartbeat handler (AppendEntries
 * without entries, when set) or rpc handler (none: CRAFT_EUNREACHABLE). The
 * handler runs on the caller's thread; the caller then waits on the call's
 * condvar until respond(), the deadline (CRAFT_ETIMEDOUT) or a close of its
 * transport or pipeline (CRAFT_ECLOSED). A call is reference counted (caller
 * + consumer until respond) so it may be answered from any thread, before the
 * handler returns or long after the caller gave up.
 *
 * Response header strings are interned in the calling transport when respond
 * is called: they stay valid until the transport is freed, which covers the
 * contract "until the next RPC of the calling thread". The intern set only
 * grows with the number of distinct IDs/addresses seen, i.e. the cluster.
 *
 * InstallSnapshot streams the caller's reader through a wrapper embedded in
 * the call (so refcounted with it): it yields exactly req->size bytes, and
 * once the caller has returned (answered, timed out or closed) every read
 * fails with CRAFT_ECLOSED instead of touching the caller's reader.
 *
 * The call object, the handler slots, interning and the InstallSnapshot
 * reader are transports/inproc.h's, shared with the fuzzy harness's network;
 * what is the inmem transport's own is the topology and the deep copy.
 *
 * Handlers. Each handler slot counts invocations in progress by generation;
 * set_rpc_handler / set_heartbeat_handler wait until none of the previous
 * handler's invocations is in progress. They must therefore not be called
 * from inside a handler invocation of the same transport (it would wait for
 * itself).
 *
 * Pipeline. A worker thread sends queued AppendEntries one at a time through
 * the synchronous path, in order, and records each result in the pipeline's
 * queue (transports/pipeline_queue.h), which hands results out in order and
 * keeps at most PIPELINE_WINDOW requests unconsumed.
 *
 * Lock order: topology_mu is never held with another lock. Otherwise
 * transport mu (core.mu) -> pipeline mu -> call mu, and intern_mu /
 * reader_mu alone.
 */
#include "craft/inmem.h"

#include "lib/queue.h"
#include "transports/inproc.h"
#include "transports/pipeline_queue.h"
#include "transports/sync.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_MS 500
/* hashicorp's InmemTransport: InstallSnapshot and TimeoutNow get 10x. */
#define LONG_RPC_FACTOR 10
#define PIPELINE_WINDOW 128

static pthread_mutex_t topology_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct call call_t;
typedef struct pipeline pipeline_t;

typedef struct inmem_transport {
    craft_transport_t iface; /* handed out; ctx points back here */
    char *addr;
    int64_t timeout_ms;
    atomic_int refs;

    /* Under topology_mu. Arrays of inmem_transport_t * (void ** so that the
     * generic ptr_push/ptr_remove need no aliasing casts). */
    void **peers;   /* transports we reach */
    size_t n_peers;
    size_t cap_peers;
    void **sources; /* transports reaching us */
    size_t n_sources;
    size_t cap_sources;

    /* Handlers, calls in progress, pipelines (pipeline_t by link, not yet
     * freed) under core.mu; interned response strings. */
    craft__inproc_t core;
} inmem_transport_t;

struct call {
    craft__inproc_call_t base; /* first: respond() is handed &base.rpc */
    inmem_transport_t *origin; /* referenced */
    void *arena;               /* the deep copy of the request */
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* Appends `x` to a pointer array; false on allocation failure. */
static bool ptr_push(void ***arr, size_t *n, size_t *cap, void *x)
{
    if (*n == *cap) {
        size_t c = *cap == 0 ? 4 : *cap * 2;
        void **p = realloc(*arr, c * sizeof *p);
        if (p == NULL) {
            return false;
        }
        *arr = p;
        *cap = c;
    }
    (*arr)[(*n)++] = x;
    return true;
}

static void ptr_remove(void **arr, size_t *n, const void *x)
{
    for (size_t i = 0; i < *n; i++) {
        if (arr[i] == x) {
            arr[i] = arr[--*n];
            return;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Deep copy of requests into one allocation                                */
/* ------------------------------------------------------------------------ */

/* A bump allocator run twice: once with base == NULL to measure, once to
 * copy. Both passes make the same calls, so offsets agree. */
typedef struct bump {
    char *base;
    size_t off;
} bump_t;

static void *bump_alloc(bump_t *b, size_t n, size_t align)
{
    b->off = (b->off + align - 1) & ~(align - 1);
    void *p = b->base != NULL ? b->base + b->off : NULL;
    b->off += n;
    return p;
}

static const char *bump_str(bump_t *b, const char *s)
{
    if (s == NULL) {
        return NULL;
    }
    size_t n = strlen(s) + 1;
    char *p = bump_alloc(b, n, 1);
    if (p != NULL) {
        memcpy(p, s, n);
    }
    return p;
}

static const void *bump_bytes(bump_t *b, const void *src, size_t n)
{
    if (n == 0) {
        return NULL;
    }
    void *p = bump_alloc(b, n, 1);
    if (p != NULL) {
        memcpy(p, src, n);
    }
    return p;
}

static void copy_header(bump_t *b, craft_rpc_header_t *dst,
                        const craft_rpc_header_t *src)
{
    dst->protocol_version = src->protocol_version;
    dst->id = bump_str(b, src->id);
    dst->addr = bump_str(b, src->addr);
}

static void copy_ae(bump_t *b, craft_append_entries_req_t *dst,
                    const craft_append_entries_req_t *src)
{
    *dst = *src;
    copy_header(b, &dst->header, &src->header);
    dst->leader = bump_str(b, src->leader);
    craft_log_t *es = NULL;
    if (src->n_entries > 0) {
        es = bump_alloc(b, src->n_entries * sizeof *es, alignof(craft_log_t));
    }
    for (size_t i = 0; i < src->n_entries; i++) {
        const craft_log_t *e = &src->entries[i];
        const void *data = bump_bytes(b, e->data, e->len);
        const void *ext = bump_bytes(b, e->ext, e->ext_len);
        if (es != NULL) {
            es[i] = *e;
            es[i].data = data;
            es[i].ext = ext;
        }
    }
    dst->entries = es;
}

static void copy_is(bump_t *b, craft_install_snapshot_req_t *dst,
                    const craft_install_snapshot_req_t *src)
{
    *dst = *src;
    copy_header(b, &dst->header, &src->header);
    dst->leader = bump_str(b, src->leader);
    craft_server_t *ss = NULL;
    if (src->configuration.n > 0) {
        ss = bump_alloc(b, src->configuration.n * sizeof *ss,
                        alignof(craft_server_t));
    }
    for (size_t i = 0; i < src->configuration.n; i++) {
        const craft_server_t *s = &src->configuration.servers[i];
        const char *id = bump_str(b, s->id);
        const char *address = bump_str(b, s->address);
        if (ss != NULL) {
            ss[i].suffrage = s->suffrage;
            ss[i].id = (char *)id;
            ss[i].address = (char *)address;
        }
    }
    dst->configuration.servers = ss;
}

/* Copies request `src` of `type` into `dst` (the matching union member of a
 * craft_rpc_t, or a bare craft_append_entries_req_t). */
static void copy_req(bump_t *b, craft_rpc_type_t type, void *dst,
                     const void *src)
{
    switch (type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        copy_ae(b, dst, src);
        break;
    case CRAFT_RPC_REQUEST_VOTE: {
        craft_request_vote_req_t *d = dst;
        const craft_request_vote_req_t *s = src;
        *d = *s;
        copy_header(b, &d->header, &s->header);
        d->candidate = bump_str(b, s->candidate);
        break;
    }
    case CRAFT_RPC_REQUEST_PREVOTE: {
        craft_request_prevote_req_t *d = dst;
        const craft_request_prevote_req_t *s = src;
        *d = *s;
        copy_header(b, &d->header, &s->header);
        break;
    }
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        copy_is(b, dst, src);
        break;
    case CRAFT_RPC_TIMEOUT_NOW: {
        craft_timeout_now_req_t *d = dst;
        const craft_timeout_now_req_t *s = src;
        *d = *s;
        copy_header(b, &d->header, &s->header);
        break;
    }
    }
}

/* Deep-copies `src` into `dst`; *arena (malloc'd) holds every pointed-to
 * byte and is freed by the owner of `dst`. Returns 0 or CRAFT_ENOMEM. */
static int deep_copy(craft_rpc_type_t type, void *dst, const void *src,
                     void **arena)
{
    bump_t b = {NULL, 0};
    copy_req(&b, type, dst, src);
    b.base = malloc(b.off > 0 ? b.off : 1);
    if (b.base == NULL) {
        return CRAFT_ENOMEM;
    }
    b.off = 0;
    copy_req(&b, type, dst, src);
    *arena = b.base;
    return 0;
}

/* Rejects requests whose pointers and lengths disagree. */
static int validate_req(craft_rpc_type_t type, const void *req,
                        const craft_reader_t *data)
{
    if (req == NULL) {
        return CRAFT_EINVAL;
    }
    if (type == CRAFT_RPC_APPEND_ENTRIES) {
        const craft_append_entries_req_t *ae = req;
        if (ae->n_entries > 0 && ae->entries == NULL) {
            return CRAFT_EINVAL;
        }
        for (size_t i = 0; i < ae->n_entries; i++) {
            const craft_log_t *e = &ae->entries[i];
            if ((e->len > 0 && e->data == NULL) ||
                (e->ext_len > 0 && e->ext == NULL)) {
                return CRAFT_EINVAL;
            }
        }
    } else if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        const craft_install_snapshot_req_t *is = req;
        if (is->size < 0 || (is->size > 0 && data == NULL) ||
            (is->configuration.n > 0 && is->configuration.servers == NULL)) {
            return CRAFT_EINVAL;
        }
        if (data != NULL && data->read == NULL) {
            return CRAFT_EINVAL;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Transport references                                                      */
/* ------------------------------------------------------------------------ */

static void transport_ref(inmem_transport_t *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

static void transport_unref(inmem_transport_t *t)
{
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    craft__inproc_destroy(&t->core);
    free(t->peers);
    free(t->sources);
    free(t->addr);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* Calls                                                                     */
/* ------------------------------------------------------------------------ */

static craft_rpc_header_t *resp_header(craft_rpc_t *rpc)
{
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        return &rpc->resp.append_entries.header;
    case CRAFT_RPC_REQUEST_VOTE:
        return &rpc->resp.request_vote.header;
    case CRAFT_RPC_REQUEST_PREVOTE:
        return &rpc->resp.request_prevote.header;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        return &rpc->resp.install_snapshot.header;
    case CRAFT_RPC_TIMEOUT_NOW:
        return &rpc->resp.timeout_now.header;
    }
    return NULL;
}

static void copy_resp_out(const craft_rpc_t *rpc, void *resp)
{
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        memcpy(resp, &rpc->resp.append_entries, sizeof rpc->resp.append_entries);
        break;
    case CRAFT_RPC_REQUEST_VOTE:
        memcpy(resp, &rpc->resp.request_vote, sizeof rpc->resp.request_vote);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        memcpy(resp, &rpc->resp.request_prevote, sizeof rpc->resp.request_prevote);
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        memcpy(resp, &rpc->resp.install_snapshot,
               sizeof rpc->resp.install_snapshot);
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        memcpy(resp, &rpc->resp.timeout_now, sizeof rpc->resp.timeout_now);
        break;
    }
}

static void call_destroy(craft__inproc_call_t *base)
{
    call_t *c = (call_t *)base;
    free(c->arena);
    transport_unref(c->origin);
    free(c);
}

/* rpc->respond: the consumer hands the rpc back. */
static void call_respond(craft_rpc_t *rpc, int err)
{
    call_t *c = (call_t *)rpc;
    if (err == 0) {
        /* The consumer may free its strings once respond returns. */
        craft_rpc_header_t *h = resp_header(rpc);
        if (h != NULL) {
            h->id = craft__inproc_intern(&c->origin->core, h->id);
            h->addr = craft__inproc_intern(&c->origin->core, h->addr);
        }
    }
    craft__inproc_call_respond(&c->base, err, NULL, 0);
}

static call_t *call_new(inmem_transport_t *origin, craft_rpc_type_t type,
                        const void *req, craft_reader_t *data)
{
    call_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    if (craft__inproc_call_init(&c->base, call_destroy) != 0) {
        goto err_after_alloc;
    }
    craft_rpc_t *rpc = &c->base.rpc;
    rpc->type = type;
    if (deep_copy(type, &rpc->req, req, &c->arena) != 0) {
        goto err_after_init;
    }
    rpc->respond = call_respond;
    rpc->transport_data = c;
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        craft__inproc_call_stream(&c->base, data,
                                  ((const craft_install_snapshot_req_t *)req)->size, -1);
    }
    transport_ref(origin);
    c->origin = origin;
    return c;

err_after_init:
    craft__inproc_call_fini(&c->base);
err_after_alloc:
    free(c);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Synchronous RPC                                                           */
/* ------------------------------------------------------------------------ */

struct pipeline {
    craft_pipeline_t iface;
    inmem_transport_t *t; /* referenced */
    char *target;
    pthread_t worker;

    pthread_mutex_t mu;
    craft__pq_t q; /* requests and outcomes, under mu */
    /* The worker's call, so close can cancel it; under mu. */
    craft__inproc_call_t *inflight;

    craft__queue_t link; /* in t->core.pipelines, under t->core.mu */
};

static inmem_transport_t *peer_lookup(inmem_transport_t *t, const char *target)
{
    inmem_transport_t *peer = NULL;
    pthread_mutex_lock(&topology_mu);
    for (size_t i = 0; i < t->n_peers; i++) {
        inmem_transport_t *candidate = t->peers[i];
        if (strcmp(candidate->addr, target) == 0) {
            peer = candidate;
            transport_ref(peer);
            break;
        }
    }
    pthread_mutex_unlock(&topology_mu);
    return peer;
}

/* Performs one RPC from `t` to `target` and waits for its answer. `p` is
 * the pipeline sending it, or NULL. `req` and `data` are borrowed for the
 * call; on success `resp` (of the type matching `type`) is filled and its
 * header strings stay valid while `t` lives. */
static int transport_rpc(inmem_transport_t *t, const char *target,
                         craft_rpc_type_t type, const void *req, void *resp,
                         craft_reader_t *data, int64_t timeout_ms,
                         pipeline_t *p)
{
    if (target == NULL || resp == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = validate_req(type, req, data);
    if (rv != 0) {
        return rv;
    }
    struct timespec deadline = craft__deadline_after_ms(timeout_ms);
    call_t *call = call_new(t, type, req, data);
    if (call == NULL) {
        return CRAFT_ENOMEM;
    }
    craft__inproc_call_t *c = &call->base;
    c->owner = p;

    /* Register, so that closing the transport or pipeline cancels us. */
    rv = craft__inproc_call_register(&t->core, c);
    if (rv != 0) {
        craft__inproc_call_unref(c);
        return rv;
    }
    if (p != NULL) {
        pthread_mutex_lock(&p->mu);
        if (p->q.closed) {
            craft__inproc_call_cancel(c);
        } else {
            p->inflight = c;
        }
        pthread_mutex_unlock(&p->mu);
    }

    if (craft__inproc_call_cancelled(c)) {
        rv = CRAFT_ECLOSED;
        goto out;
    }
    inmem_transport_t *peer = peer_lookup(t, target);
    if (peer == NULL) {
        rv = CRAFT_EUNREACHABLE;
        goto out;
    }
    rv = craft__inproc_dispatch(&peer->core, c);
    transport_unref(peer);
    if (rv != 0) {
        goto out;
    }

    rv = craft__inproc_call_wait(c, &deadline);
    if (rv == 0) {
        rv = c->err;
        if (rv == 0) {
            copy_resp_out(&c->rpc, resp);
        }
    }

out:
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        /* From now on the consumer's reads fail instead of touching `data`,
         * which the caller may free as soon as we return. */
        craft__inproc_call_stream_end(c);
    }
    if (p != NULL) {
        pthread_mutex_lock(&p->mu);
        p->inflight = NULL;
        pthread_mutex_unlock(&p->mu);
    }
    craft__inproc_call_unregister(&t->core, c);
    craft__inproc_call_unref(c);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* Pipeline                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct pl_item {
    craft__pq_item_t q;
    craft_append_entries_req_t req; /* deep copy, pointing into arena */
    void *arena;
} pl_item_t;

static void pl_item_free(craft__pq_item_t *qi)
{
    pl_item_t *it = CRAFT__PQ_CONTAINER(qi, pl_item_t, q);
    free(it->arena);
    free(it);
}

/* Sends the queued requests one at a time, in order, through the
 * synchronous path. */
static void *pipeline_worker(void *arg)
{
    pipeline_t *p = arg;
    craft__pq_item_t *qi;
    while ((qi = craft__pq_take(&p->q)) != NULL) {
        pl_item_t *it = CRAFT__PQ_CONTAINER(qi, pl_item_t, q);
        craft_append_entries_resp_t resp;
        memset(&resp, 0, sizeof resp);
        int err = transport_rpc(p->t, p->target, CRAFT_RPC_APPEND_ENTRIES,
                                &it->req, &resp, NULL, p->t->timeout_ms, p);
        craft__pq_complete(&p->q, qi, err, &resp);
    }
    return NULL;
}

static int pipeline_append_entries(void *ctx, const craft_append_entries_req_t *req,
                                   void *tag)
{
    pipeline_t *p = ctx;
    int rv = validate_req(CRAFT_RPC_APPEND_ENTRIES, req, NULL);
    if (rv != 0) {
        return rv;
    }
    pl_item_t *it = calloc(1, sizeof *it);
    if (it == NULL) {
        return CRAFT_ENOMEM;
    }
    rv = deep_copy(CRAFT_RPC_APPEND_ENTRIES, &it->req, req, &it->arena);
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

static int pipeline_next_response(void *ctx, craft_append_entries_resp_t *resp,
                                  void **tag)
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

/* Marks `p` closed and cancels its call in flight; p->mu held. Never waits
 * and never calls the response callback, so the transport's close may use it
 * under t->core.mu (the worker takes it to finish its call). */
static void pipeline_stop_locked(pipeline_t *p)
{
    if (craft__pq_stop_locked(&p->q) && p->inflight != NULL) {
        craft__inproc_call_cancel(p->inflight);
    }
}

static void pipeline_close(void *ctx)
{
    pipeline_t *p = ctx;
    pthread_mutex_lock(&p->mu);
    pipeline_stop_locked(p);
    pthread_mutex_unlock(&p->mu);
    craft__pq_hand_back(&p->q);
}

static int pipeline_set_response_handler(void *ctx, craft_pipeline_response_fn fn, void *arg)
{
    pipeline_t *p = ctx;
    return craft__pq_set_response_handler(&p->q, fn, arg);
}

static void pipeline_free(void *ctx)
{
    pipeline_t *p = ctx;
    if (p == NULL) {
        return;
    }
    pipeline_close(p); /* the contract asks for close first; be lenient */
    pthread_join(p->worker, NULL);

    inmem_transport_t *t = p->t;
    pthread_mutex_lock(&t->core.mu);
    craft__queue_remove(&p->link);
    pthread_mutex_unlock(&t->core.mu);

    craft__pq_destroy(&p->q); /* the worker is gone: none is SENDING */
    free(p->target);
    pthread_mutex_destroy(&p->mu);
    free(p);
    transport_unref(t);
}

static int transport_append_entries_pipeline(void *ctx, const char *id,
                                             const char *target,
                                             craft_pipeline_t **out)
{
    inmem_transport_t *t = ctx;
    (void)id;
    if (target == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    /* Like hashicorp's InmemTransport, refuse a pipeline to a peer we are
     * not connected to. */
    inmem_transport_t *peer = peer_lookup(t, target);
    if (peer == NULL) {
        return CRAFT_EUNREACHABLE;
    }
    transport_unref(peer);

    pipeline_t *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return CRAFT_ENOMEM;
    }
    p->target = strdup(target);
    if (p->target == NULL) {
        goto err_after_alloc;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        goto err_after_target;
    }
    if (craft__pq_init(&p->q, &p->mu, PIPELINE_WINDOW, pl_item_free) != 0) {
        goto err_after_mu;
    }
    craft__queue_init(&p->link);
    p->iface.ctx = p;
    p->iface.append_entries = pipeline_append_entries;
    p->iface.next_response = pipeline_next_response;
    p->iface.close = pipeline_close;
    p->iface.free = pipeline_free;
    p->iface.set_response_handler = pipeline_set_response_handler;
    transport_ref(t);
    p->t = t;

    pthread_mutex_lock(&t->core.mu);
    if (t->core.closed) {
        pthread_mutex_unlock(&t->core.mu);
        transport_unref(t);
        craft__pq_destroy(&p->q);
        pthread_mutex_destroy(&p->mu);
        free(p->target);
        free(p);
        return CRAFT_ECLOSED;
    }
    if (pthread_create(&p->worker, NULL, pipeline_worker, p) != 0) {
        pthread_mutex_unlock(&t->core.mu);
        transport_unref(t);
        goto err_after_queue;
    }
    craft__queue_push(&t->core.pipelines, &p->link);
    pthread_mutex_unlock(&t->core.mu);
    *out = &p->iface;
    return 0;

err_after_queue:
    craft__pq_destroy(&p->q);
err_after_mu:
    pthread_mutex_destroy(&p->mu);
err_after_target:
    free(p->target);
err_after_alloc:
    free(p);
    return CRAFT_ENOMEM;
}

/* ------------------------------------------------------------------------ */
/* The transport vtable                                                      */
/* ------------------------------------------------------------------------ */

static void transport_set_rpc_handler(void *ctx, craft_rpc_handler_fn fn,
                                      void *arg)
{
    inmem_transport_t *t = ctx;
    craft__inproc_set_handler(&t->core, &t->core.rpc_handler, fn, arg);
}

static void transport_set_heartbeat_handler(void *ctx, craft_rpc_handler_fn fn,
                                            void *arg)
{
    inmem_transport_t *t = ctx;
    craft__inproc_set_handler(&t->core, &t->core.hb_handler, fn, arg);
}

static const char *transport_local_addr(void *ctx)
{
    inmem_transport_t *t = ctx;
    return t->addr;
}

static int transport_append_entries(void *ctx, const char *id,
                                    const char *target,
                                    const craft_append_entries_req_t *req,
                                    craft_append_entries_resp_t *resp)
{
    inmem_transport_t *t = ctx;
    (void)id;
    return transport_rpc(t, target, CRAFT_RPC_APPEND_ENTRIES, req, resp, NULL,
                         t->timeout_ms, NULL);
}

static int transport_request_vote(void *ctx, const char *id, const char *target,
                                  const craft_request_vote_req_t *req,
                                  craft_request_vote_resp_t *resp)
{
    inmem_transport_t *t = ctx;
    (void)id;
    return transport_rpc(t, target, CRAFT_RPC_REQUEST_VOTE, req, resp, NULL,
                         t->timeout_ms, NULL);
}

static int transport_request_prevote(void *ctx, const char *id,
                                     const char *target,
                                     const craft_request_prevote_req_t *req,
                                     craft_request_prevote_resp_t *resp)
{
    inmem_transport_t *t = ctx;
    (void)id;
    return transport_rpc(t, target, CRAFT_RPC_REQUEST_PREVOTE, req, resp, NULL,
                         t->timeout_ms, NULL);
}

static int transport_install_snapshot(void *ctx, const char *id,
                                      const char *target,
                                      const craft_install_snapshot_req_t *req,
                                      craft_install_snapshot_resp_t *resp,
                                      craft_reader_t *data)
{
    inmem_transport_t *t = ctx;
    (void)id;
    return transport_rpc(t, target, CRAFT_RPC_INSTALL_SNAPSHOT, req, resp, data,
                         t->timeout_ms * LONG_RPC_FACTOR, NULL);
}

static int transport_timeout_now(void *ctx, const char *id, const char *target,
                                 const craft_timeout_now_req_t *req,
                                 craft_timeout_now_resp_t *resp)
{
    inmem_transport_t *t = ctx;
    (void)id;
    return transport_rpc(t, target, CRAFT_RPC_TIMEOUT_NOW, req, resp, NULL,
                         t->timeout_ms * LONG_RPC_FACTOR, NULL);
}

/* Removes every link from and to `t`. Called with topology_mu held. */
static void unlink_all(inmem_transport_t *t)
{
    for (size_t i = 0; i < t->n_peers; i++) {
        inmem_transport_t *peer = t->peers[i];
        ptr_remove(peer->sources, &peer->n_sources, t);
    }
    t->n_peers = 0;
    for (size_t i = 0; i < t->n_sources; i++) {
        inmem_transport_t *src = t->sources[i];
        ptr_remove(src->peers, &src->n_peers, t);
    }
    t->n_sources = 0;
}

static void transport_close(void *ctx)
{
    inmem_transport_t *t = ctx;
    if (t == NULL) {
        return;
    }
    /* Nobody can reach us, and we reach nobody. */
    pthread_mutex_lock(&topology_mu);
    unlink_all(t);
    pthread_mutex_unlock(&topology_mu);

    /* No new calls or handler invocations; outgoing calls and pipelines
     * fail with CRAFT_ECLOSED. */
    pthread_mutex_lock(&t->core.mu);
    t->core.closed = true;
    craft__inproc_cancel_calls_locked(&t->core, NULL);
    /* Only stopped: a full close would wait under core.mu for the worker's
     * call, which needs core.mu to finish, and would run the response
     * callback under it. The owner's close hands back what is left. */
    craft__queue_t *e;
    CRAFT__QUEUE_FOREACH(e, &t->core.pipelines) {
        pipeline_t *p = CRAFT__QUEUE_DATA(e, pipeline_t, link);
        pthread_mutex_lock(&p->mu);
        pipeline_stop_locked(p);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&t->core.mu);

    /* Wait for handler invocations in progress. */
    craft__inproc_clear_handlers(&t->core);

    /* Calls still returning, unanswered rpcs and unfreed pipelines hold
     * their own references. */
    transport_unref(t);
}

int craft_inmem_transport_new_with_timeout(const char *addr, int64_t timeout_ms,
                                           craft_transport_t **out)
{
    if (addr == NULL || out == NULL || timeout_ms <= 0 ||
        timeout_ms > INT64_MAX / 1000 / LONG_RPC_FACTOR) {
        return CRAFT_EINVAL;
    }
    inmem_transport_t *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return CRAFT_ENOMEM;
    }
    t->addr = strdup(addr);
    if (t->addr == NULL) {
        goto err_after_alloc;
    }
    if (craft__inproc_init(&t->core) != 0) {
        goto err_after_addr;
    }
    t->timeout_ms = timeout_ms;
    atomic_init(&t->refs, 1);
    t->iface.ctx = t;
    t->iface.set_rpc_handler = transport_set_rpc_handler;
    t->iface.set_heartbeat_handler = transport_set_heartbeat_handler;
    t->iface.local_addr = transport_local_addr;
    t->iface.append_entries = transport_append_entries;
    t->iface.request_vote = transport_request_vote;
    t->iface.request_prevote = transport_request_prevote;
    t->iface.install_snapshot = transport_install_snapshot;
    t->iface.timeout_now = transport_timeout_now;
    t->iface.append_entries_pipeline = transport_append_entries_pipeline;
    t->iface.close = transport_close;
    *out = &t->iface;
    return 0;

err_after_addr:
    free(t->addr);
err_after_alloc:
    free(t);
    return CRAFT_ENOMEM;
}

int craft_inmem_transport_new(const char *addr, craft_transport_t **out)
{
    return craft_inmem_transport_new_with_timeout(addr, DEFAULT_TIMEOUT_MS, out);
}

/* ------------------------------------------------------------------------ */
/* Topology                                                                  */
/* ------------------------------------------------------------------------ */

void craft_inmem_transport_connect(craft_transport_t *a, craft_transport_t *b)
{
    if (a == NULL || b == NULL) {
        return;
    }
    inmem_transport_t *ta = a->ctx;
    inmem_transport_t *tb = b->ctx;
    pthread_mutex_lock(&topology_mu);
    for (size_t i = 0; i < ta->n_peers; i++) {
        inmem_transport_t *old = ta->peers[i];
        if (old == tb) {
            goto out; /* already connected */
        }
        if (strcmp(old->addr, tb->addr) == 0) {
            /* Addresses are keys (hashicorp's map): the newer transport at
             * this address replaces the older one. */
            ptr_remove(ta->peers, &ta->n_peers, old);
            ptr_remove(old->sources, &old->n_sources, ta);
            break;
        }
    }
    /* The header gives connect no error return: on allocation failure the
     * link is not made and RPCs keep failing with CRAFT_EUNREACHABLE. */
    if (!ptr_push(&ta->peers, &ta->n_peers, &ta->cap_peers, tb)) {
        goto out;
    }
    if (!ptr_push(&tb->sources, &tb->n_sources, &tb->cap_sources, ta)) {
        ta->n_peers--;
    }
out:
    pthread_mutex_unlock(&topology_mu);
}

void craft_inmem_transport_disconnect(craft_transport_t *a, craft_transport_t *b)
{
    if (a == NULL || b == NULL) {
        return;
    }
    inmem_transport_t *ta = a->ctx;
    inmem_transport_t *tb = b->ctx;
    pthread_mutex_lock(&topology_mu);
    ptr_remove(ta->peers, &ta->n_peers, tb);
    ptr_remove(tb->sources, &tb->n_sources, ta);
    pthread_mutex_unlock(&topology_mu);
}

void craft_inmem_transport_disconnect_all(craft_transport_t *a)
{
    if (a == NULL) {
        return;
    }
    inmem_transport_t *ta = a->ctx;
    pthread_mutex_lock(&topology_mu);
    for (size_t i = 0; i < ta->n_peers; i++) {
        inmem_transport_t *peer = ta->peers[i];
        ptr_remove(peer->sources, &peer->n_sources, ta);
    }
    ta->n_peers = 0;
    pthread_mutex_unlock(&topology_mu);
}

void craft_inmem_transport_connect_all(craft_transport_t **ts, size_t n)
{
    if (ts == NULL) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            if (i != j) {
                craft_inmem_transport_connect(ts[i], ts[j]);
            }
        }
    }
}

void craft_inmem_transport_partition(craft_transport_t *a, craft_transport_t *b)
{
    craft_inmem_transport_disconnect(a, b);
    craft_inmem_transport_disconnect(b, a);
}
