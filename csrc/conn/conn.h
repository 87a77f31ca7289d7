/* conn.h -- the connection part's internal header: what its files (conn.c, input.c, output.c,
 * head.c, body.c, api.c) call of one another. Not part of the API: Python sees only sp.h. */
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

#define SP_OUT_MIN 4096
#define SP_HEAD_STACK 8192          /* respond fast path: response heads up to this stay on the stack */
#define SP_HEAD_TAIL_MAX 512        /* end_head's lines at most: Date, Server (128), framing, Connection */
#define SP_PIPELINE_OUT_MAX 65536   /* don't start the next pipelined request past this much unsent */
#define SP_DRAIN_IDLE_MS 1000       /* draining: idle keep-alive connections get this long */

#define LOCK(s) pthread_mutex_lock(&(s)->mu)
#define UNLOCK(s) pthread_mutex_unlock(&(s)->mu)

/* The deadline timeout_ms after from_ms. Every configured timeout means "off" at 0 (sp.h,
 * sp_config): no deadline then, the 0 the sweep skips. */
static inline int64_t deadline_after(int64_t from_ms, int timeout_ms) {
    return timeout_ms > 0 ? from_ms + timeout_ms : 0;
}

/* Bytes still to send. */
static inline size_t pending(const sp_conn *c) { return c->out_len - c->out_off; }
/* The part in our own memory: what backpressure counts (a lent body leaves with the next burst). */
static inline size_t pending_own(const sp_conn *c) { return c->out_len - c->out_off; }

/* ---- conn.c: lifecycle, events, timeouts, errors ---------------------------------------------- */

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
/* Appends iov to the output and holds the connection back for a burst: 0, or -ENOMEM (nothing
 * queued). */
int conn_cork_append(sp_server *s, sp_conn *c, const struct iovec *iov, int n, int64_t now_us);
/* Takes c off the held-back list; its output stays queued. */
void conn_uncork_forget(sp_server *s, sp_conn *c);

/* ---- head.c: response heads ---------------------------------------------------------------- */

/* Writes v in base 10 or 16 at dst (room for 20 digits): the length. */
size_t conn_fmt_u64(char *dst, uint64_t v, unsigned base);
/* Formats the whole response head into dst and sets c's response state from it (blen >= 0: the
 * whole body is known): the length, -EINVAL (bad status or header) or -ENOSPC (cap too small). */
ssize_t conn_format_head(sp_server *s, sp_conn *c, char *dst, size_t cap, const char *status,
                         size_t slen, const char *h, size_t hlen, int64_t blen);

/* ---- body.c: request bodies ---------------------------------------------------------------- */

/* Skips what is left of the request body if it is all buffered: 1 when the body is done. */
int conn_skip_body(sp_server *s, sp_conn *c);

#endif
