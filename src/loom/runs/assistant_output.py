"""The assistant's side of one model call as the client sees it: the message and its step (created,
text and refusal deltas, completed with annotations and images) and the tool-calls step's deltas."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from loom import ids
from loom.clock import now
from loom.records import RunState
from loom.runs.annotations import annotate
from loom.runs.model_request import ServerTools
from loom.runs.objects import new_assistant_message, new_step, usage_dict
from loom.runs.tools import StreamsArguments
from loom.runs.turn import Turn, message_delta, step_delta

if TYPE_CHECKING:
    from loom.runs.executor import RunExecutor

# Streamed text is saved this often while it grows, so a crash loses little.
FLUSH_EVERY_S = 1.0


class AssistantOutput:
    """Writes and announces what the model produces, for one run's executor."""

    def __init__(self, executor: RunExecutor) -> None:
        self.ex = executor

    async def open_message(self, turn: Turn) -> None:
        ex = self.ex
        message = new_assistant_message(ex.run)
        step = new_step(
            ex.run,
            "message_creation",
            {"type": "message_creation", "message_creation": {"message_id": message["id"]}},
        )
        await ex.store.insert_objects(ex.project, ("step", step), ("message", message))
        turn.message, turn.message_step = message, step
        ex.emit("thread.run.step.created", dict(step))
        ex.emit("thread.run.step.in_progress", dict(step))
        ex.emit("thread.message.created", dict(message))
        ex.emit("thread.message.in_progress", dict(message))

    async def text_delta(self, turn: Turn, text: str) -> None:
        if turn.message is None:
            await self.open_message(turn)
        assert turn.message is not None
        part: dict[str, Any] = {"index": 0, "type": "text", "text": {"value": text}}
        if not turn.text:
            part["text"]["annotations"] = []
        turn.text += text
        self.ex.emit("thread.message.delta", message_delta(turn.message["id"], [part]))

    async def refusal_delta(self, turn: Turn, text: str) -> None:
        if turn.message is None:
            await self.open_message(turn)
        assert turn.message is not None
        index = 1 if turn.text else 0
        turn.refusal += text
        part = {"index": index, "type": "refusal", "refusal": text}
        self.ex.emit("thread.message.delta", message_delta(turn.message["id"], [part]))

    async def flush(self, turn: Turn) -> None:
        """Save the message's text so far, at most every `FLUSH_EVERY_S`."""
        if turn.message is not None and time.monotonic() - turn.flushed_at > FLUSH_EVERY_S:
            turn.flushed_at = time.monotonic()
            turn.message["content"] = turn.content()
            await self.ex.store.save_objects(self.ex.project, ("message", turn.message))

    async def complete_message(
        self,
        turn: Turn,
        usage: dict[str, int],
        truncated: bool,
        *,
        complete_run: dict[str, Any] | None = None,
        state: RunState | None = None,
    ) -> dict[str, Any] | None:
        """Finish the turn's message and its step. With `complete_run` (the completed run's fields, and its
        bookkeeping `state`) the run is moved to `completed` in the same transaction; returns that run
        (None if it could not move)."""
        ex = self.ex
        message, step = turn.message, turn.message_step
        assert message is not None and step is not None
        for linker, ctx in ex.linkers if turn.text else []:
            ex.citations.extend(await linker.link_files(ctx, turn.text, {c.text for c in ex.citations}))
        annotations = annotate(turn.text, ex.citations) if turn.text else []
        message["content"] = turn.content(annotations)
        if annotations:
            parts = [{"index": i, **a} for i, a in enumerate(annotations)]
            ex.emit(
                "thread.message.delta",
                message_delta(message["id"], [{"index": 0, "type": "text", "text": {"annotations": parts}}]),
            )
        for file_id in ex.pending_images:
            block = {"type": "image_file", "image_file": {"file_id": file_id, "detail": "auto"}}
            ex.emit("thread.message.delta", message_delta(message["id"], [{"index": len(message["content"]), **block}]))
            message["content"].append(block)
        ex.pending_images = []
        if truncated:
            message.update(status="incomplete", incomplete_at=now(), incomplete_details={"reason": "max_tokens"})
        else:
            message.update(status="completed", completed_at=now())
        step.update(status="completed", completed_at=now(), usage=usage)
        done = None
        if complete_run is None:
            await ex.store.save_objects(ex.project, ("message", message), ("step", step))
        else:
            done = await ex.store.save_and_transition(
                ex.project, ex.run_id, [("message", message), ("step", step)], "completed", state=state, **complete_run
            )
        ex.emit(f"thread.message.{message['status']}", dict(message))
        ex.emit("thread.run.step.completed", dict(step))
        turn.message = None
        turn.message_step = None
        return done

    async def tool_delta(
        self,
        turn: Turn,
        index: int,
        name: str | None,
        arguments: str,
        server_tools: ServerTools,
    ) -> None:
        """A fragment of the model's tool call number `index` (upstream's numbering)."""
        if turn.message is not None:
            await self.complete_message(turn, usage_dict(0, 0), truncated=False)
        if turn.tool_step is None:
            await self._open_tool_step(turn)
        position = sorted(turn.calls).index(index) if index in turn.calls else len(turn.calls)
        if index not in turn.calls:
            self._new_call(turn, index, position, name, server_tools)
        elif name:
            cid, old, parts = turn.calls[index]
            turn.calls[index] = (cid, old + name, parts)
        if arguments:
            turn.calls[index][2].append(arguments)
            if turn.calls[index][1] not in server_tools:
                self.call_delta(
                    turn, position, {"index": position, "type": "function", "function": {"arguments": arguments}}
                )
            elif index in turn.arg_streams and (piece := turn.arg_streams[index].feed(arguments)) is not None:
                self.call_delta(turn, position, {"index": position, **piece})

    async def _open_tool_step(self, turn: Turn) -> None:
        ex = self.ex
        step = new_step(ex.run, "tool_calls", {"type": "tool_calls", "tool_calls": []})
        await ex.store.insert_objects(ex.project, ("step", step))
        turn.tool_step = step
        ex.emit("thread.run.step.created", dict(step))
        ex.emit("thread.run.step.in_progress", dict(step))

    def _new_call(self, turn: Turn, index: int, position: int, name: str | None, server_tools: ServerTools) -> None:
        our_id = ids.new_id("call")
        turn.calls[index] = (our_id, name or "", [])
        server = server_tools.get(name or "")
        if server is None:
            body: dict[str, Any] = {
                "index": position,
                "id": our_id,
                "type": "function",
                "function": {"name": name or "", "arguments": "", "output": None},
            }
            self.call_delta(turn, position, body)
        elif isinstance(server[0], StreamsArguments):
            stream = server[0].argument_stream(our_id)
            turn.arg_streams[index] = stream
            self.call_delta(turn, position, {"index": position, **stream.opening()})
        # Other server tools show their first delta when they run (their arguments are not the user's business).

    def call_delta(self, turn: Turn, position: int, call: dict[str, Any]) -> None:
        """A call's delta while the model writes the calls. The calls after the first one that streams its
        input (code_interpreter) are held until it has run: its outputs come after the model's turn, and
        the SDK fires on_tool_call_created again for an index that deltas go back to."""
        assert turn.tool_step is not None
        streaming = [sorted(turn.calls).index(i) for i in turn.arg_streams]
        if streaming and position > min(streaming):
            turn.held.setdefault(position, []).append(call)
        else:
            self.step_delta(turn.tool_step, call)

    def step_delta(self, step: dict[str, Any], call: dict[str, Any]) -> None:
        self.ex.emit("thread.run.step.delta", step_delta(step["id"], call))
