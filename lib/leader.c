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
        craft__mutex_lock(&r->mu);
        L(r)->repls[L(r)->n_repls++] = p;
        craft__mutex_unlock(&r->mu);
    }
    for (size_t i = 0; i < L(r)->n_repls;) {
        if (craft__configuration_find(&r->latest, L(r)->repls[i]->id) < 0) {
            CRAFT__INFO(&r->log, "raft", "removed peer, stopping replication: peer=%s",
                        L(r)->repls[i]->id);
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

static void fail_queue(craft__queue_t *q, int err)
{
    while (!craft__queue_empty(q)) {
        craft__queue_t *e = craft__queue_head(q);
        craft__queue_remove(e);
        craft__fail_future(CRAFT__QUEUE_DATA(e, craft_future_t, link), err);
    }
}

/* Assigns indexes to `n` futures' entries and writes them: window and
 * replicators first, then the LogStore (parallel leader write). */
static void dispatch(craft_t *r, craft_future_t **fs, size_t n)
{
    uint64_t term = atomic_load(&r->current_term);
    uint64_t index = atomic_load(&r->last_log_index);
    uint64_t prev_term = atomic_load(&r->last_log_term);
    int64_t now = craft__wall_ns();
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
        craft__queue_push(&L(r)->inflight, &fs[i]->link);
        if (e->log.type == CRAFT_LOG_COMMAND) {
            atomic_fetch_add(&r->st_applies, 1);
        }
    }
    craft__set_last_log(r, index, term);
    for (size_t i = 0; i < L(r)->n_repls; i++) {
        craft__repl_trigger(L(r)->repls[i]);
    }
    int64_t t0 = craft__now_ns();
    int rv = r->logs->store_logs(r->logs->ctx, logs, n);
    atomic_fetch_add(&r->st_store_us, (uint64_t)(craft__now_ns() - t0) / 1000);
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
    L(r)->stored_index = index;
    if (craft__commitment_match(L(r)->commitment, r->local_id, index)) {
        craft__signal(r, &r->commit_msg, &r->commit_posted);
    }
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
static int64_t expire_pending(craft_t *r, int64_t deadline)
{
    int64_t now = craft__now_ns();
    craft__queue_t *e = L(r)->pending.next;
    while (e != &L(r)->pending) {
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

static void process_commit(craft_t *r)
{
    uint64_t commit = craft__commitment_commit_index(L(r)->commitment);
    if (commit <= atomic_load(&r->commit_index)) {
        return;
    }
    craft__queue_t done;
    craft__queue_init(&done);
    int64_t now = craft__now_ns();
    while (!craft__queue_empty(&L(r)->inflight)) {
        craft__queue_t *e = craft__queue_head(&L(r)->inflight);
        craft_future_t *f = CRAFT__QUEUE_DATA(e, craft_future_t, link);
        if (f->index > commit) {
            break;
        }
        craft__queue_remove(e);
        atomic_fetch_add(&r->st_commit_us, (uint64_t)(now - f->enqueued_ns) / 1000);
        atomic_fetch_add(&r->st_commit_n, 1);
        craft__queue_push(&done, e);
    }
    craft__commit_to(r, commit, &done);
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
    craft__queue_push(&L(r)->pending, &f->link);
}

static void leader_enter(craft_t *r)
{
    craft__leader_t *l = L(r);
    memset(l, 0, sizeof *l);
    craft__queue_init(&l->inflight);
    craft__queue_init(&l->pending);
    craft__queue_init(&l->verifies);
    uint64_t last = atomic_load(&r->last_log_index);
    l->stored_index = last;
    l->commitment =
        craft__commitment_new(&r->latest, atomic_load(&r->commit_index), last + 1);
    if (l->commitment == NULL) {
        CRAFT__ERROR(&r->log, "raft", "out of memory becoming leader");
        craft__set_state(r, CRAFT_FOLLOWER);
        return;
    }
    /* Our own log counts as replicated up to where it is stored. */
    craft__commitment_match(l->commitment, r->local_id, last);
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
    fail_queue(&l->inflight, lost);
    fail_queue(&l->pending, atomic_load(&r->shutting_down) ? CRAFT_ESHUTDOWN : CRAFT_ENOTLEADER);
    fail_queue(&l->verifies, lost);
    craft__commitment_unref(l->commitment);
    l->commitment = NULL;
    craft__set_leader(r, NULL, NULL);
    if (r->conf.notify_leader != NULL) {
        r->conf.notify_leader(r->conf.notify_leader_arg, false);
    }
}

void craft__leader_loop(craft_t *r)
{
    leader_enter(r);
    while (atomic_load(&r->state) == CRAFT_LEADER && !atomic_load(&r->shutting_down)) {
        int64_t deadline = expire_pending(r, L(r)->lease_deadline_ns);
        craft__msg_t *m = craft__mailbox_wait(&r->run_mb, deadline);
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
        flush_pending(r);
        process_commit(r);
        craft__trim_window(r);
        if (craft__now_ns() >= L(r)->lease_deadline_ns) {
            L(r)->lease_deadline_ns = check_lease(r);
        }
        craft__reap_vote_threads(r, false);
    }
    leader_exit(r);
}
