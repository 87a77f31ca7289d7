"""Green threads: ``spawn`` and its ``GreenThread`` handle, ``sleep``, ``Timeout``, and ``run`` (a hub
of its own, for scripts and tests)."""

from __future__ import annotations

import _thread
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet  # type: ignore[import-untyped]

from .._core import ffi, lib
from .hub import Hub, _coop_hub, _real_sleep, _require_hub, _Timer, hub_running, run_hub
from .sync import Event
from .waiter import Waiter

log = logging.getLogger("spawning")

_get_ident = _thread.get_ident
_T = TypeVar("_T")


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


def run(fn: Callable, *args: Any, **kw: Any) -> Any:
    """Runs ``fn(*args, **kw)`` as a green thread on a hub of its own (a C loop with no listener)
    until it returns; returns its result. For scripts and tests."""
    # A loop with no listener never has a connection, so the connection limits and timeouts the
    # server's config sets do not apply: the zeroed config (0 is "the core's default" or "off")
    # serves.
    srv = lib.sp_server_new(ffi.new("sp_config *"))
    if srv == ffi.NULL:
        raise OSError(ffi.errno, "cannot create the event loop")
    srv = ffi.gc(srv, lib.sp_server_free)
    box: list = []
    hub = Hub(srv, lambda: bool(box) and box[0].dead)
    if hub_running():
        raise RuntimeError("a spawning.green hub already runs in this process")
    box.append(GreenThread(hub, fn, args, kw))
    hub.schedule(box[0]._start)   # as spawn() from the hub's own thread does
    run_hub(hub, lib.sp_server_wakeup_fd(srv))
    return box[0].join(0)
