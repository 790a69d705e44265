from __future__ import annotations

import pytest

from loom import tokens


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("llama-3.1-70b", "cl100k_base"),
        ("", "cl100k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert tokens.encoding_for_model(model).name == encoding


def test_known_token_counts() -> None:
    # Reference values from OpenAI's tokenizers.
    assert tokens.encode("hello world", "gpt-4") == [15339, 1917]
    assert tokens.encode("hello world", "gpt-4o") == [24912, 2375]
    assert tokens.count_tokens("hello world", "gpt-4o") == 2


def test_round_trip_unicode_and_special_text() -> None:
    text = "Grüße 日本語 🚀 <|endoftext|> done"
    for model in ("gpt-4o", "gpt-4"):
        ids = tokens.encode(text, model)
        assert tokens.decode(ids, model) == text
    # Special-token text in user input is ordinary text, never an error or a single special id.
    assert len(tokens.encode("<|endoftext|>", "gpt-4")) > 1


def test_empty() -> None:
    assert tokens.count_tokens("", "gpt-4o") == 0
    assert tokens.decode([], "gpt-4o") == ""


def test_encodings_are_cached() -> None:
    assert tokens.encoding_for_model("gpt-4o") is tokens.encoding_for_model("gpt-4.1")


def _prose(chars: int) -> str:
    words = ("alpha", "Beta", "gamma,", "delta.", "(eps)", "42", "naïve", "日本語", "🚀", "it's")
    text = " ".join(words[(i * 7) % len(words)] for i in range(chars // 5))
    return (text + "\n") * (chars // len(text) + 1)


def test_a_text_of_any_size_is_encoded() -> None:
    # Past the tokenizer's own limits: 1,000,000 characters or 200,000 tokens in one input.
    text = _prose(1_200_000)
    for model in ("gpt-4o", "gpt-4"):
        ids = tokens.encode(text, model)
        assert len(ids) > 200_000
        assert tokens.decode(ids, model) == text
        assert tokens.count_tokens(text, model) == len(ids)
    # Characters the tokenizer spends several tokens on (CJK, emoji) in a single long run.
    dense = "日本🚀" * 400_000
    assert tokens.decode(tokens.encode(dense, "gpt-4o"), "gpt-4o") == dense


def test_segments_do_not_change_the_tokens() -> None:
    """Segments are cut where the tokenizer splits anyway: the tokens equal those of whole pieces."""
    text = _prose(180_000)
    whole = tokens.get_encoding("o200k_base")._enc.encode_ordinary(text)
    assert tokens.encode(text, "gpt-4o") == whole


def test_count_is_total() -> None:
    assert tokens.count_tokens("x" * 2_000_000, "gpt-4o") > 0
    assert tokens.count_tokens(" ".join(["word"] * 400_000), "gpt-4") == 400_000
    # Past EXACT_COUNT_CHARS, an upper bound: the UTF-8 size.
    big = "é" * (tokens.EXACT_COUNT_CHARS + 1)
    assert tokens.count_tokens(big, "gpt-4o") == len(big.encode())
    # A lone surrogate (which the API refuses, but a model may send) is counted, never raises.
    assert tokens.count_tokens("a\udfffb", "gpt-4o") > 0
    assert tokens.utf8_size("a\udfffb") == 5
