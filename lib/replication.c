/*
 * Replication to one peer (hashicorp replication.go), one struct per peer
 * per leadership term, with three threads:
 *  - replication: replicate_to with capped exponential back-off using the
 *    follower's last index as a hint, then pipeline mode;
 *  - heartbeat: empty AppendEntries every HT/10..HT/5, at once on verify;
 *  - pipeline decode: consumes pipelined responses in order.
 */
#include "lib/replication.h"

#include "lib/logread.h"

#include <stdlib.h>
#include <string.h>

enum { SEND_OK, SEND_RETRY, SEND_STOP };

/* Most payload bytes in one AppendEntries (hashicorp bounds only the count;
 * the TCP transport refuses frames over 64 MiB by default). */
#define CRAFT__MAX_BATCH_BYTES ((size_t)8 << 20)

/* Entries in one AppendEntries for a peer more than one batch behind
 * (fed from the LogStore past the in-memory window, or from the window
 * after its pipeline filled up): larger batches mean fewer store reads and
 * fewer follower writes and fsyncs per entry, so a lagging peer catches up
 * instead of falling further behind under load. A peer within one batch of
 * the tail gets what is pending, at most max_append_entries. Still bounded by
 * CRAFT__MAX_BATCH_BYTES and by hashicorp's 1024. */
static size_t catchup_cap(const craft_t *r)
{
    size_t cap = 4 * (size_t)r->conf.max_append_entries;
    return cap < 1024 ? cap : 1024;
}

typedef struct pipe_tag {
    uint64_t last;    /* last index carried by the request */
    int64_t sent_ns;
} pipe_tag_t;

static bool stopped(craft__repl_t *p)
{
    craft__mutex_lock(&p->mu);
    bool s = p->stop;
    craft__mutex_unlock(&p->mu);
    return s;
}

/* Waits until stop, trigger (if `on_trigger`) or the deadline. Returns
 * true when stopping. */
static bool wait_for_work(craft__repl_t *p, int64_t deadline, bool on_trigger)
{
    craft__mutex_lock(&p->mu);
    while (!p->stop && !(on_trigger && p->trigger) && craft__now_ns() < deadline) {
        craft__cond_wait_until(&p->cond, &p->mu, deadline);
    }
    if (on_trigger) {
        p->trigger = false;
    }
    bool s = p->stop;
    craft__mutex_unlock(&p->mu);
    return s;
}

/* hashicorp backoff(10ms, failures, 12): 10ms doubling, at most 10.24 s. */
static int64_t backoff_ns(int failures)
{
    int64_t b = CRAFT__MS(10);
    for (int i = 2; i < failures && i < 12; i++) {
        b *= 2;
    }
    return b;
}

static void step_down_to(craft__repl_t *p, uint64_t term)
{
    craft_t *r = p->r;
    uint64_t cur = atomic_load(&r->step_down_term);
    while (term > cur && !atomic_compare_exchange_weak(&r->step_down_term, &cur, term)) {
    }
    craft__signal(r, &r->step_down_msg, &r->step_down_posted);
}

static void record_match(craft__repl_t *p, uint64_t match)
{
    uint64_t cur = atomic_load(&p->match_index);
    while (match > cur && !atomic_compare_exchange_weak(&p->match_index, &cur, match)) {
    }
    if (match > cur && craft__commitment_match(p->commitment, p->id, match)) {
        /* Straight to the fsm thread; run only hears of it when it waits
         * for a commit (or when the fast path cannot commit). */
        if (!craft__commit_fast(p->r, p->term, p->commitment) ||
            atomic_load(&p->r->commit_watch)) {
            craft__signal(p->r, &p->r->commit_msg, &p->r->commit_posted);
        }
    }
}

static void release_entries(craft__entry_t **ents, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        craft__entry_unref(ents[i]);
    }
}

/* Fills `req` for entries [next, min(next+max-1, last)]; entry references
 * go to ents (released by the caller). Returns 0 or an error. */
static int build_request(craft__repl_t *p, uint64_t next, uint64_t last,
                         craft_append_entries_req_t *req, craft_log_t *logs,
                         craft__entry_t **ents, size_t *n_ents)
{
    craft_t *r = p->r;
    memset(req, 0, sizeof *req);
    *n_ents = 0;
    craft__header(r, &req->header);
    req->term = p->term;
    req->leader = r->local_addr;
    req->leader_commit_index = craft__commitment_commit_index(p->commitment);
    req->prev_log_entry = next - 1;
    int rv = craft__term_at(r, next - 1, &req->prev_log_term);
    if (rv != 0) {
        return rv;
    }
    if (next > last) {
        return 0;
    }
    /* A peer that lags more than one batch gets up to catchup_cap entries,
     * wherever they come from: with max_append_entries per request a
     * follower whose writes take 1 ms absorbs at most 64k entries/s and,
     * under a faster leader, never caught up (nor entered the pipeline). */
    size_t want = (size_t)(last - next + 1);
    size_t cap = catchup_cap(r);
    if (want > cap) {
        want = cap;
    }
    /* From the window, else one ranged store read (a far-behind peer is
     * fed a batch per call, not an entry per call); bounded in bytes too
     * (at least one entry), so a batch of large commands stays under
     * transports' frame limits. */
    size_t n = 0;
    rv = craft__read_entries(r, next, want, CRAFT__MAX_BATCH_BYTES, ents, &n);
    if (rv != 0) {
        return rv;
    }
    for (size_t i = 0; i < n; i++) {
        logs[i] = ents[i]->log;
    }
    req->entries = logs;
    req->n_entries = n;
    *n_ents = n;
    /* The leader's commit index is only meaningful up to what we send. */
    return 0;
}

/* Sends the newest snapshot (hashicorp sendLatestSnapshot): the peer needs
 * entries that were compacted away. */
static int send_snapshot(craft__repl_t *p, int *failures)
{
    craft_t *r = p->r;
    if (r->snaps == NULL) {
        CRAFT__ERROR(&r->log, "replication", "peer=%s needs a snapshot but there is no "
                     "snapshot store", p->id);
        (*failures)++;
        return SEND_RETRY;
    }
    craft_snapshot_meta_t **metas = NULL;
    size_t n = 0;
    int rv = r->snaps->list(r->snaps->ctx, &metas, &n);
    if (rv != 0 || n == 0) {
        CRAFT__ERROR(&r->log, "replication", "failed to list snapshots for peer=%s: %s", p->id,
                     rv != 0 ? craft_strerror(rv) : "none");
        free(metas);
        (*failures)++;
        return SEND_RETRY;
    }
    char *id = strdup(metas[0]->id);
    for (size_t i = 0; i < n; i++) {
        craft_snapshot_meta_free(metas[i]);
    }
    free(metas);
    craft_snapshot_meta_t *meta = NULL;
    craft_reader_t *reader = NULL;
    rv = id != NULL ? r->snaps->open(r->snaps->ctx, id, &meta, &reader) : CRAFT_ENOMEM;
    free(id);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "replication", "failed to open snapshot for peer=%s: %s", p->id,
                     craft_strerror(rv));
        (*failures)++;
        return SEND_RETRY;
    }
    craft_install_snapshot_req_t req;
    memset(&req, 0, sizeof req);
    craft__header(r, &req.header);
    req.snapshot_version = meta->version;
    req.term = p->term;
    req.leader = r->local_addr;
    req.last_log_index = meta->index;
    req.last_log_term = meta->term;
    req.configuration = meta->configuration;
    req.configuration_index = meta->configuration_index;
    req.size = meta->size;
    craft_install_snapshot_resp_t resp;
    memset(&resp, 0, sizeof resp);
    CRAFT__INFO(&r->log, "replication", "sending snapshot to peer=%s index=%llu size=%lld",
                p->id, (unsigned long long)meta->index, (long long)meta->size);
    int64_t t0 = craft__now_ns();
    rv = r->trans->install_snapshot(r->trans->ctx, p->id, p->addr, &req, &resp, reader);
    reader->close(reader->ctx);
    uint64_t index = meta->index;
    craft_snapshot_meta_free(meta);
    atomic_fetch_add(&p->st_rpcs, 1);
    if (rv != 0) {
        CRAFT__WARN(&r->log, "replication", "failed to install snapshot on peer=%s: %s", p->id,
                    craft_strerror(rv));
        atomic_fetch_add(&p->st_failures, 1);
        (*failures)++;
        return SEND_RETRY;
    }
    int64_t now = craft__now_ns();
    atomic_store(&p->st_rtt_us, (uint64_t)(now - t0) / 1000);
    if (resp.term > p->term) {
        step_down_to(p, resp.term);
        return SEND_STOP;
    }
    atomic_store(&p->last_contact_ns, now);
    if (!resp.success) {
        (*failures)++;
        return SEND_RETRY;
    }
    record_match(p, index);
    atomic_store(&p->next_index, index + 1);
    *failures = 0;
    return SEND_OK;
}

/* One synchronous AppendEntries (hashicorp replicateTo, one round). */
static int replicate_once(craft__repl_t *p, int *failures)
{
    craft_t *r = p->r;
    size_t max = catchup_cap(r);
    craft_log_t logs[max];
    craft__entry_t *ents[max];
    size_t n = 0;
    craft_append_entries_req_t req;
    uint64_t next = atomic_load(&p->next_index);
    uint64_t last = atomic_load(&r->last_log_index);
    int rv = build_request(p, next, last, &req, logs, ents, &n);
    if (rv == CRAFT_ENOTFOUND) {
        /* Compacted away (or a restore hole): the peer needs a snapshot. */
        return send_snapshot(p, failures);
    }
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "replication", "failed to get log entries: peer=%s next=%llu "
                     "error=%s", p->id, (unsigned long long)next, craft_strerror(rv));
        (*failures)++;
        return SEND_RETRY;
    }
    craft_append_entries_resp_t resp;
    memset(&resp, 0, sizeof resp);
    int64_t t0 = craft__now_ns();
    rv = r->trans->append_entries(r->trans->ctx, p->id, p->addr, &req, &resp);
    release_entries(ents, n);
    atomic_fetch_add(&p->st_rpcs, 1);
    if (rv != 0) {
        atomic_fetch_add(&p->st_failures, 1);
        (*failures)++;
        CRAFT__DEBUG(&r->log, "replication", "failed to appendEntries to peer=%s error=%s",
                     p->id, craft_strerror(rv));
        return SEND_RETRY;
    }
    int64_t now = craft__now_ns();
    atomic_store(&p->st_rtt_us, (uint64_t)(now - t0) / 1000);
    if (resp.term > p->term) {
        step_down_to(p, resp.term);
        return SEND_STOP;
    }
    atomic_store(&p->last_contact_ns, now);
    if (resp.success) {
        uint64_t match = req.prev_log_entry + n;
        record_match(p, match);
        atomic_store(&p->next_index, match + 1);
        *failures = 0;
        return SEND_OK;
    }
    /* Back up, using the follower's last index as a hint. */
    uint64_t nn = next - 1;
    if (resp.last_log + 1 < nn) {
        nn = resp.last_log + 1;
    }
    if (nn < 1) {
        nn = 1;
    }
    atomic_store(&p->next_index, nn);
    if (resp.no_retry_backoff) {
        *failures = 0;
    } else {
        (*failures)++;
    }
    CRAFT__DEBUG(&r->log, "replication", "appendEntries rejected, sending older logs: peer=%s "
                 "next=%llu", p->id, (unsigned long long)nn);
    return *failures > 0 ? SEND_RETRY : SEND_OK;
}

/* One pipelined response (or failure), in request order. */
static void handle_response(craft__repl_t *p, int rv, const craft_append_entries_resp_t *resp,
                            pipe_tag_t *tag)
{
    craft_t *r = p->r;
    bool failed = rv != 0;
    if (!failed) {
        int64_t now = craft__now_ns();
        atomic_store(&p->st_rtt_us, (uint64_t)(now - tag->sent_ns) / 1000);
        if (resp->term > p->term) {
            step_down_to(p, resp->term);
            failed = true;
        } else if (!resp->success) {
            failed = true;
        } else {
            atomic_store(&p->last_contact_ns, now);
            record_match(p, tag->last);
        }
    } else {
        atomic_fetch_add(&p->st_failures, 1);
    }
    free(tag);
    craft__mutex_lock(&p->mu);
    /* The replication thread waits on us only for room in a full window
     * with entries left to send, or to learn of a failure: don't wake it
     * for other responses (at one client the slower peer's response
     * usually finds its window full and nothing new to send). */
    bool was_full = p->inflight >= (size_t)r->conf.max_inflight;
    p->inflight--;
    if (failed) {
        p->pipe_failed = true;
    }
    bool wake = failed || (was_full && !p->sending &&
                           p->pipe_next <= atomic_load(&r->last_log_index));
    craft__mutex_unlock(&p->mu);
    if (wake) {
        craft__cond_signal(&p->cond);
    }
}

/* The transport's response callback (set_response_handler). */
static void on_pipe_response(void *arg, int err, const craft_append_entries_resp_t *resp,
                             void *tag)
{
    if (tag == NULL) {
        return;
    }
    if (err == 0 && resp == NULL) {
        err = CRAFT_EPROTOCOL; /* a transport breaking the contract */
    }
    handle_response(arg, err, resp, tag);
}

/* Reads pipelined responses when the transport has no response callback. */
static void *decode_main(void *arg)
{
    craft__repl_t *p = arg;
    craft__set_craft_thread(p->r);
    for (;;) {
        craft_append_entries_resp_t resp;
        memset(&resp, 0, sizeof resp);
        void *tagv = NULL;
        int rv = p->pipe->next_response(p->pipe->ctx, &resp, &tagv);
        if (tagv == NULL) {
            break; /* closed and drained */
        }
        handle_response(p, rv, &resp, tagv);
    }
    return NULL;
}

/* Sends AppendEntries for everything from pipe_next up to the last index
 * while the window has room (or one empty request on an idle tick, to carry
 * the commit index). The caller holds the sender role (p->sending), which
 * owns p->logs / p->ents. Returns true when something was sent. */
static bool send_batches(craft__repl_t *p, bool idle_tick)
{
    craft_t *r = p->r;
    size_t window = (size_t)r->conf.max_inflight;
    bool sent = false;
    for (;;) {
        uint64_t last = atomic_load(&r->last_log_index);
        craft__mutex_lock(&p->mu);
        bool go = !p->pipe_failed && !p->stop && p->inflight < window;
        uint64_t next = p->pipe_next;
        craft__mutex_unlock(&p->mu);
        if (!go || (next > last && !(idle_tick && !sent))) {
            break;
        }
        craft_append_entries_req_t req;
        size_t n = 0;
        pipe_tag_t *tag = malloc(sizeof *tag);
        if (tag == NULL || build_request(p, next, last, &req, p->logs, p->ents, &n) != 0) {
            free(tag);
            craft__mutex_lock(&p->mu);
            p->pipe_failed = true;
            craft__mutex_unlock(&p->mu);
            break;
        }
        uint64_t sent_last = req.prev_log_entry + n;
        tag->last = sent_last;
        tag->sent_ns = craft__now_ns();
        craft__mutex_lock(&p->mu);
        p->inflight++;
        craft__mutex_unlock(&p->mu);
        int rv = p->pipe->append_entries(p->pipe->ctx, &req, tag);
        release_entries(p->ents, n);
        atomic_fetch_add(&p->st_rpcs, 1);
        craft__mutex_lock(&p->mu);
        if (rv != 0) {
            /* Not queued: the tag is ours. */
            p->inflight--;
            p->pipe_failed = true;
        } else {
            /* The decode thread may already have freed the tag. */
            p->pipe_next = sent_last + 1;
        }
        craft__mutex_unlock(&p->mu);
        if (rv != 0) {
            free(tag);
            break;
        }
        atomic_store(&p->next_index, sent_last + 1);
        sent = true;
    }
    return sent;
}

/* Pipeline mode (hashicorp pipelineReplicate): streams AppendEntries with
 * at most max_inflight outstanding, until a failure or stop. While the
 * pipeline is up the run thread may send new entries itself
 * (craft__repl_replicate), which saves a thread hand-off per batch; the
 * sender role (p->sending) keeps one sender at a time, in index order. */
static int run_pipeline(craft__repl_t *p)
{
    craft_t *r = p->r;
    int rv = r->trans->append_entries_pipeline(r->trans->ctx, p->id, p->addr, &p->pipe);
    if (rv != 0) {
        p->pipe = NULL;
        return rv;
    }
    size_t max = catchup_cap(r);
    p->logs = malloc(max * sizeof *p->logs);
    p->ents = malloc(max * sizeof *p->ents);
    craft__mutex_lock(&p->mu);
    p->pipe_failed = false;
    p->inflight = 0;
    p->pipe_next = atomic_load(&p->next_index);
    craft__mutex_unlock(&p->mu);
    /* Responses straight from the transport's thread when it offers that
     * (a thread hand-off less per response), else a decode thread. */
    bool push = p->logs != NULL && p->ents != NULL &&
                p->pipe->set_response_handler != NULL &&
                p->pipe->set_response_handler(p->pipe->ctx, on_pipe_response, p) == 0;
    if (p->logs == NULL || p->ents == NULL ||
        (!push &&
         craft__thread_start(&p->decode_thread, "craft-decode", decode_main, p) != 0)) {
        free(p->logs);
        free(p->ents);
        p->logs = NULL;
        p->ents = NULL;
        p->pipe->close(p->pipe->ctx);
        p->pipe->free(p->pipe->ctx);
        p->pipe = NULL;
        return CRAFT_ENOMEM;
    }
    atomic_store(&p->pipelining, true);
    CRAFT__DEBUG(&r->log, "replication", "pipelining replication: peer=%s", p->id);
    int64_t commit_deadline = craft__now_ns() + craft__random_timeout_ns(r->conf.commit_timeout_ms);
    size_t window = (size_t)r->conf.max_inflight;
    craft__mutex_lock(&p->mu);
    p->pipe_ready = true;
    for (;;) {
        bool idle_tick = false;
        for (;;) {
            uint64_t last = atomic_load(&r->last_log_index);
            bool can_send = !p->sending && p->pipe_next <= last && p->inflight < window;
            idle_tick = !p->sending && craft__now_ns() >= commit_deadline;
            if (p->stop || p->pipe_failed || can_send || idle_tick) {
                break;
            }
            craft__cond_wait_until(&p->cond, &p->mu, commit_deadline);
        }
        p->trigger = false;
        if (p->stop || p->pipe_failed) {
            break;
        }
        p->sending = true;
        craft__mutex_unlock(&p->mu);
        bool sent = send_batches(p, idle_tick);
        craft__mutex_lock(&p->mu);
        p->sending = false;
        if (sent || idle_tick) {
            commit_deadline = craft__now_ns() + craft__random_timeout_ns(r->conf.commit_timeout_ms);
        }
    }
    /* No new sender from here; wait for the run thread's send to finish. */
    p->pipe_ready = false;
    while (p->sending) {
        craft__cond_wait_until(&p->cond, &p->mu, -1);
    }
    craft__mutex_unlock(&p->mu);
    p->pipe->close(p->pipe->ctx);
    if (!push) {
        craft__thread_join(&p->decode_thread);
    }
    p->pipe->free(p->pipe->ctx);
    p->pipe = NULL;
    free(p->logs);
    free(p->ents);
    p->logs = NULL;
    p->ents = NULL;
    atomic_store(&p->pipelining, false);
    atomic_store(&p->next_index, atomic_load(&p->match_index) + 1);
    CRAFT__DEBUG(&r->log, "replication", "aborting pipeline replication: peer=%s", p->id);
    return 0;
}

static void thread_exit(craft__repl_t *p)
{
    craft__mutex_lock(&p->mu);
    bool last = --p->alive == 0;
    craft__mutex_unlock(&p->mu);
    if (last && craft__mailbox_post(&p->r->run_mb, &p->exit_msg) != 0) {
        CRAFT__ERROR(&p->r->log, "replication", "run mailbox closed before peer exit: %s", p->id);
    }
}

static void *repl_main(void *arg)
{
    craft__repl_t *p = arg;
    craft_t *r = p->r;
    craft__set_craft_thread(r);
    int failures = 0;
    bool pipe_unsupported = r->trans->append_entries_pipeline == NULL;
    int64_t commit_deadline = 0; /* send at once: establishes next/match */
    while (!stopped(p)) {
        uint64_t next = atomic_load(&p->next_index);
        uint64_t last = atomic_load(&r->last_log_index);
        if (next <= last || craft__now_ns() >= commit_deadline) {
            int res = replicate_once(p, &failures);
            commit_deadline =
                craft__now_ns() + craft__random_timeout_ns(r->conf.commit_timeout_ms);
            if (res == SEND_STOP) {
                break;
            }
            if (res == SEND_RETRY) {
                if (wait_for_work(p, craft__now_ns() + backoff_ns(failures), false)) {
                    break;
                }
                continue;
            }
            /* Pipeline once the peer is within one batch of the tail (as
             * hashicorp does after a successful replicateTo). Waiting for
             * next > last instead kept a peer out of the pipeline for good
             * under a steady stream of applies: each synchronous round
             * trip let a few more entries in behind it. */
            if (!pipe_unsupported &&
                atomic_load(&r->last_log_index) <
                    atomic_load(&p->next_index) + (uint64_t)r->conf.max_append_entries) {
                if (run_pipeline(p) == CRAFT_ENOTSUP) {
                    pipe_unsupported = true;
                }
                commit_deadline = 0;
            }
            continue;
        }
        if (wait_for_work(p, commit_deadline, true)) {
            break;
        }
    }
    thread_exit(p);
    return NULL;
}

static void *hb_main(void *arg)
{
    craft__repl_t *p = arg;
    craft_t *r = p->r;
    craft__set_craft_thread(r);
    int failures = 0;
    uint64_t sent_epoch = 0;
    int64_t ht = CRAFT__MS(atomic_load(&r->ht_ms));
    int64_t deadline = craft__now_ns();
    for (;;) {
        craft__mutex_lock(&p->mu);
        while (!p->stop && p->hb_epoch <= sent_epoch && craft__now_ns() < deadline) {
            craft__cond_wait_until(&p->hb_cond, &p->mu, deadline);
        }
        bool stop = p->stop;
        uint64_t epoch = p->hb_epoch;
        craft__mutex_unlock(&p->mu);
        if (stop) {
            break;
        }
        craft_append_entries_req_t req;
        memset(&req, 0, sizeof req);
        craft__header(r, &req.header);
        req.term = p->term;
        req.leader = r->local_addr;
        craft_append_entries_resp_t resp;
        memset(&resp, 0, sizeof resp);
        int64_t t0 = craft__now_ns();
        int rv = r->trans->append_entries(r->trans->ctx, p->id, p->addr, &req, &resp);
        int64_t now = craft__now_ns();
        atomic_fetch_add(&p->st_rpcs, 1);
        if (rv != 0) {
            failures++;
            atomic_fetch_add(&p->st_failures, 1);
            int64_t b = backoff_ns(failures + 1);
            if (b > ht / 2) {
                b = ht / 2;
            }
            if (failures == 1) {
                CRAFT__DEBUG(&r->log, "replication", "failed to heartbeat to peer=%s error=%s",
                             p->id, craft_strerror(rv));
            }
            craft_observation_t o = {.kind = CRAFT_OBSERVE_FAILED_HEARTBEAT,
                                     .last_contact_ns = atomic_load(&p->last_contact_ns)};
            o.peer.id = p->id;
            o.peer.address = p->addr;
            craft__observe(r, &o);
            deadline = now + b;
            continue;
        }
        if (failures > 0) {
            craft_observation_t o = {.kind = CRAFT_OBSERVE_RESUMED_HEARTBEAT};
            o.peer.id = p->id;
            o.peer.address = p->addr;
            craft__observe(r, &o);
        }
        failures = 0;
        atomic_store(&p->st_rtt_us, (uint64_t)(now - t0) / 1000);
        if (resp.term > p->term) {
            step_down_to(p, resp.term);
        } else {
            atomic_store(&p->last_contact_ns, now);
            if (resp.success && epoch > atomic_load(&p->acked_epoch)) {
                atomic_store(&p->acked_epoch, epoch);
                craft__signal(r, &r->verify_ack_msg, &r->verify_ack_posted);
            }
        }
        sent_epoch = epoch;
        deadline = now + craft__rand_range(ht / 10, ht / 5);
    }
    thread_exit(p);
    return NULL;
}

craft__repl_t *craft__repl_start(craft_t *r, const craft_server_t *s, uint64_t term,
                                 craft__commitment_t *cm, uint64_t next_index)
{
    craft__repl_t *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    p->exit_msg.type = CRAFT__RUN_REPL_EXIT;
    p->r = r;
    p->id = strdup(s->id);
    p->addr = strdup(s->address);
    if (p->id == NULL || p->addr == NULL) {
        free(p->id);
        free(p->addr);
        free(p);
        return NULL;
    }
    atomic_init(&p->voter, s->suffrage == CRAFT_VOTER);
    p->term = term;
    craft__commitment_ref(cm);
    p->commitment = cm;
    craft__mutex_init(&p->mu);
    craft__cond_init(&p->cond);
    craft__cond_init(&p->hb_cond);
    atomic_init(&p->next_index, next_index);
    atomic_init(&p->match_index, 0);
    atomic_init(&p->acked_epoch, 0);
    /* The lease starts now (hashicorp sets lastContact at start). */
    atomic_init(&p->last_contact_ns, craft__now_ns());
    p->alive = 2;
    if (craft__thread_start(&p->repl_thread, "craft-repl", repl_main, p) != 0) {
        goto err_after_init;
    }
    if (craft__thread_start(&p->hb_thread, "craft-heartbeat", hb_main, p) != 0) {
        craft__mutex_lock(&p->mu);
        p->alive = 1;
        p->stop = true;
        p->exit_msg.type = 0; /* don't report: we join right here */
        craft__cond_broadcast(&p->cond);
        craft__cond_broadcast(&p->hb_cond);
        craft__mutex_unlock(&p->mu);
        craft__thread_join(&p->repl_thread);
        goto err_after_init;
    }
    return p;
err_after_init:
    CRAFT__ERROR(&r->log, "replication", "failed to start threads for peer=%s", s->id);
    craft__commitment_unref(cm);
    craft__cond_destroy(&p->hb_cond);
    craft__cond_destroy(&p->cond);
    craft__mutex_destroy(&p->mu);
    free(p->id);
    free(p->addr);
    free(p);
    return NULL;
}

void craft__repl_trigger(craft__repl_t *p)
{
    craft__mutex_lock(&p->mu);
    bool wake = !p->trigger;
    p->trigger = true;
    craft__mutex_unlock(&p->mu);
    if (wake) {
        craft__cond_signal(&p->cond); /* p outlives the run thread's calls */
    }
}

void craft__repl_replicate(craft__repl_t *p)
{
    craft__mutex_lock(&p->mu);
    bool mine = p->pipe_ready && !p->sending && !p->stop && !p->pipe_failed &&
                p->inflight < (size_t)p->r->conf.max_inflight;
    if (!mine) {
        bool wake = !p->trigger;
        p->trigger = true;
        craft__mutex_unlock(&p->mu);
        if (wake) {
            craft__cond_signal(&p->cond);
        }
        return;
    }
    p->sending = true;
    craft__mutex_unlock(&p->mu);
    send_batches(p, false);
    craft__mutex_lock(&p->mu);
    p->sending = false;
    /* The replication thread waits for us when the pipeline is closing,
     * must learn of a failure we hit, and takes over entries we left for
     * want of room (a response that made room while we were sending did
     * not wake it: handle_response leaves a busy sender alone). */
    bool wake = !p->pipe_ready || p->pipe_failed || p->stop ||
                p->pipe_next <= atomic_load(&p->r->last_log_index);
    craft__mutex_unlock(&p->mu);
    if (wake) {
        craft__cond_signal(&p->cond);
    }
}

void craft__repl_heartbeat_now(craft__repl_t *p, uint64_t epoch)
{
    craft__mutex_lock(&p->mu);
    if (epoch > p->hb_epoch) {
        p->hb_epoch = epoch;
    }
    craft__cond_signal(&p->hb_cond);
    craft__mutex_unlock(&p->mu);
}

void craft__repl_stop(craft__repl_t *p)
{
    craft__mutex_lock(&p->mu);
    p->stop = true;
    craft__cond_broadcast(&p->cond);
    craft__cond_broadcast(&p->hb_cond);
    craft__mutex_unlock(&p->mu);
}

void craft__repl_free(craft__repl_t *p)
{
    craft__thread_join(&p->repl_thread);
    craft__thread_join(&p->hb_thread);
    craft__commitment_unref(p->commitment);
    craft__cond_destroy(&p->hb_cond);
    craft__cond_destroy(&p->cond);
    craft__mutex_destroy(&p->mu);
    free(p->id);
    free(p->addr);
    free(p);
}
