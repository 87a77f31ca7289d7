"""The GitHub workflows and the cibuildwheel configuration: valid against GitHub's workflow schema
(check-jsonschema's vendored copy, so no network is needed), and consistent with the project's
metadata (the Pythons, platforms and jobs issue 8 asks for)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML  # check-jsonschema's own YAML reader (YAML 1.2: `on` stays a string)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = [WORKFLOWS / "tests.yml", WORKFLOWS / "wheels.yml"]
PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("check-jsonschema")
    cmd = [exe] if exe else [sys.executable, "-m", "check_jsonschema"]
    return subprocess.run([*cmd, "--builtin-schema", "vendor.github-workflows", *map(str, files)],
                          check=False, capture_output=True, text=True, timeout=120)


def load(path: Path) -> dict[str, Any]:
    return YAML(typ="safe").load(path.read_text())


def steps_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step) for step in job["steps"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_workflow_matches_github_schema(path: Path) -> None:
    proc = check_jsonschema(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    """The check above is not vacuous: a job with no runs-on and a misspelt key fails it."""
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\non: push\njobs:\n  j:\n    stepz:\n      - run: echo\n")
    proc = check_jsonschema(bad)
    assert proc.returncode != 0, proc.stdout


def test_tests_workflow_covers_platforms_pythons_and_sanitizers() -> None:
    wf = load(WORKFLOWS / "tests.yml")
    jobs = wf["jobs"]
    matrix = jobs["test"]["strategy"]["matrix"]
    assert matrix["python"] == PYTHONS
    oses = matrix["os"]
    assert "ubuntu-24.04" in oses and "ubuntu-24.04-arm" in oses
    assert any(o.startswith("macos") for o in oses)
    text = steps_text(jobs["test"])
    assert "wrk" in text and "curl" in text
    assert 'pip install -e ".[test]"' in text and "pytest -q tests" in text
    san = steps_text(jobs["sanitizers"])
    assert "SPAWNING_SANITIZE" in san and "LD_PRELOAD" in san and "libasan" in san
    assert "make -C tests/c check" in san
    backends = {inc["backend"] for inc in jobs["other-backends"]["strategy"]["matrix"]["include"]}
    assert backends == {"poll", "kqueue"}


def test_tests_workflow_runs_the_whole_suite_on_the_python_path_and_sanitized() -> None:
    """Issue 22: the suite, and so the response-shape matrix, runs on a build without the C
    request path (csrc/pyfast.c) and against the sanitized core: a test selection in either job
    would drop tests/test_response_matrix.py from it."""
    jobs = load(WORKFLOWS / "tests.yml")["jobs"]
    job = jobs["python-path"]
    assert job["name"] == "python path (SPAWNING_NO_PYFAST=1)"
    assert job["runs-on"] == "ubuntu-24.04"
    assert any(step.get("with", {}).get("python-version") == "3.12" for step in job["steps"])
    runs = [step.get("run", "") for step in job["steps"]]
    assert 'SPAWNING_NO_PYFAST=1 python -m pip install -e ".[test]"' in runs
    for name in ("python-path", "sanitizers"):
        tests = [r for r in (step.get("run", "") for step in jobs[name]["steps"]) if "pytest" in r]
        assert [r.strip().splitlines()[-1] for r in tests] == ["python -m pytest -q tests"], name


def test_wheels_workflow_builds_tests_and_publishes_on_tags() -> None:
    wf = load(WORKFLOWS / "wheels.yml")
    jobs = wf["jobs"]
    oses = {inc["os"] for inc in jobs["wheels"]["strategy"]["matrix"]["include"]}
    assert {"ubuntu-24.04", "ubuntu-24.04-arm"} <= oses
    assert sum(o.startswith("macos") for o in oses) == 2      # x86_64 and arm64
    assert "pypa/cibuildwheel@" in steps_text(jobs["wheels"])
    assert "--sdist" in steps_text(jobs["sdist"])
    pub = jobs["publish"]
    assert set(pub["needs"]) == {"wheels", "sdist"}
    assert "refs/tags/v" in pub["if"]
    assert pub["permissions"] == {"id-token": "write"}         # trusted publishing, no token
    assert "pypa/gh-action-pypi-publish@" in steps_text(pub)
    assert wf["permissions"] == {"contents": "read"}
    assert "tag" in str(wf["on"]["push"])


def test_cibuildwheel_config_matches_metadata() -> None:
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    cibw = py["tool"]["cibuildwheel"]
    built = re.findall(r"cp3(\d+)-\*", cibw["build"])
    assert [f"3.{m}" for m in built] == PYTHONS
    assert "cp31?t-*" in cibw["skip"]
    script = re.search(r"\{project\}/(\S+)", cibw["test-command"])
    assert script and (ROOT / script.group(1)).is_file()
    classifiers = py["project"]["classifiers"]
    assert [c.rsplit(" ", 1)[1] for c in classifiers if re.match(r"Programming Language :: Python :: 3\.\d+$", c)] \
        == PYTHONS
    assert py["project"]["requires-python"] == ">=3.10"
    assert py["project"]["dynamic"] == ["version"]
    assert py["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "spawning.__version__"}
