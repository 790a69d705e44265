"""One record per stored kind: the row's wire object (`data`) and typed bookkeeping (`state`).

`from_row()` takes a table row (any row with `data`, and `state` where the table has it); `to_wire()`
is the only way an object leaves for a client. Records are cheap wrappers: `data` is not copied, so a
record read in a transaction and sent as is costs no more than the dict did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from loom.records.state import RunState, StepState, UploadState, VectorStoreFileState
from loom.records.wire import FileObject, Message, Run, RunStep, Thread, Upload, VectorStoreFile

# The one `include[]` value of runs and run steps: file-search results with their content.
FILE_SEARCH_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


class Row(Protocol):
    """A table row as SQLAlchemy returns it (only `data` is needed; `state` where the table has one)."""

    @property
    def data(self) -> Any: ...


def _state(row: Row) -> Any:
    return getattr(row, "state", None)


@dataclass(frozen=True, slots=True)
class RunRecord:
    data: dict[str, Any]
    state: RunState = field(default_factory=RunState)

    @classmethod
    def from_row(cls, row: Row) -> RunRecord:
        return cls(dict(row.data), RunState.from_json(_state(row)))

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        """The run's status: its wire `status` (the row's `status` column is written with it, by `RunStore`)."""
        return str(self.data["status"])

    def to_wire(self) -> Run:
        return cast(Run, self.data)


def step_to_wire(step: Mapping[str, Any], include: Iterable[str]) -> RunStep:
    """A step as the API shows it: file-search result `content` only when `include[]` asks for it."""
    if step["type"] != "tool_calls" or FILE_SEARCH_CONTENT in include:
        return cast(RunStep, step)
    calls = []
    for call in step["step_details"]["tool_calls"]:
        if call.get("type") == "file_search" and call["file_search"].get("results"):
            fs = dict(call["file_search"])
            fs["results"] = [{k: v for k, v in r.items() if k != "content"} for r in fs["results"]]
            call = {**call, "file_search": fs}
        calls.append(call)
    return cast(RunStep, {**step, "step_details": {"type": "tool_calls", "tool_calls": calls}})


@dataclass(frozen=True, slots=True)
class RunStepRecord:
    data: dict[str, Any]
    state: StepState = field(default_factory=StepState)

    @classmethod
    def from_row(cls, row: Row) -> RunStepRecord:
        return cls(dict(row.data), StepState.from_json(_state(row)))

    @property
    def id(self) -> str:
        return str(self.data["id"])

    def to_wire(self, include: Iterable[str] = ()) -> RunStep:
        return step_to_wire(self.data, include)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row) -> MessageRecord:
        return cls(dict(row.data))

    def to_wire(self) -> Message:
        return cast(Message, self.data)


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row) -> ThreadRecord:
        return cls(dict(row.data))

    def to_wire(self) -> Thread:
        return cast(Thread, self.data)


@dataclass(frozen=True, slots=True)
class FileRecord:
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row) -> FileRecord:
        return cls(dict(row.data))

    def to_wire(self) -> FileObject:
        return cast(FileObject, self.data)


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """An upload; `status` is the row's `status` column, which is the wire status or `completing` while
    a request assembles the upload into a File (the wire still says `pending` then)."""

    data: dict[str, Any]
    status: str
    state: UploadState = field(default_factory=UploadState)

    @classmethod
    def from_row(cls, row: Row) -> UploadRecord:
        return cls(dict(row.data), str(getattr(row, "status", row.data["status"])), UploadState.from_json(_state(row)))

    def to_wire(self) -> Upload:
        return cast(Upload, self.data)


@dataclass(frozen=True, slots=True)
class VectorStoreFileRecord:
    data: dict[str, Any]
    state: VectorStoreFileState = field(default_factory=VectorStoreFileState)

    @classmethod
    def from_row(cls, row: Row) -> VectorStoreFileRecord:
        return cls(dict(row.data), VectorStoreFileState.from_json(_state(row)))

    @property
    def status(self) -> str:
        return str(self.data["status"])

    def to_wire(self) -> VectorStoreFile:
        return cast(VectorStoreFile, self.data)
