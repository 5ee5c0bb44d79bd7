/* The snapshot store conformance suite against the file snapshot store, and
 * the file store's own checks: corruption, crashes, bad input. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "craft/file_snapshot.h"
#include "craft/inmem.h"
#include "snapshot_conformance.h"
#include "stores/crc64.h"
#include "stores/file_snapshot_meta.h"

/* ------------------------------------------------------------------------ */
/* Temporary directories                                                     */
/* ------------------------------------------------------------------------ */

static char *make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/craft-snap-XXXXXX", base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    return strdup(tmpl);
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void rmrf(const char *path)
{
    if (path != NULL) {
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
}

/* ------------------------------------------------------------------------ */
/* Conformance factory                                                       */
/* ------------------------------------------------------------------------ */

typedef struct file_factory {
    int retain;
    char *dir;
} file_factory_t;

static int file_open(void *arg, craft_snapshot_store_t **out)
{
    file_factory_t *ff = arg;
    if (ff->dir != NULL) {
        rmrf(ff->dir);
        free(ff->dir);
    }
    ff->dir = make_tmpdir();
    return craft_file_snapshot_store_new(ff->dir, ff->retain, out);
}

static int file_reopen(void *arg, craft_snapshot_store_t **out)
{
    file_factory_t *ff = arg;
    return craft_file_snapshot_store_new(ff->dir, ff->retain, out);
}

static void file_destroy(void *arg)
{
    file_factory_t *ff = arg;
    rmrf(ff->dir);
    free(ff->dir);
    ff->dir = NULL;
}

/* ------------------------------------------------------------------------ */
/* Helpers for the file store's own tests                                    */
/* ------------------------------------------------------------------------ */

static char *dir; /* per test: a fresh temporary directory */

static void setup(void)
{
    dir = make_tmpdir();
}

static void teardown(void)
{
    rmrf(dir);
    free(dir);
    dir = NULL;
}

static const craft_server_t servers[] = {
    {CRAFT_VOTER, "a", "10.0.0.1:1"},
    {CRAFT_NONVOTER, "b \"q\"", "10.0.0.2:2"},
};
static const craft_configuration_t cfg = {2, (craft_server_t *)servers};

static craft_snapshot_store_t *store_new(int retain)
{
    craft_snapshot_store_t *s = NULL;
    int rv = craft_file_snapshot_store_new(dir, retain, &s);
    ck_assert_msg(rv == 0, "store: %s", craft_err_name(rv));
    return s;
}

static void fill(unsigned char *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (unsigned char)(i * 31 + seed * 7 + (i >> 8));
    }
}

/* A closed snapshot of `len` bytes of fill(seed); returns its id. */
static char *put(craft_snapshot_store_t *s, uint64_t term, uint64_t index,
                 size_t len, unsigned seed)
{
    craft_snapshot_sink_t *sink;
    unsigned char *buf = malloc(len + 1);
    char *id;
    ck_assert_ptr_nonnull(buf);
    fill(buf, len, seed);
    ck_assert_int_eq(s->create(s->ctx, 1, index, term, &cfg, 1, &sink), 0);
    id = strdup(sink->id(sink->ctx));
    ck_assert_int_eq(sink->write(sink->ctx, buf, len), 0);
    ck_assert_int_eq(sink->close(sink->ctx), 0);
    free(buf);
    return id;
}

static char *snap_path(const char *id, const char *file)
{
    char *p;
    ck_assert_int_ge(asprintf(&p, "%s/snapshots/%s%s%s", dir, id, file ? "/" : "",
                              file ? file : ""),
                     0);
    return p;
}

/* Names in dir/snapshots, sorted, joined by spaces. */
static char *entries(void)
{
    char *p, *out = calloc(1, 1);
    struct dirent **names;
    int n;
    ck_assert_int_ge(asprintf(&p, "%s/snapshots", dir), 0);
    n = scandir(p, &names, NULL, alphasort);
    ck_assert_int_ge(n, 0);
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.') {
            char *joined;
            ck_assert_int_ge(asprintf(&joined, "%s%s%s", out, out[0] ? " " : "",
                                      names[i]->d_name),
                             0);
            free(out);
            out = joined;
        }
        free(names[i]);
    }
    free(names);
    free(p);
    return out;
}

static size_t list_count(craft_snapshot_store_t *s)
{
    craft_snapshot_meta_t **m;
    size_t n;
    ck_assert_int_eq(s->list(s->ctx, &m, &n), 0);
    for (size_t i = 0; i < n; i++) {
        craft_snapshot_meta_free(m[i]);
    }
    free(m);
    return n;
}

static bool listed(craft_snapshot_store_t *s, const char *id)
{
    craft_snapshot_meta_t **m;
    size_t n;
    bool found = false;
    ck_assert_int_eq(s->list(s->ctx, &m, &n), 0);
    for (size_t i = 0; i < n; i++) {
        found = found || strcmp(m[i]->id, id) == 0;
        craft_snapshot_meta_free(m[i]);
    }
    free(m);
    return found;
}

static int open_rv(craft_snapshot_store_t *s, const char *id)
{
    craft_snapshot_meta_t *m = NULL;
    craft_reader_t *r = NULL;
    int rv = s->open(s->ctx, id, &m, &r);
    if (rv == 0) {
        r->close(r->ctx);
        craft_snapshot_meta_free(m);
    }
    return rv;
}

/* Reads to the end; returns the first error or 0, and the bytes read. */
static int read_all(craft_reader_t *r, uint64_t *total)
{
    unsigned char buf[4096];
    int64_t n;
    *total = 0;
    while ((n = r->read(r->ctx, buf, sizeof buf)) > 0) {
        *total += (uint64_t)n;
    }
    return (int)n;
}

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static char *read_file(const char *path, size_t *len)
{
    struct stat sb;
    char *buf;
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(fstat(fd, &sb), 0);
    buf = malloc((size_t)sb.st_size + 1);
    ck_assert_int_eq(read(fd, buf, (size_t)sb.st_size), sb.st_size);
    buf[sb.st_size] = '\0';
    close(fd);
    *len = (size_t)sb.st_size;
    return buf;
}

static void flip_byte(const char *path, off_t at)
{
    unsigned char c;
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, &c, 1, at), 1);
    c ^= 0x20;
    ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

/* ------------------------------------------------------------------------ */
/* Layout and format                                                         */
/* ------------------------------------------------------------------------ */

START_TEST(test_layout_and_meta)
{
    craft_snapshot_store_t *s = store_new(2);
    unsigned char data[10000];
    char *id = put(s, 3, 12, sizeof data, 1), *state = snap_path(id, "state.bin");
    char *meta_path = snap_path(id, "meta.json"), *names, *text, want_crc[32];
    craft_snapshot_meta_t *m;
    size_t len;
    uint64_t crc;

    /* Only the finished snapshot: no .tmp, no perm.test. */
    names = entries();
    ck_assert_str_eq(names, id);
    free(names);

    fill(data, sizeof data, 1);
    text = read_file(state, &len);
    ck_assert_uint_eq(len, sizeof data);
    ck_assert_mem_eq(text, data, sizeof data);
    free(text);

    text = read_file(meta_path, &len);
    ck_assert_int_eq(craft__snapshot_meta_decode(text, len, &m, &crc), 0);
    ck_assert_uint_eq(crc, craft__crc64(0, data, sizeof data));
    snprintf(want_crc, sizeof want_crc, "\"crc\": \"%016" PRIx64 "\"", crc);
    ck_assert_ptr_nonnull(strstr(text, want_crc));
    ck_assert_ptr_nonnull(strstr(text, "\"suffrage\": \"Nonvoter\""));
    ck_assert_ptr_nonnull(strstr(text, "\"id\": \"b \\\"q\\\"\""));
    ck_assert_ptr_nonnull(strstr(text, "\"configuration_index\": 1"));
    ck_assert_str_eq(m->id, id);
    ck_assert_int_eq(m->version, 1);
    ck_assert_uint_eq(m->term, 3);
    ck_assert_uint_eq(m->index, 12);
    ck_assert_int_eq(m->size, (int64_t)sizeof data);
    ck_assert_uint_eq(m->configuration.n, 2);
    ck_assert_str_eq(m->configuration.servers[1].id, "b \"q\"");
    craft_snapshot_meta_free(m);
    free(text);

    ck_assert_int_eq(craft_file_snapshot_verify(s, id), 0);
    free(state);
    free(meta_path);
    free(id);
    s->close(s->ctx);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Corruption                                                                */
/* ------------------------------------------------------------------------ */

static void check_corrupt_by_read(craft_snapshot_store_t *s, const char *id,
                                  uint64_t size)
{
    craft_snapshot_meta_t *m;
    craft_reader_t *r;
    uint64_t total;
    ck_assert_int_eq(s->open(s->ctx, id, &m, &r), 0);
    ck_assert_int_eq(read_all(r, &total), CRAFT_ECORRUPT);
    ck_assert_uint_lt(total, size); /* the last bytes are withheld */
    /* The error sticks. */
    {
        unsigned char b[16];
        ck_assert_int_eq(r->read(r->ctx, b, sizeof b), CRAFT_ECORRUPT);
    }
    r->close(r->ctx);
    craft_snapshot_meta_free(m);
}

START_TEST(test_corrupt_crc)
{
    craft_snapshot_store_t *s = store_new(3);
    char *a = put(s, 1, 1, 200000, 2), *b = put(s, 1, 2, 1000, 3);
    char *pa = snap_path(a, "state.bin"), *pb = snap_path(b, "state.bin");

    flip_byte(pa, 123456);
    flip_byte(pb, 999); /* the very last byte */
    /* Same size: list cannot tell, reading to the end and verify can. */
    ck_assert(listed(s, a));
    check_corrupt_by_read(s, a, 200000);
    check_corrupt_by_read(s, b, 1000);
    ck_assert_int_eq(craft_file_snapshot_verify(s, a), CRAFT_ECORRUPT);
    ck_assert_int_eq(craft_file_snapshot_verify(s, b), CRAFT_ECORRUPT);

    /* Flipped back, it is whole again. */
    flip_byte(pa, 123456);
    ck_assert_int_eq(craft_file_snapshot_verify(s, a), 0);
    free(pa);
    free(pb);
    free(a);
    free(b);
    s->close(s->ctx);
}
END_TEST

/* A caller reading exactly `size` bytes (never asking for the end) still
 * sees the corruption. */
START_TEST(test_corrupt_crc_exact_read)
{
    craft_snapshot_store_t *s = store_new(1);
    char *id = put(s, 1, 1, 5000, 4), *p = snap_path(id, "state.bin");
    craft_snapshot_meta_t *m;
    craft_reader_t *r;
    unsigned char buf[5000];
    size_t got = 0;
    int64_t n = 0;
    flip_byte(p, 0);
    ck_assert_int_eq(s->open(s->ctx, id, &m, &r), 0);
    while (got < sizeof buf && (n = r->read(r->ctx, buf + got, sizeof buf - got)) > 0) {
        got += (size_t)n;
    }
    ck_assert_int_eq(n, CRAFT_ECORRUPT);
    r->close(r->ctx);
    craft_snapshot_meta_free(m);
    free(p);
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_truncated_state)
{
    craft_snapshot_store_t *s = store_new(3);
    char *a = put(s, 1, 1, 100000, 5), *b = put(s, 1, 2, 100000, 6);
    char *pa = snap_path(a, "state.bin"), *pb = snap_path(b, "state.bin");
    craft_snapshot_meta_t *m;
    craft_reader_t *r;
    uint64_t total;

    /* Truncated before open: skipped by list, refused by open and verify. */
    ck_assert_int_eq(truncate(pa, 99990), 0);
    ck_assert(!listed(s, a));
    ck_assert(listed(s, b));
    ck_assert_int_eq(open_rv(s, a), CRAFT_ECORRUPT);
    ck_assert_int_eq(craft_file_snapshot_verify(s, a), CRAFT_ECORRUPT);

    /* Truncated while a reader streams it: the reader finds out at EOF. */
    ck_assert_int_eq(s->open(s->ctx, b, &m, &r), 0);
    ck_assert_int_eq(truncate(pb, 50000), 0);
    ck_assert_int_eq(read_all(r, &total), CRAFT_ECORRUPT);
    ck_assert_uint_eq(total, 50000);
    r->close(r->ctx);
    craft_snapshot_meta_free(m);
    free(pa);
    free(pb);
    free(a);
    free(b);
    s->close(s->ctx);
}
END_TEST

/* Data appended behind a reader's back is reported after the last byte. */
START_TEST(test_extended_state)
{
    craft_snapshot_store_t *s = store_new(1);
    char *id = put(s, 1, 1, 3000, 7), *p = snap_path(id, "state.bin");
    craft_snapshot_meta_t *m;
    craft_reader_t *r;
    uint64_t total;
    int fd;
    ck_assert_int_eq(s->open(s->ctx, id, &m, &r), 0);
    fd = open(p, O_WRONLY | O_APPEND);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "xyz", 3), 3);
    close(fd);
    ck_assert_int_eq(read_all(r, &total), CRAFT_ECORRUPT);
    ck_assert_uint_eq(total, 3000);
    r->close(r->ctx);
    craft_snapshot_meta_free(m);
    /* Now also of the wrong size for open and list. */
    ck_assert_int_eq(open_rv(s, id), CRAFT_ECORRUPT);
    ck_assert_uint_eq(list_count(s), 0);
    free(p);
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_missing_meta)
{
    craft_snapshot_store_t *s = store_new(3);
    char *a = put(s, 1, 1, 10, 8), *b = put(s, 1, 2, 10, 9);
    char *mb = snap_path(b, "meta.json");
    ck_assert_int_eq(unlink(mb), 0);
    ck_assert_uint_eq(list_count(s), 1);
    ck_assert(listed(s, a));
    ck_assert_int_eq(open_rv(s, b), CRAFT_ENOTFOUND);
    ck_assert_int_eq(craft_file_snapshot_verify(s, b), CRAFT_ENOTFOUND);
    ck_assert_int_eq(craft_file_snapshot_verify(s, a), 0);
    free(mb);
    free(a);
    free(b);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_missing_state)
{
    craft_snapshot_store_t *s = store_new(3);
    char *a = put(s, 1, 1, 10, 8), *p = snap_path(a, "state.bin");
    ck_assert_int_eq(unlink(p), 0);
    ck_assert_uint_eq(list_count(s), 0);
    ck_assert_int_eq(open_rv(s, a), CRAFT_ECORRUPT);
    free(p);
    free(a);
    s->close(s->ctx);
}
END_TEST

/* A snapshot directory renamed: its meta names another snapshot. */
START_TEST(test_meta_id_mismatch)
{
    craft_snapshot_store_t *s = store_new(3);
    char *a = put(s, 1, 1, 10, 8), *from = snap_path(a, NULL);
    char *to = snap_path("9-9-9", NULL);
    ck_assert_int_eq(rename(from, to), 0);
    ck_assert_uint_eq(list_count(s), 0);
    ck_assert_int_eq(open_rv(s, "9-9-9"), CRAFT_ECORRUPT);
    free(from);
    free(to);
    free(a);
    s->close(s->ctx);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* meta.json parsing                                                         */
/* ------------------------------------------------------------------------ */

/* Decodes `len` bytes from an exactly sized heap copy, so the sanitizer
 * catches any read past the end. */
static int decode(const char *text, size_t len)
{
    char *copy = malloc(len ? len : 1);
    craft_snapshot_meta_t *m = NULL;
    uint64_t crc;
    int rv;
    memcpy(copy, text, len);
    rv = craft__snapshot_meta_decode(copy, len, &m, &crc);
    craft_snapshot_meta_free(m);
    free(copy);
    return rv;
}

#define META_OK                                                                \
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,"                  \
    "\"configuration\":{\"servers\":[{\"suffrage\":\"Voter\",\"id\":\"a\","   \
    "\"address\":\"b\"}]},\"configuration_index\":1,\"size\":0,"               \
    "\"crc\":\"0000000000000000\"}"

static const char *bad_metas[] = {
    "",
    " ",
    "{",
    "}",
    "[]",
    "null",
    "{}",
    META_OK "x",
    META_OK "}",
    META_OK ",",
    /* missing key */
    "{\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":{\"servers\":[]},"
    "\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    /* unknown key */
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":"
    "\"0000000000000000\",\"extra\":1}",
    /* duplicate key */
    "{\"version\":1,\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,"
    "\"configuration\":{\"servers\":[]},\"configuration_index\":1,\"size\":0,"
    "\"crc\":\"0000000000000000\"}",
    /* numbers */
    "{\"version\":-1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2.5,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2e3,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":02,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":18446744073709551616,\"term\":1,"
    "\"configuration\":{\"servers\":[]},\"configuration_index\":1,\"size\":0,"
    "\"crc\":\"0000000000000000\"}",
    "{\"version\":2147483648,\"id\":\"1-2-3\",\"index\":2,\"term\":1,"
    "\"configuration\":{\"servers\":[]},\"configuration_index\":1,\"size\":0,"
    "\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":9223372036854775808,"
    "\"crc\":\"0000000000000000\"}",
    "{\"version\":\"1\",\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":3,\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    /* crc */
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"00\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"000000000000000g\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":0}",
    /* configuration */
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":{}},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[],},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[{\"suffrage\":\"Staging\",\"id\":\"a\",\"address\":\"b\"}]},"
    "\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[{\"suffrage\":\"Voter\",\"id\":\"a\"}]},"
    "\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[{\"suffrage\":\"Voter\",\"id\":\"a\",\"address\":\"b\"},]},"
    "\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"
    ",\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    /* strings */
    "{\"version\":1,\"id\":\"1-2\\x\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2\\u0000\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"\\udc00\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"\\ud800x\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"\\u12\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"a\nb\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{\"version\":1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000",
    "{\"version\" 1,\"id\":\"1-2-3\",\"index\":2,\"term\":1,\"configuration\":"
    "{\"servers\":[]},\"configuration_index\":1,\"size\":0,\"crc\":\"0000000000000000\"}",
    "{'version':1}",
};

START_TEST(test_meta_parser_rejects)
{
    for (size_t i = 0; i < sizeof bad_metas / sizeof *bad_metas; i++) {
        int rv = decode(bad_metas[i], strlen(bad_metas[i]));
        ck_assert_msg(rv == CRAFT_ECORRUPT, "bad meta #%zu accepted (%s): %s", i,
                      craft_err_name(rv), bad_metas[i]);
    }
    /* An embedded raw NUL. */
    {
        char t[] = META_OK;
        char *at = strstr(t, "1-2-3");
        at[1] = '\0';
        ck_assert_int_eq(decode(t, sizeof t - 1), CRAFT_ECORRUPT);
    }
}
END_TEST

START_TEST(test_meta_parser_accepts)
{
    const char *pretty =
        " \r\n\t{ \"crc\" : \"00000000000000ff\" , \"size\":7,"
        "\"configuration_index\":18446744073709551615,\"configuration\":{"
        "\"servers\":[ {\"address\":\"x\\/y\",\"id\":\"\\u00e9\\ud83d\\ude80\\\"\","
        "\"suffrage\":\"Nonvoter\"} , {\"id\":\"\",\"address\":\"\",\"suffrage\":"
        "\"Voter\"}]},\"term\":0,\"index\":0,\"id\":\"1-2-3\",\"version\":0} \n";
    craft_snapshot_meta_t *m = NULL;
    uint64_t crc;
    char *out;
    size_t len;

    ck_assert_int_eq(decode(META_OK, strlen(META_OK)), 0);
    ck_assert_int_eq(craft__snapshot_meta_decode(pretty, strlen(pretty), &m, &crc), 0);
    ck_assert_uint_eq(crc, 0xff);
    ck_assert_int_eq(m->size, 7);
    ck_assert_uint_eq(m->configuration_index, UINT64_MAX);
    ck_assert_uint_eq(m->configuration.n, 2);
    ck_assert_int_eq(m->configuration.servers[0].suffrage, CRAFT_NONVOTER);
    ck_assert_str_eq(m->configuration.servers[0].address, "x/y");
    ck_assert_str_eq(m->configuration.servers[0].id,
                     "\xc3\xa9\xf0\x9f\x9a\x80\"");
    ck_assert_str_eq(m->configuration.servers[1].id, "");

    /* What the encoder writes, the decoder reads back the same. */
    ck_assert_int_eq(craft__snapshot_meta_encode(m, crc, &out, &len), 0);
    craft_snapshot_meta_free(m);
    ck_assert_int_eq(craft__snapshot_meta_decode(out, len, &m, &crc), 0);
    ck_assert_uint_eq(crc, 0xff);
    ck_assert_str_eq(m->configuration.servers[0].id,
                     "\xc3\xa9\xf0\x9f\x9a\x80\"");
    craft_snapshot_meta_free(m);
    free(out);
}
END_TEST

/* Every prefix of a real meta.json is refused; every one-byte change is
 * either refused or parsed, never a crash or an over-read. */
START_TEST(test_meta_parser_mutations)
{
    craft_snapshot_store_t *s = store_new(1);
    char *id = put(s, 5, 6, 10, 1), *p = snap_path(id, "meta.json");
    static const char repl[] = "\"\\{}[],:0-9eE.u \x01\x7f\xff";
    size_t len;
    char *text = read_file(p, &len);
    for (size_t cut = 0; cut < len; cut++) {
        /* The trailing newline is whitespace: only shorter cuts fail. */
        if (cut < len - 1) {
            ck_assert_msg(decode(text, cut) == CRAFT_ECORRUPT, "prefix %zu accepted", cut);
        }
    }
    for (size_t i = 0; i < len; i++) {
        char orig = text[i];
        for (size_t k = 0; k < sizeof repl - 1; k++) {
            int rv;
            text[i] = repl[k];
            rv = decode(text, len);
            ck_assert_msg(rv == 0 || rv == CRAFT_ECORRUPT, "pos %zu: %s", i,
                          craft_err_name(rv));
        }
        text[i] = orig;
    }
    free(text);
    free(p);
    free(id);
    s->close(s->ctx);
}
END_TEST

/* A malformed meta.json on disk: skipped by list, ECORRUPT from open. */
START_TEST(test_malformed_meta_on_disk)
{
    craft_snapshot_store_t *s = store_new(3);
    char *a = put(s, 1, 1, 10, 1), *b = put(s, 1, 2, 10, 2);
    char *mb = snap_path(b, "meta.json");
    write_file(mb, "{\"version\":1,\"id\":", 18);
    ck_assert_uint_eq(list_count(s), 1);
    ck_assert(listed(s, a));
    ck_assert_int_eq(open_rv(s, b), CRAFT_ECORRUPT);
    ck_assert_int_eq(craft_file_snapshot_verify(s, b), CRAFT_ECORRUPT);
    write_file(mb, "", 0);
    ck_assert_uint_eq(list_count(s), 1);
    ck_assert_int_eq(open_rv(s, b), CRAFT_ECORRUPT);
    free(mb);
    free(a);
    free(b);
    s->close(s->ctx);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Crashes                                                                   */
/* ------------------------------------------------------------------------ */

/* Only "<id>.tmp" is left, list ignores it, a new store removes it. */
static void check_crash_leftover(craft_snapshot_store_t *old, const char *id,
                                 size_t listed_before)
{
    char *names = entries(), *tmpname;
    craft_snapshot_store_t *s;
    ck_assert_int_ge(asprintf(&tmpname, "%s.tmp", id), 0);
    ck_assert_ptr_nonnull(strstr(names, tmpname));
    free(names);
    ck_assert_uint_eq(list_count(old), listed_before);
    ck_assert_int_eq(open_rv(old, id), CRAFT_ENOTFOUND);
    ck_assert_int_eq(open_rv(old, tmpname), CRAFT_ENOTFOUND);

    s = store_new(3);
    names = entries();
    ck_assert_ptr_null(strstr(names, ".tmp"));
    free(names);
    ck_assert_uint_eq(list_count(s), listed_before);
    s->close(s->ctx);
    free(tmpname);
}

/* The child creates and writes a snapshot and exits without closing it. */
START_TEST(test_crash_never_closed)
{
    craft_snapshot_store_t *s = store_new(3);
    char *kept = put(s, 1, 1, 100, 1);
    int fds[2], status;
    char id[128] = {0};
    pid_t pid;
    ck_assert_int_eq(pipe(fds), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        craft_snapshot_store_t *cs;
        craft_snapshot_sink_t *sink;
        unsigned char buf[100000];
        const char *cid;
        fill(buf, sizeof buf, 3);
        if (craft_file_snapshot_store_new(dir, 3, &cs) != 0 ||
            cs->create(cs->ctx, 1, 9, 2, &cfg, 1, &sink) != 0 ||
            sink->write(sink->ctx, buf, sizeof buf) != 0) {
            _exit(1);
        }
        cid = sink->id(sink->ctx);
        if (write(fds[1], cid, strlen(cid)) != (ssize_t)strlen(cid)) {
            _exit(2);
        }
        _exit(0);
    }
    close(fds[1]);
    ck_assert_int_gt(read(fds[0], id, sizeof id - 1), 0);
    close(fds[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    check_crash_leftover(s, id, 1);
    free(kept);
    s->close(s->ctx);
}
END_TEST

/* The child is killed with SIGKILL while it writes. */
START_TEST(test_crash_kill9_while_writing)
{
    craft_snapshot_store_t *s = store_new(3);
    int fds[2], status;
    char id[128] = {0};
    pid_t pid;
    ck_assert_int_eq(pipe(fds), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        craft_snapshot_store_t *cs;
        craft_snapshot_sink_t *sink;
        unsigned char buf[10000];
        const char *cid;
        fill(buf, sizeof buf, 4);
        if (craft_file_snapshot_store_new(dir, 3, &cs) != 0 ||
            cs->create(cs->ctx, 1, 9, 2, &cfg, 1, &sink) != 0 ||
            sink->write(sink->ctx, buf, sizeof buf) != 0) {
            _exit(1);
        }
        cid = sink->id(sink->ctx);
        if (write(fds[1], cid, strlen(cid)) != (ssize_t)strlen(cid)) {
            _exit(2);
        }
        /* Keeps writing (past the sink's buffer, into the file) until
         * killed, or gives up at 64 MiB. */
        for (int i = 0; i < 6400; i++) {
            if (sink->write(sink->ctx, buf, sizeof buf) != 0) {
                _exit(3);
            }
        }
        _exit(4);
    }
    close(fds[1]);
    ck_assert_int_gt(read(fds[0], id, sizeof id - 1), 0);
    close(fds[0]);
    kill(pid, SIGKILL);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) || WEXITSTATUS(status) == 4,
                  "child failed: %d", WEXITSTATUS(status));
    check_crash_leftover(s, id, 0);
    s->close(s->ctx);
}
END_TEST

/* The child takes snapshots in a loop and is killed at some point (maybe
 * inside close): afterwards every listed snapshot is whole. */
START_TEST(test_crash_kill9_while_snapshotting)
{
    int fds[2], status;
    char c;
    pid_t pid;
    craft_snapshot_store_t *s;
    craft_snapshot_meta_t **m;
    size_t n;
    char *names;
    ck_assert_int_eq(pipe(fds), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        craft_snapshot_store_t *cs;
        unsigned char buf[30000];
        if (craft_file_snapshot_store_new(dir, 2, &cs) != 0) {
            _exit(1);
        }
        for (uint64_t i = 1; i < 100000; i++) {
            craft_snapshot_sink_t *sink;
            fill(buf, sizeof buf, (unsigned)i);
            if (cs->create(cs->ctx, 1, i, 1, &cfg, 1, &sink) != 0 ||
                sink->write(sink->ctx, buf, (size_t)(i * 7919 % sizeof buf)) != 0 ||
                sink->close(sink->ctx) != 0) {
                _exit(2);
            }
            if (i == 3 && write(fds[1], "x", 1) != 1) {
                _exit(3);
            }
        }
        _exit(4);
    }
    close(fds[1]);
    ck_assert_int_eq(read(fds[0], &c, 1), 1);
    close(fds[0]);
    kill(pid, SIGKILL);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) || WEXITSTATUS(status) == 4,
                  "child failed: %d", WEXITSTATUS(status));

    s = store_new(2);
    names = entries();
    ck_assert_ptr_null(strstr(names, ".tmp"));
    free(names);
    ck_assert_int_eq(s->list(s->ctx, &m, &n), 0);
    ck_assert_uint_ge(n, 1);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(craft_file_snapshot_verify(s, m[i]->id), 0);
        ck_assert_int_eq(m[i]->size, (int64_t)(m[i]->index * 7919 % 30000));
        craft_snapshot_meta_free(m[i]);
    }
    free(m);
    /* Nothing half-deleted either: every directory left is a whole
     * snapshot (retention may not have run for the last one). */
    names = entries();
    for (char *save = NULL, *e = strtok_r(names, " ", &save); e != NULL;
         e = strtok_r(NULL, " ", &save)) {
        ck_assert_msg(craft_file_snapshot_verify(s, e) == 0, "entry %s", e);
    }
    free(names);
    s->close(s->ctx);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Write errors                                                              */
/* ------------------------------------------------------------------------ */

/* Runs in a child limited to `limit` bytes per file (RLIMIT_FSIZE, so
 * writes fail with EFBIG like a full disk). Writes `chunks` of the given
 * sizes; the store must report CRAFT_EIO from a write or from close, leave
 * no temporary directory and list nothing. Returns the child's verdict. */
static int disk_full_child(rlim_t limit, const size_t *chunks, size_t n_chunks)
{
    struct rlimit rl = {limit, limit};
    craft_snapshot_store_t *s;
    craft_snapshot_sink_t *sink;
    unsigned char *buf = malloc(4 * 1024 * 1024);
    int rv = 0;
    char *names;
    if (buf == NULL) {
        return 10;
    }
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) {
        return 11;
    }
    if (craft_file_snapshot_store_new(dir, 3, &s) != 0 ||
        s->create(s->ctx, 1, 1, 1, &cfg, 1, &sink) != 0) {
        return 12;
    }
    fill(buf, 4 * 1024 * 1024, 5);
    for (size_t i = 0; i < n_chunks && rv == 0; i++) {
        rv = sink->write(sink->ctx, buf, chunks[i]);
    }
    if (rv != 0) {
        if (rv != CRAFT_EIO) {
            return 13;
        }
        if (sink->write(sink->ctx, buf, 1) != CRAFT_EIO) {
            return 14; /* the error sticks */
        }
        if (sink->cancel(sink->ctx) != 0) {
            return 15;
        }
    } else if (sink->close(sink->ctx) != CRAFT_EIO) {
        return 16;
    }
    names = entries();
    if (names[0] != '\0') {
        fprintf(stderr, "left behind: %s\n", names);
        return 17;
    }
    free(names);
    if (list_count(s) != 0) {
        return 18;
    }
    s->close(s->ctx);
    free(buf);
    return 0;
}

static void run_disk_full(rlim_t limit, const size_t *chunks, size_t n_chunks)
{
    int status;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        _exit(disk_full_child(limit, chunks, n_chunks));
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "disk full child: status %d", status);
}

START_TEST(test_disk_full_on_write)
{
    /* Large writes reach the file at once and fail there. */
    static const size_t chunks[] = {1024 * 1024, 1024 * 1024};
    run_disk_full(512 * 1024, chunks, 2);
}
END_TEST

START_TEST(test_disk_full_on_close)
{
    /* Small writes sit in the sink's buffer: the failure may surface only
     * when close flushes it. */
    static const size_t chunks[] = {40000, 40000};
    run_disk_full(50000, chunks, 2);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Bad input and environment                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(test_invalid_ids)
{
    craft_snapshot_store_t *s = store_new(3);
    char *id = put(s, 1, 1, 10, 1), *tmp;
    static const char *bad[] = {"", "..", "../x", "a/b", "/etc", "x/../y",
                                "1-1-1/../../etc", "1-1-1/", "...", "a..b"};
    craft_snapshot_meta_t *m;
    craft_reader_t *r;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(open_rv(s, bad[i]) == CRAFT_EINVAL, "open(%s)", bad[i]);
        ck_assert_msg(craft_file_snapshot_verify(s, bad[i]) == CRAFT_EINVAL,
                      "verify(%s)", bad[i]);
    }
    ck_assert_int_eq(s->open(s->ctx, NULL, &m, &r), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_verify(s, NULL), CRAFT_EINVAL);
    /* A temporary directory is never opened, even when it exists. */
    ck_assert_int_ge(asprintf(&tmp, "%s/snapshots/7-7-7.tmp", dir), 0);
    ck_assert_int_eq(mkdir(tmp, 0755), 0);
    ck_assert_int_eq(open_rv(s, "7-7-7.tmp"), CRAFT_ENOTFOUND);
    ck_assert_int_eq(open_rv(s, "."), CRAFT_ENOTFOUND);
    ck_assert_int_eq(open_rv(s, id), 0);
    free(tmp);
    free(id);
    s->close(s->ctx);
}
END_TEST

START_TEST(test_bad_arguments)
{
    craft_snapshot_store_t *s = NULL, *inmem;
    ck_assert_int_eq(craft_file_snapshot_store_new(NULL, 1, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_store_new("", 1, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_store_new(dir, 0, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_store_new(dir, -3, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_store_new(dir, 1, NULL), CRAFT_EINVAL);
    ck_assert_ptr_null(s);
    /* verify is for file stores only. */
    ck_assert_int_eq(craft_inmem_snapshot_store_new(&inmem), 0);
    ck_assert_int_eq(craft_file_snapshot_verify(inmem, "1-1-1"), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_verify(NULL, "1-1-1"), CRAFT_EINVAL);
    inmem->close(inmem->ctx);
}
END_TEST

START_TEST(test_creates_missing_dirs)
{
    craft_snapshot_store_t *s;
    char *deep, *id;
    struct stat sb;
    ck_assert_int_ge(asprintf(&deep, "%s/a/b/c", dir), 0);
    ck_assert_int_eq(craft_file_snapshot_store_new(deep, 1, &s), 0);
    id = put(s, 1, 1, 5, 1);
    s->close(s->ctx);
    free(id);
    free(deep);
    ck_assert_int_ge(asprintf(&deep, "%s/a/b/c/snapshots", dir), 0);
    ck_assert_int_eq(stat(deep, &sb), 0);
    ck_assert(S_ISDIR(sb.st_mode));
    free(deep);
}
END_TEST

START_TEST(test_unwritable_dir)
{
    craft_snapshot_store_t *s = NULL;
    char *file, *under;
    ck_assert_int_ge(asprintf(&file, "%s/plainfile", dir), 0);
    ck_assert_int_ge(asprintf(&under, "%s/plainfile/sub", dir), 0);
    write_file(file, "x", 1);
    /* A regular file where the directory should be, or above it. */
    ck_assert_int_eq(craft_file_snapshot_store_new(file, 1, &s), CRAFT_EIO);
    ck_assert_int_eq(craft_file_snapshot_store_new(under, 1, &s), CRAFT_EIO);
    /* procfs refuses new directories even to root. */
    ck_assert_int_eq(craft_file_snapshot_store_new("/proc/self", 1, &s), CRAFT_EIO);
    ck_assert_ptr_null(s);
    /* A directory without write permission (root ignores permissions, so
     * this part only runs unprivileged). */
    if (geteuid() != 0) {
        char *ro, *ro_snaps;
        ck_assert_int_ge(asprintf(&ro, "%s/ro", dir), 0);
        ck_assert_int_ge(asprintf(&ro_snaps, "%s/ro/snapshots", dir), 0);
        ck_assert_int_eq(mkdir(ro, 0755), 0);
        ck_assert_int_eq(mkdir(ro_snaps, 0555), 0);
        ck_assert_int_eq(craft_file_snapshot_store_new(ro, 1, &s), CRAFT_EIO);
        chmod(ro_snaps, 0755);
        free(ro);
        free(ro_snaps);
    }
    free(file);
    free(under);
}
END_TEST

/* Leftover .tmp directories go at open; foreign entries stay and are
 * ignored. */
START_TEST(test_stale_tmp_and_foreign_entries)
{
    craft_snapshot_store_t *s = store_new(2);
    char *tmp, *tmpfile, *junk, *foreign, *names, *id;
    s->close(s->ctx);
    ck_assert_int_ge(asprintf(&tmp, "%s/snapshots/5-5-5.tmp", dir), 0);
    ck_assert_int_ge(asprintf(&tmpfile, "%s/state.bin", tmp), 0);
    ck_assert_int_ge(asprintf(&junk, "%s/snapshots/junk", dir), 0);
    ck_assert_int_ge(asprintf(&foreign, "%s/snapshots/lost+found", dir), 0);
    ck_assert_int_eq(mkdir(tmp, 0755), 0);
    write_file(tmpfile, "abc", 3);
    write_file(junk, "j", 1);
    ck_assert_int_eq(mkdir(foreign, 0755), 0);

    s = store_new(2);
    names = entries();
    ck_assert_str_eq(names, "junk lost+found");
    free(names);
    ck_assert_uint_eq(list_count(s), 0);
    id = put(s, 1, 1, 10, 1);
    ck_assert_uint_eq(list_count(s), 1);
    ck_assert_int_eq(open_rv(s, "lost+found"), CRAFT_ENOTFOUND);
    free(id);
    free(tmp);
    free(tmpfile);
    free(junk);
    free(foreign);
    s->close(s->ctx);
}
END_TEST

/* Reopening with a smaller retain: list shows that many, and the next
 * snapshot's close reaps down to it. */
START_TEST(test_retain_lowered_on_reopen)
{
    craft_snapshot_store_t *s = store_new(3);
    char *ids[4], *names;
    for (int i = 0; i < 3; i++) {
        ids[i] = put(s, 1, (uint64_t)i + 1, 10, (unsigned)i);
    }
    s->close(s->ctx);
    s = store_new(1);
    ck_assert_uint_eq(list_count(s), 1);
    ck_assert(listed(s, ids[2]));
    ids[3] = put(s, 1, 4, 10, 4);
    names = entries();
    ck_assert_str_eq(names, ids[3]);
    free(names);
    for (int i = 0; i < 4; i++) {
        free(ids[i]);
    }
    s->close(s->ctx);
}
END_TEST

/* Readers do not depend on the store: they work after it is closed. */
START_TEST(test_reader_outlives_store)
{
    craft_snapshot_store_t *s = store_new(1);
    char *id = put(s, 1, 1, 70000, 9);
    craft_snapshot_meta_t *m;
    craft_reader_t *r;
    uint64_t total;
    ck_assert_int_eq(s->open(s->ctx, id, &m, &r), 0);
    s->close(s->ctx);
    ck_assert_int_eq(read_all(r, &total), 0);
    ck_assert_uint_eq(total, 70000);
    r->close(r->ctx);
    craft_snapshot_meta_free(m);
    free(id);
}
END_TEST

/* The options: retain 0 means the default, a negative one is refused, and
 * every message goes to the logger (INFO included), readers' after the store
 * is closed too. Without a logger INFO is dropped (checked by the absence of
 * any call, as stderr is not captured). */
typedef struct captured {
    pthread_mutex_t mu;
    int n;
    int info, errors;
    char last[512];
} captured_t;

static void capture(void *ctx, craft_level_t level, const char *component,
                    const char *message)
{
    captured_t *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->n++;
    c->info += level == CRAFT_LEVEL_INFO;
    c->errors += level >= CRAFT_LEVEL_ERROR;
    ck_assert_str_eq(component, "snapshot");
    snprintf(c->last, sizeof c->last, "%s", message);
    pthread_mutex_unlock(&c->mu);
}

START_TEST(test_options_and_logger)
{
    captured_t cap = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, ""};
    craft_file_snapshot_options_t o;
    craft_snapshot_store_t *s = NULL;
    craft_snapshot_meta_t *m;
    craft_reader_t *r;
    char *ids[4], *tmp, *state;
    uint64_t total;

    craft_file_snapshot_options_default(&o);
    ck_assert_int_eq(o.retain, 0);
    ck_assert(o.logger == NULL);
    o.retain = -1;
    ck_assert_int_eq(craft_file_snapshot_store_open(dir, &o, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_store_open(NULL, NULL, &s), CRAFT_EINVAL);
    ck_assert_int_eq(craft_file_snapshot_store_open(dir, NULL, NULL), CRAFT_EINVAL);
    ck_assert_ptr_null(s);

    /* NULL options: the default retain. */
    ck_assert_int_eq(craft_file_snapshot_store_open(dir, NULL, &s), 0);
    for (int i = 0; i < 4; i++) {
        ids[i] = put(s, 1, (uint64_t)i + 1, 10, (unsigned)i);
    }
    ck_assert_uint_eq(list_count(s), CRAFT_FILE_SNAPSHOT_RETAIN_DEFAULT);
    s->close(s->ctx);

    /* With a logger: a leftover .tmp directory is reported at open, reaping at
     * close, and a reader's CRC failure after the store is gone. */
    ck_assert_int_ge(asprintf(&tmp, "%s/snapshots/9-9-9.tmp", dir), 0);
    ck_assert_int_eq(mkdir(tmp, 0755), 0);
    o.retain = 1;
    o.logger = capture;
    o.logger_ctx = &cap;
    ck_assert_int_eq(craft_file_snapshot_store_open(dir, &o, &s), 0);
    ck_assert_int_eq(cap.info, 1);
    ck_assert_ptr_nonnull(strstr(cap.last, "9-9-9.tmp"));
    free(ids[0]);
    ids[0] = put(s, 2, 5, 100, 7);
    ck_assert_int_eq(cap.info, 1 + CRAFT_FILE_SNAPSHOT_RETAIN_DEFAULT);
    ck_assert_ptr_nonnull(strstr(cap.last, "reaping snapshot"));
    ck_assert_int_eq(cap.errors, 0);

    state = snap_path(ids[0], "state.bin");
    flip_byte(state, 3);
    ck_assert_int_eq(s->open(s->ctx, ids[0], &m, &r), 0);
    s->close(s->ctx);
    ck_assert_int_eq(read_all(r, &total), CRAFT_ECORRUPT);
    ck_assert_int_eq(cap.errors, 1);
    ck_assert_ptr_nonnull(strstr(cap.last, ids[0]));
    r->close(r->ctx);
    craft_snapshot_meta_free(m);

    free(state);
    free(tmp);
    for (int i = 0; i < 4; i++) {
        free(ids[i]);
    }
}
END_TEST

static Suite *file_store_suite(void)
{
    Suite *s = suite_create("file_snapshot_store");
    TCase *tc = tcase_create("file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_layout_and_meta);
    tcase_add_test(tc, test_corrupt_crc);
    tcase_add_test(tc, test_corrupt_crc_exact_read);
    tcase_add_test(tc, test_truncated_state);
    tcase_add_test(tc, test_extended_state);
    tcase_add_test(tc, test_missing_meta);
    tcase_add_test(tc, test_missing_state);
    tcase_add_test(tc, test_meta_id_mismatch);
    tcase_add_test(tc, test_meta_parser_rejects);
    tcase_add_test(tc, test_meta_parser_accepts);
    tcase_add_test(tc, test_meta_parser_mutations);
    tcase_add_test(tc, test_malformed_meta_on_disk);
    tcase_add_test(tc, test_crash_never_closed);
    tcase_add_test(tc, test_crash_kill9_while_writing);
    tcase_add_test(tc, test_crash_kill9_while_snapshotting);
    tcase_add_test(tc, test_disk_full_on_write);
    tcase_add_test(tc, test_disk_full_on_close);
    tcase_add_test(tc, test_invalid_ids);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_creates_missing_dirs);
    tcase_add_test(tc, test_unwritable_dir);
    tcase_add_test(tc, test_stale_tmp_and_foreign_entries);
    tcase_add_test(tc, test_retain_lowered_on_reopen);
    tcase_add_test(tc, test_reader_outlives_store);
    tcase_add_test(tc, test_options_and_logger);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    static file_factory_t keep3 = {3, NULL}, keep1 = {1, NULL};
    const craft_conformance_snapshot_factory_t f3 = {
        .name = "file_snapshot_store(retain=3)",
        .arg = &keep3,
        .open = file_open,
        .reopen = file_reopen,
        .destroy = file_destroy,
        .retain = 3,
    };
    const craft_conformance_snapshot_factory_t f1 = {
        .name = "file_snapshot_store(retain=1)",
        .arg = &keep1,
        .open = file_open,
        .reopen = file_reopen,
        .destroy = file_destroy,
        .retain = 1,
    };
    Suite *a = craft_conformance_snapshot_store_suite(&f3);
    Suite *b = craft_conformance_snapshot_store_suite(&f1);
    SRunner *sr;
    int failed;
    if (a == NULL || b == NULL) {
        return EXIT_FAILURE;
    }
    sr = srunner_create(a);
    srunner_add_suite(sr, b);
    srunner_add_suite(sr, file_store_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
