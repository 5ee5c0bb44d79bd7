#include "lib/logread.h"

#include <stdbool.h>

/* Entries converted per get_logs call: craft_log_t scratch on the stack
 * (64 x 56 bytes), the default max_append_entries. */
#define LOGREAD_CHUNK 64

/* Budget rule shared with the LogStore contract: the first entry is always
 * taken; a later one only while the total stays within max_bytes. */
static bool fits(size_t k, size_t bytes, size_t size, size_t max_bytes)
{
    return k == 0 || (size <= max_bytes && bytes <= max_bytes - size);
}

static void release(craft__entry_t **ents, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        craft__entry_unref(ents[i]);
    }
}

/* Reads up to `max` entries from lo + *k on from the store with get_logs,
 * appending them to ents[*k..]. Sets *more when the store returned all it
 * was asked for (the run may go on). CRAFT_ENOTFOUND only when lo + *k is
 * absent. Requires *bytes <= max_bytes when *k > 0. */
static int read_store_range(craft_t *r, uint64_t lo, size_t *k, size_t max,
                            size_t *bytes, size_t max_bytes,
                            craft__entry_t **ents, bool *more)
{
    craft_log_t logs[LOGREAD_CHUNK];
    uint64_t index = lo + *k;
    size_t ask = max < LOGREAD_CHUNK ? max : LOGREAD_CHUNK;
    /* What is left of the budget; the store always returns one entry even
     * over it, which is checked below. */
    size_t budget = *k == 0 ? max_bytes : max_bytes - *bytes;
    size_t got = 0;
    *more = false;
    int rv = r->logs->get_logs(r->logs->ctx, index, ask, budget, logs, &got);
    if (rv != 0) {
        return rv;
    }
    if (got > ask) { /* a store bug; never read past logs[ask - 1] */
        CRAFT__ERROR(&r->log, "raft",
                     "log store get_logs returned too many entries: index=%llu "
                     "asked=%zu got=%zu",
                     (unsigned long long)index, ask, got);
        got = ask;
        rv = CRAFT_ECORRUPT;
    }
    size_t i = 0;
    for (; rv == 0 && i < got; i++) {
        const craft_log_t *l = &logs[i];
        if (l->index != index + i) {
            CRAFT__ERROR(&r->log, "raft",
                         "log store returned the wrong entry: want=%llu got=%llu",
                         (unsigned long long)(index + i),
                         (unsigned long long)l->index);
            rv = CRAFT_ECORRUPT;
            break;
        }
        size_t size = l->len + l->ext_len;
        if (!fits(*k, *bytes, size, max_bytes)) {
            break;
        }
        craft__entry_t *e = craft__entry_from_log(l);
        if (e == NULL) {
            rv = CRAFT_ENOMEM;
            break;
        }
        ents[(*k)++] = e;
        *bytes += size;
    }
    *more = rv == 0 && i == ask;
    for (size_t j = 0; j < got; j++) {
        craft_log_release(&logs[j]);
    }
    return rv;
}

int craft__read_entries(craft_t *r, uint64_t lo, size_t want, size_t max_bytes,
                        craft__entry_t **ents, size_t *n)
{
    size_t k = 0;
    size_t bytes = 0;
    int rv = 0;
    *n = 0;
    if (lo == 0) {
        return want == 0 ? 0 : CRAFT_ENOTFOUND;
    }
    while (k < want) {
        if (k > 0 && bytes > max_bytes) {
            break; /* entry lo alone is over the budget */
        }
        uint64_t index = lo + k;
        /* The window first: it holds the newest entries, some perhaps not
         * yet durable in the store. */
        size_t m = craft__window_get_range(&r->window, index, want - k, ents + k);
        if (m > 0) {
            size_t i = 0;
            for (; i < m; i++) {
                craft__entry_t *e = ents[k];
                size_t size = e->log.len + e->log.ext_len;
                if (e->log.index != lo + k) { /* cannot happen: contiguous */
                    rv = CRAFT_ECORRUPT;
                    break;
                }
                if (!fits(k, bytes, size, max_bytes)) {
                    break;
                }
                bytes += size;
                k++;
            }
            if (i < m) {
                release(ents + k, m - i);
                if (rv != 0) {
                    goto err_after_entries;
                }
                break; /* the budget is used up */
            }
            continue; /* the window ended: what follows may be in the store */
        }
        /* Older than the window (or past it). Read the store up to where
         * the window starts, where the loop goes back to it. */
        size_t max = want - k;
        uint64_t first = craft__window_first(&r->window);
        if (first > index && first - index < max) {
            max = (size_t)(first - index);
        }
        bool more = false;
        if (r->logs->get_logs != NULL) {
            size_t before = k;
            rv = read_store_range(r, lo, &k, max, &bytes, max_bytes, ents, &more);
            if (rv == CRAFT_ENOTFOUND && before > 0) {
                rv = 0; /* the run ends at `index` */
                more = false;
            }
            if (rv != 0) {
                goto err_after_entries;
            }
        } else {
            craft__entry_t *e = NULL;
            rv = craft__entry_at(r, index, &e);
            if (rv == CRAFT_ENOTFOUND && k > 0) {
                rv = 0;
                break;
            }
            if (rv != 0) {
                goto err_after_entries;
            }
            size_t size = e->log.len + e->log.ext_len;
            if (!fits(k, bytes, size, max_bytes)) {
                craft__entry_unref(e);
                break;
            }
            ents[k++] = e;
            bytes += size;
            more = true;
        }
        if (!more) {
            break;
        }
    }
    *n = k;
    return 0;

err_after_entries:
    release(ents, k);
    return rv;
}
