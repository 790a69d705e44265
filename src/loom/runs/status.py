"""The one table of run statuses and the transitions between them (CONFORMANCE §4)."""

from __future__ import annotations

from typing import Any

from loom.clock import now

ACTIVE = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
TERMINAL = frozenset({"cancelled", "failed", "completed", "incomplete", "expired"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"in_progress", "cancelling", "cancelled", "failed", "expired"}),
    "in_progress": frozenset({"completed", "requires_action", "incomplete", "failed", "expired", "cancelling"}),
    "requires_action": frozenset({"queued", "cancelling", "expired", "failed"}),
    "cancelling": frozenset({"cancelled", "failed", "completed", "incomplete", "expired"}),
}

# The timestamp each status sets on entry.
_STAMPS = {
    "in_progress": "started_at",
    "cancelled": "cancelled_at",
    "failed": "failed_at",
    "completed": "completed_at",
    "incomplete": "completed_at",
}


class IllegalTransition(Exception):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"run cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_move(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def apply(run: dict[str, Any], target: str, **fields: Any) -> dict[str, Any]:
    """Move `run` (a wire object, changed in place) to `target`, stamping times as OpenAI did."""
    current = run["status"]
    if not can_move(current, target):
        raise IllegalTransition(current, target)
    run["status"] = target
    stamp = _STAMPS.get(target)
    if stamp is not None:
        run[stamp] = now()
    if target in TERMINAL:
        run["expires_at"] = None
    if target != "requires_action":
        run["required_action"] = None
    run.update(fields)
    return run
