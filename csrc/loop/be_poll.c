/* be_poll.c -- portable poll(2) fallback backend, included by loop.c when neither epoll nor
 * kqueue exists (or when built with -DSP_FORCE_POLL, which the tests use to exercise it).
 *
 * Level-triggered: the core calls be_mod() whenever the events it wants change. poll() runs on a
 * private copy of the set, so other threads may change the set meanwhile (under our own lock);
 * such changes are seen at the next turn, which is why BE_SEES_CHANGES_LIVE is 0: the core wakes a
 * thread blocked in be_poll() after changing interest. */
#include <poll.h>
#include <pthread.h>

#define BE_EDGE 0
#define BE_SEES_CHANGES_LIVE 0

/* poll() reports a hang-up or an error (POLLHUP, POLLERR) whatever the events asked for, on
 * every call: an fd whose interest is off (a connection the app holds, a spent one-shot watch)
 * and whose peer reset it would make every poll() return at once, and the loop spin until the
 * interest changes. Such an fd is reported once, as epoll reports it, then left out of poll()
 * (this flag, private to this file) until be_mod() sets its interest again. */
#define BE_HUP_SEEN 0x100

struct be_state {
    pthread_mutex_t mu;
    struct pollfd *fds;       /* the registered set */
    void **ptrs;
    int *flags;
    int n, cap;
    int *index;               /* fd -> position in fds, or -1 */
    int index_cap;
    struct pollfd *scratch;   /* copy polled without the lock */
    void **scratch_ptrs;
    int scratch_cap;
};

static int be_create(be_state **out) {
    be_state *b = calloc(1, sizeof(*b));
    if (!b) return -ENOMEM;
    pthread_mutex_init(&b->mu, NULL);
    *out = b;
    return 0;
}

static void be_free(be_state *b) {
    if (!b) return;
    pthread_mutex_destroy(&b->mu);
    free(b->fds); free(b->ptrs); free(b->flags); free(b->index);
    free(b->scratch); free(b->scratch_ptrs);
    free(b);
}

static short be_poll_events(int mask) {
    short ev = 0;
    if (mask & BE_READ) ev |= POLLIN;
    if (mask & BE_WRITE) ev |= POLLOUT;
    return ev;
}

static int be_grow_index(be_state *b, int fd) {
    if (fd < b->index_cap) return 0;
    int cap = b->index_cap ? b->index_cap : 64;
    while (cap <= fd) cap *= 2;
    int *ix = realloc(b->index, sizeof(int) * (size_t)cap);
    if (!ix) return -ENOMEM;
    for (int i = b->index_cap; i < cap; i++) ix[i] = -1;
    b->index = ix;
    b->index_cap = cap;
    return 0;
}

static int be_add(be_state *b, int fd, int mask, int flags, void *ptr) {
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    if ((rc = be_grow_index(b, fd)) < 0) goto out;
    if (b->index[fd] >= 0) { rc = -EEXIST; goto out; }
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 64;
        struct pollfd *f = realloc(b->fds, sizeof(*f) * (size_t)cap);
        if (f) b->fds = f;
        void **p = realloc(b->ptrs, sizeof(*p) * (size_t)cap);
        if (p) b->ptrs = p;
        int *fl = realloc(b->flags, sizeof(*fl) * (size_t)cap);
        if (fl) b->flags = fl;
        if (!f || !p || !fl) { rc = -ENOMEM; goto out; }
        b->cap = cap;
    }
    b->fds[b->n].fd = fd;
    b->fds[b->n].events = be_poll_events(mask);
    b->fds[b->n].revents = 0;
    b->ptrs[b->n] = ptr;
    b->flags[b->n] = flags;
    b->index[fd] = b->n++;
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int be_mod(be_state *b, int fd, int mask, int flags, void *ptr) {
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    if (fd >= b->index_cap || b->index[fd] < 0) { rc = -ENOENT; goto out; }
    int i = b->index[fd];
    b->fds[i].events = be_poll_events(mask);
    b->ptrs[i] = ptr;
    /* An fd asked about again is polled again; one still asked about nothing stays left out. */
    b->flags[i] = flags | (mask ? 0 : b->flags[i] & BE_HUP_SEEN);
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int be_del(be_state *b, int fd) {
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    if (fd >= b->index_cap || b->index[fd] < 0) { rc = -ENOENT; goto out; }
    int i = b->index[fd], last = b->n - 1;
    if (i != last) {   /* move the last entry into the hole */
        b->fds[i] = b->fds[last];
        b->ptrs[i] = b->ptrs[last];
        b->flags[i] = b->flags[last];
        b->index[b->fds[i].fd] = i;
    }
    b->index[fd] = -1;
    b->n--;
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int be_poll(be_state *b, be_fired *out, int max, int timeout_ms) {
    pthread_mutex_lock(&b->mu);
    if (b->scratch_cap < b->n) {
        struct pollfd *s = realloc(b->scratch, sizeof(*s) * (size_t)b->n);
        if (s) b->scratch = s;
        void **p = realloc(b->scratch_ptrs, sizeof(*p) * (size_t)b->n);
        if (p) b->scratch_ptrs = p;
        if (!s || !p) { pthread_mutex_unlock(&b->mu); return -ENOMEM; }
        b->scratch_cap = b->n;
    }
    int n = b->n;
    if (n) {
        memcpy(b->scratch, b->fds, sizeof(*b->fds) * (size_t)n);
        memcpy(b->scratch_ptrs, b->ptrs, sizeof(*b->ptrs) * (size_t)n);
        for (int i = 0; i < n; i++)
            if ((b->flags[i] & BE_HUP_SEEN) && b->fds[i].events == 0)
                b->scratch[i].fd = -1;          /* poll() skips a negative fd */
    }
    pthread_mutex_unlock(&b->mu);

    int rc = poll(b->scratch, (nfds_t)n, timeout_ms);
    if (rc < 0) return -errno;
    int k = 0;
    pthread_mutex_lock(&b->mu);
    for (int i = 0; i < n && k < max && rc > 0; i++) {
        short re = b->scratch[i].revents;
        if (!re) continue;
        rc--;
        int fd = b->scratch[i].fd;
        /* The fd may have been removed or re-registered since the copy was taken: report only
         * what is still registered, with its current pointer. */
        if (fd >= b->index_cap || b->index[fd] < 0) continue;
        int j = b->index[fd];
        int m = 0;
        if (re & POLLIN) m |= BE_READ;
        if (re & POLLOUT) m |= BE_WRITE;
        if (re & (POLLERR | POLLHUP | POLLNVAL)) m |= BE_READ | BE_WRITE | BE_ERROR;
        if (b->fds[j].events == 0) {
            /* Disarmed (or never armed) while poll() ran: only a hang-up or an error is news,
             * and it is reported once (BE_HUP_SEEN). */
            if (!(re & (POLLERR | POLLHUP)) || (b->flags[j] & BE_HUP_SEEN)) continue;
            b->flags[j] |= BE_HUP_SEEN;
        }
        out[k].ptr = b->ptrs[j];
        out[k].mask = m;
        k++;
        if (b->flags[j] & BE_ONESHOT) b->fds[j].events = 0;
    }
    pthread_mutex_unlock(&b->mu);
    return k;
}

static const char *be_name(void) { return "poll"; }
