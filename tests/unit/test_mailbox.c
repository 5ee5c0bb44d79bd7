/* lib/mailbox.c: the inter-thread FIFO with deadlines and close. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"
#include "lib/mailbox.h"
#include "lib/runtime.h"
#include "tests/testutil.h"
#include "tests/unit/unit_threads.h"

typedef struct {
    craft__msg_t msg;
    int producer;
    int seq;
} test_msg_t;

static test_msg_t *as_test(craft__msg_t *m)
{
    return m == NULL ? NULL : CRAFT__QUEUE_DATA(m, test_msg_t, msg);
}

static void mk(test_msg_t *t, int producer, int seq)
{
    memset(t, 0, sizeof *t);
    t->msg.type = 7;
    t->producer = producer;
    t->seq = seq;
}

/* ---- basic FIFO ---- */

START_TEST(test_fifo_order)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    test_msg_t m[50];
    for (int i = 0; i < 50; i++) {
        mk(&m[i], 0, i);
        ck_assert_int_eq(craft__mailbox_post(&mb, &m[i].msg), 0);
        ck_assert_uint_eq(craft__mailbox_len(&mb), (size_t)i + 1);
    }
    for (int i = 0; i < 50; i++) {
        test_msg_t *t = as_test(craft__mailbox_wait(&mb, 0));
        ck_assert_ptr_eq(t, &m[i]);
        ck_assert_int_eq(t->seq, i);
        ck_assert_int_eq(t->msg.type, 7);
        ck_assert_uint_eq(craft__mailbox_len(&mb), (size_t)(49 - i));
    }
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 0));
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

/* idle = open and empty; closed stays true once closed, queued or not. */
START_TEST(test_idle_and_closed)
{
    craft__mailbox_t mb;
    test_msg_t m;
    craft__mailbox_init(&mb);
    ck_assert(craft__mailbox_idle(&mb));
    ck_assert(!craft__mailbox_closed(&mb));
    mk(&m, 0, 0);
    ck_assert_int_eq(craft__mailbox_post(&mb, &m.msg), 0);
    ck_assert(!craft__mailbox_idle(&mb));
    ck_assert(!craft__mailbox_closed(&mb));
    craft__mailbox_close(&mb);
    ck_assert(!craft__mailbox_idle(&mb));
    ck_assert(craft__mailbox_closed(&mb));
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m);
    ck_assert(!craft__mailbox_idle(&mb)); /* empty but closed */
    ck_assert(craft__mailbox_closed(&mb));
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_interleaved_post_take)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    test_msg_t m[6];
    for (int i = 0; i < 6; i++) {
        mk(&m[i], 0, i);
    }
    craft__mailbox_post(&mb, &m[0].msg);
    craft__mailbox_post(&mb, &m[1].msg);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[0]);
    craft__mailbox_post(&mb, &m[2].msg);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[1]);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[2]);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    /* A message taken can be posted again (its link is reusable). */
    ck_assert_int_eq(craft__mailbox_post(&mb, &m[0].msg), 0);
    ck_assert_int_eq(craft__mailbox_post(&mb, &m[3].msg), 0);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[0]);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[3]);
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 0));
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

/* ---- many producers, one consumer ---- */

#define N_PRODUCERS 8
#define N_PER_PRODUCER 10000

typedef struct {
    craft__mailbox_t *mb;
    test_msg_t *msgs;
    int producer;
    atomic_int *failed_posts;
} producer_arg_t;

static void *producer_main(void *arg)
{
    producer_arg_t *p = arg;
    for (int i = 0; i < N_PER_PRODUCER; i++) {
        test_msg_t *t = &p->msgs[i];
        mk(t, p->producer, i);
        if (craft__mailbox_post(p->mb, &t->msg) != 0) {
            atomic_fetch_add(p->failed_posts, 1);
        }
    }
    return NULL;
}

START_TEST(test_many_producers_one_consumer)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    test_msg_t *msgs = calloc((size_t)N_PRODUCERS * N_PER_PRODUCER, sizeof *msgs);
    ck_assert_ptr_nonnull(msgs);
    atomic_int failed_posts;
    atomic_init(&failed_posts, 0);
    pthread_t th[N_PRODUCERS];
    producer_arg_t args[N_PRODUCERS];
    for (int p = 0; p < N_PRODUCERS; p++) {
        args[p] = (producer_arg_t){&mb, msgs + (size_t)p * N_PER_PRODUCER, p, &failed_posts};
        ck_assert_int_eq(pthread_create(&th[p], NULL, producer_main, &args[p]), 0);
    }

    int next[N_PRODUCERS] = {0};
    unsigned char *seen = calloc((size_t)N_PRODUCERS * N_PER_PRODUCER, 1);
    ck_assert_ptr_nonnull(seen);
    const int total = N_PRODUCERS * N_PER_PRODUCER;
    for (int got = 0; got < total; got++) {
        /* Forever: the test would hang (and time out) on a lost message. */
        test_msg_t *t = as_test(craft__mailbox_wait(&mb, -1));
        ck_assert_ptr_nonnull(t);
        ck_assert_int_ge(t->producer, 0);
        ck_assert_int_lt(t->producer, N_PRODUCERS);
        size_t slot = (size_t)t->producer * N_PER_PRODUCER + (size_t)t->seq;
        ck_assert_ptr_eq(t, &msgs[slot]);
        ck_assert_msg(seen[slot] == 0, "message %d/%d received twice", t->producer, t->seq);
        seen[slot] = 1;
        /* Per-producer FIFO. */
        ck_assert_int_eq(t->seq, next[t->producer]);
        next[t->producer]++;
    }
    for (int p = 0; p < N_PRODUCERS; p++) {
        pthread_join(th[p], NULL);
        ck_assert_int_eq(next[p], N_PER_PRODUCER);
    }
    ck_assert_int_eq(atomic_load(&failed_posts), 0);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 0));
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
    free(seen);
    free(msgs);
}
END_TEST

/* ---- deadlines ---- */

START_TEST(test_deadline_expires_empty)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    int64_t deadline = craft__now_ns() + CRAFT__MS(30);
    craft__msg_t *m = craft__mailbox_wait(&mb, deadline);
    int64_t after = craft__now_ns();
    ck_assert_ptr_null(m);
    /* Never returns before the deadline (no upper bound asserted). */
    ck_assert_int_ge(after, deadline);
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_deadline_in_past)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 1));
    ck_assert_ptr_null(craft__mailbox_wait(&mb, craft__now_ns() - CRAFT__MS(5)));
    /* A queued message is returned even when the deadline has passed. */
    test_msg_t t;
    mk(&t, 0, 1);
    craft__mailbox_post(&mb, &t.msg);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 1)), &t);
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_deadline_message_before_deadline)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    test_msg_t t;
    mk(&t, 0, 1);
    craft__mailbox_post(&mb, &t.msg);
    /* A far deadline: returns the queued message without waiting for it. */
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, craft__now_ns() + CRAFT__MS(600000))),
                     &t);
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_poll)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 0));
    test_msg_t t;
    mk(&t, 0, 1);
    ck_assert_int_eq(craft__mailbox_post(&mb, &t.msg), 0);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &t);
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 0));
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

/* ---- waking a blocked waiter ---- */

typedef struct {
    craft__mailbox_t *mb;
    int64_t deadline;
    atomic_int tid;
    atomic_int returned;
    craft__msg_t *got;
} waiter_t;

static void *waiter_main(void *arg)
{
    waiter_t *w = arg;
    atomic_store(&w->tid, (int)ut_gettid());
    w->got = craft__mailbox_wait(w->mb, w->deadline);
    atomic_store(&w->returned, 1);
    return NULL;
}

static void start_waiter(waiter_t *w, pthread_t *th, craft__mailbox_t *mb, int64_t deadline)
{
    w->mb = mb;
    w->deadline = deadline;
    atomic_init(&w->tid, 0);
    atomic_init(&w->returned, 0);
    w->got = NULL;
    ck_assert_int_eq(pthread_create(th, NULL, waiter_main, w), 0);
    ck_assert(tu_wait_for(ut_flag_set, &w->tid, 10000));
    pid_t tid = (pid_t)atomic_load(&w->tid);
    ck_assert(ut_wait_blocked(tid));
    /* It went to sleep with nothing to take: it must still be waiting. */
    ck_assert_int_eq(atomic_load(&w->returned), 0);
}

START_TEST(test_forever_woken_by_post)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    waiter_t w;
    pthread_t th;
    start_waiter(&w, &th, &mb, -1);
    test_msg_t t;
    mk(&t, 1, 2);
    ck_assert_int_eq(craft__mailbox_post(&mb, &t.msg), 0);
    pthread_join(th, NULL);
    ck_assert_ptr_eq(as_test(w.got), &t);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_deadline_woken_by_post)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    waiter_t w;
    pthread_t th;
    /* A deadline far away: the post, not the deadline, ends the wait. */
    start_waiter(&w, &th, &mb, craft__now_ns() + CRAFT__MS(600000));
    test_msg_t t;
    mk(&t, 1, 2);
    ck_assert_int_eq(craft__mailbox_post(&mb, &t.msg), 0);
    pthread_join(th, NULL);
    ck_assert_ptr_eq(as_test(w.got), &t);
    craft__mailbox_close(&mb);
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_forever_woken_by_close)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    waiter_t w;
    pthread_t th;
    start_waiter(&w, &th, &mb, -1);
    craft__mailbox_close(&mb);
    pthread_join(th, NULL);
    ck_assert_ptr_null(w.got);
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_close_wakes_all_waiters)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    enum { N = 4 };
    waiter_t w[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        start_waiter(&w[i], &th[i], &mb, -1);
    }
    craft__mailbox_close(&mb);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ck_assert_ptr_null(w[i].got);
    }
    craft__mailbox_destroy(&mb);
}
END_TEST

/* ---- close ---- */

START_TEST(test_post_after_close)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    test_msg_t a;
    mk(&a, 0, 0);
    ck_assert_int_eq(craft__mailbox_post(&mb, &a.msg), 0);
    craft__mailbox_close(&mb);

    test_msg_t *b = malloc(sizeof *b);
    ck_assert_ptr_nonnull(b);
    mk(b, 0, 1);
    /* Sentinel links: a refused post must not touch the message. */
    craft__queue_t sentinel;
    b->msg.link.next = &sentinel;
    b->msg.link.prev = &sentinel;
    ck_assert_int_eq(craft__mailbox_post(&mb, &b->msg), CRAFT_ESHUTDOWN);
    ck_assert_ptr_eq(b->msg.link.next, &sentinel);
    ck_assert_ptr_eq(b->msg.link.prev, &sentinel);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 1);
    /* Still the caller's: freeing it must leave the mailbox intact (ASan). */
    free(b);

    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &a);
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 0));
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_drain_after_close)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    test_msg_t m[5];
    for (int i = 0; i < 5; i++) {
        mk(&m[i], 0, i);
        ck_assert_int_eq(craft__mailbox_post(&mb, &m[i].msg), 0);
    }
    craft__mailbox_close(&mb);
    craft__mailbox_close(&mb); /* idempotent */
    ck_assert_uint_eq(craft__mailbox_len(&mb), 5);
    /* Queued messages are still handed out, in order, whatever the deadline. */
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[0]);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, -1)), &m[1]);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, craft__now_ns() + CRAFT__MS(600000))),
                     &m[2]);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[3]);
    ck_assert_ptr_eq(as_test(craft__mailbox_wait(&mb, 0)), &m[4]);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    /* Closed and empty: NULL at once, even when asked to wait forever. */
    ck_assert_ptr_null(craft__mailbox_wait(&mb, 0));
    ck_assert_ptr_null(craft__mailbox_wait(&mb, -1));
    ck_assert_ptr_null(craft__mailbox_wait(&mb, craft__now_ns() + CRAFT__MS(600000)));
    craft__mailbox_destroy(&mb);
}
END_TEST

START_TEST(test_len)
{
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    test_msg_t m[3];
    for (int i = 0; i < 3; i++) {
        mk(&m[i], 0, i);
        craft__mailbox_post(&mb, &m[i].msg);
    }
    ck_assert_uint_eq(craft__mailbox_len(&mb), 3);
    craft__mailbox_wait(&mb, 0);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 2);
    craft__mailbox_close(&mb);
    test_msg_t x;
    mk(&x, 0, 9);
    ck_assert_int_eq(craft__mailbox_post(&mb, &x.msg), CRAFT_ESHUTDOWN);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 2);
    craft__mailbox_wait(&mb, 0);
    craft__mailbox_wait(&mb, 0);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    craft__mailbox_wait(&mb, 0);
    ck_assert_uint_eq(craft__mailbox_len(&mb), 0);
    craft__mailbox_destroy(&mb);
}
END_TEST

/* Producers racing with close: each message is either refused (and stays the
 * producer's) or delivered exactly once. */
typedef struct {
    craft__mailbox_t *mb;
    test_msg_t *msgs;
    int producer;
    unsigned char *refused;
} racer_arg_t;

static void *racer_main(void *arg)
{
    racer_arg_t *p = arg;
    for (int i = 0; i < N_PER_PRODUCER; i++) {
        mk(&p->msgs[i], p->producer, i);
        int rv = craft__mailbox_post(p->mb, &p->msgs[i].msg);
        if (rv != 0) {
            /* 2 marks an unexpected code (asserted on the main thread). */
            p->refused[i] = rv == CRAFT_ESHUTDOWN ? 1 : 2;
        }
    }
    return NULL;
}

START_TEST(test_close_races_posts)
{
    enum { NP = 4 };
    craft__mailbox_t mb;
    craft__mailbox_init(&mb);
    test_msg_t *msgs = calloc((size_t)NP * N_PER_PRODUCER, sizeof *msgs);
    unsigned char *refused = calloc((size_t)NP * N_PER_PRODUCER, 1);
    unsigned char *seen = calloc((size_t)NP * N_PER_PRODUCER, 1);
    ck_assert(msgs != NULL && refused != NULL && seen != NULL);
    pthread_t th[NP];
    racer_arg_t args[NP];
    for (int p = 0; p < NP; p++) {
        args[p] = (racer_arg_t){&mb, msgs + (size_t)p * N_PER_PRODUCER, p,
                                refused + (size_t)p * N_PER_PRODUCER};
        ck_assert_int_eq(pthread_create(&th[p], NULL, racer_main, &args[p]), 0);
    }
    /* Consume a while, then close with producers still running. */
    int got = 0;
    while (got < N_PER_PRODUCER) {
        test_msg_t *t = as_test(craft__mailbox_wait(&mb, -1));
        ck_assert_ptr_nonnull(t);
        size_t slot = (size_t)t->producer * N_PER_PRODUCER + (size_t)t->seq;
        ck_assert_int_eq(seen[slot], 0);
        seen[slot] = 1;
        got++;
    }
    craft__mailbox_close(&mb);
    for (int p = 0; p < NP; p++) {
        pthread_join(th[p], NULL);
    }
    test_msg_t *t;
    while ((t = as_test(craft__mailbox_wait(&mb, 0))) != NULL) {
        size_t slot = (size_t)t->producer * N_PER_PRODUCER + (size_t)t->seq;
        ck_assert_int_eq(seen[slot], 0);
        seen[slot] = 1;
    }
    for (size_t i = 0; i < (size_t)NP * N_PER_PRODUCER; i++) {
        ck_assert_int_le(refused[i], 1);
        ck_assert_msg(seen[i] + refused[i] == 1, "message %zu: seen=%d refused=%d", i,
                      seen[i], refused[i]);
    }
    /* Once refused, always refused: per producer, refusals form a suffix. */
    for (int p = 0; p < NP; p++) {
        bool r = false;
        for (int i = 0; i < N_PER_PRODUCER; i++) {
            unsigned char ri = refused[(size_t)p * N_PER_PRODUCER + (size_t)i];
            ck_assert(!(r && !ri));
            r = r || ri;
        }
    }
    craft__mailbox_destroy(&mb);
    free(seen);
    free(refused);
    free(msgs);
}
END_TEST

static Suite *mailbox_suite(void)
{
    Suite *s = suite_create("mailbox");
    TCase *tc = tcase_create("fifo");
    tcase_add_test(tc, test_fifo_order);
    tcase_add_test(tc, test_interleaved_post_take);
    tcase_add_test(tc, test_idle_and_closed);
    tcase_add_test(tc, test_len);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_many_producers_one_consumer);
    suite_add_tcase(s, tc);

    tc = tcase_create("close_race");
    tcase_add_test(tc, test_close_races_posts);
    suite_add_tcase(s, tc);

    tc = tcase_create("deadline");
    tcase_add_test(tc, test_deadline_expires_empty);
    tcase_add_test(tc, test_deadline_in_past);
    tcase_add_test(tc, test_deadline_message_before_deadline);
    tcase_add_test(tc, test_poll);
    tcase_add_test(tc, test_forever_woken_by_post);
    tcase_add_test(tc, test_deadline_woken_by_post);
    tcase_add_test(tc, test_forever_woken_by_close);
    tcase_add_test(tc, test_close_wakes_all_waiters);
    suite_add_tcase(s, tc);

    tc = tcase_create("close");
    tcase_add_test(tc, test_post_after_close);
    tcase_add_test(tc, test_drain_after_close);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(mailbox_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
