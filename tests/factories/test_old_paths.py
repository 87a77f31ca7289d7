"""The factories' old dotted paths (``spawning.wsgi_factory``, ``spawning.paste_factory``,
``spawning.django_factory``) keep working, as deprecated aliases of spawning.factories.*: importing
one warns, every name is the new module's own object, and ``--factory`` with an old path serves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

OLD_TO_NEW = {"spawning.wsgi_factory": "spawning.factories.wsgi",
              "spawning.paste_factory": "spawning.factories.paste",
              "spawning.django_factory": "spawning.factories.django"}


def python(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Runs code in a fresh interpreter (an import warns once per process)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_importing_an_old_path_warns_and_names_the_new_one(old: str) -> None:
    new = OLD_TO_NEW[old]
    proc = python(f"import {old}", "-W", "error::DeprecationWarning")
    assert proc.returncode != 0
    assert f"DeprecationWarning: {old} is deprecated: use {new}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_every_name_of_the_new_module_is_reachable_by_the_old_path(old: str) -> None:
    new = OLD_TO_NEW[old]
    code = (f"import importlib, warnings\n"
            f"warnings.simplefilter('ignore', DeprecationWarning)\n"
            f"old, new = importlib.import_module('{old}'), importlib.import_module('{new}')\n"
            f"names = [n for n in vars(new) if not n.startswith('__')]\n"
            f"assert names and all(getattr(old, n) is getattr(new, n) for n in names)\n"
            f"assert old.config_factory is new.config_factory and old.app_factory is new.app_factory\n"
            f"exec('from {old} import *')\n"
            f"assert config_factory is new.config_factory\n"
            f"print('ok', len(names))\n")
    proc = python(code)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr


def test_old_factory_path_still_serves(spawn) -> None:
    server = spawn("--factory=spawning.wsgi_factory.config_factory", "hello.application")
    status, _, body = server.get("/")
    assert status == 200 and body.startswith(b"hello from ")
