"""The C core's layers and its connection state machine, read from the sources (no build).

csrc/ is in parts, bottom to top: sp.h (the public API, at csrc/), http/ (parsing), loop/ (the
event loop and its backends), conn/ (connections), py/ (the CPython runner). A part may include
and call only what sits at or below it: the loop reaches the connections through the sp_conn_ops
table alone (csrc/loop/loop.c, "Layers"). And the connection states change only through
conn_set_state(), which checks each move against CONN_NEXT (csrc/conn/conn.h), the same moves
that the diagram atop csrc/conn/conn.c draws.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
# Bottom to top. "" is csrc/ itself, where only sp.h lives.
LAYERS = ["", "http", "loop", "conn", "py"]


def _strip(text: str) -> str:
    """C source without comments and string or character literals (their length kept)."""
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'',
                  lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.DOTALL)


def _part(rel: str) -> str:
    """The part of a path under csrc/ ("" for csrc/sp.h)."""
    return rel.split("/")[0] if "/" in rel else ""


def _sources() -> dict[str, str]:
    return {p.relative_to(CSRC).as_posix(): p.read_text() for p in sorted(CSRC.rglob("*"))
            if p.suffix in (".c", ".h")}


def _includes(sources: dict[str, str]) -> list[tuple[str, str]]:
    """(includer, included) for every #include "..." of a file of ours, resolved as the compiler
    does: next to the includer first, then from csrc/ (the one -I)."""
    edges = []
    for rel, text in sources.items():
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.MULTILINE):
            here = (Path(rel).parent / name).as_posix()
            target = here if here in sources else name if name in sources else None
            if target is not None:
                edges.append((rel, target))
    return edges


DEF_RE = re.compile(r"^(?!static\b)(?:[A-Za-z_]\w*[\s*]+)+([A-Za-z_]\w*)\(([^;{}()]|\([^()]*\))*\)\s*\{",
                    flags=re.MULTILINE)


def _calls(sources: dict[str, str]) -> list[tuple[str, str, str]]:
    """(caller's file, callee's file, name) for every call of a function defined, not static, in
    another file."""
    defined: dict[str, str] = {}
    stripped = {rel: _strip(text) for rel, text in sources.items()}
    for rel, text in stripped.items():
        if rel.endswith(".c"):
            for m in DEF_RE.finditer(text):
                defined.setdefault(m.group(1), rel)
    edges = []
    for rel, text in stripped.items():
        if not rel.endswith(".c"):
            continue   # a header's prototypes are no calls
        for name in set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text)):
            home = defined.get(name)
            if home is not None and home != rel:
                edges.append((rel, home, name))
    return edges


def _violations(sources: dict[str, str]) -> list[str]:
    """Every include or call that points up the layers, and every cycle among the parts. (The
    files of one part may call one another both ways: conn.c and input.c are one state machine.)"""
    bad = []
    part_edges: dict[str, set[str]] = {}
    for a, b in _includes(sources):
        if _part(a) != _part(b):
            part_edges.setdefault(_part(a), set()).add(_part(b))
        if LAYERS.index(_part(b)) > LAYERS.index(_part(a)):
            bad.append(f"{a} includes {b}, a part above it")
    for a, b, name in _calls(sources):
        if _part(a) != _part(b):
            part_edges.setdefault(_part(a), set()).add(_part(b))
        if LAYERS.index(_part(b)) > LAYERS.index(_part(a)):
            bad.append(f"{a} calls {name}() of {b}, a part above it")
    # The ranks already forbid a cycle; this says which one, should LAYERS ever be reordered.
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(part_edges.get(node, ())):
            if nxt in path:
                bad.append("cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for node in sorted(part_edges):
        if node not in done:
            visit(node, [node])
    return bad


def test_every_file_is_in_a_known_part() -> None:
    parts = {_part(rel) for rel in _sources()}
    assert parts <= set(LAYERS), parts - set(LAYERS)
    assert [rel for rel in _sources() if _part(rel) == ""] == ["sp.h"]


def test_includes_and_calls_point_down_without_cycles() -> None:
    assert _violations(_sources()) == []


def test_the_loop_names_no_connection_function() -> None:
    """The cycle this layout removed: loop.c called conn_on_event, conn_new, conn_close..."""
    loop = _strip((CSRC / "loop" / "loop.c").read_text())
    assert not re.findall(r"\bconn_\w+\s*\(", loop)
    included = re.findall(r'#\s*include\s+"([^"]+)"', (CSRC / "loop" / "loop.c").read_text())
    assert not [name for name in included if "conn" in name], included


def test_the_check_sees_an_upward_call_an_upward_include_and_a_cycle() -> None:
    """The checker itself fails where it should: the loop calling into conn/ by name (as loop.c
    did before), and a loop header that includes the connections' header."""
    fake = {
        "sp.h": "",
        "loop/loop.h": '#include "conn/conn.h"\n',
        "loop/loop.c": "void loop_run(void) {\n    conn_on_event();\n}\n",
        "conn/conn.h": '#include "loop/loop.h"\n',
        "conn/conn.c": "void conn_on_event(void) {\n    loop_run();\n}\n",
    }
    bad = _violations(fake)
    assert "loop/loop.c calls conn_on_event() of conn/conn.c, a part above it" in bad, bad
    assert "loop/loop.h includes conn/conn.h, a part above it" in bad, bad
    assert any(b.startswith("cycle: ") and "conn" in b and "loop" in b for b in bad), bad


def _diagram_moves() -> set[tuple[str, str]]:
    text = (CSRC / "conn" / "conn.c").read_text()
    theory = text[:text.index("*/")]
    return set(re.findall(r"^\s*\*\s+(C_[A-Z]+)\s+--.*?-->\s*(C_[A-Z]+)\s*$", theory, flags=re.MULTILINE))


def _table_moves() -> set[tuple[str, str]]:
    header = (CSRC / "conn" / "conn.h").read_text()
    table = re.search(r"CONN_NEXT\[C_NSTATES\] = \{(.*?)\};", header, flags=re.DOTALL)
    assert table, "conn.h has no CONN_NEXT table"
    moves = set()
    for src, dsts in re.findall(r"\[(C_[A-Z]+)\]\s*=\s*([^,\n]+(?:\|[^,\n]+)*),", table.group(1)):
        for dst in re.findall(r"CONN_BIT\((C_[A-Z]+)\)", dsts):
            moves.add((src, dst))
    return moves


def _states() -> list[str]:
    header = (CSRC / "conn" / "conn.h").read_text()
    enum = re.search(r"enum \{\s*(C_NEW.*?)\};", header, flags=re.DOTALL)
    assert enum
    return [s for s in re.findall(r"^\s*(C_[A-Z]+)\b", enum.group(1), flags=re.MULTILINE) if s != "C_NSTATES"]


def test_state_diagram_matches_the_table() -> None:
    diagram, table = _diagram_moves(), _table_moves()
    assert diagram, "no moves found in conn.c's diagram"
    assert diagram == table, {"only in the diagram": diagram - table, "only in CONN_NEXT": table - diagram}


def test_the_diagram_shows_every_state() -> None:
    drawn = {s for move in _diagram_moves() for s in move}
    assert set(_states()) == drawn, set(_states()) ^ drawn
    assert "C_BODY" in drawn


@pytest.mark.parametrize("rel", sorted(r for r in _sources()
                                        if r.endswith(".c") and _part(r) in ("loop", "conn")))
def test_state_changes_only_through_conn_set_state(rel: str) -> None:
    """No `c->state = ...` outside conn_set_state (other structs' `state`, as the chunked
    decoder's in http/parser.c, are not the connection's)."""
    assert not re.findall(r"->state\s*=[^=]", _strip((CSRC / rel).read_text())), rel


def test_conn_set_state_is_the_one_assignment() -> None:
    header = _strip((CSRC / "conn" / "conn.h").read_text())
    assert len(re.findall(r"->state\s*=[^=]", header)) == 1
    assert re.search(r"static inline void conn_set_state\(", header)


def test_every_c_file_is_built() -> None:
    """Each .c file is in spawning/_build.py's SOURCES or included by one that is (loop.c includes
    its backends, conn/unit.c the connection part's files, py/unit.c the CPython part's): a file
    added and forgotten fails here instead of being silently left out of the build."""
    from conftest import build_sources

    sources = _sources()
    built = set(build_sources())
    assert built <= set(sources), built - set(sources)
    includes = _includes(sources)
    todo = list(built)
    while todo:
        rel = todo.pop()
        for a, b in includes:
            if a == rel and b not in built:
                built.add(b)
                todo.append(b)
    assert {rel for rel in sources if rel.endswith(".c")} <= built, \
        {rel for rel in sources if rel.endswith(".c")} - built
