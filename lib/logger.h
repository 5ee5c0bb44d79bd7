/* Leveled logging through config.logger (default: stderr). */
#ifndef CRAFT_LIB_LOGGER_H
#define CRAFT_LIB_LOGGER_H

#include "craft.h"

typedef struct craft__logger {
    craft_logger_fn fn;
    void *ctx;
    craft_level_t level;
    const char *prefix; /* e.g. the local id; borrowed */
} craft__logger_t;

void craft__logger_init(craft__logger_t *l, const craft_config_t *c, const char *prefix);
void craft__log(const craft__logger_t *l, craft_level_t level, const char *component,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The default sink: "[LEVEL] component: message" on stderr. */
void craft__stderr_logger(void *ctx, craft_level_t level, const char *component,
                          const char *message);

#define CRAFT__TRACE(l, ...) craft__log((l), CRAFT_LEVEL_TRACE, __VA_ARGS__)
#define CRAFT__DEBUG(l, ...) craft__log((l), CRAFT_LEVEL_DEBUG, __VA_ARGS__)
#define CRAFT__INFO(l, ...) craft__log((l), CRAFT_LEVEL_INFO, __VA_ARGS__)
#define CRAFT__WARN(l, ...) craft__log((l), CRAFT_LEVEL_WARN, __VA_ARGS__)
#define CRAFT__ERROR(l, ...) craft__log((l), CRAFT_LEVEL_ERROR, __VA_ARGS__)

#endif
