/* Shared helpers for craft's Check suites. */
#ifndef CRAFT_TESTUTIL_H
#define CRAFT_TESTUTIL_H

#include <stdbool.h>
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

#endif
