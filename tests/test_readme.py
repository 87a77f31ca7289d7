"""The README stays true: its option table is the one the config table generates, and the two
commands it gives a newcomer name things that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("gen_options_table", ROOT / "tools" / "gen_options_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_option_table_is_generated_from_the_config_table():
    tool = _tool()
    from spawning.config.options import markdown_table
    readme = (ROOT / "README.md").read_text()
    assert tool.readme_with_table(readme, markdown_table()) == readme, \
        "README.md's option table is stale: run python tools/gen_options_table.py --write"


def test_readme_commands_name_real_things():
    readme = (ROOT / "README.md").read_text()
    serve = re.search(r"spawning (examples\.\w+)\.application", readme)
    assert serve, "the serve command names an example app"
    assert (ROOT / (serve.group(1).replace(".", "/") + ".py")).exists()
    assert "python -m pytest -q tests" in readme
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()
