"""The GitHub workflows and the cibuildwheel configuration: valid against GitHub's workflow schema
(check-jsonschema's vendored copy, so no network is needed), and consistent with the project's
metadata (the Pythons, platforms and jobs issue 8 asks for)."""
from __future__ import annotations

import ast
import importlib
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


def pythons() -> list[str]:
    """The Python versions the package claims, from pyproject.toml's classifiers."""
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    return [c.rsplit(" ", 1)[1] for c in classifiers if re.match(r"Programming Language :: Python :: 3\.\d+$", c)]


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


def test_tests_workflow_covers_platforms_and_every_python() -> None:
    """Linux (x86_64 and arm64: epoll) and macOS (kqueue), on every Python the package claims."""
    matrix = load(WORKFLOWS / "tests.yml")["jobs"]["test"]["strategy"]["matrix"]
    assert matrix["python"] == pythons()
    oses = matrix["os"]
    assert any(o.startswith("ubuntu") and not o.endswith("-arm") for o in oses)
    assert any(o.startswith("ubuntu") and o.endswith("-arm") for o in oses)
    assert any(o.startswith("macos") for o in oses)


def test_every_build_switch_has_a_ci_job() -> None:
    """Each SPAWNING_* variable the build script reads (the sanitizer build, the Python path alone,
    the poll and kqueue backends) is set by some job of the tests workflow: a new switch without a
    job fails here."""
    switches = set(re.findall(r"environ\.get\(\"(SPAWNING_\w+)\"\)",
                              (ROOT / "spawning" / "_build.py").read_text()))
    assert switches, "no build switches found: has _build.py changed shape?"
    # Outside comments: as a step's environment, a command's prefix or a matrix value.
    text = "\n".join(ln.split("#", 1)[0] for ln in (WORKFLOWS / "tests.yml").read_text().splitlines())
    missing = {s for s in switches if not re.search(rf"\b{s}\b", text)}
    assert not missing, f"build switches no CI job sets: {sorted(missing)}"


def test_every_job_runs_the_readme_test_command() -> None:
    """Whatever a job sets up, the tests it runs are the README's (a selection would drop, say,
    the response-shape matrix from the python-path or sanitizer job)."""
    from test_readme import two_commands
    command = two_commands()[1].split("&&")[-1].strip()
    jobs = load(WORKFLOWS / "tests.yml")["jobs"]
    for name, job in jobs.items():
        runs = [step.get("run", "") for step in job["steps"] if "pytest" in step.get("run", "")]
        assert runs, f"job {name} runs no tests"
        last = runs[-1].strip().splitlines()[-1]
        assert last == command or (last.startswith(command + " --deselect ")), (name, last)


def test_sanitizer_job_preloads_what_the_tests_detect() -> None:
    """The suite learns it runs under ASan from LD_PRELOAD naming libasan (conftest.UNDER_ASAN):
    the sanitizer job must preload it that way, after building with the switch _build.py reads."""
    job = load(WORKFLOWS / "tests.yml")["jobs"]["sanitizers"]
    text = steps_text(job)
    assert "SPAWNING_SANITIZE" in text
    assert re.search(r"LD_PRELOAD=.*libasan\.so", text)


def test_make_targets_the_workflows_run_exist() -> None:
    """`make -C DIR TARGET` in a workflow names a Makefile and a target it has."""
    found = 0
    for path in FILES:
        for directory, target in re.findall(r"make -C (\S+) (\w+)", path.read_text()):
            makefile = ROOT / directory / "Makefile"
            assert makefile.is_file(), (path.name, directory)
            assert re.search(rf"^{target}:", makefile.read_text(), re.MULTILINE), (path.name, target)
            found += 1
    assert found, "the sanitizer job runs the C tests through make"


def test_python_snippets_in_workflows_name_real_things() -> None:
    """Every `python -c` step imports modules that exist and reads attributes they have, so a
    moved module cannot leave a workflow step that only fails on GitHub."""
    snippets = [m for path in FILES for m in re.findall(r'python -c "([^"]+)"', path.read_text())]
    assert snippets
    for code in snippets:
        tree = ast.parse(code)
        names: dict[str, Any] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    names[alias.asname or alias.name] = importlib.import_module(alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in names:
                assert hasattr(names[node.value.id], node.attr), (code, node.attr)


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
    assert [f"3.{m}" for m in built] == pythons()
    assert "cp31?t-*" in cibw["skip"]
    script = re.search(r"\{project\}/(\S+)", cibw["test-command"])
    assert script and (ROOT / script.group(1)).is_file()
    assert py["project"]["requires-python"] == ">=" + pythons()[0]
    assert py["project"]["dynamic"] == ["version"]
    assert py["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "spawning.__version__"}
