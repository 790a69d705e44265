"""What a run asks the model in one call: its tools, its tool choice, its prompt and the request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom.llm.routing import Route
from loom.llm.types import ChatMessage, ChatRequest, ChatTool
from loom.memory import ThreadMessage
from loom.memory.service import RunMemory
from loom.runs import context as ctx_mod
from loom.runs.context import FileReader, Prompt
from loom.runs.store import RunContext
from loom.runs.tools import ServerTool, ToolContext

# The run's tools Loom executes itself, by the function name the model sees.
ServerTools = dict[str, tuple[ServerTool, dict[str, Any]]]


def chat_tools(run: dict[str, Any], tool_ctx: ToolContext, server_tools: ServerTools) -> list[ChatTool]:
    """The tools offered to the model: the run's functions as given, then each server tool's function."""
    if run["tool_choice"] == "none":
        return []
    tools: list[ChatTool] = []
    for tool in run["tools"]:
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


def tool_choice(run: dict[str, Any], server_tools: ServerTools) -> Any:
    """The run's `tool_choice` in chat-completions terms (a server tool is chosen by its function)."""
    choice = run["tool_choice"]
    if isinstance(choice, dict):
        if choice["type"] == "function":
            return {"type": "function", "function": {"name": choice["function"]["name"]}}
        for impl, _tool in server_tools.values():
            if impl.type == choice["type"]:
                return {"type": "function", "function": {"name": impl.function_name}}
        return "required"
    return choice


async def prompt_for(
    run: dict[str, Any],
    route: Route,
    context: RunContext,
    reader: FileReader,
    tools: list[ChatTool],
    usage: dict[str, int],
    memory: RunMemory | None = None,
) -> Prompt:
    """The prompt of the run's next model call: the thread's history and the run's own transcript,
    truncated to the run's strategy, the model's window and what is left of `max_prompt_tokens`.
    With `memory`, the run's memory strategy (`loom.memory`) builds the thread's part first."""
    history, steps, own = context
    cap_completion = run.get("max_completion_tokens")
    model = route.upstream_model
    transcript = ctx_mod.run_transcript(steps, own)
    max_prompt = run["max_prompt_tokens"] - usage["prompt_tokens"] if run["max_prompt_tokens"] else None
    reserve = min(cap_completion or 4096, route.context_window // 8)
    truncation = run["truncation_strategy"]
    if memory is None:
        chat = await ctx_mod.thread_history(history, reader)
    else:
        limit = ctx_mod.prompt_limit(route.context_window, reserve, max_prompt)

        def budget() -> int:
            return ctx_mod.history_budget(model, run["instructions"], transcript, tools, limit)

        def count(messages: Sequence[ChatMessage]) -> int:
            return sum(ctx_mod.count_message(m, model) for m in messages)

        entries = [await _entry(m, reader) for m in history]
        chat = await memory.history([e for e in entries if e is not None], budget, count)
        # The strategy chose; what is still over the budget is dropped oldest first, as `auto` does.
        truncation = {"type": "auto", "last_messages": None}
    return ctx_mod.build_prompt(
        model=model,
        instructions=run["instructions"],
        history=chat,
        transcript=transcript,
        tools=tools,
        truncation=truncation,
        context_window=route.context_window,
        max_prompt_tokens=max_prompt,
        completion_reserve=reserve,
    )


async def _entry(message: dict[str, Any], reader: FileReader) -> ThreadMessage | None:
    """A thread message as memory strategies see it (None for one the model is not sent: no text)."""
    chat = await ctx_mod.thread_history([message], reader)
    if not chat:
        return None
    text = "".join(p["text"]["value"] for p in message["content"] if p.get("type") == "text")
    return ThreadMessage(id=message["id"], role=message["role"], text=text, chat=chat[0])


def chat_request(
    run: dict[str, Any],
    route: Route,
    prompt: Prompt,
    tools: list[ChatTool],
    server_tools: ServerTools,
    usage: dict[str, int],
) -> ChatRequest:
    """The chat-completions request of the run's next model call."""
    cap_completion = run.get("max_completion_tokens")
    return ChatRequest(
        model=route.upstream_model,
        messages=prompt.messages,
        tools=tools or None,
        tool_choice=tool_choice(run, server_tools) if tools else None,
        parallel_tool_calls=run["parallel_tool_calls"] if tools else None,
        response_format=run["response_format"] if isinstance(run["response_format"], dict) else None,
        temperature=run["temperature"],
        top_p=run["top_p"],
        max_tokens=(cap_completion - usage["completion_tokens"]) if cap_completion is not None else None,
        # Only set for reasoning models (o-series): others reject the field.
        extra_body={"reasoning_effort": run["reasoning_effort"]} if run.get("reasoning_effort") else None,
    )
