"""Builds and runs tests/c/test_server.c: the event loop and connection state machine over real
loopback sockets, under ASan and UBSan, once with the platform's backend (epoll/kqueue) and once
with the portable poll() fallback (-DSP_FORCE_POLL). Phase 2 runs several app threads against
short-lived connections, the case where one thread closes a connection another thread's poll
still refers to."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import build_sources
from test_parser_c import _compiler

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
# The core's own sources, as the extension builds them (spawning/_build.py), less the CPython
# part (csrc/py/): a file added to the core is linked here too.
SOURCES = [ROOT / "tests" / "c" / "test_server.c"] + [
    CSRC / f for f in build_sources() if not f.startswith("py/")]
CFLAGS = ["-std=gnu99", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
          "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-DSP_CHECK_STATES", f"-I{CSRC}"]


# native: the direct system calls of csrc/loop/sysio.h; poll: libc's, whose buffers ASan checks.
@pytest.mark.parametrize("flags", [[], ["-DSP_FORCE_POLL", "-DSP_LIBC_SYSCALLS"]], ids=["native", "poll"])
def test_server_core_under_sanitizers(tmp_path: Path, flags: list[str]) -> None:
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "test_server"
    build = subprocess.run([cc, *CFLAGS, *flags, "-o", str(exe), *map(str, SOURCES), "-lpthread"],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert " 0 failures" in run.stdout
