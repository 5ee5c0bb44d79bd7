/*
 * Client workload on the KV FSM, recording a history of invocations and
 * completions with their real outcomes, and the resolution of unknown
 * outcomes against what the FSMs applied.
 *
 * Times are ticks of one process-wide logical clock taken just before an
 * operation is first submitted and just after its result is known, so the
 * real-time order between operations is exact.
 *
 * Outcomes: ok (the future completed with 0); failed when craft says the
 * command never entered the log (CRAFT_ENOTLEADER, CRAFT_ETRANSFER,
 * CRAFT_ETIMEDOUT from the enqueue deadline), after retrying on the leader
 * until the operation's time budget ran out; unknown otherwise (completion
 * deadline passed, leadership lost, shutdown, I/O error...). Reads that do
 * not complete ok are recorded as failed: they have no effect.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "util.h"

typedef struct client {
    craft_fuzzy_workload_t *w;
    unsigned id;
    pthread_t thread;
    fz_rng_t rng;
    uint64_t seq;
    uint64_t known[64]; /* last value seen per key, for cas */
} client_t;

struct craft_fuzzy_workload {
    craft_fuzzy_cluster_t *c;
    unsigned n_clients, keys;
    int64_t op_timeout_ms;
    atomic_bool stop;
    atomic_uint_fast64_t ok;
    pthread_mutex_t mu;
    craft_fuzzy_history_t h;
    client_t *clients;
};

static atomic_uint_fast64_t logical_clock = 1;

static uint64_t tick(void)
{
    return atomic_fetch_add(&logical_clock, 1);
}

/* Keeps a future the client stopped waiting for, to check at the end that
 * it completed. */
static void abandon(craft_fuzzy_workload_t *w, craft_future_t *f, const craft_fuzzy_op_t *op)
{
    pthread_mutex_lock(&w->mu);
    craft_fuzzy_history_t *h = &w->h;
    if (h->n_abandoned == h->cap_abandoned) {
        size_t cap = h->cap_abandoned ? h->cap_abandoned * 2 : 64;
        craft_fuzzy_abandoned_t *p = realloc(h->abandoned, cap * sizeof *p);
        if (p == NULL) {
            pthread_mutex_unlock(&w->mu);
            craft_future_free(f);
            return;
        }
        h->abandoned = p;
        h->cap_abandoned = cap;
    }
    h->abandoned[h->n_abandoned++] = (craft_fuzzy_abandoned_t){f, op->client, op->opid};
    pthread_mutex_unlock(&w->mu);
}

static void record(craft_fuzzy_workload_t *w, const craft_fuzzy_op_t *op)
{
    pthread_mutex_lock(&w->mu);
    if (w->h.n == w->h.cap) {
        size_t cap = w->h.cap ? w->h.cap * 2 : 1024;
        craft_fuzzy_op_t *p = realloc(w->h.ops, cap * sizeof *p);
        if (p == NULL) {
            pthread_mutex_unlock(&w->mu);
            return;
        }
        w->h.ops = p;
        w->h.cap = cap;
    }
    w->h.ops[w->h.n++] = *op;
    pthread_mutex_unlock(&w->mu);
}

/* The running node to talk to: the leader when one is known, else any. */
static int pick_node(client_t *cl)
{
    craft_fuzzy_cluster_t *c = cl->w->c;
    int l = craft_fuzzy_cluster_leader(c, 0);
    if (l >= 0) {
        return l;
    }
    size_t n = craft_fuzzy_cluster_slots(c);
    for (size_t k = 0; k < n; k++) {
        size_t i = (size_t)fz_rng_below(&cl->rng, n);
        if (craft_fuzzy_cluster_running(c, i)) {
            return (int)i;
        }
    }
    return -1;
}

typedef enum { START_APPLY, START_READ_INDEX, START_BARRIER } start_kind_t;

/* Starts an operation on node i; NULL when it is not running. *gen gets
 * the node's incarnation. */
static craft_future_t *start_on(craft_fuzzy_cluster_t *c, int i, start_kind_t kind,
                                const char *cmd, int64_t timeout_ms, uint64_t *gen)
{
    craft_future_t *f = NULL;
    pthread_rwlock_rdlock(&c->rw);
    fz_node_t *nd = &c->nodes[i];
    if (nd->state == FZ_RUNNING && nd->r != NULL) {
        *gen = nd->gen;
        switch (kind) {
        case START_APPLY:
            f = craft_apply(nd->r, cmd, strlen(cmd), timeout_ms);
            break;
        case START_READ_INDEX:
            f = craft_read_index(nd->r);
            break;
        case START_BARRIER:
            f = craft_barrier(nd->r, timeout_ms);
            break;
        }
    }
    pthread_rwlock_unlock(&c->rw);
    return f;
}

/* Reads `key` from node i's FSM once it applied `index`, provided it is
 * still incarnation `gen`. Returns 0 with *value, or an error. */
static int local_read(craft_fuzzy_workload_t *w, int i, uint64_t gen, uint64_t index,
                      unsigned key, uint64_t *value)
{
    craft_fuzzy_cluster_t *c = w->c;
    int64_t deadline = fz_now_us() + w->op_timeout_ms * 1000;
    for (;;) {
        int rv = CRAFT_ETIMEDOUT;
        bool done = false;
        pthread_rwlock_rdlock(&c->rw);
        fz_node_t *nd = &c->nodes[i];
        if (nd->state != FZ_RUNNING || nd->r == NULL || nd->gen != gen) {
            rv = CRAFT_ESHUTDOWN;
            done = true;
        } else if (craft_applied_index(nd->r) >= index) {
            *value = craft_fuzzy_kv_get(nd->user, key);
            rv = 0;
            done = true;
        }
        pthread_rwlock_unlock(&c->rw);
        if (done || fz_now_us() >= deadline) {
            return rv;
        }
        fz_sleep_us(1000);
    }
}

static bool definitely_failed(int rv)
{
    return rv == CRAFT_ENOTLEADER || rv == CRAFT_ETRANSFER || rv == CRAFT_ETIMEDOUT;
}

static void run_write(client_t *cl, craft_fuzzy_op_t *op, const char *cmd)
{
    craft_fuzzy_workload_t *w = cl->w;
    int64_t deadline = fz_now_us() + w->op_timeout_ms * 1000;
    op->call = tick();
    for (;;) {
        int64_t left = (deadline - fz_now_us()) / 1000;
        int i = pick_node(cl);
        if (i < 0 || left <= 0) {
            op->outcome = CRAFT_FUZZY_FAILED;
            op->err = op->err ? op->err : CRAFT_ENOTLEADER;
            break;
        }
        uint64_t gen;
        craft_future_t *f = start_on(w->c, i, START_APPLY, cmd, left, &gen);
        if (f == NULL) {
            fz_sleep_us(2000);
            continue;
        }
        op->node = i;
        int rv = craft_future_wait_for(f, left);
        if (rv == 0) {
            void *resp = craft_future_response(f);
            op->index = craft_future_index(f);
            op->outcome = CRAFT_FUZZY_OK;
            op->cas_ok = craft_fuzzy_kv_response_ok(resp);
            op->read = craft_fuzzy_kv_response_value(resp);
            craft_future_free(f);
            break;
        }
        if (rv == CRAFT_EPENDING) {
            abandon(w, f, op);
        } else {
            craft_future_free(f);
        }
        op->err = rv;
        if (!definitely_failed(rv)) {
            op->outcome = CRAFT_FUZZY_UNKNOWN;
            break;
        }
        fz_sleep_us(fz_rng_range(&cl->rng, 1000, 10000));
    }
    op->ret = op->outcome == CRAFT_FUZZY_UNKNOWN ? UINT64_MAX : tick();
}

static void run_read(client_t *cl, craft_fuzzy_op_t *op, start_kind_t how)
{
    craft_fuzzy_workload_t *w = cl->w;
    int64_t deadline = fz_now_us() + w->op_timeout_ms * 1000;
    op->call = tick();
    op->outcome = CRAFT_FUZZY_FAILED;
    for (;;) {
        int64_t left = (deadline - fz_now_us()) / 1000;
        int i = pick_node(cl);
        if (i < 0 || left <= 0) {
            break;
        }
        uint64_t gen;
        craft_future_t *f = start_on(w->c, i, how, NULL, left, &gen);
        if (f == NULL) {
            fz_sleep_us(2000);
            continue;
        }
        op->node = i;
        int rv = craft_future_wait_for(f, left);
        uint64_t index = craft_future_index(f);
        if (rv == CRAFT_EPENDING) {
            abandon(w, f, op);
        } else {
            craft_future_free(f);
        }
        op->err = rv;
        if (rv == 0) {
            uint64_t v;
            rv = local_read(w, i, gen, index, op->key, &v);
            op->err = rv;
            if (rv == 0) {
                op->outcome = CRAFT_FUZZY_OK;
                op->read = v;
                op->index = index;
            }
            break;
        }
        if (!definitely_failed(rv)) {
            break;
        }
        fz_sleep_us(fz_rng_range(&cl->rng, 1000, 10000));
    }
    op->ret = tick();
}

static void *client_main(void *arg)
{
    client_t *cl = arg;
    craft_fuzzy_workload_t *w = cl->w;
    while (!atomic_load(&w->stop)) {
        craft_fuzzy_op_t op;
        memset(&op, 0, sizeof op);
        op.client = cl->id;
        op.opid = ++cl->seq;
        op.key = (unsigned)fz_rng_below(&cl->rng, w->keys);
        op.node = -1;
        uint64_t roll = fz_rng_below(&cl->rng, 100);
        uint64_t fresh = (uint64_t)(cl->id + 1) * 1000000000ULL + cl->seq;
        char cmd[128];
        if (roll < 35) {
            op.kind = CRAFT_FUZZY_OP_PUT;
            op.value = fresh;
            snprintf(cmd, sizeof cmd, "put %u %" PRIu64 " c%u.%" PRIu64, op.key, op.value,
                     cl->id, op.opid);
            snprintf(op.how, sizeof op.how, "log");
            run_write(cl, &op, cmd);
        } else if (roll < 60) {
            op.kind = CRAFT_FUZZY_OP_CAS;
            op.expect = cl->known[op.key];
            op.value = fresh;
            snprintf(cmd, sizeof cmd, "cas %u %" PRIu64 " %" PRIu64 " c%u.%" PRIu64, op.key,
                     op.expect, op.value, cl->id, op.opid);
            snprintf(op.how, sizeof op.how, "log");
            run_write(cl, &op, cmd);
        } else {
            op.kind = CRAFT_FUZZY_OP_GET;
            uint64_t how = fz_rng_below(&cl->rng, 3);
            if (how == 0) {
                snprintf(cmd, sizeof cmd, "get %u c%u.%" PRIu64, op.key, cl->id, op.opid);
                snprintf(op.how, sizeof op.how, "log");
                run_write(cl, &op, cmd);
            } else {
                snprintf(op.how, sizeof op.how, how == 1 ? "read_index" : "barrier");
                run_read(cl, &op, how == 1 ? START_READ_INDEX : START_BARRIER);
            }
        }
        if (op.outcome == CRAFT_FUZZY_OK) {
            atomic_fetch_add(&w->ok, 1);
            if (op.kind == CRAFT_FUZZY_OP_PUT) {
                cl->known[op.key] = op.value;
            } else {
                cl->known[op.key] = op.read; /* cas returns the value after it */
            }
        }
        record(w, &op);
        fz_sleep_us(fz_rng_range(&cl->rng, 0, 2000));
    }
    return NULL;
}

int craft_fuzzy_workload_start(craft_fuzzy_cluster_t *c, unsigned clients, unsigned keys,
                               uint64_t seed, int64_t op_timeout_ms, craft_fuzzy_workload_t **out)
{
    if (c == NULL || out == NULL || clients == 0 || keys == 0 || keys > 64 ||
        op_timeout_ms <= 0 || !c->kv_fsm) {
        return CRAFT_EINVAL;
    }
    craft_fuzzy_workload_t *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return CRAFT_ENOMEM;
    }
    w->c = c;
    w->n_clients = clients;
    w->keys = keys;
    w->op_timeout_ms = op_timeout_ms;
    pthread_mutex_init(&w->mu, NULL);
    w->clients = calloc(clients, sizeof *w->clients);
    if (w->clients == NULL) {
        free(w);
        return CRAFT_ENOMEM;
    }
    for (unsigned i = 0; i < clients; i++) {
        client_t *cl = &w->clients[i];
        cl->w = w;
        cl->id = i;
        fz_rng_seed(&cl->rng, seed, 0xc1 + i);
        if (pthread_create(&cl->thread, NULL, client_main, cl) != 0) {
            atomic_store(&w->stop, true);
            for (unsigned k = 0; k < i; k++) {
                pthread_join(w->clients[k].thread, NULL);
            }
            free(w->clients);
            free(w->h.ops);
            free(w);
            return CRAFT_ENOMEM;
        }
    }
    *out = w;
    return 0;
}

void craft_fuzzy_workload_stop(craft_fuzzy_workload_t *w, craft_fuzzy_history_t *h)
{
    atomic_store(&w->stop, true);
    for (unsigned i = 0; i < w->n_clients; i++) {
        pthread_join(w->clients[i].thread, NULL);
    }
    *h = w->h;
    free(w->clients);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

uint64_t craft_fuzzy_workload_ok(craft_fuzzy_workload_t *w)
{
    return atomic_load(&w->ok);
}

unsigned craft_fuzzy_history_check_abandoned(craft_fuzzy_history_t *h,
                                             craft_fuzzy_report_t *rep)
{
    unsigned v = 0;
    for (size_t i = 0; i < h->n_abandoned; i++) {
        craft_fuzzy_abandoned_t *a = &h->abandoned[i];
        if (!craft_future_done(a->f)) {
            craft_fuzzy_report_violation(rep,
                                         "futures: c%u.%" PRIu64 " never completed although "
                                         "every node was shut down",
                                         a->client, a->opid);
            v++;
        }
        craft_future_free(a->f);
    }
    if (h->n_abandoned > 0) {
        craft_fuzzy_report_note(rep, "futures: %zu abandoned by clients, %u never completed",
                                h->n_abandoned, v);
    }
    free(h->abandoned);
    h->abandoned = NULL;
    h->n_abandoned = h->cap_abandoned = 0;
    return v;
}

void craft_fuzzy_history_free(craft_fuzzy_history_t *h)
{
    for (size_t i = 0; i < h->n_abandoned; i++) {
        craft_future_free(h->abandoned[i].f);
    }
    free(h->abandoned);
    free(h->ops);
    memset(h, 0, sizeof *h);
}

int craft_fuzzy_history_write(const craft_fuzzy_history_t *h, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        return CRAFT_EIO;
    }
    static const char *kinds[] = {"put", "cas", "get"};
    static const char *outs[] = {"ok", "failed", "unknown"};
    fprintf(f, "# client opid call ret kind key args outcome output index node how err\n");
    for (size_t i = 0; i < h->n; i++) {
        const craft_fuzzy_op_t *o = &h->ops[i];
        char ret[24];
        if (o->ret == UINT64_MAX) {
            snprintf(ret, sizeof ret, "inf");
        } else {
            snprintf(ret, sizeof ret, "%" PRIu64, o->ret);
        }
        fprintf(f, "c%u.%" PRIu64 " %" PRIu64 " %s %s k%u ", o->client, o->opid, o->call, ret,
                kinds[o->kind], o->key);
        if (o->kind == CRAFT_FUZZY_OP_PUT) {
            fprintf(f, "%" PRIu64 " ", o->value);
        } else if (o->kind == CRAFT_FUZZY_OP_CAS) {
            fprintf(f, "%" PRIu64 "->%" PRIu64 " ", o->expect, o->value);
        }
        fprintf(f, "%s ", outs[o->outcome]);
        if (o->kind == CRAFT_FUZZY_OP_GET) {
            fprintf(f, "=%" PRIu64 " ", o->read);
        } else if (o->kind == CRAFT_FUZZY_OP_CAS) {
            fprintf(f, "%s(%" PRIu64 ") ", o->cas_ok ? "swapped" : "refused", o->read);
        }
        fprintf(f, "@%" PRIu64 " n%d %s %s\n", o->index, o->node, o->how,
                o->err ? craft_err_name(o->err) : "-");
    }
    fclose(f);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Resolution against the ledger                                             */
/* ------------------------------------------------------------------------ */

/* opid "c<client>.<seq>" at the end of a command. */
static bool parse_opid(const char *cmd, unsigned *client, uint64_t *seq)
{
    const char *p = strrchr(cmd, ' ');
    return p != NULL && sscanf(p + 1, "c%u.%" SCNu64, client, seq) == 2;
}

typedef struct applied {
    uint64_t index;
    void *resp;
} applied_t;

unsigned craft_fuzzy_history_resolve(craft_fuzzy_cluster_t *c, craft_fuzzy_history_t *h,
                                     craft_fuzzy_report_t *rep)
{
    unsigned before = rep->violations;
    /* Index the history by (client, opid). */
    unsigned max_client = 0;
    uint64_t max_seq = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (h->ops[i].client > max_client) {
            max_client = h->ops[i].client;
        }
        if (h->ops[i].opid > max_seq) {
            max_seq = h->ops[i].opid;
        }
    }
    size_t stride = (size_t)max_seq + 1;
    size_t slots = ((size_t)max_client + 1) * stride;
    applied_t *seen = calloc(slots, sizeof *seen);
    if (seen == NULL) {
        craft_fuzzy_report_note(rep, "resolve: out of memory");
        return 0;
    }
    pthread_mutex_lock(&c->ledger_mu);
    for (uint64_t i = 1; i < c->ledger_cap; i++) {
        const fz_ledger_ent_t *e = &c->ledger[i];
        unsigned cl;
        uint64_t seq;
        if (!e->set || e->data == NULL || !parse_opid(e->data, &cl, &seq)) {
            continue;
        }
        if (cl > max_client || seq > max_seq) {
            craft_fuzzy_report_violation(rep,
                                         "exactly once: index %" PRIu64
                                         " applied \"%s\" which no client issued",
                                         i, e->data);
            continue;
        }
        applied_t *a = &seen[cl * stride + seq];
        if (a->index != 0) {
            craft_fuzzy_report_violation(rep,
                                         "exactly once: c%u.%" PRIu64 " applied twice, at %" PRIu64
                                         " and %" PRIu64,
                                         cl, seq, a->index, i);
            continue;
        }
        a->index = i;
        a->resp = e->resp;
    }
    bool settled = c->converged_index > 0;
    pthread_mutex_unlock(&c->ledger_mu);

    unsigned resolved = 0, dropped = 0;
    for (size_t i = 0; i < h->n; i++) {
        craft_fuzzy_op_t *o = &h->ops[i];
        bool logged = strcmp(o->how, "log") == 0;
        if (!logged) {
            continue;
        }
        const applied_t *a = &seen[o->client * stride + o->opid];
        switch (o->outcome) {
        case CRAFT_FUZZY_OK:
            if (a->index == 0) {
                craft_fuzzy_report_violation(rep,
                                             "durability: acknowledged c%u.%" PRIu64
                                             " (index %" PRIu64 ") was never applied",
                                             o->client, o->opid, o->index);
            } else if (a->index != o->index) {
                craft_fuzzy_report_violation(rep,
                                             "exactly once: c%u.%" PRIu64
                                             " acknowledged at index %" PRIu64
                                             " but applied at %" PRIu64,
                                             o->client, o->opid, o->index, a->index);
            } else if (craft_fuzzy_kv_response_ok(a->resp) != o->cas_ok ||
                       craft_fuzzy_kv_response_value(a->resp) != o->read) {
                craft_fuzzy_report_violation(rep,
                                             "state machine: c%u.%" PRIu64
                                             " saw an output the FSMs did not produce",
                                             o->client, o->opid);
            }
            break;
        case CRAFT_FUZZY_FAILED:
            if (a->index != 0) {
                craft_fuzzy_report_violation(rep,
                                             "refusal: c%u.%" PRIu64 " failed with %s but was "
                                             "applied at index %" PRIu64,
                                             o->client, o->opid, craft_err_name(o->err),
                                             a->index);
            }
            break;
        case CRAFT_FUZZY_UNKNOWN:
            if (a->index != 0) {
                /* It took effect, with this output, at an unknown time. */
                o->outcome = CRAFT_FUZZY_OK;
                o->index = a->index;
                o->cas_ok = craft_fuzzy_kv_response_ok(a->resp);
                o->read = craft_fuzzy_kv_response_value(a->resp);
                o->ret = UINT64_MAX;
                resolved++;
            } else if (settled) {
                o->outcome = CRAFT_FUZZY_FAILED; /* never applied, never will be */
                dropped++;
            }
            break;
        }
    }
    free(seen);
    craft_fuzzy_report_note(rep, "history: %zu ops, %u unknown resolved as applied, %u as not",
                            h->n, resolved, dropped);
    return rep->violations - before;
}
