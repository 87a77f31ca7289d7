"""The access log (spawning/wsgi/accesslog.py): gunicorn's atoms and JSON lines through real servers on
both request paths (C's Runner and Python's handler), whole lines from many processes and threads,
and a log that cannot be written (a closed pipe, a full disk) never stopping the server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import APPS, ROOT, free_port, http_request, raw_exchange, wait_http_status, wait_until

from spawning.errors import ConfigError
from spawning.wsgi.accesslog import AccessLog, check_format

GUNICORN_COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
EVERY_ATOM = (GUNICORN_COMBINED + " D=%(D)s L=%(L)s M=%(M)s T=%(T)s m=%(m)s U=%(U)s q=%(q)s "
              "H=%(H)s B=%(B)s in=%({X-Trace}i)s out=%({Content-Type}o)s e=%({SERVER_NAME}e)s %(p)s "
              "100%%")
# The request paths: C's Runner, Python's handler (the same server with the C path off), and
# green threads (a request greenlet's thread-local duration must still be its own request's).
PATHS = {"c": ({}, ()), "python": ({"SPAWNING_NO_PYFAST": "1"}, ()), "green": ({}, ("-t", "0"))}


def wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    """The log's lines once it holds at least n."""
    wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") >= n, timeout,
               interval=0.05, what=f"{n} lines in {path.name}")
    return path.read_text().splitlines()


@pytest.mark.parametrize("path_kind", sorted(PATHS))
def test_gunicorn_atoms(spawn, tmp_path: Path, path_kind: str) -> None:
    """Every atom, on the C path and on the Python one: the duration is the request's (a 50 ms
    sleep reads as >= 50,000 us), headers both ways, the user from Basic auth, and a newline a
    client decoded into the path escaped so it cannot start a forged line."""
    log_path = tmp_path / "access.log"
    env, args = PATHS[path_kind]
    server = spawn("core_app.application", "-s", "1", *args, "--access-log-format", EVERY_ATOM,
                   access_log=str(log_path), env=env)
    assert http_request(server.port, "/x%0Ay?a=1", headers={
        "X-Trace": "t-1", "Authorization": "Basic dXNlcjpwdw==", "Referer": "http://r/",
        "User-Agent": 'ua "quoted"'})[0] == 200
    assert http_request(server.port, "/v/sleep?0.05")[0] == 200
    # The /x line, then the sleep's: a line goes out after its answer, so the order may differ.
    first, second = sorted(wait_lines(log_path, 2), key=lambda line: "/v/sleep" in line)
    pid = server.workers()[0]
    stamp = r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"
    m = re.fullmatch(
        r'127\.0\.0\.1 - user ' + stamp + r' "GET /x%0Ay\?a=1 HTTP/1\.1" 200 (\d+) "http://r/" '
        r'"ua \\"quoted\\"" D=(\d+) L=(\d+)\.(\d{6}) M=(\d+) T=0 m=GET U=/x\\x0ay q=a=1 '
        r'H=HTTP/1\.1 B=(\d+) in=t-1 out=text/plain e=127\.0\.0\.1 <(\d+)> 100%', first)
    assert m, first
    size, d, l_int, l_frac, ms, b_size, p = m.groups()
    assert size == b_size != "0" and int(p) == pid
    assert int(d) == int(l_int) * 1_000_000 + int(l_frac) and int(ms) == int(d) // 1000
    m = re.search(r' D=(\d+) .* M=(\d+) .* in=- ', second)
    assert m, second
    assert 50_000 <= int(m.group(1)) < 5_000_000 and int(m.group(2)) >= 50, second


@pytest.mark.parametrize("path_kind", sorted(PATHS))
def test_json_lines(spawn, tmp_path: Path, path_kind: str) -> None:
    log_path = tmp_path / "access.log"
    env, args = PATHS[path_kind]
    server = spawn("core_app.application", "-s", "1", *args, "--access-log-format", "json",
                   access_log=str(log_path), env=env)
    assert http_request(server.port, "/v/sleep?0.03", headers={"User-Agent": "probe"})[0] == 200
    assert http_request(server.port, "/a?b=c", method="HEAD")[0] == 200
    lines = wait_lines(log_path, 2)
    # Sorted: a line goes out after its answer, so another thread's may come first.
    slept, head = sorted((json.loads(line) for line in lines), key=lambda r: r["method"])
    assert set(slept) == {"time", "remote_addr", "remote_user", "request", "method", "path", "query",
                          "protocol", "status", "bytes", "referer", "user_agent", "duration_us", "pid"}
    assert slept["request"] == "GET /v/sleep?0.03 HTTP/1.1" and slept["status"] == 200
    assert slept["user_agent"] == "probe" and slept["referer"] is None
    assert slept["bytes"] == len(b"slept\n") and slept["duration_us"] >= 30_000
    assert slept["pid"] == server.workers()[0] and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", slept["time"])
    assert head["method"] == "HEAD" and head["path"] == "/a" and head["query"] == "b=c"
    assert head["bytes"] == 0


def _env(**extra: str) -> dict:
    env = {"REQUEST_METHOD": "GET", "RAW_URI": '/p?q="x"', "PATH_INFO": "/p", "QUERY_STRING": 'q="x"',
           "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.1",
           "HTTP_USER_AGENT": 'a\\b"c', "HTTP_REFERER": "http://r/"}
    env.update(extra)
    return env


def test_default_is_gunicorns_combined_line(tmp_path: Path) -> None:
    """The default line and gunicorn's combined atoms read the same, byte for byte."""
    default, atoms = tmp_path / "default.log", tmp_path / "atoms.log"
    for path, fmt in ((default, None), (atoms, GUNICORN_COMBINED)):
        access = AccessLog(str(path), fmt)
        access.log(_env(), "200 OK", 12, [])
        access.log(_env(REQUEST_METHOD="HEAD"), "200 OK", 12, [])
        access.log(_env(), "204 No Content", 0, [])
        access.close()
    assert default.read_bytes() == atoms.read_bytes()
    assert default.read_text().splitlines()[0].endswith(
        '"GET /p?q=\\"x\\" HTTP/1.1" 200 12 "http://r/" "a\\\\b\\"c"')


def test_bad_formats_are_refused() -> None:
    for bad in ("%(nope)s", "%({x}z)s", "no atoms here"):
        with pytest.raises(ConfigError):
            check_format(bad)
    assert check_format("JSON") == "json" and check_format("") is None
    out = subprocess.run([sys.executable, "-m", "spawning", "--access-log-format", "%(h)s %(zz)s",
                          "hello.application"], capture_output=True, text=True, timeout=30,
                         cwd=str(ROOT), check=False)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "unknown access log atom %(zz)s" in out.stderr


def _hammer(path: str, proc: int, threads: int, lines: int) -> None:
    access = AccessLog(path, GUNICORN_COMBINED + " %(p)s")

    def run(t: int) -> None:
        for i in range(lines):
            ua = f"p{proc}t{t}i{i}-" + "x" * (i * 37 % 3000)   # lines up to ~3 KB
            access.log(_env(HTTP_USER_AGENT=ua), "200 OK", i, [])

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_lines_are_whole_across_processes_and_threads(tmp_path: Path) -> None:
    """Eight processes of four threads each append to one file: every line parses whole."""
    path = tmp_path / "shared.log"
    procs, threads, lines = 8, 4, 300
    pids = []
    for p in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                _hammer(str(path), p, threads, lines)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        _, code = os.waitpid(pid, 0)
        assert code == 0
    pattern = re.compile(r'10\.0\.0\.1 - - \[[^]]+\] "GET /p\?q=\\"x\\" HTTP/1\.1" 200 (\d+|-) '
                         r'"http://r/" "p(\d+)t(\d+)i(\d+)-(x*)" <\d+>')
    seen = set()
    for line in path.read_text().splitlines():
        m = pattern.fullmatch(line)
        assert m, line[:200]
        proc, t, i = int(m.group(2)), int(m.group(3)), int(m.group(4))
        assert len(m.group(5)) == i * 37 % 3000
        seen.add((proc, t, i))
    assert len(seen) == procs * threads * lines


def test_server_lines_are_whole_under_concurrency(spawn, tmp_path: Path) -> None:
    """Two workers of four threads, 16 clients sending long User-Agents: one whole line each."""
    log_path = tmp_path / "access.log"
    server = spawn("hello.application", "-s", "2", "-t", "4", access_log=str(log_path))
    per_client, clients = 40, 16
    failures: list[str] = []

    def client(c: int) -> None:
        for i in range(per_client):
            ua = f"c{c}i{i}-" + "y" * ((c * 131 + i * 57) % 3500)
            try:
                if http_request(server.port, f"/{c}/{i}", headers={"User-Agent": ua})[0] != 200:
                    failures.append(f"{c}/{i}")
            except OSError as exc:
                failures.append(f"{c}/{i}: {exc}")

    runners = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for r in runners:
        r.start()
    for r in runners:
        r.join(60)
    assert not failures
    lines = wait_lines(log_path, per_client * clients)
    pattern = re.compile(r'127\.0\.0\.1 - - \[[^]]+\] "GET /(\d+)/(\d+) HTTP/1\.1" 200 \d+ "-" '
                         r'"c(\d+)i(\d+)-(y*)"')
    seen = set()
    for line in lines:
        m = pattern.fullmatch(line)
        assert m, line[:200]
        c, i = int(m.group(1)), int(m.group(2))
        assert (int(m.group(3)), int(m.group(4))) == (c, i)
        assert len(m.group(5)) == (c * 131 + i * 57) % 3500
        seen.add((c, i))
    assert len(seen) == per_client * clients == len(lines)


def _answers(port: int, n: int) -> None:
    for i in range(n):
        assert http_request(port, f"/after/{i}")[0] == 200


def test_full_disk_never_stops_serving(spawn) -> None:
    """/dev/full as the access log (every write fails with ENOSPC): requests are answered and the
    drops are said once (the warning is rate-limited), not once per request."""
    server = spawn("hello.application", "-s", "1", "-t", "2", access_log="/dev/full")
    _answers(server.port, 30)
    assert server.wait_until(lambda: "line(s) dropped" in server.stderr, timeout=5)
    warnings = [line for line in server.stderr.splitlines() if "line(s) dropped" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings


def test_pipe_whose_reader_closes_never_stops_serving(spawn, tmp_path: Path) -> None:
    """A FIFO as the access log (a log shipper reading it): once its reader is gone, each write
    fails with EPIPE; requests are still answered."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # the server's open for writing needs one
    try:
        server = spawn("hello.application", "-s", "1", access_log=str(fifo))
        _answers(server.port, 3)
        got = [b""]

        def three_lines() -> bool:
            with contextlib.suppress(BlockingIOError):
                got[0] += os.read(reader, 65536)
            return got[0].count(b"\n") >= 3

        wait_until(three_lines, 5, interval=0.05, what="3 lines from the FIFO")
        assert got[0].count(b"\n") == 3 and b'"GET /after/2 HTTP/1.1" 200' in got[0]
    finally:
        os.close(reader)
    _answers(server.port, 20)
    assert server.wait_until(lambda: "Broken pipe" in server.stderr, timeout=5), server.stderr[-2000:]


def test_stdout_to_a_closed_pipe_never_stops_serving(tmp_path: Path) -> None:
    """`-l -` with standard output a pipe whose reader closed (`spawning ... | head -1`)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]))
    env.pop("NOTIFY_SOCKET", None)
    err_path = tmp_path / "stderr.log"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "spawning", "-i", "127.0.0.1", "-p", str(port),
                                 "-s", "1", "-l", "-", "hello.application"],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(ROOT))
    try:
        assert wait_http_status(port, 15) == 200
        assert proc.stdout is not None
        assert b'"GET / HTTP/1.1" 200' in proc.stdout.readline()
        proc.stdout.close()           # the reader goes away
        _answers(port, 20)
        assert proc.poll() is None
        wait_until(lambda: "Broken pipe" in err_path.read_text(), 5, interval=0.05,
                   what="the broken pipe on the server's log")
        assert "line(s) dropped" in err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_rotated_file_is_opened_anew(tmp_path: Path) -> None:
    """logrotate's default (move the file, expect a new one): within a second the log writes to
    a new file at its path; nothing is lost in between (the moved file gets the lines)."""
    path = tmp_path / "access.log"
    access = AccessLog(str(path))
    try:
        access.log(_env(RAW_URI="/before"), "200 OK", 1)
        path.rename(tmp_path / "access.log.1")
        access.log(_env(RAW_URI="/moved"), "200 OK", 1)     # the old file, or the new one if
                                                            # a second began since
        time.sleep(1.05)
        access.log(_env(RAW_URI="/after"), "200 OK", 1)
    finally:
        access.close()
    old = (tmp_path / "access.log.1").read_text()
    new = path.read_text()
    assert "/before" in old and "/after" not in old and "/after" in new
    assert ("/moved" in old) != ("/moved" in new)


def test_access_log_lines(spawn, tmp_path: Path):
    """Apache combined format, one line per request: quotes and backslashes in quoted fields
    escaped as Apache does (a client must not forge fields), and no body size for HEAD."""
    log_path = tmp_path / "access.log"
    server = spawn("core_app.application", "-s", "1", access_log=str(log_path))
    raw_exchange(server.port, b'GET /a?q="x" HTTP/1.1\r\nHost: x\r\nUser-Agent: evil" "x\\y\r\n'
                 b'Referer: http://r/"q\r\nConnection: close\r\n\r\n')
    raw_exchange(server.port, b"HEAD /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw_exchange(server.port, b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    lines = sorted(wait_lines(log_path, 3), key=lambda x: x.split('"')[1].split()[1])
    assert len(lines) == 3, lines
    pattern = (r'^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
               r'"(GET|HEAD) (\S+) HTTP/1\.1" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$')
    fields = [re.match(pattern, line) for line in lines]
    assert all(fields), lines
    a, b, c = (m.groups() for m in fields)   # type: ignore[union-attr]
    assert a[1] == '/a?q=\\"x\\"' and a[4] == 'http://r/\\"q' and a[5] == 'evil\\" \\"x\\\\y', a
    assert b[0] == "HEAD" and b[3] == "-", b
    assert c[2] == "200" and c[3] == str(len(b"hello /c\n")), c
