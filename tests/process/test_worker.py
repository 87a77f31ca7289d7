"""spawning.process.worker: what a worker does around serving, seen from a real server."""

from __future__ import annotations

import json
import re

import pytest


@pytest.mark.parametrize("threads", ["1", "0"])
def test_gc_freeze_freezes_what_the_app_made_before_serving(spawn, threads: str) -> None:
    """--gc-freeze: the objects alive once the app is loaded are in the permanent generation
    (gc.freeze()) by the first request; the collector still runs for the rest."""
    info = json.loads(spawn("-s", "1", "-t", threads, "--gc-freeze", "gc_apps.application").get("/")[2])
    assert info["frozen"] > 1000 and info["enabled"] is True


def test_without_gc_freeze_nothing_is_frozen(spawn) -> None:
    info = json.loads(spawn("-s", "1", "-t", "1", "gc_apps.application").get("/")[2])
    assert info == {"frozen": 0, "enabled": True}


def test_gc_freeze_with_preload_freezes_in_the_controller_before_forking(spawn) -> None:
    """With --preload the controller freezes the app it imported before it forks, so that the
    workers' collections never write the headers of what they inherit (the pages stay shared);
    the worker then freezes what it made itself on top."""
    server = spawn("-s", "1", "-t", "1", "--preload", "--gc-freeze", "gc_apps.application")
    info = json.loads(server.get("/")[2])
    m = re.search(r"froze (\d+) objects before forking", server.stderr_path.read_text())
    assert m is not None, server.stderr_path.read_text()
    assert int(m.group(1)) > 1000 and info["frozen"] >= int(m.group(1))
