"""The WSGI (PEP 3333) adapter: turns a request the C core parsed into ``environ``, runs the app,
and hands the response back to C.

Theory of operation
-------------------
The C core names each request by a *code* (csrc/sp.h, request codes): a number the sp_code_* and
sp_req_* functions look up under the server's lock, so that a code kept past its request (an
app's stale write()) finds nothing instead of a connection that serves someone else now.

This module is the general path: the whole behaviour, with no cache of its own. It is what PyPy
runs, and what a process started with SPAWNING_NO_PYFAST=1 runs. On CPython every request first
goes to the C path (csrc/py/runner.c, ``Runner``), which builds the environ, calls the app and
answers the common shapes itself under the same rules; what it does not finish comes back here
as a ``Handoff`` (the request as C left it) and goes on below.

- environ: made from the block C packed from the head (``sp_request.env``: REMOTE_ADDR, the fixed
  values, then ``KEY\0value`` pairs for CONTENT_TYPE/LENGTH and HTTP_*, then REMOTE_PORT): one
  latin-1 decode, one split and one ``dict.update(zip(it, it))``, no Python loop per header;
  a trusted proxy's headers then rewrite it (spawning.forwarded).
- The answer: a list of one bytes object goes in one crossing (``sp_code_answer``: head, body and
  finish, and in thread mode the thread's next request); anything else streams (``stream``),
  each chunk as the app yields it, the head with the first chunk that is not empty; the
  iterable's ``close()`` is called in every case. C validates and formats the head.

Blocking is delegated to a *waiter* so the same code serves both dispatchers: the thread waiter
blocks in C with the GIL released; the green waiter (spawning.green) parks the greenlet on the hub.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from collections.abc import Callable
from itertools import chain
from typing import Any

from ._core import ffi, lib
from .accesslog import AccessLog
from .forwarded import ProxyTrust

log = logging.getLogger("spawning")

HIGH_WATER = 256 * 1024   # queued response bytes before the app is made to wait (backpressure)
LOW_WATER = 64 * 1024
READ_CHUNK = 65536

_unpack = ffi.unpack
# The values that open every environ block, in order (csrc/sp.h: the connection's address, then
# SP_ENV_FIXED). Constant strings: their hashes are computed once, not per request.
ENV_FIXED = ("REMOTE_ADDR", "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
             "RAW_URI")
_chain = chain.from_iterable
# Read buffers are filled by C before Python sees a byte: no need to zero 64 KiB per request, nor
# to allocate one: requests hand them back (Input.release) to a small shared pool.
_new_dirty = ffi.new_allocator(should_clear_after_alloc=False)
_READ_BUFS: list = []
_READ_BUFS_MAX = 64
_OUT_PTRS: list = []      # the same for the small out-pointers sp_code_peek fills
_peek = lib.sp_code_peek

INTERNAL_ERROR = b"Internal Server Error\n"
SHUTTING_DOWN = b"the server is shutting down\n"
_ERR_HEADERS = b"Content-Type\0text/plain; charset=utf-8"
_ERR_HEAD = b"500 Internal Server Error\0" + _ERR_HEADERS


class ClientDisconnected(OSError):
    """The client went away while the app was reading its body or writing the response."""


class ResponseComplete(ValueError):
    """The app wrote past its Content-Length (or sent a body where none may go): PEP 3333 has the
    server stop iterating there, and a write() past that point raise."""


class BodyError(OSError):
    """The request body broke the rules (too large, malformed chunks); ``status`` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check(rc: int, what: str = "spawning core") -> int:
    """Raises OSError for a negative -errno result from C, returns rc otherwise."""
    if rc < 0:
        code = -rc
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return rc


class ThreadWaiter:
    """Blocking done in C with the GIL released: thread mode."""

    __slots__ = ("body_timeout_ms", "srv")

    def __init__(self, srv: Any, body_timeout_ms: int) -> None:
        self.srv = srv
        self.body_timeout_ms = body_timeout_ms

    def read(self, code: int, buf: Any, n: int) -> int:
        return lib.sp_req_read_wait(self.srv, code, buf, n, self.body_timeout_ms)

    def drain(self, code: int, low_water: int) -> int:
        return lib.sp_req_drain(self.srv, code, low_water)

    def wait_writable(self, code: int) -> None:
        req = lib.sp_code_req(self.srv, code)   # read at once, never kept (csrc/sp.h)
        if req != ffi.NULL:
            import select
            select.select([], [req.fd], [], 1.0)


class Input:
    """``wsgi.input``: read(n), read(), readline(n), readlines(), iteration, over Content-Length
    and chunked bodies. ``wsgi.input_terminated`` is true: read() ends at the body's end."""

    __slots__ = ("_buf", "_cbuf", "_eof", "_pp", "_resp", "_srv", "_waiter")

    def __init__(self, srv: Any, resp: Response, waiter: Any, head: bytes = b"") -> None:
        self._srv = srv
        self._resp = resp        # its code names the request; its req, for the slow paths
        self._waiter = waiter
        self._buf = head         # read ahead: by readline, or by C (csrc/py/runner.c, body_input)
        self._cbuf = None
        self._pp = None
        self._eof = False

    def _fill(self, n: int) -> bytes:
        """Up to n fresh bytes from C; b'' at the end of the body."""
        if self._eof:
            return b""
        n = min(n, READ_CHUNK)
        # Bytes the loop already holds (a small body is read before the app runs) are taken
        # without a copy into our buffer; the rest is read into it.
        pp = self._pp
        if pp is None:
            try:
                pp = _OUT_PTRS.pop()
            except IndexError:
                pp = _new_dirty("const char *[1]")
            self._pp = pp
        rc = _peek(self._srv, self._resp.code, pp, n)
        if rc > 0:
            return _unpack(pp[0], rc)
        if rc == -errno.EAGAIN:
            rc = self._read(n)
            if rc > 0:
                return _unpack(self._cbuf, rc)
        if rc == 0:
            self._eof = True
            return b""
        self._eof = True
        if rc == -413:
            raise BodyError(413, "request body larger than --max-body-size")
        if rc == -400:
            raise BodyError(400, "malformed chunked request body")
        if rc == -errno.ETIMEDOUT:
            raise ClientDisconnected(errno.ETIMEDOUT, "request body timed out")
        raise ClientDisconnected(-rc, "client disconnected while sending the body")

    def _read(self, n: int) -> int:
        """Reads into our buffer, waiting as the dispatcher does; C's result."""
        cbuf = self._cbuf
        if cbuf is None:
            try:
                cbuf = _READ_BUFS.pop()
            except IndexError:
                cbuf = _new_dirty("char[]", READ_CHUNK)
            self._cbuf = cbuf
        return self._waiter.read(self._resp.code, cbuf, n)

    def release(self) -> None:
        """The request is over: later reads get b'' (C has let go of the request), and the read
        buffer goes back to the pool."""
        self._eof = True
        self._buf = b""          # what readline read ahead too (as csrc/py/runner.c's Input)
        cbuf = self._cbuf
        if cbuf is not None:
            self._cbuf = None
            if len(_READ_BUFS) < _READ_BUFS_MAX:
                _READ_BUFS.append(cbuf)
        pp = self._pp
        if pp is not None:
            self._pp = None
            if len(_OUT_PTRS) < _READ_BUFS_MAX:
                _OUT_PTRS.append(pp)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buf]
            self._buf = b""
            while True:
                chunk = self._fill(READ_CHUNK)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        if not size:
            return b""
        # As a file's read(): fewer than size bytes only at the end of the body, since apps
        # commonly read(int(CONTENT_LENGTH)) once and take what comes as the whole body.
        buf = self._buf
        if buf:
            if len(buf) >= size:
                data, self._buf = buf[:size], buf[size:]
                return data
            self._buf = b""
        else:
            buf = self._fill(size)
            if len(buf) == size or not buf:
                return buf
        parts = [buf]
        have = len(buf)
        while have < size:
            chunk = self._fill(size - have)
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else sys.maxsize
        buf = self._buf
        while True:
            i = buf.find(b"\n", 0, limit)
            if i >= 0:
                line, self._buf = buf[: i + 1], buf[i + 1:]
                return line
            if len(buf) >= limit:
                line, self._buf = buf[:limit], buf[limit:]
                return line
            chunk = self._fill(READ_CHUNK)
            if not chunk:
                self._buf = b""
                return buf
            buf += chunk

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Input:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class EmptyInput:
    """``wsgi.input`` for requests without a body: stateless, so one instance serves all."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> EmptyInput:
        return self

    def __next__(self) -> bytes:
        raise StopIteration


EMPTY_INPUT = EmptyInput()


class FileWrapper:
    """``wsgi.file_wrapper``: served with sendfile(2) when the file is a regular file."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def _start_response(self: Any, status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
    """PEP 3333's start_response, whole: ResponseBase (csrc/py/runner.c) does the common form, two
    positional arguments, itself, and calls this for the others (exc_info)."""
    if exc_info:
        try:
            if self.head_sent:
                raise exc_info[1].with_traceback(exc_info[2])
        finally:
            exc_info = None
    elif self.status is not None:
        raise AssertionError("start_response() called a second time without exc_info")
    # Their types are checked when they are packed for C (status_bytes, pack_headers): an
    # answer equal to the last one packed skips both checks and the packing.
    self.status = status
    self.headers = headers
    return self     # the write() callable: __call__ (no bound method to make per request)


# csrc/py/runner.c: on CPython, the common request runs in C (Runner) and a response's per-request
# state lives in C members (ResponseBase). Elsewhere the same in Python: on PyPy, in a build with
# SPAWNING_NO_PYFAST=1, and in any process started with SPAWNING_NO_PYFAST=1 in its environment
# (so that one build tests both paths).
FAST = not os.environ.get("SPAWNING_NO_PYFAST") and lib.sp_py_setup() == 0
if FAST:
    from ._core import ResponseBase as _ResponseBase  # type: ignore[attr-defined]
    from ._core import Runner  # type: ignore[attr-defined]
else:
    Runner = None

    class _ResponseBase:   # type: ignore[no-redef]
        """The per-request state, as class defaults: per request, these cost less than slots."""
        code = 0
        status: str | None = None
        headers: list | None = None
        head_sent = False
        sent = 0
        start_response = _start_response


class Response(_ResponseBase):
    """State of one response: ``start_response`` and the ``write()`` callable.

    Made per request without ``__init__``; ``make_handler`` subclasses it with the server and its
    waiter. ``code`` names the request (sp.h, request codes) in every call to C, which looks it
    up each time: once the request is over it is 0, and C refuses it (-ESTALE) whatever the app
    kept, so a kept write() raises instead of reaching another request. The state (code,
    status, headers, head_sent, sent) comes from the base, C members on CPython
    (csrc/py/runner.c)."""

    __slots__ = ()
    srv: Any = None     # the server, a plain pointer (make_handler sets these three)
    owner: Any = None   # the object that owns it
    waiter: Any = None
    _start_response = _start_response

    def status_bytes(self) -> bytes:
        status = self.status
        if not isinstance(status, str):
            raise TypeError(f"status must be str, not {type(status).__name__}")
        return str.encode(status, "latin-1")   # a subclass's own encode() is not asked

    def pack_headers(self) -> bytes:
        """"Name\0value\0Name\0value" for C, which validates names and values."""
        headers = self.headers
        if type(headers) is not list:
            raise TypeError(f"response headers must be a list, not {type(headers).__name__}")
        try:
            for h in headers:  # type: ignore[union-attr]
                if len(h) != 2:
                    raise TypeError(f"{h!r} is not a (name, value) pair")
            # Items may be lists, as many apps send and other servers take.
            packed = "\0".join(_chain(headers)).encode("latin-1")  # type: ignore[arg-type]
        except (TypeError, UnicodeEncodeError) as e:
            raise ValueError(f"invalid response headers {headers!r}: {e}") from None
        # C splits names from values at NUL: one inside a name or value would start a header
        # of the client's choosing (an app that echoes a decoded %00 into Location, say).
        if packed.count(b"\0") != max(2 * len(headers) - 1, 0):  # type: ignore[arg-type]
            raise ValueError(f"invalid response headers {headers!r}: NUL in a name or value")
        return packed

    def send_head(self) -> None:
        if self.status is None:
            raise AssertionError("the app sent body data before calling start_response()")
        st = self.status_bytes()
        packed = self.pack_headers()
        rc = lib.sp_req_start(self.srv, self.code, st, len(st), packed, len(packed))
        if rc == -errno.EINVAL:
            raise ValueError(f"invalid response status or headers: {self.status!r} {self.headers!r}")
        if rc == -errno.ESTALE:
            raise ClientDisconnected(errno.ESTALE, "the request is over")
        if rc < 0:
            raise ClientDisconnected(-rc, "client disconnected")
        self.head_sent = True

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:   # before the head goes: a wrong type still gets its 500
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"response body must be bytes, not {type(data).__name__}")
        if not self.head_sent:
            self.send_head()
        n = len(data)
        if not n:
            return
        rc = lib.sp_req_write(self.srv, self.code, data, n)
        if rc == -errno.EMSGSIZE:
            raise ResponseComplete("the app wrote past its Content-Length")
        if rc == -errno.ESTALE:
            raise ClientDisconnected(errno.ESTALE, "the request is over")
        self.sent += n
        if rc > HIGH_WATER:
            rc = self.waiter.drain(self.code, LOW_WATER)
        if rc < 0:
            if rc == -errno.ETIMEDOUT:
                raise ClientDisconnected(errno.ETIMEDOUT, "client stopped reading the response")
            raise ClientDisconnected(-rc, "client disconnected")

    def __call__(self, data: bytes) -> None:
        """The write() callable the app gets: past its Content-Length it raises (PEP 3333), but
        on a response that may have no body (HEAD, 204, 304), where nothing was sent, what the
        app writes is dropped quietly, as the body of its iterable is."""
        try:
            self.write(data)
        except ResponseComplete:
            if self.sent:
                raise

    def sendfile(self, wrapper: FileWrapper) -> bool:
        """Sends a regular file with sendfile(2). Returns False when the caller must iterate."""
        f = wrapper.filelike
        try:
            fd = f.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            pos = f.tell() if hasattr(f, "tell") else 0
        except (AttributeError, OSError, ValueError):
            return False
        remaining = max(st.st_size - pos, 0)
        if not self.head_sent:
            if self.status is None:
                raise AssertionError("the app returned without calling start_response()")
            if not any(k.lower() == "content-length" for k, _ in self.headers):  # type: ignore[union-attr]
                self.headers = list(self.headers) + [("Content-Length", str(remaining))]  # type: ignore[arg-type]
            self.send_head()
        offset = pos
        while remaining > 0:
            rc = lib.sp_req_sendfile(self.srv, self.code, fd, offset, min(remaining, 1 << 30))
            if rc > 0:
                offset += rc
                remaining -= rc
                self.sent += rc
            elif rc == 0:
                break                       # file shorter than its size said, or no body (HEAD)
            elif rc == -errno.EAGAIN:
                self.waiter.wait_writable(self.code)
                if self.waiter.drain(self.code, 0) < 0:
                    raise ClientDisconnected(errno.EPIPE, "client disconnected")
            elif rc == -errno.ENOSYS:
                if offset != pos:
                    f.seek(offset)
                return False
            else:
                raise ClientDisconnected(-rc, "client disconnected")
        return True


def make_handler(app: Callable, srv: Any, base_envs: list[dict], waiter: Any,
                 access_log: AccessLog | None, threads: int = 1,
                 poll_ms: int = -1, forwarded: ProxyTrust | None = None) -> Callable[..., int]:
    """Returns ``handle(code, take_next=None, green=None)``: runs the request a code names (sp.h)
    through the app and answers it.

    In thread mode (the server's config says chain) the common response also takes the calling
    thread's next request in the same crossing if one is queued (``sp_code_answer``), which
    ``handle`` then runs itself. Each time a request brings no next one, ``take_next()`` is
    asked for it (thread mode: a poll); ``handle`` returns what it gives when that is not a
    request code (0, or a poll's -errno), or 0 at once without ``take_next``. In a request
    greenlet ``green`` is (the greenlet, its ``__dict__``, the hub's batch deque): its state is
    reset and ``take_next`` (the deque's popleft) is asked only while the deque holds codes.
    ``threads``: how many OS threads call ``handle``; ``poll_ms``, thread mode's poll timeout
    (``take_next`` polls with it), which the C path (csrc/py/runner.c) then polls with itself.
    ``forwarded``: the trusted proxies whose headers rewrite an environ (spawning.forwarded).
    Written as a closure over locals because this is the per-request hot path."""
    # The hot calls take a plain pointer: cffi checks an ffi.gc() object as an argument more
    # slowly. Resp.owner (below) keeps the owning object for what may outlive a request.
    owner = srv
    srv = ffi.cast("sp_server *", owner)
    respond = lib.sp_code_respond
    answer = lib.sp_code_answer
    logging_on = access_log is not None and access_log.enabled
    EALREADY = -errno.EALREADY
    EINVAL = -errno.EINVAL
    ESTALE = -errno.ESTALE
    finish = lib.sp_req_finish
    req_of = lib.sp_code_req
    null = ffi.NULL
    unpack = _unpack
    empty = EMPTY_INPUT
    log_line = access_log.log if access_log is not None and logging_on else None
    list_type = list
    fixed = ENV_FIXED
    bytes_type = bytes

    class Resp(Response):
        __slots__ = ()

    Resp.srv = srv          # the plain pointer, for the write paths too...
    Resp.owner = owner      # ...valid while any response (or wsgi.input, which holds one) lives
    Resp.waiter = waiter

    def log_safe(env: dict, status: str | None, sent: int, headers: Any = None) -> None:
        try:
            log_line(env, status, sent, headers)   # type: ignore[misc]
        except Exception:   # nothing may stop the handler going on: C handed it its next request
            log.exception("error writing the access log")

    def take(resp: Response) -> int:
        """The request's code, for finishing it; from now on the response cannot reach it, so
        a write() the app kept fails instead of writing into the connection's next request."""
        code = resp.code
        resp.code = 0
        return code

    def fail(resp: Response, status: str = "500 Internal Server Error",
             body: bytes = INTERNAL_ERROR) -> None:
        """Answers an error if nothing went out yet, else cuts the connection."""
        if resp.head_sent:
            finish(srv, take(resp), 1)
            return
        code = take(resp)
        st = status.encode("latin-1")
        head = st + b"\0" + _ERR_HEADERS
        respond(srv, code, head, len(head), body, len(body))
        resp.status = status
        resp.sent = len(body)

    def environ(code: int) -> tuple[dict, bool]:
        """The request's environ, made from the block C packed from its head (sp.h,
        sp_request.env), and whether a body comes. No cache: this is the general path (C keeps
        the one cache there is, of a connection's repeats: csrc/py/runner.c)."""
        req = req_of(srv, code)
        if req == null:
            raise ClientDisconnected(errno.ESTALE, "the request is over")
        key, _, port = unpack(req.env, req.env_len).rpartition(b"\0")
        env = (base_envs[req.listener] if base_envs else {}).copy()
        it = iter(key.decode("latin-1").split("\0"))
        env.update(zip(fixed, it))    # stops at the end of fixed without taking from it
        env.update(zip(it, it))
        env["REMOTE_PORT"] = port.decode("latin-1")
        has_body = req.body != 0
        if not has_body:
            env["wsgi.input"] = empty
        if forwarded is not None:
            port = forwarded.apply(env)   # a trusted proxy's headers (spawning.forwarded)
            if port is not None:
                env["REMOTE_PORT"] = port
        return env, has_body

    def pack_head(resp: Response) -> bytes:
        """The response's status and headers as sp_code_answer() takes them, "status\0name\0
        value..." (C validates and formats them: csrc/conn.c)."""
        if resp.status is None:
            raise AssertionError("the app returned without calling start_response()")
        st = resp.status_bytes()
        if b"\0" in st:     # C splits status from headers at the first NUL
            raise ValueError(f"invalid response status {resp.status!r}")
        packed = resp.pack_headers()
        return st + b"\0" + packed if packed else st

    if Runner is not None:
        def new_input(resp: Response, head: bytes = b"") -> Input:
            return Input(srv, resp, waiter, head)

        def close_error(exc: BaseException) -> None:
            log.error("error closing the WSGI app's iterable", exc_info=exc)

        fast = Runner(int(ffi.cast("uintptr_t", srv)), app, new_input, Resp,
                      log_safe if log_line is not None else None, base_envs or [{}], empty,
                      forwarded.apply if forwarded is not None else None, (FileWrapper,),
                      close_error).run
    else:
        fast = None
    int_type = int
    int_type = int

    def stream(resp: Response, result: Any, chunks: Any = None, exc: BaseException | None = None,
               queued: int = 0) -> None:
        """Sends the response the general way: sendfile, or the iterable chunk by chunk, each as
        it comes (PEP 3333: no block is held back while the app makes the next), the head with
        the first that is not empty; then finishes the request and closes the iterable. The C
        path (csrc/py/runner.c, stream_c) does the same, and hands over what it does not: then
        ``chunks`` are what is left of the iterable, ``exc`` what iterating it raised after
        them, ``queued`` the bytes C left queued past the high-water mark."""
        try:
            if chunks is None and isinstance(result, FileWrapper) and resp.sendfile(result):
                pass
            else:
                if queued > HIGH_WATER:
                    rc = waiter.drain(resp.code, LOW_WATER)
                    if rc < 0:
                        raise ClientDisconnected(-rc, "client stopped reading the response")
                write = resp.write
                try:
                    for chunk in (result if chunks is None else chunks):
                        if chunk:
                            write(chunk)
                    if exc is not None:
                        raise exc
                except ResponseComplete:
                    pass    # PEP 3333: stop iterating once the length is sent
                if not resp.head_sent:
                    resp.send_head()     # empty body: the head still goes out
            finish(srv, take(resp), 0)
        finally:
            exc = None
            if type(result) is not list_type and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    log.exception("error closing the WSGI app's iterable")

    def respond_to(resp: Response, code: int, result: Any, answered: int | None) -> int:
        """Sends the app's result: a list of one bytes object in one crossing (head, body and
        finish; in thread mode the next request too, whose code is returned), anything else
        through stream(). ``answered``: what C's sp_code_answer() returned for this response,
        when the C path called it and failed. The C path (csrc/py/runner.c) keeps the same rules."""
        if type(result) is list_type and len(result) == 1 \
                and type(body := result[0]) is bytes_type and not resp.head_sent:
            blen = len(body)
            if answered is None:
                head = pack_head(resp)
                rc = answer(srv, code, head, len(head), body, blen)
                if rc >= 0:
                    resp.code = 0
                    resp.sent = blen
                    return rc
            else:
                rc = answered
            if rc == EINVAL:
                raise ValueError(f"invalid response status or headers: {resp.status!r} "
                                 f"{resp.headers!r}")
            if rc == EALREADY:      # the head went out (the app wrote): the rest streams
                stream(resp, result)
                return 0
            resp.code = 0
            if rc == ESTALE:
                raise ClientDisconnected(errno.ESTALE, "the request is over")
            return 0                # the client was gone: the request is over all the same
        stream(resp, result)
        return 0

    def handle(code: int, take_next: Callable[[], int] | None = None,
               green: tuple | None = None) -> int:
        # One frame for the thread's whole run of requests (in thread mode, each answer takes
        # the next request): a call per request would set up and tear down this closure's frame.
        # ``resp.code`` says whether the request is still ours: 0 once C has it back (answered
        # or cut), so that a write() the app kept fails instead of reaching a later request.
        if green is not None:
            me, mine, batch = green
            cgreen = (me, mine, batch, take_next) if take_next is not None else None
        else:
            cgreen = None
        # The C path polls itself where take_next would (thread mode), or takes the batch's next
        # code as below (green), else returns 0 for it.
        poll = poll_ms if take_next is not None and green is None else -1
        resp: Any = None    # made when this frame runs a request itself (C makes its own)
        while True:
            if not code:            # the last request brought no next one (a truth test is
                                    # cheaper than a comparison on a big int)
                if take_next is None:
                    return 0
                if green is not None:
                    # A request greenlet (spawning.green) goes on with the poll batch's next
                    # request, as the hub would have by switching to an idle greenlet, minus two
                    # switches. What the request left behind must not reach the next one:
                    # greenlet-locals (kept in the greenlet's __dict__) and contextvars.
                    if mine:
                        mine.clear()
                    if me.gr_context is not None:   # reading it costs less than setting it
                        me.gr_context = None
                    if not batch:
                        return 0
                code = take_next()
                if code <= 0:       # none (green mode), or the poll's timeout or error (threads)
                    return code
            answered = exc = taken = rest = None
            handed = False
            if fast is not None:
                # The request runs in C if its environ is known, with any next ones (see
                # csrc/py/runner.c); what it cannot finish comes back, as a code to run from the
                # start or as the state just after the app call.
                r = fast(code, poll, cgreen)
                if type(r) is int_type:
                    if r <= 0:      # no next request: as take_next would have said
                        if poll >= 0:
                            return r
                        code = 0
                        continue
                    code = r
                else:               # a Handoff: the request as C left it
                    code, env, resp, result, exc, answered, inp, taken, rest = r
                    r = None
                    handed = True
            if not handed:          # from the start
                resp = Resp()
                env, has_body = environ(code)
                if has_body:
                    # It may outlive the request: its resp keeps the server (Resp.owner).
                    env["wsgi.input"] = inp = Input(srv, resp, waiter)
                else:
                    inp = None
                resp.code = code
            try:
                if taken is not None or rest is not None:
                    # C streamed part of the body: the rest, as stream() would have gone on
                    nxt = 0
                    stream(resp, result, chain(taken or (), rest or ()), exc,
                           answered if answered is not None and answered > 0 else 0)
                    exc = None
                else:
                    if exc is not None:
                        if result is not None:    # iter() or next() raised in C
                            stream(resp, result, (), exc)
                        raise exc
                    if not handed:
                        result = app(env, resp.start_response)
                    nxt = respond_to(resp, code, result, answered)
            # nxt is 0 in every handler below: only a request taken at once sets it (> 0), and
            # no exception is raised after that.
            except ClientDisconnected:
                nxt = 0
                if resp.code:
                    finish(srv, take(resp), 1)
            except BodyError as e:
                nxt = 0
                log.info("request body rejected: %s", e)
                fail(resp, f"{e.status} {'Content Too Large' if e.status == 413 else 'Bad Request'}",
                     (str(e) + "\n").encode())
            except Exception:
                nxt = 0
                log.exception("error in WSGI app for %s %s", env.get("REQUEST_METHOD"), env.get("RAW_URI"))
                if resp.code:
                    fail(resp)
            except GeneratorExit:
                # A draining green worker ended a request that outlived --stream-grace
                # (spawning.green, Hub.end_requests): a clean end, not an app error. Nothing sent
                # yet (a long poll): 503, which such clients retry; a stream that had begun (SSE)
                # ends with its last chunk, and an EventSource reconnects, to a live worker.
                nxt = 0
                if resp.code:
                    if resp.head_sent:
                        finish(srv, take(resp), 0)
                    else:
                        fail(resp, "503 Service Unavailable", SHUTTING_DOWN)
            except BaseException:
                # GreenletExit, SystemExit, KeyboardInterrupt: the request ends here all the same,
                # so C gets its connection back: a 500 if nothing went out yet, else cut.
                if resp.code:
                    fail(resp)
                raise
            finally:
                exc = None          # its traceback holds this frame
                if inp is not None:
                    inp.release()
            if log_line is not None:
                try:
                    log_line(env, resp.status, resp.sent, resp.headers)
                except Exception:   # nothing may stop us returning nxt: C handed that request to us
                    log.exception("error writing the access log")
                except BaseException:
                    # KeyboardInterrupt, SystemExit go up; the request the answer took for this
                    # thread will not run, so C gets it back answered rather than busy forever.
                    if nxt > 0:
                        respond(srv, nxt, _ERR_HEAD, len(_ERR_HEAD), INTERNAL_ERROR,
                                len(INTERNAL_ERROR))
                    raise
            resp = None             # this one may be held, or went another way than the common
            code = nxt

    return handle


def base_environ(sockname: Any, family: int, config: dict) -> dict:
    """The constant part of environ for one listening socket."""
    import socket
    if family in (socket.AF_INET, socket.AF_INET6):
        host, port = sockname[0], sockname[1]
    else:
        host, port = "localhost", "0"
    threads = int(config.get("threads", 4))
    from . import __version__
    return {
        "SERVER_SOFTWARE": f"spawning/{__version__}",
        "SCRIPT_NAME": "",
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": threads != 1,   # 0: green threads run requests concurrently too
        "wsgi.multiprocess": int(config.get("processes", 1)) > 1,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }


def errno_name(rc: int) -> str:
    """'ECONNRESET (Connection reset by peer)' for a -errno result."""
    code = -rc if rc < 0 else rc
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
