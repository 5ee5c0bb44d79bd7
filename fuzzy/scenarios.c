/*
 * Scenarios: each is a nemesis loop injecting one family of faults while
 * the client workload runs, until the run's end time. Every choice comes
 * from run->rng; every wait is in milliseconds scaled by the time scale.
 */
#include "scenarios.h"

#include <stdio.h>
#include <string.h>

/* Waits `ms` (scaled), or less when the run ends first; false at the end. */
static bool pause_ms(fz_run_t *run, int64_t ms)
{
    int64_t now = fz_now_us();
    if (now >= run->end_us) {
        return false;
    }
    int64_t until = now + ms * run->scale * 1000;
    fz_sleep_us((until < run->end_us ? until : run->end_us) - now);
    return fz_now_us() < run->end_us;
}

static bool running(const fz_run_t *run)
{
    return fz_now_us() < run->end_us;
}

static int64_t rnd(fz_run_t *run, int64_t lo, int64_t hi)
{
    return fz_rng_range(&run->rng, lo, hi);
}

/* A random running member (not `except`), or -1. */
static int pick_member(fz_run_t *run, int except)
{
    size_t n = craft_fuzzy_cluster_slots(run->c);
    int cand[CRAFT_FUZZY_MAX_NODES];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if ((int)i != except && craft_fuzzy_cluster_member(run->c, i) &&
            craft_fuzzy_cluster_running(run->c, i)) {
            cand[k++] = (int)i;
        }
    }
    return k == 0 ? -1 : cand[fz_rng_below(&run->rng, k)];
}

static size_t count_members(fz_run_t *run)
{
    size_t n = craft_fuzzy_cluster_slots(run->c), m = 0;
    for (size_t i = 0; i < n; i++) {
        m += craft_fuzzy_cluster_member(run->c, i);
    }
    return m;
}

/* Fire-and-forget writes to the nemesis' own key (63, never used by
 * clients, no opid): they make an isolated leader's log diverge. */
typedef struct noise_args {
    const char *cmd;
} noise_args_t;

static int noise_fn(void *arg, craft_t *r, craft_fsm_t *fsm)
{
    (void)fsm;
    noise_args_t *a = arg;
    craft_future_free(craft_apply(r, a->cmd, strlen(a->cmd), 100));
    return 0;
}

static void noise(fz_run_t *run, int node, unsigned count)
{
    for (unsigned i = 0; i < count; i++) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "put 63 %u nemesis", run->events * 100 + i);
        noise_args_t a = {cmd};
        craft_fuzzy_cluster_with_node(run->c, (size_t)node, noise_fn, &a);
    }
}

static const char *addr_of(fz_run_t *run, size_t i)
{
    return craft_fuzzy_cluster_id(run->c, i); /* address == id */
}

/* ---- sanity ---- */

static void nemesis_sanity(fz_run_t *run)
{
    while (pause_ms(run, 500)) {
        int l = craft_fuzzy_cluster_leader(run->c, 0);
        if (l >= 0) {
            craft_fuzzy_cluster_snapshot(run->c, (size_t)l, 2000 * run->scale);
        }
    }
}

/* ---- leader partitions (hashicorp's TestRaft_LeaderPartitions) ---- */

/* Long logs: a node partitioned away catches up through AppendEntries
 * (exercising the consistency check), not through InstallSnapshot. */
static void setup_long_logs(craft_fuzzy_options_t *o)
{
    o->snapshot_threshold = 2048;
    o->trailing_logs = 1024;
}

/* Waits until a leader other than `old` is in office (up to `ms`). */
static void wait_new_leader(fz_run_t *run, int old, int64_t ms)
{
    int64_t deadline = fz_now_us() + ms * run->scale * 1000;
    while (running(run) && fz_now_us() < deadline) {
        int l = craft_fuzzy_cluster_leader(run->c, 0);
        if (l >= 0 && l != old) {
            return;
        }
        fz_sleep_us(5000);
    }
}

static void nemesis_leader_partitions(fz_run_t *run)
{
    craft_fuzzy_net_t *net = craft_fuzzy_cluster_net(run->c);
    size_t n = craft_fuzzy_cluster_slots(run->c);
    for (unsigned round = 0; running(run); round++) {
        int l = craft_fuzzy_cluster_leader(run->c, 1000 * run->scale);
        if (l < 0) {
            pause_ms(run, 50);
            continue;
        }
        /* The leader plus up to a minority-minus-one of followers. */
        const char *addrs[CRAFT_FUZZY_MAX_NODES];
        int groups[CRAFT_FUZZY_MAX_NODES];
        int64_t minority = (int64_t)(n - 1) / 2; /* largest minority */
        size_t extra = (size_t)rnd(run, 0, minority > 1 ? minority - 1 : 0);
        for (size_t i = 0; i < n; i++) {
            addrs[i] = addr_of(run, i);
            groups[i] = 1;
        }
        groups[l] = 0;
        for (size_t k = 0; k < extra; k++) {
            groups[fz_rng_below(&run->rng, n)] = 0;
        }
        craft_fuzzy_net_partition(net, addrs, groups, n);
        run->events++;
        /* Writes the cut-off leader appends but can never commit. */
        noise(run, l, (unsigned)rnd(run, 2, 8));
        wait_new_leader(run, l, 3000);
        pause_ms(run, rnd(run, 100, 500));
        /* Heal now (40%), a little later (20%), or not at all (40%, and
         * always after the first round): the next round then cuts the new
         * leader off while the old one rejoins the majority with its
         * divergent entries, so a log that disagrees with the leader's
         * meets a leader whose log is longer (Raft §5.3). */
        uint64_t roll = fz_rng_below(&run->rng, 10);
        if (round > 0 && roll < 4) {
            craft_fuzzy_net_heal(net);
        } else if (round > 0 && roll < 6) {
            pause_ms(run, rnd(run, 100, 400));
            craft_fuzzy_net_heal(net);
        }
    }
}

/* ---- random partitions, some asymmetric ---- */

static void nemesis_random_partitions(fz_run_t *run)
{
    craft_fuzzy_net_t *net = craft_fuzzy_cluster_net(run->c);
    size_t n = craft_fuzzy_cluster_slots(run->c);
    while (running(run)) {
        const char *addrs[CRAFT_FUZZY_MAX_NODES];
        int groups[CRAFT_FUZZY_MAX_NODES];
        int ngroups = (int)rnd(run, 2, 3);
        for (size_t i = 0; i < n; i++) {
            addrs[i] = addr_of(run, i);
            groups[i] = (int)fz_rng_below(&run->rng, (uint64_t)ngroups);
        }
        craft_fuzzy_net_partition(net, addrs, groups, n);
        /* A few one-way cuts on top. */
        unsigned oneway = (unsigned)rnd(run, 0, 3);
        for (unsigned k = 0; k < oneway; k++) {
            size_t a = fz_rng_below(&run->rng, n), b = fz_rng_below(&run->rng, n);
            if (a != b) {
                craft_fuzzy_net_set_link(net, addrs[a], addrs[b], false);
            }
        }
        run->events++;
        pause_ms(run, rnd(run, 200, 1000));
        if (fz_rng_chance(&run->rng, 0.5)) {
            craft_fuzzy_net_heal(net);
            pause_ms(run, rnd(run, 200, 600));
        }
    }
}

/* ---- flaky network ---- */

static void flaky_faults(craft_fuzzy_faults_t *f, double scale_drop)
{
    memset(f, 0, sizeof *f);
    f->drop = 0.05 * scale_drop;
    f->drop_resp = 0.03 * scale_drop;
    f->duplicate = 0.05;
    f->delay_min_us = 0;
    f->delay_max_us = 3000;
    f->delay_tail = 0.05;
    f->delay_tail_us = 40000;
    f->reorder = true;
    f->snapshot_cut = 0.2;
}

static void nemesis_flaky(fz_run_t *run)
{
    craft_fuzzy_net_t *net = craft_fuzzy_cluster_net(run->c);
    size_t n = craft_fuzzy_cluster_slots(run->c);
    craft_fuzzy_faults_t f;
    flaky_faults(&f, 1.0);
    craft_fuzzy_net_set_faults(net, &f);
    while (running(run)) {
        /* Now and then a slow node or a burst of heavier loss. */
        size_t slow = fz_rng_below(&run->rng, n);
        craft_fuzzy_net_set_slow(net, addr_of(run, slow), rnd(run, 5000, 30000));
        flaky_faults(&f, fz_rng_chance(&run->rng, 0.3) ? 3.0 : 1.0);
        craft_fuzzy_net_set_faults(net, &f);
        run->events++;
        pause_ms(run, rnd(run, 300, 900));
        craft_fuzzy_net_set_slow(net, addr_of(run, slow), 0);
        pause_ms(run, rnd(run, 100, 500));
    }
}

/* ---- crash / restart loop ---- */

static void nemesis_crash_restart(fz_run_t *run)
{
    size_t n = craft_fuzzy_cluster_slots(run->c);
    while (running(run)) {
        int victims[2];
        size_t k = fz_rng_chance(&run->rng, 0.3) && n >= 5 ? 2 : 1;
        for (size_t i = 0; i < k; i++) {
            int l = craft_fuzzy_cluster_leader(run->c, 0);
            victims[i] = fz_rng_chance(&run->rng, 0.5) && l >= 0 ? l : pick_member(run, -1);
            if (victims[i] >= 0) {
                craft_fuzzy_cluster_crash(run->c, (size_t)victims[i]);
                run->events++;
            }
        }
        pause_ms(run, rnd(run, 100, 800));
        for (size_t i = 0; i < k; i++) {
            if (victims[i] >= 0) {
                craft_fuzzy_cluster_restart(run->c, (size_t)victims[i]);
            }
        }
        pause_ms(run, rnd(run, 200, 800));
    }
}

/* ---- add / remove under load ---- */

static void nemesis_membership(fz_run_t *run)
{
    int64_t t = 3000 * run->scale;
    while (running(run)) {
        size_t m = count_members(run);
        if (m > 3 && fz_rng_chance(&run->rng, 0.5)) {
            int l = craft_fuzzy_cluster_leader(run->c, t);
            int victim = pick_member(run, l);
            if (victim >= 0) {
                craft_fuzzy_cluster_remove(run->c, (size_t)victim, t);
                run->events++;
            }
        } else if (craft_fuzzy_cluster_slots(run->c) < CRAFT_FUZZY_MAX_NODES) {
            craft_fuzzy_cluster_add(run->c, fz_rng_chance(&run->rng, 0.8), t, NULL);
            run->events++;
        }
        pause_ms(run, rnd(run, 100, 500));
    }
}

/* ---- remove the leader ---- */

static void nemesis_remove_leader(fz_run_t *run)
{
    int64_t t = 3000 * run->scale;
    while (running(run)) {
        int l = craft_fuzzy_cluster_leader(run->c, t);
        if (l >= 0 && count_members(run) >= 3) {
            craft_fuzzy_cluster_remove(run->c, (size_t)l, t);
            run->events++;
        }
        pause_ms(run, rnd(run, 100, 400));
        if (count_members(run) < 5 && craft_fuzzy_cluster_slots(run->c) < CRAFT_FUZZY_MAX_NODES) {
            craft_fuzzy_cluster_add(run->c, true, t, NULL);
        }
        pause_ms(run, rnd(run, 100, 400));
    }
}

/* ---- leadership transfer storm ---- */

static void nemesis_transfer_storm(fz_run_t *run)
{
    int64_t t = 2000 * run->scale;
    while (running(run)) {
        int l = craft_fuzzy_cluster_leader(run->c, t);
        int target = fz_rng_chance(&run->rng, 0.7) ? pick_member(run, l) : -1;
        craft_fuzzy_cluster_transfer(run->c, target, t);
        run->events++;
        pause_ms(run, rnd(run, 20, 300));
    }
}

/* ---- snapshot install under partitions ---- */

static void setup_snapshots(craft_fuzzy_options_t *o)
{
    o->snapshot_threshold = 16;
    o->trailing_logs = 4;
}

static void nemesis_snapshot_partitions(fz_run_t *run)
{
    craft_fuzzy_net_t *net = craft_fuzzy_cluster_net(run->c);
    craft_fuzzy_faults_t f;
    memset(&f, 0, sizeof f);
    f.snapshot_cut = 0.3;
    f.delay_max_us = 1000;
    craft_fuzzy_net_set_faults(net, &f);
    while (running(run)) {
        int l = craft_fuzzy_cluster_leader(run->c, 1000 * run->scale);
        int lagger = pick_member(run, l);
        if (lagger < 0) {
            pause_ms(run, 50);
            continue;
        }
        craft_fuzzy_net_isolate(net, addr_of(run, (size_t)lagger), true);
        run->events++;
        for (int k = 0; k < 3 && running(run); k++) {
            pause_ms(run, rnd(run, 100, 300));
            l = craft_fuzzy_cluster_leader(run->c, 0);
            if (l >= 0) {
                craft_fuzzy_cluster_snapshot(run->c, (size_t)l, 2000 * run->scale);
            }
        }
        if (fz_rng_chance(&run->rng, 0.3)) {
            /* Crash it while cut off: it restarts from its own snapshot. */
            craft_fuzzy_cluster_crash(run->c, (size_t)lagger);
            craft_fuzzy_cluster_restart(run->c, (size_t)lagger);
        }
        craft_fuzzy_net_isolate(net, addr_of(run, (size_t)lagger), false);
        pause_ms(run, rnd(run, 300, 800));
    }
}

/* ---- disk faults ---- */

static void nemesis_disk_faults(fz_run_t *run)
{
    size_t n = craft_fuzzy_cluster_slots(run->c);
    while (running(run)) {
        int l = craft_fuzzy_cluster_leader(run->c, 0);
        int victim = fz_rng_chance(&run->rng, 0.5) && l >= 0 ? l : pick_member(run, -1);
        craft_fuzzy_store_t *s = victim >= 0 ? craft_fuzzy_cluster_store(run->c, (size_t)victim)
                                             : NULL;
        if (s != NULL) {
            craft_fuzzy_disk_faults_t d = {.fail = 0.05, .slow = 0.3, .slow_us = 20000};
            craft_fuzzy_store_set_faults(s, &d);
            run->events++;
        }
        pause_ms(run, rnd(run, 200, 600));
        /* Repair: restart nodes whose disk failed, and calm the others. */
        for (size_t i = 0; i < n; i++) {
            craft_fuzzy_store_t *st = craft_fuzzy_cluster_store(run->c, i);
            if (st == NULL) {
                continue;
            }
            craft_fuzzy_store_set_faults(st, NULL);
            if (craft_fuzzy_store_failed(st)) {
                craft_fuzzy_cluster_crash(run->c, i);
                craft_fuzzy_cluster_restart(run->c, i);
            }
        }
        pause_ms(run, rnd(run, 100, 400));
    }
}

/* ---- mixed ---- */

static void nemesis_mixed(fz_run_t *run)
{
    craft_fuzzy_net_t *net = craft_fuzzy_cluster_net(run->c);
    int64_t t = 2000 * run->scale;
    craft_fuzzy_faults_t f;
    flaky_faults(&f, 0.3);
    craft_fuzzy_net_set_faults(net, &f);
    while (running(run)) {
        size_t n = craft_fuzzy_cluster_slots(run->c);
        int l = craft_fuzzy_cluster_leader(run->c, 0);
        switch (fz_rng_below(&run->rng, 7)) {
        case 0: {
            int v = pick_member(run, -1);
            if (v >= 0) {
                craft_fuzzy_cluster_crash(run->c, (size_t)v);
                pause_ms(run, rnd(run, 50, 400));
                craft_fuzzy_cluster_restart(run->c, (size_t)v);
            }
            break;
        }
        case 1:
            if (l >= 0) {
                craft_fuzzy_net_isolate(net, addr_of(run, (size_t)l), true);
                noise(run, l, 3);
                pause_ms(run, rnd(run, 200, 800));
                craft_fuzzy_net_isolate(net, addr_of(run, (size_t)l), false);
            }
            break;
        case 2:
            craft_fuzzy_cluster_transfer(run->c, -1, t);
            break;
        case 3:
            if (l >= 0) {
                craft_fuzzy_cluster_snapshot(run->c, (size_t)l, t);
            }
            break;
        case 4:
            if (count_members(run) > 3 && fz_rng_chance(&run->rng, 0.5)) {
                int v = pick_member(run, -1);
                if (v >= 0) {
                    craft_fuzzy_cluster_remove(run->c, (size_t)v, t);
                }
            } else if (n < CRAFT_FUZZY_MAX_NODES) {
                craft_fuzzy_cluster_add(run->c, true, t, NULL);
            }
            break;
        case 5: {
            int v = pick_member(run, -1);
            craft_fuzzy_store_t *s = v >= 0 ? craft_fuzzy_cluster_store(run->c, (size_t)v) : NULL;
            if (s != NULL) {
                craft_fuzzy_disk_faults_t d = {.fail = 0.05, .slow = 0.2, .slow_us = 10000};
                craft_fuzzy_store_set_faults(s, &d);
                pause_ms(run, rnd(run, 100, 400));
                s = craft_fuzzy_cluster_store(run->c, (size_t)v);
                if (s != NULL) {
                    craft_fuzzy_store_set_faults(s, NULL);
                    if (craft_fuzzy_store_failed(s)) {
                        craft_fuzzy_cluster_crash(run->c, (size_t)v);
                        craft_fuzzy_cluster_restart(run->c, (size_t)v);
                    }
                }
            }
            break;
        }
        default: {
            size_t s = fz_rng_below(&run->rng, n);
            craft_fuzzy_net_set_slow(net, addr_of(run, s), rnd(run, 5000, 20000));
            pause_ms(run, rnd(run, 200, 600));
            craft_fuzzy_net_set_slow(net, addr_of(run, s), 0);
            break;
        }
        }
        run->events++;
        pause_ms(run, rnd(run, 100, 400));
    }
}

const fz_scenario_t fz_scenarios[] = {
    {"sanity", "no faults; periodic user snapshots", 5, NULL, nemesis_sanity},
    {"leader_partitions", "cut the leader (and maybe a follower) off, writes to the old leader",
     5, setup_long_logs, nemesis_leader_partitions},
    {"random_partitions", "random groups plus one-way link cuts", 5, NULL,
     nemesis_random_partitions},
    {"flaky", "drop, response loss, delay, reordering, duplication, slow node", 5, NULL,
     nemesis_flaky},
    {"crash_restart", "crash one or two nodes (often the leader) and restart them", 5, NULL,
     nemesis_crash_restart},
    {"membership", "add and remove servers under load", 3, NULL, nemesis_membership},
    {"remove_leader", "remove the leader, add a replacement", 5, NULL, nemesis_remove_leader},
    {"transfer_storm", "leadership transfers back to back", 5, NULL, nemesis_transfer_storm},
    {"snapshot_partitions", "followers cut off past compaction catch up by InstallSnapshot", 5,
     setup_snapshots, nemesis_snapshot_partitions},
    {"disk_faults", "failed and slow writes; failed nodes restarted", 5, NULL,
     nemesis_disk_faults},
    {"mixed", "all of the above, interleaved, on a mildly flaky network", 5, setup_snapshots,
     nemesis_mixed},
};
const size_t fz_n_scenarios = sizeof fz_scenarios / sizeof fz_scenarios[0];

const fz_scenario_t *fz_scenario_find(const char *name)
{
    for (size_t i = 0; i < fz_n_scenarios; i++) {
        if (strcmp(fz_scenarios[i].name, name) == 0) {
            return &fz_scenarios[i];
        }
    }
    return NULL;
}
