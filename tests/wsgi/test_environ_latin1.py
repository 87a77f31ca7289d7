"""Latin-1 bytes in a head reach the app as the right str on both paths (PEP 3333: the bytes as
latin-1), however the C path made it (the value strs it keeps from one request to the next, the
repeat shortcut, fields joined). A matrix: where the byte is (a raw path byte, a path escape
decoded into PATH_INFO, the query, a cookie, another field, a repeated field joined), against an
ASCII head, on one keep-alive connection (the same head twice: the second comes by the repeat
shortcut), in thread and green mode, on the C and the Python path. tests/apps/latin1_app.py
answers with each value's ``isascii()`` and its UTF-8 bytes, which tell a latin-1 str from an
ASCII-flagged one holding the same bytes (equality would not)."""

from __future__ import annotations

import json
import re
import socket

import pytest
from conftest import read_head

# name -> (target, extra field lines): each puts bytes >= 0x80 in one place, or none.
HEADS: dict[str, tuple[bytes, bytes]] = {
    "ascii": (b"/a/b?x=1&y=%20", b"Cookie: s=abc123\r\nReferer: http://h/p\r\n"),
    "ascii_escapes": (b"/a%20b/%7E%41?q=%41%7F", b"X-Note: plain\r\n"),
    "path_raw": (b"/caf\xe9/\xff?x=1", b"Cookie: s=abc\r\n"),
    "path_escape": (b"/caf%C3%A9/%e9%80%8F?x=1", b"Cookie: s=abc\r\n"),
    "query_raw": (b"/q?name=\xe9t\xe9&z=\x80", b""),
    "query_escape": (b"/q?name=%C3%A9", b"X-Note: plain\r\n"),   # QUERY_STRING stays raw: ASCII
    "cookie": (b"/c", b"Cookie: sessionid=0123456789abcdef0123456789; name=Jos\xe9; last=\xff\r\n"),
    "referer_long": (b"/r", b"Referer: http://h/" + b"a" * 40 + b"\xe4" + b"b" * 40 + b"\r\n"),
    "field_tail": (b"/f", b"X-Note: 0123456789abcdefghij\xa9\r\n"),   # in a 16-byte block's tail
    "joined": (b"/j", b"X-Joined: one\r\nX-Joined: tw\xf6\r\n"),
    "obs_text_ows": (b"/o", b"X-Note:  \xe9 \t\r\n"),
}


def expected(target: bytes, fields: bytes, port: int) -> dict:
    """What every key must hold: the head's bytes as latin-1, the path percent-decoded."""
    path, _, query = target.partition(b"?")
    decoded = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), path)
    values = {"REQUEST_METHOD": b"GET", "PATH_INFO": decoded, "QUERY_STRING": query,
              "RAW_URI": target, "SERVER_PROTOCOL": b"HTTP/1.1", "HTTP_HOST": b"h"}
    joined: list[bytes] = []
    for line in fields.split(b"\r\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        key = "HTTP_" + name.decode().upper().replace("-", "_")
        if key == "HTTP_X_JOINED":
            joined.append(value.strip(b" \t"))
            continue
        values[key] = value.strip(b" \t")
    if joined:
        values["HTTP_X_JOINED"] = b", ".join(joined)
    out = {k: [all(b < 0x80 for b in v), v.decode("latin-1").encode("utf-8").hex()]
           for k, v in values.items()}
    out["REMOTE_ADDR"] = [True, b"127.0.0.1".hex()]
    out["REMOTE_PORT"] = [True, str(port).encode().hex()]
    return out


def ask(f, s: socket.socket, target: bytes, fields: bytes) -> dict:
    s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")
    head = read_head(f)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return json.loads(f.read(int(re.search(rb"Content-Length: (\d+)", head).group(1))))


@pytest.mark.parametrize("path", ["c", "python"])
@pytest.mark.parametrize("threads", ["4", "0"])
def test_latin1_values_are_the_right_strs(spawn, threads: str, path: str):
    srv = spawn("-s", "1", "-t", threads, "latin1_app.application",
                env={"SPAWNING_NO_PYFAST": "" if path == "c" else "1"})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        f = s.makefile("rb")
        s.sendall(b"GET /path HTTP/1.1\r\nHost: h\r\n\r\n")
        head = read_head(f)
        kind = f.read(int(re.search(rb"Content-Length: (\d+)", head).group(1))).decode()
        if path == "c" and kind != "c":
            pytest.skip("built without the C path (SPAWNING_NO_PYFAST=1 at build time)")
        assert kind == path
        port = s.getsockname()[1]
        bad = []
        # Each head twice in a row (the second by the repeat shortcut, its flag the first's),
        # and the ASCII heads between latin-1 ones: a flag must never outlive its head.
        for name in [n for pair in zip(HEADS, ["ascii"] * len(HEADS)) for n in pair]:
            target, fields = HEADS[name]
            want = expected(target, fields, port)
            for _ in range(2):
                got = ask(f, s, target, fields)
                if got != want:
                    bad.append((name, {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}))
    assert not bad, ([b[0] for b in bad], bad[:2])
    assert "Traceback" not in srv.stderr, srv.stderr[-2000:]
