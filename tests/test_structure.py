"""The layout's rules, computed from the source with ``ast``: no import circles, layers import only downward.

Every import counts - at module level and inside functions (lazy imports are still
dependencies) - except those under ``if TYPE_CHECKING:``, which never run: they let a lower
layer name a higher layer's type in an annotation (the numerics kit annotates
``ctx: TrialContext``). The implicit import of parent packages is not counted.

Each top-level folder (and top-level module) of ``orchestrator/`` has a rank in
:data:`RANKS`; a unit may import only units of a strictly lower rank. The package root
(``orchestrator/__init__.py``, the public facade, and ``__main__.py``) may import any layer
but is imported by none. A new folder fails the check until it is given a rank.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "orchestrator"

RANKS: dict[str, int] = {
    "errors": 0,
    "ids": 0,
    "formatting": 0,
    "numerics": 1,
    "definition": 2,
    "design": 3,
    "records": 4,
    "execution": 5,
    "workloads": 6,
    "tuning": 6,
    "analysis": 7,
    "operations": 8,
    "cli": 9,
}
"""Layer of each top-level unit of the package, lowest first (see docs/structure.md)."""

FACADE = {"__init__", "__main__"}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (a package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, skipping the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (resolved: ``from .x import y`` names ``x.y`` when that is a module)."""
    modules = module_names(root)
    top = root.name
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules and target.startswith(top):
                    target = target.rpartition(".")[0]  # an attribute of a module: the module
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (each is at least one circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:  # Tarjan
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
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
            connect(node)
    return found


def unit_of(module: str) -> str:
    """The layer unit of a module: its top-level folder or module under the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        source = unit_of(module)
        units[source]
        for target in targets:
            if unit_of(target) != source:
                units[source].add(unit_of(target))
    return dict(units)


def layer_violations(graph: dict[str, set[str]], ranks: dict[str, int]) -> list[str]:
    """Imports that go to the same or a higher layer, and units without a rank."""
    problems = []
    for module, targets in sorted(graph.items()):
        source = unit_of(module)
        if source in FACADE:
            continue
        if source not in ranks:
            problem = f"{source}: no layer rank; give it one in RANKS (tests/test_structure.py) and docs/structure.md"
            if problem not in problems:
                problems.append(problem)
            continue
        for target in sorted(targets):
            unit = unit_of(target)
            if unit == source:
                continue
            if unit in FACADE:
                problems.append(f"{module} imports the package root {target}: import the module that defines the name")
            elif unit in ranks and ranks[unit] >= ranks[source]:
                problems.append(f"{module} (layer {source}, rank {ranks[source]}) imports {target} (layer {unit}, rank {ranks[unit]})")
    return problems


# -- the package -------------------------------------------------------------------------


def test_no_import_circle_between_modules():
    found = cycles(import_graph(ROOT))
    assert not found, "import circles between modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_circle_between_layers():
    found = cycles(unit_graph(import_graph(ROOT)))
    assert not found, "import circles between folders:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_layer_imports_only_lower_layers():
    problems = layer_violations(import_graph(ROOT), RANKS)
    assert not problems, "\n".join(problems)


def test_nothing_below_the_command_line_imports_it():
    graph = import_graph(ROOT)
    offenders = [f"{m} imports {t}" for m, targets in graph.items() for t in targets if unit_of(t) == "cli" and unit_of(m) not in ("cli", "__main__")]
    assert not offenders, "\n".join(offenders)


def test_every_folder_and_top_module_has_a_rank():
    units = {unit_of(m) for m in module_names(ROOT)} - FACADE
    assert sorted(units - set(RANKS)) == []


# -- the checks themselves, on a synthetic package --------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_module_circle_is_found_even_through_a_lazy_import(tmp_path):
    root = _package(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "from . import b\n",
        "low/b.py": "def f():\n    from .c import thing\n",
        "low/c.py": "from pkg.low.a import x\n",
        "low/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n",
    })
    assert cycles(import_graph(root)) == [["pkg.low.a", "pkg.low.b", "pkg.low.c"]]


def test_a_type_checking_import_alone_is_no_circle(tmp_path):
    root = _package(tmp_path, {
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "from .a import A\n",
    })
    assert cycles(import_graph(root)) == []


def test_a_folder_circle_is_found_and_an_upward_import_named(tmp_path):
    root = _package(tmp_path, {
        "core/__init__.py": "",
        "core/model.py": "def main():\n    from ..cli.commands import run\n",
        "cli/__init__.py": "",
        "cli/commands.py": "from ..core.model import main as run\n",
        "other/__init__.py": "",
        "other/x.py": "from ..core import model\n",
    })
    graph = import_graph(root)
    assert cycles(graph) == [["pkg.cli.commands", "pkg.core.model"]]
    assert cycles(unit_graph(graph)) == [["cli", "core"]]
    problems = layer_violations(graph, {"core": 0, "cli": 1})
    assert problems == [
        "pkg.core.model (layer core, rank 0) imports pkg.cli.commands (layer cli, rank 1)",
        "other: no layer rank; give it one in RANKS (tests/test_structure.py) and docs/structure.md",
    ]


def test_a_folder_circle_without_a_module_circle_is_found(tmp_path):
    root = _package(tmp_path, {
        "one/__init__.py": "",
        "one/a.py": "from ..two import c\n",
        "one/b.py": "",
        "two/__init__.py": "",
        "two/c.py": "",
        "two/d.py": "from ..one.b import x\n",
    })
    graph = import_graph(root)
    assert cycles(graph) == []
    assert cycles(unit_graph(graph)) == [["one", "two"]]


@pytest.mark.parametrize("ranks", [{"one": 0, "two": 1}, {"one": 1, "two": 0}])
def test_either_direction_of_a_folder_circle_breaks_the_layering(tmp_path, ranks):
    root = _package(tmp_path, {
        "one/__init__.py": "",
        "one/a.py": "from ..two import c\n",
        "two/__init__.py": "",
        "two/c.py": "import pkg.one.a\n",
    })
    assert len(layer_violations(import_graph(root), ranks)) == 1
