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
