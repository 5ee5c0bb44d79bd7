/*
 * craft_node: a craft node driven over stdin/stdout, the C half of the
 * interop suite. Same flags, control protocol, FSM and snapshot format as
 * tests/interop/gonode/main.go (read its header for the protocol); the test
 * drives both alike. Parts: the TCP transport, the sqlite log/stable store
 * (or the in-memory one with --inmem) and the file snapshot store, all under
 * --dir.
 *
 * FSM: an append-only list of (index, data) and a rolling FNV-1a 64 hash
 * over the data bytes in apply order. Snapshot: per entry, index as u64
 * big-endian, data length as u32 big-endian, then the data.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "craft.h"
#include "craft/file_snapshot.h"
#include "craft/inmem.h"
#include "craft/sqlite.h"
#include "craft/tcp.h"

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL
#define OP_TIMEOUT_MS 10000

/* ---- the FSM ---- */

typedef struct entry {
    uint64_t index;
    size_t len;
    char *data;
} entry_t;

typedef struct list_fsm {
    pthread_mutex_t mu;
    entry_t *entries;
    size_t n, cap;
    uint64_t hash;
    unsigned restores;
} list_fsm_t;

static uint64_t fnv(uint64_t h, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

static void entries_free(entry_t *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(e[i].data);
    }
    free(e);
}

static int entries_push(entry_t **e, size_t *n, size_t *cap, uint64_t index,
                        const void *data, size_t len)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        entry_t *ne = realloc(*e, c * sizeof *ne);
        if (ne == NULL) {
            return -1;
        }
        *e = ne;
        *cap = c;
    }
    char *d = malloc(len + 1);
    if (d == NULL) {
        return -1;
    }
    if (len > 0) {
        memcpy(d, data, len);
    }
    d[len] = '\0';
    (*e)[*n] = (entry_t){index, len, d};
    (*n)++;
    return 0;
}

static void *fsm_apply(void *ctx, const craft_log_t *log)
{
    list_fsm_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    if (entries_push(&f->entries, &f->n, &f->cap, log->index, log->data, log->len) != 0) {
        fprintf(stderr, "craft_node: out of memory applying index %" PRIu64 "\n", log->index);
        abort();
    }
    f->hash = fnv(f->hash, log->data, log->len);
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* The snapshot is serialised when taken (it is small) so that persist,
 * which runs concurrently with apply, touches nothing shared. */
typedef struct fsm_snap {
    unsigned char *buf;
    size_t len;
    craft_fsm_snapshot_t vt;
} fsm_snap_t;

static int snap_persist(void *ctx, craft_snapshot_sink_t *sink)
{
    fsm_snap_t *s = ctx;
    int rv = s->len > 0 ? sink->write(sink->ctx, s->buf, s->len) : 0;
    if (rv != 0) {
        sink->cancel(sink->ctx);
        return rv;
    }
    return sink->close(sink->ctx);
}

static void snap_release(void *ctx)
{
    fsm_snap_t *s = ctx;
    free(s->buf);
    free(s);
}

static void put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

static int fsm_snapshot(void *ctx, craft_fsm_snapshot_t **out)
{
    list_fsm_t *f = ctx;
    fsm_snap_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    pthread_mutex_lock(&f->mu);
    size_t len = 0;
    for (size_t i = 0; i < f->n; i++) {
        len += 12 + f->entries[i].len;
    }
    s->buf = malloc(len ? len : 1);
    if (s->buf == NULL) {
        pthread_mutex_unlock(&f->mu);
        free(s);
        return CRAFT_ENOMEM;
    }
    unsigned char *p = s->buf;
    for (size_t i = 0; i < f->n; i++) {
        put_be(p, f->entries[i].index, 8);
        put_be(p + 8, f->entries[i].len, 4);
        memcpy(p + 12, f->entries[i].data, f->entries[i].len);
        p += 12 + f->entries[i].len;
    }
    pthread_mutex_unlock(&f->mu);
    s->len = len;
    s->vt = (craft_fsm_snapshot_t){s, snap_persist, snap_release};
    *out = &s->vt;
    return 0;
}

static int fsm_restore(void *ctx, craft_reader_t *reader)
{
    list_fsm_t *f = ctx;
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            unsigned char *nb = realloc(buf, cap + 65536);
            if (nb == NULL) {
                free(buf);
                return CRAFT_ENOMEM;
            }
            buf = nb;
            cap += 65536;
        }
        int64_t n = reader->read(reader->ctx, buf + len, cap - len);
        if (n < 0) {
            free(buf);
            return (int)n;
        }
        if (n == 0) {
            break;
        }
        len += (size_t)n;
    }
    entry_t *entries = NULL;
    size_t n = 0, ecap = 0;
    uint64_t h = FNV_OFFSET;
    int rv = 0;
    for (size_t off = 0; off < len;) {
        if (len - off < 12 || len - off - 12 < get_be(buf + off + 8, 4)) {
            fprintf(stderr, "craft_node: truncated snapshot record at byte %zu\n", off);
            rv = CRAFT_ECORRUPT;
            break;
        }
        size_t dlen = (size_t)get_be(buf + off + 8, 4);
        if (entries_push(&entries, &n, &ecap, get_be(buf + off, 8), buf + off + 12, dlen) != 0) {
            rv = CRAFT_ENOMEM;
            break;
        }
        h = fnv(h, buf + off + 12, dlen);
        off += 12 + dlen;
    }
    free(buf);
    if (rv != 0) {
        entries_free(entries, n);
        return rv;
    }
    pthread_mutex_lock(&f->mu);
    entries_free(f->entries, f->n);
    f->entries = entries;
    f->n = n;
    f->cap = ecap;
    f->hash = h;
    f->restores++;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

/* ---- logging ---- */

static const char *node_id = "?";

static void logger(void *ctx, craft_level_t level, const char *component, const char *message)
{
    static const char *names[] = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03ld craft-%s [%s] %s: %s\n", tm.tm_hour, tm.tm_min,
            tm.tm_sec, ts.tv_nsec / 1000000, node_id, names[level], component, message);
}

/* ---- control ---- */

static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* Waits for `f` (bounded: craft futures may wait for a quorum forever),
 * replies "ok[ <index>]" or "err <message>", frees it. */
static void reply_future(craft_future_t *f, bool with_index)
{
    int rv = craft_future_wait_for(f, OP_TIMEOUT_MS);
    if (rv == CRAFT_EPENDING) {
        reply("err timeout waiting for the future");
    } else if (rv != 0) {
        reply("err %s (%s)", craft_strerror(rv), craft_err_name(rv));
    } else if (with_index) {
        reply("ok %" PRIu64, craft_future_index(f));
    } else {
        reply("ok");
    }
    craft_future_free(f);
}

/* "<id>=<addr>,<id>=<addr>..." into voters (strings point into `spec`). */
static int parse_peers(char *spec, craft_configuration_t *cfg)
{
    size_t n = 1;
    for (char *p = spec; *p; p++) {
        n += *p == ',';
    }
    cfg->servers = calloc(n, sizeof *cfg->servers);
    if (cfg->servers == NULL) {
        return -1;
    }
    cfg->n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (eq == NULL || eq == tok || eq[1] == '\0') {
            free(cfg->servers);
            return -1;
        }
        *eq = '\0';
        cfg->servers[cfg->n++] = (craft_server_t){CRAFT_VOTER, tok, eq + 1};
    }
    return cfg->n > 0 ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: craft_node --id ID --dir DIR [--bind 127.0.0.1:0] [--heartbeat ms]\n"
            "  [--election ms] [--lease ms] [--commit ms] [--snapshot-threshold n]\n"
            "  [--snapshot-interval ms] [--trailing-logs n] [--inmem] [--log-level 0-5]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *id = NULL, *dir = NULL, *bind = "127.0.0.1:0";
    bool inmem = false;
    craft_config_t conf;
    craft_config_default(&conf);
    conf.heartbeat_timeout_ms = 200;
    conf.election_timeout_ms = 200;
    conf.leader_lease_timeout_ms = 100;
    conf.commit_timeout_ms = 10;
    conf.log_level = CRAFT_LEVEL_INFO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--inmem") == 0) {
            inmem = true;
            continue;
        }
        if (i + 1 >= argc) {
            usage();
        }
        const char *v = argv[++i];
        if (strcmp(a, "--id") == 0) {
            id = v;
        } else if (strcmp(a, "--dir") == 0) {
            dir = v;
        } else if (strcmp(a, "--bind") == 0) {
            bind = v;
        } else if (strcmp(a, "--heartbeat") == 0) {
            conf.heartbeat_timeout_ms = atoll(v);
        } else if (strcmp(a, "--election") == 0) {
            conf.election_timeout_ms = atoll(v);
        } else if (strcmp(a, "--lease") == 0) {
            conf.leader_lease_timeout_ms = atoll(v);
        } else if (strcmp(a, "--commit") == 0) {
            conf.commit_timeout_ms = atoll(v);
        } else if (strcmp(a, "--snapshot-threshold") == 0) {
            conf.snapshot_threshold = strtoull(v, NULL, 10);
        } else if (strcmp(a, "--snapshot-interval") == 0) {
            conf.snapshot_interval_ms = atoll(v);
        } else if (strcmp(a, "--trailing-logs") == 0) {
            conf.trailing_logs = strtoull(v, NULL, 10);
        } else if (strcmp(a, "--log-level") == 0) {
            conf.log_level = (craft_level_t)atoi(v);
        } else {
            usage();
        }
    }
    if (id == NULL || dir == NULL) {
        usage();
    }
    node_id = id;
    conf.local_id = id;
    conf.logger = logger;
    const char *reason = NULL;
    if (craft_config_validate(&conf, &reason) != 0) {
        fprintf(stderr, "craft_node: config: %s\n", reason ? reason : "invalid");
        return 2;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "craft_node: mkdir %s: %s\n", dir, strerror(errno));
        return 1;
    }

    craft_log_store_t *logs = NULL;
    craft_stable_store_t *stable = NULL;
    craft_snapshot_store_t *snaps = NULL;
    craft_transport_t *trans = NULL;
    int rv;
    if (inmem) {
        rv = craft_inmem_store_new(&logs, &stable);
    } else {
        char path[4096];
        snprintf(path, sizeof path, "%s/raft.sqlite", dir);
        craft_sqlite_options_t so;
        craft_sqlite_options_default(&so);
        so.logger = logger;
        rv = craft_sqlite_open(path, &so, &logs, &stable);
    }
    if (rv != 0) {
        fprintf(stderr, "craft_node: stores: %s\n", craft_strerror(rv));
        return 1;
    }
    craft_file_snapshot_options_t fo;
    craft_file_snapshot_options_default(&fo);
    fo.retain = 2;
    fo.logger = logger;
    rv = craft_file_snapshot_store_open(dir, &fo, &snaps);
    if (rv != 0) {
        fprintf(stderr, "craft_node: snapshots: %s\n", craft_strerror(rv));
        return 1;
    }
    craft_tcp_options_t to;
    craft_tcp_options_default(&to);
    to.logger = logger;
    to.log_level = conf.log_level;
    rv = craft_tcp_transport_new(bind, NULL, &to, &trans);
    if (rv != 0) {
        fprintf(stderr, "craft_node: transport on %s: %s\n", bind, craft_strerror(rv));
        return 1;
    }
    reply("ready %s", trans->local_addr(trans->ctx));

    list_fsm_t lf = {.hash = FNV_OFFSET};
    pthread_mutex_init(&lf.mu, NULL);
    craft_fsm_t fsm = {.ctx = &lf,
                       .apply = fsm_apply,
                       .snapshot = fsm_snapshot,
                       .restore = fsm_restore};
    craft_t *r = NULL;
    char *line = NULL;
    size_t linecap = 0;
    ssize_t got;
    while ((got = getline(&line, &linecap, stdin)) > 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) {
            line[--got] = '\0';
        }
        char *save = NULL;
        char *cmd = strtok_r(line, " ", &save);
        char *a1 = cmd ? strtok_r(NULL, " ", &save) : NULL;
        char *a2 = a1 ? strtok_r(NULL, " ", &save) : NULL;
        char *a3 = a2 ? strtok_r(NULL, " ", &save) : NULL;
        int nargs = (a1 != NULL) + (a2 != NULL) + (a3 != NULL);
        if (cmd == NULL) {
            continue;
        }
        if (strcmp(cmd, "quit") == 0) {
            break;
        }
        bool starting = strcmp(cmd, "bootstrap") == 0 || strcmp(cmd, "start") == 0;
        if (r == NULL && !starting) {
            reply("err not started");
            continue;
        }
        if ((strcmp(cmd, "bootstrap") == 0 && nargs == 1) ||
            (strcmp(cmd, "start") == 0 && nargs == 0)) {
            if (r != NULL) {
                reply("err already started");
                continue;
            }
            if (a1 != NULL) {
                craft_configuration_t cfg;
                if (parse_peers(a1, &cfg) != 0) {
                    reply("err bad peer list");
                    continue;
                }
                rv = craft_bootstrap_cluster(&conf, logs, stable, snaps, trans, &cfg);
                free(cfg.servers);
                if (rv != 0) {
                    reply("err bootstrap: %s", craft_strerror(rv));
                    continue;
                }
            }
            rv = craft_new(&r, &conf, &fsm, logs, stable, snaps, trans);
            if (rv != 0) {
                r = NULL;
                reply("err craft_new: %s", craft_strerror(rv));
                continue;
            }
            reply("ok");
        } else if (strcmp(cmd, "apply") == 0 && nargs == 1) {
            reply_future(craft_apply(r, a1, strlen(a1), OP_TIMEOUT_MS), true);
        } else if (strcmp(cmd, "state") == 0) {
            reply("state %s", craft_state_name(craft_state(r)));
        } else if (strcmp(cmd, "leader") == 0) {
            char *addr = NULL;
            if (craft_leader(r, NULL, &addr) == 0 && addr != NULL) {
                reply("leader %s", addr);
            } else {
                reply("leader none");
            }
            free(addr);
        } else if (strcmp(cmd, "hash") == 0) {
            pthread_mutex_lock(&lf.mu);
            reply("hash %zu %016" PRIx64, lf.n, lf.hash);
            pthread_mutex_unlock(&lf.mu);
        } else if (strcmp(cmd, "list") == 0) {
            pthread_mutex_lock(&lf.mu);
            printf("list %zu", lf.n);
            for (size_t i = 0; i < lf.n; i++) {
                printf(" %" PRIu64 ":%s", lf.entries[i].index, lf.entries[i].data);
            }
            pthread_mutex_unlock(&lf.mu);
            reply("");
        } else if (strcmp(cmd, "addvoter") == 0 && nargs == 2) {
            reply_future(craft_add_voter(r, a1, a2, 0, OP_TIMEOUT_MS), true);
        } else if (strcmp(cmd, "removeserver") == 0 && nargs == 1) {
            reply_future(craft_remove_server(r, a1, 0, OP_TIMEOUT_MS), true);
        } else if (strcmp(cmd, "transfer") == 0 && (nargs == 0 || nargs == 2)) {
            reply_future(nargs == 0 ? craft_leadership_transfer(r)
                                    : craft_leadership_transfer_to(r, a1, a2),
                         false);
        } else if (strcmp(cmd, "snapshot") == 0) {
            reply_future(craft_snapshot(r), false);
        } else if (strcmp(cmd, "appliedindex") == 0) {
            reply("appliedindex %" PRIu64, craft_applied_index(r));
        } else if (strcmp(cmd, "stats") == 0) {
            craft_stats_t st;
            craft_stats(r, &st);
            pthread_mutex_lock(&lf.mu);
            unsigned restores = lf.restores;
            pthread_mutex_unlock(&lf.mu);
            reply("stats %u %" PRIu64 " %" PRIu64 " %" PRIu64, restores, st.last_snapshot_index,
                  st.term, st.last_log_index);
        } else {
            reply("err unknown command \"%s\"", cmd);
        }
    }
    free(line);
    craft_free(r);
    trans->close(trans->ctx);
    snaps->close(snaps->ctx);
    logs->close(logs->ctx);
    stable->close(stable->ctx);
    entries_free(lf.entries, lf.n);
    pthread_mutex_destroy(&lf.mu);
    reply("bye");
    return 0;
}
