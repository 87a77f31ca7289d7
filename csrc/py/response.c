/* response.c -- ResponseBase: a response's per-request state, and start_response() in C (the
 * CPython part; see runner.c's theory of operation, py.h for what the files share). */
#include "py.h"

#ifndef SP_NO_PYFAST

/* ---- ResponseBase ------------------------------------------------------------------------ */

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
    {Py_tp_doc, (void *)"A response's per-request state, and start_response() (csrc/py/response.c)."},
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

#endif
