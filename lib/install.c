/*
 * Follower side of InstallSnapshot. The run thread checks the term and
 * hands the stream to an install thread, which copies it chunk by chunk
 * into the SnapshotStore (never holding it whole) while the run thread keeps
 * serving heartbeats and votes. When the copy is done the run thread
 * restores the FSM and discards the conflicting log (Raft Fig. 13 rule 7;
 * hashicorp #697), then answers.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/configuration.h"
#include "lib/raft.h"

#define COPY_CHUNK (256 * 1024)

static void *install_main(void *arg)
{
    craft__install_t *in = arg;
    craft_t *r = in->r;
    craft__set_craft_thread(r);
    const craft_install_snapshot_req_t *req = &in->rpc->req.install_snapshot;
    craft_snapshot_sink_t *sink = NULL;
    char *buf = malloc(COPY_CHUNK);
    int rv = buf == NULL ? CRAFT_ENOMEM
                         : r->snaps->create(r->snaps->ctx, req->snapshot_version,
                                            req->last_log_index, req->last_log_term,
                                            &req->configuration, req->configuration_index,
                                            &sink);
    int64_t copied = 0;
    while (rv == 0) {
        int64_t n = in->rpc->reader->read(in->rpc->reader->ctx, buf, COPY_CHUNK);
        if (n < 0) {
            rv = (int)n;
            break;
        }
        if (n == 0) {
            break;
        }
        copied += n;
        if (copied > req->size) {
            rv = CRAFT_EPROTOCOL;
            break;
        }
        rv = sink->write(sink->ctx, buf, (size_t)n);
    }
    if (rv == 0 && copied != req->size) {
        CRAFT__ERROR(&r->log, "snapshot", "failed to receive whole snapshot: got=%lld want=%lld",
                     (long long)copied, (long long)req->size);
        rv = CRAFT_EPROTOCOL;
    }
    if (sink != NULL) {
        if (rv == 0) {
            in->snapshot_id = strdup(sink->id(sink->ctx));
            rv = sink->close(sink->ctx);
            if (rv == 0 && in->snapshot_id == NULL) {
                rv = CRAFT_ENOMEM;
            }
        } else {
            sink->cancel(sink->ctx);
        }
    }
    free(buf);
    in->err = rv;
    if (craft__mailbox_post(&r->run_mb, &in->msg) != 0) {
        CRAFT__ERROR(&r->log, "snapshot", "run mailbox closed before install finished");
    }
    return NULL;
}

static void respond(craft_t *r, craft_rpc_t *rpc, bool success)
{
    craft_install_snapshot_resp_t *resp = &rpc->resp.install_snapshot;
    memset(resp, 0, sizeof *resp);
    resp->term = atomic_load(&r->current_term);
    resp->success = success;
    rpc->respond(rpc, 0);
}

void craft__handle_install_snapshot(craft_t *r, craft_rpc_t *rpc)
{
    const craft_install_snapshot_req_t *req = &rpc->req.install_snapshot;
    if (req->term < atomic_load(&r->current_term)) {
        respond(r, rpc, false);
        return;
    }
    if (req->term > atomic_load(&r->current_term) ||
        atomic_load(&r->state) != CRAFT_FOLLOWER) {
        craft__step_down(r, req->term);
    }
    const char *leader = req->leader != NULL && req->leader[0] ? req->leader : req->header.addr;
    craft__set_leader(r, req->header.id, leader);
    atomic_store(&r->last_contact_ns, craft__now_ns());
    if (r->snaps == NULL) {
        CRAFT__ERROR(&r->log, "snapshot", "cannot install snapshot: no snapshot store");
        rpc->respond(rpc, CRAFT_ENOTSUP);
        return;
    }
    if (r->install != NULL) {
        CRAFT__WARN(&r->log, "snapshot", "refusing InstallSnapshot: one is in progress");
        respond(r, rpc, false);
        return;
    }
    if (req->size < 0 || req->last_log_index == 0) {
        CRAFT__ERROR(&r->log, "snapshot", "invalid InstallSnapshot: size=%lld index=%llu",
                     (long long)req->size, (unsigned long long)req->last_log_index);
        respond(r, rpc, false);
        return;
    }
    craft__install_t *in = calloc(1, sizeof *in);
    if (in == NULL) {
        rpc->respond(rpc, CRAFT_ENOMEM);
        return;
    }
    in->msg.type = CRAFT__RUN_INSTALL_DONE;
    in->r = r;
    in->rpc = rpc;
    if (craft__thread_start(&in->thread, "craft-install", install_main, in) != 0) {
        free(in);
        rpc->respond(rpc, CRAFT_ENOMEM);
        return;
    }
    CRAFT__INFO(&r->log, "snapshot", "receiving snapshot: index=%llu size=%lld",
                (unsigned long long)req->last_log_index, (long long)req->size);
    r->install = in;
}

/* Applies a received snapshot: FSM restore first (it runs after every
 * commit already handed to the fsm thread), then the log. */
static bool install(craft_t *r, const craft_install_snapshot_req_t *req, const char *id)
{
    uint64_t idx = req->last_log_index, term = req->last_log_term;
    if (idx <= atomic_load(&r->commit_index)) {
        /* We already have (and applied or will apply) all of it. */
        CRAFT__INFO(&r->log, "snapshot", "ignoring snapshot at %llu: commit index is %llu",
                    (unsigned long long)idx, (unsigned long long)atomic_load(&r->commit_index));
        return true;
    }
    /* Fig. 13 rule 7: keep the log after the snapshot only if it holds the
     * snapshot's last entry with the same term; otherwise discard it all.
     * Decided before the restore: once the FSM holds the snapshot, the
     * snapshot thread may snapshot it at idx with the snapshot's term, and
     * craft__term_at(idx) would then answer from that instead of from our
     * log (a stale, lower-term tail was kept that way, seen once under
     * TSan). Before the restore our own snapshots are all below idx
     * (applied <= commit < idx), so the answer is our log's. */
    uint64_t our_term = 0;
    uint64_t last = atomic_load(&r->last_log_index);
    bool keep = idx < last && craft__term_at(r, idx, &our_term) == 0 && our_term == term;
    int rv = craft__fsm_restore(r, id, idx, term);
    if (rv != 0) {
        /* Our FSM no longer matches any log: stop rather than lie. */
        CRAFT__ERROR(&r->log, "snapshot", "failed to restore installed snapshot, shutting down");
        atomic_store(&r->shutting_down, true);
        return false;
    }
    uint64_t first = 0;
    r->logs->first_index(r->logs->ctx, &first);
    if (first > 0) {
        uint64_t upto = keep ? idx : last;
        if (first <= upto && (rv = r->logs->delete_range(r->logs->ctx, first, upto)) != 0) {
            CRAFT__ERROR(&r->log, "snapshot", "failed to discard log: %s", craft_strerror(rv));
        }
    }
    if (keep) {
        craft__window_trim_to(&r->window, idx);
    } else {
        craft__window_clear(&r->window);
        craft__set_last_log(r, idx, term);
    }
    craft__mutex_lock(&r->mu);
    atomic_store(&r->last_snapshot_index, idx);
    atomic_store(&r->last_snapshot_term, term);
    craft__mutex_unlock(&r->mu);
    /* Configurations: the snapshot's is committed; a newer one kept in the
     * log stays the latest. */
    craft_configuration_free(&r->committed);
    craft_configuration_copy(&r->committed, &req->configuration);
    r->committed_index = req->configuration_index;
    if (!keep || r->latest_index <= idx) {
        craft_configuration_free(&r->latest);
        craft_configuration_copy(&r->latest, &req->configuration);
        r->latest_index = req->configuration_index;
    }
    craft__publish_configuration(r);
    craft__publish_committed(r);
    atomic_store(&r->commit_index, idx);
    if (r->logs->stage_commit_index != NULL && r->conf.restore_committed_logs) {
        r->logs->stage_commit_index(r->logs->ctx, idx);
    }
    CRAFT__INFO(&r->log, "snapshot", "installed snapshot: index=%llu term=%llu kept-log=%s",
                (unsigned long long)idx, (unsigned long long)term, keep ? "yes" : "no");
    return true;
}

void craft__install_done(craft_t *r, craft__install_t *in)
{
    craft__thread_join(&in->thread);
    r->install = NULL;
    craft_rpc_t *rpc = in->rpc;
    const craft_install_snapshot_req_t *req = &rpc->req.install_snapshot;
    bool ok = false;
    if (in->err != 0) {
        CRAFT__ERROR(&r->log, "snapshot", "failed to install snapshot: %s",
                     craft_strerror(in->err));
    } else if (atomic_load(&r->shutting_down)) {
        /* leave it in the store; restart restores it */
    } else if (req->term != atomic_load(&r->current_term)) {
        CRAFT__WARN(&r->log, "snapshot", "term changed while receiving snapshot, ignoring it");
    } else {
        ok = install(r, req, in->snapshot_id);
    }
    free(in->snapshot_id);
    free(in);
    if (atomic_load(&r->shutting_down) && !ok) {
        rpc->respond(rpc, CRAFT_ESHUTDOWN);
        return;
    }
    respond(r, rpc, ok);
}
