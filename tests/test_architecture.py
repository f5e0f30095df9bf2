"""The package's shape, read from its source with ``ast`` (nothing of it is imported):

(a) no import cycle among ``pipeline`` modules: imports at module level and inside functions
    both count, those under ``if TYPE_CHECKING:`` do not; ``from pipeline.x import y`` with
    ``y`` a submodule imports that submodule; a package's ``__init__`` is a module of its own
    (importing ``pipeline.x.y`` is not counted as importing ``pipeline.x`` too, so that a package
    may gather its submodules' names); modules imported by a name built at run time
    (``importlib.import_module``) are not seen;
(b) no module uses an underscore-prefixed name of another ``pipeline`` module, whether imported
    (``from pipeline.a import _x``) or reached as an attribute (``pipeline.a._x``, ``a._x`` after
    ``from pipeline import a``); ``__dunder__`` names are public;
(c) no module is longer than :data:`MAX_LINES` lines.

Each failure names the module(s) and the line(s) at fault. The readers are checked on a small
package written here, so that a clean report cannot come from a reader that sees nothing.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
MAX_LINES = 400


@dataclass(frozen=True)
class Module:
    name: str  # dotted: "pipeline.data.manifest"; a package's __init__ is "pipeline.data"
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


@dataclass
class ModuleReport:
    """What one module imports (``edges``) and the other modules' private names it uses."""

    module: Module
    edges: list[Edge] = field(default_factory=list)
    private: list[tuple[int, str]] = field(default_factory=list)  # (line, "pipeline.a._x")


def find_modules(root: Path, package: str) -> dict[str, Module]:
    """Every ``.py`` file of ``root/package``, by dotted module name."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package)
    return modules


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportReader(ast.NodeVisitor):
    """Collects a module's imports of the package's modules and its uses of their private
    names. Names bound by imports are tracked for the whole module (no scopes): enough for
    ``import pipeline.a as a`` / ``from pipeline import a`` followed by ``a._x``."""

    def __init__(self, module: Module, modules: Mapping[str, Module], package: str) -> None:
        self.report = ModuleReport(module)
        self.modules = modules
        self.package = package
        self.aliases: dict[str, str] = {}  # local name -> module it is bound to

    # -- imports
    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _ours(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def _edge(self, target: str, line: int) -> None:
        if target != self.report.module.name:
            self.report.edges.append(Edge(self.report.module.name, target, line))

    def _known(self, name: str) -> str:
        """``name`` if it is one of the modules, else the longest module it is inside of."""
        while name not in self.modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._ours(alias.name):
                continue
            self._edge(self._known(alias.name), node.lineno)
            if alias.asname:
                self.aliases[alias.asname] = self._known(alias.name)
            else:
                self.aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def _from_module(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        me = self.report.module
        base = me.name.split(".")
        if not me.is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self._from_module(node)
        if not self._ours(source):
            return
        module_edge = False
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.modules:
                self._edge(submodule, node.lineno)
                self.aliases[alias.asname or alias.name] = submodule
                if _is_private(alias.name):
                    self._private(node.lineno, source, alias.name)
                continue
            module_edge = True
            if _is_private(alias.name):
                self._private(node.lineno, source, alias.name)
        if module_edge:
            self._edge(self._known(source), node.lineno)

    # -- private names
    def _private(self, line: int, module: str, name: str) -> None:
        if self._known(module) != self.report.module.name:
            self.report.private.append((line, f"{module}.{name}"))

    def _module_of(self, node: ast.expr) -> str | None:
        """The package module an expression such as ``pipeline.a`` or ``a`` names, if any."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = self._module_of(node.value)
            if parent is not None and f"{parent}.{node.attr}" in self.modules:
                return f"{parent}.{node.attr}"
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        module = self._module_of(node.value)
        if (
            module is not None
            and f"{module}.{node.attr}" not in self.modules
            and _is_private(node.attr)
        ):
            self._private(node.lineno, module, node.attr)
        self.generic_visit(node)


def read_module(module: Module, modules: Mapping[str, Module], package: str) -> ModuleReport:
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    reader = _ImportReader(module, modules, package)
    reader.visit(tree)
    return reader.report


def read_package(root: Path, package: str) -> dict[str, ModuleReport]:
    modules = find_modules(root, package)
    return {name: read_module(m, modules, package) for name, m in modules.items()}


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of two or more nodes (self-loops are
    left out), as ``[a, b, ..., z]`` for a → b → ... → z → a, starting at the group's smallest
    node; the cycles sorted. Nodes only named as targets count too."""
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    succ = {n: sorted(set(graph.get(n, ())) - {n}) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    for start in nodes:  # Tarjan's algorithm, iterative
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(succ[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    cycles = []
    for group in groups:  # the shortest way from the smallest member back to itself
        members, first = set(group), group[0]
        came_from: dict[str, str] = {}
        frontier = [first]
        while first not in came_from:
            following = []
            for node in frontier:
                for child in succ[node]:
                    if child in members and child not in came_from:
                        came_from[child] = node
                        following.append(child)
            frontier = following
        path, node = [first], came_from[first]
        while node != first:
            path.append(node)
            node = came_from[node]
        cycles.append([first, *reversed(path[1:])])
    return sorted(cycles)


def shown(path: Path) -> str:
    """``path`` relative to the repository, where it is inside it."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def describe_cycle(cycle: list[str], reports: Mapping[str, ModuleReport]) -> str:
    """The cycle, then each of its imports with the file and line that makes it."""
    lines = [" → ".join([*cycle, cycle[0]])]
    for source, target in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        report = reports[source]
        where = min(e.line for e in report.edges if e.target == target)
        lines.append(f"  {shown(report.module.path)}:{where}: {source} imports {target}")
    return "\n".join(lines)


def import_graph(reports: Mapping[str, ModuleReport]) -> dict[str, set[str]]:
    return {name: {e.target for e in r.edges} for name, r in reports.items()}


# ------------------------------------------------------------------ the readers, checked


def test_find_cycles_on_small_graphs() -> None:
    with_cycle = {"a": ["b"], "b": ["c", "d"], "c": ["a"], "d": ["e"], "e": [], "f": ["f"]}
    assert find_cycles(with_cycle) == [["a", "b", "c"]]
    two = {"x": ["y"], "y": ["x", "z"], "z": ["w"], "w": ["z"], "v": ["x"]}
    assert find_cycles(two) == [["w", "z"], ["x", "y"]]
    assert find_cycles({"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a"]}) == []
    assert find_cycles({}) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_reader_on_a_small_package(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub import leaf\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/leaf.py": """\
                from __future__ import annotations
                from typing import TYPE_CHECKING
                import numpy

                if TYPE_CHECKING:
                    from pkg import top

                def later():
                    from pkg.top import _hidden, shown
                    return _hidden, shown
                """,
            "pkg/top.py": """\
                import pkg.sub.leaf
                from . import other as o
                from .sub import leaf as lf

                _hidden = 1
                shown = pkg.sub.leaf.later, o._secret, o.__name__, lf.later, _hidden
                """,
            "pkg/other.py": "_secret = 2\n",
        },
    )
    reports = read_package(tmp_path, "pkg")
    assert set(reports) == {"pkg", "pkg.sub", "pkg.sub.leaf", "pkg.top", "pkg.other"}
    assert reports["pkg"].module.is_package and not reports["pkg.top"].module.is_package
    graph = import_graph(reports)
    assert graph == {
        "pkg": {"pkg.sub.leaf"},  # a submodule imported by name
        "pkg.sub": set(),
        "pkg.sub.leaf": {"pkg.top"},  # inside a function; not the TYPE_CHECKING one
        "pkg.top": {"pkg.sub.leaf", "pkg.other"},  # absolute and relative
        "pkg.other": set(),
    }
    assert [e.line for e in reports["pkg.sub.leaf"].edges] == [9]
    assert find_cycles(graph) == [["pkg.sub.leaf", "pkg.top"]]
    assert "pkg/sub/leaf.py:9: pkg.sub.leaf imports pkg.top" in describe_cycle(
        ["pkg.sub.leaf", "pkg.top"], reports
    ).replace(str(tmp_path) + "/", "")
    assert reports["pkg.sub.leaf"].private == [(9, "pkg.top._hidden")]
    assert reports["pkg.top"].private == [(6, "pkg.other._secret")]  # its own _hidden is fine
    assert reports["pkg.other"].private == []


# ------------------------------------------------------------------ the package itself


@pytest.fixture(scope="module")
def reports() -> dict[str, ModuleReport]:
    found = read_package(ROOT, PACKAGE)
    # Something was read: the package's modules and the imports between them.
    assert len(found) > 30 and sum(len(r.edges) for r in found.values()) > 50
    return found


def test_no_import_cycle(reports: dict[str, ModuleReport]) -> None:
    cycles = find_cycles(import_graph(reports))
    assert not cycles, f"{len(cycles)} import cycle(s) among {PACKAGE} modules:\n" + "\n".join(
        describe_cycle(c, reports) for c in cycles
    )


def test_no_private_name_of_another_module(reports: dict[str, ModuleReport]) -> None:
    uses = [
        f"  {shown(r.module.path)}:{line}: {name} (used by {r.module.name})"
        for r in reports.values()
        for line, name in r.private
    ]
    assert not uses, f"{len(uses)} use(s) of another module's private name:\n" + "\n".join(uses)


def test_no_module_over_the_line_limit(reports: dict[str, ModuleReport]) -> None:
    long = [
        f"  {shown(r.module.path)}: {n} lines ({r.module.name}; line {MAX_LINES + 1} "
        "is over the limit)"
        for r in reports.values()
        if (n := len(r.module.path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not long, f"{len(long)} module(s) over {MAX_LINES} lines:\n" + "\n".join(long)
