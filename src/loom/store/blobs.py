"""File bytes on local disk, named by file id (never by the client's file name)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, name: str) -> Path:
        # Names are Loom's own ids (letters, digits, `-`, `_`), so no client text reaches the path.
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"not a blob name: {name!r}")
        return self.root / name[-2:] / name

    def new_temp(self) -> Path:
        return self.tmp / secrets.token_hex(16)

    def commit(self, temp: Path, name: str) -> Path:
        target = self.path_for(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        return target

    def delete(self, name: str) -> None:
        self.path_for(name).unlink(missing_ok=True)

    def clean_temp(self) -> None:
        """Remove half-written uploads a crashed process left behind."""
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
