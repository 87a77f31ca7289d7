"""CI hook for the parser fuzzer: a short libFuzzer run (60 s; SPAWNING_FUZZ_SECONDS overrides)
of tests/fuzz/run.sh under ASan/UBSan, from the committed seed corpus.

Skipped only when clang is missing; with clang but without its libFuzzer runtime (Debian:
libclang-rt-14-dev) the build fails and so does this test, on purpose: CI installs both.
A crash leaves its input in tests/fuzz/artifacts/ (add it to tests/fuzz/corpus/ and to the C
vectors once fixed). The longer run is documented in tests/adversarial/README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import foreign_env

RUN_SH = Path(__file__).resolve().parents[1] / "fuzz" / "run.sh"


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "clang")) is None, reason="needs clang (libFuzzer)")
def test_parser_fuzzer_finds_nothing_in_a_minute(tmp_path: Path) -> None:
    seconds = int(os.environ.get("SPAWNING_FUZZ_SECONDS", "60"))
    env = foreign_env(FUZZ_OUT=str(tmp_path))   # scratch corpus and binaries stay out of the tree
    proc = subprocess.run(["sh", str(RUN_SH), str(seconds)], env=env, capture_output=True, text=True,
                          check=False, timeout=seconds + 300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert runs, log[-4000:]
    assert int(runs.group(1)) > 1000, log[-2000:]   # it really ran


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "clang")) is None, reason="needs clang (libFuzzer)")
def test_proxy_preamble_fuzzer_finds_nothing(tmp_path: Path) -> None:
    """The PROXY protocol parser (csrc/http/proxy.c) under the same regime, for a third of the time:
    it is small and takes over 100,000 inputs a second."""
    seconds = max(5, int(os.environ.get("SPAWNING_FUZZ_SECONDS", "60")) // 3)
    env = foreign_env(FUZZ_OUT=str(tmp_path), FUZZ_TARGET="proxy")
    proc = subprocess.run(["sh", str(RUN_SH), str(seconds)], env=env, capture_output=True, text=True,
                          check=False, timeout=seconds + 300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert runs, log[-4000:]
    assert int(runs.group(1)) > 10000, log[-2000:]
