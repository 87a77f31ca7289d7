"""Response heads made of the same str objects request after request (csrc/py/answer.c, pack_head
keeps the head it packed last and reuses the bytes of the leading objects that are the same):
every head in a random run of statuses, header orders, lengths (longer, shorter, more than the
17 objects kept), lists as headers and values made per request comes out as the Python path
(SPAWNING_NO_PYFAST=1) writes it, Date aside.
"""

from __future__ import annotations

import random
import re
import socket

from conftest import read_response

NAMES = ["type", "html", "cache", "x", "xl", "vary"]


def heads(port: int, paths: list[str]) -> list[bytes]:
    """Each path's response head (Date taken out) and body, on one keep-alive connection."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        for path in paths:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            head, body = read_response(f)
            out.append(re.sub(rb"\r\nDate: [^\r]*", b"", head) + body)
    return out


def test_heads_alike_on_both_paths(spawn):
    rng = random.Random(23)
    paths = []
    for _ in range(300):
        names = rng.choices(NAMES, k=rng.choice([0, 1, 2, 3, 9]))
        path = f"/?h={','.join(names)}&s={rng.choice(['ok', 'ok', 'created', 'teapot'])}"
        if rng.random() < 0.3:
            path += f"&n={rng.randrange(1000)}"
        paths += [path] * rng.choice([1, 1, 3])     # runs of the very same head, too
    c_path = spawn("heads_app.application", "-t", "1")
    py_path = spawn("heads_app.application", "-t", "1", env={"SPAWNING_NO_PYFAST": "1"})
    got, want = heads(c_path.port, paths), heads(py_path.port, paths)
    for path, c, py in zip(paths, got, want):
        assert c == py, path
