"""Vector stores, their files and file batches, and search: the request models (CONFORMANCE §3.7–§3.10).

`chunking_strategy` and `filters` stay raw here: `loom.retrieval` validates them with OpenAI's wording
(`parse_chunking_strategy`, `parse_filter`), so there is one validator for each, not two.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from loom.schemas.common import Metadata, Request, key_value_map, openai_error


class ExpiresAfter(Request):
    anchor: Literal["last_active_at"]
    days: Annotated[int, Field(ge=1, le=365)]


# `VectorStoreFileAttributes`: values are strings (≤512), numbers or booleans.
Attributes = Annotated[
    dict[str, Any] | None,
    BeforeValidator(key_value_map("attributes", (str, int, float, bool), "a string, number or boolean")),
]


class VectorStoreCreate(Request):
    file_ids: Annotated[list[str], Field(max_length=500)] | None = None
    name: str | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    expires_after: ExpiresAfter | None = None
    chunking_strategy: dict[str, Any] | None = None
    metadata: Metadata = None


class VectorStoreModify(Request):
    name: str | None = None
    expires_after: ExpiresAfter | None = None
    metadata: Metadata = None


class VectorStoreFileCreate(Request):
    file_id: str
    chunking_strategy: dict[str, Any] | None = None
    attributes: Attributes = None


class VectorStoreFileUpdate(Request):
    attributes: Attributes


class BatchFile(Request):
    file_id: str
    chunking_strategy: dict[str, Any] | None = None
    attributes: Attributes = None


class FileBatchCreate(Request):
    file_ids: Annotated[list[str], Field(min_length=1, max_length=2000)] | None = None
    files: Annotated[list[BatchFile], Field(min_length=1, max_length=2000)] | None = None
    chunking_strategy: dict[str, Any] | None = None
    attributes: Attributes = None

    @model_validator(mode="after")
    def _one_of(self) -> FileBatchCreate:
        if (self.file_ids is None) == (self.files is None):
            raise openai_error(
                "Exactly one of 'file_ids' or 'files' must be provided.",
                "file_ids" if self.file_ids is None else "files",
                "invalid_value" if self.file_ids is not None else "missing_required_parameter",
            )
        return self


class SearchRankingOptions(Request):
    ranker: Literal["none", "auto", "default-2024-11-15"] | None = None
    score_threshold: Annotated[float, Field(ge=0, le=1)] | None = None


class VectorStoreSearch(Request):
    query: str | Annotated[list[str], Field(min_length=1)]
    rewrite_query: bool | None = None
    max_num_results: Annotated[int, Field(ge=1, le=50)] | None = None
    filters: dict[str, Any] | None = None
    ranking_options: SearchRankingOptions | None = None
