/*
 * Interop with real hashicorp/raft (Debian's v1.1.2): Go nodes
 * (gonode/main.go) and craft nodes (craft_node.c) as separate processes on
 * loopback, in one cluster, over hashicorp's NetworkTransport protocol.
 *
 * Each node is driven over a pipe pair with one command per line and one
 * reply line each (protocol in gonode/main.go). Both FSMs keep the list of
 * applied (index, data) and a rolling FNV-1a 64 hash over the data. Every
 * scenario ends by checking that every live node holds the identical list,
 * whose hash both languages computed alike, and that every apply a leader
 * acknowledged is in it at its index.
 *
 * Waits are on conditions with generous deadlines; "killed" is SIGKILL.
 * Timeouts given to the nodes and the deadlines scale with
 * CRAFT_TEST_TIME_SCALE (sanitizer builds).
 *
 * Environment (set by meson): CRAFT_NODE (craft_node binary), GONODE_BUILD
 * (build_gonode.sh), GONODE_SRC, GONODE_BIN. The Go node is built before
 * the suite runs; without Go the suite fails and says why.
 * CRAFT_INTEROP_KEEP=1 keeps every scenario's data and logs (a failing one's
 * are always kept); CRAFT_INTEROP_LOG_LEVEL=0..5 sets the craft nodes' log
 * level (default 2, INFO).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define MAX_NODES 8
#define MAX_ACKED 4096
#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL

typedef enum { GO, CRAFT } lang_t;

typedef struct node_opts {
    int heartbeat_ms; /* unscaled; 0 = 200 */
    int election_ms;  /* unscaled; 0 = 200 */
    uint64_t trailing_logs;      /* 0 = node default */
    uint64_t snapshot_threshold; /* 0 = node default */
} node_opts_t;

typedef struct node {
    bool used, alive;
    bool member; /* bootstrapped with, or added to, the configuration */
    lang_t lang;
    char id[32];
    char addr[64];
    char dir[600];
    char log[600];
    node_opts_t opts;
    pid_t pid;
    int to_fd, from_fd;
    char *buf;
    size_t len, cap;
    char *line; /* the last reply, NUL-terminated */
} node_t;

typedef struct acked {
    uint64_t index;
    char data[48];
} acked_t;

static node_t nodes[MAX_NODES];
static acked_t acked[MAX_ACKED];
static size_t n_acked;
static char *tmpdir;
static int64_t scale = 1;
static const char *craft_bin, *go_bin;

static const node_opts_t FAST = {0, 0, 0, 0};
/* Go nodes that cannot campaign before craft's timeouts have run out
 * several times: what makes a craft node the candidate that wins. */
static const node_opts_t SLOW_GO = {1000, 1000, 0, 0};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *lang_name(lang_t l)
{
    return l == GO ? "hashicorp/raft v1.1.2" : "craft";
}

/* ---- failure reporting ---- */

static void dump_logs(void)
{
    for (int i = 0; i < MAX_NODES; i++) {
        if (!nodes[i].used) {
            continue;
        }
        fprintf(stderr, "\n---- %s (%s, %s, %s) last lines of %s ----\n", nodes[i].id,
                lang_name(nodes[i].lang), nodes[i].addr, nodes[i].alive ? "alive" : "down",
                nodes[i].log);
        fflush(stderr);
        char cmd[800];
        snprintf(cmd, sizeof cmd, "tail -n 60 '%s' >&2", nodes[i].log);
        if (system(cmd) != 0) {
            fprintf(stderr, "(no log)\n");
        }
    }
    fprintf(stderr, "---- node data and full logs kept in %s ----\n", tmpdir ? tmpdir : "?");
}

/* Fails the test with a message, after printing the tail of every node's
 * log. ck_abort_msg exits the forked test; the atexit handler kills the
 * nodes. */
static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nINTEROP FAILURE: %s\n", msg);
    dump_logs();
    ck_abort_msg("%s", msg);
    abort();
}

#define REQUIRE(cond, ...)                                                     \
    do {                                                                       \
        if (!(cond)) {                                                         \
            die(__VA_ARGS__);                                                 \
        }                                                                      \
    } while (0)

/* ---- processes ---- */

static void kill_all(void)
{
    for (int i = 0; i < MAX_NODES; i++) {
        if (nodes[i].used && nodes[i].alive) {
            kill(nodes[i].pid, SIGKILL);
            waitpid(nodes[i].pid, NULL, 0);
            nodes[i].alive = false;
        }
    }
}

static void close_pipes(node_t *n)
{
    close(n->to_fd);
    close(n->from_fd);
    n->to_fd = n->from_fd = -1;
    n->len = 0;
}

/* Reads one line into n->line before `deadline` (absolute ms). NULL on
 * timeout or end of file. */
static const char *read_line(node_t *n, int64_t deadline)
{
    for (;;) {
        char *nl = n->len ? memchr(n->buf, '\n', n->len) : NULL;
        if (nl != NULL) {
            size_t l = (size_t)(nl - n->buf);
            free(n->line);
            n->line = malloc(l + 1);
            ck_assert_ptr_nonnull(n->line);
            memcpy(n->line, n->buf, l);
            n->line[l] = '\0';
            memmove(n->buf, nl + 1, n->len - l - 1);
            n->len -= l + 1;
            return n->line;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            return NULL;
        }
        struct pollfd p = {n->from_fd, POLLIN, 0};
        int rv = poll(&p, 1, (int)(left > 1000 ? 1000 : left));
        if (rv < 0 && errno != EINTR) {
            return NULL;
        }
        if (rv <= 0) {
            continue;
        }
        if (n->cap - n->len < 4096) {
            n->cap = n->cap * 2 + 8192;
            n->buf = realloc(n->buf, n->cap);
            ck_assert_ptr_nonnull(n->buf);
        }
        ssize_t got = read(n->from_fd, n->buf + n->len, n->cap - n->len);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            return NULL;
        }
        n->len += (size_t)got;
    }
}

/* Sends one command and returns its reply line (valid until the next
 * command to `n`), failing the test when none comes within 30 s (scaled). */
static const char *cmd(node_t *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *cmd(node_t *n, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int l = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    REQUIRE(n->alive, "command '%s' to %s, which is down", line, n->id);
    line[l++] = '\n';
    for (int off = 0; off < l;) {
        ssize_t w = write(n->to_fd, line + off, (size_t)(l - off));
        if (w < 0 && errno == EINTR) {
            continue;
        }
        REQUIRE(w > 0, "%s: writing command: %s", n->id, strerror(errno));
        off += (int)w;
    }
    line[l - 1] = '\0';
    const char *r = read_line(n, now_ms() + 30000 * scale);
    REQUIRE(r != NULL, "%s (%s): no reply to '%s'", n->id, lang_name(n->lang), line);
    return r;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Starts (or restarts, same id/dir/bind) a node and reads its address. */
static void spawn(node_t *n, const char *bind)
{
    int in[2], out[2];
    ck_assert_int_eq(pipe2(in, O_CLOEXEC), 0);
    ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
    char hb[32], el[32], lease[32], commit[32], trailing[32], threshold[32];
    int hbv = n->opts.heartbeat_ms ? n->opts.heartbeat_ms : 200;
    int elv = n->opts.election_ms ? n->opts.election_ms : 200;
    snprintf(hb, sizeof hb, "%" PRId64, hbv * scale);
    snprintf(el, sizeof el, "%" PRId64, elv * scale);
    snprintf(lease, sizeof lease, "%" PRId64, 100 * scale);
    snprintf(commit, sizeof commit, "%" PRId64, 10 * scale);
    snprintf(trailing, sizeof trailing, "%" PRIu64,
             n->opts.trailing_logs ? n->opts.trailing_logs : 10240);
    snprintf(threshold, sizeof threshold, "%" PRIu64,
             n->opts.snapshot_threshold ? n->opts.snapshot_threshold : 8192);
    const char *bin = n->lang == GO ? go_bin : craft_bin;
    const char *argv[] = {bin, "--id", n->id, "--dir", n->dir, "--bind", bind,
                          "--heartbeat", hb, "--election", el, "--lease", lease,
                          "--commit", commit, "--trailing-logs", trailing,
                          "--snapshot-threshold", threshold, NULL, NULL, NULL};
    const char *level = getenv("CRAFT_INTEROP_LOG_LEVEL");
    if (n->lang == CRAFT && level != NULL) {
        argv[19] = "--log-level";
        argv[20] = level;
    }
    FILE *lf = fopen(n->log, "a");
    ck_assert_ptr_nonnull(lf);
    fprintf(lf, "==== %s start %s --bind %s ====\n", n->id, lang_name(n->lang), bind);
    fclose(lf);
    pid_t parent = getpid();
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* A node must not outlive the test process (Check kills a test
         * that times out). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127);
        }
        int logfd = open(n->log, O_WRONLY | O_APPEND);
        if (logfd < 0 || dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(logfd, 2) < 0) {
            _exit(127);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    n->pid = pid;
    n->to_fd = in[1];
    n->from_fd = out[0];
    n->alive = true;
    const char *r = read_line(n, now_ms() + 60000 * scale);
    REQUIRE(r != NULL && starts_with(r, "ready "), "%s (%s) did not start: %s", n->id,
            lang_name(n->lang), r ? r : "no output");
    snprintf(n->addr, sizeof n->addr, "%s", r + 6);
}

static node_t *new_node(lang_t lang, const char *id, node_opts_t opts)
{
    for (int i = 0; i < MAX_NODES; i++) {
        node_t *n = &nodes[i];
        if (!n->used) {
            memset(n, 0, sizeof *n);
            n->used = true;
            n->lang = lang;
            n->opts = opts;
            n->to_fd = n->from_fd = -1;
            snprintf(n->id, sizeof n->id, "%s", id);
            snprintf(n->dir, sizeof n->dir, "%s/%s", tmpdir, id);
            snprintf(n->log, sizeof n->log, "%s/%s.log", tmpdir, id);
            spawn(n, "127.0.0.1:0");
            return n;
        }
    }
    die("too many nodes");
}

static void kill_node(node_t *n)
{
    REQUIRE(n->alive, "kill of %s, which is down", n->id);
    kill(n->pid, SIGKILL);
    waitpid(n->pid, NULL, 0);
    n->alive = false;
    close_pipes(n);
}

/* Restarts a killed node on its data directory and address. */
static void restart_node(node_t *n)
{
    char bind[64];
    snprintf(bind, sizeof bind, "%s", n->addr);
    spawn(n, bind);
    REQUIRE(strcmp(n->addr, bind) == 0, "%s restarted on %s, not %s", n->id, n->addr, bind);
    const char *r = cmd(n, "start");
    REQUIRE(strcmp(r, "ok") == 0, "%s restart: %s", n->id, r);
}

/* Graceful stop of every live node; each must exit with status 0 (under
 * the sanitizers this is where craft leaks would show). */
static void finish(void)
{
    for (int i = 0; i < MAX_NODES; i++) {
        node_t *n = &nodes[i];
        if (!n->used || !n->alive) {
            continue;
        }
        const char *r = cmd(n, "quit");
        REQUIRE(strcmp(r, "bye") == 0, "%s quit: %s", n->id, r);
        int64_t deadline = now_ms() + 30000 * scale;
        int status = 0;
        pid_t w;
        while ((w = waitpid(n->pid, &status, WNOHANG)) == 0 && now_ms() < deadline) {
            tu_sleep_ms(10);
        }
        REQUIRE(w == n->pid, "%s did not exit after quit", n->id);
        n->alive = false;
        close_pipes(n);
        REQUIRE(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "%s (%s) exited with status %d after quit", n->id, lang_name(n->lang), status);
    }
    for (int i = 0; i < MAX_NODES; i++) {
        free(nodes[i].buf);
        free(nodes[i].line);
        nodes[i].buf = nodes[i].line = NULL;
    }
    if (getenv("CRAFT_INTEROP_KEEP") == NULL) {
        tu_rmrf(tmpdir);
    } else {
        fprintf(stderr, "interop: kept %s\n", tmpdir);
    }
    free(tmpdir);
    tmpdir = NULL;
}

/* ---- cluster operations ---- */

static void bootstrap(node_t *n, node_t **members, size_t k)
{
    char spec[400] = "";
    for (size_t i = 0; i < k; i++) {
        size_t l = strlen(spec);
        snprintf(spec + l, sizeof spec - l, "%s%s=%s", i ? "," : "", members[i]->id,
                 members[i]->addr);
    }
    const char *r = cmd(n, "bootstrap %s", spec);
    REQUIRE(strcmp(r, "ok") == 0, "%s bootstrap: %s", n->id, r);
    for (size_t i = 0; i < k; i++) {
        members[i]->member = true;
    }
}

static void start(node_t *n)
{
    const char *r = cmd(n, "start");
    REQUIRE(strcmp(r, "ok") == 0, "%s start: %s", n->id, r);
}

static node_t *wait_leader(int64_t timeout_ms);

/* True for a reply saying the node is not (or no longer) the leader: with
 * the brief leases these tests use (100 ms), a busy machine can make a
 * leader step down at any time, and that is no interop failure. */
static bool lost_leadership(const char *reply)
{
    return starts_with(reply, "err ") &&
           (strstr(reply, "not the leader") != NULL || strstr(reply, "leadership lost") != NULL);
}

/* Notes a leadership change forced on a scenario (printed, never silent)
 * and returns the new leader. */
static node_t *follow_leader(node_t *old, const char *what, const char *reply)
{
    node_t *l = wait_leader(30000);
    fprintf(stderr, "interop: note: %s on %s (%s) failed: '%s'; leader is now %s (%s)\n", what,
            old->id, lang_name(old->lang), reply, l->id, lang_name(l->lang));
    return l;
}

/* Adds `n` as a voter through the leader; returns the leader. */
static node_t *add_voter(node_t *leader, node_t *n)
{
    for (int attempt = 1;; attempt++) {
        const char *r = cmd(leader, "addvoter %s %s", n->id, n->addr);
        if (starts_with(r, "ok ")) {
            n->member = true;
            return leader;
        }
        REQUIRE(lost_leadership(r) && attempt < 5, "%s (%s): addvoter %s (%s): %s", leader->id,
                lang_name(leader->lang), n->id, lang_name(n->lang), r);
        char what[64];
        snprintf(what, sizeof what, "addvoter %s", n->id);
        leader = follow_leader(leader, what, r);
    }
}

/* The leader every live member agrees on: exactly one node says Leader and
 * every other live member names its address (a node not yet added knows no
 * leader). Fails after `timeout_ms` (scaled). */
static node_t *wait_leader(int64_t timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms * scale;
    char last[256] = "";
    for (;;) {
        node_t *leader = NULL;
        int leaders = 0;
        for (int i = 0; i < MAX_NODES; i++) {
            if (nodes[i].used && nodes[i].alive &&
                strcmp(cmd(&nodes[i], "state"), "state Leader") == 0) {
                leader = &nodes[i];
                leaders++;
            }
        }
        bool agreed = leaders == 1;
        for (int i = 0; agreed && i < MAX_NODES; i++) {
            node_t *n = &nodes[i];
            if (n->used && n->alive && n->member && n != leader) {
                const char *r = cmd(n, "leader");
                if (strncmp(r, "leader ", 7) != 0 || strcmp(r + 7, leader->addr) != 0) {
                    snprintf(last, sizeof last, "%s says '%s'", n->id, r);
                    agreed = false;
                }
            }
        }
        if (agreed) {
            return leader;
        }
        if (leaders != 1) {
            snprintf(last, sizeof last, "%d nodes in state Leader", leaders);
        }
        REQUIRE(now_ms() < deadline, "no agreed leader within %" PRId64 " ms: %s",
                timeout_ms * scale, last);
        tu_sleep_ms(20);
    }
}

/* Applies `count` commands "<prefix>-<i>" on `leader`, each of which must
 * be acknowledged (after a forced leadership change, by the new leader, as
 * "<prefix>-<i>-r<attempt>"); records them and returns the leader. */
static node_t *apply_n(node_t *leader, const char *prefix, int count)
{
    for (int i = 0; i < count; i++) {
        ck_assert_uint_lt(n_acked, MAX_ACKED);
        acked_t *a = &acked[n_acked];
        for (int attempt = 1;; attempt++) {
            if (attempt == 1) {
                snprintf(a->data, sizeof a->data, "%s-%d", prefix, i);
            } else {
                snprintf(a->data, sizeof a->data, "%s-%d-r%d", prefix, i, attempt);
            }
            const char *r = cmd(leader, "apply %s", a->data);
            if (starts_with(r, "ok ")) {
                a->index = strtoull(r + 3, NULL, 10);
                break;
            }
            REQUIRE(lost_leadership(r) && attempt < 5, "%s (%s): apply %s: %s", leader->id,
                    lang_name(leader->lang), a->data, r);
            char what[80];
            snprintf(what, sizeof what, "apply %s", a->data);
            leader = follow_leader(leader, what, r);
        }
        REQUIRE(a->index > 0, "%s: apply %s: no index", leader->id, a->data);
        REQUIRE(n_acked == 0 || a->index > acked[n_acked - 1].index,
                "%s: apply %s acknowledged at index %" PRIu64 ", after %s at %" PRIu64,
                leader->id, a->data, a->index, acked[n_acked - 1].data,
                acked[n_acked - 1].index);
        n_acked++;
    }
    return leader;
}

static uint64_t fnv(uint64_t h, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= FNV_PRIME;
    }
    return h;
}

/* Checks one node's "list" reply against its "hash" and the acked applies:
 * indexes strictly increasing, the hash recomputed here equal to the one
 * the node reported, every acked (index, data) present. */
static void check_list(node_t *n, const char *list, const char *hash)
{
    char *copy = strdup(list);
    ck_assert_ptr_nonnull(copy);
    char *save = NULL;
    char *tok = strtok_r(copy, " ", &save);
    REQUIRE(tok && strcmp(tok, "list") == 0, "%s: bad list reply", n->id);
    tok = strtok_r(NULL, " ", &save);
    size_t count = strtoull(tok ? tok : "0", NULL, 10), seen = 0, next_acked = 0;
    uint64_t h = FNV_OFFSET, prev = 0;
    /* acked[] is in index order within a scenario (one leader at a time,
     * later applies get later indexes). */
    while ((tok = strtok_r(NULL, " ", &save)) != NULL) {
        char *colon = strchr(tok, ':');
        REQUIRE(colon != NULL, "%s: bad list item '%s'", n->id, tok);
        uint64_t idx = strtoull(tok, NULL, 10);
        const char *data = colon + 1;
        REQUIRE(idx > prev, "%s: FSM index %" PRIu64 " after %" PRIu64, n->id, idx, prev);
        prev = idx;
        h = fnv(h, data, strlen(data));
        if (next_acked < n_acked && acked[next_acked].index < idx) {
            die("%s (%s): acknowledged apply %s at index %" PRIu64 " is missing",
                 n->id, lang_name(n->lang), acked[next_acked].data, acked[next_acked].index);
        }
        if (next_acked < n_acked && acked[next_acked].index == idx) {
            REQUIRE(strcmp(acked[next_acked].data, data) == 0,
                    "%s (%s): index %" PRIu64 " holds '%s', the leader acknowledged '%s'",
                    n->id, lang_name(n->lang), idx, data, acked[next_acked].data);
            next_acked++;
        }
        seen++;
    }
    REQUIRE(next_acked == n_acked, "%s (%s): acknowledged apply %s at index %" PRIu64
            " is missing", n->id, lang_name(n->lang), acked[next_acked].data,
            acked[next_acked].index);
    REQUIRE(seen == count, "%s: list says %zu entries, holds %zu", n->id, count, seen);
    char want[64];
    snprintf(want, sizeof want, "hash %zu %016" PRIx64, count, h);
    REQUIRE(strcmp(hash, want) == 0, "%s (%s): reported '%s', its list hashes to '%s'",
            n->id, lang_name(n->lang), hash, want);
    free(copy);
}

/* Waits until every live node reports the same hash over at least every
 * acked apply, then checks every node's list in full. */
static void wait_converged(int64_t timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms * scale;
    char first[64], why[256];
    for (;;) {
        bool same = true;
        first[0] = '\0';
        for (int i = 0; same && i < MAX_NODES; i++) {
            node_t *n = &nodes[i];
            if (!n->used || !n->alive) {
                continue;
            }
            const char *r = cmd(n, "hash");
            size_t count = strtoull(r + 5, NULL, 10);
            if (count < n_acked) {
                snprintf(why, sizeof why, "%s (%s) has %zu entries, %zu acknowledged", n->id,
                         lang_name(n->lang), count, n_acked);
                same = false;
            } else if (first[0] == '\0') {
                snprintf(first, sizeof first, "%s", r);
            } else if (strcmp(first, r) != 0) {
                snprintf(why, sizeof why, "%s (%s) says '%s', others '%s'", n->id,
                         lang_name(n->lang), r, first);
                same = false;
            }
        }
        if (same) {
            break;
        }
        REQUIRE(now_ms() < deadline, "FSMs did not converge within %" PRId64 " ms: %s",
                timeout_ms * scale, why);
        tu_sleep_ms(50);
    }
    char *ref = NULL;
    for (int i = 0; i < MAX_NODES; i++) {
        node_t *n = &nodes[i];
        if (!n->used || !n->alive) {
            continue;
        }
        char *hash = strdup(cmd(n, "hash"));
        const char *list = cmd(n, "list");
        check_list(n, list, hash);
        if (ref == NULL) {
            ref = strdup(list);
        } else {
            REQUIRE(strcmp(ref, list) == 0, "%s: FSM list differs from another node's",
                    n->id);
        }
        free(hash);
    }
    free(ref);
}

typedef struct stats {
    unsigned restores;
    uint64_t snapshot_index, term, last_index;
} stats_t;

static stats_t stats(node_t *n)
{
    stats_t s;
    const char *r = cmd(n, "stats");
    REQUIRE(sscanf(r, "stats %u %" SCNu64 " %" SCNu64 " %" SCNu64, &s.restores,
                   &s.snapshot_index, &s.term, &s.last_index) == 4,
            "%s: bad stats '%s'", n->id, r);
    return s;
}

static bool log_contains(node_t *n, const char *needle)
{
    FILE *f = fopen(n->log, "r");
    if (f == NULL) {
        return false;
    }
    char *line = NULL;
    size_t cap = 0;
    bool found = false;
    while (!found && getline(&line, &cap, f) > 0) {
        found = strstr(line, needle) != NULL;
    }
    free(line);
    fclose(f);
    return found;
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_all);
    memset(nodes, 0, sizeof nodes);
    n_acked = 0;
    tmpdir = tu_tmpdir("craft-interop");
    ck_assert_ptr_nonnull(tmpdir);
    fprintf(stderr, "interop: working in %s\n", tmpdir);
}

/* ---- 1: Go leader with Go followers; a craft node joins ---- */

START_TEST(test_go_leader_craft_joins)
{
    node_t *g1 = new_node(GO, "g1", FAST);
    bootstrap(g1, &g1, 1);
    ck_assert_ptr_eq(wait_leader(10000), g1);
    node_t *g2 = new_node(GO, "g2", FAST), *g3 = new_node(GO, "g3", FAST);
    start(g2);
    start(g3);
    node_t *l = add_voter(g1, g2);
    l = add_voter(l, g3);
    l = apply_n(l, "s1a", 40);

    node_t *c1 = new_node(CRAFT, "c1", FAST);
    start(c1);
    REQUIRE(l->lang == GO, "a Go node must lead before c1 joins, %s does", l->id);
    l = add_voter(l, c1);
    l = apply_n(l, "s1b", 40);
    wait_converged(30000);

    /* A craft follower names the leader and refuses applies. */
    l = wait_leader(10000);
    if (l != c1) {
        const char *r = cmd(c1, "apply not-on-a-follower");
        REQUIRE(starts_with(r, "err "), "apply on a craft follower: %s", r);
    }
    finish();
}
END_TEST

/* ---- 2: a craft leader elected in a mixed cluster, Go followers ---- */

START_TEST(test_craft_leader_go_followers)
{
    node_t *c1 = new_node(CRAFT, "c1", FAST);
    node_t *g1 = new_node(GO, "g1", SLOW_GO), *g2 = new_node(GO, "g2", SLOW_GO);
    node_t *all[] = {c1, g1, g2};
    for (int i = 0; i < 3; i++) {
        bootstrap(all[i], all, 3);
    }
    /* c1 campaigns first: its pre-vote (rpc type 4) makes the v1.1.2 peers
     * close the connection, which must count as granted, then it wins the
     * real vote. */
    node_t *leader = wait_leader(20000);
    REQUIRE(leader == c1, "expected craft node c1 to win the first election, got %s",
            leader->id);
    REQUIRE(log_contains(g1, "unknown rpc type 4") || log_contains(g2, "unknown rpc type 4"),
            "the Go peers never saw craft's pre-vote (rpc type 4)");
    leader = apply_n(c1, "s2a", 40);

    /* A Go node joins the craft leader (slow too: only c1 can campaign
     * quickly, so a spurious step-down under load gives c1 back the lead). */
    node_t *g3 = new_node(GO, "g3", SLOW_GO);
    start(g3);
    leader = add_voter(leader, g3);
    leader = apply_n(leader, "s2b", 40);
    REQUIRE(leader == c1, "leadership moved off c1 (to %s) while it replicated", leader->id);
    wait_converged(30000);
    if (wait_leader(10000) != g1) {
        const char *r = cmd(g1, "apply not-on-a-follower");
        REQUIRE(starts_with(r, "err "), "apply on a Go follower: %s", r);
    }
    finish();
}
END_TEST

/* ---- 3: the leader is killed; a new one is elected across languages ---- */

START_TEST(test_leader_killed)
{
    node_t *g1 = new_node(GO, "g1", SLOW_GO);
    bootstrap(g1, &g1, 1);
    ck_assert_ptr_eq(wait_leader(20000), g1);
    node_t *g2 = new_node(GO, "g2", SLOW_GO), *g3 = new_node(GO, "g3", SLOW_GO);
    node_t *c1 = new_node(CRAFT, "c1", FAST), *c2 = new_node(CRAFT, "c2", FAST);
    node_t *joiners[] = {g2, g3, c1, c2};
    node_t *leader = g1;
    for (int i = 0; i < 4; i++) {
        start(joiners[i]);
        leader = add_voter(leader, joiners[i]);
    }
    leader = apply_n(leader, "s3a", 40);
    wait_converged(30000);
    leader = wait_leader(10000);
    REQUIRE(leader->lang == GO, "a Go node must lead before the kill, %s does", leader->id);

    /* Kill the Go leader: the craft nodes time out first and one of them
     * must win (pre-votes to the Go voters count as granted; their real
     * votes come once they have lost the leader themselves). */
    node_t *killed = leader;
    kill_node(killed);
    leader = wait_leader(30000);
    REQUIRE(leader->lang == CRAFT, "expected a craft node to succeed the killed Go leader, got %s",
            leader->id);
    fprintf(stderr, "interop: after killing %s, %s (%s) leads\n", killed->id, leader->id,
            lang_name(leader->lang));
    leader = apply_n(leader, "s3b", 40);

    /* The killed Go node comes back on its boltdb data and catches up. */
    restart_node(killed);
    wait_converged(60000);

    /* Kill the leader again: any survivor may win. */
    leader = wait_leader(10000);
    kill_node(leader);
    node_t *next = wait_leader(30000);
    fprintf(stderr, "interop: after killing %s, %s (%s) leads\n", leader->id, next->id,
            lang_name(next->lang));
    apply_n(next, "s3c", 40);
    wait_converged(60000);
    finish();
}
END_TEST

/* ---- 4: lagging nodes catch up through InstallSnapshot ---- */

/* Two nodes of `leader_lang` (one leading from a bootstrap alone) and one
 * of `lagging_lang`, which is killed, misses entries that both others then
 * compact away behind a snapshot (so whichever of them leads has no log to
 * send), restarts and must be sent a snapshot. */
static void snapshot_catch_up(lang_t leader_lang, lang_t lagging_lang)
{
    node_opts_t keep20 = {0, 0, 20, 0};
    node_t *first = new_node(leader_lang, leader_lang == GO ? "g1" : "c1", keep20);
    node_t *l = first;
    bootstrap(l, &l, 1);
    ck_assert_ptr_eq(wait_leader(10000), l);
    node_t *f = new_node(leader_lang, leader_lang == GO ? "g2" : "c2", keep20);
    node_t *lag = new_node(lagging_lang, lagging_lang == GO ? "g3" : "c3", FAST);
    start(f);
    start(lag);
    l = add_voter(l, f);
    l = add_voter(l, lag);
    l = apply_n(l, "s4a", 30);
    wait_converged(30000);
    l = wait_leader(10000);
    REQUIRE(l->lang == leader_lang, "%s (%s) leads", l->id, lang_name(l->lang));

    kill_node(lag);
    l = apply_n(l, "s4b", 150);
    wait_converged(30000);
    uint64_t snap = UINT64_MAX;
    node_t *both[] = {first, f};
    for (int i = 0; i < 2; i++) {
        const char *r = cmd(both[i], "snapshot");
        REQUIRE(strcmp(r, "ok") == 0, "%s (%s): snapshot: %s", both[i]->id,
                lang_name(both[i]->lang), r);
        stats_t st = stats(both[i]);
        REQUIRE(st.snapshot_index >= acked[n_acked - 1].index,
                "%s: snapshot index %" PRIu64 " after applying up to %" PRIu64, both[i]->id,
                st.snapshot_index, acked[n_acked - 1].index);
        snap = st.snapshot_index < snap ? st.snapshot_index : snap;
    }

    restart_node(lag);
    wait_converged(60000);
    /* The FSM restore comes before the node records the snapshot as its
     * own, so wait for both. */
    int64_t deadline = now_ms() + 10000 * scale;
    stats_t s;
    while ((s = stats(lag)).snapshot_index < snap && now_ms() < deadline) {
        tu_sleep_ms(20);
    }
    REQUIRE(s.restores >= 1 && s.snapshot_index >= snap,
            "%s (%s) caught up without InstallSnapshot: restores=%u snapshot_index=%" PRIu64
            " (leader's snapshot at %" PRIu64 ")",
            lag->id, lang_name(lag->lang), s.restores, s.snapshot_index, snap);
    l = wait_leader(10000);
    REQUIRE(l->lang == leader_lang, "%s (%s) leads", l->id, lang_name(l->lang));

    /* Normal replication resumes after the snapshot. */
    apply_n(l, "s4c", 20);
    wait_converged(30000);
    finish();
}

START_TEST(test_snapshot_go_leader_craft_lagging)
{
    snapshot_catch_up(GO, CRAFT);
}
END_TEST

START_TEST(test_snapshot_craft_leader_go_lagging)
{
    snapshot_catch_up(CRAFT, GO);
}
END_TEST

/* ---- 5: leadership transfer Go -> craft and back ---- */

/* Transfers leadership from `from` to `to` (NULL: let the leader pick) and
 * returns the new leader, which must be `to` (or of language `want`).
 * A transfer may fail for reasons that are no interop failure (a busy
 * machine, or hashicorp's heartbeat fast path turning its candidate back
 * into a follower of the old leader: hashicorp #695); such an attempt is
 * printed and retried, at most three attempts in all. */
static node_t *transfer(node_t *from, node_t *to, lang_t want)
{
    for (int attempt = 1;; attempt++) {
        const char *r = to ? cmd(from, "transfer %s %s", to->id, to->addr)
                           : cmd(from, "transfer");
        char reply[256];
        snprintf(reply, sizeof reply, "%s", r);
        node_t *l = wait_leader(10000);
        if (strcmp(reply, "ok") == 0 && (to ? l == to : l->lang == want)) {
            return l;
        }
        REQUIRE(attempt < 3, "transfer from %s (%s) to %s failed %d times; last reply '%s', "
                "leader %s", from->id, lang_name(from->lang), to ? to->id : lang_name(want),
                attempt, reply, l->id);
        fprintf(stderr, "interop: note: transfer from %s (%s) to %s: reply '%s', leader %s; "
                "retrying\n", from->id, lang_name(from->lang), to ? to->id : lang_name(want),
                reply, l->id);
        if (to ? l == to : l->lang == want) {
            return l;
        }
        from = l;
    }
}

START_TEST(test_leadership_transfer)
{
    node_t *g1 = new_node(GO, "g1", FAST);
    bootstrap(g1, &g1, 1);
    ck_assert_ptr_eq(wait_leader(10000), g1);
    node_t *g2 = new_node(GO, "g2", FAST), *c1 = new_node(CRAFT, "c1", FAST);
    start(g2);
    start(c1);
    node_t *l = add_voter(g1, g2);
    l = add_voter(l, c1);
    l = apply_n(l, "s5a", 20);
    if (l != g1) {
        l = transfer(l, g1, GO);
    }

    l = transfer(g1, c1, CRAFT); /* Go -> craft */
    l = apply_n(l, "s5b", 20);
    l = transfer(l, g1, GO); /* craft -> Go */
    l = apply_n(l, "s5c", 20);
    l = transfer(l, c1, CRAFT);
    l = transfer(l, NULL, GO); /* craft picks the most up-to-date voter: Go */
    apply_n(l, "s5d", 20);
    wait_converged(30000);
    finish();
}
END_TEST

static Suite *interop_suite(void)
{
    Suite *s = suite_create("interop");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"go_leader_craft_joins", test_go_leader_craft_joins},
        {"craft_leader_go_followers", test_craft_leader_go_followers},
        {"leader_killed", test_leader_killed},
        {"snapshot_catch_up", test_snapshot_go_leader_craft_lagging},
        {"leadership_transfer", test_leadership_transfer},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, NULL);
        tcase_set_timeout(tc, 300 * (double)scale);
        tcase_add_test(tc, cases[i].test);
        if (cases[i].test == test_snapshot_go_leader_craft_lagging) {
            tcase_add_test(tc, test_snapshot_craft_leader_go_lagging);
        }
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    const char *sc = getenv("CRAFT_TEST_TIME_SCALE");
    scale = sc && atoll(sc) > 0 ? atoll(sc) : 1;
    craft_bin = getenv("CRAFT_NODE");
    go_bin = getenv("GONODE_BIN");
    const char *build = getenv("GONODE_BUILD"), *src = getenv("GONODE_SRC");
    if (craft_bin == NULL || go_bin == NULL || build == NULL || src == NULL) {
        fprintf(stderr, "interop: FAIL: CRAFT_NODE, GONODE_BUILD, GONODE_SRC and GONODE_BIN "
                        "must be set (run through meson test)\n");
        return 1;
    }
    if (access(craft_bin, X_OK) != 0) {
        fprintf(stderr, "interop: FAIL: craft node %s: %s\n", craft_bin, strerror(errno));
        return 1;
    }
    /* Build the Go node now, so that a missing toolchain is a clear test
     * failure, not a silent skip. */
    char line[4096];
    snprintf(line, sizeof line, "sh '%s' '%s' '%s'", build, src, go_bin);
    int64_t t0 = now_ms();
    int rv = system(line);
    if (rv != 0 || access(go_bin, X_OK) != 0) {
        fprintf(stderr,
                "interop: FAIL: cannot build the hashicorp/raft v1.1.2 node (%s exited with %d).\n"
                "interop: the interop suite needs Go and Debian's packages: apt-get install -y "
                "golang-go golang-github-hashicorp-raft-dev golang-github-hashicorp-raft-boltdb-dev\n",
                build, rv);
        return 1;
    }
    fprintf(stderr, "interop: Go node built in %" PRId64 " ms; time scale %" PRId64 "\n",
            now_ms() - t0, scale);
    SRunner *sr = srunner_create(interop_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
