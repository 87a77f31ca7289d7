"""spawning/_core_cdef.h restates csrc/sp.h and csrc/py/runner.h for cffi (whose parser takes no
includes): they must declare the same functions and the same struct fields, in the same order."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _structs(text: str) -> dict[str, list[str]]:
    out = {}
    for m in re.finditer(r"typedef struct (\w+) \{(.*?)\} \1;", text, flags=re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = decl.strip()
            if not decl or decl == "...":
                continue
            # "const char *a; size_t b" style and "int a, b" lists: take every declarator name
            for part in decl.split(","):
                name = re.search(r"(\w+)\s*(\[[^\]]*\])?\s*$", part.strip())
                if name:
                    fields.append(name.group(1))
        out[m.group(1)] = fields
    return out


def _functions(text: str) -> set[str]:
    return set(re.findall(r"^[\w\s\*]*?\b(sp_\w+)\s*\(", text, flags=re.M))


def test_cdef_matches_header():
    header = _strip_comments((ROOT / "csrc" / "sp.h").read_text()
                             + (ROOT / "csrc" / "py" / "runner.h").read_text())
    cdef = _strip_comments((ROOT / "spawning" / "_core_cdef.h").read_text())
    hs, cs = _structs(header), _structs(cdef)
    for name, fields in cs.items():
        assert name in hs, f"{name} is in the cdef but not in sp.h"
        # the cdef may elide private trailing fields with "..."
        assert hs[name][: len(fields)] == fields, f"{name}: sp.h {hs[name]} vs cdef {fields}"
    assert len(cs) >= 8 and len(_functions(header)) >= 25   # the parsing found the API
    assert _functions(header) == _functions(cdef)


def test_gil_keeping_calls_are_declared_and_never_wait():
    """spawning/_build.py names the calls whose cffi wrappers keep the GIL: a name that is not a
    declared function would be kept silently by nothing, and one of the calls that can wait must
    never be among them (it would stall every other Python thread while it waits)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sp_build", ROOT / "spawning" / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)   # type: ignore[union-attr]
    declared = _functions(_strip_comments((ROOT / "spawning" / "_core_cdef.h").read_text()))
    keep = set(build.KEEP_GIL)
    assert keep <= declared, keep - declared
    waits = {"sp_poll", "sp_poll_one", "sp_poll_codes", "sp_req_read_wait", "sp_req_drain",
             "sp_req_sendfile", "sp_server_drain", "sp_server_new", "sp_server_free"}
    assert waits <= declared and not keep & waits, keep & waits
