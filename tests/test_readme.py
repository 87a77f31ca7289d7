"""The README stays true: its option table is the one the config table generates, and the two
commands it gives a newcomer work: the first one's app is served by a real server, the second one is
the command .ci/run runs."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("gen_options_table", ROOT / "tools" / "gen_options_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def two_commands() -> tuple[str, str]:
    """The README's "Two commands" block: (serve, test), the numbered lines after their comments."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the Two commands section has a sh block"
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 2, lines
    return lines[0], lines[1]


def test_readme_option_table_is_generated_from_the_config_table():
    tool = _tool()
    from spawning.config import markdown_table
    readme = (ROOT / "README.md").read_text()
    assert tool.readme_with_table(readme, markdown_table()) == readme, \
        "README.md's option table is stale: run python tools/gen_options_table.py --write"


def test_readme_serve_command_serves_its_app(spawn):
    """The first command's last step is `spawning APP`: run it (on a free loopback port) and GET /."""
    serve, _ = two_commands()
    last = shlex.split(serve.split("&&")[-1])
    assert last[0] == "spawning", serve
    server = spawn(*last[1:])
    status, _, body = server.get("/")
    assert status == 200 and body


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the README's test command (its last step), after the same install."""
    _, test = two_commands()
    install, command = (words(part) for part in test.split("&&"))
    ci = [words(ln) for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci, f".ci/run does not run the README's test command {command}"
    assert install in ci, f".ci/run does not install as the README does: {install}"


def words(line: str) -> list[str]:
    """A command's words, with `python -m` before pip and pip's -q dropped (same command)."""
    try:
        argv = shlex.split(line, comments=True)
    except ValueError:
        return []
    if argv[:3] == ["python", "-m", "pip"]:
        argv = argv[2:]
    return [a for a in argv if not (argv[:1] == ["pip"] and a == "-q")]
