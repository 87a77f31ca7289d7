"""spawning.process.worker: what a worker does around serving, seen from a real server."""

from __future__ import annotations

import json

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
