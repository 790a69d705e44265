"""all-MiniLM-L6-v2 (int8, ONNX Runtime) embedding throughput: runs side by side against one run on all cores.

    nice -n 10 .venv/bin/python bench/embed_throughput.py [--chunks 24] [--rounds 5]

800-token chunks are cut (chunking.chunk_text, as ingestion does) from SciFact abstracts, read from
../shared/data/ir/scifact and never copied. Two runtimes over the same verified weights, timed in
alternating rounds on the same chunks:
- "shipped": each text one inference on one thread, as many at once as the process has cores, residual
  Add and LayerNormalization left unfused (`MiniLMRuntime(model_dir)`, what the server runs);
- "baseline": one inference at a time, ONNX Runtime splitting each across the cores, with its
  SkipLayerNormalization fusion (`threads=1, intra_op_threads=<cores>, fuse_skip_layer_norm=True`: what
  Loom shipped before, but for the attention mask it no longer builds: both graphs are unmasked, so the
  ratio leaves out that saving, ~10 % of the model's time in ONNX Runtime's profile).
Printed: chunks/s per round, medians and their ratio, and how close the two give vectors. The bundled
WordLlama's chunks/s on the same chunks is printed for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.retrieval_quality import load  # noqa: E402
from loom.retrieval.chunking import chunk_text  # noqa: E402
from loom.retrieval.embedding import WordLlamaEmbedder  # noqa: E402
from loom.retrieval.minilm import MINILM, MiniLMRuntime  # noqa: E402
from loom.retrieval.weights import verified_dir  # noqa: E402


def chunks(n: int) -> list[str]:
    corpus, _, _ = load()
    text = "\n\n".join(list(corpus.values())[: n * 8])
    return [c.text for c in chunk_text(text)][:n]  # auto: 800-token windows, 400 overlap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    texts = chunks(args.chunks)
    cores = len(os.sched_getaffinity(0))
    model_dir = verified_dir(MINILM, None)
    shipped = MiniLMRuntime(model_dir)
    baseline = MiniLMRuntime(model_dir, threads=1, intra_op_threads=cores, fuse_skip_layer_norm=True)
    cosine = float(np.min(np.sum(shipped.encode(texts) * baseline.encode(texts), axis=1)))
    print(
        f"{len(texts)} chunks of up to 800 tokens, {cores} cores; lowest cosine between the two's vectors: {cosine:.4f}"
    )
    rates: dict[str, list[float]] = {"shipped": [], "baseline": []}
    order = [("shipped", shipped), ("baseline", baseline)]
    for r in range(args.rounds):
        for name, runtime in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            runtime.encode(texts)
            rates[name].append(len(texts) / (time.perf_counter() - start))
        print(f"round {r + 1}: shipped {rates['shipped'][-1]:6.1f} chunks/s   baseline {rates['baseline'][-1]:6.1f}")
    s, b = statistics.median(rates["shipped"]), statistics.median(rates["baseline"])
    print(f"median chunks/s: shipped {s:.1f}, baseline {b:.1f}, ratio {s / b:.2f}")
    wordllama = WordLlamaEmbedder()
    wordllama.embed_sync(texts[:2])
    start = time.perf_counter()
    wordllama.embed_sync(texts)
    print(f"wordllama (for scale): {len(texts) / (time.perf_counter() - start):.0f} chunks/s")


if __name__ == "__main__":
    main()
