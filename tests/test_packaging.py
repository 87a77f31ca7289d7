"""Packaging, as a user meets it: `python -m build` makes an sdist and, from that sdist, a wheel; the
sdist carries the C sources and the cdef, the wheel the compiled core; `auditwheel show` finds the
Linux wheel manylinux-compatible; and the wheel, installed into a fresh venv, serves a request.

The build (about 35 s) runs once per session; the fresh-venv install fetches the dependencies from
the package index (pip's cache makes repeats quick). Everything here is marked `slow`: run the rest
of the suite with `-m "not slow"` when iterating.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import spawning

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # The build's own words must stay clean: compiler warnings and setuptools deprecations alike.
    noise = [line for line in (proc.stdout + proc.stderr).splitlines()
             if re.search(r"warning", line, re.IGNORECASE) and "byte-compiling is disabled" not in line]
    assert not noise, "\n".join(noise)
    sdists = list(out.glob("*.tar.gz"))
    wheels = list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0], "dir": out}


def test_sdist_has_the_c_sources_and_the_cdef(dist: dict[str, Path]) -> None:
    prefix = f"spawning-{spawning.__version__}/"
    assert dist["sdist"].name == f"spawning-{spawning.__version__}.tar.gz"
    with tarfile.open(dist["sdist"]) as tf:
        names = {n[len(prefix):] for n in tf.getnames() if n.startswith(prefix)}
    csrc = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*") if p.suffix in (".c", ".h")}
    assert csrc and csrc <= names, sorted(csrc - names)
    for required in ["spawning/_core_cdef.h", "spawning/_build.py", "spawning/py.typed", "setup.py",
                     "pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "tools/smoke_wheel.py",
                     "tests/c/kqueue_shim/sys/event.h"]:
        assert required in names, required
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_wheel_has_the_compiled_core_and_metadata(dist: dict[str, Path]) -> None:
    whl = dist["wheel"]
    # One stable-ABI wheel per platform (setup.py), except on free-threaded builds.
    assert re.match(rf"spawning-{re.escape(spawning.__version__)}-cp310-abi3-", whl.name), whl.name
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        meta = Parser().parsestr(zf.read(f"spawning-{spawning.__version__}.dist-info/METADATA").decode())
        entry_points = zf.read(f"spawning-{spawning.__version__}.dist-info/entry_points.txt").decode()
    assert [n for n in names if re.fullmatch(r"spawning/_core\.abi3\.(so|pyd)", n)], sorted(names)
    assert {"spawning/py.typed", "spawning/_core_cdef.h", "spawning/server.py"} <= names
    # Every module of the tree, subpackages (spawning/green/, spawning/factories/...) included.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "spawning").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "main = spawning.factories.paste:server_runner" in entry_points, entry_points
    assert not [n for n in names if n.startswith(("csrc/", "tests/"))]
    assert meta["Version"] == spawning.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.10"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(urls)
    assert "Programming Language :: Python :: 3.14" in meta.get_all("Classifier")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auditwheel inspects Linux wheels")
def test_auditwheel_finds_a_manylinux_tag(dist: dict[str, Path]) -> None:
    """The wheel built here is tagged linux_<arch> (PyPI refuses those); `auditwheel show` tells which
    manylinux tag it qualifies for. It links only to glibc, so the answer depends on the glibc
    symbol versions the compiler picked (manylinux_2_17 on this project's Debian 12 machines);
    cibuildwheel's `auditwheel repair` inside the manylinux_2_28 image gives the released tag."""
    pytest.importorskip("auditwheel")
    proc = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(dist["wheel"])],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    m = re.search(r'consistent with the following platform tag: "((?:many|musl)linux_(\d+)_(\d+)_\w+)"', out)
    assert m, out
    if m.group(1).startswith("manylinux"):
        assert (int(m.group(2)), int(m.group(3))) <= (2, 28), m.group(1)
    assert "system-provided shared libraries: libc.so" in out or "libc" in out


def test_wheel_installs_into_a_fresh_venv_and_serves(dist: dict[str, Path], tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(dist["wheel"])],
                          check=False, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([str(py), str(ROOT / "tools" / "smoke_wheel.py")],
                          check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(env_dir) in proc.stdout, proc.stdout             # the venv's copy, not the work tree
    assert "served: spawning smoke ok /hello" in proc.stdout
    proc = subprocess.run([str(env_dir / "bin" / "spawning"), "--version"],
                          check=False, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and spawning.__version__ in proc.stdout + proc.stderr, proc
