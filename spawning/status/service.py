"""The status service (``--status-port``): a small HTTP server inside the controller, answering the
page (spawning.status.page), the JSON document (spawning.status.model), Prometheus metrics
(spawning.status.prometheus) and the liveness and readiness probes.

Theory of operation
-------------------
The service runs inside the controller's single-threaded loop: no thread (the controller forks, and
forking a threaded process invites deadlocks) and no callback into the workers. The controller
attaches it (``attach``) after binding its sockets; it binds its own listening socket and gives
the controller every descriptor it reads through ``add_reader``, so each one is closed in workers
after fork. Writing needs readiness too, and the controller only watches for reading: a response the
socket does not take whole waits in a private selector whose own descriptor (an epoll/kqueue fd,
readable when one of its sockets is writable) is in turn one of the controller's readers.

It is a deliberately small HTTP/1.1 server: GET and HEAD, one request per connection (every answer
says ``Connection: close``), heads up to ``MAX_HEAD`` bytes, connections idle longer than
``CLIENT_TIMEOUT`` are dropped, at most ``MAX_CLIENTS`` at once. Pages are built on demand from the
controller's own data (``Controller.snapshot()``, fed by the heartbeats every worker sends over its
channel each second), so they cost nothing while nobody looks:

- ``/`` and ``/status``: an HTML page with no external assets that refreshes itself;
- ``/status.json``: the same data (the schema is in docs/status.md and docs/status.schema.json);
- ``/metrics``: the Prometheus text exposition format (version 0.0.4);
- ``/healthz``: 200 while the controller runs (liveness); ``/readyz``: 200 while a generation
  serves, 503 while starting and from the start of a shutdown on (``--shutdown-delay`` included);
- ``/_coverage/`` with ``--coverage``: the combined coverage report (spawning.coverage_support).

A once-a-second timer folds departed workers' counts into the totals (``Ledger``) and samples
request counts for the requests-per-second figures (``Rates``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import time
from typing import Any

from .. import coverage_support
from ..errors import EXIT_FAILURE, Halt
from ..sockets import recv_ready
from .model import Ledger, Rates, as_number, collect
from .page import render_html
from .prometheus import render_metrics

log = logging.getLogger("spawning")

#: Largest request head accepted, in bytes.
MAX_HEAD = 16384
#: Seconds a client may take to send its request and read the answer.
CLIENT_TIMEOUT = 10.0
#: Most connections served at once; more are closed at once.
MAX_CLIENTS = 64

_REASONS = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class _Client:
    __slots__ = ("buf", "closed", "fd", "out", "reading", "since", "sock", "waiting", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out: memoryview | None = None
        self.since = time.monotonic()
        self.reading = False
        self.writing = False
        self.closed = False
        self.waiting = False  # for a coverage report


class StatusService:
    """The HTTP side of the status service (see the module docstring)."""

    def __init__(self, controller: Any, host: str, port: int) -> None:
        self.controller = controller
        self.host = host
        self.port = port
        self.ledger = Ledger()
        self.rates = Rates()
        self.listener: socket.socket | None = None
        self.clients: set[_Client] = set()
        self._writers = selectors.DefaultSelector()
        self._coverage: coverage_support.AsyncReport | None = None

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
        except OSError as exc:
            listener.close()
            raise Halt(EXIT_FAILURE, f"spawning: cannot serve the status page on "
                                     f"{self.host}:{self.port}: {exc.strerror or exc}") from None
        listener.setblocking(False)
        self.listener = listener
        c = self.controller
        c.add_reader(listener.fileno(), self._accept)
        c.add_reader(self._writers.fileno(), self._on_writable)
        c.add_timer(1.0, self._tick)
        c.at_exit(self.close)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        log.info("status page on http://%s:%d/ (JSON: /status.json, Prometheus: /metrics)", shown,
                 listener.getsockname()[1])

    def close(self) -> None:
        for client in list(self.clients):
            self._close(client)
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.controller.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        with contextlib.suppress(KeyError, ValueError):
            self.controller.remove_reader(self._writers.fileno())
        self._writers.close()
        if self._coverage is not None:
            self._coverage.close()

    def _tick(self) -> None:
        c = self.controller
        self.ledger.update(c.workers)
        self.rates.sample(self.ledger.totals()["requests"],
                          {pid: int(as_number(w.stats.get("requests"))) for pid, w in c.workers.items()})
        now = time.monotonic()
        for client in list(self.clients):
            if not client.waiting and now - client.since > CLIENT_TIMEOUT:
                self._close(client)
        if self._coverage is not None:
            self._coverage.poll()

    def document(self) -> dict[str, Any]:
        return collect(self.controller, self.ledger, self.rates)

    # -- connections -------------------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(16):
            try:
                sock, _ = self.listener.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again on the next turn
                log.warning("status service: accept failed: %s", exc)
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock)
            self.clients.add(client)
            client.reading = True
            self.controller.add_reader(client.fd, lambda client=client: self._on_readable(client))

    def _stop_reading(self, client: _Client) -> None:
        if client.reading:
            client.reading = False
            self.controller.remove_reader(client.fd)

    def _close(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        self._stop_reading(client)
        if client.writing:
            client.writing = False
            self._writers.unregister(client.sock)
        client.sock.close()
        self.clients.discard(client)

    def _on_readable(self, client: _Client) -> None:
        if client.closed:
            return
        data = recv_ready(client.sock, 8192)
        if data is None:
            return
        if not data:
            self._close(client)
            return
        client.buf += data
        end = client.buf.find(b"\r\n\r\n")
        if end < 0:
            end = client.buf.find(b"\n\n")
        if end > MAX_HEAD or (end < 0 and len(client.buf) > MAX_HEAD):
            self._stop_reading(client)
            self._send(client, 431, "text/plain; charset=utf-8", b"request head too large\n")
            return
        if end < 0:
            return
        self._stop_reading(client)
        self._handle(client, client.buf[:end].decode("latin-1"))

    def _handle(self, client: _Client, head: str) -> None:
        parts = head.split("\n", 1)[0].strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._send(client, 400, "text/plain; charset=utf-8", b"bad request\n")
            return
        method, target = parts[0], parts[1]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._send(client, 405, "text/plain; charset=utf-8", b"only GET and HEAD\n",
                       extra=[("Allow", "GET, HEAD")])
            return
        path = target.split("?", 1)[0]
        if path.startswith(("http://", "https://")):  # absolute-form
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        try:
            if path in ("/", "/status", "/status/", "/status.html"):
                body = render_html(self.document()).encode()
                self._send(client, 200, "text/html; charset=utf-8", body, head_only)
            elif path == "/status.json":
                body = json.dumps(self.document(), indent=1).encode() + b"\n"
                self._send(client, 200, "application/json", body, head_only)
            elif path == "/healthz":     # alive: the controller's loop answered
                self._send(client, 200, "text/plain; charset=utf-8", b"ok\n", head_only)
            elif path == "/readyz":
                ready, why = self.controller.readiness()
                self._send(client, 200 if ready else 503, "text/plain; charset=utf-8",
                           why.encode() + b"\n", head_only)
            elif path == "/metrics":
                body = render_metrics(self.document()).encode()
                self._send(client, 200, "text/plain; version=0.0.4; charset=utf-8", body, head_only)
            elif path == coverage_support.PREFIX or path.startswith(coverage_support.PREFIX + "/"):
                self._serve_coverage(client, path, head_only)
            else:
                self._send(client, 404, "text/plain; charset=utf-8",
                           b"not found: try /, /status.json or /metrics\n", head_only)
        except Exception:
            log.exception("status service: error answering %s", path)
            self._send(client, 500, "text/plain; charset=utf-8", b"internal error\n", head_only)

    def _serve_coverage(self, client: _Client, path: str, head_only: bool) -> None:
        run = getattr(self.controller, "coverage", None)
        if run is None:
            self._send(client, 404, "text/plain; charset=utf-8",
                       b"coverage is off: start the server with --coverage\n", head_only)
            return
        if path == coverage_support.PREFIX:
            self._send(client, 301, "text/plain; charset=utf-8", b"",
                       extra=[("Location", coverage_support.PREFIX + "/")])
            return
        if self._coverage is None:
            self._coverage = coverage_support.AsyncReport(run, self.controller.add_reader,
                                                          self.controller.remove_reader)
        report = self._coverage

        def ready(error: str | None) -> None:
            client.waiting = False
            if client.closed:
                return
            found = coverage_support.resolve(report.out_dir, path)
            if found is None:
                self._send(client, 500 if error else 404, "text/plain; charset=utf-8",
                           (error or "not found").encode() + b"\n", head_only)
                return
            with open(found[0], "rb") as f:
                self._send(client, 200, found[1], f.read(), head_only)

        if coverage_support.is_index(path) or not os.path.isdir(report.out_dir):
            for w in list(self.controller.workers.values()):  # fresh data, please
                if w.state != "starting":
                    w.send({"t": "cov_save"})
            client.waiting = True
            report.request(ready)
        else:
            ready(None)

    def _send(self, client: _Client, status: int, ctype: str, body: bytes, head_only: bool = False,
              extra: list[tuple[str, str]] | None = None) -> None:
        headers = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Content-Type: {ctype}",
                   f"Content-Length: {len(body)}", "Cache-Control: no-store",
                   "X-Content-Type-Options: nosniff", "Connection: close", "Server: spawning-status"]
        headers += [f"{k}: {v}" for k, v in extra or []]
        data = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        client.out = memoryview(data)
        client.since = time.monotonic()
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        out = client.out
        while out:
            try:
                sent = client.sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(client)
                return
            out = out[sent:]
        client.out = out
        if out:
            if not client.writing:
                client.writing = True
                self._writers.register(client.sock, selectors.EVENT_WRITE, client)
            return
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_WR)
        self._close(client)

    def _on_writable(self) -> None:
        for key, _ in self._writers.select(0):
            client = key.data
            if not client.closed:
                self._flush(client)


def attach(controller: Any) -> StatusService | None:
    """The controller's component hook: starts the service when ``--status-port`` is set and is not
    the port the application is served on."""
    config = controller.config
    port = int(config.get("status_port") or 0)
    if not port:
        return None
    host = config.get("status_host") or config.get("host") or "127.0.0.1"
    if port == int(config.get("port") or 0) and not config.get("bind"):
        log.warning("--status-port %d is the application's port: no status page", port)
        return None
    service = StatusService(controller, host, port)
    service.start()
    controller.status_service = service
    return service
