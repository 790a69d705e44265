"""The context window a model server says it serves, read per dialect; configuration wins; failures fall back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from loom.llm import BackendConfig, OpenAIBackend
from loom.llm.context_windows import DEFAULT_CONTEXT_WINDOW, LOADER_DEFAULT
from loom.llm.routing import ModelRoute, ModelRouter
from tests.fakes.upstream import FakeUpstream
from tests.llm.conftest import config_for


def _vllm(up: FakeUpstream) -> None:
    up.set_route("/v1/models", {"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 5000}]})


def _llama_server(up: FakeUpstream) -> None:
    up.set_route("/props", {"default_generation_settings": {"n_ctx": 5000}, "total_slots": 1})


def _lmstudio_loaded(up: FakeUpstream) -> None:
    loaded = {"id": "m", "state": "loaded", "max_context_length": 131072, "loaded_context_length": 5000}
    up.set_route("/api/v0/models", {"data": [{"id": "other", "loaded_context_length": 9}, loaded]})


def _lmstudio_not_loaded(up: FakeUpstream) -> None:
    up.set_route("/api/v0/models", {"data": [{"id": "m", "state": "not-loaded", "max_context_length": 131072}]})


def _ollama_running(up: FakeUpstream) -> None:
    up.set_route("/api/ps", {"models": [{"name": "m:latest", "model": "m:latest", "context_length": 5000}]})
    up.set_route("POST /api/show", {"parameters": "num_ctx 99", "model_info": {}})


def _show(parameters: str, maximum: int) -> dict[str, Any]:
    return {
        "parameters": parameters,
        "model_info": {"general.architecture": "qwen2", "qwen2.context_length": maximum},
    }


def _ollama_num_ctx(up: FakeUpstream) -> None:
    up.set_route("/api/ps", {"models": [{"name": "else:latest", "context_length": 77}]})
    up.set_route(
        "POST /api/show", _show('stop "<|im_end|>"\nnum_ctx                        5000\ntemperature 0.7', 32768)
    )


def _ollama_default(up: FakeUpstream) -> None:
    up.set_route("/api/ps", {"models": []})
    up.set_route("POST /api/show", _show('stop "<|im_end|>"', 131072))


def _ollama_small_model(up: FakeUpstream) -> None:
    up.set_route("/api/ps", {"models": []})
    up.set_route("POST /api/show", _show("num_ctx 8192", 2048))  # never above the model's own maximum


CASES: list[tuple[str, Callable[[FakeUpstream], None], int, str]] = [
    ("vllm", _vllm, 5000, "max_model_len at GET /models"),
    ("llama-server", _llama_server, 5000, "n_ctx at GET /props"),
    ("lmstudio", _lmstudio_loaded, 5000, "loaded_context_length at GET /api/v0/models"),
    ("lmstudio", _lmstudio_not_loaded, LOADER_DEFAULT, "not loaded: LM Studio's default load"),
    ("ollama", _ollama_running, 5000, "context_length at GET /api/ps (loaded)"),
    ("ollama", _ollama_num_ctx, 5000, "num_ctx at POST /api/show"),
    ("ollama", _ollama_default, LOADER_DEFAULT, "Ollama's default"),
    ("ollama", _ollama_small_model, 2048, "num_ctx at POST /api/show"),
]


@pytest.fixture
async def routers(upstream: FakeUpstream) -> AsyncIterator[Callable[..., ModelRouter]]:
    made: list[ModelRouter] = []

    def make(dialect: str, *routes: ModelRoute) -> ModelRouter:
        router = ModelRouter({"default": OpenAIBackend(config_for(upstream, dialect=dialect))}, routes)
        made.append(router)
        return router

    yield make
    for router in made:
        await router.aclose()


def _window_asks(upstream: FakeUpstream) -> list[str]:
    return [f"{r.method} {r.path}" for r in upstream.requests if not r.path.endswith("/chat/completions")]


@pytest.mark.parametrize(
    ("dialect", "serve", "tokens", "source"), CASES, ids=[f"{c[0]}-{c[1].__name__}" for c in CASES]
)
async def test_the_served_window_is_read_from_the_server(
    upstream: FakeUpstream,
    routers: Callable[..., ModelRouter],
    dialect: str,
    serve: Callable[[FakeUpstream], None],
    tokens: int,
    source: str,
) -> None:
    upstream.set_models(["m"])
    serve(upstream)
    router = routers(dialect)
    assert router.resolve("m").context_window == DEFAULT_CONTEXT_WINDOW  # today's rule, without asking
    assert await router.context_window("m") == (tokens, source)
    assert (await router.route("m")).context_window == tokens
    asked = len(_window_asks(upstream))
    await router.route("m")
    assert len(_window_asks(upstream)) == asked  # remembered with the model list


@pytest.mark.parametrize("dialect", ["openai", "llamacpp"])
async def test_servers_that_do_not_say_keep_the_rule(
    upstream: FakeUpstream, routers: Callable[..., ModelRouter], dialect: str
) -> None:
    upstream.set_models(["m", "gpt-4o"], owned_by="me")
    router = routers(dialect)
    assert await router.context_window("m") == (DEFAULT_CONTEXT_WINDOW, "default_context_window")
    assert await router.context_window("gpt-4o") == (128_000, "known OpenAI model")
    if dialect == "openai":
        assert _window_asks(upstream) == []  # OpenAI's list has no window: nothing is asked


@pytest.mark.parametrize(("dialect", "serve", "tokens", "source"), CASES[:2] + CASES[4:5])
async def test_a_configured_window_wins_and_nothing_is_asked(
    upstream: FakeUpstream,
    routers: Callable[..., ModelRouter],
    dialect: str,
    serve: Callable[[FakeUpstream], None],
    tokens: int,
    source: str,
) -> None:
    serve(upstream)
    router = routers(dialect, ModelRoute(name="mine", backend="default", upstream_model="m", context_window=700))
    assert await router.context_window("mine") == (700, "configured")
    assert (await router.route("mine")).context_window == 700
    assert _window_asks(upstream) == []


def _failing(path: str) -> Callable[[FakeUpstream], None]:
    def serve(up: FakeUpstream) -> None:
        up.set_route(path, {"error": {"message": "down"}}, status=500)

    return serve


@pytest.mark.parametrize(
    ("dialect", "serve"),
    [
        ("vllm", _failing("/v1/models")),
        ("llama-server", _failing("/props")),
        ("lmstudio", _failing("/api/v0/models")),
        ("ollama", _failing("POST /api/show")),
        ("llama-server", lambda up: up.set_route("/props", {"default_generation_settings": {"n_ctx": "lots"}})),
    ],
)
async def test_a_failing_endpoint_falls_back_to_the_rule(
    upstream: FakeUpstream, routers: Callable[..., ModelRouter], dialect: str, serve: Callable[[FakeUpstream], None]
) -> None:
    upstream.set_models(["m"])
    serve(upstream)
    router = routers(dialect)
    assert await router.context_window("m") == (DEFAULT_CONTEXT_WINDOW, "default_context_window")
    assert (await router.route("m")).context_window == DEFAULT_CONTEXT_WINDOW


async def test_an_unreachable_server_falls_back_to_the_rule() -> None:
    backend = OpenAIBackend(BackendConfig(name="default", base_url="http://127.0.0.1:9/v1", dialect="vllm"))
    router = ModelRouter({"default": backend})
    try:
        assert (await router.route("m")).context_window == DEFAULT_CONTEXT_WINDOW
    finally:
        await router.aclose()
