"""The WSGI applications the benchmark serves (the same callables for every server).

- ``hello``: b"Hello, world!\\n" with Content-Type and Content-Length.
- ``big``: a 64 KiB response body (one bytes object, Content-Length set).
- ``echo``: reads ``wsgi.input`` fully (16 KiB POST bodies in the benchmark) and returns it.
- ``sleep``: waits 100 ms with ``time.sleep`` then answers like ``hello``. Under a green server
  that monkey-patches ``time`` (spawning ``--threads 0``, gunicorn's gevent worker) the wait is
  cooperative.
"""

import time

HELLO = b"Hello, world!\n"
HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]

BIG = b"x" * 65536
BIG_HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))]


def hello(environ, start_response):
    start_response("200 OK", list(HELLO_HEADERS))
    return [HELLO]


def big(environ, start_response):
    start_response("200 OK", list(BIG_HEADERS))
    return [BIG]


def echo(environ, start_response):
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        parts = []
        remaining = length
        while remaining > 0:
            chunk = stream.read(min(remaining, 65536))
            if not chunk:
                break
            parts.append(chunk)
            remaining -= len(chunk)
        body = b"".join(parts)
    else:
        body = stream.read()
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def sleep(environ, start_response):
    time.sleep(0.1)
    start_response("200 OK", list(HELLO_HEADERS))
    return [HELLO]
