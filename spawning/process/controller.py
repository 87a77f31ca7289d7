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
``pending_gen`` is booting. Each worker is in one state (``WorkerState``):

    starting --ready--> ready --drain--> draining --exit--> (reaped)
        \\--exit before ready: a boot failure

A reload (SIGHUP, a changed file under ``--reload=dev``, ``--max-memory``, ``--max-age``) starts a
full new generation while the old one keeps serving. When every new worker has reported ``ready``
the new generation becomes active and every older worker is drained: it stops accepting, finishes
its in-flight requests and exits, TERM and then KILL following if it overruns
``--graceful-timeout`` (``spawning.process.shutdown``). If any worker of the pending generation
fails to boot (an import or syntax error in new code) the pending generation is abandoned and the
active one keeps serving; the error is logged, and the next reload is a new attempt. A reload asked
for while another is booting is remembered and started as soon as that one is done, so the code
that ends up serving is never older than the last request.

Within the active generation the loop keeps ``processes`` workers alive: a worker that dies is
replaced at once, unless workers keep failing (dying before they are ready or within
``CRASH_WINDOW`` of it), in which case replacements back off exponentially (``BACKOFF_BASE`` doubling
per failure in the last minute, up to ``BACKOFF_MAX``). A worker to be recycled alone
(``--max-requests``, ``--max-worker-memory``; the checks are ``spawning.process.recycle``) is marked
*retiring*: its replacement is started first and the retiring worker is drained once the
replacement is ready, so capacity never dips. SIGTTIN/SIGTTOU change the target count by one the
same way.

If the first generation cannot boot, the controller prints the worker's one-line reason and exits
with code 2: a server that has never served should not sit in a crash loop.

Signals (as gunicorn's arbiter does them): the handler only appends the signal to a queue (and
Python's wakeup descriptor wakes the loop's selector); the loop dequeues it and dispatches through
a table, ``Controller._signal_handlers`` (signal -> method). SIGHUP reloads, SIGTERM/SIGINT shut
down gracefully (a second SIGINT makes it immediate; ``--shutdown-delay`` and the drain's progress
lines are ``spawning.process.shutdown``'s), SIGQUIT shuts down immediately, SIGTTIN/SIGTTOU
add/remove a worker, SIGCHLD reaps; other catchable signals that would otherwise kill the process
(``IGNORED_SIGNALS``) are logged and ignored.

Decisions are testable without processes: every one reads the injected clock
(``Controller(clock=...)``, ``time.monotonic`` by default) or takes ``now``, and the OS is reached
through four methods only (``_fork_worker``, ``_send_signal``, ``_wait_any``, ``_sample_memory``),
which tests/process/test_supervisor.py replaces with fakes. Why a worker is replaced is a
``RetireReason``; the counts by reason are ``Controller.restarts``.

Workers talk to the controller over a socketpair each (see ``spawning.process.worker``): ``ready``,
heartbeats with ``Server.stats()`` every second, ``boot_error``; the controller sends ``drain`` and
``stop``. ``--timeout`` is enforced from the heartbeats (``recycle``): a worker whose oldest in-flight
request has run longer (thread mode), or that sent no heartbeat for that long (any mode: in green
mode, where long-held comet requests are normal, only this rule applies; there the heartbeats come
from the hub, so a hub that an app blocks falls silent), is killed and replaced.

Other components (the status service of ``--status-port``) plug in through
``spawning.process.components``: readers and timers in this loop, exit hooks, and
``Controller.snapshot()`` / ``readiness()`` to read the state.

The modules beside this one: ``shutdown`` (stopping, draining, TERM -> KILL), ``recycle`` (the
recycling checks and ``--timeout``), ``components``, ``handle`` (the controller's record of one
worker), ``worker`` (the worker process), ``sockets``, ``reloader`` and ``daemon``.
"""

from __future__ import annotations

import logging
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

from .. import logs
from ..config import Settings
from ..errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, WORKER_BOOT_ERROR, Halt
from . import recycle
from . import sockets as sockets_mod
from .components import ComponentHost
from .daemon import Pidfile, daemonize, drop_privileges, sd_notify
from .handle import RetireReason, WorkerHandle, WorkerState, describe_status
from .reloader import Reloader
from .shutdown import cleanup, drain, escalate, log_progress, on_sigterm, start_shutdown, unlisten
from .worker import Worker, load_config, set_process_title

log = logging.getLogger("spawning")

#: Crash-loop back-off: first delay, cap, and the window in which failures are counted.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 30.0
BACKOFF_WINDOW = 60.0
#: A worker that dies this soon after becoming ready counts as a crash (for the back-off).
CRASH_WINDOW = 1.0
#: Longest loop wait.
TICK = 0.5
#: Signals that would kill the process by default: caught, logged and otherwise ignored.
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)

class Controller(ComponentHost):
    """Supervises the worker processes; see the module docstring."""

    def __init__(self, args: dict[str, Any], config: dict[str, Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``args``: the options (what each worker's factory gets); ``config``: the factory's result.
        ``clock``: the monotonic clock every decision reads (unit tests pass a fake one)."""
        self.args = args
        self.clock = clock
        self.config = config  # the factory's config: app_factory (--preload) and the status page read it
        self.settings = settings = Settings.from_config(config)
        self.num_workers = settings.processes
        # 0 = no limit: a draining worker may finish its requests however long they take.
        self.graceful_timeout = settings.graceful_timeout
        self.timeout = settings.timeout
        self.green = settings.threads == 0
        self.shutdown_delay = settings.shutdown_delay
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
        #: What the loop does for each signal (gunicorn's arbiter has such a table): the handler
        #: installed for every one of them only enqueues it (``_enqueue_signal``); the loop
        #: dequeues and dispatches here (``_handle_signals``). Others it catches are logged.
        self._signal_handlers: dict[int, Callable[[], None]] = {
            signal.SIGHUP: self._on_sighup,
            signal.SIGTERM: self._on_sigterm,
            signal.SIGINT: self._on_sigint,
            signal.SIGQUIT: self._on_sigquit,
            signal.SIGTTIN: self._on_sigttin,
            signal.SIGTTOU: self._on_sigttou,
            signal.SIGCHLD: self._on_sigchld,
        }
        self._selector = selectors.DefaultSelector()
        self._readers: dict[int, Callable[[], None]] = {}
        self._timers: list[list[Any]] = []  # [interval, next_due, callback]
        self._exit_hooks: list[Callable[[], None]] = []
        self._wake_r = self._wake_w = -1
        self._pidfile: Pidfile | None = Pidfile(settings.pidfile) if settings.pidfile else None
        self._unix_paths: list[str] = []
        self._last_memory_sample = 0.0
        self._memory_reload_after = 0.0   # no --max-memory reload before this (recycle)
        self._memory_backoff = 0.0
        self._warned_limits: set[str] = set()
        self._unlisten_at: float | None = None   # see shutdown.UNLISTEN_WAIT
        self._active_target = self.num_workers   # see _start_generation
        self.preloaded_app: Any = None   # --preload: the app, imported before forking
        self.reloader: Reloader | None = None
        if settings.reload == "dev":
            self.reloader = Reloader()
            self.reloader.add(os.path.abspath(p) for p in settings.watch)

    # ---- what components read (spawning.process.components) -----------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for ``/readyz``: ready while a generation serves and no shutdown has begun
        (--shutdown-delay included: a load balancer must see it before the drain)."""
        if self.stopping or self.delay_until is not None or self._unready:
            return False, "shutting down"
        if self.active_gen is None:
            return False, "starting"
        if not any(w.state is WorkerState.READY for w in self._gen_workers(self.active_gen)):
            return False, "no worker ready"
        return True, "ready"

    def snapshot(self) -> dict[str, Any]:
        """The state of the controller and its workers, as a JSON-able dict."""
        safe_config = {k: v for k, v in self.config.items()
                       if isinstance(v, (str, int, float, bool, type(None), list))}
        # --env values are often credentials (DATABASE_URL=...): the status page names them only.
        safe_config["env"] = [f"{str(pair).partition('=')[0]}=(hidden)"
                              for pair in self.settings.env]
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
            "workers": [w.info(self.clock()) for w in sorted(self.workers.values(),
                                                 key=lambda w: (w.generation, w.started_mono))],
        }

    # ---- life cycle ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Runs the server until it is shut down; returns the exit code (or raises ``Halt``)."""
        if self._pidfile:
            self._pidfile.check()
        self.listeners = sockets_mod.bind_all(self.settings)
        self.addresses = [sockets_mod.describe(s) for s in self.listeners]
        self._unix_paths = sockets_mod.unix_paths(self.listeners)
        if self.settings.daemonize:
            daemonize(self.settings.stdout, self.settings.stderr)
            self.pid = os.getpid()
        try:
            if self._pidfile:
                self._pidfile.create(self.pid)
            drop_privileges(self.settings.user, self.settings.group)
            self._install_signals()
            app = self.settings.extra.get("app")
            set_process_title(f"spawning: controller [{app}]" if app else "spawning: controller")
            if self.reloader is not None and self.reloader.fileno() is not None:
                self._selector.register(self.reloader.fileno(), selectors.EVENT_READ,  # type: ignore
                                        self.reloader.on_readable)
            self._attach_components()
            if self.settings.preload:
                self._preload()
            # "listening on" waits for the first generation (_promote_pending): an app that cannot
            # load then reads as a failed start, not as a start and a death.
            log.debug("bound %s; starting generation 1", ", ".join(self.addresses))
            self._start_generation("start")
            self._loop()
        finally:
            cleanup(self)
        if self.exit_message:
            raise Halt(self.exit_code, self.exit_message)
        return self.exit_code

    def _preload(self) -> None:
        """``--preload``: imports the app here, before any fork; workers serve this one (sharing
        its memory copy-on-write) instead of importing it. Reloads fork from it too, so they
        cannot pick up code changes: those need a full restart."""
        from ..errors import AppLoadError
        from .worker import freeze_heap, load_app

        if self.green and not self.settings.no_monkey_patch:
            log.warning("--preload with --threads 0: the app is imported before the worker patches "
                        "the standard library; what a module bound at import (from socket import "
                        "socket) stays blocking")
        started = self.clock()
        try:
            self.preloaded_app = load_app(self.config)
        except AppLoadError as exc:
            log.debug("the application failed to load", exc_info=True)
            raise Halt(EXIT_USAGE, f"spawning: {exc}") from None
        log.info("preloaded %s in the controller in %.2f s", self.settings.extra.get("app") or "the app",
                 self.clock() - started)
        if self.settings.gc_freeze:
            log.info("froze %d objects before forking (--gc-freeze)", freeze_heap())

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeups)
        for signum in [*self._signal_handlers, *IGNORED_SIGNALS]:
            signal.signal(signum, self._enqueue_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _enqueue_signal(self, signum: int, frame: Any) -> None:
        """The signal handler of every signal the controller catches: only enqueues ``signum``;
        the loop dispatches it through ``_signal_handlers`` (the wakeup descriptor has already
        woken the selector)."""
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
                    timeout = min(timeout, max(0.0, due - self.clock()))
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
            self._maintain(self.clock())

    def _handle_signals(self) -> None:
        """Runs in the loop: dispatches each queued signal through ``_signal_handlers``."""
        while self._signals:
            signum = self._signals.popleft()
            handler = self._signal_handlers.get(signum)
            if handler is None:
                log.warning("ignoring signal %s", signal.Signals(signum).name)
            else:
                handler()

    def _on_sighup(self) -> None:
        """SIGHUP (from the loop, not the signal handler): a graceful reload."""
        log.info("SIGHUP: reloading")
        self.reload("SIGHUP")

    def _on_sigint(self) -> None:
        """SIGINT (from the loop): a graceful shutdown; a second one makes it immediate."""
        self.shutdown(graceful=self.stopping is None, why="SIGINT")

    def _on_sigquit(self) -> None:
        """SIGQUIT (from the loop): an immediate shutdown."""
        self.shutdown(graceful=False, why="SIGQUIT")

    def _on_sigttin(self) -> None:
        """SIGTTIN (from the loop): one worker more."""
        self.num_workers += 1
        log.info("SIGTTIN: %d worker processes", self.num_workers)
        if self.pending_gen is not None and not self.stopping:
            # A booting generation is promoted once it has num_workers ready workers:
            # it needs the one more now, or it would wait for it until its boot limit.
            self._spawn(self.pending_gen, "one more worker (SIGTTIN)")

    def _on_sigttou(self) -> None:
        """SIGTTOU (from the loop): one worker fewer (never none); ``_keep_count`` drains it."""
        if self.num_workers > 1:
            self.num_workers -= 1
        log.info("SIGTTOU: %d worker processes", self.num_workers)

    def _on_sigchld(self) -> None:
        """SIGCHLD (from the loop): nothing here, ``_reap`` runs on every turn."""

    # ---- commands --------------------------------------------------------------------------------------

    def reload(self, reason: str) -> None:
        """Starts a graceful reload (a new generation), or queues one if a reload is booting."""
        if self.stopping or self.delay_until is not None:
            return
        if self.pending_gen is not None:
            self.reload_again = reason
            return
        self._start_generation(reason)

    def _on_sigterm(self) -> None:
        """SIGTERM (from the loop): a graceful shutdown, after ``--shutdown-delay`` if set
        (``spawning.process.shutdown.on_sigterm``)."""
        on_sigterm(self)

    def shutdown(self, graceful: bool = True, why: str = "") -> None:
        """Stops every worker (draining them if ``graceful``) and then the controller
        (``spawning.process.shutdown``)."""
        start_shutdown(self, graceful, why)


    # ---- workers ---------------------------------------------------------------------------------------

    def _start_generation(self, reason: str) -> None:
        self.generation += 1
        self.pending_gen = self.generation
        self.pending_reason = reason
        self.pending_started = self.clock()
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
        """Starts one worker of ``generation`` and records it (None if it could not be forked)."""
        max_requests = 0
        if self.settings.max_requests:
            jitter = self.settings.max_requests_jitter
            max_requests = self.settings.max_requests + random.randint(0, jitter)
        forked = self._fork_worker(generation, max_requests)
        if forked is None:
            self._record_crash()
            return None
        pid, parent_end = forked
        w = WorkerHandle(pid, generation, parent_end, reason, self.clock())
        w.max_requests = max_requests
        self.workers[pid] = w
        self._selector.register(parent_end, selectors.EVENT_READ, lambda: self._on_channel(w))
        log.debug("started %r: %s%s", w, reason,
                  f" (--max-requests {max_requests})" if max_requests else "")
        return w

    def _fork_worker(self, generation: int, max_requests: int) -> tuple[int, socket.socket] | None:
        """The OS side of ``_spawn``: forks a worker process with a channel to it; returns its pid
        and the controller's end of the channel (non-blocking), or None if fork failed."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        close_fds = self._controller_fds(child_end) + [parent_end.fileno()]
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            parent_end.close()
            child_end.close()
            log.error("cannot fork a worker: %s", exc)
            return None
        if pid == 0:  # the child: never returns
            try:
                Worker(self.args, self.listeners, child_end, generation, close_fds,
                       max_requests, app=self.preloaded_app).run()
            finally:
                os._exit(EXIT_FAILURE)
        child_end.close()
        parent_end.setblocking(False)
        return pid, parent_end

    def _on_channel(self, w: WorkerHandle) -> None:
        data = sockets_mod.recv_ready(w.channel, 65536)
        if data is None:
            return
        if not data:
            self._close_channel(w)
            return
        w.last_seen = self.clock()
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
            recycle.check_requests(self, w)
        elif kind == "unlistened":
            if self._unlisten_at is not None:
                unlisten(self)   # the worker did; this covers adopted sockets' peers too
        elif kind == "ready":
            self._on_ready(w)
        elif kind == "boot_error":
            w.boot_error = str(message.get("msg") or "the worker failed to boot")
        else:
            log.debug("%r sent an unknown message %r", w, kind)

    def _on_ready(self, w: WorkerHandle) -> None:
        if w.state is not WorkerState.STARTING:
            return
        w.state = WorkerState.READY
        w.ready_mono = self.clock()
        if self._unready:    # a replacement started during --shutdown-delay
            w.send({"t": "unready"})
        log.debug("%r ready", w)
        if self.stopping:
            drain(self, w, "shutting down")
            return
        if w.generation == self.pending_gen:
            peers = [x for x in self.workers.values() if x.generation == self.pending_gen]
            if all(x.state is WorkerState.READY for x in peers) and len(peers) >= self.num_workers:
                self._promote_pending()

    def _promote_pending(self) -> None:
        new = self.pending_gen
        assert new is not None
        old = self.active_gen
        self.active_gen = new
        self.pending_gen = None
        self.gen_ready_at = self.clock()
        elapsed = self.clock() - self.pending_started
        if not self.booted:
            self.booted = True
            pids = [str(x.pid) for x in self._gen_workers(new)]
            log.info("generation %d ready: %d worker%s (pid%s %s) in %.2f s", new, len(pids),
                     "" if len(pids) == 1 else "s", "" if len(pids) == 1 else "s", ", ".join(pids),
                     elapsed)
            log.info("spawning %s: listening on %s, %d process%s x %s", self.pid,
                     ", ".join(self.addresses), self.num_workers, "" if self.num_workers == 1 else "es",
                     "green threads" if self.green else
                     f"{self.settings.threads} thread{'' if self.settings.threads == 1 else 's'}")
        else:
            self.reloads += 1
            self.last_restart_reason = self.pending_reason
            log.info("reload (%s): generation %d ready in %.2f s; draining generation %s",
                     self.pending_reason, new, elapsed, old)
        for w in list(self.workers.values()):
            if w.generation != new and w.state is not WorkerState.DRAINING:
                if self.booted and old is not None and w.generation == old:
                    self._count_restart(RetireReason.RELOAD)
                drain(self, w, f"replaced by generation {new}")
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
            self.gen_ready_at = self.clock()
        log.error("reload failed: %s; generation %s keeps serving", why, self.active_gen)
        sd_notify(f"READY=1\nSTATUS=reload failed; serving generation {self.active_gen}")
        for w in self._gen_workers(gen):
            if w.state is WorkerState.STARTING:
                self._signal(w, signal.SIGKILL)
                w.state = WorkerState.DRAINING
                w.drain_deadline = w.term_sent = w.kill_sent = self.clock()
            elif w.state is WorkerState.READY:
                drain(self, w, "its generation failed to boot")
        if self.reload_again:
            reason, self.reload_again = self.reload_again, None
            self.reload(reason)

    def _signal(self, w: WorkerHandle, signum: int) -> None:
        self._send_signal(w.pid, signum)

    def _send_signal(self, pid: int, signum: int) -> None:
        """The OS side of ``_signal`` (a process already gone is no error)."""
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _count_restart(self, reason: RetireReason) -> None:
        self.restarts[reason.value] = self.restarts.get(reason.value, 0) + 1

    def _record_crash(self) -> None:
        now = self.clock()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - BACKOFF_WINDOW:
            self._crashes.popleft()
        delay = min(BACKOFF_BASE * 2 ** (len(self._crashes) - 1), BACKOFF_MAX)
        self._next_spawn_at = now + delay

    def _wait_any(self) -> tuple[int, int] | None:
        """The OS side of ``_reap``: one exited child as (pid, wait status), or None."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            except InterruptedError:
                continue
            return None if pid == 0 else (pid, status)

    def _reap(self) -> None:
        while (exited := self._wait_any()) is not None:
            pid, status = exited
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
        now = self.clock()
        if self.stopping:
            log.debug("%r %s", w, how)
            return
        if w.state is WorkerState.STARTING:
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
            self._count_restart(RetireReason.BOOT_FAILURE)
            log.error("%r failed to boot: %s; next attempt in %.2f s", w, reason,
                      max(0.0, self._next_spawn_at - now))
            return
        if w.state is WorkerState.DRAINING or (w.retiring and os.WIFEXITED(status)
                                     and os.WEXITSTATUS(status) == 0):
            # (A worker at --max-requests drains itself, maybe before its replacement is up.)
            log.debug("%r exited (%s)", w, how)
            return
        # A ready worker died on its own (or was killed for --timeout).
        cause = w.killed_for or how
        if w.ready_mono is not None and now - w.ready_mono < CRASH_WINDOW:
            self._record_crash()
        log.warning("%r %s; replacing it", w, cause)
        self._count_restart(RetireReason.TIMEOUT if w.killed_for else RetireReason.CRASH)
        self._replace_reasons.append(f"replaces {w.pid} ({cause})")
        if w.generation == self.pending_gen:
            self._abort_pending(f"{w!r} {cause}")

    # ---- periodic work ---------------------------------------------------------------------------------

    def _maintain(self, now: float) -> None:
        """The loop's periodic decisions at time ``now`` (the controller's clock): timers, drain
        deadlines, --timeout, boot limits, the worker count, memory, age and changed files."""
        self._run_timers(now)
        escalate(self, now)
        if self.delay_until is not None and now >= self.delay_until:
            self.shutdown(graceful=True, why=f"SIGTERM, --shutdown-delay {self.shutdown_delay:g} s over")
        if self._progress_at is not None and now >= self._progress_at:
            log_progress(self, now)
        if self._unlisten_at is not None and now >= self._unlisten_at:
            unlisten(self)
        if self.stopping:
            return
        recycle.check_timeouts(self, now)
        if self.pending_gen is not None:
            boot_timeout = max(recycle.MIN_BOOT_TIMEOUT, self.timeout)
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
        recycle.check_memory(self, now)
        recycle.check_age(self, now)
        recycle.check_files(self)

    def _keep_count(self, now: float) -> None:
        active = self._gen_workers(self.active_gen)
        serving = [w for w in active if w.state is not WorkerState.DRAINING and not w.retiring]
        target = self.num_workers
        if self.pending_gen is not None:
            target = min(target, self._active_target)
        missing = target - len(serving)
        if missing > 0 and now >= self._next_spawn_at:
            retiring = [w for w in active if w.retiring and w.state is WorkerState.READY]
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
        ready = [w for w in active if w.state is WorkerState.READY]
        excess = len(ready) - self.num_workers
        if excess > 0:
            ready.sort(key=lambda w: (not w.retiring, w.started_mono))
            for w in ready[:excess]:
                drain(self, w, w.retiring or "fewer workers (SIGTTOU)")

    def _sample_memory(self) -> None:
        """The OS side of ``--max-memory`` and ``--max-worker-memory``: each worker's memory now."""
        recycle.sample_memory(self)


    # ---- the end ---------------------------------------------------------------------------------------

def run_server(options: dict[str, Any]) -> int:
    """Runs a server from an options dict (``options.defaults()`` / ``sources.from_mapping`` shaped),
    for callers that do not come through the command line, such as PasteDeploy's server runner.
    Returns the exit code; ``Halt`` and ``ConfigError`` propagate."""
    settings = Settings.from_config(options)
    logs.setup(settings.log_level, settings.error_log_file, settings.log_format)
    return Controller(options, load_config(options)).run()
