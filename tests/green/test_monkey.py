"""spawning.green.monkey (and its alias spawning.monkey): each check of
tests/apps/green_monkey_checks.py runs in a fresh interpreter (patching is process-wide, so never
inside pytest's own process), and every check also asserts that the hub kept running meanwhile (a
green ticker saw its ticks). Then the worker's patching, in real servers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "tests" / "apps" / "green_monkey_checks.py"

NAMES = ["sleep", "socket_timeouts", "connect_refused_and_timeout", "dns_off_hub",
         "select_and_selectors", "threading_primitives", "threads_and_futures",
         "local_per_greenlet", "ssl", "outside_hub"]


@pytest.mark.parametrize("name", NAMES)
def test_monkey(name: str) -> None:
    if name == "ssl" and not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make a test certificate")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(CHECKS), name], capture_output=True, text=True,
                          timeout=60, check=False, env=env)
    assert proc.returncode == 0 and f"ok {name}" in proc.stdout, proc.stdout + proc.stderr


def test_monkey_patched_in_worker(spawn):
    server = spawn("-s", "1", "-t", "0", "green_apps.application")
    status, _, body = server.get("/info")
    info = json.loads(body)
    assert status == 200
    assert info["cooperative"] is True
    assert info["lock"].startswith("spawning.green")
    assert "sleep" in info["patched"]["time"] and "socket" in info["patched"]["socket"]


def test_no_monkey_patch_option(spawn):
    server = spawn("-s", "1", "-t", "0", "--no-monkey-patch", "green_apps.application")
    info = json.loads(server.get("/info")[2])
    assert info["patched"] == {} and not info["lock"].startswith("spawning.green")


def test_spawning_monkey_is_the_stable_alias() -> None:
    """``spawning.monkey`` hands out spawning.green.monkey's own objects (so patching through it
    and asking it what was patched see one state), every public name of it."""
    import spawning.green.monkey as real
    import spawning.monkey as alias

    public = {n for n, v in vars(real).items()
              if not n.startswith("_") and getattr(v, "__module__", None) == real.__name__}
    assert public <= set(alias.__all__), public - set(alias.__all__)
    assert all(getattr(alias, n) is getattr(real, n) for n in alias.__all__)
