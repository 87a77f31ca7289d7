"""``spawning status``: prints a running server's status, read from its status service
(``--status-port``), as a table for a terminal or as the JSON document."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_FAILURE, EXIT_USAGE
from .page import fmt_age, fmt_bytes, fmt_int, fmt_q, fmt_rate, fmt_time


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
