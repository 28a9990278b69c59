"""The package's import graph has no cycle, and the command line imports cleanly.

The graph is read from the source with `ast`: every `import` and `from ... import` of an
`observer` module, at module level or inside a function (an import deferred into a function
to dodge a cycle is still a cycle). A name imported from a package counts as an edge to the
submodule of that name when there is one, else to the package itself; the implicit import
of a module's parent package is not an edge (a package that re-exports its submodules is
not a cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "observer"


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module under `root`, by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that `module` imports, anywhere in its source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(module, path, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif source in modules:
                    found.add(source)
    found.discard(module)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_graph_reader_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "observer"
    (pkg / "daemon").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "daemon" / "__init__.py").write_text("")
    (pkg / "daemon" / "a.py").write_text("from observer.daemon.b import thing\n")
    (pkg / "daemon" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "daemon" / "c.py").write_text("import observer.daemon.a\nfrom observer import daemon\n")
    (pkg / "daemon" / "d.py").write_text("from observer.daemon import a, b\n")
    graph = import_graph(pkg)
    assert graph["observer.daemon.d"] == {"observer.daemon.a", "observer.daemon.b"}
    assert graph["observer.daemon.c"] == {"observer.daemon.a", "observer.daemon"}
    assert cycles(graph) == [["observer.daemon.a", "observer.daemon.b", "observer.daemon.c"]]


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the reader found the package
    assert cycles(graph) == []


def test_the_command_line_imports_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "observer", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "usage" in done.stdout.lower()
