"""Context windows: OpenAI's model families, and what a model server says it serves.

A model's window is, in order: its `context_window` in configuration; what its server says it serves
(`served_window`); the known window of an OpenAI family; `[llm] default_context_window`.

What a server says, by dialect (asked when the model list is, and remembered as long):
- vLLM: `max_model_len` of the model's entry at `GET /v1/models` (read from any server that sends it);
- llama.cpp's `llama-server`: `default_generation_settings.n_ctx` at `GET /props` (a slot's window);
- LM Studio: `loaded_context_length` at `GET /api/v0/models`; a model not loaded yet: the lesser of its
  `max_context_length` and LOADER_DEFAULT;
- Ollama: the served window, not the model's maximum (Ollama cuts longer prompts silently):
  `context_length` at `GET /api/ps` while the model is loaded, else the `num_ctx` its Modelfile sets
  (`POST /api/show`), else LOADER_DEFAULT (Ollama's least default; `OLLAMA_CONTEXT_LENGTH` shows only
  once the model is loaded), never above the model's `<arch>.context_length`.
llama-cpp-python's server says nothing (its `/v1/models` has no window): the rule's later steps apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import httpx

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


# The window Ollama and LM Studio load a model with when nothing else is known (both default to 4096).
LOADER_DEFAULT = 4096


class ServedWindow(NamedTuple):
    tokens: int
    source: str  # where the server said it, for the start-up report and logs


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _get(value: object, *keys: str) -> object:
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def listed_window(entry: Mapping[str, Any] | None) -> ServedWindow | None:
    """vLLM's `max_model_len` in a `GET /models` entry."""
    tokens = _positive(_get(entry, "max_model_len"))
    return ServedWindow(tokens, "max_model_len at GET /models") if tokens else None


def _json(response: httpx.Response) -> object:
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


async def served_window(client: httpx.AsyncClient, base_url: str, dialect: str, model: str) -> ServedWindow | None:
    """What a llama.cpp, LM Studio or Ollama server says about the window it serves `model` with."""
    root = _root(base_url)
    if dialect == "llama-server":
        tokens = _positive(_get(_json(await client.get(f"{root}/props")), "default_generation_settings", "n_ctx"))
        return ServedWindow(tokens, "n_ctx at GET /props") if tokens else None
    if dialect == "lmstudio":
        return _lmstudio(_json(await client.get(f"{root}/api/v0/models")), model)
    if dialect == "ollama":
        return await _ollama(client, root, model)
    return None


def _lmstudio(listing: object, model: str) -> ServedWindow | None:
    data = _get(listing, "data")
    entry = next((m for m in data if _get(m, "id") == model), None) if isinstance(data, list) else None
    loaded = _positive(_get(entry, "loaded_context_length"))
    if loaded:
        return ServedWindow(loaded, "loaded_context_length at GET /api/v0/models")
    maximum = _positive(_get(entry, "max_context_length"))
    if maximum:
        return ServedWindow(min(maximum, LOADER_DEFAULT), "not loaded: LM Studio's default load")
    return None


_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


def _ollama_names(model: str) -> set[str]:
    return {model, f"{model}:latest"} if ":" not in model else {model}


async def _ollama(client: httpx.AsyncClient, root: str, model: str) -> ServedWindow | None:
    names = _ollama_names(model)
    running = _get(_json(await client.get(f"{root}/api/ps")), "models")
    for entry in running if isinstance(running, list) else []:
        if _get(entry, "name") in names or _get(entry, "model") in names:
            tokens = _positive(_get(entry, "context_length"))
            if tokens:
                return ServedWindow(tokens, "context_length at GET /api/ps (loaded)")
    show = _json(await client.post(f"{root}/api/show", json={"model": model}))
    if not isinstance(show, Mapping):
        return None
    info = _get(show, "model_info")
    arch = _get(info, "general.architecture")
    maximum = _positive(_get(info, f"{arch}.context_length")) if isinstance(arch, str) else None
    parameters = _get(show, "parameters")
    match = _NUM_CTX.search(parameters) if isinstance(parameters, str) else None
    served, source = (int(match[1]), "num_ctx at POST /api/show") if match else (LOADER_DEFAULT, "Ollama's default")
    if served <= 0:
        return None
    return ServedWindow(min(served, maximum) if maximum else served, source)
