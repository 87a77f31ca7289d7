/* environ.c -- the environ of a request, made from the block the core packed from its head, and
 * kept for a connection's repeats (the CPython part; see runner.c's theory of operation). */
#include "py.h"

#ifndef SP_NO_PYFAST

/* ---- environ from a request's packed block --------------------------------------------------
 *
 * A request whose head the handler's maps do not know (every request of a browser: its cookie,
 * path, Referer differ each time) gets its environ made here, from the block C packed when it
 * parsed the head (sp.h, sp_request.env: REMOTE_ADDR, the SP_ENV_FIXED values, "KEY\0value"
 * pairs, then REMOTE_PORT): a copy of the listener's constant environ, then one latin-1 str per
 * value (PEP 3333's "bytes as latin-1"). Keys are the same few dozen names request after
 * request, so each is made once and kept in a small table of interned strs, by its bytes; a
 * name the table has no room for is made for the request. */
#define KEY_SLOTS 256            /* a power of two; header names a server sees are far fewer */
#define KEY_MAX 47               /* longer names (rare, never hot) are not kept */
#define VAL_MAX 160              /* longer values (rare, and rarely repeated) are not kept */

/* A value str kept with the bytes it was made from: the next request's value for the same key,
 * when its bytes are the same, is this str again (strs are immutable) instead of a new one.
 * Most of a browser's fields repeat from request to request and from user to user (Host,
 * Accept*, User-Agent, Sec-Fetch-*, the method, the protocol, the client's address): sharing
 * their strs saves an allocation, a decode and a free each, ~200 instructions. A value that
 * differs costs a compare that fails early and a copy of its bytes. */
typedef struct { unsigned len; PyObject *val; char bytes[VAL_MAX]; } val_ent;
typedef struct {
    unsigned len; char name[KEY_MAX + 1]; PyObject *key;
    val_ent *last;               /* the key's last value, or NULL: never kept for a secret's */
    int proxied;                 /* a header a trusted proxy may have set (forwarded_name) */
    val_ent val;
} key_ent;
static key_ent env_keys[KEY_SLOTS];   /* the GIL guards it (pyfast is not built free-threaded) */
static PyObject *fixed_keys[6];       /* REMOTE_ADDR, then SP_ENV_FIXED's */
static val_ent fixed_vals[6];         /* their last values */
#define PORT_VALS 64                  /* a power of two */
static val_ent port_vals[PORT_VALS];  /* REMOTE_PORT values by the port's last digits: a
                                         keep-alive connection's requests share its port's str */

/* Values that are credentials are never kept, so that no compare's timing says anything of one
 * request's secret to another (and they differ from user to user anyway). */
static int secret_name(const char *p, size_t n)
{
    return (n == 11 && memcmp(p, "HTTP_COOKIE", 11) == 0)
        || (n == 18 && memcmp(p, "HTTP_AUTHORIZATION", 18) == 0);
}

static inline uint64_t load8(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* A key spawning.wsgi.forwarded reads (X-Forwarded-*, Forwarded): the environ then goes to it. */
static int forwarded_name(const char *p, size_t n)
{
    return (n >= 16 && memcmp(p, "HTTP_X_FORWARDED", 16) == 0)
        || (n == 14 && memcmp(p, "HTTP_FORWARDED", 14) == 0);
}

/* a[8..n) == b[8..n) for 16 < n <= KEY_MAX, by 8-byte words (the last one overlapping): the
 * long names (HTTP_ACCEPT_LANGUAGE, HTTP_SEC_FETCH_DEST, ...) a browser sends on every request
 * are told without a memcmp call, which cost ~35 instructions a name. */
static inline int same_middle(const char *a, const char *b, size_t n)
{
    size_t i = 8;
    for (; i + 8 < n; i += 8)
        if (load8(a + i) != load8(b + i))
            return 0;
    return load8(a + n - 8) == load8(b + n - 8);
}

/* The table's entry for the name p[0..n) (n <= KEY_MAX), made for it if it held another, or NULL
 * with a Python error. */
static key_ent *env_key(const char *p, size_t n)
{
    /* The length and the first and last 8 bytes tell the names a server sees apart (HTTP_
     * names share their first bytes, not their last); a clash costs only a table slot, which
     * the next name takes back, never a wrong key. A dozen instructions where a byte-wise hash
     * took 4 a byte. */
    uint64_t h = n;
    if (n >= 8) {
        h ^= load8(p) * 0x9E3779B97F4A7C15u ^ load8(p + n - 8) * 0xC2B2AE3D27D4EB4Fu;
    } else {
        for (size_t i = 0; i < n; i++)
            h = h * 31 + (unsigned char)p[i];
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDu;
    h ^= h >> 33;
    key_ent *e = &env_keys[h & (KEY_SLOTS - 1)];
    /* Names of 8 to 16 bytes (most keys) are told by their first and last 8 bytes, loaded
     * already for the hash, without a memcmp call. */
    if (e->key != NULL && e->len == n
            && (n >= 8 ? load8(e->name) == load8(p) && load8(e->name + n - 8) == load8(p + n - 8)
                         && (n <= 16 || same_middle(e->name, p, n))
                       : memcmp(e->name, p, n) == 0))
        return e;
    PyObject *k = PyUnicode_FromStringAndSize(p, (Py_ssize_t)n);
    if (k == NULL)
        return NULL;
    PyUnicode_InternInPlace(&k);
    Py_XDECREF(e->key);
    Py_CLEAR(e->val.val);
    e->key = k;                  /* the table's reference */
    e->len = (unsigned)n;
    memcpy(e->name, p, n);
    e->last = secret_name(p, n) ? NULL : &e->val;
    e->proxied = forwarded_name(p, n);
    return e;
}

#if defined(__GNUC__) || defined(__clang__)
#define ENV_INLINE inline __attribute__((always_inline))
#define ENV_NOINLINE __attribute__((noinline))
#else
#define ENV_INLINE inline
#define ENV_NOINLINE
#endif

/* env_value's new str for p[0..n), which c (NULL: none) then keeps; NULL with a Python error.
 * Out of line: most values are c's (see env_value), and this part's registers made every call
 * pay a prologue and an epilogue (~15 instructions, ~25 calls a browser's request). */
static ENV_NOINLINE PyObject *env_value_new(val_ent *c, const char *p, size_t n)
{
    PyObject *v = PyUnicode_DecodeLatin1(p, (Py_ssize_t)n, NULL);
    if (v != NULL && c != NULL && n <= VAL_MAX) {
        PyObject *old = c->val;
        Py_INCREF(v);
        c->val = v;
        c->len = (unsigned)n;
        memcpy(c->bytes, p, n);
        Py_XDECREF(old);
    }
    return v;
}

/* The str of the value p[0..n) as latin-1 (a new reference): c's when c (NULL: none) keeps the
 * same bytes, else a new one, which c then keeps. NULL with a Python error. Inlined into
 * env_set: the common case, c's str, is a compare and an incref. */
static ENV_INLINE PyObject *env_value(val_ent *c, const char *p, size_t n)
{
    /* The last 8 bytes first: values that differ from request to request (a path, a query, an
     * id) nearly always differ there, and are told apart without a memcmp call. */
    if (c != NULL && c->val != NULL && c->len == n
            && (n < 8 || load8(c->bytes + n - 8) == load8(p + n - 8)) && memcmp(c->bytes, p, n) == 0) {
        Py_INCREF(c->val);
        return c->val;
    }
    return env_value_new(c, p, n);
}

/* env[key] = the value p[0..n) (env_value, c as there); 0 or -1 with a Python error. Inlined:
 * it runs ~20 times a request, and its call's prologue and epilogue cost ~19 instructions each. */
static ENV_INLINE int env_set(PyObject *env, PyObject *key, val_ent *c, const char *p, size_t n)
{
    PyObject *v = env_value(c, p, n);
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItem(env, key, v);
    Py_DECREF(v);
    return rc;
}

/* The first NUL in p[0..end), or NULL. */
static inline const char *find_nul(const char *p, const char *end)
{
    return p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
}

/* The NULs of a block, in order: a block holds ~40 short strings, and a memchr call for each cost
 * ~28 instructions where one pass over the block, 64 bytes at a time, finds them all for ~10 a
 * NUL (SSE2, the x86-64 baseline; elsewhere memchr, one call a NUL). Reads only [p, end). */
#if !defined(SP_NO_SIMD) && defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
#include <emmintrin.h>
#define NUL_SCAN_SSE2 1
#endif

typedef struct {
    const char *at;     /* where mask's bit 0 is */
    const char *next;   /* the first byte not scanned yet */
    const char *end;
    uint64_t mask;      /* NULs found in [at, next) and not yet returned */
} nul_scan;

static inline void nul_scan_init(nul_scan *s, const char *p, const char *end)
{
    s->at = s->next = p;
    s->end = end;
    s->mask = 0;
}

#ifdef NUL_SCAN_SSE2
/* A bit for each NUL of p[0..16). */
static inline uint64_t nul_bits16(const char *p)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    return (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()));
}
#endif

/* The next NUL, or NULL past the last one. */
static inline const char *nul_next(nul_scan *s)
{
#ifdef NUL_SCAN_SSE2
    while (s->mask == 0) {
        const char *p = s->next;
        size_t left = (size_t)(s->end - p);
        if (left == 0)
            return NULL;
        uint64_t m;
        size_t n;
        if (left >= 64) {
            m = nul_bits16(p) | nul_bits16(p + 16) << 16 | nul_bits16(p + 32) << 32
                | nul_bits16(p + 48) << 48;
            n = 64;
        } else if (left >= 16) {
            m = nul_bits16(p);
            n = 16;
        } else {   /* the tail, under 16 bytes: byte by byte, never past end */
            m = 0;
            for (size_t i = 0; i < left; i++)
                m |= (uint64_t)(p[i] == 0) << i;
            n = left;
        }
        s->at = p;
        s->next = p + n;
        s->mask = m;
    }
    const char *z = s->at + __builtin_ctzll(s->mask);
    s->mask &= s->mask - 1;
    return z;
#else
    const char *z = find_nul(s->next, s->end);
    if (z != NULL)
        s->next = z + 1;
    return z;
#endif
}

/* The keys every environ gets from its request: REMOTE_ADDR, SP_ENV_FIXED's, REMOTE_PORT, and
 * wsgi.input (a body's, or the empty one), REMOTE_PORT last (roomy_base). */
#define EVERY_KEYS 8
static PyObject *every_keys[EVERY_KEYS];
static PyObject *s_sizeof;           /* interned "__sizeof__" */

/* 1 when one more key would grow the dict's table, 0 if not, -1 on a Python error: asked of a
 * copy (PyDict_Copy of a compact str-keyed dict clones its table), by its __sizeof__. */
static int would_grow(PyObject *d)
{
    PyObject *c = PyDict_Copy(d), *before = NULL, *after = NULL;
    int r = -1;
    if (c == NULL || (before = PyObject_CallMethodObjArgs(c, s_sizeof, NULL)) == NULL
            || PyDict_SetItem(c, s_sizeof, Py_None) < 0
            || (after = PyObject_CallMethodObjArgs(c, s_sizeof, NULL)) == NULL)
        goto out;
    r = PyObject_RichCompareBool(after, before, Py_GT);
out:
    Py_XDECREF(c);
    Py_XDECREF(before);
    Py_XDECREF(after);
    return r;
}

/* What a listener's environs are copied from: its constant environ (wsgi.base_environ) and the
 * keys every request sets (every_keys: placeholders each request overwrites, and the empty
 * wsgi.input, which stays for a request without a body); if roomy, in a table with room for a
 * browser's headers. A copy takes its original's table size (PyDict_Copy clones the table of a
 * compact dict), so an environ made from the roomy one does not grow its table as its headers
 * go in, where one copied from the 12 constants grew it at its 22nd key (~1,200 instructions a
 * browser's request). The limited API cannot presize a dict; a table grows, compacted, when a
 * new key finds it full, to 3 times the keys it holds (CPython's rule since 3.7). So the last of
 * the keys goes in only once the table is full: keys that are not the environ's (added, then
 * deleted) fill it first. 20 keys then take a table of 64 with room for 22 more, and it holds no
 * deleted entry, which a copy would carry. Where that fails (another growth rule), the result is
 * as good as a copy of the constants. The other, in the table of 32 the 20 keys take, holds one
 * field more: a head of one field (a long-poll client's Host) or none keeps the smaller table it
 * had before, so a request waiting in green mode takes no more memory. A new dict, or NULL with
 * a Python error. */
static PyObject *base_env(PyObject *base, PyObject *empty, int roomy)
{
    PyObject *d = PyDict_New(), *filler = NULL;
    if (d == NULL || PyDict_Update(d, base) < 0)
        goto fail;
    for (int i = 0; i < EVERY_KEYS - 1; i++)
        if (PyDict_SetItem(d, every_keys[i], i == EVERY_KEYS - 2 ? empty : Py_None) < 0)
            goto fail;
    for (int i = 0; roomy && i < 64; i++) {     /* a table of 64 holds 42: bounded, whatever the rule */
        int full = would_grow(d);
        if (full < 0)
            goto fail;
        if (full)
            break;
        /* A key no environ holds (a new str, not interned), in and out again. */
        if ((filler = PyUnicode_FromFormat("spawning.filler.%d", i)) == NULL
                || PyDict_SetItem(d, filler, Py_None) < 0 || PyDict_DelItem(d, filler) < 0)
            goto fail;
        Py_CLEAR(filler);
    }
    if (PyDict_SetItem(d, every_keys[EVERY_KEYS - 1], Py_None) < 0)
        goto fail;
    return d;
fail:
    Py_XDECREF(filler);
    Py_XDECREF(d);
    return NULL;
}

/* The whole environ of the request r (a body's wsgi.input is the caller's to set: the
 * copy's is the empty one), or NULL with a Python error. */
static PyObject *env_from_block(Runner *self, const sp_request *r)
{
    const char *p = r->env, *end = r->env + r->env_len, *ends[6];
    PyObject *env = NULL;
    nul_scan ns;
    nul_scan_init(&ns, p, end);
    for (int i = 0; i < 6; i++) {
        if ((ends[i] = nul_next(&ns)) == NULL)
            goto bad;
    }
    p = ends[5] + 1;
    /* Two fields or more (a key's NUL after the first field's value's): the roomy base. */
    nul_scan peek = ns;
    int many = nul_next(&peek) != NULL && nul_next(&peek) != NULL && nul_next(&peek) != NULL;
    PyObject *bases = PyList_GetItem(self->base_envs, r->listener);
    PyObject *base = bases != NULL ? PyTuple_GetItem(bases, many) : NULL;
    if (base == NULL || (env = PyDict_Copy(base)) == NULL)
        return NULL;
    for (int i = 0; i < 6; i++) {
        const char *v = i ? ends[i - 1] + 1 : r->env;
        if (env_set(env, fixed_keys[i], &fixed_vals[i], v, (size_t)(ends[i] - v)) < 0)
            goto fail;
    }
    int proxied = 0;   /* a header a trusted proxy may have set (spawning.wsgi.forwarded reads them) */
    for (;;) {   /* "KEY\0value\0" pairs, until what is left has no NUL: REMOTE_PORT */
        const char *kz = nul_next(&ns);
        if (kz == NULL)
            break;
        const char *v = kz + 1;
        const char *vz = nul_next(&ns);
        if (vz == NULL)
            goto bad;
        size_t kn = (size_t)(kz - p);
        int rc;
        if (kn <= KEY_MAX) {
            key_ent *e = env_key(p, kn);
            if (e == NULL)
                goto fail;
            proxied |= e->proxied;   /* told once, when the name's entry was made */
            rc = env_set(env, e->key, e->last, v, (size_t)(vz - v));
        } else {
            proxied |= forwarded_name(p, kn);
            PyObject *k = PyUnicode_DecodeLatin1(p, (Py_ssize_t)kn, NULL);
            rc = k != NULL ? env_set(env, k, NULL, v, (size_t)(vz - v)) : -1;
            Py_XDECREF(k);
        }
        if (rc < 0)
            goto fail;
        p = vz + 1;
    }
    size_t pn = (size_t)(end - p);
    unsigned slot = pn ? (unsigned)(p[pn - 1] + 10 * (pn > 1 ? p[pn - 2] : 0)) : 0;
    if (env_set(env, s_remote_port, &port_vals[slot & (PORT_VALS - 1)], p, pn) < 0)
        goto fail;
    if (proxied && self->forwarded != Py_None) {
        PyObject *port = PyObject_CallFunctionObjArgs(self->forwarded, env, NULL);
        if (port == NULL)
            goto fail;
        int rc = port == Py_None ? 0 : PyDict_SetItem(env, s_remote_port, port);
        Py_DECREF(port);
        if (rc < 0)
            goto fail;
    }
    return env;
bad:
    PyErr_SetString(PyExc_RuntimeError, "spawning: malformed environ block");
fail:
    Py_XDECREF(env);
    return NULL;
}

/* Removes key from the dict if it is there; -1 on a Python error. */
static int forget(PyObject *dict, PyObject *key)
{
    if (PyDict_GetItemWithError(dict, key) != NULL)
        return PyDict_DelItem(dict, key);
    return PyErr_Occurred() ? -1 : 0;
}

/* Environs kept for a connection's repeats: emptied past this many connections. */
#define CONN_ENVS_MAX 16384

/* The environ for a request: a new dict; or NULL with a Python error, or without one when the
 * request is over (Python then says so). *has_body says whether a body comes (its wsgi.input is
 * the caller's to add).
 *
 * The one cache of the request path, and C's alone: a keep-alive client repeating its request
 * byte for byte (the core tells by the code: a repeat code, sp.h) gets a copy of the environ its
 * connection's first repeat got. A dict copy costs a third of making the environ anew; requests
 * that differ (a browser's) never use it, and a connection idle after one request keeps none. */
static PyObject *request_env(Runner *self, long long code, PyObject *code_obj, int *has_body)
{
    if (!(code & SP_CODE_FULL)) {
        PyObject *kept = PyDict_GetItemWithError(self->conn_envs, code_obj);
        *has_body = 0;
        if (kept == NULL && !PyErr_Occurred()) {
            kept = PyDict_GetItemWithError(self->body_envs, code_obj);
            *has_body = 1;
        }
        if (kept != NULL)
            return PyDict_Copy(kept);
        if (PyErr_Occurred())
            return NULL;
        /* a repeat whose environ was dropped with the map: made from its block below */
    }
    sp_request *r = sp_code_req(self->srv, code);
    if (r == NULL)
        return NULL;
    PyObject *env = env_from_block(self, r);
    if (env == NULL)
        return NULL;
    *has_body = r->body != 0;
    PyObject *key = NULL, *kept = NULL;
    if (code & SP_CODE_FULL) {
        if (!(code & SP_CODE_KEEP))
            return env;
        /* A new head on the connection: what was kept for its last one goes (a browser's traffic
         * never repeats: then nothing is kept anywhere, and nothing is looked up). */
        if (PyDict_Size(self->conn_envs) == 0 && PyDict_Size(self->body_envs) == 0)
            return env;
        key = PyLong_FromLongLong(SP_CODE_REPEAT | (code >> SP_CODE_SLOT_SHIFT & SP_CODE_REPEAT_MASK));
        if (key == NULL || forget(self->conn_envs, key) < 0 || forget(self->body_envs, key) < 0)
            goto fail;
        Py_DECREF(key);
        return env;
    }
    /* The connection repeated its request: kept for the repeats after this one. Kept only once
     * a request repeats, so that a connection that goes idle after one request holds nothing. */
    PyObject *envs = *has_body ? self->body_envs : self->conn_envs;
    if (PyDict_Size(envs) >= CONN_ENVS_MAX)
        PyDict_Clear(envs);
    if ((kept = PyDict_Copy(env)) == NULL || PyDict_SetItem(envs, code_obj, kept) < 0)
        goto fail;
    Py_DECREF(kept);
    return env;
fail:
    Py_XDECREF(kept);
    Py_XDECREF(key);
    Py_DECREF(env);
    return NULL;
}

#endif
