"""Embedding providers behind one protocol: the bundled offline WordLlama, or any `/v1/embeddings`.

Vectors come back as float32 rows of unit length, so cosine similarity is a dot product.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from loom.retrieval.errors import IndexingFailed

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors, one row per text."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Vectors: ...


def normalise(vectors: npt.ArrayLike) -> Vectors:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Vectors = (arr / norms).astype(np.float32, copy=False)
    return out


_wordllama_lock = threading.Lock()
_wordllama_models: dict[int, Any] = {}


def _load_wordllama(dim: int) -> Any:
    """Load WordLlama from the weights inside its own wheel; never touch the network."""
    with _wordllama_lock:
        model = _wordllama_models.get(dim)
        if model is None:
            import wordllama
            from wordllama import WordLlama

            package_dir = Path(wordllama.__file__).parent
            model = WordLlama.load(cache_dir=package_dir, disable_download=True, dim=dim)
            _wordllama_models[dim] = model
        return model


class WordLlamaEmbedder:
    """The bundled offline default: WordLlama `l2_supercat` (static token embeddings, fast on CPU)."""

    def __init__(self, dimensions: int = 256, batch_size: int = 64) -> None:
        self._dimensions = dimensions
        self._batch_size = batch_size

    @property
    def name(self) -> str:
        return f"wordllama-l2_supercat-{self._dimensions}"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        model = _load_wordllama(self._dimensions)
        # Batches are padded to their longest text: embedding in length order wastes far less work.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = model.embed([texts[i] for i in order], norm=False, batch_size=self._batch_size)
        out = np.empty_like(vectors)
        out[order] = vectors
        return normalise(out)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        # CPU-bound: keep it off the event loop.
        return await asyncio.to_thread(self.embed_sync, texts)


_KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAIEmbedder:
    """Any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Azure, vLLM, Ollama, TEI, …)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        dimensions: int | None = None,
        batch_size: int = 128,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        client: Any = None,
    ) -> None:
        if client is None:
            from openai import AsyncOpenAI

            client = AsyncOpenAI(
                base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=max_retries
            )
        self._client = client
        self._model = model
        # Only sent upstream when configured: not every server understands `dimensions`.
        self._requested_dimensions = dimensions
        self._dimensions = dimensions or _KNOWN_DIMENSIONS.get(model, 0)
        self._batch_size = batch_size

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    @property
    def dimensions(self) -> int:
        """Known from config or the model's name; otherwise learned from the first response (0 before)."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> Vectors:
        from openai import OpenAIError

        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        rows: list[list[float]] = []
        for i in range(0, len(texts), self._batch_size):
            batch = [t if t.strip() else " " for t in texts[i : i + self._batch_size]]
            kwargs: dict[str, Any] = {"model": self._model, "input": batch, "encoding_format": "float"}
            if self._requested_dimensions:
                kwargs["dimensions"] = self._requested_dimensions
            try:
                response = await self._client.embeddings.create(**kwargs)
            except OpenAIError as exc:
                raise IndexingFailed(f"The embedding endpoint failed: {type(exc).__name__}.") from exc
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise IndexingFailed("The embedding endpoint returned a different number of vectors.")
            rows.extend(list(d.embedding) for d in data)
        vectors = normalise(np.asarray(rows, dtype=np.float32))
        self._dimensions = int(vectors.shape[1])
        return vectors


PROVIDERS = ("wordllama", "minilm", "openai")


def embedder_from_settings(settings: Any) -> Embedder:
    """Build the configured embedder from `loom.config.Settings` (the `# Retrieval` fields)."""
    provider = settings.embedding_provider.lower()
    if provider == "wordllama":
        return WordLlamaEmbedder()
    if provider == "minilm":
        from loom.retrieval.minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    if provider == "openai":
        return _openai(settings, settings.embedding_model)
    raise ValueError(
        f"Unknown embedding_provider {settings.embedding_provider!r} ({', '.join(PROVIDERS[:-1])} or {PROVIDERS[-1]})."
    )


def check_installed(embedder: Embedder) -> None:
    """Start-up: raise `loom.retrieval.weights.WeightsMissing` if `embedder` needs weights that were never
    installed (the bundled WordLlama and an endpoint need none)."""
    check = getattr(embedder, "check_installed", None)
    if check is not None:
        check()


def _openai(settings: Any, model: str) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        base_url=settings.embedding_base_url or settings.upstream_base_url,
        api_key=settings.embedding_api_key or settings.upstream_api_key,
        model=model,
        dimensions=settings.embedding_dimensions if model == settings.embedding_model else None,
        timeout_s=settings.upstream_timeout_s,
        max_retries=settings.upstream_max_retries,
    )


# A store made before stores recorded their embedder (migration 0009) was embedded by the default of
# that time: the bundled WordLlama, unless the deployment had configured an endpoint.
LEGACY = "legacy"  # what migration 0009 records for those stores
LEGACY_WORDLLAMA = "wordllama-l2_supercat-256"


class Embedders:
    """The default embedder for new stores, and each existing store's own embedder by its recorded name.

    A store keeps the model it was built with: its searches and later ingestion use that model, so
    changing the default never puts two models' vectors in one store (the indexes keep one embedding
    size per HNSW index on PostgreSQL and one matrix per store on SQLite). Built lazily, one per name.
    """

    def __init__(self, settings: Any, default: Embedder | None = None) -> None:
        self._settings = settings
        self.default: Embedder = default if default is not None else embedder_from_settings(settings)
        self._by_name: dict[str, Embedder] = {self.default.name: self.default}
        self._lock = threading.Lock()

    def legacy_name(self) -> str:
        """The embedder of a store with no recorded one."""
        if self._settings is not None and self._settings.embedding_provider.lower() == "openai":
            return self.default.name
        return LEGACY_WORDLLAMA

    def for_name(self, name: str | None) -> Embedder:
        """The embedder called `name`; None (a store not bound yet) is the default, "legacy" see above."""
        if name is None:
            return self.default
        if name == LEGACY:
            name = self.legacy_name()
        with self._lock:
            embedder = self._by_name.get(name)
            if embedder is None:
                embedder = self._build(name)
                self._by_name[name] = embedder
            return embedder

    def _build(self, name: str) -> Embedder:
        if name.startswith("wordllama-l2_supercat-"):
            return WordLlamaEmbedder(dimensions=int(name.rsplit("-", 1)[1]))
        if name in ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-fp32"):
            from loom.retrieval.minilm import MiniLMEmbedder

            return MiniLMEmbedder(quantize=name == "all-MiniLM-L6-v2")
        if name.startswith("openai:") and self._settings is not None:
            return _openai(self._settings, name.removeprefix("openai:"))
        raise IndexingFailed(f"This vector store was embedded with {name!r}, which this server cannot load.")
