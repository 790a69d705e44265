"""One run's execution: the model loop and the tool rounds, driving every status change.

What a model call is asked is shaped in `loom.runs.model_request`; what it produces is accumulated in a
`loom.runs.turn.Turn` and written and announced by `loom.runs.assistant_output`; annotations come from
`loom.runs.annotations`; a run that does not complete ends through `loom.runs.endings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any, Protocol

from loom.clock import now
from loom.config import Settings
from loom.llm.errors import UpstreamError
from loom.llm.routing import ModelRouter, Route
from loom.llm.types import ChatRequest, ToolCall
from loom.memory import MemoryFailure
from loom.memory.service import MemoryService, RunMemory
from loom.ops import metrics
from loom.records import CitationState, RunRecord, RunState, StepCall, StepState, step_to_wire
from loom.runs import endings, model_request
from loom.runs.assistant_output import AssistantOutput
from loom.runs.bus import EventBus
from loom.runs.context import FileReader
from loom.runs.model_request import ServerTools
from loom.runs.objects import usage_dict
from loom.runs.store import Preloaded, RunContext, RunStore
from loom.runs.tools import Citation, LinksFiles, ServerTool, ToolContext, ToolResult
from loom.runs.turn import Turn


class ExecutorHost(Protocol):
    """What an executor needs of the engine that starts it (`loom.runs.engine.RunEngine`), so that the
    engine imports the executor and never the other way round."""

    @property
    def store(self) -> RunStore: ...

    @property
    def bus(self) -> EventBus: ...

    @property
    def router(self) -> ModelRouter: ...

    @property
    def settings(self) -> Settings: ...

    def server_tools_for(self, tools: list[dict[str, Any]]) -> dict[str, tuple[ServerTool, dict[str, Any]]]: ...

    def file_reader(self, project: str) -> FileReader: ...

    @property
    def memory(self) -> MemoryService: ...

    @property
    def replica(self) -> str: ...


log = logging.getLogger("loom.runs")

# A run that keeps calling tools stops after this many model calls.
MAX_MODEL_CALLS = 24


class RunExecutor:
    def __init__(
        self, engine: ExecutorHost, project: str, run_id: str, preload: asyncio.Future[Preloaded] | None = None
    ) -> None:
        self.engine = engine
        # Reads for the first model call: started while the run was being claimed, or done already.
        self._preload = preload
        self.project = project
        self.run_id = run_id
        self.store = engine.store
        self.cancel_requested = False
        # The run reached `expires_at`: it stops as a cancel would, but ends `expired` (`endings.finish_cancelled`).
        self.expired = False
        self.lease_cleared = False
        # This replica drains: the run stops at its next clean turn boundary (`hand_over`), or at once
        # (`interrupt_for_handover`), and another replica goes on with it (`endings.hand_over`).
        self.handover_requested = False
        self.handed_over = False
        self._call: asyncio.Task[Any] | None = None
        self.run: dict[str, Any] = {}
        # The run's bookkeeping (its row's `state`): running usage, `include[]`, what tools left.
        self.state = RunState()
        # From tool results, for the messages that follow them.
        self.citations: list[Citation] = []
        self.pending_images: list[str] = []
        # Tools that make Files of what an answer links (code interpreter), with their context.
        self.linkers: list[tuple[LinksFiles, ToolContext]] = []
        # When the run was claimed here, until its first token arrives (then 0: observed).
        self.awaiting_first_token = time.monotonic()
        self.output = AssistantOutput(self)
        # The run's memory strategy (loom.memory), chosen once its assistant and thread are read.
        self.memory: RunMemory | None = None

    # Events.

    def emit(self, name: str, data: Any) -> None:
        if name.startswith("thread.run.step.") and name != "thread.run.step.delta":
            # A step as a GET of it with the run's `include[]` shows it (no result content unasked).
            data = step_to_wire(data, self.state.include)
        self.engine.bus.publish(self.run_id, name, data)

    def emit_run(self, run: dict[str, Any]) -> None:
        if run["status"] not in ("queued", "in_progress", "cancelling"):
            # The transition that committed this status also dropped the lease (RunStore.transition).
            self.lease_cleared = True
        self.emit(f"thread.run.{run['status']}", dict(run))

    def usage_or_none(self) -> dict[str, int] | None:
        """The run's token usage so far (None before its first model call)."""
        return dict(self.state.usage) if self.state.usage is not None else None

    def usage_so_far(self) -> dict[str, int]:
        return self.usage_or_none() or usage_dict(0, 0)

    # Cancellation.

    def cancel(self) -> None:
        self.cancel_requested = True
        if self._call is not None and not self._call.done():
            self._call.cancel()

    def hand_over(self) -> None:
        """Go on elsewhere: stop before the next model call (the turn in flight finishes here)."""
        self.handover_requested = True

    def interrupt_for_handover(self) -> None:
        """Go on elsewhere now: stop the model call (closing its stream) or interruptible tool at once."""
        self.handover_requested = True
        if self._call is not None and not self._call.done():
            self._call.cancel()

    def expire(self) -> None:
        """The run's time is up: stop the model call (closing its stream) or interruptible tool at once."""
        self.expired = True
        self.cancel()

    # The run.

    async def execute(self, record: RunRecord) -> None:
        """Execute a run the engine has claimed (already committed as `in_progress`)."""
        self.run, self.state = record.data, record.state
        # What earlier rounds of this run (before a requires_action pause) left for later messages.
        self.citations = [Citation(c.kind, c.text, c.file_id) for c in record.state.citations]
        self.pending_images = list(record.state.pending_images)
        self.emit_run(self.run)
        try:
            await self._loop()
        except UpstreamError as exc:
            await endings.fail(self, exc.code, exc.message)
        except MemoryFailure as exc:
            await endings.fail(self, "server_error", str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s failed", self.run_id)
            await endings.fail(self, "server_error", "The server had an error while processing the run.")

    async def _loop(self) -> None:
        preload, self._preload = self._preload, None
        assistant, thread, first_context = await (preload or self.store.preload(self.project, self.run))
        context: RunContext | None = first_context
        if assistant is None or thread is None:
            await endings.fail(self, "server_error", "The run's assistant or thread no longer exists.")
            return
        tool_ctx = ToolContext(
            project=self.project,
            run=self.run,
            assistant=assistant,
            thread=thread,
            cited=[c.to_json() for c in self.state.citations],
        )
        route = await self.engine.router.route(self.run["model"])
        self.memory = self.engine.memory.for_run(self.project, self.run, thread, assistant, route)
        for _ in range(MAX_MODEL_CALLS):
            if await self._model_round(route, tool_ctx, context):
                return
            context = None
        await endings.fail(
            self, "server_error", f"The run made more than {MAX_MODEL_CALLS} model calls without finishing."
        )

    async def _model_round(self, route: Route, tool_ctx: ToolContext, context: RunContext | None) -> bool:
        """One model call and what follows it; True when the run stopped (ended or requires_action)."""
        if self.cancel_requested:
            await endings.finish_cancelled(self, Turn())
            return True
        if self.handover_requested:
            await endings.hand_over(self, Turn())
            return True
        usage = self.usage_so_far()
        cap_completion = self.run.get("max_completion_tokens")
        if cap_completion is not None and usage["completion_tokens"] >= cap_completion:
            await endings.incomplete(self, "max_completion_tokens")
            return True
        server_tools = self.engine.server_tools_for(self.run["tools"])
        self.linkers = [(impl, tool_ctx) for impl, _t in server_tools.values() if isinstance(impl, LinksFiles)]
        tools = model_request.chat_tools(self.run, tool_ctx, server_tools)
        if context is None:
            context = await self.store.run_context(self.project, self.run, self.state)
        reader = self.engine.file_reader(self.project)
        prompt = await model_request.prompt_for(self.run, route, context, reader, tools, usage, self.memory)
        memory_usage = self.memory.take_usage() if self.memory is not None else (0, 0)
        if any(memory_usage):
            # A strategy's own model calls (a summary) count in the run's usage and in this step's.
            usage = usage_dict(usage["prompt_tokens"] + memory_usage[0], usage["completion_tokens"] + memory_usage[1])
            self.state = replace(self.state, usage=usage)
        if prompt.over_budget:
            await endings.incomplete(self, "max_prompt_tokens")
            return True
        request = model_request.chat_request(self.run, route, prompt, tools, server_tools, usage)
        turn = Turn()
        if not await self._call_model(route, request, turn, server_tools):
            return True
        call_usage = turn.usage or turn.estimate_usage(prompt.tokens, request.max_tokens)
        metrics.tokens(self.run["model"], call_usage.prompt_tokens, call_usage.completion_tokens)
        total = usage_dict(
            usage["prompt_tokens"] + call_usage.prompt_tokens,
            usage["completion_tokens"] + call_usage.completion_tokens,
        )
        step_usage = usage_dict(
            call_usage.prompt_tokens + memory_usage[0], call_usage.completion_tokens + memory_usage[1]
        )
        return await self._after_call(tool_ctx, turn, server_tools, total, step_usage)

    async def _call_model(self, route: Route, request: ChatRequest, turn: Turn, server_tools: ServerTools) -> bool:
        """Stream one model call into `turn`; False when a cancel ended the run meanwhile."""
        self._call = asyncio.create_task(self._stream(route.backend, request, turn, server_tools))
        try:
            await self._call
            if turn.finish_reason is None:
                # An answer that stopped before saying it was done is a lost generation, not a
                # complete one (backends raise this themselves; this holds for any backend).
                raise UpstreamError(
                    "server_error",
                    f"The model backend '{route.backend.name}' ended its answer without a finish reason",
                )
        except asyncio.CancelledError:
            if not await endings.stopped(self, turn):
                raise
            return False
        except UpstreamError as exc:
            await endings.close_turn_failed(self, turn, exc.code, exc.message)
            raise
        finally:
            self._call = None
        return True

    async def _after_call(
        self,
        tool_ctx: ToolContext,
        turn: Turn,
        server_tools: ServerTools,
        total: dict[str, int],
        step_usage: dict[str, int],
    ) -> bool:
        """Settle a model call's answer: complete the run, end it incomplete, or run its tools."""
        cap_completion = self.run.get("max_completion_tokens")
        truncated = turn.finish_reason == "length"
        if turn.tool_step is not None or (truncated and cap_completion is not None):
            # The run goes on (or ends incomplete): keep the running total. A run that completes
            # now gets it with its final transition instead (one write less).
            self.state = replace(self.state, usage=total)
            await self.store.save_state(self.run_id, self.state)
        completes = turn.tool_step is None and not (truncated and cap_completion is not None)
        if turn.message is not None and completes:
            self.state = replace(self.state, usage=total)
            done = await self.output.complete_message(
                turn, step_usage, truncated, complete_run={"usage": total}, state=self.state
            )
            return await self._ended(turn, done)
        if turn.message is not None:
            await self.output.complete_message(
                turn, step_usage if turn.tool_step is None else usage_dict(0, 0), truncated
            )
        if truncated and turn.tool_step is not None:
            # The model ran out of completion tokens while writing tool calls: their arguments are cut
            # short, so none is run or handed to the client (`requires_action`); the run ends as OpenAI
            # ended it, `incomplete` with `max_completion_tokens` (the model's own output limit is one
            # too, so also without a `max_completion_tokens` of the run's).
            await endings.drop_truncated_calls(self, turn, server_tools, step_usage)
            await endings.incomplete(self, "max_completion_tokens")
            return True
        if truncated and turn.tool_step is None and cap_completion is not None:
            await endings.incomplete(self, "max_completion_tokens")
            return True
        if turn.tool_step is None:
            self.state = replace(self.state, usage=total)
            done = await self.store.transition(self.project, self.run_id, "completed", state=self.state, usage=total)
            return await self._ended(turn, done)
        return await self._tool_round(tool_ctx, turn, server_tools, step_usage)

    async def _ended(self, turn: Turn, done: dict[str, Any] | None) -> bool:
        """The run's completing transition: announce it, or settle as the status now says (a cancel won)."""
        if done is None:
            await endings.settle_after_race(self, turn)
        else:
            self.emit_run(done)
        return True

    # Streaming one model call.

    async def _stream(self, backend: Any, request: ChatRequest, turn: Turn, server_tools: ServerTools) -> None:
        async with contextlib.aclosing(backend.stream_chat(request)) as chunks:
            async for chunk in chunks:
                if self.awaiting_first_token:
                    self.awaiting_first_token = metrics.first_token(self.awaiting_first_token)
                if chunk.content:
                    await self.output.text_delta(turn, chunk.content)
                if chunk.refusal:
                    await self.output.refusal_delta(turn, chunk.refusal)
                for delta in chunk.tool_calls:
                    await self.output.tool_delta(turn, delta.index, delta.name, delta.arguments, server_tools)
                if chunk.finish_reason is not None:
                    turn.finish_reason = chunk.finish_reason
                if chunk.usage is not None:
                    turn.usage = chunk.usage
                await self.output.flush(turn)
                # Let the streams send this chunk's events before the next is read: a fast upstream's
                # whole answer can sit in one read buffer, and reading on would hold the first token
                # back until the model's turn is processed.
                await asyncio.sleep(0)

    # Tool rounds.

    async def _tool_round(
        self, tool_ctx: ToolContext, turn: Turn, server_tools: ServerTools, step_usage: dict[str, int]
    ) -> bool:
        """Run server tools; return True when the run stopped (requires_action or ended)."""
        step = turn.tool_step
        assert step is not None
        calls: list[dict[str, Any]] = []
        private: dict[str, StepCall] = {}
        functions: list[dict[str, Any]] = []
        for position, upstream_index in enumerate(sorted(turn.calls)):
            for held in turn.held.pop(position, []):
                self.output.step_delta(step, held)
            call_id, name, parts = turn.calls[upstream_index]
            arguments = "".join(parts)
            server = server_tools.get(name)
            if server is None:
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments, "output": None},
                    }
                )
                functions.append(
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
                )
                private[call_id] = StepCall(name, arguments)
                continue
            if self.cancel_requested:
                await endings.finish_cancelled(self, turn)
                return True
            call = ToolCall(call_id, name, arguments)
            result = await self._run_server_tool(tool_ctx, turn, server, call, position, upstream_index)
            if result is None:
                return True
            self.citations.extend(result.citations)
            self.pending_images.extend(result.image_file_ids)
            calls.append({"id": call_id, "type": server[0].type, **result.details})
            private[call_id] = StepCall(name, arguments, result.output)
        step["step_details"] = {"type": "tool_calls", "tool_calls": calls}
        calls_state = StepState(calls=private)
        if self.citations or self.pending_images:
            self.state = replace(
                self.state,
                citations=tuple(CitationState(c.kind, c.text, c.file_id) for c in self.citations),
                pending_images=tuple(self.pending_images),
            )
            await self.store.save_state(self.run_id, self.state)
        step["usage"] = step_usage
        if functions:
            return await self._require_action(turn, step, calls_state, functions)
        step.update(status="completed", completed_at=now())
        await self.store.save_objects(self.project, ("step", step, calls_state))
        self.emit("thread.run.step.completed", dict(step))
        turn.tool_step = None
        return False

    async def _run_server_tool(
        self,
        tool_ctx: ToolContext,
        turn: Turn,
        server: tuple[ServerTool, dict[str, Any]],
        call: ToolCall,
        index: int,
        upstream_index: int,
    ) -> ToolResult | None:
        """Execute one server tool call (its deltas at `index`); None when a cancel ended the run."""
        impl, tool = server
        step = turn.tool_step
        assert step is not None

        async def emit(delta: dict[str, Any]) -> None:
            self.output.step_delta(step, {"index": index, **delta})

        if upstream_index in turn.arg_streams and (rest := turn.arg_streams[upstream_index].close(call.arguments)):
            await emit(rest)
        running = asyncio.create_task(metrics.timed_tool(impl.type, impl.execute(tool_ctx, tool, call, index, emit)))
        if impl.interruptible:
            self._call = running  # a cancel stops it at once; others finish (bounded by their own limits)
        try:
            return await running
        except asyncio.CancelledError:
            if not await endings.stopped(self, turn):
                raise
            return None
        finally:
            self._call = None

    async def _require_action(
        self, turn: Turn, step: dict[str, Any], calls: StepState, functions: list[dict[str, Any]]
    ) -> bool:
        """The model called the client's functions: the run waits for their outputs."""
        await self.store.save_objects(self.project, ("step", step, calls))
        waiting = await self.store.transition(
            self.project,
            self.run_id,
            "requires_action",
            required_action={"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": functions}},
            expires_at=now() + self.engine.settings.run_expiry_s,
        )
        if waiting is None:
            await endings.settle_after_race(self, turn)
            return True
        self.emit_run(waiting)
        return True
