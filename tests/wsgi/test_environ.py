"""The request's environ (spawning/wsgi/environ.py, and the C path's in csrc/py/environ.c): its
values, made afresh for every request, each listener's and each connection's own, through real
sockets against a real server (tests/apps/core_app.py)."""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path

import pytest
from conftest import http_get, raw_exchange, read_head, run_clients, start_server


def test_environ(core_server):
    r, data = http_get(core_server.port, "/v/env/a%20b/%C3%A9?x=1&y=%20", headers={
        "X-Foo": "one", "Cookie": "a=1", "User-Agent": "tester"})
    assert r.status == 200
    env = json.loads(data)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/v/env/a b/" + b"\xc3\xa9".decode("latin-1")
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert int(env["REMOTE_PORT"]) > 0
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(core_server.port)
    assert env["HTTP_HOST"] == f"127.0.0.1:{core_server.port}"
    assert env["HTTP_X_FOO"] == "one"
    assert env["HTTP_USER_AGENT"] == "tester"
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["RAW_URI"] == "/v/env/a%20b/%C3%A9?x=1&y=%20"
    assert "CONTENT_LENGTH" not in env or env["CONTENT_LENGTH"] == ""


def test_environ_is_fresh_for_every_request(core_server):
    """Identical requests share a cached environ template: what one app run does to its environ
    must not reach the next, and REMOTE_PORT is each connection's own."""
    conns = [http.client.HTTPConnection("127.0.0.1", core_server.port, timeout=10) for _ in range(2)]
    try:
        for _ in range(3):
            for conn in conns:
                r, data = http_get(core_server.port, "/mutate?same=1", conn=conn)
                env = json.loads(data)
                assert r.status == 200
                assert "spawning.test.mark" not in env
                assert env["PATH_INFO"] == "/mutate"
                assert env["HTTP_HOST"] == f"127.0.0.1:{core_server.port}"
                assert env["REMOTE_PORT"] == str(conn.sock.getsockname()[1])
    finally:
        for conn in conns:
            conn.close()


def test_environ_cache_turns_over_without_mixing_requests(core_server):
    """Environ templates are remembered by key ids from C, in bounded tables on both sides that
    are emptied when full: far more distinct heads than they hold, then earlier ones again, must
    each get their own environ."""
    conn = http.client.HTTPConnection("127.0.0.1", core_server.port, timeout=10)
    try:
        order = list(range(700)) + list(range(0, 700, 37)) + list(range(690, 700))
        for i in order:
            r, data = http_get(core_server.port, f"/mutate?n={i}", conn=conn, headers={"X-N": str(i)})
            env = json.loads(data)
            assert r.status == 200
            assert env["QUERY_STRING"] == f"n={i}"
            assert env["HTTP_X_N"] == str(i)
            assert env["PATH_INFO"] == "/mutate"
    finally:
        conn.close()


def test_environ_is_each_listeners_own(spawn, tmp_path: Path):
    """Byte-identical requests from one address to two listeners (and a Unix socket) share no
    environ: SERVER_PORT is the listener's, REMOTE_PORT the connection's."""
    from conftest import free_port
    ports = [free_port(), free_port()]
    path = tmp_path / "env.sock"
    srv = spawn("-s", "1", "-t", "2", "core_app.application", "--bind", f"127.0.0.1:{ports[0]}",
                "--bind", f"127.0.0.1:{ports[1]}", "--bind", f"unix:{path}", port=ports[0])
    head = b"GET /env?same=1 HTTP/1.1\r\nHost: example\r\n\r\n"
    for _ in range(2):
        for port in ports + ports[::-1]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for _ in range(2):
                    s.sendall(head)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += s.recv(65536)
                    h, _, body = data.partition(b"\r\n\r\n")
                    n = int(re.search(rb"Content-Length: (\d+)", h).group(1))
                    while len(body) < n:
                        body += s.recv(65536)
                    env = json.loads(body)
                    assert env["SERVER_PORT"] == str(port)
                    assert env["REMOTE_PORT"] == str(s.getsockname()[1])
                    assert env["HTTP_HOST"] == "example"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    env = json.loads(data.partition(b"\r\n\r\n")[2])
    assert env["REMOTE_PORT"] == ""
    assert env["SERVER_NAME"] == "localhost"
    assert env["HTTP_HOST"] == "example"
    srv.stop()


def test_repeated_headers_are_joined_and_underscores_dropped(core_server):
    req = (b"GET /env HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nX-Dup: 2\r\nCookie: a=1\r\nCookie: b=2\r\n"
           b"X_Dup: spoofed\r\nConnection: close\r\n\r\n")
    resp = raw_exchange(core_server.port, req)
    env = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    assert env["HTTP_X_DUP"] == "1, 2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "spoofed" not in json.dumps(env)


def test_post_environ_and_echo(core_server):
    r, data = http_get(core_server.port, "/env", method="POST", body=b"abc",
                       headers={"Content-Type": "text/plain"})
    env = json.loads(data)
    assert env["CONTENT_LENGTH"] == "3"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["wsgi.input.type"] == "Input"
    r, data = http_get(core_server.port, "/echo", method="POST", body=b"x" * 100_000)
    assert r.status == 200 and data == b"x" * 100_000


def test_absolute_form_target_overrides_host(core_server):
    """RFC 9112 3.2.2: with an absolute-form target the server ignores Host and uses the
    target's authority; an empty path there is "/" (RFC 9110 4.2.3)."""
    for target, host, path in ((b"http://evil.example:8080/p?q=1", b"good.example", "/p"),
                               (b"http://y", b"z", "/")):
        resp = raw_exchange(core_server.port, b"GET " + target + b" HTTP/1.1\r\nHost: " + host
                            + b"\r\nConnection: close\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
        assert resp.endswith(f"hello {path}\n".encode()), resp
    resp = raw_exchange(core_server.port, b"GET http://evil.example:8080/env?q=1 HTTP/1.0\r\n\r\n")
    env = json.loads(resp.partition(b"\r\n\r\n")[2])
    assert env["HTTP_HOST"] == "evil.example:8080"
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/env", "q=1")


@pytest.mark.parametrize("threads", ["4", "0"])
def test_request_codes_keep_environs_apart(threads: str):
    """Repeated heads on a keep-alive connection come with short repeat codes whose environ
    the C runner keeps per connection (csrc/sp.h, request codes). Many connections, each repeating
    its own requests with changes now and then (path, query, a header, a body), reconnecting
    (slots are reused) and pipelining: every answer must describe its own request and its own
    connection's port. (The C runner's map of repeat environs is emptied past 16,384
    connections, csrc/py/environ.c; a repeat whose environ went with it is made from its block:
    that path is not reached here.)"""
    srv = start_server("-s", "1", "-t", threads, "codes_app.application")
    bad: list = []
    count = [0]

    def client(k: int) -> None:
        for rnd in range(4):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                f = s.makefile("rb")
                port = s.getsockname()[1]
                j = 0
                while j < 40:
                    batch = 2 if j % 7 == 3 else 1      # now and then two pipelined
                    sent = []
                    for i in range(j, j + batch):
                        path, query = f"/c{k}/{rnd}/{i // 8}", f"q={i // 5}"
                        extra = f"X-Extra: {i}\r\n" if i % 11 == 10 else ""
                        body = b"b%d" % i if i % 13 == 12 else b""
                        length = f"Content-Length: {len(body)}\r\n" if body else ""
                        s.sendall(f"GET {path}?{query} HTTP/1.1\r\nHost: x\r\nX-N: {k}\r\n"
                                  f"{extra}{length}\r\n".encode() + body)
                        sent.append(f"{path} {query} {port} {k} {i if extra else '-'} {body!r}")
                    for want in sent:
                        head = read_head(f)
                        got = f.read(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
                        if got.decode() != want:
                            bad.append((want, got))
                        count[0] += 1
                    j += batch

    run_clients(srv, client, [(k,) for k in range(24)], 60)
    assert count[0] == 24 * 4 * 40 and not bad, (count[0], bad[:3])
    assert "Traceback" not in srv.stderr, srv.stderr[-2000:]


def test_environ_of_awkward_heads(core_server):
    """The C runner walks env.c's iterator over the head's copy where the Python path reads the
    packed block (SPAWNING_NO_PYFAST=1 runs this test that way): both must give these. A name
    that repeats after many fields (the iterator starts over, joined), a joined value too long
    for the runner's stack buffer, a name too long for its key table, more fields than its
    stack array, '_' names and Proxy dropped with their repeats, names in any case."""
    many = b"".join(b"X-F-%d: v%d\r\n" % (i, i) for i in range(60))
    long_name = b"X-" + b"L" * 60
    big = b"c" * 900
    req = (b"GET /env HTTP/1.1\r\nHost: x\r\nx-case: a\r\n" + many
           + b"Cookie: " + big + b"\r\n" + long_name + b": long\r\nX_Under: 1\r\nProxy: p\r\n"
           + b"COOKIE: " + big + b"\r\nX-CASE: b\r\nx_under: 2\r\nPROXY: q\r\nConnection: close\r\n\r\n")
    env = json.loads(raw_exchange(core_server.port, req).split(b"\r\n\r\n", 1)[1])
    assert env["HTTP_X_CASE"] == "a, b"
    assert env["HTTP_COOKIE"] == (big + b"; " + big).decode()
    assert env["HTTP_" + long_name.decode().upper().replace("-", "_")] == "long"
    assert [env[f"HTTP_X_F_{i}"] for i in range(60)] == [f"v{i}" for i in range(60)]
    assert "HTTP_PROXY" not in env and "HTTP_X_UNDER" not in env
    assert not any(k.lower().startswith("http_x_under") or k == "X_UNDER" for k in env)

    # HTTP/1.0 with an absolute-form target and no Host: the target's authority is HTTP_HOST.
    resp = raw_exchange(core_server.port, b"GET http://example.org:8080/env?q=1 HTTP/1.0\r\n\r\n")
    env = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    assert env["HTTP_HOST"] == "example.org:8080"
    assert env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "q=1"

    # One name in two spellings on one connection's requests: each its own value.
    for spelling, value in ((b"accept", b"x"), (b"ACCEPT", b"y"), (b"Accept", b"z")):
        resp = raw_exchange(core_server.port, b"GET /env HTTP/1.1\r\nHost: x\r\n" + spelling + b": "
                            + value + b"\r\nConnection: close\r\n\r\n")
        assert json.loads(resp.split(b"\r\n\r\n", 1)[1])["HTTP_ACCEPT"] == value.decode()
