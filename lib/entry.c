#include "lib/entry.h"

#include <stdlib.h>
#include <string.h>

craft__entry_t *craft__entry_new(craft_log_type_t type, const void *data, size_t len,
                                 const void *ext, size_t ext_len)
{
    craft__entry_t *e = malloc(sizeof *e + len + ext_len);
    if (e == NULL) {
        return NULL;
    }
    atomic_init(&e->refs, 1);
    memset(&e->log, 0, sizeof e->log);
    e->log.type = type;
    char *p = (char *)(e + 1);
    if (len > 0) {
        memcpy(p, data, len);
        e->log.data = p;
        e->log.len = len;
    }
    if (ext_len > 0) {
        memcpy(p + len, ext, ext_len);
        e->log.ext = p + len;
        e->log.ext_len = ext_len;
    }
    return e;
}

craft__entry_t *craft__entry_from_log(const craft_log_t *log)
{
    craft__entry_t *e = craft__entry_new(log->type, log->data, log->len, log->ext, log->ext_len);
    if (e != NULL) {
        e->log.index = log->index;
        e->log.term = log->term;
        e->log.appended_at_ns = log->appended_at_ns;
    }
    return e;
}

craft__entry_t *craft__entry_ref(craft__entry_t *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

void craft__entry_unref(craft__entry_t *e)
{
    if (e != NULL && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) {
        free(e);
    }
}
