"""No import cycles in src/loom (issue 14, point 2).

Every module of src/loom is parsed with `ast` (nothing is imported) and every `import` / `from … import`
statement is counted, wherever it stands: at module level, inside a function, a method or a `try`. A
deferred import that dodges a cycle at import time is still a cycle in the design, so it counts.

The one exclusion: imports under `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`), which exist only
for the type checker and never run.

Two checks:
- between parts of Loom: each package (api, console, jobs, llm, ops, retrieval, runs, sandbox, schemas,
  services, store) is one node, and each top-level module (container, config, errors, clock, ids, tokens,
  supervisor, cli, …) its own node; the graph of imports between them must have no cycle;
- between the modules inside one package (runs/engine.py and runs/executor.py, services/common.py and
  services/vector_stores.py, …): every package's module graph must have no cycle either.

A failure prints each cycle found with the import statements (file:line) that make it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "loom"


@dataclass(frozen=True)
class Import:
    """One import statement: the importing module, the module it imports, where it stands."""

    source: str  # dotted module name, e.g. "loom.runs.engine"
    target: str  # dotted module name (a module of src/loom)
    where: str  # "runs/engine.py:12"


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, at any depth, except the body of an `if TYPE_CHECKING:`
    (its `else:` branch runs, so it counts)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source_text: str, name: str, is_package: bool, known: Iterable[str], where: str) -> list[Import]:
    """The imports of module `name` (whose text is `source_text`) that land on one of the `known` modules.

    `from pkg import x` lands on `pkg.x` when that is a module, else on `pkg` itself (its `__init__`).
    Relative imports are resolved against `name` (`is_package`: `name` is a package's `__init__`)."""
    modules = set(known)
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []
    for node in _import_nodes(ast.parse(source_text)):
        line = f"{where}:{node.lineno}"
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            # `import loom.runs.engine` lands on the deepest known module of that name.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append(Import(name, target, line))
    return found


def all_imports(root: Path = SRC) -> list[Import]:
    paths = sorted(root.rglob("*.py"))
    names = {module_name(p, root): p for p in paths}
    found: list[Import] = []
    for name, path in names.items():
        where = path.relative_to(root).as_posix()
        found.extend(imports_of(path.read_text(), name, path.name == "__init__.py", names, where))
    return found


def part_of(module: str) -> str:
    """The node of the package graph a module belongs to: `loom.runs.engine` -> `runs`,
    `loom.container` -> `container`; `loom` itself (its `__init__`) -> `loom`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (or with a self-loop): each is a cycle
    or several tangled together. Tarjan's algorithm, iterative."""
    graph = {node: sorted(set(targets)) for node, targets in edges.items()}
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = graph[node]
            if i < len(targets):
                work.append((node, i + 1))
                nxt = targets[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    result.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(result)


def _report(found: list[list[str]], why: Mapping[tuple[str, str], set[str]]) -> str:
    lines: list[str] = []
    for component in found:
        members = set(component)
        lines.append("cycle among " + " <-> ".join(component) + ":")
        for (a, b), wheres in sorted(why.items()):
            if a in members and b in members:
                lines.append(f"  {a} -> {b}: " + ", ".join(sorted(wheres)))
    return "\n".join(lines)


def _graph(pairs: Iterable[tuple[str, str, str]]) -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    edges: dict[str, set[str]] = {}
    why: dict[tuple[str, str], set[str]] = {}
    for a, b, where in pairs:
        if a == b:
            continue
        edges.setdefault(a, set()).add(b)
        why.setdefault((a, b), set()).add(where)
    return edges, why


def test_no_cycle_between_packages() -> None:
    edges, why = _graph((part_of(i.source), part_of(i.target), i.where) for i in all_imports())
    # The graph is not empty: the parser sees the imports (a broken parser would pass vacuously).
    assert "services" in edges.get("api", set()), edges
    found = cycles(edges)
    assert not found, "import cycles between parts of src/loom:\n" + _report(found, why)


def test_no_cycle_between_modules_of_a_package() -> None:
    imports = all_imports()
    packages = sorted({part_of(i.source) for i in imports if (SRC / part_of(i.source)).is_dir()})
    assert {"runs", "services", "api", "sandbox"} <= set(packages), packages
    report: list[str] = []
    for package in packages:
        inside = [
            (i.source, i.target, i.where)
            for i in imports
            if part_of(i.source) == package and part_of(i.target) == package
        ]
        edges, why = _graph(inside)
        found = cycles(edges)
        if found:
            report.append(_report(found, why))
    assert not report, "import cycles between modules of one package:\n" + "\n".join(report)


# The checker checks itself on small graphs and sources, so the tests above cannot pass vacuously.


def test_cycles_finds_a_cycle_and_only_cycles() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": ["c"], "d": ["a", "c"]}) == []
    assert cycles({"a": ["a"]}) == [["a"]]
    assert cycles({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}) == [["a", "b"], ["c", "d"]]


def test_deferred_imports_count_and_type_checking_imports_do_not() -> None:
    text = (
        "from __future__ import annotations\n"
        "import typing\n"
        "from typing import TYPE_CHECKING\n"
        "from loom.store import db\n"
        "if TYPE_CHECKING:\n"
        "    from loom.services.runs import RunService\n"
        "if typing.TYPE_CHECKING:\n"
        "    import loom.api.app\n"
        "else:\n"
        "    import loom.jobs.ingest\n"
        "def f() -> None:\n"
        "    from loom.container import Container\n"
        "class C:\n"
        "    def m(self) -> None:\n"
        "        try:\n"
        "            from . import executor\n"
        "        except ImportError:\n"
        "            pass\n"
        "        from ..llm import ChatBackend\n"
    )
    known = [
        "loom.store",
        "loom.store.db",
        "loom.services.runs",
        "loom.api.app",
        "loom.jobs.ingest",
        "loom.container",
        "loom.runs.executor",
        "loom.llm",
    ]
    got = {i.target for i in imports_of(text, "loom.runs.engine", False, known, "x.py")}
    assert got == {"loom.store.db", "loom.jobs.ingest", "loom.container", "loom.runs.executor", "loom.llm"}
