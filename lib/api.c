/* craft_new / shutdown / free and the public operations and getters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/codec.h"
#include "lib/configuration.h"
#include "lib/raft.h"
#include "lib/replication.h"

const char *craft_state_name(craft_state_t s)
{
    switch (s) {
    case CRAFT_FOLLOWER:
        return "Follower";
    case CRAFT_CANDIDATE:
        return "Candidate";
    case CRAFT_LEADER:
        return "Leader";
    case CRAFT_SHUTDOWN:
        return "Shutdown";
    default:
        return "Unknown";
    }
}

void craft__fail_future(craft_future_t *f, int err)
{
    craft__future_complete(f, err);
}

void craft__fail_futures(craft__queue_t *q, int err)
{
    while (!craft__queue_empty(q)) {
        craft__queue_t *e = craft__queue_head(q);
        craft__queue_remove(e);
        craft__fail_future(CRAFT__QUEUE_DATA(e, craft_future_t, link), err);
    }
}

int64_t craft_now_ns(void)
{
    return craft__now_ns();
}

static bool vtables_ok(craft_fsm_t *fsm, craft_log_store_t *logs, craft_stable_store_t *stable,
                       craft_transport_t *trans, const char **why)
{
    *why = NULL;
    if (fsm == NULL || (fsm->apply == NULL && fsm->apply_batch == NULL)) {
        *why = "fsm needs apply or apply_batch";
    } else if (logs == NULL || logs->first_index == NULL || logs->last_index == NULL ||
               logs->get_log == NULL || logs->store_logs == NULL ||
               logs->delete_range == NULL) {
        *why = "log store is missing required callbacks";
    } else if (stable == NULL || stable->set == NULL || stable->get == NULL ||
               stable->set_uint64 == NULL || stable->get_uint64 == NULL) {
        *why = "stable store is missing required callbacks";
    } else if (trans == NULL || trans->set_rpc_handler == NULL || trans->local_addr == NULL ||
               trans->append_entries == NULL || trans->request_vote == NULL) {
        *why = "transport is missing required callbacks";
    }
    return *why == NULL;
}

/* Loads term, vote, last log and configurations (hashicorp NewRaft). */
static int load_state(craft_t *r)
{
    uint64_t term = 0;
    int rv = r->stable->get_uint64(r->stable->ctx, CRAFT__KEY_CURRENT_TERM, &term);
    if (rv != 0 && rv != CRAFT_ENOTFOUND) {
        CRAFT__ERROR(&r->log, "raft", "failed to load current term: %s", craft_strerror(rv));
        return rv;
    }
    atomic_store(&r->current_term, term);
    rv = r->stable->get_uint64(r->stable->ctx, CRAFT__KEY_LAST_VOTE_TERM, &r->last_vote_term);
    if (rv != 0 && rv != CRAFT_ENOTFOUND) {
        return rv;
    }
    void *cand = NULL;
    size_t cand_len = 0;
    rv = r->stable->get(r->stable->ctx, CRAFT__KEY_LAST_VOTE_CAND, &cand, &cand_len);
    if (rv == 0) {
        r->last_vote_cand = malloc(cand_len + 1);
        if (r->last_vote_cand == NULL) {
            free(cand);
            return CRAFT_ENOMEM;
        }
        memcpy(r->last_vote_cand, cand, cand_len);
        r->last_vote_cand[cand_len] = '\0';
        free(cand);
    } else if (rv != CRAFT_ENOTFOUND) {
        return rv;
    }

    /* The newest usable snapshot first (hashicorp restoreSnapshot). */
    rv = craft__restore_on_start(r);
    if (rv != 0) {
        return rv;
    }
    uint64_t snap_index = atomic_load(&r->last_snapshot_index);
    uint64_t snap_term = atomic_load(&r->last_snapshot_term);

    uint64_t first = 0, last = 0;
    if ((rv = r->logs->first_index(r->logs->ctx, &first)) != 0 ||
        (rv = r->logs->last_index(r->logs->ctx, &last)) != 0) {
        CRAFT__ERROR(&r->log, "raft", "failed to read log indexes: %s", craft_strerror(rv));
        return rv;
    }
    uint64_t commit = 0;
    if (r->conf.restore_committed_logs) {
        if (r->logs->get_commit_index != NULL) {
            rv = r->logs->get_commit_index(r->logs->ctx, &commit);
            if (rv != 0) {
                CRAFT__ERROR(&r->log, "raft", "failed to read commit index: %s",
                             craft_strerror(rv));
                return rv;
            }
        } else {
            CRAFT__INFO(&r->log, "raft", "log store does not track the commit index: "
                        "committed entries are applied once a leader is heard");
        }
    }
    if (commit > last) {
        commit = last;
    }
    /* Scan the log for configurations (hashicorp does the same at start). */
    uint64_t last_term = 0;
    for (uint64_t i = first; i > 0 && i <= last; i++) {
        craft_log_t l;
        memset(&l, 0, sizeof l);
        rv = r->logs->get_log(r->logs->ctx, i, &l);
        if (rv != 0) {
            CRAFT__ERROR(&r->log, "raft", "failed to read log entry: index=%llu error=%s",
                         (unsigned long long)i, craft_strerror(rv));
            return rv == CRAFT_ENOTFOUND ? CRAFT_ECORRUPT : rv;
        }
        last_term = l.term;
        /* Entries kept behind the snapshot hold older configurations. */
        if (l.type == CRAFT_LOG_CONFIGURATION && i > r->latest_index) {
            craft_configuration_t c;
            rv = craft__configuration_decode(l.data, l.len, &c);
            if (rv != 0) {
                CRAFT__ERROR(&r->log, "raft", "corrupt configuration entry: index=%llu", (unsigned long long)i);
                craft_log_release(&l);
                return rv;
            }
            craft_configuration_free(&r->latest);
            r->latest = c;
            r->latest_index = i;
            if (i <= commit || i <= snap_index) {
                craft_configuration_free(&r->committed);
                rv = craft_configuration_copy(&r->committed, &c);
                r->committed_index = i;
                if (rv != 0) {
                    craft_log_release(&l);
                    return rv;
                }
            }
        }
        craft_log_release(&l);
    }
    if (last < snap_index) {
        last = snap_index;
        last_term = snap_term;
    }
    craft__set_last_log(r, last, last_term);
    craft__publish_configuration(r);
    craft__publish_committed(r);
    /* Everything in the snapshot is committed and already in the FSM. */
    atomic_store(&r->commit_index, snap_index);
    if (commit > 0) {
        CRAFT__INFO(&r->log, "raft", "replaying committed logs: commit=%llu",
                    (unsigned long long)commit);
        craft__commit_to(r, commit);
    }
    return 0;
}

static void free_node(craft_t *r)
{
    craft__observers_free(r);
    craft__mutex_destroy(&r->obs_mu);
    craft_configuration_free(&r->latest);
    craft_configuration_free(&r->committed);
    craft_configuration_free(&r->latest_copy);
    craft_configuration_free(&r->committed_copy);
    craft__mailbox_destroy(&r->snapshot_mb);
    craft__window_destroy(&r->window);
    craft__mailbox_destroy(&r->run_mb);
    craft__mailbox_destroy(&r->fsm_mb);
    craft__fsm_free(r);
    craft__mutex_destroy(&r->fsm_mu);
    craft__mutex_destroy(&r->mu);
    craft__mutex_destroy(&r->commit_mu);
    craft__mutex_destroy(&r->run_token);
    craft__mutex_destroy(&r->shutdown_mu);
    free(r->leader_id);
    free(r->leader_addr);
    free(r->last_vote_cand);
    free(r->local_id);
    free(r->local_addr);
    free(r);
}

int craft_new(craft_t **out, const craft_config_t *config, craft_fsm_t *fsm,
              craft_log_store_t *logs, craft_stable_store_t *stable,
              craft_snapshot_store_t *snaps, craft_transport_t *trans)
{
    if (out == NULL) {
        return CRAFT_EINVAL;
    }
    *out = NULL;
    int rv = craft_config_validate(config, NULL);
    if (rv != 0) {
        return rv;
    }
    const char *why;
    if (!vtables_ok(fsm, logs, stable, trans, &why)) {
        craft__logger_t l;
        craft__logger_init(&l, config, config->local_id);
        CRAFT__ERROR(&l, "raft", "invalid argument: %s", why);
        return CRAFT_EINVAL;
    }
    craft_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return CRAFT_ENOMEM;
    }
    r->conf = *config;
    r->local_id = strdup(config->local_id);
    const char *addr = trans->local_addr(trans->ctx);
    r->local_addr = strdup(addr != NULL ? addr : "");
    r->conf.local_id = r->local_id;
    craft__logger_init(&r->log, &r->conf, r->local_id);
    r->fsm = fsm;
    r->logs = logs;
    r->stable = stable;
    r->snaps = snaps;
    r->trans = trans;
    craft__mutex_init(&r->mu);
    craft__mutex_init(&r->commit_mu);
    craft__mutex_init(&r->fsm_mu);
    craft__mutex_init(&r->run_token);
    craft__queue_init(&r->commit_futures);
    craft__mutex_init(&r->shutdown_mu);
    craft__mailbox_init(&r->run_mb);
    craft__mailbox_init(&r->fsm_mb);
    craft__mailbox_init(&r->snapshot_mb);
    craft__window_init(&r->window);
    craft__queue_init(&r->vote_threads);
    craft__queue_init(&r->shutdown_futures);
    atomic_init(&r->state, CRAFT_FOLLOWER);
    r->commit_msg.type = CRAFT__RUN_COMMIT;
    r->step_down_msg.type = CRAFT__RUN_STEP_DOWN;
    r->verify_ack_msg.type = CRAFT__RUN_VERIFY_ACK;
    r->shutdown_msg.type = CRAFT__RUN_SHUTDOWN;
    r->reload_msg.type = CRAFT__RUN_RELOAD;
    atomic_init(&r->snapshot_cap, 0);
    atomic_init(&r->snapshot_kick_posted, false);
    atomic_init(&r->ht_ms, config->heartbeat_timeout_ms);
    atomic_init(&r->et_ms, config->election_timeout_ms);
    atomic_init(&r->snapshot_interval_ms, config->snapshot_interval_ms);
    atomic_init(&r->trailing_logs, config->trailing_logs);
    atomic_init(&r->snapshot_threshold, config->snapshot_threshold);
    craft__mutex_init(&r->obs_mu);
    craft__queue_init(&r->observers);
    if (r->local_id == NULL || r->local_addr == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_alloc;
    }
    rv = load_state(r);
    if (rv != 0) {
        goto err_after_alloc;
    }
    rv = craft__fsm_init(r);
    if (rv != 0) {
        goto err_after_alloc;
    }
    if (craft__thread_start(&r->fsm_thread, "craft-fsm", craft__fsm_main, r) != 0) {
        rv = CRAFT_ENOMEM;
        goto err_after_alloc;
    }
    /* From here commits may be applied inline (not by load_state above:
     * the fsm state starts from what it restored). */
    atomic_store(&r->apply_inline, r->conf.apply_inline);
    /* Logged before any thread can change the configuration. */
    CRAFT__INFO(&r->log, "raft", "initial configuration: index=%llu servers=%zu "
                "last-index=%llu term=%llu",
                (unsigned long long)r->latest_index, r->latest.n,
                (unsigned long long)atomic_load(&r->last_log_index),
                (unsigned long long)atomic_load(&r->current_term));
    if (snaps != NULL) {
        if (craft__thread_start(&r->snapshot_thread, "craft-snapshot", craft__snapshot_main,
                                r) != 0) {
            craft__mailbox_close(&r->fsm_mb);
            craft__thread_join(&r->fsm_thread);
            rv = CRAFT_ENOMEM;
            goto err_after_alloc;
        }
        r->snapshot_thread_started = true;
    }
    if (craft__thread_start(&r->run_thread, "craft-run", craft__run_main, r) != 0) {
        atomic_store(&r->shutting_down, true);
        craft__mailbox_close(&r->snapshot_mb);
        craft__mailbox_close(&r->fsm_mb);
        craft__thread_join(&r->fsm_thread);
        if (r->snapshot_thread_started) {
            craft__thread_join(&r->snapshot_thread);
        }
        rv = CRAFT_ENOMEM;
        goto err_after_alloc;
    }
    r->threads_started = true;
    trans->set_rpc_handler(trans->ctx, craft__rpc_handler, r);
    if (trans->set_heartbeat_handler != NULL) {
        trans->set_heartbeat_handler(trans->ctx, craft__heartbeat_handler, r);
    }
    *out = r;
    return 0;

err_after_alloc:
    /* fsm commits queued by load_state are dropped with the mailbox. */
    {
        craft__msg_t *m;
        craft__mailbox_close(&r->fsm_mb);
        while ((m = craft__mailbox_wait(&r->fsm_mb, 0)) != NULL) {
            free(m);
        }
    }
    free_node(r);
    return rv;
}

craft_future_t *craft_shutdown(craft_t *r)
{
    if (r == NULL) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    craft_future_t *f = craft__future_new(CRAFT__FUT_SHUTDOWN);
    if (f == NULL) {
        return NULL;
    }
    bool first = !atomic_exchange(&r->shutting_down, true);
    if (first) {
        CRAFT__INFO(&r->log, "raft", "shutting down");
        craft__mailbox_post(&r->run_mb, &r->shutdown_msg);
    }
    craft__mutex_lock(&r->shutdown_mu);
    bool finished = r->finished;
    if (!finished) {
        craft__queue_push(&r->shutdown_futures, &f->link);
    }
    craft__mutex_unlock(&r->shutdown_mu);
    if (finished) {
        craft__future_complete(f, 0);
    }
    return f;
}

void craft_free(craft_t *r)
{
    if (r == NULL) {
        return;
    }
    craft_future_t *f = craft_shutdown(r);
    if (f != NULL) {
        craft_future_wait(f);
        craft_future_free(f);
    }
    if (r->threads_started) {
        craft__thread_join(&r->run_thread);
    }
    free_node(r);
}

/* Queues a future to the run thread (leader operations). */
static craft_future_t *submit_future(craft_t *r, craft_future_t *f, int type,
                                     int64_t timeout_ms)
{
    f->msg.type = type;
    if (type == CRAFT__RUN_APPLY || type == CRAFT__RUN_VERIFY ||
        type == CRAFT__RUN_READ_INDEX) {
        f->spin_ns = CRAFT__US(r->conf.wait_spin_us);
    }
    if (timeout_ms > 0) {
        const int64_t max_ms = (int64_t)365 * 24 * 3600 * 1000;
        f->deadline_ns = f->enqueued_ns + CRAFT__MS(timeout_ms < max_ms ? timeout_ms : max_ms);
    }
    if (atomic_load(&r->shutting_down)) {
        craft__future_complete(f, CRAFT_ESHUTDOWN);
    } else if (atomic_load(&r->state) != CRAFT_LEADER) {
        craft__future_complete(f, CRAFT_ENOTLEADER);
    } else if (type == CRAFT__RUN_APPLY &&
               craft__leader_apply_inline(r, f)) {
        /* handled on this thread: a hand-off less */
    } else if (craft__mailbox_post(&r->run_mb, &f->msg) != 0) {
        craft__future_complete(f, CRAFT_ESHUTDOWN);
    }
    return f;
}

static craft_future_t *submit(craft_t *r, craft__future_kind_t kind, int type,
                              craft__entry_t *entry, int64_t timeout_ms)
{
    craft_future_t *f = craft__future_new(kind);
    if (f == NULL) {
        craft__entry_unref(entry);
        return NULL;
    }
    f->entry = entry;
    return submit_future(r, f, type, timeout_ms);
}

craft_future_t *craft_apply_ext(craft_t *r, const void *data, size_t len, const void *ext,
                                size_t ext_len, int64_t timeout_ms)
{
    if (r == NULL || (data == NULL && len > 0) || (ext == NULL && ext_len > 0)) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    craft__entry_t *e = craft__entry_new(CRAFT_LOG_COMMAND, data, len, ext, ext_len);
    if (e == NULL) {
        return craft__future_failed(CRAFT_ENOMEM);
    }
    return submit(r, CRAFT__FUT_APPLY, CRAFT__RUN_APPLY, e, timeout_ms);
}

craft_future_t *craft_apply(craft_t *r, const void *data, size_t len, int64_t timeout_ms)
{
    return craft_apply_ext(r, data, len, NULL, 0, timeout_ms);
}

craft_future_t *craft_barrier(craft_t *r, int64_t timeout_ms)
{
    if (r == NULL) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    craft__entry_t *e = craft__entry_new(CRAFT_LOG_BARRIER, NULL, 0, NULL, 0);
    if (e == NULL) {
        return craft__future_failed(CRAFT_ENOMEM);
    }
    return submit(r, CRAFT__FUT_APPLY, CRAFT__RUN_APPLY, e, timeout_ms);
}

craft_future_t *craft_verify_leader(craft_t *r)
{
    if (r == NULL) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    return submit(r, CRAFT__FUT_VERIFY, CRAFT__RUN_VERIFY, NULL, 0);
}

craft_future_t *craft_get_configuration(craft_t *r)
{
    if (r == NULL) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    craft_future_t *f = craft__future_new(CRAFT__FUT_CONFIG);
    if (f == NULL) {
        return NULL;
    }
    craft__mutex_lock(&r->mu);
    int rv = craft_configuration_copy(&f->configuration, &r->latest_copy);
    f->index = r->latest_copy_index;
    craft__mutex_unlock(&r->mu);
    f->has_configuration = rv == 0;
    craft__future_complete(f, rv);
    return f;
}

craft_state_t craft_state(craft_t *r)
{
    return r != NULL ? (craft_state_t)atomic_load(&r->state) : CRAFT_SHUTDOWN;
}

int craft_leader(craft_t *r, char **id, char **address)
{
    if (id != NULL) {
        *id = NULL;
    }
    if (address != NULL) {
        *address = NULL;
    }
    if (r == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = CRAFT_ENOTFOUND;
    craft__mutex_lock(&r->mu);
    if (r->leader_addr != NULL) {
        rv = 0;
        if (id != NULL && r->leader_id != NULL) {
            *id = strdup(r->leader_id);
        }
        if (address != NULL) {
            *address = strdup(r->leader_addr);
            if (*address == NULL) {
                rv = CRAFT_ENOMEM;
            }
        }
    }
    craft__mutex_unlock(&r->mu);
    return rv;
}

int64_t craft_last_contact_ns(craft_t *r)
{
    return r != NULL ? atomic_load(&r->last_contact_ns) : 0;
}

uint64_t craft_last_index(craft_t *r)
{
    if (r == NULL) {
        return 0;
    }
    uint64_t l = atomic_load(&r->last_log_index);
    uint64_t s = atomic_load(&r->last_snapshot_index);
    return l > s ? l : s;
}

uint64_t craft_commit_index(craft_t *r)
{
    return r != NULL ? atomic_load(&r->commit_index) : 0;
}

uint64_t craft_applied_index(craft_t *r)
{
    return r != NULL ? atomic_load(&r->applied_index) : 0;
}

uint64_t craft_current_term(craft_t *r)
{
    return r != NULL ? atomic_load(&r->current_term) : 0;
}

void craft_stats(craft_t *r, craft_stats_t *out)
{
    if (out == NULL) {
        return;
    }
    memset(out, 0, sizeof *out);
    if (r == NULL) {
        return;
    }
    out->state = craft_state(r);
    out->term = atomic_load(&r->current_term);
    out->last_log_index = atomic_load(&r->last_log_index);
    out->last_log_term = atomic_load(&r->last_log_term);
    out->commit_index = atomic_load(&r->commit_index);
    out->applied_index = atomic_load(&r->applied_index);
    out->fsm_pending =
        out->commit_index > out->applied_index ? out->commit_index - out->applied_index : 0;
    out->last_snapshot_index = atomic_load(&r->last_snapshot_index);
    out->last_snapshot_term = atomic_load(&r->last_snapshot_term);
    out->last_contact_ns = atomic_load(&r->last_contact_ns);
    craft__mutex_lock(&r->mu);
    out->latest_configuration_index = r->latest_copy_index;
    for (size_t i = 0; i < r->latest_copy.n; i++) {
        if (strcmp(r->latest_copy.servers[i].id, r->local_id) != 0) {
            out->num_peers++;
        }
    }
    for (size_t i = 0; i < r->leader.n_repls && i < CRAFT_STATS_MAX_PEERS; i++) {
        craft__repl_t *p = r->leader.repls[i];
        craft_peer_stats_t *ps = &out->peers[out->n_peers++];
        snprintf(ps->id, sizeof ps->id, "%s", p->id);
        ps->voter = atomic_load(&p->voter);
        ps->match_index = atomic_load(&p->match_index);
        ps->next_index = atomic_load(&p->next_index);
        ps->last_contact_ns = atomic_load(&p->last_contact_ns);
        ps->rtt_us_last = atomic_load(&p->st_rtt_us);
        ps->append_rpcs = atomic_load(&p->st_rpcs);
        ps->append_failures = atomic_load(&p->st_failures);
        ps->pipelining = atomic_load(&p->pipelining);
    }
    craft__mutex_unlock(&r->mu);
    out->applies = atomic_load(&r->st_applies);
    out->commits = atomic_load(&r->st_commits);
    out->elections = atomic_load(&r->st_elections);
    out->prevotes = atomic_load(&r->st_prevotes);
    out->fsm_applied = atomic_load(&r->st_fsm_applied);
    out->rpcs_received = atomic_load(&r->st_rpcs);
    out->commit_time_us_sum = atomic_load(&r->st_commit_us);
    out->commit_time_count = atomic_load(&r->st_commit_n);
    out->fsm_apply_time_us_sum = atomic_load(&r->st_fsm_us);
    out->fsm_apply_batches = atomic_load(&r->st_fsm_batches);
    out->fsm_inline_batches = atomic_load(&r->st_fsm_inline_batches);
    out->store_time_us_sum = atomic_load(&r->st_store_us);
    out->store_calls = atomic_load(&r->st_store_n);
}

static craft_future_t *membership(craft_t *r, int op, const char *id, const char *address,
                                  uint64_t prev_index, int64_t timeout_ms)
{
    bool needs_addr = op == CRAFT__OP_ADD_VOTER || op == CRAFT__OP_ADD_NONVOTER;
    if (r == NULL || id == NULL || id[0] == '\0' ||
        (needs_addr && (address == NULL || address[0] == '\0'))) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    craft_future_t *f = craft__future_new(CRAFT__FUT_MEMBERSHIP);
    if (f == NULL) {
        return NULL;
    }
    f->op = op;
    f->srv_id = strdup(id);
    f->srv_addr = needs_addr ? strdup(address) : NULL;
    f->prev_index = prev_index;
    if (f->srv_id == NULL || (needs_addr && f->srv_addr == NULL)) {
        craft__future_complete(f, CRAFT_ENOMEM);
        return f;
    }
    return submit_future(r, f, CRAFT__RUN_CONFIG_CHANGE, timeout_ms);
}

craft_future_t *craft_add_voter(craft_t *r, const char *id, const char *address,
                                uint64_t prev_index, int64_t timeout_ms)
{
    return membership(r, CRAFT__OP_ADD_VOTER, id, address, prev_index, timeout_ms);
}

craft_future_t *craft_add_nonvoter(craft_t *r, const char *id, const char *address,
                                   uint64_t prev_index, int64_t timeout_ms)
{
    return membership(r, CRAFT__OP_ADD_NONVOTER, id, address, prev_index, timeout_ms);
}

craft_future_t *craft_remove_server(craft_t *r, const char *id, uint64_t prev_index,
                                    int64_t timeout_ms)
{
    return membership(r, CRAFT__OP_REMOVE, id, NULL, prev_index, timeout_ms);
}

craft_future_t *craft_demote_voter(craft_t *r, const char *id, uint64_t prev_index,
                                   int64_t timeout_ms)
{
    return membership(r, CRAFT__OP_DEMOTE, id, NULL, prev_index, timeout_ms);
}

craft_future_t *craft_leadership_transfer_to(craft_t *r, const char *id, const char *address)
{
    if (r == NULL || (id != NULL && id[0] == '\0')) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    craft_future_t *f = craft__future_new(CRAFT__FUT_TRANSFER);
    if (f == NULL) {
        return NULL;
    }
    f->srv_id = id != NULL ? strdup(id) : NULL;
    f->srv_addr = address != NULL ? strdup(address) : NULL;
    if ((id != NULL && f->srv_id == NULL) || (address != NULL && f->srv_addr == NULL)) {
        craft__future_complete(f, CRAFT_ENOMEM);
        return f;
    }
    return submit_future(r, f, CRAFT__RUN_TRANSFER, 0);
}

craft_future_t *craft_leadership_transfer(craft_t *r)
{
    return craft_leadership_transfer_to(r, NULL, NULL);
}

craft_future_t *craft_read_index(craft_t *r)
{
    if (r == NULL) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    craft_future_t *f = craft__future_new(CRAFT__FUT_READ_INDEX);
    if (f == NULL) {
        return NULL;
    }
    return submit_future(r, f, CRAFT__RUN_READ_INDEX, 0);
}

static const char *check_reload(const craft_config_t *base, const craft_reloadable_config_t *rc)
{
    craft_config_t c = *base;
    c.trailing_logs = rc->trailing_logs;
    c.snapshot_interval_ms = rc->snapshot_interval_ms;
    c.snapshot_threshold = rc->snapshot_threshold;
    c.heartbeat_timeout_ms = rc->heartbeat_timeout_ms;
    c.election_timeout_ms = rc->election_timeout_ms;
    const char *why = NULL;
    if (craft_config_validate(&c, &why) != 0) {
        return why;
    }
    return NULL;
}

int craft_reload_config(craft_t *r, const craft_reloadable_config_t *rc)
{
    if (r == NULL || rc == NULL) {
        return CRAFT_EINVAL;
    }
    const char *why = check_reload(&r->conf, rc);
    if (why != NULL) {
        CRAFT__ERROR(&r->log, "raft", "refusing to reload config: %s", why);
        return CRAFT_EINVAL;
    }
    atomic_store(&r->trailing_logs, rc->trailing_logs);
    atomic_store(&r->snapshot_interval_ms, rc->snapshot_interval_ms);
    atomic_store(&r->snapshot_threshold, rc->snapshot_threshold);
    atomic_store(&r->ht_ms, rc->heartbeat_timeout_ms);
    atomic_store(&r->et_ms, rc->election_timeout_ms);
    /* Wake the run thread so running timers are recomputed. */
    craft__signal(r, &r->reload_msg, &r->reload_posted);
    return 0;
}

void craft_reloadable_config(craft_t *r, craft_reloadable_config_t *out)
{
    if (r == NULL || out == NULL) {
        return;
    }
    out->trailing_logs = atomic_load(&r->trailing_logs);
    out->snapshot_interval_ms = atomic_load(&r->snapshot_interval_ms);
    out->snapshot_threshold = atomic_load(&r->snapshot_threshold);
    out->heartbeat_timeout_ms = atomic_load(&r->ht_ms);
    out->election_timeout_ms = atomic_load(&r->et_ms);
}

craft_future_t *craft_snapshot(craft_t *r)
{
    if (r == NULL) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    if (r->snaps == NULL) {
        return craft__future_failed(CRAFT_ENOTSUP);
    }
    craft_future_t *f = craft__future_new(CRAFT__FUT_SNAPSHOT);
    if (f == NULL) {
        return NULL;
    }
    if (atomic_load(&r->shutting_down) || craft__mailbox_post(&r->snapshot_mb, &f->msg) != 0) {
        craft__future_complete(f, CRAFT_ESHUTDOWN);
    }
    return f;
}

int craft_future_snapshot_open(craft_future_t *f, craft_snapshot_meta_t **meta,
                               craft_reader_t **reader)
{
    if (f == NULL || meta == NULL || reader == NULL || f->kind != CRAFT__FUT_SNAPSHOT) {
        return CRAFT_EINVAL;
    }
    int rv = craft_future_wait(f);
    if (rv != 0) {
        return rv;
    }
    if (f->snaps == NULL || f->srv_id == NULL) {
        return CRAFT_ENOTFOUND;
    }
    return f->snaps->open(f->snaps->ctx, f->srv_id, meta, reader);
}

craft_future_t *craft_restore(craft_t *r, const craft_snapshot_meta_t *meta,
                              craft_reader_t *reader, int64_t timeout_ms)
{
    if (r == NULL || meta == NULL || reader == NULL || reader->read == NULL) {
        return craft__future_failed(CRAFT_EINVAL);
    }
    if (r->snaps == NULL) {
        return craft__future_failed(CRAFT_ENOTSUP);
    }
    craft_future_t *f = craft__future_new(CRAFT__FUT_RESTORE);
    if (f == NULL) {
        return NULL;
    }
    f->reader = reader;
    f->restore_size = meta->size;
    f->restore_index = meta->index;
    return submit_future(r, f, CRAFT__RUN_RESTORE, timeout_ms);
}
