"""The green dispatcher: what spawning.server needs to run its WSGI handler on the hub.

``GreenRequestWaiter`` is the waiter the handler (spawning.wsgi) delegates blocking to in green mode;
``serve`` runs a hub whose ``handle`` the server has set until the server's finish test says so.
The server puts the pieces together (spawning.server): this package never sees the server.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .._core import lib
from .hub import READ, WRITE, Hub, run_hub
from .tasks import GreenThread, sleep

GREEN_ONLY_MODULES = ("gevent", "eventlet")


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
        from ..errors import AppLoadError
        raise AppLoadError(f"gevent/eventlet monkey patching is not supported with --threads 0 "
                           f"(the application imported {', '.join(found)})")


def serve(hub: Hub, wakeup_fd: int, tasks: Iterable[Callable[[], Any]] = ()) -> None:
    """Runs ``hub`` (its ``handle`` set, see spawning.server) until its finish test is true. Each of
    ``tasks`` runs as a green thread once the hub runs; signals write to ``wakeup_fd``."""
    check_app_compat()
    for fn in tasks:   # they start once the hub runs
        hub.schedule(GreenThread(hub, fn, (), {})._start)
    try:
        run_hub(hub, wakeup_fd)
    finally:
        lib.sp_server_flush(hub.srv)   # responses held back for a burst (csrc/conn/output.c) go now
