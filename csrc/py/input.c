/* input.c -- Input: wsgi.input of a body the loop already holds, in C, and body_input, which
 * picks a request's wsgi.input (the CPython part; see runner.c's theory of operation). */
#include "py.h"

#ifndef SP_NO_PYFAST

/* ---- Input: wsgi.input of a body the loop already holds ----------------------------------
 *
 * A Content-Length body that came with its head (a form post) is taken whole when the request
 * starts (body_input) and read from memory, with the rules of spawning/wsgi/input.py (read(n)
 * is a file's read: fewer than n bytes only at the end; readline(n), readlines(hint),
 * iteration; b'' once the request is over): no Python frame per call. Any other body is
 * Python's Input, which waits for bytes as the dispatcher does. */

static void inp_dealloc(Inp *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->body);
    input_free(self);
    Py_DECREF(tp);      /* instances of heap types hold their type */
}

/* An Input over a copy of data[0..n), or NULL with a Python error: the runner's spare (one
 * that finished a request held by no one else, its body released) when it has one, which
 * spares an allocation and a deallocation on every request with a body. */
static PyObject *inp_new(Runner *runner, const char *data, Py_ssize_t n)
{
    PyObject *body = PyBytes_FromStringAndSize(data, n);
    if (body == NULL)
        return NULL;
    Inp *self = (Inp *)runner->spare_inp;
    runner->spare_inp = NULL;
    if (self == NULL && (self = (Inp *)input_alloc(input_type, 0)) == NULL) {
        Py_DECREF(body);
        return NULL;
    }
    self->body = body;
    self->pos = 0;
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
    if (nargs == 1 && kwnames == NULL && PyLong_CheckExact(args[0])) {
        /* read(int(CONTENT_LENGTH)), the usual call: arg_size's answer without its calls */
        size = PyLong_AsSsize_t(args[0]);
        if (size != -1 || !PyErr_Occurred())
            return inp_take(self, size < 0 ? -1 : size);
        PyErr_Clear();      /* too large: arg_size clips it */
    }
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
    {Py_tp_doc, (void *)"wsgi.input of a body read whole with its head (csrc/py/input.c)."},
    {Py_tp_dealloc, (void *)inp_dealloc},
    {Py_tp_iter, (void *)PyObject_SelfIter},
    {Py_tp_iternext, (void *)inp_next},
    {Py_tp_methods, inp_methods},
    {0, NULL},
};

static PyType_Spec inp_spec = {
    "spawning._core.Input", sizeof(Inp), 0, Py_TPFLAGS_DEFAULT, inp_slots,
};

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
            return inp_new(self, data, (Py_ssize_t)k);
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

#endif
