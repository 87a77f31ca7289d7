"""``run_in_thread``: a small pool of real OS threads for calls that must block (DNS lookups), so
that only the calling greenlet waits for them."""

from __future__ import annotations

import _thread
import os
import queue as _queue_mod
from collections.abc import Callable
from typing import Any

from .hub import _coop_hub
from .waiter import Waiter

# Captured at import, before spawning.green.monkey can replace them.
_allocate_lock = _thread.allocate_lock
_start_new_thread = _thread.start_new_thread
_RealSimpleQueue = _queue_mod.SimpleQueue


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
