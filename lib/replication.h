/*
 * Leader-side replication to one peer (hashicorp replication.go): a
 * replication thread (replicate_to with back-off, then pipelined
 * AppendEntries), a heartbeat thread, and a pipeline decode thread while
 * pipelining. Created and stopped by the run thread; threads report through
 * atomics and coalesced signals to run.
 */
#ifndef CRAFT_LIB_REPLICATION_H
#define CRAFT_LIB_REPLICATION_H

#include "lib/raft.h"

struct craft__repl {
    craft__msg_t exit_msg; /* posted to run when both threads exited */
    craft_t *r;
    char *id;
    char *addr;
    atomic_bool voter;
    uint64_t term;
    craft__commitment_t *commitment;

    craft__mutex_t mu;
    craft__cond_t cond;    /* the replication thread waits here */
    craft__cond_t hb_cond; /* the heartbeat thread waits here */
    /* under mu */
    bool stop;
    bool trigger;
    uint64_t hb_epoch;   /* newest verify epoch asking for a heartbeat */
    int alive;           /* threads still running */
    size_t inflight;     /* pipelined requests awaiting a response */
    bool pipe_failed;
    bool pipe_ready;     /* pipeline up: the run thread may send */
    bool sending;        /* someone holds the sender role */
    uint64_t pipe_next;  /* next index to send in pipeline mode */

    _Atomic uint64_t next_index;
    _Atomic uint64_t match_index;
    _Atomic uint64_t acked_epoch;
    _Atomic int64_t last_contact_ns;
    _Atomic uint64_t st_rtt_us, st_rpcs, st_failures;
    atomic_bool pipelining;

    craft__thread_t repl_thread;
    craft__thread_t hb_thread;
    craft_pipeline_t *pipe;
    craft__thread_t decode_thread;
    craft_log_t *logs;      /* the sender's request buffers */
    craft__entry_t **ents;
};

/* Starts replicating to `s` for `term`, beginning at next_index. Takes a
 * commitment reference. NULL on failure (logged). */
craft__repl_t *craft__repl_start(craft_t *r, const craft_server_t *s, uint64_t term,
                                 craft__commitment_t *cm, uint64_t next_index);
/* New entries are available. */
void craft__repl_trigger(craft__repl_t *p);
/* New entries are available: sends them from the calling (run) thread when
 * the pipeline is up and has room, else triggers the replication thread. */
void craft__repl_replicate(craft__repl_t *p);
/* Sends a heartbeat now, for verify epoch `epoch`. */
void craft__repl_heartbeat_now(craft__repl_t *p, uint64_t epoch);
/* Asks the threads to exit; they post exit_msg when done. */
void craft__repl_stop(craft__repl_t *p);
/* Joins the threads and frees (after exit_msg was received). */
void craft__repl_free(craft__repl_t *p);

#endif
