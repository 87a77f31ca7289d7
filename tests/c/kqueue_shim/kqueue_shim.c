/* kqueue_shim.c -- test-only kqueue(2) emulation over epoll; see sys/event.h for what it covers.
 *
 * Each (fd, filter) is a "knote" kept here; the fd's epoll registration is the union of its armed
 * filters (EPOLLET when a filter has EV_CLEAR, EPOLLONESHOT when one has EV_ONESHOT, re-armed for
 * what is left after a one-shot fires). Readiness comes back as one kevent per filter, reads
 * first and writes in a second pass, so the two filters of one fd are never adjacent: the caller's
 * merging is exercised. kqueue forgets an fd when it is closed; epoll only when the open file is
 * released, so a knote also records the file's inode and a reused fd number starts afresh. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sys/event.h"

#define SHIM_MAX_KQ 4096
#define SHIM_MAX_EPOLL 512

typedef struct {
    unsigned char armed[2];      /* [0] EVFILT_READ, [1] EVFILT_WRITE */
    unsigned short flags[2];     /* EV_CLEAR / EV_ONESHOT as given when the knote was added */
    void *udata[2];
    unsigned char in_epoll;
    dev_t dev;
    ino_t ino;
} shim_fd;

typedef struct {
    int epfd;
    pthread_mutex_t mu;
    shim_fd *fds;
    int cap;
} shim_kq;

static shim_kq *kqs[SHIM_MAX_KQ];
static pthread_mutex_t kqs_mu = PTHREAD_MUTEX_INITIALIZER;

int kqueue(void) {
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) return -1;
    if (epfd >= SHIM_MAX_KQ) { close(epfd); errno = EMFILE; return -1; }
    shim_kq *q = calloc(1, sizeof(*q));
    if (!q) { close(epfd); errno = ENOMEM; return -1; }
    q->epfd = epfd;
    pthread_mutex_init(&q->mu, NULL);
    pthread_mutex_lock(&kqs_mu);
    shim_kq *old = kqs[epfd];   /* a closed kqueue whose number came back: forget it */
    kqs[epfd] = q;
    pthread_mutex_unlock(&kqs_mu);
    if (old) { free(old->fds); pthread_mutex_destroy(&old->mu); free(old); }
    return epfd;
}

static int fidx(short filter) { return filter == EVFILT_WRITE ? 1 : 0; }

static shim_fd *get_fd(shim_kq *q, int fd) {
    if (fd >= q->cap) {
        int cap = q->cap ? q->cap : 64;
        while (cap <= fd) cap *= 2;
        shim_fd *f = realloc(q->fds, sizeof(*f) * (size_t)cap);
        if (!f) return NULL;
        memset(f + q->cap, 0, sizeof(*f) * (size_t)(cap - q->cap));
        q->fds = f;
        q->cap = cap;
    }
    return &q->fds[fd];
}

/* Makes the epoll registration match the armed filters. 0 or -1 with errno. */
static int sync_fd(shim_kq *q, int fd, shim_fd *f) {
    uint32_t ev = 0;
    int any = 0;
    for (int i = 0; i < 2; i++) {
        if (!f->armed[i]) continue;
        any = 1;
        ev |= i == 0 ? (EPOLLIN | EPOLLRDHUP) : EPOLLOUT;
        if (f->flags[i] & EV_CLEAR) ev |= EPOLLET;
        if (f->flags[i] & EV_ONESHOT) ev |= EPOLLONESHOT;
    }
    if (!any) {
        if (f->in_epoll) epoll_ctl(q->epfd, EPOLL_CTL_DEL, fd, NULL);
        f->in_epoll = 0;
        return 0;
    }
    struct epoll_event e = { .events = ev, .data.fd = fd };
    int op = f->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    int rc = epoll_ctl(q->epfd, op, fd, &e);
    if (rc < 0 && errno == ENOENT && op == EPOLL_CTL_MOD) rc = epoll_ctl(q->epfd, EPOLL_CTL_ADD, fd, &e);
    if (rc < 0 && errno == EEXIST && op == EPOLL_CTL_ADD) rc = epoll_ctl(q->epfd, EPOLL_CTL_MOD, fd, &e);
    if (rc == 0) f->in_epoll = 1;
    return rc;
}

static int apply(shim_kq *q, const struct kevent *c) {
    int fd = (int)c->ident, i = fidx(c->filter);
    if (c->filter != EVFILT_READ && c->filter != EVFILT_WRITE) return EINVAL;
    struct stat st;
    if (fstat(fd, &st) < 0) return EBADF;
    shim_fd *f = get_fd(q, fd);
    if (!f) return ENOMEM;
    if ((f->armed[0] || f->armed[1]) && (f->dev != st.st_dev || f->ino != st.st_ino))
        memset(f, 0, sizeof(*f));   /* the fd was closed (kqueue dropped its knotes) and reused */
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    if (c->flags & EV_DELETE) {
        if (!f->armed[i]) return ENOENT;
        f->armed[i] = 0;
    } else if (c->flags & EV_ADD) {
        if (!f->armed[i]) f->flags[i] = c->flags & (EV_CLEAR | EV_ONESHOT);
        f->armed[i] = 1;
        f->udata[i] = c->udata;
    } else {
        return EINVAL;
    }
    return sync_fd(q, fd, f) < 0 ? errno : 0;
}

int kevent(int kq, const struct kevent *changes, int nchanges, struct kevent *out, int nevents,
           const struct timespec *timeout) {
    pthread_mutex_lock(&kqs_mu);
    shim_kq *q = kq >= 0 && kq < SHIM_MAX_KQ ? kqs[kq] : NULL;
    pthread_mutex_unlock(&kqs_mu);
    if (!q) { errno = EBADF; return -1; }
    pthread_mutex_lock(&q->mu);
    for (int c = 0; c < nchanges; c++) {
        int e = apply(q, &changes[c]);
        if (e) { pthread_mutex_unlock(&q->mu); errno = e; return -1; }
    }
    pthread_mutex_unlock(&q->mu);
    if (nevents <= 0) return 0;

    struct epoll_event evs[SHIM_MAX_EPOLL];
    int max = nevents / 2 > 0 ? nevents / 2 : 1;   /* room for two kevents per fd */
    if (max > SHIM_MAX_EPOLL) max = SHIM_MAX_EPOLL;
    int ms = -1;
    if (timeout) ms = (int)(timeout->tv_sec * 1000 + (timeout->tv_nsec + 999999) / 1000000);
    int n = epoll_wait(q->epfd, evs, max, ms);
    if (n <= 0) return n;

    int k = 0;
    pthread_mutex_lock(&q->mu);
    for (int pass = 0; pass < 2; pass++) {
        uint32_t wants = pass == 0 ? (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR) : (EPOLLOUT | EPOLLHUP | EPOLLERR);
        for (int j = 0; j < n && k < nevents; j++) {
            int fd = evs[j].data.fd;
            uint32_t e = evs[j].events;
            if (fd >= q->cap || !q->fds[fd].armed[pass] || !(e & wants)) continue;
            shim_fd *f = &q->fds[fd];
            struct kevent *o = &out[k++];
            memset(o, 0, sizeof(*o));
            o->ident = (uintptr_t)fd;
            o->filter = pass == 0 ? EVFILT_READ : EVFILT_WRITE;
            o->flags = f->flags[pass];
            o->udata = f->udata[pass];
            /* Read EOF: the peer's FIN (RDHUP) or a full hang-up. Write EOF: cannot send any more.
             * fflags stands for the pending socket error without consuming it (BSD reports
             * so_error there; reading SO_ERROR here would clear it before the caller's recv). */
            if (pass == 0 && (e & (EPOLLRDHUP | EPOLLHUP))) o->flags |= EV_EOF;
            if (pass == 1 && (e & (EPOLLHUP | EPOLLERR))) o->flags |= EV_EOF;
            if (e & EPOLLERR) o->fflags = ECONNRESET;
            if (f->flags[pass] & EV_ONESHOT) f->armed[pass] = 0;
        }
    }
    for (int j = 0; j < n; j++) {   /* one-shot: re-arm epoll for the filters still armed */
        int fd = evs[j].data.fd;
        if (fd < q->cap && (q->fds[fd].flags[0] & EV_ONESHOT || q->fds[fd].flags[1] & EV_ONESHOT))
            sync_fd(q, fd, &q->fds[fd]);
    }
    pthread_mutex_unlock(&q->mu);
    return k;
}
