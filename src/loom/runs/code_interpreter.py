"""The code interpreter tool: the model's Python runs in the thread's sandbox session.

The session (one per thread) keeps variables between calls and runs. Before each execution the files
of the assistant's and thread's `tool_resources.code_interpreter` and of the thread's messages'
code-interpreter attachments are put in `/mnt/data` under their file names. Images the code shows
become Files (purpose `assistants_output`) and `image` outputs; files the code writes to `/mnt/data`
become Files only when the answer links them (`sandbox:/mnt/data/x.csv` → a `file_path` annotation),
copied to the file store a chunk at a time, at most `sandbox_max_output_files` per answer and each at most
`sandbox_max_output_file_mb`. The tool's output names the files an execution wrote (as many), and says
what was left out.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import sqlalchemy as sa

from loom.config import Settings
from loom.llm.types import ChatTool, ToolCall
from loom.runs.code_sessions import CodeSessions
from loom.runs.options import execution_timeout_s
from loom.runs.tools import Citation, EmitDelta, ToolContext, ToolResult
from loom.sandbox.types import DATA_DIR, SandboxUnavailable
from loom.store import tables
from loom.store.db import Database

_DESCRIPTION = (
    "Run Python code in a stateful Jupyter kernel (variables persist between calls). Files the user gave "
    f"are in {DATA_DIR}; save files you create there and link them as sandbox:{DATA_DIR}/<name>. "
    "numpy, pandas, matplotlib, scipy, sympy, openpyxl and pillow are installed. There is no internet access. "
    "Show charts with matplotlib (plt.show())."
)


_LINK = re.compile(r"sandbox:/mnt/data/[^\s()\[\]<>\"'`]+")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


class CodeDecoder:
    """Decodes the `code` value of `{"code": "…"}` arguments incrementally, fragment by fragment.

    `feed` returns the code text decoded so far from the new fragment; an escape (`\\n`, `\\"`,
    `\\uXXXX`, a surrogate pair) split across fragments is held until it is complete. The result never
    depends on where the fragments were cut. When the arguments do not start like `{"code": "` (raw code,
    another key first), `matched` stays False and nothing is ever returned: the caller falls back to
    the whole arguments. Lenient where models are sloppy: raw newlines inside the string are kept.
    """

    def __init__(self) -> None:
        self.matched = False
        self.failed = False
        self.done = False
        self._head = ""
        self._escape = ""
        self._high: int | None = None  # a high surrogate waiting for its low half
        self.text = ""

    def _match_head(self) -> int | None:
        """The index just after the string's opening quote; None while undecided; -1 when it is not."""
        buf = self._head
        i = _skip_space(buf, 0)
        for token in ("{", '"code"', ":", '"'):
            for ch in token:
                if i == len(buf):
                    return None
                if buf[i] != ch:
                    return -1
                i += 1
            i = _skip_space(buf, i) if token != '"' else i
        return i

    def feed(self, fragment: str) -> str:
        if self.failed or self.done:
            return ""
        if not self.matched:
            self._head += fragment
            start = self._match_head()
            if start is None:
                return ""
            if start < 0:
                self.failed = True
                self._head = ""
                return ""
            self.matched = True
            fragment, self._head = self._head[start:], ""
        out: list[str] = []
        for ch in fragment:
            if self._escape:
                self._escape += ch
                if self._escape[1] == "u":
                    if len(self._escape) == 6:
                        digits, self._escape = self._escape[2:], ""
                        try:
                            self._unit(int(digits, 16), out)
                        except ValueError:
                            self._char("\ufffd", out)
                else:
                    kind, self._escape = self._escape[1], ""
                    self._char(_ESCAPES.get(kind, kind), out)
            elif ch == "\\":
                self._escape = ch
            elif ch == '"':
                self._char("", out)
                self.done = True
                break
            else:
                self._char(ch, out)
        piece = "".join(out)
        self.text += piece
        return piece

    def finish(self) -> str:
        """What is left once the arguments are complete (a lone high surrogate at the very end)."""
        if not self.matched or self.done:
            return ""
        out: list[str] = []
        self._char("", out)
        self.done = True
        piece = "".join(out)
        self.text += piece
        return piece

    def _char(self, ch: str, out: list[str]) -> None:
        if self._high is not None:
            out.append("\ufffd")  # a high surrogate not followed by a low one
            self._high = None
        out.append(ch)

    def _unit(self, unit: int, out: list[str]) -> None:
        if 0xD800 <= unit < 0xDC00:
            self._char("", out)
            self._high = unit
        elif 0xDC00 <= unit < 0xE000:
            if self._high is None:
                out.append("\ufffd")
            else:
                out.append(chr(0x10000 + ((self._high - 0xD800) << 10) + (unit - 0xDC00)))
                self._high = None
        else:
            self._char(chr(unit), out)


def code_from_arguments(arguments: str) -> str:
    """The `code` argument; models sometimes send the code itself instead of JSON.

    Decoded exactly as the streamed deltas decoded it (`CodeDecoder`), so that the input shown piece by
    piece is the input that runs."""
    decoder = CodeDecoder()
    decoder.feed(arguments)
    if decoder.matched:
        decoder.finish()
        return decoder.text
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return arguments
    if isinstance(value, dict):
        code = value.get("code", value.get("input", ""))
        return code if isinstance(code, str) else ""
    return value if isinstance(value, str) else arguments


class CodeInputStream:
    """The step deltas of one call's `code_interpreter.input` while the model writes it.

    The executor sends `opening()` once when the call appears, `feed(fragment)` for each arguments
    fragment, and `close(arguments)` when the call is complete; each returns a tool-call delta without
    its `index` (or None when there is nothing new). The pieces concatenate to the step's final input."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.decoder = CodeDecoder()

    def opening(self) -> dict[str, Any]:
        return {"id": self.call_id, "type": "code_interpreter", "code_interpreter": {"input": "", "outputs": []}}

    @staticmethod
    def _delta(text: str) -> dict[str, Any] | None:
        return {"type": "code_interpreter", "code_interpreter": {"input": text}} if text else None

    def feed(self, fragment: str) -> dict[str, Any] | None:
        return self._delta(self.decoder.feed(fragment))

    def close(self, arguments: str) -> dict[str, Any] | None:
        if self.decoder.matched:
            return self._delta(self.decoder.finish())
        # Raw code (or JSON of another shape): nothing was streamed; the whole input now.
        return self._delta(code_from_arguments(arguments))


def _logs_delta(text: str) -> dict[str, Any]:
    return {"type": "code_interpreter", "code_interpreter": {"outputs": [{"index": 0, "type": "logs", "logs": text}]}}


class LogStream:
    """The text an execution prints, sent while it runs as deltas of the call's first output (`logs`),
    the pieces that came meanwhile joined into one delta; `sent` is what was sent (the start of the
    final logs, whose rest follows at the end)."""

    def __init__(self, emit: EmitDelta) -> None:
        self._emit = emit
        self.sent = ""
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def push(self, text: str) -> None:
        self._pending.append(text)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self.sent += text
                await self._emit(_logs_delta(text))
            if self._closed:
                return

    async def close(self) -> None:
        """Send what is left to send, and stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task


class CodeInterpreterTool:
    type = "code_interpreter"
    interruptible = False
    function_name = "code_interpreter"
    # The executor streams the input while the model writes it (`argument_stream`), so `execute` only
    # adds the outputs: the call's first delta (id, type) and the input are never sent twice.

    def __init__(self, sessions: CodeSessions, db: Database, settings: Settings) -> None:
        self.sessions = sessions
        self.db = db
        # One execution at a time per thread (its files in and out with it) is the sessions' rule
        # (`CodeSessions`): runs of a thread with concurrent runs take turns, never interleaving in its kernel.
        self.settings = settings
        self.max_output_files = max(1, settings.sandbox_max_output_files)
        self.max_output_file_bytes = min(settings.sandbox_max_output_file_mb * 1024 * 1024, settings.max_file_bytes)

    def chat_tool(self, ctx: ToolContext, tool: dict[str, Any]) -> ChatTool:
        return {
            "type": "function",
            "function": {
                "name": self.function_name,
                "description": _DESCRIPTION,
                "parameters": {
                    "type": "object",
                    "properties": {"code": {"type": "string", "description": "The Python code to run."}},
                    "required": ["code"],
                },
            },
        }

    def argument_stream(self, call_id: str) -> CodeInputStream:
        return CodeInputStream(call_id)

    async def _input_file_ids(self, ctx: ToolContext) -> list[str]:
        ids: list[str] = []
        for owner in (ctx.assistant, ctx.thread):
            ids += (owner.get("tool_resources") or {}).get("code_interpreter", {}).get("file_ids", [])
        m = tables.messages
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(m.c.data).where(m.c.thread_id == ctx.thread["id"]))).all()
        for (message,) in rows:
            for attachment in message.get("attachments") or []:
                if any(t.get("type") == "code_interpreter" for t in attachment.get("tools", [])):
                    ids.append(attachment["file_id"])
        return list(dict.fromkeys(ids))

    async def execute(
        self, ctx: ToolContext, tool: dict[str, Any], call: ToolCall, index: int, emit: EmitDelta
    ) -> ToolResult:
        # The call's first delta and its input were streamed by the executor (`StreamsArguments`).
        code = code_from_arguments(call.arguments)
        timeout = execution_timeout_s(self.settings, ctx.run, ctx.assistant)
        streamed = LogStream(emit)
        try:
            result = await self.sessions.execute(
                ctx.project,
                ctx.thread["id"],
                code,
                await self._input_file_ids(ctx),
                call.id,
                timeout_s=timeout,
                on_text=streamed.push,
            )
        except SandboxUnavailable as exc:
            await streamed.close()
            text = f"The code interpreter is unavailable: {exc.message}"
            await emit(_logs_delta(text))
            return ToolResult(
                output=text, details={"code_interpreter": {"input": code, "outputs": [{"type": "logs", "logs": text}]}}
            )
        finally:
            await streamed.close()

        outputs: list[dict[str, Any]] = []
        images = result.image_file_ids
        model_notes: list[str] = []
        logs = result.logs
        if logs:
            outputs.append({"type": "logs", "logs": logs})
        for image_id in images:
            outputs.append({"type": "image", "image": {"file_id": image_id}})
            model_notes.append(f"[an image was displayed to the user: file {image_id}]")
        # What was not streamed yet: the rest of the logs (truncation, notices), then the images.
        unsent = [{"index": i, **o} for i, o in enumerate(outputs)]
        if logs and streamed.sent and logs.startswith(streamed.sent):
            rest = logs[len(streamed.sent) :]
            unsent = ([{"index": 0, "type": "logs", "logs": rest}] if rest else []) + unsent[1:]
        if unsent:
            await emit({"type": "code_interpreter", "code_interpreter": {"outputs": unsent}})
        # Written files are only named here; those the answer links become Files then (`link_files`).
        written = result.written
        for path, size in written[: self.max_output_files]:
            if size > self.max_output_file_bytes:
                model_notes.append(
                    f"[file written: sandbox:{path} ({_mb(size)}), over the {_mb(self.max_output_file_bytes)} "
                    "limit for files given to the user: it cannot be linked]"
                )
            else:
                model_notes.append(f"[file written: sandbox:{path}]")
        if len(written) > self.max_output_files:
            model_notes.append(
                f"[... and {len(written) - self.max_output_files} more files written, not listed; at most "
                f"{self.max_output_files} linked files are given to the user per answer]"
            )
        output = logs or ("(no output)" if result.status == "ok" else "")
        if model_notes:
            output = output + "\n" + "\n".join(model_notes)
        return ToolResult(
            output=output,
            details={"code_interpreter": {"input": code, "outputs": outputs}},
            image_file_ids=images,
        )

    async def link_files(self, ctx: ToolContext, text: str, known: set[str]) -> list[Citation]:
        """Files of the thread's session that `text` links (`sandbox:/mnt/data/x`), made Files now:
        streamed to the file store, at most `max_output_files`, each at most `max_output_file_bytes`."""
        links = list(dict.fromkeys(m.group(0).rstrip(".,;:!?*_") for m in _LINK.finditer(text)))
        wanted = [x for x in links if x not in known][: self.max_output_files]
        if not wanted:
            return []
        made = await self.sessions.export(ctx.project, ctx.thread["id"], wanted, self.max_output_file_bytes)
        return [Citation(kind="file_path", text=link, file_id=file_id) for link, file_id in made]
