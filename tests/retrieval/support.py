"""Shared by the keyword-search tests: a brute-force BM25 reference, chunks for an index, and one
migration revision run by hand."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from loom.retrieval.analysis import analyze
from loom.retrieval.bm25 import BM25_B, BM25_K1
from loom.retrieval.chunking import Chunk
from loom.retrieval.index import Candidate

VERSIONS = Path(__file__).resolve().parents[2] / "src/loom/store/migrations/versions"


def brute_bm25(
    docs: Mapping[int, tuple[str, str]], words: Sequence[str], limit: int, allowed: Collection[str] | None = None
) -> list[Candidate]:
    """Okapi BM25 (k1 1.2, b 0.75, idf log(1 + (N - df + 0.5) / (df + 0.5))) over `docs` (chunk id ->
    file id, text), written out in plain Python: the top `limit`, ties by chunk id, among the files
    `allowed` if given (the statistics still count every doc)."""
    if not docs:
        return []
    analysed = {cid: Counter(analyze(t)) for cid, (_, t) in docs.items()}
    lengths = {cid: sum(tf.values()) for cid, tf in analysed.items()}
    n = len(docs)
    avgdl = max(sum(lengths.values()) / n, 1.0)
    query = set(analyze(" ".join(words)))
    df = {q: sum(1 for tf in analysed.values() if tf[q]) for q in query}
    out = []
    for cid, tf in analysed.items():
        if allowed is not None and docs[cid][0] not in allowed:
            continue
        score = 0.0
        for q in query:
            if tf[q]:
                idf = math.log(1 + (n - df[q] + 0.5) / (df[q] + 0.5))
                score += idf * tf[q] * (BM25_K1 + 1) / (tf[q] + BM25_K1 * (1 - BM25_B + BM25_B * lengths[cid] / avgdl))
        if score > 0:
            out.append(Candidate(cid, score))
    out.sort(key=lambda c: (-c.score, c.chunk_id))
    return out[:limit]


def chunks_with_vectors(texts: Sequence[str], dims: int = 8, seed: int = 0) -> tuple[list[Chunk], np.ndarray]:
    """`texts` as one file's chunks, with random vectors (keyword tests do not read them)."""
    vectors = np.random.default_rng(seed).normal(size=(len(texts), dims)).astype(np.float32)
    return [Chunk(i, t, 0, len(t), len(t.split())) for i, t in enumerate(texts)], vectors


def migration(name: str) -> ModuleType:
    """A revision module of src/loom/store/migrations/versions, loaded by file name."""
    spec = importlib.util.spec_from_file_location(f"rev_{name}", VERSIONS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_migration(sync_conn: object, module: ModuleType, step: str) -> None:
    """Run a revision's `upgrade` or `downgrade` on a connection (for `run_sync`)."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    ctx = MigrationContext.configure(sync_conn)  # type: ignore[arg-type]
    with Operations.context(ctx):
        getattr(module, step)()
