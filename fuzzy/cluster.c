/*
 * The fuzzy cluster: node lifecycle (start, crash, restart, add, remove)
 * on sqlite stores under the fault wrapper, the FSM wrapper feeding the
 * continuous verifiers (the ledger), leadership helpers and convergence.
 *
 * What a crash models: the node's network goes down and its disk is frozen
 * at one instant (every later write fails without reaching sqlite), then
 * its threads are stopped (craft_free), its stores closed and its FSM
 * thrown away. What was acknowledged by sqlite before the freeze survives
 * (durability FULL fsyncs it; NORMAL keeps it in the OS, which is what a
 * process crash keeps); in-memory state (FSM, caches, commit index not yet
 * persisted) is lost. Not modelled: torn sqlite pages or a lying fsync
 * (power loss), and a crash in the middle of one store call (the call in
 * progress completes or fails as a whole).
 *
 * The ledger: every FSM is wrapped; each apply records (index, term, data,
 * rolling hash of the commands applied so far, response) the first time
 * any node applies an index and compares later applies of that index
 * against it (state-machine safety, checked continuously). The wrapper
 * also checks that indexes only grow, and carries (last index, rolling
 * hash) through snapshots in a small header before the FSM's own data.
 */
#include "craft/fuzzy.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "craft/file_snapshot.h"
#include "craft/sqlite.h"
#include "cluster.h"
#include "util.h"

#define RING_LINES 3000
#define SNAP_HDR_MAGIC 0x465a534e41504844ULL /* "FZSNAPHD" */

/* ------------------------------------------------------------------------ */
/* Logging into per-node rings                                               */
/* ------------------------------------------------------------------------ */

static void node_logger(void *ctx, craft_level_t level, const char *component,
                        const char *message)
{
    fz_node_t *nd = ctx;
    static const char *names[] = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    char line[1024];
    snprintf(line, sizeof line, "%.3f [%s] %s: %s",
             (double)(fz_now_us() - nd->c->t0_us) / 1e6, names[level <= 5 ? level : 5],
             component, message);
    if (nd->c->verbose) {
        fprintf(stderr, "%s %s\n", nd->id, line);
    }
    char *copy = strdup(line);
    pthread_mutex_lock(&nd->ring_mu);
    if (nd->ring[nd->ring_head] != NULL) {
        free(nd->ring[nd->ring_head]);
    }
    nd->ring[nd->ring_head] = copy;
    nd->ring_head = (nd->ring_head + 1) % RING_LINES;
    pthread_mutex_unlock(&nd->ring_mu);
}

void fz_node_note(fz_node_t *nd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    node_logger(nd, CRAFT_LEVEL_INFO, "fuzzy", msg);
}

/* ------------------------------------------------------------------------ */
/* Ledger                                                                    */
/* ------------------------------------------------------------------------ */

static fz_ledger_ent_t *ledger_at(craft_fuzzy_cluster_t *c, uint64_t index)
{
    if (index >= c->ledger_cap) {
        size_t cap = c->ledger_cap ? c->ledger_cap : 1024;
        while (cap <= index) {
            cap *= 2;
        }
        fz_ledger_ent_t *p = realloc(c->ledger, cap * sizeof *p);
        if (p == NULL) {
            return NULL;
        }
        memset(p + c->ledger_cap, 0, (cap - c->ledger_cap) * sizeof *p);
        c->ledger = p;
        c->ledger_cap = cap;
    }
    return &c->ledger[index];
}

static void ledger_record(fz_node_t *nd, const craft_log_t *log, void *resp)
{
    craft_fuzzy_cluster_t *c = nd->c;
    uint64_t dh = fz_hash_bytes(FZ_HASH_INIT, log->data, log->len);
    pthread_mutex_lock(&c->ledger_mu);
    if (log->index <= nd->fsm_last) {
        craft_fuzzy_report_violation(&c->live,
                                     "apply order: %s applied index %" PRIu64
                                     " after index %" PRIu64,
                                     nd->id, log->index, nd->fsm_last);
    }
    uint64_t idx = log->index;
    uint64_t hash = fz_hash_bytes(nd->fsm_hash, &idx, sizeof idx);
    hash = fz_hash_bytes(hash, log->data, log->len);
    nd->fsm_hash = hash;
    nd->fsm_last = log->index;
    fz_ledger_ent_t *e = ledger_at(c, log->index);
    if (e == NULL) {
        pthread_mutex_unlock(&c->ledger_mu);
        return;
    }
    if (!e->set) {
        e->set = true;
        e->term = log->term;
        e->data_hash = dh;
        e->rolling = hash;
        e->resp = resp;
        e->data = malloc(log->len + 1);
        if (e->data != NULL) {
            if (log->len > 0) {
                memcpy(e->data, log->data, log->len);
            }
            e->data[log->len] = '\0';
        }
        e->len = log->len;
        snprintf(e->by, sizeof e->by, "%s", nd->id);
        if (log->index > c->max_applied) {
            c->max_applied = log->index;
        }
    } else {
        if (e->term != log->term || e->data_hash != dh) {
            craft_fuzzy_report_violation(
                &c->live,
                "state machine safety: index %" PRIu64 ": %s applied term %" PRIu64
                " \"%.*s\" but %s applied term %" PRIu64 " \"%.*s\"",
                log->index, e->by, e->term, (int)e->len, e->data ? e->data : "", nd->id,
                log->term, (int)log->len, (const char *)log->data);
        } else if (e->rolling != hash) {
            craft_fuzzy_report_violation(&c->live,
                                         "state machine safety: rolling hash differs at index "
                                         "%" PRIu64 " between %s and %s (earlier history differs)",
                                         log->index, e->by, nd->id);
        } else if (c->kv_fsm && e->resp != resp) {
            craft_fuzzy_report_violation(&c->live,
                                         "state machine safety: index %" PRIu64
                                         ": FSM output differs between %s and %s",
                                         log->index, e->by, nd->id);
        }
    }
    pthread_mutex_unlock(&c->ledger_mu);
}

/* ------------------------------------------------------------------------ */
/* FSM wrapper                                                               */
/* ------------------------------------------------------------------------ */

static void *wrap_apply(void *ctx, const craft_log_t *log)
{
    fz_incarnation_t *inc = ctx;
    fz_node_t *nd = inc->nd;
    void *resp = inc->user->apply(inc->user->ctx, log);
    ledger_record(nd, log, resp);
    return resp;
}

static void wrap_release_response(void *ctx, void *resp)
{
    fz_incarnation_t *inc = ctx;
    if (inc->user->release_response != NULL) {
        inc->user->release_response(inc->user->ctx, resp);
    }
}

typedef struct wrap_snap {
    craft_fsm_snapshot_t vt;
    craft_fsm_snapshot_t *inner;
    uint64_t hdr[3];
} wrap_snap_t;

static int wrap_persist(void *ctx, craft_snapshot_sink_t *sink)
{
    wrap_snap_t *s = ctx;
    int rv = sink->write(sink->ctx, s->hdr, sizeof s->hdr);
    if (rv != 0) {
        sink->cancel(sink->ctx);
        return rv;
    }
    return s->inner->persist(s->inner->ctx, sink);
}

static void wrap_snap_release(void *ctx)
{
    wrap_snap_t *s = ctx;
    s->inner->release(s->inner->ctx);
    free(s);
}

static int wrap_snapshot(void *ctx, craft_fsm_snapshot_t **out)
{
    fz_incarnation_t *inc = ctx;
    fz_node_t *nd = inc->nd;
    wrap_snap_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    int rv = inc->user->snapshot(inc->user->ctx, &s->inner);
    if (rv != 0) {
        free(s);
        return rv;
    }
    s->hdr[0] = SNAP_HDR_MAGIC;
    pthread_mutex_lock(&nd->c->ledger_mu);
    s->hdr[1] = nd->fsm_last;
    s->hdr[2] = nd->fsm_hash;
    pthread_mutex_unlock(&nd->c->ledger_mu);
    s->vt.ctx = s;
    s->vt.persist = wrap_persist;
    s->vt.release = wrap_snap_release;
    *out = &s->vt;
    return 0;
}

static int wrap_restore(void *ctx, craft_reader_t *reader)
{
    fz_incarnation_t *inc = ctx;
    fz_node_t *nd = inc->nd;
    uint64_t hdr[3];
    size_t got = 0;
    while (got < sizeof hdr) {
        int64_t n = reader->read(reader->ctx, (char *)hdr + got, sizeof hdr - got);
        if (n < 0) {
            return (int)n;
        }
        if (n == 0) {
            return CRAFT_ECORRUPT;
        }
        got += (size_t)n;
    }
    if (hdr[0] != SNAP_HDR_MAGIC) {
        return CRAFT_ECORRUPT;
    }
    int rv = inc->user->restore(inc->user->ctx, reader);
    if (rv != 0) {
        return rv;
    }
    craft_fuzzy_cluster_t *c = nd->c;
    pthread_mutex_lock(&c->ledger_mu);
    nd->fsm_last = hdr[1];
    nd->fsm_hash = hdr[2];
    nd->restores++;
    if (hdr[1] < c->ledger_cap && c->ledger[hdr[1]].set && c->ledger[hdr[1]].rolling != hdr[2]) {
        craft_fuzzy_report_violation(&c->live,
                                     "state machine safety: %s restored a snapshot at index "
                                     "%" PRIu64 " whose history differs from %s's",
                                     nd->id, hdr[1], c->ledger[hdr[1]].by);
    }
    pthread_mutex_unlock(&c->ledger_mu);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Leader completeness at takeover                                          */
/* ------------------------------------------------------------------------ */

static void notify_leader(void *arg, bool is_leader)
{
    fz_node_t *nd = arg;
    if (!is_leader) {
        return;
    }
    craft_fuzzy_cluster_t *c = nd->c;
    pthread_mutex_lock(&c->ledger_mu);
    uint64_t m = c->max_applied;
    /* What its own FSM holds: after an InstallSnapshot that discarded the
     * whole log, its log is empty and its state is the snapshot. */
    uint64_t have = nd->fsm_last;
    uint64_t term = m > 0 ? c->ledger[m].term : 0;
    char by[32];
    snprintf(by, sizeof by, "%s", m > 0 ? c->ledger[m].by : "");
    c->takeovers++;
    pthread_mutex_unlock(&c->ledger_mu);
    if (m == 0) {
        return;
    }
    uint64_t first = 0, last = 0;
    if (nd->log->first_index(nd->log->ctx, &first) != 0 ||
        nd->log->last_index(nd->log->ctx, &last) != 0) {
        return; /* failed disk: nothing to check against */
    }
    if (m > last && m <= have) {
        return; /* in the snapshot its FSM was restored from */
    }
    if (m > last) {
        pthread_mutex_lock(&c->ledger_mu);
        craft_fuzzy_report_violation(&c->live,
                                     "leader completeness: %s became leader but its log ends at "
                                     "%" PRIu64 " while index %" PRIu64
                                     " (term %" PRIu64 ") was applied by %s",
                                     nd->id, last, m, term, by);
        pthread_mutex_unlock(&c->ledger_mu);
        return;
    }
    if (m < first) {
        return; /* in its snapshot */
    }
    craft_log_t e;
    memset(&e, 0, sizeof e);
    if (nd->log->get_log(nd->log->ctx, m, &e) != 0) {
        return;
    }
    if (e.term != term) {
        pthread_mutex_lock(&c->ledger_mu);
        craft_fuzzy_report_violation(&c->live,
                                     "leader completeness: %s became leader with term %" PRIu64
                                     " at index %" PRIu64 " where %s applied term %" PRIu64,
                                     nd->id, e.term, m, by, term);
        pthread_mutex_unlock(&c->ledger_mu);
    }
    craft_log_release(&e);
}

/* ------------------------------------------------------------------------ */
/* Node parts                                                                */
/* ------------------------------------------------------------------------ */

static int mkdir_p(const char *path)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) == 0 || errno == EEXIST ? 0 : CRAFT_EIO;
}

static int open_sqlite(craft_fuzzy_cluster_t *c, fz_node_t *nd, craft_log_store_t **log,
                       craft_stable_store_t **stable)
{
    char path[600];
    snprintf(path, sizeof path, "%s/raft.db", nd->dir);
    craft_sqlite_options_t so;
    craft_sqlite_options_default(&so);
    so.durability = c->o.sqlite_normal ? CRAFT_SQLITE_DURABILITY_NORMAL
                                       : CRAFT_SQLITE_DURABILITY_FULL;
    return craft_sqlite_open(path, &so, log, stable);
}

static void close_parts(fz_node_t *nd)
{
    craft_fuzzy_cluster_t *c = nd->c;
    if (nd->trans != NULL) {
        nd->trans->close(nd->trans->ctx);
        nd->trans = NULL;
    }
    if (nd->snaps != NULL) {
        /* Before fstore: the snapshot wrapper uses its faults. */
        nd->snaps->close(nd->snaps->ctx);
        nd->snaps = NULL;
    }
    if (nd->fstore != NULL) {
        craft_fuzzy_store_free(nd->fstore);
        nd->fstore = NULL;
        nd->log = NULL;
        nd->stable = NULL;
    }
    /* The FSM stays in nd->incs (futures may still release responses). */
    (void)c;
    nd->user = NULL;
}

static int open_parts(fz_node_t *nd)
{
    craft_fuzzy_cluster_t *c = nd->c;
    int rv = mkdir_p(nd->dir);
    if (rv != 0) {
        return rv;
    }
    craft_log_store_t *ilog;
    craft_stable_store_t *istable;
    rv = open_sqlite(c, nd, &ilog, &istable);
    if (rv != 0) {
        return rv;
    }
    nd->incarnation++;
    rv = craft_fuzzy_store_new(ilog, istable, c->o.seed ^ (nd->slot * 7919 + nd->incarnation * 104729),
                               &nd->fstore, &nd->log, &nd->stable);
    if (rv != 0) {
        ilog->close(ilog->ctx);
        istable->close(istable->ctx);
        return rv;
    }
    char sdir[600];
    snprintf(sdir, sizeof sdir, "%s/snaps", nd->dir);
    craft_snapshot_store_t *isnaps;
    craft_file_snapshot_options_t so;
    craft_file_snapshot_options_default(&so);
    so.retain = 2;
    so.logger = node_logger;
    so.logger_ctx = nd;
    rv = craft_file_snapshot_store_open(sdir, &so, &isnaps);
    if (rv != 0) {
        goto err;
    }
    rv = craft_fuzzy_snapshots_new(nd->fstore, isnaps, &nd->snaps);
    if (rv != 0) {
        isnaps->close(isnaps->ctx);
        goto err;
    }
    rv = craft_fuzzy_net_transport(c->net, nd->addr, &nd->trans);
    if (rv != 0) {
        goto err;
    }
    fz_incarnation_t *inc = calloc(1, sizeof *inc);
    if (inc == NULL) {
        rv = CRAFT_ENOMEM;
        goto err;
    }
    rv = c->o.fsm.create != NULL ? c->o.fsm.create(c->o.fsm.arg, nd->id, &inc->user)
                                 : craft_fuzzy_kv_fsm_new(&inc->user);
    if (rv != 0) {
        free(inc);
        goto err;
    }
    inc->nd = nd;
    inc->vt.ctx = inc;
    inc->vt.apply = wrap_apply;
    inc->vt.release_response = wrap_release_response;
    inc->vt.snapshot = wrap_snapshot;
    inc->vt.restore = wrap_restore;
    inc->next = nd->incs;
    nd->incs = inc;
    nd->user = inc->user;
    pthread_mutex_lock(&c->ledger_mu);
    nd->fsm_last = 0;
    nd->fsm_hash = FZ_HASH_INIT;
    pthread_mutex_unlock(&c->ledger_mu);
    return 0;
err:
    close_parts(nd);
    return rv;
}

static void node_config(fz_node_t *nd, craft_config_t *conf)
{
    *conf = nd->c->conf;
    conf->local_id = nd->id;
    conf->notify_leader = notify_leader;
    conf->notify_leader_arg = nd;
    conf->logger = node_logger;
    conf->logger_ctx = nd;
    /* Both ways of applying committed entries: the fsm thread, or the
     * committing thread (apply_inline), per node and incarnation; crossed
     * with waiting with or without polling futures first. */
    uint64_t mix = nd->c->o.seed + (uint64_t)nd->slot + (uint64_t)nd->incarnation;
    conf->apply_inline = (mix & 1) != 0;
    conf->wait_spin_us = (mix & 2) != 0 ? 200 : 0;
}

static int start_node(fz_node_t *nd)
{
    craft_config_t conf;
    node_config(nd, &conf);
    craft_t *r = NULL;
    craft_fuzzy_net_set_node_down(nd->c->net, nd->addr, false);
    int rv = craft_new(&r, &conf, &nd->incs->vt, nd->log, nd->stable, nd->snaps, nd->trans);
    if (rv != 0) {
        fz_node_note(nd, "craft_new failed: %s", craft_strerror(rv));
        return rv;
    }
    pthread_rwlock_wrlock(&nd->c->rw);
    nd->r = r;
    nd->state = FZ_RUNNING;
    nd->gen++;
    pthread_rwlock_unlock(&nd->c->rw);
    return 0;
}

/* Stops a running node the crash way; `state` is what it becomes. */
static void stop_node(fz_node_t *nd, fz_node_state_t state)
{
    craft_fuzzy_cluster_t *c = nd->c;
    pthread_rwlock_wrlock(&c->rw);
    craft_t *r = nd->r;
    nd->r = NULL;
    nd->state = state;
    nd->gen++;
    pthread_rwlock_unlock(&c->rw);
    if (r == NULL) {
        return;
    }
    craft_fuzzy_net_set_node_down(c->net, nd->addr, true);
    craft_fuzzy_store_freeze(nd->fstore);
    craft_free(r);
    close_parts(nd);
}

static void node_init(craft_fuzzy_cluster_t *c, size_t slot)
{
    fz_node_t *nd = &c->nodes[slot];
    memset(nd, 0, sizeof *nd);
    nd->c = c;
    nd->slot = slot;
    snprintf(nd->id, sizeof nd->id, "n%zu", slot);
    snprintf(nd->addr, sizeof nd->addr, "n%zu", slot);
    snprintf(nd->dir, sizeof nd->dir, "%s/n%zu", c->dir, slot);
    pthread_mutex_init(&nd->ring_mu, NULL);
    nd->ring = calloc(RING_LINES, sizeof *nd->ring);
}

/* ------------------------------------------------------------------------ */
/* Cluster                                                                   */
/* ------------------------------------------------------------------------ */

void craft_fuzzy_options_default(craft_fuzzy_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->nodes = 5;
    o->seed = 1;
    o->log_level = CRAFT_LEVEL_INFO;
}

int craft_fuzzy_cluster_new(const craft_fuzzy_options_t *o, craft_fuzzy_cluster_t **out)
{
    if (o == NULL || out == NULL || o->nodes < 1 || o->nodes > 9) {
        return CRAFT_EINVAL;
    }
    craft_fuzzy_cluster_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return CRAFT_ENOMEM;
    }
    c->o = *o;
    c->t0_us = fz_now_us();
    c->verbose = getenv("CRAFT_FUZZY_VERBOSE") != NULL;
    c->kv_fsm = o->fsm.create == NULL;
    c->scale = o->time_scale > 0 ? o->time_scale : fz_time_scale();
    pthread_rwlock_init(&c->rw, NULL);
    pthread_mutex_init(&c->ledger_mu, NULL);
    if (o->dir != NULL) {
        c->dir = strdup(o->dir);
        mkdir_p(c->dir);
    } else {
        const char *base = getenv("TMPDIR");
        char tmpl[512];
        snprintf(tmpl, sizeof tmpl, "%s/craft-fuzzy-XXXXXX", base ? base : "/tmp");
        if (mkdtemp(tmpl) != NULL) {
            c->dir = strdup(tmpl);
            c->own_dir = true;
        }
    }
    if (c->dir == NULL) {
        free(c);
        return CRAFT_EIO;
    }
    int rv = craft_fuzzy_net_new(o->seed, 200 * c->scale, &c->net);
    if (rv != 0) {
        free(c->dir);
        free(c);
        return rv;
    }
    craft_config_default(&c->conf);
    c->conf.heartbeat_timeout_ms = 200 * c->scale;
    c->conf.election_timeout_ms = 200 * c->scale;
    c->conf.leader_lease_timeout_ms = 150 * c->scale;
    c->conf.commit_timeout_ms = 10;
    c->conf.max_append_entries = 16;
    c->conf.snapshot_threshold = o->snapshot_threshold ? o->snapshot_threshold : 64;
    c->conf.trailing_logs = o->trailing_logs ? o->trailing_logs : 16;
    c->conf.snapshot_interval_ms = 300 * c->scale;
    c->conf.shutdown_on_remove = true;
    c->conf.log_level = o->log_level;

    craft_configuration_t cfg = {.n = o->nodes, .servers = calloc(o->nodes, sizeof(craft_server_t))};
    for (size_t i = 0; i < o->nodes; i++) {
        node_init(c, i);
        c->nodes[i].member = true;
        c->nodes[i].voter = true;
        cfg.servers[i].id = c->nodes[i].id;
        cfg.servers[i].address = c->nodes[i].addr;
        cfg.servers[i].suffrage = CRAFT_VOTER;
    }
    c->n = o->nodes;
    for (size_t i = 0; i < o->nodes && rv == 0; i++) {
        fz_node_t *nd = &c->nodes[i];
        rv = open_parts(nd);
        if (rv == 0) {
            craft_config_t conf;
            node_config(nd, &conf);
            rv = craft_bootstrap_cluster(&conf, nd->log, nd->stable, nd->snaps, nd->trans, &cfg);
        }
        if (rv == 0) {
            rv = start_node(nd);
        }
    }
    free(cfg.servers);
    if (rv != 0) {
        craft_fuzzy_cluster_free(c);
        return rv;
    }
    *out = c;
    return 0;
}

static void rmrf(const char *path)
{
    char cmd[700];
    if (path == NULL || strlen(path) < 5) {
        return;
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) {
        fprintf(stderr, "fuzzy: failed to remove %s\n", path);
    }
}

void craft_fuzzy_cluster_free(craft_fuzzy_cluster_t *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < c->n; i++) {
        fz_node_t *nd = &c->nodes[i];
        if (nd->state == FZ_RUNNING) {
            stop_node(nd, FZ_CRASHED);
        } else {
            close_parts(nd);
        }
    }
    craft_fuzzy_net_free(c->net);
    for (size_t i = 0; i < c->n; i++) {
        fz_node_t *nd = &c->nodes[i];
        for (size_t k = 0; k < RING_LINES; k++) {
            free(nd->ring[k]);
        }
        free(nd->ring);
        pthread_mutex_destroy(&nd->ring_mu);
        while (nd->incs != NULL) {
            fz_incarnation_t *inc = nd->incs;
            nd->incs = inc->next;
            if (c->o.fsm.destroy != NULL) {
                c->o.fsm.destroy(c->o.fsm.arg, inc->user);
            } else {
                craft_fuzzy_kv_fsm_free(inc->user);
            }
            free(inc);
        }
    }
    for (size_t i = 0; i < c->ledger_cap; i++) {
        free(c->ledger[i].data);
    }
    free(c->ledger);
    craft_fuzzy_report_free(&c->live);
    if (c->own_dir) {
        rmrf(c->dir);
    }
    free(c->dir);
    pthread_mutex_destroy(&c->ledger_mu);
    pthread_rwlock_destroy(&c->rw);
    free(c);
}

craft_fuzzy_net_t *craft_fuzzy_cluster_net(craft_fuzzy_cluster_t *c)
{
    return c->net;
}

size_t craft_fuzzy_cluster_slots(craft_fuzzy_cluster_t *c)
{
    pthread_rwlock_rdlock(&c->rw);
    size_t n = c->n;
    pthread_rwlock_unlock(&c->rw);
    return n;
}

const char *craft_fuzzy_cluster_id(craft_fuzzy_cluster_t *c, size_t i)
{
    return i < CRAFT_FUZZY_MAX_NODES ? c->nodes[i].id : NULL;
}

bool craft_fuzzy_cluster_running(craft_fuzzy_cluster_t *c, size_t i)
{
    pthread_rwlock_rdlock(&c->rw);
    bool b = i < c->n && c->nodes[i].state == FZ_RUNNING;
    pthread_rwlock_unlock(&c->rw);
    return b;
}

bool craft_fuzzy_cluster_member(craft_fuzzy_cluster_t *c, size_t i)
{
    pthread_rwlock_rdlock(&c->rw);
    bool b = i < c->n && c->nodes[i].member;
    pthread_rwlock_unlock(&c->rw);
    return b;
}

craft_fuzzy_store_t *craft_fuzzy_cluster_store(craft_fuzzy_cluster_t *c, size_t i)
{
    pthread_rwlock_rdlock(&c->rw);
    craft_fuzzy_store_t *s = i < c->n && c->nodes[i].state == FZ_RUNNING ? c->nodes[i].fstore : NULL;
    pthread_rwlock_unlock(&c->rw);
    return s;
}

int craft_fuzzy_cluster_with_node(craft_fuzzy_cluster_t *c, size_t i,
                                  int (*fn)(void *arg, craft_t *r, craft_fsm_t *fsm), void *arg)
{
    pthread_rwlock_rdlock(&c->rw);
    int rv = CRAFT_ESHUTDOWN;
    if (i < c->n && c->nodes[i].state == FZ_RUNNING && c->nodes[i].r != NULL) {
        rv = fn(arg, c->nodes[i].r, c->nodes[i].user);
    }
    pthread_rwlock_unlock(&c->rw);
    return rv;
}

uint64_t craft_fuzzy_cluster_generation(craft_fuzzy_cluster_t *c, size_t i)
{
    pthread_rwlock_rdlock(&c->rw);
    uint64_t g = i < c->n ? c->nodes[i].gen : 0;
    pthread_rwlock_unlock(&c->rw);
    return g;
}

int craft_fuzzy_cluster_leader(craft_fuzzy_cluster_t *c, int64_t timeout_ms)
{
    int64_t deadline = fz_now_us() + timeout_ms * 1000;
    for (;;) {
        int best = -1;
        uint64_t best_term = 0;
        pthread_rwlock_rdlock(&c->rw);
        for (size_t i = 0; i < c->n; i++) {
            fz_node_t *nd = &c->nodes[i];
            if (nd->state == FZ_RUNNING && nd->r != NULL && craft_state(nd->r) == CRAFT_LEADER) {
                uint64_t t = craft_current_term(nd->r);
                if (best < 0 || t > best_term) {
                    best = (int)i;
                    best_term = t;
                }
            }
        }
        pthread_rwlock_unlock(&c->rw);
        if (best >= 0 || fz_now_us() >= deadline) {
            return best;
        }
        fz_sleep_us(5000);
    }
}

/* Starts an operation on the leader under the read lock: `start` returns a
 * future. Returns NULL when there is no running leader. */
static craft_future_t *on_leader(craft_fuzzy_cluster_t *c, int64_t wait_ms, int *slot,
                                 craft_future_t *(*start)(craft_t *r, void *arg), void *arg)
{
    int l = craft_fuzzy_cluster_leader(c, wait_ms);
    if (l < 0) {
        return NULL;
    }
    craft_future_t *f = NULL;
    pthread_rwlock_rdlock(&c->rw);
    if (c->nodes[l].state == FZ_RUNNING && c->nodes[l].r != NULL) {
        f = start(c->nodes[l].r, arg);
    }
    pthread_rwlock_unlock(&c->rw);
    if (slot != NULL) {
        *slot = l;
    }
    return f;
}

typedef struct apply_args {
    const void *data;
    size_t len;
    int64_t timeout_ms;
} apply_args_t;

static craft_future_t *start_apply(craft_t *r, void *arg)
{
    apply_args_t *a = arg;
    return craft_apply(r, a->data, a->len, a->timeout_ms);
}

int craft_fuzzy_cluster_apply(craft_fuzzy_cluster_t *c, const void *data, size_t len,
                              int64_t timeout_ms, uint64_t *index)
{
    int64_t deadline = fz_now_us() + timeout_ms * 1000;
    apply_args_t a = {data, len, timeout_ms};
    for (;;) {
        int64_t left = (deadline - fz_now_us()) / 1000;
        if (left <= 0) {
            return CRAFT_ETIMEDOUT;
        }
        craft_future_t *f = on_leader(c, left, NULL, start_apply, &a);
        if (f == NULL) {
            return CRAFT_ETIMEDOUT;
        }
        int rv = craft_future_wait_for(f, left);
        if (rv == 0 && index != NULL) {
            *index = craft_future_index(f);
        }
        craft_future_free(f);
        if (rv != CRAFT_ENOTLEADER && rv != CRAFT_ETRANSFER) {
            return rv;
        }
        fz_sleep_us(5000);
    }
}

int craft_fuzzy_cluster_crash(craft_fuzzy_cluster_t *c, size_t i)
{
    if (i >= c->n || c->nodes[i].state != FZ_RUNNING) {
        return CRAFT_EINVAL;
    }
    fz_node_note(&c->nodes[i], "crash");
    stop_node(&c->nodes[i], FZ_CRASHED);
    c->crashes++;
    return 0;
}

void craft_fuzzy_cluster_stop(craft_fuzzy_cluster_t *c)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->nodes[i].state == FZ_RUNNING) {
            stop_node(&c->nodes[i], FZ_CRASHED);
        }
    }
}

int craft_fuzzy_cluster_restart(craft_fuzzy_cluster_t *c, size_t i)
{
    if (i >= c->n || c->nodes[i].state == FZ_RUNNING || c->nodes[i].state == FZ_EMPTY) {
        return CRAFT_EINVAL;
    }
    fz_node_t *nd = &c->nodes[i];
    fz_node_note(nd, "restart");
    int rv = open_parts(nd);
    if (rv == 0) {
        rv = start_node(nd);
        if (rv != 0) {
            close_parts(nd);
        }
    }
    if (rv != 0) {
        fprintf(stderr, "fuzzy: restart of %s failed: %s\n", nd->id, craft_strerror(rv));
    }
    return rv;
}

typedef struct member_args {
    const char *id, *addr;
    int64_t timeout_ms;
    int kind; /* 0 nonvoter, 1 voter, 2 remove */
} member_args_t;

static craft_future_t *start_member(craft_t *r, void *arg)
{
    member_args_t *a = arg;
    switch (a->kind) {
    case 0:
        return craft_add_nonvoter(r, a->id, a->addr, 0, a->timeout_ms);
    case 1:
        return craft_add_voter(r, a->id, a->addr, 0, a->timeout_ms);
    default:
        return craft_remove_server(r, a->id, 0, a->timeout_ms);
    }
}

static int member_change(craft_fuzzy_cluster_t *c, member_args_t *a, int64_t timeout_ms)
{
    craft_future_t *f = on_leader(c, timeout_ms, NULL, start_member, a);
    if (f == NULL) {
        return CRAFT_ENOTLEADER;
    }
    int rv = craft_future_wait_for(f, timeout_ms);
    craft_future_free(f);
    return rv;
}

int craft_fuzzy_cluster_add(craft_fuzzy_cluster_t *c, bool voter, int64_t timeout_ms,
                            size_t *slot)
{
    if (c->n >= CRAFT_FUZZY_MAX_NODES) {
        return CRAFT_EBUSY;
    }
    pthread_rwlock_wrlock(&c->rw);
    size_t i = c->n++;
    node_init(c, i);
    pthread_rwlock_unlock(&c->rw);
    fz_node_t *nd = &c->nodes[i];
    int rv = open_parts(nd);
    if (rv == 0) {
        rv = start_node(nd);
    }
    if (rv != 0) {
        close_parts(nd);
        nd->state = FZ_REMOVED;
        return rv;
    }
    fz_node_note(nd, "adding as %s", voter ? "voter" : "nonvoter");
    member_args_t a = {nd->id, nd->addr, timeout_ms, 0};
    rv = member_change(c, &a, timeout_ms);
    if (rv != 0) {
        return rv; /* stays running; converge syncs membership */
    }
    nd->member = true;
    if (voter) {
        /* Let it catch up before it gets a vote. */
        int64_t deadline = fz_now_us() + timeout_ms * 1000;
        while (fz_now_us() < deadline) {
            int l = craft_fuzzy_cluster_leader(c, 0);
            bool caught_up = false;
            pthread_rwlock_rdlock(&c->rw);
            if (l >= 0 && nd->r != NULL && c->nodes[l].r != NULL) {
                caught_up = craft_applied_index(nd->r) + 8 >= craft_commit_index(c->nodes[l].r);
            }
            pthread_rwlock_unlock(&c->rw);
            if (caught_up) {
                break;
            }
            fz_sleep_us(10000);
        }
        a.kind = 1;
        rv = member_change(c, &a, timeout_ms);
        if (rv == 0) {
            nd->voter = true;
        }
    }
    if (slot != NULL) {
        *slot = i;
    }
    return rv;
}

int craft_fuzzy_cluster_remove(craft_fuzzy_cluster_t *c, size_t i, int64_t timeout_ms)
{
    if (i >= c->n) {
        return CRAFT_EINVAL;
    }
    fz_node_t *nd = &c->nodes[i];
    fz_node_note(nd, "removing");
    member_args_t a = {nd->id, nd->addr, timeout_ms, 2};
    int rv = member_change(c, &a, timeout_ms);
    if (rv != 0) {
        return rv;
    }
    nd->member = false;
    nd->voter = false;
    if (nd->state == FZ_RUNNING) {
        stop_node(nd, FZ_REMOVED);
    } else {
        nd->state = FZ_REMOVED;
    }
    return 0;
}

typedef struct transfer_args {
    const char *id;
} transfer_args_t;

static craft_future_t *start_transfer(craft_t *r, void *arg)
{
    transfer_args_t *a = arg;
    return a->id != NULL ? craft_leadership_transfer_to(r, a->id, NULL)
                         : craft_leadership_transfer(r);
}

int craft_fuzzy_cluster_transfer(craft_fuzzy_cluster_t *c, int target, int64_t timeout_ms)
{
    transfer_args_t a = {target >= 0 && (size_t)target < c->n ? c->nodes[target].id : NULL};
    int slot = -1;
    craft_future_t *f = on_leader(c, timeout_ms, &slot, start_transfer, &a);
    if (f == NULL) {
        return CRAFT_ENOTLEADER;
    }
    int rv = craft_future_wait_for(f, timeout_ms);
    craft_future_free(f);
    c->transfers += rv == 0;
    return rv;
}

int craft_fuzzy_cluster_snapshot(craft_fuzzy_cluster_t *c, size_t i, int64_t timeout_ms)
{
    craft_future_t *f = NULL;
    pthread_rwlock_rdlock(&c->rw);
    if (i < c->n && c->nodes[i].state == FZ_RUNNING && c->nodes[i].r != NULL) {
        f = craft_snapshot(c->nodes[i].r);
    }
    pthread_rwlock_unlock(&c->rw);
    if (f == NULL) {
        return CRAFT_ESHUTDOWN;
    }
    int rv = craft_future_wait_for(f, timeout_ms);
    craft_future_free(f);
    if (rv == CRAFT_ENOTHINGNEW) {
        rv = 0;
    }
    c->user_snapshots += rv == 0;
    return rv;
}

static craft_future_t *start_barrier(craft_t *r, void *arg)
{
    (void)arg;
    return craft_barrier(r, 0);
}

static craft_future_t *start_get_config(craft_t *r, void *arg)
{
    (void)arg;
    return craft_get_configuration(r);
}

/* Updates member/voter flags from the leader's configuration. */
static int sync_membership(craft_fuzzy_cluster_t *c, int64_t timeout_ms)
{
    craft_future_t *f = on_leader(c, timeout_ms, NULL, start_get_config, NULL);
    if (f == NULL) {
        return CRAFT_ENOTLEADER;
    }
    int rv = craft_future_wait_for(f, timeout_ms);
    const craft_configuration_t *cfg = rv == 0 ? craft_future_configuration(f) : NULL;
    if (cfg != NULL) {
        for (size_t i = 0; i < c->n; i++) {
            fz_node_t *nd = &c->nodes[i];
            bool in = false, voter = false;
            for (size_t k = 0; k < cfg->n; k++) {
                if (strcmp(cfg->servers[k].id, nd->id) == 0) {
                    in = true;
                    voter = cfg->servers[k].suffrage == CRAFT_VOTER;
                }
            }
            nd->member = in;
            nd->voter = voter;
        }
    } else if (rv == 0) {
        rv = CRAFT_EINVAL;
    }
    craft_future_free(f);
    return rv;
}

int craft_fuzzy_cluster_converge(craft_fuzzy_cluster_t *c, int64_t timeout_ms,
                                 craft_fuzzy_report_t *rep)
{
    int64_t deadline = fz_now_us() + timeout_ms * 1000;
    craft_fuzzy_net_set_faults(c->net, NULL);
    craft_fuzzy_net_heal(c->net);
    for (size_t i = 0; i < c->n; i++) {
        fz_node_t *nd = &c->nodes[i];
        if (nd->state == FZ_RUNNING) {
            craft_fuzzy_store_set_faults(nd->fstore, NULL);
            if (craft_fuzzy_store_failed(nd->fstore)) {
                /* A failed disk needs a restart (reopen) to be usable. */
                stop_node(nd, FZ_CRASHED);
            }
        }
        if (nd->state == FZ_CRASHED) {
            craft_fuzzy_cluster_restart(c, i);
        }
    }
    uint64_t barrier = 0;
    int rv = CRAFT_ETIMEDOUT;
    while (fz_now_us() < deadline) {
        int64_t left = (deadline - fz_now_us()) / 1000;
        if (sync_membership(c, left) != 0) {
            continue;
        }
        /* Members stopped after an uncertain removal come back. */
        for (size_t i = 0; i < c->n; i++) {
            if (c->nodes[i].member && c->nodes[i].state == FZ_REMOVED) {
                craft_fuzzy_cluster_restart(c, i);
            }
        }
        left = (deadline - fz_now_us()) / 1000;
        craft_future_t *f = on_leader(c, left, NULL, start_barrier, NULL);
        if (f == NULL) {
            continue;
        }
        int brv = craft_future_wait_for(f, left > 0 ? left : 1);
        barrier = craft_future_index(f);
        craft_future_free(f);
        if (brv == 0) {
            rv = 0;
            break;
        }
        fz_sleep_us(10000);
    }
    if (rv != 0) {
        craft_fuzzy_report_violation(rep, "liveness: no leader could commit a barrier within "
                                          "%" PRId64 " ms after healing",
                                     timeout_ms);
        return CRAFT_ETIMEDOUT;
    }
    for (;;) {
        size_t behind = 0;
        char who[64] = "";
        pthread_rwlock_rdlock(&c->rw);
        for (size_t i = 0; i < c->n; i++) {
            fz_node_t *nd = &c->nodes[i];
            if (nd->member && nd->state == FZ_RUNNING && nd->r != NULL &&
                craft_applied_index(nd->r) < barrier) {
                behind++;
                snprintf(who, sizeof who, "%s", nd->id);
            }
        }
        pthread_rwlock_unlock(&c->rw);
        if (behind == 0) {
            c->converged_index = barrier;
            return 0;
        }
        if (fz_now_us() >= deadline) {
            craft_fuzzy_report_violation(rep,
                                         "liveness: %zu member(s) (e.g. %s) did not apply the "
                                         "barrier at %" PRIu64 " within %" PRId64 " ms",
                                         behind, who, barrier, timeout_ms);
            return CRAFT_ETIMEDOUT;
        }
        fz_sleep_us(10000);
    }
}

bool craft_fuzzy_cluster_applied(craft_fuzzy_cluster_t *c, uint64_t index, char **data,
                                 size_t *len, void **response)
{
    bool found = false;
    pthread_mutex_lock(&c->ledger_mu);
    if (index < c->ledger_cap && c->ledger[index].set) {
        found = true;
        if (data != NULL) {
            *data = malloc(c->ledger[index].len + 1);
            if (*data != NULL) {
                memcpy(*data, c->ledger[index].data ? c->ledger[index].data : "",
                       c->ledger[index].len);
                (*data)[c->ledger[index].len] = '\0';
            }
        }
        if (len != NULL) {
            *len = c->ledger[index].len;
        }
        if (response != NULL) {
            *response = c->ledger[index].resp;
        }
    }
    pthread_mutex_unlock(&c->ledger_mu);
    return found;
}

uint64_t craft_fuzzy_cluster_max_applied(craft_fuzzy_cluster_t *c)
{
    pthread_mutex_lock(&c->ledger_mu);
    uint64_t m = c->max_applied;
    pthread_mutex_unlock(&c->ledger_mu);
    return m;
}

/* Opens node i's log for reading: the running node's store, or the files
 * of a stopped one. *close_after tells whether to close them. */
int fz_node_open_log(fz_node_t *nd, craft_log_store_t **log, craft_stable_store_t **stable,
                     bool *close_after)
{
    if (nd->state == FZ_RUNNING && nd->log != NULL) {
        *log = nd->log;
        *stable = nd->stable;
        *close_after = false;
        return 0;
    }
    *close_after = true;
    return open_sqlite(nd->c, nd, log, stable);
}
