"""Which backend serves a model name, under which upstream name, with which context window.

Configuration (the TOML file named by `LOOM_CONFIG_FILE`; every table optional):

    [llm]
    default_backend = "default"        # serves model names no [[models]] entry matches
    default_context_window = 32768     # for models that are neither configured nor known
    allow_unlisted_models = true       # false: only names matching a [[models]] entry are accepted

    [backends.ollama]                  # "default" is built from LOOM_UPSTREAM_*; a table of that name overrides it
    base_url = "http://localhost:11434/v1"
    api_key = "…"                      # or api_key_env = "ENV_VAR_NAME"
    headers = { "X-Title" = "Loom" }
    query = {}
    timeout = 600                      # seconds of silence allowed (connect, and between two chunks)
    connect_timeout = 10
    max_retries = 2
    retry_base_delay = 0.5
    retry_max_delay = 8
    api_version = "2024-10-21"         # Azure deployment-style URLs
    api_key_header = "api-key"         # also send the key in this header
    dialect = "ollama"                 # auto (default: asked on first use) | openai | azure | vllm |
                                       # llamacpp | llama-server | ollama | lmstudio
    dialect_retry = 30                 # seconds before a failed detection (server unreachable) is tried again
    max_tokens_param = "max_tokens"    # or "max_completion_tokens" (default: as the dialect says)
    include_usage = true               # default: as the dialect says

    [[models]]
    name = "gpt-4o"                    # an exact name, or a glob pattern ("llama*")
    backend = "ollama"
    upstream_model = "qwen2.5:7b"      # default: the requested name
    context_window = 32768             # default: what the backend says it serves (vLLM, llama.cpp,
                                       # LM Studio, Ollama), else the known OpenAI window, else
                                       # [llm].default_context_window

Exact names win over patterns; among patterns the first in the file wins. A name no entry matches goes
to the backend that lists it at its `GET /models` (else to the default backend). `list_models()` lists
the exact names, then what each backend serves (a pattern names no particular model).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from loom.config import Settings
from loom.errors import InvalidRequest
from loom.llm.backend import ChatBackend
from loom.llm.context_windows import DEFAULT_CONTEXT_WINDOW, known_context_window
from loom.llm.dialects import DIALECT_NAMES, MaxTokensParam
from loom.llm.openai_backend import BackendConfig, OpenAIBackend

DEFAULT_BACKEND = "default"

_T = TypeVar("_T")
_D = TypeVar("_D")


class ConfigError(ValueError):
    """The model configuration is invalid (raised at startup)."""


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One `[[models]]` entry."""

    name: str
    backend: str
    upstream_model: str | None = None
    context_window: int | None = None

    @property
    def is_pattern(self) -> bool:
        return any(c in self.name for c in "*?[")


class Route(NamedTuple):
    """What `resolve` returns; unpacks as `backend, upstream_model, context_window = …`."""

    backend: ChatBackend
    upstream_model: str
    context_window: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of `GET /v1/models`."""

    id: str
    owned_by: str


class ModelRouter:
    def __init__(
        self,
        backends: Mapping[str, ChatBackend],
        routes: Sequence[ModelRoute] = (),
        *,
        default_backend: str = DEFAULT_BACKEND,
        default_context_window: int = DEFAULT_CONTEXT_WINDOW,
        allow_unlisted_models: bool = True,
    ) -> None:
        if default_backend not in backends:
            raise ConfigError(f"default backend '{default_backend}' is not configured")
        for route in routes:
            if route.backend not in backends:
                raise ConfigError(f"model '{route.name}' names unknown backend '{route.backend}'")
        self.backends = dict(backends)
        self._exact = {r.name: r for r in routes if not r.is_pattern}
        self._patterns = [r for r in routes if r.is_pattern]
        self.default_backend = default_backend
        self.default_context_window = default_context_window
        self.allow_unlisted_models = allow_unlisted_models

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        environ: Mapping[str, str] | None = None,
        backend_factory: Callable[[BackendConfig], ChatBackend] = OpenAIBackend,
    ) -> ModelRouter:
        """Backends and routes from `Settings` (the default backend) and `settings.file_config`."""
        env = os.environ if environ is None else environ
        raw = settings.file_config
        configs: dict[str, BackendConfig] = {
            DEFAULT_BACKEND: BackendConfig(
                name=DEFAULT_BACKEND,
                base_url=settings.upstream_base_url,
                api_key=settings.upstream_api_key,
                timeout_s=settings.upstream_timeout_s,
                max_retries=settings.upstream_max_retries,
                dialect=_dialect(settings.upstream_dialect, "LOOM_UPSTREAM_DIALECT"),
            )
        }
        for name, table in _table(raw, "backends").items():
            configs[name] = backend_config(name, _as_table(table, f"backends.{name}"), env)
        routes = [_route(entry, i) for i, entry in enumerate(_list(raw, "models"))]
        llm = _table(raw, "llm")
        _reject_unknown(llm, {"default_backend", "default_context_window", "allow_unlisted_models"}, "llm")
        return cls(
            {name: backend_factory(config) for name, config in configs.items()},
            routes,
            default_backend=_get(llm, "default_backend", str, "llm", DEFAULT_BACKEND),
            default_context_window=_get(llm, "default_context_window", int, "llm", DEFAULT_CONTEXT_WINDOW),
            allow_unlisted_models=_get(llm, "allow_unlisted_models", bool, "llm", True),
        )

    def match(self, model: str) -> ModelRoute | None:
        route = self._exact.get(model)
        if route is not None:
            return route
        for pattern in self._patterns:
            if fnmatch.fnmatchcase(model, pattern.name):
                return pattern
        return None

    def _matched(self, model: str) -> ModelRoute:
        route = self.match(model)
        if route is None:
            if not self.allow_unlisted_models:
                raise InvalidRequest(
                    f"The requested model '{model}' does not exist.", param="model", code="model_not_found"
                )
            serving = [name for name, b in self.backends.items() if name != self.default_backend and b.served(model)]
            default_serves = self.backends[self.default_backend].served(model)
            route = ModelRoute(
                name=model, backend=serving[0] if serving and not default_serves else self.default_backend
            )
        return route

    def _rule(self, model: str, upstream: str) -> tuple[int, str]:
        known = known_context_window(upstream) or known_context_window(model)
        if known:
            return known, "known OpenAI model"
        return self.default_context_window, "default_context_window"

    def resolve(self, model: str) -> Route:
        """The backend, upstream model name and context window for a model name a client sent, without
        asking the backend (the window: configured, else known, else the default; see `route`).

        Raises `InvalidRequest` (400, param "model") for a name no route accepts."""
        route = self._matched(model)
        upstream = route.upstream_model or model
        window = route.context_window or self._rule(model, upstream)[0]
        return Route(self.backends[route.backend], upstream, window)

    async def context_window(self, model: str) -> tuple[int, str]:
        """The context window for a model name and where it comes from: the configured `context_window`,
        else what the backend says it serves (asked with its model list, remembered as long; see
        `loom.llm.context_windows`), else the known OpenAI family's, else `default_context_window`."""
        route = self._matched(model)
        if route.context_window:
            return route.context_window, "configured"
        upstream = route.upstream_model or model
        served = await self.backends[route.backend].context_window(upstream)
        if served is not None:
            return served.tokens, served.source
        return self._rule(model, upstream)

    async def route(self, model: str) -> Route:
        """`resolve` with the window of `context_window` (which may ask the backend)."""
        resolved = self.resolve(model)
        window, _ = await self.context_window(model)
        return resolved._replace(context_window=window)

    async def list_models(self) -> list[ModelInfo]:
        """The exactly named routes in configuration order (patterns are not listed), then the models
        each backend lists at its own `GET /models` (remembered briefly), unless only configured names
        are accepted."""
        listed = [ModelInfo(id=r.name, owned_by=r.backend) for r in self._exact.values()]
        if not self.allow_unlisted_models:
            return listed
        seen = {m.id for m in listed}
        names = [self.default_backend, *(n for n in self.backends if n != self.default_backend)]
        served = await asyncio.gather(*(self.backends[n].list_models() for n in names))
        for name, ids in zip(names, served, strict=True):
            for model in ids:
                if model not in seen:
                    seen.add(model)
                    listed.append(ModelInfo(id=model, owned_by=name))
        return listed

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()


_BACKEND_KEYS = {
    "base_url",
    "api_key",
    "api_key_env",
    "headers",
    "query",
    "timeout",
    "connect_timeout",
    "max_retries",
    "retry_base_delay",
    "retry_max_delay",
    "api_version",
    "api_key_header",
    "max_tokens_param",
    "include_usage",
    "dialect",
    "dialect_retry",
}


def backend_config(name: str, table: Mapping[str, Any], environ: Mapping[str, str]) -> BackendConfig:
    """A `BackendConfig` from one `[backends.NAME]` table."""
    where = f"backends.{name}"
    _reject_unknown(table, _BACKEND_KEYS, where)
    base_url = _get(table, "base_url", str, where, None)
    if not base_url:
        raise ConfigError(f"[{where}] needs base_url")
    api_key = _get(table, "api_key", str, where, "")
    key_env = _get(table, "api_key_env", str, where, "")
    if key_env:
        if key_env not in environ:
            raise ConfigError(f"[{where}] api_key_env: environment variable {key_env} is not set")
        api_key = environ[key_env]
    max_tokens_param = _get(table, "max_tokens_param", str, where, None)
    if max_tokens_param not in (None, "max_completion_tokens", "max_tokens"):
        raise ConfigError(f"[{where}] max_tokens_param must be 'max_completion_tokens' or 'max_tokens'")
    return BackendConfig(
        name=name,
        base_url=base_url,
        api_key=api_key,
        headers=_str_map(table, "headers", where),
        query=_str_map(table, "query", where),
        api_version=_get(table, "api_version", str, where, None),
        api_key_header=_get(table, "api_key_header", str, where, None),
        timeout_s=_get(table, "timeout", float, where, 600.0),
        connect_timeout_s=_get(table, "connect_timeout", float, where, 10.0),
        max_retries=_get(table, "max_retries", int, where, 2),
        retry_base_delay_s=_get(table, "retry_base_delay", float, where, 0.5),
        retry_max_delay_s=_get(table, "retry_max_delay", float, where, 8.0),
        max_tokens_param=cast(MaxTokensParam | None, max_tokens_param),
        include_usage=_get(table, "include_usage", bool, where, None),
        dialect=_dialect(_get(table, "dialect", str, where, "auto"), f"[{where}] dialect"),
        dialect_retry_s=_get(table, "dialect_retry", float, where, 30.0),
    )


def _dialect(name: str, where: str) -> str:
    if name not in DIALECT_NAMES:
        raise ConfigError(f"{where} must be one of {', '.join(DIALECT_NAMES)} (got '{name}')")
    return name


def _route(entry: object, i: int) -> ModelRoute:
    where = f"models[{i}]"
    table = _as_table(entry, where)
    _reject_unknown(table, {"name", "backend", "upstream_model", "context_window"}, where)
    name = _get(table, "name", str, where, None)
    if not name:
        raise ConfigError(f"[{where}] needs name")
    window = _get(table, "context_window", int, where, None)
    if window is not None and window <= 0:
        raise ConfigError(f"[{where}] context_window must be positive")
    return ModelRoute(
        name=name,
        backend=_get(table, "backend", str, where, DEFAULT_BACKEND),
        upstream_model=_get(table, "upstream_model", str, where, None),
        context_window=window,
    )


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    return _as_table(raw.get(key, {}), key)


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be an array of tables ([[{key}]])")
    return value


def _as_table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}] must be a table")
    return cast(dict[str, Any], value)


def _reject_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[{where}] unknown key(s): {', '.join(unknown)}")


def _get(table: Mapping[str, Any], key: str, kind: type[_T], where: str, default: _D) -> _T | _D:
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"[{where}] {key} must be a {kind.__name__}")
    return value


def _str_map(table: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = table.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"[{where}] {key} must be a table of strings")
    return {str(k): v for k, v in value.items()}
