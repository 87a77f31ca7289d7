/* hub.c: the green hub's hot turn (GreenLoop), in C on CPython. Its Python side is
 * spawning/green/hub.py (Hub._loop), which owns every rule of the hub; this file only keeps the
 * hub's Python loop out of the common case: a poll batch of requests and nothing else to do.
 *
 * Theory of operation
 * -------------------
 * GreenLoop.turn() polls the core (sp_poll_codes, the GIL released) and hands each request
 * code of the batch to a greenlet: the last one of the hub's idle list (greenlet.switch(code)),
 * or, when none waits there, a new one that the hub's spawn(code) makes and starts. It goes on
 * polling and handing out batches while nothing else waits for Python, and returns as soon as
 * something does:
 *
 *   - fd events (their tokens map to Python objects): a list of (token, mask), the batch's
 *     requests left for dispatch(), which the hub calls once it has handled them (sp.h: a
 *     batch's fd events come before its requests, and are handled first);
 *   - the ready queue or the thread calls not empty, the first timer due, the finish test true
 *     (finished(), called before each poll after the first, as the Python loop does each turn,
 *     unless its owner said it stays false: watch_finish(False), until watch_finish(True)),
 *     interrupt() (a forked child: the hub exits there), a poll that found nothing (a timeout or
 *     a wake-up: signals, stop(), drain()): 0;
 *   - the poll's error: -errno; a Python error (a switch that raised, a signal handler's):
 *     NULL, the batch's codes not yet handed out kept for the next dispatch().
 *
 * Each poll waits at most what the hub's Python loop would have: 0 when the ready queue or the
 * thread calls hold anything, else until the first timer (timers[0].when, on time.monotonic's
 * clock) and at most max_poll_ms (the hub's _MAX_POLL_MS), so that the finish test is looked at
 * at least that often.
 *
 * The batch is this object's: the request greenlets take its next codes themselves once their
 * request is answered (runner.c, green_next; Python's handler through popleft() and len()), as
 * they did from the hub's deque, so that a fast app runs a whole batch in one greenlet without
 * switching back here between requests.
 *
 * And once its batch is empty, such a greenlet polls itself (gl_poll_here, from runner.c's
 * green_park), under the same rules as turn(): when the poll brings only requests, it runs them
 * where it is, which spares the switch to the hub and the hub's switch back to an idle
 * greenlet (most often the same one) for every batch. Whatever the hub must see first (ready
 * greenlets, thread calls, a timer due, the finish test true, interrupt(), a batch left with
 * fd events, a poll that found nothing or failed, an error) makes it park in the idle list
 * and switch to the hub instead, leaving what its poll found here (nfd, rc, the error) for
 * the hub's turn() to hand over before anything else. Meanwhile the hub waits where it last
 * switched to a greenlet; nothing else can run: there is one OS thread, and everything
 * runnable would have made the greenlet park instead of polling. */
#include "py.h"

#ifndef SP_NO_PYFAST

#include <time.h>

static PyObject *s_when;                /* interned "when" (the hub's _Timer) */
static PyObject *s_switch;              /* interned "switch" */

/* Appends the fd events ev[0..n) to a new list as (token, mask) tuples. */
static PyObject *fd_events(const sp_event *ev, int n)
{
    PyObject *out = PyList_New(n);
    for (int i = 0; out != NULL && i < n; i++) {
        PyObject *t = Py_BuildValue("(Li)", (long long)ev[i].token, ev[i].mask);
        if (t == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SetItem(out, i, t);      /* steals */
    }
    return out;
}

/* What a greenlet's poll left for the hub: 1 if anything (see GreenLoop's nfd), else 0. */
static int gl_pending(GreenLoop *L)
{
    return L->exc_type != NULL || L->nfd || L->rc;
}

/* Hands over what gl_pending() saw, once: the error (NULL), the fd events (a list), the -errno. */
static PyObject *gl_take_pending(GreenLoop *L)
{
    if (L->exc_type != NULL) {
        PyErr_Restore(L->exc_type, L->exc_value, L->exc_tb);
        L->exc_type = L->exc_value = L->exc_tb = NULL;
        return NULL;
    }
    if (L->nfd) {
        int n = L->nfd;
        L->nfd = 0;
        return fd_events(L->ev, n);
    }
    int rc = L->rc;
    L->rc = 0;
    return PyLong_FromLong(rc);
}

/* Hands out the batch's codes not yet taken, one greenlet each: 0, or -1 with a Python error
 * (the code being handed out is lost with the greenlet that raised, as in the Python loop). */
SP_GREEN_FRAME static int gl_dispatch(GreenLoop *L)
{
    while (L->head < L->tail && !gl_pending(L)) {    /* fd events go first (sp.h) */
        int64_t code = L->codes[L->head++];
        PyObject *c = PyLong_FromLongLong(code);
        if (c == NULL) {
            refuse(L->srv, code);           /* no memory: answered, rather than busy forever */
            return -1;
        }
        Py_ssize_t n = PyList_Size(L->idle);
        PyObject *r;
        if (n > 0) {
            PyObject *g = PyList_GetItem(L->idle, n - 1);
            Py_INCREF(g);
            if (PyList_SetSlice(L->idle, n - 1, n, NULL) < 0)
                r = NULL;
            else if ((PyObject *)Py_TYPE(g) == L->glet_type)   /* no bound method made per switch */
                r = PyObject_CallFunctionObjArgs(L->switch_fn, g, c, NULL);
            else
                r = PyObject_CallMethodObjArgs(g, s_switch, c, NULL);
            Py_DECREF(g);
        } else if (L->spawn != Py_None) {
            r = PyObject_CallFunctionObjArgs(L->spawn, c, NULL);
        } else {                            /* no handler (spawning.green.run()): dropped */
            r = Py_None;
            Py_INCREF(r);
        }
        Py_DECREF(c);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* The poll's timeout from the timer heap (a list, the earliest first): 0 with *ms set, 1 when the
 * first timer is due now, -1 with a Python error. The hub's Python loop computes the same. */
static int timers_wait(PyObject *timers, int max_ms, int *ms)
{
    Py_ssize_t n = PyList_Size(timers);
    if (n < 0)
        return -1;
    *ms = max_ms;
    if (n == 0)
        return 0;
    PyObject *w = PyObject_GetAttr(PyList_GetItem(timers, 0), s_when);
    if (w == NULL)
        return -1;
    double when = PyFloat_AsDouble(w);
    Py_DECREF(w);
    if (when == -1.0 && PyErr_Occurred())
        return -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);            /* time.monotonic()'s clock */
    double left = when - ((double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    if (left <= 0)
        return 1;
    double t = left * 1000 + 0.999;
    *ms = t < max_ms ? (int)t : max_ms;
    return 0;
}

/* 1 when the ready queue or the thread calls hold anything, 0, or -1 with a Python error. */
static int python_ready(GreenLoop *L)
{
    Py_ssize_t a = PyObject_Size(L->ready);
    if (a != 0)
        return a < 0 ? -1 : 1;
    Py_ssize_t b = PyObject_Size(L->thread_calls);
    if (b != 0)
        return b < 0 ? -1 : 1;
    return 0;
}

/* The finish test: 1 when true, 0, or -1 with a Python error. Not called while its owner says it
 * stays false (watch_finish(False)): a Python call before every poll, ~600 instructions, which
 * is a request's whole cost of it when each poll brings one request. */
SP_GREEN_FRAME static int gl_finished(GreenLoop *L)
{
    if (L->finish_idle)
        return 0;
    PyObject *f = PyObject_CallNoArgs(L->finished);
    if (f == NULL)
        return -1;
    int done = PyObject_IsTrue(f);
    Py_DECREF(f);
    return done;
}

/* turn(): see the theory of operation. */
SP_GREEN_FRAME static PyObject *gl_turn(GreenLoop *L)
{
    if (gl_pending(L))
        return gl_take_pending(L);
    if (gl_dispatch(L) < 0)                 /* what an error left of the last batch */
        return NULL;
    if (gl_pending(L))                      /* found by a greenlet that ran meanwhile */
        return gl_take_pending(L);
    for (int first = 1;; first = 0) {
        int busy = python_ready(L);
        if (busy < 0)
            return NULL;
        if (!first) {
            if (busy || L->interrupted)
                return PyLong_FromLong(0);
            int done = gl_finished(L);
            if (done)
                return done < 0 ? NULL : PyLong_FromLong(0);
        }
        int ms = 0;
        if (!busy) {
            int due = timers_wait(L->timers, L->max_poll_ms, &ms);
            if (due < 0)
                return NULL;
            if (due && !first)
                return PyLong_FromLong(0);  /* the hub fires it */
            if (due)
                ms = 0;                     /* as the Python loop: poll, then fire it */
        }
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = sp_poll_codes(L->srv, L->ev, L->codes, HUB_BATCH, ms);
        Py_END_ALLOW_THREADS
        int i = 0;
        if (n > 0) {
            while (i < n && !L->codes[i])   /* fd events first (sp.h) */
                i++;
            L->head = i;
            L->tail = n;
        }
        if (PyErr_CheckSignals() < 0)       /* the handlers run here, as after a cffi call */
            return NULL;
        if (n <= 0)
            return PyLong_FromLong(n);
        if (i > 0)
            return fd_events(L->ev, i);
        if (gl_dispatch(L) < 0)
            return NULL;
        if (gl_pending(L))
            return gl_take_pending(L);
    }
}

SP_GREEN_FRAME static PyObject *gl_turn_meth(GreenLoop *L, PyObject *Py_UNUSED(ignored))
{
    return gl_turn(L);
}

/* See the theory of operation: the rules are gl_turn's, in its order. */
SP_GREEN_FRAME static long long gl_poll_here(GreenLoop *L)
{
    if (L->head < L->tail || gl_pending(L) || L->interrupted)
        return 0;
    int busy = python_ready(L);
    if (busy != 0)
        goto error_or_park;
    if (gl_finished(L) != 0)
        goto error_or_park;
    int ms;
    int due = timers_wait(L->timers, L->max_poll_ms, &ms);
    if (due != 0)
        goto error_or_park;
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = sp_poll_codes(L->srv, L->ev, L->codes, HUB_BATCH, ms);
    Py_END_ALLOW_THREADS
    int i = 0;
    if (n > 0) {
        while (i < n && !L->codes[i])
            i++;
        L->head = i;
        L->tail = n;
        L->nfd = i;
    } else {
        L->rc = n;              /* 0 too: nothing to hand over, the hub looks at everything */
    }
    /* A signal handler may have waited (switched to the hub, which handed the batch out): the
     * batch is looked at again. */
    if (PyErr_CheckSignals() < 0 || n <= 0 || i > 0 || L->head >= L->tail)
        goto error_or_park;
    return L->codes[L->head++];
error_or_park:
    /* A Python error here (a signal handler's, the finish test's) is the hub's: it raises it
     * from turn(), as if its own loop had met it, rather than the request's handler. */
    if (PyErr_Occurred())
        PyErr_Fetch(&L->exc_type, &L->exc_value, &L->exc_tb);
    return 0;
}

SP_GREEN_FRAME static PyObject *gl_dispatch_meth(GreenLoop *L, PyObject *Py_UNUSED(ignored))
{
    if (gl_dispatch(L) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* popleft(): the batch's next code, as the hub's deque gave it (Python's handler takes it so). */
static PyObject *gl_popleft(GreenLoop *L, PyObject *Py_UNUSED(ignored))
{
    if (L->head >= L->tail) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty batch");
        return NULL;
    }
    return PyLong_FromLongLong(L->codes[L->head++]);
}

static PyObject *gl_interrupt(GreenLoop *L, PyObject *Py_UNUSED(ignored))
{
    L->interrupted = 1;
    Py_RETURN_NONE;
}

/* watch_finish(on): see gl_finished. */
static PyObject *gl_watch_finish(GreenLoop *L, PyObject *on)
{
    int t = PyObject_IsTrue(on);
    if (t < 0)
        return NULL;
    L->finish_idle = !t;
    Py_RETURN_NONE;
}

static Py_ssize_t gl_len(GreenLoop *L)
{
    return L->tail - L->head;
}

static int gl_traverse(GreenLoop *L, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(L));
    Py_VISIT(L->owner);
    Py_VISIT(L->ready);
    Py_VISIT(L->thread_calls);
    Py_VISIT(L->idle);
    Py_VISIT(L->spawn);
    Py_VISIT(L->finished);
    Py_VISIT(L->glet_type);
    Py_VISIT(L->switch_fn);
    Py_VISIT(L->ctx_descr);
    Py_VISIT(L->timers);
    Py_VISIT(L->exc_type);
    Py_VISIT(L->exc_value);
    Py_VISIT(L->exc_tb);
    return 0;
}

static int gl_clear(GreenLoop *L)
{
    Py_CLEAR(L->owner);
    Py_CLEAR(L->ready);
    Py_CLEAR(L->thread_calls);
    Py_CLEAR(L->idle);
    Py_CLEAR(L->spawn);
    Py_CLEAR(L->finished);
    Py_CLEAR(L->glet_type);
    Py_CLEAR(L->switch_fn);
    L->ctx_get = NULL;
    Py_CLEAR(L->ctx_descr);
    Py_CLEAR(L->timers);
    Py_CLEAR(L->exc_type);
    Py_CLEAR(L->exc_value);
    Py_CLEAR(L->exc_tb);
    return 0;
}

static void gl_dealloc(GreenLoop *L)
{
    PyTypeObject *tp = Py_TYPE(L);
    PyObject_GC_UnTrack(L);
    gl_clear(L);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(L);
    Py_DECREF(tp);
}

/* GreenLoop(server_address, owner, ready, thread_calls, idle, spawn, finished, greenlet_type,
 *           max_poll_ms, timers): owner keeps the server alive (the hub's cffi object); spawn(code)
 * makes and starts a request greenlet (None: no handler); the rest are the hub's
 * (spawning/green/hub.py; its timer heap stays the same list object). */
static PyObject *gl_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    unsigned long long addr;
    PyObject *owner, *ready, *calls, *idle, *spawn, *finished, *gtype, *timers;
    int max_ms;
    if (kw != NULL && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError, "GreenLoop() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "KOOOO!OOO!iO!:GreenLoop", &addr, &owner, &ready, &calls,
                          &PyList_Type, &idle, &spawn, &finished, &PyType_Type, &gtype, &max_ms,
                          &PyList_Type, &timers))
        return NULL;
    if (addr == 0 || max_ms < 0) {
        PyErr_SetString(PyExc_ValueError, "GreenLoop(): no server, or max_poll_ms < 0");
        return NULL;
    }
    PyObject *sw = PyObject_GetAttr(gtype, s_switch);
    if (sw == NULL)
        return NULL;
    GreenLoop *L = (GreenLoop *)((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
    if (L == NULL) {
        Py_DECREF(sw);
        return NULL;
    }
    L->srv = (sp_server *)(uintptr_t)addr;
    L->switch_fn = sw;
    /* greenlet.gr_context on the type is its data descriptor (a getset): green_next calls its
     * __get__ directly. Anything else (a greenlet without it) reads the attribute. */
    L->ctx_descr = PyObject_GetAttr(gtype, s_gr_context);
    if (L->ctx_descr == NULL)
        PyErr_Clear();
    else if (PyType_GetSlot(Py_TYPE(L->ctx_descr), Py_tp_descr_set) != NULL)
        L->ctx_get = (descrgetfunc)PyType_GetSlot(Py_TYPE(L->ctx_descr), Py_tp_descr_get);
    L->max_poll_ms = max_ms;
    PyObject **slots[] = { &L->owner, &L->ready, &L->thread_calls, &L->idle, &L->spawn,
                           &L->finished, &L->glet_type, &L->timers };
    PyObject *vals[] = { owner, ready, calls, idle, spawn, finished, gtype, timers };
    for (int i = 0; i < 8; i++) {
        Py_INCREF(vals[i]);
        *slots[i] = vals[i];
    }
    return (PyObject *)L;
}

static PyMethodDef gl_methods[] = {
    {"turn", (PyCFunction)(void (*)(void))gl_turn_meth, METH_NOARGS,
     "turn(): polls and hands out request batches until Python has work (csrc/py/hub.c)."},
    {"dispatch", (PyCFunction)(void (*)(void))gl_dispatch_meth, METH_NOARGS,
     "dispatch(): hands out the batch's codes not yet taken."},
    {"popleft", (PyCFunction)(void (*)(void))gl_popleft, METH_NOARGS,
     "popleft(): the batch's next request code (IndexError when none is left)."},
    {"interrupt", (PyCFunction)(void (*)(void))gl_interrupt, METH_NOARGS,
     "interrupt(): turn() returns at its next look and from every call after (a forked child)."},
    {"watch_finish", (PyCFunction)(void (*)(void))gl_watch_finish, METH_O,
     "watch_finish(on): whether the C turn calls finished() before each poll (the default); off "
     "while its owner knows it stays false, until that owner turns it on again."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot gl_slots[] = {
    {Py_tp_doc, (void *)"The green hub's hot turn (csrc/py/hub.c); also its poll batch."},
    {Py_tp_new, (void *)gl_new},
    {Py_tp_dealloc, (void *)gl_dealloc},
    {Py_tp_traverse, (void *)gl_traverse},
    {Py_tp_clear, (void *)gl_clear},
    {Py_tp_methods, gl_methods},
    {Py_sq_length, (void *)gl_len},
    {0, NULL},
};

static PyType_Spec gl_spec = {
    "spawning._core.GreenLoop", sizeof(GreenLoop), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    gl_slots,
};

/* Makes GreenLoop and sets it on the module: 0, or -1 with a Python error. */
static int hub_setup(PyObject *mod)
{
    if (greenloop_type != NULL)
        return 0;
    if ((s_when = PyUnicode_InternFromString("when")) == NULL
            || (s_switch = PyUnicode_InternFromString("switch")) == NULL)
        return -1;
    PyObject *t = PyType_FromSpec(&gl_spec);
    if (t == NULL || PyObject_SetAttrString(mod, "GreenLoop", t) < 0) {
        Py_XDECREF(t);
        return -1;
    }
    greenloop_type = (PyTypeObject *)t;     /* kept for the module's life */
    return 0;
}

#endif
