/* server.c -- the server as the connections see it: creating and freeing it, the registry of open
 * connections (slots, which request codes name), the ready queue Python takes requests from,
 * the pool of read buffers, draining, and the status views (sp_server_stats, sp_server_busy).
 *
 * Layers: this part sits above the loop (csrc/loop/). It calls the loop through loop.h's
 * functions (registration, wake-ups, fd events, the poll for sp_code_answer); the loop reaches
 * it only through conn_ops below, handed over in sp_server_new. So no function of the loop
 * names one of ours, and every change of a connection's state happens in this part
 * (conn_set_state, conn.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conn.h"

/* ---- buffers and date ----------------------------------------------------------------------- */

char *conn_buf_get(sp_server *s) {
    if (s->npool) return s->pool[--s->npool];
    return malloc(SP_IN_CHUNK);
}

void conn_buf_put(sp_server *s, char *buf) {
    if (!buf) return;
    if (s->npool < SP_POOL_MAX) {
        if (!s->pool) s->pool = malloc(sizeof(char *) * SP_POOL_MAX);
        if (s->pool) { s->pool[s->npool++] = buf; return; }
    }
    free(buf);
}

const char *conn_date(sp_server *s) {
    time_t now = time(NULL);
    if (now != s->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        s->date_len = strftime(s->date, sizeof(s->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        s->date_sec = now;
    }
    return s->date;
}

/* ---- slots (for request codes, sp.h) ---------------------------------------------- */

int conn_slot_take(sp_server *s, sp_conn *c) {
    if (!s->nslot_free) {
        int cap = s->slots_cap ? s->slots_cap * 2 : 256;
        if (cap > SP_SLOTS_MAX) cap = SP_SLOTS_MAX;
        if (cap <= s->slots_cap) return -ENOMEM;
        sp_conn **sl = realloc(s->slots, sizeof(*sl) * (size_t)cap);
        if (!sl) return -ENOMEM;
        s->slots = sl;
        int *fr = realloc(s->slot_free, sizeof(*fr) * (size_t)cap);
        if (!fr) return -ENOMEM;
        s->slot_free = fr;
        for (int i = cap - 1; i >= s->slots_cap; i--) { sl[i] = NULL; fr[s->nslot_free++] = i; }
        s->slots_cap = cap;
    }
    c->slot = s->slot_free[--s->nslot_free];
    s->slots[c->slot] = c;
    return 0;
}

void conn_slot_release(sp_server *s, sp_conn *c) {
    if (c->slot < 0) return;
    s->slots[c->slot] = NULL;
    s->slot_free[s->nslot_free++] = c->slot;
    c->slot = -1;
}

sp_conn *conn_code(sp_server *s, int64_t code) {
    int64_t slot;
    unsigned gen;
    int port = -1;
    if (code <= 0) return NULL;
    if (code & SP_CODE_FULL) {
        slot = (code >> SP_CODE_SLOT_SHIFT) & SP_CODE_SLOT_MASK;
        gen = (unsigned)(code >> SP_CODE_GEN_SHIFT) & SP_CODE_GEN_MASK;
        port = (int)(code & 0xFFFF);
    } else if ((code & ~(int64_t)SP_CODE_REPEAT_MASK) == SP_CODE_REPEAT) {
        slot = code & SP_CODE_SLOT_MASK;
        gen = (unsigned)(code >> SP_CODE_REPEAT_GEN_SHIFT) & SP_CODE_GEN_MASK;
    } else {
        return NULL;
    }
    if (slot >= s->slots_cap) return NULL;
    sp_conn *c = s->slots[slot];
    if (!c || c->state != C_BUSY || c->gen != gen || (port >= 0 && c->port_num != (unsigned)port))
        return NULL;
    return c;
}

/* The code of a request being handed out (sp.h, request codes). */
static int64_t request_code(sp_server *s, sp_conn *c) {
    (void)s;
    /* The same head again on a connection whose last full code said a repeat may follow. */
    if (c->repeat && c->keeps)
        return SP_CODE_REPEAT | (int64_t)c->gen << SP_CODE_REPEAT_GEN_SHIFT | (int64_t)c->slot;
    c->keeps = c->keep_alive && c->rep_len;   /* the head is remembered: a repeat can come */
    return SP_CODE_FULL | (c->keeps ? SP_CODE_KEEP : 0) | (int64_t)c->gen << SP_CODE_GEN_SHIFT |
           (int64_t)c->slot << SP_CODE_SLOT_SHIFT | (int64_t)c->port_num;
}

/* ---- the ready queue -------------------------------------------------------------------------- */

void conn_enqueue(sp_server *s, sp_conn *c) {
    conn_set_state(c, C_READY);
    c->queued = 1;
    c->qnext = NULL;
    c->deadline_ms = 0;
    if (s->q_tail) s->q_tail->qnext = c; else s->q_head = c;
    s->q_tail = c;
    s->nready++;
    conn_interest(s, c);   /* level-triggered backends: stop reading while Python has it */
}

/* Hands out queued requests (the loop's take_ready, when the hand-off rule lets this thread take
 * them): C_BUSY, their codes in out. */
static int conn_take(sp_server *s, sp_event *out, int max, int64_t now_us) {
    int n = 0;
    while (n < max && s->q_head) {
        sp_conn *c = s->q_head;
        s->q_head = c->qnext;
        if (!s->q_head) s->q_tail = NULL;
        s->nready--;
        c->queued = 0;
        conn_set_state(c, C_BUSY);
        c->busy_since_us = now_us;
        s->st.in_flight++;
        if (s->cfg.max_requests && ++s->handed_out >= s->cfg.max_requests && !s->st.retiring) {
            /* --max-requests: the limit is counted here, where requests go to the app, so that
             * no more are taken in than the connections already open bring (each answered
             * with Connection: close); the worker sees retiring and asks for a replacement. */
            s->st.retiring = 1;
            conn_drain_all(s);
        }
        memset(&out[n], 0, sizeof(out[n]));
        out[n].kind = SP_EV_REQUEST;
        out[n].fd = c->h.fd;
        out[n].req = &c->req;
        out[n].code = request_code(s, c);
        n++;
    }
    return n;
}

/* Every connection whose deadline has come gets its timeout (the loop's sweep). */
static void conn_sweep(sp_server *s, int64_t now) {
    sp_conn *c = s->conns;
    while (c) {
        sp_conn *next = c->next;
        if (c->deadline_ms && now >= c->deadline_ms) conn_timeout(s, c, now);
        c = next;
    }
}

/* Frees the connections closed while another thread polled (conn_close), now unreferenced. */
static void conn_reap(sp_server *s) {
    while (s->graveyard) {
        sp_conn *dead = s->graveyard;
        s->graveyard = dead->next;
        free(dead);
    }
}

static sp_handle *ops_accept(sp_server *s, int fd, int listener, const struct sockaddr *sa, int salen) {
    sp_conn *c = conn_new(s, fd, listener, sa, salen);
    return c ? &c->h : NULL;
}

static void ops_close(sp_server *s, sp_handle *h) { conn_close(s, (sp_conn *)h); }

/* What the loop calls of the connections: its only way up (loop.h). */
static const sp_conn_ops conn_ops = {
    .accept = ops_accept,
    .event = conn_on_event,
    .close = ops_close,
    .sweep = conn_sweep,
    .take = conn_take,
    .flush = conn_uncork_all,
    .reap = conn_reap,
};

/* ---- the server ----------------------------------------------------------------------------- */

sp_server *sp_server_new(const sp_config *cfg) {
    sp_server *s = calloc(1, sizeof(*s));
    if (!s) { errno = ENOMEM; return NULL; }
    s->cfg = *cfg;
    if (s->cfg.limits.max_headers > SP_HEADERS_MAX || s->cfg.limits.max_headers == 0)
        s->cfg.limits.max_headers = SP_HEADERS_MAX;
    if (s->cfg.max_connections <= 0 || s->cfg.max_connections > SP_SLOTS_MAX)
        s->cfg.max_connections = SP_SLOTS_MAX;   /* request codes have room for this many */
    s->server_line_len = 0;
    if (cfg->server_header && cfg->server_header[0]) {
        int n = snprintf(s->server_line, sizeof(s->server_line), "Server: %s\r\n", cfg->server_header);
        if (n > 0 && (size_t)n < sizeof(s->server_line)) s->server_line_len = (size_t)n;
    }
    s->cfg.server_header = NULL;   /* not kept: Python owns that memory */
    int rc = loop_init(s, &conn_ops);
    if (rc < 0) {
        free(s);
        errno = -rc;
        return NULL;
    }
    return s;
}

void sp_server_free(sp_server *s) {
    if (!s) return;
    s->polling = 0;
    while (s->conns) conn_close(s, s->conns);
    conn_reap(s);
    for (int i = 0; i < s->npool; i++) free(s->pool[i]);
    for (int i = 0; i < s->ncork_bufs; i++) free(s->cork_bufs[i]);
    free(s->head_cache.out);
    free(s->slots);
    free(s->slot_free);
    free(s->pool);
    loop_fini(s);
    free(s);
}

void conn_drain_all(sp_server *s) {
    loop_stop_accepting(s);
    sp_conn *c = s->conns;
    while (c) {
        sp_conn *next = c->next;
        conn_drain(s, c);
        c = next;
    }
}

int sp_server_drain(sp_server *s) {
    pthread_mutex_lock(&s->mu);
    conn_drain_all(s);
    int n = s->nconns;
    pthread_mutex_unlock(&s->mu);
    sp_server_wakeup(s);
    return n;
}

void sp_server_stats(sp_server *s, sp_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    out->connections = s->nconns;
    int64_t oldest = 0, now = sp_now_ms();
    for (sp_conn *c = s->conns; c; c = c->next)
        if (c->state == C_BUSY && (oldest == 0 || c->busy_since_us / 1000 < oldest)) oldest = c->busy_since_us / 1000;
    out->oldest_busy_ms = oldest ? now - oldest : 0;
    pthread_mutex_unlock(&s->mu);
}

size_t sp_server_busy(sp_server *s, char *out, size_t cap) {
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    int64_t now = sp_now_ms();
    for (sp_conn *c = s->conns; c; c = c->next) {
        if (c->state != C_BUSY || c->envbuf == NULL) continue;
        /* The request's head (sp_head, in envbuf from its parse on: input.c, env_build); read
         * here, never packed into a block, since the app's thread may be reading the head. */
        const sp_head *h = (const sp_head *)(const void *)c->envbuf;
        const char *method = h->req.method, *path = h->path;
        size_t ml = h->req.method_len, pl = h->path_len;
        char age[24];
        int alen = snprintf(age, sizeof(age), "%lld", (long long)(now - c->busy_since_us / 1000));
        size_t need = ml + pl + (size_t)alen + 3;
        if (alen < 0 || n + need > cap) break;
        memcpy(out + n, method, ml); n += ml; out[n++] = 0;
        memcpy(out + n, path, pl); n += pl; out[n++] = 0;
        memcpy(out + n, age, (size_t)alen); n += (size_t)alen; out[n++] = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}
