/* fuzz_proxy.c -- libFuzzer harness for the PROXY protocol preamble parser (proxy.c). Built by
 * run.sh (FUZZ_TARGET=proxy) with clang -fsanitize=fuzzer,address,undefined.
 *
 * Besides "no crash, no sanitizer report", it checks properties:
 *   - the answer is SP_PARTIAL, -400, or a byte count within the input and the protocol's bound,
 *     with a known family;
 *   - prefixes agree with the whole (the server re-parses growing prefixes): every prefix shorter
 *     than a preamble is PARTIAL and every longer one gives the same count and address; a prefix
 *     of garbage is PARTIAL or -400, never a preamble.
 * Every buffer is malloc'ed at its exact size, so ASan sees an over-read by even one byte.
 */
#include "sp.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT(c) do { if (!(c)) { fprintf(stderr, "property failed: %s (line %d)\n", #c, __LINE__); __builtin_trap(); } } while (0)

static int parse_copy(const uint8_t *p, size_t n, sp_proxy_addr *a)
{
    char *b = malloc(n ? n : 1);
    ASSERT(b);
    if (n) memcpy(b, p, n);
    int rc = sp_parse_proxy(b, n, a);
    free(b);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sp_proxy_addr whole, part;
    int rc = parse_copy(data, size, &whole);
    ASSERT(rc == SP_PARTIAL || rc == -400 || (rc > 0 && (size_t)rc <= size));
    if (rc > 0) {
        ASSERT(whole.version == 1 || whole.version == 2);
        ASSERT(whole.family == SP_PROXY_KEEP || whole.family == SP_PROXY_INET || whole.family == SP_PROXY_INET6);
        ASSERT(rc <= (whole.version == 1 ? SP_PROXY_V1_MAX : SP_PROXY_V2_MAX));
    }
    /* A few prefixes, chosen from the input's own bytes so the fuzzer can steer them. */
    size_t cuts[4] = { size / 2, size ? size - 1 : 0, size > 16 ? 16 : size, size > 2 ? data[0] % size : 0 };
    for (int i = 0; i < 4; i++) {
        size_t k = cuts[i];
        int r = parse_copy(data, k, &part);
        if (rc > 0 && k < (size_t)rc) ASSERT(r == SP_PARTIAL);
        else if (rc > 0) ASSERT(r == rc && memcmp(&part, &whole, sizeof(part)) == 0);
        else if (rc == SP_PARTIAL) ASSERT(r == SP_PARTIAL);
        else ASSERT(r == SP_PARTIAL || r == -400);
    }
    return 0;
}
