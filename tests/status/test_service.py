"""The status service's own HTTP server (spawning/status/service.py): methods, limits, an idle client,
the hook that refuses the application's port, and the coverage report it serves."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, http_request
from status_helpers import StatusServer, serve_hello


@pytest.fixture(scope="module")
def served() -> Iterator[StatusServer]:
    """A 2-process server with its status page on, shared by this module's read-only tests."""
    yield from serve_hello()


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
