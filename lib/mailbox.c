#include "lib/mailbox.h"

#include "craft.h"

void craft__mailbox_init(craft__mailbox_t *mb)
{
    craft__mutex_init(&mb->mu);
    craft__cond_init(&mb->cond);
    craft__queue_init(&mb->q);
    mb->len = 0;
    mb->closed = false;
}

void craft__mailbox_destroy(craft__mailbox_t *mb)
{
    craft__cond_destroy(&mb->cond);
    craft__mutex_destroy(&mb->mu);
}

int craft__mailbox_post(craft__mailbox_t *mb, craft__msg_t *m)
{
    craft__mutex_lock(&mb->mu);
    if (mb->closed) {
        craft__mutex_unlock(&mb->mu);
        return CRAFT_ESHUTDOWN;
    }
    craft__queue_push(&mb->q, &m->link);
    mb->len++;
    craft__mutex_unlock(&mb->mu);
    /* After unlocking: the woken reader does not block on our mutex. A
     * mailbox outlives its posters (craft_free joins them first). */
    craft__cond_signal(&mb->cond);
    return 0;
}

craft__msg_t *craft__mailbox_wait(craft__mailbox_t *mb, int64_t deadline_ns)
{
    craft__msg_t *m = NULL;
    craft__mutex_lock(&mb->mu);
    while (craft__queue_empty(&mb->q) && !mb->closed && deadline_ns != 0) {
        if (deadline_ns > 0 && craft__now_ns() >= deadline_ns) {
            break;
        }
        craft__cond_wait_until(&mb->cond, &mb->mu, deadline_ns);
    }
    if (!craft__queue_empty(&mb->q)) {
        craft__queue_t *e = craft__queue_head(&mb->q);
        craft__queue_remove(e);
        mb->len--;
        m = CRAFT__QUEUE_DATA(e, craft__msg_t, link);
    }
    craft__mutex_unlock(&mb->mu);
    return m;
}

void craft__mailbox_close(craft__mailbox_t *mb)
{
    craft__mutex_lock(&mb->mu);
    mb->closed = true;
    craft__cond_broadcast(&mb->cond);
    craft__mutex_unlock(&mb->mu);
}

size_t craft__mailbox_len(craft__mailbox_t *mb)
{
    craft__mutex_lock(&mb->mu);
    size_t n = mb->len;
    craft__mutex_unlock(&mb->mu);
    return n;
}

bool craft__mailbox_closed(craft__mailbox_t *mb)
{
    craft__mutex_lock(&mb->mu);
    bool closed = mb->closed;
    craft__mutex_unlock(&mb->mu);
    return closed;
}

bool craft__mailbox_idle(craft__mailbox_t *mb)
{
    craft__mutex_lock(&mb->mu);
    bool idle = mb->len == 0 && !mb->closed;
    craft__mutex_unlock(&mb->mu);
    return idle;
}
