"""The status document's data: totals that never go down, request rates, duration quantiles, and
``collect``, which makes the document (schema: docs/status.md, docs/status.schema.json) from the
controller's state.

Counters must never go down, yet workers come and go with their counts. A ``Ledger`` keeps the
handle of every worker it has seen; when one leaves, its last counts (the worker sends a final
heartbeat as it exits) are folded into the totals of the departed. The service's once-a-second
timer does that and samples request counts for the requests-per-second figures (``Rates``).
"""

from __future__ import annotations

import platform
import re
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from .. import __version__

#: Version of the JSON document; bumped only on an incompatible change.
SCHEMA_VERSION = 1

#: Seconds over which requests per second are averaged.
RATE_WINDOW = 5.0
#: Upper bounds (seconds) of the duration histogram's buckets, as the C core counts them
#: (csrc/loop/loop.c ``sp_duration_bounds_us``); a last bucket (+Inf) follows. Restated here so the
#: controller need not load the core; tests/status/test_model.py checks the two agree.
DURATION_BOUNDS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NBUCKETS = len(DURATION_BOUNDS) + 1
#: Configuration keys whose values the page never shows.
SECRET = re.compile(r"pass|secret|token|key|credential|auth", re.IGNORECASE)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


# ---- data ----------------------------------------------------------------------------------------------


def _zero_counts() -> dict[str, Any]:
    return {"requests": 0, "accepted": 0, "rejected": 0, "bytes_out": 0, "accept_pauses": 0,
            "status_class": [0] * 6,
            "duration_counts": [0] * NBUCKETS, "duration_sum": 0.0}


def _add_counts(total: dict[str, Any], stats: dict[str, Any]) -> None:
    for key in ("requests", "accepted", "rejected", "bytes_out", "accept_pauses"):
        value = stats.get(key)
        if isinstance(value, (int, float)):
            total[key] += int(value)
    for key in ("status_class", "duration_counts"):
        values = stats.get(key)
        if isinstance(values, list):
            for i, value in enumerate(values[: len(total[key])]):
                if isinstance(value, (int, float)):
                    total[key][i] += int(value)
    if isinstance(stats.get("duration_sum"), (int, float)):
        total["duration_sum"] += float(stats["duration_sum"])


class Ledger:
    """Totals over every worker the controller has run, past and present (see the module docstring)."""

    def __init__(self) -> None:
        self.departed = _zero_counts()
        self._known: dict[int, Any] = {}  # pid -> the controller's WorkerHandle

    def update(self, workers: dict[int, Any]) -> None:
        for pid, handle in list(self._known.items()):
            if workers.get(pid) is not handle:
                _add_counts(self.departed, handle.stats)
                del self._known[pid]
        for pid, handle in workers.items():
            self._known.setdefault(pid, handle)

    def totals(self) -> dict[str, Any]:
        total = _zero_counts()
        _add_counts(total, self.departed)
        for handle in self._known.values():
            _add_counts(total, handle.stats)
        return total


class Rates:
    """Requests per second, overall and per worker, from samples taken once a second."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, dict[int, int]]] = deque()

    def sample(self, total: int, per_worker: dict[int, int]) -> None:
        now = time.monotonic()
        self._samples.append((now, total, per_worker))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()

    def total(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, n0, _), (t1, n1, _) = self._samples[0], self._samples[-1]
        return max(0.0, (n1 - n0) / (t1 - t0)) if t1 > t0 else None

    def worker(self, pid: int) -> float | None:
        if len(self._samples) < 2:
            return None
        t1, _, last = self._samples[-1]
        for t0, _, first in self._samples:
            if pid in first and t1 > t0:
                return max(0.0, (last.get(pid, first[pid]) - first[pid]) / (t1 - t0))
        return None


def accept_queue(sock: socket.socket) -> tuple[int | None, int | None]:
    """(connections waiting in the accept queue, the queue's limit) of a listening TCP socket on
    Linux, from ``TCP_INFO``: for a listener the kernel reports them as ``tcpi_unacked`` and
    ``tcpi_sacked``. (None, None) elsewhere."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or not sys.platform.startswith("linux") or \
            sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None, None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
        unacked, sacked = struct.unpack_from("=II", raw, 24)  # after 8 bytes and 4 u32 fields
    except (OSError, struct.error):
        return None, None
    return unacked, sacked


def _quantile_bucket(counts: Sequence[int], q: float) -> tuple[int, float] | None:
    """The bucket the ``q`` quantile falls in, and how far into it (0-1); None without counts."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            return i, (rank - seen) / count
        seen += count
    return len(counts) - 1, 1.0


def quantile(counts: Sequence[int], q: float) -> float | None:
    """Estimates the ``q`` quantile from bucket counts (linear within a bucket, as Prometheus'
    ``histogram_quantile`` does). The first bucket answers its upper bound (interpolating from
    zero would invent a figure: "p50 50 us" for requests of 2 us), the open last bucket its lower
    bound."""
    found = _quantile_bucket(counts, q)
    if found is None:
        return None
    i, fraction = found
    if i >= len(DURATION_BOUNDS):
        return DURATION_BOUNDS[-1]
    if i == 0:
        return DURATION_BOUNDS[0]
    lower = DURATION_BOUNDS[i - 1]
    return lower + (DURATION_BOUNDS[i] - lower) * fraction


QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def _duration(counts: list[int], total_seconds: float) -> dict[str, Any]:
    count = sum(counts)
    doc: dict[str, Any] = {"counts": counts, "count": count, "sum": total_seconds,
                           "mean": total_seconds / count if count else None}
    below = []
    for name, q in QUANTILES:
        doc[name] = quantile(counts, q)
        found = _quantile_bucket(counts, q)
        if found is not None and found[0] == 0:
            below.append(name)      # only known to be under the first bound
    doc["below"] = below
    return doc


def _classes(values: Sequence[int]) -> dict[str, int]:
    return {name: int(values[i + 1]) if i + 1 < len(values) else 0
            for i, name in enumerate(STATUS_CLASSES)}


def as_number(value: Any, default: Any = 0) -> Any:
    """``value`` if it is a number (not a bool), else ``default``: heartbeats are another
    process's JSON, read without trusting their types."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def collect(controller: Any, ledger: Ledger, rates: Rates) -> dict[str, Any]:
    """The status document (see docs/status.md) from the controller's state."""
    ledger.update(controller.workers)
    snap = controller.snapshot()
    config = snap.get("config") or {}
    workers = []
    for info in snap.get("workers") or []:
        stats = info.get("stats") or {}
        counts = [int(as_number(x)) for x in (stats.get("duration_counts") or [0] * NBUCKETS)]
        hb_age = as_number(info.get("last_heartbeat_age"), None)
        workers.append({
            "pid": info["pid"],
            "generation": info.get("generation"),
            "state": info.get("state"),
            "started_at": info.get("started_at"),
            "age": info.get("age"),
            "last_heartbeat_age": hb_age,
            "memory": {"rss": info.get("rss"), "uss": info.get("memory")},
            "requests": int(as_number(stats.get("requests"))),
            "requests_per_second": rates.worker(info["pid"]),
            "in_flight": int(as_number(stats.get("in_flight"))),
            "connections": int(as_number(stats.get("connections"))),
            "accepted": int(as_number(stats.get("accepted"))),
            "rejected": int(as_number(stats.get("rejected"))),
            "accept_pauses": int(as_number(stats.get("accept_pauses"))),
            "bytes_out": int(as_number(stats.get("bytes_out"))),
            "status_classes": _classes(stats.get("status_class") or []),
            "oldest_request_age": _oldest_age(info),
            "duration": _duration(counts, float(as_number(stats.get("duration_sum"), 0.0))),
            "start_reason": info.get("reason"),
            "retiring": info.get("retiring"),
        })
    totals = ledger.totals()
    states: dict[str, int] = {}
    for w in workers:
        states[w["state"]] = states.get(w["state"], 0) + 1
    rss = [w["memory"]["rss"] for w in workers if w["memory"]["rss"] is not None]
    uss = [w["memory"]["uss"] for w in workers if w["memory"]["uss"] is not None]
    listen = []
    for sock, address in zip(controller.listeners, controller.addresses):
        queued, limit = accept_queue(sock)
        listen.append({"address": address, "accept_queue": queued, "backlog": limit})
    threads = int(as_number(config.get("threads"), 4))
    return {
        "schema": SCHEMA_VERSION,
        "server": {
            "version": __version__,
            "pid": snap.get("pid"),
            "hostname": platform.node(),
            "python": platform.python_version(),
            "app": config.get("app"),
            "state": snap.get("state"),
            "started_at": snap.get("started_at"),
            "uptime": snap.get("uptime"),
            "generation": snap.get("generation"),
            "pending_generation": snap.get("pending_generation"),
            "processes": snap.get("processes"),
            "mode": "green" if threads == 0 else "threads",
            "threads": threads,
            "reloads": int(as_number(snap.get("reloads"))),
            "last_reload_reason": snap.get("last_restart_reason") or None,
            "reload_backend": snap.get("reload_backend"),
            "coverage": getattr(controller, "coverage", None) is not None,
        },
        "listen": listen,
        "totals": {
            "requests": totals["requests"],
            "requests_per_second": rates.total(),
            "status_classes": _classes(totals["status_class"]),
            "accepted": totals["accepted"],
            "rejected": totals["rejected"],
            "accept_pauses": totals["accept_pauses"],
            "bytes_out": totals["bytes_out"],
            "in_flight": sum(w["in_flight"] for w in workers),
            "connections": sum(w["connections"] for w in workers),
            "memory": {"rss": sum(rss) if rss else None, "uss": sum(uss) if uss else None},
            "workers": states,
            "duration": _duration(totals["duration_counts"], totals["duration_sum"]),
        },
        "duration_bounds": list(DURATION_BOUNDS),
        "restarts": dict(snap.get("restarts") or {}),
        "workers": workers,
        "config": {k: ("(hidden)" if SECRET.search(k) and v else v) for k, v in sorted(config.items())},
        "time": time.time(),
    }


def _oldest_age(info: dict[str, Any]) -> float | None:
    """Age of the worker's oldest in-flight request, as of now (the heartbeat reported its age)."""
    stats = info.get("stats") or {}
    if not stats.get("in_flight"):
        return None
    # The worker sends a start time on its own monotonic clock; every process of a machine shares
    # CLOCK_MONOTONIC, so the difference is meaningful here.
    start = stats.get("oldest_request_start")
    if not isinstance(start, (int, float)):
        return None
    return max(0.0, time.monotonic() - float(start))
