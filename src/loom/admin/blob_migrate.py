"""`loom blobs migrate --to s3://…`: copy every object of one blob store into another, verified.

Keys stay the same (the database names objects by key, not by store), so once the copy is complete and
verified, pointing `LOOM_BLOB_URL` at the target is the whole migration. Each object is streamed (never
whole in memory), then read back from the target and compared by size and SHA-256 with the source; an
object already in the target with the same size and hash is left as it is, so a rerun resumes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from loom.store.blobstore import BlobInfo, BlobNotFound, BlobStorage


@dataclass
class MigrationReport:
    copied: int = 0
    copied_bytes: int = 0
    already_present: int = 0
    mismatched: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched

    def lines(self, source: BlobStorage, target: BlobStorage) -> list[str]:
        out = [
            f"from {source.description}",
            f"to {target.description}",
            f"copied {self.copied} objects ({self.copied_bytes} bytes), each verified by size and sha256",
            f"already present and identical: {self.already_present}",
        ]
        out += [f"gone from the source during the copy (deleted meanwhile): {key}" for key in self.vanished]
        out += [f"MISMATCH after copying (size or sha256 differ): {key}" for key in self.mismatched]
        return out


async def digest_of(store: BlobStorage, key: str) -> BlobInfo:
    """Size and SHA-256 of a stored object, read as a stream."""
    sha = hashlib.sha256()
    size = 0
    async with await store.open(key) as reader:
        async for chunk in reader:
            sha.update(chunk)
            size += len(chunk)
    return BlobInfo(size, sha.hexdigest())


async def migrate_blobs(source: BlobStorage, target: BlobStorage) -> MigrationReport:
    report = MigrationReport()
    async for entry in source.list():
        try:
            want = await digest_of(source, entry.key)
            if await target.exists(entry.key) and await digest_of(target, entry.key) == want:
                report.already_present += 1
                continue
            async with await source.open(entry.key) as reader:
                put = await target.put(entry.key, reader)
        except BlobNotFound:
            report.vanished.append(entry.key)
            continue
        if put != want or await digest_of(target, entry.key) != want:
            report.mismatched.append(entry.key)
            continue
        report.copied += 1
        report.copied_bytes += put.size
    return report
