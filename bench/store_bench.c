/*
 * store_bench: LogStore write throughput and latency of the sqlite store,
 * next to the raw fdatasync rate of the same directory, and its read
 * throughput (get_log loop against get_logs).
 *
 *   store_bench [--dir DIR] [--seconds S] [--size BYTES] [--only write|read]
 *
 * Writes: for each durability mode (full, normal) and batch size (1, 16,
 * 64) it appends batches of BYTES-byte entries to a fresh database in DIR
 * for S seconds and prints one JSON line: entries/s, MB/s of entry data, and
 * p50/p99 latency of store_logs. The first line is the fdatasync rate of a
 * 4 KiB overwrite in DIR, the floor under durability full.
 *
 * Reads: a database of READ_ENTRIES entries; for S seconds, ranges of
 * READ_RANGE consecutive entries at random starts are read either with
 * READ_RANGE get_log calls or with one get_logs call; one JSON line each:
 * entries/s and p50/p99 latency of reading one range. Each method runs
 * alone, then next to a writer appending batches of 16 with durability full
 * (store_logs holds the store's mutex through the fsync: the case of a
 * follower catching up from the store while the leader keeps writing).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "craft.h"
#include "craft/sqlite.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct samples {
    int64_t *v;
    size_t n, cap;
} samples_t;

static void add(samples_t *s, int64_t v)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (s->v == NULL) {
            perror("realloc");
            exit(1);
        }
    }
    s->v[s->n++] = v;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(samples_t *s, double p)
{
    if (s->n == 0) {
        return 0;
    }
    qsort(s->v, s->n, sizeof *s->v, cmp64);
    size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
    return (double)s->v[i] / 1000.0;
}

static void remove_db(const char *path)
{
    char p[1100];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

static void bench_fdatasync(const char *dir, double seconds)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/store_bench.fsync", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        exit(1);
    }
    char buf[4096];
    memset(buf, 'f', sizeof buf);
    samples_t lat = {0};
    int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
    int64_t t = start;
    while (t < end) {
        if (pwrite(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf ||
            fdatasync(fd) != 0) {
            perror("pwrite/fdatasync");
            exit(1);
        }
        int64_t t2 = now_ns();
        add(&lat, t2 - t);
        t = t2;
    }
    double secs = (double)(t - start) / 1e9;
    printf("{\"bench\":\"fdatasync\",\"dir\":\"%s\",\"write_bytes\":4096,"
           "\"ops\":%zu,\"ops_per_s\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
           dir, lat.n, (double)lat.n / secs, pct_us(&lat, 0.5),
           pct_us(&lat, 0.99));
    fflush(stdout);
    close(fd);
    unlink(path);
    free(lat.v);
}

static void bench_store(const char *dir, craft_sqlite_durability_t mode,
                        size_t batch, size_t size, double seconds)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/store_bench.db", dir);
    remove_db(path);
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    o.durability = mode;
    craft_log_store_t *l;
    craft_stable_store_t *s;
    int rv = craft_sqlite_open(path, &o, &l, &s);
    if (rv != 0) {
        fprintf(stderr, "open %s: %s\n", path, craft_strerror(rv));
        exit(1);
    }
    unsigned char *data = malloc(size);
    craft_log_t *es = calloc(batch, sizeof *es);
    if (data == NULL || es == NULL) {
        perror("malloc");
        exit(1);
    }
    for (size_t i = 0; i < size; i++) {
        data[i] = (unsigned char)(i * 7);
    }
    samples_t lat = {0};
    uint64_t next = 1;
    int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
    int64_t t = start;
    while (t < end) {
        for (size_t i = 0; i < batch; i++) {
            es[i] = (craft_log_t){.index = next + i,
                                  .term = 1,
                                  .type = CRAFT_LOG_COMMAND,
                                  .data = data,
                                  .len = size,
                                  .appended_at_ns = t};
        }
        rv = l->store_logs(l->ctx, es, batch);
        if (rv != 0) {
            fprintf(stderr, "store_logs: %s\n", craft_strerror(rv));
            exit(1);
        }
        next += batch;
        int64_t t2 = now_ns();
        add(&lat, t2 - t);
        t = t2;
    }
    double secs = (double)(t - start) / 1e9;
    double entries = (double)(next - 1);
    printf("{\"bench\":\"sqlite_store_logs\",\"durability\":\"%s\","
           "\"batch\":%zu,\"entry_bytes\":%zu,\"batches\":%zu,"
           "\"entries_per_s\":%.0f,\"mb_per_s\":%.2f,\"p50_us\":%.1f,"
           "\"p99_us\":%.1f}\n",
           mode == CRAFT_SQLITE_DURABILITY_FULL ? "full" : "normal", batch,
           size, lat.n, entries / secs, entries * (double)size / secs / 1e6,
           pct_us(&lat, 0.5), pct_us(&lat, 0.99));
    fflush(stdout);
    l->close(l->ctx);
    s->close(s->ctx);
    remove_db(path);
    free(es);
    free(data);
    free(lat.v);
}

/* ---- reads ---- */

enum { READ_ENTRIES = 65536, READ_RANGE = 64, WRITER_BATCH = 16 };

typedef struct writer {
    craft_log_store_t *l;
    size_t size;
    atomic_bool stop;
    uint64_t next;
    uint64_t batches;
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    unsigned char *data = calloc(1, w->size);
    craft_log_t es[WRITER_BATCH];
    if (data == NULL) {
        perror("calloc");
        exit(1);
    }
    while (!atomic_load(&w->stop)) {
        for (size_t i = 0; i < WRITER_BATCH; i++) {
            es[i] = (craft_log_t){.index = w->next + i,
                                  .term = 1,
                                  .type = CRAFT_LOG_COMMAND,
                                  .data = data,
                                  .len = w->size};
        }
        int rv = w->l->store_logs(w->l->ctx, es, WRITER_BATCH);
        if (rv != 0) {
            fprintf(stderr, "store_logs: %s\n", craft_strerror(rv));
            exit(1);
        }
        w->next += WRITER_BATCH;
        w->batches++;
    }
    free(data);
    return NULL;
}

/* Reads one range [lo, lo + READ_RANGE) with get_log calls or one get_logs;
 * checks what came back and frees it. */
static void read_range(craft_log_store_t *l, bool ranged, uint64_t lo,
                       craft_log_t *out)
{
    size_t n = 0;
    int rv = 0;
    if (ranged) {
        rv = l->get_logs(l->ctx, lo, READ_RANGE, SIZE_MAX, out, &n);
    } else {
        for (; n < READ_RANGE && rv == 0; n++) {
            rv = l->get_log(l->ctx, lo + n, &out[n]);
        }
    }
    if (rv != 0 || n != READ_RANGE) {
        fprintf(stderr, "%s(%llu): %s, %zu entries\n",
                ranged ? "get_logs" : "get_log", (unsigned long long)lo,
                craft_strerror(rv), n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        if (out[i].index != lo + i) {
            fprintf(stderr, "wrong entry %llu at %llu\n",
                    (unsigned long long)out[i].index,
                    (unsigned long long)(lo + i));
            exit(1);
        }
        craft_log_release(&out[i]);
    }
}

static void bench_read(const char *dir, size_t size, double seconds,
                       bool ranged, bool with_writer)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/store_bench_read.db", dir);
    remove_db(path);
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    o.durability = CRAFT_SQLITE_DURABILITY_NORMAL; /* a quick fill */
    craft_log_store_t *l;
    craft_stable_store_t *s;
    int rv = craft_sqlite_open(path, &o, &l, &s);
    if (rv != 0) {
        fprintf(stderr, "open %s: %s\n", path, craft_strerror(rv));
        exit(1);
    }
    unsigned char *data = malloc(size);
    craft_log_t *es = calloc(1024, sizeof *es);
    if (data == NULL || es == NULL) {
        perror("malloc");
        exit(1);
    }
    for (size_t i = 0; i < size; i++) {
        data[i] = (unsigned char)(i * 7);
    }
    for (uint64_t next = 1; next <= READ_ENTRIES; next += 1024) {
        for (size_t i = 0; i < 1024; i++) {
            es[i] = (craft_log_t){.index = next + i,
                                  .term = 1,
                                  .type = CRAFT_LOG_COMMAND,
                                  .data = data,
                                  .len = size};
        }
        if ((rv = l->store_logs(l->ctx, es, 1024)) != 0) {
            fprintf(stderr, "store_logs: %s\n", craft_strerror(rv));
            exit(1);
        }
    }
    l->close(l->ctx);
    s->close(s->ctx);
    o.durability = CRAFT_SQLITE_DURABILITY_FULL;
    if ((rv = craft_sqlite_open(path, &o, &l, &s)) != 0) {
        fprintf(stderr, "reopen %s: %s\n", path, craft_strerror(rv));
        exit(1);
    }
    if (ranged && l->get_logs == NULL) {
        fprintf(stderr, "the sqlite store does not offer get_logs\n");
        exit(1);
    }

    writer_t w = {.l = l, .size = size, .next = READ_ENTRIES + 1};
    atomic_init(&w.stop, false);
    pthread_t th;
    if (with_writer && pthread_create(&th, NULL, writer_main, &w) != 0) {
        perror("pthread_create");
        exit(1);
    }
    craft_log_t out[READ_RANGE];
    samples_t lat = {0};
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    uint64_t ranges = 0;
    int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
    int64_t t = start;
    while (t < end) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t lo = 1 + (rng >> 33) % (READ_ENTRIES - READ_RANGE + 1);
        read_range(l, ranged, lo, out);
        ranges++;
        int64_t t2 = now_ns();
        add(&lat, t2 - t);
        t = t2;
    }
    if (with_writer) {
        atomic_store(&w.stop, true);
        pthread_join(th, NULL);
    }
    double secs = (double)(t - start) / 1e9;
    double entries = (double)ranges * READ_RANGE;
    printf("{\"bench\":\"sqlite_read\",\"method\":\"%s\",\"range\":%d,"
           "\"entry_bytes\":%zu,\"writer\":\"%s\",\"ranges\":%llu,"
           "\"entries_per_s\":%.0f,\"mb_per_s\":%.2f,\"p50_us\":%.1f,"
           "\"p99_us\":%.1f,\"writer_entries_per_s\":%.0f}\n",
           ranged ? "get_logs" : "get_log", READ_RANGE, size,
           with_writer ? "full_batch16" : "none", (unsigned long long)ranges,
           entries / secs, entries * (double)size / secs / 1e6,
           pct_us(&lat, 0.5), pct_us(&lat, 0.99),
           (double)(w.batches * WRITER_BATCH) / secs);
    fflush(stdout);
    l->close(l->ctx);
    s->close(s->ctx);
    remove_db(path);
    free(es);
    free(data);
    free(lat.v);
}

int main(int argc, char **argv)
{
    const char *dir = ".";
    double seconds = 2;
    size_t size = 256;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            size = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc &&
                   (strcmp(argv[i + 1], "write") == 0 ||
                    strcmp(argv[i + 1], "read") == 0)) {
            only = argv[++i];
        } else {
            fprintf(stderr,
                    "usage: %s [--dir DIR] [--seconds S] [--size BYTES] "
                    "[--only write|read]\n",
                    argv[0]);
            return 2;
        }
    }
    if (seconds <= 0 || size == 0) {
        fprintf(stderr, "--seconds and --size must be positive\n");
        return 2;
    }
    if (only == NULL || strcmp(only, "write") == 0) {
        bench_fdatasync(dir, seconds);
        static const craft_sqlite_durability_t modes[] = {
            CRAFT_SQLITE_DURABILITY_FULL, CRAFT_SQLITE_DURABILITY_NORMAL};
        static const size_t batches[] = {1, 16, 64};
        for (size_t m = 0; m < 2; m++) {
            for (size_t b = 0; b < 3; b++) {
                bench_store(dir, modes[m], batches[b], size, seconds);
            }
        }
    }
    if (only == NULL || strcmp(only, "read") == 0) {
        for (int writer = 0; writer < 2; writer++) {
            bench_read(dir, size, seconds, false, writer);
            bench_read(dir, size, seconds, true, writer);
        }
    }
    return 0;
}
