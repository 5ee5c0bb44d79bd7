/* File snapshot store (hashicorp's FileSnapshotStore, file_snapshot.go).
 * Layout and format: include/craft/file_snapshot.h. */
#include "craft/file_snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/logger.h"
#include "stores/crc64.h"
#include "stores/file_snapshot_meta.h"
#include "stores/snapshot_name.h"

#define SNAPSHOTS_DIR "snapshots"
#define STATE_FILE "state.bin"
#define META_FILE "meta.json"
#define TMP_SUFFIX ".tmp"
/* A snapshot being deleted; ends in TMP_SUFFIX on purpose. */
#define REAP_SUFFIX ".reap.tmp"
#define PERM_TEST_FILE "perm.test"
/* Larger meta.json files are rejected as corrupt rather than read. */
#define META_MAX_BYTES (16 * 1024 * 1024)
#define SINK_BUF_SIZE (64 * 1024)
/* Attempts at finding an unused snapshot name before giving up. */
#define NAME_ATTEMPTS 100

typedef struct file_store {
    craft_snapshot_store_t iface;
    craft__logger_t log; /* craft_file_snapshot_options_t.logger */
    /* Serialises name choice, list, open and close's rename + reap, so a
     * snapshot is never deleted between reading its meta and its data. */
    pthread_mutex_t mu;
    char *path; /* <dir>/snapshots */
    int retain;
    uint64_t last_ms; /* for craft__snapshot_name; under mu */
} file_store_t;

typedef struct file_sink {
    craft_snapshot_sink_t iface;
    file_store_t *store;
    craft_snapshot_meta_t meta;
    char *tmp_path;   /* <path>/<id>.tmp */
    char *final_path; /* <path>/<id> */
    int fd;           /* state.bin, -1 once closed */
    uint64_t crc;
    uint64_t size;
    unsigned char *buf;
    size_t buf_len;
    int err; /* first write error; sticky */
} file_sink_t;

typedef struct file_reader {
    craft_reader_t iface;
    craft__logger_t log; /* a copy: readers outlive the store */
    int fd;
    char *id;
    uint64_t want_size;
    uint64_t want_crc;
    uint64_t got_size;
    uint64_t crc;
    bool done;
    int err; /* sticky */
} file_reader_t;

/* One snapshot found on disk. */
typedef struct found {
    craft_snapshot_meta_t *meta;
} found_t;

/* Messages go through the library's logger, component "snapshot". */
#define SNAP_LOG(lg, level, ...) craft__log((lg), (level), "snapshot", __VA_ARGS__)

static char *path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + 1 + lb + 1);
    if (p != NULL) {
        memcpy(p, a, la);
        p[la] = '/';
        memcpy(p + la + 1, b, lb + 1);
    }
    return p;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* ------------------------------------------------------------------------ */
/* File helpers                                                              */
/* ------------------------------------------------------------------------ */

static int write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rv;
    if (fd < 0) {
        return -1;
    }
    rv = fsync(fd);
    if (rv != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return close(fd);
}

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag == FTW_DP ? rmdir(path) : unlink(path)) {
        return errno == ENOENT ? 0 : -1;
    }
    return 0;
}

/* rm -rf; a missing path is fine. Returns 0 or -1 with errno. */
static int remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        return errno == ENOENT ? 0 : -1;
    }
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* mkdir -p with mode 0755. */
static int mkdir_all(const char *path)
{
    char *p = strdup(path);
    int rv = 0;
    if (p == NULL) {
        errno = ENOMEM;
        return -1;
    }
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                rv = -1;
                break;
            }
            *s = c;
            if (c == '\0') {
                break;
            }
        }
    }
    if (rv == 0) {
        struct stat sb;
        if (stat(path, &sb) != 0) {
            rv = -1;
        } else if (!S_ISDIR(sb.st_mode)) {
            errno = ENOTDIR;
            rv = -1;
        }
    }
    free(p);
    return rv;
}

/* Reads and parses <snap_dir>/meta.json. CRAFT_ENOTFOUND when it does not
 * exist. */
static int meta_read(const char *snap_dir, craft_snapshot_meta_t **out,
                     uint64_t *crc)
{
    char *path = path_join(snap_dir, META_FILE);
    char *text = NULL;
    struct stat sb;
    size_t got = 0;
    int fd, rv;

    if (path == NULL) {
        return CRAFT_ENOMEM;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rv = errno == ENOENT ? CRAFT_ENOTFOUND : CRAFT_EIO;
        goto err_after_path;
    }
    if (fstat(fd, &sb) != 0) {
        rv = CRAFT_EIO;
        goto err_after_open;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size > META_MAX_BYTES) {
        rv = CRAFT_ECORRUPT;
        goto err_after_open;
    }
    text = malloc((size_t)sb.st_size + 1);
    if (text == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_open;
    }
    /* Read up to one byte past the stat'ed size to notice growth. */
    for (;;) {
        ssize_t n = read(fd, text + got, (size_t)sb.st_size + 1 - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            rv = CRAFT_EIO;
            goto err_after_text;
        }
        if (n == 0) {
            break;
        }
        got += (size_t)n;
        if (got > (size_t)sb.st_size) {
            rv = CRAFT_ECORRUPT;
            goto err_after_text;
        }
    }
    rv = craft__snapshot_meta_decode(text, got, out, crc);
err_after_text:
    free(text);
err_after_open:
    close(fd);
err_after_path:
    free(path);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* Scanning the snapshots directory                                          */
/* ------------------------------------------------------------------------ */

/* Newest first: by term, then index, then id (hashicorp's snapMetaSlice). */
static int found_cmp(const void *a, const void *b)
{
    const craft_snapshot_meta_t *x = ((const found_t *)a)->meta;
    const craft_snapshot_meta_t *y = ((const found_t *)b)->meta;
    if (x->term != y->term) {
        return x->term > y->term ? -1 : 1;
    }
    if (x->index != y->index) {
        return x->index > y->index ? -1 : 1;
    }
    return -strcmp(x->id, y->id);
}

static void found_free(found_t *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        craft_snapshot_meta_free(f[i].meta);
    }
    free(f);
}

/* Checks one complete snapshot directory `name`: its meta parses, names it,
 * and state.bin exists with the recorded size. */
static int check_snapshot(file_store_t *st, const char *name,
                          craft_snapshot_meta_t **meta, uint64_t *crc)
{
    char *dir = path_join(st->path, name);
    char *state = NULL;
    struct stat sb;
    int rv;

    if (dir == NULL) {
        return CRAFT_ENOMEM;
    }
    rv = meta_read(dir, meta, crc);
    if (rv != 0) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_WARN,
                 "skipping snapshot with unreadable %s: dir=%s/%s error=%s", META_FILE,
                 st->path, name, craft_strerror(rv));
        goto out;
    }
    if (strcmp((*meta)->id, name) != 0) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_WARN,
                 "skipping snapshot whose id does not match its directory: dir=%s/%s",
                 st->path, name);
        rv = CRAFT_ECORRUPT;
        goto err_after_meta;
    }
    state = path_join(dir, STATE_FILE);
    if (state == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_meta;
    }
    if (stat(state, &sb) != 0 || !S_ISREG(sb.st_mode) ||
        sb.st_size != (*meta)->size) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_WARN,
                 "skipping snapshot with missing or short %s: dir=%s/%s", STATE_FILE,
                 st->path, name);
        rv = CRAFT_ECORRUPT;
        goto err_after_meta;
    }
    goto out;

err_after_meta:
    craft_snapshot_meta_free(*meta);
    *meta = NULL;
out:
    free(state);
    free(dir);
    return rv;
}

/* All complete, readable snapshots, newest first. Called under st->mu. */
static int scan(file_store_t *st, found_t **out, size_t *n_out)
{
    DIR *d = opendir(st->path);
    found_t *arr = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rv = 0;

    if (d == NULL) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                 "cannot read snapshot directory: dir=%s error=%s", st->path,
                 strerror(errno));
        return CRAFT_EIO;
    }
    while ((e = readdir(d)) != NULL) {
        craft_snapshot_meta_t *meta;
        struct stat sb;
        uint64_t crc;
        if (e->d_name[0] == '.' || has_suffix(e->d_name, TMP_SUFFIX)) {
            continue;
        }
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISDIR(sb.st_mode)) {
            continue;
        }
        rv = check_snapshot(st, e->d_name, &meta, &crc);
        if (rv == CRAFT_ENOMEM) {
            goto err;
        }
        if (rv != 0) {
            rv = 0;
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            found_t *na = realloc(arr, ncap * sizeof *na);
            if (na == NULL) {
                craft_snapshot_meta_free(meta);
                rv = CRAFT_ENOMEM;
                goto err;
            }
            arr = na;
            cap = ncap;
        }
        arr[n].meta = meta;
        n++;
    }
    closedir(d);
    if (n > 1) {
        qsort(arr, n, sizeof *arr, found_cmp);
    }
    *out = arr;
    *n_out = n;
    return 0;
err:
    closedir(d);
    found_free(arr, n);
    return rv;
}

/* Deletes all but the `retain` newest snapshots. Called under st->mu. */
static int reap(file_store_t *st)
{
    found_t *arr;
    size_t n;
    int rv = scan(st, &arr, &n);
    if (rv != 0) {
        return rv;
    }
    for (size_t i = (size_t)st->retain; i < n; i++) {
        char *dir = path_join(st->path, arr[i].meta->id);
        char *doomed = NULL;
        if (dir == NULL || asprintf(&doomed, "%s%s", dir, REAP_SUFFIX) < 0) {
            free(dir);
            rv = CRAFT_ENOMEM;
            break;
        }
        SNAP_LOG(&st->log, CRAFT_LEVEL_INFO, "reaping snapshot: path=%s", dir);
        /* Renamed out of sight first, so a crash halfway through the
         * removal leaves a .tmp directory (removed at the next open), not a
         * half-deleted snapshot. */
        if (rename(dir, doomed) != 0 || remove_tree(doomed) != 0) {
            SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                     "failed to reap snapshot: path=%s error=%s", dir, strerror(errno));
            rv = CRAFT_EIO;
        }
        free(doomed);
        free(dir);
    }
    found_free(arr, n);
    return rv;
}

/* Removes `.tmp` directories left by snapshots that were never closed. */
static int remove_stale_tmp(file_store_t *st)
{
    DIR *d = opendir(st->path);
    struct dirent *e;
    int rv = 0;
    if (d == NULL) {
        return CRAFT_EIO;
    }
    while ((e = readdir(d)) != NULL) {
        char *p;
        if (e->d_name[0] == '.' || !has_suffix(e->d_name, TMP_SUFFIX)) {
            continue;
        }
        p = path_join(st->path, e->d_name);
        if (p == NULL) {
            rv = CRAFT_ENOMEM;
            break;
        }
        SNAP_LOG(&st->log, CRAFT_LEVEL_INFO, "removing incomplete snapshot: path=%s",
                 p);
        if (remove_tree(p) != 0) {
            SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                     "failed to remove incomplete snapshot: path=%s error=%s", p,
                     strerror(errno));
            rv = CRAFT_EIO;
        }
        free(p);
    }
    closedir(d);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* Sink                                                                      */
/* ------------------------------------------------------------------------ */

static void sink_free(file_sink_t *k)
{
    if (k->fd >= 0) {
        close(k->fd);
    }
    free(k->meta.id);
    craft_configuration_free(&k->meta.configuration);
    free(k->tmp_path);
    free(k->final_path);
    free(k->buf);
    free(k);
}

static void sink_fail(file_sink_t *k, const char *what)
{
    SNAP_LOG(&k->store->log, CRAFT_LEVEL_ERROR, "%s failed: path=%s error=%s", what,
             k->tmp_path, strerror(errno));
    k->err = CRAFT_EIO;
}

static int sink_flush(file_sink_t *k)
{
    if (k->buf_len > 0) {
        if (write_all(k->fd, k->buf, k->buf_len) != 0) {
            sink_fail(k, "writing " STATE_FILE);
            return k->err;
        }
        k->buf_len = 0;
    }
    return 0;
}

static int sink_write(void *ctx, const void *buf, size_t len)
{
    file_sink_t *k = ctx;
    if (k->err != 0) {
        return k->err;
    }
    if (len > (uint64_t)INT64_MAX - k->size) {
        k->err = CRAFT_EINVAL;
        return k->err;
    }
    k->crc = craft__crc64(k->crc, buf, len);
    k->size += len;
    if (k->buf_len + len <= SINK_BUF_SIZE) {
        memcpy(k->buf + k->buf_len, buf, len);
        k->buf_len += len;
        return 0;
    }
    if (sink_flush(k) != 0) {
        return k->err;
    }
    if (len >= SINK_BUF_SIZE) {
        if (write_all(k->fd, buf, len) != 0) {
            sink_fail(k, "writing " STATE_FILE);
        }
        return k->err;
    }
    memcpy(k->buf, buf, len);
    k->buf_len = len;
    return 0;
}

static int write_meta(file_sink_t *k)
{
    char *path = path_join(k->tmp_path, META_FILE);
    char *text;
    size_t len;
    int fd, rv;

    if (path == NULL) {
        return CRAFT_ENOMEM;
    }
    rv = craft__snapshot_meta_encode(&k->meta, k->crc, &text, &len);
    if (rv != 0) {
        goto err_after_path;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        sink_fail(k, "creating " META_FILE);
        rv = k->err;
        goto err_after_text;
    }
    if (write_all(fd, text, len) != 0) {
        sink_fail(k, "writing " META_FILE);
    } else if (fsync(fd) != 0) {
        sink_fail(k, "syncing " META_FILE);
    }
    if (close(fd) != 0 && k->err == 0) {
        sink_fail(k, "closing " META_FILE);
    }
    rv = k->err;
err_after_text:
    free(text);
err_after_path:
    free(path);
    return rv;
}

/* Makes the snapshot durable, then visible: data and meta synced, the
 * directory synced and renamed, the parent synced (hashicorp's
 * FileSnapshotSink.Close, plus the parent fsync it lacks). */
static int sink_close(void *ctx)
{
    file_sink_t *k = ctx;
    file_store_t *st = k->store;
    int rv;

    if (k->err != 0 || sink_flush(k) != 0) {
        goto err;
    }
    if (fsync(k->fd) != 0) {
        sink_fail(k, "syncing " STATE_FILE);
        goto err;
    }
    rv = close(k->fd);
    k->fd = -1;
    if (rv != 0) {
        sink_fail(k, "closing " STATE_FILE);
        goto err;
    }
    k->meta.size = (int64_t)k->size;
    if ((rv = write_meta(k)) != 0) {
        k->err = rv;
        goto err;
    }
    if (fsync_dir(k->tmp_path) != 0) {
        sink_fail(k, "syncing snapshot directory");
        goto err;
    }

    pthread_mutex_lock(&st->mu);
    if (rename(k->tmp_path, k->final_path) != 0) {
        sink_fail(k, "renaming snapshot directory");
        pthread_mutex_unlock(&st->mu);
        goto err;
    }
    if (fsync_dir(st->path) != 0) {
        /* Visible but perhaps not durable: withdraw it rather than report
         * failure for a snapshot that list would show. */
        sink_fail(k, "syncing snapshots directory");
        if (remove_tree(k->final_path) != 0) {
            SNAP_LOG(&k->store->log, CRAFT_LEVEL_ERROR,
                     "failed to remove snapshot: path=%s error=%s", k->final_path,
                     strerror(errno));
        }
        pthread_mutex_unlock(&st->mu);
        goto err;
    }
    rv = reap(st);
    pthread_mutex_unlock(&st->mu);
    if (rv != 0) {
        SNAP_LOG(&k->store->log, CRAFT_LEVEL_WARN,
                 "failed to reap old snapshots: error=%s", craft_strerror(rv));
    }
    sink_free(k);
    return 0;

err:
    rv = k->err != 0 ? k->err : CRAFT_EIO;
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    if (remove_tree(k->tmp_path) != 0) {
        SNAP_LOG(&k->store->log, CRAFT_LEVEL_ERROR,
                 "failed to remove incomplete snapshot: path=%s error=%s", k->tmp_path,
                 strerror(errno));
    }
    sink_free(k);
    return rv;
}

static int sink_cancel(void *ctx)
{
    file_sink_t *k = ctx;
    int rv = 0;
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    if (remove_tree(k->tmp_path) != 0) {
        SNAP_LOG(&k->store->log, CRAFT_LEVEL_ERROR,
                 "failed to remove cancelled snapshot: path=%s error=%s", k->tmp_path,
                 strerror(errno));
        rv = CRAFT_EIO;
    }
    sink_free(k);
    return rv;
}

static const char *sink_id(void *ctx)
{
    file_sink_t *k = ctx;
    return k->meta.id;
}

/* Picks a name no snapshot (finished or not) uses and creates its
 * temporary directory. */
static int sink_make_dir(file_store_t *st, file_sink_t *k, uint64_t term,
                         uint64_t index)
{
    char name[CRAFT__SNAPSHOT_NAME_MAX + sizeof TMP_SUFFIX];
    for (int attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
        struct stat sb;
        pthread_mutex_lock(&st->mu);
        craft__snapshot_name(name, term, index, &st->last_ms);
        pthread_mutex_unlock(&st->mu);
        free(k->final_path);
        free(k->tmp_path);
        free(k->meta.id);
        k->meta.id = strdup(name);
        k->final_path = path_join(st->path, name);
        strcat(name, TMP_SUFFIX);
        k->tmp_path = path_join(st->path, name);
        if (k->meta.id == NULL || k->final_path == NULL || k->tmp_path == NULL) {
            return CRAFT_ENOMEM;
        }
        if (lstat(k->final_path, &sb) == 0) {
            continue; /* another process's snapshot from the same ms */
        }
        if (mkdir(k->tmp_path, 0755) == 0) {
            return 0;
        }
        if (errno != EEXIST) {
            SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                     "failed to create snapshot directory: path=%s error=%s",
                     k->tmp_path, strerror(errno));
            return CRAFT_EIO;
        }
    }
    SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR, "no free snapshot name: dir=%s", st->path);
    return CRAFT_EIO;
}

/* ------------------------------------------------------------------------ */
/* Reader                                                                    */
/* ------------------------------------------------------------------------ */

static int reader_fail(file_reader_t *r, int err, const char *why)
{
    SNAP_LOG(&r->log, CRAFT_LEVEL_ERROR,
             "snapshot %s: id=%s read=%" PRIu64 " size=%" PRIu64, why, r->id,
             r->got_size, r->want_size);
    r->err = err;
    return err;
}

/* Reads never cross the recorded size, so the CRC is checked on the read
 * that delivers the last byte, and callers reading exactly `size` bytes
 * still learn about corruption. */
static int64_t reader_read(void *ctx, void *buf, size_t len)
{
    file_reader_t *r = ctx;
    ssize_t n;

    if (r->err != 0) {
        return r->err;
    }
    if (r->done || len == 0) {
        return 0;
    }
    if (r->got_size < r->want_size) {
        uint64_t left = r->want_size - r->got_size;
        if (len > left) {
            len = (size_t)left;
        }
        if (len > SSIZE_MAX) {
            len = SSIZE_MAX;
        }
        do {
            n = read(r->fd, buf, len);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            return reader_fail(r, CRAFT_EIO, "read failed");
        }
        if (n == 0) {
            return reader_fail(r, CRAFT_ECORRUPT, "data shorter than its meta says");
        }
        r->crc = craft__crc64(r->crc, buf, (size_t)n);
        r->got_size += (uint64_t)n;
        if (r->got_size == r->want_size && r->crc != r->want_crc) {
            return reader_fail(r, CRAFT_ECORRUPT, "CRC mismatch");
        }
        return n;
    }
    /* Every byte delivered: the data must end here. */
    if (r->crc != r->want_crc) {
        return reader_fail(r, CRAFT_ECORRUPT, "CRC mismatch");
    }
    {
        unsigned char extra;
        do {
            n = read(r->fd, &extra, 1);
        } while (n < 0 && errno == EINTR);
    }
    if (n < 0) {
        return reader_fail(r, CRAFT_EIO, "read failed");
    }
    if (n > 0) {
        return reader_fail(r, CRAFT_ECORRUPT, "data longer than its meta says");
    }
    r->done = true;
    return 0;
}

static void reader_close(void *ctx)
{
    file_reader_t *r = ctx;
    close(r->fd);
    free(r->id);
    free(r);
}

/* ------------------------------------------------------------------------ */
/* Store                                                                     */
/* ------------------------------------------------------------------------ */

static int store_create(void *ctx, int version, uint64_t index, uint64_t term,
                        const craft_configuration_t *configuration,
                        uint64_t configuration_index,
                        craft_snapshot_sink_t **sink)
{
    file_store_t *st = ctx;
    file_sink_t *k;
    char *state;
    int rv;

    if (sink == NULL || version < 0) {
        return CRAFT_EINVAL;
    }
    k = calloc(1, sizeof *k);
    if (k == NULL) {
        return CRAFT_ENOMEM;
    }
    k->fd = -1;
    k->store = st;
    k->buf = malloc(SINK_BUF_SIZE);
    if (k->buf == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_sink;
    }
    if (configuration != NULL &&
        (rv = craft_configuration_copy(&k->meta.configuration, configuration)) != 0) {
        goto err_after_sink;
    }
    k->meta.version = version;
    k->meta.index = index;
    k->meta.term = term;
    k->meta.configuration_index = configuration_index;

    rv = sink_make_dir(st, k, term, index);
    if (rv != 0) {
        goto err_after_sink;
    }
    state = path_join(k->tmp_path, STATE_FILE);
    if (state == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_dir;
    }
    k->fd = open(state, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    free(state);
    if (k->fd < 0) {
        sink_fail(k, "creating " STATE_FILE);
        rv = k->err;
        goto err_after_dir;
    }
    k->iface.ctx = k;
    k->iface.write = sink_write;
    k->iface.close = sink_close;
    k->iface.cancel = sink_cancel;
    k->iface.id = sink_id;
    *sink = &k->iface;
    return 0;

err_after_dir:
    remove_tree(k->tmp_path);
err_after_sink:
    sink_free(k);
    return rv;
}

static int store_list(void *ctx, craft_snapshot_meta_t ***metas, size_t *n)
{
    file_store_t *st = ctx;
    craft_snapshot_meta_t **arr = NULL;
    found_t *found;
    size_t nf, keep;
    int rv;

    if (metas == NULL || n == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&st->mu);
    rv = scan(st, &found, &nf);
    pthread_mutex_unlock(&st->mu);
    if (rv != 0) {
        return rv;
    }
    /* hashicorp's List returns at most `retain` snapshots. */
    keep = nf < (size_t)st->retain ? nf : (size_t)st->retain;
    if (keep > 0) {
        arr = malloc(keep * sizeof *arr);
        if (arr == NULL) {
            found_free(found, nf);
            return CRAFT_ENOMEM;
        }
        for (size_t i = 0; i < keep; i++) {
            arr[i] = found[i].meta;
            found[i].meta = NULL;
        }
    }
    found_free(found, nf);
    *metas = arr;
    *n = keep;
    return 0;
}

static bool id_valid(const char *id)
{
    return id != NULL && id[0] != '\0' && strchr(id, '/') == NULL &&
           strstr(id, "..") == NULL && strlen(id) < NAME_MAX;
}

static int store_open(void *ctx, const char *id, craft_snapshot_meta_t **meta,
                      craft_reader_t **reader)
{
    file_store_t *st = ctx;
    craft_snapshot_meta_t *m = NULL;
    file_reader_t *r;
    char *dir, *state = NULL;
    struct stat sb;
    uint64_t crc;
    int rv;

    if (meta == NULL || reader == NULL || !id_valid(id)) {
        return CRAFT_EINVAL;
    }
    if (strcmp(id, ".") == 0 || has_suffix(id, TMP_SUFFIX)) {
        return CRAFT_ENOTFOUND; /* never an incomplete snapshot */
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        return CRAFT_ENOMEM;
    }
    r->fd = -1;
    r->log = st->log;
    r->id = strdup(id);
    dir = path_join(st->path, id);
    if (r->id == NULL || dir == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_reader;
    }

    pthread_mutex_lock(&st->mu);
    rv = meta_read(dir, &m, &crc);
    if (rv != 0) {
        if (rv != CRAFT_ENOTFOUND) {
            SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                     "failed to read snapshot meta: id=%s error=%s", id,
                     craft_strerror(rv));
        }
        goto err_after_lock;
    }
    if (strcmp(m->id, id) != 0) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                 "snapshot meta names another snapshot: id=%s meta_id=%s", id, m->id);
        rv = CRAFT_ECORRUPT;
        goto err_after_lock;
    }
    state = path_join(dir, STATE_FILE);
    if (state == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_lock;
    }
    r->fd = open(state, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) {
        rv = errno == ENOENT ? CRAFT_ECORRUPT : CRAFT_EIO;
        SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                 "failed to open snapshot data: path=%s error=%s", state,
                 strerror(errno));
        goto err_after_lock;
    }
    pthread_mutex_unlock(&st->mu);

    if (fstat(r->fd, &sb) != 0) {
        rv = CRAFT_EIO;
        goto err_after_meta;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size != m->size) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                 "snapshot data size mismatch: id=%s size=%" PRId64
                 " meta_size=%" PRId64,
                 id, (int64_t)sb.st_size, m->size);
        rv = CRAFT_ECORRUPT;
        goto err_after_meta;
    }
    r->want_size = (uint64_t)m->size;
    r->want_crc = crc;
    r->iface.ctx = r;
    r->iface.read = reader_read;
    r->iface.close = reader_close;
    free(state);
    free(dir);
    *meta = m;
    *reader = &r->iface;
    return 0;

err_after_lock:
    pthread_mutex_unlock(&st->mu);
err_after_meta:
    craft_snapshot_meta_free(m);
err_after_reader:
    if (r->fd >= 0) {
        close(r->fd);
    }
    free(state);
    free(dir);
    free(r->id);
    free(r);
    return rv;
}

static void store_close(void *ctx)
{
    file_store_t *st = ctx;
    pthread_mutex_destroy(&st->mu);
    free(st->path);
    free(st);
}

void craft_file_snapshot_options_default(craft_file_snapshot_options_t *o)
{
    memset(o, 0, sizeof *o);
}

/* hashicorp's NewFileSnapshotStore: create the directory, test that it is
 * writable (perm.test), and here also drop leftovers of interrupted
 * snapshots. */
int craft_file_snapshot_store_open(const char *dir,
                                   const craft_file_snapshot_options_t *opts,
                                   craft_snapshot_store_t **out)
{
    craft_file_snapshot_options_t o;
    file_store_t *st;
    char *perm;
    int fd, rv;

    if (opts != NULL) {
        o = *opts;
    } else {
        craft_file_snapshot_options_default(&o);
    }
    if (o.retain == 0) {
        o.retain = CRAFT_FILE_SNAPSHOT_RETAIN_DEFAULT;
    }
    if (dir == NULL || dir[0] == '\0' || o.retain < 1 || out == NULL) {
        return CRAFT_EINVAL;
    }
    st = calloc(1, sizeof *st);
    if (st == NULL) {
        return CRAFT_ENOMEM;
    }
    st->retain = o.retain;
    /* Without a logger, warnings and errors go to stderr (as the sqlite
     * store does). */
    st->log.fn = o.logger != NULL ? o.logger : craft__stderr_logger;
    st->log.ctx = o.logger_ctx;
    st->log.level = o.logger != NULL ? CRAFT_LEVEL_TRACE : CRAFT_LEVEL_WARN;
    st->log.prefix = NULL;
    st->path = path_join(dir, SNAPSHOTS_DIR);
    if (st->path == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_store;
    }
    if (mkdir_all(st->path) != 0) {
        rv = errno == ENOMEM ? CRAFT_ENOMEM : CRAFT_EIO;
        SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                 "cannot create snapshot directory: path=%s error=%s", st->path,
                 strerror(errno));
        goto err_after_store;
    }
    perm = path_join(st->path, PERM_TEST_FILE);
    if (perm == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_store;
    }
    fd = open(perm, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                 "snapshot directory is not writable: path=%s error=%s", st->path,
                 strerror(errno));
        free(perm);
        rv = CRAFT_EIO;
        goto err_after_store;
    }
    close(fd);
    if (unlink(perm) != 0) {
        SNAP_LOG(&st->log, CRAFT_LEVEL_ERROR,
                 "cannot remove permission test file: path=%s error=%s", perm,
                 strerror(errno));
        free(perm);
        rv = CRAFT_EIO;
        goto err_after_store;
    }
    free(perm);
    rv = remove_stale_tmp(st);
    if (rv != 0) {
        goto err_after_store;
    }
    if (pthread_mutex_init(&st->mu, NULL) != 0) {
        rv = CRAFT_ENOMEM;
        goto err_after_store;
    }
    st->iface.ctx = st;
    st->iface.create = store_create;
    st->iface.list = store_list;
    st->iface.open = store_open;
    st->iface.close = store_close;
    *out = &st->iface;
    return 0;

err_after_store:
    free(st->path);
    free(st);
    return rv;
}

int craft_file_snapshot_store_new(const char *dir, int retain,
                                  craft_snapshot_store_t **out)
{
    craft_file_snapshot_options_t o;
    if (retain < 1) {
        return CRAFT_EINVAL; /* 0 would mean "the default" to _open */
    }
    craft_file_snapshot_options_default(&o);
    o.retain = retain;
    return craft_file_snapshot_store_open(dir, &o, out);
}

int craft_file_snapshot_verify(craft_snapshot_store_t *store, const char *id)
{
    craft_snapshot_meta_t *meta;
    craft_reader_t *reader;
    unsigned char *buf;
    int64_t n;
    int rv;

    if (store == NULL || store->open != store_open) {
        return CRAFT_EINVAL;
    }
    buf = malloc(SINK_BUF_SIZE);
    if (buf == NULL) {
        return CRAFT_ENOMEM;
    }
    rv = store_open(store->ctx, id, &meta, &reader);
    if (rv != 0) {
        free(buf);
        return rv;
    }
    while ((n = reader->read(reader->ctx, buf, SINK_BUF_SIZE)) > 0) {
    }
    reader->close(reader->ctx);
    craft_snapshot_meta_free(meta);
    free(buf);
    return n < 0 ? (int)n : 0;
}
