"""Wire objects the engine creates: runs, run steps, assistant messages."""

from __future__ import annotations

from typing import Any

from loom import ids
from loom.clock import now
from loom.schemas.assistants import response_format_wire, tool_wire
from loom.schemas.runs import RunCreate, ThreadAndRunCreate, tool_choice_wire, truncation_wire


def effective_instructions(base: str | None, additional: str | None) -> str:
    text = base or ""
    if additional:
        text = f"{text}\n\n{additional}" if text else additional
    return text


def new_run(
    thread_id: str, assistant: dict[str, Any], req: RunCreate | ThreadAndRunCreate, expiry_s: int
) -> dict[str, Any]:
    created = now()
    instructions = req.instructions if req.instructions is not None else assistant.get("instructions")
    additional = req.additional_instructions if isinstance(req, RunCreate) else None
    reasoning = req.reasoning_effort if isinstance(req, RunCreate) else None
    return {
        "id": ids.new_id("run"),
        "object": "thread.run",
        "created_at": created,
        "thread_id": thread_id,
        "assistant_id": assistant["id"],
        "status": "queued",
        "required_action": None,
        "last_error": None,
        "expires_at": created + expiry_s,
        "started_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "incomplete_details": None,
        "model": req.model or assistant["model"],
        "instructions": effective_instructions(instructions, additional),
        "tools": [tool_wire(t) for t in req.tools] if req.tools is not None else list(assistant["tools"]),
        "metadata": dict(req.metadata or {}),
        "usage": None,
        "temperature": req.temperature if req.temperature is not None else assistant.get("temperature", 1.0),
        "top_p": req.top_p if req.top_p is not None else assistant.get("top_p", 1.0),
        "max_prompt_tokens": req.max_prompt_tokens,
        "max_completion_tokens": req.max_completion_tokens,
        "truncation_strategy": truncation_wire(req.truncation_strategy),
        "tool_choice": tool_choice_wire(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "response_format": (
            response_format_wire(req.response_format)
            if req.response_format is not None
            else assistant.get("response_format", "auto")
        ),
        "reasoning_effort": reasoning if reasoning is not None else assistant.get("reasoning_effort"),
    }


def new_step(run: dict[str, Any], step_type: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": ids.new_id("step"),
        "object": "thread.run.step",
        "created_at": now(),
        "run_id": run["id"],
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "type": step_type,
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": details,
        "usage": None,
        "metadata": {},
    }


def new_assistant_message(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": ids.new_id("message"),
        "object": "thread.message",
        "created_at": now(),
        "thread_id": run["thread_id"],
        "status": "in_progress",
        "incomplete_details": None,
        "completed_at": None,
        "incomplete_at": None,
        "role": "assistant",
        "content": [],
        "assistant_id": run["assistant_id"],
        "run_id": run["id"],
        "attachments": [],
        "metadata": {},
    }


def usage_dict(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
