"""How a run ends when it does not complete: cancelled, expired, failed, incomplete; how a draining
replica hands a run over to another; and closing what a run left open (its in-progress steps and
messages), for the executor and for the engine's recovery."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from loom.clock import now
from loom.runs.turn import Turn

if TYPE_CHECKING:
    from loom.runs.executor import RunExecutor

INTERRUPTED = "The run was interrupted before it finished (the server executing it stopped)."
_STAMPS = {"cancelled": "cancelled_at", "failed": "failed_at", "expired": "expired_at"}


def close_open(
    steps: Iterable[dict[str, Any]],
    messages: Iterable[dict[str, Any]],
    *,
    step_status: str,
    reason: str,
    error: dict[str, str] | None,
) -> None:
    """Close a run's open steps (`step_status`, stamped, with `error`) and messages (`incomplete`,
    for `reason`), in place. The one place that says what closing them means."""
    stamp = _STAMPS[step_status]
    for step in steps:
        step.update(status=step_status, last_error=error, **{stamp: now()})
    for message in messages:
        message.update(status="incomplete", incomplete_at=now(), incomplete_details={"reason": reason})


async def close_turn(
    ex: RunExecutor, turn: Turn, *, message_reason: str, step_status: str, error: dict[str, str] | None = None
) -> None:
    """Close what the executor's current model call left open, and announce it."""
    if turn.message is not None and turn.message_step is not None:
        turn.message["content"] = turn.content()
        close_open([turn.message_step], [turn.message], step_status=step_status, reason=message_reason, error=error)
        await ex.store.save_objects(ex.project, ("message", turn.message), ("step", turn.message_step))
        ex.emit("thread.message.incomplete", dict(turn.message))
        ex.emit(f"thread.run.step.{step_status}", dict(turn.message_step))
        turn.message = None
    if turn.tool_step is not None:
        close_open([turn.tool_step], [], step_status=step_status, reason=message_reason, error=error)
        await ex.store.save_objects(ex.project, ("step", turn.tool_step))
        ex.emit(f"thread.run.step.{step_status}", dict(turn.tool_step))
        turn.tool_step = None


async def settle_after_race(ex: RunExecutor, turn: Turn) -> None:
    """The run's status changed under us (a cancel arrived): finish as it now says."""
    current = await ex.store.get_run(ex.project, ex.run_id)
    if current is not None and current["status"] == "cancelling":
        await finish_cancelled(ex, turn)


async def finish_cancelled(ex: RunExecutor, turn: Turn) -> None:
    if ex.expired and await finish_expired(ex, turn):
        return
    await close_turn(ex, turn, message_reason="run_cancelled", step_status="cancelled")
    run = await ex.store.transition(
        ex.project, ex.run_id, "cancelled", allowed_from={"cancelling", "queued", "in_progress"}
    )
    if run is not None:
        ex.emit_run(run)


async def finish_expired(ex: RunExecutor, turn: Turn) -> bool:
    """End the run `expired` (OpenAI's status for a run past `expires_at`; no `last_error`): its open
    message `incomplete` (`run_expired`), its open steps `expired`. False when a cancel came first."""
    current = await ex.store.get_run(ex.project, ex.run_id)
    if current is None or current["status"] == "cancelling":
        return False
    await close_turn(ex, turn, message_reason="run_expired", step_status="expired")
    run = await ex.store.transition(
        ex.project, ex.run_id, "expired", allowed_from={"queued", "in_progress"}, usage=ex.usage_or_none()
    )
    if run is None:  # expired already by another replica's sweep: tell this replica's streams
        run = await ex.store.get_run(ex.project, ex.run_id)
    if run is not None and run["status"] == "expired":
        ex.emit_run(run)
    return True


async def close_turn_failed(ex: RunExecutor, turn: Turn, code: str, message: str) -> None:
    step_code = code if code in ("server_error", "rate_limit_exceeded") else "server_error"
    await close_turn(
        ex, turn, message_reason="run_failed", step_status="failed", error={"code": step_code, "message": message}
    )


async def fail(ex: RunExecutor, code: str, message: str) -> None:
    run = await ex.store.transition(
        ex.project,
        ex.run_id,
        "failed",
        last_error={"code": code, "message": message},
        usage=ex.usage_or_none(),
    )
    if run is not None:
        ex.emit_run(run)
    else:
        await settle_after_race(ex, Turn())


async def incomplete(ex: RunExecutor, reason: str) -> None:
    run = await ex.store.transition(
        ex.project,
        ex.run_id,
        "incomplete",
        incomplete_details={"reason": reason},
        usage=ex.usage_so_far(),
    )
    if run is not None:
        ex.emit_run(run)
    else:
        await settle_after_race(ex, Turn())


async def hand_over(ex: RunExecutor, turn: Turn) -> None:
    """This replica is draining: stop the run here at a turn it can commit cleanly, for another replica
    to go on with (`RunStore.hand_over`, then `RunEngine.take_over` elsewhere). A model call or tool
    interrupted mid-way has its open step closed `cancelled` (no error: nothing failed, it was stopped)
    and its message `incomplete`; the run's conversation then is what was committed before it (its
    completed steps, `loom.runs.context.run_transcript`), and its token total as of then. A cancel that
    came meanwhile wins: the run ends cancelled here."""
    await close_turn(ex, turn, message_reason="run_cancelled", step_status="cancelled")
    if await ex.store.hand_over(ex.run_id, ex.engine.replica, ex.state):
        ex.lease_cleared = True
        ex.handed_over = True
    else:
        await settle_after_race(ex, Turn())


async def stopped(ex: RunExecutor, turn: Turn) -> bool:
    """A model call or tool the executor stopped (its task cancelled): end the turn as a cancel or a
    handover asked; False when neither did (the cancellation came from elsewhere: re-raise it)."""
    if ex.cancel_requested:
        await finish_cancelled(ex, turn)
    elif ex.handover_requested:
        await hand_over(ex, turn)
    else:
        return False
    return True


async def drop_truncated_calls(
    ex: RunExecutor, turn: Turn, server_tools: Mapping[str, Any], step_usage: dict[str, int]
) -> None:
    """End a tool-call step whose calls were cut off by the token limit, none of them run.

    Its status is `cancelled`: a step has no `incomplete` (in_progress, cancelled, failed, completed,
    expired), `completed` would claim the calls ran (outputs filled), and `failed` needs a
    `last_error` although nothing failed: the calls were stopped before they could run, with no
    error, as a cancel stops them. The function calls stay in `step_details` as the model wrote them
    (as they were streamed); server tools, never run, show nothing."""
    step = turn.tool_step
    assert step is not None
    calls = []
    for upstream_index in sorted(turn.calls):
        call_id, name, parts = turn.calls[upstream_index]
        if name not in server_tools:
            function = {"name": name, "arguments": "".join(parts), "output": None}
            calls.append({"id": call_id, "type": "function", "function": function})
    step["step_details"] = {"type": "tool_calls", "tool_calls": calls}
    step.update(status="cancelled", cancelled_at=now(), usage=step_usage)
    await ex.store.save_objects(ex.project, ("step", step))
    ex.emit("thread.run.step.cancelled", dict(step))
    turn.tool_step = None
