"""Every request limit, at its boundary, through the command-line options, against a real server:
the request exactly at a limit is served, one byte (or field) over it gets the documented status
and a closed connection, and the app never sees it.

Limits (spawning/config/options.py, enforced in csrc/): --limit-request-line (414), --limit-request-field-size
(431), --limit-request-fields (431), --max-head-size (431), --max-body-size (413, checked against
Content-Length before any body byte is read, and while decoding a chunked body), the chunk-extension
limit (SP_DEFAULT_MAX_CHUNK_EXT, 4 KiB: 400) and pipelining (bounded by construction: see
test_pipelined_flood_is_bounded).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import psutil
import pytest
from conftest import rss_bound, start_server
from hostile import exchange, raise_nofile, responses, status_of

LINE = 100      # --limit-request-line
FIELD = 60      # --limit-request-field-size
FIELDS = 8      # --limit-request-fields
HEAD = 450      # --max-head-size
BODY = 1000     # --max-body-size


@pytest.fixture(scope="module")
def server():
    raise_nofile()
    proc = start_server("-s", "1", "-t", "4", "--limit-request-line", str(LINE),
                        "--limit-request-field-size", str(FIELD), "--limit-request-fields", str(FIELDS),
                        "--max-head-size", str(HEAD), "--max-body-size", str(BODY),
                        "--header-timeout", "2", "--send-timeout", "2", "core_app.application")
    yield proc
    proc.stop()


def request_line(length: int, tag: str) -> bytes:
    """'GET /tag-aaa... HTTP/1.1' exactly ``length`` bytes long (without CRLF)."""
    base = f"GET /{tag}- HTTP/1.1"
    path = f"/{tag}-" + "a" * (length - len(base))
    line = f"GET {path} HTTP/1.1".encode()
    assert len(line) == length
    return line


def check(server, data: bytes, status: int) -> bytes:
    # A client that is done sending says so (EOF), so a keep-alive answer ends with a close too.
    resp = exchange(server.port, data, timeout=5, shut_wr=status < 400)
    assert status_of(resp) == status, resp[:300]
    if status >= 400:
        assert b"\r\nConnection: close\r\n" in resp.split(b"\r\n\r\n")[0] + b"\r\n"
    return resp


def test_request_line_at_and_over_the_limit(server):
    check(server, request_line(LINE, "rl-ok") + b"\r\nHost: x\r\n\r\n", 200)
    check(server, request_line(LINE + 1, "rl-over") + b"\r\nHost: x\r\n\r\n", 414)


def test_request_line_over_the_limit_is_refused_before_it_ends(server):
    """414 as soon as the line is too long, without waiting for its end (or the timeout)."""
    t0 = time.monotonic()
    check(server, request_line(LINE + 50, "rl-open"), 414)
    assert time.monotonic() - t0 < 1.5


def test_header_field_at_and_over_the_limit(server):
    name = b"X-F: "
    ok = name + b"v" * (FIELD - len(name))
    check(server, b"GET /f-ok HTTP/1.1\r\nHost: x\r\n" + ok + b"\r\n\r\n", 200)
    check(server, b"GET /f-over HTTP/1.1\r\nHost: x\r\n" + ok + b"v\r\n\r\n", 431)


def test_header_field_over_the_limit_is_refused_before_it_ends(server):
    t0 = time.monotonic()
    check(server, b"GET /f-open HTTP/1.1\r\nHost: x\r\nX-Open: " + b"v" * (FIELD * 3), 431)
    assert time.monotonic() - t0 < 1.5


def test_header_count_at_and_over_the_limit(server):
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(FIELDS - 1))
    check(server, b"GET /n-ok HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", 200)
    check(server, b"GET /n-over HTTP/1.1\r\nHost: x\r\n" + fields + b"X-Last: 1\r\n\r\n", 431)


def test_head_size_over_the_limit(server):
    # Fields within every other limit, but together over --max-head-size.
    start = b"GET /h-xx HTTP/1.1\r\nHost: x\r\n"
    line = b"X-0: " + b"v" * (FIELD - 5) + b"\r\n"          # a field line at the field limit
    n = FIELDS - 2                                           # + Host + X-Pad = FIELDS
    pad = HEAD - len(start) - n * len(line) - 2              # a last line makes it exactly HEAD
    assert 0 < pad - 2 <= FIELD
    exact = start + line * n + b"X-Pad: " + b"p" * (pad - 2 - 7) + b"\r\n" + b"\r\n"
    assert len(exact) == HEAD
    check(server, exact.replace(b"/h-xx", b"/h-ok"), 200)
    over = exact.replace(b"X-Pad: ", b"X-Pad: p")
    check(server, over.replace(b"/h-xx", b"/h-ov"), 431)


def test_body_at_and_over_the_limit(server):
    ok = b"POST /echo?b-ok HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BODY + b"x" * BODY
    resp = check(server, ok, 200)
    assert resp.endswith(b"x" * BODY)
    check(server, b"POST /echo?b-over HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (BODY + 1)
          + b"x" * (BODY + 1), 413)


def test_content_length_over_the_limit_is_refused_before_the_body(server):
    """413 comes at once, from the head alone: the body is never waited for (and a client
    expecting 100-continue never gets a 100)."""
    t0 = time.monotonic()
    resp = check(server, b"POST /echo?b-huge HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
                 b"Expect: 100-continue\r\n\r\n", 413)
    assert b"100 Continue" not in resp
    assert time.monotonic() - t0 < 1.5


def test_chunked_body_over_the_limit_is_413_while_decoding(server):
    body = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(BODY // 256 + 1)) + b"0\r\n\r\n"
    check(server, b"POST /echo?c-over HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body, 413)
    # ... and at the limit it is served.
    body = b"".join(b"%x\r\n" % 250 + b"y" * 250 + b"\r\n" for _ in range(BODY // 250)) + b"0\r\n\r\n"
    resp = check(server, b"POST /echo?c-ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body, 200)
    assert resp.endswith(b"y" * BODY)


def test_chunk_extension_limit(server):
    """Chunk extensions are read and discarded, up to 4 KiB per chunk-size line (sp.h
    SP_DEFAULT_MAX_CHUNK_EXT); a longer one is a malformed body: 400."""
    ext = b";name=" + b"e" * 100
    ok = b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"
    resp = check(server, b"POST /echo?x-ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + ok, 200)
    assert resp.endswith(b"hello")
    long_ext = b"5;name=" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n"
    check(server, b"POST /echo?x-over HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + long_ext, 400)


def test_endless_chunk_extension_is_refused_without_the_line_end(server):
    """An extension that never ends is refused once it passes the limit, not at a timeout."""
    t0 = time.monotonic()
    check(server, b"POST /echo?x-open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e="
          + b"e" * 8000, 400)
    assert time.monotonic() - t0 < 1.5


def test_trailer_section_limit(server):
    """Trailers are read and discarded, up to 8 KiB (sp_limits.h SP_MAX_TRAILER_BYTES)."""
    ok = b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
    check(server, b"POST /echo?t-ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + ok, 200)
    big = b"5\r\nhello\r\n0\r\n" + b"".join(b"X-T%d: " % i + b"t" * 100 + b"\r\n" for i in range(100)) + b"\r\n"
    check(server, b"POST /echo?t-over HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + big, 400)


def test_nothing_over_a_limit_reached_the_app(server):
    status, data = 0, b""
    resp = exchange(server.port, b"GET /seen HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, data = status_of(resp), resp.partition(b"\r\n\r\n")[2]
    assert status == 200
    seen = json.loads(data)
    leaked = [p for p in seen if any(t in p for t in ("-over", "-open", "/h-ov"))]
    assert leaked == []


def worker_rss(server) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in server.workers())


@rss_bound
def test_pipelined_flood_is_bounded(spawn):
    """Pipelining needs no limit of its own: one head is parsed at a time, the next ones wait in
    the connection's read buffer (16 KiB), and no further head is started while more than 64 KiB
    of responses are unsent (csrc/conn/conn.h SP_PIPELINE_OUT_MAX). So 30 clients that pipeline 256 KiB
    of requests each and read nothing cost the worker bounded memory; then a client that reads
    gets every answer, in order.

    Each answer is 16 KiB, so the kernel's socket buffers (a few MiB a connection on loopback)
    fill after a few hundred of the ~9,000 requests and the bound is what holds the rest back
    (measured: 130-150 KiB a connection on both paths, mostly the output buffer, which doubles up
    to 128 KiB). The app records nothing: with ``core_app.application``, whose SEEN list keeps
    a str a request, this measured the app (on the Python path ~60 bytes a request)."""
    # Its own server: the module's has --send-timeout 2, and these clients read nothing for
    # longer than that, so it would rightly drop them before the reading part below.
    raise_nofile()
    server = spawn("-s", "1", "-t", "4", "--send-timeout", "30", "core_app.piece_app")
    n_clients, per_client = 30, 256 << 10
    req = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n"
    count = per_client // len(req)
    before = worker_rss(server)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(n_clients)]
    try:
        for s in socks:
            s.setblocking(False)
        data = req * count
        sent = [0] * n_clients
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and min(sent) < len(data):   # write, never read
            progress = False
            for i, s in enumerate(socks):
                if sent[i] < len(data):
                    try:
                        sent[i] += s.send(data[sent[i]:sent[i] + 262144])
                        progress = True
                    except BlockingIOError:
                        pass
            if not progress:
                time.sleep(0.05)
        time.sleep(0.5)
        grown = worker_rss(server) - before
        assert grown < n_clients * 256 * 1024, grown

        # One client now reads everything (sending the rest of its requests meanwhile).
        s = socks[0]
        s.setblocking(True)
        s.settimeout(10)
        sender = threading.Thread(target=lambda: s.sendall(data[sent[0]:]), daemon=True)
        sender.start()
        one = b"HTTP/1.1 200 "
        first = b""
        while first.count(one) < 2:
            first += s.recv(65536)
        size = first.index(one, 1)   # every answer has the same length
        total = len(first)
        while total < size * count:
            b = s.recv(1 << 20)
            if not b:
                break
            total += len(b)
        sender.join(10)
        assert total == size * count
    finally:
        for s in socks:
            s.close()


def test_pipelined_requests_are_answered_in_order(server):
    reqs = b"".join(b"GET /order-%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(200))
    resp = exchange(server.port, reqs + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert responses(resp) == [200] * 201
    bodies = [int(x.split(b"\n")[0]) for x in resp.split(b"hello /order-")[1:]]
    assert bodies == list(range(200))
