from __future__ import annotations

import itertools
from typing import Any

import pytest

from loom.errors import InvalidRequest
from loom.retrieval.chunking import AUTO, ChunkingStrategy, chunk_text, parse_chunking_strategy
from loom.tokens import get_encoding

ENC = get_encoding("cl100k_base")


def _text(n_words: int) -> str:
    return " ".join(f"word{i}" for i in range(n_words))


def test_auto_is_800_400() -> None:
    assert parse_chunking_strategy(None) == AUTO
    assert parse_chunking_strategy({"type": "auto"}) == ChunkingStrategy(800, 400)
    assert AUTO.to_wire() == {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}


def test_static_sizes_and_overlap() -> None:
    text = _text(3000)
    total = len(ENC.encode(text))
    strategy = parse_chunking_strategy(
        {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50}}
    )
    chunks = chunk_text(text, strategy)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.tokens == 200 for c in chunks[:-1])
    assert 0 < chunks[-1].tokens <= 200
    # Windows start every 150 tokens and together cover the whole text.
    assert (len(chunks) - 1) * 150 + chunks[-1].tokens == total
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert len(ENC.encode(chunk.text)) == pytest.approx(chunk.tokens, abs=2)
    # Consecutive chunks share their 50-token overlap.
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end
        overlap = text[b.start : a.end]
        assert len(ENC.encode(overlap)) == pytest.approx(50, abs=2)
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)


def test_no_overlap_partitions_the_text() -> None:
    text = _text(1000)
    chunks = chunk_text(text, ChunkingStrategy(100, 0))
    assert "".join(c.text for c in chunks) == text


def test_short_text_is_one_chunk_and_empty_is_none() -> None:
    chunks = chunk_text("A short note.")
    assert len(chunks) == 1
    assert chunks[0].text == "A short note."
    assert (chunks[0].start, chunks[0].end) == (0, 13)
    assert chunk_text("") == []


def test_multibyte_text_offsets() -> None:
    text = "日本語のテキスト🚀 " * 400
    chunks = chunk_text(text, ChunkingStrategy(100, 30))
    assert len(chunks) > 5
    for c in chunks:
        assert text[c.start : c.end] == c.text


@pytest.mark.parametrize(
    ("raw", "param", "code", "message"),
    [
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0}},
            "chunking_strategy.static.max_chunk_size_tokens",
            "integer_below_min_value",
            "Invalid 'chunking_strategy.static.max_chunk_size_tokens': integer below minimum value. "
            "Expected a value >= 100, but got 99 instead.",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0}},
            "chunking_strategy.static.max_chunk_size_tokens",
            "integer_above_max_value",
            "Invalid 'chunking_strategy.static.max_chunk_size_tokens': integer above maximum value. "
            "Expected a value <= 4096, but got 4097 instead.",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 401}},
            "chunking_strategy.static.chunk_overlap_tokens",
            "invalid_value",
            None,
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": -1}},
            "chunking_strategy.static.chunk_overlap_tokens",
            "integer_below_min_value",
            None,
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 800}},
            "chunking_strategy.static.chunk_overlap_tokens",
            "missing_required_parameter",
            "Missing required parameter: 'chunking_strategy.static.chunk_overlap_tokens'.",
        ),
        ({"type": "static"}, "chunking_strategy.static", "missing_required_parameter", None),
        ({"type": "semantic"}, "chunking_strategy.type", "invalid_value", None),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": "800", "chunk_overlap_tokens": 0}},
            "chunking_strategy.static.max_chunk_size_tokens",
            "invalid_type",
            None,
        ),
    ],
)
def test_validation_errors(raw: dict[str, Any], param: str, code: str, message: str | None) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_chunking_strategy(raw)
    assert exc.value.status == 400
    assert exc.value.param == param
    assert exc.value.code == code
    if message is not None:
        assert exc.value.message == message


def test_limits_inclusive() -> None:
    assert parse_chunking_strategy(
        {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}}
    ) == ChunkingStrategy(100, 50)
    assert parse_chunking_strategy(
        {"type": "static", "static": {"max_chunk_size_tokens": 4096, "chunk_overlap_tokens": 2048}}
    ) == ChunkingStrategy(4096, 2048)
