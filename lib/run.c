/*
 * The run thread: the Raft state machine (hashicorp raft.go run()).
 * Shared helpers for the role loops live here; each role is in its own
 * file (follower.c, election.c, leader.c).
 */
#include <stdlib.h>
#include <string.h>

#include "lib/configuration.h"
#include "lib/raft.h"
#include "lib/replication.h"

void craft__signal(craft_t *r, craft__msg_t *m, atomic_bool *posted)
{
    if (!atomic_exchange(posted, true)) {
        if (craft__mailbox_post(&r->run_mb, m) != 0) {
            atomic_store(posted, false);
        }
    }
}

void craft__header(craft_t *r, craft_rpc_header_t *h)
{
    h->protocol_version = r->conf.protocol_version;
    h->id = r->local_id;
    h->addr = r->local_addr;
}

void craft__set_state(craft_t *r, craft_state_t s)
{
    craft_state_t old = (craft_state_t)atomic_load(&r->state);
    if (old == s) {
        return;
    }
    craft__mutex_lock(&r->mu);
    atomic_store(&r->state, (int)s);
    craft__mutex_unlock(&r->mu);
    CRAFT__INFO(&r->log, "raft", "entering %s state: term=%llu", craft_state_name(s),
                (unsigned long long)atomic_load(&r->current_term));
    craft_observation_t o = {.kind = CRAFT_OBSERVE_STATE, .state = s};
    craft__observe(r, &o);
}

/* Finds the ID of the server at `addr` in the latest configuration. */
static const char *id_for_addr(craft_t *r, const char *addr)
{
    for (size_t i = 0; addr != NULL && i < r->latest.n; i++) {
        if (strcmp(r->latest.servers[i].address, addr) == 0) {
            return r->latest.servers[i].id;
        }
    }
    return NULL;
}

void craft__set_leader(craft_t *r, const char *id, const char *addr)
{
    if (id == NULL || id[0] == '\0') {
        id = id_for_addr(r, addr);
    }
    craft__mutex_lock(&r->mu);
    bool same = (addr == NULL && r->leader_addr == NULL) ||
                (addr != NULL && r->leader_addr != NULL && strcmp(addr, r->leader_addr) == 0);
    if (!same) {
        free(r->leader_id);
        free(r->leader_addr);
        r->leader_id = id != NULL ? strdup(id) : NULL;
        r->leader_addr = addr != NULL ? strdup(addr) : NULL;
    }
    craft__mutex_unlock(&r->mu);
    if (!same) {
        CRAFT__DEBUG(&r->log, "raft", "leader changed: id=%s address=%s", id ? id : "",
                     addr ? addr : "");
        craft_observation_t o = {
            .kind = CRAFT_OBSERVE_LEADER, .leader_id = id, .leader_address = addr};
        craft__observe(r, &o);
    }
}

int craft__set_current_term(craft_t *r, uint64_t term)
{
    int rv = r->stable->set_uint64(r->stable->ctx, CRAFT__KEY_CURRENT_TERM, term);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "raft", "failed to save current term: term=%llu error=%s",
                     (unsigned long long)term, craft_strerror(rv));
        return rv;
    }
    craft__mutex_lock(&r->mu);
    atomic_store(&r->current_term, term);
    craft__mutex_unlock(&r->mu);
    return 0;
}

void craft__set_last_log(craft_t *r, uint64_t index, uint64_t term)
{
    atomic_store(&r->last_log_index, index);
    atomic_store(&r->last_log_term, term);
}

int craft__entry_at(craft_t *r, uint64_t index, craft__entry_t **out)
{
    craft__entry_t *e = craft__window_get(&r->window, index);
    if (e != NULL) {
        *out = e;
        return 0;
    }
    craft_log_t l;
    memset(&l, 0, sizeof l);
    int rv = r->logs->get_log(r->logs->ctx, index, &l);
    if (rv != 0) {
        return rv;
    }
    e = craft__entry_from_log(&l);
    craft_log_release(&l);
    if (e == NULL) {
        return CRAFT_ENOMEM;
    }
    if (e->log.index != index) {
        CRAFT__ERROR(&r->log, "raft", "log store returned the wrong entry: want=%llu got=%llu",
                     (unsigned long long)index, (unsigned long long)e->log.index);
        craft__entry_unref(e);
        return CRAFT_ECORRUPT;
    }
    *out = e;
    return 0;
}

int craft__term_at(craft_t *r, uint64_t index, uint64_t *term)
{
    if (index == 0) {
        *term = 0;
        return 0;
    }
    if (index == r->last_snapshot_index && index != 0) {
        *term = r->last_snapshot_term;
        return 0;
    }
    craft__entry_t *e;
    int rv = craft__entry_at(r, index, &e);
    if (rv != 0) {
        return rv;
    }
    *term = e->log.term;
    craft__entry_unref(e);
    return 0;
}

void craft__trim_window(craft_t *r)
{
    uint64_t keep_after = atomic_load(&r->applied_index);
    bool big = craft__window_len(&r->window) > 65536 ||
               craft__window_bytes(&r->window) > ((size_t)64 << 20);
    if (atomic_load(&r->state) == CRAFT_LEADER && !big) {
        /* Keep what a peer still needs; a far-behind peer must not pin
         * unbounded memory: past the bounds it reads from the store. */
        for (size_t i = 0; i < r->leader.n_repls; i++) {
            uint64_t m = atomic_load(&r->leader.repls[i]->match_index);
            if (m < keep_after) {
                keep_after = m;
            }
        }
    }
    /* Only entries the LogStore holds may leave the window. The run thread
     * writes synchronously, so everything up to last_log_index is stored. */
    craft__window_trim_to(&r->window, keep_after);
}

void craft__publish_configuration(craft_t *r)
{
    craft_configuration_t copy;
    if (craft_configuration_copy(&copy, &r->latest) != 0) {
        CRAFT__ERROR(&r->log, "raft", "out of memory publishing the configuration");
        return;
    }
    craft__mutex_lock(&r->mu);
    craft_configuration_free(&r->latest_copy);
    r->latest_copy = copy;
    r->latest_copy_index = r->latest_index;
    craft__mutex_unlock(&r->mu);
}

void craft__step_down(craft_t *r, uint64_t term)
{
    if (term > atomic_load(&r->current_term)) {
        if (craft__set_current_term(r, term) != 0) {
            /* Without a durable term we cannot safely go on. */
            atomic_store(&r->shutting_down, true);
        }
    }
    craft__set_state(r, CRAFT_FOLLOWER);
}

void craft__configuration_appended(craft_t *r, const craft_configuration_t *c,
                                   uint64_t index)
{
    craft_configuration_t copy;
    if (craft_configuration_copy(&copy, c) != 0) {
        CRAFT__ERROR(&r->log, "raft", "out of memory applying configuration at index=%llu",
                     (unsigned long long)index);
        return;
    }
    craft_configuration_free(&r->latest);
    r->latest = copy;
    r->latest_index = index;
    craft__publish_configuration(r);
    CRAFT__INFO(&r->log, "raft", "configuration at index=%llu has %zu servers",
                (unsigned long long)index, c->n);
    if (atomic_load(&r->state) == CRAFT_LEADER) {
        craft__leader_configuration_changed(r);
    }
}

void craft__take_futures_locked(craft_t *r, uint64_t upto, craft__queue_t *out)
{
    while (!craft__queue_empty(&r->commit_futures)) {
        craft__queue_t *e = craft__queue_head(&r->commit_futures);
        if (CRAFT__QUEUE_DATA(e, craft_future_t, link)->index > upto) {
            break;
        }
        craft__queue_remove(e);
        craft__queue_push(out, e);
    }
}

void craft__take_futures(craft_t *r, uint64_t upto, bool above, craft__queue_t *out)
{
    craft__mutex_lock(&r->commit_mu);
    if (above) {
        /* From the tail: the newest are above. */
        craft__queue_t tmp;
        craft__queue_init(&tmp);
        while (!craft__queue_empty(&r->commit_futures)) {
            craft__queue_t *e = r->commit_futures.prev;
            if (CRAFT__QUEUE_DATA(e, craft_future_t, link)->index <= upto) {
                break;
            }
            craft__queue_remove(e);
            craft__queue_insert_head(&tmp, e);
        }
        craft__queue_move(&tmp, out);
    } else {
        craft__take_futures_locked(r, upto, out);
    }
    craft__mutex_unlock(&r->commit_mu);
}

void craft__fail_commit_futures(craft_t *r, uint64_t upto, bool above, int err)
{
    craft__queue_t q;
    craft__queue_init(&q);
    craft__take_futures(r, upto, above, &q);
    craft__fail_futures(&q, err);
}

/* Stats: enqueue-to-commit time of the futures newly committed by moving
 * the commit index from `old` to `index`; commit_mu held. */
static void count_commit_times(craft_t *r, uint64_t old, uint64_t index)
{
    int64_t now = craft__now_ns();
    for (craft__queue_t *e = r->commit_futures.next; e != &r->commit_futures; e = e->next) {
        craft_future_t *f = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        if (f->index > index) {
            break;
        }
        if (f->index > old) {
            atomic_fetch_add(&r->st_commit_us, (uint64_t)(now - f->enqueued_ns) / 1000);
            atomic_fetch_add(&r->st_commit_n, 1);
        }
    }
}

int craft__post_commit_locked(craft_t *r, uint64_t index)
{
    craft__fsm_commit_t *c = malloc(sizeof *c);
    if (c == NULL) {
        CRAFT__ERROR(&r->log, "raft", "out of memory dispatching commits");
        atomic_store(&r->shutting_down, true);
        return CRAFT_ENOMEM;
    }
    c->msg.type = CRAFT__FSM_COMMIT;
    c->index = index;
    if (craft__mailbox_post(&r->fsm_mb, &c->msg) != 0) {
        free(c);
        return CRAFT_ESHUTDOWN;
    }
    return 0;
}

/* Moves commit_index up to `index` and gets the entries applied; commit_mu
 * held. Returns 0 (also when `index` is not above commit_index), or the
 * error that kept the fsm thread from hearing of it: the caller then fails
 * the futures up to `index` once commit_mu is released. Sets *apply when
 * the caller is to apply them itself (craft__fsm_apply_inline, after
 * releasing commit_mu): config.apply_inline, and the fsm thread is idle
 * with nothing queued. */
static int advance_locked(craft_t *r, uint64_t index, bool *apply)
{
    uint64_t old = atomic_load(&r->commit_index);
    if (index <= old) {
        return 0;
    }
    count_commit_times(r, old, index);
    atomic_store(&r->commit_index, index);
    atomic_fetch_add(&r->st_commits, 1);
    if (r->applier_active) {
        return 0; /* the inline applier looks at commit_index again */
    }
    /* trylock: the fsm thread takes commit_mu while holding fsm_mu. */
    if (atomic_load(&r->apply_inline) && craft__mutex_trylock(&r->fsm_mu) == 0) {
        if (craft__mailbox_len(&r->fsm_mb) == 0 && !atomic_load(&r->shutting_down)) {
            r->applier_active = true;
            *apply = true;
            return 0;
        }
        craft__mutex_unlock(&r->fsm_mu);
    }
    return craft__post_commit_locked(r, index);
}

bool craft__commit_fast(craft_t *r, uint64_t term, craft__commitment_t *cm)
{
    craft__mutex_lock(&r->commit_mu);
    if (r->commit_term != term || term == 0) {
        craft__mutex_unlock(&r->commit_mu);
        return false;
    }
    uint64_t index = craft__commitment_commit_index(cm);
    uint64_t own = atomic_load(&r->own_stored_index);
    if (index > own) {
        /* Only what our own log holds: the fsm thread reads it from there
         * (a failed leader write drops a batch peers may have). */
        index = own;
    }
    bool advanced = index > atomic_load(&r->commit_index);
    bool apply = false;
    int err = advance_locked(r, index, &apply);
    craft__mutex_unlock(&r->commit_mu);
    if (err != 0) {
        craft__fail_commit_futures(r, index, false, err);
    }
    if (apply) {
        craft__fsm_apply_inline(r);
    }
    return advanced;
}

void craft__commit_to(craft_t *r, uint64_t index)
{
    if (index > atomic_load(&r->last_log_index)) {
        index = atomic_load(&r->last_log_index);
    }
    craft__mutex_lock(&r->commit_mu);
    bool apply = false;
    int err = advance_locked(r, index, &apply);
    craft__mutex_unlock(&r->commit_mu);
    if (err != 0) {
        craft__fail_commit_futures(r, index, false, err);
    }
    if (apply) {
        craft__fsm_apply_inline(r);
    }
    /* The fast path may have advanced commit_index already: the
     * configuration is committed whenever commit_index covers it. */
    uint64_t commit = atomic_load(&r->commit_index);
    if (r->latest_index > r->committed_index && r->latest_index <= commit) {
        craft_configuration_t copy;
        if (craft_configuration_copy(&copy, &r->latest) == 0) {
            craft_configuration_free(&r->committed);
            r->committed = copy;
            r->committed_index = r->latest_index;
            craft__publish_committed(r);
        }
    }
    craft__stage_commit(r);
}

void craft__stage_commit(craft_t *r)
{
    uint64_t commit = atomic_load(&r->commit_index);
    if (commit <= r->staged_commit || r->logs->stage_commit_index == NULL ||
        !r->conf.restore_committed_logs) {
        return;
    }
    int rv = r->logs->stage_commit_index(r->logs->ctx, commit);
    if (rv != 0) {
        CRAFT__WARN(&r->log, "raft", "failed to stage commit index: index=%llu error=%s",
                    (unsigned long long)commit, craft_strerror(rv));
        return;
    }
    r->staged_commit = commit;
}

void craft__handle_rpc(craft_t *r, craft_rpc_t *rpc)
{
    atomic_fetch_add(&r->st_rpcs, 1);
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES:
        craft__handle_append_entries(r, rpc);
        break;
    case CRAFT_RPC_REQUEST_VOTE:
        craft__handle_request_vote(r, rpc);
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        craft__handle_request_prevote(r, rpc);
        break;
    case CRAFT_RPC_TIMEOUT_NOW:
        craft__handle_timeout_now(r, rpc);
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT:
        craft__handle_install_snapshot(r, rpc);
        break;
    default:
        CRAFT__ERROR(&r->log, "raft", "unexpected rpc type: %d", (int)rpc->type);
        rpc->respond(rpc, CRAFT_EPROTOCOL);
        break;
    }
}

bool craft__handle_common(craft_t *r, craft__msg_t *m)
{
    switch (m->type) {
    case CRAFT__RUN_RPC: {
        craft__rpc_msg_t *rm = (craft__rpc_msg_t *)m;
        craft_rpc_t *rpc = rm->rpc;
        free(rm);
        craft__handle_rpc(r, rpc);
        return true;
    }
    case CRAFT__RUN_REPL_EXIT:
        craft__repl_free((craft__repl_t *)m);
        r->repls_stopping--;
        return true;
    case CRAFT__RUN_SHUTDOWN:
        atomic_store(&r->shutting_down, true);
        return true;
    case CRAFT__RUN_VOTE: {
        /* A stale vote from an earlier round or role. */
        craft__vote_msg_t *v = (craft__vote_msg_t *)m;
        if (v->term > atomic_load(&r->current_term)) {
            craft__step_down(r, v->term);
        }
        free(v->id);
        free(v);
        return true;
    }
    case CRAFT__RUN_COMMIT:
        atomic_store(&r->commit_posted, false);
        return true;
    case CRAFT__RUN_STEP_DOWN:
        atomic_store(&r->step_down_posted, false);
        if (atomic_load(&r->step_down_term) > atomic_load(&r->current_term)) {
            craft__step_down(r, atomic_load(&r->step_down_term));
        }
        return true;
    case CRAFT__RUN_VERIFY_ACK:
        atomic_store(&r->verify_ack_posted, false);
        return true;
    case CRAFT__RUN_APPLY:
    case CRAFT__RUN_VERIFY:
    case CRAFT__RUN_CONFIG_CHANGE:
    case CRAFT__RUN_READ_INDEX:
    case CRAFT__RUN_TRANSFER:
    case CRAFT__RUN_RESTORE:
        craft__fail_future((craft_future_t *)m, CRAFT_ENOTLEADER);
        return true;
    case CRAFT__RUN_INSTALL_DONE:
        craft__install_done(r, (craft__install_t *)m);
        return true;
    case CRAFT__RUN_TIMEOUT_NOW:
        free(((craft__vote_msg_t *)m)->id);
        free(m);
        return true;
    case CRAFT__RUN_RELOAD:
        atomic_store(&r->reload_posted, false);
        return true;
    default:
        return false;
    }
}

/* Disposes of a run message once shutting down. */
static void shutdown_message(craft_t *r, craft__msg_t *m)
{
    switch (m->type) {
    case CRAFT__RUN_RPC: {
        craft__rpc_msg_t *rm = (craft__rpc_msg_t *)m;
        rm->rpc->respond(rm->rpc, CRAFT_ESHUTDOWN);
        free(rm);
        break;
    }
    case CRAFT__RUN_APPLY:
    case CRAFT__RUN_VERIFY:
    case CRAFT__RUN_CONFIG_CHANGE:
    case CRAFT__RUN_READ_INDEX:
    case CRAFT__RUN_TRANSFER:
    case CRAFT__RUN_RESTORE:
        craft__fail_future((craft_future_t *)m, CRAFT_ESHUTDOWN);
        break;
    case CRAFT__RUN_INSTALL_DONE:
        craft__install_done(r, (craft__install_t *)m);
        break;
    case CRAFT__RUN_TIMEOUT_NOW:
    case CRAFT__RUN_VOTE:
        free(((craft__vote_msg_t *)m)->id);
        free(m);
        break;
    case CRAFT__RUN_REPL_EXIT:
        craft__repl_free((craft__repl_t *)m);
        r->repls_stopping--;
        break;
    case CRAFT__RUN_COMMIT:
        atomic_store(&r->commit_posted, false);
        break;
    case CRAFT__RUN_STEP_DOWN:
        atomic_store(&r->step_down_posted, false);
        break;
    case CRAFT__RUN_VERIFY_ACK:
        atomic_store(&r->verify_ack_posted, false);
        break;
    case CRAFT__RUN_RELOAD:
        atomic_store(&r->reload_posted, false);
        break;
    default:
        break;
    }
}

/* Everything the run thread does once the node is shutting down. */
static void run_shutdown(craft_t *r)
{
    craft__set_state(r, CRAFT_SHUTDOWN);
    /* Replication threads post their exit to run_mb: wait for all of them
     * while it is still open. */
    while (r->repls_stopping > 0 || r->install != NULL) {
        craft__msg_t *m = craft__mailbox_wait(&r->run_mb, -1);
        if (m == NULL) {
            break;
        }
        shutdown_message(r, m);
    }
    /* Vote threads end with their RPC (bounded by the transport timeout). */
    craft__reap_vote_threads(r, true);
    /* Detach from the transport: after this no handler call is in flight. */
    if (r->trans->set_heartbeat_handler != NULL) {
        r->trans->set_heartbeat_handler(r->trans->ctx, NULL, NULL);
    }
    r->trans->set_rpc_handler(r->trans->ctx, NULL, NULL);
    craft__mailbox_close(&r->run_mb);
    craft__msg_t *m;
    while ((m = craft__mailbox_wait(&r->run_mb, 0)) != NULL) {
        shutdown_message(r, m);
    }
    /* The snapshot thread may wait on the fsm thread: close both, then join
     * (the fsm thread drains its queue, failing what it did not apply). */
    craft__mailbox_close(&r->snapshot_mb);
    craft__mailbox_close(&r->fsm_mb);
    craft__thread_join(&r->fsm_thread);
    craft__fail_commit_futures(r, UINT64_MAX, false, CRAFT_ESHUTDOWN); /* none expected */
    if (r->snapshot_thread_started) {
        craft__thread_join(&r->snapshot_thread);
    }
}

void *craft__run_main(void *arg)
{
    craft_t *r = arg;
    craft__set_craft_thread(r);
    craft__mutex_lock(&r->run_token);
    atomic_store(&r->run_token_live, true);
    while (!atomic_load(&r->shutting_down)) {
        switch ((craft_state_t)atomic_load(&r->state)) {
        case CRAFT_FOLLOWER:
            craft__follower_loop(r);
            break;
        case CRAFT_CANDIDATE:
            craft__candidate_loop(r);
            break;
        case CRAFT_LEADER:
            craft__leader_loop(r);
            break;
        default:
            atomic_store(&r->shutting_down, true);
            break;
        }
    }
    atomic_store(&r->run_token_live, false);
    run_shutdown(r);
    craft__mutex_unlock(&r->run_token);
    craft__mutex_lock(&r->shutdown_mu);
    r->finished = true;
    craft__queue_t done;
    craft__queue_init(&done);
    craft__queue_move(&r->shutdown_futures, &done);
    craft__mutex_unlock(&r->shutdown_mu);
    while (!craft__queue_empty(&done)) {
        craft__queue_t *e = craft__queue_head(&done);
        craft__queue_remove(e);
        craft__future_complete(CRAFT__QUEUE_DATA(e, craft_future_t, link), 0);
    }
    CRAFT__INFO(&r->log, "raft", "shutdown complete");
    return NULL;
}
