"""Regression tests for the memory-safety bugs of issue 22, section 2: ways for an app (or a fork)
to make the C core reach memory or a connection that is no longer the request's.

Each runs a real server on both paths (the C path of csrc/py/runner.c, and the Python path alone
with SPAWNING_NO_PYFAST=1) in thread and green mode, with the apps of tests/apps/memsafety_apps.py.
Under ASan (the sanitizer job) a use after free aborts the worker; in a normal build the same bugs
showed as bytes injected into another client's connection, a worker that died, or a request never
answered, which is what these tests check.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import APPS, read_response

from spawning.server import backend_name

sys.path.insert(0, str(APPS))
from memsafety_apps import body_of  # the app's own bodies: one definition of the bytes

MODES = ["4", "0"]
PATHS = {"c": {}, "python": {"SPAWNING_NO_PYFAST": "1"}}


def get(port: int, path: str, timeout: float = 10.0) -> bytes:
    """One GET on a fresh connection; the body of its 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
        head, body = read_response(s.makefile("rb"))
        assert head.startswith(b"HTTP/1.1 200 "), head
        return body


def post_keep(s: socket.socket, f, size: int = 200_000) -> None:
    """POST /keep on a kept connection: a body larger than the loop reads ahead, so the app's
    reads go through the blocking read path."""
    s.sendall(b"POST /keep HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size + b"k" * size)
    head, body = read_response(f)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert body == b"kept %03d" % (size % 1000)


def nothing_arrives(s: socket.socket, seconds: float) -> bytes:
    """What the server sends on an idle connection within seconds (b'' when nothing)."""
    s.settimeout(seconds)
    try:
        return s.recv(65536)
    except TimeoutError:
        return b""
    finally:
        s.settimeout(10)


# ---- 2.1: a kept write() callable ------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("threads", MODES)
def test_kept_write_cannot_inject_into_an_idle_keepalive_connection(spawn, threads, path):
    """The app keeps write() from a request whose body it read, and calls it during a later
    request: it must raise in the app, and the first client, idle in keep-alive, must receive
    nothing (it used to receive a whole unsolicited response)."""
    server = spawn("-s", "1", "-t", threads, "memsafety_apps.kept_write", env=PATHS[path])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as a:
        fa = a.makefile("rb")
        for _ in range(3):
            post_keep(a, fa)
            assert get(server.port, "/use").startswith(b"raised "), "a stale write() did not raise"
            injected = nothing_arrives(a, 0.3)
            assert injected == b"", f"bytes injected into an idle connection: {injected[:200]!r}"
        # The same on the connection the callable came from, busy again with a later request:
        # the kept write() raises, and that request's own answer is the first thing it gets.
        post_keep(a, fa)
        a.sendall(b"GET /use HTTP/1.1\r\nHost: t\r\n\r\n")
        head, body = read_response(fa)
        assert head.startswith(b"HTTP/1.1 200 ") and body.startswith(b"raised "), (head, body)
        assert nothing_arrives(a, 0.3) == b""


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("threads", MODES)
def test_kept_write_after_its_connection_closed(spawn, threads, path):
    """The same with the first connection closed before the kept write() is called: the memory
    it named is freed (or another connection's). The worker must survive and keep answering."""
    server = spawn("-s", "1", "-t", threads, "memsafety_apps.kept_write", env=PATHS[path])
    pid = get(server.port, "/pid")
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as a:
            post_keep(a, a.makefile("rb"))
        time.sleep(0.05)   # the server sees the close and frees the connection
        assert get(server.port, "/use").startswith(b"raised "), "a stale write() did not raise"
    assert get(server.port, "/pid") == pid, "the worker died"


# ---- 2.2: fork without exec ---------------------------------------------------------------------------


def stale_registrations(pid: int) -> list[str]:
    """Entries of the process's epoll sets whose descriptor is closed, or now names another file
    (Linux: /proc/PID/fdinfo lists each entry with its target's inode)."""
    stale = []
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) != "anon_inode:[eventpoll]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        for m in re.finditer(r"tfd:\s*(\d+) .*? ino:([0-9a-f]+)", info):
            target, ino = m.group(1), int(m.group(2), 16)
            try:
                now = os.stat(fds / target).st_ino
            except OSError:
                now = None
            if now != ino:
                stale.append(f"epoll fd {fd.name}: fd {target} (inode {ino:x}, now {now})")
    return stale


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("threads", MODES)
def test_fork_in_the_app_leaves_no_registration_behind(spawn, threads):
    """An app forks a child that holds copies of every socket for 3 s. The connections the worker
    closes meanwhile stay open in the child, and so would their epoll registrations, naming
    freed memory, if close() were trusted to drop them (the next event on one, a client's bytes
    or its close, was dispatched to that memory). None may outlive its connection, and every
    request, on connections old and new, is answered."""
    server = spawn("-s", "1", "-t", threads, "memsafety_apps.fork")
    pid = int(get(server.port, "/pid"))
    if backend_name() != "epoll":
        pytest.skip("only epoll registrations outlive close()")
    # Connections open across the fork: the child holds them.
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)]
    files = [s.makefile("rb") for s in held]
    for s, f in zip(held, files):
        s.sendall(b"GET /n HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(f)
    assert get(server.port, "/fork") == b"forked"
    for i, (s, f) in enumerate(zip(held, files)):
        if i % 2:   # the worker closes it first; the client then sends more and closes
            s.sendall(b"GET /n HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            head, body = read_response(f)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"n" * 100
            time.sleep(0.05)
            s.sendall(b"GET /n HTTP/1.1\r\nHost: t\r\n\r\n")
        s.close()   # the client closes first (even ones), or after the worker (odd ones)
    time.sleep(0.3)
    stale = stale_registrations(pid)
    # New connections meanwhile, some of them on the fd numbers just freed.
    for _ in range(20):
        assert get(server.port, "/n") == b"n" * 100
    assert not stale, stale
    assert int(get(server.port, "/pid")) == pid, "the worker died"


def test_forked_child_in_green_mode_never_runs_the_hub(spawn):
    """Green mode: a child forked by the app calls the patched time.sleep. The hub it would switch
    to is the parent's, polling the parent's epoll set (shared across fork): the child then took
    the parent's connections and answered them itself. In the child there is no hub: it blocks,
    and every request meanwhile is answered by the worker."""
    server = spawn("-s", "1", "-t", "0", "memsafety_apps.green_fork")
    pid = get(server.port, "/pid")
    assert get(server.port, "/fork") == pid
    answered_by = {get(server.port, "/pid", timeout=5) for _ in range(200)}
    assert answered_by == {pid}, f"answered by {answered_by}, the worker is {pid!r}"


def sees_close(s: socket.socket, seconds: float) -> bool:
    """Whether the server's close (EOF, or a reset) reaches the client within seconds."""
    s.settimeout(seconds)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("threads", MODES)
def test_fork_in_the_app_connections_the_worker_closes_reach_their_clients(spawn, threads):
    """While a forked child holds copies of the worker's sockets, a connection the worker closes
    (after a Connection: close response, or idle past the keep-alive timeout) stays open in the
    child: close() alone sent no FIN, and the client sent its next request into a socket no one
    read, until the child exited. Its client must see the close at once."""
    server = spawn("-s", "1", "-t", threads, "--keepalive-timeout", "1", "memsafety_apps.fork")
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    files = [s.makefile("rb") for s in held]
    for s, f in zip(held, files):
        s.sendall(b"GET /n HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(f)
    try:
        assert get(server.port, "/fork") == b"forked"
        for s, f in zip(held[:2], files[:2]):   # closed after their response
            s.sendall(b"GET /n HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            head, _ = read_response(f)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert sees_close(s, 1.0), "no close after a Connection: close response"
        for s in held[2:]:                       # idle: closed after the keep-alive timeout
            assert sees_close(s, 1.8), "an idle connection the worker closed looks open"
    finally:
        for s in held:
            s.close()


# ---- 2.3: a borrowed body across the app's __eq__ -------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("threads", MODES)
def test_status_whose_comparison_empties_the_body_list(spawn, threads, path):
    """The status is a str subclass whose __eq__ empties the returned list: were the server to
    compare heads (it once did, with a body borrowed from the list) the list's reference to the
    body would be gone meanwhile. Heads are packed from exact types now (C), or by Python, which
    runs no comparison: every answer carries its own bytes, and the worker survives."""
    server = spawn("-s", "1", "-t", threads, "memsafety_apps.clearing_status", env=PATHS[path])
    pid = get(server.port, "/-1/0")
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                f = s.makefile("rb")
                for i in range(90):
                    # A few paths, each repeated (the C path runs a request whose environ it
                    # knows); odd ones compare and clear. Sizes: lent (sp.h "Lent bodies"),
                    # small, copied.
                    n = k * 100 + i % 6
                    size = (20000, 600, 70000)[i % 3]
                    s.sendall(b"GET /%d/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (n, size))
                    head, body = read_response(f)
                    if not head.startswith(b"HTTP/1.1 200 ") or body != body_of(n, size):
                        errors.append(f"request {n}: {head[:40]!r}, {len(body)} bytes")
                        return
        except Exception as e:   # noqa: BLE001 -- reported below
            errors.append(f"client {k}: {e!r}")

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(60)
    assert not errors, errors[:5]
    assert get(server.port, "/-1/0") == pid, "the worker died"


# ---- 2.4: the smaller ones, on the C path's Runner itself ----------------------------------------
#
# In-process: a real core server on a loopback listener, real client sockets, and csrc/py/runner.c's
# Runner driven as spawning/wsgi/handler.py drives it, with callables of the test's choosing where the
# handler passes its own (the access log, a status).

HEADERS = [("Content-Type", "text/plain")]


@pytest.fixture
def core():
    """(server pointer, listener port, its keep-alive clients): a core as one app thread runs it
    (-t 1), whose answers take the next queued request (chain), with its flusher thread sending
    what an answer holds back for a burst (corking) as spawning.server does."""
    from spawning._core import ffi, lib

    from spawning.config import Settings
    from spawning.server import make_core_config
    from spawning.wsgi import handler

    if handler.Runner is None:
        pytest.skip("the C path (csrc/py/runner.c) is not built or not in use")
    cfg = make_core_config(Settings(threads=1))
    srv = ffi.gc(lib.sp_server_new(cfg), lib.sp_server_free)
    listener = socket.create_server(("127.0.0.1", 0))
    assert lib.sp_server_add_listener(srv, listener.fileno(), 0) == 0
    flusher = threading.Thread(target=lib.sp_server_flusher, args=(srv,), daemon=True)
    flusher.start()
    clients: list[socket.socket] = []
    yield srv, listener.getsockname()[1], clients
    lib.sp_server_flusher_stop(srv)
    flusher.join(5)
    for c in clients:
        c.close()
    del srv
    listener.close()


def requests_queued(core, n: int) -> int:
    """Sends one GET on each of n new connections and returns the first request's code; the
    others wait in the core's queue."""
    from spawning._core import lib

    srv, port, clients = core
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        clients.append(c)
    time.sleep(0.1)   # all of them in the socket buffers before the one poll that reads them
    code = lib.sp_poll_one(srv, 2000)
    assert code > 0
    return code


def runner(core, app, log=None, forwarded=None):
    """A Runner as make_handler builds one (spawning.wsgi.handler.c_path)."""
    from spawning._core import ffi

    from spawning.wsgi.handler import Runner
    from spawning.wsgi.input import EMPTY_INPUT
    from spawning.wsgi.response import FileWrapper, Response

    srv = core[0]

    class Resp(Response):
        __slots__ = ()

    return Runner(int(ffi.cast("uintptr_t", srv)), app, lambda resp: None, Resp, log,
                  [{}], EMPTY_INPUT, forwarded, (FileWrapper,),
                  lambda exc: None)


def hello(environ, start_response):
    start_response("200 OK", HEADERS)
    return [b"hello"]


def response_of(c: socket.socket) -> bytes:
    head, _ = read_response(c.makefile("rb"))
    return head.split(b"\r\n", 1)[0]


def test_runner_traverses_its_type(core):
    """Instances of heap types hold their type: the GC must see that edge (Py_VISIT(Py_TYPE))."""
    import gc

    from spawning.wsgi.response import Response

    r = runner(core, hello)
    assert type(r) in gc.get_referents(r)

    class Resp(Response):
        __slots__ = ()

    resp = Resp()
    assert type(resp) in gc.get_referents(resp)


def test_runner_refuses_a_response_class_with_its_own_start_response(core):
    """The C path binds ResponseBase's start_response itself (csrc/py/runner.c, start_of): a
    response class with its own would be skipped silently, so the Runner refuses it."""
    from spawning._core import ffi

    from spawning.wsgi.handler import Runner
    from spawning.wsgi.input import EMPTY_INPUT
    from spawning.wsgi.response import FileWrapper, Response

    class Resp(Response):
        __slots__ = ()

        def start_response(self, status, headers, exc_info=None):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="start_response"):
        Runner(int(ffi.cast("uintptr_t", core[0])), hello, lambda resp: None, Resp, None,
               [{}], EMPTY_INPUT, None, (FileWrapper,), lambda exc: None)
    assert runner(core, hello) is not None   # the class make_handler builds is taken


def test_system_exit_in_the_access_log_goes_up_and_the_next_request_is_answered(core):
    """The access log raising SystemExit (a signal handler's, say) after the answer took the next
    request: the exception reaches run()'s caller as on the Python path (it was cleared), and
    the request taken meanwhile is answered 500 instead of holding its connection forever."""
    def log(environ, status, sent, headers=None):
        raise SystemExit(3)

    code = requests_queued(core, 2)
    r = runner(core, hello, log)
    with pytest.raises(SystemExit):
        r.run(code, -1)
    first, second = core[2]
    assert response_of(first) == b"HTTP/1.1 200 OK"
    second.settimeout(5)
    assert response_of(second) == b"HTTP/1.1 500 Internal Server Error"


def test_system_exit_in_the_access_log_on_the_python_path(core, monkeypatch):
    """The same on the Python path (spawning/wsgi/handler.py, as PyPy runs it): SystemExit
    goes up, and the request the answer took gets its 500."""
    from spawning.wsgi import handler

    class RaisingLog:
        enabled = True

        def log(self, *args):
            raise SystemExit(3)

    monkeypatch.setattr(handler, "Runner", None)   # make_handler then builds the Python path
    srv = core[0]
    handle = handler.make_handler(hello, srv, [], handler.ThreadWaiter(srv, 1000), RaisingLog())
    code = requests_queued(core, 2)
    with pytest.raises(SystemExit):
        handle(code)
    first, second = core[2]
    assert response_of(first) == b"HTTP/1.1 200 OK"
    second.settimeout(5)
    assert response_of(second) == b"HTTP/1.1 500 Internal Server Error"


def test_keyboard_interrupt_from_the_iterable_reaches_the_handler(core):
    """The app's iterable raises a BaseException while C streams it: the request goes back to
    Python with that exception (its handler answers and re-raises), not with it dropped."""
    def app(environ, start_response):
        start_response("200 OK", HEADERS)
        yield b"hello"
        raise KeyboardInterrupt

    code = requests_queued(core, 1)
    handed = runner(core, app).run(code, -1)
    assert isinstance(handed, tuple), handed
    assert isinstance(handed.exception, KeyboardInterrupt), handed.exception


def test_an_error_making_the_environ_goes_to_python_with_the_request(core):
    """The environ could not be made (here a trusted proxy's rewrite raises): the error goes to
    Python with the request, whose handler answers it; it used to stay set while the response
    object was made, which then failed with a SystemError that was dropped."""
    from spawning._core import lib

    def broken(environ):
        raise ValueError("broken proxy rewrite")

    srv, port, clients = core
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
    clients.append(c)
    code = lib.sp_poll_one(srv, 2000)
    assert code > 0
    handed = runner(core, hello, forwarded=broken).run(code, -1)
    assert isinstance(handed, tuple), handed
    assert isinstance(handed.exception, ValueError), handed.exception
