"""``spawning status`` (spawning/status/command.py) against a real server's status port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import ROOT, free_port
from status_helpers import StatusServer, serve_hello


@pytest.fixture(scope="module")
def served() -> Iterator[StatusServer]:
    """A 2-process server with its status page on, shared by this module's read-only tests."""
    yield from serve_hello()


def test_status_command_prints_a_table(served: StatusServer) -> None:
    pids = served.proc.workers()
    served.wait_doc(lambda d: len(d["workers"]) == 2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "spawning", "status", "--status-port", str(served.status_port)],
                         capture_output=True, text=True, timeout=30, env=env, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PID"))
    rows = lines[header + 2:]
    assert sorted(int(r.split()[0]) for r in rows) == sorted(pids)
    assert all(r.split()[1] == "1" and r.split()[2] == "ready" for r in rows)
    assert f"pid {served.proc.pid}" in out.stdout

    as_json = subprocess.run([sys.executable, "-m", "spawning", "status", "--status-port",
                              str(served.status_port), "--json"], capture_output=True, text=True,
                             timeout=30, env=env, check=False)
    assert json.loads(as_json.stdout)["server"]["pid"] == served.proc.pid

    nobody = subprocess.run([sys.executable, "-m", "spawning", "status", "--status-port", str(free_port())],
                            capture_output=True, text=True, timeout=30, env=env, check=False)
    assert nobody.returncode == 1 and "cannot read the status service" in nobody.stderr
