"""Model routing from Settings and the TOML config file, Azure-style backends, known context windows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from loom.config import Settings
from loom.errors import InvalidRequest
from loom.llm import (
    BackendConfig,
    ChatRequest,
    ConfigError,
    ModelInfo,
    ModelRouter,
    OpenAIBackend,
    collect,
    known_context_window,
)
from tests.fakes.upstream import FakeUpstream, Turn

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def make_router(tmp_path: Path) -> AsyncIterator[Callable[..., ModelRouter]]:
    routers: list[ModelRouter] = []

    def make(toml: str, environ: dict[str, str] | None = None, **settings: object) -> ModelRouter:
        path = tmp_path / "loom.toml"
        path.write_text(toml)
        router = ModelRouter.from_settings(Settings.load(config_file=path, **settings), environ=environ or {})
        routers.append(router)
        return router

    yield make
    for router in routers:
        await router.aclose()


def config_of(router: ModelRouter, model: str) -> BackendConfig:
    backend = router.resolve(model).backend
    assert isinstance(backend, OpenAIBackend)
    return backend.config


async def test_routes_rename_models_and_reach_the_right_server(
    upstream: FakeUpstream, make_router: Callable[..., ModelRouter]
) -> None:
    router = make_router(
        f"""
[backends.local]
base_url = "{upstream.base_url}"
api_key_env = "LOCAL_KEY"
headers = {{ "X-Title" = "Loom" }}
max_tokens_param = "max_tokens"

[[models]]
name = "gpt-4o"
backend = "local"
upstream_model = "qwen2.5:7b"
context_window = 32768
""",
        environ={"LOCAL_KEY": "sk-local"},
        upstream_base_url="http://127.0.0.1:9/v1",
    )
    upstream.push(Turn.reply("from qwen"))

    backend, upstream_model, context_window = router.resolve("gpt-4o")
    result = await collect(backend.stream_chat(ChatRequest(model=upstream_model, messages=HELLO, max_tokens=5)))

    assert (backend.name, upstream_model, context_window) == ("local", "qwen2.5:7b", 32768)
    assert result.content == "from qwen"
    sent = upstream.last_request
    assert sent.body["model"] == "qwen2.5:7b"
    assert sent.body["max_tokens"] == 5
    assert sent.headers["authorization"] == "Bearer sk-local"
    assert sent.headers["x-title"] == "Loom"


async def test_patterns_exact_names_and_the_default_backend(make_router: Callable[..., ModelRouter]) -> None:
    router = make_router(
        """
[llm]
default_context_window = 8000

[backends.ollama]
base_url = "http://localhost:11434/v1"

[[models]]
name = "llama*"
backend = "ollama"

[[models]]
name = "llama3-special"
backend = "default"
upstream_model = "meta/llama3"

[[models]]
name = "smart"
backend = "ollama"
upstream_model = "gpt-4.1-mini"
""",
        upstream_base_url="https://example.invalid/v1",
        upstream_api_key="sk-default",
    )

    llama = router.resolve("llama3.1:8b")
    assert (llama.backend.name, llama.upstream_model, llama.context_window) == ("ollama", "llama3.1:8b", 8000)
    special = router.resolve("llama3-special")  # the exact name beats the pattern
    assert (special.backend.name, special.upstream_model) == ("default", "meta/llama3")
    # A renamed model gets the known window of its upstream name.
    assert router.resolve("smart").context_window == 1_047_576
    # Unlisted names go to the default backend (LOOM_UPSTREAM_*) unchanged, with known windows.
    plain = router.resolve("gpt-4o-mini")
    assert (plain.backend.name, plain.upstream_model, plain.context_window) == ("default", "gpt-4o-mini", 128_000)
    default = config_of(router, "gpt-4o-mini")
    assert (default.base_url, default.api_key) == ("https://example.invalid/v1", "sk-default")
    assert router.resolve("mystery-model").context_window == 8000
    # Patterns name no particular model: only exact names are listed.
    assert await router.list_models() == [ModelInfo("llama3-special", "default"), ModelInfo("smart", "ollama")]


async def test_unlisted_models_can_be_refused(make_router: Callable[..., ModelRouter]) -> None:
    router = make_router(
        """
[llm]
allow_unlisted_models = false

[[models]]
name = "gpt-4o"
"""
    )
    assert router.resolve("gpt-4o").backend.name == "default"
    with pytest.raises(InvalidRequest) as caught:
        router.resolve("gpt-3.5-turbo")
    assert (caught.value.param, caught.value.code) == ("model", "model_not_found")
    assert caught.value.message == "The requested model 'gpt-3.5-turbo' does not exist."


async def test_a_default_backend_table_overrides_the_settings(make_router: Callable[..., ModelRouter]) -> None:
    router = make_router(
        """
[backends.default]
base_url = "http://vllm:8000/v1"
api_key = "token"
timeout = 30
max_retries = 5
""",
        upstream_base_url="https://api.openai.com/v1",
    )
    config = config_of(router, "anything")
    assert (config.base_url, config.api_key, config.timeout_s, config.max_retries) == (
        "http://vllm:8000/v1",
        "token",
        30.0,
        5,
    )


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ('[backends.x]\nbase_url = "http://h/v1"\napi_kye = "k"\n', "unknown key(s): api_kye"),
        ("[backends.x]\napi_key = 'k'\n", "needs base_url"),
        ('[backends.x]\nbase_url = "http://h/v1"\napi_key_env = "NOPE"\n', "NOPE is not set"),
        ('[backends.x]\nbase_url = "http://h/v1"\ntimeout = "long"\n', "timeout must be a float"),
        ('[[models]]\nname = "m"\nbackend = "missing"\n', "unknown backend 'missing'"),
        ('[[models]]\nbackend = "default"\n', "needs name"),
        ('[llm]\ndefault_backend = "nope"\n', "default backend 'nope'"),
        ('[backends.x]\nbase_url = "http://h/v1"\nmax_tokens_param = "tokens"\n', "max_tokens_param"),
    ],
)
async def test_config_mistakes_are_reported(make_router: Callable[..., ModelRouter], toml: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        make_router(toml)


async def test_azure_deployment_style_backend(upstream: FakeUpstream, make_router: Callable[..., ModelRouter]) -> None:
    router = make_router(
        f"""
[backends.azure]
base_url = "{upstream.url}/openai/deployments/my-gpt4o"
api_key = "azure-key"
api_version = "2024-10-21"

[[models]]
name = "gpt-4o"
backend = "azure"
"""
    )
    upstream.push(Turn.reply("from azure"))

    route = router.resolve("gpt-4o")
    result = await collect(route.backend.stream_chat(ChatRequest(model=route.upstream_model, messages=HELLO)))

    assert result.content == "from azure"
    sent = upstream.last_request
    assert sent.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == "azure-key"


async def test_azure_v1_endpoint_is_a_plain_openai_backend(
    upstream: FakeUpstream, make_router: Callable[..., ModelRouter]
) -> None:
    router = make_router(
        f"""
[backends.azure]
base_url = "{upstream.url}/openai/v1"
api_key = "azure-key"
api_key_header = "api-key"
"""
        + '[[models]]\nname = "gpt-4.1"\nbackend = "azure"\nupstream_model = "my-deployment"\n'
    )
    upstream.push(Turn.reply("ok"))
    route = router.resolve("gpt-4.1")
    await collect(route.backend.stream_chat(ChatRequest(model=route.upstream_model, messages=HELLO)))

    sent = upstream.last_request
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.body["model"] == "my-deployment"
    assert sent.headers["api-key"] == "azure-key"
    assert route.context_window == 1_047_576  # known from the requested name when the deployment name is not


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4.1-mini", 1_047_576),
        ("gpt-3.5-turbo", 16_385),
        ("gpt-4", 8_192),
        ("gpt-4-0613", 8_192),
        ("gpt-4-turbo", 128_000),
        ("o1", 200_000),
        ("o3-mini", 200_000),
        ("o4-mini-2025-04-16", 200_000),
        ("gpt-5", 400_000),
        ("gpt-5-nano", 400_000),
        ("openai/gpt-4o", 128_000),
        ("qwen2.5:7b", None),
        ("o1x", None),
    ],
)
def test_known_context_windows(model: str, window: int | None) -> None:
    assert known_context_window(model) == window


async def test_models_served_by_a_backend_are_listed_and_routed_to_it(
    upstream: FakeUpstream, make_router: Callable[..., ModelRouter]
) -> None:
    upstream.set_models(["qwen2.5:7b", "smart"], owned_by="library")
    router = make_router(
        f"""
[backends.local]
base_url = "{upstream.base_url}"
dialect = "ollama"

[[models]]
name = "smart"
backend = "local"
upstream_model = "qwen2.5:7b"
""",
        upstream_base_url="http://127.0.0.1:9/v1",  # nobody listens: the default backend lists nothing
    )
    assert router.resolve("qwen2.5:7b").backend.name == "default"  # nothing listed yet

    listed = await router.list_models()
    again = await router.list_models()

    # The rename first, then what the server lists (its "smart" is the rename's name already).
    assert listed == again == [ModelInfo("smart", "local"), ModelInfo("qwen2.5:7b", "local")]
    assert [r.path for r in upstream.requests] == ["/v1/models"]  # remembered, not asked twice
    assert router.resolve("qwen2.5:7b").backend.name == "local"
    assert router.resolve("unknown-model").backend.name == "default"


async def test_a_dialect_must_be_known(make_router: Callable[..., ModelRouter]) -> None:
    with pytest.raises(ConfigError, match="dialect must be one of auto, openai"):
        make_router('[backends.x]\nbase_url = "http://h/v1"\ndialect = "llama"\n')
    with pytest.raises(ConfigError, match="LOOM_UPSTREAM_DIALECT must be one of"):
        make_router("", upstream_dialect="lamacpp")
