/* In-memory snapshot stores for tests (hashicorp's InmemSnapshotStore and
 * DiscardSnapshotStore). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "craft/inmem.h"
#include "stores/snapshot_name.h"

/* One finished snapshot. Shared by the store (as its latest) and by every
 * open reader; freed when the last of them lets go, so a reader keeps
 * working after a newer snapshot replaced this one. */
typedef struct inmem_snap {
    int refs; /* guarded by snap_ref_mu */
    craft_snapshot_meta_t meta;
    unsigned char *data;
    size_t len;
} inmem_snap_t;

typedef struct inmem_store {
    craft_snapshot_store_t iface;
    pthread_mutex_t mu;
    inmem_snap_t *latest; /* NULL until the first close */
    uint64_t last_ms;     /* for craft__snapshot_name */
    bool discard;
} inmem_store_t;

typedef struct inmem_sink {
    craft_snapshot_sink_t iface;
    inmem_store_t *store;
    inmem_snap_t *snap; /* being filled; refs == 1 */
    size_t cap;
} inmem_sink_t;

typedef struct inmem_reader {
    craft_reader_t iface;
    inmem_snap_t *snap;
    size_t pos;
} inmem_reader_t;

/* Readers may outlive their store, so the refcount cannot use the store's
 * mutex; one process-wide lock for the (rare) ref changes is enough. */
static pthread_mutex_t snap_ref_mu = PTHREAD_MUTEX_INITIALIZER;

static void snap_free(inmem_snap_t *s)
{
    free(s->meta.id);
    craft_configuration_free(&s->meta.configuration);
    free(s->data);
    free(s);
}

static void snap_ref(inmem_snap_t *s)
{
    pthread_mutex_lock(&snap_ref_mu);
    s->refs++;
    pthread_mutex_unlock(&snap_ref_mu);
}

static void snap_unref(inmem_snap_t *s)
{
    int left;
    if (s == NULL) {
        return;
    }
    pthread_mutex_lock(&snap_ref_mu);
    left = --s->refs;
    pthread_mutex_unlock(&snap_ref_mu);
    if (left == 0) {
        snap_free(s);
    }
}

/* A malloc'd deep copy of `src`, as list/open hand out. */
static int meta_dup(const craft_snapshot_meta_t *src,
                    craft_snapshot_meta_t **out)
{
    craft_snapshot_meta_t *m = calloc(1, sizeof *m);
    int rv;
    if (m == NULL) {
        return CRAFT_ENOMEM;
    }
    *m = *src;
    m->id = strdup(src->id);
    if (m->id == NULL) {
        free(m);
        return CRAFT_ENOMEM;
    }
    rv = craft_configuration_copy(&m->configuration, &src->configuration);
    if (rv != 0) {
        free(m->id);
        free(m);
        return rv;
    }
    *out = m;
    return 0;
}

/* ---- sink ---- */

static int sink_write(void *ctx, const void *buf, size_t len)
{
    inmem_sink_t *k = ctx;
    inmem_snap_t *s = k->snap;
    if (k->store->discard || len == 0) {
        s->len += len; /* discard: only the size is kept */
        return 0;
    }
    if (len > SIZE_MAX - s->len) {
        return CRAFT_ENOMEM;
    }
    if (s->len + len > k->cap) {
        size_t cap = k->cap ? k->cap : 4096;
        unsigned char *p;
        while (cap < s->len + len) {
            cap = cap > SIZE_MAX / 2 ? s->len + len : cap * 2;
        }
        p = realloc(s->data, cap);
        if (p == NULL) {
            return CRAFT_ENOMEM;
        }
        s->data = p;
        k->cap = cap;
    }
    memcpy(s->data + s->len, buf, len);
    s->len += len;
    return 0;
}

static int sink_close(void *ctx)
{
    inmem_sink_t *k = ctx;
    inmem_store_t *st = k->store;
    inmem_snap_t *old = NULL;
    k->snap->meta.size = (int64_t)k->snap->len;
    if (st->discard) {
        snap_unref(k->snap);
    } else {
        /* The store takes over the sink's reference. */
        pthread_mutex_lock(&st->mu);
        old = st->latest;
        st->latest = k->snap;
        pthread_mutex_unlock(&st->mu);
        snap_unref(old);
    }
    free(k);
    return 0;
}

static int sink_cancel(void *ctx)
{
    inmem_sink_t *k = ctx;
    snap_unref(k->snap);
    free(k);
    return 0;
}

static const char *sink_id(void *ctx)
{
    inmem_sink_t *k = ctx;
    return k->snap->meta.id;
}

/* ---- reader ---- */

static int64_t reader_read(void *ctx, void *buf, size_t len)
{
    inmem_reader_t *r = ctx;
    size_t n = r->snap->len - r->pos;
    if (n > len) {
        n = len;
    }
    if (n > INT64_MAX) {
        n = INT64_MAX;
    }
    if (n > 0) {
        memcpy(buf, r->snap->data + r->pos, n);
        r->pos += n;
    }
    return (int64_t)n;
}

static void reader_close(void *ctx)
{
    inmem_reader_t *r = ctx;
    snap_unref(r->snap);
    free(r);
}

/* ---- store ---- */

static int store_create(void *ctx, int version, uint64_t index, uint64_t term,
                        const craft_configuration_t *configuration,
                        uint64_t configuration_index,
                        craft_snapshot_sink_t **sink)
{
    inmem_store_t *st = ctx;
    char name[CRAFT__SNAPSHOT_NAME_MAX];
    inmem_sink_t *k;
    inmem_snap_t *s;
    int rv;

    if (sink == NULL) {
        return CRAFT_EINVAL;
    }
    k = calloc(1, sizeof *k);
    if (k == NULL) {
        return CRAFT_ENOMEM;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_sink;
    }
    s->refs = 1;
    pthread_mutex_lock(&st->mu);
    craft__snapshot_name(name, term, index, &st->last_ms);
    pthread_mutex_unlock(&st->mu);
    s->meta.id = strdup(name);
    if (s->meta.id == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_snap;
    }
    if (configuration != NULL) {
        rv = craft_configuration_copy(&s->meta.configuration, configuration);
        if (rv != 0) {
            goto err_after_snap;
        }
    }
    s->meta.version = version;
    s->meta.index = index;
    s->meta.term = term;
    s->meta.configuration_index = configuration_index;

    k->store = st;
    k->snap = s;
    k->iface.ctx = k;
    k->iface.write = sink_write;
    k->iface.close = sink_close;
    k->iface.cancel = sink_cancel;
    k->iface.id = sink_id;
    *sink = &k->iface;
    return 0;

err_after_snap:
    snap_free(s);
err_after_sink:
    free(k);
    return rv;
}

static int store_list(void *ctx, craft_snapshot_meta_t ***metas, size_t *n)
{
    inmem_store_t *st = ctx;
    craft_snapshot_meta_t **arr;
    int rv = 0;

    *metas = NULL;
    *n = 0;
    pthread_mutex_lock(&st->mu);
    if (st->latest != NULL) {
        arr = malloc(sizeof *arr);
        if (arr == NULL) {
            rv = CRAFT_ENOMEM;
        } else if ((rv = meta_dup(&st->latest->meta, &arr[0])) != 0) {
            free(arr);
        } else {
            *metas = arr;
            *n = 1;
        }
    }
    pthread_mutex_unlock(&st->mu);
    return rv;
}

static int store_open(void *ctx, const char *id, craft_snapshot_meta_t **meta,
                      craft_reader_t **reader)
{
    inmem_store_t *st = ctx;
    inmem_snap_t *s;
    inmem_reader_t *r;
    int rv;

    if (id == NULL || meta == NULL || reader == NULL) {
        return CRAFT_EINVAL;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        return CRAFT_ENOMEM;
    }
    pthread_mutex_lock(&st->mu);
    s = st->latest;
    if (s == NULL || strcmp(s->meta.id, id) != 0) {
        pthread_mutex_unlock(&st->mu);
        free(r);
        return CRAFT_ENOTFOUND;
    }
    rv = meta_dup(&s->meta, meta);
    if (rv == 0) {
        snap_ref(s);
    }
    pthread_mutex_unlock(&st->mu);
    if (rv != 0) {
        free(r);
        return rv;
    }
    r->snap = s;
    r->iface.ctx = r;
    r->iface.read = reader_read;
    r->iface.close = reader_close;
    *reader = &r->iface;
    return 0;
}

static void store_close(void *ctx)
{
    inmem_store_t *st = ctx;
    snap_unref(st->latest);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

static int store_new(bool discard, craft_snapshot_store_t **out)
{
    inmem_store_t *st;
    if (out == NULL) {
        return CRAFT_EINVAL;
    }
    st = calloc(1, sizeof *st);
    if (st == NULL) {
        return CRAFT_ENOMEM;
    }
    if (pthread_mutex_init(&st->mu, NULL) != 0) {
        free(st);
        return CRAFT_ENOMEM;
    }
    st->discard = discard;
    st->iface.ctx = st;
    st->iface.create = store_create;
    st->iface.list = store_list;
    st->iface.open = store_open;
    st->iface.close = store_close;
    *out = &st->iface;
    return 0;
}

int craft_inmem_snapshot_store_new(craft_snapshot_store_t **out)
{
    return store_new(false, out);
}

int craft_discard_snapshot_store_new(craft_snapshot_store_t **out)
{
    return store_new(true, out);
}
