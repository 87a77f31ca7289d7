"""``wsgi.input``: the request body as the app reads it, and the empty input of a request without one.

Bytes the C core already holds (a small body is read before the app runs) are taken without a copy
(``sp_code_peek``); the rest is read into a buffer, waiting as the dispatcher does (the *waiter*:
spawning.wsgi.handler's ``ThreadWaiter``, or spawning.green's). The read buffers are pooled: C
fills them before Python sees a byte, so they are neither zeroed nor allocated per request.
Reading past what the rules allow raises ``BodyError`` (the status to answer with), a client that
goes away ``ClientDisconnected``.
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Protocol

from .._core import ffi, lib

READ_CHUNK = 65536

_unpack = ffi.unpack
# Read buffers are filled by C before Python sees a byte: no need to zero 64 KiB per request, nor
# to allocate one: requests hand them back (Input.release) to a small shared pool.
_new_dirty = ffi.new_allocator(should_clear_after_alloc=False)
_READ_BUFS: list = []
_READ_BUFS_MAX = 64
_OUT_PTRS: list = []      # the same for the small out-pointers sp_code_peek fills
_peek = lib.sp_code_peek


class ClientDisconnected(OSError):
    """The client went away while the app was reading its body or writing the response."""


class BodyError(OSError):
    """The request body broke the rules (too large, malformed chunks); ``status`` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Coded(Protocol):
    """What the input needs of its response (spawning.wsgi.response.Response): the code that
    names the request, 0 once the request is over."""

    code: int


class Input:
    """``wsgi.input``: read(n), read(), readline(n), readlines(), iteration, over Content-Length
    and chunked bodies. ``wsgi.input_terminated`` is true: read() ends at the body's end."""

    __slots__ = ("_buf", "_cbuf", "_eof", "_pp", "_resp", "_srv", "_waiter")

    def __init__(self, srv: Any, resp: Coded, waiter: Any, head: bytes = b"") -> None:
        self._srv = srv
        self._resp = resp        # its code names the request; its req, for the slow paths
        self._waiter = waiter
        self._buf = head         # read ahead: by readline, or by C (csrc/py/input.c, body_input)
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
        self._buf = b""          # what readline read ahead too (as csrc/py/input.c's Input)
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
