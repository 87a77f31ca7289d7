"""The status page (spawning/status/page.py): what it shows of a real server, rendered by a real
browser where one is installed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import foreign_env
from status_helpers import StatusServer, serve_hello, validate

from spawning.status import model
from spawning.status.command import render_table
from spawning.status.page import fmt_q, render_html

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def served() -> Iterator[StatusServer]:
    """A 2-process server with its status page on, shared by this module's read-only tests."""
    yield from serve_hello()


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
    assert bounds[0] <= 0.00001 and 0.0001 in bounds and len(bounds) == model.NBUCKETS - 1
    d = doc["totals"]["duration"]
    fast = sum(c for c, b in zip(d["counts"], bounds) if b < 0.0001)
    assert fast >= d["count"] // 2, d     # hand-off to finish of a hello request: well under 100 us
    assert d["p50"] < 0.0001 and (d["p50"], d["p99"]) != (0.00005, 0.000099), d
    code, _, body = served.get("/")
    page = body.decode()
    for name in ("p50", "p99"):
        shown = fmt_q(d, name)
        if name in d["below"]:
            assert d[name] == bounds[0] and shown == "< 5 µs", d
        else:
            assert bounds[0] < d[name] and not shown.startswith("<"), d
    # The page renders the "< bound" form escaped; a document whose quantiles all fell in the
    # first bucket shows it on the latency card and under the histogram.
    assert "&lt; 5 µs" in page or not d["below"]
    counts = [d["count"]] + [0] * (len(d["counts"]) - 1)
    doc["totals"]["duration"] = model._duration(counts, d["sum"])
    html = render_html(doc)
    assert html.count("&lt; 5 µs") >= 4 and "< 5 µs" not in html     # card, p50, p90, p99
    assert "p50 < 5 µs" in render_table(doc)


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
