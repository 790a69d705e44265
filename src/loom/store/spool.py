"""Temporary files on this machine's disk: multipart bodies on their way to the blob store, sandbox
files being exported, and the copies an object store spools for `local_file`."""

from __future__ import annotations

import secrets
from pathlib import Path


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def new_temp(self) -> Path:
        return self.root / secrets.token_hex(16)

    def clean(self) -> None:
        """Remove the temporary files a crashed process left behind."""
        for leftover in self.root.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
