#include "lib/logger.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *level_name(craft_level_t level)
{
    switch (level) {
    case CRAFT_LEVEL_TRACE:
        return "TRACE";
    case CRAFT_LEVEL_DEBUG:
        return "DEBUG";
    case CRAFT_LEVEL_INFO:
        return "INFO";
    case CRAFT_LEVEL_WARN:
        return "WARN";
    case CRAFT_LEVEL_ERROR:
        return "ERROR";
    default:
        return "?";
    }
}

void craft__stderr_logger(void *ctx, craft_level_t level, const char *component,
                          const char *message)
{
    (void)ctx;
    fprintf(stderr, "[%-5s] %s: %s\n", level_name(level), component, message);
}

void craft__logger_init(craft__logger_t *l, const craft_config_t *c, const char *prefix)
{
    l->fn = (c != NULL && c->logger != NULL) ? c->logger : craft__stderr_logger;
    l->ctx = c != NULL ? c->logger_ctx : NULL;
    l->level = c != NULL ? c->log_level : CRAFT_LEVEL_INFO;
    l->prefix = prefix;
}

void craft__log(const craft__logger_t *l, craft_level_t level, const char *component,
                const char *fmt, ...)
{
    if (l == NULL || level < l->level || l->level >= CRAFT_LEVEL_OFF) {
        return;
    }
    char msg[1024];
    int off = 0;
    if (l->prefix != NULL) {
        off = snprintf(msg, sizeof msg, "[%s] ", l->prefix);
        if (off < 0 || (size_t)off >= sizeof msg) {
            off = 0;
        }
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + off, sizeof msg - (size_t)off, fmt, ap);
    va_end(ap);
    l->fn(l->ctx, level, component, msg);
}
