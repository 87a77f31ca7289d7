"""Dumps its environ as JSON, for tests/wsgi/test_environ_space.py: every plain value (str, bool,
int, tuple; not the objects, which differ per dispatch), the body it read, and whether its worker
runs the C runner, so that two servers' answers to one head can be compared byte for byte."""

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from spawning.wsgi.response import FAST  # whether this worker runs the C runner


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    out = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
    body = environ["wsgi.input"].read()
    out["spawning.test.body"] = [len(body), hashlib.sha1(body).hexdigest()]
    out["spawning.test.fast"] = FAST
    data = json.dumps(out, sort_keys=True).encode()   # ensure_ascii: latin-1 values as \u00XX
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
