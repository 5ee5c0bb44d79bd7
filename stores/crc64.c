/* CRC-64/ECMA-182 (Go's crc64.ECMA table), slicing-by-8. */
#include "stores/crc64.h"

#include <pthread.h>

#define CRC64_ECMA_REFLECTED 0xC96C5795D7870F42ULL

static uint64_t crc64_table[8][256];
static pthread_once_t crc64_once = PTHREAD_ONCE_INIT;

static void crc64_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint64_t crc = i;
        for (int j = 0; j < 8; j++) {
            crc = (crc & 1) ? (crc >> 1) ^ CRC64_ECMA_REFLECTED : crc >> 1;
        }
        crc64_table[0][i] = crc;
    }
    for (unsigned i = 0; i < 256; i++) {
        uint64_t crc = crc64_table[0][i];
        for (int t = 1; t < 8; t++) {
            crc = crc64_table[0][crc & 0xff] ^ (crc >> 8);
            crc64_table[t][i] = crc;
        }
    }
}

uint64_t craft__crc64(uint64_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    pthread_once(&crc64_once, crc64_init);
    crc = ~crc;
    while (len >= 8) {
        /* Byte order independent: assemble the little-endian word by hand. */
        uint64_t w = (uint64_t)p[0] | (uint64_t)p[1] << 8 |
                     (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
                     (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
                     (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
        crc ^= w;
        crc = crc64_table[7][crc & 0xff] ^ crc64_table[6][(crc >> 8) & 0xff] ^
              crc64_table[5][(crc >> 16) & 0xff] ^
              crc64_table[4][(crc >> 24) & 0xff] ^
              crc64_table[3][(crc >> 32) & 0xff] ^
              crc64_table[2][(crc >> 40) & 0xff] ^
              crc64_table[1][(crc >> 48) & 0xff] ^ crc64_table[0][crc >> 56];
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        crc = crc64_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
        p++;
        len--;
    }
    return ~crc;
}
