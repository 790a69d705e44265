"""The `minilm` embedder: all-MiniLM-L6-v2 int8 on ONNX Runtime, from SHA-256-checked weights.

Needs the weights fetched at install time (`make weights`, which `make venv` runs).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bench.minilm import PAIRED_TEXTS, MiniLMEncoder

from loom.config import Settings
from loom.retrieval.embedding import LEGACY, Embedder, Embedders, WordLlamaEmbedder, embedder_from_settings
from loom.retrieval.errors import IndexingFailed
from loom.retrieval.index import ChunkIndex
from loom.retrieval.ingest import ingest_file
from loom.retrieval.minilm import (
    MINILM,
    MiniLMEmbedder,
    MiniLMRuntime,
    build_key,
    built_dir,
    built_model,
    load_runtime,
)
from loom.retrieval.minilm_graph import MAX_TOKENS
from loom.retrieval.search import DEFAULT_FUSION, Fusion, search
from loom.retrieval.weights import WeightsMissing, WeightsTampered, model_dir, verified_dir
from loom.retrieval.weights import main as weights_main
from tests.conftest import sdk_client
from tests.support.server import LoomServer


@pytest.fixture(scope="module")
def reference() -> MiniLMEncoder:
    """The float32 forward pass in numpy (bench/minilm.py), checked there against sbert.net's figures."""
    return MiniLMEncoder(verified_dir(MINILM))


async def test_int8_vectors_agree_with_the_float32_reference(reference: MiniLMEncoder) -> None:
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)  # truncated at 256 pieces
    texts = [*PAIRED_TEXTS, long]
    vectors = await MiniLMEmbedder().embed(texts)
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    agreement = np.sum(vectors * reference.encode(texts), axis=1)
    assert float(agreement.min()) > 0.98, agreement
    sim = vectors @ vectors.T
    for i in range(0, 6, 2):
        unrelated = max(sim[i, j] for j in range(6) if j not in (i, i + 1))
        assert sim[i, i + 1] > unrelated + 0.2


def test_unquantised_graph_matches_the_reference_exactly(reference: MiniLMEncoder) -> None:
    vectors = load_runtime(quantize=False).encode(PAIRED_TEXTS)
    assert float(np.max(np.abs(vectors - reference.encode(PAIRED_TEXTS)))) < 1e-4


def test_a_vector_does_not_depend_on_what_is_embedded_with_it() -> None:
    runtime = load_runtime()
    long = " ".join(["a sentence about the weather in spring"] * 80)
    alone = runtime.encode([PAIRED_TEXTS[0]])[0]
    together = runtime.encode([long, PAIRED_TEXTS[0], PAIRED_TEXTS[3]])[1]
    assert np.array_equal(alone, together)
    assert len(runtime.tokenizer.encode(long).ids) == MAX_TOKENS


def _copy_weights(tmp_path: Path) -> Path:
    """A cache of our own: the small files copied (so they can be tampered with), the weights linked."""
    source = model_dir(MINILM)
    target = model_dir(MINILM, tmp_path)
    target.mkdir(parents=True)
    for f in MINILM.files:
        if f.name == "model.safetensors":
            (target / f.name).symlink_to(source / f.name)
        else:
            (target / f.name).write_bytes((source / f.name).read_bytes())
    return target


async def test_embedder_refuses_a_tampered_file(tmp_path: Path) -> None:
    target = _copy_weights(tmp_path)
    config = target / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 6', '"num_hidden_layers": 5'))
    with pytest.raises(WeightsTampered) as caught:
        await MiniLMEmbedder(tmp_path).embed(["anything"])
    assert str(config) in str(caught.value)
    assert caught.value.expected == "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"


async def test_embedder_refuses_missing_weights_naming_the_fetch(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing, match=r"loom\.retrieval\.weights fetch all-MiniLM-L6-v2"):
        await MiniLMEmbedder(tmp_path / "never-fetched").embed(["anything"])


def test_provider_setting_and_per_store_names() -> None:
    assert isinstance(embedder_from_settings(Settings(embedding_provider="minilm")), MiniLMEmbedder)
    embedders = Embedders(Settings(embedding_provider="minilm"))
    assert embedders.default.name == "all-MiniLM-L6-v2"
    assert embedders.for_name(None) is embedders.default  # a store with no vector yet
    legacy = embedders.for_name(LEGACY)  # stores made before migration 0009
    assert isinstance(legacy, WordLlamaEmbedder) and legacy.dimensions == 256
    assert embedders.for_name("wordllama-l2_supercat-256") is legacy
    with pytest.raises(IndexingFailed, match="cannot load"):
        embedders.for_name("some-other-model")


def _built(cache: Path) -> tuple[Path, Path]:
    key = build_key(quantize=True)
    return built_dir(cache) / f"{key}.onnx", built_dir(cache) / f"{key}.sha256"


def test_install_builds_the_model_once_and_loads_reuse_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _copy_weights(tmp_path)
    caplog.set_level(logging.INFO, logger="loom.retrieval.minilm")
    # `make weights`: the files are there already (nothing downloaded), so fetch only verifies, then builds.
    assert weights_main(["fetch", "all-MiniLM-L6-v2", "--cache-dir", str(tmp_path)]) == 0
    model, recorded = _built(tmp_path)
    assert recorded.read_text().strip() == hashlib.sha256(model.read_bytes()).hexdigest()
    assert [r for r in caplog.records if "built the int8 model" in r.getMessage()]
    caplog.clear()
    runtime = MiniLMRuntime(verified_dir(MINILM, tmp_path))
    assert not [r for r in caplog.records if "built" in r.getMessage()]  # loaded from the cache
    assert np.array_equal(runtime.encode(PAIRED_TEXTS), load_runtime().encode(PAIRED_TEXTS))


def test_a_tampered_or_truncated_cached_model_is_rebuilt_never_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _copy_weights(tmp_path)
    genuine = MiniLMRuntime(directory).encode(PAIRED_TEXTS)
    model, recorded = _built(tmp_path)
    good = model.read_bytes()
    # A runnable model of the same shape that gives other vectors: the float32 graph, put in the int8's place.
    other = built_model(directory, quantize=False)
    assert not np.array_equal(load_runtime(quantize=False).encode(PAIRED_TEXTS), genuine)
    for tampered in (other, good[: len(good) // 2]):
        model.write_bytes(tampered)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="loom.retrieval.minilm"):
            vectors = MiniLMRuntime(directory).encode(PAIRED_TEXTS)
        assert np.array_equal(vectors, genuine)
        assert [r for r in caplog.records if "rebuilding it" in r.getMessage() and str(model) in r.getMessage()]
        assert model.read_bytes() == good  # rebuilt (the build is deterministic) and recorded again
        assert recorded.read_text().strip() == hashlib.sha256(good).hexdigest()


def test_the_cache_key_covers_the_options() -> None:
    assert build_key(quantize=True) != build_key(quantize=False)
    assert build_key(quantize=True) == build_key(quantize=True)


def test_minilm_is_the_default_for_new_stores() -> None:
    embedders = Embedders(Settings())
    assert isinstance(embedders.default, MiniLMEmbedder) and embedders.default.name == "all-MiniLM-L6-v2"
    assert embedders.for_name(None) is embedders.default
    # Stores from before stores recorded their embedder stay WordLlama's, whatever the default is now.
    assert embedders.for_name(LEGACY).name == "wordllama-l2_supercat-256"


def test_serve_without_the_weights_refuses_to_start_naming_the_command(tmp_path: Path) -> None:
    """`pip install` without `make weights`: a clear start-up error, not a silent fallback to WordLlama."""
    server = LoomServer(data_dir=tmp_path / "data", extra_env={"LOOM_WEIGHTS_DIR": str(tmp_path / "no-weights")})
    env = {k: v for k, v in server.env.items() if k != "LOOM_EMBEDDING_PROVIDER"}  # the default
    done = subprocess.run(
        [sys.executable, "-m", "loom.cli", "serve", "--port", str(server.port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "loom.retrieval.weights fetch all-MiniLM-L6-v2" in done.stderr and "make weights" in done.stderr
    assert "LOOM_EMBEDDING_PROVIDER=wordllama" in done.stderr
    # Choosing the bundled embedder needs no weights.
    env = {"LOOM_WEIGHTS_DIR": str(tmp_path / "no-weights"), "LOOM_EMBEDDING_PROVIDER": "wordllama"}
    with LoomServer(data_dir=tmp_path / "data", extra_env=env) as bundled:
        client = sdk_client(bundled)
        store = client.vector_stores.create(name="bundled")
        f = client.files.create(file=("owls.txt", b"Owls hunt at night."), purpose="assistants")
        client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id, poll_interval_ms=50)
        assert client.vector_stores.search(store.id, query="owls").data[0].file_id == f.id


async def test_hybrid_fusion_follows_the_stores_embedder(index: ChunkIndex) -> None:
    """minilm's vectors are worth more in the fusion than WordLlama's (bench/retrieval_quality.py's sweep)."""
    query = "plants whales volcanoes chess banks"
    docs = {
        "file-photo": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose.",
        "file-whale": "Blue whales are the largest animals ever known to have lived on Earth.",
        "file-chess": "In chess, castling moves the king two squares towards a rook.",
    }

    async def scores(embedder: Embedder, store: str, fusion: Fusion | None) -> list[tuple[str, float]]:
        results = await search(index, embedder, [store], query, fusion=fusion)
        return [(r.file_id, r.score) for r in results]

    for store, embedder in (("vs_minilm", MiniLMEmbedder()), ("vs_wordllama", WordLlamaEmbedder())):
        for file_id, text in docs.items():
            await ingest_file(
                index, embedder, vector_store_id=store, file_id=file_id, filename="f.txt", data=text.encode()
            )
    minilm = await scores(MiniLMEmbedder(), "vs_minilm", None)
    assert minilm == await scores(MiniLMEmbedder(), "vs_minilm", Fusion(vector_weight=0.6))
    assert minilm != await scores(MiniLMEmbedder(), "vs_minilm", DEFAULT_FUSION)
    assert await scores(WordLlamaEmbedder(), "vs_wordllama", None) == await scores(
        WordLlamaEmbedder(), "vs_wordllama", DEFAULT_FUSION
    )
