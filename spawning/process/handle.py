"""The controller's record of one worker process (``WorkerHandle``), the states a worker goes
through (``WorkerState``) and the reasons one is replaced (``RetireReason``)."""

from __future__ import annotations

import enum
import os
import signal
import socket
import time
from typing import Any

from .worker import LineBuffer, encode

__all__ = ["RetireReason", "WorkerHandle", "WorkerState", "describe_status"]


class WorkerState(str, enum.Enum):
    """Where a worker is in its life (see the theory of operation). A ``str`` enum: the snapshot and
    the status page carry the value."""

    STARTING = "starting"   # forked, loading the app: serves nothing yet
    READY = "ready"         # serving
    DRAINING = "draining"   # told to stop: finishes what it holds, then exits


class RetireReason(str, enum.Enum):
    """Why a worker was replaced; the values key ``Controller.restarts`` (the status page's counts)."""

    CRASH = "crash"                          # a ready worker died on its own
    TIMEOUT = "timeout"                      # killed for --timeout (a request or its heartbeats)
    BOOT_FAILURE = "boot_failure"            # died before it was ready (not in a reload)
    MAX_REQUESTS = "max_requests"            # recycled at --max-requests
    MAX_WORKER_MEMORY = "max_worker_memory"  # recycled over --max-worker-memory
    RELOAD = "reload"                        # its generation was replaced


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


class WorkerHandle:
    """The controller's record of one worker process."""

    def __init__(self, pid: int, generation: int, channel: socket.socket, reason: str, now: float) -> None:
        self.pid = pid
        self.generation = generation
        self.channel = channel
        self.buffer = LineBuffer()
        self.state = WorkerState.STARTING
        self.reason = reason
        self.started_at = time.time()
        self.started_mono = now
        self.ready_mono: float | None = None
        self.last_seen = now
        self.stats: dict[str, Any] = {}
        self.oldest_age: float | None = None
        self.memory: int | None = None  # USS
        self.rss: int | None = None
        self.first_memory: int | None = None   # the first sample once ready: its baseline
        self.boot_error: str | None = None
        self.retiring: str | None = None         # why it is being recycled (shown as is)
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

    def info(self, now: float) -> dict[str, Any]:
        """What the snapshot shows of this worker, ``now`` being the controller's clock."""
        return {
            "pid": self.pid,
            "generation": self.generation,
            "state": "retiring" if self.retiring and self.state is WorkerState.READY else self.state.value,
            "started_at": self.started_at,
            "age": now - self.started_mono,
            "last_heartbeat_age": now - self.last_seen,
            "stats": dict(self.stats),
            "memory": self.memory,
            "rss": self.rss,
            "reason": self.reason,
            "retiring": self.retiring,
        }
