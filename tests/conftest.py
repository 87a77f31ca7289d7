"""Shared fixtures: run a real ``python -m spawning`` on loopback and drive load against it.

``spawn`` (a fixture) starts a server as a real subprocess on a free 127.0.0.1 port and stops it by
its pid at teardown (and any of its workers still alive, by their pids). Readiness comes from the
server's own systemd-style notification socket (``NOTIFY_SOCKET``): ``READY=1`` means every worker of
the first generation has loaded the app. Typical use::

    def test_hello(spawn):
        server = spawn("hello.application", "-s", "2")
        status, headers, body = server.get("/")

Applications live in ``tests/apps`` (on ``PYTHONPATH`` of every server started here).

Load: ``run_load(port, seconds)`` drives keep-alive GETs with wrk when it is installed, else with a
thread pool of ``http.client`` connections, and returns counts of requests, socket errors and
non-2xx answers. Every loop is bounded in time.

``Browser`` is one client as a browser is: a single keep-alive connection and a cookie jar, for
end-to-end sessions against real frameworks (tests/test_frameworks.py, tests/test_django.py).
"""

from __future__ import annotations

import http.client
import http.cookies
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


# The sanitizer job (.github/workflows/tests.yml) preloads libasan into the interpreter, so the
# servers run under ASan: their RSS then includes ASan's quarantine of freed memory, and tools
# the tests start (ps, chromium, clang's fuzzer) must not inherit the preload.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


# For tests whose point is a bound on the worker's memory.
rss_bound = pytest.mark.skipif(UNDER_ASAN, reason="under ASan, RSS holds its quarantine of freed memory")

# Under ASan/UBSan the server runs several times slower; time limits in tests are multiplied by this
# (SPAWNING_TEST_TIME_SCALE overrides it, for a slow machine).
TIME_SCALE = float(os.environ.get("SPAWNING_TEST_TIME_SCALE") or (4.0 if UNDER_ASAN else 1.0))


def scaled(seconds: float) -> float:
    """A test's time limit, scaled for the sanitizer build (see TIME_SCALE)."""
    return seconds * TIME_SCALE


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               what: str = "") -> Any:
    """Poll ``predicate`` until it returns a true value, and return that value.

    The way a test waits for something to happen, instead of a fixed ``sleep``: it returns as soon
    as the condition holds and fails with AssertionError after ``timeout`` seconds (scaled under
    ASan), naming ``what`` it waited for.
    """
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        time.sleep(interval)


def wait_started(path: Path, count: int = 1, timeout: float = 10.0) -> None:
    """Waits until ``count`` requests have entered the app: the test apps that call
    ``tests/apps/started.mark()`` append a line to ``$SPAWNING_TEST_STARTED`` (``path``) as a
    request reaches them. What a test waits for when a request must be in flight."""
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= count, timeout,
               what=f"{count} request{'' if count == 1 else 's'} in the app")


def foreign_env(**extra: str) -> dict[str, str]:
    """The environment for a tool that is not the server: without the sanitizer preload."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(extra)
    return env


def build_sources() -> list[str]:
    """spawning/_build.py's SOURCES (paths under csrc/), read without running the cffi build."""
    import ast
    tree = ast.parse((ROOT / "spawning" / "_build.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SOURCES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("spawning/_build.py has no SOURCES list")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_response(f, method: str = "GET", whole: bool = True) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length response from a socket's file (a HEAD response: no
    body). With ``whole`` false a body cut short by the close is returned as it came."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            raise ConnectionError(f"closed after {head!r}")
        head += line
    if method == "HEAD":
        return head, b""
    length = int(next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
                      if k.lower() == b"content-length"))
    body = f.read(length)
    assert not whole or len(body) == length, "short body"
    return head, body


def http_request(port: int, path: str = "/", method: str = "GET", timeout: float = 5.0,
                 host: str = "127.0.0.1", headers: dict[str, str] | None = None,
                 body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, wait_close: bool = True) -> bytes:
    """Sends data on a fresh connection and returns everything read until close (or timeout);
    with ``wait_close`` false, only until the end of a response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
            if not wait_close and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def http_get(port: int, path: str, method: str = "GET", body: bytes | None = None,
             headers: dict | None = None,
             conn: http.client.HTTPConnection | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    """One request, on ``conn`` (kept open) or a fresh connection: (the response, its body)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r, data


def read_head(f) -> bytes:
    """A response head from a socket's file, without its blank line."""
    lines = []
    while True:
        line = f.readline()
        assert line, "connection closed before the end of the head"
        if line == b"\r\n":
            return b"".join(lines)
        lines.append(line)


def run_clients(srv: Any, client: Callable[..., None], args: list, join_s: float) -> None:
    """Runs client(*a) in a thread for each a in args, joins them, then stops the server."""
    try:
        threads = [threading.Thread(target=client, args=a) for a in args]
        for t in threads:
            t.start()
        for t in threads:
            t.join(join_s)
    finally:
        srv.stop()


def workers_rss(server: Any) -> int:
    """The resident memory of a server's workers, in bytes."""
    return sum(psutil.Process(pid).memory_info().rss for pid in server.workers())


def wait_http_status(port: int, timeout: float = 10.0) -> int:
    """Polls GET / until the server answers (returns the status) or timeout passes (returns 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return http_request(port)[0]
        except OSError:
            time.sleep(0.1)
    return 0


class SpawningProcess:
    """A running ``python -m spawning`` (see the module docstring)."""

    def __init__(self, argv: list[str], port: int, workdir: Path, env: dict[str, str],
                 cwd: Path | None = None) -> None:
        self.port = port
        self.workdir = workdir
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.notify_path = str(workdir / "notify.sock")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(self.notify_path)
        self._notify.settimeout(0.2)
        self.notifications: list[str] = []
        self._consumed = 0
        self._notified = threading.Condition()
        self._closing = False
        # Read notifications as they come, as systemd does: the server must never wait on us.
        self._reader = threading.Thread(target=self._read_notifications, daemon=True)
        self._reader.start()
        env = dict(env)
        env["NOTIFY_SOCKET"] = self.notify_path
        self.argv = [sys.executable, "-m", "spawning", *argv]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=env, cwd=str(cwd or ROOT))
        self.pid = self.proc.pid
        self._seen_workers: set[int] = set()

    # -- observing ----------------------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def _read_notifications(self) -> None:
        while not self._closing:
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._notified:
                self.notifications.append(message)
                self._notified.notify_all()

    def wait_notify(self, prefix: str = "READY=1", timeout: float = 15.0) -> str:
        """Waits for the next notification (not yet waited for) starting with ``prefix``; fails if
        the server exits first."""
        deadline = time.monotonic() + timeout
        with self._notified:
            while True:
                while self._consumed < len(self.notifications):
                    message = self.notifications[self._consumed]
                    self._consumed += 1
                    if message.startswith(prefix):
                        return message
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode} before {prefix}: "
                                         f"{self.stderr[-3000:]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {prefix} within {timeout} s; stderr: {self.stderr[-3000:]}")
                self._notified.wait(min(remaining, 0.1))

    def workers(self) -> list[int]:
        """Pids of the controller's live child processes (its workers), oldest first."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        pids = []
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
            except psutil.Error:
                continue
        self._seen_workers.update(pids)
        return pids

    def get(self, path: str = "/", **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.port, path, **kw)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0,
                   interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    # -- controlling --------------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``; also kills leftover workers by pid."""
        self.workers()
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        for pid in self._seen_workers:
            try:
                proc = psutil.Process(pid)
                # Only if it is still one of ours (the pid may have been reused since).
                if any("spawning" in part for part in proc.cmdline()):
                    proc.kill()
            except psutil.Error:
                continue
        self._closing = True
        self._reader.join(2)
        self._notify.close()
        return self.proc.returncode


def start_server(*args: str, port: int | None = None, env: dict[str, str] | None = None,
                 cwd: Path | None = None, wait: bool = True, access_log: str = "/dev/null",
                 extra_path: list[str] | None = None, timeout: float = 15.0) -> SpawningProcess:
    """Starts ``python -m spawning`` with ``args`` on 127.0.0.1 (plus ``-p PORT``)."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="sp-"))
    environ = dict(os.environ)
    paths = [*(extra_path or []), str(APPS), str(ROOT)]
    if environ.get("PYTHONPATH"):
        paths.append(environ["PYTHONPATH"])
    environ["PYTHONPATH"] = os.pathsep.join(paths)
    environ.update(env or {})
    argv = ["-i", "127.0.0.1", "-p", str(port), "-l", access_log, *args]
    proc = SpawningProcess(argv, port, workdir, environ, cwd)
    if wait:
        try:
            proc.wait_notify("READY=1", timeout)
        except BaseException:
            proc.stop()
            raise
    return proc


@pytest.fixture
def spawn() -> Iterator[Callable[..., SpawningProcess]]:
    """A factory that starts servers (``start_server``) and stops every one at teardown."""
    started: list[SpawningProcess] = []

    def factory(*args: str, **kw: Any) -> SpawningProcess:
        proc = start_server(*args, **kw)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()
        shutil.rmtree(proc.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def core_server() -> Iterator[SpawningProcess]:
    """One server (1 process, 4 threads) serving tests/apps/core_app.py for the whole module:
    tests/wsgi's environ, handler, input and response tests share one per file."""
    proc = start_server("-s", "1", "-t", "4", "core_app.application")
    yield proc
    proc.stop()


# ---- load ------------------------------------------------------------------------------------------


def _parse_wrk(text: str) -> dict[str, int]:
    result = {"requests": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in", text)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        for key, value in zip(("connect", "read", "write", "timeout"), m.groups()):
            result[key] = int(value)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        result["non2xx"] = int(m.group(1))
    return result


class PyLoad:
    """Keep-alive GET load from threads using http.client; counts failures by kind."""

    def __init__(self, port: int, path: str = "/", connections: int = 8,
                 check: Callable[[int, bytes], None] | None = None) -> None:
        self.port = port
        self.path = path
        self.connections = connections
        self.check = check
        self.requests = 0
        self.non2xx = 0
        self.errors: list[str] = []
        self.bodies: set[bytes] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                with self._lock:
                    self.requests += 1
                    if not 200 <= resp.status < 400:
                        self.non2xx += 1
                    self.bodies.add(body)
                if self.check:
                    self.check(resp.status, body)
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure a client would see counts
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def start(self) -> PyLoad:
        for _ in range(self.connections):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> PyLoad:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self

    def result(self) -> dict[str, Any]:
        return {"requests": self.requests, "non2xx": self.non2xx, "errors": len(self.errors),
                "error_kinds": sorted(set(self.errors))[:10]}


def run_load(port: int, seconds: float, connections: int = 16, threads: int = 2,
             path: str = "/", during: Callable[[], None] | None = None,
             use_wrk: bool | None = None) -> dict[str, Any]:
    """Drives GET load for ``seconds`` (wrk if installed, else PyLoad). ``during`` runs in this thread
    meanwhile (e.g. sends signals) and must return within ``seconds``. Returns counts:
    requests, errors (connect+read+write+timeout), non2xx, and the raw output."""
    wrk = shutil.which("wrk") if use_wrk is not False else None
    if wrk:
        proc = subprocess.Popen([wrk, f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s",
                                 "--timeout", "5s", f"http://127.0.0.1:{port}{path}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            if during:
                during()
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result: dict[str, Any] = dict(_parse_wrk(out))
        result["errors"] = result["connect"] + result["read"] + result["write"] + result["timeout"]
        result["tool"] = "wrk"
        result["output"] = out
        return result
    load = PyLoad(port, path, connections).start()
    deadline = time.monotonic() + seconds
    try:
        if during:
            during()
        time.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        load.stop()
    result = load.result()
    result["tool"] = "python"
    result["output"] = repr(result)
    return result


# ---- a browser's connection --------------------------------------------------------------------------


class Browser:
    """One client as a browser is one: a single keep-alive ``http.client`` connection and a cookie
    jar. A response that closes a kept connection, or a reconnect, fails the request (with
    ``keepalive=False`` every response must close and the next request reconnects)."""

    def __init__(self, port: int, timeout: float = 5.0, keepalive: bool = True) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.keepalive = keepalive
        self.cookies: dict[str, str] = {}
        self.connections = 0
        self.requests = 0

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.conn.sock is None:
            self.conn.connect()
            self.connections += 1
        self.conn.request(method, path, body=body, headers=headers)
        self.requests += 1
        resp = self.conn.getresponse()
        data = resp.read()
        for line in resp.msg.get_all("Set-Cookie") or []:
            for name, morsel in http.cookies.SimpleCookie(line).items():
                if morsel["max-age"] == "0":     # how a server deletes a cookie
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        assert resp.will_close is not self.keepalive, (method, path, resp.getheaders())
        return resp, data

    def follow(self, resp: http.client.HTTPResponse) -> tuple[http.client.HTTPResponse, bytes]:
        """GETs a redirect's Location (on this connection, whatever host it names)."""
        assert 300 <= resp.status < 400, resp.status
        parts = urllib.parse.urlsplit(resp.getheader("Location", ""))
        return self.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))

    def close(self) -> None:
        self.conn.close()
