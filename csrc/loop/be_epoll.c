/* be_epoll.c -- Linux epoll backend, included by loop.c. Edge-triggered for connections,
 * level-triggered (with EPOLLEXCLUSIVE) for shared listening sockets. */
#include <sys/epoll.h>
#include <sys/syscall.h>

#define BE_EDGE 1
#define BE_SEES_CHANGES_LIVE 1

#ifndef EPOLLEXCLUSIVE
#define EPOLLEXCLUSIVE (1u << 28)   /* Linux 4.5; older headers lack the name */
#endif
#ifndef EPOLLRDHUP
#define EPOLLRDHUP 0x2000
#endif

#define BE_EPOLL_BATCH 256

struct be_state {
    int epfd;
    struct epoll_event events[BE_EPOLL_BATCH];
};

static int be_create(be_state **out) {
    be_state *b = calloc(1, sizeof(*b));
    if (!b) return -ENOMEM;
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (b->epfd < 0) { int e = errno; free(b); return -e; }
    *out = b;
    return 0;
}

static void be_free(be_state *b) {
    if (!b) return;
    close(b->epfd);
    free(b);
}

static uint32_t be_epoll_mask(int mask, int flags) {
    uint32_t ev = 0;
    if (mask & BE_READ) ev |= EPOLLIN | EPOLLRDHUP;
    if (mask & BE_WRITE) ev |= EPOLLOUT;
    if (flags & BE_EXCLUSIVE) ev |= EPOLLEXCLUSIVE;
    else if (flags & BE_ONESHOT) ev |= EPOLLONESHOT;
    else ev |= EPOLLET;
    return ev;
}

static int be_add(be_state *b, int fd, int mask, int flags, void *ptr) {
    struct epoll_event ev = { .events = be_epoll_mask(mask, flags), .data.ptr = ptr };
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        /* Kernels before 4.5 refuse EPOLLEXCLUSIVE: retry without it (herds wake, nothing breaks). */
        if (errno == EINVAL && (flags & BE_EXCLUSIVE)) {
            ev.events &= ~EPOLLEXCLUSIVE;
            if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) == 0) return 0;
        }
        return -errno;
    }
    return 0;
}

static int be_mod(be_state *b, int fd, int mask, int flags, void *ptr) {
    struct epoll_event ev = { .events = be_epoll_mask(mask, flags), .data.ptr = ptr };
    if (epoll_ctl(b->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) return -errno;
    return 0;
}

static int be_del(be_state *b, int fd) {
    struct epoll_event ev = { 0 };
    if (epoll_ctl(b->epfd, EPOLL_CTL_DEL, fd, &ev) < 0) return -errno;
    return 0;
}

static int be_poll(be_state *b, be_fired *out, int max, int timeout_ms) {
    if (max > BE_EPOLL_BATCH) max = BE_EPOLL_BATCH;
    /* epoll_pwait with no mask is epoll_wait (which some architectures lack as a syscall),
     * called directly: see sysio.h. */
#if defined(SP_LIBC_SYSCALLS)
    int n = epoll_wait(b->epfd, b->events, max, timeout_ms);
#else
    int n = (int)syscall(SYS_epoll_pwait, b->epfd, b->events, max, timeout_ms, NULL, (size_t)8);
#endif
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = b->events[i].events;
        int m = 0;
        if (e & (EPOLLIN | EPOLLRDHUP)) m |= BE_READ;
        if (e & EPOLLRDHUP) m |= BE_EOF;
        if (e & EPOLLOUT) m |= BE_WRITE;
        if (e & (EPOLLERR | EPOLLHUP)) m |= BE_READ | BE_WRITE | BE_ERROR;
        out[i].ptr = b->events[i].data.ptr;
        out[i].mask = m;
    }
    return n;
}

static const char *be_name(void) { return "epoll"; }
