"""Recycling: when a worker is replaced although nothing is wrong with the server, and when one is
killed.

Theory of operation
-------------------
Each check runs from the controller's periodic work (``Controller._maintain``) at the controller's
clock's ``now``:

- ``--max-requests``: a worker that reached its limit (its heartbeat says so) is *retired*
  (``check_requests``).
- ``--max-worker-memory``: a worker over it is retired; ``--max-memory``: workers over it in total
  start a graceful reload of the whole generation (``check_memory``, which samples memory with
  psutil through ``Controller._sample_memory``). A limit fresh workers are already over is said
  once, and ``--max-memory`` reloads then back off, since reloading cannot help.
- ``--max-age``: the serving generation is reloaded once it is that old (``check_age``).
- ``--reload=dev``: a changed file reloads (``check_files``).
- ``--timeout``: a worker whose request runs longer, or that sends no heartbeat for that long, is
  killed (``check_timeouts``); the controller replaces it as it would a crash.

A retired worker keeps serving: the controller's ``_keep_count`` starts its replacement first and
drains it once the replacement is ready, so capacity never dips. Why a worker was replaced is a
``RetireReason``, counted in ``Controller.restarts``.

These are functions of the controller (``spawning.process.controller``), whose state they read
and change.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

from .handle import RetireReason, WorkerHandle, WorkerState
from .reloader import invalidate_bytecode

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("spawning")

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

MB = 1 << 20


def check_requests(ctl: Controller, w: WorkerHandle) -> None:
    """After a heartbeat of ``w``: retires it once it reached ``--max-requests``."""
    if (w.max_requests and not w.retiring and w.state is WorkerState.READY
            and (w.stats.get("retiring") or int(w.stats.get("requests") or 0) >= w.max_requests)):
        # The worker stopped taking requests at its limit and drains itself: its
        # replacement starts now (_keep_count).
        retire(ctl, w, RetireReason.MAX_REQUESTS, f"served {w.max_requests} requests (--max-requests)")


def retire(ctl: Controller, w: WorkerHandle, reason: RetireReason, why: str) -> None:
    """Marks ``w`` for recycling: ``_keep_count`` starts its replacement, then drains it."""
    w.retiring = why
    ctl._count_restart(reason)
    log.info("recycling %r: %s", w, why)


def kill(ctl: Controller, w: WorkerHandle, why: str) -> None:
    log.error("%r: %s; killing it", w, why)
    w.killed_for = why
    w.kill_sent = ctl.clock()
    ctl._signal(w, signal.SIGKILL)


def check_timeouts(ctl: Controller, now: float) -> None:
    if ctl.timeout <= 0:
        return
    silence_limit = max(ctl.timeout, MIN_SILENCE)
    boot_timeout = max(MIN_BOOT_TIMEOUT, ctl.timeout)
    for w in list(ctl.workers.values()):
        if w.state is WorkerState.STARTING and w.kill_sent is None and \
                now - w.started_mono > boot_timeout and w.generation != ctl.pending_gen:
            kill(ctl, w, f"did not boot within {boot_timeout:.0f} s")
        if w.state is not WorkerState.READY or w.kill_sent is not None:
            continue
        silence = now - w.last_seen
        if silence > silence_limit:
            kill(ctl, w, f"no heartbeat for {silence:.1f} s (--timeout {ctl.timeout:g})")
        elif not ctl.green and w.oldest_age is not None:
            age = w.oldest_age + silence
            if age > ctl.timeout:
                kill(ctl, w, f"a request has run for {age:.1f} s (--timeout {ctl.timeout:g})")


def sample_memory(ctl: Controller) -> None:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return
    for w in list(ctl.workers.values()):
        try:
            info = psutil.Process(w.pid).memory_full_info()
            w.memory, w.rss = info.uss, info.rss
            if w.first_memory is None and w.state is WorkerState.READY:
                w.first_memory = info.uss
        except (psutil.Error, OSError):
            w.memory = w.rss = None


def check_memory(ctl: Controller, now: float) -> None:
    limit_total = ctl.settings.max_memory * MB
    limit_worker = ctl.settings.max_worker_memory * MB
    interval = MEMORY_INTERVAL if (limit_total or limit_worker) else MEMORY_INTERVAL_IDLE
    if now - ctl._last_memory_sample < interval:
        return
    ctl._last_memory_sample = now
    ctl._sample_memory()
    active = [w for w in ctl._gen_workers(ctl.active_gen) if w.state is WorkerState.READY]
    if limit_worker:
        for w in active:
            if w.memory and w.memory > limit_worker and not w.retiring:
                if w.first_memory and w.first_memory > limit_worker:
                    warn_limit_once(ctl, "--max-worker-memory", limit_worker,
                                          f"a worker used {w.first_memory / MB:.1f} MB")
                retire(ctl, w, RetireReason.MAX_WORKER_MEMORY,
                             f"uses {w.memory / MB:.1f} MB (--max-worker-memory {limit_worker / MB:g})")
    if limit_total and ctl.pending_gen is None and now >= ctl._memory_reload_after:
        total = sum(w.memory or 0 for w in active)
        if total > limit_total:
            baseline = sum(w.first_memory or 0 for w in active)
            if baseline > limit_total:
                warn_limit_once(ctl, "--max-memory", limit_total,
                                      f"the workers used {baseline / MB:.1f} MB")
                ctl._memory_backoff = min(max(2 * ctl._memory_backoff,
                                               MEMORY_RELOAD_COOLDOWN), MEMORY_BACKOFF_MAX)
            else:
                ctl._memory_backoff = 0.0
            # Counted from now: the new generation's boot adds to it.
            ctl._memory_reload_after = now + ctl._memory_backoff
            ctl.reload(f"workers use {total / MB:.1f} MB (--max-memory {limit_total / MB:g})")


def warn_limit_once(ctl: Controller, option: str, limit: float, what: str) -> None:
    """A limit freshly started workers are already over (their first sample once ready):
    recycling cannot meet it, and would go on for ever. Said once, as a warning, rather than
    only as an INFO line per recycling."""
    if option in ctl._warned_limits:
        return
    ctl._warned_limits.add(option)
    log.warning("%s when first measured after booting, over %s %g MB: recycling cannot bring "
                "workers under that; raise the limit", what, option, limit / MB)


def check_age(ctl: Controller, now: float) -> None:
    max_age = ctl.settings.max_age
    if max_age and ctl.pending_gen is None and ctl.gen_ready_at is not None \
            and now - ctl.gen_ready_at >= max_age:
        ctl.gen_ready_at = None  # one reload per generation (a failed one re-arms it)
        ctl.reload(f"generation {ctl.active_gen} reached --max-age {max_age:g} s")


def check_files(ctl: Controller) -> None:
    if ctl.reloader is None:
        return
    changed = ctl.reloader.poll()
    if not changed:
        return
    for path in changed:
        invalidate_bytecode(path)
    names = ", ".join(os.path.relpath(p) for p in changed[:3])
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    log.info("%s changed%s", names, more)
    ctl.reload(f"{names}{more} changed")


