"""Research: late interaction over all-MiniLM-L6-v2's contextual token vectors as a reranker, on SciFact.

    .venv/bin/python bench/rerank_research.py

MiniLM computes a contextual vector per word piece of every chunk before mean-pooling them into the
chunk's embedding. This script keeps those token vectors (float16, cached in `.cache/rerank_research/`),
builds the SQLite index of `bench/retrieval_quality.py` with the same pooled vectors, takes hybrid
search's 50 best fused candidates per test query, and re-scores them with:

  (a) MaxSim over all token vectors (float): each query piece's best cosine among the passage's pieces,
      averaged over the query's pieces;
  (b) compact forms: [CLS]/[SEP]/punctuation/stop-word pieces dropped, at most 32 vectors kept (the first
      32, or 32 k-means centroids), int8 per vector (scale per vector), or a fixed random projection to
      128 dimensions;
  (c) windowed mean pools (16- or 32-piece windows, half overlapping), scored by MaxSim or by the query's
      pooled vector's best window;

each alone and mixed with the fused score: final = w * fused + (1 - w) * rerank (rerank raw, which is
already 0..1 for cosines, or min-max normalised over the query's candidates). Prints nDCG@10 and
recall@100 per variant and weight, bytes stored per chunk, the scoring time per search at 50
candidates, and how often a variant moves a relevant fused first result out of first place ("hurt")
against the reverse ("helped").
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench.retrieval_quality import STORE, build, load, ndcg_at_10, recall_at_100  # noqa: E402
from loom.retrieval.index import STOPWORDS  # noqa: E402
from loom.retrieval.minilm import MiniLMRuntime, load_runtime  # noqa: E402
from loom.retrieval.minilm_graph import HIDDEN  # noqa: E402
from loom.retrieval.search import run_search  # noqa: E402
from loom.retrieval.sqlite_index import SQLiteChunkIndex  # noqa: E402

CACHE = ROOT / ".cache" / "rerank_research"
DEPTH = 50
F32 = npt.NDArray[np.float32]


class TokenRecorder:
    """The server's MiniLM embedding (same runs, same pooling), keeping every text's token vectors."""

    name = "all-MiniLM-L6-v2"
    dimensions = HIDDEN

    def __init__(self, runtime: MiniLMRuntime) -> None:
        self.rt = runtime
        self.tokens: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float16]]] = {}

    def hidden(self, text: str) -> tuple[npt.NDArray[np.int64], F32]:
        ids = np.asarray(self.rt.tokenizer.encode(text).ids, dtype=np.int64)
        (h,) = self.rt.session.run(
            ["hidden"], {"input_ids": ids.reshape(1, -1), "positions": np.arange(len(ids), dtype=np.int64)}
        )
        return ids, h[0]

    def embed_sync(self, texts: list[str]) -> F32:
        out = np.zeros((len(texts), HIDDEN), dtype=np.float32)

        def one(i: int) -> None:
            ids, h = self.hidden(texts[i])
            pooled = h.mean(axis=0)
            out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
            self.tokens[texts[i]] = (ids, h.astype(np.float16))

        if self.rt._pool is None:
            for i in range(len(texts)):
                one(i)
        else:
            list(self.rt._pool.map(one, range(len(texts))))
        return out

    async def embed(self, texts: list[str]) -> F32:
        missing = [t for t in texts if t not in self.tokens]
        if missing:
            await asyncio.to_thread(self.embed_sync, missing)
        out = np.zeros((len(texts), HIDDEN), dtype=np.float32)
        for i, t in enumerate(texts):
            pooled = self.tokens[t][1].astype(np.float32).mean(axis=0)
            out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_cache(rec: TokenRecorder) -> None:
    path = CACHE / "tokens.npz"
    if not path.exists():
        return
    z = np.load(path, allow_pickle=False)
    texts, offsets, ids, vecs = z["texts"], z["offsets"], z["ids"], z["vecs"]  # each read once
    for i, t in enumerate(texts):
        a, b = offsets[i], offsets[i + 1]
        rec.tokens[str(t)] = (ids[a:b], vecs[a:b])


def save_cache(rec: TokenRecorder) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    texts = list(rec.tokens)
    offsets = np.cumsum([0] + [len(rec.tokens[t][0]) for t in texts])
    np.savez(
        CACHE / "tokens.npz",
        texts=np.array(texts),
        offsets=offsets,
        ids=np.concatenate([rec.tokens[t][0] for t in texts]),
        vecs=np.concatenate([rec.tokens[t][1] for t in texts]),
    )


def unit(x: F32) -> F32:
    out: F32 = (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    return out


class Pieces:
    """Which pieces carry content: not [CLS]/[SEP]/[PAD], not punctuation, not a whole stop word."""

    def __init__(self, rt: MiniLMRuntime) -> None:
        vocab = rt.tokenizer.get_vocab()
        self.size = max(vocab.values()) + 1
        self.content = np.zeros(self.size, dtype=bool)
        self.stop = np.zeros(self.size, dtype=bool)
        self.cont = np.zeros(self.size, dtype=bool)
        for piece, i in vocab.items():
            bare = piece[2:] if piece.startswith("##") else piece
            self.cont[i] = piece.startswith("##")
            self.content[i] = any(ch.isalnum() for ch in bare) and not (piece.startswith("[") and piece.endswith("]"))
            self.stop[i] = piece in STOPWORDS

    def keep(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        nxt_cont = np.zeros(len(ids), dtype=bool)
        nxt_cont[:-1] = self.cont[ids[1:]]
        whole_stop = self.stop[ids] & ~nxt_cont
        out: npt.NDArray[np.bool_] = self.content[ids] & ~whole_stop
        return out


def kmeans(x: F32, k: int, iters: int = 6) -> F32:
    if len(x) <= k:
        return x
    cent: F32 = x[np.linspace(0, len(x) - 1, k).astype(int)].copy()
    for _ in range(iters):
        assign = np.argmax(x @ cent.T, axis=1)
        for j in range(k):
            m = assign == j
            if m.any():
                cent[j] = x[m].mean(axis=0)
        cent = unit(cent)
    return cent


def int8(x: F32) -> F32:
    scale = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-12) / 127.0
    q = np.round(x / scale).astype(np.int8)
    out: F32 = q.astype(np.float32) * scale
    return out


def windows(x: F32, w: int) -> F32:
    if len(x) <= w:
        return unit(x.mean(axis=0, keepdims=True))
    step = w // 2
    starts = list(range(0, len(x) - w + 1, step))
    if starts[-1] + w < len(x):
        starts.append(len(x) - w)
    return unit(np.stack([x[s : s + w].mean(axis=0) for s in starts]))


def maxsim(q: F32, d: F32) -> float:
    if len(q) == 0 or len(d) == 0:
        return 0.0
    return float((q @ d.T).max(axis=1).mean())


PROJ = unit(np.random.default_rng(15).standard_normal((HIDDEN, 128)).astype(np.float32).T).T  # fixed


def main_sync(loop: asyncio.AbstractEventLoop) -> None:
    pass


async def main() -> None:
    corpus, queries, qrels = load()
    rt = load_runtime()
    rec = TokenRecorder(rt)
    load_cache(rec)
    had = len(rec.tokens)
    tmp = tempfile.TemporaryDirectory()
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp.name}/bench.db")
    index = SQLiteChunkIndex(engine)
    n_chunks, seconds = await build(index, rec, corpus)  # type: ignore[arg-type]
    print(f"indexed {n_chunks} chunks in {seconds:.1f}s ({had} token sets from cache)")
    if len(rec.tokens) != had:
        save_cache(rec)
    pieces = Pieces(rt)

    # Per query: fused top 100 (doc order, for recall), the top DEPTH chunks' texts and fused scores.
    per_query = []
    for qid, q in queries.items():
        res = await run_search(index, rec, [STORE], q, max_num_results=100)  # type: ignore[arg-type]
        qids, qh = rec.hidden(q)
        per_query.append((qid, q, res, qids, qh))
    print(f"{len(per_query)} queries searched")

    variants: list[tuple[str, str, str]] = [
        ("(a) maxsim all/all", "all", "all"),
        ("(a) maxsim content-q/all", "content", "all"),
        ("(b) maxsim content/content", "content", "content"),
        ("(b) content int8", "content", "content-int8"),
        ("(b) content first32", "content", "content-first32"),
        ("(b) content kmeans32", "content", "content-kmeans32"),
        ("(b) content kmeans32 int8", "content", "content-kmeans32-int8"),
        ("(b) content kmeans16 int8", "content", "content-kmeans16-int8"),
        ("(b) kmeans32 proj128 int8", "content-proj", "content-kmeans32-proj128-int8"),
        ("(c) maxsim q/win16", "content", "win16"),
        ("(c) maxsim q/win32", "content", "win32"),
        ("(c) pooled-q best win16", "pooled", "win16"),
        ("(c) pooled-q best win32", "pooled", "win32"),
    ]
    if "--more" in sys.argv:  # second round: around the best compact form
        variants = [
            ("(b) content kmeans32 int8", "content", "content-kmeans32-int8"),
            ("(b) all-q / content kmeans32 int8", "all", "content-kmeans32-int8"),
            ("(b) content / all kmeans32 int8", "content", "all-kmeans32-int8"),
            ("(b) content kmeans24 int8", "content", "content-kmeans24-int8"),
            ("(b) content kmeans48 int8", "content", "content-kmeans48-int8"),
        ]
    # Document-side forms, computed once per chunk text.
    forms: dict[str, Callable[[npt.NDArray[np.int64], F32], F32]] = {
        "all": lambda ids, h: unit(h),
        "content": lambda ids, h: unit(h[pieces.keep(ids)]),
        "content-first32": lambda ids, h: unit(h[pieces.keep(ids)][:32]),
        "content-kmeans32": lambda ids, h: kmeans(unit(h[pieces.keep(ids)]), 32),
        "content-kmeans32-int8": lambda ids, h: int8(kmeans(unit(h[pieces.keep(ids)]), 32)),
        "content-kmeans16-int8": lambda ids, h: int8(kmeans(unit(h[pieces.keep(ids)]), 16)),
        "content-int8": lambda ids, h: int8(unit(h[pieces.keep(ids)])),
        "content-kmeans32-proj128-int8": lambda ids, h: int8(unit(kmeans(unit(h[pieces.keep(ids)]), 32) @ PROJ)),
        "all-kmeans32-int8": lambda ids, h: int8(kmeans(unit(h), 32)),
        "content-kmeans24-int8": lambda ids, h: int8(kmeans(unit(h[pieces.keep(ids)]), 24)),
        "content-kmeans48-int8": lambda ids, h: int8(kmeans(unit(h[pieces.keep(ids)]), 48)),
        "win16": lambda ids, h: windows(h, 16),
        "win32": lambda ids, h: windows(h, 32),
    }
    used = {d for _, _, d in variants}
    forms = {k: v for k, v in forms.items() if k in used}
    texts = {r.text for _, _, res, _, _ in per_query for r in res[:DEPTH]}
    docs: dict[str, dict[str, F32]] = {name: {} for name in forms}
    for t in texts:
        ids, h16 = rec.tokens[t]
        h = h16.astype(np.float32)
        for name, f in forms.items():
            docs[name][t] = f(ids, h)
    sizes = {name: float(np.mean([len(v) for v in docs[name].values()])) for name in forms}  # vectors per chunk
    print("\nvectors per chunk (mean over candidate chunks) and bytes at int8 (+4 B scale per vector):")
    for name, n in sizes.items():
        dims = 128 if "proj128" in name else HIDDEN
        print(f"  {name:<32} {n:6.1f} vectors  ~{n * (dims + 4):8.0f} B int8  ~{n * dims * 4:8.0f} B float32")

    # Query-side forms.
    def qform(kind: str, ids: npt.NDArray[np.int64], h: F32) -> F32:
        if kind == "all":
            return unit(h)
        if kind == "content":
            k = pieces.keep(ids)
            return unit(h[k]) if k.any() else unit(h)
        if kind == "pooled":
            return unit(h.mean(axis=0, keepdims=True))
        raise ValueError(kind)

    weights = [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0]

    def evaluate(order_of: Callable[[int], list[str]]) -> tuple[float, float]:
        nd, rc = [], []
        for i, (qid, *_rest) in enumerate(per_query):
            ranked: list[str] = []
            for f in order_of(i):
                if f not in ranked:
                    ranked.append(f)
            nd.append(ndcg_at_10(ranked, qrels[qid]))
            rc.append(recall_at_100(ranked, qrels[qid]))
        return float(np.mean(nd)), float(np.mean(rc))

    base = evaluate(lambda i: [r.file_id for r in per_query[i][2]])
    print(f"\nhybrid (fusion order, minilm): nDCG@10 {base[0]:.4f}  R@100 {base[1]:.4f}")

    print(f"\n{'variant':<30} {'ms/srch':>7} " + " ".join(f"{'w=' + str(w):>13}" for w in weights))
    print(f"{'':<30} {'':>7} " + " ".join(f"{'raw / minmax':>13}" for _ in weights))
    for label, qkind, dname in variants:
        rer: list[F32] = []
        times = []
        for _qid, _q, res, qids, qh in per_query:
            qv = qform("content" if qkind == "content-proj" else qkind, qids, qh.astype(np.float32))
            if qkind == "content-proj":
                qv = unit(qv @ PROJ)
            cands = [docs[dname][r.text] for r in res[:DEPTH]]
            t0 = time.perf_counter()
            rer.append(np.array([maxsim(qv, d) for d in cands], dtype=np.float32))
            times.append(time.perf_counter() - t0)
        ms = 1000 * float(np.median(times))
        cells = []
        for w in weights:
            pair = []
            for norm in (False, True):

                def order(i: int, w: float = w, norm: bool = norm, rer: list[F32] = rer) -> list[str]:
                    res = per_query[i][2]
                    top = res[:DEPTH]
                    r = rer[i]
                    if norm and len(r) > 1 and r.max() > r.min():
                        r = (r - r.min()) / (r.max() - r.min())
                    fused = np.array([x.score for x in top], dtype=np.float32)
                    final = w * fused + (1 - w) * r
                    idx = sorted(range(len(top)), key=lambda j: (-final[j], j))
                    return [top[j].file_id for j in idx] + [x.file_id for x in res[DEPTH:]]

                pair.append(evaluate(order)[0])
            cells.append(f"{pair[0]:.4f}/{pair[1]:.4f}")
        print(f"{label:<30} {ms:7.2f} " + " ".join(f"{c:>13}" for c in cells), flush=True)
        hurt = helped = 0
        for i, (qid, _q, res, _ids, _h) in enumerate(per_query):
            top = res[:DEPTH]
            final = 0.3 * np.array([x.score for x in top], dtype=np.float32) + 0.7 * rer[i]
            first = top[int(np.argmax(final))].file_id
            was, now = top[0].file_id in qrels[qid], first in qrels[qid]
            hurt += was and not now
            helped += now and not was
        print(f"{'':<30} w=0.3 raw: first result relevant -> not: {hurt}, not -> relevant: {helped}", flush=True)
    await engine.dispose()
    tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
