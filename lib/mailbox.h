/*
 * Mailbox: the one inter-thread queue (DESIGN §2). A mutex, a condvar and an
 * intrusive FIFO of messages. Replaces Go's channels + select: a loop waits
 * on one mailbox with a deadline equal to its next timer.
 */
#ifndef CRAFT_LIB_MAILBOX_H
#define CRAFT_LIB_MAILBOX_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/queue.h"
#include "lib/runtime.h"

/* Embed in every message; `type` is the receiver's tag. */
typedef struct craft__msg {
    craft__queue_t link;
    int type;
} craft__msg_t;

typedef struct craft__mailbox {
    craft__mutex_t mu;
    craft__cond_t cond;
    craft__queue_t q;
    size_t len;
    bool closed;
} craft__mailbox_t;

void craft__mailbox_init(craft__mailbox_t *mb);
/* Requires a closed (or never used) and drained mailbox. */
void craft__mailbox_destroy(craft__mailbox_t *mb);
/* Appends `m`. Returns 0, or CRAFT_ESHUTDOWN when closed (the caller keeps
 * ownership of `m`). */
int craft__mailbox_post(craft__mailbox_t *mb, craft__msg_t *m);
/* Takes the oldest message, waiting until one arrives or the monotonic clock
 * reaches deadline_ns (< 0: forever, 0: don't wait). Returns NULL on
 * timeout, or when closed and empty. */
craft__msg_t *craft__mailbox_wait(craft__mailbox_t *mb, int64_t deadline_ns);
/* Refuses further posts and wakes waiters. Messages already queued stay and
 * can be taken with craft__mailbox_wait(mb, 0). Idempotent. */
void craft__mailbox_close(craft__mailbox_t *mb);
size_t craft__mailbox_len(craft__mailbox_t *mb);
/* true once craft__mailbox_close was called. */
bool craft__mailbox_closed(craft__mailbox_t *mb);
/* Open with nothing queued (one lock for both). */
bool craft__mailbox_idle(craft__mailbox_t *mb);

#endif
