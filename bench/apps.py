"""The WSGI applications the benchmark serves (the same callables for every server).

- ``hello``: b"Hello, world!\\n" with Content-Type and Content-Length.
- ``big``: a 64 KiB response body (one bytes object, Content-Length set).
- ``echo``: reads ``wsgi.input`` fully (16 KiB POST bodies in the benchmark) and returns it.
- ``sleep``: waits 100 ms with ``time.sleep`` then answers like ``hello``. Under a green server
  that monkey-patches ``time`` (spawning ``--threads 0``, gunicorn's gevent worker) the wait is
  cooperative.
- ``form``: reads a urlencoded form body (``wsgi.input``, CONTENT_LENGTH) and answers like
  ``hello`` once it holds the fields it expects.
- ``closeiter``: answers like a framework does: an iterable object with ``close()`` (never a
  list) holding one chunk, and six headers.
- ``django_view`` / ``flask_view``: a real Django project's view and a real Flask view
  (bench/frameworks.py), made on first use.
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


def form(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    ok = len(body) == length and body.startswith(b"csrfmiddlewaretoken=")
    start_response("200 OK" if ok else "400 Bad Request", list(HELLO_HEADERS))
    return [HELLO]


class Body:
    """What Django's HttpResponse and werkzeug's Response are to a server: an iterable of bytes
    with close(), which PEP 3333 says the server must call."""

    __slots__ = ("chunks",)

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        global CLOSED
        CLOSED += 1
        self.chunks = ()


CLOSED = 0   # close() calls so far: GET /__closed tells whether the server calls it at all


CLOSEITER_HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(HELLO))),
                     ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
                     ("Cross-Origin-Opener-Policy", "same-origin"), ("X-Frame-Options", "DENY")]


def closeiter(environ, start_response):
    if environ.get("PATH_INFO") == "/__closed":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(CLOSED).encode()]
    start_response("200 OK", list(CLOSEITER_HEADERS))
    return Body([HELLO])


_made = {}


def timed(app):
    """The app, with the CPU time its thread spends inside it added up (the call, the iteration
    of its response and close()): GET /__apptime answers "nanoseconds requests" (bench/overhead.py)."""
    import threading
    from time import thread_time_ns
    lock = threading.Lock()
    total = [0, 0]

    class Timed:
        def __init__(self, result, spent):
            self.result, self.spent = result, spent

        def __iter__(self):
            t = thread_time_ns()
            try:
                chunks = list(self.result)
            finally:
                with lock:   # counted here: some servers never call close()
                    total[0] += self.spent + thread_time_ns() - t
                    total[1] += 1
            return iter(chunks)

        def close(self):
            t = thread_time_ns()
            try:
                if hasattr(self.result, "close"):
                    self.result.close()
            finally:
                with lock:
                    total[0] += thread_time_ns() - t

    def wrapper(environ, start_response):
        if environ["PATH_INFO"] == "/__apptime":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"%d %d" % tuple(total)]
        t = thread_time_ns()
        result = app(environ, start_response)
        return Timed(result, thread_time_ns() - t)

    return wrapper


def __getattr__(name):
    # The framework apps are made on first use: the other scenarios import neither framework.
    timed_app = name.startswith("timed_")
    base = name[len("timed_"):] if timed_app else name
    if base in ("django_view", "flask_view") or (timed_app and base == "closeiter"):
        if name not in _made:
            if base == "closeiter":
                app = closeiter
            else:
                import frameworks
                app = frameworks.django_app() if base == "django_view" else frameworks.flask_app()
            _made[name] = timed(app) if timed_app else app
        return _made[name]
    raise AttributeError(name)
