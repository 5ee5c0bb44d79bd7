/*
 * Thread helpers shared by the unit suites (header-only, Linux).
 *
 * ut_wait_blocked() lets a test know that another thread has really gone to
 * sleep inside a blocking call (its /proc state is 'S'), so that "a waiter
 * blocked forever is woken by X" tests exercise the wake-up path instead of
 * racing past it. It is an observation, never the synchronisation the test
 * relies on for its result: whichever way the race goes, the assertions that
 * follow still hold for a correct implementation.
 */
#ifndef CRAFT_TESTS_UNIT_THREADS_H
#define CRAFT_TESTS_UNIT_THREADS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "tests/testutil.h"

static inline pid_t ut_gettid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static inline bool ut_task_sleeping(void *arg)
{
    pid_t tid = *(const pid_t *)arg;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return false;
    }
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* "tid (comm) S ...": comm may contain spaces or ')', take the last ')'. */
    char *p = NULL;
    for (char *q = buf; *q != '\0'; q++) {
        if (*q == ')') {
            p = q;
        }
    }
    return p != NULL && p[1] == ' ' && p[2] == 'S';
}

/* Waits (up to 10 s) until thread `tid` sleeps in the kernel. */
static inline bool ut_wait_blocked(pid_t tid)
{
    return tu_wait_for(ut_task_sleeping, &tid, 10000);
}

/* Waits until an atomic flag published by another thread is non-zero. */
static inline bool ut_flag_set(void *arg)
{
    return atomic_load((atomic_int *)arg) != 0;
}

#endif
