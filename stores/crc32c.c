/* CRC-32C, slicing-by-8, and the SSE4.2 instruction where there is one. */
#include "stores/crc32c.h"

#include <pthread.h>
#include <string.h>

#define CRC32C_REFLECTED 0x82F63B78u

static uint32_t crc32c_table[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
static int crc32c_have_hw;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC32C_X86 1
#endif

static void crc32c_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int j = 0; j < 8; j++) {
            crc = (crc & 1) ? (crc >> 1) ^ CRC32C_REFLECTED : crc >> 1;
        }
        crc32c_table[0][i] = crc;
    }
    for (unsigned i = 0; i < 256; i++) {
        uint32_t crc = crc32c_table[0][i];
        for (int t = 1; t < 8; t++) {
            crc = crc32c_table[0][crc & 0xff] ^ (crc >> 8);
            crc32c_table[t][i] = crc;
        }
    }
#ifdef CRC32C_X86
    __builtin_cpu_init();
    crc32c_have_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* On the inverted register: no pre- or post-conditioning here. */
static uint32_t crc32c_sw_raw(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len >= 8) {
        /* Byte order independent: assemble the little-endian words by hand. */
        uint32_t lo = (uint32_t)p[0] | (uint32_t)p[1] << 8 |
                      (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 |
                      (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        lo ^= crc;
        crc = crc32c_table[7][lo & 0xff] ^ crc32c_table[6][(lo >> 8) & 0xff] ^
              crc32c_table[5][(lo >> 16) & 0xff] ^ crc32c_table[4][lo >> 24] ^
              crc32c_table[3][hi & 0xff] ^ crc32c_table[2][(hi >> 8) & 0xff] ^
              crc32c_table[1][(hi >> 16) & 0xff] ^ crc32c_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        crc = crc32c_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
        p++;
        len--;
    }
    return crc;
}

#ifdef CRC32C_X86
__attribute__((target("sse4.2"))) static uint32_t
crc32c_hw_raw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, sizeof w); /* x86 is little-endian; unaligned is fine */
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len > 0) {
        c32 = __builtin_ia32_crc32qi(c32, *p);
        p++;
        len--;
    }
    return c32;
}
#endif

uint32_t craft__crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc32c_once, crc32c_init);
    return ~crc32c_sw_raw(~crc, buf, len);
}

uint32_t craft__crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc32c_once, crc32c_init);
#ifdef CRC32C_X86
    if (crc32c_have_hw) {
        return ~crc32c_hw_raw(~crc, buf, len);
    }
#endif
    return ~crc32c_sw_raw(~crc, buf, len);
}
