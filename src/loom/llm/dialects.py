"""What differs between OpenAI-compatible Chat Completions servers, in one place per kind of server.

A backend's dialect is its config's `dialect` key, or (`auto`, the default) found by asking the server
once (`detect`): its base URL (Azure), `GET /models` (`owned_by`), llama.cpp's `GET /props`, Ollama's
`GET /api/version`. OpenAI's behaviour is the default for anything not recognized.

Everything a dialect changes happens to the request body (`shape_body`) and to whether the call is
streamed (`streams`); the answer is read the same way for all servers (tool-call ids are always Loom's,
and argument fragments are normalized in `loom.llm.chunks.ToolCallNormalizer`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("loom.llm")

MaxTokensParam: TypeAlias = Literal["max_completion_tokens", "max_tokens"]
# How a request that forces one function is sent: OpenAI's object form, or (servers that only read
# the string forms) `"required"` with that function as the only tool.
ForcedChoice: TypeAlias = Literal["object", "required_one_tool"]
# The tool choices as `streams` names them: a forced function is "function".
ChoiceKind: TypeAlias = Literal["none", "auto", "required", "function"]
ALL_CHOICES: frozenset[ChoiceKind] = frozenset({"none", "auto", "required", "function"})


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    # `content` of an assistant message that only calls tools: OpenAI sends null; some servers want "".
    tool_call_content: Literal["null", "empty"] = "null"
    forced_choice: ForcedChoice = "object"
    # Whether `tool_choice: "required"` is understood. If not: one tool is forced by name, several get "auto".
    required_choice: bool = True
    max_tokens_param: MaxTokensParam = "max_completion_tokens"
    # Whether to ask for usage in streams (`stream_options.include_usage`).
    include_usage: bool = True
    # Tool choices the server can stream (with tools in the request); the others are asked for without
    # streaming and replayed to the run as a stream.
    stream_choices: frozenset[ChoiceKind] = ALL_CHOICES

    def streams(self, body: Mapping[str, Any]) -> bool:
        """Whether this (already shaped) request can be streamed."""
        if not body.get("tools"):
            return True
        return choice_kind(body.get("tool_choice")) in self.stream_choices

    def shape_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request body in this server's terms (a new dict; `body` is OpenAI's)."""
        body = dict(body)
        if self.tool_call_content == "empty":
            body["messages"] = [_empty_content(m) for m in body.get("messages", [])]
        choice = body.get("tool_choice")
        tools = body.get("tools")
        if tools and isinstance(choice, Mapping) and self.forced_choice == "required_one_tool":
            name = _forced_name(choice)
            only = [t for t in tools if _tool_name(t) == name]
            if only:
                body["tools"], body["tool_choice"] = only, "required"
        elif tools and choice == "required" and not self.required_choice:
            if len(tools) == 1:
                body["tool_choice"] = {"type": "function", "function": {"name": _tool_name(tools[0])}}
            else:
                body["tool_choice"] = "auto"
        for param in ("max_completion_tokens", "max_tokens"):
            if param in body and param != self.max_tokens_param:
                body[self.max_tokens_param] = body.pop(param)
        if not self.include_usage:
            body.pop("stream_options", None)
        return body


def choice_kind(choice: object) -> ChoiceKind:
    if isinstance(choice, Mapping):
        return "function"
    if choice in ("none", "required"):
        return "none" if choice == "none" else "required"
    return "auto"  # also when not sent: the server's default with tools is "auto"


def _forced_name(choice: Mapping[str, Any]) -> object:
    function = choice.get("function")
    return function.get("name") if isinstance(function, Mapping) else None


def _tool_name(tool: object) -> object:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    return function.get("name") if isinstance(function, Mapping) else None


def _empty_content(message: Any) -> Any:
    if isinstance(message, Mapping) and message.get("role") == "assistant" and message.get("content") is None:
        return {**message, "content": ""}
    return message


OPENAI = Dialect("openai")
DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        OPENAI,
        # Azure OpenAI: OpenAI's models behind deployment URLs (`api_version`, the `api-key` header).
        Dialect("azure"),
        # vLLM: OpenAI's forms; `max_tokens` (older versions do not know `max_completion_tokens`).
        Dialect("vllm", max_tokens_param="max_tokens"),
        # llama-cpp-python's server (`python -m llama_cpp.server`): `content: null` in a replayed tool
        # call is a 500 (and so is a missing key), "required" trips an assertion, `max_completion_tokens`
        # is ignored, no usage in streams, and `tool_choice: "auto"` with tools cannot be streamed (it
        # fails after the stream's headers were sent).
        Dialect(
            "llamacpp",
            tool_call_content="empty",
            required_choice=False,
            max_tokens_param="max_tokens",
            include_usage=False,
            stream_choices=frozenset({"none", "function"}),
        ),
        # llama.cpp's own `llama-server --jinja`: ignores the object form of `tool_choice` (string forms only).
        Dialect(
            "llama-server", tool_call_content="empty", forced_choice="required_one_tool", max_tokens_param="max_tokens"
        ),
        # Ollama's OpenAI-compatible API: no `tool_choice` object form; `max_tokens`.
        Dialect("ollama", tool_call_content="empty", forced_choice="required_one_tool", max_tokens_param="max_tokens"),
        # LM Studio: string forms of `tool_choice` only; `max_tokens`.
        Dialect("lmstudio", forced_choice="required_one_tool", max_tokens_param="max_tokens"),
    )
}
DIALECT_NAMES = ("auto", *DIALECTS)


def dialect_named(
    name: str, *, max_tokens_param: MaxTokensParam | None = None, include_usage: bool | None = None
) -> Dialect:
    """A named dialect, with a backend config's own `max_tokens_param` / `include_usage` on top."""
    dialect = DIALECTS[name]
    if max_tokens_param is not None:
        dialect = replace(dialect, max_tokens_param=max_tokens_param)
    if include_usage is not None:
        dialect = replace(dialect, include_usage=include_usage)
    return dialect


_OWNED_BY = {
    "me": "llamacpp",
    "llamacpp": "llama-server",
    "vllm": "vllm",
    "organization_owner": "lmstudio",
    "library": "ollama",
}


def dialect_from_url(base_url: str, api_version: str | None) -> str | None:
    """The dialect a base URL alone tells (no request needed), if any."""
    host = (urlsplit(base_url).hostname or "").lower()
    if api_version or host.endswith((".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")):
        return "azure"
    if host == "api.openai.com":
        return "openai"
    return None


async def detect(client: httpx.AsyncClient, base_url: str) -> str:
    """Ask the server what it is: `/models` owned_by, then llama.cpp's `/props`, then Ollama's `/api/version`.

    Returns "openai" for anything not recognized; raises `httpx.HTTPError` when the server cannot be reached
    or its `/models` fails with a 5xx and nothing else tells (the caller tries again next time)."""
    base = base_url.rstrip("/")
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    models = await client.get(f"{base}/models")
    if models.status_code == 200:
        owners = {str(m.get("owned_by")) for m in _data(models) if isinstance(m, Mapping)}
        for owner in owners:
            if owner in _OWNED_BY:
                return _OWNED_BY[owner]
    props = await client.get(f"{root}/props")
    if props.status_code == 200 and isinstance(_json(props), Mapping) and "default_generation_settings" in _json(props):
        return "llama-server"
    version = await client.get(f"{root}/api/version")
    if version.status_code == 200 and isinstance(_json(version), Mapping) and "version" in _json(version):
        return "ollama"
    if models.status_code >= 500:
        raise httpx.HTTPStatusError("GET /models failed", request=models.request, response=models)
    return "openai"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _data(response: httpx.Response) -> list[Any]:
    body = _json(response)
    data = body.get("data") if isinstance(body, Mapping) else None
    return data if isinstance(data, list) else []


def model_ids(response: httpx.Response) -> list[str]:
    """The model ids of a `GET /models` answer (OpenAI's `{"data": [{"id": …}]}`)."""
    return [str(m["id"]) for m in _data(response) if isinstance(m, Mapping) and isinstance(m.get("id"), str)]


def model_entries(response: httpx.Response) -> dict[str, Mapping[str, Any]]:
    """The entries of a `GET /models` answer by id."""
    return {str(m["id"]): m for m in _data(response) if isinstance(m, Mapping) and isinstance(m.get("id"), str)}
