"""Text extraction from uploaded files.

The type comes from the file name's extension; when the extension is missing or unknown we look at
the bytes (PDF and Office magic numbers, then "is it text?"). Everything else is `unsupported_file`;
a file of a supported type that cannot be read (corrupt, encrypted, no text) is `invalid_file`.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from loom.retrieval.errors import InvalidFile, UnsupportedFile


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    text: str
    kind: str  # "text", "markdown", "html", "json", "csv", "code", "pdf", "docx", "pptx"
    pages: int | None = None  # PDF pages or PPTX slides


TEXT_EXTENSIONS = {".txt": "text", ".text": "text", ".log": "text", ".rst": "text", ".tex": "text"}
MARKDOWN_EXTENSIONS = {".md", ".markdown", ".mdx"}
HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}
CODE_EXTENSIONS = {
    ".py", ".pyi", ".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".java", ".kt", ".kts", ".scala", ".c",
    ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".go", ".rs", ".rb", ".php", ".swift", ".m", ".mm",
    ".sh", ".bash", ".zsh", ".ps1", ".sql", ".r", ".lua", ".pl", ".pm", ".dart", ".ex", ".exs", ".erl",
    ".hs", ".clj", ".jl", ".vue", ".svelte", ".css", ".scss", ".less", ".xml", ".yaml", ".yml", ".toml",
    ".ini", ".cfg", ".conf", ".proto", ".graphql", ".tf", ".gradle", ".cmake", ".mk", ".bat", ".ipynb",
}  # fmt: skip
# Types we recognise but cannot extract text from: answered as unsupported without sniffing.
KNOWN_UNSUPPORTED = {
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tiff", ".ico", ".svgz", ".mp3", ".wav", ".mp4",
    ".mov", ".avi", ".zip", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".tar", ".exe", ".dll", ".so",
    ".bin", ".dylib", ".class", ".jar", ".pyc", ".doc", ".xls", ".xlsx", ".ppt", ".odt", ".ods", ".odp",
    ".epub", ".sqlite", ".db", ".parquet", ".pkl", ".npy",
}  # fmt: skip


def _decode_text(data: bytes) -> str:
    """Decode bytes that should be text; raise InvalidFile when they are clearly binary."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise InvalidFile("The file is not valid UTF-16 text.") from exc
    if b"\x00" in data[:8192]:
        raise InvalidFile("The file contains binary data, not text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Legacy single-byte encodings are still common for .txt/.csv; cp1252 maps almost every byte.
        return data.decode("cp1252", errors="replace")


def _looks_like_text(data: bytes) -> bool:
    head = data[:8192]
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 8 KiB boundary is still text.
        if exc.start < len(head) - 4:
            return False
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return control <= len(head) // 100


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parse_text(data: bytes) -> ParsedDocument:
    return ParsedDocument(_normalise(_decode_text(data)), "text")


def parse_markdown(data: bytes) -> ParsedDocument:
    return ParsedDocument(_normalise(_decode_text(data)), "markdown")


def parse_code(data: bytes) -> ParsedDocument:
    # Indentation matters in code: only line endings are normalised.
    text = _decode_text(data).replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return ParsedDocument(text, "code")


def parse_csv(data: bytes) -> ParsedDocument:
    return ParsedDocument(_normalise(_decode_text(data)), "csv")


def parse_json(data: bytes) -> ParsedDocument:
    text = _decode_text(data)
    try:
        json.loads(text)
    except ValueError as exc:
        raise InvalidFile(f"The file is not valid JSON: {exc}.") from exc
    return ParsedDocument(text.strip(), "json")


def parse_html(data: bytes) -> ParsedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode_text(data), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(line for line in lines if line)
    return ParsedDocument(_normalise(text), "html")


def parse_pdf(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Owner-password-only PDFs open with an empty user password; others we cannot read.
            try:
                opened = reader.decrypt("")
            except Exception as exc:
                raise InvalidFile(f"The PDF is encrypted and cannot be decrypted: {exc}.") from exc
            if not opened:
                raise InvalidFile("The PDF is encrypted with a password.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidFile:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise InvalidFile(f"The PDF could not be read (corrupt or truncated): {exc}.") from exc
    return ParsedDocument(_normalise("\n\n".join(pages)), "pdf", pages=len(pages))


def _open_zip(data: bytes, kind: str) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if zf.testzip() is not None:
                raise InvalidFile(f"The {kind} file is corrupt (bad zip member).")
    except zipfile.BadZipFile as exc:
        if data.startswith(b"\xd0\xcf\x11\xe0"):
            # OLE2 container: either a legacy binary Office file or an encrypted OOXML one.
            raise InvalidFile(f"The {kind} file is encrypted or in a legacy binary format.") from exc
        raise InvalidFile(f"The {kind} file is not a valid Office document (not a zip archive).") from exc


def _docx_text(doc: Any) -> str:
    parts: list[str] = []
    for paragraph in doc.paragraphs:
        parts.append(paragraph.text)
    for table in doc.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text.strip() for cell in row.cells))
    return "\n".join(parts)


def parse_docx(data: bytes) -> ParsedDocument:
    import docx

    _open_zip(data, "DOCX")
    try:
        doc = docx.Document(io.BytesIO(data))
        text = _docx_text(doc)
    except Exception as exc:  # python-docx raises a variety of errors for broken packages
        raise InvalidFile(f"The DOCX file could not be read: {exc}.") from exc
    return ParsedDocument(_normalise(text), "docx")


def parse_pptx(data: bytes) -> ParsedDocument:
    from pptx import Presentation

    _open_zip(data, "PPTX")
    try:
        prs = Presentation(io.BytesIO(data))
        slides: list[str] = []
        for slide in prs.slides:
            parts: list[str] = []
            for shape in slide.shapes:
                if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                    parts.append(shape.text_frame.text)
                if getattr(shape, "has_table", False) and shape.has_table:
                    for row in shape.table.rows:
                        parts.append(" | ".join(cell.text.strip() for cell in row.cells))
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                parts.append(slide.notes_slide.notes_text_frame.text)
            slides.append("\n".join(p for p in parts if p.strip()))
    except Exception as exc:
        raise InvalidFile(f"The PPTX file could not be read: {exc}.") from exc
    return ParsedDocument(_normalise("\n\n".join(slides)), "pptx", pages=len(slides))


Parser = Callable[[bytes], ParsedDocument]

PARSERS: dict[str, Parser] = {
    **{ext: parse_text for ext in TEXT_EXTENSIONS},
    **{ext: parse_markdown for ext in MARKDOWN_EXTENSIONS},
    **{ext: parse_html for ext in HTML_EXTENSIONS},
    **{ext: parse_code for ext in CODE_EXTENSIONS},
    ".json": parse_json,
    ".jsonl": parse_text,
    ".csv": parse_csv,
    ".tsv": parse_csv,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
    ".pptx": parse_pptx,
}


def _sniff(data: bytes) -> Parser | None:
    """Pick a parser from the content, for files with no or an unknown extension."""
    if data.startswith(b"%PDF-"):
        return parse_pdf
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile:
            return None
        if "word/document.xml" in names:
            return parse_docx
        if "ppt/presentation.xml" in names:
            return parse_pptx
        return None
    if not _looks_like_text(data):
        return None
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return parse_html
    if head.startswith((b"{", b"[")):
        try:
            json.loads(data)
            return parse_json
        except ValueError:
            return parse_text
    return parse_text


def detect_parser(data: bytes, filename: str) -> Parser:
    ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    parser = PARSERS.get(ext)
    if parser is not None:
        return parser
    if ext not in KNOWN_UNSUPPORTED:
        parser = _sniff(data)
        if parser is not None:
            return parser
    shown = ext or "(no extension)"
    raise UnsupportedFile(f"The file type {shown} of '{filename}' is not supported for retrieval.")


def parse_file(data: bytes, filename: str) -> ParsedDocument:
    """Extract the text of a file. Raises UnsupportedFile or InvalidFile."""
    doc = detect_parser(data, filename)(data)
    if not doc.text.strip():
        raise InvalidFile(f"The file '{filename}' contains no extractable text.")
    return doc
