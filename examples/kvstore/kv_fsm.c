/*
 * craftkv's FSM: see kv_fsm.h for the command and snapshot formats.
 *
 * Each key/value pair lives in one immutable, reference-counted entry. The
 * map holds one reference; a snapshot takes one more on every entry, so
 * craft's snapshot() is a pointer copy (fast, as craft requires) and
 * persist() streams the entries on the snapshot thread while apply keeps
 * replacing them in the map.
 */
#include "kv_fsm.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define KV_COMMAND_VERSION 1
#define SNAPSHOT_MAGIC "CRAFTKV1"
#define IO_CHUNK (64 * 1024)

/* ------------------------------------------------------------------------ */
/* Entries and the hash map                                                  */
/* ------------------------------------------------------------------------ */

typedef struct entry {
    atomic_uint refs;
    struct entry *next; /* bucket chain: touched only by the map's owner */
    uint64_t hash;
    size_t klen;
    size_t vlen;
    char data[]; /* key, value, NUL */
} entry_t;

typedef struct map {
    entry_t **buckets;
    size_t n_buckets; /* power of two */
    size_t count;
} map_t;

static uint64_t hash_bytes(const void *p, size_t len)
{
    /* FNV-1a, 64 bits. */
    const unsigned char *b = p;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static entry_t *entry_new(const void *key, size_t klen, const void *val, size_t vlen)
{
    entry_t *e = malloc(sizeof *e + klen + vlen + 1);
    if (e == NULL) {
        return NULL;
    }
    atomic_init(&e->refs, 1);
    e->next = NULL;
    e->hash = hash_bytes(key, klen);
    e->klen = klen;
    e->vlen = vlen;
    if (klen > 0) {
        memcpy(e->data, key, klen);
    }
    if (vlen > 0) {
        memcpy(e->data + klen, val, vlen);
    }
    e->data[klen + vlen] = '\0';
    return e;
}

static const char *entry_value(const entry_t *e)
{
    return e->data + e->klen;
}

static void entry_unref(entry_t *e)
{
    if (e != NULL && atomic_fetch_sub(&e->refs, 1) == 1) {
        free(e);
    }
}

static void map_clear(map_t *m)
{
    for (size_t i = 0; i < m->n_buckets; i++) {
        entry_t *e = m->buckets[i];
        while (e != NULL) {
            entry_t *next = e->next;
            entry_unref(e);
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = NULL;
    m->n_buckets = 0;
    m->count = 0;
}

static entry_t **map_slot(map_t *m, const void *key, size_t klen, uint64_t hash)
{
    if (m->n_buckets == 0) {
        return NULL;
    }
    entry_t **slot = &m->buckets[hash & (m->n_buckets - 1)];
    while (*slot != NULL) {
        entry_t *e = *slot;
        if (e->hash == hash && e->klen == klen && memcmp(e->data, key, klen) == 0) {
            return slot;
        }
        slot = &e->next;
    }
    return slot;
}

static entry_t *map_find(map_t *m, const void *key, size_t klen)
{
    entry_t **slot = map_slot(m, key, klen, hash_bytes(key, klen));
    return slot != NULL ? *slot : NULL;
}

static int map_grow(map_t *m)
{
    size_t n = m->n_buckets == 0 ? 64 : m->n_buckets * 2;
    entry_t **b = calloc(n, sizeof *b);
    if (b == NULL) {
        return CRAFT_ENOMEM;
    }
    for (size_t i = 0; i < m->n_buckets; i++) {
        entry_t *e = m->buckets[i];
        while (e != NULL) {
            entry_t *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = n;
    return 0;
}

/* Inserts `e` (taking the caller's reference), replacing an equal key. */
static int map_put(map_t *m, entry_t *e)
{
    if (m->count + 1 > m->n_buckets && map_grow(m) != 0) {
        return CRAFT_ENOMEM;
    }
    entry_t **slot = map_slot(m, e->data, e->klen, e->hash);
    entry_t *old = *slot;
    if (old != NULL) {
        e->next = old->next;
        entry_unref(old);
    } else {
        e->next = NULL;
        m->count++;
    }
    *slot = e;
    return 0;
}

static void map_delete(map_t *m, const void *key, size_t klen)
{
    entry_t **slot = map_slot(m, key, klen, hash_bytes(key, klen));
    if (slot == NULL || *slot == NULL) {
        return;
    }
    entry_t *e = *slot;
    *slot = e->next;
    entry_unref(e);
    m->count--;
}

/* ------------------------------------------------------------------------ */
/* Byte helpers                                                              */
/* ------------------------------------------------------------------------ */

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_u64(unsigned char *p, uint64_t v)
{
    put_u32(p, (uint32_t)(v >> 32));
    put_u32(p + 4, (uint32_t)v);
}

static uint64_t get_u64(const unsigned char *p)
{
    return ((uint64_t)get_u32(p) << 32) | get_u32(p + 4);
}

/* A bounds-checked cursor over a command. */
typedef struct cursor {
    const unsigned char *p;
    size_t left;
} cursor_t;

static bool cursor_field(cursor_t *c, const char **out, size_t *len)
{
    if (c->left < 4) {
        return false;
    }
    size_t n = get_u32(c->p);
    c->p += 4;
    c->left -= 4;
    if (n > c->left) {
        return false;
    }
    *out = (const char *)c->p;
    *len = n;
    c->p += n;
    c->left -= n;
    return true;
}

/* ------------------------------------------------------------------------ */
/* The FSM                                                                   */
/* ------------------------------------------------------------------------ */

struct kv_fsm {
    craft_fsm_t vt;
    pthread_rwlock_t lock; /* guards data and members */
    map_t data;
    map_t members; /* member ID -> HTTP address */
};

int kv_command_encode(kv_op_t op, const void *key, size_t klen, const void *val,
                      size_t vlen, const void *old, size_t olen, void **out,
                      size_t *out_len)
{
    if (klen > KV_MAX_FIELD || vlen > KV_MAX_FIELD || olen > KV_MAX_FIELD) {
        return CRAFT_EINVAL;
    }
    bool cas = op == KV_OP_CAS;
    size_t len = 2 + 4 + klen + 4 + vlen + (cas ? 4 + olen : 0);
    unsigned char *b = malloc(len);
    if (b == NULL) {
        return CRAFT_ENOMEM;
    }
    unsigned char *p = b;
    *p++ = KV_COMMAND_VERSION;
    *p++ = (unsigned char)op;
    put_u32(p, (uint32_t)klen);
    p += 4;
    if (klen > 0) {
        memcpy(p, key, klen);
    }
    p += klen;
    put_u32(p, (uint32_t)vlen);
    p += 4;
    if (vlen > 0) {
        memcpy(p, val, vlen);
    }
    p += vlen;
    if (cas) {
        put_u32(p, (uint32_t)olen);
        p += 4;
        if (olen > 0) {
            memcpy(p, old, olen);
        }
    }
    *out = b;
    *out_len = len;
    return 0;
}

/* Applies one command; the caller holds the write lock. */
static kv_result_t apply_locked(kv_fsm_t *fsm, const craft_log_t *log)
{
    cursor_t c = {log->data, log->len};
    if (c.left < 2 || c.p[0] != KV_COMMAND_VERSION) {
        return KV_RESULT_INVALID;
    }
    kv_op_t op = (kv_op_t)c.p[1];
    c.p += 2;
    c.left -= 2;
    const char *key, *val, *old = NULL;
    size_t klen, vlen, olen = 0;
    if (!cursor_field(&c, &key, &klen) || !cursor_field(&c, &val, &vlen)) {
        return KV_RESULT_INVALID;
    }
    if (op == KV_OP_CAS && !cursor_field(&c, &old, &olen)) {
        return KV_RESULT_INVALID;
    }
    if (c.left != 0) {
        return KV_RESULT_INVALID;
    }
    map_t *m = op == KV_OP_MEMBER ? &fsm->members : &fsm->data;
    switch (op) {
    case KV_OP_CAS: {
        entry_t *cur = map_find(m, key, klen);
        if (cur == NULL || cur->vlen != olen || memcmp(entry_value(cur), old, olen) != 0) {
            return KV_RESULT_CAS_FAILED;
        }
    } /* fall through */
    case KV_OP_PUT:
    case KV_OP_MEMBER: {
        if (op == KV_OP_MEMBER && vlen == 0) {
            map_delete(m, key, klen);
            return KV_RESULT_OK;
        }
        entry_t *e = entry_new(key, klen, val, vlen);
        /* Running out of memory would make this replica diverge: there is
         * no way to carry on correctly. */
        if (e == NULL || map_put(m, e) != 0) {
            abort();
        }
        return KV_RESULT_OK;
    }
    case KV_OP_DELETE:
        map_delete(m, key, klen);
        return KV_RESULT_OK;
    }
    return KV_RESULT_INVALID;
}

static void *fsm_apply(void *ctx, const craft_log_t *log)
{
    kv_fsm_t *fsm = ctx;
    pthread_rwlock_wrlock(&fsm->lock);
    kv_result_t r = apply_locked(fsm, log);
    pthread_rwlock_unlock(&fsm->lock);
    return (void *)(intptr_t)r;
}

static void fsm_apply_batch(void *ctx, const craft_log_t *logs, size_t n, void **responses)
{
    kv_fsm_t *fsm = ctx;
    pthread_rwlock_wrlock(&fsm->lock);
    for (size_t i = 0; i < n; i++) {
        responses[i] = (void *)(intptr_t)apply_locked(fsm, &logs[i]);
    }
    pthread_rwlock_unlock(&fsm->lock);
}

/* ---- snapshot ---- */

typedef struct snap {
    craft_fsm_snapshot_t vt;
    entry_t **data;
    size_t n_data;
    entry_t **members;
    size_t n_members;
} snap_t;

static entry_t **map_refs(map_t *m, size_t *n)
{
    entry_t **v = malloc((m->count > 0 ? m->count : 1) * sizeof *v);
    if (v == NULL) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < m->n_buckets; i++) {
        for (entry_t *e = m->buckets[i]; e != NULL; e = e->next) {
            atomic_fetch_add(&e->refs, 1);
            v[k++] = e;
        }
    }
    *n = k;
    return v;
}

/* Buffered writes into a sink. */
typedef struct writer {
    craft_snapshot_sink_t *sink;
    unsigned char buf[IO_CHUNK];
    size_t used;
    int err;
} writer_t;

static void writer_flush(writer_t *w)
{
    if (w->err == 0 && w->used > 0) {
        w->err = w->sink->write(w->sink->ctx, w->buf, w->used);
    }
    w->used = 0;
}

static void writer_put(writer_t *w, const void *p, size_t len)
{
    const unsigned char *b = p;
    while (len > 0 && w->err == 0) {
        if (w->used == sizeof w->buf) {
            writer_flush(w);
        }
        size_t n = sizeof w->buf - w->used;
        if (n > len) {
            n = len;
        }
        memcpy(w->buf + w->used, b, n);
        w->used += n;
        b += n;
        len -= n;
    }
}

static void writer_entries(writer_t *w, entry_t **v, size_t n)
{
    unsigned char hdr[8];
    put_u64(hdr, n);
    writer_put(w, hdr, 8);
    for (size_t i = 0; i < n; i++) {
        put_u32(hdr, (uint32_t)v[i]->klen);
        writer_put(w, hdr, 4);
        writer_put(w, v[i]->data, v[i]->klen);
        put_u32(hdr, (uint32_t)v[i]->vlen);
        writer_put(w, hdr, 4);
        writer_put(w, entry_value(v[i]), v[i]->vlen);
    }
}

static int snap_persist(void *ctx, craft_snapshot_sink_t *sink)
{
    snap_t *s = ctx;
    writer_t *w = malloc(sizeof *w);
    if (w == NULL) {
        sink->cancel(sink->ctx);
        return CRAFT_ENOMEM;
    }
    w->sink = sink;
    w->used = 0;
    w->err = 0;
    writer_put(w, SNAPSHOT_MAGIC, 8);
    writer_entries(w, s->data, s->n_data);
    writer_entries(w, s->members, s->n_members);
    writer_flush(w);
    int rv = w->err;
    free(w);
    if (rv != 0) {
        sink->cancel(sink->ctx);
        return rv;
    }
    return sink->close(sink->ctx);
}

static void snap_release(void *ctx)
{
    snap_t *s = ctx;
    for (size_t i = 0; i < s->n_data; i++) {
        entry_unref(s->data[i]);
    }
    for (size_t i = 0; i < s->n_members; i++) {
        entry_unref(s->members[i]);
    }
    free(s->data);
    free(s->members);
    free(s);
}

static int fsm_snapshot(void *ctx, craft_fsm_snapshot_t **out)
{
    kv_fsm_t *fsm = ctx;
    snap_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    pthread_rwlock_rdlock(&fsm->lock);
    s->data = map_refs(&fsm->data, &s->n_data);
    s->members = map_refs(&fsm->members, &s->n_members);
    pthread_rwlock_unlock(&fsm->lock);
    if (s->data == NULL || s->members == NULL) {
        snap_release(s);
        return CRAFT_ENOMEM;
    }
    s->vt.ctx = s;
    s->vt.persist = snap_persist;
    s->vt.release = snap_release;
    *out = &s->vt;
    return 0;
}

/* ---- restore ---- */

typedef struct reader {
    craft_reader_t *r;
    unsigned char buf[IO_CHUNK];
    size_t pos, end;
} reader_t;

/* Reads exactly `len` bytes; CRAFT_ECORRUPT at a premature end. */
static int reader_get(reader_t *rd, void *out, size_t len)
{
    unsigned char *o = out;
    while (len > 0) {
        if (rd->pos == rd->end) {
            int64_t n = rd->r->read(rd->r->ctx, rd->buf, sizeof rd->buf);
            if (n < 0) {
                return (int)n;
            }
            if (n == 0) {
                return CRAFT_ECORRUPT;
            }
            rd->pos = 0;
            rd->end = (size_t)n;
        }
        size_t n = rd->end - rd->pos;
        if (n > len) {
            n = len;
        }
        memcpy(o, rd->buf + rd->pos, n);
        rd->pos += n;
        o += n;
        len -= n;
    }
    return 0;
}

/* 0 at a clean end of data; CRAFT_ECORRUPT when bytes are left over. */
static int reader_end(reader_t *rd)
{
    if (rd->pos != rd->end) {
        return CRAFT_ECORRUPT;
    }
    int64_t n = rd->r->read(rd->r->ctx, rd->buf, sizeof rd->buf);
    if (n < 0) {
        return (int)n;
    }
    return n == 0 ? 0 : CRAFT_ECORRUPT;
}

static int read_field(reader_t *rd, char **out, size_t *len)
{
    unsigned char hdr[4];
    int rv = reader_get(rd, hdr, 4);
    if (rv != 0) {
        return rv;
    }
    size_t n = get_u32(hdr);
    if (n > KV_MAX_FIELD) {
        return CRAFT_ECORRUPT;
    }
    char *b = malloc(n + 1);
    if (b == NULL) {
        return CRAFT_ENOMEM;
    }
    rv = reader_get(rd, b, n);
    if (rv != 0) {
        free(b);
        return rv;
    }
    *out = b;
    *len = n;
    return 0;
}

static int read_map(reader_t *rd, map_t *m)
{
    unsigned char hdr[8];
    int rv = reader_get(rd, hdr, 8);
    if (rv != 0) {
        return rv;
    }
    uint64_t n = get_u64(hdr);
    for (uint64_t i = 0; i < n; i++) {
        char *k, *v;
        size_t klen, vlen;
        if ((rv = read_field(rd, &k, &klen)) != 0) {
            return rv;
        }
        if ((rv = read_field(rd, &v, &vlen)) != 0) {
            free(k);
            return rv;
        }
        entry_t *e = entry_new(k, klen, v, vlen);
        free(k);
        free(v);
        if (e == NULL || map_put(m, e) != 0) {
            entry_unref(e);
            return CRAFT_ENOMEM;
        }
    }
    return 0;
}

static int fsm_restore(void *ctx, craft_reader_t *r)
{
    kv_fsm_t *fsm = ctx;
    reader_t *rd = malloc(sizeof *rd);
    if (rd == NULL) {
        return CRAFT_ENOMEM;
    }
    rd->r = r;
    rd->pos = rd->end = 0;
    map_t data = {0}, members = {0};
    char magic[8];
    int rv = reader_get(rd, magic, sizeof magic);
    if (rv == 0 && memcmp(magic, SNAPSHOT_MAGIC, sizeof magic) != 0) {
        rv = CRAFT_ECORRUPT;
    }
    if (rv == 0) {
        rv = read_map(rd, &data);
    }
    if (rv == 0) {
        rv = read_map(rd, &members);
    }
    /* Read to the end: the file store verifies its checksum there. */
    if (rv == 0) {
        rv = reader_end(rd);
    }
    free(rd);
    if (rv != 0) {
        map_clear(&data);
        map_clear(&members);
        return rv;
    }
    pthread_rwlock_wrlock(&fsm->lock);
    map_t old_data = fsm->data, old_members = fsm->members;
    fsm->data = data;
    fsm->members = members;
    pthread_rwlock_unlock(&fsm->lock);
    map_clear(&old_data);
    map_clear(&old_members);
    return 0;
}

/* ---- lifecycle and readers ---- */

int kv_fsm_new(kv_fsm_t **out)
{
    kv_fsm_t *fsm = calloc(1, sizeof *fsm);
    if (fsm == NULL) {
        return CRAFT_ENOMEM;
    }
    /* Prefer the writer (craft's fsm thread) over a stream of HTTP reads. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rv = pthread_rwlock_init(&fsm->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rv != 0) {
        free(fsm);
        return CRAFT_ENOMEM;
    }
    fsm->vt.ctx = fsm;
    fsm->vt.apply = fsm_apply;
    fsm->vt.apply_batch = fsm_apply_batch;
    fsm->vt.snapshot = fsm_snapshot;
    fsm->vt.restore = fsm_restore;
    *out = fsm;
    return 0;
}

void kv_fsm_free(kv_fsm_t *fsm)
{
    if (fsm == NULL) {
        return;
    }
    map_clear(&fsm->data);
    map_clear(&fsm->members);
    pthread_rwlock_destroy(&fsm->lock);
    free(fsm);
}

craft_fsm_t *kv_fsm_vtable(kv_fsm_t *fsm)
{
    return &fsm->vt;
}

int kv_fsm_get(kv_fsm_t *fsm, const void *key, size_t klen, void **val, size_t *vlen)
{
    pthread_rwlock_rdlock(&fsm->lock);
    entry_t *e = map_find(&fsm->data, key, klen);
    if (e != NULL) {
        atomic_fetch_add(&e->refs, 1);
    }
    pthread_rwlock_unlock(&fsm->lock);
    if (e == NULL) {
        return CRAFT_ENOTFOUND;
    }
    char *copy = malloc(e->vlen + 1);
    if (copy != NULL) {
        memcpy(copy, entry_value(e), e->vlen + 1);
        *val = copy;
        *vlen = e->vlen;
    }
    entry_unref(e);
    return copy != NULL ? 0 : CRAFT_ENOMEM;
}

char *kv_fsm_member_http(kv_fsm_t *fsm, const char *id)
{
    char *http = NULL;
    pthread_rwlock_rdlock(&fsm->lock);
    entry_t *e = map_find(&fsm->members, id, strlen(id));
    if (e != NULL) {
        http = strdup(entry_value(e));
    }
    pthread_rwlock_unlock(&fsm->lock);
    return http;
}

size_t kv_fsm_count(kv_fsm_t *fsm)
{
    pthread_rwlock_rdlock(&fsm->lock);
    size_t n = fsm->data.count;
    pthread_rwlock_unlock(&fsm->lock);
    return n;
}
