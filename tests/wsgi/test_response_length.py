"""A declared Content-Length ends the iteration (PEP 3333: "the server should not transmit more
bytes to the client than the header allows, and should stop iterating over the response when
enough data has been sent"), then close() is called, once.

tests/apps/length_app.py answers iterables with close() (and bare generators) whose iterator
records whether the server asked it for more after its last piece. On both request paths (the C
runner, csrc/py/answer.c, and SPAWNING_NO_PYFAST=1's spawning/wsgi/response.py), in thread and
green mode: a body whose pieces reach the declared length is never resumed after them and its
connection stays open; a shorter one is (the server learns it ended) and its connection closes;
a longer one is cut at the length, not resumed, and its connection closes. A first piece that is
the whole declared body goes in one crossing on the C path (sp_code_answer_whole); a write() or
start_response the app keeps from such a response must reach nothing afterwards, and requests
pipelined behind it are answered.
"""

from __future__ import annotations

import itertools
import socket
import sys
from collections.abc import Iterator

import pytest
from conftest import APPS, SpawningProcess, read_response, start_server

sys.path.insert(0, str(APPS))
from length_app import BODY, CASES  # the app's own definitions

SERVERS = {
    "c-thread": ({"SPAWNING_NO_PYFAST": ""}, ("-t", "1")),
    "c-green": ({"SPAWNING_NO_PYFAST": ""}, ("-t", "0")),
    "python-thread": ({"SPAWNING_NO_PYFAST": "1"}, ("-t", "1")),
    "python-green": ({"SPAWNING_NO_PYFAST": "1"}, ("-t", "0")),
}
_tokens = itertools.count()


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[SpawningProcess]:
    """One worker process with one thread (or green): the app's record is in its memory, and
    each request's close() has run before the next request on any connection is taken."""
    env, mode = SERVERS[request.param]
    proc = start_server("-s", "1", *mode, "length_app.application", env=env)
    try:
        yield proc
    finally:
        proc.stop()


def _token() -> str:
    return f"k{next(_tokens)}"


def _closed(s: socket.socket) -> bool:
    """Whether the server closes the connection (EOF within 5 s) rather than keeping it."""
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def _get(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target.encode())
        f = s.makefile("rb")
        return read_response(f, whole=False)[1]


def _events(port: int, token: str) -> list[str]:
    got = _get(port, f"/events?t={token}").decode()
    return got.split(",") if got else []


def _request(target: str, method: str = "GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (method.encode(), target.encode())


# case -> (the body that arrives, whether the connection stays open, whether the iterator is
# resumed after its last piece)
EXPECT = {
    "exact": (BODY, True, False),
    "split": (BODY, True, False),
    "empty_first": (BODY, True, False),
    "long": (BODY, False, False),              # cut at the declared length
    "short": (BODY, False, True),              # the server has to ask whether more comes
}


@pytest.mark.parametrize("variant", ["", "&lower=1", "&big=1"], ids=["head", "lowercase", "big-head"])
@pytest.mark.parametrize("gen", [False, True], ids=["closeiter", "generator"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_iteration_stops_at_the_declared_length(server: SpawningProcess, case: str, gen: bool,
                                                variant: str) -> None:
    """Also with the length's name in lower case, and with a head too big for the core's
    one-crossing answer (it streams, under the same rule)."""
    token = _token()
    body, keeps, resumed = EXPECT[case]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(_request(f"/b?c={case}&t={token}" + ("&gen=1" if gen else "") + variant))
        f = s.makefile("rb")
        head, got = read_response(f, whole=False)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got == body
        if keeps:
            s.sendall(_request("/events?t=none"))      # still open: answered on it
            assert read_response(f, whole=False)[0].startswith(b"HTTP/1.1 200 OK\r\n")
        else:
            assert _closed(s)
    if gen:
        # A generator ended by close() at its last piece records "closed"; one resumed to its
        # end is finished, and its close() does nothing.
        assert _events(server.port, token) == (["resumed"] if resumed else ["closed"])
    else:
        assert _events(server.port, token) == (["resumed", "close"] if resumed else ["close"])


@pytest.mark.parametrize("case", ["exact", "split"])
def test_head_request_stops_too(server: SpawningProcess, case: str) -> None:
    token = _token()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(_request(f"/b?c={case}&t={token}", "HEAD") + _request("/events?t=none"))
        f = s.makefile("rb")
        head, _ = read_response(f, "HEAD", whole=False)
        assert b"Content-Length: %d\r\n" % len(BODY) in head
        # nothing of the body came
        assert read_response(f, whole=False)[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert _events(server.port, token) == ["close"]


@pytest.mark.parametrize("keep,raised", [("write", "ClientDisconnected"), ("sr", "AssertionError"),
                                         ("weak", "gone")])
@pytest.mark.parametrize("pipelined", [False, True], ids=["sequential", "pipelined"])
def test_kept_callables_reach_nothing(server: SpawningProcess, keep: str, raised: str,
                                      pipelined: bool) -> None:
    """The app keeps the write() or start_response of a response answered in one crossing, or
    a weak reference to it; the next request on the connection (the same request code) calls it
    first: it must raise as for any answered request, or be gone (a response object the app can
    still reach must not serve the next request), and write nothing into the next response."""
    first, second = _token(), _token()
    reqs = [_request(f"/b?c=exact&keep={keep}&t={first}"), _request(f"/b?c=exact&stale=1&t={second}")]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        f = s.makefile("rb")
        heads = []
        if pipelined:
            s.sendall(b"".join(reqs))
            heads = [read_response(f, whole=False), read_response(f, whole=False)]
        else:
            for r in reqs:
                s.sendall(r)
                heads.append(read_response(f, whole=False))
        for head, body in heads:
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == BODY
        s.sendall(_request("/events?t=none"))
        # nothing stray on the wire
        assert read_response(f, whole=False)[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert _events(server.port, first) == ["close"]
    assert _events(server.port, second) == [raised, "close"]


def test_pipelined_behind_whole_first_pieces(server: SpawningProcess) -> None:
    """Requests sent at once behind responses whose first piece is the whole body (answered in
    one crossing, which in thread mode takes the next request with it) are all answered, in
    order, with the right bodies."""
    cases = ["exact", "exact", "split", "empty_first", "exact", "long"]
    tokens = [_token() for _ in cases]
    gens = [i % 2 == 1 for i in range(len(cases))]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"".join(_request(f"/b?c={c}&t={t}" + ("&gen=1" if g else ""))
                           for c, t, g in zip(cases, tokens, gens)))
        f = s.makefile("rb")
        for _ in cases:
            head, body = read_response(f, whole=False)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == BODY
        assert _closed(s)    # the last one was cut
    for t, g in zip(tokens, gens):
        assert _events(server.port, t) == (["closed"] if g else ["close"])
