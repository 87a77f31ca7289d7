/* conn.c -- the connection state machine: a connection's life, its events and timeouts, errors and
 * the lingering close. The rest of the connection part: input.c (heads in), output.c (the output
 * queue, corking), head.c (response heads), body.c (request bodies), api.c (what Python calls),
 * server.c (the server, slots, the ready queue); conn.h declares what they share.
 *
 * Theory of operation
 * -------------------
 * Every state and every move between them (conn.h's CONN_NEXT is this list as data, and
 * conn_set_state() refuses any other move; tests/test_layers_c.py checks the two agree):
 *
 *   C_NEW    --conn_new(): accepted---------------------------------------> C_HEAD
 *   C_HEAD   --head parsed, a small body still arriving (try_parse)-------> C_BODY
 *   C_HEAD   --head parsed (try_parse): queued-----------------------------> C_READY
 *   C_BODY   --the small body is in (conn_read_head): queued---------------> C_READY
 *   C_READY  --sp_poll hands it out (conn_take)----------------------------> C_BUSY
 *   C_BUSY   --sp_req_finish(): keep-alive, the next pipelined head-------> C_HEAD
 *   C_HEAD   --bad input, 408, or EOF while a response is still queued----> C_LINGER
 *   C_BODY   --bad input, 408------------------------------------------------> C_LINGER
 *
 * C_LINGER is half-closed, discarding input until EOF, SP_LINGER_MS or SP_LINGER_DISCARD, so that
 * the client reads our answer instead of a reset; it has no way out but conn_close(). conn_close()
 * ends a connection from any state except C_BUSY, which only sp_req_finish() ends (it moves it to
 * C_HEAD first). A connection that finishes with Connection: close goes C_BUSY -> C_HEAD ->
 * C_LINGER, or is closed at once when the client sends nothing more.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "loop/sysio.h"

/* Why the release build lets an illegal move happen: every caller goes on using c as the state it
 * asked for implies, so closing c here would free it under the caller (a use-after-free, worse
 * than the bug reported), and refusing would strand it in a state no code path serves (its fd
 * held until a timeout that state may not have). The checked builds, which the tests run, stop
 * at the first one instead. */
void conn_bad_state(const sp_conn *c, int to) {
#ifdef SP_CHECK_STATES
    fprintf(stderr, "spawning: connection state %d -> %d is not in CONN_NEXT (csrc/conn/conn.h)\n", c->state, to);
    abort();
#else
    static int said;
    if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
        fprintf(stderr, "spawning: connection state %d -> %d is not in CONN_NEXT (csrc/conn/conn.h); "
                "reported once\n", c->state, to);
#endif
}

/* ---- lifecycle ---------------------------------------------------------------------------------- */

sp_conn *conn_new(sp_server *s, int fd, int listener, const struct sockaddr *sa, int salen) {
    (void)salen;
    sp_conn *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    if (conn_slot_take(s, c) < 0) { free(c); return NULL; }
    c->gen = s->conn_gen++ & SP_CODE_GEN_MASK;
    c->h.kind = K_CONN;
    c->h.fd = fd;
    c->srv = s;
    conn_set_state(c, C_HEAD);
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

void conn_release_in(sp_server *s, sp_conn *c) {
    if (c->in && c->in_cap == SP_IN_CHUNK) conn_buf_put(s, c->in); else free(c->in);
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

void conn_close(sp_server *s, sp_conn *c) {
    unqueue(s, c);
    conn_uncork_forget(s, c);
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    loop_forget(s, c->h.fd);
    conn_slot_release(s, c);
    close(c->h.fd);
    conn_release_in(s, c);
    free(c->out);
    free(c->envbuf);
    c->out = c->envbuf = NULL;
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
    loop_conn_closed(s);
    if (s->draining && s->nconns == 0) sp_server_wakeup(s);   /* the worker may exit now */
}

/* The connection failed. If Python owns it, only shut it down: sp_req_finish() frees it. */
void conn_kill(sp_server *s, sp_conn *c) {
    if (c->state == C_BUSY) {
        if (!c->dead) shutdown(c->h.fd, SHUT_RDWR);
        c->dead = 1;
        c->deadline_ms = 0;
        if (c->wait_mask) {   /* wake the green thread waiting on it: it will see the error */
            c->wait_mask = 0;
            loop_fd_event(s, c->h.fd, SP_READ | SP_WRITE, c->wait_token);
        }
        return;
    }
    conn_close(s, c);
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

void conn_linger(sp_server *s, sp_conn *c) {
    conn_set_state(c, C_LINGER);
    /* While the response is still going out, the send timeout governs (see conn_timeout). */
    c->deadline_ms = sp_now_ms() + SP_LINGER_MS;
    c->body_left = SP_LINGER_DISCARD;   /* reused as the discard budget */
    if (!pending(c)) shutdown(c->h.fd, SHUT_WR);
    conn_interest(s, c);
}

/* Answers with an error status of our own and closes gracefully. Not for C_BUSY connections. */
void conn_error(sp_server *s, sp_conn *c, int status) {
    char buf[512];
    const char *why = reason(status);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s%.*s\r\n%s\n",
                     status, why, strlen(why) + 1, conn_date(s), (int)s->server_line_len, s->server_line, why);
    s->st.rejected++;
    s->st.status_class[status / 100]++;
    unqueue(s, c);
    c->in_len = c->pos = 0;
    c->writable = 1;
    struct iovec iov = { buf, (size_t)n };
    if (conn_sendv(s, c, &iov, 1) < 0) return;   /* already closed */
    conn_linger(s, c);
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

void conn_on_event(sp_server *s, sp_handle *h, int mask) {
    sp_conn *c = (sp_conn *)h;   /* the handle is its first member */
    if (mask & BE_ERROR) c->peer_closed = 1;
    if (mask & BE_EOF) c->eof_seen = 1;
    if (mask & BE_WRITE) {
        c->writable = 1;
        if ((c->wait_mask & SP_WRITE) && c->state == C_BUSY) {
            c->wait_mask = 0;
            loop_fd_event(s, c->h.fd, SP_WRITE, c->wait_token);
            conn_interest(s, c);   /* level-triggered backends: the wait is over */
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
                if (c->pos < c->in_len && conn_try_parse(s, c) != 0) return;
                if (c->readable) mask |= BE_READ;
            }
        }
    }
    if (mask & BE_READ) {
        c->readable = 1;
        switch (c->state) {
        case C_HEAD:
        case C_BODY:
            if (pending(c) > SP_PIPELINE_OUT_MAX) return;   /* backpressure: read later */
            conn_read_head(s, c);
            break;
        case C_LINGER:
            linger_read(s, c);
            break;
        case C_BUSY:
        case C_READY:
            if (c->wait_mask & SP_READ) {
                c->wait_mask = 0;
                loop_fd_event(s, c->h.fd, SP_READ, c->wait_token);
                conn_interest(s, c);   /* level-triggered backends: the wait is over */
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
