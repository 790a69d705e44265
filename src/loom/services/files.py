"""Files: multipart uploads streamed into the blob store, Files Loom makes itself, their expiry, and the
janitor of objects no File owns (Uploads, large files sent in parts, are `loom.services.uploads`).

A File's row is committed only after its bytes are durable in the store (put first, row second; a
failed insert deletes the object again); the row keeps the object's key (`files.path`), never a path
of one machine, so any replica serves any File."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import unicodedata
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.records import FileRecord
from loom.schemas.forms import Form
from loom.services.common import ListParams
from loom.store import tables
from loom.store.blobstore import (
    BlobNotFound,
    BlobReader,
    BlobStorage,
    BlobStoreUnavailable,
    bytes_chunks,
    file_chunks,
    file_key,
)
from loom.store.collections import files
from loom.store.db import Database
from loom.store.repo import Page
from loom.store.spool import Spool

log = logging.getLogger(__name__)
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_BATCH_DEFAULT_TTL = 30 * 24 * 3600
# An object no row names is an orphan (a crash between put and insert) once it is this old; younger
# ones may belong to a put whose row is being inserted right now.
ORPHAN_AGE_S = 3600.0
_ORPHAN_BATCH = 500


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
    def __init__(self, db: Database, blobs: BlobStorage, spool: Spool, max_file_bytes: int) -> None:
        self.db = db
        self.blobs = blobs
        self.spool = spool
        self.max_file_bytes = max_file_bytes
        # Called with (project, file_id) after a File is deleted or expires (vector stores drop it).
        self.delete_hooks: list[Callable[[str, str], Awaitable[None]]] = []

    async def _after_delete(self, project: str, file_id: str) -> None:
        for hook in self.delete_hooks:
            try:
                await hook(project, file_id)
            except Exception:
                log.exception("file delete hook failed for %s", file_id)

    async def discard_object(self, key: str) -> None:
        """Delete an object whose row is gone or was never written; a store that fails now leaves it to
        the orphan janitor (never raises: it runs while another error is on its way)."""
        try:
            await asyncio.shield(self.blobs.delete(key))
        except Exception as exc:
            log.warning("could not delete the object %s now (the janitor will): %s", key, exc)

    async def create_from_form(self, project: str, form: Form) -> dict[str, Any]:
        """`POST /files`. Takes ownership of the form's temporary files: removed once stored, or on error."""
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
            upload = uploaded[0]
            return await self._store(project, file_chunks(upload.path), upload.filename, purpose, ttl)
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

    async def _store(
        self, project: str, chunks: AsyncIterable[bytes], filename: str, purpose: str, ttl: int | None
    ) -> dict[str, Any]:
        """Put the bytes, then commit the row that names them (an insert that fails deletes them again)."""
        file_id = ids.new_id("file", 22)
        key = file_key(file_id)
        info = await self.blobs.put(key, chunks)
        obj = self.file_object(file_id, info.size, filename, purpose, ttl)
        try:
            async with self.db.write() as conn:
                await files.insert(conn, project, obj, purpose=purpose, expires_at=obj["expires_at"], path=key)
        except BaseException:
            await self.discard_object(key)
            raise
        return obj

    async def create_output(
        self, project: str, filename: str, data: bytes, purpose: str = "assistants_output"
    ) -> dict[str, Any]:
        """A File made by Loom itself (code interpreter output)."""
        return await self._store(project, bytes_chunks(data), filename, purpose, None)

    async def create_output_from(
        self, project: str, filename: str, temp: Path, size: int, purpose: str = "assistants_output"
    ) -> dict[str, Any]:
        """A File made by Loom from a file it wrote to `new_temp()` (taken over: removed once stored)."""
        try:
            return await self._store(project, file_chunks(temp), filename, purpose, None)
        finally:
            temp.unlink(missing_ok=True)

    async def _live_row(self, project: str, file_id: str) -> Any:
        async with self.db.read() as conn:
            row = await files.get_row(conn, project, file_id)
        if row is None or (row.expires_at is not None and row.expires_at <= now()):
            raise NotFound("file", file_id)
        return row

    async def get(self, project: str, file_id: str) -> dict[str, Any]:
        return dict(FileRecord.from_row(await self._live_row(project, file_id)).to_wire())

    async def content(self, project: str, file_id: str) -> BlobReader:
        """`GET /files/{id}/content`: the File's bytes as a stream (its `size` is the Content-Length)."""
        row = await self._live_row(project, file_id)
        try:
            return await self.blobs.open(str(row.path))
        except BlobNotFound as exc:
            # A row whose object is gone (removed by hand, a store restored from an old backup).
            log.error("file %s: its object %s is missing from %s", file_id, row.path, self.blobs.description)
            raise BlobStoreUnavailable(f"the object {row.path} of {file_id} is missing") from exc

    # What the run engine's code interpreter needs (`loom.runs.ports`: StoredFileReader, OutputFileWriter).

    async def stored_file(self, project: str, file_id: str) -> tuple[str, str] | None:
        try:
            row = await self._live_row(project, file_id)
        except NotFound:
            return None
        return str(row.data["filename"]), str(row.path)

    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]:
        return self.blobs.local_file(key)

    def new_temp(self) -> Path:
        return self.spool.new_temp()

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
        t = tables.files
        async with self.db.write() as conn:
            key = (
                await conn.execute(sa.select(t.c.path).where(t.c.project == project, t.c.id == file_id))
            ).scalar_one_or_none()
            if key is None or not await files.delete(conn, project, file_id):
                raise NotFound("file", file_id)
        await self.discard_object(str(key))
        await self._after_delete(project, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def delete_expired(self) -> int:
        t = tables.files
        async with self.db.write() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.project, t.c.path).where(t.c.expires_at.is_not(None), t.c.expires_at <= now())
                )
            ).all()
            expired = [r[0] for r in rows]
            if expired:
                await conn.execute(t.delete().where(t.c.id.in_(expired)))
        for file_id, project, key in rows:
            await self.discard_object(str(key))
            await self._after_delete(project, file_id)
        return len(expired)

    async def sweep_orphans(self, older_than_s: float = ORPHAN_AGE_S) -> int:
        """Delete the objects no File or Upload part names that are older than `older_than_s` (what a
        crash between a put and its row left), and what interrupted puts left; how many objects went."""
        cutoff = time.time() - older_than_s
        removed = 0
        batch: builtins.list[str] = []
        async for entry in self.blobs.list():
            if entry.modified < cutoff:
                batch.append(entry.key)
            if len(batch) >= _ORPHAN_BATCH:
                removed += await self._remove_unnamed(batch)
                batch = []
        if batch:
            removed += await self._remove_unnamed(batch)
        await self.blobs.discard_incomplete(older_than_s)
        return removed

    async def _remove_unnamed(self, keys: Sequence[str]) -> int:
        # A key ends with its File's or part's id (an indexed column), so no table is scanned.
        names = [*{k.rsplit("/", 1)[-1] for k in keys}]
        named: set[str] = set()
        async with self.db.read() as conn:
            for table in (tables.files, tables.upload_parts):
                named.update((await conn.execute(sa.select(table.c.path).where(table.c.id.in_(names)))).scalars())
        orphans = [k for k in keys if k not in named]
        for key in orphans:
            log.info("removing the orphan object %s", key)
            await self.blobs.delete(key)
        return len(orphans)
