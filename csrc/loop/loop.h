/* loop.h -- private structures shared by the loop (loop.c) and the connection (conn/) state
 * machine). Not part of the API: Python sees only sp.h. */
#ifndef SP_CORE_H
#define SP_CORE_H

#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include "sp.h"

#define SP_HEADERS_MAX 128          /* parser array; the configured limit is enforced below it */
#define SP_IN_CHUNK (16384 + 4096)  /* read buffer: one allocation, and one recv, serve a head of
                                       up to 4 KiB with a prebuffered body (SP_PREBUFFER_MAX) */
#define SP_POOL_MAX 256             /* idle read buffers kept for reuse per server */
#define SP_LINGER_MS 2000           /* lingering close after an error: let the client read it */
#define SP_LINGER_DISCARD (256 * 1024)
#define SP_SWEEP_MS 250             /* timeout sweep period: timeouts are exact to this */
#define SP_HANDOFF_US 1000          /* thread mode: work waits this long before a second thread
                                       takes it, so a fast app keeps one thread and no GIL fight */
#define SP_WATCH_KEEP_US 10000     /* thread mode: a follower keeps timing the hand-off through
                                       the poller's turns while work was taken this recently */
#define SP_EMFILE_PAUSE_MS 100      /* accept pause after running out of descriptors */
#define SP_POLL_EVERY_US 1000       /* while work is queued, still poll this often: a connection
                                       that keeps re-queuing itself (pipelining) must not starve
                                       the others' I/O */
#define SP_CORK_MAX 32              /* small responses held back to leave in one burst (see */
#define SP_CORK_US 200              /* conn.c, "Corking"): at most this many, at most this long */
#define SP_CORK_BYTES 16384         /* responses up to this size (head + body) are held */
#define SP_REPEAT_MAX 1024           /* request heads up to this are remembered per connection
                                       so that a repeat skips parsing (conn.c, remember_head) */
#define SP_PREBUFFER_MAX 16384      /* Content-Length bodies up to this are read before the app
                                       runs (as uWSGI's post-buffering): a client trickling a
                                       form post then holds a connection, not an app thread */

enum { K_LISTENER = 1, K_CONN, K_WATCH, K_WAKE };

typedef struct sp_handle { int kind; int fd; } sp_handle;

/* Connection states (see conn.c's theory of operation). */
enum {
    C_HEAD = 1,     /* waiting for (the rest of) a request head */
    C_BODY,         /* head parsed, a small body still arriving: the loop reads it first */
    C_READY,        /* head parsed (and a small body read), queued for Python */
    C_BUSY,         /* Python owns it: the app runs */
    C_LINGER,       /* error answered; half-closed, discarding input until EOF or deadline */
};

typedef struct sp_conn {
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
    char *rep; size_t rep_len, rep_cap;   /* the last head, if repeated (conn.c, remember_head) */
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
} sp_conn;

typedef struct sp_watch_ent { sp_handle h; int64_t token; int mask; int registered; } sp_watch_ent;

typedef struct sp_listener {
    sp_handle h;
    int index;
    int registered;
    int nodelay;                     /* accepted sockets inherit TCP_NODELAY from it (Linux) */
} sp_listener;

struct be_state;

#define SP_HEAD_CACHE_MAX 1024      /* app header lists up to this are remembered (conn.c) */
/* What the app's header list comes to: its lines as we send them, and what they say. */
typedef struct app_headers {
    size_t len;                      /* bytes of "Name: value\r\n" lines */
    int64_t content_length;          /* -1 when absent */
    unsigned has_date:1, has_server:1, close:1;
} app_headers;
typedef struct sp_head_cache {
    char *out;                       /* one allocation: the formatted lines, then the input */
    char *in; size_t in_len;
    int no_content;                  /* formatted for a 204 (format_app_headers) */
    app_headers ah;
} sp_head_cache;

struct sp_server {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sp_config cfg;
    struct be_state *be;
    sp_handle wake;                  /* read end of the wakeup pipe */
    int wake_w;
    sp_listener *listeners; int nlisteners;
    int accepting;                   /* listeners registered with the backend */
    int64_t accept_resume_ms;        /* EMFILE pause */
    int early_misses;                /* early reads after accept that found nothing, in a row */
    uint64_t head_reads;             /* recv calls that brought head bytes (early-read hits) */
    int draining;
    uint64_t handed_out;             /* requests given to the app (cfg.max_requests) */

    sp_conn *conns;                  /* all connections */
    sp_conn *graveyard;              /* closed while a poll was in flight: freed after its dispatch */
    int nconns;
    sp_conn *q_head, *q_tail;        /* ready queue */
    int nready;
    sp_event *fdq; int fdq_len, fdq_cap;   /* fd events waiting for a taker */
    sp_conn *cork[SP_CORK_MAX]; int ncork; /* connections with a held-back response, in order */
    int64_t cork_since_us;                 /* when the oldest of them was held */
    char *cork_bufs[SP_CORK_MAX]; int ncork_bufs;   /* idle SP_CORK_BYTES output buffers */

    sp_watch_ent **watch; int watch_cap;

    char **pool; int npool;          /* idle SP_IN_CHUNK buffers */

    /* leader/follower */
    int polling, waiters, untimed_waiters, busy;
    int watching;                    /* a follower times the hand-off (server.c) */
    int64_t vacated_us;
    int64_t now_us;                  /* the loop clock: read by each poll turn and each finished
                                        request, for stamps that tolerate that lag (queueing,
                                        head start, corking) and cost no clock read */
    int64_t last_poll_us;            /* when a poll turn last ran */
    unsigned wake_gen;

    int64_t next_sweep_ms;
    char date[40];                   /* "Date: ...\r\n" cached per second (srv_date) */
    size_t date_len;
    int64_t date_sec;
    char server_line[128]; size_t server_line_len;

    sp_head_cache head_cache;        /* the last app header list that validated (conn.c) */

    sp_conn **slots; int slots_cap;  /* open connections by slot (request codes name them) */
    unsigned conn_gen;               /* the next connection's generation */
    int *slot_free; int nslot_free;  /* free slot numbers below slots_cap, a stack */
    sp_stats st;
};

/* time */
int64_t sp_now_ms(void);
int64_t sp_now_us(void);

/* server.c, for conn.c */
void srv_conn_interest(sp_server *s, sp_conn *c);
void srv_conn_forget(sp_server *s, sp_conn *c);   /* before close(fd) */
void srv_enqueue(sp_server *s, sp_conn *c);
int srv_fd_event(sp_server *s, int fd, int mask, int64_t token);
char *srv_buf_get(sp_server *s);
void srv_buf_put(sp_server *s, char *buf);
int srv_slot_take(sp_server *s, sp_conn *c);      /* 0 or -ENOMEM */
void srv_slot_release(sp_server *s, sp_conn *c);
void srv_slot_freed(sp_server *s);                 /* after a close: accepting may resume */
sp_conn *srv_code_conn(sp_server *s, int64_t code);   /* the busy connection of a code, or NULL */
const char *srv_date(sp_server *s);
/* sp_poll with s->mu held (it is released while waiting in the backend); max > 0. */
int srv_poll_locked(sp_server *s, sp_event *out, int max, int timeout_ms);
int64_t srv_take_next_locked(sp_server *s);   /* the common case of a 1-request poll; 0: poll */

/* conn.c, for server.c */
sp_conn *conn_new(sp_server *s, int fd, int listener, const struct sockaddr *sa, int salen);
void conn_on_event(sp_server *s, sp_conn *c, int mask);
void conn_close(sp_server *s, sp_conn *c);
void conn_timeout(sp_server *s, sp_conn *c, int64_t now);
void conn_drain(sp_server *s, sp_conn *c);
void conn_uncork_all(sp_server *s);

#endif
