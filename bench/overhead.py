"""Where a framework request's CPU time goes: inside the app, or in the server around it.

Runs each server with one process on a real Django view (bench/frameworks.py) wrapped in a
middleware that adds up the CPU time its thread spends inside the app (``time.thread_time_ns``
around the call and the iteration of its response, close() included), drives it with wrk's
browser-like requests (bench/browser.lua), and prints per request: the server process's whole
CPU time (user + system, from /proc), the time inside the app, and the difference, which is
what the server itself costs (parsing, environ, start_response, writing, the loop, the kernel's
socket work, and the interpreter's own overheads outside the app such as garbage collection).

    python bench/overhead.py [--app django|flask|closeiter] [--seconds 5] [--only spawning,bjoern]
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers as P  # noqa: E402
import run as R  # noqa: E402

APPS = {"django": "django_view", "flask": "flask_view", "closeiter": "closeiter"}


def app_cpu(port: int) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/__apptime")
    ns, n = conn.getresponse().read().split()
    conn.close()
    return int(ns), int(n)


def measure(peer, app: str, seconds: float, tmp: str) -> str:
    port = R.free_port()
    argv = peer.command("timed_" + app, port, tmp)
    if argv is None:
        return f"{peer.name:16s} n/a"
    srv = R.ServerProcess(argv, os.path.join(tmp, f"{peer.name}.log"))
    try:
        if not R.wait_listening(srv, port):
            return f"{peer.name:16s} did not start: {srv.log_tail(3)}"
        script = os.path.join(tmp, "wrk.lua")
        with open(script, "w") as f:
            f.write(R.BROWSER_LUA + R.LUA_DONE)
        R.run_wrk(port, script, 50, 2)                  # warm-up
        a0, n0 = app_cpu(port)
        c0 = R.group_cpu_ticks(srv.pgid)
        stats, _ = R.run_wrk(port, script, 50, seconds)
        c1 = R.group_cpu_ticks(srv.pgid)
        a1, n1 = app_cpu(port)
        reqs = n1 - n0
        if not reqs:
            return f"{peer.name:16s} no request counted: {stats} {srv.log_tail(5)}"
        total_us = (c1 - c0) / R.CLK_TCK * 1e6 / reqs
        app_us = (a1 - a0) / 1000 / reqs
        return (f"{peer.name:16s} {reqs / seconds:8,.0f} req/s  total {total_us:6.1f} us  "
                f"app {app_us:6.1f} us  outside the app {total_us - app_us:6.1f} us")
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", default="django", choices=sorted(APPS))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default="spawning,spawning-green,bjoern,freastal,fastwsgi,fastpysgi")
    a = ap.parse_args()
    names = a.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for peer in P.PEERS:
            if peer.name in names and P.is_installed(peer):
                print(measure(peer, APPS[a.app], a.seconds, tmp), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
