/*
 * End-of-scenario verifiers over the nodes' log stores and the ledger, and
 * the failure dumps.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cluster.h"
#include "util.h"

typedef struct slog {
    bool ok;
    uint64_t first, last;
    uint64_t *term;    /* [last - first + 1] */
    uint64_t *hash;    /* data hash mixed with type */
} slog_t;

static void slog_free(slog_t *l)
{
    free(l->term);
    free(l->hash);
    memset(l, 0, sizeof *l);
}

static int slog_read(fz_node_t *nd, slog_t *out)
{
    memset(out, 0, sizeof *out);
    if (nd->state == FZ_EMPTY) {
        return CRAFT_ENOTFOUND;
    }
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    bool close_after;
    int rv = fz_node_open_log(nd, &log, &stable, &close_after);
    if (rv != 0) {
        return rv;
    }
    rv = log->first_index(log->ctx, &out->first);
    if (rv == 0) {
        rv = log->last_index(log->ctx, &out->last);
    }
    if (rv == 0 && out->last >= out->first && out->last > 0) {
        size_t n = (size_t)(out->last - out->first + 1);
        out->term = calloc(n, sizeof *out->term);
        out->hash = calloc(n, sizeof *out->hash);
        if (out->term == NULL || out->hash == NULL) {
            rv = CRAFT_ENOMEM;
        }
        for (uint64_t i = out->first; rv == 0 && i <= out->last; i++) {
            craft_log_t e;
            memset(&e, 0, sizeof e);
            rv = log->get_log(log->ctx, i, &e);
            if (rv != 0) {
                break;
            }
            out->term[i - out->first] = e.term;
            uint64_t h = fz_hash_bytes(FZ_HASH_INIT, &e.type, sizeof e.type);
            out->hash[i - out->first] = fz_hash_bytes(h, e.data, e.len);
            craft_log_release(&e);
        }
    }
    if (close_after) {
        log->close(log->ctx);
        stable->close(stable->ctx);
    }
    out->ok = rv == 0;
    if (rv != 0) {
        slog_free(out);
    }
    return rv;
}

static bool slog_has(const slog_t *l, uint64_t i)
{
    return l->ok && l->last > 0 && i >= l->first && i <= l->last;
}

static void check_log_matching(craft_fuzzy_cluster_t *c, slog_t *logs, craft_fuzzy_report_t *rep)
{
    for (size_t a = 0; a < c->n; a++) {
        const slog_t *A = &logs[a];
        if (!A->ok || A->last == 0) {
            continue;
        }
        for (uint64_t i = A->first + 1; i <= A->last; i++) {
            if (A->term[i - A->first] < A->term[i - 1 - A->first]) {
                craft_fuzzy_report_violation(rep,
                                             "log: %s has term %" PRIu64 " at index %" PRIu64
                                             " after term %" PRIu64,
                                             c->nodes[a].id, A->term[i - A->first], i,
                                             A->term[i - 1 - A->first]);
                break;
            }
        }
        for (size_t b = a + 1; b < c->n; b++) {
            const slog_t *B = &logs[b];
            if (!B->ok || B->last == 0) {
                continue;
            }
            uint64_t lo = A->first > B->first ? A->first : B->first;
            uint64_t hi = A->last < B->last ? A->last : B->last;
            if (lo > hi) {
                continue;
            }
            uint64_t k = 0;
            for (uint64_t i = hi; i >= lo; i--) {
                if (A->term[i - A->first] == B->term[i - B->first]) {
                    k = i;
                    break;
                }
                if (i == lo) {
                    break;
                }
            }
            if (k == 0) {
                continue;
            }
            for (uint64_t j = lo; j <= k; j++) {
                if (A->term[j - A->first] != B->term[j - B->first] ||
                    A->hash[j - A->first] != B->hash[j - B->first]) {
                    craft_fuzzy_report_violation(
                        rep,
                        "log matching: %s and %s both hold term %" PRIu64 " at index %" PRIu64
                        " but differ at index %" PRIu64 " (terms %" PRIu64 " / %" PRIu64 ")",
                        c->nodes[a].id, c->nodes[b].id, A->term[k - A->first], k, j,
                        A->term[j - A->first], B->term[j - B->first]);
                    break;
                }
            }
        }
    }
}

unsigned craft_fuzzy_cluster_verify(craft_fuzzy_cluster_t *c, craft_fuzzy_report_t *rep)
{
    unsigned before = rep->violations;
    craft_fuzzy_net_check_election_safety(c->net, rep);

    pthread_mutex_lock(&c->ledger_mu);
    if (c->live.text != NULL) {
        char *copy = strdup(c->live.text);
        pthread_mutex_unlock(&c->ledger_mu);
        for (char *line = copy ? strtok(copy, "\n") : NULL; line != NULL;
             line = strtok(NULL, "\n")) {
            craft_fuzzy_report_violation(rep, "%s",
                                         strncmp(line, "VIOLATION: ", 11) == 0 ? line + 11 : line);
        }
        free(copy);
    } else {
        pthread_mutex_unlock(&c->ledger_mu);
    }

    /* Equal rolling hashes at equal applied indexes (converged members). */
    pthread_mutex_lock(&c->ledger_mu);
    for (size_t a = 0; a < c->n; a++) {
        fz_node_t *A = &c->nodes[a];
        if (A->state != FZ_RUNNING || !A->member) {
            continue;
        }
        for (size_t b = a + 1; b < c->n; b++) {
            fz_node_t *B = &c->nodes[b];
            if (B->state != FZ_RUNNING || !B->member) {
                continue;
            }
            if (A->fsm_last == B->fsm_last && A->fsm_hash != B->fsm_hash) {
                craft_fuzzy_report_violation(rep,
                                             "state machine safety: %s and %s applied up to "
                                             "%" PRIu64 " with different rolling hashes",
                                             A->id, B->id, A->fsm_last);
            }
        }
    }
    pthread_mutex_unlock(&c->ledger_mu);

    slog_t *logs = calloc(c->n, sizeof *logs);
    if (logs == NULL) {
        craft_fuzzy_report_note(rep, "verify: out of memory reading logs");
        return rep->violations - before;
    }
    for (size_t i = 0; i < c->n; i++) {
        int rv = slog_read(&c->nodes[i], &logs[i]);
        if (rv != 0 && c->nodes[i].state != FZ_EMPTY) {
            craft_fuzzy_report_note(rep, "verify: cannot read the log of %s: %s",
                                    c->nodes[i].id, craft_strerror(rv));
        }
    }
    check_log_matching(c, logs, rep);

    /* Leader completeness / durability at the end: every command applied
     * anywhere up to the converged barrier is in every converged member's
     * log at the same index, unless compacted away there. */
    pthread_mutex_lock(&c->ledger_mu);
    uint64_t upto = c->converged_index < c->ledger_cap ? c->converged_index : c->ledger_cap - 1;
    for (size_t n = 0; n < c->n && c->ledger_cap > 0; n++) {
        fz_node_t *nd = &c->nodes[n];
        const slog_t *L = &logs[n];
        if (nd->state != FZ_RUNNING || !nd->member || !L->ok) {
            continue;
        }
        for (uint64_t i = 1; i <= upto; i++) {
            const fz_ledger_ent_t *e = &c->ledger[i];
            if (!e->set || !slog_has(L, i)) {
                continue;
            }
            uint64_t h = fz_hash_bytes(FZ_HASH_INIT, &(craft_log_type_t){CRAFT_LOG_COMMAND},
                                       sizeof(craft_log_type_t));
            h = fz_hash_bytes(h, e->data, e->len);
            if (L->term[i - L->first] != e->term || L->hash[i - L->first] != h) {
                craft_fuzzy_report_violation(rep,
                                             "leader completeness: %s's log holds term %" PRIu64
                                             " at index %" PRIu64 " where \"%s\" (term %" PRIu64
                                             ") was applied",
                                             nd->id, L->term[i - L->first], i,
                                             e->data ? e->data : "", e->term);
                break;
            }
        }
    }
    pthread_mutex_unlock(&c->ledger_mu);
    for (size_t i = 0; i < c->n; i++) {
        slog_free(&logs[i]);
    }
    free(logs);
    return rep->violations - before;
}

/* ------------------------------------------------------------------------ */
/* Dumps                                                                     */
/* ------------------------------------------------------------------------ */

static void put_escaped(FILE *f, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\') {
            fputc(b[i], f);
        } else {
            fprintf(f, "\\x%02x", b[i]);
        }
    }
}

static void dump_log(fz_node_t *nd, const char *dir)
{
    char path[800];
    snprintf(path, sizeof path, "%s/node-%s.log", dir, nd->id);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        return;
    }
    static const char *st[] = {"empty", "running", "crashed", "removed"};
    pthread_mutex_lock(&nd->c->ledger_mu);
    fprintf(f, "# %s state=%s member=%d voter=%d fsm_last=%" PRIu64 " restores=%u\n", nd->id,
            st[nd->state], nd->member, nd->voter, nd->fsm_last, nd->restores);
    pthread_mutex_unlock(&nd->c->ledger_mu);
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    bool close_after;
    if (nd->state == FZ_EMPTY || fz_node_open_log(nd, &log, &stable, &close_after) != 0) {
        fprintf(f, "# log unavailable\n");
        fclose(f);
        return;
    }
    uint64_t first = 0, last = 0, term = 0, commit = 0;
    log->first_index(log->ctx, &first);
    log->last_index(log->ctx, &last);
    stable->get_uint64(stable->ctx, "CurrentTerm", &term);
    if (log->get_commit_index != NULL) {
        log->get_commit_index(log->ctx, &commit);
    }
    fprintf(f, "# first=%" PRIu64 " last=%" PRIu64 " current_term=%" PRIu64
               " persisted_commit=%" PRIu64 "\n",
            first, last, term, commit);
    for (uint64_t i = first; last > 0 && i <= last; i++) {
        craft_log_t e;
        memset(&e, 0, sizeof e);
        int rv = log->get_log(log->ctx, i, &e);
        if (rv != 0) {
            fprintf(f, "%" PRIu64 " <%s>\n", i, craft_strerror(rv));
            continue;
        }
        fprintf(f, "%" PRIu64 " t%" PRIu64 " type%d ", e.index, e.term, (int)e.type);
        if (e.type == CRAFT_LOG_COMMAND) {
            put_escaped(f, e.data, e.len);
        } else {
            fprintf(f, "(%zu bytes)", e.len);
        }
        fputc('\n', f);
        craft_log_release(&e);
    }
    if (close_after) {
        log->close(log->ctx);
        stable->close(stable->ctx);
    }
    fclose(f);
}

static void dump_ring(fz_node_t *nd, const char *dir)
{
    char path[800];
    snprintf(path, sizeof path, "%s/node-%s.craftlog", dir, nd->id);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        return;
    }
    pthread_mutex_lock(&nd->ring_mu);
    for (size_t k = 0; k < 3000; k++) {
        const char *line = nd->ring[(nd->ring_head + k) % 3000];
        if (line != NULL) {
            fprintf(f, "%s\n", line);
        }
    }
    pthread_mutex_unlock(&nd->ring_mu);
    fclose(f);
}

int craft_fuzzy_cluster_dump(craft_fuzzy_cluster_t *c, const char *dir)
{
    mkdir(dir, 0755);
    for (size_t i = 0; i < c->n; i++) {
        dump_log(&c->nodes[i], dir);
        dump_ring(&c->nodes[i], dir);
    }
    char path[800];
    snprintf(path, sizeof path, "%s/ledger.txt", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        return CRAFT_EIO;
    }
    pthread_mutex_lock(&c->ledger_mu);
    fprintf(f, "# index term first-applier rolling-hash command\n");
    for (size_t i = 0; i < c->ledger_cap; i++) {
        const fz_ledger_ent_t *e = &c->ledger[i];
        if (e->set) {
            fprintf(f, "%zu t%" PRIu64 " %s %016" PRIx64 " %s\n", i, e->term, e->by, e->rolling,
                    e->data ? e->data : "");
        }
    }
    pthread_mutex_unlock(&c->ledger_mu);
    fclose(f);
    return 0;
}
