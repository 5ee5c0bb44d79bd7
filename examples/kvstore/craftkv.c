/*
 * craftkv: a replicated key-value server with an HTTP API, on craft.
 *
 *   craftkv --id ID --raft HOST:PORT --http HOST:PORT --dir DIR
 *           [--bootstrap ID=RAFT[@HTTP],...] [--join HTTP_ADDR]
 *
 * Parts: sqlite log + stable store (DIR/raft.db, durability full), file
 * snapshot store (DIR/snapshots, 2 retained), TCP transport. The FSM is an
 * in-memory hash map (kv_fsm.c), the HTTP API runs on its own libevent
 * thread (kv_http.c). See README.md in this directory.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

#include <event2/http.h>

#include <craft.h>
#include <craft/file_snapshot.h>
#include <craft/sqlite.h>
#include <craft/tcp.h>

#include "http_client.h"
#include "kv_fsm.h"
#include "kv_http.h"

#define SNAPSHOTS_RETAINED 2
#define JOIN_TIMEOUT_S 120
#define JOIN_REQUEST_TIMEOUT_MS 15000

typedef struct options {
    const char *id;
    const char *raft;
    const char *http;
    const char *dir;
    const char *bootstrap;
    const char *join;
    craft_level_t log_level;
    long long heartbeat_timeout_ms;
    long long election_timeout_ms;
    long long snapshot_threshold;
    long long snapshot_interval_ms;
    long long trailing_logs;
} options_t;

static options_t opt = {.log_level = CRAFT_LEVEL_INFO,
                        .heartbeat_timeout_ms = -1,
                        .election_timeout_ms = -1,
                        .snapshot_threshold = -1,
                        .snapshot_interval_ms = -1,
                        .trailing_logs = -1};

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */
/* ------------------------------------------------------------------------ */

static const char *level_name(craft_level_t l)
{
    static const char *names[] = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    return l <= CRAFT_LEVEL_OFF ? names[l] : "?";
}

static void log_line(void *ctx, craft_level_t level, const char *component, const char *msg)
{
    (void)ctx;
    if (level < opt.log_level) {
        return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ld [%s] %s %s: %s\n", ts, (long)(tv.tv_usec / 1000),
            level_name(level), opt.id != NULL ? opt.id : "-", component, msg);
}

static void logf_(craft_level_t level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_line(NULL, level, "craftkv", msg);
}

/* ------------------------------------------------------------------------ */
/* Command line                                                              */
/* ------------------------------------------------------------------------ */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: craftkv --id ID --raft HOST:PORT --http HOST:PORT --dir DIR\n"
            "               [--bootstrap ID=RAFT[@HTTP],...] [--join HTTP_ADDR]\n"
            "               [--log-level trace|debug|info|warn|error]\n"
            "               [--heartbeat-timeout-ms N] [--election-timeout-ms N]\n"
            "               [--snapshot-threshold N] [--snapshot-interval-ms N]\n"
            "               [--trailing-logs N]\n"
            "\n"
            "  --id          this server's ID (unique in the cluster)\n"
            "  --raft        address of the Raft TCP transport (listen and advertise)\n"
            "  --http        address of the HTTP API (listen and advertise)\n"
            "  --dir         data directory: raft.db (log, term, vote), snapshots/\n"
            "  --bootstrap   initial membership, used once on a fresh DIR; give every\n"
            "                initial server the same list. @HTTP tells followers where\n"
            "                to redirect clients before a leader has recorded its HTTP\n"
            "                address in the replicated state.\n"
            "  --join        on a fresh DIR: ask this member (any; followers redirect)\n"
            "                to add us as a voter\n"
            "\n"
            "HTTP API: GET|PUT|DELETE /kv/<key>, POST /kv/<key>?cas=<old>,\n"
            "GET /kv/<key>?stale=1, GET /status, POST /join?id=&addr=[&http=],\n"
            "POST /leave?id=, POST /snapshot\n");
}

static int parse_level(const char *s, craft_level_t *out)
{
    static const char *names[] = {"trace", "debug", "info", "warn", "error", "off"};
    for (int i = 0; i <= CRAFT_LEVEL_OFF; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (craft_level_t)i;
            return 0;
        }
    }
    return -1;
}

static int parse_number(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    enum { O_LOG = 256, O_HB, O_ET, O_ST, O_SI, O_TL };
    static const struct option longopts[] = {
        {"id", required_argument, NULL, 'i'},
        {"raft", required_argument, NULL, 'r'},
        {"http", required_argument, NULL, 'H'},
        {"dir", required_argument, NULL, 'd'},
        {"bootstrap", required_argument, NULL, 'b'},
        {"join", required_argument, NULL, 'j'},
        {"log-level", required_argument, NULL, O_LOG},
        {"heartbeat-timeout-ms", required_argument, NULL, O_HB},
        {"election-timeout-ms", required_argument, NULL, O_ET},
        {"snapshot-threshold", required_argument, NULL, O_ST},
        {"snapshot-interval-ms", required_argument, NULL, O_SI},
        {"trailing-logs", required_argument, NULL, O_TL},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'i': opt.id = optarg; break;
        case 'r': opt.raft = optarg; break;
        case 'H': opt.http = optarg; break;
        case 'd': opt.dir = optarg; break;
        case 'b': opt.bootstrap = optarg; break;
        case 'j': opt.join = optarg; break;
        case O_LOG: bad = parse_level(optarg, &opt.log_level); break;
        case O_HB: bad = parse_number(optarg, &opt.heartbeat_timeout_ms); break;
        case O_ET: bad = parse_number(optarg, &opt.election_timeout_ms); break;
        case O_ST: bad = parse_number(optarg, &opt.snapshot_threshold); break;
        case O_SI: bad = parse_number(optarg, &opt.snapshot_interval_ms); break;
        case O_TL: bad = parse_number(optarg, &opt.trailing_logs); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
        if (bad) {
            fprintf(stderr, "craftkv: bad value for %s: %s\n", argv[optind - 1], optarg);
            return -1;
        }
    }
    if (optind != argc || opt.id == NULL || opt.raft == NULL || opt.http == NULL ||
        opt.dir == NULL || opt.id[0] == '\0') {
        usage(stderr);
        return -1;
    }
    if (opt.bootstrap != NULL && opt.join != NULL) {
        fprintf(stderr, "craftkv: --bootstrap and --join exclude each other\n");
        return -1;
    }
    return 0;
}

/* Parses "ID=RAFT[@HTTP],..." into hints (malloc'd). */
static int parse_bootstrap(const char *list, kv_peer_hint_t **out, size_t *n_out)
{
    char *copy = strdup(list);
    kv_peer_hint_t *hints = NULL;
    size_t n = 0;
    char *save = NULL;
    if (copy == NULL) {
        return -1;
    }
    for (char *item = strtok_r(copy, ",", &save); item != NULL;
         item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item || eq[1] == '\0') {
            fprintf(stderr, "craftkv: --bootstrap: expected ID=RAFT[@HTTP], got \"%s\"\n",
                    item);
            goto err;
        }
        *eq = '\0';
        char *raft = eq + 1, *at = strchr(raft, '@');
        if (at != NULL) {
            *at = '\0';
        }
        kv_peer_hint_t *nh = realloc(hints, (n + 1) * sizeof *nh);
        if (nh == NULL) {
            goto err;
        }
        hints = nh;
        hints[n].id = strdup(item);
        hints[n].raft = strdup(raft);
        hints[n].http = at != NULL && at[1] != '\0' ? strdup(at + 1) : NULL;
        n++;
        if (hints[n - 1].id == NULL || hints[n - 1].raft == NULL) {
            goto err;
        }
    }
    free(copy);
    *out = hints;
    *n_out = n;
    return 0;
err:
    for (size_t i = 0; i < n; i++) {
        free(hints[i].id);
        free(hints[i].raft);
        free(hints[i].http);
    }
    free(hints);
    free(copy);
    return -1;
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        return -1;
    }
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                return -1;
            }
            *p = '/';
        }
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Join                                                                      */
/* ------------------------------------------------------------------------ */

/* Waits up to `ms` for SIGINT/SIGTERM; returns the signal or 0. */
static int wait_signal(const sigset_t *sigs, long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    int sig = sigtimedwait(sigs, NULL, &ts);
    return sig > 0 ? sig : 0;
}

/* Asks `target` to add us, retrying while the cluster has no leader.
 * Returns 0 once added, -1 on a definitive failure, or the signal number
 * that interrupted the wait. */
static int join_cluster(const char *target, const sigset_t *sigs)
{
    char *id = evhttp_uriencode(opt.id, -1, 0);
    char *raft = evhttp_uriencode(opt.raft, -1, 0);
    char *http = evhttp_uriencode(opt.http, -1, 0);
    char path[2048];
    int rv = -1;
    if (id == NULL || raft == NULL || http == NULL) {
        goto out;
    }
    snprintf(path, sizeof path, "/join?id=%s&addr=%s&http=%s", id, raft, http);
    time_t give_up = time(NULL) + JOIN_TIMEOUT_S;
    for (;;) {
        kvc_response_t resp;
        char err[256];
        if (kvc_request_follow(target, "POST", path, NULL, 0, JOIN_REQUEST_TIMEOUT_MS, &resp,
                               err, sizeof err) != 0) {
            logf_(CRAFT_LEVEL_WARN, "join via %s: %s; retrying", target, err);
        } else if (resp.status == 200) {
            logf_(CRAFT_LEVEL_INFO, "joined the cluster via %s: %s", target, resp.body);
            kvc_response_free(&resp);
            rv = 0;
            goto out;
        } else if (resp.status >= 400 && resp.status < 500) {
            logf_(CRAFT_LEVEL_ERROR, "join via %s refused: %d %s", target, resp.status,
                  resp.body);
            kvc_response_free(&resp);
            goto out;
        } else {
            logf_(CRAFT_LEVEL_WARN, "join via %s: %d %s; retrying", target, resp.status,
                  resp.body);
            kvc_response_free(&resp);
        }
        if (time(NULL) >= give_up) {
            logf_(CRAFT_LEVEL_ERROR, "could not join via %s within %d s", target,
                  JOIN_TIMEOUT_S);
            goto out;
        }
        int sig = wait_signal(sigs, 1000);
        if (sig != 0) {
            rv = sig;
            goto out;
        }
    }
out:
    free(id);
    free(raft);
    free(http);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */
/* ------------------------------------------------------------------------ */

static int bootstrap(const craft_config_t *conf, craft_log_store_t *log,
                     craft_stable_store_t *stable, craft_snapshot_store_t *snaps,
                     const kv_peer_hint_t *hints, size_t n)
{
    craft_server_t *servers = calloc(n, sizeof *servers);
    if (servers == NULL) {
        return CRAFT_ENOMEM;
    }
    bool self = false;
    for (size_t i = 0; i < n; i++) {
        servers[i].suffrage = CRAFT_VOTER;
        servers[i].id = hints[i].id;
        servers[i].address = hints[i].raft;
        if (strcmp(hints[i].id, opt.id) == 0) {
            self = true;
            if (strcmp(hints[i].raft, opt.raft) != 0) {
                logf_(CRAFT_LEVEL_WARN, "--bootstrap gives %s address %s but --raft is %s",
                      opt.id, hints[i].raft, opt.raft);
            }
        }
    }
    int rv = CRAFT_EINVAL;
    if (!self) {
        logf_(CRAFT_LEVEL_ERROR, "--bootstrap does not include this server (%s)", opt.id);
    } else {
        craft_configuration_t cfg = {n, servers};
        rv = craft_bootstrap_cluster(conf, log, stable, snaps, NULL, &cfg);
        if (rv == 0) {
            logf_(CRAFT_LEVEL_INFO, "bootstrapped a cluster of %zu servers", n);
        }
    }
    free(servers);
    return rv;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) != 0) {
        return 2;
    }
    kv_peer_hint_t *hints = NULL;
    size_t n_hints = 0;
    if (opt.bootstrap != NULL && parse_bootstrap(opt.bootstrap, &hints, &n_hints) != 0) {
        return 2;
    }

    /* Signals are taken synchronously by the main thread (sigtimedwait):
     * block them before any thread starts so every thread inherits it. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 1, rv;
    craft_log_store_t *log = NULL;
    craft_stable_store_t *stable = NULL;
    craft_snapshot_store_t *snaps = NULL;
    craft_transport_t *trans = NULL;
    kv_fsm_t *fsm = NULL;
    kv_server_t *server = NULL;
    craft_t *raft = NULL;

    if (mkdir_p(opt.dir) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "cannot create %s: %s", opt.dir, strerror(errno));
        goto out;
    }
    char db[4096];
    snprintf(db, sizeof db, "%s/raft.db", opt.dir);
    craft_sqlite_options_t so;
    craft_sqlite_options_default(&so);
    so.durability = CRAFT_SQLITE_DURABILITY_FULL;
    so.logger = log_line;
    if ((rv = craft_sqlite_open(db, &so, &log, &stable)) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "cannot open %s: %s", db, craft_strerror(rv));
        goto out;
    }
    craft_file_snapshot_options_t fo;
    craft_file_snapshot_options_default(&fo);
    fo.retain = SNAPSHOTS_RETAINED;
    fo.logger = log_line;
    if ((rv = craft_file_snapshot_store_open(opt.dir, &fo, &snaps)) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "cannot open snapshot store in %s: %s", opt.dir,
              craft_strerror(rv));
        goto out;
    }
    bool existing = false;
    if ((rv = craft_has_existing_state(log, stable, snaps, &existing)) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "cannot read state in %s: %s", opt.dir, craft_strerror(rv));
        goto out;
    }

    craft_config_t conf;
    craft_config_default(&conf);
    conf.local_id = opt.id;
    conf.logger = log_line;
    conf.log_level = opt.log_level;
    /* The FSM is an in-memory map behind a lock held for microseconds:
     * apply it on the committing thread, without waking the fsm thread. */
    conf.apply_inline = true;
    if (opt.heartbeat_timeout_ms >= 0) {
        conf.heartbeat_timeout_ms = opt.heartbeat_timeout_ms;
        if (conf.leader_lease_timeout_ms > conf.heartbeat_timeout_ms) {
            conf.leader_lease_timeout_ms = conf.heartbeat_timeout_ms / 2;
        }
        if (conf.election_timeout_ms < conf.heartbeat_timeout_ms) {
            conf.election_timeout_ms = conf.heartbeat_timeout_ms;
        }
    }
    if (opt.election_timeout_ms >= 0) {
        conf.election_timeout_ms = opt.election_timeout_ms;
    }
    if (opt.snapshot_threshold >= 0) {
        conf.snapshot_threshold = (uint64_t)opt.snapshot_threshold;
    }
    if (opt.snapshot_interval_ms >= 0) {
        conf.snapshot_interval_ms = opt.snapshot_interval_ms;
    }
    if (opt.trailing_logs >= 0) {
        conf.trailing_logs = (uint64_t)opt.trailing_logs;
    }
    const char *why = NULL;
    if (craft_config_validate(&conf, &why) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "invalid configuration: %s", why != NULL ? why : "?");
        goto out;
    }

    craft_tcp_options_t to;
    craft_tcp_options_default(&to);
    to.logger = log_line;
    to.log_level = opt.log_level;
    /* A full AppendEntries batch of the largest values (see MAX_BODY in
     * kv_http.c) must fit in one frame. */
    to.max_frame_bytes = (size_t)128 << 20;
    if ((rv = craft_tcp_transport_new(opt.raft, opt.raft, &to, &trans)) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "cannot start the transport on %s: %s", opt.raft,
              craft_strerror(rv));
        goto out;
    }

    if (existing) {
        if (opt.bootstrap != NULL || opt.join != NULL) {
            logf_(CRAFT_LEVEL_INFO, "%s holds existing state: ignoring --%s", opt.dir,
                  opt.bootstrap != NULL ? "bootstrap" : "join");
        }
    } else if (opt.bootstrap != NULL) {
        if (bootstrap(&conf, log, stable, snaps, hints, n_hints) != 0) {
            goto out;
        }
    } else if (opt.join == NULL) {
        logf_(CRAFT_LEVEL_WARN, "%s is empty and neither --bootstrap nor --join was given: "
              "waiting for a member to add us (POST /join on the leader)", opt.dir);
    }

    if ((rv = kv_fsm_new(&fsm)) != 0) {
        goto out;
    }
    kv_server_config_t sc = {
        .id = opt.id,
        .raft_addr = opt.raft,
        .http_addr = opt.http,
        .fsm = fsm,
        .hints = hints,
        .n_hints = n_hints,
        .logger = log_line,
        .log_level = opt.log_level,
    };
    if ((rv = kv_server_new(&sc, &server)) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "cannot start the HTTP server on %s: %s", opt.http,
              craft_strerror(rv));
        goto out;
    }
    conf.notify_leader = kv_server_notify_leader;
    conf.notify_leader_arg = server;
    if ((rv = craft_new(&raft, &conf, kv_fsm_vtable(fsm), log, stable, snaps, trans)) != 0) {
        logf_(CRAFT_LEVEL_ERROR, "cannot start craft: %s", craft_strerror(rv));
        goto out;
    }
    if ((rv = kv_server_start(server, raft)) != 0) {
        goto out;
    }
    logf_(CRAFT_LEVEL_INFO, "serving: raft=%s http=%s dir=%s", opt.raft, opt.http, opt.dir);

    int sig = 0;
    if (!existing && opt.join != NULL) {
        sig = join_cluster(opt.join, &sigs);
        if (sig < 0) {
            goto out;
        }
    }
    while (sig == 0) {
        sig = wait_signal(&sigs, 1000);
        if (sig == 0 && craft_state(raft) == CRAFT_SHUTDOWN) {
            logf_(CRAFT_LEVEL_WARN, "craft has shut down (removed from the cluster?); exiting");
            break;
        }
    }
    if (sig != 0) {
        logf_(CRAFT_LEVEL_INFO, "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    }
    status = 0;

out:
    if (raft != NULL) {
        craft_future_t *f = craft_shutdown(raft);
        craft_future_wait(f);
        craft_future_free(f);
    }
    kv_server_stop(server); /* answers what is still pending */
    craft_free(raft);
    if (trans != NULL) {
        trans->close(trans->ctx);
    }
    if (snaps != NULL) {
        snaps->close(snaps->ctx);
    }
    if (log != NULL) {
        log->close(log->ctx);
    }
    if (stable != NULL) {
        stable->close(stable->ctx);
    }
    kv_fsm_free(fsm);
    for (size_t i = 0; i < n_hints; i++) {
        free(hints[i].id);
        free(hints[i].raft);
        free(hints[i].http);
    }
    free(hints);
    if (status == 0) {
        logf_(CRAFT_LEVEL_INFO, "stopped");
    }
    return status;
}
