/* Offline bootstrap (hashicorp BootstrapCluster) and existing-state check. */
#include <stdlib.h>
#include <string.h>

#include "lib/codec.h"
#include "lib/configuration.h"
#include "lib/logger.h"
#include "lib/raft.h"

/* hashicorp HasExistingState: a term, a log or a snapshot. */
static int has_existing_state(craft_log_store_t *logs, craft_stable_store_t *stable,
                              craft_snapshot_store_t *snaps, bool *exists)
{
    uint64_t term = 0, last = 0;
    int rv = stable->get_uint64(stable->ctx, CRAFT__KEY_CURRENT_TERM, &term);
    if (rv != 0 && rv != CRAFT_ENOTFOUND) {
        return rv;
    }
    if (term > 0) {
        *exists = true;
        return 0;
    }
    rv = logs->last_index(logs->ctx, &last);
    if (rv != 0) {
        return rv;
    }
    if (last > 0) {
        *exists = true;
        return 0;
    }
    if (snaps != NULL) {
        craft_snapshot_meta_t **metas = NULL;
        size_t n = 0;
        rv = snaps->list(snaps->ctx, &metas, &n);
        if (rv != 0) {
            return rv;
        }
        for (size_t i = 0; i < n; i++) {
            craft_snapshot_meta_free(metas[i]);
        }
        free(metas);
        if (n > 0) {
            *exists = true;
            return 0;
        }
    }
    *exists = false;
    return 0;
}

int craft_bootstrap_cluster(const craft_config_t *config, craft_log_store_t *logs,
                            craft_stable_store_t *stable, craft_snapshot_store_t *snaps,
                            craft_transport_t *trans, const craft_configuration_t *configuration)
{
    (void)trans;
    if (config == NULL || logs == NULL || stable == NULL || configuration == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = craft_config_validate(config, NULL);
    if (rv != 0) {
        return rv;
    }
    craft__logger_t log;
    craft__logger_init(&log, config, config->local_id);
    const char *why = NULL;
    if (craft__configuration_check(configuration, &why) != 0) {
        CRAFT__ERROR(&log, "bootstrap", "invalid configuration: %s", why);
        return CRAFT_EINVAL;
    }
    bool exists = false;
    rv = has_existing_state(logs, stable, snaps, &exists);
    if (rv != 0) {
        CRAFT__ERROR(&log, "bootstrap", "failed to check for existing state: %s",
                     craft_strerror(rv));
        return rv;
    }
    if (exists) {
        CRAFT__ERROR(&log, "bootstrap", "bootstrap only works on new clusters");
        return CRAFT_ECANTBOOTSTRAP;
    }
    rv = stable->set_uint64(stable->ctx, CRAFT__KEY_CURRENT_TERM, 1);
    if (rv != 0) {
        return rv;
    }
    void *buf = NULL;
    size_t len = 0;
    rv = craft__configuration_encode(configuration, &buf, &len);
    if (rv != 0) {
        return rv;
    }
    craft_log_t entry = {
        .index = 1,
        .term = 1,
        .type = CRAFT_LOG_CONFIGURATION,
        .data = buf,
        .len = len,
        .appended_at_ns = craft__wall_ns(),
    };
    rv = logs->store_logs(logs->ctx, &entry, 1);
    free(buf);
    if (rv != 0) {
        CRAFT__ERROR(&log, "bootstrap", "failed to append configuration entry: %s",
                     craft_strerror(rv));
    }
    return rv;
}
