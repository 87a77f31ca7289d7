/* sys/event.h -- a test-only stand-in for the BSD kqueue API on Linux, implemented over epoll in
 * kqueue_shim.c. It exists so that csrc/loop/be_kqueue.c compiles and runs on this project's Linux
 * machines (Debian has no libkqueue); the real kqueue is exercised by the macOS CI job.
 *
 * Only what be_kqueue.c uses: EVFILT_READ and EVFILT_WRITE on sockets and pipes; EV_ADD,
 * EV_DELETE, EV_CLEAR, EV_ONESHOT; EV_EOF and fflags (the socket error) on return. Values and
 * field types follow FreeBSD's header; semantics follow kqueue(2): filters are per (fd, filter),
 * a one-shot filter is deleted when it fires, EV_ADD on an existing filter updates udata only,
 * and a change that fails with no room for receipts makes kevent() return -1 at that change. */
#ifndef SP_KQUEUE_SHIM_EVENT_H
#define SP_KQUEUE_SHIM_EVENT_H

#include <stdint.h>
#include <time.h>

#define EVFILT_READ (-1)
#define EVFILT_WRITE (-2)

#define EV_ADD 0x0001
#define EV_DELETE 0x0002
#define EV_ENABLE 0x0004
#define EV_DISABLE 0x0008
#define EV_ONESHOT 0x0010
#define EV_CLEAR 0x0020
#define EV_EOF 0x8000
#define EV_ERROR 0x4000

struct kevent {
    uintptr_t ident;
    short filter;
    unsigned short flags;
    unsigned int fflags;
    intptr_t data;
    void *udata;
};

#define EV_SET(kevp, a, b, c, d, e, f) do {                                          \
        struct kevent *ev_set_ = (kevp);                                             \
        ev_set_->ident = (a); ev_set_->filter = (b); ev_set_->flags = (c);           \
        ev_set_->fflags = (d); ev_set_->data = (e); ev_set_->udata = (f);            \
    } while (0)

int kqueue(void);
int kevent(int kq, const struct kevent *changelist, int nchanges, struct kevent *eventlist, int nevents,
           const struct timespec *timeout);

#endif
