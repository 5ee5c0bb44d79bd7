/*
 * Commitment tracking for a leader (hashicorp commitment.go): match indexes
 * of the voters of the latest configuration; the commit index is the
 * highest index stored on a majority of voters, and only advances to
 * entries of the current term (Raft §5.4.2). Thread-safe: replication
 * threads report matches, the run thread reads the commit index.
 */
#ifndef CRAFT_LIB_COMMITMENT_H
#define CRAFT_LIB_COMMITMENT_H

#include <stdatomic.h>

#include "craft.h"
#include "lib/runtime.h"

typedef struct craft__commitment {
    craft__mutex_t mu;
    atomic_int refs;
    size_t n;
    char **ids;          /* voters */
    uint64_t *match;
    uint64_t commit_index;
    uint64_t start_index; /* first index of the leader's term */
} craft__commitment_t;

/* Pure quorum math: the highest index stored on a majority of `n` match
 * indexes (n > 0). Sorts a copy. */
uint64_t craft__quorum_match_index(const uint64_t *match, size_t n);

/* Voters come from `c`; nonvoters are ignored. refs = 1. NULL on ENOMEM. */
craft__commitment_t *craft__commitment_new(const craft_configuration_t *c,
                                           uint64_t commit_index, uint64_t start_index);
void craft__commitment_ref(craft__commitment_t *cm);
void craft__commitment_unref(craft__commitment_t *cm);
/* Replaces the voter set (keeping known match indexes). Returns 0 or
 * CRAFT_ENOMEM; *advanced (may be NULL) tells whether the commit index
 * advanced. */
int craft__commitment_set_configuration(craft__commitment_t *cm,
                                        const craft_configuration_t *c, bool *advanced);
/* Records that `id` stores everything up to `index` (ignored for unknown
 * ids and for decreases). Returns true when the commit index advanced. */
bool craft__commitment_match(craft__commitment_t *cm, const char *id, uint64_t index);
uint64_t craft__commitment_commit_index(craft__commitment_t *cm);

#endif
