/*
 * LogCache (include/craft/log_cache.h): a ring of the most recent entries in
 * front of a LogStore.
 *
 * Two locks: `write_mu` serialises store_logs and delete_range for the whole
 * backing call, so a slot is filled only after its entry is durable and can
 * never be refilled by a write racing with a delete of the same index
 * (hashicorp's LogCache has that race). `slot_mu` guards the slots and is
 * held only to look up or swap one entry, so hits never wait for an fsync.
 * Lock order: write_mu, then slot_mu.
 *
 * get_logs is always offered: a range whose every entry is cached (up to
 * max_n, max_bytes or the backing store's last index) is copied from the
 * slots under one hold of slot_mu; anything else goes to the backing store
 * whole (its get_logs, or a get_log loop when it has none), never half from
 * each. As with get_log, a read concurrent with a store_logs that overwrites
 * cached indexes without deleting them first (Raft deletes a conflicting
 * suffix first, which empties the slots) may see some old entries: the
 * slots are refilled one by one after the backing write.
 */
#include "craft/log_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct lc_slot {
    uint64_t index; /* 0 = empty (0 is never a log index) */
    craft_log_t entry; /* data and ext point into `buf` */
    void *buf;
} lc_slot_t;

typedef struct log_cache {
    craft_log_store_t store; /* handed out; ctx = this */
    craft_log_store_t *backing;
    pthread_mutex_t write_mu;
    pthread_mutex_t slot_mu;
    size_t capacity;
    lc_slot_t *slots;
} log_cache_t;

static lc_slot_t *lc_slot(log_cache_t *c, uint64_t index)
{
    return &c->slots[index % c->capacity];
}

/* Empties a slot; returns its buffer for the caller to free outside the
 * lock. Caller holds slot_mu. */
static void *lc_clear(lc_slot_t *s)
{
    void *buf = s->buf;
    memset(s, 0, sizeof *s);
    return buf;
}

static int lc_first_index(void *ctx, uint64_t *index)
{
    log_cache_t *c = ctx;
    return c->backing->first_index(c->backing->ctx, index);
}

static int lc_last_index(void *ctx, uint64_t *index)
{
    log_cache_t *c = ctx;
    return c->backing->last_index(c->backing->ctx, index);
}

static int lc_get_log(void *ctx, uint64_t index, craft_log_t *out)
{
    log_cache_t *c = ctx;
    if (index != 0 && out != NULL) {
        pthread_mutex_lock(&c->slot_mu);
        lc_slot_t *s = lc_slot(c, index);
        if (s->index == index) {
            craft_log_t e = s->entry;
            e.data = NULL;
            e.ext = NULL;
            void *data = NULL, *ext = NULL;
            if (e.len > 0 && (data = malloc(e.len)) != NULL) {
                memcpy(data, s->entry.data, e.len);
            }
            if (e.ext_len > 0 && (ext = malloc(e.ext_len)) != NULL) {
                memcpy(ext, s->entry.ext, e.ext_len);
            }
            pthread_mutex_unlock(&c->slot_mu);
            if ((e.len > 0 && data == NULL) || (e.ext_len > 0 && ext == NULL)) {
                free(data);
                free(ext);
                return CRAFT_ENOMEM;
            }
            e.data = data;
            e.ext = ext;
            *out = e;
            return 0;
        }
        pthread_mutex_unlock(&c->slot_mu);
    }
    return c->backing->get_log(c->backing->ctx, index, out);
}

/* Copies the cached entry in `s` into *out with fresh buffers. Caller holds
 * slot_mu. */
static int lc_copy_slot(const lc_slot_t *s, craft_log_t *out)
{
    craft_log_t e = s->entry;
    void *data = NULL, *ext = NULL;
    if (e.len > 0 && (data = malloc(e.len)) == NULL) {
        return CRAFT_ENOMEM;
    }
    if (e.ext_len > 0 && (ext = malloc(e.ext_len)) == NULL) {
        free(data);
        return CRAFT_ENOMEM;
    }
    if (e.len > 0) {
        memcpy(data, e.data, e.len);
    }
    if (e.ext_len > 0) {
        memcpy(ext, e.ext, e.ext_len);
    }
    e.data = data;
    e.ext = ext;
    *out = e;
    return 0;
}

/* Serves lo.. from the slots when every entry the read returns is cached
 * and the cache also shows where the read stops (max_n, max_bytes, or the
 * end of the log). Returns true when served (result in *rv), false when the
 * whole read must go to the backing store. Everything happens under one
 * hold of slot_mu: a slot is filled only after its entry is durable and
 * emptied before its delete starts. */
static bool lc_get_logs_cached(log_cache_t *c, uint64_t lo, size_t max_n,
                               size_t max_bytes, craft_log_t *out, size_t *n,
                               int *rv)
{
    size_t k = 0;
    size_t bytes = 0;
    bool miss = false;
    *rv = 0;
    pthread_mutex_lock(&c->slot_mu);
    for (; k < max_n && lo + k != 0; k++) {
        const lc_slot_t *s = lc_slot(c, lo + k);
        if (s->index != lo + k) {
            miss = true;
            break;
        }
        size_t size = s->entry.len + s->entry.ext_len;
        if (k > 0 && (size > max_bytes || bytes > max_bytes - size)) {
            break;
        }
        bytes += size;
    }
    if (miss && k > 0) {
        /* Past the last index the read ends anyway (the common case: a
         * read of the newest entries). Otherwise the entry is merely not
         * cached, or it is being written right now: ask the backing store.
         * Its last_index is read under slot_mu (no lock of the backing
         * store is ever held while taking slot_mu, so no cycle). */
        uint64_t last = 0;
        if (c->backing->last_index(c->backing->ctx, &last) == 0 &&
            lo + k > last) {
            miss = false;
        }
    }
    if (miss) {
        pthread_mutex_unlock(&c->slot_mu);
        return false;
    }
    size_t want = k;
    for (k = 0; k < want; k++) {
        if ((*rv = lc_copy_slot(lc_slot(c, lo + k), &out[k])) != 0) {
            break;
        }
    }
    pthread_mutex_unlock(&c->slot_mu);
    if (*rv != 0) {
        for (size_t i = 0; i < k; i++) {
            craft_log_release(&out[i]);
        }
        k = 0;
    }
    *n = k;
    return true;
}

/* The backing store's get_logs, or a get_log loop with the same contract
 * when it does not offer one. */
static int lc_backing_get_logs(log_cache_t *c, uint64_t lo, size_t max_n,
                               size_t max_bytes, craft_log_t *out, size_t *n)
{
    craft_log_store_t *b = c->backing;
    if (b->get_logs != NULL) {
        return b->get_logs(b->ctx, lo, max_n, max_bytes, out, n);
    }
    size_t k = 0;
    size_t bytes = 0;
    int rv = 0;
    for (; k < max_n && lo + k != 0; k++) {
        craft_log_t e;
        memset(&e, 0, sizeof e);
        rv = b->get_log(b->ctx, lo + k, &e);
        if (rv == CRAFT_ENOTFOUND && k > 0) {
            rv = 0; /* the end of the run */
            break;
        }
        if (rv != 0) {
            goto err_after_entries;
        }
        size_t size = e.len + e.ext_len;
        if (k > 0 && (size > max_bytes || bytes > max_bytes - size)) {
            craft_log_release(&e);
            break;
        }
        bytes += size;
        out[k] = e;
    }
    *n = k;
    return 0;

err_after_entries:
    for (size_t i = 0; i < k; i++) {
        craft_log_release(&out[i]);
    }
    return rv;
}

static int lc_get_logs(void *ctx, uint64_t lo, size_t max_n, size_t max_bytes,
                       craft_log_t *out, size_t *n)
{
    log_cache_t *c = ctx;
    if (n != NULL) {
        *n = 0;
    }
    if (out == NULL || n == NULL || max_n == 0) {
        return CRAFT_EINVAL;
    }
    if (lo == 0) {
        return CRAFT_ENOTFOUND;
    }
    int rv;
    if (lc_get_logs_cached(c, lo, max_n, max_bytes, out, n, &rv)) {
        return rv;
    }
    rv = lc_backing_get_logs(c, lo, max_n, max_bytes, out, n);
    if (rv != 0) {
        *n = 0;
    }
    return rv;
}

/* Caches a copy of `l`. A failed allocation leaves the slot empty: the
 * entry is then read from the backing store. Caller holds write_mu. */
static void lc_fill(log_cache_t *c, const craft_log_t *l)
{
    void *buf = NULL;
    size_t size = l->len + l->ext_len;
    if (size > 0) {
        buf = malloc(size);
    }
    pthread_mutex_lock(&c->slot_mu);
    lc_slot_t *s = lc_slot(c, l->index);
    void *old = lc_clear(s);
    if (l->index != 0 && (size == 0 || buf != NULL)) {
        unsigned char *p = buf;
        s->index = l->index;
        s->entry = *l;
        s->entry.data = NULL;
        s->entry.ext = NULL;
        if (l->len > 0) {
            memcpy(p, l->data, l->len);
            s->entry.data = p;
        }
        if (l->ext_len > 0) {
            memcpy(p + l->len, l->ext, l->ext_len);
            s->entry.ext = p + l->len;
        }
        s->buf = buf;
        buf = NULL;
    }
    pthread_mutex_unlock(&c->slot_mu);
    free(old);
    free(buf);
}

/* Drops the cached entries with min <= index <= max. Caller holds
 * write_mu. */
static void lc_invalidate(log_cache_t *c, uint64_t min, uint64_t max)
{
    if (min > max) {
        return;
    }
    pthread_mutex_lock(&c->slot_mu);
    if (max - min >= c->capacity - 1) {
        for (size_t i = 0; i < c->capacity; i++) {
            lc_slot_t *s = &c->slots[i];
            if (s->index >= min && s->index <= max && s->index != 0) {
                free(lc_clear(s));
            }
        }
    } else {
        for (uint64_t i = min;; i++) {
            lc_slot_t *s = lc_slot(c, i);
            if (s->index == i && i != 0) {
                free(lc_clear(s));
            }
            if (i == max) {
                break;
            }
        }
    }
    pthread_mutex_unlock(&c->slot_mu);
}

static int lc_store_logs(void *ctx, const craft_log_t *logs, size_t n)
{
    log_cache_t *c = ctx;
    pthread_mutex_lock(&c->write_mu);
    int rv = c->backing->store_logs(c->backing->ctx, logs, n);
    for (size_t i = 0; logs != NULL && i < n; i++) {
        if (rv == 0) {
            lc_fill(c, &logs[i]);
        } else {
            /* The backing store may have written part of the batch: what
             * the cache held for these indexes may be stale now. */
            lc_invalidate(c, logs[i].index, logs[i].index);
        }
    }
    pthread_mutex_unlock(&c->write_mu);
    return rv;
}

static int lc_delete_range(void *ctx, uint64_t min, uint64_t max)
{
    log_cache_t *c = ctx;
    pthread_mutex_lock(&c->write_mu);
    lc_invalidate(c, min, max);
    int rv = c->backing->delete_range(c->backing->ctx, min, max);
    pthread_mutex_unlock(&c->write_mu);
    return rv;
}

static int lc_stage_commit_index(void *ctx, uint64_t index)
{
    log_cache_t *c = ctx;
    return c->backing->stage_commit_index(c->backing->ctx, index);
}

static int lc_get_commit_index(void *ctx, uint64_t *index)
{
    log_cache_t *c = ctx;
    return c->backing->get_commit_index(c->backing->ctx, index);
}

static void lc_close(void *ctx)
{
    log_cache_t *c = ctx;
    for (size_t i = 0; i < c->capacity; i++) {
        free(c->slots[i].buf);
    }
    free(c->slots);
    pthread_mutex_destroy(&c->slot_mu);
    pthread_mutex_destroy(&c->write_mu);
    free(c);
}

int craft_log_cache_new(size_t capacity, craft_log_store_t *backing,
                        craft_log_store_t **out)
{
    if (capacity == 0 || backing == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    log_cache_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return CRAFT_ENOMEM;
    }
    c->slots = calloc(capacity, sizeof *c->slots);
    if (c->slots == NULL) {
        goto err_after_alloc;
    }
    if (pthread_mutex_init(&c->write_mu, NULL) != 0) {
        goto err_after_slots;
    }
    if (pthread_mutex_init(&c->slot_mu, NULL) != 0) {
        goto err_after_write_mu;
    }
    c->capacity = capacity;
    c->backing = backing;
    c->store = (craft_log_store_t){
        .ctx = c,
        .first_index = lc_first_index,
        .last_index = lc_last_index,
        .get_log = lc_get_log,
        .store_logs = lc_store_logs,
        .delete_range = lc_delete_range,
        .stage_commit_index =
            backing->stage_commit_index != NULL ? lc_stage_commit_index : NULL,
        .get_commit_index =
            backing->get_commit_index != NULL ? lc_get_commit_index : NULL,
        .get_logs = lc_get_logs,
        .close = lc_close,
    };
    *out = &c->store;
    return 0;

err_after_write_mu:
    pthread_mutex_destroy(&c->write_mu);
err_after_slots:
    free(c->slots);
err_after_alloc:
    free(c);
    return CRAFT_ENOMEM;
}
