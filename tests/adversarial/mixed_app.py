"""The app the adversarial tests and bench/adversarial.py run: small, stateless (nothing grows per
request, so worker memory measures the server alone), with bodies of any size both ways.

- ``/bytes?n=N``: N bytes, one piece (the one-crossing respond path).
- ``/stream?n=N``: N bytes in 64 KiB pieces of unknown total length (chunked on HTTP/1.1).
- ``/echo``: reads the whole request body in 64 KiB reads and answers its length.
- anything else: a short "ok".
"""

_BLOCK = b"x" * 65536


def _n(environ, default: int) -> int:
    q = environ.get("QUERY_STRING", "")
    for part in q.split("&"):
        if part.startswith("n="):
            try:
                return max(0, min(int(part[2:]), 1 << 30))
            except ValueError:
                return default
    return default


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/bytes":
        n = _n(environ, 1024)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        return [_BLOCK[:n] if n <= len(_BLOCK) else b"x" * n]
    if path == "/stream":
        n = _n(environ, 1 << 20)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _stream(n)
    if path == "/echo":
        inp = environ["wsgi.input"]
        total = 0
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            total += len(chunk)
        body = b"%d\n" % total
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


def _stream(n: int):
    while n > 0:
        piece = _BLOCK if n >= len(_BLOCK) else _BLOCK[:n]
        n -= len(piece)
        yield piece
