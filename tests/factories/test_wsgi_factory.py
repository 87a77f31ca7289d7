"""spawning.factories.wsgi (the default factory) and the factory contract: ``--factory`` names
``config_factory(args) -> config``, which names ``app_factory(config) -> app``; it runs in the
controller and again in each worker, its config drives the server (processes included), and any
failure is one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import APPS, ROOT, free_port, wait_until

from spawning.errors import ConfigError


def test_custom_factory_from_a_module(spawn):
    # Two positional words for the factory: the greeting, and the processes it chooses itself.
    server = spawn("--factory=custom_factory.config_factory", "howdy", "2")
    workers = set(server.workers())
    assert len(workers) == 2

    def answered_by() -> int:
        status, _, body = server.get("/")
        assert status == 200
        greeting, _, rest = body.decode().partition(" from ")
        worker_pid, _, factory_pid = rest.partition(" (factory ran in ")
        assert greeting == "howdy"
        # config_factory ran again inside the worker (fresh config), not only in the controller.
        assert factory_pid.rstrip(")") == worker_pid
        return int(worker_pid)

    # Connections made one after another can all land on one worker (the shared listener wakes
    # one waiting worker, often the one that just went back to waiting); several at once reach both.
    seen: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        def both_answered() -> bool:
            seen.update(pool.map(lambda _: answered_by(), range(16)))
            return seen == workers
        wait_until(both_answered, 10, what="both workers to answer")


def test_command_line_overrides_are_the_factorys_to_honour(spawn):
    """The factory gets every option; what it returns is what the server uses."""
    server = spawn("--factory=custom_factory.config_factory", "-s", "3", "hi")
    assert len(server.workers()) == 3


def run_spawning(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "spawning", "-p", str(free_port()), "-l", "/dev/null",
                           "-s", "2", *args], capture_output=True, text=True, timeout=30, check=False,
                          env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("factory, fragment", [
    ("custom_factory_broken.config_factory",
     ("factory 'custom_factory_broken.config_factory' failed: RuntimeError: cannot reach the "
      "configuration service")),
    ("no_such_module_xyz.config_factory",
     "cannot import factory 'no_such_module_xyz.config_factory': ModuleNotFoundError"),
    ("custom_factory.no_such_factory", "cannot import factory 'custom_factory.no_such_factory'"),
    ("custom_factory_broken.config_factory_ok_app_fails",
     "cannot load the application: KeyError: 'SECRET_KEY'"),
])
def test_a_failing_factory_is_one_line_exit_2(factory, fragment):
    result = run_spawning(f"--factory={factory}", "x")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("spawning:")]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("factory", ["custom_factory_broken.config_factory",
                                     "custom_factory_broken.config_factory_ok_app_fails"])
def test_log_level_debug_shows_the_traceback(factory):
    result = run_spawning("--log-level", "debug", f"--factory={factory}", "x")
    assert result.returncode == 2, result
    assert "Traceback" in result.stderr
    assert "custom_factory_broken.py" in result.stderr


def test_factory_checks_syntax_without_importing():
    from spawning.factories.wsgi import config_factory

    cfg = config_factory({"args": ["not_imported_module_q.app", "other_mw_q.wrap"]})
    assert cfg["app"] == "not_imported_module_q.app"
    assert cfg["middleware"] == ["other_mw_q.wrap"]
    assert cfg["app_factory"] == "spawning.factories.wsgi.app_factory"
    assert "not_imported_module_q" not in sys.modules
    for bad in (["justaname"], ["a.b c"], ["m:f(os.system('x'))"]):
        with pytest.raises(ConfigError):
            config_factory({"args": bad})
    with pytest.raises(ConfigError, match="no application"):
        config_factory({"args": []})
