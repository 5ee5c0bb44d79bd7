/* lib/codec.c: msgpack writer/reader/scanner and configuration entries. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "lib/codec.h"
#include "tests/testutil.h"
#include "tests/unit/wire_samples.h"

/* ---- helpers ---- */

static const ws_sample_t *sample(const char *prefix)
{
    for (size_t i = 0; i < WS_N_SAMPLES; i++) {
        if (strncmp(ws_samples[i].title, prefix, strlen(prefix)) == 0) {
            return &ws_samples[i];
        }
    }
    ck_abort_msg("no sample %s", prefix);
    return NULL;
}

static void set_server(craft_server_t *s, const char *id, const char *addr,
                       craft_suffrage_t suf)
{
    s->id = (char *)id;
    s->address = (char *)addr;
    s->suffrage = suf;
}

static void check_server(const craft_configuration_t *c, size_t i,
                         const char *id, const char *addr,
                         craft_suffrage_t suf)
{
    ck_assert_uint_gt(c->n, i);
    ck_assert_str_eq(c->servers[i].id, id);
    ck_assert_str_eq(c->servers[i].address, addr);
    ck_assert_int_eq(c->servers[i].suffrage, suf);
}

static void expect_encoding(const craft_configuration_t *c,
                            const uint8_t *want, size_t want_len)
{
    void *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(craft__configuration_encode(c, &buf, &len), 0);
    ck_assert_uint_eq(len, want_len);
    ck_assert_mem_eq(buf, want, want_len);
    free(buf);
}

static int decode_spec(const char *spec, craft_configuration_t *out)
{
    uint8_t b[4096];
    size_t n = tu_hex(spec, b, sizeof b);
    return craft__configuration_decode(b, n, out);
}

/* ---- writer ---- */

static void expect_buf(craft__mp_buf_t *b, const char *spec)
{
    uint8_t want[64];
    size_t n = tu_hex(spec, want, sizeof want);
    ck_assert_int_eq(b->err, 0);
    ck_assert_uint_eq(b->len, n);
    ck_assert_mem_eq(b->data, want, n);
    craft__mp_buf_reset(b);
}

START_TEST(test_put_uint_smallest_form)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    craft__mp_put_uint(&b, 0);
    expect_buf(&b, "00");
    craft__mp_put_uint(&b, 127);
    expect_buf(&b, "7f");
    craft__mp_put_uint(&b, 128);
    expect_buf(&b, "cc 80");
    craft__mp_put_uint(&b, 255);
    expect_buf(&b, "cc ff");
    craft__mp_put_uint(&b, 256);
    expect_buf(&b, "cd 01 00");
    craft__mp_put_uint(&b, 65535);
    expect_buf(&b, "cd ff ff");
    craft__mp_put_uint(&b, 65536);
    expect_buf(&b, "ce 00 01 00 00");
    craft__mp_put_uint(&b, UINT32_MAX);
    expect_buf(&b, "ce ff ff ff ff");
    craft__mp_put_uint(&b, (uint64_t)UINT32_MAX + 1);
    expect_buf(&b, "cf 00 00 00 01 00 00 00 00");
    craft__mp_put_uint(&b, UINT64_MAX);
    expect_buf(&b, "cf ff ff ff ff ff ff ff ff");
    craft__mp_buf_free(&b);
}
END_TEST

START_TEST(test_put_int_forms)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    /* v0.5.5: non-negative like unsigned (WIRE.md: Size=1000 is cd 03 e8) */
    craft__mp_put_int(&b, 1000, CRAFT__MP_INT_V055);
    expect_buf(&b, "cd 03 e8");
    craft__mp_put_int(&b, 200, CRAFT__MP_INT_V055);
    expect_buf(&b, "cc c8");
    craft__mp_put_int(&b, 3, CRAFT__MP_INT_V055);
    expect_buf(&b, "03");
    /* v2: positives above 127 as signed, no int8 (Size=1000 is d1 03 e8) */
    craft__mp_put_int(&b, 1000, CRAFT__MP_INT_V2);
    expect_buf(&b, "d1 03 e8");
    craft__mp_put_int(&b, 200, CRAFT__MP_INT_V2);
    expect_buf(&b, "d1 00 c8");
    craft__mp_put_int(&b, 127, CRAFT__MP_INT_V2);
    expect_buf(&b, "7f");
    craft__mp_put_int(&b, 40000, CRAFT__MP_INT_V2);
    expect_buf(&b, "d2 00 00 9c 40");
    craft__mp_put_int(&b, INT64_MAX, CRAFT__MP_INT_V2);
    expect_buf(&b, "d3 7f ff ff ff ff ff ff ff");
    /* negatives: same in both */
    for (int f = 0; f < 2; f++) {
        craft__mp_put_int(&b, -1, (craft__mp_int_form_t)f);
        expect_buf(&b, "ff");
        craft__mp_put_int(&b, -32, (craft__mp_int_form_t)f);
        expect_buf(&b, "e0");
        craft__mp_put_int(&b, -33, (craft__mp_int_form_t)f);
        expect_buf(&b, "d0 df");
        craft__mp_put_int(&b, -129, (craft__mp_int_form_t)f);
        expect_buf(&b, "d1 ff 7f");
        craft__mp_put_int(&b, -40000, (craft__mp_int_form_t)f);
        expect_buf(&b, "d2 ff ff 63 c0");
        craft__mp_put_int(&b, INT64_MIN, (craft__mp_int_form_t)f);
        expect_buf(&b, "d3 80 00 00 00 00 00 00 00");
    }
    craft__mp_buf_free(&b);
}
END_TEST

START_TEST(test_put_str_raw_family)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    static char big[70000];
    memset(big, 'x', sizeof big);
    craft__mp_put_str(&b, "", 0);
    expect_buf(&b, "a0");
    craft__mp_put_str(&b, big, 31);
    ck_assert_uint_eq(b.len, 32);
    ck_assert_uint_eq(b.data[0], 0xbf);
    craft__mp_buf_reset(&b);
    /* 32..255 bytes: raw16, never str8 (d9) */
    craft__mp_put_str(&b, big, 32);
    ck_assert_uint_eq(b.len, 35);
    ck_assert_mem_eq(b.data, "\xda\x00\x20", 3);
    craft__mp_buf_reset(&b);
    craft__mp_put_str(&b, big, 65535);
    ck_assert_mem_eq(b.data, "\xda\xff\xff", 3);
    ck_assert_uint_eq(b.len, 65538);
    craft__mp_buf_reset(&b);
    craft__mp_put_str(&b, big, 65536);
    ck_assert_mem_eq(b.data, "\xdb\x00\x01\x00\x00", 5);
    ck_assert_uint_eq(b.len, 65541);
    craft__mp_buf_reset(&b);
    craft__mp_put_cstr_or_nil(&b, NULL);
    expect_buf(&b, "c0");
    craft__mp_put_blob_or_nil(&b, NULL, 0);
    expect_buf(&b, "c0");
    craft__mp_put_blob_or_nil(&b, "", 0);
    expect_buf(&b, "a0");
    craft__mp_put_bool(&b, true);
    craft__mp_put_bool(&b, false);
    craft__mp_put_nil(&b);
    expect_buf(&b, "c3 c2 c0");
    craft__mp_put_map(&b, 15);
    craft__mp_put_map(&b, 16);
    craft__mp_put_map(&b, 70000);
    expect_buf(&b, "8f de 00 10 df 00 01 11 70");
    craft__mp_put_array(&b, 15);
    craft__mp_put_array(&b, 16);
    craft__mp_put_array(&b, 70000);
    expect_buf(&b, "9f dc 00 10 dd 00 01 11 70");
    craft__mp_buf_free(&b);
}
END_TEST

/* ---- reader ---- */

START_TEST(test_reader_int_families)
{
    uint8_t b[64];
    size_t n = tu_hex("05 cc 05 cd 00 05 ce 00 00 00 05 cf 00 00 00 00 00 00 00 05"
                      " d0 05 d1 00 05 d2 00 00 00 05 d3 00 00 00 00 00 00 00 05 c0",
                      b, sizeof b);
    craft__mp_reader_t r;
    craft__mp_reader_init(&r, b, n, 0, 0);
    for (int i = 0; i < 9; i++) {
        uint64_t v = 0;
        ck_assert_int_eq(craft__mp_read_uint(&r, &v), CRAFT__MP_OK);
        ck_assert_uint_eq(v, 5);
    }
    uint64_t v = 9;
    ck_assert_int_eq(craft__mp_read_uint(&r, &v), CRAFT__MP_OK);
    ck_assert_uint_eq(v, 0); /* nil -> 0 */
    ck_assert_uint_eq(r.pos, n);
    ck_assert_int_eq(craft__mp_read_uint(&r, &v), CRAFT__MP_SHORT);

    /* negatives are refused for unsigned fields, accepted for signed */
    n = tu_hex("ff d0 80 cf ff ff ff ff ff ff ff ff ca 00 00 00 00 a1 41", b,
               sizeof b);
    craft__mp_reader_destroy(&r);
    craft__mp_reader_init(&r, b, n, 0, 0);
    ck_assert_int_eq(craft__mp_read_uint(&r, &v), CRAFT__MP_BAD);
    int64_t s;
    ck_assert_int_eq(craft__mp_read_int(&r, &s), CRAFT__MP_OK);
    ck_assert_int_eq(s, -1);
    ck_assert_int_eq(craft__mp_read_int(&r, &s), CRAFT__MP_OK);
    ck_assert_int_eq(s, -128);
    ck_assert_int_eq(craft__mp_read_int(&r, &s), CRAFT__MP_BAD); /* > INT64_MAX */
    r.pos += 9;
    ck_assert_int_eq(craft__mp_read_int(&r, &s), CRAFT__MP_BAD); /* float */
    r.pos += 5;
    ck_assert_int_eq(craft__mp_read_uint(&r, &v), CRAFT__MP_BAD); /* string */
    ck_assert_ptr_nonnull(r.reason);
    craft__mp_reader_destroy(&r);
}
END_TEST

START_TEST(test_reader_bool_and_strings)
{
    uint8_t b[64];
    size_t n = tu_hex("c3 c2 01 00 c0 02 a3\"abc\" d9 02\"de\" c4 01\"f\" c5 00 00"
                      " a2 61 00 c0 a0",
                      b, sizeof b);
    craft__mp_reader_t r;
    craft__mp_reader_init(&r, b, n, 0, 0);
    bool v;
    ck_assert_int_eq(craft__mp_read_bool(&r, &v), CRAFT__MP_OK);
    ck_assert(v);
    ck_assert_int_eq(craft__mp_read_bool(&r, &v), CRAFT__MP_OK);
    ck_assert(!v);
    ck_assert_int_eq(craft__mp_read_bool(&r, &v), CRAFT__MP_OK);
    ck_assert(v);
    ck_assert_int_eq(craft__mp_read_bool(&r, &v), CRAFT__MP_OK);
    ck_assert(!v);
    v = true;
    ck_assert_int_eq(craft__mp_read_bool(&r, &v), CRAFT__MP_OK);
    ck_assert(!v);
    ck_assert_int_eq(craft__mp_read_bool(&r, &v), CRAFT__MP_BAD); /* 2 */
    r.pos++;
    const uint8_t *s;
    size_t sl;
    ck_assert_int_eq(craft__mp_read_str(&r, &s, &sl), CRAFT__MP_OK);
    ck_assert_uint_eq(sl, 3);
    ck_assert_mem_eq(s, "abc", 3);
    char *c;
    ck_assert_int_eq(craft__mp_read_cstr_dup(&r, &c), CRAFT__MP_OK);
    ck_assert_str_eq(c, "de");
    free(c);
    void *blob;
    ck_assert_int_eq(craft__mp_read_blob_dup(&r, &blob, &sl), CRAFT__MP_OK);
    ck_assert_uint_eq(sl, 1);
    ck_assert_mem_eq(blob, "f", 1);
    free(blob);
    ck_assert_int_eq(craft__mp_read_blob_dup(&r, &blob, &sl), CRAFT__MP_OK);
    ck_assert_ptr_nonnull(blob); /* empty but not nil */
    ck_assert_uint_eq(sl, 0);
    free(blob);
    ck_assert_int_eq(craft__mp_read_cstr_dup(&r, &c), CRAFT__MP_BAD); /* NUL */
    r.pos = n - 2; /* position after BAD is unspecified */
    ck_assert_int_eq(craft__mp_read_blob_dup(&r, &blob, &sl), CRAFT__MP_OK);
    ck_assert_ptr_null(blob); /* nil */
    ck_assert_int_eq(craft__mp_read_cstr_dup(&r, &c), CRAFT__MP_OK);
    ck_assert_str_eq(c, "");
    free(c);
    craft__mp_reader_destroy(&r);
}
END_TEST

START_TEST(test_reader_limits)
{
    uint8_t b[64];
    /* declared string length far beyond the buffer: SHORT, and over the
     * string limit: BAD, without reading or allocating */
    size_t n = tu_hex("db ff ff ff ff 41", b, sizeof b);
    craft__mp_reader_t r;
    const uint8_t *s;
    size_t sl;
    craft__mp_reader_init(&r, b, n, 0, (size_t)1 << 40);
    ck_assert_int_eq(craft__mp_read_str(&r, &s, &sl), CRAFT__MP_SHORT);
    craft__mp_reader_destroy(&r);
    craft__mp_reader_init(&r, b, n, 0, 1000);
    ck_assert_int_eq(craft__mp_read_str(&r, &s, &sl), CRAFT__MP_BAD);
    /* array count larger than the bytes left */
    n = tu_hex("dd ff ff ff ff 01 02", b, sizeof b);
    uint32_t cnt;
    craft__mp_reader_destroy(&r);
    craft__mp_reader_init(&r, b, n, 0, 0);
    ck_assert_int_eq(craft__mp_read_array(&r, &cnt), CRAFT__MP_SHORT);
    /* depth */
    n = tu_hex("91 91 91 91 00", b, sizeof b);
    craft__mp_reader_destroy(&r);
    craft__mp_reader_init(&r, b, n, 3, 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(craft__mp_read_array(&r, &cnt), CRAFT__MP_OK);
    }
    ck_assert_int_eq(craft__mp_read_array(&r, &cnt), CRAFT__MP_BAD);
    craft__mp_reader_destroy(&r);
    craft__mp_reader_init(&r, b, n, 3, 0);
    ck_assert_int_eq(craft__mp_skip(&r), CRAFT__MP_BAD);
    craft__mp_reader_destroy(&r);
    craft__mp_reader_init(&r, b, n, 4, 0);
    ck_assert_int_eq(craft__mp_skip(&r), CRAFT__MP_OK);
    ck_assert_uint_eq(r.pos, n);
    /* 0xc1 is never valid */
    n = tu_hex("c1", b, sizeof b);
    craft__mp_reader_destroy(&r);
    craft__mp_reader_init(&r, b, n, 0, 0);
    ck_assert_int_eq(craft__mp_skip(&r), CRAFT__MP_BAD);
    craft__mp_reader_destroy(&r);
}
END_TEST

/* The reader decodes through msgpack-c: nesting past its decoder stack is
 * refused by the scanner in front of it, never handed to it; peeking at
 * nil does not consume; a container's values end where its count says. */
START_TEST(test_reader_msgpack_c_tree)
{
    uint8_t b[64];
    memset(b, 0x91, 40);
    b[40] = 0;
    craft__mp_reader_t r;
    uint32_t n;
    craft__mp_reader_init(&r, b, 41, 0, 0);
    ck_assert_int_eq(craft__mp_read_array(&r, &n), CRAFT__MP_BAD);
    ck_assert_str_eq(r.reason, "nesting too deep");
    craft__mp_reader_destroy(&r);

    size_t len = tu_hex("c0 92 c0 01 a1 41", b, sizeof b);
    craft__mp_reader_init(&r, b, len, 0, 0);
    ck_assert(craft__mp_next_is_nil(&r));
    ck_assert(craft__mp_try_nil(&r));
    ck_assert_uint_eq(r.pos, 1);
    ck_assert(!craft__mp_next_is_nil(&r));
    ck_assert_int_eq(craft__mp_read_array(&r, &n), CRAFT__MP_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert(craft__mp_next_is_nil(&r));
    ck_assert(craft__mp_try_nil(&r));
    uint64_t v = 0;
    ck_assert_int_eq(craft__mp_read_uint(&r, &v), CRAFT__MP_OK);
    ck_assert_uint_eq(v, 1);
    ck_assert_int_eq(craft__mp_read_uint(&r, &v), CRAFT__MP_BAD); /* past the 2 */
    craft__mp_leave(&r);
    ck_assert_uint_eq(r.pos, 4);
    const uint8_t *s;
    size_t sl;
    ck_assert_int_eq(craft__mp_read_str(&r, &s, &sl), CRAFT__MP_OK);
    ck_assert_ptr_eq(s, b + 5); /* a view into the buffer, not a copy */
    ck_assert_uint_eq(r.pos, len);
    ck_assert_int_eq(craft__mp_read_str(&r, &s, &sl), CRAFT__MP_SHORT);
    craft__mp_reader_destroy(&r);
}
END_TEST

/* ---- scanner ---- */

START_TEST(test_scan_incremental)
{
    const ws_sample_t *smp = sample("AppendEntriesRequest with a LogCommand");
    const uint8_t *v = smp->bytes + 1; /* skip the rpc type byte */
    size_t vlen = smp->len - 1;
    craft__mp_scan_t s;

    craft__mp_scan_init(&s, 1, 1 << 20, 1 << 20, 16);
    ck_assert_int_eq(craft__mp_scan_run(&s, v, vlen), CRAFT__MP_OK);
    ck_assert_uint_eq(s.pos, vlen);

    /* byte by byte: SHORT with a need that never overshoots the value */
    craft__mp_scan_init(&s, 1, 1 << 20, 1 << 20, 16);
    for (size_t len = 0; len < vlen; len++) {
        ck_assert_int_eq(craft__mp_scan_run(&s, v, len), CRAFT__MP_SHORT);
        ck_assert_uint_gt(s.need, len);
        ck_assert_uint_le(s.need, vlen);
    }
    ck_assert_int_eq(craft__mp_scan_run(&s, v, vlen), CRAFT__MP_OK);
    ck_assert_uint_eq(s.pos, vlen);

    /* jumping straight to the announced need also completes */
    craft__mp_scan_init(&s, 1, 1 << 20, 1 << 20, 16);
    size_t len = 0, calls = 0;
    while (craft__mp_scan_run(&s, v, len) == CRAFT__MP_SHORT) {
        len = s.need;
        calls++;
    }
    ck_assert_uint_eq(s.pos, vlen);
    ck_assert_uint_lt(calls, vlen);

    /* two consecutive values (a response: error string + object) */
    const ws_sample_t *rsp = sample("error response");
    craft__mp_scan_init(&s, 2, 1 << 20, 1 << 20, 16);
    ck_assert_int_eq(craft__mp_scan_run(&s, rsp->bytes, rsp->len),
                     CRAFT__MP_OK);
    ck_assert_uint_eq(s.pos, rsp->len);
}
END_TEST

START_TEST(test_scan_limits)
{
    uint8_t b[64];
    craft__mp_scan_t s;
    /* a huge declared string is refused before any byte of it arrives */
    size_t n = tu_hex("db 7f ff ff ff", b, sizeof b);
    craft__mp_scan_init(&s, 1, 1 << 20, 1 << 20, 16);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, n), CRAFT__MP_BAD);
    ck_assert_ptr_nonnull(s.reason);
    /* within the string limit but over the total */
    n = tu_hex("da 01 00", b, sizeof b);
    craft__mp_scan_init(&s, 1, 100, 1000, 16);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, n), CRAFT__MP_BAD);
    /* a big string is waited for, not read */
    craft__mp_scan_init(&s, 1, 1000, 1000, 16);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, n), CRAFT__MP_SHORT);
    ck_assert_uint_eq(s.need, 259);
    /* huge array count: bounded by the total size */
    n = tu_hex("dd ff ff ff ff 00 00 00 00", b, sizeof b);
    craft__mp_scan_init(&s, 1, 8, 8, 16);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, n), CRAFT__MP_BAD);
    /* nesting */
    memset(b, 0x91, 32);
    b[32] = 0;
    craft__mp_scan_init(&s, 1, 1000, 1000, 32);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, 33), CRAFT__MP_OK);
    craft__mp_scan_init(&s, 1, 1000, 1000, 31);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, 33), CRAFT__MP_BAD);
    /* deeper than msgpack-c's decoder stack: refused whatever asked */
    memset(b, 0x91, 33);
    b[33] = 0;
    craft__mp_scan_init(&s, 1, 1000, 1000, 64);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, 34), CRAFT__MP_BAD);
    /* every type skips */
    n = tu_hex("ca 00 00 00 00 cb 00 00 00 00 00 00 00 00 d4 01 02 d8 01"
               " 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 c7 01 05 aa"
               " 81 a1\"k\" 92 c2 c3 e0",
               b, sizeof b);
    craft__mp_scan_init(&s, 6, 1000, 1000, 16);
    ck_assert_int_eq(craft__mp_scan_run(&s, b, n), CRAFT__MP_OK);
    ck_assert_uint_eq(s.pos, n - 1);
}
END_TEST

/* ---- configuration: golden bytes ---- */

/* WIRE.md §13: [{Voter,n1,10.0.0.1:8300},{Nonvoter,n2,10.0.0.2:8300}] */
static const char *WIRE_MD_CONFIG =
    "81 a7\"Servers\" 92 83 a7\"Address\"ad\"10.0.0.1:8300\" a2\"ID\"a2\"n1\" "
    "a8\"Suffrage\"00 83 a7\"Address\"ad\"10.0.0.2:8300\" a2\"ID\"a2\"n2\" "
    "a8\"Suffrage\"01";

START_TEST(test_config_golden_wire_md)
{
    uint8_t want[256];
    size_t n = tu_hex(WIRE_MD_CONFIG, want, sizeof want);
    ck_assert_uint_eq(n, 88); /* "88-byte example" */
    craft_server_t sv[2];
    set_server(&sv[0], "n1", "10.0.0.1:8300", CRAFT_VOTER);
    set_server(&sv[1], "n2", "10.0.0.2:8300", CRAFT_NONVOTER);
    craft_configuration_t c = {2, sv};
    expect_encoding(&c, want, n);

    craft_configuration_t out;
    ck_assert_int_eq(craft__configuration_decode(want, n, &out), 0);
    ck_assert_uint_eq(out.n, 2);
    check_server(&out, 0, "n1", "10.0.0.1:8300", CRAFT_VOTER);
    check_server(&out, 1, "n2", "10.0.0.2:8300", CRAFT_NONVOTER);
    craft_configuration_free(&out);
}
END_TEST

START_TEST(test_config_golden_samples)
{
    /* the LogConfiguration Data sample (n3 nonvoter) */
    const ws_sample_t *smp = sample("Configuration as stored");
    craft_server_t sv[3];
    set_server(&sv[0], "n1", "127.0.0.1:17001", CRAFT_VOTER);
    set_server(&sv[1], "n2", "127.0.0.1:17002", CRAFT_VOTER);
    set_server(&sv[2], "n3", "127.0.0.1:17003", CRAFT_NONVOTER);
    craft_configuration_t c = {3, sv};
    expect_encoding(&c, smp->bytes, smp->len);
    craft_configuration_t out;
    ck_assert_int_eq(craft__configuration_decode(smp->bytes, smp->len, &out), 0);
    ck_assert(out.n == 3);
    check_server(&out, 0, "n1", "127.0.0.1:17001", CRAFT_VOTER);
    check_server(&out, 1, "n2", "127.0.0.1:17002", CRAFT_VOTER);
    check_server(&out, 2, "n3", "127.0.0.1:17003", CRAFT_NONVOTER);
    craft_configuration_free(&out);

    /* the configuration blob inside the live InstallSnapshot capture
     * (raw16 da 00 85 at offset 0x10, 133 bytes of payload at 0x13) */
    smp = sample("InstallSnapshot (first captured) -- REQUEST");
    ck_assert_mem_eq(smp->bytes + 0x10, "\xda\x00\x85", 3);
    set_server(&sv[0], "n1", "127.0.0.1:18101", CRAFT_VOTER);
    set_server(&sv[1], "n2", "127.0.0.1:18102", CRAFT_VOTER);
    set_server(&sv[2], "n3", "127.0.0.1:18103", CRAFT_VOTER);
    expect_encoding(&c, smp->bytes + 0x13, 0x85);
    ck_assert_int_eq(craft__configuration_decode(smp->bytes + 0x13, 0x85, &out), 0);
    ck_assert(out.n == 3);
    check_server(&out, 2, "n3", "127.0.0.1:18103", CRAFT_VOTER);
    craft_configuration_free(&out);

    /* the configuration entry in the synthetic AppendEntries sample
     * (Data raw16 da 00 85 at offset 0x3e) */
    smp = sample("AppendEntriesRequest with a LogCommand");
    ck_assert_mem_eq(smp->bytes + 0x3e, "\xda\x00\x85", 3);
    ck_assert_int_eq(craft__configuration_decode(smp->bytes + 0x41, 0x85, &out), 0);
    ck_assert(out.n == 3);
    check_server(&out, 0, "n1", "127.0.0.1:17001", CRAFT_VOTER);
    check_server(&out, 2, "n3", "127.0.0.1:17003", CRAFT_NONVOTER);
    craft_configuration_free(&out);
}
END_TEST

START_TEST(test_config_empty)
{
    craft_configuration_t c = {0, NULL};
    uint8_t want[32];
    size_t n = tu_hex("81 a7\"Servers\" c0", want, sizeof want);
    expect_encoding(&c, want, n);
    craft_configuration_t out;
    ck_assert_int_eq(craft__configuration_decode(want, n, &out), 0);
    ck_assert_uint_eq(out.n, 0);
    ck_assert_ptr_null(out.servers);
    ck_assert_int_eq(decode_spec("81 a7\"Servers\" 90", &out), 0);
    ck_assert_uint_eq(out.n, 0);
}
END_TEST

/* ---- configuration: round trips ---- */

static char *rand_str(unsigned *seed, size_t maxlen)
{
    size_t len = (size_t)rand_r(seed) % (maxlen + 1);
    char *s = malloc(len + 1);
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < len; i++) {
        s[i] = (char)(1 + rand_r(seed) % 255); /* any byte but NUL */
    }
    s[len] = '\0';
    return s;
}

START_TEST(test_config_round_trip_random)
{
    unsigned seed = 0xc0dec;
    for (int iter = 0; iter < 300; iter++) {
        craft_configuration_t c = {0, NULL};
        size_t n = (size_t)rand_r(&seed) % 20;
        c.servers = calloc(n + 1, sizeof *c.servers);
        c.n = n;
        for (size_t i = 0; i < n; i++) {
            /* lengths across fixstr / raw16 boundaries, sometimes raw32 */
            size_t maxlen = (iter % 50 == 0 && i == 0) ? 70000 : 300;
            c.servers[i].id = rand_str(&seed, maxlen);
            c.servers[i].address = rand_str(&seed, 40);
            c.servers[i].suffrage =
                rand_r(&seed) % 2 ? CRAFT_VOTER : CRAFT_NONVOTER;
        }
        void *buf;
        size_t len;
        ck_assert_int_eq(craft__configuration_encode(&c, &buf, &len), 0);
        /* never str8 / bin markers at string positions: check via the
         * reader that every string is raw family by re-decoding */
        craft_configuration_t out;
        ck_assert_int_eq(craft__configuration_decode(buf, len, &out), 0);
        ck_assert_uint_eq(out.n, c.n);
        for (size_t i = 0; i < n; i++) {
            check_server(&out, i, c.servers[i].id, c.servers[i].address,
                         c.servers[i].suffrage);
        }
        /* re-encoding the decoded copy gives the same bytes */
        void *buf2;
        size_t len2;
        ck_assert_int_eq(craft__configuration_encode(&out, &buf2, &len2), 0);
        ck_assert_uint_eq(len2, len);
        ck_assert_mem_eq(buf2, buf, len);
        free(buf);
        free(buf2);
        craft_configuration_free(&out);
        craft_configuration_free(&c);
    }
}
END_TEST

/* ---- configuration: lenient about form ---- */

START_TEST(test_config_lenient)
{
    craft_configuration_t out;
    /* keys unsorted, unknown keys (with nested values) at both levels,
     * str8 / bin8 strings, ints as u64 / i16, str8 keys */
    ck_assert_int_eq(
        decode_spec("82 a5\"Extra\" 82 a1\"a\" 92 01 c0 a1\"b\" cb 00 00 00 00 00 00 00 00"
                    " a7\"Servers\" 92"
                    "   84 a8\"Suffrage\" cf 00 00 00 00 00 00 00 01 d9 02\"ID\" c4 02\"n9\""
                    "      a3\"Foo\" d6 ff 00 00 00 00 a7\"Address\" d9 03\"a:1\""
                    "   83 a7\"Address\" c5 00 03\"b:2\" a2\"ID\" da 00 02\"n8\""
                    "      a8\"Suffrage\" d1 00 00",
                    &out),
        0);
    ck_assert_uint_eq(out.n, 2);
    check_server(&out, 0, "n9", "a:1", CRAFT_NONVOTER);
    check_server(&out, 1, "n8", "b:2", CRAFT_VOTER);
    craft_configuration_free(&out);

    /* missing fields and nil strings are zero values; Staging -> nonvoter */
    ck_assert_int_eq(decode_spec("81 a7\"Servers\" 92 80 83 a7\"Address\" c0"
                                 " a2\"ID\" c0 a8\"Suffrage\" 02",
                                 &out),
                     0);
    ck_assert_uint_eq(out.n, 2);
    check_server(&out, 0, "", "", CRAFT_VOTER);
    check_server(&out, 1, "", "", CRAFT_NONVOTER);
    craft_configuration_free(&out);

    /* duplicate keys: the last one wins (go-msgpack), no leak */
    ck_assert_int_eq(decode_spec("82 a7\"Servers\" 91 82 a2\"ID\"a1\"x\" a2\"ID\"a1\"y\""
                                 " a7\"Servers\" 91 81 a2\"ID\"a1\"z\"",
                                 &out),
                     0);
    ck_assert_uint_eq(out.n, 1);
    ck_assert_str_eq(out.servers[0].id, "z");
    craft_configuration_free(&out);
}
END_TEST

/* ---- configuration: malformed ---- */

START_TEST(test_config_truncated_everywhere)
{
    uint8_t full[256];
    size_t n = tu_hex(WIRE_MD_CONFIG, full, sizeof full);
    for (size_t len = 0; len < n; len++) {
        /* a fresh heap copy of exactly `len` bytes so ASan catches any
         * read beyond the end */
        uint8_t *cut = malloc(len ? len : 1);
        memcpy(cut, full, len);
        craft_configuration_t out = {7, (craft_server_t *)cut};
        ck_assert_int_eq(craft__configuration_decode(cut, len, &out),
                         CRAFT_ECORRUPT);
        ck_assert_uint_eq(out.n, 0);
        ck_assert_ptr_null(out.servers);
        free(cut);
    }
    const ws_sample_t *smp = sample("Configuration as stored");
    for (size_t len = 0; len < smp->len; len++) {
        uint8_t *cut = malloc(len ? len : 1);
        memcpy(cut, smp->bytes, len);
        craft_configuration_t out;
        ck_assert_int_eq(craft__configuration_decode(cut, len, &out),
                         CRAFT_ECORRUPT);
        free(cut);
    }
    craft_configuration_t out;
    ck_assert_int_eq(craft__configuration_decode(NULL, 0, &out), CRAFT_ECORRUPT);
}
END_TEST

START_TEST(test_config_malformed)
{
    static const char *bad[] = {
        /* missing Servers */
        "80",
        "81 a5\"Other\" 90",
        /* root of the wrong type */
        "91 80", "c0", "a7\"Servers\"", "00",
        /* Servers of the wrong type */
        "81 a7\"Servers\" 81 a1\"x\" 00",
        "81 a7\"Servers\" a0",
        "81 a7\"Servers\" 05",
        /* server of the wrong type */
        "81 a7\"Servers\" 91 a0",
        "81 a7\"Servers\" 91 c0",
        /* field types */
        "81 a7\"Servers\" 91 81 a7\"Address\" 05",
        "81 a7\"Servers\" 91 81 a2\"ID\" 90",
        "81 a7\"Servers\" 91 81 a8\"Suffrage\" a1\"0\"",
        "81 a7\"Servers\" 91 81 a8\"Suffrage\" ca 00 00 00 00",
        "81 a7\"Servers\" 91 81 a8\"Suffrage\" c3",
        /* suffrage out of range */
        "81 a7\"Servers\" 91 81 a8\"Suffrage\" 03",
        "81 a7\"Servers\" 91 81 a8\"Suffrage\" ff",
        "81 a7\"Servers\" 91 81 a8\"Suffrage\" cf 80 00 00 00 00 00 00 00",
        /* non-string key */
        "81 01 90",
        "81 a7\"Servers\" 91 81 01 02",
        /* NUL inside an ID */
        "81 a7\"Servers\" 91 81 a2\"ID\" a3 6e 00 31",
        /* huge declared lengths */
        "81 a7\"Servers\" dd ff ff ff ff 80",
        "81 a7\"Servers\" 91 81 a2\"ID\" db ff ff ff ff 41",
        "81 db ff ff ff ff\"Servers\"",
        "df ff ff ff ff a7\"Servers\" 90",
        "81 a7\"Servers\" 91 df 7f ff ff ff",
        /* reserved byte */
        "81 a7\"Servers\" 91 81 a2\"ID\" c1",
        "c1",
        /* trailing bytes */
        "81 a7\"Servers\" 90 00",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        craft_configuration_t out;
        int rv = decode_spec(bad[i], &out);
        ck_assert_msg(rv == CRAFT_ECORRUPT, "case %zu (%s): %d", i, bad[i], rv);
        ck_assert_uint_eq(out.n, 0);
        ck_assert_ptr_null(out.servers);
    }
}
END_TEST

START_TEST(test_config_deep_nesting)
{
    /* an unknown key holding 15 nested arrays fits in the 16-level limit
     * (root map + 15) ... */
    uint8_t b[256];
    size_t n = tu_hex("82 a7\"Servers\" 90 a1\"x\"", b, sizeof b);
    size_t base = n;
    memset(b + n, 0x91, 15);
    n += 15;
    b[n++] = 0x00;
    craft_configuration_t out;
    ck_assert_int_eq(craft__configuration_decode(b, n, &out), 0);
    ck_assert_uint_eq(out.n, 0);
    /* ... one more level is refused */
    n = base;
    memset(b + n, 0x91, 16);
    n += 16;
    b[n++] = 0x00;
    ck_assert_int_eq(craft__configuration_decode(b, n, &out), CRAFT_ECORRUPT);
    /* thousands of levels: refused without recursion trouble */
    static uint8_t deep[100000];
    n = tu_hex("82 a7\"Servers\" 90 a1\"x\"", deep, sizeof deep);
    memset(deep + n, 0x91, sizeof deep - n - 1);
    deep[sizeof deep - 1] = 0;
    ck_assert_int_eq(craft__configuration_decode(deep, sizeof deep, &out),
                     CRAFT_ECORRUPT);
    memset(deep, 0x91, sizeof deep);
    ck_assert_int_eq(craft__configuration_decode(deep, sizeof deep, &out),
                     CRAFT_ECORRUPT);
}
END_TEST

static Suite *codec_suite(void)
{
    Suite *s = suite_create("codec");
    TCase *tc = tcase_create("writer");
    tcase_add_test(tc, test_put_uint_smallest_form);
    tcase_add_test(tc, test_put_int_forms);
    tcase_add_test(tc, test_put_str_raw_family);
    suite_add_tcase(s, tc);
    tc = tcase_create("reader");
    tcase_add_test(tc, test_reader_int_families);
    tcase_add_test(tc, test_reader_bool_and_strings);
    tcase_add_test(tc, test_reader_limits);
    tcase_add_test(tc, test_reader_msgpack_c_tree);
    tcase_add_test(tc, test_scan_incremental);
    tcase_add_test(tc, test_scan_limits);
    suite_add_tcase(s, tc);
    tc = tcase_create("configuration");
    tcase_add_test(tc, test_config_golden_wire_md);
    tcase_add_test(tc, test_config_golden_samples);
    tcase_add_test(tc, test_config_empty);
    tcase_add_test(tc, test_config_round_trip_random);
    tcase_add_test(tc, test_config_lenient);
    tcase_add_test(tc, test_config_truncated_everywhere);
    tcase_add_test(tc, test_config_malformed);
    tcase_add_test(tc, test_config_deep_nesting);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(codec_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
