"""Apps for tests/green/ (test_dispatch.py, test_monkey.py, test_hub.py), run with --threads 0;
monkey patching on unless said otherwise.

- sleep_app: time.sleep(0.01) (patched: cooperative) then answers.
- fetch_app: fetches $GREEN_BACKEND with urllib.request and answers with what it got.
- sse_app: server-sent events every 50 ms forever; when the client goes away the generator is
  closed and "closed <n>" is appended to $GREEN_SSE_LOG.
- info_app: reports what the worker patched and whether it runs cooperatively.
"""

import contextvars
import json
import os
import threading
import time
import urllib.request

from spawning import green


def _text(start_response, body, ctype="text/plain"):
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def sleep_app(environ, start_response):
    time.sleep(0.01)
    return _text(start_response, b"slept\n")


def fetch_app(environ, start_response):
    with urllib.request.urlopen(os.environ["GREEN_BACKEND"], timeout=10) as r:
        data = r.read()
    return _text(start_response, b"got " + data)


def sse_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    log = os.environ["GREEN_SSE_LOG"]

    def events():
        n = 0
        try:
            while True:
                yield f"data: tick {n}\n\n".encode()
                n += 1
                time.sleep(0.05)
        except GeneratorExit:
            with open(log, "a") as f:
                f.write(f"closed {n}\n")
            raise

    return events()


def info_app(environ, start_response):
    from spawning import monkey

    body = json.dumps({
        "cooperative": green.cooperative(),
        "patched": monkey.patched(),
        "lock": type(threading.Lock()).__module__,
        "multithread": environ["wsgi.multithread"],
    }).encode()
    return _text(start_response, body, "application/json")


_LOCAL = threading.local()
_VAR = contextvars.ContextVar("spawning_test_var", default="unset")


def leftovers_app(environ, start_response):
    """Reports the thread-local and context variable a previous request on this green thread
    may have left behind, then sets both."""
    seen = {"local": getattr(_LOCAL, "value", "unset"), "var": _VAR.get()}
    _LOCAL.value = _VAR.get() + "-local"
    _VAR.set(environ["QUERY_STRING"])
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    if "stream" in environ["QUERY_STRING"]:
        return iter([body])     # not a list: the response goes the general way
    return [body]


def application(environ, start_response):
    path = environ["PATH_INFO"]
    app = {"/sleep": sleep_app, "/fetch": fetch_app, "/sse": sse_app,
           "/leftovers": leftovers_app}.get(path, info_app)
    return app(environ, start_response)
