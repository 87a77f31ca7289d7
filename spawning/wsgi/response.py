"""The response: ``start_response``, the ``write()`` callable, the status and headers packed for C,
and the result sent (one crossing for a list of one bytes object, else streamed), its iterable's
``close()`` called in every case.

C validates and formats the head (csrc/conn/head.c); this module packs it as ``"status\0name\0value..."``
and refuses what C would split wrongly (a NUL in the status, a name or a value). On CPython the
per-request state (code, status, headers, head_sent, sent) lives in C members of ``ResponseBase``
(csrc/py/response.c), whose ``start_response`` does the common form itself; elsewhere the same state
is class defaults of a Python base (``FAST`` says which).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

from .._core import lib
from .input import ClientDisconnected

log = logging.getLogger("spawning")

HIGH_WATER = 256 * 1024   # queued response bytes before the app is made to wait (backpressure)
LOW_WATER = 64 * 1024

_chain = chain.from_iterable
# sp_req_write()'s "these bytes complete the declared Content-Length" (csrc/sp.h): the core is the
# one owner of that count, and says so with the write that reaches it.
COMPLETE = lib.SP_WRITE_COMPLETE

INTERNAL_ERROR = b"Internal Server Error\n"
SHUTTING_DOWN = b"the server is shutting down\n"
_ERR_HEADERS = b"Content-Type\0text/plain; charset=utf-8"
ERR_HEAD = b"500 Internal Server Error\0" + _ERR_HEADERS


class ResponseComplete(ValueError):
    """The app wrote past its Content-Length (or sent a body where none may go): PEP 3333 has the
    server stop iterating there, and a write() past that point raise."""


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
    """PEP 3333's start_response, whole: ResponseBase (csrc/py/response.c) does the common form, two
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


# csrc/py/: on CPython, the common request runs in C (Runner, runner.c; spawning.wsgi.handler) and
# a response's per-request state lives in C members (ResponseBase, response.c). Elsewhere the same
# in Python: on PyPy, in a build with SPAWNING_NO_PYFAST=1, and in any process started with
# SPAWNING_NO_PYFAST=1 in its environment (so that one build tests both paths).
FAST = not os.environ.get("SPAWNING_NO_PYFAST") and lib.sp_py_setup() == 0
if TYPE_CHECKING:
    class _ResponseBase:
        """What type checkers see of either base: its members, which C defines on CPython."""
        code: int
        status: str | None
        headers: list | None
        head_sent: bool
        sent: int
        start_response: Callable[..., Callable[[bytes], None]]
elif FAST:
    from .._core import ResponseBase as _ResponseBase
else:
    class _ResponseBase:
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
    (csrc/py/response.c)."""

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

    def write(self, data: bytes) -> bool:
        """Sends data (the head first if it has not gone). Returns True when data completed the
        Content-Length the head declares: PEP 3333 has the server stop iterating there."""
        if type(data) is not bytes:   # before the head goes: a wrong type still gets its 500
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"response body must be bytes, not {type(data).__name__}")
        if not self.head_sent:
            self.send_head()
        n = len(data)
        if not n:
            return False
        rc = lib.sp_req_write(self.srv, self.code, data, n)
        if rc == COMPLETE:
            # What is still queued goes out from the loop, as a one-crossing answer's does: the
            # app makes no more, so there is nothing to hold it back for.
            self.sent += n
            return True
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
        return False

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

    def take(self) -> int:
        """The request's code, for finishing it; from now on the response cannot reach it, so
        a write() the app kept fails instead of writing into the connection's next request."""
        code = self.code
        self.code = 0
        return code

    def fail(self, status: str = "500 Internal Server Error", body: bytes = INTERNAL_ERROR) -> None:
        """Answers an error if nothing went out yet, else cuts the connection."""
        if self.head_sent:
            lib.sp_req_finish(self.srv, self.take(), 1)
            return
        code = self.take()
        st = status.encode("latin-1")
        head = st + b"\0" + _ERR_HEADERS
        lib.sp_code_respond(self.srv, code, head, len(head), body, len(body))
        self.status = status
        self.sent = len(body)

    def pack_head(self) -> bytes:
        """The response's status and headers as sp_code_answer() takes them, "status\0name\0
        value..." (C validates and formats them: csrc/conn/head.c)."""
        if self.status is None:
            raise AssertionError("the app returned without calling start_response()")
        st = self.status_bytes()
        if b"\0" in st:     # C splits status from headers at the first NUL
            raise ValueError(f"invalid response status {self.status!r}")
        packed = self.pack_headers()
        return st + b"\0" + packed if packed else st

    def stream(self, result: Any, chunks: Any = None, exc: BaseException | None = None,
               queued: int = 0) -> None:
        """Sends the response the general way: sendfile, or the iterable chunk by chunk, each as
        it comes (PEP 3333: no block is held back while the app makes the next), the head with
        the first that is not empty; then finishes the request and closes the iterable. The C
        path (csrc/py/answer.c, stream_c) does the same, and hands over what it does not: then
        ``chunks`` are what is left of the iterable, ``exc`` what iterating it raised after
        them, ``queued`` the bytes C left queued past the high-water mark."""
        try:
            # A file_wrapper by its type, as the C path asks (csrc/py/runner.c, streamed_by_python):
            # isinstance() would let any object with a __class__ of FileWrapper pass for one.
            if chunks is None and issubclass(type(result), FileWrapper) and self.sendfile(result):
                pass
            else:
                if queued > HIGH_WATER:
                    rc = self.waiter.drain(self.code, LOW_WATER)
                    if rc < 0:
                        raise ClientDisconnected(-rc, "client stopped reading the response")
                write = self.write
                try:
                    # PEP 3333: once the bytes sent reach the Content-Length, the iterable is not
                    # asked for more (write() says when: the core counts them), nor resumed
                    # for an exception it would raise after its last piece.
                    for chunk in (result if chunks is None else chunks):
                        if chunk and write(chunk):
                            break
                    else:
                        if exc is not None:
                            raise exc
                except ResponseComplete:
                    pass    # no body may go (HEAD, 204, 304), or write() sent it all: stop too
                if not self.head_sent:
                    self.send_head()     # empty body: the head still goes out
            lib.sp_req_finish(self.srv, self.take(), 0)
        finally:
            exc = None
            if type(result) is not list and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    log.exception("error closing the WSGI app's iterable")

    def send_result(self, code: int, result: Any, answered: int | None) -> int:
        """Sends the app's result: a list of one bytes object in one crossing (head, body and
        finish; in thread mode the next request too, whose code is returned), anything else
        through stream(). ``answered``: what C's sp_code_answer() returned for this response,
        when the C path called it and failed. The C path (csrc/py/answer.c) keeps the same rules."""
        if type(result) is list and len(result) == 1 \
                and type(body := result[0]) is bytes and not self.head_sent:
            blen = len(body)
            if answered is None:
                head = self.pack_head()
                rc = lib.sp_code_answer(self.srv, code, head, len(head), body, blen)
                if rc >= 0:
                    self.code = 0
                    self.sent = blen
                    return rc
            else:
                rc = answered
            if rc == -errno.EINVAL:
                raise ValueError(f"invalid response status or headers: {self.status!r} "
                                 f"{self.headers!r}")
            if rc == -errno.EALREADY:   # the head went out (the app wrote): the rest streams
                self.stream(result)
                return 0
            self.code = 0
            if rc == -errno.ESTALE:
                raise ClientDisconnected(errno.ESTALE, "the request is over")
            return 0                # the client was gone: the request is over all the same
        self.stream(result)
        return 0
