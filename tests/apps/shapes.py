"""The response-shape matrix's app (tests/test_response_matrix.py): one server answers every case,
chosen by the query string.

``GET /m?s=STATUS&b=SHAPE&d=MS&t=TOKEN``: waits MS milliseconds (``time.sleep``: in green mode a
cooperative sleep, so another greenlet answers meanwhile), calls ``start_response`` with STATUS
and the headers SHAPE declares, and answers with the body in SHAPE's form (``SHAPES``). The app
does what a naive app does: the same headers and body whatever the method and status (the server
must leave the body out of HEAD, 204 and 304 answers). Shapes that close something (an iterable
with ``close()``, a file under ``wsgi.file_wrapper``) record the close as an empty file named
``closed-TOKEN`` in ``$SHAPES_DIR``: a side channel that does not touch the response and that
every worker process of a server shares.

``GET /ping`` answers ``pong``; ``GET /path`` names the request path the worker runs (``c``:
csrc/py/runner.c answers the common shapes, ``python``: spawning/wsgi/ does everything).

The test imports this module too, for ``SHAPES`` and the bodies it must expect.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

STATUSES = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 301: "301 Moved Permanently",
            302: "302 Found", 304: "304 Not Modified", 404: "404 Not Found",
            500: "500 Internal Server Error"}


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes in which a misplaced, lost or repeated piece shows: numbered lines."""
    out = b"".join(b"%07d:%d\n" % (i, seed) for i in range(n // 10 + 1))
    return out[:n]


SMALL = b"spawning response-shape matrix\n"
CHUNKS = [b"chunk %03d;" % i for i in range(100)]            # many small pieces
BIG64 = pattern(100 * 1024 + 7, 1)                          # over 64 KiB (the lending bounds)
BIG1M = pattern(1536 * 1024 + 3, 2)                         # over 1 MiB (backpressure)
FILE_DATA = pattern(150 * 1024 + 11, 3)                     # a real file, sent with sendfile(2)
MEM_DATA = pattern(70 * 1024 + 5, 4)                        # a BytesIO under file_wrapper
SERVER_ERROR = b"Internal Server Error\n"                   # the server's own 500 (spawning/wsgi/response.py)

_state: dict[str, str] = {}


def _dir() -> str:
    """$SHAPES_DIR (the test's), else a directory of our own; made on first use, so that the test
    process, which imports this module for its tables, writes nothing."""
    if "dir" not in _state:
        _state["dir"] = os.environ.get("SHAPES_DIR") or tempfile.mkdtemp(prefix="shapes-")
    return _state["dir"]


def _real_file() -> str:
    """A regular file holding FILE_DATA, one per worker process."""
    if _state.get("pid") != str(os.getpid()):
        path = os.path.join(_dir(), f"file-{os.getpid()}.bin")
        with open(path, "wb") as f:
            f.write(FILE_DATA)
        _state["file"], _state["pid"] = path, str(os.getpid())
    return _state["file"]


def _record_close(token: str) -> None:
    if token:
        with open(os.path.join(_dir(), f"closed-{token}"), "wb"):
            pass


class Closing:
    """An iterable that is not a list or a generator, with a close() the server must call (as a
    Django HttpResponse is)."""

    def __init__(self, parts: list[bytes], token: str) -> None:
        self.parts = parts
        self.token = token

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.parts)

    def close(self) -> None:
        _record_close(self.token)


class RecordingFile(io.FileIO):
    """A file whose close() is recorded, but not its close at garbage collection (IOBase's
    finalizer calls close(): a server that forgot to would go unnoticed)."""

    token = ""

    def close(self) -> None:
        if not self.closed:
            _record_close(self.token)
        super().close()

    def __del__(self) -> None:
        io.FileIO.close(self)


class RecordingBytesIO(io.BytesIO):
    """The same for a BytesIO."""

    token = ""

    def close(self) -> None:
        if not self.closed:
            _record_close(self.token)
        super().close()

    def __del__(self) -> None:
        io.BytesIO.close(self)


def _gen(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts


def _gen_raise(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts
    raise RuntimeError("shapes: the generator breaks mid-stream (expected by the test)")


def _gen_raise_first() -> Iterator[bytes]:
    raise RuntimeError("shapes: the generator breaks before its first piece (expected by the test)")
    yield b"never"   # unreachable: makes this function a generator


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# A shape: (body the app means, Content-Length the app declares or None, maker). The maker gets
# (write, token) after start_response and returns the app's iterable; what it writes plus what
# the iterable yields is the body. Shapes whose name starts with "raise" break mid-stream.
Maker = Callable[[Callable[[bytes], Any], Any, str], Any]


def _write_list(write: Callable[[bytes], Any], env: Any, token: str) -> Any:
    write(SMALL)
    return []


def _write_only(write: Callable[[bytes], Any], env: Any, token: str) -> Any:
    for c in CHUNKS[:10]:
        write(c)
    return ()


def _write_empty(write: Callable[[bytes], Any], env: Any, token: str) -> Any:
    write(b"")
    return []


def _write_then_one(write: Callable[[bytes], Any], env: Any, token: str) -> Any:
    write(SMALL[:10])
    return [SMALL[10:]]


def _file_real(write: Callable[[bytes], Any], env: Any, token: str) -> Any:
    f = RecordingFile(_real_file(), "rb")
    f.token = token
    return env["wsgi.file_wrapper"](f)


def _file_bytesio(write: Callable[[bytes], Any], env: Any, token: str) -> Any:
    f = RecordingBytesIO(MEM_DATA)
    f.token = token
    return env["wsgi.file_wrapper"](f, 32 * 1024)


SHAPES: dict[str, tuple[bytes, int | None, Maker]] = {
    "list_empty": (b"", None, lambda w, e, t: []),
    "list_empty_cl0": (b"", 0, lambda w, e, t: []),
    "list_empty_bytes": (b"", None, lambda w, e, t: [b""]),
    "gen_empty": (b"", None, lambda w, e, t: _gen([])),
    "gen_empty_bytes_cl0": (b"", 0, lambda w, e, t: _gen([b""])),
    "closing_empty_cl0": (b"", 0, lambda w, e, t: Closing([b""], t)),
    "closing_body": (SMALL, len(SMALL), lambda w, e, t: Closing([SMALL[:5], SMALL[5:]], t)),
    "one": (SMALL, len(SMALL), lambda w, e, t: [SMALL]),
    "one_nolen": (SMALL, None, lambda w, e, t: [SMALL]),
    "chunks_len": (b"".join(CHUNKS), len(b"".join(CHUNKS)), lambda w, e, t: _gen(CHUNKS)),
    "chunks_nolen": (b"".join(CHUNKS), None, lambda w, e, t: _gen(CHUNKS)),
    "chunks_list_nolen": (b"".join(CHUNKS), None, lambda w, e, t: list(CHUNKS)),
    "write_list": (SMALL, len(SMALL), _write_list),
    "write_only": (b"".join(CHUNKS[:10]), None, _write_only),
    "write_empty": (b"", None, _write_empty),
    "write_then_one": (SMALL, len(SMALL), _write_then_one),
    "file_real": (FILE_DATA, None, _file_real),
    "file_bytesio": (MEM_DATA, None, _file_bytesio),
    "raise_mid": (SMALL * 2, 2 * len(SMALL), lambda w, e, t: _gen_raise([SMALL])),
    "raise_mid_nolen": (SMALL * 2, None, lambda w, e, t: _gen_raise([SMALL])),
    "raise_first": (b"", None, lambda w, e, t: _gen_raise_first()),
    "big64_list": (BIG64, len(BIG64), lambda w, e, t: [BIG64]),
    "big64_gen_nolen": (BIG64, None, lambda w, e, t: _gen(_split(BIG64, 40000))),
    "big1m_list_nolen": (BIG1M, None, lambda w, e, t: [BIG1M]),
    "big1m_gen": (BIG1M, len(BIG1M), lambda w, e, t: _gen(_split(BIG1M, 64 * 1024))),
}

# Shapes whose close() the server must call (recorded as closed-TOKEN).
CLOSES = {"closing_empty_cl0", "closing_body", "file_real", "file_bytesio"}


def path_name() -> str:
    from spawning.wsgi.response import FAST
    return "c" if FAST else "python"


def application(environ: dict, start_response: Callable) -> Any:
    path = environ["PATH_INFO"]
    if path == "/ping":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"pong"]
    if path == "/path":
        body = path_name().encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    q = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    status = STATUSES[int(q["s"])]
    _, length, make = SHAPES[q["b"]]
    delay = int(q.get("d", "0"))
    if delay:
        time.sleep(delay / 1000)
    headers = [("Content-Type", "text/plain")]
    if status[:2] == "30" and status[:3] != "304":
        headers.append(("Location", "/next"))
    if length is not None:
        headers.append(("Content-Length", str(length)))
    write = start_response(status, headers)
    return make(write, environ, q.get("t", ""))
