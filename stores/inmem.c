/*
 * In-memory LogStore and StableStore (hashicorp's InmemStore), for tests and
 * examples. Nothing survives close.
 *
 * LogStore layout: the entries live in one array sorted by index, with a
 * `head` offset so that deleting a prefix (log compaction, the common delete)
 * costs nothing but the frees. Appending past the last index (the common
 * store) is amortised O(1); anything else (overwriting a suffix after a
 * conflict, storing below the first index or into a gap) is a binary search
 * plus a memmove. Gaps are allowed: hashicorp stores accept entries that are
 * not contiguous with the existing ones (e.g. after a snapshot restore), so
 * first_index/last_index are the smallest/largest stored indexes and
 * get_log of an index inside a gap is CRAFT_ENOTFOUND (and get_logs stops
 * before it).
 *
 * Every entry owns malloc'd copies of its data and ext (NULL when empty).
 *
 * Commit tracking (hashicorp #613): stage_commit_index remembers a value that
 * becomes the persisted commit index when the next store_logs succeeds
 * (store_logs with n == 0 counts), exactly like a durable store writing both
 * in one transaction. get_commit_index returns the persisted value.
 *
 * StableStore: a sorted array of (key, value) pairs with binary search.
 * set_uint64 stores the value as 8 big-endian bytes in the same key space (as
 * raft-boltdb does); get_uint64 of a value that is not 8 bytes long is
 * CRAFT_ECORRUPT.
 *
 * Both stores are thread-safe: one mutex per store guards everything.
 */
#include "craft/inmem.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* LogStore                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct inmem_log_store {
    craft_log_store_t iface; /* handed out; ctx points back here */
    pthread_mutex_t mu;
    craft_log_t *entries; /* entries[head .. head+count-1], sorted by index */
    size_t head;
    size_t count;
    size_t cap;
    uint64_t staged_commit;    /* from stage_commit_index */
    bool has_staged_commit;
    uint64_t commit_index;     /* persisted by the last store_logs */
} inmem_log_store_t;

static void entry_free(craft_log_t *e)
{
    free((void *)e->data);
    free((void *)e->ext);
}

/* Position (relative to head) of the first entry with index >= `index`. */
static size_t lower_bound(const inmem_log_store_t *s, uint64_t index)
{
    const craft_log_t *base = s->entries + s->head;
    size_t lo = 0;
    size_t hi = s->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (base[mid].index < index) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static int log_first_index(void *ctx, uint64_t *index)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL || index == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&s->mu);
    *index = s->count == 0 ? 0 : s->entries[s->head].index;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int log_last_index(void *ctx, uint64_t *index)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL || index == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&s->mu);
    *index = s->count == 0 ? 0 : s->entries[s->head + s->count - 1].index;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Copies `len` bytes into a fresh buffer; NULL (and success) when len == 0.
 * Returns false on allocation failure. */
static bool dup_bytes(const void *src, size_t len, const void **dst)
{
    *dst = NULL;
    if (len == 0) {
        return true;
    }
    void *p = malloc(len);
    if (p == NULL) {
        return false;
    }
    memcpy(p, src, len);
    *dst = p;
    return true;
}

/* Fills `out` with a copy of `src` whose data/ext are fresh buffers. */
static int entry_copy(craft_log_t *out, const craft_log_t *src)
{
    *out = *src;
    if (!dup_bytes(src->data, src->len, &out->data)) {
        goto err_nomem;
    }
    if (!dup_bytes(src->ext, src->ext_len, &out->ext)) {
        goto err_after_data;
    }
    return 0;

err_after_data:
    free((void *)out->data);
err_nomem:
    out->data = NULL;
    out->ext = NULL;
    return CRAFT_ENOMEM;
}

static int log_get_log(void *ctx, uint64_t index, craft_log_t *out)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL || out == NULL || index == 0) {
        return CRAFT_EINVAL;
    }
    int rv = CRAFT_ENOTFOUND;
    pthread_mutex_lock(&s->mu);
    size_t pos = lower_bound(s, index);
    if (pos < s->count && s->entries[s->head + pos].index == index) {
        rv = entry_copy(out, &s->entries[s->head + pos]);
    }
    pthread_mutex_unlock(&s->mu);
    return rv;
}

static int log_get_logs(void *ctx, uint64_t lo, size_t max_n, size_t max_bytes,
                        craft_log_t *out, size_t *n)
{
    inmem_log_store_t *s = ctx;
    if (n != NULL) {
        *n = 0;
    }
    if (s == NULL || out == NULL || n == NULL || max_n == 0) {
        return CRAFT_EINVAL;
    }
    if (lo == 0) {
        return CRAFT_ENOTFOUND;
    }
    int rv = 0;
    size_t k = 0;
    size_t bytes = 0;
    pthread_mutex_lock(&s->mu);
    size_t pos = lower_bound(s, lo);
    const craft_log_t *base = s->entries + s->head;
    if (pos >= s->count || base[pos].index != lo) {
        rv = CRAFT_ENOTFOUND;
        goto out_unlock;
    }
    /* Entries are sorted and unique: the run is consecutive while each
     * index is its predecessor's plus one. */
    for (; k < max_n && pos + k < s->count && base[pos + k].index == lo + k; k++) {
        const craft_log_t *e = &base[pos + k];
        size_t size = e->len + e->ext_len;
        if (k > 0 && (size > max_bytes || bytes > max_bytes - size)) {
            break;
        }
        bytes += size;
        if ((rv = entry_copy(&out[k], e)) != 0) {
            goto err_after_copies;
        }
    }
    *n = k;
    goto out_unlock;

err_after_copies:
    for (size_t i = 0; i < k; i++) {
        craft_log_release(&out[i]);
    }
out_unlock:
    pthread_mutex_unlock(&s->mu);
    return rv;
}

/* Makes room for `extra` more entries after the last one. Called with the
 * lock held. Slides the live part back to the start of the array before
 * growing it, so a log that is appended and compacted forever stays bounded. */
static int reserve(inmem_log_store_t *s, size_t extra)
{
    if (s->head + s->count + extra <= s->cap) {
        return 0;
    }
    if (s->head > 0) {
        memmove(s->entries, s->entries + s->head, s->count * sizeof *s->entries);
        s->head = 0;
        if (s->count + extra <= s->cap) {
            return 0;
        }
    }
    size_t cap = s->cap == 0 ? 64 : s->cap;
    while (cap < s->count + extra) {
        if (cap > SIZE_MAX / 2 / sizeof *s->entries) {
            return CRAFT_ENOMEM;
        }
        cap *= 2;
    }
    craft_log_t *p = realloc(s->entries, cap * sizeof *p);
    if (p == NULL) {
        return CRAFT_ENOMEM;
    }
    s->entries = p;
    s->cap = cap;
    return 0;
}

/* Puts the (already copied) entry `e` in place, taking ownership of its
 * buffers. Room for one more entry must have been reserved. */
static void insert_entry(inmem_log_store_t *s, craft_log_t *e)
{
    craft_log_t *base = s->entries + s->head;
    if (s->count == 0 || base[s->count - 1].index < e->index) {
        base[s->count++] = *e; /* the common case: append */
        return;
    }
    size_t pos = lower_bound(s, e->index);
    if (pos < s->count && base[pos].index == e->index) {
        entry_free(&base[pos]); /* overwrite */
        base[pos] = *e;
        return;
    }
    memmove(base + pos + 1, base + pos, (s->count - pos) * sizeof *base);
    base[pos] = *e;
    s->count++;
}

static int log_store_logs(void *ctx, const craft_log_t *logs, size_t n)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL || (logs == NULL && n > 0)) {
        return CRAFT_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (logs[i].index == 0 || (logs[i].data == NULL && logs[i].len > 0) ||
            (logs[i].ext == NULL && logs[i].ext_len > 0)) {
            return CRAFT_EINVAL;
        }
    }
    /* Copy everything before touching the store so that a failure leaves it
     * unchanged (store_logs is all or nothing, like a transaction). */
    craft_log_t *copies = NULL;
    if (n > 0) {
        copies = calloc(n, sizeof *copies);
        if (copies == NULL) {
            return CRAFT_ENOMEM;
        }
    }
    size_t copied = 0;
    int rv = 0;
    for (; copied < n; copied++) {
        rv = entry_copy(&copies[copied], &logs[copied]);
        if (rv != 0) {
            goto err_after_copies;
        }
    }

    pthread_mutex_lock(&s->mu);
    rv = reserve(s, n);
    if (rv != 0) {
        pthread_mutex_unlock(&s->mu);
        goto err_after_copies;
    }
    for (size_t i = 0; i < n; i++) {
        insert_entry(s, &copies[i]);
    }
    if (s->has_staged_commit) {
        s->commit_index = s->staged_commit;
        s->has_staged_commit = false;
    }
    pthread_mutex_unlock(&s->mu);
    free(copies);
    return 0;

err_after_copies:
    for (size_t i = 0; i < copied; i++) {
        entry_free(&copies[i]);
    }
    free(copies);
    return rv;
}

static int log_delete_range(void *ctx, uint64_t min, uint64_t max)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL || min > max) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&s->mu);
    size_t lo = lower_bound(s, min);
    size_t hi = max == UINT64_MAX ? s->count : lower_bound(s, max + 1);
    craft_log_t *base = s->entries + s->head;
    for (size_t i = lo; i < hi; i++) {
        entry_free(&base[i]);
    }
    if (lo == 0) {
        s->head += hi; /* prefix: compaction */
    } else {
        memmove(base + lo, base + hi, (s->count - hi) * sizeof *base);
    }
    s->count -= hi - lo;
    if (s->count == 0) {
        s->head = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int log_stage_commit_index(void *ctx, uint64_t index)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&s->mu);
    s->staged_commit = index;
    s->has_staged_commit = true;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int log_get_commit_index(void *ctx, uint64_t *index)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL || index == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&s->mu);
    *index = s->commit_index;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void log_close(void *ctx)
{
    inmem_log_store_t *s = ctx;
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < s->count; i++) {
        entry_free(&s->entries[s->head + i]);
    }
    free(s->entries);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int log_store_new(craft_log_store_t **out)
{
    inmem_log_store_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return CRAFT_ENOMEM;
    }
    s->iface.ctx = s;
    s->iface.first_index = log_first_index;
    s->iface.last_index = log_last_index;
    s->iface.get_log = log_get_log;
    s->iface.store_logs = log_store_logs;
    s->iface.delete_range = log_delete_range;
    s->iface.stage_commit_index = log_stage_commit_index;
    s->iface.get_commit_index = log_get_commit_index;
    s->iface.get_logs = log_get_logs;
    s->iface.close = log_close;
    *out = &s->iface;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* StableStore                                                               */
/* ------------------------------------------------------------------------ */

typedef struct kv {
    char *key;
    void *val; /* NULL when len == 0 */
    size_t len;
} kv_t;

typedef struct inmem_stable_store {
    craft_stable_store_t iface;
    pthread_mutex_t mu;
    kv_t *kvs; /* sorted by strcmp of key */
    size_t n;
    size_t cap;
} inmem_stable_store_t;

/* Position of `key`, or of where it would be inserted; *found says which. */
static size_t kv_find(const inmem_stable_store_t *s, const char *key,
                      bool *found)
{
    size_t lo = 0;
    size_t hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->kvs[mid].key, key);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    *found = false;
    return lo;
}

static int stable_set(void *ctx, const char *key, const void *val, size_t len)
{
    inmem_stable_store_t *s = ctx;
    if (s == NULL || key == NULL || (val == NULL && len > 0)) {
        return CRAFT_EINVAL;
    }
    const void *copy;
    if (!dup_bytes(val, len, &copy)) {
        return CRAFT_ENOMEM;
    }
    int rv = 0;
    pthread_mutex_lock(&s->mu);
    bool found;
    size_t pos = kv_find(s, key, &found);
    if (found) {
        free(s->kvs[pos].val);
        s->kvs[pos].val = (void *)copy;
        s->kvs[pos].len = len;
        goto out;
    }
    char *kcopy = strdup(key);
    if (kcopy == NULL) {
        rv = CRAFT_ENOMEM;
        goto out;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap == 0 ? 16 : s->cap * 2;
        kv_t *p = realloc(s->kvs, cap * sizeof *p);
        if (p == NULL) {
            free(kcopy);
            rv = CRAFT_ENOMEM;
            goto out;
        }
        s->kvs = p;
        s->cap = cap;
    }
    memmove(s->kvs + pos + 1, s->kvs + pos, (s->n - pos) * sizeof *s->kvs);
    s->kvs[pos] = (kv_t){kcopy, (void *)copy, len};
    s->n++;
out:
    pthread_mutex_unlock(&s->mu);
    if (rv != 0) {
        free((void *)copy);
    }
    return rv;
}

static int stable_get(void *ctx, const char *key, void **val, size_t *len)
{
    inmem_stable_store_t *s = ctx;
    if (s == NULL || key == NULL || val == NULL || len == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = CRAFT_ENOTFOUND;
    pthread_mutex_lock(&s->mu);
    bool found;
    size_t pos = kv_find(s, key, &found);
    if (found) {
        const void *copy;
        if (dup_bytes(s->kvs[pos].val, s->kvs[pos].len, &copy)) {
            *val = (void *)copy;
            *len = s->kvs[pos].len;
            rv = 0;
        } else {
            rv = CRAFT_ENOMEM;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rv;
}

static int stable_set_uint64(void *ctx, const char *key, uint64_t val)
{
    unsigned char buf[8];
    for (int i = 0; i < 8; i++) {
        buf[i] = (unsigned char)(val >> (56 - 8 * i));
    }
    return stable_set(ctx, key, buf, sizeof buf);
}

static int stable_get_uint64(void *ctx, const char *key, uint64_t *val)
{
    if (val == NULL) {
        return CRAFT_EINVAL;
    }
    void *buf = NULL;
    size_t len = 0;
    int rv = stable_get(ctx, key, &buf, &len);
    if (rv != 0) {
        return rv;
    }
    if (len != 8) {
        free(buf);
        return CRAFT_ECORRUPT;
    }
    const unsigned char *b = buf;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | b[i];
    }
    free(buf);
    *val = v;
    return 0;
}

static void stable_close(void *ctx)
{
    inmem_stable_store_t *s = ctx;
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        free(s->kvs[i].key);
        free(s->kvs[i].val);
    }
    free(s->kvs);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int stable_store_new(craft_stable_store_t **out)
{
    inmem_stable_store_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return CRAFT_ENOMEM;
    }
    s->iface.ctx = s;
    s->iface.set = stable_set;
    s->iface.get = stable_get;
    s->iface.set_uint64 = stable_set_uint64;
    s->iface.get_uint64 = stable_get_uint64;
    s->iface.close = stable_close;
    *out = &s->iface;
    return 0;
}

int craft_inmem_store_new(craft_log_store_t **log, craft_stable_store_t **stable)
{
    if (log == NULL || stable == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = log_store_new(log);
    if (rv != 0) {
        return rv;
    }
    rv = stable_store_new(stable);
    if (rv != 0) {
        log_close((*log)->ctx);
        *log = NULL;
        return rv;
    }
    return 0;
}
