"""Time to first token and tokens/s: llama.cpp directly, and through Loom; the scripted upstream beside it.

    python -m bench.llamacpp_bench [--runs 5] [--max-tokens 128]

Needs `.venv-llamacpp` (`make llamacpp-env`). For each upstream (llama-cpp-python serving
SmolLM2-135M-Instruct, then the scripted fake), it measures streamed answers made straight to the
upstream with the SDK's Chat Completions, and streamed runs through a Loom server in front of it:
time to first token (first content delta / first `thread.message.delta`), and tokens/s (completion
tokens over the time from the first to the last token). Prints a table of medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import openai
from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.llamacpp.conftest import MODEL_ALIAS, VENV, LlamaServer, model_file
from tests.support.server import LoomServer

PROMPT = "Write a short story about a lighthouse keeper."


@dataclass
class Sample:
    ttft_s: float
    tokens: int
    stream_s: float  # first token to last

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - 1) / self.stream_s if self.stream_s > 0 and self.tokens > 1 else float("nan")


def direct(base_url: str, model: str, max_tokens: int) -> Sample:
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=300)
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        max_tokens=max_tokens,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            tokens += 1
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    client.close()
    return Sample(first - start, tokens, last - first)


def through_loom(client: openai.OpenAI, assistant_id: str, max_tokens: int) -> Sample:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    start = time.perf_counter()
    first = last = 0.0
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant_id, max_completion_tokens=max(256, max_tokens)
    ) as stream:
        for event in stream:
            if event.event == "thread.message.delta":
                last = time.perf_counter()
                first = first or last
        run = stream.current_run
    assert run is not None
    done = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    tokens = done.usage.completion_tokens if done.usage is not None else 0
    return Sample(first - start, tokens, last - first)


def row(name: str, samples: list[Sample]) -> str:
    ttft = statistics.median(s.ttft_s for s in samples) * 1000
    rate = statistics.median(s.tokens_per_s for s in samples)
    tokens = statistics.median(s.tokens for s in samples)
    return f"| {name} | {ttft:.1f} | {rate:.0f} | {tokens:.0f} |"


def measure(name: str, base_url: str, model: str, runs: int, max_tokens: int) -> list[str]:
    env = {"LOOM_UPSTREAM_DIALECT": "auto"}
    straight: list[Sample] = []
    via: list[Sample] = []
    with LoomServer(upstream_base_url=base_url, extra_env=env) as loom:
        client = sdk_client(loom, timeout=300)
        assistant = client.beta.assistants.create(model=model)
        direct(base_url, model, max_tokens)  # warm-ups (model load, prompt cache, Loom's first run)
        through_loom(client, assistant.id, max_tokens)
        for _ in range(runs):  # interleaved, so both see the same machine load
            straight.append(direct(base_url, model, max_tokens))
            via.append(through_loom(client, assistant.id, max_tokens))
    return [row(f"{name}, direct", straight), row(f"{name}, through Loom", via)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    rows = ["| upstream | time to first token (ms, median) | tokens/s (median) | tokens |", "| --- | --- | --- | --- |"]
    python = VENV / "bin" / "python"  # the same server as tests/llamacpp
    llama = LlamaServer(python, model_file(python), Path(tempfile.mkdtemp(prefix="loom-bench-llama-"))).start()
    try:
        rows += measure(
            "llama.cpp (SmolLM2-135M Q4_1, 1 thread)", llama.base_url, MODEL_ALIAS, args.runs, args.max_tokens
        )
    finally:
        llama.stop()
    with FakeUpstream() as fake:
        # The scripted upstream: the same number of tokens, one per chunk, as fast as it can send them.
        fake.set_default(
            Turn.reply("tok " * args.max_tokens, chunk_size=4, usage={"completion_tokens": args.max_tokens})
        )
        rows += measure("scripted upstream", fake.base_url, "gpt-4o", args.runs, args.max_tokens)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
