/* loop.c -- the event loop core: listeners, accept, the poll turn, timers, green-mode fd watchers,
 * and the leader/follower hand-off between threads. It includes the one backend it runs
 * (be_epoll.c, be_kqueue.c or be_poll.c, behind backend.h).
 *
 * Layers
 * ------
 * The loop knows sockets, not connections. It sits below the connection part (csrc/conn/), which
 * calls it by name through loop.h (registration, wake-ups, fd events, the poll), and it reaches
 * the connections only through the sp_conn_ops table sp_server_new hands it: accepted, ready,
 * due (sweep), take the queued requests, flush the held-back responses, free the closed ones. So
 * the dependency runs one way (tests/test_layers_c.py fails on a call or include the other way),
 * a connection's state is the connection part's alone, and the loop compiles without conn.h: it
 * cannot read a connection's fields. The price is an indirect call where a direct one was, a
 * couple of instructions per event.
 *
 * Theory of operation
 * -------------------
 * One sp_server per worker process. Whoever calls sp_poll() and finds nobody polling becomes the
 * poller: it waits in the backend without the mutex (and, through cffi, without the GIL), then,
 * with the mutex, accepts, reads, parses and writes everything that became ready. Parsed requests
 * go to a FIFO ready queue (conn/server.c); sp_poll() hands them out.
 *
 * Thread mode (several threads in sp_poll): a thread that takes work leaves the poller role
 * empty. Another thread takes over the role, or takes queued work, only once no thread has
 * taken work for SP_HANDOFF_US, unless no thread is busy. So a fast app keeps running on one
 * thread with no GIL contention (however long the queue it works through), while a slow or
 * blocking app delays other requests by a few ms at most before a second thread steps in. One
 * waiting thread, the watcher, times that hand-off; the others sleep untimed on a condition
 * variable. Under steady load the watcher keeps its watch, checking back without the mutex for
 * as long as work is being taken, every SP_HANDOFF_US at first and less often while the busy
 * thread keeps up (watch_unlocked); once no work was taken for SP_WATCH_KEEP_US it sleeps untimed
 * too, and a poller that takes work with nobody watching signals one waiter to take the watch.
 * So an idle pool costs nothing and a busy one a wake-up every few ms, which touches no lock the
 * busy thread holds.
 *
 * Green mode: one thread, so the queue and the poll turn are all there is. --threads 1: one app
 * thread, and the flusher (flusher.c), which sends held-back responses while it runs a request.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif

#include "loop.h"
#include "backend.h"
#include "sysio.h"

#if defined(SP_FORCE_POLL)
#include "be_poll.c"
#elif defined(SP_FORCE_KQUEUE)      /* tests: kqueue on Linux through tests/c/kqueue_shim */
#include "be_kqueue.c"
#elif defined(__linux__)
#include "be_epoll.c"
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__) || defined(__DragonFly__)
#include "be_kqueue.c"
#else
#include "be_poll.c"
#endif
#if BE_EDGE != LOOP_EDGE
#error "loop.h's LOOP_EDGE disagrees with the backend chosen here"
#endif

#define SP_ACCEPT_BURST 64   /* accepts per listener event: fairness between listen and serve */
#define SP_EARLY_MISSES 8    /* early reads after accept that found nothing, in a row, before... */
#define SP_EARLY_PROBE 16    /* ...only every this many connections gets one (do_accept) */

/* This thread took work from that server. Read on every request: initial-exec makes it a plain
 * thread-pointer access instead of a __tls_get_addr call (the general model a shared object
 * gets); one pointer fits the static TLS room glibc keeps for modules loaded later. */
#if defined(__linux__) && defined(__GNUC__)
static __thread sp_server *tls_busy_srv __attribute__((tls_model("initial-exec")));
#else
static __thread sp_server *tls_busy_srv;
#endif

int64_t sp_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t sp_now_ms(void) { return sp_now_us() / 1000; }

const int64_t sp_duration_bounds_us[SP_DURATION_BUCKETS - 1] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

const char *sp_backend_name(void) { return be_name(); }

static int set_nonblock_cloexec(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
    int fdfl = fcntl(fd, F_GETFD);
    if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) return -errno;
    return 0;
}

/* Whether this process has forked since it started (or since it was forked itself): a child
 * forked without exec (an app's os.fork(), multiprocessing) holds copies of our sockets, so that
 * close() alone ends nothing for the client (loop_forget). Set and cleared by pthread_atfork
 * handlers, which run in the process that calls fork() and in the new child. */
static volatile int forked;
static void on_fork_parent(void) { forked = 1; }
static void on_fork_child(void) { forked = 0; }
/* Registers the handlers once per process. Not pthread_once: linked against glibc 2.34 or later
 * it needs that version's symbol, and the wheel's manylinux_2_28 tag would not hold. */
static void watch_forks(void) {
    static int registered;
    if (!__atomic_exchange_n(&registered, 1, __ATOMIC_ACQ_REL))
        pthread_atfork(NULL, on_fork_parent, on_fork_child);
}

static void tick_init(sp_server *s);

int loop_init(sp_server *s, const sp_conn_ops *ops) {
    watch_forks();
    s->ops = ops;
    s->now_us = sp_now_us();
    s->watch_nap_us = SP_HANDOFF_US;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->flush_cv, NULL);
    int rc = be_create(&s->be);
    if (rc < 0) goto fail;
    int p[2];
    if (pipe(p) < 0) { rc = -errno; goto fail; }
    set_nonblock_cloexec(p[0]);
    set_nonblock_cloexec(p[1]);
    s->wake.kind = K_WAKE;
    s->wake.fd = p[0];
    s->wake_w = p[1];
    if ((rc = be_add(s->be, p[0], BE_READ, 0, &s->wake)) < 0) {
        close(p[0]);
        close(p[1]);
        goto fail;
    }
    tick_init(s);
    s->accepting = 1;
    return 0;
fail:
    if (s->be) be_free(s->be);
    s->be = NULL;
    pthread_cond_destroy(&s->flush_cv);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    return rc;
}

void loop_fini(sp_server *s) {
    for (int i = 0; i < s->watch_cap; i++) free(s->watch[i]);
    free(s->watch);
    free(s->listeners);
    free(s->fdq);
    close(s->wake.fd);
    close(s->wake_w);
    if (s->tick.fd >= 0) close(s->tick.fd);
    be_free(s->be);
    pthread_cond_destroy(&s->flush_cv);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}

int sp_server_add_listener(sp_server *s, int fd, int index) {
    int rc = set_nonblock_cloexec(fd);
    if (rc < 0) return rc;
    pthread_mutex_lock(&s->mu);
    sp_listener *l = realloc(s->listeners, sizeof(*l) * (size_t)(s->nlisteners + 1));
    if (!l) { pthread_mutex_unlock(&s->mu); return -ENOMEM; }
    /* realloc moved the array: re-register every listener with its new address. */
    for (int i = 0; i < s->nlisteners; i++)
        if (l[i].registered) be_del(s->be, l[i].h.fd), l[i].registered = 0;
    s->listeners = l;
    sp_listener *n = &l[s->nlisteners++];
    n->h.kind = K_LISTENER;
    n->h.fd = fd;
    n->index = index;
    n->registered = 0;
    n->nodelay = 0;
#ifdef __linux__
    /* Linux copies TCP_NODELAY from a listening socket to those it accepts: set here once, it
     * saves a setsockopt per connection. (Fails harmlessly on a Unix socket.) */
    int one = 1;
    n->nodelay = setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0;
#endif
    rc = 0;
    if (s->accepting && !s->draining) {
        for (int i = 0; i < s->nlisteners; i++) {
            int r = be_add(s->be, l[i].h.fd, BE_READ, BE_EXCLUSIVE, &l[i].h);
            if (r < 0) rc = r; else l[i].registered = 1;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (!BE_SEES_CHANGES_LIVE) sp_server_wakeup(s);
    return rc;
}

static void set_accepting(sp_server *s, int on) {
    if (on && s->draining) on = 0;
    if (s->accepting == on) return;
    s->accepting = on;
    for (int i = 0; i < s->nlisteners; i++) {
        sp_listener *l = &s->listeners[i];
        if (on && !l->registered) {
            if (be_add(s->be, l->h.fd, BE_READ, BE_EXCLUSIVE, &l->h) == 0) l->registered = 1;
        } else if (!on && l->registered) {
            be_del(s->be, l->h.fd);
            l->registered = 0;
        }
    }
}

void loop_stop_accepting(sp_server *s) {
    s->draining = 1;
    set_accepting(s, 0);
}

int sp_server_connections(sp_server *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->nconns;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int sp_server_wakeup_fd(sp_server *s) { return s->wake_w; }

void sp_server_wakeup(sp_server *s) {
    char b = 0;
    ssize_t r = write(s->wake_w, &b, 1);   /* EAGAIN: a wake-up is already pending, fine */
    (void)r;
}

/* ---- queues ------------------------------------------------------------------------------------ */

int loop_fd_event(sp_server *s, int fd, int mask, int64_t token) {
    if (s->fdq_len == s->fdq_cap) {
        int cap = s->fdq_cap ? s->fdq_cap * 2 : 64;
        sp_event *q = realloc(s->fdq, sizeof(*q) * (size_t)cap);
        if (!q) return -ENOMEM;
        s->fdq = q;
        s->fdq_cap = cap;
    }
    sp_event *e = &s->fdq[s->fdq_len++];
    memset(e, 0, sizeof(*e));
    e->kind = SP_EV_FD;
    e->fd = fd;
    e->mask = mask;
    e->token = token;
    return 0;
}

/* Moves queued fd events and then requests into out (fd events first: sp.h promises that order
 * for sp_poll_codes). Requests go to a follower only after the hand-off delay (see the theory of
 * operation) unless no thread is busy. */
static int take_ready(sp_server *s, sp_event *out, int max, int64_t now_us, int follower) {
    int n = 0;
    if (s->fdq_len) {
        int k = s->fdq_len < max ? s->fdq_len : max;
        memcpy(out, s->fdq, sizeof(*out) * (size_t)k);
        memmove(s->fdq, s->fdq + k, sizeof(*out) * (size_t)(s->fdq_len - k));
        s->fdq_len -= k;
        n = k;
    }
    /* A follower takes queued work only from threads that took none for SP_HANDOFF_US
     * (stuck in an app): a queue that a busy thread keeps working through is no reason to
     * hand part of it to a second thread, which would only wait for the GIL (up to the
     * interpreter's 5 ms switch interval: that made p99 latencies of 15-25 ms). */
    if (n < max && s->nready && !(follower && s->busy > 0 && now_us - s->vacated_us < SP_HANDOFF_US))
        n += s->ops->take(s, out + n, max - n, now_us);
    return n;
}

/* ---- accept ---------------------------------------------------------------------------------- */

/* Accepts up to SP_ACCEPT_BURST connections; early != 0 reads each at once (sp_server_accept_
 * pending). Returns 1 when the burst ran out with more perhaps waiting, else 0. */
static int do_accept(sp_server *s, sp_listener *l, int early) {
    for (int i = 0; i < SP_ACCEPT_BURST; i++) {
        if (s->nconns >= s->cfg.max_connections) {
            set_accepting(s, 0);   /* resumed by loop_conn_closed when a slot frees */
            return 0;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
#ifdef __linux__
        int fd = sp_accept4(l->h.fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
        int fd = accept(l->h.fd, (struct sockaddr *)&ss, &sl);
        if (fd >= 0 && set_nonblock_cloexec(fd) < 0) { close(fd); continue; }
#endif
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop accepting for a moment instead of spinning on a
                 * level-triggered listener that stays readable. Counted: the worker logs it. */
                set_accepting(s, 0);
                s->accept_resume_ms = sp_now_ms() + SP_EMFILE_PAUSE_MS;
                s->st.accept_pauses++;
            } else if (errno == EINVAL) {
                /* No longer listening: the controller shut the socket down to stop the server
                 * (sockets.py, stop_listening). It stays readable; stop watching it. */
                set_accepting(s, 0);
            }
            return 0;   /* EAGAIN: another process took it, or the queue is empty */
        }
        if (!l->nodelay && (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
#ifdef SO_NOSIGPIPE
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
#endif
        sp_handle *h = s->ops->accept(s, fd, l->index, (struct sockaddr *)&ss, (int)sl);
        if (!h) { close(fd); return 0; }
        /* Edge-triggered: read|write once for good. Level-triggered: only what is wanted now. */
        if (be_add(s->be, fd, BE_EDGE ? BE_READ | BE_WRITE : BE_READ, 0, h) < 0) { s->ops->close(s, h); continue; }
        s->st.accepted++;
        /* A browser's request follows its handshake at once, usually before the accept: read it
         * now rather than after a poll turn. Clients that send only once connect() has returned
         * to them (wrk, pools that connect ahead) leave nothing to read yet, and that recv is
         * then wasted (with Connection: close, one syscall in seven). So after SP_EARLY_MISSES
         * such misses in a row, only every SP_EARLY_PROBE-th connection is read early, to see
         * whether the traffic changed. Skipping is safe: data that came before the registration
         * above is reported by the next poll. (With TCP_DEFER_ACCEPT on the listener, sockets.py,
         * the request has come before the accept and the early read finds it.) */
        if (early || s->early_misses < SP_EARLY_MISSES || s->st.accepted % SP_EARLY_PROBE == 0) {
            uint64_t reads = s->head_reads;
            s->ops->event(s, h, BE_READ);      /* may close and free the connection */
            s->early_misses = s->head_reads != reads ? 0 : s->early_misses + 1;
        }
    }
    return 1;
}

int sp_server_accept_pending(sp_server *s) {
    pthread_mutex_lock(&s->mu);
    uint64_t before = s->st.accepted;
    /* The clock the new connections' stamps read (a poll turn may be long past). */
    s->now_us = sp_now_us();
    for (int i = 0; i < s->nlisteners; i++)
        while (do_accept(s, &s->listeners[i], 1)) {}
    int n = (int)(s->st.accepted - before);
    pthread_mutex_unlock(&s->mu);
    if (n) sp_server_wakeup(s);   /* a poller (the poll backend) must see the new sockets */
    return n;
}

void loop_forget(sp_server *s, int fd) {
    /* Always, also with epoll: an app that forked holds a copy of the socket, which keeps the
     * registration alive after our close() (backend.h). */
    be_del(s->be, fd);
    /* And the copy keeps the connection open: without a FIN its client would send its next
     * request into a socket no one reads, until the child exits. */
    if (forked) shutdown(fd, SHUT_RDWR);
}

void loop_interest(sp_server *s, sp_handle *h, int mask) {
    be_mod(s->be, h->fd, mask, 0, h);
    if (s->polling) sp_server_wakeup(s);
}

/* ---- timers ------------------------------------------------------------------------------------
 *
 * Connections' deadlines are swept every SP_SWEEP_MS, at its multiples on the monotonic clock.
 *
 * Ticks. A poll that waits with a timeout makes the kernel arm a high-resolution timer for it
 * and cancel it when an event comes first, which under load is every time. That costs the
 * sleeping thread ~0.8 us more than an untimed wait (measured on a KVM guest, bench/README.md,
 * "Why the code is as it is"), and a worker serving browser-like traffic sleeps ~0.1 times a
 * request. The deadline a loaded poller waits for is the next sweep's (the caller's, 1 s in
 * spawning, is later), so while sweeps are due the loop keeps one periodic timer instead, armed
 * once: a timerfd that ticks at every multiple of SP_SWEEP_MS. A poll whose deadline is no
 * earlier than the next tick then waits untimed: the tick ends the wait in time, and a turn that
 * wakes before its deadline polls again, as it did when a wake-up came early. A deadline before
 * the next tick (a green hub's timer due soon, the last stretch of the caller's) is waited for
 * as before, so every deadline is kept as exactly as it was. A tick that finds nothing to sweep
 * (no connection, accepting) disarms the timer, so an idle worker wakes when it did: at its
 * caller's deadlines. Where there is no timerfd (not Linux, or it could not be made or armed),
 * every wait is timed, as before. */

#define SWEEP_AFTER(ms) (((ms) / SP_SWEEP_MS + 1) * SP_SWEEP_MS)   /* the next multiple */

/* Whether the loop has sweeps due: connections to time out, or accepting paused (EMFILE). */
static int sweeping(const sp_server *s) {
    return s->nconns || (!s->accepting && s->accept_resume_ms);
}

static void tick_init(sp_server *s) {
    s->tick.kind = K_TICK;
    s->tick.fd = -1;
#ifdef __linux__
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) return;
    if (be_add(s->be, fd, BE_READ, 0, &s->tick) < 0) { close(fd); return; }
    s->tick.fd = fd;
#endif
}

/* Arms the timer (on != 0: ticks from the next multiple of SP_SWEEP_MS after now_ms on) or
 * disarms it. 0 or -errno. */
static int tick_set(sp_server *s, int on, int64_t now_ms) {
#ifdef __linux__
    struct itimerspec it = { { 0, 0 }, { 0, 0 } };
    if (on) {
        int64_t first = SWEEP_AFTER(now_ms);
        it.it_value.tv_sec = first / 1000;
        it.it_value.tv_nsec = (long)(first % 1000) * 1000000L;
        it.it_interval.tv_sec = SP_SWEEP_MS / 1000;
        it.it_interval.tv_nsec = (long)(SP_SWEEP_MS % 1000) * 1000000L;
    }
    if (timerfd_settime(s->tick.fd, on ? TFD_TIMER_ABSTIME : 0, &it, NULL) < 0) return -errno;
    s->ticking = on;
    return 0;
#else
    (void)s; (void)on; (void)now_ms;
    return -ENOSYS;
#endif
}

/* Whether a poll at now_ms whose deadline is wait_ms (> 0) away may wait untimed: a tick comes
 * by then (the timer armed if it was not). */
static int tick_covers(sp_server *s, int64_t now_ms, int wait_ms) {
    if (s->tick.fd < 0 || (!s->ticking && tick_set(s, 1, now_ms) < 0)) return 0;
    return SWEEP_AFTER(now_ms) <= now_ms + wait_ms;
}

/* A tick: read (a level-triggered backend would report it again), and the timer disarmed if
 * nothing is left to sweep. */
static void tick_fired(sp_server *s) {
    uint64_t n;
    while (read(s->tick.fd, &n, sizeof n) > 0) {}
    if (s->ticking && !sweeping(s)) tick_set(s, 0, 0);
}

static void sweep(sp_server *s, int64_t now) {
    if (s->nconns) s->ops->sweep(s, now);
    if (!s->accepting && !s->draining && s->accept_resume_ms && now >= s->accept_resume_ms) {
        s->accept_resume_ms = 0;
        if (s->nconns < s->cfg.max_connections) set_accepting(s, 1);
    }
}

void loop_conn_closed(sp_server *s) {
    if (!s->accepting && !s->draining && !s->accept_resume_ms && s->nconns < s->cfg.max_connections)
        set_accepting(s, 1);
}

/* ---- watchers (green mode) -------------------------------------------------------------------- */

int sp_watch(sp_server *s, int fd, int mask, int64_t token) {
    if (fd < 0) return -EBADF;
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if (fd >= s->watch_cap) {
        int cap = s->watch_cap ? s->watch_cap : 64;
        while (cap <= fd) cap *= 2;
        sp_watch_ent **w = realloc(s->watch, sizeof(*w) * (size_t)cap);
        if (!w) { rc = -ENOMEM; goto out; }
        memset(w + s->watch_cap, 0, sizeof(*w) * (size_t)(cap - s->watch_cap));
        s->watch = w;
        s->watch_cap = cap;
    }
    sp_watch_ent *e = s->watch[fd];
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e) { rc = -ENOMEM; goto out; }
        e->h.kind = K_WATCH;
        e->h.fd = fd;
        s->watch[fd] = e;
    }
    e->token = token;
    e->mask = mask;
    int bm = ((mask & SP_READ) ? BE_READ : 0) | ((mask & SP_WRITE) ? BE_WRITE : 0);
    if (e->registered) rc = be_mod(s->be, fd, bm, BE_ONESHOT, &e->h);
    if (!e->registered || rc == -ENOENT) {
        rc = be_add(s->be, fd, bm, BE_ONESHOT, &e->h);
        if (rc == 0) e->registered = 1;
    }
out:
    pthread_mutex_unlock(&s->mu);
    if (!BE_SEES_CHANGES_LIVE && rc == 0) sp_server_wakeup(s);
    return rc;
}

int sp_unwatch(sp_server *s, int fd) {
    int rc = -ENOENT;
    pthread_mutex_lock(&s->mu);
    if (fd >= 0 && fd < s->watch_cap && s->watch[fd]) {
        sp_watch_ent *e = s->watch[fd];
        rc = e->registered ? be_del(s->be, fd) : 0;
        if (rc == -EBADF || rc == -ENOENT) rc = 0;   /* already closed: the kernel forgot it */
        free(e);
        s->watch[fd] = NULL;
        /* Drop events for this fd that nobody has taken yet: the fd number may be reused. */
        int k = 0;
        for (int i = 0; i < s->fdq_len; i++)
            if (s->fdq[i].fd != fd) s->fdq[k++] = s->fdq[i];
        s->fdq_len = k;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- the poll turn ---------------------------------------------------------------------------- */

static void drain_wake_pipe(sp_server *s) {
    char buf[256];
    while (read(s->wake.fd, buf, sizeof(buf)) > 0) {}
}

/* With the mutex held: dispatch what the backend reported. Returns 1 if the wake pipe fired. */
static int dispatch(sp_server *s, be_fired *fired, int n) {
    int woke = 0;
    for (int i = 0; i < n; i++) {
        sp_handle *h = fired[i].ptr;
        switch (h->kind) {
        case K_LISTENER:
            if (s->accepting) do_accept(s, (sp_listener *)h, 0);
            break;
        case K_CONN:
            s->ops->event(s, h, fired[i].mask);
            break;
        case K_WATCH: {
            sp_watch_ent *e = (sp_watch_ent *)h;
            int m = ((fired[i].mask & BE_READ) ? SP_READ : 0) | ((fired[i].mask & BE_WRITE) ? SP_WRITE : 0);
            if (fired[i].mask & BE_ERROR) m = SP_READ | SP_WRITE;
            loop_fd_event(s, e->h.fd, m, e->token);
            break;
        }
        case K_WAKE:
            drain_wake_pipe(s);
            woke = 1;
            break;
        case K_TICK:
            tick_fired(s);
            break;
        }
    }
    return woke;
}

/* vacated_us and wake_gen are written under the mutex and read without it by a watcher between
 * its naps (watch_unlocked): stores and those loads are atomic. */
static inline void set_vacated(sp_server *s, int64_t now_us) {
    __atomic_store_n(&s->vacated_us, now_us, __ATOMIC_RELAXED);
}

/* Signals one untimed waiter to take the watch, unless nobody waits untimed, a follower watches
 * already, or one was signalled and has not woken yet: it will look when it does, so a second
 * signal would only wake a second waiter to find the watch taken and sleep again (a futex wake,
 * two context switches and a turn on the mutex for nothing). With the mutex held. */
static inline void call_watcher(sp_server *s) {
    if (s->untimed_waiters && !s->watching && !s->watch_called) {
        s->watch_called = 1;
        pthread_cond_signal(&s->cv);
    }
}

/* The watcher's wait, without the mutex: it naps until `until`, then, as long as the busy thread
 * took work less than SP_HANDOFF_US ago, naps again, without taking the mutex. A timed wait on
 * the condition variable would retake the mutex at every wake-up, under steady load held by the
 * busy thread more often than not (it sends with it held), which cost a futex hand-off and two
 * context switches each time (the figure: bench/README.md, "Why the code is as it is").
 *
 * Each nap that finds the busy thread taking work doubles the next one, up to
 * SP_WATCH_NAP_MAX_US; one that finds it stuck sets it back to SP_HANDOFF_US, for this watcher
 * and the next (s->watch_nap_us). A wake-up a millisecond cost a Django or Flask request in
 * thread mode ~4% of its CPU time on a virtual machine, far more than the few microseconds each
 * nap runs (bench/README.md, "Why the code is as it is"): a fast app now pays for one every 8 ms.
 * The price: the first request to stall after a run of fast ones is seen after at most
 * SP_WATCH_NAP_MAX_US + SP_HANDOFF_US instead of 2 * SP_HANDOFF_US (the queue behind it waits
 * that long for a second thread); an app that stalls often (blocking I/O) keeps the watcher at
 * SP_HANDOFF_US. A stall with the GIL held (a long computation, a garbage collection) gains
 * nothing from a second thread before CPython's switch interval, 5 ms, anyway.
 *
 * Returns with the mutex held: when the busy thread took no work for SP_HANDOFF_US (stuck, or
 * nothing to take: the caller looks), on sp_server_wakeup(), or at the deadline (< 0: none).
 * What a signal to the condition variable would tell it comes at most one nap late: only waking
 * the sleeping waiters is urgent, and it sleeps on the condition variable. */
static void watch_unlocked(sp_server *s, int64_t until, unsigned gen, int64_t deadline) {
    int64_t nap = s->watch_nap_us;
    pthread_mutex_unlock(&s->mu);
    for (;;) {
        int64_t now = sp_now_us();
        if (until > now) {
            int64_t d = until - now;
            struct timespec ts = { (time_t)(d / 1000000), (long)(d % 1000000) * 1000 };
            nanosleep(&ts, NULL);
            now = sp_now_us();
        }
        if (__atomic_load_n(&s->wake_gen, __ATOMIC_RELAXED) != gen) break;
        if (deadline >= 0 && now >= deadline) break;
        if (now - __atomic_load_n(&s->vacated_us, __ATOMIC_RELAXED) >= SP_HANDOFF_US) {
            nap = SP_HANDOFF_US;
            break;
        }
        nap = nap * 2 < SP_WATCH_NAP_MAX_US ? nap * 2 : SP_WATCH_NAP_MAX_US;
        until = now + nap;
        if (deadline >= 0 && deadline < until) until = deadline;
    }
    pthread_mutex_lock(&s->mu);
    s->watch_nap_us = nap;
}

static void timed_wait(sp_server *s, int64_t until_us) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t delta = until_us - sp_now_us();
    if (delta < 0) delta = 0;
    int64_t ns = ts.tv_nsec + (delta % 1000000) * 1000;
    ts.tv_sec += (time_t)(delta / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
}

#define SP_FIRED_MAX 256

int sp_poll_codes(sp_server *s, sp_event *out, int64_t *codes, int max, int timeout_ms) {
    int n = sp_poll(s, out, max, timeout_ms);
    for (int i = 0; i < n; i++) codes[i] = out[i].kind == SP_EV_REQUEST ? out[i].code : 0;
    return n;
}

int64_t sp_poll_one(sp_server *s, int timeout_ms) {
    sp_event ev;
    int n = sp_poll(s, &ev, 1, timeout_ms);
    if (n <= 0) return n;
    return ev.kind == SP_EV_REQUEST ? ev.code : 0;
}

/* What loop_poll_locked(s, &ev, 1, 0) does for a thread that just finished a request while
 * requests are queued, in the common case only: no fd events, no held-back responses due out,
 * no poll due (a starving queue), so none of the loop's cases but the first applies. Returns the
 * request's code, or 0: the caller must call loop_poll_locked, which handles every case. The
 * thread stays busy (it was, and it takes work again), as loop_poll_locked would leave it. */
int64_t loop_take_next_locked(sp_server *s) {
    int64_t now = s->now_us;
    if (!s->nready || s->fdq_len || (s->ncork && now - s->cork_since_us >= SP_CORK_US) ||
        (!s->polling && now - s->last_poll_us >= SP_POLL_EVERY_US))
        return 0;
    sp_event ev;
    if (take_ready(s, &ev, 1, now, 0) != 1) return 0;
    if (tls_busy_srv != s) { s->busy++; tls_busy_srv = s; }
    set_vacated(s, now);
    call_watcher(s);
    return ev.code;
}

int sp_poll(sp_server *s, sp_event *out, int max, int timeout_ms) {
    if (max <= 0) return -EINVAL;
    pthread_mutex_lock(&s->mu);
    int n = loop_poll_locked(s, out, max, timeout_ms);
    pthread_mutex_unlock(&s->mu);
    return n;
}

int loop_poll_locked(sp_server *s, sp_event *out, int max, int timeout_ms) {
    be_fired fired[SP_FIRED_MAX];
    int n = 0;

    /* The loop clock is fresh here when the caller just finished a request or polled. */
    int64_t start = s->now_us;
    int64_t deadline = timeout_ms >= 0 ? start + (int64_t)timeout_ms * 1000 : -1;
    if (tls_busy_srv == s) { s->busy--; tls_busy_srv = NULL; }
    unsigned gen = s->wake_gen;
    int was_follower = 0;
    int watching = 0;   /* this thread is the one follower timing the hand-off */
    for (int turn = 0;; turn++) {
        int64_t now = s->now_us = turn ? sp_now_us() : start;
        /* Held-back responses leave once this thread has no queued request to go on with, or
         * have waited long enough (conn/output.c, "Corking"). */
        if (s->ncork && (!s->nready || now - s->cork_since_us >= SP_CORK_US)) s->ops->flush(s);
        int starving = !s->polling && s->nready && now - s->last_poll_us >= SP_POLL_EVERY_US;
        if (!starving && (s->nready || s->fdq_len)) {   /* the call only when it may find work:
                                                           a turn that is about to poll has none */
            n = take_ready(s, out, max, now, was_follower);
            if (n > 0) break;
        }
        if (s->wake_gen != gen) break;                          /* sp_server_wakeup() */
        if (deadline >= 0 && now >= deadline && (s->polling || timeout_ms > 0 || was_follower)) break;

        int may_lead = !s->polling &&
                       (starving || s->busy == 0 || now - s->vacated_us >= SP_HANDOFF_US);
        if (may_lead) {
            if (watching) { watching = 0; s->watching = 0; }   /* untimed followers: the poller
                                                               signals one when it takes work */
            s->polling = 1;
            int64_t now_ms = now / 1000;
            if (!s->next_sweep_ms) s->next_sweep_ms = SWEEP_AFTER(now_ms);
            int wait_ms = deadline >= 0 ? (int)((deadline - now + 999) / 1000) : -1;
            int sweeps = sweeping(s);
            if (sweeps) {
                int sw = (int)(s->next_sweep_ms - now_ms);
                if (sw < 0) sw = 0;
                if (wait_ms < 0 || sw < wait_ms) wait_ms = sw;
            }
            if (s->nready || s->fdq_len) wait_ms = 0;   /* work withheld for the hand-off */
            if (wait_ms > 0 && sweeps && tick_covers(s, now_ms, wait_ms)) wait_ms = -1;   /* "Ticks" */
            if (s->ncork) s->ops->flush(s);
            pthread_mutex_unlock(&s->mu);
            int nf = be_poll(s->be, fired, SP_FIRED_MAX, wait_ms);
            pthread_mutex_lock(&s->mu);
            s->polling = 0;
            s->last_poll_us = s->now_us = sp_now_us();
            int woke = nf > 0 ? dispatch(s, fired, nf) : 0;
            if (s->graveyard) s->ops->reap(s);   /* closed by other threads while we polled */
            int64_t t = s->now_us / 1000;
            if (t >= s->next_sweep_ms) { sweep(s, t); s->next_sweep_ms = SWEEP_AFTER(t); }
            if (woke || nf == -EINTR) {
                __atomic_store_n(&s->wake_gen, s->wake_gen + 1, __ATOMIC_RELAXED);
                pthread_cond_broadcast(&s->cv);
                n = take_ready(s, out, max, s->now_us, was_follower);
                break;
            }
            if (timeout_ms == 0) { n = take_ready(s, out, max, s->now_us, was_follower); break; }
            /* What the poll brought is taken here, on the clock read just after it, as the next
             * turn would on a clock read again: with nothing held back there is nothing for that
             * turn to flush, and the queue cannot be starving, since it was just polled. Lightly
             * loaded (one request a poll) every request comes through here, and that second turn
             * and its clock read cost ~100 instructions each time. When nothing is taken (a
             * follower's hand-off rule), the next turn looks again on a fresh clock, as it did.
             * A follower that polled (a starving queue makes one lead) stays a follower for
             * taking work: the hand-off rule still applies to it (take_ready). */
            if (!s->ncork && (s->nready || s->fdq_len)) {
                n = take_ready(s, out, max, s->now_us, was_follower);
                if (n > 0) break;
            }
            continue;
        }
        if (timeout_ms == 0) break;   /* never waits: sp_code_answer's callers keep the GIL */
        /* Someone polls, or the role was just vacated by a thread running the app. One follower
         * times the hand-off; the others sleep until signalled, so a busy pool costs one
         * wake-up a nap, not one per thread. */
        was_follower = 1;
        s->waiters++;
        /* Under steady load the poller takes work every few microseconds: a watcher that finds
         * it polling keeps the watch (checking back between naps) rather than sleep
         * untimed and cost the poller a signal, and itself a wake-up, on every turn. */
        int keep = s->polling && (watching || !s->watching) && now - s->vacated_us < SP_WATCH_KEEP_US;
        if (!keep && (s->polling || (s->watching && !watching))) {
            /* A watcher that finds someone polling gives the watch up: the poller signals an
             * untimed waiter when it takes work only while nobody watches. */
            if (watching) { watching = 0; s->watching = 0; }
            s->untimed_waiters++;
            if (deadline >= 0) timed_wait(s, deadline); else pthread_cond_wait(&s->cv, &s->mu);
            s->untimed_waiters--;
            s->watch_called = 0;   /* whoever was called is awake, or this one: it looks next */
        } else {
            watching = s->watching = 1;
            int64_t until = (keep ? now : s->vacated_us) + SP_HANDOFF_US;
            if (deadline >= 0 && deadline < until) until = deadline;
            watch_unlocked(s, until, gen, deadline);
        }
        s->waiters--;
    }
    if (watching) {   /* another follower takes over the watch */
        s->watching = 0;
        call_watcher(s);
    }
    if (n > 0) {
        int took_request = 0;
        for (int i = 0; i < n; i++) if (out[i].kind == SP_EV_REQUEST) took_request = 1;
        if (took_request) {
            s->busy++;
            tls_busy_srv = s;
            set_vacated(s, s->now_us);
            /* Waiters sleeping untimed must learn the poller role is free so that one of them
             * times the hand-off (queued work left over is theirs after the delay too), unless
             * one does already. */
            call_watcher(s);
        }
    }
    return n;
}
