"""The in-process HTTP server: one C loop (``sp_server``) plus a dispatcher that runs the app.

``Server(app, settings, listeners).serve()`` is what a worker process runs. Two dispatchers:

- threads (``--threads N``, N >= 1): N threads each take one request at a time from the loop
  (``sp_poll_one``; a thread answering a request takes its next one in the same call) and run it. The C side arranges leader/follower so a fast app keeps a single thread busy with no
  hand-offs (see csrc/loop/loop.c); a blocking app gets a second thread after a few milliseconds.
- green (``--threads 0``): a hub greenlet drives the loop; each request runs in its own greenlet
  (spawning.green).

This is the one place that puts the core, the WSGI handler (spawning.wsgi) and a dispatcher
together: spawning.green gets the loop and the finish test from here and never sees the server.

``drain()`` and ``stop()`` are safe from any thread and from signal handlers' deferred work.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._core import ffi, lib
from .config import Settings, addresses
from .errors import check, errno_name
from .listeners import stop_listening
from .wsgi.accesslog import AccessLog
from .wsgi.environ import base_environ
from .wsgi.forwarded import ProxyTrust
from .wsgi.handler import ThreadWaiter, make_handler

log = logging.getLogger("spawning")

SERVER_HEADER = b"spawning"
#: Longest wait of an app thread in the loop before it looks at the stop/drain flags again.
POLL_MS = 1000
#: Upper bounds (seconds) of the request duration histogram's buckets, from the C core; a last
#: bucket (+Inf) follows them.
DURATION_BOUNDS: tuple[float, ...] = tuple(b / 1e6 for b in lib.sp_duration_bounds_us)


def backend_name() -> str:
    """The poll backend compiled into the core: 'epoll', 'kqueue' or 'poll'."""
    return ffi.string(lib.sp_backend_name()).decode()


def _ms(seconds: float) -> int:
    """A timeout in whole milliseconds for the core, where 0 means off (as on the command line): a
    positive one never rounds down to 0."""
    ms = float(seconds) * 1000
    return max(1, int(ms)) if ms > 0 else 0


def _timeout(seconds: float) -> float | None:
    """A configured timeout in seconds: None (no limit) for 0, as everywhere else."""
    return seconds if seconds > 0 else None


def make_core_config(settings: Settings) -> Any:
    """Fills an ``sp_config`` from the settings (every field: the C defaults are for C callers)."""
    c = ffi.new("sp_config *")
    lim = c.limits
    lim.max_request_line = settings.limit_request_line
    lim.max_field_size = settings.limit_request_field_size
    lim.max_head_size = settings.max_head_size
    lim.max_headers = settings.limit_request_fields
    body = settings.max_body_size
    c.max_body_size = -1 if not body else body
    c.max_connections = settings.max_connections
    c.header_timeout_ms = _ms(settings.header_timeout)
    c.keepalive_timeout_ms = _ms(settings.keepalive_timeout)
    c.send_timeout_ms = _ms(settings.send_timeout)
    c.body_timeout_ms = _ms(settings.body_timeout)
    c.keepalive = 0 if settings.no_keepalive else 1
    c.max_chunk_ext = settings.limit_chunk_extension
    # Corking (csrc/conn/output.c) trades a little latency for far fewer client wake-ups. Several
    # app threads hold every small response (the access log's order); one app thread (green mode,
    # -t 1) only those that can leave in a burst. -t 1 runs the flusher (Server._serve_threads) to
    # send them when due while its one thread runs a slow request; green mode's hub polls, which
    # sends them, whenever a request waits.
    c.cork = lib.SP_CORK_ALWAYS if settings.threads > 1 else lib.SP_CORK_BURSTS
    # Thread mode: each answer takes the thread's next queued request in the same crossing.
    # Green mode's hub takes whole batches instead (and fd events, which an answer must not).
    c.chain = 0 if settings.threads == 0 else 1
    # --max-requests, as the worker was given it (with its jitter): the core counts requests as
    # they go to the app and drains itself at the limit.
    c.max_requests = settings.max_requests
    return c


class Server:
    """One worker's HTTP server over already bound, listening sockets."""

    def __init__(self, app: Callable, settings: Settings, listeners: list) -> None:
        self.app = app
        self.settings = settings
        self.listeners = listeners
        self.threads = settings.threads
        if self.threads == 0:   # the app is loaded now: refuse gevent/eventlet as a boot error
            from . import green  # only in green mode: thread mode never loads greenlet
            green.check_app_compat()
        self._core_cfg = make_core_config(settings)
        # --no-server-header: an empty value is no header at all (csrc/sp.h).
        self._server_header = ffi.new("char[]", b"" if settings.no_server_header else SERVER_HEADER)
        self._core_cfg.server_header = self._server_header
        self._core_cfg.proxy_listeners = addresses.proxy_listeners(settings, len(listeners))
        self.forwarded = ProxyTrust(settings.forwarded_allow_ips, settings.forwarded_host)
        srv = lib.sp_server_new(self._core_cfg)
        if srv == ffi.NULL:
            raise OSError(ffi.errno, "cannot create the server loop")
        self._srv = ffi.gc(srv, lib.sp_server_free)
        self.base_envs = []
        for i, sock in enumerate(listeners):
            check(lib.sp_server_add_listener(srv, sock.fileno(), i), "listen")
            try:
                name = sock.getsockname()
            except OSError:
                name = ("", 0)
            self.base_envs.append(base_environ(name, sock.family, settings))
        self.access_log = AccessLog(settings.access_log_file, settings.access_log_format)
        self._count_buf = ffi.new("sp_stats *")
        self._draining = False
        self._stopping = False
        self._hub: Any = None     # green mode's hub, once it serves (see _serve_green)
        self._done = threading.Event()
        self.started = time.time()
        # With --threads 0: callables serve() runs as green threads on the hub (the worker's
        # housekeeping, so that the process stays one OS thread).
        self.hub_tasks: list[Callable[[], Any]] = []

    # ---- control (any thread) ----------------------------------------------------------------

    def drain_listeners(self) -> None:
        """The whole server stops: serves what waits in the listen queues, then refuses new
        connections. Takes every connection the kernel already completed into this worker,
        whether or not a thread is free (they are then answered in turn), and only then shuts
        the listening sockets down in every process (which would reset what their queues hold)."""
        lib.sp_server_accept_pending(self._srv)
        stop_listening(self.listeners)

    def drain(self) -> None:
        """Stops accepting; in-flight requests finish; serve() returns once no connection is left."""
        self._draining = True
        self._watch_finish()
        lib.sp_server_drain(self._srv)
        lib.sp_server_wakeup(self._srv)
        grace = self.settings.stream_grace
        if self.threads == 0 and grace > 0:   # 0: off, as every other timeout
            # Requests still running --stream-grace seconds from now (SSE streams, long polls)
            # get GeneratorExit rather than hold the worker until --graceful-timeout.
            from . import green
            green.end_requests_after(grace)

    def stop(self) -> None:
        """serve() returns as soon as possible (in-flight requests are abandoned)."""
        self._stopping = True
        self._watch_finish()
        lib.sp_server_wakeup(self._srv)
        self._done.set()

    def wakeup_fd(self) -> int:
        """A write end that interrupts the loop: suits ``signal.set_wakeup_fd``."""
        return lib.sp_server_wakeup_fd(self._srv)

    def stats(self) -> dict:
        st = ffi.new("sp_stats *")
        lib.sp_server_stats(self._srv, st)
        return {
            "requests": int(st.requests),
            "accepted": int(st.accepted),
            "rejected": int(st.rejected),
            "connections": int(st.connections),
            "in_flight": int(st.in_flight),
            "bytes_out": int(st.bytes_out),
            "status_class": [int(st.status_class[i]) for i in range(6)],
            "oldest_request_start": (time.monotonic() - st.oldest_busy_ms / 1000) if st.in_flight else None,
            # Request durations (app hand-off to finish), counted per bucket of DURATION_BOUNDS.
            "duration_counts": list(st.duration_count),
            "duration_sum": st.duration_sum_us / 1e6,
            # Times accepting paused because the process ran out of file descriptors.
            "accept_pauses": int(st.accept_pauses),
            "retiring": bool(st.retiring),
        }

    def busy(self) -> list[tuple[str, str, float]]:
        """The requests the app runs now: (method, path, seconds since the app took it), for a
        worker about to cut them. Paths are escaped for a log line (percent-decoded, they may
        hold control characters)."""
        cap = 65536
        buf = ffi.new("char[]", cap)
        n = lib.sp_server_busy(self._srv, buf, cap)
        fields = ffi.unpack(buf, n).split(b"\0")
        found = []
        for i in range(0, len(fields) - 2, 3):
            path = fields[i + 1].decode("utf-8", "backslashreplace")
            path = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
            found.append((fields[i].decode("latin-1"), path, int(fields[i + 2]) / 1000))
        found.sort(key=lambda item: -item[2])
        return found

    # ---- serving ---------------------------------------------------------------------------------

    def requests(self) -> int:
        """Requests served so far (the stats' count, without building the whole dict)."""
        st = self._count_buf
        lib.sp_server_stats(self._srv, st)
        return int(st.requests)

    def retiring(self) -> bool:
        """True once --max-requests requests went to the app: the core drains itself then."""
        st = self._count_buf
        lib.sp_server_stats(self._srv, st)
        return bool(st.retiring)

    def _finished(self) -> bool:
        return self._stopping or (self._draining and lib.sp_server_connections(self._srv) == 0)

    def _watch_finish(self) -> None:
        """_finished() may be true from now on: green mode's hub looks at it again (see below)."""
        hub = self._hub
        if hub is not None:
            hub.watch_finish(True)

    def serve(self) -> None:
        """Runs the dispatcher until drained or stopped. Call from the main thread."""
        if self.threads == 0:
            self._serve_green()
        else:
            self._serve_threads()

    def _serve_green(self) -> None:
        from . import green

        hub = green.Hub(self._srv, self._finished)
        # _finished() is false until stop() or drain() sets its flags (they are its only writers,
        # and each then calls _watch_finish): till then the hub's C turn need not call it before
        # every poll (green.Hub.watch_finish). Off first, then the flags looked at: a stop() from
        # another thread meanwhile turns it on again either there or here.
        self._hub = hub
        hub.watch_finish(False)
        if self._stopping or self._draining:
            hub.watch_finish(True)
        waiter = green.GreenRequestWaiter(hub, _timeout(self.settings.body_timeout),
                                          _timeout(self.settings.send_timeout))
        hub.handle = make_handler(self.app, self._srv, self.base_envs, waiter, self.access_log,
                                  forwarded=self.forwarded)
        # The housekeeping tasks start once the hub runs.
        green.serve(hub, self.wakeup_fd(), self.hub_tasks)

    def _serve_threads(self) -> None:
        body_ms = _ms(self.settings.body_timeout)
        waiter = ThreadWaiter(self._srv, body_ms if body_ms > 0 else -1)   # 0: off, no limit
        handle = make_handler(self.app, self._srv, self.base_envs, waiter, self.access_log,
                              threads=self.threads, poll_ms=POLL_MS, forwarded=self.forwarded)
        workers = [threading.Thread(target=self._thread_main, args=(handle,), name=f"spawning-{i}",
                                    daemon=True) for i in range(self.threads)]
        flusher = None
        if self.threads == 1:
            # With one app thread nothing else would send its held-back responses while it runs
            # a slow request: the core's flusher loop does, in a thread of its own (without the
            # GIL, the whole time; csrc/loop/flusher.c).
            flusher = threading.Thread(target=lib.sp_server_flusher, args=(self._srv,),
                                       name="spawning-flusher", daemon=True)
            flusher.start()
        for t in workers:
            t.start()
        try:
            while not self._done.wait(0.25):
                if self._finished():
                    break
        finally:
            self._stopping = True
            lib.sp_server_wakeup(self._srv)
            # One deadline for all: a thread still in a long request must not make each of
            # the others wait its own turn (SIGQUIT is an immediate stop).
            deadline = time.monotonic() + (2.0 if self._draining else 0.5)
            for t in workers:
                t.join(max(0.0, deadline - time.monotonic()))
            if flusher is not None:   # after the app thread: it may hold responses till its end
                lib.sp_server_flusher_stop(self._srv)
                flusher.join(1.0)

    def _thread_main(self, handle: Callable) -> None:
        try:
            self._thread_loop(handle)
        finally:
            # Responses held back to leave in a burst (csrc/conn/output.c, "Corking") go now.
            lib.sp_server_flush(self._srv)

    def _thread_loop(self, handle: Callable) -> None:
        srv = self._srv
        poll = lib.sp_poll_one
        # handle() runs the requests its answers take at once (sp_code_answer), and when one
        # brings none it polls itself (this, without the GIL: no Python frame), so it returns
        # only when a poll brings nothing.
        poll_next = functools.partial(poll, srv, POLL_MS)
        finished = self._finished
        while True:
            code = poll(srv, POLL_MS)
            while code > 0:
                try:
                    code = handle(code, poll_next)
                except BaseException:   # the handler answers app errors itself; this is a bug
                    log.exception("internal error handling a request")
                    code = 0
            if code < 0 and code != -errno.EINTR:
                log.error("event loop failed: %s", errno_name(code))
                time.sleep(0.1)
            if finished():
                self._done.set()
                lib.sp_server_wakeup(srv)
                return
