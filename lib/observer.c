/*
 * Observers (hashicorp observer.go). Each observer has a bounded queue and a
 * delivery thread; emitters copy the observation in. Non-blocking observers
 * drop when full (and count it), blocking ones make the emitter wait.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/raft.h"

#define OBS_QUEUE 64

typedef struct obs_item {
    craft_observation_t o;
    char *strs[6]; /* owned copies behind the observation's strings */
} obs_item_t;

struct craft_observer {
    craft__queue_t link; /* in r->observers, under r->obs_mu */
    craft_t *r;
    bool (*filter)(void *arg, const craft_observation_t *o);
    void (*notify)(void *arg, const craft_observation_t *o);
    void *arg;
    bool blocking;
    craft__mutex_t mu;
    craft__cond_t cond;
    obs_item_t items[OBS_QUEUE];
    size_t head, n;
    bool closing;
    _Atomic uint64_t observed, dropped;
    craft__thread_t thread;
};

static void item_free(obs_item_t *it)
{
    for (size_t i = 0; i < 6; i++) {
        free(it->strs[i]);
        it->strs[i] = NULL;
    }
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static void item_copy(obs_item_t *it, const craft_observation_t *o)
{
    it->o = *o;
    it->o.leader_id = it->strs[0] = dup_or_null(o->leader_id);
    it->o.leader_address = it->strs[1] = dup_or_null(o->leader_address);
    it->o.peer.id = it->strs[2] = dup_or_null(o->peer.id);
    it->o.peer.address = it->strs[3] = dup_or_null(o->peer.address);
    it->o.candidate_id = it->strs[4] = dup_or_null(o->candidate_id);
    it->o.candidate_address = it->strs[5] = dup_or_null(o->candidate_address);
}

static void *deliver_main(void *arg)
{
    craft_observer_t *ob = arg;
    craft__mutex_lock(&ob->mu);
    for (;;) {
        while (ob->n == 0 && !ob->closing) {
            craft__cond_wait(&ob->cond, &ob->mu);
        }
        if (ob->closing) {
            break;
        }
        obs_item_t it = ob->items[ob->head];
        ob->head = (ob->head + 1) % OBS_QUEUE;
        ob->n--;
        craft__cond_broadcast(&ob->cond);
        craft__mutex_unlock(&ob->mu);
        ob->notify(ob->arg, &it.o);
        atomic_fetch_add(&ob->observed, 1);
        item_free(&it);
        craft__mutex_lock(&ob->mu);
    }
    craft__mutex_unlock(&ob->mu);
    return NULL;
}

static void enqueue(craft_observer_t *ob, const craft_observation_t *o)
{
    craft__mutex_lock(&ob->mu);
    while (ob->blocking && ob->n == OBS_QUEUE && !ob->closing) {
        craft__cond_wait(&ob->cond, &ob->mu);
    }
    if (ob->closing || ob->n == OBS_QUEUE) {
        atomic_fetch_add(&ob->dropped, 1);
    } else {
        item_copy(&ob->items[(ob->head + ob->n) % OBS_QUEUE], o);
        ob->n++;
        craft__cond_broadcast(&ob->cond);
    }
    craft__mutex_unlock(&ob->mu);
}

void craft__observe(craft_t *r, const craft_observation_t *o)
{
    if (atomic_load(&r->n_observers) == 0) {
        return;
    }
    /* obs_mu is held while delivering into queues, so deregistration waits
     * for emitters; a blocking emitter is released by `closing`. */
    craft__mutex_lock(&r->obs_mu);
    craft__queue_t *e;
    CRAFT__QUEUE_FOREACH(e, &r->observers)
    {
        craft_observer_t *ob = CRAFT__QUEUE_DATA(e, craft_observer_t, link);
        if (ob->filter == NULL || ob->filter(ob->arg, o)) {
            enqueue(ob, o);
        }
    }
    craft__mutex_unlock(&r->obs_mu);
}

int craft_register_observer(craft_t *r, bool (*filter)(void *, const craft_observation_t *),
                            void (*notify)(void *, const craft_observation_t *), void *arg,
                            bool blocking, craft_observer_t **out)
{
    if (r == NULL || notify == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    if (atomic_load(&r->shutting_down)) {
        return CRAFT_ESHUTDOWN;
    }
    craft_observer_t *ob = calloc(1, sizeof *ob);
    if (ob == NULL) {
        return CRAFT_ENOMEM;
    }
    ob->r = r;
    ob->filter = filter;
    ob->notify = notify;
    ob->arg = arg;
    ob->blocking = blocking;
    craft__mutex_init(&ob->mu);
    craft__cond_init(&ob->cond);
    if (craft__thread_start(&ob->thread, "craft-observer", deliver_main, ob) != 0) {
        craft__cond_destroy(&ob->cond);
        craft__mutex_destroy(&ob->mu);
        free(ob);
        return CRAFT_ENOMEM;
    }
    craft__mutex_lock(&r->obs_mu);
    craft__queue_push(&r->observers, &ob->link);
    atomic_fetch_add(&r->n_observers, 1);
    craft__mutex_unlock(&r->obs_mu);
    *out = ob;
    return 0;
}

static void observer_close(craft_observer_t *ob)
{
    craft__mutex_lock(&ob->mu);
    ob->closing = true;
    craft__cond_broadcast(&ob->cond);
    craft__mutex_unlock(&ob->mu);
}

static void observer_free(craft_observer_t *ob)
{
    craft__thread_join(&ob->thread);
    while (ob->n > 0) {
        item_free(&ob->items[ob->head]);
        ob->head = (ob->head + 1) % OBS_QUEUE;
        ob->n--;
    }
    craft__cond_destroy(&ob->cond);
    craft__mutex_destroy(&ob->mu);
    free(ob);
}

void craft_deregister_observer(craft_t *r, craft_observer_t *ob)
{
    if (r == NULL || ob == NULL) {
        return;
    }
    /* Release a blocked emitter first: it holds obs_mu. */
    observer_close(ob);
    craft__mutex_lock(&r->obs_mu);
    craft__queue_remove(&ob->link);
    atomic_fetch_sub(&r->n_observers, 1);
    craft__mutex_unlock(&r->obs_mu);
    observer_free(ob);
}

void craft__observers_free(craft_t *r)
{
    craft__mutex_lock(&r->obs_mu);
    while (!craft__queue_empty(&r->observers)) {
        craft__queue_t *e = craft__queue_head(&r->observers);
        craft__queue_remove(e);
        craft_observer_t *ob = CRAFT__QUEUE_DATA(e, craft_observer_t, link);
        observer_close(ob);
        craft__mutex_unlock(&r->obs_mu);
        observer_free(ob);
        craft__mutex_lock(&r->obs_mu);
    }
    atomic_store(&r->n_observers, 0);
    craft__mutex_unlock(&r->obs_mu);
}

uint64_t craft_observer_observed(craft_observer_t *o)
{
    return o != NULL ? atomic_load(&o->observed) : 0;
}

uint64_t craft_observer_dropped(craft_observer_t *o)
{
    return o != NULL ? atomic_load(&o->dropped) : 0;
}
