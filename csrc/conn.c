/* conn.c -- the connection state machine: reading and parsing heads, request bodies, responses,
 * keep-alive, pipelining, lingering close.
 *
 * Theory of operation
 * -------------------
 *   C_HEAD ---head parsed---> C_READY (queued) ---sp_poll hands it out---> C_BUSY (the app runs)
 *     ^                                                                       |
 *     +------------- sp_req_finish(): keep-alive, next pipelined head --------+
 *   any state --bad input / timeout--> error response, then C_LINGER (half-closed, discarding
 *     input until EOF or SP_LINGER_MS, so the client reads our answer instead of a reset).
 *
 * One request per connection is parsed at a time: the next pipelined head waits in the buffer
 * until the current response is finished, so responses leave in request order by construction
 * and a pipelining client cannot make us buffer more than one read chunk ahead.
 *
 * While Python owns a connection (C_READY/C_BUSY) the loop never reads its socket: the app's
 * thread reads the body itself (sp_req_read) and writes its response directly (sp_req_write);
 * only output the socket would not take waits in `out` for the loop to flush. A connection that
 * fails while Python owns it is only shut down and marked dead; its memory and fd are released by
 * sp_req_finish(), so no fd number is reused under the app's feet.
 *
 * Readiness is edge-triggered: `readable`/`writable` remember whether the last read/write stopped
 * at EAGAIN, so we only make syscalls that can make progress.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/sendfile.h>
#endif

#include "core.h"
#include "backend.h"
#include "sysio.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0   /* macOS: SO_NOSIGPIPE is set on the socket instead */
#endif

#define SP_OUT_MIN 4096
#define SP_HEAD_STACK 8192          /* respond fast path: response heads up to this stay on the stack */
#define SP_HEAD_TAIL_MAX 512        /* end_head's lines at most: Date, Server (128), framing, Connection */
#define SP_PIPELINE_OUT_MAX 65536   /* don't start the next pipelined request past this much unsent */
#define SP_DRAIN_IDLE_MS 1000       /* draining: idle keep-alive connections get this long */

void srv_slot_freed(sp_server *s);

/* The deadline timeout_ms after from_ms. Every configured timeout means "off" at 0 (sp.h,
 * sp_config): no deadline then, the 0 the sweep skips. */
static int64_t deadline_after(int64_t from_ms, int timeout_ms) {
    return timeout_ms > 0 ? from_ms + timeout_ms : 0;
}

/* ---- lifecycle ---------------------------------------------------------------------------------- */

sp_conn *conn_new(sp_server *s, int fd, int listener, const struct sockaddr *sa, int salen) {
    (void)salen;
    sp_conn *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    if (srv_slot_take(s, c) < 0) { free(c); return NULL; }
    c->gen = s->conn_gen++ & SP_CODE_GEN_MASK;
    c->h.kind = K_CONN;
    c->h.fd = fd;
    c->srv = s;
    c->state = C_HEAD;
    c->writable = 1;
    c->req.fd = fd;
    c->req.listener = listener;
    c->proxy_wait = listener >= 0 && listener < 64 && (s->cfg.proxy_listeners >> listener & 1);
    char host[INET6_ADDRSTRLEN] = "", port[8] = "";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        c->port_num = ntohs(a->sin_port);
        snprintf(port, sizeof(port), "%u", c->port_num);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        c->port_num = ntohs(a->sin6_port);
        snprintf(port, sizeof(port), "%u", c->port_num);
    }
    /* The REMOTE_ADDR value opens every environ block of this connection, REMOTE_PORT's closes
     * it (see sp_request.env). */
    size_t hl = strlen(host) + 1, pl = strlen(port);
    memcpy(c->remote, host, hl);
    c->remote_len = hl;
    memcpy(c->port, port, pl + 1);
    c->port_len = pl;
    c->deadline_ms = deadline_after(sp_now_ms(), s->cfg.header_timeout_ms);
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    return c;
}

static void release_in(sp_server *s, sp_conn *c) {
    if (c->in && c->in_cap == SP_IN_CHUNK) srv_buf_put(s, c->in); else free(c->in);
    c->in = NULL;
    c->in_cap = c->in_len = c->pos = 0;
}

static void unqueue(sp_server *s, sp_conn *c) {
    if (!c->queued) return;
    sp_conn **pp = &s->q_head, *prev = NULL;
    while (*pp && *pp != c) { prev = *pp; pp = &(*pp)->qnext; }
    if (*pp) {
        *pp = c->qnext;
        if (s->q_tail == c) s->q_tail = prev;
        s->nready--;
    }
    c->queued = 0;
}

static void uncork_forget(sp_server *s, sp_conn *c) {
    if (!c->corked) return;
    c->corked = 0;
    int k = 0;
    for (int i = 0; i < s->ncork; i++)
        if (s->cork[i] != c) s->cork[k++] = s->cork[i];
    s->ncork = k;
}

void conn_close(sp_server *s, sp_conn *c) {
    unqueue(s, c);
    uncork_forget(s, c);
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv_conn_forget(s, c);
    srv_slot_release(s, c);
    close(c->h.fd);
    release_in(s, c);
    free(c->out);
    free(c->envbuf);
    free(c->rep);
    c->out = c->envbuf = c->rep = NULL;
    c->rep_len = 0;
    if (s->polling) {
        /* Another thread is in be_poll() without the lock: the events it brings back may point
         * at this connection. Keep the memory until that poller has dispatched them; kind 0
         * makes dispatch skip it. */
        c->h.kind = 0;
        c->next = s->graveyard;
        s->graveyard = c;
    } else {
        free(c);
    }
    s->nconns--;
    srv_slot_freed(s);
    if (s->draining && s->nconns == 0) sp_server_wakeup(s);   /* the worker may exit now */
}

/* The connection failed. If Python owns it, only shut it down: sp_req_finish() frees it. */
static void conn_kill(sp_server *s, sp_conn *c) {
    if (c->state == C_BUSY) {
        if (!c->dead) shutdown(c->h.fd, SHUT_RDWR);
        c->dead = 1;
        c->deadline_ms = 0;
        if (c->wait_mask) {   /* wake the green thread waiting on it: it will see the error */
            c->wait_mask = 0;
            srv_fd_event(s, c->h.fd, SP_READ | SP_WRITE, c->wait_token);
        }
        return;
    }
    conn_close(s, c);
}

/* ---- output ------------------------------------------------------------------------------------ */

static int out_append(sp_conn *c, const char *p, size_t n);

static int out_reserve(sp_conn *c, size_t n) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_cap - c->out_len >= n) return 0;
    if (c->out_off) {   /* compact first */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_cap - c->out_len >= n) return 0;
    }
    size_t cap = c->out_cap ? c->out_cap : SP_OUT_MIN;
    while (cap - c->out_len < n) cap *= 2;
    char *o = realloc(c->out, cap);
    if (!o) return -ENOMEM;
    c->out = o;
    c->out_cap = cap;
    return 0;
}

static int out_append(sp_conn *c, const char *p, size_t n) {
    if (!n) return 0;
    if (out_reserve(c, n) < 0) return -ENOMEM;
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

/* Bytes still to send. */
static size_t pending(const sp_conn *c) { return c->out_len - c->out_off; }
/* The part in our own memory: what backpressure counts (a lent body leaves with the next burst). */
static size_t pending_own(const sp_conn *c) { return c->out_len - c->out_off; }

/* One writev of total bytes, stamping progress with now_ms (-1: read the clock). Returns the
 * bytes written (0 when the socket is full), or -errno (the connection was killed). */
static ssize_t writev_some(sp_server *s, sp_conn *c, const struct iovec *iov, int n, size_t total,
                           int64_t now_ms) {
    ssize_t r;
    do r = sp_writev(c->h.fd, iov, n); while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) { int e = errno; conn_kill(s, c); return -e; }
        r = 0;
    }
    if (r > 0) {
        s->st.bytes_out += (uint64_t)r;
        c->send_progress_ms = now_ms >= 0 ? now_ms : sp_now_ms();
    }
    if ((size_t)r < total) c->writable = 0;   /* a short write means the socket is full */
    return r;
}

/* Writes queued output, stamping progress with now_ms (-1: read the clock). Returns the bytes
 * still queued, or -errno (the connection is dead). */
static ssize_t conn_flush_at(sp_server *s, sp_conn *c, int64_t now_ms) {
    if (c->dead) return -EPIPE;
    while (pending(c) && c->writable) {
        ssize_t r = sp_send(c->h.fd, c->out + c->out_off, pending(c), MSG_NOSIGNAL);
        if (r > 0) {
            c->out_off += (size_t)r;
            s->st.bytes_out += (uint64_t)r;
            c->send_progress_ms = now_ms >= 0 ? now_ms : sp_now_ms();
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->writable = 0;
        } else {
            int e = r < 0 ? errno : EPIPE;
            conn_kill(s, c);
            return -e;
        }
    }
    if (!pending(c)) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > 4 * SP_OUT_MIN) { free(c->out); c->out = NULL; c->out_cap = 0; }
    }
    srv_conn_interest(s, c);
    return (ssize_t)pending(c);
}

static ssize_t conn_flush(sp_server *s, sp_conn *c) { return conn_flush_at(s, c, -1); }

/* ---- corking -------------------------------------------------------------------------------
 *
 * A small complete response (the respond fast path, keep-alive) is not written at once: it is
 * appended to the connection's output and the connection joins s->cork. The held responses leave
 * together, one send each, when the thread runs out of queued requests, before any poll, once
 * SP_CORK_MAX are held, or once the oldest has waited SP_CORK_US (checked whenever a request is
 * handed out or answered). Why: a client that has read everything sleeps in its own poll, and
 * waking it from another CPU costs the sender an inter-processor interrupt, the most expensive
 * part of a small send on a busy server. Sent back to back, only the first of a burst wakes the
 * client; the others find it awake. The price is latency: a response waits at most SP_CORK_US
 * plus the run of one more request on the same thread (another thread takes the poller role,
 * which flushes, after SP_HANDOFF_US).
 *
 * Larger responses go at once (a 64 KiB body held back without a copy, as it once was, measured
 * no different). */

static void cork(sp_server *s, sp_conn *c, int64_t now_us) {
    if (c->corked) return;
    if (!s->ncork) s->cork_since_us = now_us;
    c->corked = 1;
    s->cork[s->ncork++] = c;
    if (s->ncork == SP_CORK_MAX) conn_uncork_all(s);
}

void conn_uncork_all(sp_server *s) {
    int n = s->ncork;
    if (!n) return;
    s->ncork = 0;   /* conn_flush may close a connection: it is off the list already */
    int64_t now_ms = (s->now_us = sp_now_us()) / 1000;   /* one clock read per burst */
    for (int i = 0; i < n; i++) {
        sp_conn *c = s->cork[i];
        c->corked = 0;
        if (conn_flush_at(s, c, now_ms) == 0 && c->out) {   /* drained: idle connections hold no buffer */
            if (c->out_cap == SP_CORK_BYTES && s->ncork_bufs < SP_CORK_MAX)
                s->cork_bufs[s->ncork_bufs++] = c->out;
            else
                free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
    }
}

/* Appends iov to the output and corks the connection. 0, or -ENOMEM (nothing queued). */
static int cork_append(sp_server *s, sp_conn *c, const struct iovec *iov, int n, int64_t now_us) {
    if (!c->out) {
        c->out = s->ncork_bufs ? s->cork_bufs[--s->ncork_bufs] : malloc(SP_CORK_BYTES);
        if (!c->out) return -ENOMEM;
        c->out_cap = SP_CORK_BYTES;
        c->out_len = c->out_off = 0;
    }
    for (int i = 0; i < n; i++)
        if (out_append(c, iov[i].iov_base, iov[i].iov_len) < 0) return -ENOMEM;
    c->send_progress_ms = now_us / 1000;
    cork(s, c, now_us);
    return 0;
}

/* Sends iov after whatever is queued; what the socket does not take is queued. Returns the bytes
 * queued afterwards or -errno. */
static ssize_t conn_sendv(sp_server *s, sp_conn *c, struct iovec *iov, int n) {
    if (c->dead) return -EPIPE;
    int i = 0;
    if (!pending(c) && c->writable) {
        size_t total = 0;
        for (int k = 0; k < n; k++) total += iov[k].iov_len;
        ssize_t r = writev_some(s, c, iov, n, total, -1);
        if (r < 0) return r;
        if ((size_t)r == total) return 0;
        size_t done = (size_t)r;
        while (i < n && done >= iov[i].iov_len) done -= iov[i++].iov_len;
        if (i < n) { iov[i].iov_base = (char *)iov[i].iov_base + done; iov[i].iov_len -= done; }
    }
    for (; i < n; i++)
        if (out_append(c, iov[i].iov_base, iov[i].iov_len) < 0) { conn_kill(s, c); return -ENOMEM; }
    if (!c->send_progress_ms) c->send_progress_ms = sp_now_ms();
    return conn_flush(s, c);
}

/* ---- errors and closing ----------------------------------------------------------------------- */

static const char *reason(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void start_linger(sp_server *s, sp_conn *c) {
    c->state = C_LINGER;
    /* While the response is still going out, the send timeout governs (see conn_timeout). */
    c->deadline_ms = sp_now_ms() + SP_LINGER_MS;
    c->body_left = SP_LINGER_DISCARD;   /* reused as the discard budget */
    if (!pending(c)) shutdown(c->h.fd, SHUT_WR);
    srv_conn_interest(s, c);
}

/* Answers with an error status of our own and closes gracefully. Not for C_BUSY connections. */
static void conn_error(sp_server *s, sp_conn *c, int status) {
    char buf[512];
    const char *why = reason(status);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s%.*s\r\n%s\n",
                     status, why, strlen(why) + 1, srv_date(s), (int)s->server_line_len, s->server_line, why);
    s->st.rejected++;
    s->st.status_class[status / 100]++;
    unqueue(s, c);
    c->in_len = c->pos = 0;
    c->writable = 1;
    struct iovec iov = { buf, (size_t)n };
    if (conn_sendv(s, c, &iov, 1) < 0) return;   /* already closed */
    start_linger(s, c);
}

static void linger_read(sp_server *s, sp_conn *c) {
    char buf[4096];
    for (;;) {
        ssize_t r = sp_recv(c->h.fd, buf, sizeof(buf), 0);
        if (r > 0) {
            c->body_left -= r;
            if (c->body_left <= 0) { conn_close(s, c); return; }
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { c->readable = 0; return; }
        conn_close(s, c);   /* EOF or error: done */
        return;
    }
}

/* ---- reading and parsing heads --------------------------------------------------------------- */

static int env_build(sp_conn *c, const sp_request_head *rh, size_t head_len) {
    size_t need = c->remote_len + c->port_len + 1 + head_len * 2 + rh->num_headers * 8 + 256;
    for (int tries = 0; tries < 2; tries++) {
        if (c->env_cap < need) {
            char *e = realloc(c->envbuf, need);
            if (!e) return -500;
            c->envbuf = e;
            c->env_cap = need;
        }
        memcpy(c->envbuf, c->remote, c->remote_len);
        size_t room = c->env_cap - c->remote_len - c->port_len - 1;
        ssize_t n = sp_env_pack(rh, c->envbuf + c->remote_len, room);
        if (n >= 0) {
            size_t len = c->remote_len + (size_t)n;
            memcpy(c->envbuf + len, c->port, c->port_len + 1);   /* NUL-terminated for C readers */
            c->req.env = c->envbuf;
            c->req.env_len = len + c->port_len;
            return 0;
        }
        if (n != -431) return (int)n;
        need *= 2;
    }
    return -431;
}

/* The head of the connection's last request, kept so that a keep-alive client repeating it (the
 * common case) skips parsing, framing and the env block: equal bytes parse the same under the
 * same limits, and env_build's block for them is still in envbuf. Heads up to SP_REPEAT_MAX. */
static void remember_head(sp_conn *c, const char *head, size_t len, const sp_framing *f,
                          int is_head, int minor) {
    c->rep_len = 0;
    if (len > SP_REPEAT_MAX) return;
    if (c->rep_cap < len) {
        char *r = realloc(c->rep, len);
        if (!r) return;
        c->rep = r;
        c->rep_cap = len;
    }
    memcpy(c->rep, head, len);
    c->rep_len = len;
    c->rep_f = *f;
    c->rep_head = (unsigned)is_head;
    c->rep_minor = minor >= 1;   /* all that is used of it: http11 */
}

/* Tries to parse a complete head at in[pos..]. Returns 1 (queued), 0 (need more), -1 (answered
 * with an error). */
static int try_parse(sp_server *s, sp_conn *c) {
    if (c->pos == c->in_len) return 0;
    if (!c->head_started_ms) c->head_started_ms = s->now_us / 1000;
    sp_framing f;
    int rc, is_head, minor;
    size_t avail = c->in_len - c->pos;
    if (c->rep_len && avail >= c->rep_len && memcmp(c->in + c->pos, c->rep, c->rep_len) == 0) {
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
        int er = env_build(c, &rh, (size_t)rc);
        if (er < 0) { conn_error(s, c, -er); return -1; }
        is_head = rh.method_len == 4 && memcmp(rh.method, "HEAD", 4) == 0;
        minor = rh.minor_version;
        remember_head(c, c->in + c->pos, (size_t)rc, &f, is_head, minor);
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
        c->state = C_BODY;   /* conn_read_head() reads the rest, then queues it */
        c->deadline_ms = deadline_after(sp_now_ms(), s->cfg.body_timeout_ms);
        srv_conn_interest(s, c);
        return 0;
    }
    srv_enqueue(s, c);
    /* Nothing left to read for this request: give the read buffer back now rather than pin it
     * while the app runs (a long-poll worker holding 10k requests would hold 10k buffers). */
    if (c->body_done && c->pos == c->in_len) release_in(s, c);
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
static void conn_read_head(sp_server *s, sp_conn *c) {
    const sp_limits *lim = &s->cfg.limits;
    size_t max_buf = lim->max_head_size + SP_IN_CHUNK;
    while (c->state == C_HEAD || c->state == C_BODY) {
        if (!c->in) {
            c->in = srv_buf_get(s);
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
                if (c->in_cap == SP_IN_CHUNK) srv_buf_put(s, c->in); else free(c->in);
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
                    if (n) { memcpy(n, c->in, c->in_len); srv_buf_put(s, c->in); }
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
            if (c->pos == c->in_len) release_in(s, c);   /* idle: give the buffer back */
            srv_conn_interest(s, c);
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
            if ((int64_t)(c->in_len - c->pos) >= c->body_left) { srv_enqueue(s, c); return; }
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
            if (try_parse(s, c) != 0) return;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->readable = 0;
            if (c->pos == c->in_len) release_in(s, c);   /* idle: give the buffer back */
            srv_conn_interest(s, c);
            return;
        }
        /* EOF or error. A half-received head gets no answer: the client has gone. A response
         * still held back (corking) is sent first: a client that half-closed waits for it. */
        if (r == 0 && c->corked) {
            uncork_forget(s, c);
            if (conn_flush(s, c) < 0) return;   /* closed */
            if (pending(c)) { start_linger(s, c); return; }   /* the rest goes out when writable */
        }
        conn_close(s, c);
        return;
    }
}

void conn_on_event(sp_server *s, sp_conn *c, int mask) {
    if (mask & BE_ERROR) c->peer_closed = 1;
    if (mask & BE_EOF) c->eof_seen = 1;
    if (mask & BE_WRITE) {
        c->writable = 1;
        if ((c->wait_mask & SP_WRITE) && c->state == C_BUSY) {
            c->wait_mask = 0;
            srv_fd_event(s, c->h.fd, SP_WRITE, c->wait_token);
        }
        if (pending(c)) {
            int was_close = c->state == C_LINGER;
            int held = pending(c) > SP_PIPELINE_OUT_MAX;
            if (conn_flush(s, c) < 0) return;
            if (!pending(c) && was_close) {
                shutdown(c->h.fd, SHUT_WR);
                c->deadline_ms = sp_now_ms() + SP_LINGER_MS;
            } else if (!pending(c) && c->state == C_HEAD && c->req.serial && c->pos == c->in_len) {
                /* The last response has gone: idle from now on (the send timeout governed). */
                c->deadline_ms = s->draining ? sp_now_ms() + SP_DRAIN_IDLE_MS
                                             : deadline_after(sp_now_ms(), s->cfg.keepalive_timeout_ms);
            }
            if (held && pending(c) <= SP_PIPELINE_OUT_MAX && c->state == C_HEAD && !c->queued) {
                /* Output drained below the mark: the pipelined requests held back by
                 * backpressure go on, from the buffer first, then from the socket. */
                if (c->pos < c->in_len && try_parse(s, c) != 0) return;
                if (c->readable) mask |= BE_READ;
            }
        }
    }
    if (mask & BE_READ) {
        c->readable = 1;
        switch (c->state) {
        case C_HEAD:
        case C_BODY:
            if (pending_own(c) > SP_PIPELINE_OUT_MAX) return;   /* backpressure: read later */
            conn_read_head(s, c);
            break;
        case C_LINGER:
            linger_read(s, c);
            break;
        case C_BUSY:
        case C_READY:
            if (c->wait_mask & SP_READ) {
                c->wait_mask = 0;
                srv_fd_event(s, c->h.fd, SP_READ, c->wait_token);
            }
            if (c->body_done && !c->peer_closed) {
                /* Only a peek: a client that hung up while its long-poll waits is noticed. */
                char b;
                ssize_t r = sp_recv(c->h.fd, &b, 1, MSG_PEEK);
                if (r == 0) c->peer_closed = 1;
                else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) c->peer_closed = 1;
            }
            break;
        }
    }
}

void conn_timeout(sp_server *s, sp_conn *c, int64_t now) {
    if (pending(c) && c->state != C_BUSY) {
        /* The response is still going out (finished by the app, queued here): a slow reader
         * keeps its connection as long as it makes progress within the send timeout. With
         * that off (0) it keeps it however slow it is: looked at again a sweep later, so that
         * the state's own timeout applies once the output has gone. */
        int64_t limit = s->cfg.send_timeout_ms > 0 ? c->send_progress_ms + s->cfg.send_timeout_ms
                                                   : now + SP_SWEEP_MS;
        if (now < limit) { c->deadline_ms = limit; return; }
        conn_close(s, c);
        return;
    }
    switch (c->state) {
    case C_HEAD:
        if (c->pos == c->in_len || !c->head_started_ms) {
            /* Idle: a keep-alive connection between requests, or a new one still silent (its
             * header timeout). With the keep-alive timeout off (0) an idle keep-alive
             * connection stays, unless the server drains. */
            if (c->req.serial && s->cfg.keepalive_timeout_ms <= 0 && !s->draining) c->deadline_ms = 0;
            else conn_close(s, c);
        } else if (c->proxy_wait) {
            conn_close(s, c);        /* a PROXY preamble unfinished: unanswered, as a bad one */
        } else {
            conn_error(s, c, 408);   /* slowloris */
        }
        break;
    case C_BODY:
        conn_error(s, c, 408);   /* a small body that stalled before the app got it */
        break;
    case C_LINGER:
        conn_close(s, c);
        break;
    case C_BUSY:
        /* Only set while output is stuck: a client that stopped reading. */
        if (pending(c) && s->cfg.send_timeout_ms > 0 && now - c->send_progress_ms >= s->cfg.send_timeout_ms)
            conn_kill(s, c);
        else c->deadline_ms = 0;
        break;
    default:
        c->deadline_ms = 0;
    }
}

void conn_drain(sp_server *s, sp_conn *c) {
    /* A response whose head already promised keep-alive keeps the promise: closing after it would
     * race the client's next request (a reset it cannot retry safely). That next request is then
     * answered with Connection: close (try_parse sees s->draining). */
    if (!c->started) c->keep_alive = 0;
    if (c->state == C_HEAD && c->pos == c->in_len && (!pending(c) || c->corked)) {
        /* Idle keep-alive (a held-back response leaves before the next poll): closing now would
         * race a request the client may be sending; its next request is answered (with
         * Connection: close) if it comes soon, else we close. */
        int64_t d = sp_now_ms() + SP_DRAIN_IDLE_MS;
        if (!c->deadline_ms || c->deadline_ms > d) c->deadline_ms = d;
    }
    (void)s;
}

/* ---- responses ----------------------------------------------------------------------------- */

/* Writes v in the given base (10 or 16) at dst; returns the length. snprintf costs more than the
 * rest of a small response's head on the hot path. */
static size_t fmt_u64(char *dst, uint64_t v, unsigned base) {
    static const char digits[] = "0123456789abcdef";
    char tmp[24];
    size_t n = 0;
    do { tmp[n++] = digits[v % base]; v /= base; } while (v);
    for (size_t i = 0; i < n; i++) dst[i] = tmp[n - 1 - i];
    return n;
}

/* "Content-Length: N\r\n" into dst (>= 40 bytes); returns the length. */
static size_t fmt_content_length(char *dst, int64_t v) {
    memcpy(dst, "Content-Length: ", 16);
    size_t n = 16 + fmt_u64(dst + 16, (uint64_t)v, 10);
    dst[n++] = '\r';
    dst[n++] = '\n';
    return n;
}

/* RFC 9110 5.6.2 tchar, as a table: names are checked byte by byte on every response. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* Case-insensitive compare of a[0..al) with b (length bl), lowercase letters and "-" only:
 * OR-ing 0x20 folds case and maps nothing else onto those (a is a validated token). */
static int ieq_n(const char *a, size_t al, const char *b, size_t bl) {
    if (al != bl) return 0;
    for (size_t i = 0; i < al; i++)
        if ((a[i] | 0x20) != b[i]) return 0;   /* b is lowercase letters and '-' */
    return 1;
}
#define ieq(a, al, lit) ieq_n((a), (al), (lit), sizeof(lit) - 1)

static int contains_token(const char *v, size_t n, const char *tok) {
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++) {
        if ((i == 0 || v[i - 1] == ',' || v[i - 1] == ' ') && ieq_n(v + i, tl, tok, tl) &&
            (i + tl == n || v[i + tl] == ',' || v[i + tl] == ' '))
            return 1;
    }
    return 0;
}

/* Validates the packed "Name\0value\0..." list h and writes its lines to out. Returns 0, -EINVAL
 * (bad name or value, hop-by-hop field, conflicting Content-Length) or -ENOSPC. A response with
 * status 204 carries no Content-Length (RFC 9110 8.6): the app's is checked, then left out. */
static int format_app_headers(const char *h, size_t hlen, char *out, size_t cap, app_headers *ah,
                              int status) {
    size_t n = 0, i = 0;
    ah->content_length = -1;
    ah->has_date = ah->has_server = ah->close = 0;
#define PUT(p, l) do { size_t _l = (l); if (n + _l > cap) return -ENOSPC; memcpy(out + n, (p), _l); n += _l; } while (0)
    while (i < hlen) {
        const char *name = h + i;
        const char *z = memchr(name, 0, hlen - i);
        if (!z) return -EINVAL;
        size_t nl = (size_t)(z - name);
        i += nl + 1;
        if (i > hlen) return -EINVAL;
        const char *val = h + i;
        const char *z2 = memchr(val, 0, hlen - i);
        size_t vl = z2 ? (size_t)(z2 - val) : hlen - i;
        i += vl + 1;
        if (!nl) return -EINVAL;
        for (size_t k = 0; k < nl; k++) if (!tchar[(unsigned char)name[k]]) return -EINVAL;
        for (size_t k = 0; k < vl; k++) {
            unsigned char ch = (unsigned char)val[k];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -EINVAL;   /* CR/LF injection */
        }
        if (ieq(name, nl, "content-length")) {
            if (!vl || vl > 18) return -EINVAL;
            int64_t v = 0;
            for (size_t k = 0; k < vl; k++) {
                if (val[k] < '0' || val[k] > '9') return -EINVAL;
                v = v * 10 + (val[k] - '0');
            }
            if (ah->content_length >= 0 && ah->content_length != v) return -EINVAL;
            ah->content_length = v;
            if (status == 204) continue;
        } else if (ieq(name, nl, "transfer-encoding") || ieq(name, nl, "keep-alive") ||
                   ieq(name, nl, "upgrade") || ieq(name, nl, "proxy-connection")) {
            return -EINVAL;   /* hop-by-hop: framing is the server's job (PEP 3333) */
        } else if (ieq(name, nl, "connection")) {
            if (contains_token(val, vl, "close")) ah->close = 1;
            continue;         /* we write our own Connection header */
        } else if (ieq(name, nl, "date")) {
            ah->has_date = 1;
        } else if (ieq(name, nl, "server")) {
            ah->has_server = 1;
        }
        PUT(name, nl);
        PUT(": ", 2);
        PUT(val, vl);
        PUT("\r\n", 2);
    }
#undef PUT
    ah->len = n;
    return 0;
}

/* Validates status ("NNN" or "NNN reason", a final status) and writes "HTTP/1.1 status\r\n" to
 * dst. Returns the length and sets *code, or -EINVAL, or -ENOSPC if cap is too small. */
static ssize_t format_status_line(char *dst, size_t cap, const char *status, size_t slen, int *code) {
    if (slen < 3 || slen > 512) return -EINVAL;
    for (int i = 0; i < 3; i++) if (status[i] < '0' || status[i] > '9') return -EINVAL;
    if (slen > 3 && status[3] != ' ') return -EINVAL;
    for (size_t i = 4; i < slen; i++) {
        unsigned char ch = (unsigned char)status[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -EINVAL;
    }
    int v = (status[0] - '0') * 100 + (status[1] - '0') * 10 + (status[2] - '0');
    /* A final status only (RFC 9110 15): a 1xx from the app would leave the client waiting for
     * the real answer, or take the next one for it. */
    if (v < 200 || v > 599) return -EINVAL;
    if (slen + 13 > cap) return -ENOSPC;
    memcpy(dst, "HTTP/1.1 ", 9);
    memcpy(dst + 9, status, slen);
    size_t n = 9 + slen;
    if (slen == 3) dst[n++] = ' ';   /* RFC 9112 4: the SP stays when the reason is empty */
    dst[n++] = '\r';
    dst[n++] = '\n';
    *code = v;
    return (ssize_t)n;
}

/* Ends a head whose status line and app header lines are dst[0..n): Date, Server, framing and
 * Connection, and sets the connection's response state from them. blen >= 0: the whole body is
 * known (the one-crossing answer). Returns the head's length or -ENOSPC. */
static ssize_t end_head(sp_server *s, sp_conn *c, char *dst, size_t n, size_t cap, int code,
                        const app_headers *ah, int64_t blen) {
    c->status = code;
    c->no_body = c->req.head || code == 204 || code == 304;
#define PUT(p, l) do { size_t _l = (l); if (n + _l > cap) return -ENOSPC; memcpy(dst + n, (p), _l); n += _l; } while (0)
    if (ah->close || s->draining || c->close_after) c->keep_alive = 0;
    if (!ah->has_date) {
        const char *date = srv_date(s);   /* first: it sets date_len */
        PUT(date, s->date_len);
    }
    if (!ah->has_server && s->server_line_len) PUT(s->server_line, s->server_line_len);
    int64_t app_cl = ah->content_length;
    char tmp[48];
    if (c->no_body) {
        c->resp_left = 0;
        /* HEAD tells the length GET would send, except for a 204 (RFC 9110 8.6) */
        if (c->req.head && code != 204 && app_cl < 0 && blen > 0) {
            PUT(tmp, fmt_content_length(tmp, blen));
        }
    } else if (app_cl >= 0) {
        c->resp_left = app_cl;
    } else if (blen >= 0) {
        PUT(tmp, fmt_content_length(tmp, blen));
        c->resp_left = blen;
    } else if (c->http11) {
        PUT("Transfer-Encoding: chunked\r\n", 28);   /* length unknown: chunks (RFC 9112 7.1) */
        c->chunked_out = 1;
        c->resp_left = -1;
    } else {
        c->keep_alive = 0;   /* HTTP/1.0 cannot take chunks: the close delimits the body */
        c->resp_left = -1;
    }
    if (!c->keep_alive) PUT("Connection: close\r\n", 19);
    else if (!c->http11) PUT("Connection: keep-alive\r\n", 24);
    PUT("\r\n", 2);
#undef PUT
    c->started = 1;
    return (ssize_t)n;
}

/* Formats the response head into dst. blen >= 0: the whole body is known (respond fast path).
 * Returns the length, -EINVAL for an invalid status/header, -ENOSPC if cap is too small.
 *
 * Apps answer most requests with the same header list, so the last list that validated is kept
 * (input and output, per server, under the lock) and an identical one costs a memcmp and a
 * memcpy instead of a scan of every byte. */
static ssize_t format_head(sp_server *s, sp_conn *c, char *dst, size_t cap, const char *status,
                           size_t slen, const char *h, size_t hlen, int64_t blen) {
    int code;
    ssize_t sl = format_status_line(dst, cap, status, slen, &code);
    if (sl < 0) return sl;
    size_t n = (size_t)sl;
    app_headers ah;
    sp_head_cache *hc = &s->head_cache;
    if (hc->in_len == hlen && hc->out && hc->no_content == (code == 204) &&
        memcmp(hc->in, h, hlen) == 0) {
        ah = hc->ah;
        if (n + ah.len > cap) return -ENOSPC;
        memcpy(dst + n, hc->out, ah.len);
    } else {
        int rc = format_app_headers(h, hlen, dst + n, cap - n, &ah, code);
        if (rc < 0) return rc;
        if (hlen <= SP_HEAD_CACHE_MAX && ah.len <= SP_HEAD_CACHE_MAX * 2) {
            if (!hc->out) hc->out = malloc(SP_HEAD_CACHE_MAX * 3);
            if (hc->out) {
                hc->in = hc->out + SP_HEAD_CACHE_MAX * 2;
                memcpy(hc->in, h, hlen);
                memcpy(hc->out, dst + n, ah.len);
                hc->in_len = hlen;
                hc->no_content = code == 204;
                hc->ah = ah;
            }
        }
    }
    return end_head(s, c, dst, n + ah.len, cap, code, &ah, blen);
}

/* ---- the API Python calls ------------------------------------------------------------------- */

static int finish_locked(sp_server *s, sp_conn *c, int abort);

#define LOCK(s) pthread_mutex_lock(&(s)->mu)
#define UNLOCK(s) pthread_mutex_unlock(&(s)->mu)

/* Every sp_req_* entry point takes the request's code and looks it up under the lock
 * (srv_code_conn: slot, generation, busy), never a pointer Python kept: a code kept past its
 * request (an app's stale write()) then finds nothing and gets -ESTALE, instead of reaching freed
 * memory or a connection that serves someone else now. */

/* sp_req_start with s->mu held. */
static int start_locked(sp_server *s, sp_conn *c, const char *status, size_t slen,
                        const char *headers, size_t hlen) {
    if (c->dead) return -EPIPE;
    if (c->started) return -EALREADY;
    for (size_t cap = 1024;; cap *= 2) {
        if (out_reserve(c, cap) < 0) return -ENOMEM;
        ssize_t n = format_head(s, c, c->out + c->out_len, c->out_cap - c->out_len, status, slen, headers, hlen, -1);
        if (n >= 0) { c->out_len += (size_t)n; return 0; }
        if (n != -ENOSPC || cap > (1u << 24)) return n == -ENOSPC ? -EINVAL : (int)n;
    }
}

int sp_req_start(sp_server *s, int64_t code, const char *status, size_t slen,
                 const char *headers, size_t hlen) {
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = start_locked(s, c, status, slen, headers, hlen);
    UNLOCK(s);
    return rc;
}

/* Queues body bytes; with the lock held. */
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
        size_t hl = fmt_u64(hdr, len, 16);
        hdr[hl++] = '\r';
        hdr[hl++] = '\n';
        iov[n].iov_base = hdr; iov[n++].iov_len = hl;
    }
    iov[n].iov_base = (void *)buf; iov[n++].iov_len = len;
    if (c->chunked_out) { iov[n].iov_base = "\r\n"; iov[n++].iov_len = 2; }
    if (c->resp_left == 0 && s->cfg.cork && c->keep_alive && c->body_done && !c->dead
            && pending(c) + len <= SP_CORK_BYTES) {
        /* The last bytes its Content-Length allows: the response is complete, as a respond()
         * answer is, and small: held back to leave in a burst as those are ("Corking"). */
        int64_t now = s->now_us;
        if (s->ncork && now - s->cork_since_us >= SP_CORK_US) conn_uncork_all(s);
        if (cork_append(s, c, iov, n, now) < 0) { conn_kill(s, c); return -ENOMEM; }
        return (ssize_t)pending(c);
    }
    return conn_sendv(s, c, iov, n);
}

ssize_t sp_req_write(sp_server *s, int64_t code, const char *buf, size_t len) {
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    ssize_t rc = c->started ? body_write(s, c, buf, len) : -EINVAL;
    UNLOCK(s);
    return rc;
}

ssize_t sp_req_flush(sp_server *s, int64_t code) {
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
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
        sp_conn *c = srv_code_conn(s, code);
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
        if ((c = srv_code_conn(s, code)) != NULL) c->writable = 1;
        UNLOCK(s);
    }
}

ssize_t sp_req_sendfile(sp_server *s, int64_t code, int fd, int64_t offset, size_t count) {
    ssize_t rc;
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
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
 * returns with s->mu held; c is busy. may_lend: the caller keeps body alive as sp.h's "Lent
 * bodies" says. */
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
    if (s->cfg.cork && c->keep_alive && c->body_done && n + iov[1].iov_len <= SP_CORK_BYTES) {
        int64_t now = s->now_us;   /* lags by at most the app run that just ended */
        if (s->ncork && now - s->cork_since_us >= SP_CORK_US) conn_uncork_all(s);
        if (cork_append(s, c, iov, niov, now) < 0) { conn_kill(s, c); rc = -ENOMEM; }
    } else {
        ssize_t w = conn_sendv(s, c, iov, niov);
        if (w < 0) rc = (int)w;
    }
    int f = finish_locked(s, c, 0);
    return rc ? rc : f;
}

/* The one-crossing response (sp_req_respond). Called and returns with s->mu held; c is busy.
 * -EINVAL and -EALREADY leave the request unfinished. */
static int respond(sp_server *s, sp_conn *c, const char *status, size_t slen,
                   const char *headers, size_t hlen, const char *body, size_t blen) {
    char head[SP_HEAD_STACK];
    if (c->dead) { finish_locked(s, c, 0); return -EPIPE; }
    if (c->started) return -EALREADY;
    ssize_t n = format_head(s, c, head, sizeof(head), status, slen, headers, hlen, (int64_t)blen);
    if (n == -ENOSPC) {   /* a huge head: take the general path */
        int rc = start_locked(s, c, status, slen, headers, hlen);
        if (rc != -EINVAL) {
            if (rc == 0) {
                ssize_t w = body_write(s, c, body, blen);
                if (w < 0 && w != -EMSGSIZE) rc = (int)w;   /* EMSGSIZE: a bodiless response */
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
    sp_conn *c = srv_code_conn(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = respond(s, c, status, slen, headers, hlen, body, blen);
    UNLOCK(s);
    return rc;
}

sp_request *sp_code_req(sp_server *s, int64_t code) {
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
    UNLOCK(s);
    return c ? &c->req : NULL;
}

/* sp_code_respond with s->mu held. head: "status\0headers" (headers as sp_req_start takes them). */
static int code_respond_locked(sp_server *s, int64_t code, const char *head, size_t hlen,
                               const char *body, size_t blen) {
    const char *nul = memchr(head, '\0', hlen);
    size_t slen = nul ? (size_t)(nul - head) : hlen;
    const char *headers = nul ? nul + 1 : head + hlen;
    sp_conn *c = srv_code_conn(s, code);
    return c ? respond(s, c, head, slen, headers, hlen - slen - (nul ? 1 : 0), body, blen) : -ESTALE;
}

void sp_server_flush(sp_server *s) {
    LOCK(s);
    conn_uncork_all(s);
    UNLOCK(s);
}

int sp_code_respond(sp_server *s, int64_t code, const char *head, size_t hlen,
                    const char *body, size_t blen) {
    LOCK(s);
    int rc = code_respond_locked(s, code, head, hlen, body, blen);
    UNLOCK(s);
    return rc;
}

int64_t sp_code_answer(sp_server *s, int64_t code, const char *head, size_t hlen,
                       const char *body, size_t blen) {
    LOCK(s);   /* one lock for both halves: the answer and the next request */
    int rc = code_respond_locked(s, code, head, hlen, body, blen);
    if (!s->cfg.chain || rc == -ESTALE || rc == -EALREADY || rc == -EINVAL) { UNLOCK(s); return rc; }
    /* Only a queued request: with none, the caller's sp_poll_one() polls, as this would, but
     * it may wait (without the GIL). A poll that found nothing here would be a wasted call. */
    if (!s->nready) { UNLOCK(s); return 0; }
    int64_t next = srv_take_next_locked(s);
    if (!next) {
        sp_event ev;
        int n = srv_poll_locked(s, &ev, 1, 0);
        next = n > 0 && ev.kind == SP_EV_REQUEST ? ev.code : 0;
    }
    UNLOCK(s);
    return next;
}

/* Skips what is left of the request body if it is all buffered. Returns 1 when the body is done. */
static int skip_body(sp_server *s, sp_conn *c) {
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
        c->state = C_HEAD;   /* not C_BUSY any more: conn_close may free it */
        conn_close(s, c);
        goto out;
    }
    if (c->chunked_out) {
        struct iovec iov = { "0\r\n\r\n", 5 };
        if (conn_sendv(s, c, &iov, 1) < 0) { c->state = C_HEAD; conn_close(s, c); rc = -EPIPE; goto out; }
    } else if (pending(c) && !c->corked) {
        /* The response's last bytes leave now. A head with no body after it (an empty
         * iterable, HEAD, 204, 304) was only formatted by sp_req_start: with an edge-triggered
         * backend no write event would ever come for it, and the client would wait forever. */
        if (conn_flush(s, c) < 0) { c->state = C_HEAD; conn_close(s, c); rc = -EPIPE; goto out; }
    }
    if (c->resp_left > 0) c->keep_alive = 0;   /* the app sent less than its Content-Length */
    if (!skip_body(s, c)) c->keep_alive = 0;   /* unread body still on the wire */
    c->state = C_HEAD;
    c->started = 0;
    c->req.serial++;
    if (!c->keep_alive) {
        if (c->corked) {   /* the lingering close flushes nothing itself: send it now */
            uncork_forget(s, c);
            if (conn_flush(s, c) < 0) goto out;
        }
        /* The lingering close (half-close, then read until the client's FIN) keeps a reset
         * from destroying the response when the client may still be sending (RFC 9112, 9.6).
         * A client that announced this request as its last, and whose bytes have all been
         * read, sends nothing more: its connection is closed at once, as nginx's heuristic
         * does, which saves a shutdown, a poll turn and a read per Connection: close request. */
        int quiet = c->peer_closed || c->client_close;
        if (c->pos < c->in_len || !c->body_done || !quiet || pending(c)) {
            start_linger(s, c);   /* half-close; let the client read the response */
        } else {
            conn_close(s, c);
        }
        goto out;
    }
    c->deadline_ms = s->draining ? now / 1000 + SP_DRAIN_IDLE_MS
                                 : deadline_after(now / 1000, s->cfg.keepalive_timeout_ms);
    /* Pipelining: the next head may already be buffered; start it unless output is backed up. */
    if (pending_own(c) <= SP_PIPELINE_OUT_MAX) {
        int p = try_parse(s, c);
        if (p == 0 && c->readable) {
            conn_read_head(s, c);   /* may close c */
        } else if (p == 0) {
            if (c->pos == c->in_len) release_in(s, c);
            srv_conn_interest(s, c);   /* level-triggered backends: reading again */
        }
    } else {
        srv_conn_interest(s, c);
    }
out:
    return rc;
}

int sp_req_finish(sp_server *s, int64_t code, int abort) {
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = finish_locked(s, c, abort);
    UNLOCK(s);
    return rc;
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
        c->in = srv_buf_get(s);
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
    sp_conn *c = srv_code_conn(s, code);
    ssize_t rc = c ? peek_locked(c, data, n) : -ESTALE;
    UNLOCK(s);
    return rc;
}

ssize_t sp_req_read(sp_server *s, int64_t code, char *buf, size_t n) {
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    ssize_t rc = body_read(s, c, buf, n);
    UNLOCK(s);
    return rc;
}

ssize_t sp_req_read_wait(sp_server *s, int64_t code, char *buf, size_t n, int timeout_ms) {
    for (;;) {
        LOCK(s);
        sp_conn *c = srv_code_conn(s, code);
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

int sp_req_wait(sp_server *s, int64_t code, int mask, int64_t token) {
    LOCK(s);
    sp_conn *c = srv_code_conn(s, code);
    if (!c) { UNLOCK(s); return -ESTALE; }
    int rc = 0;
    if (c->dead || c->peer_closed || ((mask & SP_READ) && c->readable) || ((mask & SP_WRITE) && c->writable)) {
        c->wait_mask = 0;
        rc = srv_fd_event(s, c->h.fd, mask, token);   /* can progress (or fail) now */
    } else {
        c->wait_mask = mask;
        c->wait_token = token;
    }
    UNLOCK(s);
    return rc;
}
