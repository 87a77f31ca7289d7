"""The poller's waits while connections are open are untimed, woken by the loop's ticking timer
(csrc/loop/loop.c, "Ticks"), and an idle worker's timer stops.

A wait with a timeout makes the kernel arm and cancel a high-resolution timer every time the
worker sleeps; the loop keeps one periodic timerfd instead while it has deadlines to sweep. What
the kernel shows of a real worker says whether that holds: /proc/PID/task/TID/syscall gives the
system call a thread is blocked in with its arguments (the poll's timeout among them), and
/proc/PID/fdinfo/FD a timerfd's interval and next expiry. Each test looks at a worker that has
been left alone for a while, in thread mode (-t 2, -t 1 with its flusher) and green mode.
Without the ticks the poller's timeout is the next sweep's (at most 250 ms) and these fail; so
they do if the timer is never disarmed. That the ticks still end every deadline in time is what
tests/test_timeouts.py and the keep-alive and header-timeout tests check.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SpawningProcess, start_server

from spawning.server import backend_name

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"),
    reason="timerfd and the x86-64 system call numbers")

# x86-64 system call numbers of the polls the backends make, and the argument that is the timeout
# (an int: its low 32 bits), or for ppoll the timespec pointer (NULL: untimed)
EPOLL_WAIT, EPOLL_PWAIT, POLL, PPOLL = 232, 281, 7, 271
UNTIMED = 0xFFFFFFFF

MODES = {"threads": ("-t", "2"), "one-thread": ("-t", "1"), "green": ("-t", "0")}


@pytest.fixture(scope="module", params=sorted(MODES))
def server(request: pytest.FixtureRequest) -> Iterator[SpawningProcess]:
    if backend_name() not in ("epoll", "poll"):
        pytest.skip(f"the {backend_name()} backend")
    proc = start_server("limits_app.application", "-s", "1", *MODES[request.param],
                        "--keepalive-timeout", "30")
    yield proc
    proc.stop()
    shutil.rmtree(proc.workdir, ignore_errors=True)


def worker_pid(sock: socket.socket) -> int:
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not re.search(rb"\r\n\r\n\d+$", data):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return int(data.rsplit(b"\r\n\r\n", 1)[1])


def polls(pid: int) -> list[tuple[int, list[int]]]:
    """(syscall number, arguments) of each of pid's threads blocked in a poll."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
        except PermissionError:
            pytest.skip("/proc/PID/syscall needs ptrace access to the worker")
        except OSError:
            continue
        if fields and fields[0].isdigit() and int(fields[0]) in (EPOLL_WAIT, EPOLL_PWAIT, POLL, PPOLL):
            out.append((int(fields[0]), [int(a, 16) for a in fields[1:7]]))
    return out


def untimed(call: tuple[int, list[int]]) -> bool:
    nr, args = call
    if nr == PPOLL:
        return args[2] == 0
    timeout = args[3] if nr in (EPOLL_WAIT, EPOLL_PWAIT) else args[2]
    return timeout & 0xFFFFFFFF == UNTIMED


def the_poll(pid: int) -> tuple[int, list[int]]:
    """The poll the worker's poller is blocked in, once it has settled into one."""
    end = time.monotonic() + 10
    while True:
        found = polls(pid)
        if len(found) == 1:
            return found[0]
        assert time.monotonic() < end, f"no single poller in {found}"
        time.sleep(0.05)


def timers(pid: int) -> list[dict[str, str]]:
    """The fdinfo fields of each of pid's timerfds."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[timerfd]":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        out.append(dict(line.split(":", 1) for line in text.splitlines() if ":" in line))
    return out


def armed(timer: dict[str, str]) -> bool:
    return re.sub(r"\s", "", timer.get("it_value", "")) != "(0,0)"


def test_an_idle_keep_alive_connection_leaves_the_poller_untimed(server: SpawningProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        pid = worker_pid(sock)
        time.sleep(0.6)   # past two ticks: whatever the request left has settled
        # The poller's caller (spawning's worker loop) gives it a deadline a second away, whose
        # last stretch, once no tick comes before it, is waited for with a timeout: up to a
        # quarter of the time. The rest is untimed; without the ticks none is.
        looks = []
        for _ in range(12):
            looks.append(the_poll(pid))
            time.sleep(0.1)
        assert sum(map(untimed, looks)) >= 4, f"the poller waits with a timeout: {looks}"
        ticking = [t for t in timers(pid) if armed(t)]
        assert len(ticking) == 1, timers(pid)
        assert re.sub(r"\s", "", ticking[0]["it_interval"]) == "(0,250000000)", ticking[0]


def test_the_timer_stops_when_the_last_connection_goes(server: SpawningProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        pid = worker_pid(sock)
    time.sleep(0.8)   # the close, then a tick that finds nothing to sweep
    assert timers(pid), "the worker has no timerfd"
    assert not any(armed(t) for t in timers(pid)), timers(pid)
    # nothing to sweep: the poller waits for its caller's deadline, timed as before
    call = the_poll(pid)
    assert not untimed(call), call
