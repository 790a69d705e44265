"""A parsed multipart form: small fields in memory, file parts as temporary files on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class UploadedFile:
    field: str
    filename: str
    path: Path
    size: int
    content_type: str


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def discard(self) -> None:
        for f in self.files:
            f.path.unlink(missing_ok=True)
