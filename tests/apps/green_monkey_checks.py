"""Checks of spawning.green.monkey, run by tests/green/test_monkey.py in a fresh interpreter each
(``python green_monkey_checks.py NAME``): patching is process-wide, so it never happens inside
pytest's own process. Each check runs on a hub (``spawning.green.run``) unless it says otherwise,
raises AssertionError on failure and prints ``ok NAME`` on success.

A ``ticker`` green thread counts 5 ms ticks meanwhile: if anything blocked the hub, it misses them.
Time the hub's OS thread spent waiting for a CPU (a loaded machine, not a blocked hub) is not
counted against it.
"""

from __future__ import annotations

import sys
import time

from spawning import green
from spawning.green import monkey
from spawning.green.hub import _real_sleep

monkey.patch_all()

import concurrent.futures
import os
import queue
import select
import selectors
import socket
import ssl
import subprocess
import tempfile
import threading


def cpu_wait() -> float:
    """Seconds this OS thread has spent runnable but waiting for a CPU (the kernel's schedstat run
    delay), or 0.0 where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class Ticker:
    """Counts ticks of a 5 ms green sleep; ``assert_hub_free`` checks most of them happened.

    A hub blocked in a system call sleeps and one busy in a loop runs: both keep the time counted,
    and miss the ticks. Time the thread only waited for a CPU (other processes had them all) is
    taken off, or a loaded machine would read as a blocked hub."""

    def __init__(self) -> None:
        self.ticks = 0
        self.t0 = time.monotonic()
        self.wait0 = cpu_wait()
        self.thread = green.spawn(self._run)

    def _run(self) -> None:
        while True:
            time.sleep(0.005)
            self.ticks += 1

    def assert_hub_free(self) -> None:
        elapsed = time.monotonic() - self.t0
        waited = cpu_wait() - self.wait0
        expected = (elapsed - waited) / 0.005
        assert self.ticks >= expected * 0.4 - 2, \
            f"hub blocked: {self.ticks} ticks in {elapsed:.3f} s ({waited:.3f} s of it waiting for a CPU)"
        self.thread.kill()


def timed(fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    return time.monotonic() - t0, result


# ---- checks ---------------------------------------------------------------------------------------------


def check_sleep() -> None:
    tick = Ticker()
    elapsed, _ = timed(lambda: [t.join() for t in [green.spawn(time.sleep, 0.1) for _ in range(200)]])
    assert elapsed < 0.5, elapsed
    tick.assert_hub_free()


def check_socket_timeouts() -> None:
    tick = Ticker()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    assert isinstance(listener, monkey.GreenSocket)
    c = socket.create_connection(listener.getsockname(), timeout=0.2)
    assert c.gettimeout() == 0.2 and c.getblocking()
    server, _ = listener.accept()
    elapsed, _ = timed(lambda: _expect(TimeoutError, c.recv, 10))
    assert 0.15 < elapsed < 0.5, elapsed
    # non-blocking sockets keep their meaning
    c.setblocking(False)
    assert c.gettimeout() == 0.0
    _expect(BlockingIOError, c.recv, 10)
    c.settimeout(None)
    assert c.gettimeout() is None
    # makefile, sendall of a large buffer while the peer reads slowly, in two green threads
    data = os.urandom(4 << 20)

    def reader() -> bytes:
        f = server.makefile("rb")
        return f.read(len(data))

    r = green.spawn(reader)
    c.sendall(data)
    assert r.join() == data
    c.close()
    server.close()
    listener.close()
    tick.assert_hub_free()


def check_connect_refused_and_timeout() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    _expect(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", port), 1)
    c = socket.socket()
    assert c.connect_ex(("127.0.0.1", port)) != 0
    c.close()


def _expect(exc: type, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


def check_dns_off_hub() -> None:
    seen_threads = set()

    def slow_lookup(*args):
        seen_threads.add(threading.get_ident())
        _real_sleep(0.2)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", args[1] or 0))]

    monkey._orig_getaddrinfo = slow_lookup
    tick = Ticker()
    elapsed, results = timed(lambda: [t.join() for t in
                                      [green.spawn(socket.getaddrinfo, "db.example", 80) for _ in range(10)]])
    assert elapsed < 0.6, f"lookups serialized: {elapsed:.2f} s"
    assert all(r[0][4] == ("127.0.0.1", 80) for r in results)
    assert threading.get_ident() not in seen_threads
    # connect() with a host name goes through the same lookup
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    c = socket.create_connection(("db.example", listener.getsockname()[1]), timeout=2)
    c.close()
    listener.close()
    tick.assert_hub_free()


def check_select_and_selectors() -> None:
    tick = Ticker()
    a, b = socket.socketpair()

    def later() -> None:
        time.sleep(0.05)
        b.send(b"x")

    green.spawn(later)
    elapsed, (r, _, _) = timed(select.select, [a], [], [], 2)
    assert r == [a] and 0.03 < elapsed < 0.5, (r, elapsed)
    a.recv(1)
    assert select.select([a], [], [], 0.05) == ([], [], [])
    sel = selectors.DefaultSelector()
    assert isinstance(sel, monkey.GreenSelector)
    sel.register(a, selectors.EVENT_READ, "a")
    green.spawn(later)
    events = sel.select(2)
    assert [(k.data, ev) for k, ev in events] == [("a", selectors.EVENT_READ)]
    a.recv(1)
    assert sel.select(0.05) == []
    p = select.poll()
    p.register(a, select.POLLIN)
    green.spawn(later)
    assert p.poll(2000) == [(a.fileno(), select.POLLIN)]
    assert not hasattr(select, "epoll")
    tick.assert_hub_free()


def check_threading_primitives() -> None:
    tick = Ticker()
    lock = threading.Lock()
    lock.acquire()

    def holder() -> None:
        time.sleep(0.1)
        lock.release()

    green.spawn(holder)
    assert lock.acquire(timeout=0.02) is False          # times out without blocking the hub
    elapsed, got = timed(lock.acquire, True, 1)
    assert got and 0.05 < elapsed < 0.5
    lock.release()
    # a real thread releases a lock a green thread waits on, and sets an event
    ev = threading.Event()
    lock.acquire()
    threading.Thread(target=lambda: (_real_sleep(0.05), lock.release(), ev.set())).start()
    assert lock.acquire(timeout=2) and ev.wait(2)
    lock.release()
    # RLock, Condition, Semaphore
    rl = threading.RLock()
    with rl, rl:
        pass
    cond = threading.Condition()
    box = []

    def consumer() -> str:
        with cond:
            assert cond.wait_for(lambda: box, 2)
            return box[0]

    c = green.spawn(consumer)
    time.sleep(0.01)
    with cond:
        box.append("item")
        cond.notify()
    assert c.join() == "item"
    sem = threading.BoundedSemaphore(2)
    active = [0, 0]

    def user() -> None:
        with sem:
            active[0] += 1
            active[1] = max(active[1], active[0])
            time.sleep(0.02)
            active[0] -= 1

    [t.join() for t in [green.spawn(user) for _ in range(10)]]
    assert active[1] == 2
    _expect(ValueError, sem.release)
    # a green thread waits on a real thread's condition
    q = queue.Queue()
    threading.Thread(target=lambda: (_real_sleep(0.05), q.put("from thread"))).start()
    assert q.get(timeout=2) == "from thread"
    _expect(queue.Empty, q.get, True, 0.02)
    sq = queue.SimpleQueue()
    green.spawn(lambda: (time.sleep(0.02), sq.put(1)))
    assert sq.get(timeout=1) == 1
    tick.assert_hub_free()


def check_threads_and_futures() -> None:
    tick = Ticker()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(lambda i=i: (_real_sleep(0.1), i)[1]) for i in range(4)]
        assert [f.result(timeout=2) for f in futures] == [0, 1, 2, 3]
    t = threading.Thread(target=_real_sleep, args=(0.1,))
    t.start()
    t.join()
    assert not t.is_alive()
    timer_fired = threading.Event()
    threading.Timer(0.05, timer_fired.set).start()
    assert timer_fired.wait(2)
    tick.assert_hub_free()


def check_local_per_greenlet() -> None:
    loc = threading.local()
    loc.name = "main"

    def other(n: str) -> tuple:
        before = getattr(loc, "name", None)
        loc.name = n
        time.sleep(0.01)
        return before, loc.name

    ts = [green.spawn(other, f"g{i}") for i in range(5)]
    assert [t.join() for t in ts] == [(None, f"g{i}") for i in range(5)]
    assert loc.name == "main"


def _make_cert(d: str) -> tuple[str, str]:
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def check_ssl() -> None:
    with tempfile.TemporaryDirectory() as d:
        cert, key = _make_cert(d)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        tls_listener = server_ctx.wrap_socket(listener, server_side=True)
        assert isinstance(tls_listener, monkey.GreenSSLSocket)

        def serve_one() -> None:        # green TLS server side: accept, handshake, echo
            conn, _ = tls_listener.accept()
            with conn:
                data = conn.recv(1024)
                time.sleep(0.05)
                conn.sendall(data.upper())

        servers = [green.spawn(serve_one) for _ in range(10)]
        client_ctx = ssl.create_default_context(cafile=cert)
        tick = Ticker()

        def client(i: int) -> bytes:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"hello %d" % i)
                return s.recv(1024)

        elapsed, replies = timed(lambda: [t.join() for t in [green.spawn(client, i) for i in range(10)]])
        assert replies == [b"HELLO %d" % i for i in range(10)]
        assert elapsed < 2.0
        for s in servers:
            s.join(2)
        tls_listener.close()
        tick.assert_hub_free()


def check_outside_hub() -> None:
    """Not under a hub (plain threads, or before the server runs): everything still works, by
    blocking the OS thread as before."""
    assert not green.cooperative()
    t0 = time.monotonic()
    time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.05
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    out = []

    def srv() -> None:
        conn, _ = listener.accept()
        out.append(conn.recv(10))
        conn.sendall(b"pong")
        conn.close()

    th = threading.Thread(target=srv)
    th.start()
    c = socket.create_connection(listener.getsockname(), timeout=2)
    c.sendall(b"ping")
    assert c.recv(10) == b"pong"
    th.join(2)
    assert out == [b"ping"]
    lock = threading.Lock()
    lock.acquire()
    assert lock.acquire(timeout=0.02) is False
    q = queue.Queue()
    threading.Thread(target=lambda: q.put(1)).start()
    assert q.get(timeout=1) == 1


OUTSIDE = {"outside_hub"}

if __name__ == "__main__":
    name = sys.argv[1]
    fn = globals()[f"check_{name}"]
    if name in OUTSIDE:
        fn()
    else:
        green.run(fn)
    print(f"ok {name}")
