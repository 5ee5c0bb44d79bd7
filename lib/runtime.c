/* pthreads + clock_gettime implementation of the runtime layer. */
#include "lib/runtime.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int craft__thread_start(craft__thread_t *t, const char *name,
                        void *(*fn)(void *), void *arg)
{
    int rv = pthread_create(&t->t, NULL, fn, arg);
    if (rv != 0) {
        return -1;
    }
    if (name != NULL) {
        char buf[16];
        strncpy(buf, name, sizeof buf - 1);
        buf[sizeof buf - 1] = '\0';
        pthread_setname_np(t->t, buf);
    }
    return 0;
}

void craft__thread_join(craft__thread_t *t)
{
    pthread_join(t->t, NULL);
}

void craft__mutex_init(craft__mutex_t *m)
{
    pthread_mutex_init(&m->m, NULL);
}

void craft__mutex_destroy(craft__mutex_t *m)
{
    pthread_mutex_destroy(&m->m);
}

void craft__mutex_lock(craft__mutex_t *m)
{
    pthread_mutex_lock(&m->m);
}

int craft__mutex_trylock(craft__mutex_t *m)
{
    return pthread_mutex_trylock(&m->m);
}

void craft__mutex_unlock(craft__mutex_t *m)
{
    pthread_mutex_unlock(&m->m);
}

void craft__cond_init(craft__cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&c->c, &a);
    pthread_condattr_destroy(&a);
}

void craft__cond_destroy(craft__cond_t *c)
{
    pthread_cond_destroy(&c->c);
}

void craft__cond_signal(craft__cond_t *c)
{
    pthread_cond_signal(&c->c);
}

void craft__cond_broadcast(craft__cond_t *c)
{
    pthread_cond_broadcast(&c->c);
}

void craft__cond_wait(craft__cond_t *c, craft__mutex_t *m)
{
    pthread_cond_wait(&c->c, &m->m);
}

bool craft__cond_wait_until(craft__cond_t *c, craft__mutex_t *m, int64_t deadline_ns)
{
    if (deadline_ns < 0) {
        pthread_cond_wait(&c->c, &m->m);
        return true;
    }
    struct timespec ts = {
        .tv_sec = deadline_ns / 1000000000,
        .tv_nsec = deadline_ns % 1000000000,
    };
    return pthread_cond_timedwait(&c->c, &m->m, &ts) != ETIMEDOUT;
}

int craft__cpu_count(void)
{
    static atomic_int cached; /* 0 until first use */
    int n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n == 0) {
        cpu_set_t set;
        long c = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                             : sysconf(_SC_NPROCESSORS_ONLN);
        n = c >= 1 ? (int)c : 1;
        atomic_store_explicit(&cached, n, memory_order_relaxed);
    }
    return n;
}

bool craft__slot_take(atomic_int *used, int limit)
{
    int n = atomic_load_explicit(used, memory_order_relaxed);
    while (n < limit) {
        if (atomic_compare_exchange_weak_explicit(used, &n, n + 1, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            return true;
        }
    }
    return false;
}

void craft__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

int64_t craft__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t craft__wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static _Thread_local uint64_t rand_state;

uint64_t craft__rand64(void)
{
    if (rand_state == 0) {
        /* Seed from the clock and the state's address (distinct per thread). */
        rand_state = (uint64_t)craft__now_ns() ^ ((uint64_t)(uintptr_t)&rand_state << 17) ^
                     0x9e3779b97f4a7c15ULL;
        if (rand_state == 0) {
            rand_state = 1;
        }
    }
    /* xorshift64* */
    uint64_t x = rand_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rand_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

int64_t craft__rand_range(int64_t lo, int64_t hi)
{
    if (hi <= lo) {
        return lo;
    }
    return lo + (int64_t)(craft__rand64() % (uint64_t)(hi - lo));
}

int64_t craft__random_timeout_ns(int64_t d_ms)
{
    int64_t d = CRAFT__MS(d_ms);
    return craft__rand_range(d, 2 * d);
}

static _Thread_local void *craft_thread_owner;

void craft__set_craft_thread(void *owner)
{
    craft_thread_owner = owner;
}

void *craft__craft_thread_owner(void)
{
    return craft_thread_owner;
}
