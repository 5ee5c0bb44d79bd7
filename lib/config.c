/* craft_config_t defaults (hashicorp DefaultConfig) and validation
 * (hashicorp ValidateConfig). */
#include <string.h>

#include "craft.h"
#include "lib/logger.h"

void craft_config_default(craft_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->protocol_version = 3;
    c->heartbeat_timeout_ms = 1000;
    c->election_timeout_ms = 1000;
    c->commit_timeout_ms = 50;
    c->max_append_entries = 64;
    c->batch_apply_ch = false;
    c->shutdown_on_remove = true;
    c->trailing_logs = 10240;
    c->snapshot_interval_ms = 120000;
    c->snapshot_threshold = 8192;
    c->leader_lease_timeout_ms = 500;
    c->local_id = NULL;
    c->log_level = CRAFT_LEVEL_INFO;
    c->restore_committed_logs = true;
    c->max_inflight = 2;
    c->max_uncommitted = 4096;
    c->apply_inline = false;
    c->wait_spin_us = 0;
}

static const char *check(const craft_config_t *c)
{
    if (c->protocol_version != 3) {
        return "protocol_version must be 3 (the only version craft speaks)";
    }
    if (c->local_id == NULL || c->local_id[0] == '\0') {
        return "local_id cannot be empty";
    }
    if (strlen(c->local_id) > 255) {
        return "local_id is longer than 255 bytes";
    }
    if (c->heartbeat_timeout_ms < 5) {
        return "heartbeat_timeout_ms is too low (minimum 5)";
    }
    if (c->election_timeout_ms < 5) {
        return "election_timeout_ms is too low (minimum 5)";
    }
    if (c->commit_timeout_ms < 1) {
        return "commit_timeout_ms is too low (minimum 1)";
    }
    if (c->max_append_entries <= 0) {
        return "max_append_entries must be positive";
    }
    if (c->max_append_entries > 1024) {
        return "max_append_entries is too large (maximum 1024)";
    }
    if (c->snapshot_interval_ms < 5) {
        return "snapshot_interval_ms is too low (minimum 5)";
    }
    if (c->leader_lease_timeout_ms < 5) {
        return "leader_lease_timeout_ms is too low (minimum 5)";
    }
    if (c->leader_lease_timeout_ms > c->heartbeat_timeout_ms) {
        return "leader_lease_timeout_ms cannot be larger than heartbeat_timeout_ms";
    }
    if (c->election_timeout_ms < c->heartbeat_timeout_ms) {
        return "election_timeout_ms must be equal or greater than heartbeat_timeout_ms";
    }
    if (c->log_level < CRAFT_LEVEL_TRACE || c->log_level > CRAFT_LEVEL_OFF) {
        return "log_level is out of range";
    }
    if (c->max_inflight < 1 || c->max_inflight > 1024) {
        return "max_inflight must be in 1..1024";
    }
    if (c->wait_spin_us < 0 || c->wait_spin_us > 10000) {
        return "wait_spin_us must be in 0..10000";
    }
    return NULL;
}

int craft_config_validate(const craft_config_t *c, const char **reason)
{
    const char *why = c == NULL ? "config is NULL" : check(c);
    if (reason != NULL) {
        *reason = why;
    }
    if (why == NULL) {
        return 0;
    }
    craft__logger_t l;
    craft__logger_init(&l, c, NULL);
    /* Logged even when log_level itself is the bad field (OFF silences). */
    if (c != NULL && (c->log_level < CRAFT_LEVEL_TRACE || c->log_level > CRAFT_LEVEL_OFF)) {
        l.level = CRAFT_LEVEL_ERROR;
    }
    CRAFT__ERROR(&l, "config", "invalid configuration: %s", why);
    return CRAFT_EINVAL;
}
