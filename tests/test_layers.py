"""The package's import graph: no cycles, and every import points down the layers of issue 24.

Every module under spawning/ is parsed (``ast``, nothing is imported, so no import side effects),
and each of its imports of ``spawning.*`` becomes an edge, wherever the import statement sits (a
function-level import is a dependency all the same; only ``if TYPE_CHECKING:`` blocks, which never
run, are left out). ``importlib.import_module("spawning.x")`` with a literal name counts too.

Layers, bottom to top (docs/architecture.md): an import may point to the same layer or one below,
never above. A module no layer claims fails the test: place it in ``LAYERS`` when you add it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spawning"

#: Bottom to top. A module belongs to the layer of the longest prefix that names it. The flat
#: modules listed after a package are the ones other engineers of issue 24 are moving into it: their
#: entries go once the move has landed.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("spawning", "spawning._build", "spawning._core", "spawning.errors", "spawning.logs")),
    ("config", ("spawning.config",)),
    ("wsgi", ("spawning.wsgi",)),
    ("green", ("spawning.green", "spawning.monkey")),
    ("server", ("spawning.server",)),
    ("process", ("spawning.process", "spawning.controller", "spawning.worker", "spawning.sockets",
                 "spawning.reloader", "spawning.coverage_support")),
    ("status", ("spawning.status",)),
    ("factories", ("spawning.factories", "spawning.wsgi_factory", "spawning.paste_factory",
                   "spawning.django_factory")),
    ("cli", ("spawning.cli", "spawning.__main__")),
]

#: Upward imports that exist today in code other engineers of issue 24 are reworking, each with the
#: layer move that removes it. The test fails on any other upward import, and on an entry here that
#: no longer occurs (delete it then), so this list can only shrink.
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    ("spawning.config", "spawning.sockets"): "config parses --bind with sockets.parse_address",
    ("spawning.config", "spawning.wsgi.forwarded"): "config validates --forwarded-allow-ips",
    ("spawning.config", "spawning.wsgi.accesslog"): "config validates --access-log-format",
    ("spawning.server", "spawning.sockets"): "the server reads the PROXY listener mask and shuts "
                                             "its listeners down with sockets' helpers",
    ("spawning.factories.paste", "spawning.cli"): "egg:Spawning without an ini file serves the "
                                                  "loaded app through cli.run_server",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str, known: set[str]) -> str:
    """The longest prefix of a dotted name that is a module of ours (``spawning.green.Lock`` ->
    ``spawning.green``)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The spawning modules ``name`` (at ``path``) imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                # A package's own __init__ is level 1 of itself; a module's, of its package.
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from . import green`` names a module; ``from .green import Lock`` names a member.
            targets = [f"{stem}.{alias.name}" for alias in node.names] or [stem]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for target in targets:
            if target == "spawning" or target.startswith("spawning."):
                dep = _resolve(target, known)
                if dep != name:
                    found.add(dep)
    return found


#: Modules that are not Python source: the cffi-built core (spawning/_build.py makes it).
COMPILED = {"spawning._core"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | COMPILED
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None   # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            claims = module == prefix or (prefix != "spawning" and module.startswith(prefix + "."))
            if claims and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_the_parser_sees_imports_of_every_form(tmp_path: Path) -> None:
    """The checks below are only as good as the edges found: one module with each form."""
    pkg = tmp_path / "spawning"
    (pkg / "green").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "green" / "__init__.py").write_text("from .hub import Hub\nfrom .. import errors\n")
    (pkg / "green" / "hub.py").write_text(
        "import importlib\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from ..cli import main\n"
        "def f():\n    from spawning import server\n    importlib.import_module('spawning.wsgi')\n")
    known = {"spawning", "spawning.green", "spawning.green.hub", "spawning.errors", "spawning.server",
             "spawning.wsgi", "spawning.cli"}
    assert imports_of("spawning.green", pkg / "green" / "__init__.py", known) == {
        "spawning.green.hub", "spawning.errors"}
    assert imports_of("spawning.green.hub", pkg / "green" / "hub.py", known) == {
        "spawning.server", "spawning.wsgi"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if layer_of(m) is None)
    assert not unplaced, f"place these modules in a layer (tests/test_layers.py LAYERS): {unplaced}"


def test_no_import_cycles() -> None:
    cycles = find_cycles(graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_point_down_the_layers() -> None:
    upward = set()
    for module, deps in graph().items():
        for dep in deps:
            mine, theirs = layer_of(module), layer_of(dep)
            if mine is not None and theirs is not None and theirs > mine:
                upward.add((module, dep))
    unexpected = sorted(upward - set(KNOWN_UPWARD))
    assert not unexpected, "imports pointing up the layers: " + ", ".join(
        f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"  # type: ignore[index]
        for a, b in unexpected)
    gone = sorted(set(KNOWN_UPWARD) - upward)
    assert not gone, f"these upward imports are gone: delete them from KNOWN_UPWARD: {gone}"


def test_green_never_reaches_the_server() -> None:
    """The green package gets the C loop and a finish test from the server, never the server."""
    edges = graph()
    reach, seen = ["spawning.green", "spawning.monkey"], set()
    while reach:
        m = reach.pop()
        if m not in seen:
            seen.add(m)
            reach.extend(edges.get(m, ()))
    assert "spawning.server" not in seen
