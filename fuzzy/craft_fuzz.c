/*
 * craft-fuzz: runs one scenario (or, with --soak, many) against a cluster
 * of craft nodes and checks the safety verifiers and linearizability.
 *
 *   craft-fuzz --scenario NAME --seed N --duration S [--nodes N]
 *              [--clients N] [--keys N] [--out DIR] [--dump] [--quiet]
 *              [--no-scale]   (keep the full duration under sanitizers)
 *   craft-fuzz --list
 *   craft-fuzz --soak --duration S [--seed N] [--iteration S]
 *
 * Exit status: 0 when every verifier passed (a linearizability check that
 * ran out of time is reported but does not fail the run), 1 on a
 * violation (seed printed, dumps written), 2 on usage or setup errors.
 * CRAFT_TEST_TIME_SCALE > 1 (sanitizer runs) shortens the fault phase and
 * scales craft's timeouts up.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "scenarios.h"

typedef struct args {
    const char *scenario;
    uint64_t seed;
    double duration;
    size_t nodes;
    unsigned clients, keys;
    const char *out;
    bool soak;
    double iteration;
    bool quiet;
    bool dump;
    bool no_scale;
} args_t;

static void usage(void)
{
    fprintf(stderr,
            "usage: craft-fuzz --scenario NAME --seed N --duration S [--nodes N]\n"
            "                  [--clients N] [--keys N] [--out DIR] [--quiet] [--dump]\n"
            "                  [--no-scale]\n"
            "       craft-fuzz --soak --duration S [--seed N] [--iteration S]\n"
            "       craft-fuzz --list\n");
}

static void list(void)
{
    for (size_t i = 0; i < fz_n_scenarios; i++) {
        printf("%-20s %s\n", fz_scenarios[i].name, fz_scenarios[i].desc);
    }
}

static void print_report(const craft_fuzzy_report_t *rep)
{
    if (rep->text != NULL) {
        fputs(rep->text, stdout);
    }
}

/* Runs one scenario; 0 pass, 1 violation, 2 setup error. */
static int run_one(const fz_scenario_t *sc, uint64_t seed, double duration, const args_t *a)
{
    int64_t scale = fz_time_scale();
    craft_fuzzy_options_t o;
    craft_fuzzy_options_default(&o);
    o.seed = seed;
    o.nodes = a->nodes ? a->nodes : sc->default_nodes;
    if (sc->setup != NULL) {
        sc->setup(&o);
    }
    craft_fuzzy_cluster_t *c;
    int rv = craft_fuzzy_cluster_new(&o, &c);
    if (rv != 0) {
        fprintf(stderr, "craft-fuzz: cannot create the cluster: %s\n", craft_strerror(rv));
        return 2;
    }
    if (craft_fuzzy_cluster_leader(c, 10000 * scale) < 0) {
        fprintf(stderr, "craft-fuzz: no initial leader (seed %" PRIu64 ")\n", seed);
    }
    craft_fuzzy_workload_t *w;
    rv = craft_fuzzy_workload_start(c, a->clients, a->keys, seed, 1000 * scale, &w);
    if (rv != 0) {
        fprintf(stderr, "craft-fuzz: cannot start clients: %s\n", craft_strerror(rv));
        craft_fuzzy_cluster_free(c);
        return 2;
    }
    /* Sanitizer builds run the faults for a shorter time. */
    double effective = a->no_scale ? duration : duration / (double)scale;
    if (effective < 1.0 && duration >= 1.0) {
        effective = 1.0;
    }
    fz_run_t run;
    memset(&run, 0, sizeof run);
    run.c = c;
    run.scale = scale;
    fz_rng_seed(&run.rng, seed, 0x6e656d65);
    int64_t t0 = fz_now_us();
    run.end_us = t0 + (int64_t)(effective * 1e6);
    sc->nemesis(&run);

    craft_fuzzy_history_t h;
    craft_fuzzy_workload_stop(w, &h);
    craft_fuzzy_report_t rep;
    memset(&rep, 0, sizeof rep);
    craft_fuzzy_cluster_converge(c, 30000 * scale, &rep);
    craft_fuzzy_cluster_verify(c, &rep);
    size_t ok = 0, unknown = 0, failed = 0;
    for (size_t i = 0; i < h.n; i++) {
        ok += h.ops[i].outcome == CRAFT_FUZZY_OK;
        unknown += h.ops[i].outcome == CRAFT_FUZZY_UNKNOWN;
        failed += h.ops[i].outcome == CRAFT_FUZZY_FAILED;
    }
    craft_fuzzy_history_resolve(c, &h, &rep);
    int64_t t_lin = fz_now_us();
    craft_fuzzy_lin_result_t lin = craft_fuzzy_check_linearizable(&h, 20000, &rep);
    int64_t lin_ms = (fz_now_us() - t_lin) / 1000;
    /* Every future must complete by the time its node is shut down. */
    craft_fuzzy_cluster_stop(c);
    craft_fuzzy_history_check_abandoned(&h, &rep);

    craft_fuzzy_net_stats_t ns;
    craft_fuzzy_net_stats(craft_fuzzy_cluster_net(c), &ns);
    static const char *lin_names[] = {"linearizable", "NOT linearizable", "unknown (bound)"};
    printf("craft-fuzz: scenario=%s seed=%" PRIu64 " nodes=%zu duration=%.1fs scale=%" PRId64
           "\n"
           "  faults injected=%u crashes=%u transfers=%u user-snapshots=%u leader-takeovers=%u\n"
           "  net: requests=%" PRIu64 " delivered=%" PRIu64 " dropped=%" PRIu64
           " resp-dropped=%" PRIu64 " duplicated=%" PRIu64 " unreachable=%" PRIu64
           " snapshots=%" PRIu64 " cut=%" PRIu64 " codec-errors=%" PRIu64 "\n"
           "  ops: %zu (ok %zu, failed %zu, unknown %zu) applied-max=%" PRIu64
           " converged-at=%" PRIu64 "\n"
           "  linearizability: %s (%" PRId64 " ms)\n",
           sc->name, seed, o.nodes, effective, scale, run.events, c->crashes, c->transfers,
           c->user_snapshots, c->takeovers, ns.requests, ns.delivered, ns.dropped,
           ns.dropped_resp, ns.duplicated, ns.unreachable, ns.snapshots, ns.snapshot_cuts,
           ns.codec_errors, h.n, ok, failed, unknown, craft_fuzzy_cluster_max_applied(c),
           c->converged_index, lin_names[lin], lin_ms);
    if (ns.codec_errors > 0) {
        craft_fuzzy_report_violation(&rep, "wire codec: %" PRIu64 " messages failed to round-trip",
                                     ns.codec_errors);
    }
    if (ok == 0) {
        craft_fuzzy_report_note(&rep, "no client operation succeeded during the run");
    }
    int status = rep.violations > 0 ? 1 : 0;
    if (status != 0 || !a->quiet) {
        print_report(&rep);
    }
    char dir[512];
    if (a->out != NULL) {
        snprintf(dir, sizeof dir, "%s", a->out);
    } else {
        snprintf(dir, sizeof dir, "craft-fuzz-%s-%" PRIu64, sc->name, seed);
    }
    if (status != 0 || a->dump) {
        craft_fuzzy_cluster_dump(c, dir);
        char path[600];
        snprintf(path, sizeof path, "%s/history.txt", dir);
        craft_fuzzy_history_write(&h, path);
        snprintf(path, sizeof path, "%s/findings.txt", dir);
        FILE *f = fopen(path, "w");
        if (f != NULL) {
            fprintf(f, "scenario=%s seed=%" PRIu64 " nodes=%zu\n", sc->name, seed, o.nodes);
            if (rep.text != NULL) {
                fputs(rep.text, f);
            }
            fclose(f);
        }
    }
    if (status != 0) {
        printf("FAILED: scenario=%s seed=%" PRIu64 " (%u violation(s)); dumps in %s\n"
               "  reproduce: craft-fuzz --scenario %s --seed %" PRIu64 " --duration %g --nodes %zu\n",
               sc->name, seed, rep.violations, dir, sc->name, seed, duration, o.nodes);
    } else {
        printf("PASSED: scenario=%s seed=%" PRIu64 "\n", sc->name, seed);
    }
    fflush(stdout);
    craft_fuzzy_report_free(&rep);
    craft_fuzzy_history_free(&h);
    craft_fuzzy_cluster_free(c);
    return status;
}

int main(int argc, char **argv)
{
    args_t a = {.seed = 1, .duration = 5, .clients = 3, .keys = 4, .iteration = 20};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(k, "--list") == 0) {
            list();
            return 0;
        } else if (strcmp(k, "--soak") == 0) {
            a.soak = true;
        } else if (strcmp(k, "--quiet") == 0) {
            a.quiet = true;
        } else if (strcmp(k, "--dump") == 0) {
            a.dump = true;
        } else if (strcmp(k, "--no-scale") == 0) {
            a.no_scale = true;
        } else if (v == NULL) {
            usage();
            return 2;
        } else if (strcmp(k, "--scenario") == 0) {
            a.scenario = v, i++;
        } else if (strcmp(k, "--seed") == 0) {
            a.seed = strtoull(v, NULL, 0), i++;
        } else if (strcmp(k, "--duration") == 0) {
            a.duration = atof(v), i++;
        } else if (strcmp(k, "--iteration") == 0) {
            a.iteration = atof(v), i++;
        } else if (strcmp(k, "--nodes") == 0) {
            a.nodes = (size_t)atoi(v), i++;
        } else if (strcmp(k, "--clients") == 0) {
            a.clients = (unsigned)atoi(v), i++;
        } else if (strcmp(k, "--keys") == 0) {
            a.keys = (unsigned)atoi(v), i++;
        } else if (strcmp(k, "--out") == 0) {
            a.out = v, i++;
        } else {
            usage();
            return 2;
        }
    }
    if (a.nodes > 9 || a.clients < 1 || a.clients > 64 || a.keys < 1 || a.keys > 32 ||
        a.duration <= 0) {
        usage();
        return 2;
    }
    if (a.soak) {
        /* Hours of scenarios in turn, seed after seed. */
        int64_t end = fz_now_us() + (int64_t)(a.duration * 1e6);
        uint64_t seed = a.seed;
        unsigned runs = 0, failures = 0;
        while (fz_now_us() < end) {
            const fz_scenario_t *sc = a.scenario != NULL ? fz_scenario_find(a.scenario)
                                                         : &fz_scenarios[runs % fz_n_scenarios];
            if (sc == NULL) {
                usage();
                return 2;
            }
            int st = run_one(sc, seed++, a.iteration, &a);
            runs++;
            failures += st != 0;
        }
        printf("soak: %u runs, %u failed\n", runs, failures);
        return failures > 0 ? 1 : 0;
    }
    const fz_scenario_t *sc = a.scenario != NULL ? fz_scenario_find(a.scenario) : NULL;
    if (sc == NULL) {
        fprintf(stderr, "craft-fuzz: unknown or missing --scenario (see --list)\n");
        return 2;
    }
    return run_one(sc, a.seed, a.duration, &a);
}
