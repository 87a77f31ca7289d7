/* glock.c: the green locks' uncontended paths in C on CPython (LockBase, RLockBase). Their
 * Python side is spawning/green/sync.py (Lock, RLock), which subclasses these types and owns
 * every rule of waiting: queueing, FIFO hand-over, timeouts, kills, threads, fork. This file only
 * keeps a Python frame out of the common case: a free lock taken, a lock no one waits for
 * released, an RLock's owner taking it again. Once threading is monkey-patched, a framework takes
 * such locks several times a request (asgiref's Local takes an RLock on every attribute Django
 * reads or sets), and each of them cost a few Python frames.
 *
 * Theory of operation
 * -------------------
 * A Lock's state is the flag held and its Python side's _mutex (a real lock) and _waiters (a
 * deque). Everything here runs with the GIL held and calls nothing that could run Python code or
 * let another thread in between a test and its change, so each method's test-and-change is
 * atomic between OS threads, as the real lock's non-blocking acquire the Python fallback uses for
 * held is:
 *
 *   - acquire() without a timeout takes a free lock (held 0 -> 1); anything else (held, a
 *     timeout) goes to the subclass's _acquire_slow(blocking, timeout);
 *   - release() frees a held lock that no one waits for (_waiters empty: held 1 -> 0), without
 *     the mutex; anything else goes to _release_slow(), which hands the lock over under the
 *     mutex. A waiter is queued before its last try to take the lock (sync.py, _acquire_slow), so
 *     a release either sees it queued or leaves the lock free for that try: no wake-up is lost;
 *   - _take() is acquire's test-and-change alone, for the slow path; _drop() frees (the slow
 *     release, when no one waits); _free() sets the lock free after a fork.
 *
 * An RLock's owner is the current greenlet (greenlet's C API, PyGreenlet_GetCurrent), its count
 * and its _block (a Lock) are members the Python side reads and sets too. acquire() by the owner
 * counts, a free _block is taken as Lock's acquire takes it, else _acquire_slow(blocking,
 * timeout) runs; release() by the owner counts down and releases _block as Lock's release does.
 * _is_owned() is the owner test (Condition's). */
#include "py.h"

#ifndef SP_NO_PYFAST

/* greenlet's C API (greenlet/greenlet.h, whose capsule is an array of pointers): only
 * PyGreenlet_GetCurrent is used, found by its index there. Taken the first time a lock is made:
 * spawning.green.sync imports greenlet before it makes one. */
#define GREENLET_GETCURRENT_NUM 4

static PyObject *s_acquire_slow;    /* interned "_acquire_slow" */
static PyObject *s_release_slow;    /* interned "_release_slow" */

typedef struct {
    PyObject_HEAD
    char held;
    PyObject *mutex;        /* _mutex and _waiters: the Python side's (sync.py) */
    PyObject *waiters;
    PyObject *weakrefs;
} GLock;

typedef struct {
    PyObject_HEAD
    PyObject *owner;        /* _owner: the greenlet holding it, or NULL (None) */
    Py_ssize_t count;       /* _count: its acquires not yet released */
    PyObject *block;        /* _block: the Lock under it */
    PyObject *weakrefs;
} GRLock;

static PyTypeObject *glock_type;    /* LockBase */
static PyTypeObject *grlock_type;   /* RLockBase */

static int need_getcurrent(void)
{
    if (gl_getcurrent != NULL)
        return 0;
    void **api = (void **)PyCapsule_Import("greenlet._C_API", 0);
    if (api == NULL)
        return -1;
    gl_getcurrent = (getcurrent_fn)api[GREENLET_GETCURRENT_NUM];
    return 0;
}

/* Calls the method name of self with args and kwargs (a tuple, a dict or NULL): the slow paths. */
SP_GREEN_FRAME static PyObject *call_slow(PyObject *self, PyObject *name, PyObject *args, PyObject *kwargs)
{
    PyObject *meth = PyObject_GetAttr(self, name);
    if (meth == NULL)
        return NULL;
    PyObject *r = PyObject_Call(meth, args, kwargs);
    Py_DECREF(meth);
    return r;
}

/* The uncontended acquire: a free lock taken, with no timeout asked for (acquire(), acquire(b),
 * acquire(blocking=b)). 1 if taken, 0 when the slow path must decide. */
static inline int lock_take_fast(GLock *l, PyObject *args, PyObject *kwargs)
{
    if (l->held)
        return 0;
    if (kwargs != NULL) {
        if (PyDict_Size(kwargs) != 1 || PyDict_GetItemString(kwargs, "blocking") == NULL)
            return 0;
        if (PyTuple_Size(args) != 0)
            return 0;
    } else if (PyTuple_Size(args) > 1) {
        return 0;
    }
    l->held = 1;
    return 1;
}

/* Lock's release: frees the lock when it is held and no one waits, else _release_slow() decides
 * (a hand-over, or the error). A new reference to None, or NULL with a Python error. */
static PyObject *lock_release_impl(GLock *l)
{
    if (l->held && l->waiters != NULL) {
        Py_ssize_t n = PyObject_Size(l->waiters);     /* a deque's: runs no Python code */
        if (n < 0)
            return NULL;
        if (n == 0) {
            l->held = 0;
            Py_RETURN_NONE;
        }
    }
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL)
        return NULL;
    PyObject *r = call_slow((PyObject *)l, s_release_slow, empty, NULL);
    Py_DECREF(empty);
    return r;
}

/* ---- LockBase ------------------------------------------------------------------------------ */

/* tp_new of both types: a fresh instance, once greenlet's C API is in hand (an RLock's owner is
 * the current greenlet). */
static PyObject *glock_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    if (need_getcurrent() < 0)
        return NULL;
    return ((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
}

static int glock_traverse(GLock *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));   /* instances of heap types hold their type (3.9+) */
    Py_VISIT(self->mutex);
    Py_VISIT(self->waiters);
    return 0;
}

static int glock_clear(GLock *self)
{
    Py_CLEAR(self->mutex);
    Py_CLEAR(self->waiters);
    return 0;
}

static void glock_dealloc(GLock *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    glock_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* acquire(blocking=True, timeout=-1), also __enter__. */
SP_GREEN_FRAME static PyObject *glock_acquire(GLock *self, PyObject *args, PyObject *kwargs)
{
    if (lock_take_fast(self, args, kwargs))
        Py_RETURN_TRUE;
    return call_slow((PyObject *)self, s_acquire_slow, args, kwargs);
}

static PyObject *glock_release(GLock *self, PyObject *unused)
{
    (void)unused;
    return lock_release_impl(self);
}

/* __exit__(*exc_info) */
static PyObject *glock_exit(GLock *self, PyObject *args)
{
    (void)args;
    return lock_release_impl(self);
}

static PyObject *glock_locked(GLock *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(self->held);
}

static PyObject *glock_take(GLock *self, PyObject *unused)
{
    (void)unused;
    if (self->held)
        Py_RETURN_FALSE;
    self->held = 1;
    Py_RETURN_TRUE;
}

static PyObject *glock_drop(GLock *self, PyObject *unused)
{
    (void)unused;
    self->held = 0;
    Py_RETURN_NONE;
}

static PyMethodDef glock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))glock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1): a free lock taken here, else _acquire_slow()."},
    {"__enter__", (PyCFunction)(void (*)(void))glock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)glock_release, METH_NOARGS,
     "release(): a lock no one waits for freed here, else _release_slow()."},
    {"__exit__", (PyCFunction)glock_exit, METH_VARARGS, NULL},
    {"locked", (PyCFunction)glock_locked, METH_NOARGS, "Whether the lock is held."},
    {"_take", (PyCFunction)glock_take, METH_NOARGS, "Takes the lock if free: whether it did."},
    {"_drop", (PyCFunction)glock_drop, METH_NOARGS, "Frees the lock (no one waits for it)."},
    {"_free", (PyCFunction)glock_drop, METH_NOARGS, "Sets the lock free (after a fork)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef glock_members[] = {
    {"_mutex", T_OBJECT_EX, offsetof(GLock, mutex), 0, NULL},
    {"_waiters", T_OBJECT_EX, offsetof(GLock, waiters), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(GLock, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot glock_slots[] = {
    {Py_tp_doc, (void *)"spawning.green.Lock's uncontended paths (csrc/py/glock.c)."},
    {Py_tp_new, (void *)glock_new},
    {Py_tp_dealloc, (void *)glock_dealloc},
    {Py_tp_traverse, (void *)glock_traverse},
    {Py_tp_clear, (void *)glock_clear},
    {Py_tp_methods, glock_methods},
    {Py_tp_members, glock_members},
    {0, NULL},
};

static PyType_Spec glock_spec = {
    "spawning._core.LockBase", sizeof(GLock), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, glock_slots,
};

/* ---- RLockBase ----------------------------------------------------------------------------- */

static int grlock_traverse(GRLock *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->owner);
    Py_VISIT(self->block);
    return 0;
}

static int grlock_clear(GRLock *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->block);
    return 0;
}

static void grlock_dealloc(GRLock *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    grlock_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* acquire(blocking=True, timeout=-1), also __enter__. */
SP_GREEN_FRAME static PyObject *grlock_acquire(GRLock *self, PyObject *args, PyObject *kwargs)
{
    PyObject *me = gl_getcurrent();
    if (me == NULL)
        return NULL;
    if (self->owner == me) {
        Py_DECREF(me);
        self->count++;
        Py_RETURN_TRUE;
    }
    if (self->block != NULL && PyObject_TypeCheck(self->block, glock_type)
            && lock_take_fast((GLock *)self->block, args, kwargs)) {
        PyObject *old = self->owner;
        self->owner = me;       /* the reference gl_getcurrent gave */
        self->count = 1;
        Py_XDECREF(old);
        Py_RETURN_TRUE;
    }
    Py_DECREF(me);
    return call_slow((PyObject *)self, s_acquire_slow, args, kwargs);
}

/* release(), also __exit__ (whose arguments are ignored). */
static PyObject *grlock_release(GRLock *self, PyObject *unused)
{
    (void)unused;
    PyObject *me = gl_getcurrent();
    if (me == NULL)
        return NULL;
    Py_DECREF(me);      /* only compared: the owner's reference keeps it alive if it is */
    if (self->owner != me || self->count <= 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    if (--self->count)
        Py_RETURN_NONE;
    PyObject *old = self->owner;
    self->owner = NULL;
    Py_DECREF(old);
    if (self->block != NULL && PyObject_TypeCheck(self->block, glock_type))
        return lock_release_impl((GLock *)self->block);
    return PyObject_CallMethod(self->block, "release", NULL);
}

static PyObject *grlock_is_owned(GRLock *self, PyObject *unused)
{
    (void)unused;
    PyObject *me = gl_getcurrent();
    if (me == NULL)
        return NULL;
    Py_DECREF(me);
    return PyBool_FromLong(self->owner == me);
}

static PyMethodDef grlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))grlock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1): the owner's again or a free lock here, else _acquire_slow()."},
    {"__enter__", (PyCFunction)(void (*)(void))grlock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)grlock_release, METH_NOARGS, "release(): by the owner only."},
    {"__exit__", (PyCFunction)grlock_release, METH_VARARGS, NULL},
    {"_is_owned", (PyCFunction)grlock_is_owned, METH_NOARGS, "Whether the current greenlet owns it."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef grlock_members[] = {
    {"_owner", T_OBJECT, offsetof(GRLock, owner), 0, NULL},
    {"_count", T_PYSSIZET, offsetof(GRLock, count), 0, NULL},
    {"_block", T_OBJECT_EX, offsetof(GRLock, block), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(GRLock, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot grlock_slots[] = {
    {Py_tp_doc, (void *)"spawning.green.RLock's uncontended paths (csrc/py/glock.c)."},
    {Py_tp_new, (void *)glock_new},
    {Py_tp_dealloc, (void *)grlock_dealloc},
    {Py_tp_traverse, (void *)grlock_traverse},
    {Py_tp_clear, (void *)grlock_clear},
    {Py_tp_methods, grlock_methods},
    {Py_tp_members, grlock_members},
    {0, NULL},
};

static PyType_Spec grlock_spec = {
    "spawning._core.RLockBase", sizeof(GRLock), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, grlock_slots,
};

static int glock_setup(PyObject *mod)
{
    if (grlock_type != NULL)
        return 0;
    if ((s_acquire_slow = PyUnicode_InternFromString("_acquire_slow")) == NULL
            || (s_release_slow = PyUnicode_InternFromString("_release_slow")) == NULL)
        return -1;
    PyObject *l = PyType_FromSpec(&glock_spec);
    PyObject *r = l != NULL ? PyType_FromSpec(&grlock_spec) : NULL;
    if (r == NULL || PyObject_SetAttrString(mod, "LockBase", l) < 0
            || PyObject_SetAttrString(mod, "RLockBase", r) < 0) {
        Py_XDECREF(l);
        Py_XDECREF(r);
        return -1;
    }
    glock_type = (PyTypeObject *)l;     /* kept for the module's life */
    grlock_type = (PyTypeObject *)r;
    return 0;
}

#endif
