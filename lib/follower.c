/*
 * Follower role: the election timer and AppendEntries handling
 * (hashicorp raft.go runFollower / appendEntries), plus the transport entry
 * points (rpc handler and heartbeat fast path).
 */
#include <stdlib.h>
#include <string.h>

#include "lib/codec.h"
#include "lib/configuration.h"
#include "lib/raft.h"

/* A follower's AppendEntries handled on the delivering thread when the run
 * thread is idle: it holds the run token, as the run thread would, so it is
 * serialised with everything the run thread does; only when nothing is
 * queued before it, so requests keep their order. Returns false when the
 * run thread must handle it. */
static bool handle_inline(craft_t *r, craft_rpc_t *rpc)
{
    if (rpc->type != CRAFT_RPC_APPEND_ENTRIES || !atomic_load(&r->run_token_live) ||
        atomic_load(&r->state) != CRAFT_FOLLOWER ||
        craft__mutex_trylock(&r->run_token) != 0) {
        return false;
    }
    bool ok = atomic_load(&r->run_token_live) && !atomic_load(&r->shutting_down) &&
              atomic_load(&r->state) == CRAFT_FOLLOWER && craft__mailbox_len(&r->run_mb) == 0;
    if (ok) {
        atomic_fetch_add(&r->st_rpcs, 1);
        craft__handle_append_entries(r, rpc);
        craft__trim_window(r);
    }
    craft__mutex_unlock(&r->run_token);
    return ok;
}

void craft__rpc_handler(void *arg, craft_rpc_t *rpc)
{
    craft_t *r = arg;
    if (handle_inline(r, rpc)) {
        return;
    }
    craft__rpc_msg_t *m = malloc(sizeof *m);
    if (m == NULL) {
        rpc->respond(rpc, CRAFT_ENOMEM);
        return;
    }
    m->msg.type = CRAFT__RUN_RPC;
    m->rpc = rpc;
    if (craft__mailbox_post(&r->run_mb, &m->msg) != 0) {
        free(m);
        rpc->respond(rpc, CRAFT_ESHUTDOWN);
    }
}

static const char *leader_addr_of(const craft_append_entries_req_t *req)
{
    if (req->leader != NULL && req->leader[0] != '\0') {
        return req->leader;
    }
    return req->header.addr;
}

/* hashicorp's heartbeat fast path, without its flaw (#695): it may only
 * answer a heartbeat that changes nothing but the contact time — same term,
 * already a follower of that very leader — and does so under `mu`, the lock
 * every term and role change takes. Anything else goes to the run thread. */
void craft__heartbeat_handler(void *arg, craft_rpc_t *rpc)
{
    craft_t *r = arg;
    if (rpc->type == CRAFT_RPC_APPEND_ENTRIES) {
        const craft_append_entries_req_t *req = &rpc->req.append_entries;
        const char *addr = leader_addr_of(req);
        if (req->n_entries == 0 && req->prev_log_entry == 0 &&
            req->leader_commit_index == 0 && addr != NULL) {
            bool ok = false;
            craft__mutex_lock(&r->mu);
            if (atomic_load(&r->state) == CRAFT_FOLLOWER &&
                req->term == atomic_load(&r->current_term) && r->leader_addr != NULL &&
                strcmp(r->leader_addr, addr) == 0) {
                craft_append_entries_resp_t *resp = &rpc->resp.append_entries;
                memset(resp, 0, sizeof *resp);
                craft__header(r, &resp->header);
                resp->term = req->term;
                resp->last_log = atomic_load(&r->last_log_index);
                resp->success = true;
                atomic_store(&r->last_contact_ns, craft__now_ns());
                ok = true;
            }
            craft__mutex_unlock(&r->mu);
            if (ok) {
                rpc->respond(rpc, 0);
                return;
            }
        }
    }
    craft__rpc_handler(r, rpc);
}

/* Deletes our entries from `index` on (a conflict with the leader). */
static int truncate_from(craft_t *r, uint64_t index)
{
    uint64_t last = atomic_load(&r->last_log_index);
    CRAFT__WARN(&r->log, "raft", "clearing log suffix: from=%llu to=%llu",
                (unsigned long long)index, (unsigned long long)last);
    int rv = r->logs->delete_range(r->logs->ctx, index, last);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "raft", "failed to clear log suffix: error=%s", craft_strerror(rv));
        return rv;
    }
    craft__window_truncate_from(&r->window, index);
    if (r->latest_index >= index) {
        /* The uncommitted configuration was removed with the suffix. */
        craft_configuration_t copy;
        if (craft_configuration_copy(&copy, &r->committed) == 0) {
            craft_configuration_free(&r->latest);
            r->latest = copy;
            r->latest_index = r->committed_index;
            craft__publish_configuration(r);
        }
    }
    uint64_t term = 0;
    if (index - 1 > 0) {
        craft__term_at(r, index - 1, &term);
    }
    craft__set_last_log(r, index - 1, term);
    return 0;
}

/* Appends entries[from..n) after our log. */
static int append_new(craft_t *r, const craft_log_t *entries, size_t n)
{
    int64_t t0 = craft__now_ns();
    int rv = r->logs->store_logs(r->logs->ctx, entries, n);
    atomic_fetch_add(&r->st_store_us, (uint64_t)(craft__now_ns() - t0) / 1000);
    atomic_fetch_add(&r->st_store_n, 1);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "raft", "failed to append to logs: error=%s", craft_strerror(rv));
        return rv;
    }
    for (size_t i = 0; i < n; i++) {
        craft__entry_t *e = craft__entry_from_log(&entries[i]);
        if (e == NULL || craft__window_append(&r->window, e) != 0) {
            /* The window is only a cache: readers fall back to the store. */
            craft__window_clear(&r->window);
        }
        craft__entry_unref(e);
        if (entries[i].type == CRAFT_LOG_CONFIGURATION) {
            craft_configuration_t c;
            int drv = craft__configuration_decode(entries[i].data, entries[i].len, &c);
            if (drv != 0) {
                CRAFT__ERROR(&r->log, "raft", "corrupt configuration entry: index=%llu",
                             (unsigned long long)entries[i].index);
            } else {
                /* Configurations take effect on append (Raft thesis §4.1). */
                craft__configuration_appended(r, &c, entries[i].index);
                craft_configuration_free(&c);
            }
        }
    }
    craft__set_last_log(r, entries[n - 1].index, entries[n - 1].term);
    return 0;
}

void craft__handle_append_entries(craft_t *r, craft_rpc_t *rpc)
{
    const craft_append_entries_req_t *req = &rpc->req.append_entries;
    craft_append_entries_resp_t *resp = &rpc->resp.append_entries;
    memset(resp, 0, sizeof *resp);
    craft__header(r, &resp->header);
    resp->term = atomic_load(&r->current_term);
    resp->last_log = atomic_load(&r->last_log_index);
    resp->success = false;

    if (req->term < atomic_load(&r->current_term)) {
        goto out;
    }
    /* A valid leader for this term or a newer one. */
    if (req->term > atomic_load(&r->current_term) ||
        atomic_load(&r->state) != CRAFT_FOLLOWER) {
        craft__step_down(r, req->term);
        resp->term = req->term;
    }
    craft__set_leader(r, req->header.id, leader_addr_of(req));
    /* A legitimate leader: reset the election timer even if the consistency
     * check below fails (Raft §5.2). */
    atomic_store(&r->last_contact_ns, craft__now_ns());

    /* Consistency check (Raft §5.3). CRAFT_BROKEN_SKIP_PREV_LOG_CHECK is a
     * deliberately broken build used only to prove the fuzzy verifiers can
     * fail; never define it otherwise. */
    uint64_t last = atomic_load(&r->last_log_index);
#ifdef CRAFT_BROKEN_SKIP_PREV_LOG_CHECK
    if (req->prev_log_entry > last) {
#else
    if (req->prev_log_entry > 0) {
#endif
        uint64_t prev_term;
        if (req->prev_log_entry > last) {
            CRAFT__DEBUG(&r->log, "raft", "previous log entry not found: prev=%llu last=%llu",
                         (unsigned long long)req->prev_log_entry, (unsigned long long)last);
            resp->no_retry_backoff = true;
            goto out;
        }
        int rv = craft__term_at(r, req->prev_log_entry, &prev_term);
        if (rv == CRAFT_ENOTFOUND && req->prev_log_entry < atomic_load(&r->last_snapshot_index)) {
            /* Compacted into our snapshot: committed, so it matches. */
            rv = 0;
            prev_term = req->prev_log_term;
        }
        if (rv != 0) {
            CRAFT__WARN(&r->log, "raft", "failed to get previous log: prev=%llu error=%s",
                        (unsigned long long)req->prev_log_entry, craft_strerror(rv));
            resp->no_retry_backoff = true;
            goto out;
        }
        if (prev_term != req->prev_log_term) {
            CRAFT__WARN(&r->log, "raft",
                        "previous log term mis-match: ours=%llu remote=%llu index=%llu",
                        (unsigned long long)prev_term, (unsigned long long)req->prev_log_term,
                        (unsigned long long)req->prev_log_entry);
            resp->no_retry_backoff = true;
            goto out;
        }
    }

    /* Skip entries we already have; truncate at the first conflict. */
    if (req->n_entries > 0) {
        size_t i = 0;
        for (; i < req->n_entries; i++) {
            const craft_log_t *e = &req->entries[i];
            last = atomic_load(&r->last_log_index);
            if (e->index > last) {
                break;
            }
            if (e->index <= atomic_load(&r->last_snapshot_index)) {
                continue; /* covered by our snapshot: committed */
            }
            uint64_t term;
            int rv = craft__term_at(r, e->index, &term);
            if (rv != 0 && rv != CRAFT_ENOTFOUND) {
                goto out;
            }
            if (rv == CRAFT_ENOTFOUND || term != e->term) {
                if (e->index <= atomic_load(&r->commit_index)) {
                    CRAFT__ERROR(&r->log, "raft",
                                 "leader tried to overwrite a committed entry: index=%llu",
                                 (unsigned long long)e->index);
                    goto out;
                }
                if (truncate_from(r, e->index) != 0) {
                    goto out;
                }
                break;
            }
        }
        if (i < req->n_entries) {
            if (req->entries[i].index != atomic_load(&r->last_log_index) + 1) {
                CRAFT__ERROR(&r->log, "raft", "non-contiguous entries from leader: index=%llu",
                             (unsigned long long)req->entries[i].index);
                goto out;
            }
            if (append_new(r, &req->entries[i], req->n_entries - i) != 0) {
                goto out;
            }
        }
    }

    /* Commit up to what we verified matches the leader (Raft Fig. 2: index of
     * the last new entry), never beyond our own log. */
    if (req->leader_commit_index > atomic_load(&r->commit_index)) {
        uint64_t verified = req->prev_log_entry + req->n_entries;
        uint64_t idx = req->leader_commit_index < verified ? req->leader_commit_index : verified;
        if (idx > atomic_load(&r->commit_index)) {
            craft__commit_to(r, idx);
        }
    }
    resp->success = true;
    resp->last_log = atomic_load(&r->last_log_index);
    atomic_store(&r->last_contact_ns, craft__now_ns());
out:
    rpc->respond(rpc, 0);
}

void craft__follower_loop(craft_t *r)
{
    int64_t ht = CRAFT__MS(atomic_load(&r->ht_ms));
    int64_t deadline = craft__now_ns() + craft__random_timeout_ns(atomic_load(&r->ht_ms));
    while (atomic_load(&r->state) == CRAFT_FOLLOWER && !atomic_load(&r->shutting_down)) {
        /* While we wait, AppendEntries may be handled inline (see
         * craft__rpc_handler). */
        craft__mutex_unlock(&r->run_token);
        craft__msg_t *m = craft__mailbox_wait(&r->run_mb, deadline);
        craft__mutex_lock(&r->run_token);
        if (m != NULL) {
            if (m->type == CRAFT__RUN_RELOAD) {
                /* Reloaded timeouts apply to the running timer at once. */
                ht = CRAFT__MS(atomic_load(&r->ht_ms));
                deadline = craft__now_ns() + craft__random_timeout_ns(atomic_load(&r->ht_ms));
            }
            craft__handle_common(r, m);
            craft__reap_vote_threads(r, false);
            craft__trim_window(r);
            if (craft__now_ns() < deadline) {
                continue;
            }
        }
        int64_t now = craft__now_ns();
        if (now < deadline) {
            continue;
        }
        ht = CRAFT__MS(atomic_load(&r->ht_ms));
        int64_t contact = atomic_load(&r->last_contact_ns);
        if (now - contact < ht) {
            /* Heard from the leader recently: time out HT..2HT after that
             * contact rather than after now (detects a dead leader sooner
             * than hashicorp's re-arm from now). */
            deadline = contact + craft__random_timeout_ns(atomic_load(&r->ht_ms));
            if (deadline <= now) {
                deadline = now + ht - (now - contact);
            }
            continue;
        }
        deadline = now + craft__random_timeout_ns(atomic_load(&r->ht_ms));
        /* Heartbeat timeout: the leader is gone. */
        char *old_leader = NULL;
        craft__mutex_lock(&r->mu);
        old_leader = r->leader_addr ? strdup(r->leader_addr) : NULL;
        craft__mutex_unlock(&r->mu);
        craft__set_leader(r, NULL, NULL);
        if (r->latest.n == 0) {
            CRAFT__DEBUG(&r->log, "raft", "no known peers, aborting election");
        } else if (!craft__configuration_is_voter(&r->latest, r->local_id)) {
            /* Nonvoters never campaign (hashicorp #483). */
            CRAFT__DEBUG(&r->log, "raft", "not a voter, not campaigning");
        } else {
            CRAFT__WARN(&r->log, "raft", "heartbeat timeout reached, starting election: "
                        "last-leader=%s", old_leader ? old_leader : "");
            craft__set_state(r, CRAFT_CANDIDATE);
        }
        free(old_leader);
    }
}
