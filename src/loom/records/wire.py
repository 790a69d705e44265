"""The wire shapes of the stored objects, named after the OpenAI SDK's types (`openai.types…`).

They document what `data` holds and what `to_wire()` answers; nested parts stay loosely typed (their
shapes are the SDK's and the spec's, built in `loom.runs` and `loom.services`).
"""

from __future__ import annotations

from typing import Any, TypedDict


class Run(TypedDict):
    """`openai.types.beta.threads.Run`."""

    id: str
    object: str
    created_at: int
    thread_id: str
    assistant_id: str
    status: str
    required_action: dict[str, Any] | None
    last_error: dict[str, Any] | None
    expires_at: int | None
    started_at: int | None
    cancelled_at: int | None
    failed_at: int | None
    completed_at: int | None
    incomplete_details: dict[str, Any] | None
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    metadata: dict[str, str]
    usage: dict[str, int] | None
    temperature: float | None
    top_p: float | None
    max_prompt_tokens: int | None
    max_completion_tokens: int | None
    truncation_strategy: dict[str, Any] | None
    tool_choice: Any
    parallel_tool_calls: bool
    response_format: Any
    reasoning_effort: str | None


class RunStep(TypedDict):
    """`openai.types.beta.threads.runs.RunStep`."""

    id: str
    object: str
    created_at: int
    run_id: str
    assistant_id: str
    thread_id: str
    type: str
    status: str
    cancelled_at: int | None
    completed_at: int | None
    expired_at: int | None
    failed_at: int | None
    last_error: dict[str, Any] | None
    step_details: dict[str, Any]
    usage: dict[str, int] | None
    metadata: dict[str, str]


class Message(TypedDict):
    """`openai.types.beta.threads.Message`."""

    id: str
    object: str
    created_at: int
    thread_id: str
    status: str
    incomplete_details: dict[str, Any] | None
    completed_at: int | None
    incomplete_at: int | None
    role: str
    content: list[dict[str, Any]]
    assistant_id: str | None
    run_id: str | None
    attachments: list[dict[str, Any]] | None
    metadata: dict[str, str]


class Thread(TypedDict):
    """`openai.types.beta.Thread`."""

    id: str
    object: str
    created_at: int
    metadata: dict[str, str]
    tool_resources: dict[str, Any] | None


class FileObject(TypedDict):
    """`openai.types.FileObject`."""

    id: str
    object: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: str
    status_details: str | None


class Upload(TypedDict):
    """`openai.types.Upload`."""

    id: str
    object: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int
    file: FileObject | None


class VectorStoreFile(TypedDict):
    """`openai.types.vector_stores.VectorStoreFile`."""

    id: str
    object: str
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: str
    last_error: dict[str, str] | None
    chunking_strategy: dict[str, Any]
    attributes: dict[str, Any]
