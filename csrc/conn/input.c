/* input.c -- reading and parsing request heads: the socket into the read buffer, the PROXY
 * preamble, the head parser, the environ block, the repeated-head shortcut, small bodies (C_BODY). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "loop/sysio.h"

/* ---- reading and parsing heads --------------------------------------------------------------- */

/* envbuf, from a parse to the request's finish (sp_head's contract, sp.h):
 *
 *   sp_head | sp_header[num_headers] | the head's bytes | PATH_INFO decoded | (the env block)
 *
 * The head is copied because the read buffer does not last as long as the request: it goes back
 * to the pool once a request without a body is queued, and a body moves the bytes before it. The
 * block (sp_request.env) is packed from the copy only when asked (conn_env_block): the C runner
 * never asks, the Python path always does. A repeated head (c->repeat) skips all this: the last
 * head's copy, and its block if one was packed, describe it. */
/* hs[i] = from[i] with its pointers moved by delta (into the head's copy), i < nh. By 16-byte
 * halves {pointer, length} where SSE2 is the baseline (x86-64): a load, an add and a store each,
 * ~8 instructions a field where the member by member way took ~13 (~13 fields a browser's head). */
#if !defined(SP_NO_SIMD) && defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#include <stddef.h>
_Static_assert(sizeof(sp_header) == 32 && offsetof(sp_header, name_len) == 8
               && offsetof(sp_header, value) == 16 && offsetof(sp_header, value_len) == 24,
               "copy_fields moves sp_header as two {pointer, length} halves");
static inline void copy_fields(sp_header *hs, const sp_header *from, size_t nh, uintptr_t delta) {
    const __m128i d = _mm_set_epi64x(0, (long long)delta);   /* the pointer moves, the length not */
    const char *src = (const char *)from;
    char *dst = (char *)hs;
    for (size_t i = 0; i < nh; i++) {   /* a field a turn: its name's half, its value's */
        __m128i name = _mm_loadu_si128((const __m128i *)(const void *)(src + 32 * i));
        __m128i value = _mm_loadu_si128((const __m128i *)(const void *)(src + 32 * i + 16));
        _mm_storeu_si128((__m128i *)(void *)(dst + 32 * i), _mm_add_epi64(name, d));
        _mm_storeu_si128((__m128i *)(void *)(dst + 32 * i + 16), _mm_add_epi64(value, d));
    }
}
#else
static inline void copy_fields(sp_header *hs, const sp_header *from, size_t nh, uintptr_t delta) {
    for (size_t i = 0; i < nh; i++) {
        hs[i].name = (const char *)((uintptr_t)from[i].name + delta);
        hs[i].name_len = from[i].name_len;
        hs[i].value = (const char *)((uintptr_t)from[i].value + delta);
        hs[i].value_len = from[i].value_len;
    }
}
#endif

static int env_build(sp_conn *c, const sp_request_head *rh, const char *head, size_t head_len) {
    size_t nh = rh->num_headers;
    size_t copy_at = sizeof(sp_head) + nh * sizeof(sp_header), path_at = copy_at + head_len;
    size_t need = path_at + rh->target_len + 1;   /* PATH_INFO is never longer than the target */
    if (c->env_cap < need) {
        char *e = realloc(c->envbuf, need);
        if (!e) return -500;
        c->envbuf = e;
        c->env_cap = need;
    }
    sp_head *h = (sp_head *)(void *)c->envbuf;
    sp_header *hs = (sp_header *)(void *)(c->envbuf + sizeof(sp_head));
    char *copy = c->envbuf + copy_at;
    memcpy(copy, head, head_len);
    copy_fields(hs, rh->headers, nh, (uintptr_t)copy - (uintptr_t)head);
    h->req.method = copy + (rh->method - head);
    h->req.method_len = rh->method_len;
    h->req.target = copy + (rh->target - head);
    h->req.target_len = rh->target_len;
    h->req.minor_version = rh->minor_version;
    h->req.headers = hs;
    h->req.num_headers = nh;
    ssize_t pn = sp_env_path(rh, c->envbuf + path_at, rh->target_len + 1);
    if (pn < 0) return (int)pn;   /* -400: a bad escape or %00 */
    h->path = c->envbuf + path_at;
    h->path_len = (size_t)pn;
    h->addr = c->remote;
    h->addr_len = c->remote_len - 1;
    h->port = c->port;
    h->port_len = c->port_len;
    c->req.env = NULL;   /* packed when asked */
    c->req.env_len = 0;
    return 0;
}

/* The pointers of envbuf's sp_head into envbuf itself, after envbuf moved from old. */
static void head_moved(sp_conn *c, uintptr_t old) {
    sp_head *h = (sp_head *)(void *)c->envbuf;
#define MOVED(p) ((p) = c->envbuf + ((uintptr_t)(p) - old))
    MOVED(h->req.method);
    MOVED(h->req.target);
    MOVED(h->path);
    h->req.headers = (sp_header *)(void *)(c->envbuf + sizeof(sp_head));
    for (size_t i = 0; i < h->req.num_headers; i++) {
        MOVED(h->req.headers[i].name);
        MOVED(h->req.headers[i].value);
    }
#undef MOVED
}

int conn_env_block(sp_conn *c) {
    if (c->req.env) return 0;
    if (!c->envbuf) return -EINVAL;
    sp_head *h = (sp_head *)(void *)c->envbuf;
    size_t at = (size_t)(h->path - c->envbuf) + h->req.target_len + 1;
    size_t head_len = (size_t)(h->path - (char *)(h->req.headers + h->req.num_headers));
    size_t need = at + c->remote_len + c->port_len + 1 + head_len * 2 + h->req.num_headers * 8 + 256;
    for (int tries = 0; tries < 2; tries++) {
        if (c->env_cap < need) {
            uintptr_t old = (uintptr_t)c->envbuf;
            char *e = realloc(c->envbuf, need);
            if (!e) return -ENOMEM;
            c->envbuf = e;
            c->env_cap = need;
            head_moved(c, old);
            h = (sp_head *)(void *)c->envbuf;
        }
        char *b = c->envbuf + at;
        memcpy(b, c->remote, c->remote_len);
        size_t room = c->env_cap - at - c->remote_len - c->port_len - 1;
        ssize_t n = sp_env_pack(&h->req, b + c->remote_len, room);
        if (n >= 0) {
            size_t len = c->remote_len + (size_t)n;
            memcpy(b + len, c->port, c->port_len + 1);   /* NUL-terminated for C readers */
            c->req.env = b;
            c->req.env_len = len + c->port_len;
            return 0;
        }
        if (n != -431) return (int)n;   /* never: the parse's sp_env_path took the same path */
        need *= 2;
    }
    return -ENOMEM;
}

/* The head of the connection's last request, remembered so that a keep-alive client repeating it
 * (the common case) skips parsing, framing and the env block: equal bytes parse the same under
 * the same limits, and env_build's block for them is still in envbuf. What is compared is
 * envbuf's own copy of the head (env_build's), which lasts until the next parse, so nothing is
 * copied for it: a browser's heads never repeat, and a second copy of each cost a ~700-byte
 * memcpy and the connection a buffer as large as its longest head. Heads up to SP_REPEAT_MAX. */
static void remember_head(sp_conn *c, size_t len, const sp_framing *f, int is_head, int minor) {
    c->rep_len = 0;
    if (len > SP_REPEAT_MAX) return;
    const sp_head *h = (const sp_head *)(const void *)c->envbuf;
    c->rep_at = (size_t)((const char *)(h->req.headers + h->req.num_headers) - c->envbuf);
    c->rep_len = len;
    c->rep_f = *f;
    c->rep_head = (unsigned)is_head;
    c->rep_minor = minor >= 1;   /* all that is used of it: http11 */
}

/* Tries to parse a complete head at in[pos..]. Returns 1 (queued), 0 (need more), -1 (answered
 * with an error). */
int conn_try_parse(sp_server *s, sp_conn *c) {
    if (c->pos == c->in_len) return 0;
    if (!c->head_started_ms) c->head_started_ms = s->now_us / 1000;
    sp_framing f;
    int rc, is_head, minor;
    size_t avail = c->in_len - c->pos;
    if (c->rep_len && avail >= c->rep_len && memcmp(c->in + c->pos, c->envbuf + c->rep_at, c->rep_len) == 0) {
        rc = (int)c->rep_len;
        c->repeat = 1;
        f = c->rep_f;
        is_head = c->rep_head;
        minor = c->rep_minor;
        if (s->cfg.max_body_size >= 0 && f.content_length > s->cfg.max_body_size) { conn_error(s, c, 413); return -1; }
    } else {
        sp_header hdrs[SP_HEADERS_MAX];
        sp_request_head rh;
        memset(&rh, 0, sizeof(rh));
        rh.headers = hdrs;
        rh.num_headers = s->cfg.limits.max_headers;
        rc = sp_parse_request(c->in + c->pos, avail, c->last_len, &s->cfg.limits, &rh);
        if (rc == SP_PARTIAL) {
            c->last_len = avail;
            /* The head's own deadline, also when its first bytes came pipelined behind the previous
             * request (finish_locked had set the keep-alive timeout): no longer deadline that way. */
            c->deadline_ms = deadline_after(c->head_started_ms, s->cfg.header_timeout_ms);
            return 0;
        }
        c->rep_len = 0;   /* envbuf changes below: whatever was remembered is void */
        c->repeat = 0;
        if (rc < 0) { conn_error(s, c, -rc); return -1; }
        int fr = sp_request_framing(&rh, &f);
        if (fr < 0) { conn_error(s, c, -fr); return -1; }
        if (s->cfg.max_body_size >= 0 && f.content_length > s->cfg.max_body_size) { conn_error(s, c, 413); return -1; }
        int er = env_build(c, &rh, c->in + c->pos, (size_t)rc);
        if (er < 0) { conn_error(s, c, -er); return -1; }
        is_head = rh.method_len == 4 && memcmp(rh.method, "HEAD", 4) == 0;
        minor = rh.minor_version;
        remember_head(c, (size_t)rc, &f, is_head, minor);
    }
    c->req.body = f.chunked ? 2 : (f.content_length > 0 ? 1 : 0);
    c->req.content_length = f.content_length;
    c->req.head = is_head;
    c->keep_alive = f.keep_alive && s->cfg.keepalive && !s->draining;
    c->client_close = !f.keep_alive;
    c->http11 = minor >= 1;
    c->expect_continue = f.expect_continue && c->req.body;
    c->continue_sent = 0;
    c->body_left = f.content_length > 0 ? f.content_length : 0;
    c->body_total = 0;
    memset(&c->chunk, 0, sizeof(c->chunk));
    c->chunk.max_ext = s->cfg.max_chunk_ext;
    c->dec_avail = 0;
    c->body_done = c->req.body == 0;
    c->started = c->chunked_out = c->no_body = 0;
    c->resp_left = -1;
    c->status = 0;
    c->pos += (size_t)rc;
    c->last_len = 0;
    c->head_started_ms = 0;
    if (c->req.body == 1 && !c->expect_continue && c->body_left <= SP_PREBUFFER_MAX &&
        (int64_t)(c->in_len - c->pos) < c->body_left) {
        conn_set_state(c, C_BODY);   /* conn_read_head() reads the rest, then queues it */
        c->deadline_ms = deadline_after(sp_now_ms(), s->cfg.body_timeout_ms);
        conn_interest(s, c);
        return 0;
    }
    conn_enqueue(s, c);
    /* Nothing left to read for this request: give the read buffer back now rather than pin it
     * while the app runs (a long-poll worker holding 10k requests would hold 10k buffers). */
    if (c->body_done && c->pos == c->in_len) conn_release_in(s, c);
    return 1;
}

/* The PROXY preamble that opens a connection on a listener that expects one (sp_parse_proxy):
 * the client's address from it replaces the peer's before any env block is built. Returns 1 when
 * it is done with (what follows is the first head), 0 for more bytes, -1 when it closed c: a
 * connection without a valid preamble gets no answer, as nginx and HAProxy do (whoever sent it
 * does not speak the protocol, so a response would reach a client we cannot name). */
static int read_proxy(sp_server *s, sp_conn *c) {
    sp_proxy_addr pa;
    int rc = sp_parse_proxy(c->in + c->pos, c->in_len - c->pos, &pa);
    if (rc == SP_PARTIAL) return 0;
    if (rc < 0) { conn_close(s, c); return -1; }
    c->proxy_wait = 0;
    c->pos += (size_t)rc;
    if (pa.family != SP_PROXY_KEEP) {
        char host[INET6_ADDRSTRLEN];
        if (!inet_ntop(pa.family == SP_PROXY_INET ? AF_INET : AF_INET6, pa.src, host, sizeof(host))) {
            conn_close(s, c);
            return -1;
        }
        size_t hl = strlen(host) + 1;
        memcpy(c->remote, host, hl);
        c->remote_len = hl;
        c->port_num = pa.src_port;
        c->port_len = (size_t)snprintf(c->port, sizeof(c->port), "%u", c->port_num);
    }
    return 1;
}

/* Reads what the socket has and parses; for C_HEAD connections. */
void conn_read_head(sp_server *s, sp_conn *c) {
    const sp_limits *lim = &s->cfg.limits;
    size_t max_buf = lim->max_head_size + SP_IN_CHUNK;
    while (c->state == C_HEAD || c->state == C_BODY) {
        if (!c->in) {
            c->in = conn_buf_get(s);
            if (!c->in) { conn_close(s, c); return; }
            c->in_cap = SP_IN_CHUNK;
        }
        if (c->pos == c->in_len) c->pos = c->in_len = 0;
        if (c->state == C_BODY && c->pos + (size_t)c->body_left > c->in_cap) {
            /* The whole small body must fit after the head: move it to the front, or grow. */
            if (c->pos) {
                memmove(c->in, c->in + c->pos, c->in_len - c->pos);
                c->in_len -= c->pos;
                c->pos = 0;
            }
            if ((size_t)c->body_left > c->in_cap) {
                char *n = malloc((size_t)c->body_left);
                if (!n) { conn_close(s, c); return; }
                memcpy(n, c->in, c->in_len);
                if (c->in_cap == SP_IN_CHUNK) conn_buf_put(s, c->in); else free(c->in);
                c->in = n;
                c->in_cap = (size_t)c->body_left;
            }
        }
        if (c->in_len == c->in_cap) {
            if (c->pos) {
                memmove(c->in, c->in + c->pos, c->in_len - c->pos);
                c->in_len -= c->pos;
                c->pos = 0;
            } else if (c->in_cap < max_buf) {
                size_t cap = c->in_cap * 2 < max_buf ? c->in_cap * 2 : max_buf;
                char *n;
                if (c->in_cap == SP_IN_CHUNK) {   /* pool buffers are not realloc'd in place */
                    n = malloc(cap);
                    if (n) { memcpy(n, c->in, c->in_len); conn_buf_put(s, c->in); }
                } else {
                    n = realloc(c->in, cap);
                }
                if (!n) { conn_close(s, c); return; }
                c->in = n;
                c->in_cap = cap;
            } else {
                conn_error(s, c, 431);   /* the parser enforces this first; belt and braces */
                return;
            }
        }
        if (!c->readable) {
            if (c->pos == c->in_len) conn_release_in(s, c);   /* idle: give the buffer back */
            conn_interest(s, c);
            return;
        }
        size_t want = c->in_cap - c->in_len;
        ssize_t r = sp_recv(c->h.fd, c->in + c->in_len, want, 0);
        /* A short read emptied the socket's queue: new data will raise a new edge, so the recv
         * that would only say EAGAIN is skipped (one syscall per request instead of two). Not once
         * the FIN is queued: no edge follows it, and the read of 0 must still happen. */
        if (r > 0 && (size_t)r < want && !c->eof_seen) c->readable = 0;
        if (r > 0 && c->state == C_BODY) {
            c->in_len += (size_t)r;
            if ((int64_t)(c->in_len - c->pos) >= c->body_left) { conn_enqueue(s, c); return; }
            continue;
        }
        if (r > 0) {
            s->head_reads++;
            if (c->in_len == c->pos && !c->head_started_ms) {
                /* First byte of a new head: the header timeout starts now. */
                c->head_started_ms = s->now_us / 1000;
                c->deadline_ms = deadline_after(c->head_started_ms, s->cfg.header_timeout_ms);
            }
            c->in_len += (size_t)r;
            if (c->proxy_wait) {
                int pr = read_proxy(s, c);
                if (pr < 0) return;
                if (pr == 0) continue;
            }
            if (conn_try_parse(s, c) != 0) return;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->readable = 0;
            if (c->pos == c->in_len) conn_release_in(s, c);   /* idle: give the buffer back */
            conn_interest(s, c);
            return;
        }
        /* EOF or error. A half-received head gets no answer: the client has gone. A response
         * still held back (corking) is sent first: a client that half-closed waits for it. */
        if (r == 0 && c->corked) {
            conn_uncork_forget(s, c);
            if (conn_flush(s, c) < 0) return;   /* closed */
            if (pending(c)) { conn_linger(s, c); return; }   /* the rest goes out when writable */
        }
        conn_close(s, c);
        return;
    }
}

