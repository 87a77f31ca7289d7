/* backend.h -- the contract every poll backend (be_epoll.c, be_kqueue.c, be_poll.c) fulfils.
 *
 * loop.c includes exactly one backend .c file, chosen from platform macros, the way redis's ae.c
 * does. Each defines the same static functions over a `be_state`; the core never sees the OS API.
 *
 * Edge or level: BE_EDGE is 1 for backends that report a readiness change once (epoll EPOLLET,
 * kqueue EV_CLEAR). The core then registers read|write interest once per connection and remembers
 * readiness in flags. A level-triggered backend (poll) gets be_mod() calls whenever the wanted
 * events change, so it never reports an event the core would ignore (which would spin).
 */
#ifndef SP_BACKEND_H
#define SP_BACKEND_H

#define BE_READ 1
#define BE_WRITE 2
#define BE_ERROR 4          /* hang-up or error: the core treats it as read|write readiness */
#define BE_EOF 8            /* with BE_READ: the peer's FIN is queued (EPOLLRDHUP, kqueue EV_EOF).
                               The core trusts a short read to mean "drained" only until it sees
                               this, because after the FIN no further edge will come. */

#define BE_EXCLUSIVE 1      /* a listening socket shared by several processes: wake only one */
#define BE_ONESHOT 2        /* disarm after one report (green-mode watchers) */

typedef struct be_fired {
    void *ptr;              /* what was registered with the fd */
    int mask;               /* BE_READ | BE_WRITE | BE_ERROR */
} be_fired;

typedef struct be_state be_state;

/* static int be_create(be_state **out);                       0 or -errno
 * static void be_free(be_state *b);
 * static int be_add(be_state *b, int fd, int mask, int flags, void *ptr);   0 or -errno
 * static int be_mod(be_state *b, int fd, int mask, int flags, void *ptr);   0 or -errno
 * static int be_del(be_state *b, int fd);                     0 or -errno; called before every close(fd)
 * static int be_poll(be_state *b, be_fired *out, int max, int timeout_ms);  count, or -errno (-EINTR)
 * static const char *be_name(void);
 *
 * and the macros BE_EDGE (see above) and BE_SEES_CHANGES_LIVE (a change made while another thread
 * waits in be_poll() takes effect in that wait).
 *
 * The core deregisters an fd itself before it closes it, whatever the backend: close() does not
 * end an epoll registration while another process holds the socket (an app that forked without
 * exec), and the registration would go on reporting events for memory the core has freed.
 */

#endif
