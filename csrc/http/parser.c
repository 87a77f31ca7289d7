/* parser.c -- HTTP/1.1 request head parser, framing validator and chunked body decoder.
 *
 * Theory of operation
 * -------------------
 * sp_parse_request() is stateless. The caller keeps appending received bytes to one buffer and
 * calls it again with the whole buffer and the previous length (last_len). Two phases:
 *
 *   1. A cheap completeness check scans only the new bytes (from last_len - 3, so a terminator
 *      split across reads is found) for the blank line "\r\n\r\n". Every LF it meets must follow
 *      a CR: a bare LF is answered with 400 at once (RFC 9112 2.2 lets us reject it, and lenient
 *      line endings are a classic request-smuggling lever). While the head is incomplete, the
 *      limits are enforced on what has arrived (request line, current field line, head size), so
 *      a slow sender can never make the caller buffer more than the limits.
 *   2. Once the blank line is there, one strict pass over [start, end) validates and records the
 *      request line and every field line. Each line is known to end before `end`, so the scans
 *      need no PARTIAL handling.
 *
 * The common case, a whole head in the first read (last_len 0), skips phase 1: the strict pass
 * runs first, up to the end of the input, and a head it finds wholly valid is the answer (the
 * same one phases 1 and 2 would give: see parse_lines). Anything else it leaves to the two phases.
 * The scans of the strict pass look at 16 bytes at a time with SSE2 or NEON (see "Scanning").
 *
 * Outputs are pointers into the caller's buffer; nothing is allocated, nothing is global.
 *
 * When a head holds several defects, which status is reported may depend on how its bytes
 * arrived (the incremental limit checks can fire before the full pass would have found another
 * defect). Either way the request is refused.
 *
 * sp_chunked_decode() is the one piece with state: a byte-level state machine (struct sp_chunked)
 * over size lines, extensions, data, the CRLF after data, and the trailer section. Data is moved
 * to the front of the caller's buffer in place, so any split of the input works.
 */
#include "sp.h"
#include "sp_limits.h"
#include "unaligned.h"

#include <limits.h>
#include <string.h>

/* The SIMD scans use only each architecture's baseline: SSE2 on x86-64 (every x86-64 CPU, so
 * every wheel runs it, and so does valgrind) and NEON (Advanced SIMD) on arm64. -DSP_NO_SIMD
 * builds the scalar fallback alone, which the C tests build and run too. */
#if !defined(SP_NO_SIMD) && (defined(__GNUC__) || defined(__clang__))
#if defined(__SSE2__)
#include <emmintrin.h>
#define SP_SIMD_SSE2 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define SP_SIMD_NEON 1
#endif
#endif

#define CR '\r'
#define LF '\n'
#define SP ' '
#define HTAB '\t'

#define ERR(status) (-(SP_HTTP_##status))

/* Character classes (one table, bit flags):
 *   C_TCHAR  RFC 9110 5.6.2 token characters.
 *   C_TARGET bytes allowed in a request-target: VCHAR except '#' (RFC 9112 3.2: no fragment),
 *            plus obs-text, which real clients send raw in paths and is no framing hazard.
 *   C_VALUE  field-vchar, SP, HTAB, obs-text (RFC 9110 5.5). No CTL, no DEL.
 *   C_HEX    HEXDIG.
 *   C_AUTH   a reg-name's bytes (RFC 3986 3.2.2): unreserved, sub-delims and '%' of pct-encoded. */
enum { C_TCHAR = 1, C_TARGET = 2, C_VALUE = 4, C_HEX = 8, C_AUTH = 16 };

static const unsigned char char_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0,                 /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                 /* 0x10 */
    4, 23, 6, 5, 23, 23, 23, 23, 22, 22, 23, 23, 22, 23, 23, 6,     /* 0x20 */
    31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 6, 22, 6, 22, 6, 6,     /* 0x30 */
    6, 31, 31, 31, 31, 31, 31, 23, 23, 23, 23, 23, 23, 23, 23, 23,  /* 0x40 */
    23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 6, 6, 6, 7, 23,     /* 0x50 */
    7, 31, 31, 31, 31, 31, 31, 23, 23, 23, 23, 23, 23, 23, 23, 23,  /* 0x60 */
    23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 6, 7, 6, 23, 0,     /* 0x70 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0x80 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0x90 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0xa0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0xb0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0xc0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0xd0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0xe0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,                 /* 0xf0 */
};

static inline int is_class(char c, int cls)
{
    return char_class[(unsigned char)c] & cls;
}

static inline int is_ows(char c)
{
    return c == SP || c == HTAB;
}

/* p[0..2) is CR LF (two bytes known to be there): one 16-bit compare. */
static inline int is_crlf(const char *p)
{
    static const char crlf[2] = {CR, LF};
    return memcmp(p, crlf, 2) == 0;
}

static inline int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static inline char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* Case-insensitive comparison of s[0..n) with a lowercase literal. */
static int eq_lower(const char *s, size_t n, const char *lit, size_t lit_len)
{
    if (n != lit_len) return 0;
    for (size_t i = 0; i < n; i++)
        if (ascii_lower(s[i]) != lit[i]) return 0;
    return 1;
}

#define EQ_LIT(s, n, lit) eq_lower((s), (n), (lit), sizeof(lit) - 1)

/* A token s[0..n) against a lowercase literal of letters and '-' as long (n >= 4), ignoring
 * case, by words (the last one overlapping the one before): OR-ing 0x20 into a byte folds its
 * case and maps no other token byte onto a letter or '-' (only CR, no token byte, onto '-'). */
static inline int token_is(const char *s, const char *lit, size_t n)
{
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8)
            if ((load8(s + i) | 0x2020202020202020ull) != load8(lit + i)) return 0;
        return (load8(s + n - 8) | 0x2020202020202020ull) == load8(lit + n - 8);
    }
    return (load4(s) | 0x20202020u) == load4(lit) && (load4(s + n - 4) | 0x20202020u) == load4(lit + n - 4);
}

/* The field name nm (a token, of length nl) is lit, ignoring case. */
#define NAME_IS(nm, nl, lit) (sizeof(lit) - 1 == (nl) && token_is((nm), (lit), sizeof(lit) - 1))

/* ---- Scanning: SIMD fast paths, scalar fallback. ---------------------------------------------
 * Each scan returns the first byte in [p, end) outside its class, or end. The SIMD loops look at
 * 16 bytes at a time: they compare every byte with the class's bounds at once, turn the result
 * into one bit per byte (movemask) and take the lowest set bit. They load 16 bytes only while 16
 * bytes remain before end, so they never read outside [p, end); the tail (under 16 bytes) goes to
 * the scalar loop. In the head parser `end` is the end of the blank line, so the last bytes of a
 * line are usually still within a whole block. */

static inline const char *scan_class(const char *p, const char *end, int cls)
{
    while (end - p >= 4) {
        if (!is_class(p[0], cls)) return p;
        if (!is_class(p[1], cls)) return p + 1;
        if (!is_class(p[2], cls)) return p + 2;
        if (!is_class(p[3], cls)) return p + 3;
        p += 4;
    }
    while (p < end && is_class(*p, cls)) p++;
    return p;
}

#if defined(SP_SIMD_SSE2) || defined(SP_SIMD_NEON)
#define SIMD_BLOCK 16

#ifdef SP_SIMD_SSE2
typedef __m128i vec;
typedef unsigned vmask;   /* one bit per byte */
static inline vec v_load(const char *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }
static inline vec v_set(unsigned char c) { return _mm_set1_epi8((char)c); }
static inline vec v_eq(vec a, vec b) { return _mm_cmpeq_epi8(a, b); }
static inline vec v_or(vec a, vec b) { return _mm_or_si128(a, b); }
static inline vec v_add(vec a, vec b) { return _mm_add_epi8(a, b); }
static inline vec v_slt(vec a, vec b) { return _mm_cmplt_epi8(a, b); }   /* signed a < b */
#define VMASK_ALL 0xFFFFu
/* Unsigned a <= b: SSE2 has no unsigned byte compare, but min(a, b) == a says the same. */
static inline vec v_le(vec a, vec b) { return _mm_cmpeq_epi8(_mm_min_epu8(a, b), a); }
static inline vmask v_bits(vec m) { return (vmask)_mm_movemask_epi8(m); }
static inline size_t v_first(vmask m) { return (size_t)__builtin_ctz(m); }
static inline vmask v_drop(vmask m, size_t k) { return m >> k; }   /* the first k bytes' bits off */
#else
typedef uint8x16_t vec;
typedef uint64_t vmask;   /* four bits per byte */
static inline vec v_load(const char *p) { return vld1q_u8((const uint8_t *)(const void *)p); }
static inline vec v_set(unsigned char c) { return vdupq_n_u8(c); }
static inline vec v_eq(vec a, vec b) { return vceqq_u8(a, b); }
static inline vec v_or(vec a, vec b) { return vorrq_u8(a, b); }
static inline vec v_add(vec a, vec b) { return vaddq_u8(a, b); }
static inline vec v_slt(vec a, vec b) { return vcltq_s8(vreinterpretq_s8_u8(a), vreinterpretq_s8_u8(b)); }
#define VMASK_ALL (~(vmask)0)
static inline vec v_le(vec a, vec b) { return vcleq_u8(a, b); }
/* NEON has no movemask: narrowing each 16-bit lane by 4 bits keeps a nibble per byte. */
static inline vmask v_bits(vec m)
{
    return vget_lane_u64(vreinterpret_u64_u8(vshrn_n_u16(vreinterpretq_u16_u8(m), 4)), 0);
}
static inline size_t v_first(vmask m) { return (size_t)__builtin_ctzll(m) >> 2; }
static inline vmask v_drop(vmask m, size_t k) { return m >> (4 * k); }   /* k < 16 */
#endif

/* Bytes that stop a field value: CTL (0x00-0x1f) and DEL. HTAB, a value byte, stops it too, as a
 * candidate the scan steps over: rare in values, and two operations a block less. */
static inline vmask value_stops(vec x)
{
    return v_bits(v_or(v_le(x, v_set(0x1f)), v_eq(x, v_set(0x7f))));
}

/* Bytes that stop a request-target: CTL and SP (0x00-0x20), '#', DEL. */
static inline vmask target_stops(vec x)
{
    vec low = v_le(x, v_set(SP));
    return v_bits(v_or(low, v_or(v_eq(x, v_set('#')), v_eq(x, v_set(0x7f)))));
}

/* Bytes other than letters, digits and '-': a superset of the non-token bytes, and all that a
 * method or a usual field name holds. A stop here is only a candidate; the scalar class decides. */
static inline vmask token_stops(vec x)
{
    /* Each range as one signed compare: moved to start at -128 ('A'-'Z' and 'a'-'z' to
     * -128..-103, '0'-'9' to -128..-119), it is what is below its end. */
    vec alpha = v_add(v_or(x, v_set(0x20)), v_set(0x80 - 'a'));
    vec digit = v_add(x, v_set(0x80 - '0'));
    vec ok = v_or(v_slt(alpha, v_set(0x80 + 26)), v_or(v_slt(digit, v_set(0x80 + 10)),
                                                       v_eq(x, v_set('-'))));
    return v_bits(ok) ^ VMASK_ALL;   /* the bytes not ok */
}

#endif

/* Token bytes (RFC 9110 5.6.2): method and field names. */
static inline const char *scan_token(const char *p, const char *end)
{
#if defined(SP_SIMD_SSE2) || defined(SP_SIMD_NEON)
    while (end - p >= SIMD_BLOCK) {
        vmask m = token_stops(v_load(p));
        if (m) {
            p += v_first(m);
            if (!is_class(*p, C_TCHAR)) return p;
            p++;   /* a token byte the block test does not cover ('.', '_', '!', ...) */
            continue;
        }
        p += SIMD_BLOCK;
    }
#endif
    return scan_class(p, end, C_TCHAR);
}

/* Request-target bytes: stops at CTL, SP, '#', DEL. */
static inline const char *scan_target(const char *p, const char *end)
{
#if defined(SP_SIMD_SSE2) || defined(SP_SIMD_NEON)
    while (end - p >= SIMD_BLOCK) {
        vmask m = target_stops(v_load(p));
        if (m) return p + v_first(m);
        p += SIMD_BLOCK;
    }
#endif
    return scan_class(p, end, C_TARGET);
}

/* Field value bytes: stops at a CTL other than HTAB, or DEL. lo (<= p) is where the input
 * starts: the last block of a scan that ends within 16 bytes of end is the one that ends at end,
 * when there are 16 bytes from lo (the head's last value, in the common pass, ends there), its
 * bits for bytes before p dropped. */
static inline const char *scan_value(const char *lo, const char *p, const char *end)
{
#if defined(SP_SIMD_SSE2) || defined(SP_SIMD_NEON)
    for (;;) {
        vmask m;
        size_t left = (size_t)(end - p);
        if (left >= SIMD_BLOCK) {
            m = value_stops(v_load(p));
        } else if (left && end - lo >= SIMD_BLOCK) {
            m = v_drop(value_stops(v_load(end - SIMD_BLOCK)), SIMD_BLOCK - left);
            if (!m) return end;
        } else {
            break;
        }
        if (m) {
            p += v_first(m);
            if (*p != HTAB) return p;
            p++;   /* a value byte: the scan goes on after it */
            continue;
        }
        p += SIMD_BLOCK;
    }
#else
    (void)lo;
#endif
    return scan_class(p, end, C_VALUE);
}

/* ---- sp_parse_request -------------------------------------------------------------------------- */

typedef struct resolved_limits {
    size_t line, field, head, headers;
} resolved_limits;

static void resolve_limits(const sp_limits *lim, resolved_limits *r)
{
    r->line = (lim && lim->max_request_line) ? lim->max_request_line : SP_DEFAULT_MAX_REQUEST_LINE;
    r->field = (lim && lim->max_field_size) ? lim->max_field_size : SP_DEFAULT_MAX_FIELD_SIZE;
    r->head = (lim && lim->max_head_size) ? lim->max_head_size : SP_DEFAULT_MAX_HEAD_SIZE;
    r->headers = (lim && lim->max_headers) ? lim->max_headers : SP_DEFAULT_MAX_HEADERS;
    if (r->head > (size_t)INT_MAX) r->head = (size_t)INT_MAX;  /* the return value is an int */
}

static inline size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* Looks for the blank line ending the head in buf[from, len). Returns the head's end (just past
 * "\r\n\r\n"), 0 when not there yet, or -400 for a bare LF. */
static long find_head_end(const char *buf, size_t len, size_t from)
{
    const char *p = buf + from, *end = buf + len;
    while (p < end) {
        const char *lf = memchr(p, LF, (size_t)(end - p));
        if (!lf) return 0;
        if (lf == buf || lf[-1] != CR) return ERR(BAD_REQUEST);  /* RFC 9112 2.2: bare LF */
        if (lf - buf >= 3 && lf[-2] == LF && lf[-3] == CR) return (long)(lf + 1 - buf);
        p = lf + 1;
    }
    return 0;
}

/* The answer to a request line over the limit, judged on line[0..avail): 414 names the target,
 * but a method still going after SP_METHOD_MAX bytes, or at the end of an over-long line, is
 * longer than any we implement (RFC 9112 3: 501), and a byte no method may hold makes it no
 * request at all (400). The same answer however the bytes were split. */
#define SP_METHOD_MAX 64
static int line_too_long(const char *line, size_t avail)
{
    const char *end = line + min_size(avail, SP_METHOD_MAX + 1);
    const char *m_end = scan_class(line, end, C_TCHAR);
    if (m_end == end) return ERR(NOT_IMPLEMENTED);
    return *m_end == SP ? ERR(URI_TOO_LONG) : ERR(BAD_REQUEST);
}

/* The limits that can be judged before the head is complete; buf[start..len) has no blank line
 * and no bare LF, and buf[0..from) was judged by the previous call. The request line is checked
 * whole; field lines only from `from` on: each line completed among the new bytes, then the one
 * still arriving. So an over-long line is refused however the bytes were split. */
static int check_partial(const char *buf, size_t len, size_t start, size_t from,
                         const resolved_limits *lim)
{
    size_t avail = len - start;
    const char *cr = memchr(buf + start, CR, min_size(avail, lim->line + 1));
    if (!cr) {
        /* Still in the request line. */
        if (avail > lim->line || len > lim->head) return line_too_long(buf + start, avail);
        return SP_PARTIAL;
    }
    if ((size_t)(cr - buf) + 1 < len && cr[1] != LF) return ERR(BAD_REQUEST);  /* bare CR */
    if (len > lim->head) return ERR(HEADERS_TOO_LARGE);

    size_t fields = (size_t)(cr - buf) + 2;  /* where the first field line starts */
    if (len <= fields) return SP_PARTIAL;
    size_t pos = from > fields ? from : fields;

    /* Find where the line holding pos starts, looking back at most field + 2 bytes: if no LF is
     * there, the line is too long and the measurements below (from that bound) will say so. */
    size_t lo = fields;
    if (pos - lo > lim->field + 2) lo = pos - lim->field - 2;
    size_t ls = pos;
    while (ls > lo && buf[ls - 1] != LF) ls--;

    /* Lines completed among the new bytes (each LF follows a CR: find_head_end checked). */
    const char *p = buf + pos, *end = buf + len, *lf;
    while ((lf = memchr(p, LF, (size_t)(end - p))) != NULL) {
        size_t line_end = (size_t)(lf - buf) - 1;  /* at its CR */
        if (line_end - ls > lim->field) return ERR(HEADERS_TOO_LARGE);
        ls = (size_t)(lf - buf) + 1;
        p = lf + 1;
    }
    /* The line still arriving (a trailing CR is not content). */
    size_t cur = len - ls;
    if (cur && buf[len - 1] == CR) cur--;
    if (cur > lim->field) return ERR(HEADERS_TOO_LARGE);
    return SP_PARTIAL;
}

/* RFC 3986 3.2.2-3.2.3 (as RFC 9110 4.2.1 and 7.2 use it): uri-host [ ":" port ], where uri-host
 * is an IP-literal in brackets or a reg-name / IPv4address (unreserved, pct-encoded, sub-delims)
 * and port is digits. No userinfo: RFC 9110 4.2.4 makes "user@host" an error. An empty value is
 * allowed (RFC 9112 3.2: a target with no authority). Both Host and absolute-form targets. */
static int authority_ok(const char *v, size_t n)
{
    size_t i = 0;
    if (n && v[0] == '[') {
        /* IPv6address or IPvFuture: a superset of their characters, inside one pair of brackets */
        for (i = 1; i < n && v[i] != ']'; i++)
            if (!is_class(v[i], C_AUTH) && v[i] != ':') return 0;
        if (i == n || i == 1) return 0;   /* no closing bracket, or "[]" */
        i++;
    } else {
        /* ':' is no C_AUTH byte: the loop stops at it, or at a byte that makes it no host */
        while (i < n && is_class(v[i], C_AUTH)) i++;
    }
    if (i == n) return 1;
    if (v[i] != ':') return 0;
    for (i++; i < n; i++)
        if (v[i] < '0' || v[i] > '9') return 0;
    return 1;
}

/* RFC 9112 3.2: the four forms of request-target, each allowed only where it belongs. */
static int check_target_form(const char *m, size_t mlen, const char *t, size_t tlen)
{
    static const char connect[] = "CONNECT", options[] = "OPTIONS";
    int is_connect = mlen == sizeof connect - 1 && memcmp(m, connect, mlen) == 0;

    if (is_connect) {
        /* 3.2.3 authority-form = uri-host ":" port; no userinfo, path or query. */
        const char *colon = NULL;
        for (size_t i = 0; i < tlen; i++) {
            if (t[i] == '/' || t[i] == '?' || t[i] == '@') return ERR(BAD_REQUEST);
            if (t[i] == ':') colon = t + i;
        }
        if (!colon || colon == t || colon + 1 == t + tlen) return ERR(BAD_REQUEST);
        for (const char *d = colon + 1; d < t + tlen; d++)
            if (*d < '0' || *d > '9') return ERR(BAD_REQUEST);
        return 0;
    }
    if (t[0] == '/') return 0;  /* 3.2.1 origin-form */
    if (tlen == 1 && t[0] == '*') {
        /* 3.2.4 asterisk-form, only for a server-wide OPTIONS. */
        int is_options = mlen == sizeof options - 1 && memcmp(m, options, mlen) == 0;
        return is_options ? 0 : ERR(BAD_REQUEST);
    }
    /* 3.2.2 absolute-form: we serve http and https URIs only, with a non-empty authority. */
    size_t scheme = 0;
    if (tlen > 7 && EQ_LIT(t, 7, "http://")) scheme = 7;
    else if (tlen > 8 && EQ_LIT(t, 8, "https://")) scheme = 8;
    if (!scheme) return ERR(BAD_REQUEST);
    size_t end = scheme;
    while (end < tlen && t[end] != '/' && t[end] != '?') end++;
    /* The authority stands in for Host (RFC 9112 3.2.2), so it must be one, and not empty. */
    if (end == scheme || !authority_ok(t + scheme, end - scheme)) return ERR(BAD_REQUEST);
    return 0;
}

/* Parses "HTTP/" DIGIT "." DIGIT in v[0..n). Returns the minor version to report, or -STATUS. */
static int parse_version(const char *v, size_t n)
{
    static const char name[] = "HTTP/";
    const size_t name_len = sizeof name - 1;
    if (n < name_len + 1 || memcmp(v, name, name_len) != 0) return ERR(BAD_REQUEST);
    char major = v[name_len];
    if (major < '0' || major > '9') return ERR(BAD_REQUEST);
    if (n == name_len + 1)  /* "HTTP/2", "HTTP/3": another major; "HTTP/1" is garbage */
        return major == '1' ? ERR(BAD_REQUEST) : ERR(VERSION_NOT_SUPPORTED);
    if (n != name_len + 3 || v[name_len + 1] != '.') return ERR(BAD_REQUEST);
    char minor = v[name_len + 2];
    if (minor < '0' || minor > '9') return ERR(BAD_REQUEST);
    if (major != '1') return ERR(VERSION_NOT_SUPPORTED);
    /* RFC 9110 6.2: a higher minor version is answered as the highest we speak, 1.1. */
    return minor == '0' ? 0 : 1;
}

/* The strict pass over the lines of a head that starts at p: the request line and every field
 * line, recorded in req. Two ways:
 *   - complete: end is the end of the blank line that find_head_end found. Every line is known to
 *     end before it, and the result is the answer: the head's length or -STATUS.
 *   - optimistic (!complete): end is the end of the input, which has not been looked at yet. Only
 *     a head whose every line is valid and within the limits gets its length back; anything else
 *     (an incomplete head, any defect) gets 0, and the caller goes the complete way, which alone
 *     decides what to answer. Such a head is what the complete way would accept: each of its lines
 *     ends in CRLF with no LF and no CR before it, so the blank line found here is the first
 *     "\r\n\r\n" after the empty lines skipped, the one find_head_end would find; and the
 *     limits are the same ones.
 * The bounds tests on end below never fail in the complete way (the blank line ends every line
 * before end), so there they change nothing. */
#define REFUSE(rc) return complete ? (rc) : 0

static int parse_lines(const char *buf, const char *p, const char *end, const resolved_limits *lim,
                       size_t capacity, sp_request_head *req, int complete)
{
    /* Request line. The blank line guarantees a CR before end; it must come within the limit. */
    const char *cr = memchr(p, CR, min_size((size_t)(end - p), lim->line + 1));
    if (!cr) REFUSE(line_too_long(p, (size_t)(end - p)));
    if (complete && (size_t)(end - buf) > lim->head)  /* 414 if the line alone already crossed it */
        return (size_t)(cr - buf) > lim->head ? line_too_long(p, (size_t)(cr - p))
                                              : ERR(HEADERS_TOO_LARGE);
    if (end - cr < 2 || cr[1] != LF) REFUSE(ERR(BAD_REQUEST));  /* bare CR */

    /* The scans may run to end: the CR at cr stops both of them (a CTL, not a token byte). */
    const char *m_end = scan_token(p, end);
    if (m_end == p || *m_end != SP) REFUSE(ERR(BAD_REQUEST));
    const char *t = m_end + 1;
    const char *t_end = scan_target(t, end);
    if (t_end == t || *t_end != SP) REFUSE(ERR(BAD_REQUEST));  /* 3.2: one SP, no CTL/'#' */
    int minor = parse_version(t_end + 1, (size_t)(cr - (t_end + 1)));
    if (minor < 0) REFUSE(minor);
    int rc = check_target_form(p, (size_t)(m_end - p), t, (size_t)(t_end - t));
    if (rc < 0) REFUSE(rc);

    /* Field lines. */
    size_t max_fields = min_size(capacity, lim->headers), n = 0;
    const char *q = cr + 2;
    for (;;) {
        if (end - q < 2) REFUSE(ERR(BAD_REQUEST));   /* optimistic: the input ends here */
        if (*q == CR) {
            /* The blank line: in the complete way, the first "\r\n\r\n" is `end`, so this is it. */
            if (q[1] != LF || (complete && q + 2 != end)) REFUSE(ERR(BAD_REQUEST));
            break;
        }
        /* RFC 9112 5.2 obs-fold, and 2.2 whitespace before the first field: rejected. */
        const char *name = q;
        const char *n_end = scan_token(q, end);
        const char *bad;
        if (n_end == name || n_end == end || *n_end != ':') {  /* 5.1: no whitespace before ':' */
            bad = n_end;
            goto field_error;
        }
        /* The value's scan takes its OWS too (SP and HTAB are value bytes): then the only bytes
         * <= SP in [v, v_end) are OWS, and one compare a byte trims them at either end. */
        const char *v = n_end + 1;
        const char *v_end = scan_value(buf, v, end);
        if (end - v_end < 2 || !is_crlf(v_end)) {  /* CTL, bare CR or LF in the value */
            bad = v_end;
            goto field_error;
        }
        if ((size_t)(v_end - name) > lim->field) REFUSE(ERR(HEADERS_TOO_LARGE));
        if (n == max_fields) REFUSE(ERR(HEADERS_TOO_LARGE));
        if (*v == SP && (unsigned char)v[1] > SP) v++;   /* the usual single SP (v_end's CR ends it) */
        else while (v < v_end && (unsigned char)*v <= SP) v++;
        const char *trim = v_end;
        while (trim > v && (unsigned char)trim[-1] <= SP) trim--;
        req->headers[n].name = name;
        req->headers[n].name_len = (size_t)(n_end - name);
        req->headers[n].value = v;
        req->headers[n].value_len = (size_t)(trim - v);
        n++;
        q = v_end + 2;
        continue;

    field_error:
        /* A malformed line that is also too long reports the length, as the incremental checks
         * would have while it was arriving. */
        REFUSE((size_t)(bad - name) > lim->field ? ERR(HEADERS_TOO_LARGE) : ERR(BAD_REQUEST));
    }
    size_t head_end = (size_t)(q + 2 - buf);
    if (head_end > lim->head) REFUSE(ERR(HEADERS_TOO_LARGE));   /* optimistic only: checked above */

    req->method = p;
    req->method_len = (size_t)(m_end - p);
    req->target = t;
    req->target_len = (size_t)(t_end - t);
    req->minor_version = minor;
    req->num_headers = n;
    return (int)head_end;
}

#undef REFUSE

int sp_parse_request(const char *buf, size_t len, size_t last_len, const sp_limits *limits,
                     sp_request_head *req)
{
    resolved_limits lim;
    resolve_limits(limits, &lim);
    size_t capacity = req->num_headers;
    req->num_headers = 0;

    /* RFC 9112 2.2: empty lines before the request line are ignored. */
    size_t start = 0;
    while (len - start >= 2 && buf[start] == CR && buf[start + 1] == LF) start += 2;
    if (start > lim.head) return ERR(HEADERS_TOO_LARGE);

    /* A first look at the input (no earlier call saw part of it), the common case of a whole head
     * in one read: one pass that finds the blank line by parsing up to it. Anything but a valid
     * head goes the way below, which decides the answer; later calls for the same head (a slow
     * sender) go that way at once, so their cost stays with the new bytes. */
    if (last_len == 0) {
        int rc = parse_lines(buf, buf + start, buf + len, &lim, capacity, req, 0);
        if (rc > 0) return rc;
        req->num_headers = 0;
    }

    size_t from = last_len > 3 ? last_len - 3 : 0;
    if (from < start) from = start;
    if (from > len) from = len;
    long head_end = find_head_end(buf, len, from);
    if (head_end < 0) return (int)head_end;
    if (head_end == 0) return check_partial(buf, len, start, from, &lim);
    return parse_lines(buf, buf + start, buf + head_end, &lim, capacity, req, 1);
}

/* ---- sp_request_framing ------------------------------------------------------------------------ */

/* Iterates the comma-separated elements of a list value (RFC 9110 5.6.1), OWS-trimmed. */
typedef struct list_iter {
    const char *p, *end;
    int done;
} list_iter;

static int list_next(list_iter *it, const char **elem, size_t *elem_len)
{
    if (it->done) return 0;
    const char *s = it->p;
    const char *comma = memchr(s, ',', (size_t)(it->end - s));
    const char *e = comma ? comma : it->end;
    if (comma) it->p = comma + 1;
    else it->done = 1;
    while (s < e && is_ows(*s)) s++;
    while (e > s && is_ows(e[-1])) e--;
    *elem = s;
    *elem_len = (size_t)(e - s);
    return 1;
}

static void list_init(list_iter *it, const sp_header *h)
{
    it->p = h->value;
    it->end = h->value + h->value_len;
    it->done = 0;
}

/* RFC 9110 8.6: Content-Length = 1*DIGIT. A list or repeated field is accepted only when every
 * value is the same. Empty elements, signs, spaces inside, and values past 2^63-1 are refused. */
static int framing_content_length(const sp_header *h, int64_t *cl)
{
    list_iter it;
    const char *e;
    size_t n;
    list_init(&it, h);
    while (list_next(&it, &e, &n)) {
        if (n == 0) return ERR(BAD_REQUEST);
        int64_t v = 0;
        for (size_t i = 0; i < n; i++) {
            if (e[i] < '0' || e[i] > '9') return ERR(BAD_REQUEST);
            int d = e[i] - '0';
            if (v > (INT64_MAX - d) / 10) return ERR(BAD_REQUEST);
            v = v * 10 + d;
        }
        if (*cl >= 0 && *cl != v) return ERR(BAD_REQUEST);
        *cl = v;
    }
    return 0;
}

/* RFC 9112 6.1 and 7: chunked must be the final coding and appear once; we decode no other
 * coding (501). Parameters on a coding are allowed by the grammar but not on chunked. */
static int framing_transfer_encoding(const sp_header *h, int *chunked, int *unknown)
{
    list_iter it;
    const char *e;
    size_t n;
    list_init(&it, h);
    while (list_next(&it, &e, &n)) {
        if (n == 0) return ERR(BAD_REQUEST);  /* "chunked, ," or a bare "," */
        if (*chunked) return ERR(BAD_REQUEST);  /* something after chunked */
        const char *tok_end = scan_class(e, e + n, C_TCHAR);
        size_t tok_len = (size_t)(tok_end - e);
        if (tok_len == 0) return ERR(BAD_REQUEST);
        if (tok_end != e + n) {
            /* Only parameters may follow the token: OWS ";" ... */
            const char *r = tok_end;
            while (r < e + n && is_ows(*r)) r++;
            if (r == e + n || *r != ';') return ERR(BAD_REQUEST);
            if (EQ_LIT(e, tok_len, "chunked")) return ERR(BAD_REQUEST);
            *unknown = 1;
            continue;
        }
        if (EQ_LIT(e, tok_len, "chunked")) *chunked = 1;
        else *unknown = 1;
    }
    return 0;
}

static int host_value_ok(const sp_header *h)
{
    return authority_ok(h->value, h->value_len);
}

int sp_request_framing(const sp_request_head *req, sp_framing *f)
{
    int64_t cl = -1;
    int chunked = 0, unknown = 0, te_seen = 0, hosts = 0, conn_close = 0, conn_keep = 0;
    int conn_upgrade = 0, upgrade_hdr = 0, expect = 0, rc;

    for (size_t i = 0; i < req->num_headers; i++) {
        const sp_header *h = &req->headers[i];
        const char *nm = h->name;
        size_t nl = h->name_len;
        /* The length first, one jump: most of a browser's fields are none of these. */
        switch (nl) {
        case 14:
            if (NAME_IS(nm, nl, "content-length") && (rc = framing_content_length(h, &cl)) < 0)
                return rc;
            break;
        case 17:
            if (NAME_IS(nm, nl, "transfer-encoding")) {
                te_seen = 1;
                if ((rc = framing_transfer_encoding(h, &chunked, &unknown)) < 0) return rc;
            }
            break;
        case 4:
            if (NAME_IS(nm, nl, "host")) {
                hosts++;
                if (!host_value_ok(h)) return ERR(BAD_REQUEST);
            }
            break;
        case 10:
            if (NAME_IS(nm, nl, "connection")) {
                list_iter it;
                const char *e;
                size_t n;
                list_init(&it, h);
                while (list_next(&it, &e, &n)) {
                    if (EQ_LIT(e, n, "close")) conn_close = 1;
                    else if (EQ_LIT(e, n, "keep-alive")) conn_keep = 1;
                    else if (EQ_LIT(e, n, "upgrade")) conn_upgrade = 1;
                }
            }
            break;
        case 7:
            if (NAME_IS(nm, nl, "upgrade")) upgrade_hdr = 1;
            break;
        case 6:
            if (NAME_IS(nm, nl, "expect") && EQ_LIT(h->value, h->value_len, "100-continue")) expect = 1;
            break;
        default:
            break;
        }
    }

    int http11 = req->minor_version >= 1;
    /* RFC 9112 3.2: a 1.1 request needs exactly one Host; no request may carry two. */
    if (hosts > 1 || (http11 && hosts == 0)) return ERR(BAD_REQUEST);
    if (te_seen) {
        /* RFC 9112 6.1: TE with CL is a smuggling attempt or a broken proxy; TE on 1.0 cannot be
         * trusted (a 1.0 intermediary would not have understood it). Reject both. */
        if (cl >= 0 || !http11) return ERR(BAD_REQUEST);
        if (unknown) return ERR(NOT_IMPLEMENTED);
        if (!chunked) return ERR(BAD_REQUEST);  /* 6.3: final coding not chunked */
    }

    f->content_length = cl;
    f->chunked = chunked;
    f->keep_alive = http11 ? !conn_close : (conn_keep && !conn_close);
    f->expect_continue = http11 && expect;  /* RFC 9110 10.1.1: ignored on 1.0 */
    f->upgrade = conn_upgrade && upgrade_hdr;
    return 0;
}

/* ---- sp_chunked_decode ------------------------------------------------------------------------- */

enum {
    CH_SIZE_START = 0,  /* first hex digit of a chunk-size (the zero-filled start state) */
    CH_SIZE,            /* more hex digits, ';' or CR */
    CH_EXT_NAME0,       /* after ';': BWS, then the first byte of a chunk-ext-name */
    CH_EXT_NAME,        /* chunk-ext-name bytes */
    CH_EXT_NAME_BWS,    /* BWS after a name: then '=' or ';' */
    CH_EXT_VAL0,        /* after '=': BWS, then a token or a quoted-string */
    CH_EXT_TOKEN,       /* a token value */
    CH_EXT_QUOTED,      /* inside a quoted-string value */
    CH_EXT_QPAIR,       /* the byte after a backslash in a quoted-string */
    CH_EXT_QEND,        /* right after a quoted-string's closing '"' */
    CH_EXT_VAL_BWS,     /* BWS after a value: then ';' */
    CH_SIZE_LF,         /* LF ending the size line */
    CH_DATA,            /* `remaining` data bytes */
    CH_DATA_CR,         /* CR after the data */
    CH_DATA_LF,         /* LF after the data */
    CH_TRAILER_START,   /* a trailer field line, or the CR of the final blank line */
    CH_TRAILER_NAME,    /* field-name bytes up to ':' */
    CH_TRAILER_VALUE,   /* field-value bytes up to CR */
    CH_TRAILER_LF,      /* LF ending a trailer field line */
    CH_FINAL_LF,        /* LF of the final blank line */
    CH_DONE,
    CH_ERROR
};

static int chunk_fail(sp_chunked *d)
{
    d->state = CH_ERROR;
    return ERR(BAD_REQUEST);
}

int sp_chunked_decode(sp_chunked *d, char *buf, size_t len, size_t *out_len, size_t *consumed)
{
    size_t in = 0, out = 0;
    size_t max_ext = d->max_ext ? d->max_ext : SP_DEFAULT_MAX_CHUNK_EXT;
    *out_len = 0;
    *consumed = 0;
    if (d->state == CH_ERROR) return ERR(BAD_REQUEST);
    if (d->state == CH_DONE) return 0;

    while (in < len) {
        if (d->state == CH_DATA) {
            size_t take = len - in;
            if ((uint64_t)take > d->remaining) take = (size_t)d->remaining;
            if (out != in) memmove(buf + out, buf + in, take);
            in += take;
            out += take;
            d->remaining -= take;
            if (d->remaining == 0) d->state = CH_DATA_CR;
            continue;
        }
        char c = buf[in++];
        switch (d->state) {
        case CH_SIZE_START:
        case CH_SIZE: {
            /* RFC 9112 7.1: chunk-size = 1*HEXDIG. No sign, "0x", or whitespace (the BWS the
             * grammar allows before ';' is refused too: lenient size lines are a smuggling
             * lever). */
            int hv = hex_value(c);
            if (hv >= 0) {
                if (d->size_acc > ((uint64_t)INT64_MAX - (uint64_t)hv) / 16) return chunk_fail(d);
                if (++d->line_len > SP_MAX_CHUNK_SIZE_DIGITS) return chunk_fail(d);
                d->size_acc = d->size_acc * 16 + (uint64_t)hv;
                d->state = CH_SIZE;
            } else if (d->state == CH_SIZE && c == ';') {
                d->line_len = 0;
                d->state = CH_EXT_NAME0;
            } else if (d->state == CH_SIZE && c == CR) {
                d->state = CH_SIZE_LF;
            } else {
                return chunk_fail(d);
            }
            break;
        }
        /* RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS token / quoted-string ] ),
         * bounded by max_ext. Never interpreted, but held to its grammar: a proxy in front may
         * read a malformed one differently, and a difference in framing is a smuggling lever. */
        case CH_EXT_NAME0:
        case CH_EXT_NAME:
        case CH_EXT_NAME_BWS:
        case CH_EXT_VAL0:
        case CH_EXT_TOKEN:
        case CH_EXT_QUOTED:
        case CH_EXT_QPAIR:
        case CH_EXT_QEND:
        case CH_EXT_VAL_BWS: {
            int st = d->state, tchar = is_class(c, C_TCHAR), ws = c == SP || c == HTAB;
            if (c != CR && ++d->line_len > max_ext) return chunk_fail(d);   /* CR ends the line */
            if (st == CH_EXT_QUOTED) {
                /* qdtext: HTAB, SP, VCHAR but '"' and '\\', obs-text */
                if (c == '"') d->state = CH_EXT_QEND;
                else if (c == '\\') d->state = CH_EXT_QPAIR;
                else if (!is_class(c, C_VALUE)) return chunk_fail(d);
            } else if (st == CH_EXT_QPAIR) {
                if (!is_class(c, C_VALUE)) return chunk_fail(d);
                d->state = CH_EXT_QUOTED;
            } else if (ws) {
                if (st == CH_EXT_NAME) d->state = CH_EXT_NAME_BWS;
                else if (st == CH_EXT_TOKEN || st == CH_EXT_QEND) d->state = CH_EXT_VAL_BWS;
                /* else BWS where BWS may stand: stay */
            } else if (tchar && (st == CH_EXT_NAME0 || st == CH_EXT_NAME)) {
                d->state = CH_EXT_NAME;
            } else if (tchar && (st == CH_EXT_VAL0 || st == CH_EXT_TOKEN)) {
                d->state = CH_EXT_TOKEN;
            } else if (c == '"' && st == CH_EXT_VAL0) {
                d->state = CH_EXT_QUOTED;
            } else if (c == '=' && (st == CH_EXT_NAME || st == CH_EXT_NAME_BWS)) {
                d->state = CH_EXT_VAL0;
            } else if (c == ';' && st != CH_EXT_NAME0 && st != CH_EXT_VAL0) {
                d->state = CH_EXT_NAME0;
            } else if (c == CR && (st == CH_EXT_NAME || st == CH_EXT_TOKEN || st == CH_EXT_QEND)) {
                d->state = CH_SIZE_LF;
            } else {
                return chunk_fail(d);
            }
            break;
        }
        case CH_SIZE_LF:
            if (c != LF) return chunk_fail(d);
            d->remaining = d->size_acc;
            d->size_acc = 0;
            d->line_len = 0;
            d->state = d->remaining ? CH_DATA : CH_TRAILER_START;
            break;
        case CH_DATA_CR:
            if (c != CR) return chunk_fail(d);
            d->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != LF) return chunk_fail(d);
            d->state = CH_SIZE_START;
            break;
        case CH_TRAILER_START:
            if (c == CR) {
                d->state = CH_FINAL_LF;
                break;
            }
            /* c is the first byte of a field name. */
            d->state = CH_TRAILER_NAME;
            /* fall through */
        case CH_TRAILER_NAME:
            /* RFC 9112 7.1.2: trailer fields are field lines; no obs-fold, no space before ':'. */
            if (++d->trailer_bytes > SP_MAX_TRAILER_BYTES) return chunk_fail(d);
            if (c == ':' && d->line_len > 0) {
                d->state = CH_TRAILER_VALUE;
            } else if (is_class(c, C_TCHAR)) {
                d->line_len++;
            } else {
                return chunk_fail(d);
            }
            break;
        case CH_TRAILER_VALUE:
            if (c == CR) {
                d->state = CH_TRAILER_LF;
            } else if (!is_class(c, C_VALUE) || ++d->trailer_bytes > SP_MAX_TRAILER_BYTES) {
                return chunk_fail(d);
            }
            break;
        case CH_TRAILER_LF:
            if (c != LF) return chunk_fail(d);
            d->line_len = 0;
            d->state = CH_TRAILER_START;
            break;
        case CH_FINAL_LF:
            if (c != LF) return chunk_fail(d);
            d->state = CH_DONE;
            *out_len = out;
            *consumed = in;
            return 0;
        default:
            return chunk_fail(d);
        }
    }
    *out_len = out;
    *consumed = in;
    return SP_PARTIAL;
}
