#include "lib/commitment.h"

#include <stdlib.h>
#include <string.h>

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

uint64_t craft__quorum_match_index(const uint64_t *match, size_t n)
{
    uint64_t stack[32];
    uint64_t *m = n <= 32 ? stack : malloc(n * sizeof *m);
    if (m == NULL) {
        return 0;
    }
    memcpy(m, match, n * sizeof *m);
    qsort(m, n, sizeof *m, cmp_u64);
    /* Ascending: element (n-1)/2 is stored on at least n/2+1 voters. */
    uint64_t q = m[(n - 1) / 2];
    if (m != stack) {
        free(m);
    }
    return q;
}

/* Recomputes; caller holds mu. */
static bool recalculate(craft__commitment_t *cm)
{
    if (cm->n == 0) {
        return false;
    }
    uint64_t q = craft__quorum_match_index(cm->match, cm->n);
    /* Raft §5.4.2: entries of earlier terms are committed only indirectly. */
    if (q > cm->commit_index && q >= cm->start_index) {
        cm->commit_index = q;
        return true;
    }
    return false;
}

static void free_voters(craft__commitment_t *cm)
{
    for (size_t i = 0; i < cm->n; i++) {
        free(cm->ids[i]);
    }
    free(cm->ids);
    free(cm->match);
    cm->ids = NULL;
    cm->match = NULL;
    cm->n = 0;
}

int craft__commitment_set_configuration(craft__commitment_t *cm,
                                        const craft_configuration_t *c, bool *advanced)
{
    size_t nv = 0;
    for (size_t i = 0; i < c->n; i++) {
        nv += c->servers[i].suffrage == CRAFT_VOTER;
    }
    char **ids = calloc(nv ? nv : 1, sizeof *ids);
    uint64_t *match = calloc(nv ? nv : 1, sizeof *match);
    if (ids == NULL || match == NULL) {
        free(ids);
        free(match);
        return CRAFT_ENOMEM;
    }
    craft__mutex_lock(&cm->mu);
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (c->servers[i].suffrage != CRAFT_VOTER) {
            continue;
        }
        ids[k] = strdup(c->servers[i].id);
        if (ids[k] == NULL) {
            for (size_t j = 0; j < k; j++) {
                free(ids[j]);
            }
            free(ids);
            free(match);
            craft__mutex_unlock(&cm->mu);
            return CRAFT_ENOMEM;
        }
        for (size_t j = 0; j < cm->n; j++) {
            if (strcmp(cm->ids[j], ids[k]) == 0) {
                match[k] = cm->match[j];
            }
        }
        k++;
    }
    free_voters(cm);
    cm->ids = ids;
    cm->match = match;
    cm->n = nv;
    bool adv = recalculate(cm);
    craft__mutex_unlock(&cm->mu);
    if (advanced != NULL) {
        *advanced = adv;
    }
    return 0;
}

craft__commitment_t *craft__commitment_new(const craft_configuration_t *c,
                                           uint64_t commit_index, uint64_t start_index)
{
    craft__commitment_t *cm = calloc(1, sizeof *cm);
    if (cm == NULL) {
        return NULL;
    }
    craft__mutex_init(&cm->mu);
    atomic_init(&cm->refs, 1);
    cm->commit_index = commit_index;
    cm->start_index = start_index;
    if (craft__commitment_set_configuration(cm, c, NULL) != 0) {
        craft__mutex_destroy(&cm->mu);
        free(cm);
        return NULL;
    }
    return cm;
}

void craft__commitment_ref(craft__commitment_t *cm)
{
    atomic_fetch_add(&cm->refs, 1);
}

void craft__commitment_unref(craft__commitment_t *cm)
{
    if (cm != NULL && atomic_fetch_sub(&cm->refs, 1) == 1) {
        free_voters(cm);
        craft__mutex_destroy(&cm->mu);
        free(cm);
    }
}

bool craft__commitment_match(craft__commitment_t *cm, const char *id, uint64_t index)
{
    bool adv = false;
    craft__mutex_lock(&cm->mu);
    for (size_t i = 0; i < cm->n; i++) {
        if (strcmp(cm->ids[i], id) == 0) {
            if (index > cm->match[i]) {
                cm->match[i] = index;
                adv = recalculate(cm);
            }
            break;
        }
    }
    craft__mutex_unlock(&cm->mu);
    return adv;
}

uint64_t craft__commitment_commit_index(craft__commitment_t *cm)
{
    craft__mutex_lock(&cm->mu);
    uint64_t c = cm->commit_index;
    craft__mutex_unlock(&cm->mu);
    return c;
}
