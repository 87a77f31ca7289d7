"""Builds and runs the C-level parser tests (tests/c/test_parser.c) under ASan and UBSan.

Twice: with the SSE4.2 fast path (x86 only) and with the scalar fallback (-DSP_NO_SIMD). Each
binary runs every vector whole and byte by byte against a guard page, and exits non-zero on any
failed check. Skipped when no C compiler is available.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
TESTS_C = ROOT / "tests" / "c"
SOURCES = [TESTS_C / "test_parser.c", CSRC / "http" / "parser.c", CSRC / "http" / "env.c"]
CFLAGS = [
    "-std=c99", "-g", "-O1", "-Wall", "-Wextra", "-Werror",
    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
    f"-I{CSRC}", f"-I{CSRC / 'http'}",
]
X86 = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(cc: str, out: Path, extra: list[str]) -> None:
    cmd = [cc, *CFLAGS, *extra, "-o", str(out), *map(str, SOURCES)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "sanitize" in proc.stderr and "cannot find" in proc.stderr:
        pytest.skip(f"{cc} has no sanitizer runtime: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, f"build failed:\n{' '.join(cmd)}\n{proc.stderr}"


VARIANTS = [
    pytest.param(["-msse4.2"], "sse4.2", id="sse42",
                 marks=pytest.mark.skipif(not X86, reason="SSE4.2 is x86 only")),
    pytest.param(["-DSP_NO_SIMD"], "scalar", id="scalar"),
]


@pytest.mark.parametrize("flags,path", VARIANTS)
def test_parser_c(tmp_path: Path, flags: list[str], path: str) -> None:
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / f"test_parser_{path}"
    _build(cc, exe, flags)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The binary names the path it was built with; make sure the flags did what we meant.
    assert f"test_parser ({path})" in proc.stdout, proc.stdout
    assert " 0 failures" in proc.stdout, proc.stdout
