/*
 * The register/KV FSM of the fuzzy harness: FZ_KV_KEYS registers holding
 * unsigned integers, changed by "put", "cas" and read by "get" commands.
 * Responses are tagged integers, so nothing is allocated per apply.
 */
#include "craft/fuzzy.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_KV_KEYS 64
#define SNAP_MAGIC 0x4b56534e41503031ULL /* "KVSNAP01" */

typedef struct kv {
    craft_fsm_t vt;
    pthread_mutex_t mu;
    uint64_t v[FZ_KV_KEYS];
} kv_t;

/* bit 0: always set (never NULL); bit 1: cas succeeded; value above. */
static void *response(uint64_t value, bool ok)
{
    return (void *)(uintptr_t)((value << 2) | (ok ? 2u : 0u) | 1u);
}

bool craft_fuzzy_kv_response_ok(void *r)
{
    return ((uintptr_t)r & 2u) != 0;
}

uint64_t craft_fuzzy_kv_response_value(void *r)
{
    return (uint64_t)((uintptr_t)r >> 2);
}

static void *kv_apply(void *ctx, const craft_log_t *log)
{
    kv_t *kv = ctx;
    char buf[128];
    size_t n = log->len < sizeof buf - 1 ? log->len : sizeof buf - 1;
    if (n > 0) {
        memcpy(buf, log->data, n);
    }
    buf[n] = '\0';
    char op[8];
    unsigned key;
    unsigned long long a = 0, b = 0;
    void *resp = NULL;
    pthread_mutex_lock(&kv->mu);
    if (sscanf(buf, "%7s %u", op, &key) == 2 && key < FZ_KV_KEYS) {
        if (strcmp(op, "put") == 0 && sscanf(buf, "%*s %*u %llu", &a) == 1) {
            kv->v[key] = a;
            resp = response(a, true);
        } else if (strcmp(op, "cas") == 0 && sscanf(buf, "%*s %*u %llu %llu", &a, &b) == 2) {
            bool ok = kv->v[key] == a;
            if (ok) {
                kv->v[key] = b;
            }
            resp = response(kv->v[key], ok);
        } else if (strcmp(op, "get") == 0) {
            resp = response(kv->v[key], true);
        }
    }
    pthread_mutex_unlock(&kv->mu);
    return resp;
}

typedef struct kv_snap {
    craft_fsm_snapshot_t vt;
    uint64_t buf[FZ_KV_KEYS + 2];
} kv_snap_t;

static int snap_persist(void *ctx, craft_snapshot_sink_t *sink)
{
    kv_snap_t *s = ctx;
    int rv = sink->write(sink->ctx, s->buf, sizeof s->buf);
    if (rv != 0) {
        sink->cancel(sink->ctx);
        return rv;
    }
    return sink->close(sink->ctx);
}

static void snap_release(void *ctx)
{
    free(ctx);
}

static int kv_snapshot(void *ctx, craft_fsm_snapshot_t **out)
{
    kv_t *kv = ctx;
    kv_snap_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    s->buf[0] = SNAP_MAGIC;
    s->buf[1] = FZ_KV_KEYS;
    pthread_mutex_lock(&kv->mu);
    memcpy(&s->buf[2], kv->v, sizeof kv->v);
    pthread_mutex_unlock(&kv->mu);
    s->vt.ctx = s;
    s->vt.persist = snap_persist;
    s->vt.release = snap_release;
    *out = &s->vt;
    return 0;
}

static int kv_restore(void *ctx, craft_reader_t *reader)
{
    kv_t *kv = ctx;
    uint64_t buf[FZ_KV_KEYS + 2];
    size_t got = 0;
    char *p = (char *)buf;
    while (got < sizeof buf) {
        int64_t n = reader->read(reader->ctx, p + got, sizeof buf - got);
        if (n < 0) {
            return (int)n;
        }
        if (n == 0) {
            break;
        }
        got += (size_t)n;
    }
    /* The snapshot must end exactly here (readers verify checksums at
     * their end). */
    char extra;
    int64_t n = reader->read(reader->ctx, &extra, 1);
    if (n < 0) {
        return (int)n;
    }
    if (got != sizeof buf || n != 0 || buf[0] != SNAP_MAGIC || buf[1] != FZ_KV_KEYS) {
        return CRAFT_ECORRUPT;
    }
    pthread_mutex_lock(&kv->mu);
    memcpy(kv->v, &buf[2], sizeof kv->v);
    pthread_mutex_unlock(&kv->mu);
    return 0;
}

int craft_fuzzy_kv_fsm_new(craft_fsm_t **out)
{
    kv_t *kv = calloc(1, sizeof *kv);
    if (kv == NULL) {
        return CRAFT_ENOMEM;
    }
    pthread_mutex_init(&kv->mu, NULL);
    kv->vt.ctx = kv;
    kv->vt.apply = kv_apply;
    kv->vt.snapshot = kv_snapshot;
    kv->vt.restore = kv_restore;
    *out = &kv->vt;
    return 0;
}

void craft_fuzzy_kv_fsm_free(craft_fsm_t *fsm)
{
    if (fsm == NULL) {
        return;
    }
    kv_t *kv = fsm->ctx;
    pthread_mutex_destroy(&kv->mu);
    free(kv);
}

uint64_t craft_fuzzy_kv_get(craft_fsm_t *fsm, unsigned key)
{
    kv_t *kv = fsm->ctx;
    if (key >= FZ_KV_KEYS) {
        return 0;
    }
    pthread_mutex_lock(&kv->mu);
    uint64_t v = kv->v[key];
    pthread_mutex_unlock(&kv->mu);
    return v;
}
