"""spawning.factories.paste, for real: one ini file with a composite (urlmap), a pipeline and
filters, served by ``spawning --factory=spawning.factories.paste.config_factory``, by ``pserve`` and
by ``paste.deploy.loadserver`` through ``use = egg:Spawning``; and every bad input a user can type."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import APPS, ROOT, foreign_env, free_port, http_request, scaled, wait_until

pytest.importorskip("paste.deploy")

PASTE = "--factory=spawning.factories.paste.config_factory"

INI = """\
[DEFAULT]
shared = from-default

[composite:main]
use = call:paste_apps:urlmap_factory
/ = front
/api = api

[pipeline:front]
pipeline = outer root

[app:root]
use = call:paste_apps:app_factory
greeting = root

[app:api]
use = call:paste_apps:app_factory
greeting = api
filter-with = apitag

[app:other]
use = call:paste_apps:app_factory
greeting = other

[filter:outer]
use = call:paste_apps:filter_factory
tag = outer

[filter:apitag]
use = call:paste_apps:filter_factory
tag = api-filter

[server:main]
use = egg:Spawning
host = 127.0.0.1
port = {port}
processes = {processes}
threads = 2
access-log-file = /dev/null
graceful_timeout = 5
{extra}
"""


def write_ini(tmp_path: Path, port: int, processes: int = 3, extra: str = "",
              name: str = "development.ini") -> Path:
    path = tmp_path / name
    path.write_text(INI.format(port=port, processes=processes, extra=extra))
    return path


def get_json(port: int, path: str) -> tuple[int, dict[str, str], dict]:
    status, headers, body = http_request(port, path)
    return status, headers, json.loads(body)


def worker_pids_seen(port: int, want: int, tries: int = 200) -> set[int]:
    """Distinct worker pids answering on ``port`` (fresh connections, so the kernel spreads them)."""
    pids: set[int] = set()
    for _ in range(tries):
        pids.add(get_json(port, "/")[2]["pid"])
        if len(pids) >= want:
            break
    return pids


def check_composite(port: int) -> None:
    """The urlmap composite, the pipeline's filter and the api app's filter-with all took effect."""
    status, headers, root = get_json(port, "/hello")
    assert status == 200
    assert root["greeting"] == "root" and root["filtered"] == ["outer"]
    assert headers["x-filter"] == "outer"
    assert root["path_info"] == "/hello" and root["script_name"] == ""
    status, headers, api = get_json(port, "/api/items/1")
    assert status == 200
    assert api["greeting"] == "api" and api["filtered"] == ["api-filter"]
    assert api["script_name"] == "/api" and api["path_info"] == "/items/1"
    assert api["global_conf"]["shared"] == "from-default"


@pytest.fixture(scope="module", autouse=True)
def installed_entry_point() -> None:
    """``egg:Spawning`` resolves through the installed distribution's entry points."""
    eps = [ep for ep in importlib.metadata.entry_points(group="paste.server_runner")
           if ep.dist is not None and ep.dist.name.lower() == "spawning" and ep.name == "main"]
    if not eps:
        pytest.fail("the spawning distribution is not installed, so egg:Spawning cannot resolve: "
                    "run `pip install -e .` in the repository first")
    assert eps[0].value == "spawning.factories.paste:server_runner"
    module = importlib.import_module("spawning.factories.paste")
    assert Path(module.__file__).resolve().is_relative_to(ROOT), \
        f"the installed spawning is not this tree ({module.__file__}): run `pip install -e .`"


# ---- --factory=spawning.factories.paste.config_factory ---------------------------------------------


def test_factory_serves_composite_with_ini_settings(spawn, tmp_path):
    ini_port = free_port()
    ini = write_ini(tmp_path, ini_port, processes=3)
    # spawn() passes -i/-p/-l on the command line: those win; processes come from the ini.
    server = spawn(PASTE, str(ini), "extra=from-command-line")
    check_composite(server.port)
    root = get_json(server.port, "/")[2]
    assert root["global_conf"]["extra"] == "from-command-line"
    assert root["global_conf"]["here"] == str(tmp_path)
    assert root["global_conf"]["__file__"] == str(ini)
    assert len(server.workers()) == 3
    assert len(worker_pids_seen(server.port, 3)) == 3
    with pytest.raises(OSError):  # the ini's port lost to the command line's
        socket.create_connection(("127.0.0.1", ini_port), timeout=1).close()


def test_app_name_after_hash_and_command_line_wins(spawn, tmp_path):
    ini = write_ini(tmp_path, free_port(), processes=3)
    server = spawn(PASTE, "-s", "1", f"{ini}#other")
    status, _, body = get_json(server.port, "/api/x")
    assert status == 200 and body["greeting"] == "other" and body["path_info"] == "/api/x"
    assert len(server.workers()) == 1


def test_ini_change_reloads_under_reload_dev(spawn, tmp_path):
    ini = write_ini(tmp_path, free_port(), processes=1, extra="reload = dev")
    server = spawn(PASTE, str(ini))
    assert get_json(server.port, "/")[2]["greeting"] == "root"
    ini.write_text(ini.read_text().replace("greeting = root", "greeting = reloaded"))
    try:
        wait_until(lambda: get_json(server.port, "/")[2]["greeting"] == "reloaded", 10,
                   what="the ini file's new greeting")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{server.stderr[-2000:]}") from None


# ---- use = egg:Spawning: pserve and loadserver --------------------------------------------------------


class Launched:
    """A command expected to become a spawning controller (the runner execs into it, same pid)."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sp-paste-"))
        self.notify_path = str(self.workdir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
        env["NOTIFY_SOCKET"] = self.notify_path
        self.stderr_path = self.workdir / "stderr.log"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        self.children: set[int] = set()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + scaled(timeout)
        self.notify.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                if self.notify.recv(4096).startswith(b"READY=1"):
                    return
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"exited {self.proc.returncode}: {self.stderr[-3000:]}")
        raise AssertionError(f"not ready within {scaled(timeout)} s: {self.stderr[-3000:]}")

    def workers(self) -> set[int]:
        out = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True, timeout=5, check=False,
                             env=foreign_env()).stdout
        pids = {int(line.split()[0]) for line in out.splitlines() if "Z" not in line.split()[1]}
        self.children |= pids
        return pids

    def stop(self) -> None:
        self.workers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.notify.close()


@pytest.fixture
def launch():
    started: list[Launched] = []

    def start(argv: list[str], cwd: Path) -> Launched:
        proc = Launched(argv, cwd)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def check_egg_server(proc: Launched, port: int, processes: int) -> None:
    proc.wait_ready()
    check_composite(port)
    # The runner re-executed the same process as the controller; the ini's processes are its workers.
    cmdline = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert cmdline.startswith(b"spawning: controller") or b"-m spawning" in cmdline, cmdline
    workers = proc.workers()
    assert len(workers) == processes
    assert worker_pids_seen(port, processes) == workers


def test_pserve_starts_spawning_with_ini_settings(launch, tmp_path):
    pserve = Path(sys.executable).with_name("pserve")
    argv = [str(pserve)] if pserve.exists() else [sys.executable, "-m", "pyramid.scripts.pserve"]
    try:
        import pyramid.scripts.pserve  # noqa: F401
    except ImportError:
        pytest.skip("pyramid (pserve) is not installed")
    port = free_port()
    ini = write_ini(tmp_path, port, processes=3)
    proc = launch([*argv, str(ini), "extra=pserve-var"], tmp_path)
    check_egg_server(proc, port, 3)
    assert get_json(port, "/")[2]["global_conf"]["extra"] == "pserve-var"


def test_pserve_app_name_from_the_uri(launch, tmp_path):
    pytest.importorskip("pyramid.scripts.pserve")
    port = free_port()
    ini = write_ini(tmp_path, port, processes=1)
    # pserve FILE#other loads [app:other] and [server:other]
    ini.write_text(ini.read_text().replace("[server:main]", "[server:other]"))
    proc = launch([sys.executable, "-m", "pyramid.scripts.pserve", f"{ini}#other"], tmp_path)
    proc.wait_ready()
    assert get_json(port, "/api")[2]["greeting"] == "other"


LOADSERVER = """
import sys
from paste.deploy import loadapp, loadserver
uri = "config:" + sys.argv[1]
app = loadapp(uri)
server = loadserver(uri)
server(app)
raise SystemExit("the runner returned")
"""


def test_loadserver_starts_spawning_with_ini_settings(launch, tmp_path):
    port = free_port()
    ini = write_ini(tmp_path, port, processes=2)
    proc = launch([sys.executable, "-c", LOADSERVER, str(ini)], tmp_path)
    check_egg_server(proc, port, 2)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(15) == 0


# ---- bad input: exit 2, one line naming the file, no traceback --------------------------------------


def run_spawning(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "spawning", "-p", str(free_port()), "-l", "/dev/null",
                           *args], capture_output=True, text=True, timeout=30, check=False, env=env,
                          cwd=str(cwd), stdin=subprocess.DEVNULL)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("spawning:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("case, fragments", [
    ("missing-file", ["cannot read ini file", "nowhere.ini", "no such file"]),
    ("missing-section", ["no application section 'nope'", "development.ini"]),
    ("bad-value", ["development.ini [server:main]", "processes", "'many'"]),
    ("unknown-key", ["development.ini [server:main]", "unknown setting 'worker_count'"]),
    ("not-ini", ["cannot parse ini file", "development.ini"]),
    ("no-file-given", ["no ini file given"]),
    ("app-raises", ["cannot load application 'main'", "development.ini",
                    "RuntimeError: the database is not configured"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, case, fragments):
    ini = write_ini(tmp_path, free_port(), processes=1)
    target = str(ini)
    if case == "missing-file":
        target = str(tmp_path / "nowhere.ini")
    elif case == "missing-section":
        target = f"{ini}#nope"
    elif case == "bad-value":
        ini.write_text(ini.read_text().replace("processes = 1", "processes = many"))
    elif case == "unknown-key":
        ini.write_text(ini.read_text() + "worker_count = 3\n")
    elif case == "not-ini":
        ini.write_text("this is not an ini file\n")
    elif case == "app-raises":
        ini.write_text(ini.read_text().replace("use = call:paste_apps:urlmap_factory",
                                               "use = call:paste_apps:broken_app_factory"))
    args = [PASTE] + ([] if case == "no-file-given" else [target])
    line = one_error_line(run_spawning(*args))
    for fragment in fragments:
        assert fragment in line, line


def test_foreign_server_section_is_tolerated(spawn, tmp_path):
    """A [server:main] written for another server: the settings spawning knows apply, others are not
    errors (the same file may be served by waitress in production)."""
    ini = write_ini(tmp_path, free_port(), processes=2)
    ini.write_text(ini.read_text().replace("use = egg:Spawning", "use = egg:waitress#main")
                   + "listen = *:6543\n")
    server = spawn(PASTE, str(ini))
    assert get_json(server.port, "/")[0] == 200
    assert len(server.workers()) == 2


def test_runner_rejects_a_bad_setting_with_one_line(tmp_path):
    ini = write_ini(tmp_path, free_port(), processes=1)
    ini.write_text(ini.read_text().replace("threads = 2", "threads = lots"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", LOADSERVER, str(ini)], capture_output=True,
                            text=True, timeout=30, check=False, env=env, cwd=str(tmp_path))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        (f"spawning: error: {ini} [server]: setting threads: invalid value 'lots': "
         "'lots' is not a whole number")]
