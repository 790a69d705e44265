"""Assistants: tools, tool resources, response formats, and the create/modify requests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from loom.schemas.common import UNION_EXPECTATIONS, Metadata, Request, openai_error, tagged


class RankingOptions(Request):
    ranker: Literal["auto", "default_2024_08_21"] | None = None
    score_threshold: Annotated[float, Field(ge=0, le=1)]


class FileSearchOptions(Request):
    max_num_results: Annotated[int, Field(ge=1, le=50)] | None = None
    ranking_options: RankingOptions | None = None


class FunctionDefinition(Request):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$", max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CodeInterpreterTool(Request):
    type: Literal["code_interpreter"]


class FileSearchTool(Request):
    type: Literal["file_search"]
    file_search: FileSearchOptions | None = None


class FunctionTool(Request):
    type: Literal["function"]
    function: FunctionDefinition


Tool = Annotated[
    Annotated[CodeInterpreterTool, Tag("~code_interpreter")]
    | Annotated[FileSearchTool, Tag("~file_search")]
    | Annotated[FunctionTool, Tag("~function")],
    Discriminator(tagged()),
]


def tool_wire(tool: CodeInterpreterTool | FileSearchTool | FunctionTool) -> dict[str, Any]:
    """A tool as OpenAI echoed it back, defaults filled in."""
    if isinstance(tool, FunctionTool):
        fn: dict[str, Any] = {"name": tool.function.name}
        if tool.function.description is not None:
            fn["description"] = tool.function.description
        if tool.function.parameters is not None:
            fn["parameters"] = tool.function.parameters
        fn["strict"] = bool(tool.function.strict)
        return {"type": "function", "function": fn}
    if isinstance(tool, FileSearchTool):
        options = tool.file_search or FileSearchOptions()
        ranking = options.ranking_options
        fs: dict[str, Any] = {
            "ranking_options": {
                "ranker": "default_2024_08_21"
                if ranking is None or ranking.ranker in (None, "auto")
                else ranking.ranker,
                "score_threshold": ranking.score_threshold if ranking is not None else 0.0,
            }
        }
        if options.max_num_results is not None:
            fs["max_num_results"] = options.max_num_results
        return {"type": "file_search", "file_search": fs}
    return {"type": "code_interpreter"}


class JsonSchemaFormat(Request):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$", max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(Request):
    type: Literal["text"]


class JsonObjectFormat(Request):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


def _format_tag(value: object) -> str | None:
    if isinstance(value, str):
        return "~auto"
    return tagged()(value)


UNION_EXPECTATIONS["_format_tag"] = "one of a string or object"


ResponseFormat = Annotated[
    Annotated[Literal["auto"], Tag("~auto")]
    | Annotated[TextFormat, Tag("~text")]
    | Annotated[JsonObjectFormat, Tag("~json_object")]
    | Annotated[JsonSchemaResponseFormat, Tag("~json_schema")],
    Discriminator(_format_tag),
]


def response_format_wire(fmt: object) -> Any:
    if fmt is None or fmt == "auto":
        return "auto"
    if isinstance(fmt, JsonSchemaResponseFormat):
        js: dict[str, Any] = {"name": fmt.json_schema.name}
        if fmt.json_schema.description is not None:
            js["description"] = fmt.json_schema.description
        if fmt.json_schema.schema_ is not None:
            js["schema"] = fmt.json_schema.schema_
        js["strict"] = bool(fmt.json_schema.strict)
        return {"type": "json_schema", "json_schema": js}
    if isinstance(fmt, TextFormat | JsonObjectFormat):
        return {"type": fmt.type}
    return "auto"


class CodeInterpreterResources(Request):
    file_ids: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)


class ChunkingAuto(Request):
    type: Literal["auto"]


class StaticChunking(Request):
    max_chunk_size_tokens: Annotated[int, Field(ge=100, le=4096)]
    chunk_overlap_tokens: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _overlap(self) -> StaticChunking:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise openai_error(
                "Invalid 'chunk_overlap_tokens': must not exceed half of 'max_chunk_size_tokens'.",
                "chunking_strategy.static.chunk_overlap_tokens",
                "invalid_value",
            )
        return self


class ChunkingStatic(Request):
    type: Literal["static"]
    static: StaticChunking


ChunkingStrategy = Annotated[
    Annotated[ChunkingAuto, Tag("~auto")] | Annotated[ChunkingStatic, Tag("~static")],
    Discriminator(tagged()),
]


class VectorStoreHelper(Request):
    file_ids: Annotated[list[str], Field(max_length=10000)] = Field(default_factory=list)
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata = None


class FileSearchResources(Request):
    vector_store_ids: Annotated[list[str], Field(max_length=1)] | None = None
    vector_stores: Annotated[list[VectorStoreHelper], Field(max_length=1)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> FileSearchResources:
        if self.vector_store_ids is not None and self.vector_stores is not None:
            raise openai_error(
                "Invalid 'tool_resources.file_search': only one of 'vector_store_ids' or 'vector_stores' "
                "may be provided.",
                "tool_resources.file_search",
                "invalid_value",
            )
        return self


class ToolResources(Request):
    code_interpreter: CodeInterpreterResources | None = None
    file_search: FileSearchResources | None = None


class FileSearchResourcesUpdate(Request):
    vector_store_ids: Annotated[list[str], Field(max_length=1)] | None = None


class ToolResourcesUpdate(Request):
    code_interpreter: CodeInterpreterResources | None = None
    file_search: FileSearchResourcesUpdate | None = None


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]


class AssistantCreate(Request):
    model: str
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: Annotated[str, Field(max_length=256_000)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_resources: ToolResources | None = None
    metadata: Metadata = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: ReasoningEffort | None = None


class AssistantModify(Request):
    model: str | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: Annotated[str, Field(max_length=256_000)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_resources: ToolResourcesUpdate | None = None
    metadata: Metadata = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: ReasoningEffort | None = None
