/* proxy.c -- the PROXY protocol preamble a load balancer (HAProxy, AWS NLB, ...) sends before the
 * first request, to say who the client is (HAProxy's proxy-protocol.txt).
 *
 * Two forms, told apart by their first byte:
 *   v1, text:   "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" (TCP6 likewise), or
 *               "PROXY UNKNOWN<anything>\r\n"; at most 107 bytes in all.
 *   v2, binary: a 12-byte signature, version/command, family/transport, a 16-bit length, then the
 *               addresses and optional TLVs (type, 16-bit length, value), which we only step over.
 *
 * Like the request parser, the function is pure and re-run on the whole buffer as bytes arrive: a
 * preamble is small and comes once per connection, so no state is kept between calls. Bytes that
 * cannot begin a preamble are refused at once (an HTTP client sent to a PROXY listener is closed
 * without waiting for its whole head).
 */
#define _DEFAULT_SOURCE 1
#include <arpa/inet.h>
#include <string.h>

#include "sp.h"
#include "sp_limits.h"

#define BAD (-SP_HTTP_BAD_REQUEST)

static const char v2_sig[12] = { '\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n' };
#define V2_HEAD 16                 /* signature, ver_cmd, fam, len */
#define V2_LEN_INET 12             /* 2 x 4-byte address, 2 x port */
#define V2_LEN_INET6 36            /* 2 x 16-byte address, 2 x port */
#define V2_LEN_UNIX 216            /* 2 x 108-byte path */
#define V1_ADDR_MAX 45             /* INET6_ADDRSTRLEN - 1: the longest address text */

/* One decimal port, 1-5 digits, <= 65535. Returns 0 or -1. */
static int v1_port(const char *p, size_t n, uint16_t *out) {
    if (n == 0 || n > 5) return -1;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    if (v > 65535) return -1;
    *out = (uint16_t)v;
    return 0;
}

/* One address of family af; inet_pton wants a C string, so the token is copied (bounded). */
static int v1_addr(const char *p, size_t n, int af, unsigned char *out) {
    char tmp[V1_ADDR_MAX + 1];
    if (n == 0 || n > V1_ADDR_MAX) return -1;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    return inet_pton(af, tmp, out) == 1 ? 0 : -1;
}

/* The next space-separated token of line[*pos..end): exactly one space between fields. */
static int v1_token(const char *line, size_t end, size_t *pos, const char **tok, size_t *n) {
    size_t i = *pos;
    if (i >= end) return -1;
    size_t start = i;
    while (i < end && line[i] != ' ') i++;
    if (i == start) return -1;   /* two spaces in a row, or a trailing space */
    *tok = line + start;
    *n = i - start;
    *pos = i < end ? i + 1 : i;
    if (i < end && *pos == end) return -1;   /* a space before the CRLF */
    return 0;
}

static int parse_v1(const char *buf, size_t len, sp_proxy_addr *out) {
    static const char magic[] = "PROXY ";
    size_t scan = len < SP_PROXY_V1_MAX ? len : SP_PROXY_V1_MAX;
    size_t m = scan < 6 ? scan : 6;
    if (memcmp(buf, magic, m) != 0) return BAD;
    size_t lf = 0;
    int found = 0;
    for (size_t i = 0; i < scan; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if (ch == '\n') { lf = i; found = 1; break; }
        /* Only printable text and the CR of the final CRLF. */
        if (ch == '\r') { if (i + 1 < scan && buf[i + 1] != '\n') return BAD; continue; }
        if (ch < 0x20 || ch > 0x7e) return BAD;
    }
    if (!found) return len >= SP_PROXY_V1_MAX ? BAD : SP_PARTIAL;
    if (lf < 7 || buf[lf - 1] != '\r') return BAD;   /* "PROXY X\r\n" at the least */
    size_t end = lf - 1, pos = 6;
    const char *tok;
    size_t n;
    memset(out, 0, sizeof(*out));
    out->version = 1;
    /* "UNKNOWN": the balancer could not tell (or the connection is its own); whatever follows up
     * to the CRLF is to be ignored (proxy-protocol.txt, 2.1). */
    if (end - pos >= 7 && memcmp(buf + pos, "UNKNOWN", 7) == 0 && (end - pos == 7 || buf[pos + 7] == ' ')) {
        out->family = SP_PROXY_KEEP;
        return (int)lf + 1;
    }
    if (v1_token(buf, end, &pos, &tok, &n) < 0 || n != 4) return BAD;
    int af;
    if (memcmp(tok, "TCP4", 4) == 0) { af = AF_INET; out->family = SP_PROXY_INET; }
    else if (memcmp(tok, "TCP6", 4) == 0) { af = AF_INET6; out->family = SP_PROXY_INET6; }
    else return BAD;
    unsigned char dst[16];
    uint16_t dport;
    if (v1_token(buf, end, &pos, &tok, &n) < 0 || v1_addr(tok, n, af, out->src) < 0) return BAD;
    if (v1_token(buf, end, &pos, &tok, &n) < 0 || v1_addr(tok, n, af, dst) < 0) return BAD;
    if (v1_token(buf, end, &pos, &tok, &n) < 0 || v1_port(tok, n, &out->src_port) < 0) return BAD;
    if (v1_token(buf, end, &pos, &tok, &n) < 0 || v1_port(tok, n, &dport) < 0) return BAD;
    if (pos != end) return BAD;   /* a sixth field */
    return (int)lf + 1;
}

static int parse_v2(const char *buf, size_t len, sp_proxy_addr *out) {
    size_t m = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
    if (memcmp(buf, v2_sig, m) != 0) return BAD;
    const unsigned char *u = (const unsigned char *)buf;
    /* Version 2 in the high nibble; command 0 LOCAL or 1 PROXY. */
    if (len > 12 && ((u[12] >> 4) != 2 || (u[12] & 0xF) > 1)) return BAD;
    /* Family 0-3 (UNSPEC, INET, INET6, UNIX), transport 0-2 (UNSPEC, STREAM, DGRAM). */
    if (len > 13 && ((u[13] >> 4) > 3 || (u[13] & 0xF) > 2)) return BAD;
    if (len < V2_HEAD) return SP_PARTIAL;
    size_t body = (size_t)u[14] << 8 | u[15];
    if (V2_HEAD + body > SP_PROXY_V2_MAX) return BAD;
    if (len < V2_HEAD + body) return SP_PARTIAL;
    int local = (u[12] & 0xF) == 0;
    int fam = u[13] >> 4;
    size_t alen = fam == 1 ? V2_LEN_INET : fam == 2 ? V2_LEN_INET6 : fam == 3 ? V2_LEN_UNIX : 0;
    if (body < alen) return BAD;
    /* TLVs fill the rest exactly: a length that runs past the end is a broken sender. */
    size_t p = V2_HEAD + alen, end = V2_HEAD + body;
    while (p < end) {
        if (end - p < 3) return BAD;
        size_t tl = (size_t)u[p + 1] << 8 | u[p + 2];
        if (tl > end - p - 3) return BAD;
        p += 3 + tl;
    }
    memset(out, 0, sizeof(*out));
    out->version = 2;
    /* LOCAL: the balancer's own connection (a health check): its address is the real one. UNSPEC
     * and AF_UNIX carry no address a REMOTE_ADDR could hold. */
    if (local || fam == 0 || fam == 3) {
        out->family = SP_PROXY_KEEP;
    } else if (fam == 1) {
        out->family = SP_PROXY_INET;
        memcpy(out->src, u + V2_HEAD, 4);
        out->src_port = (uint16_t)(u[V2_HEAD + 8] << 8 | u[V2_HEAD + 9]);
    } else {
        out->family = SP_PROXY_INET6;
        memcpy(out->src, u + V2_HEAD, 16);
        out->src_port = (uint16_t)(u[V2_HEAD + 32] << 8 | u[V2_HEAD + 33]);
    }
    return (int)end;
}

int sp_parse_proxy(const char *buf, size_t len, sp_proxy_addr *out) {
    if (len == 0) return SP_PARTIAL;
    if (buf[0] == 'P') return parse_v1(buf, len, out);
    if (buf[0] == '\r') return parse_v2(buf, len, out);
    return BAD;
}
