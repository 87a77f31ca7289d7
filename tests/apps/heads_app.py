"""Answers heads made of the same str objects request after request, in the orders, lengths and
mixes tests/test_response_heads.py asks for (?h=names of HEADS, comma-separated; &s=a status
of STATUSES): the runner keeps the head it packed last and reuses the bytes of the objects that
are the same (csrc/py/answer.c, pack_head)."""

from __future__ import annotations

from typing import Any

STATUSES = {"ok": "200 OK", "created": "201 Created", "teapot": "418 I'm a teapot"}
HEADS = {
    "type": ("Content-Type", "text/plain"),
    "html": ("Content-Type", "text/html; charset=utf-8"),
    "cache": ("Cache-Control", "no-store"),
    "x": ("X-Thing", "1"),
    "xl": ["X-Thing", "2"],      # a list as a header, which apps send too
    "vary": ("Vary", "Cookie, Accept-Encoding"),
}


def application(environ: dict, start_response: Any) -> list[bytes]:
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    names = [n for n in query.get("h", "").split(",") if n]
    headers = [HEADS[n] for n in names]
    if "n" in query:                 # a value made for this request: a new object each time
        headers.append(("X-N", str(int(query["n"]))))
    body = ("|".join(names) + "\n").encode()
    start_response(STATUSES[query.get("s", "ok")], [*headers, ("Content-Length", str(len(body)))])
    return [body]
