"""Environs of heads that share their field names (a "shape") but not their values, as a
browser's requests do: the C runner copies the environ of a shape it has seen twice from a
template and writes only the values that are not the template's (csrc/py/environ.c, "shapes").
A head of a kept shape's names also takes which fields make which entries from the shape.
Every request here must get exactly its own values on both request paths and in both worker
modes: a secret (Cookie, Authorization) never one of an earlier request, a value that changes
back an old one, names sent in another case the same keys, joined repeats, bodies, a
Content-Length list, a trusted proxy's rewrite, names told apart only in their middle, a
dropped name, an absolute-form target's Host, more shapes than the runner keeps, and the same
shape from two connections."""

from __future__ import annotations

import json
import random
import socket
import sys
from collections.abc import Iterator

import pytest
from conftest import read_response, start_server

from spawning._core import lib

# Whether the core has the C runner (CPython, not built with SPAWNING_NO_PYFAST=1): without it
# every server runs the Python path.
C_RUNNER = sys.implementation.name == "cpython" and lib.sp_py_setup() == 0

# Both paths in both modes; the C runner's servers clear SPAWNING_NO_PYFAST so that a run with it
# set still compares the two.
MODES = {"thread-c": ("4", {"SPAWNING_NO_PYFAST": ""}), "thread-py": ("4", {"SPAWNING_NO_PYFAST": "1"}),
         "green-c": ("0", {"SPAWNING_NO_PYFAST": ""}), "green-py": ("0", {"SPAWNING_NO_PYFAST": "1"})}

UAS = ["Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36",
       "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) Version/17.1 Safari/605.1.15"]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict]:
    started = {}
    try:
        for mode, (threads, env) in MODES.items():
            # 127.0.0.1 is a trusted proxy by default: X-Forwarded-For rewrites REMOTE_ADDR.
            started[mode] = start_server("-s", "1", "-t", threads, "env_dump_app.application", env=env)
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def browser(i: int, rng: random.Random, case: bool = False) -> tuple[bytes, dict]:
    """A browser-like GET of one shape: the path, query, cookie, Referer and id change, others
    now and then (back to an earlier value too). Returns the message and the keys it must set."""
    path = f"/item/{rng.choice([i, i, 7])}"
    query = rng.choice([f"id={i}", "id=7", ""])
    fields = [("Host", "shop.example"), ("User-Agent", rng.choice(UAS)),
              ("Accept", rng.choice(["text/html", "text/html", "*/*"])),
              ("Accept-Language", "en-GB,en;q=0.9"),
              ("Cookie", rng.choice([f"session={i:032x}", "session=same", ""])),
              ("Referer", rng.choice([f"http://shop.example/{i - 1}", "http://shop.example/"])),
              ("X-Request-Id", f"{i:08x}")]
    if case:   # the same names in another case: the same keys (another shape)
        fields = [(n.lower() if k % 2 else n.upper(), v) for k, (n, v) in enumerate(fields)]
    target = path + ("?" + query if query else "")
    msg = f"GET {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    want = {"PATH_INFO": path, "QUERY_STRING": query, "RAW_URI": target, "REQUEST_METHOD": "GET"}
    want.update({"HTTP_" + n.upper().replace("-", "_"): v for n, v in fields})
    return msg.encode(), want


def others(i: int, rng: random.Random) -> tuple[bytes, dict]:
    """One of several other shapes: a form POST with a body (its Content-Length now and then a
    list), joined repeats with an Authorization, a proxy's X-Forwarded-For, two shapes whose
    names differ only in the middle of a long one (with a dropped name), the browser's names
    with an absolute-form target, or one of 24 more (more than the runner keeps)."""
    kind = rng.randrange(6)
    if kind == 0:
        body = f"csrf={i:x}&text={'x' * rng.choice([1, 40])}".encode()
        length = rng.choice([str(len(body))] * 3 + [f"{len(body)}, {len(body)}"])
        msg = (f"POST /form HTTP/1.1\r\nHost: shop.example\r\nCookie: s={i}\r\n"
               "Content-Type: application/x-www-form-urlencoded\r\n"
               f"Content-Length: {length}\r\n\r\n").encode() + body
        return msg, {"REQUEST_METHOD": "POST", "HTTP_COOKIE": f"s={i}", "CONTENT_LENGTH": str(len(body)),
                     "CONTENT_TYPE": "application/x-www-form-urlencoded", "spawning.test.body": "sent"}
    if kind == 1:
        a, b = rng.choice(["a", "b"]), rng.choice([f"v{i}", "b"])
        msg = (f"GET /joined HTTP/1.1\r\nHost: h\r\nAccept: {a}\r\nAuthorization: Bearer {i:x}\r\n"
               f"Accept: {b}\r\n\r\n").encode()
        return msg, {"HTTP_ACCEPT": f"{a}, {b}", "HTTP_AUTHORIZATION": f"Bearer {i:x}"}
    if kind == 2:
        addr = rng.choice([f"203.0.113.{i % 250}", "198.51.100.1"])
        msg = f"GET /via HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: {addr}\r\n\r\n".encode()
        return msg, {"REMOTE_ADDR": addr, "HTTP_X_FORWARDED_FOR": addr}
    if kind == 3:
        # The runner finds a shape by each name's length and first and last 8 bytes: these two
        # share them, and only the names' compare tells them apart.
        name = f"X-Long-Header-{rng.choice(['Aaaa', 'Bbbb'])}-Name-Value"
        msg = f"GET /long HTTP/1.1\r\nHost: h\r\n{name}: {i}\r\nX_Dropped: {i}\r\n\r\n".encode()
        return msg, {"HTTP_" + name.upper().replace("-", "_"): str(i), "HTTP_X_DROPPED": None}
    if kind == 4:
        # Host comes from an absolute-form target (RFC 9112 3.2.2), not from the field.
        msg, want = browser(i, rng)
        target = want["RAW_URI"]
        msg = msg.replace(f"GET {target} ".encode(), f"GET http://other.example{target} ".encode(), 1)
        want.update(RAW_URI="http://other.example" + target, HTTP_HOST="other.example")
        return msg, want
    n = rng.randrange(24)
    names = [f"X-Shape-{n}-{k}" for k in range(n % 3 + 1)]
    msg = ("GET /many HTTP/1.1\r\nHost: h\r\n" + "".join(f"{m}: {i}\r\n" for m in names) + "\r\n").encode()
    return msg, {"HTTP_" + m.upper().replace("-", "_"): str(i) for m in names}


def run(port: int, msgs: list[bytes], rng: random.Random) -> list[dict]:
    """Sends each message on one of two connections (a new one now and then) and returns each
    answer's dump, the server's port and the connection's own as "<own>"."""
    socks: list = [None, None]
    out = []

    def conn(k: int):
        if socks[k] is None or rng.random() < 0.02:
            if socks[k] is not None:
                socks[k][0].close()
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            socks[k] = (s, s.makefile("rb"))
        return socks[k]

    try:
        for msg in msgs:
            s, f = conn(rng.randrange(2))
            s.sendall(msg)
            head, body = read_response(f)
            assert head.startswith(b"HTTP/1.1 200 "), head
            dump = json.loads(body)
            for k, v in (("SERVER_PORT", str(port)), ("REMOTE_PORT", str(s.getsockname()[1]))):
                if dump.get(k) == v:
                    dump[k] = "<own>"
            out.append(dump)
    finally:
        for pair in socks:
            if pair is not None:
                pair[0].close()
    return out


def test_shapes_get_their_own_values(servers: dict) -> None:
    rng = random.Random(20261207)
    msgs, wants = [], []
    for i in range(600):
        r = rng.random()
        msg, want = browser(i, rng, case=r < 0.15) if r < 0.6 else others(i, rng)
        msgs.append(msg)
        wants.append(want)
    dumps = {mode: run(srv.port, msgs, random.Random(7)) for mode, srv in servers.items()}
    for mode, srv in servers.items():
        assert "Traceback" not in srv.stderr, srv.stderr[-3000:]
    for i, want in enumerate(wants):
        c = dumps["thread-c"][i]
        assert c.pop("spawning.test.fast") is C_RUNNER
        if want.get("spawning.test.body") == "sent":
            assert c["spawning.test.body"][0] == int(want["CONTENT_LENGTH"]), (i, msgs[i])
            c["spawning.test.body"] = "sent"
        got = {k: c.get(k) for k in want}
        assert got == want, (i, msgs[i])
        assert c["REMOTE_PORT"] == "<own>" or "HTTP_X_FORWARDED_FOR" in want, (i, c)
        for mode in ("thread-py", "green-c", "green-py"):
            d = dumps[mode][i]
            assert d.pop("spawning.test.fast") is (mode.endswith("-c") and C_RUNNER), mode
            if want.get("spawning.test.body") == "sent":
                d["spawning.test.body"] = "sent"
            assert d == c, (i, mode, msgs[i], {k: (c.get(k), d.get(k)) for k in c.keys() | d.keys()
                                               if c.get(k) != d.get(k)})
