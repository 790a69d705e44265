"""Files (multipart upload streamed to disk) and Uploads (large files in parts)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.schemas.common import parse
from loom.schemas.files import UploadComplete, UploadCreate
from loom.schemas.forms import Form, UploadedFile
from loom.services.common import ListParams
from loom.store import tables
from loom.store.blobs import BlobStore
from loom.store.collections import files, uploads
from loom.store.db import Database
from loom.store.repo import Collection, Page

log = logging.getLogger(__name__)
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_BATCH_DEFAULT_TTL = 30 * 24 * 3600
# The `status` column (not the object) of an upload one request is assembling into a File.
_COMPLETING = "completing"
upload_parts = Collection(tables.upload_parts)


def clean_filename(raw: str) -> str:
    """The name a client gave, safe to show and to use as a name inside a sandbox folder.

    Only the last path component survives; control characters and NUL are dropped.
    """
    name = raw.replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().lstrip(".") or "file"
    if len(name.encode()) > 255:
        _stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) <= 16 else ""
        name = name.encode()[: 250 - len(keep)].decode("utf-8", "ignore") + (f".{keep}" if keep else "")
    return name


def _choice_error(param: str, value: str, allowed: tuple[str, ...]) -> InvalidRequest:
    listed = ", ".join(f"'{a}'" for a in allowed)
    return InvalidRequest(
        f"Invalid value: '{value}'. Supported values are: {listed}.", param=param, code="invalid_value"
    )


def _expires_after(fields: dict[str, str] | dict[str, Any], prefix: str) -> int | None:
    """`expires_after` as seconds, from form fields (`expires_after[seconds]`) or a JSON object."""
    anchor = fields.get(f"{prefix}[anchor]")
    seconds = fields.get(f"{prefix}[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise _choice_error(f"{prefix}.anchor", str(anchor), ("created_at",))
    try:
        value = int(str(seconds))
    except ValueError:
        raise InvalidRequest(
            f"Invalid type for '{prefix}.seconds': expected an integer.", param=f"{prefix}.seconds", code="invalid_type"
        ) from None
    if not 3600 <= value <= 2_592_000:
        raise InvalidRequest(
            f"Invalid '{prefix}.seconds': expected a value between 3600 and 2592000, but got {value} instead.",
            param=f"{prefix}.seconds",
            code="invalid_value",
        )
    return value


def _alive() -> sa.ColumnElement[bool]:
    t = tables.files
    return sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now())


class FileService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        max_file_bytes: int,
        upload_expiry_s: int,
        *,
        lease_s: float = 15.0,
        assembly_pause_s: float = 0.0,
        single_process: bool = False,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.max_file_bytes = max_file_bytes
        self.upload_expiry_s = upload_expiry_s
        # Claims on uploads being completed: this process's name, how long a claim lasts unrenewed, and
        # whether this process is the database's only one (`Coordinator.single_process`), so that other
        # processes' claims are dead.
        self.owner = "files_" + secrets.token_hex(6)
        self.lease_s = lease_s
        self.sole_owner = single_process
        # Tests only: a pause between parts while assembling, to stop the server mid-way deterministically.
        self.assembly_pause_s = assembly_pause_s
        # Called with (project, file_id) after a File is deleted or expires (vector stores drop it).
        self.delete_hooks: list[Callable[[str, str], Awaitable[None]]] = []

    async def _after_delete(self, project: str, file_id: str) -> None:
        for hook in self.delete_hooks:
            try:
                await hook(project, file_id)
            except Exception:
                log.exception("file delete hook failed for %s", file_id)

    async def create_from_form(self, project: str, form: Form) -> dict[str, Any]:
        """`POST /files`. Takes ownership of the form's temporary files: kept on success, removed on error."""
        try:
            unknown = [k for k in form.fields if k not in ("purpose",) and not k.startswith("expires_after[")]
            if unknown:
                raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}", code="unknown_parameter")
            uploaded = [f for f in form.files if f.field == "file"]
            if not uploaded:
                raise InvalidRequest(
                    "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
                )
            purpose = form.fields.get("purpose")
            if purpose is None:
                raise InvalidRequest(
                    "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
                )
            if purpose not in FILE_PURPOSES:
                raise _choice_error("purpose", purpose, FILE_PURPOSES)
            ttl = _expires_after(form.fields, "expires_after")
            if ttl is None and purpose == "batch":
                ttl = _BATCH_DEFAULT_TTL
            return await self._store(project, uploaded[0], purpose, ttl)
        finally:
            form.discard()

    @staticmethod
    def _file_object(file_id: str, size: int, filename: str, purpose: str, ttl: int | None) -> dict[str, Any]:
        created = now()
        return {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": created,
            "expires_at": created + ttl if ttl is not None else None,
            "filename": clean_filename(filename),
            # `evals` is accepted on upload, but the File object's `purpose` enum (spec and SDK types) lacks
            # it: strict clients would reject the response. Shown as `user_data`; the column keeps `evals`.
            "purpose": "user_data" if purpose == "evals" else purpose,
            "status": "processed",
            "status_details": None,
        }

    async def _store(self, project: str, upload: UploadedFile, purpose: str, ttl: int | None) -> dict[str, Any]:
        file_id = ids.new_id("file", 22)
        path = self.blobs.commit(upload.path, file_id)
        obj = self._file_object(file_id, upload.size, upload.filename, purpose, ttl)
        try:
            async with self.db.write() as conn:
                await files.insert(conn, project, obj, purpose=purpose, expires_at=obj["expires_at"], path=str(path))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return obj

    async def create_output(
        self, project: str, filename: str, data: bytes, purpose: str = "assistants_output"
    ) -> dict[str, Any]:
        """A File made by Loom itself (code interpreter output)."""
        temp = self.blobs.new_temp()
        temp.write_bytes(data)
        return await self.create_output_from(project, filename, temp, len(data), purpose)

    async def create_output_from(
        self, project: str, filename: str, temp: Path, size: int, purpose: str = "assistants_output"
    ) -> dict[str, Any]:
        """A File made by Loom from a file it wrote to `blobs.new_temp()` (taken over: kept or removed)."""
        try:
            return await self._store(
                project, UploadedFile("file", filename, temp, size, "application/octet-stream"), purpose, None
            )
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    async def get(self, project: str, file_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = await files.get_row(conn, project, file_id)
        if row is None or (row.expires_at is not None and row.expires_at <= now()):
            raise NotFound("file", file_id)
        return dict(row.data)

    async def path(self, project: str, file_id: str) -> Path:
        await self.get(project, file_id)
        return self.blobs.path_for(file_id)

    # What the run engine's code interpreter needs (`loom.runs.ports`: StoredFileReader, OutputFileWriter).

    async def stored_file(self, project: str, file_id: str) -> tuple[str, Path] | None:
        try:
            meta = await self.get(project, file_id)
        except NotFound:
            return None
        return str(meta["filename"]), self.blobs.path_for(file_id)

    def new_temp(self) -> Path:
        return self.blobs.new_temp()

    async def write_output(self, project: str, filename: str, data: bytes) -> str:
        return str((await self.create_output(project, filename, data))["id"])

    async def write_output_from(self, project: str, filename: str, temp: Path, size: int) -> str:
        return str((await self.create_output_from(project, filename, temp, size))["id"])

    async def list(self, project: str, params: ListParams, purpose: str | None) -> Page:
        where = [_alive()]
        if purpose is not None:
            where.append(tables.files.c.purpose == purpose)
        async with self.db.read() as conn:
            return await files.list(conn, project, params, where=where)

    async def delete(self, project: str, file_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            if not await files.delete(conn, project, file_id):
                raise NotFound("file", file_id)
        self.blobs.delete(file_id)
        await self._after_delete(project, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def delete_expired(self) -> int:
        t = tables.files
        async with self.db.write() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.project).where(t.c.expires_at.is_not(None), t.c.expires_at <= now())
                )
            ).all()
            expired = [r[0] for r in rows]
            if expired:
                await conn.execute(t.delete().where(t.c.id.in_(expired)))
        for file_id, project in rows:
            self.blobs.delete(file_id)
            await self._after_delete(project, file_id)
        return len(expired)

    # Uploads.

    async def create_upload(self, project: str, body: dict[str, Any], max_upload_bytes: int) -> dict[str, Any]:
        req = parse(UploadCreate, body)
        if req.purpose not in UPLOAD_PURPOSES:
            raise _choice_error("purpose", req.purpose, UPLOAD_PURPOSES)
        if req.bytes > max_upload_bytes:
            raise InvalidRequest(
                f"Invalid 'bytes': an Upload may hold at most {max_upload_bytes} bytes, but got {req.bytes}.",
                param="bytes",
                code="invalid_value",
            )
        created = now()
        ttl = None
        if req.expires_after is not None:
            ttl = _expires_after(
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
            "_mime_type": req.mime_type,
            "_file_ttl": ttl,
        }
        async with self.db.write() as conn:
            await uploads.insert(conn, project, obj, status="pending", expires_at=obj["expires_at"])
        return _public(obj)

    # A completion claims its upload (`status` column `completing`, `_claim` in the row's data: who, until
    # when, and the File id the parts are being assembled into) and renews the claim while it copies the
    # parts. A claim that lapsed was left by a process that died mid-assembly: it is rolled back (the
    # upload is `pending` again, the half-assembled file removed) by whichever request or janitor pass
    # meets it. On SQLite one process owns the database, so a claim of any other process is dead.

    def _lapsed(self, claim: dict[str, Any] | None) -> bool:
        if claim is None:
            return True
        if self.sole_owner and claim["owner"] != self.owner:
            return True
        return float(claim["until"]) <= time.time()

    async def _settle_row(self, conn: Any, project: str, row: Any) -> Sequence[Path]:
        """Roll back a dead completion and expire an overdue upload, in `conn`; the paths to remove once
        that is committed (the half-assembled file, the expired upload's parts)."""
        obj = dict(row.data)
        status = row.status
        leftovers: list[Path] = []
        if status == _COMPLETING:
            claim = obj.get("_claim")
            if not self._lapsed(claim):
                return []
            obj.pop("_claim", None)
            status = "pending"
            if claim is not None:
                leftovers.append(self.blobs.path_for(claim["file_id"]))
            log.warning("upload %s: an interrupted completion was rolled back", obj["id"])
        if status == "pending" and obj["expires_at"] <= now():
            status = obj["status"] = "expired"
            t = tables.upload_parts
            paths = (await conn.execute(sa.select(t.c.path).where(t.c.upload_id == obj["id"]))).scalars()
            leftovers += [Path(p) for p in paths]
            await conn.execute(t.delete().where(t.c.upload_id == obj["id"]))
        if status != row.status:
            await uploads.replace(conn, project, obj, status=status)
        return leftovers

    @staticmethod
    def _unsettled(row: Any) -> bool:
        return bool(row.status == _COMPLETING or (row.status == "pending" and row.data["expires_at"] <= now()))

    async def _settle(self, project: str, upload_id: str) -> None:
        """Before a change to an upload: commit what its state already implies (a dead completion rolled
        back, an overdue upload expired), so an error answered afterwards cannot undo it."""
        async with self.db.read() as conn:
            row = await uploads.get_row(conn, project, upload_id)
        if row is None or not self._unsettled(row):
            return
        if row.status == _COMPLETING and not self._lapsed(row.data.get("_claim")):
            return
        async with self.db.write() as conn:
            row = await uploads.get_row(conn, project, upload_id, lock=True)
            leftovers = await self._settle_row(conn, project, row) if row is not None else []
        for path in leftovers:
            path.unlink(missing_ok=True)

    async def _pending_upload(self, conn: Any, project: str, upload_id: str) -> dict[str, Any]:
        row = await uploads.get_row(conn, project, upload_id, lock=True)
        if row is None:
            raise NotFound("upload", upload_id)
        obj = dict(row.data)
        if row.status == _COMPLETING:
            raise InvalidRequest(f"Upload {upload_id} is being completed: it no longer accepts changes.")
        if obj["status"] == "pending" and obj["expires_at"] <= now():
            obj["status"] = "expired"
        if obj["status"] != "pending":
            raise InvalidRequest(f"Upload {upload_id} is {obj['status']}: it no longer accepts changes.")
        return obj

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
                await self._pending_upload(conn, project, upload_id)
                path = self.blobs.commit(data[0].path, part_id)
                part = {"id": part_id, "object": "upload.part", "created_at": now(), "upload_id": upload_id}
                try:
                    await upload_parts.insert(
                        conn, project, part, upload_id=upload_id, path=str(path), bytes=data[0].size
                    )
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
            return part
        finally:
            form.discard()

    async def complete_upload(self, project: str, upload_id: str, body: dict[str, Any]) -> dict[str, Any]:
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
            obj = await self._pending_upload(conn, project, upload_id)
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.path, t.c.bytes).where(t.c.upload_id == upload_id, t.c.project == project)
                )
            ).all()
            parts = {r[0]: (Path(r[1]), int(r[2])) for r in rows}
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
            obj["_claim"] = {"owner": self.owner, "until": time.time() + self.lease_s, "file_id": file_id}
            await uploads.replace(conn, project, obj, status=_COMPLETING)
        # Assembled straight into the File's own path: a crash leaves it where the rollback looks for it.
        target = self.blobs.path_for(file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        lost = threading.Event()
        renewer = asyncio.create_task(self._renew_claim(project, upload_id, file_id, lost))
        try:
            try:
                digest = await asyncio.to_thread(self._assemble, [parts[p][0] for p in req.part_ids], target, lost)
            finally:
                lost.set()  # stops the copy too, when this request itself was cancelled
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            if req.md5 is not None and req.md5.lower() != digest:
                raise InvalidRequest(
                    "The md5 checksum of the assembled file does not match the 'md5' given.",
                    param="md5",
                    code="invalid_value",
                )
            file_obj = self._file_object(file_id, total, obj["filename"], obj["purpose"], obj["_file_ttl"])
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                if row is None or not self._claimed(row, file_id):
                    raise InvalidRequest(f"Upload {upload_id} was not completed: its completion was interrupted.")
                obj = dict(row.data)
                obj.pop("_claim", None)
                await files.insert(
                    conn, project, file_obj, purpose=obj["purpose"], expires_at=file_obj["expires_at"], path=str(target)
                )
                obj["status"] = "completed"
                obj["file"] = file_obj
                await uploads.replace(conn, project, obj, status="completed")
                await conn.execute(t.delete().where(t.c.upload_id == upload_id))
        except BaseException:
            target.unlink(missing_ok=True)
            await self._release_claim(project, upload_id, file_id)
            raise
        for part_path, _ in parts.values():
            part_path.unlink(missing_ok=True)
        return _public(obj)

    def _claimed(self, row: Any, file_id: str) -> bool:
        claim = row.data.get("_claim")
        return bool(
            row.status == _COMPLETING
            and claim is not None
            and claim["owner"] == self.owner
            and claim["file_id"] == file_id
        )

    def _assemble(self, sources: Sequence[Path], target: Path, lost: threading.Event) -> str:
        """Copy the parts into `target` (in a worker thread); their md5. Stops when the claim is lost."""
        digest = hashlib.md5(usedforsecurity=False)
        with target.open("wb") as out:
            for i, source in enumerate(sources):
                if i and self.assembly_pause_s:
                    lost.wait(self.assembly_pause_s)
                with source.open("rb") as src:
                    while chunk := src.read(1 << 20):
                        if lost.is_set():
                            raise InvalidRequest("The upload's completion was interrupted.")
                        digest.update(chunk)
                        out.write(chunk)
        return digest.hexdigest()

    async def _renew_claim(self, project: str, upload_id: str, file_id: str, lost: threading.Event) -> None:
        while True:
            await asyncio.sleep(max(self.lease_s / 3, 0.1))
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                if row is None or not self._claimed(row, file_id):
                    lost.set()
                    return
                obj = dict(row.data)
                obj["_claim"] = {**obj["_claim"], "until": time.time() + self.lease_s}
                await uploads.replace(conn, project, obj)

    async def _release_claim(self, project: str, upload_id: str, file_id: str) -> None:
        """A completion that failed gives its upload back (`pending`), if it still holds it."""
        with contextlib.suppress(Exception):
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                if row is not None and self._claimed(row, file_id):
                    obj = dict(row.data)
                    obj.pop("_claim", None)
                    await uploads.replace(conn, project, obj, status="pending")

    async def cancel_upload(self, project: str, upload_id: str) -> dict[str, Any]:
        t = tables.upload_parts
        await self._settle(project, upload_id)
        async with self.db.write() as conn:
            obj = await self._pending_upload(conn, project, upload_id)
            obj["status"] = "cancelled"
            await uploads.replace(conn, project, obj, status="cancelled")
            paths = list((await conn.execute(sa.select(t.c.path).where(t.c.upload_id == upload_id))).scalars())
            await conn.execute(t.delete().where(t.c.upload_id == upload_id))
        for p in paths:
            Path(p).unlink(missing_ok=True)
        return _public(obj)

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
            if row.status == _COMPLETING and not self._lapsed(row.data.get("_claim")):
                continue
            async with self.db.write() as conn:
                row = await uploads.get_row(conn, project, upload_id, lock=True)
                leftovers = await self._settle_row(conn, project, row) if row is not None else []
            for path in leftovers:
                path.unlink(missing_ok=True)
            changed += 1
        return changed


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}
