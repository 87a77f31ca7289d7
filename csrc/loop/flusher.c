/* flusher.c -- the flusher (sp_server_flusher): a loop that sends held-back responses once they
 * are due, run in a thread of its own by a server with a single app thread.
 *
 * The flusher
 * -----------
 * Held-back responses (conn/output.c, "Corking") leave when the thread that holds them runs out
 * of queued requests, or once the oldest is SP_CORK_US old, which that thread checks between
 * requests. Between requests: a thread that goes on to a request blocking for a second would hold
 * them that second. With several app threads another one takes the poller role, which sends
 * them, a millisecond or so after the busy one stalls (loop.c); green mode's hub polls whenever a
 * request waits. With one app thread (--threads 1) nobody else would, so it held nothing, and
 * paid a client wake-up for nearly every response: a Flask view under -t 1 did 0.91x bjoern's
 * requests per CPU-second where corked it did 1.23x, a Django view 0.82x against 1.15x (one
 * side-by-side run, bench/README.md, "Why the code is as it is").
 *
 * So such a server runs this loop in a thread of its own (spawning/server.py starts a Python
 * thread that calls it: the C core starts no threads, and linking pthread_create would tie the
 * wheel to glibc 2.34's symbol versions). It runs no Python and holds no GIL. With nothing
 * held it sleeps on its condition variable until a burst begins (loop_corked, loop.h, when the
 * first response is held); then it naps, without the mutex, until the burst is due and the app
 * thread has run its current request for SP_HANDOFF_US, the hand-off rule of thread mode
 * (loop.c): a thread still taking work sends its bursts itself. Only then does it take the mutex,
 * and sends what is still held. Sending them when merely due cost a Flask worker a futex call and
 * a context switch every other request (the app thread waiting on the mutex while this one sent a
 * burst; bench/kernel_counts.py). Under steady load it wakes about once per SP_HANDOFF_US and
 * touches no lock; below saturation nothing is held (SP_CORK_BURSTS: a response no other can join
 * goes at once) and it sleeps. */
#define _GNU_SOURCE
#include <time.h>

#include "loop.h"

/* When what is held may go: once the burst is SP_CORK_US old and the app thread has run its
 * current request for SP_HANDOFF_US (before that it will most likely send them itself). */
static int64_t flush_time(const sp_server *s) {
    int64_t due = s->cork_since_us + SP_CORK_US;
    int64_t stalled = __atomic_load_n(&s->vacated_us, __ATOMIC_RELAXED) + SP_HANDOFF_US;
    return due > stalled ? due : stalled;
}

static void nap_until(int64_t until, int64_t now) {
    int64_t d = until - now;
    struct timespec ts = { (time_t)(d / 1000000), (long)(d % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

int sp_server_flusher(sp_server *s) {
    pthread_mutex_lock(&s->mu);
    while (!s->flusher_stop) {
        if (!s->ncork) {
            s->flusher_idle = 1;   /* loop_corked signals it when the next burst begins */
            pthread_cond_wait(&s->flush_cv, &s->mu);
            s->flusher_idle = 0;
            continue;
        }
        int64_t now = sp_now_us(), when = flush_time(s);
        if (now >= when) {
            if (now > s->now_us) s->now_us = now;   /* the loop clock: fresh for the sends */
            s->ops->flush(s);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        /* Without the mutex while the app thread keeps taking work: under steady load it sends
         * each burst itself, and this thread, waking about once per SP_HANDOFF_US, costs it no
         * turn on the lock. */
        for (;;) {
            nap_until(when, now);
            now = sp_now_us();
            int64_t stalled = __atomic_load_n(&s->vacated_us, __ATOMIC_RELAXED) + SP_HANDOFF_US;
            if (now >= stalled || __atomic_load_n(&s->flusher_stop, __ATOMIC_RELAXED)) break;
            when = stalled;
        }
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void sp_server_flusher_stop(sp_server *s) {
    pthread_mutex_lock(&s->mu);
    __atomic_store_n(&s->flusher_stop, 1, __ATOMIC_RELAXED);
    pthread_cond_signal(&s->flush_cv);
    pthread_mutex_unlock(&s->mu);
}
