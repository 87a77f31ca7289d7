"""Health endpoints and SIGTERM's --shutdown-delay, through real sockets.

- the status port's ``/healthz`` (alive) and ``/readyz`` (serving, and not shutting down);
- ``--health-path`` on the application port, answered without calling the app, on the C path
  (csrc/py/runner.c runs a keep-alive connection's repeated requests) and on the Python path
  (SPAWNING_NO_PYFAST=1), in thread and green mode;
- ``--shutdown-delay``: after SIGTERM the server goes on accepting and serving for that long while
  both answer 503, then drains and exits.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import psutil  # type: ignore[import-untyped]
import pytest
from conftest import ROOT, free_port, http_request, wait_until


def _get(port: int, path: str) -> tuple[int, bytes]:
    status, _, body = http_request(port, path, timeout=5)
    return status, body


def test_healthz_and_readyz_on_the_status_port(spawn):
    status_port = free_port()
    server = spawn("-s", "2", "--status-port", str(status_port), "--shutdown-delay", "2",
                   "deploy_apps.echo")
    assert _get(status_port, "/healthz") == (200, b"ok\n")
    assert _get(status_port, "/readyz") == (200, b"ready\n")
    conn = http.client.HTTPConnection("127.0.0.1", status_port, timeout=5)
    conn.request("HEAD", "/readyz")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    conn.close()

    server.signal(signal.SIGTERM)
    assert server.wait_until(lambda: _get(status_port, "/readyz")[0] == 503, timeout=2)
    assert _get(status_port, "/readyz") == (503, b"shutting down\n")
    assert _get(status_port, "/healthz") == (200, b"ok\n"), "alive while it drains"
    doc = json.loads(http_request(status_port, "/status.json")[2])
    assert doc["server"]["state"] == "delaying"
    assert server.wait(10) == 0


def test_readyz_waits_for_the_first_generation(spawn):
    """Alive at once, ready only once the app is loaded: an orchestrator must not send traffic to
    a server still importing its app."""
    status_port = free_port()
    server = spawn("-s", "1", "--status-port", str(status_port), "slow_boot.application",
                   env={"SLOW_BOOT_SECONDS": "2"}, wait=False)
    assert server.wait_until(lambda: _answers(status_port, "/healthz") == 200, timeout=10)
    assert _get(status_port, "/readyz") == (503, b"starting\n")
    assert server.wait_until(lambda: _answers(status_port, "/readyz") == 200, timeout=15)
    assert _get(server.port, "/")[0] == 200


def _answers(port: int, path: str) -> int:
    try:
        return _get(port, path)[0]
    except OSError:
        return 0


@pytest.mark.parametrize("threads", ["4", "0"], ids=["threads", "green"])
@pytest.mark.parametrize("pyfast", ["c", "python"])
def test_health_path_answers_without_the_app(spawn, threads, pyfast):
    """Repeated on one keep-alive connection (the C path takes those, unless SPAWNING_NO_PYFAST=1),
    and on fresh connections; the app (which answers JSON naming the path) is never called for it.
    After SIGTERM, with --shutdown-delay, the same connection gets 503 while other paths are still
    served."""
    env = {"SPAWNING_NO_PYFAST": "1"} if pyfast == "python" else {}
    server = spawn("-s", "1", "-t", threads, "--health-path", "/lb-health", "--shutdown-delay", "3",
                   "deploy_apps.echo", env=env)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for _ in range(20):
        conn.request("GET", "/lb-health")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"ok\n")
        assert resp.getheader("Cache-Control") == "no-store"
    conn.request("HEAD", "/lb-health")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    # Other paths, and the health path with a query, reach the app; a longer path is not it.
    for path in ("/", "/lb-health/x", "/lb-healthz"):
        status, body = _get(server.port, path)
        assert status == 200 and json.loads(body)["PATH_INFO"] == path
    assert _get(server.port, "/lb-health?probe=1") == (200, b"ok\n")

    server.signal(signal.SIGTERM)
    got: list[tuple[int, bytes]] = []

    def kept_connection_unready() -> bool:
        conn.request("GET", "/lb-health")
        resp = conn.getresponse()
        got[:] = [(resp.status, resp.read())]
        return got[0][0] == 503

    wait_until(kept_connection_unready, 2, interval=0.05, what="503 on the kept connection")
    assert got[0] == (503, b"shutting down\n"), "the kept connection (C path) says 503"
    assert _get(server.port, "/lb-health") == (503, b"shutting down\n"), "a new one too"
    status, body = _get(server.port, "/still-served")
    assert status == 200 and json.loads(body)["PATH_INFO"] == "/still-served"
    conn.close()
    assert server.wait(10) == 0


def test_shutdown_delay_keeps_accepting_then_drains(spawn):
    """For --shutdown-delay seconds after SIGTERM new connections are accepted and served; then the
    server drains and exits: not at once, and not much later."""
    delay = 2.0
    server = spawn("-s", "2", "--shutdown-delay", str(delay), "deploy_apps.echo")
    sent = time.monotonic()
    server.signal(signal.SIGTERM)
    served = 0
    last_ok = sent
    while time.monotonic() - sent < delay + 3:
        try:
            status, _ = _get(server.port, "/")
        except OSError:
            break               # refused: the drain has begun
        assert status == 200
        served += 1
        last_ok = time.monotonic()
        time.sleep(0.05)
    assert served >= 10
    assert last_ok - sent >= delay - 0.6, f"served only {last_ok - sent:.2f} s of the {delay} s"
    assert server.wait(10) == 0
    exited = time.monotonic() - sent
    assert delay - 0.6 <= exited < delay + 3, exited
    assert "--shutdown-delay" in server.stderr


def test_second_sigterm_ends_the_delay(spawn):
    server = spawn("-s", "1", "--shutdown-delay", "30", "deploy_apps.echo")
    server.signal(signal.SIGTERM)
    assert server.wait_until(lambda: "serving 30 s more" in server.stderr, timeout=3)
    sent = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    assert time.monotonic() - sent < 5
    assert "SIGTERM again: draining now" in server.stderr


def test_sigint_does_not_wait_for_the_delay(spawn):
    """The delay is for orchestrators' SIGTERM; Ctrl-C at a terminal stops as before."""
    server = spawn("-s", "1", "--shutdown-delay", "30", "deploy_apps.echo")
    sent = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.wait(10) == 0
    assert time.monotonic() - sent < 5


@pytest.mark.parametrize("value", ["health", "/a b", ""])
def test_bad_health_path_is_one_line(value):
    proc = subprocess.run([sys.executable, "-m", "spawning", "--health-path", value, "x.app"],
                          check=False, capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    if value == "":
        # Empty means none: then the app import fails instead, which is a different line.
        assert "--health-path" not in proc.stderr
        return
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--health-path" in lines[0], proc.stderr


def _connection_to_each_worker(port: int, workers: list[int],
                               tries: int = 100) -> dict[int, http.client.HTTPConnection]:
    """A kept connection held by each worker ({pid: connection}): new connections go to whichever
    worker accepts them, so a probe of one worker's state needs a connection that worker holds."""
    held: dict[int, http.client.HTTPConnection] = {}
    spare = []
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/x")
        conn.getresponse().read()       # accepted and served: a worker holds it now
        local = conn.sock.getsockname()[1]
        owner = next((pid for pid in workers
                      if any(c.raddr and c.raddr.port == local
                             for c in psutil.Process(pid).net_connections("tcp"))), None)
        if owner is not None and owner not in held:
            held[owner] = conn
        else:
            spare.append(conn)          # kept open meanwhile, as a browser's would be
        if len(held) == len(workers):
            break
    for conn in spare:
        conn.close()
    assert len(held) == len(workers), f"no connection reached every worker in {tries} tries"
    return held


def _kept_get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_shutdown_delay_when_every_process_gets_sigterm(spawn):
    """As systemd's KillMode=control-group (or a platform that signals every process) does: the
    workers hold --shutdown-delay too, unready and serving, rather than draining at once (which
    would also read to the controller as a crash to replace), and the controller's final drain ends
    it (a worker's own clock, started a little earlier on a loaded machine, does not)."""
    delay = 2.5
    server = spawn("-s", "2", "--health-path", "/hz", "--shutdown-delay", str(delay),
                   "deploy_apps.echo")
    workers = server.workers()
    assert len(workers) == 2
    held = _connection_to_each_worker(server.port, workers)
    sent = time.monotonic()
    for pid in [server.pid, *workers]:
        os.kill(pid, signal.SIGTERM)
    # kill() returns before the process it signals has run its handler: on a loaded machine a probe
    # sent at once can reach a worker that has not run since. Each worker turns unready promptly,
    # well within the delay (a few ms here, under load), and stays so.
    for pid, conn in held.items():
        wait_until(lambda conn=conn: _kept_get(conn, "/hz")[0] == 503, 1.0,
                   what=f"worker {pid}'s health path to answer 503")
    served = 0
    while time.monotonic() - sent < delay - 0.7:
        status, body = _get(server.port, "/x")
        assert status == 200 and json.loads(body)["PATH_INFO"] == "/x"
        assert _get(server.port, "/hz")[0] == 503
        for pid, conn in held.items():
            assert _kept_get(conn, "/hz") == (503, b"shutting down\n"), f"worker {pid} is ready again"
        served += 1
        time.sleep(0.05)
    assert served >= 5
    for conn in held.values():
        conn.close()
    assert sorted(server.workers()) == sorted(workers), "the same workers serve on"
    assert server.wait(15) == 0
    assert time.monotonic() - sent >= delay - 0.5
    assert "replacing it" not in server.stderr, server.stderr


@pytest.mark.parametrize("threads", ["4", "0"], ids=["threads", "green"])
def test_workers_signalled_before_the_controller_serve_until_its_drain(spawn, threads):
    """A process manager that signals one process after another: the workers' own delays end before
    the controller's. They serve on until its final drain (which takes in the listen queue first),
    rather than exit while the controller still counts them as serving, which it read as crashes
    and replaced."""
    delay, lag = 2.0, 0.8
    server = spawn("-s", "2", "-t", threads, "--shutdown-delay", str(delay), "deploy_apps.echo")
    workers = server.workers()
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    time.sleep(lag)                     # the manager's pace between the processes it signals
    sent = time.monotonic()
    server.signal(signal.SIGTERM)
    # Past the workers' own delay (lag before the end of the controller's), the same workers serve.
    while time.monotonic() - sent < delay - 0.3:
        status, body = _get(server.port, "/x")
        assert status == 200 and json.loads(body)["PATH_INFO"] == "/x"
        time.sleep(0.05)
    assert sorted(server.workers()) == sorted(workers), server.stderr
    assert server.wait(15) == 0
    assert time.monotonic() - sent >= delay - 0.5
    assert "replacing it" not in server.stderr, server.stderr
