/* fuzz_parser.c -- libFuzzer harness for the request parser, framing, environ packing and the
 * chunked decoder. Built by run.sh with clang -fsanitize=fuzzer,address,undefined.
 *
 * Besides "no crash, no sanitizer report", it checks properties:
 *   - the SIMD and scalar parsers (parser.c compiled twice, see run.sh) give identical results;
 *   - feeding the same bytes in pieces (last_len chained) ends like the whole parse: the same head
 *     on success, an error when the whole parse errs, PARTIAL when it is PARTIAL;
 *   - sp_env_pack's block is the fixed values then pairs of NUL-terminated entries, within cap;
 *   - the chunked decoder gives the same data, status and consumed count for any split.
 * Every buffer handed to the code under test is malloc'ed at its exact size, so ASan sees an
 * over-read by even one byte.
 */
#include "sp.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef SP_FUZZ_DIFFERENTIAL
int sp_parse_request_scalar(const char *buf, size_t len, size_t last_len, const sp_limits *lim,
                            sp_request_head *req);
int sp_request_framing_scalar(const sp_request_head *req, sp_framing *f);
#endif

#define MAXH 128
#include <stdio.h>
#define ASSERT(c) do { if (!(c)) { fprintf(stderr, "property failed: %s (line %d)\n", #c, __LINE__); __builtin_trap(); } } while (0)

static const sp_limits tiny = {32, 24, 160, 4};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static char *dup_exact(const uint8_t *p, size_t n)
{
    char *b = malloc(n ? n : 1);
    ASSERT(b);
    if (n) memcpy(b, p, n);
    return b;
}

static int parse_copy(const uint8_t *p, size_t n, size_t last, const sp_limits *lim,
                      sp_request_head *rh, sp_header *h, char **keep)
{
    char *b = dup_exact(p, n);
    rh->headers = h;
    rh->num_headers = MAXH;
    int rc = sp_parse_request(b, n, last, lim, rh);
    if (keep) *keep = b;
    else free(b);
    return rc;
}

static void check_chunked(const uint8_t *p, size_t n, uint64_t seed)
{
    /* whole */
    sp_chunked d1;
    memset(&d1, 0, sizeof d1);
    d1.max_ext = seed & 1 ? 8 : 0;
    char *b = dup_exact(p, n);
    size_t out1 = 0, cons1 = 0;
    int rc1 = sp_chunked_decode(&d1, b, n, &out1, &cons1);
    ASSERT(out1 <= cons1 && cons1 <= n);
    if (rc1 == SP_PARTIAL) ASSERT(cons1 == n);

    /* random pieces */
    sp_chunked d2;
    memset(&d2, 0, sizeof d2);
    d2.max_ext = d1.max_ext;
    char *acc = malloc(n ? n : 1);
    ASSERT(acc);
    size_t acc_len = 0, pos = 0, cons2 = 0;
    int rc2 = SP_PARTIAL;
    while (pos < n && rc2 == SP_PARTIAL) {
        size_t piece = 1 + (size_t)(rng_next(&seed) % 7);
        if (piece > n - pos) piece = n - pos;
        char *pb = dup_exact(p + pos, piece);
        size_t o = 0, c = 0;
        rc2 = sp_chunked_decode(&d2, pb, piece, &o, &c);
        if (rc2 >= SP_PARTIAL) {
            ASSERT(o <= c && c <= piece);
            memcpy(acc + acc_len, pb, o);
            acc_len += o;
            cons2 += c;
        }
        free(pb);
        pos += piece;
    }
    if (n == 0) rc2 = rc1;  /* nothing fed */
    ASSERT(rc1 == rc2);
    if (rc1 >= SP_PARTIAL) {
        ASSERT(out1 == acc_len && memcmp(b, acc, acc_len) == 0);
        ASSERT(cons1 == cons2);
    }
    free(acc);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t flags = data[0];
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    const sp_limits *lim = (flags & 1) ? &tiny : NULL;
    uint64_t seed = 0x9e3779b97f4a7c15u ^ (uint64_t)size * 0x100000001b3u ^ flags;

    if (flags & 0x80) {  /* chunked decoder only, on the raw bytes */
        check_chunked(p, n, seed);
        return 0;
    }

    sp_header h1[MAXH], h2[MAXH];
    sp_request_head r1, r2;
    char *b1 = NULL;
    int rc = parse_copy(p, n, 0, lim, &r1, h1, &b1);
    ASSERT(rc == SP_PARTIAL || rc > 0 || rc == -400 || rc == -414 || rc == -431 || rc == -501 ||
           rc == -505);
    if (rc > 0) ASSERT((size_t)rc <= n);

#ifdef SP_FUZZ_DIFFERENTIAL
    {
        char *bs = dup_exact(p, n);
        sp_request_head rs;
        sp_header hs[MAXH];
        rs.headers = hs;
        rs.num_headers = MAXH;
        int rcs = sp_parse_request_scalar(bs, n, 0, lim, &rs);
        ASSERT(rcs == rc);
        if (rc > 0) {
            ASSERT(rs.method_len == r1.method_len && rs.target_len == r1.target_len);
            ASSERT(rs.minor_version == r1.minor_version && rs.num_headers == r1.num_headers);
            for (size_t i = 0; i < rs.num_headers; i++) {
                ASSERT(hs[i].name - bs == h1[i].name - b1 && hs[i].name_len == h1[i].name_len);
                ASSERT(hs[i].value - bs == h1[i].value - b1 && hs[i].value_len == h1[i].value_len);
            }
            sp_framing fa, fb;
            ASSERT(sp_request_framing_scalar(&rs, &fa) == sp_request_framing(&r1, &fb));
        }
        free(bs);
    }
#endif

    /* The same bytes in pieces, as a slow client sends them. */
    {
        size_t last = 0, k = 0;
        int inc = SP_PARTIAL;
        while (k < n && inc == SP_PARTIAL) {
            k += 1 + (size_t)(rng_next(&seed) % 9);
            if (k > n) k = n;
            inc = parse_copy(p, k, last, lim, &r2, h2, NULL);
            last = k;
        }
        if (n == 0) inc = rc;
        if (rc > 0) ASSERT(inc == rc && r2.num_headers == r1.num_headers);
        else if (rc == SP_PARTIAL) ASSERT(inc == SP_PARTIAL);
        else ASSERT(inc < SP_PARTIAL);
    }

    if (rc > 0) {
        sp_framing f;
        int fr = sp_request_framing(&r1, &f);
        ASSERT(fr == 0 || fr == -400 || fr == -501);
        if (fr == 0) ASSERT(!(f.chunked && f.content_length >= 0));

        size_t cap = (flags & 2) ? (size_t)(rng_next(&seed) % 256) : 8192;
        char *out = malloc(cap ? cap : 1);
        ASSERT(out);
        ssize_t e = sp_env_pack(&r1, out, cap);
        ASSERT(e == -400 || e == -431 || (e > 0 && (size_t)e <= cap));
        if (e > 0) {
            size_t nuls = 0;
            for (ssize_t i = 0; i < e; i++) nuls += out[i] == '\0';
            ASSERT(out[e - 1] == '\0' && nuls >= SP_ENV_NFIXED && (nuls - SP_ENV_NFIXED) % 2 == 0);
        }
        free(out);

        if (fr == 0 && f.chunked) check_chunked(p + rc, n - (size_t)rc, seed);
    }
    free(b1);
    return 0;
}
