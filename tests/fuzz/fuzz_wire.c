/* libFuzzer target: the decoders that read hostile bytes from the network
 * (TCP transport requests and responses) and from log entries
 * (configurations). The first input byte picks the decoder, the rest is
 * the frame. A run must never crash, leak or hang; every input either
 * decodes (and is freed) or is refused with an error code.
 *
 *   CC=clang meson setup build-fuzz -Dfuzzers=true -Db_sanitize=address,undefined
 *   ninja -C build-fuzz tests/fuzz/fuzz_wire tests/fuzz/fuzz_wire_corpus
 *   build-fuzz/tests/fuzz/fuzz_wire_corpus corpus   # golden frames as seeds
 *   build-fuzz/tests/fuzz/fuzz_wire -max_total_time=180 corpus
 */
#include <stdint.h>
#include <string.h>

#include "lib/codec.h"
#include "transports/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0] % 8;
    data++;
    size--;
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    size_t used = 0;
    if (mode == 0) {
        craft_rpc_t rpc;
        memset(&rpc, 0, sizeof rpc);
        if (craft__wire_decode_request(&d, data, size, &rpc, &used) == 0) {
            craft__wire_request_free(&rpc);
        }
    } else if (mode <= 5) {
        craft__wire_response_t resp;
        memset(&resp, 0, sizeof resp);
        if (craft__wire_decode_response(&d, (craft_rpc_type_t)(mode - 1), data, size,
                                        &resp, &used) == 0) {
            craft__wire_response_free(&resp);
        }
    } else {
        craft_configuration_t c;
        if (craft__configuration_decode(data, size, &c) == 0) {
            craft_configuration_free(&c);
        }
    }
    return 0;
}
