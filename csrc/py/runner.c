/* runner.c: the request path on CPython, written against the CPython API (the stable ABI of
 * 3.10, as the rest of the module) instead of in Python. Its contract is runner.h. The part is
 * in files of one concept each, which py.h ties together and unit.c compiles as one unit:
 * response.c (ResponseBase, start_response), input.c (Input, a held body's wsgi.input),
 * environ.c (the environ from the request's head), answer.c (head packing, answering, streaming,
 * close()), hub.c (the green hub's hot turn, GreenLoop), glock.c and glocal.c (the green locks'
 * uncontended paths, green local's plain reads) and this file (the Runner, its
 * hand-off to Python, the run loop, sp_py_setup).
 *
 * Theory of operation
 * -------------------
 * Every request a worker takes goes first to Runner.run(code, poll_ms, green) (from handle() in
 * spawning/wsgi/handler.py), which runs it and the ones after it, as long as each answer is one this part knows:
 *
 *   1. The environ (environ.c), made from the head the core kept of the request (sp.h,
 *      sp_head), walked with env.c's iterator: a copy of the listener's constant environ, already sized for a
 *      browser's headers (roomy_base), interned keys from a small table, one latin-1 str per
 *      value, shared with the last request whose value for that key had the same bytes
 *      (env_value); a trusted proxy's headers then rewrite it (spawning.wsgi.forwarded), only
 *      when the head carries one. A keep-alive client repeating its request byte for byte gets a
 *      copy of the environ its connection's first repeat got (request_env). A Content-Length
 *      body the loop already holds is wsgi.input as a C Input (input.c, body_input); any other,
 *      spawning/wsgi/input.py's.
 *   2. The app, called with a ResponseBase's start_response (response.c: C members for the
 *      per-request state; wsgi.Response adds write() and the rest in Python).
 *   3. The answer (answer.c): a list of one bytes object in one crossing (sp_code_answer: head,
 *      body and finish, and in thread mode the thread's next request); any other iterable but a
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
 * What this part does not finish goes to Python as a Handoff (this file, hand_back), the request
 * as it stands (its environ, response, result, the exception, what was taken of the iterator),
 * and spawning/wsgi/'s general path, which is the whole behaviour (PyPy runs only it), goes on
 * from there under the same rules: both paths put the same bytes on the wire
 * (tests/test_response_matrix.py).
 *
 * sp_py_setup() makes the types and sets them as attributes of the spawning._core module. It runs
 * with the GIL held (spawning/_build.py, KEEP_GIL). The runner's polls release it. */
#include "py.h"

#ifndef SP_NO_PYFAST

/* ---- Runner ----------------------------------------------------------------------------- */

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
    Py_VISIT(self->spare_inp);
    Py_VISIT(self->base_envs);
    Py_VISIT(self->empty);
    Py_VISIT(self->forwarded);
    return shapes_traverse(self, visit, arg);
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
    Py_CLEAR(self->spare_inp);
    Py_CLEAR(self->base_envs);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->forwarded);
    shapes_clear(self);
    return 0;
}

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
    /* The app's start_response is ResponseBase's method, bound here (start_of): a class that
     * defined its own would be skipped, so it is refused. */
    PyObject *mine = PyObject_GetAttr((PyObject *)resp_type, s_start_response);
    PyObject *theirs = mine != NULL ? PyObject_GetAttr(cls, s_start_response) : NULL;
    Py_XDECREF(mine);
    Py_XDECREF(theirs);
    if (theirs == NULL || theirs != mine) {
        if (theirs != NULL)
            PyErr_SetString(PyExc_TypeError,
                            "Runner(): the response class must keep ResponseBase's start_response");
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(log); self->log = log;
    Py_INCREF(empty); self->empty = empty;
    Py_INCREF(fwd); self->forwarded = fwd;
    Py_INCREF(stypes); self->stream_types = stypes;
    Py_INCREF(cerr); self->close_error = cerr;
    return (PyObject *)self;
}

/* resp.start_response, a new bound method: made from ResponseBase's method itself (the class
 * keeps it: runner_new), without the attribute look-up (its type's MRO and the descriptor: ~150
 * instructions a request). */
static PyObject *start_of(Resp *resp)
{
    return PyCFunction_NewEx(&resp_methods[0], (PyObject *)resp, NULL);
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

/* Whether Python streams the result itself (a wsgi.file_wrapper, for sendfile): 1 when its type
 * is one of stream_types or a subclass, as wsgi.py's stream() asks (by the type, which is what
 * makes it one: isinstance() would also look __class__ up on each of the other results, every
 * framework response, ~250 instructions, so that an object could pass for one); -1 with a Python
 * error when stream_types is not a tuple of types and isinstance() raised. */
static int streamed_by_python(Runner *self, PyObject *result)
{
    PyObject *types = self->stream_types;
    if (!PyTuple_Check(types))
        return PyObject_IsInstance(result, types);
    for (Py_ssize_t i = 0; i < PyTuple_Size(types); i++) {
        PyObject *t = PyTuple_GetItem(types, i);
        if (!PyType_Check(t))
            return PyObject_IsInstance(result, types);
        if (PyType_IsSubtype(Py_TYPE(result), (PyTypeObject *)t))
            return 1;
    }
    return 0;
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

/* A request greenlet's state tuple, green (spawning/green/hub.py): (the greenlet, its __dict__,
 * the batch deque, the deque's popleft, the hub's idle list, the hub greenlet's switch, the idle
 * list's limit, GreenletExit), its items read once per run() (borrowed: the caller holds the
 * tuple, which cannot change, for the whole call) rather than once per request (PyTuple_GetItem
 * is a call in the stable ABI: ~45 instructions a request). */
typedef struct {
    PyObject *me, *mine, *batch, *take, *idle, *park, *limit, *ended;
    Py_ssize_t max_idle;    /* limit, read once too: green_park runs after every batch */
    GreenLoop *L;           /* batch when it is the C hub's GreenLoop (hub.c), else NULL */
} Green;

/* Fills g from green, checked as run() takes it: 0, or -1 with a Python error. */
static int green_unpack(PyObject *green, Green *g)
{
    if (!PyTuple_Check(green) || PyTuple_Size(green) != 8) {
        PyErr_SetString(PyExc_TypeError, "run(): green is (greenlet, dict, deque, popleft, idle, "
                        "switch, idle limit, GreenletExit)");
        return -1;
    }
    PyObject **items[8] = { &g->me, &g->mine, &g->batch, &g->take, &g->idle, &g->park, &g->limit,
                            &g->ended };
    for (int i = 0; i < 8; i++)
        if ((*items[i] = PyTuple_GetItem(green, i)) == NULL)
            return -1;
    g->max_idle = PyLong_AsSsize_t(g->limit);
    if (g->max_idle == -1 && PyErr_Occurred())
        return -1;
    g->L = Py_IS_TYPE(g->batch, greenloop_type) ? (GreenLoop *)g->batch : NULL;
    return 0;
}

/* A request greenlet's next request from its hub's batch, as wsgi.py's handler takes it: first
 * what the last request left behind goes (greenlet-locals, in the greenlet's __dict__, and its
 * contextvars). Returns the code, 0 when the batch is empty, or -1 with a Python error. */
static long long green_next(const Green *g)
{
    if (PyDict_Size(g->mine) > 0)
        PyDict_Clear(g->mine);
    /* A data descriptor's __get__ is what getattr() would call, minus the lookup (hub.c). */
    GreenLoop *L = g->L;
    PyObject *ctx = L != NULL && L->ctx_get != NULL && (PyObject *)Py_TYPE(g->me) == L->glet_type
                    ? L->ctx_get(L->ctx_descr, g->me, L->glet_type)
                    : PyObject_GetAttr(g->me, s_gr_context);
    if (ctx == NULL)
        return -1;
    int set = ctx != Py_None;
    Py_DECREF(ctx);
    if (set && PyObject_SetAttr(g->me, s_gr_context, Py_None) < 0)
        return -1;
    if (L != NULL)                                  /* the C hub's batch (hub.c): no objects */
        return L->head < L->tail ? L->codes[L->head++] : 0;
    Py_ssize_t n = PyObject_Size(g->batch);
    if (n <= 0)
        return n < 0 ? -1 : 0;
    PyObject *c = PyObject_CallNoArgs(g->take);
    if (c == NULL)
        return -1;
    long long code = code_of(c);
    Py_DECREF(c);
    return code;
}

/* Once its batch is empty, a request greenlet under the C hub first polls in the hub's place
 * (hub.c, gl_poll_here: the next batch runs here, without two switches), and when the hub has
 * work instead, or under the Python hub, waits here, in the hub's idle list, for the hub to
 * switch to it with its next request's code, as the hub's _request_worker would have after
 * run() returned, minus the Python frames of the way back and in again. Returns that code; 0
 * when the idle list is full (the greenlet ends: hub.py); GREEN_ENDED when GreenletExit was
 * thrown in while it waited (a kill(), or the greenlet collected): it ends, as it did when it
 * waited in Python; or -1 with a Python error (anything else thrown in). */
#define GREEN_ENDED (-2)
SP_GREEN_FRAME static long long green_park(const Green *g)
{
    Py_ssize_t n = PyList_Size(g->idle);
    if (n < 0)
        return -1;
    if (n >= g->max_idle)
        return 0;
    if (g->L != NULL) {
        long long code = gl_poll_here(g->L);
        if (code > 0)
            return code;
    }
    if (PyList_Append(g->idle, g->me) < 0)
        return -1;
    PyObject *c = PyObject_CallNoArgs(g->park);
    if (c == NULL) {
        if (PyErr_ExceptionMatches(g->ended)) {
            PyErr_Clear();
            return GREEN_ENDED;
        }
        return -1;
    }
    long long code = code_of(c);
    Py_DECREF(c);
    return code;
}

/* run(code, poll_ms, green=None): see the theory of operation. Returns 0 when the last request
 * answered brought no next one and poll_ms < 0 (in a request greenlet, green: when its batch is
 * empty), else what sp_poll_one(poll_ms) then returned when it was not a request (0, -errno); a
 * code Python must run; or the tuple of hand_back(). */
SP_GREEN_FRAME static PyObject *runner_run(Runner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run(code, poll_ms, green=None)");
        return NULL;
    }
    Green gs, *green = NULL;
    if (nargs == 3 && args[2] != Py_None) {
        if (green_unpack(args[2], &gs) < 0)
            return NULL;
        green = &gs;
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
        PyObject *sr = start_of(resp);
        PyObject *result = NULL;
        if (sr != NULL) {
            /* The arguments on the C stack (vectorcall, where the app has it): no tuple. */
            result = PyObject_CallFunctionObjArgs(self->app, env, sr, NULL);
            Py_DECREF(sr);
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
        } else if (streamed_by_python(self, result) != 0) {
            PyErr_Clear();                  /* sendfile, or an error Python meets again */
            return hand_back(self->srv, code_obj, env, resp, result, 0, 0, inp, NULL, NULL);
        } else {
            PyObject *taken, *rest;
            int err;
            long long queued;
            if (stream_c(self, code, resp, result, &taken, &rest, &err, &queued, &nxt, &mine))
                return hand_back(self->srv, code_obj, env, resp, result, err, queued, inp, taken,
                                 rest);
            close_result(self, result, pending);    /* after the answer, as PEP 3333 has it */
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
        if (inp != NULL && Py_REFCNT(inp) == 1 && self->spare_inp == NULL && Py_IS_TYPE(inp, input_type))
            self->spare_inp = inp;      /* released above, held by no one: the next body's */
        else
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
        input_free = (freefunc)PyType_GetSlot(input_type, Py_tp_free);
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
    if (hub_setup(mod) < 0 || glock_setup(mod) < 0 || glocal_setup(mod) < 0) {
        Py_DECREF(rt);
        Py_DECREF(mod);
        goto fail;
    }
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
