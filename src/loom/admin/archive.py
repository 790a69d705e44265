"""`loom export` and `loom import`: a project's objects in one portable archive, and back.

The archive (`loom-export/v1`) is a tar file:

    manifest.json                 {"format": "loom-export/v1", "project", "exported_at", "loom_version", "counts"}
    <table>.jsonl                 one row per line: id, created_at, data (the object, with Loom's private
                                  `_` keys) and the table's own columns; tables in dependency order
    blobs/<file_id>               the bytes of each File

Tables: assistants, files, vector_stores, vector_store_file_batches, vector_store_files, threads,
messages, runs, run_steps (not API keys, not pending uploads, not the search index, which the importing
server rebuilds by ingesting the vector stores' files again).

`loom import` also reads `assistants-thread-export/v1`, the format of the open-source exporter people
used before OpenAI's sunset: a directory with `assistants.json` (a list of raw assistant objects) and
`threads/<thread_id>.json` files, each `{"export_schema": "assistants-thread-export/v1", "thread": {…},
"messages": [… ascending], "runs": [{…, "steps": [… ascending]}], "files": {id: metadata}, "errors": […]}`
(File bytes are not in that format: referenced files are reported as missing).

Import keeps ids. An id already present in the target project is left as it is (so importing twice
changes nothing); an id taken by another project is remapped to a new id derived from the target
project and the old id (the same on every import, so this is idempotent too), and every reference to
it in the imported objects follows. Each thread (with its messages, runs and steps) is imported in one
transaction; so is each other object. Runs that were still active when exported are imported as failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom import __version__
from loom.records import split_legacy
from loom.runs.status import ACTIVE
from loom.store import tables
from loom.store.blobstore import BlobNotFound, BlobStorage, bytes_chunks, file_key
from loom.store.db import Database

FORMAT = "loom-export/v1"
THREAD_EXPORT = "assistants-thread-export/v1"
# Objects that are not threads, in dependency order; then each thread with its children.
OBJECT_TABLES = ("assistants", "files", "vector_stores", "vector_store_file_batches", "vector_store_files")
THREAD_TABLES = ("threads", "messages", "runs", "run_steps")
ALL_TABLES = OBJECT_TABLES + THREAD_TABLES

Row = dict[str, Any]


class ArchiveError(ValueError):
    """The archive cannot be read (one line, shown as-is)."""


@dataclass
class Bundle:
    """What an archive holds: rows by table (in file order) and file bytes by file id."""

    project: str | None
    rows: dict[str, list[Row]] = field(default_factory=lambda: {t: [] for t in ALL_TABLES})
    blobs: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    imported: dict[str, int] = field(default_factory=dict)
    already_present: dict[str, int] = field(default_factory=dict)
    remapped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"imported {n} {t}" for t, n in self.imported.items() if n]
        out += [f"already present (left as is): {n} {t}" for t, n in self.already_present.items() if n]
        out += [f"remapped {old} -> {new} (id taken by another project)" for old, new in self.remapped.items()]
        return out + self.notes


# ------------------------------------------------------------------------------------------------- export


async def export_project(db: Database, blobs: BlobStorage, project: str, out: Path) -> dict[str, int]:
    """Write `project`'s objects to the tar archive `out`; returns the row count of each table."""
    counts: dict[str, int] = {}
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w") as tar:
        async with db.read() as conn:
            for name in ALL_TABLES:
                table = tables.metadata.tables[name]
                result = await conn.execute(sa.select(table).where(table.c.project == project).order_by(table.c.seq))
                rows = [_row_out(dict(r)) for r in result.mappings()]
                counts[name] = len(rows)
                for row in rows if name == "files" else []:
                    key = str(row.pop("path"))  # a key of this store; the importer stores the bytes anew
                    with contextlib.suppress(BlobNotFound):
                        async with blobs.local_file(key) as path:
                            tar.add(str(path), arcname=f"blobs/{row['id']}")
                _add(tar, f"{name}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
        manifest = {
            "format": FORMAT,
            "project": project,
            "exported_at": int(time.time()),
            "loom_version": __version__,
            "counts": counts,
        }
        _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
    tmp.replace(out)
    return counts


def _row_out(row: Row) -> Row:
    row.pop("seq", None)
    row.pop("project", None)
    for lease in ("lease_owner", "lease_expires_at"):
        row.pop(lease, None)
    return row


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------------- read


def read_archive(path: Path) -> Bundle:
    """A Loom archive (tar), an assistants-thread-export/v1 directory, or one such thread file."""
    if path.is_dir():
        return _read_thread_export_dir(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file or directory")
    if tarfile.is_tarfile(path):
        return _read_loom_archive(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArchiveError(f"{path}: neither a Loom archive nor an {THREAD_EXPORT} file ({exc})") from None
    bundle = Bundle(project=None)
    _add_thread_record(bundle, record, path.name)
    return bundle


def _read_loom_archive(path: Path) -> Bundle:
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            handle = tar.extractfile(members[name])
            assert handle is not None
            return handle.read()

        if "manifest.json" not in members:
            raise ArchiveError(f"{path}: no manifest.json: not a Loom archive")
        manifest = json.loads(read("manifest.json"))
        if manifest.get("format") != FORMAT:
            raise ArchiveError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        bundle = Bundle(project=manifest.get("project"))
        for name in ALL_TABLES:
            if f"{name}.jsonl" in members:
                bundle.rows[name] = [json.loads(line) for line in read(f"{name}.jsonl").splitlines() if line.strip()]
        for name in members:
            if name.startswith("blobs/"):
                bundle.blobs[name.removeprefix("blobs/")] = read(name)
    return bundle


def _read_thread_export_dir(path: Path) -> Bundle:
    bundle = Bundle(project=None)
    assistants = path / "assistants.json"
    if assistants.is_file():
        for obj in json.loads(assistants.read_text()):
            bundle.rows["assistants"].append({"id": obj["id"], "created_at": obj["created_at"], "data": obj})
    thread_files = sorted((path / "threads").glob("*.json")) if (path / "threads").is_dir() else []
    if not thread_files and not bundle.rows["assistants"]:
        raise ArchiveError(f"{path}: no assistants.json and no threads/*.json: not an {THREAD_EXPORT} directory")
    for file in thread_files:
        _add_thread_record(bundle, json.loads(file.read_text()), file.name)
    return bundle


def _add_thread_record(bundle: Bundle, record: Any, where: str) -> None:
    if not isinstance(record, dict) or record.get("export_schema") != THREAD_EXPORT:
        raise ArchiveError(f"{where}: export_schema is not {THREAD_EXPORT!r}")
    thread = record.get("thread")
    if not isinstance(thread, dict):
        bundle.notes.append(f"{where}: no thread object (the export failed for it): skipped")
        return
    tid = thread["id"]
    bundle.rows["threads"].append({"id": tid, "created_at": thread["created_at"], "data": thread})
    for message in record.get("messages") or []:
        bundle.rows["messages"].append(
            {
                "id": message["id"],
                "created_at": message["created_at"],
                "data": message,
                "thread_id": tid,
                "run_id": message.get("run_id"),
            }
        )
    for raw in record.get("runs") or []:
        run = {k: v for k, v in raw.items() if k != "steps"}
        bundle.rows["runs"].append(
            {
                "id": run["id"],
                "created_at": run["created_at"],
                "data": run,
                "thread_id": tid,
                "status": run["status"],
                "expires_at": run.get("expires_at"),
            }
        )
        for step in raw.get("steps") or []:
            bundle.rows["run_steps"].append(
                {
                    "id": step["id"],
                    "created_at": step["created_at"],
                    "data": step,
                    "thread_id": tid,
                    "run_id": run["id"],
                }
            )
    files = record.get("files") or {}
    if files:
        bundle.notes.append(
            f"{where}: {len(files)} referenced file(s) not imported ({THREAD_EXPORT} holds their metadata, not "
            f"their bytes): {', '.join(sorted(files))}"
        )


# ------------------------------------------------------------------------------------------------- import


async def import_bundle(db: Database, blobs: BlobStorage, bundle: Bundle, project: str) -> ImportReport:
    report = ImportReport(notes=list(bundle.notes))
    report.imported = dict.fromkeys(ALL_TABLES, 0)
    report.already_present = dict.fromkeys(ALL_TABLES, 0)
    mapping, present = await _plan(db, bundle, project)
    report.remapped = {old: new for old, new in mapping.items() if old != new}
    # Objects other than threads: one transaction each.
    for name in OBJECT_TABLES:
        for row in bundle.rows[name]:
            key = _key(name, row)
            if key in present:
                report.already_present[name] += 1
                continue
            async with db.write() as conn:
                await _insert(conn, blobs, bundle, name, _remap(row, mapping), project, row["id"])
            report.imported[name] += 1
    # Each thread with its messages, runs and steps: one transaction.
    children: dict[str, dict[str, list[Row]]] = {}
    for name in THREAD_TABLES[1:]:
        for row in bundle.rows[name]:
            children.setdefault(row["thread_id"], {}).setdefault(name, []).append(row)
    for thread in bundle.rows["threads"]:
        if _key("threads", thread) in present:
            report.already_present["threads"] += 1
            continue
        async with db.write() as conn:
            await _insert(conn, blobs, bundle, "threads", _remap(thread, mapping), project, thread["id"])
            for name in THREAD_TABLES[1:]:
                for row in children.get(thread["id"], {}).get(name, []):
                    if _key(name, row) in present:
                        report.already_present[name] += 1
                        continue
                    await _insert(conn, blobs, bundle, name, _remap(row, mapping), project, row["id"])
                    report.imported[name] += 1
        report.imported["threads"] += 1
    return report


def _key(table: str, row: Row) -> tuple[str, str, str]:
    return (table, row["id"], row.get("vector_store_id") or "")


async def _plan(db: Database, bundle: Bundle, project: str) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """Which ids are already in the project (left alone) and which are taken elsewhere (remapped)."""
    mapping: dict[str, str] = {}
    present: set[tuple[str, str, str]] = set()
    async with db.read() as conn:
        for name in ALL_TABLES:
            table = tables.metadata.tables[name]
            for row in bundle.rows[name]:
                new_id = row["id"]
                if name != "vector_store_files":  # its id is the File's: it follows the file's mapping
                    owner = await _owner(conn, table, new_id)
                    if owner is not None and owner != project:
                        new_id = _derived_id(row["id"], project)
                        owner = await _owner(conn, table, new_id)
                    mapping[row["id"]] = new_id
                    if owner == project:
                        present.add(_key(name, row))
                else:
                    file_id = mapping.get(row["id"], row["id"])
                    store_id = mapping.get(row["vector_store_id"], row["vector_store_id"])
                    found = (
                        await conn.execute(
                            sa.select(table.c.id).where(table.c.id == file_id, table.c.vector_store_id == store_id)
                        )
                    ).first()
                    if found is not None:
                        present.add(_key(name, row))
    return mapping, present


async def _owner(conn: AsyncConnection, table: sa.Table, object_id: str) -> str | None:
    row = (await conn.execute(sa.select(table.c.project).where(table.c.id == object_id).limit(1))).first()
    return None if row is None else str(row[0])


def _derived_id(old: str, project: str) -> str:
    prefix, _, rest = old.rpartition("_")
    digest = hashlib.sha256(f"{project}\0{old}".encode()).hexdigest()[: max(24, len(rest))]
    return f"{prefix}_{digest}" if prefix else digest


def _remap(value: Any, mapping: dict[str, str]) -> Any:
    """Every string equal to a remapped id, anywhere in the row, becomes the new id."""
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, dict):
        return {k: _remap(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_remap(v, mapping) for v in value]
    return value


async def _insert(
    conn: AsyncConnection, blobs: BlobStorage, bundle: Bundle, name: str, row: Row, project: str, original: str
) -> None:
    """Insert one row (already remapped); `original` is its id in the archive (its bytes' name)."""
    table = tables.metadata.tables[name]
    data = dict(row["data"])
    values: Row = {k: v for k, v in row.items() if k in table.c and k not in ("seq", "project")}
    if any(k.startswith("_") for k in data):
        # Exported by a version that kept its bookkeeping inside `data`: it goes to `state` (or, in a
        # table without one, is dropped), so the wire object stays exactly the wire object.
        data, legacy = split_legacy(data)
        if "state" in table.c and values.get("state") is None:
            values["state"] = legacy
    if name == "runs" and data.get("status") in ACTIVE:
        # Nothing executes it here: it would wait forever, or be failed by the lease sweeper later.
        data.update(status="failed", failed_at=int(time.time()), last_error=_INTERRUPTED)
        values.update(status="failed", lease_owner=None, lease_expires_at=None)
    if name == "files":
        content = bundle.blobs.get(original)
        key = file_key(row["id"])
        await blobs.put(key, bytes_chunks(content or b""))
        values["path"] = key
    if name == "vector_store_files":
        # The importing server indexes it again (its chunks are not in the archive).
        data.update(status="in_progress", usage_bytes=0, last_error=None)
        values.update(status="in_progress", state=None)  # with no ingestion attempt counted yet
    if name == "vector_stores":
        data["usage_bytes"] = 0  # counted again as its files are indexed
    values.update(project=project, data=data)
    await conn.execute(table.insert().values(**values))


_INTERRUPTED = {"code": "server_error", "message": "The run was still active when it was exported."}
