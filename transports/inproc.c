/*
 * Synchronous in-process calls and handler slots, shared by the inmem
 * transport and the fuzzy harness's network. See transports/inproc.h.
 */
#include "transports/inproc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "transports/sync.h"

/* ------------------------------------------------------------------------ */
/* Endpoint                                                                  */
/* ------------------------------------------------------------------------ */

int craft__inproc_init(craft__inproc_t *e)
{
    memset(e, 0, sizeof *e);
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        goto err;
    }
    if (pthread_cond_init(&e->handlers_idle, NULL) != 0) {
        goto err_after_mu;
    }
    if (pthread_mutex_init(&e->intern_mu, NULL) != 0) {
        goto err_after_cond;
    }
    craft__queue_init(&e->pipelines);
    return 0;

err_after_cond:
    pthread_cond_destroy(&e->handlers_idle);
err_after_mu:
    pthread_mutex_destroy(&e->mu);
err:
    return CRAFT_ENOMEM;
}

void craft__inproc_destroy(craft__inproc_t *e)
{
    for (size_t i = 0; i < e->n_interned; i++) {
        free(e->interned[i]);
    }
    free(e->interned);
    pthread_mutex_destroy(&e->intern_mu);
    pthread_cond_destroy(&e->handlers_idle);
    pthread_mutex_destroy(&e->mu);
}

const char *craft__inproc_intern(craft__inproc_t *e, const char *s)
{
    if (s == NULL) {
        return NULL;
    }
    const char *out = NULL;
    pthread_mutex_lock(&e->intern_mu);
    for (size_t i = 0; i < e->n_interned; i++) {
        if (strcmp(e->interned[i], s) == 0) {
            out = e->interned[i];
            goto done;
        }
    }
    if (e->n_interned == e->cap_interned) {
        size_t cap = e->cap_interned == 0 ? 16 : e->cap_interned * 2;
        char **p = realloc(e->interned, cap * sizeof *p);
        if (p == NULL) {
            goto done;
        }
        e->interned = p;
        e->cap_interned = cap;
    }
    char *copy = strdup(s);
    if (copy != NULL) {
        e->interned[e->n_interned++] = copy;
    }
    out = copy;
done:
    pthread_mutex_unlock(&e->intern_mu);
    return out;
}

/* ------------------------------------------------------------------------ */
/* Handlers                                                                  */
/* ------------------------------------------------------------------------ */

void craft__inproc_set_handler(craft__inproc_t *e, craft__inproc_slot_t *slot,
                               craft_rpc_handler_fn fn, void *arg)
{
    pthread_mutex_lock(&e->mu);
    /* A previous set may still be draining its predecessor: let it finish
     * so that active_old only ever counts one older generation. */
    while (slot->active_old > 0) {
        pthread_cond_wait(&e->handlers_idle, &e->mu);
    }
    slot->active_old = slot->active_cur;
    slot->active_cur = 0;
    slot->gen++;
    slot->fn = fn;
    slot->arg = arg;
    while (slot->active_old > 0) {
        pthread_cond_wait(&e->handlers_idle, &e->mu);
    }
    pthread_mutex_unlock(&e->mu);
}

void craft__inproc_clear_handlers(craft__inproc_t *e)
{
    craft__inproc_set_handler(e, &e->rpc_handler, NULL, NULL);
    craft__inproc_set_handler(e, &e->hb_handler, NULL, NULL);
}

int craft__inproc_dispatch(craft__inproc_t *peer, craft__inproc_call_t *c)
{
    pthread_mutex_lock(&peer->mu);
    craft__inproc_slot_t *slot = NULL;
    if (!peer->closed) {
        if (c->rpc.type == CRAFT_RPC_APPEND_ENTRIES &&
            c->rpc.req.append_entries.n_entries == 0 &&
            peer->hb_handler.fn != NULL) {
            slot = &peer->hb_handler;
        } else if (peer->rpc_handler.fn != NULL) {
            slot = &peer->rpc_handler;
        }
    }
    if (slot == NULL) {
        pthread_mutex_unlock(&peer->mu);
        return CRAFT_EUNREACHABLE;
    }
    craft_rpc_handler_fn fn = slot->fn;
    void *arg = slot->arg;
    uint64_t gen = slot->gen;
    slot->active_cur++;
    pthread_mutex_unlock(&peer->mu);

    craft__inproc_call_ref(c);
    fn(arg, &c->rpc);

    pthread_mutex_lock(&peer->mu);
    if (gen == slot->gen) {
        slot->active_cur--;
    } else {
        slot->active_old--;
    }
    pthread_cond_broadcast(&peer->handlers_idle);
    pthread_mutex_unlock(&peer->mu);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Calls                                                                     */
/* ------------------------------------------------------------------------ */

int craft__inproc_call_init(craft__inproc_call_t *c,
                            void (*destroy)(craft__inproc_call_t *c))
{
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        goto err;
    }
    if (craft__cond_init_monotonic(&c->cond) != 0) {
        goto err_after_mu;
    }
    if (pthread_mutex_init(&c->reader_mu, NULL) != 0) {
        goto err_after_cond;
    }
    atomic_init(&c->refs, 1);
    c->destroy = destroy;
    c->cut_at = -1;
    return 0;

err_after_cond:
    pthread_cond_destroy(&c->cond);
err_after_mu:
    pthread_mutex_destroy(&c->mu);
err:
    return CRAFT_ENOMEM;
}

void craft__inproc_call_fini(craft__inproc_call_t *c)
{
    pthread_mutex_destroy(&c->reader_mu);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->mu);
}

void craft__inproc_call_ref(craft__inproc_call_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void craft__inproc_call_unref(craft__inproc_call_t *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    free(c->body);
    craft__inproc_call_fini(c);
    c->destroy(c);
}

int craft__inproc_call_register(craft__inproc_t *e, craft__inproc_call_t *c)
{
    pthread_mutex_lock(&e->mu);
    if (e->closed) {
        pthread_mutex_unlock(&e->mu);
        return CRAFT_ECLOSED;
    }
    c->prev = NULL;
    c->next = e->calls;
    if (e->calls != NULL) {
        e->calls->prev = c;
    }
    e->calls = c;
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void craft__inproc_call_unregister(craft__inproc_t *e, craft__inproc_call_t *c)
{
    pthread_mutex_lock(&e->mu);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        e->calls = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    pthread_mutex_unlock(&e->mu);
}

void craft__inproc_call_cancel(craft__inproc_call_t *c)
{
    pthread_mutex_lock(&c->mu);
    c->cancelled = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

void craft__inproc_cancel_calls_locked(craft__inproc_t *e, const void *owner)
{
    for (craft__inproc_call_t *c = e->calls; c != NULL; c = c->next) {
        if (owner == NULL || c->owner == owner) {
            craft__inproc_call_cancel(c);
        }
    }
}

bool craft__inproc_call_cancelled(craft__inproc_call_t *c)
{
    pthread_mutex_lock(&c->mu);
    bool cancelled = c->cancelled;
    pthread_mutex_unlock(&c->mu);
    return cancelled;
}

void craft__inproc_call_respond(craft__inproc_call_t *c, int err, void *body,
                                size_t body_len)
{
    pthread_mutex_lock(&c->mu);
    if (c->responded) {
        /* A second respond breaks the contract; ignored while the caller
         * still holds the call (afterwards the call may be gone). */
        pthread_mutex_unlock(&c->mu);
        free(body);
        return;
    }
    c->responded = true;
    c->err = err;
    c->body = body;
    c->body_len = body_len;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
    craft__inproc_call_unref(c);
}

int craft__inproc_call_wait(craft__inproc_call_t *c, const struct timespec *deadline)
{
    pthread_mutex_lock(&c->mu);
    while (!c->responded && !c->cancelled) {
        if (pthread_cond_timedwait(&c->cond, &c->mu, deadline) == ETIMEDOUT) {
            break;
        }
    }
    int rv;
    if (c->responded) {
        rv = 0;
    } else if (c->cancelled) {
        rv = CRAFT_ECLOSED;
    } else {
        rv = CRAFT_ETIMEDOUT;
    }
    pthread_mutex_unlock(&c->mu);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* InstallSnapshot stream                                                    */
/* ------------------------------------------------------------------------ */

/* reader->read: the caller's stream, cut to `remaining` bytes (or at
 * cut_at), and dead once the caller returned. */
static int64_t call_reader_read(void *ctx, void *buf, size_t len)
{
    craft__inproc_call_t *c = ctx;
    if (buf == NULL || len == 0) {
        return CRAFT_EINVAL;
    }
    int64_t n;
    pthread_mutex_lock(&c->reader_mu);
    if (!c->reader_live) {
        n = CRAFT_ECLOSED;
    } else if (c->remaining == 0) {
        n = 0;
    } else {
        if ((uint64_t)len > (uint64_t)c->remaining) {
            len = (size_t)c->remaining;
        }
        if (c->cut_at >= 0 && c->done + (int64_t)len > c->cut_at) {
            /* The connection breaks in the middle of the stream. */
            len = (size_t)(c->cut_at - c->done);
            if (len == 0) {
                c->reader_live = false;
                pthread_mutex_unlock(&c->reader_mu);
                if (c->on_cut != NULL) {
                    c->on_cut(c);
                }
                return CRAFT_EIO;
            }
        }
        n = c->source->read(c->source->ctx, buf, len);
        if (n == 0) {
            n = CRAFT_EIO; /* the stream ended before `size` bytes */
        } else if (n > (int64_t)len) {
            n = CRAFT_EPROTOCOL; /* a broken reader */
        } else if (n > 0) {
            c->remaining -= n;
            c->done += n;
        }
    }
    pthread_mutex_unlock(&c->reader_mu);
    return n;
}

static void call_reader_close(void *ctx)
{
    (void)ctx; /* the caller owns and closes its reader */
}

void craft__inproc_call_stream(craft__inproc_call_t *c, craft_reader_t *source,
                               int64_t size, int64_t cut_at)
{
    c->source = source;
    c->reader_live = true;
    c->remaining = size;
    c->cut_at = cut_at;
    c->done = 0;
    c->reader.ctx = c;
    c->reader.read = call_reader_read;
    c->reader.close = call_reader_close;
    c->rpc.reader = &c->reader;
}

void craft__inproc_call_stream_end(craft__inproc_call_t *c)
{
    pthread_mutex_lock(&c->reader_mu);
    c->reader_live = false;
    c->source = NULL;
    pthread_mutex_unlock(&c->reader_mu);
}
