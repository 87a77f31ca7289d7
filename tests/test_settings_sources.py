"""Where settings come from and the habits gunicorn users bring: the real ``spawning`` command with
a ``--config`` TOML file, ``SPAWNING_*`` variables and the command line (in that order of strength,
as ``--print-config`` shows), ``--check-config``, the hints for ``-w 4`` / ``-c conf.py``, unknown
flags, bad files and variables (one line, exit 2), and the aliases and options that change how the
app is loaded (``--env``, ``--preload``, ``--chdir``, ``--pythonpath``), each through real requests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import APPS, ROOT, free_port, http_request


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m spawning ARGS``, with no SPAWNING_* option variables of the caller's."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPAWNING_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT)])
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "spawning", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=environ, cwd=str(cwd or ROOT),
                          stdin=subprocess.DEVNULL)


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """--print-config's lines as name -> (value, source)."""
    assert result.returncode == 0, result.stderr
    settings = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(#\s*)?(\w+)\s*(?:=\s*(.*?)|is not set)\s+# (.+)$", line)
        assert match, f"unexpected --print-config line {line!r}"
        settings[match.group(2)] = (match.group(3) or "", match.group(4))
    return settings


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---- precedence: command line > environment > file > defaults ---------------------------------------


def test_print_config_shows_each_value_and_its_source(tmp_path: Path):
    conf = tmp_path / "spawning.toml"
    conf.write_text('processes = 2\nthreads = 8\nmax-requests = 100\nbacklog = 64\n'
                    'bind = ["127.0.0.1:9001", "unix:/tmp/x.sock"]\nkeep-alive = 3\n')
    result = run_cli("--config", str(conf), "--max-requests", "300", "--workers", "5",
                     "hello.application", "--print-config",
                     env={"SPAWNING_THREADS": "3", "SPAWNING_MAX_REQUESTS": "200",
                          "SPAWNING_PROCESSES": "7",
                          # build and test switches share the prefix: neither options nor errors
                          "SPAWNING_NO_PYFAST": "1", "SPAWNING_FORCE_POLL": "1",
                          "SPAWNING_SANITIZE": "1", "SPAWNING_KQUEUE_SHIM": "1",
                          "SPAWNING_EXPECT_BACKEND": "epoll"})
    settings = printed(result)
    assert result.stderr == ""
    assert settings["processes"] == ("5", "command line")
    assert settings["max_requests"] == ("300", "command line")
    assert settings["threads"] == ("3", "environment SPAWNING_THREADS")
    assert settings["backlog"] == ("64", f"file {conf}")
    assert settings["bind"] == ('["127.0.0.1:9001", "unix:/tmp/x.sock"]', f"file {conf}")
    assert settings["keepalive_timeout"] == ("3.0", f"file {conf}")
    assert settings["port"] == ("8080", "default")
    assert settings["pidfile"] == ("", "default")
    assert settings["args"] == ('["hello.application"]', "command line")
    assert "print_config" not in settings and "check_config" not in settings


def test_print_config_output_is_a_config_file(tmp_path: Path):
    """What --print-config prints reads back as a --config file, to the same values."""
    first = run_cli("--print-config", "-s", "3", "--max-body-size", "64K", "-e", "A=b \\ c",
                    "--access-log-format", '%(h)s "%(r)s" %(s)s')
    conf = tmp_path / "printed.toml"
    conf.write_text(first.stdout)
    again = printed(run_cli("--print-config", "--config", str(conf)))
    assert again.pop("config") == (f'"{conf}"', "command line")  # printed as a comment line
    for name, (value, _) in printed(first).items():
        if name != "config":
            assert again[name][0] == value, name
    assert again["processes"] == ("3", f"file {conf}")
    assert again["env"] == ('["A=b \\\\ c"]', f"file {conf}")
    # ...and so does the output of that, naming the file.
    conf.write_text(run_cli("--print-config", "--config", str(conf)).stdout)
    assert printed(run_cli("--print-config", "--config", str(conf)))["processes"][0] == "3"


def test_environment_names_the_config_file_and_aliases_work_as_keys(tmp_path: Path):
    conf = tmp_path / "c.toml"
    conf.write_text('workers = 3\naccess_logfile = "/dev/null"\nenv = {GREETING = "hi"}\n')
    settings = printed(run_cli("--print-config", env={"SPAWNING_CONFIG": str(conf),
                                                      "SPAWNING_KEEP_ALIVE": "2"}))
    assert settings["processes"] == ("3", f"file {conf}")
    assert settings["access_log_file"] == ('"/dev/null"', f"file {conf}")
    assert settings["env"] == ('["GREETING=hi"]', f"file {conf}")
    assert settings["config"] == (f'"{conf}"', "environment SPAWNING_CONFIG")
    assert settings["keepalive_timeout"] == ("2.0", "environment SPAWNING_KEEP_ALIVE")


def test_env_name_close_to_an_option_is_warned_about_never_fatal():
    result = run_cli("--print-config", env={"SPAWNING_PROCESS": "3", "SPAWNING_WHATEVER_ELSE": "1"})
    assert printed(result)["processes"] == ("4", "default")
    assert result.stderr == ("spawning: warning: SPAWNING_PROCESS is not a setting (did you mean "
                             "SPAWNING_PROCESSES?); ignored\n")


# ---- bad input: one line naming the source, exit 2 --------------------------------------------------


@pytest.mark.parametrize("text, fragment", [
    ("processes = \n", "not valid TOML: Invalid value (at line 1, column 13)"),
    ("proceses = 2\n", "proceses: unknown setting (did you mean 'processes'?)"),
    ("processes = \"four\"\n", "processes: invalid value 'four': 'four' is not a whole number"),
    ("port = 70000\n", "port: invalid value 70000: 70000 is out of range"),
    ("threads = [1, 2]\n", "threads: invalid value [1, 2]: a list is not a value"),
    ("print-config = true\n", "print-config: is a command-line flag only"),
    ("workers = 2\nprocesses = 3\n", "workers and processes both set processes"),
    ("config = \"other.toml\"\n", "config: a settings file cannot name another"),
])
def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, fragment: str):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    line = one_error_line(run_cli("--config", str(conf), "hello.application"))
    assert line == f"spawning: error: {conf}: {fragment}" or \
        line.startswith(f"spawning: error: {conf}: {fragment}"), line


def test_missing_or_python_config_file(tmp_path: Path):
    line = one_error_line(run_cli("--config", str(tmp_path / "none.toml"), "hello.application"))
    assert line == f"spawning: error: cannot read the settings file {tmp_path / 'none.toml'}: " \
                   "No such file or directory"
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("workers = 4\n")
    assert "not Python" in one_error_line(run_cli("--config", str(conf), "hello.application"))


@pytest.mark.parametrize("var, value, fragment", [
    ("SPAWNING_PROCESSES", "four", "SPAWNING_PROCESSES: invalid value 'four': 'four' is not a whole"),
    ("SPAWNING_BIND", "::1:80", "SPAWNING_BIND: invalid value '::1:80'"),
    ("SPAWNING_ENV", "NOEQUALS", "SPAWNING_ENV: invalid value 'NOEQUALS': 'NOEQUALS' is not KEY=VALUE"),
    ("SPAWNING_DAEMONIZE", "maybe", "SPAWNING_DAEMONIZE: invalid value 'maybe'"),
])
def test_bad_env_value_is_one_line_naming_the_variable(var: str, value: str, fragment: str):
    line = one_error_line(run_cli("hello.application", env={var: value}))
    assert line.startswith(f"spawning: error: {fragment}"), line


# ---- gunicorn habits: hints, not surprises -----------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["-w", "4", "hello.application"],
     "spawning: error: -w is --watch here; for 4 worker processes use -s 4 / --workers 4"),
    (["-w1", "hello.application"],
     "spawning: error: -w is --watch here; for 1 worker process use -s 1 / --workers 1"),
    (["-c", "gunicorn.conf.py", "hello.application"],
     "spawning: error: -c is --coverage here and takes no value; for a settings file use --config "
     "FILE.toml (TOML, not Python)"),
    (["-p", "app.pid", "hello.application"],
     "spawning: error: -p is --port here; for a pid file use --pidfile app.pid"),
    (["--procesess", "2", "hello.application"],
     "spawning: error: unrecognized option --procesess (did you mean --processes?) "
     "(see spawning --help)"),
    (["--graceful-timout=5", "hello.application"],
     "spawning: error: unrecognized option --graceful-timout (did you mean --graceful-timeout?) "
     "(see spawning --help)"),
    (["--reload", "hello.application"],
     "spawning: error: --reload takes a mode here: --reload=dev (reload on code changes)"),
    (["hello.application", "--reload"],
     "spawning: error: --reload takes a mode here: --reload=dev (reload on code changes)"),
    (["-k", "gevent", "hello.application"],
     "spawning: error: unrecognized option -k: use --threads N (N threads a worker) or --threads 0 "
     "(green threads) (see spawning --help)"),
])
def test_gunicorn_habits_get_a_one_line_hint(args: list[str], expected: str):
    assert one_error_line(run_cli(*args)) == expected


def test_short_flags_keep_their_spawning_meaning(tmp_path: Path):
    """-w names a file to watch when that file exists; -c alone is --coverage."""
    (tmp_path / "4").write_text("")
    settings = printed(run_cli("--print-config", "-w", "4", "-c", cwd=tmp_path))
    assert settings["watch"] == ('["4"]', "command line")
    assert settings["coverage"] == ("true", "command line")


def test_help_shows_each_default_once():
    result = run_cli("--help")
    assert result.returncode == 0
    # argparse wraps help lines: join each option's text before counting.
    entries = re.split(r"\n  (?=-)", result.stdout)
    for entry in entries:
        assert entry.count("(default:") <= 1, entry
    assert "(default: --host)" in result.stdout
    from spawning.config import OPTIONS

    for opt in OPTIONS:
        assert "default:" not in opt.help and "(default" not in opt.help, opt.name


# ---- --check-config ----------------------------------------------------------------------------------


def test_check_config_loads_the_app_without_serving():
    with socket.socket() as holder:  # --check-config binds nothing: a taken port does not matter
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_cli("--check-config", "-p", str(port), "settings_probe.application")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "settings_probe.application" in result.stdout


@pytest.mark.parametrize("app, fragment", [
    ("no_such_module_q.application", "spawning: cannot import 'no_such_module_q.application': "
                                     "ModuleNotFoundError: No module named 'no_such_module_q'"),
    ("hello.no_such_attr", "has no attribute 'no_such_attr'"),
    ("broken_import.application", "No module named 'spawning_no_such_module'"),
])
def test_check_config_exits_2_with_one_line(app: str, fragment: str):
    line = one_error_line(run_cli("--check-config", app))
    assert fragment in line


# ---- options that change how the app is loaded, through real requests -------------------------------


def test_env_reaches_the_app(spawn, tmp_path: Path):
    conf = tmp_path / "c.toml"
    conf.write_text('env = ["FROM_FILE=file value"]\n')
    server = spawn("settings_probe.application", "-s", "1", "-e", "PROBE_GREETING=hello there",
                   "--env", "OTHER=x=y", "--config", str(conf))
    assert server.get("/?PROBE_GREETING")[2].endswith(b"env=hello there")
    assert server.get("/?OTHER")[2].endswith(b"env=x=y")
    # The command line's --env replaces the file's (the first source that sets an option wins).
    assert server.get("/?FROM_FILE")[2].endswith(b"env=")


def test_env_from_the_file_reaches_the_app(spawn, tmp_path: Path):
    conf = tmp_path / "c.toml"
    conf.write_text('env = {PROBE_GREETING = "from the file"}\n')
    server = spawn("settings_probe.application", "-s", "1", "--config", str(conf))
    assert server.get("/")[2].endswith(b"env=from the file")


def _probe(server) -> dict[str, int]:
    body = server.get("/")[2].decode()
    return {k: int(v) for k, v in re.findall(r"(imported_in|pid)=(\d+)", body)}


def test_preload_imports_the_app_once_in_the_controller(spawn):
    server = spawn("settings_probe.application", "-s", "2", "--preload")
    seen = [_probe(server) for _ in range(6)]
    assert all(p["imported_in"] == server.pid for p in seen), (server.pid, seen)
    assert all(p["pid"] != server.pid and p["pid"] in server.workers() for p in seen)
    assert "preloaded settings_probe.application in the controller" in server.stderr


def test_without_preload_each_worker_imports_the_app(spawn):
    server = spawn("settings_probe.application", "-s", "1")
    probe = _probe(server)
    assert probe["imported_in"] == probe["pid"] != server.pid


def test_preload_failure_and_preload_with_dev_reload_exit_2():
    line = one_error_line(run_cli("--preload", "-p", str(free_port()), "no_such_module_q.app"))
    assert line == ("spawning: cannot import 'no_such_module_q.app': ModuleNotFoundError: No module "
                    "named 'no_such_module_q'")
    line = one_error_line(run_cli("--preload", "--reload=dev", "hello.application"))
    assert "--preload and --reload=dev do not go together" in line


def test_chdir_and_pythonpath_find_the_app(spawn, tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "chdir_probe_app.py").write_text(
        "import os\n"
        "def application(environ, start_response):\n"
        "    body = os.getcwd().encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "pythonpath_probe_app.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'pp']\n")
    # Neither is found without the option (so the test can fail).
    assert "No module named 'chdir_probe_app'" in one_error_line(
        run_cli("--check-config", "chdir_probe_app.application"))
    assert "No module named 'pythonpath_probe_app'" in one_error_line(
        run_cli("--check-config", "pythonpath_probe_app.application"))
    server = spawn("chdir_probe_app.application", "-s", "1", "--chdir", str(project))
    assert server.get("/")[2] == str(project).encode()
    other = spawn("pythonpath_probe_app.application", "-s", "1", "--pythonpath",
                  f"{tmp_path / 'nowhere'},{lib}")
    assert other.get("/")[2] == b"pp"


def test_gunicorn_aliases_serve(spawn, tmp_path: Path):
    port = free_port()
    log = tmp_path / "access.log"
    server = spawn("hello.application", "--workers", "2", "--threads", "2", "--bind",
                   f"127.0.0.1:{port}", "--access-logfile", str(log), "--keep-alive", "2",
                   "--graceful-timeout", "5")
    status, _, body = http_request(port)
    assert status == 200 and body.startswith(b"hello from")
    assert server.wait_until(lambda: len(server.workers()) == 2)
    assert server.wait_until(lambda: log.exists() and "GET / HTTP/1.1" in log.read_text())
    assert "2 processes x 2 threads" in server.stderr


def test_max_requests_jitter_gives_each_worker_its_own_limit(spawn):
    server = spawn("hello.application", "-s", "4", "--max-requests", "100",
                   "--max-requests-jitter", "50", "--log-level", "debug")
    limits = [int(n) for n in re.findall(r"\(--max-requests (\d+)\)", server.stderr)]
    assert len(limits) == 4, server.stderr
    assert all(100 <= n <= 150 for n in limits), limits
    assert len(set(limits)) > 1, limits  # all four equal: 1 chance in 51**3


# ---- startup log -------------------------------------------------------------------------------------


def test_listening_is_logged_once_the_first_generation_is_ready(spawn):
    server = spawn("hello.application", "-s", "1", "-t", "1")
    assert server.wait_until(lambda: "listening on" in server.stderr)
    log = server.stderr
    assert log.index("generation 1 ready: 1 worker (pid ") < log.index("listening on")
    assert "1 process x 1 thread\n" in log


def test_an_app_that_cannot_load_never_says_listening():
    result = run_cli("-p", str(free_port()), "-s", "1", "no_such_module_q.application")
    assert result.returncode == 2
    assert "listening on" not in result.stderr


def test_explicit_settings_win_over_a_paste_ini(tmp_path: Path):
    """The paste factory's [server:main] is read under what the command line, the environment and
    --config set; --print-config names the factory for the values the ini supplied."""
    pytest.importorskip("paste.deploy")
    ini = tmp_path / "development.ini"
    ini.write_text("[app:main]\nuse = call:paste_apps:app_factory\n\n[server:main]\nuse = egg:Spawning\n"
                   "processes = 3\nthreads = 2\nbacklog = 99\nmax-requests = 10\n")
    conf = tmp_path / "c.toml"
    conf.write_text("max-requests = 20\n")
    settings = printed(run_cli("--factory", "spawning.factories.paste.config_factory", str(ini),
                               "--config", str(conf), "--threads", "5", "--print-config",
                               env={"SPAWNING_PROCESSES": "2"}))
    assert settings["processes"] == ("2", "environment SPAWNING_PROCESSES")
    assert settings["threads"] == ("5", "command line")
    assert settings["max_requests"] == ("20", f"file {conf}")
    assert settings["backlog"] == ("99", "factory spawning.factories.paste.config_factory")


def test_status_page_names_env_variables_without_their_values(spawn):
    from spawning.status.command import fetch

    status_port = free_port()
    server = spawn("settings_probe.application", "-s", "1", "--status-port", str(status_port),
                   "-e", "DATABASE_URL=postgres://u:hunter2@db/x", "-e", "PROBE_GREETING=hi")
    assert server.get("/")[2].endswith(b"env=hi")
    doc = fetch("127.0.0.1", status_port)
    assert doc["config"]["env"] == ["DATABASE_URL=(hidden)", "PROBE_GREETING=(hidden)"]
    status, _, body = http_request(status_port, "/status.json")
    assert status == 200 and b"hunter2" not in body
    assert b"hunter2" not in http_request(status_port, "/")[2]


def test_preload_in_green_mode_serves_and_warns(spawn):
    server = spawn("settings_probe.application", "-s", "1", "-t", "0", "--preload")
    probe = _probe(server)
    assert probe["imported_in"] == server.pid != probe["pid"]
    assert "--preload with --threads 0" in server.stderr


def test_preload_reload_forks_the_controllers_app_and_says_so(spawn):
    import signal

    server = spawn("settings_probe.application", "-s", "1", "--preload")
    first = _probe(server)["pid"]
    server.signal(signal.SIGHUP)
    server.wait_notify("READY=1")
    assert server.wait_until(lambda: _probe(server)["pid"] != first)
    probe = _probe(server)
    assert probe["imported_in"] == server.pid  # not re-imported: a code change needs a restart
    assert "--preload: generation 2 runs the code the controller loaded at start" in server.stderr
