/* Cluster configuration helpers (hashicorp configuration.go). */
#include "lib/configuration.h"

#include <stdlib.h>
#include <string.h>

int craft_configuration_copy(craft_configuration_t *dst,
                             const craft_configuration_t *src)
{
    dst->n = 0;
    dst->servers = NULL;
    if (src->n == 0) {
        return 0;
    }
    dst->servers = calloc(src->n, sizeof *dst->servers);
    if (dst->servers == NULL) {
        return CRAFT_ENOMEM;
    }
    for (size_t i = 0; i < src->n; i++) {
        dst->servers[i].suffrage = src->servers[i].suffrage;
        dst->servers[i].id = strdup(src->servers[i].id ? src->servers[i].id : "");
        dst->servers[i].address =
            strdup(src->servers[i].address ? src->servers[i].address : "");
        dst->n = i + 1;
        if (dst->servers[i].id == NULL || dst->servers[i].address == NULL) {
            craft_configuration_free(dst);
            return CRAFT_ENOMEM;
        }
    }
    return 0;
}

void craft_configuration_free(craft_configuration_t *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < c->n; i++) {
        free(c->servers[i].id);
        free(c->servers[i].address);
    }
    free(c->servers);
    c->servers = NULL;
    c->n = 0;
}

void craft_snapshot_meta_free(craft_snapshot_meta_t *meta)
{
    if (meta == NULL) {
        return;
    }
    free(meta->id);
    craft_configuration_free(&meta->configuration);
    free(meta);
}

void craft_log_release(craft_log_t *log)
{
    if (log == NULL) {
        return;
    }
    free((void *)log->data);
    free((void *)log->ext);
    log->data = NULL;
    log->ext = NULL;
    log->len = 0;
    log->ext_len = 0;
}

int craft__configuration_find(const craft_configuration_t *c, const char *id)
{
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->servers[i].id, id) == 0) {
            return (int)i;
        }
    }
    return -1;
}

bool craft__configuration_is_voter(const craft_configuration_t *c, const char *id)
{
    int i = craft__configuration_find(c, id);
    return i >= 0 && c->servers[i].suffrage == CRAFT_VOTER;
}

size_t craft__configuration_voters(const craft_configuration_t *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++) {
        n += c->servers[i].suffrage == CRAFT_VOTER;
    }
    return n;
}

int craft__configuration_check(const craft_configuration_t *c, const char **reason)
{
    const char *why = NULL;
    for (size_t i = 0; i < c->n && why == NULL; i++) {
        const craft_server_t *s = &c->servers[i];
        if (s->id == NULL || s->id[0] == '\0') {
            why = "empty server ID in configuration";
        } else if (s->address == NULL || s->address[0] == '\0') {
            why = "empty server address in configuration";
        } else if (s->suffrage != CRAFT_VOTER && s->suffrage != CRAFT_NONVOTER) {
            why = "unknown suffrage in configuration";
        }
        for (size_t j = 0; j < i && why == NULL; j++) {
            if (strcmp(c->servers[j].id, s->id) == 0) {
                why = "duplicate server ID in configuration";
            } else if (strcmp(c->servers[j].address, s->address) == 0) {
                why = "duplicate server address in configuration";
            }
        }
    }
    if (why == NULL && craft__configuration_voters(c) == 0) {
        why = "configuration has no voter";
    }
    if (reason != NULL) {
        *reason = why;
    }
    return why == NULL ? 0 : CRAFT_EINVAL;
}

bool craft__configuration_equal(const craft_configuration_t *a,
                                const craft_configuration_t *b)
{
    if (a->n != b->n) {
        return false;
    }
    for (size_t i = 0; i < a->n; i++) {
        if (a->servers[i].suffrage != b->servers[i].suffrage ||
            strcmp(a->servers[i].id, b->servers[i].id) != 0 ||
            strcmp(a->servers[i].address, b->servers[i].address) != 0) {
            return false;
        }
    }
    return true;
}

int craft__configuration_add(craft_configuration_t *c, const char *id,
                             const char *address, craft_suffrage_t suffrage)
{
    craft_server_t *s = realloc(c->servers, (c->n + 1) * sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    c->servers = s;
    s = &c->servers[c->n];
    s->id = strdup(id);
    s->address = strdup(address);
    s->suffrage = suffrage;
    if (s->id == NULL || s->address == NULL) {
        free(s->id);
        free(s->address);
        return CRAFT_ENOMEM;
    }
    c->n++;
    return 0;
}

void craft__configuration_remove_at(craft_configuration_t *c, size_t i)
{
    free(c->servers[i].id);
    free(c->servers[i].address);
    memmove(&c->servers[i], &c->servers[i + 1], (c->n - i - 1) * sizeof c->servers[0]);
    c->n--;
}
