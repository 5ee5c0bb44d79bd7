/*
 * Snapshots (hashicorp snapshot.go): the snapshot thread (periodic and user
 * snapshots, log compaction), restore at start, the follower side of
 * InstallSnapshot (streamed by an install thread so the run thread keeps
 * answering heartbeats), and the leader's user restore.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/configuration.h"
#include "lib/raft.h"

#define COPY_CHUNK (256 * 1024)

/* Sends `req` to the fsm thread and waits for its answer. */
static int fsm_request(craft_t *r, craft__fsm_req_t *req, int type)
{
    req->msg.type = type;
    req->done = craft__future_new(CRAFT__FUT_GENERIC);
    if (req->done == NULL) {
        return CRAFT_ENOMEM;
    }
    int rv;
    if (craft__mailbox_post(&r->fsm_mb, &req->msg) != 0) {
        craft__future_complete(req->done, CRAFT_ESHUTDOWN);
    }
    rv = craft_future_wait(req->done);
    craft_future_free(req->done);
    req->done = NULL;
    return rv;
}

int craft__fsm_restore(craft_t *r, const char *id, uint64_t index, uint64_t term)
{
    craft__fsm_req_t req;
    memset(&req, 0, sizeof req);
    req.snapshot_id = (char *)id;
    req.index = index;
    req.term = term;
    return fsm_request(r, &req, CRAFT__FSM_RESTORE);
}

void craft__publish_committed(craft_t *r)
{
    craft_configuration_t copy;
    if (craft_configuration_copy(&copy, &r->committed) != 0) {
        return;
    }
    craft__mutex_lock(&r->mu);
    craft_configuration_free(&r->committed_copy);
    r->committed_copy = copy;
    r->committed_copy_index = r->committed_index;
    craft__mutex_unlock(&r->mu);
}

/* hashicorp compactLogs: keep trailing_logs entries behind the snapshot. */
static void compact_logs(craft_t *r, uint64_t snap_index)
{
    uint64_t first = 0, last = 0;
    if (r->logs->first_index(r->logs->ctx, &first) != 0 ||
        r->logs->last_index(r->logs->ctx, &last) != 0 || first == 0) {
        return;
    }
    uint64_t trailing = atomic_load(&r->trailing_logs);
    if (last <= trailing) {
        return;
    }
    uint64_t max = last - trailing;
    if (snap_index < max) {
        max = snap_index;
    }
    if (max < first) {
        return;
    }
    int64_t t0 = craft__now_ns();
    int rv = r->logs->delete_range(r->logs->ctx, first, max);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "snapshot", "log compaction failed: error=%s", craft_strerror(rv));
        return;
    }
    CRAFT__INFO(&r->log, "snapshot", "compacted logs: from=%llu to=%llu took=%lldus",
                (unsigned long long)first, (unsigned long long)max,
                (long long)((craft__now_ns() - t0) / 1000));
}

/* hashicorp takeSnapshot. On success *id is the new snapshot's id. */
static int take_snapshot(craft_t *r, char **id)
{
    if (r->snaps == NULL) {
        return CRAFT_ENOTSUP;
    }
    craft__fsm_req_t req;
    memset(&req, 0, sizeof req);
    int64_t t0 = craft__now_ns();
    int rv = fsm_request(r, &req, CRAFT__FSM_SNAPSHOT);
    if (rv != 0) {
        return rv;
    }
    craft_fsm_snapshot_t *snap = req.snap;
    if (req.index == 0 || req.index <= atomic_load(&r->last_snapshot_index)) {
        rv = CRAFT_ENOTHINGNEW;
        goto out;
    }
    craft_configuration_t cfg;
    uint64_t cfg_index;
    craft__mutex_lock(&r->mu);
    rv = craft_configuration_copy(&cfg, &r->committed_copy);
    cfg_index = r->committed_copy_index;
    craft__mutex_unlock(&r->mu);
    if (rv != 0) {
        goto out;
    }
    /* The snapshot must not predate the committed configuration. */
    if (cfg_index > req.index) {
        CRAFT__WARN(&r->log, "snapshot", "cannot take snapshot now, wait until the "
                    "configuration entry at %llu has been applied (have applied %llu)",
                    (unsigned long long)cfg_index, (unsigned long long)req.index);
        craft_configuration_free(&cfg);
        rv = CRAFT_EBUSY;
        goto out;
    }
    craft_snapshot_sink_t *sink = NULL;
    rv = r->snaps->create(r->snaps->ctx, 1, req.index, req.term, &cfg, cfg_index, &sink);
    craft_configuration_free(&cfg);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "snapshot", "failed to create snapshot: %s", craft_strerror(rv));
        goto out;
    }
    *id = strdup(sink->id(sink->ctx));
    /* persist closes or cancels the sink. */
    rv = snap->persist(snap->ctx, sink);
    if (rv != 0 || *id == NULL) {
        CRAFT__ERROR(&r->log, "snapshot", "failed to persist snapshot: %s", craft_strerror(rv));
        free(*id);
        *id = NULL;
        rv = rv != 0 ? rv : CRAFT_ENOMEM;
        goto out;
    }
    /* Published only once durable. Written under mu so it pairs with the
     * run thread's own updates (install / restore). */
    craft__mutex_lock(&r->mu);
    if (req.index > atomic_load(&r->last_snapshot_index)) {
        atomic_store(&r->last_snapshot_index, req.index);
        atomic_store(&r->last_snapshot_term, req.term);
    }
    craft__mutex_unlock(&r->mu);
    compact_logs(r, req.index);
    CRAFT__INFO(&r->log, "snapshot", "snapshot complete: id=%s index=%llu took=%lldms", *id,
                (unsigned long long)req.index,
                (long long)((craft__now_ns() - t0) / 1000000));
out:
    if (snap != NULL && snap->release != NULL) {
        snap->release(snap->ctx);
    }
    return rv;
}

static bool should_snapshot(craft_t *r)
{
    uint64_t last = atomic_load(&r->last_log_index);
    uint64_t snap = atomic_load(&r->last_snapshot_index);
    uint64_t threshold = atomic_load(&r->snapshot_threshold);
    return last > snap && last - snap >= threshold;
}

/*
 * The growth cap. hashicorp checks snapshot_threshold only every
 * snapshot_interval (randomised SI..2SI, default 120 s), so under load the
 * log grows by the write rate times up to 2 SI between snapshots, whatever
 * the threshold: at 50k entries/s that is 12 million entries, all kept by an
 * in-memory store and by the log cache's reader. craft keeps the interval
 * check (it staggers the nodes' snapshots) and also wakes the snapshot
 * thread at once when the FSM has applied 2-3 thresholds past the last
 * snapshot, so the log stays within trailing_logs + 3 x threshold entries
 * (plus what arrives while a snapshot is taken) at any rate. The factor is
 * drawn per node and per snapshot, to keep the nodes' snapshots staggered.
 */
static void draw_cap(craft_t *r)
{
    uint64_t t = atomic_load(&r->snapshot_threshold);
    uint64_t cap = 0;
    if (r->snaps != NULL && t > 0 && t <= (uint64_t)INT64_MAX / 4) {
        cap = 2 * t + (uint64_t)craft__rand_range(0, (int64_t)t);
    }
    atomic_store(&r->snapshot_cap, cap);
}

void craft__snapshot_check_growth(craft_t *r, uint64_t applied)
{
    uint64_t cap = atomic_load(&r->snapshot_cap);
    uint64_t snap = atomic_load(&r->last_snapshot_index);
    if (cap == 0 || applied <= snap || applied - snap < cap) {
        return;
    }
    /* One kick at a time: the flag stays set while the message is queued
     * or handled, and after a failed kick snapshot until the next interval
     * tick, so a snapshot that keeps failing is retried once per interval,
     * not once per applied batch. Only the snapshot thread clears it, when
     * the message is not queued. */
    if (!atomic_exchange(&r->snapshot_kick_posted, true)) {
        (void)craft__mailbox_post(&r->snapshot_mb, &r->snapshot_kick_msg);
    }
}

/* A snapshot taken by the interval tick or the growth cap. Returns true when
 * a snapshot was taken. */
static bool auto_snapshot(craft_t *r, const char *why)
{
    char *id = NULL;
    int rv = take_snapshot(r, &id);
    if (rv != 0 && rv != CRAFT_ENOTHINGNEW && rv != CRAFT_ESHUTDOWN) {
        CRAFT__ERROR(&r->log, "snapshot", "failed to take snapshot (%s): %s", why,
                     craft_strerror(rv));
    }
    free(id);
    return rv == 0;
}

void *craft__snapshot_main(void *arg)
{
    craft_t *r = arg;
    craft__set_craft_thread(r);
    draw_cap(r);
    bool kick_suppressed = false; /* a kick snapshot failed: wait for a tick */
    int64_t deadline =
        craft__now_ns() + craft__random_timeout_ns(atomic_load(&r->snapshot_interval_ms));
    for (;;) {
        craft__msg_t *m = craft__mailbox_wait(&r->snapshot_mb, deadline);
        if (m == NULL) {
            if (atomic_load(&r->shutting_down)) {
                break;
            }
            if (craft__now_ns() < deadline) {
                continue; /* closed while waiting, or spurious */
            }
            deadline = craft__now_ns() +
                       craft__random_timeout_ns(atomic_load(&r->snapshot_interval_ms));
            if (should_snapshot(r)) {
                auto_snapshot(r, "interval");
            }
            draw_cap(r); /* the threshold may have been reloaded */
            if (kick_suppressed) {
                kick_suppressed = false;
                atomic_store(&r->snapshot_kick_posted, false);
            }
            continue;
        }
        if (m == &r->snapshot_kick_msg) {
            if (atomic_load(&r->shutting_down)) {
                break;
            }
            if (auto_snapshot(r, "log growth")) {
                draw_cap(r);
                atomic_store(&r->snapshot_kick_posted, false);
                /* Entries applied while the snapshot was taken were checked
                 * against the old snapshot with the kick already posted:
                 * check them again, or an idle node could stay over the cap
                 * until its next apply. */
                craft__snapshot_check_growth(r, atomic_load(&r->applied_index));
            } else {
                kick_suppressed = true;
            }
            continue;
        }
        /* A user snapshot request. */
        craft_future_t *f = (craft_future_t *)m;
        char *id = NULL;
        int rv = atomic_load(&r->shutting_down) ? CRAFT_ESHUTDOWN : take_snapshot(r, &id);
        f->srv_id = id;
        f->snaps = r->snaps;
        craft__future_complete(f, rv);
    }
    /* Fail user requests queued behind the shutdown. */
    craft__mailbox_close(&r->snapshot_mb);
    craft__msg_t *m;
    while ((m = craft__mailbox_wait(&r->snapshot_mb, 0)) != NULL) {
        if (m != &r->snapshot_kick_msg) {
            craft__future_complete((craft_future_t *)m, CRAFT_ESHUTDOWN);
        }
    }
    return NULL;
}

/* ---- restore at start ---- */

int craft__restore_on_start(craft_t *r)
{
    if (r->snaps == NULL) {
        return 0;
    }
    craft_snapshot_meta_t **metas = NULL;
    size_t n = 0;
    int rv = r->snaps->list(r->snaps->ctx, &metas, &n);
    if (rv != 0) {
        CRAFT__ERROR(&r->log, "snapshot", "failed to list snapshots: %s", craft_strerror(rv));
        return rv;
    }
    int result = 0;
    bool restored = false;
    for (size_t i = 0; i < n && !restored; i++) {
        craft_snapshot_meta_t *meta = metas[i];
        if (!r->conf.no_snapshot_restore_on_start) {
            craft_snapshot_meta_t *m2 = NULL;
            craft_reader_t *reader = NULL;
            rv = r->snaps->open(r->snaps->ctx, meta->id, &m2, &reader);
            if (rv == 0) {
                if (r->fsm->restore == NULL) {
                    rv = CRAFT_ENOTSUP;
                } else {
                    rv = r->fsm->restore(r->fsm->ctx, reader);
                }
                reader->close(reader->ctx);
                craft_snapshot_meta_free(m2);
            }
            if (rv != 0) {
                /* Skip a corrupt snapshot and fall back to an older one. */
                CRAFT__ERROR(&r->log, "snapshot", "failed to restore snapshot: id=%s error=%s",
                             meta->id, craft_strerror(rv));
                continue;
            }
        }
        atomic_store(&r->last_snapshot_index, meta->index);
        atomic_store(&r->last_snapshot_term, meta->term);
        atomic_store(&r->applied_index, meta->index);
        craft_configuration_free(&r->latest);
        craft_configuration_free(&r->committed);
        if (craft_configuration_copy(&r->latest, &meta->configuration) != 0 ||
            craft_configuration_copy(&r->committed, &meta->configuration) != 0) {
            result = CRAFT_ENOMEM;
        }
        r->latest_index = r->committed_index = meta->configuration_index;
        CRAFT__INFO(&r->log, "snapshot", "restored from snapshot: id=%s index=%llu",
                    meta->id, (unsigned long long)meta->index);
        restored = true;
    }
    if (n > 0 && !restored) {
        CRAFT__ERROR(&r->log, "snapshot", "failed to load any existing snapshots");
        result = CRAFT_ECORRUPT;
    }
    for (size_t i = 0; i < n; i++) {
        craft_snapshot_meta_free(metas[i]);
    }
    free(metas);
    return result;
}
