/* glocal.c: spawning.green.local's plain reads in C on CPython (LocalBase). Its Python side is
 * spawning/green/local.py, which subclasses this type and owns every other rule: a subclass's
 * attributes (descriptors, __init__ run in each greenlet), the names local's class defines,
 * writes and deletion. (Writes stay Python's: object.__setattr__, which local.py's general way
 * uses, refuses a type whose C base sets attributes its own way.) Once threading is
 * monkey-patched, Django's connections (asgiref's thread-critical Local) read such a local
 * several times a request, most often for a name it does not hold, and each read cost a Python
 * frame and a Python-formatted AttributeError.
 *
 * Each greenlet keeps a local's attributes in a dict of its own, in its own __dict__ under the
 * local's key (_local__key), so that they die with it (and with the request: the runner clears a
 * request greenlet's __dict__ between requests). A read on an instance of local itself (no
 * subclass) of a str name local's class does not define is that dict's alone: done here, the
 * dict made first if this greenlet has none yet (local itself has no __init__ to run). Any other
 * read calls the function local.py binds (LocalBase._bind). */
#include "py.h"

#ifndef SP_NO_PYFAST

typedef struct {
    PyObject_HEAD
    PyObject *key;      /* _local__key: a str */
} GLocal;

static PyTypeObject *glocal_type;       /* LocalBase */
static PyTypeObject *local_exact;       /* spawning.green.local.local, once bound */
static PyObject *local_class_names;     /* the frozenset of names its class defines */
static PyObject *local_get_slow;        /* callable(self, name) */

/* Whether self and name take the fast way: 1, 0, or -1 with a Python error. */
static int local_plain(GLocal *self, PyObject *name)
{
    if (Py_TYPE(self) != local_exact || !PyUnicode_CheckExact(name) || self->key == NULL)
        return 0;
    int in = PySet_Contains(local_class_names, name);
    return in < 0 ? -1 : !in;
}

/* The current greenlet's dict for self, made if it has none (a new reference), or NULL with a
 * Python error. */
static PyObject *local_dict(GLocal *self)
{
    PyObject *g = gl_getcurrent();
    if (g == NULL)
        return NULL;
    PyObject *gd = PyObject_GenericGetDict(g, NULL);
    Py_DECREF(g);
    if (gd == NULL)
        return NULL;
    PyObject *d = PyDict_GetItemWithError(gd, self->key);
    if (d != NULL) {
        Py_INCREF(d);
    } else if (!PyErr_Occurred() && (d = PyDict_New()) != NULL && PyDict_SetItem(gd, self->key, d) < 0) {
        Py_CLEAR(d);
    }
    Py_DECREF(gd);
    return d;
}

static PyObject *glocal_getattro(GLocal *self, PyObject *name)
{
    int plain = local_plain(self, name);
    if (plain < 0)
        return NULL;
    if (!plain)
        return PyObject_CallFunctionObjArgs(local_get_slow, (PyObject *)self, name, NULL);
    PyObject *d = local_dict(self);
    if (d == NULL)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(d, name);
    Py_XINCREF(v);
    Py_DECREF(d);
    if (v == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_AttributeError, "'local' object has no attribute '%U'", name);
    return v;
}

static PyObject *glocal_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    if (local_exact == NULL) {
        PyErr_SetString(PyExc_TypeError, "LocalBase: spawning.green.local has not bound it");
        return NULL;
    }
    return ((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
}

static int glocal_traverse(GLocal *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->key);
    return 0;
}

static int glocal_clear(GLocal *self)
{
    Py_CLEAR(self->key);
    return 0;
}

static void glocal_dealloc(GLocal *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    glocal_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* LocalBase._bind(local, class_names, get_slow), once, from local.py. */
static PyObject *glocal_bind(PyObject *cls, PyObject *args)
{
    PyObject *exact, *names, *get;
    if (!PyArg_ParseTuple(args, "OOO:_bind", &exact, &names, &get))
        return NULL;
    if (!PyType_Check(exact) || !PyType_IsSubtype((PyTypeObject *)exact, (PyTypeObject *)cls)
            || !PyFrozenSet_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "_bind(local subclass, frozenset, get_slow)");
        return NULL;
    }
    if (need_getcurrent() < 0)
        return NULL;
    PyObject *old[3] = { (PyObject *)local_exact, local_class_names, local_get_slow };
    Py_INCREF(exact);
    Py_INCREF(names);
    Py_INCREF(get);
    local_exact = (PyTypeObject *)exact;    /* kept for the module's life */
    local_class_names = names;
    local_get_slow = get;
    for (int i = 0; i < 3; i++)
        Py_XDECREF(old[i]);
    Py_RETURN_NONE;
}

static PyMethodDef glocal_methods[] = {
    {"_bind", (PyCFunction)glocal_bind, METH_VARARGS | METH_CLASS,
     "_bind(local, class_names, get_slow): the class whose instances take the fast way, the "
     "names its class defines, and what every other read calls."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef glocal_members[] = {
    {"_local__key", T_OBJECT_EX, offsetof(GLocal, key), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot glocal_slots[] = {
    {Py_tp_doc, (void *)"spawning.green.local's plain attribute reads (csrc/py/glocal.c)."},
    {Py_tp_new, (void *)glocal_new},
    {Py_tp_dealloc, (void *)glocal_dealloc},
    {Py_tp_traverse, (void *)glocal_traverse},
    {Py_tp_clear, (void *)glocal_clear},
    {Py_tp_getattro, (void *)glocal_getattro},
    {Py_tp_methods, glocal_methods},
    {Py_tp_members, glocal_members},
    {0, NULL},
};

static PyType_Spec glocal_spec = {
    "spawning._core.LocalBase", sizeof(GLocal), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, glocal_slots,
};

static int glocal_setup(PyObject *mod)
{
    if (glocal_type != NULL)
        return 0;
    PyObject *t = PyType_FromSpec(&glocal_spec);
    if (t == NULL || PyObject_SetAttrString(mod, "LocalBase", t) < 0) {
        Py_XDECREF(t);
        return -1;
    }
    glocal_type = (PyTypeObject *)t;    /* kept for the module's life */
    return 0;
}

#endif
