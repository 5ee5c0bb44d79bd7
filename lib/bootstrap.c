/* Offline bootstrap (hashicorp BootstrapCluster) and existing-state check. */
#include <stdlib.h>
#include <string.h>

#include "lib/codec.h"
#include "lib/configuration.h"
#include "lib/logger.h"
#include "lib/raft.h"

/* hashicorp HasExistingState: a term, a log or a snapshot. */
int craft_has_existing_state(craft_log_store_t *logs, craft_stable_store_t *stable,
                              craft_snapshot_store_t *snaps, bool *exists)
{
    if (logs == NULL || stable == NULL || exists == NULL) {
        return CRAFT_EINVAL;
    }
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
    rv = craft_has_existing_state(logs, stable, snaps, &exists);
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

/* Scans the log for the newest configuration entry (the snapshot's
 * configuration when the log holds none). */
static int latest_configuration(craft_log_store_t *logs, craft_snapshot_store_t *snaps,
                                craft_configuration_t *out, uint64_t *index,
                                uint64_t *last_index, uint64_t *last_term)
{
    out->n = 0;
    out->servers = NULL;
    *index = 0;
    *last_index = 0;
    *last_term = 0;
    if (snaps != NULL) {
        craft_snapshot_meta_t **metas = NULL;
        size_t n = 0;
        int rv = snaps->list(snaps->ctx, &metas, &n);
        if (rv != 0) {
            return rv;
        }
        if (n > 0) {
            rv = craft_configuration_copy(out, &metas[0]->configuration);
            *index = metas[0]->configuration_index;
            *last_index = metas[0]->index;
            *last_term = metas[0]->term;
        }
        for (size_t i = 0; i < n; i++) {
            craft_snapshot_meta_free(metas[i]);
        }
        free(metas);
        if (rv != 0) {
            return rv;
        }
    }
    uint64_t first = 0, last = 0;
    int rv = logs->first_index(logs->ctx, &first);
    if (rv == 0) {
        rv = logs->last_index(logs->ctx, &last);
    }
    if (rv != 0) {
        return rv;
    }
    for (uint64_t i = first; i > 0 && i <= last; i++) {
        craft_log_t l;
        memset(&l, 0, sizeof l);
        rv = logs->get_log(logs->ctx, i, &l);
        if (rv != 0) {
            craft_configuration_free(out);
            return rv == CRAFT_ENOTFOUND ? CRAFT_ECORRUPT : rv;
        }
        *last_index = i;
        *last_term = l.term;
        if (l.type == CRAFT_LOG_CONFIGURATION) {
            craft_configuration_t c;
            rv = craft__configuration_decode(l.data, l.len, &c);
            if (rv != 0) {
                craft_log_release(&l);
                craft_configuration_free(out);
                return rv;
            }
            craft_configuration_free(out);
            *out = c;
            *index = i;
        }
        craft_log_release(&l);
    }
    return 0;
}

int craft_get_configuration_offline(craft_log_store_t *logs, craft_stable_store_t *stable,
                                    craft_snapshot_store_t *snaps, craft_configuration_t *out,
                                    uint64_t *index)
{
    (void)stable;
    if (logs == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    uint64_t idx, li, lt;
    int rv = latest_configuration(logs, snaps, out, &idx, &li, &lt);
    if (rv == 0 && index != NULL) {
        *index = idx;
    }
    return rv;
}

int craft_recover_cluster(const craft_config_t *config, craft_log_store_t *logs,
                          craft_stable_store_t *stable, craft_snapshot_store_t *snaps,
                          const craft_configuration_t *configuration)
{
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
        CRAFT__ERROR(&log, "recover", "invalid configuration: %s", why);
        return CRAFT_EINVAL;
    }
    bool exists = false;
    rv = craft_has_existing_state(logs, stable, snaps, &exists);
    if (rv != 0) {
        return rv;
    }
    if (!exists) {
        CRAFT__ERROR(&log, "recover", "refused to recover cluster with no initial state, "
                     "this is probably an operator error");
        return CRAFT_ENOTFOUND;
    }
    craft_configuration_t cur;
    uint64_t cidx, last, last_term;
    rv = latest_configuration(logs, snaps, &cur, &cidx, &last, &last_term);
    if (rv != 0) {
        return rv;
    }
    craft_configuration_free(&cur);
    uint64_t term = 0;
    rv = stable->get_uint64(stable->ctx, CRAFT__KEY_CURRENT_TERM, &term);
    if (rv != 0 && rv != CRAFT_ENOTFOUND) {
        return rv;
    }
    if (last_term > term) {
        term = last_term;
    }
    void *buf = NULL;
    size_t len = 0;
    rv = craft__configuration_encode(configuration, &buf, &len);
    if (rv != 0) {
        return rv;
    }
    /* Everything up to the forced configuration counts as committed: the
     * surviving log is the cluster's history from now on. */
    if (logs->stage_commit_index != NULL) {
        rv = logs->stage_commit_index(logs->ctx, last + 1);
    }
    craft_log_t entry = {
        .index = last + 1,
        .term = last_term > 0 ? last_term : 1,
        .type = CRAFT_LOG_CONFIGURATION,
        .data = buf,
        .len = len,
        .appended_at_ns = craft__wall_ns(),
    };
    if (rv == 0) {
        rv = logs->store_logs(logs->ctx, &entry, 1);
    }
    free(buf);
    if (rv == 0 && term == 0) {
        rv = stable->set_uint64(stable->ctx, CRAFT__KEY_CURRENT_TERM, 1);
    }
    if (rv != 0) {
        CRAFT__ERROR(&log, "recover", "failed to write the recovered configuration: %s",
                     craft_strerror(rv));
        return rv;
    }
    CRAFT__INFO(&log, "recover", "forced configuration of %zu servers at index=%llu",
                configuration->n, (unsigned long long)(last + 1));
    return 0;
}
