/* conn.h -- the connection part's internal header: the connection, its states and the moves
 * allowed between them, and what the part's files (server.c, conn.c, input.c, output.c, head.c,
 * body.c, api.c; built as one unit, unit.c) call of one another. It sits on the loop's header
 * (loop/loop.h), never the other way round. Not part of the API: Python sees only sp.h. */
#ifndef SP_CONN_H
#define SP_CONN_H

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "loop/loop.h"
#include "loop/backend.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0   /* macOS: SO_NOSIGPIPE is set on the socket instead */
#endif

#define SP_HEADERS_MAX 128          /* parser array; the configured limit is enforced below it */
#define SP_IN_CHUNK (16384 + 4096)  /* read buffer: one allocation, and one recv, serve a head of
                                       up to 4 KiB with a prebuffered body (SP_PREBUFFER_MAX) */
#define SP_POOL_MAX 256             /* idle read buffers kept for reuse per server */
#define SP_LINGER_MS 2000           /* lingering close after an error: let the client read it */
#define SP_LINGER_DISCARD (256 * 1024)
#define SP_CORK_BYTES 16384         /* responses up to this size (head + body) are held */
#define SP_REPEAT_MAX 1024           /* request heads up to this are remembered per connection
                                       so that a repeat skips parsing (input.c, remember_head) */
#define SP_PREBUFFER_MAX 16384      /* Content-Length bodies up to this are read before the app
                                       runs (as uWSGI's post-buffering): a client trickling a
                                       form post then holds a connection, not an app thread */
#define SP_OUT_MIN 4096
#define SP_HEAD_STACK 8192          /* respond fast path: response heads up to this stay on the stack */
#define SP_HEAD_TAIL_MAX 512        /* end_head's lines at most: Date, Server (128), framing, Connection */
#define SP_PIPELINE_OUT_MAX 65536   /* don't start the next pipelined request past this much unsent */
#define SP_DRAIN_IDLE_MS 1000       /* draining: idle keep-alive connections get this long */

/* Connection states: conn.c's theory of operation draws them; CONN_NEXT below allows the moves. */
enum {
    C_NEW = 0,      /* allocated (calloc), not yet set up */
    C_HEAD,         /* waiting for (the rest of) a request head */
    C_BODY,         /* head parsed, a small body still arriving: read before Python gets it */
    C_READY,        /* head parsed (and a small body read), queued for Python */
    C_BUSY,         /* Python owns it: the app runs */
    C_LINGER,       /* error answered; half-closed, discarding input until EOF or deadline */
    C_NSTATES
};

struct sp_conn {
    sp_handle h;                     /* first: epoll's data.ptr points here */
    sp_request req;                  /* Python's handle: &conn->req */
    sp_server *srv;
    int state;
    struct sp_conn *prev, *next;     /* all connections (sweep list) */
    struct sp_conn *qnext;           /* ready queue */
    int64_t busy_since_us;           /* when Python took it (--timeout, status, duration histogram) */
    int64_t wait_token;              /* green mode: sp_req_wait() */
    int wait_mask;
    int64_t deadline_ms;             /* current timeout, 0 for none */
    int64_t head_started_ms;         /* first byte of the current head */

    /* input */
    char *in; size_t in_cap, in_len, pos;
    size_t last_len;                 /* head bytes already known incomplete */
    char *envbuf; size_t env_cap;
    size_t rep_at, rep_len;           /* the last head, if repeated: envbuf's copy of it
                                         (input.c, remember_head); rep_len 0: none */
    sp_framing rep_f;
    unsigned rep_head:1, rep_minor:1;

    /* request body */
    int64_t body_left;               /* Content-Length bytes not yet given to the app */
    int64_t body_total;              /* chunked: decoded bytes so far, against max_body_size */
    sp_chunked chunk;
    size_t dec_avail;                /* chunked: decoded bytes at in[pos..] */
    int body_done;
    int expect_continue, continue_sent;

    /* output */
    char *out; size_t out_cap, out_len, out_off;
    int started;                     /* head formatted */
    int chunked_out;                 /* framing our body with chunks */
    int no_body;                     /* HEAD, 1xx, 204, 304 */
    int64_t resp_left;               /* app's Content-Length still to send, -1 unknown */
    int status;

    /* flags */
    unsigned http11:1, readable:1, writable:1, peer_closed:1, eof_seen:1, dead:1, keep_alive:1, close_after:1, queued:1, corked:1,
             client_close:1;         /* the request itself was the last (Connection: close, or 1.0) */
    int64_t send_progress_ms;        /* last time output drained some bytes */
    char remote[48];                 /* "a.b.c.d\0": the REMOTE_ADDR value */
    size_t remote_len;
    char port[8];                    /* the REMOTE_PORT value */
    size_t port_len;
    unsigned port_num;               /* the same as a number (0 for Unix sockets): in the code */
    unsigned char proxy_wait;        /* a PROXY preamble must come first (sp_config.proxy_listeners) */
    int slot;                        /* index in srv->slots while open: the code's handle */
    unsigned gen;                    /* generation in request codes (SP_CODE_GEN_MASK bits) */
    unsigned char repeat;            /* this head is the previous one's bytes (try_parse) */
    unsigned char keeps;             /* the last full code carried SP_CODE_KEEP (request_code) */
};

/* The state machine as data: CONN_NEXT[from] has bit `to` set for every move conn.c's diagram
 * draws (tests/test_layers_c.py checks that the two agree). Every change of c->state goes
 * through conn_set_state(), which looks the move up here: one load and a bit test, inline. */
#define CONN_BIT(st) (1u << (st))
static const unsigned char CONN_NEXT[C_NSTATES] = {
    [C_NEW] = CONN_BIT(C_HEAD),
    [C_HEAD] = CONN_BIT(C_BODY) | CONN_BIT(C_READY) | CONN_BIT(C_LINGER),
    [C_BODY] = CONN_BIT(C_READY) | CONN_BIT(C_LINGER),
    [C_READY] = CONN_BIT(C_BUSY),
    [C_BUSY] = CONN_BIT(C_HEAD),
    [C_LINGER] = 0,
};

/* Reports a move CONN_NEXT does not allow: aborts in checked builds (SP_CHECK_STATES: the
 * sanitizer and C test builds), else says so once on stderr and lets the move happen. */
void conn_bad_state(const sp_conn *c, int to);

/* Moves c to state `to`, a move CONN_NEXT allows. */
static inline void conn_set_state(sp_conn *c, int to) {
    if (__builtin_expect(!(CONN_NEXT[c->state] & CONN_BIT(to)), 0)) conn_bad_state(c, to);
    c->state = to;
}

#define LOCK(s) pthread_mutex_lock(&(s)->mu)
#define UNLOCK(s) pthread_mutex_unlock(&(s)->mu)

/* The deadline timeout_ms after from_ms. Every configured timeout means "off" at 0 (sp.h,
 * sp_config): no deadline then, the 0 the sweep skips. */
static inline int64_t deadline_after(int64_t from_ms, int timeout_ms) {
    return timeout_ms > 0 ? from_ms + timeout_ms : 0;
}

/* Bytes still to send. */
static inline size_t pending(const sp_conn *c) { return c->out_len - c->out_off; }

/* What the loop must hear of a connection's wanted events: nothing with an edge-triggered backend
 * (registered once for read|write); a level-triggered one must stop reporting what we ignore.
 * The one rule for the wanted events: read while the loop reads (a head, a small body, a
 * lingering close) or while a green thread waits for body bytes (sp_req_wait: SP_READ in
 * wait_mask); write while output is queued or a green thread waits for room. Whoever changes one
 * of those inputs calls this after; a wait's wake-up clears wait_mask first, so that a readable
 * socket the app has not read yet is not reported again and again. */
static inline void conn_interest(sp_server *s, sp_conn *c) {
#if LOOP_EDGE
    (void)s; (void)c;
#else
    if (c->dead) return;
    int mask = 0;
    if (c->state == C_HEAD || c->state == C_BODY || c->state == C_LINGER || (c->wait_mask & SP_READ))
        mask |= BE_READ;
    if (c->out_len > c->out_off || (c->wait_mask & SP_WRITE)) mask |= BE_WRITE;
    loop_interest(s, &c->h, mask);
#endif
}

/* ---- server.c: the server, its connections by slot, the ready queue, buffers ---------------- */

/* A pooled SP_IN_CHUNK read buffer, or a new one, or NULL. */
char *conn_buf_get(sp_server *s);
/* Gives a buffer from conn_buf_get back to the pool (or frees it); NULL is ignored. */
void conn_buf_put(sp_server *s, char *buf);
/* Gives c a slot (the handle request codes name): 0, or -ENOMEM. */
int conn_slot_take(sp_server *s, sp_conn *c);
/* Frees c's slot, if it has one. */
void conn_slot_release(sp_server *s, sp_conn *c);
/* The busy connection a request code names, or NULL (a stale code). */
sp_conn *conn_code(sp_server *s, int64_t code);
/* Queues c (its head parsed, a small body read) for Python: C_READY. */
void conn_enqueue(sp_server *s, sp_conn *c);
/* Stops accepting and drains every connection (sp_server_drain, --max-requests). */
void conn_drain_all(sp_server *s);
/* "Date: ...\r\n" for now, formatted once a second (its length in s->date_len). */
const char *conn_date(sp_server *s);

/* ---- conn.c: lifecycle, events, timeouts, errors ---------------------------------------------- */

/* A new connection on fd, accepted on listener `listener` from sa: C_HEAD, or NULL (no memory). */
sp_conn *conn_new(sp_server *s, int fd, int listener, const struct sockaddr *sa, int salen);
/* Closes and frees c (kept until the poll in flight is dispatched if another thread polls). */
void conn_close(sp_server *s, sp_conn *c);
/* Readiness (BE_* mask) of c's socket, given its handle (the first member of sp_conn); may close c. */
void conn_on_event(sp_server *s, sp_handle *h, int mask);
/* c's deadline passed at now (ms): the timeout its state has. */
void conn_timeout(sp_server *s, sp_conn *c, int64_t now);
/* The server drains: c finishes what it promised, idle keep-alive gets SP_DRAIN_IDLE_MS. */
void conn_drain(sp_server *s, sp_conn *c);
/* Gives the read buffer back (to the pool if it is a pool buffer) and empties the input. */
void conn_release_in(sp_server *s, sp_conn *c);
/* The connection failed: closed, or, while Python owns it (C_BUSY), shut down and marked dead for
 * sp_req_finish() to free. */
void conn_kill(sp_server *s, sp_conn *c);
/* Half-closes (once the output has gone) and discards input until EOF or SP_LINGER_MS: C_LINGER. */
void conn_linger(sp_server *s, sp_conn *c);
/* Answers with an error status of our own and lingers; not for C_BUSY connections. */
void conn_error(sp_server *s, sp_conn *c, int status);

/* ---- input.c: reading and parsing request heads ---------------------------------------------- */

/* Parses a complete head at in[pos..]: 1 (queued for Python), 0 (needs more bytes, or C_BODY
 * reads a small body first), -1 (answered with an error; c may be closed). */
int conn_try_parse(sp_server *s, sp_conn *c);
/* Packs the request's env block (sp_request.env) from envbuf's copy of its head, if not packed
 * yet; with s->mu held. 0, or -ENOMEM (the copy is untouched). */
int conn_env_block(sp_conn *c);
/* Reads what the socket has and parses, for C_HEAD and C_BODY connections; may close c. */
void conn_read_head(sp_server *s, sp_conn *c);

/* ---- output.c: the output queue and corking ------------------------------------------------- */

/* Makes room for n more bytes of output: 0, or -ENOMEM (nothing changed). */
int conn_out_reserve(sp_conn *c, size_t n);
/* Writes queued output, stamping progress with now_ms (-1: read the clock): the bytes still
 * queued, or -errno (the connection was killed). */
ssize_t conn_flush_at(sp_server *s, sp_conn *c, int64_t now_ms);
/* conn_flush_at with the clock read when bytes leave. */
static inline ssize_t conn_flush(sp_server *s, sp_conn *c) { return conn_flush_at(s, c, -1); }
/* Sends iov after whatever is queued and queues what the socket does not take: the bytes queued
 * afterwards, or -errno (the connection was killed). */
ssize_t conn_sendv(sp_server *s, sp_conn *c, struct iovec *iov, int n);
/* Whether a small complete response answered now is held back ("Corking"): always with
 * SP_CORK_ALWAYS (several app threads), else when it has a burst to join: something is held back
 * already, queued, or still with the app. With s->mu held. */
static inline int conn_cork_worth(const sp_server *s) {
    return s->cfg.cork == SP_CORK_ALWAYS || s->ncork || s->nready || s->st.in_flight > 1;
}
/* Appends iov to the output and holds the connection back for a burst: 0, or -ENOMEM (nothing
 * queued). */
int conn_cork_append(sp_server *s, sp_conn *c, const struct iovec *iov, int n, int64_t now_us);
/* Takes c off the held-back list; its output stays queued. */
void conn_uncork_forget(sp_server *s, sp_conn *c);
/* Sends every held-back response now. */
void conn_uncork_all(sp_server *s);

/* ---- head.c: response heads ---------------------------------------------------------------- */

/* Writes v in base 10 or 16 at dst (room for 20 digits): the length. */
size_t conn_fmt_u64(char *dst, uint64_t v, unsigned base);
/* Formats the whole response head into dst and sets c's response state from it (blen >= 0: the
 * whole body is known): the length, -EINVAL (bad status or header) or -ENOSPC (cap too small).
 * With whole, blen must be the Content-Length the headers declare: else -ERANGE, and c is left
 * untouched (checked before any of its state is set). */
ssize_t conn_format_head(sp_server *s, sp_conn *c, char *dst, size_t cap, const char *status,
                         size_t slen, const char *h, size_t hlen, int64_t blen, int whole);

/* ---- body.c: request bodies ---------------------------------------------------------------- */

/* Skips what is left of the request body if it is all buffered: 1 when the body is done. */
int conn_skip_body(sp_server *s, sp_conn *c);

#endif
