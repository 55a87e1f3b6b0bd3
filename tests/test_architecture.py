"""The import structure of the library follows the team rules.

* no import cycles between modules of ``conveyor``;
* only ``conveyor.orchestration`` and ``conveyor.cli`` import Prefect-facing code (``conveyor.orchestration``,
  ``prefect`` or the source checkout's top-level ``tasks``/``flows`` entrypoints);
* no module imports another module's private (``_x``) names;
* outside ``conveyor/kinds/`` (and the demo package) no code names a task kind: everything kind-specific
  is asked of the kind plug-in.

Each assertion lists every offender with its file and line, so one run shows all that is left to fix.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

import conveyor

PACKAGE = "conveyor"
ROOT = Path(conveyor.__file__).resolve().parent  # the package's folder
PREFECT_FACING_OWNERS = ("conveyor.orchestration", "conveyor.cli")
PREFECT_FACING = ("conveyor.orchestration", "prefect", "tasks", "flows")
TASK_KINDS = frozenset({"classification", "detection", "segmentation", "multilabel"})
KIND_NAMES_ALLOWED = ("kinds", "demo")  # the plug-ins with their registry, and the bundled demo examples


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Imports under `if TYPE_CHECKING:` never run, so they are left out; cache_dir=None writes nothing.
    return grimp.build_graph(PACKAGE, include_external_packages=True, exclude_type_checking_imports=True,
                             cache_dir=None)


def _internal(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.modules if m == PACKAGE or m.startswith(PACKAGE + "."))


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _where(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    details = graph.get_import_details(importer=importer, imported=imported)
    lines = ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details)
    return f"{importer} -> {imported} ({lines or 'no details'})"


def _strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the strongly connected components of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_strongly_connected_components_find_cycles():
    """The cycle finder itself: a 3-cycle, a self-import and an acyclic chain."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"f"}, "f": set()}
    components = _strongly_connected(sorted(edges), edges)
    assert ["a", "b", "c"] in components and ["d"] in components
    assert ["e"] in components and ["f"] in components


def test_no_import_cycles_between_modules(graph):
    modules = _internal(graph)
    inside = set(modules)
    edges = {m: graph.find_modules_directly_imported_by(m) & inside for m in modules}
    cycles = [c for c in _strongly_connected(modules, edges) if len(c) > 1 or c[0] in edges[c[0]]]
    report = []
    for cycle in cycles:
        members = set(cycle)
        report.append(f"cycle of {len(cycle)} modules: {', '.join(cycle)}")
        report += [f"    {_where(graph, a, b)}" for a in cycle for b in sorted(edges[a] & members)]
    assert not cycles, "import cycles in conveyor:\n" + "\n".join(report)


def test_only_orchestration_and_cli_import_prefect_facing_code(graph):
    targets = [m for m in graph.modules if _within(m, PREFECT_FACING)]
    offenders = sorted(
        _where(graph, importer, imported)
        for imported in targets
        for importer in graph.find_modules_that_directly_import(imported)
        if importer.startswith(PACKAGE) and not _within(importer, PREFECT_FACING_OWNERS)
    )
    assert not offenders, (
        f"library modules outside {' and '.join(PREFECT_FACING_OWNERS)} import "
        f"{', '.join(PREFECT_FACING)}:\n" + "\n".join(offenders))


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> dict[str, str]:
    """The local names bound to a module of the package: ``import a.b as x`` and ``from a import b (as x)``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, is_package)
            aliases.update({a.asname or a.name: f"{source}.{a.name}" for a in node.names
                            if f"{source}.{a.name}" in modules})
    return aliases


def _private_uses(path: Path, modules: set[str], root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """``from x import _name`` and ``x._name`` on an imported module ``x``, where ``x`` is another module."""
    module = _module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    aliases = _module_aliases(tree, module, is_package, modules)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, is_package)
            names = [a.name for a in node.names if _private(a.name)]
            if names and source != module:
                yield node.lineno, f"from {source} import {', '.join(names)}"
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr)
              and aliases.get(node.value.id, module) != module):
            yield node.lineno, f"{node.value.id}.{node.attr} ({aliases[node.value.id]}.{node.attr})"


def test_private_uses_find_imports_and_attributes(tmp_path):
    """The scanner itself, on a module of a fake package ``pkg``."""
    sample = tmp_path / "pkg" / "b.py"
    sample.parent.mkdir()
    sample.write_text("from pkg.a import _hidden, shown\n"
                      "from pkg import a as A\n"
                      "from . import a\n"
                      "def f(self):\n"
                      "    return A._x, a._y, a.z, self._w, _local\n"
                      "from .b import _mine\n")
    found = sorted(_private_uses(sample, {"pkg", "pkg.a", "pkg.b"}, root=tmp_path / "pkg"))
    assert found == [(1, "from pkg.a import _hidden"), (5, "A._x (pkg.a._x)"), (5, "a._y (pkg.a._y)")]


def test_no_module_uses_another_modules_private_names():
    modules = {_module_name(p) for p in _sources()}
    offenders = [f"{path.relative_to(ROOT.parent)}:{line}: {what}"
                 for path in _sources() for line, what in sorted(set(_private_uses(path, modules)))]
    assert not offenders, "modules use another module's private names:\n" + "\n".join(offenders)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (or any other bare string statement)."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def _kind_names(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value in TASK_KINDS:
                yield node.lineno, node.value


def test_kind_names_find_literals_and_comparisons_not_docstrings(tmp_path):
    """The scanner itself: literals in code and comparisons count; docstrings, comments and longer strings do not."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""Handles detection."""\n'
                      'def f(task):\n'
                      '    """segmentation too"""\n'
                      '    # classification\n'
                      '    if task == "detection":\n'
                      '        return {"segmentation": 1}\n'
                      '    return "classification models"\n')
    assert list(_kind_names(sample)) == [(5, "detection"), (6, "segmentation")]


def test_no_code_outside_the_kinds_names_a_task_kind():
    offenders = []
    for path in _sources():
        if path.relative_to(ROOT).parts[0] in KIND_NAMES_ALLOWED:
            continue
        offenders += [f"{path.relative_to(ROOT.parent)}:{line}: {value!r}" for line, value in sorted(_kind_names(path))]
    assert not offenders, ("code outside conveyor/kinds/ names a task kind (ask the kind plug-in instead):\n"
                           + "\n".join(offenders))
