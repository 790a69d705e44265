"""What the run engine needs from the rest of Loom, as narrow protocols: the engine is handed objects
that satisfy them (wired in `loom.container`) and never imports the services that do.

- `StoredFileReader`: the code interpreter copies a run's input Files into its sandbox
  (satisfied by `loom.services.files.FileService`);
- `OutputFileWriter`: the code interpreter makes Files of images and linked sandbox files (the same);
- `VectorSearch`: file search over a run's vector stores
  (satisfied by `loom.services.vector_stores.VectorStoreService`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from loom.retrieval.search import SearchResult


class StoredFileReader(Protocol):
    async def stored_file(self, project: str, file_id: str) -> tuple[str, str] | None:
        """The filename and blob key of one of the project's live Files; None when there is none
        (never was, deleted, expired)."""
        ...

    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A path to the blob's bytes on this machine while the context lasts (see `BlobStorage`)."""
        ...


class OutputFileWriter(Protocol):
    def new_temp(self) -> Path:
        """A fresh temporary path on the file store's disk, for `write_output_from`."""
        ...

    async def write_output(self, project: str, filename: str, data: bytes) -> str:
        """A new File (purpose `assistants_output`) holding `data`; its id."""
        ...

    async def write_output_from(self, project: str, filename: str, temp: Path, size: int) -> str:
        """A new File (purpose `assistants_output`) from `temp` (a `new_temp()` path, taken over: kept
        or removed); its id."""
        ...


class VectorSearch(Protocol):
    async def search_for_run(
        self,
        project: str,
        store_ids: Sequence[str],
        queries: Sequence[str],
        *,
        max_num_results: int,
        score_threshold: float,
        ranker: str = "auto",
        wait_s: float = 60.0,
    ) -> list[SearchResult]:
        """The best passages of the project's live stores among `store_ids` for `queries`, after waiting
        (at most `wait_s`) for files still being ingested."""
        ...
