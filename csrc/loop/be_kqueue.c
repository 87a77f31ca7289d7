/* be_kqueue.c -- kqueue backend for macOS and the BSDs, included by loop.c. The same contract as
 * be_epoll.c (see backend.h), mapped onto kqueue's one-filter-per-direction model:
 *
 * - Connections: EVFILT_READ and EVFILT_WRITE with EV_CLEAR, the edge-triggered mode (EPOLLET).
 * - Shared listening sockets (BE_EXCLUSIVE): level-triggered EVFILT_READ. kqueue has nothing like
 *   EPOLLEXCLUSIVE, so every worker blocked on the shared socket wakes for each new connection and
 *   all but one get EAGAIN from accept() (a thundering herd). That costs a wake-up per worker per
 *   burst of connections, not correctness; do_accept() takes up to SP_ACCEPT_BURST at a time.
 * - Green-mode watchers (BE_ONESHOT): EV_ONESHOT. kqueue's one-shot is per filter, epoll's per fd:
 *   after a watcher armed for read|write fires for one direction, the other stays armed. That is
 *   harmless to the core: be_mod() always sets both filters to what the watcher now wants (adding
 *   the wanted ones, deleting the others), and a stale one-shot report only wakes nobody
 *   (spawning/green/hub.py's _FdWatch.on_fd ignores a direction with no waiters).
 * - The two filters of one fd come back as separate kevents, not necessarily adjacent. be_poll()
 *   merges them into one fired entry per registered pointer. This is required, not cosmetic:
 *   conn_on_event() may free the connection, so a second entry for it would be a use after free.
 * - EV_EOF on the write filter (we can no longer send: reset, or both directions shut) and
 *   EV_ERROR, or EV_EOF with a pending socket error, mean BE_ERROR, as EPOLLHUP/EPOLLERR do. EV_EOF
 *   on the read filter alone is the peer's FIN, which epoll reports as EPOLLRDHUP, plain read
 *   readiness: the core then reads 0 bytes and decides, so a client that half-closes after
 *   sending its request still gets the response.
 *
 * Other threads may call be_add/be_mod/be_del while one thread waits in kevent(): kqueue applies
 * changes to the live set (BE_SEES_CHANGES_LIVE). A kqueue is not inherited across fork(), which
 * fits the core: each worker creates its server after the fork.
 */
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>

#define BE_EDGE 1
#define BE_SEES_CHANGES_LIVE 1

#define BE_KQ_BATCH 256

/* kevent.udata is void * except on older NetBSD (intptr_t): copy it bytewise either way. */
typedef char be_kq_udata_fits[sizeof(((struct kevent *)0)->udata) == sizeof(void *) ? 1 : -1];

struct be_state {
    int kq;
    struct kevent events[BE_KQ_BATCH];
};

static int be_create(be_state **out) {
    be_state *b = calloc(1, sizeof(*b));
    if (!b) return -ENOMEM;
    b->kq = kqueue();
    if (b->kq < 0) { int e = errno; free(b); return -e; }
    fcntl(b->kq, F_SETFD, FD_CLOEXEC);
    *out = b;
    return 0;
}

static void be_free(be_state *b) {
    if (!b) return;
    close(b->kq);
    free(b);
}

static void be_kq_set(struct kevent *k, int fd, int filter, int flags, void *ptr) {
    memset(k, 0, sizeof(*k));
    k->ident = (uintptr_t)fd;
    k->filter = filter;
    k->flags = flags;
    memcpy(&k->udata, &ptr, sizeof(ptr));
}

/* Applies n changes. Deletions go one per call so that "not registered" (ENOENT), which the
 * contract treats as done, does not stop the changes after it. 0 or -errno. */
static int be_kq_apply(be_state *b, struct kevent *ch, int n) {
    int rc = 0, nadd = 0;
    for (int i = 0; i < n; i++) {
        if (!(ch[i].flags & EV_DELETE)) { ch[nadd++] = ch[i]; continue; }
        if (kevent(b->kq, &ch[i], 1, NULL, 0, NULL) < 0 && errno != ENOENT && rc == 0) rc = -errno;
    }
    if (nadd && kevent(b->kq, ch, nadd, NULL, 0, NULL) < 0) rc = -errno;
    return rc;
}

static int be_kq_flags(int flags) {
    if (flags & BE_EXCLUSIVE) return EV_ADD;            /* level-triggered, see above */
    if (flags & BE_ONESHOT) return EV_ADD | EV_ONESHOT;
    return EV_ADD | EV_CLEAR;
}

/* Registers the filters in mask; with `exact`, also deletes those not in mask. */
static int be_kq_set_filters(be_state *b, int fd, int mask, int flags, void *ptr, int exact) {
    struct kevent ch[2];
    int n = 0, add = be_kq_flags(flags);
    if (mask & BE_READ) be_kq_set(&ch[n++], fd, EVFILT_READ, add, ptr);
    else if (exact) be_kq_set(&ch[n++], fd, EVFILT_READ, EV_DELETE, ptr);
    if (mask & BE_WRITE) be_kq_set(&ch[n++], fd, EVFILT_WRITE, add, ptr);
    else if (exact) be_kq_set(&ch[n++], fd, EVFILT_WRITE, EV_DELETE, ptr);
    return n ? be_kq_apply(b, ch, n) : 0;
}

static int be_add(be_state *b, int fd, int mask, int flags, void *ptr) {
    return be_kq_set_filters(b, fd, mask, flags, ptr, 0);
}

static int be_mod(be_state *b, int fd, int mask, int flags, void *ptr) {
    return be_kq_set_filters(b, fd, mask, flags, ptr, 1);
}

static int be_del(be_state *b, int fd) {
    return be_kq_set_filters(b, fd, 0, 0, NULL, 1);
}

static int be_poll(be_state *b, be_fired *out, int max, int timeout_ms) {
    if (max > BE_KQ_BATCH) max = BE_KQ_BATCH;
    struct timespec ts, *tp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tp = &ts;
    }
    int n = kevent(b->kq, NULL, 0, b->events, max, tp);
    if (n < 0) return -errno;
    int k = 0;
    for (int i = 0; i < n; i++) {
        const struct kevent *e = &b->events[i];
        void *ptr;
        memcpy(&ptr, &e->udata, sizeof(ptr));
        int m = e->filter == EVFILT_WRITE ? BE_WRITE : BE_READ;
        if (e->filter == EVFILT_READ && (e->flags & EV_EOF)) m |= BE_EOF;
        if ((e->flags & EV_ERROR) || ((e->flags & EV_EOF) && (e->filter == EVFILT_WRITE || e->fflags)))
            m |= BE_READ | BE_WRITE | BE_ERROR;
        /* One entry per pointer: a batch holds at most two kevents per fd, and a linear scan of a
         * batch of at most BE_KQ_BATCH entries costs far less than the syscalls that follow it. */
        int j = k;
        while (j > 0 && out[j - 1].ptr != ptr) j--;
        if (j > 0) { out[j - 1].mask |= m; continue; }
        out[k].ptr = ptr;
        out[k].mask = m;
        k++;
    }
    return k;
}

static const char *be_name(void) { return "kqueue"; }
