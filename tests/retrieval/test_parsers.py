from __future__ import annotations

import json

import pytest

from loom.retrieval.errors import InvalidFile, UnsupportedFile
from loom.retrieval.parsers import parse_file
from tests.retrieval.files import docx_bytes, pdf_bytes, pptx_bytes


def test_txt() -> None:
    doc = parse_file(b"Hello plain text.\r\nSecond line.\n", "notes.txt")
    assert doc.kind == "text"
    assert doc.text == "Hello plain text.\nSecond line."


def test_txt_utf16_and_legacy_encoding() -> None:
    assert parse_file("Grüße aus Köln".encode("utf-16"), "a.txt").text == "Grüße aus Köln"
    assert parse_file("café".encode("cp1252"), "b.txt").text == "café"


def test_markdown() -> None:
    doc = parse_file(b"# Title\n\nSome *markdown* here.", "README.md")
    assert doc.kind == "markdown"
    assert "Some *markdown* here." in doc.text


def test_html_drops_scripts_and_styles() -> None:
    html = (
        b"<html><head><style>body{color:red}</style><script>var secret=1;</script></head>"
        b"<body><h1>Heading</h1><p>Visible <b>paragraph</b>.</p></body></html>"
    )
    doc = parse_file(html, "page.html")
    assert doc.kind == "html"
    assert "Heading" in doc.text
    assert "paragraph" in doc.text
    assert "secret" not in doc.text
    assert "color" not in doc.text


def test_json_and_invalid_json() -> None:
    doc = parse_file(json.dumps({"name": "loom", "tags": ["a", "b"]}).encode(), "data.json")
    assert doc.kind == "json"
    assert '"loom"' in doc.text
    with pytest.raises(InvalidFile) as exc:
        parse_file(b"{not json", "broken.json")
    assert exc.value.code == "invalid_file"
    assert "JSON" in exc.value.message


def test_csv() -> None:
    doc = parse_file(b"name,age\nada,36\ngrace,85\n", "people.csv")
    assert doc.kind == "csv"
    assert "grace,85" in doc.text


@pytest.mark.parametrize("name", ["main.py", "lib.rs", "app.ts", "Main.java", "prog.c", "run.sh", "x.go"])
def test_source_code_keeps_indentation(name: str) -> None:
    source = b"def f(x):\n    return x + 1\n"
    doc = parse_file(source, name)
    assert doc.kind == "code"
    assert "    return x + 1" in doc.text


def test_pdf_text_and_page_count() -> None:
    data = pdf_bytes(["First page about zebras.", "Second page about giraffes.", "Third page."])
    doc = parse_file(data, "animals.pdf")
    assert doc.kind == "pdf"
    assert doc.pages == 3
    assert "zebras" in doc.text
    assert "giraffes" in doc.text


def test_corrupt_pdf_is_invalid_file() -> None:
    data = pdf_bytes(["Some text."])
    with pytest.raises(InvalidFile) as exc:
        parse_file(data[: len(data) // 3], "truncated.pdf")
    assert exc.value.code == "invalid_file"
    with pytest.raises(InvalidFile):
        parse_file(b"%PDF-1.7\nthis is not really a pdf", "fake.pdf")


def test_encrypted_pdf_is_invalid_file() -> None:
    data = pdf_bytes(["Top secret."], password="hunter2")
    with pytest.raises(InvalidFile) as exc:
        parse_file(data, "locked.pdf")
    assert exc.value.code == "invalid_file"
    assert "encrypted" in exc.value.message


def test_docx_paragraphs_and_tables() -> None:
    data = docx_bytes(["Quarterly report.", "Revenue grew."], table=[["region", "sales"], ["north", "42"]])
    doc = parse_file(data, "report.docx")
    assert doc.kind == "docx"
    assert "Revenue grew." in doc.text
    assert "north | 42" in doc.text


def test_corrupt_docx_is_invalid_file() -> None:
    with pytest.raises(InvalidFile):
        parse_file(b"PK\x03\x04 garbage that is not a zip", "broken.docx")
    with pytest.raises(InvalidFile):
        parse_file(b"just text", "plain.docx")


def test_pptx_slides() -> None:
    data = pptx_bytes([("Roadmap", "Ship retrieval in Q1"), ("Risks", "Nothing downloads at run time")])
    doc = parse_file(data, "deck.pptx")
    assert doc.kind == "pptx"
    assert doc.pages == 2
    assert "Ship retrieval in Q1" in doc.text
    assert "Risks" in doc.text


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image.png"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "program"),
        (b"\x00\x01\x02\x03\xff\xfe\x00", "blob.xyz"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "setup.exe"),
    ],
)
def test_unsupported_types(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedFile) as exc:
        parse_file(data, name)
    assert exc.value.code == "unsupported_file"


def test_content_sniffing_without_extension() -> None:
    assert parse_file(pdf_bytes(["Sniffed pdf."]), "upload").kind == "pdf"
    assert parse_file(docx_bytes(["Sniffed docx."]), "upload.bin2").kind == "docx"
    assert parse_file(pptx_bytes([("Sniffed", "pptx")]), "blob").kind == "pptx"
    assert parse_file(b"<!DOCTYPE html><html><body><p>hi there</p></body></html>", "page").kind == "html"
    assert parse_file(b'{"a": 1}', "data").kind == "json"
    assert parse_file(b"just some words", "README").kind == "text"


def test_empty_file_is_invalid() -> None:
    with pytest.raises(InvalidFile) as exc:
        parse_file(b"   \n  ", "empty.txt")
    assert "no extractable text" in exc.value.message


def test_deeply_nested_json_is_invalid_file() -> None:
    with pytest.raises(InvalidFile, match="nested too deeply"):
        parse_file(b"[" * 100_000 + b"]" * 100_000, "deep.json")
    # Without an extension it is not recognised as JSON, so it is read as text.
    assert parse_file(b"[" * 100_000 + b"]" * 100_000, "deep").kind == "text"


def test_text_past_the_token_cap_is_invalid_file() -> None:
    from loom.retrieval.parsers import TextBudget

    words = b"alpha bravo charlie delta " * 1000  # ~4,000 tokens
    assert parse_file(words, "ok.txt", TextBudget(max_tokens=10_000)).kind == "text"
    with pytest.raises(InvalidFile, match="more than 3,000 tokens"):
        parse_file(words, "long.txt", TextBudget(max_tokens=3_000))
    with pytest.raises(InvalidFile, match="longer than 1,000 characters"):
        parse_file(words, "long.txt", TextBudget(max_chars=1_000))


def test_docx_zip_bomb_is_refused_before_inflating() -> None:
    from tests.vector_stores.test_ingest_bombs import docx_bomb

    with pytest.raises(InvalidFile, match=r"would inflate to 8[01] MB of XML.*zip bomb"):
        parse_file(docx_bomb(80), "bomb.docx")
