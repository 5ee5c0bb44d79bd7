/* Cluster configurations: lookup, quorum and validation helpers. */
#ifndef CRAFT_LIB_CONFIGURATION_H
#define CRAFT_LIB_CONFIGURATION_H

#include "craft.h"

/* Index of the server with `id`, or -1. */
int craft__configuration_find(const craft_configuration_t *c, const char *id);
/* true when `id` is a voter in `c`. */
bool craft__configuration_is_voter(const craft_configuration_t *c, const char *id);
size_t craft__configuration_voters(const craft_configuration_t *c);
/* Checks for empty IDs/addresses, duplicate IDs or addresses, unknown
 * suffrage. Returns 0 or CRAFT_EINVAL with a static reason. */
int craft__configuration_check(const craft_configuration_t *c, const char **reason);
/* true when both hold the same servers in the same order. */
bool craft__configuration_equal(const craft_configuration_t *a,
                                const craft_configuration_t *b);
/* Appends a copy of a server; returns 0 or CRAFT_ENOMEM. */
int craft__configuration_add(craft_configuration_t *c, const char *id,
                             const char *address, craft_suffrage_t suffrage);
/* Removes server at position i. */
void craft__configuration_remove_at(craft_configuration_t *c, size_t i);

#endif
