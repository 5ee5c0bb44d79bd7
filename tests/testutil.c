#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ctype.h>

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tu_sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

bool tu_wait_for(bool (*cond)(void *arg), void *arg, int64_t timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg)) {
            return true;
        }
        if (now_ms() >= deadline) {
            return false;
        }
        tu_sleep_ms(5);
    }
}

char *tu_tmpdir(const char *prefix)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/%s-XXXXXX", base ? base : "/tmp", prefix);
    if (mkdtemp(tmpl) == NULL) {
        return NULL;
    }
    return strdup(tmpl);
}

void tu_rmrf(const char *path)
{
    char cmd[1024];
    if (path == NULL || strlen(path) < 5) {
        return;
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) {
        fprintf(stderr, "tu_rmrf: failed to remove %s\n", path);
    }
}

size_t tu_hex(const char *spec, uint8_t *out, size_t cap)
{
    size_t n = 0;
    const char *p = spec;
    while (*p != '\0') {
        if (*p == '"') {
            for (p++; *p != '\0' && *p != '"'; p++) {
                if (n == cap) {
                    abort();
                }
                out[n++] = (uint8_t)*p;
            }
            if (*p == '"') {
                p++;
            }
        } else if (isxdigit((unsigned char)p[0]) && isxdigit((unsigned char)p[1])) {
            char h[3] = {p[0], p[1], '\0'};
            if (n == cap) {
                abort();
            }
            out[n++] = (uint8_t)strtoul(h, NULL, 16);
            p += 2;
        } else {
            p++;
        }
    }
    return n;
}
