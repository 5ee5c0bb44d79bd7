/* sqlite store crash safety: a child process appends batches (and compacts,
 * truncates suffixes, stages commit indexes, sets the term) and reports each
 * acknowledged operation through a pipe; the parent kills it with SIGKILL at
 * a random moment, reopens the same database and checks that everything
 * acknowledged is there and intact, the log is contiguous and the store
 * opens cleanly. One database lives through all rounds; the durability mode
 * alternates.
 *
 * CRAFT_CRASH_ITERATIONS (default 60) and CRAFT_CRASH_SEED (default 1). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "craft/sqlite.h"
#include "testutil.h"

enum {
    REC_TERM = 1,
    REC_BATCH_INTENT,
    REC_BATCH,
    REC_COMPACT_INTENT,
    REC_COMPACT,
    REC_TRUNC_INTENT
};

typedef struct rec {
    uint64_t kind;
    uint64_t a; /* term / first / compaction upto / truncation from */
    uint64_t b; /* batch last */
    uint64_t c; /* commit index staged with the batch */
} rec_t;

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ---- entry contents, a function of (index, term) ---- */

static size_t data_len(uint64_t idx, uint64_t term)
{
    return (size_t)((idx * 7 + term) % 300);
}

static unsigned char data_byte(uint64_t idx, uint64_t term, size_t j)
{
    return (unsigned char)(idx * 131 + term * 17 + j);
}

static size_t ext_len(uint64_t idx)
{
    return (size_t)(idx % 5);
}

static void make_entry(craft_log_t *e, uint64_t idx, uint64_t term,
                       unsigned char *buf)
{
    size_t len = data_len(idx, term);
    for (size_t j = 0; j < len; j++) {
        buf[j] = data_byte(idx, term, j);
    }
    memset(buf + len, (int)(idx & 0xff), ext_len(idx));
    *e = (craft_log_t){
        .index = idx,
        .term = term,
        .type = (craft_log_type_t)(idx % 6),
        .data = buf,
        .len = len,
        .ext = buf + len,
        .ext_len = ext_len(idx),
        .appended_at_ns = (int64_t)(idx * 1000 + term),
    };
}

static bool entry_ok(const craft_log_t *e, uint64_t idx)
{
    uint64_t term = e->term;
    if (e->index != idx || e->type != (craft_log_type_t)(idx % 6) ||
        e->len != data_len(idx, term) || e->ext_len != ext_len(idx) ||
        e->appended_at_ns != (int64_t)(idx * 1000 + term)) {
        return false;
    }
    const unsigned char *d = e->data;
    for (size_t j = 0; j < e->len; j++) {
        if (d[j] != data_byte(idx, term, j)) {
            return false;
        }
    }
    const unsigned char *x = e->ext;
    for (size_t j = 0; j < e->ext_len; j++) {
        if (x[j] != (unsigned char)(idx & 0xff)) {
            return false;
        }
    }
    return true;
}

/* ---- the child: writes until killed ---- */

static void send_rec(int fd, uint64_t kind, uint64_t a, uint64_t b, uint64_t c)
{
    rec_t r = {kind, a, b, c};
    /* One write of less than PIPE_BUF bytes: never torn. */
    if (write(fd, &r, sizeof r) != (ssize_t)sizeof r) {
        _exit(10);
    }
}

static void child(const char *path, uint64_t term, uint64_t seed, int fd)
{
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    o.durability = term % 2 ? CRAFT_SQLITE_DURABILITY_NORMAL
                            : CRAFT_SQLITE_DURABILITY_FULL;
    craft_log_store_t *l;
    craft_stable_store_t *s;
    if (craft_sqlite_open(path, &o, &l, &s) != 0) {
        _exit(2);
    }
    if (s->set_uint64(s->ctx, "CurrentTerm", term) != 0) {
        _exit(3);
    }
    send_rec(fd, REC_TERM, term, 0, 0);
    uint64_t first, last;
    if (l->first_index(l->ctx, &first) != 0 ||
        l->last_index(l->ctx, &last) != 0) {
        _exit(4);
    }
    static unsigned char bufs[64][400];
    uint64_t staged_commit = 0; /* what the last round left, to start from */
    if (l->get_commit_index(l->ctx, &staged_commit) != 0) {
        _exit(4);
    }
    craft_log_t es[64];
    time_t give_up = time(NULL) + 20; /* the parent kills us long before */
    while (time(NULL) < give_up) {
        uint64_t r = rng_next(&seed);
        size_t n = 1 + (size_t)(r % 64);
        for (size_t i = 0; i < n; i++) {
            make_entry(&es[i], last + 1 + i, term, bufs[i]);
        }
        /* Commit lags the log, so suffix truncations stay above it, and
         * never goes back (as in Raft): after a truncation last - 10 may be
         * lower than what an acknowledged batch staged, and a batch cut by
         * the kill after its commit but before its acknowledgement would
         * then persist a lower commit index than the parent expects. */
        uint64_t commit = last > 10 ? last - 10 : 0;
        if (commit < staged_commit) {
            commit = staged_commit;
        }
        staged_commit = commit;
        send_rec(fd, REC_BATCH_INTENT, last + 1, last + n, 0);
        if (l->stage_commit_index(l->ctx, commit) != 0 ||
            l->store_logs(l->ctx, es, n) != 0) {
            _exit(5);
        }
        if (first == 0) {
            first = last + 1;
        }
        send_rec(fd, REC_BATCH, last + 1, last + n, commit);
        last += n;

        if ((r >> 8) % 8 == 0 && last - first > 10) {
            /* Raft §5.3: a follower drops a conflicting suffix. */
            uint64_t from = last - (r >> 16) % 5;
            send_rec(fd, REC_TRUNC_INTENT, from, 0, 0);
            if (l->delete_range(l->ctx, from, last) != 0) {
                _exit(6);
            }
            last = from - 1;
        }
        if (last - first > 2000) {
            /* Compaction after a snapshot: keep the newest 1000. */
            uint64_t upto = last - 1000;
            send_rec(fd, REC_COMPACT_INTENT, upto, 0, 0);
            if (l->delete_range(l->ctx, first, upto) != 0) {
                _exit(7);
            }
            send_rec(fd, REC_COMPACT, upto, 0, 0);
            first = upto + 1;
        }
    }
    _exit(8);
}

/* ---- the parent ---- */

typedef struct expect {
    uint64_t term;        /* acknowledged CurrentTerm */
    uint64_t acked_last;  /* every index up to this, above `maybe_gone`, exists */
    uint64_t maybe_gone;  /* highest compaction started */
    uint64_t compacted;   /* highest compaction acknowledged */
    uint64_t commit;      /* commit index staged with the last acked batch */
    uint64_t pending_first, pending_last; /* batch being written, if any */
} expect_t;

static void apply_rec(expect_t *x, const rec_t *r)
{
    x->pending_first = x->pending_last = 0;
    switch (r->kind) {
    case REC_BATCH_INTENT:
        x->pending_first = r->a;
        x->pending_last = r->b;
        break;
    case REC_TERM:
        x->term = r->a;
        break;
    case REC_BATCH:
        x->acked_last = r->b;
        x->commit = r->c;
        break;
    case REC_TRUNC_INTENT:
        x->acked_last = r->a - 1;
        break;
    case REC_COMPACT_INTENT:
        x->maybe_gone = r->a;
        break;
    case REC_COMPACT:
        x->compacted = r->a;
        break;
    default:
        ck_abort_msg("unknown record kind %llu", (unsigned long long)r->kind);
    }
}

static void verify(const char *path, const expect_t *x, uint64_t round_term)
{
    craft_log_store_t *l;
    craft_stable_store_t *s;
    int rv = craft_sqlite_open(path, NULL, &l, &s);
    ck_assert_msg(rv == 0, "reopen after kill: %s", craft_err_name(rv));
    uint64_t first = 0, last = 0, term = 0, commit = 0;
    ck_assert_int_eq(l->first_index(l->ctx, &first), 0);
    ck_assert_int_eq(l->last_index(l->ctx, &last), 0);
    ck_assert_msg(last >= x->acked_last, "last %llu < acknowledged %llu",
                  (unsigned long long)last,
                  (unsigned long long)x->acked_last);
    if (x->pending_last != 0) {
        /* Killed while a batch was being written: all of it or none. */
        ck_assert_msg(last == x->pending_first - 1 || last == x->pending_last,
                      "batch %llu..%llu torn: last index %llu",
                      (unsigned long long)x->pending_first,
                      (unsigned long long)x->pending_last,
                      (unsigned long long)last);
    }
    if (x->acked_last > x->maybe_gone) {
        ck_assert_uint_ne(first, 0);
        ck_assert_msg(first <= x->maybe_gone + 1,
                      "first %llu: acknowledged entries from %llu lost",
                      (unsigned long long)first,
                      (unsigned long long)x->maybe_gone + 1);
    }
    if (first != 0) {
        ck_assert_uint_gt(first, x->compacted);
    }
    uint64_t prev_term = 0;
    for (uint64_t i = first; first != 0 && i <= last; i++) {
        craft_log_t e;
        memset(&e, 0, sizeof e);
        rv = l->get_log(l->ctx, i, &e);
        ck_assert_msg(rv == 0, "index %llu in %llu..%llu: %s",
                      (unsigned long long)i, (unsigned long long)first,
                      (unsigned long long)last, craft_err_name(rv));
        ck_assert_msg(entry_ok(&e, i), "entry %llu damaged",
                      (unsigned long long)i);
        ck_assert_uint_ge(e.term, prev_term);
        ck_assert_uint_le(e.term, round_term);
        prev_term = e.term;
        craft_log_release(&e);
    }
    if (x->term > 0) {
        ck_assert_int_eq(s->get_uint64(s->ctx, "CurrentTerm", &term), 0);
        ck_assert_uint_ge(term, x->term);
    }
    ck_assert_int_eq(l->get_commit_index(l->ctx, &commit), 0);
    ck_assert_uint_ge(commit, x->commit);
    ck_assert_uint_le(commit, last);
    l->close(l->ctx);
    s->close(s->ctx);
}

static uint64_t env_u64(const char *name, uint64_t def)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? strtoull(v, NULL, 10) : def;
}

START_TEST(test_kill9)
{
    uint64_t rounds = env_u64("CRAFT_CRASH_ITERATIONS", 60);
    uint64_t seed0 = env_u64("CRAFT_CRASH_SEED", 1);
    char *dir = tu_tmpdir("craft-sqlite-crash");
    ck_assert_ptr_nonnull(dir);
    char path[600];
    snprintf(path, sizeof path, "%s/crash.db", dir);
    expect_t x = {0};
    uint64_t batches = 0, compactions = 0, killed_early = 0, mid_batch = 0;
    uint64_t waited = 0, writing_rounds = 0;

    for (uint64_t round = 1; round <= rounds; round++) {
        uint64_t seed = (seed0 + round) * 0x9E3779B97F4A7C15ULL;
        int fds[2];
        ck_assert_int_eq(pipe(fds), 0);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(fds[0]);
            child(path, round, seed, fds[1]);
        }
        close(fds[1]);
        /* A random moment. One round in four counts from the fork, so some
         * kills land inside the open (creation, recovery, checks); the others
         * count from the child's first acknowledgement (it has opened the
         * store), so kills land among the writes however slow the machine
         * (sanitizers) makes the open. */
        uint64_t r0 = rng_next(&seed);
        bool from_open = r0 % 4 != 0;
        rec_t r;
        ssize_t got;
        bool any = false, writing = false;
        if (from_open) {
            waited++;
            got = read(fds[0], &r, sizeof r);
            if (got == (ssize_t)sizeof r) {
                apply_rec(&x, &r);
                any = true;
            }
        }
        tu_sleep_ms((int64_t)((r0 >> 8) % 30));
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                      "round %llu: child failed on its own (exit %d)",
                      (unsigned long long)round,
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        while ((got = read(fds[0], &r, sizeof r)) == (ssize_t)sizeof r) {
            apply_rec(&x, &r);
            writing = writing || r.kind == REC_BATCH_INTENT;
            batches += r.kind == REC_BATCH;
            compactions += r.kind == REC_COMPACT;
            any = true;
        }
        ck_assert_int_eq(got, 0);
        close(fds[0]);
        killed_early += !any;
        writing_rounds += writing && from_open;
        mid_batch += x.pending_last != 0;
        verify(path, &x, round);
        x.pending_first = x.pending_last = 0;
    }
    fprintf(stderr,
            "crash test: %llu rounds, %llu acknowledged batches, %llu "
            "compactions, %llu kills before the first ack, %llu kills inside a "
            "batch, last index %llu\n",
            (unsigned long long)rounds, (unsigned long long)batches,
            (unsigned long long)compactions, (unsigned long long)killed_early, (unsigned long long)mid_batch,
            (unsigned long long)x.acked_last);
    /* The kills must land while writing, not only during opens. */
    ck_assert_uint_ge(writing_rounds * 2, waited);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sqlite crash");
    TCase *tc = tcase_create("kill9");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_kill9);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
