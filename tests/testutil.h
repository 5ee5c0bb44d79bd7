/* Shared helpers for craft's Check suites. */
#ifndef CRAFT_TESTUTIL_H
#define CRAFT_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Polls cond(arg) every few ms until it holds or timeout_ms passes.
 * Returns true when it held. Tests wait on conditions, never on sleeps. */
bool tu_wait_for(bool (*cond)(void *arg), void *arg, int64_t timeout_ms);

/* Sleeps `ms` milliseconds (for polling loops only, never as a test's
 * synchronisation). */
void tu_sleep_ms(int64_t ms);

/* Creates a fresh temporary directory (malloc'd path); tu_rmrf removes it. */
char *tu_tmpdir(const char *prefix);
void tu_rmrf(const char *path);

/* Builds bytes from a spec of hex pairs and "quoted ASCII" segments, e.g.
 * `a7"LastLog"66` (whitespace and other characters are ignored), as WIRE.md
 * writes its dumps. Aborts when more than `cap` bytes would be written.
 * Returns the byte count. */
size_t tu_hex(const char *spec, uint8_t *out, size_t cap);

#endif
