"""The run status table (CONFORMANCE §4.1): allowed moves, stamps, and what terminal statuses clear."""

from __future__ import annotations

from typing import Any

import pytest

from loom.runs import status


def _run(state: str) -> dict[str, Any]:
    return {
        "status": state,
        "expires_at": 2_000_000_000,
        "required_action": {"type": "submit_tool_outputs"},
        "started_at": None,
        "completed_at": None,
        "failed_at": None,
        "cancelled_at": None,
    }


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "in_progress"),
        ("in_progress", "completed"),
        ("in_progress", "requires_action"),
        ("in_progress", "incomplete"),
        ("in_progress", "failed"),
        ("in_progress", "expired"),
        ("in_progress", "cancelling"),
        ("requires_action", "queued"),
        ("requires_action", "cancelling"),
        ("requires_action", "expired"),
        ("queued", "cancelling"),
        ("cancelling", "cancelled"),
    ],
)
def test_lifecycle_moves(current: str, target: str) -> None:
    assert status.can_move(current, target)


@pytest.mark.parametrize("terminal", sorted(status.TERMINAL))
def test_terminal_statuses_never_move(terminal: str) -> None:
    for target in [*status.ACTIVE, *status.TERMINAL]:
        assert not status.can_move(terminal, target)
    with pytest.raises(status.IllegalTransition):
        status.apply(_run(terminal), "in_progress")


def test_requires_action_cannot_complete_without_outputs() -> None:
    assert not status.can_move("requires_action", "completed")
    assert not status.can_move("requires_action", "in_progress")
    assert not status.can_move("queued", "completed")


def test_stamps_and_cleared_fields() -> None:
    run = status.apply(_run("queued"), "in_progress")
    assert run["started_at"] is not None and run["expires_at"] == 2_000_000_000 and run["required_action"] is None
    run = status.apply(run, "completed", usage={"total_tokens": 1})
    assert run["completed_at"] is not None and run["expires_at"] is None and run["usage"] == {"total_tokens": 1}
    failed = status.apply(_run("in_progress"), "failed", last_error={"code": "server_error", "message": "x"})
    assert failed["failed_at"] is not None and failed["expires_at"] is None
    cancelled = status.apply(status.apply(_run("requires_action"), "cancelling"), "cancelled")
    assert cancelled["cancelled_at"] is not None and cancelled["required_action"] is None
    waiting = status.apply(_run("in_progress"), "requires_action", required_action={"type": "submit_tool_outputs"})
    assert waiting["required_action"] == {"type": "submit_tool_outputs"} and waiting["expires_at"] is not None
