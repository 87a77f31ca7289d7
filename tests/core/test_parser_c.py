"""Builds and runs the C-level parser tests (tests/c/test_parser.c) under ASan and UBSan.

Twice: with the SIMD scans the platform's baseline gives (SSE2 on x86-64, NEON on arm64; no flag
needed) and with the scalar fallback (-DSP_NO_SIMD). Each binary runs every vector whole and byte
by byte against a guard page, and exits non-zero on any failed check. Skipped when no C compiler
is available.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
TESTS_C = ROOT / "tests" / "c"
SOURCES = [TESTS_C / "test_parser.c", CSRC / "http" / "parser.c", CSRC / "http" / "env.c"]
CFLAGS = [
    "-std=c99", "-g", "-O1", "-Wall", "-Wextra", "-Werror",
    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
    f"-I{CSRC}", f"-I{CSRC / 'http'}",
]
MACHINE = platform.machine().lower()
# The SIMD path each machine builds by default; elsewhere both builds are the scalar one.
SIMD = "sse2" if MACHINE in {"x86_64", "amd64"} else "neon" if MACHINE in {"aarch64", "arm64"} else None


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
    pytest.param([], SIMD, id="simd",
                 marks=pytest.mark.skipif(SIMD is None, reason=f"no SIMD path on {MACHINE}")),
    pytest.param(["-DSP_NO_SIMD"], "scalar", id="scalar"),
]


@pytest.mark.parametrize("flags,path", VARIANTS)
def test_parser_c(tmp_path: Path, flags: list[str], path: str) -> None:
    """Every C vector passes on this build of the scans, and the binary says which build it is."""
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
