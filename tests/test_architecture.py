"""The house rules of src/hasync that a change could silently break: no import cycle, short modules,
a docstring on every module, imports at the top, no code that asks "which role am I?" by type.

The layering itself is written down as import-linter contracts in pyproject.toml (`lint-imports` in
scripts/test.sh); these are the rules a contract cannot state.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hasync"
MODULES = sorted(SRC.rglob("*.py"))
MAX_LINES = 600
# Imports inside functions, outside cli/ (where they keep a quick command from loading the web stack):
# module -> why. Anything else belongs at the top of its module.
LATE_IMPORTS: dict[str, str] = {}
ROLE_TYPES = r"(ActiveSide|StandbySide|ActiveCheck|StandbyCheck|ActiveRole|StandbyRole|Role)"


def rel(p: Path) -> str:
    return str(p.relative_to(SRC.parent))


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("hasync")
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.b", imported="p.c")
    assert strongly_connected(graph) == [["p.a", "p.b"]]


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_module_is_short_and_says_what_it_is_for(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= MAX_LINES, f"{rel(path)}: {text.count(chr(10))} lines (at most {MAX_LINES})"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.strip(), f"{rel(path)}: no module docstring"


def late_imports(tree: ast.AST) -> list[int]:
    """Line numbers of imports inside a function body."""
    lines: list[int] = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            lines += [n.lineno for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
    return sorted(set(lines))


def test_imports_are_at_the_top_outside_the_cli() -> None:
    found = {}
    for path in MODULES:
        name = rel(path)
        if name.startswith("hasync/cli/") or name in LATE_IMPORTS:
            continue
        lines = late_imports(ast.parse(path.read_text()))
        if lines:
            found[name] = lines
    assert found == {}


def test_the_late_import_finder_sees_nested_imports() -> None:
    tree = ast.parse("import os\n\ndef f():\n    def g():\n        import json\n    from x import y\n")
    assert late_imports(tree) == [5, 6]


def test_no_code_asks_which_role_it_is_by_type() -> None:
    pattern = re.compile(r"isinstance\([^()]*,\s*\(?[^()]*\b" + ROLE_TYPES + r"\b")
    hits = [
        f"{rel(p)}:{i}" for p in MODULES for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)
    ]
    assert hits == []


def test_every_top_level_module_has_a_layer() -> None:
    """A module outside the layers contract could import anything: each one is placed in a layer."""
    doc = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    (layers,) = [c["layers"] for c in doc["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}
    top = {p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__")}
    top |= {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert top - placed == set()
    assert placed - top == set()  # nor a layer that names a module that is gone
