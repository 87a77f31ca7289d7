"""The command line: exit codes, one-line errors, app syntax, process hygiene options."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APPS, ROOT, free_port, scaled, start_server, wait_until


def run_cli(*args: str, timeout: float = 20, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "spawning", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=environ, cwd=str(ROOT), stdin=subprocess.DEVNULL)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("spawning ")


def test_help_lists_every_option():
    from spawning.config.options import OPTIONS

    result = run_cli("--help")
    assert result.returncode == 0
    for opt in OPTIONS:
        for flag in opt.flags:
            assert flag in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["-p", "http", "hello.application"], "--port"),
    (["-p", "70000", "hello.application"], "out of range"),
    (["--threads", "-1", "hello.application"], "--threads"),
    (["--max-body-size", "lots", "hello.application"], "--max-body-size"),
    (["--bind", "::1:80", "hello.application"], "brackets"),
    (["--log-level", "loud", "hello.application"], "--log-level"),
    (["--no-such-option", "hello.application"], "unrecognized"),
    ([], "no application given"),
    (["not a path"], "bad application path"),
])
def test_bad_option_is_one_line_and_exit_2(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("app, fragment", [
    ("no_such_module_xyz.application",
     ("spawning: cannot import 'no_such_module_xyz.application': ModuleNotFoundError: "
      "No module named 'no_such_module_xyz'")),
    ("broken_import.application", "No module named 'spawning_no_such_module'"),
    ("hello.no_such_attr", "has no attribute 'no_such_attr'"),
    ("wsgipkg.noapp", "module 'wsgipkg.noapp' has no 'application' either: name the object"),
])
def test_app_that_cannot_be_imported_exits_2_with_one_line(app, fragment):
    result = run_cli("-p", str(free_port()), "-s", "2", "-l", "/dev/null", app)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("spawning:")]
    assert len(error_lines) == 1, result.stderr
    assert fragment in error_lines[0]


def test_module_alone_serves_its_application(spawn):
    """gunicorn's form: "wsgipkg.wsgi" is a module, not module.attribute; its `application`."""
    server = spawn("wsgipkg.wsgi", "-s", "1")
    status, _, body = server.get("/")
    assert (status, body) == (200, b"wsgi.py!\n")


def test_port_in_use_exits_1_with_one_line():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        t0 = time.monotonic()
        result = run_cli("-p", str(port), "hello.application")
    assert result.returncode == 1
    assert result.stderr == f"spawning: cannot bind 127.0.0.1:{port}: Address already in use\n"
    assert time.monotonic() - t0 < scaled(10)


def test_pidfile_held_by_a_live_process_refuses_to_start(tmp_path: Path):
    pidfile = tmp_path / "spawning.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process is alive
    result = run_cli("-p", str(free_port()), "--pidfile", str(pidfile), "hello.application")
    assert result.returncode == 1
    assert "names a running process" in result.stderr
    assert pidfile.read_text().strip() == str(os.getpid())


def test_pidfile_is_written_and_removed(spawn, tmp_path: Path):
    pidfile = tmp_path / "spawning.pid"
    pidfile.write_text("999999999\n")  # stale: no such process
    server = spawn("hello.application", "-s", "1", "--pidfile", str(pidfile))
    assert pidfile.read_text().strip() == str(server.pid)
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    assert not pidfile.exists()


def test_colon_syntax_factory_call_and_middleware_order(spawn):
    server = spawn("middleware:create_app('hi there')", "middleware.first", "middleware.second",
                   "-s", "1")
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"hi there"
    conn.close()
    # first is applied first (innermost): its start_response wrapper runs before second's.
    assert resp.msg.get_all("X-Middleware") == ["first", "second"]


def test_bind_unix_socket_and_ipv6(spawn, tmp_path: Path):
    path = tmp_path / "s.sock"
    path.touch()  # not a socket: must be refused, not deleted
    result = run_cli("--bind", f"unix:{path}", "hello.application")
    assert result.returncode == 1 and "not a socket" in result.stderr
    path.unlink()
    # A stale socket file (nobody listening) is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    port = free_port()
    binds = ["--bind", f"unix:{path}", "--bind", f"127.0.0.1:{port}"]
    has_v6 = socket.has_ipv6
    if has_v6:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            has_v6 = False
    v6port = free_port()
    if has_v6:
        binds += ["--bind", f"[::1]:{v6port}"]
    server = spawn("hello.application", "-s", "1", *binds, port=port)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(path))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := client.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert server.get("/")[0] == 200
    if has_v6:
        from conftest import http_request

        assert http_request(v6port, host="::1")[0] == 200
    server.stop()
    assert not path.exists(), "the unix socket file is removed at exit"


def test_systemd_socket_activation(spawn, tmp_path: Path):
    """LISTEN_FDS: the server adopts descriptor 3 instead of binding."""
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    script = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
              "os.environ['LISTEN_PID'] = str(os.getpid()); "
              "os.execv(sys.executable, [sys.executable, '-m', 'spawning', *sys.argv[2:]])")
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), environ.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-c", script, str(listener.fileno()), "-s", "1",
                             "-p", "1", "-l", "/dev/null", "hello.application"],
                            pass_fds=(listener.fileno(),), env=environ, cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listener.close()
    try:
        from conftest import wait_http_status

        assert wait_http_status(port) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0


def test_daemonize_writes_pidfile_and_logs(tmp_path: Path):
    pidfile = tmp_path / "d.pid"
    errlog = tmp_path / "err.log"
    port = free_port()
    result = run_cli("-p", str(port), "-s", "1", "-l", "/dev/null", "--daemonize", "--pidfile",
                     str(pidfile), "--stderr", str(errlog), "hello.application")
    assert result.returncode == 0
    wait_until(pidfile.exists, 10, what="the pid file")
    pid = int(pidfile.read_text())
    try:
        from conftest import wait_http_status

        assert wait_http_status(port) == 200
        # Logged once the first generation is ready: a worker may answer just before that line.
        wait_until(lambda: "listening on" in errlog.read_text(), 5, what="'listening on' in the log")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pidfile.exists(), 10, what="the pid file to go")


def test_user_and_group_are_dropped_after_binding(spawn):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    try:
        probe = subprocess.run([sys.executable, "-c", "import spawning.server"], user="nobody",
                               group="nogroup", cwd="/", capture_output=True, check=False,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    except OSError:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("user nobody cannot read this Python installation")
    server = spawn("hello.application", "-s", "1", "--user", "nobody", "--group", "nogroup")
    worker = server.workers()[0]
    with open(f"/proc/{worker}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    import pwd

    assert int(uid_line.split()[1]) == pwd.getpwnam("nobody").pw_uid
    assert server.get("/")[0] == 200


def test_unknown_user_exits_1():
    result = run_cli("-p", str(free_port()), "--user", "no_such_user_xyz", "hello.application")
    assert result.returncode == 1
    assert "spawning: no such user: 'no_such_user_xyz'" in result.stderr


def test_subcommand_dispatch_does_not_need_restructuring(monkeypatch, capsys):
    from spawning import cli

    calls = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "hello-cmd", ("tests_subcmd_probe:main", "probe"))
    sys.modules["tests_subcmd_probe"] = type(sys)("tests_subcmd_probe")
    sys.modules["tests_subcmd_probe"].main = lambda argv: calls.append(argv) or 7  # type: ignore
    try:
        assert cli.main(["hello-cmd", "--x", "y"]) == 7
    finally:
        del sys.modules["tests_subcmd_probe"]
    assert calls == [["--x", "y"]]


def test_process_titles(spawn):
    pytest.importorskip("setproctitle")
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    server = spawn("hello.application", "-s", "1")
    worker = server.workers()[0]
    with open(f"/proc/{server.pid}/cmdline", "rb") as f:
        assert f.read().startswith(b"spawning: controller")
    with open(f"/proc/{worker}/cmdline", "rb") as f:
        assert f.read().startswith(b"spawning: worker [gen 1]")


def test_start_server_helper_is_reusable():
    server = start_server("hello.application", "-s", "1")
    try:
        assert server.get("/")[0] == 200
        assert server.notifications[0].startswith("READY=1")
    finally:
        assert server.stop() == 0


def test_coverage_is_recorded_per_worker(spawn, tmp_path: Path):
    pytest.importorskip("coverage")
    server = spawn("hello.application", "-s", "2", "-c", cwd=tmp_path)
    assert server.get("/")[0] == 200
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    assert len(list(tmp_path.glob(".coverage.*"))) == 2
