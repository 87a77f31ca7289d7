"""One WSGI app with many endpoints, for the core HTTP/WSGI tests (tests/wsgi/,
tests/core/test_http_core.py).

Endpoints under /v/ run wrapped in wsgiref.validate.validator with its warnings turned into
errors, so any PEP 3333 violation on our side becomes a 500 the tests see.
"""

import hashlib
import itertools
import json
import os
import tempfile
import time
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

SEEN: list[str] = []   # paths this worker's app has seen (tests check nothing invalid got here)


def _text(start_response, body: bytes, status: str = "200 OK", extra=()):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra])
    return [body]


def env_app(environ, start_response):
    out = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
    out["wsgi.input.type"] = type(environ["wsgi.input"]).__name__
    body = json.dumps(out, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def mutate_app(environ, start_response):
    """env_app, then vandalises its environ: the next identical request must not see any of it."""
    result = env_app(environ, start_response)
    environ["spawning.test.mark"] = "dirty"
    environ["PATH_INFO"] = "/changed"
    environ.pop("HTTP_HOST", None)
    return result


COUNTER_HEADERS = [("Content-Type", "text/plain"), ("X-Count", "0")]


_UNIQUE = itertools.count()


def unique_app(environ, start_response):
    """A new header list, so a new registered head, on every request; the body repeats the
    header's number, so that a response sent with another request's head shows."""
    n = str(next(_UNIQUE))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-N", n), ("Content-Length", str(len(n)))])
    return [n.encode()]


def counter_app(environ, start_response):
    """Passes the same list object every time, changed in place: each response must carry the
    list as it is now."""
    n = int(COUNTER_HEADERS[1][1]) + 1
    COUNTER_HEADERS[1] = ("X-Count", str(n))
    if environ["QUERY_STRING"] == "list-items":
        COUNTER_HEADERS[0] = ["Content-Type", "text/plain"]   # lists where tuples belong
    start_response("200 OK", COUNTER_HEADERS)
    return [b"counted"]


STASHED: list = []


def stash_app(environ, start_response):
    """Keeps its write() callable past the end of its request (an app bug): /stale uses it."""
    STASHED[:] = [start_response("200 OK", [("Content-Type", "text/plain")])]
    return [b"stashed"]


def stale_app(environ, start_response):
    """Calls a write() kept from an earlier request: it must fail here, and send nothing."""
    try:
        STASHED[0](b"LEAKED")
        outcome = "wrote"
    except Exception as e:   # noqa: BLE001 - reported to the test
        outcome = type(e).__name__
    return _text(start_response, outcome.encode())


def sleep_app(environ, start_response):
    time.sleep(float(environ["QUERY_STRING"] or 1))
    return _text(start_response, b"slept\n")


def spin_app(environ, start_response):
    """Computes for QUERY_STRING seconds (default 0.3 ms), holding the GIL: a busy app."""
    end = time.perf_counter() + float(environ["QUERY_STRING"] or 0.0003)
    while time.perf_counter() < end:
        pass
    return _text(start_response, b"spun\n")


def echo_app(environ, start_response):
    data = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(data)))])
    return [data]


def readn_app(environ, start_response):
    """One wsgi.input.read(n) (n from ?n=): answers how many bytes it got and how many the
    body had left after it (read to the end), as "got left"."""
    n = int(environ.get("QUERY_STRING", "").partition("n=")[2] or 0)
    inp = environ["wsgi.input"]
    got = len(inp.read(n))
    left = len(inp.read()) if "rest" in environ["QUERY_STRING"] else -1
    return _text(start_response, f"{got} {left}".encode())


def redirect_app(environ, start_response):
    """Location from the decoded query string: an app that trusts its input."""
    from urllib.parse import unquote
    start_response("302 Found", [("Location", unquote(environ["QUERY_STRING"]))])
    return [b""]


def rawstatus_app(environ, start_response):
    from urllib.parse import unquote
    start_response(unquote(environ["QUERY_STRING"]), [("Content-Type", "text/plain")])
    return [b"body"]


ENDLESS = {"iterations": 0, "closed": 0}


def endless_app(environ, start_response):
    """Content-Length 5, then an endless body: the server must stop iterating (PEP 3333)."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])

    def body():
        try:
            while True:
                ENDLESS["iterations"] += 1
                yield b"xxx"
        finally:
            ENDLESS["closed"] += 1
    return body()


def endless_count_app(environ, start_response):
    return _text(start_response, json.dumps(ENDLESS).encode())


def strbody_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["not bytes"]


def late_read_app(environ, start_response):
    """Starts its response, then reads the body: no 100 Continue may go out after the head."""
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "20")])
    write(b"0123456789")
    data = environ["wsgi.input"].read()
    return [b"%010d" % len(data)]


def lines_app(environ, start_response):
    inp = environ["wsgi.input"]
    first = inp.readline()
    limited = inp.readline(3)
    rest_lines = inp.readlines()
    body = json.dumps({"first": first.decode(), "limited": limited.decode(),
                       "rest": [x.decode() for x in rest_lines]}).encode()
    return _text(start_response, body)


def iter_app(environ, start_response):
    lines = [line.decode() for line in environ["wsgi.input"]]
    return _text(start_response, json.dumps(lines).encode())


def hash_app(environ, start_response):
    """Reads the body in 1 MiB pieces (memory stays bounded) and answers its size and sha256."""
    h = hashlib.sha256()
    n = 0
    inp = environ["wsgi.input"]
    while True:
        chunk = inp.read(1 << 20)
        if not chunk:
            break
        n += len(chunk)
        h.update(chunk)
    return _text(start_response, f"{n} {h.hexdigest()}".encode())


def stream_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(5):
        yield f"chunk {i}\n".encode()


def big_app(environ, start_response):
    """100 MiB (or ?mb=N) generated piece by piece: unknown length, so chunked on HTTP/1.1."""
    mb = int(environ.get("QUERY_STRING", "").partition("mb=")[2] or 100)
    piece = bytes(range(256)) * 4096   # 1 MiB
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for _ in range(mb):
        yield piece


def blob_app(environ, start_response):
    """One big bytes object (?mb=N): the one-crossing fast path with more than a socket takes."""
    mb = int(environ.get("QUERY_STRING", "").partition("mb=")[2] or 8)
    return _text(start_response, b"b" * (mb << 20))


def write_app(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"directly ")
    return [b"then returned\n"]


def error_app(environ, start_response):
    raise RuntimeError("secret-traceback-marker")


def exit_app(environ, start_response):
    """An app that calls sys.exit() in a request (a BaseException, not an Exception)."""
    raise SystemExit("exit-marker")


def error_after_start_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first part\n"
    raise RuntimeError("failed mid-response")


BAD_HEADERS = {
    "": [("X-Evil", "a\r\nSet-Cookie: injected=1")],
    "triple": [("X-Evil", "a", "Set-Cookie"), ("injected=1",)],   # pairs misaligned if flattened
    "bytes": [(b"X-Bytes", b"1")],
}


def bad_header_app(environ, start_response):
    start_response("200 OK", BAD_HEADERS[environ["QUERY_STRING"]])
    return [b"should not be sent\n"]


def status_app(environ, start_response):
    """/status/CODE answers CODE with a body; ?cl adds its Content-Length as apps often do."""
    code = environ["PATH_INFO"].rsplit("/", 1)[1]
    body = b"this body must not be sent"
    headers = [("X-Code", code)]
    if environ.get("QUERY_STRING") == "cl":
        headers.append(("Content-Length", str(len(body))))
    start_response(f"{code} Whatever", headers)
    return [body]


def file_app(environ, start_response):
    size = int(environ.get("QUERY_STRING", "").partition("size=")[2] or 5_000_000)
    path = os.path.join(tempfile.gettempdir(), f"spawning-file-{size}.bin")
    if not os.path.exists(path):
        with open(path + ".tmp", "wb") as f:
            f.write(hashlib.sha256(b"seed").digest() * (size // 32) + b"x" * (size % 32))
        os.replace(path + ".tmp", path)
    f = open(path, "rb")  # noqa: SIM115 -- closed by the server through the wrapper
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    wrapper = environ["wsgi.file_wrapper"]
    if "sub=1" in environ.get("QUERY_STRING", ""):   # a subclass of it is one too
        wrapper = type("SubWrapper", (wrapper,), {})
    return wrapper(f, 65536)


class _Closing:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __iter__(self):
        yield b"closing body\n"

    def close(self) -> None:
        if not self.marker:   # asked without ?marker=...: nothing to leave behind
            return
        # Written aside and renamed: the test may look between a plain open() and its write.
        with open(self.marker + ".tmp", "w") as f:
            f.write("closed")
        os.replace(self.marker + ".tmp", self.marker)


def close_app(environ, start_response):
    marker = environ.get("QUERY_STRING", "").partition("marker=")[2]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Closing(marker)


def seen_app(environ, start_response):
    return _text(start_response, json.dumps(SEEN).encode())


PIECE = b"p" * (16 << 10)


def piece_app(environ, start_response):
    """16 KiB for every request, and nothing recorded: a flood of small requests that this answers
    fills the socket's buffers fast, and the worker's growth is the server's (SEEN, which
    ``application`` appends to, grows by one str a request on the Python path)."""
    return _text(start_response, PIECE)


def hello_app(environ, start_response):
    return _text(start_response, f"hello {environ['PATH_INFO']}\n".encode())


ROUTES = {
    "env": env_app, "echo": echo_app, "readn": readn_app, "lines": lines_app, "iter": iter_app,
    "hash": hash_app, "redirect": redirect_app, "rawstatus": rawstatus_app, "endless": endless_app,
    "endless-count": endless_count_app, "strbody": strbody_app, "late-read": late_read_app,
    "stream": stream_app, "big": big_app, "blob": blob_app, "write": write_app, "error": error_app,
    "exit": exit_app, "error-after-start": error_after_start_app, "bad-header": bad_header_app,
    "status": status_app,
    "file": file_app, "close": close_app, "seen": seen_app, "mutate": mutate_app,
    "counter": counter_app, "unique": unique_app, "sleep": sleep_app, "spin": spin_app,
    "stash": stash_app,
    "stale": stale_app,
}
VALIDATED = {name: validator(app) for name, app in ROUTES.items()}


def application(environ, start_response):
    path = environ["PATH_INFO"]
    SEEN.append(path)
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "v" and parts[2] in VALIDATED:
        return VALIDATED[parts[2]](environ, start_response)
    if len(parts) > 1 and parts[1] in ROUTES:
        return ROUTES[parts[1]](environ, start_response)
    return hello_app(environ, start_response)
