/* runner.c: the request path on CPython, written against the CPython API (the stable ABI of
 * 3.10, as the rest of the module) instead of in Python. Its contract is runner.h.
 *
 * Theory of operation
 * -------------------
 * Every request a worker takes goes first to Runner.run(code, poll_ms, green) (from handle() in
 * spawning/wsgi/handler.py), which runs it and the ones after it, as long as each answer is one this file knows:
 *
 *   1. The environ, made from the block the core packed from the head (sp.h, sp_request.env):
 *      a copy of the listener's constant environ, already sized for a browser's headers
 *      (roomy_base), interned keys from a small table, one latin-1 str per value, shared with
 *      the last request whose value for that key had the same bytes (env_value); a trusted
 *      proxy's headers then rewrite it (spawning.wsgi.forwarded), only when the head carries one. A
 *      keep-alive client repeating its request byte for byte gets a copy of the environ its
 *      connection's first repeat got (request_env). A Content-Length body the loop already
 *      holds is wsgi.input as a C Input (body_input); any other, spawning/wsgi/input.py's.
 *   2. The app, called with a ResponseBase's start_response (C members for the per-request
 *      state; wsgi.Response adds write() and the rest in Python).
 *   3. The answer: a list of one bytes object in one crossing (sp_code_answer: head, body and
 *      finish, and in thread mode the thread's next request); any other iterable but a
 *      wsgi.file_wrapper streamed chunk by chunk as the app yields it; close() called. The head
 *      is packed from exact str/list/tuple objects only, so no app code runs meanwhile, reusing
 *      the bytes of the leading objects that are the ones last packed (pack_head); the core
 *      validates and formats it.
 *
 * The caches of the path are C's alone (spawning/wsgi/ keeps none). Besides the repeats' environs, they
 * hold strs, which are immutable, matched value by value (bytes) or object by object (the
 * head's), so they pay on heads that differ, as a browser's do.
 *   4. The access log's callable, then the next request: in thread mode a poll with the GIL
 *      released, in a request greenlet the hub's batch (greenlet-locals and contextvars reset
 *      first) and, once it is empty, a wait in the hub's idle list until the hub switches in
 *      the next batch's first code (green_park).
 *
 * What this file does not finish goes to Python as a Handoff, the request as it stands (its
 * environ, response, result, the exception, what was taken of the iterator), and spawning/wsgi/'s
 * general path, which is the whole behaviour (PyPy runs only it), goes on from there under the
 * same rules: both paths put the same bytes on the wire (tests/test_response_matrix.py).
 *
 * sp_py_setup() makes the types and sets them as attributes of the spawning._core module. It runs
 * with the GIL held (spawning/_build.py, KEEP_GIL). The runner's polls release it. */
#ifndef SP_NO_PYFAST
#include <Python.h>     /* before any system header, as the CPython docs ask */
#include <structmember.h>
#endif

#include "sp.h"
#include "runner.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

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
static PyObject *s_close;           /* interned "close" */

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
 * types of status and headers are checked when the head is packed (spawning/wsgi/response.py), as there. */
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
    {Py_tp_doc, (void *)"A response's per-request state, and start_response() (csrc/py/runner.c)."},
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

/* ---- Input: wsgi.input of a body the loop already holds ----------------------------------
 *
 * A Content-Length body that came with its head (a form post) is taken whole when the request
 * starts (body_input) and read from memory, with the rules of spawning/wsgi/input.py (read(n)
 * is a file's read: fewer than n bytes only at the end; readline(n), readlines(hint),
 * iteration; b'' once the request is over): no Python frame per call. Any other body is
 * Python's Input, which waits for bytes as the dispatcher does. */

typedef struct {
    PyObject_HEAD
    PyObject *body;     /* bytes: the whole body; NULL once released (reads then get b'') */
    Py_ssize_t pos;     /* bytes of it read */
} Inp;

static PyTypeObject *input_type;    /* Input */
static allocfunc input_alloc;

static void inp_dealloc(Inp *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->body);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);      /* instances of heap types hold their type */
}

/* An Input over a copy of data[0..n), or NULL with a Python error. */
static PyObject *inp_new(const char *data, Py_ssize_t n)
{
    Inp *self = (Inp *)input_alloc(input_type, 0);
    if (self == NULL)
        return NULL;
    if ((self->body = PyBytes_FromStringAndSize(data, n)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* The one optional argument of read(size), readline(size), readlines(hint): positional or by
 * keyword; *arg is NULL when not given. 0, or -1 with a Python error. */
static int one_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *fn,
                   const char *kw, PyObject **arg)
{
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_Size(kwnames) : 0;
    *arg = nargs > 0 ? args[0] : NULL;
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (%zd given)", fn, nargs + nkw);
        return -1;
    }
    if (nkw) {
        PyObject *name = PyTuple_GetItem(kwnames, 0);
        int same = name != NULL ? PyUnicode_CompareWithASCIIString(name, kw) == 0 : 0;
        if (!same) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fn, name);
            return -1;
        }
        *arg = args[0];
    }
    return 0;
}

/* A size argument: -1 for none (not given, None, negative), else the number, clipped at
 * PY_SSIZE_T_MAX (a larger one reads everything, as in Python's Input). 0, or -1 with a Python error
 * (not an integer: TypeError, as Python's Input meets it). */
static int arg_size(PyObject *arg, Py_ssize_t *size)
{
    *size = -1;
    if (arg == NULL || arg == Py_None)
        return 0;
    Py_ssize_t n = PyNumber_AsSsize_t(arg, NULL);
    if (n == -1 && PyErr_Occurred())
        return -1;
    *size = n < 0 ? -1 : n;
    return 0;
}

/* The next n bytes of the body (fewer at its end), the body itself when that is all of it. */
static PyObject *inp_take(Inp *self, Py_ssize_t n)
{
    if (self->body == NULL)
        return PyBytes_FromStringAndSize(NULL, 0);
    Py_ssize_t len = PyBytes_Size(self->body), left = len - self->pos;
    if (n < 0 || n > left)
        n = left;
    if (n == len) {
        self->pos = len;
        Py_INCREF(self->body);
        return self->body;
    }
    PyObject *r = PyBytes_FromStringAndSize(PyBytes_AsString(self->body) + self->pos, n);
    if (r != NULL)
        self->pos += n;
    return r;
}

static PyObject *inp_read(Inp *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *arg;
    Py_ssize_t size;
    if (one_arg(args, nargs, kwnames, "read", "size", &arg) < 0 || arg_size(arg, &size) < 0)
        return NULL;
    return inp_take(self, size);
}

/* The next line, through its b'\n', or the first size bytes of it. */
static PyObject *inp_line(Inp *self, Py_ssize_t size)
{
    if (self->body == NULL)
        return PyBytes_FromStringAndSize(NULL, 0);
    Py_ssize_t left = PyBytes_Size(self->body) - self->pos;
    Py_ssize_t limit = size >= 0 && size < left ? size : left;
    const char *b = PyBytes_AsString(self->body) + self->pos;
    const char *nl = memchr(b, '\n', (size_t)limit);
    return inp_take(self, nl != NULL ? nl - b + 1 : limit);
}

static PyObject *inp_readline(Inp *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *arg;
    Py_ssize_t size;
    if (one_arg(args, nargs, kwnames, "readline", "size", &arg) < 0 || arg_size(arg, &size) < 0)
        return NULL;
    return inp_line(self, size);
}

/* readlines(hint): lines until they hold hint bytes or more (hint > 0), else all of them. A hint
 * that is not an int is compared as Python's Input compares it. */
static PyObject *inp_readlines(Inp *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *hint, *lines;
    if (one_arg(args, nargs, kwnames, "readlines", "hint", &hint) < 0 || (lines = PyList_New(0)) == NULL)
        return NULL;
    Py_ssize_t total = 0, h = -1;
    int generic = hint != NULL && hint != Py_None && !PyLong_Check(hint);
    if (!generic && hint != NULL && hint != Py_None) {
        h = PyNumber_AsSsize_t(hint, NULL);
        if (h == -1 && PyErr_Occurred())
            goto fail;
    }
    for (;;) {
        PyObject *line = inp_line(self, -1);
        if (line == NULL)
            goto fail;
        Py_ssize_t n = PyBytes_Size(line);
        int rc = n ? PyList_Append(lines, line) : 0;
        Py_DECREF(line);
        if (rc < 0)
            goto fail;
        if (!n)
            return lines;
        total += n;
        if (generic) {      /* 0 < hint <= total */
            PyObject *zero = PyLong_FromLong(0), *t = PyLong_FromSsize_t(total);
            int a = zero && t ? PyObject_RichCompareBool(zero, hint, Py_LT) : -1;
            int b = a > 0 ? PyObject_RichCompareBool(hint, t, Py_LE) : a;
            Py_XDECREF(zero);
            Py_XDECREF(t);
            if (b < 0)
                goto fail;
            if (b)
                return lines;
        } else if (h > 0 && h <= total) {
            return lines;
        }
    }
fail:
    Py_DECREF(lines);
    return NULL;
}

static PyObject *inp_next(Inp *self)
{
    PyObject *line = inp_line(self, -1);
    if (line != NULL && PyBytes_Size(line) == 0) {
        Py_DECREF(line);
        return NULL;        /* StopIteration */
    }
    return line;
}

/* release(): the request is over; later reads get b''. */
static PyObject *inp_release(Inp *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(self->body);
    Py_RETURN_NONE;
}

static PyMethodDef inp_methods[] = {
    {"read", (PyCFunction)(void (*)(void))inp_read, METH_FASTCALL | METH_KEYWORDS,
     "read(size=-1): up to size bytes of the body, fewer only at its end; all of it by default."},
    {"readline", (PyCFunction)(void (*)(void))inp_readline, METH_FASTCALL | METH_KEYWORDS,
     "readline(size=-1): the next line, through its newline, or its first size bytes."},
    {"readlines", (PyCFunction)(void (*)(void))inp_readlines, METH_FASTCALL | METH_KEYWORDS,
     "readlines(hint=-1): the lines left, or as many as reach hint bytes."},
    {"release", (PyCFunction)inp_release, METH_NOARGS,
     "release(): the request is over; later reads get b''."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot inp_slots[] = {
    {Py_tp_doc, (void *)"wsgi.input of a body read whole with its head (csrc/py/runner.c)."},
    {Py_tp_dealloc, (void *)inp_dealloc},
    {Py_tp_iter, (void *)PyObject_SelfIter},
    {Py_tp_iternext, (void *)inp_next},
    {Py_tp_methods, inp_methods},
    {0, NULL},
};

static PyType_Spec inp_spec = {
    "spawning._core.Input", sizeof(Inp), 0, Py_TPFLAGS_DEFAULT, inp_slots,
};

/* ---- Runner ----------------------------------------------------------------------------- */

#define HEAD_OBJS 17    /* a status and 8 headers: what follows is packed every time */

typedef struct {
    PyObject_HEAD
    sp_server *srv;
    PyObject *app;
    PyObject *conn_envs;  /* dict: repeat code -> environ to copy, for bodyless requests... */
    PyObject *body_envs;  /* ...and for requests with a body (see request_env) */
    PyObject *new_input;  /* callable(response[, head]) -> Python's wsgi.input for a body, head
                             the bytes of it taken already (body_input) */
    PyObject *resp_cls;   /* the handler's ResponseBase subclass */
    PyObject *log;        /* callable(environ, status, sent, headers) that never raises, or None */
    PyObject *spare;      /* a response object no one else holds, for the next request */
    PyObject *base_envs;  /* list: for each listener, what its environs are copied from: its
                             constant environ (wsgi.base_environ) as base_env() makes it over, as
                             a tuple (for a head of one field or none, for more) */
    PyObject *empty;      /* wsgi.input of a request without a body */
    PyObject *forwarded;  /* callable(environ) -> REMOTE_PORT or None, rewriting an environ from
                             a trusted proxy's headers (spawning.wsgi.forwarded); None: no proxies */
    PyObject *stream_types;  /* results Python streams itself (wsgi.file_wrapper: sendfile) */
    PyObject *close_error;   /* callable(exception): logs an error from the result's close() */
    char *hbuf; size_t hcap; /* the packed head of the answer being made (the GIL guards it) */
    PyObject *head_objs[HEAD_OBJS];  /* what hbuf was packed from: the status, then each header's */
    int nhead_objs;                  /* name and value (references held), as far as kept */
    size_t head_off[HEAD_OBJS];      /* where each one's bytes end in hbuf (pack_head) */
} Runner;

static int runner_traverse(Runner *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->app);
    Py_VISIT(self->conn_envs);
    Py_VISIT(self->body_envs);
    Py_VISIT(self->new_input);
    Py_VISIT(self->resp_cls);
    Py_VISIT(self->stream_types);
    Py_VISIT(self->close_error);
    Py_VISIT(self->log);
    Py_VISIT(self->spare);
    Py_VISIT(self->base_envs);
    Py_VISIT(self->empty);
    Py_VISIT(self->forwarded);
    return 0;
}

static int runner_clear(Runner *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->conn_envs);
    Py_CLEAR(self->body_envs);
    Py_CLEAR(self->new_input);
    Py_CLEAR(self->resp_cls);
    Py_CLEAR(self->stream_types);
    Py_CLEAR(self->close_error);
    Py_CLEAR(self->log);
    Py_CLEAR(self->spare);
    Py_CLEAR(self->base_envs);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->forwarded);
    return 0;
}

static void forget_head(Runner *self, int idx);

static void runner_dealloc(Runner *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    runner_clear(self);
    forget_head(self, 0);
    free(self->hbuf);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

static PyObject *base_env(PyObject *base, PyObject *empty, int roomy);

/* Runner(server_address, app, new_input, response_class, log, base_envs, empty_input,
 *        forwarded, stream_types, close_error): the handler's state (spawning/wsgi/handler.py, make_handler) */
static PyObject *runner_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    unsigned long long addr;
    PyObject *app, *new_input, *cls, *log, *bases, *empty, *fwd, *stypes, *cerr;
    if (kw != NULL && PyDict_Size(kw)) {
        PyErr_SetString(PyExc_TypeError, "Runner() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "KOOOOO!OOOO:Runner", &addr, &app, &new_input, &cls, &log,
                          &PyList_Type, &bases, &empty, &fwd, &stypes, &cerr))
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
    if ((self->conn_envs = PyDict_New()) == NULL || (self->body_envs = PyDict_New()) == NULL
            || (self->base_envs = PyList_New(PyList_Size(bases))) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_Size(bases); i++) {
        PyObject *b = PyList_GetItem(bases, i), *pair = NULL;
        if (!PyDict_Check(b))
            PyErr_SetString(PyExc_TypeError, "Runner(): base environs must be dicts");
        else
            pair = Py_BuildValue("(NN)", base_env(b, empty, 0), base_env(b, empty, 1));
        if (pair == NULL) {
            Py_DECREF(self);
            return NULL;
        }
        PyList_SetItem(self->base_envs, i, pair);       /* steals */
    }
    Py_INCREF(app); self->app = app;
    Py_INCREF(new_input); self->new_input = new_input;
    Py_INCREF(cls); self->resp_cls = cls;
    Py_INCREF(log); self->log = log;
    Py_INCREF(empty); self->empty = empty;
    Py_INCREF(fwd); self->forwarded = fwd;
    Py_INCREF(stypes); self->stream_types = stypes;
    Py_INCREF(cerr); self->close_error = cerr;
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

/* What goes back to Python when the request goes on there (wsgi.py, handle()): a Handoff, a
 * named tuple of the request's state. */
static PyTypeObject *handoff_type;
static PyStructSequence_Field handoff_fields[] = {
    {"code", "the request's code"},
    {"environ", "its environ (empty when none was made)"},
    {"response", "its response object"},
    {"result", "what the app returned, None when the app raised"},
    {"exception", "the app's exception, or the one its iterable raised; None"},
    {"answered", "what sp_code_answer() returned (< 0) when it was called, else None"},
    {"input", "its wsgi.input when a body comes, else None"},
    {"taken", "the chunks already taken from the result's iterator (a list), or None"},
    {"rest", "the iterator they were taken from, still to iterate, or None"},
    {NULL, NULL},
};
static PyStructSequence_Desc handoff_desc = {
    "spawning._core.Handoff",
    "A request the C path hands to wsgi.py's general path, as it stands (csrc/py/runner.c).",
    handoff_fields, 9,
};

/* The request goes on in Python. Steals code, env, resp, result, inp, taken and rest (each may be
 * NULL for None; env NULL: an empty dict goes, for the error path's logging). With err the
 * Python error set now goes as the exception, with its traceback. answered is 0 (None goes), or
 * what sp_code_answer() returned (< 0). */
static PyObject *hand_back(sp_server *srv, PyObject *code, PyObject *env, Resp *resp,
                           PyObject *result, int err, long long answered, PyObject *inp,
                           PyObject *taken, PyObject *rest)
{
    PyObject *exc = NULL;
    if (err) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (v != NULL && tb != NULL)
            PyException_SetTraceback(v, tb);
        Py_XDECREF(t);
        Py_XDECREF(tb);
        exc = v;
    }
    PyObject *h = NULL;
    if (env == NULL)
        env = PyDict_New();
    PyObject *ans = answered ? PyLong_FromLongLong(answered) : NULL;
    if (env != NULL && (!answered || ans != NULL))
        h = PyStructSequence_New(handoff_type);
    if (h == NULL) {
        /* No memory even for this: Python cannot have the request, so C ends it, unless it
         * was answered (or lost) already. */
        if (answered == 0 || answered == -EALREADY || answered == -EINVAL)
            refuse(srv, PyLong_AsLongLong(code));
        Py_DECREF(code);
        Py_XDECREF(env);
        Py_DECREF(resp);
        Py_XDECREF(result);
        Py_XDECREF(exc);
        Py_XDECREF(ans);
        Py_XDECREF(inp);
        Py_XDECREF(taken);
        Py_XDECREF(rest);
        return NULL;
    }
    PyObject *items[9] = { code, env, (PyObject *)resp, result, exc, ans, inp, taken, rest };
    for (int i = 0; i < 9; i++) {
        if (items[i] == NULL) {
            items[i] = Py_None;
            Py_INCREF(Py_None);
        }
        PyStructSequence_SetItem(h, i, items[i]);
    }
    return h;
}

/* Removes key from the dict if it is there; -1 on a Python error. */
static int forget(PyObject *dict, PyObject *key)
{
    if (PyDict_GetItemWithError(dict, key) != NULL)
        return PyDict_DelItem(dict, key);
    return PyErr_Occurred() ? -1 : 0;
}

/* ---- environ from a request's packed block --------------------------------------------------
 *
 * A request whose head the handler's maps do not know (every request of a browser: its cookie,
 * path, Referer differ each time) gets its environ made here, from the block C packed when it
 * parsed the head (sp.h, sp_request.env: REMOTE_ADDR, the SP_ENV_FIXED values, "KEY\0value"
 * pairs, then REMOTE_PORT): a copy of the listener's constant environ, then one latin-1 str per
 * value (PEP 3333's "bytes as latin-1"). Keys are the same few dozen names request after
 * request, so each is made once and kept in a small table of interned strs, by its bytes; a
 * name the table has no room for is made for the request. */
#define KEY_SLOTS 256            /* a power of two; header names a server sees are far fewer */
#define KEY_MAX 47               /* longer names (rare, never hot) are not kept */
#define VAL_MAX 160              /* longer values (rare, and rarely repeated) are not kept */

/* A value str kept with the bytes it was made from: the next request's value for the same key,
 * when its bytes are the same, is this str again (strs are immutable) instead of a new one.
 * Most of a browser's fields repeat from request to request and from user to user (Host,
 * Accept*, User-Agent, Sec-Fetch-*, the method, the protocol, the client's address): sharing
 * their strs saves an allocation, a decode and a free each, ~200 instructions. A value that
 * differs costs a compare that fails early and a copy of its bytes. */
typedef struct { unsigned len; PyObject *val; char bytes[VAL_MAX]; } val_ent;
typedef struct {
    unsigned len; char name[KEY_MAX + 1]; PyObject *key;
    val_ent *last;               /* the key's last value, or NULL: never kept for a secret's */
    val_ent val;
} key_ent;
static key_ent env_keys[KEY_SLOTS];   /* the GIL guards it (pyfast is not built free-threaded) */
static PyObject *fixed_keys[6];       /* REMOTE_ADDR, then SP_ENV_FIXED's */
static val_ent fixed_vals[6];         /* their last values */
#define PORT_VALS 64                  /* a power of two */
static val_ent port_vals[PORT_VALS];  /* REMOTE_PORT values by the port's last digits: a
                                         keep-alive connection's requests share its port's str */

/* Values that are credentials are never kept, so that no compare's timing says anything of one
 * request's secret to another (and they differ from user to user anyway). */
static int secret_name(const char *p, size_t n)
{
    return (n == 11 && memcmp(p, "HTTP_COOKIE", 11) == 0)
        || (n == 18 && memcmp(p, "HTTP_AUTHORIZATION", 18) == 0);
}

static inline uint64_t load8(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* The table's entry for the name p[0..n) (n <= KEY_MAX), made for it if it held another, or NULL
 * with a Python error. */
static key_ent *env_key(const char *p, size_t n)
{
    /* The length and the first and last 8 bytes tell the names a server sees apart (HTTP_
     * names share their first bytes, not their last); a clash costs only a table slot, which
     * the next name takes back, never a wrong key. A dozen instructions where a byte-wise hash
     * took 4 a byte. */
    uint64_t h = n;
    if (n >= 8) {
        h ^= load8(p) * 0x9E3779B97F4A7C15u ^ load8(p + n - 8) * 0xC2B2AE3D27D4EB4Fu;
    } else {
        for (size_t i = 0; i < n; i++)
            h = h * 31 + (unsigned char)p[i];
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDu;
    h ^= h >> 33;
    key_ent *e = &env_keys[h & (KEY_SLOTS - 1)];
    if (e->key != NULL && e->len == n && memcmp(e->name, p, n) == 0)
        return e;
    PyObject *k = PyUnicode_FromStringAndSize(p, (Py_ssize_t)n);
    if (k == NULL)
        return NULL;
    PyUnicode_InternInPlace(&k);
    Py_XDECREF(e->key);
    Py_CLEAR(e->val.val);
    e->key = k;                  /* the table's reference */
    e->len = (unsigned)n;
    memcpy(e->name, p, n);
    e->last = secret_name(p, n) ? NULL : &e->val;
    return e;
}

/* The str of the value p[0..n) as latin-1 (a new reference): c's when c (NULL: none) keeps the
 * same bytes, else a new one, which c then keeps. NULL with a Python error. */
static PyObject *env_value(val_ent *c, const char *p, size_t n)
{
    if (c != NULL && c->val != NULL && c->len == n && memcmp(c->bytes, p, n) == 0) {
        Py_INCREF(c->val);
        return c->val;
    }
    PyObject *v = PyUnicode_DecodeLatin1(p, (Py_ssize_t)n, NULL);
    if (v != NULL && c != NULL && n <= VAL_MAX) {
        PyObject *old = c->val;
        Py_INCREF(v);
        c->val = v;
        c->len = (unsigned)n;
        memcpy(c->bytes, p, n);
        Py_XDECREF(old);
    }
    return v;
}

/* env[key] = the value p[0..n) (env_value, c as there); 0 or -1 with a Python error. */
static int env_set(PyObject *env, PyObject *key, val_ent *c, const char *p, size_t n)
{
    PyObject *v = env_value(c, p, n);
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItem(env, key, v);
    Py_DECREF(v);
    return rc;
}

/* The first NUL in p[0..end), or NULL. */
static inline const char *find_nul(const char *p, const char *end)
{
    return p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
}

/* The keys every environ gets from its request: REMOTE_ADDR, SP_ENV_FIXED's, REMOTE_PORT, and
 * wsgi.input (a body's, or the empty one), REMOTE_PORT last (roomy_base). */
#define EVERY_KEYS 8
static PyObject *every_keys[EVERY_KEYS];
static PyObject *s_sizeof;           /* interned "__sizeof__" */

/* 1 when one more key would grow the dict's table, 0 if not, -1 on a Python error: asked of a
 * copy (PyDict_Copy of a compact str-keyed dict clones its table), by its __sizeof__. */
static int would_grow(PyObject *d)
{
    PyObject *c = PyDict_Copy(d), *before = NULL, *after = NULL;
    int r = -1;
    if (c == NULL || (before = PyObject_CallMethodObjArgs(c, s_sizeof, NULL)) == NULL
            || PyDict_SetItem(c, s_sizeof, Py_None) < 0
            || (after = PyObject_CallMethodObjArgs(c, s_sizeof, NULL)) == NULL)
        goto out;
    r = PyObject_RichCompareBool(after, before, Py_GT);
out:
    Py_XDECREF(c);
    Py_XDECREF(before);
    Py_XDECREF(after);
    return r;
}

/* What a listener's environs are copied from: its constant environ (wsgi.base_environ) and the
 * keys every request sets (every_keys: placeholders each request overwrites, and the empty
 * wsgi.input, which stays for a request without a body); if roomy, in a table with room for a
 * browser's headers. A copy takes its original's table size (PyDict_Copy clones the table of a
 * compact dict), so an environ made from the roomy one does not grow its table as its headers
 * go in, where one copied from the 12 constants grew it at its 22nd key (~1,200 instructions a
 * browser's request). The limited API cannot presize a dict; a table grows, compacted, when a
 * new key finds it full, to 3 times the keys it holds (CPython's rule since 3.7). So the last of
 * the keys goes in only once the table is full: keys that are not the environ's (added, then
 * deleted) fill it first. 20 keys then take a table of 64 with room for 22 more, and it holds no
 * deleted entry, which a copy would carry. Where that fails (another growth rule), the result is
 * as good as a copy of the constants. The other, in the table of 32 the 20 keys take, holds one
 * field more: a head of one field (a long-poll client's Host) or none keeps the smaller table it
 * had before, so a request waiting in green mode takes no more memory. A new dict, or NULL with
 * a Python error. */
static PyObject *base_env(PyObject *base, PyObject *empty, int roomy)
{
    PyObject *d = PyDict_New(), *filler = NULL;
    if (d == NULL || PyDict_Update(d, base) < 0)
        goto fail;
    for (int i = 0; i < EVERY_KEYS - 1; i++)
        if (PyDict_SetItem(d, every_keys[i], i == EVERY_KEYS - 2 ? empty : Py_None) < 0)
            goto fail;
    for (int i = 0; roomy && i < 64; i++) {     /* a table of 64 holds 42: bounded, whatever the rule */
        int full = would_grow(d);
        if (full < 0)
            goto fail;
        if (full)
            break;
        /* A key no environ holds (a new str, not interned), in and out again. */
        if ((filler = PyUnicode_FromFormat("spawning.filler.%d", i)) == NULL
                || PyDict_SetItem(d, filler, Py_None) < 0 || PyDict_DelItem(d, filler) < 0)
            goto fail;
        Py_CLEAR(filler);
    }
    if (PyDict_SetItem(d, every_keys[EVERY_KEYS - 1], Py_None) < 0)
        goto fail;
    return d;
fail:
    Py_XDECREF(filler);
    Py_XDECREF(d);
    return NULL;
}

/* The whole environ of the request r (a body's wsgi.input is the caller's to set: the
 * copy's is the empty one), or NULL with a Python error. */
static PyObject *env_from_block(Runner *self, const sp_request *r)
{
    const char *p = r->env, *end = r->env + r->env_len, *ends[6];
    PyObject *env = NULL;
    for (int i = 0; i < 6; i++) {
        if ((ends[i] = find_nul(p, end)) == NULL)
            goto bad;
        p = ends[i] + 1;
    }
    /* Two fields or more (a key's NUL after the first field's value's): the roomy base. */
    const char *q = find_nul(p, end);
    if (q != NULL)
        q = find_nul(q + 1, end);
    int many = q != NULL && find_nul(q + 1, end) != NULL;
    PyObject *bases = PyList_GetItem(self->base_envs, r->listener);
    PyObject *base = bases != NULL ? PyTuple_GetItem(bases, many) : NULL;
    if (base == NULL || (env = PyDict_Copy(base)) == NULL)
        return NULL;
    for (int i = 0; i < 6; i++) {
        const char *v = i ? ends[i - 1] + 1 : r->env;
        if (env_set(env, fixed_keys[i], &fixed_vals[i], v, (size_t)(ends[i] - v)) < 0)
            goto fail;
    }
    int proxied = 0;   /* a header a trusted proxy may have set (spawning.wsgi.forwarded reads them) */
    for (;;) {   /* "KEY\0value\0" pairs, until what is left has no NUL: REMOTE_PORT */
        const char *kz = find_nul(p, end);
        if (kz == NULL)
            break;
        const char *v = kz + 1;
        const char *vz = find_nul(v, end);
        if (vz == NULL)
            goto bad;
        size_t kn = (size_t)(kz - p);
        if ((kn >= 16 && memcmp(p, "HTTP_X_FORWARDED", 16) == 0) || (kn == 14 && memcmp(p, "HTTP_FORWARDED", 14) == 0))
            proxied = 1;
        int rc;
        if (kn <= KEY_MAX) {
            key_ent *e = env_key(p, kn);
            rc = e != NULL ? env_set(env, e->key, e->last, v, (size_t)(vz - v)) : -1;
        } else {
            PyObject *k = PyUnicode_DecodeLatin1(p, (Py_ssize_t)kn, NULL);
            rc = k != NULL ? env_set(env, k, NULL, v, (size_t)(vz - v)) : -1;
            Py_XDECREF(k);
        }
        if (rc < 0)
            goto fail;
        p = vz + 1;
    }
    size_t pn = (size_t)(end - p);
    unsigned slot = pn ? (unsigned)(p[pn - 1] + 10 * (pn > 1 ? p[pn - 2] : 0)) : 0;
    if (env_set(env, s_remote_port, &port_vals[slot & (PORT_VALS - 1)], p, pn) < 0)
        goto fail;
    if (proxied && self->forwarded != Py_None) {
        PyObject *port = PyObject_CallFunctionObjArgs(self->forwarded, env, NULL);
        if (port == NULL)
            goto fail;
        int rc = port == Py_None ? 0 : PyDict_SetItem(env, s_remote_port, port);
        Py_DECREF(port);
        if (rc < 0)
            goto fail;
    }
    return env;
bad:
    PyErr_SetString(PyExc_RuntimeError, "spawning: malformed environ block");
fail:
    Py_XDECREF(env);
    return NULL;
}

/* Environs kept for a connection's repeats: emptied past this many connections. */
#define CONN_ENVS_MAX 16384

/* The environ for a request: a new dict; or NULL with a Python error, or without one when the
 * request is over (Python then says so). *has_body says whether a body comes (its wsgi.input is
 * the caller's to add).
 *
 * The one cache of the request path, and C's alone: a keep-alive client repeating its request
 * byte for byte (the core tells by the code: a repeat code, sp.h) gets a copy of the environ its
 * connection's first repeat got. A dict copy costs a third of making the environ anew; requests
 * that differ (a browser's) never use it, and a connection idle after one request keeps none. */
static PyObject *request_env(Runner *self, long long code, PyObject *code_obj, int *has_body)
{
    if (!(code & SP_CODE_FULL)) {
        PyObject *kept = PyDict_GetItemWithError(self->conn_envs, code_obj);
        *has_body = 0;
        if (kept == NULL && !PyErr_Occurred()) {
            kept = PyDict_GetItemWithError(self->body_envs, code_obj);
            *has_body = 1;
        }
        if (kept != NULL)
            return PyDict_Copy(kept);
        if (PyErr_Occurred())
            return NULL;
        /* a repeat whose environ was dropped with the map: made from its block below */
    }
    sp_request *r = sp_code_req(self->srv, code);
    if (r == NULL)
        return NULL;
    PyObject *env = env_from_block(self, r);
    if (env == NULL)
        return NULL;
    *has_body = r->body != 0;
    PyObject *key = NULL, *kept = NULL;
    if (code & SP_CODE_FULL) {
        if (!(code & SP_CODE_KEEP))
            return env;
        /* A new head on the connection: what was kept for its last one goes. */
        key = PyLong_FromLongLong(SP_CODE_REPEAT | (code >> SP_CODE_SLOT_SHIFT & SP_CODE_REPEAT_MASK));
        if (key == NULL || forget(self->conn_envs, key) < 0 || forget(self->body_envs, key) < 0)
            goto fail;
        Py_DECREF(key);
        return env;
    }
    /* The connection repeated its request: kept for the repeats after this one. Kept only once
     * a request repeats, so that a connection that goes idle after one request holds nothing. */
    PyObject *envs = *has_body ? self->body_envs : self->conn_envs;
    if (PyDict_Size(envs) >= CONN_ENVS_MAX)
        PyDict_Clear(envs);
    if ((kept = PyDict_Copy(env)) == NULL || PyDict_SetItem(envs, code_obj, kept) < 0)
        goto fail;
    Py_DECREF(kept);
    return env;
fail:
    Py_XDECREF(kept);
    Py_XDECREF(key);
    Py_DECREF(env);
    return NULL;
}

/* ---- the answer --------------------------------------------------------------------------
 *
 * The rules are wsgi.py's (handle() and stream()), kept the same way here so that both paths put
 * the same bytes on the wire (tests/test_response_matrix.py compares them): a list of one bytes
 * object goes in one crossing (sp_code_answer), with its Content-Length; any other iterable but
 * a wsgi.file_wrapper streams, each chunk sent as the app yields it (PEP 3333: no block is held
 * back while the app makes the next), the head with the first that is not empty; the iterable's
 * close() is called in every case. Whatever else comes (a chunk that is not bytes, an error, a
 * client that reads too slowly for the next chunk to be queued) goes back to Python with what is
 * left of the iterator, and Python goes on from there. */
#define HIGH_WATER (256 * 1024)   /* wsgi.py's: queued bytes past which the app waits */

/* A new list of the n objects given (references stolen), or NULL with a Python error (then
 * they are released). */
static PyObject *list_of(int n, PyObject *a, PyObject *b)
{
    PyObject *l = PyList_New(n);
    if (l == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    PyList_SetItem(l, 0, a);
    if (n > 1)
        PyList_SetItem(l, 1, b);
    return l;
}

/* Appends str s to self->hbuf at *pos, as latin-1: 1, 0 when C leaves it to Python (not an
 * ASCII str without NUL: Python encodes it, or says why it cannot), -1 on a Python error. */
static int put_str(Runner *self, size_t *pos, PyObject *s)
{
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL)
        return -1;
    /* As many UTF-8 bytes as characters: all ASCII, where UTF-8 and latin-1 agree. */
    if (n != PyUnicode_GetLength(s) || memchr(u, 0, (size_t)n) != NULL)
        return 0;
    if (*pos + (size_t)n + 1 > self->hcap) {
        size_t cap = self->hcap ? self->hcap : 1024;
        while (cap < *pos + (size_t)n + 1)
            cap *= 2;
        char *b = realloc(self->hbuf, cap);
        if (b == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->hbuf = b;
        self->hcap = cap;
    }
    memcpy(self->hbuf + *pos, u, (size_t)n);
    *pos += (size_t)n;
    return 1;
}

/* The objects of the head in hbuf from the idx-th on are forgotten (it is about to be
 * overwritten from there). */
static void forget_head(Runner *self, int idx)
{
    while (self->nhead_objs > idx)
        Py_DECREF(self->head_objs[--self->nhead_objs]);
}

/* A header's name and value (borrowed), or 0 when it is not an exact tuple or list of two. */
static int header_of(PyObject *h, PyObject **name, PyObject **value)
{
    if (PyTuple_CheckExact(h) && PyTuple_Size(h) == 2) {
        *name = PyTuple_GetItem(h, 0);
        *value = PyTuple_GetItem(h, 1);
    } else if (PyList_CheckExact(h) && PyList_Size(h) == 2) {
        *name = PyList_GetItem(h, 0);
        *value = PyList_GetItem(h, 1);
    } else {
        return 0;
    }
    return 1;
}

/* Puts str o, the head's idx-th object (0 the status, then each name and value), into hbuf at
 * *pos, after a NUL unless it is the status, and keeps it there for head_obj; as put_str. */
static int head_put(Runner *self, int idx, PyObject *o, size_t *pos)
{
    forget_head(self, idx);
    if (idx > 0)
        self->hbuf[(*pos)++] = '\0';    /* put_str made room for one more byte each time */
    int r = put_str(self, pos, o);
    if (r > 0 && idx < HEAD_OBJS) {
        Py_INCREF(o);
        self->head_objs[idx] = o;
        self->head_off[idx] = *pos;
        self->nhead_objs = idx + 1;
    }
    return r;
}

/* head_put, unless *same (every object before o is the one hbuf was packed from) and o is the
 * idx-th of those: then its bytes are in hbuf already. */
static inline int head_obj(Runner *self, int idx, PyObject *o, size_t *pos, int *same)
{
    if (*same && idx < self->nhead_objs && self->head_objs[idx] == o) {
        *pos = self->head_off[idx];
        return 1;
    }
    *same = 0;
    return head_put(self, idx, o, pos);
}

/* The response's head packed as sp_code_answer() takes it, "status\0name\0value...", in
 * self->hbuf: 1 with *len (and the status's length, *slen); 0 when Python must pack it
 * (anything but a str status and a list of (str, str) tuples or lists, all ASCII without NUL),
 * -1 on a Python error. No Python code runs: the exact types are asked for, so no app's __eq__
 * or __str__ is called.
 *
 * An app commonly answers with the same str objects request after request (literals, module
 * constants): as long as the status and the names and values, in order, are the very objects
 * hbuf holds the head of (held, so no other object can take their address; strs are
 * immutable), their bytes are there already, and packing starts at the first that differs (a
 * hello world's whole head, a form handler's all but its Content-Length): no encoding, checks
 * or copies for them (~800 instructions of a hello-world request). The one cache of response
 * heads, and C's. */
static int pack_head(Runner *self, Resp *resp, size_t *len, size_t *slen)
{
    PyObject *st = resp->status, *hd = resp->headers;
    size_t pos = 0;
    int same = 1;
    if (st == NULL || !PyUnicode_CheckExact(st) || hd == NULL || !PyList_CheckExact(hd))
        return 0;
    int r = head_obj(self, 0, st, &pos, &same);
    *slen = pos;
    Py_ssize_t n = PyList_Size(hd);
    for (Py_ssize_t i = 0; r > 0 && i < n; i++) {
        PyObject *name, *value;
        if (!header_of(PyList_GetItem(hd, i), &name, &value)
                || !PyUnicode_CheckExact(name) || !PyUnicode_CheckExact(value))
            return 0;
        if ((r = head_obj(self, (int)(1 + 2 * i), name, &pos, &same)) > 0)
            r = head_obj(self, (int)(2 + 2 * i), value, &pos, &same);
    }
    *len = pos;
    return r;
}

/* The logging of a request C finished: the access log's callable, errors deferred. */
static void log_request(Runner *self, PyObject *env, Resp *resp, PyObject **pending)
{
    if (self->log == Py_None || pending[0] != NULL)   /* as wsgi.py: no line after those */
        return;
    PyObject *sent = PyLong_FromSsize_t(resp->sent);
    /* The headers too, for a format that logs a response header (NULL would end the
     * arguments early: None stands for none). */
    PyObject *hd = resp->headers != NULL ? resp->headers : Py_None;
    PyObject *st = resp->status != NULL ? resp->status : Py_None;
    PyObject *r = sent ? PyObject_CallFunctionObjArgs(self->log, env, st, sent, hd, NULL) : NULL;
    Py_XDECREF(sent);
    if (r == NULL)
        defer_error(pending);       /* the callable logs its own errors */
    Py_XDECREF(r);
}

/* Starts the response's head as Response.send_head() does: 1, or 0 when Python must (the head
 * is Python's to pack, or C refused it, or the client is gone: Python meets the same and says
 * so), -1 on a Python error (not an Exception: it goes up). */
static int start_head(Runner *self, long long code, Resp *resp)
{
    size_t hlen, slen;
    int ph = pack_head(self, resp, &hlen, &slen);
    if (ph <= 0) {
        if (ph < 0 && !PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyErr_Clear();
        return 0;
    }
    size_t off = slen + (hlen > slen ? 1 : 0);
    if (sp_req_start(self->srv, code, self->hbuf, slen, self->hbuf + off, hlen - off) < 0)
        return 0;
    resp->head_sent = 1;
    return 1;
}

/* Streams the result as wsgi.py's stream() does. 0: the request is finished (answered, or cut
 * for a client that went away). 1: Python goes on with it, *taken (a list: chunks not sent yet)
 * and *rest (the iterator), either may be NULL; with *err the Python error set now came from
 * the iterable; *queued > 0 when the client must read before more is queued. */
static int stream_c(Runner *self, long long code, Resp *resp, PyObject *result,
                    PyObject **taken, PyObject **rest, int *err, long long *queued)
{
    *taken = *rest = NULL;
    *err = 0;
    *queued = 0;
    PyObject *it = PyObject_GetIter(result);
    if (it == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            *err = 1;
            return 1;
        }
        PyErr_Clear();          /* not iterable: Python tries, and answers the error */
        return 1;
    }
    for (;;) {
        PyObject *chunk = PyIter_Next(it);
        if (chunk == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(it);
                *err = 1;
                return 1;
            }
            break;
        }
        if (!PyBytes_CheckExact(chunk)) {   /* Python converts it, or refuses it */
            *rest = it;
            *taken = list_of(1, chunk, NULL);
            *err = *taken == NULL;
            return 1;
        }
        Py_ssize_t n = PyBytes_Size(chunk);
        if (n == 0) {
            Py_DECREF(chunk);
            continue;
        }
        int st = resp->head_sent ? 1 : start_head(self, code, resp);
        if (st <= 0) {
            *rest = it;
            *taken = list_of(1, chunk, NULL);
            *err = st < 0 || *taken == NULL;
            return 1;
        }
        ssize_t w = sp_req_write(self->srv, code, PyBytes_AsString(chunk), (size_t)n);
        Py_DECREF(chunk);
        if (w == -EMSGSIZE)
            break;              /* its Content-Length is all sent: iterating stops (PEP 3333) */
        if (w < 0) {            /* the client is gone: as wsgi.py's ClientDisconnected */
            Py_DECREF(it);
            resp->code = 0;
            sp_req_finish(self->srv, code, 1);
            return 0;
        }
        resp->sent += n;
        if (w > HIGH_WATER) {   /* the app waits for the client: Python's waiter knows how */
            *rest = it;
            *queued = w;
            return 1;
        }
    }
    Py_DECREF(it);
    if (!resp->head_sent) {     /* an empty body: the head still goes out */
        int st = start_head(self, code, resp);
        if (st <= 0) {
            *taken = PyList_New(0);
            *err = st < 0 || *taken == NULL;
            return 1;
        }
    }
    resp->code = 0;
    sp_req_finish(self->srv, code, 0);
    return 0;
}

/* Calls the result's close(), as PEP 3333 asks, unless it is a list or tuple: an Exception from it
 * goes to the close_error callable (logged), any other to pending (defer_error). */
static void close_result(Runner *self, PyObject *result, PyObject **pending)
{
    if (PyList_CheckExact(result) || PyTuple_CheckExact(result))
        return;
    PyObject *close = PyObject_GetAttr(result, s_close);
    PyObject *r = NULL;
    if (close == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            return;
        }
    } else {
        r = PyObject_CallNoArgs(close);
        Py_DECREF(close);
    }
    if (r != NULL) {
        Py_DECREF(r);
        return;
    }
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (v != NULL && tb != NULL)
            PyException_SetTraceback(v, tb);
        PyObject *l = v != NULL ? PyObject_CallFunctionObjArgs(self->close_error, v, NULL) : NULL;
        Py_XDECREF(l);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        if (l == NULL)
            defer_error(pending);
        return;
    }
    defer_error(pending);
}

/* A request code from a Python int, as PyLong_AsLongLong() reads it (-1 with a Python error),
 * but without its byte-wise path: a code has 63 bits, three of CPython's digits, which
 * PyLong_AsLongLong() converts through _PyLong_AsByteArray (~90 instructions a request in green
 * mode, where codes come from the hub's batch), PyLong_AsLongLongAndOverflow() digit by digit. */
static long long code_of(PyObject *o)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "int too big to convert");
        return -1;
    }
    return v;
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SP_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SP_ASAN 1
#endif

/* A request greenlet's next request from its hub's batch, as wsgi.py's handler takes it: first
 * what the last request left behind goes (greenlet-locals, in the greenlet's __dict__, and its
 * contextvars). green is (the greenlet, its __dict__, the batch deque, the deque's popleft, the
 * hub's idle list, the hub greenlet's switch, the idle list's limit, GreenletExit)
 * (spawning/green/hub.py). Returns the code, 0 when the batch is empty, or -1 with a Python
 * error. */
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
    long long code = code_of(c);
    Py_DECREF(c);
    return code;
}

/* Once its batch is empty, a request greenlet waits here, in the hub's idle list, for the hub to
 * switch to it with its next request's code, as the hub's _request_worker would have after
 * run() returned, minus the Python frames of the way back and in again. Returns that code; 0
 * when the idle list is full (the greenlet ends: hub.py); GREEN_ENDED when GreenletExit was
 * thrown in while it waited (a kill(), or the greenlet collected): it ends, as it did when it
 * waited in Python; or -1 with a Python error (anything else thrown in). */
#define GREEN_ENDED (-2)
#ifdef SP_ASAN
/* The switch saves this frame with the greenlet's stack (see runner_run). */
__attribute__((no_sanitize_address))
#endif
static long long green_park(PyObject *green)
{
    PyObject *me = PyTuple_GetItem(green, 0), *idle = PyTuple_GetItem(green, 4);
    PyObject *park = PyTuple_GetItem(green, 5), *limit = PyTuple_GetItem(green, 6);
    PyObject *ended = PyTuple_GetItem(green, 7);
    if (ended == NULL)
        return -1;
    Py_ssize_t n = PyList_Size(idle), max = PyLong_AsSsize_t(limit);
    if (n < 0 || (max == -1 && PyErr_Occurred()))
        return -1;
    if (n >= max)
        return 0;
    if (PyList_Append(idle, me) < 0)
        return -1;
    PyObject *c = PyObject_CallNoArgs(park);
    if (c == NULL) {
        if (PyErr_ExceptionMatches(ended)) {
            PyErr_Clear();
            return GREEN_ENDED;
        }
        return -1;
    }
    long long code = code_of(c);
    Py_DECREF(c);
    return code;
}

/* wsgi.input for the request's body (a new reference, or NULL with a Python error): an Input
 * over all of it when the loop holds all of it (a Content-Length body that came with its head,
 * as a form post's does); else Python's Input, which reads and waits as the dispatcher does,
 * given the bytes taken here already. It may outlive the request: Python's keeps the response, which
 * keeps the server. */
static PyObject *body_input(Runner *self, long long code, Resp *resp)
{
    sp_request *r = sp_code_req(self->srv, code);      /* read at once, never kept (sp.h) */
    int64_t cl = r != NULL && r->body == 1 ? r->content_length : -1;
    PyObject *head = NULL, *inp;
    if (cl >= 0) {
        const char *data;
        ssize_t k = sp_code_peek(self->srv, code, &data, (size_t)cl);
        if (k == cl)
            return inp_new(data, (Py_ssize_t)k);
        if (k > 0 && (head = PyBytes_FromStringAndSize(data, (Py_ssize_t)k)) == NULL)
            return NULL;
    }
    if (head != NULL) {
        inp = PyObject_CallFunctionObjArgs(self->new_input, (PyObject *)resp, head, NULL);
        Py_DECREF(head);
    } else {
        inp = PyObject_CallFunctionObjArgs(self->new_input, (PyObject *)resp, NULL);
    }
    return inp;
}

/* run(code, poll_ms, green=None): see the theory of operation. Returns 0 when the last request
 * answered brought no next one and poll_ms < 0 (in a request greenlet, green: when its batch is
 * empty), else what sp_poll_one(poll_ms) then returned when it was not a request (0, -errno); a
 * code Python must run; or the tuple of hand_back(). */
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
    if (green != NULL && (!PyTuple_Check(green) || PyTuple_Size(green) != 8)) {
        PyErr_SetString(PyExc_TypeError, "run(): green is (greenlet, dict, deque, popleft, idle, "
                        "switch, idle limit, GreenletExit)");
        return NULL;
    }
    long long code = code_of(args[0]);
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
            return hand_back(self->srv, code_obj, NULL, resp, NULL, 1, 0, NULL, NULL, NULL);
        }
        PyObject *inp = NULL;
        if (has_body) {
            inp = body_input(self, code, resp);
            if (inp == NULL || PyDict_SetItem(env, s_wsgi_input, inp) < 0)
                return hand_back(self->srv, code_obj, env, resp, NULL, 1, 0, inp, NULL, NULL);
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
            return hand_back(self->srv, code_obj, env, resp, NULL, 1, 0, inp, NULL, NULL);
        PyObject *pending[3] = {NULL, NULL, NULL};   /* see defer_error */
        long long nxt = 0;
        PyObject *body;
        size_t hlen, slen;
        int mine;
        if (!resp->head_sent && Py_IS_TYPE(result, &PyList_Type) && PyList_Size(result) == 1
                && Py_IS_TYPE(body = PyList_GetItem(result, 0), &PyBytes_Type)) {
            int ph = pack_head(self, resp, &hlen, &slen);
            if (ph <= 0) {          /* Python packs it, or says what is wrong with it */
                if (ph < 0 && !PyErr_ExceptionMatches(PyExc_Exception)) {
                    Py_DECREF(result);      /* a KeyboardInterrupt goes to Python's handler */
                    return hand_back(self->srv, code_obj, env, resp, NULL, 1, 0, inp, NULL, NULL);
                }
                PyErr_Clear();
                return hand_back(self->srv, code_obj, env, resp, result, 0, 0, inp, NULL, NULL);
            }
            /* Nothing but us holds the response (the app kept neither start_response nor write,
             * not even weakly): it may serve the next request. Else it must not reach this one
             * any more: a write() the app kept fails instead of writing into the connection's
             * next request. */
            mine = Py_REFCNT(resp) == 1 && resp->weakrefs == NULL;
            if (!mine)
                resp->code = 0;
            Py_ssize_t blen = PyBytes_Size(body);
            nxt = sp_code_answer(self->srv, code, self->hbuf, hlen, PyBytes_AsString(body),
                                 (size_t)blen);
            if (nxt < 0) {                  /* still ours or gone: Python knows each case */
                if (nxt == -EALREADY || nxt == -EINVAL)
                    resp->code = code;      /* still ours: Python's handler ends it */
                return hand_back(self->srv, code_obj, env, resp, result, 0, nxt, inp, NULL, NULL);
            }
            resp->sent = blen;
        } else if (PyObject_IsInstance(result, self->stream_types) != 0) {
            PyErr_Clear();                  /* sendfile, or an error Python meets again */
            return hand_back(self->srv, code_obj, env, resp, result, 0, 0, inp, NULL, NULL);
        } else {
            PyObject *taken, *rest;
            int err;
            long long queued;
            if (stream_c(self, code, resp, result, &taken, &rest, &err, &queued))
                return hand_back(self->srv, code_obj, env, resp, result, err, queued, inp, taken,
                                 rest);
            close_result(self, result, pending);
            mine = 0;                       /* its code is 0: see below */
        }
        Py_DECREF(code_obj);
        if (inp != NULL && Py_IS_TYPE(inp, input_type)) {
            Py_CLEAR(((Inp *)inp)->body);       /* later reads get b'' */
        } else if (inp != NULL) {   /* the same, and its buffer goes back to the pool */
            PyObject *r = PyObject_CallMethodObjArgs(inp, s_release, NULL);
            if (r == NULL)
                defer_error(pending);
            Py_XDECREF(r);
        }
        log_request(self, env, resp, pending);
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
            if (nxt == 0)
                nxt = green_park(green);
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
     "run(code, poll_ms, green=None): runs requests the common way (csrc/py/runner.c)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot runner_slots[] = {
    {Py_tp_doc, (void *)"Runs a worker's common requests in C (csrc/py/runner.c)."},
    {Py_tp_new, (void *)runner_new},
    {Py_tp_dealloc, (void *)runner_dealloc},
    {Py_tp_traverse, (void *)runner_traverse},
    {Py_tp_clear, (void *)runner_clear},
    {Py_tp_methods, runner_methods},
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
    s_close = PyUnicode_InternFromString("close");
    if (s_close == NULL)
        goto fail;
    if (handoff_type == NULL && (handoff_type = PyStructSequence_NewType(&handoff_desc)) == NULL)
        goto fail;
    if (PyObject_SetAttrString(mod, "Handoff", (PyObject *)handoff_type) < 0)
        goto fail;
    static const char *const fixed[6] = { "REMOTE_ADDR", "REQUEST_METHOD", "PATH_INFO",
                                          "QUERY_STRING", "SERVER_PROTOCOL", "RAW_URI" };
    for (int i = 0; i < 6; i++)
        if (fixed_keys[i] == NULL && (fixed_keys[i] = PyUnicode_InternFromString(fixed[i])) == NULL)
            goto fail;
    if ((s_sizeof = PyUnicode_InternFromString("__sizeof__")) == NULL)
        goto fail;
    for (int i = 0; i < 6; i++)
        every_keys[i] = fixed_keys[i];
    every_keys[6] = s_wsgi_input;
    every_keys[7] = s_remote_port;
    if (input_type == NULL) {
        PyObject *it = PyType_FromSpec(&inp_spec);
        if (it == NULL || PyObject_SetAttrString(mod, "Input", it) < 0) {
            Py_XDECREF(it);
            goto fail;
        }
        input_type = (PyTypeObject *)it;    /* kept for the module's life */
        input_alloc = (allocfunc)PyType_GetSlot(input_type, Py_tp_alloc);
    }
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
