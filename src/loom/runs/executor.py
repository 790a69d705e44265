"""One run's execution: the model loop, streamed deltas, tool calls, and every status change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from loom import ids
from loom.clock import now
from loom.llm.errors import UpstreamError
from loom.llm.types import ChatRequest, ChatTool, ToolCall, Usage
from loom.ops import metrics
from loom.runs import context as ctx_mod
from loom.runs.objects import new_assistant_message, new_step, step_wire, usage_dict
from loom.runs.store import Preloaded, RunContext, public
from loom.runs.tools import ArgumentStream, Citation, LinksFiles, ServerTool, StreamsArguments, ToolContext

if TYPE_CHECKING:
    from loom.runs.engine import RunEngine

log = logging.getLogger("loom.runs")

# A run that keeps calling tools stops after this many model calls.
MAX_MODEL_CALLS = 24
# Streamed text is saved this often while it grows, so a crash loses little.
_FLUSH_EVERY_S = 1.0
_INTERRUPTED = "The run was interrupted before it finished (the server executing it stopped)."


class _Turn:
    """What one model call has produced so far."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.message_step: dict[str, Any] | None = None
        self.text = ""
        self.refusal = ""
        self.tool_step: dict[str, Any] | None = None
        # upstream index → (our call id, name, argument fragments)
        self.calls: dict[int, tuple[str, str, list[str]]] = {}
        # upstream index → the argument stream of a server tool that shows its input as it is written
        # (a `StreamsArguments` tool: the code interpreter).
        self.arg_streams: dict[int, ArgumentStream] = {}
        # position → tool-call deltas held back until the calls before it have run (see `_call_delta`).
        self.held: dict[int, list[dict[str, Any]]] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.flushed_at = time.monotonic()


class RunExecutor:
    def __init__(
        self, engine: RunEngine, project: str, run_id: str, preload: asyncio.Future[Preloaded] | None = None
    ) -> None:
        self.engine = engine
        # Reads for the first model call: started while the run was being claimed, or done already.
        self._preload = preload
        self.project = project
        self.run_id = run_id
        self.store = engine.store
        self.cancel_requested = False
        # The run reached `expires_at`: it stops as a cancel would, but ends `expired` (`_finish_cancelled`).
        self.expired = False
        self.lease_cleared = False
        self._call: asyncio.Task[Any] | None = None
        self.run: dict[str, Any] = {}
        # From tool results, for the messages that follow them.
        self.citations: list[Citation] = []
        self.pending_images: list[str] = []
        # Tools that make Files of what an answer links (code interpreter), with their context.
        self._linkers: list[tuple[LinksFiles, ToolContext]] = []
        # When the run was claimed here, until its first token arrives (then 0: observed).
        self.awaiting_first_token = time.monotonic()

    # Events.

    def emit(self, name: str, data: Any) -> None:
        if name.startswith("thread.run.step.") and name != "thread.run.step.delta":
            # A step as a GET of it with the run's `include[]` shows it (no result content unasked).
            data = step_wire(data, self.run.get("_include", []))
        self.engine.bus.publish(self.run_id, name, data)

    def emit_run(self, run: dict[str, Any]) -> None:
        if run["status"] not in ("queued", "in_progress", "cancelling"):
            # The transition that committed this status also dropped the lease (RunStore.transition).
            self.lease_cleared = True
        self.emit(f"thread.run.{run['status']}", public(run))

    # Cancellation.

    def cancel(self) -> None:
        self.cancel_requested = True
        if self._call is not None and not self._call.done():
            self._call.cancel()

    def expire(self) -> None:
        """The run's time is up: stop the model call (closing its stream) or interruptible tool at once."""
        self.expired = True
        self.cancel()

    # The run.

    async def execute(self, run: dict[str, Any]) -> None:
        """Execute a run the engine has claimed (already committed as `in_progress`)."""
        self.run = run
        # What earlier rounds of this run (before a requires_action pause) left for later messages.
        self.citations = [Citation(**c) for c in run.get("_citations", [])]
        self.pending_images = list(run.get("_pending_images", []))
        self.emit_run(run)
        try:
            await self._loop()
        except UpstreamError as exc:
            await self._fail(exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s failed", self.run_id)
            await self._fail("server_error", "The server had an error while processing the run.")

    async def _loop(self) -> None:
        engine = self.engine
        preload, self._preload = self._preload, None
        assistant, thread, first_context = await (preload or self.store.preload(self.project, self.run))
        context: RunContext | None = first_context
        if assistant is None or thread is None:
            await self._fail("server_error", "The run's assistant or thread no longer exists.")
            return
        tool_ctx = ToolContext(
            project=self.project,
            run=self.run,
            assistant=assistant,
            thread=thread,
        )
        route = await engine.router.route(self.run["model"])
        for _ in range(MAX_MODEL_CALLS):
            if self.cancel_requested:
                await self._finish_cancelled(_Turn())
                return
            usage = self.run.get("_usage") or usage_dict(0, 0)
            cap_completion = self.run.get("max_completion_tokens")
            if cap_completion is not None and usage["completion_tokens"] >= cap_completion:
                await self._incomplete("max_completion_tokens")
                return
            server_tools = engine.server_tools_for(self.run["tools"])
            self._linkers = [(impl, tool_ctx) for impl, _t in server_tools.values() if isinstance(impl, LinksFiles)]
            chat_tools = self._chat_tools(tool_ctx, server_tools)
            if context is None:
                context = await self.store.run_context(self.project, self.run)
            (history, steps, own), context = context, None
            reader = engine.file_reader(self.project)
            prompt = ctx_mod.build_prompt(
                model=route.upstream_model,
                instructions=self.run["instructions"],
                history=await ctx_mod.thread_history(history, reader),
                transcript=ctx_mod.run_transcript(steps, own),
                tools=chat_tools,
                truncation=self.run["truncation_strategy"],
                context_window=route.context_window,
                max_prompt_tokens=(
                    self.run["max_prompt_tokens"] - usage["prompt_tokens"] if self.run["max_prompt_tokens"] else None
                ),
                completion_reserve=min(cap_completion or 4096, route.context_window // 8),
            )
            if prompt.over_budget:
                await self._incomplete("max_prompt_tokens")
                return
            request = ChatRequest(
                model=route.upstream_model,
                messages=prompt.messages,
                tools=chat_tools or None,
                tool_choice=self._tool_choice(server_tools) if chat_tools else None,
                parallel_tool_calls=self.run["parallel_tool_calls"] if chat_tools else None,
                response_format=self.run["response_format"] if isinstance(self.run["response_format"], dict) else None,
                temperature=self.run["temperature"],
                top_p=self.run["top_p"],
                max_tokens=(cap_completion - usage["completion_tokens"]) if cap_completion is not None else None,
                # Only set for reasoning models (o-series): others reject the field.
                extra_body=(
                    {"reasoning_effort": self.run["reasoning_effort"]} if self.run.get("reasoning_effort") else None
                ),
            )
            turn = _Turn()
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
                if not self.cancel_requested:
                    raise
                await self._finish_cancelled(turn)
                return
            except UpstreamError as exc:
                await self._close_turn_failed(turn, exc.code, exc.message)
                raise
            finally:
                self._call = None
            call_usage = turn.usage or self._estimate_usage(prompt.tokens, turn, request.max_tokens)
            metrics.tokens(self.run["model"], call_usage.prompt_tokens, call_usage.completion_tokens)
            total = usage_dict(
                usage["prompt_tokens"] + call_usage.prompt_tokens,
                usage["completion_tokens"] + call_usage.completion_tokens,
            )
            step_usage = usage_dict(call_usage.prompt_tokens, call_usage.completion_tokens)
            truncated = turn.finish_reason == "length"
            if turn.tool_step is not None or (truncated and cap_completion is not None):
                # The run goes on (or ends incomplete): keep the running total. A run that completes
                # now gets it with its final transition instead (one write less).
                self.run = await self.store.update_run(self.project, self.run_id, _usage=total) or self.run
            completes = turn.tool_step is None and not (truncated and cap_completion is not None)
            if turn.message is not None and completes:
                done = await self._complete_message(
                    turn, step_usage, truncated, complete_run={"usage": total, "_usage": total}
                )
                if done is None:
                    await self._settle_after_race(turn)
                    return
                self.emit_run(done)
                return
            if turn.message is not None:
                await self._complete_message(
                    turn, step_usage if turn.tool_step is None else usage_dict(0, 0), truncated
                )
            if truncated and turn.tool_step is not None:
                # The model ran out of completion tokens while writing tool calls: their arguments are cut
                # short, so none is run or handed to the client (`requires_action`); the run ends as
                # OpenAI ended it, `incomplete` with `max_completion_tokens` (the model's own output limit
                # is one too, so also without a `max_completion_tokens` of the run's).
                await self._drop_truncated_calls(turn, server_tools, step_usage)
                await self._incomplete("max_completion_tokens")
                return
            if truncated and turn.tool_step is None:
                reason = "max_completion_tokens" if cap_completion is not None else None
                if reason is not None:
                    await self._incomplete(reason)
                    return
            if turn.tool_step is None:
                done = await self.store.transition(self.project, self.run_id, "completed", usage=total, _usage=total)
                if done is None:
                    await self._settle_after_race(turn)
                    return
                self.emit_run(done)
                return
            if await self._tool_round(tool_ctx, turn, server_tools, step_usage):
                return
        await self._fail("server_error", f"The run made more than {MAX_MODEL_CALLS} model calls without finishing.")

    def _chat_tools(
        self, tool_ctx: ToolContext, server_tools: dict[str, tuple[ServerTool, dict[str, Any]]]
    ) -> list[ChatTool]:
        if self.run["tool_choice"] == "none":
            return []
        tools: list[ChatTool] = []
        for tool in self.run["tools"]:
            if tool["type"] == "function":
                fn = {k: v for k, v in tool["function"].items() if k in ("name", "description", "parameters", "strict")}
                if not fn.get("strict"):
                    fn.pop("strict", None)
                if "parameters" not in fn:
                    fn["parameters"] = {"type": "object", "properties": {}}
                tools.append({"type": "function", "function": fn})
        for impl, tool in server_tools.values():
            tools.append(impl.chat_tool(tool_ctx, tool))
        return tools

    def _tool_choice(self, server_tools: dict[str, tuple[ServerTool, dict[str, Any]]]) -> Any:
        choice = self.run["tool_choice"]
        if isinstance(choice, dict):
            if choice["type"] == "function":
                return {"type": "function", "function": {"name": choice["function"]["name"]}}
            for impl, _tool in server_tools.values():
                if impl.type == choice["type"]:
                    return {"type": "function", "function": {"name": impl.function_name}}
            return "required"
        return choice

    @staticmethod
    def _estimate_usage(prompt_tokens: int, turn: _Turn, max_tokens: int | None) -> Usage:
        """Usage for a server that sent none, counted with OpenAI's tokenizer. A server that stopped at
        the cap (`length`) wrote exactly `max_tokens`, and never more than that."""
        from loom import tokens

        completion = tokens.count_tokens(turn.text + turn.refusal, "gpt-4o")
        for _, name, parts in turn.calls.values():
            completion += tokens.count_tokens(name + "".join(parts), "gpt-4o")
        if max_tokens is not None:
            completion = max_tokens if turn.finish_reason == "length" else min(completion, max_tokens)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)

    # Streaming one model call.

    async def _stream(
        self,
        backend: Any,
        request: ChatRequest,
        turn: _Turn,
        server_tools: dict[str, tuple[ServerTool, dict[str, Any]]],
    ) -> None:
        async with contextlib.aclosing(backend.stream_chat(request)) as chunks:
            async for chunk in chunks:
                if self.awaiting_first_token:
                    self.awaiting_first_token = metrics.first_token(self.awaiting_first_token)
                if chunk.content:
                    await self._text_delta(turn, chunk.content)
                if chunk.refusal:
                    await self._refusal_delta(turn, chunk.refusal)
                for delta in chunk.tool_calls:
                    await self._tool_delta(turn, delta.index, delta.id, delta.name, delta.arguments, server_tools)
                if chunk.finish_reason is not None:
                    turn.finish_reason = chunk.finish_reason
                if chunk.usage is not None:
                    turn.usage = chunk.usage
                if turn.message is not None and time.monotonic() - turn.flushed_at > _FLUSH_EVERY_S:
                    turn.flushed_at = time.monotonic()
                    turn.message["content"] = self._content(turn)
                    await self.store.save_objects(self.project, ("message", turn.message))
                # Let the streams send this chunk's events before the next is read: a fast upstream's
                # whole answer can sit in one read buffer, and reading on would hold the first token
                # back until the model's turn is processed.
                await asyncio.sleep(0)

    async def _open_message(self, turn: _Turn) -> None:
        message = new_assistant_message(self.run)
        step = new_step(
            self.run,
            "message_creation",
            {"type": "message_creation", "message_creation": {"message_id": message["id"]}},
        )
        await self.store.insert_objects(self.project, ("step", step), ("message", message))
        turn.message, turn.message_step = message, step
        self.emit("thread.run.step.created", public(step))
        self.emit("thread.run.step.in_progress", public(step))
        self.emit("thread.message.created", public(message))
        self.emit("thread.message.in_progress", public(message))

    async def _text_delta(self, turn: _Turn, text: str) -> None:
        if turn.message is None:
            await self._open_message(turn)
        assert turn.message is not None
        part: dict[str, Any] = {"index": 0, "type": "text", "text": {"value": text}}
        if not turn.text:
            part["text"]["annotations"] = []
        turn.text += text
        self.emit(
            "thread.message.delta",
            {"id": turn.message["id"], "object": "thread.message.delta", "delta": {"content": [part]}},
        )

    async def _refusal_delta(self, turn: _Turn, text: str) -> None:
        if turn.message is None:
            await self._open_message(turn)
        assert turn.message is not None
        index = 1 if turn.text else 0
        turn.refusal += text
        part = {"index": index, "type": "refusal", "refusal": text}
        self.emit(
            "thread.message.delta",
            {"id": turn.message["id"], "object": "thread.message.delta", "delta": {"content": [part]}},
        )

    def _content(self, turn: _Turn, annotations: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if turn.text:
            content.append({"type": "text", "text": {"value": turn.text, "annotations": annotations or []}})
        if turn.refusal:
            content.append({"type": "refusal", "refusal": turn.refusal})
        return content

    def _annotations(self, text: str) -> list[dict[str, Any]]:
        """Annotations for every place the text quotes a citation marker or a sandbox file link."""
        found: list[dict[str, Any]] = []
        taken: set[int] = set()
        for citation in sorted(self.citations, key=lambda c: -len(c.text)):
            start = text.find(citation.text)
            while start != -1:
                if start not in taken:
                    taken.add(start)
                    found.append(
                        {
                            "type": citation.kind,
                            "text": citation.text,
                            "start_index": start,
                            "end_index": start + len(citation.text),
                            citation.kind: {"file_id": citation.file_id},
                        }
                    )
                start = text.find(citation.text, start + 1)
        return sorted(found, key=lambda a: a["start_index"])

    async def _complete_message(
        self, turn: _Turn, usage: dict[str, int], truncated: bool, *, complete_run: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Finish the turn's message and its step. With `complete_run` (the completed run's fields) the
        run is moved to `completed` in the same transaction; returns that run (None if it could not move)."""
        message, step = turn.message, turn.message_step
        assert message is not None and step is not None
        for linker, ctx in self._linkers if turn.text else []:
            self.citations.extend(await linker.link_files(ctx, turn.text, {c.text for c in self.citations}))
        annotations = self._annotations(turn.text) if turn.text else []
        message["content"] = self._content(turn, annotations)
        delta_id = {"id": message["id"], "object": "thread.message.delta"}
        if annotations:
            parts = [{"index": i, **a} for i, a in enumerate(annotations)]
            self.emit(
                "thread.message.delta",
                {**delta_id, "delta": {"content": [{"index": 0, "type": "text", "text": {"annotations": parts}}]}},
            )
        for file_id in self.pending_images:
            block = {"type": "image_file", "image_file": {"file_id": file_id, "detail": "auto"}}
            self.emit(
                "thread.message.delta",
                {**delta_id, "delta": {"content": [{"index": len(message["content"]), **block}]}},
            )
            message["content"].append(block)
        self.pending_images = []
        if truncated:
            message.update(status="incomplete", incomplete_at=now(), incomplete_details={"reason": "max_tokens"})
        else:
            message.update(status="completed", completed_at=now())
        step.update(status="completed", completed_at=now(), usage=usage)
        done = None
        if complete_run is None:
            await self.store.save_objects(self.project, ("message", message), ("step", step))
        else:
            done = await self.store.save_and_transition(
                self.project, self.run_id, [("message", message), ("step", step)], "completed", **complete_run
            )
        self.emit(f"thread.message.{message['status']}", public(message))
        self.emit("thread.run.step.completed", public(step))
        turn.message = None
        turn.message_step = None
        return done

    async def _tool_delta(
        self,
        turn: _Turn,
        index: int,
        call_id: str | None,
        name: str | None,
        arguments: str,
        server_tools: dict[str, tuple[ServerTool, dict[str, Any]]],
    ) -> None:
        if turn.message is not None:
            await self._complete_message(turn, usage_dict(0, 0), truncated=False)
        if turn.tool_step is None:
            step = new_step(self.run, "tool_calls", {"type": "tool_calls", "tool_calls": []})
            await self.store.insert_objects(self.project, ("step", step))
            turn.tool_step = step
            self.emit("thread.run.step.created", public(step))
            self.emit("thread.run.step.in_progress", public(step))
        step = turn.tool_step
        position = sorted(turn.calls).index(index) if index in turn.calls else len(turn.calls)
        if index not in turn.calls:
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
                self._call_delta(turn, position, body)
            elif isinstance(server[0], StreamsArguments):
                stream = server[0].argument_stream(our_id)
                turn.arg_streams[index] = stream
                self._call_delta(turn, position, {"index": position, **stream.opening()})
            # Other server tools show their first delta when they run (their arguments are not the user's business).
        elif name:
            cid, old, parts = turn.calls[index]
            turn.calls[index] = (cid, old + name, parts)
        if arguments:
            turn.calls[index][2].append(arguments)
            if turn.calls[index][1] not in server_tools:
                self._call_delta(
                    turn, position, {"index": position, "type": "function", "function": {"arguments": arguments}}
                )
            elif index in turn.arg_streams and (piece := turn.arg_streams[index].feed(arguments)) is not None:
                self._call_delta(turn, position, {"index": position, **piece})

    def _call_delta(self, turn: _Turn, position: int, call: dict[str, Any]) -> None:
        """A call's delta while the model writes the calls. The calls after the first one that streams its
        input (code_interpreter) are held until it has run: its outputs come after the model's turn, and
        the SDK fires on_tool_call_created again for an index that deltas go back to."""
        assert turn.tool_step is not None
        streaming = [sorted(turn.calls).index(i) for i in turn.arg_streams]
        if streaming and position > min(streaming):
            turn.held.setdefault(position, []).append(call)
        else:
            self._step_delta(turn.tool_step, call)

    def _step_delta(self, step: dict[str, Any], call: dict[str, Any]) -> None:
        self.emit(
            "thread.run.step.delta",
            {
                "id": step["id"],
                "object": "thread.run.step.delta",
                "delta": {"step_details": {"type": "tool_calls", "tool_calls": [call]}},
            },
        )

    # Tool rounds.

    async def _tool_round(
        self,
        tool_ctx: ToolContext,
        turn: _Turn,
        server_tools: dict[str, tuple[ServerTool, dict[str, Any]]],
        step_usage: dict[str, int],
    ) -> bool:
        """Run server tools; return True when the run stopped (requires_action or ended)."""
        step = turn.tool_step
        assert step is not None
        calls: list[dict[str, Any]] = []
        private: dict[str, dict[str, str]] = {}
        functions: list[dict[str, Any]] = []
        for position, upstream_index in enumerate(sorted(turn.calls)):
            for held in turn.held.pop(position, []):
                self._step_delta(step, held)
            call_id, name, parts = turn.calls[upstream_index]
            arguments = "".join(parts)
            server = server_tools.get(name)
            if server is None:
                body = {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments, "output": None},
                }
                functions.append(
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
                )
                calls.append(body)
                private[call_id] = {"name": name, "arguments": arguments, "output": ""}
                continue
            impl, tool = server
            if self.cancel_requested:
                await self._finish_cancelled(turn)
                return True
            index = position

            async def emit(delta: dict[str, Any], _index: int = index) -> None:
                self._step_delta(step, {"index": _index, **delta})

            if upstream_index in turn.arg_streams and (rest := turn.arg_streams[upstream_index].close(arguments)):
                await emit(rest)
            running = asyncio.create_task(
                metrics.timed_tool(
                    impl.type, impl.execute(tool_ctx, tool, ToolCall(call_id, name, arguments), index, emit)
                )
            )
            if impl.interruptible:
                self._call = running  # a cancel stops it at once; others finish (bounded by their own limits)
            try:
                result = await running
            except asyncio.CancelledError:
                if not self.cancel_requested:
                    raise
                await self._finish_cancelled(turn)
                return True
            finally:
                self._call = None
            self.citations.extend(result.citations)
            self.pending_images.extend(result.image_file_ids)
            calls.append({"id": call_id, "type": impl.type, **result.details})
            private[call_id] = {"name": name, "arguments": arguments, "output": result.output}
        step["step_details"] = {"type": "tool_calls", "tool_calls": calls}
        step["_calls"] = private
        if self.citations or self.pending_images:
            self.run = (
                await self.store.update_run(
                    self.project,
                    self.run_id,
                    _citations=[{"kind": c.kind, "text": c.text, "file_id": c.file_id} for c in self.citations],
                    _pending_images=self.pending_images,
                )
                or self.run
            )
        step["usage"] = step_usage
        if functions:
            await self.store.save_objects(self.project, ("step", step))
            waiting = await self.store.transition(
                self.project,
                self.run_id,
                "requires_action",
                required_action={"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": functions}},
                expires_at=now() + self.engine.settings.run_expiry_s,
            )
            if waiting is None:
                await self._settle_after_race(turn)
                return True
            self.emit_run(waiting)
            return True
        step.update(status="completed", completed_at=now())
        await self.store.save_objects(self.project, ("step", step))
        self.emit("thread.run.step.completed", public(step))
        turn.tool_step = None
        return False

    async def _drop_truncated_calls(
        self,
        turn: _Turn,
        server_tools: dict[str, tuple[ServerTool, dict[str, Any]]],
        step_usage: dict[str, int],
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
        await self.store.save_objects(self.project, ("step", step))
        self.emit("thread.run.step.cancelled", public(step))
        turn.tool_step = None

    # Endings.

    async def _settle_after_race(self, turn: _Turn) -> None:
        """The run's status changed under us (a cancel arrived): finish as it now says."""
        current = await self.store.get_run(self.project, self.run_id)
        if current is not None and current["status"] == "cancelling":
            await self._finish_cancelled(turn)

    async def _finish_cancelled(self, turn: _Turn) -> None:
        if self.expired and await self._finish_expired(turn):
            return
        await self._close_open(turn, message_reason="run_cancelled", step_status="cancelled")
        run = await self.store.transition(
            self.project, self.run_id, "cancelled", allowed_from={"cancelling", "queued", "in_progress"}
        )
        if run is not None:
            self.emit_run(run)

    async def _finish_expired(self, turn: _Turn) -> bool:
        """End the run `expired` (OpenAI's status for a run past `expires_at`; no `last_error`): its open
        message `incomplete` (`run_expired`), its open steps `expired`. False when a cancel came first."""
        current = await self.store.get_run(self.project, self.run_id)
        if current is None or current["status"] == "cancelling":
            return False
        await self._close_open(turn, message_reason="run_expired", step_status="expired")
        run = await self.store.transition(
            self.project, self.run_id, "expired", allowed_from={"queued", "in_progress"}, usage=self.run.get("_usage")
        )
        if run is None:  # expired already by another replica's sweep: tell this replica's streams
            run = await self.store.get_run(self.project, self.run_id)
        if run is not None and run["status"] == "expired":
            self.emit_run(run)
        return True

    async def _close_open(
        self, turn: _Turn, *, message_reason: str, step_status: str, error: dict[str, str] | None = None
    ) -> None:
        stamp = {"cancelled": "cancelled_at", "failed": "failed_at", "expired": "expired_at"}[step_status]
        if turn.message is not None and turn.message_step is not None:
            turn.message["content"] = self._content(turn)
            turn.message.update(status="incomplete", incomplete_at=now(), incomplete_details={"reason": message_reason})
            turn.message_step.update(status=step_status, **{stamp: now()}, last_error=error)
            await self.store.save_objects(self.project, ("message", turn.message), ("step", turn.message_step))
            self.emit("thread.message.incomplete", public(turn.message))
            self.emit(f"thread.run.step.{step_status}", public(turn.message_step))
            turn.message = None
        if turn.tool_step is not None:
            turn.tool_step.update(status=step_status, **{stamp: now()}, last_error=error)
            await self.store.save_objects(self.project, ("step", turn.tool_step))
            self.emit(f"thread.run.step.{step_status}", public(turn.tool_step))
            turn.tool_step = None

    async def _close_turn_failed(self, turn: _Turn, code: str, message: str) -> None:
        step_code = code if code in ("server_error", "rate_limit_exceeded") else "server_error"
        await self._close_open(
            turn, message_reason="run_failed", step_status="failed", error={"code": step_code, "message": message}
        )

    async def _fail(self, code: str, message: str) -> None:
        run = await self.store.transition(
            self.project,
            self.run_id,
            "failed",
            last_error={"code": code, "message": message},
            usage=self.run.get("_usage"),
        )
        if run is not None:
            self.emit_run(run)
        else:
            await self._settle_after_race(_Turn())

    async def _incomplete(self, reason: str) -> None:
        run = await self.store.transition(
            self.project,
            self.run_id,
            "incomplete",
            incomplete_details={"reason": reason},
            usage=self.run.get("_usage") or usage_dict(0, 0),
        )
        if run is not None:
            self.emit_run(run)
        else:
            await self._settle_after_race(_Turn())
