"""The import contract, read from the source (nothing is imported, so it is fast and exact).

- ``apex_gui.core`` never imports Qt (PySide6, pyqtgraph) nor the layers above it
  (``apex_gui.views``, ``apex_gui.qt``, ``apex_gui.commands``, the app and the CLI);
- views never import ``apex_gui.commands``;
- the Qt layers are stacked too: ``apex_gui.qt`` (glue: workers, the job queue) imports no
  views, views import no screenshot driver (``apex_gui.screenshots`` drives the whole window);
- no two modules import each other, directly or round a circle, counting imports inside
  functions (where a circle hides) but not those under ``if TYPE_CHECKING:``, which never run;
- the rooms of ``apex_gui.core`` are layered: a room imports only rooms below it
  (``LAYERS``, bottom first); imports under ``if TYPE_CHECKING:`` count too;
- ``pynvml`` is imported only inside functions (a machine without NVIDIA starts fast);
- an import inside a function is there for start-up time or an optional dependency, and its
  comment says which (``start-up`` or ``optional``): on its line, or directly above it or above
  the first import of its block of consecutive imports.
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
    ['apex_gui.core.jobs'],
    ['apex_gui.core.convert'],
    ['apex_gui.core.fit'],
    ['apex_gui.core.report'],
    ['apex_gui.core.quality'],
    ['apex_gui.core.hub'],
    ['apex_gui.core.workflow'],
]

QT = ("PySide6", "pyqtgraph")
ABOVE_CORE = ("apex_gui.views", "apex_gui.qt", "apex_gui.screenshots", "apex_gui.commands",
              "apex_gui.app", "apex_gui.cli")
#: The Qt side, bottom first: a layer never imports one above it.
QT_LAYERS: list[list[str]] = [
    ['apex_gui.qt'],
    ['apex_gui.views'],
    ['apex_gui.screenshots'],
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ["apex_gui", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the nodes under ``if TYPE_CHECKING:`` (they never run)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                hidden |= {id(n) for n in ast.walk(child)}
    return hidden


def imports_of(path: Path, name: str, *, run_only: bool = False) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file; ``run_only``
    leaves out those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    top_level: set[int] = set()
    skipped = _type_checking_only(tree) if run_only else set()

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
        if id(node) in skipped:
            continue
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


def layer_of(module: str, layers: list[list[str]] = LAYERS) -> int | None:
    for index, rooms in enumerate(layers):
        if within(module, rooms):
            return index
    return None


def import_circles(root: Path = PACKAGE) -> list[list[str]]:
    """Every set of modules that import each other round a circle (Tarjan's strongly
    connected components of the module graph), each sorted; imports inside functions count."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph = {name: sorted({imported for imported, _line, _top in
                           imports_of(path, name, run_only=True)
                           if imported in paths and imported != name})
             for name, path in paths.items()}
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # recursion depth is bounded by the number of modules
        index[module] = lowest[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for neighbour in graph[module]:
            if neighbour not in index:
                visit(neighbour)
                lowest[module] = min(lowest[module], lowest[neighbour])
            elif neighbour in on_stack:
                lowest[module] = min(lowest[module], index[neighbour])
        if lowest[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return sorted(circles)


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
            mine, theirs = layer_of(name, QT_LAYERS), layer_of(imported, QT_LAYERS)
            if mine is not None and theirs is not None and theirs > mine:
                reasons.append("Qt glue, views and screenshot drivers import only downwards")
            for reason in reasons:
                found.setdefault((str(path), line, reason), f"{where} ({reason})")
    return sorted(found.values())


#: Why an import may sit inside a function; its comment names one.
INNER_IMPORT_REASONS = ("start-up", "optional")


def inner_imports_without_reason(source: str) -> list[int]:
    """Lines of the imports inside functions whose comment names no reason (on the import's
    own lines, or in the comment lines directly above it or above the first import of its
    block of consecutive imports)."""
    lines = source.splitlines()

    def says_why(node: ast.stmt) -> bool:
        texts = [line.partition("#")[2] for line in lines[node.lineno - 1:node.end_lineno]]
        row = node.lineno - 2
        while row >= 0 and lines[row].lstrip().startswith("#"):
            texts.append(lines[row])
            row -= 1
        return any(reason in text for text in texts for reason in INNER_IMPORT_REASONS)

    found: list[int] = []

    def visit(statements: list[ast.stmt], in_function: bool) -> None:
        lead: ast.stmt | None = None  # the first import of the current block
        for statement in statements:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                lead = lead or statement
                if in_function and not (says_why(statement) or says_why(lead)):
                    found.append(statement.lineno)
                continue
            lead = None
            inside = in_function or isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef))
            for value in vars(statement).values():
                if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                    visit(value, inside)
                elif isinstance(value, list):  # except handlers, match cases
                    for part in value:
                        if isinstance(part, (ast.ExceptHandler, ast.match_case)):
                            visit(part.body, inside)

    visit(ast.parse(source).body, False)
    return found


def unexplained_inner_imports(root: Path = PACKAGE) -> list[str]:
    return [f"{path.relative_to(root.parent)}:{line}" for path in sorted(root.rglob("*.py"))
            for line in inner_imports_without_reason(path.read_text(encoding="utf-8"))]


def test_every_core_room_is_placed_in_a_layer() -> None:
    rooms = sorted(f"apex_gui.core.{p.parent.name}" for p in (PACKAGE / "core").glob("*/__init__.py"))
    assert [room for room in rooms if layer_of(room) is None] == []


def test_the_package_keeps_the_import_contract() -> None:
    assert violations() == []


def test_no_modules_import_each_other_round_a_circle() -> None:
    assert import_circles() == []


def test_the_circle_finder_sees_a_circle_hidden_inside_functions(tmp_path: Path) -> None:
    room = tmp_path / "apex_gui" / "core" / "jobs"
    room.mkdir(parents=True)
    (room / "tools.py").write_text("def locate():\n    from apex_gui.core.jobs.check import known\n")
    (room / "check.py").write_text("from apex_gui.core.jobs.runner import run\n")
    (room / "runner.py").write_text("from apex_gui.core.jobs import tools\n")
    # A type-only import back never runs: not a circle.
    (room / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from apex_gui.core.jobs.alone import x\n")
    (room / "alone.py").write_text("from apex_gui.core.jobs.typed import y\n")
    assert import_circles(tmp_path / "apex_gui") == [
        ["apex_gui.core.jobs.check", "apex_gui.core.jobs.runner", "apex_gui.core.jobs.tools"]]


def test_every_import_inside_a_function_says_why() -> None:
    # Module top unless it is there for start-up time or an optional dependency.
    assert unexplained_inner_imports() == []


def test_the_inner_import_checker_wants_a_reason() -> None:
    source = ("import os\n"
              "def plain():\n"
              "    import json\n"  # 3: no reason
              "def table():\n"
              "    # start-up: numpy only when a table is read\n"
              "    import numpy\n"
              "    from numpy import linalg\n"  # led by a commented import
              "def nvml():\n"
              "    try:\n"
              "        import pynvml  # optional: nvidia-ml-py may be absent\n"
              "    except ImportError:\n"
              "        import csv\n"  # 12: its own block, no reason
              "    total = 1\n"
              "    import shlex\n"  # 14: the block above ended at `total = 1`
              "class Top:\n"
              "    import re\n"  # a class body at module level runs on import: not inside
              "    def method(self):\n"
              "        # because it is slow\n"
              "        import ast\n")  # 19: a comment, but no reason named
    assert inner_imports_without_reason(source) == [3, 12, 14, 19]


@pytest.mark.parametrize(("relative", "source", "rule"), [
    ("core/gguf/bad.py", "from PySide6.QtCore import QObject\n", "free of Qt"),
    ("core/plan/bad.py", "def f():\n    from apex_gui.core.jobs.runner import run_job\n", "lower room"),
    ("core/fit/bad.py", "import pynvml\n", "inside the function"),
    ("views/bad.py", "from apex_gui.commands import inspect\n", "command line"),
    ("core/jobs/bad.py", "from ...views import style\n", "free of Qt"),
    ("qt/bad.py", "def f():\n    from apex_gui.views.window.main_window import MainWindow\n",
     "only downwards"),
    ("views/run/bad.py", "from apex_gui.screenshots.window_shots import settle\n", "only downwards"),
])
def test_the_checker_catches_each_kind_of_violation(tmp_path: Path, relative: str, source: str,
                                                    rule: str) -> None:
    path = tmp_path / "apex_gui" / relative
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = violations(tmp_path / "apex_gui")
    assert len(found) == 1 and rule in found[0], found
