/*
 * craft-demo: three in-process craft nodes on the in-memory parts.
 * Elects a leader, replicates commands, kills the leader, shows failover,
 * and checks that every surviving replica holds the same data.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "craft.h"
#include "craft/inmem.h"

#define N 3

/* A tiny FSM: a counter summing the integers it is given. */
typedef struct counter {
    pthread_mutex_t mu;
    long long sum;
    unsigned long long applied;
} counter_t;

static void *counter_apply(void *ctx, const craft_log_t *log)
{
    counter_t *c = ctx;
    char buf[32] = {0};
    memcpy(buf, log->data, log->len < sizeof buf - 1 ? log->len : sizeof buf - 1);
    pthread_mutex_lock(&c->mu);
    c->sum += atoll(buf);
    c->applied++;
    long long now = c->sum;
    pthread_mutex_unlock(&c->mu);
    return (void *)(intptr_t)now; /* response: the new sum */
}

typedef struct node {
    char id[16], addr[16];
    craft_t *raft;
    craft_log_store_t *log;
    craft_stable_store_t *stable;
    craft_transport_t *trans;
    counter_t fsm;
    craft_fsm_t vt;
} node_t;

static node_t nodes[N];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void quiet(void *ctx, craft_level_t level, const char *component, const char *msg)
{
    (void)ctx;
    if (level >= CRAFT_LEVEL_WARN) {
        printf("      log %s: %s\n", component, msg);
    }
}

static int find_leader(int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        for (int i = 0; i < N; i++) {
            if (nodes[i].raft != NULL && craft_state(nodes[i].raft) == CRAFT_LEADER) {
                return i;
            }
        }
        sleep_ms(10);
    }
    return -1;
}

static void show(const char *title)
{
    printf("  %s\n", title);
    for (int i = 0; i < N; i++) {
        node_t *n = &nodes[i];
        if (n->raft == NULL) {
            printf("    %-6s  down\n", n->id);
            continue;
        }
        pthread_mutex_lock(&n->fsm.mu);
        long long sum = n->fsm.sum;
        unsigned long long applied = n->fsm.applied;
        pthread_mutex_unlock(&n->fsm.mu);
        printf("    %-6s  %-9s term=%-3llu commit=%-4llu applied-commands=%-4llu sum=%lld\n",
               n->id, craft_state_name(craft_state(n->raft)),
               (unsigned long long)craft_current_term(n->raft),
               (unsigned long long)craft_commit_index(n->raft), applied, sum);
    }
}

static int apply_range(int leader, int from, int to)
{
    for (int v = from; v <= to; v++) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", v);
        craft_future_t *f = craft_apply(nodes[leader].raft, buf, strlen(buf), 1000);
        int rv = craft_future_wait(f);
        if (rv != 0) {
            printf("    apply %d failed: %s\n", v, craft_strerror(rv));
            craft_future_free(f);
            return rv;
        }
        if (v == to) {
            printf("    applied %d..%d on %s: last index=%llu, sum now %lld\n", from, to,
                   nodes[leader].id, (unsigned long long)craft_future_index(f),
                   (long long)(intptr_t)craft_future_response(f));
        }
        craft_future_free(f);
    }
    return 0;
}

static int wait_sum(long long want, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        int ok = 1;
        for (int i = 0; i < N; i++) {
            if (nodes[i].raft == NULL) {
                continue;
            }
            pthread_mutex_lock(&nodes[i].fsm.mu);
            ok &= nodes[i].fsm.sum == want;
            pthread_mutex_unlock(&nodes[i].fsm.mu);
        }
        if (ok) {
            return 1;
        }
        sleep_ms(10);
    }
    return 0;
}

int main(void)
{
    craft_config_t conf;
    craft_config_default(&conf);
    conf.heartbeat_timeout_ms = 200;
    conf.election_timeout_ms = 200;
    conf.leader_lease_timeout_ms = 100;
    conf.commit_timeout_ms = 10;
    conf.logger = quiet;
    conf.log_level = CRAFT_LEVEL_WARN;

    printf("craft demo: 3 nodes in one process on in-memory stores and transport\n\n");
    craft_server_t servers[N];
    for (int i = 0; i < N; i++) {
        node_t *n = &nodes[i];
        snprintf(n->id, sizeof n->id, "node%d", i + 1);
        snprintf(n->addr, sizeof n->addr, "inmem:%d", i + 1);
        pthread_mutex_init(&n->fsm.mu, NULL);
        n->vt.ctx = &n->fsm;
        n->vt.apply = counter_apply;
        if (craft_inmem_store_new(&n->log, &n->stable) != 0 ||
            craft_inmem_transport_new(n->addr, &n->trans) != 0) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        servers[i] = (craft_server_t){CRAFT_VOTER, n->id, n->addr};
    }
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) {
            if (i != j) {
                craft_inmem_transport_connect(nodes[i].trans, nodes[j].trans);
            }
        }
    }
    craft_configuration_t cfg = {N, servers};
    printf("1. bootstrap every node with the same 3-voter configuration and start it\n");
    for (int i = 0; i < N; i++) {
        conf.local_id = nodes[i].id;
        int rv = craft_bootstrap_cluster(&conf, nodes[i].log, nodes[i].stable, NULL,
                                         nodes[i].trans, &cfg);
        if (rv == 0) {
            rv = craft_new(&nodes[i].raft, &conf, &nodes[i].vt, nodes[i].log, nodes[i].stable,
                           NULL, nodes[i].trans);
        }
        if (rv != 0) {
            fprintf(stderr, "start %s: %s\n", nodes[i].id, craft_strerror(rv));
            return 1;
        }
    }

    printf("\n2. wait for an election\n");
    int leader = find_leader(10000);
    if (leader < 0) {
        fprintf(stderr, "no leader elected\n");
        return 1;
    }
    printf("    %s won the election in term %llu\n", nodes[leader].id,
           (unsigned long long)craft_current_term(nodes[leader].raft));

    printf("\n3. apply the numbers 1..100 through the leader\n");
    if (apply_range(leader, 1, 100) != 0 || !wait_sum(5050, 10000)) {
        return 1;
    }
    show("every replica applied the same commands:");

    printf("\n4. kill the leader (%s)\n", nodes[leader].id);
    int old = leader;
    craft_free(nodes[old].raft);
    nodes[old].raft = NULL;
    craft_inmem_transport_disconnect_all(nodes[old].trans);
    leader = find_leader(10000);
    if (leader < 0) {
        fprintf(stderr, "no new leader\n");
        return 1;
    }
    printf("    failover: %s is the new leader in term %llu\n", nodes[leader].id,
           (unsigned long long)craft_current_term(nodes[leader].raft));

    printf("\n5. keep applying on the new leader: 101..200\n");
    if (apply_range(leader, 101, 200) != 0 || !wait_sum(20100, 10000)) {
        return 1;
    }
    show("the survivors agree, nothing committed was lost:");

    printf("\n6. restart %s on its stores: it rejoins as a follower and catches up\n",
           nodes[old].id);
    for (int j = 0; j < N; j++) {
        if (j != old) {
            craft_inmem_transport_connect(nodes[old].trans, nodes[j].trans);
            craft_inmem_transport_connect(nodes[j].trans, nodes[old].trans);
        }
    }
    conf.local_id = nodes[old].id;
    pthread_mutex_lock(&nodes[old].fsm.mu);
    nodes[old].fsm.sum = 0;
    nodes[old].fsm.applied = 0;
    pthread_mutex_unlock(&nodes[old].fsm.mu);
    if (craft_new(&nodes[old].raft, &conf, &nodes[old].vt, nodes[old].log, nodes[old].stable,
                  NULL, nodes[old].trans) != 0 ||
        !wait_sum(20100, 10000)) {
        fprintf(stderr, "restarted node did not catch up\n");
        return 1;
    }
    show("all three replicas are identical again:");

    printf("\n7. shut down\n");
    for (int i = 0; i < N; i++) {
        craft_free(nodes[i].raft);
    }
    for (int i = 0; i < N; i++) {
        nodes[i].trans->close(nodes[i].trans->ctx);
        nodes[i].log->close(nodes[i].log->ctx);
        nodes[i].stable->close(nodes[i].stable->ctx);
        pthread_mutex_destroy(&nodes[i].fsm.mu);
    }
    printf("    done: election, replication and failover all worked\n");
    return 0;
}
