"""Makes the standard library cooperate with the green hub (``--threads 0``).

``patch_all()`` runs in each worker process after fork and before the application is imported
(``spawning.worker`` calls ``spawning.green.monkey_patch``); ``--no-monkey-patch`` turns it off.
Every patched call behaves exactly as before when it is not made from a green thread under the hub
(another OS thread, or before the server runs): it then blocks its OS thread as it always did.

The rule is all or nothing per module: a module below either cooperates in every call that can
block, or is left alone entirely.

Patched
-------
``socket``
    ``socket.socket`` becomes :class:`GreenSocket`: connect, connect_ex, accept, recv, recv_into,
    recvfrom, recvfrom_into, recvmsg, recvmsg_into, send, sendall, sendto, sendmsg and sendfile
    suspend only the calling greenlet; ``settimeout``/``setblocking`` keep their meaning (the fd
    itself is non-blocking; a timeout raises ``TimeoutError``, alias ``socket.timeout``).
    ``makefile()``, ``create_connection()``, ``create_server()``, ``socketpair()``, ``fromfd()``
    and ``dup()`` build green sockets. Host names given to ``connect``/``sendto`` and the lookups
    ``getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``, ``gethostbyaddr``, ``getnameinfo``
    (hence ``getfqdn``) run in a small pool of real threads, off the hub; numeric addresses are
    resolved in place.
``ssl``
    ``SSLContext.wrap_socket`` (through ``SSLContext.sslsocket_class``) gives
    :class:`GreenSSLSocket`, a subclass of ``ssl.SSLSocket``: handshake, read, write, recv,
    recv_into, send, sendall, accept, connect and unwrap retry on ``SSLWantReadError`` /
    ``SSLWantWriteError`` by waiting on the hub.
    ``SSLObject`` (memory BIOs) never blocks and is untouched.
``time``
    ``time.sleep`` is ``spawning.green.sleep``.
``select``
    ``select.select`` and ``select.poll`` wait on the hub. ``select.epoll``, ``select.kqueue`` and
    ``select.devpoll`` are *removed* (code that needs them falls back to poll/select, as it does on
    platforms without them), since waiting on them would block the hub.
``selectors``
    ``DefaultSelector`` and every concrete selector class name (``SelectSelector``,
    ``PollSelector``, ``EpollSelector``, ``DevpollSelector``, ``KqueueSelector``) are
    :class:`GreenSelector`.
``threading``
    ``Lock``, ``RLock``, ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event`` (and so
    ``Barrier`` and ``Timer``, built on them) are spawning.green's primitives: acquire and wait,
    with timeouts, suspend only the calling greenlet, and they work between greenlets and real
    threads in both directions. ``threading.local`` is per greenlet. ``Thread.join`` waits
    cooperatively. ``Thread`` itself stays a real OS thread (so an app's blocking C call can still
    run in parallel), and ``get_ident()``/``current_thread()`` still name OS threads: every
    greenlet of the hub reports the hub's thread (use ``spawning.green.getcurrent()`` for a
    per-request identity).
``queue``
    ``Queue``, ``LifoQueue`` and ``PriorityQueue`` cooperate through the patched ``threading``
    (they build their locks from it); ``SimpleQueue`` is spawning.green's. Hence
    ``concurrent.futures`` thread pools: ``future.result()`` suspends only the greenlet.

Not patched
-----------
``_socket``, ``_ssl`` and ``_thread`` (the C modules underneath), ``os`` (``os.read``/``os.write``
on pipes, ``os.waitpid``), ``subprocess`` (``wait``/``communicate`` block; call them through
``spawning.green.run_in_thread``), ``signal``, files and ``input()``, ``asyncio`` (its event loop
builds on the patched selectors, but nothing in it is rewritten), ``multiprocessing``. Objects
created before patching keep their blocking behaviour (the worker patches before importing the
app, so only the interpreter's and spawning's own early objects, such as ``logging``'s locks, are
concerned). C extensions that do their own I/O (most database drivers written in C) block the hub;
pure-Python drivers (PyMySQL, pg8000, redis-py, ...) cooperate.

gevent and eventlet cannot share the process with this: an app that imports either is refused in
``--threads 0`` (``spawning.green.check_app_compat``).
"""

from __future__ import annotations

import _socket
import errno
import os
import select as _select
import selectors as _selectors
import socket as _socket_mod
import time as _time
from typing import Any

from .fds import wait_fd
from .hub import READ, WRITE, _coop_hub, forget_fd
from .local import local
from .pool import run_in_thread
from .sync import BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, SimpleQueue
from .tasks import sleep
from .waiter import TIMEDOUT

__all__ = [
    "GreenPoll",
    "GreenSSLSocket",
    "GreenSelector",
    "GreenSocket",
    "patch_all",
    "patched",
    "select",
]

_C = _socket.socket                        # the C socket type: its methods never wait (fd non-blocking)
_OrigSocket = _socket_mod.socket
_orig_getaddrinfo = _socket_mod.getaddrinfo
_orig_gethostbyname = _socket_mod.gethostbyname
_orig_gethostbyname_ex = _socket_mod.gethostbyname_ex
_orig_gethostbyaddr = _socket_mod.gethostbyaddr
_orig_getnameinfo = _socket_mod.getnameinfo
_real_select = _select.select
_real_poll = getattr(_select, "poll", None)
_monotonic = _time.monotonic

_patched: dict[str, list[str]] = {}

_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN)


# ---- DNS ------------------------------------------------------------------------------------------------


def _is_numeric(host: Any) -> bool:
    if host is None or host == "":
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(host, str):
        return True
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host.partition("%")[0])
            return True
        except (OSError, ValueError):
            pass
    return False


def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> list:
    """``socket.getaddrinfo``, off the hub for names."""
    if _is_numeric(host) or _coop_hub() is None:
        return _orig_getaddrinfo(host, port, family, type, proto, flags)
    return run_in_thread(_orig_getaddrinfo, host, port, family, type, proto, flags)


def _off_hub(orig: Any) -> Any:
    def lookup(*args: Any) -> Any:
        if _coop_hub() is None:
            return orig(*args)
        return run_in_thread(orig, *args)
    lookup.__name__ = orig.__name__
    lookup.__doc__ = orig.__doc__
    return lookup


gethostbyname = _off_hub(_orig_gethostbyname)
gethostbyname_ex = _off_hub(_orig_gethostbyname_ex)
gethostbyaddr = _off_hub(_orig_gethostbyaddr)
getnameinfo = _off_hub(_orig_getnameinfo)


def _resolve(sock: Any, address: Any) -> Any:
    """(host, port...) with a host name -> the numeric sockaddr, looked up off the hub."""
    if (sock.family in (_socket.AF_INET, _socket.AF_INET6) and isinstance(address, tuple)
            and len(address) >= 2 and not _is_numeric(address[0]) and _coop_hub() is not None):
        infos = getaddrinfo(address[0], address[1], sock.family, sock.type, sock.proto)
        if infos:
            sa = infos[0][4]
            if sock.family == _socket.AF_INET6 and len(address) == 4:
                sa = (sa[0], sa[1], address[2], address[3])
            return sa
    return address


# ---- waiting with a socket's timeout --------------------------------------------------------------------


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else _monotonic() + timeout


def _wait(fd: int, mask: int, end: float | None) -> None:
    if end is None:
        wait_fd(fd, mask, None)
        return
    left = end - _monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    wait_fd(fd, mask, left)


def _green_connect_ex(sock: Any, address: Any) -> int:
    """connect() on a non-blocking fd, waiting per the socket's timeout. Returns 0 or an errno."""
    timeout = sock.gettimeout()
    address = _resolve(sock, address)
    err = _C.connect_ex(sock, address)
    if err == 0 or err not in _IN_PROGRESS or timeout == 0.0:
        return err
    end = _deadline(timeout)
    fd = sock.fileno()
    while True:
        _wait(fd, WRITE, end)
        err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err not in _IN_PROGRESS:
            return err


def _io(sock: Any, fn: Any, mask: int, *args: Any) -> Any:
    """Calls a C socket method; on EAGAIN waits (per the socket's timeout) and retries."""
    try:
        return fn(sock, *args)
    except BlockingIOError:
        timeout = sock.gettimeout()
        if timeout == 0.0:
            raise
    end = _deadline(timeout)
    fd = sock.fileno()
    while True:
        _wait(fd, mask, end)
        try:
            return fn(sock, *args)
        except BlockingIOError:
            pass


class GreenSocket(_OrigSocket):
    """``socket.socket`` whose blocking calls suspend only the calling greenlet (see the module
    docstring). The fd is always non-blocking; the timeout the caller set is kept in Python."""

    __slots__ = ("_gtimeout",)

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
        super().__init__(family, type, proto, fileno)
        self._gtimeout = _C.gettimeout(self)
        _C.settimeout(self, 0.0)

    # -- timeouts --

    def settimeout(self, timeout: float | None) -> None:
        _C.settimeout(self, timeout)          # validation, as the original
        self._gtimeout = _C.gettimeout(self)
        _C.settimeout(self, 0.0)

    def gettimeout(self) -> float | None:
        return self._gtimeout

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def getblocking(self) -> bool:
        return self._gtimeout != 0.0

    @property
    def timeout(self) -> float | None:   # type: ignore[override]
        return self._gtimeout

    # -- connecting --

    def connect(self, address: Any) -> None:
        err = _green_connect_ex(self, address)
        if err:
            if err in _IN_PROGRESS:
                raise BlockingIOError(err, os.strerror(err))
            raise OSError(err, os.strerror(err))

    def connect_ex(self, address: Any) -> int:
        try:
            return _green_connect_ex(self, address)
        except TimeoutError:
            return errno.EAGAIN

    def accept(self) -> tuple:
        fd, addr = _io(self, _C._accept, READ)  # type: ignore[attr-defined]
        sock = GreenSocket(self.family, self.type, self.proto, fileno=fd)
        if _socket_mod.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, addr

    # -- data --

    def recv(self, *args: Any) -> bytes:
        return _io(self, _C.recv, READ, *args)

    def recv_into(self, *args: Any) -> int:
        return _io(self, _C.recv_into, READ, *args)

    def recvfrom(self, *args: Any) -> tuple:
        return _io(self, _C.recvfrom, READ, *args)

    def recvfrom_into(self, *args: Any) -> tuple:
        return _io(self, _C.recvfrom_into, READ, *args)

    if hasattr(_C, "recvmsg"):
        def recvmsg(self, *args: Any) -> tuple:
            return _io(self, _C.recvmsg, READ, *args)

        def recvmsg_into(self, *args: Any) -> tuple:
            return _io(self, _C.recvmsg_into, READ, *args)

        def sendmsg(self, *args: Any) -> int:
            return _io(self, _C.sendmsg, WRITE, *args)

    def send(self, *args: Any) -> int:
        return _io(self, _C.send, WRITE, *args)

    def sendto(self, data: Any, *args: Any) -> int:
        args = (*args[:-1], _resolve(self, args[-1])) if args else args
        return _io(self, _C.sendto, WRITE, data, *args)

    def sendall(self, data: Any, flags: int = 0) -> None:
        timeout = self._gtimeout
        end = _deadline(timeout)
        fd = self.fileno()
        with memoryview(data) as view, view.cast("B") as view:
            total = len(view)
            sent = 0
            while sent < total:
                try:
                    sent += _C.send(self, view[sent:], flags)
                except BlockingIOError:
                    if timeout == 0.0:
                        raise
                    _wait(fd, WRITE, end)

    # -- closing --

    def _real_close(self, _ss: Any = _C) -> None:
        fd = _C.fileno(self)
        if fd >= 0:
            forget_fd(fd)
        _ss.close(self)

    def detach(self) -> int:
        fd = _C.fileno(self)
        if fd >= 0:
            forget_fd(fd)
        return super().detach()


# ---- ssl ---------------------------------------------------------------------------------------------------

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - Python built without OpenSSL
    _ssl = None  # type: ignore[assignment]


def _ssl_retry(sock: Any, plain_mask: int, fn: Any, *args: Any, timeout: Any = False) -> Any:
    """Calls fn; on SSLWantRead/WriteError (or EAGAIN before the TLS layer exists) waits on the hub
    per the socket's timeout and calls it again."""
    if timeout is False:
        timeout = sock.gettimeout()
    end: float | None = None
    started = False
    while True:
        try:
            return fn(*args)
        except (_ssl.SSLWantReadError, _ssl.SSLWantWriteError, BlockingIOError) as e:
            if timeout == 0.0:       # a non-blocking socket: the caller handles it
                raise
            if isinstance(e, _ssl.SSLWantReadError):
                mask = READ
            elif isinstance(e, _ssl.SSLWantWriteError):
                mask = WRITE
            else:
                mask = plain_mask
        if not started:
            started = True
            end = _deadline(timeout)
        _wait(sock.fileno(), mask, end)


if _ssl is not None:
    class GreenSSLSocket(_ssl.SSLSocket):
        """``ssl.SSLSocket`` that waits on the hub (see the module docstring)."""

        def settimeout(self, timeout: float | None) -> None:
            _C.settimeout(self, timeout)
            self._gtimeout = _C.gettimeout(self)
            _C.settimeout(self, 0.0)

        def gettimeout(self) -> float | None:
            try:
                return self._gtimeout
            except AttributeError:          # inside SSLSocket._create, before settimeout
                return _C.gettimeout(self)

        def setblocking(self, flag: bool) -> None:
            self.settimeout(None if flag else 0.0)

        def getblocking(self) -> bool:
            return self.gettimeout() != 0.0

        def do_handshake(self, block: bool = False) -> None:
            self._check_connected()  # type: ignore[attr-defined]
            timeout = self.gettimeout()
            if timeout == 0.0 and block:
                timeout = None
            _ssl_retry(self, READ, self._sslobj.do_handshake, timeout=timeout)  # type: ignore[attr-defined]

        def read(self, len: int = 1024, buffer: Any = None) -> Any:
            return _ssl_retry(self, READ, super().read, len, buffer)

        def write(self, data: Any) -> int:
            return _ssl_retry(self, WRITE, super().write, data)

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            return _ssl_retry(self, READ, super().recv, buflen, flags)

        def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
            return _ssl_retry(self, READ, super().recv_into, buffer, nbytes, flags)

        def send(self, data: Any, flags: int = 0) -> int:
            return _ssl_retry(self, WRITE, super().send, data, flags)

        def sendall(self, data: Any, flags: int = 0) -> None:
            self._checkClosed()  # type: ignore[attr-defined]
            with memoryview(data) as view, view.cast("B") as view:
                total = len(view)
                sent = 0
                while sent < total:
                    sent += self.send(view[sent:], flags)

        def accept(self) -> tuple:
            return _ssl_retry(self, READ, super().accept)

        def unwrap(self) -> Any:
            if not self._sslobj:  # type: ignore[has-type]
                raise ValueError("No SSL wrapper around " + str(self))
            s = _ssl_retry(self, READ, self._sslobj.shutdown)  # type: ignore[has-type]
            self._sslobj = None
            return s

        def _real_connect(self, addr: Any, connect_ex: bool) -> Any:
            # As SSLSocket._real_connect, with the TCP connect waiting on the hub.
            if self.server_side:
                raise ValueError("can't connect in server-side mode")
            if self._connected or self._sslobj is not None:  # type: ignore[has-type]
                raise ValueError("attempt to connect already-connected SSLSocket!")
            self._sslobj = self.context._wrap_socket(self, False, self.server_hostname, owner=self,  # type: ignore[attr-defined]
                                                     session=self._session)  # type: ignore[attr-defined]
            try:
                rc = _green_connect_ex(self, addr)
                if rc and not connect_ex:
                    raise OSError(rc, os.strerror(rc))
                if not rc:
                    self._connected = True
                    if self.do_handshake_on_connect:  # type: ignore[attr-defined]
                        self.do_handshake()
                return rc
            except (OSError, ValueError):
                self._sslobj = None
                raise

        def _real_close(self) -> None:
            fd = _C.fileno(self)
            if fd >= 0:
                forget_fd(fd)
            super()._real_close()  # type: ignore[misc]

        def detach(self) -> int:
            fd = _C.fileno(self)
            if fd >= 0:
                forget_fd(fd)
            return super().detach()
else:  # pragma: no cover
    GreenSSLSocket = None  # type: ignore[assignment,misc]


# ---- select and selectors ------------------------------------------------------------------------------------


def _fd(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    return int(obj.fileno())


def select(rlist: Any, wlist: Any, xlist: Any, timeout: float | None = None) -> tuple:
    """``select.select`` that waits on the hub. Readiness itself is always read by the real select
    with a zero timeout, so results and errors are the original's."""
    hub = _coop_hub()
    if hub is None or timeout == 0:
        return _real_select(rlist, wlist, xlist, timeout)
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    end = _deadline(timeout)
    while True:
        r, w, x = _real_select(rlist, wlist, xlist, 0)
        if r or w or x:
            return r, w, x
        masks: dict[int, int] = {}
        for objs, mask in ((rlist, READ), (wlist, WRITE), (xlist, READ)):
            for obj in objs:
                fd = _fd(obj)
                masks[fd] = masks.get(fd, 0) | mask
        left = None if end is None else end - _monotonic()
        if left is not None and left <= 0:
            return [], [], []
        if hub.wait_fds(tuple(masks.items()), left) is TIMEDOUT:
            return [], [], []


def _poll_events_to_mask(events: int) -> int:
    mask = 0
    if events & (_select.POLLIN | _select.POLLPRI):
        mask |= READ
    if events & _select.POLLOUT:
        mask |= WRITE
    return mask or READ


class GreenPoll:
    """``select.poll()`` whose ``poll()`` waits on the hub."""

    def __init__(self) -> None:
        self._real = _real_poll()  # type: ignore[misc]
        self._fds: dict[int, int] = {}

    def register(self, fd: Any, eventmask: int = _select.POLLIN | _select.POLLPRI | _select.POLLOUT) -> None:
        fd = _fd(fd)
        self._real.register(fd, eventmask)
        self._fds[fd] = eventmask

    def modify(self, fd: Any, eventmask: int) -> None:
        fd = _fd(fd)
        self._real.modify(fd, eventmask)
        self._fds[fd] = eventmask

    def unregister(self, fd: Any) -> None:
        fd = _fd(fd)
        self._real.unregister(fd)
        del self._fds[fd]

    def poll(self, timeout: float | None = None) -> list:
        hub = _coop_hub()
        if hub is None or timeout == 0:
            return self._real.poll(timeout)
        seconds = None if timeout is None or timeout < 0 else timeout / 1000.0
        end = _deadline(seconds)
        while True:
            ready = self._real.poll(0)
            if ready:
                return ready
            left = None if end is None else end - _monotonic()
            if left is not None and left <= 0:
                return []
            pairs = tuple((fd, _poll_events_to_mask(ev)) for fd, ev in self._fds.items())
            if hub.wait_fds(pairs, left) is TIMEDOUT:
                return []


class GreenSelector(_selectors._BaseSelectorImpl):
    """A ``selectors`` selector that waits on the hub (a real poll(2) reads readiness)."""

    def _ready(self, timeout_ms: float | None) -> list:
        p = _real_poll()  # type: ignore[misc]
        for fd, key in self._fd_to_key.items():  # type: ignore[attr-defined]
            ev = 0
            if key.events & _selectors.EVENT_READ:
                ev |= _select.POLLIN
            if key.events & _selectors.EVENT_WRITE:
                ev |= _select.POLLOUT
            p.register(fd, ev)
        try:
            fired = p.poll(timeout_ms)
        except InterruptedError:
            return []
        out = []
        for fd, ev in fired:
            mask = 0
            if ev & ~_select.POLLIN:
                mask |= _selectors.EVENT_WRITE
            if ev & ~_select.POLLOUT:
                mask |= _selectors.EVENT_READ
            key = self._fd_to_key.get(fd)  # type: ignore[attr-defined]
            if key is not None and mask & key.events:
                out.append((key, mask & key.events))
        return out

    def select(self, timeout: float | None = None) -> list:
        if timeout is not None and timeout <= 0:
            return self._ready(0)
        hub = _coop_hub()
        if hub is None:
            return self._ready(None if timeout is None else timeout * 1000)
        end = _deadline(timeout)
        while True:
            ready = self._ready(0)
            if ready:
                return ready
            left = None if end is None else end - _monotonic()
            if left is not None and left <= 0:
                return []
            pairs = tuple((fd, key.events) for fd, key in self._fd_to_key.items())  # type: ignore[attr-defined]
            if hub.wait_fds(pairs, left) is TIMEDOUT:
                return []


# ---- threading -----------------------------------------------------------------------------------------------


def _make_join(orig_join: Any) -> Any:
    def join(self: Any, timeout: float | None = None) -> None:
        """Thread.join: from a green thread, waits without blocking the hub."""
        if _coop_hub() is None:
            return orig_join(self, timeout)
        if not self._started.is_set():
            raise RuntimeError("cannot join thread before it is started")
        end = _deadline(timeout)
        delay = 0.0005
        while self.is_alive():
            # A real thread's end cannot wake the hub, so look at it with a growing interval.
            left = None if end is None else end - _monotonic()
            if left is not None and left <= 0:
                return None
            sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.05)
        return orig_join(self, 0)
    join.__doc__ = orig_join.__doc__
    return join


# ---- patching ------------------------------------------------------------------------------------------------


def _set(module: Any, name: str, value: Any) -> None:
    setattr(module, name, value)
    _patched.setdefault(module.__name__, []).append(name)


def patch_socket() -> None:
    s = _socket_mod
    _set(s, "socket", GreenSocket)
    for name, fn in (("getaddrinfo", getaddrinfo), ("gethostbyname", gethostbyname),
                     ("gethostbyname_ex", gethostbyname_ex), ("gethostbyaddr", gethostbyaddr),
                     ("getnameinfo", getnameinfo)):
        _set(s, name, fn)


def patch_ssl() -> None:
    if _ssl is None:
        return
    _ssl.SSLContext.sslsocket_class = GreenSSLSocket
    _patched.setdefault("ssl", []).append("SSLContext.sslsocket_class")
    # ssl.SSLSocket itself keeps its name: ssl.py's own code refers to it through the module
    # global (super(SSLSocket, self)), and isinstance checks hold for the subclass anyway.


def patch_time() -> None:
    _set(_time, "sleep", sleep)


def patch_select() -> None:
    _set(_select, "select", select)
    if _real_poll is not None:
        _set(_select, "poll", GreenPoll)
    for name in ("epoll", "kqueue", "devpoll"):
        if hasattr(_select, name):
            delattr(_select, name)
            _patched.setdefault("select", []).append(f"-{name}")


def patch_selectors() -> None:
    for name in ("DefaultSelector", "SelectSelector", "PollSelector", "EpollSelector",
                 "DevpollSelector", "KqueueSelector"):
        if hasattr(_selectors, name):
            _set(_selectors, name, GreenSelector)


def patch_threading() -> None:
    import threading

    for name, value in (("Lock", Lock), ("RLock", RLock), ("Condition", Condition),
                        ("Semaphore", Semaphore), ("BoundedSemaphore", BoundedSemaphore),
                        ("Event", Event), ("local", local)):
        _set(threading, name, value)
    threading.Thread.join = _make_join(threading.Thread.join)  # type: ignore[method-assign]
    _patched.setdefault("threading", []).append("Thread.join")


def patch_queue() -> None:
    import queue

    _set(queue, "SimpleQueue", SimpleQueue)


def patch_all() -> None:
    """Patches everything listed in the module docstring (once; later calls do nothing)."""
    if _patched:
        return
    patch_socket()
    patch_ssl()
    patch_time()
    patch_select()
    patch_selectors()
    patch_threading()
    patch_queue()


def patched() -> dict[str, list[str]]:
    """What patch_all() replaced, by module (a leading '-' marks a removed name)."""
    return {k: list(v) for k, v in _patched.items()}
