"""Hostile clients on a PROXY-protocol listener (``--bind proxy://...``, csrc/http/proxy.c): slow
preambles, floods of invalid ones, and the corpus of bad openings sent whole and byte by byte.
The server listens on a plain port too, where the ordinary client (``Prober``) checks that it
keeps answering quickly meanwhile (p99 < 100 ms, as the other attack tests).

What must hold: a connection without a valid preamble never gets a byte of answer and never
reaches the app; one that sends its preamble slowly is closed at the header timeout, unanswered;
the worker survives all of it.
"""

from __future__ import annotations

import socket
import time

import pytest
from conftest import free_port, start_server
from hostile import BAD_PREAMBLES, AttackProcess, Prober, raise_nofile

P99_MS = 100.0
SWEEP_S = 0.25   # csrc/loop/loop.h SP_SWEEP_MS


@pytest.fixture(scope="module")
def server():
    raise_nofile()
    plain, proxied = free_port(), free_port()
    proc = start_server("-s", "1", "-t", "4", "--header-timeout", "1", "--defer-accept", "0",
                        "-b", f"127.0.0.1:{plain}", "-b", f"proxy://127.0.0.1:{proxied}",
                        "core_app.application", port=plain)
    proc.proxied = proxied   # type: ignore[attr-defined]
    yield proc
    proc.stop()


def probe_during(port: int, delay: float = 1.0, count: int = 50, interval: float = 0.05) -> dict:
    time.sleep(delay)
    result = Prober(port, count, interval).run().result()
    assert result["failed"] == 0, result
    assert result["p99_ms"] < P99_MS, result
    return result


def test_slow_preambles_are_closed_unanswered_at_the_header_timeout(server):
    """300 connections trickling a v1 preamble one byte every 0.3 s (and reconnecting when
    closed): each is closed after the 1 s header timeout without a byte of answer."""
    pids = server.workers()
    attack = AttackProcess("slowloris", port=server.proxied, conns=300, interval=0.3, duration=5.0,
                           prefix="PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n")
    probe_during(server.port)
    r = attack.result(60)
    assert r["opened"] >= 600, r
    assert set(r["statuses"]) == {"None"}, r          # closed, never answered
    assert r["close_after_first_byte_max"] < 1.0 + SWEEP_S + 0.75, r
    assert server.workers() == pids


def test_flood_of_invalid_preambles(server):
    pids = server.workers()
    # Paced (100 connections every 50 ms): an unpaced connect flood is a load test of accept(),
    # not of the preamble check (bench/adversarial.py runs that one).
    attack = AttackProcess("proxy_garbage", port=server.proxied, conns=100, duration=4.0, pause=0.05)
    probe_during(server.port)
    r = attack.result(60)
    assert r["sent"] >= 1000, r
    assert r["answered"] == 0, r
    assert r["closed"] == r["sent"], r
    assert r["slowest_close"] < 1.0, r               # refused at once, not at a timeout
    assert server.workers() == pids


@pytest.mark.parametrize("data", BAD_PREAMBLES, ids=range(len(BAD_PREAMBLES)))
@pytest.mark.parametrize("pieces", ["whole", "bytewise"])
def test_bad_openings_never_reach_the_app(server, data, pieces):
    with socket.create_connection(("127.0.0.1", server.proxied), timeout=5) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got = b""
        try:
            if pieces == "whole":
                c.sendall(data)
            else:
                for i in range(len(data)):
                    c.send(data[i:i + 1])
                    time.sleep(0.0005)
            while True:
                b = c.recv(4096)
                if not b:
                    break
                got += b
        except (ConnectionResetError, BrokenPipeError):
            pass   # closed while we were still sending: as good
    assert got == b""
    # ... and the worker still serves a well-formed one there.
    with socket.create_connection(("127.0.0.1", server.proxied), timeout=5) as c:
        c.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nGET / HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
