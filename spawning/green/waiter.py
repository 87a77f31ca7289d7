"""Waiters: one wake-up for one parked greenlet (``Waiter``) or OS thread (``_ThreadWaiter``).

Everything that waits in spawning.green parks on one of these; whoever wakes it (an fd event, a
timer, a lock's release, another thread) calls ``wake``, and only the first call counts.
"""

from __future__ import annotations

import _thread
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from .hub import Hub

# Captured at import, before spawning.green.monkey can replace them.
_get_ident = _thread.get_ident
_allocate_lock = _thread.allocate_lock


class _Timedout:
    """The value a waiter gets when its timeout expired."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TIMEDOUT"


TIMEDOUT = _Timedout()
_CLOSED = object()           # a waiter's fd was closed under it


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
