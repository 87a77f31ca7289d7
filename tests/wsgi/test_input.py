"""wsgi.input (spawning/wsgi/input.py): Content-Length and chunked bodies read as a file is, 100
Continue, bodies over the limit, and a 100 MiB upload in bounded memory, through real sockets."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pytest
from conftest import http_get, raw_exchange, rss_bound, workers_rss


def test_chunked_request_body(core_server):
    req = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\n")
    resp = raw_exchange(core_server.port, req)
    assert resp.startswith(b"HTTP/1.1 200")
    assert resp.endswith(b"\r\n\r\nhello world!")


def test_chunked_request_byte_by_byte(core_server):
    req = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"a\r\n0123456789\r\n0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=5) as s:
        for b in req:
            s.send(bytes([b]))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.endswith(b"0123456789")


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_read_n_returns_n_bytes_unless_the_body_ends(core_server, framing):
    """wsgi.input.read(n) is a file's read: apps read(int(CONTENT_LENGTH)) once and take the
    result as the body, so it may come back short only at the body's end, however the body
    arrives (here in pieces, some after the app started reading)."""
    body = bytes(range(256)) * 800   # 204,800 bytes: more than one buffer and one read
    if framing == "length":
        head = b"Content-Length: %d\r\n" % len(body)
        wire = body
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        wire = b"".join(b"%x\r\n" % len(body[i:i + 7000]) + body[i:i + 7000] + b"\r\n"
                        for i in range(0, len(body), 7000)) + b"0\r\n\r\n"
    for n, want in ((len(body), f"{len(body)} 0"), (len(body) + 10, f"{len(body)} 0"),
                    (100_000, f"100000 {len(body) - 100_000}")):
        with socket.create_connection(("127.0.0.1", core_server.port), timeout=10) as s:
            s.sendall(b"POST /readn?rest&n=%d HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n"
                      % (n, head) + wire[:1000])
            time.sleep(0.05)
            for i in range(1000, len(wire), 50_000):
                s.sendall(wire[i:i + 50_000])
                time.sleep(0.01)
            resp = b""
            while chunk := s.recv(65536):
                resp += chunk
        assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
        assert resp.partition(b"\r\n\r\n")[2].decode() == want, (n, resp[-100:])


def test_unread_chunked_body_is_never_the_next_request(core_server):
    """Smuggling: the app reads 2 bytes of a chunked body whose data holds a request, and the
    decoder has already seen the last chunk. What the app left is body: dropped, not parsed as
    the next request on the connection (RFC 9112 7.1)."""
    inner = b"GET /c-bad-unread-smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = b"XX" + inner
    req = (b"POST /readn?n=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=5) as s:
        s.sendall(req + b"GET /after-unread HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        resp = b""
        while chunk := s.recv(65536):
            resp += chunk
    assert resp.count(b"HTTP/1.1 ") == 2, resp
    assert b"\r\n\r\n2 -1HTTP/1.1 200" in resp, resp
    assert resp.endswith(b"hello /after-unread\n"), resp
    r, seen = http_get(core_server.port, "/seen")
    assert "/c-bad-unread-smuggled" not in json.loads(seen)


def test_readline_readlines_iteration(core_server):
    _, data = http_get(core_server.port, "/v/lines", method="POST", body=b"first\nabcdef\nx\ny")
    assert json.loads(data) == {"first": "first\n", "limited": "abc", "rest": ["def\n", "x\n", "y"]}
    req = (b"POST /v/iter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"3\r\na\nb\r\n3\r\n\nc\n\r\n0\r\n\r\n")
    resp = raw_exchange(core_server.port, req)
    assert json.loads(resp.split(b"\r\n\r\n", 1)[1]) == ["a\n", "b\n", "c\n"]


def test_expect_100_continue(core_server):
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                  b"Connection: close\r\n\r\n")
        interim = s.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello")


def test_no_100_continue_after_the_response_started(core_server):
    """An app that reads its body after starting the response: no interim 100 inside the body
    (RFC 9110 10.1.1); the client that waits for 100 gets the final response instead."""
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=5) as s:
        s.sendall(b"POST /late-read HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\nConnection: close\r\n\r\n")
        head = b""
        while b"0123456789" not in head:
            chunk = s.recv(65536)
            assert chunk, head
            head += chunk
        s.sendall(b"hello")
        resp = head
        while chunk := s.recv(65536):
            resp += chunk
    assert b"100 Continue" not in resp, resp
    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"\r\n\r\n01234567890000000005"), resp


def test_body_over_max_body_size_is_413(spawn):
    srv = spawn("-s", "1", "--max-body-size", "1000", "core_app.application")
    resp = raw_exchange(srv.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
                        + b"x" * 5000)
    assert resp.startswith(b"HTTP/1.1 413 ")
    req = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n")
    resp = raw_exchange(srv.port, req)
    assert resp.startswith(b"HTTP/1.1 413 ")


@rss_bound
def test_100mb_upload_streams_with_bounded_memory(core_server):
    size = 100 * (1 << 20)
    piece = os.urandom(1 << 20)
    h = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", core_server.port), timeout=30) as s:
        s.sendall(f"POST /v/hash HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                  "Connection: close\r\n\r\n".encode())
        peak = 0
        for i in range(100):
            s.sendall(piece)
            h.update(piece)
            if i % 20 == 0:
                peak = max(peak, workers_rss(core_server))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.split(b"\r\n\r\n", 1)[1] == f"{size} {h.hexdigest()}".encode()
    assert peak < 120 * (1 << 20), f"worker RSS {peak / 2**20:.0f} MiB while receiving 100 MiB"
