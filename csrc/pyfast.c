/* pyfast.c: the per-request path of the common request, written against the CPython API (the
 * stable ABI of 3.10, as the rest of the module) instead of in Python.
 *
 * Theory of operation
 * -------------------
 * The rest of the core is bound with cffi and driven from spawning/wsgi.py. On the path every
 * keep-alive request of a hello-world benchmark takes, that Python was the largest cost left in
 * user space: ~400 ns of interpreter time a request for a loop that copies a dict, calls the app,
 * checks the result's shape, compares the response head with the last one and calls
 * sp_code_answer(); servers written in C do the same in a tenth of that. So this file does that
 * loop, and nothing else:
 *
 *   Runner.run(code, poll_ms, green) takes a request code (sp.h, "request codes"). When the
 *   handler's maps (wsgi.py, make_handler) know its environ, as they do for a connection's
 *   repeated requests (conn_envs, body_envs) and for any request whose packed head Python has
 *   built a template for (templates, by key id), run() makes the environ as the handler would
 *   (a copy, REMOTE_PORT, wsgi.input from the handler's factory when a body comes), calls the app
 *   with a ResponseBase instance's start_response, and when the app answered with a one-piece
 *   body and the status and headers of the head the handler registered last (Runner.head),
 *   answers with sp_code_answer(), which in thread mode also takes the thread's next request; and
 *   goes on with that one (in thread mode polling for it, in a request greenlet taking it from
 *   the hub's batch). Anything else goes back to Python, which has the general code: a code whose
 *   environ Python must make is returned as it is (Python runs that request from the start); a
 *   request whose app was called but whose answer is not the common one is returned as a tuple
 *   (code, environ, response, result, exception, answered, input) and Python goes on from just
 *   after the app call. So the behaviour is the Python path's, whichever side runs.
 *
 *   ResponseBase holds a response's per-request state as C members (code, status, headers,
 *   head_sent, sent) and start_response() in C for its common form (two positional
 *   arguments); wsgi.Response subclasses it with the rest in Python (write(), send_head(), the
 *   exc_info form of start_response). A response object nothing else holds after the answer
 *   (reference count 1, no weak references) serves the runner's next request, as in wsgi.py.
 *
 * sp_py_setup() makes the two types and sets them as attributes of the spawning._core module. It
 * runs with the GIL held (spawning/_build.py, KEEP_GIL). The runner's polls release it. */
#ifndef SP_NO_PYFAST
#include <Python.h>     /* before any system header, as the CPython docs ask */
#include <structmember.h>
#endif

#include "sp.h"

#include <errno.h>
#include <stddef.h>

#ifndef SP_NO_PYFAST

/* ---- ResponseBase ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    long long code;       /* the request's code; 0 once the response cannot reach it */
    PyObject *status;     /* what start_response() got; NULL reads as None */
    PyObject *headers;
    Py_ssize_t sent;      /* body bytes sent, for the access log */
    char head_sent;
    PyObject *weakrefs;
} Resp;

static PyTypeObject *resp_type;     /* ResponseBase */
static PyObject *s_start_response;  /* interned "start_response" */
static PyObject *s_slow_start;      /* interned "_start_response" */
static PyObject *s_gr_context;      /* interned "gr_context" */
static PyObject *s_remote_port;     /* interned "REMOTE_PORT" */
static PyObject *s_wsgi_input;      /* interned "wsgi.input" */
static PyObject *s_release;         /* interned "release" */

static int resp_traverse(Resp *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));   /* instances of heap types hold their type (3.9+) */
    Py_VISIT(self->status);
    Py_VISIT(self->headers);
    return 0;
}

static int resp_clear(Resp *self)
{
    Py_CLEAR(self->status);
    Py_CLEAR(self->headers);
    return 0;
}

static void resp_dealloc(Resp *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    resp_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);      /* instances of heap types hold their type */
}

/* start_response(status, headers, exc_info=None). The common form is done here; any other (three
 * arguments, keywords) goes to the subclass's _start_response, which has the exc_info rules. The
 * types of status and headers are checked when the head is packed (wsgi.py), as there. */
static PyObject *resp_start_response(Resp *self, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    if (nargs != 2 || kwnames != NULL) {
        PyObject *meth = PyObject_GetAttr((PyObject *)self, s_slow_start);
        if (meth == NULL)
            return NULL;
        Py_ssize_t nkw = kwnames != NULL ? PyTuple_Size(kwnames) : 0;
        PyObject *pos = PyTuple_New(nargs);
        PyObject *kw = nkw ? PyDict_New() : NULL;
        PyObject *r = NULL;
        if (pos == NULL || (nkw && kw == NULL))
            goto out;
        for (Py_ssize_t i = 0; i < nargs; i++) {
            Py_INCREF(args[i]);
            PyTuple_SetItem(pos, i, args[i]);   /* steals */
        }
        for (Py_ssize_t i = 0; i < nkw; i++)
            if (PyDict_SetItem(kw, PyTuple_GetItem(kwnames, i), args[nargs + i]) < 0)
                goto out;
        r = PyObject_Call(meth, pos, kw);
    out:
        Py_DECREF(meth);
        Py_XDECREF(pos);
        Py_XDECREF(kw);
        return r;
    }
    if (self->status != NULL && self->status != Py_None) {
        PyErr_SetString(PyExc_AssertionError,
                        "start_response() called a second time without exc_info");
        return NULL;
    }
    PyObject *old_s = self->status, *old_h = self->headers;
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    self->status = args[0];
    self->headers = args[1];
    Py_XDECREF(old_s);
    Py_XDECREF(old_h);
    Py_INCREF(self);
    return (PyObject *)self;    /* the write() callable: the subclass's __call__ */
}

static PyMethodDef resp_methods[] = {
    {"start_response", (PyCFunction)(void (*)(void))resp_start_response,
     METH_FASTCALL | METH_KEYWORDS, "start_response(status, headers, exc_info=None) (PEP 3333)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef resp_members[] = {
    {"code", T_LONGLONG, offsetof(Resp, code), 0, NULL},
    {"status", T_OBJECT, offsetof(Resp, status), 0, NULL},
    {"headers", T_OBJECT, offsetof(Resp, headers), 0, NULL},
    {"sent", T_PYSSIZET, offsetof(Resp, sent), 0, NULL},
    {"head_sent", T_BOOL, offsetof(Resp, head_sent), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Resp, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot resp_slots[] = {
    {Py_tp_doc, (void *)"A response's per-request state, and start_response() (csrc/pyfast.c)."},
    {Py_tp_new, (void *)PyType_GenericNew},
    {Py_tp_dealloc, (void *)resp_dealloc},
    {Py_tp_traverse, (void *)resp_traverse},
    {Py_tp_clear, (void *)resp_clear},
    {Py_tp_methods, resp_methods},
    {Py_tp_members, resp_members},
    {0, NULL},
};

static PyType_Spec resp_spec = {
    "spawning._core.ResponseBase", sizeof(Resp), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, resp_slots,
};

/* ---- Runner ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    sp_server *srv;
    PyObject *app;
    PyObject *conn_envs;  /* dict: repeat code -> environ to copy, for bodyless requests... */
    PyObject *body_envs;  /* ...and for requests with a body */
    PyObject *templates;  /* dict: key id -> (environ template less REMOTE_PORT, has a body) */
    PyObject *ports;      /* dict: port number -> its REMOTE_PORT string */
    PyObject *new_input;  /* callable(response) -> wsgi.input for a request with a body */
    Py_ssize_t envs_max;  /* conn_envs and body_envs are emptied when they hold this many */
    PyObject *resp_cls;   /* the handler's ResponseBase subclass */
    PyObject *keep;       /* callable keeping lent bodies alive (sp.h, "Lent bodies") */
    PyObject *log;        /* callable(environ, status, sent, headers) that never raises, or None */
    PyObject *head;       /* (status, headers, head id) of the head registered last */
    PyObject *spare;      /* a response object no one else holds, for the next request */
} Runner;

static int runner_traverse(Runner *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->app);
    Py_VISIT(self->conn_envs);
    Py_VISIT(self->body_envs);
    Py_VISIT(self->templates);
    Py_VISIT(self->ports);
    Py_VISIT(self->new_input);
    Py_VISIT(self->resp_cls);
    Py_VISIT(self->keep);
    Py_VISIT(self->log);
    Py_VISIT(self->head);
    Py_VISIT(self->spare);
    return 0;
}

static int runner_clear(Runner *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->conn_envs);
    Py_CLEAR(self->body_envs);
    Py_CLEAR(self->templates);
    Py_CLEAR(self->ports);
    Py_CLEAR(self->new_input);
    Py_CLEAR(self->resp_cls);
    Py_CLEAR(self->keep);
    Py_CLEAR(self->log);
    Py_CLEAR(self->head);
    Py_CLEAR(self->spare);
    return 0;
}

static void runner_dealloc(Runner *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    runner_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* Runner(server_address, app, conn_envs, body_envs, templates, ports, new_input, envs_max,
 *        response_class, keep, log, head): the handler's state (wsgi.py, make_handler) */
static PyObject *runner_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    unsigned long long addr;
    Py_ssize_t envs_max;
    PyObject *app, *envs, *benvs, *tmpls, *ports, *new_input, *cls, *keep, *log, *head;
    if (kw != NULL && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError, "Runner() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "KOO!O!O!O!OnOOOO:Runner", &addr, &app, &PyDict_Type, &envs,
                          &PyDict_Type, &benvs, &PyDict_Type, &tmpls, &PyDict_Type, &ports,
                          &new_input, &envs_max, &cls, &keep, &log, &head))
        return NULL;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, resp_type)) {
        PyErr_SetString(PyExc_TypeError, "Runner(): the response class must subclass ResponseBase");
        return NULL;
    }
    if (addr == 0) {
        PyErr_SetString(PyExc_ValueError, "Runner(): no server");
        return NULL;
    }
    Runner *self = (Runner *)((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
    if (self == NULL)
        return NULL;
    self->srv = (sp_server *)(uintptr_t)addr;
    Py_INCREF(app); self->app = app;
    Py_INCREF(envs); self->conn_envs = envs;
    Py_INCREF(benvs); self->body_envs = benvs;
    Py_INCREF(tmpls); self->templates = tmpls;
    Py_INCREF(ports); self->ports = ports;
    Py_INCREF(new_input); self->new_input = new_input;
    self->envs_max = envs_max;
    Py_INCREF(cls); self->resp_cls = cls;
    Py_INCREF(keep); self->keep = keep;
    Py_INCREF(log); self->log = log;
    Py_INCREF(head); self->head = head;
    return (PyObject *)self;
}

/* Ends a request that can neither go on here nor go back to Python (run() is about to raise):
 * a 500 if nothing went out yet, else the connection is cut; never left busy forever. A stale
 * code reaches nothing (sp.h, sp_req_*). */
static void refuse(sp_server *srv, long long code)
{
    static const char head[] = "500 Internal Server Error\0Content-Type\0text/plain; charset=utf-8";
    static const char body[] = "Internal Server Error\n";
    if (sp_code_respond(srv, code, head, sizeof head - 1, body, sizeof body - 1) == -EALREADY)
        sp_req_finish(srv, code, 1);
}

/* After a call the end of a request makes (keep, release, log): an Exception is the callable's
 * own business (cleared: the log reports its own), but a BaseException that is not one
 * (KeyboardInterrupt, SystemExit, GreenletExit) must reach run()'s caller, as on the Python path:
 * the first is kept in pending[3] until the request is done with. */
static void defer_error(PyObject **pending)
{
    if (pending[0] != NULL || PyErr_ExceptionMatches(PyExc_Exception))
        PyErr_Clear();
    else
        PyErr_Fetch(&pending[0], &pending[1], &pending[2]);
}

/* The request goes on in Python: (code, environ, response, result, exception, answered, input).
 * Steals code, env, resp, result and inp; env may be NULL (none was made: an empty dict goes, for
 * the error path's logging), result NULL when the app raised (the exception goes, with its
 * traceback), inp NULL (None goes) for a request without a body. answered is None, or what
 * sp_code_answer() returned (< 0) when it was called. */
static PyObject *hand_back(sp_server *srv, PyObject *code, PyObject *env, Resp *resp,
                           PyObject *result, long long answered, PyObject *inp)
{
    if (inp == NULL) {
        inp = Py_None;
        Py_INCREF(inp);
    }
    PyObject *exc = Py_None;
    Py_INCREF(exc);
    if (result == NULL) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (v != NULL && tb != NULL)
            PyException_SetTraceback(v, tb);
        Py_XDECREF(t);
        Py_XDECREF(tb);
        if (v != NULL) {
            Py_DECREF(exc);
            exc = v;
        }
        result = Py_None;
        Py_INCREF(result);
    }
    if (env == NULL && (env = PyDict_New()) == NULL)
        goto fail;
    PyObject *ans = answered ? PyLong_FromLongLong(answered) : (Py_INCREF(Py_None), Py_None);
    if (ans == NULL)
        goto fail;
    PyObject *t = PyTuple_New(7);
    if (t == NULL) {
        Py_DECREF(ans);
        goto fail;
    }
    PyTuple_SetItem(t, 0, code);
    PyTuple_SetItem(t, 1, env);
    PyTuple_SetItem(t, 2, (PyObject *)resp);
    PyTuple_SetItem(t, 3, result);
    PyTuple_SetItem(t, 4, exc);
    PyTuple_SetItem(t, 5, ans);
    PyTuple_SetItem(t, 6, inp);
    return t;
fail:
    /* No memory even for this: Python cannot have the request, so C ends it, unless it was
     * answered (or lost) already. */
    if (answered == 0 || answered == -EALREADY || answered == -ENOENT)
        refuse(srv, PyLong_AsLongLong(code));
    Py_DECREF(code);
    Py_XDECREF(env);
    Py_DECREF(resp);
    Py_DECREF(result);
    Py_DECREF(exc);
    Py_DECREF(inp);
    return NULL;
}

/* Removes key from the dict if it is there; -1 on a Python error. */
static int forget(PyObject *dict, PyObject *key)
{
    if (PyDict_GetItemWithError(dict, key) != NULL)
        return PyDict_DelItem(dict, key);
    return PyErr_Occurred() ? -1 : 0;
}

/* REMOTE_PORT's string for a port (borrowed from the runner's map, made on first use; "" for port
 * 0, a Unix socket), or NULL with a Python error. */
static PyObject *port_str(Runner *self, long port)
{
    PyObject *key = PyLong_FromLong(port);
    if (key == NULL)
        return NULL;
    PyObject *s = PyDict_GetItemWithError(self->ports, key);
    if (s == NULL && !PyErr_Occurred()) {
        PyObject *n = port ? PyUnicode_FromFormat("%ld", port) : PyUnicode_FromString("");
        if (n != NULL && PyDict_SetItem(self->ports, key, n) == 0)
            s = n;          /* the map holds it */
        Py_XDECREF(n);
    }
    Py_DECREF(key);
    return s;
}

/* The environ for a request, made as wsgi.py's handler makes it (conn_envs, then its entry()):
 * a new dict; or NULL, with a Python error, or without one where Python must make it (a full
 * code whose template Python has not built yet, a repeat code the maps lost). *has_body says
 * whether a body comes (its wsgi.input is the caller's to add). */
static PyObject *request_env(Runner *self, long long code, PyObject *code_obj, int *has_body)
{
    PyObject *tmpl = PyDict_GetItemWithError(self->conn_envs, code_obj);
    *has_body = 0;
    if (tmpl != NULL)
        return PyDict_Copy(tmpl);
    if (PyErr_Occurred())
        return NULL;
    if (!(code & SP_CODE_FULL)) {
        tmpl = PyDict_GetItemWithError(self->body_envs, code_obj);
        *has_body = 1;
        return tmpl != NULL ? PyDict_Copy(tmpl) : NULL;
    }
    long long tid = code >> SP_CODE_ID_SHIFT & SP_CODE_ID_MASK;
    if (tid == 0)
        return NULL;
    PyObject *tid_obj = PyLong_FromLongLong(tid);
    if (tid_obj == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(self->templates, tid_obj);
    Py_DECREF(tid_obj);
    if (found == NULL || !PyTuple_Check(found) || PyTuple_Size(found) != 2)
        return NULL;
    Py_INCREF(found);   /* held while the maps change below */
    PyObject *ckey = NULL, *env = NULL;
    if (code & SP_CODE_KEEP) {
        /* First forget the connection's last entry: if this fails half-way, a repeat code must
         * not find an entry for an earlier connection in the same slot. */
        ckey = PyLong_FromLongLong(SP_CODE_REPEAT | (code >> SP_CODE_SLOT_SHIFT & SP_CODE_REPEAT_MASK));
        if (ckey == NULL || forget(self->conn_envs, ckey) < 0 || forget(self->body_envs, ckey) < 0)
            goto fail;
    }
    int body = PyObject_IsTrue(PyTuple_GetItem(found, 1));
    PyObject *port = body >= 0 ? port_str(self, (long)(code & 0xFFFF)) : NULL;
    if (port == NULL || (env = PyDict_Copy(PyTuple_GetItem(found, 0))) == NULL
            || PyDict_SetItem(env, s_remote_port, port) < 0)
        goto fail;
    if (ckey != NULL) {
        /* What the connection's repeated requests start from (wsgi.py, remember()). */
        PyObject *envs = body ? self->body_envs : self->conn_envs;
        if (PyDict_Size(envs) >= self->envs_max)
            PyDict_Clear(envs);
        int rc = PyDict_SetItem(envs, ckey, env);
        Py_CLEAR(ckey);
        if (rc < 0)
            goto fail;
        PyObject *copy = PyDict_Copy(env);   /* the app may change its own: never the kept one */
        Py_DECREF(env);
        env = copy;                          /* NULL with the error */
    }
    Py_DECREF(found);
    *has_body = body;
    return env;
fail:
    Py_DECREF(found);
    Py_XDECREF(ckey);
    Py_XDECREF(env);
    return NULL;
}

/* Whether status and headers are the head's, and its id. */
static int head_matches(PyObject *head, Resp *resp, long long *hid)
{
    if (head == NULL || resp->status == NULL || !PyTuple_Check(head) || PyTuple_Size(head) != 3)
        return 0;
    PyObject *st = PyTuple_GetItem(head, 0), *hd = PyTuple_GetItem(head, 1);
    if (resp->status != st) {
        int eq = PyObject_RichCompareBool(resp->status, st, Py_EQ);
        if (eq <= 0)
            return eq;
    }
    if (resp->headers != hd) {
        if (resp->headers == NULL)
            return 0;
        int eq = PyObject_RichCompareBool(resp->headers, hd, Py_EQ);
        if (eq <= 0)
            return eq;
    }
    *hid = PyLong_AsLongLong(PyTuple_GetItem(head, 2));
    if (*hid == -1 && PyErr_Occurred())
        return -1;
    return 1;
}

/* A request greenlet's next request from its hub's batch, as wsgi.py's handler takes it: first
 * what the last request left behind goes (greenlet-locals, in the greenlet's __dict__, and its
 * contextvars). green is (the greenlet, its __dict__, the batch deque, the deque's popleft).
 * Returns the code, 0 when the batch is empty, or -1 with a Python error. */
static long long green_next(PyObject *green)
{
    PyObject *me = PyTuple_GetItem(green, 0), *mine = PyTuple_GetItem(green, 1);
    PyObject *batch = PyTuple_GetItem(green, 2), *take = PyTuple_GetItem(green, 3);
    if (take == NULL)
        return -1;
    if (PyDict_Size(mine) > 0)
        PyDict_Clear(mine);
    PyObject *ctx = PyObject_GetAttr(me, s_gr_context);
    if (ctx == NULL)
        return -1;
    int set = ctx != Py_None;
    Py_DECREF(ctx);
    if (set && PyObject_SetAttr(me, s_gr_context, Py_None) < 0)
        return -1;
    Py_ssize_t n = PyObject_Size(batch);
    if (n <= 0)
        return n < 0 ? -1 : 0;
    PyObject *c = PyObject_CallNoArgs(take);
    if (c == NULL)
        return -1;
    long long code = PyLong_AsLongLong(c);
    Py_DECREF(c);
    return code;
}

/* run(code, poll_ms, green=None): see the theory of operation. Returns 0 when the last request
 * answered brought no next one and poll_ms < 0 (in a request greenlet, green: when its batch is
 * empty), else what sp_poll_one(poll_ms) then returned when it was not a request (0, -errno); a
 * code Python must run; or the tuple of hand_back(). */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SP_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SP_ASAN 1
#endif
#ifdef SP_ASAN
/* In a request greenlet this frame is on the C stack the app runs on, and greenlet saves and
 * restores such stacks with memcpy: under ASan the copy would read this frame's redzones. */
__attribute__((no_sanitize_address))
#endif
static PyObject *runner_run(Runner *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *green = nargs == 3 && args[2] != Py_None ? args[2] : NULL;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run(code, poll_ms, green=None)");
        return NULL;
    }
    if (green != NULL && (!PyTuple_Check(green) || PyTuple_Size(green) != 4)) {
        PyErr_SetString(PyExc_TypeError, "run(): green is (greenlet, dict, deque, popleft)");
        return NULL;
    }
    long long code = PyLong_AsLongLong(args[0]);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    long poll_ms = PyLong_AsLong(args[1]);
    if (poll_ms == -1 && PyErr_Occurred())
        return NULL;
    PyObject *code_obj = args[0];
    Py_INCREF(code_obj);
    for (;;) {
        int has_body;
        PyObject *env = request_env(self, code, code_obj, &has_body);
        if (env == NULL && !PyErr_Occurred())
            return code_obj;                /* Python makes its environ: Python's request */
        /* An error making the environ goes to Python with the request (hand_back), which
         * answers it; it is put aside while the response object is made, which runs code. */
        PyObject *et = NULL, *ev = NULL, *etb = NULL;
        if (env == NULL)
            PyErr_Fetch(&et, &ev, &etb);
        Resp *resp = (Resp *)self->spare;
        self->spare = NULL;
        if (resp == NULL) {
            resp = (Resp *)PyObject_CallNoArgs(self->resp_cls);
            if (resp == NULL) {
                Py_XDECREF(env);
                if (et != NULL)
                    PyErr_Restore(et, ev, etb);     /* the first error is the one to report */
                if (PyErr_ExceptionMatches(PyExc_Exception)) {
                    PyErr_Clear();
                    return code_obj;        /* Python meets the same, with its error paths */
                }
                refuse(self->srv, code);    /* KeyboardInterrupt and the like go up at once */
                Py_DECREF(code_obj);
                return NULL;
            }
        }
        resp->code = code;        /* the rest as new: a spare's last request left its state */
        resp->sent = 0;
        resp->head_sent = 0;
        Py_CLEAR(resp->status);
        Py_CLEAR(resp->headers);
        if (env == NULL) {
            PyErr_Restore(et, ev, etb);
            return hand_back(self->srv, code_obj, NULL, resp, NULL, 0, NULL);
        }
        PyObject *inp = NULL;
        if (has_body) {     /* it may outlive the request: its response keeps the server */
            inp = PyObject_CallFunctionObjArgs(self->new_input, (PyObject *)resp, NULL);
            if (inp == NULL || PyDict_SetItem(env, s_wsgi_input, inp) < 0)
                return hand_back(self->srv, code_obj, env, resp, NULL, 0, inp);
        }
        PyObject *sr = PyObject_GetAttr((PyObject *)resp, s_start_response);
        PyObject *result = NULL;
        if (sr != NULL) {
            PyObject *argv = PyTuple_Pack(2, env, sr);
            Py_DECREF(sr);
            if (argv != NULL) {
                result = PyObject_Call(self->app, argv, NULL);
                Py_DECREF(argv);
            }
        }
        if (result == NULL)
            return hand_back(self->srv, code_obj, env, resp, NULL, 0, inp);
        PyObject *body;
        long long hid = 0;
        if (!Py_IS_TYPE(result, &PyList_Type) || PyList_Size(result) != 1
                || !Py_IS_TYPE(body = PyList_GetItem(result, 0), &PyBytes_Type))
            return hand_back(self->srv, code_obj, env, resp, result, 0, inp);
        /* Ours from here, not borrowed from the list: comparing the head below may run the
         * app's code (a str subclass's __eq__ as its status), which may empty the list. */
        Py_INCREF(body);
        PyObject *head = self->head;    /* another thread may swap it while __eq__ runs */
        Py_XINCREF(head);
        int m = head_matches(head, resp, &hid);
        Py_XDECREF(head);
        if (m <= 0) {
            Py_DECREF(body);
            if (m < 0 && !PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(result);          /* a KeyboardInterrupt goes to Python's handler */
                return hand_back(self->srv, code_obj, env, resp, NULL, 0, inp);
            }
            PyErr_Clear();                  /* Python compares again, and packs the head */
            return hand_back(self->srv, code_obj, env, resp, result, 0, inp);
        }
        char *data;
        Py_ssize_t blen;
        if (PyBytes_AsStringAndSize(body, &data, &blen) < 0) {
            Py_DECREF(body);
            Py_DECREF(result);
            return hand_back(self->srv, code_obj, env, resp, NULL, 0, inp);
        }
        /* Nothing but us holds the response (the app kept neither start_response nor write, not
         * even weakly): it may serve the next request. Else it must not reach this one any more:
         * a write() the app kept fails instead of writing into the connection's next request. */
        int mine = Py_REFCNT(resp) == 1 && resp->weakrefs == NULL;
        if (!mine)
            resp->code = 0;
        long long nxt = sp_code_answer(self->srv, code, hid, data, (size_t)blen);
        PyObject *pending[3] = {NULL, NULL, NULL};   /* see defer_error */
        if (blen >= SP_LEND_MIN && blen <= SP_LEND_MAX) {
            /* C may send it after this (sp.h, "Lent bodies"); if it cannot be kept, have C send or
             * copy what it holds now, before the body goes. */
            PyObject *k = PyObject_CallFunctionObjArgs(self->keep, body, NULL);
            if (k == NULL) {
                defer_error(pending);
                sp_server_flush(self->srv);
            }
            Py_XDECREF(k);
        }
        Py_DECREF(body);
        if (nxt < 0) {                      /* still ours or gone: Python knows each case */
            if (pending[0] == NULL)
                return hand_back(self->srv, code_obj, env, resp, result, nxt, inp);
            if (nxt == -EALREADY || nxt == -ENOENT)
                resp->code = code;          /* still ours: Python's handler ends it, and raises */
            Py_DECREF(result);
            PyErr_Restore(pending[0], pending[1], pending[2]);
            return hand_back(self->srv, code_obj, env, resp, NULL, nxt, inp);
        }
        Py_DECREF(code_obj);
        if (inp != NULL) {  /* later reads get b'' and its buffer goes back to the pool */
            PyObject *r = PyObject_CallMethodObjArgs(inp, s_release, NULL);
            if (r == NULL)
                defer_error(pending);
            Py_XDECREF(r);
        }
        resp->sent = blen;
        if (self->log != Py_None && pending[0] == NULL) {   /* as wsgi.py: no line after those */
            PyObject *sent = PyLong_FromSsize_t(blen);
            /* The headers too, for a format that logs a response header (NULL would end the
             * arguments early: None stands for none). */
            PyObject *hd = resp->headers != NULL ? resp->headers : Py_None;
            PyObject *r = sent ? PyObject_CallFunctionObjArgs(self->log, env, resp->status, sent,
                                                              hd, NULL) : NULL;
            Py_XDECREF(sent);
            if (r == NULL)
                defer_error(pending);       /* the callable logs its own errors */
            Py_XDECREF(r);
        }
        Py_DECREF(env);
        Py_DECREF(result);
        Py_XDECREF(inp);
        resp->code = 0;     /* answered: whoever may hold it now reaches nothing */
        if (mine && Py_REFCNT(resp) == 1 && self->spare == NULL)
            self->spare = (PyObject *)resp;
        else
            Py_DECREF(resp);
        if (pending[0] != NULL) {
            if (nxt > 0)
                refuse(self->srv, nxt);     /* taken for this thread, and now never to run */
            PyErr_Restore(pending[0], pending[1], pending[2]);
            return NULL;
        }
        if (nxt == 0 && green != NULL) {
            nxt = green_next(green);
            if (nxt == -1 && PyErr_Occurred())
                return NULL;    /* the request is answered: wsgi.py's caller logs a bug */
        } else if (nxt == 0 && poll_ms >= 0) {
            Py_BEGIN_ALLOW_THREADS
            nxt = sp_poll_one(self->srv, (int)poll_ms);
            Py_END_ALLOW_THREADS
        }
        if (nxt <= 0)
            return PyLong_FromLongLong(nxt);
        code = nxt;
        code_obj = PyLong_FromLongLong(nxt);
        if (code_obj == NULL) {
            refuse(self->srv, nxt);         /* no memory: answered, rather than busy forever */
            return NULL;
        }
    }
}

static PyMethodDef runner_methods[] = {
    {"run", (PyCFunction)(void (*)(void))runner_run, METH_FASTCALL,
     "run(code, poll_ms, green=None): runs requests the common way (csrc/pyfast.c)."},
    {NULL, NULL, 0, NULL},
};

/* Runner.head: replaced whole by the handler, never deleted (run() reads it without a check
 * that could fail). */
static PyObject *runner_get_head(Runner *self, void *closure)
{
    (void)closure;
    PyObject *head = self->head != NULL ? self->head : Py_None;
    Py_INCREF(head);
    return head;
}

static int runner_set_head(Runner *self, PyObject *value, void *closure)
{
    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Runner.head cannot be deleted");
        return -1;
    }
    PyObject *old = self->head;
    Py_INCREF(value);
    self->head = value;
    Py_XDECREF(old);
    return 0;
}

static PyGetSetDef runner_getset[] = {
    {"head", (getter)runner_get_head, (setter)runner_set_head,
     "(status, headers, head id) of the head registered last", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot runner_slots[] = {
    {Py_tp_doc, (void *)"Runs a worker's common requests in C (csrc/pyfast.c)."},
    {Py_tp_new, (void *)runner_new},
    {Py_tp_dealloc, (void *)runner_dealloc},
    {Py_tp_traverse, (void *)runner_traverse},
    {Py_tp_clear, (void *)runner_clear},
    {Py_tp_methods, runner_methods},
    {Py_tp_getset, runner_getset},
    {0, NULL},
};

static PyType_Spec runner_spec = {
    "spawning._core.Runner", sizeof(Runner), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    runner_slots,
};

int sp_py_setup(void)
{
    if (resp_type != NULL)
        return 0;
    PyObject *mod = PyImport_ImportModule("spawning._core");
    if (mod == NULL)
        goto fail;
    s_start_response = PyUnicode_InternFromString("start_response");
    s_slow_start = PyUnicode_InternFromString("_start_response");
    s_gr_context = PyUnicode_InternFromString("gr_context");
    s_remote_port = PyUnicode_InternFromString("REMOTE_PORT");
    s_wsgi_input = PyUnicode_InternFromString("wsgi.input");
    s_release = PyUnicode_InternFromString("release");
    PyObject *rt = PyType_FromSpec(&resp_spec);
    PyObject *ru = rt ? PyType_FromSpec(&runner_spec) : NULL;
    if (s_start_response == NULL || s_slow_start == NULL || s_gr_context == NULL
            || s_remote_port == NULL || s_wsgi_input == NULL || s_release == NULL || ru == NULL
            || PyObject_SetAttrString(mod, "ResponseBase", rt) < 0
            || PyObject_SetAttrString(mod, "Runner", ru) < 0) {
        Py_XDECREF(rt);
        Py_XDECREF(ru);
        Py_DECREF(mod);
        goto fail;
    }
    Py_DECREF(ru);
    Py_DECREF(mod);
    resp_type = (PyTypeObject *)rt;     /* kept for the module's life */
    return 0;
fail:
    PyErr_Clear();
    return -ENOMEM;
}

#else   /* not CPython (PyPy): no CPython API; wsgi.py runs the Python path */

int sp_py_setup(void)
{
    return -ENOSYS;
}

#endif
