"""Runs a list of calls on wsgi.input (the X-Ops header, JSON: [[method, args, kwargs], ...]) and
answers what each returned (repr) or raised (the exception's name), and which Input read the body
(its module): tests/test_wsgi_input.py compares the C path's answers with the Python path's."""

from __future__ import annotations

import json
from typing import Any

KEPT: list[Any] = []    # "keep" holds a request's wsgi.input here for a later request's "kept"


def application(environ: dict, start_response: Any) -> list[bytes]:
    inp = environ["wsgi.input"]
    out = [type(inp).__module__ + "." + type(inp).__name__]
    for name, args, kw in json.loads(environ["HTTP_X_OPS"]):
        if name == "keep":
            KEPT[:] = [inp]
            continue
        if name == "kept":      # an earlier request's input, read now: b'', and never this one
            out.append(repr((KEPT[0].read(), KEPT[0] is inp)))
            continue
        try:
            out.append(repr(list(inp) if name == "iter" else getattr(inp, name)(*args, **kw)))
        except (TypeError, ValueError, AttributeError) as e:   # a wrong argument; no release()
            out.append(type(e).__name__)
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
