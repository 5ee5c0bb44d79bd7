/*
 * The fsm thread (hashicorp fsm.go runFSM): applies committed entries in
 * order, in batches of up to max_append_entries, and completes the futures
 * waiting on them with the FSM's responses.
 *
 * With config.apply_inline the thread that moves the commit index applies
 * the entries itself when the fsm thread is idle (craft__fsm_apply_inline):
 * one thread wake-up less per batch. Whoever applies holds fsm_mu, so the
 * FSM is still called by one thread at a time, in log order; the fsm
 * thread keeps snapshots, restores and whatever the inline applier hands
 * back to it.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/logread.h"
#include "lib/raft.h"

struct craft__fsm_state {
    craft_t *r;
    uint64_t applied;
    uint64_t applied_term;
    bool failed; /* an entry could not be read: stop applying (never skip) */
    craft__entry_t **ents;
    craft_log_t *cmds;
    void **responses;
    uint64_t *cmd_index;
    bool inline_now; /* an inline applier runs apply_upto */
};
typedef struct craft__fsm_state fsm_state_t;

/* Rounds (each applies up to the commit index it read) an inline applier
 * does before it hands the rest to the fsm thread: the thread it borrowed
 * has its own work. */
#define INLINE_MAX_ROUNDS 4

/* Completes futures at the head of `futures` with index <= upto. Those with
 * index == an applied command get its response. */
static void complete_upto(fsm_state_t *s, craft__queue_t *futures, uint64_t upto,
                          size_t ncmd)
{
    size_t k = 0;
    while (!craft__queue_empty(futures)) {
        craft__queue_t *e = craft__queue_head(futures);
        craft_future_t *f = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        if (f->index > upto) {
            break;
        }
        craft__queue_remove(e);
        while (k < ncmd && s->cmd_index[k] < f->index) {
            k++;
        }
        if (k < ncmd && s->cmd_index[k] == f->index) {
            f->response = s->responses[k];
            f->fsm = s->r->fsm;
            s->responses[k] = NULL;
        }
        craft__future_complete(f, 0);
    }
}

static void apply_batch(fsm_state_t *s, size_t n, craft__queue_t *futures)
{
    craft_t *r = s->r;
    craft_fsm_t *fsm = r->fsm;
    size_t ncmd = 0;
    for (size_t i = 0; i < n; i++) {
        if (s->ents[i]->log.type == CRAFT_LOG_COMMAND) {
            s->cmds[ncmd] = s->ents[i]->log;
            s->cmd_index[ncmd] = s->ents[i]->log.index;
            s->responses[ncmd] = NULL;
            ncmd++;
        }
    }
    if (ncmd > 0) {
        int64_t t0 = craft__now_ns();
        if (fsm->apply_batch != NULL) {
            fsm->apply_batch(fsm->ctx, s->cmds, ncmd, s->responses);
        } else {
            for (size_t i = 0; i < ncmd; i++) {
                s->responses[i] = fsm->apply(fsm->ctx, &s->cmds[i]);
            }
        }
        atomic_fetch_add(&r->st_fsm_us, (uint64_t)(craft__now_ns() - t0) / 1000);
        atomic_fetch_add(&r->st_fsm_batches, 1);
        if (s->inline_now) {
            atomic_fetch_add(&r->st_fsm_inline_batches, 1);
        }
        atomic_fetch_add(&r->st_fsm_applied, ncmd);
    }
    uint64_t last = s->ents[n - 1]->log.index;
    s->applied = last;
    s->applied_term = s->ents[n - 1]->log.term;
    atomic_store(&r->applied_index, last);
    craft__snapshot_check_growth(r, last);
    complete_upto(s, futures, last, ncmd);
    /* Responses nobody waits for. */
    for (size_t i = 0; i < ncmd; i++) {
        if (s->responses[i] != NULL && fsm->release_response != NULL) {
            fsm->release_response(fsm->ctx, s->responses[i]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        craft__entry_unref(s->ents[i]);
    }
}

static void apply_upto(fsm_state_t *s, uint64_t upto, craft__queue_t *futures)
{
    craft_t *r = s->r;
    size_t max = (size_t)r->conf.max_append_entries;
    while (s->applied < upto && !s->failed) {
        uint64_t lo = s->applied + 1;
        size_t want = (size_t)(upto - s->applied) < max ? (size_t)(upto - s->applied) : max;
        size_t n = 0;
        int rv = craft__read_entries(r, lo, want, SIZE_MAX, s->ents, &n);
        if (rv != 0) {
            /* Never skip an entry: stop applying. */
            CRAFT__ERROR(&r->log, "fsm", "failed to get log: index=%llu error=%s",
                         (unsigned long long)lo, craft_strerror(rv));
            s->failed = true;
        }
        if (n > 0) {
            apply_batch(s, n, futures);
        }
    }
    if (s->failed) {
        craft__fail_futures(futures, CRAFT_EIO);
        return;
    }
    /* Futures at or below what is applied (e.g. entries applied earlier). */
    complete_upto(s, futures, s->applied, 0);
}

/* FSM snapshot between two batches: never concurrent with apply. */
static void take_snapshot(fsm_state_t *s, craft__fsm_req_t *req)
{
    craft_t *r = s->r;
    int rv = 0;
    if (r->fsm->snapshot == NULL) {
        rv = CRAFT_ENOTSUP;
    } else if (s->failed) {
        rv = CRAFT_EIO;
    } else {
        req->snap = NULL;
        rv = r->fsm->snapshot(r->fsm->ctx, &req->snap);
        if (rv == 0 && req->snap == NULL) {
            rv = CRAFT_EINVAL;
        }
        req->index = s->applied;
        req->term = s->applied_term;
    }
    craft__future_complete(req->done, rv);
}

static void restore(fsm_state_t *s, craft__fsm_req_t *req)
{
    craft_t *r = s->r;
    craft_snapshot_meta_t *meta = NULL;
    craft_reader_t *reader = NULL;
    int rv = CRAFT_ENOTSUP;
    if (r->fsm->restore != NULL && r->snaps != NULL) {
        rv = r->snaps->open(r->snaps->ctx, req->snapshot_id, &meta, &reader);
    }
    if (rv == 0) {
        rv = r->fsm->restore(r->fsm->ctx, reader);
        reader->close(reader->ctx);
        craft_snapshot_meta_free(meta);
    }
    if (rv == 0) {
        s->applied = req->index;
        s->applied_term = req->term;
        s->failed = false;
        atomic_store(&r->applied_index, req->index);
        CRAFT__INFO(&r->log, "fsm", "restored snapshot: id=%s index=%llu", req->snapshot_id,
                    (unsigned long long)req->index);
    } else {
        CRAFT__ERROR(&r->log, "fsm", "failed to restore snapshot: id=%s error=%s",
                     req->snapshot_id, craft_strerror(rv));
    }
    craft__future_complete(req->done, rv);
}

int craft__fsm_init(craft_t *r)
{
    size_t max = (size_t)r->conf.max_append_entries;
    fsm_state_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    s->r = r;
    s->applied = atomic_load(&r->applied_index);
    s->applied_term = atomic_load(&r->last_snapshot_term);
    s->ents = malloc(max * sizeof(craft__entry_t *));
    s->cmds = malloc(max * sizeof(craft_log_t));
    s->responses = malloc(max * sizeof(void *));
    s->cmd_index = malloc(max * sizeof(uint64_t));
    r->fsm_state = s;
    if (s->ents == NULL || s->cmds == NULL || s->responses == NULL || s->cmd_index == NULL) {
        craft__fsm_free(r);
        return CRAFT_ENOMEM;
    }
    return 0;
}

void craft__fsm_free(craft_t *r)
{
    fsm_state_t *s = r->fsm_state;
    if (s == NULL) {
        return;
    }
    free(s->ents);
    free(s->cmds);
    free(s->responses);
    free(s->cmd_index);
    free(s);
    r->fsm_state = NULL;
}

void craft__fsm_apply_inline(craft_t *r)
{
    fsm_state_t *s = r->fsm_state;
    for (int round = 0;; round++) {
        craft__queue_t futures;
        craft__queue_init(&futures);
        craft__mutex_lock(&r->commit_mu);
        uint64_t target = atomic_load(&r->commit_index);
        if (target <= s->applied || s->failed || round == INLINE_MAX_ROUNDS ||
            !craft__mailbox_idle(&r->fsm_mb)) {
            /* Done, or the rest goes to the fsm thread (which also fails
             * what cannot be applied). Under commit_mu: committers post
             * again from here on. */
            r->applier_active = false;
            int err = target > s->applied ? craft__post_commit_locked(r, target) : 0;
            craft__mutex_unlock(&r->commit_mu);
            craft__mutex_unlock(&r->fsm_mu);
            if (err != 0) {
                craft__fail_commit_futures(r, target, false, err);
            }
            return;
        }
        craft__take_futures_locked(r, target, &futures);
        craft__mutex_unlock(&r->commit_mu);
        s->inline_now = true;
        apply_upto(s, target, &futures);
        s->inline_now = false;
    }
}

void *craft__fsm_main(void *arg)
{
    craft_t *r = arg;
    craft__set_craft_thread(r);
    fsm_state_t *s = r->fsm_state;
    for (;;) {
        craft__msg_t *m = craft__mailbox_wait(&r->fsm_mb, -1);
        if (m == NULL) {
            break; /* closed and drained */
        }
        craft__mutex_lock(&r->fsm_mu);
        /* Once the run thread closed the mailbox, stop applying. */
        bool closing = craft__mailbox_closed(&r->fsm_mb);
        if (m->type != CRAFT__FSM_COMMIT) {
            craft__fsm_req_t *req = (craft__fsm_req_t *)m;
            if (closing) {
                craft__future_complete(req->done, CRAFT_ESHUTDOWN);
            } else if (m->type == CRAFT__FSM_SNAPSHOT) {
                take_snapshot(s, req);
            } else {
                restore(s, req);
            }
            craft__mutex_unlock(&r->fsm_mu);
            continue;
        }
        craft__fsm_commit_t *c = (craft__fsm_commit_t *)m;
        /* Taken before applying, so each future gets its entry's response. */
        craft__queue_t futures;
        craft__queue_init(&futures);
        craft__take_futures(r, c->index, false, &futures);
        if (closing || s->failed) {
            craft__fail_futures(&futures, s->failed ? CRAFT_EIO : CRAFT_ESHUTDOWN);
        } else {
            apply_upto(s, c->index, &futures);
        }
        craft__mutex_unlock(&r->fsm_mu);
        free(c);
    }
    return NULL;
}
