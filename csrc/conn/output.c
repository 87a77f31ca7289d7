/* output.c -- the output queue: writes, what the socket would not take, and corking. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "conn.h"
#include "loop/sysio.h"

/* ---- output ------------------------------------------------------------------------------------ */

int conn_out_reserve(sp_conn *c, size_t n) {
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
    if (conn_out_reserve(c, n) < 0) return -ENOMEM;
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

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
ssize_t conn_flush_at(sp_server *s, sp_conn *c, int64_t now_ms) {
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
    conn_interest(s, c);
    return (ssize_t)pending(c);
}

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
 * which flushes, once that request is SP_HANDOFF_US old and the watcher next looks: loop.c,
 * watch_unlocked). With a single app thread (--threads 1) there is no other: the flusher
 * (loop/flusher.c) sends them when due instead.
 *
 * Why SP_CORK_US is 1 ms, the loop's poll cadence under load (SP_POLL_EVERY_US), and not less:
 * the limit only bites while the worker always has another request queued, that is when it is
 * saturated, and there the wake-ups are what it buys back. A framework view takes ~100 us, so
 * 200 us (the limit until 2026-12-07) let ~2 responses leave together; at 1 ms ~10 do. Measured
 * on Flask under wrk -c50 (bench/kernel_counts.py): the client's wake-ups fell from ~0.5 to ~0.1
 * a request and the server's system time by ~10 us, ~8% of the request (bench/README.md, "Why
 * the code is as it is"). The latency it adds is within the queueing the client sees anyway
 * at saturation (p99 unchanged in bench/run.py); below saturation the queue runs dry and the
 * responses leave then.
 *
 * With one app thread (SP_CORK_BURSTS: green mode, --threads 1), a response that would start a
 * burst no other can join goes at once instead (conn_cork_worth): nothing else is held back, no
 * request is queued and no other is with the app (the one being answered is still counted in
 * flight), so that the next thing the thread does, once it has written the access log line, is
 * poll, which would flush it alone. That is every response of a lightly loaded worker, one
 * request a poll: sent there and then, it is not copied into a cork buffer (~190 instructions a
 * request), and -t 1's flusher is not woken. The bytes are the same; a burst already held keeps
 * growing as it did. Several app threads (SP_CORK_ALWAYS) keep holding them: another thread that
 * takes the poller role while this one still writes the log line would serve the client's next
 * request, and log it, first; held back, the response leaves at the next poll turn, which is
 * after the line most of the time (tests/wsgi/test_handler.py checks the access log's order; sent
 * at once, it failed there about one run in three under load). One app thread writes its lines
 * in order whenever the responses leave.
 *
 * Larger responses go at once (a 64 KiB body held back without a copy, as it once was, measured
 * no different). */

static void cork(sp_server *s, sp_conn *c, int64_t now_us) {
    if (c->corked) return;
    if (!s->ncork) {
        s->cork_since_us = now_us;
        loop_corked(s);
    }
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

/* Takes c off the held-back list (its output stays queued). */
void conn_uncork_forget(sp_server *s, sp_conn *c) {
    if (!c->corked) return;
    c->corked = 0;
    int k = 0;
    for (int i = 0; i < s->ncork; i++)
        if (s->cork[i] != c) s->cork[k++] = s->cork[i];
    s->ncork = k;
}

/* Appends iov to the output and corks the connection. 0, or -ENOMEM (nothing queued). */
int conn_cork_append(sp_server *s, sp_conn *c, const struct iovec *iov, int n, int64_t now_us) {
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
ssize_t conn_sendv(sp_server *s, sp_conn *c, struct iovec *iov, int n) {
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

