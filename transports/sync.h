/*
 * pthread helpers shared by the shipped transports (they use pthreads
 * directly, not lib/'s runtime layer).
 */
#ifndef CRAFT_TRANSPORTS_SYNC_H
#define CRAFT_TRANSPORTS_SYNC_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "craft.h"

/* A condition variable timed on CLOCK_MONOTONIC (deadlines must not move
 * with the wall clock). 0 or CRAFT_ENOMEM. */
static inline int craft__cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        return CRAFT_ENOMEM;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rv = pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
    return rv == 0 ? 0 : CRAFT_ENOMEM;
}

/* CLOCK_MONOTONIC now + `ms`: a deadline for a condvar made by
 * craft__cond_init_monotonic. */
static inline struct timespec craft__deadline_after_ms(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

#endif /* CRAFT_TRANSPORTS_SYNC_H */
