"""Context windows of OpenAI's model families, used when the configuration does not give one."""

from __future__ import annotations

DEFAULT_CONTEXT_WINDOW = 32_768

# Prefix -> tokens; the longest matching prefix wins ("gpt-4o" before "gpt-4").
KNOWN_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-vision": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo-instruct": 4_096,
    "gpt-3.5-turbo": 16_385,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4": 200_000,
}

_BY_LENGTH = sorted(KNOWN_CONTEXT_WINDOWS.items(), key=lambda item: len(item[0]), reverse=True)


def known_context_window(model: str) -> int | None:
    """The context window of a known OpenAI model (e.g. "gpt-4o-2024-08-06"), else None."""
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" on routers such as OpenRouter
    for prefix, window in _BY_LENGTH:
        if name == prefix or (name.startswith(prefix) and name[len(prefix)] in "-:."):
            return window
    return None
