/* Intrusive doubly-linked queue (libuv's queue.h idea, with named fields). */
#ifndef CRAFT_LIB_QUEUE_H
#define CRAFT_LIB_QUEUE_H

#include <stddef.h>

typedef struct craft__queue {
    struct craft__queue *next;
    struct craft__queue *prev;
} craft__queue_t;

#define CRAFT__QUEUE_DATA(ptr, type, field) \
    ((type *)((char *)(ptr) - offsetof(type, field)))

static inline void craft__queue_init(craft__queue_t *q)
{
    q->next = q;
    q->prev = q;
}

static inline int craft__queue_empty(const craft__queue_t *q)
{
    return q->next == q;
}

static inline craft__queue_t *craft__queue_head(const craft__queue_t *q)
{
    return q->next;
}

static inline void craft__queue_push(craft__queue_t *q, craft__queue_t *e)
{
    e->next = q;
    e->prev = q->prev;
    q->prev->next = e;
    q->prev = e;
}

static inline void craft__queue_insert_head(craft__queue_t *q, craft__queue_t *e)
{
    e->next = q->next;
    e->prev = q;
    q->next->prev = e;
    q->next = e;
}

static inline void craft__queue_remove(craft__queue_t *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->next = e;
    e->prev = e;
}

/* Moves every element of `from` to the end of `to`. */
static inline void craft__queue_move(craft__queue_t *from, craft__queue_t *to)
{
    if (craft__queue_empty(from)) {
        return;
    }
    craft__queue_t *first = from->next, *last = from->prev;
    first->prev = to->prev;
    to->prev->next = first;
    last->next = to;
    to->prev = last;
    craft__queue_init(from);
}

#define CRAFT__QUEUE_FOREACH(e, q) for ((e) = (q)->next; (e) != (q); (e) = (e)->next)

#endif
