/*
 * Small helpers shared by the fuzzy harness: a seeded RNG (splitmix64 for
 * seeding, xoshiro256** for draws), clocks and sleeps.
 */
#ifndef CRAFT_FUZZY_UTIL_H
#define CRAFT_FUZZY_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fz_rng {
    uint64_t s[4];
} fz_rng_t;

/* Seeds from `seed` mixed with `salt` (so each component draws from its
 * own stream and adding draws in one place does not shift the others). */
void fz_rng_seed(fz_rng_t *r, uint64_t seed, uint64_t salt);
uint64_t fz_rng_u64(fz_rng_t *r);
/* Uniform in [0, n); 0 when n == 0. */
uint64_t fz_rng_below(fz_rng_t *r, uint64_t n);
/* Uniform in [lo, hi] (hi >= lo). */
int64_t fz_rng_range(fz_rng_t *r, int64_t lo, int64_t hi);
/* true with probability p. */
bool fz_rng_chance(fz_rng_t *r, double p);
/* FNV-1a of a string, for salts. */
uint64_t fz_hash_str(const char *s);
uint64_t fz_hash_bytes(uint64_t h, const void *p, size_t n);
#define FZ_HASH_INIT 1469598103934665603ULL

int64_t fz_now_us(void);
void fz_sleep_us(int64_t us);
/* CRAFT_TEST_TIME_SCALE, at least 1. */
int64_t fz_time_scale(void);

#endif
