"""16-64 KiB response bodies, each a fresh bytes object the app drops as soon as the answer returns
(csrc/sp.h, sp_code_answer: the body is copied or sent by then; the core once kept a pointer to
such bodies and sent them later, "lent"). tests/apps/lend_app.py builds every body afresh: were
one read after it was freed, the memory would soon hold another body and the client would read
the wrong bytes. Each test checks every byte of every response, in thread and in green mode.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time

import pytest
from conftest import APPS, read_response

sys.path.insert(0, str(APPS))
from lend_app import body_of  # the app's own generator: one definition of the bytes

MODES = ["4", "0"]


def sizes(rng: random.Random, n: int) -> list[int]:
    """Mostly lendable sizes, a few at the edges and a few small ones (copied as before)."""
    pool = [16383, 16384, 16385, 65535, 65536, 65537, 200000, 100, 4096]
    return [rng.choice(pool) if rng.random() < 0.3 else rng.randint(16384, 65536) for _ in range(n)]


@pytest.mark.parametrize("threads", MODES)
def test_concurrent_keepalive_clients_get_their_own_bytes(spawn, threads):
    """16 keep-alive clients at once, 40 requests each: the server has queued work, so bodies
    are held back in bursts and leave after the handler has long dropped them."""
    server = spawn("-s", "1", "-t", threads, "lend_app.application")
    errors: list[str] = []

    def client(k: int) -> None:
        rng = random.Random(k)
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
                f = s.makefile("rb")
                for i, size in enumerate(sizes(rng, 40)):
                    seed = f"c{k}r{i}"
                    s.sendall(f"GET /body/{seed}/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    head, body = read_response(f)
                    if not head.startswith(b"HTTP/1.1 200 ") or body != body_of(seed, size):
                        errors.append(f"client {k} request {i} ({size} bytes): wrong bytes")
                        return
        except Exception as e:   # noqa: BLE001 -- reported below with the client's number
            errors.append(f"client {k}: {e!r}")

    clients = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(60)
    assert not any(t.is_alive() for t in clients), "a client hung"
    assert errors == []


@pytest.mark.parametrize("threads", MODES)
def test_pipelined_bodies_leave_whole_and_in_order(spawn, threads):
    """The next pipelined response (one piece, or streamed) comes while a body is held back:
    that body must leave first, and the next request must still be read."""
    server = spawn("-s", "1", "-t", threads, "lend_app.application")
    for trial in range(6):   # the order of events varies: a few runs meet more of them
        rng = random.Random(trial)
        wanted = [(f"t{trial}p{i}", size) for i, size in enumerate(sizes(rng, 30))]
        reqs = b"".join(f"GET /{rng.choice(['body', 'body', 'stream'])}/{seed}/{size} HTTP/1.1\r\n"
                        f"Host: x\r\n\r\n".encode() for seed, size in wanted)
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
            s.sendall(reqs)
            f = s.makefile("rb")
            for seed, size in wanted:
                _, body = read_response(f)
                assert body == body_of(seed, size), f"{seed} ({size} bytes): wrong bytes"


@pytest.mark.parametrize("threads", MODES)
def test_client_reading_late_gets_every_byte(spawn, threads):
    """Clients that send many requests and read nothing for a while fill their sockets: what a
    held-back body's send leaves over is copied before the handler's reference goes, while other
    clients keep the server busy making (and freeing) new bodies."""
    server = spawn("-s", "1", "-t", threads, "lend_app.application")
    wanted = [(f"late{i}", 65536 - i) for i in range(96)]   # ~6 MiB per connection
    reqs = b"".join(f"GET /body/{seed}/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                    for seed, size in wanted)
    late = [socket.create_connection(("127.0.0.1", server.port), timeout=20) for _ in range(3)]
    try:
        for s in late:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(reqs)
        # Meanwhile other traffic allocates and frees bodies of the same sizes.
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as busy:
            f = busy.makefile("rb")
            for i in range(60):
                seed = f"busy{i}"
                busy.sendall(f"GET /body/{seed}/{65536 - i % 24} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert read_response(f)[1] == body_of(seed, 65536 - i % 24)
        time.sleep(0.3)
        for s in late:
            f = s.makefile("rb")
            for seed, size in wanted:
                _, body = read_response(f)
                assert body == body_of(seed, size), f"{seed} ({size} bytes): wrong bytes"
    finally:
        for s in late:
            s.close()
