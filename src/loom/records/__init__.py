"""Domain records: each API object Loom stores, as its table row holds it (the wire object in `data`, Loom's
own bookkeeping in a typed `state`), with `from_row()` and one `to_wire()`.

`data` is exactly what the API shows (named after the SDK's types in `loom.records.wire`); nothing private
rides in it, so a wire object can be sent as read. What only Loom needs (a run's running token total, a
step's tool-call transcript, an upload's completion claim…) lives in the row's `state` column.
"""

from loom.records.objects import (
    FILE_SEARCH_CONTENT,
    FileRecord,
    MessageRecord,
    RunRecord,
    RunStepRecord,
    ThreadRecord,
    UploadRecord,
    VectorStoreFileRecord,
    step_to_wire,
)
from loom.records.state import (
    CitationState,
    RunState,
    StepCall,
    StepState,
    UploadClaim,
    UploadState,
    VectorStoreFileState,
    split_legacy,
)
from loom.records.wire import FileObject, Message, Run, RunStep, Thread, Upload, VectorStoreFile

__all__ = [
    "FILE_SEARCH_CONTENT",
    "CitationState",
    "FileObject",
    "FileRecord",
    "Message",
    "MessageRecord",
    "Run",
    "RunRecord",
    "RunState",
    "RunStep",
    "RunStepRecord",
    "StepCall",
    "StepState",
    "Thread",
    "ThreadRecord",
    "Upload",
    "UploadClaim",
    "UploadRecord",
    "UploadState",
    "VectorStoreFile",
    "VectorStoreFileRecord",
    "VectorStoreFileState",
    "split_legacy",
    "step_to_wire",
]
