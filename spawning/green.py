"""Green threads (``--threads 0``): one greenlet per request on a hub greenlet that drives the C loop.

Theory of operation
-------------------
The *hub* is a greenlet that owns the worker's ``sp_server`` loop. Each turn it

1. resumes every greenlet made runnable since the last turn (the *ready* queue),
2. runs callables other OS threads handed over (``call_threadsafe``: DNS results, a real thread
   setting an ``Event``...),
3. calls ``sp_poll()`` once, with a timeout taken from its timer heap (0 when work is ready), and
   handles the whole batch it returns: ``SP_EV_REQUEST`` starts a greenlet running the WSGI
   handler at once (a fast app runs to completion inside that switch: no thread hand-off, no
   queue), ``SP_EV_FD`` wakes whoever waits on that token,
4. fires expired timers.

A greenlet that must wait parks on a :class:`Waiter`: it registers whatever will wake it (a
token with the C loop, a timer, a place in a lock's queue) and switches to the hub. Every wake-up
goes through the ready queue, and a waiter resumes its greenlet at most once, so a timer that
fires after an fd event (or a ``Timeout`` thrown in between) can never resume a greenlet that has
moved on to wait for something else.

The synchronisation primitives here (Lock, RLock, Condition, Semaphore, Event, Queue...) work both
in greenlets and in ordinary OS threads, and across the two: a greenlet parks on the hub, a thread
blocks on a private real lock, and a wake-up from another thread reaches the hub through
``call_threadsafe`` (a deque plus ``sp_server_wakeup``). That is what lets ``spawning.monkey``
replace ``threading``'s primitives while real threads (the DNS pool, an app's background thread)
keep working.

Outside the hub (no hub running, another OS thread, or the hub greenlet itself) every blocking
call here simply blocks the calling thread, as its standard library counterpart would.
"""

from __future__ import annotations

import _thread
import errno
import heapq
import logging
import os
import queue as _queue_mod
import select as _select_mod
import signal
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet  # type: ignore[import-untyped]

from ._core import ffi, lib

__all__ = [
    "BoundedSemaphore",
    "Condition",
    "Event",
    "GreenThread",
    "GreenletExit",
    "Lock",
    "Queue",
    "RLock",
    "Semaphore",
    "SimpleQueue",
    "Timeout",
    "cooperative",
    "getcurrent",
    "hub_running",
    "local",
    "monkey_patch",
    "run",
    "run_in_thread",
    "serve",
    "sleep",
    "spawn",
    "wait_read",
    "wait_write",
]

log = logging.getLogger("spawning")

# Captured at import, before spawning.monkey can replace any of them.
_monotonic = time.monotonic
_real_sleep = time.sleep
_get_ident = _thread.get_ident
_allocate_lock = _thread.allocate_lock
_start_new_thread = _thread.start_new_thread
_real_poll = getattr(_select_mod, "poll", None)
_real_select = _select_mod.select
_RealSimpleQueue = _queue_mod.SimpleQueue

READ = lib.SP_READ
WRITE = lib.SP_WRITE
_EV_REQUEST = lib.SP_EV_REQUEST
_BATCH = 256
_IDLE_MAX = 256          # idle request greenlets kept for reuse
_MAX_POLL_MS = 1000      # the loop looks at its finish condition at least this often

GREEN_ONLY_MODULES = ("gevent", "eventlet")


class _Timedout:
    """The value a waiter gets when its timeout expired."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TIMEDOUT"


TIMEDOUT = _Timedout()
_CLOSED = object()           # a waiter's fd was closed under it


# ---- the hub -----------------------------------------------------------------------------------------


class _Timer:
    __slots__ = ("args", "cancelled", "fn", "hub", "when")

    def __init__(self, hub: Hub, when: float, fn: Callable, args: tuple) -> None:
        self.hub = hub
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def __lt__(self, other: _Timer) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.hub._cancelled += 1


class _FdWatch:
    """The greenlets waiting on one fd (not a request's own socket) for reading or writing."""

    __slots__ = ("fd", "readers", "token", "writers")

    def __init__(self, fd: int, token: int) -> None:
        self.fd = fd
        self.token = token
        self.readers: list[Waiter] = []
        self.writers: list[Waiter] = []

    def on_fd(self, hub: Hub, mask: int) -> None:
        if mask & READ and self.readers:
            ws, self.readers = self.readers, []
            for w in ws:
                w.wake(mask)
        if mask & WRITE and self.writers:
            ws, self.writers = self.writers, []
            for w in ws:
                w.wake(mask)
        if self.readers or self.writers:   # the one-shot registration is spent: re-arm the rest
            hub._arm(self)


class Hub:
    """The loop of one process (see the module docstring). Created by serve() or run()."""

    def __init__(self, srv: Any, finished: Callable[[], bool]) -> None:
        self.srv = srv
        self.finished = finished
        self.glet = greenlet(self._loop)
        self.ident = _get_ident()
        self.ready: deque = deque()
        self.timers: list[_Timer] = []
        self._cancelled = 0
        self.tokens: dict[int, Any] = {}
        self._token = 0
        self.watches: dict[int, _FdWatch] = {}
        self.thread_calls: deque = deque()
        self.handle: Callable | None = None
        self.idle: list = []          # request greenlets waiting for their next request
        self.events = ffi.new("sp_event[]", _BATCH)
        self.codes = ffi.new("int64_t[]", _BATCH)   # request codes of the batch, 0 for fd events
        # The codes of the current poll batch's requests not yet taken: the hub and the request
        # greenlets take from it in turn (see _request_worker).
        self.batch: deque = deque()
        # Every request greenlet made (weakly: the idle pool's overflow dies), so that a drain can
        # find the ones still running (end_requests). Added to only when one is made: no cost
        # per request.
        self.request_glets: weakref.WeakSet = weakref.WeakSet()
        self._ending: _Timer | None = None

    # -- scheduling (hub thread) --

    def schedule(self, fn: Callable, *args: Any) -> None:
        self.ready.append((fn, args))

    def call_later(self, seconds: float, fn: Callable, *args: Any) -> _Timer:
        t = _Timer(self, _monotonic() + max(seconds, 0.0), fn, args)
        heapq.heappush(self.timers, t)
        return t

    def call_threadsafe(self, fn: Callable, *args: Any) -> None:
        """From any thread: runs fn(*args) in the hub soon."""
        self.thread_calls.append((fn, args))
        lib.sp_server_wakeup(self.srv)

    def new_token(self, obj: Any) -> int:
        self._token += 1
        self.tokens[self._token] = obj
        return self._token

    # -- waiting on fds (called from greenlets) --

    def _arm(self, watch: _FdWatch) -> None:
        mask = (READ if watch.readers else 0) | (WRITE if watch.writers else 0)
        rc = lib.sp_watch(self.srv, watch.fd, mask, watch.token)
        if rc < 0:
            if rc == -errno.EPERM:      # a regular file: epoll refuses it, and it is always ready
                self.schedule(watch.on_fd, self, READ | WRITE)
                return
            waiters = watch.readers + watch.writers
            watch.readers, watch.writers = [], []
            for w in waiters:
                w.wake(OSError(-rc, os.strerror(-rc)))

    def wait_fds(self, pairs: Iterable[tuple[int, int]], timeout: float | None) -> Any:
        """Parks the current greenlet until one of the (fd, READ|WRITE) pairs is ready. Returns the
        event mask, TIMEDOUT, or raises OSError (the fd cannot be watched or was closed)."""
        w = Waiter(self)
        for fd, mask in pairs:
            watch = self.watches.get(fd)
            if watch is None:
                watch = _FdWatch(fd, 0)
                watch.token = self.new_token(watch)
                self.watches[fd] = watch
            if mask & READ:
                watch.readers.append(w)
            if mask & WRITE:
                watch.writers.append(w)
            self._arm(watch)
        try:
            value = w.wait(timeout)
        finally:
            for fd, _ in pairs:       # the lists may have been swapped: look them up again
                watch = self.watches.get(fd)
                if watch is not None:
                    if w in watch.readers:
                        watch.readers.remove(w)
                    if w in watch.writers:
                        watch.writers.remove(w)
        if value is _CLOSED:
            raise OSError(errno.EBADF, "file descriptor closed while waiting on it")
        if isinstance(value, OSError):
            raise value
        return value

    def forget_fd(self, fd: int) -> None:
        """The fd is being closed: drop its watch (waiters get EBADF)."""
        watch = self.watches.pop(fd, None)
        if watch is None:
            return
        self.tokens.pop(watch.token, None)
        lib.sp_unwatch(self.srv, fd)
        for w in watch.readers + watch.writers:
            w.wake(_CLOSED)

    def wait_req(self, code: int, mask: int, timeout: float | None) -> bool:
        """Parks until the connection of the request a code names can progress for mask. False
        on timeout."""
        w = Waiter(self)
        token = self.new_token(w)
        rc = lib.sp_req_wait(self.srv, code, mask, token)
        if rc < 0:
            del self.tokens[token]
            return True          # let the caller retry and see the error
        try:
            value = w.wait(timeout)
        finally:
            self.tokens.pop(token, None)
        return value is not TIMEDOUT

    # -- the loop --

    def _run_ready(self) -> None:
        ready = self.ready
        for _ in range(len(ready)):      # only what is ready now: sleep(0) loops cannot starve I/O
            fn, args = ready.popleft()
            try:
                fn(*args)
            except BaseException:
                log.exception("unhandled error in a green thread")

    def _run_timers(self) -> None:
        timers = self.timers
        now = _monotonic()
        while timers and timers[0].when <= now:
            t = heapq.heappop(timers)
            if t.cancelled:
                self._cancelled -= 1
                continue
            t.cancelled = True
            try:
                t.fn(*t.args)
            except BaseException:
                log.exception("error in a timer callback")
        if self._cancelled > 512 and self._cancelled > len(timers) // 2:
            # Cancelled timers are dropped lazily; rebuild once they are most of the heap.
            self.timers = timers = [t for t in timers if not t.cancelled]
            heapq.heapify(timers)
            self._cancelled = 0

    def _request_worker(self, code: int) -> None:
        """Body of a request greenlet: runs requests, parking in the idle pool in between. Reusing
        greenlets matters: a new one costs Python a fresh frame stack (an mmap and a munmap).

        Once a request is over, handle() takes the batch's next code itself (``green``, see
        wsgi.make_handler) and runs it here and now, as the hub would have by switching to an
        idle greenlet, minus the two switches; first it resets what the request left behind. The
        hub's loop over the batch takes from the same deque, and wake-ups go through the ready
        queue, so a greenlet resumes either from that loop or between batches, when the deque
        is empty."""
        handle = self.handle
        idle = self.idle
        hub_glet = self.glet
        me = getcurrent()
        mine = me.__dict__   # one dict for the greenlet's life (spawning.green.local uses it)
        batch = self.batch
        green = (me, mine, batch)
        take = batch.popleft
        while True:
            try:
                handle(code, take, green)  # type: ignore[misc]
            except BaseException:   # handle() answers app errors itself: this is a bug
                log.exception("internal error handling a request")
                mine.clear()
                me.gr_context = None
            if len(idle) >= _IDLE_MAX:
                return
            idle.append(me)
            code = hub_glet.switch()

    def _loop(self) -> None:
        srv = ffi.cast("sp_server *", self.srv)   # a plain pointer passes faster; self.srv owns it
        events = self.events
        codes = self.codes
        poll = lib.sp_poll_codes
        unpack = ffi.unpack
        ready = self.ready
        thread_calls = self.thread_calls
        tokens = self.tokens
        finished = self.finished
        hub_glet = self.glet
        handle = self.handle
        idle = self.idle
        worker = self._request_worker
        pending = self.batch
        take = pending.popleft
        while True:
            if ready:
                self._run_ready()
            while thread_calls:
                fn, args = thread_calls.popleft()
                try:
                    fn(*args)
                except BaseException:
                    log.exception("error in a call handed to the hub")
            if finished():
                return
            if ready or thread_calls:
                timeout = 0
            elif self.timers:
                timeout = int((self.timers[0].when - _monotonic()) * 1000 + 0.999)
                timeout = 0 if timeout < 0 else min(timeout, _MAX_POLL_MS)
            else:
                timeout = _MAX_POLL_MS
            if _forked_child:
                log.error("a process the app forked came back to the server's loop: it exits "
                          "(the parent serves the connections)")
                os._exit(1)
            n = poll(srv, events, codes, _BATCH, timeout)
            if n > 0:
                # fd events first (sp.h: they come before the batch's requests): they only
                # schedule greenlets, which run next turn.
                batch = unpack(codes, n)
                i = 0
                while i < n and not batch[i]:
                    obj = tokens.get(events[i].token)
                    if obj is not None:
                        obj.on_fd(self, events[i].mask)
                    i += 1
                if i < n:
                    pending.extend(batch[i:] if i else batch)
                    while pending:
                        code = take()
                        if idle:
                            idle.pop().switch(code)
                        elif handle is not None:
                            g = greenlet(worker, hub_glet)
                            self.request_glets.add(g)
                            g.switch(code)
            if n < 0 and n != -errno.EINTR:
                log.error("event loop failed: %s", os.strerror(-n))
                _real_sleep(0.05)
            if self.timers:
                self._run_timers()


    def end_requests_after(self, grace: float) -> None:
        """Hub thread: ``end_requests`` in ``grace`` seconds, once however often asked."""
        if self._ending is None:
            self._ending = self.call_later(grace, self.end_requests)

    def end_requests(self) -> None:
        """Throws GeneratorExit into every request greenlet still running (a draining worker's
        long streams and long polls): the app sees it where it waits, or at its generator's
        ``yield`` when the server closes it, and the handler (spawning.wsgi) ends the response:
        503 if nothing went out, else the stream's end. Hub thread only."""
        idle = {id(g) for g in self.idle}
        running = [g for g in list(self.request_glets) if g and id(g) not in idle]
        if running:
            log.info("worker %d: ending %d request%s still running after --stream-grace",
                     os.getpid(), len(running), "" if len(running) == 1 else "s")
        for g in running:
            # Each throw runs only that greenlet until it parks again (or goes idle): the others
            # stay where they were, so the list holds.
            if g:
                g.throw(GeneratorExit)


_hub: Hub | None = None
# Set in a child the app forks while the hub runs (os.fork, multiprocessing's fork start method):
# the child shares the parent's epoll set, so a hub running there would take the parent's
# connections. In the child there is no hub: what waits blocks the child's OS thread, and a
# child that comes back to the hub's loop exits instead of polling.
_forked_child = False


def _after_fork_in_child() -> None:
    global _hub, _forked_child
    if _hub is not None:
        _hub = None
        _forked_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def end_requests_after(grace: float) -> None:
    """From any thread: once ``grace`` seconds have passed, requests still running in this
    process's hub get GeneratorExit (``Hub.end_requests``). Nothing without a hub."""
    hub = _hub
    if hub is not None:
        hub.call_threadsafe(hub.end_requests_after, grace)


def _coop_hub() -> Hub | None:
    """The hub, if the caller is a greenlet it can suspend; None means: block the OS thread."""
    hub = _hub
    if hub is None or hub.ident != _get_ident():
        return None
    cur = getcurrent()
    if cur is hub.glet or not hub.glet:
        return None
    return hub


def cooperative() -> bool:
    """True when the caller runs in a green thread under the hub, so that waiting here suspends
    only this greenlet. False in other OS threads, outside ``serve()``/``run()``, and in the hub."""
    return _coop_hub() is not None


def hub_running() -> bool:
    """True while a hub runs in this process (``--threads 0`` or inside ``run()``)."""
    return _hub is not None


# ---- waiters ---------------------------------------------------------------------------------------


class Waiter:
    """One wake-up for one greenlet parked on the hub. ``wake`` may be called from any greenlet of
    the hub's thread (``wake_threadsafe`` from anywhere); only the first call counts."""

    __slots__ = ("glet", "hub", "pending", "value")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.glet = getcurrent()
        self.pending = True
        self.value: Any = None

    def wake(self, value: Any = True) -> None:
        if self.pending:
            self.pending = False
            self.value = value
            self.hub.ready.append((self._resume, ()))

    def on_fd(self, hub: Hub, mask: int) -> None:
        self.wake(mask)

    def wake_threadsafe(self, value: Any = True) -> None:
        if _get_ident() == self.hub.ident:
            self.wake(value)
        else:
            self.hub.call_threadsafe(self.wake, value)

    def _resume(self) -> None:
        g = self.glet
        if g is not None:
            self.glet = None
            g.switch(self.value)

    def wait(self, timeout: float | None = None) -> Any:
        """Switches to the hub until woken; returns the wake value, or TIMEDOUT."""
        timer = self.hub.call_later(timeout, self.wake, TIMEDOUT) if timeout is not None else None
        try:
            return self.hub.glet.switch()
        finally:
            self.pending = False
            self.glet = None
            if timer is not None:
                timer.cancel()


class _ThreadWaiter:
    """The same contract for an OS thread: blocks on a private real lock."""

    __slots__ = ("lock", "value")

    def __init__(self) -> None:
        self.lock = _allocate_lock()
        self.lock.acquire()
        self.value: Any = None

    def wake(self, value: Any = True) -> None:
        if self.value is None:
            self.value = value
            try:
                self.lock.release()
            except RuntimeError:
                pass

    wake_threadsafe = wake

    def wait(self, timeout: float | None = None) -> Any:
        if self.lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            return self.value
        return TIMEDOUT


def _new_waiter() -> Any:
    hub = _coop_hub()
    return Waiter(hub) if hub is not None else _ThreadWaiter()


def _nothing() -> None:
    pass


def _wait_queued(mutex: Any, waiters: deque, w: Any, timeout: float | None,
                 undo: Callable[[], None] = _nothing) -> bool:
    """Waits on w, which the caller appended to waiters under mutex. Wakers remove a waiter from the
    queue before waking it, so afterwards: still queued means timed out (or interrupted). Returns
    True if woken. When an exception (a kill, a Timeout) arrives after the wake-up was granted,
    ``undo`` passes on what was granted (a lock, a semaphore unit)."""
    try:
        w.wait(timeout)
    except BaseException:
        with mutex:
            queued = _discard(waiters, w)
        if not queued:
            undo()
        raise
    with mutex:
        return not _discard(waiters, w)


def _discard(waiters: deque, w: Any) -> bool:
    try:
        waiters.remove(w)
        return True
    except ValueError:
        return False


# ---- synchronisation primitives (greenlets and threads alike) ----------------------------------------


class Lock:
    """``threading.Lock`` that suspends only the calling greenlet. FIFO: release() hands the lock to
    the longest waiter."""

    __slots__ = ("__weakref__", "_locked", "_mutex", "_waiters")

    def __init__(self) -> None:
        self._mutex = _allocate_lock()
        self._locked = False
        self._waiters: deque = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number")
        m = self._mutex
        with m:
            if not self._locked:
                self._locked = True
                return True
            if not blocking:
                return False
            w = _new_waiter()
            self._waiters.append(w)
        return _wait_queued(m, self._waiters, w, None if timeout == -1 else timeout, self.release)

    def release(self) -> None:
        with self._mutex:
            if not self._locked:
                raise RuntimeError("release unlocked lock")
            if self._waiters:
                self._waiters.popleft().wake_threadsafe(True)   # stays locked: handed over
            else:
                self._locked = False

    def locked(self) -> bool:
        return self._locked

    def _at_fork_reinit(self) -> None:
        self._mutex = _allocate_lock()
        self._locked = False
        self._waiters = deque()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<spawning.green.Lock {'locked' if self._locked else 'unlocked'}>"


class RLock:
    """``threading.RLock``; the owner is the greenlet (each OS thread has its own main greenlet, so
    this is per-thread too when greenlets are not involved)."""

    __slots__ = ("__weakref__", "_block", "_count", "_owner")

    def __init__(self) -> None:
        self._block = Lock()
        self._owner: Any = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = getcurrent()
        if self._owner is me:
            self._count += 1
            return True
        if self._block.acquire(blocking, timeout):
            self._owner = me
            self._count = 1
            return True
        return False

    __enter__ = acquire

    def release(self) -> None:
        if self._owner is not getcurrent():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if not self._count:
            self._owner = None
            self._block.release()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        return self._block.locked()

    def _is_owned(self) -> bool:
        return self._owner is getcurrent()

    def _release_save(self) -> tuple:
        if self._owner is not getcurrent():
            raise RuntimeError("cannot release un-acquired lock")
        state = (self._count, self._owner)
        self._count = 0
        self._owner = None
        self._block.release()
        return state

    def _acquire_restore(self, state: tuple) -> None:
        self._block.acquire()
        self._count, self._owner = state

    def _at_fork_reinit(self) -> None:
        self._block._at_fork_reinit()
        self._owner = None
        self._count = 0


class Condition:
    """``threading.Condition`` over any lock (a green one normally; a raw lock works too)."""

    def __init__(self, lock: Any = None) -> None:
        if lock is None:
            lock = RLock()
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release
        self._mutex = _allocate_lock()
        self._waiters: deque = deque()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self._lock.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<spawning.green.Condition({self._lock!r}, {len(self._waiters)})>"

    def _release_save(self) -> Any:
        f = getattr(self._lock, "_release_save", None)
        if f is not None:
            return f()
        self._lock.release()
        return None

    def _acquire_restore(self, state: Any) -> None:
        f = getattr(self._lock, "_acquire_restore", None)
        if f is not None:
            f(state)
        else:
            self._lock.acquire()

    def _is_owned(self) -> bool:
        f = getattr(self._lock, "_is_owned", None)
        if f is not None:
            return f()
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._mutex = _allocate_lock()
        self._waiters = deque()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        w = _new_waiter()
        with self._mutex:
            self._waiters.append(w)
        saved = self._release_save()
        try:
            return _wait_queued(self._mutex, self._waiters, w, timeout)
        finally:
            self._acquire_restore(saved)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        end = None if timeout is None else _monotonic() + timeout
        result = predicate()
        while not result:
            if end is not None:
                left = end - _monotonic()
                if left <= 0:
                    break
                self.wait(left)
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        with self._mutex:
            while n > 0 and self._waiters:
                self._waiters.popleft().wake_threadsafe(True)
                n -= 1

    def notify_all(self) -> None:
        self.notify(len(self._waiters) or 1)

    notifyAll = notify_all


class Semaphore:
    """``threading.Semaphore``; FIFO hand-off to waiters."""

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._value = value
        self._mutex = _allocate_lock()
        self._waiters: deque = deque()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        m = self._mutex
        with m:
            if self._value > 0:
                self._value -= 1
                return True
            if not blocking:
                return False
            w = _new_waiter()
            self._waiters.append(w)
        return _wait_queued(m, self._waiters, w, timeout, self.release)

    __enter__ = acquire

    def _check_release(self, n: int) -> None:
        pass

    def release(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError("n must be one or more")
        with self._mutex:
            self._check_release(n)
            for _ in range(n):
                if self._waiters:
                    self._waiters.popleft().wake_threadsafe(True)
                else:
                    self._value += 1

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _at_fork_reinit(self) -> None:
        self._mutex = _allocate_lock()
        self._waiters = deque()


class BoundedSemaphore(Semaphore):
    """``threading.BoundedSemaphore``."""

    def __init__(self, value: int = 1) -> None:
        super().__init__(value)
        self._initial_value = value

    def _check_release(self, n: int) -> None:
        if self._value + n > self._initial_value:
            raise ValueError("Semaphore released too many times")


class Event:
    """``threading.Event``: ``wait(timeout)`` suspends only the calling greenlet; ``set()`` from a
    greenlet or any thread wakes every waiter."""

    __slots__ = ("__weakref__", "_flag", "_mutex", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._mutex = _allocate_lock()
        self._waiters: deque = deque()

    def is_set(self) -> bool:
        return self._flag

    isSet = is_set

    def set(self) -> None:
        with self._mutex:
            self._flag = True
            waiters, self._waiters = self._waiters, deque()
            for w in waiters:
                w.wake_threadsafe(True)

    def clear(self) -> None:
        with self._mutex:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        m = self._mutex
        with m:
            if self._flag:
                return True
            w = _new_waiter()
            self._waiters.append(w)
        woken = _wait_queued(m, self._waiters, w, timeout)
        return woken or self._flag

    def _at_fork_reinit(self) -> None:
        self._mutex = _allocate_lock()
        self._waiters = deque()

    def __repr__(self) -> str:
        return f"<spawning.green.Event {'set' if self._flag else 'unset'}, {len(self._waiters)} waiting>"


class Queue(_queue_mod.Queue):
    """``queue.Queue`` (put/get with block and timeout, qsize, maxsize, task_done/join) built on
    the green primitives. Raises ``queue.Full`` / ``queue.Empty``."""

    def __init__(self, maxsize: int = 0) -> None:
        # The stdlib constructor with green locks: the rest of queue.Queue is reused as is.
        self.maxsize = maxsize
        self._init(maxsize)
        self.mutex = Lock()  # type: ignore[assignment]
        self.not_empty = Condition(self.mutex)  # type: ignore[assignment]
        self.not_full = Condition(self.mutex)  # type: ignore[assignment]
        self.all_tasks_done = Condition(self.mutex)  # type: ignore[assignment]
        self.unfinished_tasks = 0


class LifoQueue(Queue, _queue_mod.LifoQueue):
    pass


class PriorityQueue(Queue, _queue_mod.PriorityQueue):
    pass


class SimpleQueue:
    """``queue.SimpleQueue``: unbounded FIFO, put never blocks."""

    def __init__(self) -> None:
        self._items: deque = deque()
        self._count = Semaphore(0)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._items.append(item)
        self._count.release()

    def put_nowait(self, item: Any) -> None:
        self.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if not self._count.acquire(block, timeout if block else None):
            raise _queue_mod.Empty
        return self._items.popleft()

    def get_nowait(self) -> Any:
        return self.get(False)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


# ---- greenlet-local storage ----------------------------------------------------------------------------

_local_ids = iter(range(1, 1 << 62))
_L = TypeVar("_L", bound="local")
_T = TypeVar("_T")


def _local_dict(self: local) -> dict:
    """The calling greenlet's dict for this local (created, and __init__ run, on first use). Each
    greenlet keeps its dicts in its own __dict__, so they die with it."""
    key = object.__getattribute__(self, "_local__key")
    gd = getcurrent().__dict__
    d = gd.get(key)
    if d is None:
        d = gd[key] = {}
        object.__setattr__(self, "__dict__", d)
        cls = type(self)
        if cls.__init__ is not object.__init__:
            args, kw = object.__getattribute__(self, "_local__args")
            cls.__init__(self, *args, **kw)
    return d


class local:
    """``threading.local`` whose attributes are per greenlet (hence per request in green mode; each
    OS thread's main greenlet keeps it per thread elsewhere)."""

    __slots__ = ("__dict__", "__weakref__", "_local__args", "_local__key", "_local__lock")

    def __new__(cls: type[_L], *args: Any, **kw: Any) -> _L:  # noqa: PYI019 (typing.Self needs 3.11)
        if (args or kw) and cls.__init__ is object.__init__:
            raise TypeError("Initialization arguments are not supported")
        self = object.__new__(cls)
        key = f"_spawning_local_{next(_local_ids)}"
        object.__setattr__(self, "_local__key", key)
        object.__setattr__(self, "_local__args", (args, kw))
        object.__setattr__(self, "_local__lock", _thread.RLock())
        getcurrent().__dict__[key] = object.__getattribute__(self, "__dict__")
        return self

    def __getattribute__(self, name: str) -> Any:
        with object.__getattribute__(self, "_local__lock"):
            object.__setattr__(self, "__dict__", _local_dict(self))
            return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "__dict__":
            raise AttributeError(f"{type(self).__name__!r} object attribute '__dict__' is read-only")
        with object.__getattribute__(self, "_local__lock"):
            object.__setattr__(self, "__dict__", _local_dict(self))
            object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name == "__dict__":
            raise AttributeError(f"{type(self).__name__!r} object attribute '__dict__' is read-only")
        with object.__getattribute__(self, "_local__lock"):
            object.__setattr__(self, "__dict__", _local_dict(self))
            object.__delattr__(self, name)


# ---- green threads, sleeping, timeouts -----------------------------------------------------------------


def _require_hub(what: str) -> Hub:
    hub = _hub
    if hub is None:
        raise RuntimeError(f"spawning.green.{what} needs the hub: run the app with --threads 0, "
                           "or call spawning.green.run()")
    return hub


def sleep(seconds: float = 0) -> None:
    """Suspends the calling greenlet for ``seconds`` (0: let the others run). Outside the hub it is
    ``time.sleep``."""
    hub = _coop_hub()
    if hub is None:
        _real_sleep(seconds)
        return
    w = Waiter(hub)
    if seconds <= 0:
        w.wake(None)
        w.wait()
    else:
        w.wait(seconds)


class GreenThread:
    """A handle on a spawned green thread."""

    __slots__ = ("_args", "_done", "_fn", "_glet", "_kw", "exception", "hub", "value")

    def __init__(self, hub: Hub, fn: Callable, args: tuple, kw: dict) -> None:
        self.hub = hub
        self._fn = fn
        self._args = args
        self._kw = kw
        self._glet = greenlet(self._run, hub.glet)
        self._done = Event()
        self.value: Any = None
        self.exception: BaseException | None = None

    def _run(self) -> None:
        try:
            self.value = self._fn(*self._args, **self._kw)
        except GreenletExit as e:
            self.value = e
        except BaseException as e:
            self.exception = e
            log.exception("error in green thread %r", self._fn)
        finally:
            self._fn = self._args = self._kw = None   # type: ignore[assignment]
            self._done.set()

    def _start(self) -> None:
        if not self._done.is_set():
            self._glet.switch()

    @property
    def dead(self) -> bool:
        return self._done.is_set()

    def join(self, timeout: float | None = None) -> Any:
        """Waits for the end; returns the function's result, re-raises its exception, raises
        TimeoutError if it is still running after ``timeout``. A killed thread returns None."""
        if not self._done.wait(timeout):
            raise TimeoutError("green thread still running")
        if self.exception is not None:
            raise self.exception
        return None if isinstance(self.value, GreenletExit) else self.value

    def _throw(self, exc: BaseException) -> None:
        g = self._glet
        if g.dead:
            return
        if not g:                    # never started: it dies without running
            self.value = exc
            self._fn = self._args = self._kw = None   # type: ignore[assignment]
            self._done.set()
            return
        g.throw(exc)

    def kill(self, exception: type[BaseException] | BaseException = GreenletExit, block: bool = True,
             timeout: float | None = None) -> None:
        """Raises ``exception`` (GreenletExit by default) in the green thread where it waits; with
        ``block``, waits until it has finished."""
        if self._done.is_set():
            return
        exc = exception() if isinstance(exception, type) else exception
        if getcurrent() is self._glet:
            raise exc
        if _get_ident() == self.hub.ident:
            self.hub.schedule(self._throw, exc)
        else:
            self.hub.call_threadsafe(self._throw, exc)
        if block:
            self._done.wait(timeout)


def spawn(fn: Callable, *args: Any, **kw: Any) -> GreenThread:
    """Runs ``fn(*args, **kw)`` in a new green thread (it starts at the hub's next turn)."""
    hub = _require_hub("spawn")
    t = GreenThread(hub, fn, args, kw)
    if _get_ident() == hub.ident:
        hub.schedule(t._start)
    else:
        hub.call_threadsafe(t._start)
    return t


class Timeout(Exception):
    """``with Timeout(seconds):`` raises (in the greenlet that entered the block, wherever it waits
    after ``seconds``) this Timeout, or ``exception`` if one is given. ``seconds=None``: no limit.
    Only green threads under the hub can be interrupted; elsewhere entering one is an error."""

    def __init__(self, seconds: float | None = None, exception: BaseException | type | None = None) -> None:
        super().__init__(seconds)
        self.seconds = seconds
        self.exception = exception
        self._timer: _Timer | None = None
        self._glet: Any = None

    def __str__(self) -> str:
        return f"{self.seconds} seconds"

    def start(self) -> Timeout:
        if self.seconds is None:
            return self
        hub = _coop_hub()
        if hub is None:
            raise RuntimeError("spawning.green.Timeout works only in green threads under the hub")
        self._glet = getcurrent()
        self._timer = hub.call_later(self.seconds, self._expire)
        return self

    def _expire(self) -> None:
        g, self._glet = self._glet, None
        if g is None or g.dead:
            return
        exc = self.exception
        if exc is None:
            exc = self
        elif isinstance(exc, type):
            exc = exc()
        g.throw(exc)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._glet = None

    @property
    def pending(self) -> bool:
        return self._glet is not None

    def __enter__(self: _T) -> _T:  # noqa: PYI019
        self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


# ---- fds ---------------------------------------------------------------------------------------------


def _fileno(fd: Any) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


def _blocking_wait(fd: int, mask: int, timeout: float | None) -> bool:
    """Waits in the calling OS thread; True when ready, False on timeout."""
    if _real_poll is not None:
        p = _real_poll()
        p.register(fd, (_select_mod.POLLIN if mask & READ else 0) | (_select_mod.POLLOUT if mask & WRITE else 0))
        return bool(p.poll(None if timeout is None else max(timeout, 0.0) * 1000))
    r, w, _ = _real_select([fd] if mask & READ else [], [fd] if mask & WRITE else [], [], timeout)
    return bool(r or w)


def wait_fd(fd: Any, mask: int, timeout: float | None = None) -> int:
    """Waits until ``fd`` (an int or an object with fileno()) is ready for ``mask`` (READ, WRITE or
    both). Returns the readiness seen; raises ``TimeoutError`` after ``timeout`` seconds."""
    fd = _fileno(fd)
    hub = _coop_hub()
    if hub is None:
        if not _blocking_wait(fd, mask, timeout):
            raise TimeoutError("timed out")
        return mask
    value = hub.wait_fds(((fd, mask),), timeout)
    if value is TIMEDOUT:
        raise TimeoutError("timed out")
    return value


def wait_read(fd: Any, timeout: float | None = None) -> None:
    """Suspends the calling greenlet until ``fd`` is readable (or hung up); ``TimeoutError`` after
    ``timeout`` seconds. Backed by the C loop (``sp_watch``)."""
    wait_fd(fd, READ, timeout)


def wait_write(fd: Any, timeout: float | None = None) -> None:
    """As :func:`wait_read`, for writability."""
    wait_fd(fd, WRITE, timeout)


def forget_fd(fd: int) -> None:
    """Tells the hub that ``fd`` is about to be closed (the patched socket does this). Harmless
    when there is no hub or nothing watches it."""
    hub = _hub
    if hub is not None and hub.watches and _get_ident() == hub.ident:
        hub.forget_fd(fd)


# ---- a real thread pool for work that must block (DNS) ----------------------------------------------


class _ThreadPool:
    """A few real OS threads (started through ``_thread``, fed by the C ``SimpleQueue``, so monkey
    patching never touches them) that run blocking calls for green threads."""

    def __init__(self, size: int = 10) -> None:
        self.size = size
        self._jobs = _RealSimpleQueue()  # type: ignore[var-annotated]
        self._threads = 0
        self._idle = 0
        self._queued = 0
        self._lock = _allocate_lock()
        self._pid = os.getpid()

    def _worker(self, jobs: Any) -> None:
        while True:
            job = jobs.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            job()
            with self._lock:
                self._idle += 1

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._pid != os.getpid():     # forked: the threads stayed in the parent
                self._jobs = _RealSimpleQueue()
                self._threads = self._idle = self._queued = 0
                self._pid = os.getpid()
            self._queued += 1
            if self._queued > self._idle and self._threads < self.size:
                self._threads += 1
                self._idle += 1
                _start_new_thread(self._worker, (self._jobs,))
            self._jobs.put(job)


_pool = _ThreadPool()


def run_in_thread(fn: Callable, *args: Any, **kw: Any) -> Any:
    """Runs a blocking ``fn(*args, **kw)`` in a real OS thread of a small pool and suspends only the
    calling greenlet until it returns (its result, or its exception re-raised). Outside the hub,
    calls fn directly."""
    hub = _coop_hub()
    if hub is None:
        return fn(*args, **kw)
    w = Waiter(hub)
    box: list = [None, None]

    def job() -> None:
        try:
            box[0] = fn(*args, **kw)
        except BaseException as e:   # noqa: BLE001 - handed back to the caller
            box[1] = e
        w.wake_threadsafe(True)

    _pool.submit(job)
    w.wait()
    if box[1] is not None:
        raise box[1]
    return box[0]


# ---- the WSGI side ---------------------------------------------------------------------------------------


class GreenRequestWaiter:
    """The waiter spawning.wsgi delegates blocking to (see ThreadWaiter there): parks the request's
    greenlet on the hub with ``sp_req_wait`` until its connection can make progress."""

    __slots__ = ("body_timeout", "hub", "send_timeout", "srv")

    def __init__(self, hub: Hub, body_timeout: float | None, send_timeout: float | None) -> None:
        self.hub = hub
        self.srv = hub.srv
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout

    def read(self, code: int, buf: Any, n: int) -> int:
        rc = lib.sp_req_read(self.srv, code, buf, n)
        while rc == -errno.EAGAIN:
            if not self.hub.wait_req(code, READ, self.body_timeout):
                return -errno.ETIMEDOUT
            rc = lib.sp_req_read(self.srv, code, buf, n)
        return rc

    def drain(self, code: int, low_water: int) -> int:
        last = -1
        while True:
            p = lib.sp_req_flush(self.srv, code)
            if p < 0 or p <= low_water:
                return p
            if p == last:
                # Woken without progress (a client that half-closed but reads nothing): back off
                # rather than spin; the C loop's send timeout ends it.
                sleep(0.05)
            last = p
            if not self.hub.wait_req(code, WRITE, self.send_timeout):
                return -errno.ETIMEDOUT

    def wait_writable(self, code: int) -> None:
        self.hub.wait_req(code, WRITE, self.send_timeout)


def check_app_compat() -> None:
    """Refuses to run green mode when the app imported gevent or eventlet."""
    found = [m for m in GREEN_ONLY_MODULES if m in sys.modules]
    if found:
        from .errors import AppLoadError
        raise AppLoadError(f"gevent/eventlet monkey patching is not supported with --threads 0 "
                           f"(the application imported {', '.join(found)})")


def _install_wakeup(fd: int) -> Any:
    """Routes signals to the loop's wake pipe so a signal ends sp_poll() at once, unless somebody
    (the worker's housekeeping) already listens on a wakeup fd: theirs stays. Returns what to
    restore, or None."""
    try:
        old = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except (ValueError, OSError):     # not the main thread
        return None
    if old != -1:
        signal.set_wakeup_fd(old)
        return None
    return -1


def _restore_wakeup(saved: Any) -> None:
    if saved is not None:
        try:
            signal.set_wakeup_fd(saved)
        except (ValueError, OSError):
            pass


def _run_hub(hub: Hub, wakeup_fd: int) -> None:
    global _hub
    if _hub is not None:
        raise RuntimeError("a spawning.green hub already runs in this process")
    _hub = hub
    saved = _install_wakeup(wakeup_fd)
    try:
        hub.glet.switch()
    finally:
        _restore_wakeup(saved)
        _hub = None


def _timeout(value: Any, default: float) -> float | None:
    """A configured timeout in seconds: None (no limit) for 0, as everywhere else."""
    seconds = default if value is None else float(value)
    return seconds if seconds > 0 else None


def serve(server: Any) -> None:
    """Runs ``server`` (a spawning.server.Server) in green mode until it is drained or stopped."""
    from .wsgi.handler import make_handler

    check_app_compat()
    cfg = server.config
    hub = Hub(server._srv, server._finished)
    waiter = GreenRequestWaiter(hub, _timeout(cfg.get("body_timeout"), 60.0),
                                _timeout(cfg.get("send_timeout"), 60.0))
    hub.handle = make_handler(server.app, server._srv, server.base_envs, waiter, server.access_log,
                              forwarded=getattr(server, "forwarded", None))
    for fn in getattr(server, "hub_tasks", ()):   # they start once the hub runs
        hub.schedule(GreenThread(hub, fn, (), {})._start)
    try:
        _run_hub(hub, server.wakeup_fd())
    finally:
        lib.sp_server_flush(server._srv)   # responses held back for a burst (csrc/conn.c) go now


def run(fn: Callable, *args: Any, **kw: Any) -> Any:
    """Runs ``fn(*args, **kw)`` as a green thread on a hub of its own (a C loop with no listener)
    until it returns; returns its result. For scripts and tests."""
    from .server import make_core_config

    cfg = make_core_config({})
    srv = lib.sp_server_new(cfg)
    if srv == ffi.NULL:
        raise OSError(ffi.errno, "cannot create the event loop")
    srv = ffi.gc(srv, lib.sp_server_free)
    box: list = []
    hub = Hub(srv, lambda: bool(box) and box[0].dead)
    global _hub
    if _hub is not None:
        raise RuntimeError("a spawning.green hub already runs in this process")
    _hub = hub
    try:
        box.append(spawn(fn, *args, **kw))
    finally:
        _hub = None
    _run_hub(hub, lib.sp_server_wakeup_fd(srv))
    return box[0].join(0)


def monkey_patch() -> None:
    """Called by the worker in --threads 0 before the app is imported: ``spawning.monkey.patch_all``."""
    from . import monkey
    monkey.patch_all()
