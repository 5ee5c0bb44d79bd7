/*
 * LogStore/StableStore wrapper injecting disk faults.
 *
 * A write (store_logs, delete_range, set, set_uint64) may be slow (an fsync
 * stall: the call sleeps before returning) or fail with CRAFT_EIO, either
 * before reaching the inner store or after it (the bytes are there but the
 * caller was told they are not: durability unknown). After a failure the
 * pair refuses every call, reads included, with CRAFT_EIO until it is
 * reopened (craft_fuzzy_store_free + a new wrapper over reopened stores),
 * which is what the sqlite store does after an I/O error: the node has to
 * step down or refuse, and must never have acknowledged what it could not
 * store. freeze() models a crash: every later write is lost. get_logs is
 * offered when the inner store offers it and fails like get_log.
 *
 * The wrappers' own `close` members do nothing; craft_fuzzy_store_free
 * closes the inner stores.
 */
#include "craft/fuzzy.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct craft_fuzzy_store {
    craft_log_store_t log;
    craft_stable_store_t stable;
    craft_log_store_t *ilog;
    craft_stable_store_t *istable;
    pthread_mutex_t mu;
    fz_rng_t rng;
    craft_fuzzy_disk_faults_t f;
    bool failed;
    uint64_t faults;
};

typedef enum { W_OK, W_FAIL_BEFORE, W_FAIL_AFTER } wfate_t;

static bool is_failed(craft_fuzzy_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    bool f = s->failed;
    pthread_mutex_unlock(&s->mu);
    return f;
}

/* Decides a write's fate; CRAFT_EIO when the store already failed. */
static int before_write(craft_fuzzy_store_t *s, wfate_t *fate)
{
    pthread_mutex_lock(&s->mu);
    if (s->failed) {
        pthread_mutex_unlock(&s->mu);
        return CRAFT_EIO;
    }
    bool fail = fz_rng_chance(&s->rng, s->f.fail);
    bool after = fz_rng_chance(&s->rng, 0.5);
    bool slow = fz_rng_chance(&s->rng, s->f.slow);
    int64_t slow_us = fz_rng_range(&s->rng, s->f.slow_us / 4, s->f.slow_us);
    *fate = fail ? (after ? W_FAIL_AFTER : W_FAIL_BEFORE) : W_OK;
    if (fail) {
        s->failed = true; /* sticky, from this instant on */
        s->faults++;
    }
    pthread_mutex_unlock(&s->mu);
    if (slow) {
        fz_sleep_us(slow_us);
    }
    return 0;
}

static int after_write(wfate_t fate, int rv)
{
    return fate == W_OK ? rv : CRAFT_EIO;
}

#define WRITE_CALL(s, call)                                                                     \
    do {                                                                                        \
        wfate_t fate_;                                                                          \
        int rv_ = before_write((s), &fate_);                                                    \
        if (rv_ != 0) {                                                                         \
            return rv_;                                                                         \
        }                                                                                       \
        if (fate_ == W_FAIL_BEFORE) {                                                           \
            return CRAFT_EIO;                                                                   \
        }                                                                                       \
        rv_ = (call);                                                                           \
        return after_write(fate_, rv_);                                                         \
    } while (0)

static int l_first(void *ctx, uint64_t *index)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        return CRAFT_EIO;
    }
    return s->ilog->first_index(s->ilog->ctx, index);
}

static int l_last(void *ctx, uint64_t *index)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        return CRAFT_EIO;
    }
    return s->ilog->last_index(s->ilog->ctx, index);
}

static int l_get(void *ctx, uint64_t index, craft_log_t *out)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        return CRAFT_EIO;
    }
    return s->ilog->get_log(s->ilog->ctx, index, out);
}

/* Reads get the same policy as get_log: refused once the store failed. */
static int l_get_range(void *ctx, uint64_t lo, size_t max_n, size_t max_bytes, craft_log_t *out,
                       size_t *n)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        if (n != NULL) {
            *n = 0;
        }
        return CRAFT_EIO;
    }
    return s->ilog->get_logs(s->ilog->ctx, lo, max_n, max_bytes, out, n);
}

static int l_store(void *ctx, const craft_log_t *logs, size_t n)
{
    craft_fuzzy_store_t *s = ctx;
    WRITE_CALL(s, s->ilog->store_logs(s->ilog->ctx, logs, n));
}

static int l_delete(void *ctx, uint64_t min, uint64_t max)
{
    craft_fuzzy_store_t *s = ctx;
    WRITE_CALL(s, s->ilog->delete_range(s->ilog->ctx, min, max));
}

static int l_stage(void *ctx, uint64_t index)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        return CRAFT_EIO;
    }
    return s->ilog->stage_commit_index(s->ilog->ctx, index);
}

static int l_get_commit(void *ctx, uint64_t *index)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        return CRAFT_EIO;
    }
    return s->ilog->get_commit_index(s->ilog->ctx, index);
}

static void noop_close(void *ctx)
{
    (void)ctx;
}

static int st_set(void *ctx, const char *key, const void *val, size_t len)
{
    craft_fuzzy_store_t *s = ctx;
    WRITE_CALL(s, s->istable->set(s->istable->ctx, key, val, len));
}

static int st_get(void *ctx, const char *key, void **val, size_t *len)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        return CRAFT_EIO;
    }
    return s->istable->get(s->istable->ctx, key, val, len);
}

static int st_set_u64(void *ctx, const char *key, uint64_t val)
{
    craft_fuzzy_store_t *s = ctx;
    WRITE_CALL(s, s->istable->set_uint64(s->istable->ctx, key, val));
}

static int st_get_u64(void *ctx, const char *key, uint64_t *val)
{
    craft_fuzzy_store_t *s = ctx;
    if (is_failed(s)) {
        return CRAFT_EIO;
    }
    return s->istable->get_uint64(s->istable->ctx, key, val);
}

int craft_fuzzy_store_new(craft_log_store_t *inner_log, craft_stable_store_t *inner_stable,
                          uint64_t seed, craft_fuzzy_store_t **out, craft_log_store_t **log,
                          craft_stable_store_t **stable)
{
    if (inner_log == NULL || inner_stable == NULL || out == NULL || log == NULL ||
        stable == NULL) {
        return CRAFT_EINVAL;
    }
    craft_fuzzy_store_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    pthread_mutex_init(&s->mu, NULL);
    fz_rng_seed(&s->rng, seed, 0x5707e);
    s->ilog = inner_log;
    s->istable = inner_stable;
    s->log.ctx = s;
    s->log.first_index = l_first;
    s->log.last_index = l_last;
    s->log.get_log = l_get;
    s->log.get_logs = inner_log->get_logs != NULL ? l_get_range : NULL;
    s->log.store_logs = l_store;
    s->log.delete_range = l_delete;
    if (inner_log->stage_commit_index != NULL && inner_log->get_commit_index != NULL) {
        s->log.stage_commit_index = l_stage;
        s->log.get_commit_index = l_get_commit;
    }
    s->log.close = noop_close;
    s->stable.ctx = s;
    s->stable.set = st_set;
    s->stable.get = st_get;
    s->stable.set_uint64 = st_set_u64;
    s->stable.get_uint64 = st_get_u64;
    s->stable.close = noop_close;
    *out = s;
    *log = &s->log;
    *stable = &s->stable;
    return 0;
}

void craft_fuzzy_store_set_faults(craft_fuzzy_store_t *s, const craft_fuzzy_disk_faults_t *f)
{
    pthread_mutex_lock(&s->mu);
    if (f != NULL) {
        s->f = *f;
    } else {
        memset(&s->f, 0, sizeof s->f);
    }
    pthread_mutex_unlock(&s->mu);
}

void craft_fuzzy_store_freeze(craft_fuzzy_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->failed = true;
    pthread_mutex_unlock(&s->mu);
}

bool craft_fuzzy_store_failed(craft_fuzzy_store_t *s)
{
    return is_failed(s);
}

uint64_t craft_fuzzy_store_faults(craft_fuzzy_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t n = s->faults;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void craft_fuzzy_store_free(craft_fuzzy_store_t *s)
{
    if (s == NULL) {
        return;
    }
    s->ilog->close(s->ilog->ctx);
    s->istable->close(s->istable->ctx);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ---- SnapshotStore wrapper ------------------------------------------------
 * Writes (create, a sink's write and close) fail with the pair's `fail`
 * probability and are slowed like the pair's writes. A failure is not
 * sticky: a snapshot is a file set of its own, and the next attempt may
 * work. A failed close happens before the snapshot reached the inner store
 * (it is cancelled) or after (it is durable and listed, but the caller was
 * told it is not). Once the pair failed or was frozen (a crash), every
 * write fails and a sink being written is cancelled. Reads (list, open) are
 * passed through: restoring at start must see what is on disk. */

struct craft_fuzzy_snapshots {
    craft_snapshot_store_t vt;
    craft_snapshot_store_t *inner;
    craft_fuzzy_store_t *s;
};

typedef struct fz_sink {
    craft_snapshot_sink_t vt;
    craft_snapshot_sink_t *inner;
    craft_fuzzy_store_t *s;
} fz_sink_t;

/* A snapshot write's fate (W_OK, W_FAIL_BEFORE or W_FAIL_AFTER). */
static wfate_t snapshot_write_fate(craft_fuzzy_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    wfate_t fate = W_FAIL_BEFORE;
    bool slow = false;
    int64_t slow_us = 0;
    if (!s->failed) {
        bool fail = fz_rng_chance(&s->rng, s->f.fail);
        bool after = fz_rng_chance(&s->rng, 0.5);
        slow = fz_rng_chance(&s->rng, s->f.slow);
        slow_us = fz_rng_range(&s->rng, s->f.slow_us / 4, s->f.slow_us);
        fate = fail ? (after ? W_FAIL_AFTER : W_FAIL_BEFORE) : W_OK;
        s->faults += fail;
    }
    pthread_mutex_unlock(&s->mu);
    if (slow) {
        fz_sleep_us(slow_us);
    }
    return fate;
}

static int sink_write(void *ctx, const void *buf, size_t len)
{
    fz_sink_t *k = ctx;
    if (snapshot_write_fate(k->s) != W_OK) {
        return CRAFT_EIO; /* the caller cancels */
    }
    return k->inner->write(k->inner->ctx, buf, len);
}

static int sink_close(void *ctx)
{
    fz_sink_t *k = ctx;
    wfate_t fate = snapshot_write_fate(k->s);
    int rv;
    if (fate == W_FAIL_BEFORE) {
        k->inner->cancel(k->inner->ctx);
        rv = CRAFT_EIO;
    } else {
        rv = k->inner->close(k->inner->ctx);
        if (rv == 0 && fate == W_FAIL_AFTER) {
            rv = CRAFT_EIO;
        }
    }
    free(k);
    return rv;
}

static int sink_cancel(void *ctx)
{
    fz_sink_t *k = ctx;
    int rv = k->inner->cancel(k->inner->ctx);
    free(k);
    return rv;
}

static const char *sink_id(void *ctx)
{
    fz_sink_t *k = ctx;
    return k->inner->id(k->inner->ctx);
}

static int sn_create(void *ctx, int version, uint64_t index, uint64_t term,
                     const craft_configuration_t *configuration, uint64_t configuration_index,
                     craft_snapshot_sink_t **sink)
{
    craft_fuzzy_snapshots_t *w = ctx;
    if (snapshot_write_fate(w->s) != W_OK) {
        return CRAFT_EIO;
    }
    fz_sink_t *k = calloc(1, sizeof *k);
    if (k == NULL) {
        return CRAFT_ENOMEM;
    }
    int rv = w->inner->create(w->inner->ctx, version, index, term, configuration,
                              configuration_index, &k->inner);
    if (rv != 0) {
        free(k);
        return rv;
    }
    k->s = w->s;
    k->vt.ctx = k;
    k->vt.write = sink_write;
    k->vt.close = sink_close;
    k->vt.cancel = sink_cancel;
    k->vt.id = sink_id;
    *sink = &k->vt;
    return 0;
}

static int sn_list(void *ctx, craft_snapshot_meta_t ***metas, size_t *n)
{
    craft_fuzzy_snapshots_t *w = ctx;
    return w->inner->list(w->inner->ctx, metas, n);
}

static int sn_open(void *ctx, const char *id, craft_snapshot_meta_t **meta,
                   craft_reader_t **reader)
{
    craft_fuzzy_snapshots_t *w = ctx;
    return w->inner->open(w->inner->ctx, id, meta, reader);
}

static void sn_close(void *ctx)
{
    craft_fuzzy_snapshots_t *w = ctx;
    w->inner->close(w->inner->ctx);
    free(w);
}

int craft_fuzzy_snapshots_new(craft_fuzzy_store_t *s, craft_snapshot_store_t *inner,
                              craft_snapshot_store_t **out)
{
    if (s == NULL || inner == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    craft_fuzzy_snapshots_t *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return CRAFT_ENOMEM;
    }
    w->inner = inner;
    w->s = s;
    w->vt.ctx = w;
    w->vt.create = sn_create;
    w->vt.list = sn_list;
    w->vt.open = sn_open;
    w->vt.close = sn_close;
    *out = &w->vt;
    return 0;
}
