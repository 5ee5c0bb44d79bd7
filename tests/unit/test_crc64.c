/* stores/crc64.c: CRC-64/ECMA-182 with Go's crc64.ECMA conventions. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stores/crc64.h"

/* Bit-at-a-time reference, straight from the definition. */
static uint64_t crc64_bitwise(uint64_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++) {
            crc = (crc & 1) ? (crc >> 1) ^ 0xC96C5795D7870F42ULL : crc >> 1;
        }
    }
    return ~crc;
}

START_TEST(test_check_value)
{
    /* The catalogue check value of CRC-64/XZ, which is what Go's
     * crc64.Checksum(data, crc64.MakeTable(crc64.ECMA)) returns. */
    ck_assert_uint_eq(craft__crc64(0, "123456789", 9), 0x995DC9BBDF1939FAULL);
}
END_TEST

START_TEST(test_empty)
{
    ck_assert_uint_eq(craft__crc64(0, "", 0), 0);
    ck_assert_uint_eq(craft__crc64(0x1234, NULL, 0), 0x1234);
}
END_TEST

START_TEST(test_matches_bitwise)
{
    unsigned char buf[1031];
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < sizeof buf; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
    /* Every length and start offset up to 40 covers the byte tail and the
     * unaligned 8-byte loop. */
    for (size_t off = 0; off < 9; off++) {
        for (size_t n = 0; n + off <= 40; n++) {
            ck_assert_uint_eq(craft__crc64(0, buf + off, n),
                              crc64_bitwise(0, buf + off, n));
        }
    }
    ck_assert_uint_eq(craft__crc64(0, buf, sizeof buf),
                      crc64_bitwise(0, buf, sizeof buf));
}
END_TEST

START_TEST(test_chaining)
{
    const char *s = "The quick brown fox jumps over the lazy dog";
    size_t n = strlen(s);
    uint64_t whole = craft__crc64(0, s, n);
    for (size_t cut = 0; cut <= n; cut++) {
        uint64_t c = craft__crc64(0, s, cut);
        c = craft__crc64(c, s + cut, n - cut);
        ck_assert_uint_eq(c, whole);
    }
    ck_assert_uint_eq(whole, crc64_bitwise(0, (const unsigned char *)s, n));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("crc64");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_check_value);
    tcase_add_test(tc, test_empty);
    tcase_add_test(tc, test_matches_bitwise);
    tcase_add_test(tc, test_chaining);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
