"""spawning.factories.django: the settings module is found without importing it (or Django) before
fork, and every bad settings module is one line and exit 2 before any worker starts. (Serving a
real project end to end: tests/test_django.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import APPS, ROOT, free_port

pytest.importorskip("django")

DJANGO = "--factory=spawning.factories.django.config_factory"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """``django-admin startproject mysite`` (no database: nothing here serves a page), plus a
    settings module that fails to import."""
    root = tmp_path_factory.mktemp("django")
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)],
                   check=True, timeout=60, capture_output=True)
    (root / "mysite" / "broken_settings.py").write_text(
        "from mysite.settings import *  # noqa\nINSTALLED_APPS = INSTALLED_APPS + ['no_such_app_xyz']\n")
    return root


def run_spawning(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run([sys.executable, "-m", "spawning", "-p", str(free_port()), "-l", "/dev/null",
                           "-s", "2", *args], capture_output=True, text=True, timeout=30, check=False,
                          env=env, cwd=str(cwd), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("settings, fragments", [
    ("nosuchsite.settings", ["unknown Django settings module 'nosuchsite.settings'",
                             "no module named 'nosuchsite'"]),
    ("mysite.nosettings", ["unknown Django settings module 'mysite.nosettings'",
                           "no module named 'mysite.nosettings'"]),
    ("mysite.broken_settings", ["cannot start Django with settings 'mysite.broken_settings'",
                                "No module named 'no_such_app_xyz'"]),
    ("not a module", ["bad Django settings module"]),
])
def test_bad_settings_are_one_line_exit_2(project, settings, fragments):
    result = run_spawning(DJANGO, settings, cwd=project)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("spawning:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_controller_does_not_import_django_or_the_project(project):
    """The settings module is found, not imported, before fork: workers import it fresh."""
    code = ("import sys; from spawning.factories.django import config_factory; "
            "c = config_factory({'args': ['mysite.settings']}); "
            "print(c['app_factory'], 'django' in sys.modules, 'mysite' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), str(ROOT)])}   # this tree's spawning
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                         timeout=30, check=True, env=env).stdout
    assert out.split() == ["spawning.factories.django.app_factory", "False", "False"]
