/*
 * Test cluster of craft nodes on the in-memory parts, with a recording FSM.
 * Every helper waits on conditions with generous deadlines, never on sleeps.
 */
#ifndef CRAFT_TEST_CLUSTER_H
#define CRAFT_TEST_CLUSTER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "craft.h"
#include "craft/inmem.h"

#define TC_MAX 7
/* CRAFT_TEST_TIME_SCALE (sanitizer builds) stretches every deadline. */
int64_t tc_time_scale(void);
#define TC_WAIT_MS (20000 * tc_time_scale())

/* Recording FSM: every applied command (index + bytes) in order. */
typedef struct tc_fsm {
    pthread_mutex_t mu;
    size_t n, cap;
    uint64_t *index;
    char **data;
    size_t *len;
    uint64_t hash; /* rolling FNV-1a over the applied data */
    uint64_t last_index;
    bool order_violation; /* an index not above the previous one */
    int restores;         /* snapshots restored into it */
    /* FSM calls in progress, and how many began while another ran (the
     * FSM contract: one call at a time; tc_free asserts none did). */
    atomic_int busy, overlaps;
} tc_fsm_t;

typedef struct tc_node {
    craft_t *r;
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    craft_snapshot_store_t *snaps;
    craft_transport_t *trans;
    tc_fsm_t fsm;
    craft_fsm_t vt;
    char id[32];
    char addr[64];
    bool voter;
    int leader_notifications; /* +1 gained, -1 lost */
} tc_node_t;

/* Optional store factory (default: inmem stores). `dir` is the cluster's
 * temporary directory. */
typedef int (*tc_store_open_fn)(const char *dir, size_t i, craft_log_store_t **log,
                                craft_stable_store_t **stable);

typedef int (*tc_snap_open_fn)(const char *dir, size_t i, craft_snapshot_store_t **out);

/* Transport used by clusters created from now on (default: inmem). With
 * TCP, nodes listen on 127.0.0.1 (OS-chosen ports) and the network calls
 * (tc_cut, tc_partition, ...) are not available. */
typedef enum { TC_INMEM = 0, TC_TCP = 1 } tc_transport_kind_t;
extern tc_transport_kind_t tc_transport_kind;

typedef struct tc_cluster {
    size_t n;
    tc_transport_kind_t transport;
    tc_store_open_fn store_open;
    tc_snap_open_fn snap_open;
    char *dir;
    tc_node_t nodes[TC_MAX];
    craft_config_t conf;
    bool connected[TC_MAX][TC_MAX];
    /* TCP: nodes 0, 2, 4, ... run their transports on this one shared loop
     * (craft_tcp_loop_t, spinning up to 50 us when idle), the others on
     * loops of their own. */
    struct craft_tcp_loop *tcp_loop;
    /* Background threads hold it for reading while they use a node;
     * tc_start / tc_stop / tc_spawn take it for writing. */
    pthread_rwlock_t lock;
} tc_cluster_t;

/* Creates n nodes, the first `voters` of them voters (the rest nonvoters),
 * bootstraps all of them with that configuration and starts them. */
tc_cluster_t *tc_new(size_t n, size_t voters);
/* Same, with a config tweak applied to each node's config before start. */
tc_cluster_t *tc_new_with(size_t n, size_t voters, void (*tweak)(craft_config_t *));
/* Same, with stores from `open` (created in a fresh temp dir). */
tc_cluster_t *tc_new_stores(size_t n, size_t voters, void (*tweak)(craft_config_t *),
                            tc_store_open_fn open);
/* Same, with snapshot stores from `snap` (default: inmem snapshot store). */
tc_cluster_t *tc_new_full(size_t n, size_t voters, void (*tweak)(craft_config_t *),
                          tc_store_open_fn open, tc_snap_open_fn snap);
/* Closes node i's stores and reopens them through the factory (the node
 * must be stopped). */
void tc_reopen_stores(tc_cluster_t *c, size_t i);
void tc_free(tc_cluster_t *c);
/* Adds a brand-new node (empty stores, not bootstrapped, linked to every
 * node) and starts it; returns its index. */
size_t tc_spawn(tc_cluster_t *c);

/* Index of the single leader, waiting up to timeout_ms; -1 if none. */
int tc_leader(tc_cluster_t *c, int64_t timeout_ms);
/* Number of nodes currently in the leader state (running ones). */
int tc_count_leaders(tc_cluster_t *c);
/* Stops node i (craft_free), keeping its stores. */
void tc_stop(tc_cluster_t *c, size_t i);
/* Restarts node i on its stores. */
void tc_start(tc_cluster_t *c, size_t i);

/* Network: cut/restore both directions between i and j. */
void tc_cut(tc_cluster_t *c, size_t i, size_t j);
void tc_link(tc_cluster_t *c, size_t i, size_t j);
/* Isolates node i from everyone. */
void tc_isolate(tc_cluster_t *c, size_t i);
/* Splits into `group` (bitmask) and the rest. */
void tc_partition(tc_cluster_t *c, unsigned group);
void tc_heal(tc_cluster_t *c);

/* Applies "prefix-k" commands on the leader, retrying on leader changes
 * (each command is applied once: after a failure, the fixture settles which
 * ones committed before applying the rest again). Returns the count applied
 * successfully (== n on success). `prefix` must be new to the cluster. */
size_t tc_apply_n(tc_cluster_t *c, const char *prefix, size_t n);
/* Applies one command, retrying on leadership changes (the command is only
 * retried when it certainly was not committed: ENOTLEADER; on
 * ELEADERSHIPLOST it may have been, so callers must tolerate duplicates or
 * check). Returns the completed future; *leader = node that accepted it. */
craft_future_t *tc_apply_one(tc_cluster_t *c, const char *data, int *leader);
/* Waits until every running node's FSM applied at least `count` commands
 * and all hold identical sequences. */
bool tc_wait_converged(tc_cluster_t *c, size_t count, int64_t timeout_ms);
/* true when node i's FSM holds `data` exactly once. */
bool tc_fsm_has(tc_cluster_t *c, size_t i, const char *data);
/* How many times node i's FSM applied `data`. */
size_t tc_fsm_hits(tc_cluster_t *c, size_t i, const char *data);
/* true when node i's FSM applied `data` at log index `index`. */
bool tc_fsm_at(tc_cluster_t *c, size_t i, uint64_t index, const char *data);
size_t tc_fsm_count(tc_cluster_t *c, size_t i);
/* Compares FSM sequences of nodes i and j on their common prefix. */
bool tc_fsm_prefix_equal(tc_cluster_t *c, size_t i, size_t j);

#endif
