"""Synchronisation primitives for greenlets and OS threads alike: Lock, RLock, Condition, Semaphore,
BoundedSemaphore, Event and the queues.

They work in greenlets and in ordinary OS threads, and across the two: a greenlet parks on the hub,
a thread blocks on a private real lock, and a wake-up from another thread reaches the hub through
``Hub.call_threadsafe``. That is what lets spawning.green.monkey replace ``threading``'s primitives
while real threads (the DNS pool, an app's background thread) keep working.

Outside the hub (no hub running, another OS thread, or the hub greenlet itself) every blocking call
here simply blocks the calling thread, as its standard library counterpart would.
"""

from __future__ import annotations

import _thread
import queue as _queue_mod
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent  # type: ignore[import-untyped]

from .. import _core
from ..wsgi.response import FAST
from .hub import _coop_hub
from .waiter import Waiter, _ThreadWaiter

# Captured at import, before spawning.green.monkey can replace them.
_monotonic = time.monotonic
_allocate_lock = _thread.allocate_lock


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


class _PyLockBase:
    """Lock's uncontended paths where csrc/py/glock.c's LockBase is not built (PyPy,
    SPAWNING_NO_PYFAST=1): whether it is held is a real lock's state (``_held``), so that taking a
    free lock is that lock's non-blocking acquire, atomic between OS threads, without the mutex."""

    __slots__ = ("__weakref__", "_held", "_mutex", "_waiters")
    _held: Any
    _mutex: Any
    _waiters: deque

    def __init__(self) -> None:
        self._held = _allocate_lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        # The common call, acquire() or `with lock`: neither of _acquire_slow's checks can fail.
        if timeout == -1 and self._held.acquire(False):
            return True
        return self._acquire_slow(blocking, timeout)  # type: ignore[attr-defined]

    # release() is Lock's _release_slow itself (Lock sets it): without C's test, a lock is freed
    # under the mutex only.

    def locked(self) -> bool:
        return self._held.locked()

    def _take(self) -> bool:
        return self._held.acquire(False)

    def _drop(self) -> None:
        self._held.release()

    def _free(self) -> None:
        self._held = _allocate_lock()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()  # type: ignore[attr-defined]


class _PyRLockBase:
    """RLock's uncontended paths where csrc/py/glock.c's RLockBase is not built."""

    __slots__ = ("__weakref__", "_block", "_count", "_owner")
    _block: Lock
    _count: int
    _owner: Any

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = getcurrent()
        if self._owner is me:
            self._count += 1
            return True
        # Lock.acquire's own fast path, written out here (a call fewer: asgiref's Local takes an
        # RLock on every attribute Django reads or sets); a held lock goes the general way.
        if timeout == -1 and self._block._held.acquire(False):
            self._owner = me
            self._count = 1
            return True
        return self._acquire_slow(blocking, timeout)  # type: ignore[attr-defined]

    __enter__ = acquire

    def release(self) -> None:
        if self._owner is not getcurrent():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if not self._count:
            self._owner = None
            self._block.release()     # Lock.release owns the hand-over to a waiter

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _is_owned(self) -> bool:
        return self._owner is getcurrent()


# On CPython the uncontended paths are C's (csrc/py/glock.c), which owns no rule of its own: it
# takes a free lock, frees one no one waits for and counts an RLock's owner, and calls the methods
# below for everything else.
if TYPE_CHECKING:     # the C bases have the Python ones' attributes and methods
    _LockBase = _PyLockBase
    _RLockBase = _PyRLockBase
else:
    _LockBase = _core.LockBase if FAST else _PyLockBase
    _RLockBase = _core.RLockBase if FAST else _PyRLockBase


class Lock(_LockBase):
    """``threading.Lock`` that suspends only the calling greenlet. FIFO: release() hands the lock to
    the longest waiter.

    Taking a free lock and freeing one no one waits for are the base's (_LockBase: C's, or a
    real lock's non-blocking acquire), atomic between OS threads without the mutex (a framework
    takes several locks a request in green mode). Everything that decides between waiters
    (queueing, release with waiters, hand-over) happens here under ``_mutex``, and a release keeps
    the lock held when it hands it to a waiter, so a newcomer cannot overtake one."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self._mutex = _allocate_lock()
        self._waiters: deque = deque()

    def _acquire_slow(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number")
        m = self._mutex
        with m:
            if self._take():
                return True
            if not blocking:
                return False
            w = _new_waiter()
            self._waiters.append(w)
            # C's release frees a lock no one waits for without the mutex: one that came between
            # the take above and the append left the lock free for this second try. Had anyone
            # waited then, the lock would have been handed over, not freed: w is the only waiter.
            if self._take():
                self._waiters.remove(w)
                return True
        return _wait_queued(m, self._waiters, w, None if timeout == -1 else timeout, self.release)

    def _release_slow(self) -> None:
        with self._mutex:
            if not self.locked():
                raise RuntimeError("release unlocked lock")
            if self._waiters:
                self._waiters.popleft().wake_threadsafe(True)   # stays held: handed over
            else:
                self._drop()

    if not FAST:
        release = _release_slow

    def _at_fork_reinit(self) -> None:
        self._mutex = _allocate_lock()
        self._waiters = deque()
        self._free()

    def __repr__(self) -> str:
        return f"<spawning.green.Lock {'locked' if self.locked() else 'unlocked'}>"


class RLock(_RLockBase):
    """``threading.RLock``; the owner is the greenlet (each OS thread has its own main greenlet, so
    this is per-thread too when greenlets are not involved). The owner's acquire and release, and a
    free lock's, are the base's (_RLockBase); the rest is here."""

    __slots__ = ()

    def __init__(self) -> None:
        self._block = Lock()
        self._owner: Any = None
        self._count = 0

    def _acquire_slow(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._block.acquire(blocking, timeout):
            self._owner = getcurrent()
            self._count = 1
            return True
        return False

    def locked(self) -> bool:
        return self._block.locked()

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
