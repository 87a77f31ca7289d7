"""Hostile clients and an ordinary one, for tests/adversarial and bench/adversarial.py.

Everything here talks to 127.0.0.1 only and every loop is bounded in time.

- ``raise_nofile()``: lifts this process's RLIMIT_NOFILE soft limit to its hard limit.
- ``exchange(port, data)``: one raw request on a fresh connection, everything read until close.
- ``Prober``: the ordinary client. GETs on fresh connections, one at a time, timed; it runs in a
  thread of the test process while the attack runs in a *separate process* (``run_attack``), so the
  attacker's Python does not share a GIL with the measurement.
- Attacks, each a function returning a JSON-able dict, runnable as
  ``python hostile.py ATTACK '{"port": ..., ...}'`` (which is what ``run_attack`` does):
    * ``slowloris``: N connections each sending a request head a few bytes at a time, forever;
      records when each one got its answer (408) and when the server closed it.
    * ``idle``: N connections that connect and then send nothing (or, with ``request``, make one
      keep-alive request first and then idle); records when the server closed each one.
    * ``hold``: opens N connections and keeps them open until told to stop (stdin closes), for the
      connection-limit and descriptor-exhaustion tests.
"""

from __future__ import annotations

import json
import math
import resource
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"


def raise_nofile(want: int = 1 << 20) -> int:
    """Raises the soft RLIMIT_NOFILE as far as the hard limit allows; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def exchange(port: int, data: bytes | list[bytes], timeout: float = 5.0, pause: float = 0.0,
             shut_wr: bool = False) -> bytes:
    """Sends data (a list: piece by piece, ``pause`` apart) on a fresh connection and returns all
    bytes read until the server closes (or ``timeout``). Sending stops early once the server
    answers (or closes) between two pieces."""
    pieces = data if isinstance(data, list) else [data]
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            for i, piece in enumerate(pieces):
                if i and pause and select.select([s], [], [], pause)[0]:
                    break   # answered (or closed) before the rest was sent
                s.sendall(piece)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server answered early and closed: read what it said
        chunks = []
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                b = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def status_of(resp: bytes) -> int | None:
    """The status code of the first response in resp, or None when there is none."""
    if not resp.startswith(b"HTTP/1.") or len(resp) < 12:
        return None
    try:
        return int(resp[9:12])
    except ValueError:
        return None


def responses(resp: bytes) -> list[int]:
    """Status codes of every response head in a byte stream (pipelining), 1xx included."""
    out: list[int] = []
    i = 0
    while True:
        i = resp.find(b"HTTP/1.1 ", i)
        if i < 0:
            return out
        out.append(int(resp[i + 9:i + 12]))
        i += 12


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of values; 0 for none."""
    if not values:
        return 0.0
    v = sorted(values)
    k = max(0, min(len(v) - 1, math.ceil(p / 100.0 * len(v)) - 1))
    return v[k]


class Prober:
    """The ordinary client: ``count`` GETs on fresh connections, ``interval`` apart, each timed from
    connect to the end of the response. ``start()`` runs it in a thread; ``join()`` waits.

    ``result()`` gives ok, failed, p50/p99/max in milliseconds and the failure kinds."""

    def __init__(self, port: int, count: int = 50, interval: float = 0.02, path: str = "/probe",
                 timeout: float = 5.0, keepalive: bool = False) -> None:
        self.port = port
        self.count = count
        self.interval = interval
        self.path = path
        self.timeout = timeout
        self.keepalive = keepalive
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._thread: threading.Thread | None = None

    def _one(self, sock: socket.socket | None) -> socket.socket | None:
        t0 = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
            conn = "keep-alive" if self.keepalive else "close"
            sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: probe\r\nConnection: {conn}\r\n\r\n".encode())
            buf = b""
            while True:
                b = sock.recv(65536)
                if not b:
                    break
                buf += b
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep:
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                    if len(body) >= length:
                        break
            if status_of(buf) != 200:
                raise OSError(f"status {status_of(buf)}: {buf[:60]!r}")
            self.latencies.append((time.perf_counter() - t0) * 1000.0)
            if self.keepalive and b"Connection: close" not in buf:
                return sock
        except OSError as e:
            self.failures.append(f"{type(e).__name__}: {e}")
        if sock is not None:
            sock.close()
        return None

    def run(self) -> Prober:
        sock = None
        next_at = time.monotonic()
        for _ in range(self.count):
            sock = self._one(sock if self.keepalive else None)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if sock is not None:
            sock.close()
        return self

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 60.0) -> Prober:
        if self._thread:
            self._thread.join(timeout)
        return self

    def result(self) -> dict[str, Any]:
        lat = self.latencies
        return {"ok": len(lat), "failed": len(self.failures),
                "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                "max_ms": round(max(lat), 2) if lat else 0.0,
                "failures": sorted(set(self.failures))[:5]}


# ---- attacks (run in their own process) --------------------------------------------------------


def _open_many(port: int, n: int, sel: selectors.BaseSelector, deadline: float,
               batch: int = 200) -> list[socket.socket]:
    """Opens n connections (non-blocking connects, ``batch`` in flight at once) and waits until
    each is established. Connections that fail are left out."""
    socks: list[socket.socket] = []
    pending: dict[int, socket.socket] = {}
    started = 0
    while (started < n or pending) and time.monotonic() < deadline:
        while started < n and len(pending) < batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((HOST, port))
            pending[s.fileno()] = s
            sel.register(s, selectors.EVENT_WRITE)
            started += 1
        for key, _ in sel.select(0.2):
            s = pending.pop(key.fd)
            sel.unregister(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                socks.append(s)
            else:
                s.close()
    for s in pending.values():
        sel.unregister(s)
        s.close()
    return socks


def slowloris(port: int, conns: int = 500, interval: float = 0.3, duration: float = 10.0,
              prefix: str = "GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ",
              reconnect: bool = True) -> dict[str, Any]:
    """Each connection sends ``prefix`` one byte per ``interval`` seconds, then filler bytes of a
    header value that never ends. With ``reconnect`` (the real attack) every connection the
    server closes is replaced at once, so ``conns`` stay open for the whole ``duration``.
    Returns: opened (in total), closed (by the server), open_at_end, statuses (of the answers
    read; "None" for none), close_after_first_byte p50/max (seconds from a connection's first
    byte to its close) and min_open (fewest connections open at once after the ramp-up)."""
    deadline = time.monotonic() + duration
    sel = selectors.DefaultSelector()
    socks = _open_many(port, conns, sel, deadline)
    state: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []

    def track(s: socket.socket, first_at: float) -> None:
        state[s.fileno()] = {"sock": s, "sent": 0, "first": None, "got": b"", "closed": None,
                             "next": first_at}
        sel.register(s, selectors.EVENT_READ)

    # Stagger the first bytes over one interval, so sends are spread evenly.
    t0 = time.monotonic()
    for i, s in enumerate(socks):
        track(s, t0 + interval * i / max(1, len(socks)))
    payload = prefix.encode()
    live = state
    min_open = len(live)
    while live and time.monotonic() < deadline:
        now = time.monotonic()
        for fd, st in list(live.items()):
            if st["next"] <= now:
                byte = payload[st["sent"]:st["sent"] + 1] if st["sent"] < len(payload) else b"a"
                try:
                    st["sock"].send(byte)
                    if st["first"] is None:
                        st["first"] = time.monotonic()
                    st["sent"] += 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass   # reset or half-closed by the server: the read side will tell
                st["next"] = now + interval
        replace = 0
        for key, _ in sel.select(0.01):
            if key.fd not in live:
                continue
            st = live[key.fd]
            try:
                b = st["sock"].recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                b = b""
            if b:
                st["got"] += b
                continue
            st["closed"] = time.monotonic()
            sel.unregister(st["sock"])
            st["sock"].close()
            del live[key.fd]
            done.append(st)
            replace += 1
        # Reconnect only after every close of this turn is time-stamped: a wave of thousands of
        # closes must not be measured late because of the reconnects in between.
        while reconnect and replace and time.monotonic() < deadline - interval:
            replace -= 1
            try:
                s = socket.create_connection((HOST, port), timeout=1.0)
                s.setblocking(False)
                track(s, time.monotonic())
            except OSError:
                pass
        if t0 + interval * 2 < time.monotonic() < deadline - 2 * interval:
            min_open = min(min_open, len(live))
    statuses: dict[str, int] = {}
    lifetimes = []
    for st in done:
        code = status_of(st["got"])
        statuses[str(code)] = statuses.get(str(code), 0) + 1
        if st["first"] is not None:
            lifetimes.append(st["closed"] - st["first"])
    for st in live.values():
        st["sock"].close()
    return {"opened": len(done) + len(live), "closed": len(done), "open_at_end": len(live),
            "min_open": min_open, "statuses": statuses,
            "close_after_first_byte_p50": round(percentile(lifetimes, 50), 3),
            "close_after_first_byte_max": round(max(lifetimes), 3) if lifetimes else None}


def idle(port: int, conns: int = 100, duration: float = 10.0, request: bool = False) -> dict[str, Any]:
    """Opens conns connections and sends nothing (with ``request``: one keep-alive GET each,
    then nothing). Returns how many the server closed and when, relative to the last byte the
    client sent (or the connect)."""
    deadline = time.monotonic() + duration
    sel = selectors.DefaultSelector()
    socks = _open_many(port, conns, sel, deadline)
    t_idle = {}
    got: dict[int, bytes] = {}
    for s in socks:
        if request:
            s.send(b"GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")
        t_idle[s.fileno()] = time.monotonic()
        got[s.fileno()] = b""
        sel.register(s, selectors.EVENT_READ)
    live = {s.fileno(): s for s in socks}
    closed_after = []
    while live and time.monotonic() < deadline:
        for key, _ in sel.select(0.05):
            s = live[key.fd]
            try:
                b = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                b = b""
            if b:
                got[key.fd] += b
                if request and b"\r\n\r\n" in got[key.fd]:
                    t_idle[key.fd] = time.monotonic()   # idle from the response on
                continue
            closed_after.append(time.monotonic() - t_idle[key.fd])
            sel.unregister(s)
            s.close()
            del live[key.fd]
    answered = sum(1 for v in got.values() if status_of(v) is not None)
    for s in live.values():
        s.close()
    return {"opened": len(socks), "closed": len(closed_after), "open_at_end": len(live),
            "answered": answered,
            "closed_after_p50": round(percentile(closed_after, 50), 3),
            "closed_after_max": round(max(closed_after), 3) if closed_after else None}


def hold(port: int, conns: int = 100, duration: float = 30.0, request: bool = False) -> dict[str, Any]:
    """Opens conns connections (with ``request``: one keep-alive GET each), prints a line
    ``{"opened": N}`` and keeps them open until stdin closes or ``duration`` passes."""
    deadline = time.monotonic() + duration
    sel = selectors.DefaultSelector()
    socks = _open_many(port, conns, sel, deadline)
    if request:
        for s in socks:
            s.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    print(json.dumps({"opened": len(socks)}), flush=True)
    sel.register(sys.stdin, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if sel.select(min(0.5, max(0.0, deadline - time.monotonic()))) and not sys.stdin.readline():
            break
    for s in socks:
        s.close()
    return {"opened": len(socks)}


# Openings that are no PROXY preamble (csrc/http/proxy.c), for a listener that expects one: each must
# be closed without a byte of answer.
BAD_PREAMBLES: list[bytes] = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY " + b"A" * 120,
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff" + b"\x00" * 64,
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x10" + b"\x00" * 12 + b"\x01\x00\xff\x00",
    b"\r\n\r\n\x00\r\nQUIT\n\x12\x11\x00\x0c" + b"\x00" * 12,
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
    b"\x00" * 64,
]


def proxy_garbage(port: int, conns: int = 200, duration: float = 5.0,
                  pause: float = 0.0) -> dict[str, Any]:
    """Waves of ``conns`` connections to a PROXY-protocol listener, each opening with one of
    BAD_PREAMBLES, ``pause`` seconds apart, until ``duration`` ends. Returns: sent (connections), closed (by the server
    before the attacker gave up on them, 2 s), answered (those that got any byte back) and the
    slowest close after the send (seconds)."""
    deadline = time.monotonic() + duration
    sent = closed = answered = 0
    slowest = 0.0
    while time.monotonic() < deadline:
        sel = selectors.DefaultSelector()
        socks = _open_many(port, conns, sel, deadline)
        started: dict[int, tuple[socket.socket, float]] = {}
        for i, s in enumerate(socks):
            try:
                s.send(BAD_PREAMBLES[(sent + i) % len(BAD_PREAMBLES)])
            except OSError:
                pass
            started[s.fileno()] = (s, time.monotonic())
            sel.register(s, selectors.EVENT_READ)
        sent += len(socks)
        give_up = time.monotonic() + 2.0
        while started and time.monotonic() < give_up:
            for key, _ in sel.select(0.05):
                s, t = started[key.fd]
                try:
                    b = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    b = b""
                if b:
                    answered += 1
                    continue
                closed += 1
                slowest = max(slowest, time.monotonic() - t)
                sel.unregister(s)
                s.close()
                del started[key.fd]
        for s, _ in started.values():
            s.close()
        time.sleep(pause)
    return {"sent": sent, "closed": closed, "answered": answered, "slowest_close": round(slowest, 3)}


ATTACKS: dict[str, Callable[..., dict[str, Any]]] = {"slowloris": slowloris, "idle": idle, "hold": hold,
                                                     "proxy_garbage": proxy_garbage}


def run_attack(name: str, timeout: float = 120.0, **kw: Any) -> dict[str, Any]:
    """Runs an attack in a separate process and returns its result (blocking)."""
    return AttackProcess(name, **kw).result(timeout)


class AttackProcess:
    """An attack running in its own Python process (see the module docstring)."""

    def __init__(self, name: str, **kw: Any) -> None:
        import subprocess
        self.proc = subprocess.Popen([sys.executable, __file__, name, json.dumps(kw)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def readline(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next JSON line the attack prints (``hold`` prints one when its connections are up)."""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)   # type: ignore[arg-type]
        if not sel.select(timeout):
            raise TimeoutError("attack printed nothing")
        return json.loads(self.proc.stdout.readline())   # type: ignore[union-attr]

    def stop(self) -> None:
        """Closes the attack's stdin (``hold`` then closes its connections and exits)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.proc.stdin = None   # communicate() must not touch it again

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        lines = [line for line in out.splitlines() if line.strip()]
        return json.loads(lines[-1])


if __name__ == "__main__":
    raise_nofile()
    attack = ATTACKS[sys.argv[1]]
    print(json.dumps(attack(**json.loads(sys.argv[2]))), flush=True)
