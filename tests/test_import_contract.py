"""The import contract, read from the source (nothing is imported, so it is fast and exact).

- ``apex_gui.core`` never imports Qt (PySide6, pyqtgraph) nor the layers above it
  (``apex_gui.views``, ``apex_gui.qt``, ``apex_gui.commands``, the app and the CLI);
- views never import ``apex_gui.commands``;
- the rooms of ``apex_gui.core`` are layered: a room imports only rooms below it
  (``LAYERS``, bottom first); imports under ``if TYPE_CHECKING:`` count too;
- ``pynvml`` is imported only inside functions (a machine without NVIDIA starts fast).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "apex_gui"

LAYERS: list[list[str]] = [
    ['apex_gui.core.units', 'apex_gui.core.settings'],
    ['apex_gui.core.gguf'],
    ['apex_gui.core.files', 'apex_gui.core.fixtures'],
    ['apex_gui.core.plan'],
    ['apex_gui.core.jobs', 'apex_gui.core.safety'],
    ['apex_gui.core.fit'],
    ['apex_gui.core.report'],
    ['apex_gui.core.quality'],
    ['apex_gui.core.hub'],
]

QT = ("PySide6", "pyqtgraph")
ABOVE_CORE = ("apex_gui.views", "apex_gui.qt", "apex_gui.commands", "apex_gui.app", "apex_gui.cli")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ["apex_gui", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    top_level: set[int] = set()

    def mark(node: ast.AST) -> None:  # run on import: module level, under if/try, class bodies
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        top_level.add(id(node))
        for child in ast.iter_child_nodes(node):
            mark(child)

    for node in tree.body:
        mark(node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join(prefix + ([base] if base else []))
            found.append((base, node.lineno, id(node) in top_level))
            found += [(f"{base}.{alias.name}", node.lineno, id(node) in top_level)
                      for alias in node.names]
    return found


def within(module: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> int | None:
    for index, rooms in enumerate(LAYERS):
        if within(module, rooms):
            return index
    return None


def violations(root: Path = PACKAGE) -> list[str]:
    found: dict[tuple[str, int, str], str] = {}  # one line per import statement and rule
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        for imported, line, top in imports_of(path, name):
            where = f"{path.relative_to(root.parent)}:{line}: {name} imports {imported}"
            reasons = []
            if within(name, ["apex_gui.core"]):
                if within(imported, QT) or within(imported, ABOVE_CORE):
                    reasons.append("core stays free of Qt and of the layers above it")
                if imported.split(".")[0] == "pynvml" and top:
                    reasons.append("import pynvml inside the function that needs it")
                mine, theirs = layer_of(name), layer_of(imported)
                if mine is not None and theirs is not None and theirs > mine:
                    reasons.append("a lower room imports a higher one")
            if within(name, ["apex_gui.views"]) and within(imported, ["apex_gui.commands", "apex_gui.cli"]):
                reasons.append("views never import the command line")
            for reason in reasons:
                found.setdefault((str(path), line, reason), f"{where} ({reason})")
    return sorted(found.values())


def test_every_core_room_is_placed_in_a_layer() -> None:
    rooms = sorted(f"apex_gui.core.{p.parent.name}" for p in (PACKAGE / "core").glob("*/__init__.py"))
    assert [room for room in rooms if layer_of(room) is None] == []


def test_the_package_keeps_the_import_contract() -> None:
    assert violations() == []


@pytest.mark.parametrize(("relative", "source", "rule"), [
    ("core/gguf/bad.py", "from PySide6.QtCore import QObject\n", "free of Qt"),
    ("core/plan/bad.py", "def f():\n    from apex_gui.core.jobs.runner import run_job\n", "lower room"),
    ("core/fit/bad.py", "import pynvml\n", "inside the function"),
    ("views/bad.py", "from apex_gui.commands import inspect\n", "command line"),
    ("core/jobs/bad.py", "from ...views import style\n", "free of Qt"),
])
def test_the_checker_catches_each_kind_of_violation(tmp_path: Path, relative: str, source: str,
                                                    rule: str) -> None:
    path = tmp_path / "apex_gui" / relative
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = violations(tmp_path / "apex_gui")
    assert len(found) == 1 and rule in found[0], found
