/*
 * Linearizability checker for register-per-key histories, after porcupine
 * (Athalye): Wing & Gong's search over a doubly linked list of call and
 * return events, with Lowe's memoisation of (set of linearized operations,
 * model state) so each configuration is explored once, and the history
 * partitioned per key (registers are independent).
 *
 * Operations whose return time is infinite (outcome unknown) may be
 * linearized anywhere after their call; since nothing returns after
 * infinity, placing one after every finite operation is always possible,
 * which models "maybe never happened".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "craft/fuzzy.h"
#include "util.h"

#define MAX_CACHE_ENTRIES (4u << 20)

typedef struct lop {
    const craft_fuzzy_op_t *op;
    bool any_output; /* unknown outcome, output unknown */
} lop_t;

typedef struct ent {
    int id;   /* operation index in the partition */
    bool call;
    uint64_t time;
    struct ent *match; /* call -> its return */
    struct ent *prev, *next;
} ent_t;

typedef struct cache_node {
    uint64_t state;
    uint64_t hash;
    struct cache_node *next;
    uint64_t bits[]; /* nwords */
} cache_node_t;

typedef struct cache {
    cache_node_t **buckets;
    size_t nbuckets, n, nwords;
} cache_t;

static uint64_t bits_hash(const uint64_t *b, size_t nw, uint64_t state)
{
    uint64_t h = fz_hash_bytes(FZ_HASH_INIT, b, nw * sizeof *b);
    return fz_hash_bytes(h, &state, sizeof state);
}

/* Adds (bits, state); false when already present. -1 on out of memory. */
static int cache_add(cache_t *c, const uint64_t *bits, uint64_t state)
{
    uint64_t h = bits_hash(bits, c->nwords, state);
    size_t b = (size_t)(h % c->nbuckets);
    for (cache_node_t *n = c->buckets[b]; n != NULL; n = n->next) {
        if (n->hash == h && n->state == state &&
            memcmp(n->bits, bits, c->nwords * sizeof *bits) == 0) {
            return 0;
        }
    }
    if (c->n >= MAX_CACHE_ENTRIES) {
        return -1;
    }
    cache_node_t *n = malloc(sizeof *n + c->nwords * sizeof *bits);
    if (n == NULL) {
        return -1;
    }
    n->state = state;
    n->hash = h;
    memcpy(n->bits, bits, c->nwords * sizeof *bits);
    n->next = c->buckets[b];
    c->buckets[b] = n;
    c->n++;
    if (c->n > c->nbuckets * 2) {
        size_t nb = c->nbuckets * 4;
        cache_node_t **nbk = calloc(nb, sizeof *nbk);
        if (nbk != NULL) {
            for (size_t i = 0; i < c->nbuckets; i++) {
                while (c->buckets[i] != NULL) {
                    cache_node_t *x = c->buckets[i];
                    c->buckets[i] = x->next;
                    x->next = nbk[x->hash % nb];
                    nbk[x->hash % nb] = x;
                }
            }
            free(c->buckets);
            c->buckets = nbk;
            c->nbuckets = nb;
        }
    }
    return 1;
}

static void cache_free(cache_t *c)
{
    for (size_t i = 0; i < c->nbuckets; i++) {
        while (c->buckets[i] != NULL) {
            cache_node_t *x = c->buckets[i];
            c->buckets[i] = x->next;
            free(x);
        }
    }
    free(c->buckets);
}

/* The register model. */
static bool step(const lop_t *l, uint64_t state, uint64_t *next)
{
    const craft_fuzzy_op_t *o = l->op;
    switch (o->kind) {
    case CRAFT_FUZZY_OP_PUT:
        *next = o->value;
        return true;
    case CRAFT_FUZZY_OP_CAS:
        if (l->any_output) {
            *next = state == o->expect ? o->value : state;
            return true;
        }
        if (o->cas_ok) {
            if (state != o->expect) {
                return false;
            }
            *next = o->value;
            return true;
        }
        *next = state;
        return state != o->expect;
    case CRAFT_FUZZY_OP_GET:
        *next = state;
        return l->any_output || state == o->read;
    }
    return false;
}

static int cmp_ent(const void *a, const void *b)
{
    const ent_t *x = a, *y = b;
    if (x->time != y->time) {
        return x->time < y->time ? -1 : 1;
    }
    /* Equal (infinite) return times: any fixed order. */
    return x->id < y->id ? -1 : (x->id > y->id);
}

static void lift(ent_t *call)
{
    call->prev->next = call->next;
    call->next->prev = call->prev;
    ent_t *r = call->match;
    r->prev->next = r->next;
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
}

static void unlift(ent_t *call)
{
    ent_t *r = call->match;
    r->prev->next = r;
    if (r->next != NULL) {
        r->next->prev = r;
    }
    call->prev->next = call;
    call->next->prev = call;
}

typedef struct frame {
    ent_t *e;
    uint64_t state;
} frame_t;

static void describe(craft_fuzzy_report_t *rep, const craft_fuzzy_op_t *o)
{
    static const char *kinds[] = {"put", "cas", "get"};
    char ret[24];
    if (o->ret == UINT64_MAX) {
        snprintf(ret, sizeof ret, "inf");
    } else {
        snprintf(ret, sizeof ret, "%" PRIu64, o->ret);
    }
    craft_fuzzy_report_note(rep,
                            "  c%u.%" PRIu64 " [%" PRIu64 ", %s] %s k%u value=%" PRIu64
                            " expect=%" PRIu64 " -> %s cas_ok=%d read=%" PRIu64 " via %s @%" PRIu64,
                            o->client, o->opid, o->call, ret, kinds[o->kind], o->key, o->value,
                            o->expect, o->outcome == CRAFT_FUZZY_OK ? "ok" : "unknown", o->cas_ok,
                            o->read, o->how, o->index);
}

/* Checks one key's operations. 0 linearizable, 1 not, 2 unknown. */
static int check_part(lop_t *ops, size_t n, int64_t deadline_us, craft_fuzzy_report_t *rep,
                      unsigned key)
{
    if (n == 0) {
        return 0;
    }
    ent_t *ents = calloc(2 * n + 1, sizeof *ents);
    frame_t *stack = calloc(n + 1, sizeof *stack);
    size_t nwords = (n + 63) / 64;
    uint64_t *bits = calloc(nwords, sizeof *bits);
    cache_t cache = {calloc(1024, sizeof(cache_node_t *)), 1024, 0, nwords};
    int result = 2;
    if (ents == NULL || stack == NULL || bits == NULL || cache.buckets == NULL) {
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        ents[2 * i] = (ent_t){.id = (int)i, .call = true, .time = ops[i].op->call};
        ents[2 * i + 1] = (ent_t){.id = (int)i, .call = false, .time = ops[i].op->ret};
    }
    qsort(ents, 2 * n, sizeof *ents, cmp_ent);
    /* Link: a sentinel head at ents[2n]. */
    ent_t *head = &ents[2 * n];
    head->id = -1;
    ent_t **ret_of = calloc(n, sizeof *ret_of);
    if (ret_of == NULL) {
        goto out;
    }
    ent_t *prev = head;
    for (size_t k = 0; k < 2 * n; k++) {
        ent_t *e = &ents[k];
        e->prev = prev;
        prev->next = e;
        e->next = NULL;
        prev = e;
        if (!e->call) {
            ret_of[e->id] = e;
        }
    }
    for (size_t k = 0; k < 2 * n; k++) {
        if (ents[k].call) {
            ents[k].match = ret_of[ents[k].id];
        }
    }
    free(ret_of);

    size_t depth = 0, best = 0;
    uint64_t state = 0;
    ent_t *e = head->next;
    const craft_fuzzy_op_t *stuck = NULL;
    uint64_t iter = 0;
    while (head->next != NULL) {
        if ((++iter & 1023) == 0 && fz_now_us() > deadline_us) {
            result = 2;
            goto out;
        }
        if (e->call) {
            uint64_t next;
            if (step(&ops[e->id], state, &next)) {
                bits[e->id / 64] |= 1ULL << (e->id % 64);
                int added = cache_add(&cache, bits, next);
                if (added < 0) {
                    result = 2;
                    goto out;
                }
                if (added > 0) {
                    stack[depth].e = e;
                    stack[depth].state = state;
                    depth++;
                    if (depth > best) {
                        best = depth;
                    }
                    state = next;
                    lift(e);
                    e = head->next;
                    continue;
                }
                bits[e->id / 64] &= ~(1ULL << (e->id % 64));
            }
            e = e->next;
        } else {
            /* A return whose call was not linearized: backtrack. */
            if (depth == best && stuck == NULL) {
                stuck = ops[e->id].op;
            }
            if (depth == 0) {
                result = 1;
                if (rep != NULL) {
                    craft_fuzzy_report_violation(
                        rep,
                        "linearizability: key %u: history of %zu operations is not "
                        "linearizable (at most %zu linearized)",
                        key, n, best);
                    if (stuck != NULL) {
                        craft_fuzzy_report_note(rep, "  first operation that cannot be placed:");
                        describe(rep, stuck);
                    }
                }
                goto out;
            }
            depth--;
            e = stack[depth].e;
            state = stack[depth].state;
            bits[e->id / 64] &= ~(1ULL << (e->id % 64));
            unlift(e);
            e = e->next;
        }
    }
    result = 0;
out:
    free(ents);
    free(stack);
    free(bits);
    cache_free(&cache);
    return result;
}

craft_fuzzy_lin_result_t craft_fuzzy_check_linearizable(const craft_fuzzy_history_t *h,
                                                        int64_t time_bound_ms,
                                                        craft_fuzzy_report_t *rep)
{
    int64_t deadline = fz_now_us() + time_bound_ms * 1000;
    unsigned max_key = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (h->ops[i].key > max_key) {
            max_key = h->ops[i].key;
        }
    }
    lop_t *ops = calloc(h->n + 1, sizeof *ops);
    if (ops == NULL) {
        return CRAFT_FUZZY_LIN_UNKNOWN;
    }
    craft_fuzzy_lin_result_t res = CRAFT_FUZZY_LINEARIZABLE;
    for (unsigned key = 0; key <= max_key && h->n > 0; key++) {
        size_t n = 0;
        for (size_t i = 0; i < h->n; i++) {
            const craft_fuzzy_op_t *o = &h->ops[i];
            if (o->key != key || o->outcome == CRAFT_FUZZY_FAILED) {
                continue;
            }
            if (o->outcome == CRAFT_FUZZY_UNKNOWN) {
                if (o->kind == CRAFT_FUZZY_OP_GET) {
                    continue; /* a read with no known output constrains nothing */
                }
                ops[n].any_output = true;
            } else {
                ops[n].any_output = false;
            }
            ops[n].op = o;
            n++;
        }
        int r = check_part(ops, n, deadline, rep, key);
        if (r == 1) {
            res = CRAFT_FUZZY_NOT_LINEARIZABLE;
            break;
        }
        if (r == 2) {
            res = CRAFT_FUZZY_LIN_UNKNOWN;
            if (rep != NULL) {
                craft_fuzzy_report_note(rep,
                                        "linearizability: key %u: undecided within the bound "
                                        "(%zu operations)",
                                        key, n);
            }
        }
    }
    free(ops);
    return res;
}
