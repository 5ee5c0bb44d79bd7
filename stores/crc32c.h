/* CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and
 * final xor all ones (the catalogue's CRC-32/ISCSI). The sqlite LogStore
 * checksums every entry with it. */
#ifndef CRAFT_STORES_CRC32C_H
#define CRAFT_STORES_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues a checksum: start with crc = 0, feed the result of each call into
 * the next; the value after the last call is the checksum of the
 * concatenated input. craft__crc32c(0, "123456789", 9) == 0xE3069283.
 * Uses the SSE4.2 crc32 instruction where the CPU has it, slicing-by-8
 * tables otherwise; both give the same values. Thread-safe. */
uint32_t craft__crc32c(uint32_t crc, const void *buf, size_t len);

/* The table-driven implementation alone, whatever the CPU (for tests). */
uint32_t craft__crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif
