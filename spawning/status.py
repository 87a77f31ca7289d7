"""The status service (``--status-port``) and the ``spawning status`` command.

Theory of operation
-------------------
The service runs inside the controller's single-threaded loop: no thread (the controller forks, and
forking a threaded process invites deadlocks) and no callback into the workers. The controller
attaches it (``attach``) after binding its sockets; it binds its own listening socket and gives
the controller every descriptor it reads through ``add_reader``, so each one is closed in workers
after fork. Writing needs readiness too, and the controller only watches for reading: a response the
socket does not take whole waits in a private selector whose own descriptor (an epoll/kqueue fd,
readable when one of its sockets is writable) is in turn one of the controller's readers.

It is a deliberately small HTTP/1.1 server: GET and HEAD, one request per connection (every answer
says ``Connection: close``), heads up to ``MAX_HEAD`` bytes, connections idle longer than
``CLIENT_TIMEOUT`` are dropped, at most ``MAX_CLIENTS`` at once. Pages are built on demand from the
controller's own data (``Controller.snapshot()``, fed by the heartbeats every worker sends over its
channel each second), so they cost nothing while nobody looks:

- ``/`` and ``/status``: an HTML page with no external assets that refreshes itself;
- ``/status.json``: the same data (the schema is in docs/status.md and docs/status.schema.json);
- ``/metrics``: the Prometheus text exposition format (version 0.0.4);
- ``/healthz``: 200 while the controller runs (liveness); ``/readyz``: 200 while a generation
  serves, 503 while starting and from the start of a shutdown on (``--shutdown-delay`` included);
- ``/_coverage/`` with ``--coverage``: the combined coverage report (spawning.coverage_support).

Counters must never go down, yet workers come and go with their counts. A ``Ledger`` keeps the
handle of every worker it has seen; when one leaves, its last counts (the worker sends a final
heartbeat as it exits) are folded into the totals of the departed. A once-a-second timer does that
and samples request counts for the requests-per-second figures.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import math
import os
import platform
import re
import selectors
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from . import __version__, coverage_support
from .errors import EXIT_FAILURE, EXIT_USAGE, Halt
from .process.sockets import recv_ready

log = logging.getLogger("spawning")

#: Version of the JSON document; bumped only on an incompatible change.
SCHEMA_VERSION = 1
#: Seconds between two refreshes of the HTML page.
REFRESH = 2
#: Largest request head accepted, in bytes.
MAX_HEAD = 16384
#: Seconds a client may take to send its request and read the answer.
CLIENT_TIMEOUT = 10.0
#: Most connections served at once; more are closed at once.
MAX_CLIENTS = 64
#: Seconds over which requests per second are averaged.
RATE_WINDOW = 5.0
#: A heartbeat older than this marks a worker as unresponsive on the page.
STALE_HEARTBEAT = 3.0
#: Upper bounds (seconds) of the duration histogram's buckets, as the C core counts them
#: (csrc/server.c ``sp_duration_bounds_us``); a last bucket (+Inf) follows. Restated here so the
#: controller need not load the core; tests/test_status.py checks the two agree.
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


def _num(value: Any, default: Any = 0) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def collect(controller: Any, ledger: Ledger, rates: Rates) -> dict[str, Any]:
    """The status document (see docs/status.md) from the controller's state."""
    ledger.update(controller.workers)
    snap = controller.snapshot()
    config = snap.get("config") or {}
    workers = []
    for info in snap.get("workers") or []:
        stats = info.get("stats") or {}
        counts = [int(_num(x)) for x in (stats.get("duration_counts") or [0] * NBUCKETS)]
        hb_age = _num(info.get("last_heartbeat_age"), None)
        workers.append({
            "pid": info["pid"],
            "generation": info.get("generation"),
            "state": info.get("state"),
            "started_at": info.get("started_at"),
            "age": info.get("age"),
            "last_heartbeat_age": hb_age,
            "memory": {"rss": info.get("rss"), "uss": info.get("memory")},
            "requests": int(_num(stats.get("requests"))),
            "requests_per_second": rates.worker(info["pid"]),
            "in_flight": int(_num(stats.get("in_flight"))),
            "connections": int(_num(stats.get("connections"))),
            "accepted": int(_num(stats.get("accepted"))),
            "rejected": int(_num(stats.get("rejected"))),
            "accept_pauses": int(_num(stats.get("accept_pauses"))),
            "bytes_out": int(_num(stats.get("bytes_out"))),
            "status_classes": _classes(stats.get("status_class") or []),
            "oldest_request_age": _oldest_age(info),
            "duration": _duration(counts, float(_num(stats.get("duration_sum"), 0.0))),
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
    threads = controller.settings.threads
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
            "reloads": int(_num(snap.get("reloads"))),
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


# ---- formatting ----------------------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds >= DURATION_BOUNDS[-1]:
        return f"> {DURATION_BOUNDS[-1]:g} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"


def fmt_q(duration: dict[str, Any], key: str) -> str:
    """A quantile of a ``duration`` object: one that fell in the first bucket reads as "< bound"
    (all the histogram knows of it), not as a figure interpolated from zero."""
    if key in (duration.get("below") or ()):
        return f"< {fmt_ms(duration[key])}"
    return fmt_ms(duration[key])


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "–"
    return f"{rate:.1f}" if rate < 100 else f"{rate:,.0f}"


def fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def fmt_time(epoch: float | None) -> str:
    return "–" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# ---- the HTML page -------------------------------------------------------------------------------------

_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1d2330;--muted:#6b7385;--line:#e3e6eb;--accent:#0f766e;
--ok:#15803d;--okbg:#dcfce7;--warn:#b45309;--warnbg:#fef3c7;--info:#1d4ed8;--infobg:#dbeafe;
--bad:#b91c1c;--badbg:#fee2e2;--violet:#6d28d9;--violetbg:#ede9fe}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#111827;color:#f9fafb;padding:14px 28px;display:flex;align-items:center;gap:14px;
flex-wrap:wrap}
header .brand{font-weight:700;font-size:18px;letter-spacing:.3px}
header .brand span{color:#5eead4}
header .app{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#d1d5db}
header .updated{margin-left:auto;color:#9ca3af;font-size:12px}
main{padding:20px 28px;max-width:1500px;margin:0 auto}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin-bottom:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.6px}
.card .value{font-size:24px;font-weight:650;margin-top:2px;font-variant-numeric:tabular-nums}
.card .sub{color:var(--muted);font-size:12px}
.grid{display:grid;grid-template-columns:minmax(300px,1fr) minmax(300px,1fr);gap:16px;margin-bottom:16px}
.box{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;
margin-bottom:16px}
.grid .box{margin-bottom:0}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.7px;color:var(--muted);margin:0 0 10px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:var(--muted)}dd{margin:0;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th{text-align:left;font-weight:600;color:var(--muted);font-size:12px;border-bottom:1px solid var(--line);
padding:6px 8px;white-space:nowrap}
td{padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
td.num,th.num{text-align:right}
td.reason{white-space:normal;color:var(--muted);font-size:12.5px;max-width:340px}
tr:last-child td{border-bottom:none}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600}
.ready,.running{background:var(--okbg);color:var(--ok)}
.starting{background:var(--infobg);color:var(--info)}
.draining,.graceful,.delaying{background:var(--warnbg);color:var(--warn)}
.retiring{background:var(--violetbg);color:var(--violet)}
.immediate,.down{background:var(--badbg);color:var(--bad)}
.stale{color:var(--bad);font-weight:600}
.bars{display:grid;grid-template-columns:70px 1fr 70px;gap:4px 10px;align-items:center}
.bar{height:12px;background:#eef0f3;border-radius:3px;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
.bar i.c4{background:#d97706}.bar i.c5{background:#dc2626}.bar i.c3{background:#2563eb}
.bars .l{color:var(--muted);font-size:12px}.bars .n{text-align:right;font-size:12px}
.hist{display:flex;align-items:flex-end;gap:3px;height:90px;margin-top:8px}
.hist div{flex:1;background:var(--accent);border-radius:2px 2px 0 0;min-height:1px;opacity:.85}
.histl{display:flex;gap:3px;font-size:10px;color:var(--muted)}
.histl span{flex:1;text-align:center;white-space:nowrap}
h2 .unit{text-transform:none;letter-spacing:0;font-weight:400}
.q{display:flex;gap:18px;margin-top:10px;font-size:13px}.q b{font-variant-numeric:tabular-nums}
details summary{cursor:pointer;color:var(--muted);font-weight:600}
footer{color:var(--muted);font-size:12px;padding:0 28px 24px;max-width:1500px;margin:0 auto}
footer a{color:var(--accent)}
.empty{color:var(--muted);font-style:italic}
"""

_JS = """
(function(){
  var failed=0;
  function refresh(){
    fetch(location.pathname,{cache:'no-store'}).then(function(r){
      if(!r.ok)throw new Error(r.status);return r.text();
    }).then(function(text){
      var doc=new DOMParser().parseFromString(text,'text/html');
      ['main','#updated'].forEach(function(sel){
        var now=document.querySelector(sel),next=doc.querySelector(sel);
        if(now&&next)now.replaceWith(next);
      });
      failed=0;
    }).catch(function(){
      failed++;var u=document.querySelector('#updated');
      if(u)u.innerHTML='<span class="pill down">controller unreachable</span>';
    });
  }
  setInterval(refresh,%d);
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{value}</div>'
            f'<div class="sub">{sub}</div></div>')


def render_html(doc: dict[str, Any]) -> str:
    """The status page: self-contained (inline CSS and script), refreshes itself every ``REFRESH`` s."""
    srv, tot = doc["server"], doc["totals"]
    workers = doc["workers"]
    ready = tot["workers"].get("ready", 0) + tot["workers"].get("retiring", 0)
    gen = f"{srv['generation']}" if srv["generation"] is not None else "–"
    if srv.get("pending_generation") is not None:
        gen += f' <span class="pill starting">{srv["pending_generation"]} booting</span>'
    cards = "".join([
        _card("Requests / s", fmt_rate(tot["requests_per_second"]), f"over the last {RATE_WINDOW:g} s"),
        _card("Requests", fmt_int(tot["requests"]), f"{fmt_bytes(tot['bytes_out'])} sent"),
        _card("In flight", fmt_int(tot["in_flight"]), f"{fmt_int(tot['connections'])} connections open"),
        _card("Workers", f"{ready} / {srv['processes']}", "ready / wanted"),
        _card("Latency p50", _e(fmt_q(tot["duration"], "p50")), f"p99 {_e(fmt_q(tot['duration'], 'p99'))}"),
        _card("Memory (USS)", fmt_bytes(tot["memory"]["uss"]), f"RSS {fmt_bytes(tot['memory']['rss'])}"),
        _card("Generation", gen, f"{srv['reloads']} reload{'s' if srv['reloads'] != 1 else ''}"),
    ])
    listen = "".join(_listen_line(entry) for entry in doc["listen"])
    restarts = ", ".join(f"{_e(k.replace('_', ' '))}: {v}" for k, v in sorted(doc["restarts"].items())) \
        or '<span class="empty">none</span>'
    controller = f"""<div class="box"><h2>Controller</h2><dl>
<dt>State</dt><dd><span class="pill {_e(srv['state'])}">{_e(srv['state'])}</span></dd>
<dt>PID</dt><dd>{_e(srv['pid'])}</dd>
<dt>Started</dt><dd>{fmt_time(srv['started_at'])} <span class="sub">(up {fmt_age(srv['uptime'])})</span></dd>
<dt>Application</dt><dd><code>{_e(srv['app'])}</code></dd>
<dt>Mode</dt><dd>{_e(srv['processes'])} processes × {
        'green threads' if srv['mode'] == 'green' else f"{srv['threads']} threads"}</dd>
<dt>Listening</dt><dd>{listen or '<span class="empty">none</span>'}</dd>
<dt>Last reload</dt><dd>{_e(srv['last_reload_reason'] or '–')}</dd>
<dt>Worker restarts</dt><dd>{restarts}</dd>
<dt>Server</dt><dd>spawning {_e(srv['version'])} · Python {_e(srv['python'])} · {_e(srv['hostname'])}</dd>
</dl></div>"""
    responses = f'<div class="box"><h2>Responses</h2>{_class_bars(tot["status_classes"])}' \
                f'{_histogram(tot["duration"], doc["duration_bounds"])}</div>'
    rows = "".join(_worker_row(w) for w in workers) or \
        '<tr><td colspan="14" class="empty">no workers</td></tr>'
    table = f"""<div class="box"><h2>Workers</h2><table>
<thead><tr><th>PID</th><th>Gen</th><th>State</th><th class="num">Age</th><th class="num">Requests</th>
<th class="num">Req/s</th><th class="num">In flight</th><th class="num">Conns</th><th class="num">p50</th>
<th class="num">p99</th><th class="num">4xx · 5xx</th><th class="num">RSS</th><th class="num">USS</th>
<th>Started because</th></tr></thead>
<tbody>{rows}</tbody></table></div>"""
    config_rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td class=\"mono\">{_e(json.dumps(v))}</td></tr>"
                          for k, v in doc["config"].items())
    config = f'<details class="box"><summary>Configuration</summary><table>{config_rows}</table></details>'
    links = '<a href="status.json">status.json</a> · <a href="metrics">metrics</a>'
    if srv.get("coverage"):
        links += ' · <a href="_coverage/">coverage</a>'
    title = f"spawning · {srv['app'] or 'status'}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="{REFRESH}"></noscript>
<style>{_CSS}</style></head>
<body><header><div class="brand">spawning<span>.</span></div><div class="app">{_e(srv['app'] or '')}</div>
<span class="pill {_e(srv['state'])}">{_e(srv['state'])}</span>
<div class="updated" id="updated">updated {time.strftime('%H:%M:%S', time.localtime(doc['time']))}
· refreshes every {REFRESH} s</div></header>
<main><div class="cards">{cards}</div>
<div class="grid">{controller}{responses}</div>
{table}{config}</main>
<footer>{links} · pid {_e(srv['pid'])}</footer>
<script>{_JS % (REFRESH * 1000)}</script>
</body></html>
"""


def _listen_line(entry: dict[str, Any]) -> str:
    queue = ""
    if entry["accept_queue"] is not None:
        queue = f' <span class="sub">accept queue {entry["accept_queue"]} of {entry["backlog"]}</span>'
    return f"<div><code>{_e(entry['address'])}</code>{queue}</div>"


def _class_bars(classes: dict[str, int]) -> str:
    total = sum(classes.values()) or 1
    rows = []
    for name in STATUS_CLASSES[1:]:
        n = classes.get(name, 0)
        rows.append(f'<span class="l">{name}</span><div class="bar"><i class="c{name[0]}" '
                    f'style="width:{100 * n / total:.1f}%"></i></div><span class="n">{n:,}</span>')
    return f'<div class="bars">{"".join(rows)}</div>'


def _histogram(duration: dict[str, Any], bounds: list[float]) -> str:
    counts = duration["counts"]
    # A log scale, so that a tail of slow requests stays visible next to a peak of fast ones.
    peak = math.log1p(max(counts)) or 1.0
    cols = "".join(f'<div title="{n:,} requests" style="height:{max(0.5, 100 * math.log1p(n) / peak):.1f}%">'
                   f'</div>' for n in counts)
    labels = "".join(f"<span>{_bound_label(b)}</span>" for b in bounds) + f"<span>&gt;{_bound_label(bounds[-1])}</span>"
    return (f'<h2 style="margin-top:16px">Request duration <span class="unit">(upper bounds in ms; '
            f'heights on a log scale)</span>'
            f'</h2><div class="hist">{cols}</div>'
            f'<div class="histl">{labels}</div><div class="q">'
            f'<span>mean <b>{fmt_ms(duration["mean"])}</b></span><span>p50 <b>{_e(fmt_q(duration, "p50"))}</b>'
            f'</span><span>p90 <b>{_e(fmt_q(duration, "p90"))}</b></span><span>p99 <b>'
            f'{_e(fmt_q(duration, "p99"))}</b></span><span>{duration["count"]:,} timed</span></div>')


def _bound_label(bound: float) -> str:
    """A bucket's upper bound under its bar: milliseconds without a unit (the axis says so),
    microseconds and seconds with one."""
    if bound < 0.001:
        return f"{bound * 1e6:g}µs"
    return f"{bound * 1000:g}" if bound < 1 else f"{bound:g}s"


def _worker_row(w: dict[str, Any]) -> str:
    hb = w["last_heartbeat_age"]
    stale = hb is not None and hb > STALE_HEARTBEAT and w["state"] != "starting"
    state = f'<span class="pill {_e(w["state"])}">{_e(w["state"])}</span>'
    if stale:
        state += f' <span class="stale" title="no heartbeat for {hb:.0f} s">⚠ {hb:.0f} s</span>'
    reason = w["start_reason"] or ""
    if w.get("retiring"):
        reason = f"{reason} — retiring: {w['retiring']}"
    in_flight = fmt_int(w["in_flight"])
    if w["oldest_request_age"] is not None:
        in_flight += f' <span class="sub">({fmt_age(w["oldest_request_age"])})</span>'
    c = w["status_classes"]
    return (f'<tr><td class="mono">{w["pid"]}</td><td>{_e(w["generation"])}</td><td>{state}</td>'
            f'<td class="num">{fmt_age(w["age"])}</td><td class="num">{fmt_int(w["requests"])}</td>'
            f'<td class="num">{fmt_rate(w["requests_per_second"])}</td><td class="num">{in_flight}</td>'
            f'<td class="num">{fmt_int(w["connections"])}</td><td class="num">{_e(fmt_q(w["duration"], "p50"))}'
            f'</td><td class="num">{_e(fmt_q(w["duration"], "p99"))}</td>'
            f'<td class="num">{c["4xx"]:,} · {c["5xx"]:,}</td>'
            f'<td class="num">{fmt_bytes(w["memory"]["rss"])}</td>'
            f'<td class="num">{fmt_bytes(w["memory"]["uss"])}</td><td class="reason">{_e(reason)}</td></tr>')


# ---- Prometheus ----------------------------------------------------------------------------------------


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


# ---- the HTTP service ------------------------------------------------------------------------------------

_REASONS = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class _Client:
    __slots__ = ("buf", "closed", "fd", "out", "reading", "since", "sock", "waiting", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out: memoryview | None = None
        self.since = time.monotonic()
        self.reading = False
        self.writing = False
        self.closed = False
        self.waiting = False  # for a coverage report


class StatusService:
    """The HTTP side of the status service (see the module docstring)."""

    def __init__(self, controller: Any, host: str, port: int) -> None:
        self.controller = controller
        self.host = host
        self.port = port
        self.ledger = Ledger()
        self.rates = Rates()
        self.listener: socket.socket | None = None
        self.clients: set[_Client] = set()
        self._writers = selectors.DefaultSelector()
        self._coverage: coverage_support.AsyncReport | None = None

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
        except OSError as exc:
            listener.close()
            raise Halt(EXIT_FAILURE, f"spawning: cannot serve the status page on "
                                     f"{self.host}:{self.port}: {exc.strerror or exc}") from None
        listener.setblocking(False)
        self.listener = listener
        c = self.controller
        c.add_reader(listener.fileno(), self._accept)
        c.add_reader(self._writers.fileno(), self._on_writable)
        c.add_timer(1.0, self._tick)
        c.at_exit(self.close)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        log.info("status page on http://%s:%d/ (JSON: /status.json, Prometheus: /metrics)", shown,
                 listener.getsockname()[1])

    def close(self) -> None:
        for client in list(self.clients):
            self._close(client)
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.controller.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        with contextlib.suppress(KeyError, ValueError):
            self.controller.remove_reader(self._writers.fileno())
        self._writers.close()
        if self._coverage is not None:
            self._coverage.close()

    def _tick(self) -> None:
        c = self.controller
        self.ledger.update(c.workers)
        self.rates.sample(self.ledger.totals()["requests"],
                          {pid: int(_num(w.stats.get("requests"))) for pid, w in c.workers.items()})
        now = time.monotonic()
        for client in list(self.clients):
            if not client.waiting and now - client.since > CLIENT_TIMEOUT:
                self._close(client)
        if self._coverage is not None:
            self._coverage.poll()

    def document(self) -> dict[str, Any]:
        return collect(self.controller, self.ledger, self.rates)

    # -- connections -------------------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(16):
            try:
                sock, _ = self.listener.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again on the next turn
                log.warning("status service: accept failed: %s", exc)
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock)
            self.clients.add(client)
            client.reading = True
            self.controller.add_reader(client.fd, lambda client=client: self._on_readable(client))

    def _stop_reading(self, client: _Client) -> None:
        if client.reading:
            client.reading = False
            self.controller.remove_reader(client.fd)

    def _close(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        self._stop_reading(client)
        if client.writing:
            client.writing = False
            self._writers.unregister(client.sock)
        client.sock.close()
        self.clients.discard(client)

    def _on_readable(self, client: _Client) -> None:
        if client.closed:
            return
        data = recv_ready(client.sock, 8192)
        if data is None:
            return
        if not data:
            self._close(client)
            return
        client.buf += data
        end = client.buf.find(b"\r\n\r\n")
        if end < 0:
            end = client.buf.find(b"\n\n")
        if end > MAX_HEAD or (end < 0 and len(client.buf) > MAX_HEAD):
            self._stop_reading(client)
            self._send(client, 431, "text/plain; charset=utf-8", b"request head too large\n")
            return
        if end < 0:
            return
        self._stop_reading(client)
        self._handle(client, client.buf[:end].decode("latin-1"))

    def _handle(self, client: _Client, head: str) -> None:
        parts = head.split("\n", 1)[0].strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._send(client, 400, "text/plain; charset=utf-8", b"bad request\n")
            return
        method, target = parts[0], parts[1]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._send(client, 405, "text/plain; charset=utf-8", b"only GET and HEAD\n",
                       extra=[("Allow", "GET, HEAD")])
            return
        path = target.split("?", 1)[0]
        if path.startswith(("http://", "https://")):  # absolute-form
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        try:
            if path in ("/", "/status", "/status/", "/status.html"):
                body = render_html(self.document()).encode()
                self._send(client, 200, "text/html; charset=utf-8", body, head_only)
            elif path == "/status.json":
                body = json.dumps(self.document(), indent=1).encode() + b"\n"
                self._send(client, 200, "application/json", body, head_only)
            elif path == "/healthz":     # alive: the controller's loop answered
                self._send(client, 200, "text/plain; charset=utf-8", b"ok\n", head_only)
            elif path == "/readyz":
                ready, why = self.controller.readiness()
                self._send(client, 200 if ready else 503, "text/plain; charset=utf-8",
                           why.encode() + b"\n", head_only)
            elif path == "/metrics":
                body = render_metrics(self.document()).encode()
                self._send(client, 200, "text/plain; version=0.0.4; charset=utf-8", body, head_only)
            elif path == coverage_support.PREFIX or path.startswith(coverage_support.PREFIX + "/"):
                self._serve_coverage(client, path, head_only)
            else:
                self._send(client, 404, "text/plain; charset=utf-8",
                           b"not found: try /, /status.json or /metrics\n", head_only)
        except Exception:
            log.exception("status service: error answering %s", path)
            self._send(client, 500, "text/plain; charset=utf-8", b"internal error\n", head_only)

    def _serve_coverage(self, client: _Client, path: str, head_only: bool) -> None:
        run = getattr(self.controller, "coverage", None)
        if run is None:
            self._send(client, 404, "text/plain; charset=utf-8",
                       b"coverage is off: start the server with --coverage\n", head_only)
            return
        if path == coverage_support.PREFIX:
            self._send(client, 301, "text/plain; charset=utf-8", b"",
                       extra=[("Location", coverage_support.PREFIX + "/")])
            return
        if self._coverage is None:
            self._coverage = coverage_support.AsyncReport(run, self.controller.add_reader,
                                                          self.controller.remove_reader)
        report = self._coverage

        def ready(error: str | None) -> None:
            client.waiting = False
            if client.closed:
                return
            found = coverage_support.resolve(report.out_dir, path)
            if found is None:
                self._send(client, 500 if error else 404, "text/plain; charset=utf-8",
                           (error or "not found").encode() + b"\n", head_only)
                return
            with open(found[0], "rb") as f:
                self._send(client, 200, found[1], f.read(), head_only)

        if coverage_support.is_index(path) or not os.path.isdir(report.out_dir):
            for w in list(self.controller.workers.values()):  # fresh data, please
                if w.state != "starting":
                    w.send({"t": "cov_save"})
            client.waiting = True
            report.request(ready)
        else:
            ready(None)

    def _send(self, client: _Client, status: int, ctype: str, body: bytes, head_only: bool = False,
              extra: list[tuple[str, str]] | None = None) -> None:
        headers = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Content-Type: {ctype}",
                   f"Content-Length: {len(body)}", "Cache-Control: no-store",
                   "X-Content-Type-Options: nosniff", "Connection: close", "Server: spawning-status"]
        headers += [f"{k}: {v}" for k, v in extra or []]
        data = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        client.out = memoryview(data)
        client.since = time.monotonic()
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        out = client.out
        while out:
            try:
                sent = client.sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(client)
                return
            out = out[sent:]
        client.out = out
        if out:
            if not client.writing:
                client.writing = True
                self._writers.register(client.sock, selectors.EVENT_WRITE, client)
            return
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_WR)
        self._close(client)

    def _on_writable(self) -> None:
        for key, _ in self._writers.select(0):
            client = key.data
            if not client.closed:
                self._flush(client)


def attach(controller: Any) -> StatusService | None:
    """The controller's component hook: starts the service when ``--status-port`` is set and is not
    the port the application is served on."""
    settings = controller.settings
    port = settings.status_port
    if not port:
        return None
    host = settings.status_host or settings.host
    if port == settings.port and not settings.bind:
        log.warning("--status-port %d is the application's port: no status page", port)
        return None
    service = StatusService(controller, host, port)
    service.start()
    controller.status_service = service
    return service


# ---- spawning status -------------------------------------------------------------------------------------


def fetch(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """The status document of a running server, from its status service."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/status.json")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status} from the status service")
        return json.loads(body)
    finally:
        conn.close()


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_table(doc: dict[str, Any]) -> str:
    """The status document as text for a terminal."""
    srv, tot = doc["server"], doc["totals"]
    lines = [
        f"spawning {srv['version']}  pid {srv['pid']}  {srv['state']}  app {srv['app'] or '-'}",
        f"up {fmt_age(srv['uptime'])} (since {fmt_time(srv['started_at'])})  generation "
        f"{srv['generation']}{' (booting ' + str(srv['pending_generation']) + ')' if srv['pending_generation'] else ''}"
        f"  reloads {srv['reloads']}" + (f" (last: {srv['last_reload_reason']})" if srv["last_reload_reason"] else ""),
        "listening " + ", ".join(
            entry["address"] + ("" if entry["accept_queue"] is None else
                                f" (accept queue {entry['accept_queue']}/{entry['backlog']})")
            for entry in doc["listen"]),
        (f"requests {fmt_int(tot['requests'])}  req/s {fmt_rate(tot['requests_per_second'])}  in flight "
         f"{tot['in_flight']}  connections {tot['connections']}  p50 {fmt_q(tot['duration'], 'p50')}  "
         f"p99 {fmt_q(tot['duration'], 'p99')}  memory {fmt_bytes(tot['memory']['uss'])} USS, "
         f"{fmt_bytes(tot['memory']['rss'])} RSS"),
        "responses " + "  ".join(f"{k} {v:,}" for k, v in tot["status_classes"].items()),
    ]
    if doc["restarts"]:
        lines.append("restarts " + ", ".join(f"{k} {v}" for k, v in sorted(doc["restarts"].items())))
    lines.append("")
    headers = ["PID", "GEN", "STATE", "AGE", "REQUESTS", "REQ/S", "IN FLIGHT", "CONNS", "P50", "P99",
               "RSS", "USS", "STARTED BECAUSE"]
    rows = []
    for w in doc["workers"]:
        rows.append([str(w["pid"]), str(w["generation"]), str(w["state"]), fmt_age(w["age"]),
                     fmt_int(w["requests"]), fmt_rate(w["requests_per_second"]), str(w["in_flight"]),
                     str(w["connections"]), fmt_q(w["duration"], "p50"), fmt_q(w["duration"], "p99"),
                     fmt_bytes(w["memory"]["rss"]), fmt_bytes(w["memory"]["uss"]),
                     str(w["start_reason"] or "")])
    lines += _table(headers, rows, right={3, 4, 5, 6, 7, 8, 9, 10, 11})
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    """``spawning status``: prints a running server's status (from its --status-port) as a table."""
    parser = argparse.ArgumentParser(
        prog="spawning status",
        description="Show the status of a running spawning server, read from its status service "
                    "(start the server with --status-port).")
    parser.add_argument("--status-host", default="127.0.0.1", metavar="HOST",
                        help="the status service's address (default: 127.0.0.1)")
    parser.add_argument("--status-port", type=int, required=True, metavar="PORT",
                        help="the server's --status-port")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long to wait for an answer (default: 5)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    try:
        doc = fetch(args.status_host, args.status_port, args.timeout)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"spawning status: cannot read the status service at "
                         f"{args.status_host}:{args.status_port}: {exc}\n")
        return EXIT_FAILURE
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_table(doc))
    return 0
