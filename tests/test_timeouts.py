"""Every timeout is off at 0, in C and in Python, in thread and in green mode (issue 22, 2.5).

One server per mode runs with every timeout at 0; each test is a client that a timeout, had 0 kept
any meaning but "off", would cut: a head sent slowly, a body that stalls, a reader that pauses, a
keep-alive connection left idle. Running out of file descriptors is here too: it pauses accepting,
and that must be logged and counted (issue 22, 3).
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import SpawningProcess, free_port, http_request, start_server

from spawning.status import command as status_mod

ALL_OFF = ("--header-timeout", "0", "--body-timeout", "0", "--send-timeout", "0",
           "--keepalive-timeout", "0", "--timeout", "0", "--defer-accept", "0")

MODES = {"threads": ("-t", "2"), "green": ("-t", "0")}


@pytest.fixture(scope="module", params=sorted(MODES))
def server(request: pytest.FixtureRequest) -> Iterator[SpawningProcess]:
    proc = start_server("limits_app.application", "-s", "1", *MODES[request.param], *ALL_OFF)
    yield proc
    proc.stop()
    shutil.rmtree(proc.workdir, ignore_errors=True)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, deadline: float = 15.0) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length response read from sock."""
    data = b""
    end = time.monotonic() + deadline
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < end, data
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        assert time.monotonic() < end, (head, len(body))
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(body)} of {length} body bytes"
        body += chunk
    return head, body


def test_header_timeout_0_a_slow_head_is_served(server: SpawningProcess) -> None:
    """--header-timeout 0 answered a head in progress with 408 at the first sweep."""
    head = b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\nConnection: close\r\n\r\n"
    with connect(server.port) as sock:
        for i in range(0, len(head), 10):   # about 2.5 s in all
            sock.sendall(head[i:i + 10])
            time.sleep(0.4)
        status_line, body = read_response(sock)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


def test_header_timeout_0_a_silent_connection_stays(server: SpawningProcess) -> None:
    """A new connection that says nothing is not closed by a default deadline either."""
    with connect(server.port) as sock:
        time.sleep(1.5)
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status_line, _ = read_response(sock)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


@pytest.mark.parametrize("size", [1000, 300_000], ids=["small-body", "large-body"])
def test_body_timeout_0_a_stalled_body_is_read(server: SpawningProcess, size: int) -> None:
    """--body-timeout 0 timed out at once in thread mode (the app's reads, and the small bodies
    the loop reads before the app runs: 408), and meant 60 s in green mode."""
    payload = b"b" * size
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % size + payload[: size // 2])
        time.sleep(2.0)
        sock.sendall(payload[size // 2:])
        status_line, body = read_response(sock)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    assert body == str(size).encode()


@pytest.mark.parametrize("connection", ["close", "keep-alive"])
def test_send_timeout_0_a_reader_that_pauses_gets_everything(server: SpawningProcess,
                                                             connection: str) -> None:
    """--send-timeout 0 closed a connection whose queued response the client was slow to take,
    at the first deadline that found output pending (the lingering close's, or keep-alive's)."""
    size = 16 << 20   # more than the socket buffers hold, so that much waits in the server
    with connect(server.port, timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\nConnection: %s\r\n\r\n"
                     % (size, connection.encode()))
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        time.sleep(6.0)   # past the keep-alive default (5 s) and the lingering close's 2 s
        received = len(first.partition(b"\r\n\r\n")[2])
        while received < size:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {received} of {size} bytes"
            received += len(chunk)
    assert received == size


def test_keepalive_timeout_0_an_idle_connection_stays(server: SpawningProcess) -> None:
    """--keepalive-timeout 0 closed an idle keep-alive connection at the next sweep."""
    with connect(server.port) as sock:
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        status_line, _ = read_response(sock)
        assert status_line.startswith(b"HTTP/1.1 200")
        time.sleep(1.5)
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        status_line, _ = read_response(sock)
        assert status_line.startswith(b"HTTP/1.1 200"), status_line


def test_timeout_0_a_long_request_is_not_killed(server: SpawningProcess) -> None:
    status, _, body = http_request(server.port, "/slow?s=2", timeout=10)
    assert status == 200 and body.startswith(b"slept")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_graceful_timeout_0_a_draining_worker_finishes_its_request(spawn, mode: str) -> None:
    """--graceful-timeout 0 killed a draining worker at once: now it means no limit."""
    import threading

    server = spawn("limits_app.application", "-s", "1", *MODES[mode], "--graceful-timeout", "0")
    result: list[object] = []
    client = threading.Thread(target=lambda: result.append(
        http_request(server.port, "/slow?s=2", timeout=15)))
    client.start()
    time.sleep(0.5)
    server.signal(signal.SIGHUP)   # a reload: the old worker drains
    client.join(20)
    assert result and result[0][0] == 200, (result, server.stderr[-2000:])
    assert "sending SIGTERM" not in server.stderr


def test_stream_grace_0_a_draining_green_worker_does_not_end_requests(spawn) -> None:
    """--stream-grace 0 threw GeneratorExit into every running request as soon as the worker
    started draining (a 503): 0 is off, so they run on under --graceful-timeout."""
    import threading

    server = spawn("limits_app.application", "-s", "1", "-t", "0", "--stream-grace", "0")
    result: list[object] = []
    client = threading.Thread(target=lambda: result.append(
        http_request(server.port, "/slow?s=2", timeout=15)))
    client.start()
    time.sleep(0.5)
    server.signal(signal.SIGHUP)   # a reload: the old worker drains
    client.join(20)
    assert result and result[0][0] == 200, (result, server.stderr[-2000:])


def test_timeouts_say_0_is_off_in_help() -> None:
    from spawning.config import option

    for name in ("header_timeout", "body_timeout", "send_timeout", "timeout", "max_body_size",
                 "max_memory", "max_worker_memory", "max_age", "max_requests", "status_port",
                 "shutdown_delay", "stream_grace"):
        assert "0 = off" in option(name).help or "0 = unlimited" in option(name).help, name
    for name in ("keepalive_timeout", "graceful_timeout"):
        assert "0 = no limit" in option(name).help, name


# ---- running out of file descriptors ---------------------------------------------------------------


def test_running_out_of_descriptors_is_logged_and_counted(spawn) -> None:
    """A worker out of descriptors pauses accepting: it says so (once per 10 s) and the status
    service counts it, in its JSON and in /metrics; once descriptors free up it accepts again."""
    status_port = free_port()
    server = spawn("limits_app.application", "-s", "1", "-t", "2", "--defer-accept", "0",
                   "--status-port", str(status_port), env={"SPAWNING_TEST_NOFILE": "64"})
    clients = []
    try:
        for _ in range(100):   # silent connections: each holds a descriptor in the worker
            clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        assert server.wait_until(lambda: "ran out of file descriptors" in server.stderr, 10), \
            server.stderr[-2000:]

        def counted() -> bool:
            doc = status_mod.fetch("127.0.0.1", status_port)
            return doc["totals"]["accept_pauses"] > 0 and doc["workers"][0]["accept_pauses"] > 0
        assert server.wait_until(counted, 10)
        assert server.stderr.count("ran out of file descriptors") == 1   # rate-limited
    finally:
        for sock in clients:
            sock.close()
    conn = socket.create_connection(("127.0.0.1", status_port), timeout=5)
    with conn:
        conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        metrics = b""
        while chunk := conn.recv(65536):
            metrics += chunk
    line = next(x for x in metrics.decode().splitlines() if x.startswith("spawning_accept_pauses_total"))
    assert float(line.split()[-1]) > 0
    assert server.wait_until(lambda: _answers(server.port), 10)


def _answers(port: int) -> bool:
    try:
        return http_request(port, "/pid", timeout=2)[0] == 200
    except OSError:
        return False
