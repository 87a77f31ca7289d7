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

#include <stdint.h>
#include <string.h>

#define ERR(status) (-(SP_HTTP_##status))

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

/* Inline so that fixed-size copies (keys, separators) compile to plain stores. */
static inline void put(packer *pk, const char *s, size_t n)
{
    if (pk->cap - pk->pos < n) {
        overflow(pk);
        return;
    }
    memcpy(pk->out + pk->pos, s, n);
    pk->pos += n;
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

/* A fixed key with its NUL, then the value and its NUL. */
#define PUT_ENTRY(pk, key, v, vn) (put((pk), key, sizeof key), put_z((pk), (v), (vn)))
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

static inline uint64_t load8(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t load4(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

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

/* Nonzero when a byte of w is '_'. */
static inline uint64_t has_underscore(uint64_t w)
{
    return zero_bytes(w ^ ('_' * ONES));
}

static inline char key_char(char c)
{
    if (c == '-') return '_';
    return (c >= 'a' && c <= 'z') ? (char)(c - ('a' - 'A')) : c;
}

/* Writes the environ key's bytes for name[0..n) to o[0..n). Returns nonzero when the name holds
 * '_': such a name is dropped, since "X_Auth" and "X-Auth" would make the same HTTP_X_AUTH key and
 * a proxy that strips or vouches for one spelling would be bypassed with the other (header
 * spoofing). */
static int key_chars(char *o, const char *name, size_t n)
{
    uint64_t under = 0;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 < n; i += 8) {
            uint64_t w = load8(name + i);
            under |= has_underscore(w);
            store8(o + i, key_word(w));
        }
        uint64_t w = load8(name + n - 8);   /* the last word, overlapping the one before */
        under |= has_underscore(w);
        store8(o + n - 8, key_word(w));
    } else if (n >= 4) {
        uint64_t a = load4(name), b = load4(name + n - 4);
        under = has_underscore(a | 0xFFFFFFFF00000000ull) | has_underscore(b | 0xFFFFFFFF00000000ull);
        store4(o, key_word(a));
        store4(o + n - 4, key_word(b));
    } else {
        for (size_t i = 0; i < n; i++) {
            under |= name[i] == '_';
            o[i] = key_char(name[i]);
        }
    }
    return under != 0;
}

/* Names of 8 bytes or more are made keys 16 bytes at a time where SSE2 is the baseline (x86-64):
 * ~15 instructions for what takes ~80 eight bytes at a time. -DSP_NO_SIMD keeps the SWAR way. */
#if !defined(SP_NO_SIMD) && defined(__SSE2__) && defined(__x86_64__) \
    && (defined(__GNUC__) || defined(__clang__))
#include <emmintrin.h>
#define ENV_SSE2 1

/* key_word for 16 bytes: 'a'-'z' upper-cased, '-' as '_'; *under gets a bit for each '_'. Signed
 * compares: bytes 0x80-0xff are negative, so never taken for letters. */
static inline __m128i key_vec(__m128i v, unsigned *under)
{
    __m128i lower = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('a' - 1)),
                                  _mm_cmplt_epi8(v, _mm_set1_epi8('z' + 1)));
    *under |= (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('_')));
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

/* key_chars, and *hash set to a hash of the key's bytes as they are written: equal keys, equal
 * hashes. Between two names without '_' (the others are dropped) equal keys mean the same name in
 * any case, since only case and '-' -> '_' fold, and such names hold no '_' to fold with. */
static int key_chars_hash(char *o, const char *name, size_t n, uint64_t *hash)
{
    const uint64_t k = 0x9E3779B97F4A7C15ull;
    uint64_t under = 0, h = (uint64_t)n * k;
#ifdef ENV_SSE2
    if (n >= 8) {
        /* Whole 16-byte blocks, then the last 16 bytes (overlapping the block before), or for
         * names under 16 bytes their first and last 8 in one register; only [name, name + n) is
         * read and only [o, o + n) written. The hash reads the key words back from o. */
        unsigned u = 0;
        if (n >= 16) {
            size_t i = 0;
            for (; i + 16 < n; i += 16) {
                store16(o + i, key_vec(load16(name + i), &u));
                h = (h ^ load8(o + i)) * k;
                h = (h ^ load8(o + i + 8)) * k;
            }
            store16(o + n - 16, key_vec(load16(name + n - 16), &u));
            h = (h ^ load8(o + n - 16)) * k;
        } else {
            __m128i v = _mm_set_epi64x((long long)load8(name + n - 8), (long long)load8(name));
            __m128i kv = key_vec(v, &u);
            _mm_storel_epi64((__m128i *)(void *)o, kv);
            _mm_storel_epi64((__m128i *)(void *)(o + n - 8), _mm_unpackhi_epi64(kv, kv));
            h = (h ^ load8(o)) * k;
        }
        *hash = (h ^ load8(o + n - 8)) * k;
        return u != 0;
    }
#endif
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 < n; i += 8) {
            uint64_t w = load8(name + i), kw = key_word(w);
            under |= has_underscore(w);
            store8(o + i, kw);
            h = (h ^ kw) * k;
        }
        uint64_t w = load8(name + n - 8), kw = key_word(w);   /* overlapping the one before */
        under |= has_underscore(w);
        store8(o + n - 8, kw);
        h = (h ^ kw) * k;
    } else if (n >= 4) {
        uint64_t a = load4(name), b = load4(name + n - 4);
        under = has_underscore(a | 0xFFFFFFFF00000000ull) | has_underscore(b | 0xFFFFFFFF00000000ull);
        uint64_t ka = key_word(a) & 0xFFFFFFFFull, kb = key_word(b) & 0xFFFFFFFFull;
        store4(o, ka);
        store4(o + n - 4, kb);
        h = (h ^ (ka | kb << 32)) * k;
    } else {
        uint64_t v = 0;
        for (size_t i = 0; i < n; i++) {
            under |= name[i] == '_';
            o[i] = key_char(name[i]);
            v = v << 8 | (unsigned char)o[i];
        }
        h = (h ^ v) * k;
    }
    *hash = h;
    return under != 0;
}

/* A hash of the name that ignores ASCII case (0x20 set in every byte: only letters differ in
 * it among token bytes, and any other byte it merges is told apart by eq_nocase). */
static inline uint32_t name_hash(const char *s, size_t n)
{
    const uint64_t k = 0x9E3779B97F4A7C15ull, fold = 0x20 * ONES;
    uint64_t h = (uint64_t)n * k;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 < n; i += 8) h = (h ^ (load8(s + i) | fold)) * k;
        h = (h ^ (load8(s + n - 8) | fold)) * k;
    } else if (n >= 4) {
        h = (h ^ ((load4(s) | load4(s + n - 4) << 32) | fold)) * k;
    } else if (n) {
        uint64_t v = (uint64_t)(unsigned char)s[0] | (uint64_t)(unsigned char)s[n / 2] << 8 |
                     (uint64_t)(unsigned char)s[n - 1] << 16;
        h = (h ^ (v | fold)) * k;
    }
    return (uint32_t)(h >> 32);
}

/* How a distinct name is packed. */
enum { NAME_PLAIN, NAME_DROP, NAME_CONTENT_TYPE, NAME_CONTENT_LENGTH, NAME_HOST, NAME_COOKIE };

static int name_kind(const char *name, size_t n)
{
    switch (n) {
    case 4: return EQ_LIT(name, n, "host") ? NAME_HOST : NAME_PLAIN;
    /* httpoxy (CVE-2016-5385): HTTP_PROXY in the environment is mistaken for a proxy setting. */
    case 5: return EQ_LIT(name, n, "proxy") ? NAME_DROP : NAME_PLAIN;
    case 6: return EQ_LIT(name, n, "cookie") ? NAME_COOKIE : NAME_PLAIN;
    case 12: return EQ_LIT(name, n, "content-type") ? NAME_CONTENT_TYPE : NAME_PLAIN;
    case 14: return EQ_LIT(name, n, "content-length") ? NAME_CONTENT_LENGTH : NAME_PLAIN;
    default: return NAME_PLAIN;
    }
}

/* name_kind for a name already made a key (upper case, '_' for '-'): whole-word compares. A name
 * holding '_' is dropped before it is asked, so "CONTENT_TYPE" is only Content-Type's key. */
static inline int key_kind(const char *key, size_t n)
{
    switch (n) {
    case 4: return memcmp(key, "HOST", 4) == 0 ? NAME_HOST : NAME_PLAIN;
    case 5: return memcmp(key, "PROXY", 5) == 0 ? NAME_DROP : NAME_PLAIN;
    case 6: return memcmp(key, "COOKIE", 6) == 0 ? NAME_COOKIE : NAME_PLAIN;
    case 12: return memcmp(key, "CONTENT_TYPE", 12) == 0 ? NAME_CONTENT_TYPE : NAME_PLAIN;
    case 14: return memcmp(key, "CONTENT_LENGTH", 14) == 0 ? NAME_CONTENT_LENGTH : NAME_PLAIN;
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

/* Where the later fields of a name are: next[i] is the index of the next field with field i's
 * name, 0 for none (field 0 is never a later one). Linked by the hash index, or, past
 * ENV_LINKED fields (more than the server's parser ever returns), by comparing names pairwise. */
#define ENV_LINKED 256
#define ENV_SLOTS (2 * ENV_LINKED)   /* a power of two, at most half full */

typedef struct field_links {
    uint16_t next[ENV_LINKED];
    unsigned char later[ENV_LINKED];   /* 1: a repeat, packed with the name's first field */
} field_links;

/* The mask of an open-addressing table of names for nh fields (ENV_SLOTS at most): a power of
 * two, at least 16 and at least twice nh, so that probes stay short. */
static inline size_t slot_mask(size_t nh)
{
    size_t mask = 15;
    while (mask + 1 < 2 * nh) mask = mask * 2 + 1;
    return mask;
}

static void link_fields(const sp_header *hs, size_t nh, field_links *fl)
{
    struct slot {
        uint16_t first1;   /* 1 + the name's first field; 0: empty */
        uint16_t last;     /* the name's last field so far */
    } slots[ENV_SLOTS];
    size_t mask = slot_mask(nh);
    memset(slots, 0, (mask + 1) * sizeof slots[0]);
    for (size_t i = 0; i < nh; i++) {
        const char *name = hs[i].name;
        size_t n = hs[i].name_len;
        fl->next[i] = 0;
        fl->later[i] = 0;
        for (size_t at = name_hash(name, n) & mask;; at = (at + 1) & mask) {
            struct slot *sl = &slots[at];
            if (!sl->first1) {
                sl->first1 = (uint16_t)(i + 1);
                sl->last = (uint16_t)i;
                break;
            }
            const sp_header *f = &hs[sl->first1 - 1];
            if (eq_nocase(f->name, f->name_len, name, n)) {
                fl->next[sl->last] = (uint16_t)i;
                sl->last = (uint16_t)i;
                fl->later[i] = 1;
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

/* The fields' entries in one pass, for the usual head, whose names are all distinct: each key is
 * hashed as it is written and looked up among the keys written before it. Returns 0 when done, 1
 * when a name repeats (or the block is full): the caller then packs the fields again the general
 * way (sp_env_pack's loop), from where this began. So the hash index is built from the keys' words
 * already in hand, in the same pass, where the general way hashes every name once more to link
 * repeats first. nh <= ENV_LINKED. */
static int pack_fields_once(packer *pk, const sp_header *hs, size_t nh, const char *authority,
                            size_t authority_len, int *absolute)
{
    struct key_slot {
        uint32_t off1;   /* 1 + where the key's name part is in out; 0: empty */
        uint32_t len;
    } slots[ENV_SLOTS];
    size_t mask = slot_mask(nh);
    memset(slots, 0, (mask + 1) * sizeof slots[0]);
    for (size_t i = 0; i < nh; i++) {
        const char *name = hs[i].name;
        size_t nn = hs[i].name_len;
        /* The key is made after "HTTP_"'s room, then told apart (key_kind); CONTENT_TYPE and
         * CONTENT_LENGTH move to where the prefix would be. A block too small for the prefix
         * then is packed again the general way, which knows the kind first. */
        if (pk->cap - pk->pos < 5 + nn + 1) {
            if (memchr(name, '_', nn)) continue;   /* dropped: it needs no room */
            return 1;
        }
        char *key = pk->out + pk->pos + 5;
        uint64_t h;
        if (key_chars_hash(key, name, nn, &h)) continue;   /* '_': dropped */
        int kind = key_kind(key, nn);
        if (kind == NAME_DROP) continue;
        size_t prefix = 5;
        if (kind == NAME_CONTENT_TYPE || kind == NAME_CONTENT_LENGTH) {
            prefix = 0;
            key -= 5;
            memmove(key, key + 5, nn);
        }
        for (size_t at = (size_t)(h >> 40) & mask;; at = (at + 1) & mask) {
            struct key_slot *sl = &slots[at];
            if (!sl->off1) {
                sl->off1 = (uint32_t)(key - pk->out) + 1;
                sl->len = (uint32_t)nn;
                break;
            }
            if (sl->len == nn && memcmp(pk->out + sl->off1 - 1, key, nn) == 0) return 1;   /* a repeat */
        }
        if (prefix) memcpy(pk->out + pk->pos, "HTTP_", 5);
        pk->pos += prefix + nn;
        pk->out[pk->pos++] = '\0';
        if (*absolute && kind == NAME_HOST) {
            put_z(pk, authority, authority_len);
            *absolute = 2;
        } else if (kind == NAME_CONTENT_LENGTH) {
            const char *v;
            size_t vn;
            first_list_element(&hs[i], &v, &vn);
            put_z(pk, v, vn);
        } else {
            put_z(pk, hs[i].value, hs[i].value_len);
        }
        if (pk->full) return 1;
    }
    return 0;
}

ssize_t sp_env_pack(const sp_request_head *req, char *out, size_t cap)
{
    static const char http10[] = "HTTP/1.0", http11[] = "HTTP/1.1";
    packer pk = {out, cap, 0, 0};
    const char *t = req->target;
    size_t tn = req->target_len;

    /* The fixed entries are values only, in SP_ENV_FIXED order: Python zips them with constant
     * (hashed once) key strings instead of building and hashing five new keys per request. */
    PUT_VALUE(&pk, req->method, req->method_len);

    /* PATH_INFO is decoded straight into out; it is never longer than the target. */
    if (pk.full) return ERR(HEADERS_TOO_LARGE);
    const char *path;
    size_t path_raw;
    const char *authority;
    size_t authority_len;
    target_parts(t, tn, &path, &path_raw, &authority, &authority_len);
    /* RFC 9112 3.2.2: for an absolute-form target the server uses its authority, not the Host
     * field; and an empty path there is "/" (RFC 9110 4.2.3). */
    int absolute = authority != NULL;   /* 2 once HTTP_HOST is emitted */
    if (absolute && path_raw == 0) {
        path = "/";
        path_raw = 1;
    }
    ssize_t plen = decode(path, path_raw, out + pk.pos, pk.cap - pk.pos);
    if (plen < 0) return plen;
    pk.pos += (size_t)plen;
    put_nul(&pk);

    const char *q = memchr(t, '?', tn);
    if (q) PUT_VALUE(&pk, q + 1, (size_t)(t + tn - (q + 1)));
    else PUT_VALUE(&pk, "", 0);
    if (req->minor_version == 0) PUT_VALUE(&pk, http10, sizeof http10 - 1);
    else PUT_VALUE(&pk, http11, sizeof http11 - 1);
    PUT_VALUE(&pk, t, tn);

    /* One entry per distinct name, in first-seen order; repeats are joined (RFC 9110 5.3), with
     * "; " for Cookie (RFC 6265 5.4). The repeats of a name are found through a hash index of the
     * names, built in one pass: linear in the field count. */
    const sp_header *hs = req->headers;
    size_t nh = req->num_headers;
    int linked = nh <= ENV_LINKED;
    if (linked && !pk.full) {
        packer at = pk;
        int was = absolute;
        if (pack_fields_once(&pk, hs, nh, authority, authority_len, &absolute) == 0)
            nh = 0;   /* all packed: the general way below has nothing to do */
        else
            pk = at, absolute = was;   /* a repeated name: packed again below, the general way */
    }
    field_links fl;
    if (linked && nh) link_fields(hs, nh, &fl);
    for (size_t i = 0; i < nh && !pk.full; i++) {
        if (linked ? fl.later[i] : is_later_field(hs, i)) continue;   /* packed with its first */
        const char *name = hs[i].name;
        size_t nn = hs[i].name_len;
        int kind = name_kind(name, nn);
        if (kind == NAME_DROP) continue;

        /* The key: CONTENT_TYPE and CONTENT_LENGTH without the HTTP_ prefix (PEP 3333),
         * HTTP_<NAME> for the rest; then its NUL. */
        size_t prefix = (kind == NAME_CONTENT_TYPE || kind == NAME_CONTENT_LENGTH) ? 0 : 5;
        if (pk.cap - pk.pos < prefix + nn + 1) {
            if (memchr(name, '_', nn)) continue;   /* dropped: it needs no room */
            overflow(&pk);
            break;
        }
        if (key_chars(pk.out + pk.pos + prefix, name, nn)) continue;   /* '_': dropped, with its repeats */
        if (prefix) memcpy(pk.out + pk.pos, "HTTP_", 5);
        pk.pos += prefix + nn;
        pk.out[pk.pos++] = '\0';

        if (absolute && kind == NAME_HOST) {
            put_z(&pk, authority, authority_len);
            absolute = 2;
            continue;
        }
        if (kind == NAME_CONTENT_LENGTH) {
            const char *v;
            size_t vn;
            first_list_element(&hs[i], &v, &vn);
            put_z(&pk, v, vn);
            continue;
        }
        size_t k = linked ? fl.next[i] : next_same_name(hs, nh, i);
        if (!k) {   /* the usual case: the name once */
            put_z(&pk, hs[i].value, hs[i].value_len);
            continue;
        }
        const char *sep = kind == NAME_COOKIE ? "; " : ", ";
        put(&pk, hs[i].value, hs[i].value_len);
        for (k = i;;) {
            k = linked ? fl.next[k] : next_same_name(hs, nh, k);
            if (!k) break;
            put(&pk, sep, 2);
            put(&pk, hs[k].value, hs[k].value_len);
        }
        put_nul(&pk);
    }
    if (absolute == 1) PUT_ENTRY(&pk, "HTTP_HOST", authority, authority_len);   /* 1.0, no Host */
    if (pk.full) return ERR(HEADERS_TOO_LARGE);
    return (ssize_t)pk.pos;
}
