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

#include <string.h>

#define ERR(status) (-(SP_HTTP_##status))

static inline char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

static inline char ascii_upper(char c)
{
    return (c >= 'a' && c <= 'z') ? (char)(c - ('a' - 'A')) : c;
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
    int full;  /* something did not fit */
} packer;

/* Inline so that fixed-size copies (keys, separators) compile to plain stores. */
static inline void put(packer *pk, const char *s, size_t n)
{
    if (pk->full || pk->cap - pk->pos < n) {
        pk->full = 1;
        return;
    }
    memcpy(pk->out + pk->pos, s, n);
    pk->pos += n;
}

static inline void put_nul(packer *pk)
{
    if (pk->full || pk->pos == pk->cap) {
        pk->full = 1;
        return;
    }
    pk->out[pk->pos++] = '\0';
}

/* A fixed key with its NUL, then the value and its NUL. */
#define PUT_ENTRY(pk, key, v, vn) (put((pk), key, sizeof key), put((pk), (v), (vn)), put_nul(pk))
/* A value alone, for the fixed entries that open the block. */
#define PUT_VALUE(pk, v, vn) (put((pk), (v), (vn)), put_nul(pk))

/* Header names that never reach the application. */
static int dropped_name(const char *name, size_t n)
{
    /* '_' would make "X_Auth" and "X-Auth" the same HTTP_X_AUTH key: a proxy that strips or
     * vouches for one spelling would be bypassed with the other (header spoofing). */
    if (memchr(name, '_', n)) return 1;
    /* httpoxy (CVE-2016-5385): HTTP_PROXY in the environment is mistaken for a proxy setting. */
    if (EQ_LIT(name, n, "proxy")) return 1;
    return 0;
}

/* The environ key for a header name: CONTENT_TYPE and CONTENT_LENGTH without the HTTP_ prefix
 * (PEP 3333), HTTP_<NAME> uppercased with '-' as '_' for the rest. */
static void put_key(packer *pk, const char *name, size_t n)
{
    if (!EQ_LIT(name, n, "content-type") && !EQ_LIT(name, n, "content-length"))
        put(pk, "HTTP_", sizeof "HTTP_" - 1);
    if (pk->full || pk->cap - pk->pos < n) {
        pk->full = 1;
        return;
    }
    char *o = pk->out + pk->pos;
    for (size_t i = 0; i < n; i++) o[i] = name[i] == '-' ? '_' : ascii_upper(name[i]);
    pk->pos += n;
    put_nul(pk);
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
     * "; " for Cookie (RFC 6265 5.4). Quadratic in the field count, which the parser bounds
     * (100 by default); for the usual dozen fields it beats any hashing. */
    const sp_header *hs = req->headers;
    size_t nh = req->num_headers;
    for (size_t i = 0; i < nh && !pk.full; i++) {
        const char *name = hs[i].name;
        size_t nn = hs[i].name_len;
        if (dropped_name(name, nn)) continue;
        size_t j;
        for (j = 0; j < i; j++)
            if (eq_nocase(hs[j].name, hs[j].name_len, name, nn)) break;
        if (j < i) continue;  /* already emitted with the first occurrence */

        put_key(&pk, name, nn);
        if (absolute && EQ_LIT(name, nn, "host")) {
            put(&pk, authority, authority_len);
            put_nul(&pk);
            absolute = 2;
            continue;
        }
        if (EQ_LIT(name, nn, "content-length")) {
            const char *v;
            size_t vn;
            first_list_element(&hs[i], &v, &vn);
            put(&pk, v, vn);
            put_nul(&pk);
            continue;
        }
        int cookie = EQ_LIT(name, nn, "cookie");
        put(&pk, hs[i].value, hs[i].value_len);
        for (size_t k = i + 1; k < nh; k++) {
            if (!eq_nocase(hs[k].name, hs[k].name_len, name, nn)) continue;
            put(&pk, cookie ? "; " : ", ", 2);
            put(&pk, hs[k].value, hs[k].value_len);
        }
        put_nul(&pk);
    }
    if (absolute == 1) PUT_ENTRY(&pk, "HTTP_HOST", authority, authority_len);   /* 1.0, no Host */
    if (pk.full) return ERR(HEADERS_TOO_LARGE);
    return (ssize_t)pk.pos;
}
