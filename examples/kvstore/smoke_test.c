/*
 * craftkv smoke test: starts 3 craftkv processes on 127.0.0.1 (fresh temp
 * dirs, free ports), writes and reads through the HTTP API (through the
 * leader and through followers' redirects), compare-and-set, delete, kills
 * the leader with SIGKILL, reads everything back from the new leader,
 * restarts the killed node and waits for it to catch up, adds a fourth
 * node with --join (sent to a follower, which redirects it) and removes it
 * again with /leave, then stops every node with SIGTERM and expects a
 * clean exit.
 *
 * usage: craftkv-smoke PATH_TO_CRAFTKV
 *
 * Loopback only; waits on conditions with generous deadlines, asserts
 * nothing about timing.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "http_client.h"

#define N 3     /* bootstrapped nodes */
#define ALL (N + 1) /* plus one joining later */
#define DEADLINE_S 90 /* per condition: generous, sanitizer builds are slow */
#define KEYS 20

typedef struct node {
    char id[8];
    char raft[32];
    char http[32];
    char dir[512];
    char log[512];
    char join[32]; /* --join target, empty: --bootstrap */
    pid_t pid;
} node_t;

static const char *craftkv;
static char base[256];
static char bootstrap_list[256];
static node_t nodes[ALL];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void step(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("smoke: ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

/* snprintf that fails the test instead of truncating. */
static void fmt(char *buf, size_t size, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, size, f, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "smoke: string too long: %s\n", f);
        exit(1);
    }
}

static void dump_logs(void)
{
    for (int i = 0; i < ALL; i++) {
        char cmd[1024];
        printf("----- %s (%s), last lines -----\n", nodes[i].id, nodes[i].log);
        fflush(stdout);
        snprintf(cmd, sizeof cmd, "tail -n 40 '%s'", nodes[i].log);
        if (system(cmd) != 0) {
            printf("(no log)\n");
        }
    }
}

static void kill_all(void)
{
    for (int i = 0; i < ALL; i++) {
        if (nodes[i].pid > 0) {
            kill(nodes[i].pid, SIGKILL);
            waitpid(nodes[i].pid, NULL, 0);
            nodes[i].pid = 0;
        }
    }
}

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("smoke: FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    dump_logs();
    kill_all();
    printf("(data left in %s)\n", base);
    exit(1);
}

/* Free loopback ports: all bound at once so they differ, then released. */
static void pick_ports(int *ports, int n)
{
    int fds[2 * ALL];
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof a) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&a, &len) != 0) {
            fail("cannot pick a port: %s", strerror(errno));
        }
        ports[i] = ntohs(a.sin_port);
    }
    for (int i = 0; i < n; i++) {
        close(fds[i]);
    }
}

static void start_node(node_t *n)
{
    pid_t pid = fork();
    if (pid < 0) {
        fail("fork: %s", strerror(errno));
    }
    if (pid == 0) {
        int fd = open(n->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execl(craftkv, craftkv, "--id", n->id, "--raft", n->raft, "--http", n->http, "--dir",
              n->dir, n->join[0] != '\0' ? "--join" : "--bootstrap",
              n->join[0] != '\0' ? n->join : bootstrap_list, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", craftkv, strerror(errno));
        _exit(127);
    }
    n->pid = pid;
}

/* true when node i answers /status with "state":"Leader". */
static bool is_leader(int i)
{
    kvc_response_t r;
    if (nodes[i].pid <= 0 ||
        kvc_request(nodes[i].http, "GET", "/status", NULL, 0, 5000, &r, NULL, 0) != 0) {
        return false;
    }
    bool yes = r.status == 200 && strstr(r.body, "\"state\":\"Leader\"") != NULL;
    kvc_response_free(&r);
    return yes;
}

static int wait_leader(void)
{
    double end = now_s() + DEADLINE_S;
    while (now_s() < end) {
        for (int i = 0; i < ALL; i++) {
            if (is_leader(i)) {
                return i;
            }
        }
        sleep_ms(100);
    }
    fail("no leader within %d s", DEADLINE_S);
    return -1;
}

/* Sends the request to node i (following redirects) until it answers
 * `want`; transient answers (no leader yet, 503, connection refused) are
 * retried. *out (may be NULL) gets the final response. */
static void request_until(int i, const char *method, const char *target, const char *body,
                          int want, kvc_response_t *out)
{
    double end = now_s() + DEADLINE_S;
    char last[512] = "no attempt";
    while (now_s() < end) {
        kvc_response_t r;
        char err[256];
        if (kvc_request_follow(nodes[i].http, method, target, body,
                               body != NULL ? strlen(body) : 0, 10000, &r, err,
                               sizeof err) != 0) {
            snprintf(last, sizeof last, "%s", err);
        } else if (r.status == want) {
            if (out != NULL) {
                *out = r;
            } else {
                kvc_response_free(&r);
            }
            return;
        } else {
            snprintf(last, sizeof last, "%d %s", r.status, r.body);
            kvc_response_free(&r);
        }
        sleep_ms(100);
    }
    fail("%s %s on %s: wanted %d, last answer: %s", method, target, nodes[i].id, want, last);
}

static void expect_value(int i, const char *target, const char *want)
{
    kvc_response_t r;
    request_until(i, "GET", target, NULL, 200, &r);
    if (strcmp(r.body, want) != 0) {
        fail("GET %s on %s: got \"%s\", want \"%s\"", target, nodes[i].id, r.body, want);
    }
    kvc_response_free(&r);
}

/* Polls a stale local read on node i until it returns `want`. */
static void wait_stale_value(int i, const char *key, const char *want)
{
    char target[256];
    snprintf(target, sizeof target, "/kv/%s?stale=1", key);
    double end = now_s() + DEADLINE_S;
    while (now_s() < end) {
        kvc_response_t r;
        if (kvc_request(nodes[i].http, "GET", target, NULL, 0, 5000, &r, NULL, 0) == 0) {
            bool ok = r.status == 200 && strcmp(r.body, want) == 0;
            kvc_response_free(&r);
            if (ok) {
                return;
            }
        }
        sleep_ms(100);
    }
    fail("%s never applied %s=%s", nodes[i].id, key, want);
}

/* Waits until node i's /status lists `n` servers. */
static void wait_members(int i, int n)
{
    double end = now_s() + DEADLINE_S;
    int got = -1;
    while (now_s() < end) {
        kvc_response_t r;
        if (kvc_request(nodes[i].http, "GET", "/status", NULL, 0, 5000, &r, NULL, 0) == 0) {
            got = 0;
            for (const char *p = r.body; (p = strstr(p, "\"suffrage\"")) != NULL; p++) {
                got++;
            }
            kvc_response_free(&r);
            if (got == n) {
                return;
            }
        }
        sleep_ms(100);
    }
    fail("%s lists %d servers, want %d", nodes[i].id, got, n);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH_TO_CRAFTKV\n", argv[0]);
        return 2;
    }
    craftkv = argv[1];
    signal(SIGPIPE, SIG_IGN);
    snprintf(base, sizeof base, "%s/craftkv-smoke-XXXXXX",
             getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(base) == NULL) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    int ports[2 * ALL];
    pick_ports(ports, 2 * ALL);
    bootstrap_list[0] = '\0';
    for (int i = 0; i < ALL; i++) {
        node_t *n = &nodes[i];
        fmt(n->id, sizeof n->id, "n%d", i + 1);
        fmt(n->raft, sizeof n->raft, "127.0.0.1:%d", ports[2 * i]);
        fmt(n->http, sizeof n->http, "127.0.0.1:%d", ports[2 * i + 1]);
        fmt(n->dir, sizeof n->dir, "%s/%s", base, n->id);
        fmt(n->log, sizeof n->log, "%s/%s.log", base, n->id);
        if (i >= N) {
            continue;
        }
        /* Plain ID=RAFT: followers learn the leader's HTTP address from
         * the replicated state (the leader records it when elected). */
        size_t used = strlen(bootstrap_list);
        fmt(bootstrap_list + used, sizeof bootstrap_list - used, "%s%s=%s",
                 i > 0 ? "," : "", n->id, n->raft);
    }
    step("starting 3 nodes in %s (--bootstrap %s)", base, bootstrap_list);
    for (int i = 0; i < N; i++) {
        start_node(&nodes[i]);
    }

    int leader = wait_leader();
    int follower = (leader + 1) % N;
    step("leader is %s", nodes[leader].id);

    char target[128], value[128];
    for (int k = 0; k < KEYS; k++) {
        snprintf(target, sizeof target, "/kv/key-%d", k);
        snprintf(value, sizeof value, "value %d", k);
        /* Half through a follower: 307 to the leader, followed. */
        request_until(k % 2 == 0 ? leader : follower, "PUT", target, value, 204, NULL);
    }
    step("wrote %d keys (half of them through %s's redirect)", KEYS, nodes[follower].id);
    for (int k = 0; k < KEYS; k++) {
        snprintf(target, sizeof target, "/kv/key-%d", k);
        snprintf(value, sizeof value, "value %d", k);
        expect_value(k % 2 == 0 ? leader : follower, target, value);
    }
    step("read them back (linearizable reads)");

    request_until(leader, "POST", "/kv/key-0?cas=wrong", "x", 409, NULL);
    kvc_response_t r;
    if (kvc_request_follow(nodes[leader].http, "POST", "/kv/key-0?cas=value+0", "swapped", 7,
                           10000, &r, NULL, 0) != 0 || r.status != 204) {
        fail("cas with the right old value: %d %s", r.status, r.body != NULL ? r.body : "");
    }
    kvc_response_free(&r);
    expect_value(leader, "/kv/key-0", "swapped");
    request_until(leader, "DELETE", "/kv/key-1", NULL, 204, NULL);
    request_until(leader, "GET", "/kv/key-1", NULL, 404, NULL);
    step("cas refused (409) then accepted (204); delete -> 404");

    for (int i = 0; i < N; i++) {
        wait_stale_value(i, "key-0", "swapped");
    }
    step("every node applied the writes (stale local reads)");

    step("killing the leader %s (SIGKILL)", nodes[leader].id);
    kill(nodes[leader].pid, SIGKILL);
    waitpid(nodes[leader].pid, NULL, 0);
    nodes[leader].pid = 0;
    int old = leader;
    leader = wait_leader();
    step("new leader is %s", nodes[leader].id);
    expect_value(leader, "/kv/key-0", "swapped");
    request_until(leader, "GET", "/kv/key-1", NULL, 404, NULL);
    for (int k = 2; k < KEYS; k++) {
        snprintf(target, sizeof target, "/kv/key-%d", k);
        snprintf(value, sizeof value, "value %d", k);
        expect_value(leader, target, value);
    }
    request_until(leader, "PUT", "/kv/after-failover", "still here", 204, NULL);
    expect_value(leader, "/kv/after-failover", "still here");
    step("the new leader serves every key and accepts writes");

    step("restarting %s on its data directory", nodes[old].id);
    start_node(&nodes[old]);
    wait_stale_value(old, "after-failover", "still here");
    wait_stale_value(old, "key-0", "swapped");
    step("%s caught up", nodes[old].id);

    int joiner = N;
    int via = (leader + 1) % N;
    fmt(nodes[joiner].join, sizeof nodes[joiner].join, "%s", nodes[via].http);
    step("starting %s with --join %s (a follower: it redirects to the leader)",
         nodes[joiner].id, nodes[via].id);
    start_node(&nodes[joiner]);
    wait_stale_value(joiner, "after-failover", "still here");
    wait_members(leader, 4);
    step("%s joined and replicated the data", nodes[joiner].id);
    char leave[64];
    fmt(leave, sizeof leave, "/leave?id=%s", nodes[joiner].id);
    request_until(via, "POST", leave, NULL, 200, NULL);
    wait_members(leader, 3);
    step("%s removed with /leave", nodes[joiner].id);

    step("stopping every node (SIGTERM)");
    for (int i = 0; i < ALL; i++) {
        kill(nodes[i].pid, SIGTERM);
    }
    for (int i = 0; i < ALL; i++) {
        int status = 0;
        double end = now_s() + DEADLINE_S;
        pid_t got = 0;
        while ((got = waitpid(nodes[i].pid, &status, WNOHANG)) == 0 && now_s() < end) {
            sleep_ms(50);
        }
        if (got != nodes[i].pid) {
            fail("%s did not exit within %d s of SIGTERM", nodes[i].id, DEADLINE_S);
        }
        nodes[i].pid = 0;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fail("%s exited with status 0x%x", nodes[i].id, status);
        }
    }
    step("every node exited cleanly");
    nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    step("PASS");
    return 0;
}
