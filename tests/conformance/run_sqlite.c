/* The LogStore and StableStore conformance suites on the sqlite store, once
 * per durability mode. */
#include <stdio.h>
#include <stdlib.h>

#if __has_include("conformance.h")
#include "conformance.h"

#include <dirent.h>
#include <string.h>
#include <unistd.h>

#include "craft/sqlite.h"

typedef struct sqlite_factory_arg {
    const char *dir;
    craft_sqlite_durability_t durability;
    unsigned seq;
    char path[512];
} sqlite_factory_arg_t;

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
    sqlite_factory_arg_t *a = arg;
    craft_sqlite_options_t o;
    craft_sqlite_options_default(&o);
    o.durability = a->durability;
    return craft_sqlite_open(a->path, &o, log, stable);
}

static int f_open(void *arg, craft_log_store_t **log,
                  craft_stable_store_t **stable)
{
    sqlite_factory_arg_t *a = arg;
    snprintf(a->path, sizeof a->path, "%s/store-%d-%d-%u.db", a->dir,
             (int)a->durability, (int)getpid(), ++a->seq);
    remove_files(a->path);
    return f_reopen(arg, log, stable);
}

static void f_destroy(void *arg)
{
    sqlite_factory_arg_t *a = arg;
    remove_files(a->path);
}

/* The suites keep one factory per suite kind, so each mode gets its own
 * runner, run before the next one is built. */
static int run_mode(const char *name, sqlite_factory_arg_t *a)
{
    craft_conformance_store_factory_t f = {
        .name = name,
        .arg = a,
        .open = f_open,
        .reopen = f_reopen,
        .destroy = f_destroy,
    };
    SRunner *sr = srunner_create(craft_conformance_log_store_suite(&f));
    srunner_add_suite(sr, craft_conformance_stable_store_suite(&f));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/craft-conf-sqlite-XXXXXX",
             base != NULL ? base : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    sqlite_factory_arg_t full = {.dir = dir,
                                 .durability = CRAFT_SQLITE_DURABILITY_FULL};
    sqlite_factory_arg_t normal = {.dir = dir,
                                   .durability = CRAFT_SQLITE_DURABILITY_NORMAL};
    int failed = run_mode("sqlite (durability full)", &full);
    failed += run_mode("sqlite (durability normal)", &normal);
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
