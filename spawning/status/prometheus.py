"""``/metrics``: the status document in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import math
from typing import Any


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_metrics(doc: dict[str, Any]) -> str:
    """The Prometheus text exposition format (0.0.4). Counters cover every worker the controller
    has run (see ``Ledger``); gauges describe the present."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: list[tuple[str, dict[str, Any], float | int]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{suffix}{{{text}}} {_metric_value(value)}" if text else
                       f"{name}{suffix} {_metric_value(value)}")

    srv, tot = doc["server"], doc["totals"]
    family("spawning_info", "gauge", "The server's version and application.",
           [("", {"version": srv["version"], "app": srv["app"] or "", "mode": srv["mode"]}, 1)])
    family("spawning_start_time_seconds", "gauge", "When the controller started, in seconds since the epoch.",
           [("", {}, float(srv["started_at"] or 0))])
    family("spawning_generation", "gauge", "The worker generation serving (bumped by each reload).",
           [("", {}, srv["generation"] or 0)])
    family("spawning_reloads_total", "counter", "Graceful reloads completed.",
           [("", {}, srv["reloads"])])
    family("spawning_requests_total", "counter",
           "Responses sent, by status class (including the core's own 4xx/5xx answers to bad requests).",
           [("", {"status_class": k}, v) for k, v in tot["status_classes"].items()])
    family("spawning_requests_rejected_total", "counter",
           "Requests answered by the core itself with an error (malformed or over a limit).",
           [("", {}, tot["rejected"])])
    family("spawning_connections_accepted_total", "counter", "Client connections accepted.",
           [("", {}, tot["accepted"])])
    family("spawning_accept_pauses_total", "counter",
           "Times a worker paused accepting because it ran out of file descriptors.",
           [("", {}, tot["accept_pauses"])])
    family("spawning_response_bytes_total", "counter", "Response bytes written to clients.",
           [("", {}, tot["bytes_out"])])
    family("spawning_requests_in_flight", "gauge", "Requests the application is running now.",
           [("", {}, tot["in_flight"])])
    family("spawning_connections", "gauge", "Client connections open now.", [("", {}, tot["connections"])])
    duration = tot["duration"]
    buckets: list[tuple[str, dict[str, Any], float | int]] = []
    running = 0
    for bound, count in zip([*doc["duration_bounds"], None], duration["counts"]):
        running += count
        buckets.append(("_bucket", {"le": "+Inf" if bound is None else repr(float(bound))}, running))
    buckets += [("_sum", {}, float(duration["sum"])), ("_count", {}, duration["count"])]
    family("spawning_request_duration_seconds", "histogram",
           "Time from handing a request to the application to finishing its response.", buckets)
    family("spawning_workers", "gauge", "Worker processes, by state.",
           [("", {"state": s}, n) for s, n in sorted(tot["workers"].items())])
    memory = []
    for w in doc["workers"]:
        for kind in ("rss", "uss"):
            if w["memory"][kind] is not None:
                memory.append(("", {"pid": w["pid"], "generation": w["generation"], "kind": kind},
                               w["memory"][kind]))
    family("spawning_worker_memory_bytes", "gauge",
           "Memory of each worker process: resident (rss) and unique to it (uss).", memory)
    family("spawning_worker_requests", "gauge", "Requests each live worker has served.",
           [("", {"pid": w["pid"], "generation": w["generation"]}, w["requests"]) for w in doc["workers"]])
    family("spawning_worker_restarts_total", "counter", "Workers replaced, by reason.",
           [("", {"reason": k}, v) for k, v in sorted(doc["restarts"].items())])
    queues = [("", {"listener": entry["address"]}, entry["accept_queue"])
              for entry in doc["listen"] if entry["accept_queue"] is not None]
    family("spawning_listen_accept_queue", "gauge",
           "Connections waiting in a listening socket's accept queue (Linux).", queues)
    return "\n".join(out) + "\n"
