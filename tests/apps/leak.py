"""Leaks about 1 MB per request (touched, so it counts in USS), for --max-memory tests."""

import os

_hoard: list[bytearray] = []


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/leak":
        _hoard.append(bytearray(os.urandom(16)) * (1 << 16))  # 1 MiB of dirty pages
    body = f"{os.getpid()} holds {len(_hoard)} MB\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
