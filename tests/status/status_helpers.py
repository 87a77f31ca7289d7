"""A running server with its status port, for the tests of spawning.status (tests/status/)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, SpawningProcess, free_port, http_request, start_server, wait_until

SCHEMA = ROOT / "docs" / "status.schema.json"


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
        seen: list[dict[str, Any]] = []

        def matches() -> bool:
            seen[:] = [self.doc()]
            return bool(predicate(seen[0]))

        try:
            wait_until(matches, timeout, interval=0.1, what="a status document that matches")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {json.dumps(seen[-1], indent=1)[:3000]}") from None
        return seen[0]


def start_status_server(*args: str, **kw: Any) -> StatusServer:
    status_port = free_port()
    proc = start_server("--status-port", str(status_port), *args, **kw)
    return StatusServer(proc, status_port)


def serve_hello() -> Iterator[StatusServer]:
    """A 2-process server with its status page on, for a module's read-only tests (its
    ``served`` fixture)."""
    server = start_status_server("hello.application", "-s", "2")
    try:
        yield server
    finally:
        server.proc.stop()
        shutil.rmtree(server.proc.workdir, ignore_errors=True)


def validate(doc: dict[str, Any]) -> None:
    """Checks the document against its published schema (docs/status.schema.json)."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
