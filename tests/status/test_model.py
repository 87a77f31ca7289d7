"""The status document (spawning/status/model.py): duration buckets and quantiles, and the document a
real server's status port serves, its counters never going down across a reload."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import free_port
from status_helpers import StatusServer, serve_hello, validate

from spawning.status import model
from spawning.status.page import fmt_q


@pytest.fixture(scope="module")
def served() -> Iterator[StatusServer]:
    """A 2-process server with its status page on, shared by this module's read-only tests."""
    yield from serve_hello()


def test_duration_buckets_are_the_cores() -> None:
    from spawning.server import DURATION_BOUNDS

    assert model.DURATION_BOUNDS == DURATION_BOUNDS


def test_quantile_estimates() -> None:
    counts = [0] * model.NBUCKETS
    assert model.quantile(counts, 0.5) is None
    i = model.DURATION_BOUNDS.index(0.01)
    counts[i] = 10  # ten requests between 5 ms and 10 ms
    assert 0.005 < model.quantile(counts, 0.5) <= 0.01  # type: ignore[operator]
    counts[-1] = 1000  # the open bucket answers the largest bound
    assert model.quantile(counts, 0.99) == model.DURATION_BOUNDS[-1]


def test_quantile_in_the_first_bucket_is_a_bound() -> None:
    """A quantile that falls in the first bucket is only known to be under its bound: the value
    is that bound and the quantile is named in ``below``, not a figure interpolated from zero."""
    counts = [0] * model.NBUCKETS
    counts[0] = 98
    counts[model.DURATION_BOUNDS.index(0.001)] = 2
    d = model._duration(counts, 0.0001)
    assert d["p50"] == d["p90"] == model.DURATION_BOUNDS[0] and d["below"] == ["p50", "p90"]
    assert 0.0005 < d["p99"] <= 0.001
    assert fmt_q(d, "p50") == "< 5 µs" and fmt_q(d, "p99").endswith(" µs")
    assert not fmt_q(d, "p99").startswith("<")


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
