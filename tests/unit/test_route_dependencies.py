"""Routes get what they need through typed dependencies (`loom.web.deps`), and a run's events from the run
service (issue 14, point 2), checked on the source with `ast`:

- nothing but `loom.web.deps.container_of` reads the container from the app's state
  (`request.app.state…`, typed `Any`);
- the HTTP layers (`api/`, `console/`, `web/`) never reach the run engine: no `.engine`, no `.bus`, no
  import of `loom.runs` (the run service hands them a `RunEvents` stream and the poll hint).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "loom"
HTTP_LAYERS = ("api", "console", "web")


def _sources(*parts: str) -> dict[str, ast.AST]:
    roots = [SRC / p for p in parts] if parts else [SRC]
    return {
        path.relative_to(SRC).as_posix(): ast.parse(path.read_text())
        for root in roots
        for path in sorted(root.rglob("*.py"))
    }


def _app_state_reads(tree: ast.AST) -> list[int]:
    """Lines reading `<x>.app.state` (the app reached through a request or a scope)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "state"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "app"
    ]


def _engine_reaches(tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("engine", "bus"):
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loom.runs"):
            found.append(f"{node.lineno}: from {node.module} import …")
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("loom.runs")]
    return found


def test_only_the_dependencies_read_the_container_from_the_app_state() -> None:
    sources = _sources()
    reads = {name: lines for name, tree in sources.items() if (lines := _app_state_reads(tree))}
    assert set(reads) == {"web/deps.py"}, f"reads of request.app.state outside loom.web.deps: {reads}"
    # The check sees such a read (it is not vacuous).
    assert _app_state_reads(ast.parse("x = request.app.state.container.runs")) == [1]


def test_the_http_layers_never_reach_the_run_engine() -> None:
    sources = _sources(*HTTP_LAYERS)
    assert any(name.startswith("api/routes/") for name in sources)
    reaches = {name: found for name, tree in sources.items() if (found := _engine_reaches(tree))}
    assert not reaches, f"the HTTP layers reach into the run engine: {reaches}"
    old = "from loom.runs.bus import END\nq = container.engine.bus.subscribe(run_id)\n"
    assert _engine_reaches(ast.parse(old)) == ["1: from loom.runs.bus import …", "2: .bus", "2: .engine"]
