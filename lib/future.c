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
    atomic_init(&f->completed, false);
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

/* Depth of on_done callbacks running on this thread. */
static _Thread_local int in_callback;

bool craft__future_complete(craft_future_t *f, int err)
{
    craft__mutex_lock(&f->mu);
    if (f->done) {
        craft__mutex_unlock(&f->mu);
        return false;
    }
    f->done = true;
    f->err = err;
    atomic_store_explicit(&f->completed, true, memory_order_release);
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
        in_callback++;
        cb(f, arg);
        in_callback--;
    }
    future_unref(f);
    return true;
}

bool craft__future_in_callback(void)
{
    return in_callback > 0;
}

craft_future_t *craft__future_failed(int err)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    if (f != NULL) {
        craft__future_complete(f, err);
    }
    return f;
}

/* ---- Spinning before sleeping (config.wait_spin_us) ---------------------
 *
 * Waking a sleeping thread costs 20-80 us on a virtual machine whose vCPU has
 * gone idle (an IPI and a VM exit); a thread that polls sees the completion
 * within a fraction of a microsecond. Polling burns the CPU the work itself
 * may need, so the policy is process-wide, like Go's limit on spinning
 * threads:
 *  - at most max(1, CPUs / 2) threads spin at once (counting the CPUs this
 *    process may run on), and none while more threads than that wait:
 *    concurrent requests mean work in flight that needs the CPUs (on 2
 *    vCPUs, 2 closed-loop clients ran 30 % slower with one of them
 *    spinning); a spinner gives up as soon as that happens;
 *  - a thread spins only while the waits that had to wait recently took less
 *    than its budget on average (an exponential moving average over all
 *    spinning-enabled futures): when completions take longer than the
 *    budget (a disk write, a slow network), spinning would only delay the
 *    sleep. */

static atomic_int spinners;
static atomic_int waiters;     /* threads in wait_locked on such futures */
static _Atomic int64_t wait_avg_ns;
static atomic_uint_fast64_t spins, spin_hits;

static int spin_slot_limit(void)
{
    int cpus = craft__cpu_count();
    return cpus >= 4 ? cpus / 2 : 1;
}

/* Folds one wait's duration into the average (1/8 weight; concurrent
 * updates may lose one another, which only delays the average). */
static void note_wait(int64_t ns)
{
    int64_t avg = atomic_load_explicit(&wait_avg_ns, memory_order_relaxed);
    atomic_store_explicit(&wait_avg_ns, avg + (ns - avg) / 8, memory_order_relaxed);
}

/* Polls `f` for up to its spin_ns (bounded by `deadline_ns`, 0 = none)
 * when the policy allows; true when it completed meanwhile. */
static bool spin(craft_future_t *f, int64_t deadline_ns)
{
    int64_t now = craft__now_ns();
    int64_t end = now + f->spin_ns;
    if (deadline_ns > 0 && deadline_ns < end) {
        end = deadline_ns;
    }
    int limit = spin_slot_limit();
    /* end <= now: wait_for(f, 0) is a poll, not a wait. */
    if (f->spin_ns <= 0 || end <= now ||
        atomic_load_explicit(&wait_avg_ns, memory_order_relaxed) >= f->spin_ns ||
        atomic_load_explicit(&waiters, memory_order_relaxed) > limit ||
        !craft__slot_take(&spinners, limit)) {
        return false;
    }
    bool done = false;
    atomic_fetch_add_explicit(&spins, 1, memory_order_relaxed);
    for (unsigned i = 0;; i++) {
        if (atomic_load_explicit(&f->completed, memory_order_acquire)) {
            done = true;
            break;
        }
        /* Every 64 polls: the budget, and whether others started waiting
         * (then the CPU is better left to the work). */
        if ((i & 63) == 63 &&
            (craft__now_ns() >= end ||
             atomic_load_explicit(&waiters, memory_order_relaxed) > limit)) {
            break;
        }
        craft__cpu_relax();
    }
    atomic_fetch_sub_explicit(&spinners, 1, memory_order_relaxed);
    if (done) {
        atomic_fetch_add_explicit(&spin_hits, 1, memory_order_relaxed);
    }
    return done;
}

void craft__future_spin_counters(craft__spin_counters_t *out)
{
    out->limit = spin_slot_limit();
    out->waiting = atomic_load(&waiters);
    out->spinning = atomic_load(&spinners);
    out->spins = atomic_load(&spins);
    out->hits = atomic_load(&spin_hits);
    out->wait_avg_ns = atomic_load(&wait_avg_ns);
}

/* Waits until done or `deadline_ns` (0 = none), spinning first when the
 * future allows it. Returns with f->mu held. */
static void wait_locked(craft_future_t *f, int64_t deadline_ns)
{
    bool timed = f->spin_ns > 0 &&
                 !atomic_load_explicit(&f->completed, memory_order_acquire);
    int64_t start = timed ? craft__now_ns() : 0;
    if (timed) {
        atomic_fetch_add_explicit(&waiters, 1, memory_order_relaxed);
        spin(f, deadline_ns);
    }
    craft__mutex_lock(&f->mu);
    while (!f->done && (deadline_ns == 0 || craft__now_ns() < deadline_ns)) {
        if (deadline_ns == 0) {
            craft__cond_wait(&f->cond, &f->mu);
        } else {
            craft__cond_wait_until(&f->cond, &f->mu, deadline_ns);
        }
    }
    if (timed) {
        atomic_fetch_sub_explicit(&waiters, 1, memory_order_relaxed);
        if (f->done) {
            note_wait(craft__now_ns() - start);
        }
    }
}

int craft_future_wait(craft_future_t *f)
{
    if (f == NULL) {
        return CRAFT_EINVAL;
    }
    wait_locked(f, 0);
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
    wait_locked(f, deadline);
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
        in_callback++;
        cb(f, arg);
        in_callback--;
    }
}

void craft_future_free(craft_future_t *f)
{
    if (f != NULL) {
        future_unref(f);
    }
}
