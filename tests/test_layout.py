"""The package's shape: no module over 500 lines (past that a module holds two concerns),
and every package of it is one that gets installed."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "observer"
MAX_LINES = 500


def long_modules(root: Path, max_lines: int = MAX_LINES) -> dict[str, int]:
    """Modules under `root` longer than `max_lines`, with their length."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > max_lines:
            out[str(path.relative_to(root.parent))] = lines
    return out


def test_the_line_count_finds_a_long_module(tmp_path: Path) -> None:
    pkg = tmp_path / "observer"
    pkg.mkdir()
    (pkg / "short.py").write_text("x = 1\n" * MAX_LINES)
    (pkg / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_modules(pkg) == {"observer/long.py": MAX_LINES + 1}


def test_no_module_is_over_500_lines() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 40
    assert long_modules(PACKAGE) == {}


def test_every_package_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set()


def undocumented_modules(doc: str, root: Path) -> list[str]:
    """Modules that docs/ARCHITECTURE.md does not name under their folder's heading
    (### `observer/core/`); a module of a sub-package counts under the nearest heading."""
    sections: dict[str, str] = {}
    for part in doc.split("\n### ")[1:]:
        heading, _, body = part.partition("\n")
        sections[heading.split("`")[1]] = body
    missing = []
    for path in sorted(root.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        rel = path.relative_to(root.parent).as_posix()
        folders = [f for f in sections if rel.startswith(f)]
        if not folders or f"`{path.name}`" not in sections[max(folders, key=len)]:
            missing.append(rel)
    return missing


def test_architecture_names_every_module() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert undocumented_modules("### `observer/`\n- `cli.py`: x\n", PACKAGE)  # it can fail
    assert undocumented_modules(doc, PACKAGE) == []


# the store's threads are the one way to run blocking database work; the pulse's thread
# notices this process's pauses and touches no database
THREAD_MAKERS = {"ThreadPoolExecutor", "Thread", "to_thread", "run_in_executor"}
OWN_THREADS = {"observer/db/_threads.py", "observer/db/store.py", "observer/daemon/pulse.py"}


def past_the_gateway(root: Path) -> list[str]:
    """Uses outside `observer/db/` of a store's engine, and threads or executors made
    outside the modules that own them, as 'module:line name'."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = str(path.relative_to(root.parent))
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute) and node.attr == "engine":
                name = None if module.startswith("observer/db/") else "engine"
            elif isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called in THREAD_MAKERS and module not in OWN_THREADS:
                    name = called
            if name is not None:
                out.append(f"{module}:{node.lineno} {name}")
    return out


def test_the_gateway_check_finds_an_engine_and_a_thread(tmp_path: Path) -> None:
    pkg = tmp_path / "observer"
    (pkg / "web").mkdir(parents=True)
    (pkg / "db").mkdir()
    (pkg / "web" / "v.py").write_text("x = store.engine\nthreading.Thread(target=f)\n")
    (pkg / "db" / "r.py").write_text("x = store.engine\n")
    assert past_the_gateway(pkg) == ["observer/web/v.py:1 engine", "observer/web/v.py:2 Thread"]


def test_only_the_store_reaches_the_engine_and_runs_database_threads() -> None:
    assert past_the_gateway(PACKAGE) == []
