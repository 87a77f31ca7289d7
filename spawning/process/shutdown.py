"""Stopping: a graceful or immediate shutdown, draining one worker, and escalating a drain that
overruns its deadline.

Theory of operation
-------------------
A worker is *drained* when a newer generation replaces it, when it is recycled, or when the server
stops: it is told ``drain`` over its channel, stops accepting, finishes its requests and exits.
With ``--graceful-timeout`` the drain has a deadline; a worker still alive then gets SIGTERM (which
stops it at once), and SIGKILL ``KILL_AFTER`` seconds later if even that does not end it
(``escalate``, from the loop's periodic work). Each step is logged.

A graceful shutdown (SIGTERM, SIGINT; ``start_shutdown``) makes the server unready, drains every
worker with ``final`` set, and logs what it waits for (``log_progress``) at the start and every
``PROGRESS_INTERVAL`` seconds. New clients are refused, not held and then reset, but only once the
connections the kernel already accepted were taken in: a worker takes in the listen queue and then
shuts the listeners down; the controller does it itself (``unlisten``) if no worker said so within
``UNLISTEN_WAIT``. With ``--shutdown-delay`` a SIGTERM first only makes the server unready for that
long (``on_sigterm``). An immediate shutdown (SIGQUIT, a second SIGINT, a failed start) sends
SIGQUIT, then SIGKILL.

These are functions of the controller (``spawning.process.controller``), whose state they read
and change: the controller's loop and its signal table call them. Every time comes from the
controller's clock, so tests/process/test_supervisor.py drives them with a fake one.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from typing import TYPE_CHECKING, Any

from ..listeners import stop_listening
from .daemon import sd_notify
from .handle import WorkerHandle, WorkerState

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("spawning")

#: Seconds between SIGTERM and SIGKILL for a worker that overran its graceful timeout, and between
#: SIGQUIT and SIGKILL on an immediate shutdown.
KILL_AFTER = 3.0
#: Graceful shutdown: the workers take in the listen queue and shut the listeners down themselves
#: (``Worker._final_drain``); the controller does it after this many seconds if none said so.
UNLISTEN_WAIT = 1.0
#: Seconds between two "waiting for N requests" lines of a graceful shutdown.
PROGRESS_INTERVAL = 5.0
#: ...and how long the first waits for the heartbeats asked for at the start of the shutdown.
PROGRESS_FIRST = 0.2


def on_sigterm(ctl: Controller) -> None:
    """SIGTERM (from the loop), as orchestrators send it: with --shutdown-delay the server first
    stops being ready (/readyz and --health-path answer 503) while it goes on accepting and
    serving for that long, so that load balancers stop sending before anything is refused; then the
    graceful shutdown. A second SIGTERM meanwhile starts the drain at once."""
    why = "SIGTERM"
    if ctl.delay_until is not None:
        log.info("%s again: draining now", why)
        ctl.shutdown(graceful=True, why=why)
    elif ctl.shutdown_delay > 0 and ctl.stopping is None and ctl.booted:
        ctl.delay_until = ctl.clock() + ctl.shutdown_delay
        announce_unready(ctl)
        sd_notify(f"STOPPING=1\nSTATUS=shutting down in {ctl.shutdown_delay:g} s")
        log.info("%s: not ready any more; serving %g s more (--shutdown-delay), then draining",
                 why, ctl.shutdown_delay)
    else:
        ctl.shutdown(graceful=True, why=why)


def announce_unready(ctl: Controller) -> None:
    """Tells every worker that the server shuts down (its --health-path answers 503), once."""
    if ctl._unready:
        return
    ctl._unready = True
    for w in list(ctl.workers.values()):
        if w.state is not WorkerState.STARTING:
            w.send({"t": "unready"})


def log_progress(ctl: Controller, now: float) -> None:
    """A graceful shutdown's progress, at its start and every PROGRESS_INTERVAL seconds while
    workers remain: what they still hold (their last heartbeats) and the time left."""
    workers = list(ctl.workers.values())
    if not workers:
        ctl._progress_at = None
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
    ctl._progress_at = now + PROGRESS_INTERVAL


def start_shutdown(ctl: Controller, graceful: bool = True, why: str = "") -> None:
    """Stops every worker (draining them if ``graceful``) and then the controller."""
    if ctl.stopping == "immediate" or (ctl.stopping == "graceful" and graceful):
        return
    ctl.stopping = "graceful" if graceful else "immediate"
    ctl.delay_until = None
    announce_unready(ctl)
    if graceful:
        # The first progress line in a moment, from fresh heartbeats: ask for them.
        ctl._progress_at = ctl.clock() + PROGRESS_FIRST
        for w in list(ctl.workers.values()):
            if w.state is not WorkerState.STARTING:
                w.send({"t": "ping"})
    sd_notify("STOPPING=1")
    if ctl.exit_message is None:  # else the one line of the message says it all
        log.info("%s: %s shutdown", why or "shutting down", ctl.stopping)
    now = ctl.clock()
    # New clients are refused, not held and then reset, but only once what the listen queue
    # holds was taken in: the kernel accepted those connections, their requests are on the
    # way. On a graceful stop a worker takes them (however busy its threads) and then shuts
    # the listeners down, which empties the queue (Worker._final_drain); if no worker can,
    # or none says it did within UNLISTEN_WAIT, the controller does it.
    takers = graceful and any(w.state is not WorkerState.STARTING for w in ctl.workers.values())
    if takers:
        ctl._unlisten_at = now + UNLISTEN_WAIT
    else:
        unlisten(ctl)
    for w in list(ctl.workers.values()):
        if w.state is WorkerState.STARTING:
            # Serves nothing yet, so nothing to drain: a graceful stop need not wait for an
            # app's import (it reads no drain message until it has booted).
            w.state = WorkerState.DRAINING
            w.drain_deadline = w.term_sent = w.kill_sent = now
            ctl._signal(w, signal.SIGKILL)
        elif graceful:
            drain(ctl, w, why or "shutdown", final=True)
        else:
            w.state = WorkerState.DRAINING
            w.drain_deadline = now
            ctl._signal(w, signal.SIGQUIT)
            w.term_sent = now


def unlisten(ctl: Controller) -> None:
    ctl._unlisten_at = None
    stop_listening(ctl.listeners)


def drain(ctl: Controller, w: WorkerHandle, why: str, final: bool = False) -> None:
    """Tells w to finish its requests and exit; ``final``: the whole server stops, so it takes
    in the listen queue first (Worker._final_drain), also when already draining."""
    message = {"t": "drain", "final": True} if final else {"t": "drain"}
    if w.state is WorkerState.DRAINING:
        if final:
            w.send(message)
        return
    log.debug("draining %r: %s", w, why)
    w.state = WorkerState.DRAINING
    w.drain_deadline = (ctl.clock() + ctl.graceful_timeout) if ctl.graceful_timeout > 0 \
        else None
    if not w.send(message):
        ctl._signal(w, signal.SIGTERM)


def escalate(ctl: Controller, now: float) -> None:
    """TERM, then KILL, workers that overrun their drain deadline; logs each step."""
    for w in list(ctl.workers.values()):
        if w.state is not WorkerState.DRAINING or w.drain_deadline is None or now < w.drain_deadline:
            continue
        if w.term_sent is None:
            log.warning("%r still busy %.0f s after it was told to stop (--graceful-timeout); "
                        "sending SIGTERM", w, ctl.graceful_timeout)
            w.term_sent = now
            ctl._signal(w, signal.SIGTERM)
        elif w.kill_sent is None and now - w.term_sent >= KILL_AFTER:
            # It could not name what it cuts (a green hub an app blocks reads no signal):
            # the count at least, from its last heartbeat.
            in_flight = w.stats.get("in_flight")
            log.warning("%r did not exit %.0f s after SIGTERM; sending SIGKILL%s", w, KILL_AFTER,
                        f" ({in_flight} request{'' if in_flight == 1 else 's'} in flight at its "
                        "last heartbeat)" if isinstance(in_flight, int) and in_flight else "")
            w.kill_sent = now
            ctl._signal(w, signal.SIGKILL)


def cleanup(ctl: Controller) -> None:
    for w in list(ctl.workers.values()):
        ctl._signal(w, signal.SIGKILL)
    for w in list(ctl.workers.values()):
        try:
            os.waitpid(w.pid, 0)
        except ChildProcessError:
            pass
    for hook in ctl._exit_hooks:
        try:
            hook()
        except Exception:
            log.exception("error in an exit hook")
    for sock in ctl.listeners:
        sock.close()
    for path in ctl._unix_paths:
        try:
            os.unlink(path)
        except OSError:
            pass
    if ctl.reloader is not None:
        ctl.reloader.close()
    if ctl._pidfile:
        ctl._pidfile.unlink()
    if ctl._wake_w >= 0:
        signal.set_wakeup_fd(-1)


