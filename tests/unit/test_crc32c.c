/* stores/crc32c.c: CRC-32C, the hardware path and the tables alike. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stores/crc32c.h"

/* Bit-at-a-time reference, straight from the definition. */
static uint32_t crc32c_bitwise(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++) {
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
    }
    return ~crc;
}

static void fill(unsigned char *buf, size_t n)
{
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
}

START_TEST(test_check_value)
{
    /* The catalogue check value of CRC-32/ISCSI (RFC 3720 B.4). */
    ck_assert_uint_eq(craft__crc32c(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(craft__crc32c_sw(0, "123456789", 9), 0xE3069283u);
    /* RFC 3720 B.4: 32 bytes of zeros, of 0xff. */
    unsigned char z[32];
    memset(z, 0, sizeof z);
    ck_assert_uint_eq(craft__crc32c(0, z, sizeof z), 0x8A9136AAu);
    memset(z, 0xff, sizeof z);
    ck_assert_uint_eq(craft__crc32c(0, z, sizeof z), 0x62A8AB43u);
}
END_TEST

START_TEST(test_empty)
{
    ck_assert_uint_eq(craft__crc32c(0, "", 0), 0);
    ck_assert_uint_eq(craft__crc32c(0x1234, NULL, 0), 0x1234);
    ck_assert_uint_eq(craft__crc32c_sw(0x1234, NULL, 0), 0x1234);
}
END_TEST

START_TEST(test_matches_bitwise)
{
    unsigned char buf[1031];
    fill(buf, sizeof buf);
    /* Every length and start offset up to 40 covers the byte tail and the
     * unaligned 8-byte loop of both implementations. */
    for (size_t off = 0; off < 9; off++) {
        for (size_t n = 0; n + off <= 40; n++) {
            uint32_t want = crc32c_bitwise(0, buf + off, n);
            ck_assert_uint_eq(craft__crc32c(0, buf + off, n), want);
            ck_assert_uint_eq(craft__crc32c_sw(0, buf + off, n), want);
        }
    }
    uint32_t want = crc32c_bitwise(0, buf, sizeof buf);
    ck_assert_uint_eq(craft__crc32c(0, buf, sizeof buf), want);
    ck_assert_uint_eq(craft__crc32c_sw(0, buf, sizeof buf), want);
}
END_TEST

START_TEST(test_chaining)
{
    unsigned char buf[300];
    fill(buf, sizeof buf);
    uint32_t whole = crc32c_bitwise(0, buf, sizeof buf);
    for (size_t cut = 0; cut <= sizeof buf; cut += 7) {
        uint32_t c = craft__crc32c(0, buf, cut);
        c = craft__crc32c(c, buf + cut, sizeof buf - cut);
        ck_assert_uint_eq(c, whole);
        /* The two implementations chain into each other. */
        c = craft__crc32c_sw(0, buf, cut);
        c = craft__crc32c(c, buf + cut, sizeof buf - cut);
        ck_assert_uint_eq(c, whole);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("crc32c");
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
