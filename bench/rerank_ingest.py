"""What keeping MiniLM's compact token vectors costs ingestion: chunks/s embedding alone against embedding
with the `late_tokens` blobs (`loom.retrieval.rerank.embed_with_tokens`), alternating rounds, same chunks.

    nice -n 10 .venv/bin/python bench/rerank_ingest.py [--chunks 48] [--rounds 5]

800-token chunks cut from SciFact abstracts as `bench/embed_throughput.py` cuts them (truncated to the
model's 256 pieces, as ingestion does).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.embed_throughput import chunks  # noqa: E402
from loom.retrieval.minilm import MiniLMEmbedder  # noqa: E402
from loom.retrieval.rerank import embed_with_tokens  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    texts = chunks(args.chunks)
    embedder = MiniLMEmbedder()
    await embedder.embed(texts[:2])  # load the model
    rates: dict[str, list[float]] = {"embed only": [], "embed + token blobs": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        await embedder.embed(texts)
        rates["embed only"].append(len(texts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        _, blobs = await embed_with_tokens(embedder, texts)
        rates["embed + token blobs"].append(len(texts) / (time.perf_counter() - t0))
    size = statistics.mean(len(b or b"") for b in blobs)
    for name, r in rates.items():
        print(f"{name:<22} chunks/s per round {' '.join(f'{x:.1f}' for x in r)}  median {statistics.median(r):.1f}")
    ratio = statistics.median(rates["embed + token blobs"]) / statistics.median(rates["embed only"])
    print(f"ratio {ratio:.3f}; token blob {size:.0f} bytes per chunk")


if __name__ == "__main__":
    asyncio.run(main())
