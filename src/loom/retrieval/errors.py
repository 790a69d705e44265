"""Why a file could not be indexed: the `last_error.code` values of a vector store file."""

from __future__ import annotations

from loom.errors import LoomError


class FileProcessingError(LoomError):
    """A file could not be parsed or indexed. `code` is what `vector_store.file.last_error.code` shows."""

    status = 400
    type = "invalid_request_error"
    default_code = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code=self.default_code)


class UnsupportedFile(FileProcessingError):
    """The file's type is not one we can extract text from."""

    default_code = "unsupported_file"


class InvalidFile(FileProcessingError):
    """The file claims a supported type but is corrupt, encrypted or empty of text."""

    default_code = "invalid_file"


class IndexingFailed(FileProcessingError):
    """Something on our side failed (embedding endpoint down, database error)."""

    status = 500
    type = "server_error"
    default_code = "server_error"
