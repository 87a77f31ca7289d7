"""Flask and Pyramid, for real, in thread and green mode: the answers these frameworks make
(werkzeug's redirects, streamed generators, each piece sent as it is made, send_file by sendfile
or from a BytesIO, the empty iterables behind HEAD, 204 and 304; WebOb's Response and HTTPFound)
each arrive, framed right, over one keep-alive connection, as a browser would fetch them. Django
is in tests/test_django.py.

Every client waits 5 s at most: a response the server never sends (as an empty body was never
flushed before 6a781ed) fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse

import pytest
from conftest import Browser

# (arguments, environment): thread, green and one-thread mode, and thread mode on the Python path alone
# (SPAWNING_NO_PYFAST=1: spawning/wsgi/ answers what csrc/py/runner.c would).
MODES = {"threads": (("-s", "2", "-t", "4"), {}), "green": (("-s", "1", "-t", "0"), {}),
         "one-thread": (("-s", "1", "-t", "1"), {}),   # corks with the flusher (csrc/loop/flusher.c)
         "threads-no-pyfast": (("-s", "1", "-t", "4"), {"SPAWNING_NO_PYFAST": "1"})}


@pytest.fixture(params=list(MODES.values()), ids=list(MODES))
def mode(request) -> tuple[tuple[str, ...], dict[str, str]]:
    return request.param


def no_body_framing(resp) -> None:
    """204, 304 and HEAD answers carry no body and no Transfer-Encoding (RFC 9112 section 6.3)."""
    assert resp.getheader("Transfer-Encoding") is None, resp.getheaders()


def raw_chunks(port: int, path: str) -> list[bytes]:
    """GETs ``path`` on a fresh connection (closed after it) and returns the chunks of its chunked
    body as they were on the wire."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"\r\ntransfer-encoding: chunked" in head.lower(), head
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert rest == b"\r\n", rest    # no trailers, nothing after the last chunk
            return chunks
        chunks.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]


# What tests/apps/flask_app.py streams, one piece per yield.
STREAM_CHUNKS = [f"chunk {i}: ".encode() + b"x" * (100 * i) + b"\n" for i in range(6)]


def test_flask(spawn, mode, tmp_path):
    pytest.importorskip("flask")
    data = os.urandom(300 * 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    args, env = mode
    server = spawn(*args, "flask_app.application", env={**env, "SPAWNING_TEST_FILE": str(path)})
    browser = Browser(server.port)

    resp, body = browser.request("GET", "/redirect")
    assert resp.status == 302 and resp.getheader("Location") == "/", resp.getheaders()
    resp, body = browser.follow(resp)
    assert (resp.status, body) == (200, b"flask index\n")
    resp, body = browser.request("GET", "/bare-redirect")
    assert (resp.status, resp.getheader("Content-Length"), body) == (302, "0", b"")

    # A generator: the length is unknown, so HTTP/1.1 chunks it, one chunk a piece.
    resp, body = browser.request("GET", "/stream")
    assert resp.status == 200 and resp.getheader("Content-Length") is None
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert body == b"".join(STREAM_CHUNKS)
    assert raw_chunks(server.port, "/stream") == STREAM_CHUNKS
    # Each piece leaves when the app yields it, not when the response ends.
    flag = tmp_path / "flag"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        query = urllib.parse.urlencode({"flag": str(flag)})
        s.sendall(f"GET /stream-until?{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        wire = b""
        while b"first piece\n" not in wire:
            chunk = s.recv(65536)
            assert chunk, wire
            wire += chunk
        assert b"second piece" not in wire
        flag.touch()
        while chunk := s.recv(65536):
            wire += chunk
    assert wire.endswith(b"second piece\n\r\n0\r\n\r\n"), wire

    # send_file of a real file goes out by sendfile: werkzeug hands wsgi.file_wrapper's object back.
    resp, body = browser.request("GET", "/file")
    assert resp.status == 200 and body == data
    assert resp.getheader("Content-Length") == str(len(data))
    etag = resp.getheader("ETag")
    assert etag
    resp, body = browser.request("GET", "/seen")
    assert json.loads(body)["/file"] == "FileWrapper"

    resp, body = browser.request("HEAD", "/file")
    assert (resp.status, resp.getheader("Content-Length"), body) == (200, str(len(data)), b"")
    no_body_framing(resp)

    resp, body = browser.request("GET", "/file", headers={"If-None-Match": etag})
    assert (resp.status, body) == (304, b"")
    assert resp.getheader("ETag") == etag
    no_body_framing(resp)

    # A BytesIO has no file descriptor: the server iterates the same wrapper instead.
    resp, body = browser.request("GET", "/bytesio")
    assert resp.status == 200 and body == bytes(range(256)) * 300
    assert "data.bin" in resp.getheader("Content-Disposition", "")

    resp, body = browser.request("GET", "/nothing")
    assert (resp.status, body) == (204, b"")
    no_body_framing(resp)

    # After all of that the connection is still in step.
    resp, body = browser.request("GET", "/")
    assert (resp.status, body) == (200, b"flask index\n")
    assert browser.connections == 1
    browser.close()


def test_pyramid(spawn, mode):
    pytest.importorskip("pyramid")
    args, env = mode
    server = spawn(*args, "pyramid_app.application", env=env)
    browser = Browser(server.port)

    resp, body = browser.request("GET", "/")
    assert (resp.status, body) == (200, b"pyramid home\n")
    assert resp.getheader("Content-Type").startswith("text/plain")
    resp, body = browser.request("GET", "/hello/spawning")
    assert resp.status == 200 and json.loads(body) == {"hello": "spawning"}

    resp, body = browser.request("GET", "/go")
    assert resp.status == 302
    assert resp.getheader("Location") == f"http://127.0.0.1:{server.port}/"
    resp, body = browser.follow(resp)
    assert (resp.status, body) == (200, b"pyramid home\n")

    resp, body = browser.request("GET", "/no/such/page")
    assert resp.status == 404 and b"Not Found" in body

    # WebOb answers HEAD with the GET's headers and an iterable that yields nothing.
    resp, body = browser.request("HEAD", "/")
    assert (resp.status, resp.getheader("Content-Length"), body) == (200, "13", b"")
    no_body_framing(resp)
    resp, body = browser.request("HEAD", "/no/such/page")
    assert (resp.status, body) == (404, b"")
    no_body_framing(resp)

    resp, body = browser.request("GET", "/hello/again")
    assert json.loads(body) == {"hello": "again"}
    assert browser.connections == 1
    browser.close()
