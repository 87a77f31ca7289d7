"""``/metrics`` (spawning/status/prometheus.py), parsed by the Prometheus client library."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from status_helpers import StatusServer, serve_hello

from spawning.status import model


@pytest.fixture(scope="module")
def served() -> Iterator[StatusServer]:
    """A 2-process server with its status page on, shared by this module's read-only tests."""
    yield from serve_hello()


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
    assert len(buckets) == model.NBUCKETS and float(buckets[0].labels["le"]) == 0.000005
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
