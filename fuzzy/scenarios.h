/* The craft-fuzz scenarios: option tweaks and a nemesis loop each. */
#ifndef CRAFT_FUZZY_SCENARIOS_H
#define CRAFT_FUZZY_SCENARIOS_H

#include "craft/fuzzy.h"
#include "util.h"

typedef struct fz_run {
    craft_fuzzy_cluster_t *c;
    fz_rng_t rng;      /* the nemesis' own stream */
    int64_t end_us;    /* monotonic end of the fault phase */
    int64_t scale;     /* CRAFT_TEST_TIME_SCALE */
    unsigned events;   /* faults injected (for the summary) */
} fz_run_t;

typedef struct fz_scenario {
    const char *name;
    const char *desc;
    size_t default_nodes;
    void (*setup)(craft_fuzzy_options_t *o);
    void (*nemesis)(fz_run_t *run);
} fz_scenario_t;

extern const fz_scenario_t fz_scenarios[];
extern const size_t fz_n_scenarios;

const fz_scenario_t *fz_scenario_find(const char *name);

#endif
