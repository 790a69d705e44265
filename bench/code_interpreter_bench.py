"""The code interpreter in runs: what a run with one code call costs next to a run without tools, and how
soon the code's input reaches a streaming client.

    python -m bench.code_interpreter_bench [--runs 5] [--chunk-delay-ms 20]

One `loom serve` (SQLite, the real bubblewrap sandbox, warm pool on: LOOM_SANDBOX_PREWARM=true) pointed
at the scripted fake model, driven through the official SDK. Rows (medians of --runs):

1. baseline: `create_and_poll` of a run whose model answers with text only;
2. code, new thread: the model calls the code interpreter (`print(1)`), then answers: the first execution
   of a new thread takes a kernel from the warm pool;
3. code, same thread: the next runs of that thread (its session's kernel is already there);
4. streaming: the model writes a ~40-line program in fragments (--chunk-delay-ms between them): time from
   the stream's start to the first `code_interpreter.input` delta, to the last one, and to the outputs.
   With incremental input streaming the first piece arrives long before the model has finished writing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from typing import Any

import openai
from openai import AssistantEventHandler
from openai.types.beta.threads.runs import ToolCall, ToolCallDelta
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import REPO, LoomServer

warnings.filterwarnings("ignore", category=DeprecationWarning)
ENV = os.environ.get("LOOM_SANDBOX_ENV", str(REPO / ".venv-sandbox"))
PROGRAM = "\n".join(f"value_{i} = {i} * 2  # line {i}" for i in range(40)) + "\nprint(value_39)"


class Timings(AssistantEventHandler):
    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start
        self.first_input: float | None = None
        self.last_input: float | None = None
        self.outputs: float | None = None

    def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None:
        if delta.type != "code_interpreter" or delta.code_interpreter is None:
            return
        now = time.perf_counter() - self.start
        if delta.code_interpreter.input:
            self.first_input = self.first_input if self.first_input is not None else now
            self.last_input = now
        if delta.code_interpreter.outputs and self.outputs is None:
            self.outputs = now


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    with FakeUpstream() as upstream:
        server = LoomServer(
            upstream_base_url=upstream.base_url,
            extra_env={"LOOM_SANDBOX_ENV": ENV, "LOOM_SANDBOX_PREWARM": "true", "LOOM_SANDBOX_POOL_SIZE": "2"},
        )
        with server:
            client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-default", max_retries=0)
            assistant = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
            client.beta.threads.runs.create_and_poll(  # warm-up: the server's first run, the pool filled
                thread_id=client.beta.threads.create().id, assistant_id=assistant.id, poll_interval_ms=20
            )
            time.sleep(3)

            def timed_run(thread_id: str, *turns: Turn) -> float:
                upstream.push(*turns)
                t0 = time.perf_counter()
                run = client.beta.threads.runs.create_and_poll(
                    thread_id=thread_id, assistant_id=assistant.id, poll_interval_ms=20
                )
                assert run.status == "completed", run.last_error
                return time.perf_counter() - t0

            code_turn = Turn.calls(ToolCallSpec("code_interpreter", {"code": "print(1)"}))
            baseline, fresh, same = [], [], []
            for _ in range(args.runs):
                baseline.append(timed_run(client.beta.threads.create().id, Turn.reply("Hello.")))
                thread = client.beta.threads.create().id
                fresh.append(timed_run(thread, code_turn, Turn.reply("1")))
                same.append(timed_run(thread, code_turn, Turn.reply("1")))
                time.sleep(1)  # let the pool refill, as between real conversations

            firsts, lasts, outs = [], [], []
            arguments = json.dumps({"code": PROGRAM})
            for _ in range(args.runs):
                thread = client.beta.threads.create().id
                upstream.push(
                    Turn.calls(
                        ToolCallSpec("code_interpreter", arguments),
                        arguments_chunk_size=24,
                        chunk_delay_s=args.chunk_delay_ms / 1000,
                    ),
                    Turn.reply("Done."),
                )
                handler = Timings(time.perf_counter())
                with client.beta.threads.runs.stream(
                    thread_id=thread, assistant_id=assistant.id, event_handler=handler
                ) as stream:
                    stream.until_done()
                assert handler.first_input is not None and handler.last_input is not None and handler.outputs
                firsts.append(handler.first_input)
                lasts.append(handler.last_input)
                outs.append(handler.outputs)

    chunks = -(-len(arguments) // 24)
    print(f"\ncode interpreter in runs — medians of {args.runs}, ms (SQLite, bubblewrap sandbox, warm pool)\n")
    print(f"{'row':<52}{'ms':>8}")
    rows: list[tuple[str, Any]] = [
        ("1. baseline: run with a text answer", ms(baseline)),
        ("2. code call, new thread (kernel from the pool)", ms(fresh)),
        ("3. code call, same thread (its kernel)", ms(same)),
        (
            "   overhead of one code call, new thread (2 - 1)",
            f"{(statistics.median(fresh) - statistics.median(baseline)) * 1000:8.1f}",
        ),
        (
            "   overhead of one code call, same thread (3 - 1)",
            f"{(statistics.median(same) - statistics.median(baseline)) * 1000:8.1f}",
        ),
        (f"4. streamed input ({chunks} fragments, {args.chunk_delay_ms:g} ms apart)", ""),
        ("   first input delta", ms(firsts)),
        ("   last input delta (the model finished writing)", ms(lasts)),
        ("   first output delta (the code has run)", ms(outs)),
    ]
    for name, value in rows:
        print(f"{name:<52}{value:>8}")


if __name__ == "__main__":
    main()
