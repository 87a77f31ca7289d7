"""spawning.monkey: each check of tests/apps/green_monkey_checks.py runs in a fresh interpreter
(patching is process-wide, so never inside pytest's own process). Every check also asserts that
the hub kept running meanwhile (a green ticker saw its ticks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = Path(__file__).resolve().parent / "apps" / "green_monkey_checks.py"

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


def test_gevent_detected() -> None:
    code = ("import sys, types; sys.modules['eventlet'] = types.ModuleType('eventlet');"
            "from spawning import green; green.check_app_compat()")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env,
                          check=False)
    assert proc.returncode != 0
    assert "gevent/eventlet monkey patching is not supported with --threads 0" in proc.stderr
