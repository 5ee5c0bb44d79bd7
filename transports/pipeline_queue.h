/*
 * The queue behind a craft_pipeline_t (include/craft.h), shared by the
 * transports: requests in order with at most `window` unconsumed, their
 * outcomes handed out in request order (next_response, or the response
 * callback of set_response_handler), and close.
 *
 * A transport embeds a craft__pq_t in its pipeline and a craft__pq_item_t
 * in each of its request items, and keeps to itself how a request is
 * encoded, sent and answered: it takes items to send (craft__pq_take, or by
 * walking the queue under the mutex) and records each outcome
 * (craft__pq_done_locked / craft__pq_complete, craft__pq_break_locked).
 *
 * Locking. Every field is guarded by the mutex the transport hands to
 * craft__pq_init (its pipeline's, or the TCP transport's `mu`); functions
 * named _locked expect it held, the others take it. The response callback
 * and item_free run without it. Callback calls are serialised by
 * `delivering`: one thread at a time hands outcomes to the callback, and
 * close waits for it, so no call is running or follows once close returns.
 *
 * Close. Once stopped (craft__pq_stop_locked, by the pipeline's close or
 * the transport's) nothing more is taken to send or delivered: every
 * request not yet delivered comes back with CRAFT_ECLOSED, from
 * next_response in order (an item a sender still holds, CRAFT__PQ_SENDING,
 * is then marked abandoned and its sender frees it), or in callback mode
 * from close itself, once the sends in progress have completed.
 */
#ifndef CRAFT_TRANSPORTS_PIPELINE_QUEUE_H
#define CRAFT_TRANSPORTS_PIPELINE_QUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "craft.h"

typedef enum {
    CRAFT__PQ_QUEUED,  /* waiting to be sent */
    CRAFT__PQ_SENDING, /* taken by a sender, which holds it without the mutex */
    CRAFT__PQ_SENT,    /* sent; reached only through the queue */
    CRAFT__PQ_DONE     /* outcome in err / resp */
} craft__pq_state_t;

/* The transport's item around `qi`, an embedded craft__pq_item_t. */
#define CRAFT__PQ_CONTAINER(qi, type, member)                                  \
    ((type *)(void *)((char *)(qi) - offsetof(type, member)))

typedef struct craft__pq_item {
    struct craft__pq_item *next;
    void *tag; /* the caller's, handed back with the outcome */
    craft__pq_state_t state;
    bool abandoned; /* popped after close while SENDING: its sender frees it */
    int err;
    craft_append_entries_resp_t resp; /* when DONE with err == 0 */
} craft__pq_item_t;

typedef struct craft__pq {
    pthread_mutex_t *mu; /* the transport's; guards every field below */
    /* With *mu (CLOCK_MONOTONIC): room in the window, an outcome, an item
     * to send, a delivery finished, close. The transport may wait on it
     * for its own conditions too. */
    pthread_cond_t cond;
    size_t window;
    void (*item_free)(craft__pq_item_t *it);

    craft__pq_item_t *head; /* unconsumed requests, oldest first */
    craft__pq_item_t *tail;
    craft__pq_item_t *next_to_send; /* the oldest not taken (craft__pq_take) */
    size_t n_items;
    bool closed;
    int broken; /* 0 or the error every request fails with */
    /* set_response_handler's callback, or NULL: next_response. */
    craft_pipeline_response_fn fn;
    void *fn_arg;
    bool delivering; /* a thread is calling fn */
    size_t sending;  /* items SENDING */
} craft__pq_t;

/* Initialises an empty queue guarded by `mu`. item_free releases an item
 * the queue is done with. 0 or CRAFT_ENOMEM. */
int craft__pq_init(craft__pq_t *q, pthread_mutex_t *mu, size_t window,
                   void (*item_free)(craft__pq_item_t *it));
/* Frees the items left and the condition variable. No thread may use the
 * queue any more (senders included). */
void craft__pq_destroy(craft__pq_t *q);

/* Waits for room in the window. 0, or CRAFT_ECLOSED once closed, or the
 * error that broke the queue. */
int craft__pq_reserve_locked(craft__pq_t *q);
/* Appends `it` (QUEUED or SENT, tag set); after craft__pq_reserve_locked. */
void craft__pq_append_locked(craft__pq_t *q, craft__pq_item_t *it);
/* Reserves, appends a QUEUED `it` and wakes the senders. On error `it` is
 * still the caller's. */
int craft__pq_push(craft__pq_t *q, craft__pq_item_t *it);

/* Waits for a request to send and marks it SENDING; NULL once closed. The
 * caller sends it without the mutex, then calls craft__pq_complete. */
craft__pq_item_t *craft__pq_take(craft__pq_t *q);
/* The oldest item in `state`, or NULL. */
craft__pq_item_t *craft__pq_first_locked(const craft__pq_t *q, craft__pq_state_t state);
/* Records the outcome of `it` (`resp` is read when err == 0), or frees it
 * when abandoned. The caller hands the result to craft__pq_wake once it has
 * released the mutex. */
bool craft__pq_done_locked(craft__pq_t *q, craft__pq_item_t *it, int err,
                           const craft_append_entries_resp_t *resp);
/* Fails every request not yet answered (and every later append) with
 * `err` (CRAFT_EIO when 0) and wakes the waiters; items SENDING stay with
 * their sender. The caller then calls craft__pq_deliver without the mutex. */
void craft__pq_break_locked(craft__pq_t *q, int err);
/* After craft__pq_done_locked, mutex released: with `deliver` (its result:
 * callback mode) runs craft__pq_deliver, else wakes next_response. */
void craft__pq_wake(craft__pq_t *q, bool deliver);
/* craft__pq_done_locked and craft__pq_wake, taking the mutex. */
void craft__pq_complete(craft__pq_t *q, craft__pq_item_t *it, int err,
                        const craft_append_entries_resp_t *resp);
/* Callback mode: hands the answered requests at the head to the callback,
 * in order, unless another thread is doing so (it will take them) or the
 * queue is closed. Mutex not held. */
void craft__pq_deliver(craft__pq_t *q);

/* next_response: waits for the oldest request's outcome and pops it.
 * Returns its err with *tag set and *resp filled when 0; once closed,
 * CRAFT_ECLOSED with the tags left in order, then with *tag NULL. *done is
 * the popped item for the caller to free, or NULL (none, or its sender
 * frees it). CRAFT_EINVAL in callback mode. */
int craft__pq_next_response(craft__pq_t *q, craft_append_entries_resp_t *resp,
                            void **tag, craft__pq_item_t **done);
/* set_response_handler: once, before the first request. 0, CRAFT_EINVAL
 * or CRAFT_ECLOSED. */
int craft__pq_set_response_handler(craft__pq_t *q, craft_pipeline_response_fn fn,
                                   void *arg);
/* Marks the queue closed and wakes every waiter; never waits nor calls
 * back, so a transport's close may call it under its own locks. true the
 * first time. */
bool craft__pq_stop_locked(craft__pq_t *q);
/* The rest of close, after craft__pq_stop_locked and without the mutex: in
 * callback mode, waits for a delivery and the sends in progress, then hands
 * every request left to the callback with CRAFT_ECLOSED, in order. The
 * transport must have made its sends in progress return (cancelled them):
 * this waits for them. */
void craft__pq_hand_back(craft__pq_t *q);

#endif /* CRAFT_TRANSPORTS_PIPELINE_QUEUE_H */
