/* Internal: the cluster's structures, shared by cluster.c, verify.c and
 * workload.c. */
#ifndef CRAFT_FUZZY_CLUSTER_H
#define CRAFT_FUZZY_CLUSTER_H

#include <pthread.h>

#include "craft/fuzzy.h"

typedef enum { FZ_EMPTY = 0, FZ_RUNNING, FZ_CRASHED, FZ_REMOVED } fz_node_state_t;

typedef struct fz_ledger_ent {
    bool set;
    uint64_t term;
    uint64_t data_hash;
    uint64_t rolling; /* rolling hash of commands up to this index */
    void *resp;
    char *data;
    size_t len;
    char by[32]; /* first node that applied it */
} fz_ledger_ent_t;

/* One incarnation's FSM and its wrapper. Kept until the cluster is freed:
 * futures completed with an FSM response call release_response when they
 * are freed, possibly after their node crashed. */
typedef struct fz_incarnation {
    craft_fsm_t vt; /* what craft sees */
    struct fz_node *nd;
    craft_fsm_t *user;
    struct fz_incarnation *next;
} fz_incarnation_t;

typedef struct fz_node {
    craft_fuzzy_cluster_t *c;
    size_t slot;
    char id[32], addr[32], dir[560];
    /* Under c->rw (written by the controlling thread only). */
    fz_node_state_t state;
    craft_t *r;
    uint64_t gen;
    /* Controlling thread only. */
    bool member, voter;
    uint64_t incarnation;
    craft_fuzzy_store_t *fstore;
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    craft_snapshot_store_t *snaps;
    craft_transport_t *trans;
    craft_fsm_t *user;        /* the current incarnation's FSM */
    fz_incarnation_t *incs;   /* every incarnation, newest first */
    /* FSM wrapper state: fsm thread, under c->ledger_mu. */
    uint64_t fsm_last, fsm_hash;
    unsigned restores;
    /* craft's log lines */
    pthread_mutex_t ring_mu;
    char **ring;
    size_t ring_head;
} fz_node_t;

struct craft_fuzzy_cluster {
    craft_fuzzy_options_t o;
    char *dir;
    bool own_dir;
    bool verbose;
    bool kv_fsm;
    int64_t scale;
    int64_t t0_us;
    craft_fuzzy_net_t *net;
    craft_config_t conf;
    pthread_rwlock_t rw;
    size_t n;
    fz_node_t nodes[CRAFT_FUZZY_MAX_NODES];
    /* ledger and continuous findings */
    pthread_mutex_t ledger_mu;
    fz_ledger_ent_t *ledger;
    size_t ledger_cap;
    uint64_t max_applied;
    craft_fuzzy_report_t live;
    uint64_t converged_index;
    /* counters for the summary */
    unsigned crashes, transfers, user_snapshots, takeovers;
};

void fz_node_note(fz_node_t *nd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fz_node_open_log(fz_node_t *nd, craft_log_store_t **log, craft_stable_store_t **stable,
                     bool *close_after);

#endif
