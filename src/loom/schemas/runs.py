"""Runs: create, create-thread-and-run, modify, submit tool outputs."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from loom.schemas.assistants import ReasoningEffort, ResponseFormat, Temperature, Tool, ToolResources, TopP
from loom.schemas.common import UNION_EXPECTATIONS, Metadata, Request, openai_error, tagged
from loom.schemas.threads import MAX_MESSAGES_PER_REQUEST, MessageCreate, ThreadCreate

# `instructions` replace the assistant's, whose spec bound is `maxLength: 256000`; the same bound for a
# run's own, and for `additional_instructions` (the spec states none for either).
Instructions = Annotated[str, Field(max_length=256_000)]
# A submitted tool output becomes a message to the model. The spec states no bound; Loom's is twice a
# message's text (256,000): about 128,000 tokens of prose.
MAX_TOOL_OUTPUT_CHARS = 512_000


# Beyond OpenAI's two types, `type` may name a memory strategy (loom.memory): built in or a plug-in.
_STRATEGY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}")


def _truncation_type(value: object) -> object:
    """OpenAI's types, or a strategy's name (found or not when the run starts); anything else gets
    OpenAI's own error."""
    if isinstance(value, str) and _STRATEGY_NAME.fullmatch(value):
        return value
    raise openai_error(
        f"Invalid value: '{value}'. Supported values are: 'auto' or 'last_messages'.",
        "truncation_strategy.type",
        "invalid_value",
    )


class TruncationStrategy(Request):
    type: Annotated[str, BeforeValidator(_truncation_type)]
    last_messages: Annotated[int, Field(ge=1)] | None = None


class NamedFunction(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function", "code_interpreter", "file_search"]
    function: NamedFunction | None = None

    @model_validator(mode="after")
    def _function_named(self) -> NamedToolChoice:
        if self.type == "function" and self.function is None:
            raise openai_error(
                "Missing required parameter: 'tool_choice.function'.",
                "tool_choice.function",
                "missing_required_parameter",
            )
        return self


def _choice_tag(value: object) -> str | None:
    if isinstance(value, str):
        return "~mode"
    if isinstance(value, dict):
        return "~named"
    return None


UNION_EXPECTATIONS["_choice_tag"] = "one of a string or object"

ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("~mode")] | Annotated[NamedToolChoice, Tag("~named")],
    Discriminator(_choice_tag),
]

TokenCap = Annotated[int, Field(ge=256)]


class _RunOptions(Request):
    model: str | None = None
    instructions: Instructions | None = None
    tools: Annotated[list[Tool], Field(max_length=20)] | None = None
    metadata: Metadata = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool | None = None
    max_prompt_tokens: TokenCap | None = None
    max_completion_tokens: TokenCap | None = None
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class RunCreate(_RunOptions):
    assistant_id: str
    additional_instructions: Instructions | None = None
    additional_messages: Annotated[list[MessageCreate], Field(max_length=MAX_MESSAGES_PER_REQUEST)] | None = None
    reasoning_effort: ReasoningEffort | None = None


class ThreadAndRunCreate(_RunOptions):
    assistant_id: str
    thread: ThreadCreate | None = None
    tool_resources: ToolResources | None = None


class RunModify(Request):
    metadata: Metadata = None


class ToolOutput(Request):
    tool_call_id: str | None = None
    output: Annotated[str, Field(max_length=MAX_TOOL_OUTPUT_CHARS)] | None = None


class SubmitToolOutputs(Request):
    tool_outputs: list[ToolOutput]
    stream: bool | None = None


def truncation_wire(strategy: TruncationStrategy | None) -> dict[str, Any]:
    if strategy is None:
        return {"type": "auto", "last_messages": None}
    return {"type": strategy.type, "last_messages": strategy.last_messages}


def tool_choice_wire(choice: object) -> Any:
    if choice is None:
        return "auto"
    if isinstance(choice, NamedToolChoice):
        wire: dict[str, Any] = {"type": choice.type}
        if choice.function is not None:
            wire["function"] = {"name": choice.function.name}
        return wire
    return choice


__all__ = ["Discriminator", "RunCreate", "RunModify", "SubmitToolOutputs", "Tag", "ThreadAndRunCreate", "tagged"]
