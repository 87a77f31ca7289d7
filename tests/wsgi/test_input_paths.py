"""wsgi.input on the C path reads as on the Python path (spawning/wsgi/input.py).

A Content-Length body that arrives with its head is read whole when the request starts and served
by a C type (csrc/py/input.c, Input); a body the loop holds only part of goes to spawning/wsgi/input.py
with the part taken. Every call sequence here (read, readline, readlines with sizes of every
kind, keywords, wrong arguments, iteration, reads after release()) is run on the same bodies
against a server on the C path and one started with SPAWNING_NO_PYFAST=1: the answers must be
the same, and a small body on the C path must have been read by the C type.
"""

from __future__ import annotations

import json
import socket

import pytest
from conftest import read_response

from spawning.wsgi.response import FAST

BODIES = [b"", b"abc", b"line1\nline2\n\nlast", b"\n\n\n", b"x" * 3000 + b"\n" + b"y" * 100,
          (b"0123456789" * 7 + b"\n") * 3000, b"z" * 150_000]
OPS = [
    [["read", [], {}], ["read", [], {}]],
    [["read", [2], {}], ["read", [None], {}], ["read", [0], {}]],
    [["read", [-5], {}], ["readline", [], {}]],
    [["readline", [], {}], ["readline", [3], {}], ["readline", [0], {}], ["read", [], {}]],
    [["readline", [2], {}], ["readline", [-1], {}], ["readline", [None], {}]],
    [["readlines", [], {}]], [["readlines", [1], {}], ["readlines", [7], {}]],
    [["readlines", [2.5], {}], ["read", [1], {}]], [["iter", [], {}]],
    [["read", [2.0], {}]], [["readline", [1.5], {}]], [["read", [], {"size": 2}]],
    [["readline", [], {"size": 1}]], [["readlines", [], {"hint": 3}]], [["read", [], {"n": 3}]],
    [["read", [1, 2], {}]], [["read", ["x"], {}]], [["read", [10**30], {}]], [["read", [True], {}]],
    [["read", [3], {}], ["release", [], {}], ["read", [], {}]],
    [["readline", [], {}], ["release", [], {}], ["read", [], {}]],
    [["readlines", [0], {}]], [["readlines", [-1], {}]], [["readlines", [None], {}]],
]


def ask(port: int, body: bytes, ops: list) -> list[str]:
    """One request, head and body in one send (a form post's shape), on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /form HTTP/1.1\r\nHost: x\r\nX-Ops: " + json.dumps(ops).encode()
                  + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        _, answer = read_response(s.makefile("rb"))
    return json.loads(answer)


@pytest.mark.skipif(not FAST, reason="the C path is not built (PyPy, SPAWNING_NO_PYFAST)")
@pytest.mark.parametrize("threads", ["1", "0"])
def test_c_input_reads_as_the_python_input(spawn, threads):
    c_path = spawn("input_app.application", "-t", threads)
    py_path = spawn("input_app.application", "-t", threads, env={"SPAWNING_NO_PYFAST": "1"})
    for body in BODIES:
        for ops in OPS:
            c, py = ask(c_path.port, body, ops), ask(py_path.port, body, ops)
            assert c[1:] == py[1:], (body[:20], ops)
            if not body:            # Content-Length: 0 is no body, on both paths
                assert c[0] == py[0] == "spawning.wsgi.input.EmptyInput"
                continue
            assert py[0] == "spawning.wsgi.input.Input"
            if len(body) <= 4096:   # arrives with its head: read whole, by the C type
                assert c[0] == "spawning._core.Input", (body[:20], ops)


@pytest.mark.skipif(not FAST, reason="the C path is not built (PyPy, SPAWNING_NO_PYFAST)")
@pytest.mark.parametrize("threads", ["1", "0"])
def test_an_input_kept_past_its_request_stays_its_own(spawn, threads):
    """The runner reuses an Input no one holds for the next body (csrc/py/input.c, inp_new): one
    the app kept must stay released (b'') and never become a later request's wsgi.input. One
    worker process, so that the later requests meet the app that kept it."""
    c_path = spawn("input_app.application", "-t", threads, "-s", "1")
    py_path = spawn("input_app.application", "-t", threads, "-s", "1", env={"SPAWNING_NO_PYFAST": "1"})
    for port in (c_path.port, py_path.port):
        assert ask(port, b"first", [["keep", [], {}], ["read", [2], {}]])[1:] == ["b'fi'"]
        for _ in range(3):      # spares come and go: the kept one is never one of them
            assert ask(port, b"second", [["kept", [], {}], ["read", [], {}]])[1:] == [
                "(b'', False)", "b'second'"]
