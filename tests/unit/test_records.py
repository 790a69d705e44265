"""Domain records: a table row read back through `from_row()` gives the stored wire object and typed state,
and `to_wire()` shows exactly the wire object (run steps: result content only when `include[]` asks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from loom.records import (
    FILE_SEARCH_CONTENT,
    CitationState,
    FileRecord,
    MessageRecord,
    RunRecord,
    RunState,
    RunStepRecord,
    StepCall,
    StepState,
    ThreadRecord,
    UploadClaim,
    UploadRecord,
    UploadState,
    VectorStoreFileRecord,
    VectorStoreFileState,
)
from loom.store import tables


@pytest.fixture()
def db() -> Iterator[sa.Connection]:
    engine = sa.create_engine("sqlite://")
    tables.metadata.create_all(engine)
    with engine.begin() as conn:
        yield conn
    engine.dispose()


def _row(conn: sa.Connection, table: sa.Table, data: dict[str, Any], **columns: Any) -> sa.Row[Any]:
    conn.execute(
        table.insert().values(id=data["id"], project="p", created_at=data.get("created_at", 1), data=data, **columns)
    )
    row = conn.execute(sa.select(table).where(table.c.id == data["id"])).one()
    return row


def _no_private_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(not str(k).startswith("_") and _no_private_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_no_private_keys(v) for v in value)
    return True


RUN = {"id": "run_1", "object": "thread.run", "created_at": 5, "status": "requires_action", "usage": None}


def test_run_round_trip(db: sa.Connection) -> None:
    state = RunState(
        usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        include=(FILE_SEARCH_CONTENT,),
        citations=(CitationState("file_citation", "【0:0†a.txt】", "file-a"),),
        pending_images=("file-img",),
    )
    row = _row(db, tables.runs, dict(RUN), thread_id="t", status="requires_action", state=state.to_json())
    record = RunRecord.from_row(row)
    assert record.state == state
    assert record.status == "requires_action" == row.status
    assert record.to_wire() == RUN
    assert RunState.from_json(state.to_json()) == state


def test_a_row_without_state_reads_as_empty_state(db: sa.Connection) -> None:
    row = _row(db, tables.runs, dict(RUN, id="run_2"), thread_id="t", status="queued")
    assert RunRecord.from_row(row).state == RunState()
    assert RunState().to_json() is None and StepState().to_json() is None
    assert UploadState().to_json() is None and VectorStoreFileState().to_json() is None


STEP = {
    "id": "step_1",
    "object": "thread.run.step",
    "created_at": 5,
    "type": "tool_calls",
    "status": "completed",
    "step_details": {
        "type": "tool_calls",
        "tool_calls": [
            {
                "id": "call_fs",
                "type": "file_search",
                "file_search": {
                    "ranking_options": {"ranker": "default_2024_08_21", "score_threshold": 0.0},
                    "results": [
                        {"file_id": "file-a", "file_name": "a.txt", "score": 0.5, "content": [{"type": "text"}]}
                    ],
                },
            },
            {"id": "call_fn", "type": "function", "function": {"name": "f", "arguments": "{}", "output": "42"}},
        ],
    },
}


def test_step_round_trip_and_include(db: sa.Connection) -> None:
    calls = StepState(calls={"call_fn": StepCall("f", "{}"), "call_fs": StepCall("file_search", "{}", "passages")})
    row = _row(db, tables.run_steps, STEP, thread_id="t", run_id="run_1", state=calls.to_json())
    record = RunStepRecord.from_row(row)
    assert record.state == calls
    assert record.state.with_output("call_fn", "42").calls["call_fn"] == StepCall("f", "{}", "42")
    assert record.to_wire([FILE_SEARCH_CONTENT]) == STEP
    plain = record.to_wire()
    [result] = plain["step_details"]["tool_calls"][0]["file_search"]["results"]
    assert "content" not in result and result["file_id"] == "file-a"
    assert plain["step_details"]["tool_calls"][1] == STEP["step_details"]["tool_calls"][1]
    # The stored object is not changed by a wire view without the content.
    assert "content" in record.data["step_details"]["tool_calls"][0]["file_search"]["results"][0]


def test_message_thread_file_round_trip(db: sa.Connection) -> None:
    message = {"id": "msg_1", "object": "thread.message", "created_at": 1, "role": "user", "content": []}
    thread = {"id": "thread_1", "object": "thread", "created_at": 1, "metadata": {}, "tool_resources": None}
    file = {"id": "file-1", "object": "file", "created_at": 1, "bytes": 3, "filename": "a.txt", "purpose": "assistants"}
    m = _row(db, tables.messages, message, thread_id="thread_1")
    t = _row(db, tables.threads, thread)
    f = _row(db, tables.files, file, purpose="assistants", path="/x")
    assert MessageRecord.from_row(m).to_wire() == message
    assert ThreadRecord.from_row(t).to_wire() == thread
    assert FileRecord.from_row(f).to_wire() == file


def test_upload_round_trip(db: sa.Connection) -> None:
    upload = {"id": "upload_1", "object": "upload", "created_at": 1, "status": "pending", "file": None}
    state = UploadState(mime_type="text/plain", file_ttl=3600, claim=UploadClaim("files_x", 12.5, "file-new"))
    row = _row(db, tables.uploads, upload, status="completing", state=state.to_json())
    record = UploadRecord.from_row(row)
    assert record.state == state and record.status == "completing"
    assert record.to_wire() == upload and record.to_wire()["status"] == "pending"


def test_vector_store_file_round_trip(db: sa.Connection) -> None:
    obj = {"id": "file-1", "object": "vector_store.file", "created_at": 1, "status": "in_progress"}
    row = _row(
        db,
        tables.vector_store_files,
        obj,
        vector_store_id="vs_1",
        status="in_progress",
        state=VectorStoreFileState(attempts=2).to_json(),
    )
    record = VectorStoreFileRecord.from_row(row)
    assert record.state.attempts == 2 and record.status == "in_progress"
    assert record.to_wire() == obj and _no_private_keys(record.to_wire())
