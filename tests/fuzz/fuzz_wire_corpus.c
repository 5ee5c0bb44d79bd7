/* Writes every golden frame of tests/unit/wire_samples.h (real hashicorp
 * traffic) into DIR as seeds for fuzz_wire, with the mode byte each needs:
 * 0 for a request, 1 + rpc type for a response (tried for every type). */
#include <stdio.h>
#include <string.h>

#include "tests/unit/wire_samples.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    int written = 0;
    for (size_t i = 0; i < WS_N_SAMPLES; i++) {
        int response = strstr(ws_samples[i].title, "RESPONSE") != NULL;
        for (unsigned char mode = 0; mode <= 5; mode++) {
            if ((mode == 0) == (response != 0)) {
                continue;
            }
            char path[4096];
            snprintf(path, sizeof path, "%s/sample%zu-%u", argv[1], i, mode);
            FILE *f = fopen(path, "wb");
            if (f == NULL) {
                perror(path);
                return 1;
            }
            fwrite(&mode, 1, 1, f);
            fwrite(ws_samples[i].bytes, 1, ws_samples[i].len, f);
            fclose(f);
            written++;
        }
    }
    printf("%d seeds in %s\n", written, argv[1]);
    return 0;
}
