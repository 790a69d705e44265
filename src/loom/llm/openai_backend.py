"""`ChatBackend` for any OpenAI-compatible Chat Completions server, through the `openai` SDK.

Always streams. The SDK's own retries are off (`max_retries=0`): we retry here, and only before the
first chunk arrived, because a retry after that would repeat text the run has already shown.

What the server sends is read in `loom.llm.chunks`; its failures are mapped in `loom.llm.error_mapping`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from loom.llm.chunks import OpenStream, StreamEnded, completion_chunks, parse_chunk
from loom.llm.context_windows import ServedWindow, listed_window, served_window
from loom.llm.dialects import (
    Dialect,
    MaxTokensParam,
    detect,
    dialect_from_url,
    dialect_named,
    model_entries,
    model_ids,
)
from loom.llm.error_mapping import map_error, retry_after
from loom.llm.errors import UpstreamError
from loom.llm.types import ChatChunk, ChatRequest
from loom.ops import events, metrics

__all__ = ["BackendConfig", "MaxTokensParam", "OpenAIBackend"]

log = logging.getLogger("loom.llm")
# How long a backend's `GET /models` answer (or its failure) is reused for `/v1/models`.
MODELS_CACHE_S = 30.0
MODELS_FAILURE_CACHE_S = 5.0


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
    # What kind of server this is (`loom.llm.dialects`): "auto" asks the server once, on first use.
    dialect: str = "auto"
    # Seconds a failed detection (the server could not be asked) stands: calls meanwhile speak OpenAI's
    # dialect at once instead of each first spending a connection attempt (up to the connect timeout) on it.
    dialect_retry_s: float = 30.0
    # Overrides of the dialect's own choice: `max_tokens` or `max_completion_tokens`, and whether to ask
    # for a final usage chunk (`stream_options.include_usage`). None: as the dialect says.
    max_tokens_param: MaxTokensParam | None = None
    include_usage: bool | None = None


class OpenAIBackend:
    """A `ChatBackend` speaking Chat Completions through `openai.AsyncOpenAI`, in the server's dialect."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        headers = dict(config.headers)
        query = dict(config.query)
        key_header = config.api_key_header or ("api-key" if config.api_version else None)
        if key_header and config.api_key:
            headers.setdefault(key_header, config.api_key)
        if config.api_version:
            query.setdefault("api-version", config.api_version)
        self._headers = {"Authorization": f"Bearer {config.api_key or 'no-key'}", **headers}
        self._query = query
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
        named = config.dialect if config.dialect != "auto" else dialect_from_url(config.base_url, config.api_version)
        self._dialect: Dialect | None = self._with_overrides(named) if named is not None else None
        self._detecting = asyncio.Lock()
        # Until when (monotonic) a failed detection stands (`dialect_retry_s`).
        self._undetected_until = 0.0
        self._http: httpx.AsyncClient | None = None
        self._models: tuple[float, list[str]] | None = None
        # Why the last `GET /models` failed (one line), None when it answered (or was not asked yet).
        self.models_problem: str | None = None
        # `GET /models` entries by id (vLLM's carry `max_model_len`), from the last listing.
        self._entries: dict[str, Mapping[str, Any]] = {}
        # model -> (until when, the served window and where the server said it; None: it does not say).
        self._windows: dict[str, tuple[float, ServedWindow | None]] = {}

    @property
    def name(self) -> str:
        return self.config.name

    # The server's dialect and models.

    def _with_overrides(self, name: str) -> Dialect:
        return dialect_named(
            name, max_tokens_param=self.config.max_tokens_param, include_usage=self.config.include_usage
        )

    def _discovery(self) -> httpx.AsyncClient:
        if self._http is None:
            timeout = min(5.0, self.config.connect_timeout_s, self.config.timeout_s)
            self._http = httpx.AsyncClient(headers=self._headers, params=self._query, timeout=timeout)
        return self._http

    async def dialect(self) -> Dialect:
        """The configured dialect, or the one the server's answers show (asked once; a server that cannot
        be reached is treated as OpenAI's for now and asked again `dialect_retry_s` later)."""
        if self._dialect is not None:
            return self._dialect
        if time.monotonic() < self._undetected_until:
            return self._with_overrides("openai")
        async with self._detecting:
            if self._dialect is None:
                if time.monotonic() < self._undetected_until:  # failed while this call waited for the lock
                    return self._with_overrides("openai")
                try:
                    name = await detect(self._discovery(), self.config.base_url)
                except httpx.HTTPError as exc:
                    self._undetected_until = time.monotonic() + self.config.dialect_retry_s
                    log.info(
                        "model backend %r: could not ask what it is (%s); speaking OpenAI's dialect for %g s",
                        self.name,
                        exc,
                        self.config.dialect_retry_s,
                    )
                    return self._with_overrides("openai")
                log.info("model backend %r speaks the %r dialect", self.name, name)
                self._dialect = self._with_overrides(name)
            return self._dialect

    async def list_models(self) -> list[str]:
        """What the server lists at `GET /models`, remembered for a while (failures for less)."""
        now = time.monotonic()
        if self._models is not None and self._models[0] > now:
            return self._models[1]
        url = self.config.base_url.rstrip("/") + "/models"
        try:
            response = await self._discovery().get(url)
            ids = model_ids(response) if response.status_code == 200 else []
            self._entries = model_entries(response) if response.status_code == 200 else {}
            ttl = MODELS_CACHE_S if response.status_code == 200 else MODELS_FAILURE_CACHE_S
            self.models_problem = None if response.status_code == 200 else f"HTTP {response.status_code} from {url}"
        except httpx.HTTPError as exc:
            log.info("model backend %r: could not list its models (%s)", self.name, exc)
            ids, ttl = [], MODELS_FAILURE_CACHE_S
            self._entries = {}
            self.models_problem = f"{type(exc).__name__} at {url}" + (f": {exc}" if str(exc) else "")
        self._models = (now + ttl, ids)
        return ids

    async def context_window(self, model: str) -> ServedWindow | None:
        """The context window the server says it serves `model` with (vLLM's `max_model_len`, llama.cpp's
        `/props`, LM Studio's and Ollama's own APIs), or None where it does not say or cannot be asked.
        Remembered as long as the model list (a failure for less)."""
        now = time.monotonic()
        cached = self._windows.get(model)
        if cached is not None and cached[0] > now:
            return cached[1]
        dialect = (await self.dialect()).name
        if dialect in ("openai", "azure"):
            return None  # their model lists carry no window: the known families apply
        try:
            await self.list_models()
            found = listed_window(self._entries.get(model))
            if found is None:
                found = await served_window(self._discovery(), self.config.base_url, dialect, model)
            ttl = MODELS_CACHE_S
        except (httpx.HTTPError, ValueError) as exc:
            log.info("model backend %r: could not ask the context window of %r (%s)", self.name, model, exc)
            found, ttl = None, MODELS_FAILURE_CACHE_S
        self._windows[model] = (now + ttl, found)
        return found

    def served(self, model: str) -> bool:
        """Whether the last listing of the server's models had this one (False before any listing)."""
        return self._models is not None and model in self._models[1]

    # Requests.

    def _body(self, request: ChatRequest, dialect: Dialect) -> dict[str, Any]:
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
            body["max_completion_tokens"] = request.max_tokens
        body["stream_options"] = {"include_usage": True}
        body = dialect.shape_body(body)
        if not dialect.streams(body):
            body["stream"] = False
            body.pop("stream_options", None)
        if request.extra_body:
            body.update(request.extra_body)
        return body

    def _backoff(self, attempt: int, exc: BaseException) -> float:
        cfg = self.config
        delay: float = min(cfg.retry_max_delay_s, cfg.retry_base_delay_s * (2**attempt))
        delay *= random.uniform(0.5, 1.0)
        hinted = retry_after(exc)
        if hinted is not None:
            delay = min(cfg.retry_max_delay_s, max(delay, hinted))
        return delay

    def _ended(self, before_anything: bool) -> UpstreamError:
        where = f"model backend '{self.name}'"
        if before_anything:
            text = f"The {where} ended its response without sending an answer (no chunk, no finish reason)"
        else:
            text = f"The {where} ended its response in the middle of its answer (no finish reason)"
        return UpstreamError("server_error", text)

    async def _send(self, body: dict[str, Any]) -> OpenStream:
        """One attempt: the response up to its first meaningful chunk (a non-streamed one whole).

        Chunks with nothing in them (the usual leading `{"role": "assistant"}`) do not count: a failure
        after them is still retried, since the caller has seen nothing yet."""
        if not body["stream"]:
            # A turn the server cannot stream (its dialect says so): asked for whole, replayed as chunks.
            whole = await self._client.post("/chat/completions", body=body, cast_to=object)
            opened = OpenStream(None)
            for chunk in completion_chunks(whole, opened.calls):
                opened.take(chunk)
            if not opened.finished:
                raise StreamEnded()
            return opened
        # The SDK's client, one level below `chat.completions.create`: the same URL, headers, auth,
        # timeouts and error types, without re-walking the request against its typed parameters or
        # building a model per chunk (together a millisecond of each run's time to first token); chunks
        # stay decoded JSON, read by `parse_chunk`.
        stream = await self._client.post(
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
        )
        opened = OpenStream(stream)
        try:
            assert opened.iterator is not None
            async for raw in opened.iterator:
                first = parse_chunk(raw, opened.calls)
                if first is not None:
                    opened.take(first)
                    return opened
        except BaseException:
            await opened.close()
            raise
        await opened.close()
        raise StreamEnded()

    async def _open(self, request: ChatRequest) -> OpenStream:
        """Send the request, retrying transient failures (an answer that ended before it began is one)."""
        body = self._body(request, await self.dialect())
        metrics.UPSTREAM_CALLS.labels(self.name).inc()
        attempt = 0
        while True:
            try:
                return await self._send(body)
            except Exception as exc:
                if isinstance(exc, StreamEnded):
                    error, retryable = self._ended(before_anything=True), True
                else:
                    error, retryable = map_error(exc, self.name, timeout_s=self.config.timeout_s)
                events.upstream_failed(
                    self.name, error, attempt=attempt, retrying=retryable and attempt < self.config.max_retries
                )
                if not retryable or attempt >= self.config.max_retries:
                    if attempt:
                        error.message = f"{error.message.rstrip('.')} (after {attempt + 1} attempts)"
                        error.args = (error.message,)
                    raise error from None
                log.info("model backend %r: %s; trying again", self.name, error.message)
                await asyncio.sleep(self._backoff(attempt, exc))
                attempt += 1

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The answer's chunks. It ends only after a chunk with a finish reason: a stream that stops
        before one (the connection closed, the server died mid-answer) raises `UpstreamError`."""
        opened = await self._open(request)
        try:
            for chunk in opened.ready:
                yield chunk
            if opened.iterator is None:
                return
            while True:
                try:
                    raw = await opened.iterator.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    if opened.finished:
                        # The answer is whole; only its trailer (usage, [DONE]) was lost.
                        log.info("model backend %r: the stream broke after its finish reason (%r)", self.name, exc)
                        return
                    # The caller has seen output: a retry would repeat it, so fail the call instead.
                    error, _ = map_error(exc, self.name, timeout_s=self.config.timeout_s, streaming=True)
                    events.upstream_failed(self.name, error, attempt=0, retrying=False)
                    raise error from None
                more = parse_chunk(raw, opened.calls)
                if more is not None:
                    if more.finish_reason is not None:
                        opened.finished = True
                    yield more
            if not opened.finished:
                raise self._ended(before_anything=False)
        finally:
            await opened.close()

    async def aclose(self) -> None:
        await self._client.close()
        if self._http is not None:
            await self._http.aclose()
