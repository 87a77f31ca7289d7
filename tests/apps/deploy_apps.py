"""Applications for the health, shutdown and deployment tests (tests/status/test_health.py,
tests/test_shutdown_progress.py, tests/test_deploy.py)."""

from __future__ import annotations

import json
import os
import time


def echo(environ, start_response):
    """Says which path it saw and what a proxy told it, as JSON: a health path answered by the
    server never reaches it."""
    keys = ("PATH_INFO", "REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "HTTP_X_FORWARDED_FOR",
            "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT",
            "HTTP_X_REAL_IP", "SERVER_PORT")
    body = json.dumps({"app": True, **{k: environ.get(k) for k in keys}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def slow(environ, start_response):
    """Sleeps ?s seconds (time.sleep: cooperative under --threads 0), then answers."""
    query = dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&") if p)
    time.sleep(float(query.get("s", "1")))
    body = b"done\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _mark(what: str) -> None:
    path = os.environ.get("SPAWNING_TEST_MARK")
    if path:
        with open(path, "a") as f:
            f.write(what + "\n")


def streams(environ, start_response):
    """/sse: an endless event stream; /poll: a long poll that waits 60 s. Each writes to the file
    $SPAWNING_TEST_MARK what ended it."""
    from spawning import green

    if environ["PATH_INFO"] == "/poll":
        try:
            green.sleep(60)
        except GeneratorExit:
            _mark("poll GeneratorExit")
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"nothing new\n"]

    def events():
        try:
            n = 0
            while True:
                yield f"data: {n}\n\n".encode()
                n += 1
                green.sleep(0.2)
        except GeneratorExit:
            _mark("sse GeneratorExit")
            raise

    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    return events()


def blocks_hub(environ, start_response):
    """Green mode: waits cooperatively for a second (the heartbeats report it in flight), then
    spins on the CPU for 30 s: the hub, and with it the worker's signal handling, stops."""
    from spawning import green

    green.sleep(1.0)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pass
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return [b""]
