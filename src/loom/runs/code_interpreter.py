"""The code interpreter tool: the model's Python runs in the thread's sandbox session.

The session (one per thread) keeps variables between calls and runs. Before each execution the files
of the assistant's and thread's `tool_resources.code_interpreter` and of the thread's messages'
code-interpreter attachments are put in `/mnt/data` under their file names. Images the code shows
become Files (purpose `assistants_output`) and `image` outputs; files the code writes to `/mnt/data`
become Files when the answer links them (`sandbox:/mnt/data/x.csv` → a `file_path` annotation).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa

from loom.errors import LoomError
from loom.llm.types import ChatTool, ToolCall
from loom.runs.tools import Citation, EmitDelta, ToolContext, ToolResult
from loom.sandbox.types import DATA_DIR, SandboxProvider, SandboxUnavailable
from loom.services.files import FileService
from loom.store import tables
from loom.store.db import Database

log = logging.getLogger("loom.runs")

_DESCRIPTION = (
    "Run Python code in a stateful Jupyter kernel (variables persist between calls). Files the user gave "
    f"are in {DATA_DIR}; save files you create there and link them as sandbox:{DATA_DIR}/<name>. "
    "numpy, pandas, matplotlib, scipy, sympy, openpyxl and pillow are installed. There is no internet access. "
    "Show charts with matplotlib (plt.show())."
)


def code_from_arguments(arguments: str) -> str:
    """The `code` argument; models sometimes send the code itself instead of JSON."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return arguments
    if isinstance(value, dict):
        code = value.get("code", value.get("input", ""))
        return code if isinstance(code, str) else ""
    return value if isinstance(value, str) else arguments


class CodeInterpreterTool:
    type = "code_interpreter"
    function_name = "code_interpreter"

    def __init__(self, sandbox: SandboxProvider, files: FileService, db: Database) -> None:
        self.sandbox = sandbox
        self.files = files
        self.db = db

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
        code = code_from_arguments(call.arguments)
        await emit({"id": call.id, "type": "code_interpreter", "code_interpreter": {"input": "", "outputs": []}})
        if code:
            await emit({"type": "code_interpreter", "code_interpreter": {"input": code}})
        try:
            session = await self.sandbox.session(ctx.thread["id"])
            present = {f.name: f for f in await session.list_files()}
            for file_id in await self._input_file_ids(ctx):
                try:
                    meta = await self.files.get(ctx.project, file_id)
                except Exception:
                    continue
                if meta["filename"] not in present:
                    path = await self.files.path(ctx.project, file_id)
                    await session.put_file(meta["filename"], path.read_bytes())
            before = {f.path: f.mtime for f in await session.list_files()}
            result = await session.execute(code)
            after = await session.list_files()
        except SandboxUnavailable as exc:
            text = f"The code interpreter is unavailable: {exc.message}"
            await emit(
                {
                    "type": "code_interpreter",
                    "code_interpreter": {"outputs": [{"index": 0, "type": "logs", "logs": text}]},
                }
            )
            return ToolResult(
                output=text, details={"code_interpreter": {"input": code, "outputs": [{"type": "logs", "logs": text}]}}
            )

        outputs: list[dict[str, Any]] = []
        images: list[str] = []
        model_notes: list[str] = []
        logs = result.logs
        if logs:
            outputs.append({"type": "logs", "logs": logs})
        for n, png in enumerate(result.images):
            image = await self.files.create_output(ctx.project, f"{call.id}-image-{n}.png", png)
            outputs.append({"type": "image", "image": {"file_id": image["id"]}})
            images.append(image["id"])
            model_notes.append(f"[an image was displayed to the user: file {image['id']}]")
        if outputs:
            await emit(
                {
                    "type": "code_interpreter",
                    "code_interpreter": {"outputs": [{"index": i, **o} for i, o in enumerate(outputs)]},
                }
            )
        citations: list[Citation] = []
        for f in after:
            if before.get(f.path) == f.mtime:
                continue
            try:
                data = await session.read_file(f.path)
            except LoomError as exc:  # too large, or a link the code planted
                model_notes.append(f"[file sandbox:{f.path} could not be returned: {exc.message}]")
                continue
            made = await self.files.create_output(ctx.project, f.name, data)
            citations.append(Citation(kind="file_path", text=f"sandbox:{f.path}", file_id=made["id"]))
            model_notes.append(f"[file written: sandbox:{f.path}]")
        output = logs or ("(no output)" if result.status == "ok" else "")
        if model_notes:
            output = output + "\n" + "\n".join(model_notes)
        return ToolResult(
            output=output,
            details={"code_interpreter": {"input": code, "outputs": outputs}},
            citations=citations,
            image_file_ids=images,
        )
