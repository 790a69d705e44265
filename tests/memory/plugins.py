"""Memory strategies of a third-party package, for the tests: the server finds them only as entry
points of a distribution the test writes (conftest.plugin_path), as a pip-installed plug-in would be."""

from __future__ import annotations

from typing import Any


class NewestOnly:
    """A working plug-in: a note of what it was given, then the newest message only."""

    async def build(self, ctx: Any) -> list[dict[str, Any]]:
        note = (
            f"plugin newest_only saw {len(ctx.messages)} messages of thread {ctx.thread['id']} for run {ctx.run['id']}"
        )
        assert ctx.budget > 0
        return [{"role": "system", "content": note}, ctx.messages[-1].chat]


class Exploding:
    async def build(self, ctx: Any) -> list[dict[str, Any]]:
        raise RuntimeError("boom in the plug-in")


class Garbage:
    async def build(self, ctx: Any) -> Any:
        return [{"role": "wizard", "content": 42}]


class NotAStrategy:
    """No `build`: loading it fails the run."""
