/* lib/future.c: completion, waiting, callbacks, accessors and lifetime. */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"
#include "lib/entry.h"
#include "lib/future.h"
#include "lib/runtime.h"
#include "tests/testutil.h"
#include "tests/unit/unit_threads.h"

/* ---- a counting fake FSM: release_response tells when a future is freed ---- */

typedef struct {
    atomic_int releases;
    void *_Atomic last;
} fake_fsm_t;

static void fake_release(void *ctx, void *response)
{
    fake_fsm_t *ff = ctx;
    atomic_store(&ff->last, response);
    atomic_fetch_add(&ff->releases, 1);
}

static void fake_init(fake_fsm_t *ff, craft_fsm_t *fsm)
{
    atomic_init(&ff->releases, 0);
    atomic_init(&ff->last, NULL);
    memset(fsm, 0, sizeof *fsm);
    fsm->ctx = ff;
    fsm->release_response = fake_release;
}

static int token; /* an address used as a response */

/* A future whose destruction is observable: its response is released
 * exactly when it is destroyed. */
static craft_future_t *tracked_future(craft_fsm_t *fsm)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_APPLY);
    ck_assert_ptr_nonnull(f);
    f->response = &token;
    f->fsm = fsm;
    return f;
}

/* ---- callbacks ---- */

typedef struct {
    atomic_int calls;
    pthread_t thread;
    int err_seen;
    bool done_seen;
    craft_future_t *f_seen;
} cb_rec_t;

static void cb_record(craft_future_t *f, void *arg)
{
    cb_rec_t *r = arg;
    r->thread = pthread_self();
    r->f_seen = f;
    r->done_seen = craft_future_done(f);
    r->err_seen = craft_future_wait_for(f, 0);
    atomic_fetch_add(&r->calls, 1);
}

static void cb_free(craft_future_t *f, void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
    craft_future_free(f);
}

/* ---- threads ---- */

typedef struct {
    craft_future_t *f;
    int64_t timeout_ms; /* < 0: craft_future_wait */
    atomic_int tid;
    atomic_int returned;
    int result;
} waiter_t;

static void *waiter_main(void *arg)
{
    waiter_t *w = arg;
    atomic_store(&w->tid, (int)ut_gettid());
    w->result = w->timeout_ms < 0 ? craft_future_wait(w->f)
                                  : craft_future_wait_for(w->f, w->timeout_ms);
    atomic_store(&w->returned, 1);
    return NULL;
}

/* Starts a waiter without requiring it to sleep (it may be spinning). */
static void launch_waiter(waiter_t *w, pthread_t *th, craft_future_t *f, int64_t timeout_ms)
{
    w->f = f;
    w->timeout_ms = timeout_ms;
    atomic_init(&w->tid, 0);
    atomic_init(&w->returned, 0);
    w->result = 12345;
    ck_assert_int_eq(pthread_create(th, NULL, waiter_main, w), 0);
}

/* Starts a waiter and returns once it sleeps in the wait. */
static void start_waiter(waiter_t *w, pthread_t *th, craft_future_t *f, int64_t timeout_ms)
{
    launch_waiter(w, th, f, timeout_ms);
    ck_assert(tu_wait_for(ut_flag_set, &w->tid, 10000));
    ck_assert(ut_wait_blocked((pid_t)atomic_load(&w->tid)));
    ck_assert_int_eq(atomic_load(&w->returned), 0);
}

typedef struct {
    craft_future_t *f;
    int err;
    bool first;
    pthread_t self;
} completer_t;

static void *completer_main(void *arg)
{
    completer_t *c = arg;
    c->self = pthread_self();
    c->first = craft__future_complete(c->f, c->err);
    return NULL;
}

/* ---- completion and waiting ---- */

START_TEST(test_complete_then_wait)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    ck_assert_ptr_nonnull(f);
    ck_assert(!craft_future_done(f));
    ck_assert(craft__future_complete(f, 0));
    ck_assert(craft_future_done(f));
    ck_assert_int_eq(craft_future_wait(f), 0);
    ck_assert_int_eq(craft_future_wait(f), 0); /* repeatable */
    ck_assert_int_eq(craft_future_wait_for(f, 0), 0);
    ck_assert_int_eq(craft_future_wait_for(f, 1000), 0);
    craft_future_free(f);

    f = craft__future_new(CRAFT__FUT_GENERIC);
    ck_assert(craft__future_complete(f, CRAFT_ENOTLEADER));
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ENOTLEADER);
    ck_assert_int_eq(craft_future_wait_for(f, 0), CRAFT_ENOTLEADER);
    craft_future_free(f);
}
END_TEST

START_TEST(test_wait_then_complete)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    waiter_t w;
    pthread_t th;
    start_waiter(&w, &th, f, -1);
    ck_assert(craft__future_complete(f, CRAFT_ELEADERSHIPLOST));
    pthread_join(th, NULL);
    ck_assert_int_eq(w.result, CRAFT_ELEADERSHIPLOST);
    craft_future_free(f);
}
END_TEST

START_TEST(test_wait_for_woken_by_complete)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    waiter_t w;
    pthread_t th;
    start_waiter(&w, &th, f, 600000);
    ck_assert(craft__future_complete(f, 0));
    pthread_join(th, NULL);
    ck_assert_int_eq(w.result, 0);
    craft_future_free(f);
}
END_TEST

START_TEST(test_wait_for_pending)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    int64_t start = craft__now_ns();
    ck_assert_int_eq(craft_future_wait_for(f, 20), CRAFT_EPENDING);
    /* Did not give up early (no upper bound asserted). */
    ck_assert_int_ge(craft__now_ns() - start, CRAFT__MS(20));
    ck_assert_int_eq(craft_future_wait_for(f, 0), CRAFT_EPENDING);
    ck_assert_int_eq(craft_future_wait_for(f, -5), CRAFT_EPENDING);
    ck_assert(!craft_future_done(f));
    /* Still valid and still completes. */
    ck_assert(craft__future_complete(f, CRAFT_EIO));
    ck_assert_int_eq(craft_future_wait_for(f, 0), CRAFT_EIO);
    ck_assert_int_eq(craft_future_wait_for(f, 20), CRAFT_EIO);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_EIO);
    craft_future_free(f);
}
END_TEST

static bool blocked_or_returned(void *arg)
{
    waiter_t *w = arg;
    if (atomic_load(&w->returned)) {
        return true;
    }
    pid_t tid = (pid_t)atomic_load(&w->tid);
    return tid != 0 && ut_task_sleeping(&tid);
}

/*
 * Regression: craft_future_wait_for computed now + timeout_ms * 1e6 in
 * int64_t, which overflowed for huge timeouts (UBSan) and wrapped negative,
 * returning CRAFT_EPENDING at once. The timeout now saturates.
 */
START_TEST(test_wait_for_huge_timeout)
{
    const int64_t timeouts[] = {INT64_MAX, INT64_MAX / 1000, 10000000000000LL};
    for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
        craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
        waiter_t w;
        pthread_t th;
        w.f = f;
        w.timeout_ms = timeouts[i];
        atomic_init(&w.tid, 0);
        atomic_init(&w.returned, 0);
        w.result = 12345;
        ck_assert_int_eq(pthread_create(&th, NULL, waiter_main, &w), 0);
        ck_assert(tu_wait_for(blocked_or_returned, &w, 10000));
        bool returned_early = atomic_load(&w.returned) != 0;
        craft__future_complete(f, 0);
        pthread_join(th, NULL);
        ck_assert_msg(!returned_early && w.result == 0,
                      "wait_for(timeout_ms=%lld) returned %d before completion",
                      (long long)timeouts[i], w.result);
        craft_future_free(f);
    }
}
END_TEST

START_TEST(test_complete_twice)
{
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    cb_rec_t rec = {0};
    atomic_init(&rec.calls, 0);
    craft_future_t *f = tracked_future(&fsm);
    craft_future_on_done(f, cb_record, &rec);
    ck_assert(craft__future_complete(f, CRAFT_ENOTLEADER));
    ck_assert(!craft__future_complete(f, 0));
    ck_assert(!craft__future_complete(f, CRAFT_EIO));
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ENOTLEADER);
    ck_assert_int_eq(atomic_load(&rec.calls), 1);
    /* The ignored completions must not have dropped references. */
    ck_assert_int_eq(atomic_load(&ff.releases), 0);
    craft_future_free(f);
    ck_assert_int_eq(atomic_load(&ff.releases), 1);
}
END_TEST

START_TEST(test_complete_twice_concurrently)
{
    /* Several threads race to complete: exactly one wins. */
    enum { N = 8, ROUNDS = 200 };
    for (int round = 0; round < ROUNDS; round++) {
        craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
        completer_t c[N];
        pthread_t th[N];
        for (int i = 0; i < N; i++) {
            c[i] = (completer_t){.f = f, .err = -(i + 1)};
            ck_assert_int_eq(pthread_create(&th[i], NULL, completer_main, &c[i]), 0);
        }
        int winners = 0, winner_err = 0;
        for (int i = 0; i < N; i++) {
            pthread_join(th[i], NULL);
            if (c[i].first) {
                winners++;
                winner_err = c[i].err;
            }
        }
        ck_assert_int_eq(winners, 1);
        ck_assert_int_eq(craft_future_wait(f), winner_err);
        craft_future_free(f);
    }
}
END_TEST

/* ---- on_done ---- */

START_TEST(test_on_done_before_completion)
{
    cb_rec_t rec = {0};
    atomic_init(&rec.calls, 0);
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    craft_future_on_done(f, cb_record, &rec);
    ck_assert_int_eq(atomic_load(&rec.calls), 0);
    completer_t c = {.f = f, .err = CRAFT_ETRANSFER};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, completer_main, &c), 0);
    pthread_join(th, NULL);
    ck_assert(c.first);
    ck_assert_int_eq(atomic_load(&rec.calls), 1);
    ck_assert(pthread_equal(rec.thread, c.self));
    ck_assert_ptr_eq(rec.f_seen, f);
    /* The callback sees a completed future and its result. */
    ck_assert(rec.done_seen);
    ck_assert_int_eq(rec.err_seen, CRAFT_ETRANSFER);
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ETRANSFER);
    ck_assert_int_eq(atomic_load(&rec.calls), 1);
    craft_future_free(f);
    ck_assert_int_eq(atomic_load(&rec.calls), 1);
}
END_TEST

START_TEST(test_on_done_after_completion)
{
    cb_rec_t rec = {0};
    atomic_init(&rec.calls, 0);
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    ck_assert(craft__future_complete(f, CRAFT_EABORTED));
    craft_future_on_done(f, cb_record, &rec);
    /* Ran at once, on this thread, before on_done returned. */
    ck_assert_int_eq(atomic_load(&rec.calls), 1);
    ck_assert(pthread_equal(rec.thread, pthread_self()));
    ck_assert(rec.done_seen);
    ck_assert_int_eq(rec.err_seen, CRAFT_EABORTED);
    craft_future_free(f);
    ck_assert_int_eq(atomic_load(&rec.calls), 1);
}
END_TEST

START_TEST(test_on_done_replaces_pending)
{
    cb_rec_t a = {0}, b = {0};
    atomic_init(&a.calls, 0);
    atomic_init(&b.calls, 0);
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    craft_future_on_done(f, cb_record, &a);
    craft_future_on_done(f, cb_record, &b);
    craft__future_complete(f, 0);
    ck_assert_int_eq(atomic_load(&a.calls), 0);
    ck_assert_int_eq(atomic_load(&b.calls), 1);
    craft_future_free(f);
}
END_TEST

START_TEST(test_on_done_frees_before_completion)
{
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    atomic_int calls;
    atomic_init(&calls, 0);
    craft_future_t *f = tracked_future(&fsm);
    craft_future_on_done(f, cb_free, &calls);
    ck_assert(craft__future_complete(f, 0));
    ck_assert_int_eq(atomic_load(&calls), 1);
    /* Both references are gone: destroyed exactly once. */
    ck_assert_int_eq(atomic_load(&ff.releases), 1);
    ck_assert_ptr_eq(atomic_load(&ff.last), &token);
}
END_TEST

START_TEST(test_on_done_frees_after_completion)
{
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    atomic_int calls;
    atomic_init(&calls, 0);
    craft_future_t *f = tracked_future(&fsm);
    ck_assert(craft__future_complete(f, 0));
    ck_assert_int_eq(atomic_load(&ff.releases), 0);
    craft_future_on_done(f, cb_free, &calls);
    ck_assert_int_eq(atomic_load(&calls), 1);
    ck_assert_int_eq(atomic_load(&ff.releases), 1);
}
END_TEST

START_TEST(test_on_done_frees_in_completer_thread)
{
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    atomic_int calls;
    atomic_init(&calls, 0);
    craft_future_t *f = tracked_future(&fsm);
    craft_future_on_done(f, cb_free, &calls);
    completer_t c = {.f = f, .err = 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, completer_main, &c), 0);
    pthread_join(th, NULL);
    ck_assert(c.first);
    ck_assert_int_eq(atomic_load(&calls), 1);
    ck_assert_int_eq(atomic_load(&ff.releases), 1);
}
END_TEST

/* The caller hands the future to a callback that frees it while another
 * thread completes it: every interleaving must destroy it exactly once. */
START_TEST(test_on_done_free_races_completion)
{
    enum { ROUNDS = 1000 };
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    atomic_int calls;
    atomic_init(&calls, 0);
    for (int i = 0; i < ROUNDS; i++) {
        craft_future_t *f = tracked_future(&fsm);
        completer_t c = {.f = f, .err = 0};
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, completer_main, &c), 0);
        craft_future_on_done(f, cb_free, &calls); /* f must not be used after */
        pthread_join(th, NULL);
        ck_assert(c.first);
    }
    ck_assert_int_eq(atomic_load(&calls), ROUNDS);
    ck_assert_int_eq(atomic_load(&ff.releases), ROUNDS);
}
END_TEST

/* ---- lifetime ---- */

START_TEST(test_free_before_completion)
{
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    craft_future_t *f = tracked_future(&fsm);
    craft_future_free(f);
    /* craft still holds it. */
    ck_assert_int_eq(atomic_load(&ff.releases), 0);
    ck_assert(craft__future_complete(f, CRAFT_ESHUTDOWN));
    ck_assert_int_eq(atomic_load(&ff.releases), 1);
}
END_TEST

START_TEST(test_free_before_completion_races)
{
    enum { ROUNDS = 1000 };
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    for (int i = 0; i < ROUNDS; i++) {
        craft_future_t *f = tracked_future(&fsm);
        completer_t c = {.f = f, .err = 0};
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, completer_main, &c), 0);
        craft_future_free(f);
        pthread_join(th, NULL);
        ck_assert_int_eq(atomic_load(&ff.releases), i + 1);
    }
}
END_TEST

START_TEST(test_payload_released_at_completion)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_APPLY);
    craft__entry_t *e = craft__entry_new(CRAFT_LOG_COMMAND, "abc", 3, NULL, 0);
    ck_assert_ptr_nonnull(e);
    f->entry = craft__entry_ref(e); /* the future's reference */
    ck_assert_int_eq(atomic_load(&e->refs), 2);
    craft__future_complete(f, 0);
    /* Completion drops the payload even while the caller keeps the future. */
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    craft_future_free(f);
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    craft__entry_unref(e);

    /* Freed without completing first: the entry is released at completion. */
    f = craft__future_new(CRAFT__FUT_APPLY);
    e = craft__entry_new(CRAFT_LOG_COMMAND, "abc", 3, NULL, 0);
    f->entry = craft__entry_ref(e);
    craft_future_free(f);
    ck_assert_int_eq(atomic_load(&e->refs), 2);
    craft__future_complete(f, CRAFT_ESHUTDOWN);
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    craft__entry_unref(e);
}
END_TEST

START_TEST(test_failed)
{
    craft_future_t *f = craft__future_failed(CRAFT_ENOTLEADER);
    ck_assert_ptr_nonnull(f);
    ck_assert(craft_future_done(f));
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ENOTLEADER);
    ck_assert_int_eq(craft_future_wait_for(f, 0), CRAFT_ENOTLEADER);
    ck_assert_uint_eq(craft_future_index(f), 0);
    ck_assert_ptr_null(craft_future_response(f));
    ck_assert_ptr_null(craft_future_configuration(f));
    /* Already complete: a later completion is ignored. */
    ck_assert(!craft__future_complete(f, 0));
    ck_assert_int_eq(craft_future_wait(f), CRAFT_ENOTLEADER);
    cb_rec_t rec = {0};
    atomic_init(&rec.calls, 0);
    craft_future_on_done(f, cb_record, &rec);
    ck_assert_int_eq(atomic_load(&rec.calls), 1);
    ck_assert_int_eq(rec.err_seen, CRAFT_ENOTLEADER);
    craft_future_free(f); /* the caller's is the only reference left (ASan) */
}
END_TEST

START_TEST(test_null_safe)
{
    ck_assert_int_eq(craft_future_wait(NULL), CRAFT_EINVAL);
    ck_assert_int_eq(craft_future_wait_for(NULL, 0), CRAFT_EINVAL);
    ck_assert(!craft_future_done(NULL));
    ck_assert_uint_eq(craft_future_index(NULL), 0);
    ck_assert_ptr_null(craft_future_response(NULL));
    ck_assert_ptr_null(craft_future_configuration(NULL));
    craft_future_on_done(NULL, cb_record, NULL);
    craft_future_free(NULL);
}
END_TEST

/* ---- accessors ---- */

START_TEST(test_index)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_APPLY);
    f->index = 42;
    ck_assert_uint_eq(craft_future_index(f), 0); /* valid after completion only */
    craft__future_complete(f, 0);
    ck_assert_uint_eq(craft_future_index(f), 42);
    craft_future_free(f);
}
END_TEST

START_TEST(test_response_released_once)
{
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    craft_future_t *f = tracked_future(&fsm);
    ck_assert_ptr_null(craft_future_response(f)); /* not yet */
    craft__future_complete(f, 0);
    ck_assert_ptr_eq(craft_future_response(f), &token);
    ck_assert_ptr_eq(craft_future_response(f), &token);
    ck_assert_int_eq(atomic_load(&ff.releases), 0); /* still readable */
    craft_future_free(f);
    ck_assert_int_eq(atomic_load(&ff.releases), 1);
    ck_assert_ptr_eq(atomic_load(&ff.last), &token);
}
END_TEST

START_TEST(test_response_release_edge_cases)
{
    fake_fsm_t ff;
    craft_fsm_t fsm;
    fake_init(&ff, &fsm);
    /* No response: release_response is not called with NULL. */
    craft_future_t *f = craft__future_new(CRAFT__FUT_APPLY);
    f->fsm = &fsm;
    craft__future_complete(f, 0);
    ck_assert_ptr_null(craft_future_response(f));
    craft_future_free(f);
    ck_assert_int_eq(atomic_load(&ff.releases), 0);

    /* An FSM without release_response: the response is simply dropped. */
    craft_fsm_t bare;
    memset(&bare, 0, sizeof bare);
    f = craft__future_new(CRAFT__FUT_APPLY);
    f->response = &token;
    f->fsm = &bare;
    craft__future_complete(f, 0);
    ck_assert_ptr_eq(craft_future_response(f), &token);
    craft_future_free(f);
}
END_TEST

static void set_server(craft_server_t *s, const char *id, const char *addr,
                       craft_suffrage_t suf)
{
    s->id = (char *)id;
    s->address = (char *)addr;
    s->suffrage = suf;
}

START_TEST(test_configuration_accessor)
{
    craft_server_t srv[2];
    set_server(&srv[0], "a", "127.0.0.1:1", CRAFT_VOTER);
    set_server(&srv[1], "b", "127.0.0.1:2", CRAFT_NONVOTER);
    craft_configuration_t src = {2, srv};

    craft_future_t *f = craft__future_new(CRAFT__FUT_CONFIG);
    ck_assert_int_eq(craft_configuration_copy(&f->configuration, &src), 0);
    f->has_configuration = true;
    f->index = 7;
    ck_assert_ptr_null(craft_future_configuration(f)); /* not yet */
    craft__future_complete(f, 0);
    const craft_configuration_t *c = craft_future_configuration(f);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->n, 2);
    ck_assert_str_eq(c->servers[0].id, "a");
    ck_assert_str_eq(c->servers[1].address, "127.0.0.1:2");
    ck_assert_int_eq(c->servers[1].suffrage, CRAFT_NONVOTER);
    ck_assert_uint_eq(craft_future_index(f), 7);
    craft_future_free(f); /* frees the configuration (ASan: no leak) */

    /* Error: NULL even if a configuration was filled in. */
    f = craft__future_new(CRAFT__FUT_CONFIG);
    ck_assert_int_eq(craft_configuration_copy(&f->configuration, &src), 0);
    f->has_configuration = true;
    craft__future_complete(f, CRAFT_ESHUTDOWN);
    ck_assert_ptr_null(craft_future_configuration(f));
    craft_future_free(f);

    /* Not a configuration future. */
    f = craft__future_new(CRAFT__FUT_APPLY);
    craft__future_complete(f, 0);
    ck_assert_ptr_null(craft_future_configuration(f));
    craft_future_free(f);
}
END_TEST

/* ---- many waiters ---- */

START_TEST(test_many_waiters)
{
    enum { N = 16 };
    craft_future_t *f = craft__future_new(CRAFT__FUT_GENERIC);
    waiter_t w[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        start_waiter(&w[i], &th[i], f, i % 2 == 0 ? -1 : 600000);
    }
    ck_assert(craft__future_complete(f, CRAFT_EABORTED));
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(w[i].result, CRAFT_EABORTED);
    }
    craft_future_free(f);
}
END_TEST

/* ---- spinning waits (config.wait_spin_us) ---- */

static bool someone_waiting(void *arg)
{
    int want = *(int *)arg;
    craft__spin_counters_t sc;
    craft__future_spin_counters(&sc);
    return sc.waiting >= want;
}

/* A lone waiter with a long budget spins, and its spin sees the completion
 * (the budget is minutes, so it cannot have given up first). The counters
 * of waiting and spinning threads return to zero. */
START_TEST(test_spin_sees_completion)
{
    craft__spin_counters_t before, after;
    craft__future_spin_counters(&before);
    for (int round = 0; round < 2; round++) {
        craft_future_t *f = craft__future_new(CRAFT__FUT_APPLY);
        waiter_t w;
        pthread_t th;
        int one = 1;
        f->spin_ns = CRAFT__MS(120000);
        launch_waiter(&w, &th, f, round == 0 ? -1 : 600000);
        ck_assert(tu_wait_for(someone_waiting, &one, 10000));
        f->index = 42;
        ck_assert(craft__future_complete(f, CRAFT_ENOTLEADER));
        pthread_join(th, NULL);
        ck_assert_int_eq(w.result, CRAFT_ENOTLEADER);
        ck_assert_uint_eq(craft_future_index(f), 42);
        craft_future_free(f);
    }
    craft__future_spin_counters(&after);
    ck_assert_int_eq(after.waiting, 0);
    ck_assert_int_eq(after.spinning, 0);
    ck_assert_uint_eq(after.spins - before.spins, 2);
    ck_assert_uint_eq(after.hits - before.hits, 2);
    ck_assert_int_ge(after.wait_avg_ns, 0);
}
END_TEST

/* wait_for's deadline bounds the spin: a budget of minutes still returns
 * CRAFT_EPENDING at the deadline, and the future still completes later. */
START_TEST(test_spin_bounded_by_deadline)
{
    craft_future_t *f = craft__future_new(CRAFT__FUT_APPLY);
    craft__spin_counters_t sc;
    f->spin_ns = CRAFT__MS(120000);
    int64_t start = craft__now_ns();
    ck_assert_int_eq(craft_future_wait_for(f, 20), CRAFT_EPENDING);
    ck_assert_int_ge(craft__now_ns() - start, CRAFT__MS(20));
    /* A zero timeout is a poll: no spin begins. */
    craft__future_spin_counters(&sc);
    uint64_t spins = sc.spins;
    ck_assert_int_eq(craft_future_wait_for(f, 0), CRAFT_EPENDING);
    ck_assert_int_eq(craft_future_wait_for(f, -1), CRAFT_EPENDING);
    craft__future_spin_counters(&sc);
    ck_assert_uint_eq(sc.spins, spins);
    ck_assert(craft__future_complete(f, 0));
    ck_assert_int_eq(craft_future_wait(f), 0);
    craft_future_free(f);
    craft__future_spin_counters(&sc);
    ck_assert_int_eq(sc.waiting, 0);
    ck_assert_int_eq(sc.spinning, 0);
}
END_TEST

/* Many waiters at once: no more spin than the limit allows, the rest sleep,
 * and every one of them returns its own result. */
START_TEST(test_spin_many_waiters)
{
    enum { N = 12 };
    craft_future_t *f[N];
    waiter_t w[N];
    pthread_t th[N];
    int all = N;
    for (int i = 0; i < N; i++) {
        f[i] = craft__future_new(CRAFT__FUT_APPLY);
        f[i]->spin_ns = CRAFT__MS(2);
        launch_waiter(&w[i], &th[i], f[i], i % 2 == 0 ? -1 : 600000);
    }
    ck_assert(tu_wait_for(someone_waiting, &all, 10000));
    for (int i = 0; i < N; i++) {
        craft__spin_counters_t sc;
        craft__future_spin_counters(&sc);
        ck_assert_int_ge(sc.limit, 1);
        ck_assert_int_le(sc.spinning, sc.limit);
        ck_assert(craft__future_complete(f[i], i % 3 == 0 ? 0 : CRAFT_EABORTED));
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(w[i].result, i % 3 == 0 ? 0 : CRAFT_EABORTED);
        craft_future_free(f[i]);
    }
}
END_TEST

static Suite *future_suite(void)
{
    Suite *s = suite_create("future");
    TCase *tc = tcase_create("complete");
    tcase_add_test(tc, test_complete_then_wait);
    tcase_add_test(tc, test_wait_then_complete);
    tcase_add_test(tc, test_wait_for_woken_by_complete);
    tcase_add_test(tc, test_wait_for_pending);
    tcase_add_test(tc, test_complete_twice);
    tcase_add_test(tc, test_complete_twice_concurrently);
    tcase_add_test(tc, test_many_waiters);
    suite_add_tcase(s, tc);

    /* Regressions for bugs found in lib/ (see each test's comment). */
    tc = tcase_create("regressions");
    tcase_add_test(tc, test_wait_for_huge_timeout);
    suite_add_tcase(s, tc);

    tc = tcase_create("on_done");
    tcase_add_test(tc, test_on_done_before_completion);
    tcase_add_test(tc, test_on_done_after_completion);
    tcase_add_test(tc, test_on_done_replaces_pending);
    tcase_add_test(tc, test_on_done_frees_before_completion);
    tcase_add_test(tc, test_on_done_frees_after_completion);
    tcase_add_test(tc, test_on_done_frees_in_completer_thread);
    tcase_add_test(tc, test_on_done_free_races_completion);
    suite_add_tcase(s, tc);

    tc = tcase_create("lifetime");
    tcase_add_test(tc, test_free_before_completion);
    tcase_add_test(tc, test_free_before_completion_races);
    tcase_add_test(tc, test_payload_released_at_completion);
    tcase_add_test(tc, test_failed);
    tcase_add_test(tc, test_null_safe);
    suite_add_tcase(s, tc);

    tc = tcase_create("accessors");
    tcase_add_test(tc, test_index);
    tcase_add_test(tc, test_response_released_once);
    tcase_add_test(tc, test_response_release_edge_cases);
    tcase_add_test(tc, test_configuration_accessor);
    suite_add_tcase(s, tc);

    tc = tcase_create("spin");
    tcase_add_test(tc, test_spin_sees_completion);
    tcase_add_test(tc, test_spin_bounded_by_deadline);
    tcase_add_test(tc, test_spin_many_waiters);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(future_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
