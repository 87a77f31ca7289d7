"""The response (spawning/wsgi/response.py): start_response and the head C is given, the write()
callable, iterables streamed and closed, sendfile, and what an app's bad status, headers or body
get, through real sockets against a real server (tests/apps/core_app.py and others)."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import time
from pathlib import Path

import pytest
from conftest import (
    http_get,
    raw_exchange,
    read_head,
    rss_bound,
    run_clients,
    start_server,
    wait_until,
    workers_rss,
)


def test_write_callable(core_server):
    _, data = http_get(core_server.port, "/v/write")
    assert data == b"written directly then returned\n"


def test_write_callable_kept_past_its_request_reaches_nobody(core_server):
    """A write() an app keeps after its request ended (a PEP 3333 violation) raises when called
    later, even on the same keep-alive connection, whose next request must not receive it."""
    conn = http.client.HTTPConnection("127.0.0.1", core_server.port, timeout=10)
    try:
        r, data = http_get(core_server.port, "/stash", conn=conn)
        assert (r.status, data) == (200, b"stashed")
        for _ in range(3):
            r, data = http_get(core_server.port, "/stale", conn=conn)
            assert r.status == 200
            assert data == b"ClientDisconnected"
    finally:
        conn.close()


@pytest.mark.parametrize("threads", ["1", "4", "0"])
def test_kept_callables_never_reach_another_request(threads: str):
    """Response objects are reused once nothing holds them (spawning/wsgi/response.py): a write() or
    start_response an app keeps, even through a weak reference, must keep its response object
    out of reuse, so that using it later fails instead of writing into another request."""
    srv = start_server("-s", "1", "-t", threads, "recycle_app.application")
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            f = s.makefile("rb")

            def get(path: str) -> bytes:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = read_head(f)
                assert b"X-Leak" not in head, head
                return f.read(int(re.search(rb"Content-Length: (\d+)", head).group(1)))

            for keep in ("/keep-weak", "/keep-strong", "/keep-sr-weak"):
                assert get(keep) == b"kept"
                for i in range(5):      # requests that may get a reused response object
                    assert get(f"/plain{i}") == f"/plain{i}".encode()
            used = get("/use").decode().split()
            assert get("/after") == b"/after"
            # A reused response object starts as a new one: nothing said so far about what was
            # sent, which the quiet HEAD write() looks at.
            s.sendall(b"HEAD /write HTTP/1.1\r\nHost: x\r\n\r\n")
            head = read_head(f)
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length" not in head, head
            assert get("/after-head") == b"/after-head"
    finally:
        srv.stop()
    # Weakly kept: their response objects were freed, never reused. Strongly kept: alive, and
    # refusing to write into a request that is over.
    assert used[0] == "gone" and used[2] == "gone", used
    assert used[1] != "wrote", used
    assert "Traceback" not in srv.stderr or "LEAK" not in srv.stderr


def test_write_callable_on_head_is_quiet(core_server):
    """HEAD: what the app passes to write() is dropped, not an error, and the connection stays
    usable for the next request."""
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=5) as s:
        s.sendall(b"HEAD /write HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /after-head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        resp = b""
        while chunk := s.recv(65536):
            resp += chunk
    assert resp.startswith(b"HTTP/1.1 200"), resp
    assert b"written" not in resp and resp.endswith(b"hello /after-head\n"), resp


def test_response_headers_are_the_apps_current_ones(core_server):
    """Equal response heads are packed once and reused: an app that changes its header list in
    place between requests must still be answered with what the list holds now."""
    conn = http.client.HTTPConnection("127.0.0.1", core_server.port, timeout=10)
    try:
        counts = []
        for query in ("", "", "list-items", ""):
            r, data = http_get(core_server.port, "/counter?" + query, conn=conn)
            assert r.status == 200 and data == b"counted"
            counts.append(int(r.getheader("X-Count")))
        assert counts == list(range(counts[0], counts[0] + 4))
    finally:
        conn.close()


def test_registered_heads_under_contention():
    """Every response a new head, from 32 threads: C keeps only the 16 latest heads, so a
    thread's head is often pushed out before its answer (-ENOENT, registered again). No
    response may go out with another request's head."""
    srv = start_server("-s", "1", "-t", "32", "core_app.application")
    bad: list = []
    count = [0]

    def client() -> None:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            f = s.makefile("rb")
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                s.sendall(b"GET /unique HTTP/1.1\r\nHost: x\r\n\r\n")
                head = read_head(f)
                n = re.search(rb"X-N: (\d+)", head)
                body = f.read(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
                if not n or n.group(1) != body:
                    bad.append((head, body))
                count[0] += 1

    run_clients(srv, client, [()] * 48, 20)
    assert count[0] > 1000 and not bad, (count[0], bad[:2])
    assert "Traceback" not in srv.stderr, srv.stderr[-2000:]


def test_nul_in_a_response_header_is_refused(core_server):
    """C splits names from values at NUL: one inside a value must not start a header of the
    client's choosing (here through an app that puts a decoded %00 into Location)."""
    resp = raw_exchange(core_server.port, b"GET /redirect?/next%00Set-Cookie%00session=x HTTP/1.1\r\nHost: x\r\n"
                        b"Connection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 500"), resp
    assert b"Set-Cookie" not in resp and b"session=x" not in resp
    resp = raw_exchange(core_server.port, b"GET /redirect?/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 302") and b"\r\nLocation: /next\r\n" in resp, resp


@pytest.mark.parametrize("variant", ["", "triple", "bytes"])
def test_header_injection_refused(core_server, variant):
    r, data = http_get(core_server.port, "/bad-header?" + variant)
    assert r.status == 500
    assert r.getheader("Set-Cookie") is None and b"should not be sent" not in data


@pytest.mark.parametrize("status,expect", [("103 Early Hints", b"HTTP/1.1 500"),
                                           ("100 Continue", b"HTTP/1.1 500"),
                                           ("999 Weird", b"HTTP/1.1 500"),
                                           ("200", b"HTTP/1.1 200 \r\n")])
def test_app_status_must_be_a_final_one(core_server, status, expect):
    """A 1xx from the app would leave the client waiting for the real answer (or take the next
    one for it); codes past 599 are no status; "200" alone still gets its SP (RFC 9112 4)."""
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=5) as s:
        s.sendall(b"GET /rawstatus?" + status.replace(" ", "%20").encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /after-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        resp = b""
        while chunk := s.recv(65536):
            resp += chunk
    assert resp.startswith(expect), resp
    assert resp.count(b"HTTP/1.1 ") == 2 and resp.endswith(b"hello /after-status\n"), resp


def test_non_bytes_body_is_a_clean_500(core_server):
    """The body's type is checked before the head goes, so a str body gets a plain 500."""
    resp = raw_exchange(core_server.port, b"GET /strbody HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 500"), resp
    assert b"not bytes" not in resp


def test_chunked_response(core_server):
    r, data = http_get(core_server.port, "/v/stream")
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert data == b"".join(f"chunk {i}\n".encode() for i in range(5))


def test_head_and_bodiless_statuses(core_server):
    r, data = http_get(core_server.port, "/v/env", method="HEAD")
    assert r.status == 200 and data == b""
    resp = raw_exchange(core_server.port, b"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert body == b"" and b"Content-Length: 13" in head
    for code in (204, 304):
        resp = raw_exchange(core_server.port,
                            f"GET /status/{code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code}".encode()) and body == b""
        assert b"Transfer-Encoding" not in head


def test_no_content_length_on_204(core_server):
    """RFC 9110 8.6: never a Content-Length on a 204, even the app's own; a 304 keeps the app's
    (it tells the selected representation's length). The connection stays usable."""
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=10) as s:
        f = s.makefile("rb")
        for target, method in (("/status/204?cl", "GET"), ("/status/204?cl", "HEAD"),
                               ("/status/204", "HEAD")):
            s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = read_head(f)
            assert head.startswith(b"HTTP/1.1 204") and b"content-length" not in head.lower(), head
        s.sendall(b"GET /status/304?cl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = read_head(f)
        assert head.startswith(b"HTTP/1.1 304") and b"Content-Length: 26" in head, head
        assert f.read() == b""      # no body after either, and the server closed as asked


def test_iteration_stops_at_content_length(core_server):
    """PEP 3333: the server stops iterating once Content-Length bytes are sent (an endless body
    used to keep a thread spinning after the client left), and still calls close()."""
    before = json.loads(http_get(core_server.port, "/endless-count")[1])
    resp = raw_exchange(core_server.port, b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"\r\n\r\nxxxxx"), resp
    after = json.loads(http_get(core_server.port, "/endless-count")[1])
    assert after["iterations"] - before["iterations"] <= 3, (before, after)
    assert after["closed"] == before["closed"] + 1


def test_close_is_always_called(core_server, tmp_path: Path):
    marker = tmp_path / "closed"
    _, data = http_get(core_server.port, f"/v/close?marker={marker}")
    assert data == b"closing body\n"
    wait_until(marker.exists, 3, interval=0.02, what="the iterable's close() marker")
    assert marker.read_text() == "closed"


def test_file_wrapper_uses_sendfile(core_server):
    expected = hashlib.sha256(b"seed").digest() * (5_000_000 // 32)
    r, data = http_get(core_server.port, "/file?size=5000000")
    assert r.status == 200 and data == expected
    assert r.getheader("Content-Length") == "5000000"   # set from the file's size: sendfile path
    r, data = http_get(core_server.port, "/v/file?size=5000000")  # validator hides the wrapper: iterated
    assert r.status == 200 and data == expected
    r, data = http_get(core_server.port, "/file?sub=1&size=5000000")   # a subclass: sendfile too
    assert r.status == 200 and data == expected
    assert r.getheader("Content-Length") == "5000000"


def test_error_after_headers_cuts_the_connection(core_server):
    resp = raw_exchange(core_server.port, b"GET /error-after-start HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 200")
    assert b"first part" in resp
    assert not resp.endswith(b"0\r\n\r\n")   # no terminal chunk: the client sees a truncated body


@rss_bound
def test_100mb_download_streams_with_bounded_memory(core_server):
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=30) as s:
        s.sendall(b"GET /big?mb=100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        total = 0
        peak = 0
        time.sleep(0.5)   # a slow reader at first: backpressure must hold the app back
        peak = workers_rss(core_server)
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := s.recv_into(view):
            total += n
    # chunk framing adds a few bytes per MiB
    assert 100 * (1 << 20) < total < 100 * (1 << 20) + 10_000
    assert peak < 120 * (1 << 20), f"worker RSS {peak / 2**20:.0f} MiB while sending 100 MiB"


def test_slow_reader_gets_everything(core_server):
    r = None
    conn = http.client.HTTPConnection("127.0.0.1", core_server.port, timeout=20)
    conn.request("GET", "/big?mb=8")
    r = conn.getresponse()
    got = 0
    while True:
        piece = r.read(256 * 1024)
        if not piece:
            break
        got += len(piece)
        time.sleep(0.01)
    conn.close()
    assert got == 8 * (1 << 20)
