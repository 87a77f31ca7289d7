"""Bodies with a declared Content-Length, for tests/wsgi/test_response_length.py: PEP 3333 has
the server stop iterating once the bytes sent reach it, then call close().

``GET /b?c=CASE&t=TOKEN`` answers CASE (``CASES``: the body's pieces and the Content-Length the
app declares) as an iterable with ``close()``, whose iterator records ``resumed`` under TOKEN if
the server asks it for more after its last piece, and whose ``close()`` records ``close`` each
time it is called. ``c=gen`` answers the same as a bare generator, which records ``resumed`` the
same way and ``closed`` when close() ends it at its last piece. ``&big=1`` adds a header of 10 KB (a head too big for the core's one-crossing path, which then
streams it) and ``&lower=1`` declares the length as ``content-length``. ``GET /events?t=TOKEN`` answers
what TOKEN's requests recorded, comma-separated. The server runs one process (``-s 1``): the
record is this module's memory.

``&keep=write``, ``&keep=sr`` or ``&keep=weak`` keeps the request's write() callable, its
start_response or a weak reference to its write() beyond the request (as an app that stores
them does), and ``&stale=1`` first calls the last one kept by an earlier request, recording
``stale-ok`` if the call went through, ``gone`` if the weak reference is dead, else the
exception's name: a kept callable must reach nothing once its request is answered, however it
was, and a response object only weakly referred to must not serve the next request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from weakref import ref

BODY = b"declared-length body\n"
# case: (the pieces, the Content-Length declared)
CASES: dict[str, tuple[list[bytes], int]] = {
    "exact": ([BODY], len(BODY)),                           # one piece, the whole body: one crossing
    "short": ([BODY], len(BODY) + 5),                       # less than declared
    "long": ([BODY + b"extra"], len(BODY)),                 # more than declared: cut
    "split": ([BODY[:7], BODY[7:]], len(BODY)),             # two pieces that make it whole
    "empty_first": ([b"", BODY], len(BODY)),                # an empty piece, then the whole body
}

_events: dict[str, list[str]] = {}
_kept: list[Any] = []


def _record(token: str, what: str) -> None:
    _events.setdefault(token, []).append(what)


class Recorded:
    """An iterable with close(), as a framework's response object is."""

    def __init__(self, pieces: list[bytes], token: str) -> None:
        self.pieces = pieces
        self.token = token

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces
        _record(self.token, "resumed")      # the server asked for more after the last piece

    def close(self) -> None:
        _record(self.token, "close")


def _gen(pieces: list[bytes], token: str) -> Iterator[bytes]:
    try:
        yield from pieces
        _record(token, "resumed")
    except GeneratorExit:
        _record(token, "closed")            # close() while it waited at its last piece
        raise


def application(environ: dict, start_response: Callable) -> Any:
    q = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    token = q.get("t", "")
    if environ["PATH_INFO"] == "/events":
        body = ",".join(_events.get(token, [])).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if q.get("stale") and _kept:
        kind, kept = _kept[-1]
        if kind == "weak":
            kept = kept()
        try:
            if kept is None:
                _record(token, "gone")
            elif kind in ("write", "weak"):
                kept(b"STALE WRITE")
            else:   # a start_response that reached this request would set its status
                kept("418 I'm a teapot", [("Content-Length", "0")])
            if kept is not None:
                _record(token, "stale-ok")
        except Exception as e:  # noqa: BLE001  which one is what the test asserts
            _record(token, type(e).__name__)
    pieces, length = CASES[q.get("c", "exact")]
    headers = [("Content-Type", "text/plain"),
               ("content-length" if q.get("lower") else "Content-Length", str(length))]
    if q.get("big"):
        headers.append(("X-Big", "b" * 10_000))
    write = start_response("200 OK", headers)
    if q.get("keep") == "write":
        _kept.append(("write", write))
    elif q.get("keep") == "sr":
        _kept.append(("sr", start_response))
    elif q.get("keep") == "weak":
        _kept.append(("weak", ref(write)))
    if q.get("gen"):
        return _gen(pieces, token)
    return Recorded(pieces, token)
