"""Waiting on file descriptors: ``wait_read``, ``wait_write`` (and ``wait_fd``, both at once), backed
by the C loop (``sp_watch``) under the hub and by a real poll(2) elsewhere."""

from __future__ import annotations

import select as _select_mod
from typing import Any

from .hub import READ, WRITE, _coop_hub
from .waiter import TIMEDOUT

# Captured at import, before spawning.green.monkey can replace them.
_real_poll = getattr(_select_mod, "poll", None)
_real_select = _select_mod.select


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
