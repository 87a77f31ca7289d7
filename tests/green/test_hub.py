"""spawning.green.hub: the loop, its timers and fd waits, run in this process (``green.run``: a hub
of its own, no listener), and the reuse of request greenlets in a real green-mode server."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from conftest import scaled

from spawning import green


def test_sleepers_wake_in_deadline_order() -> None:
    woke: list[float] = []

    def sleeper(seconds: float) -> None:
        green.sleep(seconds)
        woke.append(seconds)

    def main() -> None:
        threads = [green.spawn(sleeper, s) for s in (0.03, 0.01, 0.02)]
        for t in threads:
            t.join()

    green.run(main)
    assert woke == [0.01, 0.02, 0.03]


def test_run_returns_the_result_and_knows_it_runs() -> None:
    def main() -> tuple[bool, bool]:
        return green.hub_running(), green.cooperative()

    assert not green.hub_running() and not green.cooperative()
    assert green.run(main) == (True, True)
    assert not green.hub_running()


def test_a_second_hub_in_one_process_is_refused() -> None:
    def main() -> None:
        green.run(lambda: None)

    with pytest.raises(RuntimeError, match="already runs"):
        green.run(main)


def test_wait_read_parks_only_the_caller() -> None:
    """A green thread waits on a socket (the C loop's sp_watch) while another keeps ticking and
    then writes to it."""
    a, b = socket.socketpair()
    ticks = [0]

    def reader() -> bytes:
        green.wait_read(a.fileno(), timeout=scaled(5))
        return a.recv(100)

    def main() -> bytes:
        t = green.spawn(reader)
        for _ in range(10):
            green.sleep(0.001)
            ticks[0] += 1
        b.sendall(b"ping")
        return t.join(scaled(5))

    try:
        assert green.run(main) == b"ping"
        assert ticks[0] == 10
    finally:
        a.close()
        b.close()


def test_wait_read_times_out() -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(TimeoutError):
            green.run(green.wait_read, a.fileno(), 0.02)
    finally:
        a.close()
        b.close()


def test_a_thread_wakes_the_hub() -> None:
    """A real OS thread hands work to the hub (call_threadsafe, through the loop's wake pipe): an
    Event it sets wakes the green thread that waits on it at once, not at the next timer."""
    event = green.Event()

    def main() -> float:
        threading.Thread(target=lambda: (time.sleep(0.05), event.set())).start()
        t0 = time.monotonic()
        assert event.wait(scaled(5))
        return time.monotonic() - t0

    assert green.run(main) < scaled(1.0)   # the hub polls for at most 1 s when nothing is due


def test_requests_leave_no_locals_or_context_behind(spawn):
    """Request greenlets are reused: what one request stores in a thread-local or a ContextVar
    must not be seen by the next request the same greenlet runs, whichever way the response
    went (a one-element list, answered in one crossing, or an iterator, streamed)."""
    server = spawn("-s", "1", "-t", "0", "green_apps.application")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for i in range(20):
            conn.request("GET", f"/leftovers?r{i}" + ("-stream" if i % 3 == 1 else ""))
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read()) == {"local": "unset", "var": "unset"}
    finally:
        conn.close()


def test_batched_repeated_requests_leave_nothing_behind(spawn):
    """The same, for the requests a greenlet takes from its hub's batch itself, which for a
    connection's repeated requests happens in C (csrc/py/runner.c): many keep-alive clients at once,
    each repeating its request byte for byte, so that polls bring several at a time."""
    server = spawn("-s", "1", "-t", "0", "green_apps.application")
    bad: list = []
    done = [0]

    def client(k: int) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            f = s.makefile("rb")
            for _ in range(30):
                s.sendall(f"GET /leftovers?c{k} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                length = 0
                while (line := f.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                seen = json.loads(f.read(length))
                if seen != {"local": "unset", "var": "unset"}:
                    bad.append(seen)
                done[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert done[0] == 24 * 30 and not bad, (done[0], bad[:3])


def _green_server(app, **options):
    """A green-mode spawning Server for app in this process, on a fresh loopback listener:
    (server, listening socket). serve() runs it; stop() ends it. options: more Settings."""
    from spawning.config import Settings
    from spawning.server import Server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return Server(app, Settings(threads=0, processes=1, **options), [sock]), sock


def test_idle_request_greenlets_end_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """Request greenlets wait for their next request in the hub's idle list (on CPython, inside
    the C path: csrc/py/runner.c, green_park). GreenletExit thrown in where one waits (a kill(),
    or the greenlet collected once its hub is gone) must end it as a clean exit, not be logged as
    an internal error of the request handler. A real green server in this process, real sockets."""
    from greenlet import GreenletExit  # type: ignore[import-untyped]

    def hello(environ: dict, start_response) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"hi\n"]

    srv, sock = _green_server(hello)
    idle: list = []
    hubs: list = []
    done = threading.Event()

    def client() -> None:
        try:
            conns = [socket.create_connection(sock.getsockname(), timeout=10) for _ in range(8)]
            for _ in range(5):
                for c in conns:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                for c in conns:
                    buf = b""
                    while not buf.endswith(b"hi\n"):
                        buf += c.recv(4096)
            hubs.append(green.hub._hub)
            for c in conns:
                c.close()
        finally:
            done.set()
            srv.stop()

    t = threading.Thread(target=client)
    t.start()
    with caplog.at_level("ERROR", logger="spawning"):
        srv.serve()       # green mode: the hub runs in this thread until stop()
        t.join(scaled(10))
        # Read once the hub is done: until then the last greenlet to finish a batch may be
        # polling in the hub's place (csrc/py/hub.c), out of the idle list.
        idle.extend(hubs[0].idle if hubs and hubs[0] is not None else ())
        assert done.is_set() and idle, "no request greenlet went idle"
        assert all(g for g in idle)     # parked, not ended
        for g in idle:                  # what collecting them does, made certain
            g.throw(GreenletExit)
        assert all(g.dead for g in idle)
        idle.clear()
    sock.close()
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


@pytest.mark.parametrize("what", ["timers", "thread calls"])
def test_timers_and_thread_calls_run_while_requests_flow(what: str) -> None:
    """On CPython the hub's turn is C's (csrc/py/hub.c): it polls and hands out request batches
    without coming back to Python while requests keep coming. A timer due (a green thread's
    sleep) or a call from another OS thread must still run meanwhile, not wait for a pause in
    the traffic. A real green server in this process; clients in a thread, real sockets. Each
    case alone: either brings the hub back to Python, where the other runs too."""
    from spawning.wsgi.response import FAST

    def hello(environ: dict, start_response) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"hi\n"]

    srv, sock = _green_server(hello, access_log_file="/dev/null")
    ticks: list[float] = []
    calls: list[float] = []
    load = {"start": 0.0, "end": 0.0, "requests": 0, "c_turn": None}

    def ticker() -> None:
        while True:
            green.sleep(0.01)
            ticks.append(time.monotonic())

    if what == "timers":
        srv.hub_tasks.append(ticker)

    def client() -> None:
        try:
            conns = [socket.create_connection(sock.getsockname(), timeout=10) for _ in range(16)]
            deadline = time.monotonic() + scaled(5)
            while green.hub._hub is None and time.monotonic() < deadline:   # serve() starts it
                time.sleep(0.01)
            hub = green.hub._hub
            load["c_turn"] = hub is not None and hub._cloop is not None
            load["start"] = time.monotonic()
            while time.monotonic() - load["start"] < 1.0:
                for c in conns:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 4)
                if hub is not None and what == "thread calls":
                    hub.call_threadsafe(lambda: calls.append(time.monotonic()))
                for c in conns:
                    buf = b""
                    while buf.count(b"hi\n") < 4:
                        buf += c.recv(65536)
                load["requests"] += 4 * len(conns)
            load["end"] = time.monotonic()
            for c in conns:
                c.close()
        finally:
            srv.stop()

    t = threading.Thread(target=client)
    t.start()
    srv.serve()
    t.join(scaled(10))
    sock.close()
    assert load["end"] and load["requests"] > 100, load
    assert load["c_turn"] == FAST, load
    if what == "timers":
        during = [x for x in ticks if load["start"] <= x <= load["end"]]
        # 100 ticks at most in the second of traffic: far fewer means the timers waited for it.
        assert len(during) >= 20, (len(during), load)
    else:
        assert len([x for x in calls if load["start"] <= x <= load["end"]]) >= 10, (len(calls), load)


def test_stop_from_a_request_ends_the_hub_while_requests_flow() -> None:
    """The hub's C turn does not call the server's finish test before each poll until stop() or
    drain() says it may be true (green.Hub.watch_finish, spawning.server): a stop() made where
    the C turn goes on by itself (here in a request, as an app or a signal handler may) must
    still end serve() while requests keep coming, rather than when the traffic pauses. A real
    green server in this process; clients in a thread, real sockets."""
    stopped: list[float] = []

    def app(environ: dict, start_response) -> list[bytes]:
        if environ["PATH_INFO"] == "/stop" and not stopped:
            stopped.append(time.monotonic())
            srv.stop()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"hi\n"]

    srv, sock = _green_server(app, access_log_file="/dev/null")
    served = threading.Event()

    def client() -> None:
        conns = [socket.create_connection(sock.getsockname(), timeout=2) for _ in range(8)]
        deadline = time.monotonic() + scaled(8)
        sent = 0
        try:
            while not served.is_set() and time.monotonic() < deadline:
                for i, c in enumerate(conns):
                    path = "/stop" if i == 0 and sent > 200 else "/"
                    c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode() * 4)
                for c in conns:
                    buf = b""
                    while buf.count(b"hi\n") < 4:
                        more = c.recv(65536)
                        if not more:
                            return
                        buf += more
                sent += 4 * len(conns)
        except OSError:     # the stopped server closed the connections
            pass
        finally:
            for c in conns:
                c.close()

    t = threading.Thread(target=client)
    t.start()
    srv.serve()
    ended = time.monotonic()
    served.set()
    t.join(scaled(10))
    sock.close()
    assert stopped, "the stop request never ran"
    assert ended - stopped[0] < scaled(1.0), ended - stopped[0]
