"""Files (multipart upload streamed to disk) and Uploads (large files in parts)."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.schemas.common import parse
from loom.schemas.files import UploadComplete, UploadCreate
from loom.schemas.forms import Form, UploadedFile
from loom.services.common import ListParams, files, uploads
from loom.store import tables
from loom.store.blobs import BlobStore
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
    def __init__(self, db: Database, blobs: BlobStore, max_file_bytes: int, upload_expiry_s: int) -> None:
        self.db = db
        self.blobs = blobs
        self.max_file_bytes = max_file_bytes
        self.upload_expiry_s = upload_expiry_s
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

    async def _store(self, project: str, upload: UploadedFile, purpose: str, ttl: int | None) -> dict[str, Any]:
        file_id = ids.new_id("file", 22)
        created = now()
        path = self.blobs.commit(upload.path, file_id)
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": upload.size,
            "created_at": created,
            "expires_at": created + ttl if ttl is not None else None,
            "filename": clean_filename(upload.filename),
            # `evals` is accepted on upload, but the File object's `purpose` enum (spec and SDK types) lacks
            # it: strict clients would reject the response. Shown as `user_data`; the column keeps `evals`.
            "purpose": "user_data" if purpose == "evals" else purpose,
            "status": "processed",
            "status_details": None,
        }
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

    async def _pending_upload(self, conn: Any, project: str, upload_id: str) -> dict[str, Any]:
        row = await uploads.get_row(conn, project, upload_id)
        if row is None:
            raise NotFound("upload", upload_id)
        obj = dict(row.data)
        if row.status == _COMPLETING:
            raise InvalidRequest(f"Upload {upload_id} is being completed: it no longer accepts changes.")
        if obj["status"] == "pending" and obj["expires_at"] <= now():
            obj["status"] = "expired"
            await uploads.replace(conn, project, obj, status="expired")
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
        t = tables.upload_parts
        async with self.db.read() as conn:
            obj = await self._pending_upload(conn, project, upload_id)
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.path, t.c.bytes).where(t.c.upload_id == upload_id, t.c.project == project)
                )
            ).all()
        parts = {r[0]: (Path(r[1]), int(r[2])) for r in rows}
        if len(set(req.part_ids)) != len(req.part_ids):
            raise InvalidRequest(
                "Invalid 'part_ids': a part may appear only once.", param="part_ids", code="invalid_value"
            )
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
        # Claim the upload before assembling it: of concurrent completions only one may make a File.
        u = tables.uploads
        claim = (
            u.update()
            .where(u.c.id == upload_id, u.c.project == project, u.c.status == "pending")
            .values(status=_COMPLETING)
        )
        async with self.db.write() as conn:
            claimed = (await conn.execute(claim)).rowcount
        if not claimed:
            raise InvalidRequest(f"Upload {upload_id} is being completed: it no longer accepts changes.")
        temp = self.blobs.new_temp()
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with temp.open("wb") as out:
                for part_id in req.part_ids:
                    with parts[part_id][0].open("rb") as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
            if req.md5 is not None and req.md5.lower() != digest.hexdigest():
                raise InvalidRequest(
                    "The md5 checksum of the assembled file does not match the 'md5' given.",
                    param="md5",
                    code="invalid_value",
                )
            file_obj = await self._store(
                project,
                UploadedFile("file", obj["filename"], temp, total, obj["_mime_type"]),
                obj["purpose"],
                obj["_file_ttl"],
            )
        except BaseException:
            async with self.db.write() as conn:
                await conn.execute(
                    u.update().where(u.c.id == upload_id, u.c.status == _COMPLETING).values(status="pending")
                )
            raise
        finally:
            temp.unlink(missing_ok=True)
        async with self.db.write() as conn:
            obj["status"] = "completed"
            obj["file"] = file_obj
            await uploads.replace(conn, project, obj, status="completed")
            await conn.execute(t.delete().where(t.c.upload_id == upload_id))
        for part_path, _ in parts.values():
            part_path.unlink(missing_ok=True)
        return _public(obj)

    async def cancel_upload(self, project: str, upload_id: str) -> dict[str, Any]:
        t = tables.upload_parts
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
        """Pending uploads past their hour become `expired` and lose their parts."""
        u, t = tables.uploads, tables.upload_parts
        async with self.db.write() as conn:
            stale = (
                await conn.execute(
                    sa.select(u.c.id, u.c.project).where(u.c.status == "pending", u.c.expires_at <= now())
                )
            ).all()
            paths: list[str] = []
            for upload_id, project in stale:
                obj = await uploads.get(conn, project, upload_id)
                if obj is None:
                    continue
                obj["status"] = "expired"
                await uploads.replace(conn, project, obj, status="expired")
                paths += list((await conn.execute(sa.select(t.c.path).where(t.c.upload_id == upload_id))).scalars())
                await conn.execute(t.delete().where(t.c.upload_id == upload_id))
        for p in paths:
            Path(p).unlink(missing_ok=True)
        return len(stale)


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}
