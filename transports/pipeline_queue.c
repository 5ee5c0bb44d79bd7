/*
 * The queue behind a craft_pipeline_t: order, window, outcomes, close. See
 * transports/pipeline_queue.h.
 */
#include "transports/pipeline_queue.h"

#include <time.h>

#include "transports/sync.h"

int craft__pq_init(craft__pq_t *q, pthread_mutex_t *mu, size_t window,
                   void (*item_free)(craft__pq_item_t *it))
{
    *q = (craft__pq_t){.mu = mu, .window = window, .item_free = item_free};
    /* Monotonic: the TCP transport waits on it with a deadline. */
    return craft__cond_init_monotonic(&q->cond);
}

/* Removes the oldest item; mu held. */
static craft__pq_item_t *pop_locked(craft__pq_t *q)
{
    craft__pq_item_t *it = q->head;
    q->head = it->next;
    if (q->head == NULL) {
        q->tail = NULL;
    }
    if (q->next_to_send == it) {
        q->next_to_send = it->next;
    }
    q->n_items--;
    return it;
}

void craft__pq_destroy(craft__pq_t *q)
{
    while (q->head != NULL) {
        q->item_free(pop_locked(q));
    }
    pthread_cond_destroy(&q->cond);
}

int craft__pq_reserve_locked(craft__pq_t *q)
{
    while (!q->closed && q->broken == 0 && q->n_items >= q->window) {
        pthread_cond_wait(&q->cond, q->mu);
    }
    return q->closed ? CRAFT_ECLOSED : q->broken;
}

void craft__pq_append_locked(craft__pq_t *q, craft__pq_item_t *it)
{
    it->next = NULL;
    if (q->tail != NULL) {
        q->tail->next = it;
    } else {
        q->head = it;
    }
    q->tail = it;
    if (q->next_to_send == NULL && it->state == CRAFT__PQ_QUEUED) {
        q->next_to_send = it;
    }
    q->n_items++;
}

int craft__pq_push(craft__pq_t *q, craft__pq_item_t *it)
{
    it->state = CRAFT__PQ_QUEUED;
    pthread_mutex_lock(q->mu);
    int rv = craft__pq_reserve_locked(q);
    if (rv == 0) {
        craft__pq_append_locked(q, it);
        pthread_cond_broadcast(&q->cond);
    }
    pthread_mutex_unlock(q->mu);
    return rv;
}

craft__pq_item_t *craft__pq_take(craft__pq_t *q)
{
    pthread_mutex_lock(q->mu);
    while (!q->closed && q->next_to_send == NULL) {
        pthread_cond_wait(&q->cond, q->mu);
    }
    craft__pq_item_t *it = NULL;
    if (!q->closed) { /* unsent requests come back as CRAFT_ECLOSED */
        it = q->next_to_send;
        q->next_to_send = it->next;
        it->state = CRAFT__PQ_SENDING;
        q->sending++;
    }
    pthread_mutex_unlock(q->mu);
    return it;
}

craft__pq_item_t *craft__pq_first_locked(const craft__pq_t *q, craft__pq_state_t state)
{
    craft__pq_item_t *it = q->head;
    while (it != NULL && it->state != state) {
        it = it->next;
    }
    return it;
}

bool craft__pq_done_locked(craft__pq_t *q, craft__pq_item_t *it, int err,
                           const craft_append_entries_resp_t *resp)
{
    if (it->state == CRAFT__PQ_SENDING) {
        q->sending--;
    }
    if (it->abandoned) {
        q->item_free(it); /* its tag went back already */
        return false;
    }
    it->state = CRAFT__PQ_DONE;
    it->err = err;
    if (err == 0) {
        it->resp = *resp;
    }
    return q->fn != NULL;
}

void craft__pq_break_locked(craft__pq_t *q, int err)
{
    if (q->broken == 0) {
        q->broken = err != 0 ? err : CRAFT_EIO;
    }
    for (craft__pq_item_t *it = q->head; it != NULL; it = it->next) {
        if (it->state == CRAFT__PQ_QUEUED || it->state == CRAFT__PQ_SENT) {
            it->state = CRAFT__PQ_DONE;
            it->err = q->broken;
        }
    }
    q->next_to_send = NULL;
    pthread_cond_broadcast(&q->cond); /* appends waiting for room fail */
}

void craft__pq_wake(craft__pq_t *q, bool deliver)
{
    if (deliver) {
        craft__pq_deliver(q);
    } else {
        /* After unlocking: the woken thread would block on mu at once. */
        pthread_cond_broadcast(&q->cond);
    }
}

void craft__pq_complete(craft__pq_t *q, craft__pq_item_t *it, int err,
                        const craft_append_entries_resp_t *resp)
{
    pthread_mutex_lock(q->mu);
    bool deliver = craft__pq_done_locked(q, it, err, resp);
    pthread_mutex_unlock(q->mu);
    craft__pq_wake(q, deliver);
}

void craft__pq_deliver(craft__pq_t *q)
{
    pthread_mutex_lock(q->mu);
    if (q->fn == NULL || q->delivering) {
        pthread_mutex_unlock(q->mu);
        return;
    }
    q->delivering = true;
    craft_pipeline_response_fn fn = q->fn;
    void *arg = q->fn_arg;
    while (!q->closed && q->head != NULL && q->head->state == CRAFT__PQ_DONE) {
        craft__pq_item_t *it = pop_locked(q);
        pthread_mutex_unlock(q->mu);
        fn(arg, it->err, it->err == 0 ? &it->resp : NULL, it->tag);
        q->item_free(it);
        pthread_mutex_lock(q->mu);
    }
    q->delivering = false;
    pthread_mutex_unlock(q->mu);
    pthread_cond_broadcast(&q->cond); /* room in the window; close waits */
}

int craft__pq_next_response(craft__pq_t *q, craft_append_entries_resp_t *resp,
                            void **tag, craft__pq_item_t **done)
{
    *done = NULL;
    pthread_mutex_lock(q->mu);
    if (q->fn != NULL) {
        pthread_mutex_unlock(q->mu);
        return CRAFT_EINVAL; /* responses go to the callback */
    }
    int rv;
    craft__pq_item_t *it;
    for (;;) {
        it = q->head;
        if (q->closed) {
            /* Every unconsumed tag comes back, as failed, so that the
             * consumer can release it; then nothing. */
            *tag = NULL;
            rv = CRAFT_ECLOSED;
            if (it != NULL) {
                pop_locked(q);
                *tag = it->tag;
                if (it->state == CRAFT__PQ_SENDING) {
                    it->abandoned = true;
                } else {
                    *done = it;
                }
            }
            break;
        }
        if (it != NULL && it->state == CRAFT__PQ_DONE) {
            *done = pop_locked(q);
            *tag = it->tag;
            rv = it->err;
            if (rv == 0) {
                *resp = it->resp;
            }
            break;
        }
        pthread_cond_wait(&q->cond, q->mu);
    }
    pthread_mutex_unlock(q->mu);
    if (it != NULL) {
        pthread_cond_broadcast(&q->cond); /* room in the window */
    }
    return rv;
}

int craft__pq_set_response_handler(craft__pq_t *q, craft_pipeline_response_fn fn,
                                   void *arg)
{
    if (fn == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(q->mu);
    int rv = 0;
    if (q->closed) {
        rv = CRAFT_ECLOSED;
    } else if (q->fn != NULL || q->head != NULL) {
        rv = CRAFT_EINVAL; /* once, before the first request */
    } else {
        q->fn = fn;
        q->fn_arg = arg;
    }
    pthread_mutex_unlock(q->mu);
    return rv;
}

bool craft__pq_stop_locked(craft__pq_t *q)
{
    if (q->closed) {
        return false;
    }
    q->closed = true;
    pthread_cond_broadcast(&q->cond);
    return true;
}

void craft__pq_hand_back(craft__pq_t *q)
{
    pthread_mutex_lock(q->mu);
    if (q->fn == NULL) {
        pthread_mutex_unlock(q->mu);
        return;
    }
    /* Let a delivery and the sends in progress finish (a sender's item is
     * not ours to free), then take the rest at once: nothing is sent or
     * matched after this. Delivering ourselves keeps a concurrent close
     * from calling fn alongside us or returning before we are done. */
    while (q->delivering || q->sending > 0) {
        pthread_cond_wait(&q->cond, q->mu);
    }
    q->delivering = true;
    craft_pipeline_response_fn fn = q->fn;
    void *arg = q->fn_arg;
    craft__pq_item_t *rest = q->head;
    q->head = q->tail = q->next_to_send = NULL;
    q->n_items = 0;
    pthread_mutex_unlock(q->mu);
    while (rest != NULL) {
        craft__pq_item_t *next = rest->next;
        fn(arg, CRAFT_ECLOSED, NULL, rest->tag);
        q->item_free(rest);
        rest = next;
    }
    pthread_mutex_lock(q->mu);
    q->delivering = false;
    pthread_mutex_unlock(q->mu);
    pthread_cond_broadcast(&q->cond);
}
