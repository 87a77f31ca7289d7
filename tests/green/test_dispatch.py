"""spawning.green.dispatch: green mode (--threads 0) serving, through real sockets against real
servers on 127.0.0.1.

The clients here are a single thread multiplexing non-blocking sockets with a selector
(``fan_out``), so thousands of concurrent requests cost the test process no threads.
"""

from __future__ import annotations

import http.server
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import free_port, http_request, rss_bound, scaled, wait_until

ROOT = Path(__file__).resolve().parents[2]
REQUEST = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Conn:
    __slots__ = ("buf", "done", "left", "out", "responses", "sock")

    def __init__(self, sock: socket.socket, requests: list[bytes]) -> None:
        self.sock = sock
        self.out = list(requests)
        self.buf = b""
        self.left = len(requests)
        self.done = False
        self.responses: list[bytes] = []


def _complete(buf: bytes) -> int:
    """Length of the first complete Content-Length response in buf, or 0."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = buf[:end].lower()
    i = head.find(b"content-length:")
    length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
    total = end + 4 + length
    return total if len(buf) >= total else 0


def open_conns(port: int, count: int, requests: list[bytes], sel: selectors.BaseSelector,
               batch: int = 500, deadline: float = 60.0) -> list[Conn]:
    """Opens ``count`` connections (``batch`` connects in flight at a time) and sends each its
    first request. Returns once every request is written."""
    conns: list[Conn] = []
    end = time.monotonic() + deadline
    pending = 0
    i = 0
    while i < count or pending:
        while i < count and pending < batch:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            c = Conn(s, requests)
            conns.append(c)
            sel.register(s, selectors.EVENT_WRITE, c)
            pending += 1
            i += 1
        for key, _ in sel.select(1.0):
            c = key.data
            c.sock.send(c.out.pop(0))
            sel.modify(c.sock, selectors.EVENT_READ, c)
            pending -= 1
        assert time.monotonic() < end, f"could not open {count} connections ({i} started)"
    return conns


def pump(sel: selectors.BaseSelector, conns: list[Conn], timeout: float) -> int:
    """Reads responses (sending each connection's next request after each) until all are done or
    ``timeout``. Returns the number of connections done."""
    end = time.monotonic() + timeout
    left = sum(1 for c in conns if not c.done)
    while left and time.monotonic() < end:
        for key, _ in sel.select(0.2):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                c.done = True
                left -= 1
                sel.unregister(c.sock)
                continue
            c.buf += data
            while (n := _complete(c.buf)):
                c.responses.append(c.buf[:n])
                c.buf = c.buf[n:]
                c.left -= 1
                if c.out:
                    c.sock.send(c.out.pop(0))
            if c.left == 0 and not c.done:
                c.done = True
                left -= 1
                sel.unregister(c.sock)
    return sum(1 for c in conns if c.done)


def fan_out(port: int, clients: int, requests: list[bytes], timeout: float = 30.0) -> tuple[float, list[Conn]]:
    """``clients`` connections each sending ``requests`` in turn (keep-alive). Returns (seconds
    from the first connect to the last response, connections)."""
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    conns = open_conns(port, clients, requests, sel)
    pump(sel, conns, timeout)
    elapsed = time.monotonic() - t0
    for c in conns:
        c.sock.close()
    sel.close()
    return elapsed, conns


def worker_pid(server) -> int:
    wait_until(lambda: len(server.workers()) == 1, 10, what="the worker")
    return server.workers()[0]


# ---- tests ---------------------------------------------------------------------------------------------


def test_hello_world_green(spawn):
    server = spawn("-s", "1", "-t", "0", "hello.application")
    status, _, body = server.get("/")
    assert status == 200 and body.startswith(b"hello from ")
    # keep-alive and several clients at once
    _, conns = fan_out(server.port, 50, [REQUEST % b"/"] * 20)
    assert all(len(c.responses) == 20 for c in conns)
    assert all(r.startswith(b"HTTP/1.1 200 OK") for c in conns for r in c.responses)


def test_gevent_refused(spawn):
    server = spawn("-s", "1", "-t", "0", "green_uses_gevent.application", wait=False)
    assert server.wait(15) != 0
    assert "gevent/eventlet monkey patching is not supported with --threads 0" in server.stderr


def test_request_body_in_pieces(spawn):
    """The body arrives slowly: the handler's greenlet parks on sp_req_wait between pieces while
    another request is served."""
    status_port = free_port()
    server = spawn("-s", "1", "-t", "0", "--status-port", str(status_port), "core_app.application")

    def arrived() -> bool:   # the worker's heartbeat (every second) reports the connection
        doc = json.loads(http_request(status_port, "/status.json")[2])
        return any(w["connections"] == 1 for w in doc["workers"])

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        wait_until(arrived, 10, 0.1, what="the worker holding the POST, waiting for the rest of its body")
        assert server.get("/hello/x")[0] == 200     # not blocked by the parked request
        s.sendall(b"world")
        data = b""
        while not _complete(data):
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"helloworld")


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_body_stalls_past_the_prebuffer(spawn, framing: str):
    """A body larger than the loop reads before the app runs (SP_PREBUFFER_MAX) that stalls half
    way: the app's greenlet has read what came and parks on sp_req_wait for the rest. With the
    poll backend a busy connection's read interest was off, so that wait was never woken and the
    client never got its answer (the hang test_timeouts.py's green large-body case found)."""
    server = spawn("-s", "1", "-t", "0", "core_app.application")
    first, rest = b"a" * 40000, b"b" * 40000
    if framing == "chunked":
        head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        part1, part2 = head + _chunked(first), _chunked(rest) + b"0\r\n\r\n"
    else:
        head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (len(first) + len(rest))
        part1, part2 = head + first, rest
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(part1)
        time.sleep(0.5)                               # the app has read `first` and waits
        assert server.get("/hello/x")[0] == 200      # the parked request blocks no one
        s.sendall(part2)
        data = b""
        while not _complete(data):
            chunk = s.recv(65536)
            assert chunk, data[:200]
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.partition(b"\r\n\r\n")[2] == first + rest


def test_unread_body_does_not_spin_the_hub(spawn):
    """While the app runs without reading its body, the bytes waiting in the socket wake no one:
    a level-triggered backend (poll) must not watch a busy connection for reading unless its
    greenlet waits for body bytes (csrc/conn/conn.h, conn_interest), or the hub would spin."""
    server = spawn("-s", "1", "-t", "0", "core_app.application")
    pid = worker_pid(server)
    body = b"x" * 40000    # more than the loop reads before the app runs: left in the socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /sleep?2 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (len(body) + 1000)
                  + body)
        time.sleep(0.3)
        before = psutil.Process(pid).cpu_times()
        time.sleep(1.2)
        after = psutil.Process(pid).cpu_times()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.5, f"the worker used {used:.2f} s of CPU in 1.2 s while its app slept"


@pytest.mark.parametrize("threads", ["0", "1"])
def test_reset_connection_does_not_spin_the_worker(spawn, threads: str):
    """A client that resets its connection while the app holds it: poll() reports the error on
    every call whatever the interest, so the poll backend reports it once and then leaves the fd
    out until its interest is set again (csrc/loop/be_poll.c, BE_HUP_SEEN); without that the
    worker spun for as long as the app ran. epoll and kqueue report it once by themselves."""
    server = spawn("-s", "1", "-t", threads, "core_app.application")
    pid = worker_pid(server)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /sleep?2 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.3)      # the app is asleep in the request
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()            # an RST, not a FIN
    time.sleep(0.1)
    before = psutil.Process(pid).cpu_times()
    time.sleep(1.2)
    after = psutil.Process(pid).cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.5, f"the worker used {used:.2f} s of CPU in 1.2 s while its app slept"
    # and it still serves, once the app is done with the dead connection
    status, _, _ = http_request(server.port, "/sleep?0", timeout=10)
    assert status == 200


def test_cooperative_sleep_200_clients(spawn):
    """200 concurrent clients, each 5 requests to an app that sleeps 10 ms: about 5 sleeps of
    wall time, not 1000."""
    server = spawn("-s", "1", "-t", "0", "green_apps.application")
    fan_out(server.port, 20, [REQUEST % b"/sleep"])   # warm up
    elapsed, conns = fan_out(server.port, 200, [REQUEST % b"/sleep"] * 5)
    print(f"200 clients x 5 requests of a 10 ms sleep: {elapsed:.3f} s")
    assert all(len(c.responses) == 5 for c in conns)
    assert all(b"slept" in r for c in conns for r in c.responses)
    assert elapsed < scaled(2.0)        # serially it would take 10 s


class _SlowBackend(http.server.BaseHTTPRequestHandler):
    delay = 0.5
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        time.sleep(self.delay)
        body = b"backend data\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Backend(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


@pytest.fixture
def backend():
    srv = _Backend(("127.0.0.1", 0), _SlowBackend)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/data"
    srv.shutdown()
    srv.server_close()


def test_urllib_fetch_200_clients(spawn, backend):
    """Each request fetches from a second server that takes 0.5 s per request, through
    urllib.request: 200 concurrent clients finish in about one fetch, not 200."""
    server = spawn("-s", "1", "-t", "0", "green_apps.application", env={"GREEN_BACKEND": backend})
    elapsed, conns = fan_out(server.port, 200, [REQUEST % b"/fetch"])
    print(f"200 clients fetching through urllib (0.5 s backend): {elapsed:.3f} s")
    assert all(len(c.responses) == 1 and c.responses[0].endswith(b"got backend data\n") for c in conns)
    assert elapsed < scaled(3.0)        # serially: 100 s


def test_sse_disconnect_closes_iterable(spawn, tmp_path: Path):
    log = tmp_path / "sse.log"
    server = spawn("-s", "1", "-t", "0", "green_apps.application", env={"GREEN_SSE_LOG": str(log)})
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(REQUEST % b"/sse")
    data = b""
    t0 = time.monotonic()
    while data.count(b"data: tick") < 3:
        chunk = s.recv(4096)
        assert chunk
        data += chunk
    # Three events 50 ms apart arrived while the response goes on: streamed, not buffered.
    assert time.monotonic() - t0 < scaled(2.0)
    assert b"Transfer-Encoding: chunked" in data and b"text/event-stream" in data
    s.close()
    wait_until(lambda: log.exists() and log.read_text(), 5, what="the app's log of the closed stream")
    assert log.read_text().startswith("closed "), "GeneratorExit never reached the app"
    assert server.get("/info")[0] == 200      # the worker goes on


@rss_bound
def test_10k_long_poll(spawn):
    """10,000 concurrent long-poll requests held by one worker, all released by one event."""
    n = 10_000
    limit = raise_fd_limit(n + 2000)
    if limit < n + 500:
        pytest.skip(f"RLIMIT_NOFILE is {limit}: cannot hold {n} client sockets")
    server = spawn("-s", "1", "-t", "0", "--max-connections", str(n + 1000), "green_longpoll.application")
    pid = worker_pid(server)
    rss_idle = psutil.Process(pid).memory_info().rss
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    conns = open_conns(server.port, n, [REQUEST % b"/wait"], sel)

    def waiting() -> int:
        return int(http_request(server.port, "/count")[2])

    wait_until(lambda: waiting() == n, 60, 0.2, what=f"{n} requests waiting")
    held = time.monotonic() - t0
    rss = psutil.Process(pid).memory_info().rss
    per_request = (rss - rss_idle) / n
    print(f"\n{n} long-poll requests held after {held:.2f} s; worker RSS {rss / 2**20:.1f} MiB "
          f"(idle {rss_idle / 2**20:.1f} MiB, {per_request / 1024:.1f} KiB per waiting request)")
    assert rss <= 150 * 2**20

    t_release = time.monotonic()
    assert http_request(server.port, "/release", method="POST")[2] == b"ok\n"
    done = pump(sel, conns, 30)
    released = time.monotonic() - t_release
    print(f"release -> all {done} answered: {released:.3f} s")
    for c in conns:
        c.sock.close()
    sel.close()
    assert done == n
    assert all(c.responses and c.responses[0].endswith(b"released\n") for c in conns)
    assert released < scaled(2.0)


def test_gevent_detected() -> None:
    """check_app_compat refuses a process where the app imported eventlet (or gevent)."""
    code = ("import sys, types; sys.modules['eventlet'] = types.ModuleType('eventlet');"
            "from spawning import green; green.check_app_compat()")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env,
                          check=False)
    assert proc.returncode != 0
    assert "gevent/eventlet monkey patching is not supported with --threads 0" in proc.stderr
