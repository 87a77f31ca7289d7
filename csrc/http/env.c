/* env.c -- turns a parsed request head into the packed WSGI environ block.
 *
 * The block is "KEY\0value\0KEY\0value\0...": Python decodes it as latin-1 once and splits it on
 * NUL into a dict, with no Python-level loop per header. Every key appears once. NUL cannot occur
 * in a value: the parser refuses it in the head, and sp_decode_path refuses %00.
 *
 * Nothing here allocates; out is the caller's buffer.
 */
#include "sp.h"
#include "sp_limits.h"
#include "unaligned.h"

#include <stdint.h>
#include <string.h>

#define ERR(status) (-(SP_HTTP_##status))

#if defined(__GNUC__) || defined(__clang__)
#define ENV_INLINE inline __attribute__((always_inline))
#else
#define ENV_INLINE inline
#endif

static inline char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

static int eq_nocase(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn) return 0;
    for (size_t i = 0; i < an; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i])) return 0;
    return 1;
}

#define EQ_LIT(s, n, lit) eq_nocase((s), (n), (lit), sizeof(lit) - 1)

static inline int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The parts of a request-target (RFC 9112 3.2): the path (origin-form up to '?'; for
 * absolute-form the path after the authority; nothing for asterisk-form ("*") and authority-form
 * (CONNECT)), and for absolute-form its authority (else *auth stays NULL). */
static void target_parts(const char *t, size_t n, const char **path, size_t *path_len,
                         const char **auth, size_t *auth_len)
{
    static const char http[] = "http://", https[] = "https://";
    size_t from = 0;
    *path = t;
    *path_len = 0;
    *auth = NULL;
    *auth_len = 0;
    if (n == 0) return;
    if (t[0] != '/') {
        if (n >= sizeof http - 1 && EQ_LIT(t, sizeof http - 1, http)) from = sizeof http - 1;
        else if (n >= sizeof https - 1 && EQ_LIT(t, sizeof https - 1, https)) from = sizeof https - 1;
        else return;  /* "*" or host:port */
        *auth = t + from;
        while (from < n && t[from] != '/' && t[from] != '?') from++;  /* skip the authority */
        *auth_len = (size_t)(t + from - *auth);
    }
    const char *q = memchr(t + from, '?', n - from);
    *path = t + from;
    *path_len = (size_t)((q ? q : t + n) - (t + from));
}

/* Decodes path[0..n) into out[0..cap). Returns the length, -400 for a bad escape or %00, or -431
 * when out is too small. */
static ssize_t decode(const char *p, size_t n, char *out, size_t cap)
{
    const char *end = p + n;
    size_t o = 0;
    while (p < end) {
        const char *pct = memchr(p, '%', (size_t)(end - p));
        size_t run = (size_t)((pct ? pct : end) - p);
        if (cap - o < run) return ERR(HEADERS_TOO_LARGE);
        memcpy(out + o, p, run);
        o += run;
        p += run;
        if (!pct) break;
        /* RFC 3986 2.1: pct-encoded = "%" HEXDIG HEXDIG. */
        if (end - pct < 3) return ERR(BAD_REQUEST);
        int hi = hex_value(pct[1]), lo = hex_value(pct[2]);
        if (hi < 0 || lo < 0) return ERR(BAD_REQUEST);
        char c = (char)(hi * 16 + lo);
        if (c == '\0') return ERR(BAD_REQUEST);  /* NUL separates the environ block's entries */
        if (cap == o) return ERR(HEADERS_TOO_LARGE);
        out[o++] = c;
        p = pct + 3;
    }
    return (ssize_t)o;
}

ssize_t sp_decode_path(const char *target, size_t len, char *out)
{
    const char *p, *auth;
    size_t n, auth_len;
    target_parts(target, len, &p, &n, &auth, &auth_len);
    return decode(p, n, out, n);
}

/* ---- sp_env_pack ------------------------------------------------------------------------------- */

typedef struct packer {
    char *out;
    size_t cap, pos;
    int full;  /* something did not fit; cap is then pos, so nothing more is written */
} packer;

static inline void overflow(packer *pk)
{
    pk->full = 1;
    pk->cap = pk->pos;
}

static inline void put_nul(packer *pk)
{
    if (pk->pos == pk->cap) {
        overflow(pk);
        return;
    }
    pk->out[pk->pos++] = '\0';
}

/* s[0..n) and a NUL, with one test for room. */
static inline void put_z(packer *pk, const char *s, size_t n)
{
    if (pk->cap - pk->pos <= n) {
        overflow(pk);
        return;
    }
    memcpy(pk->out + pk->pos, s, n);
    pk->out[pk->pos + n] = '\0';
    pk->pos += n + 1;
}

/* A value alone, for the fixed entries that open the block. */
#define PUT_VALUE(pk, v, vn) put_z((pk), (v), (vn))

/* ---- Field names, eight bytes at a time ---------------------------------------------------------
 * A name is read as 64-bit words (SWAR): whole words, then one last word that overlaps the one
 * before it, all within [name, name + n); names under 8 bytes take two overlapping 4-byte words,
 * and under 4 bytes go byte by byte. The byte tests below are exact for every byte value: no
 * carry or borrow crosses from one byte into the next. */

#define ONES 0x0101010101010101ull
#define HIGHS (0x80 * ONES)
#define LOWS7 (0x7f * ONES)

static inline void store8(char *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static inline void store4(char *p, uint64_t v)
{
    uint32_t w = (uint32_t)v;
    memcpy(p, &w, 4);
}

/* 0x80 in every byte of w that is zero, 0 elsewhere. */
static inline uint64_t zero_bytes(uint64_t w)
{
    return ~(((w & LOWS7) + LOWS7) | w) & HIGHS;
}

/* The environ key's bytes for w: 'a'-'z' upper-cased, '-' as '_', other bytes as they are.
 * Byte order does not matter: every byte is mapped on its own. */
static inline uint64_t key_word(uint64_t w)
{
    uint64_t w7 = w & LOWS7;
    /* 0x80 where a byte is 0x61..0x7a: its low 7 bits + 0x1f reach 0x80 and + 0x05 do not, and
     * its own high bit is clear. */
    uint64_t lower = (w7 + (0x80 - 'a') * ONES) & ~(w7 + (0x80 - 'z' - 1) * ONES) & ~w & HIGHS;
    w -= lower >> 2;                                        /* 0x20 off each lower-case letter */
    uint64_t dash = zero_bytes(w ^ ('-' * ONES));
    return w + (dash >> 7) * ('_' - '-');                   /* 0x2d + 0x32 = 0x5f, no carry */
}

static inline char key_char(char c)
{
    if (c == '-') return '_';
    return (c >= 'a' && c <= 'z') ? (char)(c - ('a' - 'A')) : c;
}

/* Names of 8 bytes or more are made keys 16 bytes at a time where SSE2 is the baseline (x86-64):
 * ~15 instructions for what takes ~80 eight bytes at a time. -DSP_NO_SIMD keeps the SWAR way. */
#if !defined(SP_NO_SIMD) && defined(__SSE2__) && defined(__x86_64__) \
    && (defined(__GNUC__) || defined(__clang__))
#include <emmintrin.h>
#define ENV_SSE2 1

/* key_word for 16 bytes: 'a'-'z' upper-cased, '-' as '_'. Signed compares: bytes 0x80-0xff are
 * negative, so never taken for letters. */
static inline __m128i key_vec(__m128i v)
{
    __m128i lower = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('a' - 1)),
                                  _mm_cmplt_epi8(v, _mm_set1_epi8('z' + 1)));
    v = _mm_sub_epi8(v, _mm_and_si128(lower, _mm_set1_epi8(0x20)));
    __m128i dash = _mm_cmpeq_epi8(v, _mm_set1_epi8('-'));
    return _mm_add_epi8(v, _mm_and_si128(dash, _mm_set1_epi8('_' - '-')));
}

static inline __m128i load16(const char *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

static inline void store16(char *p, __m128i v)
{
    _mm_storeu_si128((__m128i *)(void *)p, v);
}
#endif

/* Writes the environ key's bytes for name[0..n) to o[0..n): 'a'-'z' upper-cased, '-' as '_'.
 * Only [name, name + n) is read and only [o, o + n) written. */
static ENV_INLINE void key_chars(char *o, const char *name, size_t n)
{
#ifdef ENV_SSE2
    if (n >= 16) {   /* whole 16-byte blocks, then the last 16 (overlapping the block before) */
        for (size_t i = 0; i + 16 < n; i += 16) store16(o + i, key_vec(load16(name + i)));
        store16(o + n - 16, key_vec(load16(name + n - 16)));
        return;
    }
    if (n >= 8) {   /* the first and last 8 bytes in one register */
        __m128i kv = key_vec(_mm_set_epi64x((long long)load8(name + n - 8), (long long)load8(name)));
        _mm_storel_epi64((__m128i *)(void *)o, kv);
        _mm_storel_epi64((__m128i *)(void *)(o + n - 8), _mm_unpackhi_epi64(kv, kv));
        return;
    }
#endif
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 < n; i += 8) store8(o + i, key_word(load8(name + i)));
        store8(o + n - 8, key_word(load8(name + n - 8)));   /* the last word, overlapping */
    } else if (n >= 4) {
        uint64_t a = load4(name), b = load4(name + n - 4);
        store4(o, key_word(a));
        store4(o + n - 4, key_word(b));
    } else {
        for (size_t i = 0; i < n; i++) o[i] = key_char(name[i]);
    }
}

/* A hash of the name that ignores ASCII case (0x20 set in every byte: only letters differ in
 * it among token bytes, and any other byte it merges is told apart by eq_nocase), from its length
 * and its first and last 8 bytes: the names a server sees differ there (Sec-Fetch-Dest and
 * Sec-Fetch-Mode), and a clash costs only a compare. *under is set nonzero when the name holds
 * '_', which takes every word (and for DEL, which a token never holds). */
static inline uint32_t name_scan(const char *s, size_t n, int *under)
{
    const uint64_t fold = 0x20 * ONES;
    uint64_t a, b, u;
    /* '_' is the one byte that fold makes 0x7f: 0x80 where a folded byte's low 7 bits are all
     * set and its high bit is clear (no carry crosses bytes). */
#define FOLDED_UNDER(fw) ((((fw) & LOWS7) + ONES) & ~(fw) & HIGHS)
    if (n >= 8) {
        a = load8(s) | fold;
        b = load8(s + n - 8) | fold;
#ifdef ENV_SSE2
        /* Both words in one register, one compare for 16 bytes; a longer name by 16-byte blocks
         * (the last overlapping), with no word loop for the names of 9 to 16 bytes. */
        const __m128i vfold = _mm_set1_epi8(0x20), unders = _mm_set1_epi8(0x7f);
        __m128i hit = _mm_cmpeq_epi8(_mm_set_epi64x((long long)b, (long long)a), unders);
        if (n > 16) {
            for (size_t i = 8; i + 16 < n; i += 16)
                hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_or_si128(load16(s + i), vfold), unders));
            hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_or_si128(load16(s + n - 16), vfold), unders));
        }
        u = (unsigned)_mm_movemask_epi8(hit);
#else
        u = FOLDED_UNDER(a) | FOLDED_UNDER(b);
        for (size_t i = 8; i + 8 < n; i += 8) u |= FOLDED_UNDER(load8(s + i) | fold);
#endif
    } else if (n >= 4) {
        a = load4(s) | fold;
        b = load4(s + n - 4) | fold;
        u = FOLDED_UNDER(a | b << 32);
    } else {
        a = n ? (uint64_t)(unsigned char)s[0] | (uint64_t)(unsigned char)s[n / 2] << 8 |
                (uint64_t)(unsigned char)s[n - 1] << 16 : 0;
        b = a |= fold;
        u = n && (s[0] == '_' || s[n / 2] == '_' || s[n - 1] == '_');
    }
#undef FOLDED_UNDER
    *under = u != 0;
    return (uint32_t)(((a ^ n) * 0x9E3779B97F4A7C15ull ^ b) * 0xC2B2AE3D27D4EB4Full >> 32);
}

/* How a distinct name becomes an entry. */
enum { NAME_PLAIN, NAME_DROP, NAME_CONTENT_TYPE, NAME_CONTENT_LENGTH, NAME_HOST, NAME_COOKIE };

/* Compares by words with 0x20 set in every byte (name_scan's fold: among token bytes it makes
 * only upper-case letters lower-case), so "Host" and "HOST" are "host". */
#define FOLD4(p) (load4(p) | 0x20202020ull)
#define FOLD8(p) (load8(p) | 0x2020202020202020ull)
#define LIT4(lit) load4(lit)
#define LIT8(lit) load8(lit)

static inline int name_kind(const char *name, size_t n)
{
    switch (n) {
    case 4: return FOLD4(name) == LIT4("host") ? NAME_HOST : NAME_PLAIN;
    /* httpoxy (CVE-2016-5385): HTTP_PROXY in the environment is mistaken for a proxy setting. */
    case 5: return FOLD4(name) == LIT4("prox") && (name[4] | 0x20) == 'y' ? NAME_DROP : NAME_PLAIN;
    case 6: return FOLD4(name) == LIT4("cook") && FOLD4(name + 2) == LIT4("okie") ? NAME_COOKIE : NAME_PLAIN;
    case 12:
        return FOLD8(name) == LIT8("content-") && FOLD4(name + 8) == LIT4("type") ? NAME_CONTENT_TYPE
                                                                               : NAME_PLAIN;
    case 14:
        return FOLD8(name) == LIT8("content-") && FOLD8(name + 6) == LIT8("t-length") ? NAME_CONTENT_LENGTH
                                                                                   : NAME_PLAIN;
    default: return NAME_PLAIN;
    }
}

/* Content-Length's value as the app should see it: the first element (sp_request_framing has
 * checked that every element of every Content-Length field is the same number). */
static void first_list_element(const sp_header *h, const char **v, size_t *vn)
{
    const char *s = h->value, *e = h->value + h->value_len;
    const char *comma = memchr(s, ',', h->value_len);
    if (comma) e = comma;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
    *v = s;
    *vn = (size_t)(e - s);
}

/* ---- The environ's entries, one at a time (sp_env_begin / sp_env_next) ------------------------
 * One entry per distinct name, in first-seen order; repeats are joined (RFC 9110 5.3), with "; "
 * for Cookie (RFC 6265 5.4). Most heads repeat no name, so the entries first go out as the names
 * come, each name put in an open-addressing table of the names' hashes (it->slot) as it goes:
 * a name found there is the first repeat, and the iterator starts over (SP_ENV_AGAIN) with every
 * field linked to its name's next one (link_fields), so that the entries it gave come again,
 * joined. Past SP_ENV_LINKED fields (more than the server's parser ever returns) names are
 * compared pairwise instead. */
enum { MODE_FIRST, MODE_LINKED, MODE_PAIRWISE };

/* The mask of a table of names for nh fields (2 * SP_ENV_LINKED slots at most): a power of two,
 * at least 16 and at least twice nh, so that probes stay short. */
static inline size_t slot_mask(size_t nh)
{
    size_t mask = 15;
    while (mask + 1 < 2 * nh) mask = mask * 2 + 1;
    return mask;
}

/* next[i]: the index of the next field with field i's name, 0 for none (field 0 is never a later
 * one); later[i]: 1 for a repeat, which is packed with its name's first field. */
static void link_fields(sp_env_iter *it, const sp_header *hs, size_t nh)
{
    struct slot {
        uint16_t first1;   /* 1 + the name's first field; 0: empty */
        uint16_t last;     /* the name's last field so far */
    } slots[2 * SP_ENV_LINKED];
    size_t mask = slot_mask(nh);
    memset(slots, 0, (mask + 1) * sizeof slots[0]);
    for (size_t i = 0; i < nh; i++) {
        const char *name = hs[i].name;
        size_t n = hs[i].name_len;
        int under;
        it->next[i] = 0;
        it->later[i] = 0;
        for (size_t at = name_scan(name, n, &under) & mask;; at = (at + 1) & mask) {
            struct slot *sl = &slots[at];
            if (!sl->first1) {
                sl->first1 = (uint16_t)(i + 1);
                sl->last = (uint16_t)i;
                break;
            }
            const sp_header *f = &hs[sl->first1 - 1];
            if (eq_nocase(f->name, f->name_len, name, n)) {
                it->next[sl->last] = (uint16_t)i;
                sl->last = (uint16_t)i;
                it->later[i] = 1;
                break;
            }
        }
    }
}

/* The index of the next field after i with field i's name, or 0 (the pairwise way). */
static size_t next_same_name(const sp_header *hs, size_t nh, size_t i)
{
    for (size_t k = i + 1; k < nh; k++)
        if (eq_nocase(hs[k].name, hs[k].name_len, hs[i].name, hs[i].name_len)) return k;
    return 0;
}

static int is_later_field(const sp_header *hs, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (eq_nocase(hs[j].name, hs[j].name_len, hs[i].name, hs[i].name_len)) return 1;
    return 0;
}

/* The field after i with its name, 0 for none; MODE_FIRST has seen no repeat (so none). */
static inline size_t next_of(const sp_env_iter *it, size_t i)
{
    if (it->mode == MODE_LINKED) return it->next[i];
    if (it->mode == MODE_PAIRWISE) return next_same_name(it->req->headers, it->req->num_headers, i);
    return 0;
}

/* The target's parts as the environ has them: PATH_INFO's bytes before decoding, and for an
 * absolute-form target its authority (else NULL). */
static void path_of(const sp_request_head *req, const char **path, size_t *path_len,
                    const char **auth, size_t *auth_len)
{
    target_parts(req->target, req->target_len, path, path_len, auth, auth_len);
    /* RFC 9112 3.2.2: for an absolute-form target the server uses its authority, not the Host
     * field; and an empty path there is "/" (RFC 9110 4.2.3). */
    if (*auth && *path_len == 0) {
        *path = "/";
        *path_len = 1;
    }
}

void sp_env_begin(sp_env_iter *it, const sp_request_head *req)
{
    const char *t = req->target;
    size_t tn = req->target_len, nh = req->num_headers;
    it->req = req;
    it->i = 0;
    path_of(req, &it->path, &it->path_len, &it->authority, &it->authority_len);
    it->absolute = it->authority != NULL;   /* 2 once its HTTP_HOST is given */
    const char *q = memchr(t, '?', tn);
    it->query = q ? q + 1 : "";
    it->query_len = q ? (size_t)(t + tn - (q + 1)) : 0;
    if (nh <= SP_ENV_LINKED) {
        it->mode = MODE_FIRST;
        it->mask = slot_mask(nh);
        memset(it->slot, 0, (it->mask + 1) * sizeof it->slot[0]);
    } else {
        it->mode = MODE_PAIRWISE;
    }
}

ssize_t sp_env_path(const sp_request_head *req, char *out, size_t cap)
{
    const char *p, *auth;
    size_t n, auth_len;
    path_of(req, &p, &n, &auth, &auth_len);
    return decode(p, n, out, cap);
}

/* The entry of field i (at h), of the name kind kind and case-blind hash hash, as its name alone
 * makes it: before a repeat's join and an absolute-form target's Host. */
static ENV_INLINE void entry_of(const sp_header *h, size_t i, int kind, uint32_t hash, sp_env_field *f)
{
    f->name = h->name;
    f->name_len = h->name_len;
    f->hash = hash;
    /* CONTENT_TYPE and CONTENT_LENGTH without the HTTP_ prefix (PEP 3333). */
    f->cgi = kind == NAME_CONTENT_TYPE || kind == NAME_CONTENT_LENGTH;
    f->first = i;
    f->sep = NULL;
    if (kind == NAME_CONTENT_LENGTH) {
        first_list_element(h, &f->value, &f->value_len);
    } else {
        f->value = h->value;
        f->value_len = h->value_len;
    }
}

/* sp_env_next, inline in sp_env_pack. */
static ENV_INLINE int env_next(sp_env_iter *it, sp_env_field *f)
{
    const sp_header *hs = it->req->headers;
    size_t nh = it->req->num_headers, i = it->i;
    int mode = it->mode, kind = NAME_PLAIN;
    uint32_t hash = 0;
    for (; i < nh; i++) {
        const char *name = hs[i].name;
        size_t nn = hs[i].name_len;
        if (mode != MODE_FIRST && (mode == MODE_LINKED ? it->later[i] : is_later_field(hs, i)))
            continue;   /* a repeat: its value goes with its name's first field's */
        /* A name holding '_' is dropped, with its repeats (which hold it too), since "X_Auth" and
         * "X-Auth" would make the same HTTP_X_AUTH key and a proxy that strips or vouches for one
         * spelling would be bypassed with the other (header spoofing). */
        int under;
        hash = name_scan(name, nn, &under);
        if (under) continue;
        kind = name_kind(name, nn);
        if (kind == NAME_DROP) continue;
        if (mode == MODE_FIRST) {
            /* A slot holds 1 + the field's index and, above it, the hash's top 16 bits: names
             * that only share a slot (the Sec-Fetch-* of one length) are told apart without a
             * compare. */
            uint32_t tag = hash & 0xFFFF0000u;
            size_t mask = it->mask;
            for (size_t at = hash & mask;; at = (at + 1) & mask) {
                uint32_t s = it->slot[at];
                if (!s) {
                    it->slot[at] = tag | (uint32_t)(i + 1);
                    break;
                }
                if ((s & 0xFFFF0000u) != tag) continue;
                s &= 0xFFFF;
                if (eq_nocase(hs[s - 1].name, hs[s - 1].name_len, name, nn)) {
                    /* The name repeats: the entries given so far come again, joined. */
                    link_fields(it, hs, nh);
                    it->mode = MODE_LINKED;
                    it->i = 0;
                    it->absolute = it->authority != NULL;
                    return SP_ENV_AGAIN;
                }
            }
        }
        break;
    }
    if (i == nh) {
        it->i = nh;
        if (it->absolute != 1) return 0;
        it->absolute = 2;   /* HTTP/1.0 without Host: the target's authority */
        f->name = "Host";
        f->name_len = 4;
        f->hash = 0;
        f->cgi = 0;
        f->first = nh;
        f->sep = NULL;
        f->value = it->authority;
        f->value_len = it->authority_len;
        return 1;
    }
    it->i = i + 1;
    entry_of(&hs[i], i, kind, hash, f);
    if (kind == NAME_HOST && it->absolute) {
        f->value = it->authority;
        f->value_len = it->authority_len;
        it->absolute = 2;
        return 1;
    }
    if (kind == NAME_CONTENT_LENGTH)
        return 1;   /* the first field's first element (sp_request_framing: all the same) */
    size_t k = mode == MODE_FIRST ? 0 : next_of(it, i);
    if (k) {   /* joined: the whole length, for sp_env_join */
        f->sep = kind == NAME_COOKIE ? "; " : ", ";
        for (; k; k = next_of(it, k)) f->value_len += 2 + hs[k].value_len;
    }
    return 1;
}

size_t sp_env_all(sp_env_iter *it, sp_env_field *out)
{
    size_t n = 0;
    int more;
    while ((more = env_next(it, &out[n])) != 0) {
        if (more == SP_ENV_AGAIN) n = 0;   /* a name repeats: all again, joined */
        else n++;
    }
    return n;
}

int sp_env_next(sp_env_iter *it, sp_env_field *f)
{
    return env_next(it, f);
}

/* No name repeats (MODE_FIRST stays for a whole walk only then: the first repeat links the
 * fields), and no Host comes from the target: each entry is then its own field's, as entry_of
 * makes it from the field's name and value alone. */
int sp_env_replayable(const sp_env_iter *it)
{
    return it->mode == MODE_FIRST && it->authority == NULL;
}

void sp_env_replay(const sp_env_iter *it, const unsigned char *first, size_t n, sp_env_field *out)
{
    const sp_header *hs = it->req->headers;
    for (size_t j = 0; j < n; j++) {
        const sp_header *h = &hs[first[j]];
        entry_of(h, first[j], name_kind(h->name, h->name_len), 0, &out[j]);
    }
}

static ENV_INLINE size_t env_key(const sp_env_field *f, char *out)
{
    size_t prefix = f->cgi ? 0 : 5;
    if (prefix) memcpy(out, "HTTP_", 5);
    key_chars(out + prefix, f->name, f->name_len);
    return prefix + f->name_len;
}

size_t sp_env_key(const sp_env_field *f, char *out)
{
    return env_key(f, out);
}

void sp_env_join(const sp_env_iter *it, const sp_env_field *f, char *out)
{
    const sp_header *hs = it->req->headers;
    size_t k = f->first, o = 0;
    memcpy(out, hs[k].value, hs[k].value_len);
    o += hs[k].value_len;
    while ((k = next_of(it, k)) != 0) {
        memcpy(out + o, f->sep, 2);
        memcpy(out + o + 2, hs[k].value, hs[k].value_len);
        o += 2 + hs[k].value_len;
    }
}

/* ---- sp_env_pack: the entries, packed ----------------------------------------------------------- */

ssize_t sp_env_pack(const sp_request_head *req, char *out, size_t cap)
{
    static const char http10[] = "HTTP/1.0", http11[] = "HTTP/1.1";
    packer pk = {out, cap, 0, 0};
    sp_env_iter it;
    sp_env_begin(&it, req);

    /* The fixed entries are values only, in SP_ENV_FIXED order: Python zips them with constant
     * (hashed once) key strings instead of building and hashing five new keys per request. */
    PUT_VALUE(&pk, req->method, req->method_len);
    if (pk.full) return ERR(HEADERS_TOO_LARGE);
    /* PATH_INFO is decoded straight into out; it is never longer than the target. */
    ssize_t plen = decode(it.path, it.path_len, out + pk.pos, pk.cap - pk.pos);
    if (plen < 0) return plen;
    pk.pos += (size_t)plen;
    put_nul(&pk);
    PUT_VALUE(&pk, it.query, it.query_len);
    if (req->minor_version == 0) PUT_VALUE(&pk, http10, sizeof http10 - 1);
    else PUT_VALUE(&pk, http11, sizeof http11 - 1);
    PUT_VALUE(&pk, req->target, req->target_len);

    size_t fields_at = pk.pos;
    sp_env_field f;
    int more;
    while (!pk.full && (more = env_next(&it, &f)) != 0) {
        if (more == SP_ENV_AGAIN) {   /* a name repeats: its entries again, joined */
            pk.pos = fields_at;
            continue;
        }
        size_t kn = (f.cgi ? 0 : 5) + f.name_len;
        if (pk.cap - pk.pos <= kn + 1 + f.value_len) {   /* the key, the value and two NULs */
            overflow(&pk);
            break;
        }
        pk.pos += env_key(&f, pk.out + pk.pos);
        pk.out[pk.pos++] = '\0';
        if (f.sep) sp_env_join(&it, &f, pk.out + pk.pos);
        else memcpy(pk.out + pk.pos, f.value, f.value_len);
        pk.pos += f.value_len;
        pk.out[pk.pos++] = '\0';
    }
    if (pk.full) return ERR(HEADERS_TOO_LARGE);
    return (ssize_t)pk.pos;
}
