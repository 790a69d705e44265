"""`ChatBackend` for any OpenAI-compatible Chat Completions server, through the `openai` SDK.

Always streams. The SDK's own retries are off (`max_retries=0`): we retry here, and only before the
first chunk arrived, because a retry after that would repeat text the run has already shown.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import openai

from loom.ids import new_id
from loom.llm.errors import UpstreamError
from loom.llm.types import ChatChunk, ChatRequest, ToolCallDelta, Usage
from loom.ops import events, metrics

MaxTokensParam = Literal["max_completion_tokens", "max_tokens"]


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """How to reach one Chat Completions server (one `[backends.NAME]` table of the config file)."""

    name: str
    base_url: str
    api_key: str = ""
    # Extra HTTP headers on every request (e.g. OpenRouter's HTTP-Referer, a gateway's auth header).
    headers: Mapping[str, str] = field(default_factory=dict)
    # Extra query parameters on every request.
    query: Mapping[str, str] = field(default_factory=dict)
    # Azure OpenAI (deployment-style URLs): sent as `?api-version=`; also sends the key as `api-key`.
    api_version: str | None = None
    # Send the API key in this header too (Azure: "api-key"). Authorization: Bearer is always sent.
    api_key_header: str | None = None
    # Seconds: connect timeout, and read timeout (the longest silence allowed between two chunks).
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    # Retries of 429/5xx/timeouts/connection errors before the first chunk; backoff doubles each time.
    max_retries: int = 2
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 8.0
    # Older servers (and Ollama/llama.cpp versions) only know `max_tokens`.
    max_tokens_param: MaxTokensParam = "max_completion_tokens"
    # Ask for a final usage chunk (`stream_options.include_usage`); turn off for servers that reject it.
    include_usage: bool = True


_CONTEXT_OVERFLOW = re.compile(
    r"context[_ ]length|context window|maximum context|too many tokens|too long|prompt is too long"
    r"|exceeds? the (?:maximum|max|context)|input length",
    re.IGNORECASE,
)


def _upstream_message(body: object, fallback: str) -> str:
    """The upstream's own error message out of an error body (OpenAI's `{"error": {...}}` or variants)."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            message = error.get("message")
            if isinstance(message, str) and message:
                return message
        elif isinstance(error, str) and error:
            return error
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
    elif isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def _upstream_code(body: object) -> str | None:
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            code = error.get("code") or error.get("type")
            if code is not None:
                return str(code)
    return None


def map_error(
    exc: BaseException, backend: str, *, timeout_s: float, streaming: bool = False
) -> tuple[UpstreamError, bool]:
    """The `UpstreamError` for an SDK exception, and whether a retry may help.

    `streaming`: the failure came after the first chunk (then transport failures are described as a
    lost or stalled stream, not as a failed connection)."""
    where = f"model backend '{backend}'"
    if isinstance(exc, openai.APITimeoutError):
        if streaming:
            text = f"The {where} stopped sending for {timeout_s:g}s in the middle of its answer"
        else:
            text = f"The request to {where} timed out after {timeout_s:g}s"
        return UpstreamError("server_error", text), True
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else ""
        if streaming:
            text = f"The connection to {where} was lost in the middle of its answer{detail}"
        else:
            text = f"Could not connect to {where}{detail}"
        return UpstreamError("server_error", text), True
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _upstream_message(exc.body, exc.response.reason_phrase or "no message")
        code = _upstream_code(exc.body)
        text = f"The {where} returned HTTP {status}: {message}"
        if status == 429:
            # Out of quota will not come back by waiting a few seconds.
            return UpstreamError("rate_limit_exceeded", text, status=status), code != "insufficient_quota"
        if status in (400, 413, 422):
            if code == "context_length_exceeded" or _CONTEXT_OVERFLOW.search(message):
                text = f"The prompt is too long for the model's context window. {text}"
            return UpstreamError("invalid_prompt", text, status=status), False
        if status in (408, 409) or status >= 500:
            return UpstreamError("server_error", text, status=status), True
        # 401/403/404…: a configuration problem; retrying will not fix it.
        return UpstreamError("server_error", text, status=status), False
    if isinstance(exc, openai.APIError):
        # An error event inside an otherwise successful stream.
        message = _upstream_message(exc.body, exc.message)
        code = _upstream_code(exc.body)
        text = f"The {where} reported an error while streaming: {message}"
        if code == "context_length_exceeded":
            return UpstreamError("invalid_prompt", text), False
        if code in ("rate_limit_exceeded", "rate_limit_error"):
            return UpstreamError("rate_limit_exceeded", text), True
        return UpstreamError("server_error", text), True
    # Malformed JSON or SSE, or anything else: say what, not where in our code.
    return UpstreamError("server_error", f"The {where} sent an invalid response ({type(exc).__name__})"), False


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, openai.APIStatusError):
        value = exc.response.headers.get("retry-after")
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _get(obj: Any, key: str) -> Any:
    """A field of a decoded JSON object; None when absent or when `obj` is not an object."""
    return obj.get(key) if isinstance(obj, Mapping) else None


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    prompt = int(_get(raw, "prompt_tokens") or 0)
    completion = int(_get(raw, "completion_tokens") or 0)
    total = int(_get(raw, "total_tokens") or 0) or prompt + completion
    cached = _get(_get(raw, "prompt_tokens_details"), "cached_tokens")
    reasoning = _get(_get(raw, "completion_tokens_details"), "reasoning_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=int(cached) if cached is not None else None,
        reasoning_tokens=int(reasoning) if reasoning is not None else None,
    )


class _ToolCallNormalizer:
    """Makes every server's tool-call deltas look like OpenAI's: id and name once per call, a stable
    index per call. Handles servers that repeat the id/name on every delta, omit `index`, omit the id,
    or reuse index 0 for each of several parallel calls."""

    def __init__(self) -> None:
        self._ours: dict[int, int] = {}  # server index -> our index
        self._ids: list[str] = []
        self._named: set[int] = set()

    def delta(self, position: int, raw: Any) -> ToolCallDelta:
        server_index = _get(raw, "index")
        if not isinstance(server_index, int):
            server_index = position
        call_id = _get(raw, "id") or None
        function = _get(raw, "function")
        name = _get(function, "name") or None
        arguments = _get(function, "arguments") or ""

        ours = self._ours.get(server_index)
        if ours is None or (call_id is not None and call_id != self._ids[ours]):
            ours = len(self._ids)
            self._ours[server_index] = ours
            self._ids.append(call_id or new_id("call"))
            emit_id: str | None = self._ids[ours]
        else:
            emit_id = None
        emit_name = None
        if name is not None and ours not in self._named:
            self._named.add(ours)
            emit_name = name
        return ToolCallDelta(index=ours, id=emit_id, name=emit_name, arguments=str(arguments))


def _chunk(raw: object, calls: _ToolCallNormalizer) -> ChatChunk | None:
    """One streamed chunk (`chat.completion.chunk` as decoded JSON) in Loom's terms; None if empty."""
    usage = _usage(_get(raw, "usage"))
    choices = _get(raw, "choices")
    content = refusal = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    if isinstance(choices, list) and choices:
        choice = choices[0]
        delta = _get(choice, "delta")
        content = str(_get(delta, "content") or "")
        refusal = str(_get(delta, "refusal") or "")
        raw_calls = _get(delta, "tool_calls")
        if isinstance(raw_calls, list):
            tool_calls = tuple(calls.delta(i, tc) for i, tc in enumerate(raw_calls))
        finish_reason = _get(choice, "finish_reason") or None
    if not (content or refusal or tool_calls or finish_reason or usage):
        return None
    return ChatChunk(
        content=content,
        refusal=refusal,
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        usage=usage,
    )


class _OpenStream:
    """A response being read: the SDK stream, its iterator, and the first non-empty chunk."""

    def __init__(self, stream: openai.AsyncStream[object]) -> None:
        self.stream = stream
        self.iterator: AsyncIterator[object] = stream.__aiter__()
        self.calls = _ToolCallNormalizer()
        self.first: ChatChunk | None = None


class OpenAIBackend:
    """A `ChatBackend` speaking Chat Completions through `openai.AsyncOpenAI`."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        headers = dict(config.headers)
        query = dict(config.query)
        key_header = config.api_key_header or ("api-key" if config.api_version else None)
        if key_header and config.api_key:
            headers.setdefault(key_header, config.api_key)
        if config.api_version:
            query.setdefault("api-version", config.api_version)
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            # Servers without auth accept any key; the SDK insists on a non-empty one.
            api_key=config.api_key or "no-key",
            organization=None,
            project=None,
            timeout=openai.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            max_retries=0,
            default_headers=headers or None,
            default_query=query or None,
        )

    @property
    def name(self) -> str:
        return self.config.name

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages, "stream": True}
        if request.tools:
            body["tools"] = request.tools
            if request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        # Without tools, tool_choice/parallel_tool_calls are left out: some servers reject them alone.
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[self.config.max_tokens_param] = request.max_tokens
        if self.config.include_usage:
            body["stream_options"] = {"include_usage": True}
        if request.extra_body:
            body.update(request.extra_body)
        return body

    def _backoff(self, attempt: int, exc: BaseException) -> float:
        cfg = self.config
        delay: float = min(cfg.retry_max_delay_s, cfg.retry_base_delay_s * (2**attempt))
        delay *= random.uniform(0.5, 1.0)
        hinted = _retry_after(exc)
        if hinted is not None:
            delay = min(cfg.retry_max_delay_s, max(delay, hinted))
        return delay

    async def _open(self, request: ChatRequest) -> _OpenStream:
        """Send the request and read up to its first meaningful chunk, retrying transient failures.

        Chunks with nothing in them (the usual leading `{"role": "assistant"}`) do not count: a failure
        after them is still retried, since the caller has seen nothing yet."""
        body = self._body(request)
        metrics.UPSTREAM_CALLS.labels(self.name).inc()
        attempt = 0
        while True:
            stream: openai.AsyncStream[object] | None = None
            try:
                # The SDK's client, one level below `chat.completions.create`: the same URL, headers,
                # auth, timeouts and error types, without re-walking the request against its typed
                # parameters or building a model per chunk (together a millisecond of each run's time
                # to first token); chunks stay decoded JSON, read by `_chunk`.
                stream = await self._client.post(
                    "/chat/completions",
                    body=body,
                    cast_to=object,
                    stream=True,
                    stream_cls=openai.AsyncStream[object],
                )
                opened = _OpenStream(stream)
                async for raw in opened.iterator:
                    opened.first = _chunk(raw, opened.calls)
                    if opened.first is not None:
                        break
                return opened
            except Exception as exc:
                if stream is not None:
                    await stream.close()
                error, retryable = map_error(exc, self.name, timeout_s=self.config.timeout_s)
                events.upstream_failed(
                    self.name, error, attempt=attempt, retrying=retryable and attempt < self.config.max_retries
                )
                if not retryable or attempt >= self.config.max_retries:
                    if attempt:
                        error.message = f"{error.message.rstrip('.')} (after {attempt + 1} attempts)"
                        error.args = (error.message,)
                    raise error from None
                await asyncio.sleep(self._backoff(attempt, exc))
                attempt += 1

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        opened = await self._open(request)
        try:
            if opened.first is None:
                return
            yield opened.first
            while True:
                try:
                    raw = await opened.iterator.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    # The caller has seen output: a retry would repeat it, so fail the call instead.
                    error, _ = map_error(exc, self.name, timeout_s=self.config.timeout_s, streaming=True)
                    events.upstream_failed(self.name, error, attempt=0, retrying=False)
                    raise error from None
                chunk = _chunk(raw, opened.calls)
                if chunk is not None:
                    yield chunk
        finally:
            await opened.stream.close()

    async def aclose(self) -> None:
        await self._client.close()
