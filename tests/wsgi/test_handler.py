"""The request handler (spawning/wsgi/handler.py): an app's errors answered 500 with serving going on,
and requests the C path hands over at every stage coming out as the Python path alone would
answer them, access log included."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
from conftest import http_get, start_server


def test_app_exception_is_500_without_traceback(core_server):
    r, data = http_get(core_server.port, "/error")
    assert r.status == 500
    assert b"secret-traceback-marker" not in data and b"Traceback" not in data
    assert "secret-traceback-marker" in core_server.stderr   # logged for the operator
    r, data = http_get(core_server.port, "/")
    assert r.status == 200


def test_app_base_exception_is_500_and_serving_goes_on(core_server):
    r, data = http_get(core_server.port, "/exit")
    assert r.status == 500 and b"exit-marker" not in data
    for _ in range(8):      # more requests than threads: none of them was lost to it
        assert http_get(core_server.port, "/")[0].status == 200


@pytest.mark.parametrize("threads", ["1", "4", "0"])
@pytest.mark.parametrize("req_body", [b"", b"hello"])
def test_repeated_requests_every_way(threads: str, req_body: bytes, tmp_path: Path):
    """A keep-alive client's repeated requests, with a body or without, run in C (csrc/py/
    runner.c) while their answer is the common one; every other answer (an app error, an
    iterable, a new head, start_response with exc_info, a write() before the return, a kept
    write()) goes on in Python from just after the app call, and must come out as it would from
    Python alone, access log included."""
    log_path = tmp_path / "access.log"
    srv = start_server("-s", "1", "-t", threads, "repeat_app.application", access_log=str(log_path))
    rounds = 4
    got = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        for n in range(rounds * 9):
            conn.request("POST" if req_body else "GET", "/same", body=req_body or None)  # the same each time
            r = conn.getresponse()
            got.append((r.status, r.getheader("X-N"), r.read()))
        conn.close()
    finally:
        srv.stop()
    statuses = []
    for n, (status, xn, body) in enumerate(got):
        way, digits = n % 9, b"%06d" % n + req_body
        want = {1: (500, None, b"Internal Server Error\n"), 2: (200, None, b"gen" + digits),
                3: (200, str(n), digits), 6: (503, None, digits)}.get(way, (200, None, digits))
        assert (status, xn, body) == want, (n, status, xn, body)
        statuses.append(str(status))
    assert srv.stderr.count("ValueError: boom") == rounds, srv.stderr[-3000:]
    assert "in application" in srv.stderr     # the app's frame is in the traceback
    lines = log_path.read_text().splitlines()
    assert [line.split('"')[2].split()[0] for line in lines] == statuses, lines[:12]
