#include "util.h"

#include <stdlib.h>
#include <time.h>

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void fz_rng_seed(fz_rng_t *r, uint64_t seed, uint64_t salt)
{
    uint64_t x = seed ^ (salt * 0xd1342543de82ef95ULL);
    for (int i = 0; i < 4; i++) {
        r->s[i] = splitmix(&x);
    }
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t fz_rng_u64(fz_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t fz_rng_below(fz_rng_t *r, uint64_t n)
{
    return n == 0 ? 0 : fz_rng_u64(r) % n;
}

int64_t fz_rng_range(fz_rng_t *r, int64_t lo, int64_t hi)
{
    if (hi <= lo) {
        return lo;
    }
    return lo + (int64_t)fz_rng_below(r, (uint64_t)(hi - lo) + 1);
}

bool fz_rng_chance(fz_rng_t *r, double p)
{
    if (p <= 0) {
        return false;
    }
    return (double)(fz_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0) < p;
}

uint64_t fz_hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 1099511628211ULL;
    }
    return h;
}

uint64_t fz_hash_str(const char *s)
{
    uint64_t h = FZ_HASH_INIT;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

int64_t fz_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void fz_sleep_us(int64_t us)
{
    if (us <= 0) {
        return;
    }
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

int64_t fz_time_scale(void)
{
    const char *s = getenv("CRAFT_TEST_TIME_SCALE");
    int64_t v = s != NULL ? atoll(s) : 1;
    return v < 1 ? 1 : v;
}
