/* environ.c -- the environ of a request, made from the head the core kept of it, and kept for a
 * connection's repeats (the CPython part; see runner.c's theory of operation). */
#include "py.h"
#include "http/unaligned.h"

#if !defined(SP_NO_SIMD) && defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

#ifndef SP_NO_PYFAST

/* ---- environ from a request's head ------------------------------------------------------------
 *
 * A request whose head the handler's maps do not know (every request of a browser: its cookie,
 * path, Referer differ each time) gets its environ made here, from the head C kept when it
 * parsed it (sp.h, sp_head: the parsed fields over a copy of the head's bytes), walked with
 * env.c's iterator (sp_env_next), which owns the rules of which fields make which keys: a copy
 * of the listener's constant environ, then one latin-1 str per value (PEP 3333's "bytes as
 * latin-1"). Keys are the same few dozen names request after request, so each is made once and
 * kept in a small table of interned strs, found by the field's name as sent (the iterator's
 * case-blind hash of it), so that no HTTP_ key is written per request; a name the table has no
 * room for is made for the request. */
#define KEY_SLOTS 256            /* a power of two; header names a server sees are far fewer */
#define KEY_MAX 47               /* longer names (rare, never hot) are not kept */
#define VAL_MAX 152              /* longer values (rare, and rarely repeated) are not kept */

/* A value str kept with the bytes it was made from: the next request's value for the same key,
 * when its bytes are the same, is this str again (strs are immutable) instead of a new one.
 * Most of a browser's fields repeat from request to request and from user to user (Host,
 * Accept*, User-Agent, Sec-Fetch-*, the method, the protocol, the client's address): sharing
 * their strs saves an allocation, a decode and a free each, ~200 instructions. A value that
 * differs costs a compare that fails early and a copy of its bytes. The bytes' first and last
 * words (words(): every byte of a value of up to 16) sit beside the str, so that a short value
 * is told, and a differing one nearly always, without reading bytes[]. */
typedef struct {
    unsigned len; PyObject *val;
    uint64_t head, tail;         /* words(bytes, len) */
    char bytes[VAL_MAX];
} val_ent;
/* A key table entry. What a request reads of it (a kept shape's, see "shapes") is its first 56
 * bytes, one cache line: the kernel's work for a request's two system calls leaves little of the
 * table in the L1 cache, and a browser's request reads some 15 entries. The name, which only a
 * walk of the names reads, is last. */
typedef struct {
    PyObject *key;
    val_ent *last;               /* the key's last value, or NULL: never kept for a secret's */
    unsigned len;                /* of the name */
    int proxied;                 /* a header a trusted proxy may have set (forwarded_name) */
    val_ent val;
    char name[KEY_MAX + 1];
} key_ent;
#if defined(__GNUC__) || defined(__clang__)
#define ENV_LINE __attribute__((aligned(64)))
#else
#define ENV_LINE
#endif
_Static_assert(sizeof(key_ent) == 256, "key_ent: 4 cache lines, the first one the hot one");
static key_ent env_keys[KEY_SLOTS] ENV_LINE;   /* the GIL guards it (pyfast is not built free-threaded) */
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

/* The table's entry for the field f's name (f->name_len + 5 <= KEY_MAX), its key made for it if
 * the entry held another name, or NULL with a Python error. Entries are by the name's bytes as
 * sent: a client that spells a name in another case takes the slot over (the same key str, since
 * strs are interned), never a wrong key. */
static key_ent *head_key(const sp_env_field *f)
{
    const char *p = f->name;
    size_t n = f->name_len;
    key_ent *e = &env_keys[(f->hash ^ f->hash >> 16) & (KEY_SLOTS - 1)];
    /* Names are told by their first and last 8 bytes (4 under 8 bytes: Host, Accept, Cookie),
     * and the middle of longer ones, without a memcmp call. */
    if (e->key != NULL && e->len == n
            && (n >= 8 ? load8(e->name) == load8(p) && load8(e->name + n - 8) == load8(p + n - 8)
                         && (n <= 16 || same_middle(e->name, p, n))
                       : n >= 4 ? load4(e->name) == load4(p) && load4(e->name + n - 4) == load4(p + n - 4)
                                : memcmp(e->name, p, n) == 0))
        return e;
    char kb[KEY_MAX + 1];
    size_t kn = sp_env_key(f, kb);
    PyObject *k = PyUnicode_FromStringAndSize(kb, (Py_ssize_t)kn);
    if (k == NULL)
        return NULL;
    PyUnicode_InternInPlace(&k);
    Py_XDECREF(e->key);
    Py_CLEAR(e->val.val);
    e->key = k;                  /* the table's reference */
    e->len = (unsigned)n;
    memcpy(e->name, p, n);
    e->last = secret_name(kb, kn) ? NULL : &e->val;
    e->proxied = forwarded_name(kb, kn);
    return e;
}

#if defined(__GNUC__) || defined(__clang__)
#define ENV_INLINE inline __attribute__((always_inline))
#define ENV_NOINLINE __attribute__((noinline))
#else
#define ENV_INLINE inline
#define ENV_NOINLINE
#endif

/* The first and last words of p[0..n): its first and last 8 bytes (n >= 8), 4 (n >= 4, both in
 * head), or its bytes (n < 4). With n they hold every byte of up to 16 bytes. A field name's
 * (shapes) and a kept value's (val_ent). */
static ENV_INLINE void words(const char *p, size_t n, uint64_t *head, uint64_t *tail)
{
    if (n >= 8) {
        *head = load8(p);
        *tail = load8(p + n - 8);
    } else if (n >= 4) {
        *head = load4(p) | (uint64_t)load4(p + n - 4) << 32;
        *tail = 0;
    } else {
        uint64_t w = 0;
        for (size_t i = 0; i < n; i++)
            w |= (uint64_t)(unsigned char)p[i] << 8 * i;
        *head = w;
        *tail = 0;
    }
}

/* env_value's new str for p[0..n) (its words head and tail), which c (NULL: none) then keeps;
 * NULL with a Python error. Out of line: most values are c's (see env_value), and this part's
 * registers made every call pay a prologue and an epilogue (~15 instructions, ~25 calls a
 * browser's request). */
static ENV_NOINLINE PyObject *env_value_new(val_ent *c, const char *p, size_t n, uint64_t head,
                                            uint64_t tail)
{
    PyObject *v = PyUnicode_DecodeLatin1(p, (Py_ssize_t)n, NULL);
    if (v != NULL && c != NULL && n <= VAL_MAX) {
        PyObject *old = c->val;
        Py_INCREF(v);
        c->val = v;
        c->len = (unsigned)n;
        c->head = head;
        c->tail = tail;
        if (n > 16)              /* shorter ones are their words */
            memcpy(c->bytes, p, n);
        Py_XDECREF(old);
    }
    return v;
}

/* a[0..n) == b[0..n) for a value of over 16 bytes, whose first and last 8 are known equal
 * (env_value): up to 32 bytes by two overlapping 16-byte blocks (SSE2), without a memcmp call
 * (~30 instructions: Accept-Language, Accept-Encoding); longer ones (User-Agent, Accept) by
 * memcmp. */
static ENV_INLINE int same_long_value(const char *a, const char *b, size_t n)
{
#if !defined(SP_NO_SIMD) && defined(__SSE2__) && defined(__x86_64__)
    if (n <= 32) {
        __m128i first = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)a),
                                       _mm_loadu_si128((const __m128i *)(const void *)b));
        __m128i last = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + n - 16)),
                                      _mm_loadu_si128((const __m128i *)(const void *)(b + n - 16)));
        return _mm_movemask_epi8(_mm_and_si128(first, last)) == 0xFFFF;
    }
#endif
    return memcmp(a + 8, b + 8, n - 16) == 0;
}

/* The str of the value p[0..n) as latin-1 (a new reference): c's when c (NULL: none) keeps the
 * same bytes, else a new one, which c then keeps. NULL with a Python error. Inlined into
 * env_set: the common case, c's str, is a compare and an incref. */
static ENV_INLINE PyObject *env_value(val_ent *c, const char *p, size_t n)
{
    uint64_t head, tail;
    words(p, n, &head, &tail);
    /* The last word first: values that differ from request to request (a path, a query, an id)
     * nearly always differ there. Up to 16 bytes the words are the value. */
    if (c != NULL && c->val != NULL && c->len == n && c->tail == tail && c->head == head
            && (n <= 16 || same_long_value(c->bytes, p, n))) {
        Py_INCREF(c->val);
        return c->val;
    }
    return env_value_new(c, p, n, head, tail);
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

/* ---- shapes: an environ's keys, ready --------------------------------------------------------
 *
 * A browser sends the same field names in the same order on every request (its "shape"), and
 * most of their values repeat too (see val_ent). Made from a copy of the listener's constants,
 * its environ took ~23 dict insertions a request, each a new key (~165 instructions: the probe
 * for a free slot, the entry, the table's bookkeeping), where a browser's request costs ~18,000
 * instructions in all. So the environ of a head whose shape was seen before is copied instead
 * from the one made for that shape (its template: every key in place), and each value goes in
 * only when it is not the str the template holds already: the kept str of a value that repeats
 * (env_value) is the template's own, told by one pointer compare. What a browser's request
 * writes is then its path, query, target, Cookie, Referer and ids: ~8 overwrites instead of ~23
 * insertions.
 *
 * A shape is the listener and the fields' names byte for byte, in order. Its names are all the
 * head's entries depend on (env.c, sp_env_replayable: no name repeats, the target is not in
 * absolute form), so a kept shape also keeps which fields make entries (their indexes) and
 * their keys' table entries, and a head of its names skips the walk of the names (env.c's
 * classing, hashing and repeat table: sp_env_all) and the key table's look-ups: ~1,700
 * instructions of a browser's request. A shape is found by a hash of each name's length and
 * first and last words (every byte of a name of up to 16 bytes), then the names are compared
 * (a longer name's middle too), so a hash that collides costs a walk, never a wrong key.
 *
 * A shape is kept on its second sighting in its slot, so a stream of one-off shapes costs no
 * templates; a kept one gives its slot up to the next shape seen twice there. A template holds
 * no secret: a Cookie's or Authorization's value is None in it (they are never kept, val_ent),
 * and always written. Heads of more than SHAPE_FIELDS fields, with a name too long for the key
 * table or long names' middles that do not fit SHAPE_MIDS, are not kept. The Runner owns its
 * shapes (bases differ from server to server); the environ an app gets is always a new dict. */
#define SHAPES 16                       /* a power of two */
#define SHAPE_FIELDS 32                 /* fields of a head (so entries too) */
#define SHAPE_VALS (6 + SHAPE_FIELDS + 1)  /* the fixed values, the fields', REMOTE_PORT */
#define SHAPE_MIDS 256                  /* bytes of the names longer than 16 bytes, whole */

struct env_shape {
    uint64_t hash;                      /* of the shape (0: none kept here) */
    uint64_t seen;                      /* a shape seen once here, not kept */
    int listener, nf, nh;               /* nf entries of nh fields */
    PyObject *tmpl;                     /* a dict: the environ it was made from, secrets None */
    PyObject *keys[SHAPE_FIELDS];       /* the entries' keys (references held) */
    key_ent *ents[SHAPE_FIELDS];        /* their key table entries (theirs while ents[i]->key is
                                           keys[i]: head_key gives a slot up to another name) */
    unsigned char first[SHAPE_FIELDS];  /* each entry's field (sp_env_field.first) */
    unsigned char lens[SHAPE_FIELDS];   /* each field's name: its length, */
    uint64_t heads[SHAPE_FIELDS], tails[SHAPE_FIELDS];   /* words (words()) */
    char mids[SHAPE_MIDS];              /* and the names over 16 bytes, in order */
    PyObject *vals[SHAPE_VALS];         /* tmpl's values (it holds them); NULL: never the same */
};

static void shape_drop(struct env_shape *sh)
{
    for (int i = 0; i < sh->nf; i++)
        Py_CLEAR(sh->keys[i]);
    Py_CLEAR(sh->tmpl);
    sh->hash = 0;
    sh->nf = 0;
}

/* For runner.c: the Runner's shapes, visited and dropped. */
static int shapes_traverse(Runner *self, visitproc visit, void *arg)
{
    for (int i = 0; self->shapes != NULL && i < SHAPES; i++)
        Py_VISIT(self->shapes[i].tmpl);
    return 0;
}

static void shapes_clear(Runner *self)
{
    if (self->shapes == NULL)
        return;
    for (int i = 0; i < SHAPES; i++)
        shape_drop(&self->shapes[i]);
    PyMem_Free(self->shapes);
    self->shapes = NULL;
    self->shapes_gen++;
}

/* The hash of the listener's head rh's shape (never 0), each field's name words into heads[] and
 * tails[] (rh has at most SHAPE_FIELDS fields). */
static uint64_t shape_hash(int listener, const sp_request_head *rh, uint64_t *heads, uint64_t *tails)
{
    size_t nh = rh->num_headers;
    uint64_t h = 0x9E3779B97F4A7C15ull * (uint64_t)(listener + 1) ^ nh;
    for (size_t i = 0; i < nh; i++) {
        size_t n = rh->headers[i].name_len;
        words(rh->headers[i].name, n, &heads[i], &tails[i]);
        h = ((h ^ heads[i]) * 0xC2B2AE3D27D4EB4Full ^ tails[i] ^ n) * 0x9E3779B97F4A7C15ull;
    }
    return h | 1;
}

/* Whether rh's fields' names (their words in heads[] and tails[]) are byte for byte sh's. */
static int shape_names(const struct env_shape *sh, const sp_request_head *rh, const uint64_t *heads,
                       const uint64_t *tails)
{
    const char *mid = sh->mids;
    if (sh->nh != (int)rh->num_headers)
        return 0;
    for (int i = 0; i < sh->nh; i++) {
        size_t n = rh->headers[i].name_len;
        if (sh->lens[i] != n || sh->heads[i] != heads[i] || sh->tails[i] != tails[i])
            return 0;
        if (n > 16) {
            if (!same_middle(mid, rh->headers[i].name, n))
                return 0;
            mid += n;
        }
    }
    return 1;
}

/* Keeps the environ env (made without a template) as the template of its shape h (of the head
 * rh, whose name words are heads[] and tails[]), on the shape's second sighting in its slot.
 * fs[0..nf) are its entries (sp_env_all), ents[] and keys[] their key table entries and keys,
 * used[] the values written into env, in order (NULL: a secret, or a value not kept). -1 with a
 * Python error. */
static int shape_keep(Runner *self, uint64_t h, int listener, const sp_request_head *rh,
                      const uint64_t *heads, const uint64_t *tails, PyObject *env,
                      const sp_env_field *fs, size_t nf, key_ent *const *ents, PyObject *const *keys,
                      PyObject *const *used, size_t nused)
{
    size_t nh = rh->num_headers, mids = 0;
    for (size_t i = 0; i < nh; i++) {
        size_t n = rh->headers[i].name_len;
        if (n > KEY_MAX)     /* a dropped field's (an entry's name fits the key table) */
            return 0;
        if (n > 16)
            mids += n;
    }
    if (mids > SHAPE_MIDS)
        return 0;
    if (self->shapes == NULL && (self->shapes = PyMem_Calloc(SHAPES, sizeof *self->shapes)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    struct env_shape *sh = &self->shapes[h >> 32 & (SHAPES - 1)];
    if (sh->seen != h) {     /* the first sighting here */
        sh->seen = h;
        return 0;
    }
    PyObject *tmpl = PyDict_Copy(env);
    if (tmpl == NULL)
        return -1;
    /* The values that must not outlive their request: None in the template. */
    for (size_t j = 0; j < nused; j++) {
        if (used[j] != NULL)
            continue;
        PyObject *key = j < 6 ? fixed_keys[j] : j < 6 + nf ? keys[j - 6] : s_remote_port;
        if (PyDict_SetItem(tmpl, key, Py_None) < 0) {
            Py_DECREF(tmpl);
            return -1;
        }
    }
    shape_drop(sh);
    self->shapes_gen++;
    sh->hash = h;
    sh->seen = 0;
    sh->listener = listener;
    sh->tmpl = tmpl;
    sh->nf = (int)nf;
    sh->nh = (int)nh;
    for (size_t i = 0; i < nf; i++) {
        Py_INCREF(keys[i]);
        sh->keys[i] = keys[i];
        sh->ents[i] = ents[i];
        sh->first[i] = (unsigned char)fs[i].first;
    }
    char *mid = sh->mids;
    for (size_t i = 0; i < nh; i++) {
        size_t n = rh->headers[i].name_len;
        sh->lens[i] = (unsigned char)n;
        sh->heads[i] = heads[i];
        sh->tails[i] = tails[i];
        if (n > 16) {
            memcpy(mid, rh->headers[i].name, n);
            mid += n;
        }
    }
    for (size_t j = 0; j < nused; j++)
        sh->vals[j] = used[j];     /* tmpl holds each (its copy of env took a reference) */
    return 0;
}

/* The kept shape h of the listener's head rh (name words heads[], tails[]), or NULL. */
static struct env_shape *shape_find(Runner *self, uint64_t h, int listener, const sp_request_head *rh,
                                    const uint64_t *heads, const uint64_t *tails)
{
    if (self->shapes == NULL)
        return NULL;
    struct env_shape *sh = &self->shapes[h >> 32 & (SHAPES - 1)];
    return sh->hash == h && sh->listener == listener && shape_names(sh, rh, heads, tails) ? sh : NULL;
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

#define FEW_FIELDS 48   /* entries on the stack; heads with more fields take the heap */

/* env_set for an environ made from the shape sh's template (or from the constants: sh NULL),
 * the request's j-th value: skipped when it is the str the template holds there already. The
 * str written (or found) is recorded in used[j] when it is kept for the next request's compare
 * (c's), NULL when not (a secret, or a value too long to keep): what a template made from this
 * environ may hold. */
static ENV_INLINE int env_put(PyObject *env, PyObject *key, val_ent *c, const char *p, size_t n,
                              const struct env_shape *sh, PyObject **used, size_t j)
{
    PyObject *v = env_value(c, p, n);
    if (v == NULL)
        return -1;
    used[j] = c != NULL && c->val == v ? v : NULL;
    if (sh != NULL && sh->vals[j] == v) {   /* the template's own str */
        Py_DECREF(v);
        return 0;
    }
    int rc = PyDict_SetItem(env, key, v);
    Py_DECREF(v);
    return rc;
}

/* The whole environ of the request r, whose head is h (a body's wsgi.input is the caller's to
 * set: the copy's is the empty one), or NULL with a Python error. */
static PyObject *env_from_head(Runner *self, const sp_request *r, const sp_head *h)
{
    static const char http10[] = "HTTP/1.0", http11[] = "HTTP/1.1";
    const sp_request_head *rh = &h->req;
    PyObject *env = NULL;
    char *big = NULL;   /* a joined value or a long key that does not fit buf */
    char buf[1024];
    sp_env_field few[FEW_FIELDS], *fs = few;
    PyObject *keys[SHAPE_FIELDS], *used[SHAPE_VALS];
    key_ent *ents[SHAPE_FIELDS];
    uint64_t heads[SHAPE_FIELDS], tails[SHAPE_FIELDS];
    sp_env_iter it;
    sp_env_begin(&it, rh);
    size_t nh = rh->num_headers, nf = 0;
    int listener = r->listener;
    /* A head of a kept shape's names takes its entries from the shape (sp_env_replay); any
     * other is walked, and may be kept (shape_keep) if no name repeats in it. */
    int shapeable = nh <= SHAPE_FIELDS && sp_env_replayable(&it);
    uint64_t shape = shapeable ? shape_hash(listener, rh, heads, tails) : 0;
    const struct env_shape *sh = shapeable ? shape_find(self, shape, listener, rh, heads, tails) : NULL;
    if (nh >= FEW_FIELDS && (fs = PyMem_Malloc((nh + 1) * sizeof *fs)) == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (sh != NULL) {
        nf = (size_t)sh->nf;
        sp_env_replay(&it, sh->first, nf, fs);
    }
walk:
    if (sh == NULL) {
        nf = sp_env_all(&it, fs);   /* one call for all the fields' entries */
        shapeable = shapeable && sp_env_replayable(&it);
    }
    PyObject *src = sh != NULL ? sh->tmpl : NULL;
    if (src == NULL) {   /* two fields or more: the roomy base */
        PyObject *bases = PyList_GetItem(self->base_envs, listener);
        src = bases != NULL ? PyTuple_GetItem(bases, nh >= 2) : NULL;
    }
    if (src == NULL)
        goto fail;
    /* The copy allocates a dict, which may run the collector and so finalizers, which may let
     * another thread (or greenlet) in here to replace the shape: src is held through the copy,
     * and a shape that changed meanwhile is not used (nothing after the copy runs Python code
     * until forwarded, after the last use of sh). */
    unsigned gen = self->shapes_gen;
    Py_INCREF(src);
    env = PyDict_Copy(src);
    Py_DECREF(src);
    if (env == NULL)
        goto fail;
    if (sh != NULL && self->shapes_gen != gen)
        goto collided;
    /* REMOTE_ADDR, then SP_ENV_FIXED's: REQUEST_METHOD PATH_INFO QUERY_STRING SERVER_PROTOCOL
     * RAW_URI. */
    if (env_put(env, fixed_keys[0], &fixed_vals[0], h->addr, h->addr_len, sh, used, 0) < 0
            || env_put(env, fixed_keys[1], &fixed_vals[1], rh->method, rh->method_len, sh, used, 1) < 0
            || env_put(env, fixed_keys[2], &fixed_vals[2], h->path, h->path_len, sh, used, 2) < 0
            || env_put(env, fixed_keys[3], &fixed_vals[3], it.query, it.query_len, sh, used, 3) < 0
            || (rh->minor_version == 0
                ? env_put(env, fixed_keys[4], &fixed_vals[4], http10, sizeof http10 - 1, sh, used, 4)
                : env_put(env, fixed_keys[4], &fixed_vals[4], http11, sizeof http11 - 1, sh, used, 4)) < 0
            || env_put(env, fixed_keys[5], &fixed_vals[5], rh->target, rh->target_len, sh, used, 5) < 0)
        goto fail;
    int proxied = 0;   /* a header a trusted proxy may have set (spawning.wsgi.forwarded reads them) */
    for (size_t i = 0; i < nf; i++) {
        const sp_env_field *f = &fs[i];
        const char *v = f->value;
        if (f->sep != NULL) {   /* the name's fields, joined */
            char *out = buf;
            if (f->value_len > sizeof buf) {
                if ((big = PyMem_Malloc(f->value_len)) == NULL) {
                    PyErr_NoMemory();
                    goto fail;
                }
                out = big;
            }
            sp_env_join(&it, f, out);
            v = out;
        }
        int rc;
        if (f->name_len + 5 <= KEY_MAX) {
            key_ent *e;
            if (sh != NULL) {   /* the shape's entry, while it is still its key's */
                e = sh->ents[i];
                if (e->key != sh->keys[i])
                    goto collided;
            } else if ((e = head_key(f)) == NULL) {
                goto fail;
            }
            if (shapeable) {
                keys[i] = e->key;   /* env holds it */
                ents[i] = e;
            }
            proxied |= e->proxied;   /* told once, when the name's entry was made */
            rc = env_put(env, e->key, e->last, v, f->value_len, sh, used, 6 + (shapeable ? i : 0));
        } else {   /* a long name: its key made for the request, into what v does not use */
            if (sh != NULL)
                goto collided;
            shapeable = 0;
            char *kb = f->sep == NULL && f->name_len + 5 <= sizeof buf ? buf : PyMem_Malloc(f->name_len + 5);
            if (kb == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            size_t kn = sp_env_key(f, kb);
            proxied |= forwarded_name(kb, kn);
            PyObject *k = PyUnicode_DecodeLatin1(kb, (Py_ssize_t)kn, NULL);
            if (kb != buf)
                PyMem_Free(kb);
            rc = k != NULL ? env_set(env, k, NULL, v, f->value_len) : -1;
            Py_XDECREF(k);
        }
        if (big != NULL) {
            PyMem_Free(big);
            big = NULL;
        }
        if (rc < 0)
            goto fail;
    }
    if (fs != few) {
        PyMem_Free(fs);
        fs = few;
    }
    const char *p = h->port;
    size_t pn = h->port_len;
    unsigned slot = pn ? (unsigned)(p[pn - 1] + 10 * (pn > 1 ? p[pn - 2] : 0)) : 0;
    size_t nused = 6 + (shapeable ? nf : 0) + 1;
    if (env_put(env, s_remote_port, &port_vals[slot & (PORT_VALS - 1)], p, pn, sh, used, nused - 1) < 0)
        goto fail;
    if (sh == NULL && shapeable
            && shape_keep(self, shape, listener, rh, heads, tails, env, fs, nf, ents, keys, used, nused) < 0)
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
collided:
    /* The shape was replaced, or a key table entry it knew went to another name: made again
     * from the constants, the names walked (what was written is forgotten). */
    Py_CLEAR(env);
    PyMem_Free(big);
    big = NULL;
    sh = NULL;
    goto walk;
fail:
    PyMem_Free(big);
    if (fs != few)
        PyMem_Free(fs);
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
        /* a repeat whose environ was dropped with the map: made from its head below (the
         * last head's copy: a repeat's bytes are the same) */
    }
    const sp_head *h = NULL;
    sp_request *r = sp_code_head(self->srv, code, &h);
    if (r == NULL)
        return NULL;
    PyObject *env = env_from_head(self, r, h);
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
