"""The response-shape matrix (issue 22, section 4): every response arrives, framed right, in every
mode and on both request paths.

One server (tests/apps/shapes.py) answers every case, chosen by the query string: statuses 200,
201, 204, 301, 302, 304, 404, 500 x the body shapes of ``shapes.SHAPES`` (empty lists and
generators, an iterable with close(), one piece, many pieces with and without Content-Length,
write(), wsgi.file_wrapper over a file and a BytesIO, generators that break, bodies over 64 KiB
and over 1 MiB) x GET and HEAD x no delay and 5 ms before start_response (so that another thread
or greenlet answers meanwhile). Twelve keep-alive clients walk a share of the cases each, over raw
sockets, in ``-t 1``, ``-t 4``, ``-t 0`` and ``-s 2``, on the C path (csrc/py/runner.c) and on the
Python path (SPAWNING_NO_PYFAST=1 in the server's environment).

Every response must arrive within DEADLINE seconds with exactly the bytes the app meant and the
right framing: no body and no Transfer-Encoding on 204, 304 and HEAD answers (and no
Content-Length on a 204); on the others the app's Content-Length, else a computed one or chunks.
A generator that breaks after the head went out gets its connection closed (the client sees a
short body then EOF, never a hang), and the client goes on on a new connection; every other
response leaves the connection open for the next request, except that every 16th request says
``Connection: close`` and must get it, then EOF. close() of the app's iterable is called
(shapes.py records it in a file). A second test sends every case once to a server of each path and
compares the raw bytes, Date aside.

This is the test that a response with no body on the wire (an empty iterable, 204, 304, HEAD)
never arrived under: its head was formatted but never flushed (csrc/conn/api.c, finish_locked). With
that flush taken out, every server here loses responses. A failing run stays bounded: a client
stops after MAX_LOST_PER_CLIENT responses it waited out.

Each test collects every mismatch of its server and asserts once, with the list.
"""

from __future__ import annotations

import random
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import APPS, UNDER_ASAN

sys.path.insert(0, str(APPS))
import shapes  # the app's own definitions: one source for the bytes expected
from spawning._core import lib

# Whether this build has the C path at all: a build with SPAWNING_NO_PYFAST=1 leaves it out, and
# then only the Python path can be tested.
C_PATH_BUILT = lib.sp_py_setup() == 0

DEADLINE = 5.0                # seconds for each response, from its request's last byte
CLIENTS = 12
WALK_LIMIT = 120.0 if UNDER_ASAN else 60.0   # a whole server's walk, however many responses hang
MAX_LOST_PER_CLIENT = 2       # a client that waited out this many responses stops walking
METHODS = ("GET", "HEAD")
DELAYS = (0, 5)               # ms before start_response

MODES = {
    "t1": ("-s", "1", "-t", "1"),
    "t4": ("-s", "1", "-t", "4"),
    "green": ("-s", "1", "-t", "0"),
    "s2": ("-s", "2"),
}
# The value "" overrides a SPAWNING_NO_PYFAST the test run itself may have in its environment.
PATHS = {"c": {"SPAWNING_NO_PYFAST": ""}, "python": {"SPAWNING_NO_PYFAST": "1"}}


@dataclass(frozen=True)
class Case:
    status: int
    shape: str
    method: str
    delay: int

    def target(self, token: str) -> str:
        return f"/m?s={self.status}&b={self.shape}&d={self.delay}&t={token}"

    def __str__(self) -> str:
        return f"{self.method} {self.status} {self.shape} d={self.delay}"


CASES = [Case(s, b, m, d) for s in shapes.STATUSES for b in shapes.SHAPES for m in METHODS
         for d in DELAYS]


# ---- a raw HTTP/1.1 client -----------------------------------------------------------------------


class Timeout(Exception):
    """No more bytes before the response's deadline."""


@dataclass
class Response:
    raw: bytes = b""
    status_line: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False    # the framing said where the body ends, and it all came
    eof: bool = False         # the server closed the connection while we read this response
    problems: list[str] = field(default_factory=list)   # framing errors seen while parsing

    @property
    def status(self) -> int:
        try:
            return int(self.status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            return 0

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


class Conn:
    """One kept connection; read_response() parses one response and keeps its raw bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.buf = bytearray()
        self.taken = 0          # bytes of buf consumed by the response being read
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def send(self, method: str, target: str, close: bool = False) -> None:
        extra = "Connection: close\r\n" if close else ""
        self.sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: matrix\r\n{extra}\r\n".encode())

    def expect_eof(self) -> str:
        """After a response that closes: '' once the server has closed, else what is wrong."""
        until = time.monotonic() + DEADLINE
        try:
            while self._more(until):
                pass
        except Timeout:
            return f"the server did not close the connection within {DEADLINE} s"
        if self.buf:
            return f"{len(self.buf)} bytes after the response: {bytes(self.buf[:100])!r}"
        return ""

    def _more(self, until: float) -> bool:
        if self.eof:
            return False
        left = until - time.monotonic()
        if left <= 0:
            raise Timeout
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 18)
        except TimeoutError:
            raise Timeout from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _until(self, marker: bytes, until: float) -> bytes | None:
        while True:
            i = self.buf.find(marker, self.taken)
            if i >= 0:
                out = bytes(self.buf[self.taken:i + len(marker)])
                self.taken = i + len(marker)
                return out
            if not self._more(until):
                return None

    def _exact(self, n: int, until: float) -> bytes:
        while len(self.buf) - self.taken < n and self._more(until):
            pass
        out = bytes(self.buf[self.taken:self.taken + n])
        self.taken += len(out)
        return out

    def read_response(self, method: str) -> Response:
        """The next response; raises Timeout (with what came in the exception) past DEADLINE."""
        until = time.monotonic() + DEADLINE
        r = Response()
        try:
            self._read(r, method, until)
        except Timeout:
            raise Timeout(bytes(self.buf[:self.taken + 200])) from None
        finally:
            r.raw = bytes(self.buf[:self.taken])
            r.eof = self.eof
            del self.buf[:self.taken]
            self.taken = 0
        return r

    def _read(self, r: Response, method: str, until: float) -> None:
        head = self._until(b"\r\n\r\n", until)
        if head is None:
            r.problems.append("connection closed before a whole head"
                              + (f" (got {bytes(self.buf[:200])!r})" if self.buf else " (no byte)"))
            self.taken = len(self.buf)
            return
        lines = head.decode("latin-1").split("\r\n")[:-2]
        r.status_line = lines[0]
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                r.problems.append(f"malformed header line {line!r}")
            r.headers.append((name, value.strip()))
        code = r.status
        te = [v.lower() for v in r.header("transfer-encoding")]
        cl = r.header("content-length")
        if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
            r.complete = True       # no body, whatever the head says (RFC 9112 6.3)
        elif te:
            if te != ["chunked"]:
                r.problems.append(f"Transfer-Encoding {te}")
            if cl:
                r.problems.append("both Content-Length and Transfer-Encoding")
            self._chunked(r, until)
        elif cl:
            if len(cl) > 1:
                r.problems.append(f"Content-Length sent {len(cl)} times")
            n = int(cl[0])
            r.body = self._exact(n, until)
            r.complete = len(r.body) == n
        else:
            # Delimited by the close: legal, but never needed from an HTTP/1.1 server, and a
            # keep-alive client cannot tell it from a lost rest.
            r.problems.append("body with neither Content-Length nor chunked framing")
            while self._more(until):
                pass
            r.body = bytes(self.buf[self.taken:])
            self.taken = len(self.buf)

    def _chunked(self, r: Response, until: float) -> None:
        parts = []
        while True:
            line = self._until(b"\r\n", until)
            if line is None:
                break
            try:
                size = int(line.split(b";")[0], 16)
            except ValueError:
                r.problems.append(f"bad chunk size line {line[:40]!r}")
                break
            if size == 0:
                while True:    # trailer section, up to its empty line
                    t = self._until(b"\r\n", until)
                    if t is None or t == b"\r\n":
                        break
                r.complete = t is not None
                break
            data = self._exact(size, until)
            parts.append(data)
            if len(data) < size:
                break
            end = self._exact(2, until)
            if end != b"\r\n":
                if len(end) == 2:
                    r.problems.append(f"chunk not followed by CRLF but {end!r}")
                break
        r.body = b"".join(parts)


# ---- what each case must get ---------------------------------------------------------------------


def bodyless(case: Case) -> bool:
    return case.method == "HEAD" or case.status in (204, 304)


def breaks(case: Case) -> bool:
    """The generator breaks after the head went out: the connection must be closed."""
    return case.shape.startswith("raise_mid") and not bodyless(case)


def asks_close(token: str) -> bool:
    """Every 16th request says Connection: close (the server's lingering close, and no body)."""
    return int(token) % 16 == 7


def check(case: Case, r: Response, asked_close: bool = False) -> list[str]:
    """What is wrong with r as the answer to case, asked with or without Connection: close
    (empty: nothing)."""
    bad = list(r.problems)
    if not r.status_line:
        return bad or ["no response"]
    meant, app_length, _ = shapes.SHAPES[case.shape]
    status = 500 if case.shape == "raise_first" else case.status
    reason = "500 Internal Server Error" if case.shape == "raise_first" else shapes.STATUSES[status]
    if r.status_line != f"HTTP/1.1 {reason}":
        bad.append(f"status line {r.status_line!r}")
    if case.shape == "raise_first":        # nothing went out yet: the server's own 500
        meant, app_length = shapes.SERVER_ERROR, len(shapes.SERVER_ERROR)
    else:
        if r.header("content-type") != ["text/plain"]:
            bad.append(f"Content-Type {r.header('content-type')}")
        if status in (301, 302) and r.header("location") != ["/next"]:
            bad.append(f"Location {r.header('location')}")
    cl = r.header("content-length")
    te = r.header("transfer-encoding")
    closing = any("close" in v.lower() for v in r.header("connection"))
    if b"Traceback" in r.body:
        bad.append("a traceback in the body")
    if bodyless(case):
        if te:
            bad.append(f"Transfer-Encoding {te} on a response without a body")
        if status == 204 and cl:
            bad.append(f"Content-Length {cl} on a 204")
        # What GET would have been told: the app's length, or the one the server knows.
        if cl and cl != [str(app_length if app_length is not None else len(meant))]:
            bad.append(f"Content-Length {cl}, the app's body is {len(meant)} bytes"
                       f" (declared {app_length})")
    elif breaks(case):
        if not r.eof:
            bad.append("a broken stream left the connection open")
        if r.complete:
            bad.append("a broken stream looks complete")
        if not meant.startswith(r.body) or len(r.body) >= len(meant):
            bad.append(f"broken stream body {r.body[:80]!r}... ({len(r.body)} bytes) is not a"
                       f" short prefix of the app's")
        if app_length is not None and cl != [str(app_length)]:
            bad.append(f"Content-Length {cl}, the app declared {app_length}")
        return bad
    else:
        if app_length is not None and (cl != [str(app_length)] or te):
            bad.append(f"framing CL={cl} TE={te}, the app declared Content-Length {app_length}")
        if app_length is None and not (cl == [str(len(meant))] and not te
                                       or te == ["chunked"] and not cl):
            bad.append(f"framing CL={cl} TE={te} for a {len(meant)}-byte body of unknown length")
        if not r.complete:
            bad.append(f"incomplete body ({len(r.body)} of {len(meant)} bytes)")
        if r.body != meant:
            bad.append(f"body differs: {len(r.body)} bytes, expected {len(meant)}"
                       f" (first {r.body[:60]!r})")
    if closing != asked_close:
        bad.append("Connection: close on a response that should keep the connection" if closing
                   else "no Connection: close on the answer to a request that asked for it")
    if r.eof and not r.complete:
        bad.append("connection closed inside the response")
    return bad


def is_closed_after(case: Case, r: Response, asked_close: bool = False) -> bool:
    return (r.eof or asked_close or breaks(case)
            or any("close" in v.lower() for v in r.header("connection")))


# ---- the walk ----------------------------------------------------------------------------------


def walk(port: int, cases: list[tuple[Case, str]], report: Report, stop_at: float) -> None:
    """Runs cases (case, token) in order on one kept connection, reconnecting only where a
    connection must close; ends with a /ping on the connection left."""
    conn: Conn | None = None
    lost = 0
    prev = "none"
    for i, (case, token) in enumerate([*cases, (None, "")]):
        if lost >= MAX_LOST_PER_CLIENT or time.monotonic() > stop_at:
            why = f"{lost} responses lost on its connections" if lost else "the walk ran out of time"
            report.add(2, f"a client stopped with {len(cases) + 1 - i} cases left: {why}")
            break
        method = case.method if case else "GET"
        name = str(case) if case else "GET /ping"
        try:
            if conn is None:
                conn = Conn(port)
                prev = "none (new connection)"
            asked_close = bool(case) and asks_close(token)
            conn.send(method, case.target(token) if case else "/ping", asked_close)
            r = conn.read_response(method)
        except Timeout as e:
            report.add(0, f"{name}: no whole response within {DEADLINE} s (after {prev});"
                          f" got {e.args[0][:300]!r}")
            lost += 1
            conn.close()   # type: ignore[union-attr]
            conn = None
            continue
        except OSError as e:
            report.add(1, f"{name}: {type(e).__name__}: {e} (after {prev})")
            if conn is not None:
                conn.close()
            conn = None
            continue
        if case is None:
            if (r.status, r.body) != (200, b"pong") or r.problems:
                report.add(1, f"the closing /ping got {r.raw[:300]!r} (after {prev}) {r.problems}")
        else:
            report.answered(token)
            bad = check(case, r, asked_close)
            if asked_close and not breaks(case) and not r.eof and (eof := conn.expect_eof()):
                bad.append(eof)
            if bad:
                report.add(1, f"{case}{' (Connection: close)' if asked_close else ''}"
                              f" (after {prev}): " + "; ".join(bad) + f"\n      head: {r.raw[:300]!r}")
            if is_closed_after(case, r, asked_close):
                conn.close()
                conn = None
        prev = name
    if conn is not None:
        conn.close()


class Report:
    """The problems of one server's run, by rank (0: lost responses, 1: wrong ones, 2: what could
    not be checked, 3: close() not called), for one readable assertion."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.problems: list[tuple[int, str]] = []
        self.tokens: set[str] = set()

    def add(self, rank: int, message: str) -> None:
        with self.lock:
            self.problems.append((rank, message))

    def answered(self, token: str) -> None:
        with self.lock:
            self.tokens.add(token)

    def text(self, limit: int = 60) -> str:
        lines = [m for _, m in sorted(self.problems)]
        more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
        return "\n  ".join(lines[:limit]) + more


def path_of(port: int) -> str:
    c = Conn(port)
    try:
        c.send("GET", "/path")
        return c.read_response("GET").body.decode()
    finally:
        c.close()


def start(spawn, mode: str, path: str, tmp: Path):
    if path == "c" and not C_PATH_BUILT:
        pytest.skip("built without the C path (SPAWNING_NO_PYFAST=1 at build time)")
    env = {**PATHS[path], "SHAPES_DIR": str(tmp)}
    server = spawn(*MODES[mode], "shapes.application", env=env)
    assert path_of(server.port) == path, "the server does not run the path asked for"
    return server


def unexpected_errors(stderr: str) -> list[str]:
    """Tracebacks in the server's log other than the app's own planned ones, and crashes."""
    out = []
    for block in re.split(r"(?=Traceback \(most recent call last\))", stderr)[1:]:
        last = [ln for ln in block.splitlines() if ln and not ln.startswith((" ", "\t"))][1:2]
        if not (last and last[0].startswith("RuntimeError: shapes:")):
            out.append(block[:1500])
    for word in ("AddressSanitizer", "runtime error:", "Segmentation fault", "double free",
                 "replacing it"):     # the last: the controller's word for a worker that died
        if word in stderr:
            out.append(f"{word!r} in the server's stderr")
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_every_shape_arrives_framed_right(spawn, tmp_path, mode, path):
    server = start(spawn, mode, path, tmp_path)
    work = [(case, f"{n}") for n, case in enumerate(CASES)]
    random.Random(22).shuffle(work)     # each connection gets a mix of shapes, methods, statuses
    report = Report()
    stop_at = time.monotonic() + WALK_LIMIT
    threads = [threading.Thread(target=walk, args=(server.port, work[k::CLIENTS], report, stop_at),
                                daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WALK_LIMIT + 2 * DEADLINE)
    assert not any(t.is_alive() for t in threads), "a client never finished"

    # close() of the app's iterable, for every such case answered: recorded when the request is
    # finished, a moment after the client has its response.
    want = {token for case, token in work if case.shape in shapes.CLOSES} & report.tokens
    missing: set[str] = set()

    def all_closed() -> bool:
        nonlocal missing
        missing = want - {p.name[len("closed-"):] for p in tmp_path.glob("closed-*")}
        return not missing

    server.wait_until(all_closed, timeout=DEADLINE)
    by_token = {token: case for case, token in work}
    for token in missing:
        report.add(3, f"{by_token[token]}: close() of the app's iterable was not called")
    for e in unexpected_errors(server.stderr):
        report.add(1, f"server log: {e}")
    assert not report.problems, (f"{len(report.problems)} problems in mode {mode} on the {path}"
                                 f" path ({len(report.tokens)} of {len(CASES)} cases answered):"
                                 f"\n  {report.text()}")


_DATE = re.compile(rb"\r\nDate: [^\r\n]*")


def raw_answers(port: int) -> tuple[dict[Case, bytes], list[str]]:
    """Every case once, in order, on one kept connection: its raw response bytes, Date aside;
    and the cases that got no response in time (past MAX_LOST_PER_CLIENT of them, it stops)."""
    out: dict[Case, bytes] = {}
    lost: list[str] = []
    conn: Conn | None = None
    for n, case in enumerate(CASES):
        if len(lost) >= MAX_LOST_PER_CLIENT:
            lost.append(f"... {len(CASES) - n} cases not run")
            break
        try:
            if conn is None:
                conn = Conn(port)
            conn.send(case.method, case.target(str(n)), asks_close(str(n)))
            r = conn.read_response(case.method)
        except (Timeout, OSError) as e:
            lost.append(f"{case}: {type(e).__name__} {e.args[0] if e.args else ''!r:.200}")
            if conn is not None:
                conn.close()
            conn = None
            continue
        if asks_close(str(n)) and not r.eof:
            r.eof = not conn.expect_eof()
        out[case] = _DATE.sub(b"", r.raw) + (b"<EOF>" if r.eof else b"")
        if is_closed_after(case, r, asks_close(str(n))):
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return out, lost


def test_c_and_python_paths_answer_alike(spawn, tmp_path):
    """Both paths answer every case with the same bytes (the Date header aside)."""
    answers = {}
    for path in PATHS:
        (tmp_path / path).mkdir()
        answers[path], lost = raw_answers(start(spawn, "t1", path, tmp_path / path).port)
        assert not lost, f"responses lost on the {path} path:\n  " + "\n  ".join(lost)
    differ = [f"{case}:\n      C:      {answers['c'][case][:400]!r}\n"
              f"      Python: {answers['python'][case][:400]!r}"
              for case in CASES if answers["c"][case] != answers["python"][case]]
    assert not differ, f"{len(differ)} of {len(CASES)} cases differ:\n  " + "\n  ".join(differ[:30])
