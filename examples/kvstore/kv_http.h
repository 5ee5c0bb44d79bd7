/*
 * craftkv's HTTP API (libevent evhttp) on its own event-loop thread.
 *
 * Handlers never block the loop: each craft call returns a future whose
 * completion callback (craft_future_on_done, on a craft thread) queues the
 * request back to the loop and wakes it with event_active. Linearizable
 * reads then wait (polled on the loop) until the FSM applied the read index.
 */
#ifndef CRAFTKV_HTTP_H
#define CRAFTKV_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <craft.h>

#include "kv_fsm.h"

/* A member's addresses known from the command line (--bootstrap
 * ID=RAFT@HTTP): used to redirect to a leader whose HTTP address the FSM
 * does not record yet. */
typedef struct kv_peer_hint {
    char *id;
    char *raft;
    char *http; /* NULL when not given */
} kv_peer_hint_t;

typedef struct kv_server_config {
    const char *id;        /* this node's ServerID */
    const char *raft_addr; /* its transport address */
    const char *http_addr; /* "host:port" to listen on and to advertise */
    kv_fsm_t *fsm;
    const kv_peer_hint_t *hints; /* borrowed for the server's life */
    size_t n_hints;
    craft_logger_fn logger; /* required */
    void *logger_ctx;
    craft_level_t log_level;
} kv_server_config_t;

typedef struct kv_server kv_server_t;

/* Creates the event base and binds the HTTP listener; the loop thread is not
 * started yet. Strings of `cfg` are borrowed for the server's life. Returns
 * 0, CRAFT_EINVAL (bad address), CRAFT_EIO (cannot bind) or CRAFT_ENOMEM. */
int kv_server_new(const kv_server_config_t *cfg, kv_server_t **out);

/* For craft_config.notify_leader (arg = the server): on gaining leadership
 * the server records its HTTP address in the FSM, so that followers can
 * redirect clients to it. Callable before kv_server_start. */
void kv_server_notify_leader(void *arg, bool is_leader);

/* Starts serving with `raft` (borrowed until kv_server_stop). 0 or
 * CRAFT_ENOMEM. */
int kv_server_start(kv_server_t *s, craft_t *raft);

/* Answers every request still pending (503 where no result exists), stops
 * the loop thread and frees the server. Call it once craft_shutdown's
 * future has completed, before craft_free. NULL-safe. */
void kv_server_stop(kv_server_t *s);

#endif /* CRAFTKV_HTTP_H */
