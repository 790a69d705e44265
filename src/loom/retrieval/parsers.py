"""Text extraction from uploaded files.

The type comes from the file name's extension; when the extension is missing or unknown we look at
the bytes (PDF and Office magic numbers, then "is it text?"). Everything else is `unsupported_file`;
a file of a supported type that cannot be read (corrupt, encrypted, no text) is `invalid_file`.

Parsers read from a seekable binary stream, never the whole file at once where the format allows:
text is decoded in blocks and every piece of extracted text is counted against a `TextBudget` (the
5,000,000-token cap of a vector-store file, and a character cap), so an oversized file fails early
with `invalid_file` instead of being held in memory whole. Zip-based formats (DOCX, PPTX) are refused
before anything is inflated when their declared uncompressed sizes are out of proportion (zip bombs);
`zipfile` never inflates a member past its declared size. Ingestion runs all of this in a child
process with a memory and time limit (`loom.retrieval.isolate`), so no parser can take the server down.
"""

from __future__ import annotations

import codecs
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from loom.retrieval.errors import InvalidFile, UnsupportedFile

# OpenAI failed a vector-store file past 5,000,000 tokens (cl100k, counted at attach time).
MAX_FILE_TOKENS = 5_000_000
# Extracted text past this many characters fails the file whatever its token count (a backstop:
# 5,000,000 tokens of ordinary text are ~20,000,000 characters).
MAX_TEXT_CHARS = 100_000_000
# DOCX / PPTX: the XML parts together may inflate to this much; any member's declared size, all of
# them together, and members a thousand times smaller packed than unpacked are refused past it.
MAX_OFFICE_XML_BYTES = 64 * 1024 * 1024
MAX_OFFICE_TOTAL_BYTES = 1024 * 1024 * 1024
_BLOCK = 1 << 20  # bytes read at a time
_COUNT_SEGMENT = 200_000  # characters tokenized at a time (the tokenizer refuses single huge inputs)

BinarySource = IO[bytes]


@dataclass
class TextBudget:
    """Counts extracted text as it is produced; raises `InvalidFile` once a file's text is too large."""

    max_tokens: int = MAX_FILE_TOKENS
    max_chars: int = MAX_TEXT_CHARS
    count_tokens: bool = True  # False for markup, whose text is counted once extracted
    chars: int = 0
    tokens: int = 0
    _encoding: Any = field(default=None, repr=False)

    def add(self, text: str) -> None:
        self.chars += len(text)
        if self.chars > self.max_chars:
            raise InvalidFile(
                f"The file's extracted text is longer than {self.max_chars:,} characters, the maximum for a "
                "file in a vector store."
            )
        if not self.count_tokens:
            return
        if self._encoding is None:
            from loom.retrieval.chunking import CHUNK_ENCODING
            from loom.tokens import get_encoding

            self._encoding = get_encoding(CHUNK_ENCODING)
        for start in range(0, len(text), _COUNT_SEGMENT):
            self.tokens += self._encoding.count(text[start : start + _COUNT_SEGMENT])
            self.check_tokens(self.tokens)

    def check_tokens(self, tokens: int) -> None:
        if tokens > self.max_tokens:
            raise InvalidFile(
                f"The file contains more than {self.max_tokens:,} tokens, the maximum for a file in a vector store."
            )


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


def _text_encoding(src: BinarySource) -> str:
    """UTF-16 by its BOM; UTF-8 when the whole file decodes as such (checked in blocks); else cp1252."""
    src.seek(0)
    head = src.read(8192)
    src.seek(0)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if b"\x00" in head:
        raise InvalidFile("The file contains binary data, not text.")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while block := src.read(_BLOCK):
            decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        # Legacy single-byte encodings are still common for .txt/.csv; cp1252 maps almost every byte.
        return "cp1252"
    finally:
        src.seek(0)
    return "utf-8-sig"


def _read_text(src: BinarySource, budget: TextBudget) -> str:
    """The whole text of a text file, decoded block by block and counted against the budget."""
    encoding = _text_encoding(src)
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace" if encoding == "cp1252" else "strict")
    parts: list[str] = []
    try:
        while True:
            block = src.read(_BLOCK)
            piece = decoder.decode(block, final=not block)
            if piece:
                budget.add(piece)
                parts.append(piece)
            if not block:
                break
    except UnicodeDecodeError as exc:
        raise InvalidFile("The file is not valid UTF-16 text.") from exc
    return "".join(parts)


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


def parse_text(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    return ParsedDocument(_normalise(_read_text(src, budget)), "text")


def parse_markdown(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    return ParsedDocument(_normalise(_read_text(src, budget)), "markdown")


def parse_code(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    # Indentation matters in code: only line endings are normalised.
    text = _read_text(src, budget).replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return ParsedDocument(text, "code")


def parse_csv(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    return ParsedDocument(_normalise(_read_text(src, budget)), "csv")


def _check_json(text: str) -> None:
    try:
        json.loads(text)
    except RecursionError as exc:
        raise InvalidFile("The file is not valid JSON we can read: it is nested too deeply.") from exc
    except ValueError as exc:
        raise InvalidFile(f"The file is not valid JSON: {exc}.") from exc


def parse_json(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    text = _read_text(src, budget)
    _check_json(text)
    return ParsedDocument(text.strip(), "json")


def parse_html(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    from bs4 import BeautifulSoup

    markup = TextBudget(max_chars=budget.max_chars, count_tokens=False)
    soup = BeautifulSoup(_read_text(src, markup), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(line for line in lines if line)
    budget.add(text)
    return ParsedDocument(_normalise(text), "html")


def parse_pdf(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    pages: list[str] = []
    try:
        reader = PdfReader(src)
        if reader.is_encrypted:
            # Owner-password-only PDFs open with an empty user password; others we cannot read.
            try:
                opened = reader.decrypt("")
            except MemoryError:
                raise
            except Exception as exc:
                raise InvalidFile(f"The PDF is encrypted and cannot be decrypted: {exc}.") from exc
            if not opened:
                raise InvalidFile("The PDF is encrypted with a password.")
        for page in reader.pages:
            # Counted page by page: a PDF with too much text stops here, not after the last page.
            text = page.extract_text() or ""
            budget.add(text)
            pages.append(text)
    except InvalidFile:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise InvalidFile(f"The PDF could not be read (corrupt or truncated): {exc}.") from exc
    return ParsedDocument(_normalise("\n\n".join(pages)), "pdf", pages=len(pages))


def _open_zip(src: BinarySource, kind: str) -> None:
    """Refuse a broken package, and a zip bomb before anything of it is inflated."""
    src.seek(0)
    try:
        with zipfile.ZipFile(src) as zf:
            _check_zip_sizes(zf, kind)
            if zf.testzip() is not None:
                raise InvalidFile(f"The {kind} file is corrupt (bad zip member).")
    except zipfile.BadZipFile as exc:
        src.seek(0)
        if src.read(4) == b"\xd0\xcf\x11\xe0":
            # OLE2 container: either a legacy binary Office file or an encrypted OOXML one.
            raise InvalidFile(f"The {kind} file is encrypted or in a legacy binary format.") from exc
        raise InvalidFile(f"The {kind} file is not a valid Office document (not a zip archive).") from exc
    finally:
        src.seek(0)


def _check_zip_sizes(zf: zipfile.ZipFile, kind: str) -> None:
    """The declared uncompressed sizes, which `zipfile` enforces while inflating, must be reasonable."""
    xml = total = 0
    for info in zf.infolist():
        total += info.file_size
        if info.filename.endswith((".xml", ".rels")):
            xml += info.file_size
    if xml > MAX_OFFICE_XML_BYTES or total > MAX_OFFICE_TOTAL_BYTES:
        mb = (xml if xml > MAX_OFFICE_XML_BYTES else total) / (1024 * 1024)
        limit = (MAX_OFFICE_XML_BYTES if xml > MAX_OFFICE_XML_BYTES else MAX_OFFICE_TOTAL_BYTES) // (1024 * 1024)
        raise InvalidFile(
            f"The {kind} file would inflate to {mb:,.0f} MB of {'XML' if xml > MAX_OFFICE_XML_BYTES else 'data'} "
            f"when unzipped, more than the {limit:,} MB we read (a zip bomb?)."
        )


def _docx_text(doc: Any) -> str:
    parts: list[str] = []
    for paragraph in doc.paragraphs:
        parts.append(paragraph.text)
    for table in doc.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text.strip() for cell in row.cells))
    return "\n".join(parts)


def parse_docx(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    import docx

    _open_zip(src, "DOCX")
    try:
        doc = docx.Document(src)
        text = _docx_text(doc)
    except MemoryError:
        raise
    except Exception as exc:  # python-docx raises a variety of errors for broken packages
        raise InvalidFile(f"The DOCX file could not be read: {exc}.") from exc
    budget.add(text)
    return ParsedDocument(_normalise(text), "docx")


def parse_pptx(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    from pptx import Presentation

    _open_zip(src, "PPTX")
    try:
        prs = Presentation(src)
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
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidFile(f"The PPTX file could not be read: {exc}.") from exc
    text = "\n\n".join(slides)
    budget.add(text)
    return ParsedDocument(_normalise(text), "pptx", pages=len(slides))


Parser = Callable[[BinarySource, TextBudget], ParsedDocument]

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


def _sniffed_json(src: BinarySource, budget: TextBudget) -> ParsedDocument:
    """A file without a known extension that starts like JSON: JSON if it parses, text otherwise."""
    text = _read_text(src, budget)
    try:
        _check_json(text)
    except InvalidFile:
        return ParsedDocument(_normalise(text), "text")
    return ParsedDocument(text.strip(), "json")


def _sniff(src: BinarySource) -> Parser | None:
    """Pick a parser from the content, for files with no or an unknown extension."""
    src.seek(0)
    data = src.read(8192)
    src.seek(0)
    if data.startswith(b"%PDF-"):
        return parse_pdf
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(src) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile:
            return None
        finally:
            src.seek(0)
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
        return _sniffed_json
    return parse_text


def detect_parser(src: BinarySource, filename: str) -> Parser:
    ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    parser = PARSERS.get(ext)
    if parser is not None:
        return parser
    if ext not in KNOWN_UNSUPPORTED:
        parser = _sniff(src)
        if parser is not None:
            return parser
    shown = ext or "(no extension)"
    raise UnsupportedFile(f"The file type {shown} of '{filename}' is not supported for retrieval.")


def parse_stream(src: BinarySource, filename: str, budget: TextBudget | None = None) -> ParsedDocument:
    """Extract the text of a file from a seekable binary stream. Raises UnsupportedFile or InvalidFile."""
    budget = budget or TextBudget()
    parser = detect_parser(src, filename)
    src.seek(0)
    doc = parser(src, budget)
    if not doc.text.strip():
        raise InvalidFile(f"The file '{filename}' contains no extractable text.")
    return doc


def parse_path(path: Path, filename: str, budget: TextBudget | None = None) -> ParsedDocument:
    with path.open("rb") as src:
        return parse_stream(src, filename, budget)


def parse_file(data: bytes, filename: str, budget: TextBudget | None = None) -> ParsedDocument:
    """Extract the text of a file held in memory. Raises UnsupportedFile or InvalidFile."""
    return parse_stream(io.BytesIO(data), filename, budget)
