"""kill -9 while `complete` assembles an upload's parts: after a restart the upload can be completed or
cancelled, an expired one is cleaned up with its parts, and nothing is left on disk (SQLite and PostgreSQL).

The server is a real process; `LOOM_TEST_UPLOAD_ASSEMBLY_PAUSE_S` makes it pause between parts while it
assembles them, so the kill lands mid-assembly every time.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_KEY, sdk_client
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.support.wait import wait_for

PARTS = 8
PART_BYTES = 2 * 1024 * 1024
TOTAL = PARTS * PART_BYTES


def _content() -> bytes:
    return b"".join(bytes([65 + i]) * PART_BYTES for i in range(PARTS))


def _server(backend: str, **env: str) -> LoomServer:
    url = new_database() if backend == "postgres" else ""
    return LoomServer(
        database_url=url,
        extra_env={"LOOM_TEST_UPLOAD_ASSEMBLY_PAUSE_S": "0.6", "LOOM_LEASE_S": "1", **env},
    )


def _again(server: LoomServer) -> LoomServer:
    """A new process on the same data directory and database, as after a crash and restart."""
    env = {k: v for k, v in server.env.items() if k.startswith("LOOM_")}
    env["LOOM_TEST_UPLOAD_ASSEMBLY_PAUSE_S"] = "0"
    return LoomServer(database_url=server.database_url, data_dir=server.data_dir, extra_env=env)


def _on_disk(server: LoomServer) -> dict[str, int]:
    """Every file under the server's file store (temporary files included): name → size."""
    root = server.data_dir / "files"
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file()}


@dataclass
class Interrupted:
    upload_id: str
    part_ids: list[str]
    expires_at: int


def _kill_mid_completion(server: LoomServer) -> Interrupted:
    client = sdk_client(server)
    upload = client.uploads.create(bytes=TOTAL, filename="big.bin", mime_type="text/plain", purpose="assistants")
    data = _content()
    part_ids = [
        client.uploads.parts.create(upload.id, data=io.BytesIO(data[i * PART_BYTES : (i + 1) * PART_BYTES])).id
        for i in range(PARTS)
    ]
    parts_on_disk = set(_on_disk(server))
    assert len(parts_on_disk) == PARTS

    def complete() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it, as intended
            httpx.post(
                f"{server.base_url}/uploads/{upload.id}/complete",
                json={"part_ids": part_ids},
                headers={"Authorization": f"Bearer {DEFAULT_KEY}"},
                timeout=60,
            )

    caller = threading.Thread(target=complete)
    caller.start()

    def assembling() -> bool:
        partial = {n: s for n, s in _on_disk(server).items() if n not in parts_on_disk}
        return any(s >= 2 * PART_BYTES for s in partial.values())

    wait_for(assembling, 20, "the parts' assembly to be under way")
    server.kill()
    caller.join(30)
    partial = {n: s for n, s in _on_disk(server).items() if n not in parts_on_disk}
    # The crash left the upload half assembled: the parts and a partial file.
    assert partial and all(0 < s < TOTAL for s in partial.values()), partial
    assert parts_on_disk <= set(_on_disk(server))
    return Interrupted(upload.id, part_ids, upload.expires_at)


def _retry_while_claimed(call: object, *args: object, **kwargs: object) -> object:
    """On PostgreSQL a dead process's claim is trusted until its lease (1 s here) lapses."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return call(*args, **kwargs)  # type: ignore[operator]
        except openai.BadRequestError as exc:
            if "is being completed" not in str(exc.message) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_complete_after_a_crash_mid_assembly(backend: str) -> None:
    first = _server(backend).start()
    try:
        interrupted = _kill_mid_completion(first)
    finally:
        first.kill()
    second = _again(first).start()
    try:
        client = sdk_client(second)
        done = _retry_while_claimed(client.uploads.complete, interrupted.upload_id, part_ids=interrupted.part_ids)
        assert isinstance(done, openai.types.Upload)
        assert done.status == "completed" and done.file is not None and done.file.bytes == TOTAL
        assert client.files.content(done.file.id).content == _content()
        # Only the new File is on disk: no part, no half-assembled file, nothing temporary.
        assert _on_disk(second) == {done.file.id: TOTAL}
    finally:
        second.stop()


def test_cancel_after_a_crash_mid_assembly(backend: str) -> None:
    first = _server(backend).start()
    try:
        interrupted = _kill_mid_completion(first)
    finally:
        first.kill()
    second = _again(first).start()
    try:
        client = sdk_client(second)
        cancelled = _retry_while_claimed(client.uploads.cancel, interrupted.upload_id)
        assert isinstance(cancelled, openai.types.Upload) and cancelled.status == "cancelled"
        assert _on_disk(second) == {}
        with pytest.raises(openai.BadRequestError) as err:
            client.uploads.complete(interrupted.upload_id, part_ids=interrupted.part_ids)
        assert "cancelled" in err.value.message
    finally:
        second.stop()


def test_an_upload_stuck_completing_expires_with_its_parts(backend: str) -> None:
    first = _server(backend, LOOM_UPLOAD_EXPIRY_S="10").start()
    try:
        interrupted = _kill_mid_completion(first)
    finally:
        first.kill()
    while time.time() <= interrupted.expires_at:
        time.sleep(0.2)
    second = _again(first).start()
    try:
        # The janitor (its first pass runs at start-up) expires it and removes every byte it held,
        # before anyone touches the upload.
        wait_for(lambda: _on_disk(second) == {}, 20, "the expired upload's parts and partial file to go")
        client = sdk_client(second)
        expired = f"Upload {interrupted.upload_id} is expired: it no longer accepts changes."
        with pytest.raises(openai.BadRequestError) as err:
            client.uploads.complete(interrupted.upload_id, part_ids=interrupted.part_ids)
        assert err.value.message.endswith(expired)
        with pytest.raises(openai.BadRequestError) as err:
            client.uploads.cancel(interrupted.upload_id)
        assert err.value.message.endswith(expired)
    finally:
        second.stop()


def test_a_live_completion_is_not_rolled_back(backend: str) -> None:
    """A slow completion keeps its claim (renewed past the 1 s lease) and is refused to others meanwhile."""
    server = _server(backend).start()
    try:
        client = sdk_client(server)
        upload = client.uploads.create(bytes=TOTAL, filename="slow.bin", mime_type="text/plain", purpose="assistants")
        data = _content()
        part_ids = [
            client.uploads.parts.create(upload.id, data=io.BytesIO(data[i * PART_BYTES : (i + 1) * PART_BYTES])).id
            for i in range(PARTS)
        ]
        result: list[openai.types.Upload] = []
        caller = threading.Thread(target=lambda: result.append(client.uploads.complete(upload.id, part_ids=part_ids)))
        caller.start()
        time.sleep(2.5)  # past two lease lengths into the ~4 s assembly
        with pytest.raises(openai.BadRequestError) as err:
            client.uploads.cancel(upload.id)
        assert "is being completed" in err.value.message
        caller.join(60)
        assert result and result[0].status == "completed" and result[0].file is not None
        assert client.files.content(result[0].file.id).content == data
        assert _on_disk(server) == {result[0].file.id: TOTAL}
    finally:
        server.stop()
