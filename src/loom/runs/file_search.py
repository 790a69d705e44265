"""The `file_search` server tool: the model searches the assistant's and the thread's vector stores.

The model sees a function `file_search(queries: string[])`. Results go back to it as passages headed
by source markers in OpenAI's style, `【{message_idx}:{result_idx}†{filename}】`; every marker is a
`Citation`, so an answer quoting one gets a `file_citation` annotation. The step records
`ranking_options` and `results` (`file_id`, `file_name`, `score`, `content`); the API strips
`content` unless `include[]` asks for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from loom.llm.types import ChatTool, ToolCall
from loom.runs.ports import VectorSearch
from loom.runs.tools import Citation, EmitDelta, ToolContext, ToolResult

DEFAULT_RANKER = "default_2024_08_21"
# A marker `【{message_idx}:{result_idx}†{filename}】`, and the scratch key of the next message index.
_MARKER = re.compile(r"【(\d+):\d+†")
_NEXT_MESSAGE = "file_search.next_message"
_DESCRIPTION = (
    "Search the files the user uploaded (and the assistant's knowledge files) for passages relevant to the "
    "conversation. Give one or more search queries; rephrase the user's question into self-contained queries. "
    "Each passage comes with a source marker like 【0:1†name】: when the answer uses a passage, cite it by "
    "writing its marker exactly as given."
)


def default_max_results(model: str) -> int:
    """OpenAI's defaults: 20 results, 5 for gpt-3.5 models."""
    return 5 if model.startswith("gpt-3.5") else 20


def store_ids(ctx: ToolContext) -> list[str]:
    """The assistant's stores, then the thread's (a run searches both)."""
    found: list[str] = []
    for owner in (ctx.assistant, ctx.thread):
        fs = (owner.get("tool_resources") or {}).get("file_search") or {}
        found += list(fs.get("vector_store_ids") or [])
    return list(dict.fromkeys(found))


def _queries(arguments: str) -> list[str]:
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return [arguments] if arguments.strip() else []
    if not isinstance(args, dict):
        return []
    raw = args.get("queries", args.get("query"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    return [q for q in (str(x) for x in raw) if q.strip()]


class FileSearchTool:
    type = "file_search"
    interruptible = True
    function_name = "file_search"

    def __init__(self, service: VectorSearch, wait_s: float = 60.0) -> None:
        self.service = service
        self.wait_s = wait_s

    def chat_tool(self, ctx: ToolContext, tool: dict[str, Any]) -> ChatTool:
        return {
            "type": "function",
            "function": {
                "name": self.function_name,
                "description": _DESCRIPTION,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "queries": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "One or more search queries.",
                        }
                    },
                    "required": ["queries"],
                },
            },
        }

    @staticmethod
    def _message_index(ctx: ToolContext) -> int:
        """Tool messages of a run are numbered so that markers stay unique within the run. The
        number goes on from the markers the stored run already cites, so an execution resumed in
        another process (after `requires_action`, a restart) never numbers from 0 again."""
        n = ctx.scratch.get(_NEXT_MESSAGE)
        if n is None:
            n = next_message_index(ctx.cited)
        ctx.scratch[_NEXT_MESSAGE] = n + 1
        return int(n)

    async def execute(
        self, ctx: ToolContext, tool: dict[str, Any], call: ToolCall, index: int, emit: EmitDelta
    ) -> ToolResult:
        # "For now, this is always going to be an empty object": the delta that makes SDK callbacks fire.
        await emit({"id": call.id, "type": "file_search", "file_search": {}})
        options = tool.get("file_search") or {}
        ranking = dict(options.get("ranking_options") or {})
        ranking = {
            "ranker": ranking.get("ranker") or DEFAULT_RANKER,
            "score_threshold": float(ranking.get("score_threshold") or 0.0),
        }
        if ranking["ranker"] == "auto":
            ranking["ranker"] = DEFAULT_RANKER
        max_results = options.get("max_num_results") or default_max_results(str(ctx.run.get("model", "")))
        queries = _queries(call.arguments)
        stores = store_ids(ctx)
        results = (
            await self.service.search_for_run(
                ctx.project,
                stores,
                queries,
                max_num_results=int(max_results),
                score_threshold=ranking["score_threshold"],
                ranker=ranking["ranker"],
                wait_s=self.wait_s,
            )
            if queries and stores
            else []
        )
        message_idx = self._message_index(ctx)
        citations: list[Citation] = []
        passages: list[str] = []
        wire_results: list[dict[str, Any]] = []
        for i, r in enumerate(results):
            marker = f"【{message_idx}:{i}†{r.filename}】"
            citations.append(Citation(kind="file_citation", text=marker, file_id=r.file_id))
            passages.append(f"{marker}\n{r.text}")
            wire_results.append(
                {
                    "file_id": r.file_id,
                    "file_name": r.filename,
                    "score": r.score,
                    "content": [{"type": "text", "text": r.text}],
                }
            )
        return ToolResult(
            output=_output(queries, stores, passages),
            details={"file_search": {"ranking_options": ranking, "results": wire_results}},
            citations=citations,
        )


def next_message_index(stored_citations: Sequence[dict[str, Any]]) -> int:
    """One past the highest message number of the file-search markers a run has cited so far."""
    used = [
        int(m.group(1))
        for c in stored_citations
        if c.get("kind") == "file_citation" and (m := _MARKER.match(str(c.get("text", "")))) is not None
    ]
    return max(used, default=-1) + 1


def _output(queries: Sequence[str], stores: Sequence[str], passages: Sequence[str]) -> str:
    if not stores:
        return "No files are available to search."
    if not queries:
        return 'No query was given. Call file_search with {"queries": ["..."]}.'
    if not passages:
        return "The search found nothing relevant in the files."
    head = (
        "Passages from the files, best first. Cite a passage you use by writing its marker "
        "(for example " + passages[0].split("\n", 1)[0] + ") right after the statement it supports.\n\n"
    )
    return head + "\n\n".join(passages)
