"""``--health-path``: a load balancer's probe answered on the application port, without the app.

Where it is answered, and why there: a WSGI middleware the worker wraps around the application
when it loads it (``Worker._boot``). Both ways a request can run call "the app", the Python
handler (spawning.wsgi) and the C path (csrc/py/runner.c, which runs the app itself for requests
whose environ it knows), so one check covers both, and the application proper is never called
for that path. A check in the handler before the app call would have needed a second copy in C
for the requests C runs. Without ``--health-path`` the app is not wrapped and nothing is spent;
with it, one dict look-up and one comparison per request.

The answer: ``200 ok`` while the worker serves; ``503`` once the server is shutting down: from
SIGTERM on (``--shutdown-delay`` keeps the worker serving meanwhile, so that the balancer sees the
503 and stops sending before the drain), or when the worker itself was told to stop. A worker
draining because of a reload keeps answering 200: the server as a whole is still serving.

The status port answers ``/healthz`` and ``/readyz`` for the whole server (spawning.status.service).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

OK = b"ok\n"
SHUTTING_DOWN = b"shutting down\n"


class Readiness:
    """Whether this worker answers its health path with 200 (``serving``) or 503. The worker sets
    it from the controller's ``unready`` message or a signal; requests read it."""

    __slots__ = ("serving",)

    def __init__(self) -> None:
        self.serving = True


def middleware(app: Callable[..., Iterable[bytes]], path: str,
               readiness: Readiness) -> Callable[..., Iterable[bytes]]:
    """``app`` with ``path`` answered here (any method): 200 ``ok`` or 503 ``shutting down``."""

    def health(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != path:
            return app(environ, start_response)
        if readiness.serving:
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                      ("Content-Length", str(len(OK))),
                                      ("Cache-Control", "no-store")])
            return [OK]
        start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(SHUTTING_DOWN))),
                                                   ("Cache-Control", "no-store")])
        return [SHUTTING_DOWN]

    health.__wrapped__ = app  # type: ignore[attr-defined]
    return health
