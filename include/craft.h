/*
 * craft — a Raft consensus framework in C, in the shape of hashicorp/raft.
 *
 * This header is the whole core public API and its reference documentation.
 *
 * Conventions used throughout:
 *  - Every fallible call returns `int`: 0 on success or a negative CRAFT_E* code.
 *    Details of a failure go to the configured logger.
 *  - Durations are milliseconds (`_ms`) unless a name says `_ns`.
 *  - "Borrowed" means craft reads the pointer only for the duration of the call
 *    (or of the object's life, where stated) and never frees it.
 *  - Every public function is safe to call from any thread unless its comment
 *    says otherwise.
 */
#ifndef CRAFT_H
#define CRAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRAFT_VERSION_MAJOR 0
#define CRAFT_VERSION_MINOR 1
#define CRAFT_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* One table for codes, names and messages (libuv style). */
#define CRAFT_ERRNO_MAP(X)                                                     \
    X(ENOTLEADER, -1, "node is not the leader")                                \
    X(ELEADERSHIPLOST, -2, "leadership lost while committing log")             \
    X(ESHUTDOWN, -3, "raft is already shutdown")                               \
    X(ETIMEDOUT, -4, "timed out enqueuing operation")                          \
    X(EABORTED, -5, "abort requested by restore operation")                    \
    X(ETRANSFER, -6, "leadership transfer in progress")                        \
    X(ECANTBOOTSTRAP, -7, "bootstrap only works on new clusters")              \
    X(ENOTVOTER, -8, "not a voter")                                            \
    X(ENOTHINGNEW, -9, "nothing new to snapshot")                              \
    X(EPROTOCOL, -10, "protocol error")                                        \
    X(ENOTFOUND, -11, "not found")                                             \
    X(ECORRUPT, -12, "corrupt data")                                           \
    X(EIO, -13, "input/output error")                                          \
    X(ENOMEM, -14, "out of memory")                                            \
    X(EINVAL, -15, "invalid argument")                                         \
    X(EPENDING, -16, "operation still pending")                                \
    X(EUNREACHABLE, -17, "peer unreachable")                                   \
    X(ECLOSED, -18, "transport or pipeline closed")                            \
    X(ENOTSUP, -19, "operation not supported")                                 \
    X(ECONFLICT, -20, "configuration changed since prev_index")                \
    X(EBUSY, -21, "a configuration change is already in progress")

typedef enum {
#define CRAFT__ERR_ENUM(name, code, msg) CRAFT_##name = (code),
    CRAFT_ERRNO_MAP(CRAFT__ERR_ENUM)
#undef CRAFT__ERR_ENUM
} craft_errno_t;

/* Human-readable message for a CRAFT_E* code (or "success" for 0).
 * Never NULL; the string is static. */
const char *craft_strerror(int code);
/* Symbolic name ("CRAFT_ENOTLEADER"). Never NULL; static. */
const char *craft_err_name(int code);

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum {
    CRAFT_LEVEL_TRACE = 0,
    CRAFT_LEVEL_DEBUG = 1,
    CRAFT_LEVEL_INFO = 2,
    CRAFT_LEVEL_WARN = 3,
    CRAFT_LEVEL_ERROR = 4,
    CRAFT_LEVEL_OFF = 5
} craft_level_t;

/* A log sink. `component` and `message` are borrowed for the call.
 * Called from any craft thread; must be thread-safe. */
typedef void (*craft_logger_fn)(void *ctx, craft_level_t level,
                                const char *component, const char *message);

/* ------------------------------------------------------------------------ */
/* Log entries, servers, configurations                                      */
/* ------------------------------------------------------------------------ */

typedef enum {
    CRAFT_LOG_COMMAND = 0,
    CRAFT_LOG_NOOP = 1,
    CRAFT_LOG_ADD_PEER_DEPRECATED = 2,
    CRAFT_LOG_REMOVE_PEER_DEPRECATED = 3,
    CRAFT_LOG_BARRIER = 4,
    CRAFT_LOG_CONFIGURATION = 5
} craft_log_type_t; /* hashicorp's LogType values */

typedef struct craft_log {
    uint64_t index;
    uint64_t term;
    craft_log_type_t type;
    const void *data; /* may be NULL when len == 0 */
    size_t len;
    const void *ext; /* hashicorp's Extensions; may be NULL */
    size_t ext_len;
    int64_t appended_at_ns; /* wall clock, ns since the Unix epoch; 0 = unknown */
} craft_log_t;

/* Frees the `data` and `ext` buffers of an entry filled by a LogStore's
 * get_log (both were allocated with malloc) and clears the pointers. */
void craft_log_release(craft_log_t *log);

typedef enum { CRAFT_VOTER = 0, CRAFT_NONVOTER = 1 } craft_suffrage_t;

typedef struct craft_server {
    craft_suffrage_t suffrage;
    char *id;      /* ServerID, NUL-terminated */
    char *address; /* transport address, NUL-terminated */
} craft_server_t;

/* A cluster membership. When returned by craft, the configuration and its
 * strings are owned as documented at the function returning it. When passed
 * to craft, it is borrowed for the call (craft copies what it keeps). */
typedef struct craft_configuration {
    size_t n;
    craft_server_t *servers;
} craft_configuration_t;

/* Deep-copies `src` into `*dst` (malloc'd). Free with
 * craft_configuration_free. Returns 0 or CRAFT_ENOMEM. */
int craft_configuration_copy(craft_configuration_t *dst,
                             const craft_configuration_t *src);
/* Frees the servers and strings of a configuration made by craft (copy,
 * offline getters); leaves `c` empty. NULL-safe. */
void craft_configuration_free(craft_configuration_t *c);

/* ------------------------------------------------------------------------ */
/* Config                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct craft_config {
    /* Protocol version spoken (hashicorp: 3). Only 3 is supported. */
    int protocol_version;
    /* Follower: time without leader contact before it campaigns.
     * Leader: heartbeats go out every heartbeat_timeout/10. Default 1000. */
    int64_t heartbeat_timeout_ms;
    /* Candidate round timeout, also the leadership transfer timeout.
     * Default 1000; must be >= heartbeat_timeout_ms. */
    int64_t election_timeout_ms;
    /* Idle AppendEntries (propagating the commit index) every CT..2CT.
     * Default 50. */
    int64_t commit_timeout_ms;
    /* Entries per AppendEntries, group-commit batch and FSM batch size.
     * Default 64, range 1..1024. */
    int max_append_entries;
    /* hashicorp's BatchApplyCh. craft's apply queue is always a buffered
     * mailbox drained in batches of max_append_entries, so both values behave
     * the same; the field is accepted so hashicorp configs translate 1:1. */
    bool batch_apply_ch;
    /* A leader removed from the configuration by a committed change shuts
     * down instead of becoming a follower. Default true. */
    bool shutdown_on_remove;
    /* Entries kept behind a snapshot when compacting. Default 10240. */
    uint64_t trailing_logs;
    /* Snapshot check period (randomised SI..2SI). Default 120000. */
    int64_t snapshot_interval_ms;
    /* Snapshot when this many entries accumulated since the last one,
     * checked every snapshot_interval_ms (as hashicorp). craft also takes a
     * snapshot at once when 2-3 x this many entries (the factor drawn per
     * node and snapshot) were applied since the last one, so the log stays
     * within about trailing_logs + 3 x snapshot_threshold entries at any
     * write rate. Default 8192. */
    uint64_t snapshot_threshold;
    /* A leader that has not heard from a voter quorum within this steps
     * down. Default 500; must be <= heartbeat_timeout_ms. */
    int64_t leader_lease_timeout_ms;
    /* This server's ID. Required, NUL-terminated; copied by craft_new. */
    const char *local_id;
    /* Called on the run thread each time this node gains (true) or loses
     * (false) leadership. Must not block for long and must not call
     * craft_free. NULL = none. */
    void (*notify_leader)(void *arg, bool is_leader);
    void *notify_leader_arg;
    /* Log sink; NULL = stderr with "[LEVEL] component: message" lines. */
    craft_logger_fn logger;
    void *logger_ctx;
    /* Minimum level passed to the logger. Default CRAFT_LEVEL_INFO. */
    craft_level_t log_level;
    /* Use the newest snapshot's metadata at start but don't call FSM
     * restore (the FSM is already durable). Default false. */
    bool no_snapshot_restore_on_start;
    /* Disable pre-vote (it is on by default when the transport supports
     * request_prevote). Default false. */
    bool prevote_disabled;
    /* hashicorp's NoLegacyTelemetry: craft exposes stats through
     * craft_stats only, so there is no legacy telemetry to skip. Accepted
     * for 1:1 translation of hashicorp configs. */
    bool no_legacy_telemetry;
    /* At start, replay entries up to the commit index persisted by a
     * LogStore offering the commit-tracking extension (hashicorp #613).
     * Ignored (with an info log) when the store does not offer it.
     * Default true: craft differs from hashicorp here on purpose. */
    bool restore_committed_logs;
    /* craft extension: AppendEntries in flight per peer when pipelining.
     * Default 2 (hashicorp's DefaultMaxRPCsInFlight), range 1..1024. */
    int max_inflight;
    /* craft extension (flow control): most entries the leader keeps
     * appended but not yet committed. Further applies wait in the queue
     * (their enqueue timeout runs) until commitment catches up.
     * Default 4096; 0 = unlimited. */
    uint64_t max_uncommitted;
    /* craft extension: the thread that learns an entry is committed (the
     * transport thread that delivered the acknowledgement, a client thread
     * in craft_apply, the run thread, a follower's AppendEntries handler)
     * applies it to the FSM itself when the fsm thread is idle, instead of
     * waking the fsm thread: one thread wake-up less per batch (see README,
     * How it works). FSM calls stay one at a time and in log order, but
     * come from several threads, and apply futures complete (and run their
     * on_done callbacks) on those threads. snapshot and restore stay on the
     * fsm thread. Only for an FSM whose apply is quick and never blocks:
     * while it runs, that thread handles no network traffic. Default
     * false. */
    bool apply_inline;
    /* craft extension: a thread in craft_future_wait / _wait_for on a
     * future of craft_apply, craft_apply_ext, craft_barrier,
     * craft_verify_leader or craft_read_index first polls it for up to this
     * many microseconds before going to sleep, saving the cost of being
     * woken (20-80 us on a virtual machine whose vCPU went idle; see README,
     * Performance). The polling is limited process-wide: at most
     * max(1, CPUs / 2) threads poll at once, none while more threads than
     * that wait on such futures, and only while such waits have recently
     * completed within the budget on average, so under load (long waits)
     * nobody polls. It trades CPU for latency: useful when a few
     * threads wait for quick round trips. Default 0 (off); range
     * 0..10000. */
    int64_t wait_spin_us;
} craft_config_t;

/* Fills `c` with hashicorp's DefaultConfig values (local_id NULL). */
void craft_config_default(craft_config_t *c);

/* Checks a config like hashicorp's ValidateConfig. Returns 0 or
 * CRAFT_EINVAL; the reason is logged through c->logger (or stderr) and, when
 * `reason` is non-NULL, a static description is stored there. */
int craft_config_validate(const craft_config_t *c, const char **reason);

/* ------------------------------------------------------------------------ */
/* Streams                                                                   */
/* ------------------------------------------------------------------------ */

/* A byte source (snapshot data). */
typedef struct craft_reader {
    void *ctx;
    /* Reads up to `len` bytes. Returns the count (>0), 0 at the end, or a
     * negative CRAFT_E*. */
    int64_t (*read)(void *ctx, void *buf, size_t len);
    /* Releases the reader (and the struct itself if it was allocated). */
    void (*close)(void *ctx);
} craft_reader_t;

/* A snapshot being written. Exactly one of close/cancel is called, after
 * which the sink is freed by its store. */
typedef struct craft_snapshot_sink {
    void *ctx;
    int (*write)(void *ctx, const void *buf, size_t len);
    /* Makes the snapshot durable and visible. */
    int (*close)(void *ctx);
    /* Discards the snapshot. */
    int (*cancel)(void *ctx);
    /* The snapshot's ID; valid until close/cancel. */
    const char *(*id)(void *ctx);
} craft_snapshot_sink_t;

typedef struct craft_snapshot_meta {
    int version;
    char *id;
    uint64_t index;
    uint64_t term;
    craft_configuration_t configuration;
    uint64_t configuration_index;
    int64_t size;
} craft_snapshot_meta_t;

/* Frees a meta returned by a SnapshotStore (its strings, configuration and
 * the struct). NULL-safe. */
void craft_snapshot_meta_free(craft_snapshot_meta_t *meta);

/* ------------------------------------------------------------------------ */
/* The parts (vtables). Each has `ctx` first: it is passed back to every    */
/* callback. Optional members may be NULL where stated.                      */
/* ------------------------------------------------------------------------ */

typedef struct craft_fsm_snapshot {
    void *ctx;
    /* Writes the state into `sink` and closes or cancels it. Runs on the
     * snapshot thread, concurrently with apply. */
    int (*persist)(void *ctx, craft_snapshot_sink_t *sink);
    /* Always called once when craft is done with the snapshot. */
    void (*release)(void *ctx);
} craft_fsm_snapshot_t;

typedef struct craft_fsm {
    void *ctx;
    /* Applies one committed CRAFT_LOG_COMMAND entry. `log` and its buffers
     * are borrowed until the call returns. The return value becomes the
     * apply future's response (see release_response). Called on the fsm
     * thread only (or, with config.apply_inline, on one thread at a time),
     * in log order. */
    void *(*apply)(void *ctx, const craft_log_t *log);
    /* Optional: applies `n` contiguous command entries at once and stores
     * one response per entry in responses[0..n-1]. Preferred over apply. */
    void (*apply_batch)(void *ctx, const craft_log_t *logs, size_t n,
                        void **responses);
    /* Optional: frees a response nobody will read (entries applied with no
     * waiting future, and responses of futures when they are freed). */
    void (*release_response)(void *ctx, void *response);
    /* Returns a point-in-time snapshot handle; never concurrent with apply.
     * Must be fast (the heavy work belongs in persist). */
    int (*snapshot)(void *ctx, craft_fsm_snapshot_t **out);
    /* Replaces the whole state with the snapshot read from `reader`
     * (borrowed; craft closes it). Never concurrent with anything else. */
    int (*restore)(void *ctx, craft_reader_t *reader);
} craft_fsm_t;

/* Durable log. Indexes start at 1; 0 means "none". Thread safety: craft
 * calls a store from several threads at once (run, fsm, replication);
 * implementations must be thread-safe. */
typedef struct craft_log_store {
    void *ctx;
    /* First stored index, 0 when empty. */
    int (*first_index)(void *ctx, uint64_t *index);
    /* Last stored index, 0 when empty. */
    int (*last_index)(void *ctx, uint64_t *index);
    /* Copies entry `index` into *out; out->data and out->ext are malloc'd
     * (or NULL when empty) and owned by the caller (craft_log_release).
     * CRAFT_ENOTFOUND when absent. */
    int (*get_log)(void *ctx, uint64_t index, craft_log_t *out);
    /* Stores `n` entries durably before returning (copying them). */
    int (*store_logs)(void *ctx, const craft_log_t *logs, size_t n);
    /* Deletes entries min..max inclusive. Deleting a suffix (a conflict)
     * must be durable when it returns. Deleting a prefix (compaction
     * behind a snapshot) may become durable lazily, in order, with later
     * writes: after a crash some of those entries may still be there (a
     * lower first index, never a gap), which craft tolerates. */
    int (*delete_range)(void *ctx, uint64_t min, uint64_t max);
    /* Optional commit-tracking extension (hashicorp's CommitTrackingLogStore,
     * #613): remember `index` and persist it atomically with the next
     * store_logs (or right away if the store prefers). NULL = not offered. */
    int (*stage_commit_index)(void *ctx, uint64_t index);
    /* Returns the last persisted commit index (0 when none). NULL when the
     * extension is not offered. */
    int (*get_commit_index)(void *ctx, uint64_t *index);
    /* Optional ranged read (NULL = not offered; craft then loops over
     * get_log). Copies consecutive entries lo, lo+1, ... into out[0..*n-1]:
     * at most `max_n` (>= 1; `out` has room for them), stopping before the
     * first missing index and before an entry that would make the sum of
     * len + ext_len of the entries copied exceed `max_bytes`, except that
     * entry `lo` is always copied whatever its size. Each out[i] is owned
     * by the caller exactly as with get_log (craft_log_release each one).
     * Returns 0 with *n >= 1; CRAFT_ENOTFOUND when `lo` is absent (index 0
     * included); CRAFT_EINVAL for NULL out/n or max_n == 0; or a store
     * error such as CRAFT_ECORRUPT or CRAFT_EIO, even when the failing
     * entry is not the first. On any error *n = 0 and nothing is left
     * allocated. Thread-safe like get_log. */
    int (*get_logs)(void *ctx, uint64_t lo, size_t max_n, size_t max_bytes,
                    craft_log_t *out, size_t *n);
    /* Frees the store. Called by the application, never by craft. */
    void (*close)(void *ctx);
} craft_log_store_t;

/* Durable key/value for term and vote. Keys are NUL-terminated strings. */
typedef struct craft_stable_store {
    void *ctx;
    int (*set)(void *ctx, const char *key, const void *val, size_t len);
    /* *val is malloc'd (caller frees; may be NULL when *len == 0).
     * CRAFT_ENOTFOUND when absent. */
    int (*get)(void *ctx, const char *key, void **val, size_t *len);
    int (*set_uint64)(void *ctx, const char *key, uint64_t val);
    /* CRAFT_ENOTFOUND when absent. */
    int (*get_uint64)(void *ctx, const char *key, uint64_t *val);
    void (*close)(void *ctx);
} craft_stable_store_t;

/* Snapshot storage. */
typedef struct craft_snapshot_store {
    void *ctx;
    /* Starts a new snapshot; `configuration` is borrowed (copied). */
    int (*create)(void *ctx, int version, uint64_t index, uint64_t term,
                  const craft_configuration_t *configuration,
                  uint64_t configuration_index, craft_snapshot_sink_t **sink);
    /* Newest first. *metas is a malloc'd array of *n pointers, each freed
     * with craft_snapshot_meta_free, the array with free(). */
    int (*list)(void *ctx, craft_snapshot_meta_t ***metas, size_t *n);
    /* Opens snapshot `id`: *meta as for list; *reader closed by the caller. */
    int (*open)(void *ctx, const char *id, craft_snapshot_meta_t **meta,
                craft_reader_t **reader);
    void (*close)(void *ctx);
} craft_snapshot_store_t;

/* ---- RPC messages (hashicorp's commands.go). Strings are NUL-terminated;
 * in a request craft sends they are borrowed for the call; in a request
 * craft receives they belong to the craft_rpc_t. ---- */

typedef struct craft_rpc_header {
    int protocol_version;
    const char *id;   /* sender's ServerID (may be NULL from old peers) */
    const char *addr; /* sender's address (may be NULL from old peers) */
} craft_rpc_header_t;

typedef struct craft_append_entries_req {
    craft_rpc_header_t header;
    uint64_t term;
    const char *leader; /* leader address (legacy field, still sent) */
    uint64_t prev_log_entry;
    uint64_t prev_log_term;
    const craft_log_t *entries;
    size_t n_entries;
    uint64_t leader_commit_index;
} craft_append_entries_req_t;

typedef struct craft_append_entries_resp {
    craft_rpc_header_t header;
    uint64_t term;
    uint64_t last_log; /* follower's last index: a back-off hint */
    bool success;
    bool no_retry_backoff;
} craft_append_entries_resp_t;

typedef struct craft_request_vote_req {
    craft_rpc_header_t header;
    uint64_t term;
    const char *candidate; /* candidate address (legacy field, still sent) */
    uint64_t last_log_index;
    uint64_t last_log_term;
    bool leadership_transfer;
} craft_request_vote_req_t;

typedef struct craft_request_vote_resp {
    craft_rpc_header_t header;
    uint64_t term;
    bool granted;
} craft_request_vote_resp_t;

typedef struct craft_request_prevote_req {
    craft_rpc_header_t header;
    uint64_t term; /* candidate's current term + 1, never persisted */
    uint64_t last_log_index;
    uint64_t last_log_term;
} craft_request_prevote_req_t;

typedef struct craft_request_prevote_resp {
    craft_rpc_header_t header;
    uint64_t term;
    bool granted;
} craft_request_prevote_resp_t;

typedef struct craft_install_snapshot_req {
    craft_rpc_header_t header;
    int snapshot_version;
    uint64_t term;
    const char *leader;
    uint64_t last_log_index;
    uint64_t last_log_term;
    craft_configuration_t configuration;
    uint64_t configuration_index;
    int64_t size;
} craft_install_snapshot_req_t;

typedef struct craft_install_snapshot_resp {
    craft_rpc_header_t header;
    uint64_t term;
    bool success;
} craft_install_snapshot_resp_t;

typedef struct craft_timeout_now_req {
    craft_rpc_header_t header;
} craft_timeout_now_req_t;

typedef struct craft_timeout_now_resp {
    craft_rpc_header_t header;
} craft_timeout_now_resp_t;

typedef enum {
    CRAFT_RPC_APPEND_ENTRIES = 0,
    CRAFT_RPC_REQUEST_VOTE = 1,
    CRAFT_RPC_INSTALL_SNAPSHOT = 2,
    CRAFT_RPC_TIMEOUT_NOW = 3,
    CRAFT_RPC_REQUEST_PREVOTE = 4
} craft_rpc_type_t; /* hashicorp's rpc type byte */

/* An incoming RPC, created by a transport and handed to the consumer
 * (craft) through the rpc handler. The consumer fills the matching `resp`
 * member and calls `respond` exactly once (from any thread); after that the
 * rpc belongs to the transport again. */
typedef struct craft_rpc craft_rpc_t;
struct craft_rpc {
    craft_rpc_type_t type;
    union {
        craft_append_entries_req_t append_entries;
        craft_request_vote_req_t request_vote;
        craft_request_prevote_req_t request_prevote;
        craft_install_snapshot_req_t install_snapshot;
        craft_timeout_now_req_t timeout_now;
    } req;
    union {
        craft_append_entries_resp_t append_entries;
        craft_request_vote_resp_t request_vote;
        craft_request_prevote_resp_t request_prevote;
        craft_install_snapshot_resp_t install_snapshot;
        craft_timeout_now_resp_t timeout_now;
    } resp;
    /* InstallSnapshot only: yields exactly req.install_snapshot.size bytes;
     * valid until respond. */
    craft_reader_t *reader;
    /* Set by the transport. `err` 0 sends `resp`; non-zero sends an error
     * string (craft_strerror(err)) to the peer. */
    void (*respond)(craft_rpc_t *rpc, int err);
    void *transport_data; /* the transport's own */
    void *consumer_data[2]; /* the consumer's own (craft queues rpcs here) */
};

/* Called by the transport for each incoming RPC, from transport threads. */
typedef void (*craft_rpc_handler_fn)(void *arg, craft_rpc_t *rpc);

/* An ordered stream of AppendEntries to one peer (hashicorp's
 * AppendPipeline). One thread sends, another receives responses. */
/* A pipelined AppendEntries' outcome, delivered by the transport (see
 * craft_pipeline_t.set_response_handler): err == 0 with `resp` (valid for
 * the call only), or err < 0 and resp NULL when the request failed. */
typedef void (*craft_pipeline_response_fn)(void *arg, int err,
                                           const craft_append_entries_resp_t *resp,
                                           void *tag);

typedef struct craft_pipeline {
    void *ctx;
    /* Sends `req` (fully copied or encoded before returning, so `req` is
     * borrowed for the call only). May block while the window is full.
     * `tag` is handed back with the matching response. */
    int (*append_entries)(void *ctx, const craft_append_entries_req_t *req,
                          void *tag);
    /* Waits for the response of the oldest request not yet consumed.
     * Returns 0 with *resp filled, or a negative code with `*tag` still
     * set when the request itself failed; CRAFT_ECLOSED once closed and
     * drained. *resp header strings are valid until the next call. */
    int (*next_response)(void *ctx, craft_append_entries_resp_t *resp,
                         void **tag);
    /* Stops the pipeline: every blocked and later call returns
     * CRAFT_ECLOSED. Idempotent; does not free. */
    void (*close)(void *ctx);
    /* Frees the pipeline. Only after close and once no thread is inside
     * another pipeline call. */
    void (*free)(void *ctx);
    /* Optional (NULL = not offered; craft then reads next_response on a
     * thread of its own). Delivers responses by calling fn(arg, err, resp,
     * tag) from a transport thread instead: once per request, in request
     * order, never two calls at once. fn is short and never blocks; it must
     * not call into the pipeline. Installed once, before the first
     * append_entries; next_response is not used afterwards. close() hands
     * every request still without a response to fn with CRAFT_ECLOSED and
     * returns only once no call to fn is running and none will follow. */
    int (*set_response_handler)(void *ctx, craft_pipeline_response_fn fn, void *arg);
} craft_pipeline_t;

typedef struct craft_transport {
    void *ctx;
    /* Installs the consumer of incoming RPCs (NULL detaches). After a
     * call that detaches returns, the transport makes no further calls to
     * the previous handler and has responded to nothing on its behalf. */
    void (*set_rpc_handler)(void *ctx, craft_rpc_handler_fn fn, void *arg);
    /* Optional fast path for AppendEntries carrying no entries (hashicorp's
     * heartbeat handler). Same contract as set_rpc_handler. NULL = every RPC
     * goes through the rpc handler. */
    void (*set_heartbeat_handler)(void *ctx, craft_rpc_handler_fn fn,
                                  void *arg);
    /* This transport's address; static for its life. */
    const char *(*local_addr)(void *ctx);
    /* Synchronous RPCs with the transport's own timeout. `resp` header
     * strings are valid until the next RPC of the calling thread on this
     * transport. */
    int (*append_entries)(void *ctx, const char *id, const char *target,
                          const craft_append_entries_req_t *req,
                          craft_append_entries_resp_t *resp);
    int (*request_vote)(void *ctx, const char *id, const char *target,
                        const craft_request_vote_req_t *req,
                        craft_request_vote_resp_t *resp);
    /* Optional (NULL = peer protocol has no pre-vote). */
    int (*request_prevote)(void *ctx, const char *id, const char *target,
                           const craft_request_prevote_req_t *req,
                           craft_request_prevote_resp_t *resp);
    /* Streams exactly req->size bytes from `data` after the request. */
    int (*install_snapshot)(void *ctx, const char *id, const char *target,
                            const craft_install_snapshot_req_t *req,
                            craft_install_snapshot_resp_t *resp,
                            craft_reader_t *data);
    int (*timeout_now)(void *ctx, const char *id, const char *target,
                       const craft_timeout_now_req_t *req,
                       craft_timeout_now_resp_t *resp);
    /* Optional: opens a pipeline to `target`; CRAFT_ENOTSUP when not
     * supported (craft then uses synchronous append_entries). */
    int (*append_entries_pipeline)(void *ctx, const char *id,
                                   const char *target,
                                   craft_pipeline_t **out);
    /* Frees the transport. Called by the application, never by craft. */
    void (*close)(void *ctx);
} craft_transport_t;

/* ------------------------------------------------------------------------ */
/* Futures                                                                   */
/* ------------------------------------------------------------------------ */

/* The result of an asynchronous operation. Every craft call returning a
 * future returns a non-NULL one (errors surface through it, except that a
 * NULL return means the allocation itself failed). The caller owns it and
 * frees it with craft_future_free, before or after it completes. A future
 * completes exactly once. */
typedef struct craft_future craft_future_t;

/* Waits for completion; returns its result (0 or CRAFT_E*). Must not be
 * called from a craft callback (it may wait for that very thread). On the
 * futures config.wait_spin_us names, the thread may poll before sleeping. */
int craft_future_wait(craft_future_t *f);
/* As craft_future_wait but gives up after timeout_ms, returning
 * CRAFT_EPENDING (the future stays valid and will still complete). This is
 * the completion deadline hashicorp lacks (#145): on CRAFT_EPENDING the
 * outcome of the operation is unknown. */
int craft_future_wait_for(craft_future_t *f, int64_t timeout_ms);
/* true once completed (never blocks). */
bool craft_future_done(craft_future_t *f);
/* Log index of the operation (apply, barrier, membership change), or the
 * commit index for read_index; 0 when none. Valid after completion. */
uint64_t craft_future_index(craft_future_t *f);
/* The FSM apply's return value; valid after completion and until the
 * future is freed (then release_response is called on it). */
void *craft_future_response(craft_future_t *f);
/* Configuration of a craft_get_configuration future; owned by the future,
 * valid until it is freed. NULL for other futures or on error. */
const craft_configuration_t *craft_future_configuration(craft_future_t *f);
/* Calls cb(f, arg) once when the future completes, on the completing
 * thread, or right away on the calling thread if it already has. One
 * callback per future (a second call replaces a pending one). The callback
 * may free the future (unless the caller still uses it) but must not block. */
void craft_future_on_done(craft_future_t *f,
                          void (*cb)(craft_future_t *f, void *arg), void *arg);
/* Releases the caller's reference. NULL-safe. If the future has not
 * completed yet, craft completes and frees it later. */
void craft_future_free(craft_future_t *f);

/* ------------------------------------------------------------------------ */
/* The node                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct craft craft_t;

typedef enum {
    CRAFT_FOLLOWER = 0,
    CRAFT_CANDIDATE = 1,
    CRAFT_LEADER = 2,
    CRAFT_SHUTDOWN = 3
} craft_state_t;

/* "Follower", "Candidate", "Leader", "Shutdown". */
const char *craft_state_name(craft_state_t s);

/* Writes the first configuration to brand-new stores, offline (hashicorp's
 * BootstrapCluster): CurrentTerm=1 and log entry {1, 1, CONFIGURATION}.
 * Every server of the initial cluster may be bootstrapped with the same
 * configuration. Errors: CRAFT_EINVAL (bad config/configuration, no voter,
 * duplicate IDs or addresses), CRAFT_ECANTBOOTSTRAP (any existing state),
 * store errors. `snaps` may be NULL; `trans` is unused and may be NULL. */
int craft_bootstrap_cluster(const craft_config_t *config,
                            craft_log_store_t *logs,
                            craft_stable_store_t *stable,
                            craft_snapshot_store_t *snaps,
                            craft_transport_t *trans,
                            const craft_configuration_t *configuration);

/* Creates and starts a node: loads term, vote, log and configuration from
 * the stores, replays committed entries into the FSM (see
 * restore_committed_logs) and starts its threads as a follower. `config` is
 * copied; the parts are borrowed until craft_free returns and must outlive
 * it. Errors: CRAFT_EINVAL, CRAFT_ENOMEM, store errors. `snaps` may be NULL
 * (snapshots unavailable). */
int craft_new(craft_t **out, const craft_config_t *config, craft_fsm_t *fsm,
              craft_log_store_t *logs, craft_stable_store_t *stable,
              craft_snapshot_store_t *snaps, craft_transport_t *trans);

/* Starts stopping the node and returns a future that completes when every
 * thread craft started has exited and every pending future has completed
 * (with CRAFT_ESHUTDOWN where it had no result yet). Detaches from the
 * transport (which the application closes). Idempotent. Safe from craft
 * callbacks (the future then completes after the callback returns). */
craft_future_t *craft_shutdown(craft_t *r);

/* Shuts down (if needed), waits for it, frees the node. Not from a craft
 * callback. NULL-safe. The parts can then be closed or reused. */
void craft_free(craft_t *r);

/* Appends a command. `data` is copied. On the leader, the future completes
 * after the entry is committed and applied by the local FSM, with index and
 * FSM response. `timeout_ms` bounds only the wait to enter the log (flow
 * control; 0 = no limit): on expiry CRAFT_ETIMEDOUT and the entry was never
 * appended. Errors: CRAFT_ENOTLEADER (see craft_leader), CRAFT_ELEADERSHIPLOST
 * (appended but leadership lost: outcome unknown), CRAFT_ESHUTDOWN,
 * CRAFT_ETRANSFER, CRAFT_ENOMEM. */
craft_future_t *craft_apply(craft_t *r, const void *data, size_t len,
                            int64_t timeout_ms);
/* As craft_apply, with hashicorp's Extensions bytes (copied). */
craft_future_t *craft_apply_ext(craft_t *r, const void *data, size_t len,
                                const void *ext, size_t ext_len,
                                int64_t timeout_ms);

/* Completes once every entry before it is applied to the FSM. */
craft_future_t *craft_barrier(craft_t *r, int64_t timeout_ms);

/* Completes with 0 once a quorum of voters acknowledged this node as
 * leader after the call; CRAFT_ENOTLEADER / CRAFT_ELEADERSHIPLOST
 * otherwise. Only voters count (hashicorp counts nonvoters: a flaw). */
craft_future_t *craft_verify_leader(craft_t *r);

/* The latest configuration (possibly not yet committed) and its log index
 * (craft_future_index). */
craft_future_t *craft_get_configuration(craft_t *r);

/* ---- membership changes (hashicorp's single-server changes) ----
 * Each appends a configuration entry on the leader and completes once it is
 * committed, with its index. `prev_index` 0 = unconditional; otherwise the
 * change fails with CRAFT_ECONFLICT unless the latest configuration's index
 * (craft_get_configuration) equals it. At most one configuration change is
 * uncommitted at a time and a new leader accepts changes only once its first
 * entry committed: a change arriving meanwhile waits in the queue, where
 * `timeout_ms` (0 = no limit) bounds its wait (CRAFT_ETIMEDOUT: never
 * appended). A configuration takes effect when appended. Errors:
 * CRAFT_ENOTLEADER, CRAFT_ELEADERSHIPLOST, CRAFT_ETRANSFER, CRAFT_ECONFLICT,
 * CRAFT_EINVAL (bad id/address, or a change leaving no voter),
 * CRAFT_ESHUTDOWN. `id` and `address` are copied. */

/* Adds `id` as a voter, or makes an existing server a voter (updating its
 * address). The server gets a vote immediately: add it as a nonvoter first
 * and promote it once caught up if the cluster must not lose availability. */
craft_future_t *craft_add_voter(craft_t *r, const char *id, const char *address,
                                uint64_t prev_index, int64_t timeout_ms);
/* Adds `id` as a nonvoter (receives the log, never votes nor counts); an
 * existing voter stays a voter (its address is updated). */
craft_future_t *craft_add_nonvoter(craft_t *r, const char *id, const char *address,
                                   uint64_t prev_index, int64_t timeout_ms);
/* Removes `id`. A leader removing itself steps down once the entry commits
 * (or shuts down when config.shutdown_on_remove). */
craft_future_t *craft_remove_server(craft_t *r, const char *id, uint64_t prev_index,
                                    int64_t timeout_ms);
/* Makes voter `id` a nonvoter. */
craft_future_t *craft_demote_voter(craft_t *r, const char *id, uint64_t prev_index,
                                   int64_t timeout_ms);

/* ---- leadership transfer (thesis §3.10) ----
 * The leader stops accepting applies and configuration changes
 * (CRAFT_ETRANSFER), catches the target up, sends it TimeoutNow; the target
 * campaigns at once, without pre-vote, with the leadership-transfer flag.
 * The future completes with 0 once this node has stepped down for a newer
 * term, or CRAFT_ETIMEDOUT after an election timeout. Errors also:
 * CRAFT_ENOTLEADER, CRAFT_ENOTVOTER (target is a nonvoter), CRAFT_ENOTFOUND
 * (unknown target or no other voter), CRAFT_ETRANSFER (one is running). */
craft_future_t *craft_leadership_transfer(craft_t *r);
/* Transfers to server `id` (`address` may be NULL: taken from the
 * configuration; if given it must match). */
craft_future_t *craft_leadership_transfer_to(craft_t *r, const char *id,
                                             const char *address);

/* ---- linearizable reads without a log write (Raft thesis §6.4) ----
 * Confirms leadership with a heartbeat round acknowledged by a quorum of
 * voters and completes with craft_future_index = the commit index at the
 * time of the call (once the leader has committed an entry of its term).
 * The caller then reads its FSM once craft_applied_index() >= that index.
 * Errors: CRAFT_ENOTLEADER, CRAFT_ELEADERSHIPLOST, CRAFT_ESHUTDOWN. hashicorp
 * has no such API (it needs VerifyLeader + Barrier). */
craft_future_t *craft_read_index(craft_t *r);

/* ---- observers (hashicorp's Observer) ----
 * Observations are queued to a per-observer delivery thread (64 deep) that
 * calls `notify`; `filter` (may be NULL = everything) runs on the emitting
 * craft thread and must be quick and non-blocking. A non-blocking observer
 * never stalls craft: when its queue is full the observation is dropped and
 * counted. A blocking observer makes the emitting thread wait for room (it
 * slows craft down; its notify must not wait on craft). The observation and
 * its strings are borrowed for the duration of the callback. */
typedef enum {
    CRAFT_OBSERVE_STATE = 0,             /* state */
    CRAFT_OBSERVE_LEADER = 1,            /* leader_id, leader_address (NULL: none) */
    CRAFT_OBSERVE_PEER = 2,              /* peer, peer_removed */
    CRAFT_OBSERVE_REQUEST_VOTE = 3,      /* candidate_*, term, last_log_*, transfer */
    CRAFT_OBSERVE_REQUEST_PREVOTE = 4,   /* candidate_*, term, last_log_* */
    CRAFT_OBSERVE_FAILED_HEARTBEAT = 5,  /* peer.id, last_contact_ns */
    CRAFT_OBSERVE_RESUMED_HEARTBEAT = 6  /* peer.id */
} craft_observation_kind_t;

typedef struct craft_observation {
    craft_observation_kind_t kind;
    craft_state_t state;
    const char *leader_id;
    const char *leader_address;
    craft_server_t peer;
    bool peer_removed;
    const char *candidate_id;
    const char *candidate_address;
    uint64_t term;
    uint64_t last_log_index;
    uint64_t last_log_term;
    bool leadership_transfer;
    int64_t last_contact_ns;
} craft_observation_t;

typedef struct craft_observer craft_observer_t;

/* Registers an observer; *out is owned by craft until
 * craft_deregister_observer (or craft_free). Errors: CRAFT_EINVAL,
 * CRAFT_ENOMEM, CRAFT_ESHUTDOWN. */
int craft_register_observer(craft_t *r,
                            bool (*filter)(void *arg, const craft_observation_t *o),
                            void (*notify)(void *arg, const craft_observation_t *o),
                            void *arg, bool blocking, craft_observer_t **out);
/* Stops delivery (queued observations are dropped), waits for a notify in
 * progress to return, frees the observer. Not from the observer's own
 * notify. Safe while events flow. */
void craft_deregister_observer(craft_t *r, craft_observer_t *o);
/* Observations delivered / dropped so far. */
uint64_t craft_observer_observed(craft_observer_t *o);
uint64_t craft_observer_dropped(craft_observer_t *o);

/* ---- hot reload (hashicorp ReloadConfig) ---- */
typedef struct craft_reloadable_config {
    uint64_t trailing_logs;
    int64_t snapshot_interval_ms;
    uint64_t snapshot_threshold;
    int64_t heartbeat_timeout_ms;
    int64_t election_timeout_ms;
} craft_reloadable_config_t;

/* Applies every field (zeros included, as hashicorp) after validating them
 * against the rest of the config; running timers pick the new values up at
 * once. CRAFT_EINVAL (logged reason) leaves everything unchanged. */
int craft_reload_config(craft_t *r, const craft_reloadable_config_t *rc);
/* The values in force. */
void craft_reloadable_config(craft_t *r, craft_reloadable_config_t *out);

/* ---- offline tools: on stores of a node that is not running ---- */

/* hashicorp HasExistingState: a term, a log entry or a snapshot exists.
 * `snaps` may be NULL. Returns 0 with *exists set, or a store error. */
int craft_has_existing_state(craft_log_store_t *logs, craft_stable_store_t *stable,
                             craft_snapshot_store_t *snaps, bool *exists);
/* The latest configuration in the stores and its index (hashicorp
 * GetConfiguration). *out is malloc'd (craft_configuration_free). */
int craft_get_configuration_offline(craft_log_store_t *logs, craft_stable_store_t *stable,
                                    craft_snapshot_store_t *snaps,
                                    craft_configuration_t *out, uint64_t *index);
/* Disaster recovery after losing quorum (hashicorp RecoverCluster): forces
 * `configuration` on this node's stores. craft appends it as a configuration
 * entry after the last one (same term), and marks everything up to it
 * committed where the LogStore tracks the commit index: started again, the
 * node uses the new membership and keeps every entry of its log (hashicorp
 * instead applies the log to the FSM and rewrites it as a snapshot). Run it
 * with the same configuration on every surviving server, then start them.
 * Errors: CRAFT_EINVAL (bad configuration), CRAFT_ENOTFOUND (no state to
 * recover: bootstrap instead), store errors. */
int craft_recover_cluster(const craft_config_t *config, craft_log_store_t *logs,
                          craft_stable_store_t *stable, craft_snapshot_store_t *snaps,
                          const craft_configuration_t *configuration);

/* ---- snapshots ---- */

/* Takes a snapshot now (hashicorp Snapshot): the FSM's state at its applied
 * index, persisted to the SnapshotStore, then the log is compacted keeping
 * trailing_logs entries. Errors: CRAFT_ENOTHINGNEW (nothing applied since
 * the last snapshot), CRAFT_EBUSY (a configuration change is not applied
 * yet), CRAFT_ENOTSUP (no snapshot store), store and FSM errors. */
craft_future_t *craft_snapshot(craft_t *r);
/* Opens the snapshot a successful craft_snapshot future produced: *meta
 * (craft_snapshot_meta_free) and *reader (its close). */
int craft_future_snapshot_open(craft_future_t *f, craft_snapshot_meta_t **meta,
                               craft_reader_t **reader);
/* Replaces the cluster's state with an external snapshot (hashicorp Restore;
 * leader only). The data is written to the SnapshotStore at an index past
 * the end of the log (so every follower receives it through InstallSnapshot),
 * restored into the local FSM, then a no-op is committed; the future
 * completes then. `meta` supplies size (-1 = unknown) and index; `reader` is
 * borrowed: read to its end before the future completes, never closed by
 * craft. Commands in flight fail with CRAFT_EABORTED. `timeout_ms` bounds
 * the wait to start (0 = none). Errors: CRAFT_ENOTLEADER, CRAFT_ETRANSFER,
 * CRAFT_ENOTSUP, CRAFT_ECORRUPT (size mismatch), store and FSM errors. */
craft_future_t *craft_restore(craft_t *r, const craft_snapshot_meta_t *meta,
                              craft_reader_t *reader, int64_t timeout_ms);

/* ---- getters: any thread, never block on the run thread ---- */
craft_state_t craft_state(craft_t *r);
/* Current leader as malloc'd copies (free them); CRAFT_ENOTFOUND with NULLs
 * when no leader is known. Either out pointer may be NULL. */
int craft_leader(craft_t *r, char **id, char **address);
/* Monotonic time (craft_now_ns clock) of the last contact from a leader,
 * 0 if never. On a leader: its own heartbeat round. */
int64_t craft_last_contact_ns(craft_t *r);
/* Monotonic clock in ns, the one craft_last_contact_ns uses. */
int64_t craft_now_ns(void);
uint64_t craft_last_index(craft_t *r);
uint64_t craft_commit_index(craft_t *r);
/* Last index applied by the FSM. */
uint64_t craft_applied_index(craft_t *r);
uint64_t craft_current_term(craft_t *r);

#define CRAFT_STATS_MAX_PEERS 16

typedef struct craft_peer_stats {
    char id[64];
    bool voter;
    uint64_t match_index;
    uint64_t next_index;
    int64_t last_contact_ns; /* monotonic; 0 = never */
    uint64_t rtt_us_last;    /* last AppendEntries round trip */
    uint64_t append_rpcs;    /* AppendEntries sent (incl. heartbeats) */
    uint64_t append_failures;
    bool pipelining;
} craft_peer_stats_t;

typedef struct craft_stats {
    craft_state_t state;
    uint64_t term;
    uint64_t last_log_index;
    uint64_t last_log_term;
    uint64_t commit_index;
    uint64_t applied_index;
    uint64_t fsm_pending; /* committed but not yet applied */
    uint64_t last_snapshot_index;
    uint64_t last_snapshot_term;
    uint64_t latest_configuration_index;
    size_t num_peers; /* other servers in the latest configuration */
    int64_t last_contact_ns;
    /* counters */
    uint64_t applies;          /* commands appended as leader */
    uint64_t commits;          /* commit index advances */
    uint64_t elections;        /* elections started (real votes) */
    uint64_t prevotes;         /* pre-vote rounds started */
    uint64_t fsm_applied;      /* entries handed to FSM apply */
    uint64_t rpcs_received;
    /* timings (microseconds): sum and count, so averages are sum/count */
    uint64_t commit_time_us_sum;  /* apply enqueue -> committed (leader) */
    uint64_t commit_time_count;
    uint64_t fsm_apply_time_us_sum; /* time inside FSM apply per batch */
    uint64_t fsm_apply_batches;
    uint64_t fsm_inline_batches;    /* of those, applied inline (apply_inline) */
    uint64_t store_time_us_sum;     /* LogStore store_logs */
    uint64_t store_calls;
    size_t n_peers; /* entries used in peers[] (leader only) */
    craft_peer_stats_t peers[CRAFT_STATS_MAX_PEERS];
} craft_stats_t;

/* Fills *out with a consistent-enough snapshot of gauges and counters. */
void craft_stats(craft_t *r, craft_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif /* CRAFT_H */
