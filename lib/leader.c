/*
 * Leader role (hashicorp raft.go runLeader / leaderLoop / dispatchLogs,
 * plus checkLeaderLease and verifyLeader). The write path is the one of
 * Raft thesis §10.2.1: entries go to the replication threads (through the
 * in-memory window) and to the LogStore at the same time; our own match
 * index counts only once the write returned.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/codec.h"
#include "lib/configuration.h"
#include "lib/raft.h"
#include "lib/replication.h"

static craft__leader_t *L(craft_t *r)
{
    return &r->leader;
}

static craft__repl_t *find_repl(craft_t *r, const char *id)
{
    for (size_t i = 0; i < L(r)->n_repls; i++) {
        if (strcmp(L(r)->repls[i]->id, id) == 0) {
            return L(r)->repls[i];
        }
    }
    return NULL;
}

static void stop_repl_at(craft_t *r, size_t i)
{
    craft__repl_t *p = L(r)->repls[i];
    craft__repl_stop(p);
    r->repls_stopping++;
    /* The array is read by craft_stats under mu. */
    craft__mutex_lock(&r->mu);
    memmove(&L(r)->repls[i], &L(r)->repls[i + 1],
            (L(r)->n_repls - i - 1) * sizeof L(r)->repls[0]);
    L(r)->n_repls--;
    craft__mutex_unlock(&r->mu);
}

/* Starts and stops replication so that every other server of the latest
 * configuration has exactly one replicator (hashicorp startStopReplication). */
static void start_stop_replication(craft_t *r)
{
    uint64_t next = atomic_load(&r->last_log_index) + 1;
    for (size_t i = 0; i < r->latest.n; i++) {
        const craft_server_t *s = &r->latest.servers[i];
        if (strcmp(s->id, r->local_id) == 0) {
            continue;
        }
        craft__repl_t *p = find_repl(r, s->id);
        if (p != NULL) {
            atomic_store(&p->voter, s->suffrage == CRAFT_VOTER);
            continue;
        }
        craft__mutex_lock(&r->mu);
        craft__repl_t **repls = realloc(L(r)->repls, (L(r)->n_repls + 1) * sizeof *repls);
        if (repls != NULL) {
            L(r)->repls = repls;
        }
        craft__mutex_unlock(&r->mu);
        if (repls == NULL) {
            CRAFT__ERROR(&r->log, "raft", "out of memory starting replication to %s", s->id);
            continue;
        }
        p = craft__repl_start(r, s, atomic_load(&r->current_term), L(r)->commitment, next);
        if (p == NULL) {
            continue;
        }
        CRAFT__INFO(&r->log, "raft", "added peer, starting replication: peer=%s", s->id);
        craft_observation_t o = {.kind = CRAFT_OBSERVE_PEER, .peer = *s};
        craft__observe(r, &o);
        craft__mutex_lock(&r->mu);
        L(r)->repls[L(r)->n_repls++] = p;
        craft__mutex_unlock(&r->mu);
    }
    for (size_t i = 0; i < L(r)->n_repls;) {
        if (craft__configuration_find(&r->latest, L(r)->repls[i]->id) < 0) {
            CRAFT__INFO(&r->log, "raft", "removed peer, stopping replication: peer=%s",
                        L(r)->repls[i]->id);
            craft_observation_t o = {.kind = CRAFT_OBSERVE_PEER, .peer_removed = true};
            o.peer.id = L(r)->repls[i]->id;
            o.peer.address = L(r)->repls[i]->addr;
            o.peer.suffrage = atomic_load(&L(r)->repls[i]->voter) ? CRAFT_VOTER : CRAFT_NONVOTER;
            craft__observe(r, &o);
            stop_repl_at(r, i);
        } else {
            i++;
        }
    }
}

void craft__leader_configuration_changed(craft_t *r)
{
    if (L(r)->commitment == NULL) {
        return;
    }
    bool advanced = false;
    craft__commitment_set_configuration(L(r)->commitment, &r->latest, &advanced);
    if (advanced) {
        craft__signal(r, &r->commit_msg, &r->commit_posted);
    }
    start_stop_replication(r);
}

/* Assigns indexes to `n` futures' entries and writes them: window and
 * replicators first, then the LogStore (parallel leader write). */
static void dispatch(craft_t *r, craft_future_t **fs, size_t n)
{
    uint64_t term = atomic_load(&r->current_term);
    uint64_t index = atomic_load(&r->last_log_index);
    uint64_t prev_term = atomic_load(&r->last_log_term);
    int64_t now = craft__wall_ns();
    craft__queue_t appended;
    craft__queue_init(&appended);
    craft_log_t *logs = malloc(n * sizeof *logs);
    if (logs == NULL) {
        for (size_t i = 0; i < n; i++) {
            craft__fail_future(fs[i], CRAFT_ENOMEM);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        craft__entry_t *e = fs[i]->entry;
        e->log.index = ++index;
        e->log.term = term;
        e->log.appended_at_ns = now;
        fs[i]->index = index;
        logs[i] = e->log;
        if (craft__window_append(&r->window, e) != 0) {
            craft__window_clear(&r->window);
        }
        craft__queue_push(&appended, &fs[i]->link);
        if (e->log.type == CRAFT_LOG_COMMAND) {
            atomic_fetch_add(&r->st_applies, 1);
        } else if (e->log.type == CRAFT_LOG_CONFIGURATION) {
            /* Takes effect on append: new voters count from this entry on. */
            craft__configuration_appended(r, &fs[i]->configuration, index);
        }
    }
    /* Before anyone can commit them (commit waits for our own write). */
    craft__mutex_lock(&r->commit_mu);
    craft__queue_move(&appended, &r->commit_futures);
    craft__mutex_unlock(&r->commit_mu);
    craft__set_last_log(r, index, term);
    for (size_t i = 0; i < L(r)->n_repls; i++) {
        craft__repl_replicate(L(r)->repls[i]);
    }
    craft__stage_commit(r); /* commits made by the replication side */
    int64_t t0 = craft__now_ns();
    int rv = r->logs->store_logs(r->logs->ctx, logs, n);
    int64_t took = craft__now_ns() - t0;
    int64_t avg = atomic_load_explicit(&r->store_avg_ns, memory_order_relaxed);
    atomic_store_explicit(&r->store_avg_ns, avg + (took - avg) / 8, memory_order_relaxed);
    atomic_fetch_add(&r->st_store_us, (uint64_t)took / 1000);
    atomic_fetch_add(&r->st_store_n, 1);
    free(logs);
    if (rv != 0) {
        /* We cannot claim these entries: forget them locally and step down;
         * the futures learn that leadership was lost (the entries may still
         * commit through the peers that received them). */
        CRAFT__ERROR(&r->log, "raft", "failed to commit logs: error=%s", craft_strerror(rv));
        uint64_t first = index - n + 1;
        craft__window_truncate_from(&r->window, first);
        r->logs->delete_range(r->logs->ctx, first, index);
        craft__set_last_log(r, first - 1, prev_term);
        craft__set_state(r, CRAFT_FOLLOWER);
        return;
    }
    atomic_store(&r->own_stored_index, index);
    if (craft__commitment_match(L(r)->commitment, r->local_id, index)) {
        craft__signal(r, &r->commit_msg, &r->commit_posted);
    } else if (craft__commit_fast(r, term, L(r)->commitment)) {
        /* Peers acknowledged before our own write returned. */
        craft__signal(r, &r->commit_msg, &r->commit_posted);
    }
}

/* Fails the apply futures above the commit index (not committed). */
static void fail_uncommitted(craft_t *r, int err)
{
    craft__fail_commit_futures(r, atomic_load(&r->commit_index), true, err);
}

/* Moves pending applies into the log, respecting max_uncommitted. */
static void flush_pending(craft_t *r)
{
    size_t max = (size_t)r->conf.max_append_entries;
    craft_future_t **batch = malloc(max * sizeof *batch);
    if (batch == NULL) {
        return;
    }
    while (!craft__queue_empty(&L(r)->pending) && atomic_load(&r->state) == CRAFT_LEADER) {
        uint64_t uncommitted =
            atomic_load(&r->last_log_index) - atomic_load(&r->commit_index);
        if (r->conf.max_uncommitted > 0 && uncommitted >= r->conf.max_uncommitted) {
            break;
        }
        size_t n = 0;
        while (n < max && !craft__queue_empty(&L(r)->pending)) {
            craft__queue_t *e = craft__queue_head(&L(r)->pending);
            craft__queue_remove(e);
            batch[n++] = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        }
        dispatch(r, batch, n);
    }
    free(batch);
}

/* Fails pending applies whose enqueue deadline passed; returns the earliest
 * remaining deadline (or `deadline`). */
static int64_t expire_queue(craft__queue_t *q, int64_t deadline)
{
    int64_t now = craft__now_ns();
    craft__queue_t *e = q->next;
    while (e != q) {
        craft_future_t *f = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        e = e->next;
        if (f->deadline_ns > 0 && now >= f->deadline_ns) {
            craft__queue_remove(&f->link);
            craft__fail_future(f, CRAFT_ETIMEDOUT);
        } else if (f->deadline_ns > 0 && f->deadline_ns < deadline) {
            deadline = f->deadline_ns;
        }
    }
    return deadline;
}

static int64_t expire_pending(craft_t *r, int64_t deadline)
{
    deadline = expire_queue(&L(r)->pending, deadline);
    deadline = expire_queue(&L(r)->config_pending, deadline);
    if (L(r)->transfer != NULL) {
        int64_t t = L(r)->transfer_sent ? L(r)->transfer_deadline_ns
                                        : craft__now_ns() + CRAFT__MS(5);
        if (t < deadline) {
            deadline = t;
        }
    }
    return deadline;
}

/* hashicorp nextConfiguration: the membership after applying `f`. */
static int next_configuration(craft_t *r, craft_future_t *f, craft_configuration_t *out)
{
    int rv = craft_configuration_copy(out, &r->latest);
    if (rv != 0) {
        return rv;
    }
    int i = craft__configuration_find(out, f->srv_id);
    switch (f->op) {
    case CRAFT__OP_ADD_VOTER:
    case CRAFT__OP_ADD_NONVOTER:
        if (i < 0) {
            rv = craft__configuration_add(out, f->srv_id, f->srv_addr,
                                          f->op == CRAFT__OP_ADD_VOTER ? CRAFT_VOTER
                                                                       : CRAFT_NONVOTER);
        } else {
            char *addr = strdup(f->srv_addr);
            if (addr == NULL) {
                rv = CRAFT_ENOMEM;
                break;
            }
            free(out->servers[i].address);
            out->servers[i].address = addr;
            if (f->op == CRAFT__OP_ADD_VOTER) {
                out->servers[i].suffrage = CRAFT_VOTER;
            }
        }
        break;
    case CRAFT__OP_DEMOTE:
        if (i >= 0) {
            out->servers[i].suffrage = CRAFT_NONVOTER;
        }
        break;
    case CRAFT__OP_REMOVE:
        if (i >= 0) {
            craft__configuration_remove_at(out, (size_t)i);
        }
        break;
    default:
        rv = CRAFT_EINVAL;
    }
    const char *why = NULL;
    if (rv == 0 && craft__configuration_check(out, &why) != 0) {
        CRAFT__WARN(&r->log, "raft", "refusing configuration change: %s", why);
        rv = CRAFT_EINVAL;
    }
    if (rv != 0) {
        craft_configuration_free(out);
    }
    return rv;
}

/* Appends the next membership change once allowed: no uncommitted
 * configuration, and this term's first entry committed (hashicorp only
 * reads configurationChangeCh then). */
static void flush_config_changes(craft_t *r)
{
    while (!craft__queue_empty(&L(r)->config_pending) &&
           atomic_load(&r->state) == CRAFT_LEADER) {
        craft__queue_t *e = craft__queue_head(&L(r)->config_pending);
        craft_future_t *f = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        if (L(r)->transfer != NULL) {
            craft__queue_remove(e);
            craft__fail_future(f, CRAFT_ETRANSFER);
            continue;
        }
        if (r->latest_index != r->committed_index ||
            atomic_load(&r->commit_index) < L(r)->start_index) {
            return;
        }
        craft__queue_remove(e);
        if (f->prev_index != 0 && f->prev_index != r->latest_index) {
            CRAFT__WARN(&r->log, "raft", "configuration changed since %llu (latest is %llu)",
                        (unsigned long long)f->prev_index,
                        (unsigned long long)r->latest_index);
            craft__fail_future(f, CRAFT_ECONFLICT);
            continue;
        }
        craft_configuration_t next;
        int rv = next_configuration(r, f, &next);
        if (rv != 0) {
            craft__fail_future(f, rv);
            continue;
        }
        void *buf = NULL;
        size_t len = 0;
        rv = craft__configuration_encode(&next, &buf, &len);
        if (rv == 0) {
            f->entry = craft__entry_new(CRAFT_LOG_CONFIGURATION, buf, len, NULL, 0);
            rv = f->entry == NULL ? CRAFT_ENOMEM : 0;
        }
        free(buf);
        if (rv != 0) {
            craft_configuration_free(&next);
            craft__fail_future(f, rv);
            continue;
        }
        craft_configuration_free(&f->configuration);
        f->configuration = next;
        CRAFT__INFO(&r->log, "raft", "updating configuration: op=%d server=%s", f->op, f->srv_id);
        dispatch(r, &f, 1);
    }
}

static void start_verify(craft_t *r, craft_future_t *f);

/* read_index futures wait for this term's first entry to commit. */
static void release_reads(craft_t *r)
{
    if (atomic_load(&r->commit_index) < L(r)->start_index) {
        return;
    }
    while (!craft__queue_empty(&L(r)->reads_waiting)) {
        craft__queue_t *e = craft__queue_head(&L(r)->reads_waiting);
        craft__queue_remove(e);
        craft_future_t *f = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        f->index = atomic_load(&r->commit_index);
        start_verify(r, f);
    }
}

static void finish_transfer(craft_t *r, int err)
{
    if (L(r)->transfer == NULL) {
        return;
    }
    if (err != 0) {
        CRAFT__WARN(&r->log, "raft", "leadership transfer to %s failed: %s",
                    L(r)->transfer_id ? L(r)->transfer_id : "", craft_strerror(err));
    }
    craft__fail_future(L(r)->transfer, err);
    L(r)->transfer = NULL;
    free(L(r)->transfer_id);
    L(r)->transfer_id = NULL;
    L(r)->transfer_sent = false;
}

static void start_transfer(craft_t *r, craft_future_t *f)
{
    if (L(r)->transfer != NULL) {
        craft__fail_future(f, CRAFT_ETRANSFER);
        return;
    }
    const char *target = f->srv_id;
    if (target != NULL) {
        int i = craft__configuration_find(&r->latest, target);
        if (i < 0) {
            craft__fail_future(f, CRAFT_ENOTFOUND);
            return;
        }
        if (r->latest.servers[i].suffrage != CRAFT_VOTER) {
            craft__fail_future(f, CRAFT_ENOTVOTER);
            return;
        }
        if (strcmp(target, r->local_id) == 0 ||
            (f->srv_addr != NULL && strcmp(f->srv_addr, r->latest.servers[i].address) != 0)) {
            craft__fail_future(f, CRAFT_EINVAL);
            return;
        }
    } else {
        /* The most up-to-date voter (hashicorp pickServer). */
        uint64_t best = 0;
        for (size_t i = 0; i < L(r)->n_repls; i++) {
            craft__repl_t *p = L(r)->repls[i];
            if (atomic_load(&p->voter) &&
                (target == NULL || atomic_load(&p->match_index) > best)) {
                best = atomic_load(&p->match_index);
                target = p->id;
            }
        }
        if (target == NULL) {
            craft__fail_future(f, CRAFT_ENOTFOUND);
            return;
        }
    }
    craft__repl_t *p = find_repl(r, target);
    if (p == NULL) {
        craft__fail_future(f, CRAFT_ENOTFOUND);
        return;
    }
    L(r)->transfer = f;
    L(r)->transfer_id = strdup(target);
    L(r)->transfer_sent = false;
    L(r)->transfer_deadline_ns = craft__now_ns() + CRAFT__MS(atomic_load(&r->et_ms));
    CRAFT__INFO(&r->log, "raft", "starting leadership transfer: target=%s", target);
    craft__repl_trigger(p);
}

/* Drives a transfer: once the target is caught up, TimeoutNow. */
static void check_transfer(craft_t *r)
{
    if (L(r)->transfer == NULL) {
        return;
    }
    if (craft__now_ns() >= L(r)->transfer_deadline_ns) {
        finish_transfer(r, CRAFT_ETIMEDOUT);
        return;
    }
    if (L(r)->transfer_sent) {
        return;
    }
    craft__repl_t *p = find_repl(r, L(r)->transfer_id);
    if (p == NULL) {
        finish_transfer(r, CRAFT_ENOTFOUND);
        return;
    }
    if (atomic_load(&p->match_index) >= atomic_load(&r->last_log_index)) {
        int rv = craft__send_timeout_now(r, p->id, p->addr);
        if (rv != 0) {
            finish_transfer(r, rv);
            return;
        }
        L(r)->transfer_sent = true;
        /* After TimeoutNow, the target has another election timeout. */
        L(r)->transfer_deadline_ns = craft__now_ns() + CRAFT__MS(atomic_load(&r->et_ms));
    }
}

static void process_commit(craft_t *r)
{
    /* Only a leader commits, and only what its own log holds: after a failed
     * write it dropped a batch the followers may already have acknowledged
     * (found by craft-fuzz disk_faults: those futures were lost). */
    if (atomic_load(&r->state) != CRAFT_LEADER) {
        return;
    }
    /* commit_to caps at last_log_index; the replication side may have
     * advanced commit_index already (craft__commit_fast). */
    craft__commit_to(r, craft__commitment_commit_index(L(r)->commitment));
    release_reads(r);
    /* A leader no longer in the committed configuration as a voter steps
     * down (hashicorp: removed leader). */
    if (r->committed_index > 0 && !craft__configuration_is_voter(&r->committed, r->local_id)) {
        CRAFT__INFO(&r->log, "raft", "removed ourself, %s",
                    r->conf.shutdown_on_remove ? "shutting down" : "transitioning to follower");
        if (r->conf.shutdown_on_remove) {
            atomic_store(&r->shutting_down, true);
        } else {
            craft__set_state(r, CRAFT_FOLLOWER);
        }
    }
}

static size_t quorum(craft_t *r)
{
    return craft__configuration_voters(&r->latest) / 2 + 1;
}

/* Voters (ourself included) that acknowledged epoch `epoch`. */
static size_t verify_votes(craft_t *r, uint64_t epoch)
{
    size_t votes = craft__configuration_is_voter(&r->latest, r->local_id) ? 1 : 0;
    for (size_t i = 0; i < L(r)->n_repls; i++) {
        craft__repl_t *p = L(r)->repls[i];
        if (atomic_load(&p->voter) && atomic_load(&p->acked_epoch) >= epoch) {
            votes++;
        }
    }
    return votes;
}

static void process_verify_acks(craft_t *r)
{
    craft__queue_t *e = L(r)->verifies.next;
    while (e != &L(r)->verifies) {
        craft_future_t *f = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        e = e->next;
        if (verify_votes(r, f->epoch) >= quorum(r)) {
            craft__queue_remove(&f->link);
            craft__future_complete(f, 0);
        }
    }
}

static void start_verify(craft_t *r, craft_future_t *f)
{
    f->epoch = ++L(r)->verify_epoch;
    craft__queue_push(&L(r)->verifies, &f->link);
    for (size_t i = 0; i < L(r)->n_repls; i++) {
        if (atomic_load(&L(r)->repls[i]->voter)) {
            craft__repl_heartbeat_now(L(r)->repls[i], f->epoch);
        }
    }
    process_verify_acks(r);
}

/* Leader lease / check-quorum (hashicorp checkLeaderLease): step down when
 * a voter quorum was not heard from within leader_lease_timeout. Returns the
 * next check time. */
static int64_t check_lease(craft_t *r)
{
    int64_t now = craft__now_ns();
    int64_t lease = CRAFT__MS(r->conf.leader_lease_timeout_ms);
    size_t contacted = craft__configuration_is_voter(&r->latest, r->local_id) ? 1 : 0;
    int64_t max_age = 0;
    for (size_t i = 0; i < L(r)->n_repls; i++) {
        craft__repl_t *p = L(r)->repls[i];
        if (!atomic_load(&p->voter)) {
            continue;
        }
        int64_t age = now - atomic_load(&p->last_contact_ns);
        if (age <= lease) {
            contacted++;
            if (age > max_age) {
                max_age = age;
            }
        }
    }
    if (contacted < quorum(r)) {
        CRAFT__WARN(&r->log, "raft", "failed to contact quorum of nodes, stepping down");
        craft__set_state(r, CRAFT_FOLLOWER);
        return now;
    }
    atomic_store(&r->last_contact_ns, now);
    int64_t next = lease - max_age;
    if (next < CRAFT__MS(10)) {
        next = CRAFT__MS(10);
    }
    return now + next;
}

static void handle_apply(craft_t *r, craft_future_t *f)
{
    if (f->entry == NULL) {
        craft__fail_future(f, CRAFT_EINVAL);
        return;
    }
    if (L(r)->transfer != NULL) {
        craft__fail_future(f, CRAFT_ETRANSFER);
        return;
    }
    craft__queue_push(&L(r)->pending, &f->link);
}

#define RESTORE_CHUNK (256 * 1024)

/* hashicorp restoreUserSnapshot: the external snapshot becomes a snapshot
 * at an index past the end of the log, so every follower gets it through
 * InstallSnapshot; then a no-op of this term commits it. */
void craft__leader_restore(craft_t *r, craft_future_t *f)
{
    if (L(r)->transfer != NULL) {
        craft__fail_future(f, CRAFT_ETRANSFER);
        return;
    }
    uint64_t term = atomic_load(&r->current_term);
    uint64_t index = atomic_load(&r->last_log_index);
    if (f->restore_index > index) {
        index = f->restore_index;
    }
    index++;
    craft_snapshot_sink_t *sink = NULL;
    int rv = r->snaps->create(r->snaps->ctx, 1, index, term, &r->latest, r->latest_index, &sink);
    if (rv != 0) {
        craft__fail_future(f, rv);
        return;
    }
    char *buf = malloc(RESTORE_CHUNK);
    int64_t copied = 0;
    rv = buf == NULL ? CRAFT_ENOMEM : 0;
    while (rv == 0) {
        int64_t n = f->reader->read(f->reader->ctx, buf, RESTORE_CHUNK);
        if (n <= 0) {
            rv = (int)n;
            break;
        }
        copied += n;
        rv = sink->write(sink->ctx, buf, (size_t)n);
    }
    free(buf);
    if (rv == 0 && f->restore_size >= 0 && copied != f->restore_size) {
        CRAFT__ERROR(&r->log, "raft", "restore: snapshot is %lld bytes, meta says %lld",
                     (long long)copied, (long long)f->restore_size);
        rv = CRAFT_ECORRUPT;
    }
    char *id = rv == 0 ? strdup(sink->id(sink->ctx)) : NULL;
    if (rv == 0) {
        rv = id == NULL ? CRAFT_ENOMEM : sink->close(sink->ctx);
    } else {
        sink->cancel(sink->ctx);
    }
    if (rv != 0) {
        free(id);
        craft__fail_future(f, rv);
        return;
    }
    /* Commands in flight are cut off by the restore. */
    fail_uncommitted(r, CRAFT_EABORTED);
    rv = craft__fsm_restore(r, id, index, term);
    free(id);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "raft", "failed to restore snapshot: %s", craft_strerror(rv));
        craft__fail_future(f, rv);
        /* The FSM is in an unknown state: stop leading. */
        craft__set_state(r, CRAFT_FOLLOWER);
        return;
    }
    craft__window_clear(&r->window);
    craft__mutex_lock(&r->mu);
    atomic_store(&r->last_snapshot_index, index);
    atomic_store(&r->last_snapshot_term, term);
    craft__mutex_unlock(&r->mu);
    craft__set_last_log(r, index, term);
    atomic_store(&r->own_stored_index, index);
    craft__commitment_match(L(r)->commitment, r->local_id, index);
    CRAFT__INFO(&r->log, "raft", "restored user snapshot: index=%llu", (unsigned long long)index);
    /* The future completes once a no-op after the snapshot is applied. */
    f->reader = NULL;
    f->entry = craft__entry_new(CRAFT_LOG_NOOP, NULL, 0, NULL, 0);
    if (f->entry == NULL) {
        craft__fail_future(f, CRAFT_ENOMEM);
        return;
    }
    dispatch(r, &f, 1);
}

static void leader_enter(craft_t *r)
{
    craft__leader_t *l = L(r);
    memset(l, 0, sizeof *l);
    craft__queue_init(&l->pending);
    craft__queue_init(&l->verifies);
    craft__queue_init(&l->config_pending);
    craft__queue_init(&l->reads_waiting);
    uint64_t last = atomic_load(&r->last_log_index);
    l->start_index = last + 1;
    l->commitment =
        craft__commitment_new(&r->latest, atomic_load(&r->commit_index), last + 1);
    if (l->commitment == NULL) {
        CRAFT__ERROR(&r->log, "raft", "out of memory becoming leader");
        craft__set_state(r, CRAFT_FOLLOWER);
        return;
    }
    /* Our own log counts as replicated up to where it is stored. */
    craft__commitment_match(l->commitment, r->local_id, last);
    atomic_store(&r->own_stored_index, last);
    craft__mutex_lock(&r->commit_mu);
    r->commit_term = atomic_load(&r->current_term);
    craft__mutex_unlock(&r->commit_mu);
    craft__set_leader(r, r->local_id, r->local_addr);
    atomic_store(&r->last_contact_ns, craft__now_ns());
    start_stop_replication(r);
    if (r->conf.notify_leader != NULL) {
        r->conf.notify_leader(r->conf.notify_leader_arg, true);
    }
    /* Raft §8: a no-op of the new term lets earlier entries commit. */
    craft_future_t *noop = craft__future_new(CRAFT__FUT_APPLY);
    if (noop != NULL) {
        noop->entry = craft__entry_new(CRAFT_LOG_NOOP, NULL, 0, NULL, 0);
        if (noop->entry == NULL) {
            craft__future_complete(noop, CRAFT_ENOMEM);
        } else {
            dispatch(r, &noop, 1);
        }
        craft_future_free(noop); /* nobody waits on it */
    }
    l->lease_deadline_ns = craft__now_ns() + CRAFT__MS(r->conf.leader_lease_timeout_ms);
}

static void leader_exit(craft_t *r)
{
    craft__leader_t *l = L(r);
    while (l->n_repls > 0) {
        stop_repl_at(r, l->n_repls - 1);
    }
    craft__mutex_lock(&r->mu);
    free(l->repls);
    l->repls = NULL;
    craft__mutex_unlock(&r->mu);
    int lost = atomic_load(&r->shutting_down) ? CRAFT_ESHUTDOWN : CRAFT_ELEADERSHIPLOST;
    /* No more commits from the replication side; what is committed stays
     * with the fsm thread, the rest fails. */
    craft__mutex_lock(&r->commit_mu);
    r->commit_term = 0;
    craft__mutex_unlock(&r->commit_mu);
    atomic_store(&r->commit_watch, false);
    fail_uncommitted(r, lost);
    int gone = atomic_load(&r->shutting_down) ? CRAFT_ESHUTDOWN : CRAFT_ENOTLEADER;
    craft__fail_futures(&l->pending, gone);
    craft__fail_futures(&l->verifies, lost);
    craft__fail_futures(&l->reads_waiting, lost);
    craft__fail_futures(&l->config_pending, gone);
    if (l->transfer != NULL) {
        /* Success is a newer term: someone else leads now. */
        bool newer = atomic_load(&r->current_term) > l->transfer_term;
        finish_transfer(r, newer && !atomic_load(&r->shutting_down) ? 0 : lost);
    }
    craft__commitment_unref(l->commitment);
    l->commitment = NULL;
    craft__set_leader(r, NULL, NULL);
    if (r->conf.notify_leader != NULL) {
        r->conf.notify_leader(r->conf.notify_leader_arg, false);
    }
}

/* What the leader does after handling messages: write what is pending,
 * commit, drive a transfer, trim the window. */
static void leader_tail(craft_t *r)
{
    flush_pending(r);
    flush_config_changes(r);
    /* Ask the replication side to wake us on commits only while something
     * here waits for one; set before process_commit so that no commit falls
     * between the two. */
    atomic_store(&r->commit_watch, !craft__queue_empty(&L(r)->pending) ||
                                       !craft__queue_empty(&L(r)->config_pending) ||
                                       !craft__queue_empty(&L(r)->reads_waiting) ||
                                       r->latest_index > r->committed_index ||
                                       atomic_load(&r->commit_index) < L(r)->start_index);
    process_commit(r);
    check_transfer(r);
    if (atomic_load(&r->state) == CRAFT_LEADER) {
        craft__trim_window(r);
    }
}

/* Above this average store_logs time, an apply submitted from a completion
 * callback goes to the run thread (see craft__leader_apply_inline). */
#define INLINE_STORE_MAX_NS CRAFT__US(100)

bool craft__leader_apply_inline(craft_t *r, craft_future_t *f)
{
    /* An application driving craft with completion callbacks submits its
     * next apply from the thread that completed the last one (a transport's
     * or craft's). Handled here, each apply would be its own store write on
     * that thread, one after the other: with a store that syncs (~1 ms) a
     * callback-driven application got no group commit at all, and the
     * transport thread handled no traffic meanwhile. Queued instead, the run
     * thread writes whatever arrived meanwhile as one batch. */
    if (craft__future_in_callback() &&
        atomic_load_explicit(&r->store_avg_ns, memory_order_relaxed) >= INLINE_STORE_MAX_NS) {
        return false;
    }
    if (!atomic_load(&r->run_token_live) || atomic_load(&r->state) != CRAFT_LEADER ||
        craft__mutex_trylock(&r->run_token) != 0) {
        return false;
    }
    /* Holding the token while `idle` is set means the run thread waits in
     * the leader loop: we act as it would on this one message. */
    bool ok = atomic_load(&r->run_token_live) && L(r)->idle && !atomic_load(&r->shutting_down) &&
              atomic_load(&r->state) == CRAFT_LEADER && craft__mailbox_len(&r->run_mb) == 0;
    bool wake = false;
    if (ok) {
        handle_apply(r, f);
        leader_tail(r);
        /* The run thread must look again when the role changed or when an
         * apply waits in the queue (its enqueue deadline is a timer). */
        wake = atomic_load(&r->state) != CRAFT_LEADER || atomic_load(&r->shutting_down) ||
               !craft__queue_empty(&L(r)->pending);
    }
    craft__mutex_unlock(&r->run_token);
    if (wake) {
        craft__signal(r, &r->commit_msg, &r->commit_posted);
    }
    return ok;
}

void craft__leader_loop(craft_t *r)
{
    leader_enter(r);
    while (atomic_load(&r->state) == CRAFT_LEADER && !atomic_load(&r->shutting_down)) {
        int64_t deadline = expire_pending(r, L(r)->lease_deadline_ns);
        /* While we wait, applies may be handled inline by the submitting
         * thread (craft__leader_apply_inline). */
        L(r)->idle = true;
        craft__mutex_unlock(&r->run_token);
        craft__msg_t *m = craft__mailbox_wait(&r->run_mb, deadline);
        craft__mutex_lock(&r->run_token);
        L(r)->idle = false;
        /* Handle everything queued, then write applies as one batch. */
        for (int n = 0; m != NULL;) {
            switch (m->type) {
            case CRAFT__RUN_APPLY:
                handle_apply(r, (craft_future_t *)m);
                break;
            case CRAFT__RUN_VERIFY:
                start_verify(r, (craft_future_t *)m);
                break;
            case CRAFT__RUN_COMMIT:
                atomic_store(&r->commit_posted, false);
                process_commit(r);
                break;
            case CRAFT__RUN_VERIFY_ACK:
                atomic_store(&r->verify_ack_posted, false);
                process_verify_acks(r);
                break;
            case CRAFT__RUN_CONFIG_CHANGE:
                craft__queue_push(&L(r)->config_pending, &((craft_future_t *)m)->link);
                break;
            case CRAFT__RUN_RESTORE:
                craft__leader_restore(r, (craft_future_t *)m);
                break;
            case CRAFT__RUN_READ_INDEX:
                craft__queue_push(&L(r)->reads_waiting, &((craft_future_t *)m)->link);
                release_reads(r);
                break;
            case CRAFT__RUN_TRANSFER:
                start_transfer(r, (craft_future_t *)m);
                if (L(r)->transfer != NULL) {
                    L(r)->transfer_term = atomic_load(&r->current_term);
                }
                break;
            case CRAFT__RUN_TIMEOUT_NOW: {
                craft__vote_msg_t *v = (craft__vote_msg_t *)m;
                if (v->err != 0 && L(r)->transfer != NULL && L(r)->transfer_sent) {
                    finish_transfer(r, v->err);
                }
                free(v->id);
                free(v);
                break;
            }
            default:
                craft__handle_common(r, m);
                break;
            }
            if (atomic_load(&r->state) != CRAFT_LEADER || atomic_load(&r->shutting_down) ||
                ++n >= 1024) {
                break;
            }
            m = craft__mailbox_wait(&r->run_mb, 0);
        }
        if (atomic_load(&r->state) != CRAFT_LEADER || atomic_load(&r->shutting_down)) {
            break;
        }
        leader_tail(r);
        if (atomic_load(&r->state) != CRAFT_LEADER) {
            break;
        }
        if (craft__now_ns() >= L(r)->lease_deadline_ns) {
            L(r)->lease_deadline_ns = check_lease(r);
        }
        craft__reap_vote_threads(r, false);
    }
    leader_exit(r);
}
