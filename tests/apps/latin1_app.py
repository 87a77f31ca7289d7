"""Answers with what the environ's values from the request head hold, as str objects: for each
key, whether the str says it is ASCII (``str.isascii()`` reads the flag CPython keeps with a
str, not its characters) and its characters as UTF-8. A str made as ASCII from bytes that are not
(csrc/py/environ.c, latin1_str) shows here where an equality test would not: CPython compares two
one-byte strs by their bytes. ``GET /path`` names the request path the worker runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL", "HTTP_HOST",
        "HTTP_COOKIE", "HTTP_REFERER", "HTTP_X_NOTE", "HTTP_X_JOINED", "REMOTE_ADDR", "REMOTE_PORT")


def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/path":
        from spawning.wsgi.response import FAST
        body = b"c" if FAST else b"python"
    else:
        body = json.dumps({k: [v.isascii(), v.encode("utf-8").hex()]
                           for k in KEYS if isinstance(v := environ.get(k), str)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
