"""Resource exhaustion: the connection limit, running out of file descriptors, memory per idle
keep-alive connection, and memory under sustained mixed load. Scaled down for CI; the full-size
goals (10,000 idle connections, 1,000,000 requests) are measured by bench/adversarial.py.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import rss_bound, wait_until
from hostile import AttackProcess, Prober, raise_nofile

HERE = Path(__file__).resolve().parent
MIXED_LUA = HERE.parent.parent / "bench" / "mixed.lua"


def the_worker(server) -> psutil.Process:
    pids = server.workers()
    assert len(pids) == 1, pids
    return psutil.Process(pids[0])


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def established(p: psutil.Process) -> int:
    return sum(1 for c in p.net_connections("tcp") if c.raddr and c.status == psutil.CONN_ESTABLISHED)


def test_max_connections_stops_accepting_without_failing(spawn):
    """Beyond --max-connections the worker stops accepting (the kernel's listen queue holds new
    clients; nobody is refused or reset), uses no CPU meanwhile, and takes the waiting clients
    as soon as slots free up."""
    raise_nofile()
    # --defer-accept 0: these clients send nothing, which the kernel would otherwise hold.
    server = spawn("-s", "1", "-t", "4", "--max-connections", "50", "--header-timeout", "10",
                   "--defer-accept", "0", "mixed_app.application", extra_path=[str(HERE)])
    worker = the_worker(server)
    hold = AttackProcess("hold", port=server.port, conns=200, duration=30)
    try:
        assert hold.readline(20)["opened"] == 200   # all connected: the rest wait in the backlog
        wait_until(lambda: established(worker) >= 50, 10, what="the worker to take 50 connections")
        assert established(worker) == 50
        c0 = cpu_seconds(worker)
        probe = Prober(server.port, 1, 0, timeout=15).start()   # queued behind the limit
        time.sleep(1.0)
        assert cpu_seconds(worker) - c0 < 0.1                   # not spinning on the listener
        assert established(worker) == 50
        assert probe.latencies == [] and probe.failures == []   # waiting, not refused
        released = time.monotonic()
        hold.stop()
        probe.join(15)
        r = probe.result()
        assert r["ok"] == 1, r
        assert time.monotonic() - released < 3.0
    finally:
        hold.stop()
        hold.result(30)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_out_of_file_descriptors_pauses_accepting_and_recovers(spawn):
    """With its RLIMIT_NOFILE lowered to 64, a worker facing 300 connections hits EMFILE: it
    pauses accepting (csrc/loop/loop.h SP_EMFILE_PAUSE_MS) instead of spinning on a listener that
    stays readable, does not crash, and serves normally once descriptors are free again."""
    raise_nofile()
    server = spawn("-s", "1", "-t", "4", "--header-timeout", "30", "--defer-accept", "0",
                   "mixed_app.application", extra_path=[str(HERE)])   # silent clients (above)
    worker = the_worker(server)
    subprocess.run(["prlimit", f"--pid={worker.pid}", "--nofile=64:64"], check=True, timeout=10)
    hold = AttackProcess("hold", port=server.port, conns=300, duration=30)
    try:
        assert hold.readline(20)["opened"] == 300
        wait_until(lambda: worker.num_fds() >= 60, 10, what="the worker to run out of descriptors")
        c0 = cpu_seconds(worker)
        time.sleep(2.0)
        assert cpu_seconds(worker) - c0 < 0.2      # measured: 0.00 s
    finally:
        hold.stop()
        hold.result(30)
    r = Prober(server.port, 20, 0.02, timeout=5).run().result()
    assert r["ok"] == 20, r
    assert worker.is_running() and server.workers() == [worker.pid]


def test_idle_keepalive_connection_costs_under_4_kib(spawn):
    """2,000 keep-alive connections, each after one request, idle: the worker's RSS grows by at
    most 4 KiB per connection (measured: about 700 bytes; read buffers go back to the pool when a
    connection is idle, so what stays is the sp_conn struct and the epoll entry)."""
    raise_nofile()
    n = 2000
    server = spawn("-s", "1", "-t", "4", "--keepalive-timeout", "60", "--header-timeout", "60",
                   "mixed_app.application", extra_path=[str(HERE)])
    worker = the_worker(server)
    warm = AttackProcess("hold", port=server.port, conns=n // 2, duration=30, request=True)
    warm.readline(30)
    time.sleep(1.0)
    warm.stop()
    warm.result(30)
    assert server.wait_until(lambda: established(worker) == 0, timeout=10)
    before = worker.memory_info().rss
    hold = AttackProcess("hold", port=server.port, conns=n, duration=60, request=True)
    try:
        assert hold.readline(30)["opened"] == n
        assert server.wait_until(lambda: established(worker) == n, timeout=10)
        time.sleep(1.0)
        per_conn = (worker.memory_info().rss - before) / n
        assert per_conn <= 4096, per_conn
        r = Prober(server.port, 20, 0.02).run().result()
        assert r["ok"] == 20 and r["p99_ms"] < 100, r
    finally:
        hold.stop()
        hold.result(30)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
@rss_bound
def test_memory_is_flat_under_mixed_load(spawn):
    """Mixed sizes (bench/mixed.lua: 100 B to 1 MiB responses, 1 KiB to 256 KiB bodies, chunked
    both ways, big heads), three 5 s windows after a warm-up: in one of them at least the
    worker's RSS grows by at most 1 MB (~80,000 requests a window here: a leak of 13 bytes a
    request fails it). bench/adversarial.py runs the same for 1,000,000 requests."""
    server = spawn("-s", "1", "-t", "4", "mixed_app.application", extra_path=[str(HERE)])
    worker = the_worker(server)
    url = f"http://127.0.0.1:{server.port}/"

    def wrk(seconds: int) -> str:
        out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--timeout", "5s", "-s",
                              str(MIXED_LUA), url], capture_output=True, text=True, check=False,
                             timeout=seconds + 30).stdout
        assert "Non-2xx" not in out and "Socket errors" not in out, out
        return out

    # The worker's pools (read buffers in C and in wsgi.input, cork buffers: each bounded) and
    # the allocator's arenas fill up under this mix in steps for 15-20 s (RSS after 3 s and then
    # every 6 s, one run: 21.5, 22.5, 24.4, 26.1, 26.1, 26.1 MB), so one window's growth says
    # little. A leak grows in every window: of three 5 s windows after a warm-up, one at least
    # must stay within 1 MB.
    wrk(3)
    samples = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append(worker.memory_info().rss)

    t = threading.Thread(target=sample, daemon=True)
    start = worker.memory_info().rss
    t.start()
    try:
        marks = [start]
        for _ in range(3):
            out = wrk(5)
            marks.append(worker.memory_info().rss)
    finally:
        stop.set()
        t.join(5)
    growth = [b - a for a, b in zip(marks, marks[1:])]
    assert min(growth) <= 1 << 20, (marks, out)
    assert max(samples) - start <= 8 << 20, (start, max(samples))   # pools and in-flight peaks
