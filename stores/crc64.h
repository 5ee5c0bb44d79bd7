/* CRC-64/ECMA-182 as Go's hash/crc64 computes it with crc64.MakeTable(
 * crc64.ECMA): reflected polynomial 0xC96C5795D7870F42, initial value and
 * final xor all ones (the catalogue's CRC-64/XZ). hashicorp's
 * FileSnapshotStore checksums state.bin with it. */
#ifndef CRAFT_STORES_CRC64_H
#define CRAFT_STORES_CRC64_H

#include <stddef.h>
#include <stdint.h>

/* Continues a checksum like Go's crc64.Update: start with crc = 0, feed the
 * result of each call into the next; the value after the last call is the
 * checksum of the concatenated input. craft__crc64(0, "123456789", 9) ==
 * 0x995DC9BBDF1939FA. Thread-safe. */
uint64_t craft__crc64(uint64_t crc, const void *buf, size_t len);

#endif
