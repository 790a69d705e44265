"""A scripted OpenAI-compatible Chat Completions server for tests and benchmarks.

A real HTTP/1.1 server on 127.0.0.1 (keep-alive, chunked SSE), scripted turn by turn:

    with FakeUpstream() as upstream:                       # own thread, own event loop
        upstream.push(Turn.reply("Hello!", chunk_size=2))
        upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Paris"})))
        upstream.push(Turn.error(429, "Slow down"))
        ... point Loom at upstream.base_url ...
        assert upstream.requests[0].body["messages"][-1]["content"] == "hi"

Each `POST …/chat/completions` takes the next pushed turn; when none is left, the first matching
rule (`add_rule`), else the default turn (a fixed text, so benchmarks can run unlimited turns).
Every request is recorded (method, path, query, lower-cased headers, JSON body).

As a process (benchmarks, multi-process tests):

    python -m tests.fakes.upstream --port 0 --script script.json
    # prints "READY <port>"; script.json: {"turns": [...], "default": {...}, "rules": [...], "models": [...]}

and `FakeUpstreamProcess` drives such a process with the same methods (through `/_fake/*` endpoints).
Any path ending in `/chat/completions` or `/models` is served, so Azure deployment-style URLs work too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

JSON = dict[str, Any]

DEFAULT_TEXT = "This is a scripted reply."
DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini")


@dataclass(frozen=True)
class ToolCallSpec:
    name: str
    arguments: str | JSON = "{}"
    id: str | None = None

    @property
    def arguments_text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)

    def to_dict(self) -> JSON:
        return {"name": self.name, "arguments": self.arguments, "id": self.id}


@dataclass(frozen=True)
class Turn:
    """One scripted response.

    text/refusal/tool_calls make a success; `status` != 200 makes an HTTP error with `error_body`.
    chunk_size: characters per content/refusal chunk (0: one chunk); arguments_chunk_size: characters
    per tool-argument fragment (0: one fragment). usage: {"prompt_tokens", "completion_tokens"}
    (default: counted roughly from the request and reply); sent when the client asked for it with
    stream_options.include_usage, unless send_usage says otherwise. delay_s: before anything is sent
    (headers included); chunk_delay_s: between SSE events. hang_after: send that many SSE events,
    then nothing more until the client goes away (0: not even the headers). disconnect_after: send
    that many events, then drop the connection. end_after: send that many events, then end the
    response cleanly but early (no finish reason, no `[DONE]`: a server that gave up; 0: no event at
    all). stream_error: an `{"error": …}` event sent after the content instead of finishing.
    raw_chunks: chunk objects sent verbatim (quirky servers).
    gate/gate_after: after sending that many SSE events (or at each of several counts), hold the
    stream until the test calls `release(gate)` once more (`wait_held(gate, n)` returns once it holds
    for the n-th time), then go on: a reply that is mid-stream exactly as long as a test needs.
    """

    text: str = ""
    chunk_size: int = 0
    refusal: str = ""
    tool_calls: tuple[ToolCallSpec, ...] = ()
    arguments_chunk_size: int = 0
    usage: JSON | None = None
    send_usage: bool | None = None
    finish_reason: str | None = None
    status: int = 200
    error_body: JSON | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    hang_after: int | None = None
    disconnect_after: int | None = None
    end_after: int | None = None
    stream_error: JSON | None = None
    # Sent as the streamed chunks instead of anything generated (to mimic a quirky server), then [DONE].
    raw_chunks: tuple[JSON, ...] | None = None
    gate: str | None = None
    gate_after: int | tuple[int, ...] = 1

    @classmethod
    def reply(cls, text: str, *, chunk_size: int = 0, **kw: Any) -> Turn:
        return cls(text=text, chunk_size=chunk_size, **kw)

    @classmethod
    def calls(cls, *calls: ToolCallSpec, arguments_chunk_size: int = 0, text: str = "", **kw: Any) -> Turn:
        return cls(tool_calls=tuple(calls), arguments_chunk_size=arguments_chunk_size, text=text, **kw)

    @classmethod
    def refuse(cls, refusal: str, *, chunk_size: int = 0, **kw: Any) -> Turn:
        return cls(refusal=refusal, chunk_size=chunk_size, **kw)

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "",
        *,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Turn:
        error_type = type or ("invalid_request_error" if status < 500 else "server_error")
        body = {"error": {"message": message or f"HTTP {status}", "type": error_type, "param": None, "code": code}}
        return cls(status=status, error_body=body, headers=headers or {}, **kw)

    @classmethod
    def context_overflow(cls) -> Turn:
        return cls.error(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in "
            "130000 tokens. Please reduce the length of the messages.",
            code="context_length_exceeded",
            type="invalid_request_error",
        )

    @classmethod
    def hang(cls, after: int = 0) -> Turn:
        return cls(text="partial reply", chunk_size=1, hang_after=after)

    def to_dict(self) -> JSON:
        data: JSON = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "tool_calls":
                value = [c.to_dict() for c in value]
            data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: JSON) -> Turn:
        data = dict(data)
        if "error" in data:  # shorthand: {"error": {"status": 429, "message": "…", "code": …}}
            spec = dict(data.pop("error"))
            return cls.error(spec.pop("status"), spec.pop("message", ""), **spec, **data)
        calls = tuple(ToolCallSpec(**c) for c in data.pop("tool_calls", ()))
        if data.get("raw_chunks") is not None:
            data["raw_chunks"] = tuple(data["raw_chunks"])
        if isinstance(data.get("gate_after"), list):
            data["gate_after"] = tuple(data["gate_after"])
        return cls(tool_calls=calls, **data)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any

    @property
    def messages(self) -> list[JSON]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    def to_dict(self) -> JSON:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
        }


Predicate = Callable[[JSON], bool]
Responder = Turn | Callable[[JSON], Turn]


def declarative_predicate(when: JSON) -> Predicate:
    """A predicate from JSON: all given conditions must hold.

    last_role: role of the last message; has_tools: whether `tools` is non-empty; model: exact model;
    last_content_contains: substring of the last message's text content."""

    def check(body: JSON) -> bool:
        messages = body.get("messages") or [{}]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        if "last_role" in when and last.get("role") != when["last_role"]:
            return False
        if "has_tools" in when and bool(body.get("tools")) != bool(when["has_tools"]):
            return False
        if "model" in when and body.get("model") != when["model"]:
            return False
        if "last_content_contains" in when:
            content = last.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            if when["last_content_contains"] not in text:
                return False
        return True

    return check


class Gate:
    """Where gated turns' streams wait: how often they have held here, and how often the test released."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.holds = 0
        self.releases = 0
        self._waiting: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def hold(self) -> None:
        """Count one more hold and wait (on the server's loop) until the test has released it."""
        loop, passed = asyncio.get_running_loop(), asyncio.Event()
        with self._changed:
            self.holds += 1
            self._changed.notify_all()
            if self.releases >= self.holds:
                return
            self._waiting.append((self.holds, loop, passed))
        await passed.wait()

    def release(self, everything: bool = False) -> None:
        with self._changed:
            self.releases = 1 << 30 if everything else self.releases + 1
            go = [w for w in self._waiting if w[0] <= self.releases]
            self._waiting = [w for w in self._waiting if w[0] > self.releases]
        for _, loop, passed in go:
            with contextlib.suppress(RuntimeError):  # the server has stopped meanwhile
                loop.call_soon_threadsafe(passed.set)

    def wait_held(self, hold: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.holds >= hold, timeout)


class Script:
    """What the server answers, and what it was sent. Thread-safe: tests mutate it from their thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: deque[Turn] = deque()
        self._rules: list[tuple[Predicate, Responder]] = []
        self.default: Responder = Turn.reply(DEFAULT_TEXT)
        self._requests: list[RecordedRequest] = []
        self._arrived = threading.Condition(self._lock)
        self.models: list[str] = list(DEFAULT_MODELS)
        # What `/models` says owns them, and other GET paths answered with JSON (a server's own
        # endpoints, e.g. llama.cpp's /props or Ollama's /api/version): to look like another server.
        self.owned_by = "fake"
        self.routes: dict[str, tuple[int, Any]] = {}
        self.record = True
        # Trickled responses being sent right now (a client that goes away ends its stream); changed only
        # on the server's own event loop.
        self.open_streams = 0
        self._gates: dict[str, Gate] = {}

    def gate(self, name: str) -> Gate:
        with self._lock:
            return self._gates.setdefault(name, Gate())

    def release(self, name: str) -> None:
        self.gate(name).release()

    def wait_held(self, name: str, hold: int = 1, timeout: float = 60.0) -> None:
        if not self.gate(name).wait_held(hold, timeout):
            raise TimeoutError(f"streams held at gate {name!r} fewer than {hold} times within {timeout}s")

    def push(self, *turns: Turn) -> None:
        with self._lock:
            self._turns.extend(turns)

    def add_rule(self, predicate: Predicate, responder: Responder) -> None:
        with self._lock:
            self._rules.append((predicate, responder))

    def reset(self) -> None:
        with self._lock:
            self._turns.clear()
            self._rules.clear()
            self._requests.clear()
            self.default = Turn.reply(DEFAULT_TEXT)
            self.models = list(DEFAULT_MODELS)
            for gate in self._gates.values():  # nothing stays held past a reset
                gate.release(everything=True)
            self._gates.clear()
            self.owned_by = "fake"
            self.routes = {}

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._turns)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def add_request(self, request: RecordedRequest) -> None:
        with self._lock:
            if self.record:
                self._requests.append(request)
            self._arrived.notify_all()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        with self._lock:
            if not self._arrived.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} requests arrived, expected {count}")
            return list(self._requests)

    def next_turn(self, body: JSON) -> Turn:
        with self._lock:
            if self._turns:
                return self._turns.popleft()
            rules = list(self._rules)
            default = self.default
        for predicate, responder in rules:
            if predicate(body):
                return responder if isinstance(responder, Turn) else responder(body)
        return default if isinstance(default, Turn) else default(body)


# ---------------------------------------------------------------------------------------------------
# Responses

_ids = itertools.count(1)


def _rough_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _usage(turn: Turn, body: JSON) -> JSON:
    if turn.usage is not None:
        prompt = int(turn.usage.get("prompt_tokens", 0))
        completion = int(turn.usage.get("completion_tokens", 0))
        extra = {k: v for k, v in turn.usage.items() if k not in ("prompt_tokens", "completion_tokens")}
    else:
        prompt = sum(
            4 + _rough_tokens(json.dumps(m.get("content")) if not isinstance(m.get("content"), str) else m["content"])
            for m in body.get("messages", [])
            if isinstance(m, dict)
        )
        completion = _rough_tokens(turn.text + turn.refusal + "".join(c.arguments_text for c in turn.tool_calls))
        extra = {}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, **extra}


def _pieces(text: str, size: int) -> list[str]:
    if not text:
        return []
    if size <= 0:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


def _finish_reason(turn: Turn) -> str:
    if turn.finish_reason:
        return turn.finish_reason
    return "tool_calls" if turn.tool_calls else "stop"


def _call_ids(turn: Turn, completion_id: int) -> list[str]:
    return [c.id or f"call_fake{completion_id}x{i}" for i, c in enumerate(turn.tool_calls)]


def sse_events(turn: Turn, body: JSON) -> list[bytes]:
    """The SSE events (each `data: …\\n\\n`) of a streamed reply, `[DONE]` included."""
    n = next(_ids)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    send_usage = include_usage if turn.send_usage is None else turn.send_usage
    head = f'{{"id":"chatcmpl-fake{n}","object":"chat.completion.chunk","created":{int(time.time())},'
    head += f'"model":{json.dumps(body.get("model", "fake"))},"system_fingerprint":"fp_fake",'
    tail = ',"usage":null}' if send_usage else "}"

    def event(delta: JSON, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f'data: {head}"choices":[{json.dumps(choice)}]{tail}\n\n'.encode()

    if turn.raw_chunks is not None:
        return [f"data: {json.dumps(c)}\n\n".encode() for c in turn.raw_chunks] + [b"data: [DONE]\n\n"]
    events = []
    if turn.refusal and not turn.text:
        events.append(event({"role": "assistant", "content": None, "refusal": ""}))
    else:
        events.append(event({"role": "assistant", "content": "", "refusal": None}))
    events += [event({"content": piece}) for piece in _pieces(turn.text, turn.chunk_size)]
    events += [event({"refusal": piece}) for piece in _pieces(turn.refusal, turn.chunk_size)]
    for i, (call, call_id) in enumerate(zip(turn.tool_calls, _call_ids(turn, n), strict=True)):
        first = {"index": i, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        events.append(event({"tool_calls": [first]}))
        for piece in _pieces(call.arguments_text, turn.arguments_chunk_size):
            events.append(event({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    if turn.stream_error is not None:
        events.append(f"data: {json.dumps({'error': turn.stream_error})}\n\n".encode())
        return events
    events.append(event({}, _finish_reason(turn)))
    if send_usage:
        usage = json.dumps(_usage(turn, body))
        events.append(f'data: {head}"choices":[],"usage":{usage}}}\n\n'.encode())
    events.append(b"data: [DONE]\n\n")
    return events


def completion_json(turn: Turn, body: JSON) -> JSON:
    n = next(_ids)
    message: JSON = {
        "role": "assistant",
        "content": turn.text or None,
        "refusal": turn.refusal or None,
        "annotations": [],
    }
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_text}}
            for c, call_id in zip(turn.tool_calls, _call_ids(turn, n), strict=True)
        ]
    return {
        "id": f"chatcmpl-fake{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(turn)}],
        "usage": _usage(turn, body),
    }


# ---------------------------------------------------------------------------------------------------
# The HTTP server (asyncio streams; small enough to add well under a millisecond per reply)

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}  # fmt: skip


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection:
    def __init__(self, script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.script = script
        self.reader = reader
        self.writer = writer

    async def serve(self) -> None:
        try:
            while await self._one():
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writer.close()

    async def _read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return method, target, headers, body

    async def _one(self) -> bool:
        request = await self._read_request()
        if request is None:
            return False
        method, target, headers, raw = request
        keep_alive = headers.get("connection", "").lower() != "close"
        url = urlsplit(target)
        path = url.path.rstrip("/")
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if path.startswith("/_fake/"):
            await self._control(method, path, body)
            return keep_alive
        self.script.add_request(RecordedRequest(method, url.path, dict(parse_qsl(url.query)), headers, body))
        if method == "POST" and path.endswith("/chat/completions") and isinstance(body, dict):
            return await self._chat(body) and keep_alive
        route = path if method == "GET" else f"{method} {path}"
        if route in self.script.routes:
            status, payload = self.script.routes[route]
            self._json(status, payload)
            return keep_alive
        if method == "GET" and path.endswith("/models"):
            owner = self.script.owned_by
            data = [{"id": m, "object": "model", "created": 0, "owned_by": owner} for m in self.script.models]
            self._json(200, {"object": "list", "data": data})
            return keep_alive
        self._json(404, {"error": {"message": f"No route {method} {path}", "type": "invalid_request_error"}})
        return keep_alive

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        all_headers = {"content-type": "application/json", "content-length": str(len(data)), **(headers or {})}
        self.writer.write(_head(status, all_headers) + data)

    async def _wait_for_client_to_leave(self) -> None:
        while await self.reader.read(4096):
            pass

    async def _chat(self, body: JSON) -> bool:
        turn = self.script.next_turn(body)
        if turn.delay_s:
            await asyncio.sleep(turn.delay_s)
        if turn.hang_after == 0:
            await self._wait_for_client_to_leave()
            return False
        if turn.status != 200:
            payload = turn.error_body or {"error": {"message": f"HTTP {turn.status}", "type": "server_error"}}
            self._json(turn.status, payload, turn.headers)
            return True
        if not body.get("stream"):
            self._json(200, completion_json(turn, body), turn.headers)
            return True
        events = sse_events(turn, body)
        head = _head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked", **turn.headers})
        stop_at = min(x for x in (turn.hang_after, turn.disconnect_after, turn.end_after, len(events)) if x is not None)
        gate = self.script.gate(turn.gate) if turn.gate is not None else None
        holds = {turn.gate_after} if isinstance(turn.gate_after, int) else set(turn.gate_after)
        if not turn.chunk_delay_s and gate is None:
            self.writer.write(head + b"".join(_chunked(e) for e in events[:stop_at]))
        else:
            self.writer.write(head)
            self.script.open_streams += 1
            try:
                for i, event in enumerate(events[:stop_at]):
                    if gate is not None and i in holds:
                        await self.writer.drain()
                        await gate.hold()
                    elif i and turn.chunk_delay_s:
                        await asyncio.sleep(turn.chunk_delay_s)
                    self.writer.write(_chunked(event))
                    await self.writer.drain()
            finally:
                self.script.open_streams -= 1
        await self.writer.drain()
        if stop_at < len(events) and turn.end_after != stop_at:
            if turn.hang_after is not None and turn.hang_after == stop_at:
                await self._wait_for_client_to_leave()
            else:
                self.writer.transport.abort()
            return False
        self.writer.write(b"0\r\n\r\n")
        return True

    async def _control(self, method: str, path: str, body: Any) -> None:
        script = self.script
        if path == "/_fake/turns" and method == "POST":
            script.push(*(Turn.from_dict(t) for t in body))
        elif path == "/_fake/default" and method == "POST":
            script.default = Turn.from_dict(body)
        elif path == "/_fake/rules" and method == "POST":
            script.add_rule(declarative_predicate(body["when"]), Turn.from_dict(body["turn"]))
        elif path == "/_fake/reset" and method == "POST":
            script.reset()
        elif path == "/_fake/release" and method == "POST":
            script.release(body["gate"])
        elif path == "/_fake/requests" and method == "GET":
            self._json(200, [r.to_dict() for r in script.requests])
            return
        elif path == "/_fake/pending" and method == "GET":
            self._json(200, {"pending": script.pending})
            return
        else:
            self._json(404, {"error": {"message": f"No control route {method} {path}"}})
            return
        self._json(200, {"ok": True})


class _Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await _Connection(self.script, reader, writer).serve()
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self.tasks.discard(task)

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=64 * 1024 * 1024, backlog=1024)

    async def close(self, server: asyncio.Server) -> None:
        server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await server.wait_closed()


def apply_script_file(script: Script, data: JSON) -> None:
    script.push(*(Turn.from_dict(t) for t in data.get("turns", [])))
    if "default" in data:
        script.default = Turn.from_dict(data["default"])
    for rule in data.get("rules", []):
        script.add_rule(declarative_predicate(rule["when"]), Turn.from_dict(rule["turn"]))
    if "models" in data:
        script.models = list(data["models"])


# ---------------------------------------------------------------------------------------------------
# In-process: a thread with its own event loop


class FakeUpstream:
    """The fake on a background thread. Usable from sync and async tests alike."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.script = Script()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._impl = _Server(self.script)

    # lifecycle
    def start(self) -> FakeUpstream:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(self._impl.start(self.host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None or self._thread is None:
            return
        loop, server = self._loop, self._server
        asyncio.run_coroutine_threadsafe(self._impl.close(server), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._loop = self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addresses
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to give an OpenAI client as `base_url`."""
        return f"{self.url}/v1"

    # scripting
    def push(self, *turns: Turn) -> None:
        self.script.push(*turns)

    def set_default(self, turn: Responder) -> None:
        self.script.default = turn

    def add_rule(self, predicate: Predicate | JSON, responder: Responder) -> None:
        self.script.add_rule(declarative_predicate(predicate) if isinstance(predicate, dict) else predicate, responder)

    def set_models(self, models: list[str], owned_by: str = "fake") -> None:
        self.script.models = list(models)
        self.script.owned_by = owned_by

    def set_route(self, path: str, payload: Any, status: int = 200) -> None:
        """Answer `GET path` (or `"POST /path"`: that method) with this status and JSON (until `reset`;
        before the built-in `/models`)."""
        self.script.routes[path] = (status, payload)

    def reset(self) -> None:
        self.script.reset()

    @property
    def pending(self) -> int:
        return self.script.pending

    def wait_held(self, gate: str, hold: int = 1, timeout: float = 60.0) -> None:
        """Block until streams scripted with this gate have held `hold` times in all (the first: 1)."""
        self.script.wait_held(gate, hold, timeout)

    def release(self, gate: str) -> None:
        """Let the stream held at this gate (or the next hold to come) go on to its next hold or its end."""
        self.script.release(gate)

    # what it was sent
    @property
    def requests(self) -> list[RecordedRequest]:
        return self.script.requests

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.script.requests if r.path.endswith("/chat/completions")]

    @property
    def last_request(self) -> RecordedRequest:
        requests = self.chat_requests
        if not requests:
            raise AssertionError("the fake upstream received no chat request")
        return requests[-1]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        return self.script.wait_for_requests(count, timeout)

    @property
    def open_streams(self) -> int:
        """Trickled responses (`chunk_delay_s`) still being sent: the client has not gone away."""
        return self.script.open_streams


# ---------------------------------------------------------------------------------------------------
# Out of process


class FakeUpstreamProcess:
    """The fake as a child process (`python -m tests.fakes.upstream`), scripted over HTTP.

    Only declarative rules ({"last_role": "tool"} …) cross the process boundary."""

    def __init__(self, script_file: Path | None = None, port: int = 0, *, record: bool = True) -> None:
        self.script_file = script_file
        self.port = port
        self.record = record
        self._process: subprocess.Popen[str] | None = None
        self._http: httpx.Client | None = None

    def start(self) -> FakeUpstreamProcess:
        root = Path(__file__).resolve().parents[2]
        args = [sys.executable, "-m", "tests.fakes.upstream", "--port", str(self.port)]
        if self.script_file is not None:
            args += ["--script", str(self.script_file)]
        if not self.record:
            args.append("--no-record")
        self._process = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self._http = httpx.Client(base_url=self.url, timeout=10)
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def __enter__(self) -> FakeUpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _post(self, path: str, payload: Any) -> None:
        assert self._http is not None, "not started"
        self._http.post(path, json=payload).raise_for_status()

    def push(self, *turns: Turn) -> None:
        self._post("/_fake/turns", [t.to_dict() for t in turns])

    def set_default(self, turn: Turn) -> None:
        self._post("/_fake/default", turn.to_dict())

    def add_rule(self, when: JSON, turn: Turn) -> None:
        self._post("/_fake/rules", {"when": when, "turn": turn.to_dict()})

    def reset(self) -> None:
        self._post("/_fake/reset", {})

    def release(self, gate: str) -> None:
        self._post("/_fake/release", {"gate": gate})

    @property
    def requests(self) -> list[RecordedRequest]:
        assert self._http is not None, "not started"
        response = self._http.get("/_fake/requests")
        response.raise_for_status()
        return [RecordedRequest(**r) for r in response.json()]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible upstream for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", type=Path, help='JSON: {"turns", "default", "rules", "models"}')
    parser.add_argument("--no-record", action="store_true", help="keep no request log (long benchmarks)")
    args = parser.parse_args(argv)

    script = Script()
    script.record = not args.no_record
    if args.script is not None:
        apply_script_file(script, json.loads(args.script.read_text()))

    async def serve() -> None:
        server = await _Server(script).start(args.host, args.port)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve())


if __name__ == "__main__":
    main()
