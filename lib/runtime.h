/*
 * The runtime layer: every thread, lock, condition wait, clock read and
 * random number in lib/ goes through here (DESIGN §2), so that a
 * deterministic-simulation runtime can replace it later.
 */
#ifndef CRAFT_LIB_RUNTIME_H
#define CRAFT_LIB_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct { pthread_t t; } craft__thread_t;
typedef struct { pthread_mutex_t m; } craft__mutex_t;
typedef struct { pthread_cond_t c; } craft__cond_t;

/* Starts fn(arg) on a new thread named `name` (<= 15 chars shown). */
int craft__thread_start(craft__thread_t *t, const char *name,
                        void *(*fn)(void *), void *arg);
void craft__thread_join(craft__thread_t *t);

void craft__mutex_init(craft__mutex_t *m);
void craft__mutex_destroy(craft__mutex_t *m);
void craft__mutex_lock(craft__mutex_t *m);
/* 0 when taken, nonzero when another thread holds it. */
int craft__mutex_trylock(craft__mutex_t *m);
void craft__mutex_unlock(craft__mutex_t *m);

void craft__cond_init(craft__cond_t *c);
void craft__cond_destroy(craft__cond_t *c);
void craft__cond_signal(craft__cond_t *c);
void craft__cond_broadcast(craft__cond_t *c);
void craft__cond_wait(craft__cond_t *c, craft__mutex_t *m);
/* Waits until signalled or the monotonic clock reaches deadline_ns (< 0 =
 * forever). Returns false on timeout. Spurious wake-ups are possible. */
bool craft__cond_wait_until(craft__cond_t *c, craft__mutex_t *m, int64_t deadline_ns);

/* Number of CPUs this process may run on (its affinity mask at the first
 * call, kept for the life of the process), >= 1. */
int craft__cpu_count(void);
/* A hint to the CPU inside a polling loop (x86 pause, arm yield). */
void craft__cpu_relax(void);
/* Takes one of `limit` slots counted in `used` (the spinning threads or
 * loops of a process): true when one was free; give it back with
 * atomic_fetch_sub(used, 1). */
bool craft__slot_take(atomic_int *used, int limit);

/* Monotonic clock, ns. */
int64_t craft__now_ns(void);
/* Wall clock, ns since the Unix epoch. */
int64_t craft__wall_ns(void);

/* Uniform random 64-bit value (thread-safe, per-thread xorshift state). */
uint64_t craft__rand64(void);
/* Uniform in [lo, hi). hi <= lo returns lo. */
int64_t craft__rand_range(int64_t lo, int64_t hi);
/* hashicorp randomTimeout: uniform in [d, 2d), in ns, from d in ms. */
int64_t craft__random_timeout_ns(int64_t d_ms);

/* Marks the calling thread as a craft thread (used to refuse blocking
 * calls from callbacks); craft__on_craft_thread() tells. */
void craft__set_craft_thread(void *owner);
void *craft__craft_thread_owner(void);

#define CRAFT__MS(ms) ((int64_t)(ms) * 1000000)
#define CRAFT__US(us) ((int64_t)(us) * 1000)

#endif
