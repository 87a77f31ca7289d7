/* api.c -- the sp_req_* / sp_code_* API Python calls: responses, finishing a request (keep-alive,
 * pipelining, closing), sendfile, the green-mode wait. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/sendfile.h>
#endif

#include "conn.h"
#include "loop/sysio.h"

/* ---- the API Python calls ------------------------------------------------------------------- */

static int finish_locked(sp_server *s, sp_conn *c, int abort);

/* Every sp_req_* entry point takes the request's code and looks it up under the lock
 * (conn_code: slot, generation, busy), never a pointer Python kept: a code kept past its
 * request (an app's stale write()) then finds nothing and gets -ESTALE, instead of reaching freed
 * memory or a connection that serves someone else now. */

/* sp_req_start with s->mu held. */
static int start_locked(sp_server *s, sp_conn *c, const char *status, size_t slen,
                        const char *headers, size_t hlen) {
    if (c->dead) return -EPIPE;
    if (c->started) return -EALREADY;
    for (size_t cap = 1024;; cap *= 2) {
        if (conn_out_reserve(c, cap) < 0) return -ENOMEM;
        ssize_t n = conn_format_head(s, c, c->out + c->out_len, c->out_cap - c->out_len, status, slen, headers, hlen, -1, 0);
        if (n >= 0) { c->out_len += (size_t)n; return 0; }
        if (n != -ENOSPC || cap > (1u << 24)) return n == -ENOSPC ? -EINVAL : (int)n;
    }
}

int sp_req_start(sp_server *s, int64_t code, const char *status, size_t slen,
                 const char *headers, size_t hlen) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = start_locked(s, c, status, slen, headers, hlen);
    UNLOCK(s);
    return rc;
}

/* Queues body bytes; with the lock held. Returns as sp_req_write. */
static ssize_t body_write(sp_server *s, sp_conn *c, const char *buf, size_t len) {
    if (c->dead) return -EPIPE;
    if (!len) return conn_flush(s, c);
    /* Nothing more may go (a bodiless response, or the Content-Length all sent): -EMSGSIZE, so
     * that the caller stops iterating (PEP 3333) instead of feeding us an endless body. */
    if (c->no_body || c->resp_left == 0) {
        if (!c->no_body) c->keep_alive = 0;
        ssize_t w = conn_flush(s, c);
        return w < 0 ? w : -EMSGSIZE;
    }
    if (c->resp_left >= 0) {
        if ((int64_t)len > c->resp_left) {
            len = (size_t)c->resp_left;   /* more than its Content-Length: cut, then close */
            c->keep_alive = 0;
        }
        c->resp_left -= (int64_t)len;
        if (!len) return conn_flush(s, c);
    }
    struct iovec iov[3];
    int n = 0;
    char hdr[24];
    if (c->chunked_out) {
        size_t hl = conn_fmt_u64(hdr, len, 16);
        hdr[hl++] = '\r';
        hdr[hl++] = '\n';
        iov[n].iov_base = hdr; iov[n++].iov_len = hl;
    }
    iov[n].iov_base = (void *)buf; iov[n++].iov_len = len;
    if (c->chunked_out) { iov[n].iov_base = "\r\n"; iov[n++].iov_len = 2; }
    if (c->resp_left == 0 && s->cfg.cork && c->keep_alive && c->body_done && !c->dead
            && pending(c) + len <= SP_CORK_BYTES && conn_cork_worth(s)) {
        /* The last bytes its Content-Length allows: the response is complete, as a respond()
         * answer is, and small: held back to leave in a burst as those are ("Corking"). */
        int64_t now = s->now_us;
        if (s->ncork && now - s->cork_since_us >= SP_CORK_US) conn_uncork_all(s);
        if (conn_cork_append(s, c, iov, n, now) < 0) { conn_kill(s, c); return -ENOMEM; }
        return SP_WRITE_COMPLETE;
    }
    ssize_t w = conn_sendv(s, c, iov, n);
    /* The last bytes its Content-Length allows: the caller stops iterating (PEP 3333) and
     * finishes; what is still queued goes out from the loop, as a respond() answer's does. */
    return w >= 0 && c->resp_left == 0 ? SP_WRITE_COMPLETE : w;
}

ssize_t sp_req_write(sp_server *s, int64_t code, const char *buf, size_t len) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    ssize_t rc = c->started ? body_write(s, c, buf, len) : -EINVAL;
    UNLOCK(s);
    return rc;
}

ssize_t sp_req_flush(sp_server *s, int64_t code) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    c->writable = 1;   /* asked after a wait for writability */
    ssize_t rc = conn_flush(s, c);
    UNLOCK(s);
    return rc;
}

ssize_t sp_req_drain(sp_server *s, int64_t code, size_t low_water) {
    int timeout = s->cfg.send_timeout_ms > 0 ? s->cfg.send_timeout_ms : -1;
    for (;;) {
        LOCK(s);
        sp_conn *c = conn_code(s, code);
        if (!c) { UNLOCK(s); return -ESTALE; }
        ssize_t p = conn_flush(s, c);
        int fd = c->h.fd;
        UNLOCK(s);
        if (p < 0 || (size_t)p <= low_water) return p;
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        int pr = poll(&pfd, 1, timeout);
        if (pr == 0) return -ETIMEDOUT;
        if (pr < 0 && errno != EINTR) return -errno;
        LOCK(s);
        if ((c = conn_code(s, code)) != NULL) c->writable = 1;
        UNLOCK(s);
    }
}

ssize_t sp_req_sendfile(sp_server *s, int64_t code, int fd, int64_t offset, size_t count) {
    ssize_t rc;
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
#ifdef __linux__
    if (c->dead) { rc = -EPIPE; goto out; }
    if (c->chunked_out || !c->started) { rc = -ENOSYS; goto out; }   /* caller writes instead */
    if (c->no_body) { rc = (ssize_t)count; goto out; }
    rc = conn_flush(s, c);
    if (rc < 0) goto out;
    if (rc > 0) { rc = -EAGAIN; goto out; }
    if (c->resp_left >= 0 && (int64_t)count > c->resp_left) { count = (size_t)c->resp_left; c->keep_alive = 0; }
    if (!count) { rc = 0; goto out; }
    off_t off = (off_t)offset;
    ssize_t n;
    do n = sendfile(c->h.fd, fd, &off, count); while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) { c->writable = 0; rc = -EAGAIN; }
        else if (errno == EINVAL || errno == ENOSYS) rc = -ENOSYS;   /* not a regular file: fall back */
        else { rc = -errno; conn_kill(s, c); }
        goto out;
    }
    if (c->resp_left >= 0) c->resp_left -= n;
    s->st.bytes_out += (uint64_t)n;
    c->send_progress_ms = sp_now_ms();
    rc = n;
#else
    (void)fd; (void)offset; (void)count; (void)c;
    rc = -ENOSYS;
    goto out;
#endif
out:
    UNLOCK(s);
    return rc;
}

/* Sends head[0..n), formatted by end_head, and the body, then finishes the request. Called and
 * returns with s->mu held; c is busy. */
static int respond_send(sp_server *s, sp_conn *c, char *head, size_t n, const char *body,
                        size_t blen) {
    int rc = 0;
    struct iovec iov[2] = { { head, n }, { (void *)body, 0 } };
    if (!c->no_body) {
        if (c->resp_left >= 0 && (int64_t)blen > c->resp_left) { blen = (size_t)c->resp_left; c->keep_alive = 0; }
        iov[1].iov_len = blen;
        c->resp_left -= (int64_t)blen;
    }
    int niov = iov[1].iov_len ? 2 : 1;
    if (s->cfg.cork && c->keep_alive && c->body_done && n + iov[1].iov_len <= SP_CORK_BYTES
            && conn_cork_worth(s)) {
        int64_t now = s->now_us;   /* lags by at most the app run that just ended */
        if (s->ncork && now - s->cork_since_us >= SP_CORK_US) conn_uncork_all(s);
        if (conn_cork_append(s, c, iov, niov, now) < 0) { conn_kill(s, c); rc = -ENOMEM; }
    } else {
        ssize_t w = conn_sendv(s, c, iov, niov);
        if (w < 0) rc = (int)w;
    }
    int f = finish_locked(s, c, 0);
    return rc ? rc : f;
}

/* The one-crossing response (sp_req_respond). Called and returns with s->mu held; c is busy.
 * -EINVAL and -EALREADY leave the request unfinished. With whole, a body that is not
 * exactly the head's Content-Length (or a head too big to tell here) is not sent: the head
 * starts alone, as sp_req_start, and -EINPROGRESS says so (the caller writes the body). */
static int respond(sp_server *s, sp_conn *c, const char *status, size_t slen,
                   const char *headers, size_t hlen, const char *body, size_t blen, int whole) {
    char head[SP_HEAD_STACK];
    if (c->dead) { finish_locked(s, c, 0); return -EPIPE; }
    if (c->started) return -EALREADY;
    ssize_t n = conn_format_head(s, c, head, sizeof(head), status, slen, headers, hlen, (int64_t)blen,
                                 whole);
    if (whole && (n == -ERANGE || n == -ENOSPC)) {   /* not whole: the caller streams the body */
        int rc = start_locked(s, c, status, slen, headers, hlen);
        if (rc == -ENOMEM) finish_locked(s, c, 1);   /* over, as respond_send's -ENOMEM is */
        return rc ? rc : -EINPROGRESS;
    }
    if (n == -ENOSPC) {   /* a huge head: take the general path */
        int rc = start_locked(s, c, status, slen, headers, hlen);
        if (rc != -EINVAL) {
            if (rc == 0) {
                ssize_t w = body_write(s, c, body, blen);
                if (w < 0 && w != -EMSGSIZE && w != SP_WRITE_COMPLETE)
                    rc = (int)w;   /* EMSGSIZE: a bodiless response; COMPLETE: its length sent */
            }
            int f = finish_locked(s, c, 0);
            if (!rc) rc = f;
        }
        return rc;
    }
    if (n < 0) return (int)n;
    return respond_send(s, c, head, (size_t)n, body, blen);
}

int sp_req_respond(sp_server *s, int64_t code, const char *status, size_t slen,
                   const char *headers, size_t hlen, const char *body, size_t blen) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = respond(s, c, status, slen, headers, hlen, body, blen, 0);
    UNLOCK(s);
    return rc;
}

sp_request *sp_code_req(sp_server *s, int64_t code) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    UNLOCK(s);
    return c ? &c->req : NULL;
}

sp_request *sp_code_env(sp_server *s, int64_t code) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (c && conn_env_block(c) < 0) c = NULL;
    UNLOCK(s);
    return c ? &c->req : NULL;
}

sp_request *sp_code_head(sp_server *s, int64_t code, const sp_head **head) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    UNLOCK(s);
    if (!c) return NULL;
    *head = (const sp_head *)(const void *)c->envbuf;
    return &c->req;
}

/* sp_code_respond with s->mu held. head: "status\0headers" (headers as sp_req_start takes them). */
static int code_respond_locked(sp_server *s, int64_t code, const char *head, size_t hlen,
                               const char *body, size_t blen, int whole) {
    const char *nul = memchr(head, '\0', hlen);
    size_t slen = nul ? (size_t)(nul - head) : hlen;
    const char *headers = nul ? nul + 1 : head + hlen;
    sp_conn *c = conn_code(s, code);
    return c ? respond(s, c, head, slen, headers, hlen - slen - (nul ? 1 : 0), body, blen, whole)
             : -ESTALE;
}

void sp_server_flush(sp_server *s) {
    LOCK(s);
    conn_uncork_all(s);
    UNLOCK(s);
}

int sp_code_respond(sp_server *s, int64_t code, const char *head, size_t hlen,
                    const char *body, size_t blen) {
    LOCK(s);
    int rc = code_respond_locked(s, code, head, hlen, body, blen, 0);
    UNLOCK(s);
    return rc;
}

/* sp_code_answer(), and with whole sp_code_answer_whole(). */
static int64_t code_answer(sp_server *s, int64_t code, const char *head, size_t hlen,
                           const char *body, size_t blen, int whole) {
    LOCK(s);   /* one lock for both halves: the answer and the next request */
    int rc = code_respond_locked(s, code, head, hlen, body, blen, whole);
    if (!s->cfg.chain || rc == -ESTALE || rc == -EALREADY || rc == -EINVAL || rc == -EINPROGRESS) {
        UNLOCK(s);
        return rc;
    }
    /* Only a queued request, and only this thread's turn (loop_may_chain_locked): otherwise
     * the caller's sp_poll_one() polls, as this would, without the GIL. */
    if (!loop_may_chain_locked(s)) { UNLOCK(s); return 0; }
    int64_t next = loop_take_next_locked(s);
    if (!next) {
        sp_event ev;
        int n = loop_poll_locked(s, &ev, 1, 0);
        next = n > 0 && ev.kind == SP_EV_REQUEST ? ev.code : 0;
    }
    UNLOCK(s);
    return next;
}

int64_t sp_code_answer(sp_server *s, int64_t code, const char *head, size_t hlen,
                       const char *body, size_t blen) {
    return code_answer(s, code, head, hlen, body, blen, 0);
}

int64_t sp_code_answer_whole(sp_server *s, int64_t code, const char *head, size_t hlen,
                             const char *body, size_t blen) {
    return code_answer(s, code, head, hlen, body, blen, 1);
}


/* What sp_last_duration_us() answers: set by the thread that finishes a request, which is the
 * one that then writes its access log line. */
#if defined(__linux__) && defined(__GNUC__)
static __thread int64_t tls_last_took_us __attribute__((tls_model("initial-exec")));
#else
static __thread int64_t tls_last_took_us;
#endif

int64_t sp_last_duration_us(void) { return tls_last_took_us; }

static int finish_locked(sp_server *s, sp_conn *c, int abort) {
    int rc = 0;
    c->wait_mask = 0;
    s->st.in_flight--;
    if (c->status >= 100 && c->status < 600) s->st.status_class[c->status / 100]++;
    int64_t now = s->now_us = sp_now_us();   /* one clock read per request, here */
    int64_t took_us = now - c->busy_since_us;
    tls_last_took_us = took_us;
    int bucket = 0;
    while (bucket < SP_DURATION_BUCKETS - 1 && took_us > sp_duration_bounds_us[bucket]) bucket++;
    s->st.duration_count[bucket]++;
    s->st.duration_sum_us += (uint64_t)(took_us > 0 ? took_us : 0);
    s->st.requests++;
    if (c->dead || abort) {
        rc = c->dead ? -EPIPE : 0;
        conn_set_state(c, C_HEAD);   /* not C_BUSY any more: conn_close may free it */
        conn_close(s, c);
        goto out;
    }
    if (c->chunked_out) {
        struct iovec iov = { "0\r\n\r\n", 5 };
        if (conn_sendv(s, c, &iov, 1) < 0) { conn_set_state(c, C_HEAD); conn_close(s, c); rc = -EPIPE; goto out; }
    } else if (pending(c) && !c->corked) {
        /* The response's last bytes leave now. A head with no body after it (an empty
         * iterable, HEAD, 204, 304) was only formatted by sp_req_start: with an edge-triggered
         * backend no write event would ever come for it, and the client would wait forever. */
        if (conn_flush(s, c) < 0) { conn_set_state(c, C_HEAD); conn_close(s, c); rc = -EPIPE; goto out; }
    }
    if (c->resp_left > 0) c->keep_alive = 0;   /* the app sent less than its Content-Length */
    if (!conn_skip_body(s, c)) c->keep_alive = 0;   /* unread body still on the wire */
    conn_set_state(c, C_HEAD);
    c->started = 0;
    c->req.serial++;
    if (!c->keep_alive) {
        if (c->corked) {   /* the lingering close flushes nothing itself: send it now */
            conn_uncork_forget(s, c);
            if (conn_flush(s, c) < 0) goto out;
        }
        /* The lingering close (half-close, then read until the client's FIN) keeps a reset
         * from destroying the response when the client may still be sending (RFC 9112, 9.6).
         * A client that announced this request as its last, and whose bytes have all been
         * read, sends nothing more: its connection is closed at once, as nginx's heuristic
         * does, which saves a shutdown, a poll turn and a read per Connection: close request. */
        int quiet = c->peer_closed || c->client_close;
        if (c->pos < c->in_len || !c->body_done || !quiet || pending(c)) {
            conn_linger(s, c);   /* half-close; let the client read the response */
        } else {
            conn_close(s, c);
        }
        goto out;
    }
    c->deadline_ms = s->draining ? now / 1000 + SP_DRAIN_IDLE_MS
                                 : deadline_after(now / 1000, s->cfg.keepalive_timeout_ms);
    /* Pipelining: the next head may already be buffered; start it unless output is backed up. */
    if (pending(c) <= SP_PIPELINE_OUT_MAX) {
        int p = conn_try_parse(s, c);
        if (p == 0 && c->readable) {
            conn_read_head(s, c);   /* may close c */
        } else if (p == 0) {
            if (c->pos == c->in_len) conn_release_in(s, c);
            conn_interest(s, c);   /* level-triggered backends: reading again */
        }
    } else {
        conn_interest(s, c);
    }
out:
    return rc;
}

int sp_req_finish(sp_server *s, int64_t code, int abort) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = finish_locked(s, c, abort);
    UNLOCK(s);
    return rc;
}

int sp_req_wait(sp_server *s, int64_t code, int mask, int64_t token) {
    LOCK(s);
    sp_conn *c = conn_code(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = 0;
    int had = c->wait_mask;   /* a wait given up (its timeout) leaves its mask set */
    if (c->dead || c->peer_closed || ((mask & SP_READ) && c->readable) || ((mask & SP_WRITE) && c->writable)) {
        c->wait_mask = 0;
        rc = loop_fd_event(s, c->h.fd, mask, token);   /* can progress (or fail) now */
        if (had) conn_interest(s, c);
    } else {
        c->wait_mask = mask;
        c->wait_token = token;
        /* A level-triggered backend reports only the events conn_interest asks for, and a busy
         * connection's read interest is otherwise off: without this the wait is never woken. */
        if (had != mask) conn_interest(s, c);
    }
    UNLOCK(s);
    return rc;
}
