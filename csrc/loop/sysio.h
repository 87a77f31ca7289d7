/* sysio.h -- the per-request system calls, without the C library's cancellation wrapper.
 *
 * glibc's recv, send, writev and epoll_wait are pthread cancellation points: in a process with
 * more than one thread (every worker: thread mode, and the housekeeping thread in green mode) each
 * call switches the thread's cancellation type on and off around the syscall, two atomic
 * compare-and-swaps. Measured with perf on the hello-world benchmark that was ~85 ns a request,
 * about 1% of all the CPU a request costs. Nothing in this process cancels threads (CPython never
 * does), so on Linux these go to the kernel through syscall(2), which is no cancellation point
 * (epoll_wait too: be_epoll.c).
 * Same contract as the libc functions: the result, or -1 with errno set. Elsewhere they are the
 * libc functions themselves. */
#ifndef SP_SYSIO_H
#define SP_SYSIO_H

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#if defined(__linux__) && !defined(SP_LIBC_SYSCALLS)
#include <sys/syscall.h>
#include <unistd.h>

static inline ssize_t sp_recv(int fd, void *buf, size_t len, int flags) {
    return (ssize_t)syscall(SYS_recvfrom, fd, buf, len, flags, NULL, NULL);
}

static inline ssize_t sp_send(int fd, const void *buf, size_t len, int flags) {
    return (ssize_t)syscall(SYS_sendto, fd, buf, len, flags, NULL, 0);
}

static inline ssize_t sp_writev(int fd, const struct iovec *iov, int n) {
    return (ssize_t)syscall(SYS_writev, fd, iov, n);
}

static inline int sp_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags) {
    return (int)syscall(SYS_accept4, fd, sa, len, flags);
}

#else

static inline ssize_t sp_recv(int fd, void *buf, size_t len, int flags) { return recv(fd, buf, len, flags); }
static inline ssize_t sp_send(int fd, const void *buf, size_t len, int flags) { return send(fd, buf, len, flags); }
static inline ssize_t sp_writev(int fd, const struct iovec *iov, int n) { return writev(fd, iov, n); }
#ifdef __linux__
static inline int sp_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags) {
    return accept4(fd, sa, len, flags);
}
#endif

#endif
#endif
