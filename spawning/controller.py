"""The controller: owns the listening sockets, forks and supervises worker processes.

Theory of operation
-------------------
The controller is one single-threaded process running one loop (``Controller.run``). Before the
loop it checks the pid file, binds every listening socket (``sockets.bind_all``), daemonizes if
asked, writes the pid file, drops privileges (so port 80 can be bound by root and served by
``--user``), attaches the optional components (the status service) and, with ``--preload``, imports
the application (workers then serve that one instead of importing it). The sockets stay open for
the controller's whole life and every worker inherits them; a reload therefore never refuses a
connection: whatever no worker accepts waits in the kernel's queue.

Workers are grouped in *generations*. ``active_gen`` is the generation serving; at most one
``pending_gen`` is booting. Each worker is in one state:

    starting --ready--> ready --drain--> draining --exit--> (reaped)
        \\--exit before ready: a boot failure

A reload (SIGHUP, a changed file under ``--reload=dev``, ``--max-memory``, ``--max-age``) starts a
full new generation while the old one keeps serving. When every new worker has reported ``ready``
the new generation becomes active and every older worker is told to drain: stop accepting, finish
in-flight requests, and exit. A draining worker still alive after ``--graceful-timeout`` gets
SIGTERM (which stops it at once), then SIGKILL ``KILL_AFTER`` seconds later; each step is logged. If
any worker of the pending generation fails to boot (an import or syntax error in new code) the
pending generation is abandoned and the active one keeps serving; the error is logged, and the next
reload is a new attempt. A reload asked for while another is booting is remembered and started as
soon as that one is done, so the code that ends up serving is never older than the last request.

Within the active generation the loop keeps ``processes`` workers alive: a worker that dies is
replaced at once, unless workers keep failing (dying before they are ready or within
``CRASH_WINDOW`` of it), in which case replacements back off exponentially (``BACKOFF_BASE`` doubling
per failure in the last minute, up to ``BACKOFF_MAX``). A worker to be recycled alone
(``--max-requests``, ``--max-worker-memory``) is marked *retiring*: its replacement is started
first and the retiring worker is drained once the replacement is ready, so capacity never dips.
SIGTTIN/SIGTTOU change the target count by one the same way.

If the first generation cannot boot, the controller prints the worker's one-line reason and exits
with code 2: a server that has never served should not sit in a crash loop.

Signals: handlers only append the signal to a queue (and Python's wakeup descriptor wakes the
loop's selector); the loop acts on them. SIGHUP reloads, SIGTERM/SIGINT shut down gracefully (a
second SIGINT makes it immediate; with ``--shutdown-delay`` a SIGTERM first makes the server
unready, /readyz and ``--health-path`` answering 503, and serves on for that long, so that load
balancers stop sending before the drain; the drain logs what it waits for every 5 s), SIGQUIT shuts down immediately, SIGTTIN/SIGTTOU add/remove a
worker, SIGCHLD reaps; other catchable signals that would otherwise kill the process (SIGUSR1,
SIGUSR2, SIGWINCH) are logged and ignored.

Workers talk to the controller over a socketpair each (see ``spawning.worker``): ``ready``,
heartbeats with ``Server.stats()`` every second, ``boot_error``; the controller sends ``drain`` and
``stop``. ``--timeout`` is enforced here, from the heartbeats: a worker whose oldest in-flight
request has run longer (thread mode), or that sent no heartbeat for that long (any mode: in green
mode, where long-held comet requests are normal, only this rule applies; there the heartbeats come
from the hub, so a hub that an app blocks falls silent), is killed and replaced.

Extension points for other components (the status service of ``--status-port``):

- ``Controller.snapshot()`` returns a JSON-able dict of the controller and each worker.
- ``Controller.add_reader(fd, callback)`` / ``remove_reader(fd)`` run ``callback()`` in the loop
  whenever ``fd`` is readable; ``add_timer(interval, callback)`` runs ``callback()`` periodically;
  ``at_exit(callback)`` runs at shutdown. Everything runs in the controller's one thread, so no
  locking is needed; callbacks must not block. Descriptors given to ``add_reader`` are closed in
  workers after fork.
- ``COMPONENTS`` lists (config key, ``module:attach``) pairs: when the key's value is truthy, the
  controller imports the module and calls ``attach(controller)`` after binding its sockets. The status
  service plugs in as ``spawning.status.service:attach``. A factory may name more in
  ``config["components"]``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import sockets as sockets_mod
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, WORKER_BOOT_ERROR, Halt
from .reloader import Reloader, invalidate_bytecode
from .worker import LineBuffer, Worker, encode, import_object, set_process_title

log = logging.getLogger("spawning")

#: Seconds between SIGTERM and SIGKILL for a worker that overran its graceful timeout, and between
#: SIGQUIT and SIGKILL on an immediate shutdown.
KILL_AFTER = 3.0
#: Crash-loop back-off: first delay, cap, and the window in which failures are counted.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 30.0
BACKOFF_WINDOW = 60.0
#: A worker that dies this soon after becoming ready counts as a crash (for the back-off).
CRASH_WINDOW = 1.0
#: Seconds a reload may take to boot, at least (``--timeout`` raises it).
MIN_BOOT_TIMEOUT = 30.0
#: Memory sampling periods: with a memory limit set, and without (for the status page).
MEMORY_INTERVAL = 0.5
MEMORY_INTERVAL_IDLE = 5.0
#: ``--max-memory`` reloads follow each other without a pause while they work (fresh workers start
#: under the limit: a pause would only let a fast leak run past it). Once fresh workers are over
#: the limit from the start, reloading cannot help: the pause between reloads is this, doubling
#: per such reload up to MEMORY_BACKOFF_MAX, so that such a baseline does not thrash.
MEMORY_RELOAD_COOLDOWN = 5.0
MEMORY_BACKOFF_MAX = 60.0
#: A worker silent this long is wedged, whatever ``--timeout`` says (heartbeats come every second).
MIN_SILENCE = 5.0
#: Graceful shutdown: the workers take in the listen queue and shut the listeners down themselves
#: (``Worker._final_drain``); the controller does it after this many seconds if none said so.
UNLISTEN_WAIT = 1.0
#: Seconds between two "waiting for N requests" lines of a graceful shutdown.
PROGRESS_INTERVAL = 5.0
#: ...and how long the first waits for the heartbeats asked for at the start of the shutdown.
PROGRESS_FIRST = 0.2
#: Longest loop wait.
TICK = 0.5

COMPONENTS: tuple[tuple[str, str], ...] = (
    ("status_port", "spawning.status.service:attach"),
    ("coverage", "spawning.coverage_support:attach"),
)

MB = 1 << 20


def describe_status(status: int) -> str:
    """A wait status in words: ``exited with code 3``, ``killed by SIGKILL``."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


def sd_notify(message: str) -> None:
    """Sends a readiness message to systemd (``NOTIFY_SOCKET``); does nothing without it.

    Never blocks: a receiver whose queue is full (one that does not read) loses the message rather
    than stopping the controller's loop.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(path)
            sock.send(message.encode())
    except OSError as exc:
        log.debug("sd_notify(%r) failed: %s", message, exc)


class Pidfile:
    """A pid file that refuses to be taken over from a live process."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def check(self) -> None:
        """Raises ``Halt(1)`` if the file names a live process other than this one."""
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise Halt(EXIT_FAILURE, f"spawning: cannot read pid file {self.path}: {exc.strerror}")
        try:
            pid = int(text)
        except ValueError:
            return  # garbage: not a live server's
        if pid == os.getpid() or pid <= 0:
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass  # alive, owned by someone else
        raise Halt(EXIT_FAILURE, f"spawning: pid file {self.path} names a running process ({pid}); "
                                 "is another server running?")

    def create(self, pid: int) -> None:
        self.check()
        tmp = f"{self.path}.{pid}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{pid}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise Halt(EXIT_FAILURE, f"spawning: cannot write pid file {self.path}: {exc.strerror}")
        self.pid = pid

    def unlink(self) -> None:
        """Removes the file if it still holds our pid."""
        if self.pid is None:
            return
        try:
            with open(self.path) as f:
                if int(f.read().strip() or 0) != self.pid:
                    return
            os.unlink(self.path)
        except (OSError, ValueError):
            pass


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switches to ``group`` then ``user`` (names or numbers); raises ``Halt(1)`` on failure."""
    if not user and not group:
        return
    import grp
    import pwd

    uid = gid = None
    try:
        if user:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        raise Halt(EXIT_FAILURE, f"spawning: no such user: {user!r}") from None
    try:
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise Halt(EXIT_FAILURE, f"spawning: no such group: {group!r}") from None
    try:
        if (gid is not None and os.getegid() != gid) or (uid is not None and os.geteuid() != uid):
            if gid is not None:
                if os.geteuid() == 0:
                    if user and not user.isdigit():
                        os.initgroups(user, gid)
                    else:
                        os.setgroups([gid])
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
    except OSError as exc:
        raise Halt(EXIT_FAILURE, f"spawning: cannot switch to user {user or '-'} / group "
                                 f"{group or '-'}: {exc.strerror}") from None


def daemonize(stdout: str | None, stderr: str | None) -> None:
    """Detaches from the terminal (double fork, new session); standard streams go to the given files
    (appended) or /dev/null. The working directory is kept: the application is imported from it."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    for target, fd in ((stdout, 1), (stderr, 2)):
        if target:
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, fd)
            os.close(out)
        else:
            os.dup2(devnull, fd)
    os.close(devnull)


class WorkerHandle:
    """The controller's record of one worker process."""

    def __init__(self, pid: int, generation: int, channel: socket.socket, reason: str) -> None:
        self.pid = pid
        self.generation = generation
        self.channel = channel
        self.buffer = LineBuffer()
        self.state = "starting"
        self.reason = reason
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.ready_mono: float | None = None
        self.last_seen = time.monotonic()
        self.stats: dict[str, Any] = {}
        self.oldest_age: float | None = None
        self.memory: int | None = None  # USS
        self.rss: int | None = None
        self.first_memory: int | None = None   # the first sample once ready: its baseline
        self.boot_error: str | None = None
        self.retiring: str | None = None
        self.max_requests = 0
        self.drain_deadline: float | None = None
        self.term_sent: float | None = None
        self.kill_sent: float | None = None
        self.killed_for: str | None = None

    def __repr__(self) -> str:
        return f"worker {self.pid} (gen {self.generation})"

    def send(self, message: dict[str, Any]) -> bool:
        try:
            self.channel.sendall(encode(message))
        except OSError:
            return False
        return True

    def info(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "pid": self.pid,
            "generation": self.generation,
            "state": "retiring" if self.retiring and self.state == "ready" else self.state,
            "started_at": self.started_at,
            "age": now - self.started_mono,
            "last_heartbeat_age": now - self.last_seen,
            "stats": dict(self.stats),
            "memory": self.memory,
            "rss": self.rss,
            "reason": self.reason,
            "retiring": self.retiring,
        }


class Controller:
    """Supervises the worker processes; see the module docstring."""

    def __init__(self, args: dict[str, Any], config: dict[str, Any]) -> None:
        self.args = args
        self.config = config
        self.num_workers = int(config.get("processes") or 1)
        # 0 = no limit: a draining worker may finish its requests however long they take.
        self.graceful_timeout = float(config.get("graceful_timeout", 30.0) or 0.0)
        self.timeout = float(config.get("timeout", 30.0) or 0.0)
        self.green = int(config.get("threads", 4) or 0) == 0
        self.shutdown_delay = float(config.get("shutdown_delay") or 0.0)
        #: After a SIGTERM under --shutdown-delay: when the drain starts (monotonic), else None.
        self.delay_until: float | None = None
        self._unready = False                    # the workers were told the server shuts down
        self._progress_at: float | None = None   # when the next shutdown progress line is due
        self.listeners: list[socket.socket] = []
        self.addresses: list[str] = []
        self.workers: dict[int, WorkerHandle] = {}
        self.generation = 0
        self.active_gen: int | None = None
        self.pending_gen: int | None = None
        self.pending_reason = ""
        self.pending_started = 0.0
        self.gen_ready_at: float | None = None
        self.booted = False
        self.stopping: str | None = None  # None, "graceful" or "immediate"
        self.exit_code = EXIT_OK
        self.exit_message: str | None = None
        self.started_at = time.time()
        self.pid = os.getpid()
        self.reload_again: str | None = None
        self.last_restart_reason = ""
        self.reloads = 0
        #: Workers replaced, by reason: crash, timeout, boot_failure, max_requests,
        #: max_worker_memory, reload (each worker of a replaced generation).
        self.restarts: dict[str, int] = {}
        self._crashes: deque[float] = deque()
        self._replace_reasons: deque[str] = deque(maxlen=64)
        self._next_spawn_at = 0.0
        self._signals: deque[int] = deque()
        self._selector = selectors.DefaultSelector()
        self._readers: dict[int, Callable[[], None]] = {}
        self._timers: list[list[Any]] = []  # [interval, next_due, callback]
        self._exit_hooks: list[Callable[[], None]] = []
        self._wake_r = self._wake_w = -1
        self._pidfile: Pidfile | None = Pidfile(config["pidfile"]) if config.get("pidfile") else None
        self._unix_paths: list[str] = []
        self._last_memory_sample = 0.0
        self._memory_reload_after = 0.0   # no --max-memory reload before this (see above)
        self._memory_backoff = 0.0
        self._warned_limits: set[str] = set()
        self._unlisten_at: float | None = None   # see UNLISTEN_WAIT
        self._active_target = self.num_workers   # see _start_generation
        self.preloaded_app: Any = None   # --preload: the app, imported before forking
        self.reloader: Reloader | None = None
        if config.get("reload") == "dev":
            self.reloader = Reloader()
            self.reloader.add(os.path.abspath(p) for p in config.get("watch") or [])

    # ---- public API for components (status service) ------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Runs ``callback()`` in the loop whenever ``fd`` is readable (see the module docstring)."""
        self._readers[fd] = callback
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._selector.unregister(fd)

    def add_timer(self, interval: float, callback: Callable[[], None]) -> None:
        """Runs ``callback()`` in the loop about every ``interval`` seconds."""
        self._timers.append([interval, time.monotonic() + interval, callback])

    def at_exit(self, callback: Callable[[], None]) -> None:
        """Runs ``callback()`` when the controller shuts down (before the sockets close)."""
        self._exit_hooks.append(callback)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for ``/readyz``: ready while a generation serves and no shutdown has begun
        (--shutdown-delay included: a load balancer must see it before the drain)."""
        if self.stopping or self.delay_until is not None or self._unready:
            return False, "shutting down"
        if self.active_gen is None:
            return False, "starting"
        if not any(w.state == "ready" for w in self._gen_workers(self.active_gen)):
            return False, "no worker ready"
        return True, "ready"

    def snapshot(self) -> dict[str, Any]:
        """The state of the controller and its workers, as a JSON-able dict."""
        safe_config = {k: v for k, v in self.config.items()
                       if isinstance(v, (str, int, float, bool, type(None), list))}
        # --env values are often credentials (DATABASE_URL=...): the status page names them only.
        safe_config["env"] = [f"{str(pair).partition('=')[0]}=(hidden)"
                              for pair in self.config.get("env") or []]
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "uptime": time.time() - self.started_at,
            "generation": self.active_gen,
            "pending_generation": self.pending_gen,
            "processes": self.num_workers,
            "reloads": self.reloads,
            "restarts": dict(self.restarts),
            "last_restart_reason": self.last_restart_reason,
            "state": self.stopping or ("delaying" if self.delay_until is not None else
                                       "running" if self.booted else "starting"),
            "listen": list(self.addresses),
            "reload_backend": self.reloader.backend if self.reloader else None,
            "config": safe_config,
            "workers": [w.info() for w in sorted(self.workers.values(),
                                                 key=lambda w: (w.generation, w.started_mono))],
        }

    # ---- life cycle ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Runs the server until it is shut down; returns the exit code (or raises ``Halt``)."""
        if self._pidfile:
            self._pidfile.check()
        self.listeners = sockets_mod.bind_all(self.config)
        self.addresses = [sockets_mod.describe(s) for s in self.listeners]
        self._unix_paths = sockets_mod.unix_paths(self.listeners)
        if self.config.get("daemonize"):
            daemonize(self.config.get("stdout"), self.config.get("stderr"))
            self.pid = os.getpid()
        try:
            if self._pidfile:
                self._pidfile.create(self.pid)
            drop_privileges(self.config.get("user"), self.config.get("group"))
            self._install_signals()
            app = self.config.get("app")
            set_process_title(f"spawning: controller [{app}]" if app else "spawning: controller")
            if self.reloader is not None and self.reloader.fileno() is not None:
                self._selector.register(self.reloader.fileno(), selectors.EVENT_READ,  # type: ignore
                                        self.reloader.on_readable)
            self._attach_components()
            if self.config.get("preload"):
                self._preload()
            # "listening on" waits for the first generation (_promote_pending): an app that cannot
            # load then reads as a failed start, not as a start and a death.
            log.debug("bound %s; starting generation 1", ", ".join(self.addresses))
            self._start_generation("start")
            self._loop()
        finally:
            self._cleanup()
        if self.exit_message:
            raise Halt(self.exit_code, self.exit_message)
        return self.exit_code

    def _preload(self) -> None:
        """``--preload``: imports the app here, before any fork; workers serve this one (sharing
        its memory copy-on-write) instead of importing it. Reloads fork from it too, so they
        cannot pick up code changes: those need a full restart."""
        from .errors import AppLoadError
        from .worker import load_app

        if self.green and not self.config.get("no_monkey_patch"):
            log.warning("--preload with --threads 0: the app is imported before the worker patches "
                        "the standard library; what a module bound at import (from socket import "
                        "socket) stays blocking")
        started = time.monotonic()
        try:
            self.preloaded_app = load_app(self.config)
        except AppLoadError as exc:
            log.debug("the application failed to load", exc_info=True)
            raise Halt(EXIT_USAGE, f"spawning: {exc}") from None
        log.info("preloaded %s in the controller in %.2f s", self.config.get("app") or "the app",
                 time.monotonic() - started)

    def _attach_components(self) -> None:
        wanted = [(key, target) for key, target in COMPONENTS if self.config.get(key)]
        # A factory may add its own: config["components"] = ["module:attach", ...].
        wanted += [("components", target) for target in self.config.get("components") or []]
        for key, target in wanted:
            try:
                attach = import_object(target)
            except (ImportError, AttributeError) as exc:
                log.warning("--%s: %s is not available (%s)", key.replace("_", "-"), target, exc)
                continue
            attach(self)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeups)
        handled = ("SIGHUP", "SIGTERM", "SIGINT", "SIGQUIT", "SIGTTIN", "SIGTTOU", "SIGCHLD",
                   "SIGUSR1", "SIGUSR2", "SIGWINCH")
        for name in handled:
            signal.signal(getattr(signal, name), self._enqueue_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _enqueue_signal(self, signum: int, frame: Any) -> None:
        """Signal handler: only enqueues ``signum``; the loop acts on it (the wakeup descriptor has
        already woken the selector)."""
        self._signals.append(signum)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ---- the loop --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            timeout = TICK
            if self.reloader is not None:
                timeout = min(timeout, self.reloader.timeout())
            for due in (self._progress_at, self.delay_until):   # on time, not up to a TICK late
                if due is not None:
                    timeout = min(timeout, max(0.0, due - time.monotonic()))
            for key, _ in self._selector.select(timeout):
                callback = key.data
                try:
                    callback()
                except Halt:
                    raise
                except Exception:
                    log.exception("error in a controller callback")
            self._handle_signals()
            self._reap()
            if self.stopping and not self.workers:
                return
            self._maintain()

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            name = signal.Signals(signum).name
            if signum == signal.SIGCHLD:
                continue  # _reap runs on every turn
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading")
                self.reload("SIGHUP")
            elif signum == signal.SIGTERM:
                self._on_sigterm(name)
            elif signum == signal.SIGINT:
                self.shutdown(graceful=self.stopping is None, why=name)
            elif signum == signal.SIGQUIT:
                self.shutdown(graceful=False, why=name)
            elif signum == signal.SIGTTIN:
                self.num_workers += 1
                log.info("SIGTTIN: %d worker processes", self.num_workers)
                if self.pending_gen is not None and not self.stopping:
                    # A booting generation is promoted once it has num_workers ready workers:
                    # it needs the one more now, or it would wait for it until its boot limit.
                    self._spawn(self.pending_gen, "one more worker (SIGTTIN)")
            elif signum == signal.SIGTTOU:
                if self.num_workers > 1:
                    self.num_workers -= 1
                log.info("SIGTTOU: %d worker processes", self.num_workers)
            else:
                log.warning("ignoring signal %s", name)

    # ---- commands --------------------------------------------------------------------------------------

    def reload(self, reason: str) -> None:
        """Starts a graceful reload (a new generation), or queues one if a reload is booting."""
        if self.stopping or self.delay_until is not None:
            return
        if self.pending_gen is not None:
            self.reload_again = reason
            return
        self._start_generation(reason)

    def _on_sigterm(self, why: str) -> None:
        """SIGTERM, as orchestrators send it: with --shutdown-delay the server first stops being
        ready (/readyz and --health-path answer 503) while it goes on accepting and serving for
        that long, so that load balancers stop sending before anything is refused; then the
        graceful shutdown. A second SIGTERM meanwhile starts the drain at once."""
        if self.delay_until is not None:
            log.info("%s again: draining now", why)
            self.shutdown(graceful=True, why=why)
        elif self.shutdown_delay > 0 and self.stopping is None and self.booted:
            self.delay_until = time.monotonic() + self.shutdown_delay
            self._announce_unready()
            sd_notify(f"STOPPING=1\nSTATUS=shutting down in {self.shutdown_delay:g} s")
            log.info("%s: not ready any more; serving %g s more (--shutdown-delay), then draining",
                     why, self.shutdown_delay)
        else:
            self.shutdown(graceful=True, why=why)

    def _announce_unready(self) -> None:
        """Tells every worker that the server shuts down (its --health-path answers 503), once."""
        if self._unready:
            return
        self._unready = True
        for w in list(self.workers.values()):
            if w.state != "starting":
                w.send({"t": "unready"})

    def _log_progress(self, now: float) -> None:
        """A graceful shutdown's progress, at its start and every PROGRESS_INTERVAL seconds while
        workers remain: what they still hold (their last heartbeats) and the time left."""
        workers = list(self.workers.values())
        if not workers:
            self._progress_at = None
            return

        def count(value: Any) -> int:
            return int(value) if isinstance(value, (int, float)) else 0

        requests = sum(count(w.stats.get("in_flight")) for w in workers)
        connections = sum(count(w.stats.get("connections")) for w in workers)
        deadlines = [w.drain_deadline for w in workers if w.drain_deadline is not None]
        left = (f"up to {math.ceil(max(0.0, max(deadlines) - now))} s" if deadlines
                else "with no time limit (--graceful-timeout 0)")
        log.info("waiting for %d request%s (%d connection%s), %s", requests,
                 "" if requests == 1 else "s", connections, "" if connections == 1 else "s", left)
        self._progress_at = now + PROGRESS_INTERVAL

    def shutdown(self, graceful: bool = True, why: str = "") -> None:
        """Stops every worker (draining them if ``graceful``) and then the controller."""
        if self.stopping == "immediate" or (self.stopping == "graceful" and graceful):
            return
        self.stopping = "graceful" if graceful else "immediate"
        self.delay_until = None
        self._announce_unready()
        if graceful:
            # The first progress line in a moment, from fresh heartbeats: ask for them.
            self._progress_at = time.monotonic() + PROGRESS_FIRST
            for w in list(self.workers.values()):
                if w.state != "starting":
                    w.send({"t": "ping"})
        sd_notify("STOPPING=1")
        if self.exit_message is None:  # else the one line of the message says it all
            log.info("%s: %s shutdown", why or "shutting down", self.stopping)
        now = time.monotonic()
        # New clients are refused, not held and then reset, but only once what the listen queue
        # holds was taken in: the kernel accepted those connections, their requests are on the
        # way. On a graceful stop a worker takes them (however busy its threads) and then shuts
        # the listeners down, which empties the queue (Worker._final_drain); if no worker can,
        # or none says it did within UNLISTEN_WAIT, the controller does it.
        takers = graceful and any(w.state != "starting" for w in self.workers.values())
        if takers:
            self._unlisten_at = now + UNLISTEN_WAIT
        else:
            self._stop_listening()
        for w in list(self.workers.values()):
            if w.state == "starting":
                # Serves nothing yet, so nothing to drain: a graceful stop need not wait for an
                # app's import (it reads no drain message until it has booted).
                w.state = "draining"
                w.drain_deadline = w.term_sent = w.kill_sent = now
                self._signal(w, signal.SIGKILL)
            elif graceful:
                self._drain(w, why or "shutdown", final=True)
            else:
                w.state = "draining"
                w.drain_deadline = now
                self._signal(w, signal.SIGQUIT)
                w.term_sent = now

    def _stop_listening(self) -> None:
        self._unlisten_at = None
        sockets_mod.stop_listening(self.listeners)

    # ---- workers ---------------------------------------------------------------------------------------

    def _start_generation(self, reason: str) -> None:
        self.generation += 1
        self.pending_gen = self.generation
        self.pending_reason = reason
        self.pending_started = time.monotonic()
        # The serving generation's size while this one boots: a SIGTTIN meanwhile grows only the
        # new one (a worker forked now runs the new code: the old one must not get it).
        self._active_target = self.num_workers
        if self.booted:
            sd_notify("RELOADING=1")
            log.info("reload (%s): starting generation %d", reason, self.generation)
            if self.preloaded_app is not None:
                log.info("--preload: generation %d runs the code the controller loaded at start; "
                         "a code change needs a full restart", self.generation)
        for _ in range(self.num_workers):
            self._spawn(self.generation, f"generation {self.generation}: {reason}")

    def _controller_fds(self, keep: socket.socket) -> list[int]:
        """Descriptors a new worker must close: everything of the controller's but its own channel
        and the listening sockets."""
        fds = [w.channel.fileno() for w in self.workers.values()]
        fds += [self._wake_r, self._wake_w, *self._readers]
        if self.reloader is not None and self.reloader.fileno() is not None:
            fds.append(self.reloader.fileno())  # type: ignore[arg-type]
        try:
            fds.append(self._selector.fileno())  # type: ignore[attr-defined]
        except (AttributeError, ValueError):
            pass
        return [fd for fd in fds if fd >= 0 and fd != keep.fileno()]

    def _spawn(self, generation: int, reason: str) -> WorkerHandle | None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        close_fds = self._controller_fds(child_end) + [parent_end.fileno()]
        max_requests = 0
        if self.config.get("max_requests"):
            jitter = int(self.config.get("max_requests_jitter") or 0)
            max_requests = int(self.config["max_requests"]) + random.randint(0, jitter)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            parent_end.close()
            child_end.close()
            log.error("cannot fork a worker: %s", exc)
            self._record_crash()
            return None
        if pid == 0:  # the child: never returns
            try:
                Worker(self.args, self.listeners, child_end, generation, close_fds,
                       max_requests, app=self.preloaded_app).run()
            finally:
                os._exit(EXIT_FAILURE)
        child_end.close()
        parent_end.setblocking(False)
        w = WorkerHandle(pid, generation, parent_end, reason)
        w.max_requests = max_requests
        self.workers[pid] = w
        self._selector.register(parent_end, selectors.EVENT_READ, lambda: self._on_channel(w))
        log.debug("started %r: %s%s", w, reason,
                  f" (--max-requests {max_requests})" if max_requests else "")
        return w

    def _on_channel(self, w: WorkerHandle) -> None:
        data = sockets_mod.recv_ready(w.channel, 65536)
        if data is None:
            return
        if not data:
            self._close_channel(w)
            return
        w.last_seen = time.monotonic()
        for message in w.buffer.feed(data):
            self._on_message(w, message)

    def _close_channel(self, w: WorkerHandle) -> None:
        try:
            self._selector.unregister(w.channel)
        except (KeyError, ValueError):
            pass
        w.channel.close()

    def _on_message(self, w: WorkerHandle, message: dict[str, Any]) -> None:
        kind = message.get("t")
        files = message.get("files")
        if files and self.reloader is not None:
            self.reloader.add(f for f in files if isinstance(f, str))
        if kind == "hb":
            stats = message.get("stats")
            if isinstance(stats, dict):
                w.stats = stats
            age = message.get("oldest_age")
            w.oldest_age = float(age) if isinstance(age, (int, float)) else None
            if (w.max_requests and not w.retiring and w.state == "ready"
                    and (w.stats.get("retiring") or int(w.stats.get("requests") or 0) >= w.max_requests)):
                # The worker stopped taking requests at its limit and drains itself: its
                # replacement starts now (_keep_count).
                self._retire(w, f"served {w.max_requests} requests (--max-requests)")
        elif kind == "unlistened":
            if self._unlisten_at is not None:
                self._stop_listening()   # the worker did; this covers adopted sockets' peers too
        elif kind == "ready":
            self._on_ready(w)
        elif kind == "boot_error":
            w.boot_error = str(message.get("msg") or "the worker failed to boot")
        else:
            log.debug("%r sent an unknown message %r", w, kind)

    def _on_ready(self, w: WorkerHandle) -> None:
        if w.state != "starting":
            return
        w.state = "ready"
        w.ready_mono = time.monotonic()
        if self._unready:    # a replacement started during --shutdown-delay
            w.send({"t": "unready"})
        log.debug("%r ready", w)
        if self.stopping:
            self._drain(w, "shutting down")
            return
        if w.generation == self.pending_gen:
            peers = [x for x in self.workers.values() if x.generation == self.pending_gen]
            if all(x.state == "ready" for x in peers) and len(peers) >= self.num_workers:
                self._promote_pending()

    def _promote_pending(self) -> None:
        new = self.pending_gen
        assert new is not None
        old = self.active_gen
        self.active_gen = new
        self.pending_gen = None
        self.gen_ready_at = time.monotonic()
        elapsed = time.monotonic() - self.pending_started
        if not self.booted:
            self.booted = True
            pids = [str(x.pid) for x in self._gen_workers(new)]
            log.info("generation %d ready: %d worker%s (pid%s %s) in %.2f s", new, len(pids),
                     "" if len(pids) == 1 else "s", "" if len(pids) == 1 else "s", ", ".join(pids),
                     elapsed)
            log.info("spawning %s: listening on %s, %d process%s x %s", self.pid,
                     ", ".join(self.addresses), self.num_workers, "" if self.num_workers == 1 else "es",
                     "green threads" if self.green else
                     f"{self.config.get('threads')} thread{'' if self.config.get('threads') == 1 else 's'}")
        else:
            self.reloads += 1
            self.last_restart_reason = self.pending_reason
            log.info("reload (%s): generation %d ready in %.2f s; draining generation %s",
                     self.pending_reason, new, elapsed, old)
        for w in list(self.workers.values()):
            if w.generation != new and w.state != "draining":
                if self.booted and old is not None and w.generation == old:
                    self._count_restart("reload")
                self._drain(w, f"replaced by generation {new}")
        sd_notify(f"READY=1\nSTATUS=serving generation {new}")
        if self.reload_again:
            reason, self.reload_again = self.reload_again, None
            self.reload(reason)

    def _gen_workers(self, gen: int | None) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.generation == gen]

    def _abort_pending(self, why: str) -> None:
        gen = self.pending_gen
        self.pending_gen = None
        if self.gen_ready_at is None and self.active_gen is not None:
            # The serving generation stays: its --max-age clock starts over (else a failed
            # max-age reload would end max-age reloads for good).
            self.gen_ready_at = time.monotonic()
        log.error("reload failed: %s; generation %s keeps serving", why, self.active_gen)
        sd_notify(f"READY=1\nSTATUS=reload failed; serving generation {self.active_gen}")
        for w in self._gen_workers(gen):
            if w.state == "starting":
                self._signal(w, signal.SIGKILL)
                w.state = "draining"
                w.drain_deadline = w.term_sent = w.kill_sent = time.monotonic()
            elif w.state == "ready":
                self._drain(w, "its generation failed to boot")
        if self.reload_again:
            reason, self.reload_again = self.reload_again, None
            self.reload(reason)

    def _drain(self, w: WorkerHandle, why: str, final: bool = False) -> None:
        """Tells w to finish its requests and exit; ``final``: the whole server stops, so it takes
        in the listen queue first (Worker._final_drain), also when already draining."""
        message = {"t": "drain", "final": True} if final else {"t": "drain"}
        if w.state == "draining":
            if final:
                w.send(message)
            return
        log.debug("draining %r: %s", w, why)
        w.state = "draining"
        w.drain_deadline = (time.monotonic() + self.graceful_timeout) if self.graceful_timeout > 0 \
            else None
        if not w.send(message):
            self._signal(w, signal.SIGTERM)

    def _retire(self, w: WorkerHandle, why: str) -> None:
        w.retiring = why
        self._count_restart("max_requests" if "--max-requests" in why else "max_worker_memory")
        log.info("recycling %r: %s", w, why)

    def _signal(self, w: WorkerHandle, signum: int) -> None:
        try:
            os.kill(w.pid, signum)
        except ProcessLookupError:
            pass

    def _kill(self, w: WorkerHandle, why: str) -> None:
        log.error("%r: %s; killing it", w, why)
        w.killed_for = why
        w.kill_sent = time.monotonic()
        self._signal(w, signal.SIGKILL)

    def _count_restart(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1

    def _record_crash(self) -> None:
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - BACKOFF_WINDOW:
            self._crashes.popleft()
        delay = min(BACKOFF_BASE * 2 ** (len(self._crashes) - 1), BACKOFF_MAX)
        self._next_spawn_at = now + delay

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            self._on_exit(w, status)

    def _on_exit(self, w: WorkerHandle, status: int) -> None:
        # Read what the worker said last (its boot error) before closing the channel.
        if w.channel.fileno() >= 0:
            try:
                while True:
                    data = w.channel.recv(65536)
                    if not data:
                        break
                    for message in w.buffer.feed(data):
                        self._on_message(w, message)
            except OSError:
                pass
            self._close_channel(w)
        how = describe_status(status)
        now = time.monotonic()
        if self.stopping:
            log.debug("%r %s", w, how)
            return
        if w.state == "starting":
            reason = w.boot_error or f"a worker {how} while booting"
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_BOOT_ERROR and not w.boot_error:
                reason = "a worker failed to boot"
            if not self.booted:
                self.exit_code = EXIT_USAGE
                self.exit_message = reason if reason.startswith("spawning:") else f"spawning: {reason}"
                self.shutdown(graceful=False, why="the application failed to start")
                return
            if w.generation == self.pending_gen:
                self._abort_pending(reason)
                return
            self._record_crash()
            self._count_restart("boot_failure")
            log.error("%r failed to boot: %s; next attempt in %.2f s", w, reason,
                      max(0.0, self._next_spawn_at - now))
            return
        if w.state == "draining" or (w.retiring and os.WIFEXITED(status)
                                     and os.WEXITSTATUS(status) == 0):
            # (A worker at --max-requests drains itself, maybe before its replacement is up.)
            log.debug("%r exited (%s)", w, how)
            return
        # A ready worker died on its own (or was killed for --timeout).
        cause = w.killed_for or how
        if w.ready_mono is not None and now - w.ready_mono < CRASH_WINDOW:
            self._record_crash()
        log.warning("%r %s; replacing it", w, cause)
        self._count_restart("timeout" if w.killed_for else "crash")
        self._replace_reasons.append(f"replaces {w.pid} ({cause})")
        if w.generation == self.pending_gen:
            self._abort_pending(f"{w!r} {cause}")

    # ---- periodic work ---------------------------------------------------------------------------------

    def _maintain(self) -> None:
        now = time.monotonic()
        for timer in self._timers:
            if now >= timer[1]:
                timer[1] = now + timer[0]
                try:
                    timer[2]()
                except Exception:
                    log.exception("error in a controller timer")
        self._escalate(now)
        if self.delay_until is not None and now >= self.delay_until:
            self.shutdown(graceful=True, why=f"SIGTERM, --shutdown-delay {self.shutdown_delay:g} s over")
        if self._progress_at is not None and now >= self._progress_at:
            self._log_progress(now)
        if self._unlisten_at is not None and now >= self._unlisten_at:
            self._stop_listening()
        if self.stopping:
            return
        self._check_timeouts(now)
        if self.pending_gen is not None:
            boot_timeout = max(MIN_BOOT_TIMEOUT, self.timeout)
            if now - self.pending_started > boot_timeout:
                why = f"generation {self.pending_gen} did not boot within {boot_timeout:.0f} s"
                if not self.booted:
                    # No generation serves yet: staying up would hold the port open with nobody
                    # to answer, so this is a failed start, as a crash at import is.
                    self.exit_code = EXIT_USAGE
                    self.exit_message = (f"spawning: {why} (importing the app took too long? "
                                         "--timeout above that raises the limit)")
                    self.shutdown(graceful=False, why="the application failed to start")
                    return
                self._abort_pending(why)
        if self.active_gen is not None:
            self._keep_count(now)
        self._check_memory(now)
        self._check_age(now)
        self._check_files()

    def _escalate(self, now: float) -> None:
        """TERM, then KILL, workers that overrun their drain deadline; logs each step."""
        for w in list(self.workers.values()):
            if w.state != "draining" or w.drain_deadline is None or now < w.drain_deadline:
                continue
            if w.term_sent is None:
                log.warning("%r still busy %.0f s after it was told to stop (--graceful-timeout); "
                            "sending SIGTERM", w, self.graceful_timeout)
                w.term_sent = now
                self._signal(w, signal.SIGTERM)
            elif w.kill_sent is None and now - w.term_sent >= KILL_AFTER:
                # It could not name what it cuts (a green hub an app blocks reads no signal):
                # the count at least, from its last heartbeat.
                in_flight = w.stats.get("in_flight")
                log.warning("%r did not exit %.0f s after SIGTERM; sending SIGKILL%s", w, KILL_AFTER,
                            f" ({in_flight} request{'' if in_flight == 1 else 's'} in flight at its "
                            "last heartbeat)" if isinstance(in_flight, int) and in_flight else "")
                w.kill_sent = now
                self._signal(w, signal.SIGKILL)

    def _check_timeouts(self, now: float) -> None:
        if self.timeout <= 0:
            return
        silence_limit = max(self.timeout, MIN_SILENCE)
        boot_timeout = max(MIN_BOOT_TIMEOUT, self.timeout)
        for w in list(self.workers.values()):
            if w.state == "starting" and w.kill_sent is None and \
                    now - w.started_mono > boot_timeout and w.generation != self.pending_gen:
                self._kill(w, f"did not boot within {boot_timeout:.0f} s")
            if w.state != "ready" or w.kill_sent is not None:
                continue
            silence = now - w.last_seen
            if silence > silence_limit:
                self._kill(w, f"no heartbeat for {silence:.1f} s (--timeout {self.timeout:g})")
            elif not self.green and w.oldest_age is not None:
                age = w.oldest_age + silence
                if age > self.timeout:
                    self._kill(w, f"a request has run for {age:.1f} s (--timeout {self.timeout:g})")

    def _keep_count(self, now: float) -> None:
        active = self._gen_workers(self.active_gen)
        serving = [w for w in active if w.state != "draining" and not w.retiring]
        target = self.num_workers
        if self.pending_gen is not None:
            target = min(target, self._active_target)
        missing = target - len(serving)
        if missing > 0 and now >= self._next_spawn_at:
            retiring = [w for w in active if w.retiring and w.state == "ready"]
            for i in range(missing):
                if i < len(retiring):
                    reason = f"recycles {retiring[i].pid}: {retiring[i].retiring}"
                elif self._replace_reasons:
                    reason = self._replace_reasons.popleft()
                else:
                    reason = "one more worker"
                self._spawn(self.active_gen, reason)  # type: ignore[arg-type]
            return
        # Too many ready: drain the retiring ones first, then the oldest (after SIGTTOU).
        ready = [w for w in active if w.state == "ready"]
        excess = len(ready) - self.num_workers
        if excess > 0:
            ready.sort(key=lambda w: (not w.retiring, w.started_mono))
            for w in ready[:excess]:
                self._drain(w, w.retiring or "fewer workers (SIGTTOU)")

    def _sample_memory(self) -> None:
        try:
            import psutil  # type: ignore[import-untyped]
        except ImportError:
            return
        for w in list(self.workers.values()):
            try:
                info = psutil.Process(w.pid).memory_full_info()
                w.memory, w.rss = info.uss, info.rss
                if w.first_memory is None and w.state == "ready":
                    w.first_memory = info.uss
            except (psutil.Error, OSError):
                w.memory = w.rss = None

    def _check_memory(self, now: float) -> None:
        limit_total = float(self.config.get("max_memory") or 0) * MB
        limit_worker = float(self.config.get("max_worker_memory") or 0) * MB
        interval = MEMORY_INTERVAL if (limit_total or limit_worker) else MEMORY_INTERVAL_IDLE
        if now - self._last_memory_sample < interval:
            return
        self._last_memory_sample = now
        self._sample_memory()
        active = [w for w in self._gen_workers(self.active_gen) if w.state == "ready"]
        if limit_worker:
            for w in active:
                if w.memory and w.memory > limit_worker and not w.retiring:
                    if w.first_memory and w.first_memory > limit_worker:
                        self._warn_limit_once("--max-worker-memory", limit_worker,
                                              f"a worker used {w.first_memory / MB:.1f} MB")
                    self._retire(w, f"uses {w.memory / MB:.1f} MB (--max-worker-memory "
                                    f"{limit_worker / MB:g})")
        if limit_total and self.pending_gen is None and now >= self._memory_reload_after:
            total = sum(w.memory or 0 for w in active)
            if total > limit_total:
                baseline = sum(w.first_memory or 0 for w in active)
                if baseline > limit_total:
                    self._warn_limit_once("--max-memory", limit_total,
                                          f"the workers used {baseline / MB:.1f} MB")
                    self._memory_backoff = min(max(2 * self._memory_backoff,
                                                   MEMORY_RELOAD_COOLDOWN), MEMORY_BACKOFF_MAX)
                else:
                    self._memory_backoff = 0.0
                # Counted from now: the new generation's boot adds to it.
                self._memory_reload_after = now + self._memory_backoff
                self.reload(f"workers use {total / MB:.1f} MB (--max-memory {limit_total / MB:g})")

    def _warn_limit_once(self, option: str, limit: float, what: str) -> None:
        """A limit freshly started workers are already over (their first sample once ready):
        recycling cannot meet it, and would go on for ever. Said once, as a warning, rather than
        only as an INFO line per recycling."""
        if option in self._warned_limits:
            return
        self._warned_limits.add(option)
        log.warning("%s when first measured after booting, over %s %g MB: recycling cannot bring "
                    "workers under that; raise the limit", what, option, limit / MB)

    def _check_age(self, now: float) -> None:
        max_age = float(self.config.get("max_age") or 0)
        if max_age and self.pending_gen is None and self.gen_ready_at is not None \
                and now - self.gen_ready_at >= max_age:
            self.gen_ready_at = None  # one reload per generation (a failed one re-arms it)
            self.reload(f"generation {self.active_gen} reached --max-age {max_age:g} s")

    def _check_files(self) -> None:
        if self.reloader is None:
            return
        changed = self.reloader.poll()
        if not changed:
            return
        for path in changed:
            invalidate_bytecode(path)
        names = ", ".join(os.path.relpath(p) for p in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        log.info("%s changed%s", names, more)
        self.reload(f"{names}{more} changed")

    # ---- the end ---------------------------------------------------------------------------------------

    def _cleanup(self) -> None:
        for w in list(self.workers.values()):
            self._signal(w, signal.SIGKILL)
        for w in list(self.workers.values()):
            try:
                os.waitpid(w.pid, 0)
            except ChildProcessError:
                pass
        for hook in self._exit_hooks:
            try:
                hook()
            except Exception:
                log.exception("error in an exit hook")
        for sock in self.listeners:
            sock.close()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.reloader is not None:
            self.reloader.close()
        if self._pidfile:
            self._pidfile.unlink()
        if self._wake_w >= 0:
            signal.set_wakeup_fd(-1)

