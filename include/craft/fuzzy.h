/*
 * craft fuzzy harness: a whole cluster of craft nodes in one process on a
 * fault-injecting network, with crash/restart on durable stores, disk
 * faults, a client workload recording a history, and safety verifiers
 * (election safety, log matching, leader completeness, state-machine
 * safety, acknowledged writes exactly once, linearizability).
 *
 * Usable by craft's own tests (fuzzy/craft-fuzz) and by applications that
 * want to run their FSM under the same faults: give the cluster an FSM
 * factory and drive it with craft_fuzzy_cluster_apply, or use the built-in
 * register/KV FSM and workload.
 *
 * Determinism: every random choice of the harness (faults, delays, nemesis
 * steps, client operations) comes from RNGs derived from the seed. Thread
 * scheduling is not controlled, so a seed reproduces the *plan*, not the
 * exact interleaving.
 *
 * Thread safety: unless stated otherwise, functions taking a cluster may be
 * called from any thread; lifecycle calls (crash, restart, add, remove,
 * converge, verify, free) must come from one controlling thread.
 */
#ifndef CRAFT_FUZZY_H
#define CRAFT_FUZZY_H

#include "../craft.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Reports                                                                   */
/* ------------------------------------------------------------------------ */

/* A growable text report of findings. `violations` counts safety
 * violations; `text` (malloc'd, NUL-terminated, may be NULL when empty)
 * holds one line per finding and notes. */
typedef struct craft_fuzzy_report {
    unsigned violations;
    unsigned notes;
    char *text;
    size_t len, cap;
} craft_fuzzy_report_t;

/* Appends a violation / an informational note (printf format). */
void craft_fuzzy_report_violation(craft_fuzzy_report_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void craft_fuzzy_report_note(craft_fuzzy_report_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Frees the text; leaves the report empty. */
void craft_fuzzy_report_free(craft_fuzzy_report_t *r);

/* ------------------------------------------------------------------------ */
/* Fault-injecting network                                                   */
/* ------------------------------------------------------------------------ */

/* Every RPC is encoded with the hashicorp wire codec by the sender and
 * decoded by the receiver (responses too); snapshot data streams through.
 * Calls run on the caller's thread (delays are waits on it), pipelines
 * through worker threads (several when reordering, so pipelined requests
 * overtake each other), duplicates through the network's delivery thread.
 * Every other pipeline a transport opens (parity from the seed) offers
 * set_response_handler, so both of craft's response paths run. */
typedef struct craft_fuzzy_net craft_fuzzy_net_t;

typedef struct craft_fuzzy_faults {
    double drop;        /* probability a request is lost (caller: timeout) */
    double drop_resp;   /* probability a response is lost after the
                           receiver handled the request (caller: timeout) */
    double duplicate;   /* probability a request is delivered a second time,
                           later, its response discarded */
    int64_t delay_min_us; /* each direction waits uniform [min, max] */
    int64_t delay_max_us;
    double delay_tail;      /* probability of an extra long delay ... */
    int64_t delay_tail_us;  /* ... uniform [0, delay_tail_us] */
    bool reorder;           /* pipelined AppendEntries may overtake each other */
    double snapshot_cut;    /* probability an InstallSnapshot stream breaks */
} craft_fuzzy_faults_t;

/* `seed` drives every fault decision; `rpc_timeout_ms` (> 0) bounds each
 * call (x5 for InstallSnapshot and TimeoutNow). Returns 0, CRAFT_EINVAL or
 * CRAFT_ENOMEM. Free after closing every transport made from it. */
int craft_fuzzy_net_new(uint64_t seed, int64_t rpc_timeout_ms, craft_fuzzy_net_t **out);
void craft_fuzzy_net_free(craft_fuzzy_net_t *n);

/* A transport at `addr` (copied) on this network; close it with its
 * `close`. A later transport at the same address replaces a closed one
 * (restart) and inherits its links. At most 64 distinct addresses. */
int craft_fuzzy_net_transport(craft_fuzzy_net_t *n, const char *addr,
                              craft_transport_t **out);

/* Faults applied to every link from now on (copied). Zeroed = perfect. */
void craft_fuzzy_net_set_faults(craft_fuzzy_net_t *n, const craft_fuzzy_faults_t *f);
/* Extra delay for every message to or from `addr` (a slow node); 0 = none. */
void craft_fuzzy_net_set_slow(craft_fuzzy_net_t *n, const char *addr, int64_t extra_us);
/* One direction: messages from `from` to `to` are lost while down. */
void craft_fuzzy_net_set_link(craft_fuzzy_net_t *n, const char *from, const char *to,
                              bool up);
/* Cuts or restores both directions between `addr` and everyone. */
void craft_fuzzy_net_isolate(craft_fuzzy_net_t *n, const char *addr, bool isolated);
/* Partition: addrs[i] belongs to group groups[i]; links across groups go
 * down, links inside a group come up. Addresses not listed keep theirs. */
void craft_fuzzy_net_partition(craft_fuzzy_net_t *n, const char *const *addrs,
                               const int *groups, size_t count);
/* A node down (crashed): every message to or from `addr` is lost while
 * down, whatever the links say (they are kept for when it comes back). */
void craft_fuzzy_net_set_node_down(craft_fuzzy_net_t *n, const char *addr, bool down);
/* Every link up, no slow node (faults are kept: set them to zero). */
void craft_fuzzy_net_heal(craft_fuzzy_net_t *n);

/* Observes every request as delivered (already decoded), on the delivering
 * thread; must be quick. `from`/`to` are addresses. NULL removes. */
typedef void (*craft_fuzzy_rpc_hook_fn)(void *arg, const char *from, const char *to,
                                        const craft_rpc_t *rpc);
void craft_fuzzy_net_set_hook(craft_fuzzy_net_t *n, craft_fuzzy_rpc_hook_fn fn, void *arg);

/* Election safety as seen on the wire: records the sender of every
 * AppendEntries per term; more than one sender in a term, or a sender
 * whose address differs from the request's leader field, is a violation
 * (appended to `out`). Returns the number of violations seen so far. */
unsigned craft_fuzzy_net_check_election_safety(craft_fuzzy_net_t *n,
                                               craft_fuzzy_report_t *out);

typedef struct craft_fuzzy_net_stats {
    uint64_t requests, delivered, dropped, dropped_resp, duplicated, unreachable,
        snapshots, snapshot_cuts, codec_errors;
} craft_fuzzy_net_stats_t;
void craft_fuzzy_net_stats(craft_fuzzy_net_t *n, craft_fuzzy_net_stats_t *out);

/* ------------------------------------------------------------------------ */
/* Fault-injecting stores                                                    */
/* ------------------------------------------------------------------------ */

typedef struct craft_fuzzy_disk_faults {
    /* Probability that a write (store_logs, delete_range, set, set_uint64;
     * snapshot create/write/close through craft_fuzzy_snapshots_new) fails
     * with CRAFT_EIO. Half of the failures happen after the write
     * reached the inner store (durability unknown to the caller). After a
     * failure the pair refuses every call with CRAFT_EIO until it is
     * reopened, as the sqlite store does. */
    double fail;
    /* Probability that a write is slow (fsync stall), and how slow. */
    double slow;
    int64_t slow_us;
} craft_fuzzy_disk_faults_t;

typedef struct craft_fuzzy_store craft_fuzzy_store_t;

/* Wraps a LogStore/StableStore pair (borrowed; closed by
 * craft_fuzzy_store_free). *log and *stable point into the wrapper. */
int craft_fuzzy_store_new(craft_log_store_t *inner_log, craft_stable_store_t *inner_stable,
                          uint64_t seed, craft_fuzzy_store_t **out,
                          craft_log_store_t **log, craft_stable_store_t **stable);
void craft_fuzzy_store_set_faults(craft_fuzzy_store_t *s, const craft_fuzzy_disk_faults_t *f);
/* From now on every write fails with CRAFT_EIO without reaching the inner
 * store (a crash: nothing after this instant is durable). */
void craft_fuzzy_store_freeze(craft_fuzzy_store_t *s);
/* true once a fault (or freeze) made the pair refuse calls. */
bool craft_fuzzy_store_failed(craft_fuzzy_store_t *s);
/* Faults injected so far. */
uint64_t craft_fuzzy_store_faults(craft_fuzzy_store_t *s);
/* Closes the inner stores and frees the wrapper. */
void craft_fuzzy_store_free(craft_fuzzy_store_t *s);

/* Wraps a SnapshotStore (owned: its close closes `inner` and frees the
 * wrapper) with the faults of `s`, which must outlive it: creating a
 * snapshot, writing to it and closing it fail with CRAFT_EIO at `fail`
 * (not sticky; a failed close happened before or after the snapshot became
 * durable) and are slowed at `slow`; once `s` failed or was frozen every
 * snapshot write fails. list and open are passed through. */
typedef struct craft_fuzzy_snapshots craft_fuzzy_snapshots_t;
int craft_fuzzy_snapshots_new(craft_fuzzy_store_t *s, craft_snapshot_store_t *inner,
                              craft_snapshot_store_t **out);

/* ------------------------------------------------------------------------ */
/* The register/KV FSM                                                       */
/* ------------------------------------------------------------------------ */

/* Commands (text): "put <key> <value> <opid>", "cas <key> <old> <new>
 * <opid>", "get <key> <opid>". Keys are small integers, values unsigned
 * 40-bit integers, every key starts at 0. The apply response is a tagged
 * integer (craft_fuzzy_kv_response_*); nothing to free. Snapshot/restore
 * serialise the map. */
int craft_fuzzy_kv_fsm_new(craft_fsm_t **out);
void craft_fuzzy_kv_fsm_free(craft_fsm_t *fsm);
/* Current value of `key` (0 when never written). Thread-safe. */
uint64_t craft_fuzzy_kv_get(craft_fsm_t *fsm, unsigned key);
/* Decoding of apply responses. */
bool craft_fuzzy_kv_response_ok(void *response);      /* cas succeeded */
uint64_t craft_fuzzy_kv_response_value(void *response); /* get: value */

/* ------------------------------------------------------------------------ */
/* Cluster                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct craft_fuzzy_cluster craft_fuzzy_cluster_t;

/* Makes the FSMs of the nodes (one per node incarnation). Every FSM made
 * is destroyed by craft_fuzzy_cluster_free only, not at a crash: a future
 * holding an FSM response may be freed (release_response) after its node
 * crashed. NULL fields of the options = the KV FSM. */
typedef struct craft_fuzzy_fsm_factory {
    void *arg;
    int (*create)(void *arg, const char *node_id, craft_fsm_t **out);
    void (*destroy)(void *arg, craft_fsm_t *fsm);
} craft_fuzzy_fsm_factory_t;

#define CRAFT_FUZZY_MAX_NODES 32

typedef struct craft_fuzzy_options {
    size_t nodes;          /* initial voters, 1..9; default 5 */
    uint64_t seed;
    const char *dir;       /* where node data lives; NULL = fresh temp dir,
                              removed by craft_fuzzy_cluster_free */
    int64_t time_scale;    /* multiplies craft's timeouts; 0 = from env
                              CRAFT_TEST_TIME_SCALE (default 1) */
    uint64_t snapshot_threshold; /* 0 = 64 (snapshots happen often) */
    uint64_t trailing_logs;      /* 0 = 16 */
    bool sqlite_normal;    /* sqlite durability NORMAL instead of FULL */
    craft_level_t log_level;     /* ring-buffered per node; default INFO */
    craft_fuzzy_fsm_factory_t fsm;
} craft_fuzzy_options_t;

void craft_fuzzy_options_default(craft_fuzzy_options_t *o);

/* Creates the nodes (sqlite LogStore/StableStore under the fault wrapper,
 * file snapshot store, fuzzy transport), bootstraps them as voters and
 * starts them. Node i is "n<i>" at address "n<i>". */
int craft_fuzzy_cluster_new(const craft_fuzzy_options_t *o, craft_fuzzy_cluster_t **out);
/* Stops every node and frees everything (removes a temp dir). */
void craft_fuzzy_cluster_free(craft_fuzzy_cluster_t *c);

craft_fuzzy_net_t *craft_fuzzy_cluster_net(craft_fuzzy_cluster_t *c);
/* Slots used so far (nodes ever created, removed ones included). */
size_t craft_fuzzy_cluster_slots(craft_fuzzy_cluster_t *c);
const char *craft_fuzzy_cluster_id(craft_fuzzy_cluster_t *c, size_t i);
/* Running (started, not crashed, not removed). */
bool craft_fuzzy_cluster_running(craft_fuzzy_cluster_t *c, size_t i);
/* In the configuration as far as the harness knows (added and not
 * removed by a committed change). */
bool craft_fuzzy_cluster_member(craft_fuzzy_cluster_t *c, size_t i);
/* The node's fault store (NULL when not running). */
craft_fuzzy_store_t *craft_fuzzy_cluster_store(craft_fuzzy_cluster_t *c, size_t i);

/* Runs fn(arg, r, fsm) with node i's craft_t and FSM while guaranteeing the
 * node is not crashed meanwhile; returns CRAFT_ESHUTDOWN when it is not
 * running (fn not called), else fn's return value. fn may start craft
 * operations but should not wait long. */
int craft_fuzzy_cluster_with_node(craft_fuzzy_cluster_t *c, size_t i,
                                  int (*fn)(void *arg, craft_t *r, craft_fsm_t *fsm),
                                  void *arg);
/* Incarnation counter of slot i (bumped by every crash and restart). */
uint64_t craft_fuzzy_cluster_generation(craft_fuzzy_cluster_t *c, size_t i);

/* The running node in the leader state, waiting up to timeout_ms; -1 when
 * none (or more than one in different terms is still being resolved). */
int craft_fuzzy_cluster_leader(craft_fuzzy_cluster_t *c, int64_t timeout_ms);

/* Applies `data` through the current leader, following ENOTLEADER.
 * Returns 0 with *index, CRAFT_E* when it definitely failed, or
 * CRAFT_EPENDING/CRAFT_ELEADERSHIPLOST when the outcome is unknown. */
int craft_fuzzy_cluster_apply(craft_fuzzy_cluster_t *c, const void *data, size_t len,
                              int64_t timeout_ms, uint64_t *index);

/* Crash: the node's network is cut and its disk frozen at this instant,
 * then it is stopped (craft_free) and its stores closed; the FSM is
 * discarded. Only what the stores had durably acknowledged survives. */
int craft_fuzzy_cluster_crash(craft_fuzzy_cluster_t *c, size_t i);
/* Reopens the stores and starts the node again (network restored). */
int craft_fuzzy_cluster_restart(craft_fuzzy_cluster_t *c, size_t i);
/* Starts a brand-new server (fresh id "n<slot>", empty stores) and adds it
 * through the leader as a nonvoter, then promotes it to voter when
 * `voter`. On success *slot is its index. */
int craft_fuzzy_cluster_add(craft_fuzzy_cluster_t *c, bool voter, int64_t timeout_ms,
                            size_t *slot);
/* Removes node i through the leader (it may be the leader itself); once
 * the change committed the node is stopped and kept for the verifiers. */
int craft_fuzzy_cluster_remove(craft_fuzzy_cluster_t *c, size_t i, int64_t timeout_ms);
/* Leadership transfer from the current leader to `target` (-1 = any). */
int craft_fuzzy_cluster_transfer(craft_fuzzy_cluster_t *c, int target, int64_t timeout_ms);
/* A user snapshot on node i (CRAFT_ENOTHINGNEW is not an error). */
int craft_fuzzy_cluster_snapshot(craft_fuzzy_cluster_t *c, size_t i, int64_t timeout_ms);

/* End of a scenario: network healed and made perfect, disk faults off,
 * crashed members restarted (nodes whose disk failed are restarted too),
 * then waits for a leader, commits a barrier and waits until every running
 * member applied it. Returns 0, or CRAFT_ETIMEDOUT (a liveness failure,
 * reported in `rep`). */
int craft_fuzzy_cluster_converge(craft_fuzzy_cluster_t *c, int64_t timeout_ms,
                                 craft_fuzzy_report_t *rep);

/* Safety verifiers over the whole run (call after converge): election
 * safety at the transport, state-machine safety (every FSM applied the
 * same command at each index, checked continuously, and equal rolling
 * hashes at equal applied indexes), log matching across every node's log
 * store, leader completeness (checked when each leader took office, and
 * the final logs hold every applied entry), order of applies. Returns the
 * number of violations added to `rep`. */
unsigned craft_fuzzy_cluster_verify(craft_fuzzy_cluster_t *c, craft_fuzzy_report_t *rep);

/* Stops every running node (as a crash would), keeping their data for
 * dumps; the cluster can still be dumped and freed. */
void craft_fuzzy_cluster_stop(craft_fuzzy_cluster_t *c);

/* Writes, under `dir` (created): node-<id>.log (its log store, one entry
 * per line), node-<id>.craftlog (the last lines craft logged), ledger.txt
 * (the applied command at each index). Returns 0 or CRAFT_EIO. */
int craft_fuzzy_cluster_dump(craft_fuzzy_cluster_t *c, const char *dir);

/* The command applied at `index` by any FSM (as recorded by the ledger):
 * true with a malloc'd copy in *data (caller frees) and the response the
 * FSM returned; false when nothing was applied there. */
bool craft_fuzzy_cluster_applied(craft_fuzzy_cluster_t *c, uint64_t index, char **data,
                                 size_t *len, void **response);
/* Highest command index applied by any FSM. */
uint64_t craft_fuzzy_cluster_max_applied(craft_fuzzy_cluster_t *c);

/* ------------------------------------------------------------------------ */
/* Workload and history                                                      */
/* ------------------------------------------------------------------------ */

typedef enum {
    CRAFT_FUZZY_OP_PUT = 0,
    CRAFT_FUZZY_OP_CAS = 1,
    CRAFT_FUZZY_OP_GET = 2 /* through the log, read_index or barrier */
} craft_fuzzy_op_kind_t;

typedef enum {
    CRAFT_FUZZY_OK = 0,      /* completed; output valid */
    CRAFT_FUZZY_FAILED = 1,  /* certainly had no effect */
    CRAFT_FUZZY_UNKNOWN = 2  /* may or may not have taken effect */
} craft_fuzzy_outcome_t;

typedef struct craft_fuzzy_op {
    unsigned client;
    uint64_t opid;
    craft_fuzzy_op_kind_t kind;
    unsigned key;
    uint64_t value;     /* put: value; cas: new */
    uint64_t expect;    /* cas: old */
    uint64_t call, ret; /* logical times; ret = UINT64_MAX when unknown */
    craft_fuzzy_outcome_t outcome;
    bool cas_ok;        /* cas output */
    uint64_t read;      /* get output */
    uint64_t index;     /* log index when known, else 0 */
    char how[12];       /* "log", "read_index", "barrier", "" */
    int node;           /* node the client talked to last */
    int err;            /* craft error when not ok */
} craft_fuzzy_op_t;

/* A future a client stopped waiting for (completion deadline passed). */
typedef struct craft_fuzzy_abandoned {
    craft_future_t *f;
    unsigned client;
    uint64_t opid;
} craft_fuzzy_abandoned_t;

typedef struct craft_fuzzy_history {
    craft_fuzzy_op_t *ops;
    size_t n, cap;
    craft_fuzzy_abandoned_t *abandoned; /* owned: freed by history_free */
    size_t n_abandoned, cap_abandoned;
} craft_fuzzy_history_t;

void craft_fuzzy_history_free(craft_fuzzy_history_t *h);
/* After craft_fuzzy_cluster_stop: every future a client gave up on must
 * have completed (craft_free completes every pending future). Reports the
 * ones that never did and frees them all. Returns the violations added. */
unsigned craft_fuzzy_history_check_abandoned(craft_fuzzy_history_t *h,
                                             craft_fuzzy_report_t *rep);
/* Writes the history, one operation per line. Returns 0 or CRAFT_EIO. */
int craft_fuzzy_history_write(const craft_fuzzy_history_t *h, const char *path);

typedef struct craft_fuzzy_workload craft_fuzzy_workload_t;

/* Starts `clients` threads issuing put / cas / get (through the log,
 * read_index or barrier) on `keys` keys of the KV FSM, seeded. Each waits
 * at most `op_timeout_ms` for a result (then: unknown). */
int craft_fuzzy_workload_start(craft_fuzzy_cluster_t *c, unsigned clients, unsigned keys,
                               uint64_t seed, int64_t op_timeout_ms,
                               craft_fuzzy_workload_t **out);
/* Stops the clients (joins them) and moves the recorded history to *h. */
void craft_fuzzy_workload_stop(craft_fuzzy_workload_t *w, craft_fuzzy_history_t *h);
/* Operations completed ok so far (for progress checks). */
uint64_t craft_fuzzy_workload_ok(craft_fuzzy_workload_t *w);

/* After converge: resolves unknown outcomes from what the FSMs applied (an
 * unknown write found in the ledger took effect, with the FSM's output; one
 * absent after convergence never will), and checks every acknowledged
 * write was applied exactly once, at its index, with the output the client
 * saw. Returns the violations added to `rep`. */
unsigned craft_fuzzy_history_resolve(craft_fuzzy_cluster_t *c, craft_fuzzy_history_t *h,
                                     craft_fuzzy_report_t *rep);

typedef enum {
    CRAFT_FUZZY_LINEARIZABLE = 0,
    CRAFT_FUZZY_NOT_LINEARIZABLE = 1,
    CRAFT_FUZZY_LIN_UNKNOWN = 2 /* time bound or memory bound reached */
} craft_fuzzy_lin_result_t;

/* Linearizability of a register-per-key history (Wing & Gong search with
 * Lowe's memoisation of (linearized set, state), per-key partitioning, as
 * porcupine does). FAILED operations and non-ok reads are ignored; UNKNOWN
 * writes may take effect at any point after their call (return time
 * infinite) with any output. Gives up after `time_bound_ms` (in total)
 * with CRAFT_FUZZY_LIN_UNKNOWN. On NOT_LINEARIZABLE, the key and the
 * operations of the longest linearizable prefix found are described in
 * `rep` (may be NULL). */
craft_fuzzy_lin_result_t craft_fuzzy_check_linearizable(const craft_fuzzy_history_t *h,
                                                        int64_t time_bound_ms,
                                                        craft_fuzzy_report_t *rep);

#ifdef __cplusplus
}
#endif
#endif /* CRAFT_FUZZY_H */
