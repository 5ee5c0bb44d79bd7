/*
 * The node's internal state, shared by the core's files. Ownership:
 *  - fields under "run" belong to the run thread alone;
 *  - fields under "shared" are atomics or guarded by `mu` and readable from
 *    any thread; term and role change only on the run thread, under `mu`
 *    (hashicorp #695: never off the run thread);
 *  - whoever holds fsm_mu (the fsm thread, or an inline applier) owns the
 *    FSM and fsm_state.
 */
#ifndef CRAFT_LIB_RAFT_H
#define CRAFT_LIB_RAFT_H

#include <stdatomic.h>

#include "craft.h"
#include "lib/commitment.h"
#include "lib/future.h"
#include "lib/logger.h"
#include "lib/mailbox.h"
#include "lib/queue.h"
#include "lib/runtime.h"
#include "lib/window.h"

/* StableStore keys (hashicorp's, so stores can be shared with Go tools). */
#define CRAFT__KEY_CURRENT_TERM "CurrentTerm"
#define CRAFT__KEY_LAST_VOTE_TERM "LastVoteTerm"
#define CRAFT__KEY_LAST_VOTE_CAND "LastVoteCand"

/* Messages of the run thread's mailbox. */
enum {
    CRAFT__RUN_RPC = 1,      /* craft__rpc_msg_t */
    CRAFT__RUN_APPLY,        /* craft_future_t (apply, barrier) */
    CRAFT__RUN_VERIFY,       /* craft_future_t */
    CRAFT__RUN_COMMIT,       /* coalesced: r->commit_msg */
    CRAFT__RUN_STEP_DOWN,    /* coalesced: r->step_down_msg */
    CRAFT__RUN_VERIFY_ACK,   /* coalesced: r->verify_ack_msg */
    CRAFT__RUN_VOTE,         /* craft__vote_msg_t */
    CRAFT__RUN_REPL_EXIT,    /* craft__repl_t */
    CRAFT__RUN_SHUTDOWN,     /* r->shutdown_msg */
    CRAFT__RUN_CONFIG_CHANGE, /* craft_future_t */
    CRAFT__RUN_READ_INDEX,   /* craft_future_t */
    CRAFT__RUN_TRANSFER,     /* craft_future_t */
    CRAFT__RUN_TIMEOUT_NOW,  /* craft__vote_msg_t: TimeoutNow result */
    CRAFT__RUN_RELOAD,       /* coalesced: r->reload_msg */
    CRAFT__RUN_INSTALL_DONE, /* craft__install_t */
    CRAFT__RUN_RESTORE,      /* craft_future_t (user restore) */
};

/* Messages of the fsm thread's mailbox. */
enum {
    CRAFT__FSM_COMMIT = 1, /* craft__fsm_commit_t */
    CRAFT__FSM_SNAPSHOT,   /* craft__fsm_req_t: take an FSM snapshot */
    CRAFT__FSM_RESTORE,    /* craft__fsm_req_t: restore a stored snapshot */
};

/* A request the fsm thread answers by completing `done`. */
typedef struct craft__fsm_req {
    craft__msg_t msg;
    craft_future_t *done;
    /* FSM_SNAPSHOT results */
    craft_fsm_snapshot_t *snap;
    uint64_t index;
    uint64_t term;
    /* FSM_RESTORE input: the snapshot to restore (index/term above) */
    char *snapshot_id;
} craft__fsm_req_t;

/* An InstallSnapshot being streamed by an install thread (follower). */
typedef struct craft__install {
    craft__msg_t msg; /* RUN_INSTALL_DONE */
    craft_t *r;
    craft_rpc_t *rpc;
    craft__thread_t thread;
    int err;
    char *snapshot_id;
} craft__install_t;

typedef struct craft__rpc_msg {
    craft__msg_t msg;
    craft_rpc_t *rpc;
} craft__rpc_msg_t;

/* Committed entries up to `index` to apply (the futures waiting on them
 * are in r->commit_futures). */
typedef struct craft__fsm_commit {
    craft__msg_t msg;
    uint64_t index;
} craft__fsm_commit_t;

typedef struct craft__vote_msg {
    craft__msg_t msg;
    uint64_t round;   /* election round it answers */
    bool prevote;
    int err;
    char *id;         /* voter */
    uint64_t term;    /* response term */
    bool granted;
} craft__vote_msg_t;

typedef struct craft__repl craft__repl_t;

/* Per-term leader state (run thread). */
typedef struct craft__leader {
    craft__commitment_t *commitment;
    craft__queue_t pending;   /* apply futures waiting for flow control */
    craft__queue_t verifies;  /* verify futures waiting for acks */
    craft__repl_t **repls;
    size_t n_repls;
    uint64_t verify_epoch;
    int64_t lease_deadline_ns;
    uint64_t start_index;     /* index of this term's first entry (no-op) */
    craft__queue_t config_pending; /* membership changes waiting their turn */
    craft__queue_t reads_waiting;  /* read_index futures waiting for the no-op */
    craft_future_t *transfer;      /* leadership transfer in progress */
    char *transfer_id;
    int64_t transfer_deadline_ns;
    bool transfer_sent;
    uint64_t transfer_term;
    bool idle; /* the run thread waits in the leader loop (token released) */
} craft__leader_t;

/* Candidate state (run thread). */
typedef struct craft__candidate {
    uint64_t round;
    bool prevote;
    bool transfer;       /* leadership transfer: no pre-vote, flag set */
    size_t granted;
    size_t refused;
    size_t needed;
    int64_t deadline_ns;
} craft__candidate_t;

typedef struct craft__vote_thread {
    craft__queue_t link;
    craft__thread_t thread;
    atomic_bool finished;
    craft_t *r;
    bool prevote;
    bool timeout_now; /* sends TimeoutNow (leadership transfer) */
    uint64_t round;
    char *id;
    char *addr;
    craft_request_vote_req_t req;
    craft_request_prevote_req_t prereq;
} craft__vote_thread_t;

struct craft {
    craft_config_t conf;
    char *local_id;
    char *local_addr;
    craft__logger_t log;

    craft_fsm_t *fsm;
    craft_log_store_t *logs;
    craft_stable_store_t *stable;
    craft_snapshot_store_t *snaps;
    craft_transport_t *trans;

    /* ---- shared ---- */
    craft__mutex_t mu; /* term/role/leader changes; heartbeat fast path */
    _Atomic uint64_t current_term;
    atomic_int state;
    _Atomic uint64_t commit_index;
    _Atomic uint64_t last_log_index;
    _Atomic uint64_t last_log_term;
    _Atomic uint64_t applied_index;
    _Atomic int64_t last_contact_ns;
    char *leader_id;   /* under mu */
    char *leader_addr; /* under mu */
    craft_configuration_t latest_copy; /* under mu: for getters */
    uint64_t latest_copy_index;        /* under mu */
    craft__window_t window;            /* thread-safe itself */
    /* Commit advancement. The run thread advances commit_index; while we
     * lead, the replication side may too (craft__commit_fast), so that a
     * quorum's acknowledgement reaches the fsm thread without a hop through
     * run. Both go through commit_mu, which also guards the leader's apply
     * futures waiting for the fsm (dispatch appends in index order; the fsm
     * thread takes those at or below what it is told to apply; losing
     * leadership fails those above commit_index). */
    craft__mutex_t commit_mu;
    craft__queue_t commit_futures;     /* under commit_mu */
    uint64_t commit_term;              /* under commit_mu: term we lead, or 0 */
    _Atomic uint64_t own_stored_index; /* leader: its own log is stored to here */
    atomic_bool commit_watch;          /* run wants a signal on every commit */
    atomic_bool shutting_down;
    /* reloadable config values (craft_reload_config) */
    _Atomic int64_t ht_ms, et_ms, snapshot_interval_ms;
    _Atomic uint64_t trailing_logs, snapshot_threshold;
    craft__msg_t reload_msg;
    atomic_bool reload_posted;
    /* observers */
    craft__mutex_t obs_mu;
    craft__queue_t observers; /* under obs_mu */
    atomic_int n_observers;
    /* stats counters */
    _Atomic uint64_t st_applies, st_commits, st_elections, st_prevotes, st_fsm_applied,
        st_rpcs, st_commit_us, st_commit_n, st_fsm_us, st_fsm_batches, st_fsm_inline_batches,
        st_store_us, st_store_n;
    /* Moving average (1/8 weight) of the leader's store_logs calls. */
    _Atomic int64_t store_avg_ns;

    /* coalesced signals to run */
    craft__msg_t commit_msg;
    atomic_bool commit_posted;
    craft__msg_t step_down_msg;
    atomic_bool step_down_posted;
    _Atomic uint64_t step_down_term; /* highest term seen by replication */
    craft__msg_t verify_ack_msg;
    atomic_bool verify_ack_posted;
    craft__msg_t shutdown_msg;

    /* ---- run thread ---- */
    /* The run thread's identity: it holds run_token all the time except
     * while a follower waits for messages. Then a transport thread
     * delivering an AppendEntries takes it and handles the RPC itself, as
     * the run thread would (one thread hand-off less per request). */
    craft__mutex_t run_token;
    atomic_bool run_token_live; /* run thread started and not finished */
    craft__thread_t run_thread;
    craft__mailbox_t run_mb;
    uint64_t last_vote_term;
    char *last_vote_cand;
    craft_configuration_t latest;
    uint64_t latest_index;
    craft_configuration_t committed;
    uint64_t committed_index;
    int64_t election_deadline_ns;
    craft__leader_t leader;
    craft__candidate_t cand;
    craft__queue_t vote_threads;
    bool candidate_from_transfer;
    size_t repls_stopping; /* replication peers asked to stop, not yet exited */
    uint64_t staged_commit; /* last commit index handed to stage_commit_index */
    _Atomic uint64_t last_snapshot_index; /* written by run only */
    _Atomic uint64_t last_snapshot_term;

    /* ---- fsm thread ---- */
    craft__thread_t fsm_thread;
    craft__mailbox_t fsm_mb;
    /* Held while applying, snapshotting or restoring the FSM: by the fsm
     * thread per message, or by an inline applier (config.apply_inline).
     * Taken before commit_mu; a holder of commit_mu only tries it. */
    craft__mutex_t fsm_mu;
    struct craft__fsm_state *fsm_state; /* under fsm_mu */
    bool applier_active;                /* under commit_mu: an inline applier runs */
    atomic_bool apply_inline;           /* config.apply_inline, once the fsm thread runs */

    /* ---- snapshots ---- */
    craft__thread_t snapshot_thread;
    craft__mailbox_t snapshot_mb;
    bool snapshot_thread_started;
    /* Growth cap (see craft__snapshot_check_growth): once applied_index is
     * this far past last_snapshot_index the snapshot thread is woken at
     * once instead of at its next interval tick. 0 = off. Drawn by the
     * snapshot thread in [2, 3) x snapshot_threshold. */
    _Atomic uint64_t snapshot_cap;
    craft__msg_t snapshot_kick_msg; /* coalesced: posted while kick_posted */
    atomic_bool snapshot_kick_posted;
    craft_configuration_t committed_copy; /* under mu: for the snapshot thread */
    uint64_t committed_copy_index;        /* under mu */
    craft__install_t *install;            /* run: InstallSnapshot in progress */

    /* ---- shutdown ---- */
    craft__mutex_t shutdown_mu;
    craft__queue_t shutdown_futures; /* under shutdown_mu */
    bool finished;                   /* under shutdown_mu: run thread exited */
    bool threads_started;
};

/* ---- run.c ---- */
void *craft__run_main(void *arg);
/* Changes role (and leader) under mu; run thread only. */
void craft__set_state(craft_t *r, craft_state_t s);
void craft__set_leader(craft_t *r, const char *id, const char *addr);
/* Persists and publishes a new term (clears the vote). Returns 0 or error. */
int craft__set_current_term(craft_t *r, uint64_t term);
/* Records the last log index/term (run thread). */
void craft__set_last_log(craft_t *r, uint64_t index, uint64_t term);
/* Term of entry `index` from the window or the store (0 for index 0).
 * Returns 0, CRAFT_ENOTFOUND or a store error. */
int craft__term_at(craft_t *r, uint64_t index, uint64_t *term);
/* Reference to entry `index` from the window, else read from the store. */
int craft__entry_at(craft_t *r, uint64_t index, craft__entry_t **out);
/* Becomes follower (from any role) in `term` if higher. */
void craft__step_down(craft_t *r, uint64_t term);
/* A configuration entry was appended at `index` (leader or follower). */
void craft__configuration_appended(craft_t *r, const craft_configuration_t *c,
                                   uint64_t index);
/* Commit index advanced to `index` (run thread): hands the entries to the
 * fsm thread, stages the commit index if the store tracks it, and commits
 * the latest configuration once commit_index covers it. */
void craft__commit_to(craft_t *r, uint64_t index);
/* Leader fast path, any thread: advances commit_index to what `cm` says is
 * replicated on a quorum, capped by the leader's own stored log, if we
 * still lead `term`. Returns true when commit_index advanced. */
bool craft__commit_fast(craft_t *r, uint64_t term, craft__commitment_t *cm);
/* Hands commit_index to the LogStore's stage_commit_index when it moved
 * (run thread; the store persists it with its next write). */
void craft__stage_commit(craft_t *r);
/* Moves the leader's apply futures waiting for the fsm into `out`, in
 * index order: those with index <= upto, or those above it if `above`. */
void craft__take_futures(craft_t *r, uint64_t upto, bool above, craft__queue_t *out);
/* The same for those <= upto, commit_mu held. */
void craft__take_futures_locked(craft_t *r, uint64_t upto, craft__queue_t *out);
/* Tells the fsm thread to apply up to `index`; commit_mu held. 0,
 * CRAFT_ENOMEM or CRAFT_ESHUTDOWN (then the caller fails the futures). */
int craft__post_commit_locked(craft_t *r, uint64_t index);
/* The same, failing the futures taken with `err`. */
void craft__fail_commit_futures(craft_t *r, uint64_t upto, bool above, int err);
/* Posts a coalesced signal to run. */
void craft__signal(craft_t *r, craft__msg_t *m, atomic_bool *posted);
/* Fills a request header with our id/address. */
void craft__header(craft_t *r, craft_rpc_header_t *h);
void craft__publish_configuration(craft_t *r);
/* Drops window entries everyone (fsm, peers when leading) is past. */
void craft__trim_window(craft_t *r);

/* ---- follower.c ---- */
void craft__follower_loop(craft_t *r);
void craft__handle_append_entries(craft_t *r, craft_rpc_t *rpc);
/* Transport entry point: queues the rpc for the run thread. */
void craft__rpc_handler(void *arg, craft_rpc_t *rpc);
/* Heartbeat fast path, on a transport thread. */
void craft__heartbeat_handler(void *arg, craft_rpc_t *rpc);

/* ---- election.c ---- */
void craft__candidate_loop(craft_t *r);
void craft__handle_request_vote(craft_t *r, craft_rpc_t *rpc);
void craft__handle_request_prevote(craft_t *r, craft_rpc_t *rpc);
void craft__handle_timeout_now(craft_t *r, craft_rpc_t *rpc);
void craft__reap_vote_threads(craft_t *r, bool wait_all);

/* ---- leader.c ---- */
void craft__leader_loop(craft_t *r);
/* Handles an apply future on the calling thread when the run thread waits
 * idle in the leader loop (takes the run token); false = post it instead. */
bool craft__leader_apply_inline(craft_t *r, craft_future_t *f);
/* The latest configuration changed while leader: update voters and peers. */
void craft__leader_configuration_changed(craft_t *r);

/* ---- run.c dispatch shared by the loops ---- */
/* Handles an RPC in any role. */
void craft__handle_rpc(craft_t *r, craft_rpc_t *rpc);
/* Handles messages every loop treats alike; returns true when handled. */
bool craft__handle_common(craft_t *r, craft__msg_t *m);

/* ---- observer.c ---- */
/* Delivers `o` to every registered observer (cheap when there is none). */
void craft__observe(craft_t *r, const craft_observation_t *o);
/* Frees every observer (craft_free). */
void craft__observers_free(craft_t *r);

/* ---- election.c: one-shot RPC threads ---- */
/* Sends TimeoutNow to `id`/`addr` on a thread; result as RUN_TIMEOUT_NOW. */
int craft__send_timeout_now(craft_t *r, const char *id, const char *addr);

/* ---- snapshot.c ---- */
void *craft__snapshot_main(void *arg);
/* Called where applied_index advances: wakes the snapshot thread when the
 * entries applied since the last snapshot reach r->snapshot_cap. Cheap (two
 * atomic loads) when they don't. */
void craft__snapshot_check_growth(craft_t *r, uint64_t applied);
/* Asks the fsm thread to restore stored snapshot `id` at index/term; waits. */
int craft__fsm_restore(craft_t *r, const char *id, uint64_t index, uint64_t term);
/* Publishes r->committed for the snapshot thread (run thread). */
void craft__publish_committed(craft_t *r);
/* Follower side of InstallSnapshot (run thread). */
void craft__handle_install_snapshot(craft_t *r, craft_rpc_t *rpc);
void craft__install_done(craft_t *r, craft__install_t *in);
/* Leader: user restore (run thread). */
void craft__leader_restore(craft_t *r, craft_future_t *f);
/* Restores the newest usable snapshot at start (craft_new). */
int craft__restore_on_start(craft_t *r);

/* ---- fsm.c ---- */
void *craft__fsm_main(void *arg);
/* The fsm thread's state, from applied_index (craft_new, before the fsm
 * thread starts). 0 or CRAFT_ENOMEM. */
int craft__fsm_init(craft_t *r);
void craft__fsm_free(craft_t *r); /* NULL-safe */
/* Applies committed entries on the calling thread, which holds fsm_mu and
 * set applier_active (advance_locked); releases both. Stops after a few
 * batches, or when the fsm thread has messages, handing it the rest. */
void craft__fsm_apply_inline(craft_t *r);

/* ---- api.c ---- */
/* Completes a future with `err`, setting its fsm for responses. */
void craft__fail_future(craft_future_t *f, int err);
/* Empties `q` (futures linked by `link`), failing each with `err`. */
void craft__fail_futures(craft__queue_t *q, int err);

#endif
