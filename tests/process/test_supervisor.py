"""The controller's decisions, driven by a fake clock and fake workers: no fork, no sleep, no signal
sent to any process. Each test moves the clock by hand and feeds the controller what its workers
would say (``ready``, heartbeats, exits), then checks what it decided: which workers it started,
told to drain or signalled, and when.

``FakeController`` replaces only the controller's boundary with the OS (``_fork_worker``,
``_send_signal``, ``_wait_any``, ``_sample_memory``); everything it decides runs as shipped. The
real-fork, real-signal behaviour is covered by test_controller.py, test_reloader.py and
test_shutdown*.py in this folder.
"""

from __future__ import annotations

import json
import signal
import socket
from typing import Any

import pytest

from spawning.config.options import defaults
from spawning.process.controller import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    BACKOFF_WINDOW,
    CRASH_WINDOW,
    Controller,
)
from spawning.process.handle import RetireReason, WorkerHandle, WorkerState
from spawning.process.shutdown import KILL_AFTER

MB = 1 << 20


def exited(code: int) -> int:
    """A wait status for a process that exited with ``code`` (as os.waitpid reports it)."""
    return code << 8


def killed(signum: int) -> int:
    """A wait status for a process killed by ``signum``."""
    return signum


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeController(Controller):
    """A controller whose workers are records: forking hands out a pid and a socketpair (the
    controller's end is real, so what it sends can be read back), signals are recorded, exits are
    queued by the test and reaped by the controller's own ``_reap``."""

    def __init__(self, clock: FakeClock, **options: Any) -> None:
        args = {**defaults(), "args": ["hello.application"], **options}
        config = {**args, "app": "hello.application"}
        super().__init__(args, config, clock=clock)
        self.next_pid = 50000
        self.child_ends: dict[int, socket.socket] = {}
        self.signals: list[tuple[int, int]] = []
        self.exits: list[tuple[int, int]] = []
        self.memory_of: dict[int, int] = {}

    # -- the OS boundary --------------------------------------------------------------------------

    def _fork_worker(self, generation: int, max_requests: int) -> tuple[int, socket.socket] | None:
        parent_end, child_end = socket.socketpair()
        self.next_pid += 1
        self.child_ends[self.next_pid] = child_end
        return self.next_pid, parent_end

    def _send_signal(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))

    def _wait_any(self) -> tuple[int, int] | None:
        return self.exits.pop(0) if self.exits else None

    def _sample_memory(self) -> None:
        for w in self.workers.values():
            w.memory = self.memory_of.get(w.pid)
            if w.first_memory is None and w.state is WorkerState.READY:
                w.first_memory = w.memory

    # -- what a test does -------------------------------------------------------------------------

    def messages_to(self, pid: int) -> list[dict[str, Any]]:
        """What the controller sent worker ``pid`` so far."""
        end = self.child_ends[pid]
        end.setblocking(False)
        data = b""
        try:
            while chunk := end.recv(65536):
                data += chunk
        except BlockingIOError:
            pass
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def say(self, w: WorkerHandle, **message: Any) -> None:
        """Worker ``w`` sends ``message`` (as its channel would deliver it)."""
        w.last_seen = self.clock()
        self._on_message(w, message)

    def ready(self, workers: list[WorkerHandle]) -> None:
        for w in workers:
            self.say(w, t="ready")

    def exit(self, w: WorkerHandle, status: int) -> None:
        """Worker ``w`` exits; the controller reaps it on its next turn."""
        self.exits.append((w.pid, status))
        self.child_ends[w.pid].close()
        self._reap()

    def generation_workers(self, gen: int | None) -> list[WorkerHandle]:
        return sorted(self._gen_workers(gen), key=lambda w: w.pid)

    def serving(self) -> list[WorkerHandle]:
        return [w for w in self._gen_workers(self.active_gen)
                if w.state is not WorkerState.DRAINING and not w.retiring]

    def turn(self) -> None:
        """One pass of the loop's periodic work at the clock's time."""
        self._reap()
        self._maintain(self.clock())

    def close(self) -> None:
        for end in self.child_ends.values():
            end.close()
        for w in self.workers.values():
            w.channel.close()
        self._selector.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock: FakeClock, monkeypatch: pytest.MonkeyPatch):
    """``make(**options)``: a FakeController whose first generation is up and serving."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)   # sd_notify stays a no-op
    made: list[FakeController] = []

    def factory(**options: Any) -> FakeController:
        ctl = FakeController(clock, **options)
        made.append(ctl)
        ctl._start_generation("start")
        ctl.ready(ctl.generation_workers(ctl.pending_gen))
        assert ctl.booted and ctl.active_gen == 1
        return ctl

    yield factory
    for ctl in made:
        ctl.close()


def test_first_generation_is_promoted_once_every_worker_is_ready(clock: FakeClock, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    ctl = FakeController(clock, processes=3)
    try:
        ctl._start_generation("start")
        workers = ctl.generation_workers(1)
        assert len(workers) == 3 and all(w.state is WorkerState.STARTING for w in workers)
        ctl.ready(workers[:2])
        assert ctl.active_gen is None and not ctl.booted
        ctl.ready(workers[2:])
        assert ctl.active_gen == 1 and ctl.pending_gen is None and ctl.booted
    finally:
        ctl.close()


def test_worker_count_is_kept_after_a_death(make, clock: FakeClock):
    ctl = make(processes=3)
    victim = ctl.generation_workers(1)[0]
    clock.advance(60)                              # long after it was ready: a crash, not a crash loop
    ctl.exit(victim, killed(signal.SIGSEGV))
    assert len(ctl.serving()) == 2
    assert ctl.restarts == {RetireReason.CRASH.value: 1}
    ctl.turn()
    serving = ctl.serving()
    assert len(serving) == 3 and victim.pid not in ctl.workers
    replacement = max(serving, key=lambda w: w.pid)
    assert replacement.state is WorkerState.STARTING and replacement.generation == 1
    assert replacement.reason.startswith(f"replaces {victim.pid}")


def test_backoff_grows_with_each_crash_and_resets_after_the_window(make, clock: FakeClock):
    ctl = make(processes=1)
    delays = []
    for _ in range(5):
        [w] = ctl.serving()
        clock.advance(CRASH_WINDOW / 2)            # dies right after becoming ready: a crash loop
        ctl.exit(w, exited(1))
        delays.append(round(ctl._next_spawn_at - clock(), 6))
        ctl.turn()
        assert ctl.serving() == [], "a replacement started before its back-off was over"
        clock.advance(delays[-1])
        ctl.turn()
        [new] = ctl.serving()
        ctl.ready([new])
    assert delays == [BACKOFF_BASE * 2 ** i for i in range(5)]

    # Failures older than the window no longer count: the next one waits the base delay again.
    clock.advance(BACKOFF_WINDOW + 1)
    [w] = ctl.serving()
    ctl.exit(w, exited(1))                         # ready long ago: replaced at once, no crash
    ctl.turn()
    [new] = ctl.serving()
    ctl.ready([new])
    clock.advance(CRASH_WINDOW / 2)
    ctl.exit(new, exited(1))
    assert ctl._next_spawn_at - clock() == pytest.approx(BACKOFF_BASE)


def test_backoff_is_capped(make, clock: FakeClock):
    ctl = make(processes=1)
    for _ in range(12):
        ctl._record_crash()
    assert ctl._next_spawn_at - clock() == BACKOFF_MAX


def test_a_worker_that_never_boots_backs_off_too(make, clock: FakeClock):
    ctl = make(processes=1)
    [w] = ctl.serving()
    clock.advance(60)
    ctl.exit(w, killed(signal.SIGKILL))
    ctl.turn()
    [booting] = ctl.serving()
    ctl.say(booting, t="boot_error", msg="ImportError: no module named x")
    ctl.exit(booting, exited(3))
    assert ctl.restarts.get(RetireReason.BOOT_FAILURE.value) == 1
    assert ctl._next_spawn_at > clock()


def test_reload_promotes_the_new_generation_before_the_old_is_told_to_stop(make, clock: FakeClock):
    ctl = make(processes=2)
    old = ctl.generation_workers(1)
    for w in old:
        ctl.messages_to(w.pid)                     # forget what was sent so far
    ctl._enqueue_signal(signal.SIGHUP, None)
    ctl._handle_signals()
    assert ctl.pending_gen == 2
    new = ctl.generation_workers(2)
    assert len(new) == 2

    ctl.ready(new[:1])
    # One new worker is not a generation: the old ones go on serving, and hear nothing.
    assert ctl.active_gen == 1
    assert all(w.state is WorkerState.READY and ctl.messages_to(w.pid) == [] for w in old)

    ctl.ready(new[1:])
    assert ctl.active_gen == 2 and ctl.pending_gen is None
    for w in old:
        assert w.state is WorkerState.DRAINING
        assert ctl.messages_to(w.pid) == [{"t": "drain"}]
    assert ctl.reloads == 1 and ctl.restarts == {RetireReason.RELOAD.value: 2}


def test_a_reload_whose_generation_fails_to_boot_keeps_the_old_one(make, clock: FakeClock):
    ctl = make(processes=2)
    old = ctl.generation_workers(1)
    ctl.reload("SIGHUP")
    new = ctl.generation_workers(2)
    ctl.say(new[0], t="boot_error", msg="SyntaxError")
    ctl.exit(new[0], exited(3))
    assert ctl.active_gen == 1 and ctl.pending_gen is None
    assert all(w.state is WorkerState.READY for w in old)
    assert (new[1].pid, signal.SIGKILL) in ctl.signals


def test_a_reload_asked_for_while_one_boots_follows_it(make):
    ctl = make(processes=1)
    ctl.reload("first")
    ctl.reload("second")
    assert ctl.pending_gen == 2 and len(ctl.generation_workers(3)) == 0
    ctl.ready(ctl.generation_workers(2))
    assert ctl.active_gen == 2 and ctl.pending_gen == 3


def test_recycling_by_requests_starts_the_replacement_first(make, clock: FakeClock):
    ctl = make(processes=2, max_requests=100)
    w, other = ctl.generation_workers(1)
    assert w.max_requests == 100
    ctl.say(w, t="hb", stats={"requests": 100})
    assert w.retiring and w.state is WorkerState.READY
    assert ctl.restarts == {RetireReason.MAX_REQUESTS.value: 1}
    ctl.turn()
    replacement = max(ctl.generation_workers(1), key=lambda x: x.pid)
    assert replacement.reason == f"recycles {w.pid}: {w.retiring}"
    assert w.state is WorkerState.READY, "drained before its replacement was ready"
    ctl.ready([replacement])
    ctl.turn()
    assert w.state is WorkerState.DRAINING and other.state is WorkerState.READY


def test_recycling_by_worker_memory(make, clock: FakeClock):
    ctl = make(processes=2, max_worker_memory=100.0)
    w, other = ctl.generation_workers(1)
    ctl.memory_of = {w.pid: 50 * MB, other.pid: 50 * MB}
    clock.advance(1)
    ctl.turn()                                     # the baseline: under the limit
    assert not w.retiring
    ctl.memory_of[w.pid] = 150 * MB
    clock.advance(1)
    ctl.turn()
    assert w.retiring and "--max-worker-memory" in w.retiring and not other.retiring
    assert ctl.restarts == {RetireReason.MAX_WORKER_MEMORY.value: 1}
    ctl.turn()
    assert len(ctl.generation_workers(1)) == 3     # its replacement is booting


def test_total_memory_over_the_limit_reloads(make, clock: FakeClock):
    ctl = make(processes=2, max_memory=100.0)
    ctl.memory_of = {w.pid: 30 * MB for w in ctl.generation_workers(1)}
    clock.advance(1)
    ctl.turn()
    assert ctl.pending_gen is None
    ctl.memory_of = {w.pid: 60 * MB for w in ctl.generation_workers(1)}
    clock.advance(1)
    ctl.turn()
    assert ctl.pending_gen == 2 and "--max-memory" in ctl.pending_reason


def test_recycling_by_age_reloads_the_generation_once(make, clock: FakeClock):
    ctl = make(processes=1, max_age=60.0)
    clock.advance(59)
    ctl.turn()
    assert ctl.pending_gen is None
    clock.advance(1)
    ctl.turn()
    assert ctl.pending_gen == 2 and "--max-age" in ctl.pending_reason
    clock.advance(1)
    ctl.turn()
    assert ctl.pending_gen == 2 and ctl.generation == 2    # one reload, not one per turn


def test_drain_deadline_then_term_then_kill(make, clock: FakeClock):
    ctl = make(processes=1, graceful_timeout=10.0)
    [old] = ctl.generation_workers(1)
    ctl.reload("SIGHUP")
    ctl.ready(ctl.generation_workers(2))
    assert old.state is WorkerState.DRAINING and old.drain_deadline == clock() + 10.0
    clock.advance(9.5)
    ctl.turn()
    assert [s for s in ctl.signals if s[0] == old.pid] == []
    clock.advance(0.5)
    ctl.turn()
    assert [s for s in ctl.signals if s[0] == old.pid] == [(old.pid, signal.SIGTERM)]
    clock.advance(KILL_AFTER - 0.5)
    ctl.turn()
    assert [s for s in ctl.signals if s[0] == old.pid] == [(old.pid, signal.SIGTERM)]
    clock.advance(0.5)
    ctl.turn()
    assert [s for s in ctl.signals if s[0] == old.pid] == [(old.pid, signal.SIGTERM),
                                                            (old.pid, signal.SIGKILL)]
    ctl.exit(old, killed(signal.SIGKILL))
    assert old.pid not in ctl.workers and ctl.restarts == {RetireReason.RELOAD.value: 1}


def test_a_silent_worker_is_killed_and_replaced(make, clock: FakeClock):
    ctl = make(processes=1, timeout=10.0)
    [w] = ctl.generation_workers(1)
    clock.advance(10.5)
    ctl.turn()
    assert (w.pid, signal.SIGKILL) in ctl.signals and w.killed_for
    ctl.exit(w, killed(signal.SIGKILL))
    assert ctl.restarts == {RetireReason.TIMEOUT.value: 1}
    ctl.turn()
    assert len(ctl.serving()) == 1


def test_signals_are_dispatched_through_the_table(make):
    ctl = make(processes=2)
    assert set(ctl._signal_handlers) >= {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                                         signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD}
    ctl._enqueue_signal(signal.SIGTTIN, None)
    ctl._enqueue_signal(signal.SIGTTIN, None)
    ctl._enqueue_signal(signal.SIGTTOU, None)
    assert ctl.num_workers == 2, "a handler acted before the loop dispatched it"
    ctl._handle_signals()
    assert ctl.num_workers == 3
    ctl._enqueue_signal(signal.SIGQUIT, None)
    ctl._handle_signals()
    assert ctl.stopping == "immediate"
    assert {pid for pid, signum in ctl.signals if signum == signal.SIGQUIT} == set(ctl.workers)


def test_graceful_shutdown_drains_every_worker(make, clock: FakeClock):
    ctl = make(processes=2, graceful_timeout=5.0)
    workers = ctl.generation_workers(1)
    ctl._enqueue_signal(signal.SIGTERM, None)
    ctl._handle_signals()
    assert ctl.stopping == "graceful"
    for w in workers:
        assert w.state is WorkerState.DRAINING and w.drain_deadline == clock() + 5.0
        assert {"t": "drain", "final": True} in ctl.messages_to(w.pid)


def test_the_clock_is_the_injected_one(make, clock: FakeClock):
    ctl = make(processes=1)
    [w] = ctl.generation_workers(1)
    assert w.started_mono == clock() and ctl.gen_ready_at == clock()
    clock.advance(7)
    assert ctl.snapshot()["workers"][0]["age"] == 7
