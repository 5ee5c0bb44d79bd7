/*
 * What the in-process transports share (the inmem transport,
 * transports/inmem.c, and the fuzzy harness's network, fuzzy/net.c): a
 * synchronous call handed from one transport to another on the caller's
 * thread, and the receiving side's handler slots.
 *
 * Endpoint. A transport embeds a craft__inproc_t. Its `mu` is the
 * transport's mutex: it guards the handler slots, `closed`, the calls in
 * progress and the transport's pipeline list. Response header strings are
 * interned in it (craft__inproc_intern) so that they stay valid until the
 * endpoint is destroyed.
 *
 * Handlers. Each slot counts invocations in progress by generation;
 * craft__inproc_set_handler waits until none of the previous handler's
 * invocations is in progress, so it must not be called from inside a
 * handler invocation of the same endpoint (it would wait for itself).
 *
 * Calls. A transport embeds a craft__inproc_call_t first in its call
 * object and sets rpc.respond; the rest of its rpc (request, reader) is its
 * own business. The call is reference counted: the caller holds one, the
 * consumer one from craft__inproc_dispatch until respond. The caller
 * registers it with its endpoint (so the endpoint's close cancels it),
 * dispatches it to the peer's handler, waits with a deadline and
 * unregisters it. `destroy` frees the embedding object once the last
 * reference is gone.
 *
 * InstallSnapshot. craft__inproc_call_stream points rpc.reader at a reader
 * embedded in the call: it yields exactly `size` bytes of the caller's
 * stream (or fewer with a cut, then CRAFT_EIO), and once the caller ends
 * the stream (craft__inproc_call_stream_end, when it returns) every read
 * fails with CRAFT_ECLOSED instead of touching the caller's reader.
 *
 * Lock order: endpoint mu -> call mu; intern_mu and reader_mu alone.
 */
#ifndef CRAFT_TRANSPORTS_INPROC_H
#define CRAFT_TRANSPORTS_INPROC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "craft.h"
#include "lib/queue.h"

typedef struct craft__inproc_call craft__inproc_call_t;

typedef struct craft__inproc_slot {
    craft_rpc_handler_fn fn;
    void *arg;
    uint64_t gen;        /* bumped by each set */
    unsigned active_cur; /* invocations of generation `gen` in progress */
    unsigned active_old; /* invocations of older generations in progress */
} craft__inproc_slot_t;

typedef struct craft__inproc {
    pthread_mutex_t mu; /* the transport's */
    /* Under mu. */
    pthread_cond_t handlers_idle;
    craft__inproc_slot_t rpc_handler;
    craft__inproc_slot_t hb_handler;
    bool closed;
    craft__inproc_call_t *calls; /* outgoing calls in progress */
    craft__queue_t pipelines;    /* the transport's pipelines, not yet freed */

    /* Under intern_mu. */
    pthread_mutex_t intern_mu;
    char **interned; /* owned */
    size_t n_interned;
    size_t cap_interned;
} craft__inproc_t;

struct craft__inproc_call {
    craft_rpc_t rpc;  /* first: respond() is handed &rpc */
    atomic_int refs;  /* the caller's, plus the consumer's until respond */
    const void *owner; /* the pipeline sending it, or NULL */
    void (*destroy)(craft__inproc_call_t *c); /* frees the embedding object */

    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    bool responded;
    bool cancelled; /* the origin transport or pipeline closed */
    int err;        /* once responded */
    void *body;     /* once responded: the transport's form of the answer, owned */
    size_t body_len;

    craft__inproc_call_t *prev; /* in the origin's calls, under its mu */
    craft__inproc_call_t *next;

    /* InstallSnapshot: rpc.reader points to `reader`. */
    craft_reader_t reader;
    pthread_mutex_t reader_mu;
    craft_reader_t *source; /* the caller's; NULL when size == 0 */
    bool reader_live;       /* false once the caller returned, or cut */
    int64_t remaining;
    int64_t cut_at; /* the stream breaks after this many bytes; -1: never */
    int64_t done;
    void (*on_cut)(craft__inproc_call_t *c); /* when the cut is hit, no lock held */
};

/* An open endpoint with no handlers. 0 or CRAFT_ENOMEM. */
int craft__inproc_init(craft__inproc_t *e);
/* Frees the interned strings and the locks. Nobody may use `e` any more. */
void craft__inproc_destroy(craft__inproc_t *e);

/* A copy of `s` owned by `e` and valid until `e` is destroyed; NULL when
 * `s` is NULL or on allocation failure (headers may carry NULL strings). */
const char *craft__inproc_intern(craft__inproc_t *e, const char *s);

/* Installs `fn` (NULL: none) in `slot` of `e` and waits for the previous
 * handler's invocations in progress. Takes e->mu. */
void craft__inproc_set_handler(craft__inproc_t *e, craft__inproc_slot_t *slot,
                               craft_rpc_handler_fn fn, void *arg);
/* Clears both handlers, waiting for their invocations (close). */
void craft__inproc_clear_handlers(craft__inproc_t *e);
/* Hands `c` to the heartbeat handler of `peer` (AppendEntries without
 * entries, when set) or its rpc handler, on this thread. CRAFT_EUNREACHABLE
 * when `peer` is closed or has no handler. On success the consumer owns a
 * reference of `c`. */
int craft__inproc_dispatch(craft__inproc_t *peer, craft__inproc_call_t *c);

/* Initialises the call part of a zeroed object: one reference (the
 * caller's). 0 or CRAFT_ENOMEM. */
int craft__inproc_call_init(craft__inproc_call_t *c,
                            void (*destroy)(craft__inproc_call_t *c));
/* Releases the locks of a call whose craft__inproc_call_init succeeded but
 * that was never handed out (its destroy is not run). */
void craft__inproc_call_fini(craft__inproc_call_t *c);
void craft__inproc_call_ref(craft__inproc_call_t *c);
/* Drops a reference; the last frees `body`, the locks, and runs destroy. */
void craft__inproc_call_unref(craft__inproc_call_t *c);

/* Adds `c` to the calls of `e` so that closing `e` cancels it.
 * CRAFT_ECLOSED when `e` is closed. Takes e->mu. */
int craft__inproc_call_register(craft__inproc_t *e, craft__inproc_call_t *c);
/* Removes `c` from the calls of `e`. Takes e->mu. */
void craft__inproc_call_unregister(craft__inproc_t *e, craft__inproc_call_t *c);
/* Cancels `c`: its waits end with CRAFT_ECLOSED. Takes c->mu. */
void craft__inproc_call_cancel(craft__inproc_call_t *c);
/* Cancels every call of `e` sent by `owner` (NULL: every call); e->mu
 * held. */
void craft__inproc_cancel_calls_locked(craft__inproc_t *e, const void *owner);
/* Whether `c` was cancelled. */
bool craft__inproc_call_cancelled(craft__inproc_call_t *c);

/* respond(): records the consumer's answer (`err`, and `body`, owned by
 * the call from now on), wakes the caller and drops the consumer's
 * reference. A second answer breaks the contract: it is ignored (and
 * `body` freed) while the caller still holds the call. */
void craft__inproc_call_respond(craft__inproc_call_t *c, int err, void *body,
                                size_t body_len);
/* Waits until `c` is answered (0: read err / body), cancelled
 * (CRAFT_ECLOSED) or `deadline` (CLOCK_MONOTONIC) passes
 * (CRAFT_ETIMEDOUT). */
int craft__inproc_call_wait(craft__inproc_call_t *c, const struct timespec *deadline);

/* Points c->rpc.reader at `size` bytes of `source`, broken after `cut_at`
 * bytes (-1: never; on_cut, if set, is told once). */
void craft__inproc_call_stream(craft__inproc_call_t *c, craft_reader_t *source,
                               int64_t size, int64_t cut_at);
/* The caller returns: later reads fail with CRAFT_ECLOSED. Waits for a read
 * in progress. */
void craft__inproc_call_stream_end(craft__inproc_call_t *c);

#endif /* CRAFT_TRANSPORTS_INPROC_H */
