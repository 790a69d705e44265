"""Token-window chunking, as OpenAI's file search does it: fixed windows of tokens with an overlap.

`auto` is 800 tokens with 400 of overlap. `static` takes `max_chunk_size_tokens` (100..4096) and
`chunk_overlap_tokens` (0..max/2). Each chunk keeps its index and its character span in the text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from loom.errors import InvalidRequest
from loom.tokens import Encoding, get_encoding

# The tokenizer used for chunk sizes: the one of OpenAI's embedding models.
CHUNK_ENCODING = "cl100k_base"
MIN_CHUNK_TOKENS = 100
MAX_CHUNK_TOKENS = 4096
AUTO_MAX_TOKENS = 800
AUTO_OVERLAP_TOKENS = 400


@dataclass(frozen=True, slots=True)
class ChunkingStrategy:
    max_chunk_size_tokens: int = AUTO_MAX_TOKENS
    chunk_overlap_tokens: int = AUTO_OVERLAP_TOKENS

    def to_wire(self) -> dict[str, Any]:
        """How a vector store file reports it: always `static` (the response union has no `auto`)."""
        return {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": self.max_chunk_size_tokens,
                "chunk_overlap_tokens": self.chunk_overlap_tokens,
            },
        }


AUTO = ChunkingStrategy()


def _int_field(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a boolean" if isinstance(value, bool) else _type_name(value)
        raise InvalidRequest(
            f"Invalid type for '{param}': expected an integer, but got {kind} instead.",
            param=param,
            code="invalid_type",
        )
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def _check_keys(obj: Mapping[str, Any], allowed: set[str], param: str) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {param}.{key}",
                param=f"{param}.{key}",
                code="unknown_parameter",
            )


def parse_chunking_strategy(raw: Any, *, param: str = "chunking_strategy") -> ChunkingStrategy:
    """Validate a `chunking_strategy` request object (None means auto) with OpenAI's error messages."""
    if raw is None:
        return AUTO
    if not isinstance(raw, Mapping):
        raise InvalidRequest(
            f"Invalid type for '{param}': expected an object, but got {_type_name(raw)} instead.",
            param=param,
            code="invalid_type",
        )
    kind = raw.get("type")
    if kind is None:
        raise InvalidRequest(
            f"Missing required parameter: '{param}.type'.",
            param=f"{param}.type",
            code="missing_required_parameter",
        )
    if kind == "auto":
        _check_keys(raw, {"type"}, param)
        return AUTO
    if kind != "static":
        raise InvalidRequest(
            f"Invalid value: '{kind}'. Supported values are: 'auto' and 'static'.",
            param=f"{param}.type",
            code="invalid_value",
        )
    _check_keys(raw, {"type", "static"}, param)
    static = raw.get("static")
    sparam = f"{param}.static"
    if static is None:
        raise InvalidRequest(
            f"Missing required parameter: '{sparam}'.", param=sparam, code="missing_required_parameter"
        )
    if not isinstance(static, Mapping):
        raise InvalidRequest(
            f"Invalid type for '{sparam}': expected an object, but got {_type_name(static)} instead.",
            param=sparam,
            code="invalid_type",
        )
    _check_keys(static, {"max_chunk_size_tokens", "chunk_overlap_tokens"}, sparam)
    for name in ("max_chunk_size_tokens", "chunk_overlap_tokens"):
        if name not in static:
            raise InvalidRequest(
                f"Missing required parameter: '{sparam}.{name}'.",
                param=f"{sparam}.{name}",
                code="missing_required_parameter",
            )
    max_param = f"{sparam}.max_chunk_size_tokens"
    overlap_param = f"{sparam}.chunk_overlap_tokens"
    max_tokens = _int_field(static["max_chunk_size_tokens"], max_param)
    overlap = _int_field(static["chunk_overlap_tokens"], overlap_param)
    if max_tokens < MIN_CHUNK_TOKENS:
        raise InvalidRequest(
            f"Invalid '{max_param}': integer below minimum value. Expected a value >= {MIN_CHUNK_TOKENS}, "
            f"but got {max_tokens} instead.",
            param=max_param,
            code="integer_below_min_value",
        )
    if max_tokens > MAX_CHUNK_TOKENS:
        raise InvalidRequest(
            f"Invalid '{max_param}': integer above maximum value. Expected a value <= {MAX_CHUNK_TOKENS}, "
            f"but got {max_tokens} instead.",
            param=max_param,
            code="integer_above_max_value",
        )
    if overlap < 0:
        raise InvalidRequest(
            f"Invalid '{overlap_param}': integer below minimum value. Expected a value >= 0, "
            f"but got {overlap} instead.",
            param=overlap_param,
            code="integer_below_min_value",
        )
    if overlap > max_tokens // 2:
        raise InvalidRequest(
            f"Invalid '{overlap_param}': chunk_overlap_tokens must be less than or equal to half of "
            f"max_chunk_size_tokens ({max_tokens // 2}), but got {overlap}.",
            param=overlap_param,
            code="invalid_value",
        )
    return ChunkingStrategy(max_tokens, overlap)


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    start: int  # character offset in the parsed text (inclusive)
    end: int  # character offset (exclusive)
    tokens: int


_ENCODE_SEGMENT = 200_000  # characters; the tokenizer refuses single inputs of 1,000,000 or more


def _encode_long(enc: Encoding, text: str) -> list[int]:
    """Encode text of any length: in segments cut after a newline (or a space), so tokens rarely change."""
    if len(text) < _ENCODE_SEGMENT:
        return list(enc.encode(text))
    tokens: list[int] = []
    start = 0
    while start < len(text):
        end = min(start + _ENCODE_SEGMENT, len(text))
        if end < len(text):
            cut = text.rfind("\n", start + _ENCODE_SEGMENT // 2, end)
            if cut == -1:
                cut = text.rfind(" ", start + _ENCODE_SEGMENT // 2, end)
            if cut != -1:
                end = cut + 1
        tokens.extend(enc.encode(text[start:end]))
        start = end
    return tokens


def chunk_text(text: str, strategy: ChunkingStrategy = AUTO, encoding: Encoding | None = None) -> list[Chunk]:
    """Split text into overlapping token windows; offsets are character offsets into `text`."""
    enc = encoding or get_encoding(CHUNK_ENCODING)
    tokens = _encode_long(enc, text)
    if not tokens:
        return []
    pieces = enc.token_bytes(tokens)
    # Byte offset of every token boundary, and the character index of every byte offset.
    byte_at = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces)), out=byte_at[1:])
    raw = b"".join(pieces)
    lead = (np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80
    char_at = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(lead, out=char_at[1:])

    size = strategy.max_chunk_size_tokens
    step = size - strategy.chunk_overlap_tokens
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = min(start + size, len(tokens))
        b0, b1 = int(byte_at[start]), int(byte_at[end])
        # A window edge inside a multi-byte character: the partial character is dropped.
        c0 = int(char_at[b0])
        c1 = int(char_at[b1]) - (1 if b1 < len(raw) and not lead[b1] else 0)
        piece = raw[b0:b1].decode("utf-8", errors="ignore")
        chunks.append(Chunk(len(chunks), piece, c0, max(c0, c1), end - start))
        if end >= len(tokens):
            break
        start += step
    return chunks
