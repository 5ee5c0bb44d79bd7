#include "lib/window.h"

#include <stdlib.h>

void craft__window_init(craft__window_t *w)
{
    craft__mutex_init(&w->mu);
    w->ring = NULL;
    w->cap = w->head = w->n = 0;
    w->first = 0;
    w->bytes = 0;
}

static craft__entry_t **slot(craft__window_t *w, size_t i)
{
    return &w->ring[(w->head + i) % w->cap];
}

static void drop_front(craft__window_t *w)
{
    craft__entry_t *e = *slot(w, 0);
    w->bytes -= e->log.len + e->log.ext_len;
    craft__entry_unref(e);
    w->head = (w->head + 1) % w->cap;
    w->n--;
    w->first++;
}

static void drop_back(craft__window_t *w)
{
    craft__entry_t *e = *slot(w, w->n - 1);
    w->bytes -= e->log.len + e->log.ext_len;
    craft__entry_unref(e);
    w->n--;
}

static void clear_locked(craft__window_t *w)
{
    while (w->n > 0) {
        drop_back(w);
    }
    w->head = 0;
    w->first = 0;
}

void craft__window_destroy(craft__window_t *w)
{
    clear_locked(w);
    free(w->ring);
    craft__mutex_destroy(&w->mu);
}

static int grow(craft__window_t *w)
{
    size_t cap = w->cap == 0 ? 256 : w->cap * 2;
    craft__entry_t **ring = malloc(cap * sizeof *ring);
    if (ring == NULL) {
        return CRAFT_ENOMEM;
    }
    for (size_t i = 0; i < w->n; i++) {
        ring[i] = *slot(w, i);
    }
    free(w->ring);
    w->ring = ring;
    w->cap = cap;
    w->head = 0;
    return 0;
}

int craft__window_append(craft__window_t *w, craft__entry_t *e)
{
    int rv = 0;
    craft__mutex_lock(&w->mu);
    if (w->n > 0 && e->log.index != w->first + w->n) {
        clear_locked(w);
    }
    if (w->n == w->cap && (rv = grow(w)) != 0) {
        goto out;
    }
    if (w->n == 0) {
        w->first = e->log.index;
    }
    *slot(w, w->n) = craft__entry_ref(e);
    w->n++;
    w->bytes += e->log.len + e->log.ext_len;
out:
    craft__mutex_unlock(&w->mu);
    return rv;
}

craft__entry_t *craft__window_get(craft__window_t *w, uint64_t index)
{
    craft__entry_t *e = NULL;
    craft__mutex_lock(&w->mu);
    if (w->n > 0 && index >= w->first && index < w->first + w->n) {
        e = craft__entry_ref(*slot(w, (size_t)(index - w->first)));
    }
    craft__mutex_unlock(&w->mu);
    return e;
}

size_t craft__window_get_range(craft__window_t *w, uint64_t lo, size_t max,
                               craft__entry_t **out)
{
    size_t k = 0;
    craft__mutex_lock(&w->mu);
    if (w->n > 0 && lo >= w->first) {
        for (uint64_t i = lo; i < w->first + w->n && k < max; i++) {
            out[k++] = craft__entry_ref(*slot(w, (size_t)(i - w->first)));
        }
    }
    craft__mutex_unlock(&w->mu);
    return k;
}

void craft__window_truncate_from(craft__window_t *w, uint64_t index)
{
    craft__mutex_lock(&w->mu);
    while (w->n > 0 && w->first + w->n - 1 >= index) {
        drop_back(w);
    }
    craft__mutex_unlock(&w->mu);
}

void craft__window_trim_to(craft__window_t *w, uint64_t index)
{
    craft__mutex_lock(&w->mu);
    while (w->n > 0 && w->first <= index) {
        drop_front(w);
    }
    craft__mutex_unlock(&w->mu);
}

void craft__window_clear(craft__window_t *w)
{
    craft__mutex_lock(&w->mu);
    clear_locked(w);
    craft__mutex_unlock(&w->mu);
}

size_t craft__window_len(craft__window_t *w)
{
    craft__mutex_lock(&w->mu);
    size_t n = w->n;
    craft__mutex_unlock(&w->mu);
    return n;
}

size_t craft__window_bytes(craft__window_t *w)
{
    craft__mutex_lock(&w->mu);
    size_t n = w->bytes;
    craft__mutex_unlock(&w->mu);
    return n;
}

uint64_t craft__window_first(craft__window_t *w)
{
    craft__mutex_lock(&w->mu);
    uint64_t f = w->n > 0 ? w->first : 0;
    craft__mutex_unlock(&w->mu);
    return f;
}
