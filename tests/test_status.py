"""The status service (--status-port), its Prometheus metrics, the `spawning status` command and
--coverage, all against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SpawningProcess, foreign_env, free_port, http_request, start_server

from spawning import status

SCHEMA = ROOT / "docs" / "status.schema.json"
CHROMIUM = "/usr/bin/chromium"


class StatusServer:
    """A running server and its status port."""

    def __init__(self, proc: SpawningProcess, status_port: int) -> None:
        self.proc = proc
        self.status_port = status_port

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.status_port, path)

    def doc(self) -> dict[str, Any]:
        code, headers, body = self.get("/status.json")
        assert code == 200, body
        assert headers["content-type"] == "application/json"
        return json.loads(body)

    def wait_doc(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first document that satisfies ``predicate`` (heartbeats come every second)."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.doc()
            if predicate(doc):
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"no status document matched within {timeout} s: "
                                     f"{json.dumps(doc, indent=1)[:3000]}")
            time.sleep(0.1)


def start_status_server(*args: str, **kw: Any) -> StatusServer:
    status_port = free_port()
    proc = start_server("--status-port", str(status_port), *args, **kw)
    return StatusServer(proc, status_port)


@pytest.fixture(scope="module")
def served() -> Iterator[StatusServer]:
    """A 2-process server with its status page on, shared by the read-only tests of this module."""
    server = start_status_server("hello.application", "-s", "2")
    try:
        yield server
    finally:
        server.proc.stop()
        shutil.rmtree(server.proc.workdir, ignore_errors=True)


def validate(doc: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))


def test_duration_buckets_are_the_cores() -> None:
    from spawning.server import DURATION_BOUNDS

    assert status.DURATION_BOUNDS == DURATION_BOUNDS


def test_quantile_estimates() -> None:
    counts = [0] * status.NBUCKETS
    assert status.quantile(counts, 0.5) is None
    i = status.DURATION_BOUNDS.index(0.01)
    counts[i] = 10  # ten requests between 5 ms and 10 ms
    assert 0.005 < status.quantile(counts, 0.5) <= 0.01  # type: ignore[operator]
    counts[-1] = 1000  # the open bucket answers the largest bound
    assert status.quantile(counts, 0.99) == status.DURATION_BOUNDS[-1]


def test_json_lists_both_workers_and_numbers_move(served: StatusServer) -> None:
    pids = sorted(served.proc.workers())
    assert len(pids) == 2
    doc = served.wait_doc(lambda d: len(d["workers"]) == 2 and
                          all(w["state"] == "ready" for w in d["workers"]))
    validate(doc)
    assert sorted(w["pid"] for w in doc["workers"]) == pids
    srv = doc["server"]
    assert srv["pid"] == served.proc.pid and srv["state"] == "running"
    assert srv["generation"] == 1 and srv["processes"] == 2 and srv["app"] == "hello.application"
    assert doc["listen"][0]["address"] == f"http://127.0.0.1:{served.proc.port}"
    assert all(w["generation"] == 1 and w["age"] > 0 for w in doc["workers"])
    before = doc["totals"]["requests"]

    for _ in range(40):
        assert served.proc.get("/")[0] == 200
    doc = served.wait_doc(lambda d: d["totals"]["requests"] >= before + 40)
    validate(doc)
    workers = doc["workers"]
    assert sum(w["requests"] for w in workers) == doc["totals"]["requests"]
    assert doc["totals"]["status_classes"]["2xx"] >= before + 40
    assert doc["totals"]["accepted"] >= 40
    assert doc["totals"]["bytes_out"] > 40 * len(b"hello from 1\n")
    duration = doc["totals"]["duration"]
    assert duration["count"] == sum(duration["counts"]) >= 40
    assert len(duration["counts"]) == len(doc["duration_bounds"]) + 1
    assert 0 < duration["mean"] < 1.0 and duration["p50"] <= duration["p99"]
    assert all(w["in_flight"] == 0 and w["last_heartbeat_age"] < 3 for w in workers)

    # Memory is sampled every few seconds: RSS and USS arrive for both workers, USS <= RSS.
    doc = served.wait_doc(lambda d: all(w["memory"]["uss"] for w in d["workers"]), timeout=8)
    for w in doc["workers"]:
        assert 0 < w["memory"]["uss"] <= w["memory"]["rss"] < 2 << 30
    assert doc["totals"]["memory"]["rss"] == sum(w["memory"]["rss"] for w in doc["workers"])


def test_metrics_parse_with_prometheus_client(served: StatusServer) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    for _ in range(10):
        served.proc.get("/")
    doc = served.wait_doc(lambda d: d["totals"]["requests"] >= 10 and
                          all(w["memory"]["rss"] for w in d["workers"]), timeout=8)
    code, headers, body = served.get("/metrics")
    assert code == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}

    requests = families["spawning_requests"]
    assert requests.type == "counter"
    by_class = {s.labels["status_class"]: s.value for s in requests.samples}
    assert by_class["2xx"] >= doc["totals"]["status_classes"]["2xx"] >= 10
    assert set(by_class) == {"1xx", "2xx", "3xx", "4xx", "5xx"}

    hist = families["spawning_request_duration_seconds"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    values = [s.value for s in buckets]
    assert values == sorted(values), "buckets are cumulative"
    assert buckets[-1].labels["le"] == "+Inf"
    # The core's buckets, from 5 us: a fast app's requests are resolved there too.
    assert len(buckets) == status.NBUCKETS and float(buckets[0].labels["le"]) == 0.000005
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    assert count == values[-1] >= 10

    for name in ("spawning_requests_in_flight", "spawning_connections", "spawning_worker_memory_bytes",
                 "spawning_worker_restarts", "spawning_reloads", "spawning_workers", "spawning_generation"):
        assert name in families, name
    memory = families["spawning_worker_memory_bytes"].samples
    pids = {int(s.labels["pid"]) for s in memory}
    assert pids == {w["pid"] for w in doc["workers"]}
    assert {s.labels["kind"] for s in memory} == {"rss", "uss"}
    assert families["spawning_generation"].samples[0].value == 1
    ready = [s for s in families["spawning_workers"].samples if s.labels["state"] == "ready"]
    assert ready and ready[0].value == 2


def test_quantile_in_the_first_bucket_is_a_bound() -> None:
    """A quantile that falls in the first bucket is only known to be under its bound: the value
    is that bound and the quantile is named in ``below``, not a figure interpolated from zero."""
    counts = [0] * status.NBUCKETS
    counts[0] = 98
    counts[status.DURATION_BOUNDS.index(0.001)] = 2
    d = status._duration(counts, 0.0001)
    assert d["p50"] == d["p90"] == status.DURATION_BOUNDS[0] and d["below"] == ["p50", "p90"]
    assert 0.0005 < d["p99"] <= 0.001
    assert status.fmt_q(d, "p50") == "< 5 µs" and status.fmt_q(d, "p99").endswith(" µs")
    assert not status.fmt_q(d, "p99").startswith("<")


def test_fast_app_quantiles_are_measured_not_invented(served: StatusServer) -> None:
    """The hello app through the real status service: its requests fall in the buckets under
    100 us, which the old histogram did not have (it showed every fast workload as "p50 50 us,
    p99 99 us"). Whatever the machine's speed, the page shows what the buckets know: a "< bound"
    for a quantile in the first bucket, an interpolated figure otherwise."""
    before = served.doc()["totals"]["duration"]["count"]
    for _ in range(200):
        assert served.proc.get("/")[0] == 200
    doc = served.wait_doc(lambda d: d["totals"]["duration"]["count"] >= before + 200)
    validate(doc)
    bounds = doc["duration_bounds"]
    assert bounds[0] <= 0.00001 and 0.0001 in bounds and len(bounds) == status.NBUCKETS - 1
    d = doc["totals"]["duration"]
    fast = sum(c for c, b in zip(d["counts"], bounds) if b < 0.0001)
    assert fast >= d["count"] // 2, d     # hand-off to finish of a hello request: well under 100 us
    assert d["p50"] < 0.0001 and (d["p50"], d["p99"]) != (0.00005, 0.000099), d
    code, _, body = served.get("/")
    page = body.decode()
    for name in ("p50", "p99"):
        shown = status.fmt_q(d, name)
        if name in d["below"]:
            assert d[name] == bounds[0] and shown == "< 5 µs", d
        else:
            assert bounds[0] < d[name] and not shown.startswith("<"), d
    # The page renders the "< bound" form escaped; a document whose quantiles all fell in the
    # first bucket shows it on the latency card and under the histogram.
    assert "&lt; 5 µs" in page or not d["below"]
    counts = [d["count"]] + [0] * (len(d["counts"]) - 1)
    doc["totals"]["duration"] = status._duration(counts, d["sum"])
    html = status.render_html(doc)
    assert html.count("&lt; 5 µs") >= 4 and "< 5 µs" not in html     # card, p50, p90, p99
    assert "p50 < 5 µs" in status.render_table(doc)


def test_html_page_names_every_worker(served: StatusServer) -> None:
    pids = served.proc.workers()
    for path in ("/", "/status"):
        code, headers, body = served.get(path)
        assert code == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        page = body.decode()
        for pid in pids:
            assert f">{pid}<" in page
        assert "hello.application" in page and "Workers" in page
        # Self-contained: no external scripts, styles or images.
        assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
        assert "http://" not in page.replace(f"http://127.0.0.1:{served.proc.port}", "")


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")
def test_html_page_renders_in_headless_chromium(served: StatusServer) -> None:
    with tempfile.TemporaryDirectory(prefix="sp-chromium-") as tmp:
        shot = Path(tmp) / "status.png"
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp}/profile", f"--screenshot={shot}", "--window-size=1200,900",
                f"http://127.0.0.1:{served.status_port}/"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=foreign_env())
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("chromium did not finish within 60 s")
        assert shot.exists(), "chromium wrote no screenshot"
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1200, 900)
        assert len(data) > 20_000, "a blank page compresses to almost nothing"
        if os.environ.get("SPAWNING_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["SPAWNING_KEEP_SCREENSHOT"])


def test_status_command_prints_a_table(served: StatusServer) -> None:
    pids = served.proc.workers()
    served.wait_doc(lambda d: len(d["workers"]) == 2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "spawning", "status", "--status-port", str(served.status_port)],
                         capture_output=True, text=True, timeout=30, env=env, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PID"))
    rows = lines[header + 2:]
    assert sorted(int(r.split()[0]) for r in rows) == sorted(pids)
    assert all(r.split()[1] == "1" and r.split()[2] == "ready" for r in rows)
    assert f"pid {served.proc.pid}" in out.stdout

    as_json = subprocess.run([sys.executable, "-m", "spawning", "status", "--status-port",
                              str(served.status_port), "--json"], capture_output=True, text=True,
                             timeout=30, env=env, check=False)
    assert json.loads(as_json.stdout)["server"]["pid"] == served.proc.pid

    nobody = subprocess.run([sys.executable, "-m", "spawning", "status", "--status-port", str(free_port())],
                            capture_output=True, text=True, timeout=30, env=env, check=False)
    assert nobody.returncode == 1 and "cannot read the status service" in nobody.stderr


def test_small_http_server_behaves(served: StatusServer) -> None:
    # A client that connects and says nothing must not hold up the controller or other clients.
    with socket.create_connection(("127.0.0.1", served.status_port)) as idle:
        assert served.get("/status.json")[0] == 200
        assert served.proc.get("/")[0] == 200
        code, _, body = served.get("/nope")
        assert code == 404
        code, headers, _ = http_request(served.status_port, "/metrics", method="HEAD")
        assert code == 200 and int(headers["content-length"]) > 100
        code, headers, _ = http_request(served.status_port, "/status.json", method="POST", body=b"x")
        assert code == 405 and headers["allow"] == "GET, HEAD"
        code, _, _ = http_request(served.status_port, "/", headers={"X-Big": "a" * 20000})
        assert code == 431
        code, _, body = served.get("/_coverage/")
        assert code == 404 and b"--coverage" in body
        idle.sendall(b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(5)
        data = b""
        while chunk := idle.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in data


def test_reload_bumps_the_generation_and_keeps_counting(spawn: Any) -> None:
    status_port = free_port()
    server = StatusServer(spawn("hello.application", "-s", "2", "--status-port", str(status_port)),
                          status_port)
    first = server.wait_doc(lambda d: len(d["workers"]) == 2)
    old_pids = {w["pid"] for w in first["workers"]}
    for _ in range(20):
        server.proc.get("/")
    counted = server.wait_doc(lambda d: d["totals"]["requests"] >= 20)["totals"]["requests"]

    server.proc.signal(signal.SIGHUP)
    server.proc.wait_notify("READY=1", timeout=15)
    doc = server.wait_doc(lambda d: d["server"]["generation"] == 2 and len(d["workers"]) == 2 and
                          all(w["generation"] == 2 and w["state"] == "ready" for w in d["workers"]))
    validate(doc)
    assert {w["pid"] for w in doc["workers"]}.isdisjoint(old_pids)
    assert doc["server"]["reloads"] == 1 and doc["server"]["last_reload_reason"] == "SIGHUP"
    assert doc["restarts"].get("reload") == 2
    assert all("SIGHUP" in w["start_reason"] for w in doc["workers"])
    # The old workers' requests still count once they are gone: counters never go down.
    assert doc["totals"]["requests"] >= counted

    text = server.get("/metrics")[2].decode()
    assert "spawning_generation 2" in text and "spawning_reloads_total 1" in text
    assert 'spawning_worker_restarts_total{reason="reload"} 2' in text
    page = server.get("/")[2].decode()
    assert all(f">{w['pid']}<" in page for w in doc["workers"])


def test_status_port_equal_to_app_port_is_refused(spawn: Any) -> None:
    port = free_port()
    server = spawn("hello.application", "-s", "1", "--status-port", str(port), port=port)
    assert "is the application's port" in server.stderr
    assert server.get("/")[0] == 200


def test_coverage_report_names_the_app_module(spawn: Any, tmp_path: Path) -> None:
    pytest.importorskip("coverage")
    status_port = free_port()
    # The data files land in the working directory, as coverage.py's parallel mode has them.
    server = StatusServer(spawn("covered.application", "-s", "2", "-c", "--status-port", str(status_port),
                                cwd=tmp_path), status_port)
    for _ in range(6):
        assert server.proc.get("/hit")[2] == b"branch_that_runs\n"

    code, headers, _ = server.get("/_coverage")
    assert code == 301 and headers["location"] == "/_coverage/"
    code, headers, index = server.get("/_coverage/")
    assert code == 200, index
    page = index.decode()
    assert "covered.py" in page
    link = next(part.split('"')[0] for part in page.split('href="')[1:] if "covered_py" in part)
    code, _, source = server.get(f"/_coverage/{link}")
    assert code == 200
    text = source.decode()
    # The report shows the module's lines, telling those that ran from those that never did.
    assert "branch_that_runs" in text and "only_in_the_report_as_missed" in text
    run_line = next(line for line in text.splitlines() if "branch_that_runs" in line)
    missed_line = next(line for line in text.splitlines() if "only_in_the_report_as_missed" in line)
    assert run_line.lstrip().startswith('<p class="run"'), run_line
    assert missed_line.lstrip().startswith('<p class="mis'), missed_line
    assert server.get("/_coverage/../../etc/passwd")[0] == 404

    # The app port serves it too, as the original spawning did.
    code, _, index = server.proc.get("/_coverage/")
    assert code == 200 and "covered.py" in index.decode()

    server.proc.signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    assert len(list(tmp_path.glob(f".coverage.spawning{server.proc.pid}.*"))) == 2
