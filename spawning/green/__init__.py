"""Green threads (``--threads 0``): one greenlet per request on a hub greenlet that drives the C loop.

The layer above spawning.wsgi and below spawning.server (docs/architecture.md). Modules: ``hub`` (the
loop and the process's hub; theory of operation there), ``waiter``, ``sync`` (locks, events,
queues), ``local``, ``tasks`` (spawn, sleep, Timeout, run), ``fds`` (wait_read/wait_write),
``pool`` (run_in_thread), ``dispatch`` (the server's green dispatcher) and ``monkey`` (the standard
library's patches; ``spawning.monkey`` is its stable alias). The names below are the public API,
as the single module ``spawning.green`` had them (those imported ``as`` themselves are
not in ``__all__`` but stay importable for the server and tests).
"""

from __future__ import annotations

from greenlet import GreenletExit, getcurrent  # type: ignore[import-untyped]

from .dispatch import GREEN_ONLY_MODULES as GREEN_ONLY_MODULES
from .dispatch import GreenRequestWaiter as GreenRequestWaiter
from .dispatch import check_app_compat as check_app_compat
from .dispatch import serve
from .fds import wait_fd as wait_fd
from .fds import wait_read, wait_write
from .hub import READ as READ
from .hub import WRITE as WRITE
from .hub import Hub as Hub
from .hub import cooperative, hub_running
from .hub import end_requests_after as end_requests_after
from .hub import forget_fd as forget_fd
from .local import local
from .pool import run_in_thread
from .sync import BoundedSemaphore, Condition, Event, Lock, Queue, RLock, Semaphore, SimpleQueue
from .sync import LifoQueue as LifoQueue
from .sync import PriorityQueue as PriorityQueue
from .tasks import GreenThread, Timeout, run, sleep, spawn
from .waiter import TIMEDOUT as TIMEDOUT
from .waiter import Waiter as Waiter

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

def monkey_patch() -> None:
    """Called by the worker in --threads 0 before the app is imported: ``spawning.monkey.patch_all``.
    (spawning.green.monkey is imported only then: it imports ssl and selectors.)"""
    from .monkey import patch_all
    patch_all()
