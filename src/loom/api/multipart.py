"""A streaming multipart/form-data reader: file parts go straight to disk, never whole into memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

from loom.errors import InvalidRequest, PayloadTooLarge
from loom.schemas.forms import Form, UploadedFile

_MAX_FIELD_BYTES = 64 * 1024
# A part's header line (Content-Disposition holds the file name). python-multipart's default (4 KB) refuses
# long file names outright; they are accepted and shortened by the file service instead.
_MAX_HEADER_BYTES = 32 * 1024
_MAX_FIELDS = 64
# File parts in one form (the routes use the first; the others are read and dropped).
_MAX_FILE_PARTS = 16
# What a form may carry besides its files' bytes: boundaries, part headers and small fields.
FORM_OVERHEAD_BYTES = 1024 * 1024


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File is too large: the maximum size is {limit} bytes ({limit // (1024 * 1024)} MB).",
        param="file",
        code="file_too_large",
    )


def _body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body too large: a form may hold at most {limit} bytes of files "
        f"and {FORM_OVERHEAD_BYTES} bytes besides.",
        code="request_too_large",
    )


class _Reader:
    def __init__(self, file_fields: set[str], max_file_bytes: int, temp_path: Callable[[], Path]) -> None:
        self.form = Form()
        self.file_fields = file_fields
        self.max_file_bytes = max_file_bytes
        self.temp_path = temp_path
        self.header_name = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name = ""
        self.filename: str | None = None
        self.buffer = bytearray()
        self.sink: IO[bytes] | None = None
        self.sink_path: Path | None = None
        self.size = 0
        # Bytes of every file part so far: the limit is on the request, not on each part.
        self.file_bytes = 0
        self.file_parts = 0
        self.finished = False

    def on_part_begin(self) -> None:
        self.headers = {}
        self.buffer = bytearray()
        self.size = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = params.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = params.get(b"filename")
        self.filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        if self.name in self.file_fields:
            self.file_parts += 1
            if self.file_parts > _MAX_FILE_PARTS:
                raise InvalidRequest("Too many files in one form.", param=self.name, code="invalid_value")
            self.sink_path = self.temp_path()
            self.sink = self.sink_path.open("wb")
        elif len(self.form.fields) >= _MAX_FIELDS:
            raise InvalidRequest("Too many form fields.", code="invalid_value")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.sink is not None:
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise _too_large(self.max_file_bytes)
            self.sink.write(data[start:end])
        else:
            if self.size > _MAX_FIELD_BYTES:
                raise InvalidRequest(f"Form field '{self.name}' is too long.", param=self.name, code="invalid_value")
            self.buffer += data[start:end]

    def on_part_end(self) -> None:
        if self.sink is not None and self.sink_path is not None:
            self.sink.close()
            content_type = self.headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            self.form.files.append(
                UploadedFile(self.name, self.filename or "", self.sink_path, self.size, content_type)
            )
            self.sink = None
            self.sink_path = None
        else:
            self.form.fields[self.name] = self.buffer.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.finished = True

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.close()
        if self.sink_path is not None:
            self.sink_path.unlink(missing_ok=True)
        self.form.discard()


async def read_form(
    content_type: str | None,
    body: AsyncIterator[bytes],
    *,
    file_fields: set[str],
    max_file_bytes: int,
    temp_path: Callable[[], Path],
) -> Form:
    """Parse a multipart body. On any error nothing is left on disk."""
    mime, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "Invalid Content-Type header: expected multipart/form-data with a boundary.", code="invalid_value"
        )
    reader = _Reader(file_fields, max_file_bytes, temp_path)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": reader.on_part_begin,
            "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end,
            "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value,
            "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished,
            "on_end": reader.on_end,
        },
        max_header_size=_MAX_HEADER_BYTES,
    )
    received = 0
    try:
        async for chunk in body:
            if chunk:
                received += len(chunk)
                if received > max_file_bytes + FORM_OVERHEAD_BYTES:
                    raise _body_too_large(max_file_bytes)
                parser.write(chunk)
        if not reader.finished:
            raise InvalidRequest(
                "The request body was not a complete multipart/form-data message.", code="invalid_value"
            )
    except (InvalidRequest, PayloadTooLarge):
        reader.abort()
        raise
    except Exception as exc:
        reader.abort()
        # python-multipart raises its own errors on malformed input; the client needs only the gist.
        raise InvalidRequest(
            "The request body could not be parsed as multipart/form-data.", code="invalid_value"
        ) from exc
    return reader.form
