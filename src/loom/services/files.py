"""Files: multipart uploads streamed to disk, Files Loom makes itself, and their expiry (Uploads, large
files sent in parts, are `loom.services.uploads`)."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.records import FileRecord
from loom.schemas.forms import Form, UploadedFile
from loom.services.common import ListParams
from loom.store import tables
from loom.store.blobs import BlobStore
from loom.store.collections import files
from loom.store.db import Database
from loom.store.repo import Page

log = logging.getLogger(__name__)
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_BATCH_DEFAULT_TTL = 30 * 24 * 3600


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


def choice_error(param: str, value: str, allowed: tuple[str, ...]) -> InvalidRequest:
    listed = ", ".join(f"'{a}'" for a in allowed)
    return InvalidRequest(
        f"Invalid value: '{value}'. Supported values are: {listed}.", param=param, code="invalid_value"
    )


def expires_after_seconds(fields: dict[str, str] | dict[str, Any], prefix: str) -> int | None:
    """`expires_after` as seconds, from form fields (`expires_after[seconds]`) or a JSON object."""
    anchor = fields.get(f"{prefix}[anchor]")
    seconds = fields.get(f"{prefix}[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise choice_error(f"{prefix}.anchor", str(anchor), ("created_at",))
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
    def __init__(self, db: Database, blobs: BlobStore, max_file_bytes: int) -> None:
        self.db = db
        self.blobs = blobs
        self.max_file_bytes = max_file_bytes
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
                raise choice_error("purpose", purpose, FILE_PURPOSES)
            ttl = expires_after_seconds(form.fields, "expires_after")
            if ttl is None and purpose == "batch":
                ttl = _BATCH_DEFAULT_TTL
            return await self._store(project, uploaded[0], purpose, ttl)
        finally:
            form.discard()

    @staticmethod
    def file_object(file_id: str, size: int, filename: str, purpose: str, ttl: int | None) -> dict[str, Any]:
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
        obj = self.file_object(file_id, upload.size, upload.filename, purpose, ttl)
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
        return dict(FileRecord.from_row(row).to_wire())

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
