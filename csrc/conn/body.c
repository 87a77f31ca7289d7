/* body.c -- request bodies: Content-Length and chunked, Expect: 100-continue, read by the app's
 * thread (sp_req_read) or skipped when it did not. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "conn.h"
#include "loop/sysio.h"

/* Skips what is left of the request body if it is all buffered. Returns 1 when the body is done. */
int conn_skip_body(sp_server *s, sp_conn *c) {
    (void)s;
    /* Chunked data decoded but left unread by the app is body, also once the decoder has seen
     * the last chunk (body_done): parsed as the next request, it would be a smuggled one. */
    c->pos += c->dec_avail;
    c->dec_avail = 0;
    if (c->body_done) return 1;
    if (c->req.body == 1) {
        size_t avail = c->in_len - c->pos;
        if ((int64_t)avail >= c->body_left) { c->pos += (size_t)c->body_left; c->body_left = 0; c->body_done = 1; }
        return c->body_done;
    }
    /* chunked: decode what is buffered, dropping the data */
    size_t out_len = 0, consumed = 0;
    int rc = sp_chunked_decode(&c->chunk, c->in + c->pos, c->in_len - c->pos, &out_len, &consumed);
    if (rc == 0) { c->pos += consumed; c->body_done = 1; return 1; }
    if (rc == SP_PARTIAL) c->pos = c->in_len;
    return 0;
}
/* ---- request bodies --------------------------------------------------------------------------- */

/* The interim 100 for a client that waits for it before sending its body; only before the
 * response head, since a final response already answers the Expect and a 100 sent after it
 * would land inside the body (RFC 9110 10.1.1). */
static ssize_t send_continue(sp_server *s, sp_conn *c) {
    c->continue_sent = 1;
    struct iovec iov = { "HTTP/1.1 100 Continue\r\n\r\n", 25 };
    return conn_sendv(s, c, &iov, 1);
}

static int in_make_room(sp_server *s, sp_conn *c) {
    if (!c->in) {
        c->in = conn_buf_get(s);
        if (!c->in) return -ENOMEM;
        c->in_cap = SP_IN_CHUNK;
        c->in_len = c->pos = 0;
    }
    if (c->pos == c->in_len) c->pos = c->in_len = 0;
    if (c->pos && c->in_len == c->in_cap) {
        memmove(c->in, c->in + c->pos, c->in_len - c->pos);
        c->in_len -= c->pos;
        c->pos = 0;
    }
    return c->in_len < c->in_cap ? 0 : -ENOBUFS;
}

static ssize_t body_read(sp_server *s, sp_conn *c, char *buf, size_t n) {
    if (c->dead) return -ECONNRESET;
    if (!n) return 0;
    if (c->req.body == 0) return 0;
    if (c->req.body == 1) {
        if (c->body_left <= 0) { c->body_done = 1; return 0; }
        size_t want = (int64_t)n < c->body_left ? n : (size_t)c->body_left;
        size_t avail = c->in_len - c->pos;
        if (avail) {
            size_t k = avail < want ? avail : want;
            memcpy(buf, c->in + c->pos, k);
            c->pos += k;
            c->body_left -= (int64_t)k;
            if (!c->body_left) c->body_done = 1;
            return (ssize_t)k;
        }
        if (c->expect_continue && !c->continue_sent && !c->started) {   /* see send_continue */
            ssize_t w = send_continue(s, c);
            if (w < 0) return w;
        }
        /* Nothing buffered: read straight into the app's buffer, never past this body. */
        ssize_t r;
        do r = sp_recv(c->h.fd, buf, want, 0); while (r < 0 && errno == EINTR);
        if (r > 0) {
            c->body_left -= r;
            if (!c->body_left) c->body_done = 1;
            return r;
        }
        if (r == 0) { c->keep_alive = 0; return -ECONNABORTED; }   /* body cut short */
        if (errno == EAGAIN || errno == EWOULDBLOCK) { c->readable = 0; return -EAGAIN; }
        return -errno;
    }
    /* chunked */
    for (;;) {
        if (c->dec_avail) {
            size_t k = c->dec_avail < n ? c->dec_avail : n;
            memcpy(buf, c->in + c->pos, k);
            c->pos += k;
            c->dec_avail -= k;
            return (ssize_t)k;
        }
        if (c->body_done) return 0;
        if (c->pos < c->in_len) {
            size_t out_len = 0, consumed = 0;
            int rc = sp_chunked_decode(&c->chunk, c->in + c->pos, c->in_len - c->pos, &out_len, &consumed);
            if (rc < 0 && rc != SP_PARTIAL) { c->keep_alive = 0; c->body_done = 1; return rc; }
            /* decoded bytes sit at in[pos..pos+out_len); close the gap left by framing bytes */
            size_t rest = c->in_len - (c->pos + consumed);
            memmove(c->in + c->pos + out_len, c->in + c->pos + consumed, rest);
            c->in_len = c->pos + out_len + rest;
            c->dec_avail = out_len;
            c->body_total += (int64_t)out_len;
            if (s->cfg.max_body_size >= 0 && c->body_total > s->cfg.max_body_size) {
                c->keep_alive = 0;
                c->body_done = 1;
                c->dec_avail = 0;
                return -413;
            }
            if (rc == 0) c->body_done = 1;
            if (out_len || c->body_done) continue;
        }
        if (c->expect_continue && !c->continue_sent && !c->started) {
            ssize_t w = send_continue(s, c);
            if (w < 0) return w;
        }
        int m = in_make_room(s, c);
        if (m < 0) return m;
        ssize_t r;
        do r = sp_recv(c->h.fd, c->in + c->in_len, c->in_cap - c->in_len, 0); while (r < 0 && errno == EINTR);
        if (r > 0) { c->in_len += (size_t)r; continue; }
        if (r == 0) { c->keep_alive = 0; return -ECONNABORTED; }
        if (errno == EAGAIN || errno == EWOULDBLOCK) { c->readable = 0; return -EAGAIN; }
        return -errno;
    }
}

/* sp_req_peek's work, with s->mu held. */
static ssize_t peek_locked(sp_conn *c, const char **data, size_t n) {
    ssize_t rc = -EAGAIN;
    size_t avail = 0;
    if (c->dead) rc = -ECONNRESET;
    else if (c->req.body == 0 || (c->req.body == 1 && c->body_left <= 0)) rc = 0;
    else if (c->req.body == 1) avail = c->in_len - c->pos < (uint64_t)c->body_left ? c->in_len - c->pos : (size_t)c->body_left;
    else if (c->dec_avail) avail = c->dec_avail;
    else if (c->body_done) rc = 0;
    if (avail && n) {
        size_t k = avail < n ? avail : n;
        *data = c->in + c->pos;
        c->pos += k;
        if (c->req.body == 1) {
            c->body_left -= (int64_t)k;
            if (!c->body_left) c->body_done = 1;
        } else {
            c->dec_avail -= k;
        }
        rc = (ssize_t)k;
    }
    return rc;
}

ssize_t sp_code_peek(sp_server *s, int64_t code, const char **data, size_t n) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    ssize_t rc = c ? peek_locked(c, data, n) : -ESTALE;
    UNLOCK(s);
    return rc;
}

ssize_t sp_req_read(sp_server *s, int64_t code, char *buf, size_t n) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    ssize_t rc = body_read(s, c, buf, n);
    UNLOCK(s);
    return rc;
}

ssize_t sp_req_read_wait(sp_server *s, int64_t code, char *buf, size_t n, int timeout_ms) {
    for (;;) {
        LOCK(s);
        sp_conn *c = conn_code(s, code);
        if (!c) { UNLOCK(s); return -ESTALE; }
        ssize_t rc = body_read(s, c, buf, n);
        int fd = c->h.fd;
        UNLOCK(s);
        if (rc != -EAGAIN) return rc;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int pr = poll(&pfd, 1, timeout_ms);
        if (pr == 0) return -ETIMEDOUT;
        if (pr < 0 && errno != EINTR) return -errno;
    }
}


