/* loop.h -- the loop part's internal header: the server struct, and what the connections above it
 * (csrc/conn/) may call of the loop. Not part of the API: Python sees only sp.h.
 *
 * The loop is the lower layer: it calls no function of conn/ by name, only the sp_conn_ops table
 * that sp_server_new gives it (loop.c, "Layers"). The server struct holds the connections' fields
 * too, so that the server stays one allocation; the loop treats them as opaque (sp_conn is an
 * incomplete type here) except the counters it reads to plan a poll turn (nconns, nready, ncork,
 * cork_since_us, graveyard), which conn/ keeps. */
#ifndef SP_LOOP_H
#define SP_LOOP_H

#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include "sp.h"

#define SP_SWEEP_MS 250             /* timeout sweep period: timeouts are exact to this */
#define SP_HANDOFF_US 1000          /* thread mode: work waits this long before a second thread
                                       takes it, so a fast app keeps one thread and no GIL fight */
#define SP_WATCH_KEEP_US 10000     /* thread mode: a follower keeps timing the hand-off through
                                       the poller's turns while work was taken this recently */
#define SP_WATCH_NAP_MAX_US 8000   /* thread mode: the watcher's nap, SP_HANDOFF_US at first,
                                       doubles up to this while the busy thread keeps taking work */
#define SP_EMFILE_PAUSE_MS 100      /* accept pause after running out of descriptors */
#define SP_POLL_EVERY_US 1000       /* while work is queued, still poll this often: a connection
                                       that keeps re-queuing itself (pipelining) must not starve
                                       the others' I/O */
#define SP_CORK_MAX 32              /* small responses held back to leave in one burst (see */
#define SP_CORK_US 1000             /* conn/output.c, "Corking"): at most this many, this long
                                       (the poll cadence above: a poll sends them too) */

/* Whether the backend loop.c compiles (it picks one from the same macros) is edge-triggered
 * (backend.h): the connections then register read|write once and keep readiness in flags. */
#if defined(SP_FORCE_POLL)
#define LOOP_EDGE 0
#elif defined(SP_FORCE_KQUEUE) || defined(__linux__) || defined(__APPLE__) || defined(__FreeBSD__) || \
    defined(__OpenBSD__) || defined(__NetBSD__) || defined(__DragonFly__)
#define LOOP_EDGE 1
#else
#define LOOP_EDGE 0
#endif

enum { K_LISTENER = 1, K_CONN, K_WATCH, K_WAKE, K_TICK };

typedef struct sp_handle { int kind; int fd; } sp_handle;

typedef struct sp_conn sp_conn;        /* conn/conn.h */

typedef struct sp_watch_ent { sp_handle h; int64_t token; int mask; int registered; } sp_watch_ent;

typedef struct sp_listener {
    sp_handle h;
    int index;
    int registered;
    int nodelay;                     /* accepted sockets inherit TCP_NODELAY from it (Linux) */
} sp_listener;

struct be_state;

/* What the loop asks of the connections (conn/server.c fills it): the one way the loop reaches up. */
typedef struct sp_conn_ops {
    /* A connection accepted on listener index `listener`: the handle to register, or NULL (the
     * loop closes fd). */
    sp_handle *(*accept)(sp_server *s, int fd, int listener, const struct sockaddr *sa, int salen);
    /* Readiness (BE_* mask) of a K_CONN handle; may close it. */
    void (*event)(sp_server *s, sp_handle *h, int mask);
    /* Closes a connection the loop could not register. */
    void (*close)(sp_server *s, sp_handle *h);
    /* Every connection whose deadline is due at now_ms gets its timeout. */
    void (*sweep)(sp_server *s, int64_t now_ms);
    /* Hands out up to max queued requests (s->nready > 0) as SP_EV_REQUEST events: the count. */
    int (*take)(sp_server *s, sp_event *out, int max, int64_t now_us);
    /* Sends every held-back response (s->ncork > 0). */
    void (*flush)(sp_server *s);
    /* Frees what was closed while a poll was in flight (s->graveyard), once it is dispatched. */
    void (*reap)(sp_server *s);
} sp_conn_ops;

#define SP_HEAD_CACHE_MAX 1024      /* app header lists up to this are remembered (conn/head.c) */
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
    const sp_conn_ops *ops;          /* the connections above (conn/server.c) */
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
    int watching;                    /* a follower times the hand-off (loop.c) */
    int watch_called;                /* an untimed waiter was signalled to take the watch and
                                        has not woken yet (loop.c, call_watcher) */
    int64_t vacated_us;
    int64_t watch_nap_us;            /* the watcher's nap (watch_unlocked) */
    int64_t now_us;                  /* the loop clock: read by each poll turn and each finished
                                        request, for stamps that tolerate that lag (queueing,
                                        head start, corking) and cost no clock read */
    int64_t last_poll_us;            /* when a poll turn last ran */
    unsigned wake_gen;

    /* the flusher (flusher.c), when the caller runs one */
    pthread_cond_t flush_cv;
    int flusher_idle;                /* it waits on flush_cv for a burst to begin */
    int flusher_stop;                /* sp_server_flusher_stop() was called */

    int64_t next_sweep_ms;           /* a multiple of SP_SWEEP_MS (loop.c, "Ticks") */
    sp_handle tick;                  /* the ticking timer (a timerfd; fd -1: none, timed waits) */
    int ticking;                     /* it is armed */
    char date[40];                   /* "Date: ...\r\n" cached per second (conn_date) */
    size_t date_len;
    int64_t date_sec;
    char server_line[128]; size_t server_line_len;

    sp_head_cache head_cache;        /* the last app header list that validated (conn/head.c) */

    sp_conn **slots; int slots_cap;  /* open connections by slot (request codes name them) */
    unsigned conn_gen;               /* the next connection's generation */
    int *slot_free; int nslot_free;  /* free slot numbers below slots_cap, a stack */
    sp_stats st;
};

/* time */
/* The monotonic clock in milliseconds. */
int64_t sp_now_ms(void);
/* The monotonic clock in microseconds. */
int64_t sp_now_us(void);

/* ---- flusher.c, for conn/ --------------------------------------------------------------------- */

/* A burst of held-back responses begins (the first is held), with s->mu held: a sleeping flusher
 * wakes to time it. */
static inline void loop_corked(sp_server *s) {
    if (s->flusher_idle) { s->flusher_idle = 0; pthread_cond_signal(&s->flush_cv); }
}

/* ---- loop.c, for conn/ ------------------------------------------------------------------------- */

/* Sets up the loop's part of s (s->cfg set): mutex, backend, wake pipe; 0 or -errno (then
 * nothing is left to free). */
int loop_init(sp_server *s, const sp_conn_ops *ops);
/* Frees the loop's part of s, after every connection is closed. */
void loop_fini(sp_server *s);
/* Level-triggered backends only (LOOP_EDGE 0): the BE_* events now wanted for a connection's handle. */
void loop_interest(sp_server *s, sp_handle *h, int mask);
/* Deregisters fd before the connection closes it. */
void loop_forget(sp_server *s, int fd);
/* Queues an SP_EV_FD event for Python (green-mode waits): 0 or -ENOMEM. */
int loop_fd_event(sp_server *s, int fd, int mask, int64_t token);
/* A connection closed: accepting resumes if it had stopped at max_connections. */
void loop_conn_closed(sp_server *s);
/* Stops accepting for good (s->draining); the caller drains the connections. */
void loop_stop_accepting(sp_server *s);
/* sp_poll with s->mu held (it is released while waiting in the backend); max > 0. */
int loop_poll_locked(sp_server *s, sp_event *out, int max, int timeout_ms);
/* The common case of a 1-request poll, with s->mu held: the next queued request's code, or 0
 * (then call loop_poll_locked). */
int64_t loop_take_next_locked(sp_server *s);
/* Whether a thread that just finished a request may take the next one before it lets go of the
 * caller's lock (sp_code_answer: the GIL is kept from one request to the next), with s->mu held:
 * a request is queued (with none, the caller's own poll, without the GIL, is as good and may
 * wait) and no other thread holds one (s->busy counts this one). A thread that took one (an app
 * slower than SP_HANDOFF_US lets a follower step in) waits for the GIL, and while this thread
 * goes on from request to request it gets it only at CPython's switch interval, 5 ms at a time:
 * Django's and Flask's p99 went from ~7 ms to 17-30 ms when their responses began to come this
 * way. The caller polls instead, which lets go of the GIL, and that thread runs. */
static inline int loop_may_chain_locked(const sp_server *s) { return s->nready && s->busy <= 1; }

#endif
