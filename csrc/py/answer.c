/* answer.c -- the answer: the head packed from the app's objects, a list of one bytes answered
 * in one crossing, other iterables streamed, close(), the access log (the CPython part; see
 * runner.c's theory of operation). */
#include "py.h"

#ifndef SP_NO_PYFAST

/* ---- the answer --------------------------------------------------------------------------
 *
 * The rules are wsgi.py's (handle() and stream()), kept the same way here so that both paths put
 * the same bytes on the wire (tests/test_response_matrix.py compares them): a list of one bytes
 * object goes in one crossing (sp_code_answer), with its Content-Length; any other iterable but
 * a wsgi.file_wrapper streams, each chunk sent as the app yields it (PEP 3333: no block is held
 * back while the app makes the next), the head with the first that is not empty; once the bytes
 * sent reach the Content-Length the head declares, the iterable is not asked for more (PEP 3333:
 * the core says so, sp_req_write's SP_WRITE_COMPLETE); the iterable's close() is called in every
 * case. An iterable whose first chunk is its whole declared body (a framework's response object)
 * goes in one crossing as the list does (answer_whole). Whatever else comes (a chunk that is not
 * bytes, an error, a client that reads too slowly for the next chunk to be queued) goes back to
 * Python with what is left of the iterator, and Python goes on from there. */
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
SP_GREEN_FRAME static void log_request(Runner *self, PyObject *env, Resp *resp, PyObject **pending)
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

/* pack_head's result as start_head answers it: 1 when packed, 0 when Python must pack it (its
 * error cleared), -1 on a Python error that is not an Exception (it goes up). */
static int packed(int ph)
{
    if (ph > 0)
        return 1;
    if (ph < 0 && !PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyErr_Clear();
    return 0;
}

/* Starts the head pack_head left in hbuf (hlen bytes, the status slen): as start_head. */
static int start_packed(Runner *self, long long code, Resp *resp, size_t hlen, size_t slen)
{
    size_t off = slen + (hlen > slen ? 1 : 0);
    if (sp_req_start(self->srv, code, self->hbuf, slen, self->hbuf + off, hlen - off) < 0)
        return 0;
    resp->head_sent = 1;
    return 1;
}

/* Starts the response's head as Response.send_head() does: 1, or 0 when Python must (the head
 * is Python's to pack, or C refused it, or the client is gone: Python meets the same and says
 * so), -1 on a Python error (not an Exception: it goes up). */
static int start_head(Runner *self, long long code, Resp *resp)
{
    size_t hlen, slen;
    int ph = packed(pack_head(self, resp, &hlen, &slen));
    return ph > 0 ? start_packed(self, code, resp, hlen, slen) : ph;
}

/* The first non-empty chunk of an iterable, the head not sent yet, in one crossing: when it is
 * the whole body the head's Content-Length declares, head and chunk go as a list of one bytes
 * does and the iterable is not asked for more (PEP 3333); else the core starts the head alone
 * (sp_code_answer_whole: the core is the one reader of the Content-Length) and the chunk streams.
 * 2: the request is over (answered, or the client was gone), *nxt the thread's next request
 * (sp_code_answer) and *mine as runner_run's; else as start_head (1: started, the chunk
 * streams). */
static int answer_whole(Runner *self, long long code, Resp *resp, PyObject *chunk, Py_ssize_t n,
                        long long *nxt, int *mine)
{
    size_t hlen, slen;
    int ph = packed(pack_head(self, resp, &hlen, &slen));
    if (ph <= 0)
        return ph;
    /* As runner_run's list answer: a response the app kept (its start_response or write(), even
     * weakly) must reach nothing once the request is answered, for the connection's next
     * request may have the same code; one held by nothing else may serve the next request. */
    int m = Py_REFCNT(resp) == 1 && resp->weakrefs == NULL;
    if (!m)
        resp->code = 0;
    long long r = sp_code_answer_whole(self->srv, code, self->hbuf, hlen, PyBytes_AsString(chunk),
                                       (size_t)n);
    if (r == -EINPROGRESS || r == -EINVAL || r == -EALREADY) {
        resp->code = code;      /* still ours: the head started and the chunk streams, or
                                 * nothing was sent and Python answers (500) */
        resp->head_sent = r == -EINPROGRESS;
        return r == -EINPROGRESS;
    }
    resp->code = 0;
    resp->head_sent = 1;
    *mine = m;
    if (r >= 0) {
        resp->sent = n;
        *nxt = r;
    }
    return 2;                   /* r < 0: the client was gone, and the request is over all the same */
}

/* Streams the result as wsgi.py's stream() does. 0: the request is finished (answered, or cut
 * for a client that went away), *nxt the thread's next request when one came with the answer and
 * *mine whether the response may serve the next request (answer_whole). 1: Python goes on with
 * it, *taken (a list: chunks not sent yet) and *rest (the iterator), either may be NULL; with
 * *err the Python error set now came from the iterable; *queued > 0 when the client must read
 * before more is queued. */
SP_GREEN_FRAME static int stream_c(Runner *self, long long code, Resp *resp, PyObject *result,
                    PyObject **taken, PyObject **rest, int *err, long long *queued,
                    long long *nxt, int *mine)
{
    *taken = *rest = NULL;
    *err = 0;
    *queued = 0;
    *nxt = 0;
    *mine = 0;
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
        int st = resp->head_sent ? 1 : answer_whole(self, code, resp, chunk, n, nxt, mine);
        if (st == 2) {
            Py_DECREF(chunk);
            Py_DECREF(it);
            return 0;
        }
        if (st <= 0) {
            *rest = it;
            *taken = list_of(1, chunk, NULL);
            *err = st < 0 || *taken == NULL;
            return 1;
        }
        ssize_t w = sp_req_write(self->srv, code, PyBytes_AsString(chunk), (size_t)n);
        Py_DECREF(chunk);
        if (w == SP_WRITE_COMPLETE) {
            resp->sent += n;
            break;              /* its Content-Length is all sent: iterating stops (PEP 3333) */
        }
        if (w == -EMSGSIZE)
            break;              /* no body may go (HEAD, 204, 304; or write() sent it all) */
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
SP_GREEN_FRAME static void close_result(Runner *self, PyObject *result, PyObject **pending)
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

#endif
