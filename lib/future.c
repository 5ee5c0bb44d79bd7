#include "lib/future.h"

#include <stdlib.h>
#include <string.h>

#include "lib/runtime.h"

craft_future_t *craft__future_new(craft__future_kind_t kind)
{
    craft_future_t *f = calloc(1, sizeof *f);
    if (f == NULL) {
        return NULL;
    }
    craft__mutex_init(&f->mu);
    craft__cond_init(&f->cond);
    craft__queue_init(&f->link);
    f->refs = 2;
    f->kind = kind;
    f->enqueued_ns = craft__now_ns();
    return f;
}

static void future_destroy(craft_future_t *f)
{
    if (f->response != NULL && f->fsm != NULL && f->fsm->release_response != NULL) {
        f->fsm->release_response(f->fsm->ctx, f->response);
    }
    craft_configuration_free(&f->configuration);
    craft__entry_unref(f->entry);
    free(f->srv_id);
    free(f->srv_addr);
    craft__cond_destroy(&f->cond);
    craft__mutex_destroy(&f->mu);
    free(f);
}

static void future_unref(craft_future_t *f)
{
    craft__mutex_lock(&f->mu);
    int refs = --f->refs;
    craft__mutex_unlock(&f->mu);
    if (refs == 0) {
        future_destroy(f);
    }
}

bool craft__future_complete(craft_future_t *f, int err)
{
    craft__mutex_lock(&f->mu);
    if (f->done) {
        craft__mutex_unlock(&f->mu);
        return false;
    }
    f->done = true;
    f->err = err;
    void (*cb)(craft_future_t *, void *) = f->cb;
    void *arg = f->cb_arg;
    f->cb = NULL;
    /* The payload is no longer needed once complete. */
    craft__entry_t *entry = f->entry;
    f->entry = NULL;
    craft__mutex_unlock(&f->mu);
    /* Signalled after unlocking, so the waiter does not wake into a held
     * mutex; our reference keeps the future alive until future_unref. */
    craft__cond_broadcast(&f->cond);
    craft__entry_unref(entry);
    if (cb != NULL) {
        cb(f, arg);
    }
    future_unref(f);
    return true;
}

craft_future_t *craft__future_failed(int err)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    if (f != NULL) {
        craft__future_complete(f, err);
    }
    return f;
}

int craft_future_wait(craft_future_t *f)
{
    if (f == NULL) {
        return CRAFT_EINVAL;
    }
    craft__mutex_lock(&f->mu);
    while (!f->done) {
        craft__cond_wait(&f->cond, &f->mu);
    }
    int err = f->err;
    craft__mutex_unlock(&f->mu);
    return err;
}

int craft_future_wait_for(craft_future_t *f, int64_t timeout_ms)
{
    if (f == NULL) {
        return CRAFT_EINVAL;
    }
    /* Clamp so that now + timeout cannot overflow (a year is plenty). */
    const int64_t max_ms = (int64_t)365 * 24 * 3600 * 1000;
    if (timeout_ms < 0) {
        timeout_ms = 0;
    } else if (timeout_ms > max_ms) {
        timeout_ms = max_ms;
    }
    int64_t deadline = craft__now_ns() + CRAFT__MS(timeout_ms);
    craft__mutex_lock(&f->mu);
    while (!f->done && craft__now_ns() < deadline) {
        craft__cond_wait_until(&f->cond, &f->mu, deadline);
    }
    int err = f->done ? f->err : CRAFT_EPENDING;
    craft__mutex_unlock(&f->mu);
    return err;
}

bool craft_future_done(craft_future_t *f)
{
    if (f == NULL) {
        return false;
    }
    craft__mutex_lock(&f->mu);
    bool done = f->done;
    craft__mutex_unlock(&f->mu);
    return done;
}

uint64_t craft_future_index(craft_future_t *f)
{
    if (f == NULL) {
        return 0;
    }
    craft__mutex_lock(&f->mu);
    uint64_t index = f->done ? f->index : 0;
    craft__mutex_unlock(&f->mu);
    return index;
}

void *craft_future_response(craft_future_t *f)
{
    if (f == NULL) {
        return NULL;
    }
    craft__mutex_lock(&f->mu);
    void *resp = f->done ? f->response : NULL;
    craft__mutex_unlock(&f->mu);
    return resp;
}

const craft_configuration_t *craft_future_configuration(craft_future_t *f)
{
    if (f == NULL) {
        return NULL;
    }
    craft__mutex_lock(&f->mu);
    const craft_configuration_t *c =
        (f->done && f->err == 0 && f->has_configuration) ? &f->configuration : NULL;
    craft__mutex_unlock(&f->mu);
    return c;
}

void craft_future_on_done(craft_future_t *f, void (*cb)(craft_future_t *, void *), void *arg)
{
    if (f == NULL) {
        return;
    }
    craft__mutex_lock(&f->mu);
    if (!f->done) {
        f->cb = cb;
        f->cb_arg = arg;
        craft__mutex_unlock(&f->mu);
        return;
    }
    craft__mutex_unlock(&f->mu);
    if (cb != NULL) {
        cb(f, arg);
    }
}

void craft_future_free(craft_future_t *f)
{
    if (f != NULL) {
        future_unref(f);
    }
}
