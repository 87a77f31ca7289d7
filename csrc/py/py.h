/* py.h -- the CPython part's internal header: the structs its files share (the response's, the
 * held body's Input, the runner's, the hub's GreenLoop), the objects sp_py_setup makes for all of
 * them (interned strs, types), and what each file calls of another. The files (response.c,
 * input.c, environ.c, answer.c, runner.c, hub.c, glock.c, glocal.c) are compiled as one unit, unit.c, in
 * that order, and their functions stay static to it. Not part of the API: the binding sees only
 * runner.h. */
#ifndef SP_PY_H
#define SP_PY_H

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

/* A function whose frame can be on a greenlet's C stack when that greenlet switches: it calls
 * Python code that may wait (the app, its iterable, close(), the access log, a park or a poll
 * that switches). greenlet saves and restores such stacks with memcpy, which under ASan reads
 * the frame's redzones and is reported; these frames go unsanitized instead. Marked whether or
 * not the compiler inlines it today: a function that grows stops being inlined into its (marked)
 * caller, and its own frame then needs the mark (answer.c's stream_c did). */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SP_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SP_ASAN 1
#endif
#ifdef SP_ASAN
#define SP_GREEN_FRAME __attribute__((no_sanitize_address))
#else
#define SP_GREEN_FRAME
#endif

/* ---- response.c: ResponseBase -------------------------------------------------------------- */

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

/* ---- input.c: Input ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *body;     /* bytes: the whole body; NULL once released (reads then get b'') */
    Py_ssize_t pos;     /* bytes of it read */
} Inp;

static PyTypeObject *input_type;    /* Input */
static allocfunc input_alloc;
static freefunc input_free;

/* ---- runner.c: the Runner ------------------------------------------------------------------ */

#define HEAD_OBJS 17    /* a status and 8 headers: what follows is packed every time */

typedef struct {
    PyObject_HEAD
    sp_server *srv;
    PyObject *app;
    struct env_shape *shapes;   /* environ.c's templates by the head's field names (SHAPES of
                                   them), or NULL until the first is kept */
    unsigned shapes_gen;        /* counts the changes to shapes (environ.c, env_from_head) */
    PyObject *conn_envs;  /* dict: repeat code -> environ to copy, for bodyless requests... */
    PyObject *body_envs;  /* ...and for requests with a body (see request_env) */
    PyObject *new_input;  /* callable(response[, head]) -> Python's wsgi.input for a body, head
                             the bytes of it taken already (body_input) */
    PyObject *resp_cls;   /* the handler's ResponseBase subclass */
    PyObject *log;        /* callable(environ, status, sent, headers) that never raises, or None */
    PyObject *spare;      /* a response object no one else holds, for the next request */
    PyObject *spare_inp;  /* an Input no one else holds (body NULL), for the next body */
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

/* ---- hub.c: GreenLoop ------------------------------------------------------------------------ */

#define HUB_BATCH 256           /* events one poll returns at most (the hub's _BATCH) */

typedef struct {
    PyObject_HEAD
    sp_server *srv;
    PyObject *owner;        /* keeps srv alive (the hub's cffi object) */
    PyObject *ready;        /* the hub's ready queue and thread calls (deques) */
    PyObject *thread_calls;
    PyObject *idle;         /* list: the request greenlets waiting for a code */
    PyObject *spawn;        /* callable(code): a new request greenlet runs it; None: no handler */
    PyObject *finished;     /* callable() -> the hub's finish test */
    PyObject *glet_type;    /* greenlet.greenlet... */
    PyObject *switch_fn;    /* ...and its unbound switch */
    PyObject *ctx_descr;    /* ...its gr_context descriptor, and that descriptor's __get__ (NULL if */
    descrgetfunc ctx_get;   /* none: green_next reads the attribute the long way) */
    PyObject *timers;       /* the hub's timer heap (a list, the same object for the hub's life) */
    int max_poll_ms;        /* the finish test is looked at least this often (_MAX_POLL_MS) */
    int interrupted;        /* interrupt() was called: turn() returns at once */
    int finish_idle;        /* watch_finish(False): finished() is false until watch_finish(True) */
    int head, tail;         /* codes[head..tail): the batch's requests not yet taken */
    /* What a request greenlet's own poll (gl_poll_here) found for the hub, which turn() hands
     * over before anything else: fd events ev[0..nfd), a poll's -errno, a Python error. */
    int nfd, rc;
    PyObject *exc_type, *exc_value, *exc_tb;
    int64_t codes[HUB_BATCH];
    sp_event ev[HUB_BATCH];
} GreenLoop;

static PyTypeObject *greenloop_type;    /* GreenLoop */

/* ---- what the files call of one another ---------------------------------------------------- */

/* input.c: the request's wsgi.input, a C Input when the loop holds its whole body, else Python's
 * (a new reference, or NULL with a Python error). */
static PyObject *body_input(Runner *self, long long code, Resp *resp);

/* environ.c: what a listener's environs are copied from, its constant environ with the keys every
 * request sets, roomy enough for a browser's headers if roomy (a new dict, or NULL with a Python
 * error). */
static PyObject *base_env(PyObject *base, PyObject *empty, int roomy);
/* environ.c: the environ for the request code (a new dict; NULL with a Python error, or without
 * one when the request is over), *has_body saying whether a body comes. */
static PyObject *request_env(Runner *self, long long code, PyObject *code_obj, int *has_body);

/* answer.c: forgets the objects the head in hbuf was packed from, from the idx-th on. */
static void forget_head(Runner *self, int idx);
/* answer.c: the response's head packed into self->hbuf as sp_code_answer() takes it: 1 (with *len
 * and *slen), 0 when Python must pack it, -1 on a Python error. */
static int pack_head(Runner *self, Resp *resp, size_t *len, size_t *slen);
/* answer.c: calls the access log's callable for a request C finished, errors deferred. */
static void log_request(Runner *self, PyObject *env, Resp *resp, PyObject **pending);
/* answer.c: streams the result as wsgi.py's stream() does (a first chunk that is the whole
 * declared body in one crossing): 0 when the request is finished (*nxt: the next request an
 * answer took, *mine: the response may serve it), 1 when Python goes on with it from *taken and
 * *rest. */
static int stream_c(Runner *self, long long code, Resp *resp, PyObject *result,
                    PyObject **taken, PyObject **rest, int *err, long long *queued,
                    long long *nxt, int *mine);
/* answer.c: calls the result's close() unless it is a list or tuple; its errors are logged or
 * deferred. */
static void close_result(Runner *self, PyObject *result, PyObject **pending);

/* runner.c: after a call the end of a request makes, clears an Exception and keeps the first other
 * BaseException in pending[3] for run() to raise. */
static void defer_error(PyObject **pending);

/* hub.c: a request greenlet whose batch is empty polls in the hub's place, as the hub's turn
 * would: the code of a request to run now, or 0 when the greenlet must park (the hub has work). */
static long long gl_poll_here(GreenLoop *L);
/* hub.c: makes GreenLoop and sets it on the module: 0, or -1 with a Python error. */
static int hub_setup(PyObject *mod);
/* glock.c: makes LockBase and RLockBase (the green locks' C paths) and sets them on the module:
 * 0, or -1 with a Python error. */
static int glock_setup(PyObject *mod);
/* glock.c: greenlet's PyGreenlet_GetCurrent (a new reference, or NULL with a Python error), once
 * need_getcurrent() has returned 0 (else -1 with a Python error: no greenlet). */
typedef PyObject *(*getcurrent_fn)(void);
static getcurrent_fn gl_getcurrent;
static int need_getcurrent(void);
/* glocal.c: makes LocalBase (green local's C paths) and sets it on the module: 0, or -1 with a
 * Python error. */
static int glocal_setup(PyObject *mod);

/* sp_py_setup (runner.c, last in the unit) also reads statics the other files keep to themselves:
 * the type specs resp_spec (response.c) and inp_spec (input.c), and environ.c's key tables
 * (fixed_keys, every_keys, s_sizeof), which it fills. */

#endif

#endif
