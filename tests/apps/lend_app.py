"""Responses whose bodies C may send after the handler returned (csrc/sp.h, "Lent bodies").

``/body/SEED/SIZE`` answers SIZE bytes made afresh from SEED for every request, so a body freed
too early is soon overwritten by the next one and the client sees other bytes than it expects;
``/stream/SEED/SIZE`` sends the same bytes in two pieces.
"""

import hashlib


def body_of(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def application(environ, start_response):
    kind, seed, size = environ["PATH_INFO"].split("/")[1:]
    body = body_of(seed, int(size))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    if kind == "stream":   # the streaming path (start, write, finish) rather than one crossing
        return iter([body[: len(body) // 2], body[len(body) // 2:]])
    return [body]
