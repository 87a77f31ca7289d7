"""The worker process shell: what a forked child does around ``Server.serve()``.

Theory of operation
-------------------
The controller forks; the child calls ``Worker.run()``, which never returns (it ends with
``os._exit`` so the controller's atexit handlers, pid file removal among them, never run in a
worker). In order:

1. Process hygiene: close every descriptor that belongs to the controller (its selector, its signal
   pipe, the other workers' channels: a sibling holding our channel open would hide our death),
   install the worker's own signal handlers, set the process title.
2. Boot: run the factory again (``config_factory(args)``, so a reload sees fresh settings), then
   its ``app_factory(config)``, which imports the application. On failure the worker sends one
   ``boot_error`` message with a one-line reason and exits with ``WORKER_BOOT_ERROR``; the traceback
   is printed only at ``--log-level debug``.
3. Build ``Server(app, config, listeners)``, send ``ready``, start the housekeeping (a thread;
   with ``--threads 0`` green threads on the hub), and run ``server.serve()`` in the main thread
   until it returns; then exit 0.

The channel is one end of a ``socketpair`` carrying line-delimited JSON objects, each with a type
``t``:

- worker -> controller: ``{"t": "ready"}``; ``{"t": "hb", "stats": {...}, "oldest_age": s|null,
  "files": [...]}`` every ``HEARTBEAT`` seconds (``files``: newly imported module files, with
  ``--reload=dev``); ``{"t": "boot_error", "msg": "...", "files": [...]}``.
- controller -> worker: ``{"t": "drain"}`` (finish in-flight requests and exit), ``{"t": "stop"}``
  (exit as soon as possible), ``{"t": "cov_save"}`` (with ``--coverage``: save coverage data now),
  ``{"t": "unready"}`` (the server shuts down: ``--health-path`` answers 503 from now on, while
  the worker may still serve through ``--shutdown-delay``).

Signals: SIGTERM and SIGINT drain (SIGTERM after ``--shutdown-delay``, as the controller does, for
process managers that signal every process; if the controller said ``unready`` meanwhile, its final
drain ends the delay, not the worker's own clock), SIGQUIT stops at once; a second SIGTERM/SIGINT
while draining stops at once (that is the controller's "TERM" step when a drain overruns
``--graceful-timeout``); a worker that stops so logs the requests it cuts (method, path, age), read
from the core.
SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1/2 and SIGWINCH are ignored: they are the controller's. Handlers do
nothing but enqueue: Python's wakeup descriptor writes the signal number into a pipe, and the
housekeeping, which also reads the channel, acts on it by calling the thread-safe
``server.drain()``/``server.stop()``.

In thread mode the housekeeping is a real OS thread started through ``_thread`` with ``select``
captured at import time. It reports ``oldest_age`` (how long the oldest in-flight request has
run) and the controller applies ``--timeout``. In green mode it runs as green threads on the hub
(``Server.hub_tasks``): the worker is then a single OS thread, and a hub blocked for longer than
``--timeout`` stops the heartbeats, so the controller replaces the worker. If the controller
disappears (EOF on the channel) the worker drains and exits.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from ..config import Settings
from ..errors import WORKER_BOOT_ERROR, AppLoadError, ConfigError
from ..wsgi.health import Readiness
from ..wsgi.health import middleware as health_middleware

log = logging.getLogger("spawning")

# Captured before any application code (or green monkey-patching) can replace them.
_select = select.select
_start_thread = _thread.start_new_thread
_monotonic = time.monotonic

#: Seconds between two heartbeats.
HEARTBEAT = 1.0
#: Requests a stopping worker names in its log line (the count says how many more).
CUT_SHOWN = 20
#: Seconds between two looks at the request count under --max-requests.
LIMIT_POLL = 0.05
#: Running out of file descriptors (accepting pauses) is logged at most this often, in seconds.
FD_LOG_EVERY = 10.0

DEFAULT_SERVER_CLASS = "spawning.server:Server"


# ---- the channel (used by both ends) -------------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON."""
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class LineBuffer:
    """Splits a byte stream into JSON messages; tolerates partial lines and ignores garbage."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        messages = []
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("ignoring a malformed message on a worker channel: %r", line[:200])
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages


def import_object(dotted: str) -> Any:
    """Imports ``module:attr`` or ``module.attr``."""
    import importlib

    if ":" in dotted:
        module_name, _, attr = dotted.partition(":")
    else:
        module_name, _, attr = dotted.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_config(args: dict[str, Any]) -> dict[str, Any]:
    """Runs the configured ``config_factory`` on (a copy of) the options and returns its config.

    The controller calls it once at start, each worker again at boot (so a reload sees fresh
    settings). A ``ConfigError`` the factory raises (a bad value in its file) passes through; any
    other failure raises ``AppLoadError`` with one line (and the source files involved, so
    ``--reload=dev`` can watch them for the fix).
    """
    factory_path = Settings.from_config(args).factory
    try:
        factory = import_object(factory_path)
    except Exception as exc:
        log.debug("cannot import factory %r", factory_path, exc_info=True)
        raise AppLoadError(f"cannot import factory {factory_path!r}: {type(exc).__name__}: {exc}",
                           _files_of(exc)) from exc
    try:
        config = factory(dict(args))
    except ConfigError:
        raise
    except Exception as exc:
        log.debug("factory %r failed", factory_path, exc_info=True)
        raise AppLoadError(f"factory {factory_path!r} failed: {type(exc).__name__}: {exc}",
                           _files_of(exc)) from exc
    if not isinstance(config, dict):
        raise AppLoadError(f"factory {factory_path!r} returned {type(config).__name__}, not a dict")
    return config


def load_app(config: dict[str, Any]) -> Any:
    """Imports and builds the application the factory's config names (its ``app_factory``); any
    failure raises ``AppLoadError`` with one line. A worker calls it after fork; the controller
    before forking with ``--preload``, and for ``--check-config``."""
    try:
        return import_object(config.get("app_factory") or "spawning.factories.wsgi.app_factory")(config)
    except AppLoadError:
        raise
    except Exception as exc:
        raise AppLoadError(f"cannot load the application: {type(exc).__name__}: {exc}",
                           _files_of(exc)) from exc


def set_process_title(title: str) -> None:
    """Sets the title ``ps`` shows, when the optional ``setproctitle`` package is installed."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def freeze_heap() -> int:
    """``--gc-freeze``: what the app made while loading (modules, classes, its settings, caches)
    lives as long as the worker, yet every full collection walks it again; a Flask worker's
    full collections cost ~1.7 us a request. Collected once, the garbage of loading goes first;
    what is left moves to the permanent generation, which collections skip. With ``--preload``
    the controller does it too, before forking (controller.py): collections in the workers then
    never write the headers of the objects they inherit, so those pages stay shared. Returns how
    many objects are frozen."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


# ---- the worker ------------------------------------------------------------------------------------------


class Worker:
    """One worker process (runs in the child after fork; see the module docstring)."""

    def __init__(self, args: dict[str, Any], listeners: list[socket.socket], channel: socket.socket,
                 generation: int, close_fds: list[int], max_requests: int = 0,
                 app: Any = None) -> None:
        self.args = args
        self.app = app
        # --max-requests (with this worker's jitter): at this many requests the server drains
        # itself (the core counts them as they go to the app) and a heartbeat at once asks the
        # controller for a replacement.
        self.max_requests = max_requests
        self.listeners = listeners
        self.channel_fd = channel.fileno()
        self._channel = channel  # keeps the socket object (and so the descriptor) alive
        self.generation = generation
        self.close_fds = close_fds
        self.server: Any = None
        self.config: dict[str, Any] = {}  # the factory's config, as app_factory gets it
        # The command line's settings until the factory has run, then the factory's.
        self.settings: Settings = Settings.from_config(args)
        self.draining = False
        self.stopping = False
        self._sent_files: set[str] = set()
        self._send_lock = _thread.allocate_lock()
        self._wake_r = -1
        self.parent_pid = os.getppid()
        self.coverage: Any = None  # spawning.coverage_support.WorkerCoverage with --coverage
        # What --health-path answers: 503 once the server as a whole is shutting down.
        self.readiness = Readiness()
        self._delaying = False     # a SIGTERM of its own started --shutdown-delay
        # The controller said the server shuts down ("unready"): it ends with its final drain.
        self._controller_stops = False
        self._fd_pauses_logged = 0     # accept pauses (out of descriptors) already logged
        self._fd_logged_at = -FD_LOG_EVERY

    # -- plumbing -------------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> bool:
        data = encode(message)
        with self._send_lock:
            try:
                while data:
                    written = os.write(self.channel_fd, data)
                    data = data[written:]
            except OSError:
                return False
        return True

    def _setup_process(self) -> None:
        # First detach the controller's wakeup descriptor: once closed, its number may be reused.
        signal.set_wakeup_fd(-1)
        for fd in self.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        # Our own signal pipe; the handlers are no-ops, the wakeup descriptor carries the number.
        self._wake_r, wake_w = os.pipe()
        for fd in (self._wake_r, wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._enqueue_signal)
        for name in ("SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1", "SIGUSR2", "SIGWINCH"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        os.set_blocking(self.channel_fd, True)
        set_process_title(f"spawning: worker [gen {self.generation}]")

    @staticmethod
    def _enqueue_signal(signum: int, frame: Any) -> None:
        """Signal handler: does nothing itself. The wakeup descriptor has already queued ``signum``
        for the housekeeping, which acts on it."""

    # -- boot ------------------------------------------------------------------------------------------

    def _boot(self) -> Any:
        """Builds the config, the app and the server; returns the server or raises AppLoadError."""
        try:
            self.config = load_config(self.args)
        except ConfigError as exc:  # the factory's own file has a bad value (since the last start)
            raise AppLoadError(str(exc)) from exc
        config = self.config
        # This worker's own limit (the controller drew its jitter): the core counts to it.
        self.settings = settings = Settings.from_config(config, max_requests=self.max_requests)
        if settings.threads == 0 and not settings.no_monkey_patch:
            try:
                self._monkey_patch()
            except Exception as exc:
                raise AppLoadError(f"cannot patch the standard library for green threads: "
                                   f"{type(exc).__name__}: {exc}") from exc
        try:
            # --preload: the controller imported the app before forking; else each worker does.
            app = self.app if self.app is not None else load_app(config)
            if self.coverage is not None:  # /_coverage on the app port, as the original had
                from ..coverage_support import middleware
                app = middleware(app, self.coverage)
            if settings.health_path:
                app = health_middleware(app, settings.health_path, self.readiness)
        except AppLoadError:
            raise
        except Exception as exc:
            raise AppLoadError(f"cannot load the application: {type(exc).__name__}: {exc}",
                               _files_of(exc)) from exc
        try:
            server_class = import_object(settings.extra.get("server_class") or DEFAULT_SERVER_CLASS)
            return server_class(app, settings, self.listeners)
        except Exception as exc:
            raise AppLoadError(f"cannot start the server: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _monkey_patch() -> None:
        import importlib

        try:
            green = importlib.import_module("spawning.green")
        except ImportError:
            return
        patch = getattr(green, "monkey_patch", None)
        if callable(patch):
            patch()

    def _start_coverage(self) -> Any:
        if not self.settings.coverage:
            return None
        from ..coverage_support import start

        self.coverage = start(self.args)
        return self.coverage

    # -- run -------------------------------------------------------------------------------------------

    def run(self) -> NoReturn:
        """The whole life of a worker process. Never returns."""
        code = 0
        try:
            self._setup_process()
            cov = self._start_coverage()
            try:
                self.server = self._boot()
            except AppLoadError as exc:
                if self.settings.log_level == "debug":
                    traceback.print_exc()
                files = sorted(set(exc.files) | self._new_files())
                self.send({"t": "boot_error", "msg": str(exc), "files": files})
                os._exit(WORKER_BOOT_ERROR)
            if self.settings.gc_freeze:
                freeze_heap()
            self.send({"t": "ready", "files": sorted(self._new_files())})
            if getattr(self.server, "threads", None) == 0 and \
                    isinstance(getattr(self.server, "hub_tasks", None), list):
                self.server.hub_tasks.append(self._green_housekeeping)
            else:
                _start_thread(self._housekeeping, ())
            if not (self.draining or self.stopping):
                self.server.serve()
            self._heartbeat()  # the final counts, for the status service's totals
            if cov is not None:
                cov.stop()
        # Nothing may escape: below this frame is the controller's code, which a forked child must
        # never run. Whatever happened, the process ends here.
        except BaseException:  # noqa: BLE001
            code = 1
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    # -- housekeeping (a thread, or green threads on the hub) ---------------------------------------

    def _new_files(self) -> set[str]:
        if self.settings.reload != "dev":  # a factory's file may set it (self.settings is its)
            return set()
        from .reloader import module_files

        files = module_files() - self._sent_files
        self._sent_files |= files
        return files

    def _housekeeping(self) -> None:
        """Thread mode: reads signals and commands, sends heartbeats. Runs until the process
        exits."""
        channel = LineBuffer()
        watched = [self._wake_r, self.channel_fd]
        beats = self._beats()
        while True:
            try:
                readable, _, _ = _select(watched, [], [], next(beats))
            except InterruptedError:
                continue
            except OSError:
                readable = []
            if self._wake_r in readable:
                self._read_signals()
            if self.channel_fd in readable and not self._read_channel(channel):
                watched = [self._wake_r]

    def _green_housekeeping(self) -> None:
        """Green mode (``--threads 0``): the same as green threads on the hub (Server.hub_tasks),
        so the worker stays one OS thread (in a process with a second thread every system call
        on a socket takes and drops a reference on the file, two atomic operations), and a hub
        that an app blocks (a CPU loop, a call the monkey patch does not cover) stops the
        heartbeats: the controller's --timeout then replaces the worker, as gunicorn's gevent
        worker is. Requests that wait cooperatively keep the hub, and the heartbeats, going."""
        from .. import green

        def signals() -> None:
            while True:
                green.wait_read(self._wake_r)
                self._read_signals()

        def commands() -> None:
            channel = LineBuffer()
            while True:
                green.wait_read(self.channel_fd)
                if not self._read_channel(channel):
                    return

        green.spawn(signals)
        green.spawn(commands)
        for timeout in self._beats():
            green.sleep(timeout)

    def _beats(self) -> Iterator[float]:
        """Sends a heartbeat whenever one is due, then yields how long to wait for the next look:
        a second, or LIMIT_POLL under --max-requests, so that a replacement is asked for within
        LIMIT_POLL of the limit. The core stops taking requests at the limit by itself
        (``Server.retiring``); a custom server class with only ``requests()`` is drained here.
        (One with neither is left to the heartbeats.)"""
        next_beat = _monotonic()
        limit_reached: Callable[[], bool] | None = None
        if self.max_requests > 0:
            limit_reached = getattr(self.server, "retiring", None)
            served = getattr(self.server, "requests", None)
            if limit_reached is None and served is not None:
                limit_reached = lambda: served() >= self.max_requests
        while True:
            if limit_reached is not None and limit_reached():
                limit_reached = None
                self._drain(f"served {self.max_requests} requests (--max-requests)")
                next_beat = 0.0
            if _monotonic() >= next_beat:
                next_beat = _monotonic() + HEARTBEAT
                self._heartbeat()
                if self.coverage is not None:
                    self.coverage.save_if_due()
            timeout = max(0.0, next_beat - _monotonic())
            yield timeout if limit_reached is None else min(timeout, LIMIT_POLL)

    def _read_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            data = b""
        for signum in data:
            self._on_signal(signum)

    def _read_channel(self, channel: LineBuffer) -> bool:
        """Acts on what the controller sent; False once it has gone (EOF), after draining."""
        try:
            data = os.read(self.channel_fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.readiness.serving = False
            self._drain("the controller went away")
        for message in channel.feed(data):
            self._on_command(message)
        return bool(data)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGQUIT:
            self._stop()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            why = f"signal {signal.Signals(signum).name}"
            delay = self.settings.shutdown_delay
            if self.draining:
                self._stop()
            elif signum == signal.SIGTERM and delay > 0 and not self._delaying:
                # Sent to this worker itself, as when a whole process group is signalled
                # (systemd's KillMode=control-group, some platforms' stop): --shutdown-delay
                # as the controller keeps it, or the worker would stop accepting first.
                self._delaying = True
                self.readiness.serving = False
                _start_thread(self._drain_after, (delay, why))
            else:           # SIGINT; or a second SIGTERM during the delay: drain now
                self.readiness.serving = False
                self._drain(why)

    def _drain_after(self, delay: float, why: str) -> None:
        """Drains once ``delay`` seconds have passed, unless something drained first. A thread of
        its own, waiting with the select captured before monkey patching (a real wait)."""
        deadline = _monotonic() + delay
        while not self.draining and (left := deadline - _monotonic()) > 0:
            _select([], [], [], min(left, 0.5))
        if self._controller_stops:
            # The controller got the SIGTERM too (a whole process group was signalled): its own
            # delay, counted from its own signal, ends in the final drain, which first takes in
            # the listen queue. Draining here first, a few milliseconds earlier on a loaded
            # machine, would exit while the controller still counts this worker as serving (it
            # read that as a crash and forked a replacement) and leave the queue to no one.
            return
        self._drain(f"{why}, --shutdown-delay over")

    def _on_command(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "drain":
            if message.get("final"):
                self._final_drain()
            else:
                self._drain("asked by the controller")
        elif kind == "stop":
            self._stop()
        elif kind == "unready":     # the server shuts down (--shutdown-delay may keep it serving)
            self.readiness.serving = False
            self._controller_stops = True
        elif kind == "ping":
            self._heartbeat()
        elif kind == "cov_save" and self.coverage is not None:
            self.coverage.save()

    def _drain(self, why: str) -> None:
        if self.draining:
            return
        self.draining = True
        log.debug("worker %d draining: %s", os.getpid(), why)
        self.server.drain()

    def _final_drain(self) -> None:
        """The whole server stops (the controller's graceful shutdown): connections waiting in the
        listen queue are taken in and served before the listeners refuse new ones (see
        ``Server.drain_listeners``); then the usual drain. Runs even when already draining (a
        SIGTERM to the whole process group reaches the workers first), for the queue."""
        unlisten = getattr(self.server, "drain_listeners", None)
        if unlisten is not None and not self.stopping:
            try:
                unlisten()
            except Exception:   # the controller stops listening anyway
                log.exception("worker %d: taking in the listen queue failed", os.getpid())
        self.send({"t": "unlistened"})
        if self.draining:
            self.server.drain()   # again: the connections just taken in close after their answer
        else:
            self._drain("the server shuts down")

    def _stop(self) -> None:
        self.stopping = True
        self._log_cut()
        self.server.stop()

    def _log_cut(self) -> None:
        """Names the requests a stop abandons (method, path, age), as the worker's last words: the
        controller stops a drain that overran --graceful-timeout with SIGTERM, and only this
        process knows what it was still running. Read from the core, so it costs nothing before."""
        busy = getattr(self.server, "busy", None)
        try:
            cut = busy() if busy is not None else []
        except Exception:   # last words must not stop the stop
            log.exception("worker %d: cannot list its requests", os.getpid())
            return
        if not cut:
            return
        why = ("still draining at SIGTERM (--graceful-timeout "
               f"{self.settings.graceful_timeout:g} s)" if self.draining
               else "stopping at once")
        shown = ", ".join(f"{method} {path} ({age:.1f} s)" for method, path, age in cut[:CUT_SHOWN])
        more = f" and {len(cut) - CUT_SHOWN} more" if len(cut) > CUT_SHOWN else ""
        log.warning("worker %d %s: cutting %d request%s: %s%s", os.getpid(), why, len(cut),
                    "" if len(cut) == 1 else "s", shown, more)

    def _heartbeat(self) -> None:
        try:
            stats = dict(self.server.stats())
        except Exception as exc:  # noqa: BLE001 - the server's problem, not a reason to stop beating
            stats = {"error": repr(exc)}
        self._log_fd_pauses(stats.get("accept_pauses"))
        oldest = stats.get("oldest_request_start")
        age = None
        if isinstance(oldest, (int, float)):
            age = max(0.0, _monotonic() - oldest)
        message: dict[str, Any] = {"t": "hb", "stats": stats, "oldest_age": age}
        files = self._new_files()
        if files:
            message["files"] = sorted(files)
        self.send(message)


    def _log_fd_pauses(self, pauses: Any) -> None:
        """The core pauses accepting when the process runs out of descriptors and counts it (the
        status service shows the count): said here too, at most every FD_LOG_EVERY seconds."""
        if not isinstance(pauses, int) or pauses <= self._fd_pauses_logged:
            return
        now = _monotonic()
        if now - self._fd_logged_at < FD_LOG_EVERY:
            return
        log.warning("worker %d ran out of file descriptors: accepting paused %d time%s since the "
                    "last report (raise the limit, ulimit -n, or lower --max-connections)",
                    os.getpid(), pauses - self._fd_pauses_logged,
                    "" if pauses - self._fd_pauses_logged == 1 else "s")
        self._fd_pauses_logged = pauses
        self._fd_logged_at = now


def _files_of(exc: BaseException) -> list[str]:
    filename = getattr(exc, "filename", None)
    return [filename] if isinstance(filename, str) and filename.endswith(".py") else []
