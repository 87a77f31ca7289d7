"""The poll backend compiled into the core: the one this platform should get, and the kqueue backend
kept compiling on Linux.

CI sets SPAWNING_EXPECT_BACKEND for each job (epoll on Linux, kqueue on macOS, poll and kqueue in
the Linux jobs that build with SPAWNING_FORCE_POLL / SPAWNING_KQUEUE_SHIM), so a job that silently
built the wrong backend fails here. On Linux, csrc/loop/be_kqueue.c is also compiled, warnings as errors,
against tests/c/kqueue_shim (an epoll-based stand-in for <sys/event.h>): the real kqueue is only
exercised by the macOS job, and this keeps the file from rotting in between.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spawning.server import backend_name

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
SHIM = ROOT / "tests" / "c" / "kqueue_shim"


def test_backend_is_the_expected_one() -> None:
    expected = os.environ.get("SPAWNING_EXPECT_BACKEND")
    if not expected:
        if sys.platform == "darwin" or "bsd" in sys.platform:
            expected = "kqueue"
        else:
            pytest.skip("set SPAWNING_EXPECT_BACKEND to check (CI does)")
    assert backend_name() == expected


def _cc() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shim is epoll-based")
@pytest.mark.parametrize("unit", ["loop/loop.c", "../tests/c/kqueue_shim/kqueue_shim.c"])
def test_kqueue_backend_compiles_cleanly_against_the_shim(unit: str, tmp_path: Path) -> None:
    cc = _cc()
    if cc is None:
        pytest.skip("no C compiler")
    cmd = [cc, "-std=gnu99", "-O2", "-Wall", "-Wextra", "-Werror", "-DSP_FORCE_KQUEUE",
           f"-I{CSRC}", f"-I{SHIM}", "-c", "-o", str(tmp_path / "unit.o"), str(CSRC / unit)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stderr
    if unit == "loop/loop.c":
        syms = subprocess.run(["nm", str(tmp_path / "unit.o")], check=False, capture_output=True, text=True).stdout
        assert " U kevent" in syms and " U kqueue" in syms, syms   # be_kqueue.c, not be_epoll.c
