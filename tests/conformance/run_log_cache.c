/* The LogStore conformance suite on the log cache, in front of the sqlite
 * store: a tiny cache (constant eviction and slot reuse), a large one (every
 * entry cached), and one over a backing store without the commit-tracking
 * extension (the cache must then not offer it either) nor get_logs (the
 * cache's get_logs then loops over the backing get_log). The StableStore
 * suite runs once, on the stable store paired with the cache. */
#include <stdio.h>
#include <stdlib.h>

#if __has_include("conformance.h")
#include "conformance.h"

#include <dirent.h>
#include <string.h>
#include <unistd.h>

#include "craft/log_cache.h"
#include "craft/sqlite.h"

typedef struct cache_factory_arg {
    const char *dir;
    size_t capacity;
    bool hide_commit_tracking;
    bool hide_get_logs; /* the cache then loops over the backing get_log */
    unsigned seq;
    char path[512];
} cache_factory_arg_t;

/* The suite closes the log store it was given; the cache leaves its backing
 * store open by contract, so the runner hands out a log store owning both. */
typedef struct owned {
    craft_log_store_t pub;
    craft_log_store_t *cache;
    craft_log_store_t *backing;
    craft_log_store_t hidden; /* backing without some optional methods */
} owned_t;

#define CACHE(ctx) (((owned_t *)(ctx))->cache)

static int o_first(void *ctx, uint64_t *i)
{
    return CACHE(ctx)->first_index(CACHE(ctx)->ctx, i);
}
static int o_last(void *ctx, uint64_t *i)
{
    return CACHE(ctx)->last_index(CACHE(ctx)->ctx, i);
}
static int o_get(void *ctx, uint64_t i, craft_log_t *out)
{
    return CACHE(ctx)->get_log(CACHE(ctx)->ctx, i, out);
}
static int o_get_logs(void *ctx, uint64_t lo, size_t max_n, size_t max_bytes,
                      craft_log_t *out, size_t *n)
{
    return CACHE(ctx)->get_logs(CACHE(ctx)->ctx, lo, max_n, max_bytes, out, n);
}
static int o_store(void *ctx, const craft_log_t *l, size_t n)
{
    return CACHE(ctx)->store_logs(CACHE(ctx)->ctx, l, n);
}
static int o_delete(void *ctx, uint64_t min, uint64_t max)
{
    return CACHE(ctx)->delete_range(CACHE(ctx)->ctx, min, max);
}
static int o_stage(void *ctx, uint64_t i)
{
    return CACHE(ctx)->stage_commit_index(CACHE(ctx)->ctx, i);
}
static int o_get_commit(void *ctx, uint64_t *i)
{
    return CACHE(ctx)->get_commit_index(CACHE(ctx)->ctx, i);
}
static void o_close(void *ctx)
{
    owned_t *o = ctx;
    o->cache->close(o->cache->ctx);
    o->backing->close(o->backing->ctx); /* still usable after cache close */
    free(o);
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    if (d != NULL) {
        closedir(d);
    }
    rmdir(dir);
}

static void remove_files(const char *path)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    char p[600];
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

static int f_reopen(void *arg, craft_log_store_t **log,
                    craft_stable_store_t **stable)
{
    cache_factory_arg_t *a = arg;
    craft_sqlite_options_t so;
    craft_sqlite_options_default(&so);
    so.durability = CRAFT_SQLITE_DURABILITY_NORMAL;
    owned_t *o = calloc(1, sizeof *o);
    if (o == NULL) {
        return CRAFT_ENOMEM;
    }
    int rv = craft_sqlite_open(a->path, &so, &o->backing, stable);
    if (rv != 0) {
        free(o);
        return rv;
    }
    craft_log_store_t *backing = o->backing;
    o->hidden = *o->backing;
    if (a->hide_commit_tracking) {
        o->hidden.stage_commit_index = NULL;
        o->hidden.get_commit_index = NULL;
        backing = &o->hidden;
    }
    if (a->hide_get_logs) {
        o->hidden.get_logs = NULL;
        backing = &o->hidden;
    }
    rv = craft_log_cache_new(a->capacity, backing, &o->cache);
    if (rv != 0) {
        o->backing->close(o->backing->ctx);
        (*stable)->close((*stable)->ctx);
        free(o);
        return rv;
    }
    o->pub = (craft_log_store_t){
        .ctx = o,
        .first_index = o_first,
        .last_index = o_last,
        .get_log = o_get,
        .store_logs = o_store,
        .delete_range = o_delete,
        .stage_commit_index = o->cache->stage_commit_index ? o_stage : NULL,
        .get_commit_index = o->cache->get_commit_index ? o_get_commit : NULL,
        .get_logs = o->cache->get_logs ? o_get_logs : NULL,
        .close = o_close,
    };
    *log = &o->pub;
    return 0;
}

static int f_open(void *arg, craft_log_store_t **log,
                  craft_stable_store_t **stable)
{
    cache_factory_arg_t *a = arg;
    snprintf(a->path, sizeof a->path, "%s/cache-%zu-%d-%u.db", a->dir,
             a->capacity, (int)getpid(), ++a->seq);
    remove_files(a->path);
    return f_reopen(arg, log, stable);
}

static void f_destroy(void *arg)
{
    cache_factory_arg_t *a = arg;
    remove_files(a->path);
}

static int run(const char *name, cache_factory_arg_t *a, bool with_stable)
{
    craft_conformance_store_factory_t f = {
        .name = name,
        .arg = a,
        .open = f_open,
        .reopen = f_reopen,
        .destroy = f_destroy,
    };
    SRunner *sr = srunner_create(craft_conformance_log_store_suite(&f));
    if (with_stable) {
        srunner_add_suite(sr, craft_conformance_stable_store_suite(&f));
    }
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/craft-conf-cache-XXXXXX",
             base != NULL ? base : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    cache_factory_arg_t tiny = {.dir = dir, .capacity = 4};
    cache_factory_arg_t large = {.dir = dir, .capacity = 16384};
    cache_factory_arg_t plain = {.dir = dir, .capacity = 16,
                                 .hide_commit_tracking = true,
                                 .hide_get_logs = true};
    int failed = run("log cache (capacity 4)", &tiny, true);
    failed += run("log cache (capacity 16384)", &large, false);
    failed += run("log cache (no commit tracking, no get_logs)", &plain,
                  false);
    remove_dir(dir); /* a failed test leaves its files (no teardown) */
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#else /* the conformance suite is not in this tree */
int main(void)
{
    fprintf(stderr, "conformance suite (conformance.h) not present: skipped\n");
    return 77;
}
#endif
