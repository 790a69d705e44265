"""Loom's own bookkeeping of a stored object: the row's `state` JSON column, never part of the wire object.

Each state is a frozen dataclass with `from_json()` (what the column holds; None for a row without any)
and `to_json()` (None when there is nothing to keep, so most rows store no state at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class CitationState:
    """A citation a tool result left for the messages that follow it (`loom.runs.tools.Citation`)."""

    kind: str
    text: str
    file_id: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "text": self.text, "file_id": self.file_id}


@dataclass(frozen=True, slots=True)
class RunState:
    """A run's bookkeeping: its running token total (the wire `usage` is set only when it ends), the
    `include[]` its stream was created with, and what tool results left for later messages (citations,
    images the code interpreter made) across a `requires_action` pause or a restart."""

    usage: Mapping[str, int] | None = None
    include: tuple[str, ...] = ()
    citations: tuple[CitationState, ...] = ()
    pending_images: tuple[str, ...] = ()
    # A run on a thread with concurrent runs (`loom.runs.options`): the thread's messages it sees are
    # those up to this `seq` when it was created, less those of the runs then active (`siblings`).
    history_seq: int | None = None
    siblings: tuple[str, ...] = ()
    # Its own maximum duration (`loom_max_run_seconds` of the run or its assistant), kept for resumptions.
    max_run_s: int | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> RunState:
        if not raw:
            return _EMPTY_RUN
        usage = raw.get("usage")
        return cls(
            usage=dict(usage) if usage is not None else None,
            include=tuple(raw.get("include") or ()),
            citations=tuple(CitationState(**c) for c in raw.get("citations") or ()),
            pending_images=tuple(raw.get("pending_images") or ()),
            history_seq=raw.get("history_seq"),
            siblings=tuple(raw.get("siblings") or ()),
            max_run_s=raw.get("max_run_s"),
        )

    def to_json(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        if self.usage is not None:
            out["usage"] = dict(self.usage)
        if self.include:
            out["include"] = list(self.include)
        if self.citations:
            out["citations"] = [c.to_json() for c in self.citations]
        if self.pending_images:
            out["pending_images"] = list(self.pending_images)
        if self.history_seq is not None:
            out["history_seq"] = self.history_seq
        if self.siblings:
            out["siblings"] = list(self.siblings)
        if self.max_run_s is not None:
            out["max_run_s"] = self.max_run_s
        return out or None


_EMPTY_RUN = RunState()


@dataclass(frozen=True, slots=True)
class StepCall:
    """One tool call of a step as the model made it and what it got back: the run's transcript for its
    next model call (the wire step shows server tools' calls in their own shape, without these)."""

    name: str
    arguments: str
    output: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments, "output": self.output}


@dataclass(frozen=True, slots=True)
class StepState:
    """A tool-calls step's calls by call id (see `StepCall`)."""

    calls: Mapping[str, StepCall] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> StepState:
        if not raw:
            return _EMPTY_STEP
        return cls(calls={k: StepCall(**v) for k, v in (raw.get("calls") or {}).items()})

    def to_json(self) -> dict[str, Any] | None:
        return {"calls": {k: c.to_json() for k, c in self.calls.items()}} if self.calls else None

    def with_output(self, call_id: str, output: str) -> StepState:
        """The state with `output` given to the call `call_id` (a client's tool output)."""
        call = self.calls.get(call_id) or StepCall("", "")
        return StepState(calls={**self.calls, call_id: StepCall(call.name, call.arguments, output)})


_EMPTY_STEP = StepState()


@dataclass(frozen=True, slots=True)
class UploadClaim:
    """A completion in progress: who assembles the upload, until when its claim holds unrenewed, and the
    File id the parts are assembled into."""

    owner: str
    until: float
    file_id: str

    def to_json(self) -> dict[str, Any]:
        return {"owner": self.owner, "until": self.until, "file_id": self.file_id}


@dataclass(frozen=True, slots=True)
class UploadState:
    """An upload's bookkeeping: the `mime_type` it was created with, the File's lifetime asked for
    (`expires_after`, seconds), and the claim of a completion in progress."""

    mime_type: str | None = None
    file_ttl: int | None = None
    claim: UploadClaim | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> UploadState:
        if not raw:
            return cls()
        claim = raw.get("claim")
        return cls(
            mime_type=raw.get("mime_type"),
            file_ttl=raw.get("file_ttl"),
            claim=UploadClaim(**claim) if claim is not None else None,
        )

    def to_json(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        if self.mime_type is not None:
            out["mime_type"] = self.mime_type
        if self.file_ttl is not None:
            out["file_ttl"] = self.file_ttl
        if self.claim is not None:
            out["claim"] = self.claim.to_json()
        return out or None


@dataclass(frozen=True, slots=True)
class VectorStoreFileState:
    """How many times ingestion started on the file (a file that keeps interrupting it fails)."""

    attempts: int = 0

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> VectorStoreFileState:
        return cls(attempts=int(raw.get("attempts", 0))) if raw else cls()

    def to_json(self) -> dict[str, Any] | None:
        return {"attempts": self.attempts} if self.attempts else None


def split_legacy(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An object as versions before the `state` column stored it (bookkeeping under `_` keys inside
    `data`, e.g. in an archive they exported): the wire object, and the state those keys held."""
    wire = {k: v for k, v in data.items() if not k.startswith("_")}
    state = {k[1:]: v for k, v in data.items() if k.startswith("_") and v is not None}
    return wire, state or None
