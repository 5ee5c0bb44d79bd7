/*
 * craft-bench: throughput, latency and failover time of an N-node craft
 * cluster running in one process.
 *
 *   craft-bench [--nodes N] [--transport inmem|tcp] [--store inmem|sqlite]
 *               [--clients C] [--depth K] [--payload P] [--seconds D]
 *               [--warmup W] [--heartbeat-ms H] [--election-ms E]
 *               [--lease-ms L] [--commit-ms T] [--max-append M]
 *               [--max-inflight I] [--max-uncommitted U] [--dir DIR]
 *               [--progress-ms MS] [--no-election] [--stats] [--verbose]
 *               [--async] [--apply-inline] [--wait-spin-us US]
 *               [--shared-loop] [--loops N] [--loop-spin-us US]
 *               [--snapshot-ms MS] [--snapshot-threshold N] [--trailing-logs N]
 *
 * C client threads each keep K applies of P bytes outstanding against the
 * leader (closed loop; K = 1 by default: apply, wait, repeat). A client
 * whose apply fails with CRAFT_ENOTLEADER or CRAFT_ELEADERSHIPLOST retries
 * on the new leader. Operations completing during the W-second warm-up are
 * not counted; the D seconds after it are. Then the leader is shut down
 * and the time until another node is leader is measured.
 *
 * stdout: ONE JSON line (nodes, transport, store, clients, payload, seconds,
 * ops, ops_per_sec, p50_us, p99_us, max_us, election_ms, rss_kb, ...).
 * stderr: a progress line every --progress-ms (default 1000) with the rate,
 * the process RSS and the in-flight gauges (uncommitted entries on the
 * leader, commit-to-apply lag of the slowest node), so flow control and
 * memory can be watched over a long run.
 *
 * The FSM only counts bytes. sqlite stores live in a fresh temporary
 * directory under DIR (default $TMPDIR or /tmp) with durability full, and
 * are removed at exit. tcp binds 127.0.0.1 on free ports; with --loops N
 * the nodes' TCP transports run on N shared event-loop threads
 * (craft_tcp_loop_t; node i on loop i mod N) instead of one each;
 * --shared-loop is --loops 1; --loop-spin-us US makes those loops poll for
 * up to US microseconds when idle (craft_tcp_loop_set_spin).
 */
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "craft.h"
#include "craft/inmem.h"
#include "craft/sqlite.h"
#include "craft/tcp.h"

#define MAX_NODES 9
#define MAX_CLIENTS 1024

/* ---- options ---- */

typedef struct opts {
    int nodes;
    const char *transport; /* "inmem" | "tcp" */
    const char *store;     /* "inmem" | "sqlite" */
    int clients;
    int depth;
    size_t payload;
    double seconds;
    double warmup;
    int64_t heartbeat_ms, election_ms, lease_ms, commit_ms;
    int max_append, max_inflight;
    long long max_uncommitted; /* -1 = library default */
    const char *dir;
    int64_t progress_ms;
    bool election;
    bool verbose;
    bool stats;
    bool async; /* clients driven by completion callbacks, no thread each */
    bool apply_inline; /* config.apply_inline */
    int64_t wait_spin_us; /* config.wait_spin_us */
    int loops; /* tcp: shared craft_tcp_loop_t threads; 0 = one per node */
    int64_t loop_spin_us; /* craft_tcp_loop_set_spin on those loops */
    /* config.snapshot_interval_ms / snapshot_threshold / trailing_logs;
     * 0 = the library default (120 s / 8192 / 10240) */
    int64_t snapshot_ms;
    long long snapshot_threshold, trailing_logs;
} opts_t;

static opts_t O = {
    .nodes = 3,
    .transport = "inmem",
    .store = "inmem",
    .clients = 1,
    .depth = 1,
    .payload = 64,
    .seconds = 10,
    .warmup = 1,
    .heartbeat_ms = 100,
    .election_ms = 100,
    .lease_ms = 50,
    .commit_ms = 0,
    .max_append = 0,
    .max_inflight = 0,
    .max_uncommitted = -1,
    .dir = NULL,
    .progress_ms = 1000,
    .election = true,
    .verbose = false,
    .stats = false,
    .async = false,
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void die(const char *what, int rv)
{
    fprintf(stderr, "craft-bench: %s: %s\n", what,
            rv < 0 ? craft_strerror(rv) : strerror(rv));
    exit(1);
}

/* ---- latency histogram: log-linear buckets, <= 1/64 relative error,
 * fixed size so a long run does not grow memory ---- */

#define HIST_SUB_BITS 6
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_BUCKETS (HIST_SUB * 2 + HIST_SUB * 58)

typedef struct hist {
    uint64_t count[HIST_BUCKETS];
    uint64_t n;
    uint64_t max;
} hist_t;

static size_t hist_bucket(uint64_t v)
{
    if (v < 2 * HIST_SUB) {
        return (size_t)v;
    }
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - HIST_SUB_BITS;
    size_t i = (size_t)shift * HIST_SUB + (size_t)(v >> shift);
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

/* Middle of the values falling into bucket i. */
static uint64_t hist_value(size_t i)
{
    if (i < 2 * HIST_SUB) {
        return i;
    }
    size_t shift = i / HIST_SUB - 1;
    uint64_t low = (uint64_t)(i - shift * HIST_SUB) << shift;
    return low + ((1ULL << shift) >> 1);
}

static void hist_add(hist_t *h, uint64_t v)
{
    h->count[hist_bucket(v)]++;
    h->n++;
    if (v > h->max) {
        h->max = v;
    }
}

static void hist_merge(hist_t *into, const hist_t *h)
{
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        into->count[i] += h->count[i];
    }
    into->n += h->n;
    if (h->max > into->max) {
        into->max = h->max;
    }
}

static uint64_t hist_pct(const hist_t *h, double p)
{
    if (h->n == 0) {
        return 0;
    }
    uint64_t rank = (uint64_t)(p * (double)h->n);
    if (rank >= h->n) {
        rank = h->n - 1;
    }
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen > rank) {
            uint64_t v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* ---- the FSM: counts bytes ---- */

typedef struct counter_fsm {
    craft_fsm_t vt;
    _Atomic uint64_t bytes;
    _Atomic uint64_t entries;
} counter_fsm_t;

static void fsm_count(counter_fsm_t *f, const craft_log_t *log)
{
    atomic_fetch_add_explicit(&f->bytes, log->len, memory_order_relaxed);
    atomic_fetch_add_explicit(&f->entries, 1, memory_order_relaxed);
}

static void *fsm_apply(void *ctx, const craft_log_t *log)
{
    fsm_count(ctx, log);
    return NULL;
}

static void fsm_apply_batch(void *ctx, const craft_log_t *logs, size_t n,
                            void **responses)
{
    for (size_t i = 0; i < n; i++) {
        fsm_count(ctx, &logs[i]);
        responses[i] = NULL;
    }
}

typedef struct counter_snap {
    craft_fsm_snapshot_t vt;
    uint64_t state[2];
} counter_snap_t;

static int snap_persist(void *ctx, craft_snapshot_sink_t *sink)
{
    counter_snap_t *s = ctx;
    int rv = sink->write(sink->ctx, s->state, sizeof s->state);
    if (rv != 0) {
        sink->cancel(sink->ctx);
        return rv;
    }
    return sink->close(sink->ctx);
}

static void snap_release(void *ctx)
{
    free(ctx);
}

static int fsm_snapshot(void *ctx, craft_fsm_snapshot_t **out)
{
    counter_fsm_t *f = ctx;
    counter_snap_t *s = malloc(sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    s->state[0] = atomic_load(&f->bytes);
    s->state[1] = atomic_load(&f->entries);
    s->vt = (craft_fsm_snapshot_t){
        .ctx = s, .persist = snap_persist, .release = snap_release};
    *out = &s->vt;
    return 0;
}

static int fsm_restore(void *ctx, craft_reader_t *reader)
{
    counter_fsm_t *f = ctx;
    uint64_t state[2];
    size_t got = 0;
    while (got < sizeof state) {
        int64_t n = reader->read(reader->ctx, (char *)state + got, sizeof state - got);
        if (n < 0) {
            return (int)n;
        }
        if (n == 0) {
            return CRAFT_ECORRUPT;
        }
        got += (size_t)n;
    }
    atomic_store(&f->bytes, state[0]);
    atomic_store(&f->entries, state[1]);
    return 0;
}

/* ---- the cluster ---- */

typedef struct node {
    char id[16];
    char addr[64];
    counter_fsm_t fsm;
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    craft_snapshot_store_t *snaps;
    craft_transport_t *trans;
    craft_t *_Atomic r;
} node_t;

static node_t nodes[MAX_NODES];
static craft_tcp_loop_t *tcp_loops[MAX_NODES]; /* --loops */
static char tmpdir[1024];

static void logger(void *ctx, craft_level_t level, const char *component,
                   const char *message)
{
    (void)ctx;
    fprintf(stderr, "[%s] %s: %s\n", level >= CRAFT_LEVEL_ERROR ? "ERROR"
                                     : level == CRAFT_LEVEL_WARN ? "WARN"
                                                                 : "INFO",
            component, message);
}

static void node_config(node_t *n, craft_config_t *c)
{
    craft_config_default(c);
    c->local_id = n->id;
    c->heartbeat_timeout_ms = O.heartbeat_ms;
    c->election_timeout_ms = O.election_ms;
    c->leader_lease_timeout_ms = O.lease_ms;
    if (O.commit_ms > 0) {
        c->commit_timeout_ms = O.commit_ms;
    }
    if (O.max_append > 0) {
        c->max_append_entries = O.max_append;
    }
    if (O.max_inflight > 0) {
        c->max_inflight = O.max_inflight;
    }
    if (O.snapshot_ms > 0) {
        c->snapshot_interval_ms = O.snapshot_ms;
    }
    if (O.snapshot_threshold > 0) {
        c->snapshot_threshold = (uint64_t)O.snapshot_threshold;
    }
    if (O.trailing_logs > 0) {
        c->trailing_logs = (uint64_t)O.trailing_logs;
    }
    c->apply_inline = O.apply_inline;
    c->wait_spin_us = O.wait_spin_us;
    if (O.max_uncommitted >= 0) {
        c->max_uncommitted = (uint64_t)O.max_uncommitted;
    }
    c->logger = logger;
    c->log_level = O.verbose ? CRAFT_LEVEL_INFO : CRAFT_LEVEL_WARN;
}

static void open_node(int i)
{
    node_t *n = &nodes[i];
    snprintf(n->id, sizeof n->id, "node%d", i);
    n->fsm.vt = (craft_fsm_t){.ctx = &n->fsm,
                              .apply = fsm_apply,
                              .apply_batch = fsm_apply_batch,
                              .snapshot = fsm_snapshot,
                              .restore = fsm_restore};
    int rv;
    if (strcmp(O.store, "sqlite") == 0) {
        char path[1100];
        snprintf(path, sizeof path, "%s/node%d.db", tmpdir, i);
        craft_sqlite_options_t so;
        craft_sqlite_options_default(&so);
        so.durability = CRAFT_SQLITE_DURABILITY_FULL;
        so.logger = logger;
        rv = craft_sqlite_open(path, &so, &n->log, &n->stable);
    } else {
        rv = craft_inmem_store_new(&n->log, &n->stable);
    }
    if (rv != 0) {
        die("open store", rv);
    }
    rv = craft_inmem_snapshot_store_new(&n->snaps);
    if (rv != 0) {
        die("snapshot store", rv);
    }
    if (strcmp(O.transport, "tcp") == 0) {
        craft_tcp_options_t to;
        craft_tcp_options_default(&to);
        to.logger = logger;
        to.log_level = O.verbose ? CRAFT_LEVEL_INFO : CRAFT_LEVEL_WARN;
        if (O.max_inflight > 0) {
            to.max_inflight = O.max_inflight;
        }
        if (O.loops > 0) {
            craft_tcp_loop_t **l = &tcp_loops[i % O.loops];
            if (*l == NULL && ((rv = craft_tcp_loop_new(l)) != 0 ||
                               (rv = craft_tcp_loop_set_spin(*l, O.loop_spin_us)) != 0)) {
                die("tcp loop", rv);
            }
            to.loop = *l;
        }
        rv = craft_tcp_transport_new("127.0.0.1:0", NULL, &to, &n->trans);
        if (rv != 0) {
            die("tcp transport", rv);
        }
        snprintf(n->addr, sizeof n->addr, "%s", n->trans->local_addr(n->trans->ctx));
    } else {
        snprintf(n->addr, sizeof n->addr, "inmem%d", i);
        rv = craft_inmem_transport_new(n->addr, &n->trans);
        if (rv != 0) {
            die("inmem transport", rv);
        }
    }
}

static void start_cluster(void)
{
    for (int i = 0; i < O.nodes; i++) {
        open_node(i);
    }
    if (strcmp(O.transport, "inmem") == 0) {
        craft_transport_t *ts[MAX_NODES];
        for (int i = 0; i < O.nodes; i++) {
            ts[i] = nodes[i].trans;
        }
        craft_inmem_transport_connect_all(ts, (size_t)O.nodes);
    }
    craft_server_t servers[MAX_NODES];
    for (int i = 0; i < O.nodes; i++) {
        servers[i] = (craft_server_t){
            .suffrage = CRAFT_VOTER, .id = nodes[i].id, .address = nodes[i].addr};
    }
    craft_configuration_t cfg = {.n = (size_t)O.nodes, .servers = servers};
    for (int i = 0; i < O.nodes; i++) {
        node_t *n = &nodes[i];
        craft_config_t c;
        node_config(n, &c);
        int rv = craft_bootstrap_cluster(&c, n->log, n->stable, n->snaps, n->trans, &cfg);
        if (rv != 0) {
            die("bootstrap", rv);
        }
    }
    for (int i = 0; i < O.nodes; i++) {
        node_t *n = &nodes[i];
        craft_config_t c;
        node_config(n, &c);
        craft_t *r;
        int rv = craft_new(&r, &c, &n->fsm.vt, n->log, n->stable, n->snaps, n->trans);
        if (rv != 0) {
            die("craft_new", rv);
        }
        atomic_store(&n->r, r);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void stop_cluster(void)
{
    for (int i = 0; i < O.nodes; i++) {
        craft_t *r = atomic_exchange(&nodes[i].r, NULL);
        craft_free(r);
    }
    for (int i = 0; i < O.nodes; i++) {
        node_t *n = &nodes[i];
        n->trans->close(n->trans->ctx);
        n->log->close(n->log->ctx);
        n->stable->close(n->stable->ctx);
        n->snaps->close(n->snaps->ctx);
    }
    if (tmpdir[0] != '\0') {
        nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
}

/* The node in state leader with the highest term, or -1. */
static int find_leader(int except)
{
    int best = -1;
    uint64_t best_term = 0;
    for (int i = 0; i < O.nodes; i++) {
        craft_t *r = atomic_load(&nodes[i].r);
        if (i == except || r == NULL || craft_state(r) != CRAFT_LEADER) {
            continue;
        }
        uint64_t t = craft_current_term(r);
        if (best < 0 || t > best_term) {
            best = i;
            best_term = t;
        }
    }
    return best;
}

static int wait_leader(int except, int64_t timeout_ms)
{
    int64_t deadline = now_ns() + timeout_ms * 1000000;
    for (;;) {
        int l = find_leader(except);
        if (l >= 0 || now_ns() > deadline) {
            return l;
        }
        sleep_ms(1);
    }
}

/* ---- /proc ---- */

/* User + system CPU time of the whole process so far, in seconds. */
static double cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) {
        return 0;
    }
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static long proc_status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    long v = -1;
    size_t len = strlen(field);
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, field, len) == 0 && line[len] == ':') {
            v = strtol(line + len + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* ---- clients ---- */

enum { PHASE_WARMUP = 0, PHASE_MEASURE = 1, PHASE_STOP = 2 };
static _Atomic int phase = PHASE_WARMUP;
static _Atomic uint64_t total_ops;    /* every success, for progress */
static _Atomic uint64_t retries;      /* ENOTLEADER / ELEADERSHIPLOST */
static _Atomic uint64_t failures;     /* any other error */

typedef struct client {
    pthread_t thread;
    int id;
    pthread_mutex_t mu; /* --async: callbacks of its chains may overlap */
    hist_t hist; /* measured ops, microseconds */
    uint64_t ops;
} client_t;

typedef struct slot {
    craft_future_t *f;
    int node;
    int64_t start;
} slot_t;

static unsigned char *payload_buf;

static int submit(slot_t *s, int64_t start)
{
    for (;;) {
        int l = find_leader(-1);
        if (l < 0) {
            if (atomic_load(&phase) == PHASE_STOP) {
                return -1;
            }
            sleep_ms(1);
            continue;
        }
        craft_t *r = atomic_load(&nodes[l].r);
        if (r == NULL) {
            continue;
        }
        s->f = craft_apply(r, payload_buf, O.payload, 0);
        if (s->f == NULL) {
            die("craft_apply", CRAFT_ENOMEM);
        }
        s->node = l;
        s->start = start;
        return 0;
    }
}

static void *client_main(void *arg)
{
    client_t *c = arg;
    slot_t *ring = calloc((size_t)O.depth, sizeof *ring);
    if (ring == NULL) {
        die("calloc", ENOMEM);
    }
    size_t head = 0, outstanding = 0;
    for (;;) {
        while (outstanding < (size_t)O.depth && atomic_load(&phase) != PHASE_STOP) {
            if (submit(&ring[(head + outstanding) % (size_t)O.depth], now_ns()) != 0) {
                break;
            }
            outstanding++;
        }
        if (outstanding == 0) {
            break;
        }
        slot_t *s = &ring[head];
        int rv = craft_future_wait(s->f);
        craft_future_free(s->f);
        s->f = NULL;
        if (rv == 0) {
            int64_t end = now_ns();
            atomic_fetch_add_explicit(&total_ops, 1, memory_order_relaxed);
            if (atomic_load(&phase) == PHASE_MEASURE) {
                hist_add(&c->hist, (uint64_t)(end - s->start) / 1000);
                c->ops++;
            }
        } else if (rv == CRAFT_ENOTLEADER || rv == CRAFT_ELEADERSHIPLOST ||
                   rv == CRAFT_ETRANSFER) {
            atomic_fetch_add(&retries, 1);
            /* Same slot, same start: the latency includes the failover. */
            if (atomic_load(&phase) != PHASE_STOP && submit(s, s->start) == 0) {
                continue;
            }
        } else if (rv != CRAFT_ESHUTDOWN) {
            atomic_fetch_add(&failures, 1);
            if (atomic_load(&failures) <= 5) {
                fprintf(stderr, "craft-bench: apply: %s\n", craft_strerror(rv));
            }
        }
        head = (head + 1) % (size_t)O.depth;
        outstanding--;
    }
    free(ring);
    return NULL;
}

/* ---- --async: clients without a thread each ----
 * Each client keeps `depth` chains; a chain has one apply in flight and its
 * completion callback (run by craft on the completing thread) records the
 * result and submits the next one, the way an event-loop application uses
 * craft. Submissions that cannot go out from a callback (no leader, a
 * retryable error, a callback nested too deep) go to a queue the main
 * thread drains every millisecond. */

typedef struct chain {
    client_t *c;
    int64_t start;
    struct chain *next;
} chain_t;

static pthread_mutex_t resubmit_mu = PTHREAD_MUTEX_INITIALIZER;
static chain_t *resubmit_head;
static _Atomic int live_chains;
static _Thread_local int chain_depth;

static void chain_later(chain_t *ch)
{
    pthread_mutex_lock(&resubmit_mu);
    ch->next = resubmit_head;
    resubmit_head = ch;
    pthread_mutex_unlock(&resubmit_mu);
}

static void chain_done(craft_future_t *f, void *arg);

/* Submits the chain's next apply, or parks it for the main thread. */
static void chain_submit(chain_t *ch)
{
    if (atomic_load(&phase) == PHASE_STOP) {
        atomic_fetch_sub(&live_chains, 1);
        return;
    }
    int l = find_leader(-1);
    craft_t *r = l >= 0 ? atomic_load(&nodes[l].r) : NULL;
    if (r == NULL || chain_depth > 4) {
        chain_later(ch);
        return;
    }
    craft_future_t *f = craft_apply(r, payload_buf, O.payload, 0);
    if (f == NULL) {
        die("craft_apply", CRAFT_ENOMEM);
    }
    chain_depth++; /* on_done runs right here when f already completed */
    craft_future_on_done(f, chain_done, ch);
    chain_depth--;
}

static void chain_done(craft_future_t *f, void *arg)
{
    chain_t *ch = arg;
    client_t *c = ch->c;
    int rv = craft_future_wait(f); /* completed: returns at once */
    craft_future_free(f);
    if (rv == 0) {
        int64_t end = now_ns();
        atomic_fetch_add_explicit(&total_ops, 1, memory_order_relaxed);
        if (atomic_load(&phase) == PHASE_MEASURE) {
            pthread_mutex_lock(&c->mu);
            hist_add(&c->hist, (uint64_t)(end - ch->start) / 1000);
            c->ops++;
            pthread_mutex_unlock(&c->mu);
        }
        ch->start = now_ns();
        chain_submit(ch);
        return;
    }
    if (rv == CRAFT_ENOTLEADER || rv == CRAFT_ELEADERSHIPLOST || rv == CRAFT_ETRANSFER) {
        /* Same start: the latency includes the failover. */
        atomic_fetch_add(&retries, 1);
    } else {
        if (rv != CRAFT_ESHUTDOWN) {
            atomic_fetch_add(&failures, 1);
            if (atomic_load(&failures) <= 5) {
                fprintf(stderr, "craft-bench: apply: %s\n", craft_strerror(rv));
            }
        }
        ch->start = now_ns();
    }
    if (atomic_load(&phase) == PHASE_STOP) {
        atomic_fetch_sub(&live_chains, 1);
    } else {
        chain_later(ch);
    }
}

/* Main thread: resubmits parked chains. */
static void chains_drain(void)
{
    pthread_mutex_lock(&resubmit_mu);
    chain_t *list = resubmit_head;
    resubmit_head = NULL;
    pthread_mutex_unlock(&resubmit_mu);
    while (list != NULL) {
        chain_t *next = list->next;
        chain_submit(list);
        list = next;
    }
}

/* ---- progress ---- */

static void progress(double t, uint64_t ops_delta, double dt)
{
    int l = find_leader(-1);
    uint64_t uncommitted = 0, lag = 0, commit = 0;
    if (l >= 0) {
        craft_t *lr = atomic_load(&nodes[l].r);
        commit = craft_commit_index(lr);
        uint64_t last = craft_last_index(lr);
        uncommitted = last > commit ? last - commit : 0;
        for (int i = 0; i < O.nodes; i++) {
            craft_t *r = atomic_load(&nodes[i].r);
            if (r == NULL) {
                continue;
            }
            uint64_t a = craft_applied_index(r);
            if (commit > a && commit - a > lag) {
                lag = commit - a;
            }
        }
    }
    fprintf(stderr,
            "craft-bench: t=%.1fs phase=%s ops/s=%.0f total=%llu rss_kb=%ld "
            "leader=%s commit=%llu uncommitted=%llu max_apply_lag=%llu retries=%llu\n",
            t,
            atomic_load(&phase) == PHASE_WARMUP ? "warmup"
            : atomic_load(&phase) == PHASE_MEASURE ? "measure"
                                                   : "stop",
            dt > 0 ? (double)ops_delta / dt : 0.0,
            (unsigned long long)atomic_load(&total_ops), proc_status_kb("VmRSS"),
            l >= 0 ? nodes[l].id : "none", (unsigned long long)commit,
            (unsigned long long)uncommitted, (unsigned long long)lag,
            (unsigned long long)atomic_load(&retries));
}

/* Sleeps until `until` (monotonic ns), printing progress lines. */
static void run_until(int64_t start, int64_t until, int64_t *last_t, uint64_t *last_ops)
{
    for (;;) {
        int64_t t = now_ns();
        if (t >= until) {
            return;
        }
        /* progress_ms 0: no progress lines, sleep to the end. */
        int64_t next = O.progress_ms > 0 ? *last_t + O.progress_ms * 1000000 : until;
        int64_t wake = next < until ? next : until;
        if (O.async) {
            chains_drain();
            if (wake > t + 1000000) {
                wake = t + 1000000;
            }
        }
        if (wake > t) {
            sleep_ms((wake - t + 999999) / 1000000);
        }
        t = now_ns();
        if (O.progress_ms > 0 && t >= next) {
            uint64_t ops = atomic_load(&total_ops);
            progress((double)(t - start) / 1e9, ops - *last_ops,
                     (double)(t - *last_t) / 1e9);
            *last_ops = ops;
            *last_t = t;
        }
    }
}

/* ---- --stats: where the time goes, from craft_stats deltas over the
 * measured window (one line per node on stderr) ---- */

static craft_stats_t stats_at_start[MAX_NODES];

static void stats_snapshot(craft_stats_t *out)
{
    for (int i = 0; i < O.nodes; i++) {
        craft_t *r = atomic_load(&nodes[i].r);
        memset(&out[i], 0, sizeof out[i]);
        if (r != NULL) {
            craft_stats(r, &out[i]);
        }
    }
}

static double ratio(uint64_t a, uint64_t b)
{
    return b > 0 ? (double)a / (double)b : 0.0;
}

static void stats_print(uint64_t ops)
{
    craft_stats_t end[MAX_NODES];
    stats_snapshot(end);
    for (int i = 0; i < O.nodes; i++) {
        const craft_stats_t *a = &stats_at_start[i], *b = &end[i];
        uint64_t store_n = b->store_calls - a->store_calls;
        uint64_t entries = b->last_log_index - a->last_log_index;
        fprintf(stderr,
                "craft-bench: stats node=%s state=%s entries=%llu store_calls=%llu "
                "entries_per_store=%.2f store_avg_us=%.0f commit_avg_us=%.0f "
                "fsm_batches=%llu entries_per_fsm_batch=%.2f fsm_apply_avg_us=%.1f "
                "rpcs_received=%llu",
                nodes[i].id, craft_state_name(b->state), (unsigned long long)entries,
                (unsigned long long)store_n, ratio(entries, store_n),
                ratio(b->store_time_us_sum - a->store_time_us_sum, store_n),
                ratio(b->commit_time_us_sum - a->commit_time_us_sum,
                      b->commit_time_count - a->commit_time_count),
                (unsigned long long)(b->fsm_apply_batches - a->fsm_apply_batches),
                ratio(b->fsm_applied - a->fsm_applied, b->fsm_apply_batches - a->fsm_apply_batches),
                ratio(b->fsm_apply_time_us_sum - a->fsm_apply_time_us_sum,
                      b->fsm_apply_batches - a->fsm_apply_batches),
                (unsigned long long)(b->rpcs_received - a->rpcs_received));
        for (size_t k = 0; k < b->n_peers; k++) {
            const craft_peer_stats_t *pb = &b->peers[k];
            uint64_t rpcs0 = 0;
            for (size_t j = 0; j < a->n_peers; j++) {
                if (strcmp(a->peers[j].id, pb->id) == 0) {
                    rpcs0 = a->peers[j].append_rpcs;
                }
            }
            fprintf(stderr, " peer[%s]: append_rpcs=%llu entries_per_rpc=%.2f rtt_us_last=%llu "
                    "pipelining=%d",
                    pb->id, (unsigned long long)(pb->append_rpcs - rpcs0),
                    ratio(entries, pb->append_rpcs - rpcs0),
                    (unsigned long long)pb->rtt_us_last, (int)pb->pipelining);
        }
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "craft-bench: stats ops=%llu rss_anon_kb=%ld sqlite_memory_used_kb=%lld "
            "sqlite_memory_highwater_kb=%lld\n",
            (unsigned long long)ops, proc_status_kb("RssAnon"),
            (long long)(sqlite3_memory_used() / 1024),
            (long long)(sqlite3_memory_highwater(0) / 1024));
    for (int i = 0; i < MAX_NODES && tcp_loops[i] != NULL; i++) {
        craft_tcp_loop_stats_t ls;
        craft_tcp_loop_stats(tcp_loops[i], &ls);
        fprintf(stderr, "craft-bench: stats loop=%d spins=%llu spin_hits=%llu sleeps=%llu\n", i,
                (unsigned long long)ls.spins, (unsigned long long)ls.spin_hits,
                (unsigned long long)ls.sleeps);
    }
}

/* ---- main ---- */

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--nodes N] [--transport inmem|tcp] [--store inmem|sqlite]\n"
            "  [--clients C] [--depth K] [--payload BYTES] [--seconds D] [--warmup W]\n"
            "  [--heartbeat-ms 100] [--election-ms 100] [--lease-ms 50] [--commit-ms T]\n"
            "  [--max-append M] [--max-inflight I] [--max-uncommitted U] [--dir DIR]\n"
            "  [--progress-ms 1000] [--no-election] [--stats] [--verbose] [--async]\n"
            "  [--apply-inline] [--wait-spin-us US] [--shared-loop] [--loops N]\n"
            "  [--loop-spin-us US]\n"
            "  [--snapshot-ms MS] [--snapshot-threshold N] [--trailing-logs N]\n",
            argv0);
    exit(2);
}

static void parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && v != NULL && (++i, true))
        if (OPT("--nodes")) {
            O.nodes = atoi(v);
        } else if (OPT("--transport")) {
            O.transport = v;
        } else if (OPT("--store")) {
            O.store = v;
        } else if (OPT("--clients")) {
            O.clients = atoi(v);
        } else if (OPT("--depth")) {
            O.depth = atoi(v);
        } else if (OPT("--payload")) {
            O.payload = (size_t)strtoul(v, NULL, 10);
        } else if (OPT("--seconds")) {
            O.seconds = atof(v);
        } else if (OPT("--warmup")) {
            O.warmup = atof(v);
        } else if (OPT("--heartbeat-ms")) {
            O.heartbeat_ms = atoll(v);
        } else if (OPT("--election-ms")) {
            O.election_ms = atoll(v);
        } else if (OPT("--lease-ms")) {
            O.lease_ms = atoll(v);
        } else if (OPT("--commit-ms")) {
            O.commit_ms = atoll(v);
        } else if (OPT("--max-append")) {
            O.max_append = atoi(v);
        } else if (OPT("--snapshot-ms")) {
            O.snapshot_ms = atoll(v);
        } else if (OPT("--snapshot-threshold")) {
            O.snapshot_threshold = atoll(v);
        } else if (OPT("--trailing-logs")) {
            O.trailing_logs = atoll(v);
        } else if (OPT("--max-inflight")) {
            O.max_inflight = atoi(v);
        } else if (OPT("--max-uncommitted")) {
            O.max_uncommitted = atoll(v);
        } else if (OPT("--wait-spin-us")) {
            O.wait_spin_us = atoll(v);
        } else if (OPT("--dir")) {
            O.dir = v;
        } else if (OPT("--progress-ms")) {
            O.progress_ms = atoll(v);
        } else if (strcmp(a, "--no-election") == 0) {
            O.election = false;
        } else if (strcmp(a, "--stats") == 0) {
            O.stats = true;
        } else if (strcmp(a, "--async") == 0) {
            O.async = true;
        } else if (strcmp(a, "--apply-inline") == 0) {
            O.apply_inline = true;
        } else if (strcmp(a, "--shared-loop") == 0) {
            O.loops = 1;
        } else if (OPT("--loops")) {
            O.loops = atoi(v);
        } else if (OPT("--loop-spin-us")) {
            O.loop_spin_us = atoll(v);
        } else if (strcmp(a, "--verbose") == 0) {
            O.verbose = true;
        } else {
            usage(argv[0]);
        }
#undef OPT
    }
    if (O.nodes < 1 || O.nodes > MAX_NODES || O.clients < 1 ||
        O.clients > MAX_CLIENTS || O.depth < 1 || O.depth > 4096 || O.loops < 0 ||
        O.loops > MAX_NODES || O.loop_spin_us < 0 ||
        O.loop_spin_us > CRAFT_TCP_LOOP_SPIN_MAX_US || (O.loop_spin_us > 0 && O.loops == 0) ||
        O.seconds <= 0 || O.warmup < 0 || O.progress_ms < 0 ||
        (strcmp(O.transport, "inmem") != 0 && strcmp(O.transport, "tcp") != 0) ||
        (strcmp(O.store, "inmem") != 0 && strcmp(O.store, "sqlite") != 0)) {
        usage(argv[0]);
    }
}

int main(int argc, char **argv)
{
    /* Sanitizer runs of the test suite (scripts/test.sh) scale cluster
     * timeouts; the smoke test follows so leadership does not flap. Explicit
     * options still win. */
    const char *scale_env = getenv("CRAFT_TEST_TIME_SCALE");
    if (scale_env != NULL && atoll(scale_env) > 1) {
        O.heartbeat_ms *= atoll(scale_env);
        O.election_ms *= atoll(scale_env);
        O.lease_ms *= atoll(scale_env);
    }
    parse(argc, argv);
    if (strcmp(O.store, "sqlite") == 0) {
        const char *base = O.dir ? O.dir : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(tmpdir, sizeof tmpdir, "%s/craft-bench-XXXXXX", base);
        if (mkdtemp(tmpdir) == NULL) {
            die("mkdtemp", errno);
        }
    }
    payload_buf = malloc(O.payload ? O.payload : 1);
    if (payload_buf == NULL) {
        die("malloc", ENOMEM);
    }
    for (size_t i = 0; i < O.payload; i++) {
        payload_buf[i] = (unsigned char)('a' + i % 26);
    }

    start_cluster();
    if (wait_leader(-1, 30000) < 0) {
        fprintf(stderr, "craft-bench: no leader after 30 s\n");
        return 1;
    }

    client_t *clients = calloc((size_t)O.clients, sizeof *clients);
    if (clients == NULL) {
        die("calloc", ENOMEM);
    }
    int64_t start = now_ns();
    int64_t last_t = start;
    uint64_t last_ops = 0;
    chain_t *chains = NULL;
    for (int i = 0; i < O.clients; i++) {
        clients[i].id = i;
        pthread_mutex_init(&clients[i].mu, NULL);
    }
    if (O.async) {
        size_t n = (size_t)O.clients * (size_t)O.depth;
        chains = calloc(n, sizeof *chains);
        if (chains == NULL) {
            die("calloc", ENOMEM);
        }
        atomic_store(&live_chains, (int)n);
        for (size_t k = 0; k < n; k++) {
            chains[k].c = &clients[k / (size_t)O.depth];
            chains[k].start = now_ns();
            chain_submit(&chains[k]);
        }
    }
    for (int i = 0; i < O.clients && !O.async; i++) {
        int rv = pthread_create(&clients[i].thread, NULL, client_main, &clients[i]);
        if (rv != 0) {
            die("pthread_create", rv);
        }
    }
    run_until(start, start + (int64_t)(O.warmup * 1e9), &last_t, &last_ops);
    if (O.stats) {
        stats_snapshot(stats_at_start);
    }
    int64_t m_start = now_ns();
    double cpu_start = cpu_seconds();
    atomic_store(&phase, PHASE_MEASURE);
    run_until(start, m_start + (int64_t)(O.seconds * 1e9), &last_t, &last_ops);
    atomic_store(&phase, PHASE_STOP);
    int64_t m_end = now_ns();
    double cpu = cpu_seconds() - cpu_start;
    long rss_kb = proc_status_kb("VmRSS");
    long rss_peak_kb = proc_status_kb("VmHWM");
    long rss_anon_kb = proc_status_kb("RssAnon");
    /* Compaction at work: the oldest snapshot any node holds (0 = one node
     * has taken none). */
    uint64_t min_snapshot = UINT64_MAX;
    for (int i = 0; i < O.nodes; i++) {
        craft_t *r = atomic_load(&nodes[i].r);
        if (r != NULL) {
            craft_stats_t st;
            craft_stats(r, &st);
            min_snapshot = st.last_snapshot_index < min_snapshot ? st.last_snapshot_index
                                                                 : min_snapshot;
        }
    }
    min_snapshot = min_snapshot == UINT64_MAX ? 0 : min_snapshot;
    for (int i = 0; i < O.clients && !O.async; i++) {
        pthread_join(clients[i].thread, NULL);
    }
    /* --async: every chain ends with its apply in flight; wait for them. */
    for (int64_t give_up = now_ns() + 60 * (int64_t)1000000000;
         O.async && atomic_load(&live_chains) > 0 && now_ns() < give_up;) {
        chains_drain();
        sleep_ms(1);
    }
    if (O.async && atomic_load(&live_chains) > 0) {
        fprintf(stderr, "craft-bench: %d async applies never completed\n",
                atomic_load(&live_chains));
        return 1;
    }
    free(chains);
    hist_t *all = calloc(1, sizeof *all);
    if (all == NULL) {
        die("calloc", ENOMEM);
    }
    uint64_t ops = 0;
    for (int i = 0; i < O.clients; i++) {
        hist_merge(all, &clients[i].hist);
        ops += clients[i].ops;
    }
    double window = (double)(m_end - m_start) / 1e9;
    if (O.stats) {
        stats_print(ops);
    }

    /* Failover: shut the leader down, time until another node leads. */
    double election_ms = -1;
    if (O.election && O.nodes >= 3) {
        int old = wait_leader(-1, 10000);
        if (old >= 0) {
            craft_t *r = atomic_load(&nodes[old].r);
            int64_t t0 = now_ns();
            craft_future_t *f = craft_shutdown(r);
            int l = wait_leader(old, 30000);
            int64_t t1 = now_ns();
            if (l >= 0) {
                election_ms = (double)(t1 - t0) / 1e6;
            }
            craft_future_wait(f);
            craft_future_free(f);
        }
    }

    printf("{\"impl\":\"craft\",\"nodes\":%d,\"transport\":\"%s\",\"store\":\"%s\","
           "\"clients\":%d,\"depth\":%d,\"async\":%s,\"apply_inline\":%s,"
           "\"wait_spin_us\":%lld,\"loops\":%d,\"loop_spin_us\":%lld,\"payload\":%zu,"
           "\"snapshot_ms\":%lld,\"min_snapshot_index\":%llu,\"seconds\":%.2f,"
           "\"ops\":%llu,\"ops_per_sec\":%.1f,\"p50_us\":%llu,\"p99_us\":%llu,"
           "\"max_us\":%llu,\"election_ms\":%.1f,\"rss_kb\":%ld,"
           "\"rss_peak_kb\":%ld,\"rss_anon_kb\":%ld,\"cpu_us_per_op\":%.1f,"
           "\"retries\":%llu,\"failures\":%llu}\n",
           O.nodes, O.transport, O.store, O.clients, O.depth, O.async ? "true" : "false",
           O.apply_inline ? "true" : "false", (long long)O.wait_spin_us,
           strcmp(O.transport, "tcp") == 0 ? O.loops : 0,
           strcmp(O.transport, "tcp") == 0 ? (long long)O.loop_spin_us : 0LL,
           O.payload, (long long)O.snapshot_ms, (unsigned long long)min_snapshot, window,
           (unsigned long long)ops, (double)ops / window,
           (unsigned long long)hist_pct(all, 0.50),
           (unsigned long long)hist_pct(all, 0.99), (unsigned long long)all->max,
           election_ms, rss_kb, rss_peak_kb, rss_anon_kb, ops > 0 ? cpu * 1e6 / (double)ops : 0.0,
           (unsigned long long)atomic_load(&retries),
           (unsigned long long)atomic_load(&failures));
    fflush(stdout);

    stop_cluster();
    for (int i = 0; i < MAX_NODES; i++) {
        craft_tcp_loop_free(tcp_loops[i]); /* their transports are closed */
    }
    free(all);
    free(clients);
    free(payload_buf);
    return atomic_load(&failures) > 0 ? 1 : 0;
}
