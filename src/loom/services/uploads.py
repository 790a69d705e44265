"""Uploads: large files sent in parts, assembled into a File on completion.

A completion claims its upload (`status` column `completing`; the claim, `UploadClaim` in the row's
`state`: who, until when, and the File id the parts are being assembled into) and renews the claim while
it copies the parts. A claim that lapsed was left by a process that died mid-assembly: it is rolled back
(the upload is `pending` again, the half-assembled file removed) by whichever request or janitor pass
meets it. On SQLite one process owns the database, so a claim of any other process is dead.

Each part is an object of the blob store (`part_key`), put before its row is inserted; completion streams
the parts, in order, into the File's object (`file_key`): no whole file is ever held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.records import Upload, UploadClaim, UploadRecord, UploadState
from loom.schemas.common import parse
from loom.schemas.files import UploadComplete, UploadCreate
from loom.schemas.forms import Form
from loom.services.files import FileService, choice_error, clean_filename, expires_after_seconds
from loom.store import tables
from loom.store.blobstore import file_chunks, file_key, part_key
from loom.store.collections import files, uploads
from loom.store.db import Database
from loom.store.repo import Collection

log = logging.getLogger(__name__)
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# The `status` column (not the object) of an upload one request is assembling into a File.
_COMPLETING = "completing"
upload_parts = Collection(tables.upload_parts)


class UploadService:
    def __init__(
        self,
        db: Database,
        files: FileService,
        upload_expiry_s: int,
        *,
        lease_s: float = 15.0,
        assembly_pause_s: float = 0.0,
        single_process: bool = False,
    ) -> None:
        self.db = db
        self.files = files
        self.blobs = files.blobs
        self.upload_expiry_s = upload_expiry_s
        # Claims on uploads being completed: this process's name, how long a claim lasts unrenewed, and
        # whether this process is the database's only one (`Coordinator.single_process`), so that other
        # processes' claims are dead.
        self.owner = "files_" + secrets.token_hex(6)
        self.lease_s = lease_s
        self.sole_owner = single_process
        # Tests only: a pause between parts while assembling, to stop the server mid-way deterministically.
        self.assembly_pause_s = assembly_pause_s

    async def create_upload(self, project: str, body: dict[str, Any], max_upload_bytes: int) -> Upload:
        req = parse(UploadCreate, body)
        if req.purpose not in UPLOAD_PURPOSES:
            raise choice_error("purpose", req.purpose, UPLOAD_PURPOSES)
        if req.bytes > max_upload_bytes:
            raise InvalidRequest(
                f"Invalid 'bytes': an Upload may hold at most {max_upload_bytes} bytes, but got {req.bytes}.",
                param="bytes",
                code="invalid_value",
            )
        created = now()
        ttl = None
        if req.expires_after is not None:
            ttl = expires_after_seconds(
                {
                    "expires_after[anchor]": req.expires_after.anchor,
                    "expires_after[seconds]": req.expires_after.seconds,
                },
                "expires_after",
            )
        obj: dict[str, Any] = {
            "id": ids.new_id("upload"),
            "object": "upload",
            "bytes": req.bytes,
            "created_at": created,
            "filename": clean_filename(req.filename),
            "purpose": req.purpose,
            "status": "pending",
            "expires_at": created + self.upload_expiry_s,
            "file": None,
        }
        state = UploadState(mime_type=req.mime_type, file_ttl=ttl)
        async with self.db.write() as conn:
            await uploads.insert(
                conn, project, obj, status="pending", expires_at=obj["expires_at"], state=state.to_json()
            )
        return UploadRecord(obj, "pending", state).to_wire()

    def _lapsed(self, claim: UploadClaim | None) -> bool:
        if claim is None:
            return True
        if self.sole_owner and claim.owner != self.owner:
            return True
        return claim.until <= time.time()

    async def _settle_row(self, conn: Any, project: str, row: Any) -> Sequence[str]:
        """Roll back a dead completion and expire an overdue upload, in `conn`; the objects to delete once
        that is committed (the half-assembled file, the expired upload's parts)."""
        record = UploadRecord.from_row(row)
        obj, status, state = record.data, record.status, record.state
        leftovers: list[str] = []
        if status == _COMPLETING:
            claim = state.claim
            if not self._lapsed(claim):
                return []
            state = replace(state, claim=None)
            status = "pending"
            if claim is not None:
                leftovers.append(file_key(claim.file_id))
            log.warning("upload %s: an interrupted completion was rolled back", obj["id"])
        if status == "pending" and obj["expires_at"] <= now():
            status = obj["status"] = "expired"
            t = tables.upload_parts
            paths = (await conn.execute(sa.select(t.c.path).where(t.c.upload_id == obj["id"]))).scalars()
            leftovers += [str(p) for p in paths]
            await conn.execute(t.delete().where(t.c.upload_id == obj["id"]))
        if status != record.status:
            await uploads.replace(conn, project, obj, status=status, state=state.to_json())
        return leftovers

    @staticmethod
    def _unsettled(row: Any) -> bool:
        return bool(row.status == _COMPLETING or (row.status == "pending" and row.data["expires_at"] <= now()))

    def _claim_of(self, row: Any) -> UploadClaim | None:
        return UploadState.from_json(row.state).claim

    async def _settle(self, project: str, upload_id: str) -> None:
        """Before a change to an upload: commit what its state already implies (a dead completion rolled
        back, an overdue upload expired), so an error answered afterwards cannot undo it."""
        async with self.db.read() as conn:
            row = await uploads.get_row(conn, project, upload_id)
        if row is None or not self._unsettled(row):
            return
        if row.status == _COMPLETING and not self._lapsed(self._claim_of(row)):
            return
        async with self.db.write() as conn:
            row = await uploads.get_row(conn, project, upload_id, lock=True)
            leftovers = await self._settle_row(conn, project, row) if row is not None else []
        await self._discard_leftovers(leftovers)

    async def _discard_leftovers(self, keys: Sequence[str]) -> None:
        """Delete what a settled upload left: its parts, or the File a dead completion was assembling
        (whole, or what its interrupted put left half-written)."""
        for key in keys:
            await self.files.discard_object(key)
            try:
                await self.blobs.discard_incomplete(0, key=key)
            except Exception as exc:
                log.warning("could not remove what an interrupted put of %s left (the janitor will): %s", key, exc)

    async def _pending_upload(self, conn: Any, project: str, upload_id: str) -> UploadRecord:
        row = await uploads.get_row(conn, project, upload_id, lock=True)
        if row is None:
            raise NotFound("upload", upload_id)
        record = UploadRecord.from_row(row)
        obj = record.data
        if record.status == _COMPLETING:
            raise InvalidRequest(f"Upload {upload_id} is being completed: it no longer accepts changes.")
        if obj["status"] == "pending" and obj["expires_at"] <= now():
            obj["status"] = "expired"
        if obj["status"] != "pending":
            raise InvalidRequest(f"Upload {upload_id} is {obj['status']}: it no longer accepts changes.")
        return record

    async def add_part(self, project: str, upload_id: str, form: Form) -> dict[str, Any]:
        try:
            data = [f for f in form.files if f.field == "data"]
            if not data:
                raise InvalidRequest(
                    "Missing required parameter: 'data'.", param="data", code="missing_required_parameter"
                )
            part_id = ids.new_id("part")
            await self._settle(project, upload_id)
            async with self.db.write() as conn:
                await self._pending_upload(conn, project, upload_id)  # refused before any byte is stored
            # Bytes first (no row lock held while they travel), then the row, under the upload's lock.
            key = part_key(upload_id, part_id)
            info = await self.blobs.put(key, file_chunks(data[0].path))
            part = {"id": part_id, "object": "upload.part", "created_at": now(), "upload_id": upload_id}
            try:
                async with self.db.write() as conn:
                    await self._pending_upload(conn, project, upload_id)
                    await upload_parts.insert(conn, project, part, upload_id=upload_id, path=key, bytes=info.size)
            except BaseException:
                await self.files.discard_object(key)
                raise
            return part
        finally:
            form.discard()

    async def complete_upload(self, project: str, upload_id: str, body: dict[str, Any]) -> Upload:
        req = parse(UploadComplete, body)
        if len(set(req.part_ids)) != len(req.part_ids):
            raise InvalidRequest(
                "Invalid 'part_ids': a part may appear only once.", param="part_ids", code="invalid_value"
            )
        t = tables.upload_parts
        await self._settle(project, upload_id)
        # Check and claim in one transaction: of concurrent completions only one may make a File.
        file_id = ids.new_id("file", 22)
        async with self.db.write() as conn:
            pending = await self._pending_upload(conn, project, upload_id)
            obj = pending.data
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.path, t.c.bytes).where(t.c.upload_id == upload_id, t.c.project == project)
                )
            ).all()
            parts = {r[0]: (str(r[1]), int(r[2])) for r in rows}
            for part_id in req.part_ids:
                if part_id not in parts:
                    raise InvalidRequest(
                        f"Invalid 'part_ids': no part with id '{part_id}' in upload {upload_id}.",
                        param="part_ids",
                        code="invalid_value",
                    )
            total = sum(parts[p][1] for p in req.part_ids)
            if total != obj["bytes"]:
                raise InvalidRequest(
                    f"The parts add up to {total} bytes, but the upload was created with bytes={obj['bytes']}.",
                    param="part_ids",
                    code="invalid_value",
                )
            claimed = replace(pending.state, claim=UploadClaim(self.owner, time.time() + self.lease_s, file_id))
            await uploads.replace(conn, project, obj, status=_COMPLETING, state=claimed.to_json())
        # Assembled straight into the File's own object: a crash leaves it where the rollback looks for it.
        target = file_key(file_id)
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew_claim(project, upload_id, file_id, lost))
        md5 = hashlib.md5(usedforsecurity=False)
        try:
            try:
                await self.blobs.put(target, self._assemble([parts[p][0] for p in req.part_ids], md5, lost))
            finally:
                lost.set()
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            digest = md5.hexdigest()
            if req.md5 is not None and req.md5.lower() != digest:
                raise InvalidRequest(
                    "The md5 checksum of the assembled file does not match the 'md5' given.",
                    param="md5",
                    code="invalid_value",
                )
            file_obj = self.files.file_object(file_id, total, obj["filename"], obj["purpose"], claimed.file_ttl)
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                if row is None or not self._claimed(row, file_id):
                    raise InvalidRequest(f"Upload {upload_id} was not completed: its completion was interrupted.")
                record = UploadRecord.from_row(row)
                obj = record.data
                await files.insert(
                    conn, project, file_obj, purpose=obj["purpose"], expires_at=file_obj["expires_at"], path=target
                )
                obj["status"] = "completed"
                obj["file"] = file_obj
                done = replace(record.state, claim=None)
                await uploads.replace(conn, project, obj, status="completed", state=done.to_json())
                await conn.execute(t.delete().where(t.c.upload_id == upload_id))
        except BaseException:
            await self.files.discard_object(target)
            await self._release_claim(project, upload_id, file_id)
            raise
        for key, _ in parts.values():
            await self.files.discard_object(key)
        return UploadRecord(obj, "completed", done).to_wire()

    def _claimed(self, row: Any, file_id: str) -> bool:
        claim = self._claim_of(row)
        return bool(
            row.status == _COMPLETING and claim is not None and claim.owner == self.owner and claim.file_id == file_id
        )

    async def _assemble(self, sources: Sequence[str], md5: Any, lost: asyncio.Event) -> AsyncIterator[bytes]:
        """The parts' bytes in order, streamed from the store (their md5 into `md5`, in a worker thread).
        Stops when the claim is lost."""
        for i, source in enumerate(sources):
            if i and self.assembly_pause_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.assembly_pause_s)
            async with await self.blobs.open(source) as reader:
                async for chunk in reader:
                    if lost.is_set():
                        raise InvalidRequest("The upload's completion was interrupted.")
                    await asyncio.to_thread(md5.update, chunk)
                    yield chunk

    async def _renew_claim(self, project: str, upload_id: str, file_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(max(self.lease_s / 3, 0.1))
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                if row is None or not self._claimed(row, file_id):
                    lost.set()
                    return
                record = UploadRecord.from_row(row)
                assert record.state.claim is not None
                renewed = replace(record.state.claim, until=time.time() + self.lease_s)
                state = replace(record.state, claim=renewed)
                await uploads.replace(conn, project, record.data, state=state.to_json())

    async def _release_claim(self, project: str, upload_id: str, file_id: str) -> None:
        """A completion that failed gives its upload back (`pending`), if it still holds it."""
        with contextlib.suppress(Exception):
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                if row is not None and self._claimed(row, file_id):
                    record = UploadRecord.from_row(row)
                    released = replace(record.state, claim=None)
                    await uploads.replace(conn, project, record.data, status="pending", state=released.to_json())

    async def cancel_upload(self, project: str, upload_id: str) -> Upload:
        t = tables.upload_parts
        await self._settle(project, upload_id)
        async with self.db.write() as conn:
            record = await self._pending_upload(conn, project, upload_id)
            record.data["status"] = "cancelled"
            await uploads.replace(conn, project, record.data, status="cancelled")
            keys = list((await conn.execute(sa.select(t.c.path).where(t.c.upload_id == upload_id))).scalars())
            await conn.execute(t.delete().where(t.c.upload_id == upload_id))
        for key in keys:
            await self.files.discard_object(str(key))
        return record.to_wire()

    async def expire_uploads(self) -> int:
        """Roll back completions whose process died; expire every upload past its hour that is not
        final (pending, or left `completing` by a dead process) and remove its parts. Returns how many
        uploads changed."""
        u = tables.uploads
        async with self.db.read() as conn:
            candidates = (
                await conn.execute(
                    sa.select(u.c.id, u.c.project).where(
                        sa.or_(u.c.status == _COMPLETING, sa.and_(u.c.status == "pending", u.c.expires_at <= now()))
                    )
                )
            ).all()
        changed = 0
        for upload_id, project in candidates:
            async with self.db.read() as conn:
                row = await uploads.get_row(conn, project, upload_id)
            if row is None or not self._unsettled(row):
                continue
            if row.status == _COMPLETING and not self._lapsed(self._claim_of(row)):
                continue
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                leftovers = await self._settle_row(conn, project, row) if row is not None else []
            await self._discard_leftovers(leftovers)
            changed += 1
        return changed
